"""Hardening: the upload limit, a worker that survives its runs, and image zips that try to escape or explode.

The worker tests start real background workers (``jobs.ensure_worker``), which import this module
(``FAIRPRUNE_WORKER_IMPORTS``) to know the ``hard_*`` run kinds below; each worker is stopped by pid.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import struct
import subprocess
import sys
import time
import tomllib
import zipfile
import zlib
from pathlib import Path

import pytest

from fairprune.run import jobs
from fairprune.core.errors import InputError
from fairprune.run.jobs import register_executor
from fairprune.run.store import RunStore

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

pytestmark = pytest.mark.timeout(180)


# ---- run kinds a worker subprocess imports from here ----------------------------------------------------
@register_executor("hard_echo")
def _echo(store, run, progress, cancel):
    progress(1, 1, "echoed")
    return {"echo": run.spec, "pid": os.getpid()}


@register_executor("hard_raise")
def _raise(store, run, progress, cancel):
    raise ZeroDivisionError("the run divided by zero")


@register_executor("hard_exit")
def _exit(store, run, progress, cancel):
    sys.exit(3)


@register_executor("hard_hog")
def _hog(store, run, progress, cancel):
    """Takes memory 64 MiB at a time, touching every page, until spec['mb'] MiB: a run that exhausts memory."""
    import numpy as np

    chunks = []
    for _ in range(run.spec["mb"] // 64):
        chunks.append(np.ones(64 << 20, dtype=np.uint8))
    return {"held_mb": 64 * len(chunks)}


@register_executor("hard_absurd")
def _absurd(store, run, progress, cancel):
    """Asks torch for an absurd tensor (spec['bytes'])."""
    import torch

    return {"numel": torch.empty(run.spec["bytes"], dtype=torch.uint8).numel()}


@register_executor("hard_wait")
def _wait_for_file(store, run, progress, cancel):
    """Works until the file spec['until'] exists (a run that a test kills mid-way, then lets finish)."""
    progress(0, 1, "waiting")
    end = time.monotonic() + 120
    while not Path(run.spec["until"]).exists():
        if time.monotonic() > end:
            raise TimeoutError("the marker file never appeared")
        time.sleep(0.05)
    return {"waited": True, "pid": os.getpid()}


# ---- helpers --------------------------------------------------------------------------------------------
def _wait(pred, timeout=60.0, every=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return pred()


@pytest.fixture
def store(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("FAIRPRUNE_HOME", str(home))
    # a worker subprocess imports this module, so it can run the hard_* kinds
    monkeypatch.setenv("FAIRPRUNE_WORKER_IMPORTS", Path(__file__).stem)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.delenv(jobs.MEMORY_ENV, raising=False)
    return RunStore(home)


def _start_worker(store, spawned) -> int:
    pid = jobs.ensure_worker(store, idle_exit=60)
    assert pid is not None, "a worker was already live"
    spawned.append(pid)
    return pid


def _settled(store, ids, timeout=90.0):
    assert _wait(lambda: not any(store.get(i).active for i in ids), timeout=timeout), [store.get(i) for i in ids]
    return [store.get(i) for i in ids]


# ---- 1. the upload limit ---------------------------------------------------------------------------------
def test_streamlit_upload_limit_agrees_with_ours():
    """Streamlit refuses larger files in the browser; its limit is the same as the app's default."""
    from app import files

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == files.DEFAULT_MAX_UPLOAD_MB == 2048


