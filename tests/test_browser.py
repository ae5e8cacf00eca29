"""The dashboard in a real browser: `streamlit run app/main.py` driven through Debian's Chromium.

The server runs as a subprocess on a free port with its own FAIRPRUNE_HOME; Chromium is Debian's
(/usr/bin/chromium, installed by `make test`), never a Playwright download. Screenshots land in
tests/artifacts/ for a person to look at.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
WIDTH = 1400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer /_stcore/health within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop_workers(home: Path) -> None:
    """Stop the background workers the app started for this home (by pid: only ours)."""
    from fairprune.run.store import RunStore

    pids = set(RunStore(home).live_workers(max_age=3600))
    lock = home / "worker.lock"
    if lock.is_file() and len(lock.read_text().split()) == 2:
        pids.add(int(lock.read_text().split()[0]))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def serve_dashboard(home: Path, env: dict):
    """The base url of ``streamlit run app/main.py`` served with ``env`` (FAIRPRUNE_HOME = ``home``); stopped, with
    its workers, on exit."""
    port = _free_port()
    log = home / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _stop_workers(home)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base url, FAIRPRUNE_HOME) of a dashboard served for this module."""
    home = tmp_path_factory.mktemp("browser_home")
    env = dict(os.environ, FAIRPRUNE_HOME=str(home))
    env.pop("FAIRPRUNE_DATA_DIRS", None)
    with serve_dashboard(home, env) as url:
        yield url, home


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`make chromium`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": WIDTH, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    try:
        yield pg
    finally:
        ctx.close()


def screenshot(pg, name: str) -> Path:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport to its height first."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = pg.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                         " return m ? m.scrollHeight : document.body.scrollHeight; }")
    pg.set_viewport_size({"width": WIDTH, "height": max(900, int(height) + 40)})
    pg.wait_for_timeout(1000)   # plotly redraws at the new size
    path = ARTIFACTS / name
    pg.screenshot(path=str(path), full_page=True)
    pg.set_viewport_size({"width": WIDTH, "height": 900})
    return path


def no_exception(pg) -> None:
    assert pg.locator('[data-testid="stException"]').count() == 0
    assert pg.get_by_text("Something went wrong").count() == 0


def test_try_the_demo_shows_results(server, page):
    url, _ = server
    page.goto(url)
    button = page.get_by_role("button", name="Try the demo")
    button.wait_for()
    no_exception(page)
    button.click()
    page.wait_for_url(re.compile(r".*/results\?run=.+"))
    # a generous wait, not a speed target (the demo takes seconds on an idle 2-core CPU; speed lives in bench/)
    page.locator(".js-plotly-plot").nth(2).wait_for(timeout=240_000)
    headline = page.locator(".fp-headline")
    headline.wait_for()
    text = headline.inner_text()
    assert re.search(r"At 95% sparsity group (inverted|standard) (loses|gains)", text), text
    assert page.locator(".js-plotly-plot").count() == 5   # accuracy, drop, violation, size & latency, size axis
    no_exception(page)
    screenshot(page, "results.png")


def test_bad_csv_shows_its_message_on_the_data_page(server, page, tmp_path):
    """Issue 14.8: a CSV whose columns are not named 'label' and 'group' first gets a question, not a red alarm;
    the library's message comes once both choices are made."""
    url, _ = server
    bad = tmp_path / "no_group.csv"
    bad.write_text("f0,f1,outcome,team\n0.1,0.2,1,a\n0.3,0.1,0,b\n")
    page.goto(f"{url}/data")
    page.get_by_text("My own model and data").click()
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Data file")
    uploader.locator('input[type="file"]').set_input_files(str(bad))
    page.get_by_text("Choose the label column and the group column(s) above").wait_for()
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    screenshot(page, "csv_asks_first.png")
    _selectbox(page, "Label column").click()
    page.locator('[role="option"]').filter(has_text=re.compile("^f1$")).click()
    page.get_by_text("Choose the group column(s) above").wait_for()
    page.wait_for_timeout(1500)
    page.locator('[data-testid="stMultiSelect"]').filter(has_text="Group column(s)").locator("input").click()
    page.locator('[role="option"]').filter(has_text=re.compile("^team$")).click()
    page.keyboard.press("Escape")
    page.wait_for_timeout(1500)
    # the label just chosen is kept while the group is chosen
    assert _selectbox(page, "Label column").input_value() == "f1"
    error = page.locator('[data-testid="stAlertContentError"]').filter(has_text="no_group.csv")
    error.wait_for()
    assert "label column 'f1' must hold integer class indices" in error.inner_text()
    no_exception(page)
    screenshot(page, "bad_csv.png")


