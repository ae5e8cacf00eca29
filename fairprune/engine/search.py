"""Operating point and CI gate: the highest sparsity whose pruned model stays within a fairness budget.

A :class:`Budget` bounds, at one sparsity level, the fairness violation in accuracy
ξ_acc = max_a drop(a) − min_a drop(a) (the paper's Eq. 3 read on accuracy drops), the overall accuracy
drop, and every group's accuracy drop. With ``confidence=0.95`` each bound is read on the upper end of
the figure's 95% interval (or on the estimate, when that is larger), so a level passes only when the data
leave little room for it to be worse; without, on the point estimate. The intervals are those of
:mod:`fairprune.engine.metrics`: the violation's is simultaneous over the groups (it holds for all of them at
once, so it is wide when groups are small); the overall drop's and each group's are their own 95% score
intervals, not adjusted for the number of groups.

:func:`search`: feasibility need not be monotone in sparsity (sampling noise; the majority can gain;
and a model that collapses fails every group alike, so its violation shrinks again near 99%). So:

1. measure a coarse grid (:data:`DEFAULT_GRID` inside [lo, hi], plus hi, and lo when lo > 0);
2. take the *first* grid point that fails and the grid point below it (lo = 0 stands for the dense
   model, which meets any budget);
3. bisect between them until they are ``tol`` apart or ``max_evals`` levels have been measured.

The recommendation is the highest measured sparsity below the first failure: every measured level
at or below it passes. Feasible levels above a failure are kept on the frontier and named in the note,
never recommended. Every level goes through one :class:`fairprune.engine.audit.Auditor`, so no level is
measured twice and a level gets the same numbers whatever else is measured beside it.

:func:`check`: one level against a budget; ``fairprune check`` exits 1 when it fails.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .audit import Auditor, Progress
from ..core.errors import InputError
from .prune import get_method
from ..core.result import AuditResult, LevelResult

__all__ = ["SCHEMA", "DEFAULT_GRID", "CONFIDENCE_LEVELS", "Budget", "FrontierPoint", "SearchResult",
           "SearchReport", "CheckResult", "VariantPoint", "search", "search_methods", "check"]

SCHEMA = "fairprune.search/1"
DEFAULT_GRID = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
#: Results carry 95% intervals only; other levels would need their own intervals computed.
CONFIDENCE_LEVELS = (0.95,)
_DIGITS = 6          # bisection midpoints are rounded so a level's cache key and seed are stable


def _fmt(x: float) -> str:
    return f"{x:.3f}"


@dataclass(frozen=True)
class Budget:
    """What a pruned model must meet at one level; None leaves a bound out.

    max_violation bounds ``fairness_violation["accuracy"]``; max_overall_drop bounds
    ``overall.accuracy_drop``; max_group_drop bounds every ``groups[g].accuracy_drop`` (accuracy
    fractions, e.g. 0.02 = 2 points). confidence: None (read the estimates) or 0.95 (read the upper
    end of each 95% interval, or the estimate when larger: simultaneous for the violation, per figure for
    the overall and group drops).
    """

    max_violation: float | None = None
    max_overall_drop: float | None = None
    max_group_drop: float | None = None
    confidence: float | None = None

    def __post_init__(self):
        bounds = {"max-violation": self.max_violation, "max-overall-drop": self.max_overall_drop,
                  "max-group-drop": self.max_group_drop}
        if all(v is None for v in bounds.values()):
            raise InputError("expected a budget: at least one of --max-violation, --max-overall-drop, "
                             "--max-group-drop; found none")
        for name, v in bounds.items():
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"--{name} must be a finite number (an accuracy fraction, e.g. 0.02); found {v!r}")
            if name == "max-violation" and v < 0:
                raise InputError(f"--max-violation must be >= 0 (a violation is never negative); found {v!r}")
            if not -1.0 <= v <= 1.0:
                raise InputError(f"--{name} must be an accuracy fraction in [-1, 1], e.g. 0.02 for 2 points; found {v!r}")
        if self.confidence is not None and self.confidence not in CONFIDENCE_LEVELS:
            raise InputError(f"--confidence must be one of {', '.join(map(str, CONFIDENCE_LEVELS))} (results carry "
                             f"95% intervals); found {self.confidence!r}")

    @property
    def reads(self) -> str:
        return "ci95_upper" if self.confidence else "estimate"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reads": self.reads}

    def _value(self, estimate: float, ci: Sequence[float] | None) -> float:
        if self.confidence and ci is not None:
            return max(estimate, ci[1])
        return estimate

    def _figure(self, estimate: float, ci, value: float) -> str:
        return f"{_fmt(estimate)} (CI upper {_fmt(value)})" if self.confidence and ci is not None else _fmt(estimate)

    def breaches(self, level: LevelResult) -> list[str]:
        """One plain sentence per bound ``level`` breaks (empty: it meets the budget)."""
        out = []
        if self.max_violation is not None:
            est = level.fairness_violation["accuracy"]
            ci = level.fairness_violation_ci95.get("accuracy")
            v = self._value(est, ci)
            if v > self.max_violation:
                drops = {g: m.accuracy_drop for g, m in level.groups.items()}
                hi_g, lo_g = max(drops, key=drops.get), min(drops, key=drops.get)
                out.append(f"fairness violation {self._figure(est, ci, v)} > max-violation {self.max_violation:g}, "
                           f"over by {_fmt(v - self.max_violation)}: group {hi_g} drops {_fmt(drops[hi_g])} "
                           f"while group {lo_g} drops {_fmt(drops[lo_g])}")
        if self.max_overall_drop is not None:
            m = level.overall
            v = self._value(m.accuracy_drop, m.accuracy_drop_ci95)
            if v > self.max_overall_drop:
                out.append(f"overall accuracy drops {self._figure(m.accuracy_drop, m.accuracy_drop_ci95, v)} "
                           f"> max-overall-drop {self.max_overall_drop:g}, over by {_fmt(v - self.max_overall_drop)}")
        if self.max_group_drop is not None:
            worst = sorted(level.groups.items(), key=lambda kv: -self._value(kv[1].accuracy_drop, kv[1].accuracy_drop_ci95))
            for g, m in worst:
                v = self._value(m.accuracy_drop, m.accuracy_drop_ci95)
                if v > self.max_group_drop:
                    note = f" (only {m.n} samples: unreliable)" if m.unreliable else ""
                    out.append(f"group {g} drops {self._figure(m.accuracy_drop, m.accuracy_drop_ci95, v)} "
                               f"> max-group-drop {self.max_group_drop:g}, over by {_fmt(v - self.max_group_drop)}{note}")
        return out


@dataclass(frozen=True)
class FrontierPoint:
    """One measured level as the search saw it (accuracy fractions; drops = dense − pruned).

    ``phase`` is "grid" or "bisect"; ``order`` the 1-based position in which it was measured;
    size_bytes / latency_ms: what the level ships as and how fast it runs (:mod:`fairprune.engine.footprint`),
    None when not measured.
    """

    sparsity: float
    achieved_sparsity: float
    overall_accuracy: float
    overall_drop: float
    overall_drop_ci95: tuple[float, float] | None
    violation: float
    violation_ci95: tuple[float, float] | None
    worst_group: str
    worst_group_drop: float
    worst_group_drop_ci95: tuple[float, float] | None
    feasible: bool
    breaches: tuple[str, ...]
    phase: str
    order: int
    size_bytes: int | None = None
    latency_ms: float | None = None

    @classmethod
    def of(cls, level: LevelResult, budget: Budget, *, phase: str, order: int) -> "FrontierPoint":
        from ..present.reading import worst_group

        g = worst_group(level)
        breaches = tuple(budget.breaches(level))
        ci = level.fairness_violation_ci95.get("accuracy")
        return cls(level.sparsity, level.achieved_sparsity, level.overall.accuracy, level.overall.accuracy_drop,
                   level.overall.accuracy_drop_ci95, level.fairness_violation["accuracy"],
                   tuple(ci) if ci is not None else None, g, level.groups[g].accuracy_drop,
                   level.groups[g].accuracy_drop_ci95, not breaches, breaches, phase, order, level.size_bytes,
                   level.latency_ms)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


@dataclass(frozen=True)
class VariantPoint:
    """A compression variant (quantization, 2:4, combinations) judged against the same budget as the levels:
    ``point`` carries its figures (``phase`` "compression"; ``sparsity`` 0.5 with a 2:4 step, else 0)."""

    method: str
    setting: str
    quantized_fraction: float
    point: FrontierPoint

    @classmethod
    def of(cls, variant, budget: Budget, *, order: int) -> "VariantPoint":
        return cls(variant.method, variant.setting, variant.quantized_fraction,
                   FrontierPoint.of(variant.level, budget, phase="compression", order=order))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "setting": self.setting, "quantized_fraction": self.quantized_fraction,
                **self.point.to_dict()}


@dataclass(frozen=True)
class SearchResult:
    """The operating-point search for one pruning method.

    frontier: every measured level, by sparsity; recommended: the point chosen (None when no level
    passed); evaluations: levels measured (the dense model not counted); audit: those levels as an
    :class:`AuditResult` (provenance, dense model, full per-group figures).
    """

    method: str
    budget: Budget
    recommended: FrontierPoint | None
    frontier: tuple[FrontierPoint, ...]
    evaluations: int
    note: str
    audit: AuditResult
    config: dict[str, Any] = field(default_factory=dict)
    variants: tuple[VariantPoint, ...] = ()

    def entry(self) -> dict[str, Any]:
        """This method's entry under ``methods`` in search.json."""
        return {"method": self.method,
                "recommended": self.recommended.to_dict() if self.recommended else None,
                "frontier": [p.to_dict() for p in self.frontier],
                "evaluations": self.evaluations, "note": self.note,
                "levels": [lv.to_dict() for lv in self.audit.levels]}

    def to_dict(self) -> dict[str, Any]:
        """search.json for this method alone (the same shape as several methods)."""
        return SearchReport((self,)).to_dict()