def test_upload_limit_from_the_environment(monkeypatch):
    from streamlit import config

    from app import files

    monkeypatch.delenv(files.MAX_UPLOAD_ENV, raising=False)
    monkeypatch.setattr(config, "get_option", lambda key: 2048 if key == "server.maxUploadSize" else None)
    assert files.upload_limit_mb() == 2048
    monkeypatch.setenv(files.MAX_UPLOAD_ENV, "3")
    assert files.upload_limit_mb() == 3
    files.check_upload_size("ok.csv", 3 << 20)          # exactly the limit is fine
    with pytest.raises(InputError) as err:
        files.check_upload_size("big.zip", (3 << 20) + 1)
    msg = str(err.value)
    for part in ("big.zip", "3.0 MiB", f"{(3 << 20) + 1:,} bytes", "upload limit of 3 MiB", "FAIRPRUNE_MAX_UPLOAD_MB",
                 "server.maxUploadSize", "FAIRPRUNE_DATA_DIRS"):
        assert part in msg, (part, msg)
    # Streamlit's own limit caps ours: a larger FAIRPRUNE_MAX_UPLOAD_MB cannot let more through
    monkeypatch.setenv(files.MAX_UPLOAD_ENV, "4096")
    assert files.upload_limit_mb() == 2048
    for bad in ("0", "-5", "lots", "1.5"):
        monkeypatch.setenv(files.MAX_UPLOAD_ENV, bad)
        with pytest.raises(InputError, match="FAIRPRUNE_MAX_UPLOAD_MB: expected a whole number"):
            files.upload_limit_mb()


def test_data_page_refuses_an_upload_over_the_limit(monkeypatch):
    from test_app import assert_clean, choose_own_files, new_app

    monkeypatch.setattr(jobs, "ensure_worker", lambda store=None, **kw: None)
    monkeypatch.setenv("FAIRPRUNE_MAX_UPLOAD_MB", "1")
    rows = "".join(f"{i % 7}.25,{i % 2},{'ab'[i % 2]}\n" for i in range(140_000))
    big = ("x,label,group\n" + rows).encode()
    assert len(big) > 1 << 20
    at = choose_own_files(new_app().run())
    at.file_uploader(key="data-upload").set_value(("big.csv", big, "text/csv")).run()
    assert_clean(at)
    [error] = [e.value.replace("\\", "") for e in at.error if "big.csv" in e.value]   # markdown escapes rendered
    assert "more than the upload limit of 1 MiB" in error and "FAIRPRUNE_MAX_UPLOAD_MB" in error
    staged = RunStore().home / "uploads" / at.session_state["session_uuid"] / "data"
    assert not staged.exists() or not any(staged.iterdir()), "a refused upload must not be written"
    # under the limit the same page stages the file and reads it
    small = b"x,label,group\n" + rows[:2000].encode()
    at.file_uploader(key="data-upload").set_value(("small.csv", small, "text/csv")).run()
    assert_clean(at)
    assert (staged / "small.csv").read_bytes() == small
    assert not [e.value for e in at.error if "upload limit" in e.value]


# ---- 2. the worker survives its runs ----------------------------------------------------------------------
def test_worker_survives_a_run_that_raises_or_exits(store, spawned):
    ids = [store.create_run({"i": 0}, kind="hard_raise"), store.create_run({"i": 1}, kind="hard_echo"),
           store.create_run({"i": 2}, kind="hard_exit"), store.create_run({"i": 3}, kind="hard_echo")]
    pid = _start_worker(store, spawned)
    raised, first, exited, second = _settled(store, ids)
    assert raised.status == "failed"
    assert raised.error == "internal error: ZeroDivisionError: the run divided by zero"
    assert exited.status == "failed" and "sys.exit(3)" in exited.error
    for run in (first, second):   # the same worker went on to the next run each time
        assert run.status == "done" and run.result["pid"] == pid, run
    assert store.live_workers() == [pid]


def test_worker_survives_running_out_of_memory(store, spawned, monkeypatch):
    """A run that takes memory until none is left fails as 'out of memory'; the worker serves the next run."""
    monkeypatch.setenv(jobs.MEMORY_ENV, "1536")
    ids = [store.create_run({"mb": 4096}, kind="hard_hog"),
           store.create_run({"bytes": 1 << 46}, kind="hard_absurd"),     # 64 TiB: more than any machine
           store.create_run({}, kind="hard_echo")]
    pid = _start_worker(store, spawned)
    hog, absurd, echo = _settled(store, ids, timeout=120)
    assert hog.status == "failed", hog
    assert hog.error.startswith("out of memory: the run needed more memory than the worker's limit of 1,536 MiB")
    assert "FAIRPRUNE_WORKER_MEMORY_MB" in hog.error and "(MemoryError: Unable to allocate" in hog.error
    assert absurd.status == "failed" and absurd.error.startswith("out of memory:"), absurd
    assert "you tried to allocate 70368744177664 bytes" in absurd.error and "enforce fail" not in absurd.error
    assert echo.status == "done" and echo.result["pid"] == pid
    assert store.live_workers() == [pid]
    assert "memory limit: 1,536 MiB" in (store.home / "worker.log").read_text()


