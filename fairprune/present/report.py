"""The stakeholder report: one self-contained HTML file of an audit, readable offline and in print.

    >>> from fairprune.present.report import render_html, write_report
    >>> html = render_html(result)                                   # an AuditResult -> the page, as a string
    >>> write_report("result.json", "report.html", redact_samples=True)   # or a mitigation JSON, or a run id

The file holds everything it shows: the plain-language reading first, the per-group charts (plotly,
interactive, its JavaScript inlined once: no CDN, no request when opened), every figure in tables, the
diagnostics and mitigation sections when the result has them, the definitions used, the inputs'
fingerprints (SHA-256 of model and data, versions, seed) and the result JSON itself, embedded as
``<script type="application/json" id="fairprune-result">`` with a download link.

``redact_samples`` leaves out per-sample content (row indices of flipped and at-risk samples, any
sample rows or images) from the page *and* the embedded JSON, keeping every aggregate: for reports
that leave the team. The page is rendered from the redacted JSON, so nothing left out can leak.

The page's HTML lives in Jinja2 templates under ``fairprune/present/templates/`` (``report.html.j2`` the
layout, ``sections/`` one template per section, ``macros.html.j2`` tables, cards and charts), rendered
with autoescaping: this module only prepares data, plain dicts and lists of already-formatted text.
Charts come from :mod:`fairprune.present.plots` and sentences from :mod:`fairprune.present.reading`, as in the
dashboard. How the intervals and flags were computed is read from the result (``interval_method``,
``significance_test``, ``fairness_violation_p_value``); a result written before they were recorded
is described "as recorded with the result".
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from .. import __version__
from . import plots
from ..core.errors import InputError
from .reading import (NO_SPEEDUP, headline, latencies, meaning, placed_warnings, variant_latencies, versus_dense,
                      worst_group)
from ..core.result import SCHEMA, AuditResult, LevelResult

__all__ = ["render_html", "write_report", "load_source", "redact", "SAMPLE_KEYS", "CHART_CLASS", "RESULT_SCRIPT_ID"]

#: class of every chart's container; ``<meta name="fairprune-charts">`` says how many there are
CHART_CLASS = "fp-chart"
#: id of the ``<script type="application/json">`` block holding the result JSON
RESULT_SCRIPT_ID = "fairprune-result"
#: keys whose list/dict values are per-sample content (row indices, rows, images); scalars under the
#: same names (e.g. a count of Hessian rows) are aggregates and stay
SAMPLE_KEYS = frozenset({"indices", "index", "risk", "rows", "samples", "sample_rows", "examples", "images",
                         "thumbnails"})

DEF = plots.DEFINITIONS
CHART_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
_EMBEDDED = re.compile(r'<script type="application/json" id="%s">(.*?)</script>' % RESULT_SCRIPT_ID, re.S)
NOT_A_SOURCE = ("{source}: expected a result JSON file (fairprune audit --out), a mitigation JSON file "
                "(fairprune mitigate --out) or a run id from the run store; found {found}")


# ---- inputs -------------------------------------------------------------------------------------------

def _from_dict(d: Any, where: str) -> tuple[AuditResult | None, dict | None]:
    if isinstance(d, dict) and d.get("schema") == SCHEMA:
        result = AuditResult.from_dict(d)
        return result, None
    if isinstance(d, dict) and isinstance(d.get("mitigation"), dict):
        return None, d["mitigation"]
    found = f"schema {d.get('schema')!r}" if isinstance(d, dict) and "schema" in d else (
        f"keys {sorted(d)[:6]}" if isinstance(d, dict) else type(d).__name__)
    raise InputError(NOT_A_SOURCE.format(source=where, found=found))


def load_source(source: str | Path | AuditResult | Mapping, *,
                run_result: Callable[[str], Mapping] | None = None) -> tuple[AuditResult | None, dict | None]:
    """(audit result or None, mitigation section or None) from a result JSON path, a mitigation JSON
    path (``{"mitigation": {...}}``), a report HTML file (its embedded JSON), a run id in the run store,
    an AuditResult or a JSON dict. A run id is looked up by ``run_result(run_id)`` (the run layer's
    :func:`fairprune.run.store.stored_result`, which ``fairprune report`` passes): this layer reads results, it
    does not know where runs are kept.

    Raises InputError naming the source for a missing or unreadable file, an unknown run id, a run
    that has not finished, or JSON that is neither kind.
    """
    if isinstance(source, AuditResult):
        return source, None
    if isinstance(source, Mapping):
        return _from_dict(dict(source), "result")
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
            embedded = _EMBEDDED.search(text) if text.lstrip()[:15].lower().startswith(("<!doctype", "<html")) else None
            d = json.loads(embedded.group(1) if embedded else text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(NOT_A_SOURCE.format(source=path, found=f"a file that is not JSON ({err})")) from err
        return _from_dict(d, str(path))
    if path.suffix.lower() == ".json" or "/" in text or "\\" in text:
        raise InputError(f"{text}: no such result file")
    if run_result is None:
        raise InputError(NOT_A_SOURCE.format(source=text, found="no such file (run ids are looked up by the run "
                                                                "store: fairprune.run.store.stored_result)"))
    return _from_dict(run_result(text), f"run {text}")


def write_report(source, out: str | Path, *, redact_samples: bool = False, title: str | None = None,
                 run_result: Callable[[str], Mapping] | None = None) -> Path:
    """Render the report of ``source`` (see :func:`load_source`) to ``out``; returns the path written."""
    result, mitigation = load_source(source, run_result=run_result)
    out = Path(out).expanduser()
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: expected an existing folder to write into; found no folder {out.parent}")
    out.write_text(render_html(result, redact_samples=redact_samples, title=title, mitigation=mitigation),
                   encoding="utf-8")
    return out


# ---- redaction ----------------------------------------------------------------------------------------

def redact(d: Mapping) -> tuple[dict, list[str]]:
    """A deep copy of a result JSON dict without per-sample content, and the paths that were removed.

    A key in :data:`SAMPLE_KEYS` holding a list or a dict is dropped wherever it occurs (the
    diagnostics' flipped-sample and at-risk row indices, any sample rows or thumbnails); counts,
    rates and other aggregates stay.
    """
    removed: list[str] = []

    def walk(v, path):
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if k in SAMPLE_KEYS and isinstance(x, (list, dict)):
                    removed.append(f"{path}.{k}" if path else k)
                    continue
                out[k] = walk(x, f"{path}.{k}" if path else str(k))
            return out
        if isinstance(v, list):
            return [walk(x, f"{path}[{i}]") for i, x in enumerate(v)]
        return v

    return walk(copy.deepcopy(dict(d)), ""), removed


# ---- formatting: every figure becomes a string here; the templates only place and escape them ---------

def _pts(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _num(x: float | None, fmt: str | None = None) -> str:
    """``fmt`` as given, else 4 significant digits without scientific notation (0.5961, 15.05, 30,062)."""
    if x is None:
        return "—"
    if fmt is not None:
        return format(x, fmt)
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) < 1e-3:
        return f"{x:.3g}"
    return f"{x:,.{max(0, 3 - math.floor(math.log10(abs(x))))}f}"


def _p(p: float) -> str:
    """A p-value for a sentence: 'p = 0.031', 'p < 0.001'."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _join(names: list[str]) -> str:
    """['a'] -> 'a'; ['a', 'b', 'c'] -> 'a, b and c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _std(o: Mapping, key: str, scale: float = 100.0, fmt: str = ".1f") -> str:
    v, s = o.get(key), o.get(f"{key}_std")
    if v is None:
        return "—"
    return format(scale * v, fmt) + (f" ± {format(scale * s, fmt)}" if s else "")


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _table(head: list[str], rows: list[list[str]], *, left: tuple[int, ...] = (0, 1), cls: str = "") -> dict:
    """A table for the ``table`` macro: columns in ``left`` are left-aligned (labels), the others right (numbers)."""
    return {"head": head, "rows": rows, "left": left, "cls": cls}


def _card(label: str, value: str, note: str = "") -> dict:
    return {"label": label, "value": value, "note": note}


def _trusted(markup: str) -> Markup:
    """The only place the report lets markup through unescaped. Three sources, none user-controlled:
    plotly's own figure ``<div>``s and its JavaScript bundle (produced by plotly from numbers and the
    captions' text, which plotly escapes itself), and the result JSON serialised by :func:`_json_text`
    with every ``<`` written as ``\\u003c``. Everything else (group names, file names, warnings,
    sentences) reaches the templates as plain text and is autoescaped there."""
    return Markup(markup)


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    """The templates under fairprune/present/templates/, autoescaped (every ``{{ }}`` is HTML-escaped)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.globals.update(chart_class=CHART_CLASS, result_script_id=RESULT_SCRIPT_ID)
    return env


class _Charts:
    """Renders figures to plotly ``<div>``s, numbered in page order; the bundle is inlined once in the head."""

    def __init__(self):
        self.count = 0

    def add(self, fig, *, heading: str, caption: str, margin_top: int = 30, warnings: list[str] = ()) -> dict:
        """``warnings``: sanity warnings about what this chart shows, printed beside it."""
        from plotly.io import to_html

        self.count += 1
        # the heading replaces the figure's own title (long titles do not fit a printed page)
        legend_on_top = fig.layout.legend.y is not None and fig.layout.legend.y >= 1
        fig.update_layout(title_text="", margin_t=max(margin_top, 70) if legend_on_top else margin_top)
        div = to_html(fig, full_html=False, include_plotlyjs=False, config=CHART_CONFIG,
                      div_id=f"fp-chart-{self.count}", default_width="100%")
        return {"heading": heading, "html": _trusted(div), "caption": caption, "warnings": list(warnings)}


# ---- the statistics' own words ------------------------------------------------------------------------
# Results written before the statistics named their methods (issue 12) carry none of these fields:
# the report then says "as recorded with the result" rather than guess a method.

AS_RECORDED = "as recorded with the result"


def _recorded(levels: list[LevelResult], name: str) -> str | None:
    """The method a level records under ``name`` (significance_test, interval_method), one mention per
    distinct value across ``levels``; None when no level records one."""
    seen: list[str] = []
    for lv in levels:
        v = getattr(lv, name, None)
        if isinstance(v, str) and v and v not in seen:
            seen.append(v)
    return "; ".join(seen) or None


def _violation_p(lv: LevelResult) -> float | None:
    """p-value of "every group's drop is the same" for the accuracy violation; None when not recorded."""
    p = getattr(lv, "fairness_violation_p_value", None)
    v = p.get("accuracy") if isinstance(p, Mapping) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class _Stats:
    """How the levels' intervals and flags were computed, worded once for captions, tables and definitions."""

    def __init__(self, levels: list[LevelResult]):
        self.test = _recorded(levels, "significance_test")
        self.interval = _recorded(levels, "interval_method")
        # the violation's interval is simultaneous over groups in results that name their interval method
        self.simultaneous = self.interval is not None
        self.has_p = any(_violation_p(lv) is not None for lv in levels)

    def compared_with(self) -> str:
        # results that name their test compare a group with the other groups' rows; older ones with the overall drop
        return "the other groups'" if self.test else "the overall drop"

    def whiskers(self) -> str:
        return ("each group's own 95% interval of its drop, not adjusted for the number of groups (method: "
                f"{self.interval or AS_RECORDED}).")

    def flagged(self, n_groups: int) -> str:
        return (f"the group's drop differs from {self.compared_with()} by more than chance, at the 5% level after "
                f"correcting for testing {n_groups} groups (Holm; test: {self.test or AS_RECORDED}).")

    def violation_band(self) -> str:
        if self.simultaneous:
            return ("Band: 95% interval of the accuracy violation, simultaneous over the groups; it can reach 0, "
                    "which would mean every group paid the same.")
        return f"Band: 95% interval of the accuracy violation, {AS_RECORDED}."

    def violation_ci_head(self) -> str:
        return "95% CI (simultaneous)" if self.simultaneous else "95% CI"

    def definitions(self) -> list[tuple[str, str, str]]:
        out = [
            ("95% interval of a group's drop (CI)",
             f"Method: {self.interval or AS_RECORDED}. Not adjusted for the number of groups: each group's interval "
             "holds for that group alone.", "fairprune"),
            ("95% interval of the violation",
             ("Simultaneous over the groups: it holds for every group's drop at once, so it is wider than any one "
              f"group's and can contain 0 (every group paid the same). Method: {self.interval}.") if self.simultaneous
             else f"Interval of the accuracy fairness violation, {AS_RECORDED}.", "fairprune"),
            ("Significant",
             f"The group's drop differs from {self.compared_with()} by more than chance: Holm-corrected for the number "
             f"of groups tested, at the 5% level. Test: {self.test or AS_RECORDED}.", "fairprune"),
            ("p (Holm)", "The group's p-value, Holm-adjusted for the number of groups tested; the group is significant "
                         "when it is below 0.05.", "fairprune"),
        ]
        if self.has_p:
            out.append(("p (equal drops)", "p-value of the hypothesis that every group's drop is the same: how often a "
                                           "violation at least as large as the one measured would arise if it were.",
                        "fairprune"))
        return out


def _violation_cells(lv: LevelResult, stats: _Stats) -> list[str]:
    """The violation's interval, and its p-value when the result has a column for it."""
    ci = lv.fairness_violation_ci95.get("accuracy")
    cells = [f"{_pts(ci[0])} to {_pts(ci[1])}" if ci else "—"]
    if stats.has_p:
        p = _violation_p(lv)
        cells.append(_num(p, ".3g") if p is not None else "—")
    return cells


# ---- sections: each returns the data its template under templates/sections/ shows -----------------------

def _violation_note(lv: LevelResult, stats: _Stats) -> str:
    ci = lv.fairness_violation_ci95.get("accuracy")
    if not ci:
        return "largest minus smallest group drop"
    p = _violation_p(lv)
    return (f"95% CI {_pts(ci[0])} to {_pts(ci[1])}" + (" (simultaneous)" if stats.simultaneous else "")
            + (f"; {_p(p)} for equal drops" if p is not None else ""))


def _summary(result: AuditResult | None, mitigation: Mapping | None, stats: _Stats) -> dict:
    out: dict[str, Any] = {"headline": None, "cards": [], "meaning": None, "note": None, "repair": None,
                           "warnings": list(result.warnings) if result is not None else []}
    if result is not None and result.levels:
        lv = result.levels[-1]
        g = worst_group(lv)
        m, d = lv.groups[g], result.dense.groups[g]
        out["headline"] = headline(result)
        cards = [
            _card("Overall accuracy", f"{_pts(result.dense.overall.accuracy)}% → {_pts(lv.overall.accuracy)}%",
                  f"{_pts(-lv.overall.accuracy_drop, True)} points at {plots.sparsity_label(lv.sparsity)} sparsity"),
            _card(f"Worst group: {g}", f"{_pts(d.accuracy)}% → {_pts(m.accuracy)}%",
                  f"{_pts(-m.accuracy_drop, True)} points" + (f" (CI {_pts(m.accuracy_drop_ci95[0])} to "
                                                              f"{_pts(m.accuracy_drop_ci95[1])})" if m.accuracy_drop_ci95 else "")),
            _card("Fairness violation, accuracy", f"{_pts(lv.fairness_violation['accuracy'])} pts", _violation_note(lv, stats)),
            _card("Violation ξ, loss", f"{lv.fairness_violation['loss']:.3f} nats", "max R(a) − min R(a), Eq. 3"),
            _card("Accuracy gap", f"{_pts(result.dense.accuracy_gap)} → {_pts(lv.accuracy_gap)} pts",
                  "best minus worst group, dense → pruned"),
        ]
        if result.dense.size_bytes and lv.size_bytes:
            cards.append(_card("Stored size", f"{_size(result.dense.size_bytes)} → {_size(lv.size_bytes)}",
                               f"{lv.size_bytes / result.dense.size_bytes - 1:+.0%}"))
        out["cards"] = cards
        out["meaning"] = meaning(result)
    elif result is not None and result.compression:
        out["headline"] = headline(result)
        out["note"] = "No sparsity level was measured: the compression variants below were."
    elif result is not None:
        out["note"] = "This result has no sparsity levels."
    if mitigation:
        out["repair"] = _mitigation_summary(mitigation, alone=result is None)
    return out


def _group_charts(result: AuditResult, charts: _Charts, stats: _Stats) -> list[dict]:
    n = len(result.group_names)
    out = [charts.add(
        plots.accuracy_vs_sparsity(result), heading="Accuracy of each group as the model is pruned",
        caption=DEF["accuracy"] + " Each line is one group; the dashed line is the whole test set. Bands: 95% "
                "interval of the group's accuracy at each level, from the interval of its drop (each group's own, "
                "not adjusted for the number of groups). Dotted grey lines: groups with fewer than 30 samples.")]
    drop_caption = (DEF["accuracy_drop"] + " Whiskers: " + stats.whiskers() + " Dashed line: the whole test set. "
                    "Outlined bars with *: " + stats.flagged(n))
    placed = placed_warnings(result)
    for i, lv in enumerate(reversed(result.levels)):   # the highest level first: it is the one the summary reads
        out.append(charts.add(plots.drop_by_group(result, lv.sparsity), margin_top=50,
                              caption=drop_caption if i == 0 else "As above, at this level.",
                              warnings=placed.at(lv.sparsity),
                              heading=f"Accuracy drop per group at {plots.sparsity_label(lv.sparsity)} sparsity"))
    out.append(charts.add(
        plots.violation_vs_sparsity(result), heading="Fairness violation: how unequally pruning hurts the groups",
        caption=DEF["fairness_violation"] + " " + DEF["accuracy_gap"] + " " + stats.violation_band()))
    return out


def _full_table(result: AuditResult, stats: _Stats) -> dict:
    binary = result.dense.overall.selection_rate is not None
    head = ["sparsity", "group", "n", "accuracy %", "drop (pts)", "95% CI of drop", "loss J", "excessive loss R(a)",
            "significant", "p (Holm)", "note"] + (["TPR", "FPR", "selection rate"] if binary else [])
    rows = []

    def row(label, name, m, first):
        ci = m.accuracy_drop_ci95
        r = [label if first else "", name, f"{m.n:,}", _pts(m.accuracy),
             _pts(m.accuracy_drop, True) if m.accuracy_drop is not None else "—",
             f"{_pts(ci[0])} to {_pts(ci[1])}" if ci else "—", f"{m.loss:.4f}",
             f"{m.excessive_loss:+.4f}" if m.excessive_loss is not None else "—",
             "yes *" if m.significant else ("no" if m.significant is not None else "—"),
             _num(m.p_value, ".3g") if m.p_value is not None else "—",
             "under 30 samples: unreliable" if (m.unreliable or (m.n < 30 and name != "(overall)")) else ""]
        if binary:
            r += [_num(m.tpr, ".3f"), _num(m.fpr, ".3f"), _num(m.selection_rate, ".3f")]
        rows.append(r)

    for i, (g, m) in enumerate({"(overall)": result.dense.overall, **result.dense.groups}.items()):
        row("dense", g, m, i == 0)
    for lv in result.levels:
        for i, (g, m) in enumerate({"(overall)": lv.overall, **lv.groups}.items()):
            row(plots.sparsity_label(lv.sparsity), g, m, i == 0)
    level_rows = [["dense", "—", "—", *(["—"] if stats.has_p else []), _pts(result.dense.accuracy_gap), "—", "0", "0"]]
    for lv in result.levels:
        level_rows.append([plots.sparsity_label(lv.sparsity), _pts(lv.fairness_violation["accuracy"]),
                           *_violation_cells(lv, stats), _pts(lv.accuracy_gap),
                           f"{lv.fairness_violation['loss']:.4f}", f"{lv.achieved_sparsity:.4f}",
                           f"{lv.weight_distance:.3f}"])
    n = len(result.group_names)
    intro = ("Accuracy in percent; drops in percentage points, dense − pruned (positive: the group lost accuracy; "
             "negative: it gained), with each group's own 95% interval (not adjusted for the number of groups). "
             f"'significant' and p are Holm-adjusted for testing {n} groups"
             + ("; the violation's interval is simultaneous over the groups" if stats.simultaneous else "")
             + ". '(overall)' is the whole test set. '—': the figure does not apply (the dense model is the reference "
               "every drop is measured from; the overall row is not tested against the groups).")
    placed = placed_warnings(result)
    return {"intro": intro, "groups": _table(head, rows, left=(0, 1, 10), cls="groups"),
            "warnings": list(dict.fromkeys([w for g in result.group_names for w in placed.groups.get(g, [])]
                                           + [w for lv in result.levels for w in placed.at(lv.sparsity)])),
            "levels": _table(["sparsity", "violation, accuracy (pts)", stats.violation_ci_head(),
                              *(["p (equal drops)"] if stats.has_p else []), "accuracy gap (pts)",
                              "violation ξ, loss (nats)", "achieved sparsity", "‖θ̄ − θ*‖₂"], level_rows, left=(0,))}


def _footprint(result: AuditResult, d: Mapping, charts: _Charts) -> dict | None:
    parts = [("dense", result.dense), *((plots.sparsity_label(lv.sparsity), lv) for lv in result.levels),
             *((v.method, v) for v in result.compression)]
    if all(p.size_bytes is None for _, p in parts):
        return None
    fp = d.get("footprint") if isinstance(d.get("footprint"), dict) else {}
    how = {plots.sparsity_label(x.get("sparsity", 0)): x for x in fp.get("levels", []) if isinstance(x, dict)}
    how.update({x.get("method"): x for x in fp.get("compression", []) if isinstance(x, dict)})
    how["dense"] = fp.get("dense") or {}
    dense = result.dense.size_bytes
    timings = latencies(result)
    variant_timings = variant_latencies(result)
    spreads = ([timings.get(0.0)] + [timings.get(lv.sparsity) for lv in result.levels]
               + [variant_timings.get(v.method) for v in result.compression])
    rows = []
    for (name, p), t in zip(parts, spreads):
        if t is None:
            latency, versus = "not measured", "—"
        else:
            latency = t.spread_text()
            versus = versus_dense(timings.get(0.0), t, reference=name == "dense")
        rows.append([name, _size(p.size_bytes), f"{p.size_bytes / dense - 1:+.0%}" if dense and p.size_bytes else "—",
                     how.get(name, {}).get("storage", "—"), latency, versus, how.get(name, {}).get("timed", "—")])
    return {
        "charts": [
            charts.add(plots.footprint_vs_sparsity(result), heading="What pruning saves",
                       caption="Stored size of the weights as they would ship; latency of one batch where measured: "
                               "the bar is the median, the whisker the 25th to 75th percentile of the timed runs. A "
                               "level differs from dense only where the whiskers do not overlap; unstructured and 2:4 "
                               f"levels run as the masked dense model: {NO_SPEEDUP}."),
            charts.add(plots.size_axis(d), heading="Every model on one size axis",
                       caption="Each group's accuracy against each model's stored size (and latency where timed): "
                               "the dense model, every sparsity level and every quantized or N:M variant; colour "
                               "is the model's accuracy fairness violation (largest minus smallest group drop)."),
        ],
        "table": _table(["model", "stored size", "change", "storage", "latency per batch: median (25th–75th pct, runs)",
                         "latency vs dense", "model timed"], rows, left=(0, 3, 5, 6)),
        "notes": [(k, fp[k]) for k in ("size", "latency", "device", "batch_size") if fp.get(k) is not None],
    }


def _compression(result: AuditResult, charts: _Charts, stats: _Stats) -> dict | None:
    """Quantization, 2:4 and combinations: who pays for each variant, every figure, how each was run."""
    variants = result.compression
    if not variants:
        return None
    dense = result.dense.size_bytes
    rows = []
    for v in variants:
        lv = v.level
        g = worst_group(lv)
        cal = (v.details.get("calibration") or {}).get("groups") or {}
        rows.append([v.method, v.setting, _size(v.size_bytes),
                     f"{v.size_bytes / dense:.2f}x" if dense and v.size_bytes else "—", f"{v.quantized_fraction:.2f}",
                     _pts(lv.overall.accuracy), _pts(lv.overall.accuracy_drop, True),
                     f"{g} ({_pts(lv.groups[g].accuracy_drop, True)})", _pts(lv.fairness_violation["accuracy"]),
                     *_violation_cells(lv, stats), f"{lv.fairness_violation['loss']:.4f}",
                     ", ".join(f"{k} {n}" for k, n in cal.items()) or "—"])
    notes = sorted({v.details.get("kernel") for v in variants} - {None})
    notes += sorted({v.details.get("diagnostics_note") for v in variants} - {None})
    notes += sorted({(v.details.get("nm_2_4") or {}).get("sparse_kernel_note") for v in variants} - {None})
    placed = placed_warnings(result)
    chart_list = [charts.add(plots.drop_by_variant(result), heading="Who pays for each compression variant",
                             caption=DEF["accuracy_drop"] + " Whiskers: " + stats.whiskers(),
                             warnings=list(dict.fromkeys(w for v in variants for w in placed.at(v.method))))]
    if not result.levels and dense is not None:      # with levels, the size axis is in the size section
        chart_list.append(charts.add(plots.size_axis(result), heading="Every model on one size axis",
                                     caption="Each group's accuracy against each model's stored size; colour is the "
                                             "model's accuracy fairness violation."))
    left: dict[tuple[str, str], list[str]] = {}          # (kind, reason) -> the variants that left them in float
    for v in variants:
        for kind, info in (v.details.get("not_quantized") or {}).items():
            left.setdefault((kind, str(info.get("reason", ""))), []).append(v.method)
    notes += [f"{kind} weights not quantized by {', '.join(names)}: {why}" for (kind, why), names in left.items()]
    p_col = ["p (equal drops)"] if stats.has_p else []
    return {
        "intro": "Each variant is applied to a copy of the dense model and measured on the same rows exactly as a "
                 "pruning level: the same per-group drops, intervals, tests and fairness violation. "
                 "'quantized' is the share of the model's parameters (by count) actually quantized; the table "
                 "below it gives that share per layer kind.",
        "charts": chart_list,
        "table": _table(["variant", "setting", "stored size", "vs dense", "quantized", "accuracy %", "drop (pts)",
                         "worst group (drop)", "violation (pts)", stats.violation_ci_head(), *p_col,
                         "violation ξ, loss", "calibration rows"], rows, left=(0, 1, 7, 11 + len(p_col))),
        "kinds": _quantized_kinds(variants),
        "notes": notes,
    }


def _quantized_kinds(variants) -> dict | None:
    """Quantized / total parameters per layer kind for each variant (kinds no variant's model has left out);
    None when no variant recorded them (results written before ``quantized_by_kind``)."""
    recorded = [v for v in variants if v.quantized_by_kind]
    if not recorded:
        return None
    kinds = list(dict.fromkeys(k for v in recorded for k, c in v.quantized_by_kind.items() if c.get("total")))
    rows = []
    for v in recorded:
        cells = []
        for k in kinds:
            c = v.quantized_by_kind.get(k) or {}
            q, t = int(c.get("quantized", 0)), int(c.get("total", 0))
            cells.append(f"{q:,} of {t:,} ({100 * q / t:.0f}%)" if t else "—")
        rows.append([v.method, *cells])
    return _table(["variant", *(f"{k} quantized" for k in kinds)], rows, left=(0,))


def _diag_rows(label: str, diag: Mapping) -> list[list[str]]:
    rows = []
    for i, (g, x) in enumerate(diag.items()):
        x = x or {}

        def pm(k, se):
            v, s = x.get(k), x.get(se)
            return "—" if v is None else _num(v) + (f" ± {_num(s)}" if s is not None else "")

        rows.append([label if i == 0 else "", g, _num(x.get("grad_norm_mean")), _num(x.get("group_grad_norm")),
                     pm("hessian_max_eig", "hessian_max_eig_se"), pm("hessian_trace", "hessian_trace_se"),
                     _num(x.get("margin_mean"), ".3f"), _num(x.get("uncertainty_mean"), ".3f"),
                     _num(x.get("boundary_distance_mean"))])
    return rows


def _diagnostics(result: AuditResult | None, diag: Mapping, charts: _Charts, redacted: bool) -> dict:
    out: dict[str, Any] = {"factor": None, "other_factors": [], "charts": [], "table": None, "theory": None,
                           "flips": _flips(diag.get("flips"), redacted)}
    levels = [lv.sparsity for lv in result.levels] if result is not None else []
    factors = (diag.get("factors") or {}).get("levels") or []
    sentences = [(f.get("sparsity"), f.get("sentence")) for f in factors if isinstance(f, dict) and f.get("sentence")]
    if sentences:
        s, text = sentences[-1]
        out["factor"] = {"where": f" at {plots.sparsity_label(s)} sparsity" if s is not None else "", "sentence": text}
        out["other_factors"] = [(plots.sparsity_label(s) if s is not None else "", t) for s, t in sentences[:-1]
                                if t != text]
    dense = diag.get("dense")
    if isinstance(dense, dict) and dense:
        try:
            out["charts"].append(charts.add(plots.diagnostics_by_group(dense), heading="The dense model's per-group factors",
                                            caption="Each panel is one factor of Theorems 1 and 2, one bar per group; "
                                                    "whiskers ± one standard error of the estimate."))
        except ValueError:
            pass
        rows = _diag_rows("dense", dense)
        for s, lvd in zip(levels, diag.get("levels") or []):
            if isinstance(lvd, dict):
                rows += _diag_rows(plots.sparsity_label(s), lvd)
        out["table"] = _table(["model", "group", "mean ‖∇ℓ‖", "‖g_a‖", "λ_max(H_a) ± SE", "Tr(H_a) ± SE", "mean margin",
                               "mean uncertainty", "boundary distance"], rows)
    trows = []
    for s, th in zip(levels, diag.get("theory") or []):
        for i, (g, t) in enumerate((th or {}).items()):
            trows.append([plots.sparsity_label(s) if i == 0 else "", g, _num(t.get("grad_term")),
                          _num(t.get("hessian_term")), _num(t.get("bound")), _num(t.get("excessive_loss"), "+.4f")])
    if trows:
        out["theory"] = _table(["sparsity", "group", "grad term", "Hessian term", "bound", "measured R(a)"], trows)
    return out


def _flips(flips: Any, redacted: bool) -> dict | None:
    if not isinstance(flips, dict) or not flips.get("levels"):
        return None
    show_idx = not redacted and any("indices" in (x or {}) for lv in flips["levels"] for x in (lv.get("groups") or {}).values())
    rows = []
    for lv in flips["levels"]:
        for i, (g, x) in enumerate((lv.get("groups") or {}).items()):
            r = [plots.sparsity_label(lv.get("sparsity", 0)) if i == 0 else "", g, _num(x.get("n"), ","),
                 _num(x.get("fixed"), ",")]
            if show_idx:
                idx = x.get("indices") or []
                r.append(", ".join(map(str, idx[:15])) + (f", … ({len(idx)} listed)" if len(idx) > 15 else ""))
            rows.append(r)

    def pct(x):
        return f"{100 * x:.1f}%" if x < 0.1 else f"{100 * x:.0f}%"

    notes = []
    for lv in flips["levels"]:
        p = lv.get("precision_at_k") or {}
        if p.get("k") and p.get("grad_norm") is not None and p.get("random") is not None:
            best = max(p["grad_norm"], p.get("margin") or 0)
            notes.append(f"At {plots.sparsity_label(lv.get('sparsity', 0))} sparsity pruning flips {p['k']} rows. Of the "
                         f"{p['k']} correct rows with the highest dense-model gradient norm {pct(p['grad_norm'])} are among "
                         f"them, of those with the smallest margin {pct(p.get('margin') or 0)}, against "
                         f"{pct(p['random'])} for rows picked at random"
                         + (": the dense model's own diagnostics point at the rows pruning will cost." if p["k"] >= 10
                            and best >= 2 * p["random"] else "."))
    return {"table": _table(["sparsity", "group", "flipped", "fixed"] + (["row indices (first 15)"] if show_idx else []),
                            rows, left=(0, 1, 4)),
            "notes": notes, "redacted": redacted}


def _chosen_on(m: Mapping) -> str:
    """Where the recommended method was chosen: on selection rows that the reported figures took no part in,
    or (results written before the selection split) on the very rows reported, which flatters the winner."""
    sel = m.get("selection") or {}
    if sel.get("n_select"):
        return (f"chosen on {_num(sel['n_select'], ',')} selection rows; the figures shown are on "
                f"{_num(m.get('n_eval'), ',') if m.get('n_eval') is not None else 'the'} held-out rows that took no part in the choice")
    return "chosen on the same held-out rows it is reported on, which flatters the winner"


def _mitigation_sentence(m: Mapping) -> str:
    rec = m.get("recommended")
    method = m.get("method", "the mitigation")
    after = (m.get("after") or {}).get("fairness_violation", {}).get("accuracy")
    before = (m.get("before") or {}).get("fairness_violation", {}).get("accuracy")
    plain = ((m.get("baselines") or {}).get("plain") or {}).get("fairness_violation", {}).get("accuracy")
    s = (f"Repairing the model pruned to {100 * (m.get('sparsity') or 0):g}% with {method} ({m.get('when', 'after')} "
         f"pruning), measured on {_num(m.get('n_eval'), ',') if m.get('n_eval') is not None else 'the'} held-out rows: the accuracy violation goes from "
         f"{_pts(before)} to {_pts(after)} points")
    s += f", against {_pts(plain)} with plain fine-tuning on the same budget." if plain is not None else "."
    if plain is not None and after is not None:
        s += (f" {method} beat plain fine-tuning on held-out rows here." if after < plain else
              f" {method} did not beat plain fine-tuning on held-out rows here.")
    if rec:
        s += f" Recommended: {rec} (the lowest violation among the methods within 1 point of the best overall accuracy, {_chosen_on(m)})."
    if m.get("single_seed") or len(m.get("seeds") or []) == 1:
        s += " One seed only: there is no spread to judge small differences by."
    return s


def _outcome(m: Mapping, *path: str):
    v: Any = m
    for k in path:
        v = v.get(k) if isinstance(v, Mapping) else None
    return v


def _mitigation_summary(m: Mapping, *, alone: bool) -> dict:
    """The repair in the summary: one sentence, with cards when the mitigation file is reported alone."""
    method = m.get("method", "the mitigation")
    before, after = _outcome(m, "before", "fairness_violation", "accuracy"), _outcome(m, "after", "fairness_violation", "accuracy")
    plain = _outcome(m, "baselines", "plain", "fairness_violation", "accuracy")
    s = (f"At {100 * (m.get('sparsity') or 0):g}% sparsity, {method} fine-tuning brings the accuracy violation on "
         f"held-out rows from {_pts(before)} to {_pts(after)} points"
         + (f" (plain fine-tuning: {_pts(plain)})." if plain is not None else "."))
    if not alone:
        return {"alone": False, "sentence": s, "cards": []}
    acc_b, acc_a = _outcome(m, "before", "overall", "accuracy"), _outcome(m, "after", "overall", "accuracy")
    cards = [_card("Fairness violation, accuracy", f"{_pts(before)} → {_pts(after)} pts", "pruned → repaired, held-out rows"),
             _card("Overall accuracy", f"{_pts(acc_b)}% → {_pts(acc_a)}%", "pruned → repaired, held-out rows")]
    if plain is not None:
        cards.append(_card("Plain fine-tuning", f"{_pts(plain)} pts", "violation with the same budget"))
    if m.get("recommended"):
        cards.append(_card("Recommended", str(m["recommended"]), _chosen_on(m)))
    return {"alone": True, "sentence": s, "cards": cards}


def _mitigation(m: Mapping, charts: _Charts) -> dict:
    runs = plots._mitigation_runs(m)
    split = m.get("split") or {}
    settings = [("method", m.get("method")), ("when", m.get("when")), ("sparsity", m.get("sparsity")),
                ("pruning method", m.get("prune_method")), ("alpha", m.get("alpha")), ("epochs", m.get("epochs")),
                ("seeds", m.get("seeds")), ("learning rate", m.get("lr")), ("batch size", m.get("batch_size")),
                ("training rows", m.get("n_train")), ("held-out rows", m.get("n_eval")),
                ("held-out rows from", split.get("source")), ("device", m.get("device"))]
    out: dict[str, Any] = {"sentence": _mitigation_sentence(m), "charts": [], "groups": None, "methods": None,
                           "settings": [(k, str(v)) for k, v in settings if v is not None],
                           "warnings": list(m.get("warnings") or [])}
    if runs:
        try:
            out["charts"].append(charts.add(plots.mitigation_by_group(m), margin_top=30,
                                            heading="Accuracy drop per group, before and after repair",
                                            caption="Drops relative to the dense model on the same held-out rows; "
                                                    "outlined: the recommended method; whiskers ± one standard "
                                                    "deviation over seeds."))
            out["charts"].append(charts.add(plots.mitigation_methods(m), heading="Methods compared",
                                            caption="Overall accuracy against the accuracy fairness violation on "
                                                    "held-out rows; lower right is better; the star is the "
                                                    "recommended method."))
        except (ValueError, KeyError, TypeError):
            pass
        groups = list((runs[0][1].get("groups") or {}))
        dense = (m.get("dense") or {}).get("groups") or {}
        head = ["group", "n", "dense accuracy %"] + [f"{name}: drop (pts)" for name, _ in runs]
        rows = []
        for g in groups:
            n = (runs[0][1]["groups"].get(g) or {}).get("n")
            rows.append([g, _num(n, ","), _pts((dense.get(g) or {}).get("accuracy"))]
                        + [_std((o.get("groups") or {}).get(g) or {}, "accuracy_drop") for _, o in runs])
        out["groups"] = _table(head, rows, left=(0,))
        mrows = [[name + (" (recommended)" if name == m.get("recommended") else ""),
                  _std(o.get("overall") or {}, "accuracy"), _std(o.get("fairness_violation") or {}, "accuracy"),
                  _std(o.get("fairness_violation") or {}, "loss", 1.0, ".4f"),
                  _pts(o.get("accuracy_gap"))] for name, o in runs]
        out["methods"] = _table(["method", "overall accuracy %", "violation, accuracy (pts)", "violation ξ, loss",
                                 "accuracy gap (pts)"], mrows, left=(0,))
    return out


def _check(c: Mapping) -> dict:
    budget = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k} {v}"
                       for k, v in (c.get("budget") or {}).items() if v is not None and k != "reads")
    return {"passed": bool(c.get("passed")), "method": str(c.get("method", "")), "sparsity": str(c.get("sparsity", "")),
            "budget": budget or "none", "violations": [str(v) for v in c.get("violations") or []]}


