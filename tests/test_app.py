"""The dashboard, driven by Streamlit's AppTest: every page, the demo end to end, uploads, cancel, runs.

FAIRPRUNE_HOME is a fresh folder per test (conftest). The app's call to ``jobs.ensure_worker`` is
replaced by a recorder, and the tests run the worker in-process (``jobs.run_worker(store, once=True)``,
or in a thread where a run must be caught mid-way), so no background process outlives a test.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from fairprune.run import jobs
from fairprune.engine.audit import AuditSpec
from fairprune.data import load_dataset
from fairprune.core.errors import InputError
from fairprune.core.result import AuditResult
from fairprune.run.store import RunStore

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PAGES = ["pages_/start.py", "pages_/data.py", "pages_/audit.py", "pages_/results.py", "pages_/runs.py"]
UNEXPECTED = "Something went wrong"   # app.widgets.UNEXPECTED: the prefix of an internal-error message
DEMO = AuditSpec(sparsities=(0.5, 0.8, 0.9, 0.95), demo="mnist", group=("population",))


@pytest.fixture
def worker_calls(monkeypatch) -> list:
    """Replace the detached worker the app starts with a recorder: tests run the worker themselves."""
    calls: list = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda store=None, **kw: calls.append(store))
    return calls


def new_app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60)


def open_page(at: AppTest, page: str, **query) -> AppTest:
    at.query_params.clear()
    at.query_params.update(query)
    return at.switch_page(page).run()


def assert_clean(at: AppTest) -> None:
    """No exception element and no internal-error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    bad = [e.value for e in at.error if UNEXPECTED in e.value]
    assert not bad, bad


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.error]
    parts += [w.value for w in at.warning] + [i.value for i in at.info] + [s.value for s in at.success]
    return "\n".join(parts)


def charts(at: AppTest) -> list:
    return at.get("plotly_chart")


_DEMO_RESULT: dict = {}


def finished_demo_run(title="MNIST demo") -> str:
    """A done demo run in this test's store; the audit itself runs once per session (the result is reused)."""
    s = RunStore()
    run_id = s.create_run(DEMO.to_dict(), title=title)
    if not _DEMO_RESULT:
        jobs.run_worker(s, once=True)
        _DEMO_RESULT.update(s.get(run_id).result)
    else:
        s.claim_next(worker_pid=0)
        s.finish(run_id, dict(_DEMO_RESULT))
    assert s.get(run_id).status == "done"
    return run_id


# ---- every page -------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_each_page_renders_on_an_empty_store(page, worker_calls):
    at = new_app().run()
    assert_clean(at)
    open_page(at, page)
    assert_clean(at)
    assert at.title, f"{page} has no title"


@pytest.mark.parametrize("page", PAGES)
def test_each_page_renders_with_a_finished_run(page, worker_calls):
    finished_demo_run()
    at = new_app().run()
    open_page(at, page)
    assert_clean(at)


def test_start_page_explains_and_offers_the_demo(worker_calls):
    at = new_app().run()
    assert_clean(at)
    assert "Try the demo" in [b.label for b in at.button]
    body = texts(at)
    assert "fairprune" in body and "group" in body


# ---- the demo, end to end -----------------------------------------------------------------------------
def test_demo_end_to_end(worker_calls):
    at = new_app().run()
    assert worker_calls, "the Start page warms a worker up while the visitor reads"
    before = len(worker_calls)
    at.button(key="try-demo").click().run()
    assert_clean(at)
    s = RunStore()
    [run] = s.list()
    assert run.status == "queued" and run.spec["demo"] == "mnist" and run.spec["sparsities"] == [0.5, 0.8, 0.9, 0.95]
    assert len(worker_calls) > before, "Try the demo must make sure a worker takes the run"
    assert at.query_params.get("run") == run.id
    # the results page shows the queued run's progress and a Cancel button, not a result
    assert [t.value for t in at.title] == ["Results"]
    assert at.get("progress"), "a queued run shows a progress bar"
    assert f"cancel-{run.id}" in [b.key for b in at.button]
    assert not charts(at)

    jobs.run_worker(s, once=True)
    result = AuditResult.from_dict(s.get(run.id).result)
    worst = max(result.levels[-1].groups, key=lambda g: result.levels[-1].groups[g].accuracy_drop)
    assert worst in result.group_names

    open_page(at, "pages_/results.py", run=run.id)
    assert_clean(at)
    headline = next(m.value for m in at.markdown if "sparsity group" in m.value)
    assert f"group {worst} loses" in headline and "At 95% sparsity" in headline
    assert len(charts(at)) == 5    # accuracy, drop, violation, size & latency, size axis
    assert len(at.dataframe) == 2                     # every figure per group, and per level
    assert [m.label for m in at.metric][:2] == ["Overall accuracy", f"Worst group: {worst}"]
    assert all(m.help for m in at.metric), "every headline number carries its definition"
    assert at.get("download_button")

    # reading another level changes the sentence
    at.radio(key="res-level").set_value(0.5).run()
    assert_clean(at)
    assert any("At 50% sparsity" in m.value for m in at.markdown)


