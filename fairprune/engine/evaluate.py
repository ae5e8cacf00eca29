"""One evaluation pass: per-sample loss, prediction and correctness, batch by batch.

Only per-sample scalars are kept (O(N) memory), never activations or logits of the whole set. A
model with one output logit is a binary classifier read through a sigmoid with binary cross-entropy;
otherwise softmax cross-entropy. A ``.pt2`` program exported with a fixed batch size gets its last
batch padded to that size and the padding's outputs dropped.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data import GroupedDataset
from ..data._inputs import Inputs, call
from ..core.errors import Cancelled, InputError, is_out_of_memory

__all__ = ["Predictions", "evaluate", "model_outputs", "module_outputs", "loss_fn", "check_model_fits", "resolve_device", "BatchSize",
           "check_amp", "level_precision", "AmpCheck", "AMP_TOLERANCE"]

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


def module_outputs(module, x, fixed_batch: int | None) -> torch.Tensor:
    """Logits (N, K) of a bare ``module`` on ``x`` (a tensor, or an :class:`~fairprune.data.Inputs` passed
    positionally): a program exported for a fixed batch size is run in its own
    batches, the last one padded (padding's outputs dropped); a tuple output gives its first element; one output
    per row becomes (N, 1). Anything else than logits (N, K) is an InputError. :func:`model_outputs` is this for a
    LoadedModel; the diagnostics and compression call it on modules they build (functional calls, copies)."""
    n = len(x)
    if fixed_batch is not None and n > fixed_batch:     # a program exported for fewer rows: in its own batches
        return torch.cat([module_outputs(module, x[i:i + fixed_batch], fixed_batch) for i in range(0, n, fixed_batch)])
    if fixed_batch is None or n == fixed_batch:
        out = call(module, x)
    else:
        # Pad by repeating the first row; slice the padding's outputs away.
        if isinstance(x, Inputs):
            padded = x.pad_rows(fixed_batch - n)
        else:
            padded = torch.cat([x, x[:1].expand(fixed_batch - n, *x.shape[1:])])
        out = call(module, padded)
        out = (out[0] if isinstance(out, (tuple, list)) else out)[:n]
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) and isinstance(getattr(out, "logits", None), torch.Tensor):
        out = out.logits            # a Hugging Face ModelOutput
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the model returned {type(out).__name__}; expected a tensor of logits (N, K)")
    if out.dim() == 1:
        out = out[:, None]
    if out.dim() != 2 or out.shape[0] != n:
        raise InputError(f"the model returned outputs of shape {tuple(out.shape)} for a batch of {n}; expected logits (N, K)")
    return out


def model_outputs(model, x: torch.Tensor) -> torch.Tensor:
    """Logits (N, K) of ``model`` (a LoadedModel) on model-ready input ``x``."""
    return module_outputs(model.module, x, model.fixed_batch_size)


def loss_fn(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The loss of a model's outputs: cross-entropy for K >= 2 logits; binary cross-entropy through a sigmoid for
    one logit (what :func:`per_sample` reports per row; fine-tuning, mitigation and the diagnostics differentiate it)."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


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
        if data.n_inputs > 1:
            what = f"its {data.n_inputs} inputs, passed positionally in this order, are {data.describe_inputs()}"
        else:
            what = f"its features have per-sample shape {data.feature_shape}"
        raise InputError(
            f"the model cannot run on {data.name}: {what}{want}; "
            f"the model said: {first}{_dtype_hint(x, first)}"
        ) from err
    k = out.shape[1]
    if k > 1 and torch.allclose(out.float().sum(1), torch.ones(out.shape[0], device=out.device), atol=1e-4) and bool((out >= 0).all()):
        warnings.warn(OUTPUTS_ARE_PROBABILITIES, stacklevel=2)
    return k


def _dtype_hint(x, said: str) -> str:
    """Why a model may have failed on the input's dtype: ids given where numbers are wanted, or the reverse;
    or on the number of inputs."""
    if re.search(r"positional argument|takes \d+|missing \d+ required|input tree spec", said):
        k = len(x.tensors) if isinstance(x, Inputs) else 1
        return (f"; the data gives the model {k} positional input(s) (NPZ: 'x', or 'x0', 'x1', ... or the arrays "
                "named by --inputs, in that order): store as many arrays as the model's forward() takes")
    if isinstance(x, Inputs):
        return ""
    if x.dtype == torch.int64 and re.search(r"dtype|scalar type|Long|Float|Half|same type", said):
        return ("; the features are integers, which reach the model as int64 ids (for an nn.Embedding); "
                "a model that takes numbers needs x stored as float32")
    if "indices" in said or "Long, Int" in said:
        return (f"; the features reach the model as {str(x.dtype).removeprefix('torch.')}: a model that takes "
                "token ids needs x stored as integers (int64), which are passed unchanged")
    return ""


class BatchSize:
    """A batch size that backs off on out-of-memory (CUDA, or the CPU allocator) and remembers it: an audit's
    K + 1 passes share one, so the first pass finds the largest batch that fits and the others start from it.

    ``None`` asks for the default of the device (1024 rows on CUDA, 256 on the CPU).
    """

    def __init__(self, value: int | None = None, device: torch.device | str = "cpu"):
        if value is None:
            value = 1024 if torch.device(device).type == "cuda" else 256
        if int(value) < 1:
            raise InputError(f"--batch-size must be a positive number of rows; found {value}")
        self.value = int(value)
        self.backoffs: list[int] = []          # the sizes that ran out of memory, in order

    def shrink(self, error: str) -> None:
        """Halve the batch after an out-of-memory error (its message ``error``); InputError at one row."""
        if self.value == 1:
            raise InputError("the model runs out of memory on a single row; free the GPU (or memory), or use "
                             f"--device cpu (the error: {error.strip().splitlines()[0] if error.strip() else 'none'})")
        self.backoffs.append(self.value)
        self.value = max(1, self.value // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        warnings.warn(f"out of memory at batch size {self.backoffs[-1]}; retrying with {self.value}", stacklevel=3)


def autocast(device: torch.device, amp: str | None):
    """The autocast context for ``amp`` (None: full precision; 'float16' or 'bfloat16')."""
    if not amp:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=getattr(torch, amp))


def evaluate(model, data: GroupedDataset, *, batch_size: int | BatchSize | None = 256,
             device: torch.device | str = "cpu", cancel: Callable[[], bool] | None = None,
             amp: str | bool | None = None) -> Predictions:
    """Evaluate ``model`` (a LoadedModel) on every row of ``data``, in row order.

    ``batch_size``: rows per pass, or a shared :class:`BatchSize`; on out-of-memory the batch is halved and
    the same rows retried (a warning says so), never the run failed. ``amp``: None
    (full precision), 'float16' or 'bfloat16' autocast (True: float16 on CUDA, bfloat16 on CPU);
    :func:`check_amp` says whether it keeps predictions within a tolerance. Per-batch results stay on
    the device until the end, so host copies of the next batch (pinned, non-blocking) overlap compute.
    """
    device = torch.device(device)
    if amp is True:
        amp = "float16" if device.type == "cuda" else "bfloat16"
    bs = batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size, device)
    fixed = model.fixed_batch_size
    losses, preds, margins = [], [], []
    k = None
    start = 0
    with torch.inference_mode():
        while start < data.n:
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            size = fixed or bs.value
            xb, yb = data.rows(start, start + size, device)
            error = None
            try:
                with autocast(device, amp or None):
                    logits = model_outputs(model, xb)
                loss, pred, margin = per_sample(logits, yb)
            except Exception as err:
                if fixed or not is_out_of_memory(err):
                    raise
                error = str(err)      # not the exception: its traceback holds the batch's activations
            if error is not None:
                del xb, yb
                bs.shrink(error)      # frees the allocator's cache once nothing holds the failed batch
                continue
            k = logits.shape[1]
            losses.append(loss)
            preds.append(pred)
            margins.append(margin)
            start += size
    loss = torch.cat(losses).double().cpu().numpy()
    pred = torch.cat(preds).cpu().numpy()
    return Predictions(loss=loss, pred=pred, correct=pred == data.y.numpy(),
                       margin=torch.cat(margins).double().cpu().numpy(), num_outputs=int(k))


#: AMP is used only when, on the dense model over every evaluated row, it changes at most this fraction
#: of predictions and no group's accuracy by more than this (absolute).
AMP_TOLERANCE = 0.001


@dataclass(frozen=True)
class AmpCheck:
    """Whether mixed precision keeps the dense model's predictions within :data:`AMP_TOLERANCE`."""

    dtype: str
    prediction_agreement: float          # fraction of rows whose prediction is unchanged
    max_group_accuracy_change: float     # largest |accuracy(AMP) − accuracy(fp32)| over groups
    max_loss_change: float               # largest |ℓ(AMP) − ℓ(fp32)| over rows
    tolerance: float
    used: bool

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "used": self.used, "tolerance": self.tolerance,
                "prediction_agreement": round(self.prediction_agreement, 6),
                "max_group_accuracy_change": round(self.max_group_accuracy_change, 6),
                "max_loss_change": round(self.max_loss_change, 6),
                "checked_on": "the dense model, every evaluated row, against full precision"}