@dataclass(frozen=True)
class SearchReport:
    """Searches over one model, data set and budget, one per method; ``to_dict`` is search.json."""

    results: tuple[SearchResult, ...]

    def __post_init__(self):
        if not self.results:
            raise ValueError("SearchReport needs at least one SearchResult; received none")

    @property
    def best(self) -> SearchResult | None:
        """The method with the highest recommended sparsity (ties: higher overall accuracy); None if none passed."""
        ok = [r for r in self.results if r.recommended is not None]
        return max(ok, key=lambda r: (r.recommended.sparsity, r.recommended.overall_accuracy), default=None)

    @property
    def variants(self) -> tuple[VariantPoint, ...]:
        return tuple(v for r in self.results for v in r.variants)

    def smallest_within_budget(self) -> dict[str, Any] | None:
        """The smallest model (stored bytes) within the budget among each method's recommended level and every
        compression variant (ties: higher overall accuracy); None when none passed or none was sized. A level
        the search did not recommend (one that passes above a failure) is not offered here either."""
        cands = [("pruning", r.method, r.recommended) for r in self.results if r.recommended is not None]
        cands += [("compression", v.method, v.point) for v in self.variants]
        ok = [c for c in cands if c[2].feasible and c[2].size_bytes is not None]
        if not ok:
            return None
        kind, method, p = min(ok, key=lambda c: (c[2].size_bytes, -c[2].overall_accuracy, c[1]))
        return {"kind": kind, "method": method, "sparsity": p.sparsity, "size_bytes": p.size_bytes,
                "latency_ms": p.latency_ms, "overall_accuracy": p.overall_accuracy, "violation": p.violation}

    def frontier_table(self):
        """Long pandas table for plots: one row per (method, measured level), with ``recommended``."""
        import pandas as pd

        rows = []
        for r in self.results:
            for p in r.frontier:
                rows.append({"method": r.method, **p.to_dict(),
                             "recommended": r.recommended is not None and p.sparsity == r.recommended.sparsity})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        first = self.results[0].audit.to_dict()
        best = self.best
        warnings = sorted({w for r in self.results for w in r.audit.warnings})
        d = {
            "schema": SCHEMA,
            "budget": self.results[0].budget.to_dict(),
            "config": {**self.results[0].config, "methods": [r.method for r in self.results]},
            "model": first["model"], "data": first["data"], "provenance": first["provenance"],
            "dense": first["dense"],
            "methods": {r.method: r.entry() for r in self.results},
            "best": {"method": best.method, **best.recommended.to_dict()} if best else None,
        }
        if self.variants:
            d["compression"] = [v.to_dict() for v in self.variants]
            d["smallest_within_budget"] = self.smallest_within_budget()
        if warnings:
            d["warnings"] = warnings
        return d

    def text(self) -> str:
        """The frontier per method as a fixed-width table, then the recommendation and note in plain words."""
        b = self.results[0].budget
        reads = "upper end of the 95% interval" if b.confidence else "estimates"
        lines = ["budget: " + ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in asdict(b).items()
                                         if k != "confidence" and v is not None) + f" (read on {reads})"]
        for r in self.results:
            lines += ["", f"{r.method}: {r.evaluations} levels measured",
                      f"{'sparsity':>9}{'overall acc':>13}{'drop':>8}{'violation':>11}{'CI95':>17}  worst group (drop)  pass"]
            for p in r.frontier:
                ci = f"[{_fmt(p.violation_ci95[0])}, {_fmt(p.violation_ci95[1])}]" if p.violation_ci95 else ""
                mark = "  <- recommended" if r.recommended is not None and p.sparsity == r.recommended.sparsity else ""
                lines.append(f"{p.sparsity:>9g}{p.overall_accuracy:>13.3f}{p.overall_drop:>8.3f}{p.violation:>11.3f}"
                             f"{ci:>17}  {f'{p.worst_group} ({_fmt(p.worst_group_drop)})':<18}  "
                             f"{'yes' if p.feasible else 'no'}{mark}")
            if r.recommended is not None:
                p = r.recommended
                size = f", {p.size_bytes / 1e6:.3g} MB as shipped" if p.size_bytes is not None else ""
                lines.append(f"recommended: sparsity {p.sparsity:g} (achieved {p.achieved_sparsity:.3f}), overall accuracy "
                             f"{p.overall_accuracy:.3f}, fairness violation {_fmt(p.violation)}{size}")
            else:
                lines.append("recommended: none")
            lines.append(f"note: {r.note}")
        if self.variants:
            lines += ["", "compression variants",
                      f"{'variant':<28}{'size (MB)':>10}{'overall acc':>13}{'drop':>8}{'violation':>11}  pass"]
            for v in self.variants:
                p = v.point
                size = f"{p.size_bytes / 1e6:.3f}" if p.size_bytes is not None else "—"
                lines.append(f"{v.method:<28}{size:>10}{p.overall_accuracy:>13.3f}{p.overall_drop:>8.3f}"
                             f"{p.violation:>11.3f}  {'yes' if p.feasible else 'no: ' + '; '.join(p.breaches)}")
            small = self.smallest_within_budget()
            if small is not None:
                what = (f"{small['method']} at sparsity {small['sparsity']:g}" if small["kind"] == "pruning"
                        else small["method"])
                lines.append(f"smallest within the budget: {what}, {small['size_bytes'] / 1e6:.3g} MB")
            else:
                lines.append("smallest within the budget: none (no measured model passed, or none was sized)")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


