"""fairprune dashboard: the router. Each page lives in app/pages_/; shared widgets in app/widgets.py.

Run with `make run` (or `streamlit run app/main.py`). Pages only lay out widgets, call the library and
draw its charts; audits run in a background worker (fairprune.run.jobs), never in this script.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/main.py` puts app/ on sys.path; the pages import `app.*`, so add the repo root.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from app import files, widgets  # noqa: E402

st.set_page_config(page_title="fairprune — who pays for pruning?", page_icon=":material/balance:", layout="wide")

pages = {
    "fairprune": [
        st.Page(widgets.PAGES["start"], title="Start", icon=":material/home:", url_path="start", default=True),
        st.Page(widgets.PAGES["data"], title="Data & model", icon=":material/folder_open:", url_path="data"),
        st.Page(widgets.PAGES["audit"], title="Audit", icon=":material/content_cut:", url_path="audit"),
        st.Page(widgets.PAGES["results"], title="Results", icon=":material/insights:", url_path="results"),
        st.Page(widgets.PAGES["why"], title="Why", icon=":material/psychology:", url_path="why"),
        st.Page(widgets.PAGES["mitigate"], title="Mitigate", icon=":material/healing:", url_path="mitigate"),
        st.Page(widgets.PAGES["search"], title="Operating point", icon=":material/target:", url_path="search"),
        st.Page(widgets.PAGES["runs"], title="Runs", icon=":material/history:", url_path="runs"),
    ]
}
page = st.navigation(pages, position="sidebar")
try:
    widgets.warm_up(widgets.store())   # before any page draws: the worker imports torch while the visitor reads
    widgets.restore_session()   # a reload: the chosen model and data of the session named in the address
    sid = files.session_id()    # this browser session's private upload folder (and a sweep of stale ones)
    widgets.name_session(sid)
    try:
        page.run()
    finally:                    # also when the page reruns or switches: the choice it just made is kept
        widgets.save_inputs(sid)
except Exception as err:  # a last guard: a page that breaks shows a message, never a traceback
    widgets.log.exception("page %s failed", page.title)
    widgets.show_unexpected(f"the {page.title} page", err)
