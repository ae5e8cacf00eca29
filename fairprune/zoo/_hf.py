"""Hugging Face checkpoint folders, loaded safely (re-exported by :mod:`fairprune.zoo`).

A checkpoint folder is what ``model.save_pretrained(folder)`` writes: ``config.json`` and the weights
(``model.safetensors``, or shards listed in ``model.safetensors.index.json``), often with the tokenizer
(``tokenizer.json``, ``tokenizer_config.json``) or image processor (``preprocessor_config.json``) beside them.

Everything that could run code is refused before ``transformers`` reads anything: weights come only from
safetensors (a folder whose weights are pickled, ``pytorch_model.bin`` / ``*.pt`` / ``*.ckpt`` / ``*.pkl``, is
refused like any pickle), a config naming code of its own (``auto_map``) or an architecture ``transformers`` does
not ship is refused (``trust_remote_code`` is never set), and nothing is downloaded (``local_files_only=True``,
``HF_HUB_OFFLINE=1``). The model is built with ``transformers``' Auto classes (``AutoModelForSequenceClassification``
or ``AutoModelForImageClassification``), in eval mode, float32, with the eager attention implementation (plain
matmuls: every diagnostic, including the Hessian's double backward, differentiates through it), and wrapped in
:class:`HFClassifier`, whose ``forward`` takes fairprune's positional inputs and returns logits (N, K).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from ..core._transformers import import_transformers
from ..core.errors import InputError
from ._loaded import LoadedModel

__all__ = ["HFClassifier", "TEXT_INPUTS", "IMAGE_INPUTS", "is_hf_checkpoint", "hf_task", "hf_image_preprocessing",
           "check_hf_checkpoint", "load_hf_checkpoint"]

#: The positional inputs of a text checkpoint, in order (the tokenizer's outputs; ``token_type_ids`` where given).
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: The positional input of an image checkpoint.
IMAGE_INPUTS = ("pixel_values",)

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
#: Weight files that are pickles (torch.save / pickle): loading them runs code, so they are never read.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Files next to config.json that may name code of their own (``auto_map``): each is checked.
_CODE_CONFIGS = (CONFIG, "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                 "image_processor_config.json")
_TASKS = {"ForSequenceClassification": "text", "ForImageClassification": "image"}
_MAX_JSON_BYTES = 16 << 20

PICKLED_CHECKPOINT = (
    "{path}: refused: expected a Hugging Face checkpoint with safetensors weights (model.safetensors, or shards listed "
    "in model.safetensors.index.json); found only pickled weights ({found}). Loading them means unpickling them, and "
    "unpickling runs arbitrary code. Where you trust the files, re-save the checkpoint with safetensors weights: "
    "AutoModelForSequenceClassification.from_pretrained(folder).save_pretrained(new_folder) (transformers writes "
    "model.safetensors by default)"
)
REMOTE_CODE = (
    "{path}: refused: {file} names code of its own (auto_map: {found}); running it would mean trust_remote_code, "
    "which fairprune never sets. Expected a checkpoint of an architecture transformers {version} ships "
    "(config.json's model_type, e.g. 'bert', 'vit')"
)


def is_hf_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a ``config.json`` (a Hugging Face checkpoint, to be checked on load)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file()


def hf_task(folder: str | Path) -> str:
    """``"text"`` (sequence classification: give it ``--text COL``) or ``"image"`` (image classification: give it
    an image set) for a checkpoint folder, read from its ``config.json`` alone (no weights are read).
    Raises InputError when the folder is not a classification checkpoint fairprune can load."""
    folder = Path(folder)
    return _task(folder, _config(folder))


def hf_image_preprocessing(folder: str | Path) -> dict | None:
    """What an image checkpoint's own image processor (``preprocessor_config.json``) does, and the nearest fairprune
    options: ``{"size": (H, W) | None, "mean": [...] | None, "std": [...] | None, "flags": "--resize .. "}`` (a
    processor that stretches images to H x W differs from shorter-side resize + centre crop on non-square images);
    None when there is no such file. fairprune does not apply it by itself: image sets are preprocessed by
    ``--resize``/``--crop``/``--normalize`` (or ``--transforms``), stated in the result's provenance."""
    folder = Path(folder)
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        return None
    cfg = _read_json(file, folder)
    size = cfg.get("size") or cfg.get("crop_size")
    hw = None
    if isinstance(size, int):
        hw = (size, size)
    elif isinstance(size, dict):
        if "height" in size and "width" in size:
            hw = (int(size["height"]), int(size["width"]))
        elif "shortest_edge" in size:
            hw = (int(size["shortest_edge"]), int(size["shortest_edge"]))
    crop = cfg.get("crop_size") if cfg.get("do_center_crop") else None
    mean = cfg.get("image_mean") if cfg.get("do_normalize", True) else None
    std = cfg.get("image_std") if cfg.get("do_normalize", True) else None
    flags = []
    if hw:
        flags += [f"--resize {min(hw)}", f"--crop {hw[0]},{hw[1]}" if hw[0] != hw[1] else f"--crop {hw[0]}"]
    if isinstance(crop, dict) and "height" in crop and "width" in crop and hw:
        flags[-1] = f"--crop {crop['height']},{crop['width']}"
    if isinstance(mean, list) and isinstance(std, list) and mean and len(mean) == len(std):
        flags.append("--normalize '" + ",".join(f"{m:g}" for m in mean) + ";" + ",".join(f"{s:g}" for s in std) + "'")
    return {"size": hw, "mean": mean, "std": std, "flags": " ".join(flags)}


