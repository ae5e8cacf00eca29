"""Typed mitigation results and their one JSON form, the ``mitigation`` section (DESIGN.md).

:class:`Outcome` is one model measured on some rows (the held-out rows, or the selection rows) against
the dense model on the same rows. :class:`MitigationResult` keeps one Outcome per seed for every method
tried, on each set of rows; :meth:`to_dict` is the only place the section is built: with several seeds
each number is the mean over seeds and a ``*_std`` key (sample standard deviation, ddof=1) sits beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..metrics import accuracy_gap, group_metrics
from ...core.result import Metrics

__all__ = ["Outcome", "MitigationResult", "measure", "aggregate", "recommend", "ACCURACY_TOLERANCE", "CRITERION"]

#: recommend(): methods within this much overall accuracy (fraction) of the best are candidates
ACCURACY_TOLERANCE = 0.01
#: how recommend() chooses, in words (``{tolerance}``: the accuracy tolerance as a fraction)
CRITERION = ("among the methods whose mean overall accuracy is within {tolerance:g} of the best one's, the lowest "
             "mean accuracy fairness violation (ties: higher accuracy, then name)")


@dataclass(frozen=True)
class Outcome:
    """One model on the held-out rows.

    groups[a].accuracy_drop = acc_dense(a) − acc(a); fairness_violation = {"accuracy": max_a drop −
    min_a drop, "loss": max_a R(a) − min_a R(a)} (Eq. 3, R(a) the excessive loss); accuracy_gap =
    max_a acc − min_a acc.
    """

    overall: Metrics
    groups: dict[str, Metrics]
    fairness_violation: dict[str, float]
    accuracy_gap: float

    def to_dict(self) -> dict[str, Any]:
        def metrics(m: Metrics, drop: bool) -> dict:
            d = {"n": m.n, "accuracy": m.accuracy, "loss": m.loss}
            if m.selection_rate is not None:
                d.update(tpr=m.tpr, fpr=m.fpr, selection_rate=m.selection_rate)
            if drop:
                d["accuracy_drop"] = m.accuracy_drop
            return d

        return {"overall": metrics(self.overall, False),
                "groups": {g: metrics(m, True) for g, m in self.groups.items()},
                "fairness_violation": dict(self.fairness_violation), "accuracy_gap": self.accuracy_gap}

    def to_lite_dict(self) -> dict[str, Any]:
        """OUTCOME without its groups: ``{"overall": {n, accuracy, loss}, "fairness_violation", "accuracy_gap"}``."""
        o = self.overall
        return {"overall": {"n": o.n, "accuracy": o.accuracy, "loss": o.loss},
                "fairness_violation": dict(self.fairness_violation), "accuracy_gap": self.accuracy_gap}


def measure(dense, pred, y: np.ndarray, groups: np.ndarray, names: list[str]) -> Outcome:
    """The :class:`Outcome` of predictions ``pred`` against the dense model's ``dense`` on the same rows."""
    _, d_groups = group_metrics(dense, y, groups, names)
    overall, p_groups = group_metrics(pred, y, groups, names)
    out = {}
    for g in names:
        m, d = p_groups[g], d_groups[g]
        out[g] = Metrics(n=m.n, accuracy=m.accuracy, loss=m.loss, tpr=m.tpr, fpr=m.fpr,
                         selection_rate=m.selection_rate, accuracy_drop=d.accuracy - m.accuracy,
                         excessive_loss=m.loss - d.loss)
    drops = [m.accuracy_drop for m in out.values()]
    excess = [m.excessive_loss for m in out.values()]
    violation = {"accuracy": float(max(drops) - min(drops)), "loss": float(max(excess) - min(excess))}
    return Outcome(overall, out, violation, accuracy_gap(out))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def aggregate(items: list[Any]) -> Any:
    """Mean over seeds of structurally equal JSON values, with ``*_std`` beside each varying float.

    Integers that agree (counts) stay as they are; None stays None where every seed has None.
    One item is returned unchanged.
    """
    if len(items) == 1:
        return items[0]
    first = items[0]
    if isinstance(first, dict):
        out = {}
        for k in first:
            vals = [it[k] for it in items]
            out[k] = aggregate(vals)
            if all(_number(v) or v is None for v in vals) and not _same_ints(vals):
                nums = [float(v) for v in vals if v is not None]
                out[f"{k}_std"] = float(np.std(nums, ddof=1)) if len(nums) > 1 else 0.0
        return out
    if isinstance(first, list):
        return [aggregate([it[i] for it in items]) for i in range(len(first))]
    if all(v is None for v in items):
        return None
    if all(_number(v) or v is None for v in items):
        if _same_ints(items):
            return first
        nums = [float(v) for v in items if v is not None]
        return float(np.mean(nums))
    return first


def _same_ints(vals) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in vals) and len(set(vals)) == 1


