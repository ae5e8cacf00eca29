"""Fine-tuning a pruned model with its masks fixed (the paper's pipeline: prune, then fine-tune).

The model stays in eval form throughout: BatchNorm uses (and keeps) its running statistics and
dropout is off, so only the weights move. After every optimiser step the masked entries are zeroed
again, so pruned weights stay exactly zero.

Plain fine-tuning minimises the mean cross-entropy J(θ; D) over shuffled mini-batches. The same
loop serves the fairness-constrained variants (``fairprune.engine.mitigate``): an :class:`Objective`
replaces the loss (it sees each batch's logits, labels and group codes, and may update its own
state, e.g. Lagrange multipliers), and ``sampling="balanced"`` draws group-balanced batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data import GroupedDataset
from ..core.errors import Cancelled, InputError
from .evaluate import loss_fn, model_outputs
from .prune import MaskedModel

__all__ = ["finetune", "Objective", "group_codes", "SAMPLING"]

#: How mini-batches are drawn: a shuffle of the rows, or rows drawn with replacement so that every
#: group is equally likely in each draw (each epoch still draws as many rows as the set has).
SAMPLING = ("shuffle", "balanced")


class Objective:
    """What one fine-tuning step minimises; the base class is the plain mean loss J(θ; D_batch).

    ``__call__(logits (B, K) float32, y (B,) int64, group (B,) int64 codes into the run's group
    names) -> scalar``. ``start_epoch(epoch)`` is called before each epoch. Subclasses may keep
    state (multipliers) and update it inside ``__call__`` from detached batch statistics.
    """

    def start_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        pass

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return loss_fn(logits, y)


def group_codes(groups: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(N,) int64 position of each row's group key in ``names``; a key not in ``names`` is an InputError."""
    keys = np.asarray(groups).astype(str)
    index = {g: i for i, g in enumerate(names)}
    uniq, inverse = np.unique(keys, return_inverse=True)
    missing = [u for u in uniq if u not in index]
    if missing:
        raise InputError(f"training rows have group(s) {missing[:5]} that the evaluated rows do not; "
                         f"expected groups among: {', '.join(names)}")
    return np.array([index[u] for u in uniq], dtype=np.int64)[inverse]


def _epoch_order(n: int, codes: np.ndarray | None, sampling: str, g: torch.Generator) -> np.ndarray:
    if sampling == "shuffle":
        return torch.randperm(n, generator=g).numpy()
    counts = np.bincount(codes)
    weights = torch.as_tensor(1.0 / counts[codes], dtype=torch.float64)   # each present group equally likely
    return torch.multinomial(weights, n, replacement=True, generator=g).numpy()


def finetune(model, masked: MaskedModel, train: GroupedDataset, *, epochs: int, lr: float = 1e-3,
             batch_size: int = 128, seed: int = 0, device: torch.device | str = "cpu",
             cancel: Callable[[], bool] | None = None,
             on_epoch: Callable[[int, float], None] | None = None,
             objective: Objective | None = None, sampling: str = "shuffle",
             group_names: Sequence[str] | None = None, amp: bool = False) -> list[float]:
    """Fine-tune ``model`` (a LoadedModel whose module ``masked`` wraps) for ``epochs`` with Adam.

    Returns the mean value of the objective per epoch (the plain training loss by default). Shuffling
    is seeded; the masks in ``masked`` are re-applied after each step (an empty ``masked`` fine-tunes
    the dense model). ``objective``: see :class:`Objective` (default: mean cross-entropy).
    ``sampling``: "shuffle" (default) or "balanced" (see :data:`SAMPLING`). ``group_names``: the order
    of the group codes handed to the objective (default ``train.group_names``). ``amp``: mixed
    precision on CUDA (bfloat16 where supported, else float16 with loss scaling); ignored on CPU.
    """
    if sampling not in SAMPLING:
        raise InputError(f"sampling must be one of {', '.join(SAMPLING)}; got {sampling!r}")
    device = torch.device(device)
    module = model.module
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    bs = model.fixed_batch_size or batch_size
    objective = objective if objective is not None else Objective()
    codes_np = group_codes(train.group, group_names or train.group_names)
    codes = torch.as_tensor(codes_np)
    use_amp = bool(amp) and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    history = []
    for epoch in range(epochs):
        objective.start_epoch(epoch)
        order = _epoch_order(train.n, codes_np, sampling, g)
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
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model_outputs(model, xb)
            loss = objective(logits.float(), yb, codes[idx].to(device))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            masked.reapply()
            total += loss.item() * len(idx)
            count += len(idx)
        history.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    return history
