"""The group Hessian H_a = ∇²_θ J(θ; D_a) of Theorem 1, through Hessian-vector products only.

Nothing here ever forms H_a (P x P for P parameters). :class:`HessianOperator` maps a vector v (a tuple
of tensors shaped like the trainable parameters) to H_a v, three ways:

- ``double_backward``: g = ∇J with ``create_graph=True``, then ∇(g·v) (PyHessian's way, the reference).
  When the rows fit in one chunk the first-order graph is built once and kept, so every product after
  the first costs only the second backward pass.
- ``forward_over_reverse``: ``torch.func.jvp`` of ``torch.func.grad`` of the loss as a function of the
  parameters (``functional_call``): the tangent of the gradient along v is H v.
- ``reverse_over_forward``: ``torch.func.grad`` of the directional derivative v·∇J computed by
  ``torch.func.jvp``: ∇(v·∇J) = H v. Same result; on CPU it beats forward-over-reverse (bench/hessian.py:
  PyTorch's forward-mode formula for a convolution's backward runs several full convolutions).

``"auto"`` [fairprune] picks by a fixed rule, so the same run gives the same numbers: double backward
with the kept graph when the rows fit one chunk (the cheapest product in bench/hessian.py on CPU:
1.8x a forward+backward on the MNIST demo's CNN, 2.7x on ResNet-18), otherwise reverse-over-forward.
torch.func refuses some modules (TorchScript; graphs it cannot functionalise): "auto" then uses double
backward and records why; a method asked for by name is never swapped. The operator says what it used
(:attr:`HessianOperator.method`, :attr:`HessianOperator.fallback`).

On a pruned model the Hessian is restricted to the unpruned coordinates: with P the 0/1 diagonal
projection onto kept entries, the operator is v -> P H P v, so the probes never move a pruned weight
and λ_max, Tr are those of the restricted Hessian (pruned weights are fixed at zero).

Estimators [fairprune]:

- :func:`max_eigenvalue`: power iteration on H v (starting from a seeded Gaussian vector or a given
  one), stopped when the Rayleigh quotient changes by less than ``tol`` relative. Its standard error
  combines, in quadrature, (i) the sampling error of the final Rayleigh quotient vᵀH_a v, which is a
  mean over rows, estimated from ``se_parts`` disjoint row-parts of the group's rows (sd / √parts), and
  (ii) the change over the last iteration (the convergence error). Power iteration finds the
  eigenvalue of largest magnitude; when that is negative, a second power iteration on H − λ I finds
  the largest (algebraic) eigenvalue, which is what Theorem 1 bounds with. ``converged`` says whether the
  tolerance was met within ``iterations`` (the diagnostics report it as ``hessian_max_eig_converged``).
  On a row subsample, λ_max is biased upward: the largest eigenvalue of H_a + noise exceeds λ_max(H_a) on
  average (Weyl / Jensen: λ_max is convex), the more so the fewer rows; the standard error does not include it.
- :func:`trace`: Hutchinson's estimator Tr(H) = E[zᵀH z] with Rademacher probes z (seeded); the
  standard error is the sample standard deviation over probes / √probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...core.errors import Cancelled
from ..evaluate import loss_fn, module_outputs

__all__ = ["HVP_METHODS", "HessianOperator", "EigenEstimate", "TraceEstimate", "max_eigenvalue", "trace",
           "hvp_double_backward", "hvp_forward_over_reverse", "hvp_reverse_over_forward"]

HVP_METHODS = ("auto", "double_backward", "forward_over_reverse", "reverse_over_forward")
UNKNOWN_METHOD = "hvp method must be one of {known}; received {found!r}"
NO_PARAMETERS = "the model has no trainable parameters (requires_grad=True), so it has no Hessian to estimate"
NO_ROWS = "the Hessian needs at least one row; received x with shape {shape}"

Vector = tuple[torch.Tensor, ...]


# ---- vector algebra on tuples of tensors ----------------------------------------------------------
def _dot(a: Vector, b: Vector) -> float:
    return float(sum((u.double() * w.double()).sum() for u, w in zip(a, b)))


def _norm(a: Vector) -> float:
    return math.sqrt(_dot(a, a))


def _scale(a: Vector, s: float) -> Vector:
    return tuple(u * s for u in a)


def _axpy(alpha: float, x: Vector, y: Vector) -> Vector:
    """alpha * x + y."""
    return tuple(alpha * u + w for u, w in zip(x, y))


# ---- one Hessian-vector product, the two ways -------------------------------------------------------
def _trainable(module: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def hvp_double_backward(module: nn.Module, x: torch.Tensor, y: torch.Tensor, v: Vector, *,
                        fixed_batch_size: int | None = None) -> Vector:
    """H v by double backward, H the Hessian of the mean loss over (x (B, ...), y (B,)); the reference."""
    _, params = _trainable(module)
    loss = loss_fn(module_outputs(module, x, fixed_batch_size), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gv = sum((g * u).sum() for g, u in zip(grads, v))
    return tuple(h.detach() for h in torch.autograd.grad(gv, params, allow_unused=True, materialize_grads=True))


def _functional_loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor, fixed_batch_size: int | None):
    """(names, primals, loss(params dict) -> mean loss) for torch.func; frozen parameters and buffers fixed."""
    from torch.func import functional_call

    names, params = _trainable(module)
    frozen = {n: p.detach() for n, p in module.named_parameters() if not p.requires_grad}
    frozen.update(dict(module.named_buffers()))

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        def call(inp):
            return functional_call(module, (p, frozen), (inp,), strict=False)

        return loss_fn(module_outputs(_Call(call), x, fixed_batch_size), y)

    return names, {n: p.detach() for n, p in zip(names, params)}, loss


def hvp_forward_over_reverse(module: nn.Module, x: torch.Tensor, y: torch.Tensor, v: Vector, *,
                             fixed_batch_size: int | None = None) -> Vector:
    """H v as the forward-mode derivative (jvp) of the reverse-mode gradient, with torch.func."""
    from torch.func import grad, jvp

    names, primals, loss = _functional_loss(module, x, y, fixed_batch_size)
    _, hv = jvp(grad(loss), (primals,), (dict(zip(names, v)),))
    return tuple(hv[n].detach() for n in names)


def hvp_reverse_over_forward(module: nn.Module, x: torch.Tensor, y: torch.Tensor, v: Vector, *,
                             fixed_batch_size: int | None = None) -> Vector:
    """H v as the reverse-mode gradient of the directional derivative v·∇J (a jvp), with torch.func."""
    from torch.func import grad, jvp

    names, primals, loss = _functional_loss(module, x, y, fixed_batch_size)
    tangents = dict(zip(names, v))
    hv = grad(lambda p: jvp(loss, (p,), (tangents,))[1])(primals)
    return tuple(hv[n].detach() for n in names)


_FUNCTIONAL = {"forward_over_reverse": hvp_forward_over_reverse, "reverse_over_forward": hvp_reverse_over_forward}


class _Call:
    """Lets evaluate.module_outputs (padding, output checks) call a plain function as if it were a module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self._fn = fn

    def __call__(self, x):
        return self._fn(x)


