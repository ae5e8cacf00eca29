"""AuditSpec -> AuditResult: the one pipeline the CLI, the dashboard's worker and Ray tasks run.

1. Evaluate the dense model per group (one pass).
2. For each sparsity level: mask a copy of the weights (the dense values are kept), optionally
   fine-tune with the masks fixed, evaluate per group (one pass each), restore.
3. For each compression variant (:mod:`fairprune.engine.compress`: quantization, 2:4 sparsity, combinations):
   compress a deep copy of the dense model, evaluate per group on the same rows, compare with the
   dense predictions exactly as a level is compared (result section ``compression``).
4. Return an :class:`AuditResult`.

A K-level sweep costs K + 1 evaluation passes plus the mask computations: the model and data are
loaded once, nothing is re-exported.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from .. import __version__
from ..data import GroupedDataset
from ..core.errors import InputError
from .evaluate import BatchSize, check_amp, check_model_fits, evaluate, level_precision, resolve_device
from .metrics import accuracy_gap, compare, group_metrics
from .prune import MaskedModel, get_method, iter_masks, prunable_by_kind, prunable_definition, prunable_parameters
from .prune import prune_embeddings as include_embeddings
from ..core.result import AuditConfig, AuditResult, DataInfo, DenseResult, LevelResult, ModelInfo, Provenance

__all__ = ["InputSpec", "LOAD_KEYS", "AuditSpec", "Auditor", "audit", "run_spec", "load_inputs", "Progress",
           "sample_diagnostics"]

#: progress(done, total, message): called after each step of a run.
Progress = Callable[[int, int, str], None]

#: --amp: 'auto' tries float16 on CUDA (never on the CPU) and keeps it only if checked; 'off' never.
AMP_MODES = ("auto", "off", "float16", "bfloat16")


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """Where a run's model and data come from, as the CLI's loading options name them: the part every
    spec the worker stores shares (audit, mitigation, search). Paths are strings; ``demo`` replaces
    ``model`` and ``data``; :func:`load_inputs` loads them."""

    model: str | None = None
    data: str | None = None
    demo: str | None = None
    arch: str | None = None
    num_classes: int | None = None
    arch_args: dict = field(default_factory=dict)
    label: str = "label"
    group: tuple[str, ...] = ("group",)
    features: tuple[str, ...] | None = None
    ignore: tuple[str, ...] | None = None
    missing_group: str = "error"
    normalize: str | None = None
    train_data: str | None = None
    resize: int | None = None          # images: shorter side to N (--resize)
    crop: str | None = None            # images: centre crop 'N' or 'H,W' (--crop)
    transforms: str | None = None      # images: a torchvision weights entry's preset (--transforms)
    inputs: tuple[str, ...] | None = None  # NPZ: the arrays passed to the model positionally, in order (--inputs)
    text: str | None = None            # CSV: the text column, tokenised by the model's own tokenizer (--text)
    max_length: int = 128              # tokens per text row (--max-length)


#: the loading keys of every stored spec (InputSpec's fields)
LOAD_KEYS: tuple[str, ...] = tuple(f.name for f in fields(InputSpec))


@dataclass(frozen=True)
class AuditSpec(InputSpec):
    """Everything needed to run an audit from files (or a built-in demo): what the worker stores.

    The loading keys are :class:`InputSpec`'s; the rest are :func:`audit`'s options.
    """

    sparsities: tuple[float, ...]
    method: str = "global_magnitude"
    finetune_epochs: int = 0
    diagnostics: bool | dict = False          # or a dict of fairprune.engine.diagnose.DiagnosticsConfig options
    seed: int = 0
    device: str | None = None
    batch_size: int | None = 256              # None: the device's default (1024 on CUDA); halved on out-of-memory
    amp: str = "auto"                         # mixed precision: auto (CUDA only, if checked), off, float16, bfloat16
    footprint: bool = True                    # measure size_bytes (fairprune.engine.footprint)
    latency: bool = False                     # also time each model (latency_ms): a timing, so off by default
    compress: tuple[str, ...] = ()            # compression variants (fairprune.engine.compress), e.g. ("int8_dynamic",)
    prune_embeddings: bool = False            # nn.Embedding tables prunable too (--prune-embeddings)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("sparsities", "group", "features", "ignore", "compress", "inputs"):
            if d.get(k) is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AuditSpec":
        d = dict(d)
        for k in ("sparsities", "group", "features", "ignore", "compress", "inputs"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def load_inputs(spec: InputSpec):
    """(LoadedModel, GroupedDataset, train GroupedDataset | None) for a spec. Raises InputError."""
    from ..data import load_dataset
    from ..zoo import LoadedModel, load_model

    if spec.demo:
        from ..data.demos import demo_dataset, demo_model, get_demo

        info = get_demo(spec.demo)
        group = spec.group if spec.group != ("group",) else None
        data = demo_dataset(spec.demo, group=group)
        model = LoadedModel.from_module(demo_model(spec.demo), name=f"{info.name} demo ({info.arch})")
    else:
        if not spec.model or not spec.data:
            raise InputError("--model and --data are required (or --demo NAME; `fairprune demo` lists them)")
        model = load_model(spec.model, arch=spec.arch, num_classes=spec.num_classes, arch_args=spec.arch_args)
        data = _load(spec, spec.data)
    train = _load(spec, spec.train_data) if spec.train_data else None
    return model, data, train


def _load(spec: InputSpec, path: str) -> GroupedDataset:
    from ..data import load_dataset

    return load_dataset(path, label=spec.label, group=spec.group, features=spec.features, ignore=spec.ignore,
                        missing_group=spec.missing_group, normalize=spec.normalize, resize=spec.resize,
                        crop=spec.crop, transforms=spec.transforms, inputs=spec.inputs, text=spec.text,
                        tokenizer=spec.model if spec.text else None, max_length=spec.max_length)


def run_spec(spec: AuditSpec, *, progress: Progress | None = None,
             cancel: Callable[[], bool] | None = None) -> AuditResult:
    model, data, train = load_inputs(spec)
    return audit(model, data, sparsities=spec.sparsities, method=spec.method,
                 finetune_epochs=spec.finetune_epochs, train_data=train, diagnostics=spec.diagnostics,
                 seed=spec.seed, device=spec.device, batch_size=spec.batch_size, progress=progress, cancel=cancel,
                 measure_footprint=spec.footprint, measure_latency=spec.latency, amp=spec.amp,
                 compress=spec.compress, prune_embeddings=spec.prune_embeddings)


def _preprocessing(data: GroupedDataset) -> list[str] | None:
    """The data's steps from file to model input, and, for a model with several inputs, what it is given."""
    steps = list(getattr(data, "preprocessing", ()))
    if data.n_inputs > 1:
        steps.append(f"model inputs, passed positionally in this order: {data.describe_inputs()}")
    return steps or None