def _grid(lo: float, hi: float, grid: Sequence[float] | None) -> list[float]:
    for name, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise InputError(f"--{name} must be a sparsity in [0, 1); found {v!r}")
    if not lo < hi:
        raise InputError(f"--lo must be below --hi; found lo={lo!r}, hi={hi!r}")
    points = DEFAULT_GRID if grid is None else tuple(grid)
    inside = {round(float(s), _DIGITS) for s in points if lo < float(s) < hi}
    inside |= {round(hi, _DIGITS)} | ({round(lo, _DIGITS)} if lo > 0 else set())
    return sorted(inside)


def coarse_grid(lo: float = 0.0, hi: float = 0.99, grid: Sequence[float] | None = None) -> list[float]:
    """The levels :func:`search` measures first (``grid`` inside (lo, hi), and hi; defaults as search's):
    ``max_evals`` must be at least their number. A form asks this before it queues a search."""
    return _grid(lo, hi, grid)


def _plan(lo: float, hi: float, grid: Sequence[float] | None, tol: float, max_evals: int) -> list[float]:
    """The validated coarse grid (sorted sparsities) for these search options."""
    points = _grid(lo, hi, grid)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise InputError(f"--tol must be a sparsity step in (0, 1), e.g. 0.01; found {tol!r}")
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < len(points):
        raise InputError(f"--max-evals must be an integer >= the {len(points)} coarse grid points {points}; "
                         f"found {max_evals!r}")
    return points