_DEFINITIONS = [
    ("Sparsity", DEF["sparsity"] + " Pruning removes the weights with the smallest absolute values (magnitude "
                 "pruning); which tensors are prunable and the global threshold are fairprune's choices.", "paper + fairprune"),
    ("Accuracy acc(θ; D_a)", DEF["accuracy"], "paper"),
    ("Loss J(θ; D_a)", DEF["loss"], "paper"),
    ("Excessive loss R(a) = J(θ̄; D_a) − J(θ*; D_a)", DEF["excessive_loss"] + " θ* is the dense model, θ̄ the pruned one.",
     "paper, Eq. 2"),
    ("Accuracy drop = acc(θ*; D_a) − acc(θ̄; D_a)", DEF["accuracy_drop"], "fairprune"),
    ("Fairness violation ξ = max_a R(a) − min_a R(a)", DEF["fairness_violation"], "paper, Eq. 3 (loss); fairprune (accuracy)"),
    ("Accuracy gap = max_a acc − min_a acc", DEF["accuracy_gap"], "paper, Sec. 6.2"),
]
_AFTER_STATS = [
    ("Unreliable", DEF["unreliable"], "fairprune"),
    ("‖θ̄ − θ*‖₂", DEF["weight_distance"], "paper (Theorem 1's distance)"),
]
_DIAG_DEFINITIONS = [
    ("Gradient norm", "‖∇_θ ℓ(f_θ(x), y)‖₂ over all trainable parameters per sample (mean per group), and ‖g_a‖, the norm "
                      "of the gradient of the group's mean loss (Theorem 1, Propositions 1–2).", "paper; per-sample mean fairprune"),
    ("λ_max(H_a), Tr(H_a)", "Largest eigenvalue of the group's Hessian by power iteration on Hessian-vector products "
                            "(Theorem 1), and its trace by Hutchinson's estimator, each with a standard error.",
     "paper (λ_max); fairprune (estimators, trace)"),
    ("Margin, uncertainty", "Margin p_y − max_{k≠y} p_k of the softmax (negative when misclassified); uncertainty "
                            "Σ_k p_k(1 − p_k), the multi-class reading of Theorem 2's f(1 − f).", "paper (Thm 2); fairprune (multi-class)"),
]
_MIT_DEFINITIONS = [
    ("Fairness-constrained fine-tuning", "min_θ J(θ; D) subject to J(θ; D_a) = J(θ; D) for every group, by the Lagrangian "
                                         "dual method (Eq. 8); fairprune's form uses one multiplier per group and a "
                                         "tolerance α.", "paper, Eq. 8; fairprune (form)"),
    ("Held-out measurement", "A repair is shown only as measured on held-out rows, before and after, against plain and "
                             "group-reweighted fine-tuning with the same budget.", "fairprune (after Balancing Act)"),
]


