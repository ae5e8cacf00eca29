"""Plotly figures of an audit, shared by the dashboard and the report: pure functions, no UI imports.

Every builder takes an :class:`~fairprune.core.result.AuditResult` (or plain numbers) and returns a
``plotly.graph_objects.Figure``; nothing here computes a metric, it only draws the result's numbers.
Accuracies are drawn in percent and accuracy changes in percentage points ("points"), the units the
headline sentence uses. ``DEFINITIONS`` holds the one-line definition of every figure drawn, for help
texts and captions (symbols as in PAPER.md: θ* dense, θ̄ pruned, J(θ; D_a) group a's mean loss).

The x axis of the sweep charts is categorical ("dense", "50%", "80%", ...): the levels users ask for
crowd near 100%, and evenly spaced categories keep every level readable.
"""

from __future__ import annotations

import math

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from ..core.result import AuditResult, LevelResult, Metrics

__all__ = ["DEFINITIONS", "group_colors", "accuracy_vs_sparsity", "drop_by_group", "violation_vs_sparsity",
           "group_sizes", "sparsity_label", "footprint_vs_sparsity", "diagnostics_by_group", "DIAG_PANELS",
           "mitigation_by_group", "mitigation_methods", "diagnostic_dense_vs_level", "group_scatter",
           "multipliers_over_time", "search_frontier", "model_variants", "size_axis", "drop_by_variant"]

#: One-line definitions, keyed by the names used in the result JSON. [paper] / [fairprune] as in PAPER.md.
DEFINITIONS: dict[str, str] = {
    "sparsity": "Fraction of the prunable weights (conv and linear weight tensors) set to zero; biases and "
                "normalisation parameters are kept. 'dense' is the original model.",
    "accuracy": "Share of a group's samples the model classifies correctly, acc(θ; D_a).",
    "loss": "Mean cross-entropy of the group's samples, J(θ; D_a).",
    "n": "Number of samples of the group that were measured.",
    "accuracy_drop": "Accuracy drop of group a = acc(θ*; D_a) − acc(θ̄; D_a): the dense model's accuracy minus the "
                     "pruned model's, in percentage points. Positive: the group lost accuracy; negative: it gained.",
    "excessive_loss": "Excessive loss R(a) = J(θ̄; D_a) − J(θ*; D_a): how much the group's mean cross-entropy grows "
                      "when the model is pruned (Tran et al. 2022, Eq. 2).",
    "fairness_violation": "Fairness violation ξ = max_a R(a) − min_a R(a) (Tran et al. 2022, Eq. 3): the spread of "
                          "excessive losses across groups; 0 means pruning hurt every group equally. fairprune "
                          "reports it for accuracy drops the same way (max drop − min drop, in points).",
    "fairness_violation_accuracy": "Accuracy fairness violation = largest group accuracy drop − smallest group "
                                   "accuracy drop, in points (ξ of Eq. 3 computed on accuracy drops).",
    "fairness_violation_loss": "Loss fairness violation ξ = max_a R(a) − min_a R(a) (Tran et al. 2022, Eq. 3), in "
                               "nats of cross-entropy.",
    "accuracy_gap": "Accuracy gap of one model = best group accuracy − worst group accuracy, in points (what the "
                    "paper's experiments plot as 'fairness violation', Sec. 6.2).",
    "accuracy_drop_ci95": "95% interval of the group's accuracy drop: Tango's score interval for a difference of "
                          "paired proportions (the same rows, dense and pruned). Not adjusted for the number of "
                          "groups: each group's own 95% interval. It never shrinks to a point the data cannot "
                          "support: a group of 30 rows with no changed prediction still spans about ±11 points.",
    "significant": "The group's drop differs from the drop of the other groups' rows by more than chance: exact "
                   "conditional (permutation) test of its paired changes against theirs, valid at any count, "
                   "Holm-corrected for the number of groups, at the 5% level.",
    "p_value": "Holm-adjusted p-value of the exact test that the group's drop equals that of the other groups' rows.",
    "fairness_violation_ci95": "95% interval of the accuracy violation, simultaneous over the groups: built from "
                               "per-group intervals that hold all at once (Šidák), so it covers the true violation "
                               "at least 95% of the time and reaches 0 when the groups' intervals overlap. Small "
                               "groups make it wide.",
    "fairness_violation_p_value": "Could every group pay the same? p-value of a permutation test of the group labels "
                                  "within the rows, statistic max − min drop: small means the groups' drops differ "
                                  "beyond chance. It can be small while the (more cautious) simultaneous interval "
                                  "still reaches 0.",
    "unreliable": "Fewer than 30 samples in the group: its figures are shown but too noisy to act on.",
    "weight_distance": "‖θ̄ − θ*‖₂ over the prunable weights: how far pruning moved the model.",
    "achieved_sparsity": "Share of prunable weights that are zero in the pruned model (measured).",
}

# Okabe–Ito (colour-blind safe) first, then eight more chosen greedily for the largest CIELAB distance to every
# colour before them and to the overall line's and small groups' greys: no two of the 16 are closer (ΔE 22) than
# Okabe–Ito's own closest pair. (The eight they replace held a near-twin of Okabe–Ito's green, ΔE 2.6.)
_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C564B", "#F0C800",
            "#000075", "#F032E6", "#73D216", "#E6194B", "#B2DF8A", "#808000", "#4363D8", "#800000")
OVERALL_COLOR = "#333333"
UNRELIABLE_COLOR = "#9E9E9E"
_FONT = dict(family="Inter, 'Source Sans Pro', Arial, sans-serif", size=14)


def _pts(x: float) -> float:
    return 100.0 * x


def sparsity_label(s: float) -> str:
    """0 -> 'dense', 0.9 -> '90%', 0.975 -> '97.5%'."""
    return "dense" if s == 0 else f"{100 * s:g}%"


