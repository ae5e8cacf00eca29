"""Capturing each covered layer call's activation and output gradient during one batched backward.

Two ways in, one tape: forward hooks on ``nn.Module`` layers whose type has a rule (here), and an fx
Interpreter over a ``torch.export`` graph (``ExportedModule``) that intercepts the aten ops with a rule
(:mod:`._gn_graph`).
Each call's output gets a tensor hook *when it is produced*, so in-place ops that later modify the
output (torchvision's ``ReLU(inplace=True)``, ``out += identity``) do not matter: a hook registered
before an in-place change receives the gradient of the value before it.

A call whose input carries no gradient (the first layer) has its output replaced by a detached leaf
(cloned, so later in-place ops on it stay legal): the backward then stops there and never computes the
gradient of the model's input, and the leaf's gradient is the call's output gradient.

:func:`inspect_graph` walks the autograd graph before the backward and says which parameters are used
by ops no rule saw (e.g. a weight a module reads directly, a tied weight, a custom op): those must fall
back to a slower exact method.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from . import _gn_attention, _gn_rules  # noqa: F401  (registers every rule)
from ._gn_registry import KINDS, Call, module_extractor, module_forward
from ._gn_rules import _ln_call, param_call

__all__ = ["Tape", "hooked", "inspect_graph", "GraphReport", "sample_layouts"]


class Tape:
    """The calls of one forward pass, in order, and the leaves the backward differentiates for.

    ``trainable`` maps id(parameter) -> name for the parameters whose gradients count; ``root`` is the
    model's input tensor (or a multi-input batch, ``fairprune.data.Inputs``). Each call is known by a key: (its module or graph node, its occurrence).

    Which dimension holds the samples is proven, not assumed: ``layouts`` (key -> bool, from
    :func:`sample_layouts`: two probe passes with 2 and 3 rows) says where exactly dim 0 follows the batch
    size, every other dimension staying put; without it (a program with a fixed batch) dim 0 must have the
    batch's size and no other dimension may have it. ``probe``: a dict to fill with key -> (input shape,
    output shape) instead of capturing anything.
    """

    def __init__(self, trainable: dict[int, str], root: torch.Tensor, *, layouts: dict | None = None,
                 probe: dict | None = None):
        self.trainable = trainable
        self.root = root
        self._roots = {id(t) for t in getattr(root, "tensors", (root,))}   # a multi-input batch: each input
        self.calls: list[Call] = []
        self.leaves: list[tuple[torch.Tensor, Call]] = []
        self._handles: list = []
        self.batch = int(root.shape[0])
        self.layouts, self.probe = layouts, probe
        self._seen: Counter = Counter()
        # ids of trainable parameters that reach a leaf call's output through ops no rule covers
        self.uncovered: set[int] = set()

    def record(self, call: Call | None, key: object = None) -> torch.Tensor | None:
        """Keep ``call`` if it uses a trainable parameter and its rows are provably the samples; return the
        tensor to use downstream instead of its output (None: keep the output)."""
        if call is None or not any(id(p) in self.trainable for p in call.params.values() if p is not None):
            return None
        out = call.out
        if not isinstance(out, torch.Tensor) or not isinstance(call.inp, torch.Tensor):
            return None
        self._seen[key] += 1
        key = (key, self._seen[key])
        if self.probe is not None:
            self.probe[key] = (tuple(call.inp.shape), tuple(out.shape))
            return None
        if not out.requires_grad:
            return None
        dim = self._sample_dim(key, call)
        if dim is None:
            return None       # not captured: its parameters show up in the graph as uncovered, and fall back
        leaf = not call.inp.requires_grad or id(call.inp) in self._roots
        if dim:               # seen with the samples first; the rule never mixes this dimension (sample_dim_ok)
            call.inp, call.sample_dim = call.inp.movedim(dim, 0), dim
        call.version = call.inp._version
        self.calls.append(call)
        if leaf:
            self.uncovered |= _foreign_params(out.grad_fn, call, self.trainable)
            leaf = out.detach().requires_grad_()
            call.leaf = True
            self.leaves.append((leaf, call))
            return leaf.clone()
        call.node = out.grad_fn
        self._handles.append(out.register_hook(call.add_grad))
        return None

    def _sample_dim(self, key, call: Call) -> int | None:
        """The dimension of the call's input and output that provably holds the samples, or None. A
        sequence-first (T, B, E) activation has them on dim 1; a flattened (T·B, E) one on none. With
        probes (``layouts``), the one dimension that followed the batch size while every other stayed put;
        without (a program with a fixed batch), dim 0, and only where no other dimension has the batch's
        size (so no transpose or reshape can have moved the samples there). Either way the rule must be
        right with the samples there (``Rule.sample_dim_ok``: a linear layer never on its features)."""
        b, inp, out = self.batch, call.inp, call.out
        if self.layouts is not None:
            dim = self.layouts.get(key)
        else:
            dim = 0 if b == 1 or (b not in inp.shape[1:] and b not in out.shape[1:]) else None
        if dim is None or inp.dim() <= dim or out.dim() <= dim or inp.shape[dim] != b or out.shape[dim] != b:
            return None
        return dim if KINDS[call.kind].sample_dim_ok(call, dim) else None

    def release(self) -> None:
        """Drop the outputs, graph nodes and hooks once the backward is done. A hook lives on its
        output's autograd node, which Python's garbage collector cannot see into: the cycle
        call -> output -> node -> hook -> call would otherwise keep every activation alive."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for call in self.calls:
            call.out = call.node = None
        self.leaves.clear()


