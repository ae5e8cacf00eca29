"""Split an :class:`~fairprune.engine.audit.AuditSpec` into independent units and merge their results.

A unit is the same spec with one sparsity level. Units are independent because everything random in a
level is seeded by :func:`fairprune.engine.audit._level_seed` (the violation's permutation p-value, fine-tuning) or by the audit's own seed
(random masks score every weight once, the same for every level; diagnostics sample their rows with the
audit's seed): a level gets the same numbers whatever other levels are measured beside it. So the
results of the units, merged by :func:`merge_results`, are the result of the whole spec, to the byte.

Merging: model, data, provenance and config (but the sparsities) must be the same in every part; the
dense model's figures too (timings aside: ``latency_ms`` is a wall-clock figure no two runs share); the
levels are concatenated in sorted order; each result section is merged level by level by its registered
merger (``footprint`` and ``diagnostics`` here; a capability that adds a section with per-level parts
registers its own with :func:`register_section_merger`). A section without a merger must be identical in
every part.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ...core.errors import InputError
from ...core.result import AuditResult

__all__ = ["MergeError", "split_spec", "merge_results", "register_section_merger", "SectionMerger",
           "LevelwiseSection", "MergeContext", "SECTION_MERGERS"]


class MergeError(InputError):
    """Results that cannot be merged into one: they do not come from the same audit of the same inputs."""


def split_spec(spec) -> list:
    """The independent units of ``spec``: one spec per sparsity level, in sorted order, then (with
    compression variants) one spec holding every variant and no level.

    The levels are validated first (the same :class:`~fairprune.core.errors.InputError` a local run raises),
    so a bad spec is refused before any unit runs anywhere. Variants have seeds of their own
    (``fairprune.engine.compress.variant_seed``), so they measure the same apart from the levels. With diagnostics
    on, a spec with variants stays one unit: the variants' diagnostics are read beside the levels'.
    """
    from ...engine.audit import _check_sparsities

    compress = tuple(getattr(spec, "compress", ()) or ())
    levels = _check_sparsities(spec.sparsities) if spec.sparsities else []
    if compress and (spec.diagnostics or not levels):
        return [spec]
    units = [replace(spec, sparsities=(s,), compress=()) for s in levels]
    if compress:
        units.append(replace(spec, sparsities=()))
    return units


@dataclass(frozen=True)
class MergeContext:
    """What a section merger needs besides the sections.

    parts: the sparsities of each part's levels, parts sorted by their lowest sparsity (the order of the
    section values a merger gets); picks: the merged level order as (part index, level index within that
    part); labels: how to name each part in an error message.
    """

    parts: list[list[float]]
    picks: list[tuple[int, int]]
    labels: list[str]


#: merger(name, values, context) -> the merged section; ``values``: the section of each part, in
#: ``context.parts`` order (None for a part without it, for a merger registered with ``partial=True``).
#: Raise :class:`MergeError` for sections that do not belong together.
SectionMerger = Callable[[str, list, MergeContext], Any]
SECTION_MERGERS: dict[str, SectionMerger] = {}
_PARTIAL: set[str] = set()


def register_section_merger(name: str, merger: SectionMerger, *, partial: bool = False) -> SectionMerger:
    """Merge the result section ``name`` with ``merger`` (see :data:`SectionMerger`).

    ``partial``: the section may be missing from some parts (it records something that happened in some
    runs only); otherwise a section missing from a part means the parts do not belong together.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"section name must be a non-empty string; found {name!r}")
    SECTION_MERGERS[name] = merger
    (_PARTIAL.add if partial else _PARTIAL.discard)(name)
    return merger


def _dumps(v) -> str:
    # order-sensitive, so "equal" means "serialises to the same bytes"
    return json.dumps(v, allow_nan=True, default=repr)


_MISSING = object()