def group_colors(groups: Sequence[str]) -> dict[str, str]:
    """A stable colour per group, in the order given (the result's order: largest group first): the palette's
    16 colours, then hues spaced by the golden angle (never a repeat, however many groups)."""
    import colorsys

    out = {}
    for i, g in enumerate(groups):
        if i < len(_PALETTE):
            out[g] = _PALETTE[i]
            continue
        k = i - len(_PALETTE)
        r, gr, b = colorsys.hls_to_rgb((0.11 + 0.381966 * k) % 1.0, 0.38 + 0.14 * (k % 3), 0.75 - 0.15 * (k // 3 % 2))
        out[g] = f"#{round(255 * r):02X}{round(255 * gr):02X}{round(255 * b):02X}"
    return out


def log_ticks(values: Sequence[float]) -> tuple[list[float], list[str]]:
    """Tick positions and labels for a log axis over ``values``: 1-2-5 steps per decade, at least two inside
    the data's range (else the values themselves), every one labelled ("0.2", "5", "1,000")."""
    vals = sorted(v for v in values if v is not None and v > 0)
    if not vals:
        return [], []
    lo, hi = vals[0], vals[-1]
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [m * 10.0 ** e for e in range(e0, e1 + 1) for m in (1, 2, 5) if lo / 1.05 <= m * 10.0 ** e <= hi * 1.05]
    if len(ticks) < 2:
        ticks = sorted({float(f"{v:.2g}") for v in vals})
    return ticks, [_tick_text(t) for t in ticks]


def _tick_text(t: float) -> str:
    if t >= 1000:
        return f"{t:,.0f}"
    return f"{t:.3g}"


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _layout(fig: go.Figure, *, title: str, height: int = 440) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left", font=dict(size=17)),
        template="plotly_white", font=_FONT, height=height, margin=dict(l=60, r=30, t=70, b=60),
        hoverlabel=dict(font_size=13), legend=dict(title_text=""),
    )
    return fig


def _group_label(name: str, m: Metrics) -> str:
    return f"{name} (n={m.n}, unreliable)" if m.n < 30 else f"{name} (n={m.n})"


def accuracy_vs_sparsity(result: AuditResult, *, groups: Sequence[str] | None = None, show_ci: bool = True,
                         show_overall: bool = True) -> go.Figure:
    """Accuracy of every group (and overall) at each sparsity, the dense model first.

    Bands: each group's own 95% interval of its accuracy drop (not adjusted), read as accuracy
    (acc_dense − hi .. acc_dense − lo); the dense point has no band (the drop is measured from it).
    """
    groups = list(groups) if groups is not None else result.group_names
    colors = group_colors(result.group_names)
    cats = ["dense"] + [sparsity_label(lv.sparsity) for lv in result.levels]
    alpha = 0.15 if len(groups) <= 4 else 0.07   # many overlapping bands would hide the lines
    fig = go.Figure()
    for g in groups:
        dense = result.dense.groups[g]
        per_level = [lv.groups[g] for lv in result.levels]
        acc = [_pts(dense.accuracy)] + [_pts(m.accuracy) for m in per_level]
        unreliable = dense.n < 30
        color = UNRELIABLE_COLOR if unreliable else colors[g]
        # No band for an unreliable group: its interval is wide enough to hide the others.
        if show_ci and not unreliable and all(m.accuracy_drop_ci95 for m in per_level):
            lower = [_pts(dense.accuracy)] + [_pts(dense.accuracy - m.accuracy_drop_ci95[1]) for m in per_level]
            upper = [_pts(dense.accuracy)] + [_pts(dense.accuracy - m.accuracy_drop_ci95[0]) for m in per_level]
            fig.add_trace(go.Scatter(
                x=cats + cats[::-1], y=upper + lower[::-1], mode="lines", fill="toself", fillcolor=_rgba(color, alpha),
                line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=g, name=f"{g} 95% CI",
            ))
        hover = [f"<b>{g}</b> · dense<br>accuracy {acc[0]:.1f}%<br>n = {dense.n}"]
        for lv, m in zip(result.levels, per_level):
            lo, hi = m.accuracy_drop_ci95 or (float("nan"), float("nan"))
            hover.append(f"<b>{g}</b> · {sparsity_label(lv.sparsity)} sparsity<br>accuracy {_pts(m.accuracy):.1f}%"
                         f"<br>drop {_pts(m.accuracy_drop):+.1f} pts (95% CI {_pts(lo):.1f} to {_pts(hi):.1f})"
                         f"<br>n = {m.n}" + (" · unreliable" if m.unreliable else "")
                         + (" · significant" if m.significant else ""))
        fig.add_trace(go.Scatter(
            x=cats, y=acc, mode="lines+markers", name=_group_label(g, dense), legendgroup=g,
            line=dict(color=color, width=3, dash="dot" if unreliable else "solid"), marker=dict(size=8),
            hovertext=hover, hoverinfo="text",
        ))
    if show_overall:
        acc = [_pts(result.dense.overall.accuracy)] + [_pts(lv.overall.accuracy) for lv in result.levels]
        fig.add_trace(go.Scatter(
            x=cats, y=acc, mode="lines+markers", name="overall", line=dict(color=OVERALL_COLOR, width=2, dash="dash"),
            marker=dict(size=6, symbol="diamond"),
            hovertext=[f"<b>overall</b> · {c}<br>accuracy {a:.1f}%" for c, a in zip(cats, acc)], hoverinfo="text",
        ))
    fig.update_xaxes(title_text="sparsity (share of prunable weights removed)", type="category",
                     categoryorder="array", categoryarray=cats)
    fig.update_yaxes(title_text="accuracy (%)", ticksuffix="%")
    return _layout(fig, title="Accuracy of each group as the model is pruned (bands: 95% CI)")


def _level(result: AuditResult, sparsity: float | None) -> LevelResult:
    if not result.levels:
        raise ValueError("the result has no sparsity levels to draw")
    return result.levels[-1] if sparsity is None else result.level(sparsity)


def drop_by_group(result: AuditResult, sparsity: float | None = None) -> go.Figure:
    """Accuracy drop per group at one level (default: the highest), largest first, with 95% CI whiskers.

    Horizontal bars, so long and intersectional group names stay readable however many groups there
    are. The overall drop is a dashed reference line; groups under 30 samples are grey and hatched;
    groups whose drop differs significantly from the other groups' rows (exact test, Holm) are outlined and
    carry a ``*``.
    """
    lv = _level(result, sparsity)
    colors = group_colors(result.group_names)
    order = sorted(result.group_names, key=lambda g: -lv.groups[g].accuracy_drop)
    ms = [lv.groups[g] for g in order]
    drop = [_pts(m.accuracy_drop) for m in ms]
    ci = [m.accuracy_drop_ci95 or (m.accuracy_drop, m.accuracy_drop) for m in ms]
    fig = go.Figure(go.Bar(
        y=order, x=drop, orientation="h",
        marker=dict(
            color=[UNRELIABLE_COLOR if m.unreliable else colors[g] for g, m in zip(order, ms)],
            pattern=dict(shape=["/" if m.unreliable else "" for m in ms], fgcolor="#555555", solidity=0.3),
            line=dict(color=["#000000" if m.significant else "rgba(0,0,0,0)" for m in ms], width=2),
        ),
        error_x=dict(type="data", symmetric=False, array=[_pts(hi - m.accuracy_drop) for m, (lo, hi) in zip(ms, ci)],
                     arrayminus=[_pts(m.accuracy_drop - lo) for m, (lo, hi) in zip(ms, ci)],
                     color="#444444", thickness=1.5, width=5),
        hovertext=[f"<b>{g}</b> (n = {m.n})<br>drop {d:+.1f} pts (95% CI {_pts(lo):.1f} to {_pts(hi):.1f})"
                   f"<br>accuracy {_pts(result.dense.groups[g].accuracy):.1f}% → {_pts(m.accuracy):.1f}%"
                   + ("<br>differs from the other groups' drop beyond chance (Holm)" if m.significant else "")
                   + ("<br>fewer than 30 samples: unreliable" if m.unreliable else "")
                   for g, m, d, (lo, hi) in zip(order, ms, drop, ci)],
        hoverinfo="text", showlegend=False,
    ))
    overall = _pts(lv.overall.accuracy_drop)
    fig.add_vline(x=0, line=dict(color="#BBBBBB", width=1))
    fig.add_vline(x=overall, line=dict(color=OVERALL_COLOR, dash="dash", width=2))
    fig.add_annotation(text=f"overall {overall:+.1f} pts", x=overall, xref="x", y=1, yref="paper", yanchor="bottom",
                       showarrow=False, font=dict(size=13, color=OVERALL_COLOR))
    notes = ["bars: drop (dense − pruned); whiskers: each group's 95% CI (not adjusted)"]
    if any(m.significant for m in ms):
        notes.append("* outlined: differs from the other groups' drop (exact test, Holm-adjusted)")
    if any(m.unreliable for m in ms):
        notes.append("grey hatched: under 30 samples, unreliable")
    # Anchored right: in a narrow figure the notes run into the empty space under the group names.
    fig.add_annotation(text="<br>".join(notes), xref="paper", yref="paper", x=1, y=0, yshift=-58, showarrow=False,
                       xanchor="right", yanchor="top", align="right", font=dict(size=12, color="#555555"))
    # The value sits under each group's name, where whiskers cannot cover it.
    ticks = [f"<b>{g}</b><br>{d:+.1f} pts{' *' if m.significant else ''} (n={m.n})" for g, d, m in zip(order, drop, ms)]
    fig.update_yaxes(title_text="", type="category", tickmode="array", tickvals=order, ticktext=ticks,
                     autorange="reversed")
    fig.update_xaxes(title_text="accuracy drop (points)", zeroline=False)
    fig = _layout(fig, title=f"Who pays at {sparsity_label(lv.sparsity)} sparsity: accuracy drop per group",
                  height=150 + 48 * len(order) + 18 * len(notes))
    fig.update_layout(margin=dict(t=80, b=70 + 18 * len(notes)), bargap=0.3)
    return fig


def violation_vs_sparsity(result: AuditResult) -> go.Figure:
    """Fairness violation ξ at each level: accuracy (points, with its simultaneous 95% CI band) and loss (nats, right axis),
    and the accuracy gap of each model (points; the dense model's gap at 'dense')."""
    cats = [sparsity_label(lv.sparsity) for lv in result.levels]
    acc = [_pts(lv.fairness_violation["accuracy"]) for lv in result.levels]
    loss = [lv.fairness_violation["loss"] for lv in result.levels]
    fig = go.Figure()
    ci = [lv.fairness_violation_ci95.get("accuracy") for lv in result.levels]
    # results written before the interval was simultaneous (no interval_method) are not called simultaneous
    kind = "simultaneous 95% CI" if all(lv.interval_method for lv in result.levels) else "95% CI"
    if all(ci):
        fig.add_trace(go.Scatter(
            x=cats + cats[::-1], y=[_pts(c[1]) for c in ci] + [_pts(c[0]) for c in ci][::-1], mode="lines", fill="toself",
            fillcolor=_rgba("#0072B2", 0.15), line=dict(width=0), hoverinfo="skip", name=f"{kind} (accuracy)",
            showlegend=True,
        ))
    fig.add_trace(go.Scatter(
        x=cats, y=acc, mode="lines+markers", name="violation, accuracy (pts)", line=dict(color="#0072B2", width=3),
        marker=dict(size=8),
        hovertext=[f"{c}: accuracy violation {a:.1f} pts" + (f" ({kind} {_pts(v[0]):.1f} to {_pts(v[1]):.1f})" if v else "")
                   + (f"; p = {lv.fairness_violation_p_value['accuracy']:.2g} for equal drops (permutation test)"
                      if lv.fairness_violation_p_value else "")
                   for c, a, v, lv in zip(cats, acc, ci, result.levels)], hoverinfo="text",
    ))
    gap_cats = ["dense"] + cats
    gap = [_pts(result.dense.accuracy_gap)] + [_pts(lv.accuracy_gap) for lv in result.levels]
    fig.add_trace(go.Scatter(
        x=gap_cats, y=gap, mode="lines+markers", name="accuracy gap (pts)", line=dict(color="#009E73", width=2, dash="dot"),
        marker=dict(size=7, symbol="square"),
        hovertext=[f"{c}: best − worst group accuracy {g:.1f} pts" for c, g in zip(gap_cats, gap)], hoverinfo="text",
    ))
    fig.add_trace(go.Scatter(
        x=cats, y=loss, mode="lines+markers", name="violation, loss (nats, right axis)", yaxis="y2",
        line=dict(color="#D55E00", width=2, dash="dash"), marker=dict(size=7, symbol="diamond"),
        hovertext=[f"{c}: loss violation ξ {v:.3f} nats" for c, v in zip(cats, loss)], hoverinfo="text",
    ))
    fig.update_xaxes(title_text="sparsity (share of prunable weights removed)", type="category",
                     categoryorder="array", categoryarray=gap_cats)
    fig.update_layout(
        yaxis=dict(title_text="accuracy violation and gap (points)", rangemode="tozero"),
        yaxis2=dict(title_text="loss violation ξ (nats)", overlaying="y", side="right", rangemode="tozero",
                    showgrid=False),
    )
    fig = _layout(fig, title="Fairness violation: how unequally pruning hurts the groups", height=500)
    # Legend under the plot: four entries fit a narrow column there without covering the lines or the title.
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.25, x=0, xanchor="left"),
                      margin=dict(r=70, b=110))
    return fig


