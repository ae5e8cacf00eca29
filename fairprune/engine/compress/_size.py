"""The bytes a compressed model ships as, measured by serialising its tensors with safetensors.

- A module quantized by torchao's ``quantize_`` holds tensor subclasses (``Int8Tensor``): each is
  stored as the plain tensors it flattens to (``__tensor_flatten__``: int8 ``qdata``, float32
  ``scale``, ...), under ``NAME.qdata`` etc.
- A PT2E-converted graph holds what its graph reads (``get_attr``): int8 weight constants, their
  per-channel scales and zero points, float biases; the float weights it replaced are dropped.
- fp16 / bf16 modules: their state_dict at that dtype.
- With a 2:4 step, every tensor that follows the 2:4 pattern is packed (kept values + 2-bit
  positions, :func:`fairprune.engine.footprint.nm_tensors`), int8 values included.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from ..footprint import keep_once, nm_tensors, serialised_size

__all__ = ["variant_tensors", "variant_size"]


def _is_subclass(t) -> bool:
    return isinstance(t, torch.Tensor) and type(t) not in (torch.Tensor, nn.Parameter) and \
        hasattr(t, "__tensor_flatten__")


def variant_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> plain CPU tensor for every tensor the compressed module stores (a storage once)."""
    from torch.sparse import SparseSemiStructuredTensor

    out: dict[str, torch.Tensor] = {}
    seen: set = set()

    def add(name: str, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        if isinstance(t, SparseSemiStructuredTensor):
            t = t.to_dense()          # shipped as its 2:4 dense form, packed below
        if _is_subclass(t):
            names, _ctx = t.__tensor_flatten__()
            for part in names:
                add(f"{name}.{part}", getattr(t, part))
            return
        keep_once(out, seen, name, t)

    if isinstance(module, torch.fx.GraphModule):
        for node in module.graph.nodes:
            if node.op == "get_attr":
                obj = module
                for part in node.target.split("."):
                    obj = getattr(obj, part)
                add(node.target, obj)
    else:
        for name, t in module.state_dict().items():
            add(name, t)
    return out


def variant_size(module: nn.Module, *, nm: bool) -> tuple[int, dict]:
    """(size_bytes, storage) of the compressed module: safetensors bytes of :func:`variant_tensors` (2:4
    tensors packed when ``nm``); ``storage`` = {"format", "bytes_by_dtype", "nm24_packed"}."""
    tensors = variant_tensors(module)
    metadata: dict = {}
    packed = 0
    if nm:
        tensors, metadata = nm_tensors(tensors)
        packed = sum(1 for n in tensors if n.endswith(".nm_values"))
    size = serialised_size(tensors, metadata or None)
    by_dtype: Counter = Counter()
    for t in tensors.values():
        by_dtype[str(t.dtype).replace("torch.", "")] += t.numel() * t.element_size()
    return size, {"format": "safetensors", "bytes_by_dtype": dict(sorted(by_dtype.items())), "nm24_packed": packed}
