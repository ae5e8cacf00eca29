"""Per-group metrics, excessive loss, accuracy drop, fairness violation and their uncertainty.

Definitions (PAPER.md): for group a, accuracy drop = acc(θ*; D_a) − acc(θ̄; D_a); excessive loss
R(a) = J(θ̄; D_a) − J(θ*; D_a) (Eq. 2); fairness violation ξ = max_a R(a) − min_a R(a) (Eq. 3), and
the same for accuracy drops; accuracy gap = max_a acc − min_a acc (what the paper's experiments plot).

Uncertainty [fairprune]: a paired, stratified bootstrap over samples within groups. Each sample is one
of four kinds, (dense right?, pruned right?), so resampling a group only changes the counts of the
four kinds: we draw those counts from a multinomial, which is exact and costs O(B · groups) instead
of O(B · N). A group's drop is flagged when it differs from the overall drop (two-sided, normal
approximation with the bootstrap standard error), Holm-corrected over the groups compared.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import norm

from .evaluate import Predictions
from .result import Metrics

__all__ = ["MIN_RELIABLE", "N_BOOT", "group_metrics", "compare", "holm", "accuracy_gap"]

#: Groups with fewer samples are reported but marked unreliable.
MIN_RELIABLE = 30
#: Bootstrap resamples.
N_BOOT = 2000


def holm(p: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down), same order as ``p``."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def accuracy_gap(groups: dict[str, Metrics]) -> float:
    accs = [m.accuracy for m in groups.values()]
    return float(max(accs) - min(accs))


def _binary_rates(y: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict[str, tuple]:
    """(tpr, fpr, selection_rate) per group and for '__overall__', from fairlearn's MetricFrame."""
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fairlearn/sklearn warn on groups with no positives; we report None there
        mf = MetricFrame(
            metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "selection_rate": selection_rate},
            y_true=y, y_pred=pred, sensitive_features=groups,
        )
    out = {}
    for key, row, yy in [("__overall__", mf.overall, y)] + [
        (str(g), mf.by_group.loc[g], y[groups == g]) for g in mf.by_group.index
    ]:
        tpr = float(row["tpr"]) if (yy == 1).any() else None
        fpr = float(row["fpr"]) if (yy == 0).any() else None
        out[key] = (tpr, fpr, float(row["selection_rate"]))
    return out


def group_metrics(p: Predictions, y: np.ndarray, groups: np.ndarray, names: list[str]) -> tuple[Metrics, dict[str, Metrics]]:
    """(overall, {group: Metrics}) of one model's predictions; ``names`` gives the group order."""
    rates = _binary_rates(y, p.pred, groups) if p.binary else {}

    def one(mask, key):
        n = int(mask.sum())
        tpr, fpr, sr = rates.get(key, (None, None, None))
        return Metrics(n=n, accuracy=float(p.correct[mask].mean()), loss=float(p.loss[mask].mean()),
                       tpr=tpr, fpr=fpr, selection_rate=sr)

    overall = one(np.ones(len(y), dtype=bool), "__overall__")
    return overall, {g: one(groups == g, g) for g in names}


def compare(dense: Predictions, pruned: Predictions, y: np.ndarray, groups: np.ndarray, names: list[str], *,
            seed: int = 0, n_boot: int = N_BOOT, alpha: float = 0.05):
    """The pruned model against the dense one on the same rows.

    Returns (overall Metrics, {group: Metrics}, fairness_violation, fairness_violation_ci95, accuracy_gap).
    """
    _, dense_groups = group_metrics(dense, y, groups, names)
    p_overall, p_groups = group_metrics(pruned, y, groups, names)
    d_overall_acc = float(dense.correct.mean())
    d_overall_loss = float(dense.loss.mean())

    # Paired bootstrap via counts of the four (dense right, pruned right) kinds per group.
    rng = np.random.default_rng(seed)
    kind = dense.correct.astype(int) * 2 + pruned.correct.astype(int)   # 0: ww, 1: wr, 2: rw, 3: rr
    n_total = len(y)
    drops = np.empty((n_boot, len(names)))
    overall_drop = np.zeros(n_boot)
    for j, g in enumerate(names):
        k = kind[groups == g]
        n_g = len(k)
        counts = rng.multinomial(n_g, np.bincount(k, minlength=4) / n_g, size=n_boot)
        drop_counts = counts[:, 2] - counts[:, 1]   # right->wrong minus wrong->right
        drops[:, j] = drop_counts / n_g
        overall_drop += drop_counts / n_total

    point = {g: dense_groups[g].accuracy - p_groups[g].accuracy for g in names}
    overall_point = d_overall_acc - p_overall.accuracy
    diff = drops - overall_drop[:, None]
    se = diff.std(axis=0, ddof=1) if n_boot > 1 else np.zeros(len(names))
    obs = np.array([point[g] - overall_point for g in names])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, np.abs(obs) / se, np.where(np.abs(obs) > 1e-12, np.inf, 0.0))
    p_raw = 2 * norm.sf(z)
    p_adj = holm(p_raw)

    lo, hi = np.percentile(drops, [2.5, 97.5], axis=0)
    out_groups = {}
    for j, g in enumerate(names):
        m = p_groups[g]
        out_groups[g] = Metrics(
            n=m.n, accuracy=m.accuracy, loss=m.loss, tpr=m.tpr, fpr=m.fpr, selection_rate=m.selection_rate,
            accuracy_drop=point[g], excessive_loss=m.loss - dense_groups[g].loss,
            accuracy_drop_ci95=(float(lo[j]), float(hi[j])),
            significant=bool(p_adj[j] < alpha), p_value=float(p_adj[j]), unreliable=m.n < MIN_RELIABLE,
        )
    olo, ohi = np.percentile(overall_drop, [2.5, 97.5])
    overall = Metrics(
        n=p_overall.n, accuracy=p_overall.accuracy, loss=p_overall.loss, tpr=p_overall.tpr, fpr=p_overall.fpr,
        selection_rate=p_overall.selection_rate, accuracy_drop=overall_point,
        excessive_loss=p_overall.loss - d_overall_loss, accuracy_drop_ci95=(float(olo), float(ohi)),
    )
    acc_drops = [out_groups[g].accuracy_drop for g in names]
    losses = [out_groups[g].excessive_loss for g in names]
    violation = {"accuracy": float(max(acc_drops) - min(acc_drops)), "loss": float(max(losses) - min(losses))}
    v_boot = drops.max(axis=1) - drops.min(axis=1)
    vlo, vhi = np.percentile(v_boot, [2.5, 97.5])
    return overall, out_groups, violation, {"accuracy": (float(vlo), float(vhi))}, accuracy_gap(out_groups)
