"""Shared pieces of the dashboard: the run store, the worker, errors, what to audit, run progress.

Pages import this module and stay thin: widgets in, library calls, charts out. Nothing here runs an
audit: a run is written to the store and a background worker (fairprune.jobs) executes it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from fairprune import jobs
from fairprune.audit import AuditSpec
from fairprune.errors import InputError
from fairprune.store import Run, RunStore

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
POLL_S = 1.0
#: A worker the app starts exits after this long with nothing to do (the next run starts another).
WORKER_IDLE_EXIT_S = 900.0
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
        st.error(str(err), icon=":material/error:")
    except Exception as err:  # an internal error: say so plainly, keep the traceback in the server log
        log.exception("%s failed", what)
        show_unexpected(what, err)


def show_unexpected(what: str, err: BaseException) -> None:
    st.error(f"{UNEXPECTED}: {what} failed with {type(err).__name__}: {err}. "
             "This is a fairprune bug, not your input; the server log has the details.", icon=":material/warning:")


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
                   "queued until one runs (`fairprune worker`).")


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
    start_worker(s)
    return run_id


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
    return keys, {model_name: m["path"], data_name: d["path"]}, f"{model_name} on {data_name}"


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


def describe_inputs(inp: dict) -> str:
    if inp.get("source") == "demo":
        return f"the built-in **{inp['demo']}** demo, groups by {' & '.join(inp['group'])}"
    m, d = inp.get("model") or {}, inp.get("data") or {}
    arch = f" ({m['arch']})" if m.get("arch") else ""
    return (f"model **{m.get('name', '?')}**{arch} on **{d.get('name', '?')}**, label `{d.get('label', '?')}`, "
            f"groups by {' & '.join(d.get('group') or ['?'])}")


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
    return f"{what}; groups: {group}; {sp.get('method', 'global_magnitude')} at {levels}"


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


def pick_run(runs: list[Run], *, label: str, key: str, show: str | None) -> Run | None:
    """A picker over ``runs`` (default: the run ``show``, else the newest); its progress while it runs, its
    error if it stopped; the run itself once it is done (None otherwise)."""
    by = {r.id: r for r in runs}
    ids = list(by)
    rid = st.selectbox(label, ids, index=ids.index(show) if show in ids else 0, key=key,
                       format_func=lambda i: f"{run_label(by[i])} · {by[i].status}")
    run = by[rid]
    if run.active:
        progress_panel(run.id)
    elif run.status != "done":
        st.error(run.error or f"The run was {run.status}.", icon=":material/error:")
    else:
        return run
    return None


@st.fragment(run_every=POLL_S)
def progress_panel(run_id: str) -> None:
    """Live progress of one run, with a Cancel button; reruns the whole page once the run stops."""
    s = store()
    run = get_run(s, run_id)
    if run is None:
        st.warning("This run was deleted.")
        return
    if not run.active:
        st.rerun()
    if run.status == "running" and run.worker_pid not in s.live_workers() and run.id in s.reap():
        # its worker is gone (killed, out of memory, shut down): say so now; a fresh worker takes the queue
        start_worker(s)
        st.rerun()
    total, done = run.progress_total, run.progress_done
    frac = done / total if total else 0.0
    if run.status == "queued":
        if not s.live_workers():
            start_worker(s)
        text = "Waiting for the background worker to pick this run up…"
    elif done == 0:
        text = "Loading the model and data, measuring the dense model…"
    else:
        # step 1 is the dense model, then one step per sparsity level
        text = f"Measured the dense model and {done - 1} of {max(total - 1, 0)} sparsity levels"
    elapsed = time.time() - (run.started or run.created)
    st.progress(min(max(frac, 0.0), 1.0), text=f"{text} · {elapsed:.0f} s")
    if run.cancel_requested:
        st.caption("Cancelling… the run stops at its next check (within a second or two).")
    else:
        st.button("Cancel this run", key=f"cancel-{run_id}", on_click=_cancel, args=(run_id,),
                  icon=":material/stop_circle:", help="Stop the run; the levels measured so far are discarded.")