# ---- the operator -----------------------------------------------------------------------------------
class HessianOperator:
    """v -> H_a v for H_a = ∇²_θ J(θ; D_a), J the mean loss over the rows (x, y), at the module's weights.

    Args:
        module: the model in eval form (its current weights are θ; on a pruned model, θ̄).
        x: (B, ...) model-ready float input; y: (B,) int64 labels. B rows of group a (or a sample of it).
        masks: parameter name -> bool keep-mask; pruned coordinates are projected out (P H P).
        method: one of :data:`HVP_METHODS`.
        chunk_size: rows per forward pass; the mean loss over B rows is the row-weighted mean of the
            chunks' mean losses, so H v is the weighted sum of the chunks' products.
        fixed_batch_size: a ``.pt2`` program's static batch size (chunks are padded to it).
        cache: reuse the first-order graph across double-backward products when B fits one chunk.
    """

    def __init__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 masks: Mapping[str, torch.Tensor] | None = None, method: str = "auto", chunk_size: int = 256,
                 fixed_batch_size: int | None = None, cache: bool = True):
        if method not in HVP_METHODS:
            raise ValueError(UNKNOWN_METHOD.format(known=", ".join(HVP_METHODS), found=method))
        if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(NO_ROWS.format(shape=tuple(x.shape)))
        self.module = module
        self.names, self.params = _trainable(module)
        if not self.params:
            raise ValueError(NO_PARAMETERS)
        self.x, self.y = x, y
        self.fixed_batch_size = fixed_batch_size
        if fixed_batch_size:
            chunk_size = fixed_batch_size
        self.chunk_size = max(1, int(chunk_size))
        masks = dict(masks or {})
        unknown = sorted(set(masks) - set(dict(module.named_parameters())))
        if unknown:
            raise ValueError(f"masks name parameters the model does not have: {unknown[:5]}")
        self._masks = tuple(
            masks[n].to(device=p.device, dtype=p.dtype) if n in masks else None for n, p in zip(self.names, self.params)
        )
        self.requested = method
        if method == "auto":
            method = "double_backward" if cache and self.n_rows <= self.chunk_size else "reverse_over_forward"
        self.method = method
        self.fallback: str | None = None    # why "auto" could not use torch.func, when it could not
        self.cache = cache
        self._graph: Vector | None = None
        self.products = 0                   # Hessian-vector products computed (cost accounting)

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    # -- vectors in the (restricted) parameter space --
    def project(self, v: Vector) -> Vector:
        """P v: zero the pruned coordinates."""
        return tuple(u if m is None else u * m for u, m in zip(v, self._masks))

    def randn(self, generator: torch.Generator) -> Vector:
        return self.project(tuple(torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
                                  for p in self.params))

    def rademacher(self, generator: torch.Generator) -> Vector:
        return self.project(tuple(
            (torch.randint(0, 2, p.shape, generator=generator).to(p.dtype).mul_(2).sub_(1)).to(p.device)
            for p in self.params))

    @property
    def dimension(self) -> int:
        """Number of coordinates the Hessian is restricted to (unpruned trainable entries)."""
        return int(sum(p.numel() if m is None else int(m.sum()) for p, m in zip(self.params, self._masks)))

    # -- products --
    def matvec(self, v: Vector, rows: slice | None = None) -> Vector:
        """P H P v over all rows (or ``rows``, a slice of them: the Hessian of those rows' mean loss)."""
        v = self.project(v)
        x, y = (self.x, self.y) if rows is None else (self.x[rows], self.y[rows])
        n = x.shape[0]
        out: Vector | None = None
        for start in range(0, n, self.chunk_size):
            xs, ys = x[start:start + self.chunk_size], y[start:start + self.chunk_size]
            hv = self._chunk(xs, ys, v, whole=(rows is None and n <= self.chunk_size))
            w = xs.shape[0] / n
            out = _scale(hv, w) if out is None else _axpy(w, hv, out)
        self.products += 1
        return self.project(out)

    def _chunk(self, x, y, v, *, whole: bool) -> Vector:
        if self.method in _FUNCTIONAL:
            try:
                return _FUNCTIONAL[self.method](self.module, x, y, v, fixed_batch_size=self.fixed_batch_size)
            except Exception as err:  # noqa: BLE001 - torch.func refuses some modules; recorded, then the reference
                if self.requested != "auto":
                    raise
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                self.fallback = f"{self.method.replace('_', '-')} failed ({type(err).__name__}: {first[:200]})"
                self.method = "double_backward"
        if whole and self.cache:
            if self._graph is None:
                loss = loss_fn(module_outputs(self.module, x, self.fixed_batch_size), y)
                self._graph = torch.autograd.grad(loss, self.params, create_graph=True)
            gv = sum((g * u).sum() for g, u in zip(self._graph, v))
            hv = torch.autograd.grad(gv, self.params, retain_graph=True, allow_unused=True, materialize_grads=True)
            return tuple(h.detach() for h in hv)
        return hvp_double_backward(self.module, x, y, v, fixed_batch_size=self.fixed_batch_size)

    def release(self) -> None:
        """Drop the cached first-order graph (frees its activations)."""
        self._graph = None

    def parts(self, n_parts: int) -> list[slice]:
        """Up to ``n_parts`` disjoint, near-equal row slices (for sampling standard errors)."""
        n = self.n_rows
        k = max(1, min(n_parts, n))
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(k) if bounds[i + 1] > bounds[i]]


