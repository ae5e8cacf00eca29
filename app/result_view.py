"""How an audit result is shown: the reading, the headline figures, the charts, every number in a table.

Used by the Results page (one run) and the Runs page (two runs side by side). Charts come from
fairprune.present.plots, sentences from fairprune.present.reading; this module only arranges them and formats tables.
"""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from app import widgets

from fairprune.present import plots
from fairprune.present.reading import (HEADLINE_NOTE, NO_SPEEDUP, REFERENCE_INT8, headline, latencies, meaning,
                                       placed_warnings, variant_latencies, versus_dense, worst_group)
from fairprune.present.report import render_html
from fairprune.core.result import AuditResult, LevelResult

DEF = plots.DEFINITIONS
CHART_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def pick_level(result: AuditResult, key: str) -> LevelResult:
    """Radio over the measured levels (default: the highest)."""
    options = [lv.sparsity for lv in result.levels]
    s = st.radio("Sparsity level to read", options, index=len(options) - 1, horizontal=True, key=f"{key}-level",
                 format_func=plots.sparsity_label, help=DEF["sparsity"])
    return result.level(s)


def show_meaning(result: AuditResult) -> None:
    """The report's "What this means" paragraph (fairprune.present.reading.meaning: one source for both)."""
    text = meaning(result)
    if not text:
        return
    st.markdown("#### What this means")
    st.markdown(f"<div class='fp-meaning' style='font-size:1.05rem;line-height:1.6'>{html.escape(text)}</div>",
                unsafe_allow_html=True)


def show_warnings(items: list[str], *, key: str) -> None:
    """Sanity warnings beside the figures they concern."""
    for i, w in enumerate(items):
        st.warning(widgets.message(w), icon=":material/warning:")


def show_headline(result: AuditResult, lv: LevelResult) -> None:
    text = headline(result, lv)
    with st.container(border=True):
        st.markdown(f"<div class='fp-headline' style='font-size:1.3rem;line-height:1.5;font-weight:500'>"
                    f"{html.escape(text)}</div>", unsafe_allow_html=True)
        st.caption(HEADLINE_NOTE)


def show_figures(result: AuditResult, lv: LevelResult) -> None:
    """The headline numbers at one level, each with its definition as help text."""
    g = worst_group(lv)
    m = lv.groups[g]
    c = st.columns(5)
    c[0].metric("Overall accuracy", f"{_pts(lv.overall.accuracy)}%", f"{-100 * lv.overall.accuracy_drop:+.1f} pts",
                help=f"{DEF['accuracy']} Change from the dense model ({_pts(result.dense.overall.accuracy)}%) "
                     f"in points.")
    c[1].metric(f"Worst group: {g}", f"{_pts(m.accuracy)}%", f"{-100 * m.accuracy_drop:+.1f} pts",
                help=f"{g}: the group with the largest accuracy drop at this level (n = {m.n}). "
                     f"{DEF['accuracy_drop']}")
    lo, hi = lv.fairness_violation_ci95.get("accuracy", (float("nan"), float("nan")))
    c[2].metric("Violation, accuracy", f"{_pts(lv.fairness_violation['accuracy'])} pts",
                help=_violation_help(lv, lo, hi), delta=None)
    c[3].metric("Violation ξ, loss", f"{lv.fairness_violation['loss']:.3f}",
                help=f"{DEF['fairness_violation_loss']} {DEF['excessive_loss']}")
    c[4].metric("Accuracy gap", f"{_pts(lv.accuracy_gap)} pts",
                f"{100 * (lv.accuracy_gap - result.dense.accuracy_gap):+.1f} pts vs dense", delta_color="inverse",
                help=DEF["accuracy_gap"])


