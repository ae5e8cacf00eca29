"""Applying a compression variant to a deep copy of a dense model (the dense model is never touched).

Backends, chosen per model and said in each entry (``backend``):

- ``torchao.quantize_``: int8 variants of a plain ``nn.Module`` whose only conv/linear layers are
  ``nn.Linear`` and which has no ``nn.MultiheadAttention`` (torchao's ``quantize_`` touches ``nn.Linear``
  only, never an attention's in-projection). Weights become torchao
  ``Int8Tensor`` s (int8 values + one float32 scale per output channel); the dynamic and static
  variants multiply int8 by int8 (``torch._int_mm``).
- ``torchao.pt2e``: int8 variants of everything else (convolutions, attention, ``.pt2`` programs, whose
  module has no ``nn.Linear`` objects): the model is captured with ``torch.export``, annotated by
  :class:`Int8Quantizer` (every conv / linear op of the graph, by op, so it works on a ``.pt2``
  program's graph too), prepared, calibrated (static) and converted with torchao's
  ``prepare_pt2e`` / ``convert_pt2e``. BatchNorm that follows a conv/linear is folded into its
  weights first, as deployment does. Weights are stored as int8 constants with per-channel scales;
  the converted graph runs them as torch's reference kernels (int8 weights dequantized to float at
  each call, activations quantized and dequantized), not lowered to x86 int8 kernels (that would need
  ``torch.compile``), so its latency is not an int8 kernel's.
- ``torch``: fp16 / bf16 (weights and buffers stored at that dtype, run under ``torch.autocast`` at
  that dtype, logits back to float32) and 2:4 masks (on CUDA also
  ``torch.sparse.to_sparse_semi_structured`` where it runs).

Quantization formulas (the tests check them against plain torch code): weights symmetric per output
channel, ``s = max|w| / 127.5``, ``q = clamp(round(w * (1 / s)), -128, 127)``; dynamic activations on the
PT2E path per vector along a linear layer's last dimension (per row of an (N, D) input, per token of each
sample of an (N, T, D) or (T, N, D) one) and per sample of a conv's input, so no scale is shared by two
samples, with the restricted range ``s = max|x| / 127``, ``q = clamp(round(x * (1 / s)), -127, 127)`` (the
largest value lands on +-127, not on a rounding tie; torchao's own nn.Linear kernel keeps 127.5 and runs
element-wise after its int32 accumulation, so it has no batch-size dependence); static activations
``max|x| / 127.5`` per layer input over the calibration rows.

What was quantized is counted per layer kind (:func:`quantized_by_kind`, the prunable definition's kinds
plus "other"); conv, linear, attention or recurrent weights a step leaves in float are listed with the
reason (``not_quantized``: torch's LSTM / GRU op is reached by neither backend). Weights a graph computes
from its parameters (weight normalisation / standardisation) are evaluated once and stored as a constant
before PT2E, as deployment does, so they are quantized and a following BatchNorm folds into them.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ...core.errors import InputError
from ..prune import PRUNABLE_KINDS, nm_masks
from ._registry import StepSpec, VariantSpec, parse_variant

__all__ = ["Calibration", "Variant", "apply_variant", "Int8Quantizer", "per_sample_int8", "per_token_int8",
           "QUANTIZED_KINDS", "quantized_by_kind", "INT4_CPU"]

INT4_CPU = ("int4_weight cannot run on CPU here: torchao 0.18's Int4WeightOnlyConfig packs int4 weights for the "
            "`mslk` kernel package (plain format; not installed, and a CUDA kernel library) or for CUDA's tinygemm "
            "kernel (tile_packed_to_4d), and its plain_int32 format refuses the CPU; expected a CUDA device "
            "(--device cuda), found cpu. Leave int4_weight out or run on a GPU")

_EPS = torch.finfo(torch.float32).eps
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@contextmanager
def _quiet():
    """torchao's import logs a pytree deprecation at WARNING and torch.export warns freely: keep the CLI clean."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass
class Calibration:
    """Rows a static variant calibrates on: ``x`` model-ready rows (N, ...) on the device, ``info`` what
    is recorded in the entry (``source``, ``rows``, ``requested_rows``, ``balanced``, ``groups``, ``seed``)."""

    x: torch.Tensor
    info: dict


@dataclass
class Variant:
    """A compressed copy of a model, ready to evaluate, and what was done to it.

    model: a :class:`fairprune.zoo.LoadedModel` to evaluate (inputs cast to the variant's dtype and
        logits back to float32 where needed); module: the compressed module as it would ship (sized);
    quantized: dense parameter name -> entries actually quantized; quantized_fraction: their share of
        all parameters (by count); quantized_by_kind: {kind: {"quantized", "total"}} by layer kind
        (:func:`quantized_by_kind`); masks: the 2:4 keep-masks (dense parameter names), if any;
    effective: dense parameter name -> the float32 values the variant computes with (dequantized
        weights, unfolded from BatchNorm where it was folded; masked weights), for the ones that changed;
    float_note: None when a float32 copy with those values can be built for gradients
        (:meth:`float_copy`), else why not; details: backend, kernel and device notes, calibration.
    """

    spec: VariantSpec
    model: object
    module: nn.Module
    dense: object
    quantized: dict
    quantized_fraction: float
    masks: dict
    effective: dict
    effective_buffers: dict
    float_note: str | None
    details: dict = field(default_factory=dict)
    quantized_by_kind: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def float_copy(self) -> nn.Module:
        """A float32 deep copy of the dense module carrying the variant's weights (see ``effective``).

        Its activations are not quantized: rounding has no gradient. Raises InputError when the weights
        cannot be mapped back onto the dense module (``float_note`` says why)."""
        if self.float_note is not None:
            raise InputError(self.float_note)
        module = copy.deepcopy(self.dense.module)
        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        with torch.no_grad():
            for n, mask in self.masks.items():
                params[n].mul_(mask.to(device=params[n].device, dtype=params[n].dtype))
            for n, t in self.effective.items():
                params[n].copy_(t.to(device=params[n].device, dtype=params[n].dtype))
            for n, t in self.effective_buffers.items():
                buffers[n].copy_(t.to(device=buffers[n].device, dtype=buffers[n].dtype))
        return module.eval()

    def weights(self, names) -> dict[str, torch.Tensor]:
        """The float values the variant computes with for the dense parameters ``names``."""
        dense = dict(self.dense.module.named_parameters())
        out = {}
        for n in names:
            if n in self.effective:
                out[n] = self.effective[n].detach().float()
            elif n in self.masks:
                out[n] = dense[n].detach().float() * self.masks[n].to(dense[n].device)
            else:
                out[n] = dense[n].detach().float()
        return out