def hf_normalize_note(folder: str | Path, normalize) -> str | None:
    """A warning when an image checkpoint's own processor normalises pixels differently from how the audited images
    were (``normalize``: the data's per-channel (mean, std), or None for [0, 1] pixels): the model would then be
    measured on inputs it does not see in use. None when they agree, or the checkpoint states no normalisation."""
    try:
        own = hf_image_preprocessing(folder)
    except InputError:
        return None
    if not own or not own.get("mean") or not own.get("std"):
        return None
    mean, std = [float(v) for v in own["mean"]], [float(v) for v in own["std"]]
    if normalize is not None:
        given_mean, given_std = (list(map(float, normalize[0])), list(map(float, normalize[1])))
        if len(given_mean) == 1:
            given_mean, given_std = given_mean * len(mean), given_std * len(std)
        if len(given_mean) == len(mean) and all(abs(a - b) <= 1e-4 for a, b in zip(given_mean + given_std, mean + std)):
            return None
        given = f"normalised with mean {given_mean} and std {given_std}"
    else:
        given = "given as pixels in [0, 1], not normalised"
    return (f"the checkpoint's own image processor (preprocessor_config.json) normalises with mean {mean} and std "
            f"{std}, but the audited images were {given}: the model is measured on inputs it does not see in use. "
            f"Its preprocessing, in fairprune's options: {own['flags']}")


class HFClassifier(nn.Module):
    """A ``transformers`` classification model as fairprune calls models: ``forward(*inputs) -> logits (N, K)``.

    The positional inputs are matched to ``input_names`` in order (text: ``input_ids``, ``attention_mask``,
    ``token_type_ids``; image: ``pixel_values``); fewer may be given (``input_ids`` alone). The model itself is
    ``self.hf``, so its parameters read ``hf.bert.encoder.layer.0.attention.self.query.weight``.
    """

    def __init__(self, model: nn.Module, input_names: tuple[str, ...]):
        super().__init__()
        self.hf = model
        self.input_names = tuple(input_names)

    def forward(self, input0: torch.Tensor, input1: torch.Tensor | None = None,
                input2: torch.Tensor | None = None) -> torch.Tensor:
        # Named parameters, not *inputs: torch.export (fairprune export) matches dynamic shapes to them.
        inputs = [t for t in (input0, input1, input2) if t is not None]
        if len(inputs) > len(self.input_names):
            raise TypeError(f"forward() takes 1 to {len(self.input_names)} positional inputs "
                            f"({', '.join(self.input_names)}, in this order); found {len(inputs)}")
        return self.hf(**dict(zip(self.input_names, inputs)), return_dict=True).logits


def check_hf_checkpoint(folder: str | Path) -> dict:
    """Check a checkpoint folder without importing ``transformers``; return what loading needs.

    Returns ``{"config": dict, "task": "text" | "image", "weights": [Path, ...], "arch": str | None}``.
    Raises InputError (pickled weights, no weights, code of its own, an unknown or non-classification
    architecture, a quantised or adapter checkpoint), naming the folder and the fix.
    """
    folder = Path(folder)
    config = _config(folder)
    for name in _CODE_CONFIGS:
        file = folder / name
        cfg = config if name == CONFIG else (_read_json(file, folder) if file.is_file() else {})
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            raise InputError(REMOTE_CODE.format(path=folder, file=name, found=_short(cfg["auto_map"]),
                                                version=_transformers_version()))
    if (folder / "adapter_config.json").is_file():
        raise InputError(f"{folder}: refused: expected a full checkpoint; found a PEFT adapter (adapter_config.json), "
                         "which needs its base model and the peft library. Merge it first "
                         "(model.merge_and_unload().save_pretrained(new_folder)) and pass the merged folder")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?") if isinstance(
            config["quantization_config"], dict) else "?"
        raise InputError(f"{folder}: expected a float checkpoint; found a quantised one (config.json "
                         f"quantization_config, quant_method {method!r}), which needs extra libraries to load. "
                         "Pass the unquantised checkpoint; fairprune's --compress quantises it itself")
    task = _task(folder, config)
    weights = _weight_files(folder)
    arch = (config.get("architectures") or [None])[0]
    return {"config": config, "task": task, "weights": weights, "arch": arch}


