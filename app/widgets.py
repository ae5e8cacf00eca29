"""Shared pieces of the dashboard: the run store, the worker, errors, what to audit, run progress.

Pages import this module and stay thin: widgets in, library calls, charts out. Nothing here runs an
audit: a run is written to the store and a background worker (fairprune.run.jobs) executes it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from fairprune.run import jobs
from fairprune.engine.audit import AuditSpec
from fairprune.core.errors import InputError
from fairprune.run.store import Run, RunStore

from app.wording import COMMAND_FOR, WIDGET_FOR, escape_markdown, message, plain  # noqa: F401  (pages use them from here)

log = logging.getLogger("fairprune.app")

#: Page scripts, relative to app/main.py (st.switch_page and st.page_link take these).
PAGES = {
    "start": "pages_/start.py",
    "data": "pages_/data.py",
    "audit": "pages_/audit.py",
    "results": "pages_/results.py",
    "runs": "pages_/runs.py",
    "why": "pages_/why.py",
    "mitigate": "pages_/mitigate.py",
    "search": "pages_/search.py",
}
DEFAULT_DEMO = "mnist"
#: How often a page showing a queued or running run looks at the store again (seconds).
POLL_S = 0.5
#: ... and while the run is on its last step, so that its result shows soon after it ends (seconds).
FAST_POLL_S = 0.15
from app.serve import WORKER_IDLE_EXIT_S  # noqa: E402,F401  (one setting for the server's worker and the pages')
#: The prefix of the message shown for an unexpected error (tests look for it).
UNEXPECTED = "Something went wrong"



# ---- errors -----------------------------------------------------------------------------------------
@contextmanager
def friendly_errors(what: str = "This step") -> Iterator[None]:
    """Show the library's message for bad input, a short message for anything else; never a traceback.

    st.rerun / st.switch_page raise BaseExceptions and pass through untouched.
    """
    try:
        yield
    except InputError as err:
        st.error(message(str(err)), icon=":material/error:")
    except Exception as err:  # an internal error: say so plainly, keep the traceback in the server log
        log.exception("%s failed", what)
        show_unexpected(what, err)


def show_unexpected(what: str, err: BaseException) -> None:
    st.error(f"{UNEXPECTED}: {what} failed with {type(err).__name__}: {escape_markdown(str(err))}. "
             "This is a fairprune bug, not your input; the server log has the details.", icon=":material/warning:")



def next_button(label: str, page: str, *, key: str) -> None:
    """The next step as a button (a link was easy to miss), opening ``PAGES[page]``."""
    if st.button(label, key=key, type="primary", icon=":material/arrow_forward:"):
        st.switch_page(PAGES[page])


# ---- store and worker -------------------------------------------------------------------------------
def store() -> RunStore:
    """The run store in $FAIRPRUNE_HOME, shared by every browser session (cheap: no open handle)."""
    return RunStore()


def start_worker(s: RunStore) -> None:
    """Make sure a background worker is alive to pick up queued runs."""
    try:
        jobs.ensure_worker(s, idle_exit=WORKER_IDLE_EXIT_S)
    except Exception as err:  # the run stays queued; say why nothing moves
        log.exception("could not start a worker")
        st.warning(f"Could not start the background worker ({type(err).__name__}: {err}); the run stays "
                   "queued until one runs: whoever runs this server can start one.")


#: what the server imports once, in the background, while its first visitor reads the start page: what the
#: results page draws with (plotly is the slow one), so the first chart is not held up by imports
SERVER_WARM_IMPORTS = ("pandas", "plotly.graph_objects", "plotly.io", "fairprune.present.plots",
                       "fairprune.present.reading", "fairprune.present.report", "fairprune.core.result")
_server_warm = threading.Event()


def _import_quietly(modules: tuple[str, ...]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - warming only: the page that needs it reports the error
            log.warning("warm-up: could not import %s", name, exc_info=True)


def warm_up(s: RunStore) -> None:
    """Ready in seconds (the router calls this before every page): a background worker is alive (``python -m
    app.serve`` starts it with the server; otherwise the first page does) and warm (it imports torch and the engine
    and loads the demo before its first run); once per server process the results page's imports are done in a
    background thread; and the browser loads the chart code while the visitor reads (:func:`prefetch_charts`)."""
    start_worker(s)
    if not _server_warm.is_set():
        _server_warm.set()
        threading.Thread(target=_import_quietly, args=(SERVER_WARM_IMPORTS,), name="fairprune-warm-up",
                         daemon=True).start()
    prefetch_charts()


def _chart_chunks() -> tuple[str, ...]:
    """The file names of Streamlit's own lazily loaded chart code (plotly.js, ~4.7 MB) in its static folder."""
    import streamlit

    folder = Path(streamlit.__file__).parent / "static" / "static" / "js"
    return tuple(sorted(p.name for p in folder.glob("PlotlyChart.*.js")))


