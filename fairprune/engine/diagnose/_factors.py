"""Which factor explains the disparity here: rank correlations across groups, and their plain reading.

For each factor of the dense model (per group) and each sparsity level, the Spearman rank correlation
across groups between the factor and the group's accuracy drop [fairprune]. The factors are the ones
the paper ties to the excessive loss (PAPER.md): ``grad_norm_mean`` and ``group_grad_norm`` ‖g_a‖
(Theorem 1, Prop. 2), ``hessian_max_eig`` λ_max(H_a) and ``hessian_trace`` (Theorem 1), the negated
margin and the uncertainty Σ p(1 − p) (Theorem 2, Prop. 3: nearer the boundary), and ``group_size``
(Prop. 1: smaller groups, larger gradient norms; so the paper expects a *negative* correlation there).

With fewer than :data:`MIN_GROUPS` groups a rank correlation says nothing (two groups give ±1 for any
factor that differs at all): the reading then compares the group that lost most with the one that lost
least directly, factor by factor, in words (:func:`compare_groups`), with the uncertainty where the
figures have standard errors. Also here: Theorem 1's two terms per group next to the measured excessive
loss (:func:`theory_terms`) and what to read from them (:func:`theory_reading`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["FACTORS", "MIN_GROUPS", "STRONG", "COMPARED", "factor_values", "factor_correlations", "factor_sentence",
           "compare_groups", "theory_terms", "theory_reading"]

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
#: the factors :func:`compare_groups` puts side by side: key of :func:`factor_values` -> (the figure in words, its
#: standard error's key in the per-group DIAG, +1 when Theorem 1 ties a *larger* value to a larger loss after
#: pruning). The margin is compared as itself (values hold it negated): smaller margins lose more.
COMPARED: dict[str, tuple[str, str | None, int]] = {
    "grad_norm_mean": ("mean gradient norm", None, +1),
    "margin_mean": ("mean margin", None, -1),
    "hessian_max_eig": ("loss curvature λ_max", "hessian_max_eig_se", +1),
}
#: a difference counts as beyond its uncertainty when it exceeds this many standard errors of the difference
SE_MULTIPLE = 2.0
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
    out["sentence"] = factor_sentence({**out, "values": values}, drops)
    return out


def _rho(x: float) -> str:
    """0.9, -0.83, 1.0: two decimals at most, one at least."""
    text = f"{round(x, 2):.2f}"
    return text[:-1] if text.endswith("0") else text


def factor_sentence(corr: Mapping, drops: Mapping[str, float] | None = None) -> str:
    """One plain sentence from :func:`factor_correlations`' output, honest about too few groups."""
    n = corr["n_groups"]
    if n < MIN_GROUPS:
        values = corr.get("values")
        if values is not None and drops is not None:
            return compare_groups(values, drops)
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


def _num(x: float, digits: int = 3) -> str:
    """``digits`` significant figures without an exponent: 0.0123, 4.56, 123, 12,300, 41,600 (2: 42,000)."""
    if abs(x) >= 10 ** digits:
        return f"{float(f'{x:.{digits}g}'):,.0f}"
    return f"{x:.{digits}g}"


def _pts(drop: float) -> str:
    return f"{100 * drop:.1f}".replace("-", "−")


def _finite(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def compare_groups(values: Mapping[str, Mapping[str, float | None]], drops: Mapping[str, float],
                   ses: Mapping[str, Mapping[str, float | None]] | None = None) -> str:
    """In words, for too few groups to rank: the group that lost most against the one that lost least, on each
    factor of :data:`COMPARED` (which has the larger gradient norm, the smaller margin, the larger λ_max, by how
    much), and whether each points the way Theorem 1 expects.

    ``values``: :func:`factor_values`' output (the margin negated); ``drops``: group -> accuracy drop (a
    fraction); ``ses``: optional DIAG key -> group -> standard error (e.g. ``hessian_max_eig_se``): a figure
    with both standard errors is called different only beyond :data:`SE_MULTIPLE` SEs of the difference.
    """
    ses = ses or {}
    gs = [g for g in drops if _finite(drops[g]) is not None]
    if len(gs) < 2:
        return (f"With {len(gs)} group{'s' if len(gs) != 1 else ''} measured there is no other group to compare "
                f"with.")
    worst = max(gs, key=lambda g: drops[g])
    best = min(gs, key=lambda g: drops[g])
    if round(float(drops[worst]) - float(drops[best]), 12) == 0:
        return f"All {len(gs)} groups lost the same accuracy here, so no factor can explain a difference."
    lost = "lost" if drops[worst] > 0 else "gained"
    pair = f"Group {worst} lost more accuracy than group {best} ({_pts(drops[worst])} vs {_pts(drops[best])} points)"
    if lost == "gained":
        pair = (f"Group {worst} gained less accuracy than group {best} ({_pts(drops[worst])} vs "
                f"{_pts(drops[best])} points lost)")
    lead = "" if len(gs) == 2 else (f"With {len(gs)} groups a rank correlation cannot judge (it needs at least "
                                    f"{MIN_GROUPS}), so the group that lost most is compared with the one that "
                                    f"lost least. ")
    parts, agree, against, unsure = [], [], [], []
    for key, (name, se_key, expect) in COMPARED.items():
        per = values.get("neg_margin_mean" if key == "margin_mean" else key) or {}
        a, b = _finite(per.get(worst)), _finite(per.get(best))
        if a is None or b is None:
            continue
        if key == "margin_mean":
            a, b = -a, -b
        if a == b:
            parts.append(f"the same {name} ({_num(a)})")
            unsure.append(name)
            continue
        word = "larger" if a > b else "smaller"
        times = f", {max(a, b) / min(a, b):.1f}×" if min(a, b) > 0 and max(a, b) / min(a, b) >= 1.2 else ""
        sa, sb = (_finite((ses.get(se_key) or {}).get(g)) if se_key else None for g in (worst, best))
        if sa is not None and sb is not None:
            beyond = abs(a - b) > SE_MULTIPLE * math.hypot(sa, sb)
            figures = (f"{_num(a)} ± {_num(sa)} vs {_num(b)} ± {_num(sb)}, ± SE{times}: "
                       f"{'beyond' if beyond else 'within'} the uncertainty")
        else:
            beyond, figures = True, f"{_num(a)} vs {_num(b)}{times}"
        parts.append(f"a {word} {name} ({figures})")
        if not beyond:
            unsure.append(name)
        elif (a > b) == (expect > 0):
            agree.append(name)
        else:
            against.append(name)
    if not parts:
        return f"{lead}{pair}; their factors were not measured, so nothing explains the difference here."
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    def names(xs: list[str]) -> str:
        return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]

    clauses = []
    if agree and not against:
        clauses.append(("all as" if not unsure and len(agree) > 1 else f"{names(agree)} as" if unsure else "as")
                       + " Theorem 1 expects of the group that loses more")
    elif against and not agree:
        clauses.append(f"{names(against)} the opposite of what Theorem 1 expects, so "
                       f"{'they do' if len(against) > 1 else 'it does'} not explain who lost more here")
    elif agree and against:
        clauses.append(f"{names(agree)} as Theorem 1 expects, {names(against)} the other way")
    if unsure:
        clauses.append(f"{names(unsure)} cannot tell the two groups apart")
    verdict = "; ".join(clauses)
    return f"{lead}{pair}. Group {worst} has {listed}: {verdict}."


