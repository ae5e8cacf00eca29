"""Which factor explains the disparity here: rank correlations across groups, and their plain reading.

For each factor of the dense model (per group) and each sparsity level, the Spearman rank correlation
across groups between the factor and the group's accuracy drop [fairprune]. The factors are the ones
the paper ties to the excessive loss (PAPER.md): ``grad_norm_mean`` and ``group_grad_norm`` ‖g_a‖
(Theorem 1, Prop. 2), ``hessian_max_eig`` λ_max(H_a) and ``hessian_trace`` (Theorem 1), the negated
margin and the uncertainty Σ p(1 − p) (Theorem 2, Prop. 3: nearer the boundary), and ``group_size``
(Prop. 1: smaller groups, larger gradient norms; so the paper expects a *negative* correlation there).

With fewer than :data:`MIN_GROUPS` groups a rank correlation says nothing (two groups give ±1 for any
factor that differs at all): the reading then says it cannot judge. Also here: Theorem 1's two terms
per group next to the measured excessive loss (:func:`theory_terms`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["FACTORS", "MIN_GROUPS", "STRONG", "factor_values", "factor_correlations", "factor_sentence",
           "theory_terms"]

#: factor key -> how a group with a *larger* value reads ("groups with ... lost more")
FACTORS: dict[str, str] = {
    "grad_norm_mean": "larger gradient norms",
    "group_grad_norm": "larger group-gradient norms ‖g_a‖",
    "hessian_max_eig": "larger Hessian top eigenvalues",
    "hessian_trace": "larger Hessian traces",
    "neg_margin_mean": "smaller margins (nearer the decision boundary)",
    "uncertainty_mean": "more uncertain predictions",
    "group_size": "more samples",
}
#: fewer groups than this: a rank correlation cannot judge
MIN_GROUPS = 4
#: |Spearman| at or above this is read as a clear ordering
STRONG = 0.5


def factor_values(dense: Mapping[str, Mapping[str, float | None]], sizes: Mapping[str, int]) -> dict[str, dict[str, float | None]]:
    """Factor -> group -> value, from the dense model's per-group DIAG and the group sizes."""
    out: dict[str, dict[str, float | None]] = {}
    for f in FACTORS:
        vals = {}
        for g, diag in dense.items():
            if f == "group_size":
                v = sizes.get(g)
            elif f == "neg_margin_mean":
                m = diag.get("margin_mean")
                v = None if m is None else -m
            else:
                v = diag.get(f)
            vals[g] = None if v is None or not math.isfinite(float(v)) else float(v)
        out[f] = vals
    return out


def _spearman(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, float | None]:
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None, None   # undefined: too few points or a constant
    res = spearmanr(a, b)
    rho, p = float(res.statistic), float(res.pvalue)
    return (rho if math.isfinite(rho) else None), (p if math.isfinite(p) else None)


def factor_correlations(values: Mapping[str, Mapping[str, float | None]], drops: Mapping[str, float]) -> dict:
    """Spearman ρ (and its p-value) across groups between each factor and the accuracy drops.

    ``values``: factor -> group -> value (:func:`factor_values`); ``drops``: group -> accuracy drop at
    one level. Groups with a missing value are left out of that factor's correlation; ``n_groups``
    counts the groups used. Returns {"n_groups": int, "spearman": {factor: ρ | None},
    "p_value": {factor: p | None}, "n": {factor: groups used}, "strongest": factor | None, "sentence": str}.
    """
    spearman, pvals, counts = {}, {}, {}
    for f, per_group in values.items():
        gs = [g for g in drops if per_group.get(g) is not None and drops[g] is not None and math.isfinite(drops[g])]
        counts[f] = len(gs)
        if len(gs) < MIN_GROUPS:
            spearman[f], pvals[f] = None, None
            continue
        spearman[f], pvals[f] = _spearman([per_group[g] for g in gs], [drops[g] for g in gs])
    n_groups = len(drops)
    ranked = [f for f in spearman if spearman[f] is not None]
    strongest = max(ranked, key=lambda f: (abs(spearman[f]), -list(spearman).index(f))) if ranked else None
    out = {"n_groups": n_groups, "spearman": spearman, "p_value": pvals, "n": counts, "strongest": strongest}
    out["sentence"] = factor_sentence(out, drops)
    return out


def _rho(x: float) -> str:
    """0.9, -0.83, 1.0: two decimals at most, one at least."""
    text = f"{round(x, 2):.2f}"
    return text[:-1] if text.endswith("0") else text


def factor_sentence(corr: Mapping, drops: Mapping[str, float] | None = None) -> str:
    """One plain sentence from :func:`factor_correlations`' output, honest about too few groups."""
    n = corr["n_groups"]
    if n < MIN_GROUPS:
        return (f"With only {n} group{'s' if n != 1 else ''}, a rank correlation cannot judge which factor explains "
                f"the accuracy drops (it needs at least {MIN_GROUPS}); compare the groups' figures directly.")
    if drops is not None and len({round(float(d), 12) for d in drops.values()}) < 2:
        return f"All {n} groups lost the same accuracy here, so no factor can explain a difference."
    f = corr.get("strongest")
    if f is None:
        return f"No factor could be ranked against the accuracy drops of the {n} groups (the factors are constant or missing)."
    rho = corr["spearman"][f]
    used = corr["n"][f]
    where = f"Spearman {_rho(rho)} over {used} groups"
    if abs(rho) < STRONG:
        return (f"No single factor orders the groups' accuracy drops well here; the closest is that groups with "
                f"{FACTORS[f]} lost {'more' if rho > 0 else 'less'} ({where}).")
    p = corr.get("p_value", {}).get(f)
    chance = f"; with {used} groups this could be chance (p = {p:.2f})" if p is not None and p >= 0.05 else ""
    return f"Groups with {FACTORS[f]} lost {'more' if rho > 0 else 'less'} here: {where}{chance}."


def theory_terms(dense: Mapping[str, Mapping[str, float | None]], excessive_loss: Mapping[str, float],
                 distance: float) -> dict[str, dict[str, float | None]]:
    """Theorem 1's two terms per group next to the measured excessive loss R(a).

    grad_term = ‖g_a‖·‖θ̄ − θ*‖, hessian_term = ½ λ_max(H_a)·‖θ̄ − θ*‖², bound = their sum (the bound
    without its O(‖θ̄ − θ*‖³) remainder); g_a and H_a of the dense model; ``distance`` over all
    parameters. ``weight_distance`` is repeated per group so each entry reads on its own.
    """
    out = {}
    for g, diag in dense.items():
        gn, lam = diag.get("group_grad_norm"), diag.get("hessian_max_eig")
        grad_term = None if gn is None else gn * distance
        hess_term = None if lam is None else 0.5 * lam * distance ** 2
        bound = None if grad_term is None or hess_term is None else grad_term + hess_term
        out[g] = {"grad_term": grad_term, "hessian_term": hess_term, "bound": bound,
                  "excessive_loss": excessive_loss.get(g), "weight_distance": distance}
    return out