def _check_sparsities(sparsities: Sequence[float]) -> list[float]:
    if sparsities is None or len(sparsities) == 0:
        raise InputError("expected at least one sparsity level (e.g. --sparsity 0.5 0.9); found none")
    out = []
    for s in sparsities:
        try:
            f = float(s)
        except (TypeError, ValueError):
            raise InputError(f"sparsity must be a number in [0, 1), e.g. 0.9; found {s!r}") from None
        if not 0.0 <= f < 1.0:
            raise InputError(f"sparsity must be a fraction in [0, 1), e.g. 0.9 for 90%; found {s!r}")
        out.append(f)
    if len(set(out)) != len(out):
        raise InputError(f"sparsity levels must be distinct; found {list(sparsities)}")
    return sorted(out)


def _level_seed(seed: int, sparsity: float) -> int:
    """A level's own seed (the violation's permutation p-value, fine-tuning): the same level gets the same numbers whatever other
    levels are measured beside it, so a search can reuse an audit's levels."""
    return seed + round(sparsity * 1_000_000)


class Auditor:
    """A model and a grouped dataset, validated, with the dense model measured once.

    Levels are measured on demand and cached by sparsity; :func:`audit` and the operating-point
    search both use this, so a level is never evaluated twice. The dense weights are restored after
    every level (and on error or cancel).
    """

    def __init__(self, model, data: GroupedDataset, *, method: str = "global_magnitude", finetune_epochs: int = 0,
                 train_data: GroupedDataset | None = None, seed: int = 0, device: str | torch.device | None = None,
                 batch_size: int | None = 256, cancel: Callable[[], bool] | None = None, measure_footprint: bool = True,
                 measure_latency: bool = False, amp: str = "auto", evaluate_dense: bool = True):
        """``evaluate_dense=False``: validate and prepare only (no dense pass, no footprint: ``dense`` is None), for
        callers that only need the model pruned as the audit prunes it (:meth:`pruned`), e.g. the per-sample CSV."""
        from ..data import validate_labels
        from ..zoo import LoadedModel

        if not isinstance(model, LoadedModel):
            model = LoadedModel.from_module(model, name=type(model).__name__)
        get_method(method)
        if finetune_epochs < 0:
            raise InputError(f"--finetune-epochs must be >= 0; found {finetune_epochs}")
        self.model, self.data, self.method, self.seed = model, data, method, seed
        self.finetune_epochs, self.cancel = finetune_epochs, cancel
        self.device = resolve_device(device)
        self.batch = BatchSize(batch_size, self.device)   # shared by every pass: backs off once, remembered
        if amp not in AMP_MODES:
            raise InputError(f"--amp must be one of {', '.join(AMP_MODES)}; found {amp!r}")
        self.amp_mode, self.amp, self.amp_check = amp, None, None
        self.level_amp_checks: dict[float, object] = {}     # sparsity -> AmpCheck, where mixed precision was used
        self.eval_data = data.part("test") if data.split is not None else data
        if finetune_epochs and train_data is None:
            if data.split is None:
                raise InputError("--finetune-epochs needs training rows distinct from the evaluated ones: "
                                 "a 'split' column (train/test) in the data, or --train-data PATH")
            train_data = data.part("train")
        self.train_data = train_data

        self.module = model.module.to(self.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.num_outputs = check_model_fits(model, self.eval_data, self.device)
        self.warnings = [str(w.message) for w in caught]
        if getattr(model, "kind", None) == "hf" and getattr(model, "path", None) and self.eval_data.n_inputs == 1 \
                and self.eval_data.x.dim() == 4:
            from ..zoo import hf_normalize_note

            note = hf_normalize_note(model.path, self.eval_data.normalize)
            if note:
                self.warnings.append(note)
        validate_labels(self.eval_data, self.num_outputs, source=self.eval_data.name)
        if train_data is not None:
            validate_labels(train_data, self.num_outputs, source=train_data.name)

        self.names = self.eval_data.group_names
        self.y = self.eval_data.y.numpy()
        self.groups = self.eval_data.group.astype(str)
        self.prunable = list(prunable_parameters(self.module))
        self.example = next(self.eval_data.batches(min(2, self.eval_data.n), self.device))[0]
        self.masked = MaskedModel(self.module)
        self._levels: dict[float, LevelResult] = {}
        self._variants: dict[str, object] = {}            # canonical variant name -> VariantResult
        self._variant_footprints: dict[str, dict] = {}
        self.footprint, self._footprints, self.dense, self.dense_footprint = None, {}, None, None
        if evaluate_dense:
            self._measure_dense(model, measure_footprint, measure_latency)

    def _measure_dense(self, model, measure_footprint: bool, measure_latency: bool) -> None:
        self.dense_pred = self._evaluate()
        self.dense_pred_full = self.dense_pred        # full precision, whatever _choose_precision decides
        self._choose_precision()
        d_overall, d_groups = group_metrics(self.dense_pred, self.y, self.groups, self.names)
        # What pruning buys (size_bytes, latency_ms): measured on one batch of up to 64 evaluation rows.
        self.footprint, self._footprints, dense_fp = None, {}, None
        if measure_footprint:
            from .footprint import FootprintMeter

            rows = next(self.eval_data.batches(min(model.fixed_batch_size or 64, self.eval_data.n), self.device))[0]
            self.footprint = FootprintMeter(model, rows, latency=measure_latency)
            dense_fp = self.footprint.dense()
        self.dense = DenseResult(d_overall, d_groups, accuracy_gap(d_groups), getattr(dense_fp, "size_bytes", None),
                                 getattr(dense_fp, "latency_ms", None))
        self.dense_footprint = dense_fp

    @property
    def batch_size(self) -> int:
        return self.batch.value

    def _evaluate(self):
        return evaluate(self.model, self.eval_data, batch_size=self.batch, device=self.device, cancel=self.cancel,
                        amp=self.amp)

    def _choose_precision(self) -> None:
        """Mixed precision only where it keeps the dense model's predictions within AMP_TOLERANCE (checked
        on every evaluated row); then every model of the audit is evaluated with it, dense included, so
        the paired comparisons stay like for like."""
        if self.amp_mode == "off" or (self.amp_mode == "auto" and self.device.type != "cuda"):
            return
        dtype = self.amp_mode if self.amp_mode != "auto" else "float16"
        mixed = evaluate(self.model, self.eval_data, batch_size=self.batch, device=self.device, cancel=self.cancel,
                         amp=dtype)
        self.amp_check = check_amp(self.dense_pred, mixed, self.groups, dtype)
        if self.amp_check.used:
            self.amp, self.dense_pred = dtype, mixed
        else:
            self.warnings.append(
                f"mixed precision ({dtype}) changed {1 - self.amp_check.prediction_agreement:.2%} of the dense "
                f"model's predictions or a group's accuracy by {self.amp_check.max_group_accuracy_change:.2%} "
                f"(tolerance {self.amp_check.tolerance:.2%}): every model is evaluated in full precision")

    def _evaluate_level(self, sparsity: float):
        """(level predictions, dense predictions to pair them with). Mixed precision checked on the dense
        model is checked again on each level, where it is used: a pruned model can lose to rounding what the
        dense one did not. The level keeps mixed precision only if it passes the same check (one more,
        full-precision pass per level); otherwise the level and its dense reference are full precision."""
        if not self.amp:
            return self._evaluate(), self.dense_pred
        mixed = self._evaluate()
        full = evaluate(self.model, self.eval_data, batch_size=self.batch, device=self.device, cancel=self.cancel)
        check, pred, dense = level_precision(full, mixed, self.dense_pred_full, self.dense_pred, self.groups, self.amp)
        self.level_amp_checks[sparsity] = check
        if not check.used:
            self.warnings.append(
                f"mixed precision ({self.amp}) passed on the dense model but changed "
                f"{1 - check.prediction_agreement:.2%} of the predictions at sparsity {sparsity:g} or a group's "
                f"accuracy by {check.max_group_accuracy_change:.2%} (tolerance {check.tolerance:.2%}): that level "
                f"and its dense reference are evaluated in full precision")
        return pred, dense

    def _measure_footprint(self, sparsity: float, masks) -> tuple[int | None, float | None]:
        """(size_bytes, latency_ms) of the level whose masks are in place (None, None when switched off)."""
        if self.footprint is None:
            return None, None
        from .footprint import NM_METHODS, STRUCTURED_METHODS

        fp = self.footprint.level(masks, structured=self.method in STRUCTURED_METHODS, example_input=self.example,
                                  nm=self.method in NM_METHODS)
        self._footprints[sparsity] = fp
        return fp.size_bytes, fp.latency_ms

    @contextmanager
    def pruned(self, sparsity: float) -> Iterator[dict]:
        """The model pruned to ``sparsity`` exactly as :meth:`measure` prunes it (same method, seed and masks), not
        evaluated; yields the masks (name -> keep-mask) and restores the dense weights on exit."""
        s = _check_sparsities([sparsity])[0]
        masks = next(iter(iter_masks(self.module, self.method, [s], seed=self.seed, example_input=self.example)))
        self.masked.apply(masks)
        try:
            yield dict(self.masked.masks)
        finally:
            self.masked.restore()

    def measure(self, sparsities: Sequence[float], *, on_level: Callable[[LevelResult], None] | None = None,
                inspect: Callable[[float, object], None] | None = None) -> list[LevelResult]:
        """LevelResults for ``sparsities`` (validated, sorted); levels measured before come from the cache.

        ``inspect(sparsity, predictions)`` is called while a level's pruned weights are in place
        (diagnostics use it); ``on_level`` after each newly measured level.
        """
        levels = _check_sparsities(sparsities)
        todo = [s for s in levels if s not in self._levels]
        try:
            all_masks = iter_masks(self.module, self.method, todo, seed=self.seed, example_input=self.example)
            for s, masks in zip(todo, all_masks):
                self.masked.apply(masks)
                if self.finetune_epochs:
                    from .finetune import finetune

                    finetune(self.model, self.masked, self.train_data, epochs=self.finetune_epochs,
                             seed=_level_seed(self.seed, s), device=self.device, cancel=self.cancel)
                pred, dense_pred = self._evaluate_level(s)
                size_bytes, latency_ms = self._measure_footprint(s, masks)
                comparison = compare(dense_pred, pred, self.y, self.groups, self.names,
                                     seed=_level_seed(self.seed, s))
                self._levels[s] = LevelResult(
                    sparsity=s, achieved_sparsity=self.masked.achieved_sparsity(self.prunable),
                    weight_distance=self.masked.weight_distance(self.prunable),
                    size_bytes=size_bytes, latency_ms=latency_ms, **comparison.level_fields(),
                )
                if inspect is not None:
                    inspect(s, pred)
                self.masked.restore()
                if on_level is not None:
                    on_level(self._levels[s])
        finally:
            self.masked.restore()
        return [self._levels[s] for s in levels]

    def measure_compression(self, variants: Sequence[str], *, on_variant: Callable[[object], None] | None = None,
                            diagnostics=None, step: Callable[[str], None] | None = None) -> list:
        """VariantResults (:class:`fairprune.engine.compress.VariantResult`) for the compression ``variants``
        (names such as ``"int8_dynamic"`` or ``"nm_2_4+int8_dynamic"``), in the order given; variants
        measured before come from the cache. Each is applied to a deep copy of the dense model (the dense
        weights are never touched), evaluated on the same rows and compared like a level.

        ``diagnostics``: an :class:`fairprune.engine.diagnose.AuditDiagnostics` whose dense measurements the
        variants' diagnostics reuse (None: no diagnostics); ``step(message)`` after each diagnostics step;
        ``on_variant`` after each newly measured variant.
        """
        from .compress import measure_variant, parse_variants

        out = []
        for spec in parse_variants(list(variants)):
            if spec.name not in self._variants:
                result, fp = measure_variant(self, spec, diag=diagnostics, step=step)
                self._variants[spec.name], self._variant_footprints[spec.name] = result, fp
                if on_variant is not None:
                    on_variant(result)
            out.append(self._variants[spec.name])
        return out

    def result(self, levels: list[LevelResult], variants: Sequence | None = None) -> AuditResult:
        """The AuditResult of ``levels`` and, when given, the ``compression`` section of ``variants``."""
        model, data, eval_data = self.model, self.data, self.eval_data
        params = dict(self.module.named_parameters())
        return AuditResult(
            model=ModelInfo(model.name, sum(p.numel() for p in params.values()),
                            sum(params[n].numel() for n in self.prunable), prunable_by_kind(self.module),
                            prunable_definition()),
            data=DataInfo(eval_data.name, eval_data.n, eval_data.group_sizes),
            config=AuditConfig(self.method, [lv.sparsity for lv in levels], self.finetune_epochs, self.seed,
                               str(self.device.type)),
            provenance=Provenance(__version__, torch.__version__, model.sha256, data.sha256, data.label_column,
                                  list(data.group_columns), eval_data.n_features,
                                  _preprocessing(data)),
            dense=self.dense, levels=levels, warnings=list(self.warnings) + self._sanity(levels, variants),
            sections=self._sections(levels, variants),
        )

    def _sanity(self, levels: list[LevelResult], variants: Sequence | None) -> list[str]:
        """Single-class labels, models at or below chance, groups without positives/negatives
        (:mod:`fairprune.engine.sanity`)."""
        from .sanity import sanity_warnings

        models = [(f"{100 * lv.sparsity:g}% sparsity", lv.overall) for lv in levels]
        models += [(v.method, v.level.overall) for v in variants or ()]
        return sanity_warnings(self.y, self.groups, self.names, self.num_outputs, self.dense.overall, models)

    def _sections(self, levels: list[LevelResult], variants: Sequence | None = None) -> dict:
        sections = {}
        if self.footprint is not None:
            sections["footprint"] = self.footprint.section(
                self.dense_footprint, {lv.sparsity: self._footprints[lv.sparsity] for lv in levels
                                       if lv.sparsity in self._footprints})
            if variants:
                sections["footprint"]["compression"] = [self._variant_footprints[v.method] for v in variants]
        if variants:
            sections["compression"] = [v.to_dict() for v in variants]
        if self.amp_check is not None:       # only where mixed precision was tried (CUDA, or asked for)
            sections["precision"] = self.amp_check.to_dict()
            checked = [lv.sparsity for lv in levels if lv.sparsity in self.level_amp_checks]
            if checked:
                sections["precision"]["levels"] = [
                    {"sparsity": s, **self.level_amp_checks[s].to_dict(),
                     "checked_on": "this level, every evaluated row, against full precision"} for s in checked]
        if self.batch.backoffs:
            sections["batching"] = {"batch_size": self.batch.value, "out_of_memory_at": list(self.batch.backoffs)}
        return sections


def audit(model, data: GroupedDataset, *, sparsities: Sequence[float], method: str = "global_magnitude",
          finetune_epochs: int = 0, train_data: GroupedDataset | None = None, diagnostics: bool | dict = False,
          seed: int = 0, device: str | torch.device | None = None, batch_size: int = 256,
          progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
          measure_footprint: bool = True, measure_latency: bool = False, amp: str = "auto",
          compress: Sequence[str] = (), prune_embeddings: bool = False) -> AuditResult:
    """Audit ``model`` on ``data`` at each sparsity level and each compression variant, group by group.

    Args:
        model: a :class:`fairprune.zoo.LoadedModel` or a plain ``nn.Module`` (wrapped, eval mode).
        data: the grouped dataset. When it has a ``split``, the 'test' rows are measured and the
            'train' rows fine-tune (unless ``train_data`` is given).
        sparsities: fractions of prunable weights to remove, each in [0, 1); may be empty when
            ``compress`` names variants (at least one of the two is required).
        method: a registered pruning method (``fairprune.engine.prune.list_methods()``).
        compress: compression variants (``fairprune.engine.compress.list_compressions()``; steps joined by
            ``+`` are applied left to right, e.g. ``"nm_2_4+int8_dynamic"``): each is applied to a deep
            copy of the dense model and measured like a level; adds the result section ``compression``
            (see the README). Variants are not fine-tuned.
        finetune_epochs: plain fine-tuning of each pruned model, masks fixed, before measuring.
        diagnostics: True (defaults), a dict of :class:`fairprune.engine.diagnose.DiagnosticsConfig` options, or
            a config: adds the result section ``diagnostics`` (gradient norms, Hessian, margins per group,
            for the dense model and each level; see the README).
        progress: ``progress(done, total, message)`` after each step; cancel: returns True to stop.
        measure_footprint: measure ``size_bytes`` and ``latency_ms`` of the dense model and each level
            (:mod:`fairprune.engine.footprint`), with the section ``footprint`` saying how; False skips it.
        measure_latency: also time the dense model and each level (``latency_ms``). Off by default: a
            timing is the one figure two runs of the same command cannot reproduce, and the same command
            twice must give the same JSON.
        amp: mixed precision for evaluation: 'auto' (float16 on CUDA when it changes at most 0.1% of the
            dense model's predictions and no group's accuracy by more than 0.1 points; never on the CPU),
            'off', or 'float16'/'bfloat16' (still checked). The section ``precision`` says what was used.
        prune_embeddings: count ``nn.Embedding`` tables as prunable too (left out by default); the model
            section's ``prunable_by_kind`` and ``prunable_definition`` say what was pruned.
    """
    if prune_embeddings:                      # every mask and count below uses the same definition
        options = {k: v for k, v in locals().items() if k not in ("model", "data", "prune_embeddings")}
        with include_embeddings(True):
            return audit(model, data, **options)
    variants = []
    if compress:
        from .compress import parse_variants

        variants = [v.name for v in parse_variants(list(compress))]    # refuse bad names before any work
    if (sparsities is None or len(sparsities) == 0) and not variants:
        raise InputError("expected at least one sparsity level (e.g. --sparsity 0.5 0.9) or compression variant "
                         "(e.g. --compress int8_dynamic fp16); found neither")
    levels = _check_sparsities(sparsities) if sparsities is not None and len(sparsities) else []
    for s in levels:
        get_method(method).check_sparsity(s)
    diag_config = None
    if diagnostics:
        from .diagnose import AuditDiagnostics, DiagnosticsConfig, diagnose_steps

        diag_config = DiagnosticsConfig.coerce(diagnostics)
    auditor = Auditor(model, data, method=method, finetune_epochs=finetune_epochs, train_data=train_data, seed=seed,
                      device=device, batch_size=batch_size, cancel=cancel, measure_footprint=measure_footprint,
                      measure_latency=measure_latency, amp=amp)
    total = 1 + len(levels) + len(variants)
    if diag_config is not None:
        total += AuditDiagnostics.steps(len(auditor.names), len(levels), diag_config)
        total += len(variants) * diagnose_steps(len(auditor.names), boundary=diag_config.boundary)
    done = 1
    if progress is not None:
        progress(done, total, "dense model evaluated")

    def step(msg):
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, msg)

    def on_level(lv):
        step(f"level {levels.index(lv.sparsity) + 1} of {len(levels)} (sparsity {lv.sparsity:g}) done")

    def on_variant(v):
        step(f"variant {variants.index(v.method) + 1} of {len(variants)} ({v.method}) done")

    diag = None
    if diag_config is not None:
        diag = AuditDiagnostics(auditor.model, auditor.data, auditor.eval_data, diag_config, masked=auditor.masked,
                                names=auditor.names, seed=auditor.seed, batch_size=lambda: auditor.batch_size,
                                device=auditor.device, cancel=auditor.cancel, warnings=auditor.warnings, step=step)
    measured = auditor.measure(levels, on_level=on_level, inspect=diag.inspect if diag else None) if levels else []
    compressed = auditor.measure_compression(variants, on_variant=on_variant, diagnostics=diag,
                                             step=step) if variants else None
    result = auditor.result(measured, compressed)
    if diag is not None:
        result = result.with_section("diagnostics", diag.section(result.levels))
    return result


