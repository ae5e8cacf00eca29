"""Per-layer rules for per-sample gradient norms: linear, normalisation and embedding layers.

Each rule computes, per sample, the squared norm of its parameters' gradients from the captured
activation ``a`` and output gradient ``g``, without ever forming the batch's parameter gradient:

- linear, one row per sample: ‖∇W_i‖² = ‖a_i‖²·‖g_i‖², ‖∇b_i‖² = ‖g_i‖²; over positions t (B, T, in):
  the "ghost" form Σ_{s,t} (a_s·a_t)(g_s·g_t) or the materialised Σ_t g_t a_tᵀ, whichever is cheaper;
  a mask needs the materialised form, except with one row, where ‖M ⊙ g aᵀ‖² = (g²)ᵀ M (a²);
- BatchNorm (running statistics), LayerNorm, GroupNorm: γ gets Σ g·x̂, β gets Σ g over the positions;
- Embedding: ‖∇W_i‖² = Σ_{s,t: idx_s = idx_t} g_s·g_t.

Convolutions live in :mod:`._gn_conv`. Importing this module registers every rule.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _gn_conv  # noqa: F401  (registers the convolution rules)
from ._gn_registry import AtenCall, Call, Rule, first_output, register_aten_rule, register_kind, register_rule

__all__ = ["NOT_INDEPENDENT"]


# --- linear ------------------------------------------------------------------------------------------

def _cheaper_ghost(positions: int, n_in: int, n_out: int) -> bool:
    return positions * positions * (n_in + n_out) < positions * n_in * n_out


@register_kind("linear")
class _Linear(Rule):
    @staticmethod
    def _flat(call: Call) -> tuple[torch.Tensor, torch.Tensor]:
        a, g = call.inp, call.grad
        b = a.shape[0]
        return a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])

    def norm_sq(self, call, roles):
        a, g = self._flat(call)
        b, t, n_in = a.shape
        total = torch.zeros(b, dtype=g.dtype, device=g.device)
        if "weight" in roles:
            m = roles["weight"]
            if t == 1:
                a2, g2 = a[:, 0].square(), g[:, 0].square()
                total += a2.sum(1) * g2.sum(1) if m is None else ((g2 @ m) * a2).sum(1)
            elif m is None and _cheaper_ghost(t, n_in, g.shape[-1]):
                total += (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
            else:
                gs = torch.bmm(g.transpose(1, 2), a)
                total += (gs if m is None else gs * m).square().sum((1, 2))
        if "bias" in roles:
            gb = g.sum(1)
            total += (gb if roles["bias"] is None else gb * roles["bias"]).square().sum(1)
        return total

    def grad_sample(self, call, role):
        a, g = self._flat(call)
        return torch.bmm(g.transpose(1, 2), a) if role == "weight" else g.sum(1)

    def elems_per_sample(self, call, roles):
        a, g = call.inp[0], call.grad[0]
        t, n_in, n_out = a.numel() // a.shape[-1], a.shape[-1], g.shape[-1]
        return a.numel() + g.numel() + max(n_in * n_out, 2 * t * t)

    def sample_dim_ok(self, call, dim):
        return dim < call.inp.dim() - 1 and dim < call.out.dim() - 1      # never the feature dimension


@register_rule(nn.Linear)
def _linear_module(m, args, out):
    return Call("linear", {"weight": m.weight, "bias": m.bias}, args[0], out)


# --- normalisation ---------------------------------------------------------------------------------------

class _Affine(Rule):
    """γ, β acting elementwise on a normalised x̂: ∇γ_i = Σ_pos g·x̂, ∇β_i = Σ_pos g (per channel / feature).

    Subclasses give x̂ and g reshaped to three dims with the parameter's entries on one of them and the
    positions to sum over on ``POS`` (BatchNorm, GroupNorm: (B, C, S); LayerNorm: (B, S, P)).
    """

    POS = 2

    def _grad(self, call: Call) -> torch.Tensor:
        raise NotImplementedError

    def _xhat(self, call: Call) -> torch.Tensor:
        raise NotImplementedError

    def grads(self, call: Call, roles) -> dict[str, torch.Tensor]:
        """role -> (B, P) per-sample gradients, for the roles asked for."""
        g = self._grad(call)
        out = {}
        if "weight" in roles:
            out["weight"] = torch.einsum("bcs,bcs->bc" if self.POS == 2 else "bsp,bsp->bp", g, self._xhat(call))
        if "bias" in roles:
            out["bias"] = g.sum(self.POS)
        return out

    def grad_sample(self, call, role):
        out = self.grads(call, (role,))[role]
        return out.reshape(out.shape[0], *call.params[role].shape)

    def norm_sq(self, call, roles):
        total = torch.zeros(call.grad.shape[0], dtype=call.grad.dtype, device=call.grad.device)
        for role, gs in self.grads(call, roles).items():
            m = roles[role]
            total += (gs if m is None else gs * m.reshape(-1)).square().sum(1)
        return total

    def elems_per_sample(self, call, roles):
        return 3 * call.grad[0].numel()


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, C) Σ_s u·v over the last dim of (B, C, S) tensors, as batched dot products."""
    b, c, s = u.shape
    return torch.bmm(u.reshape(b * c, 1, s), v.reshape(b * c, s, 1)).view(b, c)