def group_sizes(sizes: Mapping[str, int], *, title: str = "Samples per group") -> go.Figure:
    """Horizontal bars of samples per group (largest first); groups under 30 samples grey and hatched."""
    names = sorted(sizes, key=lambda g: -sizes[g])
    colors = group_colors(list(sizes))
    small = [sizes[g] < 30 for g in names]
    fig = go.Figure(go.Bar(
        y=names, x=[sizes[g] for g in names], orientation="h",
        marker=dict(color=[UNRELIABLE_COLOR if s else colors[g] for g, s in zip(names, small)],
                    pattern=dict(shape=["/" if s else "" for s in small], fgcolor="#555555", solidity=0.3)),
        text=[f"{sizes[g]:,}" + (" (under 30: unreliable)" if s else "") for g, s in zip(names, small)],
        textposition="auto", hoverinfo="text",
        hovertext=[f"<b>{g}</b>: {sizes[g]:,} samples" for g in names],
    ))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title_text="samples")
    return _layout(fig, title=title, height=max(220, 60 + 34 * len(names)))


# ---- sections added by later capabilities (footprint, diagnostics, mitigation) ------------------------
# Each builder takes the section as written in the result JSON (plain dicts) and tolerates missing keys.

def _size_unit(nbytes: float) -> tuple[float, str]:
    return (1e6, "MB") if nbytes >= 1e6 else (1e3, "kB")


