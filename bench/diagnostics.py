"""What ``audit --diagnostics`` costs, as a multiple of the plain audit measured in the same run (issue 15).

    .venv/bin/python bench/diagnostics.py [--quick] [--rows 64] [--side 64] [--threads 1] [--models a,b]
                                          [--profile]

For each model (torchvision EfficientNet-B0 and RegNetY-400MF, random weights, ``num_classes=3``), on the same
``--rows`` random inputs 3 x side x side with two groups (alternating rows) and levels 0.5 and 0.9 (global
magnitude), three audits through the library (``fairprune.engine.audit.audit``, what the CLI runs):

- plain:   no diagnostics (the baseline, 1.00x);
- before:  ``diagnostics=True`` with λ_max's standard error from one Hessian-vector product per row part (4
           parts), as before issue 15. Selected by building the operators with ``quadratic=False``;
- after:   ``diagnostics=True`` as shipped: the row-part quotients vᵀH_k v from one forward-over-forward pass over
           all rows (``HessianOperator.quadratic_rows``), which runs no backward pass (and so never PyTorch's
           double backward of a grouped convolution, which loops over the groups on CPU).

Two more columns time the per-factor options a user can set (``audit --diagnostics-option KEY=VALUE``):
``hessian=false`` (gradient norms and margins only) and ``hutchinson_rel_se=0.2`` (the trace's probes stop once
its standard error is within 20% of it). The figures are the same: the bench prints the largest relative difference between before and after over the
Hessian figures (λ_max, its standard error, Tr, its standard error), besides the wall-clock seconds and ratios.
``--profile`` prints where the time of the "after" diagnostics goes (cProfile, the 25 largest cumulative entries).
Timings are wall clock on a shared machine: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import math
import time

import numpy as np
import torch

MODELS = ("efficientnet_b0", "regnet_y_400mf")
HESSIAN_KEYS = ("hessian_max_eig", "hessian_max_eig_se", "hessian_trace", "hessian_trace_se")


def _data(rows: int, side: int):
    from fairprune.data import GroupedDataset

    g = torch.Generator().manual_seed(0)
    x = torch.rand(rows, 3, side, side, generator=g)
    y = torch.randint(0, 3, (rows,), generator=g)
    group = np.array(["a", "b"] * (rows // 2) + ["a"] * (rows % 2), dtype=object)
    return GroupedDataset(x=x, y=y, group=group, name="synthetic", sha256="0" * 64)


def _model(name: str):
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model(name, num_classes=3).eval()


def _audit(name: str, data, diagnostics, *, quadratic: bool = True, profile: bool = False):
    from fairprune.engine.audit import audit
    from fairprune.engine.diagnose import _run

    original = _run.HessianOperator
    if not quadratic:
        _run.HessianOperator = functools.partial(original, quadratic=False)
    prof = None
    try:
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t = time.perf_counter()
        result = audit(_model(name), data, sparsities=[0.5, 0.9], diagnostics=diagnostics, seed=0, device="cpu")
        seconds = time.perf_counter() - t
    finally:
        if prof is not None:
            prof.disable()
        _run.HessianOperator = original
    return seconds, result, prof


def _hessian_figures(result) -> list[float]:
    d = result.diagnostics
    return [g[k] for part in [d["dense"], *d["levels"]] for g in part.values() for k in HESSIAN_KEYS]


def _max_rel_diff(a: list, b: list) -> float:
    out = 0.0
    for u, v in zip(a, b):
        if u is None or v is None:
            if u is not v:
                return math.inf
            continue
        out = max(out, abs(u - v) / max(abs(u), abs(v), 1e-300))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="16 rows of 3x32x32 (checks the bench runs)")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.side = 16, 32
    torch.set_num_threads(args.threads)
    data = _data(args.rows, args.side)
    print(f"audit vs audit --diagnostics: {args.rows} rows of 3x{args.side}x{args.side}, 2 groups, levels 0.5 and 0.9, "
          f"random weights, CPU, {torch.get_num_threads()} thread(s)")
    print(f"  {'model':<18}{'plain s':>9}{'before s':>10}{'ratio':>8}{'after s':>10}{'ratio':>8}{'saved':>8}"
          f"{'Hessian figures differ by':>28}{'hessian=false s':>17}{'ratio':>8}{'rel_se=0.2 s':>14}{'ratio':>8}")
    for name in args.models.split(","):
        plain, _, _ = _audit(name, data, False)
        before, r_before, _ = _audit(name, data, True, quadratic=False)
        after, r_after, prof = _audit(name, data, True, profile=args.profile)
        diff = _max_rel_diff(_hessian_figures(r_before), _hessian_figures(r_after))
        # the per-factor options a user can set (audit --diagnostics-option KEY=VALUE): no Hessian at all, and
        # Hutchinson's trace stopped once its standard error is within 20% of the trace
        bare, _, _ = _audit(name, data, {"hessian": False})
        early, _, _ = _audit(name, data, {"hutchinson_rel_se": 0.2})
        print(f"  {name:<18}{plain:9.1f}{before:10.1f}{before / plain:7.1f}x{after:10.1f}{after / plain:7.1f}x"
              f"{1 - after / before:7.0%}{diff:>20.1e} (rel){bare:17.1f}{bare / plain:7.1f}x{early:14.1f}"
              f"{early / plain:7.1f}x", flush=True)
        if prof is not None:
            import pstats

            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