def load_hf_checkpoint(folder: str | Path) -> LoadedModel:
    """Load a Hugging Face sequence- or image-classification checkpoint folder as a :class:`LoadedModel`.

    Checked first (:func:`check_hf_checkpoint`), then built offline by ``transformers``' Auto classes from the
    safetensors weights only, float32, eval mode, eager attention. A checkpoint missing weights the model needs
    (a base model without its fine-tuned classification head, which transformers would fill at random) is
    refused. ``sha256`` fingerprints ``config.json`` and the safetensors files; ``kind`` is ``"hf"``; ``arch``
    the config's architecture; ``input_shape`` (C, H, W) for an image checkpoint.
    """
    folder = Path(folder)
    info = check_hf_checkpoint(folder)
    transformers = _transformers()
    auto = (transformers.AutoModelForSequenceClassification if info["task"] == "text"
            else transformers.AutoModelForImageClassification)
    # transformers imports torchao (when installed) while loading, whose import logs a torch pytree deprecation at
    # WARNING on stderr: keep the command line clean
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        model, loading = auto.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False,
            dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError, ImportError) as err:
        raise InputError(f"{folder}: expected a checkpoint transformers {transformers.__version__} can load "
                         f"offline; loading it failed ({_first_line(err)})") from err
    finally:
        pytree_log.setLevel(level)
    missing = list(loading.get("missing_keys") or [])
    mismatched = list(loading.get("mismatched_keys") or [])
    if missing or mismatched:
        what = (f"no weights for {_few(missing)}" if missing else "") + ("; " if missing and mismatched else "") + \
            (f"weights of the wrong shape for {_few([m[0] if isinstance(m, tuple) else m for m in mismatched])}"
             if mismatched else "")
        raise InputError(f"{folder}: expected a checkpoint fine-tuned for classification, with every weight of "
                         f"{type(model).__name__}; found {what}: transformers would initialise those at random "
                         "(a base or pre-training checkpoint has no classification head). Fine-tune it for your "
                         "classes first and save_pretrained the result")
    names = TEXT_INPUTS if info["task"] == "text" else IMAGE_INPUTS
    if info["task"] == "text":
        accepted = _forward_arguments(model)
        names = tuple(n for n in TEXT_INPUTS if n in accepted) or TEXT_INPUTS[:1]
    module = HFClassifier(model, names).eval()
    config = model.config
    input_shape = None
    if info["task"] == "image":
        size = getattr(config, "image_size", None)
        channels = getattr(config, "num_channels", None)
        if isinstance(size, int) and isinstance(channels, int):
            input_shape = (channels, size, size)
        elif isinstance(size, (list, tuple)) and len(size) == 2 and isinstance(channels, int):
            input_shape = (channels, int(size[0]), int(size[1]))
    name = str(getattr(config, "name_or_path", "") or "")
    if not name or Path(name).resolve() == folder.resolve() or name == str(folder):
        name = folder.resolve().name
    return LoadedModel(module=module, name=name, kind="hf", sha256=_checkpoint_sha256(folder, info["weights"]),
                       arch=info["arch"] or type(model).__name__, path=str(folder), input_shape=input_shape)


# --- checks ---------------------------------------------------------------------------------------

def _config(folder: Path) -> dict:
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a Hugging Face checkpoint folder (config.json + model.safetensors); "
                         f"found {'a file' if folder.exists() else 'no such folder'}")
    if not (folder / CONFIG).is_file():
        raise InputError(f"{folder}: expected a Hugging Face checkpoint folder with config.json beside its "
                         f"model.safetensors; found no config.json (files: {_listing(folder)})")
    config = _read_json(folder / CONFIG, folder)
    if not isinstance(config, dict):
        raise InputError(f"{folder / CONFIG}: expected a JSON object (a transformers config); found "
                         f"{type(config).__name__}")
    return config


def _read_json(file: Path, folder: Path):
    if file.stat().st_size > _MAX_JSON_BYTES:
        raise InputError(f"{file}: expected a small JSON file; found {file.stat().st_size:,} bytes")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{file}: expected JSON text; found text that does not parse ({err})") from err


