"""``mitigate``: prune, repair with each method, choose on selection rows, report on held-out rows; and
the spec the worker runs.

Three disjoint sets of rows: fine-tuning rows, selection rows (carved from the training rows, stratified
by group, seeded) and held-out rows. For each seed: compute the masks once (the pruning method, on the
dense weights), measure the pruned model as it is ("before"), then run every method (the one under
test, the baselines, any others asked for) from the same dense weights, masks and seed, with the same
budget (epochs, learning rate, batch size), and measure each on the selection rows (where the
recommendation is chosen) and on the held-out rows (the figures reported). The dense weights are
restored between runs; pruned weights are checked to be exactly zero after every fine-tuning run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..audit import InputSpec
from ...data import GroupedDataset, validate_labels
from ...core.errors import InputError
from ..evaluate import check_model_fits, evaluate, resolve_device
from ..finetune import finetune, group_codes
from ..metrics import MIN_RELIABLE, accuracy_gap, group_metrics
from ..prune import MaskedModel, compute_masks, get_method, prunable_parameters
from ._methods import get_mitigation
from ._protect import layer_sensitivity, protected_masks
from ._result import MitigationResult, measure
from ._objectives import Probe
from ._split import split_rows, stratified_split

__all__ = ["mitigate", "MitigationSpec", "run_spec", "WHEN", "SELECT_FRACTION", "check_masks", "selection_warnings"]

#: where the repair is applied: fine-tune the pruned model; the dense model, then prune; or both
WHEN = ("after", "before", "both")
#: default share of each group's training rows kept apart to choose the recommended method on
SELECT_FRACTION = 0.2

Progress = Callable[[int, int, str], None]


def check_masks(module: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Raise RuntimeError unless every masked-out entry of ``module``'s parameters is exactly zero."""
    params = dict(module.named_parameters())
    for n, m in masks.items():
        p = params[n].detach()
        if bool((p[~m.to(p.device)] != 0).any()):
            raise RuntimeError(f"pruned weights of {n} are no longer zero after fine-tuning "
                               f"(a mask was not kept fixed)")


def _check_args(sparsity, when, epochs, seeds, lr, batch_size, train_fraction):
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise InputError(f"--sparsity must be a number in [0, 1), e.g. 0.9; got {sparsity!r}") from None
    if not 0.0 <= s < 1.0:
        raise InputError(f"--sparsity must be a fraction in [0, 1), e.g. 0.9 for 90%; got {sparsity!r}")
    if when not in WHEN:
        raise InputError(f"--when must be one of {', '.join(WHEN)}; got {when!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"--epochs must be an integer >= 1; got {epochs!r}")
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"--seeds must be an integer >= 1; got {seeds!r}")
    if not lr > 0:
        raise InputError(f"--lr must be > 0; got {lr!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be an integer >= 1; got {batch_size!r}")
    if not 0.0 < float(train_fraction) < 1.0:
        raise InputError(f"--train-fraction must be in (0, 1), e.g. 0.5; got {train_fraction!r}")
    return s