class _CastIO(nn.Module):
    """Runs ``inner`` (weights stored at ``dtype``) at ``dtype``; logits come back as float32.

    ``autocast`` (fp16, bf16): inputs stay float32 and the forward pass runs under ``torch.autocast``
    at ``dtype``: convolutions and matrix products in ``dtype``, the ops autocast keeps in float32
    (and element-wise ops on float32 inputs, e.g. a model's own input scaling) in float32, as
    reduced-precision inference is usually run. Otherwise (int4's bfloat16 kernels) floating inputs
    are cast to ``dtype`` first.
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype, autocast: bool = False):
        super().__init__()
        self.inner = inner
        self.io_dtype = dtype
        self.autocast = autocast

    def forward(self, *xs):
        if self.autocast:
            x = xs[0] if xs else None
            dev = x.device.type if isinstance(x, torch.Tensor) else "cpu"
            with torch.autocast(dev, dtype=self.io_dtype):
                out = self.inner(*xs)
        else:
            xs = tuple(x.to(self.io_dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                       for x in xs)
            out = self.inner(*xs)
        if isinstance(out, torch.Tensor):
            return out.float()
        if isinstance(out, (tuple, list)):
            return type(out)(o.float() if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
        return out

    def train(self, mode: bool = True):
        self.training = mode
        if hasattr(self.inner, "train"):
            try:
                self.inner.train(mode)
            except Exception:  # noqa: BLE001 - a .pt2 graph module refuses train(); its flag is all we set
                pass
        return self


@dataclass
class _State:
    dense: object                      # LoadedModel
    module: nn.Module
    device: torch.device
    example: torch.Tensor
    calibration: Calibration | None
    batch_size: int
    io_dtype: torch.dtype | None = None
    autocast: bool = False
    fixed_batch_size: int | None = None
    quantized: dict = field(default_factory=dict)
    effective: dict = field(default_factory=dict)
    effective_buffers: dict = field(default_factory=dict)
    float_note: str | None = None
    masks: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    kinds: dict = field(default_factory=dict)       # parameter name -> layer kind learnt from a graph


# ---- the steps ---------------------------------------------------------------------------------------------

def _apply_nm(state: _State, step: StepSpec) -> None:
    masks, skipped = nm_masks(state.module)
    if not masks:
        found = "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:5]) or "no conv or linear weights"
        raise InputError(f"nm_2_4 found no weight that can take the 2:4 pattern; expected conv or linear weights whose "
                         f"input dimension is a multiple of 4, found: {found}")
    params = dict(state.module.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m.to(device=params[n].device, dtype=params[n].dtype))
    state.masks = masks
    state.details["nm_2_4"] = {"layers": len(masks), "weights": int(sum(m.numel() for m in masks.values())),
                               "skipped": dict(skipped)}


def _apply_float(state: _State, dtype: torch.dtype) -> None:
    module = state.module.to(dtype)
    state.module = module
    state.io_dtype, state.autocast = dtype, True
    for n, p in module.named_parameters():
        if p.dtype == dtype:
            state.quantized[n] = p.numel()
            state.effective[n] = p.detach().float()
    for n, b in module.named_buffers():
        if b.dtype == dtype:
            state.effective_buffers[n] = b.detach().float()
    name = str(dtype).replace("torch.", "")
    state.details.update(backend="torch",
                         kernel=f"weights and buffers stored in {name}; run under torch.autocast({name}) on "
                                f"{state.device.type}: convolutions and matrix products in {name}, the ops autocast "
                                "keeps in float32 (and element-wise ops on the float32 inputs) in float32")


def _has_attention_params(module: nn.Module) -> bool:
    """Whether ``module`` holds attention projections that are not ``nn.Linear`` modules (``nn.MultiheadAttention``'s
    ``in_proj_weight`` / ``q|k|v_proj_weight``, read by ``F.linear`` inside its forward)."""
    return any(isinstance(m, nn.MultiheadAttention) for m in module.modules())


def _linear_only(module: nn.Module) -> bool:
    """A plain module whose conv/linear/attention weights all belong to nn.Linear modules (torchao's quantize_
    can quantize them all). nn.MultiheadAttention's in-projection is a bare parameter quantize_ never reaches,
    so a model with attention goes through PT2E, which quantizes it as it does in a .pt2 program."""
    from ...zoo import ExportedModule

    if isinstance(module, (torch.jit.ScriptModule, torch.fx.GraphModule, ExportedModule)):
        return False
    mods = list(module.modules())
    return any(isinstance(m, nn.Linear) for m in mods) and not any(isinstance(m, _CONV_TYPES) for m in mods) \
        and not _has_attention_params(module)


def _calibration_batches(state: _State):
    if state.calibration is None:
        raise InputError("int8_static needs calibration rows; expected a Calibration (fairprune.engine.compress), found none")
    x = state.calibration.x.to(state.device)
    size = state.fixed_batch_size or state.batch_size       # a fixed-batch program takes its own batch size
    for start in range(0, x.shape[0], size):
        yield x[start:start + size]


def _forward_padded(module, x, fixed: int | None):
    from ..evaluate import module_outputs

    return module_outputs(module, x, fixed)


def _apply_int8_quantize_(state: _State, mode: str) -> None:
    with _quiet():
        from torchao.quantization import (FqnToConfig, Int8DynamicActivationInt8WeightConfig,
                                          Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_)
        from torchao.quantization.granularity import PerRow, PerTensor

    module = state.module
    linears = {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    if mode == "weight":
        config = Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False)
        kernel = "torchao Int8Tensor: float activations times int8 weights cast to float, scaled per output channel"
    elif mode == "dynamic":
        config = Int8DynamicActivationInt8WeightConfig(granularity=PerRow(), set_inductor_config=False)
        kernel = ("torchao Int8Tensor: int8 x int8 matmul with int32 accumulation (torch._int_mm where the shapes "
                  "allow), scaled per row and channel")
    else:
        amax = {n: 0.0 for n in linears}
        hooks = [m.register_forward_pre_hook(
            lambda mod, inp, n=n: amax.__setitem__(n, max(amax[n], float(inp[0].detach().abs().amax()))))
            for n, m in linears.items()]
        try:
            with torch.no_grad():
                for xb in _calibration_batches(state):
                    _forward_padded(module, xb, state.fixed_batch_size)
        finally:
            for h in hooks:
                h.remove()
        config = FqnToConfig({
            n: Int8StaticActivationInt8WeightConfig(
                act_quant_scale=torch.tensor([[max(a / 127.5, _EPS)]], dtype=torch.float32, device=state.device),
                granularity=[PerTensor(), PerRow()], set_inductor_config=False)
            for n, a in amax.items()})
        kernel = ("torchao Int8Tensor: int8 x int8 matmul with int32 accumulation (torch._int_mm where the shapes "
                  "allow), fixed activation scales")
    with _quiet():
        if mode == "static":
            quantize_(module, config, filter_fn=None)     # FqnToConfig names the layers itself
        else:
            quantize_(module, config)
    if mode == "dynamic":
        state.details["activation_granularity"] = (
            "per sample: torchao quantizes a linear layer's input with one scale per row of its last dimension, "
            "i.e. per sample of an (N, D) input and per token of each sample of an (N, T, D) one, so a row's "
            "prediction never depends on the rows evaluated beside it (where torch's float kernels sum in another "
            "order for another batch size, a value within a float's last bit of an int8 rounding boundary may still "
            "round the other way)")
    for n, m in linears.items():
        w = m.weight
        if type(w) is not torch.Tensor and type(w) is not nn.Parameter and hasattr(w, "dequantize"):
            state.quantized[f"{n}.weight" if n else "weight"] = w.numel()
            state.effective[f"{n}.weight" if n else "weight"] = w.dequantize().detach().float()
    state.details.update(backend="torchao.quantize_", kernel=kernel)


# --- PT2E ---------------------------------------------------------------------------------------------------

def per_sample_int8(x: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 quantize-dequantize of ``x`` with one scale per sample (per index of dimension 0, the
    batch dimension of a convolution's input): ``s = max|x_i| / 127``, ``clamp(round(x_i * (1 / s)), -127,
    127) * s``. Used for convolutions.

    The restricted range (-127..127, TensorRT's symmetric int8) maps a sample's
    largest value to exactly +-127. With ``s = max / 127.5`` it would sit on a rounding tie (-127.5 rounds to
    -128 or, a float's last bit away, to -127), so a last-bit difference in the float kernels before it (another
    batch size sums in another order) would move a whole quantization step (measured: 38 of 64 rows of a small
    text transformer, up to half the quantization error, on 2 threads)."""
    flat = x.reshape(x.shape[0], -1).float()
    scale = torch.clamp(flat.abs().amax(1, keepdim=True) / 127.0, min=_EPS)
    q = torch.clamp(torch.round(flat * (1.0 / scale)), -127, 127)
    return (q * scale).reshape(x.shape).to(x.dtype)


