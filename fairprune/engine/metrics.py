"""Per-group metrics, excessive loss, accuracy drop, fairness violation and their uncertainty.

Definitions (PAPER.md): for group a, accuracy drop = acc(θ*; D_a) − acc(θ̄; D_a); excessive loss
R(a) = J(θ̄; D_a) − J(θ*; D_a) (Eq. 2); fairness violation ξ = max_a R(a) − min_a R(a) (Eq. 3), and
the same for accuracy drops; accuracy gap = max_a acc − min_a acc (what the paper's experiments plot).

Uncertainty [fairprune]. Each row is one of four kinds, (dense right?, pruned right?), so a group's
accuracy drop is (b − c) / n with b its right→wrong rows and c its wrong→right rows: every figure
below needs only those counts, which keeps it exact and cheap.

- Per-group and overall interval: Tango's score interval for a difference of paired proportions
  (Tango 1998, Stat Med 17:891), 95% each, not adjusted for the number of groups. It never collapses
  to a point the data cannot support: 0 flips in 30 rows gives about ±11 points, where a bootstrap
  gives [0, 0]. Chosen over Newcombe's hybrid score interval (1998, method 10), which does collapse
  with no flips when the accuracy is 50%, by the coverage measured in the README's statistics section.
- ``significant`` / ``p_value``: the exact conditional (permutation) test of the group's paired
  differences d = dense right − pruned right ∈ {−1, 0, 1} against the other rows'. If group labels
  carry no information about d, the group's (b, c) is a multivariate hypergeometric draw of its n rows
  from all N; the two-sided p-value sums the probabilities of every (b, c) whose b − c is at least as
  far from its expectation as the observed one. Exact at any count, zero flips included; Holm over
  the groups.
- Violation interval: simultaneous Tango intervals, each at level 0.95^(1/G) (Šidák: the groups are
  disjoint rows, so their intervals are independent), give lower = max(0, max_a lo_a − min_a hi_a),
  upper = max_a hi_a − min_a lo_a; it covers the true violation whenever all G intervals cover their
  drops, so at least 95%, and it contains 0 when the groups' intervals overlap.
- Violation p-value (H0: every group's drop is the same): a Monte Carlo permutation test of group
  labels within the rows with statistic max − min of the groups' drops, p = (1 + #{T* ≥ T}) / (1 + B).
  Permuted counts are drawn group by group from hypergeometrics, so B permutations cost O(B · groups).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from .evaluate import Predictions
from ..core.result import Metrics

__all__ = ["MIN_RELIABLE", "N_PERM", "P_FLOOR", "SIGNIFICANCE_TEST", "INTERVAL_METHOD", "Comparison", "group_metrics",
           "compare", "holm", "accuracy_gap", "paired_counts", "tango_interval", "group_vs_rest_p", "group_p_values",
           "violation_interval", "violation_p_value"]

#: Groups with fewer samples are reported but marked unreliable.
MIN_RELIABLE = 30
#: Permutations of the violation's p-value.
N_PERM = 4999
#: Smallest p-value the exact group test reports (the outcomes it leaves out weigh less than this).
P_FLOOR = 1e-13
SIGNIFICANCE_TEST = ("exact conditional (permutation) test of the group's paired drops against the other rows', "
                     "Holm-adjusted over groups")
INTERVAL_METHOD = ("Tango score interval for a paired difference of proportions: per group and overall 95% each, "
                   "not adjusted; violation from simultaneous (Šidák) per-group intervals")


class Comparison(NamedTuple):
    """What :func:`compare` measures: the pruned model against the dense one on the same rows."""

    overall: Metrics
    groups: dict[str, Metrics]
    violation: dict[str, float]                       # {"accuracy": max − min drop, "loss": max R − min R}
    violation_ci95: dict[str, tuple[float, float]]    # {"accuracy": simultaneous interval}
    accuracy_gap: float
    violation_p_value: dict[str, float]               # {"accuracy": p of H0 every group's drop is the same}
    significance_test: str = SIGNIFICANCE_TEST
    interval_method: str = INTERVAL_METHOD

    def level_fields(self) -> dict:
        """The keyword arguments of :class:`fairprune.core.result.LevelResult` this comparison fills."""
        return dict(overall=self.overall, groups=self.groups, fairness_violation=self.violation,
                    fairness_violation_ci95=self.violation_ci95, accuracy_gap=self.accuracy_gap,
                    fairness_violation_p_value=self.violation_p_value, significance_test=self.significance_test,
                    interval_method=self.interval_method)


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


def paired_counts(dense_correct: np.ndarray, pruned_correct: np.ndarray, groups: np.ndarray, names: list[str]):
    """(n, b, c) per group in ``names`` order, int64 arrays: rows, right→wrong rows, wrong→right rows."""
    d = np.asarray(dense_correct, dtype=bool)
    p = np.asarray(pruned_correct, dtype=bool)
    if d.shape != p.shape or d.shape != np.shape(groups):
        raise ValueError(f"expected dense, pruned and groups of one length; found {d.shape}, {p.shape}, "
                         f"{np.shape(groups)}")
    rw, wr = d & ~p, ~d & p
    n, b, c = (np.array([int(x[groups == g].sum()) for g in names], dtype=np.int64)
               for x in (np.ones_like(d), rw, wr))
    return n, b, c


def _tango_z(delta, n, b, c):
    """Tango's score statistic for H0: (b − c)/n's expectation is ``delta`` (arrays broadcast)."""
    a2 = 2.0 * n
    bq = -b - c + (2.0 * n - b + c) * delta
    cq = -c * delta * (1.0 - delta)
    q21 = (np.sqrt(np.maximum(bq * bq - 4.0 * a2 * cq, 0.0)) - bq) / (2.0 * a2)  # restricted MLE of P(wrong→right)
    var = n * np.maximum(2.0 * q21 + delta * (1.0 - delta), 0.0)
    num = b - c - n * delta
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 0, num / np.sqrt(var), np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0)))


def tango_interval(n, b, c, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Tango's (1998) score interval for the drop (b − c)/n of paired proportions, per element.

    n rows, b right→wrong, c wrong→right (arrays of one shape, n ≥ 1). The interval is every Δ whose
    score statistic (b − c − nΔ) / sqrt(n (2 q̂₂₁ + Δ(1 − Δ))), with q̂₂₁ the maximum-likelihood
    P(wrong→right) under Δ, is within the normal quantile; its ends are found by bisection (the
    statistic falls monotonically in Δ). Returns (lo, hi) arrays in [−1, 1]."""
    n, b, c = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (n, b, c))
    if (n < 1).any() or (b < 0).any() or (c < 0).any() or (b + c > n).any():
        raise ValueError(f"expected counts with n >= 1 and 0 <= b + c <= n; found n={n}, b={b}, c={c}")
    if not 0 < level < 1:
        raise ValueError(f"expected a confidence level in (0, 1); found {level!r}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    est = (b - c) / n

    # One bisection for both ends: Z(Δ) − target falls in Δ, above target at lo and below at hi.
    k = len(est)
    lo = np.concatenate([np.full(k, -1.0), est])
    hi = np.concatenate([est, np.full(k, 1.0)])
    target = np.concatenate([np.full(k, z), np.full(k, -z)])
    nn, bb, cc = np.tile(n, 2), np.tile(b, 2), np.tile(c, 2)
    for _ in range(50):   # 2^-50 of the unit interval: far below any reported digit
        mid = 0.5 * (lo + hi)
        above = _tango_z(mid, nn, bb, cc) > target
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    ends = 0.5 * (lo + hi)
    lower = np.where(est <= -1.0, -1.0, ends[:k])
    upper = np.where(est >= 1.0, 1.0, ends[k:])
    return np.minimum(lower, est), np.maximum(upper, est)


def _log_comb(lf: np.ndarray, n, k) -> np.ndarray:
    return lf[n] - lf[k] - lf[n - k]


def group_vs_rest_p(n_g: int, b_g: int, c_g: int, n: int, b: int, c: int, lf: np.ndarray | None = None) -> float:
    """Exact two-sided p of the group's b_g − c_g against the rest's, conditional on the totals.

    Under H0 the group's n_g rows are a random draw without replacement from all n rows, of which b
    are right→wrong and c wrong→right: (b_g, c_g) is multivariate hypergeometric. p sums the
    probabilities of every outcome whose b_g − c_g is at least as far from its expectation
    n_g (b − c) / n as the observed one. ``lf``: log-factorials 0..n (computed when None). Outcomes
    more than 12 standard deviations (+12 rows) from the mean are left out (their mass is below about
    1e-14, by Bernstein's bound), so p is exact to :data:`P_FLOOR` and never reported below it."""
    if not (0 <= b_g <= b and 0 <= c_g <= c and b_g + c_g <= n_g <= n and b + c <= n):
        raise ValueError(f"expected a group's counts within the totals; found group (n={n_g}, b={b_g}, c={c_g}) "
                         f"of totals (n={n}, b={b}, c={c})")
    if b + c == 0 or n_g == n:
        return 1.0
    if lf is None:
        lf = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    zeros = n - b - c
    f = n_g / n
    shrink = (n - n_g) / max(n - 1, 1)

    def window(total):
        mean, sd = n_g * total / n, np.sqrt(n_g * (total / n) * (1 - total / n) * shrink)
        lo = max(0, n_g - (n - total), int(np.floor(mean - 12 * sd - 12)))
        hi = min(n_g, total, int(np.ceil(mean + 12 * sd + 12)))
        return np.arange(lo, hi + 1)

    bs, cs = window(b), window(c)
    expected = f * (b - c)
    observed = abs(b_g - c_g - expected)
    tol = 1e-9 * (1.0 + abs(expected))
    total = extreme = 0.0
    block = max(1, (1 << 21) // len(cs))
    ref = None
    for start in range(0, len(bs), block):
        bb = bs[start:start + block, None]
        zz = n_g - bb - cs[None, :]
        ok = (zz >= 0) & (zz <= zeros)
        logp = np.where(ok, _log_comb(lf, b, bb) + _log_comb(lf, c, cs[None, :])
                        + _log_comb(lf, zeros, np.clip(zz, 0, zeros)), -np.inf)
        if ref is None:
            ref = _log_comb(lf, n, n_g)  # exact normaliser; the sum over the window is ~1 and checks it
        pr = np.exp(logp - ref)
        total += pr.sum()
        extreme += pr[np.abs(bb - cs[None, :] - expected) >= observed - tol].sum()
    return float(min(1.0, max(P_FLOOR, extreme / total)))


def group_p_values(n, b, c) -> np.ndarray:
    """Raw (unadjusted) :func:`group_vs_rest_p` of every group, counts per group in one order."""
    n, b, c = (np.asarray(x, dtype=np.int64) for x in (n, b, c))
    total = int(n.sum())
    lf = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, total + 1)))])
    return np.array([group_vs_rest_p(int(n[j]), int(b[j]), int(c[j]), total, int(b.sum()), int(c.sum()), lf)
                     for j in range(len(n))])