def test_results_default_to_the_latest_finished_run(worker_calls):
    first = finished_demo_run("first")
    RunStore().create_run(DEMO.to_dict(), title="queued one")    # newer, but not done
    at = new_app().run()
    open_page(at, "pages_/results.py")
    assert_clean(at)
    assert at.selectbox(key="results-run").value == first
    assert len(charts(at)) == 5


def test_failed_run_shows_the_library_message_and_can_be_requeued(worker_calls):
    s = RunStore()
    run_id = s.create_run({"sparsities": [0.5], "demo": "cifar"}, title="bad demo")
    jobs.run_worker(s, once=True)
    assert s.get(run_id).status == "failed"
    at = new_app().run()
    open_page(at, "pages_/results.py", run=run_id)
    assert_clean(at)
    assert any("unknown demo 'cifar'" in e.value for e in at.error)
    at.button(key=f"requeue-{run_id}").click().run()
    assert s.get(run_id).status == "queued"


# ---- cancel -------------------------------------------------------------------------------------------
def test_cancel_stops_a_running_audit(worker_calls):
    s = RunStore()
    many = tuple(float(x) for x in np.round(np.linspace(0.02, 0.98, 49), 2))   # long enough to catch mid-way
    run_id = s.create_run(AuditSpec(sparsities=many, demo="mnist", group=("population",)).to_dict(), title="long")
    stop = threading.Event()
    worker = threading.Thread(target=jobs.run_worker, args=(s,), kwargs={"poll": 0.1, "stop": stop}, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while s.get(run_id).progress_done < 1:   # the dense model is measured: the run is under way
            assert time.monotonic() < deadline, "the worker never started the run"
            time.sleep(0.05)
        at = new_app().run()
        open_page(at, "pages_/results.py", run=run_id)
        assert_clean(at)
        # the library's unit and total: steps of the whole run (dense model + 49 levels), its last step in words
        assert any(re.match(r"Step \d+ of 50: (dense model evaluated|level \d+ of 49 \(sparsity [0-9.]+\) done)",
                            p.proto.text or "") for p in at.get("progress")), [p.proto.text for p in at.get("progress")]
        clicked = time.monotonic()
        at.button(key=f"cancel-{run_id}").click().run()
        while s.get(run_id).status == "running":
            assert time.monotonic() - clicked < 3.0, "cancel must stop the run within about 2 s"
            time.sleep(0.05)
        assert s.get(run_id).status == "cancelled"
        open_page(at, "pages_/results.py", run=run_id)
        assert_clean(at)
        assert any("cancelled" in w.value for w in at.warning)
        assert f"requeue-{run_id}" in [b.key for b in at.button]
    finally:
        stop.set()
        worker.join(timeout=30)


def test_cancel_a_queued_run(worker_calls):
    at = new_app().run()
    at.button(key="try-demo").click().run()
    [run] = RunStore().list()
    at.button(key=f"cancel-{run.id}").click().run()
    assert RunStore().get(run.id).status == "cancelled"


def test_data_page_defaults_to_the_demo(worker_calls):
    at = new_app().run()
    open_page(at, "pages_/data.py")
    assert_clean(at)
    assert at.radio(key="data-source").value == "demo"
    assert at.selectbox(key="demo-name").value == "mnist"
    assert len(charts(at)) == 1                          # group sizes of the demo's test rows
    open_page(at, "pages_/audit.py")
    assert at.radio(key="audit-preset").value == "demo"
    assert not at.button(key="audit-run").disabled


# ---- uploads ------------------------------------------------------------------------------------------
def choose_own_files(at: AppTest) -> AppTest:
    open_page(at, "pages_/data.py")
    return at.radio(key="data-source").set_value("files").run()


def test_bad_csv_shows_the_library_message(tmp_path, worker_calls):
    content = b"f0,f1,label,team\n0.1,0.2,1,a\n0.3,0.1,0,b\n"
    at = choose_own_files(new_app().run())
    assert_clean(at)
    at.file_uploader(key="data-upload").set_value(("bad.csv", content, "text/csv")).run()
    assert_clean(at)
    # issue 14.8: no alarm before the user could choose; the page asks for the group column first
    assert not at.error, [e.value for e in at.error]
    assert any("Choose the group column(s) above" in i.value for i in at.info), [i.value for i in at.info]
    assert at.selectbox(key="data-label").value == "label" and at.multiselect(key="data-group").value == []
    # once chosen, the file is checked and a wrong choice gets the library's own message, for the same file
    (tmp_path / "bad.csv").write_bytes(content)
    with pytest.raises(InputError) as err:
        load_dataset(tmp_path / "bad.csv", label="f1", group="team")
    at.multiselect(key="data-group").set_value(["team"])
    at.selectbox(key="data-label").set_value("f1").run()
    assert "label column 'f1' must hold integer class indices" in str(err.value)
    assert [e.value for e in at.error] == [str(err.value)]
    # picking the file's own label column fixes it
    at.selectbox(key="data-label").set_value("label").run()
    assert_clean(at)
    assert not at.error
    assert charts(at), "a valid dataset shows its group sizes"


def test_own_model_and_data_end_to_end(table_files, worker_calls):
    csv, weights, df, _ = table_files
    at = choose_own_files(new_app().run())
    at.file_uploader(key="model-upload").set_value(("mlp.safetensors", weights.read_bytes(), "application/octet-stream"))
    at.file_uploader(key="data-upload").set_value(("test.csv", csv.read_bytes(), "text/csv")).run()
    assert_clean(at)
    # bare weights without an architecture, and a text column among the features: the library says so
    errors = " ".join(e.value for e in at.error)
    assert "sex" in errors
    at.selectbox(key="model-arch").set_value("mlp").run()
    at.number_input(key="model-classes").set_value(3)
    at.text_area(key="model-args").set_value("in_features=4\nhidden=32,16")
    at.multiselect(key="data-ignore").set_value(["sex"]).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert any("The model runs on this data" in s.value for s in at.success)
    assert [m.label for m in at.metric][:3] == ["Parameters", "Prunable", "Layers"]

    # leaving the page and coming back keeps the choice (the uploader forgets its file; the staged copy stays)
    open_page(at, "pages_/runs.py")
    open_page(at, "pages_/data.py")
    assert_clean(at)
    assert any("The model runs on this data" in s.value for s in at.success)
    assert any("uploaded earlier" in c.value for c in at.caption)

    open_page(at, "pages_/audit.py")
    assert_clean(at)
    assert any("mlp.safetensors" in m.value for m in at.markdown)
    at.radio(key="audit-preset").set_value("custom").run()
    at.text_input(key="audit-levels").set_value("0.5, 90%").run()
    assert not at.error
    at.button(key="audit-run").click().run()
    assert_clean(at)
    s = RunStore()
    [run] = s.list()
    folder = s.run_dir(run.id)
    assert run.spec["model"] == str(folder / "mlp.safetensors") and run.spec["data"] == str(folder / "test.csv")
    assert run.spec["sparsities"] == [0.5, 0.9] and run.spec["arch"] == "mlp" and run.spec["ignore"] == ["sex"]
    jobs.run_worker(s, once=True)
    assert s.get(run.id).status == "done", s.get(run.id).error
    open_page(at, "pages_/results.py", run=run.id)
    assert_clean(at)
    assert any("At 90% sparsity group" in m.value for m in at.markdown)


def test_bad_sparsity_text_is_refused_next_to_the_field(worker_calls):
    at = new_app().run()
    open_page(at, "pages_/audit.py")
    at.radio(key="audit-preset").set_value("custom").run()
    at.text_input(key="audit-levels").set_value("0.5, 1.5").run()
    assert_clean(at)
    assert any("1.5" in e.value for e in at.error)
    assert at.button(key="audit-run").disabled


def test_sessions_do_not_see_each_others_uploads(worker_calls):
    a = choose_own_files(new_app().run())
    b = choose_own_files(new_app().run())
    a.file_uploader(key="data-upload").set_value(("mine.csv", b"x,label,group\n1,0,a\n", "text/csv")).run()
    b.run()
    home = RunStore().home
    sa, sb = a.session_state["session_uuid"], b.session_state["session_uuid"]
    assert sa != sb
    assert (home / "uploads" / sa / "data" / "mine.csv").is_file()
    assert not (home / "uploads" / sb / "data").exists()
    # the run list is shared
    finished_demo_run("shared")
    for at in (a, b):
        open_page(at, "pages_/runs.py")
        assert "shared" in at.dataframe[0].value["title"].tolist()


def test_server_folders_offer_only_their_own_files(tmp_path, monkeypatch, worker_calls):
    inside, outside = tmp_path / "served", tmp_path / "private"
    inside.mkdir()
    outside.mkdir()
    (inside / "table.csv").write_text("x,label,group\n1,0,a\n2,1,b\n")
    (outside / "secret.csv").write_text("x,label,group\n1,0,a\n")
    (inside / "link.csv").symlink_to(outside / "secret.csv")     # points out of the folder: not offered
    monkeypatch.setenv("FAIRPRUNE_DATA_DIRS", str(inside))
    at = choose_own_files(new_app().run())
    at.radio(key="data-origin").set_value("server").run()
    options = at.selectbox(key="data-server").options
    assert options == ["served/table.csv"]
    at.selectbox(key="data-server").set_value("served/table.csv").run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]


