"""Image sets larger than memory: rows decoded from their files when they are read, batch by batch.

An :class:`ImageFiles` stands where a GroupedDataset keeps its uint8 (N, C, H, W) tensor when the decoded set
would be large (``$FAIRPRUNE_STREAM_BYTES``, default 1 GiB; see ``_imagefolder.py``). It holds the member names,
a picklable reader (a folder, or a zip that each process opens for itself), the channel count and the resize/crop
steps, and answers like the tensor it replaces:

- ``len(x)``, ``x.shape`` (N, C, H, W), ``x.dtype`` (uint8): from the headers, nothing decoded;
- ``x[t]`` (positions, a slice, a bool mask, an int): those rows decoded now, a uint8 tensor, the same pixels as
  the eager path (one decoding function for both);
- ``x.subset_rows(t)``: a lazy view of some rows (``GroupedDataset.subset``: a test split stays on disk);
- ``x.read_rows(start, stop)``: rows ``start:stop``, read ahead when the reads continue each other.

Read-ahead: the first read at a new place is decoded here; when the next read continues it (its start is the
last read's stop), a ``torch.utils.data.DataLoader`` over the rest of the set in batches of that size starts,
with worker processes (:func:`stream_workers`), pinned memory for CUDA and prefetching, so decoding overlaps the
model's compute. A read that does not continue the stream (the batch size halved after running out of memory, a
new pass from row 0) ends it and starts again. Row order is kept exactly; the last batch may be short.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..core.errors import InputError

__all__ = ["ImageFiles", "stream_workers", "stream_bytes", "STREAM_BYTES_ENV", "STREAM_WORKERS_ENV",
           "DEFAULT_STREAM_BYTES", "SMALL_SET"]

#: decoded sets larger than this many bytes are read from their files batch by batch (``$FAIRPRUNE_STREAM_BYTES``)
STREAM_BYTES_ENV = "FAIRPRUNE_STREAM_BYTES"
DEFAULT_STREAM_BYTES = 1 << 30
#: worker processes that decode a streamed set (``$FAIRPRUNE_STREAM_WORKERS``; default min(4, CPUs - 1))
STREAM_WORKERS_ENV = "FAIRPRUNE_STREAM_WORKERS"
#: below this many rows a streamed set is decoded in the reading process (starting workers costs more)
SMALL_SET = 2000
#: batches each worker decodes ahead
PREFETCH = 4

BAD_ENV = "${env}: expected {expected}, found {found!r}; unset it or give {example}"


def _env_int(name: str, expected: str, example: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise InputError(BAD_ENV.format(env=name, expected=expected, found=raw, example=example))
    return value


def stream_bytes() -> int:
    """The decoded size above which an image set is streamed: ``$FAIRPRUNE_STREAM_BYTES`` or 1 GiB."""
    value = _env_int(STREAM_BYTES_ENV, "a whole number of bytes (0: always stream)", "1073741824 (1 GiB)")
    return DEFAULT_STREAM_BYTES if value is None else value


def stream_workers(n_rows: int) -> int:
    """Worker processes that decode a streamed set of ``n_rows``: ``$FAIRPRUNE_STREAM_WORKERS`` when set, else
    min(4, CPUs - 1); 0 (decode in this process) for a small set (< :data:`SMALL_SET` rows) and in a daemonic
    process, which may not start children."""
    if multiprocessing.current_process().daemon:
        return 0
    value = _env_int(STREAM_WORKERS_ENV, "a whole number of worker processes (0: none)", "4")
    if value is not None:
        return value
    if n_rows < SMALL_SET:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:       # not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


def _context():
    """How workers start: forked (cheap) from a process with one thread; from a fork server (torch and this module
    preloaded) where other threads run (the dashboard's worker heartbeats from one), since forking a process
    whose other threads may hold locks can hang the child."""
    if threading.active_count() <= 1:
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", __name__])
    return ctx


class _Failed:
    """A worker's InputError, carried back as a value (a DataLoader would wrap the exception in its traceback)."""

    def __init__(self, message: str):
        self.message = message


def _first(batch):
    return batch


class _Batches(torch.utils.data.Dataset):
    """A DataLoader's dataset whose index is a whole batch: a list of row positions."""

    def __init__(self, files: "ImageFiles"):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, positions):
        try:
            return self.files.decode_rows(positions)
        except InputError as err:
            return _Failed(str(err))


