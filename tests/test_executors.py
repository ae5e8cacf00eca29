"""Executors: the Ray executor on a real local Ray cluster gives the local executor's result, byte for byte;
a worker killed mid-run is retried; merge_results refuses results that do not belong together; the CLI.

One Ray cluster (2 CPUs, no dashboard) is shared by the module and shut down at its end.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import save_file

from fairprune.engine.audit import AuditSpec
from fairprune.run.cli import main
from fairprune.core.errors import Cancelled, InputError
from fairprune.run.executors import (LocalExecutor, MergeError, RayExecutor, configured_executor, get_executor,
                                 merge_results, split_spec)
from fairprune.run.executors._ray import run_unit
from fairprune.core.result import AuditResult

from conftest import make_table, train_mlp

pytestmark = pytest.mark.timeout(300)

MNIST = AuditSpec(demo="mnist", sparsities=(0.5, 0.9))


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def mnist_local():
    return get_executor("local").run(MNIST)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A CSV, MLP weights and the spec that audits them with random masks, fine-tuning and diagnostics."""
    d = tmp_path_factory.mktemp("exec_table")
    df = make_table(n=300, seed=4)
    df.to_csv(d / "test.csv", index=False)
    save_file(train_mlp(df, epochs=40).state_dict(), str(d / "mlp.safetensors"))
    spec = AuditSpec(model=str(d / "mlp.safetensors"), arch="mlp", num_classes=3,
                     arch_args={"in_features": 4, "hidden": (32, 16)}, data=str(d / "test.csv"), ignore=("sex",),
                     train_data=str(d / "test.csv"), finetune_epochs=1, method="random", seed=3,
                     sparsities=(0.9, 0.3, 0.6),
                     diagnostics={"hessian_rows": 16, "power_iterations": 5, "hutchinson_probes": 2})
    return d, spec


def _ours(pid: int) -> bool:
    """Whether process ``pid`` descends from this test process (a worker of the module's own cluster)."""
    me = os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == me:
            return True
    return False


class _Killer(threading.Thread):
    """SIGKILLs the first worker of our cluster seen executing a fairprune task (title ``ray::run_unit``)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop, self.killed = threading.Event(), []

    def run(self):
        while not self.stop.is_set() and not self.killed:
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                try:
                    title = (d / "cmdline").read_bytes()
                except OSError:
                    continue
                if title.startswith(b"ray::run_unit") and _ours(int(d.name)):
                    os.kill(int(d.name), signal.SIGKILL)
                    self.killed.append(int(d.name))
                    return
            time.sleep(0.01)


def test_ray_equals_local_mnist(cluster, mnist_local):
    calls = []
    result = get_executor("ray").run(MNIST, progress=lambda done, total, msg: calls.append((done, total, msg)))
    assert result.to_json() == mnist_local.to_json()
    assert [(d, t) for d, t, _ in calls] == [(0, 2), (1, 2), (2, 2)]
    assert "Ray task" in calls[0][2]
    assert set(result.sections) == {"footprint"} and [lv.sparsity for lv in result.levels] == [0.5, 0.9]


def test_ray_equals_local_with_diagnostics_finetuning_random_masks(cluster, table):
    _, spec = table
    local = LocalExecutor().run(spec)
    assert {"footprint", "diagnostics"} <= set(local.sections)
    # one task per level, each with one CPU so that both of the cluster's CPUs work at once
    result = get_executor("ray", cpus_per_task=1, ship_files=True).run(spec)
    assert result.to_json() == local.to_json()
    assert result.config.sparsities == [0.3, 0.6, 0.9]


def test_shipped_files_need_not_exist_on_the_worker(cluster, table, tmp_path):
    """The workers of a remote cluster do not see this disk: the files go through Ray's object store."""
    d, spec = table
    for name in ("mlp.safetensors", "test.csv"):
        (tmp_path / name).write_bytes((d / name).read_bytes())
    moved = replace(spec, model=str(tmp_path / "mlp.safetensors"), data=str(tmp_path / "test.csv"),
                    train_data=str(tmp_path / "test.csv"), sparsities=(0.6,))
    local = LocalExecutor().run(moved)
    shipped = RayExecutor(ship_files=True)._ship(ray, moved)
    assert set(shipped) == {"model", "data", "train_data"}
    for name in ("mlp.safetensors", "test.csv"):
        (tmp_path / name).unlink()
    result = ray.get(ray.remote(run_unit).options(num_cpus=1).remote(moved, shipped, torch.get_num_threads()))
    assert result.to_json() == local.to_json()   # same names, hashes and numbers as from the original paths