def test_runs_page_lists_runs(server, page):
    from fairprune.run import jobs
    from fairprune.engine.audit import AuditSpec
    from fairprune.run.store import RunStore

    url, home = server
    store = RunStore(home)
    spec = AuditSpec(sparsities=(0.5, 0.9), demo="mnist", group=("label",))
    run_id = store.create_run(spec.to_dict(), title="digits as groups")
    while store.get(run_id).active:                      # the app's worker may already be serving this home
        jobs.run_worker(store, once=True)
        time.sleep(0.2)
    assert store.get(run_id).status == "done"
    page.goto(f"{url}/runs")
    page.get_by_text("Compare two audits", exact=True).wait_for()
    # the table is drawn on a canvas; its cells are in the page for screen readers
    page.locator('[role="gridcell"]', has_text="digits as groups").first.wait_for(state="attached")
    if len(store.list()) >= 2:   # with the demo's run too, the two are compared side by side
        page.locator(".js-plotly-plot").nth(5).wait_for()
    page.wait_for_timeout(1000)
    no_exception(page)
    screenshot(page, "runs.png")


def test_compression_variants_on_the_results_page(server, page):
    from fairprune.run import jobs
    from fairprune.engine.audit import AuditSpec
    from fairprune.run.store import RunStore

    url, home = server
    store = RunStore(home)
    spec = AuditSpec(sparsities=(0.9,), demo="adult", group=("race",), compress=("int8_dynamic", "nm_2_4+int8_dynamic"),
                     latency=True)                       # timed, as an audit queued from the Audit page is
    run_id = store.create_run(spec.to_dict(), title="adult, pruned and quantized")
    while store.get(run_id).active:                      # the app's worker may already be serving this home
        jobs.run_worker(store, once=True)
        time.sleep(0.2)
    assert store.get(run_id).status == "done", store.get(run_id).error
    page.goto(f"{url}/results?run={run_id}")
    page.get_by_text("Beyond pruning: quantization and 2:4 sparsity").wait_for(timeout=60_000)
    # accuracy, drop, violation, size & latency, size axis, then the variants' drop chart
    page.locator(".js-plotly-plot").nth(5).wait_for()
    assert page.locator(".js-plotly-plot").count() == 6
    assert page.get_by_text("Every model on one size axis").count() >= 1
    # each variant's latency with its spread and runs, and how it compares with dense (never a bare median)
    from fairprune.core.result import AuditResult
    from fairprune.present.reading import variant_latencies

    timed = variant_latencies(AuditResult.from_dict(store.get(run_id).result))
    grid = page.locator('[data-testid="stDataFrame"]', has_text="nm_2_4+int8_dynamic").first
    for method, t in timed.items():
        row = grid.locator('[role="row"]', has_text=method).first
        row.locator('[role="gridcell"]', has_text="runs)").first.wait_for(state="attached")
        assert t.spread_text() in row.locator('[role="gridcell"]').all_inner_texts()
    assert list(timed) == ["int8_dynamic", "nm_2_4+int8_dynamic"]
    no_exception(page)
    screenshot(page, "compression.png")


# ---- issue 14: what a person sees after starting runs, reloading, switching runs ------------------------
def _run_queued(store, run_id: str, timeout: float = 240) -> None:
    """Run what is queued (the app's worker may already be serving this home) until ``run_id`` has ended."""
    from fairprune.run import jobs

    deadline = time.monotonic() + timeout
    while store.get(run_id).active:
        assert time.monotonic() < deadline, f"run {run_id} still {store.get(run_id).status}"
        jobs.run_worker(store, once=True)
        time.sleep(0.2)


def _selectbox(pg, label: str):
    return pg.get_by_role("combobox", name=label, exact=True)