class _Stream:
    """Batches ``[start, start + size)``, ... to the end of ``files``, decoded ahead by a DataLoader."""

    def __init__(self, files: "ImageFiles", start: int, size: int, pin: bool, workers: int):
        n = len(files)
        self.next_start, self.size, self.pin, self.n = start, size, pin, n
        order = [list(range(s, min(s + size, n))) for s in range(start, n, size)]
        kwargs = {}
        if workers:
            kwargs = dict(num_workers=workers, prefetch_factor=PREFETCH, multiprocessing_context=_context())
        loader = torch.utils.data.DataLoader(_Batches(files.detached()), batch_size=None, sampler=order,
                                             collate_fn=_first, pin_memory=pin, **kwargs)
        self.it = iter(loader)

    def matches(self, start: int, stop: int, pin: bool) -> bool:
        return start == self.next_start and stop == min(start + self.size, self.n) and pin == self.pin

    def next(self) -> torch.Tensor:
        batch = next(self.it)
        if isinstance(batch, _Failed):
            raise InputError(batch.message)
        self.next_start = min(self.next_start + self.size, self.n)
        return batch

    @property
    def done(self) -> bool:
        return self.next_start >= self.n

    def close(self) -> None:
        shutdown = getattr(self.it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self.it = None


class ImageFiles:
    """uint8 (N, C, H, W) images kept as files and decoded when rows are read (see the module's docstring).

    Args:
        reader: ``reader(member) -> bytes``, picklable (each worker process reads through its own copy).
        members: the distinct files, in the order ``formats`` describes them.
        formats: each member's image format from its header (Pillow's name), which picks the decoder.
        rows: (N,) index into ``members`` of each row (a file a metadata table names twice is two rows).
        shape: (C, H, W) of every decoded image after resize/crop, known from the headers.
        decode: ``decode(reader, member, fmt, channels, pre, file) -> uint8 (C, H, W)``: the eager path's function.
        pre: the resize/crop steps (``Preprocess``) or None.
        file: the set's name in messages.
    """

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, reader, members: Sequence[str], formats: Sequence[str], rows: np.ndarray,
                 shape: tuple[int, int, int], decode: Callable, pre, file: str):
        self.reader, self.members, self.formats = reader, tuple(members), tuple(formats)
        self.row_members = np.asarray(rows, dtype=np.int64)
        self.image_shape = tuple(int(s) for s in shape)
        self.decode, self.pre, self.file = decode, pre, file
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._last_stop: int | None = None

    # ---- what a tensor answers ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.row_members)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.image_shape))

    def dim(self) -> int:
        return 4

    def numel(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes the rows take once decoded (none are held)."""
        return self.numel()

    def __getitem__(self, index) -> torch.Tensor:
        """Rows ``index`` decoded now: uint8 (k, C, H, W), or (C, H, W) for one int; ``x[rows, more]`` indexes the
        decoded rows further, as a tensor would."""
        if isinstance(index, tuple):
            head, rest = index[0], index[1:]
            rows = self[head]
            return rows[rest] if isinstance(head, (int, np.integer)) else rows[(slice(None), *rest)]
        if isinstance(index, (int, np.integer)):
            return self.decode_rows([_position(int(index), len(self))])[0]
        return self.decode_rows(self._positions(index))

    def subset_rows(self, index) -> "ImageFiles":
        """A lazy view of rows ``index`` (positions, a bool mask or a slice), nothing decoded."""
        return ImageFiles(self.reader, self.members, self.formats, self.row_members[self._positions(index)],
                          self.image_shape, self.decode, self.pre, self.file)

    def to(self, *args, **kwargs) -> torch.Tensor:
        """Every row decoded and moved (only for small sets: this is what streaming avoids)."""
        return self[:].to(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ImageFiles({self.file}: {len(self)} rows of {self.image_shape} uint8, decoded when read)"

    # ---- decoding -----------------------------------------------------------------------------------
    def _positions(self, index) -> np.ndarray:
        n = len(self)
        if isinstance(index, slice):
            return np.arange(n)[index]
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"a bool mask over {n} rows has {idx.shape} entries")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row positions {int(idx.min())}..{int(idx.max())} outside 0..{n - 1}")
        return np.where(idx < 0, idx + n, idx)

    def decode_rows(self, positions) -> torch.Tensor:
        """Rows at ``positions`` (in order) decoded: uint8 (k, C, H, W)."""
        positions = np.asarray(positions, dtype=np.int64)
        out = torch.empty((len(positions), *self.image_shape), dtype=torch.uint8)
        for i, p in enumerate(positions):
            m = int(self.row_members[p])
            img = self.decode(self.reader, self.members[m], self.formats[m], self.image_shape[0], self.pre, self.file)
            if tuple(img.shape) != self.image_shape:
                raise InputError(
                    f"{self.file}: image {self.members[m]!r} decodes to {tuple(img.shape)} (channels, height, width) "
                    f"but the set's images are {self.image_shape}: the file changed since the set was read? "
                    "Load the set again")
            out[i] = img
        return out

    def read_rows(self, start: int, stop: int, *, pin: bool = False) -> torch.Tensor:
        """Rows ``start:stop`` (stop clipped to N), decoded ahead when reads continue each other (row order,
        batches of the size asked). ``pin``: in pinned memory (for a copy to CUDA without blocking)."""
        n = len(self)
        start, stop = max(0, int(start)), min(int(stop), n)
        if start >= stop:
            return torch.empty((0, *self.image_shape), dtype=torch.uint8)
        with self._lock:
            stream = self._stream
            if stream is not None and not stream.matches(start, stop, pin):
                self._close()
                stream = None
            if stream is None and self._last_stop == start and stop < n:
                workers = stream_workers(n)
                if workers:
                    stream = self._stream = _Stream(self, start, stop - start, pin, workers)
            self._last_stop = stop
            if stream is None:
                batch = self.decode_rows(np.arange(start, stop))
                return batch.pin_memory() if pin else batch
            try:
                batch = stream.next()
            except BaseException:
                self._close()
                raise
            if stream.done:
                self._close()
            return batch

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        """End a read-ahead in progress (its worker processes exit)."""
        with self._lock:
            self._close()
            self._last_stop = None

    def detached(self) -> "ImageFiles":
        """The same rows without this object's read-ahead state (what a worker process gets)."""
        return ImageFiles(self.reader, self.members, self.formats, self.row_members, self.image_shape,
                          self.decode, self.pre, self.file)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_lock=None, _stream=None, _last_stop=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self):
        try:
            self._close()
        except Exception:   # noqa: BLE001 - interpreter shutdown
            pass


def _position(i: int, n: int) -> int:
    if not -n <= i < n:
        raise IndexError(f"row {i} outside 0..{n - 1}")
    return i + n if i < 0 else i
