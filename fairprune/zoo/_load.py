"""Loading models from files, safely (re-exported by :mod:`fairprune.zoo`).

``load_model`` dispatches on the file's content, not its extension, and never runs code from the
file: bare weights are read with safetensors or ``torch.load(weights_only=True)`` and put into a
registry architecture; a whole pickled model is refused (unpickling runs arbitrary code); a ``.pt2``
archive is inspected by :mod:`fairprune.zoo._pt2_guard` before torch opens it; TorchScript is accepted as
the code it is. Every problem with the file is an ``InputError`` naming the file, what was expected
and what was found.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core._hash import sha256_file
from ..core.errors import InputError
from ._hf import is_hf_checkpoint, load_hf_checkpoint
from ._loaded import LoadedModel, _state_dict_sha256  # noqa: F401  (LoadedModel is re-exported here)
from ._pt2_guard import check_pt2_archive
from ._registry import create_model

ACCEPTED_FORMATS = (
    "bare weights (.safetensors, or a state_dict .pt/.pth from torch.save(model.state_dict())) with --arch NAME; "
    "a torch.export program (.pt2, recommended); a TorchScript archive (.pt); or a Hugging Face checkpoint folder "
    "(config.json + model.safetensors)"
)
NEEDS_ARCH = (
    "{path}: the file holds bare weights ({n} tensors) but no architecture; expected --arch NAME "
    "(with --num-classes K / --arch-arg KEY=VALUE as needed); `fairprune models` lists the names"
)
PICKLED_MODEL = (
    "{path}: refused: expected weights or an exported program, found a pickled Python object ({found}); "
    "loading it means unpickling it, and unpickling runs arbitrary code. Where you trust the file, re-save it "
    "as torch.export.save(torch.export.export(model.eval(), (x,)), \"model.pt2\"), or as "
    "safetensors.torch.save_file(model.state_dict(), \"model.safetensors\") and pass --arch NAME"
)
TRAINING_PROGRAM = (
    "{path}: the program was exported in training mode ({ops}) and could not be moved to eval form ({why}); "
    "expected a program exported after model.eval(): "
    "torch.export.save(torch.export.export(model.eval(), (x,)), \"model.pt2\")"
)
#: The dashboard loads TorchScript only when its server's environment sets this to 1 (see app/files.py).
TORCHSCRIPT_ENV = "FAIRPRUNE_ALLOW_TORCHSCRIPT"
BAD_TORCHSCRIPT_SETTING = "{env}: expected 1 (accept TorchScript models) or 0 (refuse them); found {found!r}"
TORCHSCRIPT_REFUSED = (
    "{path}: refused: expected bare weights (.safetensors, state_dict .pt) or a torch.export program (.pt2); "
    "found a TorchScript archive, which is code: torch.jit.load runs the TorchScript program it holds, and "
    "TorchScript is not accepted here. Re-export the model where you trust it: "
    "torch.export.save(torch.export.export(model.eval(), (x,)), \"model.pt2\"). The fairprune command line "
    "accepts TorchScript; the dashboard accepts it only when its administrator sets "
    + TORCHSCRIPT_ENV + "=1 in the server's environment and restarts it"
)
_PROGRAM_KINDS = {"pt2": "torch.export program", "torchscript": "TorchScript archive"}
_PICKLE_HEADERS = frozenset(bytes([0x80, protocol]) for protocol in range(2, 6))


class ExportedModule(nn.Module):
    """A loaded ``torch.export`` program as an ordinary module.

    ``ExportedProgram.module()`` gives a graph module whose ``train()``/``eval()`` raise, because its
    graph is fixed. ``load_model`` moves that graph to eval form, so here ``train``/``eval`` only set
    the flag: dropout and BatchNorm stay in eval form even while fine-tuning, which is what
    fairprune's fine-tuning wants anyway.
    """

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def forward(self, *inputs: torch.Tensor):
        # The program's positional input tensors, in order (one, or several: fairprune.data.Inputs).
        return self.program(*inputs)

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self


def load_model(path: str | Path, *, arch: str | None = None, num_classes: int | None = None,
               arch_args: dict[str, object] | None = None, allow_torchscript: bool = True) -> LoadedModel:
    """Load a model file for inference without running code from it.

    What the file holds is read from its bytes, not its extension:

    - safetensors, or a ``torch.save`` zip holding a state_dict (read with ``weights_only=True``):
      bare weights, put into ``create_model(arch, num_classes=..., **arch_args)`` with strict keys;
    - a ``torch.export`` archive (``.pt2``): inspected first (:mod:`fairprune.zoo._pt2_guard`), then
      loaded, moved to eval form if it was exported in training mode;
    - TorchScript: loaded with ``torch.jit.load``. It is code rather than data (TorchScript code,
      not arbitrary Python) and deprecated upstream; accepted, but ``.pt2`` is recommended. With
      ``allow_torchscript=False`` (the dashboard, unless its server opts in) it is refused, before
      torch opens it, with ``TORCHSCRIPT_REFUSED``;
    - a whole pickled model (``torch.save(model)``, or any plain pickle) is refused: unpickling runs
      arbitrary code. The refusal says how to re-save it.

    A folder holding ``config.json`` is a Hugging Face checkpoint, loaded by
    :func:`fairprune.zoo._hf.load_hf_checkpoint`: safetensors weights only (pickled ``pytorch_model.bin``
    refused like any pickle), never ``trust_remote_code``, nothing downloaded; ``kind`` is ``"hf"``.

    ``arch``/``num_classes``/``arch_args`` apply to bare weights only (``num_classes`` is passed
    only when given). Raises InputError naming the file, what was expected and what was found.
    """
    path = Path(path)
    if is_hf_checkpoint(path):   # a folder holding config.json
        if arch is not None or num_classes is not None or arch_args:
            raise InputError(f"{path}: --arch, --num-classes and --arch-arg apply to bare weights; expected none of "
                             f"them, found a Hugging Face checkpoint folder, whose config.json names its architecture")
        return load_hf_checkpoint(path)
    kind = _sniff(path)
    if kind == "pickle":
        raise InputError(PICKLED_MODEL.format(path=path, found="a plain pickle file"))
    if kind in ("safetensors", "torch_zip"):
        state = _read_safetensors(path) if kind == "safetensors" else _read_state_dict(path)
        return _from_weights(path, state, arch=arch, num_classes=num_classes, arch_args=arch_args or {})
    if arch is not None or num_classes is not None or arch_args:
        raise InputError(f"{path}: --arch, --num-classes and --arch-arg apply to bare weights; expected none of "
                         f"them, found a {_PROGRAM_KINDS[kind]}, which carries its own architecture")
    if kind == "torchscript" and not allow_torchscript:
        raise InputError(TORCHSCRIPT_REFUSED.format(path=path))
    return _load_pt2(path) if kind == "pt2" else _load_torchscript(path)


def parse_arch_args(items: list[str]) -> dict[str, object]:
    """``["hidden=64,32", "dropout=0.1"]`` -> ``{"hidden": (64, 32), "dropout": 0.1}``.

    Values become bool (true/false), int, float, a tuple of ints ("64,32", "64,"), else stay str.
    """
    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key.isidentifier() or not text:
            raise InputError(f"--arch-arg {item!r}: expected KEY=VALUE with KEY a Python identifier and a "
                             f"non-empty VALUE, e.g. hidden=64,32")
        if key in out:
            raise InputError(f"--arch-arg {key} is given twice; expected each KEY once")
        out[key] = _parse_value(key, text)
    return out


def save_pt2(module: nn.Module, example_input: torch.Tensor, path: str | Path) -> None:
    """Save ``module`` as a ``.pt2`` program that takes any batch size (used for mitigated models).

    Exported in eval form (the module's train/eval flag is restored afterwards) with a dynamic
    batch dimension (``torch.export.Dim``, so the program needs no padding), then moved to CPU so
    any machine can load it. ``example_input``: one batch (N, ...) of model-ready input; a batch
    of one is doubled, because export specialises dimensions of size 1.
    """
    from torch.export.passes import move_to_device_pass

    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    # several positional inputs (fairprune.data.Inputs: ``.tensors``) are exported as the program's arguments, in order
    args = tuple(getattr(example_input, "tensors", (example_input,)))
    if not all(isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] > 0 for a in args):
        got = [tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args]
        raise ValueError(f"example_input must be a batch tensor (N, ...) with N >= 1; got {got}")
    if args[0].shape[0] == 1:
        args = tuple(torch.cat([a, a]) for a in args)
    if isinstance(module, ExportedModule):
        # export traces named parameters, not ExportedModule's *inputs; the program is already in eval form (its
        # module has no working .eval())
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(module.program, args, dynamic_shapes=tuple({0: batch} for _ in args))
        torch.export.save(move_to_device_pass(program, "cpu"), str(path))
        return
    was_training = module.training
    module.eval()
    try:
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))
    finally:
        module.train(was_training)
    torch.export.save(move_to_device_pass(program, "cpu"), str(path))


# --- what a file holds ---------------------------------------------------------------------------

def torchscript_allowed() -> bool:
    """Whether a server (the dashboard and its worker) loads TorchScript models: ``$FAIRPRUNE_ALLOW_TORCHSCRIPT`` is
    1/true/yes/on. Unset, empty or 0/false/no/off: refused (the default). Anything else raises InputError. The
    command line does not ask: a person running it chose the file."""
    import os

    raw = os.environ.get(TORCHSCRIPT_ENV, "").strip()
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("", "0", "false", "no", "off"):
        return False
    raise InputError(BAD_TORCHSCRIPT_SETTING.format(env=TORCHSCRIPT_ENV, found=raw))


def model_kind(path: str | Path) -> str:
    """What a model file holds, read from its bytes without loading it: safetensors | torch_zip | torchscript | pt2 |
    pickle; ``hf`` for a folder holding config.json (a Hugging Face checkpoint, checked when loaded). Raises
    InputError when there is no such file."""
    path = Path(path)
    if is_hf_checkpoint(path):
        return "hf"
    return _sniff(path)


def _sniff(path: Path) -> str:
    """What ``path`` holds, from its bytes: safetensors | torch_zip | torchscript | pt2 | pickle."""
    if not path.is_file():
        found = "a directory with no config.json" if path.is_dir() else "no such file"
        raise InputError(f"{path}: expected a model file, {ACCEPTED_FORMATS}; found {found}")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or _has_zip_directory(path):
        return _sniff_zip(path)
    if head[:2] in _PICKLE_HEADERS:
        return "pickle"
    if head[8:9] == b"{":  # safetensors: 8-byte little-endian header length, then a JSON header
        return "safetensors"
    raise InputError(f"{path}: expected a model file, {ACCEPTED_FORMATS}; found none of these "
                     f"(the file starts with {head[:8]!r})")


def _has_zip_directory(path: Path) -> bool:
    """zipfile.is_zipfile, except that a damaged end record it raises on (a ZIP64 record claiming several
    disks) also counts as a zip, so that it is reported as a corrupt archive."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, EOFError, ValueError):
        return True


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n.split("/", 1)[1] for n in zf.namelist() if "/" in n}
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as err:
        # NotImplementedError: an unsupported zip version; ValueError (UnicodeDecodeError): a member name
        # flagged UTF-8 that is not
        raise InputError(f"{path}: expected a model file, {ACCEPTED_FORMATS}; found a corrupt or truncated zip "
                         f"archive ({err})") from err
    if "archive_format" in names:
        return "pt2"
    if "constants.pkl" in names or any(n.startswith("code/") for n in names):
        return "torchscript"
    if "data.pkl" in names:
        return "torch_zip"
    raise InputError(f"{path}: expected a model file, {ACCEPTED_FORMATS}; found a zip archive that is none of "
                     f"these (no archive_format, code/ or data.pkl entry)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


# --- bare weights --------------------------------------------------------------------------------

def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path}: expected a safetensors file; found a corrupt or truncated one "
                         f"({_first_line(err)})") from err


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` zip, read with ``weights_only=True``: tensors and containers, never classes.

    A whole pickled model names its class in the pickle; the weights-only unpickler stops at that
    name, before constructing anything, with an UnpicklingError that becomes the refusal.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        match = re.search(r"GLOBAL ([\w.]+)", str(err))
        found = f"an object of class {match.group(1)}" if match else "a Python object"
        raise InputError(PICKLED_MODEL.format(path=path, found=found)) from err
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged pickle stream surfaces as KeyError, IndexError, struct.error...
        raise InputError(f"{path}: expected a torch.save archive of a state_dict; found a corrupt one "
                         f"({_first_line(err)})") from err
    if not isinstance(obj, Mapping) or not obj:
        found = f"an empty {type(obj).__name__}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise InputError(f"{path}: expected a state_dict (parameter name -> tensor); found {found}")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items()
           if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise InputError(f"{path}: expected a state_dict (parameter name -> tensor); found entries that are not "
                         f"tensors: {', '.join(bad[:5])}; save model.state_dict() on its own")
    return dict(obj)


def _from_weights(path: Path, state: dict[str, torch.Tensor], *, arch: str | None, num_classes: int | None,
                  arch_args: dict[str, object]) -> LoadedModel:
    if arch is None:
        raise InputError(NEEDS_ARCH.format(path=path, n=len(state)))
    kwargs = dict(arch_args)
    if num_classes is not None:
        if kwargs.get("num_classes", num_classes) != num_classes:
            raise InputError(f"--num-classes {num_classes} and --arch-arg num_classes={kwargs['num_classes']} "
                             f"disagree; expected one of them")
        kwargs["num_classes"] = num_classes
    try:
        model = create_model(arch, **kwargs)
    except InputError:
        raise
    except (ValueError, RuntimeError, TypeError) as err:  # a constructor rejecting an argument or its value
        raise InputError(f"architecture {arch!r} cannot be built with {kwargs}: {_first_line(err)}") from err
    problem = _state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise InputError(f"{path}: the weights do not fit architecture {arch!r} {kwargs}: {problem}; check "
                         f"--arch, --num-classes and --arch-arg (`fairprune models` lists the arguments)")
    # A safetensors file (or a plain dict) carries no per-module format versions, which some modules' loaders
    # require (torchvision's MNASNet refuses version None): the weights are read as the format of the installed
    # code, whose versions the freshly built model's own state_dict carries.
    from collections import OrderedDict

    versioned = OrderedDict(state)
    versioned._metadata = getattr(model.state_dict(), "_metadata", None)
    model.load_state_dict(versioned, strict=True)
    return LoadedModel(module=model.eval(), name=path.stem, kind="weights", sha256=sha256_file(path),
                       arch=arch, path=str(path))


def _state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                         *, show: int = 4) -> str:
    """Missing keys, unexpected keys and shape mismatches, a few of each ("" when the dicts fit)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} is {tuple(found[k].shape)} in the file, {tuple(t.shape)} in the model"
              for k, t in expected.items() if k in found and found[k].shape != t.shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" and {len(items) - show} more" if len(items) > show else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:show])}{more}")
    if unexpected and all(k.startswith("module.") for k in found):
        parts.append("the file's keys start with 'module.' (saved from DataParallel/DDP): "
                     "save model.module.state_dict()")
    return "; ".join(parts)


# --- programs ------------------------------------------------------------------------------------

def _load_torchscript(path: Path) -> LoadedModel:
    """TorchScript: code rather than data (TorchScript, not arbitrary Python), deprecated upstream.

    Accepted because many models still ship this way; ``.pt2`` is the recommended format.
    """
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged archive surfaces as RuntimeError, IndexError (C++ at())...
        raise InputError(f"{path}: expected a TorchScript archive torch.jit.load can read; found one it cannot "
                         f"({_first_line(err)})") from err
    return LoadedModel(module=module.eval(), name=path.stem, kind="torchscript", sha256=sha256_file(path),
                       path=str(path))


def _load_pt2(path: Path) -> LoadedModel:
    # Read once: the bytes the guard inspects are the bytes torch loads and we fingerprint.
    data = path.read_bytes()
    check_pt2_archive(data, name=str(path))
    try:
        program = torch.export.load(io.BytesIO(data))
        graph_module = program.module()
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, KeyError, SerializeError...: all a bad file
        raise InputError(f"{path}: expected a torch.export program torch {torch.__version__} can load; "
                         f"torch.export.load failed ({_first_line(err)})") from err
    fixed_batch_size, input_shape = _program_input(program, path)
    training = _training_nodes(graph_module)
    if training:
        _move_to_eval(graph_module, program, path, training)
    return LoadedModel(module=ExportedModule(graph_module).eval(), name=path.stem, kind="pt2",
                       sha256=hashlib.sha256(data).hexdigest(), fixed_batch_size=fixed_batch_size,
                       path=str(path), input_shape=input_shape)


def _program_input(program: torch.export.ExportedProgram, path: Path) -> tuple[int | None, tuple[int, ...] | None]:
    """(static batch size or None, static per-sample shape or None) of the program's input tensor.

    Read from the input placeholder's metadata: a dimension exported as dynamic is a SymInt there.
    """
    vals = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    inputs = [vals.get(name) for name in program.graph_signature.user_inputs]
    tensors = [v for v in inputs if isinstance(v, torch.Tensor)]
    if not tensors or len(tensors) != len(inputs) or any(t.dim() == 0 for t in tensors):
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in inputs]
        raise InputError(f"{path}: expected a program taking one or more input tensors (N, ...), passed "
                         f"positionally; found inputs {shapes}")
    batch, *sample = tensors[0].shape
    fixed = batch if isinstance(batch, int) else None
    # several inputs: the per-sample shape of the first is not the whole story, so none is recorded
    shape = tuple(sample) if len(tensors) == 1 and all(isinstance(d, int) for d in sample) else None
    return fixed, shape


@functools.cache
def _eval_rewrites() -> dict:
    """Training-mode op -> how to make it its eval-mode self.

    ("flag", i): set argument i (``training``/``train``) to False; ("twin", op): call ``op`` instead,
    same arguments; ("none", None): no eval form known. This is the rewrite torchao's
    ``move_exported_model_to_eval`` does (flip the training flag of dropout and batch_norm), over
    every training variant export emits; torch 2.14.1 no longer ships
    ``torch.ao.quantization.move_exported_model_to_eval`` and torchao is not a dependency, so
    fairprune does it itself, and ``_move_to_eval`` checks the result either way.
    """
    aten = torch.ops.aten
    return {
        aten.dropout.default: ("flag", 2), aten.feature_dropout.default: ("flag", 2),
        aten.alpha_dropout.default: ("flag", 2), aten.feature_alpha_dropout.default: ("flag", 2),
        aten.native_dropout.default: ("flag", 2),
        aten.batch_norm.default: ("flag", 5), aten.native_batch_norm.default: ("flag", 5),
        aten._native_batch_norm_legit.default: ("flag", 5),
        aten._native_batch_norm_legit_functional.default: ("flag", 5),
        aten.cudnn_batch_norm.default: ("flag", 5), aten.miopen_batch_norm.default: ("flag", 5),
        aten._batch_norm_with_update.default: ("twin", aten._batch_norm_no_update.default),
        aten._batch_norm_with_update_functional.default: ("none", None),
    }


def _graph_modules(module: nn.Module) -> list[torch.fx.GraphModule]:
    """The module and its subgraphs (branches of control-flow ops live in submodules)."""
    return [m for m in module.modules() if isinstance(m, torch.fx.GraphModule)]


def _flag(node: torch.fx.Node, index: int) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(node.target._schema.arguments[index].name)


def _training_nodes(module: nn.Module) -> list[torch.fx.Node]:
    """Nodes that compute differently in training mode: dropout, batch-statistics BatchNorm."""
    rewrites = _eval_rewrites()
    found = []
    for gm in _graph_modules(module):
        for node in gm.graph.nodes:
            rule = rewrites.get(node.target) if node.op == "call_function" else None
            if rule and (rule[0] != "flag" or _flag(node, rule[1]) is not False):
                found.append(node)
    return found


def _move_to_eval(module: nn.Module, program: torch.export.ExportedProgram, path: Path,
                  nodes: list[torch.fx.Node]) -> None:
    """Rewrite training-mode nodes in place into their eval form, then check the module really is.

    Checked on the program's example inputs: two forward passes give equal outputs and leave the
    BatchNorm running statistics as they were. Refuses (InputError) when any of that fails.
    """
    rewrites = _eval_rewrites()
    ops = ", ".join(sorted({str(n.target) for n in nodes}))

    def refuse(why: str) -> InputError:
        return InputError(TRAINING_PROGRAM.format(path=path, ops=ops, why=why))

    for node in nodes:
        how, what = rewrites[node.target]
        if how == "none":
            raise refuse(f"{node.target} has no eval-mode form")
        if how == "twin":
            node.target = what
        elif len(node.args) > what:
            node.args = (*node.args[:what], False, *node.args[what + 1:])
        else:
            node.kwargs = {**node.kwargs, node.target._schema.arguments[what].name: False}
    for gm in _graph_modules(module):
        _drop_batch_counter_updates(gm)
        gm.recompile()

    args, kwargs = program.example_inputs or ((), {})
    if not args and not kwargs:
        raise refuse("the program carries no example inputs to check the result on")
    stats = {k: b.clone() for k, b in module.named_buffers() if not k.endswith("num_batches_tracked")}
    try:
        with torch.no_grad():
            first, second = module(*args, **kwargs), module(*args, **kwargs)
    except (RuntimeError, AssertionError, TypeError, ValueError) as err:
        raise refuse(f"the rewritten program fails on its example inputs: {_first_line(err)}") from err
    if not all(torch.equal(a, b) for a, b in zip(_leaves(first), _leaves(second), strict=True)):
        raise refuse("two forward passes on the same input still differ")
    changed = [k for k, b in module.named_buffers() if k in stats and not torch.equal(b, stats[k])]
    if changed:
        raise refuse(f"a forward pass still updates {', '.join(changed[:3])}")


def _drop_batch_counter_updates(gm: torch.fx.GraphModule) -> None:
    """Remove ``num_batches_tracked += 1``: training bookkeeping that eval-mode BatchNorm skips."""
    for node in list(gm.graph.nodes):
        counter = node.args[0] if node.op == "call_function" and node.args else None
        if (node.target is torch.ops.aten.add_.Tensor and not node.users and isinstance(counter, torch.fx.Node)
                and counter.op == "get_attr" and str(counter.target).endswith("num_batches_tracked")):
            gm.graph.erase_node(node)


def _leaves(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _leaves(item)]
    return []


# --- small helpers -------------------------------------------------------------------------------

def _parse_value(key: str, text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "," in text:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(f"--arch-arg {key}={text}: expected integers separated by commas, e.g. 64,32") from None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text
