"""The Why, Mitigate and Operating-point pages, driven by AppTest: empty store, and with a finished demo run."""

from __future__ import annotations

import json
import os

import pytest

from fairprune.present import plots
from fairprune.run import jobs
from fairprune.engine.audit import AuditSpec, run_spec
from fairprune.engine.search import coarse_grid
from fairprune.run.store import RunStore

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
    # issue 14.10: two groups are compared in words, λ_max with its standard errors (the library's sentence)
    from app.widgets import escape_markdown
    from fairprune.engine.diagnose import compare_groups, factor_values, theory_reading

    dg = diag_result["diagnostics"]
    drops = {g: v["accuracy_drop"] for g, v in diag_result["levels"][0]["groups"].items()}
    ses = {"hessian_max_eig_se": {g: d["hessian_max_eig_se"] for g, d in dg["dense"].items()}}
    sentence = compare_groups(factor_values(dg["dense"], diag_result["data"]["groups"]), drops, ses)
    assert sentence.startswith("Group inverted lost more accuracy than group standard") and "± SE" in sentence
    assert "rank correlation cannot judge" not in texts(at)
    assert f"**{escape_markdown(sentence)}**" in [m.value for m in at.markdown]
    # the Theorem 1 table says what to read from it; the size view says the evaluation rows are balanced by design
    assert escape_markdown(theory_reading(dg["theory"][0])) in [m.value for m in at.markdown]
    assert "The evaluation rows are balanced by design (750 per group)" in texts(at)


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
    assert variants["within budget"].tolist() == ["yes" if res["compression"][0]["feasible"] else "no"]
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
    run_id = finished(spec.to_dict(), result.to_dict(), "adult, pruned and fp16, diagnosed")
    at = open_page(new_app().run(), "pages_/why.py")
    assert_clean(at)
    assert at.radio(key=f"why-level-{run_id}").options == ["90%", "fp16"]
    at.radio(key=f"why-level-{run_id}").set_value(1).run()
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


# ---- issue 14: the page shows the run just started, checks inputs first, speaks plainly ------------------
def _point(sp, v, ok):
    return {"sparsity": sp, "violation": v, "overall_accuracy": 0.9, "overall_drop": 0.01, "worst_group": "a",
            "feasible": ok}


def _search_result(best_sparsity: float) -> dict:
    best = _point(best_sparsity, 0.01, True)
    return {"budget": {"max_violation": 0.02}, "best": {"method": "global_magnitude", **best},
            "methods": {"global_magnitude": {"frontier": [_point(0.5, 0.0, True), best, _point(0.98, 0.1, False)],
                                             "recommended": best, "note": "ok"}}}


def _finish(run_id: str, result: dict) -> None:
    s = RunStore()
    assert s.claim_next(worker_pid=0).id == run_id
    s.finish(run_id, result)


def test_search_shows_the_search_just_started_then_its_result(worker_calls):
    at = open_page(new_app().run(), "pages_/search.py")
    at.button(key="search-run").click().run()
    [first] = RunStore().list(kind="search")
    _finish(first.id, _search_result(0.8))
    at.run()
    assert any("at **80%** sparsity" in x.value for x in at.success)
    # a second search with another budget: the page follows it, not the first one
    at.number_input(key="search-maxviol").set_value(5.0)
    at.button(key="search-run").click().run()
    assert_clean(at)
    second = next(r for r in RunStore().list(kind="search") if r.id != first.id)
    assert second.spec["max_violation"] == pytest.approx(0.05)
    assert at.selectbox(key="search-pick").value == second.id
    assert at.get("progress") and not at.success           # its progress, not the first run's result
    _finish(second.id, _search_result(0.9))
    at.run()
    assert_clean(at)
    assert at.selectbox(key="search-pick").value == second.id
    assert any("at **90%** sparsity" in x.value for x in at.success)
    assert not any("80%" in x.value for x in at.success)
    # no label carries a status the browser would keep showing after it changed ('· queued')
    assert not any("queued" in o or "running" in o for o in at.selectbox(key="search-pick").options)


