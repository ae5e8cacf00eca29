"""Distance to the decision boundary: in output space (margin, uncertainty) and in input space.

Output space, per sample, from p = softmax(f_θ(x)) (for one logit z, p = (1 − σ(z), σ(z))):

- ``margin`` = p_y − max_{k≠y} p_k, in [−1, 1]: negative when misclassified, near 0 on the boundary
  (the same figure :func:`fairprune.engine.evaluate.per_sample` reports).
- ``uncertainty`` = Σ_k p_k (1 − p_k), in [0, 1 − 1/K]: fairprune's multi-class reading of Theorem 2's
  f(1 − f) [fairprune]; 0 for a one-hot prediction, largest when the classes tie. For one logit it is
  2σ(z)(1 − σ(z)), twice the paper's binary f(1 − f).

Input space [fairprune], optional because slower: the smallest L∞ perturbation ε that changes the
model's prediction, searched with ``captum.robust.MinParamPerturbation`` (binary search over ε)
around a one-step sign attack (``FGSM``, default) or ``PGD``. The attack ascends the logit margin
max_{k≠t} z_k − z_t of the currently predicted class t (its gradient does not vanish on confident
rows, unlike the cross-entropy's). The ε found along an attack's path is an upper bound on the true
distance; inputs are not clipped (fairprune does not know the input domain). A row the attack cannot
flip within ``max_eps`` is censored: it counts as ``max_eps`` in a mean (a lower bound there).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...core.errors import Cancelled
from ..evaluate import model_outputs, per_sample

__all__ = ["uncertainty", "output_stats", "boundary_distances", "BOUNDARY_ATTACKS"]

BOUNDARY_ATTACKS = ("fgsm", "pgd")


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.shape[1] == 1:
        p1 = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p1, p1], 1)
    return logits.softmax(1)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Σ_k p_k (1 − p_k) per row of logits (N, K); (N,) float."""
    p = _probabilities(logits)
    return (p * (1 - p)).sum(1)


def output_stats(model, data, *, batch_size: int = 256, device: torch.device | str = "cpu",
                 cancel: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
    """One inference pass: per-sample ``loss``, ``pred``, ``margin``, ``uncertainty`` (N,) arrays, row order."""
    device = torch.device(device)
    bs = model.fixed_batch_size or batch_size
    out: dict[str, list] = {"loss": [], "pred": [], "margin": [], "uncertainty": []}
    with torch.inference_mode():
        for xb, yb in data.batches(bs, device):
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            logits = model_outputs(model, xb)
            loss, pred, margin = per_sample(logits, yb)
            out["loss"].append(loss.double().cpu())
            out["pred"].append(pred.cpu())
            out["margin"].append(margin.double().cpu())
            out["uncertainty"].append(uncertainty(logits).double().cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


# ---- input space ------------------------------------------------------------------------------------
def _margin_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """max_{k≠t} z_k − z_t (two-logit form for one logit): rising means moving toward another class."""
    if logits.shape[1] == 1:
        z = logits[:, 0]
        return -z * (2 * target.to(z.dtype) - 1)
    z_t = logits.gather(1, target[:, None])[:, 0]
    other = logits.scatter(1, target[:, None], float("-inf")).amax(1)
    return other - z_t


def boundary_distances(model, x: torch.Tensor, *, max_eps: float = 1.0, steps: int = 256, attack: str = "fgsm",
                       pgd_steps: int = 10, cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Smallest L∞ ε flipping the prediction, per row of ``x`` (B, ...) model-ready input.

    Returns (distances (B,) float, censored (B,) bool): a censored row was not flipped within
    ``max_eps`` and gets ``max_eps``. The search resolution is ``max_eps / steps``.
    """
    from captum.robust import FGSM, PGD, MinParamPerturbation

    if attack not in BOUNDARY_ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(BOUNDARY_ATTACKS)}; received {attack!r}")
    if not max_eps > 0 or steps < 2:
        raise ValueError(f"expected max_eps > 0 and steps >= 2; received max_eps={max_eps!r}, steps={steps!r}")

    def forward(inp):
        return model_outputs(model, inp)

    def predicted(out: torch.Tensor) -> torch.Tensor:
        return (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)

    def still_same(out, target):
        return bool((predicted(out) == target).all())

    if attack == "fgsm":
        perturb, arg = FGSM(forward, loss_func=_margin_loss).perturb, "epsilon"
    else:
        pgd = PGD(forward, loss_func=_margin_loss)

        def perturb(inputs, radius, target):
            return pgd.perturb(inputs, radius=radius, step_size=radius / 4, step_num=pgd_steps, target=target)

        arg = "radius"
    search = MinParamPerturbation(forward, attack=perturb, arg_name=arg, arg_min=0.0, arg_max=float(max_eps),
                                  arg_step=float(max_eps) / steps, mode="binary", correct_fn=still_same)
    dist = np.full(len(x), float(max_eps))
    censored = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        xi = x[i:i + 1].detach()
        with torch.no_grad():
            target = predicted(forward(xi))
        _, eps = search.evaluate(xi, target=target, attack_kwargs={"target": target})
        if eps is not None:
            dist[i], censored[i] = float(eps), False
    return dist, censored