def _shows(pg, label: str, text: str, timeout: float = 30) -> str:
    """Wait until the selectbox ``label`` shows a choice containing ``text``; return what it shows."""
    box = _selectbox(pg, label)
    box.wait_for()
    deadline = time.monotonic() + timeout
    while text not in (value := box.input_value()):
        if time.monotonic() >= deadline:
            screenshot(pg, "debug_shows.png")
        assert time.monotonic() < deadline, f"{label!r} shows {value!r}, expected {text!r} in it"
        pg.wait_for_timeout(250)
    return value


FOUND = re.compile("Recommended:|No measured level met the budget")


def _search_button(pg):
    """The page's Search button (a table's toolbar has a 'Search' button of its own)."""
    return pg.locator('button:not([kind="elementToolbar"])', has_text="Search")


def test_operating_point_follows_the_new_search_to_its_result(server, page):
    """Bugs 1 and 4: a second search (another budget) is shown, followed to its end, then its result; the
    picker's labels say 'done' once the runs are done."""
    from fairprune.run.store import RunStore

    url, home = server
    store = RunStore(home)
    page.goto(f"{url}/search")
    _search_button(page).wait_for()
    page.get_by_role("spinbutton", name="Most levels measured per method").fill("7")
    page.get_by_role("spinbutton", name="Most levels measured per method").press("Enter")
    page.wait_for_timeout(500)
    _search_button(page).click()
    page.wait_for_timeout(1000)
    [first] = store.list(kind="search")
    _shows(page, "Search run", first.id)
    _run_queued(store, first.id)
    assert store.get(first.id).status == "done", store.get(first.id).error
    page.get_by_text(FOUND).first.wait_for(timeout=30_000)
    page.get_by_role("spinbutton", name="Max violation (points)").fill("5")
    page.get_by_role("spinbutton", name="Max violation (points)").press("Enter")
    page.wait_for_timeout(500)
    _search_button(page).click()
    page.wait_for_timeout(1000)
    [second] = [r for r in store.list(kind="search") if r.id != first.id]
    _shows(page, "Search run", second.id, timeout=10)         # the picker moved to the new search at once
    assert second.spec["max_violation"] == 0.05
    _run_queued(store, second.id)
    page.get_by_text(FOUND).first.wait_for(timeout=30_000)      # followed to its end, then its result
    shown = _shows(page, "Search run", second.id, timeout=1)
    assert "queued" not in shown and "running" not in shown, shown     # no status frozen into the label
    assert page.get_by_text("Waiting for the background worker").count() == 0
    no_exception(page)
    screenshot(page, "search_second_run.png")


def test_operating_point_table_speaks_one_format(server, page):
    """Operating point's table reads like the Results tables: sparsity as 50%, accuracy as 94.9%, points with one
    decimal, '—' where a figure was not measured (before: 0.5, 94.9333 and an empty cell)."""
    from fairprune.run.store import RunStore

    url, home = server
    store = RunStore(home)
    point = {"sparsity": 0.5, "violation": 0.0123456, "violation_ci95": [0.001, 0.0345],
             "overall_accuracy": 0.949333, "overall_drop": 0.004667, "worst_group": "inverted",
             "worst_group_drop": 0.02151, "feasible": True, "size_bytes": None}
    over = dict(point, sparsity=0.975, violation=0.2, violation_ci95=None, overall_accuracy=0.5,
                overall_drop=-0.01, feasible=False, size_bytes=12_345)
    found = {"budget": {"max_violation": 0.02}, "best": {"method": "global_magnitude", **point},
             "methods": {"global_magnitude": {"frontier": [over, point], "recommended": point, "note": "ok"}}}
    rid = store.create_run({"demo": "mnist", "group": ["population"], "methods": ["global_magnitude"],
                            "max_violation": 0.02}, kind="search", title="a formatted search")
    claimed = store.claim_next(worker_pid=0)          # ours: the app's worker does not start a real search
    assert claimed is not None and claimed.id == rid
    store.finish(rid, found)
    page.goto(f"{url}/search?run={rid}")
    _shows(page, "Search run", rid)
    grid = page.locator('[data-testid="stDataFrame"]').filter(has_text="overall accuracy").first
    grid.locator('[role="gridcell"]', has_text="94.9%").first.wait_for(state="attached")
    rows = [r.locator('[role="gridcell"]').all_inner_texts() for r in grid.locator('[role="row"]').all()]
    rows = [r for r in rows if r]
    assert [r[1:7] for r in rows] == [["50%", "★ recommended", "yes", "94.9%", "+0.5", "1.2"],
                                      ["97.5%", "", "no", "50.0%", "-1.0", "20.0"]], rows
    cells = [c for r in rows for c in r]
    assert "—" in cells and "0.1 to 3.5" in cells, repr(rows)
    assert not any(c in ("0.5", "0.975", "None") or "94.93" in c for c in cells), cells
    no_exception(page)
    screenshot(page, "search_table_format.png")
    store.delete(rid)


