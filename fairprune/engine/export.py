"""Making pruning permanent: a physically smaller model, or sparse weights, written to a file.

:func:`compact` (:mod:`fairprune.engine.prune._compact`, re-exported here) cuts the channels a structured
mask removed out of a copy of the model with Torch-Pruning: its dependency graph finds each conv/linear channel's coupled partners (bias,
BatchNorm, the next layer's input slice, every channel tied to it through a residual addition), and
the whole coupled group is cut at once. A channel is cut only when every parameter slice of its
group is zero in the masked model, so the cut changes no output; that is then checked on the example
input, within 1e-5 (relative to the logits' scale), and a model that fails the check is refused.

:func:`export_pruned` is ``fairprune export``: structured masks give a compacted ``.pt2``; unstructured
masks give a ``.pt2`` of the masked model (zeros in place, the dense size: dense kernels store and
compute zeros like any other number) or, as ``sparse-safetensors``, the prunable weights in CSR
(:func:`fairprune.engine.footprint.sparse_tensors`; :func:`load_sparse_safetensors` reads them back).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.errors import InputError
from .prune import COMPACTION_CHANGED_OUTPUTS, NOT_COMPACTABLE, compact  # noqa: F401  (re-exported)

__all__ = ["compact", "export_pruned", "run_export", "ExportReport", "load_sparse_safetensors", "FORMATS"]

FORMATS = ("pt2", "sparse-safetensors")

# --- sparse safetensors --------------------------------------------------------------------------

def load_sparse_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state_dict of a ``--format sparse-safetensors`` file (CSR weights densified).

    Load it with ``model.load_state_dict(...)`` into the architecture it came from.
    """
    from safetensors import safe_open

    from .footprint import CSR_FORMAT

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types; the message says what was wrong
        raise InputError(f"{path}: expected a safetensors file; could not read it: {err}") from err
    shapes = json.loads(metadata.get("csr", "{}")) if metadata.get("format") == CSR_FORMAT else {}
    for name, shape in shapes.items():
        parts = [tensors.pop(f"{name}.{p}", None) for p in ("crow_indices", "col_indices", "values")]
        if any(t is None for t in parts):
            raise InputError(f"{path}: metadata lists {name} as CSR but its crow_indices/col_indices/values are missing")
        crow, col, values = parts
        rows, cols = shape[0], 1
        for s in shape[1:]:
            cols *= s
        counts = crow.long().diff()
        if crow.numel() != rows + 1 or int(counts.sum()) != col.numel() or col.numel() != values.numel():
            raise InputError(f"{path}: the CSR tensors of {name} do not fit together for shape {shape}")
        dense = values.new_zeros(rows, cols)
        dense[torch.repeat_interleave(torch.arange(rows), counts), col.long()] = values
        tensors[name] = dense.reshape(shape)
    return tensors


# --- fairprune export ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportReport:
    """What ``fairprune export`` wrote, and how it compares with the dense model.

    ``*_weights_bytes``: safetensors bytes of the weights (the audit's ``size_bytes`` measure);
    ``file_bytes``: the file written (a ``.pt2`` adds its graph); ``max_abs_diff``: max |Δlogit|
    between the masked model and the written one, loaded back, on ``check_rows`` rows.
    """

    path: str
    format: str
    compacted: bool
    dense_weights_bytes: int
    weights_bytes: int
    file_bytes: int
    dense_parameters: int
    parameters: int
    achieved_sparsity: float
    max_abs_diff: float
    check_rows: int
    notes: list[str] = field(default_factory=list)


