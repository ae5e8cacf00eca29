"""What pruning buys, measured: the bytes a model ships as, and how long one batch takes.

Size (``size_bytes``) is the length of the safetensors serialisation of the weights as they would
ship, measured by serialising them, never by assuming:

- dense model: its state_dict (parameters and persistent buffers; a tensor shared by two names once);
- unstructured levels: every prunable weight, reshaped to (out, -1), in CSR (values at the weight's
  dtype, int32 column indices and row pointers, int64 only past 2**31 entries) when that serialises
  smaller than the dense weight, else dense; everything else dense. The same bytes
  ``fairprune export --format sparse-safetensors`` writes (:func:`sparse_tensors`);
- structured levels: the state_dict of the physically compacted model (:func:`fairprune.engine.prune.compact`),
  whose layers have fewer channels;
- 2:4 levels (``nm_2_4``): every weight that follows the 2:4 pattern as its kept values and their 2-bit
  positions (:func:`fairprune.engine.prune.pack_2_4`, :func:`nm_tensors`), everything else dense.

Latency (``latency_ms``) is the median over repeated runs (after warm-up) of one forward pass of one
fixed batch of evaluation rows, on the audit's device (CUDA synchronised around each run), with its
spread: ``latency_ms_iqr`` = [25th, 75th percentile] over ``latency_repeats`` timed runs (:class:`Timing`).
A wall-clock timing on a shared machine moves by tens of percent between identical runs, so a difference
between two models is only a difference when their spreads do not overlap (:func:`Timing.differs`). Unstructured
zeros are computed like any other number by dense kernels, so a level pruned without structure is timed
as the masked dense model runs, at dense speed, which is honest; a structured level is timed as the
compacted model, which is where structured pruning buys speed.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["CSR_FORMAT", "NM_FORMAT", "NM_METHODS", "STRUCTURED_METHODS", "Footprint", "FootprintMeter", "state_tensors",
           "serialised_size", "nm_tensors",
           "dense_size", "csr_components", "csr_nbytes", "sparse_tensors", "sparse_size", "measure_latency",
           "LATENCY_NOTE", "without_timings", "Timing", "time_forward"]

#: safetensors metadata "format" of a file holding CSR weights (see :func:`sparse_tensors`).
CSR_FORMAT = "fairprune.csr/1"

#: safetensors metadata "format" of a file holding 2:4 weights in packed form (see :func:`nm_tensors`).
NM_FORMAT = "fairprune.nm24/1"

#: Pruning methods whose masks remove whole channels: their levels are measured as compacted models.
STRUCTURED_METHODS = frozenset({"structured_l1"})

#: Pruning methods whose masks follow the 2:4 pattern: their levels are measured with 2:4 weights packed.
NM_METHODS = frozenset({"nm_2_4"})

LATENCY_NOTE = ("median ms of one forward pass of one batch on the audit device, after warm-up, with its spread "
                "(latency_ms_iqr: 25th to 75th percentile over latency_repeats timed runs; two models differ only "
                "where their spreads do not overlap); unstructured and 2:4 levels run the masked dense model "
                "(zeros cost as much as any weight in dense kernels: no speed-up expected without sparse kernels), "
                "structured levels run the compacted model")


# --- size ----------------------------------------------------------------------------------------

def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as CPU, contiguous, unshared tensors (safetensors refuses shared storage).

    A storage shared by several names (tied weights) is kept under its first name only: it ships once.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for name, t in module.state_dict().items():
        if isinstance(t, torch.Tensor):
            keep_once(out, seen, name, t)
    return out


def keep_once(out: dict[str, torch.Tensor], seen: set[tuple], name: str, t: torch.Tensor) -> None:
    """Put a CPU, contiguous copy of ``t`` in ``out`` under ``name``, unless the same bytes (tied weights: one
    storage, offset, shape, stride and dtype) were kept already under another name: they ship once."""
    t = t.detach()
    key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
    if t.numel() and key in seen:
        return
    seen.add(key)
    out[name] = t.to("cpu").contiguous().clone()


def serialised_size(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> int:
    """Bytes of ``tensors`` (and ``metadata``) serialised with safetensors: header + payload.

    A safetensors file's length depends only on the names, dtypes and shapes (the header) and the payload's byte
    count, never on the values, so the size is measured once per layout and remembered: a sweep's levels share
    their dense tensors' layouts, and each is serialised once, not once per level."""
    layout = (tuple((name, t.dtype, tuple(t.shape)) for name, t in tensors.items()),
              tuple(metadata.items()) if metadata else ())
    size = _SIZES.get(layout)
    if size is None:
        from safetensors.torch import save

        size = _SIZES[layout] = len(save(dict(tensors), metadata=dict(metadata) if metadata else None))
        if len(_SIZES) > 4096:                     # a bound, not a policy: layouts of one model number in hundreds
            _SIZES.pop(next(iter(_SIZES)))
    return size


