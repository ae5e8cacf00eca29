"""Plain-language readings of a result, shared by the CLI, the dashboard and the report.

The sentences only restate numbers from the result; every figure they quote follows the
definitions in :mod:`fairprune.engine.metrics`.
"""

from __future__ import annotations

from ..core.result import AuditResult, LevelResult

__all__ = ["worst_group", "headline", "text_table", "HEADLINE_NOTE"]

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
        return _sentence(f"Under {entry['method']}", LevelResult.from_dict(entry))
    lv = level or result.levels[-1]
    return _sentence(f"At {100 * lv.sparsity:.0f}% sparsity", lv)


def _sentence(where: str, lv: LevelResult) -> str:
    g = worst_group(lv)
    m = lv.groups[g]
    lo, hi = m.accuracy_drop_ci95
    verb = "loses" if m.accuracy_drop >= 0 else "gains"
    overall = lv.overall.accuracy_drop
    o_verb = "drops" if overall >= 0 else "rises"
    s = (f"{where} group {g} {verb} {_pts(abs(m.accuracy_drop))} points of accuracy "
         f"(95% CI {_pts(lo)} to {_pts(hi)}) while overall accuracy {o_verb} {_pts(abs(overall))}")
    notes = []
    if m.unreliable:
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
