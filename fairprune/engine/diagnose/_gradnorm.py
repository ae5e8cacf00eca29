"""Per-sample gradient norms ‖∇_θ ℓ(f_θ(x_i), y_i)‖₂, fast and exact (the paper's gradient-norm factor).

ℓ is the per-sample loss (cross-entropy; binary cross-entropy with logits for a one-logit model) and θ
every trainable parameter (``requires_grad``); on a pruned model only the unpruned coordinates count
(``masks``: parameter name -> bool keep-mask), since pruned weights are fixed at zero.

How (the "ghost norm" / BackPACK BatchL2Grad idea): one batched forward, and one backward of the *sum*
of the per-sample losses that asks only for the gradients of the layers' outputs, never of the
parameters. Each covered layer's activation and output gradient are captured on the way
(:mod:`._gn_capture`), and per-layer rules (:mod:`._gn_rules`, a registry by layer type) turn them
into per-sample squared norms, choosing per layer the cheaper of the Gram ("ghost") and the
materialised form. A parameter no rule covers (a custom op, a weight read outside its module, a
TorchScript model) is measured by the per-sample loop for that parameter alone, with a warning.

:func:`per_sample_grad_norms_reference` is the slow obvious loop, kept as the reference the fast path
is tested against. Models are evaluated in eval mode (BatchNorm with running statistics), so samples
are independent and per-sample gradients are well defined; the module's train/eval flags are restored.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
from torch import nn

from ...core.errors import Cancelled
from ..evaluate import loss_fn, module_outputs
from ._gn_capture import Tape, hooked, inspect_graph, sample_layouts
from ._gn_graph import GraphInterpreter, exported_graph
from ._gn_registry import KINDS, Call

__all__ = ["per_sample_grad_norms", "per_sample_grad_norms_batch", "per_sample_grad_norms_reference"]

#: Largest intermediate a rule may build at once, in elements (rows of a batch are processed in chunks).
CHUNK_ELEMENTS = 1 << 24

FALLBACK = (
    "per-sample gradient norms: {n} parameter(s) ({names}) are used by operations no per-layer rule covers; "
    "their part of each norm is computed by a per-sample loop, which is exact but much slower"
)
#: added to FALLBACK where recurrent layers are among them (by design: no rule for GRU/LSTM/RNN)
RECURRENT = "; recurrent layers (GRU, LSTM, RNN) have no per-layer rule and always take this loop"
_RECURRENT_NAMES = ("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")


def per_sample_grad_norms(model, data, *, batch_size: int = 256, device: torch.device | str = "cpu",
                          masks: Mapping[str, torch.Tensor] | None = None,
                          cancel: Callable[[], bool] | None = None,
                          on_logits: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> np.ndarray:
    """‖∇_θ ℓ(f_θ(x_i), y_i)‖₂ for every row of ``data`` (a GroupedDataset), in row order: (N,) float64.

    ``model``: a LoadedModel (a program with a fixed batch size gets its last batch padded, the padding
    ignored) or an ``nn.Module``, already on ``device``. ``masks``: parameter name -> bool keep-mask;
    masked-out entries contribute nothing. ``cancel``: checked before each batch (raises Cancelled).
    ``on_logits(logits, y)``: called for each batch, in row order, with the (B, K) outputs of the forward pass
    the norms already ran (detached), so a caller that needs the outputs too pays no second pass.
    """
    module, fixed = _unwrap(model)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    masks = _prepare_masks(module, masks)
    out = []
    with _eval_mode(module):
        engine = _Engine(module, fixed, masks)
        for xb, yb in data.batches(fixed or batch_size, torch.device(device)):
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            out.append(engine.norms_sq(xb, yb).cpu())
            if on_logits is not None:
                on_logits(engine.logits, yb)
    return torch.cat(out).clamp_min(0).sqrt().numpy()


def per_sample_grad_norms_batch(module_or_model, x: torch.Tensor, y: torch.Tensor, *,
                                masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """(B,) float64 per-sample gradient norms for one batch ``x`` (B, ...), ``y`` (B,) (fast path)."""
    module, fixed = _unwrap(module_or_model)
    _check_batch(x, y)
    masks = _prepare_masks(module, masks)
    with _eval_mode(module):
        return _Engine(module, fixed, masks).norms_sq(x, y).clamp_min(0).sqrt()


def per_sample_grad_norms_reference(module, x: torch.Tensor, y: torch.Tensor, *,
                                    masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """(B,) float64: the slow obvious loop, one forward and backward per sample (the test reference)."""
    module, fixed = _unwrap(module)
    _check_batch(x, y)
    masks = _prepare_masks(module, masks)
    params = {name: p for name, p in module.named_parameters() if p.requires_grad}
    with _eval_mode(module):
        return _loop_norms_sq(module, fixed, x, y, params, masks).sqrt()


# --- the fast path --------------------------------------------------------------------------------------

class _Engine:
    """Per-sample squared gradient norms of one model, batch by batch."""

    def __init__(self, module: nn.Module, fixed: int | None, masks: dict[str, torch.Tensor]):
        self.module, self.fixed, self.masks = module, fixed, masks
        self.params = {name: p for name, p in module.named_parameters() if p.requires_grad}
        self.trainable = {id(p): name for name, p in self.params.items()}
        self.graph = exported_graph(module)
        # Whether the model's input must carry a gradient so that every captured call's backward runs
        # (only when a covered layer sits behind an op that mixes in a parameter before it); learned.
        self.root_grad = False
        self._warned: set[str] = set()
        # call key -> whether its dim 0 is the sample, traced by probe passes (None: not probed yet, or
        # a program with a fixed batch, which cannot run other sizes)
        self.layouts: dict | None = None
        self._probed = bool(fixed)
        self.logits: torch.Tensor | None = None      # the last pass's outputs (B, K), detached

    #: batch sizes of the probe passes that trace the sample dimension through every covered call
    PROBE_SIZES = (2, 3)

    def _probe(self, x: torch.Tensor) -> None:
        """Run the model on the first row repeated 2 and 3 times, recording each covered call's input and
        output shapes: the calls whose dim 0 follows the batch size, and nothing else does, are per-sample
        (:func:`._gn_capture.sample_layouts`). Cheap (two tiny forwards, no backward), once per model."""
        self._probed = True
        shapes = {}
        try:
            # with gradients on, as in the real pass: under no_grad torch takes fused inference paths
            # (nn.TransformerEncoderLayer's, nn.MultiheadAttention's) that call none of the layers inside
            with torch.enable_grad():
                for b in self.PROBE_SIZES:
                    root = _each(x, lambda t: t[:1].expand(b, *t.shape[1:]).contiguous())
                    tape = Tape(self.trainable, root, probe={})
                    with hooked(self.module, tape):
                        run = self.module if self.graph is None else partial(_interpret, self.graph, tape)
                        module_outputs(run, root, None)
                    shapes[b] = tape.probe
        except Exception:  # noqa: BLE001 - a model that refuses these sizes: the stricter size check applies
            return
        self.layouts = sample_layouts(shapes)

    def norms_sq(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fixed and x.shape[0] > self.fixed:
            return torch.cat([self.norms_sq(x[i:i + self.fixed], y[i:i + self.fixed])
                              for i in range(0, x.shape[0], self.fixed)])
        n = x.shape[0]
        if not self._probed:
            self._probe(x)
        tape, loss, report = self._pass(x, y, self.root_grad)
        if report.unreached and not self.root_grad and any(t.is_floating_point() for t in _tensors(x)):
            self.root_grad = True
            tape.release()
            del loss
            tape, loss, report = self._pass(x, y, True)
        try:
            inputs = [leaf for leaf, _ in tape.leaves] + [t for t in _tensors(tape.root) if t.requires_grad]
            if inputs and loss.requires_grad:
                grads = torch.autograd.grad(loss, inputs, allow_unused=True)
                for (_, call), g in zip(tape.leaves, grads):
                    call.add_grad(g)
        finally:
            del loss
            tape.release()
        with torch.no_grad():
            return self._combine(tape, report, x, y)

    def _combine(self, tape: Tape, report, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample squared norms from the captured calls (no autograd), plus the fallback's share."""
        n = x.shape[0]
        fallback = set(report.uncovered) | tape.uncovered
        for call in [*report.unreached, *(c for c in tape.calls if c.inp._version != c.version)]:
            fallback |= {id(p) for p in call.params.values() if p is not None and id(p) in self.trainable}
        uses: dict[int, list[tuple[Call, str]]] = defaultdict(list)
        for call in tape.calls:
            if call.grad is None:      # the output did not reach the loss: zero gradient
                continue
            for role, p in call.params.items():
                if p is not None and id(p) in self.trainable and id(p) not in fallback:
                    uses[id(p)].append((call, role))

        total = torch.zeros(n, dtype=torch.float64, device=x.device)
        single: dict[Call, dict[str, torch.Tensor | None]] = defaultdict(dict)
        for pid, used in uses.items():
            mask = self.masks.get(self.trainable[pid])
            spans = [call.rows.get(role) for call, role in used]
            if len(used) == 1 or _disjoint(spans):
                # one use, or uses of disjoint rows (attention's q, k, v projections from one packed
                # weight): the squared norms of the parts add up
                for (call, role), span in zip(used, spans):
                    single[call][role] = mask if mask is None or span is None else mask[span[0]:span[1]]
            else:                      # a shared parameter: per-sample gradients add up before the norm
                total += self._shared_norm_sq(used, mask, n)
        for call, roles in single.items():
            rule = KINDS[call.kind]
            for sl in _row_chunks(n, rule.elems_per_sample(call, roles)):
                total[sl] += rule.norm_sq(call.rows_of(sl), roles).double()
        if fallback:
            names = {self.trainable[pid]: self.params[self.trainable[pid]] for pid in fallback}
            self._warn(names)
            total += _loop_norms_sq(self.module, self.fixed, x, y, names, self.masks).to(total.device)
        return total

    def _pass(self, x, y, root_grad: bool):
        """One forward with capture; returns the tape, the summed loss and what the graph says."""
        n = x.shape[0]
        root = _padded(x, self.fixed).detach()
        if root_grad:
            for t in _tensors(root):
                if t.is_floating_point():
                    t.requires_grad_()
        tape = Tape(self.trainable, root, layouts=self.layouts)
        try:
            with torch.enable_grad(), hooked(self.module, tape):
                run = self.module if self.graph is None else partial(_interpret, self.graph, tape)
                logits = module_outputs(run, root, None)
                if logits.shape[0] != n:                  # drop a fixed-batch program's padding rows
                    logits = logits[:n]
                loss = loss_fn(logits, y.to(logits.device), reduction="sum")
            self.logits = logits.detach()                 # the batch's outputs, for callers that want them too
        except BaseException:
            tape.release()
            raise
        inputs = [leaf for leaf, _ in tape.leaves] + [t for t in _tensors(root) if t.requires_grad]
        return tape, loss, inspect_graph(loss.grad_fn, inputs, tape.calls, self.trainable)

    def _shared_norm_sq(self, used: list[tuple[Call, str]], mask, n: int) -> torch.Tensor:
        out = torch.zeros(n, dtype=torch.float64, device=used[0][0].grad.device)
        per = max(KINDS[c.kind].elems_per_sample(c, {r: None}) for c, r in used)
        per += used[0][0].params[used[0][1]].numel()
        shape = used[0][0].params[used[0][1]].shape
        for sl in _row_chunks(n, per):
            g = None
            for c, r in used:
                part = KINDS[c.kind].grad_sample(c.rows_of(sl), r)
                if r in c.rows:                      # the call used rows [start, stop) of the parameter
                    start, stop = c.rows[r]
                    full = part.new_zeros(part.shape[0], *shape)
                    full[:, start:stop] = part
                    part = full
                g = part if g is None else g + part
            if mask is not None:
                g = g * mask
            out[sl] = g.reshape(g.shape[0], -1).double().square().sum(1)
        return out

    def _warn(self, params: Mapping[str, torch.Tensor]) -> None:
        new = sorted(set(params) - self._warned)
        if new:
            self._warned |= set(new)
            shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
            recurrent = any(part in name for name in new for part in _RECURRENT_NAMES)
            warnings.warn(FALLBACK.format(n=len(new), names=shown) + (RECURRENT if recurrent else ""), stacklevel=5)