def footprint_vs_sparsity(result: AuditResult) -> go.Figure:
    """Stored size of the weights and, where measured, latency of one batch, of the dense model and each
    level (``size_bytes`` / ``latency_ms``): two panels side by side, so neither hides the other's labels.
    ValueError when the result has no sizes."""
    from plotly.subplots import make_subplots

    parts = [result.dense, *result.levels]
    cats = ["dense"] + [sparsity_label(lv.sparsity) for lv in result.levels]
    sizes = [p.size_bytes for p in parts]
    known = [s for s in sizes if s is not None]
    if not known:
        raise ValueError("the result has no size_bytes to draw; audit with the footprint measured")
    scale, unit = _size_unit(max(known))
    dense = result.dense.size_bytes
    text = []
    for s in sizes:
        if s is None:
            text.append("")
        elif dense and s != dense:
            text.append(f"{s / scale:.1f} {unit} ({s / dense - 1:+.0%})")
        else:
            text.append(f"{s / scale:.1f} {unit}")
    from .reading import NO_SPEEDUP, latencies, latency_reading

    timings = latencies(result)
    spreads = [timings.get(0.0)] + [timings.get(lv.sparsity) for lv in result.levels]
    latency = [p.latency_ms for p in parts]
    timed = any(v is not None for v in latency)
    fig = make_subplots(rows=1, cols=2 if timed else 1, horizontal_spacing=0.12,
                        subplot_titles=[f"stored size ({unit})"] + (["latency (ms per batch): median, 25th–75th "
                                                                      "percentile"] if timed else []))
    fig.add_trace(go.Bar(x=cats, y=[None if s is None else s / scale for s in sizes], name=f"stored size ({unit})",
                         marker_color="#56B4E9", text=text, textposition="outside", cliponaxis=False, showlegend=False,
                         hovertext=[f"{c}: {t}" for c, t in zip(cats, text)], hoverinfo="text"), row=1, col=1)
    fig.update_yaxes(range=[0, 1.2 * max(known) / scale], row=1, col=1)
    if timed:
        dense_t = timings.get(0.0)
        texts, hover, up, down = [], [], [], []
        for c, t in zip(cats, spreads):
            if t is None:
                texts.append("not measured"), hover.append(f"{c}: not measured"), up.append(0), down.append(0)
                continue
            up.append(t.iqr[1] - t.median_ms if t.iqr else 0)
            down.append(t.median_ms - t.iqr[0] if t.iqr else 0)
            reading = "" if c == "dense" or dense_t is None else latency_reading(dense_t, t)
            if c == "dense" or dense_t is None or dense_t.iqr is None or t.iqr is None:
                short = ""
            elif "no measurable difference" in reading:
                short = "<br>(≈ dense)"
            elif t.no_speedup:
                short = "<br>(load, not pruning)"     # a masked level does the dense model's work: no percentage
            else:
                short = f"<br>({t.median_ms / dense_t.median_ms - 1:+.0%})"
            texts.append(f"{t.median_ms:.3g} ms{short}")
            hover.append(f"<b>{c}</b>: {t.spread_text()}" + (f"<br>{reading}" if reading else "")
                         + (f"<br>{NO_SPEEDUP}" if t.no_speedup and NO_SPEEDUP not in reading else ""))
        fig.add_trace(go.Bar(x=cats, y=latency, name="latency (ms per batch)", marker_color="#E69F00", showlegend=False,
                             text=texts, textposition="outside", cliponaxis=False, constraintext="none",
                             error_y=dict(type="data", symmetric=False, array=up, arrayminus=down, visible=any(up + down),
                                          color="#444444", thickness=1.5, width=6),
                             hovertext=hover, hoverinfo="text"), row=1, col=2)
        top = max((t.iqr[1] if t.iqr else t.median_ms) for t in spreads if t is not None)
        fig.update_yaxes(range=[0, 1.25 * top], row=1, col=2)
        if any(t is not None and t.no_speedup for t in spreads):
            fig.add_annotation(text=f"unstructured / 2:4 levels: {NO_SPEEDUP}", xref="paper", yref="paper",
                               x=1.0, xanchor="right", y=-0.3, showarrow=False, font=dict(size=12, color="#555555"))
    fig.update_xaxes(title_text="sparsity", type="category", categoryorder="array", categoryarray=cats)
    fig.update_annotations(font_size=14)
    fig = _layout(fig, title="What pruning saves: stored size and latency", height=420)
    fig.update_layout(margin_b=90)
    return fig


