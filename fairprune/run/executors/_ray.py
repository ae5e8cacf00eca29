"""The ``ray`` executor: one Ray task per sparsity level, merged into one ``fairprune.audit/1`` result.

Each task runs :func:`fairprune.engine.audit.run_spec` on the spec with one level, or with the compression
variants only (:func:`split_spec`), and
returns its :class:`~fairprune.core.result.AuditResult`; :func:`merge_results` makes them one result, equal to
the byte to a local run of the whole spec (see :mod:`fairprune.run.executors._merge` for why).

- Where: ``address`` None starts a local cluster in this process (``ray.init(address="local", num_cpus=...)``,
  no dashboard, worker output not forwarded); an address (``auto``, ``HOST:6379``, ``ray://HEAD:10001``)
  connects to a running cluster (``ray up``, KubeRay). A process already connected to Ray reuses that.
- Resources: each task asks for one GPU when the cluster has GPUs (and the spec does not say
  ``device="cpu"``), and for ``cpus_per_task`` CPUs; torch runs ``threads`` threads in it (default: this
  process's ``torch.get_num_threads()``, so that CPU results, the footprint's device line included, are the
  ones a local run here gives).
- Files: connected to a cluster (an address), the model, data and training files are shipped through
  Ray's object store and written under their own names in a temporary folder on the worker, so the nodes
  need not see this machine's disk (``ship_files=False`` when they read the same paths anyway).
- Failures: a worker that dies (killed, out of memory, node lost) has its task retried up to
  ``max_retries`` times; an error the pipeline raises (bad input) is not retried and is raised here as it
  was raised there, the other tasks cancelled.
- ``cancel()`` is polled every ``poll_s`` seconds: the outstanding tasks are cancelled (their workers
  killed) and :class:`~fairprune.core.errors.Cancelled` raised. ``progress(done, total, message)`` counts
  finished tasks.

Ray is imported only when a run starts.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ...core.errors import Cancelled, InputError
from ._merge import MergeError, merge_results, split_spec

if TYPE_CHECKING:
    from ...engine.audit import AuditSpec, Progress
    from ...core.result import AuditResult

__all__ = ["RayExecutor", "FILE_FIELDS"]

#: the AuditSpec fields that name files (shipped to the workers when ``ship_files``)
FILE_FIELDS = ("model", "data", "train_data")


def describe(unit: "AuditSpec") -> str:
    """How progress and errors name a unit: its level, or the spec it is whole."""
    compress = getattr(unit, "compress", ())
    if len(unit.sparsities) == 1 and not compress:
        return f"sparsity {unit.sparsities[0]:g}"
    if compress and not unit.sparsities:
        return f"compression variants ({', '.join(compress)})"
    return "the whole spec"


def run_unit(spec: "AuditSpec", shipped: dict, threads: int | None) -> "AuditResult":
    """A Ray task's body: one unit of a spec, on the worker. ``shipped``: field -> (file name, object ref)."""
    import torch

    from ...engine.audit import run_spec

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="fairprune-ray-") as tmp:
        if shipped:
            import ray

            paths = {}
            for fld, (name, ref) in shipped.items():
                path = Path(tmp, fld, name)
                path.parent.mkdir()
                path.write_bytes(ray.get(ref))
                paths[fld] = str(path)
            spec = replace(spec, **paths)
        return run_spec(spec)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Refuse at once an address where nothing listens (Ray itself retries such an address for many minutes)."""
    import socket

    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    if hostport in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ValueError:
        raise InputError(f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT; found {address!r}") from None
    except OSError as err:
        raise InputError(f"could not connect to the Ray cluster at {address!r}: nothing answers at {host}:{port} "
                         f"({err})") from err


class RayExecutor:
    """Runs a spec's units as Ray tasks. See the module's documentation for every option."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, cpus_per_task: float | None = None,
                 gpus_per_task: float | None = None, threads: int | None = None, max_retries: int = 3,
                 ship_files: bool | None = None, runtime_env: dict | None = None, poll_s: float = 0.2):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise InputError(f"--ray-address must be a Ray address such as auto, HOST:6379 or ray://HEAD:10001; "
                             f"found {address!r}")
        for opt, v in (("num_cpus", num_cpus), ("threads", threads)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InputError(f"ray executor option {opt} must be a whole number >= 1; found {v!r}")
        for opt, v in (("cpus_per_task", cpus_per_task), ("gpus_per_task", gpus_per_task)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise InputError(f"ray executor option {opt} must be a number >= 0; found {v!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InputError(f"ray executor option max_retries must be a whole number >= 0; found {max_retries!r}")
        if address is not None and num_cpus is not None:
            raise InputError("ray executor option num_cpus sizes a local cluster; a cluster at an address has its own")
        self.address = address.strip() if address else None
        self.num_cpus, self.cpus_per_task, self.gpus_per_task = num_cpus, cpus_per_task, gpus_per_task
        self.threads, self.max_retries, self.runtime_env, self.poll_s = threads, max_retries, runtime_env, poll_s
        self.ship_files = (self.address is not None) if ship_files is None else bool(ship_files)
        self._started = False   # this executor started the Ray runtime (and shuts it down in close())

    # ---- connection -----------------------------------------------------------------------------
    def _ray(self):
        import ray
        from ray.exceptions import AuthenticationError

        if ray.is_initialized():
            return ray
        kw = dict(log_to_driver=False, logging_level=logging.WARNING)
        if self.runtime_env:
            kw["runtime_env"] = self.runtime_env
        try:
            if self.address:
                _probe(self.address)
                ray.init(address=self.address, **kw)
            else:
                ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1, include_dashboard=False, **kw)
        except (ConnectionError, TimeoutError, AuthenticationError) as err:
            raise InputError(f"could not connect to the Ray cluster at {self.address!r}: {err} (a cluster with token "
                             f"authentication, Ray's default, needs RAY_AUTH_MODE=token here and its token in "
                             f"~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN)") from err
        self._started = True
        return ray

    def close(self) -> None:
        """Shut Ray down if this executor started it (a connection made elsewhere is left alone)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- resources ------------------------------------------------------------------------------
    def _task_options(self, ray, spec: "AuditSpec") -> tuple[dict, int]:
        import torch

        threads = self.threads or torch.get_num_threads()
        total = ray.cluster_resources()
        cluster_gpus = total.get("GPU", 0)
        if self.gpus_per_task is not None:
            gpus = self.gpus_per_task
        else:
            gpus = 1 if cluster_gpus and spec.device != "cpu" else 0
        if spec.device == "cuda" and not gpus:
            raise InputError("--device cuda: the Ray cluster has no GPUs (ray.cluster_resources() lists none); "
                             "leave --device out or add GPU nodes")
        if gpus and gpus > cluster_gpus:
            raise InputError(f"each task asks for {gpus:g} GPU(s) but the Ray cluster has {cluster_gpus:g}")
        cpus = self.cpus_per_task
        if cpus is None:
            # as many CPUs as threads, but never more than one node has (a task no node fits never starts)
            node_cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
            cpus = min(threads, max(node_cpus)) if node_cpus and max(node_cpus) >= 1 else threads
        return dict(num_cpus=cpus, num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=False), threads

    def _ship(self, ray, spec: "AuditSpec") -> dict:
        shipped = {}
        for fld in FILE_FIELDS:
            value = getattr(spec, fld, None)
            # a path that is no file here is left as it is: the worker's loader reports it as a local run would
            if value and Path(value).is_file():
                shipped[fld] = (Path(value).name, ray.put(Path(value).read_bytes()))
        return shipped

    # ---- running --------------------------------------------------------------------------------
    def run(self, spec: "AuditSpec", progress: "Progress | None" = None,
            cancel: Callable[[], bool] | None = None) -> "AuditResult":
        units = split_spec(spec)            # bad levels are refused before Ray starts
        if cancel is not None and cancel():
            raise Cancelled("cancelled before it started")
        ray = self._ray()
        options, threads = self._task_options(ray, spec)
        shipped = self._ship(ray, spec) if self.ship_files else {}
        task = ray.remote(run_unit).options(**options)
        refs = {task.remote(unit, shipped, threads): i for i, unit in enumerate(units)}
        pending, results, total = list(refs), [None] * len(units), len(units)
        if progress is not None:
            progress(0, total, f"{total} Ray task(s) submitted")
        try:
            while pending:
                if cancel is not None and cancel():
                    raise Cancelled("cancelled")
                ready, pending = ray.wait(pending, num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    i = refs[ref]
                    results[i] = self._get(ray, ref, units[i])
                    if progress is not None:
                        done = sum(r is not None for r in results)
                        progress(done, total, f"{describe(units[i])} done ({done} of {total} tasks)")
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone: nothing left to stop
                    pass
            raise
        try:
            return merge_results(results)
        except MergeError as err:
            raise MergeError(f"the Ray tasks' results do not merge (nodes with other library versions or "
                             f"hardware?): {err}") from err

    def _get(self, ray, ref, unit: "AuditSpec") -> "AuditResult":
        from ray.exceptions import RayError, RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as err:
            # the pipeline raised on the worker: raise what it raised (InputError -> exit 2, ...)
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception):
                raise cause from err
            raise
        except RayError as err:
            raise RuntimeError(f"the Ray task for {describe(unit)} failed after "
                               f"{self.max_retries} retries: {type(err).__name__}: {err}") from err
