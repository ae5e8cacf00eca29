"""The Why, Mitigate and Operating-point pages, driven by AppTest: empty store, and with a finished demo run."""

from __future__ import annotations

import json

import pytest

from fairprune import jobs, plots
from fairprune.audit import AuditSpec, run_spec
from fairprune.store import RunStore

from test_app import assert_clean, charts, new_app, open_page, texts  # noqa: F401  (shared helpers)

NEW_PAGES = ["pages_/why.py", "pages_/mitigate.py", "pages_/search.py"]
DIAG_SPEC = AuditSpec(sparsities=(0.9,), demo="mnist", group=("population",), diagnostics=True)


@pytest.fixture
def worker_calls(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda store=None, **kw: calls.append(store))
    return calls


@pytest.fixture(scope="module")
def diag_result() -> dict:
    return run_spec(DIAG_SPEC).to_dict()


def finished(spec: dict, result: dict, title: str) -> str:
    s = RunStore()
    run_id = s.create_run(spec, title=title)
    s.claim_next(worker_pid=0)
    s.finish(run_id, dict(result))
    return run_id


@pytest.mark.parametrize("page", NEW_PAGES)
def test_new_pages_render_with_an_empty_store(page, worker_calls):
    at = open_page(new_app().run(), page)
    assert_clean(at)
    assert at.title


def test_why_runs_the_demo_with_diagnostics_from_an_empty_store(worker_calls):
    at = open_page(new_app().run(), "pages_/why.py")
    at.button(key="why-demo").click().run()
    assert_clean(at)
    [run] = RunStore().list()
    assert run.spec["diagnostics"] is True and run.spec["demo"] == "mnist"
    assert worker_calls


def test_why_shows_the_diagnostics(diag_result, worker_calls):
    run_id = finished(DIAG_SPEC.to_dict(), diag_result, "with diagnostics")
    at = open_page(new_app().run(), "pages_/why.py")
    assert_clean(at)
    assert at.selectbox(key="why-run").value == run_id
    assert len(charts(at)) >= 5          # grad norm, margin, Hessian, three scatter views (some may be missing)
    assert len(at.dataframe) == 2        # Theorem 1 vs measurement, flipped samples per group
    sentence = diag_result["diagnostics"]["factors"]["levels"][0]["sentence"]
    assert sentence in texts(at)


def test_why_offers_a_rerun_with_diagnostics(diag_result, worker_calls):
    spec = AuditSpec(sparsities=(0.9,), demo="mnist", group=("population",)).to_dict()
    plain = {k: v for k, v in diag_result.items() if k != "diagnostics"}
    finished(spec, plain, "plain")
    at = open_page(new_app().run(), "pages_/why.py")
    assert_clean(at)
    at.button(key="why-rerun").click().run()
    assert_clean(at)
    queued = [r for r in RunStore().list() if r.status == "queued"]
    assert len(queued) == 1 and queued[0].spec["diagnostics"] is True


def test_mitigate_queues_a_run_from_a_finished_audit(diag_result, worker_calls):
    finished(DIAG_SPEC.to_dict(), diag_result, "audit")
    at = open_page(new_app().run(), "pages_/mitigate.py")
    assert_clean(at)
    assert at.number_input(key="mit-epochs").value == 2 and at.number_input(key="mit-seeds").value == 1
    at.button(key="mit-run").click().run()
    assert_clean(at)
    [run] = RunStore().list(kind="mitigate")
    assert run.spec["sparsity"] == 0.9 and run.spec["demo"] == "mnist" and run.spec["method"] == "constrained_loss"
    assert worker_calls


def test_mitigate_shows_a_finished_mitigation(worker_calls):
    groups = {"a": {"accuracy_drop": 0.05, "n": 50}, "b": {"accuracy_drop": 0.01, "n": 50}}
    out = lambda acc, v: {"overall": {"accuracy": acc}, "fairness_violation": {"accuracy": v}, "groups": groups}  # noqa: E731
    sec = {"method": "constrained_loss", "sparsity": 0.9, "before": out(0.8, 0.04),
           "methods": {"constrained_loss": out(0.85, 0.01), "plain": out(0.86, 0.03)},
           "recommended": "constrained_loss", "multipliers": [{"a": 0.1, "b": 0.0}, {"a": 0.2, "b": 0.0}],
           "n_eval": 600, "selection": {"n_select": 1200, "n_eval": 600, "chosen": "constrained_loss"}}
    s = RunStore()
    rid = s.create_run({"sparsity": 0.9, "demo": "mnist"}, kind="mitigate", title="m")
    s.claim_next(worker_pid=0)
    s.finish(rid, {"mitigation": sec})
    at = open_page(new_app().run(), "pages_/mitigate.py")
    assert_clean(at)
    assert len(charts(at)) == 3
    assert any("constrained_loss" in x.value and "made on 1,200 selection rows" in x.value
               and "on 600 held-out rows that took no part in it" in x.value for x in at.success)
    # a result from before selection rows: the page says the choice was made on the rows it shows
    old = {k: v for k, v in sec.items() if k != "selection"}
    rid = s.create_run({"sparsity": 0.9, "demo": "mnist"}, kind="mitigate", title="old")
    s.claim_next(worker_pid=0)
    s.finish(rid, {"mitigation": old})
    at = open_page(new_app().run(), "pages_/mitigate.py")
    at.selectbox(key="mit-pick").set_value(rid).run()
    assert_clean(at)
    assert not at.success and any("chosen on the same 600 held-out rows" in x.value for x in at.warning)