def _violation_help(lv: LevelResult, lo: float, hi: float) -> str:
    """The violation card's help: its interval and p-value, worded for what the result records."""
    p = (lv.fairness_violation_p_value or {}).get("accuracy")
    if p is None:  # written before the interval was simultaneous: no claim about how it was computed
        return f"{DEF['fairness_violation_accuracy']} 95% CI {_pts(lo)} to {_pts(hi)} points."
    return (f"{DEF['fairness_violation_accuracy']} 95% CI {_pts(lo)} to {_pts(hi)} points. "
            f"{DEF['fairness_violation_ci95']} Every group paying the same: p = {p:.2g}. "
            f"{DEF['fairness_violation_p_value']}")


def chart(fig, *, key: str, heading: str, help: str) -> None:
    """A figure from fairprune.present.plots under a heading that carries its definition (the figure's own title is
    dropped: the heading replaces it and long titles do not fit narrow columns)."""
    st.markdown(f"**{heading}**", help=help)
    legend_on_top = fig.layout.legend.y is not None and fig.layout.legend.y >= 1
    fig.update_layout(title_text="", margin_t=70 if legend_on_top else 30)
    st.plotly_chart(fig, key=key, theme=None, config=CHART_CONFIG)


ACC_HELP = (DEF["accuracy"] + " Each line is one group; the dashed line is the whole test set. Bands: 95% interval "
            "of the group's accuracy at each level, from its own interval of the drop (dense accuracy minus the "
            "upper and lower bounds; not adjusted for the number of groups). Dotted grey lines: groups with fewer than 30 samples (no band: too noisy).")
DROP_HELP = (DEF["accuracy_drop"] + " Whiskers: " + DEF["accuracy_drop_ci95"] + " Dashed line: the drop of the whole "
             "test set. Outlined bars with *: " + DEF["significant"] + " Grey hatched bars: " + DEF["unreliable"])
VIOL_HELP = (DEF["fairness_violation"] + " " + DEF["accuracy_gap"]
             + " Band: " + DEF["fairness_violation_ci95"])


def charts(result: AuditResult, lv: LevelResult, key: str) -> None:
    chart(plots.accuracy_vs_sparsity(result), key=f"{key}-acc", heading="Accuracy of each group as the model is pruned",
          help=ACC_HELP)
    st.caption("Each line is one group, the dashed line the whole test set; bands are 95% intervals.")
    cols = st.columns(2, gap="large")
    with cols[0]:
        chart(plots.drop_by_group(result, lv.sparsity), key=f"{key}-drop",
              heading=f"Who pays at {plots.sparsity_label(lv.sparsity)} sparsity: accuracy drop per group",
              help=DROP_HELP)
        small = [g for g, m in lv.groups.items() if m.unreliable]
        if small:
            st.caption(f"Unreliable (fewer than 30 samples): {', '.join(small)}.")
        for w in placed_warnings(result).at(lv.sparsity):
            st.caption(f":material/warning: {widgets.message(w)}")
    with cols[1]:
        chart(plots.violation_vs_sparsity(result), key=f"{key}-viol",
              heading="Fairness violation: how unequally pruning hurts the groups", help=VIOL_HELP)
    if result.dense.size_bytes is not None:
        chart(plots.footprint_vs_sparsity(result), key=f"{key}-footprint",
              heading="What pruning buys: size as shipped and latency",
              help="size: bytes of the weights serialised as they would ship (unstructured levels in CSR where "
                   "smaller, structured levels physically compacted). latency: median of repeated forward passes "
                   "of one batch after warm-up; the whisker spans the 25th to 75th percentile, and a level differs "
                   f"from dense only where the whiskers do not overlap. Unstructured and 2:4 levels: {NO_SPEEDUP} "
                   "(they run at dense speed in dense kernels); structured levels are timed on the compacted "
                   "model. Read it beside the fairness violation above.")
        t = latency_table(result)
        if t is not None:
            st.table(t.set_index("model"))
            st.caption("Latency per batch: the median ms of one forward pass, with the 25th to 75th percentile and the "
                       "number of timed runs in brackets. 'vs dense' states a difference only where the two spreads "
                       f"do not overlap. Unstructured and 2:4 levels: {NO_SPEEDUP}.")
        chart(plots.size_axis(result), key=f"{key}-sizeaxis",
              heading="Every model on one size axis: who pays for each byte saved", help=SIZE_AXIS_HELP)


