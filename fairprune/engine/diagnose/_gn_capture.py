"""Capturing each covered layer call's activation and output gradient during one batched backward.

Two ways in, one tape: forward hooks on ``nn.Module`` layers whose type has a rule, and an fx
Interpreter over a ``torch.export`` graph (``ExportedModule``) that intercepts the aten ops with a rule.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from . import _gn_rules  # noqa: F401  (registers every rule)
from ._gn_registry import ATEN_RULES, AtenCall, Call, module_extractor

__all__ = ["Tape", "hooked", "exported_graph", "GraphInterpreter", "inspect_graph", "GraphReport", "sample_layouts"]


class Tape:
    """The calls of one forward pass, in order, and the leaves the backward differentiates for.

    ``trainable`` maps id(parameter) -> name for the parameters whose gradients count; ``root`` is the
    model's input tensor. Each call is known by a key: (its module or graph node, its occurrence).

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
        if not self._per_sample(key, call.inp, out):
            return None       # not captured: its parameters show up in the graph as uncovered, and fall back
        call.version = call.inp._version
        self.calls.append(call)
        if not call.inp.requires_grad or call.inp is self.root:
            self.uncovered |= _foreign_params(out.grad_fn, call, self.trainable)
            leaf = out.detach().requires_grad_()
            call.leaf = True
            self.leaves.append((leaf, call))
            return leaf.clone()
        call.node = out.grad_fn
        self._handles.append(out.register_hook(partial(_keep_grad, call)))
        return None

    def _per_sample(self, key, inp: torch.Tensor, out: torch.Tensor) -> bool:
        """Whether dim 0 of the call's input and output is provably the sample (a sequence-first (T, B, E)
        or flattened (T·B, E) activation inside attention is not): both have the batch's size there, and
        the probes showed that only dim 0 follows the batch size (``layouts``), or, without probes, no
        other dimension has the batch's size (so no transpose or reshape can have moved the sample there)."""
        b = self.batch
        if inp.dim() == 0 or out.dim() == 0 or inp.shape[0] != b or out.shape[0] != b:
            return False
        if self.layouts is not None:
            return bool(self.layouts.get(key, False))
        return b == 1 or (b not in inp.shape[1:] and b not in out.shape[1:])

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


def _keep_grad(call: Call, grad: torch.Tensor) -> None:
    call.grad = grad if call.grad is None else call.grad + grad


def _on_forward(extract, tape: Tape, module: nn.Module, args: tuple, out):
    if not args or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    return tape.record(extract(module, args, out), module)


def sample_layouts(shapes: dict[int, dict]) -> dict:
    """key -> whether the call's dim 0 is the sample, from probe passes at batch sizes b (``shapes``:
    b -> {key: (input shape, output shape)}): dim 0 equals b in every probe and no other dimension
    changes with b. A call missing from a probe (control flow that depends on the batch) is not proven."""
    sizes = sorted(shapes)
    out = {}
    for key in set.intersection(*(set(shapes[b]) for b in sizes)):
        first_in, first_out = shapes[sizes[0]][key]
        out[key] = all(len(inp) > 0 and len(outp) > 0 and inp[0] == b and outp[0] == b
                       and inp[1:] == first_in[1:] and outp[1:] == first_out[1:]
                       for b in sizes for inp, outp in [shapes[b][key]])
    return out


@contextmanager
def hooked(module: nn.Module, tape: Tape) -> Iterator[None]:
    """Forward hooks on every layer of ``module`` that a rule covers, removed on exit."""
    handles = []
    try:
        for m in module.modules():
            extract = module_extractor(m)
            if extract is not None:
                handles.append(m.register_forward_hook(partial(_on_forward, extract, tape)))
        yield
    finally:
        for h in handles:
            h.remove()


def exported_graph(module: nn.Module) -> torch.fx.GraphModule | None:
    """The fx graph to interpret for a ``torch.export`` program (``ExportedModule`` or the graph module
    ``ExportedProgram.module()`` gives), else None."""
    from ...zoo import ExportedModule

    gm = module.program if isinstance(module, ExportedModule) else module
    if not isinstance(gm, torch.fx.GraphModule):
        return None
    if any(n.op == "call_function" and n.target in ATEN_RULES for n in gm.graph.nodes):
        return gm
    return None


class GraphInterpreter(torch.fx.Interpreter):
    """Runs an fx graph node by node, recording the calls of covered aten ops on ``tape``."""

    def __init__(self, gm: torch.fx.GraphModule, tape: Tape):
        super().__init__(gm)
        self.tape = tape
        self._attrs = {n: self.fetch_attr(n.target) for n in gm.graph.nodes if n.op == "get_attr"}

    def _attr(self, node: torch.fx.Node) -> torch.Tensor | None:
        value = self._attrs.get(node)
        return value if isinstance(value, torch.Tensor) else None

    def run_node(self, n: torch.fx.Node):
        extract = ATEN_RULES.get(n.target) if n.op == "call_function" else None
        if extract is None:
            return super().run_node(n)
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = n.target(*args, **kwargs)
            new = self.tape.record(extract(AtenCall(n, args, kwargs, out, self._attr)), n)
        if new is None:
            return out
        if isinstance(out, (tuple, list)):
            return type(out)([new, *out[1:]])
        return new


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
