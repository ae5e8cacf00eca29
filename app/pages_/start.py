"""Start: what fairprune answers, the one-click demo, and the two ways in."""

import streamlit as st

from app import widgets

st.title("Who pays when a model is made smaller?")
st.markdown(
    "Shrinking a trained model by removing most of its weights (*pruning*) often costs only a point or two of "
    "accuracy overall. That average can hide who pays: some groups of people or kinds of input can lose far "
    "more than others, and the groups that were already served worst tend to lose most. **fairprune** takes "
    "your model and a test set labelled with groups, shrinks the model step by step, and shows how much "
    "accuracy each group keeps at every step, with an honest margin of error, so you can see who pays before "
    "the smaller model ships."
)

demo_col, own_col = st.columns(2, gap="large")
with demo_col:
    with st.container(border=True):
        st.subheader("1 · Try the demo")
        st.markdown(
            "Handwritten digits where a small share of the training images is drawn in inverted colours. "
            "A small network is pruned to 50%, 80%, 90% and 95% sparsity; the first results show in about ten seconds."
        )
        if st.button("Try the demo", type="primary", icon=":material/play_arrow:", key="try-demo", width="stretch",
                     help="Queues an audit of the built-in MNIST demo and opens its results page."):
            with widgets.friendly_errors("Starting the demo"):
                run_id = widgets.enqueue(widgets.demo_spec(), title="MNIST demo")
                widgets.open_results(run_id)
with own_col:
    with st.container(border=True):
        st.subheader("2 · Bring your own")
        st.markdown(
            "Upload a PyTorch classifier (`.pt2`, TorchScript, or weights plus an architecture name) and a "
            "test set (CSV, NPZ or a zip of images) with a column that says which group each row belongs to."
        )
        st.page_link(widgets.PAGES["data"], label="Choose data & model", icon=":material/folder_open:")
        st.page_link(widgets.PAGES["runs"], label="See earlier runs", icon=":material/history:")

st.caption("Method after Tran et al., *Pruning has a disparate impact on model accuracy*, NeurIPS 2022. "
           "Nothing leaves this machine: files and results stay in the server's run store.")
