"""``structured_l1``: remove whole output channels / neurons with the smallest L1 norm.

Channels are coupled: removing a conv's output channel removes its bias, the BatchNorm parameters of
that channel, the next layer's input slice, and every channel tied to it through a residual addition.
Torch-Pruning's dependency graph finds those couplings (we use it to *find* groups and score them; the
cutting itself stays a reversible mask here, and a physical cut is an export step). The classifier's
outputs are never removed.

Channels are ranked across all coupled groups by their group L1 norm divided by the group's mean
(so wide and narrow layers compete fairly), and the lowest-ranked are removed until the requested
fraction of prunable weights is zero. Each group keeps at least one channel.

Attention heads: where a coupled group is the query/key/value projections of one attention module (nn.Linear
siblings whose parent states its head size, ``head_dim`` / ``attention_head_size`` / ``dim_per_head``, as Hugging
Face's BERT, RoBERTa, DistilBERT and ViT self-attention do), its channels are ranked and removed a whole head at a
time: the head's query, key and value rows with their biases and the output projection's columns that read it, so
a removed head contributes nothing (its score is the mean of its channels' normalised L1 scores). Torch-Pruning's
dependency graph is what couples q, k, v and the output projection; the head boundaries come from the module.
Attention inside ``nn.MultiheadAttention`` (packed ``in_proj_weight``) has no such Linear projections, and its
channels are not removed by head.

Models without typed layers (a ``.pt2`` program's graph module, TorchScript) cannot be traced by the
dependency graph; there each prunable weight's output channels are masked layer by layer with the
bias of the same layer, and the coupling to BatchNorm and residual partners is not followed
(documented in the README's limits).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ...data._inputs import Inputs
from ._masks import _PRUNABLE_TYPES, classifier_parameter, prunable_parameters
from ._methods import PruningMethod, register_method

__all__ = ["StructuredL1"]


@register_method
@dataclass(frozen=True)
class StructuredL1(PruningMethod):
    name: str = "structured_l1"
    description: str = ("remove whole output channels / neurons by L1 norm, with their bias, BatchNorm "
                        "and residual-coupled partners (Torch-Pruning's dependency graph)")

    def masks(self, module, sparsity, *, seed, example_input):
        params = prunable_parameters(module)
        if example_input is None:
            raise ValueError("structured_l1 needs an example input to trace the model's channel couplings")
        has_typed = any(isinstance(m, _PRUNABLE_TYPES) for m in module.modules())
        if has_typed:
            return _coupled_masks(module, params, sparsity, example_input)
        return _layerwise_masks(module, params, sparsity, example_input)


def _coupled_masks(module, params, sparsity, example_input):
    import torch_pruning as tp

    names = {id(m): n for n, m in module.named_modules()}
    modules = dict(module.named_modules())
    classifier = classifier_parameter(module, example_input)
    cls_module = modules.get(classifier.rsplit(".", 1)[0]) if classifier else None
    # several positional inputs (Inputs: input_ids, attention_mask, ...) are traced as model(*tensors)
    example = tuple(example_input.tensors) if isinstance(example_input, Inputs) else example_input
    with warnings.catch_warnings():
        # learned tokens / position tables (a ViT's cls_token) are bare parameters: kept, never masked here
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        dg = tp.DependencyGraph().build_dependency(module, example_inputs=example)
    groups = list(dg.get_all_groups(ignored_layers=[cls_module] if cls_module is not None else [],
                                    root_module_types=list(_PRUNABLE_TYPES)))
    importance = tp.importance.GroupMagnitudeImportance(p=1, normalizer="mean")
    total = sum(p.numel() for p in params.values())

    # Per group: root module / handler, per-channel normalised score and prunable weights freed per channel.
    # A unit is one channel, or one attention head (head_size channels) in a q/k/v group.
    cands = []  # (score, group index, unit)
    roots = []  # (root module, handler, units in the group, weights freed per unit, channels per unit)
    for group in groups:
        root = group[0].dep
        scores = importance(group)
        if scores is None:
            continue
        n_root = len(group[0].idxs)
        cost = 0.0
        for item in group:
            m, h = item.dep.target.module, item.dep.handler
            if isinstance(m, _PRUNABLE_TYPES):
                w = m.weight
                per = w[0].numel() if dg.is_out_channel_pruning_fn(h) else w[:, 0].numel()
                cost += per * len(item.idxs) / n_root
        width = _head_size(group, dg, names, modules, n_root)
        unit_scores = scores.reshape(-1, width).mean(1) if width > 1 else scores
        for c, s in enumerate(unit_scores.tolist()):
            cands.append((s, len(roots), c))
        roots.append((root.target.module, root.handler, n_root // width, cost * width, width))
    cands.sort(key=lambda t: (t[0], t[1], t[2]))

    # Take the lowest-scoring channels until the freed weights reach the target, keeping at least one
    # channel per group. Couplings overlap (a removed neuron's input slice may already be gone), so
    # the per-channel cost is an estimate: correct the target a few times against the measured count.
    target = sparsity * total
    estimate = target
    best = None
    for _ in range(12):
        masks = _build(module, dg, names, roots, _choose(cands, roots, estimate))
        zeros = sum(int((~masks[n]).sum()) for n in params)
        if best is None or abs(zeros - target) < abs(best[0] - target):
            best = (zeros, masks)
        if zeros == 0 or abs(zeros - target) <= 0.002 * total:
            break
        estimate *= target / zeros
    masks = best[1]
    return {n: m for n, m in masks.items() if not bool(m.all()) or n in params}


def _choose(cands, roots, target):
    chosen: dict[int, list[int]] = {}
    freed = 0.0
    for _s, gi, c in cands:
        if freed >= target:
            break
        sel = chosen.setdefault(gi, [])
        if len(sel) + 1 >= roots[gi][2]:
            continue
        sel.append(c)
        freed += roots[gi][3]
    return chosen


def _build(module, dg, names, roots, chosen):
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in module.named_parameters()}
    for gi, sel in chosen.items():
        if not sel:
            continue
        root_module, handler, _, _, width = roots[gi]
        channels = sorted(u * width + j for u in sel for j in range(width))   # a head is `width` channels
        group = dg.get_pruning_group(root_module, handler, idxs=channels)
        for item in group:
            m, h, idxs = item.dep.target.module, item.dep.handler, [int(i) for i in item.idxs]
            mname = names.get(id(m))
            if mname is None or not idxs:
                continue
            prefix = f"{mname}." if mname else ""
            out = dg.is_out_channel_pruning_fn(h)
            for pname, p in m.named_parameters(recurse=False):
                key = prefix + pname
                if key not in masks:
                    continue
                if out and isinstance(m, nn.Embedding):      # an embedding's channels are its columns
                    if p.dim() == 2 and p.shape[1] > max(idxs):
                        masks[key][:, idxs] = False
                elif out and p.dim() >= 1 and p.shape[0] > max(idxs):
                    masks[key][idxs] = False
                elif not out and p.dim() >= 2 and isinstance(m, _PRUNABLE_TYPES) and p.shape[1] > max(idxs):
                    masks[key][:, idxs] = False
    return masks


_HEAD_SIZE_ATTRS = ("head_dim", "attention_head_size", "dim_per_head")


def _head_size(group, dg, names, modules, n_root) -> int:
    """Channels per attention head when ``group`` is the q/k/v projections of one attention module, else 1.

    Such a group removes output channels of at least two nn.Linear siblings (query, key, value) whose parent
    module states an integer head size that divides the group's channels into two or more heads."""
    parents: dict[str, int] = {}
    for item in group:
        m = item.dep.target.module
        if not isinstance(m, nn.Linear) or not dg.is_out_channel_pruning_fn(item.dep.handler):
            continue
        parent = names.get(id(m), "").rpartition(".")[0]
        parents[parent] = parents.get(parent, 0) + 1
    for parent, count in parents.items():
        owner = modules.get(parent)
        if count < 2 or owner is None:
            continue
        size = next((getattr(owner, a) for a in _HEAD_SIZE_ATTRS if isinstance(getattr(owner, a, None), int)), None)
        if size and size > 1 and n_root % size == 0 and n_root // size >= 2:
            return size
    return 1


def _layerwise_masks(module, params, sparsity, example_input):
    classifier = classifier_parameter(module, example_input)
    all_params = dict(module.named_parameters())
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    for n, p in params.items():
        if n == classifier:
            continue
        rows = p.detach().abs().reshape(p.shape[0], -1).sum(1)
        k = min(round(sparsity * p.shape[0]), p.shape[0] - 1)
        if k <= 0:
            continue
        drop = torch.sort(rows, stable=True).indices[:k]
        masks[n][drop] = False
        bias = n[: -len("weight")] + "bias"
        if bias in all_params and all_params[bias].shape[:1] == p.shape[:1]:
            bm = torch.ones_like(all_params[bias], dtype=torch.bool)
            bm[drop] = False
            masks[bias] = bm
    return masks