def test_mitigate_shows_the_mitigation_just_started(diag_result, worker_calls):
    finished(DIAG_SPEC.to_dict(), diag_result, "audit")
    groups = {"a": {"accuracy_drop": 0.05, "n": 50}, "b": {"accuracy_drop": 0.01, "n": 50}}
    out = lambda acc, v: {"overall": {"accuracy": acc}, "fairness_violation": {"accuracy": v}, "groups": groups}  # noqa: E731
    sec = lambda rec: {"method": rec, "sparsity": 0.9, "recommended": rec, "n_eval": 600,  # noqa: E731
                       "before": out(0.8, 0.04), "methods": {rec: out(0.85, 0.01), "plain": out(0.86, 0.03)},
                       "selection": {"n_select": 1200, "n_eval": 600, "chosen": rec}}
    at = open_page(new_app().run(), "pages_/mitigate.py")
    at.button(key="mit-run").click().run()
    [first] = RunStore().list(kind="mitigate")
    _finish(first.id, {"mitigation": sec("constrained_loss")})
    at.run()
    assert any("Recommended: **constrained_loss**" in x.value for x in at.success)
    at.selectbox(key="mit-method").set_value("reweighted")
    at.button(key="mit-run").click().run()
    assert_clean(at)
    second = next(r for r in RunStore().list(kind="mitigate") if r.id != first.id)
    assert second.spec["method"] == "reweighted"
    assert at.selectbox(key="mit-pick").value == second.id and at.get("progress")
    _finish(second.id, {"mitigation": sec("reweighted")})
    at.run()
    assert_clean(at)
    assert at.selectbox(key="mit-pick").value == second.id
    assert any("Recommended: **reweighted**" in x.value for x in at.success)


def test_why_shows_the_diagnostics_run_once_it_is_done(diag_result, worker_calls):
    spec = AuditSpec(sparsities=(0.9,), demo="mnist", group=("population",)).to_dict()
    plain = {k: v for k, v in diag_result.items() if k != "diagnostics"}
    finished(spec, plain, "plain")
    at = open_page(new_app().run(), "pages_/why.py")
    at.button(key="why-rerun").click().run()
    [queued] = [r for r in RunStore().list() if r.status == "queued"]
    assert at.get("progress")                              # the page follows the run it queued
    _finish(queued.id, diag_result)
    at.run()
    assert_clean(at)
    assert at.selectbox(key="why-run").value == queued.id
    assert "run without diagnostics" not in texts(at)
    assert "Group inverted lost more accuracy than group standard" in texts(at)   # the new run's diagnostics


@pytest.mark.parametrize("data", [None, {"name": "bad.csv", "valid": False}])
def test_search_checks_the_inputs_before_queuing(data, table_files, worker_calls):
    """A model and no data (was: TypeError … a fairprune bug), or data the Data & model page refused (was: a
    search that failed in the worker): the page says what to fix and queues nothing."""
    _, weights, _, _ = table_files
    model = {"path": str(weights), "name": weights.name, "arch": "mlp", "valid": True}
    if data is not None:
        data = dict(data, path=str(weights))
    at = new_app()
    at.session_state["inputs"] = {"source": "files", "model": model, "data": data, "fits": False}
    at = open_page(at.run(), "pages_/search.py")
    assert_clean(at)
    want = "only the model file is chosen" if data is None else "could not read the data bad.csv"
    assert any(want in w.value for w in at.warning), [w.value for w in at.warning]
    assert at.button(key="search-run").disabled
    assert RunStore().list() == []
    # the Audit page asks the same question, in the same words
    at = open_page(at, "pages_/audit.py")
    assert any(want in w.value for w in at.warning)


def test_progress_names_the_library_unit_and_total(worker_calls):
    from fairprune.engine.mitigate import MitigationSpec, run_spec as run_mitigation

    steps = []
    spec = {"sparsity": 0.5, "demo": "adult", "group": ["race"], "method": "reweighted", "epochs": 1, "seeds": 1,
            "baselines": []}
    run_mitigation(MitigationSpec.from_dict(spec), progress=lambda d, t, m: steps.append((d, t, m)))
    assert steps[-1] == (3, 3, "seed 0: method 1 of 1 (reweighted) fine-tuned for 1 epoch and measured")
    s = RunStore()
    rid = s.create_run(spec, kind="mitigate", title="one level")
    s.heartbeat(os.getpid())                              # a live worker (this process) holds the run
    s.claim_next(worker_pid=os.getpid())
    s.set_progress(rid, *steps[1])
    at = open_page(new_app().run(), "pages_/mitigate.py")
    assert_clean(at)
    [bar] = at.get("progress")
    assert bar.proto.text.startswith("Step 2 of 3: seed 0: pruned model measured"), bar.proto.text
    assert "sparsity levels" not in bar.proto.text