#: the per-group diagnostics drawn, in order: (DIAG key, panel title, standard-error key)
DIAG_PANELS = (
    ("grad_norm_mean", "mean per-sample gradient norm", None),
    ("group_grad_norm", "‖g_a‖, gradient of the group's mean loss", None),
    ("hessian_max_eig", "λ_max(H_a), Hessian top eigenvalue", "hessian_max_eig_se"),
    ("hessian_trace", "Tr(H_a), Hessian trace", "hessian_trace_se"),
    ("margin_mean", "mean margin p_y − max p_k≠y", None),
    ("uncertainty_mean", "mean uncertainty Σ p_k(1 − p_k)", None),
    ("boundary_distance_mean", "mean input distance to the boundary", None),
)


def diagnostics_by_group(diag: Mapping[str, Mapping[str, float | None]], *, groups: Sequence[str] | None = None,
                         title: str = "Why some groups pay more: the dense model's per-group factors") -> go.Figure:
    """Small multiples, one panel per factor of Theorem 1 and Theorem 2 that was measured, one bar per
    group (whiskers: ± one standard error where the estimate has one).

    ``diag``: group -> DIAG (the ``diagnostics.dense`` section). ValueError when no factor was measured.
    """
    from plotly.subplots import make_subplots

    groups = list(groups) if groups is not None else list(diag)
    colors = group_colors(groups)
    panels = [p for p in DIAG_PANELS if any((diag.get(g) or {}).get(p[0]) is not None for g in groups)]
    if not panels:
        raise ValueError("the diagnostics hold no per-group figures to draw")
    cols = 3 if len(panels) > 4 else 2
    rows = -(-len(panels) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p[1] for p in panels], shared_yaxes=True,
                        horizontal_spacing=0.06, vertical_spacing=min(0.5 / rows, 0.9 / max(rows, 1)) if rows > 1 else 0.1)
    for i, (key, _, se_key) in enumerate(panels):
        r, c = divmod(i, cols)
        vals = [(diag.get(g) or {}).get(key) for g in groups]
        ses = [(diag.get(g) or {}).get(se_key) if se_key else None for g in groups]
        fig.add_trace(go.Bar(
            y=groups, x=vals, orientation="h", marker_color=[colors[g] for g in groups], showlegend=False,
            error_x=dict(type="data", array=[s or 0 for s in ses], visible=any(s for s in ses), color="#444444"),
            hovertext=[f"<b>{g}</b><br>{key} = {v:.4g}" + (f" ± {s:.2g}" if s else "") if v is not None
                       else f"<b>{g}</b><br>{key}: not measured" for g, v, s in zip(groups, vals, ses)],
            hoverinfo="text", name=key,
        ), row=r + 1, col=c + 1)
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_annotations(font_size=13)
    return _layout(fig, title=title, height=110 + rows * (70 + 30 * len(groups)))


_NO_REPAIR = "pruned, no repair"


def _mitigation_runs(section: Mapping) -> list[tuple[str, Mapping]]:
    """(label, OUTCOME) for the pruned model without repair and every method tried, the method first."""
    methods = dict(section.get("methods") or {})
    if not methods:
        if section.get("after") is not None:
            methods[section.get("method", "mitigated")] = section["after"]
        methods.update(section.get("baselines") or {})
    runs = [(_NO_REPAIR, section["before"])] if section.get("before") else []
    return runs + [(m, o) for m, o in methods.items() if o]


def _method_label(name: str, section: Mapping) -> str:
    return f"{name} (recommended)" if name == section.get("recommended") else name


def mitigation_by_group(section: Mapping) -> go.Figure:
    """Accuracy drop per group on the held-out rows: the pruned model without repair, then each method
    tried (the ``mitigation`` section); whiskers ± one standard deviation over seeds where there are several."""
    runs = _mitigation_runs(section)
    if not runs:
        raise ValueError("the mitigation section holds no outcomes to draw")
    groups = list(runs[0][1].get("groups") or {})
    fig = go.Figure()
    for i, (name, o) in enumerate(runs):
        ms = [(o.get("groups") or {}).get(g) or {} for g in groups]
        drops = [_pts(m["accuracy_drop"]) if m.get("accuracy_drop") is not None else None for m in ms]
        stds = [_pts(m.get("accuracy_drop_std") or 0) for m in ms]
        color = UNRELIABLE_COLOR if name == _NO_REPAIR else _PALETTE[(i - 1) % len(_PALETTE)]
        fig.add_trace(go.Bar(
            y=groups, x=drops, orientation="h", name=_method_label(name, section), marker_color=color,
            marker_line=dict(color="#000000" if name == section.get("recommended") else "rgba(0,0,0,0)", width=2),
            error_x=dict(type="data", array=stds, visible=any(stds), color="#444444"),
            hovertext=[f"<b>{g}</b> · {name}<br>drop {d:+.1f} pts" if d is not None else f"{g} · {name}: n/a"
                       for g, d in zip(groups, drops)], hoverinfo="text",
        ))
    fig.add_vline(x=0, line=dict(color="#BBBBBB", width=1))
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_xaxes(title_text="accuracy drop (points, dense − model)", automargin=True)
    fig = _layout(fig, title=f"Repair at {sparsity_label(section.get('sparsity', 0) or 0)} sparsity: accuracy drop "
                             "per group, before and after", height=190 + len(groups) * (26 * len(runs) + 30))
    # the legend above the bars: under them it covered the axis title ("dense − mode…")
    fig.update_layout(barmode="group", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
                      margin=dict(t=110, b=70))
    return fig


