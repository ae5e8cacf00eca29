"""2:4 semi-structured sparsity (``nm_2_4``): the masks, and the packed form a 2:4 weight ships in.

In every group of 4 consecutive weights along the input (reduction) dimension of a weight, keep the
2 of largest magnitude (ties: the earlier position). A weight (out, in, *kernel) is read as the matrix
(out, in · prod(kernel)) a GEMM reduces over, the layout NVIDIA's 2:4 sparse tensor cores and
``torch.sparse.to_sparse_semi_structured`` use; a weight whose reduction size is not a multiple of 4
is left dense and reported. 2:4 is 50% sparsity by definition: ``nm_2_4`` refuses any other level.

Packed form [fairprune] (what ``size_bytes`` measures for a 2:4 weight): the kept values, (out, k/2)
at the weight's dtype, and their positions in the group, 2 bits each (4 bits per group, two groups
per byte): (out, ceil(k/8)) uint8. :func:`pack_2_4` / :func:`unpack_2_4` are exact inverses on any
tensor that follows the pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...core.errors import InputError
from ._masks import prunable_parameters
from ._methods import PruningMethod, register_method

__all__ = ["NM24", "nm_mask", "nm_masks", "nm_reason", "follows_2_4", "pack_2_4", "unpack_2_4", "NM_GROUP", "NM_KEEP"]

NM_GROUP, NM_KEEP = 4, 2


def _reduction(shape) -> int:
    k = 1
    for s in shape[1:]:
        k *= int(s)
    return k


def nm_reason(weight: torch.Tensor) -> str | None:
    """Why ``weight`` cannot take the 2:4 pattern (None when it can)."""
    if weight.dim() < 2:
        return f"it has {weight.dim()} dimension(s); expected a weight matrix or conv kernel"
    k = _reduction(weight.shape)
    if k % NM_GROUP:
        return f"its input dimension ({k} = in_features x kernel) is not a multiple of {NM_GROUP}"
    return None


def nm_mask(weight: torch.Tensor) -> torch.Tensor:
    """Bool keep-mask of ``weight``'s shape: the 2 largest |w| of each group of 4 along the input dimension."""
    reason = nm_reason(weight)
    if reason is not None:
        raise ValueError(f"cannot apply the 2:4 pattern: {reason}")
    rows = weight.shape[0]
    groups = weight.detach().abs().reshape(rows, -1, NM_GROUP)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :NM_KEEP]
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order, True)
    return keep.reshape(weight.shape)


def nm_masks(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(masks, skipped): a 2:4 keep-mask per prunable weight that can take the pattern, and for the
    others the reason they stay dense."""
    masks, skipped = {}, {}
    for name, p in prunable_parameters(module).items():
        reason = nm_reason(p)
        if reason is None:
            masks[name] = nm_mask(p)
        else:
            skipped[name] = reason
    return masks, skipped


def follows_2_4(t: torch.Tensor) -> bool:
    """True when ``t`` (out, ...) has at most 2 non-zeros in every group of 4 along its input dimension."""
    if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.numel() == 0 or nm_reason(t) is not None:
        return False
    nonzero = (t.detach().reshape(t.shape[0], -1, NM_GROUP) != 0).sum(-1)
    return bool((nonzero <= NM_KEEP).all())


def pack_2_4(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, positions) of a tensor that follows the 2:4 pattern (:func:`follows_2_4`).

    values: (out, k/2) at ``t``'s dtype, the 2 kept entries of each group in position order (a group
    with fewer non-zeros keeps zeros at its first free positions); positions: (out, ceil(k/8)) uint8,
    each group's two 2-bit positions in one nibble (first | second << 2), two groups per byte
    (even group in the low nibble).
    """
    if not follows_2_4(t):
        raise ValueError("pack_2_4 needs a tensor with at most 2 non-zeros in every group of 4 along its input dimension")
    rows = t.shape[0]
    g = t.detach().reshape(rows, -1, NM_GROUP)
    nonzero = (g != 0).to(torch.int8)
    # non-zeros first, then zeros, each in position order; keep the first two and sort them by position
    pos = torch.sort(nonzero, dim=-1, descending=True, stable=True).indices[..., :NM_KEEP]
    pos = torch.sort(pos, dim=-1).values
    values = torch.gather(g, -1, pos).reshape(rows, -1).contiguous()
    nibble = (pos[..., 0] | (pos[..., 1] << 2)).to(torch.uint8)          # (rows, groups)
    if nibble.shape[1] % 2:
        nibble = torch.cat([nibble, torch.zeros(rows, 1, dtype=torch.uint8, device=nibble.device)], 1)
    packed = (nibble[:, 0::2] | (nibble[:, 1::2] << 4)).contiguous()
    return values, packed


def unpack_2_4(values: torch.Tensor, positions: torch.Tensor, shape) -> torch.Tensor:
    """The dense tensor of ``shape`` that :func:`pack_2_4` packed into ``values`` and ``positions``."""
    shape = tuple(int(s) for s in shape)
    rows, k = shape[0], _reduction(shape)
    groups = k // NM_GROUP
    nib = torch.stack([positions & 0xF, positions >> 4], -1).reshape(rows, -1)[:, :groups].to(torch.int64)
    pos = torch.stack([nib & 0x3, (nib >> 2) & 0x3], -1)                   # (rows, groups, 2)
    out = torch.zeros(rows, groups, NM_GROUP, dtype=values.dtype, device=values.device)
    out.scatter_(-1, pos, values.reshape(rows, groups, NM_KEEP))
    return out.reshape(shape)


@register_method
@dataclass(frozen=True)
class NM24(PruningMethod):
    name: str = "nm_2_4"
    description: str = ("2:4 semi-structured sparsity: in every group of 4 consecutive weights along the input "
                        "dimension keep the 2 largest |w| (50% sparsity by definition; the pattern sparse tensor "
                        "cores accelerate)")
    fixed_sparsity: float | None = 0.5

    def masks(self, module, sparsity, *, seed, example_input):
        self.check_sparsity(sparsity)
        masks, skipped = nm_masks(module)
        if not masks:
            raise InputError("nm_2_4 found no weight that can take the 2:4 pattern; expected conv or linear weights "
                             "whose input dimension is a multiple of 4, found: "
                             + "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:5]))
        return masks
