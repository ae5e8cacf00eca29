"""Results: one run's reading, charts and every figure; live progress while it is still running."""

from __future__ import annotations

import streamlit as st

from app import result_view, widgets
from fairprune.result import AuditResult

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
if wanted not in by_id:   # default: the latest finished run, else the latest
    wanted = next((r.id for r in runs if r.status == "done"), runs[0].id)
run_id = st.selectbox("Run", list(by_id), index=list(by_id).index(wanted), key="results-run",
                      format_func=lambda i: widgets.run_label(by_id[i]))
if st.query_params.get("run") != run_id:
    st.query_params["run"] = run_id
run = by_id[run_id]
st.caption(widgets.run_inputs(run))


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
    msg = run.error or f"The run was {run.status}."
    if run.status == "failed":
        st.error(msg, icon=":material/error:")
    else:
        st.warning(msg if run.status == "interrupted" else "This run was cancelled before it finished.",
                   icon=":material/stop_circle:")
    st.button("Run it again", key=f"requeue-{run.id}", on_click=_requeue, args=(run.id,), icon=":material/replay:")