# ---- the runs page --------------------------------------------------------------------------------------
def test_runs_survive_a_restart_and_can_be_compared_and_deleted(worker_calls):
    first = finished_demo_run("first demo")
    second = finished_demo_run("second demo")
    # a restart: a new app session and a new RunStore on the same folder
    at = new_app().run()
    open_page(at, "pages_/runs.py")
    assert_clean(at)
    table = at.dataframe[0].value
    assert set(table["title"]) == {"first demo", "second demo"}
    assert set(table["status"]) == {"done"}
    assert table["worst group (top level)"].tolist() == ["inverted", "inverted"]
    assert len(charts(at)) == 6                          # the two runs side by side, same three charts

    at.selectbox(key="runs-pick").set_value(first).run()
    at.button(key="runs-delete").click().run()
    assert RunStore().get(first)                         # not before the confirmation
    at.button(key="runs-delete-yes").click().run()
    assert_clean(at)
    assert [r.id for r in RunStore().list()] == [second]


def test_runs_page_requeues_an_interrupted_run(worker_calls):
    s = RunStore()
    run_id = s.create_run(DEMO.to_dict(), title="cut off")
    s.claim_next(worker_pid=999_999_999)                 # a worker that does not exist
    assert s.reap(max_age=0) == [run_id]
    at = new_app().run()
    open_page(at, "pages_/runs.py")
    assert_clean(at)
    assert "interrupted" in at.dataframe[0].value["status"].tolist()
    at.button(key="runs-requeue").click().run()
    assert s.get(run_id).status == "queued"
    assert worker_calls