def mitigate(model, data: GroupedDataset, *, sparsity: float, method: str = "constrained_loss", when: str = "after",
             epochs: int = 3, alpha: float | None = None, dual_lr: float | None = None, warmup: int | None = None,
             balanced: bool | None = None, dual_holdout: float | None = None, protect: int | None = None,
             lr: float = 1e-3, batch_size: int = 128,
             seed: int = 0, seeds: int = 1, train_data: GroupedDataset | None = None, train_fraction: float = 0.5,
             select_fraction: float = SELECT_FRACTION, prune_method: str = "global_magnitude",
             baselines: Sequence[str] = ("plain", "reweighted"),
             also: Sequence[str] = (), method_options: Mapping[str, Mapping] | None = None,
             device: str | torch.device | None = None, amp: bool = True,
             eval_batch_size: int = 256, save_model: str | Path | None = None,
             progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> MitigationResult:
    """Prune ``model`` to ``sparsity``, repair it with ``method`` and the baselines, measure on held-out rows.

    Args:
        model: a :class:`fairprune.zoo.LoadedModel` or an ``nn.Module`` (wrapped; its weights are
            restored on return).
        data: the grouped dataset; held-out rows and training rows come from ``train_data``, its
            ``split``, or a split stratified by group (``train_fraction``, seeded by ``seed``).
        select_fraction: share of each group's training rows kept apart as selection rows (seeded by
            ``seed``): no method fits them; the recommendation is chosen on them, so the held-out
            figures of the chosen method are not flattered by the choice. The rest fine-tune.
        method: a registered mitigation method (:func:`list_mitigations`). ``alpha``, ``dual_lr``,
            ``warmup`` (epochs), ``balanced`` (group-balanced batches), ``dual_holdout`` (share of each
            group's training rows held back for the dual step), ``protect`` (layers) override its
            defaults; None keeps them. Baselines and ``also`` run with their own defaults, unless
            ``method_options`` ({name: {option: value}}) says otherwise (the result records every
            method's options; leave the baselines' alone for a like-for-like comparison).
        when: "after" (fine-tune the pruned model), "before" (fine-tune the dense model, then prune),
            "both" (``epochs`` before and ``epochs`` after).
        epochs, lr, batch_size: the fine-tuning budget (Adam), the same for every method.
        seeds: runs seeds ``seed`` ... ``seed + seeds - 1``; masks and shuffling follow the seed.
        amp: mixed precision while fine-tuning on CUDA (no effect on CPU).
        save_model: write the first seed's model of ``method`` there as a ``.pt2`` (pruned weights zero).
        progress: ``progress(done, total, message)``; cancel: returns True to stop (raises Cancelled).
    """
    from ...zoo import LoadedModel, save_pt2

    if not isinstance(model, LoadedModel):
        model = LoadedModel.from_module(model, name=type(model).__name__)
    s = _check_args(sparsity, when, epochs, seeds, lr, batch_size, train_fraction)
    get_method(prune_method)
    get_mitigation(method)
    names_tried = list(dict.fromkeys([method, *baselines, *also]))
    mitigations = {n: get_mitigation(n) for n in names_tried}
    if when != "after":
        no_retrain = [n for n, m in mitigations.items() if not m.retrains]
        if no_retrain:
            raise InputError(f"{', '.join(no_retrain)} does not fine-tune, so --when {when} does not apply to it; "
                             f"expected --when after")
    method_options = dict(method_options or {})
    unknown = sorted(set(method_options) - set(mitigations))
    if unknown:
        raise InputError(f"method_options names method(s) {unknown} that this run does not try; "
                         f"expected some of {list(mitigations)}")
    configs = {n: m.config(**method_options.get(n, {})) for n, m in mitigations.items()}
    configs[method] = configs[method].replaced(alpha=alpha, dual_lr=dual_lr, warmup=warmup, balanced=balanced,
                                               dual_holdout=dual_holdout, protect=protect)
    seed_list = [int(seed) + i for i in range(seeds)]

    split = split_rows(data, train_data=train_data, train_fraction=train_fraction, seed=seed,
                       select_fraction=select_fraction)
    train, held, select = split.train, split.eval, split.select
    dev = resolve_device(device)
    module = model.module.to(dev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k = check_model_fits(model, held, dev)
    run_warnings = [str(w.message) for w in caught]
    validate_labels(held, k, source=held.name)
    validate_labels(train, k, source=train.name)

    names = held.group_names
    names_all = names + sorted(set(train.group.astype(str).tolist()) - set(names))
    train_sizes = train.group_sizes
    for g in names:
        if g not in train_sizes:
            run_warnings.append(f"group {g!r} has no training rows: no method can adapt to it")
        if held.group_sizes[g] < MIN_RELIABLE:
            run_warnings.append(f"group {g!r} has {held.group_sizes[g]} held-out rows (< {MIN_RELIABLE}): "
                                f"its figures are unreliable")
    run_warnings += selection_warnings(train.group_sizes, select.group_sizes)

    total = 1 + len(seed_list) * (1 + len(names_tried))
    done = 0

    def step(msg):
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, msg)

    y, groups = held.y.numpy(), held.group.astype(str)
    dense_pred = evaluate(model, held, batch_size=eval_batch_size, device=dev, cancel=cancel)
    d_overall, d_groups = group_metrics(dense_pred, y, groups, names)
    dense = {"overall": {"n": d_overall.n, "accuracy": d_overall.accuracy, "loss": d_overall.loss},
             "groups": {g: {"n": m.n, "accuracy": m.accuracy, "loss": m.loss} for g, m in d_groups.items()},
             "accuracy_gap": accuracy_gap(d_groups)}
    y_sel, g_sel, names_sel = select.y.numpy(), select.group.astype(str), select.group_names
    dense_sel = evaluate(model, select, batch_size=eval_batch_size, device=dev, cancel=cancel)
    ctx = _Context(model, train, names_all, dev, eval_batch_size, cancel)
    step("dense model evaluated")

    prunable = list(prunable_parameters(module))
    example = next(held.batches(min(2, held.n), dev))[0]
    root = MaskedModel(module)
    protected = None
    before, runs, selection_runs = [], {n: [] for n in names_tried}, {n: [] for n in names_tried}
    trajectories: dict[str, list] = {}
    achieved: dict[str, float] = {}
    try:
        if any(not m.retrains for m in mitigations.values()):
            cfg = configs[next(n for n, m in mitigations.items() if not m.retrains)]
            costs = layer_sensitivity(model, train, ctx.dense_train, names_all, s, device=dev,
                                      batch_size=eval_batch_size, cancel=cancel)
            protect_masks, protected = protected_masks(module, costs, s, cfg.protect)
        for i, sd in enumerate(seed_list):
            base = compute_masks(module, prune_method, s, seed=sd, example_input=example)
            root.apply(base)
            before.append(measure(dense_pred, evaluate(model, held, batch_size=eval_batch_size, device=dev,
                                                       cancel=cancel), y, groups, names))
            root.restore()
            seed_text = f"seed {i + 1} of {len(seed_list)}" if len(seed_list) > 1 else f"seed {sd}"
            step(f"{seed_text}: pruned model measured")
            for j, name in enumerate(names_tried):
                m, cfg = mitigations[name], configs[name]
                rows, objective = train, None
                if m.retrains:
                    rows, inputs = ctx.run_inputs(cfg, seed=sd, batch_size=batch_size)
                    objective = m.objective(names_all, cfg, inputs)
                try:
                    if not m.retrains:
                        root.apply(protect_masks)
                        masked = root
                    else:
                        def tune(mm):
                            finetune(model, mm, rows, epochs=epochs, lr=lr, batch_size=batch_size, seed=sd,
                                     device=dev, cancel=cancel, objective=objective,
                                     sampling="balanced" if cfg.balanced else "shuffle", group_names=names_all,
                                     amp=amp)

                        if when == "after":
                            root.apply(base)
                            tune(root)
                            masked = root
                        else:
                            tune(root)   # root holds no masks here: the dense model is fine-tuned
                            masked = MaskedModel(module)
                            masked.apply(compute_masks(module, prune_method, s, seed=sd, example_input=example))
                            if when == "both":
                                tune(masked)
                        check_masks(module, masked.masks)
                    pred = evaluate(model, select, batch_size=eval_batch_size, device=dev, cancel=cancel)
                    selection_runs[name].append(measure(dense_sel, pred, y_sel, g_sel, names_sel))
                    pred = evaluate(model, held, batch_size=eval_batch_size, device=dev, cancel=cancel)
                    runs[name].append(measure(dense_pred, pred, y, groups, names))
                    if i == 0:
                        achieved[name] = masked.achieved_sparsity(prunable)
                        if save_model is not None and name == method:
                            _save(save_pt2, module, example, save_model)
                finally:
                    root.restore()
                if objective is not None and hasattr(objective, "finish"):
                    trajectories.setdefault(name, []).append(objective.finish())
                how = (f"fine-tuned for {epochs} epoch{'s' if epochs != 1 else ''}" if m.retrains else "re-masked")
                step(f"{seed_text}: method {j + 1} of {len(names_tried)} ({name}) {how} and measured")
    finally:
        root.restore()

    return MitigationResult(
        method=method, when=when, sparsity=s, alpha=configs[method].alpha, epochs=epochs, seeds=seed_list,
        n_train=train.n, n_eval=held.n, lr=float(lr), batch_size=batch_size, split=split.to_dict(),
        prune_method=prune_method, device=str(dev.type), dense=dense, before=before, runs=runs,
        baselines=tuple(dict.fromkeys(baselines)), multipliers=trajectories, achieved_sparsity=achieved,
        options={n: configs[n].to_dict(mitigations[n]) for n in names_tried},
        protected_layers=protected, warnings=run_warnings,
        selection={"split": "stratified from the training rows", "fraction": float(select_fraction),
                   "seed": int(seed), "n_select": select.n, "n_select_by_group": select.group_sizes},
        selection_runs=selection_runs,
    )


def selection_warnings(train_sizes: Mapping[str, int], select_sizes: Mapping[str, int]) -> list[str]:
    """Warnings, naming the counts, when the selection rows are too few to choose between methods well:
    a group the selection rows miss (one training row), groups with fewer than MIN_RELIABLE there."""
    out = []
    missing = [g for g in train_sizes if g not in select_sizes]
    if missing:
        out.append("no selection rows for " + ", ".join(f"group {g!r} ({train_sizes[g]} training row)" for g in missing)
                   + ": the recommendation is chosen without seeing it")
    few = [(g, n) for g, n in select_sizes.items() if n < MIN_RELIABLE]
    if few:
        out.append(f"the recommendation is chosen on {sum(select_sizes.values())} selection rows, with fewer than "
                   f"{MIN_RELIABLE} in " + ", ".join(f"group {g!r} ({n})" for g, n in few)
                   + ": the choice between methods is noisy (more data or a larger --select-fraction helps)")
    return out


def _save(save_pt2, module, example, path) -> None:
    try:
        save_pt2(module, example, path)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"--save-model {path}: could not export the mitigated model as a .pt2 program "
                         f"(torch.export said: {first}); expected a model torch.export can trace") from err