def _interpret(gm: torch.fx.GraphModule, tape: Tape, *inputs: torch.Tensor):
    return GraphInterpreter(gm, tape).run(*inputs)


def _disjoint(spans: list[tuple[int, int] | None]) -> bool:
    """Whether every use covers its own rows of the parameter, no two overlapping."""
    if any(s is None for s in spans):
        return False
    ordered = sorted(spans)
    return all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:]))


def _row_chunks(n: int, elems_per_sample: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, elems_per_sample))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _padded(x, fixed: int | None):
    """``x`` padded to a fixed batch by repeating its first row (the padding's outputs are dropped)."""
    if fixed is None or x.shape[0] == fixed:
        return x
    return _each(x, lambda t: torch.cat([t, t[:1].expand(fixed - t.shape[0], *t.shape[1:])]))


def _tensors(x) -> tuple[torch.Tensor, ...]:
    """The model's positional inputs in batch ``x``: a tensor, or the tensors of a multi-input batch
    (``fairprune.data.Inputs``)."""
    return tuple(getattr(x, "tensors", (x,)))


def _each(x, fn):
    """``fn`` applied to the tensor ``x``, or to each tensor of a multi-input batch."""
    return x.map(fn) if hasattr(x, "tensors") else fn(x)


# --- the slow path -----------------------------------------------------------------------------------------