def test_run_errors_name_the_widget_not_the_flag(worker_calls):
    at = open_page(new_app().run(), "pages_/search.py")
    assert at.number_input(key="search-evals").min == len(coarse_grid())   # fewer fails in the library
    at.button(key="search-run").click().run()
    [run] = RunStore().list(kind="search")
    s = RunStore()
    s.claim_next(worker_pid=0)
    s.fail(run.id, "--max-evals must be an integer >= the 6 coarse grid points [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]; "
                   "found 3; bare weights: pass --arch NAME (`fairprune models` lists the names)")
    at.run()
    [err] = at.error
    assert "'Most levels measured per method' on the Operating point page must be an integer" in err.value
    assert "--" not in err.value and "fairprune models" not in err.value
    assert "the 'Architecture' list on the Data & model page" in err.value
    # a finished search's note (the library's words for the command line) names the widget too
    res = _search_result(0.8)
    res["methods"]["global_magnitude"]["note"] = ("highest passing sparsity 0.8; stopped at --max-evals before the "
                                                  "bracket [0.8, 0.9] narrowed to --tol 0.01.")
    done = s.create_run({"demo": "mnist", "methods": ["global_magnitude"]}, kind="search", title="done")
    _finish(done, res)
    at = open_page(at, "pages_/search.py", run=done)
    assert_clean(at)
    [note] = [c.value for c in at.caption if c.value.startswith("global_magnitude:")]
    assert "--" not in note and "stopped at 'Most levels measured per method'" in note, note


def test_runs_lists_every_kind_and_opens_each_on_its_page(diag_result, worker_calls):
    audit = finished(DIAG_SPEC.to_dict(), diag_result, "diagnosed audit")
    s = RunStore()
    search = s.create_run({"demo": "mnist", "group": ["population"], "methods": ["global_magnitude"],
                           "max_violation": 0.02}, kind="search", title="a search")
    _finish(search, _search_result(0.8))
    mit = s.create_run({"sparsity": 0.9, "demo": "mnist", "method": "reweighted"}, kind="mitigate", title="a repair")
    s.claim_next(worker_pid=0)
    s.fail(mit, "expected --when after")
    at = open_page(new_app().run(), "pages_/runs.py")
    assert_clean(at)
    table = at.dataframe[0].value
    assert dict(zip(table["title"], table["kind"])) == {"diagnosed audit": "audit + diagnostics",
                                                        "a search": "operating point", "a repair": "mitigation"}
    assert dict(zip(table["title"], table["found"]))["a search"] == "recommended: global_magnitude at 80%"
    # a failed mitigation: its error in plain words, and it can be requeued
    at.selectbox(key="runs-pick").set_value(mit).run()
    assert "the setting 'when'" in texts(at) and "--when" not in texts(at)
    at.button(key="runs-requeue").click().run()
    assert s.get(mit).status == "queued"
    # open: each kind on its own page, showing that run
    at.selectbox(key="runs-pick").set_value(search).run()
    at.button(key="runs-open").click().run()
    assert_clean(at)
    assert at.selectbox(key="search-pick").value == search
    at = open_page(new_app().run(), "pages_/runs.py")
    at.selectbox(key="runs-pick").set_value(audit).run()
    at.button(key="runs-open").click().run()
    assert_clean(at)
    assert at.selectbox(key="why-run").value == audit
    # delete the search
    at = open_page(new_app().run(), "pages_/runs.py")
    at.selectbox(key="runs-pick").set_value(search).run()
    at.button(key="runs-delete").click().run()
    at.button(key="runs-delete-yes").click().run()
    assert search not in [r.id for r in s.list()]


# ---- Results and Runs (issue 14: items 6, 11, 12 and polish) ------------------------------------------------