@register_kind("batch_norm")
class _BatchNorm(_Affine):
    """Eval-mode BatchNorm: x̂ = (x − running_mean)/sqrt(running_var + eps), per channel (dim 1)."""

    def _grad(self, call):
        g = call.grad
        return g.reshape(g.shape[0], g.shape[1], -1)

    def grads(self, call, roles):
        # Σ_s g·x̂ = rsqrt(var + eps)·(Σ_s g·x − mean·Σ_s g): a batched dot product, no x̂ temporary.
        # Subtracting after the sum loses no more than x itself carries: float32 x already rounds at
        # ε·|mean| when a channel's mean dwarfs its spread (tested with mean 1e3 and unit spread).
        o, g = call.opts, self._grad(call)
        g_sum = g.sum(2)
        out = {"bias": g_sum} if "bias" in roles else {}
        if "weight" in roles:
            dot = _dot(g, call.inp.reshape(g.shape))
            out["weight"] = (dot - o["mean"] * g_sum) * torch.rsqrt(o["var"] + o["eps"])
        return out


NOT_INDEPENDENT = (
    "{what} normalises with batch statistics (track_running_stats=False or training mode), so a sample's "
    "loss depends on the other samples in its batch and per-sample gradients are not defined; expected "
    "BatchNorm with running statistics in eval mode"
)


def _bn_call(weight, bias, inp, out, mean, var, eps, what: str) -> Call:
    if mean is None or var is None:
        raise ValueError(NOT_INDEPENDENT.format(what=what))
    return Call("batch_norm", {"weight": weight, "bias": bias}, inp, out,
                dict(mean=mean.detach(), var=var.detach(), eps=float(eps)))


@register_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _bn_module(m, args, out):
    if m.training:
        raise ValueError(NOT_INDEPENDENT.format(what=f"{type(m).__name__}"))
    return _bn_call(m.weight, m.bias, args[0], out, m.running_mean, m.running_var, m.eps, type(m).__name__)


@register_kind("layer_norm")
class _LayerNorm(_Affine):
    """x̂ normalised over the trailing dims of each position (``size`` entries, biased variance)."""

    POS = 1

    def _grad(self, call):
        g = call.grad
        return g.reshape(g.shape[0], -1, call.opts["size"])

    def _xhat(self, call):
        o, a = call.opts, call.inp
        flat = a.reshape(a.shape[0], -1, o["size"])
        var, mean = torch.var_mean(flat, dim=2, keepdim=True, correction=0)
        return (flat - mean) * torch.rsqrt(var + o["eps"])

    def sample_dim_ok(self, call, dim):
        return dim < call.inp.dim() - call.opts["dims"]          # never a normalised dimension


def _ln_call(weight, bias, inp, out, shape, eps) -> Call:
    size = 1
    for s in shape:
        size *= int(s)
    return Call("layer_norm", {"weight": weight, "bias": bias}, inp, out,
                dict(size=size, eps=float(eps), dims=len(shape)))


@register_rule(nn.LayerNorm)
def _ln_module(m, args, out):
    return _ln_call(m.weight, m.bias, args[0], out, m.normalized_shape, m.eps)


@register_kind("group_norm")
class _GroupNorm(_Affine):
    """x̂ normalised per (sample, group of channels); γ, β per channel."""

    def _grad(self, call):
        g = call.grad
        return g.reshape(g.shape[0], g.shape[1], -1)

    def _xhat(self, call):
        o, a = call.opts, call.inp
        b, c = a.shape[:2]
        flat = a.reshape(b, o["groups"], -1)
        var, mean = torch.var_mean(flat, dim=2, keepdim=True, correction=0)
        return ((flat - mean) * torch.rsqrt(var + o["eps"])).reshape(b, c, -1)


