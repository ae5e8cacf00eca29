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
- ``finite_difference`` [fairprune]: first-order gradients only, so it works for every model that has a
  gradient (torch has no double backward for hardsigmoid, MobileNetV3's SE gate, nor for some attention
  kernels on CPU). The central difference D(ε) = (∇J(θ+εv) − ∇J(θ−εv)) / 2ε has error ε²/6 ∂⁴J[v,v,v,·] + O(ε⁴)
  plus rounding of order δ‖∇J‖/ε (δ the parameters' float precision). Each product computes D(ε) and D(ε/2)
  (four gradients, accumulated in float64) and returns D(ε/2); its estimated error is ‖D(ε) − D(ε/2)‖, three
  times the truncation error of D(ε/2) (Richardson) and of the order of its rounding error, so a conservative
  estimate of both. ε is scaled so that the step is a fixed fraction of the weights: ‖εv‖ = c·max(‖θ‖, 1) over
  the unpruned coordinates, c = δ^(1/3) (4.9e-3 in float32, 6.1e-6 in float64), the step that balances the two
  errors. The parameters are moved in place and restored exactly from a copy afterwards.

``"auto"`` [fairprune] picks by a fixed rule, so the same run gives the same numbers: double backward
with the kept graph when the rows fit one chunk (the cheapest product in bench/hessian.py on CPU:
1.8x a forward+backward on the MNIST demo's CNN, 2.7x on ResNet-18), otherwise reverse-over-forward.
torch.func refuses some modules (TorchScript; graphs it cannot functionalise): "auto" then uses double
backward and records why; when an exact product raises (a double backward torch does not implement),
"auto" uses finite differences and records why. A method asked for by name is never swapped. The operator
says what it used (:attr:`HessianOperator.method`, :attr:`HessianOperator.methods_used`,
:attr:`HessianOperator.fallback`) and, for finite differences, the largest estimated relative error of its
products (:attr:`HessianOperator.max_rel_error`).

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

With finite-difference products both estimates also carry ``hvp_error``: the estimated error of the value
from the products' own error (|vᵀ(D(ε) − D(ε/2))v| for λ_max's final Rayleigh quotient; the mean over
probes of |zᵀ(D(ε) − D(ε/2))z| for the trace); it is not part of the standard error, which stays the
sampling (and convergence) error.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...core.errors import Cancelled
from ..evaluate import loss_fn, module_outputs

__all__ = ["HVP_METHODS", "HessianOperator", "EigenEstimate", "TraceEstimate", "max_eigenvalue", "trace",
           "hvp_double_backward", "hvp_forward_over_reverse", "hvp_reverse_over_forward", "hvp_finite_difference"]

HVP_METHODS = ("auto", "double_backward", "forward_over_reverse", "reverse_over_forward", "finite_difference")
#: the exact (automatic differentiation) products; "finite_difference" is the approximate one
EXACT_METHODS = ("double_backward", "forward_over_reverse", "reverse_over_forward")
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


def _functional_loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor, fixed_batch_size: int | None,
                     reduction: str = "mean"):
    """(names, primals, loss(params dict) -> mean loss (or per-row losses: ``reduction="none"``)) for torch.func;
    frozen parameters and buffers fixed."""
    from torch.func import functional_call

    names, params = _trainable(module)
    frozen = {n: p.detach() for n, p in module.named_parameters() if not p.requires_grad}
    frozen.update(dict(module.named_buffers()))

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        def call(*inputs):     # one tensor, or the tensors of an Inputs (several positional inputs)
            return functional_call(module, (p, frozen), inputs, strict=False)

        return loss_fn(module_outputs(_Call(call), x, fixed_batch_size), y, reduction=reduction)

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


def quadratic_forms_forward_over_forward(module: nn.Module, x: torch.Tensor, y: torch.Tensor, v: Vector, *,
                                          fixed_batch_size: int | None = None) -> torch.Tensor:
    """(B,) float64: vᵀ∇²ℓ_i v for each row i, the second derivative of the row's loss along v (a jvp of a jvp).

    Their mean is vᵀH v for H the Hessian of the mean loss: the scalar Hutchinson's probes and λ_max's row-part
    quotients need, in forward passes only (no backward, and no double backward of grouped convolutions)."""
    from torch.func import jvp

    names, primals, loss = _functional_loss(module, x, y, fixed_batch_size, reduction="none")
    tangents = dict(zip(names, v))
    _, second = jvp(lambda p: jvp(loss, (p,), (tangents,))[1], (primals,), (tangents,))
    return second.detach().double()