@pytest.fixture(scope="module")
def timed_result() -> dict:
    """A real demo audit with latency timed, and the engine's chance warning for its 90% level (chance 97%)."""
    import numpy as np

    from fairprune.core.result import AuditResult
    from fairprune.engine.sanity import sanity_warnings

    res = run_spec(AuditSpec(sparsities=(0.5, 0.9), demo="mnist", group=("population",), latency=True))
    names = res.group_names
    y = np.zeros(100, dtype=int)
    y[:3] = 1
    groups = np.array([names[i % len(names)] for i in range(100)], dtype=object)
    from dataclasses import replace
    models = [("50% sparsity", replace(res.levels[0].overall, accuracy=0.99)),
              ("90% sparsity", replace(res.levels[1].overall, accuracy=0.10))]
    d = res.to_dict()
    d["warnings"] = sanity_warnings(y, groups, names, 10, replace(res.dense.overall, accuracy=0.99), models)
    assert len(d["warnings"]) == 1 and AuditResult.from_dict(d).warnings == d["warnings"]
    return d


def test_results_open_with_what_this_means_and_show_warnings_beside_the_level(timed_result, worker_calls):
    from fairprune.core.result import AuditResult
    from fairprune.present.reading import meaning

    rid = finished(AuditSpec(sparsities=(0.5, 0.9), demo="mnist", group=("population",)).to_dict(), timed_result,
                   "timed demo")
    at = open_page(new_app().run(), "pages_/results.py", run=rid)
    assert_clean(at)
    md = [m.value for m in at.markdown]
    # the page opens with the report's paragraph, word for word (one source: reading.meaning)
    i = md.index("#### What this means")
    assert "fp-meaning" in md[i + 1] and html_text(md[i + 1]) == meaning(AuditResult.from_dict(timed_result))
    # the 90% level (shown first: the highest) is at or below chance: said beside its headline and its chart
    warns = [w.value for w in at.warning]
    assert any(w.startswith("At 90% sparsity the model's accuracy (10.0%) is at or below chance") for w in warns)
    assert any("At 90% sparsity the model's accuracy (10.0%) is at or below chance" in c.value for c in at.caption)
    head = next(m for m in md if "fp-headline" in m)
    assert "beyond chance" not in head and "at or below chance" in head
    # the 50% level is not: its warning is not shown when it is read
    at.radio(key="res-level").set_value(0.5).run()
    assert not any(w.value.startswith("At 90% sparsity") for w in at.warning)
    # tables: no "None", sparsity as "90%", undefined figures "—"
    frames = {f.key if hasattr(f, "key") else i: f.value for i, f in enumerate(at.dataframe)}
    for t in frames.values():
        assert not t.isna().any().any(), t[t.isna().any(axis=1)]
        assert not (t.astype(str) == "None").any().any()
    groups = at.dataframe[-2].value
    assert groups["sparsity"].tolist()[:1] == ["dense"] and "90%" in groups["sparsity"].tolist()
    assert set(groups.loc[groups["sparsity"] == "dense", "95% CI of drop"]) == {"—"}
    # latency: a median with its spread, read against dense, masked levels labelled
    lat = next(t.value for t in at.table if "latency per batch" in t.value.columns)
    assert lat.index.tolist() == ["dense", "50%", "90%"]
    assert all(" ms (" in x and " runs)" in x for x in lat["latency per batch"])
    assert all("no speed-up expected without sparse kernels" in x for x in lat["vs dense"][1:])
    # no command line on the page
    assert "fairprune report" not in texts(at) and "--redact-samples" not in str(at.checkbox[0].help)
    assert "fairprune report" not in " ".join(str(b.help) for b in at.get("download_button"))


def html_text(markup: str) -> str:
    import html as _html
    import re as _re

    return _html.unescape(_re.sub(r"<[^>]+>", "", markup))