def test_compression_variants_run_as_one_task_beside_the_levels(cluster):
    spec = AuditSpec(demo="mnist", sparsities=(0.5, 0.9), compress=("fp16", "int8_weight"))
    units = split_spec(spec)
    assert [(u.sparsities, u.compress) for u in units] == [((0.5,), ()), ((0.9,), ()), ((), ("fp16", "int8_weight"))]
    calls = []
    result = get_executor("ray").run(spec, progress=lambda done, total, msg: calls.append((done, total, msg)))
    assert result.to_json() == LocalExecutor().run(spec).to_json()
    assert [e["method"] for e in result.sections["compression"]] == ["fp16", "int8_weight"]
    assert calls[-1][:2] == (3, 3)
    assert any("compression variants (fp16, int8_weight) done" in m for _, _, m in calls)
    # with diagnostics the variants are read beside the levels: one unit, whole
    whole = AuditSpec(demo="mnist", sparsities=(0.5,), compress=("fp16",), diagnostics=True)
    assert split_spec(whole) == [whole]


def test_killed_worker_is_retried(cluster, mnist_local):
    killer = _Killer()
    killer.start()
    try:
        result = get_executor("ray", max_retries=2).run(MNIST)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed, "no worker was seen running a task, so none was killed"
    assert result.to_json() == mnist_local.to_json()


def test_killed_worker_without_retries_fails_the_run(cluster):
    killer = _Killer()
    killer.start()
    try:
        with pytest.raises(RuntimeError, match="Ray task for sparsity .* failed after 0 retries"):
            get_executor("ray", max_retries=0).run(replace(MNIST, sparsities=(0.5,)))
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed


def test_cancel_stops_the_outstanding_tasks(cluster):
    asked = []

    def cancel():
        asked.append(time.monotonic())
        return len(asked) > 1        # not before the tasks are submitted, then at the first poll

    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        get_executor("ray", cpus_per_task=1).run(replace(MNIST, sparsities=(0.3, 0.5, 0.7, 0.9)), cancel=cancel)
    assert time.monotonic() - t0 < 10
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2, "cancelled tasks still hold the cluster's CPUs"


def test_a_task_error_is_raised_as_the_local_run_raises_it(cluster, table):
    _, spec = table
    bad = replace(spec, data=str(Path(spec.data).with_name("missing.csv")), diagnostics=False)
    with pytest.raises(InputError) as local:
        LocalExecutor().run(bad)
    with pytest.raises(InputError) as remote:
        get_executor("ray", cpus_per_task=1).run(bad)
    assert str(remote.value) == str(local.value)
    with pytest.raises(InputError, match="sparsity must be a fraction"):   # refused before any task starts
        get_executor("ray").run(replace(spec, sparsities=(0.5, 1.5)))


