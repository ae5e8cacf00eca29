"""The run store: every run the dashboard or a worker knows about, in one SQLite file.

Layout under ``FAIRPRUNE_HOME`` (default ``~/.local/share/fairprune``)::

    runs.sqlite          the database (WAL mode: readers never block the worker that writes)
    runs/<run_id>/       each run's uploaded files (model, data) and anything it writes
    worker.log           what a background worker prints (see :mod:`fairprune.run.jobs`)

A run's life: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``; a running run whose
worker died is found by :meth:`RunStore.reap` and becomes ``interrupted``; ``requeue`` puts a stopped
run back in the queue. Nothing lives only in a process's memory, so closing the browser or restarting
the app loses no run.

Each call opens its own short-lived connection: a ``RunStore`` is cheap, holds no open handle, and can
be shared between threads (the worker heartbeats from a background thread) and used after ``fork``.
Nothing happens at import: the database is opened by the first ``RunStore(...)``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..core.errors import InputError

__all__ = ["fairprune_home", "Run", "RunStore", "STATUSES", "ACTIVE_STATUSES", "stored_result"]

STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATUSES = ("queued", "running")
#: runs in these states may go back to the queue
REQUEUEABLE = ("interrupted", "failed", "cancelled")

DB_NAME = "runs.sqlite"
_SCHEMA_VERSION = 1
#: how long a writer waits for another process's write lock before giving up (seconds)
_BUSY_TIMEOUT = 30.0
_RUN_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]*$")

NO_RUN = "no run {run_id!r} in the run store at {db}"
BAD_RUN_ID = "run id must be letters, digits, '-' or '_' (as create_run makes them); found {run_id!r}"
BAD_FILE_NAME = "files: a file name must be a plain name such as 'model.pt2' (no folders); found {name!r}"
MISSING_FILE = "files[{name!r}]: expected an existing file to copy; found {path!r}, which does not exist"
BAD_FILE_VALUE = "files[{name!r}]: expected bytes, or a path (str or Path) to copy; found {kind}"
NOT_JSON = "{what} must be JSON-serialisable (numbers, strings, lists, dicts); found {err}"
INTERRUPTED = ("interrupted: the worker running it ({who}) stopped before it finished (it was shut down, or "
               "killed: for example by the system when memory ran out); requeue the run to start it again")
NOT_REQUEUEABLE = "run {run_id!r} is {status!r}; only {allowed} runs can be requeued"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    title            TEXT NOT NULL DEFAULT '',
    status           TEXT NOT NULL,
    spec             TEXT NOT NULL,            -- JSON
    created          REAL NOT NULL,            -- time.time()
    started          REAL,
    finished         REAL,
    progress_done    INTEGER NOT NULL DEFAULT 0,
    progress_total   INTEGER NOT NULL DEFAULT 0,
    progress_message TEXT NOT NULL DEFAULT '',
    error            TEXT,
    worker_pid       INTEGER,
    worker_host      TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result           TEXT                      -- JSON, schema fairprune.audit/1 for audits
);
CREATE INDEX IF NOT EXISTS runs_status_created ON runs (status, created);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created);
CREATE TABLE IF NOT EXISTS workers (
    pid       INTEGER NOT NULL,
    host      TEXT NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (pid, host)
);
"""

_COLUMNS = ("id, kind, title, status, spec, created, started, finished, progress_done, progress_total, "
            "progress_message, error, worker_pid, cancel_requested, result")