# ---- estimators ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EigenEstimate:
    """λ_max(H_a) by power iteration: value, standard error, iterations run, converged, the eigenvector."""

    value: float
    se: float
    iterations: int
    converged: bool
    vector: Vector | None = None


@dataclass(frozen=True)
class TraceEstimate:
    """Tr(H_a) by Hutchinson: value (mean of zᵀHz), standard error over probes, number of probes."""

    value: float
    se: float
    probes: int
    samples: tuple[float, ...] = ()


def _check_cancel(cancel):
    if cancel is not None and cancel():
        raise Cancelled("cancelled")


def _power(op: HessianOperator, v: Vector, *, shift: float, iterations: int, tol: float, cancel) -> tuple:
    """Power iteration on (H − shift I); returns (rayleigh of H − shift I, change at the end, iters, converged, v)."""
    v = _scale(v, 1.0 / _norm(v))
    lam_prev = None
    lam = 0.0
    change = float("inf")
    for it in range(1, iterations + 1):
        _check_cancel(cancel)
        hv = op.matvec(v)
        if shift:
            hv = _axpy(-shift, v, hv)
        lam = _dot(v, hv)
        norm = _norm(hv)
        if norm == 0.0:   # v lies in H's null space: every eigenvalue it can see is 0
            return 0.0, 0.0, it, True, v
        v = _scale(hv, 1.0 / norm)
        if lam_prev is not None:
            change = abs(lam - lam_prev)
            if change <= tol * max(abs(lam), 1e-12):
                return lam, change, it, True, v
        lam_prev = lam
    return lam, change, iterations, False, v