def test_an_internal_error_is_a_message_not_a_traceback(monkeypatch, worker_calls):
    def broken(self, kind=None):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(RunStore, "list", broken)
    at = new_app().run()
    open_page(at, "pages_/runs.py")
    assert not at.exception
    [msg] = [e.value for e in at.error]
    assert msg.startswith(UNEXPECTED) and "RuntimeError: database on fire" in msg and "Traceback" not in msg


# ---- compression variants -------------------------------------------------------------------------------
def test_audit_page_queues_compression_variants_and_results_show_them(worker_calls, monkeypatch):
    at = new_app().run()
    open_page(at, "pages_/audit.py")
    assert_clean(at)
    assert "int8_dynamic" in at.multiselect(key="audit-compress").options
    at.radio(key="audit-preset").set_value("none").run()
    assert at.button(key="audit-run").disabled, "no levels and no variants: nothing to run"
    at.text_input(key="audit-compress-combos").input("int8_dynamic+nm_2_4").run()
    assert any("nm_2_4 must come first" in e.value for e in at.error)
    at.text_input(key="audit-compress-combos").input("nm_2_4+int8_dynamic").run()
    at.multiselect(key="audit-compress").select("fp16").run()
    assert not at.button(key="audit-run").disabled
    at.button(key="audit-run").click().run()
    assert_clean(at)
    [run] = RunStore().list()
    assert run.spec["sparsities"] == [] and run.spec["compress"] == ["fp16", "nm_2_4+int8_dynamic"]
    jobs.run_worker(RunStore(), once=True)
    result = AuditResult.from_dict(RunStore().get(run.id).result)
    assert [v.method for v in result.compression] == ["fp16", "nm_2_4+int8_dynamic"] and not result.levels

    open_page(at, "pages_/results.py", run=run.id)
    assert_clean(at)
    worst = max(result.compression, key=lambda v: (v.level.fairness_violation["accuracy"], v.method))
    assert any(f"Under {worst.method} group" in m.value for m in at.markdown)
    assert [c.key for c in charts(at)] == ["res-sizeaxis", "res-variants"]
    [table] = [d.value for d in at.dataframe if "variant" in d.value.columns]
    assert list(table["variant"]) == ["fp16", "nm_2_4+int8_dynamic"]
    assert table["violation acc (pts)"].tolist() == pytest.approx(
        [100 * v.level.fairness_violation["accuracy"] for v in result.compression])
    # the dashboard times its variants: a median with its spread, and a difference from dense only beyond it
    from fairprune.present.reading import latencies, latency_reading, variant_latencies

    timed, dense = variant_latencies(result), latencies(result)[0.0]
    assert list(timed) == ["fp16", "nm_2_4+int8_dynamic"] and all(t.iqr and t.repeats >= 5 for t in timed.values())
    assert table["latency per batch"].tolist() == [timed[m].spread_text() for m in table["variant"]]
    assert table["vs dense"].tolist() == [latency_reading(dense, timed[m]) for m in table["variant"]]
    open_page(at, "pages_/runs.py")
    assert_clean(at)


