"""Plain-language readings of a result, shared by the CLI, the dashboard and the report.

The sentences only restate numbers from the result; every figure they quote follows the
definitions in :mod:`fairprune.engine.metrics`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..core.result import AuditResult, LevelResult

__all__ = ["worst_group", "headline", "text_table", "HEADLINE_NOTE", "meaning", "meaning_parts", "Latency",
           "latencies", "variant_latencies", "latency_reading", "versus_dense", "recorded_iqr", "REFERENCE_INT8", "NO_SPEEDUP", "PlacedWarnings",
           "placed_warnings", "collapsed"]

#: Said wherever the latency of a level timed as the masked dense model is shown (unstructured, 2:4).
NO_SPEEDUP = "no speed-up expected without sparse kernels"

#: Said wherever the latency of a variant run by torch's reference int8 kernels (PT2E convert) is shown.
REFERENCE_INT8 = ("no int8 speed-up expected: torch's reference kernels dequantize to float and compute in float "
                  "(int8 kernels need torch.compile)")

#: What the headline's figures are, for the caption under it (never contradicts the sentence).
HEADLINE_NOTE = ("Points are percentage points of accuracy. The group's CI is its own 95% interval, not adjusted for "
                 "the number of groups; \"beyond chance\" is a test of the group against the other groups' rows, "
                 "Holm-adjusted for the number of groups; the violation's interval holds for all groups at once "
                 "(simultaneous), and its p-value asks whether every group could pay the same.")


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def worst_group(level: LevelResult) -> str:
    """The group with the largest accuracy drop at ``level`` (ties: the larger group, then name)."""
    return max(level.groups, key=lambda g: (level.groups[g].accuracy_drop, level.groups[g].n, g))


def _variants(result: AuditResult) -> list[dict]:
    c = result.sections.get("compression")
    return [e for e in c if isinstance(e, dict)] if isinstance(c, list) else []


def headline(result: AuditResult, level: LevelResult | None = None) -> str:
    """At the chosen (default: highest) sparsity, who loses most, with its CI, vs overall; then, when the
    result records it, whether every group could pay the same (violation, its simultaneous CI, p-value).

    With no levels but compression variants, the same sentence for the variant with the largest
    fairness violation."""
    if not result.levels:
        entries = _variants(result)
        if not entries:
            return "No sparsity level was measured."
        entry = max(entries, key=lambda e: (e["fairness_violation"]["accuracy"], e["method"]))
        return _sentence(f"Under {entry['method']}", LevelResult.from_dict(entry), collapsed(result, entry["method"]))
    lv = level or result.levels[-1]
    return _sentence(f"At {100 * lv.sparsity:g}% sparsity", lv, collapsed(result, lv.sparsity))


def _sentence(where: str, lv: LevelResult, broken: str | None = None) -> str:
    """``broken``: why this model's drops describe a collapsed model (see :func:`collapsed`), or None."""
    g = worst_group(lv)
    m = lv.groups[g]
    lo, hi = m.accuracy_drop_ci95
    verb = "loses" if m.accuracy_drop >= 0 else "gains"
    overall = lv.overall.accuracy_drop
    o_verb = "drops" if overall >= 0 else "rises"
    s = (f"{where} group {g} {verb} {_pts(abs(m.accuracy_drop))} points of accuracy "
         f"(95% CI {_pts(lo)} to {_pts(hi)}) while overall accuracy {o_verb} {_pts(abs(overall))}")
    notes = []
    if broken:
        notes.append(broken)
    elif m.unreliable:
        notes.append(f"only {m.n} samples in that group, so treat it as unreliable")
    elif m.significant:
        notes.append(f"its drop differs from the other groups' beyond chance, Holm-adjusted for {len(lv.groups)} groups")
    s += f" ({'; '.join(notes)})." if notes else "."
    p = (lv.fairness_violation_p_value or {}).get("accuracy")
    if p is None:  # a result written before the violation had a p-value: the first sentence only
        return s
    v_lo, v_hi = lv.fairness_violation_ci95["accuracy"]
    answer = "unlikely" if p < 0.05 else "the data allow it"
    p_text = "p < 0.001" if p < 0.001 else f"p = {p:.2g}"
    return (s + f" Could every group pay the same? {answer[0].upper() + answer[1:]} ({p_text}); the violation is "
            f"{_pts(lv.fairness_violation['accuracy'])} points (95% CI {_pts(v_lo)} to {_pts(v_hi)}, simultaneous "
            f"over the groups).")