def per_token_int8(x: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 quantize-dequantize of a linear layer's input with one scale per vector along its last
    dimension (the layer's input features): per row of an (N, D) input, per token of each sample of an
    (N, T, D) or (T, N, D) input, as torchao's per-row activation quantization does. Used for linear layers
    (attention projections included): whatever the layout (batch first or not, flattened to (T*N, D) inside
    ``nn.MultiheadAttention``), every scale belongs to one token of one sample, so no row affects another.
    ``s = max|x_t| / 127``, codes -127..127 (see :func:`per_sample_int8` for why not 127.5)."""
    if x.dim() == 0:
        return per_sample_int8(x.reshape(1)).reshape(())
    xf = x.float()
    scale = torch.clamp(xf.abs().amax(-1, keepdim=True) / 127.0, min=_EPS)
    q = torch.clamp(torch.round(xf * (1.0 / scale)), -127, 127)
    return (q * scale).to(x.dtype)


def _qops():
    aten = torch.ops.aten
    return {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.linear.default,
            aten.convolution.default}


def _bn_ops():
    aten = torch.ops.aten
    ops = {aten.batch_norm.default: 7}                       # eps argument index
    legit = getattr(aten, "_native_batch_norm_legit_no_training", None)
    if legit is not None:
        ops[legit.default] = 6
    return ops


def _make_int8_quantizer(static: bool):
    """A torchao PT2E ``Quantizer`` annotating every conv / linear op whose weight is a graph constant."""
    with _quiet():
        from torchao.quantization.pt2e import MinMaxObserver, PerChannelMinMaxObserver
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

    weight_spec = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_channel_symmetric,
                                   ch_axis=0, observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=_EPS))
    act_spec = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                                observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=_EPS))
    qops = _qops()

    class _Quantizer(Quantizer):
        """int8 weights per output channel (symmetric); with ``static`` also int8 inputs per tensor (symmetric)."""

        def annotate(self, model):
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in qops or len(node.args) < 2:
                    continue
                weight = node.args[1]
                if not isinstance(weight, torch.fx.Node) or weight.op != "get_attr":
                    continue
                if node.target is torch.ops.aten.convolution.default and len(node.args) > 6 and node.args[6]:
                    continue   # transposed convolution: its weight's channel axis is 1
                qmap = {weight: weight_spec}
                if static and isinstance(node.args[0], torch.fx.Node):
                    qmap[node.args[0]] = act_spec
                node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
            return model

        def validate(self, model):
            return None

    return _Quantizer()


Int8Quantizer = _make_int8_quantizer   # public name: Int8Quantizer(static) -> a torchao PT2E Quantizer


def _export(state: _State, name: str) -> torch.fx.GraphModule:
    if isinstance(state.module, torch.jit.ScriptModule):
        raise InputError(f"{name} cannot quantize a TorchScript model: torchao's quantization needs nn.Linear modules "
                         f"or a graph torch.export can capture; expected a .pt2 program or weights with --arch, "
                         f"found TorchScript. Re-export the model as .pt2")
    x = state.example
    fixed = state.dense.fixed_batch_size

    def pad(rows, n):         # rows followed by n copies of the first (a tensor, or Inputs' pad_rows)
        if hasattr(rows, "pad_rows"):
            return rows.pad_rows(n)
        return torch.cat([rows, rows[:1].expand(n, *rows.shape[1:])])

    if fixed:
        if len(x) < fixed:
            x = pad(x, fixed - len(x))
        x = x[:fixed]
    elif len(x) < 2:
        x = pad(x, 1)
    args = tuple(x.tensors) if hasattr(x, "tensors") else (x,)     # an Inputs: the model's positional inputs
    attempts = [None]
    if not fixed:
        batch = torch.export.Dim("batch")
        per_input = tuple({0: batch} for _ in args)
        # positional inputs (forward(x) / forward(a, b)), then one varargs tuple (forward(*inputs)), then static
        attempts = [per_input, (per_input,), None]
    err = None
    for dyn in attempts:
        try:
            with _quiet():
                gm = torch.export.export(state.module, args, dynamic_shapes=dyn).module()
        except Exception as e:  # noqa: BLE001 - torch.export's reasons vary; the first line is kept
            if err is None or dyn is None:
                err = e
            continue
        state.fixed_batch_size = fixed if fixed else (None if dyn is not None else int(len(x)))
        return gm
    raise InputError(f"{name}: torch.export could not capture the model for torchao's PT2E quantization "
                     f"(needed for convolutions and .pt2 programs): {_first_line(err)}")


def _attr(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _drop_unused_attributes(gm: torch.fx.GraphModule) -> None:
    """Remove parameters and buffers the converted graph no longer reads (the float weights that were
    replaced by int8 constants, BatchNorm tensors folded away), so the module holds what ships."""
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)] + \
            [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    for name in names:
        if name in used:
            continue
        owner, _, leaf = name.rpartition(".")
        mod = gm.get_submodule(owner) if owner else gm
        if hasattr(mod, leaf):
            delattr(mod, leaf)
    gm.delete_all_unused_submodules()
    gm.recompile()


class _NotConstant(Exception):
    pass


def _fold_computed_weights(gm: torch.fx.GraphModule) -> dict[str, dict]:
    """Store every conv / linear weight the graph computes from its parameters alone (weight normalisation,
    weight standardisation, a parametrization) as one constant, as deployment does, so PT2E can quantize it
    and fold a following BatchNorm into it (its BatchNorm folding expects a stored weight and fails otherwise).

    Returns {constant name: {"sources": [parameter names it was computed from], "layer": op node name}}."""
    memo: dict = {}
    params = {n for n, _ in gm.named_parameters(remove_duplicate=False)} | \
        {n for n, _ in gm.named_buffers(remove_duplicate=False)}

    def value(node):
        if node in memo:
            return memo[node]
        if node.op == "get_attr":
            v = _attr(gm, node.target)
        elif node.op == "call_function":
            args = torch.fx.node.map_arg(node.args, value)
            kwargs = torch.fx.node.map_arg(node.kwargs, value)
            v = node.target(*args, **kwargs)
        else:                                 # an input, a submodule call: not a constant
            raise _NotConstant(node.name)
        memo[node] = v
        return v

    def sources(node, seen=None):
        seen = set() if seen is None else seen
        if node in seen:
            return []
        seen.add(node)
        if node.op == "get_attr":
            return [node.target] if node.target in params else []
        out = []
        for a in node.all_input_nodes:
            out.extend(sources(a, seen))
        return out

    folded: dict[str, dict] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _qops() or len(node.args) < 2:
            continue
        w = node.args[1]
        if not isinstance(w, torch.fx.Node) or w.op != "call_function":
            continue
        try:
            with torch.no_grad():
                t = value(w)
        except Exception:  # noqa: BLE001 - not computable from the stored tensors alone: left as it is
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        const = f"_fairprune_folded_{len(folded)}"
        # a parameter, as torchao's BatchNorm folding writes the folded weight back as one
        gm.register_parameter(const, nn.Parameter(t.detach().clone(), requires_grad=False))
        with gm.graph.inserting_before(node):
            getter = gm.graph.get_attr(const)
        node.update_arg(1, getter)
        kind = "linear" if node.target is torch.ops.aten.linear.default else "conv"
        folded[const] = {"sources": list(dict.fromkeys(sources(w))), "layer": node.name, "kind": kind}
    if folded:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return folded


def _recompose_linear(gm: torch.fx.GraphModule) -> int:
    """Turn a decomposed program's ``addmm(b, x, t(w))`` / ``mm(x, t(w))`` (a linear layer after
    ``run_decompositions``; ``t`` a transpose or ``permute(w, [1, 0])`` of a stored 2-D weight) back into
    ``aten.linear(x, w, b)``, the same product, so it is quantized like any linear layer. Returns how many."""
    aten = torch.ops.aten
    transposes = {aten.t.default, aten.permute.default, aten.transpose.int}

    def stored_transpose(node):
        if not (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in transposes):
            return None
        w = node.args[0]
        if not (isinstance(w, torch.fx.Node) and w.op == "get_attr"):
            return None
        t = _attr(gm, w.target)
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            return None
        if node.target is aten.permute.default and list(node.args[1]) != [1, 0]:
            return None
        if node.target is aten.transpose.int and sorted(int(d) % 2 for d in node.args[1:3]) != [0, 1]:
            return None
        return w

    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.kwargs:
            continue
        if node.target is aten.addmm.default and len(node.args) == 3:
            bias, x, wt = node.args
            b = bias if isinstance(bias, torch.fx.Node) and bias.op == "get_attr" and \
                _attr(gm, bias.target).dim() == 1 else None
            if b is None:
                continue
        elif node.target is aten.mm.default and len(node.args) == 2:
            (x, wt), b = node.args, None
        else:
            continue
        w = stored_transpose(wt)
        if w is None:
            continue
        with gm.graph.inserting_before(node):
            lin = gm.graph.call_function(aten.linear.default, (x, w, b) if b is not None else (x, w))
        lin.meta.update(node.meta)
        node.replace_all_uses_with(lin)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return count


def _apply_int8_pt2e(state: _State, mode: str, name: str) -> None:
    with _quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = _export(state, name)
    dense_params = dict(state.dense.module.named_parameters())
    recomposed = _recompose_linear(gm)
    if recomposed:
        state.details["recomposed_linear"] = (
            f"{recomposed} matrix products of a decomposed program (addmm / mm with a stored, transposed weight) "
            "were read as the linear layers they are, and quantized as such")
    folded = _fold_computed_weights(gm)
    for info in folded.values():
        for src in info["sources"]:
            state.kinds.setdefault(src, info["kind"])
    if folded:
        state.details["computed_weights"] = {
            "layers": len(folded),
            "note": ("weights the model computes from its parameters at every call (weight normalisation or "
                     "standardisation) were evaluated once and stored as one constant each, as deployment does, "
                     "then quantized (and a following BatchNorm folded into them); their int8 values belong to the "
                     "computed weight, not to one parameter, so no float copy of the dense model carries them"),
            "sources": {info["layer"]: info["sources"] for info in folded.values()}}
    bn_ops = _bn_ops()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _qops() or len(node.args) < 2:
            continue
        w = node.args[1]
        if not isinstance(w, torch.fx.Node) or w.op != "get_attr":
            continue
        node.meta["fairprune_param"] = w.target
        users = list(node.users)
        if len(users) == 1 and users[0].target in bn_ops and users[0].args[0] is node:
            bn = users[0]
            args = list(bn.args)

            def const(a):
                return _attr(gm, a.target).detach().clone() if isinstance(a, torch.fx.Node) and a.op == "get_attr" \
                    else None

            info = {"node": bn.name, "weight": const(args[1]), "var": const(args[4]) if len(args) > 4 else None}
            try:
                info["eps"] = float(args[bn_ops[bn.target]])
            except (IndexError, TypeError, ValueError):
                info["eps"] = None
            info["readable"] = info["var"] is not None and info["eps"] is not None and \
                (args[1] is None or info["weight"] is not None)
            node.meta["fairprune_bn"] = info
    with _quiet():
        prepared = prepare_pt2e(gm, _make_int8_quantizer(static=mode == "static"))
        with torch.no_grad():
            # the weight observers see the weights on the first forward pass: one batch is enough for the
            # weight-only and dynamic variants (nothing there depends on the rows), the static one calibrates
            batches = _calibration_batches(state) if mode == "static" else [state.example]
            for xb in batches:
                _forward_padded(prepared, xb, state.fixed_batch_size)
        converted = convert_pt2e(prepared)
    remaining = {n.name for n in converted.graph.nodes}
    quantized_nodes = []
    for node in converted.graph.nodes:
        param = node.meta.get("fairprune_param")
        if param is None or node.op != "call_function" or node.target not in _qops():
            continue
        w = node.args[1]
        if not (isinstance(w, torch.fx.Node) and w.op == "call_function" and "dequantize" in str(w.target)):
            continue
        args = [_attr(converted, a.target) if isinstance(a, torch.fx.Node) and a.op == "get_attr" else a for a in w.args]
        if any(isinstance(a, torch.fx.Node) for a in args):
            continue
        with torch.no_grad():
            deq = w.target(*args, **w.kwargs).detach().float()
        quantized_nodes.append(node)
        if param in folded:
            # a computed weight: counted on the parameter it was computed from (the one of its shape, e.g.
            # weight normalisation's direction v; else its largest), and no float copy carries it
            srcs = [n for n in folded[param]["sources"] if n in dense_params]
            same = [n for n in srcs if dense_params[n].shape == deq.shape]
            owner = (same or sorted(srcs, key=lambda n: -dense_params[n].numel()) or [param])[0]
            state.quantized[owner] = state.quantized.get(owner, 0) + deq.numel()
            state.float_note = (f"the weight of {folded[param]['layer']} is computed from "
                                f"{', '.join(srcs) or 'the stored tensors'} at every call (weight normalisation or "
                                "standardisation); its int8 values belong to that computed weight, not to one "
                                "parameter, so no float copy of the dense model carries them")
            continue
        state.quantized[param] = state.quantized.get(param, 0) + deq.numel()
        if param not in dense_params or dense_params[param].shape != deq.shape:
            state.float_note = (f"the quantized weight {param} does not correspond to one parameter of the dense model "
                                f"(shape or name), so no float copy carries it")
            continue
        bn = node.meta.get("fairprune_bn")
        if bn is not None and bn["node"] not in remaining and not bn["readable"]:
            state.float_note = (f"the BatchNorm folded into {param} has running statistics the graph computes rather "
                                "than stores, so the folded int8 weight cannot be mapped back onto the dense weight")
            continue
        if bn is not None and bn["node"] not in remaining:
            # BatchNorm was folded into this weight: w_folded = w * gamma / sqrt(var + eps). Undo it so the
            # float copy (dense layers, BatchNorm kept) computes with exactly the folded int8 weight.
            gamma = bn["weight"] if bn["weight"] is not None else torch.ones_like(bn["var"])
            factor = (gamma / torch.sqrt(bn["var"] + bn["eps"])).float().to(deq.device)
            shape = (-1,) + (1,) * (deq.dim() - 1)
            safe = torch.where(factor == 0, torch.ones_like(factor), factor)
            unfolded = deq / safe.reshape(shape)
            keep = (factor == 0).reshape(shape).expand_as(deq)
            deq = torch.where(keep, dense_params[param].detach().float().to(deq.device), unfolded)
        state.effective[param] = deq
    if mode == "dynamic":
        graph = converted.graph
        for node in quantized_nodes:
            x = node.args[0]
            if isinstance(x, torch.fx.Node):
                fn = per_token_int8 if node.target is torch.ops.aten.linear.default else per_sample_int8
                with graph.inserting_before(node):
                    q = graph.call_function(fn, (x,))
                node.update_arg(0, q)
        graph.lint()
        converted.recompile()
    _drop_unused_attributes(converted)
    state.module = converted
    acts = {"weight": "activations in float",
            "dynamic": "activations quantized at run time (per sample for convolutions, per token of each sample for "
                       "linear layers) and dequantized",
            "static": "activations quantized with fixed per-tensor scales and dequantized"}[mode]
    state.details.update(
        backend="torchao.pt2e",
        kernel=("torch reference kernels from torchao's PT2E convert: int8 weights dequantized to float at each call, "
                f"{acts}; not lowered to x86 int8 kernels (that needs torch.compile), so latency is not an int8 "
                "kernel's"))
    if mode == "dynamic":
        state.details["activation_granularity"] = (
            "per sample: torchao's PT2E converts dynamic activations per tensor (one scale per batch); fairprune "
            "quantizes a convolution's input with one scale per sample and a linear layer's input (attention "
            "projections included) with one scale per token of each sample (per row of an (N, D) input), "
            "whatever the layout, so a row's prediction never depends on the rows evaluated beside it; scales are "
            "max|x| / 127 with codes -127..127, so each vector's largest value lands on +-127 rather than on a "
            "rounding tie (where torch's float kernels sum in another order for another batch size, an inner value "
            "within a float's last bit of a rounding boundary may still round the other way, rarely)")


def _apply_int8(state: _State, step: StepSpec) -> None:
    mode = {"int8_weight": "weight", "int8_dynamic": "dynamic", "int8_static": "static"}[step.name]
    if mode == "static":
        state.details["calibration"] = dict(state.calibration.info) if state.calibration is not None else None
    if _linear_only(state.module):
        _apply_int8_quantize_(state, mode)
        return
    plain = isinstance(state.module, nn.Module) and not isinstance(state.module, torch.jit.ScriptModule) and \
        not any(isinstance(m, _CONV_TYPES) for m in state.module.modules()) and \
        any(isinstance(m, nn.Linear) for m in state.module.modules()) and _has_attention_params(state.module)
    if not plain:
        _apply_int8_pt2e(state, mode, step.name)
        return
    # linear layers and attention: PT2E quantizes the in-projections too; where torch.export cannot capture
    # the model, torchao's quantize_ still quantizes its nn.Linear layers (the in-projections stay float32)
    module = state.module
    try:
        _apply_int8_pt2e(state, mode, step.name)
    except InputError as err:
        state.module, state.fixed_batch_size = module, state.dense.fixed_batch_size
        state.quantized.clear(), state.effective.clear()
        state.float_note = None
        _apply_int8_quantize_(state, mode)
        state.details["backend_fallback"] = (
            f"{err}; so torchao's quantize_ quantized the nn.Linear layers instead, and nn.MultiheadAttention's "
            "projections (in_proj_weight, and out_proj, which quantize_ skips) stay float32")


def _apply_int4(state: _State, step: StepSpec) -> None:
    if state.device.type != "cuda":
        raise InputError(INT4_CPU)
    with _quiet():
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

    module = state.module
    if not any(isinstance(m, nn.Linear) for m in module.modules()):
        raise InputError("int4_weight quantizes nn.Linear layers only (torchao's Int4WeightOnlyConfig); expected a "
                         "model with nn.Linear layers, found none (convolutions only, or a .pt2 / TorchScript graph)")
    module = module.to(torch.bfloat16)
    state.module, state.io_dtype = module, torch.bfloat16
    attempts = [("plain", {}), ("tile_packed_to_4d", {"int4_packing_format": "tile_packed_to_4d"})]
    errors = []
    for fmt, kw in attempts:
        trial = copy.deepcopy(module)
        try:
            with _quiet():
                quantize_(trial, Int4WeightOnlyConfig(group_size=128, set_inductor_config=False, **kw))
        except Exception as err:  # noqa: BLE001 - e.g. ImportError: Requires mslk
            errors.append(f"{fmt}: {_first_line(err)}")
            continue
        state.module = module = trial
        state.details.update(backend="torchao.quantize_",
                             kernel=f"torchao int4 weight-only ({fmt} packing) on CUDA, bfloat16 activations")
        if errors:
            state.details["kernel_fallback"] = "; ".join(errors)
        break
    else:
        raise InputError("int4_weight: torchao's Int4WeightOnlyConfig could not quantize on this GPU: " + "; ".join(errors))
    for n, m in module.named_modules():
        if isinstance(m, nn.Linear) and hasattr(m.weight, "dequantize") and type(m.weight) not in (torch.Tensor, nn.Parameter):
            key = f"{n}.weight" if n else "weight"
            state.quantized[key] = m.weight.numel()
            state.effective[key] = m.weight.dequantize().detach().float()
    for n, p in module.named_parameters():
        if n not in state.effective and p.dtype == torch.bfloat16:
            state.effective[n] = p.detach().float()
    for n, b in module.named_buffers():
        if b.dtype == torch.bfloat16:
            state.effective_buffers[n] = b.detach().float()
    state.details["note"] = ("int4 needs in_features divisible by 128: other nn.Linear layers stay bfloat16; "
                             "other parameters are bfloat16 (not counted in quantized_fraction)")


_STEPS = {"nm_2_4": _apply_nm, "int8_weight": _apply_int8, "int8_dynamic": _apply_int8, "int8_static": _apply_int8,
          "int4_weight": _apply_int4, "fp16": lambda s, _step: _apply_float(s, torch.float16),
          "bf16": lambda s, _step: _apply_float(s, torch.bfloat16)}


# ---- 2:4 on CUDA ---------------------------------------------------------------------------------------------

def _semi_structured(state: _State, spec: VariantSpec) -> None:
    """Swap 2:4 nn.Linear weights for torch's semi-structured sparse tensors where the CUDA kernel runs."""
    info = state.details["nm_2_4"]
    if state.device.type != "cuda":
        info.update(sparse_kernel=False,
                    sparse_kernel_note="not used: torch's 2:4 kernels (torch.sparse.to_sparse_semi_structured) need a "
                                       "CUDA GPU with sparse tensor cores; on CPU the 2:4 model runs as a dense model "
                                       "with zeros, at dense speed")
        return
    if spec.quantization is not None:
        info.update(sparse_kernel=False,
                    sparse_kernel_note=f"not used: {spec.quantization.name} re-packs the 2:4 weights after pruning; "
                                       "torch's 2:4 kernels take weights from to_sparse_semi_structured only")
        return
    from torch.sparse import to_sparse_semi_structured

    linears = {n: m for n, m in state.module.named_modules()
               if isinstance(m, nn.Linear) and f"{n}.weight" in state.masks}
    if not linears:
        info.update(sparse_kernel=False,
                    sparse_kernel_note="not used: torch's 2:4 kernels serve nn.Linear layers, and this model has none "
                                       "with 2:4 weights (convolutions, or a .pt2 graph)")
        return
    x = state.example
    with torch.no_grad():
        before = _forward_padded(state.module, x, state.dense.fixed_batch_size).float()
    used, failed = [], {}
    for n, m in linears.items():
        dense_w = m.weight
        try:
            m.weight = nn.Parameter(to_sparse_semi_structured(dense_w.detach()), requires_grad=False)
            with torch.no_grad():
                _forward_padded(state.module, x, state.dense.fixed_batch_size)
                _forward_padded(state.module, x[:1], state.dense.fixed_batch_size)
            used.append(n)
        except Exception as err:  # noqa: BLE001 - shape/dtype constraints of the kernel; recorded per layer
            m.weight = dense_w
            failed[n] = _first_line(err)
    if used:
        with torch.no_grad():
            after = _forward_padded(state.module, x, state.dense.fixed_batch_size).float()
        if not torch.allclose(before, after, rtol=1e-2, atol=1e-2):
            for n in used:
                failed[n] = "the sparse kernel's outputs differ from the masked dense layer's"
            for n, m in linears.items():
                if n in used:
                    m.weight = nn.Parameter(m.weight.to_dense(), requires_grad=False)
            used = []
    info.update(sparse_kernel=bool(used), sparse_kernel_layers=used)
    info["sparse_kernel_note"] = (f"torch.sparse.to_sparse_semi_structured on {len(used)} of {len(linears)} nn.Linear "
                                  "layers" if used else "not used: the sparse kernel did not run on any layer")
    if failed:
        info["sparse_kernel_failed"] = failed


# ---- the whole variant ---------------------------------------------------------------------------------------

def apply_variant(model, spec: VariantSpec | str, *, device: torch.device | str | None = None,
                  example: torch.Tensor, calibration: Calibration | None = None, batch_size: int = 256) -> Variant:
    """Apply the variant ``spec`` to a deep copy of ``model`` (a LoadedModel or nn.Module; never modified).

    ``example``: a batch of model-ready rows (capture for PT2E, checks); ``calibration``: rows for
    ``int8_static``. Raises InputError when the variant cannot be applied or quantized nothing.
    """
    from ..evaluate import resolve_device
    from ...zoo import LoadedModel

    if not isinstance(model, LoadedModel):
        model = LoadedModel.from_module(model, name=type(model).__name__)
    spec = parse_variant(spec) if isinstance(spec, str) else spec
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    try:
        module = copy.deepcopy(model.module)
    except RuntimeError as err:       # e.g. torch.nn.utils.weight_norm's computed weight after a forward pass
        raise InputError(f"{spec.name}: the model cannot be copied for compression ({_first_line(err)}); expected "
                         "a module whose tensors are all parameters or buffers, found a computed tensor attribute "
                         "(the old torch.nn.utils.weight_norm keeps one). Use torch.nn.utils.parametrizations."
                         "weight_norm, or remove_weight_norm before saving") from err
    state = _State(dense=model, module=module.to(device).eval(), device=device,
                   example=example.to(device), calibration=calibration, batch_size=batch_size,
                   fixed_batch_size=model.fixed_batch_size)
    for step in spec.steps:
        _STEPS[step.name](state, step)
    if spec.has_nm:
        _semi_structured(state, spec)
    q = spec.quantization
    if q is not None and not state.quantized:
        raise InputError(f"{spec.name} quantized nothing: expected conv or linear weights that "
                         f"{'torchao' if q.name.startswith('int') else 'torch'} can quantize, found none in "
                         f"{type(model.module).__name__}; nothing would be measured")
    state.details["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    state.details.setdefault("backend", "torch")
    state.details.setdefault("kernel", "torch's dense kernels with the 2:4 zeros in place" if spec.has_nm else "torch")
    module = state.module.eval() if not isinstance(state.module, torch.fx.GraphModule) else state.module
    run = _CastIO(module, state.io_dtype, state.autocast) if state.io_dtype is not None else module
    loaded = LoadedModel(module=run, name=f"{model.name} [{spec.name}]", kind=model.kind, sha256=model.sha256,
                         arch=model.arch, fixed_batch_size=state.fixed_batch_size, path=model.path,
                         input_shape=model.input_shape)
    try:
        with torch.no_grad():
            out = _forward_padded(run, state.example, state.fixed_batch_size)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - the compressed model's own error says what failed
        raise InputError(f"{spec.name}: the compressed model does not run on {device.type}: {_first_line(err)}") from err
    if not torch.isfinite(out.float()).all():
        raise InputError(f"{spec.name}: the compressed model's outputs are not finite (overflow at "
                         f"{state.io_dtype or 'int8'}); expected finite logits")
    total = sum(p.numel() for p in model.module.parameters())
    fraction = sum(state.quantized.values()) / total if total else 0.0
    by_kind, kinds = quantized_by_kind(model.module, state.quantized, extra=state.kinds, with_names=True)
    if q is not None and q.name.startswith("int"):
        missing = _not_quantized(state, kinds, q.name)
        if missing:
            state.details["not_quantized"] = missing
    float_note = state.float_note
    if float_note is None:
        dense_names = {n for n, _ in model.module.named_parameters()}
        missing = sorted(set(state.effective) - dense_names)
        if missing:
            float_note = f"quantized weights {missing[:3]} have no parameter of the same name in the dense model"
    return Variant(spec=spec, model=loaded, module=state.module, dense=model, quantized=dict(state.quantized),
                   quantized_fraction=float(min(1.0, fraction)), masks=dict(state.masks),
                   effective=dict(state.effective), effective_buffers=dict(state.effective_buffers),
                   float_note=float_note, details=state.details, quantized_by_kind=by_kind)


#: the kinds a variant's quantized share is given for: the prunable kinds, then everything else (biases,
#: normalisation parameters, learned tokens and position tables)
QUANTIZED_KINDS = (*PRUNABLE_KINDS, "other")

_PARAMETRIZED = re.compile(r"(?P<owner>.*?)\.?(parametrizations\.weight\.original\d+|weight_[gv])")


def _param_kinds(module: nn.Module, extra: dict | None = None) -> dict[str, str]:
    """Parameter name -> layer kind (:data:`QUANTIZED_KINDS`) of every parameter of ``module``: the prunable
    definition's kind (:func:`fairprune.engine.prune.prunable_kinds`, embeddings included), a weight-normalised
    layer's parametrization tensors by the layer that owns them, ``extra`` (kinds learnt from a graph), else
    "other"."""
    from ..prune import prunable_kinds

    kinds = prunable_kinds(module, embeddings=True)
    owners = dict(module.named_modules())
    out = {}
    for n, _ in module.named_parameters():
        kind = kinds.get(n)
        if kind is None:
            m = _PARAMETRIZED.fullmatch(n)
            owner = owners.get(m.group("owner")) if m else None
            if isinstance(owner, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                kind = "conv"
            elif isinstance(owner, nn.Linear):
                kind = "linear"
        out[n] = kind or (extra or {}).get(n) or "other"
    return out


def quantized_by_kind(module: nn.Module, quantized: dict, *, extra: dict | None = None, with_names: bool = False):
    """{kind: {"quantized": int, "total": int}} for every kind of :data:`QUANTIZED_KINDS` (zeros included):
    ``total`` the parameters of ``module`` of that kind (by count), ``quantized`` how many of them ``quantized``
    (parameter name -> entries quantized, a :class:`Variant`'s ``quantized``) holds. With ``with_names`` also
    the parameter name -> kind map."""
    kinds = _param_kinds(module, extra)
    params = dict(module.named_parameters())
    out = {k: {"quantized": 0, "total": 0} for k in QUANTIZED_KINDS}
    for n, kind in kinds.items():
        out[kind]["total"] += params[n].numel()
        out[kind]["quantized"] += min(int(quantized.get(n, 0)), params[n].numel())
    return (out, kinds) if with_names else out


_RECURRENT_WHY = ("torch's LSTM / GRU / RNN op takes its weights whole: torchao's quantize_ reaches nn.Linear modules "
                  "and PT2E reaches conv and linear ops, neither reaches this op, so these weights and the layer's "
                  "activations stay float32")


def _not_quantized(state: _State, kinds: dict[str, str], method: str) -> dict:
    """{kind: {"weights", "total", "layers", "reason"}} for the conv, linear, attention and recurrent weights
    (dim >= 2) a quantization step left in float, with the reason where it is known."""
    params = dict(state.dense.module.named_parameters())
    out: dict = {}
    for kind in ("linear", "conv", "attention", "recurrent"):
        names = [n for n, k in kinds.items() if k == kind and params[n].dim() >= 2]
        left = [n for n in names if not state.quantized.get(n)]
        if not left:
            continue
        backend = state.details.get("backend", "")
        if kind == "recurrent":
            why = _RECURRENT_WHY
        elif method == "int4_weight":
            why = "int4 needs nn.Linear layers whose in_features is a multiple of 128; these stay bfloat16"
        elif kind == "attention" and state.details.get("backend_fallback"):
            why = state.details["backend_fallback"]
        elif backend == "torchao.quantize_":
            why = "torchao's quantize_ reaches nn.Linear modules only; these weights belong to no nn.Linear"
        else:
            why = ("PT2E quantizes the weights the graph passes to a conv or linear op (aten.conv*, aten.linear, "
                   "or addmm / mm with a transposed stored weight); transposed convolutions and weights the graph "
                   "feeds to other ops (e.g. matmul, bmm) are not, so these stay float32")
        out[kind] = {"weights": int(sum(params[n].numel() for n in left)),
                     "total": int(sum(params[n].numel() for n in names)), "layers": left[:10],
                     "more_layers": max(0, len(left) - 10), "reason": why}
    return out

