"""Which weights are prunable, and masks that can always be undone.

Masks are applied by writing ``dense * mask`` into the parameters while a copy of the dense values is
kept (:class:`MaskedModel`). That works on every module the engine loads: an ``nn.Module``, a
TorchScript module, and the module a ``.pt2`` program gives back, whose graph reads its weights
directly, so ``torch.nn.utils.prune``'s forward-pre-hooks would never fire there.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["prunable_parameters", "MaskedModel", "classifier_parameter"]

_PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter for every prunable weight: conv and linear weight tensors (dim >= 2).

    Biases and normalisation parameters are kept, as in the paper. Modules without ``nn.Linear`` /
    ``nn.Conv*`` objects (a ``.pt2`` program's graph module, TorchScript) fall back to every
    trainable ``*weight`` parameter with two or more dimensions.
    """
    typed = {
        f"{mname}.weight" if mname else "weight": m.weight
        for mname, m in module.named_modules()
        if isinstance(m, _PRUNABLE_TYPES) and isinstance(getattr(m, "weight", None), torch.Tensor)
    }
    if typed:
        # keep named_parameters order (deterministic, matches state_dict)
        return {n: p for n, p in module.named_parameters() if n in typed}
    return {n: p for n, p in module.named_parameters() if p.dim() >= 2 and n.rsplit(".", 1)[-1].endswith("weight")}


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
                module(example_input)
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