def test_why_level_picker_and_charts_come_from_the_same_run(server, page):
    """Bug 3: switching from a 4-level run to a 5-level one, the checked level is the one the charts show."""
    from fairprune.engine.audit import AuditSpec
    from fairprune.run.store import RunStore

    url, home = server
    store = RunStore(home)
    diag = {"hessian_rows": 16, "power_iterations": 2, "hutchinson_probes": 1}
    five = store.create_run(AuditSpec(sparsities=(0.5, 0.7, 0.8, 0.9, 0.95), demo="adult", group=("race",),
                                      diagnostics=diag).to_dict(), title="five levels")
    _run_queued(store, five)
    four = store.create_run(AuditSpec(sparsities=(0.5, 0.8, 0.9, 0.98), demo="adult", group=("race",),
                                      diagnostics=diag).to_dict(), title="four levels")
    _run_queued(store, four)
    assert store.get(five).status == store.get(four).status == "done"

    def checked() -> str:
        radio = page.locator('[data-testid="stRadio"]').filter(has_text="Model")
        radio.wait_for()
        screenshot(page, "why_switched_run.png")
        picked = radio.locator('label:has(input:checked)')
        return picked.first.inner_text().strip() if picked.count() else "(none checked)"

    page.goto(f"{url}/why")
    _shows(page, "Finished audit", "four levels")
    page.get_by_text("dense vs 98%").first.wait_for()
    assert checked() == "98%"
    _selectbox(page, "Finished audit").click()
    page.locator('[role="option"]').filter(has_text="five levels").click()
    _shows(page, "Finished audit", "five levels")
    page.wait_for_timeout(1500)
    shown = checked()
    page.get_by_text(f"Mean per-sample gradient norm, dense vs {shown}").wait_for()
    assert shown == "95%"                                 # the five-level run's own default, its charts too
    assert page.get_by_text("dense vs 98%").count() == 0
    no_exception(page)
    screenshot(page, "why_switched_run.png")


def test_progress_names_its_unit_and_total(server, page):
    """Bug 5: a one-level mitigation says 'Step 2 of 3' and what the step was, not 'sparsity levels'."""
    from fairprune.run.store import RunStore

    url, home = server
    store = RunStore(home)
    pid = os.getpid()
    store.heartbeat(pid)                                  # this test is the worker holding the run
    rid = store.create_run({"sparsity": 0.9, "demo": "mnist", "method": "reweighted", "epochs": 1},
                           kind="mitigate", title="one level")
    # the app's worker may be polling this home: claim until this run is ours
    while store.get(rid).status == "queued":
        store.claim_next(pid)
    if store.get(rid).worker_pid != pid:
        pytest.skip("the app's worker took the run first")
    store.set_progress(rid, 2, 3, "seed 0: pruned model measured")
    try:
        page.goto(f"{url}/mitigate?run={rid}")
        bar = page.locator('[data-testid="stProgress"]')
        bar.wait_for()
        text = bar.inner_text()
        assert "Step 2 of 3: seed 0: pruned model measured" in text and "sparsity levels" not in text, text
        screenshot(page, "mitigate_progress.png")
    finally:
        store.mark_cancelled(rid)
        store.forget_worker(pid)                          # not a worker the fixture should stop