def test_merge_refuses_results_that_do_not_belong_together(table, mnist_local):
    _, spec = table
    spec = replace(spec, diagnostics=False, finetune_epochs=0, method="global_magnitude")
    parts = [LocalExecutor().run(u) for u in split_spec(spec)]
    assert merge_results(parts[::-1]).to_json() == LocalExecutor().run(spec).to_json()

    mnist_09 = replace(mnist_local, levels=mnist_local.levels[1:], config=replace(mnist_local.config, sparsities=[0.9]),
                       sections={})
    with pytest.raises(MergeError, match="models differ"):
        merge_results([parts[0], mnist_09])
    other_seed = LocalExecutor().run(replace(spec, sparsities=(0.9,), seed=4))
    with pytest.raises(MergeError, match="audit settings .* differ"):
        merge_results([parts[0], other_seed])
    with pytest.raises(MergeError, match="sparsity 0.3 was measured in both"):
        merge_results([parts[0], parts[0]])
    with pytest.raises(MergeError, match="section 'footprint' is missing"):
        merge_results([parts[0], replace(parts[1], sections={})])
    with pytest.raises(MergeError, match="cannot merge section 'extra'"):
        merge_results([parts[0].with_section("extra", {"x": 1}), parts[1].with_section("extra", {"x": 2})])
    assert merge_results([parts[0].with_section("extra", {"x": 1}),
                          parts[1].with_section("extra", {"x": 1})]).sections["extra"] == {"x": 1}
    data = AuditResult.from_dict(json.loads(parts[1].to_json()))
    data = replace(data, data=replace(data.data, n=data.data.n - 1))
    with pytest.raises(MergeError, match="data differ"):
        merge_results([parts[0], data])
    dense = replace(parts[1], dense=replace(parts[1].dense, accuracy_gap=parts[1].dense.accuracy_gap + 1e-9))
    with pytest.raises(MergeError, match="dense-model figures differ .*accuracy_gap"):
        merge_results([parts[0], dense])
    broken = json.loads(parts[1].to_json())
    broken["footprint"]["levels"] = []
    with pytest.raises(MergeError, match="one entry per level at levels"):
        merge_results([parts[0], AuditResult.from_dict(broken)])
    with pytest.raises(MergeError, match="nothing to merge"):
        merge_results([])


def test_merge_of_sections_that_some_parts_lack_or_record_differently(table):
    _, spec = table
    spec = replace(spec, diagnostics=False, finetune_epochs=0, method="global_magnitude", latency=True)
    parts = [LocalExecutor().run(u) for u in split_spec(spec)]
    # CUDA out-of-memory back-offs happened in two of the three tasks
    parts[1] = parts[1].with_section("batching", {"batch_size": 128, "out_of_memory_at": [256]})
    parts[2] = parts[2].with_section("batching", {"batch_size": 64, "out_of_memory_at": [256, 128]})
    merged = merge_results(parts)
    assert merged.sections["batching"] == {"batch_size": 64, "out_of_memory_at": [256, 128]}
    # timings differ in every run: the dense model's come from the first part, each level's from its own
    assert merged.dense.latency_ms == parts[0].dense.latency_ms is not None
    assert [lv.latency_ms for lv in merged.levels] == [p.levels[0].latency_ms for p in parts]
    fp = merged.sections["footprint"]
    assert fp["dense"]["latency_ms"] == parts[0].sections["footprint"]["dense"]["latency_ms"]
    assert [lv["sparsity"] for lv in fp["levels"]] == [0.3, 0.6, 0.9]


def test_an_address_where_nothing_answers_is_refused_at_once():
    import socket

    from fairprune.run.executors._ray import _probe

    with socket.socket() as s:          # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(InputError, match=f"nothing answers at 127.0.0.1:{port}"):
        _probe(f"ray://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10
    with pytest.raises(InputError, match="HOST:PORT"):
        _probe("head:port")
    _probe("auto")


def _cli(args, capsys):
    code = main([str(a) for a in args])
    return code, *capsys.readouterr()


def test_cli_executor_ray_writes_the_local_file(cluster, table, tmp_path, capsys):
    d, _ = table
    common = ["audit", "--model", d / "mlp.safetensors", "--arch", "mlp", "--num-classes", "3",
              "--arch-arg", "in_features=4", "--arch-arg", "hidden=32,16", "--data", d / "test.csv",
              "--ignore", "sex", "--sparsity", "0.5", "0.9", "--diagnostics", "--quiet"]
    code, _, err = _cli(common + ["--out", tmp_path / "local.json"], capsys)
    assert code == 0, err
    # the module's cluster is already connected: the executor uses it; an address turns on file shipping
    code, _, err = _cli(common + ["--executor", "ray", "--ray-address", "auto", "--out", tmp_path / "ray.json"], capsys)
    assert code == 0, err
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "local.json").read_bytes()
    assert ray.is_initialized()   # the CLI leaves a connection it did not make alone

    code, _, err = _cli(common + ["--ray-address", "auto", "--out", tmp_path / "x.json"], capsys)
    assert code == 2 and err.startswith("error: --ray-address is for --executor ray"), err
    code, _, err = _cli(common + ["--executor", "ray", "--sparsity", "2", "--out", tmp_path / "x.json"], capsys)
    assert code == 2 and "sparsity must be a fraction" in err, err