_FUNCTIONAL = {"forward_over_reverse": hvp_forward_over_reverse, "reverse_over_forward": hvp_reverse_over_forward}


class _Call:
    """Lets evaluate.module_outputs (padding, output checks) call a plain function as if it were a module."""

    def __init__(self, fn: Callable[..., torch.Tensor]):
        self._fn = fn

    def __call__(self, *inputs):
        return self._fn(*inputs)


# ---- the finite-difference product -------------------------------------------------------------------
def _float64_is_cheap(device: torch.device) -> bool:
    """CPU, or a CUDA device with full-rate float64 (compute capability 6.0, 7.0, 8.0, 9.0: P100, V100, A100, H100)."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return minor == 0 and major >= 6
    return False


def _to_float64(x):
    """Floating inputs in float64 (integer ids unchanged); a tensor or an Inputs."""
    def conv(t):
        return t.double() if t.is_floating_point() else t
    return x.map(conv) if hasattr(x, "map") else conv(x)


def fd_relative_step(dtype: torch.dtype) -> float:
    """c = δ^(1/3) for the parameters' float type: the step (relative to ‖θ‖) that balances truncation and rounding."""
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


def _mean_gradient(module: nn.Module, params: Sequence[nn.Parameter], x, y, *, chunk_size: int,
                   fixed_batch_size: int | None) -> Vector:
    """∇_θ of the mean loss over all rows, float64, the chunks' gradients weighted by their rows."""
    n = len(x)
    out = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in params]
    for start in range(0, n, chunk_size):
        xs, ys = x[start:start + chunk_size], y[start:start + chunk_size]
        loss = loss_fn(module_outputs(module, xs, fixed_batch_size), ys)
        grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
        w = len(ys) / n
        for a, g in zip(out, grads):
            a.add_(g.detach().double(), alpha=w)
    return tuple(out)


def _fd_products(module: nn.Module, params: Sequence[nn.Parameter], x, y, v: Vector, eps: float, *,
                 chunk_size: int, fixed_batch_size: int | None) -> tuple[Vector, Vector]:
    """(D(ε/2), D(ε)), float64: central differences of the mean-loss gradient along v with steps ε/2 and ε.

    The parameters are moved in place (θ ± s·v rounded to their dtype) and copied back from a saved copy."""
    saved = [p.detach().clone() for p in params]
    grads = {}
    try:
        for s in (eps, -eps, eps / 2, -eps / 2):
            with torch.no_grad():
                for p, p0, u in zip(params, saved, v):
                    p.copy_((p0.double() + s * u.double()).to(p.dtype))
            grads[s] = _mean_gradient(module, params, x, y, chunk_size=chunk_size, fixed_batch_size=fixed_batch_size)
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, saved):
                p.copy_(p0)
    coarse = tuple((a - b) / (2 * eps) for a, b in zip(grads[eps], grads[-eps]))
    fine = tuple((a - b) / eps for a, b in zip(grads[eps / 2], grads[-eps / 2]))
    return fine, coarse