def test_runs_table_says_why_a_figure_is_blank_and_marks_a_collapsed_model(timed_result, worker_calls):
    audit = finished(AuditSpec(sparsities=(0.5, 0.9), demo="mnist", group=("population",)).to_dict(), timed_result,
                     "collapsed demo")
    s = RunStore()
    search = s.create_run({"demo": "mnist", "group": ["population"], "methods": ["global_magnitude"],
                           "max_violation": 0.02}, kind="search", title="a search")
    _finish(search, _search_result(0.8))
    mit = s.create_run({"sparsity": 0.9, "demo": "mnist", "method": "reweighted"}, kind="mitigate", title="a repair")
    at = open_page(new_app().run(), "pages_/runs.py")
    assert_clean(at)
    t = at.dataframe[0].value.set_index("title")
    assert not t.isna().any().any() and not (t.astype(str) == "None").any().any()
    assert t.loc["a search", "max violation (pts)"] == "— (not an audit)"
    assert t.loc["a repair", "its drop (pts)"] == "— (not an audit)"
    config = json.loads(at.dataframe[0].proto.columns)        # the column tooltips say why and what the unit is
    assert "not an audit" in config["max violation (pts)"]["help"] and "can pass 100" in config["max violation (pts)"]["help"]
    v = timed_result["levels"][-1]["fairness_violation"]["accuracy"]
    assert t.loc["collapsed demo", "max violation (pts)"].startswith(f"{100 * max(lv['fairness_violation']['accuracy'] for lv in timed_result['levels']):.1f}")
    assert t.loc["collapsed demo", "max violation (pts)"].endswith("⚠ at or below chance") == (
        v >= max(lv["fairness_violation"]["accuracy"] for lv in timed_result["levels"]))
    assert mit and audit


def test_mitigate_shows_a_before_after_table_per_group(worker_calls):
    """Issue 14 polish: per group, accuracy before (pruned, no repair), after the recommended method, change."""
    def out(acc_a, acc_b, overall):
        return {"overall": {"n": 100, "accuracy": overall}, "fairness_violation": {"accuracy": abs(acc_a - acc_b)},
                "groups": {"a": {"n": 60, "accuracy": acc_a, "accuracy_drop": 0.9 - acc_a},
                           "b": {"n": 40, "accuracy": acc_b, "accuracy_drop": 0.9 - acc_b}}}
    sec = {"method": "constrained_loss", "sparsity": 0.9, "before": out(0.80, 0.60, 0.72),
           "methods": {"constrained_loss": out(0.84, 0.79, 0.82), "plain": out(0.86, 0.62, 0.764)},
           "dense": {"overall": {"accuracy": 0.9}, "groups": {"a": {"accuracy": 0.9}, "b": {"accuracy": 0.9}}},
           "recommended": "constrained_loss", "n_eval": 100}
    s = RunStore()
    rid = s.create_run({"sparsity": 0.9, "demo": "mnist"}, kind="mitigate", title="m")
    s.claim_next(worker_pid=0)
    s.finish(rid, {"mitigation": sec})
    at = open_page(new_app().run(), "pages_/mitigate.py")
    assert_clean(at)
    [table] = [d.value for d in at.dataframe if "change (points)" in d.value.columns]
    assert list(table.columns) == ["group", "rows", "dense", "pruned, no repair", "after constrained_loss",
                                   "change (points)"]
    assert table.to_dict("records") == [
        {"group": "overall", "rows": "100", "dense": "90.0%", "pruned, no repair": "72.0%",
         "after constrained_loss": "82.0%", "change (points)": "+10.0"},
        {"group": "a", "rows": "60", "dense": "90.0%", "pruned, no repair": "80.0%", "after constrained_loss": "84.0%",
         "change (points)": "+4.0"},
        {"group": "b", "rows": "40", "dense": "90.0%", "pruned, no repair": "60.0%", "after constrained_loss": "79.0%",
         "change (points)": "+19.0"}]
    assert any("Before and after, per group: constrained\\_loss at 90%" in m.value for m in at.markdown)


def _own_files_page():
    at = open_page(new_app().run(), "pages_/data.py")
    return at.radio(key="data-source").set_value("files").run()


