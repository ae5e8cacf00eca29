"""The stakeholder report: one self-contained HTML file, rendered from a real audit of the MNIST demo.

The browser test opens the file from disk in Debian's Chromium (never a Playwright download), waits
for every chart to be drawn, checks that loading it makes no network request, and saves
tests/artifacts/report.png for a person to look at.
"""

from __future__ import annotations

import copy
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from markupsafe import escape

from fairprune.engine.audit import AuditSpec, audit, run_spec
from fairprune.run.cli import main
from fairprune.data import GroupedDataset
from fairprune.present.reading import headline
from fairprune.present.report import (CHART_CLASS, RESULT_SCRIPT_ID, load_source, redact, render_html, write_report)
from fairprune.core.result import AuditResult
from fairprune.run.store import RunStore

from conftest import make_table, train_mlp

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
# Sample row indices no aggregate would ever equal, so finding them anywhere in a page means a leak.
SECRET = [987654321, 987654322, 987654323]
THUMB = "data:image/png;base64,U0VDUkVUVEhVTUJOQUlM"


# ---- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def result() -> AuditResult:
    """A real audit of the MNIST demo (two population groups, 50% and 90%), footprint off."""
    return run_spec(AuditSpec(sparsities=(0.5, 0.9), demo="mnist", group=("population",), footprint=False))


@pytest.fixture(scope="module")
def page_html(result) -> str:
    return render_html(result)


@pytest.fixture(scope="module")
def report_file(result, tmp_path_factory) -> Path:
    return write_report(result, tmp_path_factory.mktemp("report") / "report.html")