def _search(auditor: Auditor, budget: Budget, points: list[float], *, lo: float, hi: float, tol: float,
            max_evals: int, progress: Progress | None) -> SearchResult:
    total = max_evals + 1
    seen: dict[float, FrontierPoint] = {}

    def measure(s: float, phase: str) -> FrontierPoint:
        [level] = auditor.measure([s])
        seen[s] = FrontierPoint.of(level, budget, phase=phase, order=len(seen) + 1)
        if progress is not None:
            progress(len(seen) + 1, total, f"{auditor.method}: level {len(seen)} of at most {max_evals} (sparsity "
                                           f"{s:g}) {'within' if seen[s].feasible else 'over'} the budget")
        return seen[s]

    # 1. the coarse grid, low to high
    for s in points:
        measure(s, "grid")
    # 2. the first failure and the level below it
    first_fail = next((s for s in points if not seen[s].feasible), None)
    stopped_early = False
    if first_fail is None:
        good, bad = points[-1], None
    else:
        below = [s for s in points if s < first_fail]
        # lo = 0 stands for the dense model (never measured); a measured lo > 0 that fails leaves no bracket
        good, bad = (below[-1] if below else (0.0 if lo == 0 else None)), first_fail
        # 3. bisection
        while good is not None and bad - good > tol + 1e-12:
            if len(seen) >= max_evals:
                stopped_early = True
                break
            mid = round((good + bad) / 2, _DIGITS)
            if mid in (good, bad):
                break
            if measure(mid, "bisect").feasible:
                good = mid
            else:
                bad = mid
    recommended = seen.get(good) if good is not None else None
    levels = auditor.measure(sorted(seen))        # all cached: nothing is measured again
    frontier = tuple(seen[s] for s in sorted(seen))
    note = _note(budget, frontier, recommended, first_fail, good, bad, tol, stopped_early, lo)
    if progress is not None:
        progress(total, total, f"{auditor.method}: {len(seen)} levels measured")
    audit = auditor.result(levels)
    config = {"lo": lo, "hi": hi, "grid": points, "tol": tol, "max_evals": max_evals,
              "finetune_epochs": auditor.finetune_epochs, "seed": auditor.seed, "device": auditor.device.type}
    return SearchResult(auditor.method, budget, recommended, frontier, len(seen), note, audit, config)


