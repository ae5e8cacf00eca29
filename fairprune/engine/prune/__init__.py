"""Pruning: a registry of methods that compute masks, and masks that can always be undone."""

from ._masks import MaskedModel, classifier_parameter, prunable_parameters
from ._methods import PruningMethod, compute_masks, get_method, iter_masks, list_methods, register_method
from . import _structured  # noqa: F401  (registers structured_l1)
from ._nm import NM24, follows_2_4, nm_mask, nm_masks, pack_2_4, unpack_2_4  # registers nm_2_4

__all__ = ["MaskedModel", "NM24", "PruningMethod", "follows_2_4", "nm_mask", "nm_masks", "pack_2_4", "unpack_2_4", "classifier_parameter", "compute_masks", "get_method", "iter_masks",
           "list_methods", "prunable_parameters", "register_method"]