def _foreign_params(root, call: Call, trainable: dict[int, str]) -> set[int]:
    """Trainable parameters that reach ``root`` (a leaf call's output node, whose graph the tape cuts)
    other than as the call's own parameters, each exactly once: a weight computed from a parameter in
    ``forward`` (weight standardisation, ``parametrize``, ``weight_norm``) or a parameter used twice.
    Their gradients flow through ops no rule covers, so they must fall back."""
    if root is None:
        return set()
    own = {id(p) for p in call.params.values() if p is not None and id(p) in trainable}
    edges: Counter[int] = Counter()
    seen, stack = {root}, [root]
    while stack:
        fn = stack.pop()
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None and id(var) in trainable:
                edges[id(var)] += 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return {pid for pid, k in edges.items() if pid not in own or k != 1} | (own - set(edges))


def _on_forward(extract, tape: Tape, module: nn.Module, args: tuple, out):
    if not args or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    return tape.record(extract(module, args, out), module)


def sample_layouts(shapes: dict[int, dict]) -> dict:
    """key -> the dimension of the call's input and output that holds the samples (None: none provably
    does), from probe passes at batch sizes b (``shapes``: b -> {key: (input shape, output shape)}): the
    dimension equals b in every probe, in input and output alike, and no other dimension changes with b.
    A call missing from a probe (control flow that depends on the batch) is not proven."""
    sizes = sorted(shapes)
    out = {}
    for key in set.intersection(*(set(shapes[b]) for b in sizes)):
        first_in, first_out = shapes[sizes[0]][key]
        out[key] = next((d for d in range(min(len(first_in), len(first_out)))
                         if all(_follows(inp, first_in, d, b) and _follows(outp, first_out, d, b)
                                for b in sizes for inp, outp in [shapes[b][key]])), None)
    return out


def _follows(shape: tuple, first: tuple, dim: int, b: int) -> bool:
    """``shape`` is ``first`` with dimension ``dim`` set to the batch size ``b``."""
    return len(shape) == len(first) and shape[dim] == b and all(
        s == f for i, (s, f) in enumerate(zip(shape, first)) if i != dim)


@contextmanager
def hooked(module: nn.Module, tape: Tape) -> Iterator[None]:
    """While capturing: forward hooks on every layer of ``module`` that a rule covers, the capturing
    forward of each layer that has one (``nn.MultiheadAttention``), and, where some trainable parameter
    belongs to no covered layer (ViT's class token and position embedding, a layer scale), a torch function
    mode that records that parameter's use in ``x + P``, ``x * P`` or ``P.expand(...)``. All undone on exit."""
    handles, replaced = [], []
    covered: set[int] = set()
    try:
        for m in module.modules():
            forward = module_forward(m) if "forward" not in vars(m) else None     # not over a forward of its own
            if forward is not None:
                m.forward = partial(forward, m, tape.record)
                replaced.append(m)
            else:
                extract = module_extractor(m)
                if extract is None:
                    continue
                handles.append(m.register_forward_hook(partial(_on_forward, extract, tape)))
            covered |= {id(p) for p in m.parameters(recurse=False)}
        loose = {id(p) for p in module.parameters() if id(p) in tape.trainable and id(p) not in covered}
        with _ParamOps(tape, loose) if loose else nullcontext():
            yield
    finally:
        for h in handles:
            h.remove()
        for m in replaced:
            del m.forward


def _param_ops() -> dict:
    t = torch.Tensor
    ops = {f: "add" for f in (torch.add, t.add, t.__add__, t.__radd__)}
    ops.update({f: "mul" for f in (torch.mul, t.mul, t.__mul__, t.__rmul__)})
    ops[t.expand] = "expand"
    return ops


_PARAM_OPS = _param_ops()


