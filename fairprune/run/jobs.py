"""Background execution: a worker process claims queued runs from the store and executes them.

The dashboard only writes a run into the :class:`~fairprune.run.store.RunStore` and calls
:func:`ensure_worker`; the worker (``python -m fairprune.run.jobs`` or ``fairprune worker``) claims it,
reports progress and writes the result or the error back. The page polls the store, so closing the
browser or restarting the app loses nothing.

A run's ``kind`` picks its executor from :data:`EXECUTORS`::

    @register_executor("audit")
    def _audit(store, run, progress, cancel) -> dict: ...   # returns the result JSON dict

A run cannot take the worker down with it: an exception, running out of memory (the worker process runs
under a memory limit, ``$FAIRPRUNE_WORKER_MEMORY_MB``: see :func:`apply_memory_limit`) or a ``sys.exit``
fails that run and the worker takes the next. A worker that dies anyway (SIGKILL, the kernel's OOM killer)
leaves its run ``running`` until :meth:`RunStore.reap` (each worker's loop, the page showing the run) marks
it ``interrupted``; nothing else is lost, and the next worker takes the queue.

``progress(done, total, message)`` writes to the store; ``cancel()`` returns True once the user asked
to stop (the pipeline then raises :class:`fairprune.core.errors.Cancelled`). An executor must be registered
in a module the worker imports: this one, or one named in ``$FAIRPRUNE_WORKER_IMPORTS`` /
``--import`` (comma-separated module names). Heavy imports (torch) belong inside the executor, so that
starting a worker and importing this module stay cheap and side-effect free.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..core.errors import Cancelled, InputError, is_out_of_memory
from .store import Run, RunStore

__all__ = ["EXECUTORS", "Executor", "register_executor", "execute", "run_worker", "ensure_worker", "worker_main",
           "warm_up", "warm_demo",
           "apply_memory_limit", "is_out_of_memory"]

log = logging.getLogger("fairprune.jobs")

#: executor(store, run, progress, cancel) -> result dict
Executor = Callable[[RunStore, Run, Callable[[int, int, str], None], Callable[[], bool]], dict]
EXECUTORS: dict[str, Executor] = {}

#: cancel() asks the store at most this often (seconds); between asks it answers from its cache
CANCEL_POLL_S = 0.2
#: a worker heartbeats this often (seconds) from a background thread, also while a run executes
HEARTBEAT_S = 2.0
#: a worker started less than this long ago counts as live before its first heartbeat (seconds)
START_GRACE_S = 30.0
IMPORTS_ENV = "FAIRPRUNE_WORKER_IMPORTS"
#: the worker's memory limit in MiB (``0``: none); unset: :data:`DEFAULT_MEMORY_FRACTION` of the RAM
MEMORY_ENV = "FAIRPRUNE_WORKER_MEMORY_MB"
#: without ``$FAIRPRUNE_WORKER_MEMORY_MB``, a worker on a machine without an NVIDIA driver may use this share of RAM
DEFAULT_MEMORY_FRACTION = 0.8
#: how often a worker that :func:`ensure_worker` starts looks at an empty queue (seconds)
WORKER_POLL_S = 0.2
#: what a worker imports when it starts, before it takes its first run, so that a run queued at once (the
#: dashboard's demo, clicked as soon as the start page shows) does not pay for them: torch, the loaders and the
#: audit pipeline with the modules it imports lazily (pandas, safetensors, the local executor)
WARM_IMPORTS = ("torch", "pandas", "safetensors.torch", "fairprune.zoo", "fairprune.data", "fairprune.data.demos",
                "fairprune.engine.audit", "fairprune.engine.evaluate", "fairprune.engine.prune",
                "fairprune.engine.footprint", "fairprune.run.executors")
#: workers this process started: kept so they can be waited for (no zombies, no ResourceWarning)
_STARTED: list[subprocess.Popen] = []

UNKNOWN_KIND = "unknown run kind {kind!r}; this worker can run: {known}"
OUT_OF_MEMORY = (
    "out of memory: the run needed more memory than {where} ({detail}); audit fewer or smaller samples, use a "
    "smaller batch size, or {more}"
)
EXITED = "internal error: the run called sys.exit({code}) instead of returning a result or raising an error"
BAD_MEMORY_ENV = "{env}: expected a whole number of MiB (0 for no limit); found {found!r}"


def register_executor(kind: str) -> Callable[[Executor], Executor]:
    """Decorator: ``fn`` executes runs of ``kind``. Registering a different function for a kind is an error."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string such as 'audit'; found {kind!r}")

    def deco(fn: Executor) -> Executor:
        old = EXECUTORS.get(kind)
        # the same function registered again (a module imported twice, e.g. as a test module) is fine
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"executor for kind {kind!r} already registered: "
                             f"{old.__module__}.{old.__qualname__}")
        EXECUTORS[kind] = fn
        return fn

    return deco