def latency_table(result: AuditResult) -> pd.DataFrame | None:
    """Each timed model's latency with its spread and how it compares with dense; None when none was timed."""
    t = latencies(result)
    timed = [(plots.sparsity_label(s), x) for s, x in t.items()] + list(variant_latencies(result).items())
    if not timed:
        return None
    return pd.DataFrame([{"model": name, "latency per batch": x.spread_text(),
                          "vs dense": versus_dense(t.get(0.0), x, reference=name == "dense")} for name, x in timed])


SIZE_AXIS_HELP = ("One marker per group and model (dense, each sparsity level, each quantized or N:M variant): the "
                  "group's accuracy against the model's stored size (and, where timed, latency), both on log scales. "
                  "Colour: the model's accuracy fairness violation — " + DEF["fairness_violation_accuracy"]
                  + " Pick the leftmost model whose markers are light enough.")

NOT_FOR_DENSE = "— on the dense model's rows: it is the reference every drop is measured from."

GROUP_COLUMNS = {
    "sparsity": st.column_config.TextColumn("sparsity", help=DEF["sparsity"] + " 'dense': the original model."),
    "group": st.column_config.TextColumn("group", help="'(overall)' is the whole test set.", width="medium"),
    "n": st.column_config.NumberColumn("n", help=DEF["n"]),
    "accuracy %": st.column_config.NumberColumn("accuracy %", help=DEF["accuracy"], format="%.2f"),
    "drop (pts)": st.column_config.NumberColumn("drop (pts)", help=DEF["accuracy_drop"], format="%+.2f"),
    "95% CI of drop": st.column_config.TextColumn("95% CI of drop", help=DEF["accuracy_drop_ci95"] + " "
                                                  + NOT_FOR_DENSE),
    "loss": st.column_config.NumberColumn("loss", help=DEF["loss"], format="%.4f"),
    "excessive loss R(a)": st.column_config.NumberColumn("excessive loss R(a)", help=DEF["excessive_loss"],
                                                         format="%+.4f"),
    "significant": st.column_config.TextColumn("significant", help=DEF["significant"] + " " + NOT_FOR_DENSE),
    "p (Holm)": st.column_config.TextColumn("p (Holm)", help=DEF["p_value"] + " " + NOT_FOR_DENSE),
    "unreliable": st.column_config.CheckboxColumn("unreliable", help=DEF["unreliable"]),
    "tpr": st.column_config.TextColumn("TPR", help="True positive rate of the group (binary tasks). — where the "
                                       "group has no positive labels: the rate is undefined."),
    "fpr": st.column_config.TextColumn("FPR", help="False positive rate of the group (binary tasks). — where the "
                                       "group has no negative labels: the rate is undefined."),
    "selection_rate": st.column_config.NumberColumn("selection rate", help="Share of the group predicted "
                                                    "positive (binary tasks).", format="%.3f"),
    "achieved sparsity": st.column_config.NumberColumn("achieved sparsity", help=DEF["achieved_sparsity"],
                                                       format="%.4f"),
}


def _fmt(x, fmt: str, missing: str = "—") -> str:
    return missing if x is None or (isinstance(x, float) and x != x) else format(x, fmt)