def _definitions(stats: _Stats | None, diag: bool, mitigation: bool) -> list[tuple[str, str, str]]:
    """The definitions the page uses; the intervals' and tests' only with an audit (None: a mitigation alone)."""
    return (_DEFINITIONS + (stats.definitions() if stats is not None else []) + _AFTER_STATS
            + (_DIAG_DEFINITIONS if diag else []) + (_MIT_DEFINITIONS if mitigation else []))


def _provenance(result: AuditResult | None, mitigation: Mapping | None, rendered: str, removed: list[str] | None) -> dict:
    rows: list[tuple[str, str]] = []
    command = None
    if result is not None:
        p, c = result.provenance, result.config
        rows += [("model", f"{result.model.name} — {result.model.parameters:,} parameters, "
                           f"{result.model.prunable_parameters:,} prunable"),
                 ("model SHA-256", p.model_sha256),
                 ("data", f"{result.data.name} — {result.data.n:,} samples measured; "
                          + ", ".join(f"{g} ({n:,})" for g, n in result.data.groups.items())),
                 ("data SHA-256", p.data_sha256),
                 ("label column", p.label), ("group columns", " & ".join(p.group_columns)),
                 ("features", f"{p.n_features:,}"),
                 *([("preprocessing", " → ".join(p.preprocessing))] if getattr(p, "preprocessing", None) else []),
                 ("pruning method", c.method), ("sparsities", ", ".join(plots.sparsity_label(s) for s in c.sparsities)),
                 ("fine-tuning epochs", str(c.finetune_epochs)), ("seed", str(c.seed)), ("device", c.device),
                 ("fairprune version (audit)", p.fairprune_version), ("torch version", p.torch_version)]
        groups = " ".join(f"--group {g}" for g in p.group_columns)
        command = (f"fairprune audit --model MODEL --data DATA --label {p.label} {groups} --sparsity "
                   f"{' '.join(f'{s:g}' for s in c.sparsities)} --method {c.method} --finetune-epochs {c.finetune_epochs} "
                   f"--seed {c.seed} --out result.json")
    if mitigation:
        rows += [("mitigation", f"{mitigation.get('method')} ({mitigation.get('when')}), seeds {mitigation.get('seeds')}, "
                                f"pruning {mitigation.get('prune_method', '?')} at {mitigation.get('sparsity')}")]
        if result is None:
            rows += [("model and data SHA-256", "not recorded in a mitigation file: attach the audit's report or "
                                                "result for the inputs' fingerprints")]
    rows += [("report rendered", rendered), ("fairprune version (report)", __version__),
             ("per-sample content", f"left out (--redact-samples): {len(removed)} field(s) removed" if removed is not None
              else "included")]
    return {"rows": [(k, str(v), "SHA-256" in k) for k, v in rows], "command": command}


