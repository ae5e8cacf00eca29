"""Compression beyond pruning: quantization and 2:4 sparsity, audited group by group like pruning levels.

Methods are registered by name (:func:`list_compressions`): ``int8_weight``, ``int8_dynamic``,
``int8_static`` (options ``rows=N``, ``balanced``), ``int4_weight`` (CUDA only), ``fp16``, ``bf16`` and
``nm_2_4``. A variant joins steps with ``+``, applied left to right (``nm_2_4+int8_dynamic``).

    >>> from fairprune.engine.audit import audit
    >>> result = audit(model, data, sparsities=[0.5], compress=["int8_dynamic", "fp16", "nm_2_4+int8_dynamic"])
    >>> result.sections["compression"]          # one entry per variant, level keys + method, setting, ...
    >>> from fairprune.engine.compress import apply_variant
    >>> v = apply_variant(model, "int8_weight", example=x)   # a compressed copy (v.model evaluates like a LoadedModel)

Modules: ``_registry`` (names, options, parsing), ``_methods`` (the registered methods), ``_apply``
(applying a variant: torchao ``quantize_`` / PT2E, casts, 2:4), ``_size`` (the bytes it ships as),
``_audit`` (measuring a variant inside an audit); :class:`VariantResult` lives with the other typed results in
:mod:`fairprune.core.result`.
"""

from . import _methods  # noqa: F401  (registers the methods; no torch import, so the CLI's --help stays quick)
from ._methods import CALIBRATION_ROWS
from ...core.result import VariantResult
from ._registry import (CompressionMethod, Option, StepSpec, VariantSpec, compression_help, get_compression,
                        list_compressions, parse_variant, parse_variants, register_compression)

#: names loaded on first use (they import torch and torchao)
_LAZY = {"INT4_CPU": "_apply", "Calibration": "_apply", "Variant": "_apply", "apply_variant": "_apply",
         "per_sample_int8": "_apply", "per_token_int8": "_apply", "quantized_by_kind": "_apply",
         "QUANTIZED_KINDS": "_apply", "measure_variant": "_audit", "select_calibration": "_audit",
         "variant_diagnostics": "_audit", "variant_seed": "_audit",
         "variant_size": "_size", "variant_tensors": "_size"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CALIBRATION_ROWS", "Calibration", "CompressionMethod", "INT4_CPU", "Option", "StepSpec", "Variant",
           "VariantResult", "VariantSpec", "apply_variant", "compression_help", "get_compression",
           "list_compressions", "measure_variant", "parse_variant", "parse_variants", "per_sample_int8",
           "per_token_int8", "QUANTIZED_KINDS", "quantized_by_kind",
           "register_compression", "select_calibration", "variant_diagnostics", "variant_seed", "variant_size",
           "variant_tensors"]
