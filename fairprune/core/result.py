"""Typed results and their one JSON form, schema ``fairprune.audit/1`` (DESIGN.md).

Every reader and writer of result JSON goes through :meth:`AuditResult.to_dict` /
:meth:`AuditResult.from_dict`; nothing else builds or parses that JSON. Sections added by later
capabilities (``diagnostics``, ``mitigation``, ``search``, ``compression``) are kept as plain dicts in
``sections`` and written back unchanged, so readers ignore what they do not know without losing it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["SCHEMA", "Metrics", "DenseResult", "LevelResult", "AuditResult", "ModelInfo", "DataInfo",
           "AuditConfig", "Provenance", "VariantResult", "ENTRY_KEYS"]

SCHEMA = "fairprune.audit/1"


def _num(v):
    """JSON has no NaN/inf: undefined rates are written as null."""
    if v is None:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass(frozen=True)
class Metrics:
    """One group's (or the whole population's) figures for one model.

    accuracy in [0, 1]; loss = mean cross-entropy J(θ; D_a). Binary tasks add tpr, fpr and
    selection_rate (positive class = 1; tpr/fpr are None where the group has no positives/negatives).
    For a pruned model: accuracy_drop = acc(θ*) − acc(θ̄); excessive_loss R(a) = J(θ̄; D_a) − J(θ*; D_a)
    (the paper's Eq. 2); its 95% interval (per group, not adjusted); whether the drop differs from the
    other rows' (Holm-corrected over groups; ``p_value`` is the Holm-adjusted p); unreliable = fewer than
    30 rows. The methods are in :mod:`fairprune.engine.metrics` and named in LevelResult.
    """

    n: int
    accuracy: float
    loss: float
    tpr: float | None = None
    fpr: float | None = None
    selection_rate: float | None = None
    accuracy_drop: float | None = None
    excessive_loss: float | None = None
    accuracy_drop_ci95: tuple[float, float] | None = None
    significant: bool | None = None
    p_value: float | None = None
    unreliable: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"n": self.n, "accuracy": self.accuracy, "loss": self.loss}
        if self.selection_rate is not None:  # binary task: all three keys, tpr/fpr possibly null
            d.update(tpr=_num(self.tpr), fpr=_num(self.fpr), selection_rate=self.selection_rate)
        for k in ("accuracy_drop", "excessive_loss", "accuracy_drop_ci95", "significant", "p_value", "unreliable"):
            v = getattr(self, k)
            if v is not None:
                d[k] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Metrics":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("accuracy_drop_ci95") is not None:
            kw["accuracy_drop_ci95"] = tuple(kw["accuracy_drop_ci95"])
        return cls(**kw)


def _groups_to_dict(groups: dict[str, Metrics]) -> dict[str, Any]:
    return {g: m.to_dict() for g, m in groups.items()}


def _groups_from_dict(d: dict[str, Any]) -> dict[str, Metrics]:
    return {str(g): Metrics.from_dict(m) for g, m in d.items()}


@dataclass(frozen=True)
class DenseResult:
    overall: Metrics
    groups: dict[str, Metrics]
    accuracy_gap: float                      # max_a acc − min_a acc of the dense model (paper Sec. 6.2)
    size_bytes: int | None = None
    latency_ms: float | None = None

    def to_dict(self):
        d = {"overall": self.overall.to_dict(), "groups": _groups_to_dict(self.groups), "accuracy_gap": self.accuracy_gap}
        if self.size_bytes is not None:
            d["size_bytes"] = self.size_bytes
        if self.latency_ms is not None:
            d["latency_ms"] = self.latency_ms
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(Metrics.from_dict(d["overall"]), _groups_from_dict(d["groups"]), d["accuracy_gap"],
                   d.get("size_bytes"), d.get("latency_ms"))


@dataclass(frozen=True)
class LevelResult:
    """One sparsity level: the pruned model against the dense one.

    fairness_violation: {"accuracy": max_a drop − min_a drop, "loss": max_a R(a) − min_a R(a)} (the
    paper's Eq. 3, ξ); fairness_violation_ci95["accuracy"] is a simultaneous interval that can contain 0
    and fairness_violation_p_value["accuracy"] the p-value of "every group's drop is the same" (both
    from :func:`fairprune.engine.metrics.compare`, which names its methods in significance_test and
    interval_method; None in results written before they existed); weight_distance = ‖θ̄ − θ*‖₂ over
    prunable weights.
    """

    sparsity: float
    achieved_sparsity: float
    overall: Metrics
    groups: dict[str, Metrics]
    weight_distance: float
    fairness_violation: dict[str, float]
    fairness_violation_ci95: dict[str, tuple[float, float]]
    accuracy_gap: float
    size_bytes: int | None = None
    latency_ms: float | None = None
    fairness_violation_p_value: dict[str, float] | None = None
    significance_test: str | None = None
    interval_method: str | None = None

    def to_dict(self):
        d = {
            "sparsity": self.sparsity, "achieved_sparsity": self.achieved_sparsity,
            "overall": self.overall.to_dict(), "groups": _groups_to_dict(self.groups),
            "weight_distance": self.weight_distance,
            "fairness_violation": dict(self.fairness_violation),
            "fairness_violation_ci95": {k: list(v) for k, v in self.fairness_violation_ci95.items()},
        }
        if self.fairness_violation_p_value is not None:
            d["fairness_violation_p_value"] = dict(self.fairness_violation_p_value)
        d["accuracy_gap"] = self.accuracy_gap
        for k in ("significance_test", "interval_method"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.size_bytes is not None:
            d["size_bytes"] = self.size_bytes
        if self.latency_ms is not None:
            d["latency_ms"] = self.latency_ms
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(
            d["sparsity"], d["achieved_sparsity"], Metrics.from_dict(d["overall"]), _groups_from_dict(d["groups"]),
            d.get("weight_distance", float("nan")), dict(d["fairness_violation"]),
            {k: tuple(v) for k, v in d.get("fairness_violation_ci95", {}).items()}, d["accuracy_gap"],
            d.get("size_bytes"), d.get("latency_ms"), d.get("fairness_violation_p_value"),
            d.get("significance_test"), d.get("interval_method"),
        )


@dataclass(frozen=True)
class ModelInfo:
    name: str
    parameters: int
    prunable_parameters: int
    prunable_by_kind: dict[str, int] | None = None     # kind (linear, conv, attention, recurrent, embedding) -> n
    prunable_definition: str | None = None             # which weights count as prunable, in words


@dataclass(frozen=True)
class DataInfo:
    name: str
    n: int
    groups: dict[str, int]


@dataclass(frozen=True)
class AuditConfig:
    method: str
    sparsities: list[float]
    finetune_epochs: int
    seed: int
    device: str


@dataclass(frozen=True)
class Provenance:
    fairprune_version: str
    torch_version: str
    model_sha256: str
    data_sha256: str
    label: str
    group_columns: list[str]
    n_features: int
    preprocessing: list[str] | None = None   # images: the steps from file to model input, as text


_KNOWN = {"schema", "model", "data", "config", "provenance", "dense", "levels", "warnings"}


@dataclass(frozen=True)
class AuditResult:
    """The result of :func:`fairprune.engine.audit`; ``to_dict`` is the ``fairprune.audit/1`` JSON."""

    model: ModelInfo
    data: DataInfo
    config: AuditConfig
    provenance: Provenance
    dense: DenseResult
    levels: list[LevelResult]
    warnings: list[str] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)   # diagnostics, mitigation, ... as written

    # ---- reading ------------------------------------------------------------------------------
    @property
    def group_names(self) -> list[str]:
        return list(self.data.groups)

    @property
    def diagnostics(self) -> dict | None:
        return self.sections.get("diagnostics")

    @property
    def compression(self) -> list:
        """The ``compression`` section as :class:`VariantResult` s, in the order measured
        ([] when no variant was measured); each has a ``level`` (a LevelResult) to compare with ``levels``."""
        entries = self.sections.get("compression")
        return [VariantResult.from_dict(e) for e in entries] if isinstance(entries, list) else []

    def level(self, sparsity: float) -> LevelResult:
        for lv in self.levels:
            if abs(lv.sparsity - sparsity) < 1e-9:
                return lv
        raise KeyError(f"no level at sparsity {sparsity}; levels: {[lv.sparsity for lv in self.levels]}")

    def with_section(self, name: str, value: Any) -> "AuditResult":
        return replace(self, sections={**self.sections, name: value})

    def table(self):
        """Long pandas table: one row per (level, group), the dense model as sparsity 0 with kind 'dense'."""
        import pandas as pd

        rows = []
        for g, m in {"(overall)": self.dense.overall, **self.dense.groups}.items():
            rows.append({"kind": "dense", "sparsity": 0.0, "achieved_sparsity": 0.0, "group": g, **m.to_dict()})
        for lv in self.levels:
            for g, m in {"(overall)": lv.overall, **lv.groups}.items():
                rows.append({"kind": "pruned", "sparsity": lv.sparsity, "achieved_sparsity": lv.achieved_sparsity,
                             "group": g, **m.to_dict()})
        return pd.DataFrame(rows)

    # ---- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": SCHEMA,
            "model": asdict(self.model),
            "data": asdict(self.data),
            "config": asdict(self.config),
            "provenance": {k: v for k, v in asdict(self.provenance).items()
                           if not (k == "preprocessing" and v is None)},
            "dense": self.dense.to_dict(),
            "levels": [lv.to_dict() for lv in self.levels],
        }
        if self.warnings:
            d["warnings"] = list(self.warnings)
        d.update(self.sections)
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), indent=kw.pop("indent", 2), allow_nan=False, **kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AuditResult":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            found = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise InputError(f"expected a result with schema {SCHEMA!r}; found {found!r}")
        try:
            return cls(
                model=ModelInfo(**d["model"]),
                data=DataInfo(d["data"]["name"], d["data"]["n"], dict(d["data"]["groups"])),
                config=AuditConfig(**d["config"]),
                provenance=Provenance(**d["provenance"]),
                dense=DenseResult.from_dict(d["dense"]),
                levels=[LevelResult.from_dict(lv) for lv in d["levels"]],
                warnings=list(d.get("warnings", [])),
                sections={k: v for k, v in d.items() if k not in _KNOWN},
            )
        except (KeyError, TypeError) as err:
            raise InputError(f"result JSON does not follow {SCHEMA}: {type(err).__name__}: {err}") from err

    @classmethod
    def from_json(cls, text: str) -> "AuditResult":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise InputError(f"expected result JSON; could not parse it: {err}") from err

    @classmethod
    def load(cls, path: str | Path) -> "AuditResult":
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such result file")
        return cls.from_json(p.read_text())


# ---- one compression variant (fairprune.engine.compress) -------------------------------------------
# A LevelResult plus what a variant adds: the figures (``overall``, ``groups``, ``fairness_violation``, ...) are a
# LevelResult serialised by its own ``to_dict``, so a variant and a pruning level compare row for row; the variant
# adds its name, setting, quantized fraction and how it was run (the ``compression`` section, docs/results.md).

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
    share of the model's parameters (by count) actually quantized; ``details``: the other entry keys;
    ``quantized_by_kind``: {kind: {"quantized": int, "total": int}} per layer kind (linear, conv, attention,
    recurrent, embedding, other), the parameters of that kind and how many of them were quantized (None in
    results written before it was recorded)."""

    method: str
    setting: str
    level: LevelResult
    quantized_fraction: float
    details: dict = field(default_factory=dict)
    quantized_by_kind: dict | None = None

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
        d["quantized_by_kind"] = self.quantized_by_kind
        for k, v in self.details.items():
            if k not in ("steps", "description"):
                d[k] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VariantResult":
        level = LevelResult.from_dict(d)
        known = {"method", "setting", "quantized_fraction", "sparsity", "achieved_sparsity", "overall", "groups",
                 "weight_distance", "fairness_violation", "fairness_violation_ci95", "accuracy_gap", "size_bytes",
                 "latency_ms", "fairness_violation_p_value", "significance_test", "interval_method",
                 "quantized_by_kind"}
        by_kind = d.get("quantized_by_kind")
        if isinstance(by_kind, dict):
            by_kind = {str(k): {"quantized": int((v or {}).get("quantized", 0)), "total": int((v or {}).get("total", 0))}
                       for k, v in by_kind.items()}
        else:
            by_kind = None
        return cls(d["method"], d.get("setting", ""), level, d.get("quantized_fraction", 0.0),
                   {k: v for k, v in d.items() if k not in known}, by_kind)
