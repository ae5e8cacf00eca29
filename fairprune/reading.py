"""Plain-language readings of a result, shared by the CLI, the dashboard and the report.

The sentences only restate numbers from the result; every figure they quote follows the
definitions in :mod:`fairprune.metrics`.
"""

from __future__ import annotations

from .result import AuditResult, LevelResult

__all__ = ["worst_group", "headline", "text_table"]


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def worst_group(level: LevelResult) -> str:
    """The group with the largest accuracy drop at ``level`` (ties: the larger group, then name)."""
    return max(level.groups, key=lambda g: (level.groups[g].accuracy_drop, level.groups[g].n, g))


def headline(result: AuditResult, level: LevelResult | None = None) -> str:
    """One sentence: at the chosen (default: highest) sparsity, who loses most, with its CI, vs overall."""
    if not result.levels:
        return "No sparsity level was measured."
    lv = level or result.levels[-1]
    g = worst_group(lv)
    m = lv.groups[g]
    lo, hi = m.accuracy_drop_ci95
    verb = "loses" if m.accuracy_drop >= 0 else "gains"
    overall = lv.overall.accuracy_drop
    o_verb = "drops" if overall >= 0 else "rises"
    s = (f"At {100 * lv.sparsity:.0f}% sparsity group {g} {verb} {_pts(abs(m.accuracy_drop))} points of accuracy "
         f"(CI {_pts(lo)} to {_pts(hi)}) while overall accuracy {o_verb} {_pts(abs(overall))}")
    notes = []
    if m.unreliable:
        notes.append(f"only {m.n} samples in that group, so treat it as unreliable")
    elif m.significant:
        notes.append("a gap beyond chance after correcting for the number of groups")
    return s + (f" ({'; '.join(notes)})." if notes else ".")


def text_table(result: AuditResult) -> str:
    """A fixed-width table: accuracy per group for the dense model and each level, drops in points."""
    groups = result.group_names
    width = max([len(g) for g in groups] + [9]) + 2
    head = f"{'group':<{width}}{'n':>7}{'dense':>8}" + "".join(f"{f'{100 * lv.sparsity:g}%':>16}" for lv in result.levels)
    lines = [head, "-" * len(head)]

    def row(name, dense_m, per_level):
        cells = "".join(f"{100 * m.accuracy:7.1f} ({-100 * m.accuracy_drop:+5.1f})" for m in per_level)
        return f"{name:<{width}}{dense_m.n:>7}{100 * dense_m.accuracy:8.1f}{cells}"

    lines.append(row("(overall)", result.dense.overall, [lv.overall for lv in result.levels]))
    for g in groups:
        lines.append(row(g, result.dense.groups[g], [lv.groups[g] for lv in result.levels]))
    lines.append("-" * len(head))
    lines.append(f"{'violation':<{width}}{'':>7}{'':>8}" + "".join(
        f"{100 * lv.fairness_violation['accuracy']:16.1f}" for lv in result.levels))
    lines.append("accuracy in %, change from dense in points in brackets; violation = max group drop - min group drop (points)")
    return "\n".join(lines)
