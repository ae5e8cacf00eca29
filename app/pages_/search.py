"""Search: the highest sparsity that stays within a fairness budget (the operating point), per method."""

from __future__ import annotations

import streamlit as st

from app import result_view, widgets
from fairprune.present import plots
from fairprune.engine.compress import list_compressions
from fairprune.engine.prune import list_methods
from fairprune.engine.search import coarse_grid

st.title("Operating point")
st.caption("Find the highest sparsity at which the pruned model stays within your budget: a coarse grid, then "
           "bisection. The budget is read on the estimates, or on the upper end of their 95% interval.")
s = widgets.store()
inp = widgets.inputs()
ready = widgets.require_inputs(inp)
if ready:
    st.markdown(f"Searching {widgets.describe_inputs(inp)}.")

names = [m.name for m in list_methods() if m.fixed_sparsity is None]     # a fixed-sparsity method has nothing to search
c = st.columns(3)
max_violation = c[0].number_input("Max violation (points)", min_value=0.0, max_value=100.0, value=2.0, step=0.5,
                                  key="search-maxviol", help=plots.DEFINITIONS["fairness_violation_accuracy"])
use_drop = c[1].checkbox("Bound the overall drop", value=False, key="search-usedrop")
max_drop = c[1].number_input("Max overall drop (points)", min_value=0.0, max_value=100.0, value=2.0, step=0.5,
                             key="search-maxdrop", disabled=not use_drop)
confident = c[2].checkbox("Read the 95% upper bound", value=False, key="search-conf",
                          help="Pass only levels whose 95% intervals stay within the budget (each group's own interval; for the violation, the interval that holds for all groups at once).")
chosen = st.multiselect("Pruning methods", names, default=names[:1], key="search-methods")
GRID = coarse_grid()        # the levels measured first: the least a search may measure
evals = st.number_input("Most levels measured per method", min_value=len(GRID), max_value=30, value=max(8, len(GRID)),
                        key="search-evals", help=f"The search measures the {len(GRID)} levels "
                        f"{widgets.sparsity_text(GRID)} first, then halves the step between the last level "
                        "within the budget and the first one over it.")
variants = st.multiselect("Also judge compressed variants against the budget", [c.name for c in list_compressions()],
                          default=[], key="search-compress",
                          help="Each variant (quantization, 2:4 sparsity) is measured on the same rows and judged by the "
                               "same budget; the result names the smallest model within the budget among each "
                               "method's recommended level and the variants.")

if st.button("Search", key="search-run", type="primary", disabled=not chosen or not ready,
             icon=":material/travel_explore:") and ready and widgets.inputs_problem(inp) is None:
    with widgets.friendly_errors("Queuing the search"):
        if inp.get("source") == "demo":
            spec = {"demo": inp["demo"], "group": list(inp["group"])}
            files = None
        else:
            keys, files, _ = widgets.chosen_files(inp)
            spec = {k: list(v) if isinstance(v, tuple) else v for k, v in keys.items()}
        spec.update(methods=list(chosen), max_violation=max_violation / 100, max_evals=int(evals),
                    confidence=0.95 if confident else None)
        if variants:
            spec["compress"] = list(variants)
        if use_drop:
            spec["max_overall_drop"] = max_drop / 100
        rid = s.create_run(spec, kind="search", title=f"search {', '.join(chosen)} · budget {max_violation:g} pts",
                           files=files)
        widgets.show_run("search-pick", rid)
        widgets.start_worker(s)

runs = s.list(kind="search")
if runs:
    st.divider()
    run = widgets.pick_run(runs, label="Search run", key="search-pick")
    if run is not None:
        with widgets.friendly_errors("Reading the search"):
            res = run.result or {}
            best = res.get("best")
            if best:
                st.success(f"Recommended: **{best['method']}** at **{plots.sparsity_label(best['sparsity'])}** "
                           f"sparsity — violation {100 * best['violation']:.1f} pts, overall accuracy "
                           f"{100 * best['overall_accuracy']:.1f}%.", icon=":material/target:")
            else:
                st.warning("No measured level met the budget.")
            for name, entry in (res.get("methods") or {}).items():
                if entry.get("note"):
                    st.caption(f"{name}: {widgets.plain(entry['note'])}")
            result_view.chart(plots.search_frontier(res), key="search-frontier",
                              heading="Violation against sparsity per method",
                              help="Shaded: within the violation budget. Crosses: levels over budget. Stars: the "
                                   "recommended level of each method.")
            table = result_view.frontier_table(res)
            st.dataframe(table, hide_index=True, key="search-table", width="stretch",
                         column_config=result_view.SEARCH_COLUMNS, height=result_view._height(len(table)))
            if res.get("compression"):
                small = res.get("smallest_within_budget")
                if small:
                    what = (f"{small['method']} at {plots.sparsity_label(small['sparsity'])} sparsity"
                            if small["kind"] == "pruning" else small["method"])
                    st.success(f"Smallest model within the budget: **{what}** — {small['size_bytes'] / 1e3:,.1f} kB, "
                               f"violation {100 * small['violation']:.1f} pts, overall accuracy "
                               f"{100 * small['overall_accuracy']:.1f}%.", icon=":material/compress:")
                else:
                    st.warning("No sized model (level or variant) met the budget.")
                st.dataframe(result_view.variant_table(res), hide_index=True, key="search-variants",
                             width="stretch", column_config=result_view.SEARCH_COLUMNS)
