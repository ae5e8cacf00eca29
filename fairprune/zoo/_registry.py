"""Architectures by name (the registry half of :mod:`fairprune.zoo`; loading files is :mod:`._load`).

Registry (after timm's ``_registry``): ``register_model`` adds a constructor under a name,
``create_model(name, **kwargs)`` builds it, ``list_models(pattern)`` lists names, ``model_info(name)``
gives the arguments a constructor takes. It holds fairprune's small ``mlp`` and ``small_cnn`` and
every classification architecture torchvision provides (weights are never downloaded).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .archs import MLP, SmallCNN
from ..core.errors import InputError

__all__ = ["register_model", "create_model", "list_models", "model_info", "ArchInfo"]


@dataclass(frozen=True)
class ArchInfo:
    name: str
    source: str                    # "fairprune" or "torchvision"
    description: str
    arguments: dict[str, str]      # argument name -> default, as text


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ArchInfo]] = {}


def register_model(name: str, fn: Callable[..., nn.Module], *, source: str, description: str,
                   arguments: dict[str, str] | None = None) -> None:
    if arguments is None:
        arguments = {
            p.name: ("required" if p.default is inspect.Parameter.empty else repr(p.default))
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
    _REGISTRY[name] = (fn, ArchInfo(name, source, description, arguments))


def _register_builtin() -> None:
    register_model("mlp", MLP, source="fairprune",
                   description="tabular MLP with standardisation inside (the Adult demo)")
    register_model("small_cnn", SmallCNN, source="fairprune",
                   description="2-block CNN with BatchNorm for small images (the MNIST demo)")


def _register_torchvision() -> None:
    # Imported lazily: torchvision's import costs a second and most callers only need our own archs.
    import torchvision.models as tvm

    for name in tvm.list_models(module=tvm):
        if name in _REGISTRY:
            continue

        def build(num_classes: int = 1000, _name=name, **kwargs) -> nn.Module:
            return tvm.get_model(_name, weights=None, num_classes=num_classes, **kwargs)

        register_model(name, build, source="torchvision",
                       description=f"torchvision.models.{name} (bring your own weights)",
                       arguments={"num_classes": "1000", "...": "any keyword torchvision accepts"})


_register_builtin()
_TORCHVISION_DONE = False


def _ensure_all() -> None:
    global _TORCHVISION_DONE
    if not _TORCHVISION_DONE:
        _register_torchvision()
        _TORCHVISION_DONE = True


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a glob ``pattern``, ours first then torchvision's."""
    _ensure_all()
    names = [n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)]
    return sorted(names, key=lambda n: (_REGISTRY[n][1].source != "fairprune", n))


def model_info(name: str) -> ArchInfo:
    if name not in _REGISTRY:
        _ensure_all()
    if name not in _REGISTRY:
        raise InputError(f"unknown architecture {name!r}; expected one of: {', '.join(list_models())}")
    return _REGISTRY[name][1]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build architecture ``name`` with ``kwargs`` (randomly initialised, eval mode)."""
    info = model_info(name)
    fn = _REGISTRY[name][0]
    try:
        model = fn(**kwargs)
    except TypeError as err:
        raise InputError(
            f"architecture {name!r} does not accept arguments {kwargs}; it takes {info.arguments} ({err})"
        ) from err
    return model.eval()