def test_out_of_memory_in_process_is_recorded(store):
    """execute() turns MemoryError and torch's allocator error into the same 'out of memory' failure."""
    rid = store.create_run({"bytes": 1 << 62}, kind="hard_absurd")
    jobs.execute(store, store.claim_next(os.getpid()))
    run = store.get(rid)
    assert run.status == "failed" and run.error.startswith("out of memory: "), run.error
    assert jobs.is_out_of_memory(MemoryError())
    assert jobs.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not jobs.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not jobs.is_out_of_memory(ValueError("out of memory"))   # only the errors allocators raise
    cuda = jobs.out_of_memory_message(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert "than the GPU has free" in cuda and "use a GPU with more memory" in cuda


@pytest.mark.parametrize("value, expected", [("1024", "1024"), ("0", "None"), ("", "default")])
def test_worker_memory_limit_setting(value, expected):
    """FAIRPRUNE_WORKER_MEMORY_MB sets RLIMIT_DATA in the worker's own process (checked in a child process)."""
    code = ("import resource; from fairprune.run.jobs import apply_memory_limit, memory_limit_mb; "
            "print(apply_memory_limit(), memory_limit_mb())")
    env = dict(os.environ, FAIRPRUNE_WORKER_MEMORY_MB=value, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    if expected == "default":
        total = jobs._physical_memory_mb()      # the machine's RAM, or the container's when lower
        assert 0 < total <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
        want = "None" if Path("/proc/driver/nvidia").exists() else str(int(total * jobs.DEFAULT_MEMORY_FRACTION))
        assert out == [want, want]
    else:
        assert out == [expected, expected]


def test_worker_main_in_process_restores_the_callers_limit(store, monkeypatch):
    """worker_main limits the memory of the process it runs in; called in-process, it puts the limit back."""
    import resource

    monkeypatch.setenv(jobs.MEMORY_ENV, "65536")
    seen = []
    monkeypatch.setattr(jobs, "run_worker", lambda *a, **k: seen.append(jobs.memory_limit_mb()))
    before = resource.getrlimit(resource.RLIMIT_DATA)
    assert jobs.worker_main(["--home", str(store.home), "--once"]) == 0
    assert seen == [65536]                      # the loop ran under the limit
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


@pytest.mark.parametrize("value", ["lots", "-1"])
def test_bad_worker_memory_setting_is_refused(value):
    env = dict(os.environ, FAIRPRUNE_WORKER_MEMORY_MB=value, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "fairprune.run.jobs", "--once", "--home", "/nonexistent/x"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "FAIRPRUNE_WORKER_MEMORY_MB: expected a whole number of MiB" in proc.stderr


def test_a_killed_worker_loses_nothing_else(store, spawned, tmp_path):
    """SIGKILL mid-run: that run is marked interrupted, the queue behind it runs, finished runs and files stay."""
    before = store.create_run({"first": True}, kind="hard_echo")
    marker = tmp_path / "go"
    victim = store.create_run({"until": str(marker)}, kind="hard_wait", files={"data.csv": b"x,label,group\n"})
    queued = store.create_run({"after": True}, kind="hard_echo")
    first = _start_worker(store, spawned)
    assert _wait(lambda: store.get(victim).progress_message == "waiting"), store.get(victim)
    done_before = store.get(before)
    assert done_before.status == "done" and store.get(queued).status == "queued"

    os.kill(first, signal.SIGKILL)
    assert _wait(lambda: store.live_workers() == [], timeout=20)
    # what the app does on its next poll: a worker is started, which reaps the dead one's run first
    second = _start_worker(store, spawned)
    assert second != first
    victim_run, queued_run = _settled(store, [victim, queued])
    assert victim_run.status == "interrupted", victim_run
    assert f"pid {first}" in victim_run.error and "killed" in victim_run.error and "requeue" in victim_run.error
    assert queued_run.status == "done" and queued_run.result["pid"] == second
    assert store.get(before) == done_before                                    # untouched
    assert (store.run_dir(victim) / "data.csv").read_bytes() == b"x,label,group\n"  # its files kept

    marker.touch()
    store.requeue(victim)
    [again] = _settled(store, [victim])
    assert again.status == "done" and again.result == {"waited": True, "pid": second}


def test_results_page_reports_a_run_whose_worker_died(monkeypatch):
    """The page showing a running run notices its worker is gone, marks it interrupted and says so."""
    from test_app import assert_clean, new_app, open_page

    started = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda store=None, **kw: started.append(store))
    s = RunStore()
    rid = s.create_run({"sparsities": [0.5], "demo": "mnist", "group": ["population"]}, title="orphan")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    s.heartbeat(dead.pid)
    assert s.claim_next(dead.pid).id == rid
    at = open_page(new_app().run(), "pages_/results.py", run=rid)
    assert_clean(at)
    run = s.get(rid)
    assert run.status == "interrupted" and f"pid {dead.pid}" in run.error
    assert any("stopped before it finished" in w.value for w in at.warning), [w.value for w in at.warning]
    assert started, "a fresh worker is asked for, for the rest of the queue"


# ---- 3. image zips that try to escape or explode ---------------------------------------------------------
def _png(size=(4, 4)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", size, 9).save(out, format="PNG")
    return out.getvalue()


META = b"path,label,group\na.png,0,x\nb.png,1,y\n"


def _zip(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """``entries``: (name or ZipInfo, bytes) pairs, written in order (duplicates and odd names allowed)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return out.getvalue()


def _load(tmp_path, data: bytes, **kw):
    from fairprune.data import load_dataset

    path = tmp_path / "images.zip"
    path.write_bytes(data)
    return load_dataset(path, **kw)


@pytest.fixture
def no_extraction(monkeypatch):
    """Loading never extracts anything to disk: extract/extractall fail the test if called."""
    def refuse(*a, **k):
        raise AssertionError("the loader must not extract archive members to disk")

    monkeypatch.setattr(zipfile.ZipFile, "extract", refuse)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", refuse)


def test_a_good_image_zip_loads(tmp_path, no_extraction):
    data = _load(tmp_path, _zip([("metadata.csv", META), ("a.png", _png()), ("b.png", _png())]))
    assert tuple(data.x.shape) == (2, 1, 4, 4)


@pytest.mark.parametrize("member", ["../x.png", "../../etc/x.png", "/abs/x.png", "img/../../x.png", "..\\x.png",
                                    "C:/x.png", "C:\\x.png"])
def test_member_names_outside_the_archive_are_refused(tmp_path, no_extraction, member):
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InputError) as err:
        _load(work, _zip([("metadata.csv", META), ("a.png", _png()), ("b.png", _png()), (member, _png())]))
    assert "refused" in str(err.value) and repr(member) in str(err.value) and "outside the archive" in str(err.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["images.zip", "work"]   # nothing written anywhere


@pytest.mark.parametrize("path", ["../a.png", "/a.png", "sub/../../a.png", "C:\\a.png"])
def test_metadata_paths_outside_the_archive_are_refused(tmp_path, no_extraction, path):
    meta = f"path,label,group\n{path},0,x\nb.png,1,y\n".encode()
    with pytest.raises(InputError, match="points outside the archive") as err:
        _load(tmp_path, _zip([("metadata.csv", meta), ("a.png", _png()), ("b.png", _png())]))
    assert repr(path) in str(err.value) and "line 2" in str(err.value)


@pytest.mark.parametrize("kind, mode", [("symbolic link", stat.S_IFLNK | 0o777), ("device", stat.S_IFCHR | 0o644),
                                        ("fifo", stat.S_IFIFO | 0o644)])
def test_symlinks_and_special_files_are_refused(tmp_path, no_extraction, kind, mode):
    link = zipfile.ZipInfo("b.png")
    link.create_system = 3                      # unix: the mode is in the high 16 bits
    link.external_attr = mode << 16
    target = b"/etc/passwd" if kind == "symbolic link" else b""
    with pytest.raises(InputError) as err:
        _load(tmp_path, _zip([("metadata.csv", META), ("a.png", _png()), (link, target)]))
    msg = str(err.value)
    assert "refused" in msg and "'b.png'" in msg and "regular file" in msg, msg


def test_a_zip_bomb_member_is_refused_before_decompressing(tmp_path, no_extraction, monkeypatch):
    bomb = bytes(64 << 20)                       # 64 MiB of zeros: deflates ~1000x
    data = _zip([("metadata.csv", META), ("a.png", _png()), ("b.png", _png()), ("pad.bin", bomb)])
    assert len(data) < 1 << 20
    del bomb
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a, **k: pytest.fail("nothing may be decompressed"))
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("nothing may be decompressed"))
    with pytest.raises(InputError) as err:
        _load(tmp_path, data)
    msg = str(err.value)
    assert "zip bomb" in msg and "'pad.bin'" in msg and f"{64 << 20:,} bytes" in msg


def test_an_archive_expanding_past_the_limit_is_refused(tmp_path, no_extraction):
    data = _zip([("metadata.csv", META), ("a.png", _png()), ("b.png", _png()), ("big.bin", os.urandom(50_000))])
    with pytest.raises(InputError, match=r"expands to [\d,]+ bytes, more than the limit of 40,000 bytes"):
        _load(tmp_path, data, max_uncompressed_bytes=40_000)


def _patch_sizes(data: bytes, member: str, size: int) -> bytes:
    """Rewrite the uncompressed size a member declares, in its local header and in the central directory."""
    buf = bytearray(data)
    name = member.encode()
    for sig, size_at, name_len_at, name_at in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        start = 0
        while (i := buf.find(sig, start)) >= 0:
            n = struct.unpack_from("<H", buf, i + name_len_at)[0]
            if bytes(buf[i + name_at:i + name_at + n]) == name:
                struct.pack_into("<I", buf, i + size_at, size)
            start = i + 4
    return bytes(buf)


def test_a_member_that_lies_about_its_size_is_refused(tmp_path, no_extraction):
    honest = _zip([("metadata.csv", META), ("a.png", _png()), ("b.png", _png((40, 40)))])
    # claims 4 GiB: refused from the directory alone
    with pytest.raises(InputError, match="more than the limit"):
        _load(tmp_path, _patch_sizes(honest, "b.png", 0xFFFFFFF0), max_uncompressed_bytes=1 << 30)
    # claims 10 bytes but holds more: reading stops at 10 bytes and the CRC check fails
    with pytest.raises(InputError, match="'b.png'"):
        _load(tmp_path, _patch_sizes(honest, "b.png", 10))


def test_too_many_entries_are_refused_before_the_directory_is_read(tmp_path, no_extraction, monkeypatch):
    from fairprune.data import _checks

    entries = [("metadata.csv", META), ("a.png", _png()), ("b.png", _png())]
    entries += [(f"junk/{i}", b"") for i in range(300)]
    monkeypatch.setattr(_checks, "ZIP_MAX_ENTRIES", 200)
    parsed = []
    real = zipfile.ZipFile._RealGetContents
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", lambda self: parsed.append(1) or real(self))
    with pytest.raises(InputError) as err:
        _load(tmp_path, _zip(entries, compression=zipfile.ZIP_STORED))
    assert "303 entries, more than the limit of 200" in str(err.value)
    from fairprune.data import columns

    assert columns(tmp_path / "images.zip") == []   # the data page's first look refuses it the same way
    assert not parsed, "the central directory must not be parsed for an archive with too many entries"


def test_an_image_that_declares_huge_dimensions_is_refused(tmp_path, no_extraction):
    """A tiny PNG whose header claims 30000 x 30000 pixels (Pillow's decompression-bomb guard)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
    huge = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    with pytest.raises(InputError) as err:
        _load(tmp_path, _zip([("metadata.csv", META), ("a.png", _png()), ("b.png", huge)]))
    assert "refused image" in str(err.value) and "'b.png'" in str(err.value)
