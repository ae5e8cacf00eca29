"""Which weights are prunable, and masks that can always be undone.

Masks are applied by writing ``dense * mask`` into the parameters while a copy of the dense values is
kept (:class:`MaskedModel`). That works on every module the engine loads: an ``nn.Module``, a
TorchScript module, and the module a ``.pt2`` program gives back, whose graph reads its weights
directly, so ``torch.nn.utils.prune``'s forward-pre-hooks would never fire there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from ...data._inputs import as_args

__all__ = ["prunable_parameters", "prunable_kinds", "prunable_by_kind", "PRUNABLE_DEFINITION", "PRUNABLE_KINDS",
           "prune_embeddings", "prunable_definition", "MaskedModel", "classifier_parameter"]

_PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: The layer kinds a prunable weight belongs to, in the order results list them.
PRUNABLE_KINDS = ("linear", "conv", "attention", "recurrent", "embedding")

#: The one definition of "prunable", for an nn.Module and a .pt2 program alike (stated in every result).
PRUNABLE_DEFINITION = (
    "weight tensors (dim >= 2) of linear and conv layers, attention projections (in_proj_weight, "
    "q/k/v_proj_weight, out_proj.weight) and recurrent layers (weight_ih_l*, weight_hh_l*); biases, "
    "normalisation parameters and learned tokens/position tables are kept; nn.Embedding tables are kept "
    "(prune_embeddings / --prune-embeddings prunes them too)"
)
_WITH_EMBEDDINGS = PRUNABLE_DEFINITION.replace(
    "nn.Embedding tables are kept (prune_embeddings / --prune-embeddings prunes them too)",
    "nn.Embedding tables are pruned too (prune_embeddings / --prune-embeddings)")

# Whether nn.Embedding tables count as prunable where a caller does not say (prune_embeddings(True) in a block).
_EMBEDDINGS: ContextVar[bool] = ContextVar("fairprune_prune_embeddings", default=False)


@contextmanager
def prune_embeddings(include: bool = True) -> Iterator[None]:
    """Within the block, ``nn.Embedding`` tables are prunable wherever ``embeddings`` is not passed: every
    method, mask and count of one audit then uses the same definition (``audit(..., prune_embeddings=True)``,
    ``fairprune audit --prune-embeddings``)."""
    token = _EMBEDDINGS.set(bool(include))
    try:
        yield
    finally:
        _EMBEDDINGS.reset(token)


def prunable_definition(embeddings: bool | None = None) -> str:
    """:data:`PRUNABLE_DEFINITION`, saying whether embedding tables are included (default: the current block's)."""
    if _EMBEDDINGS.get() if embeddings is None else embeddings:
        return _WITH_EMBEDDINGS
    return PRUNABLE_DEFINITION


_ATTENTION = re.compile(r"(in_proj_weight|[qkv]_proj_weight)")
_RECURRENT = re.compile(r"weight_(ih|hh)_l\d+(_reverse)?")
# Layer classes by name: TorchScript modules keep theirs as ``original_name``.
_CLASS_KIND = {"Linear": "linear", "NonDynamicallyQuantizableLinear": "linear", "Conv1d": "conv", "Conv2d": "conv",
               "Conv3d": "conv", "Embedding": "embedding"}
# What a .pt2 graph does with a weight: the first aten op reading it (through transposes and views).
_OP_KIND = {"linear": "linear", "addmm": "linear", "mm": "linear", "matmul": "linear", "convolution": "conv",
            "conv1d": "conv", "conv2d": "conv", "conv3d": "conv", "embedding": "embedding"}
_PASS_THROUGH = {"t", "permute", "transpose", "view", "reshape", "_to_copy", "to", "contiguous", "alias", "detach"}


def _graph_kinds(module: nn.Module) -> dict[str, str]:
    """Parameter name -> kind, from what the graphs inside ``module`` (a loaded .pt2 program) do with it."""
    out: dict[str, str] = {}
    for prefix, sub in module.named_modules():
        graph = getattr(sub, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op != "get_attr":
                continue
            kind, frontier = None, list(node.users)
            for _ in range(4):                      # through at most a few transposes / views
                nxt = []
                for user in frontier:
                    op = getattr(getattr(user.target, "_overloadpacket", None), "__name__", "")
                    if op in _OP_KIND:
                        kind = _OP_KIND[op]
                        break
                    if op in _PASS_THROUGH:
                        nxt.extend(user.users)
                if kind or not nxt:
                    break
                frontier = nxt
            if kind:
                out[f"{prefix}.{node.target}" if prefix else str(node.target)] = kind
    return out


def prunable_kinds(module: nn.Module, *, embeddings: bool | None = None) -> dict[str, str]:
    """Name -> layer kind (see :data:`PRUNABLE_KINDS`) of every prunable weight, in ``named_parameters`` order.

    One definition (:data:`PRUNABLE_DEFINITION`) for every way a model arrives: the kind comes from the
    layer owning the parameter (``nn.Linear``, ``nn.Conv*``, ``nn.MultiheadAttention``, ``nn.LSTM``/``GRU``/
    ``RNN``, ``nn.Embedding``; a TorchScript module's ``original_name``), else from the parameter's name
    (attention and recurrent weights keep torch's names in a ``.pt2`` program), else from the op a
    ``.pt2`` graph feeds it to (linear/addmm/matmul, convolution, embedding). ``embeddings``: include
    ``nn.Embedding`` tables (left out by default, as the paper prunes conv and linear weights; None: as the
    enclosing :func:`prune_embeddings` block says).
    """
    if embeddings is None:
        embeddings = _EMBEDDINGS.get()
    owners = dict(module.named_modules())
    graph = None
    out: dict[str, str] = {}
    for name, p in module.named_parameters():
        if p.dim() < 2:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = owners.get(owner_name)
        cls = getattr(owner, "original_name", None) or type(owner).__name__
        if _ATTENTION.fullmatch(leaf) or name == "out_proj.weight" or name.endswith(".out_proj.weight"):
            kind = "attention"
        elif _RECURRENT.fullmatch(leaf):
            kind = "recurrent"
        elif leaf != "weight":
            continue
        elif isinstance(owner, _PRUNABLE_TYPES):
            kind = "conv" if isinstance(owner, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else "linear"
        elif isinstance(owner, nn.Embedding) or cls in _CLASS_KIND:
            kind = _CLASS_KIND.get(cls, "embedding")
        else:
            if graph is None:
                graph = _graph_kinds(module)
            kind = graph.get(name)
            if kind is None:
                continue
        if kind == "embedding" and not embeddings:
            continue
        out[name] = kind
    return out


def prunable_parameters(module: nn.Module, *, embeddings: bool | None = None) -> dict[str, nn.Parameter]:
    """Name -> parameter for every prunable weight (:func:`prunable_kinds`; :data:`PRUNABLE_DEFINITION`).

    Biases and normalisation parameters are kept, as in the paper.
    """
    kinds = prunable_kinds(module, embeddings=embeddings)
    return {n: p for n, p in module.named_parameters() if n in kinds}


def prunable_by_kind(module: nn.Module, *, embeddings: bool | None = None) -> dict[str, int]:
    """Number of prunable weights per layer kind (every kind in :data:`PRUNABLE_KINDS`, zeros included)."""
    params = dict(module.named_parameters())
    counts = dict.fromkeys(PRUNABLE_KINDS, 0)
    for name, kind in prunable_kinds(module, embeddings=embeddings).items():
        counts[kind] += params[name].numel()
    return counts


def classifier_parameter(module: nn.Module, example_input: torch.Tensor) -> str | None:
    """Name of the weight of the last prunable layer executed in a forward pass (the classifier).

    Structured pruning never removes the classifier's outputs. Modules without typed layers fall back
    to the last prunable parameter in registration order.
    """
    order: list[str] = []
    names = {id(m): n for n, m in module.named_modules()}
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(names[id(mod)]))
        for m in module.modules() if isinstance(m, _PRUNABLE_TYPES)
    ]
    try:
        if hooks:
            with torch.no_grad():
                module(*as_args(example_input))   # a tensor, or several positional inputs (Inputs)
    finally:
        for h in hooks:
            h.remove()
    if order:
        return f"{order[-1]}.weight" if order[-1] else "weight"
    params = list(prunable_parameters(module))
    return params[-1] if params else None


class MaskedModel:
    """Applies masks to a module's parameters in place, keeping the dense values to restore.

    >>> mm = MaskedModel(model)            # snapshot of the dense parameters
    >>> mm.apply(masks)                    # model now computes with pruned weights
    >>> mm.restore()                       # exactly the dense weights again
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self._params = dict(module.named_parameters())
        self._dense = {n: p.detach().clone() for n, p in self._params.items()}
        self.masks: dict[str, torch.Tensor] = {}

    def apply(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Restore dense weights, then zero every entry where ``masks[name]`` is False."""
        unknown = sorted(set(masks) - set(self._params))
        if unknown:
            raise KeyError(f"masks name parameters the model does not have: {unknown[:5]}")
        self.restore()
        with torch.no_grad():
            for name, mask in masks.items():
                p = self._params[name]
                if mask.shape != p.shape:
                    raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, parameter has {tuple(p.shape)}")
                p.mul_(mask.to(device=p.device, dtype=p.dtype))
        self.masks = {n: m.to(torch.bool) for n, m in masks.items()}

    def reapply(self) -> None:
        """Zero the masked entries again (after an optimiser step moved them)."""
        with torch.no_grad():
            for name, mask in self.masks.items():
                p = self._params[name]
                p.mul_(mask.to(device=p.device, dtype=p.dtype))

    def restore(self) -> None:
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(self._dense[name].to(p.device))
        self.masks = {}

    def to(self, device) -> "MaskedModel":
        """Keep the dense snapshot beside the parameters after ``module.to(device)``."""
        self._dense = {n: t.to(device) for n, t in self._dense.items()}
        return self

    def weight_distance(self, names: list[str]) -> float:
        """||theta_pruned - theta_dense||_2 over the parameters ``names`` (the paper's ||θ̄ − θ*||)."""
        total = 0.0
        with torch.no_grad():
            for n in names:
                total += float((self._params[n].detach().double() - self._dense[n].to(self._params[n].device).double()).pow(2).sum())
        return total ** 0.5

    def achieved_sparsity(self, names: list[str]) -> float:
        """Fraction of entries that are exactly zero over the parameters ``names`` (measured, not assumed)."""
        zeros = total = 0
        with torch.no_grad():
            for n in names:
                p = self._params[n]
                zeros += int((p == 0).sum())
                total += p.numel()
        return zeros / total if total else 0.0