def _get(d, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return _MISSING
        d = d[k]
    return d


def _set(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def _drop(d, path):
    for k in path[:-1]:
        if not isinstance(d, dict) or k not in d:
            return
        d = d[k]
    if isinstance(d, dict):
        d.pop(path[-1], None)


def _first_difference(a, b, where="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{where or '(top)'}: keys {list(a)} vs {list(b)}"
        for k in a:
            if _dumps(a[k]) != _dumps(b[k]):
                return _first_difference(a[k], b[k], f"{where}.{k}" if where else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if _dumps(x) != _dumps(y):
                return _first_difference(x, y, f"{where}[{i}]")
    short = lambda v: (s if len(s := _dumps(v)) <= 80 else s[:77] + "...")  # noqa: E731
    return f"{where or '(top)'}: {short(a)} vs {short(b)}"


def _require_same(what: str, values: list, labels: list[str]) -> None:
    first = _dumps(values[0])
    for v, label in zip(values[1:], labels[1:]):
        if _dumps(v) != first:
            raise MergeError(f"results do not belong together: their {what} differ between {labels[0]} and {label} "
                             f"({_first_difference(values[0], v)})")


def _join_distinct(values: list) -> Any:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out[0] if len(out) == 1 else "; ".join(str(v) for v in out)


def _first(values: list) -> Any:
    return values[0]


def _first_not_none(values: list) -> Any:
    return next((v for v in values if v is not None), None)


def _sorted_union(values: list) -> list:
    return sorted({x for v in values for x in (v or [])})


@dataclass(frozen=True)
class LevelwiseSection:
    """A section whose lists at ``levelwise`` paths hold one entry per level, in the result's level order.

    Those lists are merged in the merged level order; the values at ``combine`` paths are combined across
    the parts by their function; everything else must be the same in every part.
    """

    levelwise: tuple[tuple[str, ...], ...]
    combine: dict[tuple[str, ...], Callable[[list], Any]] = field(default_factory=dict)
    #: paths present in some parts only (what the variants' part adds), combined over the parts that have them
    optional: dict[tuple[str, ...], Callable[[list], Any]] = field(default_factory=dict)

    def __call__(self, name: str, values: list, ctx: MergeContext) -> Any:
        labels = ctx.labels
        if not all(isinstance(v, dict) for v in values):
            _require_same(f"{name!r} sections", values, labels)
            return copy.deepcopy(values[0])
        merged = copy.deepcopy(values[0])
        rest = [copy.deepcopy(v) for v in values]
        for path in self.levelwise:
            lists = [_get(v, path) for v in values]
            if all(x is _MISSING for x in lists):
                continue
            where = ".".join(path)
            for i, (lst, levels) in enumerate(zip(lists, ctx.parts)):
                if not isinstance(lst, list) or len(lst) != len(levels):
                    found = "nothing" if lst is _MISSING else (f"{len(lst)} entries" if isinstance(lst, list)
                                                               else type(lst).__name__)
                    raise MergeError(f"results do not belong together: section {name!r} of {labels[i]} should have "
                                     f"one entry per level at {where} ({len(levels)}); found {found}")
                for entry, s in zip(lst, levels):
                    if isinstance(entry, dict) and "sparsity" in entry and entry["sparsity"] != s:
                        raise MergeError(f"results do not belong together: section {name!r} of {labels[i]} has an "
                                         f"entry for sparsity {entry['sparsity']!r} at {where} where its level is {s:g}")
            _set(merged, path, [copy.deepcopy(lists[p][j]) for p, j in ctx.picks])
            for r in rest:
                _drop(r, path)
        for path, fn in self.combine.items():
            parts = [_get(v, path) for v in values]
            if all(x is _MISSING for x in parts):
                continue
            if any(x is _MISSING for x in parts):
                raise MergeError(f"results do not belong together: section {name!r} has {'.'.join(path)} in some "
                                 f"results but not in others")
            _set(merged, path, fn(parts))
            for r in rest:
                _drop(r, path)
        for path, fn in self.optional.items():
            present = [x for x in (_get(v, path) for v in values) if x is not _MISSING]
            if present:
                _set(merged, path, fn(present))
                for r in rest:
                    _drop(r, path)
        _require_same(f"{name!r} sections (apart from their levels)", rest, labels)
        return merged


def _equal_section(name: str, values: list, ctx: MergeContext) -> Any:
    first = _dumps(values[0])
    for v, label in zip(values[1:], ctx.labels[1:]):
        if _dumps(v) != first:
            raise MergeError(f"cannot merge section {name!r}: it differs between {ctx.labels[0]} and {label} "
                             f"({_first_difference(values[0], v)}) and no merger is registered for it "
                             f"(fairprune.run.executors.register_section_merger)")
    return copy.deepcopy(values[0])


# footprint.FootprintMeter.section(): the device line is descriptive (tasks on different cards each name
# theirs); the dense model's latency (median, spread, repeats) is a timing, taken from the first part like the
# dense figures.
def _only(values: list) -> Any:
    if len(values) != 1:
        raise MergeError(f"results do not belong together: expected one part to measure the compression variants; "
                         f"found {len(values)}")
    return copy.deepcopy(values[0])


register_section_merger("footprint", LevelwiseSection(
    levelwise=(("levels",),),
    combine={("device",): _join_distinct, ("dense", "latency_ms"): _first, ("dense", "latency_ms_iqr"): _first,
             ("dense", "latency_repeats"): _first},
    optional={("compression",): _only},
))

# diagnose._run.diagnostics_section(): the dense model's diagnostics are the same in every part; the
# Hessian's "methods" is the sorted set used over all models, its "fallback" the first one met.
register_section_merger("diagnostics", LevelwiseSection(
    levelwise=(("levels",), ("theory",), ("factors", "levels"), ("flips", "levels"), ("distributions", "levels"),
               ("details", "hessian", "levels")),
    combine={("details", "hessian", "methods"): _sorted_union, ("details", "hessian", "fallback"): _first_not_none},
))


def _merge_batching(name: str, values: list, ctx: MergeContext) -> dict:
    """evaluate.BatchSize's record of CUDA out-of-memory back-offs, present where a part backed off: the
    smallest batch size that fitted, and every size that did not, largest first (as one run lists them)."""
    present = [v for v in values if v is not None]
    for v in present:
        if not isinstance(v, dict) or not {"batch_size", "out_of_memory_at"} <= set(v):
            raise MergeError(f"section {name!r}: expected batch_size and out_of_memory_at; found {_dumps(v)[:80]}")
    return {"batch_size": min(v["batch_size"] for v in present),
            "out_of_memory_at": sorted({s for v in present for s in v["out_of_memory_at"]}, reverse=True)}


register_section_merger("batching", _merge_batching, partial=True)


def _without_timing(d: dict) -> dict:
    d = dict(d)
    d.pop("latency_ms", None)
    return d


def _merge_compression(name: str, values: list, ctx: MergeContext) -> list:
    """The variants are measured in one part (:func:`split_spec`): its section, whole."""
    present = [v for v in values if v is not None]
    if len(present) != 1:
        raise MergeError(f"results do not belong together: expected the compression variants in one result; "
                         f"found them in {len(present)}")
    return copy.deepcopy(present[0])


register_section_merger("compression", _merge_compression, partial=True)

#: the order an audit writes its sections in (fairprune.engine.audit.Auditor._sections, then diagnostics); a merged
#: result lists them the same way, others after these in the order first met
SECTION_ORDER = ("footprint", "compression", "precision", "batching", "diagnostics")


def merge_results(results: Sequence[AuditResult]) -> AuditResult:
    """One :class:`AuditResult` from the results of the units of one spec (any order).

    Equal to the result of the whole spec run at once, to the byte of its JSON. Raises
    :class:`MergeError` when the results do not belong together: another model, other data, another
    method, seed, fine-tuning or device, dense figures that differ, a level measured twice, or a section
    that is in some results only.
    """
    results = list(results)
    if not results:
        raise MergeError("nothing to merge: expected at least one audit result; found none")
    for i, r in enumerate(results):
        if not isinstance(r, AuditResult):
            raise MergeError(f"expected fairprune AuditResult objects to merge; result {i + 1} is {type(r).__name__}")
        if not r.levels and not r.sections.get("compression"):
            raise MergeError(f"result {i + 1} has no levels and no compression variants: expected at least one "
                             f"sparsity level or variant per result")
        if [lv.sparsity for lv in r.levels] != list(r.config.sparsities):
            raise MergeError(f"result {i + 1} is inconsistent: config.sparsities {list(r.config.sparsities)} but "
                             f"levels {[lv.sparsity for lv in r.levels]}")
    if len(results) == 1:
        return results[0]
    # by lowest sparsity; the variants' part (no level) last
    parts = sorted(results, key=lambda r: (not r.levels, min((lv.sparsity for lv in r.levels), default=0.0)))
    labels = [f"result {results.index(r) + 1} (sparsity {', '.join(f'{lv.sparsity:g}' for lv in r.levels)})"
              if r.levels else f"result {results.index(r) + 1} (compression variants)" for r in parts]

    _require_same("models", [asdict(r.model) for r in parts], labels)
    _require_same("data", [asdict(r.data) for r in parts], labels)
    _require_same("provenance (model/data hashes, columns, versions)", [asdict(r.provenance) for r in parts], labels)
    _require_same("audit settings (method, fine-tuning, seed, device)",
                  [{k: v for k, v in asdict(r.config).items() if k != "sparsities"} for r in parts], labels)
    _require_same("dense-model figures", [_without_timing(r.dense.to_dict()) for r in parts], labels)

    entries = sorted((lv.sparsity, p, j) for p, r in enumerate(parts) for j, lv in enumerate(r.levels))
    for (s1, p1, _), (s2, p2, _) in zip(entries, entries[1:]):
        if s1 == s2:
            raise MergeError(f"results do not belong together: sparsity {s1:g} was measured in both {labels[p1]} "
                             f"and {labels[p2]}")
    picks = [(p, j) for _, p, j in entries]
    ctx = MergeContext([[lv.sparsity for lv in r.levels] for r in parts], picks, labels)

    names = [n for n in parts[0].sections]
    for r in parts[1:]:
        names += [n for n in r.sections if n not in names]
    names.sort(key=lambda n: SECTION_ORDER.index(n) if n in SECTION_ORDER else len(SECTION_ORDER))
    sections = {}
    for name in names:
        missing = [labels[i] for i, r in enumerate(parts) if name not in r.sections]
        if missing and name not in _PARTIAL:
            raise MergeError(f"results do not belong together: section {name!r} is missing from {', '.join(missing)}")
        merger = SECTION_MERGERS.get(name, _equal_section)
        sections[name] = merger(name, [r.sections.get(name) for r in parts], ctx)

    warnings: list[str] = []
    for r in parts:
        warnings += [w for w in r.warnings if w not in warnings]

    levels = [parts[p].levels[j] for p, j in picks]
    first = parts[0]
    return AuditResult(
        model=first.model, data=first.data,
        config=replace(first.config, sparsities=[lv.sparsity for lv in levels]),
        provenance=first.provenance, dense=first.dense, levels=levels, warnings=warnings, sections=sections,
    )
