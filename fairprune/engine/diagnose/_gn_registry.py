"""The registry of per-layer rules for per-sample gradient norms (after Opacus' grad samplers).

A *call* is one use of a layer in a forward pass: its parameters, the activation ``a`` they act on and,
after one batched backward of the summed per-sample losses, the gradient ``g`` of the loss with respect
to the call's output. Because the loss is a sum of per-sample losses and samples do not interact (eval
mode), row i of ``g`` is ∂ℓ_i/∂out_i, and each parameter's per-sample gradient is a small function of
(a_i, g_i): a :class:`Rule` computes per-sample squared norms from them.

``register_rule(nn.Linear, ...)`` maps a module type to an *extractor* that turns a module call into a
:class:`Call`; ``register_aten_rule(aten.linear.default, ...)`` does the same for an op in a
``torch.export`` graph; ``register_kind("linear")`` holds the math both share. An extractor returns
None where it does not cover a configuration; the engine then falls back for those parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

__all__ = ["Call", "Rule", "AtenCall", "register_rule", "register_aten_rule", "register_kind", "register_forward",
           "module_extractor", "module_forward", "ATEN_RULES", "KINDS", "first_output", "rowdot", "sumsq"]


@dataclass(eq=False)
class Call:
    """One use of a layer in the forward pass.

    kind: the math to use (a key of ``KINDS``); params: role ("weight", "bias") -> tensor the call used
    (a parameter, another tensor, or None); inp: the activation the parameters act on, (B, ...);
    out: the call's output (B, ...); opts: the layer's hyper-parameters; grad: ∂(Σ_i ℓ_i)/∂out, set after
    the backward pass. ``inp`` and ``grad`` always hold the samples on dim 0: a call whose samples sit on
    another dimension (``sample_dim``, e.g. 1 for a sequence-first (T, B, E) activation) is seen through a
    ``movedim`` view. ``rows``: role -> (start, stop) where the call used only those rows of the parameter
    (attention's packed in-projection split into q, k and v): its gradient is zero elsewhere.
    """

    kind: str
    params: dict[str, torch.Tensor | None]
    inp: torch.Tensor
    out: torch.Tensor
    opts: dict = field(default_factory=dict)
    grad: torch.Tensor | None = None
    node: object = None          # out.grad_fn when captured (before any in-place change of out)
    version: int = 0             # inp._version when captured: a later in-place change invalidates inp
    leaf: bool = False           # out was replaced by a detached leaf (inp carries no gradient)
    sample_dim: int = 0          # where the samples are in the call's own output (``grad`` is moved to dim 0)
    rows: dict = field(default_factory=dict)

    def add_grad(self, grad: torch.Tensor | None) -> None:
        """Accumulate ∂(Σ_i ℓ_i)/∂out (as the call's output is laid out), kept with the samples on dim 0."""
        if grad is None:
            return
        if self.sample_dim:
            grad = grad.movedim(self.sample_dim, 0)
        self.grad = grad if self.grad is None else self.grad + grad

    def rows_of(self, sl: slice) -> Call:
        """The same call restricted to the samples ``sl``."""
        return replace(self, inp=self.inp[sl], grad=self.grad[sl])


class Rule:
    """The math of one kind of call. Masks are float 0/1 tensors of the parameter's shape, or None."""

    def norm_sq(self, call: Call, roles: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """(B,) Σ over ``roles`` of ‖mask ⊙ ∇_role ℓ_i‖²."""
        raise NotImplementedError

    def grad_sample(self, call: Call, role: str) -> torch.Tensor:
        """(B, *param.shape) per-sample gradients of parameter ``role`` (used when a parameter is shared)."""
        raise NotImplementedError

    def elems_per_sample(self, call: Call, roles: dict[str, torch.Tensor | None]) -> int:
        """Largest intermediate per sample, in elements (the engine sizes row chunks from it)."""
        return call.inp[0].numel() + call.grad[0].numel()

    def sample_dim_ok(self, call: Call, dim: int) -> bool:
        """Whether the rule is right for ``call`` with its samples on ``dim`` of its input and output
        (moved to dim 0 before the rule runs): only where no dimension the rule mixes is the sample's."""
        return dim == 0


KINDS: dict[str, Rule] = {}
_MODULE_RULES: dict[type, Callable[[nn.Module, tuple, torch.Tensor], Call | None]] = {}
#: module type -> the methods its extractor relies on (a subclass overriding any of them is not covered)
_RELIES_ON: dict[type, tuple[str, ...]] = {}
#: methods every module rule relies on: the call itself and the forward computation
_ALWAYS = ("forward", "__call__", "_call_impl")
ATEN_RULES: dict[object, Callable[["AtenCall"], Call | None]] = {}


def register_kind(name: str):
    def deco(cls):
        KINDS[name] = cls()
        return cls
    return deco


def register_rule(*layer_types: type, relies_on: tuple[str, ...] = ()):
    """Register an extractor ``fn(module, args, output) -> Call | None`` for module types (exact, or
    subclasses that override neither ``forward`` nor any method named in ``relies_on``, e.g. a
    convolution's ``_conv_forward``)."""
    def deco(fn):
        for t in layer_types:
            _MODULE_RULES[t] = fn
            _RELIES_ON[t] = _ALWAYS + tuple(relies_on)
        return fn
    return deco


#: module type -> a forward that runs the layer with its parameters in calls a rule covers (``fn(module, record,
#: *args, **kwargs)``, ``record(call, key) -> tensor or None`` as ``Tape.record``), installed while capturing
_FORWARDS: dict[type, Callable] = {}


def register_forward(*layer_types: type):
    """Register a capturing forward for module types whose parameters are used inside one functional call
    no rule sees (``nn.MultiheadAttention``'s in-projection inside ``F.multi_head_attention_forward``):
    while capturing, the module runs this forward instead (it must compute what the module computes), and
    records each use of a parameter as a call of a covered kind."""
    def deco(fn):
        for t in layer_types:
            _FORWARDS[t] = fn
        return fn
    return deco


def module_forward(module: nn.Module):
    """The capturing forward for ``module``'s type, or None (a subclass overriding ``forward`` is not covered)."""
    cls = type(module)
    for t in cls.__mro__:
        fn = _FORWARDS.get(t)
        if fn is not None:
            if any(getattr(cls, name, None) is not getattr(t, name, None) for name in _ALWAYS):
                return None
            return fn
    return None


def register_aten_rule(*ops):
    """Register an extractor ``fn(AtenCall) -> Call | None`` for ops of a ``torch.export`` graph."""
    def deco(fn):
        for op in ops:
            ATEN_RULES[op] = fn
        return fn
    return deco


def module_extractor(module: nn.Module):
    """The extractor for ``module``'s type, or None. A subclass that overrides ``forward`` or another
    method the rule relies on (``_conv_forward``) computes something else, and a module with forward
    hooks of its own may have its output replaced after the layer ran: neither is covered (their
    parameters fall back to the exact per-sample loop)."""
    cls = type(module)
    for t in cls.__mro__:
        fn = _MODULE_RULES.get(t)
        if fn is not None:
            if any(getattr(cls, name, None) is not getattr(t, name, None) for name in _RELIES_ON[t]):
                return None
            if module._forward_hooks:
                return None
            return fn
    return None


@dataclass
class AtenCall:
    """An op call in an fx graph: the node, its evaluated args/kwargs, its output, a way to see
    through a transpose of a parameter (``addmm(b, a, t(W))``), and whether a value is a parameter whose
    gradient counts (``is_param``)."""

    node: torch.fx.Node
    args: tuple
    kwargs: dict
    out: object
    attr: Callable[[torch.fx.Node], torch.Tensor | None]
    is_param: Callable[[object], bool] = lambda t: False

    def arg(self, i: int, name: str, default=None):
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)


def first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out



def rowdot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B,) Σ u·v over all but the first dim of two (B, ...) tensors, as one batched dot product (no
    temporary: fewer passes over memory, and one parallel region instead of two)."""
    return torch.bmm(u.reshape(u.shape[0], 1, -1), v.reshape(v.shape[0], -1, 1)).reshape(-1)


def sumsq(t: torch.Tensor) -> torch.Tensor:
    """(B,) Σ of squares of each row of ``t`` (B, ...)."""
    return rowdot(t, t)