def test_operating_point_refuses_a_model_without_data(server, page, table_files):
    """Bug 2: a model and no data: the page says what is missing and offers no Search."""
    _, weights, _, _ = table_files
    url, _ = server
    page.goto(f"{url}/data")
    page.get_by_text("My own model and data").click()
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Model file")
    uploader.locator('input[type="file"]').set_input_files(str(weights))
    page.get_by_text("Architecture (bare weights only)").wait_for()
    page.wait_for_timeout(1500)
    page.get_by_role("link", name="Operating point").click()
    page.get_by_text("only the model file is chosen").wait_for()
    assert _search_button(page).is_disabled()
    no_exception(page)
    screenshot(page, "search_without_data.png")


def test_a_reload_keeps_the_users_files(server, page, table_files, tmp_path):
    """Bug 7: after a reload the Audit page still audits the user's files, not the demo; Results opened from
    the sidebar shows the user's run."""
    from fairprune.zoo import save_pt2

    import torch

    _, _, df, model = table_files
    csv = tmp_path / "people.csv"
    df.drop(columns="sex").to_csv(csv, index=False)
    pt2 = tmp_path / "people_mlp.pt2"
    save_pt2(model, torch.zeros(2, 4), pt2)
    url, _ = server
    page.goto(f"{url}/data")
    page.get_by_text("My own model and data").click()
    page.locator('[data-testid="stFileUploader"]').filter(has_text="Model file").locator(
        'input[type="file"]').set_input_files(str(pt2))
    page.locator('[data-testid="stFileUploader"]').filter(has_text="Data file").locator(
        'input[type="file"]').set_input_files(str(csv))
    page.get_by_text("The model runs on this data").wait_for(timeout=60_000)
    page.reload()
    page.get_by_role("link", name="Audit").first.click()
    page.get_by_text("people_mlp.pt2").first.wait_for()
    assert page.get_by_text("built-in").count() == 0
    screenshot(page, "audit_after_reload.png")
    page.get_by_role("button", name="Run the audit").click()
    page.wait_for_url(re.compile(r".*/results\?.*run=.+"))
    page.get_by_role("link", name="Runs").click()
    page.get_by_text("Compare two audits", exact=True).wait_for()
    page.get_by_role("link", name="Results").click()
    _shows(page, "Run", "people_mlp.pt2 on people.csv")
    no_exception(page)
    screenshot(page, "results_from_sidebar.png")


def test_runs_lists_every_kind_and_opens_a_search_on_its_page(server, page):
    """Item 13: searches and mitigations are listed beside audits, open on their own pages; item 9: a stopped
    run's message names the setting, not the command-line flag."""
    from fairprune.run.store import RunStore

    url, home = server
    store = RunStore(home)
    point = {"sparsity": 0.8, "violation": 0.01, "overall_accuracy": 0.9, "overall_drop": 0.01, "worst_group": "a",
             "feasible": True}
    found = {"budget": {"max_violation": 0.02}, "best": {"method": "global_magnitude", **point},
             "methods": {"global_magnitude": {"frontier": [point], "recommended": point, "note": "ok"}}}
    search = store.create_run({"demo": "mnist", "group": ["population"], "methods": ["global_magnitude"],
                               "max_violation": 0.02}, kind="search", title="a listed search")
    mit = store.create_run({"sparsity": 0.9, "demo": "mnist", "method": "reweighted"}, kind="mitigate",
                           title="a listed repair")
    for rid in (search, mit):                   # finished here, before the app's worker could take them
        store.claim_next(worker_pid=os.getpid())
    store.finish(search, found)
    store.fail(mit, "reweighted does not fine-tune, so --when before does not apply to it; expected --when after")
    page.goto(f"{url}/runs")
    box = _selectbox(page, "Run")
    box.click()
    page.locator('[role="option"]').filter(has_text="a listed repair").click()
    _shows(page, "Run", "mitigation · a listed repair")
    error = page.locator('[data-testid="stAlertContentError"]').filter(has_text="does not fine-tune")
    error.wait_for()
    assert "--when" not in error.inner_text() and "the setting 'when'" in error.inner_text()
    assert page.get_by_role("button", name="Requeue").count() == 1
    screenshot(page, "runs_every_kind.png")
    box.click()
    page.locator('[role="option"]').filter(has_text="a listed search").click()
    _shows(page, "Run", "operating point · a listed search")
    page.wait_for_timeout(1000)
    page.locator("[data-testid=stBaseButton-secondary]", has_text="Open").first.click()
    page.wait_for_url(re.compile(r".*/search\?.*run=" + search))
    _shows(page, "Search run", search)
    page.get_by_text("Recommended:").first.wait_for()
    no_exception(page)


