"""Serve the dashboard with its background worker already warm: ``python -m app.serve [streamlit options]``.

``make run`` uses it. It starts the worker (:func:`fairprune.run.jobs.ensure_worker`; the worker imports torch and the
engine and loads the demo while idle) *before* Streamlit starts, so a visitor who clicks "Try the demo" as soon as the
start page shows finds a warm worker instead of one that only starts with the first page; then it runs
``streamlit run app/main.py`` with the options given (``--server.port 8501`` and the like). The pages still start a
worker whenever none is alive, so plain ``streamlit run app/main.py`` works too; there the first click waits for the
worker's imports.
"""

from __future__ import annotations

import sys
from pathlib import Path

MAIN = Path(__file__).resolve().parent / "main.py"
#: A worker the app starts exits after this long with nothing to do (the next page shown starts another).
WORKER_IDLE_EXIT_S = 900.0


def start_worker() -> int | None:
    """Start the background worker for ``$FAIRPRUNE_HOME`` unless one is alive; its pid, or None. Cheap here: the
    worker pays for its imports in its own process while Streamlit starts."""
    from fairprune.run import jobs
    from fairprune.run.store import RunStore

    return jobs.ensure_worker(RunStore(), idle_exit=WORKER_IDLE_EXIT_S)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    root = str(MAIN.parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    start_worker()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(MAIN), *args]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