@register_rule(nn.GroupNorm)
def _gn_module(m, args, out):
    return Call("group_norm", {"weight": m.weight, "bias": m.bias}, args[0], out,
                dict(groups=m.num_groups, eps=float(m.eps)))


# --- embedding -------------------------------------------------------------------------------------------

@register_kind("embedding")
class _Embedding(Rule):
    """Rows of W picked by indices: ‖∇W_i‖² = Σ_{s,t: idx_s = idx_t} g_s·g_t (padding_idx excluded)."""

    @staticmethod
    def _flat(call):
        idx, g = call.inp, call.grad
        b = idx.shape[0]
        idx = idx.reshape(b, -1)
        g = g.reshape(b, idx.shape[1], -1)
        pad = call.opts["padding_idx"]
        if pad is not None:
            g = g * (idx != pad).unsqueeze(2).to(g.dtype)
        return idx, g

    def norm_sq(self, call, roles):
        idx, g = self._flat(call)
        m = roles["weight"]
        gm = g if m is None else g * m[idx]
        same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(g.dtype)
        return (same * torch.bmm(gm, g.transpose(1, 2))).sum((1, 2))

    def grad_sample(self, call, role):
        idx, g = self._flat(call)
        w = call.params["weight"]
        out = torch.zeros(g.shape[0], w.shape[0], w.shape[1], dtype=g.dtype, device=g.device)
        return out.scatter_add_(1, idx.unsqueeze(2).expand(-1, -1, g.shape[2]), g)

    def elems_per_sample(self, call, roles):
        t = call.inp[0].numel()
        return call.grad[0].numel() * 2 + 2 * t * t

    def sample_dim_ok(self, call, dim):
        return dim < call.inp.dim()                                 # any index dimension, e.g. (T, B) ids


def _emb_call(weight, idx, out, padding_idx, scale_grad_by_freq) -> Call | None:
    if scale_grad_by_freq or idx.is_floating_point():
        return None
    if padding_idx is not None and padding_idx < 0:
        padding_idx += weight.shape[0]
    return Call("embedding", {"weight": weight}, idx, out, dict(padding_idx=padding_idx))


@register_rule(nn.Embedding)
def _emb_module(m, args, out):
    return _emb_call(m.weight, args[0], out, m.padding_idx, m.scale_grad_by_freq)


# --- parameters used directly in forward ------------------------------------------------------------------

@register_kind("param")
class _Param(Rule):
    """A parameter P broadcast against an activation: ``x + P`` (ViT's position embedding), ``x * P`` (a
    layer scale) or ``P.expand(B, ...)`` (ViT's class token, then concatenated). With g the gradient of
    the output, ∇P_i = g_i (times x_i for a product) summed over the dimensions P is broadcast along."""

    def grads(self, call: Call) -> torch.Tensor:
        """(B, P.numel()) per-sample gradients."""
        g = call.grad
        if call.opts["op"] == "mul":
            g = g * call.inp
        shape = list(call.opts["shape"])                    # P's shape, left-padded to the output's dims
        shape.insert(0, shape.pop(call.sample_dim))
        dims = [i for i in range(1, g.dim()) if shape[i] == 1 and g.shape[i] != 1]
        if dims:
            g = g.sum(dims, keepdim=True)
        return g.reshape(g.shape[0], -1)

    def norm_sq(self, call, roles):
        gs = self.grads(call)
        m = roles["weight"]
        return (gs if m is None else gs * m.reshape(-1)).square().sum(1)

    def grad_sample(self, call, role):
        gs = self.grads(call)
        return gs.reshape(gs.shape[0], *call.params["weight"].shape)

    def elems_per_sample(self, call, roles):
        return 3 * call.grad[0].numel()

    def sample_dim_ok(self, call, dim):
        return call.opts["shape"][dim] == 1                # P is broadcast along the samples, never indexed


def param_call(op: str, param, other, out, trainable_param) -> Call | None:
    """A Call for ``other (op) param`` (``op``: "add" or "mul") or ``param.expand(...)`` (``op``: "expand",
    ``other`` None), if ``param`` is a tensor the caller counts as a parameter and the output has P's
    values broadcast, not mixed; else None. ``trainable_param``: whether a tensor is such a parameter."""
    if not (isinstance(param, torch.Tensor) and isinstance(out, torch.Tensor) and trainable_param(param)):
        return None
    if out.dim() < param.dim() or param.dim() == 0:
        return None
    shape = (1,) * (out.dim() - param.dim()) + tuple(param.shape)
    if any(p not in (1, o) for p, o in zip(shape, out.shape)):
        return None
    if op == "expand":    # nothing upstream carries a gradient: the capture cuts the graph here (a leaf call)
        return Call("param", {"weight": param}, out.detach(), out, dict(op="add", shape=shape))
    if not isinstance(other, torch.Tensor) or trainable_param(other) or other.shape != out.shape:
        return None                                          # the activation must carry the output's shape
    return Call("param", {"weight": param}, other, out, dict(op=op, shape=shape))


