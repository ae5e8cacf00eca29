"""``fairprune ...``: the command line engineers and CI pipelines rely on (DESIGN.md's contract).

Exit status: 0 done; 1 a ``check`` budget not met; 2 bad input (one line ``error: ...`` on stderr);
3 an internal error (one line saying so). A traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ..core.errors import Cancelled, InputError
from ._options import input_options

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
    g.add_argument("--data", help="dataset: .csv, .npz, image .zip or image folder (class subfolders or a metadata.csv)")
    g.add_argument("--label", default="label", help="label column (default: label)")
    g.add_argument("--group", action="append", metavar="COL",
                   help="group column (default: group); repeat for intersectional groups; `label` makes the class the group")
    g.add_argument("--features", nargs="+", metavar="COL", help="feature columns, in model-input order (default: all others)")
    g.add_argument("--ignore", nargs="+", metavar="COL", help="columns that are not features")
    g.add_argument("--missing-group", choices=["error", "drop", "category"], default="error",
                   help="rows with no group value: error (default), drop them, or group them as 'missing'")
    g.add_argument("--normalize", metavar="imagenet|MEAN,STD", help="normalise images after scaling to [0, 1]")
    g.add_argument("--resize", type=int, metavar="N", help="images: resize the shorter side to N pixels (bilinear, antialiased)")
    g.add_argument("--crop", metavar="N|H,W", help="images: centre crop to N x N or H x W pixels (after --resize)")
    g.add_argument("--transforms", metavar="NAME",
                   help="images: a torchvision weights entry, e.g. ResNet50_Weights.IMAGENET1K_V2, whose transforms() "
                        "preset (resize, crop, normalisation) is applied; nothing is downloaded")
    g.add_argument("--inputs", nargs="+", metavar="ARRAY",
                   help="NPZ: the arrays passed to the model as positional inputs, in order (default: x, or x0 x1 ...)")
    g.add_argument("--text", metavar="COL",
                   help="CSV: the column of raw text, tokenised by the Hugging Face checkpoint's own tokenizer (--model DIR)")
    g.add_argument("--max-length", type=int, default=128, metavar="N",
                   help="--text: tokens per row (default 128); longer texts are truncated, shorter ones padded")
    g.add_argument("--train-data", help="rows for fine-tuning (otherwise the data's split column)")
    g.add_argument("--demo", help="a built-in demo supplies model and data (`fairprune demo` lists them)")
    r = p.add_argument_group("run")
    r.add_argument("--method", default="global_magnitude", help="pruning method (default: global_magnitude)")
    r.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    r.add_argument("--batch-size", type=int, default=256,
                   help="rows per pass (default 256); on out-of-memory (GPU or CPU) it is halved and retried, never failed")
    r.add_argument("--amp", choices=["auto", "off", "float16", "bfloat16"], default="auto",
                   help="mixed-precision evaluation: auto (default) uses float16 on CUDA only if it changes at most "
                        "0.1%% of the dense model's predictions and no group's accuracy by more than 0.1 points "
                        "(checked on every row; the result's 'precision' section says what was used); never on CPU")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def _compress_help() -> str:
    from ..engine.compress import compression_help

    text = ("compression variants measured beside (or instead of) the levels, each on a copy of the dense model and "
            "written to the result's `compression` section; steps joined by + are applied left to right "
            "(nm_2_4+int8_dynamic), options follow a colon (int8_static:rows=512,balanced). Names: "
            + compression_help())
    return text.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fairprune", description="Who pays for pruning? Per-group audits of compressed classifiers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    a = sub.add_parser("audit", help="prune at each sparsity level (and/or compress: --compress) and measure every group")
    _add_model_data(a)
    a.add_argument("--sparsity", nargs="+", type=float, metavar="S",
                   help="fractions of prunable weights to remove, e.g. 0.5 0.9 (--sparsity, --compress or both)")
    a.add_argument("--compress", nargs="+", metavar="VARIANT", help=_compress_help())
    a.add_argument("--finetune-epochs", type=int, default=0, help="plain fine-tuning of each level before measuring (masks fixed)")
    a.add_argument("--diagnostics", action="store_true", help="per-group gradient norms, Hessian, margins (λ_max on a 64-row subsample "
                   "per group: biased upward)")
    a.add_argument("--diagnostics-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a diagnostics setting (repeatable; implies --diagnostics): hessian=false skips the Hessian "
                        "(most of the cost on large nets), hessian_rows=N, power_iterations=N, hutchinson_probes=N, "
                        "hutchinson_rel_se=R, boundary=true, ... (docs/diagnostics.md lists them)")
    a.add_argument("--no-footprint", action="store_true",
                   help="skip measuring size_bytes (and latency_ms) of the dense model and each level")
    a.add_argument("--latency", action="store_true",
                   help="also time the dense model and each level (latency_ms); a timing differs from run to run, "
                        "so it is off by default and the same command twice gives the same JSON")
    a.add_argument("--executor", choices=["local", "ray"],
                   help="where the audit runs: local (this process; the default, or $FAIRPRUNE_EXECUTOR) or ray "
                        "(one Ray task per sparsity level, merged into the same result)")
    a.add_argument("--ray-address", metavar="ADDR",
                   help="with --executor ray: the cluster (auto, HOST:6379, ray://HEAD:10001; default "
                        "$FAIRPRUNE_RAY_ADDRESS, else a local cluster is started)")
    a.add_argument("--prune-embeddings", action="store_true",
                   help="count nn.Embedding tables as prunable too (by default only linear, conv, attention and "
                        "recurrent weights are)")
    a.add_argument("--out", required=True, help="where to write the fairprune.audit/1 JSON")
    a.add_argument("--quiet", action="store_true", help="no progress bar or table")

    _add_search_check(sub)
    _add_export(sub)
    _add_mitigate(sub)
    _add_diagnose(sub)
    _add_report(sub)
    # `fairprune worker ...` is handed to fairprune.run.jobs.worker_main whole (see main); listed here for --help.
    sub.add_parser("worker", help="execute queued runs from the run store (the dashboard starts one itself)")
    sub.add_parser("models", help="list the architectures --arch accepts, with their arguments")
    sub.add_parser("demo", help="list the built-in demos")
    return parser


def _spec(args, **extra):
    from ..engine.audit import AuditSpec
    from ..zoo import parse_arch_args

    group = tuple(args.group) if args.group else ("group",)
    return AuditSpec(
        sparsities=tuple(args.sparsity or ()), model=args.model, data=args.data, demo=args.demo, arch=args.arch,
        num_classes=args.num_classes, arch_args=parse_arch_args(args.arch_arg), label=args.label, group=group,
        features=tuple(args.features) if args.features else None, ignore=tuple(args.ignore) if args.ignore else None,
        missing_group=args.missing_group, normalize=args.normalize, method=args.method,
        resize=args.resize, crop=args.crop, transforms=args.transforms, **input_options(args),
        train_data=args.train_data, seed=args.seed, device=args.device, batch_size=args.batch_size, amp=args.amp, **extra,
    )


def _diagnostics(args) -> bool | dict:
    """--diagnostics and --diagnostics-option KEY=VALUE -> AuditSpec.diagnostics (False, True or a dict of
    DiagnosticsConfig options, checked by DiagnosticsConfig.coerce)."""
    if not args.diagnostics_option:
        return bool(args.diagnostics)
    from ..engine.diagnose import DiagnosticsConfig

    options = {}
    for item in args.diagnostics_option:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--diagnostics-option: expected KEY=VALUE (e.g. hessian=false); found {item!r}")
        options[key.strip()] = _option_value(raw.strip())
    DiagnosticsConfig.coerce(options)       # unknown keys and bad values fail here, before any work
    return options


def _option_value(raw: str):
    low = raw.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


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
    from .executors import configured_executor
    from ..present.reading import headline, text_table

    compress = tuple(args.compress or ())
    if compress:
        from ..engine.compress import parse_variants

        parse_variants(compress)               # refuse a bad name before anything is loaded
    if not args.sparsity and not compress:
        from ..engine.prune import get_method

        fixed = get_method(args.method).fixed_sparsity
        if fixed is not None:
            args.sparsity = [fixed]            # nm_2_4: 0.5 by definition
        elif args.demo:
            from ..data.demos import get_demo

            args.sparsity = list(get_demo(args.demo).default_sparsities)
        else:
            raise InputError("expected --sparsity S [S ...] or --compress VARIANT [VARIANT ...] (or both), e.g. "
                             "--sparsity 0.5 0.8 0.9 or --compress int8_dynamic fp16; found neither")
    spec = _spec(args, finetune_epochs=args.finetune_epochs, diagnostics=_diagnostics(args),
                 footprint=not args.no_footprint, latency=args.latency, compress=compress,
                 prune_embeddings=args.prune_embeddings)
    executor = configured_executor(args.executor, args.ray_address)
    progress, close = _progress_bar(args.quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings that matter are recorded in the result and printed below
            result = executor.run(spec, progress=progress)
    finally:
        close()
        executor.close()
    result.save(args.out)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not args.quiet:
        for step in result.provenance.preprocessing or ():
            print(f"preprocessing: {step}")
        print(text_table(result))
        print(headline(result))
        print(f"wrote {args.out}")
    return EXIT_OK


def cmd_models(args) -> int:
    from ..zoo import list_models, model_info

    for name in list_models():
        info = model_info(name)
        arguments = ", ".join(f"{k}={v}" for k, v in info.arguments.items())
        print(f"{name:<28} {info.source:<11} {info.description}  [{arguments}]")
    return EXIT_OK


def cmd_demo(args) -> int:
    from ..data.demos import list_demos

    for d in list_demos():
        groups = " | ".join(f"{label} ({' & '.join(cols)})" for label, cols in d.group_options.items())
        print(f"{d.name}: {d.title}\n  {d.description}\n  groups: {groups}\n  "
              f"try: fairprune audit --demo {d.name} --sparsity {' '.join(map(str, d.default_sparsities))} --out result.json")
    return EXIT_OK


def _add_budget(p: argparse.ArgumentParser) -> None:
    b = p.add_argument_group("budget (accuracy fractions: 0.02 = 2 points)")
    b.add_argument("--max-violation", type=float, metavar="V", help="bound on the fairness violation in accuracy (max group drop - min group drop)")
    b.add_argument("--max-overall-drop", type=float, metavar="D", help="bound on the overall accuracy drop")
    b.add_argument("--max-group-drop", type=float, metavar="D", help="bound on every group's accuracy drop")
    b.add_argument("--confidence", type=float, nargs="?", const=0.95, metavar="0.95",
                   help="read each bound on the upper end of its 95%% interval (the violation's is simultaneous over the "
                        "groups; default: the estimate)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="plain fine-tuning of each level before measuring (masks fixed)")


def _add_search_check(sub) -> None:
    s = sub.add_parser("search", conflict_handler="resolve", help="the highest sparsity within a fairness budget, per method")
    _add_model_data(s)
    s.add_argument("--method", action="append", metavar="NAME",
                   help="pruning method; repeat to search several, one frontier each (default: global_magnitude)")
    _add_budget(s)
    s.add_argument("--lo", type=float, default=0.0, help="lowest sparsity searched (default 0)")
    s.add_argument("--hi", type=float, default=0.99, help="highest sparsity searched (default 0.99)")
    s.add_argument("--tol", type=float, default=0.01, help="bisection stops when the bracket is this narrow (default 0.01)")
    s.add_argument("--max-evals", type=int, default=12, help="most levels measured per method (default 12)")
    s.add_argument("--out", required=True, help="where to write the fairprune.search/1 JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--no-footprint", action="store_true", help="skip measuring each level's size_bytes / latency_ms")
    s.add_argument("--compress", nargs="+", metavar="VARIANT",
                   help="also judge these compression variants (e.g. int8_dynamic fp16 nm_2_4+int8_dynamic) against the "
                        "budget; search.json then names the smallest model within it among levels and variants")
    s.set_defaults(sparsity=None)
    c = sub.add_parser("check", help="CI gate: exit 1 when the model pruned to --sparsity breaks the budget")
    _add_model_data(c)
    c.add_argument("--sparsity", dest="level", type=float, metavar="S", help="the sparsity to check, e.g. 0.9")
    c.add_argument("--compress", dest="variant", metavar="VARIANT",
                   help="check a compression variant instead of a sparsity (e.g. int8_dynamic, nm_2_4+int8_dynamic)")
    _add_budget(c)
    c.add_argument("--out", help="also write the level as fairprune.audit/1 JSON with a `check` section")
    c.set_defaults(sparsity=None)


def _budget_kw(args) -> dict:
    return dict(max_violation=args.max_violation, max_overall_drop=args.max_overall_drop,
                max_group_drop=args.max_group_drop, confidence=args.confidence, finetune_epochs=args.finetune_epochs,
                seed=args.seed, device=args.device, batch_size=args.batch_size)


def cmd_search(args) -> int:
    from ..engine.audit import load_inputs
    from ..engine.search import Budget, search_methods

    Budget(args.max_violation, args.max_overall_drop, args.max_group_drop, args.confidence)  # refuse before loading
    methods = args.method or ["global_magnitude"]
    args.method = methods[0]
    model, data, train = load_inputs(_spec(args))
    progress, close = _progress_bar(args.quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings that matter are recorded in the result and printed below
            report = search_methods(model, data, methods=methods, lo=args.lo, hi=args.hi, tol=args.tol,
                                    max_evals=args.max_evals, train_data=train, measure_footprint=not args.no_footprint,
                                    progress=progress, compress=tuple(args.compress or ()), **_budget_kw(args))
    finally:
        close()
    report.save(args.out)
    for w in report.to_dict().get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    print(report.text())
    print(f"wrote {args.out}")
    return EXIT_OK


def cmd_check(args) -> int:
    from ..engine.audit import load_inputs
    from ..engine.search import Budget, check

    Budget(args.max_violation, args.max_overall_drop, args.max_group_drop, args.confidence)  # refuse before loading
    if (args.level is None) == (args.variant is None):
        raise InputError("expected exactly one of --sparsity S (a pruning level) or --compress VARIANT (e.g. "
                         f"int8_dynamic); found {'both' if args.variant is not None else 'neither'}")
    model, data, train = load_inputs(_spec(args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check(model, data, sparsity=args.level, method=args.method, train_data=train, compress=args.variant,
                       **_budget_kw(args))
    for w in result.audit.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.out:
        result.audit.with_section("check", result.to_dict()).save(args.out)
    print(result.summary())
    return EXIT_OK if result.passed else EXIT_BUDGET


COMMANDS = {"audit": cmd_audit, "models": cmd_models, "demo": cmd_demo, "search": cmd_search, "check": cmd_check}


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="write the pruned model: physically smaller (structured_l1) or sparse weights")
    _add_model_data(e)
    e.add_argument("--sparsity", dest="level", type=float, required=True, metavar="S", help="the sparsity to export, e.g. 0.5")
    e.add_argument("--format", choices=["pt2", "sparse-safetensors"], default="pt2",
                   help="pt2 (default): a torch.export program, compacted for structured_l1; sparse-safetensors: "
                        "the prunable weights in CSR where smaller")
    e.add_argument("--out", required=True, help="where to write the model (.pt2 or .safetensors)")
    e.set_defaults(sparsity=None)


def cmd_export(args) -> int:
    from ..engine.audit import load_inputs
    from ..engine.export import run_export

    model, data, _ = load_inputs(_spec(args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = run_export(model, data, sparsity=args.level, method=args.method, out=args.out, fmt=args.format,
                       seed=args.seed, device=args.device)
    for note in r.notes:
        print(f"note: {note}", file=sys.stderr)
    change = r.weights_bytes / r.dense_weights_bytes - 1
    print(f"{args.method} at sparsity {args.level:g} (achieved {r.achieved_sparsity:.3f})"
          f"{', channels removed' if r.compacted else ''}\n"
          f"  dense weights     {r.dense_weights_bytes:>12,} bytes  {r.dense_parameters:>12,} parameters\n"
          f"  exported weights  {r.weights_bytes:>12,} bytes  {r.parameters:>12,} parameters  ({change:+.1%})\n"
          f"  max |Δlogit| masked vs exported on {r.check_rows} rows: {r.max_abs_diff:.3g}\n"
          f"wrote {r.path} ({r.file_bytes:,} bytes)")
    return EXIT_OK


COMMANDS["export"] = cmd_export


def _add_mitigate(sub) -> None:
    m = sub.add_parser("mitigate", conflict_handler="resolve",
                       help="prune, then repair the disparate impact (fairness-constrained fine-tuning); "
                            "measured on held-out rows against plain and reweighted fine-tuning")
    _add_model_data(m)
    m.add_argument("--method", default="constrained_loss",
                   help="mitigation method: plain, reweighted, constrained_loss (default; the form of the paper's "
                        "Eq. 8: each group's loss within --alpha of the batch's mean loss, which with the default "
                        "group-balanced batches is the unweighted mean of the group losses, with --no-balanced the "
                        "population's), constrained_accuracy_gap (Balancing Act: each group's accuracy drop at most "
                        "the reference drop + --alpha; the reference is the unweighted mean of the group drops by "
                        "default, the overall drop with --no-balanced), protect_layers (no retraining)")
    m.add_argument("--prune-method", default="global_magnitude", help="pruning method (default: global_magnitude)")
    m.add_argument("--sparsity", type=float, metavar="S", help="fraction of prunable weights to remove, e.g. 0.9")
    m.add_argument("--alpha", type=float, metavar="A",
                   help="constraint tolerance (loss units for constrained_loss, accuracy for constrained_accuracy_gap; "
                        "0 = the paper's equality; default: the method's)")
    m.add_argument("--when", choices=["after", "before", "both"], default="after",
                   help="fine-tune the pruned model (after, default), the dense model then prune (before), or both")
    m.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs, the same for every method (default 3)")
    m.add_argument("--seeds", type=int, default=1, metavar="K", help="run seeds SEED ... SEED+K-1: mean and *_std (default 1)")
    m.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate, Adam (default 1e-3)")
    m.add_argument("--dual-lr", type=float, metavar="ETA", help="step size of the multipliers (default: the method's)")
    m.add_argument("--warmup", type=int, metavar="EPOCHS", help="epochs with the multipliers held at zero (default: the method's)")
    m.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=None,
                   help="group-balanced batches (default: the method's; the constrained methods' default is on, "
                        "which also makes their constraints' reference the unweighted mean over groups rather than "
                        "the population's figure)")
    m.add_argument("--dual-holdout", type=float, metavar="F",
                   help="share of each group's training rows held back for the dual step (default: the method's)")
    m.add_argument("--protect", type=int, metavar="K", help="protect_layers: at most K layers kept dense (default 2)")
    m.add_argument("--train-fraction", type=float, default=0.5,
                   help="without a split column or --train-data: share of each group's rows on the training side "
                        "(fine-tuning rows and the selection rows carved from them); the rest are held out (default 0.5)")
    m.add_argument("--select-fraction", type=float, default=0.2, metavar="F",
                   help="share of each group's training rows kept apart as selection rows: no method fits them, the "
                        "recommended method is chosen on them, and the figures reported are on held-out rows that "
                        "took no part in the choice (default 0.2)")
    m.add_argument("--out", required=True, help="where to write the JSON with the `mitigation` section")
    m.add_argument("--save-model", metavar="PATH.pt2", help="write the first seed's mitigated model as a .pt2 program")
    m.add_argument("--quiet", action="store_true", help="no progress bar or table")
    m.set_defaults(batch_size=128)


def cmd_mitigate(args) -> int:
    from ._mitigate_cli import run_mitigate

    return run_mitigate(args, _progress_bar)


COMMANDS["mitigate"] = cmd_mitigate


def _add_diagnose(sub) -> None:
    d = sub.add_parser("diagnose", help="per-sample loss, gradient norm and margin as CSV (dense or pruned model)")
    _add_model_data(d)
    d.add_argument("--sparsity", dest="level", type=float, metavar="S",
                   help="diagnose the model pruned to S with --method (default: the dense model)")
    d.add_argument("--boundary", nargs="?", type=int, const=32, default=None, metavar="N",
                   help="also the input-space distance to the decision boundary (captum FGSM search) on N rows per "
                        "group (default 32); slower")
    d.add_argument("--out", required=True, help="where to write the per-sample CSV")
    d.add_argument("--quiet", action="store_true", help="no per-group summary")
    d.set_defaults(sparsity=None)


def cmd_diagnose(args) -> int:
    from ._diagnose_cli import run_diagnose

    return run_diagnose(args, _spec(args))


COMMANDS["diagnose"] = cmd_diagnose


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="one self-contained HTML report (works offline, prints to PDF) of a result")
    r.add_argument("source", metavar="RESULT.json|RUN_ID",
                   help="a result JSON (fairprune audit --out), a mitigation JSON, a report HTML, or a run id in the run store")
    r.add_argument("--out", required=True, help="where to write the HTML file")
    r.add_argument("--redact-samples", action="store_true",
                   help="leave per-sample content (row indices, rows, images) out of the page and its embedded JSON")
    r.add_argument("--title", help="the report's title (default: the model and data names)")


def cmd_report(args) -> int:
    from ..present.report import write_report
    from .store import stored_result

    out = write_report(args.source, args.out, redact_samples=args.redact_samples, title=args.title,
                       run_result=stored_result)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return EXIT_OK


COMMANDS["report"] = cmd_report


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
