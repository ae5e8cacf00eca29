"""Capturing the covered calls of a ``torch.export`` program: an fx Interpreter that records aten ops with a rule.

The program's graph is run node by node; each aten op with a rule (``ATEN_RULES``) becomes a call on the
:class:`._gn_capture.Tape`, exactly as a forward hook records a module's call. Two readings keep a call's rows
the samples where the graph hides them: a linear layer on a flattened ``(T·B, E)`` view is run on the tensor
before the flattening (the same rows, so the same values), and one whose weight or bias is ``chunk``/``split``
rows of a parameter (cross-attention's packed in-projection) uses its own slice of that parameter.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn

from ._gn_capture import Tape
from ._gn_registry import ATEN_RULES, AtenCall

__all__ = ["exported_graph", "GraphInterpreter"]


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
        # flattening views that feed a linear layer -> the tensor each flattened, once run
        self._flattening: dict[torch.fx.Node, torch.Tensor | None] = {
            n.args[0]: None for n in gm.graph.nodes
            if n.op == "call_function" and n.target is torch.ops.aten.linear.default and n.args
            and isinstance(n.args[0], torch.fx.Node) and n.args[0].target in _FLATTENING
            and isinstance(n.args[0].args[0], torch.fx.Node)}

    def _attr(self, node: torch.fx.Node) -> torch.Tensor | None:
        value = self._attrs.get(node)
        return value if isinstance(value, torch.Tensor) else None

    def run_node(self, n: torch.fx.Node):
        extract = ATEN_RULES.get(n.target) if n.op == "call_function" else None
        if extract is None:
            out = super().run_node(n)
            if n in self._flattening:          # keep what it flattens (the interpreter frees it after this)
                self._flattening[n] = self.env.get(n.args[0])
            return out
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            rows, parts = None, {}
            if n.target is torch.ops.aten.linear.default:
                seen = self._unflattened(n)
                if seen is not None:
                    args, rows = (seen, *args[1:]), args[0].shape[0]
                args, parts = self._param_rows(n, args)
            out = n.target(*args, **kwargs)
            call = extract(AtenCall(n, args, kwargs, out, self._attr, self._is_param))
            if call is not None:
                for role, (param, span) in parts.items():
                    call.params[role], call.rows[role] = param, span
            new = self.tape.record(call, n)
        if new is not None:
            out = type(out)([new, *out[1:]]) if isinstance(out, (tuple, list)) else new
        return out if rows is None else out.reshape(rows, out.shape[-1])

    def _param_rows(self, n: torch.fx.Node, args: tuple) -> tuple[tuple, dict]:
        """A linear layer's weight and bias that are rows of a parameter split by ``chunk``/``split`` (attention's
        packed in-projection for cross-attention): each replaced by its own slice of the parameter (the same
        values; one autograd edge into the parameter per use, as :func:`inspect_graph` counts them), and
        role -> (parameter, (start, stop)) for the call."""
        parts = {}
        args = list(args)
        for i, role in ((1, "weight"), (2, "bias")):
            if len(n.args) <= i or len(args) <= i:
                continue
            node, value = n.args[i], args[i]
            src = node.args[0] if isinstance(node, torch.fx.Node) and node.target is operator.getitem else None
            if not isinstance(src, torch.fx.Node) or src.target not in _SPLITS or not src.args:
                continue
            dim = src.args[2] if len(src.args) > 2 else src.kwargs.get("dim", 0)
            param = self._attr(src.args[0]) if isinstance(src.args[0], torch.fx.Node) else None
            if dim != 0 or param is None or not self._is_param(param) or not isinstance(value, torch.Tensor):
                continue
            if (value.untyped_storage().data_ptr() != param.untyped_storage().data_ptr()
                    or value.shape[1:] != param.shape[1:] or value.stride() != param.stride() or param.stride(0) == 0):
                continue
            start, extra = divmod(value.storage_offset() - param.storage_offset(), param.stride(0))
            if extra or start < 0 or start + value.shape[0] > param.shape[0]:
                continue
            args[i] = param[start:start + value.shape[0]]
            parts[role] = (param, (start, start + value.shape[0]))
        return tuple(args), parts

    def _is_param(self, t) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self.tape.trainable

    def _unflattened(self, n: torch.fx.Node) -> torch.Tensor | None:
        """For a linear layer on a (R, E) view of a tensor X whose leading dims multiply to R and trailing
        dims to E (attention's out-projection on (T·B, E), flattened from (T, B, H, E/H)), X seen as
        (*leading, E): the same rows, so the same result, and the probes can then trace the samples to one
        of the leading dims. None where the input is not such a view."""
        src = n.args[0] if n.args else None
        if src not in self._flattening:
            return None
        x, flat = self._flattening[src], self.env.get(src)
        self._flattening[src] = None
        if not isinstance(x, torch.Tensor) or not isinstance(flat, torch.Tensor) or flat.dim() != 2 or x.dim() < 3:
            return None
        rows, feats = flat.shape
        for j in range(x.dim() - 1, 0, -1):
            if math.prod(x.shape[j:]) == feats and math.prod(x.shape[:j]) == rows:
                return x.reshape(*x.shape[:j], feats)
        return None


_SPLITS = {torch.ops.aten.chunk.default, torch.ops.aten.split.Tensor, torch.ops.aten.split_with_sizes.default,
           torch.ops.aten.unsafe_split.Tensor, torch.ops.aten.unsafe_chunk.default}
_FLATTENING = {torch.ops.aten.reshape.default, torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default}
