"""LoadedModel: a model ready for inference and where it came from (what every zoo loader returns)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LoadedModel"]


@dataclass(eq=False)
class LoadedModel:
    """A model ready for inference, and where it came from.

    ``module`` is in eval form on CPU; called on a batch (N, ...) it returns logits (N, K). ``kind``
    says what the file held: "weights" (bare weights put into registry architecture ``arch``),
    "pt2", "torchscript", "hf" (a Hugging Face checkpoint folder, ``arch`` its config's architecture), or
    "module" for an in-memory model. ``sha256`` fingerprints the file's
    bytes (for "module", the state_dict's tensors) for provenance. A ``.pt2`` exported with a static
    batch dimension only runs on batches of exactly ``fixed_batch_size`` rows (callers pad the last
    batch); ``input_shape`` is the per-sample shape a ``.pt2`` program was exported for, when static.
    """

    module: nn.Module
    name: str
    kind: str                                   # "pt2" | "torchscript" | "weights" | "module" | "hf"
    sha256: str
    arch: str | None = None
    fixed_batch_size: int | None = None
    path: str | None = None
    input_shape: tuple[int, ...] | None = None

    @classmethod
    def from_module(cls, module: nn.Module, *, name: str) -> LoadedModel:
        """Wrap an in-memory model (demos, tests); puts it in eval mode."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
        return cls(module=module.eval(), name=name, kind="module", sha256=_state_dict_sha256(module))

    @property
    def parameters(self) -> int:
        """Number of parameters, trainable or not (a tensor shared by two layers counts once)."""
        return sum(p.numel() for p in self.module.parameters())


def _state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over the state_dict: each entry's name, dtype, shape and raw bytes, in order."""
    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
