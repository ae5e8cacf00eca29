"""Where an audit runs: in this process (``local``) or as tasks on a Ray cluster (``ray``).

Every executor takes the same :class:`~fairprune.engine.audit.AuditSpec` and gives the same
``fairprune.audit/1`` :class:`~fairprune.core.result.AuditResult`::

    with get_executor("ray", address="ray://head:10001") as ex:
        result = ex.run(spec, progress=progress, cancel=cancel)

``configured_executor()`` picks one from the settings the CLI and the dashboard's worker share:
``FAIRPRUNE_EXECUTOR`` (``local``, the default, or ``ray``) and ``FAIRPRUNE_RAY_ADDRESS`` (none: a local
Ray cluster is started; ``auto``, ``HOST:6379`` or ``ray://HEAD:10001``: that cluster).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ...core.errors import InputError
from ._local import LocalExecutor
from ._merge import (SECTION_MERGERS, LevelwiseSection, MergeContext, MergeError, merge_results,
                     register_section_merger, split_spec)
from ._ray import RayExecutor

if TYPE_CHECKING:
    from ...engine.audit import AuditSpec, Progress
    from ...core.result import AuditResult

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "register_executor", "get_executor", "list_executors",
           "configured_executor", "split_spec", "merge_results", "MergeError", "register_section_merger",
           "LevelwiseSection", "MergeContext", "SECTION_MERGERS", "EXECUTOR_ENV", "RAY_ADDRESS_ENV"]

EXECUTOR_ENV = "FAIRPRUNE_EXECUTOR"
RAY_ADDRESS_ENV = "FAIRPRUNE_RAY_ADDRESS"


@runtime_checkable
class Executor(Protocol):
    """Runs an AuditSpec somewhere and returns its AuditResult.

    ``progress(done, total, message)`` is called as the run advances; ``cancel()`` returning True stops it
    with :class:`~fairprune.core.errors.Cancelled`. ``close()`` releases what the executor started.
    """

    name: str

    def run(self, spec: "AuditSpec", progress: "Progress | None" = None,
            cancel: Callable[[], bool] | None = None) -> "AuditResult": ...

    def close(self) -> None: ...


_FACTORIES: dict[str, Callable[..., Executor]] = {}


def register_executor(name: str, factory: Callable[..., Executor]) -> Callable[..., Executor]:
    """Make ``get_executor(name, **options)`` call ``factory(**options)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"executor name must be a non-empty string; found {name!r}")
    _FACTORIES[name] = factory
    return factory


register_executor("local", LocalExecutor)
register_executor("ray", RayExecutor)


def list_executors() -> list[str]:
    return list(_FACTORIES)


def get_executor(name: str = "local", **options) -> Executor:
    """The executor ``name`` with ``options`` (``ray``: address, num_cpus, cpus_per_task, gpus_per_task,
    threads, max_retries, ship_files, runtime_env, poll_s). Unknown names and options are InputErrors."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise InputError(f"unknown executor {name!r}; expected one of: {', '.join(_FACTORIES)}")
    try:
        return factory(**options)
    except TypeError as err:
        raise InputError(f"executor {name!r}: {err}") from err


def configured_executor(name: str | None = None, address: str | None = None,
                        environ: Mapping[str, str] | None = None) -> Executor:
    """The executor the settings ask for: ``name``/``address`` when given (the CLI's ``--executor`` and
    ``--ray-address``), else ``$FAIRPRUNE_EXECUTOR`` / ``$FAIRPRUNE_RAY_ADDRESS``; ``local`` by default."""
    env = os.environ if environ is None else environ
    name = name or env.get(EXECUTOR_ENV, "").strip() or "local"
    if name == "ray":
        return get_executor("ray", address=address or env.get(RAY_ADDRESS_ENV, "").strip() or None)
    if address:
        raise InputError(f"--ray-address is for --executor ray; found the executor {name!r}")
    return get_executor(name)
