"""Pruning methods: each one only computes masks (after ``torch.nn.utils.prune``).

A method is a small class registered by name; :func:`compute_masks` is what callers use. A mask is a
bool tensor per parameter name, True = kept. Unstructured methods mask prunable weights only;
``structured_l1`` also masks the biases and BatchNorm parameters of removed channels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...core.errors import InputError
from ._masks import classifier_parameter, prunable_parameters

__all__ = ["PruningMethod", "register_method", "get_method", "list_methods", "compute_masks", "iter_masks"]

_METHODS: dict[str, "PruningMethod"] = {}


@dataclass(frozen=True)
class PruningMethod:
    """Base class: ``masks`` returns {parameter name: bool mask (True = kept)}."""

    name: str = ""
    description: str = ""
    #: the one sparsity the method prunes to (``nm_2_4``: 0.5), None when any level in [0, 1) works
    fixed_sparsity: float | None = None

    def check_sparsity(self, sparsity: float) -> None:
        """Refuse (InputError) a level the method cannot prune to; any level in [0, 1) unless ``fixed_sparsity``."""
        if self.fixed_sparsity is not None and abs(float(sparsity) - self.fixed_sparsity) > 1e-9:
            raise InputError(f"{self.name} prunes to exactly {self.fixed_sparsity:g} sparsity by definition; expected "
                             f"--sparsity {self.fixed_sparsity:g} (or no --sparsity), found {float(sparsity):g}")

    def masks(self, module: nn.Module, sparsity: float, *, seed: int,
              example_input: torch.Tensor | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def iter_masks(self, module: nn.Module, sparsities: Sequence[float], *, seed: int,
                   example_input: torch.Tensor | None) -> Iterator[dict[str, torch.Tensor]]:
        """Masks for each level in turn. The caller must restore the dense weights before asking
        for the next level. Methods whose scores do not depend on the level override this to score once."""
        for s in sparsities:
            yield self.masks(module, s, seed=seed, example_input=example_input)


def register_method(cls):
    inst = cls()
    _METHODS[inst.name] = inst
    return cls


def list_methods() -> list[PruningMethod]:
    return list(_METHODS.values())


def get_method(name: str) -> PruningMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"unknown pruning method {name!r}; expected one of: {', '.join(_METHODS)}") from None


def compute_masks(module: nn.Module, method: str, sparsity: float, *, seed: int = 0,
                  example_input: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Masks removing the fraction ``sparsity`` of prunable weights of ``module`` with ``method``."""
    if not 0.0 <= float(sparsity) < 1.0:
        raise InputError(f"sparsity must be a fraction in [0, 1), e.g. 0.9 for 90%; got {sparsity!r}")
    if not prunable_parameters(module):
        raise InputError("the model has no prunable weights (conv or linear weight tensors with dim >= 2)")
    get_method(method).check_sparsity(float(sparsity))
    return get_method(method).masks(module, float(sparsity), seed=seed, example_input=example_input)