def _json_text(d: Mapping) -> str:
    # "<" escaped so no "</script>" inside the data can end the block early
    return json.dumps(d, indent=1, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")


def render_html(result: AuditResult | None, *, redact_samples: bool = False, title: str | None = None,
                mitigation: Mapping | None = None) -> str:
    """The report of ``result`` as one self-contained HTML page (a str, UTF-8 when written).

    Args:
        result: the audit; None for a report of a mitigation file alone (then ``mitigation`` is required).
        redact_samples: leave per-sample content (see :func:`redact`) out of the page and the embedded JSON.
        title: the page's title (default: "Who pays for pruning: MODEL on DATA").
        mitigation: a ``mitigation`` section to report when the result does not carry one.
    """
    if result is None and not mitigation:
        raise ValueError("render_html needs an AuditResult, or a mitigation section to report alone; received neither")
    if result is not None and not isinstance(result, AuditResult):
        raise TypeError(f"result must be a fairprune.core.result.AuditResult (or None); received {type(result).__name__}")
    if mitigation is not None and not isinstance(mitigation, Mapping):
        raise TypeError(f"mitigation must be the mitigation section (a dict); received {type(mitigation).__name__}")
    d: dict[str, Any] = result.to_dict() if result is not None else {}
    if mitigation is not None and "mitigation" not in d:
        d["mitigation"] = dict(mitigation)
    removed: list[str] | None = None
    prior = d.pop("redaction", None)   # a result that was redacted before stays redacted
    if redact_samples or isinstance(prior, dict):
        redact_samples = True
        d, removed = redact(d)
        removed = list(prior.get("removed", [])) + removed if isinstance(prior, dict) else removed
        d["redaction"] = {"samples": True, "removed": removed,
                          "note": "per-sample content (row indices, rows, images) left out; aggregates kept"}
    # the page is rendered from ``d``: what redaction removed cannot reach it
    res = AuditResult.from_dict(d) if result is not None else None
    mit = d.get("mitigation") if isinstance(d.get("mitigation"), dict) else None
    diag = d.get("diagnostics") if isinstance(d.get("diagnostics"), dict) else None
    check = d.get("check") if isinstance(d.get("check"), dict) else None

    if title is None:
        title = (f"Who pays for pruning: {res.model.name} on {res.data.name}" if res is not None
                 else f"Repairing a pruned model: {mit.get('method', 'mitigation')} at "
                      f"{100 * (mit.get('sparsity') or 0):g}% sparsity")
    rendered = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stats = _Stats([*res.levels, *(v.level for v in res.compression)] if res is not None else [])
    # sections in page order, so the charts are numbered as they appear
    charts = _Charts()
    page: dict[str, Any] = {"summary": _summary(res, mit, stats), "charts": None, "table": None, "footprint": None,
                            "compression": None, "diagnostics": None, "mitigation": None, "check": None}
    if res is not None and res.levels:
        page["charts"] = _group_charts(res, charts, stats)
        page["table"] = _full_table(res, stats)
        page["footprint"] = _footprint(res, d, charts)
    if res is not None:
        page["compression"] = _compression(res, charts, stats)
    if diag:
        page["diagnostics"] = _diagnostics(res, diag, charts, redact_samples)
    if mit:
        page["mitigation"] = _mitigation(mit, charts)
    if check:
        page["check"] = _check(check)
    toc = [{"id": s, "label": label} for s, label in (
        ("summary", "Summary"), ("charts", "Charts"), ("table", "Every figure"), ("footprint", "Size and latency"),
        ("compression", "Compression"), ("diagnostics", "Diagnostics"), ("mitigation", "Mitigation"),
        ("check", "CI gate"), ("definitions", "Definitions"), ("provenance", "Provenance"), ("json", "JSON"))
        if s not in page or page[s]]

    from plotly.offline import get_plotlyjs

    cols = res.provenance.group_columns if res is not None else []
    subtitle = (f"{res.model.name} · {res.data.name} ({res.data.n:,} samples in {len(res.group_names)} groups; "
                f"group column{'s' * (len(cols) > 1)}: {' & '.join(cols)}) · {res.config.method} · rendered {rendered}"
                if res is not None else f"mitigation report · rendered {rendered}")
    return _env().get_template("report.html.j2").render(
        **page, title=title, subtitle=subtitle, toc=toc, redacted=redact_samples, version=__version__,
        schema=SCHEMA, chart_count=charts.count, definitions=_definitions(stats if res is not None else None, bool(diag), bool(mit)),
        provenance=_provenance(res, mit, rendered, removed),
        plotly_js=_trusted(get_plotlyjs()), result_json=_trusted(_json_text(d)))
