"""GroupedDataset: the one in-memory form every loader produces and every computation reads.

Samples are (x_i, a_i, y_i) as in the paper: features, group, class label. Features are kept as one
tensor; images may be kept as uint8 and turned into float [0, 1] (and normalised, if asked) one batch
at a time, so a large image set costs 1 byte per pixel at rest, not 4.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..core.errors import InputError

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
            (N, L) passed to the model unchanged (token ids for an ``nn.Embedding``).
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
    """

    x: torch.Tensor
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
        return tuple(self.x.shape[1:])

    @property
    def n_features(self) -> int:
        return int(np.prod(self.feature_shape)) if self.feature_shape else 1

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
        return replace(
            self,
            x=self.x[t],
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
        no scaling, no normalisation, and no gradient with respect to the input."""
        return self.x.dtype == torch.int64

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """Stored features -> model input: uint8 scaled to [0, 1], then optional normalisation; int64 ids
        are returned unchanged (an ``nn.Embedding`` takes them as they are)."""
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

    def rows(self, start: int, stop: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of rows ``start:stop`` on ``device``; x is model input (float32, or int64 ids). To a GPU
        the rows are copied from pinned memory without blocking, in their stored dtype (uint8 images are 4x
        smaller to move), and converted to float there."""
        device = torch.device(device)
        xb, yb = self.x[start:stop], self.y[start:stop]
        if device.type == "cuda":
            xb, yb = xb.pin_memory(), yb.pin_memory()
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        elif device.type != "cpu":
            xb, yb = xb.to(device), yb.to(device)
        return self.to_float(xb), yb

    def batches(self, batch_size: int, device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) batches on ``device`` in row order; x is model input (float32, or int64 ids)."""
        for start in range(0, self.n, batch_size):
            yield self.rows(start, start + batch_size, device)
