"""``fairprune ...``: the command line engineers and CI pipelines rely on (DESIGN.md's contract).

Exit status: 0 done; 1 a ``check`` budget not met; 2 bad input (one line ``error: ...`` on stderr);
3 an internal error (one line saying so). A traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .errors import Cancelled, InputError

EXIT_OK, EXIT_BUDGET, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
REPORT_BUGS = "please report it with the command you ran at the fairprune issue tracker (run again with --debug for the traceback)"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one ``error: ...`` line and exit status 2."""

    def error(self, message):
        sys.stderr.write(f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_INPUT)


def _add_model_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="model file: .pt2 (torch.export, recommended), TorchScript, or weights (.safetensors / state_dict .pt) with --arch")
    g.add_argument("--arch", help="architecture name for bare weights (see `fairprune models`)")
    g.add_argument("--num-classes", type=int, help="number of classes for --arch")
    g.add_argument("--arch-arg", action="append", default=[], metavar="KEY=VALUE", help="further architecture argument (repeatable)")
    g.add_argument("--data", help="dataset: .csv, .npz or image .zip")
    g.add_argument("--label", default="label", help="label column (default: label)")
    g.add_argument("--group", action="append", metavar="COL",
                   help="group column (default: group); repeat for intersectional groups; `label` makes the class the group")
    g.add_argument("--features", nargs="+", metavar="COL", help="feature columns, in model-input order (default: all others)")
    g.add_argument("--ignore", nargs="+", metavar="COL", help="columns that are not features")
    g.add_argument("--missing-group", choices=["error", "drop", "category"], default="error",
                   help="rows with no group value: error (default), drop them, or group them as 'missing'")
    g.add_argument("--normalize", metavar="imagenet|MEAN,STD", help="normalise images after scaling to [0, 1]")
    g.add_argument("--train-data", help="rows for fine-tuning (otherwise the data's split column)")
    g.add_argument("--demo", help="a built-in demo supplies model and data (`fairprune demo` lists them)")
    r = p.add_argument_group("run")
    r.add_argument("--method", default="global_magnitude", help="pruning method (default: global_magnitude)")
    r.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fairprune", description="Who pays for pruning? Per-group audits of compressed classifiers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    a = sub.add_parser("audit", help="prune at each sparsity level and measure every group")
    _add_model_data(a)
    a.add_argument("--sparsity", nargs="+", type=float, metavar="S", help="fractions of prunable weights to remove, e.g. 0.5 0.9")
    a.add_argument("--finetune-epochs", type=int, default=0, help="plain fine-tuning of each level before measuring (masks fixed)")
    a.add_argument("--diagnostics", action="store_true", help="per-group gradient norms, Hessian, margins")
    a.add_argument("--executor", choices=["local"], default="local")
    a.add_argument("--out", required=True, help="where to write the fairprune.audit/1 JSON")
    a.add_argument("--quiet", action="store_true", help="no progress bar or table")

    # `fairprune worker ...` is handed to fairprune.jobs.worker_main whole (see main); listed here for --help.
    sub.add_parser("worker", help="execute queued runs from the run store (the dashboard starts one itself)")
    sub.add_parser("models", help="list the architectures --arch accepts, with their arguments")
    sub.add_parser("demo", help="list the built-in demos")
    return parser


def _spec(args, **extra):
    from .audit import AuditSpec
    from .zoo import parse_arch_args

    group = tuple(args.group) if args.group else ("group",)
    return AuditSpec(
        sparsities=tuple(args.sparsity or ()), model=args.model, data=args.data, demo=args.demo, arch=args.arch,
        num_classes=args.num_classes, arch_args=parse_arch_args(args.arch_arg), label=args.label, group=group,
        features=tuple(args.features) if args.features else None, ignore=tuple(args.ignore) if args.ignore else None,
        missing_group=args.missing_group, normalize=args.normalize, method=args.method,
        train_data=args.train_data, seed=args.seed, device=args.device, batch_size=args.batch_size, **extra,
    )


def _progress_bar(quiet: bool):
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = None

    def progress(done, total, message):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True, leave=True)
        bar.set_description(message)
        bar.update(done - bar.n)

    return progress, lambda: bar.close() if bar is not None else None


def cmd_audit(args) -> int:
    from .audit import run_spec
    from .reading import headline, text_table

    if not args.demo and not args.sparsity:
        raise InputError("--sparsity is required, e.g. --sparsity 0.5 0.8 0.9")
    if args.demo and not args.sparsity:
        from .data.demos import get_demo

        args.sparsity = list(get_demo(args.demo).default_sparsities)
    spec = _spec(args, finetune_epochs=args.finetune_epochs, diagnostics=args.diagnostics)
    progress, close = _progress_bar(args.quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings that matter are recorded in the result and printed below
            result = run_spec(spec, progress=progress)
    finally:
        close()
    result.save(args.out)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not args.quiet:
        print(text_table(result))
        print(headline(result))
        print(f"wrote {args.out}")
    return EXIT_OK


def cmd_models(args) -> int:
    from .zoo import list_models, model_info

    for name in list_models():
        info = model_info(name)
        arguments = ", ".join(f"{k}={v}" for k, v in info.arguments.items())
        print(f"{name:<28} {info.source:<11} {info.description}  [{arguments}]")
    return EXIT_OK


def cmd_demo(args) -> int:
    from .data.demos import list_demos

    for d in list_demos():
        groups = " | ".join(f"{label} ({' & '.join(cols)})" for label, cols in d.group_options.items())
        print(f"{d.name}: {d.title}\n  {d.description}\n  groups: {groups}\n  "
              f"try: fairprune audit --demo {d.name} --sparsity {' '.join(map(str, d.default_sparsities))} --out result.json")
    return EXIT_OK


COMMANDS = {"audit": cmd_audit, "models": cmd_models, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:
        from .jobs import worker_main

        return worker_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (exit 2) and --help (exit 0) return their status
        return int(exit_.code or 0)
    if not args.command:
        parser.print_help()
        return EXIT_INPUT
    debug = bool(getattr(args, "debug", False))
    try:
        return COMMANDS[args.command](args)
    except InputError as err:
        if debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_INPUT
    except Cancelled:
        print("error: cancelled", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the contract: one line, exit 3, traceback only with --debug
        if debug:
            raise
        print(f"internal error: {type(err).__name__}: {_one_line(err)}; {REPORT_BUGS}", file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