#: serialised size by layout (names, dtypes, shapes, metadata): see :func:`serialised_size`
_SIZES: dict[tuple, int] = {}


def dense_size(module: nn.Module) -> int:
    """Bytes of the module's state_dict serialised with safetensors."""
    return serialised_size(state_tensors(module))


def _index_dtype(rows: int, cols: int, nnz: int) -> torch.dtype:
    return torch.int32 if max(rows + 1, cols, nnz) < 2**31 else torch.int64


def csr_components(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """CSR of ``weight`` reshaped to (out, -1): ``crow_indices`` (out + 1,), ``col_indices`` (nnz,),
    ``values`` (nnz,) at the weight's dtype; int32 indices while they fit, else int64."""
    # Built directly (row-major non-zeros are CSR order): the same arrays as Tensor.to_sparse_csr(),
    # without its beta warning, and with the narrower index dtype.
    w = weight.detach().to("cpu").reshape(weight.shape[0], -1)
    nonzero = w != 0
    idx = _index_dtype(w.shape[0], w.shape[1], int(nonzero.sum()))
    crow = torch.zeros(w.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(nonzero.sum(1), 0, out=crow[1:])
    return {"crow_indices": crow.to(idx),
            "col_indices": nonzero.nonzero()[:, 1].to(idx).contiguous(),
            "values": w[nonzero].contiguous()}


def csr_nbytes(shape: tuple[int, ...] | torch.Size, nnz: int, dtype: torch.dtype) -> int:
    """Payload bytes of :func:`csr_components` for a weight of ``shape`` with ``nnz`` non-zeros:
    (rows + 1 + nnz) indices + nnz values, rows = shape[0]."""
    rows = int(shape[0])
    cols = 1
    for s in shape[1:]:
        cols *= int(s)
    isz = torch.empty((), dtype=_index_dtype(rows, cols, nnz)).element_size()
    return (rows + 1 + nnz) * isz + nnz * torch.empty((), dtype=dtype).element_size()


def csr_layout(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero tensors with the names, dtypes and shapes of :func:`csr_components` of ``weight``, without building
    the CSR arrays: what sizing needs (a safetensors file's length depends only on the layout)."""
    rows = weight.shape[0]
    cols = weight.numel() // max(1, rows)
    nnz = int(torch.count_nonzero(weight))
    idx = _index_dtype(rows, cols, nnz)
    return {"crow_indices": torch.zeros(rows + 1, dtype=idx), "col_indices": torch.zeros(nnz, dtype=idx),
            "values": torch.zeros(nnz, dtype=weight.dtype)}


def sparse_tensors(module: nn.Module, names: list[str] | None = None, *,
                   layout_only: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (and safetensors metadata) of the module's weights stored as they would ship.

    ``layout_only``: the CSR parts are zero tensors of the right layout (:func:`csr_layout`), for measuring the
    size only; what is stored in CSR, and so the size, are the same.

    Each weight in ``names`` (default: :func:`fairprune.engine.prune.prunable_parameters`) that serialises
    smaller in CSR than dense (header entries included) is stored as ``NAME.crow_indices``, ``NAME.col_indices``,
    ``NAME.values``, its shape in the metadata (``{"format": CSR_FORMAT, "csr": JSON {NAME: shape}}``);
    everything else dense under its own name. When no weight is smaller in CSR, or the whole is not
    smaller than the dense serialisation, everything is dense, without metadata: exactly
    :func:`dense_size`'s bytes, so a level never reports more bytes than the dense model.
    """
    from .prune import prunable_parameters

    dense = state_tensors(module)
    if names is None:
        names = list(prunable_parameters(module))
    tensors = dict(dense)
    shapes: dict[str, list[int]] = {}
    for n in names:
        w = dense.get(n)
        if w is None or w.dim() < 2 or not (w.is_floating_point() or w.is_complex()):
            continue
        nnz = int(torch.count_nonzero(w))
        if csr_nbytes(w.shape, nnz, w.dtype) >= w.numel() * w.element_size():
            continue   # the payload alone is not smaller
        parts = {f"{n}.{part}": t for part, t in (csr_layout(w) if layout_only else csr_components(w)).items()}
        # three header entries and a metadata entry instead of one: on a small weight they can eat the saving
        if serialised_size(parts) + len(json.dumps({n: list(w.shape)})) >= serialised_size({n: w}):
            continue
        del tensors[n]
        tensors.update(parts)
        shapes[n] = list(w.shape)
    if not shapes:
        return dense, {}
    metadata = {"format": CSR_FORMAT, "csr": json.dumps(shapes, sort_keys=True)}
    if serialised_size(tensors, metadata) >= serialised_size(dense):
        return dense, {}   # never ship more bytes than the dense weights
    return tensors, metadata


def nm_tensors(tensors: Mapping[str, torch.Tensor], names=None,
               metadata: Mapping[str, str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``tensors`` with each one named in ``names`` (default: all) that follows the 2:4 pattern stored
    packed: ``NAME.nm_values`` (out, k/2) and ``NAME.nm_positions`` (out, ceil(k/8)) uint8
    (:func:`fairprune.engine.prune.pack_2_4`), its shape in the metadata (``{"format": NM_FORMAT, "nm24": JSON
    {NAME: shape}}``), where that serialises smaller than the dense tensor; the others unchanged.
    ``metadata`` already there (e.g. a quantized model's) is kept beside it."""
    from .prune import follows_2_4, pack_2_4

    out = dict(tensors)
    shapes: dict[str, list[int]] = {}
    for n in (list(tensors) if names is None else names):
        t = tensors.get(n)
        if t is None or not follows_2_4(t):
            continue
        values, positions = pack_2_4(t)
        parts = {f"{n}.nm_values": values, f"{n}.nm_positions": positions}
        if serialised_size(parts) + len(json.dumps({n: list(t.shape)})) >= serialised_size({n: t}):
            continue
        del out[n]
        out.update(parts)
        shapes[n] = list(t.shape)
    meta = dict(metadata or {})
    if shapes:
        meta.update({"format": NM_FORMAT, "nm24": json.dumps(shapes, sort_keys=True)})
    return out, meta


def sparse_size(module: nn.Module, names: list[str] | None = None) -> int:
    """Bytes of :func:`sparse_tensors` serialised with safetensors."""
    tensors, metadata = sparse_tensors(module, names)
    return serialised_size(tensors, metadata)


# --- latency -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """Wall-clock timings of one forward pass: the median and its spread, in milliseconds.

    ``p25_ms`` / ``p75_ms``: the 25th and 75th percentiles of the ``repeats`` timed runs (inclusive
    method; equal to the median when only one run was timed)."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    repeats: int

    @property
    def iqr(self) -> list[float]:
        """[p25, p75] in ms, as the result JSON stores it (``latency_ms_iqr``)."""
        return [self.p25_ms, self.p75_ms]

    @classmethod
    def of(cls, times_s: list[float]) -> "Timing":
        """From timed runs in seconds."""
        if not times_s:
            raise ValueError("a Timing needs at least one timed run; got none")
        ms = sorted(1000.0 * t for t in times_s)
        if len(ms) == 1:
            return cls(ms[0], ms[0], ms[0], 1)
        q1, q2, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        return cls(q2, q1, q3, len(ms))

    def differs(self, other: "Timing") -> bool:
        """True when the two spreads ([p25, p75]) do not overlap: only then is one model measurably faster."""
        return self.p75_ms < other.p25_ms or other.p75_ms < self.p25_ms


def time_forward(forward: Callable[[torch.Tensor], object], x: torch.Tensor, *, repeats: int = 20,
                 warmup: int = 3, budget_s: float = 0.5, warmup_s: float = 0.1) -> Timing:
    """The :class:`Timing` of ``forward(x)`` over up to ``repeats`` runs after warm-up.

    Warm-up: at least ``warmup`` runs and at least ``warmup_s`` seconds (at most 10 x ``warmup`` + 10
    runs): first calls pay for allocator growth, kernel selection and caches, which is what made a
    dense model time 73 ms in one run and 21 ms in the next. Timed runs stop early once ``budget_s``
    seconds have passed (after at least 5), so a slow model on a slow machine still answers promptly.
    The garbage collector is paused while timing. On CUDA the device is synchronised before the
    clock starts and before it stops (kernels run asynchronously).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    import gc

    cuda = x.is_cuda

    def sync():
        if cuda:
            torch.cuda.synchronize(x.device)

    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with torch.inference_mode():
            t_warm, runs = time.perf_counter(), 0
            while runs < warmup or (time.perf_counter() - t_warm < warmup_s and runs < 10 * warmup + 10):
                forward(x)
                sync()
                runs += 1
            spent = 0.0
            for _ in range(repeats):
                t0 = time.perf_counter()
                forward(x)
                sync()
                dt = time.perf_counter() - t0
                times.append(dt)
                spent += dt
                if spent > budget_s and len(times) >= min(5, repeats):
                    break
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing.of(times)


def measure_latency(forward: Callable[[torch.Tensor], object], x: torch.Tensor, *, repeats: int = 20,
                    warmup: int = 3, budget_s: float = 0.5) -> float:
    """Median milliseconds of ``forward(x)``: :func:`time_forward`'s median."""
    return time_forward(forward, x, repeats=repeats, warmup=warmup, budget_s=budget_s).median_ms


# --- one model, dense and per level --------------------------------------------------------------

@dataclass(frozen=True)
class Footprint:
    """One model's footprint.

    size_bytes: safetensors bytes of its weights as stored (``storage``: "dense", "csr" = prunable
    weights in CSR where smaller, "compacted" = channels physically removed, "nm24" = 2:4 weights packed); latency_ms: median ms of
    one batch; ``timed``: which model was timed ("dense", "masked", "compacted"); parameters: the
    number of parameters of the model as stored (compacted: fewer); ``note``: why a structured level
    was not compacted, if it was not.
    """

    size_bytes: int
    latency_ms: float | None          # None when latency was not asked for
    storage: str
    timed: str
    parameters: int
    note: str | None = None
    latency: Timing | None = None     # the timing's spread; only written when latency was measured

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["latency"]
        if d["note"] is None:
            del d["note"]
        if self.latency is not None:   # without --latency the dict is what it always was
            d["latency_ms_iqr"] = self.latency.iqr
            d["latency_repeats"] = self.latency.repeats
        return d


class FootprintMeter:
    """Measures a loaded model's footprint, dense and at each level, on one fixed batch.

    ``model`` is a :class:`fairprune.zoo.LoadedModel`; ``batch`` (B, ...) model-ready rows on the
    model's device. :meth:`level` is called while a level's masks are in place in ``model.module``.
    """

    def __init__(self, model, batch: torch.Tensor, *, latency: bool = True, repeats: int = 20, warmup: int = 3,
                 budget_s: float = 0.5):
        self.model, self.batch, self.latency = model, batch, latency
        self.repeats, self.warmup, self.budget_s = repeats, warmup, budget_s

    def _latency(self, forward) -> dict:
        """``latency_ms`` and ``latency`` (its Timing) for a Footprint; both None when not asked for."""
        # Latency is a wall-clock timing, the one figure two runs of the same command cannot reproduce;
        # sizes are exact. So latency is measured only when asked for (the dashboard and search ask).
        if not self.latency:
            return {"latency_ms": None, "latency": None}
        t = time_forward(forward, self.batch, repeats=self.repeats, warmup=self.warmup, budget_s=self.budget_s)
        return {"latency_ms": t.median_ms, "latency": t}

    def _masked_forward(self, x):
        from .evaluate import model_outputs

        return model_outputs(self.model, x)

    def dense(self) -> Footprint:
        module = self.model.module
        return Footprint(dense_size(module), storage="dense", timed="dense", parameters=_n_params(module),
                         **self._latency(self._masked_forward))

    def level(self, masks: Mapping[str, torch.Tensor], *, structured: bool, example_input: torch.Tensor,
              nm: bool = False) -> Footprint:
        """The footprint of the model as it is now (masks in place): compacted when ``structured``
        and the model can be compacted; with its 2:4 weights packed when ``nm``; else with its
        prunable weights in CSR where smaller."""
        from ..core.errors import InputError
        from .prune import compact, prunable_parameters

        module = self.model.module
        note = None
        if nm:
            dense = state_tensors(module)
            tensors, metadata = nm_tensors(dense, list(prunable_parameters(module)))
            return Footprint(serialised_size(tensors, metadata), storage="nm24" if metadata else "dense",
                             timed="masked", parameters=_n_params(module),
                             note=None if metadata else "no weight follows the 2:4 pattern smaller than dense",
                             **self._latency(self._masked_forward))
        if structured:
            try:
                small = compact(module, masks, example_input)
            except InputError as err:
                note = f"not compacted: {err}"
            else:
                return Footprint(dense_size(small), storage="compacted", timed="compacted", parameters=_n_params(small),
                                 **self._latency(small))
        tensors, metadata = sparse_tensors(module, layout_only=True)
        return Footprint(serialised_size(tensors, metadata), storage="csr" if metadata else "dense", timed="masked",
                         parameters=_n_params(module), note=note, **self._latency(self._masked_forward))

    def section(self, dense: Footprint, levels: Mapping[float, Footprint]) -> dict:
        """The ``footprint`` section of the result JSON: how size and latency were measured."""
        dev = self.batch.device
        return {
            "size": "bytes of the weights serialised with safetensors as they would ship: dense; unstructured "
                    "levels with each prunable weight (out, -1) in CSR where smaller; structured levels compacted; "
                    "2:4 levels with each 2:4 weight as kept values and 2-bit positions",
            "latency": LATENCY_NOTE if self.latency else "not measured (fairprune audit --latency measures it)",
            "batch_size": int(self.batch.shape[0]),
            "repeats": self.repeats, "warmup": self.warmup,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "dense": dense.to_dict(),
            "levels": [{"sparsity": s, **fp.to_dict()} for s, fp in sorted(levels.items())],
        }


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def without_timings(result: Mapping) -> dict:
    """A result JSON dict without its wall-clock figures (``latency_ms`` of the dense model, of each
    level, of each compression variant and in the ``footprint`` section, with its spread): the part two runs of the same
    command reproduce exactly."""
    d = json.loads(json.dumps(result))
    compression = d.get("compression") if isinstance(d.get("compression"), list) else []
    for part in [d.get("dense", {}), *d.get("levels", []), *compression]:
        part.pop("latency_ms", None)
    fp = d.get("footprint")
    if isinstance(fp, dict):
        for part in [fp.get("dense", {}), *fp.get("levels", []), *fp.get("compression", [])]:
            for key in ("latency_ms", "latency_ms_iqr", "latency_repeats"):
                part.pop(key, None)
    return d