def _functional(func, args: tuple, kwargs: dict, out) -> Call | None:
    """``F.linear`` / ``F.layer_norm`` called directly on parameters (torchvision's ``LayerNorm2d`` overrides
    ``forward`` and calls ``F.layer_norm`` on its own weight): the same Call as the layer's rule makes."""
    def arg(i, name, default=None):
        return args[i] if len(args) > i else kwargs.get(name, default)

    if func is F.linear:
        return Call("linear", {"weight": arg(1, "weight"), "bias": arg(2, "bias")}, arg(0, "input"), out)
    if func is F.layer_norm:
        return _ln_call(arg(2, "weight"), arg(3, "bias"), arg(0, "input"), out, arg(1, "normalized_shape"),
                        arg(4, "eps", 1e-5))
    return None


class _ParamOps(TorchFunctionMode):
    """Records ``x + P``, ``x * P`` and ``P.expand(...)`` for the parameters ``loose`` (ids) on ``tape``
    (out-of-place ops only: an in-place one changes a tensor another op may already have saved), and
    ``F.linear`` / ``F.layer_norm`` whose parameters are all loose (a layer that overrides ``forward`` but
    still applies its own weight with the functional op)."""

    def __init__(self, tape: Tape, loose: set[int]):
        super().__init__()
        self.tape, self.loose = tape, loose

    def _is_loose(self, t) -> bool:
        return id(t) in self.loose

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear or func is F.layer_norm:
            call = _functional(func, args, kwargs, out)
            params = [p for p in call.params.values() if p is not None]
            if not params or not all(self._is_loose(p) or id(p) not in self.tape.trainable for p in params) \
                    or not isinstance(call.inp, torch.Tensor):
                return out
            named = next((self.tape.trainable[id(p)] for p in params if id(p) in self.tape.trainable), None)
            if named is None:
                return out
            new = self.tape.record(call, ("functional", call.kind, named))
            return out if new is None else new
        op = _PARAM_OPS.get(func)
        if op is None or len(args) < 1 or set(kwargs) - {"alpha"} or kwargs.get("alpha", 1) != 1:
            return out
        if op == "expand":
            call = param_call("expand", args[0], None, out, self._is_loose)
        elif len(args) == 2:
            call = param_call(op, args[1], args[0], out, self._is_loose) or \
                param_call(op, args[0], args[1], out, self._is_loose)
        else:
            return out
        if call is None:
            return out
        new = self.tape.record(call, ("param", op, self.tape.trainable[id(call.params["weight"])]))
        return out if new is None else new


@dataclass
class GraphReport:
    """What the autograd graph says about the captured calls.

    uncovered: ids of trainable parameters the graph uses through ops no rule captured;
    unreached: captured calls whose backward would not run (no path to a leaf the backward asks for).
    """

    uncovered: set[int] = field(default_factory=set)
    unreached: list[Call] = field(default_factory=list)


def inspect_graph(root: torch.autograd.graph.Node | None, inputs: list[torch.Tensor], calls: list[Call],
                  trainable: dict[int, str]) -> GraphReport:
    """Walk the autograd graph from the loss: count the edges into each parameter's gradient
    accumulator, and find which nodes lie on a path to one of ``inputs`` (the tensors the backward
    differentiates for; only those nodes run).

    A captured (non-leaf) call accounts for exactly one edge into each of its parameters, so a
    parameter with more edges than captured calls is also used by something no rule saw.
    """
    report = GraphReport()
    if root is None:
        return report
    input_ids = {id(t) for t in inputs}
    children: dict[object, list[object]] = {}
    edges: Counter[int] = Counter()
    targets = set()
    stack = [root]
    children[root] = []
    while stack:
        fn = stack.pop()
        kids = children[fn]
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None:
                if id(var) in trainable:
                    edges[id(var)] += 1
                if id(var) in input_ids:
                    targets.add(nxt)
            kids.append(nxt)
            if nxt not in children:
                children[nxt] = []
                stack.append(nxt)
    reaches = _reaching(children, targets, root)
    uses: Counter[int] = Counter()
    for call in calls:
        if call.leaf or call.node not in children:
            continue          # a leaf's parameters are cut off the graph; an unused output has no node
        if call.node not in reaches:
            report.unreached.append(call)
            continue
        for p in call.params.values():
            if p is not None and id(p) in trainable:
                uses[id(p)] += 1
    report.uncovered = {pid for pid in set(edges) | set(uses) if edges[pid] != uses[pid]}
    return report


def _reaching(children: dict[object, list[object]], targets: set, root) -> set:
    """Nodes from which some node in ``targets`` can be reached (iterative post-order)."""
    reach = set(targets)
    done = set()
    stack = [(root, False)]
    while stack:
        fn, expanded = stack.pop()
        if expanded:
            if any(k in reach for k in children[fn]):
                reach.add(fn)
            done.add(fn)
            continue
        if fn in done:
            continue
        stack.append((fn, True))
        stack.extend((k, False) for k in children[fn] if k not in done)
    return reach
