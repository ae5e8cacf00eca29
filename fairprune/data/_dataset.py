"""GroupedDataset: the one in-memory form every loader produces and every computation reads.

Samples are (x_i, a_i, y_i) as in the paper: features, group, class label. Features are kept as one
tensor, as an :class:`Inputs` of several (a model with several positional inputs), or, for an image set larger
than memory, as an ``ImageFiles`` store that decodes rows from disk when they are read; images may be kept as uint8 and turned into float [0, 1] (and normalised, if asked) one batch
at a time, so a large image set costs 1 byte per pixel at rest, not 4.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..core.errors import InputError
from ._inputs import Inputs

__all__ = ["GroupedDataset", "GROUP_JOIN", "join_groups"]

#: Separator between the values of several group columns in an intersectional group's name.
GROUP_JOIN = " & "


def join_groups(columns: list[np.ndarray]) -> np.ndarray:
    """Combine one or more per-sample group arrays into string keys, joined with ``' & '`` in order."""
    if not columns:
        raise InputError("expected at least one group column, found none")
    keys = np.asarray([_as_key(v) for v in columns[0]], dtype=object)
    for col in columns[1:]:
        keys = np.asarray([f"{k}{GROUP_JOIN}{_as_key(v)}" for k, v in zip(keys, col)], dtype=object)
    return keys


def _as_key(v) -> str:
    # 3.0 and 3 name the same group: integral floats (pandas reads an int column with blanks as float) print as ints.
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


@dataclass(frozen=True, eq=False)
class GroupedDataset:
    """A labelled, grouped dataset D = {(x_i, a_i, y_i)}.

    Attributes:
        x: (N, ...) features. float32; uint8 images (N, C, H, W) scaled to [0, 1] per batch; or int64 ids
            (N, L) passed to the model unchanged (token ids for an ``nn.Embedding``). For a model with several
            inputs, an :class:`Inputs` of such tensors (e.g. ``input_ids`` + ``attention_mask``), passed
            positionally in order; it slices, counts and moves rows like one tensor.
        y: (N,) int64 class indices.
        group: (N,) object array of group keys (str). Intersectional keys are joined with ``' & '``.
        name: a short name for reports (file name or demo name).
        sha256: fingerprint of the source (file bytes, or the arrays of a built-in demo).
        label_column: the label column's name in the source.
        group_columns: the group column(s) the keys were built from, in order.
        feature_names: column names of tabular features, in model-input order; None for images.
        class_names: optional names of the classes, index-aligned.
        split: optional (N,) object array of ``'train'``/``'test'``.
        normalize: optional per-channel (mean, std) applied after scaling to [0, 1].
        frame: optional source table (pandas DataFrame, row-aligned) for showing rows to a person.
        preprocessing: the steps from file to model input, as text (image decoding and transforms,
            tokenisation), recorded in a result's ``provenance.preprocessing``.
    """

    x: torch.Tensor | Inputs
    y: torch.Tensor
    group: np.ndarray
    name: str
    sha256: str
    label_column: str = "label"
    group_columns: tuple[str, ...] = ("group",)
    feature_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    split: np.ndarray | None = None
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    frame: object | None = field(default=None, repr=False)
    preprocessing: tuple[str, ...] = ()

    def __post_init__(self):
        n = len(self.y)
        if len(self.x) != n or len(self.group) != n:
            raise InputError(
                f"{self.name}: features, labels and groups must have the same length; "
                f"found x={len(self.x)}, y={n}, group={len(self.group)}"
            )
        if self.split is not None and len(self.split) != n:
            raise InputError(f"{self.name}: split has {len(self.split)} rows, expected {n}")
        if n == 0:
            raise InputError(f"{self.name}: expected at least one row, found none")

    # ---- shape and groups -------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the (first) model input."""
        return tuple(self.x.shape[1:])

    def describe_inputs(self) -> str:
        """The model's positional inputs in order, e.g. ``input_ids (128,) int64, attention_mask (128,) int64``."""
        dtypes = self.x.dtypes if isinstance(self.x, Inputs) else (self.x.dtype,)
        return ", ".join(f"{n} {s} {str(d).removeprefix('torch.')}"
                         for (n, s), d in zip(self.input_shapes.items(), dtypes))

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> per-sample shape, for every positional model input (one entry, ``x``, for one input)."""
        if isinstance(self.x, Inputs):
            return {n: tuple(t.shape[1:]) for n, t in zip(self.x.names, self.x.tensors)}
        return {"x": self.feature_shape}

    @property
    def n_inputs(self) -> int:
        """How many positional inputs the model takes."""
        return len(self.x.tensors) if isinstance(self.x, Inputs) else 1

    @property
    def n_features(self) -> int:
        """Values per sample over every input."""
        return sum(int(np.prod(s)) if s else 1 for s in self.input_shapes.values())

    @property
    def group_names(self) -> list[str]:
        """Group keys, sorted (largest first, ties by name) so the majority leads every table."""
        names, counts = np.unique(self.group.astype(str), return_counts=True)
        order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))
        return [str(names[i]) for i in order]

    @property
    def group_sizes(self) -> dict[str, int]:
        names, counts = np.unique(self.group.astype(str), return_counts=True)
        sizes = dict(zip(map(str, names), map(int, counts)))
        return {g: sizes[g] for g in self.group_names}

    # ---- parts --------------------------------------------------------------------------------
    def subset(self, index) -> "GroupedDataset":
        """Rows ``index`` (bool mask or integer positions), everything else unchanged."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        t = torch.as_tensor(idx, dtype=torch.long)
        frame = self.frame
        if frame is not None:
            frame = frame.iloc[idx].reset_index(drop=True)
        lazy = getattr(self.x, "subset_rows", None)     # images read from their files stay so (_stream.py)
        return replace(
            self,
            x=lazy(t) if lazy is not None else self.x[t],
            y=self.y[t],
            group=self.group[idx],
            split=None if self.split is None else self.split[idx],
            frame=frame,
        )

    def part(self, which: str) -> "GroupedDataset":
        """The ``'train'`` or ``'test'`` rows when a split is given; all rows for 'test' otherwise."""
        if self.split is None:
            if which == "test":
                return self
            raise InputError(f"{self.name}: no 'split' column, so there are no '{which}' rows")
        mask = self.split == which
        if not mask.any():
            raise InputError(f"{self.name}: the split column has no '{which}' rows")
        return self.subset(mask)

    # ---- batches -------------------------------------------------------------------------------
    @property
    def integer_inputs(self) -> bool:
        """True when x holds integer ids (token ids, category codes) that reach the model as int64:
        no scaling, no normalisation, and no gradient with respect to the input (any input, for several)."""
        if isinstance(self.x, Inputs):
            return any(d == torch.int64 for d in self.x.dtypes)
        return self.x.dtype == torch.int64

    def to_float(self, x: torch.Tensor | Inputs) -> torch.Tensor | Inputs:
        """Stored features -> model input: uint8 scaled to [0, 1], then optional normalisation; int64 ids
        are returned unchanged (an ``nn.Embedding`` takes them as they are). Several inputs: each one alike,
        never normalised (the loaders refuse normalisation for several inputs)."""
        if isinstance(x, Inputs):
            return x.map(_model_ready)
        if x.dtype == torch.int64:
            return x
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif x.dtype != torch.float32:
            x = x.float()
        if self.normalize is not None:
            mean, std = self.normalize
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = (x - torch.tensor(mean, device=x.device).view(shape)) / torch.tensor(std, device=x.device).view(shape)
        return x

    def rows(self, start: int, stop: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor | Inputs, torch.Tensor]:
        """(x, y) of rows ``start:stop`` on ``device``; x is model input (float32, or int64 ids). To a GPU
        the rows are copied from pinned memory without blocking, in their stored dtype (uint8 images are 4x
        smaller to move), and converted to float there. Images kept as files (``_stream.ImageFiles``) are decoded
        here, read ahead by DataLoader workers while reads continue each other (``start`` = the last ``stop``)."""
        device = torch.device(device)
        read = getattr(self.x, "read_rows", None)
        if read is not None:
            xb, yb = read(start, stop, pin=device.type == "cuda"), self.y[start:stop]
        else:
            xb, yb = self.x[start:stop], self.y[start:stop]
            if device.type == "cuda":
                xb = xb.pin_memory()
        if device.type == "cuda":
            yb = yb.pin_memory()
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        elif device.type != "cpu":
            xb, yb = xb.to(device), yb.to(device)
        return self.to_float(xb), yb

    def batches(self, batch_size: int, device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor | Inputs, torch.Tensor]]:
        """Yield (x, y) batches on ``device`` in row order, the last one short; x is model input (float32, or int64
        ids). Images kept as files are decoded by a DataLoader's workers ahead of use (see :meth:`rows`)."""
        for start in range(0, self.n, batch_size):
            yield self.rows(start, start + batch_size, device)


def _model_ready(t: torch.Tensor) -> torch.Tensor:
    """One stored input -> model input: int64 unchanged, uint8 scaled to [0, 1], anything else float32."""
    if t.dtype == torch.int64:
        return t
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t if t.dtype == torch.float32 else t.float()
