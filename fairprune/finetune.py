"""Fine-tuning a pruned model with its masks fixed (the paper's pipeline: prune, then fine-tune).

The model stays in eval form throughout: BatchNorm uses (and keeps) its running statistics and
dropout is off, so only the weights move. After every optimiser step the masked entries are zeroed
again, so pruned weights stay exactly zero. The fairness-constrained variants build on this loop
(``fairprune.mitigate``); here the loss is the plain mean cross-entropy J(θ; D), optionally weighted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import GroupedDataset
from .errors import Cancelled
from .evaluate import model_outputs
from .prune import MaskedModel

__all__ = ["finetune", "loss_fn"]


def loss_fn(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for K >= 2 logits; binary cross-entropy through a sigmoid for one logit."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


def finetune(model, masked: MaskedModel, train: GroupedDataset, *, epochs: int, lr: float = 1e-3,
             batch_size: int = 128, seed: int = 0, device: torch.device | str = "cpu",
             cancel: Callable[[], bool] | None = None,
             on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Plain fine-tuning of ``model`` (a LoadedModel whose module ``masked`` wraps) for ``epochs``.

    Returns the mean training loss per epoch. Shuffling is seeded; the masks in ``masked`` are
    re-applied after each step.
    """
    device = torch.device(device)
    module = model.module
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    bs = model.fixed_batch_size or batch_size
    history = []
    for epoch in range(epochs):
        order = torch.randperm(train.n, generator=g).numpy()
        if model.fixed_batch_size:  # a fixed-batch program only takes full batches
            order = order[: len(order) // bs * bs]
        total, count = 0.0, 0
        for start in range(0, len(order), bs):
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            idx = torch.as_tensor(np.sort(order[start:start + bs]))
            xb = train.to_float(train.x[idx].to(device))
            yb = train.y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model_outputs(model, xb), yb)
            loss.backward()
            opt.step()
            masked.reapply()
            total += loss.item() * len(idx)
            count += len(idx)
        history.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    return history