def test_configuration_from_the_environment(monkeypatch):
    monkeypatch.delenv("FAIRPRUNE_EXECUTOR", raising=False)
    monkeypatch.delenv("FAIRPRUNE_RAY_ADDRESS", raising=False)
    assert isinstance(configured_executor(), LocalExecutor)
    monkeypatch.setenv("FAIRPRUNE_EXECUTOR", "ray")
    ex = configured_executor()
    assert isinstance(ex, RayExecutor) and ex.address is None and not ex.ship_files
    monkeypatch.setenv("FAIRPRUNE_RAY_ADDRESS", "ray://head:10001")
    ex = configured_executor()
    assert ex.address == "ray://head:10001" and ex.ship_files
    assert configured_executor("ray", "auto").address == "auto"
    assert isinstance(configured_executor("local"), LocalExecutor)
    monkeypatch.setenv("FAIRPRUNE_EXECUTOR", "dask")
    with pytest.raises(InputError, match="unknown executor 'dask'; expected one of: local, ray"):
        configured_executor()
    with pytest.raises(InputError, match="executor 'local'"):
        get_executor("local", address="auto")
    with pytest.raises(InputError, match="max_retries"):
        get_executor("ray", max_retries=-1)


class _FakeCluster:
    """ray.cluster_resources()/ray.nodes() of a cluster that is not here (the GPU request's logic)."""

    def __init__(self, cpus, gpus):
        self.cpus, self.gpus = cpus, gpus

    def cluster_resources(self):
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}

    def nodes(self):
        return [{"Alive": True, "Resources": self.cluster_resources()}]


def test_each_task_asks_for_a_gpu_when_the_cluster_has_them():
    ex = RayExecutor(threads=4)
    opts, threads = ex._task_options(_FakeCluster(16, 2), MNIST)
    assert opts["num_gpus"] == 1 and opts["num_cpus"] == 4 and threads == 4 and opts["max_retries"] == 3
    assert ex._task_options(_FakeCluster(16, 0), MNIST)[0]["num_gpus"] == 0
    assert ex._task_options(_FakeCluster(16, 2), replace(MNIST, device="cpu"))[0]["num_gpus"] == 0
    assert ex._task_options(_FakeCluster(2, 0), MNIST)[0]["num_cpus"] == 2   # no more CPUs than a node has
    with pytest.raises(InputError, match="no GPUs"):
        ex._task_options(_FakeCluster(16, 0), replace(MNIST, device="cuda"))
    with pytest.raises(InputError, match="asks for 2 GPU"):
        RayExecutor(gpus_per_task=2)._task_options(_FakeCluster(16, 1), MNIST)


def test_ray_is_imported_only_when_used():
    code = ("import sys, fairprune.run.executors, fairprune.run.cli; "
            "fairprune.run.executors.configured_executor('ray'); "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_variants_merge_from_one_part_only():
    from fairprune.engine.audit import run_spec

    only = AuditSpec(demo="adult", sparsities=(), compress=("fp16",))
    assert split_spec(only) == [only]                          # nothing to run beside it
    spec = AuditSpec(demo="adult", sparsities=(0.5,), compress=("fp16",))
    level, variants = (run_spec(u) for u in split_spec(spec))
    assert merge_results([variants, level]).to_json() == run_spec(spec).to_json()
    with pytest.raises(MergeError, match=r"compression variants.*found (them in )?2"):
        merge_results([level, variants, run_spec(AuditSpec(demo="adult", sparsities=(), compress=("bf16",)))])