def text_table(result: AuditResult) -> str:
    """A fixed-width table: accuracy per group for the dense model, each level, then each compression
    variant (the ``compression`` section), drops in points."""
    groups = result.group_names
    width = max([len(g) for g in groups] + [9]) + 2
    columns = [(f"{100 * lv.sparsity:g}%", lv) for lv in result.levels]
    columns += [(e["method"], LevelResult.from_dict(e)) for e in _variants(result)]
    widths = [max(16, len(label) + 2) for label, _ in columns]
    head = f"{'group':<{width}}{'n':>7}{'dense':>8}" + "".join(f"{label:>{w}}" for (label, _), w in zip(columns, widths))
    lines = [head, "-" * len(head)]

    def row(name, dense_m, per_column):
        cells = "".join(f"{f'{100 * m.accuracy:.1f} ({round(-100 * m.accuracy_drop, 1) + 0.0:+5.1f})':>{w}}"
                        for m, w in zip(per_column, widths))
        return f"{name:<{width}}{dense_m.n:>7}{100 * dense_m.accuracy:8.1f}{cells}"

    lines.append(row("(overall)", result.dense.overall, [lv.overall for _, lv in columns]))
    for g in groups:
        lines.append(row(g, result.dense.groups[g], [lv.groups[g] for _, lv in columns]))
    lines.append("-" * len(head))
    lines.append(f"{'violation':<{width}}{'':>7}{'':>8}" + "".join(
        f"{100 * lv.fairness_violation['accuracy']:{w}.1f}" for (_, lv), w in zip(columns, widths)))
    if any(lv.size_bytes is not None for _, lv in columns) and result.dense.size_bytes is not None:
        lines.append(f"{'size (MB)':<{width}}{'':>7}{result.dense.size_bytes / 1e6:8.3f}" + "".join(
            f"{'' if lv.size_bytes is None else f'{lv.size_bytes / 1e6:.3f}':>{w}}"
            for (_, lv), w in zip(columns, widths)))
    lines.append("accuracy in %, change from dense in points in brackets; violation = max group drop - min group drop (points)")
    if _variants(result):
        lines.append("compression variants after the levels; size = bytes of the weights as stored")
    return "\n".join(lines)


# ---- sanity warnings, placed beside the figures they concern -----------------------------------------
# The engine (fairprune.engine.sanity) words each warning; these patterns read which model or group a
# warning names, so the pages can show it next to that model's chart (tests/test_report.py runs the
# engine's own sentences through them).

_CHANCE = re.compile(r"^at or below chance, (?P<where>the majority-class rate \(.*?\)): (?P<models>.*?); "
                     r"(?:this model has|these models have) collapsed")
_DENSE_CHANCE = re.compile(r"^the dense model's accuracy \((?P<acc>[^)]*)\) is at or below chance, "
                           r"(?P<where>the majority-class rate \(.*?\))")
_GROUP = re.compile(r"^group (['\"])(?P<group>.*?)\1 \(")


def _model_label(where: float | str) -> str:
    """How the engine names a model in its warnings: a level '90% sparsity', a variant by its method."""
    return f"{100 * where:g}% sparsity" if isinstance(where, (int, float)) else str(where)


@dataclass(frozen=True)
class PlacedWarnings:
    """A result's warnings sorted by what they concern.

    ``models``: per level (its sparsity) or variant (its method), the sentences about that model;
    ``groups``: per group, the sentences about it (binary rates undefined); ``general``: the rest
    (single-class labels, the dense model at chance, precision, diagnostics), in the result's order.
    Every warning of the result is in exactly one place, except the dense model at chance, which is
    also repeated for every level (every drop is measured from it)."""

    general: list[str]
    models: dict[float | str, list[str]]
    groups: dict[str, list[str]]

    def at(self, where: float | str) -> list[str]:
        return self.models.get(where, [])