def _note(budget, frontier, recommended, first_fail, good, bad, tol, stopped_early, lo) -> str:
    parts = []
    if first_fail is None:
        parts.append(f"every measured level up to {frontier[-1].sparsity:g} meets the budget; raise --hi to look further")
    elif recommended is None:
        lowest = frontier[0]
        parts.append(f"no level meets the budget: the lowest measured, {lowest.sparsity:g}, fails ({lowest.breaches[0]})")
        if lo > 0:
            parts.append(f"--lo {lo:g} is the lowest sparsity searched")
    else:
        parts.append(f"highest passing sparsity {good:g}; the first failure above it is {bad:g}")
    if stopped_early:
        parts.append(f"stopped at --max-evals before the bracket [{good:g}, {bad:g}] narrowed to --tol {tol:g}")
    if first_fail is not None:
        above = [p.sparsity for p in frontier if p.feasible and p.sparsity > first_fail]
        if above:
            verb = "passes" if len(above) == 1 else "pass"
            parts.append(f"feasibility is not monotone: {', '.join(f'{s:g}' for s in above)} also {verb} but above "
                         f"the failure at {first_fail:g}, so not recommended")
    if recommended is not None and budget.max_overall_drop is None and recommended.overall_drop > 0.02:
        parts.append(f"overall accuracy drops {_fmt(recommended.overall_drop)} there and no --max-overall-drop bounds it")
    return "; ".join(parts) + "."


