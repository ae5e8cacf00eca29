"""Ready in seconds (issue 14): the worker starts with the server's first page, whatever the page, and imports
torch and the engine before it takes its first run. Times are measured in bench/dashboard.py, not here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fairprune.run import jobs

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def worker_calls(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda store=None, **kw: calls.append(store))
    return calls


@pytest.mark.parametrize("page", ["pages_/data.py", "pages_/runs.py", "pages_/why.py"])
def test_the_first_page_shown_starts_the_worker_whatever_it_is(page, worker_calls):
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(page).run()
    assert not at.exception
    assert worker_calls, f"opening {page} first must start the worker (not only the start page)"


def test_warm_up_imports_torch_and_the_audit_pipeline_in_a_fresh_process():
    code = ("import sys; from fairprune.run import jobs; "
            "assert 'torch' not in sys.modules and 'fairprune.engine.audit' not in sys.modules; "
            "t = jobs.warm_up(); "
            "missing = [m for m in jobs.WARM_IMPORTS if m not in sys.modules]; "
            "assert not missing, missing; print(f'{t:.3f}')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) > 0


def test_warm_up_skips_a_module_that_fails_and_says_so(caplog):
    took = jobs.warm_up(("json", "fairprune_no_such_module"))
    assert took >= 0
    assert any("could not import fairprune_no_such_module" in r.getMessage() for r in caplog.records)


def test_the_worker_loop_warms_up_before_its_first_run_when_asked(monkeypatch, tmp_path):
    from fairprune.run.store import RunStore

    order: list[str] = []
    monkeypatch.setattr(jobs, "warm_up", lambda modules=jobs.WARM_IMPORTS: order.append("warm") or 0.0)
    store = RunStore(tmp_path)
    monkeypatch.setattr(store, "claim_next", lambda pid: order.append("claim"))
    jobs.run_worker(store, once=True, warm=True)
    assert order == ["warm", "claim"]
    order.clear()
    jobs.run_worker(store, once=True)             # in-process callers (tests) do not pay for it
    assert order == ["claim"]