def placed_warnings(result: AuditResult) -> PlacedWarnings:
    """Where each of ``result.warnings`` belongs: beside a level's or variant's figures, a group's, or general."""
    names: list[float | str] = [lv.sparsity for lv in result.levels] + [v.method for v in result.compression]
    general: list[str] = []
    models: dict[float | str, list[str]] = {}
    groups: dict[str, list[str]] = {}
    for w in result.warnings:
        m = _CHANCE.match(w)
        if m:
            listed = [x.strip() for x in m.group("models").split(",")]
            hit = False
            for where in names:
                label = _model_label(where)
                for item in listed:
                    if item.startswith(label + " ") and item[len(label) + 1:].endswith("%"):
                        acc = item[len(label) + 1:]
                        what = f"At {label}" if isinstance(where, float) else f"Under {label}"
                        models.setdefault(where, []).append(
                            f"{what} the model's accuracy ({acc}) is at or below chance, {m.group('where')}: it has "
                            "collapsed, so its group drops (and any drop that differs beyond chance) describe a "
                            "broken model, not who pays for pruning.")
                        hit = True
            if not hit:
                general.append(w)
            continue
        if _DENSE_CHANCE.match(w):
            general.append(w)
            for where in names:
                models.setdefault(where, []).append(
                    "The dense model itself is at or below chance: every drop here is measured from a model that "
                    "does not do the task.")
            continue
        g = _GROUP.match(w)
        if g and g.group("group") in result.group_names:
            groups.setdefault(g.group("group"), []).append(w)
            continue
        general.append(w)
    return PlacedWarnings(general, models, groups)


def collapsed(result: AuditResult, where: float | str) -> str | None:
    """Why the level at sparsity ``where`` (or the variant named ``where``) describes a collapsed model, in
    words for the headline (the sanity check found it, or the dense model, at or below chance); None when
    it did not."""
    for w in result.warnings:
        if _DENSE_CHANCE.match(w):
            return "but the dense model is at or below chance, so no drop here says who pays for pruning"
        m = _CHANCE.match(w)
        if m and any(x.strip().startswith(_model_label(where) + " ") for x in m.group("models").split(",")):
            return (f"but this model is at or below chance, {m.group('where')}: it has collapsed, so its drops "
                    "describe a broken model, not who pays for pruning")
    return None


# ---- latency: a median with its spread; a difference only where the spreads do not overlap -------------

@dataclass(frozen=True)
class Latency:
    """One model's timing as recorded: ``median_ms`` (``latency_ms``), ``iqr`` ([p25, p75] ms, None in results
    written before the spread was recorded), ``repeats``, and ``timed`` ('dense', 'masked', 'compacted', or
    None): a model timed as the masked dense model ('masked') cannot be faster than dense in dense kernels;
    ``caveat``: what else its kernels mean for its speed (a compression variant on reference int8 kernels)."""

    label: str
    median_ms: float
    iqr: tuple[float, float] | None
    repeats: int | None
    timed: str | None
    caveat: str | None = None

    @property
    def no_speedup(self) -> bool:
        return self.timed == "masked"

    def spread_text(self) -> str:
        """'12.3 ms (11.8–13.0, 20 runs)' or '12.3 ms (no spread recorded)'."""
        if self.iqr is None:
            return f"{self.median_ms:.3g} ms (no spread recorded)"
        runs = f", {self.repeats} runs" if self.repeats else ""
        return f"{self.median_ms:.3g} ms ({self.iqr[0]:.3g}–{self.iqr[1]:.3g}{runs})"


def latencies(result: AuditResult) -> dict[float, Latency]:
    """The timed models: 0.0 for the dense model, then each level's sparsity; spread and ``timed`` from the
    ``footprint`` section. Empty when latency was not measured."""
    fp = result.sections.get("footprint") if isinstance(result.sections.get("footprint"), Mapping) else {}
    how: dict[float, Mapping] = {0.0: fp.get("dense") or {}}
    for x in fp.get("levels") or []:
        if isinstance(x, Mapping) and isinstance(x.get("sparsity"), (int, float)):
            how[float(x["sparsity"])] = x
    out: dict[float, Latency] = {}
    for s, part in [(0.0, result.dense), *((lv.sparsity, lv) for lv in result.levels)]:
        if part.latency_ms is not None:
            out[s] = _latency("dense" if s == 0 else f"{100 * s:g}%", part.latency_ms, how.get(s) or {})
    return out