@dataclass(frozen=True)
class MitigationResult:
    """The result of :func:`fairprune.engine.mitigate.mitigate`; ``to_dict()`` is the ``{"mitigation": ...}`` JSON.

    runs: method name -> one Outcome per seed (the method under test, the baselines, any others tried);
    before: the pruned model before any repair, per seed; dense: the dense model on the held-out rows;
    multipliers: method name -> per seed, per epoch {group: λ_a} (constrained methods only).
    selection: how the selection rows were drawn (``split``, ``fraction``, ``seed``, ``n_select``,
    ``n_select_by_group``); selection_runs: method name -> one Outcome per seed on the selection
    rows, where :func:`recommend` chooses. Both empty for a result made without selection rows.
    """

    method: str
    when: str
    sparsity: float
    alpha: float
    epochs: int
    seeds: list[int]
    n_train: int
    n_eval: int
    lr: float
    batch_size: int
    split: dict
    prune_method: str
    device: str
    dense: dict
    before: list[Outcome]
    runs: dict[str, list[Outcome]]
    baselines: tuple[str, ...] = ("plain", "reweighted")
    multipliers: dict[str, list[list[dict[str, float]]]] = field(default_factory=dict)
    achieved_sparsity: dict[str, float] = field(default_factory=dict)
    options: dict[str, dict] = field(default_factory=dict)
    protected_layers: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    selection_runs: dict[str, list[Outcome]] = field(default_factory=dict)

    @property
    def after(self) -> list[Outcome]:
        return self.runs[self.method]

    def outcome(self, method: str) -> dict:
        """The seed-aggregated OUTCOME dict of ``method``."""
        return aggregate([o.to_dict() for o in self.runs[method]])

    def selection_outcome(self, method: str) -> dict:
        """The seed-aggregated OUTCOME-lite dict of ``method`` on the selection rows."""
        return aggregate([o.to_lite_dict() for o in self.selection_runs[method]])

    def selection_section(self) -> dict[str, Any] | None:
        """The ``selection`` entry of the section (None without selection rows)."""
        if not self.selection_runs:
            return None
        return {**self.selection, "n_train": self.n_train, "n_eval": self.n_eval, "chosen": recommend(self),
                "criterion": CRITERION.format(tolerance=ACCURACY_TOLERANCE) + ", on the selection rows",
                "by_method": {m: self.selection_outcome(m) for m in self.selection_runs}}

    def to_dict(self) -> dict[str, Any]:
        section: dict[str, Any] = {
            "method": self.method, "when": self.when, "sparsity": self.sparsity, "alpha": self.alpha,
            "epochs": self.epochs, "seeds": list(self.seeds), "n_train": self.n_train, "n_eval": self.n_eval,
            "before": aggregate([o.to_dict() for o in self.before]),
            "after": self.outcome(self.method),
            "baselines": {b: self.outcome(b) for b in self.baselines},
            "multipliers": [],
        }
        traj = self.multipliers.get(self.method)
        if traj:
            section["multipliers"] = [{g: float(np.mean([t[e][g] for t in traj])) for g in traj[0][e]}
                                      for e in range(len(traj[0]))]
            if len(traj) > 1:
                section["multipliers_std"] = [{g: float(np.std([t[e][g] for t in traj], ddof=1)) for g in traj[0][e]}
                                              for e in range(len(traj[0]))]
        section.update({
            "lr": self.lr, "batch_size": self.batch_size, "split": dict(self.split),
            "single_seed": len(self.seeds) == 1,
            "methods": {m: self.outcome(m) for m in self.runs},
            "recommended": recommend(self, on_reported_rows=not self.selection_runs),
            "prune_method": self.prune_method, "achieved_sparsity": dict(self.achieved_sparsity),
            "options": {m: dict(o) for m, o in self.options.items()},
            "dense": self.dense, "device": self.device,
        })
        selection = self.selection_section()
        if selection is not None:
            section["selection"] = selection
        if self.protected_layers is not None:
            section["protected_layers"] = list(self.protected_layers)
        if self.warnings:
            section["warnings"] = list(self.warnings)
        return {"mitigation": _clean(section)}


def _clean(v):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def recommend(result: MitigationResult | dict, *, tolerance: float = ACCURACY_TOLERANCE,
              on_reported_rows: bool = False) -> str:
    """The method chosen on the selection rows: among the methods whose mean overall accuracy there is
    within ``tolerance`` of the best one's, the one with the lowest mean accuracy fairness violation (ties:
    higher accuracy, then name) (:data:`CRITERION`). Accepts a result or its ``to_dict()`` (or the bare
    section); from a dict it chooses on ``selection.by_method``.

    A result without selection rows (written before fairprune kept them apart, or built by hand) can
    only be judged on the rows it reports, which flatters the winner (a winner's curse): that raises
    ValueError unless ``on_reported_rows=True`` asks for exactly that, knowingly.
    """
    if isinstance(result, MitigationResult):
        if result.selection_runs:
            return _choose({m: result.selection_outcome(m) for m in result.selection_runs}, tolerance)
        methods = {m: result.outcome(m) for m in result.runs}
    else:
        section = result.get("mitigation", result)
        by_method = (section.get("selection") or {}).get("by_method")
        if by_method:
            return _choose(by_method, tolerance)
        methods = section.get("methods") or {section["method"]: section["after"], **section.get("baselines", {})}
    if not on_reported_rows:
        raise ValueError("this result has no selection rows to choose on (it predates them or was built without "
                         "them); choosing on the held-out rows it reports flatters the choice: pass "
                         "on_reported_rows=True to do that knowingly, or rerun fairprune mitigate")
    return _choose(methods, tolerance)


def _choose(methods: dict[str, dict], tolerance: float) -> str:
    if not methods:
        raise ValueError("the result holds no method outcomes to recommend from")
    best_acc = max(o["overall"]["accuracy"] for o in methods.values())
    close = [m for m, o in methods.items() if o["overall"]["accuracy"] >= best_acc - tolerance - 1e-12]
    return min(close, key=lambda m: (methods[m]["fairness_violation"]["accuracy"],
                                     -methods[m]["overall"]["accuracy"], m))
