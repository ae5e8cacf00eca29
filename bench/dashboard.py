"""Click to first chart, in a real browser: how long a first-time visitor waits for the dashboard's first result.

    .venv/bin/python bench/dashboard.py [--repeats 3] [--only demo|own]

Each repeat starts a fresh server as `make run` does (`python -m app.serve`: the background worker starts and warms
up with the server, then `streamlit run app/main.py`), on a free port with a temporary FAIRPRUNE_HOME, so no worker
was running before and nothing is cached, and drives Debian's Chromium (/usr/bin/chromium) with Playwright.
``--plain`` serves with plain `streamlit run app/main.py` instead (the worker starts with the first page shown):

- ``demo``: open the start page and click "Try the demo" as soon as it shows; time from the click until the first
  chart on the results page is visible. Goal: <= 8 s.
- ``own``: open the Data & model page, upload a small model (.pt2 MLP) and its CSV test set, wait for "The model
  runs on this data", open the Audit page and click "Run the audit"; time from that click until the first chart
  is visible. Goal: <= 10 s.

Prints each time, the median of the repeats and its ratio to the goal (< 1.0 meets it), and the machine's load.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
GOALS = {"demo": 8.0, "own": 10.0}
CHART = ".js-plotly-plot"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run app/main.py` on a free port with its own FAIRPRUNE_HOME; stops it and its workers on exit."""

    def __init__(self, home: Path, *, plain: bool = False):
        self.home, self.port, self.plain = home, _free_port(), plain
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "streamlit.log"

    def __enter__(self) -> "Server":
        env = dict(os.environ, FAIRPRUNE_HOME=str(self.home))
        env.pop("FAIRPRUNE_DATA_DIRS", None)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *(("streamlit", "run", "app/main.py") if self.plain else ("app.serve",)),
                 "--server.port", str(self.port),
                 "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
                 "--browser.gatherUsageStats", "false"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"streamlit did not answer within 90 s:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        from fairprune.run.store import RunStore

        pids = set(RunStore(self.home).live_workers(max_age=3600))
        lock = self.home / "worker.lock"
        if lock.is_file() and len(lock.read_text().split()) == 2:
            pids.add(int(lock.read_text().split()[0]))
        for pid in pids:            # only the workers this server started (by pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _user_files(folder: Path) -> tuple[Path, Path]:
    """A small user model and its test set: a 3-class table of 600 rows in two groups, an MLP trained on it in a
    second, exported with torch.export (.pt2), as a user would bring them."""
    import numpy as np
    import pandas as pd
    import torch

    from fairprune.zoo import save_pt2

    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(size=(n, 6)).astype(np.float32)
    group = np.where(rng.random(n) < 0.75, "north", "south")
    score = np.where(group == "north", x[:, 0] + 0.5 * x[:, 1], x[:, 2] - x[:, 3])
    label = (score > 0).astype(int) + (score > 1).astype(int)
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)]).assign(outcome=label, region=group)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(label)
    for _ in range(80):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    csv, pt2 = folder / "loans.csv", folder / "loan_mlp.pt2"
    df.to_csv(csv, index=False)
    save_pt2(model.eval(), torch.zeros(2, 6), pt2)
    return pt2, csv


def _breakdown(home: Path, t_click: float, t_chart: float) -> str:
    """Where the wait went, from the run store's clock: queued (click to the worker's claim), running, and the
    page's share (the run's end to the chart in the browser)."""
    from fairprune.run.store import RunStore

    runs = RunStore(home).list()
    if not runs or runs[0].started is None or runs[0].finished is None:
        return "(no finished run)"
    r = runs[0]
    return (f"queued {r.started - t_click:.1f} s, running {r.finished - r.started:.1f} s, "
            f"shown {t_chart - r.finished:.1f} s later")


def time_demo(browser, url: str) -> tuple[float, float]:
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    button = page.get_by_role("button", name="Try the demo")
    button.wait_for()
    t0, wall = time.monotonic(), time.time()
    button.click()
    page.locator(CHART).first.wait_for(state="visible")
    took = time.monotonic() - t0
    page.context.close()
    return took, wall


