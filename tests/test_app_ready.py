"""Ready in seconds (issue 14): the server starts the worker before Streamlit, the worker loads the demo and freezes
its heap, the browser loads the chart code early, pages poll faster on a run's last step. Times are measured in
bench/dashboard.py, not here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fairprune.run import jobs
from fairprune.run.store import Run

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
REPO = Path(__file__).resolve().parents[1]


def test_serve_starts_the_worker_before_streamlit(monkeypatch):
    import streamlit.web.cli as cli

    from app import serve

    order: list = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda store=None, **kw: order.append(("worker", kw)) or 123)
    monkeypatch.setattr(cli, "main", lambda *a, **k: order.append(("streamlit", list(sys.argv))) or 0)
    monkeypatch.setattr(sys, "argv", ["serve"])
    assert serve.main(["--server.port", "8765"]) == 0
    assert [o[0] for o in order] == ["worker", "streamlit"]
    assert order[0][1] == {"idle_exit": serve.WORKER_IDLE_EXIT_S}
    assert order[1][1] == ["streamlit", "run", str(serve.MAIN), "--server.port", "8765"]


def test_a_started_worker_polls_its_queue_often(monkeypatch, tmp_path):
    from fairprune.run.store import RunStore

    started: list = []

    class FakePopen:
        pid = 4321

        def __init__(self, cmd, **kw):
            started.append(cmd)

        def poll(self):
            return None

    monkeypatch.setattr(jobs.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(jobs, "_STARTED", [])
    assert jobs.ensure_worker(RunStore(tmp_path)) == 4321
    cmd = started[0]
    assert cmd[cmd.index("--poll") + 1] == str(jobs.WORKER_POLL_S) and jobs.WORKER_POLL_S <= 0.25


def test_warm_demo_loads_the_demo_once_and_none_skips_it(monkeypatch):
    from fairprune.data import demos

    monkeypatch.setenv(jobs.WARM_DEMO_ENV, "none")
    assert jobs.warm_demo() == 0.0
    monkeypatch.delenv(jobs.WARM_DEMO_ENV)
    assert jobs.warm_demo() > 0
    before = demos._dataset.cache_info().hits
    demos.demo_dataset(jobs.WARM_DEMO)               # the audit's load is now a cache hit
    assert demos._dataset.cache_info().hits == before + 1


def test_warm_demo_survives_an_unknown_demo(caplog):
    assert jobs.warm_demo("no_such_demo") >= 0
    assert any("could not load the demo 'no_such_demo'" in r.getMessage() for r in caplog.records)


def test_a_warm_worker_freezes_its_heap_before_its_first_run(tmp_path):
    """In a fresh process: after warming, the garbage collector no longer walks what warming loaded."""
    code = ("import gc; from fairprune.run import jobs; from fairprune.run.store import RunStore; "
            f"jobs.run_worker(RunStore({str(tmp_path)!r}), once=True, warm=True); "
            "print(gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) > 50_000      # torch, pandas, the demo: all frozen


def _run(status: str, done: int, total: int) -> Run:
    return Run(id="r", kind="audit", title="", status=status, spec={}, created=0.0, started=None, finished=None,
               progress_done=done, progress_total=total, progress_message="", error=None, worker_pid=None,
               cancel_requested=False, result=None)


@pytest.mark.parametrize("status,done,total,fast", [
    ("running", 4, 5, True), ("running", 5, 5, True), ("running", 3, 5, False), ("running", 0, 0, False),
    ("queued", 0, 5, False), ("done", 5, 5, False)])
def test_pages_poll_faster_on_a_runs_last_step(status, done, total, fast):
    from app import widgets

    assert widgets.about_to_end(_run(status, done, total)) is fast
    assert widgets.FAST_POLL_S < widgets.POLL_S


def test_the_browser_is_given_the_chart_code_early(monkeypatch):
    from app import widgets

    names = widgets._chart_chunks()
    assert names and all(n.startswith("PlotlyChart.") for n in names), "Streamlit renamed its chart code"
    monkeypatch.setattr(jobs, "ensure_worker", lambda store=None, **kw: None)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    html = [e for e in at.sidebar if getattr(e, "type", "") == "html" or "html" in type(e).__name__.lower()]
    assert any(names[0] in str(e.proto) for e in html), [type(e).__name__ for e in at.sidebar]
