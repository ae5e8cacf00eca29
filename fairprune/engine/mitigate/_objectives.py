"""Lagrangian objectives for fine-tuning under per-group constraints.

Both constrained methods solve min_θ J(θ; D) s.t. c_a(θ) <= 0 for every group a through the
Lagrangian L(θ, λ) = J(θ; D) + Σ_a λ_a c̃_a(θ): a primal descent step on θ (the optimiser, masks
fixed) and, on the same mini-batch, a projected dual ascent step on one multiplier per group
present in the batch, λ_a <- max(0, λ_a + η_λ c_a) (:class:`Multipliers`).

- :class:`LossConstraint` is the paper's Eq. 8 relaxed by a tolerance α: c_a = |J(θ; D_a) − J(θ; D)| − α,
  the same expression in the primal and the dual step (α = 0 is the paper's equality). [paper]
- :class:`AccuracyGapConstraint` is Balancing Act's one-sided excess-accuracy-gap constraint,
  c_a = (acc_dense(a) − acc(θ; D_a)) − (acc_dense − acc(θ; D)) − ε, measured with the true rates in
  the dual step, and with a cross-entropy surrogate, J(θ; D_a) − J(θ; D) (the dense terms are
  constants), in the primal step (proxy constraints). [BA]

Where the dual step measures the constraints [fairprune]: on the training batch itself (default), or,
with ``probe``, on a batch drawn from training rows held back from the primal step (the two-dataset
scheme of Cotter et al., 2019, "Training well-generalizing classifiers for fairness metrics and other
data-dependent constraints"). Balancing Act reports that constraints met on the rows a model fits are
not met on unseen rows; measuring them on rows the primal step never fits is the cheap remedy.

J(θ; D) on a batch is the batch's mean loss: the population's loss (the training rows' group mix) under
shuffled batches, the unweighted mean of the group losses (every group counts once) under group-balanced
batches, the constrained methods' default. So by default ``LossConstraint`` holds each group's loss to the
mean of the group losses, not to the population's loss of the paper's Eq. 8, and ``AccuracyGapConstraint``
holds each group's drop to the mean of the group drops, not to Balancing Act's overall drop; with
shuffled batches (``balanced=False``) both are against the population's figure, as the papers write
them. A probe draws its batches the same way. During the first ``warmup`` epochs the multipliers
stay at zero (plain fine-tuning recovers most of the accuracy first; constraints measured on a model
that has just been pruned mostly reflect its collapse). [fairprune]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..evaluate import loss_fn
from ..finetune import Objective

__all__ = ["Multipliers", "LossConstraint", "AccuracyGapConstraint", "Probe", "group_means"]


def group_means(values: torch.Tensor, group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-group mean (G,), present (G,) bool) of per-sample ``values`` (B,) with codes ``group`` (B,).

    Absent groups get 0 (and present=False); differentiable in ``values``.
    """
    sums = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, group, values)
    counts = torch.bincount(group, minlength=n_groups).to(values.dtype)
    present = counts > 0
    return sums / counts.clamp(min=1), present


class Multipliers:
    """One Lagrange multiplier λ_a >= 0 per group, updated by projected dual ascent.

    ``update(c, present)``: λ_a <- max(0, λ_a + step · c_a) for the groups present; others unchanged.
    ``trajectory``: the values recorded by :meth:`record` (once per epoch), as {group: λ_a}.
    """

    def __init__(self, names: Sequence[str], *, step: float):
        if step < 0:
            raise ValueError(f"the multipliers' step size must be >= 0; got {step!r}")
        self.names = list(names)
        self.step = float(step)
        self.value = torch.zeros(len(self.names), dtype=torch.float64)
        self.trajectory: list[dict[str, float]] = []

    def update(self, c: torch.Tensor, present: torch.Tensor) -> None:
        c = c.detach().to("cpu", torch.float64)
        present = present.detach().cpu()
        self.value[present] = (self.value[present] + self.step * c[present]).clamp(min=0.0)

    def record(self) -> None:
        self.trajectory.append({g: float(v) for g, v in zip(self.names, self.value.tolist())})

    def as_dict(self) -> dict[str, float]:
        return {g: float(v) for g, v in zip(self.names, self.value.tolist())}


