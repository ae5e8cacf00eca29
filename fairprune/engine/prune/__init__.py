"""Pruning: a registry of methods that compute masks, masks that can always be undone, and :func:`compact`
(structured masks made physical: channels cut out of a copy)."""

from ._masks import (PRUNABLE_DEFINITION, PRUNABLE_KINDS, MaskedModel, classifier_parameter, prunable_by_kind,
                     prunable_definition, prunable_kinds, prunable_parameters, prune_embeddings)
from ._methods import PruningMethod, compute_masks, get_method, iter_masks, list_methods, register_method
from . import _structured  # noqa: F401  (registers structured_l1)
from ._compact import COMPACTION_CHANGED_OUTPUTS, NOT_COMPACTABLE, compact
from ._nm import NM24, follows_2_4, nm_mask, nm_masks, pack_2_4, unpack_2_4  # registers nm_2_4

__all__ = ["PRUNABLE_DEFINITION", "PRUNABLE_KINDS", "prunable_by_kind", "prunable_definition", "prunable_kinds",
           "prune_embeddings", "COMPACTION_CHANGED_OUTPUTS", "MaskedModel", "NM24", "NOT_COMPACTABLE", "compact", "PruningMethod", "follows_2_4", "nm_mask", "nm_masks", "pack_2_4", "unpack_2_4", "classifier_parameter", "compute_masks", "get_method", "iter_masks",
           "list_methods", "prunable_parameters", "register_method"]