def prefetch_charts() -> None:
    """Have the browser load and evaluate Streamlit's chart code (a module it otherwise fetches only when the first
    chart is drawn: measured 4-9 s between a result's first words and its first chart on a busy 2-core machine)
    while the visitor reads or a run goes on: the same module, by the same address, so the chart's own import
    finds it ready. Nothing is shown; a Streamlit without that file skips it."""
    names = _chart_chunks()
    if not names or st.session_state.get("charts-prefetched"):
        return
    st.session_state["charts-prefetched"] = True
    loads = "".join(f"import(new URL({json.dumps(n)}, s.src).href).catch(() => {{}});" for n in names)
    st.sidebar.html("<script>(() => { const s = document.querySelector('script[type=\"module\"][src*=\"/static/js/\"]');"
                    f" if (s) {{ {loads} }} }})();</script>", unsafe_allow_javascript=True)


def get_run(s: RunStore, run_id: str | None) -> Run | None:
    if not run_id:
        return None
    try:
        return s.get(run_id)
    except (KeyError, ValueError):
        return None


def enqueue(spec: AuditSpec, *, title: str, files: dict[str, Path] | None = None) -> str:
    """Queue an audit run (each run gets its own copies of ``files``) and make sure a worker takes it."""
    s = store()
    run_id = s.create_run(spec.to_dict(), kind="audit", title=title, files=files or {})
    remember_run(run_id)
    start_worker(s)
    return run_id


def remember_run(run_id: str) -> None:
    """This browser session queued ``run_id``: the Results page opens it by default, also while it runs."""
    mine = st.session_state.setdefault("my-runs", [])
    if run_id not in mine:
        mine.append(run_id)


def my_latest_run(runs: list[Run]) -> Run | None:
    """The run this session queued last, among ``runs`` (None: it queued none of them)."""
    by = {r.id: r for r in runs}
    return next((by[i] for i in reversed(st.session_state.get("my-runs", [])) if i in by), None)


def open_results(run_id: str) -> None:
    st.switch_page(PAGES["results"], query_params={"run": run_id})


def demo_spec(name: str = DEFAULT_DEMO, *, group: tuple[str, ...] | None = None,
              sparsities: tuple[float, ...] | None = None, **kw) -> AuditSpec:
    from fairprune.data.demos import get_demo

    info = get_demo(name)
    kw.setdefault("latency", True)   # the results page shows what each level buys, speed included
    return AuditSpec(sparsities=tuple(info.default_sparsities if sparsities is None else sparsities), demo=name,
                     group=tuple(group or info.default_group), **kw)


def chosen_files(inp: dict) -> tuple[dict, dict[str, str], str]:
    """(loading keys of an InputSpec, {stored name: path} of the files a run copies, a title) for the user's own
    model and data (``inputs()`` with source 'files'); every page that queues a run on them uses this."""
    m, d = inp["model"], inp["data"]
    model_name, data_name = m["name"], d["name"]
    if data_name == model_name:
        data_name = "data-" + data_name
    keys = {"model": model_name, "data": data_name, "arch": m.get("arch"), "num_classes": m.get("num_classes"),
            "arch_args": m.get("arch_args") or {}, "label": d["label"], "group": tuple(d["group"]),
            "ignore": tuple(d["ignore"]) if d.get("ignore") else None, "missing_group": d.get("missing_group", "error")}
    keys.update({k: d[k] for k in PREP_KEYS if d.get(k) is not None})
    copies = {model_name: m["path"], data_name: d["path"]}
    for key, part, name in (("model", m, model_name), ("data", d, data_name)):
        if Path(str(part["path"])).is_dir():   # a server folder (image set, checkpoint): read in place, not copied
            keys[key] = str(part["path"])
            del copies[name]
    return keys, copies, f"{model_name} on {data_name}"


#: what turns the data's rows into model input, as the InputSpec names it: an image set's preprocessing, a text
#: checkpoint's text column and token count (the Data & model page's choices)
PREP_KEYS = ("resize", "crop", "normalize", "transforms", "text", "max_length")


