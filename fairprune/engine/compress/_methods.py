"""The registered compression methods: what each name means (the work is in ``_apply``)."""

from __future__ import annotations

from dataclasses import dataclass

from ._registry import CompressionMethod, Option, register_compression

__all__ = ["Int8Weight", "Int8Dynamic", "Int8Static", "Int4Weight", "Float16", "BFloat16", "NM24Compression",
           "CALIBRATION_ROWS"]

#: default number of calibration rows for int8_static
CALIBRATION_ROWS = 256

_W8 = "int8 weights with one scale per output channel (symmetric)"


@register_compression
@dataclass(frozen=True)
class Int8Weight(CompressionMethod):
    name: str = "int8_weight"
    description: str = f"{_W8}; activations stay float (torchao Int8WeightOnlyConfig, or PT2E for convs and .pt2)"

    def setting(self, options):
        return "W8 per channel, A float"

    def describe(self, options):
        return f"{_W8}; activations in float"


@register_compression
@dataclass(frozen=True)
class Int8Dynamic(CompressionMethod):
    name: str = "int8_dynamic"
    description: str = (f"{_W8} and int8 activations with scales computed at run time, never shared between "
                        "samples: one per sample of a convolution's input, one per token of each sample of a linear "
                        "layer's (torchao Int8DynamicActivationInt8WeightConfig, or PT2E for convs, attention and "
                        ".pt2)")

    def setting(self, options):
        return "W8 per channel, A8 dynamic per sample"

    def describe(self, options):
        return (f"{_W8}; int8 activations, symmetric scales computed at run time per sample (convolutions) or per "
                "token of each sample (linear layers and attention projections), never shared between samples")


@register_compression
@dataclass(frozen=True)
class Int8Static(CompressionMethod):
    name: str = "int8_static"
    description: str = (f"{_W8} and int8 activations with one scale per layer input fixed beforehand from "
                        "calibration rows (training rows when there are any, else the evaluated rows)")
    options: tuple = (
        Option("rows", "int", CALIBRATION_ROWS, f"calibration rows (default {CALIBRATION_ROWS})"),
        Option("balanced", "flag", False, "the same number of calibration rows from every group"),
    )

    def setting(self, options):
        rows = options.get("rows", CALIBRATION_ROWS)
        return f"W8 per channel, A8 static ({rows} rows{', balanced' if options.get('balanced') else ''})"

    def describe(self, options):
        mix = "group-balanced" if options.get("balanced") else "sampled at random"
        return (f"{_W8}; int8 activations, one symmetric scale per layer input fixed from up to "
                f"{options.get('rows', CALIBRATION_ROWS)} calibration rows ({mix})")


@register_compression
@dataclass(frozen=True)
class Int4Weight(CompressionMethod):
    name: str = "int4_weight"
    description: str = ("int4 weights in groups of 128 input channels, bfloat16 activations (torchao "
                        "Int4WeightOnlyConfig; CUDA only: CPU has no int4 kernel here)")

    def setting(self, options):
        return "W4 groups of 128, A bfloat16"

    def describe(self, options):
        return "int4 weights, one scale and zero point per 128 input channels (nn.Linear only); bfloat16 activations"


@register_compression
@dataclass(frozen=True)
class Float16(CompressionMethod):
    name: str = "fp16"
    description: str = ("every floating-point weight and buffer stored in float16, run under torch.autocast(float16): "
                        "convolutions and matrix products in float16")

    def setting(self, options):
        return "float16"

    def describe(self, options):
        return ("weights and buffers in float16; run under torch.autocast(float16), so convolutions and matrix "
                "products compute in float16")


@register_compression
@dataclass(frozen=True)
class BFloat16(CompressionMethod):
    name: str = "bf16"
    description: str = ("every floating-point weight and buffer stored in bfloat16, run under "
                        "torch.autocast(bfloat16): convolutions and matrix products in bfloat16")

    def setting(self, options):
        return "bfloat16"

    def describe(self, options):
        return ("weights and buffers in bfloat16; run under torch.autocast(bfloat16), so convolutions and matrix "
                "products compute in bfloat16")


@register_compression
@dataclass(frozen=True)
class NM24Compression(CompressionMethod):
    name: str = "nm_2_4"
    kind: str = "sparsity"
    description: str = ("2:4 semi-structured sparsity: keep the 2 largest |w| of every 4 consecutive weights along "
                        "the input dimension (torch's sparse kernel on CUDA where it runs; a combination's first step)")

    def setting(self, options):
        return "2:4 sparse"

    def describe(self, options):
        return "2:4 semi-structured sparsity (the 2 largest |w| of every 4 consecutive input weights kept)"
