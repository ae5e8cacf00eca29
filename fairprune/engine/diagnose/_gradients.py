"""‖g_a‖ of Theorem 1: the norm of the gradient of a group's *mean* loss, g_a = ∇_θ J(θ; D_a).

Not the mean of per-sample gradient norms (that is ``grad_norm_mean``, always >= ‖g_a‖ by the triangle
inequality): per-sample gradients that point different ways cancel in g_a. One forward and backward
pass over the rows, group by group (each group's rows in batches), back-propagating the summed loss.
The same forward pass gives the per-sample outputs (:func:`fairprune.engine.diagnose.output_stats`' figures),
so diagnostics pay for one pass, not two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from ...core.errors import Cancelled
from ..evaluate import loss_fn, model_outputs, per_sample
from ._boundary import uncertainty

__all__ = ["group_grad_norms", "group_pass", "RowOutputs"]


def group_pass(model, data, *, batch_size: int = 256, device: torch.device | str = "cpu",
               masks: Mapping[str, torch.Tensor] | None = None,
               cancel: Callable[[], bool] | None = None, outputs: bool = True
               ) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
    """(group -> ‖∇_θ J(θ; D_a)‖₂, per-sample outputs) in one pass (``outputs=False``: the norms only, outputs None).

    The norm is over all trainable parameters, pruned coordinates excluded (``masks``: name -> bool
    keep-mask). Per-sample outputs: ``loss``, ``pred``, ``margin``, ``uncertainty`` (N,) in row order.
    ``model``: a :class:`fairprune.zoo.LoadedModel` at θ (θ̄ on a pruned model); every row counts.
    """
    device = torch.device(device)
    module = model.module
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    keep = [None if masks is None or n not in masks else masks[n].to(device=p.device, dtype=torch.float64)
            for n, p in named]
    groups = np.asarray(data.group).astype(str)
    bs = model.fixed_batch_size or batch_size
    stats = RowOutputs(data.n)
    norms = {}
    for g in sorted(set(groups)):
        rows = np.flatnonzero(groups == g)
        acc = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        for start in range(0, len(rows), bs):
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            idx = rows[start:start + bs]
            t = torch.as_tensor(idx, dtype=torch.long)
            xb, yb = data.to_float(data.x[t].to(device)), data.y[t].to(device)
            logits = model_outputs(model, xb)
            loss = loss_fn(logits, yb, reduction="sum")
            if params:
                grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
                for a, gr in zip(acc, grads):
                    a.add_(gr.detach().double())
            if outputs:
                stats.add(idx, logits.detach(), yb)
        sq = 0.0
        for a, m in zip(acc, keep):
            mean = a / len(rows)
            sq += float((mean if m is None else mean * m).pow(2).sum())
        norms[g] = sq ** 0.5
    return norms, stats.columns if outputs else None


class RowOutputs:
    """Per-sample outputs filled batch by batch from logits a pass already computed: ``loss``, ``pred``,
    ``margin``, ``uncertainty`` (N,) in row order (``columns``)."""

    def __init__(self, n: int):
        self.columns = {"loss": np.empty(n), "pred": np.empty(n, dtype=np.int64), "margin": np.empty(n),
                        "uncertainty": np.empty(n)}
        self._next = 0

    def add(self, rows: np.ndarray | None, logits: torch.Tensor, y: torch.Tensor) -> None:
        """``rows``: the positions of the batch's rows; None: the next rows in order."""
        if rows is None:
            rows = np.arange(self._next, self._next + len(y))
            self._next += len(y)
        with torch.no_grad():
            lo, pred, margin = per_sample(logits, y)
            self.columns["loss"][rows] = lo.double().cpu().numpy()
            self.columns["pred"][rows] = pred.cpu().numpy()
            self.columns["margin"][rows] = margin.double().cpu().numpy()
            self.columns["uncertainty"][rows] = uncertainty(logits).double().cpu().numpy()


def group_grad_norms(model, data, *, batch_size: int = 256, device: torch.device | str = "cpu",
                     masks: Mapping[str, torch.Tensor] | None = None,
                     cancel: Callable[[], bool] | None = None) -> dict[str, float]:
    """Group -> ‖∇_θ J(θ; D_a)‖₂ over all trainable parameters (pruned coordinates excluded)."""
    return group_pass(model, data, batch_size=batch_size, device=device, masks=masks, cancel=cancel)[0]
