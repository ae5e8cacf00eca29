"""Inputs: several positional model inputs for the same rows (``input_ids`` + ``attention_mask``, or float features
+ integer category codes), handled like one tensor of rows.

A batch of a GroupedDataset is a tensor for a model with one input and an :class:`Inputs` for a model with
several; everything that slices rows (``x[idx]``, ``x[a:b]``), counts them (``len(x)``, ``x.shape[0]``) or moves
them (``x.to(device)``, ``x.pin_memory()``) works on both, and :func:`call` runs a model on either: ``model(x)`` or
``model(*x.tensors)``, in the documented order (``x0``, ``x1``, ... or the names given by ``--inputs``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Inputs", "call", "as_args", "n_rows"]


class Inputs:
    """Several tensors with the same number of rows, passed to a model positionally, in order.

    Attributes:
        tensors: the model's positional inputs, each (N, ...); int64 ids stay int64, floats are float32.
        names: the name of each input (the NPZ array or tokenizer output it came from).
    """

    __slots__ = ("tensors", "names")

    def __init__(self, tensors: Sequence[torch.Tensor], names: Sequence[str] | None = None):
        tensors = tuple(tensors)
        if not tensors:
            raise ValueError("Inputs needs at least one tensor")
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError(f"every input must have the same number of rows; found {[len(t) for t in tensors]}")
        self.tensors = tensors
        self.names = tuple(names) if names is not None else tuple(f"x{i}" for i in range(len(tensors)))
        if len(self.names) != len(tensors):
            raise ValueError(f"{len(self.names)} names for {len(tensors)} inputs")

    # ---- rows ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index) -> "Inputs":
        return Inputs([t[index] for t in self.tensors], self.names)

    def map(self, fn) -> "Inputs":
        """A new Inputs with ``fn`` applied to each tensor."""
        return Inputs([fn(t) for t in self.tensors], self.names)

    def to(self, *args, **kwargs) -> "Inputs":
        return self.map(lambda t: t.to(*args, **kwargs))

    def pin_memory(self) -> "Inputs":
        return self.map(lambda t: t.pin_memory())

    def detach(self) -> "Inputs":
        return self.map(lambda t: t.detach())

    def clone(self) -> "Inputs":
        return self.map(lambda t: t.clone())

    @property
    def shape(self) -> torch.Size:
        """The first input's shape (``shape[0]`` is the number of rows, as for a tensor)."""
        return self.tensors[0].shape

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(t.shape) for t in self.tensors)

    @property
    def dtype(self) -> torch.dtype:
        """The first input's dtype."""
        return self.tensors[0].dtype

    @property
    def dtypes(self) -> tuple[torch.dtype, ...]:
        return tuple(t.dtype for t in self.tensors)

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    @property
    def is_cuda(self) -> bool:
        return self.tensors[0].is_cuda

    def cpu(self) -> "Inputs":
        return self.map(lambda t: t.cpu())

    def contiguous(self) -> "Inputs":
        return self.map(lambda t: t.contiguous())

    def dim(self) -> int:
        return self.tensors[0].dim()

    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @staticmethod
    def cat(parts: Sequence["Inputs"]) -> "Inputs":
        return Inputs([torch.cat(ts) for ts in zip(*(p.tensors for p in parts))], parts[0].names)

    def pad_rows(self, n: int) -> "Inputs":
        """These rows followed by ``n`` copies of the first row (a fixed-batch program's padding)."""
        return self.map(lambda t: torch.cat([t, t[:1].expand(n, *t.shape[1:])]))

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
                          for n, t in zip(self.names, self.tensors))
        return f"Inputs({parts})"


def as_args(x) -> tuple:
    """The positional arguments a model takes for batch ``x``: ``(x,)`` or the Inputs' tensors."""
    return x.tensors if isinstance(x, Inputs) else (x,)


def call(module, x):
    """``module`` run on batch ``x`` (a tensor, or an Inputs passed positionally)."""
    return module(*as_args(x))


def n_rows(x) -> int:
    return len(x)