def iter_masks(module: nn.Module, method: str, sparsities: Sequence[float], *, seed: int = 0,
               example_input: torch.Tensor | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Masks for several levels of one method, scoring the weights once where the method allows.

    A K-level sweep of a global method then costs one sort, not K.
    """
    for s in sparsities:
        if not 0.0 <= float(s) < 1.0:
            raise InputError(f"sparsity must be a fraction in [0, 1), e.g. 0.9 for 90%; got {s!r}")
    if not prunable_parameters(module):
        raise InputError("the model has no prunable weights (conv or linear weight tensors with dim >= 2)")
    for s in sparsities:
        get_method(method).check_sparsity(float(s))
    yield from get_method(method).iter_masks(module, [float(s) for s in sparsities], seed=seed,
                                              example_input=example_input)


def _k_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool keep-mask over a flat score vector that removes exactly the k smallest (ties by position)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        order = torch.sort(scores, stable=True).indices
        keep[order[:k]] = False
    return keep


def _removed_first(flat: torch.Tensor, ks: list[int]) -> Iterator[torch.Tensor]:
    """For each k: the bool keep-mask that removes the first k entries of ``flat``'s stable ascending order (the k
    smallest, ties by position). On the CPU one multi-pivot selection (numpy's introselect) finds every level's
    threshold in O(N), instead of an O(N log N) sort: entries below the k-th value go, then the first entries equal
    to it by position, so the masks are exactly the stable sort's. With NaN scores, or on an accelerator (where the
    sort is fast), the stable sort itself."""
    if (flat.device.type != "cpu" or flat.dtype not in (torch.float32, torch.float64) or not ks
            or bool(torch.isnan(flat).any())):
        order = torch.sort(flat, stable=True).indices
        for k in ks:
            keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
            keep[order[:k]] = False
            yield keep
        return
    import numpy as np

    pivots = sorted({k - 1 for k in ks if k > 0})
    values = np.partition(flat.numpy(), pivots)[pivots] if pivots else []
    threshold = dict(zip(pivots, values))
    for k in ks:
        if k <= 0:
            yield torch.ones(flat.numel(), dtype=torch.bool)
            continue
        v = torch.tensor(threshold[k - 1], dtype=flat.dtype)
        keep = flat >= v
        ties = k - int((~keep).sum())
        if ties:
            keep[torch.nonzero(flat == v)[:ties, 0]] = False
        yield keep


def _global_masks_many(params, scores, sparsities) -> Iterator[dict[str, torch.Tensor]]:
    # One threshold over all prunable weights (torch.nn.utils.prune.global_unstructured's recipe): level s removes
    # the first round(s * N) entries of the scores' stable ascending order.
    flat = torch.cat([scores[n].reshape(-1) for n in params])
    sparsities = list(sparsities)
    keeps = _removed_first(flat, [round(s * flat.numel()) for s in sparsities])
    for keep in keeps:
        out, start = {}, 0
        for n, p in params.items():
            out[n] = keep[start:start + p.numel()].view_as(p)
            start += p.numel()
        yield out


@register_method
@dataclass(frozen=True)
class GlobalMagnitude(PruningMethod):
    name: str = "global_magnitude"
    description: str = "remove the smallest |w| over all prunable weights at once (one threshold, as in the paper)"

    def masks(self, module, sparsity, *, seed, example_input):
        return next(self.iter_masks(module, [sparsity], seed=seed, example_input=example_input))

    def iter_masks(self, module, sparsities, *, seed, example_input):
        params = prunable_parameters(module)
        yield from _global_masks_many(params, {n: p.detach().abs() for n, p in params.items()}, sparsities)


@register_method
@dataclass(frozen=True)
class LayerMagnitude(PruningMethod):
    name: str = "layer_magnitude"
    description: str = "remove the same fraction of smallest |w| in every prunable layer"

    def masks(self, module, sparsity, *, seed, example_input):
        return {
            n: _k_smallest(p.detach().abs().reshape(-1), round(sparsity * p.numel())).view_as(p)
            for n, p in prunable_parameters(module).items()
        }


@register_method
@dataclass(frozen=True)
class RandomUnstructured(PruningMethod):
    name: str = "random"
    description: str = "remove a uniformly random fraction of all prunable weights (seeded; a control)"

    def masks(self, module, sparsity, *, seed, example_input):
        return next(self.iter_masks(module, [sparsity], seed=seed, example_input=example_input))

    def iter_masks(self, module, sparsities, *, seed, example_input):
        # One random score per weight for all levels: the levels' masks are nested, as magnitude's are.
        params = prunable_parameters(module)
        g = torch.Generator().manual_seed(seed)
        scores = {n: torch.rand(p.shape, generator=g).to(p.device) for n, p in params.items()}
        yield from _global_masks_many(params, scores, sparsities)