@register_executor("audit")
def _execute_audit(store: RunStore, run: Run, progress, cancel) -> dict:
    from dataclasses import fields

    from ..engine.audit import AuditSpec
    from .executors import configured_executor

    known = {f.name for f in fields(AuditSpec)}
    unknown = sorted(set(run.spec) - known)
    if unknown:
        raise InputError(f"audit spec: unknown key(s) {unknown}; expected some of {sorted(known)}")
    if "sparsities" not in run.spec:
        raise InputError("audit spec: expected 'sparsities' (e.g. [0.5, 0.9]); found none")
    # FAIRPRUNE_EXECUTOR=ray (and FAIRPRUNE_RAY_ADDRESS) send the run to a Ray cluster; local otherwise
    with configured_executor() as executor:
        return executor.run(AuditSpec.from_dict(run.spec), progress=progress, cancel=cancel).to_dict()


@register_executor("mitigate")
def _execute_mitigate(store: RunStore, run: Run, progress, cancel) -> dict:
    """Run a mitigation spec (``fairprune.engine.mitigate.MitigationSpec`` keys); returns ``{"mitigation": ...}``.

    Spec keys: ``sparsity`` (required); ``method``, ``when``, ``epochs``, ``seeds``, ``seed``, ``alpha``,
    ``dual_lr``, ``warmup``, ``balanced``, ``dual_holdout``, ``protect``, ``lr``, ``batch_size`` (fine-tuning),
    ``train_fraction``, ``prune_method``, ``baselines``, ``also``, ``device``, ``save_model``; and the loading
    keys of an audit spec: ``model``, ``data``, ``demo``, ``arch``, ``num_classes``, ``arch_args``, ``label``,
    ``group``, ``features``, ``ignore``, ``missing_group``, ``normalize``, ``train_data``. Unknown keys are refused.
    """
    from ..engine.mitigate import MitigationSpec, run_spec as run_mitigation

    return run_mitigation(MitigationSpec.from_dict(run.spec), progress=progress, cancel=cancel).to_dict()


@register_executor("search")
def _execute_search(store: RunStore, run: Run, progress, cancel) -> dict:
    """The operating-point search (:func:`fairprune.engine.search.search_methods`); returns search.json's dict.

    Spec keys: ``methods`` (or ``method``), ``max_violation``, ``max_overall_drop``, ``max_group_drop``,
    ``confidence``, ``lo``, ``hi``, ``tol``, ``max_evals``, ``grid``, ``finetune_epochs``, ``seed``, ``device``,
    ``batch_size``, ``compress`` (compression variants judged beside the levels); and the loading keys of an
    audit spec. Unknown keys are refused.
    """
    from ..engine.audit import LOAD_KEYS as load
    from ..engine.audit import InputSpec, load_inputs
    from ..engine.search import search_methods

    opts = ("max_violation", "max_overall_drop", "max_group_drop", "confidence", "lo", "hi", "tol", "max_evals",
            "grid", "finetune_epochs", "seed", "device", "batch_size", "compress")
    spec = dict(run.spec)
    unknown = sorted(set(spec) - set(load) - set(opts) - {"methods", "method"})
    if unknown:
        raise InputError(f"search spec: unknown key(s) {unknown}; expected some of "
                         f"{sorted({*load, *opts, 'methods', 'method'})}")
    methods = spec.get("methods") or [spec.get("method") or "global_magnitude"]
    methods = [methods] if isinstance(methods, str) else list(methods)
    lspec = {k: spec[k] for k in load if k in spec}
    for k in ("group", "features", "ignore"):
        if lspec.get(k) is not None:
            lspec[k] = tuple(lspec[k])
    model, data, train = load_inputs(InputSpec(**lspec))
    kw = {k: spec[k] for k in opts if spec.get(k) is not None}
    if "compress" in kw:
        kw["compress"] = [kw["compress"]] if isinstance(kw["compress"], str) else list(kw["compress"])
    report = search_methods(model, data, methods=methods, train_data=train, progress=progress, cancel=cancel, **kw)
    return report.to_dict()