def max_eigenvalue(op: HessianOperator, *, iterations: int = 20, tol: float = 1e-3, seed: int = 0,
                   init: Vector | None = None, se_parts: int = 4,
                   cancel: Callable[[], bool] | None = None) -> EigenEstimate:
    """λ_max(H_a) by power iteration on Hessian-vector products (the λ(H_a) of Theorem 1).

    ``init`` warm-starts from a vector (e.g. the dense model's eigenvector when estimating a pruned
    one); otherwise a seeded Gaussian vector. ``iterations`` caps the products; the standard error is
    described in the module docstring (``se_parts`` row-parts; 1 or fewer: convergence error only).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1; received {iterations}")
    g = torch.Generator().manual_seed(seed)
    v0 = op.project(init) if init is not None else op.randn(g)
    if _norm(v0) == 0.0:
        v0 = op.randn(g)
    if _norm(v0) == 0.0:   # every coordinate pruned
        return EigenEstimate(0.0, 0.0, 0, True, v0)
    lam, change, its, conv, v = _power(op, v0, shift=0.0, iterations=iterations, tol=tol, cancel=cancel)
    if lam < 0:
        # The dominant eigenvalue is negative; shift so the largest algebraic one dominates.
        mu, change, its2, conv, v = _power(op, op.randn(g), shift=lam, iterations=iterations, tol=tol, cancel=cancel)
        lam, its = mu + lam, its + its2
    se = 0.0 if math.isinf(change) else change
    if se_parts > 1 and op.n_rows > 1:
        _check_cancel(cancel)
        parts = op.parts(se_parts)
        if len(parts) > 1:
            quotients = [_dot(v, op.matvec(v, rows=s)) for s in parts]
            mean = sum(quotients) / len(quotients)
            sd = math.sqrt(sum((q - mean) ** 2 for q in quotients) / (len(quotients) - 1))
            se = math.sqrt(se ** 2 + (sd / math.sqrt(len(quotients))) ** 2)
    return EigenEstimate(float(lam), float(se), its, conv, v)


def trace(op: HessianOperator, *, probes: int = 10, seed: int = 0,
          cancel: Callable[[], bool] | None = None) -> TraceEstimate:
    """Tr(H_a) by Hutchinson's estimator with ``probes`` Rademacher vectors (seeded); SE over probes."""
    if probes < 1:
        raise ValueError(f"probes must be >= 1; received {probes}")
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(probes):
        _check_cancel(cancel)
        z = op.rademacher(g)
        samples.append(_dot(z, op.matvec(z)))
    mean = sum(samples) / probes
    se = math.sqrt(sum((s - mean) ** 2 for s in samples) / (probes - 1) / probes) if probes > 1 else float("nan")
    return TraceEstimate(float(mean), float(se), probes, tuple(samples))


def flatten(v: Sequence[torch.Tensor]) -> torch.Tensor:
    """One long vector of a tuple of tensors (tests, small models)."""
    return torch.cat([u.reshape(-1) for u in v])