def prep_text(spec: dict) -> str:
    """The chosen preprocessing in a few words ('resize 256, crop 224, normalize imagenet'); '' when none."""
    words = {"resize": "resize {}", "crop": "crop {}", "normalize": "normalize {}", "transforms": "preset {}",
             "text": "text column {}", "max_length": "max length {} tokens"}
    if not spec.get("text"):
        words.pop("max_length")
    return ", ".join(words[k].format(spec[k]) for k in PREP_KEYS if k in words and spec.get(k) is not None)


# ---- what the user chose to audit (kept across pages in session state) ---------------------------
def inputs() -> dict:
    """The model and data this browser session will audit; the MNIST demo until the user picks others.

    {"source": "demo", "demo": name, "group": [cols]} or {"source": "files", "model": {...}, "data": {...}}
    """
    if "inputs" not in st.session_state:
        from fairprune.data.demos import get_demo

        st.session_state["inputs"] = {"source": "demo", "demo": DEFAULT_DEMO,
                                      "group": list(get_demo(DEFAULT_DEMO).default_group)}
    return st.session_state["inputs"]


def inputs_problem(inp: dict) -> str | None:
    """Why the chosen model and data cannot be queued yet (None: they can). Every page that queues work on them
    asks this first, so a run never fails in the worker on what the Data & model page already refused."""
    if inp.get("source") == "demo":
        return None
    m, d = inp.get("model") or {}, inp.get("data") or {}
    if not m and not d:
        return "Choose a model file and a data file on the Data & model page first (or the built-in demo there)."
    if not m:
        return "Choose a model file on the Data & model page first: only the data file is chosen."
    if not d:
        return "Choose a data file on the Data & model page first: only the model file is chosen."
    for part, what in ((m, "model"), (d, "data")):
        if not Path(str(part.get("path", ""))).exists():
            return (f"The {what} file {part.get('name', '')} is no longer on the server (uploads are kept for a day): "
                    "choose it again on the Data & model page.")
    if not m.get("valid"):
        return f"The Data & model page could not load the model {m.get('name', '')}: fix it there first."
    if not d.get("valid"):
        return f"The Data & model page could not read the data {d.get('name', '')}: fix it there first."
    if not inp.get("fits"):
        return (f"The model {m.get('name', '')} does not run on {d.get('name', '')} yet: the Data & model page says "
                "why; fix it there first.")
    return None


def spec_files_problem(spec: dict) -> str | None:
    """Why a finished run's spec cannot be queued again as it is (its files are gone), None when it can."""
    for key in ("model", "data", "train_data"):
        path = spec.get(key)
        if path and not Path(str(path)).exists():
            return (f"The {key.replace('_', ' ')} file {Path(str(path)).name} of this audit is no longer on the "
                    "server (its run was deleted): run the audit again on the Audit page first.")
    return None


def require_inputs(inp: dict) -> bool:
    """Show why the chosen inputs cannot be queued, with a link to fix them; True when they can."""
    problem = inputs_problem(inp)
    if problem:
        st.warning(problem, icon=":material/folder_open:")
        st.page_link(PAGES["data"], label="Open Data & model", icon=":material/folder_open:")
    return problem is None


def describe_inputs(inp: dict) -> str:
    if inp.get("source") == "demo":
        return f"the built-in **{inp['demo']}** demo, groups by {' & '.join(inp['group'])}"
    m, d = inp.get("model") or {}, inp.get("data") or {}
    arch = f" ({m['arch']})" if m.get("arch") else ""
    prep = prep_text(d)
    return (f"model **{m.get('name', '?')}**{arch} on **{d.get('name', '?')}**, label `{d.get('label', '?')}`, "
            f"groups by {' & '.join(d.get('group') or ['?'])}" + (f"; {escape_markdown(prep)}" if prep else ""))


# ---- the session's choices, kept across a reload --------------------------------------------------------
#: The query parameter that names this browser session's upload folder, so that a reload finds its files again.
SESSION_PARAM = "s"
INPUTS_FILE = "inputs.json"
_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


def _uploads_root() -> Path:
    return store().home / "uploads"