# --- ops of a torch.export graph ---------------------------------------------------------------------------

def _register_aten() -> None:
    aten = torch.ops.aten

    @register_aten_rule(aten.linear.default)
    def _linear(c: AtenCall):
        return Call("linear", {"weight": c.arg(1, "weight"), "bias": c.arg(2, "bias")}, c.arg(0, "input"), c.out)

    transposes = {aten.t.default, aten.numpy_T.default}

    @register_aten_rule(aten.addmm.default)
    def _addmm(c: AtenCall):
        mat2 = c.node.args[2] if len(c.node.args) > 2 else None
        if c.arg(3, "beta", 1) != 1 or c.arg(4, "alpha", 1) != 1 or not isinstance(mat2, torch.fx.Node):
            return None
        is_t = mat2.target in transposes or (
            mat2.target is aten.permute.default and list(mat2.args[1]) == [1, 0]) or (
            mat2.target is aten.transpose.int and sorted(d % 2 for d in mat2.args[1:3]) == [0, 1])
        weight = c.attr(mat2.args[0]) if is_t and isinstance(mat2.args[0], torch.fx.Node) else None
        bias = c.arg(0, "self")
        if weight is None or weight.dim() != 2 or not isinstance(bias, torch.Tensor) or bias.dim() != 1:
            return None
        return Call("linear", {"weight": weight, "bias": bias}, c.arg(1, "mat1"), c.out)

    @register_aten_rule(aten.batch_norm.default, aten.native_batch_norm.default)
    def _batch_norm(c: AtenCall):
        if c.arg(5, "training"):
            raise ValueError(NOT_INDEPENDENT.format(what=f"the program's {c.node.target}"))
        return _bn_call(c.arg(1, "weight"), c.arg(2, "bias"), c.arg(0, "input"), first_output(c.out), c.arg(3, "running_mean"),
                        c.arg(4, "running_var"), c.arg(7, "eps"), str(c.node.target))

    @register_aten_rule(aten._native_batch_norm_legit_no_training.default)
    def _bn_no_training(c: AtenCall):
        return _bn_call(c.arg(1, "weight"), c.arg(2, "bias"), c.arg(0, "input"), first_output(c.out), c.arg(3, "running_mean"),
                        c.arg(4, "running_var"), c.arg(6, "eps"), str(c.node.target))

    @register_aten_rule(aten.layer_norm.default, aten.native_layer_norm.default)
    def _layer_norm(c: AtenCall):
        return _ln_call(c.arg(2, "weight"), c.arg(3, "bias"), c.arg(0, "input"), first_output(c.out),
                        c.arg(1, "normalized_shape"), c.arg(4, "eps", 1e-5))

    @register_aten_rule(aten.group_norm.default)
    def _group_norm(c: AtenCall):
        return Call("group_norm", {"weight": c.arg(2, "weight"), "bias": c.arg(3, "bias")}, c.arg(0, "input"), c.out,
                    dict(groups=int(c.arg(1, "num_groups")), eps=float(c.arg(4, "eps", 1e-5))))

    @register_aten_rule(aten.add.Tensor, aten.mul.Tensor)
    def _param_binary(c: AtenCall):
        if c.kwargs.get("alpha", 1) != 1 or len(c.args) != 2:
            return None
        op = "add" if c.node.target is aten.add.Tensor else "mul"
        a, b = c.args
        for param, other in ((b, a), (a, b)):
            call = param_call(op, param, other, c.out, c.is_param)
            if call is not None:
                return call
        return None

    @register_aten_rule(aten.expand.default)
    def _param_expand(c: AtenCall):
        return param_call("expand", c.arg(0, "self"), None, c.out, c.is_param)

    @register_aten_rule(aten.embedding.default)
    def _embedding(c: AtenCall):
        pad = c.arg(2, "padding_idx", -1)
        return _emb_call(c.arg(0, "weight"), c.arg(1, "indices"), c.out, None if pad == -1 else pad,
                         c.arg(3, "scale_grad_by_freq", False))


_register_aten()