def group_table(result: AuditResult) -> pd.DataFrame:
    """Every group at every model in display units: accuracy in %, drops and their CI in points; the dense
    model's drop and R(a) are 0 by definition, its CI, test and p "—" (it is the reference)."""
    rows = []
    for label, part, is_dense in [("dense", result.dense, True),
                                  *((plots.sparsity_label(lv.sparsity), lv, False) for lv in result.levels)]:
        for g, m in {"(overall)": part.overall, **part.groups}.items():
            ci = m.accuracy_drop_ci95
            row = {"sparsity": label, "group": g, "n": m.n, "accuracy %": round(100 * m.accuracy, 2),
                   "drop (pts)": 0.0 if is_dense else (None if m.accuracy_drop is None
                                                       else round(100 * m.accuracy_drop, 2)),
                   "95% CI of drop": "—" if is_dense or not ci else f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}",
                   "loss": round(m.loss, 4),
                   "excessive loss R(a)": 0.0 if is_dense else (None if m.excessive_loss is None
                                                                else round(m.excessive_loss, 4)),
                   "significant": "—" if is_dense or m.significant is None else ("yes" if m.significant else "no"),
                   "p (Holm)": "—" if is_dense else _fmt(m.p_value, ".3g"),
                   "unreliable": bool(m.unreliable or (m.n < 30 and g != "(overall)")),
                   "achieved sparsity": part.achieved_sparsity if not is_dense else 0.0}
            if result.dense.overall.selection_rate is not None:
                row.update(tpr=_fmt(m.tpr, ".3f"), fpr=_fmt(m.fpr, ".3f"), selection_rate=m.selection_rate)
            rows.append(row)
    return pd.DataFrame(rows)


LEVEL_COLUMNS = {
    "sparsity": GROUP_COLUMNS["sparsity"],
    "95% CI (simultaneous)": st.column_config.TextColumn("95% CI (simultaneous)", help=DEF["fairness_violation_ci95"]
                                                         + " " + NOT_FOR_DENSE),
    "violation acc (pts)": st.column_config.NumberColumn("violation acc (pts)",
                                                         help=DEF["fairness_violation_accuracy"], format="%.2f"),
    "p (equal drops)": st.column_config.TextColumn("p (equal drops)", help=DEF["fairness_violation_p_value"] + " "
                                                   + NOT_FOR_DENSE),
    "violation loss ξ": st.column_config.NumberColumn("violation loss ξ", help=DEF["fairness_violation_loss"],
                                                      format="%.4f"),
    "accuracy gap (pts)": st.column_config.NumberColumn("accuracy gap (pts)", help=DEF["accuracy_gap"],
                                                        format="%.2f"),
    "‖θ̄ − θ*‖": st.column_config.NumberColumn("‖θ̄ − θ*‖", help=DEF["weight_distance"], format="%.3f"),
    "achieved sparsity": GROUP_COLUMNS["achieved sparsity"],
}


def level_table(result: AuditResult) -> pd.DataFrame:
    """One row per model: the dense model (violations 0 by definition, interval and p "—"), then each level."""
    rows = [{"sparsity": "dense", "violation acc (pts)": 0.0, "95% CI (simultaneous)": "—", "p (equal drops)": "—",
             "violation loss ξ": 0.0, "accuracy gap (pts)": round(100 * result.dense.accuracy_gap, 2),
             "‖θ̄ − θ*‖": 0.0, "achieved sparsity": 0.0}]
    for lv in result.levels:
        ci = lv.fairness_violation_ci95.get("accuracy")
        rows.append({"sparsity": plots.sparsity_label(lv.sparsity),
                     "violation acc (pts)": round(100 * lv.fairness_violation["accuracy"], 2),
                     "95% CI (simultaneous)": "—" if not ci else f"{100 * ci[0]:.1f} to {100 * ci[1]:.1f}",
                     "p (equal drops)": _fmt((lv.fairness_violation_p_value or {}).get("accuracy"), ".3g"),
                     "violation loss ξ": round(lv.fairness_violation["loss"], 4),
                     "accuracy gap (pts)": round(100 * lv.accuracy_gap, 2),
                     "‖θ̄ − θ*‖": round(lv.weight_distance, 3), "achieved sparsity": round(lv.achieved_sparsity, 4)})
    return pd.DataFrame(rows)


