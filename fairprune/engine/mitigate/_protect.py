"""``protect_layers``: per-group layer sensitivity, and masks that keep the most sensitive layers dense.

Sensitivity of layer l [fairprune]: prune only l, to the target sparsity by magnitude within the layer,
and measure on the *training* rows each group's accuracy drop and excessive loss against the dense
model; the layer's cost is the worst group's (largest drop, then largest excessive loss). The layers
with the highest cost are kept dense, at most ``protect`` of them, and only while they hold at most half
of the weights the target sparsity keeps (so the other layers are not emptied); the other layers are
pruned by one global magnitude threshold to the same overall sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..evaluate import evaluate
from ..prune import MaskedModel, prunable_parameters

__all__ = ["LayerCost", "layer_sensitivity", "protected_masks"]

#: protected layers may hold at most this share of the weights the target sparsity keeps
MAX_KEPT_SHARE = 0.5


@dataclass(frozen=True)
class LayerCost:
    """Cost of pruning one layer alone: the worst group's accuracy drop and excessive loss (training rows)."""

    name: str
    size: int
    worst_group: str
    accuracy_drop: float
    excessive_loss: float


def _magnitude_masks(params: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Keep-masks removing the ``k`` smallest |w| over ``params`` together (one threshold; ties by position)."""
    flat = torch.cat([p.detach().abs().reshape(-1) for p in params.values()])
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.sort(flat, stable=True).indices[:min(k, flat.numel())]] = False
    out, start = {}, 0
    for n, p in params.items():
        out[n] = keep[start:start + p.numel()].view_as(p)
        start += p.numel()
    return out


def layer_sensitivity(model, train, dense_pred, names: list[str], sparsity: float, *, device, batch_size: int = 256,
                      cancel=None) -> list[LayerCost]:
    """One :class:`LayerCost` per prunable layer of ``model.module`` (left dense on return)."""
    module = model.module
    params = prunable_parameters(module)
    groups = train.group.astype(str)
    masked = MaskedModel(module)
    out = []
    try:
        for n, p in params.items():
            keep = _magnitude_masks({n: p}, round(sparsity * p.numel()))[n]
            masked.apply({n: keep})
            pred = evaluate(model, train, batch_size=batch_size, device=device, cancel=cancel)
            worst = None
            for g in names:
                rows = groups == g
                if not rows.any():
                    continue
                drop = float(dense_pred.correct[rows].mean() - pred.correct[rows].mean())
                excess = float(pred.loss[rows].mean() - dense_pred.loss[rows].mean())
                if worst is None or (drop, excess) > (worst[1], worst[2]):
                    worst = (g, drop, excess)
            out.append(LayerCost(n, p.numel(), worst[0], worst[1], worst[2]))
    finally:
        masked.restore()
    return out


def protected_masks(module: torch.nn.Module, costs: list[LayerCost], sparsity: float,
                    protect: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(masks at overall ``sparsity`` with the chosen layers dense, names of the protected layers)."""
    params = prunable_parameters(module)
    total = sum(p.numel() for p in params.values())
    budget = MAX_KEPT_SHARE * (1.0 - sparsity) * total
    chosen, used = [], 0
    for c in sorted(costs, key=lambda c: (-c.accuracy_drop, -c.excessive_loss, c.name)):
        if len(chosen) >= protect:
            break
        if c.accuracy_drop <= 0 and c.excessive_loss <= 0:
            break   # pruning it alone costs no group anything: nothing to protect
        if used + c.size <= budget:
            chosen.append(c.name)
            used += c.size
    rest = {n: p for n, p in params.items() if n not in chosen}
    k = round(sparsity * total)
    masks = _magnitude_masks(rest, k)
    for n in chosen:
        masks[n] = torch.ones_like(params[n], dtype=torch.bool)
    return {n: masks[n] for n in params}, chosen
