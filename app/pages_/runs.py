"""Runs: every audit in the store (shared by all browser sessions), open, compare, requeue, delete."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from app import result_view, widgets
from fairprune.plots import DEFINITIONS
from fairprune.reading import worst_group
from fairprune.result import AuditResult

st.title("Runs")
s = widgets.store()
with widgets.friendly_errors("Checking for runs whose worker stopped"):
    s.reap()
runs = s.list(kind="audit")
if not runs:
    st.info("No audits yet.", icon=":material/info:")
    st.page_link(widgets.PAGES["start"], label="Try the demo", icon=":material/play_arrow:")
    st.stop()


def _result(run) -> AuditResult | None:
    if run.status != "done" or not run.result:
        return None
    try:
        return AuditResult.from_dict(run.result)
    except Exception:
        return None


results = {r.id: _result(r) for r in runs}
rows = []
for r in runs:
    res = results[r.id]
    worst, drop, violation = None, None, None
    measured = [] if res is None else res.levels + [v.level for v in res.compression]
    if measured:
        lv = res.levels[-1] if res.levels else max(measured, key=lambda x: x.fairness_violation["accuracy"])
        worst = worst_group(lv)
        drop = 100 * lv.groups[worst].accuracy_drop
        violation = 100 * max(x.fairness_violation["accuracy"] for x in measured)
    progress = f"{r.progress_done}/{r.progress_total}" if r.active and r.progress_total else ""
    rows.append({"status": f"{r.status} {progress}".strip(),
                 "title": r.title or r.id,
                 "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created)),
                 "worst group (top level)": worst, "its drop (pts)": drop, "max violation (pts)": violation,
                 "inputs": widgets.run_inputs(r), "id": r.id})
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="runs-table", column_config={
    "max violation (pts)": st.column_config.NumberColumn(
        help="Largest accuracy fairness violation over the levels and compression variants of the run. "
             + DEFINITIONS["fairness_violation_accuracy"], format="%.1f"),
    "worst group (top level)": st.column_config.TextColumn(help="The group with the largest accuracy drop at the "
                                                           "run's highest sparsity."),
    "its drop (pts)": st.column_config.NumberColumn(help=DEFINITIONS["accuracy_drop"], format="%+.1f"),
})

by_id = {r.id: r for r in runs}
st.subheader("One run")
chosen = st.selectbox("Run", list(by_id), key="runs-pick", format_func=lambda i: widgets.run_label(by_id[i]))
run = by_id[chosen]
if run.error:
    (st.error if run.status == "failed" else st.warning)(run.error)


def _requeue(rid: str) -> None:
    widgets.store().requeue(rid)
    widgets.start_worker(widgets.store())


def _cancel(rid: str) -> None:
    widgets.store().request_cancel(rid)


def _delete(rid: str) -> None:
    try:
        widgets.store().delete(rid)
    except KeyError:
        pass
    st.session_state.pop("confirm-delete", None)


c = st.columns(4)
with c[0]:
    if st.button("Open", key="runs-open", icon=":material/insights:", width="stretch"):
        widgets.open_results(run.id)
with c[1]:
    if run.status in ("interrupted", "failed", "cancelled"):
        st.button("Requeue", key="runs-requeue", icon=":material/replay:", width="stretch", on_click=_requeue,
                  args=(run.id,),
                  help="Put the run back in the queue; the worker runs it again from the start.")
    elif run.active:
        st.button("Cancel", key="runs-cancel", icon=":material/stop_circle:", width="stretch", on_click=_cancel,
                  args=(run.id,))
with c[2]:
    if st.button("Delete…", key="runs-delete", icon=":material/delete:", width="stretch"):
        st.session_state["confirm-delete"] = run.id
if st.session_state.get("confirm-delete") == run.id:
    st.warning(f"Delete **{run.title or run.id}** and its stored files and result? This cannot be undone.")
    y, n, _ = st.columns([1, 1, 4])
    y.button("Yes, delete it", key="runs-delete-yes", type="primary", on_click=_delete, args=(run.id,))
    n.button("Keep it", key="runs-delete-no", on_click=lambda: st.session_state.pop("confirm-delete", None))

st.subheader("Compare two runs")
done = [r.id for r in runs if results[r.id] is not None]
if len(done) < 2:
    st.caption("Two finished runs are needed for a comparison.")
else:
    pair = st.multiselect("Runs to compare", done, default=done[:2], max_selections=2, key="runs-compare",
                          format_func=lambda i: widgets.run_label(by_id[i]))
    if len(pair) == 2:
        cols = st.columns(2, gap="large")
        for col, rid in zip(cols, pair):
            with col:
                st.markdown(f"**{by_id[rid].title or rid}**")
                st.caption(widgets.run_inputs(by_id[rid]))
                with widgets.friendly_errors("Drawing the run"):
                    result_view.render_compact(results[rid], key=f"cmp-{rid}")