def violation_interval(n, b, c, *, level: float = 0.95):
    """Simultaneous interval for max_a drop_a − min_a drop_a from per-group Tango intervals at level^(1/G).

    n, b, c: counts per group, shape (G,), or (R, G) for R tables at once (then lo, hi are arrays)."""
    n, b, c = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (n, b, c)))
    groups = n.shape[-1]
    if groups < 2:  # one group: the violation is 0 by definition
        lo = hi = np.zeros(n.shape[:-1])
    else:
        g_lo, g_hi = tango_interval(n.ravel(), b.ravel(), c.ravel(), level=level ** (1.0 / groups))
        g_lo, g_hi = g_lo.reshape(n.shape), g_hi.reshape(n.shape)
        lo = np.maximum(0.0, g_lo.max(axis=-1) - g_hi.min(axis=-1))
        hi = g_hi.max(axis=-1) - g_lo.min(axis=-1)
    return (float(lo), float(hi)) if n.ndim == 1 else (lo, hi)


def violation_p_value(n, b, c, *, n_perm: int = N_PERM, seed: int = 0) -> float:
    """Monte Carlo permutation p of H0 "every group's drop is the same", statistic max − min drop.

    Group labels are permuted within the rows: each permutation's counts are drawn group by group,
    b_g from a hypergeometric of the right→wrong rows still unassigned, then c_g from the
    wrong→right rows among the rest. p = (1 + #{T* ≥ T_obs}) / (1 + n_perm)."""
    n, b, c = (np.asarray(x, dtype=np.int64) for x in (n, b, c))
    if len(n) < 2 or b.sum() + c.sum() == 0:
        return 1.0
    if n_perm < 1:
        raise ValueError(f"expected n_perm >= 1; found {n_perm!r}")
    drops = (b - c) / n
    observed = drops.max() - drops.min()
    rng = np.random.default_rng(seed)
    left_b = np.full(n_perm, b.sum())
    left_c = np.full(n_perm, c.sum())
    left = np.full(n_perm, n.sum())
    hi = np.full(n_perm, -np.inf)
    lo = np.full(n_perm, np.inf)
    for j, n_g in enumerate(n):
        if j == len(n) - 1:
            bg, cg = left_b, left_c
        else:
            bg = rng.hypergeometric(left_b, left - left_b, n_g)
            cg = rng.hypergeometric(left_c, left - left_b - left_c, n_g - bg)
        d = (bg - cg) / n_g
        hi, lo = np.maximum(hi, d), np.minimum(lo, d)
        left_b, left_c, left = left_b - bg, left_c - cg, left - n_g
    ge = int(((hi - lo) >= observed - 1e-12).sum())
    return (1 + ge) / (1 + n_perm)