def search(model, data, *, method: str = "global_magnitude", max_violation: float | None = None,
           max_overall_drop: float | None = None, max_group_drop: float | None = None,
           confidence: float | None = None, lo: float = 0.0, hi: float = 0.99, tol: float = 0.01,
           max_evals: int = 12, grid: Sequence[float] | None = None, finetune_epochs: int = 0, train_data=None,
           seed: int = 0, device=None, batch_size: int = 256, measure_footprint: bool = True,
           progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
           compress: Sequence[str] = ()) -> SearchResult:
    """The highest sparsity at which ``method`` keeps the pruned model within the budget.

    Args:
        model: a :class:`fairprune.zoo.LoadedModel` or an ``nn.Module``; data: a GroupedDataset (its
            'test' rows are measured, its 'train' rows fine-tune when ``finetune_epochs`` > 0).
        max_violation: bound on ξ_acc = max_a drop(a) − min_a drop(a); max_overall_drop,
            max_group_drop: bounds on the overall and every group's accuracy drop (fractions).
        confidence: None or 0.95 (read bounds on the upper end of the 95% interval: simultaneous over the
            groups for the violation, each figure's own for the drops).
        lo, hi: the sparsity range searched; grid: coarse points (default :data:`DEFAULT_GRID`);
        tol: bisection stops when the bracket is this narrow; max_evals: most levels measured.
        finetune_epochs: plain fine-tuning of each level (masks fixed) before it is measured.
        measure_footprint: also measure each level's size_bytes and latency_ms (what it buys).
        progress(done, total, message) after each level; cancel() returning True stops the run.
        compress: compression variants (``fairprune.engine.compress``) measured on the same rows and judged against
            the same budget (``SearchResult.variants``); search.json then names the smallest model within
            the budget among levels and variants.
    """
    budget = Budget(max_violation, max_overall_drop, max_group_drop, confidence)
    if compress:
        from .compress import parse_variants

        parse_variants(list(compress))                      # refuse bad names before any evaluation
    fixed = get_method(method).fixed_sparsity
    if fixed is not None:
        raise InputError(f"{method} prunes to exactly {fixed:g} sparsity, so there is no sparsity to search; expected a "
                         f"method with adjustable sparsity (e.g. global_magnitude), found {method}. Use `fairprune check "
                         f"--method {method} --sparsity {fixed:g}` or `fairprune audit --compress {method}` instead")
    points = _plan(lo, hi, grid, tol, max_evals)            # refuse bad options before any evaluation
    auditor = Auditor(model, data, method=method, finetune_epochs=finetune_epochs, train_data=train_data, seed=seed,
                      device=device, batch_size=batch_size, cancel=cancel, measure_footprint=measure_footprint,
                      measure_latency=measure_footprint)
    result = _search(auditor, budget, points, lo=lo, hi=hi, tol=tol, max_evals=max_evals, progress=progress)
    if not compress:
        return result
    measured = auditor.measure_compression(list(compress))
    variants = tuple(VariantPoint.of(v, budget, order=result.evaluations + i + 1) for i, v in enumerate(measured))
    return replace(result, variants=variants,
                   audit=auditor.result(list(result.audit.levels), measured))


