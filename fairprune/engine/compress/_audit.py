"""Measuring a compression variant the way an audit measures a pruning level.

The variant is applied to a deep copy of the dense model, evaluated on the same rows, compared with
the dense predictions by :func:`fairprune.engine.metrics.compare` (same tests and intervals), sized and timed
(:mod:`fairprune.engine.footprint`), and, when diagnostics are on, diagnosed (gradient norms and Hessian on a
float copy carrying the variant's weights where that copy can be built; margins always from the
compressed model itself).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np
import torch

from ...core.errors import InputError
from ...core.result import LevelResult
from ._apply import Calibration, Variant, apply_variant
from ._registry import VariantSpec
from ...core.result import VariantResult
from ._size import variant_size

__all__ = ["measure_variant", "select_calibration", "variant_seed", "variant_diagnostics"]


def variant_seed(seed: int, name: str) -> int:
    """A variant's own seed (the violation's permutations): the same variant gets the same numbers whatever
    else is measured (levels use ``seed + round(sparsity * 1e6)``, below 1e6 above the seed; variants sit above 2e6)."""
    return seed + 2_000_000 + zlib.crc32(name.encode()) % 1_000_000


def select_calibration(data, train, *, rows: int, balanced: bool, seed: int, device) -> Calibration:
    """Calibration rows for a static variant: from ``train`` when given, else from ``data`` (the evaluated
    rows); ``rows`` drawn at random (seeded), or with ``balanced`` the same number from every group
    (``rows`` // groups each, all of a smaller group). Records source, count and group mix."""
    source, src = (train, "train") if train is not None else (data, "evaluation")
    groups = np.asarray(source.group).astype(str)
    rng = np.random.default_rng([seed, 0xCA11B])
    if balanced:
        names = sorted(set(groups))
        per = max(1, rows // len(names))
        parts = []
        for g in names:
            members = np.flatnonzero(groups == g)
            take = min(per, len(members))
            parts.append(rng.choice(members, take, replace=False))
        idx = np.sort(np.concatenate(parts))
    else:
        idx = np.sort(rng.choice(source.n, min(rows, source.n), replace=False))
    t = torch.as_tensor(idx, dtype=torch.long)
    x = source.to_float(source.x[t]).to(device)
    mix = {g: int(c) for g, c in zip(*np.unique(groups[idx], return_counts=True))}
    order = source.group_names                      # every group of the source, 0 where none was drawn
    info = {"source": src, "rows": int(len(idx)), "requested_rows": int(rows), "balanced": bool(balanced),
            "groups": {g: mix.get(g, 0) for g in order}, "seed": int(seed)}
    if src == "evaluation":
        info["note"] = ("no training rows (a split column or --train-data), so the calibration rows are drawn from the "
                        "evaluated rows")
    if balanced and len(idx) < rows:
        short = [g for g in order if mix.get(g, 0) < per]
        if short:
            info["note_balanced"] = (f"groups {', '.join(short)} have fewer than {per} rows: all of their rows are used")
    return Calibration(x=x, info=info)


def _weights_figures(auditor, variant: Variant) -> tuple[float, float]:
    """(achieved_sparsity, weight_distance) over the prunable weights, on the values the variant computes with."""
    names = list(auditor.prunable)
    dense = dict(auditor.module.named_parameters())
    weights = variant.weights(names)
    zeros = total = 0
    sq = 0.0
    with torch.no_grad():
        for n in names:
            w = weights[n]
            zeros += int((w == 0).sum())
            total += w.numel()
            sq += float((w.double() - dense[n].detach().double().to(w.device)).pow(2).sum())
    return (zeros / total if total else 0.0), math.sqrt(sq)


def _diag_note(variant: Variant, boundary: bool) -> str:
    spec = variant.spec
    q = spec.quantization
    what = ["gradient norms", "‖g_a‖", "the Hessian figures"] + (["boundary distances"] if boundary else [])
    if q is None:
        return (f"{', '.join(what[:-1])} and {what[-1]} on the 2:4 model itself, over the weights it keeps; margins "
                "and uncertainty from the same model")
    folded = variant.details.get("backend") == "torchao.pt2e"
    carried = {"fp16": "its weights and buffers rounded to float16",
               "bf16": "its weights and buffers rounded to bfloat16"}.get(
        q.name, "its dequantized weights" + (" (unfolded from the BatchNorm they were folded with)" if folded else ""))
    acts = {"int8_weight": "activations are float in both",
            "fp16": "activations are float32 there, float16 under autocast in the variant",
            "bf16": "activations are float32 there, bfloat16 under autocast in the variant",
            "int4_weight": "activations are float32 there, bfloat16 in the variant"}.get(
        q.name, "its activations are not quantized there (rounding has no gradient)")
    nm = ", over the weights 2:4 keeps" if spec.has_nm else ""
    return (f"{', '.join(what[:-1])} and {what[-1]} on a float32 copy of the model carrying {carried}{nm}; {acts}; "
            "margins and uncertainty from the compressed model itself")


def variant_diagnostics(auditor, diag, variant: Variant, *, step: Callable[[str], None] | None = None
                        ) -> tuple[dict, str]:
    """({GROUP: DIAG}, diagnostics_note) of a variant (see the module docstring)."""
    from ..diagnose import DIAG_KEYS, diagnose, diagnose_steps, output_stats
    from ..diagnose._run import _clean, _mean
    from ...zoo import LoadedModel

    a = auditor
    step = step or (lambda msg: None)
    label = f"diagnostics ({variant.name})"
    stats = output_stats(variant.model, a.eval_data, batch_size=a.batch_size, device=a.device, cancel=a.cancel)
    groups = np.asarray(a.eval_data.group).astype(str)
    n_steps = diagnose_steps(len(a.names), boundary=diag.config.boundary)
    if variant.float_note is None:
        copy_ = LoadedModel(module=variant.float_copy(), name=f"{a.model.name} [{variant.name}, float copy]",
                            kind=a.model.kind, sha256=a.model.sha256, arch=a.model.arch,
                            fixed_batch_size=a.model.fixed_batch_size, input_shape=a.model.input_shape)
        d = diagnose(copy_, a.eval_data, masks=variant.masks or None, config=diag.config,
                     hessian_rows=diag.hessian_rows, boundary_rows=diag.boundary_rows, init=diag.dense.vectors,
                     index=diag.index, seed=diag.seed, batch_size=a.batch_size, device=a.device, cancel=a.cancel,
                     step=lambda msg: step(f"{label}: {msg}"), hvp=diag.hvp)
        diag.record(d, variant.name)              # its fallbacks and failures reach the result's warnings
        out = {g: {k: d.groups[g][k] for k in DIAG_KEYS} for g in a.names}
        note = _diag_note(variant, diag.config.boundary)
    else:
        out = {g: {k: None for k in DIAG_KEYS} for g in a.names}
        note = ("margins and uncertainty only, from the compressed model itself; no gradient norms or Hessian: "
                + variant.float_note)
        for i in range(n_steps):
            step(f"{label}: margins only" if i == 0 else f"{label}: skipped")
    for g in a.names:
        rows = groups == g
        out[g]["margin_mean"] = _mean(stats["margin"][rows])
        out[g]["uncertainty_mean"] = _mean(stats["uncertainty"][rows])
    return _clean(out), note


def _timed(spec: VariantSpec, details: dict) -> str:
    """What was timed, in the footprint's words: 'masked' where the variant does the dense model's work in the
    dense model's kernels (2:4 without quantization and without torch's sparse kernels), so no speed-up can be
    expected; otherwise 'the compressed model as evaluated'."""
    nm = details.get("nm_2_4") or {}
    if spec.has_nm and spec.quantization is None and not nm.get("sparse_kernel"):
        return "masked"
    return "the compressed model as evaluated"


def measure_variant(auditor, spec: VariantSpec, *, diag=None, step: Callable[[str], None] | None = None
                    ) -> tuple[VariantResult, dict]:
    """(VariantResult, footprint entry) of one variant, measured within ``auditor`` (a fairprune.engine.audit.Auditor)."""
    from ..evaluate import evaluate, model_outputs
    from ..footprint import time_forward
    from ..metrics import compare

    a = auditor
    q = spec.quantization
    calibration = None
    if q is not None and q.name == "int8_static":
        train = a.train_data
        if train is None and a.data.split is not None and (a.data.split == "train").any():
            train = a.data.part("train")
        calibration = select_calibration(a.eval_data, train, rows=q.options["rows"], balanced=q.options["balanced"],
                                         seed=a.seed, device=a.device)
    example = next(a.eval_data.batches(min(8, a.eval_data.n), a.device))[0]
    variant = apply_variant(a.model, spec, device=a.device, example=example, calibration=calibration,
                            batch_size=a.batch_size)
    pred = evaluate(variant.model, a.eval_data, batch_size=a.batch_size, device=a.device, cancel=a.cancel)
    bad = int((~np.isfinite(pred.loss)).sum())
    if bad:
        raise InputError(f"{spec.name}: the compressed model gives non-finite outputs on {bad} of {a.eval_data.n} rows "
                         f"(values beyond the range of its number format, e.g. raw inputs above 65504 in float16); "
                         f"expected finite logits. Scale the inputs inside the model or leave {spec.name} out")
    size_bytes = latency_ms = storage = timing = None
    if a.footprint is not None:
        size_bytes, storage = variant_size(variant.module, nm=spec.has_nm)
        fp = a.footprint
        if fp.latency:
            timing = time_forward(lambda x: model_outputs(variant.model, x), fp.batch, repeats=fp.repeats,
                                  warmup=fp.warmup, budget_s=fp.budget_s)
            latency_ms = timing.median_ms
    # variants are evaluated in full precision: compare them with the dense model's full-precision predictions
    comparison = compare(a.dense_pred_full, pred, a.y, a.groups, a.names, seed=variant_seed(a.seed, spec.name))
    achieved, distance = _weights_figures(a, variant)
    level = LevelResult(sparsity=0.5 if spec.has_nm else 0.0, achieved_sparsity=achieved, weight_distance=distance,
                        size_bytes=size_bytes, latency_ms=latency_ms, **comparison.level_fields())
    det = variant.details
    details = {"steps": [s.canonical() for s in spec.steps], "description": spec.description(),
               "backend": det.get("backend"),
               "kernel": det.get("kernel"), "device": det.get("device"), "calibration": det.get("calibration"),
               "storage": storage}
    for k in ("activation_granularity", "nm_2_4", "kernel_fallback", "backend_fallback", "computed_weights",
              "recomposed_linear", "not_quantized", "note"):
        if k in det:
            details[k] = det[k]
    for kind, info in (det.get("not_quantized") or {}).items():
        more = f" and {info['more_layers']} more" if info.get("more_layers") else ""
        a.warnings.append(f"{spec.name}: {info['weights']:,} of {info['total']:,} {kind} weights were not quantized "
                          f"({', '.join(info['layers'])}{more}): {info['reason']}.")
    if diag is not None:
        diag_groups, note = variant_diagnostics(a, diag, variant, step=step)
        details["diagnostics"] = diag_groups
        details["diagnostics_note"] = note
    footprint = {"method": spec.name, "size_bytes": size_bytes, "latency_ms": latency_ms, "storage": storage,
                 "timed": _timed(spec, det) if timing is not None else None}
    if timing is not None:                        # the spread, as the dense model's and each level's
        footprint["latency_ms_iqr"] = timing.iqr
        footprint["latency_repeats"] = timing.repeats
    return VariantResult(spec.name, spec.setting(), level, variant.quantized_fraction, details,
                         variant.quantized_by_kind), footprint