def test_search_queues_a_run_and_shows_a_frontier(worker_calls):
    at = open_page(new_app().run(), "pages_/search.py")
    at.button(key="search-run").click().run()
    assert_clean(at)
    [run] = RunStore().list(kind="search")
    assert run.spec["demo"] == "mnist" and run.spec["max_violation"] == pytest.approx(0.02)
    assert run.spec["methods"] == ["global_magnitude"]
    assert "search" in jobs.EXECUTORS
    # a finished search (search.json's shape) is drawn with its table
    point = lambda sp, v, ok: {"sparsity": sp, "violation": v, "overall_accuracy": 0.9, "overall_drop": 0.01,  # noqa: E731
                               "worst_group": "a", "feasible": ok}
    res = {"budget": {"max_violation": 0.02}, "best": {"method": "global_magnitude", **point(0.8, 0.01, True)},
           "methods": {"global_magnitude": {"frontier": [point(0.5, 0.0, True), point(0.8, 0.01, True),
                                                         point(0.95, 0.1, False)],
                                            "recommended": point(0.8, 0.01, True), "note": "ok"}}}
    s = RunStore()
    s.claim_next(worker_pid=0)
    s.finish(run.id, res)
    at = open_page(at, "pages_/search.py")
    assert_clean(at)
    assert len(charts(at)) == 1 and at.dataframe
    assert plots.search_frontier(res).data


def test_search_with_compression_variants_runs_in_the_worker_and_names_the_smallest(worker_calls):
    at = open_page(new_app().run(), "pages_/search.py")
    assert "nm_2_4" not in at.multiselect(key="search-methods").options      # fixed sparsity: nothing to search
    at.number_input(key="search-maxviol").set_value(5.0)
    at.number_input(key="search-evals").set_value(7)
    at.multiselect(key="search-compress").select("int8_weight").run()
    at.button(key="search-run").click().run()
    assert_clean(at)
    [run] = RunStore().list(kind="search")
    assert run.spec["compress"] == ["int8_weight"]
    jobs.run_worker(RunStore(), once=True)
    res = RunStore().get(run.id).result
    assert [v["method"] for v in res["compression"]] == ["int8_weight"]
    at = open_page(at, "pages_/search.py")
    assert_clean(at)
    [variants] = [d.value for d in at.dataframe if "variant" in d.value.columns]
    assert variants["within budget"].tolist() == [res["compression"][0]["feasible"]]
    small = res["smallest_within_budget"]
    if small:
        assert any("Smallest model within the budget" in x.value for x in at.success)
        rec = res["methods"]["global_magnitude"]["recommended"]
        assert small["size_bytes"] == min(p["size_bytes"] for p in ([rec] if rec else []) + res["compression"]
                                          if p["feasible"] and p["size_bytes"] is not None)
    else:
        assert any("No sized model" in w.value for w in at.warning)


def test_why_reads_a_compression_variant_beside_the_levels(worker_calls):
    spec = AuditSpec(sparsities=(0.9,), demo="adult", group=("race",), compress=("fp16",),
                     diagnostics={"hessian_rows": 16, "power_iterations": 2, "hutchinson_probes": 1})
    result = run_spec(spec)
    [variant] = result.compression
    vdiag = variant.details["diagnostics"]
    finished(spec.to_dict(), result.to_dict(), "adult, pruned and fp16, diagnosed")
    at = open_page(new_app().run(), "pages_/why.py")
    assert_clean(at)
    assert at.radio(key="why-level").options == ["90%", "fp16"]
    at.radio(key="why-level").set_value(1).run()
    assert_clean(at)
    assert "Mean per-sample gradient norm, dense vs fp16" in texts(at)
    # the chart on the page: the variant's bars are its own per-group gradient norms
    grad = json.loads(next(c for c in charts(at) if c.key == "why-grad").proto.spec)
    [bars] = [t for t in grad["data"] if t["name"] == "fp16"]
    shown = dict(zip(bars["y"], _array(bars["x"])))
    assert shown == pytest.approx({g: d["grad_norm_mean"] for g, d in vdiag.items()})
    assert "Theorem 1's terms and the flipped samples are measured for the sparsity levels" in texts(at)
    assert variant.details["diagnostics_note"] in texts(at)


def _array(v):
    """A plotly 7 figure-JSON array: a plain list, or {"dtype", "bdata"} (base64 of the raw values)."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        import numpy as np
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)