def check_amp(full: Predictions, mixed: Predictions, groups: np.ndarray, dtype: str,
              tolerance: float = AMP_TOLERANCE) -> AmpCheck:
    """Compare full-precision and mixed-precision predictions of the same model on the same rows."""
    agree = float(np.mean(full.pred == mixed.pred)) if len(full.pred) else 1.0
    change = 0.0
    for g in np.unique(groups):
        rows = groups == g
        change = max(change, abs(float(full.correct[rows].mean()) - float(mixed.correct[rows].mean())))
    loss_change = float(np.max(np.abs(full.loss - mixed.loss))) if len(full.loss) else 0.0
    ok = (1.0 - agree) <= tolerance and change <= tolerance
    return AmpCheck(dtype, agree, change, loss_change, tolerance, ok)


def level_precision(full: Predictions, mixed: Predictions, dense_full: Predictions, dense_mixed: Predictions,
                    groups: np.ndarray, dtype: str, tolerance: float = AMP_TOLERANCE
                    ) -> tuple[AmpCheck, Predictions, Predictions]:
    """(check, level predictions, dense predictions to pair them with) for one pruned level evaluated both
    ways: mixed precision only where it passes :func:`check_amp` on this level too, paired with the dense
    model's mixed-precision predictions; otherwise both full precision, so the comparison stays like for like."""
    check = check_amp(full, mixed, groups, dtype, tolerance)
    return (check, mixed, dense_mixed) if check.used else (check, full, dense_full)
