"""Architectures by name, and safe model loading (layer 1: models in).

Registry (after timm's ``_registry``): ``register_model`` adds a constructor under a name,
``create_model(name, **kwargs)`` builds it, ``list_models(pattern)`` lists names, ``model_info(name)``
gives the arguments a constructor takes. It holds fairprune's small ``mlp`` and ``small_cnn`` and
every classification architecture torchvision provides (weights are never downloaded: users bring
their own ``.safetensors`` / state_dict).

Loading (``load_model``) dispatches on the file's content, not its extension, and never runs code
from the file: bare weights are read with safetensors or ``torch.load(weights_only=True)`` and put
into a registry architecture; a whole pickled model is refused (unpickling runs arbitrary code); a
``.pt2`` archive is inspected by :mod:`fairprune.zoo._pt2_guard` before torch opens it; TorchScript is
accepted as the code it is; a folder with ``config.json`` is a Hugging Face checkpoint (``_hf``:
safetensors only, never ``trust_remote_code``; ``hf_task(folder)`` says "text" or "image"). Every problem
with the file is an ``InputError`` naming the file, what was expected and what was found.

Modules: ``_registry`` (names and constructors), ``archs`` (fairprune's own architectures), ``_load``
(reading files safely; builds models through the registry), ``_loaded`` (``LoadedModel``), ``_pt2_guard``
(inspecting ``.pt2`` archives), ``_hf`` (Hugging Face checkpoint folders).
Imports only :mod:`fairprune.core`.
"""

from ._load import (ACCEPTED_FORMATS, NEEDS_ARCH, PICKLED_MODEL, TRAINING_PROGRAM, ExportedModule, LoadedModel,
                    load_model, parse_arch_args, save_pt2)
from ._hf import HFClassifier, hf_image_preprocessing, hf_normalize_note, hf_task, is_hf_checkpoint
from ._registry import ArchInfo, create_model, list_models, model_info, register_model

__all__ = ["register_model", "create_model", "list_models", "model_info", "ArchInfo",
           "LoadedModel", "ExportedModule", "load_model", "parse_arch_args", "save_pt2", "ACCEPTED_FORMATS",
           "HFClassifier", "is_hf_checkpoint", "hf_task", "hf_image_preprocessing", "hf_normalize_note"]