def test_fixed_sparsity_method_measures_its_one_level(worker_calls):
    at = new_app().run()
    open_page(at, "pages_/audit.py")
    at.selectbox(key="audit-method").set_value("nm_2_4").run()
    assert any("prunes exactly 50%" in i.value for i in at.info)
    at.button(key="audit-run").click().run()
    assert_clean(at)
    [run] = RunStore().list()
    assert run.spec["sparsities"] == [0.5] and run.spec["method"] == "nm_2_4"


def test_own_files_queue_an_audit_and_a_search_with_the_same_loading_keys(table_files, tmp_path, monkeypatch,
                                                                          worker_calls):
    import shutil

    csv, weights, _, _ = table_files
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(csv, served / "table.csv")
    shutil.copy(weights, served / "mlp.safetensors")
    monkeypatch.setenv("FAIRPRUNE_DATA_DIRS", str(served))
    at = choose_own_files(new_app().run())
    at.radio(key="model-origin").set_value("server").run()
    at.selectbox(key="model-server").set_value("served/mlp.safetensors").run()
    at.selectbox(key="model-arch").set_value("mlp").run()
    at.number_input(key="model-classes").set_value(3).run()
    at.text_area(key="model-args").input("in_features=4\nhidden=32,16").run()
    at.radio(key="data-origin").set_value("server").run()
    at.selectbox(key="data-server").set_value("served/table.csv").run()
    at.selectbox(key="data-label").set_value("label").run()
    at.multiselect(key="data-group").set_value(["group"]).run()
    at.multiselect(key="data-ignore").set_value(["sex"]).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]

    open_page(at, "pages_/audit.py")
    at.radio(key="audit-preset").set_value("moderate").run()
    at.button(key="audit-run").click().run()
    assert_clean(at)
    open_page(at, "pages_/search.py")
    at.button(key="search-run").click().run()
    assert_clean(at)
    [audit_run] = RunStore().list(kind="audit")
    [search_run] = RunStore().list(kind="search")
    keys = ("arch", "num_classes", "arch_args", "label", "group", "ignore", "missing_group")
    assert {k: audit_run.spec[k] for k in keys} == {k: search_run.spec[k] for k in keys}
    assert audit_run.spec["arch"] == "mlp" and audit_run.spec["ignore"] == ["sex"]
    for run in (audit_run, search_run):          # each run copies the files into its own folder
        assert Path(run.spec["model"]).name == "mlp.safetensors" and Path(run.spec["data"]).name == "table.csv"
    jobs.run_worker(RunStore(), once=True)
    done = RunStore().get(audit_run.id)
    assert done.status == "done", done.error
    assert AuditResult.from_dict(done.result).config.sparsities == [0.5, 0.7, 0.9]