def test_data_page_messages_speak_widgets_and_hints_help(tmp_path, worker_calls):
    """Leftovers of issue 14.9: a refused pickle gets the library's message without flags and a hint that says to
    convert it (not 'choose the architecture'); '__init__' in a message stays as written (markdown escaped); the
    arguments' example comes from the chosen architecture's registry entry."""
    import torch
    from safetensors.torch import save_file

    from app.widgets import escape_markdown, plain
    from fairprune.core.errors import InputError
    from fairprune.zoo import load_model
    from fairprune.zoo.archs import MLP

    model = MLP(4, 3, hidden=(32, 16))
    whole = tmp_path / "whole.pt"
    torch.save(model, whole)
    at = _own_files_page()
    at.file_uploader(key="model-upload").set_value(("whole.pt", whole.read_bytes(), "application/octet-stream")).run()
    assert_clean(at)
    with pytest.raises(InputError) as err:
        load_model(whole)
    [shown] = [e.value for e in at.error]
    assert shown == escape_markdown(plain(str(err.value).replace(str(whole), "whole.pt")))
    assert "--arch" not in shown and "the 'Architecture' list on the Data & model page" in shown
    hints = " ".join(c.value for c in at.caption)
    assert "convert it where you trust it" in hints and "choose the architecture in the list" not in hints

    weights = tmp_path / "mlp.safetensors"
    save_file(model.state_dict(), str(weights))
    at.file_uploader(key="model-upload").set_value(("mlp.safetensors", weights.read_bytes(), "application/octet-stream"))
    at.selectbox(key="model-arch").set_value("mlp").run()
    assert at.text_area(key="model-args").placeholder == "in_features=…\nhidden=64,32\ndropout=0.0"
    at.text_area(key="model-args").set_value("in_features=4\nfoo=1").run()
    [shown] = [e.value for e in at.error]
    assert "MLP.\\_\\_init\\_\\_() got an unexpected keyword argument 'foo'" in shown, shown
    at.selectbox(key="model-arch").set_value("resnet18").run()
    assert at.text_area(key="model-args").placeholder == "none needed (any keyword torchvision accepts)"
    assert "hidden=64,32" not in at.text_area(key="model-args").placeholder


def test_next_step_is_a_button_that_opens_the_audit_page(worker_calls):
    at = open_page(new_app().run(), "pages_/data.py")
    assert_clean(at)
    assert not [link for link in at.get("page_link") if "Next" in link.proto.label]
    at.button(key="data-next-demo").click().run()
    assert_clean(at)
    assert at.button(key="audit-run").label == "Run the audit"


def test_data_page_says_when_the_measured_rows_are_balanced_by_design(worker_calls):
    at = open_page(new_app().run(), "pages_/data.py")       # the MNIST demo: 750 test rows per population
    assert_clean(at)
    assert any("Every group has 750 rows to measure: balanced by design" in c.value for c in at.caption)
    at.selectbox(key="demo-group-mnist").set_value(at.selectbox(key="demo-group-mnist").options[-1]).run()
    assert_clean(at)                                          # digits as groups: unequal counts, no such note
    assert not any("balanced by design" in c.value for c in at.caption)


def test_search_table_speaks_one_format(worker_calls):
    """Operating point's table: sparsity as 50%, accuracy as 94.9%, drops in points with one decimal, '—' for a
    figure not measured (with the column's help saying why), as the Results tables do."""
    point = {"sparsity": 0.5, "violation": 0.0123456, "violation_ci95": [0.001, 0.0345], "overall_accuracy": 0.949333,
             "overall_drop": 0.004667, "worst_group": "inverted", "worst_group_drop": 0.02151, "feasible": True,
             "size_bytes": None}
    over = dict(point, sparsity=0.975, violation=0.2, violation_ci95=None, overall_accuracy=0.5, overall_drop=-0.01,
                feasible=False, size_bytes=12_345)
    res = {"budget": {"max_violation": 0.02}, "best": {"method": "global_magnitude", **point},
           "methods": {"global_magnitude": {"frontier": [over, point], "recommended": point, "note": "ok"}}}
    s = RunStore()
    rid = s.create_run({"demo": "mnist", "methods": ["global_magnitude"]}, kind="search", title="formatted search")
    _finish(rid, res)
    at = open_page(new_app().run(), "pages_/search.py")
    assert_clean(at)
    [table] = [d for d in at.dataframe if "overall accuracy" in d.value.columns]
    t = table.value
    assert t["sparsity"].tolist() == ["50%", "97.5%"]                 # sorted by sparsity, in percent
    assert t["overall accuracy"].tolist() == ["94.9%", "50.0%"]
    assert t["overall drop (pts)"].tolist() == ["+0.5", "-1.0"]
    assert t["violation (pts)"].tolist() == ["1.2", "20.0"]
    assert t["95% CI of violation"].tolist() == ["0.1 to 3.5", "—"]
    assert t["its drop (pts)"].tolist() == ["+2.2", "+2.2"]
    assert t["size (kB)"].tolist() == ["—", "12.3"]
    assert t["within budget"].tolist() == ["yes", "no"]
    assert t["recommended"].tolist() == ["★ recommended", ""]
    config = json.loads(table.proto.columns)
    assert "not measured" in config["size (kB)"]["help"] and "no interval" in config["95% CI of violation"]["help"]
