"""Making structured pruning physical: :func:`compact` cuts the channels a structured mask removed.

It works on a copy of the model with Torch-Pruning: its dependency graph finds each conv/linear channel's
coupled partners (bias, BatchNorm, the next layer's input slice, every channel tied to it through a residual
addition), and the whole coupled group is cut at once. A channel is cut only when every parameter slice of its
group is zero in the masked model, so the cut changes no output; that is then checked on the example input,
within 1e-5 (relative to the logits' scale), and a model that fails the check is refused.

Used by :mod:`fairprune.engine.footprint` (the size of a structured level) and
:mod:`fairprune.engine.export` (``fairprune export`` of a structured level); it lives here, below both.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from ...core.errors import InputError
from ...data._inputs import Inputs, as_args
from ._masks import _PRUNABLE_TYPES, classifier_parameter

__all__ = ["compact", "NOT_COMPACTABLE", "COMPACTION_CHANGED_OUTPUTS"]

NOT_COMPACTABLE = (
    "{what} has no nn.Conv/nn.Linear layers to cut channels from, so structured pruning cannot make it "
    "physically smaller; expected the model as weights (.safetensors or a state_dict .pt) with --arch NAME, "
    "e.g. safetensors.torch.save_file(model.state_dict(), \"model.safetensors\")"
)
COMPACTION_CHANGED_OUTPUTS = (
    "compacting the model changed its outputs by up to {diff:.3g} (tolerance {tol:.3g}): a removed channel "
    "still reaches the output through a layer that is not cut with it (e.g. a normalisation across channels); "
    "expected a model whose masked channels are exactly dead. Export the masked model instead with an "
    "unstructured --method, or --format sparse-safetensors"
)


def _logits(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = module(*as_args(x))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _kind_of(module: nn.Module) -> str | None:
    """What a module without typed layers is, for the refusal; None when it has typed layers."""
    from ...zoo import ExportedModule

    if any(isinstance(m, _PRUNABLE_TYPES) for m in module.modules()):
        return None
    if isinstance(module, ExportedModule) or isinstance(module, torch.fx.GraphModule):
        return "a torch.export program (.pt2)"
    if isinstance(module, torch.jit.ScriptModule):
        return "a TorchScript module"
    return f"the model ({type(module).__name__})"


def compact(module: nn.Module, masks: Mapping[str, torch.Tensor], example_input: torch.Tensor, *,
            atol: float = 1e-5) -> nn.Module:
    """A physically smaller copy of ``module`` with the channels ``masks`` removed cut out.

    Args:
        module: the model, dense or with the masks applied (it is not changed).
        masks: {parameter name: bool mask, True = kept}, as :func:`fairprune.engine.prune.compute_masks` gives.
        example_input: a batch (N, ...) on the module's device, to trace the channel couplings and to
            check the cut.
        atol: the largest |Δlogit| allowed between the masked and the compacted model, relative to
            max(1, max |logit|).

    Returns the compacted model in eval form (BatchNorm with running statistics; its parameters do not
    require gradients: it is an artefact to export and time, not to train). Channels are cut
    where every parameter slice of their coupled group is zero after masking; each group keeps at
    least one channel; the classifier's outputs are never cut. Raises InputError for a model without
    layer modules (``.pt2`` programs, TorchScript) and for one whose outputs the cut would change.
    """
    import torch_pruning as tp

    what = _kind_of(module)
    if what is not None:
        raise InputError(NOT_COMPACTABLE.format(what=what))
    if not isinstance(example_input, (torch.Tensor, Inputs)) or example_input.dim() == 0 or len(example_input) == 0:
        raise ValueError(f"example_input must be a batch tensor (N, ...); got {type(example_input).__name__}")
    x = example_input.detach().clone()   # a normal tensor even if made under inference_mode (tracing needs autograd)

    small = copy.deepcopy(module).eval()
    params = dict(small.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise KeyError(f"masks name parameters the model does not have: {unknown[:5]}")
    with torch.no_grad():
        for name, mask in masks.items():
            if mask.shape != params[name].shape:
                raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, parameter has {tuple(params[name].shape)}")
            params[name].mul_(mask.to(device=params[name].device, dtype=params[name].dtype))
        reference = _logits(small, x)

    classifier = classifier_parameter(small, x)
    cls_module = dict(small.named_modules()).get(classifier.rsplit(".", 1)[0] if "." in classifier else "") \
        if classifier else None
    with torch.enable_grad():
        for p in small.parameters():
            p.requires_grad_(True)   # the dependency graph is traced through autograd
        dg = tp.DependencyGraph().build_dependency(small, example_inputs=as_args(x))
        # Lazily: each group is computed on the model as already cut (Torch-Pruning's own pruners do this).
        for group in dg.get_all_groups(ignored_layers=[cls_module] if cls_module is not None else [],
                                       root_module_types=list(_PRUNABLE_TYPES)):
            dead = _dead_channels(dg, group, _PRUNABLE_TYPES)
            if dead.all():
                dead[0] = False          # a layer with no channels left is no layer: keep one (zero) channel
            idxs = dead.nonzero().flatten().tolist()
            if idxs:
                root = group[0].dep
                dg.get_pruning_group(root.target.module, root.handler, idxs).prune()
    for p in small.parameters():
        p.requires_grad_(False)

    with torch.no_grad():
        out = _logits(small, x)
    tol = atol * max(1.0, float(reference.abs().max()))
    diff = float((out - reference).abs().max()) if out.shape == reference.shape else float("inf")
    if not diff <= tol:
        raise InputError(COMPACTION_CHANGED_OUTPUTS.format(diff=diff, tol=tol))
    return small


def _dead_channels(dg, group, prunable_types) -> torch.Tensor:
    """(n_root,) bool: root channels whose every parameter slice in the coupled group is zero.

    Out-channel items (a layer's rows, its bias, BatchNorm's affine parameters) must be zero so the
    channel is dead where it is made; in-channel items (the next layers' input slices, flatten-expanded
    for a linear head) so nothing reads it. An item on a bare nn.Parameter is not cut here.
    """
    n_root = len(group[0].idxs)
    dead = torch.ones(n_root, dtype=torch.bool)
    for item in group:
        mod, handler = item.dep.target.module, item.dep.handler
        if not item.idxs:
            continue
        if not isinstance(mod, nn.Module):
            return torch.zeros(n_root, dtype=torch.bool)
        idx = torch.as_tensor([int(i) for i in item.idxs])
        root = torch.as_tensor([int(i) for i in item.root_idxs])
        out = dg.is_out_channel_pruning_fn(handler)
        for p in mod.parameters(recurse=False):
            p = p.detach()
            if out and isinstance(mod, nn.Embedding):   # an embedding's channels are its columns
                zero = (p[:, idx.to(p.device)].transpose(0, 1).reshape(len(idx), -1) == 0).all(1)
            elif out and p.dim() >= 1:
                zero = (p[idx.to(p.device)].reshape(len(idx), -1) == 0).all(1)
            elif not out and p.dim() >= 2 and isinstance(mod, prunable_types):
                zero = (p[:, idx.to(p.device)].transpose(0, 1).reshape(len(idx), -1) == 0).all(1)
            else:
                continue
            # several item indices may map to one root channel (flatten): all must be zero
            per_root = torch.ones(n_root, dtype=torch.long).scatter_reduce(0, root, zero.cpu().long(), reduce="amin")
            dead &= per_root.bool()
    return dead