class Probe:
    """Batches of held-back rows, run through the current model without gradients: group-balanced
    (every group equally likely) when ``balanced``, else uniform over the rows (the rows' group mix), as
    the primal step's batches are drawn, so both steps measure the constraint against the same J.

    ``probe()`` -> (logits (B, K) float32, y (B,), group codes (B,)), on ``device``. Seeded.
    """

    def __init__(self, model, rows, codes: np.ndarray, *, batch_size: int, seed: int, device, balanced: bool = True):
        from ..evaluate import model_outputs

        self._forward = lambda x: model_outputs(model, x)
        self.rows, self.batch_size, self.device = rows, batch_size, torch.device(device)
        counts = np.bincount(codes)
        self.codes = torch.as_tensor(codes)
        self.weights = torch.as_tensor(1.0 / counts[codes] if balanced else np.ones(len(codes)), dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self):
        idx = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=self.gen).sort().values
        with torch.no_grad():
            x = self.rows.to_float(self.rows.x[idx].to(self.device))
            logits = self._forward(x).float()
        return logits, self.rows.y[idx].to(self.device), self.codes[idx].to(self.device)


class _Constrained(Objective):
    """Shared bookkeeping: warm-up, multipliers, their per-epoch record, where the dual step measures."""

    def __init__(self, names: Sequence[str], *, alpha: float, dual_lr: float, warmup: int, probe: Probe | None = None):
        self.probe = probe
        self.names = list(names)
        self.alpha = float(alpha)
        self.warmup = int(warmup)
        self.multipliers = Multipliers(names, step=dual_lr)
        self._epochs_started = 0
        self._active = False

    def start_epoch(self, epoch: int) -> None:
        if self._epochs_started > 0:
            self.multipliers.record()   # the values at the end of the previous epoch
        self._active = self._epochs_started >= self.warmup
        self._epochs_started += 1

    def finish(self) -> list[dict[str, float]]:
        """Record the final values; return the per-epoch trajectory."""
        if self._epochs_started > len(self.multipliers.trajectory):
            self.multipliers.record()
        return self.multipliers.trajectory

    def _dual_batch(self, logits, y, group):
        """The batch the dual step measures: a probe batch of held-back rows, else the training batch."""
        if self.probe is None:
            return logits.detach(), y, group
        return self.probe()

    def _lagrangian(self, j: torch.Tensor, primal_c: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        if not self._active:
            return j
        lam = self.multipliers.value.to(device=j.device, dtype=j.dtype)
        return j + (lam * primal_c * present).sum()


class LossConstraint(_Constrained):
    """Eq. 8 with tolerance α: L = J + Σ_a λ_a (|J_a − J| − α); dual step on the same quantity."""

    def __call__(self, logits, y, group):
        per = loss_fn(logits, y, reduction="none")
        j = per.mean()
        j_a, present = group_means(per, group, len(self.names))
        c = (j_a - j).abs() - self.alpha
        out = self._lagrangian(j, c, present)
        if self._active:
            if self.probe is not None:
                with torch.no_grad():
                    lg, yy, gg = self.probe()
                    per_d = loss_fn(lg, yy, reduction="none")
                    jd_a, present = group_means(per_d, gg, len(self.names))
                    c = (jd_a - per_d.mean()).abs() - self.alpha
            self.multipliers.update(c, present)
        return out


class AccuracyGapConstraint(_Constrained):
    """Balancing Act: one-sided excess accuracy gap ≤ ε; CE surrogate in the primal, true rates in the dual.

    ``dense_accuracy``: (G,) acc_dense(a) of the dense model on the rows the dual step measures (the
    training rows, or the held-back rows with a probe), in ``names`` order.
    The reference drop is the batch's Σ_a (n_a / B) · drop_a, so it follows the batch's group mix: the
    overall (population) drop under shuffled batches, the unweighted mean of the group drops under
    group-balanced ones.
    """

    def __init__(self, names, *, alpha, dual_lr, warmup, dense_accuracy: np.ndarray, probe: Probe | None = None):
        super().__init__(names, alpha=alpha, dual_lr=dual_lr, warmup=warmup, probe=probe)
        self.dense_accuracy = torch.as_tensor(np.asarray(dense_accuracy, dtype=np.float64))

    def __call__(self, logits, y, group):
        per = loss_fn(logits, y, reduction="none")
        j = per.mean()
        j_a, present = group_means(per, group, len(self.names))
        out = self._lagrangian(j, j_a - j, present)
        if self._active:
            with torch.no_grad():
                logits, y, group = self._dual_batch(logits, y, group)
                pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
                acc_a, present = group_means((pred == y).double(), group, len(self.names))
                share = torch.bincount(group, minlength=len(self.names)).double() / len(group)
                drop_a = self.dense_accuracy.to(acc_a.device) - acc_a
                drop = (share * drop_a).sum()
                self.multipliers.update(drop_a - drop - self.alpha, present)
        return out