class _Context:
    """The dense model's predictions on the training rows (taken while the weights are dense)."""

    def __init__(self, model, train, names, device, batch_size, cancel):
        self.model, self.names, self.train, self.device = model, names, train, device
        self.dense_train = evaluate(model, train, batch_size=batch_size, device=device, cancel=cancel)

    def dense_accuracy(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(G,) acc_dense(a) on the training rows ``rows`` (all: None), in ``names`` order (the overall
        accuracy where a group has no row)."""
        rows = np.arange(self.train.n) if rows is None else rows
        groups, correct = self.train.group.astype(str)[rows], self.dense_train.correct[rows]
        return np.array([float(correct[groups == g].mean()) if (groups == g).any() else float(correct.mean())
                         for g in self.names])

    def run_inputs(self, cfg, *, seed: int, batch_size: int) -> tuple[GroupedDataset, "RunInputs"]:
        """(rows the primal step trains on, what the objective gets) for one run of a method."""
        if cfg.dual_holdout <= 0:
            return self.train, RunInputs(None, self.dense_accuracy())
        primal, dual = stratified_split(self.train.group, 1.0 - cfg.dual_holdout, seed=seed)
        rows = self.train.subset(dual)
        probe = Probe(self.model, rows, group_codes(rows.group, self.names), batch_size=batch_size, seed=seed,
                      device=self.device, balanced=cfg.balanced)
        return self.train.subset(primal), RunInputs(probe, self.dense_accuracy(dual))


@dataclass(frozen=True)
class RunInputs:
    """What a method's objective may use: ``probe`` (held-back rows for the dual step, or None) and
    ``dense_accuracy`` ((G,) dense accuracy per group on the rows the dual step measures)."""

    probe: Probe | None
    dense_accuracy: np.ndarray


# ---- the spec the worker (and the CLI) run ----------------------------------------------------------------
@dataclass(frozen=True)
class MitigationSpec(InputSpec):
    """Everything a mitigation run needs, from files or a demo: what the worker's 'mitigate' kind stores.

    Loading keys are :class:`fairprune.engine.audit.InputSpec`'s (model, data, demo, arch, num_classes, arch_args,
    label, group, features, ignore, missing_group, normalize, train_data); the rest are
    :func:`mitigate`'s keyword arguments of the same names (``batch_size`` is the fine-tuning batch size).
    """

    sparsity: float
    method: str = "constrained_loss"
    when: str = "after"
    epochs: int = 3
    seeds: int = 1
    seed: int = 0
    alpha: float | None = None
    dual_lr: float | None = None
    warmup: int | None = None
    balanced: bool | None = None
    dual_holdout: float | None = None
    protect: int | None = None
    lr: float = 1e-3
    batch_size: int = 128
    train_fraction: float = 0.5
    select_fraction: float = SELECT_FRACTION
    prune_method: str = "global_magnitude"
    baselines: tuple[str, ...] = ("plain", "reweighted")
    also: tuple[str, ...] = ()
    device: str | None = None
    save_model: str | None = None

    _TUPLES = ("baselines", "also", "group", "features", "ignore", "inputs")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in self._TUPLES:
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MitigationSpec":
        from dataclasses import fields

        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"mitigate spec: unknown key(s) {unknown}; expected some of {sorted(known)}")
        if "sparsity" not in d:
            raise InputError("mitigate spec: expected 'sparsity' (e.g. 0.9); found none")
        d = dict(d)
        for k in cls._TUPLES:
            if d.get(k) is not None:
                d[k] = (d[k],) if isinstance(d[k], str) else tuple(d[k])
        return cls(**d)


def run_spec(spec: MitigationSpec, *, progress: Progress | None = None,
             cancel: Callable[[], bool] | None = None) -> MitigationResult:
    """Load the spec's model and data (as ``fairprune audit`` does) and run :func:`mitigate`."""
    from ..audit import load_inputs

    model, data, train = load_inputs(spec)
    return mitigate(model, data, sparsity=spec.sparsity, method=spec.method, when=spec.when, epochs=spec.epochs,
                    alpha=spec.alpha, dual_lr=spec.dual_lr, warmup=spec.warmup, balanced=spec.balanced,
                    dual_holdout=spec.dual_holdout, protect=spec.protect, lr=spec.lr, batch_size=spec.batch_size,
                    seed=spec.seed, seeds=spec.seeds,
                    train_data=train, train_fraction=spec.train_fraction, select_fraction=spec.select_fraction,
                    prune_method=spec.prune_method,
                    baselines=spec.baselines, also=spec.also, device=spec.device, save_model=spec.save_model,
                    progress=progress, cancel=cancel)