def tables(result: AuditResult, key: str) -> None:
    st.markdown("#### Every figure", help="Click a column header to sort. Hover a header for its definition; "
                "'—' marks a figure that does not apply (the header says why).")
    placed = placed_warnings(result)
    show_warnings([w for g in result.group_names for w in placed.groups.get(g, [])], key=f"{key}-groups")
    t = group_table(result)
    st.dataframe(t, column_config=GROUP_COLUMNS, hide_index=True, key=f"{key}-groups", width="stretch",
                 height=_height(len(t)))
    st.markdown("##### Per level")
    t = level_table(result)
    st.dataframe(t, column_config=LEVEL_COLUMNS, hide_index=True, key=f"{key}-levels", width="stretch",
                 height=_height(len(t)))


def _height(rows: int, cap: int = 30) -> int:
    """Pixels that show every row up to ``cap`` rows (then the table scrolls)."""
    return 38 + 35 * min(rows, cap)


def provenance(result: AuditResult) -> None:
    c, p = result.config, result.provenance
    st.markdown(
        f"- **Model:** {result.model.name} — {result.model.parameters:,} parameters, "
        f"{result.model.prunable_parameters:,} prunable\n"
        f"- **Data:** {result.data.name} — {result.data.n:,} test samples; label `{p.label}`; "
        f"{len(result.group_names)} groups from the column{'s' * (len(p.group_columns) > 1)} "
        f"{' & '.join(p.group_columns)}: " + ", ".join(f"{g} ({n:,})" for g, n in result.data.groups.items()) + "\n"
        f"- **Pruning:** {c.method} at {', '.join(plots.sparsity_label(s) for s in c.sparsities)}; "
        f"fine-tuning epochs {c.finetune_epochs}; seed {c.seed}; device {c.device}\n"
        f"- **Versions:** fairprune {p.fairprune_version}, torch {p.torch_version}; model sha256 "
        f"`{p.model_sha256[:12]}…`, data sha256 `{p.data_sha256[:12]}…`"
    )
    steps = list(getattr(p, "preprocessing", None) or ())
    if steps:
        st.markdown("**From file to model input** (the data's preprocessing, in order)")
        st.markdown("\n".join(f"{i}. {widgets.message(step)}" for i, step in enumerate(steps, 1)))


COMPRESSION_HELP = (
    "Each variant (quantization, 2:4 sparsity, or steps joined by +) is applied to a copy of the dense model and "
    "measured on the same rows exactly as a pruning level: " + DEF["accuracy_drop"] + " " + DEF["fairness_violation"]
    + " quantized: the share of the model's parameters (by count) actually quantized. size: bytes of what the "
    "variant stores (int8 values and their scales; 2:4 weights as kept values plus positions).")


def compression_table(result: AuditResult) -> pd.DataFrame:
    """One row per compression variant: the figures a level has, plus size, quantized share and how it ran."""
    dense = result.dense.size_bytes
    timed, dense_t = variant_latencies(result), latencies(result)
    rows = []
    for v in result.compression:
        lv = v.level
        g = worst_group(lv)
        lo, hi = lv.fairness_violation_ci95.get("accuracy", (None, None))
        cal = v.details.get("calibration") or {}
        rows.append({
            "variant": v.method, "setting": v.setting,
            "size (kB)": _fmt(None if v.size_bytes is None else v.size_bytes / 1e3, ",.1f"),
            "size vs dense": _fmt(None if not (dense and v.size_bytes) else v.size_bytes / dense, ".2f") + (
                "x" if dense and v.size_bytes else ""),
            "latency per batch": timed[v.method].spread_text() if v.method in timed else "— (not timed)",
            "vs dense": versus_dense(dense_t.get(0.0), timed[v.method]) if v.method in timed else "—",
            "quantized": v.quantized_fraction,
            "accuracy %": 100 * lv.overall.accuracy, "drop (pts)": 100 * lv.overall.accuracy_drop,
            "worst group": g, "its drop (pts)": 100 * lv.groups[g].accuracy_drop,
            "violation acc (pts)": 100 * lv.fairness_violation["accuracy"],
            "95% CI (simultaneous)": "—" if lo is None else f"{100 * lo:.1f} to {100 * hi:.1f}",
            "violation loss ξ": lv.fairness_violation["loss"],
            "calibration": ", ".join(f"{k} {n}" for k, n in (cal.get("groups") or {}).items()) or "—",
            "kernel": v.details.get("kernel") or "—",
        })
    return pd.DataFrame(rows)