def export_pruned(model, masks: Mapping[str, torch.Tensor], *, example_input: torch.Tensor,
                  check_input: torch.Tensor, out: str | Path, structured: bool, fmt: str = "pt2") -> ExportReport:
    """Write ``model`` (a LoadedModel) pruned with ``masks`` to ``out``; the dense weights are restored after.

    ``structured`` masks give a compacted ``.pt2`` (:func:`compact`); otherwise the ``.pt2`` holds the
    masked model at the dense size. ``fmt="sparse-safetensors"`` writes the masked weights with the
    prunable ones in CSR where smaller, for any method. The written file is read back and run on
    ``check_input`` against the masked model.
    """
    from safetensors.torch import save_file

    from .evaluate import model_outputs
    from .footprint import dense_size, serialised_size, sparse_tensors
    from .prune import MaskedModel, prunable_parameters
    from ..zoo import load_model, save_pt2

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise InputError(f"{out}: the folder {out.parent} does not exist")
    module = model.module
    n_dense = sum(p.numel() for p in module.parameters())
    dense_bytes = dense_size(module)
    prunable = list(prunable_parameters(module))
    notes: list[str] = []
    masked = MaskedModel(module)
    try:
        masked.apply(masks)
        achieved = masked.achieved_sparsity(prunable)
        with torch.no_grad():
            reference = model_outputs(model, check_input)
        if fmt == "pt2":
            if structured:
                small = compact(module, masks, example_input)
                compacted = True
            else:
                small, compacted = module, False
                notes.append("unstructured sparsity: the zeros are kept in place, so the .pt2 has the dense size "
                             "(dense kernels store and compute zeros like any other weight); --format "
                             "sparse-safetensors stores the pruned weights in CSR")
            if model.kind == "torchscript":
                raise InputError("a TorchScript model cannot be re-exported as .pt2; expected a .pt2 program or "
                                 "weights with --arch, or use --format sparse-safetensors")
            try:
                # two rows, copied: the archive keeps its sample input, and a slice would drag its whole storage along
                save_pt2(small, example_input[:2].clone(), out)
            except (RuntimeError, TypeError, ValueError, AssertionError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise InputError(f"torch.export could not export the pruned model ({first}); "
                                 f"use --format sparse-safetensors") from err
            weights_bytes = dense_size(small)
            n_params = sum(p.numel() for p in small.parameters())
            loaded = load_model(out)
            loaded.module.to(check_input.device)
            with torch.no_grad():
                written = model_outputs(loaded, check_input)
        else:
            compacted = False
            tensors, metadata = sparse_tensors(module, prunable)
            save_file(tensors, str(out), metadata=metadata or None)
            weights_bytes = serialised_size(tensors, metadata)
            n_params = n_dense
            if not metadata:
                notes.append("no prunable weight is smaller in CSR at this sparsity: all are stored dense")
            # read it back into the live model (same values, so restoring afterwards is exact) and run it
            unexpected = module.load_state_dict(load_sparse_safetensors(out), strict=False).unexpected_keys
            if unexpected:
                raise RuntimeError(f"{out}: written tensors the model does not have: {unexpected[:5]}")
            with torch.no_grad():
                written = model_outputs(model, check_input)
        diff = float((written.float() - reference.float()).abs().max())
        if not diff <= 1e-4 * max(1.0, float(reference.abs().max())):
            raise RuntimeError(f"the written model {out} gives outputs up to {diff:.3g} away from the masked model's")
    finally:
        masked.restore()
    return ExportReport(str(out), fmt, compacted, dense_bytes, weights_bytes, out.stat().st_size, n_dense, n_params,
                        achieved, diff, int(check_input.shape[0]), notes)


def run_export(model, data, *, sparsity: float, method: str, out: str | Path, fmt: str = "pt2", seed: int = 0,
               device: str | torch.device | None = None, check_rows: int = 256) -> ExportReport:
    """``fairprune export``: prune ``model`` (a LoadedModel) to ``sparsity`` with ``method`` and write it.

    ``data`` (a GroupedDataset; its 'test' rows when it has a split) supplies the example input
    (up to 64 rows) and the rows on which the written model is checked against the masked one.
    """
    from .evaluate import resolve_device
    from .footprint import STRUCTURED_METHODS
    from .prune import compute_masks, get_method

    get_method(method)
    try:
        sparsity = float(sparsity)
    except (TypeError, ValueError):
        raise InputError(f"--sparsity must be a number in [0, 1), e.g. 0.5; found {sparsity!r}") from None
    if not 0.0 <= sparsity < 1.0:
        raise InputError(f"--sparsity must be a fraction in [0, 1), e.g. 0.5 for 50%; found {sparsity!r}")
    dev = resolve_device(device)
    rows = data.part("test") if data.split is not None else data
    model.module.to(dev)
    check = next(rows.batches(min(check_rows, rows.n), dev))[0]
    example = check[:64]
    masks = compute_masks(model.module, method, sparsity, seed=seed, example_input=example[:2])
    return export_pruned(model, masks, example_input=example, check_input=check, out=out,
                         structured=method in STRUCTURED_METHODS, fmt=fmt)
