"""``fairprune diagnose``: the per-sample CSV (DESIGN.md's contract), kept beside the engine it drives.

``index,group,label,pred,loss,grad_norm,margin`` (and ``boundary_distance`` with ``--boundary``), one row
per measured row (the test rows when the data has a split), ``index`` its position in the input. On the
dense model, or with ``--sparsity S`` on the model pruned as ``fairprune audit`` prunes it at S.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["run_diagnose"]


def run_diagnose(args, spec) -> int:
    """``spec``: the AuditSpec the shared options describe (model, data, method, seed, device)."""
    from ..core.errors import InputError
    from ..engine.audit import load_inputs, sample_diagnostics

    if args.level is not None and not 0.0 <= args.level < 1.0:
        raise InputError(f"--sparsity must be a fraction in [0, 1), e.g. 0.9 for 90%; found {args.level!r}")
    if args.boundary is not None and args.boundary < 1:
        raise InputError(f"--boundary N must be a number of rows per group >= 1; found {args.boundary}")
    model, data, _ = load_inputs(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # warnings that matter come back in table.attrs and are printed below
        table = sample_diagnostics(model, data, sparsity=args.level, method=spec.method,
                                   boundary=args.boundary or False, seed=spec.seed, device=spec.device,
                                   batch_size=spec.batch_size)
    for w in table.attrs.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    try:
        table.to_csv(args.out, index=False)
    except OSError as err:
        raise InputError(f"{args.out}: cannot write the CSV ({err.strerror or err})") from err
    if not args.quiet:
        what = "dense model" if args.level is None else f"{spec.method} at sparsity {args.level:g}"
        print(f"{what}: {len(table)} rows")
        summary = table.groupby("group", sort=False).agg(
            n=("index", "size"), accuracy=("pred", lambda s: float((s == table.loc[s.index, "label"]).mean())),
            loss=("loss", "mean"), grad_norm=("grad_norm", "mean"), margin=("margin", "mean"))
        print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
        print(f"wrote {args.out}", file=sys.stdout)
    return 0