def restore_session() -> None:
    """After a reload (a new Streamlit session), take back the chosen model and data of the session named by
    ``?s=``: its upload folder and the choices saved there. Files outside that folder or the server folders are
    never taken back. Called by the router before ``files.session_id()``."""
    if "session_uuid" in st.session_state:
        return
    sid = st.query_params.get(SESSION_PARAM, "")
    folder = _uploads_root() / sid
    if not _SESSION_ID.match(sid) or not folder.is_dir():
        return
    st.session_state["session_uuid"] = sid
    try:
        saved = json.loads((folder / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(saved, dict) or saved.get("source") not in ("demo", "files"):
        return
    if saved["source"] == "files":
        from app.files import inside_data_dirs, inside_data_dirs_folder

        for kind in ("model", "data"):
            part = saved.get(kind)
            if not part:
                continue
            path = Path(str(part.get("path", ""))).resolve()
            if not ((path.is_file() and (path.is_relative_to(folder.resolve()) or inside_data_dirs(path)))
                    or inside_data_dirs_folder(path)):
                return                                   # not this session's file: choose again
            if part.get("origin", "upload") == "upload":
                st.session_state[f"staged-{kind}"] = ("restored", str(path))
    st.session_state["inputs"] = saved
    st.session_state["inputs-saved"] = json.dumps(saved, sort_keys=True)


def name_session(session_id: str) -> None:
    """Name this session in the address (``?s=``), so that a reload finds its chosen inputs again
    (:func:`restore_session`). Anyone given the address sees the same chosen files."""
    if st.query_params.get(SESSION_PARAM) != session_id:
        st.query_params[SESSION_PARAM] = session_id


def save_inputs(session_id: str) -> None:
    """Save the session's chosen inputs in its upload folder, for :func:`restore_session` after a reload."""
    inp = st.session_state.get("inputs")
    if not isinstance(inp, dict):
        return
    try:
        text = json.dumps(inp, sort_keys=True)
    except (TypeError, ValueError):                     # a loaded object left in it: nothing to keep
        return
    if st.session_state.get("inputs-saved") == text:
        return
    folder = _uploads_root() / session_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INPUTS_FILE).write_text(text)
    st.session_state["inputs-saved"] = text


# ---- runs -------------------------------------------------------------------------------------------
def run_label(run: Run) -> str:
    """A run's name in the run pickers: unique, because a selectbox keeps its choice by this text.

    Two runs with one title queued in the same minute (the demo clicked twice, or in two sessions) would
    otherwise share a label, and a page showing one could switch to the other.
    """
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created))
    return f"{run.title} · {when} · {run.id}" if run.title else f"{run.id} · {when}"


def run_inputs(run: Run) -> str:
    sp = run.spec
    levels = ", ".join(f"{100 * float(s):g}%" for s in sp.get("sparsities", []))
    group = " & ".join(sp.get("group") or [])
    if sp.get("demo"):
        what = f"demo {sp['demo']}"
    else:
        what = f"{Path(str(sp.get('model'))).name} on {Path(str(sp.get('data'))).name}"
    prep = prep_text(sp)
    return (f"{what}; groups: {group}; {sp.get('method', 'global_magnitude')} at {levels}"
            + (f"; {prep}" if prep else ""))


def sparsity_text(levels) -> str:
    return ", ".join(f"{100 * float(s):g}%" for s in levels)


def parse_sparsities(text: str) -> tuple[float, ...]:
    """'0.5, 0.9' or '50% 90%' -> (0.5, 0.9). Raises InputError with what was wrong."""
    parts = [p for p in re.split(r"[,\s;]+", text.strip()) if p]
    if not parts:
        raise InputError("sparsity levels: expected one or more numbers such as 0.5, 0.9; found nothing")
    out = []
    for p in parts:
        try:
            v = float(p[:-1]) / 100 if p.endswith("%") else float(p)
        except ValueError:
            raise InputError(f"sparsity levels: expected numbers such as 0.5, 0.9 or 50%, 90%; found {p!r}") from None
        if not 0 < v < 1:
            raise InputError(f"sparsity levels: each must be a fraction between 0 and 1 (0.9 = 90% of weights "
                             f"removed); found {p!r}")
        out.append(v)
    if len(set(out)) != len(out):
        raise InputError(f"sparsity levels: expected distinct levels; found {text.strip()!r}")
    return tuple(sorted(out))


def _cancel(run_id: str) -> None:
    try:
        store().request_cancel(run_id)
    except KeyError:
        pass


def show_run(key: str, run_id: str) -> None:
    """Make the run picker ``key`` show ``run_id`` (just queued, or opened from the Runs page) on its next render."""
    st.session_state[key] = run_id