def test_audit_page_says_where_runs_go_when_a_ray_cluster_is_configured(worker_calls, monkeypatch):
    at = open_page(new_app().run(), "pages_/audit.py")
    assert not any("Ray cluster" in c.value for c in at.caption)
    monkeypatch.setenv("FAIRPRUNE_EXECUTOR", "ray")
    monkeypatch.setenv("FAIRPRUNE_RAY_ADDRESS", "ray://head:10001")
    at = open_page(new_app().run(), "pages_/audit.py")
    assert any("Runs go to the Ray cluster at ray://head:10001" in c.value for c in at.caption)


# ---- issue 14, bug 7: a reload keeps the chosen files; Results follows the session's running run ------------
def _choose_mlp_and_table(at: AppTest, table_files) -> AppTest:
    csv, weights, _, _ = table_files
    at = choose_own_files(at)
    at.file_uploader(key="model-upload").set_value(("mlp.safetensors", weights.read_bytes(), "application/octet-stream"))
    at.file_uploader(key="data-upload").set_value(("test.csv", csv.read_bytes(), "text/csv")).run()
    at.selectbox(key="model-arch").set_value("mlp").run()
    at.number_input(key="model-classes").set_value(3)
    at.text_area(key="model-args").set_value("in_features=4\nhidden=32,16")
    at.multiselect(key="data-ignore").set_value(["sex"]).run()
    assert any("The model runs on this data" in s.value for s in at.success)
    return at


def test_a_reload_keeps_the_chosen_files(table_files, worker_calls):
    at = _choose_mlp_and_table(new_app().run(), table_files)
    sid = at.session_state["session_uuid"]
    assert at.query_params["s"] == sid                   # the address names the session
    # a reload: a new Streamlit session on the same address
    again = new_app()
    again.query_params["s"] = sid
    again = open_page(again.run(), "pages_/audit.py", s=sid)
    assert_clean(again)
    assert any("mlp.safetensors" in m.value and "test.csv" in m.value for m in again.markdown)
    assert not any("demo" in m.value for m in again.markdown)
    again.radio(key="audit-preset").set_value("moderate").run()
    again.button(key="audit-run").click().run()
    [run] = RunStore().list()
    assert Path(run.spec["model"]).name == "mlp.safetensors" and run.spec["arch"] == "mlp"
    # the Data & model page shows the same choice, the files as uploaded earlier
    again = open_page(again, "pages_/data.py", s=sid)
    assert any("The model runs on this data" in s.value for s in again.success)
    # a made-up or foreign session id is not taken: the demo, as for a new visitor
    other = new_app()
    other.query_params["s"] = "0" * 32
    other = open_page(other.run(), "pages_/audit.py", s="0" * 32)
    assert any("demo" in m.value for m in other.markdown)


def test_results_from_the_sidebar_show_this_sessions_running_run(worker_calls):
    older = finished_demo_run("older")
    at = open_page(new_app().run(), "pages_/start.py")
    at.button(key="try-demo").click().run()
    mine = next(r.id for r in RunStore().list() if r.id != older)
    at = open_page(at, "pages_/results.py")              # the sidebar: no ?run= in the address
    assert_clean(at)
    assert at.selectbox(key="results-run").value == mine
    assert at.get("progress")
    # another session sees the finished run, and a banner that links to the running one
    other = open_page(new_app().run(), "pages_/results.py")
    assert other.selectbox(key="results-run").value == older
    assert "still running" in texts(other)
    links = [e for e in other.get("page_link") if mine in str(e.proto.query_string)]
    assert links