def _import_plugins(modules: str | list[str] | None = None) -> None:
    """Import the modules that register extra executor kinds (``--import`` / ``$FAIRPRUNE_WORKER_IMPORTS``)."""
    names: list[str] = []
    for src in ([modules] if isinstance(modules, str) else list(modules or [])) + [os.environ.get(IMPORTS_ENV, "")]:
        names += [n.strip() for n in src.split(",") if n.strip()]
    for name in names:
        importlib.import_module(name)


class _CachedCancel:
    """cancel() for one run: asks the store at most every CANCEL_POLL_S seconds, answers from a cache between."""

    def __init__(self, store: RunStore, run_id: str):
        self.store, self.run_id = store, run_id
        self._checked = float("-inf")
        self._flag = False

    def __call__(self) -> bool:
        if self._flag:
            return True
        now = time.monotonic()
        if now - self._checked >= CANCEL_POLL_S:
            self._checked = now
            self._flag = self.store.cancel_requested(self.run_id)
        return self._flag


def _refuse_torchscript(run: Run) -> None:
    """The worker runs what the dashboard queued, so it keeps the dashboard's rule: a TorchScript model (code) only
    where the server opts in (:func:`fairprune.zoo._load.torchscript_allowed`), however the run was queued (a
    re-queued run, a restored session, a spec written to the store by hand)."""
    from ..zoo._load import TORCHSCRIPT_REFUSED, model_kind, torchscript_allowed

    model = (run.spec or {}).get("model")
    if model and Path(model).is_file() and not torchscript_allowed() and model_kind(model) == "torchscript":
        raise InputError(TORCHSCRIPT_REFUSED.format(path=Path(model).name))


def execute(store: RunStore, run: Run) -> None:
    """Execute one claimed run and record how it ended; never lets an ``Exception`` escape.

    done -> ``finish``; :class:`Cancelled` -> ``mark_cancelled``; :class:`InputError` -> ``fail`` with
    its message; running out of memory (``MemoryError``, or an allocator's error from torch, CPU or CUDA)
    -> ``fail`` with ``out of memory: ...``; a ``sys.exit`` inside the run -> ``fail``; anything else ->
    ``fail`` with ``internal error: Type: message`` (traceback logged). The worker goes on serving after
    each of these. KeyboardInterrupt (the worker is being stopped: Ctrl-C, SIGTERM) marks the run
    interrupted and propagates.
    """
    cancel = _CachedCancel(store, run.id)

    def progress(done: int, total: int, message: str) -> None:
        store.set_progress(run.id, done, total, message)

    out_of_memory = None
    try:
        fn = EXECUTORS.get(run.kind)
        if fn is None:
            raise InputError(UNKNOWN_KIND.format(kind=run.kind, known=", ".join(sorted(EXECUTORS)) or "none"))
        if cancel():
            raise Cancelled("cancelled before it started")
        _refuse_torchscript(run)
        log.info("run %s (%s) started", run.id, run.kind)
        result = fn(store, run, progress, cancel)
        if not isinstance(result, dict):
            raise TypeError(f"executor for {run.kind!r} returned {type(result).__name__}, expected a result dict")
        store.finish(run.id, result)
        log.info("run %s done", run.id)
    except Cancelled:
        _record(store.mark_cancelled, run.id)
        log.info("run %s cancelled", run.id)
    except InputError as err:
        _record(store.fail, run.id, str(err))
        log.info("run %s failed: %s", run.id, err)
    except Exception as err:
        if is_out_of_memory(err):
            out_of_memory = out_of_memory_message(err)
        else:
            log.exception("run %s: internal error", run.id)
            _record(store.fail, run.id, f"internal error: {type(err).__name__}: {err}")
    except SystemExit as err:  # code in the run called sys.exit(): its failure, not the worker's end
        log.error("run %s called sys.exit(%r)", run.id, err.code)
        _record(store.fail, run.id, EXITED.format(code=repr(err.code)))
    except BaseException:  # KeyboardInterrupt: the worker is stopping
        _record(store.mark_interrupted, run.id, "interrupted: the worker was stopped while running it; "
                                                 "requeue the run to start it again")
        raise
    if out_of_memory is None:
        return
    # Out of memory. Recorded here, outside the except clause: the traceback (and the frames holding the
    # memory the run took) is gone, so writing the outcome does not run out of memory in turn.
    gc.collect()
    log.warning("run %s: %s", run.id, out_of_memory)
    _record(store.fail, run.id, out_of_memory)


