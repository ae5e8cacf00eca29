"""One compression variant's result: a :class:`~fairprune.result.LevelResult` plus what a variant adds.

The figures (``overall``, ``groups``, ``fairness_violation``, ``accuracy_gap``, ...) are a LevelResult
serialised by its own ``to_dict``, so a variant and a pruning level compare row for row; the variant
adds its name, setting, quantized fraction and how it was run (the README's ``compression`` section).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..result import LevelResult

__all__ = ["VariantResult", "ENTRY_KEYS"]

#: keys a compression entry adds to a level's (always written, null where not applicable)
ENTRY_KEYS = ("method", "steps", "setting", "description", "size_bytes", "latency_ms", "quantized_fraction", "backend", "kernel",
              "device", "calibration", "storage")


@dataclass(frozen=True)
class VariantResult:
    """``method``: the variant as written canonically (``nm_2_4+int8_static:balanced``); ``setting``: a
    short label of what it does ("2:4 sparse + W8 per channel, A8 dynamic per sample"; the long form is
    ``details["description"]``); ``level``: its figures against the dense model on the same rows (``sparsity`` is
    the requested share of zeros, 0.5 with a 2:4 step and 0 otherwise; ``achieved_sparsity`` and
    ``weight_distance`` are measured on the weights the variant computes with); ``quantized_fraction``:
    share of the model's parameters (by count) actually quantized; ``details``: the other entry keys."""

    method: str
    setting: str
    level: LevelResult
    quantized_fraction: float
    details: dict = field(default_factory=dict)

    @property
    def size_bytes(self) -> int | None:
        return self.level.size_bytes

    @property
    def latency_ms(self) -> float | None:
        return self.level.latency_ms

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method, "steps": self.details.get("steps", [self.method]),
                             "setting": self.setting, "description": self.details.get("description", self.setting)}
        d.update(self.level.to_dict())
        d["size_bytes"] = self.level.size_bytes
        d["latency_ms"] = self.level.latency_ms
        d["quantized_fraction"] = self.quantized_fraction
        for k, v in self.details.items():
            if k not in ("steps", "description"):
                d[k] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VariantResult":
        level = LevelResult.from_dict(d)
        known = {"method", "setting", "quantized_fraction", "sparsity", "achieved_sparsity", "overall", "groups",
                 "weight_distance", "fairness_violation", "fairness_violation_ci95", "accuracy_gap", "size_bytes",
                 "latency_ms", "fairness_violation_p_value", "significance_test", "interval_method"}
        return cls(d["method"], d.get("setting", ""), level, d.get("quantized_fraction", 0.0),
                   {k: v for k, v in d.items() if k not in known})
