"""Load: five browser sessions at once, each auditing the built-in demo at its own sparsity, on a real server.

The server (``streamlit run app/main.py``, its own FAIRPRUNE_HOME) and Debian's Chromium come from
test_browser.py's fixtures. Five browser contexts (five separate Streamlit sessions) each queue an audit
of the MNIST demo at a different sparsity level, all before any of them finishes; then each must show its
own run's results, and each stored result must equal what ``fairprune.engine.audit.run_spec`` gives for the same
spec in this process (timings aside). Bounded by pytest-timeout.
"""

from __future__ import annotations

import json
import math
import re
import time

import pytest

from test_browser import WIDTH, browser, no_exception, server  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

#: One level per session, so each run, its page and its result are told apart by the level alone.
LEVELS = [0.3, 0.45, 0.6, 0.75, 0.9]


def _pct(level: float) -> str:
    return f"{100 * level:g}%"


def _without_timings(value):
    """The result with the wall-clock measurements (latency_ms, its spread and repeat count) left out everywhere."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("latency_ms", "latency_ms_iqr", "latency_repeats")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _assert_same(stored, direct, where="result"):
    """Equal structure, equal strings/ints/bools, floats equal to 1e-9 relative (same code, same machine)."""
    assert type(stored) is type(direct) or {type(stored), type(direct)} <= {int, float}, (where, stored, direct)
    if isinstance(direct, dict):
        assert stored.keys() == direct.keys(), (where, sorted(stored), sorted(direct))
        for k in direct:
            _assert_same(stored[k], direct[k], f"{where}.{k}")
    elif isinstance(direct, list):
        assert len(stored) == len(direct), where
        for i, (a, b) in enumerate(zip(stored, direct)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(direct, float):
        assert math.isclose(stored, direct, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(stored) and math.isnan(direct)), \
            (where, stored, direct)
    else:
        assert stored == direct, (where, stored, direct)


def test_five_sessions_audit_at_once(server, browser):  # noqa: F811 - the fixtures imported above
    from fairprune.engine.audit import AuditSpec, run_spec
    from fairprune.run.store import RunStore

    url, home = server
    store = RunStore(home)
    existing = {r.id for r in store.list()}
    contexts = [browser.new_context(viewport={"width": WIDTH, "height": 900}) for _ in LEVELS]
    try:
        pages = [ctx.new_page() for ctx in contexts]
        # every session opens the Audit page and enters its own level
        for page in pages:
            page.set_default_timeout(60_000)
            page.goto(f"{url}/audit")
        for page, level in zip(pages, LEVELS):
            page.get_by_text("Custom", exact=True).click()
            field = page.get_by_label("Levels, comma-separated (fractions or percentages)")
            field.fill(str(level))
            field.press("Enter")
        for page in pages:
            page.get_by_role("button", name="Run the audit").wait_for()
            no_exception(page)
        # all five click Run back to back: five runs queued before the first is done
        started = time.monotonic()
        for page in pages:
            page.get_by_role("button", name="Run the audit").click()
        run_ids = []
        for page in pages:
            page.wait_for_url(re.compile(r".*/results\?run=.+"), timeout=60_000)
            run_ids.append(re.search(r"run=([^&]+)", page.url).group(1))
        assert len(set(run_ids)) == len(LEVELS), run_ids
        queued = time.monotonic() - started

        # each session sees its own run: its level in the run caption and in the one-sentence reading
        for page, level, rid in zip(pages, LEVELS, run_ids):
            headline = page.locator(".fp-headline")
            headline.wait_for(timeout=300_000)
            text = headline.inner_text()
            assert re.search(rf"At {re.escape(_pct(level))} sparsity group (inverted|standard) (loses|gains)", text), \
                (level, text)
            caption = page.get_by_text(re.compile(r"demo mnist; groups: ")).first.inner_text()
            assert caption.endswith(f"at {_pct(level)}"), (level, caption)
            assert rid in page.url
            no_exception(page)
        elapsed = time.monotonic() - started
    finally:
        for ctx in contexts:
            ctx.close()

    ours = [r for r in store.list() if r.id not in existing]
    assert sorted(r.id for r in ours) == sorted(run_ids), "exactly one run per session, none lost or doubled"
    for level, rid in zip(LEVELS, run_ids):
        run = store.get(rid)
        assert run.status == "done", (run.status, run.error)
        assert run.spec["sparsities"] == [level] and run.spec["demo"] == "mnist"
        assert [lv["sparsity"] for lv in run.result["levels"]] == [level]
        direct = json.loads(json.dumps(run_spec(AuditSpec.from_dict(run.spec)).to_dict()))   # as the store keeps it
        _assert_same(_without_timings(run.result), _without_timings(direct), where=f"run {rid}")
    print(f"\n5 sessions: queued in {queued:.1f} s, all results shown after {elapsed:.1f} s")
