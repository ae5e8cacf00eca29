"""Convolutions (1-D and 2-D; any stride, padding, padding mode, dilation, groups): per-sample gradient norms.

With activations a (B, C, H, W) and output gradients g (B, O, Ho, Wo), the per-sample weight gradient
of a group is G_i = Σ_s g_{i,s} u_{i,s}ᵀ over the L = Ho·Wo output positions s, u_s being the patch
under the kernel at s (K = C/G·kh·kw values). Every method below is exact; per layer the cheapest by a
cost model is used (:func:`conv_method`):

- ``outer`` (L = 1): ‖G‖² = ‖g‖²·‖u‖²; with a mask M, (g²)ᵀ M (u²).
- ``ghost_unfold``: ‖G‖² = Σ_{s,t} (u_s·u_t)(g_s·g_t), from the unfolded patches (cost ∝ L²).
- ``ghost_shift`` (stride 1): the same, with the patch Gram taken from the Gram Q of the padded image's
  pixels, summed over the kernel's shifts, so nothing is unfolded.
- ``mat_unfold``: materialise G from the unfolded patches (times the mask), then its squared norm.
- ``mat_shift`` (stride 1): the same, one matrix product per kernel offset over shifted views.
- ``grouped``: G from one grouped convolution over the whole batch (one group per sample), no unfolding.
- ``pairs`` (masks, few positions): ‖M ⊙ G‖² = Σ_{s≤t} w_st (g_s⊙g_t)ᵀ M (u_s⊙u_t), w = 1 on the
  diagonal and 2 off it: one large matrix product for the whole batch instead of B huge G's.

Masks need G itself (an elementwise mask does not commute with the Gram form), so never a ghost method.

The shift forms read the padded image as flat rows of width Wp: output position (y, x) sits at
y·Wp + x, and kernel offset (i, j) moves it by i·dh·Wp + j·dw, so the patch values for that offset are
one contiguous slice of the flat image. The Wp − Wo columns between output rows are junk positions;
their output gradient is set to zero, so they contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._gn_registry import AtenCall, Call, Rule, register_aten_rule, register_kind, register_rule, rowdot, sumsq

__all__ = ["Geometry", "conv_method", "applicable", "METHODS"]

METHODS = ("outer", "ghost_unfold", "ghost_shift", "mat_unfold", "mat_shift", "grouped", "pairs")

# Cost model, per sample, in multiply-add equivalents (fitted on CPU with one thread on ResNet-18 and
# VGG-style layers at CIFAR sizes). Unfolding is a strided copy, slow per element; materialising G
# writes O·K values per sample and offset, which a short inner dimension cannot hide; the grouped
# convolution kernel (one group per sample) runs at a quarter of the cost per multiply-add of the
# others, but only on large images (a fixed overhead per output channel and input value).
UNFOLD_COST = 15
MAT_OVERHEAD = 40
PAIRS_COST = 0.5
GROUPED_SPEED = 0.25
GROUPED_OVERHEAD = 700
# oneDNN's weight gradient with fewer input channels per group than this is erratic on CPU (seconds
# instead of milliseconds on some calls with 1 or 3 channels: RGB and grayscale first layers).
GROUPED_MIN_CHANNELS = 8


@dataclass(frozen=True)
class Geometry:
    """Sizes of one convolution call, seen as a 2-D convolution over the padded input (Hp, Wp)."""

    batch: int
    channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padded: tuple[int, int]
    out: tuple[int, int]

    @property
    def cg(self) -> int:          # input channels per group
        return self.channels // self.groups

    @property
    def og(self) -> int:          # output channels per group
        return self.out_channels // self.groups

    @property
    def kk(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def k(self) -> int:           # values per patch, per group
        return self.cg * self.kk

    @property
    def positions(self) -> int:   # L
        return self.out[0] * self.out[1]

    @property
    def flat(self) -> int:        # M: pixels of the padded image
        return self.padded[0] * self.padded[1]

    @property
    def span(self) -> int:        # N: flat positions from the first output to the last (junk included)
        return (self.out[0] - 1) * self.padded[1] + self.out[1]

    def shifts(self) -> list[int]:
        (kh, kw), (dh, dw) = self.kernel, self.dilation
        return [i * dh * self.padded[1] + j * dw for i in range(kh) for j in range(kw)]


def applicable(method: str, geo: Geometry, masked: bool) -> bool:
    """Whether ``method`` computes the (masked) norm for a convolution of geometry ``geo``."""
    if method == "outer":
        return geo.positions == 1
    if method.endswith("_shift") and geo.stride != (1, 1):
        return False
    return not (masked and method.startswith("ghost"))


def conv_method(geo: Geometry, masked: bool) -> str:
    """The cheapest applicable method for ``geo`` by the cost model above."""
    if geo.positions == 1:
        return "outer"
    grp, k, pos, og, cg = geo.groups, geo.k, geo.positions, geo.og, geo.cg
    unfold = grp * UNFOLD_COST * k * pos
    costs: dict[str, float] = {}
    if geo.stride == (1, 1):
        n = geo.span
        costs["mat_shift"] = grp * geo.kk * og * cg * (n + MAT_OVERHEAD)
        costs["ghost_shift"] = grp * (geo.flat ** 2 * cg + geo.kk * n * n + n * n * og)
    else:
        costs["mat_unfold"] = unfold + grp * og * k * (pos + MAT_OVERHEAD)
        costs["ghost_unfold"] = unfold + grp * pos * pos * (k + og)
    costs["pairs"] = unfold + grp * og * k * pos * (pos + 1) / 2 * PAIRS_COST
    if cg >= GROUPED_MIN_CHANNELS:
        costs["grouped"] = GROUPED_SPEED * grp * og * k * (pos + GROUPED_OVERHEAD)
    costs = {m: c for m, c in costs.items() if applicable(m, geo, masked)}
    return min(costs, key=costs.get)


# --- extracting a call -------------------------------------------------------------------------------------

def _same_padding(kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    """F.pad widths (last dim first) for padding='same': PyTorch puts the odd extra pixel on the right."""
    pad: list[int] = []
    for k, d in zip(reversed(kernel), reversed(dilation)):
        total = d * (k - 1)
        pad += [total // 2, total - total // 2]
    return tuple(pad)


def conv_call(weight, bias, inp, out, *, stride, padding, dilation, groups, padding_mode="zeros",
              reversed_padding=None) -> Call | None:
    """A Call for a 1-D or 2-D convolution; padding modes other than zeros and string paddings become an
    explicit ``pre_pad`` (F.pad widths) applied before a zero-padding-free convolution, as PyTorch does."""
    dims = weight.dim() - 2
    if dims not in (1, 2) or not isinstance(inp, torch.Tensor) or inp.dim() != dims + 2:
        return None
    kernel = tuple(weight.shape[2:])
    tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims  # noqa: E731
    stride, dilation = tup(stride), tup(dilation)
    pre_pad, mode = None, "constant"
    if padding_mode != "zeros":
        pre_pad, mode, padding = tuple(reversed_padding), padding_mode, 0
    elif isinstance(padding, str):
        if padding == "same":
            pre_pad = _same_padding(kernel, dilation)
        elif padding != "valid":
            return None
        padding = 0
    padding = tup(padding)
    if dims == 1:  # as a 2-D convolution over a 1-pixel-high image
        kernel, stride, padding, dilation = (1, *kernel), (1, *stride), (0, *padding), (1, *dilation)
    return Call("conv", {"weight": weight, "bias": bias}, inp, out,
                dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation, groups=int(groups),
                     pre_pad=pre_pad, mode=mode, dims=dims))


@register_rule(nn.Conv1d, nn.Conv2d, relies_on=("_conv_forward",))
def _conv_module(m, args, out):
    return conv_call(m.weight, m.bias, args[0], out, stride=m.stride, padding=m.padding, dilation=m.dilation,
                     groups=m.groups, padding_mode=m.padding_mode, reversed_padding=m._reversed_padding_repeated_twice)


def _register_aten() -> None:
    aten = torch.ops.aten

    def conv(c: AtenCall, *, padding_default):
        return conv_call(c.arg(1, "weight"), c.arg(2, "bias"), c.arg(0, "input"), c.out,
                         stride=c.arg(3, "stride", 1), padding=c.arg(4, "padding", padding_default),
                         dilation=c.arg(5, "dilation", 1), groups=c.arg(6, "groups", 1))

    register_aten_rule(aten.conv1d.default, aten.conv2d.default)(lambda c: conv(c, padding_default=0))
    register_aten_rule(aten.conv1d.padding, aten.conv2d.padding)(lambda c: conv(c, padding_default="valid"))

    @register_aten_rule(aten.convolution.default)
    def _convolution(c: AtenCall):
        if c.arg(6, "transposed"):
            return None
        return conv_call(c.arg(1, "weight"), c.arg(2, "bias"), c.arg(0, "input"), c.out, stride=c.arg(3, "stride"),
                         padding=c.arg(4, "padding"), dilation=c.arg(5, "dilation"), groups=c.arg(8, "groups"))


_register_aten()


# --- the math ------------------------------------------------------------------------------------------------

@register_kind("conv")
class _Conv(Rule):
    @staticmethod
    def geometry(call: Call) -> Geometry:
        o, w, g = call.opts, call.params["weight"], call.grad
        h, wd = (1, call.inp.shape[-1]) if o["dims"] == 1 else call.inp.shape[-2:]
        if o["pre_pad"] is not None:
            p = o["pre_pad"]
            wd += p[0] + p[1]
            h += p[2] + p[3] if len(p) > 2 else 0
        ph, pw = o["padding"]
        out = (1, g.shape[-1]) if o["dims"] == 1 else tuple(g.shape[-2:])
        return Geometry(call.inp.shape[0], call.inp.shape[1], w.shape[0], o["groups"], o["kernel"], o["stride"],
                        o["dilation"], (h + 2 * ph, wd + 2 * pw), out)

    # -- inputs in the forms the methods need

    @staticmethod
    def _input(call: Call, *, zero_pad: bool) -> torch.Tensor:
        """(B, C, H', W'): the activations after the layer's own padding (``zero_pad``: all of it)."""
        o, a = call.opts, call.inp
        if o["pre_pad"] is not None:
            a = F.pad(a, o["pre_pad"], mode=o["mode"])
        if o["dims"] == 1:
            a = a.unsqueeze(2)
        ph, pw = o["padding"]
        if zero_pad and (ph or pw):
            a = F.pad(a, (pw, pw, ph, ph))
        return a

    def _unfold(self, call: Call, geo: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches (B, G, K, L) and output gradients (B, G, O/G, L): a strided view of the padded input
        copied once (``F.unfold``'s im2col is many times slower on CPU)."""
        a = self._input(call, zero_pad=True)
        (kh, kw), (sh, sw), (dh, dw), (ho, wo) = geo.kernel, geo.stride, geo.dilation, geo.out
        sb, sc, sy, sx = a.stride()
        u = a.as_strided((geo.batch, geo.channels, kh, kw, ho, wo), (sb, sc, dh * sy, dw * sx, sh * sy, sw * sx),
                         a.storage_offset())
        u = u.reshape(geo.batch, geo.groups, geo.k, geo.positions)
        return u, call.grad.reshape(geo.batch, geo.groups, geo.og, geo.positions)

    def _flat(self, call: Call, geo: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded image as flat rows (B·G, C/G, M) and the output gradients laid out on the same
        rows (B·G, O/G, N), zero in the junk columns (stride 1)."""
        a = self._input(call, zero_pad=True)
        x = a.reshape(geo.batch * geo.groups, geo.cg, geo.flat)
        g = call.grad.reshape(geo.batch, geo.out_channels, *geo.out)
        gz = F.pad(g, (0, geo.padded[1] - geo.out[1]))
        gz = gz.reshape(geo.batch * geo.groups, geo.og, -1)[:, :, :geo.span]
        return x, gz

    # -- methods: each gives Σ over samples' ‖mask ⊙ G‖² (B,), or G itself

    def _outer(self, call, geo, m):
        u, g = self._unfold(call, geo)
        u2, g2 = u[..., 0].square(), g[..., 0].square()                 # (B, G, K), (B, G, O/G)
        if m is None:
            return (u2.sum(2) * g2.sum(2)).sum(1)
        return torch.einsum("bgo,gok,bgk->b", g2, m.reshape(geo.groups, geo.og, geo.k), u2)

    def _ghost_unfold(self, call, geo, m):
        u, g = self._unfold(call, geo)
        return rowdot(torch.matmul(u.transpose(2, 3), u), torch.matmul(g.transpose(2, 3), g))

    def _ghost_shift(self, call, geo, m):
        x, gz = self._flat(call, geo)
        q = torch.bmm(x.transpose(1, 2), x)                               # (B·G, M, M) pixel Gram
        n = geo.span
        gram = None
        for s in geo.shifts():
            win = q[:, s:s + n, s:s + n]
            gram = win.clone() if gram is None else gram.add_(win)
        out = rowdot(gram, torch.bmm(gz.transpose(1, 2), gz))
        return out.view(geo.batch, geo.groups).sum(1)

    def _mat_unfold(self, call, geo, m):
        return self._sumsq_masked(self._grads_unfold(call, geo), m, geo)

    def _mat_shift(self, call, geo, m):
        total = None
        for off, gs in enumerate(self._grads_shift(call, geo)):           # (B, G, O/G, C/G) per offset
            mo = None if m is None else m.reshape(geo.groups, geo.og, geo.cg, geo.kk)[..., off]
            part = sumsq(gs if mo is None else gs * mo)
            total = part if total is None else total + part
        return total

    def _grouped(self, call, geo, m):
        return self._sumsq_masked(self._grads_grouped(call, geo), m, geo)

    def _pairs(self, call, geo, m):
        u, g = self._unfold(call, geo)
        pos = geo.positions
        li, mi = torch.triu_indices(pos, pos, device=u.device)
        w = torch.where(li == mi, 1.0, 2.0).to(g.dtype)
        v = u[..., li] * u[..., mi]                                        # (B, G, K, P)
        gp = g[..., li] * g[..., mi] * w                                   # (B, G, O/G, P)
        mg = torch.ones(geo.groups, geo.og, geo.k, dtype=g.dtype, device=g.device) if m is None \
            else m.reshape(geo.groups, geo.og, geo.k)
        vb = v.permute(1, 2, 0, 3).reshape(geo.groups, geo.k, -1)          # (G, K, B·P): one product per group
        mv = torch.bmm(mg, vb).view(geo.groups, geo.og, geo.batch, -1)    # (G, O/G, B, P)
        return torch.einsum("gobp,bgop->b", mv, gp)

    # -- materialised per-sample gradients

    def _grads_unfold(self, call, geo) -> torch.Tensor:
        u, g = self._unfold(call, geo)
        return torch.matmul(g, u.transpose(2, 3))                         # (B, G, O/G, K), K = (c, i, j)

    def _grads_shift(self, call, geo):
        x, gz = self._flat(call, geo)
        n = geo.span
        for s in geo.shifts():
            gs = torch.bmm(gz, x[:, :, s:s + n].transpose(1, 2))           # (B·G, O/G, C/G)
            yield gs.view(geo.batch, geo.groups, geo.og, geo.cg)

    def _grads_grouped(self, call, geo) -> torch.Tensor:
        """(B, O, C/G·kh·kw): the weight gradient of one convolution over the whole batch as a single
        image with one group per (sample, group)."""
        o, a, g = call.opts, self._input(call, zero_pad=False), call.grad
        b, w = geo.batch, call.params["weight"]
        g = g.reshape(1, b * geo.out_channels, *geo.out)
        weight = w.new_empty(()).expand(b * geo.out_channels, geo.cg, *geo.kernel)    # only its shape is read
        gw = torch.ops.aten.convolution_backward(
            g, a.reshape(1, -1, *a.shape[2:]), weight, None, list(o["stride"]), list(o["padding"]),
            list(o["dilation"]), False, [0, 0], b * geo.groups, [False, True, False])[1]
        return gw.reshape(b, geo.out_channels, -1)

    def _sumsq_masked(self, gs, m, geo):
        return sumsq(gs if m is None else gs * m.reshape(gs.shape[1:]))

    # -- the Rule interface

    def method(self, call: Call, mask) -> str:
        return conv_method(self.geometry(call), mask is not None)

    def norm_sq(self, call, roles):
        g = call.grad
        b = g.shape[0]
        total = torch.zeros(b, dtype=g.dtype, device=g.device)
        if "weight" in roles:
            geo, m = self.geometry(call), roles["weight"]
            total += getattr(self, "_" + conv_method(geo, m is not None))(call, geo, m)
        if "bias" in roles:
            gb = g.reshape(b, g.shape[1], -1).sum(2)
            total += (gb if roles["bias"] is None else gb * roles["bias"]).square().sum(1)
        return total

    def grad_sample(self, call, role):
        g = call.grad
        if role == "bias":
            return g.reshape(g.shape[0], g.shape[1], -1).sum(2)
        geo = self.geometry(call)
        how = conv_method(geo, True)
        if how == "grouped":
            gs = self._grads_grouped(call, geo)
        elif how == "mat_shift":
            gs = torch.stack(list(self._grads_shift(call, geo)), -1)       # (B, G, O/G, C/G, kh·kw)
        else:
            gs = self._grads_unfold(call, geo)
        return gs.reshape(geo.batch, *call.params["weight"].shape)

    def elems_per_sample(self, call, roles):
        geo = self.geometry(call)
        how = conv_method(geo, roles.get("weight") is not None)
        grp, k, pos, n = geo.groups, geo.k, geo.positions, geo.span
        padded = geo.channels * geo.flat + geo.out_channels * geo.out[0] * geo.padded[1]
        work = {
            "outer": grp * k,
            "ghost_unfold": grp * (k * pos + 2 * pos * pos),
            "ghost_shift": padded + grp * (geo.flat ** 2 + 2 * n * n),
            "mat_unfold": grp * k * pos + 2 * geo.out_channels * k,
            "mat_shift": padded + 2 * geo.out_channels * geo.cg,
            "grouped": 2 * geo.out_channels * k,
            "pairs": grp * (k * pos + k * pos * (pos + 1) + geo.og * pos * (pos + 1)),
        }[how]
        return call.inp[0].numel() + call.grad[0].numel() + work