def recorded_iqr(how: Mapping | None) -> tuple[float, float] | None:
    """A footprint entry's ``latency_ms_iqr`` as (p25, p75) ms; None where none was recorded."""
    iqr = how.get("latency_ms_iqr") if isinstance(how, Mapping) else None
    return (float(iqr[0]), float(iqr[1])) if isinstance(iqr, (list, tuple)) and len(iqr) == 2 else None


def _latency(label: str, median_ms: float, how: Mapping, caveat: str | None = None) -> Latency:
    return Latency(label, float(median_ms), recorded_iqr(how), how.get("latency_repeats"), how.get("timed"), caveat)


def variant_latencies(result: AuditResult) -> dict[str, Latency]:
    """The timed compression variants, keyed by method, with their spread from the ``footprint`` section's
    ``compression`` entries (results written before variants recorded a spread read as 'no spread recorded').
    A variant run by torch's reference int8 kernels carries :data:`REFERENCE_INT8` as its caveat."""
    fp = result.sections.get("footprint") if isinstance(result.sections.get("footprint"), Mapping) else {}
    how = {x.get("method"): x for x in fp.get("compression") or [] if isinstance(x, Mapping)}
    out: dict[str, Latency] = {}
    for v in result.compression:
        if v.latency_ms is None:
            continue
        caveat = REFERENCE_INT8 if v.details.get("backend") == "torchao.pt2e" else None
        out[v.method] = _latency(v.method, v.latency_ms, how.get(v.method) or {}, caveat)
    return out


def latency_reading(dense: Latency, level: Latency) -> str:
    """How a level's (or a compression variant's) latency compares with the dense model's, claiming a
    difference only where the two spreads ([p25, p75]) do not overlap: 'no measurable difference from dense',
    '41% faster than dense', '2.1x slower than dense'; with 'no speed-up expected without sparse kernels' for a
    masked model and the model's own ``caveat`` where it has one."""
    if dense.iqr is None or level.iqr is None:
        text = "no spread recorded, so no difference from dense can be read"
    elif dense.iqr[1] < level.iqr[0] or level.iqr[1] < dense.iqr[0]:
        r = level.median_ms / dense.median_ms
        if r < 1:
            text = f"{1 - r:.0%} faster than dense"
        else:
            text = f"{r:.1f}x slower than dense" if r >= 2 else f"{r - 1:.0%} slower than dense"
        text += " (the spreads do not overlap)"
        if level.no_speedup:
            text += (": a masked level does exactly the dense model's work, so this difference is the machine's "
                     "load while timing, not pruning")
    else:
        text = "no measurable difference from dense (the spreads overlap)"
    text = f"{text}; {NO_SPEEDUP}" if level.no_speedup else text
    return f"{text}; {level.caveat}" if level.caveat else text


def versus_dense(dense: Latency | None, model: Latency, *, reference: bool = False) -> str:
    """The 'vs dense' cell of a latency table: 'reference' for the dense model itself, else
    :func:`latency_reading` against ``dense``; without a dense timing, only what the model's kernels imply
    (:data:`NO_SPEEDUP`, its caveat, or '—')."""
    if reference:
        return "reference"
    if dense is not None:
        return latency_reading(dense, model)
    return NO_SPEEDUP if model.no_speedup else (model.caveat or "—")


# ---- what this means: the paragraph the report and the Results page both open with ----------------------