def fairprune_home() -> Path:
    """The folder that holds the store: ``$FAIRPRUNE_HOME``, else ``~/.local/share/fairprune``."""
    env = os.environ.get("FAIRPRUNE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "fairprune"


@dataclass(frozen=True)
class Run:
    """One row of the store, as read at one moment (re-read it with :meth:`RunStore.get` to see changes).

    Times are ``time.time()`` seconds; ``progress_done``/``progress_total`` count pipeline steps;
    ``result`` is the run's result JSON as a dict (``fairprune.audit/1`` for audits) once it is done.
    """

    id: str
    kind: str
    title: str
    status: str
    spec: dict
    created: float
    started: float | None
    finished: float | None
    progress_done: int
    progress_total: int
    progress_message: str
    error: str | None
    worker_pid: int | None
    cancel_requested: bool
    result: dict | None

    @property
    def active(self) -> bool:
        """Queued or running: the run may still change."""
        return self.status in ACTIVE_STATUSES

    @classmethod
    def _from_row(cls, row: tuple) -> "Run":
        (id_, kind, title, status, spec, created, started, finished, p_done, p_total, p_msg, error, pid,
         cancel, result) = row
        return cls(id=id_, kind=kind, title=title, status=status, spec=json.loads(spec), created=created,
                   started=started, finished=finished, progress_done=p_done, progress_total=p_total,
                   progress_message=p_msg, error=error, worker_pid=pid, cancel_requested=bool(cancel),
                   result=json.loads(result) if result is not None else None)


def _new_run_id() -> str:
    """Sortable by creation time: UTC ``YYYYMMDD-HHMMSS-micro`` plus a random suffix against collisions."""
    now = time.time()
    micro = int((now % 1) * 1_000_000)
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{micro:06d}-{secrets.token_hex(3)}"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a killed child nobody has waited for still answers kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _dumps(value, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as err:
        raise TypeError(NOT_JSON.format(what=what, err=err)) from err


class RunStore:
    """The SQLite run store in ``home`` (default :func:`fairprune_home`).

    Safe for several processes at once: WAL journal, a busy timeout, and ``BEGIN IMMEDIATE`` around
    every read-then-write (claiming, cancelling, reaping), so two workers never claim the same run.
    """

    def __init__(self, home: str | Path | None = None):
        self.home = Path(home).expanduser() if home is not None else fairprune_home()
        self.home = self.home.absolute()
        self.runs_root = self.home / "runs"
        self.runs_root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / DB_NAME
        self.host = socket.gethostname()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise RuntimeError(f"{self.db_path}: store schema version {version} is newer than this "
                                   f"fairprune understands ({_SCHEMA_VERSION}); upgrade fairprune")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"RunStore({str(self.home)!r})"

    # -- connections -----------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: autocommit, transactions only where we say BEGIN
        with closing(sqlite3.connect(self.db_path, timeout=_BUSY_TIMEOUT, isolation_level=None)) as db:
            db.execute("PRAGMA synchronous=NORMAL")
            yield db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the write lock from its first statement (BEGIN IMMEDIATE)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _require(self, db: sqlite3.Connection, run_id: str) -> str:
        row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(NO_RUN.format(run_id=run_id, db=self.db_path))
        return row[0]

    # -- runs --------------------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        """The folder of a run's files: ``<home>/runs/<run_id>`` (not created here)."""
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise ValueError(BAD_RUN_ID.format(run_id=run_id))
        return self.runs_root / run_id

    def create_run(self, spec: dict, *, kind: str = "audit", title: str = "",
                   files: dict[str, bytes | str | Path] | None = None) -> str:
        """Queue a new run and return its id.

        ``files`` maps a plain file name to its content (bytes) or to a path to copy; each is stored as
        ``run_dir(id)/name``. Spec values equal to one of those names (``spec["model"] == "model.pt2"``,
        or an item of a list value) are rewritten to the stored file's absolute path, so the run no
        longer depends on the upload or the caller's folder.
        """
        if not isinstance(spec, dict):
            raise TypeError(f"spec must be a dict; found {type(spec).__name__}")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty string such as 'audit'; found {kind!r}")
        files = dict(files or {})
        for name in files:
            if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
                    or "\0" in name):
                raise ValueError(BAD_FILE_NAME.format(name=name))
        _dumps(spec, "spec")  # refuse before anything touches the disk

        run_id = _new_run_id()
        folder = self.run_dir(run_id)
        folder.mkdir(parents=True)
        try:
            stored = {name: str(self._store_file(folder, name, value)) for name, value in files.items()}

            def rewrite(v):
                if isinstance(v, str) and v in stored:
                    return stored[v]
                if isinstance(v, list):
                    return [rewrite(x) for x in v]
                return v

            spec = {k: rewrite(v) for k, v in spec.items()}
            # files are in place before the row exists: a worker can never claim a half-written run
            with self._connect() as db:
                db.execute("INSERT INTO runs (id, kind, title, status, spec, created, progress_message) "
                           "VALUES (?, ?, ?, 'queued', ?, ?, 'queued')",
                           (run_id, kind, title or "", _dumps(spec, "spec"), time.time()))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return run_id

    @staticmethod
    def _store_file(folder: Path, name: str, value) -> Path:
        dest = folder / name
        if isinstance(value, (bytes, bytearray, memoryview)):
            dest.write_bytes(bytes(value))
        elif isinstance(value, (str, Path)):
            src = Path(value).expanduser()
            if not src.is_file():
                raise InputError(MISSING_FILE.format(name=name, path=str(value)))
            shutil.copyfile(src, dest)
        else:
            raise TypeError(BAD_FILE_VALUE.format(name=name, kind=type(value).__name__))
        return dest.absolute()

    def get(self, run_id: str) -> Run:
        """The run as stored now. KeyError if there is no such run."""
        with self._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(NO_RUN.format(run_id=run_id, db=self.db_path))
        return Run._from_row(row)

    def list(self, kind: str | None = None) -> list[Run]:
        """All runs (of one ``kind`` if given), newest first."""
        query = f"SELECT {_COLUMNS} FROM runs"
        args: tuple = ()
        if kind is not None:
            query += " WHERE kind = ?"
            args = (kind,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created DESC, id DESC", args).fetchall()
        return [Run._from_row(r) for r in rows]

    def delete(self, run_id: str) -> None:
        """Remove the run's row and its folder. A worker running it sees it gone and stops."""
        folder = self.run_dir(run_id)
        with self._write() as db:
            self._require(db, run_id)
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        if folder.exists():
            shutil.rmtree(folder)

    # -- the worker's side ---------------------------------------------------------------------------

    def claim_next(self, worker_pid: int) -> Run | None:
        """Atomically move the oldest queued run to ``running`` for this worker; None if none is queued."""
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT id FROM runs WHERE status = 'queued' ORDER BY created, id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE runs SET status = 'running', started = ?, finished = NULL, worker_pid = ?, "
                       "worker_host = ?, error = NULL, progress_message = 'starting' WHERE id = ?",
                       (now, int(worker_pid), self.host, row[0]))
        return self.get(row[0])

    def set_progress(self, run_id: str, done: int, total: int, message: str) -> None:
        """Record ``done`` of ``total`` steps. Does nothing if the run was deleted meanwhile."""
        with self._connect() as db:
            db.execute("UPDATE runs SET progress_done = ?, progress_total = ?, progress_message = ? WHERE id = ?",
                       (int(done), int(total), str(message), run_id))

    def request_cancel(self, run_id: str) -> None:
        """Cancel a run: a queued one is cancelled at once; a running one gets the flag its worker polls.

        Runs that have already stopped are left as they are. KeyError if there is no such run.
        """
        now = time.time()
        with self._write() as db:
            status = self._require(db, run_id)
            if status == "queued":
                db.execute("UPDATE runs SET status = 'cancelled', cancel_requested = 1, finished = ?, "
                           "progress_message = 'cancelled' WHERE id = ?", (now, run_id))
            elif status == "running":
                db.execute("UPDATE runs SET cancel_requested = 1, progress_message = 'cancelling' WHERE id = ?",
                           (run_id,))

    def cancel_requested(self, run_id: str) -> bool:
        """Whether the run should stop: cancel was requested, or the run has been deleted."""
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row is None or bool(row[0])

    def _end(self, run_id: str, status: str, **values) -> None:
        """Set a final status (and columns); a deleted run is left deleted."""
        values = {"status": status, "finished": time.time(), **values}
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*values.values(), run_id))

    def finish(self, run_id: str, result: dict) -> None:
        """The run is done; ``result`` is its result JSON dict."""
        if not isinstance(result, dict):
            raise TypeError(f"result must be a dict (the result JSON); found {type(result).__name__}")
        text = _dumps(result, "result")
        with self._connect() as db:
            row = db.execute("SELECT progress_total FROM runs WHERE id = ?", (run_id,)).fetchone()
        total = row[0] if row is not None else 0
        self._end(run_id, "done", result=text, error=None, progress_done=total, progress_message="done")

    def fail(self, run_id: str, message: str) -> None:
        """The run failed; ``message`` says why (shown to the user as is)."""
        self._end(run_id, "failed", error=str(message), progress_message="failed")

    def mark_cancelled(self, run_id: str) -> None:
        """The run stopped because cancel was requested."""
        self._end(run_id, "cancelled", cancel_requested=1, progress_message="cancelled")

    def mark_interrupted(self, run_id: str, message: str) -> None:
        """The run stopped because its worker stopped (shut down, killed): it can be requeued."""
        self._end(run_id, "interrupted", error=str(message), progress_message="interrupted")

    def requeue(self, run_id: str) -> None:
        """Put an interrupted, failed or cancelled run back in the queue, progress and error cleared."""
        with self._write() as db:
            status = self._require(db, run_id)
            if status not in REQUEUEABLE:
                raise ValueError(NOT_REQUEUEABLE.format(run_id=run_id, status=status,
                                                        allowed=", ".join(REQUEUEABLE)))
            db.execute("UPDATE runs SET status = 'queued', started = NULL, finished = NULL, progress_done = 0, "
                       "progress_total = 0, progress_message = 'queued', error = NULL, worker_pid = NULL, "
                       "worker_host = NULL, cancel_requested = 0, result = NULL WHERE id = ?", (run_id,))

    # -- workers -------------------------------------------------------------------------------------

    def heartbeat(self, worker_pid: int) -> None:
        """Record that the worker ``worker_pid`` on this host is alive now."""
        with self._connect() as db:
            db.execute("INSERT INTO workers (pid, host, last_seen) VALUES (?, ?, ?) "
                       "ON CONFLICT (pid, host) DO UPDATE SET last_seen = excluded.last_seen",
                       (int(worker_pid), self.host, time.time()))

    def forget_worker(self, worker_pid: int) -> None:
        """Remove a worker's heartbeat row (a worker calls this as it exits)."""
        with self._connect() as db:
            db.execute("DELETE FROM workers WHERE pid = ? AND host = ?", (int(worker_pid), self.host))

    def live_workers(self, max_age: float = 10.0) -> list[int]:
        """Pids of this host's workers with a heartbeat younger than ``max_age`` s whose process is alive."""
        with self._connect() as db:
            rows = db.execute("SELECT pid FROM workers WHERE host = ? AND last_seen >= ? ORDER BY pid",
                              (self.host, time.time() - max_age)).fetchall()
        return [pid for (pid,) in rows if _pid_alive(pid)]

    def reap(self, max_age: float = 10.0) -> list[str]:
        """Mark running runs whose worker is gone as ``interrupted``; return their ids.

        A worker on this host is gone when its heartbeat is older than ``max_age`` s or its process no
        longer exists; a worker on another host when its heartbeat is stale.
        """
        now = time.time()
        reaped = []
        with self._write() as db:
            running = db.execute("SELECT id, worker_pid, worker_host FROM runs WHERE status = 'running'").fetchall()
            if not running:
                return []
            fresh = {(pid, host) for pid, host in db.execute(
                "SELECT pid, host FROM workers WHERE last_seen >= ?", (now - max_age,))}
            for run_id, pid, host in running:
                live = pid is not None and (pid, host) in fresh and (host != self.host or _pid_alive(pid))
                if live:
                    continue
                who = f"pid {pid} on {host}" if pid is not None else "unknown"
                db.execute("UPDATE runs SET status = 'interrupted', finished = ?, progress_message = 'interrupted', "
                           "error = ? WHERE id = ?",
                           (now, INTERRUPTED.format(who=who), run_id))
                reaped.append(run_id)
        return reaped


def stored_result(run_id: str) -> dict:
    """The result JSON of the finished run ``run_id`` in the run store ($FAIRPRUNE_HOME): how ``fairprune report
    RUN_ID`` finds what to render (:func:`fairprune.present.report.load_source` takes it as ``run_result``).
    Raises InputError for a text that is no run id, an unknown run, or a run without a result."""
    if not _RUN_ID.match(run_id):
        from ..present.report import NOT_A_SOURCE

        raise InputError(NOT_A_SOURCE.format(source=run_id, found="neither an existing file nor a run id"))
    store = RunStore()
    try:
        run = store.get(run_id)
    except KeyError as err:
        raise InputError(f"{run_id}: no such result file, and no run {run_id!r} in the run store at "
                         f"{store.db_path}") from err
    if run.status != "done" or run.result is None:
        raise InputError(f"run {run_id}: expected a finished run with a result; found status {run.status!r}")
    return run.result
