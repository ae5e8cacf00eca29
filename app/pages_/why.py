"""Why: the diagnostics of one audit — which factors of Theorem 1 make a group pay for pruning."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import result_view, widgets
from fairprune.present import plots
from fairprune.engine.audit import AuditSpec
from fairprune.engine.diagnose import MIN_GROUPS, compare_groups, factor_values, theory_reading
from fairprune.core.result import AuditResult

#: what an empty cell of the tables means
NOT_MEASURED = "—"

HELP = {
    "theorem": "Theorem 1 (Tran et al. 2022): a group's excessive loss R(a) is bounded by ‖g_a‖·‖θ̄ − θ*‖ + "
               "½ λ_max(H_a)·‖θ̄ − θ*‖² (+ a third-order remainder). Groups with larger gradient norms or a sharper "
               "loss surface (larger Hessian eigenvalue) are hurt more by the same change of the weights.",
    "grad_norm_mean": "Mean per-sample gradient norm ‖∇_θ ℓ(x, y)‖ over the group's samples, dense model: how much a "
                      "sample's loss reacts to a change of the weights.",
    "group_grad_norm": "‖g_a‖: norm of the gradient of the group's mean loss (Theorem 1's first term).",
    "hessian": "λ_max(H_a): largest eigenvalue of the Hessian of the group's mean loss (power iteration); Tr(H_a): its "
               "trace (Hutchinson). Whiskers: ± one standard error over row parts / probes.",
    "margin_mean": "Margin p_y − max_{k≠y} p_k: the model's probability of the true class minus that of the strongest "
                   "other class. Small or negative margins sit near the decision boundary.",
    "boundary": "Input-space distance to the decision boundary (the smallest change of an input that changes its "
                "prediction) is slower to measure and is not measured from the dashboard; it is shown in the panels "
                "only for runs that measured it.",
    "flips": "Flipped sample: right under the dense model, wrong under the pruned one. Indices are row positions in "
             "the input data.",
}

st.title("Why does a group pay?")
st.caption(HELP["theorem"])
s = widgets.store()
runs = [r for r in s.list(kind="audit") if r.status == "done"]


def _enqueue_with_diagnostics(spec: dict, title: str) -> None:
    d = dict(spec)
    d["diagnostics"] = True
    rid = widgets.enqueue(AuditSpec.from_dict(d), title=title)
    st.session_state["why-queued"] = rid


def _follow_queued() -> None:
    """The diagnostics run this session queued: its progress while it runs, its error if it stopped, and once
    it is done the page shows it (the picker moves to it)."""
    queued = st.session_state.get("why-queued")
    q = widgets.get_run(s, queued)
    if q is None:
        return
    if q.active:
        st.markdown(f"**{q.title or q.id}** is running:")
        widgets.progress_panel(q.id)
    elif q.status == "done":
        st.session_state["why-run"] = q.id
        st.session_state.pop("why-queued", None)
    else:
        st.error(widgets.message(q.error or f"The diagnostics run was {q.status}."), icon=":material/error:")
        st.session_state.pop("why-queued", None)


def _num(v) -> str:
    """A table cell: three significant figures without an exponent (25,400, 0.596), or '—' where the figure was
    not measured."""
    if v is None:
        return NOT_MEASURED
    return f"{float(f'{v:.3g}'):,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


@st.cache_data(max_entries=8, show_spinner=False)
def _training_sizes(demo: str, group: tuple[str, ...]) -> dict[str, int]:
    """Samples per group in a demo's training rows (its evaluation rows may be balanced by design)."""
    from fairprune.data.demos import demo_dataset

    return dict(demo_dataset(demo, group=group).part("train").group_sizes)


def _size_view(spec: dict, evaluated: dict[str, int]) -> tuple[dict[str, int], str, str]:
    """(sizes, axis title, note) for the group-size view: the paper's group size is the training rows'; a demo
    knows them, other runs show the evaluation rows' and say when those are balanced by design."""
    same = len(set(evaluated.values())) == 1 and len(evaluated) > 1
    n_each = next(iter(evaluated.values()), 0)
    if spec.get("demo"):
        try:
            train = _training_sizes(spec["demo"], tuple(spec.get("group") or ()))
        except Exception:  # noqa: BLE001 - an older demo or grouping: fall back to the evaluation rows
            train = {}
        if train and set(train) >= set(evaluated):
            note = (f"Sizes of the training rows, where the groups were unequal. The evaluation rows are balanced "
                    f"by design ({n_each:,} per group), so that every group is measured as precisely."
                    if same else "Sizes of the training rows (the paper's group size is the training one).")
            return {g: train[g] for g in evaluated}, "training samples of the group", note
    if same:
        return (evaluated, "evaluation samples of the group",
                f"The evaluation rows are balanced ({n_each:,} per group), by design of the test set: here group size "
                f"cannot explain a difference. The paper's group size is the training rows', which this run did not "
                f"record.")
    return evaluated, "evaluation samples of the group", "Sizes of the evaluation rows."


