"""Runs: every run in the store, of every kind (shared by all browser sessions): open, compare, requeue, delete."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app import result_view, widgets
from fairprune.present import plots
from fairprune.present.plots import DEFINITIONS
from fairprune.present.reading import collapsed, worst_group
from fairprune.core.result import AuditResult
from fairprune.run.store import REQUEUEABLE

st.title("Runs")
st.caption("Every run in the store, of every kind (shared by every browser session): audits, audits with "
           "diagnostics, mitigations and operating-point searches. Open one on its page, compare two audits, "
           "run one again, or delete it.")
s = widgets.store()
with widgets.friendly_errors("Checking for runs whose worker stopped"):
    s.reap()
runs = s.list()
if not runs:
    st.info("No runs yet.", icon=":material/info:")
    st.page_link(widgets.PAGES["start"], label="Try the demo", icon=":material/play_arrow:")
    st.stop()

#: Where each kind of run is opened, and its name in the table.
OPENS = {"audit": "results", "diagnostics": "why", "mitigate": "mitigate", "search": "search"}
PAGE_NAMES = {"results": "Results", "why": "Why", "mitigate": "Mitigate", "search": "Operating point"}
KINDS = {"audit": "audit", "diagnostics": "audit + diagnostics", "mitigate": "mitigation",
         "search": "operating point"}


def kind_of(run) -> str:
    """audit, diagnostics (an audit with diagnostics), mitigate, search (or the store's kind, unknown here)."""
    return "diagnostics" if run.kind == "audit" and run.spec.get("diagnostics") else run.kind


def _result(run) -> AuditResult | None:
    if run.kind != "audit" or run.status != "done" or not run.result:
        return None
    try:
        return AuditResult.from_dict(run.result)
    except Exception:
        return None


def summary(run) -> str:
    """One line on what a finished search or mitigation found (audits have their own columns)."""
    res = run.result or {}
    if run.status != "done":
        return ""
    if run.kind == "search":
        best = res.get("best")
        return (f"recommended: {best['method']} at {plots.sparsity_label(best['sparsity'])}" if best
                else "no measured level met the budget")
    if run.kind == "mitigate":
        sec = res.get("mitigation") or {}
        rec = sec.get("recommended")
        return f"recommended: {rec}" if rec else ""
    return ""


def inputs_of(run) -> str:
    sp = run.spec
    if run.kind == "audit":
        return widgets.run_inputs(run)
    what = f"demo {sp['demo']}" if sp.get("demo") else \
        f"{Path(str(sp.get('model'))).name} on {Path(str(sp.get('data'))).name}"
    if run.kind == "search":
        return (f"{what}; methods: {', '.join(sp.get('methods') or [sp.get('method') or 'global_magnitude'])}; "
                f"budget {100 * float(sp.get('max_violation') or 0):g} pts")
    if run.kind == "mitigate":
        return f"{what}; {sp.get('method', '?')} at {plots.sparsity_label(float(sp.get('sparsity', 0)))}"
    return what


def why_blank(run) -> str:
    """Why an audit's figures are blank ("—") for this run: they belong to finished audits only."""
    if run.kind != "audit":
        return "— (not an audit)"
    return "—" if run.status == "done" else f"— ({run.status})"


def audit_figures(res: AuditResult | None) -> tuple[str | None, str | None, str | None]:
    """(worst group at the top level, its drop, the largest violation) as the table shows them, or Nones.

    The violation is the largest accuracy fairness violation over the levels and variants, in points:
    the largest group drop minus the smallest (a gain counts as a negative drop), so one group losing 90
    points while another gains 11.5 is a violation of 101.5 points. A figure from a model the sanity check found
    at or below chance is marked ⚠: it describes a collapsed model, not who pays for pruning."""
    measured = [] if res is None else [(lv.sparsity, lv) for lv in res.levels] + [
        (v.method, v.level) for v in res.compression]
    if not measured:
        return None, None, None
    lv = res.levels[-1] if res.levels else max((x for _, x in measured), key=lambda x: x.fairness_violation["accuracy"])
    worst = worst_group(lv)
    where, top = max(measured, key=lambda wx: wx[1].fairness_violation["accuracy"])
    violation = f"{100 * top.fairness_violation['accuracy']:.1f}"
    if collapsed(res, where):
        violation += " ⚠ at or below chance"
    return worst, f"{100 * lv.groups[worst].accuracy_drop:+.1f}", violation


results = {r.id: _result(r) for r in runs}
rows = []
for r in runs:
    res = results[r.id]
    worst, drop, violation = audit_figures(res)
    blank = why_blank(r)
    progress = f"{r.progress_done}/{r.progress_total} steps" if r.active and r.progress_total else ""
    rows.append({"kind": KINDS.get(kind_of(r), r.kind), "status": f"{r.status} {progress}".strip(),
                 "title": r.title or r.id, "found": summary(r),
                 "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created)),
                 "worst group (top level)": worst or blank, "its drop (pts)": drop or blank,
                 "max violation (pts)": violation or blank,
                 "inputs": inputs_of(r), "id": r.id})
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="runs-table", column_config={
    "max violation (pts)": st.column_config.TextColumn(
        help="Audits: the largest accuracy fairness violation over the levels and compression variants of the run, "
             "in percentage points: the largest group drop minus the smallest, where a gain counts as a negative "
             "drop, so it can pass 100 (one group loses 90 points while another gains 11.5: 101.5). ⚠ at or below "
             "chance: the model it comes from is at or below chance (the sanity check's warning), so the figure "
             "describes a broken model. — (not an audit): searches and mitigations, whose finding is under 'found'; "
             "— (queued), (running), (failed): the audit has no figures yet. "
             + DEFINITIONS["fairness_violation_accuracy"]),
    "worst group (top level)": st.column_config.TextColumn(help="Audits: the group with the largest accuracy drop "
                                                           "at the run's highest sparsity. — (not an audit): a "
                                                           "search or mitigation (see 'found'); — (running) and "
                                                           "the like: no figures yet."),
    "its drop (pts)": st.column_config.TextColumn(help=DEFINITIONS["accuracy_drop"] + " — (not an audit): a "
                                                  "search or mitigation (see 'found'); — (running) and the like: no "
                                                  "figures yet."),
    "found": st.column_config.TextColumn(help="Searches and mitigations: what the run recommends."),
})
if any(r.active for r in runs):
    widgets.watch_runs({r.id: r.status for r in runs if r.active})

