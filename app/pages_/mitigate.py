"""Mitigate: repair a pruned model's disparate impact at one level of a finished audit, then compare."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import result_view, widgets
from fairprune.present import plots
from fairprune.engine.mitigate import list_mitigations, recommend

NOT_MEASURED = "—"


def _pct(v) -> str:
    return NOT_MEASURED if v is None else f"{100 * v:.1f}%"


def _change(before, after, *, sign: int = 1) -> str:
    if before is None or after is None:
        return NOT_MEASURED
    d = sign * 100 * (after - before)
    return f"{d:+.1f}".replace("-", "−")


def before_after(sec: dict, method: str) -> tuple[pd.DataFrame, str]:
    """Per group (and overall), on the held-out rows: accuracy of the pruned model without repair, with ``method``,
    and the change in points (or, for a result without accuracies, the accuracy drops); and a caption."""
    after = ((sec.get("methods") or {}).get(method) or (sec.get("after") if method == sec.get("method") else None)
             or {})
    before = sec.get("before") or {}
    dense = sec.get("dense") or {}
    rows = []
    names = list((before.get("groups") or {}) or (after.get("groups") or {}))
    has_acc = any("accuracy" in ((before.get("groups") or {}).get(g) or {}) for g in names)
    for g, b, a, d in ([("overall", before.get("overall") or {}, after.get("overall") or {}, dense.get("overall") or {})]
                       + [(g, (before.get("groups") or {}).get(g) or {}, (after.get("groups") or {}).get(g) or {},
                           (dense.get("groups") or {}).get(g) or {}) for g in names]):
        if has_acc:
            row = {"group": g, "rows": b.get("n") or a.get("n"), "dense": _pct(d.get("accuracy")),
                   "pruned, no repair": _pct(b.get("accuracy")), f"after {method}": _pct(a.get("accuracy")),
                   "change (points)": _change(b.get("accuracy"), a.get("accuracy"))}
        else:
            row = {"group": g, "rows": b.get("n") or a.get("n"), "drop, no repair": _pct(b.get("accuracy_drop")),
                   f"drop after {method}": _pct(a.get("accuracy_drop")),
                   "change (points)": _change(b.get("accuracy_drop"), a.get("accuracy_drop"), sign=-1)}
        if g == "overall" and row.get("rows") is None:
            row["rows"] = sum(((before.get("groups") or {}).get(x) or {}).get("n") or 0 for x in names) or None
        rows.append(row)
    t = pd.DataFrame(rows)
    t["rows"] = [NOT_MEASURED if v is None or v != v else f"{int(v):,}" for v in t["rows"]]
    what = ("accuracy on the held-out rows" if has_acc else "accuracy drop (dense − model) on the held-out rows")
    missing = (t == NOT_MEASURED).to_numpy().any()
    return t, (f"{what.capitalize()}: the pruned model without repair, then with {method}. Change: positive means "
               f"the repair gave the group back accuracy."
               + (f" {NOT_MEASURED}: not in this result (older results hold no dense accuracies)." if missing else ""))


from fairprune.engine.audit import LOAD_KEYS  # noqa: E402  (every loading key: preprocessing and text ones too)
MODEL_FILE = "mitigated.pt2"

st.title("Mitigate")
st.caption("Fine-tune (or re-mask) the pruned model so that the groups share the cost more evenly; the recommended "
           "method is chosen on selection rows kept apart from the training rows, and every method is measured on "
           "held-out rows that took no part in fitting or choosing, next to the pruned model without repair.")
s = widgets.store()
audits = [r for r in s.list(kind="audit") if r.status == "done"]
mitigations = s.list(kind="mitigate")

methods = {m.name: m.description for m in list_mitigations()}
if not audits:
    st.info("No finished audits yet: run one first, then repair one of its levels here.", icon=":material/info:")
    st.page_link(widgets.PAGES["start"], label="Try the demo", icon=":material/play_arrow:")
else:
    by_id = {r.id: r for r in audits}
    aid = st.selectbox("Finished audit", list(by_id), key="mit-audit", format_func=lambda i: widgets.run_label(by_id[i]))
    audit = by_id[aid]
    levels = [float(x) for x in audit.spec.get("sparsities", [])] or [0.9]
    c = st.columns(4)
    sparsity = c[0].selectbox("Level", levels, index=len(levels) - 1, key="mit-level", format_func=plots.sparsity_label)
    method = c[1].selectbox("Method", list(methods), index=list(methods).index("constrained_loss")
                            if "constrained_loss" in methods else 0, key="mit-method",
                            help="\n".join(f"- **{n}**: {d}" for n, d in methods.items()))
    epochs = c[2].number_input("Epochs", min_value=1, max_value=50, value=2, key="mit-epochs",
                               help="Fine-tuning epochs every method gets (masks fixed).")
    seeds = c[3].number_input("Seeds", min_value=1, max_value=10, value=1, key="mit-seeds",
                              help="Repeat with this many seeds; figures are then means ± std.")
    save = st.checkbox("Save the mitigated model (.pt2) for download", value=False, key="mit-save",
                       help="Exports the first seed's model of the chosen method with torch.export.")
    problem = widgets.spec_files_problem(audit.spec)
    if problem:
        st.warning(problem, icon=":material/folder_open:")
    if st.button("Run mitigation", key="mit-run", type="primary", icon=":material/healing:",
                 disabled=problem is not None) and problem is None:
        with widgets.friendly_errors("Queuing the mitigation"):
            spec = {k: audit.spec[k] for k in LOAD_KEYS if audit.spec.get(k) is not None}
            spec.update(sparsity=sparsity, method=method, epochs=int(epochs), seeds=int(seeds))
            files = None
            if save:
                spec["save_model"] = MODEL_FILE       # create_run rewrites it to the run folder's file
                files = {MODEL_FILE: b""}
            rid = s.create_run(spec, kind="mitigate", title=f"{method} at {plots.sparsity_label(sparsity)} · "
                               f"{audit.title or audit.id}", files=files)
            widgets.start_worker(s)
            widgets.show_run("mit-pick", rid)
            mitigations = s.list(kind="mitigate")

if mitigations:
    st.divider()
    run = widgets.pick_run(mitigations, label="Mitigation run", key="mit-pick")
    if run is not None:
        with widgets.friendly_errors("Reading the mitigation"):
            sec = (run.result or {}).get("mitigation") or {}
            sel = sec.get("selection") or {}
            rec = sec.get("recommended")
            if rec is None:
                try:
                    rec = recommend(run.result, on_reported_rows=True)
                except (ValueError, KeyError, TypeError):
                    rec = None
            if rec and sel.get("n_select") is not None:
                n_eval = sel.get("n_eval", sec.get("n_eval"))
                st.success(f"Recommended: **{rec}**. The choice was made on {sel['n_select']:,} selection rows kept "
                           f"apart from the training rows; the figures shown are on {n_eval:,} held-out rows that "
                           f"took no part in it.", icon=":material/thumb_up:")
            elif rec:
                n_eval = sec.get("n_eval")
                st.warning(f"Recommended: **{rec}**, chosen on the same "
                           f"{f'{n_eval:,} ' if isinstance(n_eval, int) else ''}held-out rows its figures are shown "
                           f"on (a run from before selection rows were kept apart), so those figures flatter it. "
                           f"Run the mitigation again to choose on separate rows.", icon=":material/warning:")
            for w in sec.get("warnings") or []:
                st.warning(widgets.message(w))
            shown = rec if rec in (sec.get("methods") or {}) else sec.get("method")
            if shown and (sec.get("before") or {}).get("groups"):
                table, caption = before_after(sec, shown)
                st.markdown(f"#### Before and after, per group: {widgets.escape_markdown(shown)} at "
                            f"{plots.sparsity_label(float(sec.get('sparsity') or run.spec.get('sparsity') or 0))}")
                st.dataframe(table, hide_index=True, key="mit-before-after", width="stretch")
                st.caption(caption)
            cols = st.columns(2, gap="large")
            with cols[0]:
                result_view.chart(plots.mitigation_by_group(sec), key="mit-groups",
                                  heading="Accuracy drop per group, before and after",
                                  help=plots.DEFINITIONS["accuracy_drop"])
            with cols[1]:
                result_view.chart(plots.mitigation_methods(sec), key="mit-methods",
                                  heading="Methods compared: violation vs overall accuracy",
                                  help=plots.DEFINITIONS["fairness_violation_accuracy"])
            if sec.get("multipliers"):
                try:
                    fig = plots.multipliers_over_time(sec)
                except ValueError:
                    fig = None
                if fig is not None:
                    result_view.chart(fig, key="mit-mult", heading="Multipliers over time",
                                      help="The dual variables λ_a of the constrained method: a group whose constraint "
                                           "is violated gets a growing weight.")
            path = run.spec.get("save_model")
            if path:
                from pathlib import Path

                p = Path(path)
                if p.is_file() and p.stat().st_size > 0:
                    st.download_button("Download the mitigated model (.pt2)", data=p.read_bytes(), file_name=p.name,
                                       key="mit-download", icon=":material/download:")