def theory_reading(terms: Mapping[str, Mapping[str, float | None]]) -> str:
    """What to read from Theorem 1's table (:func:`theory_terms` of one level), in plain words: that the bound is
    loose and by how much, which of its two terms dominates, and which group's terms are larger, and whether
    that group's measured excessive loss is larger too."""
    rows = {g: t for g, t in terms.items() if _finite(t.get("bound")) is not None}
    if not rows:
        return ("Theorem 1's bound could not be computed here: a group's gradient norm ‖g_a‖ or λ_max was not "
                "measured.")
    out = []
    ratios = {g: t["bound"] / t["excessive_loss"] for g, t in rows.items()
              if (_finite(t.get("excessive_loss")) or 0) > 0}
    if ratios:
        lo, hi = min(ratios.values()), max(ratios.values())
        size = f"{_num(lo, 2)}×" if _num(lo, 2) == _num(hi, 2) else f"{_num(lo, 2)}× to {_num(hi, 2)}×"
        out.append(f"The bound is an upper limit, and a loose one: it is {size} the measured excessive loss "
                   f"R(a), so read it for which term and which group it points at, not for its size.")
    else:
        out.append("No group's loss grew here (R(a) ≤ 0 for every group), so the bound has nothing to bound.")
    hess = [g for g, t in rows.items() if (t.get("hessian_term") or 0) > (t.get("grad_term") or 0)]
    share = {g: t["hessian_term"] / t["bound"] for g, t in rows.items() if t["bound"] > 0}
    if share:
        lo, hi = 100 * min(share.values()), 100 * max(share.values())
        span = f"{lo:.0f}%" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f}%"
        if len(hess) == len(rows):
            out.append(f"The curvature term ½λ_max·d² dominates for every group ({span} of the bound): the weights "
                       f"moved far enough that the loss surface's sharpness matters more than its slope.")
        elif not hess:
            out.append(f"The gradient term ‖g_a‖·d dominates for every group (the curvature term is {span} of the "
                       f"bound): the loss surface's slope matters more than its sharpness here.")
        else:
            out.append(f"The curvature term dominates for {', '.join(hess)} and the gradient term for the others.")
    if len(rows) >= 2:
        top = max(rows, key=lambda g: rows[g]["bound"])
        others = [g for g in rows if g != top]
        larger = [k for k in ("grad_term", "hessian_term")
                  if all((rows[top].get(k) or 0) >= (rows[g].get(k) or 0) for g in others)]
        which = {"grad_term": "gradient", "hessian_term": "curvature"}
        terms_text = (" and ".join(which[k] for k in larger) + f" term{'s' if len(larger) > 1 else ''}"
                      if larger else "sum of the terms")
        measured = {g: _finite(t.get("excessive_loss")) for g, t in rows.items()}
        worst = max((g for g in measured if measured[g] is not None), key=lambda g: measured[g], default=None)
        if worst is None:
            tail = ""
        elif worst == top:
            tail = f", and it is also the group whose measured loss grew most: the bound ranks the groups as measured"
        else:
            tail = (f", but group {worst}'s measured loss grew most: here the bound does not rank the groups as "
                    f"measured")
        out.append(f"Group {top} has the largest {terms_text}{' of all groups' if len(rows) > 2 else ''}{tail}.")
    return " ".join(out)


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