COMPRESSION_COLUMNS = {
    "size (kB)": st.column_config.TextColumn("size (kB)", help="Bytes of what the variant stores, in kB; — where "
                                             "the size was not measured (footprint off)."),
    "size vs dense": st.column_config.TextColumn("size vs dense", help="Stored size / the dense model's; — where "
                                                 "either was not measured."),
    "quantized": st.column_config.NumberColumn("quantized", help="Share of the model's parameters (by count) "
                                               "actually quantized.", format="%.2f"),
    "variant": st.column_config.TextColumn("variant", help="The compression steps, applied left to right to a copy "
                                           "of the dense model (options after a colon)."),
    "setting": st.column_config.TextColumn("setting", help="What the variant stores and computes with (W: weights, "
                                           "A: activations)."),
    "latency per batch": st.column_config.TextColumn("latency per batch", help="Median time of one batch "
                                                     "through the variant, where measured (audits from the "
                                                     "dashboard time them), with the 25th to 75th percentile and "
                                                     "the number of timed runs in brackets."),
    "vs dense": st.column_config.TextColumn("vs dense", help="A difference from the dense model only where the two "
                                            "spreads do not overlap. 2:4 variants without sparse kernels: "
                                            f"{NO_SPEEDUP}. int8 after PT2E: {REFERENCE_INT8}."),
    "worst group": st.column_config.TextColumn("worst group", help="The group with the largest accuracy drop under "
                                               "this variant."),
    "kernel": st.column_config.TextColumn("kernel", help="The kernels the variant ran with here (e.g. torch's "
                                          "reference int8 kernels after PT2E), which sets its latency."),
    "accuracy %": GROUP_COLUMNS["accuracy %"],
    "drop (pts)": GROUP_COLUMNS["drop (pts)"],
    "its drop (pts)": st.column_config.NumberColumn("its drop (pts)", help=DEF["accuracy_drop"], format="%+.2f"),
    "violation acc (pts)": LEVEL_COLUMNS["violation acc (pts)"],
    "95% CI (simultaneous)": LEVEL_COLUMNS["95% CI (simultaneous)"],
    "violation loss ξ": LEVEL_COLUMNS["violation loss ξ"],
    "calibration": st.column_config.TextColumn("calibration", help="int8_static: calibration rows per group (a set "
                                               "with few rows of a group is itself a cause worth seeing)."),
}


def compression_section(result: AuditResult, key: str) -> None:
    """The compression variants: who pays for each, and every figure."""
    if not result.compression:
        return
    st.subheader("Beyond pruning: quantization and 2:4 sparsity", help=COMPRESSION_HELP)
    placed = placed_warnings(result)
    show_warnings(list(dict.fromkeys(w for v in result.compression for w in placed.at(v.method))),
                  key=f"{key}-variant-warnings")
    chart(plots.drop_by_variant(result), key=f"{key}-variants",
          heading="Who pays for each compression variant", help=COMPRESSION_HELP + " Whiskers: "
          + DEF["accuracy_drop_ci95"])
    t = compression_table(result)
    st.dataframe(t, column_config=COMPRESSION_COLUMNS, hide_index=True, key=f"{key}-compression", width="stretch",
                 height=_height(len(t)))
    notes = sorted({v.details.get("diagnostics_note") for v in result.compression} - {None})
    kernels = sorted({(v.details.get("nm_2_4") or {}).get("sparse_kernel_note") for v in result.compression} - {None})
    for note in notes + kernels:
        st.caption(note)