def embedded(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="%s">(.*?)</script>' % RESULT_SCRIPT_ID, text, re.S)
    assert m, "the result JSON is embedded"
    return json.loads(m.group(1))


def without_plotly(text: str) -> str:
    """The page without the inlined plotly bundle (whose code holds URL strings it never fetches)."""
    from plotly.offline import get_plotlyjs

    return text.replace(get_plotlyjs(), "")


def with_diagnostics(result: AuditResult) -> AuditResult:
    """The demo result with a diagnostics section in the engine's shape, holding per-sample content."""
    groups = result.group_names
    diag = {g: {"grad_norm_mean": 5.0 + i, "group_grad_norm": 0.5 + i, "hessian_max_eig": 100.0 * (i + 1),
                "hessian_max_eig_se": 10.0, "hessian_trace": 300.0 * (i + 1), "hessian_trace_se": 30.0,
                "margin_mean": 0.9 - 0.1 * i, "uncertainty_mean": 0.05 * (i + 1), "boundary_distance_mean": None}
            for i, g in enumerate(groups)}
    section = {
        "dense": diag, "levels": [diag for _ in result.levels],
        "theory": [{g: {"grad_term": 1.0, "hessian_term": 50.0, "bound": 51.0, "excessive_loss": 0.1,
                        "weight_distance": 3.0} for g in groups} for _ in result.levels],
        "factors": {"n_groups": len(groups), "levels": [
            {"sparsity": lv.sparsity, "sentence": "Groups with larger gradient norms lost more here (hand-made)."}
            for lv in result.levels]},
        "flips": {"cap_per_group": 200,
                  "risk": {"grad_norm": {g: SECRET for g in groups}, "margin": {g: SECRET for g in groups}},
                  "levels": [{"sparsity": lv.sparsity, "n_flips": 6, "n_fixed": 2,
                              "groups": {g: {"n": 3, "fixed": 1, "indices": SECRET, "thumbnails": [THUMB]}
                                         for g in groups},
                              "precision_at_k": {"k": 6, "grad_norm": 0.5, "margin": 0.5, "random": 0.01}}
                             for lv in result.levels]},
        "details": {"hessian": {"dense": {g: {"rows": 64, "iterations": 4} for g in groups}},
                    "index": "flip and risk indices are row positions in the input data"},
    }
    return result.with_section("diagnostics", section)


def mitigation_section(result: AuditResult) -> dict:
    """A mitigation section in DESIGN.md's shape (numbers made up, groups the demo's)."""
    def outcome(drops, acc):
        return {"overall": {"n": 1000, "accuracy": acc, "loss": 0.2},
                "groups": {g: {"n": 500, "accuracy": acc - d, "loss": 0.2, "accuracy_drop": d}
                           for g, d in zip(result.group_names, drops)},
                "fairness_violation": {"accuracy": max(drops) - min(drops), "loss": 0.05},
                "accuracy_gap": max(drops) - min(drops)}
    before, after = outcome([0.19, 0.01], 0.85), outcome([0.02, 0.01], 0.94)
    plain, reweighted = outcome([0.05, 0.01], 0.93), outcome([0.03, 0.01], 0.935)
    return {"method": "constrained_loss", "when": "after", "sparsity": 0.9, "alpha": 0.0, "epochs": 1, "seeds": [0],
            "n_train": 3500, "n_eval": 1000, "before": before, "after": after,
            "baselines": {"plain": plain, "reweighted": reweighted}, "multipliers": [{g: 0.1 for g in result.group_names}],
            "single_seed": True, "methods": {"constrained_loss": after, "plain": plain, "reweighted": reweighted},
            "recommended": "constrained_loss", "prune_method": "global_magnitude",
            "dense": {"groups": {g: {"n": 500, "accuracy": 0.95} for g in result.group_names}},
            "split": {"source": "split column"}}


# ---- content --------------------------------------------------------------------------------------------

def test_report_reads_first_and_fingerprints_the_inputs(result, page_html):
    text = page_html
    assert escape(headline(result)) in text    # autoescaped as Jinja2 (markupsafe) writes it
    for g in result.group_names:
        assert f"<td class=l>{g}</td>" in text, f"group {g} has rows in the table"
    p = result.provenance
    assert p.model_sha256 in text and p.data_sha256 in text and len(p.model_sha256) == 64
    assert f"torch version</th><td>{p.torch_version}" in text
    assert "seed</th><td>0</td>" in text and "fairprune version (audit)" in text
    # the definitions, with the paper's equations and fairprune's own choices told apart
    for needle in ("R(a) = J(θ̄; D_a) − J(θ*; D_a)", "[paper, Eq. 2]", "ξ = max_a R(a) − min_a R(a)",
                   "[paper, Eq. 3 (loss); fairprune (accuracy)]", "Accuracy gap = max_a acc − min_a acc",
                   "Holm-corrected", "Not adjusted", "[fairprune]"):
        assert html.escape(needle) in text, needle
    # the interval method and the test are the ones the result records, not names written into the report
    for name in ("interval_method", "significance_test"):
        recorded = getattr(result.levels[-1], name, None)
        assert (recorded or "as recorded with the result") in html.unescape(text), name
    # sections in the order a stakeholder reads them
    order = [text.index(f'<section id="{s}"') for s in ("summary", "charts", "table", "definitions", "provenance", "json")]
    assert order == sorted(order)
    assert "What this means" in text and "fairness violation, is" in text
    # no diagnostics or mitigation in this result: no such sections
    assert '<section id="diagnostics"' not in text and '<section id="mitigation"' not in text


def test_report_is_self_contained(page_html):
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs()
    assert page_html.count(bundle[:300]) == 1, "plotly's JavaScript is inlined exactly once"
    rest = without_plotly(page_html)
    assert "<script src" not in rest and "<link" not in rest and "@import" not in rest and "url(" not in rest
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", rest), "nothing the page would fetch"
    assert "https://" not in rest and "http://" not in rest
    # one chart per container, as many as the page announces: accuracy, a drop chart per level, violation
    n = int(re.search(r'<meta name="fairprune-charts" content="(\d+)">', page_html).group(1))
    assert n == 4 == page_html.count(f'<figure class="{CHART_CLASS}">') == rest.count("Plotly.newPlot(")


def test_embedded_json_is_the_result(result, page_html, report_file):
    d = embedded(page_html)
    assert d == json.loads(result.to_json())
    assert 'id="fp-download-json"' in page_html
    # the report file gives back its result: a reviewer can render it again
    again, mitigation = load_source(report_file)
    assert again == result and mitigation is None


def test_sections_present_only_when_the_result_has_them(result):
    text = render_html(with_diagnostics(result), mitigation=mitigation_section(result))
    assert '<section id="diagnostics"' in text and '<section id="mitigation"' in text
    assert "Groups with larger gradient norms lost more here (hand-made)." in text
    assert "Recommended: constrained_loss" in text and "beat plain fine-tuning on held-out rows" in text
    assert "λ_max(H_a) ± SE" in text and "Theorem 1" in text
    # diagnostics: the factor panels; mitigation: per group and methods compared
    assert int(re.search(r'"fairprune-charts" content="(\d+)"', text).group(1)) == 4 + 1 + 2
    order = [text.index(f'<section id="{s}"') for s in ("table", "diagnostics", "mitigation", "definitions")]
    assert order == sorted(order)
    assert embedded(text)["mitigation"]["recommended"] == "constrained_loss"
    # missing keys are tolerated: a bare section still renders
    bare = render_html(result.with_section("diagnostics", {"dense": {}}), mitigation={"method": "plain"})
    assert '<section id="diagnostics"' in bare and '<section id="mitigation"' in bare


def test_redact_samples_removes_per_sample_content_and_keeps_aggregates(result):
    full = render_html(with_diagnostics(result))
    assert str(SECRET[0]) in without_plotly(full) and THUMB in full     # shown when not redacted
    text = render_html(with_diagnostics(result), redact_samples=True)
    page = without_plotly(text)
    assert str(SECRET[0]) not in page and THUMB not in page
    d = embedded(text)
    flips = d["diagnostics"]["flips"]
    assert "risk" not in flips
    assert all("indices" not in g and "thumbnails" not in g for lv in flips["levels"] for g in lv["groups"].values())
    # aggregates stay: counts, figures, the details' row count
    assert [lv["n_flips"] for lv in flips["levels"]] == [6, 6]
    assert flips["levels"][0]["groups"][result.group_names[0]] == {"n": 3, "fixed": 1}
    assert d["diagnostics"]["dense"] == with_diagnostics(result).diagnostics["dense"]
    assert d["diagnostics"]["details"]["hessian"]["dense"][result.group_names[0]]["rows"] == 64
    assert d["levels"] == json.loads(result.to_json())["levels"]
    assert d["redaction"]["samples"] is True and "diagnostics.flips.risk" in d["redaction"]["removed"]
    assert "left out of this report" in page
    # a redacted report rendered again stays redacted
    again, _ = load_source({k: v for k, v in d.items()})
    assert str(SECRET[0]) not in without_plotly(render_html(again))


EVIL = "<script>alert(1)</script>"


def renamed(result: AuditResult, old: str, new: str) -> AuditResult:
    """The result with group ``old`` called ``new`` everywhere (every JSON string equal to it)."""
    text = result.to_json().replace(json.dumps(old), json.dumps(new))
    return AuditResult.from_dict(json.loads(text))


def script_tags(text: str) -> int:
    from html.parser import HTMLParser

    class Count(HTMLParser):
        n = 0

        def handle_starttag(self, tag, attrs):
            self.n += tag == "script"

    p = Count()
    p.feed(text)
    return p.n


def test_user_controlled_text_is_escaped(result, page_html):
    """Group names, model and data names, warnings and the title are text: a group called
    <script>alert(1)</script> is shown as those characters, and the page gains no element."""
    from dataclasses import replace

    evil = renamed(result, result.group_names[0], EVIL)
    evil = replace(evil, model=replace(evil.model, name='m"><img src=x onerror=alert(2)>'),
                   warnings=[*evil.warnings, "<b>not bold</b> & co"])
    evil = evil.with_section("check", {"passed": False, "method": "global_magnitude", "sparsity": 0.9,
                                       "budget": {"max_violation": 0.05}, "violations": [f"group {EVIL} over budget"]})
    text = render_html(evil, title="<i>title</i>")
    page = without_plotly(text)
    assert EVIL not in page and "<img" not in page and "<b>not bold" not in page and "<i>title" not in page
    assert f"<td class=l>{escape(EVIL)}</td>" in page                   # the table shows the name as text
    assert "<li>&lt;b&gt;not bold&lt;/b&gt; &amp; co</li>" in page
    assert "<title>&lt;i&gt;title&lt;/i&gt;</title>" in page
    assert f"<li>group {escape(EVIL)} over budget</li>" in page and "budget: max_violation 0.05" in page
    assert html.unescape(page).count(EVIL) >= 3                        # cards, tables, sentences: the name itself
    # the same elements as the page with plain names: nothing the names say became markup
    assert script_tags(text) == script_tags(page_html)
    assert EVIL in embedded(text)["dense"]["groups"]                    # the JSON keeps the name as it is


def test_report_names_the_statistics_methods_from_the_result(result):
    """Results that record their test, interval method and violation p-value are described with them; the
    violation's interval is simultaneous, may contain 0, and the sentence around it says so."""
    d = json.loads(result.to_json())
    for i, lv in enumerate(d["levels"]):
        lv["fairness_violation_ci95"] = {"accuracy": [0.0, 0.05 + 0.03 * i]}
        lv["fairness_violation_p_value"] = {"accuracy": [0.2, 0.0004][i]}
        lv["significance_test"] = "made-up rank test of drops, Holm-adjusted"
        lv["interval_method"] = "made-up score interval per group"
    text = html.unescape(without_plotly(render_html(AuditResult.from_dict(d))))
    assert "as recorded with the result" not in text
    assert "Test: made-up rank test of drops, Holm-adjusted." in text
    assert "method: made-up score interval per group" in text and "Method: made-up score interval per group." in text
    n = len(result.group_names)
    # the highest level: p below 0.05 beside an interval reaching 0, and the sentence reconciles them
    assert (f"the fairness violation, is {100 * result.levels[-1].fairness_violation['accuracy']:.1f} points "
            f"(95% interval 0.0 to 8.0, simultaneous over the {n} groups); 0 would mean every group paid the same. "
            "A violation this large would be unlikely if every group's drop were the same (p < 0.001); the "
            "interval, which holds for all groups at once, is the more cautious of the two and reaches 0.") in text
    assert f"after correcting for testing {n} groups" in text and "differs from the other groups'" in text
    assert "0.0 to 8.0 (simultaneous); p < 0.001 for equal drops" in text          # the violation card
    # the per-level table: the p-value column, one value per level
    assert "<th>p (equal drops)</th>" in text and "<th>95% CI (simultaneous)</th>" in text
    assert "<td>0.0 to 5.0</td><td>0.2</td>" in text and "<td>0.0 to 8.0</td><td>0.0004</td>" in text

    # the same result as written before these fields existed: neutral wording, no claim about the method
    for lv in d["levels"]:
        for k in ("fairness_violation_p_value", "significance_test", "interval_method"):
            del lv[k]
    old = html.unescape(without_plotly(render_html(AuditResult.from_dict(d))))
    assert "Test: as recorded with the result." in old and "method: as recorded with the result" in old
    assert "simultaneous" not in old and "p (equal drops)" not in old and "for equal drops" not in old
    assert "(95% interval 0.0 to 8.0); 0 would mean every group paid the same." in old


def test_redact_walks_any_section():
    d, removed = redact({"a": {"samples": [[1, 2]], "rows": 64, "x": [{"images": ["..."], "n": 2}]}})
    assert d == {"a": {"rows": 64, "x": [{"n": 2}]}}
    assert removed == ["a.samples", "a.x[0].images"]


def test_real_diagnostics_and_footprint_render(tmp_path):
    """A real audit with the diagnostics engine and the footprint on a small table: both sections render,
    and redaction removes the engine's flip indices."""
    df = make_table(n=300, seed=2)
    feats = [c for c in df.columns if c.startswith("f")]
    data = GroupedDataset(x=torch.tensor(df[feats].to_numpy(np.float32)), y=torch.tensor(df["label"].to_numpy()),
                          group=df["group"].to_numpy().astype(object), name="table", sha256="0" * 64)
    r = audit(copy.deepcopy(train_mlp(df, epochs=40)), data, sparsities=[0.5, 0.9],
              diagnostics={"hessian_rows": 32, "power_iterations": 4, "hutchinson_probes": 2})
    assert r.diagnostics and r.dense.size_bytes
    text = render_html(r)
    assert '<section id="footprint"' in text and '<section id="diagnostics"' in text
    assert int(re.search(r'"fairprune-charts" content="(\d+)"', text).group(1)) == 4 + 2 + 1   # footprint: size bars and the size axis
    flips = r.diagnostics["flips"]
    assert any(g["indices"] for lv in flips["levels"] for g in lv["groups"].values()), "the table flips some rows"
    red = embedded(render_html(r, redact_samples=True))["diagnostics"]["flips"]
    assert "risk" not in red and all("indices" not in g for lv in red["levels"] for g in lv["groups"].values())


def test_mitigation_file_alone(result, tmp_path):
    path = tmp_path / "mitigation.json"
    path.write_text(json.dumps({"mitigation": mitigation_section(result)}))
    out = write_report(path, tmp_path / "m.html")
    text = out.read_text()
    assert "constrained_loss fine-tuning brings the accuracy violation" in text
    assert "not recorded in a mitigation file" in text
    # no audit, so no per-group intervals or flags to define
    assert "Significant" not in text and "as recorded with the result" not in text and "Held-out measurement" in text
    assert embedded(text) == {"mitigation": mitigation_section(result)}


def test_render_html_refuses_what_it_cannot_report(result):
    with pytest.raises(ValueError, match="needs an AuditResult"):
        render_html(None)
    with pytest.raises(TypeError, match="must be a fairprune.core.result.AuditResult"):
        render_html(result.to_dict())


# ---- CLI --------------------------------------------------------------------------------------------------

def test_cli_report_by_path_and_by_run_id(result, tmp_path, capsys):
    src = tmp_path / "result.json"
    result.save(src)
    out = tmp_path / "by_path.html"
    assert main(["report", str(src), "--out", str(out)]) == 0
    assert escape(headline(result)) in out.read_text()
    assert "wrote" in capsys.readouterr().out

    store = RunStore()   # FAIRPRUNE_HOME: a temporary folder per test (conftest)
    run_id = store.create_run({"demo": "mnist"}, kind="audit", title="report test")
    store.finish(run_id, result.to_dict())
    out = tmp_path / "by_id.html"
    assert main(["report", run_id, "--out", str(out), "--redact-samples"]) == 0
    text = out.read_text()
    assert result.provenance.data_sha256 in text and embedded(text)["redaction"]["samples"] is True


@pytest.mark.parametrize("case", ["missing", "not json", "not a result", "unknown run", "unfinished run", "no folder"])
def test_cli_report_bad_input_exits_2_with_one_line(case, result, tmp_path, capsys):
    src = tmp_path / "x.json"
    out = tmp_path / "r.html"
    if case == "missing":
        source = str(tmp_path / "nope.json")
    elif case == "not json":
        src.write_text("not json at all")
        source = str(src)
    elif case == "not a result":
        src.write_text(json.dumps({"schema": "something/9"}))
        source = str(src)
    elif case == "unknown run":
        source = "20250101-000000-000000-abcd"
    elif case == "unfinished run":
        source = RunStore().create_run({"demo": "mnist"}, kind="audit")
    else:
        result.save(src)
        source, out = str(src), tmp_path / "no" / "such" / "r.html"
    assert main(["report", source, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


# ---- the real browser -----------------------------------------------------------------------------------

def with_footprint(result: AuditResult) -> AuditResult:
    """The demo result with stored sizes and latencies, as an audit with the footprint on writes them."""
    from dataclasses import replace

    dense = replace(result.dense, size_bytes=600_000, latency_ms=12.0)
    levels = [replace(lv, size_bytes=int(600_000 * (1.1 - lv.sparsity)), latency_ms=11.0) for lv in result.levels]
    return replace(result, dense=dense, levels=levels)


def open_in_chromium(browser, path: Path, screenshot: str) -> dict:
    """Open ``path`` from disk, wait for every chart to be drawn, save a full-page screenshot.

    Returns what happened: requests made, errors, the charts announced and drawn, the download's JSON.
    """
    seen = {"requests": [], "errors": []}
    pg = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    pg.on("request", lambda r: seen["requests"].append(r.url))
    pg.on("pageerror", lambda e: seen["errors"].append(str(e)))
    pg.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    pg.goto(path.as_uri())
    n = int(pg.get_attribute('meta[name="fairprune-charts"]', "content"))
    pg.wait_for_function(
        "n => { const c = [...document.querySelectorAll('.js-plotly-plot')];"
        " return c.length === n && c.every(e => e.querySelector('svg.main-svg')); }", arg=n, timeout=60_000)
    seen["announced"] = n
    seen["drawn"] = pg.locator(".js-plotly-plot").count()
    seen["figures"] = pg.locator(f"figure.{CHART_CLASS}").count()
    # every chart has drawn its data (bars or lines), not just an empty frame
    seen["all_traces"] = pg.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].every("
                                     "e => e.querySelectorAll('.trace').length > 0)")
    seen["headline"] = pg.locator(".fp-headline").first.inner_text()
    href = pg.get_attribute("#fp-download-json", "href")
    seen["href"] = href
    ARTIFACTS.mkdir(exist_ok=True)
    pg.wait_for_timeout(300)
    pg.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
    seen["downloaded"] = json.loads(pg.evaluate("h => fetch(h).then(r => r.text())", href))
    # printed: the navigation goes, the charts stay
    pg.emulate_media(media="print")
    seen["print_nav"] = pg.locator("nav.toc").is_visible()
    seen["print_chart"] = pg.locator(".js-plotly-plot").first.is_visible()
    pg.context.close()
    return seen


@pytest.mark.browser
def test_report_opens_in_chromium_with_every_chart_and_no_network(result, report_file, page_html, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`make chromium`)")
    from playwright.sync_api import sync_playwright

    full = tmp_path / "sections.html"
    full.write_text(render_html(with_diagnostics(with_footprint(result)), mitigation=mitigation_section(result)))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            demo = open_in_chromium(browser, report_file, "report.png")
            sections = open_in_chromium(browser, full, "report_sections.png")
        finally:
            browser.close()
    assert demo["announced"] == demo["drawn"] == demo["figures"] == 4
    assert sections["announced"] == sections["drawn"] == sections["figures"] == 4 + 2 + 1 + 2   # footprint: size bars and the size axis
    for seen in (demo, sections):
        assert not seen["errors"], seen["errors"]
        assert seen["all_traces"]
        assert seen["requests"] and all(u.startswith(("file://", "data:", "blob:")) for u in seen["requests"]), \
            seen["requests"]
        assert seen["href"].startswith("blob:")            # the JSON download: a blob of the embedded result
        assert not seen["print_nav"] and seen["print_chart"]
    assert demo["headline"].startswith("At 90% sparsity group")
    assert demo["downloaded"] == embedded(page_html)
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000


# ---- the dashboard's button -------------------------------------------------------------------------------

def test_results_page_offers_the_report(result, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from fairprune.run import jobs

    monkeypatch.setattr(jobs, "ensure_worker", lambda store=None, **kw: None)   # no background worker
    store = RunStore()
    run_id = store.create_run({"demo": "mnist"}, kind="audit", title="report button")
    store.finish(run_id, result.to_dict())
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=60)
    at.query_params.update({"run": run_id})
    at.switch_page("pages_/results.py").run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download report (HTML)" in labels and "Download the result (JSON)" in labels
    assert "res-redact" in [c.key for c in at.checkbox]


def test_compression_variants_have_their_own_section(tmp_path):
    df = make_table()
    feats = [c for c in df.columns if c.startswith("f")]
    data = GroupedDataset(x=torch.tensor(df[feats].to_numpy(np.float32)), y=torch.tensor(df["label"].to_numpy()),
                          group=df["group"].to_numpy().astype(object), name="table", sha256="0" * 64)
    r = audit(copy.deepcopy(train_mlp(df, epochs=40)), data, sparsities=[], compress=["int8_weight", "nm_2_4"])
    text = render_html(r)
    assert '<section id="compression"' in text and 'href="#compression"' in text
    # the variant chart and, with no levels, the size axis
    assert int(re.search(r'"fairprune-charts" content="(\d+)"', text).group(1)) == 2
    section = text[text.index('<section id="compression"'):text.index("</section>", text.index('<section id="compression"'))]
    for v in r.compression:
        assert f"<td class=l>{html.escape(v.method)}</td>" in section
        assert f"{100 * v.level.fairness_violation['accuracy']:.1f}" in section
    assert headline(r) in html.unescape(text) and headline(r).startswith("Under ")


def test_recommendation_says_where_it_was_chosen(result):
    """A recommendation chosen on selection rows says so; an older one, chosen on the rows it is reported on, says
    that this flatters the winner (issue 12, part 5)."""
    old = mitigation_section(result)
    text = render_html(result, mitigation=old)
    assert "chosen on the same held-out rows it is reported on, which flatters the winner" in text
    new = {**old, "selection": {"n_select": 1234, "chosen": old["recommended"]}, "n_eval": 5678}
    text = render_html(result, mitigation=new)
    assert "chosen on 1,234 selection rows; the figures shown are on 5,678 held-out rows" in text
    assert "flatters the winner" not in text


# ---- issue 14: one "What this means", warnings beside their figures, latency with its spread -------------

def _figure_of(page: str, heading: str) -> str:
    """The <figure> whose heading is ``heading``."""
    m = re.search(r"<figure class=\"%s\"><h3>%s</h3>(.*?)</figure>" % (CHART_CLASS, re.escape(str(escape(heading)))),
                  page, re.S)
    assert m, f"no figure headed {heading!r}"
    return m.group(1)


def test_what_this_means_is_the_reading_modules_paragraph(result, page_html):
    from fairprune.present.reading import meaning

    para = re.search(r'<p class="meaning">(.*?)</p>', page_html, re.S).group(1)
    assert para == str(escape(meaning(result))) and len(para) > 200
    assert "(fairprune mitigate)" not in para


def test_a_collapsed_levels_warning_is_beside_its_chart(result):
    from dataclasses import replace

    from fairprune.engine.sanity import sanity_warnings

    names = result.group_names
    lv = result.levels[-1]
    y = np.zeros(100, dtype=int)
    y[:3] = 1                                                   # chance 97%: the 90% level is below it
    groups = np.array([names[i % len(names)] for i in range(100)], dtype=object)
    models = [(f"{100 * x.sparsity:g}% sparsity", x.overall if x is not lv else replace(x.overall, accuracy=0.1))
              for x in result.levels]
    warned = replace(result, warnings=sanity_warnings(y, groups, names, 10, replace(result.dense.overall, accuracy=0.99),
                                                      models))
    page = render_html(warned)
    at90 = _figure_of(page, "Accuracy drop per group at 90% sparsity")
    assert "At 90% sparsity the model&#39;s accuracy (10.0%) is at or below chance" in at90
    at50 = _figure_of(page, "Accuracy drop per group at 50% sparsity")
    assert ("At 50% sparsity the model&#39;s accuracy" in at50) == (result.levels[0].overall.accuracy <= 0.97)
    # the summary still lists every warning, and the headline does not call the 90% drops beyond chance
    head = re.search(r'<p class="fp-headline">(.*?)</p>', page, re.S).group(1)
    assert "beyond chance" not in head and "at or below chance" in head


def test_footprint_table_reads_latency_with_its_spread(result):
    from dataclasses import replace

    from fairprune.present.reading import NO_SPEEDUP

    fp = {"latency": "median ms ...", "dense": {"storage": "dense", "timed": "dense", "latency_ms": 48.8,
                                                "latency_ms_iqr": [22.6, 72.9], "latency_repeats": 20},
          "levels": [{"sparsity": 0.5, "storage": "csr", "timed": "masked", "latency_ms": 31.7,
                      "latency_ms_iqr": [20.8, 45.0], "latency_repeats": 20},
                     {"sparsity": 0.9, "storage": "csr", "timed": "masked", "latency_ms": 10.0,
                      "latency_ms_iqr": [9.5, 10.5], "latency_repeats": 12}]}
    timed = replace(result, dense=replace(result.dense, size_bytes=600_000, latency_ms=48.8),
                    levels=[replace(lv, size_bytes=300_000, latency_ms=ms)
                            for lv, ms in zip(result.levels, (31.7, 10.0))],
                    sections={**result.sections, "footprint": fp})
    page = render_html(timed)
    section = re.search(r'<section id="footprint">(.*?)</section>', page, re.S).group(1)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", section, re.S)]
    rows = [r for r in rows if r]
    assert [r[0] for r in rows] == ["dense", "50%", "90%"]
    assert rows[0][4:6] == ["48.8 ms (22.6–72.9, 20 runs)", "reference"]
    assert rows[1][4:6] == ["31.7 ms (20.8–45, 20 runs)",
                            f"no measurable difference from dense (the spreads overlap); {NO_SPEEDUP}"]
    assert rows[2][5].startswith("80% faster than dense (the spreads do not overlap): a masked level does exactly")
    assert rows[2][5].endswith(NO_SPEEDUP)
    assert NO_SPEEDUP in _figure_of(page, "What pruning saves")
