"""Audit: sparsity levels, pruning method, seed and device; Run queues the audit for the background worker."""

from __future__ import annotations

import streamlit as st

from app import widgets
from fairprune.engine.audit import AuditSpec
from fairprune.core.errors import InputError
from fairprune.engine.compress import compression_help, list_compressions, parse_variants
from fairprune.engine.prune import list_methods



def configured_executor_label() -> str | None:
    """Where the worker sends runs, when the server is configured for a Ray cluster (FAIRPRUNE_EXECUTOR=ray)."""
    import os

    from fairprune.run.executors import EXECUTOR_ENV, RAY_ADDRESS_ENV

    if os.environ.get(EXECUTOR_ENV, "local").strip().lower() != "ray":
        return None
    address = os.environ.get(RAY_ADDRESS_ENV) or "a Ray cluster the worker starts on this machine"
    return (f"Runs go to the Ray cluster at {address} (set by {EXECUTOR_ENV}): one task per sparsity level, each "
            "on a GPU when the cluster has them; the result is the same as a run on this machine.")


st.title("Audit")
inp = widgets.inputs()

if inp["source"] == "demo":
    from fairprune.data.demos import get_demo

    demo_info = get_demo(inp["demo"])
ready = widgets.require_inputs(inp)    # the check every page that queues work makes first
if ready:
    st.markdown(f"Auditing {widgets.describe_inputs(inp)}.")
    st.page_link(widgets.PAGES["data"], label="Change data & model", icon=":material/folder_open:")

PRESETS: dict[str, tuple[str, tuple[float, ...] | None]] = {}
if inp["source"] == "demo":
    PRESETS["demo"] = (f"Demo default — {widgets.sparsity_text(demo_info.default_sparsities)}",
                       tuple(demo_info.default_sparsities))
PRESETS["moderate"] = ("Moderate — 50%, 70%, 90%", (0.5, 0.7, 0.9))
PRESETS["aggressive"] = ("Aggressive — 80%, 90%, 95%, 98%", (0.8, 0.9, 0.95, 0.98))
PRESETS["custom"] = ("Custom", None)
PRESETS["none"] = ("None — compression variants only", ())

left, right = st.columns(2, gap="large")
with left:
    preset = st.radio("Sparsity levels", list(PRESETS), format_func=lambda k: PRESETS[k][0], key="audit-preset",
                      help="Sparsity = the share of prunable weights (conv and linear weights) set to zero. "
                           "Each level is pruned from the dense model and measured on every group.")
    levels: tuple[float, ...] | None = PRESETS[preset][1]
    if levels is None:
        text = st.text_input("Levels, comma-separated (fractions or percentages)", value="0.5, 0.9",
                             key="audit-levels", placeholder="0.5, 0.9")
        try:
            levels = widgets.parse_sparsities(text)
        except InputError as err:
            st.error(str(err), icon=":material/error:")
            levels = None
with right:
    methods = {m.name: m for m in list_methods()}
    method = st.selectbox("Pruning method", list(methods), key="audit-method",

                          help="How weights are chosen for removal. The paper prunes by magnitude with one "
                               "global threshold (global_magnitude).")
    st.caption(methods[method].description)
    fixed = methods[method].fixed_sparsity
    if fixed is not None and levels:
        levels = (fixed,)
        st.info(f"{method} prunes exactly {100 * fixed:g}% of the weights by definition, so the audit measures that "
                "one level.", icon=":material/info:")
    c1, c2 = st.columns(2)
    seed = c1.number_input("Seed", min_value=0, value=0, step=1, key="audit-seed",
                           help="Seeds the random choices (random pruning, the permutations behind the violation's p-value).")
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    device = c2.radio("Device", devices, index=len(devices) - 1, horizontal=True, key="audit-device",
                      help="cuda appears only when this server has a GPU.")
    comp_names = [c.name for c in list_compressions()]
    picked = st.multiselect(
        "Also compare compressed variants", comp_names, default=[], key="audit-compress",
        help="Quantization and 2:4 sparsity, each applied to a copy of the dense model and measured group by group "
             "exactly like a pruning level: " + compression_help())
    combos = st.text_input("Combinations (optional, comma-separated; steps joined by +)", value="",
                           key="audit-compress-combos", placeholder="nm_2_4+int8_dynamic",
                           help="Steps are applied left to right; nm_2_4 comes first (it masks the float weights "
                                "before they are quantized).")
    compress = tuple(picked) + tuple(c.strip() for c in combos.split(",") if c.strip())
    try:
        parse_variants(list(compress))
    except InputError as err:
        st.error(str(err), icon=":material/error:")
        compress = None
    with st.expander("Fine-tuning (optional)"):
        epochs = st.number_input("Fine-tuning epochs after pruning", min_value=0, max_value=100, value=0, step=1,
                                 key="audit-epochs",
                                 help="Plain fine-tuning of each pruned model, masks fixed, on training rows "
                                      "(the data's split column); 0 measures the pruned models as they are.")

where = configured_executor_label()
if where:
    st.caption(where)
run_clicked = st.button("Run the audit", type="primary", icon=":material/play_arrow:", key="audit-run",
                        disabled=not ready or levels is None or compress is None or not (levels or compress))
if ready and levels == () and not compress:
    st.info("Pick at least one compressed variant, or some sparsity levels.", icon=":material/info:")
if run_clicked and ready and widgets.inputs_problem(inp) is None and levels is not None and compress is not None and (levels or compress):
    with widgets.friendly_errors("Queuing the audit"):
        common = dict(sparsities=tuple(levels), method=method, seed=int(seed), device=device, latency=True,
                      finetune_epochs=int(epochs), compress=compress)
        if inp["source"] == "demo":
            spec = widgets.demo_spec(inp["demo"], group=tuple(inp["group"]), **common)
            title = f"{inp['demo']} demo · {' & '.join(inp['group'])}"
            files = {}
        else:
            keys, files, title = widgets.chosen_files(inp)
            spec = AuditSpec(**keys, **common)
        run_id = widgets.enqueue(spec, title=title, files=files)
        widgets.open_results(run_id)

active = [r for r in widgets.store().list(kind="audit") if r.active]
if active:
    st.subheader("In progress")
    for i, run in enumerate(active):
        st.markdown(f"**{run.title or run.id}** — {widgets.run_inputs(run)}")
        if i == 0:
            widgets.progress_panel(run.id)    # one poller a page: it reruns the page when its run stops
        else:
            st.caption(widgets.progress_text(run))
        st.page_link(widgets.PAGES["results"], label="Open its results page", icon=":material/insights:",
                     query_params={"run": run.id})