def mitigation_methods(section: Mapping) -> go.Figure:
    """Methods compared on the held-out rows: overall accuracy (x) against the accuracy fairness
    violation (y), one point per method (error bars ± one standard deviation over seeds). Lower right is better."""
    runs = _mitigation_runs(section)
    if not runs:
        raise ValueError("the mitigation section holds no outcomes to draw")
    fig = go.Figure()
    # the recommended method drawn last, so a method on the same spot does not hide it
    order = sorted(enumerate(runs), key=lambda item: item[1][0] == section.get("recommended"))
    for i, (name, o) in order:
        ov, fv = o.get("overall") or {}, o.get("fairness_violation") or {}
        if ov.get("accuracy") is None or fv.get("accuracy") is None:
            continue
        color = UNRELIABLE_COLOR if name == _NO_REPAIR else _PALETTE[(i - 1) % len(_PALETTE)]
        x, y = _pts(ov["accuracy"]), _pts(fv["accuracy"])
        fig.add_trace(go.Scatter(
            x=[x], y=[y], mode="markers", name=_method_label(name, section),   # names in the legend: points may coincide
            marker=dict(size=18 if name == section.get("recommended") else 13, color=color,
                        symbol="star" if name == section.get("recommended") else "circle",
                        line=dict(color="#000000", width=1)),
            error_x=dict(type="data", array=[_pts(ov.get("accuracy_std") or 0)], visible=bool(ov.get("accuracy_std"))),
            error_y=dict(type="data", array=[_pts(fv.get("accuracy_std") or 0)], visible=bool(fv.get("accuracy_std"))),
            hovertext=[f"<b>{name}</b><br>overall accuracy {x:.1f}%<br>violation {y:.1f} pts"], hoverinfo="text",
        ))
    # padded ranges: the best method sits at an edge (highest accuracy, lowest violation) and must not be clipped
    xs = [v for tr in fig.data for v in tr.x]
    ys = [v for tr in fig.data for v in tr.y]
    if xs:
        pad = max(0.5, 0.08 * (max(xs) - min(xs)))
        fig.update_xaxes(range=[min(xs) - pad, max(xs) + pad])
        fig.update_yaxes(range=[-0.06 * max(max(ys), 1), 1.1 * max(max(ys), 1)])
    fig.update_xaxes(title_text="overall accuracy on held-out rows (%)", ticksuffix="%")
    fig.update_yaxes(title_text="fairness violation, accuracy (points)")
    fig = _layout(fig, title="Methods compared: accuracy against violation (lower right is better)", height=440)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), margin=dict(b=110))
    return fig


def diagnostic_dense_vs_level(dense: Mapping[str, Mapping[str, float | None]],
                              level: Mapping[str, Mapping[str, float | None]] | None, key: str, *,
                              level_name: str = "pruned", title: str = "") -> go.Figure:
    """One diagnostic (``key`` of DIAG) per group: the dense model's bar beside the pruned level's; the axis says
    the figure in words (:data:`DIAG_PANELS`), not its field name."""
    groups = list(dense)
    words = next((p[1] for p in DIAG_PANELS if p[0] == key), key.replace("_", " "))
    fig = go.Figure()
    series = [("dense", dense, UNRELIABLE_COLOR)] + ([(level_name, level, _PALETTE[0])] if level else [])
    for name, diag, color in series:
        vals = [(diag.get(g) or {}).get(key) for g in groups]
        fig.add_trace(go.Bar(y=groups, x=vals, orientation="h", name=name, marker_color=color,
                             hovertext=[f"<b>{g}</b> · {name}<br>{words} = {v:.4g}" if v is not None
                                        else f"{g} · {name}: not measured" for g, v in zip(groups, vals)],
                             hoverinfo="text"))
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_xaxes(title_text=words)
    fig = _layout(fig, title=title or words, height=140 + len(groups) * 26 * max(len(series), 1) + 40)
    fig.update_layout(barmode="group", legend=dict(orientation="h", yanchor="top", y=-0.25, x=0), margin=dict(b=100))
    return fig


def group_scatter(points: Mapping[str, tuple[float | None, float | None]], *, x_title: str, y_title: str,
                  title: str = "") -> go.Figure:
    """One labelled point per group (``points``: group -> (x, y)); groups with a missing value are left out."""
    groups = [g for g, (x, y) in points.items() if x is not None and y is not None]
    colors = group_colors(list(points))
    fig = go.Figure()
    for g in groups:
        x, y = points[g]
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", text=[g], textposition="top center", name=g,
                                 marker=dict(size=13, color=colors[g], line=dict(color="#000000", width=1)),
                                 hovertext=[f"<b>{g}</b><br>{x_title}: {x:.4g}<br>{y_title}: {y:.4g}"],
                                 hoverinfo="text", showlegend=False, cliponaxis=False))
    # labels are drawn past the points: pad both axes so the outermost labels stay inside the plot
    for axis, vals in (("x", [points[g][0] for g in groups]), ("y", [points[g][1] for g in groups])):
        if vals:
            lo, hi = min(vals), max(vals)
            pad = (hi - lo) * 0.25 or abs(hi) * 0.25 or 1.0
            top = 1.6 if axis == "y" else 1.0          # room above the highest point for its label
            getattr(fig, f"update_{axis}axes")(range=[lo - pad, hi + top * pad])
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    fig = _layout(fig, title=title or f"{y_title} against {x_title}", height=380)
    fig.update_layout(margin=dict(l=70, r=50, t=70, b=60))
    return fig