def sample_diagnostics(model, data: GroupedDataset, *, sparsity: float | None = None, method: str = "global_magnitude",
                       boundary: bool | int = False, config=None, seed: int = 0,
                       device: str | torch.device | None = None, batch_size: int = 256,
                       cancel: Callable[[], bool] | None = None):
    """The per-sample table of ``fairprune diagnose``: one row per measured row (the test rows when split).

    Columns :data:`fairprune.engine.diagnose.SAMPLE_COLUMNS` (``index`` = position in the input), plus
    ``boundary_distance`` when ``boundary`` (True: ``config.boundary_rows`` rows per group; an int: that many),
    NaN on rows not sampled. On the dense model, or with ``sparsity`` on the model pruned exactly as
    :func:`audit` prunes it at that level (same method, seed and masks): this pipeline validates the inputs and
    prunes, then hands :func:`fairprune.engine.diagnose.sample_table` the model, rows and masks.
    ``table.attrs["warnings"]``: what a reader must know (the loaded model's warnings, then the diagnostics').
    """
    from .diagnose import input_positions, sample_table

    # Validated and pruned as the audit does, but not evaluated: the table's own pass gives the outputs.
    auditor = Auditor(model, data, method=method, seed=seed, device=device, batch_size=batch_size, cancel=cancel,
                      measure_footprint=False, evaluate_dense=False)
    index = input_positions(auditor.data)

    def run(masks):
        return sample_table(auditor.model, auditor.eval_data, index=index, masks=masks, boundary=boundary,
                            config=config, seed=seed, device=auditor.device, batch_size=batch_size, cancel=cancel)

    if sparsity is None:
        table = run(None)
    else:
        with auditor.pruned(sparsity) as masks:
            table = run(masks)
    table.attrs["warnings"] = list(dict.fromkeys([*auditor.warnings, *table.attrs["warnings"]]))
    return table