def _join(names: list[str]) -> str:
    """['a'] -> 'a'; ['a', 'b', 'c'] -> 'a, b and c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def meaning_parts(result: AuditResult) -> list[str]:
    """The plain-words reading of the highest level, sentence by sentence (see :func:`meaning`); empty when
    the result has no levels."""
    if not result.levels:
        return []
    lv = result.levels[-1]
    groups = lv.groups
    g = worst_group(lv)
    best = min(groups, key=lambda k: (groups[k].accuracy_drop, -groups[k].n, k))
    o = lv.overall.accuracy_drop
    simultaneous = any(getattr(x, "interval_method", None) for x in result.levels)
    compared = "the other groups'" if any(getattr(x, "significance_test", None) for x in result.levels) \
        else "the overall drop"
    broken = collapsed(result, lv.sparsity)
    parts = [f"Pruning removes {100 * lv.sparsity:g}% of the model's prunable weights. Over the whole test set "
             f"accuracy {'drops' if o >= 0 else 'rises'} by {_pts(abs(o))} points"]
    if len(groups) > 1:
        b = groups[best].accuracy_drop
        parts[0] += (f", but the groups do not pay equally: {g} loses {_pts(groups[g].accuracy_drop)} points while "
                     f"{best} {'loses' if b >= 0 else 'gains'} {_pts(abs(b))}.")
        v = lv.fairness_violation["accuracy"]
        ci = lv.fairness_violation_ci95.get("accuracy")
        where = f", simultaneous over the {len(groups)} groups" if simultaneous else ""
        parts.append(f"The difference between the group that loses most and the one that loses least, the fairness "
                     f"violation, is {_pts(v)} points"
                     + (f" (95% interval {_pts(ci[0])} to {_pts(ci[1])}{where})" if ci else "")
                     + "; 0 would mean every group paid the same.")
        if broken:
            parts.append(f"Read none of this as who pays for pruning: at {100 * lv.sparsity:g}% sparsity the sanity "
                         f"check found {broken.removeprefix('but ')}.")
        else:
            p = (lv.fairness_violation_p_value or {}).get("accuracy")
            if p is not None and p < 0.05:
                parts.append(f"A violation this large would be unlikely if every group's drop were the same ({_p(p)})"
                             + ("; the interval, which holds for all groups at once, is the more cautious of the two "
                                "and reaches 0." if ci and ci[0] <= 0 else "."))
            elif p is not None:
                parts.append(f"A violation this large could arise by chance even if every group's drop were the same "
                             f"({_p(p)}).")
            sig = [k for k, m in groups.items() if m.significant]
            if sig:
                parts.append(f"For {_join(sig)} the drop differs from {compared} by more than chance would "
                             f"explain, after correcting for testing {len(groups)} groups.")
            else:
                parts.append(f"No group's drop differs from {compared} by more than chance at this sample "
                             f"size, after correcting for testing {len(groups)} groups.")
        gainers = [k for k, m in groups.items() if m.accuracy_drop < 0]
        if gainers and not broken:
            parts.append(f"{_join(gainers)} even {'gains' if len(gainers) == 1 else 'gain'} accuracy: pruning can "
                         "favour the groups the model already serves well (the paper's \u201crich get richer\u201d effect).")
    else:
        parts[0] += "."
        if broken:
            parts.append(f"The sanity check found {broken.removeprefix('but ')}.")
    small = [k for k, m in groups.items() if m.unreliable]
    if small:
        parts.append(f"Groups with fewer than 30 samples ({_join(small)}) are shown but too small to act on.")
    if len(result.levels) > 1 and len(groups) > 1:
        gentle = min(result.levels[:-1], key=lambda x: (x.fairness_violation["accuracy"], -x.sparsity))
        change = -gentle.overall.accuracy_drop
        parts.append(f"At {100 * gentle.sparsity:g}% sparsity the violation is {_pts(gentle.fairness_violation['accuracy'])} "
                     f"points and overall accuracy changes by {100 * change:+.1f} points.")
    parts.append("Before shipping, decide whether this difference is acceptable for the people the model serves; "
                 "if not, prune less, or repair the pruned model with fairness-constrained fine-tuning (fairprune's "
                 "mitigation step) and check the repair on held-out rows.")
    return parts


def meaning(result: AuditResult) -> str:
    """"What this means": the plain-words paragraph the report's summary and the dashboard's Results page both
    open with. Who pays at the highest level and by how much, whether the difference could be chance, which
    groups differ beyond chance (never about a model the sanity check found at or below chance), the gentler
    level if there is one, and what to decide. Empty when the result has no levels."""
    return " ".join(meaning_parts(result))