if not runs:
    st.info("No finished audits yet. Run the demo with diagnostics to see why groups pay.", icon=":material/info:")
    if st.button("Run the demo with diagnostics", key="why-demo", icon=":material/play_arrow:"):
        st.session_state["why-queued"] = widgets.enqueue(widgets.demo_spec(diagnostics=True),
                                                         title="MNIST demo with diagnostics")
    _follow_queued()
    st.stop()

by_id = {r.id: r for r in runs}
with_diag = [r.id for r in runs if (r.result or {}).get("diagnostics")]
default = with_diag[0] if with_diag else runs[0].id
_follow_queued()
opened = st.query_params.get("run")
if opened in by_id and st.session_state.get("why-opened") != opened:   # opened from the Runs page
    st.session_state["why-opened"] = opened
    st.session_state["why-run"] = opened
if st.session_state.get("why-run") not in by_id:
    st.session_state.pop("why-run", None)
run_id = st.selectbox("Finished audit", list(by_id), index=list(by_id).index(default), key="why-run",
                      format_func=lambda i: widgets.run_label(by_id[i])
                      + ("" if (by_id[i].result or {}).get("diagnostics") else " (no diagnostics)"))
run = by_id[run_id]
st.caption(widgets.run_inputs(run))

diag = (run.result or {}).get("diagnostics")
if not diag:
    st.info("This audit was run without diagnostics. Run the same audit again with them (gradient norms, Hessian, "
            "margins per group; a few minutes on the demo).", icon=":material/info:")
    st.button("Run with diagnostics", key="why-rerun", icon=":material/replay:", on_click=_enqueue_with_diagnostics,
              args=(run.spec, f"{run.title or run.id} + diagnostics"))
    st.stop()

