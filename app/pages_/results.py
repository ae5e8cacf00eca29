"""Results: one run's reading, charts and every figure; live progress while it is still running."""

from __future__ import annotations

import streamlit as st

from app import result_view, widgets
from fairprune.core.result import AuditResult

st.title("Results")
s = widgets.store()
runs = s.list(kind="audit")
if not runs:
    st.info("No audits yet. Start with the demo, or choose your own model and data.", icon=":material/info:")
    st.page_link(widgets.PAGES["start"], label="Try the demo", icon=":material/play_arrow:")
    st.page_link(widgets.PAGES["data"], label="Choose data & model", icon=":material/folder_open:")
    st.stop()

by_id = {r.id: r for r in runs}
wanted = st.query_params.get("run")
if wanted not in by_id:   # default: the run this session queued last (also while it runs), else the latest finished
    mine = widgets.my_latest_run(runs)
    wanted = mine.id if mine is not None else next((r.id for r in runs if r.status == "done"), runs[0].id)
if st.session_state.get("results-run") not in by_id or st.session_state.get("results-wanted") != wanted:
    st.session_state["results-run"] = wanted       # the address (or this session's new run) decides
    st.session_state["results-wanted"] = wanted
run_id = st.selectbox("Run", list(by_id), key="results-run",
                      format_func=lambda i: widgets.run_label(by_id[i]))
if st.query_params.get("run") != run_id:
    st.query_params["run"] = run_id
    st.session_state["results-wanted"] = run_id
run = by_id[run_id]
st.caption(widgets.run_inputs(run))
running = [r for r in runs if r.active and r.id != run.id]
if running:
    with st.container(border=True):
        st.markdown(f"{'An audit is' if len(running) == 1 else f'{len(running)} audits are'} still running:")
        for r in running[:5]:
            st.page_link(widgets.PAGES["results"], label=f"{widgets.run_label(r)} · {r.status} — open it",
                         icon=":material/hourglass_top:", query_params={"run": r.id})
    if not run.active:
        # One poller a page: while this page's own run is going, its progress panel reruns the page when it stops
        # (two fragments polling at once raced Streamlit's full reruns and could leave the page blank).
        widgets.watch_runs({r.id: r.status for r in running})


def _requeue(rid: str) -> None:
    widgets.store().requeue(rid)
    widgets.start_worker(widgets.store())


if run.active:
    st.info("This audit is running in the background; the page updates by itself and the results appear "
            "here when it is done. You can close the page and come back later.", icon=":material/hourglass_top:")
    widgets.progress_panel(run.id)
elif run.status == "done":
    with widgets.friendly_errors("Reading the result"):
        result_view.render_result(AuditResult.from_dict(run.result), key="res", run_id=run.id)
else:
    msg = widgets.plain(run.error or f"The run was {run.status}.")
    if run.status == "failed":
        st.error(msg, icon=":material/error:")
    else:
        st.warning(msg if run.status == "interrupted" else "This run was cancelled before it finished.",
                   icon=":material/stop_circle:")
    st.button("Run it again", key=f"requeue-{run.id}", on_click=_requeue, args=(run.id,), icon=":material/replay:")
