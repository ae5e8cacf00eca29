"""The ``local`` executor: the whole spec in this process, as the CLI and the dashboard's worker always ran it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing the pipeline imports torch: only when a run starts
    from ...engine.audit import AuditSpec, Progress
    from ...core.result import AuditResult

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Runs :func:`fairprune.engine.audit.run_spec` in process: progress per step, cancel between steps."""

    name = "local"

    def run(self, spec: "AuditSpec", progress: "Progress | None" = None,
            cancel: Callable[[], bool] | None = None) -> "AuditResult":
        from ...engine.audit import run_spec

        return run_spec(spec, progress=progress, cancel=cancel)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