def pick_run(runs: list[Run], *, label: str, key: str) -> Run | None:
    """A picker over ``runs``: the run the user last queued or opened here (``show_run``, or ``?run=`` from the
    Runs page), else the one picked before, else the newest. Its progress while it runs, its error if it stopped;
    the run itself once it is done (None otherwise)."""
    by = {r.id: r for r in runs}
    ids = list(by)
    opened = st.query_params.get("run")
    if opened in by and st.session_state.get(f"{key}-opened") != opened:   # opened from the Runs page
        st.session_state[f"{key}-opened"] = opened
        st.session_state[key] = opened
    if st.session_state.get(key) not in by:      # deleted meanwhile: fall back to the newest
        st.session_state.pop(key, None)
    # no status in the labels: the browser keeps showing a chosen option's first label ('· queued') after
    # the run is done; the state is said below the picker (progress, error or result)
    rid = st.selectbox(label, ids, key=key, format_func=lambda i: run_label(by[i]))
    run = by[rid]
    if run.active:
        progress_panel(run.id)
    elif run.status != "done":
        st.error(message(run.error or f"The run was {run.status}."), icon=":material/error:")
    return run if run.status == "done" else None


@st.fragment(run_every=POLL_S)
def watch_runs(statuses: dict[str, str]) -> None:
    """Rerun the page when any of these runs changes status (a table of statuses, a banner of running runs)."""
    s = store()
    for rid, status in statuses.items():
        run = get_run(s, rid)
        if run is None or run.status != status:
            st.rerun()


def progress_text(run: Run) -> str:
    """What the run is doing, in the library's words: its last step ('level 2 of 4 (sparsity 0.8) done', 'seed 1
    of 2: method 3 of 4 (reweighted) fine-tuned for 2 epochs', a diagnostics step) and the step count of the
    whole run. The library reports the unit and the total; this only prints them."""
    total, done, msg = run.progress_total, run.progress_done, (run.progress_message or "").strip()
    if run.status == "queued":
        return "Waiting for the background worker to pick this run up…"
    if done == 0 or not total:
        return "Loading the model and data…"
    return f"Step {done} of {total}: {msg}" if msg else f"Step {done} of {total}"


def about_to_end(run: Run | None) -> bool:
    """The run is on its last step (or past it): the page looks at the store more often (:data:`FAST_POLL_S`), so
    that its result shows soon after it ends."""
    return (run is not None and run.status == "running" and bool(run.progress_total)
            and run.progress_done >= run.progress_total - 1)


def progress_panel(run_id: str) -> None:
    """Live progress of one run, with a Cancel button; reruns the whole page once the run stops. It looks at the
    store every :data:`POLL_S` s, every :data:`FAST_POLL_S` s once the run is on its last step; one poller either
    way (two fragments polling at once raced Streamlit's full reruns)."""
    (_progress_fast if about_to_end(get_run(store(), run_id)) else _progress_slow)(run_id)


@st.fragment(run_every=POLL_S)
def _progress_slow(run_id: str) -> None:
    _progress(run_id, fast=False)


@st.fragment(run_every=FAST_POLL_S)
def _progress_fast(run_id: str) -> None:
    _progress(run_id, fast=True)


def _progress(run_id: str, *, fast: bool) -> None:
    s = store()
    run = get_run(s, run_id)
    if run is None:
        st.warning("This run was deleted.")
        return
    if not run.active or (not fast and about_to_end(run)):
        st.rerun()          # the run stopped: the whole page shows its result; or its last step: poll faster
    if run.status == "running" and run.worker_pid not in s.live_workers() and run.id in s.reap():
        # its worker is gone (killed, out of memory, shut down): say so now; a fresh worker takes the queue
        start_worker(s)
        st.rerun()
    total, done = run.progress_total, run.progress_done
    frac = done / total if total else 0.0
    if run.status == "queued" and not s.live_workers():
        start_worker(s)
    text = progress_text(run)
    elapsed = time.time() - (run.started or run.created)
    st.progress(min(max(frac, 0.0), 1.0), text=f"{text} · {elapsed:.0f} s")
    if run.cancel_requested:
        st.caption("Cancelling… the run stops at its next check (within a second or two).")
    else:
        st.button("Cancel this run", key=f"cancel-{run_id}", on_click=_cancel, args=(run_id,),
                  icon=":material/stop_circle:", help="Stop the run; what it measured so far is discarded.")