def _binary_rates(y: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict[str, tuple]:
    """(tpr, fpr, selection_rate) per group and for '__overall__', class 1 being the positive class.

    tpr is None for rows without positives, fpr None without negatives (undefined, not 0). Counted
    directly: fairlearn's MetricFrame squeezed a one-row input to 0-d and failed ("Feature array has
    too many dimensions"); these are the same definitions, for any number of rows.
    """
    y, pred, groups = (np.asarray(a).reshape(-1) for a in (y, pred, groups))

    def rates(mask: np.ndarray) -> tuple:
        positive, negative = mask & (y == 1), mask & (y == 0)
        tpr = float(np.mean(pred[positive] == 1)) if positive.any() else None
        fpr = float(np.mean(pred[negative] == 1)) if negative.any() else None
        return tpr, fpr, float(np.mean(pred[mask] == 1))

    out = {"__overall__": rates(np.ones(len(y), dtype=bool))}
    for g in np.unique(groups):
        out[str(g)] = rates(groups == g)
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
            seed: int = 0, n_perm: int = N_PERM, alpha: float = 0.05) -> Comparison:
    """The pruned model against the dense one on the same rows (see the module docstring for the statistics).

    ``seed`` seeds the violation's permutations only (everything else is exact), so the same inputs and
    seed give the same numbers. Returns a :class:`Comparison`.
    """
    _, dense_groups = group_metrics(dense, y, groups, names)
    p_overall, p_groups = group_metrics(pruned, y, groups, names)
    n, b, c = paired_counts(dense.correct, pruned.correct, groups, names)
    if int(n.sum()) != len(y):
        raise ValueError(f"expected the groups {names} to cover all {len(y)} rows; they cover {int(n.sum())}")
    p_adj = holm(group_p_values(n, b, c))
    lo, hi = tango_interval(n, b, c)

    out_groups = {}
    for j, g in enumerate(names):
        m = p_groups[g]
        out_groups[g] = Metrics(
            n=m.n, accuracy=m.accuracy, loss=m.loss, tpr=m.tpr, fpr=m.fpr, selection_rate=m.selection_rate,
            accuracy_drop=dense_groups[g].accuracy - m.accuracy, excessive_loss=m.loss - dense_groups[g].loss,
            accuracy_drop_ci95=(float(lo[j]), float(hi[j])),
            significant=bool(p_adj[j] < alpha), p_value=float(p_adj[j]), unreliable=m.n < MIN_RELIABLE,
        )
    (olo,), (ohi,) = tango_interval(n.sum(), b.sum(), c.sum())
    overall = Metrics(
        n=p_overall.n, accuracy=p_overall.accuracy, loss=p_overall.loss, tpr=p_overall.tpr, fpr=p_overall.fpr,
        selection_rate=p_overall.selection_rate, accuracy_drop=float(dense.correct.mean()) - p_overall.accuracy,
        excessive_loss=p_overall.loss - float(dense.loss.mean()), accuracy_drop_ci95=(float(olo), float(ohi)),
    )
    acc_drops = [out_groups[g].accuracy_drop for g in names]
    losses = [out_groups[g].excessive_loss for g in names]
    violation = {"accuracy": float(max(acc_drops) - min(acc_drops)), "loss": float(max(losses) - min(losses))}
    return Comparison(overall, out_groups, violation, {"accuracy": violation_interval(n, b, c)},
                      accuracy_gap(out_groups), {"accuracy": violation_p_value(n, b, c, n_perm=n_perm, seed=seed)})
