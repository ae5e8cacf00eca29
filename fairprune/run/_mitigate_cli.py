"""``fairprune mitigate``: the command's body (its options are declared in :mod:`fairprune.run.cli`)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from ..core.errors import InputError
from ..engine.mitigate._engine import MitigationSpec, run_spec
from ..engine.mitigate._result import MitigationResult

__all__ = ["run_mitigate", "spec_from_args", "text_summary"]


def spec_from_args(args) -> MitigationSpec:
    from ..zoo import parse_arch_args
    from ._options import input_options

    if args.sparsity is None:
        raise InputError("--sparsity is required, e.g. --sparsity 0.9")
    out_dir = Path(args.out).expanduser().resolve().parent
    if not out_dir.is_dir():
        raise InputError(f"--out {args.out}: expected an existing folder to write into, found no folder {out_dir}")
    if args.save_model is not None:
        if Path(args.save_model).suffix != ".pt2":
            raise InputError(f"--save-model {args.save_model}: expected a path ending in .pt2 (a torch.export program); "
                             f"found {Path(args.save_model).suffix or 'no extension'}")
        if not Path(args.save_model).expanduser().resolve().parent.is_dir():
            raise InputError(f"--save-model {args.save_model}: expected an existing folder to write into")
    return MitigationSpec(
        sparsity=args.sparsity, method=args.method, when=args.when, epochs=args.epochs, seeds=args.seeds, seed=args.seed,
        alpha=args.alpha, dual_lr=args.dual_lr, warmup=args.warmup, balanced=args.balanced,
        dual_holdout=args.dual_holdout, protect=args.protect,
        lr=args.lr, batch_size=args.batch_size, train_fraction=args.train_fraction,
        select_fraction=args.select_fraction, prune_method=args.prune_method,
        device=args.device, save_model=args.save_model, model=args.model, data=args.data, demo=args.demo,
        arch=args.arch, num_classes=args.num_classes, arch_args=parse_arch_args(args.arch_arg), label=args.label,
        group=tuple(args.group) if args.group else ("group",),
        features=tuple(args.features) if args.features else None, ignore=tuple(args.ignore) if args.ignore else None,
        missing_group=args.missing_group, normalize=args.normalize, train_data=args.train_data,
        resize=args.resize, crop=args.crop, transforms=args.transforms, **input_options(args),
    )


def text_summary(result: MitigationResult) -> str:
    """A plain-text table: every method's held-out overall accuracy and fairness violation (mean ± std), and
    how the recommendation was chosen."""
    d = result.to_dict()["mitigation"]

    def pm(o, key, sub):
        v = o[key][sub]
        std = o[key].get(f"{sub}_std")
        return f"{v:.3f}" + (f" ± {std:.3f}" if std is not None else "")

    rows = [("pruned, no repair", d["before"])] + [(m, o) for m, o in d["methods"].items()]
    lines = [f"sparsity {d['sparsity']:g}, --when {d['when']}, {d['epochs']} epoch(s), lr {d['lr']:g}, "
             f"batch {d['batch_size']}, seeds {d['seeds']}{' (single seed: no spread)' if d['single_seed'] else ''}; "
             f"held-out rows: {d['n_eval']} ({d['split']['source']}), training rows: {d['n_train']}",
             f"{'':<26} {'overall accuracy':>18} {'violation (accuracy)':>22} {'violation (loss)':>18}"]
    for name, o in rows:
        lines.append(f"{name:<26} {pm(o, 'overall', 'accuracy'):>18} {pm(o, 'fairness_violation', 'accuracy'):>22} "
                     f"{pm(o, 'fairness_violation', 'loss'):>18}")
    sel = d.get("selection")
    if sel is None:
        lines.append(f"recommended: {d['recommended']}, chosen on these same held-out rows (no selection rows: "
                     f"its figures flatter it)")
        return "\n".join(lines)
    lines.append(f"recommended: {d['recommended']}, chosen on {sel['n_select']} selection rows kept apart from the "
                 f"training rows (lowest violation within 1 point of the best overall accuracy there); the figures "
                 f"above are on {sel['n_eval']} held-out rows that took no part in the choice")
    lines.append("on the selection rows (violation/accuracy): " + ", ".join(
        f"{m} {o['fairness_violation']['accuracy']:.3f}/{o['overall']['accuracy']:.3f}"
        for m, o in sel["by_method"].items()))
    return "\n".join(lines)


def run_mitigate(args, progress_bar) -> int:
    spec = spec_from_args(args)
    progress, close = progress_bar(args.quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings that matter are recorded in the result and printed below
            result = run_spec(spec, progress=progress)
    finally:
        close()
    Path(args.out).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not args.quiet:
        print(text_summary(result))
        if args.save_model:
            print(f"wrote {args.save_model}")
        print(f"wrote {args.out}")
    return 0