def search_methods(model, data, *, methods: Sequence[str], progress: Progress | None = None, **kw) -> SearchReport:
    """:func:`search` for each of ``methods`` (same budget and options); one frontier per method."""
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise InputError("expected at least one pruning method; found none")
    compress = kw.pop("compress", ())
    results = []
    for i, m in enumerate(methods):
        def step(done, total, message, i=i):
            if progress is not None:
                progress(i * total + done, len(methods) * total,
                         f"method {i + 1} of {len(methods)}, {message}" if len(methods) > 1 else message)

        # compression variants do not depend on the pruning method: measured once, beside the first
        results.append(search(model, data, method=m, progress=step, compress=compress if i == 0 else (), **kw))
    return SearchReport(tuple(results))


@dataclass(frozen=True)
class CheckResult:
    """One level against a budget: ``passed`` when ``violations`` (plain sentences) is empty."""

    passed: bool
    violations: list[str]
    level: LevelResult
    budget: Budget
    method: str
    audit: AuditResult
    variant: str | None = None          # a compression variant checked instead of a sparsity level

    def summary(self) -> str:
        lv = self.level
        what = (f"{self.variant} (compression)" if self.variant else
                f"sparsity {lv.sparsity:g} ({self.method}, achieved {lv.achieved_sparsity:.3f})")
        head = (f"{what}: overall accuracy "
                f"{lv.overall.accuracy:.3f} (drop {_fmt(lv.overall.accuracy_drop)}), fairness violation "
                f"{_fmt(lv.fairness_violation['accuracy'])}")
        ci = lv.fairness_violation_ci95.get("accuracy")
        if ci is not None:
            kind = "simultaneous 95% CI" if lv.interval_method else "95% CI"
            head += f" ({kind} {_fmt(ci[0])} to {_fmt(ci[1])})"
        p = (lv.fairness_violation_p_value or {}).get("accuracy")
        if p is not None:
            head += f", p = {p:.2g} for equal drops"
        if self.passed:
            return f"pass: {head}; within the budget."
        return "\n".join([f"fail: {head}; the budget is not met:"] + [f"  - {v}" for v in self.violations])

    def to_dict(self) -> dict[str, Any]:
        d = {"passed": self.passed, "violations": list(self.violations), "method": self.method,
             "sparsity": self.level.sparsity, "budget": self.budget.to_dict()}
        if self.variant:
            d["variant"] = self.variant
        return d


def check(model, data, *, sparsity: float | None = None, method: str = "global_magnitude",
          max_violation: float | None = None,
          max_overall_drop: float | None = None, max_group_drop: float | None = None,
          confidence: float | None = None, finetune_epochs: int = 0, train_data=None, seed: int = 0, device=None,
          batch_size: int = 256, measure_footprint: bool = False,
          cancel: Callable[[], bool] | None = None, compress: str | None = None) -> CheckResult:
    """Prune ``model`` to ``sparsity`` with ``method`` and test the level against the budget (see :class:`Budget`);
    or, with ``compress`` (e.g. "int8_dynamic", "nm_2_4+int8_dynamic") instead of a sparsity, test that
    compression variant against the same budget.

    ``measure_footprint``: also measure size_bytes / latency_ms (off by default: a gate needs neither).
    """
    budget = Budget(max_violation, max_overall_drop, max_group_drop, confidence)
    if (sparsity is None) == (compress is None):
        raise InputError("expected exactly one of --sparsity S (a pruning level) or --compress VARIANT (e.g. "
                         f"int8_dynamic); found {'both' if compress is not None else 'neither'}")
    if compress is not None:
        from .compress import parse_variant

        parse_variant(compress)
        auditor = Auditor(model, data, method=method, seed=seed, device=device, batch_size=batch_size, cancel=cancel,
                          measure_footprint=measure_footprint)
        [variant] = auditor.measure_compression([compress])
        violations = budget.breaches(variant.level)
        return CheckResult(not violations, violations, variant.level, budget, method, auditor.result([], [variant]),
                           variant=variant.method)
    auditor = Auditor(model, data, method=method, finetune_epochs=finetune_epochs, train_data=train_data, seed=seed,
                      device=device, batch_size=batch_size, cancel=cancel, measure_footprint=measure_footprint)
    [level] = auditor.measure([sparsity])
    violations = budget.breaches(level)
    return CheckResult(not violations, violations, level, budget, method, auditor.result([level]))