def multipliers_over_time(section: Mapping) -> go.Figure:
    """The constrained method's Lagrange multipliers per group over epochs (the ``mitigation`` section's
    ``multipliers``: a list per epoch of {GROUP: λ}, or {GROUP: [λ per epoch]}). ValueError when empty."""
    mult = section.get("multipliers")
    if not mult:
        raise ValueError("the mitigation section holds no multipliers")
    if isinstance(mult, Mapping):
        series = {g: list(v) for g, v in mult.items()}
    else:
        series: dict[str, list] = {}
        for epoch in mult:
            if isinstance(epoch, Mapping):
                for g, v in epoch.items():
                    series.setdefault(g, []).append(v)
    if not series:
        raise ValueError("the mitigation section holds no multipliers per group")
    colors = group_colors(list(series))
    fig = go.Figure()
    for g, vals in series.items():
        fig.add_trace(go.Scatter(x=list(range(1, len(vals) + 1)), y=vals, mode="lines+markers", name=g,
                                 line=dict(color=colors[g])))
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="multiplier λ_a")
    return _layout(fig, title="Lagrange multipliers per group over epochs", height=380)


def search_frontier(search: Mapping) -> go.Figure:
    """The operating-point search (search.json): accuracy fairness violation (points) against sparsity,
    one line per pruning method, the budget's allowed region shaded, each method's recommended point a star."""
    budget = search.get("budget") or {}
    fig = go.Figure()
    hi_y = 0.0
    for i, (name, entry) in enumerate((search.get("methods") or {}).items()):
        pts = sorted(entry.get("frontier") or [], key=lambda p: p["sparsity"])
        color = _PALETTE[i % len(_PALETTE)]
        ys = [_pts(p["violation"]) for p in pts]
        hi_y = max([hi_y, *ys])
        fig.add_trace(go.Scatter(
            x=[_pts(p["sparsity"]) for p in pts], y=ys, mode="lines+markers", name=name, line=dict(color=color),
            marker=dict(symbol=["circle" if p["feasible"] else "x" for p in pts], size=9),
            hovertext=[f"<b>{name}</b> at {sparsity_label(p['sparsity'])}<br>violation {_pts(p['violation']):.1f} pts"
                       f"<br>overall accuracy {_pts(p['overall_accuracy']):.1f}%<br>"
                       f"{'within budget' if p['feasible'] else 'over budget'}" for p in pts], hoverinfo="text"))
        rec = entry.get("recommended")
        if rec:
            fig.add_trace(go.Scatter(x=[_pts(rec["sparsity"])], y=[_pts(rec["violation"])], mode="markers",
                                     name=f"{name}: recommended", marker=dict(symbol="star", size=20, color=color,
                                                                               line=dict(color="#000000", width=1.5)),
                                     hovertext=[f"<b>recommended for {name}</b>: {sparsity_label(rec['sparsity'])}"],
                                     hoverinfo="text"))
    mv = budget.get("max_violation")
    if mv is not None:
        fig.add_hrect(y0=0, y1=_pts(mv), fillcolor=_rgba("#009E73", 0.15), line_width=0,
                      annotation_text="within the violation budget", annotation_position="top left")
        hi_y = max(hi_y, _pts(mv))
    fig.update_xaxes(title_text="sparsity (%)", ticksuffix="%")
    fig.update_yaxes(title_text="fairness violation, accuracy (points)", range=[0, 1.1 * max(hi_y, 1)])
    fig = _layout(fig, title="Operating point: violation against sparsity per method", height=440)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), margin=dict(b=110))
    return fig


def model_variants(result: AuditResult | Mapping) -> list[dict]:
    """Every model an audit measured, on one footing: the dense model, each sparsity level and each
    compression variant (the ``compression`` section: quantization, N:M, combinations), as dicts with
    ``label``, ``kind`` ('dense', 'pruning', 'compression'), ``size_bytes``, ``latency_ms``, ``groups``
    (name -> accuracy), ``violation`` (accuracy fairness violation; None for dense), ``accuracy`` and
    ``latency_ms_iqr`` (the timing's [p25, p75] from the ``footprint`` section; None where not recorded)."""
    from .reading import recorded_iqr

    d = result.to_dict() if isinstance(result, AuditResult) else result
    method = (d.get("config") or {}).get("method", "pruning")
    fp = d.get("footprint") if isinstance(d.get("footprint"), Mapping) else {}

    def iqr(entry) -> list[float] | None:
        x = recorded_iqr(entry)
        return None if x is None else list(x)

    level_fp = {x.get("sparsity"): x for x in fp.get("levels") or [] if isinstance(x, Mapping)}
    variant_fp = {x.get("method"): x for x in fp.get("compression") or [] if isinstance(x, Mapping)}
    out = [{"label": "dense", "kind": "dense", "size_bytes": d["dense"].get("size_bytes"),
            "latency_ms": d["dense"].get("latency_ms"), "latency_ms_iqr": iqr(fp.get("dense")),
            "accuracy": d["dense"]["overall"]["accuracy"],
            "groups": {g: m["accuracy"] for g, m in d["dense"]["groups"].items()}, "violation": None}]
    for lv in d.get("levels", []):
        out.append({"label": f"{method} {sparsity_label(lv['sparsity'])}", "kind": "pruning",
                    "size_bytes": lv.get("size_bytes"), "latency_ms": lv.get("latency_ms"),
                    "latency_ms_iqr": iqr(level_fp.get(lv["sparsity"])), "accuracy": lv["overall"]["accuracy"],
                    "groups": {g: m["accuracy"] for g, m in lv["groups"].items()},
                    "violation": (lv.get("fairness_violation") or {}).get("accuracy")})
    for v in d.get("compression") or []:
        viol = v.get("fairness_violation")
        out.append({"label": v["method"] if not v.get("setting") else f"{v['method']} ({v['setting']})",
                    "kind": "compression", "size_bytes": v.get("size_bytes"), "latency_ms": v.get("latency_ms"),
                    "latency_ms_iqr": iqr(variant_fp.get(v["method"])), "accuracy": v["overall"]["accuracy"],
                    "groups": {g: m["accuracy"] for g, m in v["groups"].items()},
                    "violation": viol.get("accuracy") if isinstance(viol, Mapping) else viol})
    return out