def render_result(result: AuditResult, *, key: str, run_id: str | None = None) -> None:
    """The whole reading of one result."""
    if not result.levels and not result.compression:
        st.warning("This result has no sparsity levels and no compression variants.")
        return
    show_meaning(result)
    placed = placed_warnings(result)
    show_warnings(placed.general, key=f"{key}-general")
    if result.levels:
        lv = pick_level(result, key)
        show_headline(result, lv)
        show_warnings(placed.at(lv.sparsity), key=f"{key}-level")
    else:
        show_headline(result, None)
    if result.levels:
        show_figures(result, lv)
        charts(result, lv, key)
    elif result.dense.size_bytes is not None:
        chart(plots.size_axis(result), key=f"{key}-sizeaxis",
              heading="Every model on one size axis: who pays for each byte saved", help=SIZE_AXIS_HELP)
    compression_section(result, key)
    if result.levels:
        tables(result, key)
    with st.expander("What was audited"):
        provenance(result)
    st.download_button("Download the result (JSON)", data=result.to_json(), mime="application/json",
                       file_name=f"fairprune-{run_id or 'result'}.json", key=f"{key}-download", icon=":material/download:",
                       help="The full result in fairprune's schema (fairprune.audit/1), every figure on this page; "
                            "keep it to make the report again later or compare it with another audit.")
    redact = st.checkbox("Leave out per-sample content (for a report that leaves the team)", key=f"{key}-redact",
                         help="Row indices of flipped and at-risk samples, rows and images are left out of the page "
                              "and its embedded JSON; every aggregate is kept.")
    # data as a callable: the report (plotly's JavaScript inlined, ~5 MB) is rendered only when clicked
    st.download_button("Download report (HTML)", data=lambda: render_html(result, redact_samples=redact),
                       mime="text/html", file_name=f"fairprune-report-{run_id or 'result'}.html", key=f"{key}-report",
                       on_click="ignore", icon=":material/description:",
                       help="One self-contained HTML file for stakeholders: the reading first, the charts (interactive, "
                            "works offline), every figure, the definitions, the inputs' SHA-256 and the JSON. "
                            "Prints to PDF.")