def _choose(page, open_box, option: str, then: str, *, close: bool = False, tries: int = 4) -> None:
    """Pick ``option`` in the box ``open_box`` opens, until ``then`` shows (a click during a rerun can be lost).
    ``close``: press Escape after it (a multiselect stays open; after a selectbox's choice Escape was seen to undo
    it)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(tries):
        open_box()
        page.locator('[role="option"]').filter(has_text=re.compile(f"^{re.escape(option)}$")).first.click()
        if close:
            page.keyboard.press("Escape")
        try:
            page.get_by_text(then).first.wait_for(timeout=15_000)
            return
        except PlaywrightTimeout:
            if attempt == tries - 1:
                page.screenshot(path=str(Path(tempfile.gettempdir()) / "bench_dashboard_failed.png"), full_page=True)
                raise


def time_own(browser, url: str, pt2: Path, csv: Path) -> tuple[float, float]:
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{url}/data")
    page.get_by_text("My own model and data").click()
    page.locator('[data-testid="stFileUploader"]').filter(has_text="Model file").locator(
        'input[type="file"]').set_input_files(str(pt2))
    page.locator('[data-testid="stFileUploader"]').filter(has_text="Data file").locator(
        'input[type="file"]').set_input_files(str(csv))
    # the label and group are asked for, not guessed: pick them as a user would
    page.get_by_text("Choose the label column and the group column(s) above").wait_for()
    page.get_by_text("loan_mlp.pt2: pt2").wait_for()            # the model is loaded: no rerun in flight
    _choose(page, lambda: page.get_by_role("combobox", name="Label column", exact=True).click(), "outcome",
            "Choose the group column(s) above")
    _choose(page, lambda: page.locator('[data-testid="stMultiSelect"]').filter(
        has_text="Group column(s)").locator("input").click(), "region", "The model runs on this data", close=True)
    page.get_by_role("link", name="Audit").first.click()
    button = page.get_by_role("button", name="Run the audit")
    button.wait_for()
    page.get_by_text("loan_mlp.pt2").first.wait_for()
    t0, wall = time.monotonic(), time.time()
    button.click()
    page.locator(CHART).first.wait_for(state="visible")
    took = time.monotonic() - t0
    page.context.close()
    return took, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=sorted(GOALS), action="append")
    ap.add_argument("--plain", action="store_true",
                    help="serve with plain `streamlit run app/main.py` (the worker starts with the first page shown)")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        print(f"bench/dashboard.py: {CHROMIUM} is missing (make chromium): skipped")
        return 0
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    kinds = args.only or ["demo", "own"]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="fairprune-bench-") as tmp, sync_playwright() as p:
        pt2, csv = _user_files(Path(tmp)) if "own" in kinds else (None, None)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for i in range(args.repeats):
                for kind in kinds:
                    home = Path(tmp) / f"home-{kind}-{i}"
                    home.mkdir()
                    with Server(home, plain=args.plain) as server:     # fresh: no worker before, nothing cached
                        took, wall = time_demo(browser, server.url) if kind == "demo" else \
                            time_own(browser, server.url, pt2, csv)
                        where = _breakdown(home, wall, wall + took)
                    times[kind].append(took)
                    print(f"  {kind} #{i + 1}: {took:.1f} s: {where} (load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            browser.close()
    how = "streamlit run app/main.py" if args.plain else "python -m app.serve (make run)"
    print(f"dashboard click-to-first-chart, served by {how}, {os.cpu_count()} CPUs, median of {args.repeats}:")
    for kind in kinds:
        med = statistics.median(times[kind])
        what = "Try the demo" if kind == "demo" else "own small model (.pt2 + CSV)"
        print(f"  {what:32s} {med:5.1f} s  (runs: {', '.join(f'{t:.1f}' for t in times[kind])})  "
              f"goal {GOALS[kind]:.0f} s  ratio {med / GOALS[kind]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