def _latency_hover(r: Mapping) -> str:
    """', 12.3 ms (11.8–13.0)' for a timed model's hover, '' when it was not timed."""
    if r["latency_ms"] is None:
        return ""
    q = r.get("latency_ms_iqr")
    return f", {r['latency_ms']:.3g} ms" + (f" ({q[0]:.3g}–{q[1]:.3g}, 25th–75th pct)" if q else "")


def size_axis(result: AuditResult | Mapping) -> go.Figure:
    """Per-group accuracy of every model measured (dense, each sparsity level, each quantized or N:M
    variant) against its stored size in bytes and, where timed, its latency: one marker per group and
    model, the marker's colour the model's accuracy fairness violation. The smallest or fastest model
    whose violation is within budget sits furthest left among the light markers.
    ValueError when no model has a measured size."""
    from plotly.subplots import make_subplots

    rows = [r for r in model_variants(result) if r["size_bytes"] is not None]
    if not rows:
        raise ValueError("no model has a measured size_bytes; audit with the footprint measured")
    timed = [r for r in rows if r["latency_ms"] is not None]
    groups = list(rows[0]["groups"])
    symbols = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon", "pentagon",
               "triangle-down", "hourglass", "bowtie")
    fig = make_subplots(rows=1, cols=2 if timed else 1, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=["against stored size"] + (["against latency"] if timed else []))
    viols = [_pts(r["violation"]) for r in rows if r["violation"] is not None]
    cmax = max(viols + [1e-9])
    for col, (key, sub) in enumerate((("size_bytes", rows), ("latency_ms", timed)), start=1):
        if not sub:
            continue
        for i, g in enumerate(groups):
            xs, ys, cs, hover = [], [], [], []
            for r in sub:
                if g not in r["groups"]:
                    continue
                xs.append(r[key] / 1e6 if key == "size_bytes" else r[key])
                ys.append(_pts(r["groups"][g]))
                cs.append(0.0 if r["violation"] is None else _pts(r["violation"]))
                where = f"{r['size_bytes'] / 1e6:.3g} MB" + _latency_hover(r)
                viol = "—" if r["violation"] is None else f"{_pts(r['violation']):.1f} points"
                hover.append(f"<b>{r['label']}</b><br>{g}: {_pts(r['groups'][g]):.1f}% accuracy<br>{where}"
                             f"<br>fairness violation {viol}")
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="markers", name=g, legendgroup=g, showlegend=col == 1,
                marker=dict(symbol=symbols[i % len(symbols)], size=12, color=cs, cmin=0, cmax=cmax,
                            colorscale="YlOrRd", line=dict(width=1, color="#333"),
                            showscale=col == 1 and i == 0,
                            colorbar=dict(title=dict(text="violation<br>(points)"), x=1.02)),
                hovertext=hover, hoverinfo="text"), row=1, col=col)
        tickvals, ticktext = log_ticks([r[key] / 1e6 if key == "size_bytes" else r[key] for r in sub])
        fig.update_xaxes(type="log", title_text="stored size (MB, log scale)" if key == "size_bytes" else
                         "latency (ms per batch, median, log scale)", tickvals=tickvals, ticktext=ticktext,
                         row=1, col=col)
    fig.update_yaxes(title_text="group accuracy (%)", row=1, col=1)
    fig.update_layout(legend=dict(orientation="h", y=-0.22, x=0))
    return _layout(fig, title="Every model on one size axis: per-group accuracy, violation as colour", height=480)


def drop_by_variant(result: AuditResult | Mapping) -> go.Figure:
    """Accuracy drop of every group under each compression variant (the ``compression`` section), with the
    group's own 95% interval of the drop as whiskers: who pays for quantization or 2:4 sparsity.
    ValueError when the result has no compression variants."""
    d = result.to_dict() if isinstance(result, AuditResult) else result
    entries = [e for e in (d.get("compression") or []) if isinstance(e, Mapping)]
    if not entries:
        raise ValueError("the result has no compression variants to draw; audit with --compress")
    groups = list(d["dense"]["groups"])
    colors = group_colors(groups)
    names = [e["method"] for e in entries]
    fig = go.Figure()
    for g in groups:
        drops, lo, hi, hover = [], [], [], []
        for e in entries:
            m = e["groups"].get(g) or {}
            drop = m.get("accuracy_drop")
            ci = m.get("accuracy_drop_ci95") or (None, None)
            drops.append(None if drop is None else _pts(drop))
            lo.append(0 if drop is None or ci[0] is None else _pts(drop - ci[0]))
            hi.append(0 if drop is None or ci[1] is None else _pts(ci[1] - drop))
            hover.append(f"<b>{e['method']}</b><br>{g}: drop {_pts(drop):+.1f} points"
                         + (f" (CI {_pts(ci[0]):+.1f} to {_pts(ci[1]):+.1f})" if ci[0] is not None else "")
                         if drop is not None else f"{e['method']}: {g} not measured")
        fig.add_trace(go.Bar(x=names, y=drops, name=g, marker_color=colors[g],
                             error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo, thickness=1.2),
                             hovertext=hover, hoverinfo="text"))
    fig.add_hline(y=0, line_color="#999", line_width=1)
    fig.update_layout(barmode="group", xaxis_title="compression variant", yaxis_title="accuracy drop (points)")
    fig.update_xaxes(type="category")
    return _layout(fig, title="Who pays for each compression variant: accuracy drop per group", height=440)