def render_compact(result: AuditResult, *, key: str) -> None:
    """One column of a side-by-side comparison: the reading and the same charts, stacked."""
    if not result.levels:           # compression variants only
        show_headline(result, None)
        st.caption(f"{result.model.name} on {result.data.name}; compression variants")
        if result.compression:
            chart(plots.drop_by_variant(result), key=f"{key}-variants", heading="Who pays for each variant",
                  help=COMPRESSION_HELP)
        return
    lv = result.levels[-1]
    show_headline(result, lv)
    st.caption(f"{result.model.name} on {result.data.name}; {result.config.method}")
    acc = plots.accuracy_vs_sparsity(result)
    # half-width column: the legend goes under the plot so the lines keep the width
    acc.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.22, x=0), margin_b=60,
                      height=440 + 22 * (len(result.group_names) // 3))
    chart(acc, key=f"{key}-acc", heading="Accuracy of each group", help=ACC_HELP)
    chart(plots.drop_by_group(result, lv.sparsity), key=f"{key}-drop",
          heading=f"Accuracy drop per group at {plots.sparsity_label(lv.sparsity)}", help=DROP_HELP)
    chart(plots.violation_vs_sparsity(result), key=f"{key}-viol", heading="Fairness violation", help=VIOL_HELP)


# ---- the Operating point page's tables: one format with the Results tables ---------------------------------------
MISSING = "—"


def pct(x) -> str:
    """0.949333 -> '94.9%'; None or NaN -> '—'."""
    return MISSING if x is None or x != x else f"{100 * float(x):.1f}%"


def points(x, *, signed: bool = True) -> str:
    """A fraction as percentage points, one decimal: 0.0123 -> '+1.2' (signed) or '1.2'; None or NaN -> '—'."""
    return MISSING if x is None or x != x else format(100 * float(x), "+.1f" if signed else ".1f")


def interval(ci, *, signed: bool = False) -> str:
    """(lo, hi) fractions -> '0.3 to 2.1' points; None -> '—'."""
    if not ci or ci[0] is None or ci[1] is None:
        return MISSING
    return f"{points(ci[0], signed=signed)} to {points(ci[1], signed=signed)}"


def kilobytes(n) -> str:
    return MISSING if n is None else f"{n / 1e3:,.1f}"


def frontier_table(res: dict) -> pd.DataFrame:
    """Every level a search measured, per method, in display units: sparsity as 50%, accuracy as 94.9%, drops and
    the violation in points with one decimal, '—' where a figure was not measured (the column's help says why)."""
    rows = []
    for name, entry in (res.get("methods") or {}).items():
        rec = (entry.get("recommended") or {}).get("sparsity")
        for p in sorted(entry.get("frontier") or [], key=lambda p: p["sparsity"]):
            rows.append({"method": name, "sparsity": plots.sparsity_label(p["sparsity"]),
                         "recommended": "★ recommended" if rec is not None and p["sparsity"] == rec else "",
                         "within budget": "yes" if p.get("feasible") else "no",
                         "overall accuracy": pct(p.get("overall_accuracy")),
                         "overall drop (pts)": points(p.get("overall_drop")),
                         "violation (pts)": points(p.get("violation"), signed=False),
                         "95% CI of violation": interval(p.get("violation_ci95")),
                         "worst group": p.get("worst_group") or MISSING,
                         "its drop (pts)": points(p.get("worst_group_drop")),
                         "size (kB)": kilobytes(p.get("size_bytes"))})
    return pd.DataFrame(rows)


def variant_table(res: dict) -> pd.DataFrame:
    """The compression variants a search judged against the budget, in the same units as :func:`frontier_table`."""
    return pd.DataFrame([{"variant": v["method"], "setting": v.get("setting") or MISSING,
                          "size (kB)": kilobytes(v.get("size_bytes")),
                          "overall accuracy": pct(v.get("overall_accuracy")),
                          "overall drop (pts)": points(v.get("overall_drop")),
                          "violation (pts)": points(v.get("violation"), signed=False),
                          "95% CI of violation": interval(v.get("violation_ci95")),
                          "worst group": v.get("worst_group") or MISSING,
                          "within budget": "yes" if v.get("feasible") else "no"}
                         for v in res.get("compression") or []])


SEARCH_COLUMNS = {
    "sparsity": st.column_config.TextColumn("sparsity", help=DEF["sparsity"]),
    "overall accuracy": st.column_config.TextColumn("overall accuracy", help=DEF["accuracy"] + " The whole test set."),
    "overall drop (pts)": st.column_config.TextColumn("overall drop (pts)", help=DEF["accuracy_drop"]
                                                      + " The whole test set, in points."),
    "violation (pts)": st.column_config.TextColumn("violation (pts)", help=DEF["fairness_violation_accuracy"]),
    "95% CI of violation": st.column_config.TextColumn(
        "95% CI of violation", help=DEF["fairness_violation_ci95"] + " — where the result records no interval "
        "(older results, or a single group)."),
    "worst group": st.column_config.TextColumn("worst group", help="The group with the largest accuracy drop at "
                                               "this level."),
    "its drop (pts)": st.column_config.TextColumn("its drop (pts)", help=DEF["accuracy_drop"]),
    "size (kB)": st.column_config.TextColumn("size (kB)", help="Bytes of the model as it would ship, in kB. — where "
                                             "the size was not measured."),
    "within budget": st.column_config.TextColumn("within budget", help="yes: every bound of the budget holds at this "
                                                 "level (on the 95% upper ends when the search reads them)."),
    "recommended": st.column_config.TextColumn("recommended", help="The method's recommended level: the highest "
                                               "sparsity within the budget with no failure below it."),
}