def out_of_memory_message(err: BaseException) -> str:
    """The run's error text for an out-of-memory failure: what ran out, the limit, how to give more."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    name = "MemoryError" if isinstance(err, MemoryError) else type(err).__name__   # not numpy's _ArrayMemoryError
    detail = f"{name}: {lines[0][:300]}" if lines else name
    detail = re.sub(r"^RuntimeError: \[enforce fail at [^\]]*\] (err == 0\. )?", "", detail)
    limit = memory_limit_mb()
    if "cuda" in detail.lower():
        where, more = "the GPU has free", "use a GPU with more memory"
    elif limit:
        where, more = f"the worker's limit of {limit:,} MiB", f"raise the limit ({MEMORY_ENV}, in MiB)"
    else:
        where, more = "this machine has free", "run it where more memory is free"
    return OUT_OF_MEMORY.format(where=where, detail=detail, more=more)


def memory_limit_mb() -> int | None:
    """This process's data-size limit (RLIMIT_DATA) in MiB, None when unlimited."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    return None if soft == resource.RLIM_INFINITY else soft >> 20


def _physical_memory_mb() -> int | None:
    """The RAM this process may use: the machine's, or its container's cgroup limit when that is lower."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # v2, v1
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():   # "max" (v2) means none; v1 writes a huge number instead, which min() ignores
            sizes.append(int(text))
    return min(sizes) >> 20 if sizes else None


def apply_memory_limit(env: dict | None = None) -> int | None:
    """Limit this process's memory as ``$FAIRPRUNE_WORKER_MEMORY_MB`` says; return the limit in MiB (None: none).

    The limit is RLIMIT_DATA (private writable memory: what arrays and tensors take), so a run that
    asks for more fails with a MemoryError, or torch's allocator error, which :func:`execute` records
    as ``out of memory`` while the worker goes on; without it the kernel's out-of-memory killer would
    end the worker (or another process). Unset: :data:`DEFAULT_MEMORY_FRACTION` of the RAM, except
    where an NVIDIA driver is loaded (/proc/driver/nvidia), since a CUDA context maps large regions of
    its own: there a limit applies only when set. RAM is the machine's, or the container's (cgroup) limit
    when lower. ``0``: no limit (a soft limit inherited from the parent is lifted to the hard one).
    Processes the worker starts (a local Ray cluster, say) inherit the limit, each on its own. Raises
    ValueError on a bad value.
    """
    import resource

    env = os.environ if env is None else env
    raw = env.get(MEMORY_ENV, "").strip()
    if raw:
        try:
            mb = int(raw)
        except ValueError:
            raise ValueError(BAD_MEMORY_ENV.format(env=MEMORY_ENV, found=raw)) from None
        if mb < 0:
            raise ValueError(BAD_MEMORY_ENV.format(env=MEMORY_ENV, found=raw))
    else:
        total = _physical_memory_mb()
        mb = 0 if total is None or Path("/proc/driver/nvidia").exists() else int(total * DEFAULT_MEMORY_FRACTION)
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if mb:
        soft = mb << 20 if hard == resource.RLIM_INFINITY else min(mb << 20, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    elif raw:   # "0": no limit of ours, nor one inherited from the process that started this one
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
    return memory_limit_mb()


def warm_up(modules: tuple[str, ...] = WARM_IMPORTS) -> float:
    """Import ``modules`` and run one tiny forward pass (CPU kernels set up), so that the worker's first run
    starts computing at once; returns the seconds it took. A module that fails to import is logged and skipped:
    the run that needs it reports the error itself."""
    start = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:   # noqa: BLE001 - warming is an optimisation, never a reason not to serve
            log.warning("warm-up: could not import %s", name, exc_info=True)
    try:
        import torch

        with torch.no_grad():
            torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3)).relu().sum().item()
    except Exception:   # noqa: BLE001
        log.warning("warm-up: the first forward pass failed", exc_info=True)
    return time.perf_counter() - start


#: the demo a warm worker loads while idle (the dashboard's "Try the demo"), so that its first audit starts
#: measuring at once; ``$FAIRPRUNE_WORKER_WARM_DEMO`` names another, or ``none`` for no demo
WARM_DEMO_ENV = "FAIRPRUNE_WORKER_WARM_DEMO"
WARM_DEMO = "mnist"


def warm_demo(name: str | None = None) -> float:
    """Load a built-in demo's data and model (both cached by :mod:`fairprune.data.demos`) and run the model once on a
    batch of its test rows, so that a worker's first demo audit finds them ready; returns the seconds it took.
    ``name``: default ``$FAIRPRUNE_WORKER_WARM_DEMO`` or :data:`WARM_DEMO`; ``none`` or empty: nothing. A demo that
    fails to load is logged and skipped: the run that asks for it reports the error itself."""
    start = time.perf_counter()
    name = os.environ.get(WARM_DEMO_ENV, WARM_DEMO) if name is None else name
    if not name or name.strip().lower() == "none":
        return 0.0
    try:
        import torch

        from ..data.demos import demo_dataset, demo_model
        from ..engine.evaluate import model_outputs
        from ..zoo import LoadedModel

        data = demo_dataset(name.strip())
        test = data.part("test") if data.split is not None else data
        model = LoadedModel.from_module(demo_model(name.strip()), name=name)
        with torch.inference_mode():
            model_outputs(model, next(test.batches(min(256, test.n), "cpu"))[0])
    except Exception:   # noqa: BLE001 - warming is an optimisation, never a reason not to serve
        log.warning("warm-up: could not load the demo %r", name, exc_info=True)
    return time.perf_counter() - start


def _freeze_heap() -> None:
    """Move what warming loaded (modules, the demo's data) out of the garbage collector's view (``gc.freeze``):
    a full collection, which timing a model does before each timing, then walks only what runs allocate (measured:
    0.5 s -> 0.0 s per collection with torch, pandas and the demo loaded, on a busy 2-core machine)."""
    gc.collect()
    gc.freeze()


def _record(method, *args) -> None:
    """Write a run's ending; if even that fails (database gone), log it: reap will find the run."""
    try:
        method(*args)
    except Exception:
        log.exception("could not record the end of run %s", args[0])


class _Heartbeat(threading.Thread):
    """Heartbeats for one worker every ``HEARTBEAT_S`` s until stopped, whatever the main thread is doing."""

    def __init__(self, store: RunStore, pid: int):
        super().__init__(name="fairprune-heartbeat", daemon=True)
        self.store, self.pid = store, pid
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(HEARTBEAT_S):
            try:
                self.store.heartbeat(self.pid)
            except Exception:  # a locked or vanished database must not kill the worker; reap tolerates gaps
                log.exception("heartbeat failed")


def run_worker(store: RunStore | None = None, *, poll: float = 0.5, once: bool = False,
               stop: threading.Event | None = None, idle_exit: float | None = None, warm: bool = False) -> None:
    """The worker loop: heartbeat, reap dead workers' runs, claim the oldest queued run, execute it.

    Args:
        poll: seconds to wait between looks at an empty queue.
        once: process the runs queued now (and any queued meanwhile), then return.
        stop: set it to make the loop return after the current run.
        idle_exit: return after this many seconds with nothing to do (None: never).
        warm: first import torch and the engine (:func:`warm_up`) and load the dashboard's demo (:func:`warm_demo`),
            heartbeating meanwhile, so that the first run queued (the dashboard's demo, clicked as soon as the page
            shows) does not pay for them; then freeze the heap so far out of the garbage collector's walks.
    """
    store = store if store is not None else RunStore()
    stop = stop if stop is not None else threading.Event()
    pid = os.getpid()
    store.heartbeat(pid)
    beat = _Heartbeat(store, pid)
    beat.start()
    if warm:
        took = warm_up()
        demo = warm_demo()
        _freeze_heap()
        log.info("worker %d warmed up in %.1f s (imports %.1f s, demo %.1f s)", pid, took + demo, took, demo)
    idle_since = time.monotonic()
    try:
        while not stop.is_set():
            store.heartbeat(pid)
            for run_id in store.reap():
                log.warning("run %s was running under a worker that is gone: marked interrupted", run_id)
            run = store.claim_next(pid)
            if run is not None:
                execute(store, run)
                idle_since = time.monotonic()
                continue
            if once:
                return
            if idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                log.info("idle for %.0f s: exiting", idle_exit)
                return
            stop.wait(poll)
    finally:
        beat.halt.set()
        beat.join(timeout=5)
        try:
            store.forget_worker(pid)
        except Exception:
            log.exception("could not remove the worker's heartbeat")


def ensure_worker(store: RunStore | None = None, *, idle_exit: float | None = None) -> int | None:
    """Start a detached background worker unless one is live; return the new worker's pid, else None.

    The worker is ``sys.executable -m fairprune.run.jobs --home HOME`` in its own session (it outlives the
    app), logging to ``<home>/worker.log``. ``<home>/worker.lock`` (flock) makes concurrent callers
    start one worker between them; a worker started in the last ``START_GRACE_S`` s counts as live
    before its first heartbeat.
    """
    import fcntl

    from .store import _pid_alive

    store = store if store is not None else RunStore()
    home = store.home
    _STARTED[:] = [p for p in _STARTED if p.poll() is None]
    with open(home / "worker.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if store.live_workers():
                return None
            lock.seek(0)
            starting = lock.read().split()
            if len(starting) == 2:  # "pid started" of the last worker this lock started
                pid, started = int(starting[0]), float(starting[1])
                if time.time() - started < START_GRACE_S and _pid_alive(pid):
                    return None
            env = dict(os.environ, FAIRPRUNE_HOME=str(home))
            # Idle OpenMP threads spinning while the machine is busy cost diagnostics minutes (measured:
            # 3.5 min vs 31 s for the MNIST demo on a loaded 2-core box); results are identical.
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            # the worker imports the same fairprune as this process, installed or not
            package_parent = str(Path(__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
            # a queued run waits at most this long for the idle worker's next look (the dashboard's demo)
            cmd = [sys.executable, "-m", "fairprune.run.jobs", "--home", str(home), "--poll", str(WORKER_POLL_S)]
            if idle_exit is not None:
                cmd += ["--idle-exit", str(idle_exit)]
            with open(home / "worker.log", "ab") as out:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=env, cwd=str(home), start_new_session=True, close_fds=True)
            _STARTED.append(proc)
            lock.seek(0)
            lock.truncate()
            lock.write(f"{proc.pid} {time.time()}\n")
            lock.flush()
            return proc.pid
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def worker_main(argv: list[str] | None = None) -> int:
    """``fairprune worker`` / ``python -m fairprune.run.jobs``: run the worker loop until stopped (0)."""
    parser = argparse.ArgumentParser(prog="fairprune worker",
                                     description="Execute queued fairprune runs from the run store.")
    parser.add_argument("--home", help="the store's folder (default: $FAIRPRUNE_HOME or ~/.local/share/fairprune)")
    parser.add_argument("--once", action="store_true", help="process the queued runs, then exit")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between looks at an empty queue")
    parser.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                        help="exit after this long with nothing to do (default: never)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help=f"import MODULE to register more run kinds (also ${IMPORTS_ENV}, comma-separated)")
    args = parser.parse_args(argv)
    if args.poll <= 0:
        parser.error(f"--poll must be > 0; found {args.poll}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(message)s")
    if threading.current_thread() is threading.main_thread():
        # SIGTERM stops like Ctrl-C: the current run is marked interrupted, not left 'running'
        signal.signal(signal.SIGTERM, _raise_interrupt)
    import resource

    before = resource.getrlimit(resource.RLIMIT_DATA)
    try:
        limit = apply_memory_limit()
    except ValueError as err:
        parser.error(str(err))
    try:
        _import_plugins(args.imports)
        store = RunStore(args.home)
        log.info("worker %d serving %s (kinds: %s; memory limit: %s)", os.getpid(), store.home,
                 ", ".join(sorted(EXECUTORS)), f"{limit:,} MiB" if limit else "none")
        run_worker(store, poll=args.poll, once=args.once, idle_exit=args.idle_exit, warm=True)
    except KeyboardInterrupt:
        log.info("worker %d stopped", os.getpid())
    finally:   # called in-process (tests, an embedding program), leave the caller's limit as it was
        resource.setrlimit(resource.RLIMIT_DATA, before)
    return 0


if __name__ == "__main__":
    # run the imported module's worker_main, not this __main__ copy: executors that plugins register
    # go into fairprune.run.jobs.EXECUTORS, which a __main__ copy would not see
    from fairprune.run.jobs import worker_main as _worker_main

    sys.exit(_worker_main())