# ---- issue 14, items 6, 11, 12: Results opens with "What this means"; warnings where the numbers are; latency ----

def _finished_with_warnings(home: Path, title: str) -> tuple[str, dict]:
    """A real audit of the MNIST demo with every digit a group (10 groups) and latency timed, finished in the
    store with the engine's own chance warning for its 90% level (chance 97% on these labels)."""
    from dataclasses import replace

    import numpy as np

    from fairprune.core.result import AuditResult
    from fairprune.engine.audit import AuditSpec
    from fairprune.engine.sanity import sanity_warnings
    from fairprune.run import jobs
    from fairprune.run.store import RunStore

    spec = AuditSpec(sparsities=(0.5, 0.9), demo="mnist", group=("label",), latency=True)
    store = RunStore(home)
    run_id = store.create_run(spec.to_dict(), title=title)
    while store.get(run_id).active:                      # the app's worker may already be serving this home
        jobs.run_worker(store, once=True)
        time.sleep(0.2)
    assert store.get(run_id).status == "done", store.get(run_id).error
    res = AuditResult.from_dict(store.get(run_id).result)
    names = res.group_names
    y = np.zeros(100, dtype=int)
    y[:3] = 1
    groups = np.array([names[i % len(names)] for i in range(100)], dtype=object)
    models = [("50% sparsity", replace(res.levels[0].overall, accuracy=0.99)),
              ("90% sparsity", replace(res.levels[1].overall, accuracy=0.10))]
    d = res.to_dict()
    d["warnings"] = sanity_warnings(y, groups, names, 10, replace(res.dense.overall, accuracy=0.99), models)
    store.finish(run_id, d)                              # the finished audit, with the engine's warning added
    return run_id, d


def test_results_open_with_what_this_means_and_warnings_beside_the_level(server, page):
    url, home = server
    run_id, d = _finished_with_warnings(home, "digits, timed, 90% collapsed")
    page.goto(f"{url}/results?run={run_id}")
    meaning = page.locator(".fp-meaning")
    meaning.wait_for(timeout=60_000)
    page.locator(".js-plotly-plot").nth(4).wait_for()
    no_exception(page)
    # "What this means" comes first: above the headline and every chart
    y_meaning = meaning.bounding_box()["y"]
    assert y_meaning < page.locator(".fp-headline").bounding_box()["y"]
    assert y_meaning < page.locator(".js-plotly-plot").first.bounding_box()["y"]
    assert "Read none of this as who pays for pruning: at 90% sparsity" in meaning.inner_text()
    # the collapsed level's warning beside its headline (the 90% level is read first), not only in a list
    warning = page.get_by_text("At 90% sparsity the model's accuracy (10.0%) is at or below chance").first
    assert warning.is_visible()
    assert "beyond chance" not in page.locator(".fp-headline").inner_text()
    # latency: the median with its spread; masked levels labelled; no speed-up claimed inside the spread
    assert page.get_by_text("no speed-up expected without sparse kernels").count() >= 2
    chart_text = page.locator(".js-plotly-plot").nth(3).inner_text()
    assert "unstructured / 2:4 levels: no speed-up expected without sparse kernels" in chart_text
    assert "latency (ms per batch): median, 25th–75th percentile" in chart_text
    # ten groups, ten distinct colours in the accuracy chart's legend
    colours = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')[0].querySelectorAll("
                            "'.legend .traces .legendlines path')].map(p => p.style.stroke)")
    assert len(set(colours)) >= 10, colours
    screenshot(page, "results_meaning_warnings_latency.png")