with widgets.friendly_errors("Reading the diagnostics"):
    result = AuditResult.from_dict(run.result)
    # the models diagnosed: each sparsity level, then each compression variant (quantization, 2:4) whose entry
    # carries per-group diagnostics
    variants = [v for v in result.compression if v.details.get("diagnostics")]
    labels = [plots.sparsity_label(lv.sparsity) for lv in result.levels] + [v.method for v in variants]
    if not labels:
        st.info("This audit measured no pruned or compressed model with diagnostics.", icon=":material/info:")
        st.stop()
    # keyed by run: the picker and the content always come from the same run (a shared key kept the last run's
    # choice in the server while the browser drew the new run's default)
    choice = st.radio("Model", list(range(len(labels))), index=max(len(result.levels) - 1, 0), horizontal=True,
                      key=f"why-level-{run.id}", format_func=lambda i: labels[i],
                      help="A sparsity level of the audit, or a compression variant (quantization, 2:4 sparsity).")
    dense = diag.get("dense") or {}
    name = labels[choice]
    idx = choice
    is_level = idx < len(result.levels)
    if is_level:
        lv = result.levels[idx]
        levels = diag.get("levels") or []
        level_diag = levels[idx] if idx < len(levels) else None
        factors = (diag.get("factors") or {}).get("levels") or []
        sentence = factors[idx].get("sentence") if idx < len(factors) else None
    else:
        variant = variants[idx - len(result.levels)]
        lv, level_diag, sentence = variant.level, variant.details["diagnostics"], None
        st.caption(variant.details.get("diagnostics_note") or "")
        idx = len(result.levels) + len(variants)     # past every per-level list below: those are pruning's
    if is_level and 1 < len(dense) < MIN_GROUPS:
        # too few groups to rank: compare them directly, in words, with λ_max's standard errors (the library's
        # reading of the same figures; the stored sentence has no SEs at hand)
        drops = {g: lv.groups[g].accuracy_drop for g in dense if g in lv.groups}
        ses = {"hessian_max_eig_se": {g: d.get("hessian_max_eig_se") for g, d in dense.items()}}
        sentence = compare_groups(factor_values(dense, dict(result.data.groups)), drops, ses)
        how = ("With fewer than 4 groups a rank correlation cannot judge; the groups' own figures (dense model) are "
               "compared instead. Theorem 1 ties a larger gradient norm, a smaller margin and a larger λ_max to a "
               "larger loss after pruning. λ_max counts as different only beyond 2 standard errors.")
    else:
        how = ("Spearman rank correlation, across groups, between each factor of the dense model and the groups' "
               "accuracy drops at this level.")
    if sentence:
        with st.container(border=True):
            st.markdown(f"**{widgets.escape_markdown(sentence)}**", help=how)

    cols = st.columns(2, gap="large")
    with cols[0]:
        result_view.chart(plots.diagnostic_dense_vs_level(dense, level_diag, "grad_norm_mean", level_name=name),
                          key="why-grad", heading=f"Mean per-sample gradient norm, dense vs {name}",
                          help=HELP["grad_norm_mean"])
    with cols[1]:
        result_view.chart(plots.diagnostic_dense_vs_level(dense, level_diag, "margin_mean", level_name=name),
                          key="why-margin", heading=f"Mean margin p_y − max p_k≠y, dense vs {name}",
                          help=HELP["margin_mean"])
    hess = {g: {k: d.get(k) for k in ("hessian_max_eig", "hessian_max_eig_se", "hessian_trace", "hessian_trace_se")}
            for g, d in dense.items()}
    try:
        fig = plots.diagnostics_by_group(hess, title="")
    except ValueError:
        st.caption("The Hessian was not measured for this run.")
    else:
        result_view.chart(fig, key="why-hessian", heading="Curvature per group (dense model): λ_max and trace, ± SE",
                          help=HELP["hessian"])
    st.caption(HELP["boundary"])

    st.markdown("#### The paper's views")
    sizes, size_title, size_note = _size_view(run.spec, dict(result.data.groups))
    v = st.columns(3)
    with v[0]:
        result_view.chart(plots.group_scatter({g: (sizes.get(g), d.get("grad_norm_mean")) for g, d in dense.items()},
                                              x_title=size_title, y_title="mean gradient norm"),
                          key="why-size", heading="Group size vs gradient norm",
                          help="Smaller groups are often fitted less well and have larger gradients (Prop. 1).")
        st.caption(size_note)
    with v[1]:
        result_view.chart(plots.group_scatter(
            {g: (d.get("grad_norm_mean"), 100 * lv.groups[g].accuracy_drop if g in lv.groups else None)
             for g, d in dense.items()}, x_title="mean gradient norm",
            y_title=f"accuracy drop at {name} (points)"),
            key="why-drop", heading="Accuracy drop vs gradient norm", help=plots.DEFINITIONS["accuracy_drop"])
    with v[2]:
        result_view.chart(plots.group_scatter({g: (d.get("margin_mean"), d.get("hessian_max_eig"))
                                               for g, d in dense.items()},
                                              x_title="mean margin",
                                              y_title="loss curvature λ_max"),
                          key="why-lam", heading="λ_max vs margin",
                          help="Samples near the decision boundary (small margin) make the loss surface sharper.")

    theory = diag.get("theory") or []
    if idx < len(theory) and theory[idx]:
        st.markdown("#### Theorem 1: bound vs measurement", help=HELP["theorem"])
        st.markdown(widgets.escape_markdown(theory_reading(theory[idx])))
        t = pd.DataFrame([{"group": g, "gradient term ‖g_a‖·d": _num(r.get("grad_term")),
                           "curvature term ½λ_max·d²": _num(r.get("hessian_term")), "bound": _num(r.get("bound")),
                           "measured excessive loss R(a)": _num(r.get("excessive_loss")),
                           "d = ‖θ̄ − θ*‖": _num(r.get("weight_distance"))} for g, r in theory[idx].items()])
        why_empty = f"{NOT_MEASURED}: not measured for this group (its λ_max or ‖g_a‖ could not be computed)."
        st.dataframe(t, hide_index=True, key="why-theory", width="stretch", column_config={
            "gradient term ‖g_a‖·d": st.column_config.TextColumn(help="‖g_a‖ times the distance d the pruning moved "
                                                                  "the weights. " + why_empty),
            "curvature term ½λ_max·d²": st.column_config.TextColumn(help="Half λ_max times d squared. " + why_empty),
            "bound": st.column_config.TextColumn(help="The sum of the two terms: an upper limit on R(a) (without "
                                                      "its third-order remainder). " + why_empty),
            "measured excessive loss R(a)": st.column_config.TextColumn(help=plots.DEFINITIONS["excessive_loss"]),
        })

    if not is_level:
        st.caption("Theorem 1's terms and the flipped samples are measured for the sparsity levels; for a compression "
                   "variant the panels above compare its gradient norms and margins with the dense model's.")
    flips = (diag.get("flips") or {}).get("levels") or []
    if idx < len(flips) and flips[idx]:
        fl = flips[idx]
        st.markdown(f"#### Flipped samples at {name}: {fl.get('n_flips', 0)} flipped, {fl.get('n_fixed', 0)} fixed",
                    help=HELP["flips"])
        t = pd.DataFrame([{"group": g, "flipped": r.get("n") or 0, "fixed (wrong → right)": r.get("fixed") or 0,
                           "row indices (first ones)": ", ".join(map(str, (r.get("indices") or [])[:50]))}
                          for g, r in (fl.get("groups") or {}).items()])
        st.dataframe(t, hide_index=True, key="why-flips", width="stretch")
        pk = fl.get("precision_at_k") or {}
        if pk.get("k"):
            st.caption(f"Of the {pk['k']} rows most at risk by gradient norm, "
                       f"{100 * (pk.get('grad_norm') or 0):.0f}% flipped; by margin {100 * (pk.get('margin') or 0):.0f}%; "
                       f"at random {100 * (pk.get('random') or 0):.0f}%.")
