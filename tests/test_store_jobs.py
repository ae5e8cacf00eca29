"""The run store (SQLite in FAIRPRUNE_HOME) and the background worker that executes its runs.

The kinds registered below ('test_*') are also what a subprocess worker runs: it imports this module
through $FAIRPRUNE_WORKER_IMPORTS (with this folder on PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fairprune.run import jobs
from fairprune.core.errors import InputError
from fairprune.run.jobs import execute, register_executor, run_worker
from fairprune.run.store import RunStore, fairprune_home

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# ---- test kinds -----------------------------------------------------------------------------------
@register_executor("test_echo")
def _echo(store, run, progress, cancel):
    progress(1, 1, "echoed")
    return {"echo": run.spec, "pid": os.getpid()}


@register_executor("test_sleepy")
def _sleepy(store, run, progress, cancel):
    """Works until cancelled (at most spec['seconds']), checking cancel() every 10 ms like a batch loop."""
    from fairprune.core.errors import Cancelled

    end = time.monotonic() + run.spec.get("seconds", 60)
    progress(0, 1, "sleeping")
    while time.monotonic() < end:
        if cancel():
            raise Cancelled("cancelled")
        time.sleep(0.01)
    return {"slept": True}


@register_executor("test_boom")
def _boom(store, run, progress, cancel):
    raise RuntimeError("kaboom")


@register_executor("test_bad_input")
def _bad_input(store, run, progress, cancel):
    raise InputError("data.csv: expected a column 'label'; found columns ['a', 'b']")


# ---- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("FAIRPRUNE_HOME", str(h))
    return h


@pytest.fixture
def store(home):
    return RunStore()


def _wait(pred, timeout=20.0, every=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return pred()


def _subprocess_env(monkeypatch):
    """A worker subprocess imports this module (so it knows the test kinds)."""
    monkeypatch.setenv("FAIRPRUNE_WORKER_IMPORTS", "test_store_jobs")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))


# ---- store ---------------------------------------------------------------------------------------------
def test_home_from_env(home, store):
    assert fairprune_home() == home
    assert store.home == home.absolute()
    assert (home / "runs.sqlite").is_file()
    assert (home / "runs").is_dir()


def test_create_list_get_delete(store):
    a = store.create_run({"sparsities": [0.5]}, title="first")
    b = store.create_run({"sparsities": [0.9]}, kind="other", title="second")
    assert a < b  # ids sort by creation time
    run = store.get(a)
    assert (run.id, run.kind, run.title, run.status) == (a, "audit", "first", "queued")
    assert run.spec == {"sparsities": [0.5]}
    assert run.active and run.result is None and run.error is None and run.started is None
    assert abs(run.created - time.time()) < 60
    assert [r.id for r in store.list()] == [b, a]  # newest first
    assert [r.id for r in store.list(kind="audit")] == [a]
    assert store.run_dir(a).is_dir()

    store.delete(a)
    assert not store.run_dir(a).exists()
    assert [r.id for r in store.list()] == [b]
    with pytest.raises(KeyError, match=f"no run '{a}' in the run store"):
        store.get(a)
    with pytest.raises(KeyError):
        store.delete(a)


def test_run_id_is_checked(store):
    with pytest.raises(ValueError, match="run id must be"):
        store.run_dir("../../etc")


def test_files_written_and_spec_rewritten(store, tmp_path):
    src = tmp_path / "upload.csv"
    src.write_text("a,b\n1,2\n")
    rid = store.create_run({"model": "model.pt2", "data": "data.csv", "extra": ["data.csv", "x"], "arch": "mlp"},
                           files={"model.pt2": b"\x00\x01weights", "data.csv": src})
    d = store.run_dir(rid)
    assert (d / "model.pt2").read_bytes() == b"\x00\x01weights"
    assert (d / "data.csv").read_text() == "a,b\n1,2\n"
    spec = store.get(rid).spec
    assert spec["model"] == str((d / "model.pt2").absolute()) and Path(spec["model"]).is_absolute()
    assert spec["data"] == str(d / "data.csv")
    assert spec["extra"] == [str(d / "data.csv"), "x"]
    assert spec["arch"] == "mlp"  # not a file name: left alone


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".."])
def test_bad_file_names_refused(store, name):
    with pytest.raises(ValueError, match="plain name"):
        store.create_run({}, files={name: b"x"})
    assert store.list() == []
    assert list((store.home / "runs").iterdir()) == []


def test_missing_source_file_leaves_nothing(store, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        store.create_run({"data": "d.csv"}, files={"d.csv": tmp_path / "nope.csv"})
    assert store.list() == [] and list((store.home / "runs").iterdir()) == []


def test_spec_must_be_json(store):
    with pytest.raises(TypeError, match="JSON-serialisable"):
        store.create_run({"x": object()})


def test_claim_is_atomic(store, home):
    assert store.claim_next(1) is None
    a = store.create_run({"i": 0})
    b = store.create_run({"i": 1})
    first, second = store.claim_next(111), RunStore(home).claim_next(222)
    assert (first.id, second.id) == (a, b)  # oldest first, one each
    assert (first.status, first.worker_pid, second.worker_pid) == ("running", 111, 222)
    assert first.started is not None
    assert store.claim_next(333) is None


def test_claim_concurrent_no_double_claim(home):
    store = RunStore(home)
    ids = {store.create_run({"i": i}) for i in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(pid):
        s = RunStore(home)  # its own connections, as another process would have
        while (run := s.claim_next(pid)) is not None:
            with lock:
                claimed.append(run.id)

    threads = [threading.Thread(target=claimer, args=(1000 + i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every run claimed exactly once
    assert {r.status for r in store.list()} == {"running"}


def test_progress_finish_fail(store):
    rid = store.create_run({})
    store.claim_next(1)
    store.set_progress(rid, 2, 5, "level 2 of 4")
    run = store.get(rid)
    assert (run.progress_done, run.progress_total, run.progress_message) == (2, 5, "level 2 of 4")
    store.finish(rid, {"schema": "fairprune.audit/1", "levels": []})
    run = store.get(rid)
    assert run.status == "done" and not run.active and run.finished >= run.started
    assert run.result == {"schema": "fairprune.audit/1", "levels": []}
    assert run.progress_done == 5

    other = store.create_run({})
    store.fail(other, "data.csv: bad")
    assert (store.get(other).status, store.get(other).error) == ("failed", "data.csv: bad")
    # a deleted run's worker writes go nowhere, and its cancel flag reads as set
    store.delete(other)
    store.set_progress(other, 1, 1, "x")
    store.finish(other, {})
    assert store.cancel_requested(other)


def test_cancel_queued(store):
    rid = store.create_run({})
    assert not store.cancel_requested(rid)
    store.request_cancel(rid)
    run = store.get(rid)
    assert run.status == "cancelled" and run.cancel_requested and run.finished is not None
    assert store.claim_next(1) is None  # never runs
    with pytest.raises(KeyError):
        store.request_cancel("20000101-000000-000000-abcdef")


def test_cancel_running_flag(store):
    rid = store.create_run({})
    store.claim_next(1)
    store.request_cancel(rid)
    run = store.get(rid)
    assert run.status == "running" and run.cancel_requested and store.cancel_requested(rid)
    store.mark_cancelled(rid)
    assert store.get(rid).status == "cancelled"


def test_reap_dead_worker_and_requeue(store):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that no longer exists
    rid = store.create_run({"sparsities": [0.5]})
    store.claim_next(proc.pid)  # running, never heartbeated, process gone
    store.set_progress(rid, 1, 3, "dense model evaluated")
    assert store.live_workers() == []
    assert store.reap() == [rid]
    run = store.get(rid)
    assert run.status == "interrupted" and "stopped before it finished" in run.error and not run.active
    assert store.reap() == []

    store.requeue(rid)
    run = store.get(rid)
    assert run.status == "queued" and run.error is None and run.worker_pid is None
    assert (run.progress_done, run.progress_total) == (0, 0) and run.started is None
    with pytest.raises(ValueError, match="only interrupted, failed, cancelled runs can be requeued"):
        store.requeue(rid)


def test_reap_keeps_live_worker_runs(store):
    rid = store.create_run({})
    store.heartbeat(os.getpid())
    store.claim_next(os.getpid())
    assert store.live_workers() == [os.getpid()]
    assert store.reap() == []
    assert store.get(rid).status == "running"
    # a stale heartbeat is not live even though the process is
    assert store.live_workers(max_age=-1) == []
    assert store.reap(max_age=-1) == [rid]
    store.forget_worker(os.getpid())
    assert store.live_workers() == []


def test_runs_survive_reopen(home):
    s1 = RunStore(home)
    a = s1.create_run({"n": 1}, title="kept", files={"m.bin": b"abc"})
    s1.claim_next(1)
    s1.set_progress(a, 1, 2, "half")
    del s1
    s2 = RunStore(home)
    run = s2.get(a)
    assert (run.title, run.status, run.progress_message) == ("kept", "running", "half")
    assert (s2.run_dir(a) / "m.bin").read_bytes() == b"abc"
    assert [r.id for r in s2.list()] == [a]


# ---- execute ---------------------------------------------------------------------------------------------
def test_execute_done(store):
    rid = store.create_run({"x": 1}, kind="test_echo")
    execute(store, store.claim_next(os.getpid()))
    run = store.get(rid)
    assert run.status == "done" and run.result["echo"] == {"x": 1}
    assert (run.progress_done, run.progress_total) == (1, 1)


def test_execute_cancel_running_within_2s(store):
    rid = store.create_run({"seconds": 30}, kind="test_sleepy")
    run = store.claim_next(os.getpid())
    t = threading.Thread(target=execute, args=(store, run))
    t.start()
    assert _wait(lambda: store.get(rid).progress_message == "sleeping", timeout=10)
    asked = time.monotonic()
    RunStore(store.home).request_cancel(rid)  # as the app would, from another connection
    t.join(timeout=10)
    elapsed = time.monotonic() - asked
    assert not t.is_alive()
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    assert store.get(rid).status == "cancelled"


def test_cancel_stops_a_demo_audit_within_2s(store):
    demos = pytest.importorskip("fairprune.data.demos")
    if "mnist" not in {d.name for d in demos.list_demos()}:
        pytest.skip("the mnist demo is not available")
    rid = store.create_run({"demo": "mnist", "sparsities": [i / 20 for i in range(19)], "batch_size": 64,
                            "device": "cpu"})
    run = store.claim_next(os.getpid())
    t = threading.Thread(target=execute, args=(store, run))
    t.start()
    assert _wait(lambda: store.get(rid).progress_done >= 1, timeout=60), store.get(rid)  # dense model done
    asked = time.monotonic()
    store.request_cancel(rid)
    t.join(timeout=30)
    elapsed = time.monotonic() - asked
    run = store.get(rid)
    assert run.status == "cancelled", (run.status, run.error)
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"


def test_cancel_is_cached(store, monkeypatch):
    rid = store.create_run({})
    calls = []
    real = store.cancel_requested
    monkeypatch.setattr(store, "cancel_requested", lambda r: calls.append(r) or real(r))
    cancel = jobs._CachedCancel(store, rid)
    for _ in range(50):
        cancel()
    assert len(calls) == 1  # at most one store read per 0.2 s


def test_execute_failures(store):
    boom = store.create_run({}, kind="test_boom")
    bad = store.create_run({}, kind="test_bad_input")
    unknown = store.create_run({}, kind="no_such_kind")
    for _ in range(3):
        execute(store, store.claim_next(os.getpid()))
    assert store.get(boom).status == "failed"
    assert store.get(boom).error == "internal error: RuntimeError: kaboom"
    assert store.get(bad).error == "data.csv: expected a column 'label'; found columns ['a', 'b']"
    err = store.get(unknown).error
    assert store.get(unknown).status == "failed" and "unknown run kind 'no_such_kind'" in err and "audit" in err


def test_audit_spec_with_unknown_key_fails_cleanly(store):
    rid = store.create_run({"sparsities": [0.5], "bogus": 1})
    execute(store, store.claim_next(os.getpid()))
    run = store.get(rid)
    assert run.status == "failed" and "unknown key(s) ['bogus']" in run.error


def test_register_executor_conflict():
    with pytest.raises(ValueError, match="already registered"):
        register_executor("test_echo")(lambda *a: {})
    register_executor("test_echo")(_echo)  # the same function again is fine


def test_run_worker_once(store):
    ids = [store.create_run({"i": i}, kind="test_echo") for i in range(3)]
    run_worker(store, once=True)
    assert [store.get(i).status for i in ids] == ["done"] * 3
    assert store.live_workers() == []  # it removed its heartbeat on the way out


def test_run_worker_stop_event(store):
    stop = threading.Event()
    t = threading.Thread(target=run_worker, args=(store,), kwargs={"poll": 0.05, "stop": stop})
    t.start()
    try:
        assert _wait(lambda: store.live_workers() == [os.getpid()], timeout=5)
        rid = store.create_run({}, kind="test_echo")
        assert _wait(lambda: store.get(rid).status == "done", timeout=5)
    finally:
        stop.set()
        t.join(timeout=5)
    assert not t.is_alive()


def test_worker_main_once(home):
    store = RunStore(home)
    rid = store.create_run({}, kind="test_echo")
    assert jobs.worker_main(["--home", str(home), "--once"]) == 0
    assert store.get(rid).status == "done"


def test_import_has_no_side_effects(tmp_path):
    h = tmp_path / "untouched"
    code = ("import threading, fairprune.run.store, fairprune.run.jobs; "
            "assert threading.active_count() == 1, threading.enumerate()")
    env = dict(os.environ, FAIRPRUNE_HOME=str(h), PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    assert not h.exists()


# ---- a real background worker ----------------------------------------------------------------------------
def test_ensure_worker_processes_runs(store, monkeypatch, spawned):
    _subprocess_env(monkeypatch)
    rid = store.create_run({"hello": "world"}, kind="test_echo")
    pid = jobs.ensure_worker(store, idle_exit=30)
    assert pid is not None
    spawned.append(pid)
    assert jobs.ensure_worker(store) is None  # starting or live: no second worker
    assert _wait(lambda: store.get(rid).status == "done", timeout=30), store.get(rid)
    run = store.get(rid)
    assert run.result["echo"] == {"hello": "world"} and run.result["pid"] == pid and run.worker_pid == pid
    assert store.live_workers() == [pid]
    assert jobs.ensure_worker(store) is None
    assert "worker" in (store.home / "worker.log").read_text()


def test_killed_worker_run_is_interrupted_then_requeued(store, monkeypatch, spawned):
    _subprocess_env(monkeypatch)
    rid = store.create_run({"seconds": 60}, kind="test_sleepy")
    pid = jobs.ensure_worker(store)
    spawned.append(pid)
    assert _wait(lambda: store.get(rid).progress_message == "sleeping", timeout=30), store.get(rid)
    os.kill(pid, signal.SIGKILL)
    assert _wait(lambda: store.live_workers() == [], timeout=10)
    assert store.get(rid).status == "running"  # nobody has looked yet
    # a restarted app (new store connection) finds it
    assert RunStore(store.home).reap() == [rid]
    assert store.get(rid).status == "interrupted"
    store.requeue(rid)
    assert store.get(rid).status == "queued"
    store.request_cancel(rid)
    assert store.get(rid).status == "cancelled"


def test_sigterm_marks_run_interrupted(store, monkeypatch, spawned):
    _subprocess_env(monkeypatch)
    rid = store.create_run({"seconds": 60}, kind="test_sleepy")
    pid = jobs.ensure_worker(store)
    spawned.append(pid)
    assert _wait(lambda: store.get(rid).progress_message == "sleeping", timeout=30)
    os.kill(pid, signal.SIGTERM)
    assert _wait(lambda: store.get(rid).status == "interrupted", timeout=10), store.get(rid)
    assert _wait(lambda: store.live_workers() == [], timeout=10)


def test_subprocess_worker_runs_an_audit(store, tmp_path, spawned):
    zoo = pytest.importorskip("fairprune.zoo")
    if not hasattr(zoo, "load_model"):
        pytest.skip("fairprune.zoo.load_model is not available yet")
    import numpy as np
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    from fairprune.zoo.archs import MLP

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(60, 4)).astype(np.float32), columns=["a", "b", "c", "d"])
    df["label"] = (df["a"] > 0).astype(int)
    df["group"] = np.where(np.arange(60) % 3 == 0, "x", "y")
    csv = tmp_path / "tiny.csv"
    df.to_csv(csv, index=False)
    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_file(MLP(4, 2).state_dict(), str(weights))

    spec = {"sparsities": [0.5], "model": "model.safetensors", "arch": "mlp",
            "arch_args": {"in_features": 4, "num_classes": 2}, "data": "data.csv", "device": "cpu"}
    rid = store.create_run(spec, title="tiny audit", files={"model.safetensors": weights, "data.csv": csv})
    pid = jobs.ensure_worker(store, idle_exit=30)
    spawned.append(pid)
    assert _wait(lambda: not store.get(rid).active, timeout=120), store.get(rid)
    run = store.get(rid)
    assert run.status == "done", run.error
    assert run.result["schema"] == "fairprune.audit/1"
    assert [lv["sparsity"] for lv in run.result["levels"]] == [0.5]
    assert set(run.result["data"]["groups"]) == {"x", "y"}
    assert run.progress_done == run.progress_total == 2