def _task(folder: Path, config: dict) -> str:
    """text | image, from config.json's architectures (else its model_type); refuses what is neither."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if config.get("auto_map"):
        raise InputError(REMOTE_CODE.format(path=folder, file=CONFIG, found=_short(config["auto_map"]),
                                            version=_transformers_version()))
    if not isinstance(model_type, str) or not model_type:
        raise InputError(f"{folder / CONFIG}: expected a transformers config with a model_type (e.g. 'bert', 'vit'); "
                         f"found {'none' if model_type is None else repr(model_type)}")
    seq, img, known = _mappings()
    if model_type not in known:
        raise InputError(f"{folder / CONFIG}: refused: model_type {model_type!r} is not an architecture transformers "
                         f"{_transformers_version()} ships, and code from the checkpoint is never run "
                         "(trust_remote_code); expected a model_type such as 'bert', 'roberta', 'distilbert', 'vit'")
    if archs:
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise InputError(f"{folder / CONFIG}: expected architectures to be a list of class names; found {archs!r}")
        arch = archs[0]
        task = next((t for suffix, t in _TASKS.items() if arch.endswith(suffix)), None)
        if task is None:
            raise InputError(f"{folder}: expected a checkpoint for sequence or image classification (config.json "
                             f"architectures ending in ForSequenceClassification or ForImageClassification); found "
                             f"{arch}. Fine-tune it for classification and save_pretrained the result")
        table = seq if task == "text" else img
        if model_type not in table or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", arch):
            raise InputError(f"{folder / CONFIG}: refused: architecture {arch!r} is not a "
                             f"{'sequence' if task == 'text' else 'image'} classifier transformers "
                             f"{_transformers_version()} ships for model_type {model_type!r}, and code from the "
                             f"checkpoint is never run (trust_remote_code)")
        return task
    if model_type in seq and model_type not in img:
        return "text"
    if model_type in img and model_type not in seq:
        return "image"
    raise InputError(f"{folder / CONFIG}: expected architectures naming the classifier (e.g. "
                     f"['BertForSequenceClassification'] or ['ViTForImageClassification']); found none, and "
                     f"model_type {model_type!r} does not say which")


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files the checkpoint's weights are read from; refuses pickled weights."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    pickled = [p.name for p in files if p.name.lower().endswith(PICKLED_SUFFIXES)
               and p.name not in ("training_args.bin",)]
    index = folder / SAFETENSORS_INDEX
    if (folder / SAFETENSORS).is_file():
        weights = [folder / SAFETENSORS]
    elif index.is_file():
        data = _read_json(index, folder)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(f"{index}: expected a weight_map (tensor name -> shard file); found none")
        shards = sorted({str(v) for v in weight_map.values()})
        bad = [s for s in shards if Path(s).name != s or not s.endswith(".safetensors")]
        if bad:
            raise InputError(f"{index}: expected shard file names in this folder ending in .safetensors; found "
                             f"{_few(bad)}")
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            raise InputError(f"{folder}: model.safetensors.index.json lists shards that are not in the folder: "
                             f"{_few(absent)}")
        weights = [folder / s for s in shards]
    elif pickled:
        raise InputError(PICKLED_CHECKPOINT.format(path=folder, found=", ".join(pickled[:4])))
    else:
        raise InputError(f"{folder}: expected the checkpoint's weights as model.safetensors (or shards listed in "
                         f"model.safetensors.index.json); found none (files: {_listing(folder)})")
    for w in weights:
        with open(w, "rb") as f:
            head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            raise InputError(f"{w}: expected a safetensors file (8-byte header length, then a JSON header); found "
                             f"a file that starts with {head[:8]!r}")
    return weights


def _checkpoint_sha256(folder: Path, weights: list[Path]) -> str:
    """SHA-256 over config.json and the safetensors files: each file's name, then its bytes, in name order."""
    h = hashlib.sha256()
    for file in sorted([folder / CONFIG, *weights], key=lambda p: p.name):
        h.update(f"{file.name}\n".encode())
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


# --- transformers -----------------------------------------------------------------------------------

def _transformers():
    return import_transformers('Hugging Face checkpoints')


def _transformers_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # noqa: BLE001 - only for messages
        return "(installed)"


def _mappings() -> tuple[set[str], set[str], set[str]]:
    """model_types transformers ships: (sequence classifiers, image classifiers, every config)."""
    _transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    return (set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES), set(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES),
            set(CONFIG_MAPPING_NAMES))


def _forward_arguments(model: nn.Module) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return set(TEXT_INPUTS)


# --- small helpers ---------------------------------------------------------------------------------

def _few(items, show: int = 4) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - show} more" if len(items) > show else ""
    return ", ".join(items[:show]) + more


def _short(obj) -> str:
    text = json.dumps(obj) if not isinstance(obj, str) else obj
    return text if len(text) <= 120 else text[:117] + "..."


def _listing(folder: Path) -> str:
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return "unreadable"
    return _few(names, 8) if names else "none"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__