by_id = {r.id: r for r in runs}
st.subheader("One run")
chosen = st.selectbox("Run", list(by_id), key="runs-pick",
                      format_func=lambda i: f"{KINDS.get(kind_of(by_id[i]), by_id[i].kind)} · "
                                            f"{widgets.run_label(by_id[i])}")
run = by_id[chosen]
st.caption(inputs_of(run))
if run.error:
    (st.error if run.status == "failed" else st.warning)(widgets.plain(run.error))


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
    target = OPENS.get(kind_of(run))
    if target == "why" and run.status != "done":
        target = "results"                       # the Why page reads finished audits; Results follows this one
    if target and st.button("Open", key="runs-open", icon=":material/open_in_new:", width="stretch",
                            help=f"Open the run on the {PAGE_NAMES[target]} page."):
        st.switch_page(widgets.PAGES[target], query_params={"run": run.id})
with c[1]:
    if run.status in REQUEUEABLE:
        st.button("Requeue", key="runs-requeue", icon=":material/replay:", width="stretch", on_click=_requeue,
                  args=(run.id,),
                  help="Put the run back in the queue; the worker runs it again from the start.")
    elif run.active:
        st.button("Cancel", key="runs-cancel", icon=":material/stop_circle:", width="stretch", on_click=_cancel,
                  args=(run.id,))
with c[2]:
    if st.button("Delete…", key="runs-delete", icon=":material/delete:", width="stretch"):
        st.session_state["confirm-delete"] = run.id
with c[3]:
    if kind_of(run) == "diagnostics" and run.status == "done" and st.button(
            "Its results", key="runs-open-results", icon=":material/insights:", width="stretch",
            help="Open the audit's figures on the Results page (Open shows its diagnostics on the Why page)."):
        widgets.open_results(run.id)
if st.session_state.get("confirm-delete") == run.id:
    st.warning(f"Delete **{run.title or run.id}** and its stored files and result? This cannot be undone.")
    y, n, _ = st.columns([1, 1, 4])
    y.button("Yes, delete it", key="runs-delete-yes", type="primary", on_click=_delete, args=(run.id,))
    n.button("Keep it", key="runs-delete-no", on_click=lambda: st.session_state.pop("confirm-delete", None))

st.subheader("Compare two audits")
done = [r.id for r in runs if results[r.id] is not None]
if len(done) < 2:
    st.caption("Two finished audits are needed for a comparison (searches and mitigations are compared on their "
               "own pages).")
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