def _loop_norms_sq(module, fixed: int | None, x: torch.Tensor, y: torch.Tensor, params: Mapping[str, torch.Tensor],
                   masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B,) float64 Σ over ``params`` of ‖mask ⊙ ∇ℓ_i‖², one forward and backward per sample."""
    names = list(params)
    tensors = [params[k] for k in names]
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    if not tensors:
        return out
    with torch.enable_grad():
        for i in range(x.shape[0]):
            logits = module_outputs(module, x[i:i + 1], fixed)
            loss = loss_fn(logits, y[i:i + 1].to(logits.device), reduction="sum")
            if not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            total = 0.0
            for name, g in zip(names, grads):
                if g is not None:
                    m = masks.get(name)
                    total += float((g if m is None else g * m).double().square().sum())
            out[i] = total
    return out


# --- inputs --------------------------------------------------------------------------------------------------

def _unwrap(model) -> tuple[nn.Module, int | None]:
    if isinstance(model, nn.Module):
        return model, None
    module = getattr(model, "module", None)
    if isinstance(module, nn.Module):
        return module, getattr(model, "fixed_batch_size", None)
    raise TypeError(f"model must be a LoadedModel or a torch.nn.Module; got {type(model).__name__}")


def _check_batch(x, y) -> None:
    if not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in _tensors(x)) or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a batch tensor (B, ...) with B >= 1; got {got}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be a label tensor of shape ({x.shape[0]},) to match x; got {got}")


def _prepare_masks(module: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Name -> float 0/1 mask on the parameter's device and dtype; names and shapes checked."""
    if not masks:
        return {}
    params = dict(module.named_parameters())
    out = {}
    for name, m in masks.items():
        if name not in params:
            known = ", ".join(list(params)[:4])
            raise ValueError(f"masks names {name!r}, which is not a parameter of the model; expected names from "
                             f"model.named_parameters() ({known}, ...)")
        p = params[name]
        if not isinstance(m, torch.Tensor) or tuple(m.shape) != tuple(p.shape):
            got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"mask for {name!r} must be a bool tensor of the parameter's shape {tuple(p.shape)}; "
                             f"got {got}")
        out[name] = (m != 0).to(device=p.device, dtype=p.dtype)
    return out


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (flags set directly: an exported graph module's ``eval()`` raises)."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, t in flags:
            m.training = t