def test_runs_table_says_why_a_cell_is_blank(server, page):
    from fairprune.run.store import RunStore

    url, home = server
    store = RunStore(home)
    rid = store.create_run({"sparsity": 0.9, "demo": "mnist", "method": "reweighted", "group": ["population"]},
                           kind="mitigate", title="a repair waiting")
    claimed = store.claim_next(worker_pid=0)          # ours, so the app's worker does not start a real repair
    assert claimed is not None and claimed.id == rid
    store.fail(rid, "stopped by the test")
    page.goto(f"{url}/runs")
    page.get_by_text("Compare two audits", exact=True).wait_for()
    page.locator('[role="gridcell"]', has_text="a repair waiting").first.wait_for(state="attached")
    cells = page.locator('[role="gridcell"]').all_inner_texts()
    assert "None" not in cells
    # the table holds the other tests' runs too: read this run's own row
    row = page.locator('[role="row"]', has_text="a repair waiting").first.locator('[role="gridcell"]').all_inner_texts()
    assert row.count("— (not an audit)") == 3, row
    no_exception(page)
    screenshot(page, "runs_blank_cells.png")
    store.delete(rid)


def test_report_shows_latency_spread_and_warnings_beside_charts(server, browser, tmp_path):
    from fairprune.core.result import AuditResult
    from fairprune.present.report import render_html

    _, home = server
    _, d = _finished_with_warnings(home, "digits for the report")
    out = tmp_path / "report.html"
    out.write_text(render_html(AuditResult.from_dict(d)), encoding="utf-8")
    pg = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
    pg.goto(out.as_uri())
    n = int(pg.get_attribute('meta[name="fairprune-charts"]', "content"))
    pg.wait_for_function("n => document.querySelectorAll('.js-plotly-plot svg.main-svg').length >= n", arg=n,
                         timeout=60_000)
    fig = pg.locator("figure", has_text="Accuracy drop per group at 90% sparsity").first
    assert "at or below chance" in fig.locator(".warnings").inner_text()
    table = pg.locator("#footprint table").inner_text()
    assert "no speed-up expected without sparse kernels" in table and " runs)" in table
    ARTIFACTS.mkdir(exist_ok=True)
    pg.wait_for_timeout(500)
    pg.screenshot(path=str(ARTIFACTS / "report_latency_warnings.png"), full_page=True)
    pg.context.close()


def test_why_answers_why_with_two_groups(server, page):
    """Issue 14.10: two groups are compared in words (not 'a rank correlation cannot judge'), Theorem 1's table
    says how loose the bound is, axis titles are words, and no scatter label is cut off at the plot's edge."""
    from fairprune.engine.audit import AuditSpec
    from fairprune.run.store import RunStore

    url, home = server
    store = RunStore(home)
    rid = store.create_run(AuditSpec(sparsities=(0.9,), demo="mnist", group=("population",), diagnostics={
        "hessian_rows": 32, "power_iterations": 4, "hutchinson_probes": 2}).to_dict(), title="two groups")
    _run_queued(store, rid)
    assert store.get(rid).status == "done", store.get(rid).error
    page.goto(f"{url}/why?run={rid}")
    page.get_by_text("Group inverted lost more accuracy than group standard").wait_for()
    assert page.get_by_text("rank correlation cannot judge").count() == 0
    page.get_by_text("The bound is an upper limit, and a loose one").wait_for()
    page.get_by_text("The evaluation rows are balanced by design (750 per group)").wait_for()
    page.locator(".js-plotly-plot").nth(5).wait_for()
    page.wait_for_timeout(1500)
    body = page.locator('[data-testid="stMain"]').inner_text()
    assert "grad_norm_mean" not in body and "margin_mean" not in body
    outside = page.evaluate("""() => {
        const bad = [];
        for (const plot of document.querySelectorAll('.js-plotly-plot')) {
            const area = plot.querySelector('.nsewdrag');
            if (!area) continue;
            const a = area.getBoundingClientRect();
            for (const t of plot.querySelectorAll('.textpoint text')) {
                const r = t.getBoundingClientRect();
                if (r.width === 0) continue;
                if (r.left < a.left - 1 || r.right > a.right + 1 || r.top < a.top - 1 || r.bottom > a.bottom + 1)
                    bad.push(t.textContent);
            }
        }
        return bad; }""")
    assert outside == [], f"scatter labels cut off at the plot's edge: {outside}"
    no_exception(page)
    screenshot(page, "why_two_groups.png")
