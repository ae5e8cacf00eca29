"""One evaluation pass: per-sample loss, prediction and correctness, batch by batch.

Only per-sample scalars are kept (O(N) memory), never activations or logits of the whole set. A
model with one output logit is a binary classifier read through a sigmoid with binary cross-entropy;
otherwise softmax cross-entropy. A ``.pt2`` program exported with a fixed batch size gets its last
batch padded to that size and the padding's outputs dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import GroupedDataset
from .errors import Cancelled, InputError

__all__ = ["Predictions", "evaluate", "model_outputs", "check_model_fits", "resolve_device"]

OUTPUTS_ARE_PROBABILITIES = (
    "the model's outputs sum to 1 on every row: it looks like it outputs probabilities (softmax) rather than "
    "logits. fairprune applies softmax itself, so losses and margins will be wrong; export the model without "
    "its final softmax"
)


@dataclass(frozen=True)
class Predictions:
    """Per-sample results of one pass, row-aligned with the dataset.

    loss: (N,) float64 cross-entropy ℓ(f(x_i), y_i); pred: (N,) int64; correct: (N,) bool;
    margin: (N,) float64 p_y − max_{k≠y} p_k of the softmax (sigmoid for one logit).
    """

    loss: np.ndarray
    pred: np.ndarray
    correct: np.ndarray
    margin: np.ndarray
    num_outputs: int

    @property
    def binary(self) -> bool:
        return self.num_outputs <= 2


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when available, else CPU; 'cuda' without a GPU -> InputError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch finds no CUDA device on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda; got {device!r}")
    return dev


def _forward(module, x: torch.Tensor, fixed_batch: int | None) -> torch.Tensor:
    n = x.shape[0]
    if fixed_batch is None or n == fixed_batch:
        out = module(x)
    else:
        # Pad by repeating the first row; slice the padding's outputs away.
        pad = x[:1].expand(fixed_batch - n, *x.shape[1:])
        out = module(torch.cat([x, pad]))[:n]
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the model returned {type(out).__name__}; expected a tensor of logits (N, K)")
    if out.dim() == 1:
        out = out[:, None]
    if out.dim() != 2 or out.shape[0] != n:
        raise InputError(f"the model returned outputs of shape {tuple(out.shape)} for a batch of {n}; expected logits (N, K)")
    return out


def model_outputs(model, x: torch.Tensor) -> torch.Tensor:
    """Logits (N, K) of ``model`` (a LoadedModel) on model-ready input ``x``."""
    return _forward(model.module, x, model.fixed_batch_size)


def per_sample(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, pred, margin) per sample from logits (N, K) and labels (N,)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        z = logits[:, 0]
        loss = F.binary_cross_entropy_with_logits(z, y.float(), reduction="none")
        pred = (z > 0).long()
        p1 = torch.sigmoid(z)
        p_y = torch.where(y == 1, p1, 1 - p1)
        margin = 2 * p_y - 1
        return loss, pred, margin
    loss = F.cross_entropy(logits, y, reduction="none")
    prob = logits.softmax(1)
    pred = logits.argmax(1)
    p_y = prob.gather(1, y[:, None])[:, 0]
    other = prob.scatter(1, y[:, None], float("-inf")).amax(1)
    return loss, pred, p_y - other


def check_model_fits(model, data: GroupedDataset, device: torch.device) -> int:
    """Run the model on two rows; return its number of outputs K, or raise InputError saying why not."""
    x, _ = next(data.batches(min(2, data.n), device))
    try:
        with torch.no_grad():
            out = model_outputs(model, x)
    except InputError:
        raise
    except Exception as err:  # the model's own error says what it expected; keep its first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        want = f" (the model expects per-sample input {tuple(model.input_shape)})" if getattr(model, "input_shape", None) else ""
        raise InputError(
            f"the model cannot run on {data.name}: its features have per-sample shape {data.feature_shape}{want}; "
            f"the model said: {first}"
        ) from err
    k = out.shape[1]
    if k > 1 and torch.allclose(out.float().sum(1), torch.ones(out.shape[0], device=out.device), atol=1e-4) and bool((out >= 0).all()):
        warnings.warn(OUTPUTS_ARE_PROBABILITIES, stacklevel=2)
    return k


def evaluate(model, data: GroupedDataset, *, batch_size: int = 256, device: torch.device | str = "cpu",
             cancel: Callable[[], bool] | None = None, amp: bool = False) -> Predictions:
    """Evaluate ``model`` (a LoadedModel) on every row of ``data``, in row order."""
    device = torch.device(device)
    if model.fixed_batch_size:
        batch_size = model.fixed_batch_size
    losses, preds, margins = [], [], []
    k = None
    with torch.inference_mode():
        for xb, yb in data.batches(batch_size, device):
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                logits = model_outputs(model, xb)
            k = logits.shape[1]
            loss, pred, margin = per_sample(logits, yb)
            losses.append(loss.double().cpu())
            preds.append(pred.cpu())
            margins.append(margin.double().cpu())
    loss = torch.cat(losses).numpy()
    pred = torch.cat(preds).numpy()
    return Predictions(loss=loss, pred=pred, correct=pred == data.y.numpy(), margin=torch.cat(margins).numpy(),
                       num_outputs=int(k))