def hvp_finite_difference(module: nn.Module, x: torch.Tensor, y: torch.Tensor, v: Vector, *,
                          eps: float | None = None, fixed_batch_size: int | None = None,
                          chunk_size: int = 256) -> tuple[Vector, float]:
    """(H v, its estimated relative error) by central finite differences of the gradient (module docstring).

    ``eps``: the step along v (default: ‖εv‖ = δ^(1/3)·max(‖θ‖, 1)). H v is D(ε/2), the error ‖D(ε) − D(ε/2)‖ / ‖D(ε/2)‖.
    """
    _, params = _trainable(module)
    if eps is None:
        nv = _norm(v)
        if nv == 0.0:
            return tuple(torch.zeros_like(p) for p in params), 0.0
        eps = fd_relative_step(params[0].dtype) * max(_norm(tuple(p.detach() for p in params)), 1.0) / nv
    fine, coarse = _fd_products(module, params, x, y, v, eps, chunk_size=chunk_size,
                                fixed_batch_size=fixed_batch_size)
    nf = _norm(fine)
    err = _norm(_axpy(-1.0, coarse, fine)) / nf if nf > 0 else 0.0
    return tuple(h.to(p.dtype) for h, p in zip(fine, params)), err


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
        quadratic: under "auto", compute λ_max's row-part quotients vᵀH_k v (its standard error) from one
            forward-over-forward pass over all rows (:meth:`quadratic_rows`) instead of one Hessian-vector product
            per part: the same figures, in forward passes only (on CPU, 32 rows of 3x64x64: 2.9 s instead of 11.4 s
            on EfficientNet-B0, 1.7 s instead of 4.1 s on RegNetY-400MF). Hutchinson's probes stay products: there
            one forward-over-forward pass costs about what a product with the kept graph does.
    """

    def __init__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 masks: Mapping[str, torch.Tensor] | None = None, method: str = "auto", chunk_size: int = 256,
                 fixed_batch_size: int | None = None, cache: bool = True, quadratic: bool = True):
        if method not in HVP_METHODS:
            raise ValueError(UNKNOWN_METHOD.format(known=", ".join(HVP_METHODS), found=method))
        if len(x) == 0 or len(x) != len(y):
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
        self.fallback: str | None = None    # why "auto" could not use the method it picked first, when it could not
        self.cache = cache
        self._graph: Vector | None = None
        self.products = 0                   # Hessian-vector products computed (cost accounting)
        self.methods_used: set[str] = set()  # the methods the products were computed with
        self.max_rel_error: float | None = None   # finite differences: largest estimated relative error of a product
        self.last_diff: Vector | None = None      # finite differences: D(ε) − D(ε/2) of the last product (projected)
        self.eps: float | None = None             # finite differences: the step of the last product
        self._theta_norm: float | None = None
        self._fd: tuple | None = None
        # λ_max's row-part quotients vᵀH_k v by forward-over-forward under "auto" (:meth:`quadratic_rows`)
        self.quadratic = quadratic
        self.quadratic_passes = 0
        self.fd_dtype: str = str(self.params[0].dtype).removeprefix("torch.")   # finite differences' precision

    @property
    def n_rows(self) -> int:
        return int(len(self.x))

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
        out = None
        if self.method != "finite_difference":
            try:
                out = self._exact(x, y, v, whole=rows is None)
            except Cancelled:
                raise
            except Exception as err:  # noqa: BLE001 - no exact product for this module: "auto" goes on without one
                if self.requested != "auto":
                    raise
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                said = f"{self.method.replace('_', ' ')} failed ({type(err).__name__}: {first[:200]})"
                self.fallback = f"{self.fallback}; {said}" if self.fallback else said
                self.release()
                self.method = "finite_difference"
        if out is None:
            out = self._finite_difference(rows, y, v)
        else:
            self.last_diff = None
        self.methods_used.add(self.method)
        self.products += 1
        return self.project(out)

    def quadratic_rows(self, v: Vector) -> torch.Tensor | None:
        """(B,) float64 vᵀP H_i P v per row i (their mean over rows is vᵀ P H P v), by forward-over-forward; None
        where it is not used: only under "auto" with exact products, and not after it failed once (recorded in
        :attr:`fallback`)."""
        if not self.quadratic or self.requested != "auto" or self.method == "finite_difference":
            return None
        v = self.project(v)
        try:
            parts = [quadratic_forms_forward_over_forward(self.module, self.x[i:i + self.chunk_size],
                                                         self.y[i:i + self.chunk_size], v,
                                                         fixed_batch_size=self.fixed_batch_size)
                     for i in range(0, self.n_rows, self.chunk_size)]
        except Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - torch.func or forward mode refuses the module: products instead
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            said = f"forward-over-forward failed ({type(err).__name__}: {first[:200]})"
            self.fallback = f"{self.fallback}; {said}" if self.fallback else said
            self.quadratic = False
            return None
        self.methods_used.add("forward_over_forward")
        self.quadratic_passes += 1
        self.last_diff = None
        return torch.cat(parts)

    def _exact(self, x, y, v, *, whole: bool) -> Vector:
        n = len(x)
        out: Vector | None = None
        for start in range(0, n, self.chunk_size):
            xs, ys = x[start:start + self.chunk_size], y[start:start + self.chunk_size]
            hv = self._chunk(xs, ys, v, whole=(whole and n <= self.chunk_size))
            w = len(ys) / n
            out = _scale(hv, w) if out is None else _axpy(w, hv, out)
        return out

    def _fd_target(self) -> tuple[nn.Module, list[nn.Parameter], object]:
        """(module, its trainable parameters, all rows' x) the finite differences run on: a float64 copy of the
        module where float64 is cheap (CPU; CUDA devices of compute capability 6.0, 7.0, 8.0, 9.0: full-rate
        float64), else the module itself at its own precision."""
        if self._fd is None:
            self._fd = (self.module, self.params, self.x)
            if _float64_is_cheap(self.device) and any(p.dtype != torch.float64 for p in self.params):
                try:
                    m64 = copy.deepcopy(self.module).double()
                    _, p64 = _trainable(m64)
                    if len(p64) == len(self.params):
                        self._fd = (m64, p64, _to_float64(self.x))
                        self.fd_dtype = "float64"
                except Exception:  # noqa: BLE001 - a module that cannot be copied or converted: its own precision
                    pass
        return self._fd

    def _finite_difference(self, rows: slice | None, y, v) -> Vector:
        nv = _norm(v)
        if nv == 0.0:
            self.last_diff = None
            return tuple(torch.zeros_like(p) for p in self.params)
        if self._theta_norm is None:
            self._theta_norm = _norm(self.project(tuple(p.detach() for p in self.params)))
        while True:
            module, params, x = self._fd_target()
            if rows is not None:
                x = x[rows]
            self.eps = fd_relative_step(params[0].dtype) * max(self._theta_norm, 1.0) / nv
            try:
                fine, coarse = _fd_products(module, params, x, y, v, self.eps, chunk_size=self.chunk_size,
                                            fixed_batch_size=self.fixed_batch_size)
                break
            except Cancelled:
                raise
            except Exception:  # noqa: BLE001 - the float64 copy does not run (a program with float32 casts)
                if module is self.module:
                    raise
                self._fd = (self.module, self.params, self.x)
                self.fd_dtype = str(self.params[0].dtype).removeprefix("torch.")
        fine, coarse = self.project(fine), self.project(coarse)
        self.last_diff = _axpy(-1.0, fine, coarse)
        nf = _norm(fine)
        rel = _norm(self.last_diff) / nf if nf > 0 else 0.0
        self.max_rel_error = rel if self.max_rel_error is None else max(self.max_rel_error, rel)
        return tuple(h.to(p.dtype) for h, p in zip(fine, self.params))

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
        """Drop the cached first-order graph (frees its activations) and the float64 copy finite differences use."""
        self._graph = None
        self._fd = None

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
    hvp_error: float | None = None      # finite differences: |vᵀ(D(ε) − D(ε/2))v| of the final quotient


@dataclass(frozen=True)
class TraceEstimate:
    """Tr(H_a) by Hutchinson: value (mean of zᵀHz), standard error over probes, number of probes."""

    value: float
    se: float
    probes: int
    samples: tuple[float, ...] = ()
    hvp_error: float | None = None      # finite differences: mean over probes of |zᵀ(D(ε) − D(ε/2))z|


def _check_cancel(cancel):
    if cancel is not None and cancel():
        raise Cancelled("cancelled")


def _fd_error(op: HessianOperator, v: Vector) -> float | None:
    """|vᵀ(D(ε) − D(ε/2))v| for the operator's last product at v (None for an exact product)."""
    diff = getattr(op, "last_diff", None)      # operators without it (tests' fixed matrices) are exact
    return None if diff is None else abs(_dot(v, diff))


def _power(op: HessianOperator, v: Vector, *, shift: float, iterations: int, tol: float, cancel) -> tuple:
    """Power iteration on (H − shift I); returns (rayleigh of H − shift I, change at the end, iters, converged, v,
    the finite-difference error of the last quotient or None)."""
    v = _scale(v, 1.0 / _norm(v))
    lam_prev = None
    lam = 0.0
    change = float("inf")
    err = None
    for it in range(1, iterations + 1):
        _check_cancel(cancel)
        hv = op.matvec(v)
        err = _fd_error(op, v)
        if shift:
            hv = _axpy(-shift, v, hv)
        lam = _dot(v, hv)
        norm = _norm(hv)
        if norm == 0.0:   # v lies in H's null space: every eigenvalue it can see is 0
            return 0.0, 0.0, it, True, v, err
        v = _scale(hv, 1.0 / norm)
        if lam_prev is not None:
            change = abs(lam - lam_prev)
            if change <= tol * max(abs(lam), 1e-12):
                return lam, change, it, True, v, err
        lam_prev = lam
    return lam, change, iterations, False, v, err


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
    lam, change, its, conv, v, err = _power(op, v0, shift=0.0, iterations=iterations, tol=tol, cancel=cancel)
    if lam < 0:
        # The dominant eigenvalue is negative; shift so the largest algebraic one dominates.
        mu, change, its2, conv, v, err = _power(op, op.randn(g), shift=lam, iterations=iterations, tol=tol,
                                                cancel=cancel)
        lam, its = mu + lam, its + its2
    se = 0.0 if math.isinf(change) else change
    if se_parts > 1 and op.n_rows > 1:
        _check_cancel(cancel)
        parts = op.parts(se_parts)
        if len(parts) > 1:
            per_row = op.quadratic_rows(v) if hasattr(op, "quadratic_rows") else None
            if per_row is not None:
                quotients = [float(per_row[s].mean()) for s in parts]
            else:
                quotients = [_dot(v, op.matvec(v, rows=s)) for s in parts]
            mean = sum(quotients) / len(quotients)
            sd = math.sqrt(sum((q - mean) ** 2 for q in quotients) / (len(quotients) - 1))
            se = math.sqrt(se ** 2 + (sd / math.sqrt(len(quotients))) ** 2)
    return EigenEstimate(float(lam), float(se), its, conv, v, err)


#: fewest probes before ``rel_se`` may stop Hutchinson early (a standard error from fewer is too unsteady to trust)
MIN_PROBES = 4


def _mean_se(samples: Sequence[float]) -> tuple[float, float]:
    k = len(samples)
    mean = sum(samples) / k
    se = math.sqrt(sum((s - mean) ** 2 for s in samples) / (k - 1) / k) if k > 1 else float("nan")
    return mean, se


def trace(op: HessianOperator, *, probes: int = 10, seed: int = 0, rel_se: float | None = None,
          cancel: Callable[[], bool] | None = None) -> TraceEstimate:
    """Tr(H_a) by Hutchinson's estimator with ``probes`` Rademacher vectors (seeded); SE over probes.

    ``rel_se`` (opt-in, [fairprune]): stop after :data:`MIN_PROBES` or more probes once the standard error is at
    most ``rel_se`` times |mean| (the estimate then says how many probes it used); None: always ``probes``."""
    if probes < 1:
        raise ValueError(f"probes must be >= 1; received {probes}")
    g = torch.Generator().manual_seed(seed)
    samples, errors = [], []
    for k in range(1, probes + 1):
        _check_cancel(cancel)
        z = op.rademacher(g)
        samples.append(_dot(z, op.matvec(z)))
        errors.append(_fd_error(op, z))
        if rel_se is not None and k >= MIN_PROBES and k < probes:
            mean, se = _mean_se(samples)
            if se <= rel_se * abs(mean):
                break
    mean, se = _mean_se(samples)
    n = len(samples)
    err = None if all(e is None for e in errors) else sum(e or 0.0 for e in errors) / n
    return TraceEstimate(float(mean), float(se), n, tuple(samples), err)


def flatten(v: Sequence[torch.Tensor]) -> torch.Tensor:
    """One long vector of a tuple of tensors (tests, small models)."""
    return torch.cat([u.reshape(-1) for u in v])
