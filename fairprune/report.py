"""The stakeholder report: one self-contained HTML file of an audit, readable offline and in print.

    >>> from fairprune.report import render_html, write_report
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

Charts come from :mod:`fairprune.plots` and sentences from :mod:`fairprune.reading`, as in the
dashboard; this module only arranges them.
"""

from __future__ import annotations

import copy
import datetime as _dt
import html
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__, plots
from .errors import InputError
from .reading import headline, worst_group
from .result import SCHEMA, AuditResult

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


def load_source(source: str | Path | AuditResult | Mapping) -> tuple[AuditResult | None, dict | None]:
    """(audit result or None, mitigation section or None) from a result JSON path, a mitigation JSON
    path (``{"mitigation": {...}}``), a report HTML file (its embedded JSON), a run id in the run store,
    an AuditResult or a JSON dict.

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
    from .store import _RUN_ID, RunStore

    if not _RUN_ID.match(text):
        raise InputError(NOT_A_SOURCE.format(source=text, found="neither an existing file nor a run id"))
    store = RunStore()
    try:
        run = store.get(text)
    except KeyError as err:
        raise InputError(f"{text}: no such result file, and no run {text!r} in the run store at {store.db_path}") from err
    if run.status != "done" or run.result is None:
        raise InputError(f"run {text}: expected a finished run with a result; found status {run.status!r}")
    return _from_dict(run.result, f"run {text}")


def write_report(source, out: str | Path, *, redact_samples: bool = False, title: str | None = None) -> Path:
    """Render the report of ``source`` (see :func:`load_source`) to ``out``; returns the path written."""
    result, mitigation = load_source(source)
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


# ---- formatting ---------------------------------------------------------------------------------------

def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


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


def _table(head: list[str], rows: list[list[str]], *, left: tuple[int, ...] = (0, 1), cls: str = "") -> str:
    """An HTML table of escaped text; columns in ``left`` are left-aligned (labels), the others right (numbers)."""
    def cells(tag, r):
        return "".join(f"<{tag}{' class=l' if i in left else ''}>{_e(c)}</{tag}>" for i, c in enumerate(r))

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return (f'<div class="table-wrap"><table class="{cls}"><thead><tr>{cells("th", head)}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


class _Charts:
    """Collects figures as ``<div>``s; the plotly bundle is inlined once in the page head."""

    def __init__(self):
        self.count = 0

    def add(self, fig, *, heading: str, caption: str, margin_top: int = 30) -> str:
        from plotly.io import to_html

        self.count += 1
        # the heading replaces the figure's own title (long titles do not fit a printed page)
        fig.update_layout(title_text="", margin_t=margin_top)
        div = to_html(fig, full_html=False, include_plotlyjs=False, config=CHART_CONFIG,
                      div_id=f"fp-chart-{self.count}", default_width="100%")
        return (f'<figure class="{CHART_CLASS}"><h3>{_e(heading)}</h3>{div}'
                f'<figcaption>{_e(caption)}</figcaption></figure>')


# ---- sections ---------------------------------------------------------------------------------------

def _meaning(result: AuditResult) -> str:
    """The plain-words reading of the highest level, and the gentler option if there is one."""
    lv = result.levels[-1]
    groups = lv.groups
    g = worst_group(lv)
    best = min(groups, key=lambda k: (groups[k].accuracy_drop, -groups[k].n, k))
    o = lv.overall.accuracy_drop
    parts = [f"Pruning removes {100 * lv.sparsity:g}% of the model's prunable weights. Over the whole test set "
             f"accuracy {'drops' if o >= 0 else 'rises'} by {_pts(abs(o))} points"]
    if len(groups) > 1:
        b = groups[best].accuracy_drop
        parts[0] += (f", but the groups do not pay equally: {g} loses {_pts(groups[g].accuracy_drop)} points while "
                     f"{best} {'loses' if b >= 0 else 'gains'} {_pts(abs(b))}.")
        v = lv.fairness_violation["accuracy"]
        ci = lv.fairness_violation_ci95.get("accuracy")
        parts.append(f"The difference between the group that loses most and the one that loses least, the fairness "
                     f"violation, is {_pts(v)} points" + (f" (95% interval {_pts(ci[0])} to {_pts(ci[1])})" if ci else "")
                     + "; 0 would mean every group paid the same.")
        sig = [k for k, m in groups.items() if m.significant]
        if sig:
            parts.append(f"For {_join(sig)} the drop differs from the overall drop by more than chance would "
                         f"explain, after correcting for testing {len(groups)} groups.")
        else:
            parts.append("No group's drop differs from the overall drop by more than chance at this sample size.")
        gainers = [k for k, m in groups.items() if m.accuracy_drop < 0]
        if gainers:
            parts.append(f"{_join(gainers)} even {'gains' if len(gainers) == 1 else 'gain'} accuracy: pruning can "
                         "favour the groups the model already serves well (the paper's \u201crich get richer\u201d effect).")
    else:
        parts[0] += "."
    small = [k for k, m in groups.items() if m.unreliable]
    if small:
        parts.append(f"Groups with fewer than 30 samples ({_join(small)}) are shown but too small to act on.")
    if len(result.levels) > 1 and len(groups) > 1:
        gentle = min(result.levels[:-1], key=lambda x: (x.fairness_violation["accuracy"], -x.sparsity))
        parts.append(f"At {100 * gentle.sparsity:g}% sparsity the violation is {_pts(gentle.fairness_violation['accuracy'])} "
                     f"points and overall accuracy changes by {_pts(-gentle.overall.accuracy_drop, True)} points.")
    parts.append("Before shipping, decide whether this difference is acceptable for the people the model serves; "
                 "if not, prune less, or repair the pruned model with fairness-constrained fine-tuning "
                 "(fairprune mitigate) and check the repair on held-out rows.")
    return " ".join(parts)


def _card(label: str, value: str, note: str = "") -> str:
    return (f'<div class="card"><div class="card-label">{_e(label)}</div><div class="card-value">{_e(value)}</div>'
            f'<div class="card-note">{_e(note)}</div></div>')


def _summary(result: AuditResult | None, mitigation: Mapping | None) -> str:
    out = ['<section id="summary"><h2>Summary</h2>']
    if result is not None and result.levels:
        lv = result.levels[-1]
        g = worst_group(lv)
        m, d = lv.groups[g], result.dense.groups[g]
        out.append(f'<p class="fp-headline">{_e(headline(result))}</p>')
        ci = lv.fairness_violation_ci95.get("accuracy")
        cards = [
            _card("Overall accuracy", f"{_pts(result.dense.overall.accuracy)}% → {_pts(lv.overall.accuracy)}%",
                  f"{_pts(-lv.overall.accuracy_drop, True)} points at {plots.sparsity_label(lv.sparsity)} sparsity"),
            _card(f"Worst group: {g}", f"{_pts(d.accuracy)}% → {_pts(m.accuracy)}%",
                  f"{_pts(-m.accuracy_drop, True)} points" + (f" (CI {_pts(m.accuracy_drop_ci95[0])} to "
                                                              f"{_pts(m.accuracy_drop_ci95[1])})" if m.accuracy_drop_ci95 else "")),
            _card("Fairness violation, accuracy", f"{_pts(lv.fairness_violation['accuracy'])} pts",
                  f"95% CI {_pts(ci[0])} to {_pts(ci[1])}" if ci else "largest minus smallest group drop"),
            _card("Violation ξ, loss", f"{lv.fairness_violation['loss']:.3f} nats", "max R(a) − min R(a), Eq. 3"),
            _card("Accuracy gap", f"{_pts(result.dense.accuracy_gap)} → {_pts(lv.accuracy_gap)} pts",
                  "best minus worst group, dense → pruned"),
        ]
        if result.dense.size_bytes and lv.size_bytes:
            cards.append(_card("Stored size", f"{_size(result.dense.size_bytes)} → {_size(lv.size_bytes)}",
                               f"{lv.size_bytes / result.dense.size_bytes - 1:+.0%}"))
        out.append('<div class="cards">' + "".join(cards) + "</div>")
        out.append(f'<h3>What this means</h3><p class="meaning">{_e(_meaning(result))}</p>')
    elif result is not None and result.compression:
        out.append(f'<p class="fp-headline">{_e(headline(result))}</p>'
                   f"<p>No sparsity level was measured: the compression variants below were.</p>")
    elif result is not None:
        out.append("<p>This result has no sparsity levels.</p>")
    if mitigation:
        out.append(_mitigation_summary(mitigation, headline_=result is None))
    if result is not None and result.warnings:
        out.append('<div class="warnings"><strong>Warnings recorded with the result</strong><ul>'
                   + "".join(f"<li>{_e(w)}</li>" for w in result.warnings) + "</ul></div>")
    out.append("</section>")
    return "".join(out)


def _group_charts(result: AuditResult, charts: _Charts) -> str:
    out = ['<section id="charts"><h2>Who pays, group by group</h2>']
    out.append(charts.add(
        plots.accuracy_vs_sparsity(result), heading="Accuracy of each group as the model is pruned",
        caption=DEF["accuracy"] + " Each line is one group; the dashed line is the whole test set. Bands: 95% "
                "interval of the group's accuracy at each level, from the bootstrap interval of its drop. Dotted grey "
                "lines: groups with fewer than 30 samples."))
    drop_caption = (DEF["accuracy_drop"] + " Whiskers: " + DEF["accuracy_drop_ci95"] + " Dashed line: the whole test "
                    "set. Outlined bars with *: " + DEF["significant"])
    for i, lv in enumerate(reversed(result.levels)):   # the highest level first: it is the one the summary reads
        out.append(charts.add(plots.drop_by_group(result, lv.sparsity), margin_top=50,
                              caption=drop_caption if i == 0 else "As above, at this level.",
                              heading=f"Accuracy drop per group at {plots.sparsity_label(lv.sparsity)} sparsity"))
    out.append(charts.add(
        plots.violation_vs_sparsity(result), heading="Fairness violation: how unequally pruning hurts the groups",
        caption=DEF["fairness_violation"] + " " + DEF["accuracy_gap"] + " Band: 95% bootstrap interval of the "
                "accuracy violation."))
    out.append("</section>")
    return "".join(out)


def _full_table(result: AuditResult) -> str:
    binary = result.dense.overall.selection_rate is not None
    head = ["sparsity", "group", "n", "accuracy %", "drop (pts)", "95% CI of drop", "loss J", "excessive loss R(a)",
            "significant", "p (Holm)", "note"] + (["TPR", "FPR", "selection rate"] if binary else [])
    rows = []

    def row(label, name, m, first):
        ci = m.accuracy_drop_ci95
        r = [label if first else "", name, f"{m.n:,}", _pts(m.accuracy),
             _pts(m.accuracy_drop, True) if m.accuracy_drop is not None else "",
             f"{_pts(ci[0])} to {_pts(ci[1])}" if ci else "", f"{m.loss:.4f}",
             f"{m.excessive_loss:+.4f}" if m.excessive_loss is not None else "",
             "yes *" if m.significant else ("no" if m.significant is not None else ""),
             _num(m.p_value, ".3g") if m.p_value is not None else "",
             "under 30 samples: unreliable" if (m.unreliable or (m.n < 30 and name != "(overall)")) else ""]
        if binary:
            r += [_num(m.tpr, ".3f"), _num(m.fpr, ".3f"), _num(m.selection_rate, ".3f")]
        rows.append(r)

    for i, (g, m) in enumerate({"(overall)": result.dense.overall, **result.dense.groups}.items()):
        row("dense", g, m, i == 0)
    for lv in result.levels:
        for i, (g, m) in enumerate({"(overall)": lv.overall, **lv.groups}.items()):
            row(plots.sparsity_label(lv.sparsity), g, m, i == 0)
    level_rows = [["dense", "—", "", _pts(result.dense.accuracy_gap), "—", "0", "0"]]
    for lv in result.levels:
        ci = lv.fairness_violation_ci95.get("accuracy")
        level_rows.append([plots.sparsity_label(lv.sparsity), _pts(lv.fairness_violation["accuracy"]),
                           f"{_pts(ci[0])} to {_pts(ci[1])}" if ci else "—", _pts(lv.accuracy_gap),
                           f"{lv.fairness_violation['loss']:.4f}", f"{lv.achieved_sparsity:.4f}",
                           f"{lv.weight_distance:.3f}"])
    return ('<section id="table"><h2>Every figure</h2>'
            "<p>Accuracy in percent; drops in percentage points, dense − pruned (positive: the group lost accuracy; "
            "negative: it gained), with their 95% interval. '(overall)' is the whole test set.</p>"
            + _table(head, rows, left=(0, 1, 10), cls="groups")
            + "<h3>Per level</h3>"
            + _table(["sparsity", "violation, accuracy (pts)", "95% CI", "accuracy gap (pts)", "violation ξ, loss (nats)",
                      "achieved sparsity", "‖θ̄ − θ*‖₂"], level_rows, left=(0,))
            + "</section>")


def _footprint(result: AuditResult, d: Mapping, charts: _Charts) -> str:
    parts = [("dense", result.dense), *((plots.sparsity_label(lv.sparsity), lv) for lv in result.levels)]
    if all(p.size_bytes is None for _, p in parts):
        return ""
    fp = d.get("footprint") if isinstance(d.get("footprint"), dict) else {}
    how = {plots.sparsity_label(x.get("sparsity", 0)): x for x in fp.get("levels", []) if isinstance(x, dict)}
    how["dense"] = fp.get("dense") or {}
    dense = result.dense.size_bytes
    rows = [[name, _size(p.size_bytes), f"{p.size_bytes / dense - 1:+.0%}" if dense and p.size_bytes else "—",
             how.get(name, {}).get("storage", "—"),
             f"{p.latency_ms:.2f}" if p.latency_ms is not None else "not measured", how.get(name, {}).get("timed", "—")]
            for name, p in parts]
    table = _table(["model", "stored size", "change", "storage", "latency (ms per batch)", "model timed"], rows,
                   left=(0, 3, 5))
    notes = "".join(f"<li><strong>{_e(k)}:</strong> {_e(fp[k])}</li>" for k in ("size", "latency", "device", "batch_size")
                    if fp.get(k) is not None)
    return ('<section id="footprint"><h2>Size and latency</h2>'
            + charts.add(plots.footprint_vs_sparsity(result), heading="What pruning saves",
                         caption="Stored size of the weights as they would ship; latency of one batch where measured.")
            + charts.add(plots.size_axis(d), heading="Every model on one size axis",
                         caption="Each group's accuracy against each model's stored size (and latency where timed): "
                                 "the dense model, every sparsity level and every quantized or N:M variant; colour "
                                 "is the model's accuracy fairness violation (largest minus smallest group drop).")
            + table
            + (f'<ul class="notes">{notes}</ul>' if notes else "") + "</section>")


def _compression(result: AuditResult, charts: _Charts) -> str:
    """Quantization, 2:4 and combinations: who pays for each variant, every figure, how each was run."""
    variants = result.compression
    if not variants:
        return ""
    dense = result.dense.size_bytes
    rows = []
    for v in variants:
        lv = v.level
        g = worst_group(lv)
        ci = lv.fairness_violation_ci95.get("accuracy")
        cal = (v.details.get("calibration") or {}).get("groups") or {}
        rows.append([v.method, v.setting, _size(v.size_bytes),
                     f"{v.size_bytes / dense:.2f}x" if dense and v.size_bytes else "—", f"{v.quantized_fraction:.2f}",
                     _pts(lv.overall.accuracy), _pts(lv.overall.accuracy_drop, True),
                     f"{g} ({_pts(lv.groups[g].accuracy_drop, True)})", _pts(lv.fairness_violation["accuracy"]),
                     f"{_pts(ci[0])} to {_pts(ci[1])}" if ci else "—", f"{lv.fairness_violation['loss']:.4f}",
                     ", ".join(f"{k} {n}" for k, n in cal.items()) or "—"])
    notes = sorted({v.details.get("kernel") for v in variants} - {None})
    notes += sorted({v.details.get("diagnostics_note") for v in variants} - {None})
    notes += sorted({(v.details.get("nm_2_4") or {}).get("sparse_kernel_note") for v in variants} - {None})
    size_axis = ""
    if not result.levels and dense is not None:      # with levels, the size axis is in the size section
        size_axis = charts.add(plots.size_axis(result), heading="Every model on one size axis",
                               caption="Each group's accuracy against each model's stored size; colour is the "
                                       "model's accuracy fairness violation.")
    return ('<section id="compression"><h2>Beyond pruning: quantization and 2:4 sparsity</h2>'
            "<p>Each variant is applied to a copy of the dense model and measured on the same rows exactly as a "
            "pruning level: the same per-group drops, bootstrap intervals and fairness violation. "
            "'quantized' is the share of the model's parameters (by count) actually quantized.</p>"
            + charts.add(plots.drop_by_variant(result), heading="Who pays for each compression variant",
                         caption=DEF["accuracy_drop"] + " Whiskers: " + DEF["accuracy_drop_ci95"])
            + size_axis
            + _table(["variant", "setting", "stored size", "vs dense", "quantized", "accuracy %", "drop (pts)",
                      "worst group (drop)", "violation (pts)", "95% CI", "violation ξ, loss", "calibration rows"],
                     rows, left=(0, 1, 7, 11))
            + (f'<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes else "")
            + "</section>")


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


def _diagnostics(result: AuditResult | None, diag: Mapping, charts: _Charts, redacted: bool) -> str:
    out = ['<section id="diagnostics"><h2>Why: diagnostics</h2>',
           "<p>Theorem 1 of Tran et al. bounds a group's excessive loss by ‖g_a‖·‖θ̄ − θ*‖ + ½ λ_max(H_a)·‖θ̄ − θ*‖²: "
           "since pruning moves every group's weights by the same ‖θ̄ − θ*‖, groups with larger gradient norms and "
           "larger Hessian eigenvalues pay more, and these are the groups nearer the decision boundary "
           "(smaller margins, more uncertain predictions). <span class=\"tag\">[paper]</span></p>"]
    levels = [lv.sparsity for lv in result.levels] if result is not None else []
    factors = (diag.get("factors") or {}).get("levels") or []
    sentences = [(f.get("sparsity"), f.get("sentence")) for f in factors if isinstance(f, dict) and f.get("sentence")]
    if sentences:
        s, text = sentences[-1]
        out.append(f'<p class="factor-sentence"><strong>Which factor explains it'
                   f'{" at " + plots.sparsity_label(s) + " sparsity" if s is not None else ""}:</strong> {_e(text)}</p>')
        rest = [f"<li>{_e(plots.sparsity_label(s) if s is not None else '')}: {_e(t)}</li>" for s, t in sentences[:-1] if t != text]
        if rest:
            out.append('<ul class="notes">' + "".join(rest) + "</ul>")
    dense = diag.get("dense")
    if isinstance(dense, dict) and dense:
        try:
            out.append(charts.add(plots.diagnostics_by_group(dense), heading="The dense model's per-group factors",
                                  caption="Each panel is one factor of Theorems 1 and 2, one bar per group; whiskers ± "
                                          "one standard error of the estimate."))
        except ValueError:
            pass
        rows = _diag_rows("dense", dense)
        for s, lvd in zip(levels, diag.get("levels") or []):
            if isinstance(lvd, dict):
                rows += _diag_rows(plots.sparsity_label(s), lvd)
        out.append(_table(["model", "group", "mean ‖∇ℓ‖", "‖g_a‖", "λ_max(H_a) ± SE", "Tr(H_a) ± SE", "mean margin",
                           "mean uncertainty", "boundary distance"], rows))
    theory = diag.get("theory") or []
    trows = []
    for s, th in zip(levels, theory):
        for i, (g, t) in enumerate((th or {}).items()):
            trows.append([plots.sparsity_label(s) if i == 0 else "", g, _num(t.get("grad_term")),
                          _num(t.get("hessian_term")), _num(t.get("bound")), _num(t.get("excessive_loss"), "+.4f")])
    if trows:
        out.append("<h3>Theorem 1's terms next to the measured excessive loss</h3>"
                   "<p>grad term = ‖g_a‖·‖θ̄ − θ*‖, Hessian term = ½ λ_max(H_a)·‖θ̄ − θ*‖², bound = their sum without the "
                   "third-order remainder. The bound is loose; what it predicts is the ordering of the groups.</p>"
                   + _table(["sparsity", "group", "grad term", "Hessian term", "bound", "measured R(a)"], trows))
    out.append(_flips(diag.get("flips"), redacted))
    out.append("</section>")
    return "".join(out)


def _flips(flips: Any, redacted: bool) -> str:
    if not isinstance(flips, dict) or not flips.get("levels"):
        return ""
    out = ["<h3>Samples pruning flips</h3><p>Rows the dense model classifies correctly and the pruned model does "
           "not (flipped), and the reverse (fixed).</p>"]
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
    out.append(_table(["sparsity", "group", "flipped", "fixed"] + (["row indices (first 15)"] if show_idx else []), rows,
                      left=(0, 1, 4)))
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
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    if redacted:
        out.append('<p class="redacted-note">Row indices of flipped and at-risk samples are left out of this report '
                   "(--redact-samples); the counts above are kept.</p>")
    return "".join(out)


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
        s += f" Recommended: {rec} (the lowest violation among the methods within 1 point of the best overall accuracy)."
    if m.get("single_seed") or len(m.get("seeds") or []) == 1:
        s += " One seed only: there is no spread to judge small differences by."
    return s


def _outcome(m: Mapping, *path: str):
    v: Any = m
    for k in path:
        v = v.get(k) if isinstance(v, Mapping) else None
    return v


def _mitigation_summary(m: Mapping, *, headline_: bool) -> str:
    method = m.get("method", "the mitigation")
    before, after = _outcome(m, "before", "fairness_violation", "accuracy"), _outcome(m, "after", "fairness_violation", "accuracy")
    plain = _outcome(m, "baselines", "plain", "fairness_violation", "accuracy")
    s = (f"At {100 * (m.get('sparsity') or 0):g}% sparsity, {method} fine-tuning brings the accuracy violation on "
         f"held-out rows from {_pts(before)} to {_pts(after)} points"
         + (f" (plain fine-tuning: {_pts(plain)})." if plain is not None else "."))
    if not headline_:
        return f'<h3>Repair</h3><p class="mitigation-summary">{_e(s)} See <a href="#mitigation">Mitigation</a>.</p>'
    acc_b, acc_a = _outcome(m, "before", "overall", "accuracy"), _outcome(m, "after", "overall", "accuracy")
    cards = [_card("Fairness violation, accuracy", f"{_pts(before)} → {_pts(after)} pts", "pruned → repaired, held-out rows"),
             _card("Overall accuracy", f"{_pts(acc_b)}% → {_pts(acc_a)}%", "pruned → repaired, held-out rows")]
    if plain is not None:
        cards.append(_card("Plain fine-tuning", f"{_pts(plain)} pts", "violation with the same budget"))
    if m.get("recommended"):
        cards.append(_card("Recommended", str(m["recommended"]), "measured on held-out rows"))
    return f'<p class="fp-headline">{_e(s)}</p><div class="cards">{"".join(cards)}</div>'


def _mitigation(m: Mapping, charts: _Charts) -> str:
    runs = plots._mitigation_runs(m)
    out = ['<section id="mitigation"><h2>Repair: mitigation</h2>', f"<p>{_e(_mitigation_sentence(m))}</p>"]
    split = m.get("split") or {}
    settings = [("method", m.get("method")), ("when", m.get("when")), ("sparsity", m.get("sparsity")),
                ("pruning method", m.get("prune_method")), ("alpha", m.get("alpha")), ("epochs", m.get("epochs")),
                ("seeds", m.get("seeds")), ("learning rate", m.get("lr")), ("batch size", m.get("batch_size")),
                ("training rows", m.get("n_train")), ("held-out rows", m.get("n_eval")),
                ("held-out rows from", split.get("source")), ("device", m.get("device"))]
    out.append('<p class="settings">' + " · ".join(f"{_e(k)} <strong>{_e(v)}</strong>" for k, v in settings
                                                   if v is not None) + "</p>")
    if runs:
        try:
            out.append(charts.add(plots.mitigation_by_group(m), margin_top=30,
                                  heading="Accuracy drop per group, before and after repair",
                                  caption="Drops relative to the dense model on the same held-out rows; outlined: the "
                                          "recommended method; whiskers ± one standard deviation over seeds."))
            out.append(charts.add(plots.mitigation_methods(m), heading="Methods compared",
                                  caption="Overall accuracy against the accuracy fairness violation on held-out rows; "
                                          "lower right is better; the star is the recommended method."))
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
        out.append("<h3>Before and after, per group</h3>" + _table(head, rows, left=(0,)))
        mrows = [[name + (" (recommended)" if name == m.get("recommended") else ""),
                  _std(o.get("overall") or {}, "accuracy"), _std(o.get("fairness_violation") or {}, "accuracy"),
                  _std(o.get("fairness_violation") or {}, "loss", 1.0, ".4f"),
                  _pts(o.get("accuracy_gap"))] for name, o in runs]
        out.append("<h3>Methods compared</h3>" + _table(
            ["method", "overall accuracy %", "violation, accuracy (pts)", "violation ξ, loss", "accuracy gap (pts)"],
            mrows, left=(0,)))
    if m.get("warnings"):
        out.append('<div class="warnings"><ul>' + "".join(f"<li>{_e(w)}</li>" for w in m["warnings"]) + "</ul></div>")
    out.append("</section>")
    return "".join(out)


def _check(c: Mapping) -> str:
    passed = c.get("passed")
    budget = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k} {v}"
                       for k, v in (c.get("budget") or {}).items() if v is not None and k != "reads")
    viol = "".join(f"<li>{_e(v)}</li>" for v in c.get("violations") or [])
    return (f'<section id="check"><h2>CI gate (fairprune check)</h2><p class="{"pass" if passed else "fail"}">'
            f"<strong>{'Passed' if passed else 'Failed'}</strong>: {_e(c.get('method', ''))} at sparsity "
            f"{_e(c.get('sparsity', ''))}; budget: {_e(budget or 'none')}</p>" + (f"<ul>{viol}</ul>" if viol else "")
            + "</section>")


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
    ("95% interval (CI)", DEF["accuracy_drop_ci95"] + " The violation's interval resamples within groups the same way.",
     "fairprune"),
    ("Significant", DEF["significant"], "fairprune"),
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


def _definitions(diag: bool, mitigation: bool) -> str:
    entries = _DEFINITIONS + (_DIAG_DEFINITIONS if diag else []) + (_MIT_DEFINITIONS if mitigation else [])
    items = "".join(f"<dt>{_e(t)} <span class=\"tag\">[{_e(tag)}]</span></dt><dd>{_e(text)}</dd>" for t, text, tag in entries)
    return ('<section id="definitions"><h2>Definitions used</h2><p>After C. Tran, F. Fioretto, J.-E. Kim, R. Naidu, '
            "<em>Pruning has a disparate impact on model accuracy</em>, NeurIPS 2022. [paper] marks what the paper says; "
            "[fairprune] marks this tool's own choices.</p>"
            f"<dl>{items}</dl></section>")


def _provenance(result: AuditResult | None, mitigation: Mapping | None, rendered: str, removed: list[str] | None) -> str:
    rows: list[tuple[str, str]] = []
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
                 ("pruning method", c.method), ("sparsities", ", ".join(plots.sparsity_label(s) for s in c.sparsities)),
                 ("fine-tuning epochs", str(c.finetune_epochs)), ("seed", str(c.seed)), ("device", c.device),
                 ("fairprune version (audit)", p.fairprune_version), ("torch version", p.torch_version)]
    if mitigation:
        rows += [("mitigation", f"{mitigation.get('method')} ({mitigation.get('when')}), seeds {mitigation.get('seeds')}, "
                                f"pruning {mitigation.get('prune_method', '?')} at {mitigation.get('sparsity')}")]
        if result is None:
            rows += [("model and data SHA-256", "not recorded in a mitigation file: attach the audit's report or "
                                                "result for the inputs' fingerprints")]
    rows += [("report rendered", rendered), ("fairprune version (report)", __version__),
             ("per-sample content", f"left out (--redact-samples): {len(removed)} field(s) removed" if removed is not None
              else "included")]
    body = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" if "SHA-256" in k
                   else f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    repro = ""
    if result is not None:
        p, c = result.provenance, result.config
        groups = " ".join(f"--group {g}" for g in p.group_columns)
        cmd = (f"fairprune audit --model MODEL --data DATA --label {p.label} {groups} --sparsity "
               f"{' '.join(f'{s:g}' for s in c.sparsities)} --method {c.method} --finetune-epochs {c.finetune_epochs} "
               f"--seed {c.seed} --out result.json")
        repro = ("<p>To reproduce: check that the model and data files hash to the SHA-256 above "
                 f"(<code>sha256sum</code> for the model file), then run</p><pre>{_e(cmd)}</pre>")
    return f'<section id="provenance"><h2>Inputs and provenance</h2><table class="kv">{body}</table>{repro}</section>'


def _json_block(d: Mapping) -> str:
    # "<" escaped so no "</script>" inside the data can end the block early
    text = json.dumps(d, indent=1, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{RESULT_SCRIPT_ID}">{text}</script>'


_CSS = """
:root { --ink:#1d2433; --muted:#5b6475; --line:#d9dee7; --accent:#0072B2; --bg:#ffffff; --soft:#f4f6fa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink); font:16px/1.55 Inter, "Source Sans Pro", "Segoe UI", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 28px 32px 60px; }
header h1 { font-size: 1.9rem; line-height:1.25; margin: 0 0 6px; }
header .sub { color: var(--muted); margin: 0; }
nav.toc { margin: 16px 0 8px; font-size: .92rem; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
h2 { font-size: 1.4rem; margin: 42px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.1rem; margin: 22px 0 8px; }
.fp-headline { font-size: 1.3rem; line-height: 1.5; font-weight: 600; background: var(--soft); border-left: 5px solid var(--accent);
  padding: 14px 18px; margin: 12px 0 18px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; break-inside: avoid; }
.card-label { color: var(--muted); font-size: .85rem; }
.card-value { font-size: 1.25rem; font-weight: 650; margin: 2px 0; }
.card-note { color: var(--muted); font-size: .82rem; }
.meaning { max-width: 52em; }
figure.fp-chart { margin: 18px 0 26px; break-inside: avoid; page-break-inside: avoid; }
figure.fp-chart h3 { margin: 0 0 4px; }
figcaption { color: var(--muted); font-size: .86rem; margin-top: 4px; max-width: 60em; }
.table-wrap { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: .88rem; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th { background: var(--soft); font-weight: 600; position: sticky; top: 0; }
th.l, td.l { text-align: left; }
tbody tr:hover { background: #fafbfd; }
table.kv th, table.kv td { text-align: left; }
table.kv th { width: 14em; background: none; }
code, pre { font-family: "JetBrains Mono", Consolas, "DejaVu Sans Mono", monospace; font-size: .84rem; }
td code { word-break: break-all; }
pre { background: var(--soft); padding: 10px 12px; white-space: pre-wrap; word-break: break-word; }
dl dt { font-weight: 600; margin-top: 10px; }
dl dd { margin: 2px 0 0 0; color: var(--ink); }
.tag { color: var(--muted); font-weight: 400; font-size: .85rem; }
.notes { color: var(--muted); font-size: .9rem; }
.warnings { background: #fff7e6; border: 1px solid #f0c36d; padding: 8px 14px; border-radius: 6px; margin: 12px 0; }
.redacted-banner, .redacted-note { background: #eef4fb; border: 1px solid #b9d3ee; padding: 8px 14px; border-radius: 6px; }
.settings { color: var(--muted); font-size: .9rem; }
.pass { color: #0a7a3e; } .fail { color: #b3261e; }
a.button { display: inline-block; background: var(--accent); color: #fff; padding: 8px 14px; border-radius: 6px;
  text-decoration: none; font-weight: 600; }
footer { color: var(--muted); font-size: .85rem; margin-top: 40px; border-top: 1px solid var(--line); padding-top: 10px; }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  body { font-size: 11pt; }
  main { max-width: none; padding: 0; }
  nav.toc, .no-print, .modebar-container { display: none !important; }
  h2 { break-after: avoid; page-break-after: avoid; margin-top: 24px; }
  h3 { break-after: avoid; page-break-after: avoid; }
  .fp-headline { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  th { position: static; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  tr, .card, figure.fp-chart { break-inside: avoid; page-break-inside: avoid; }
  .table-wrap { overflow: visible; }
  table { font-size: 8.5pt; }
  a { color: inherit; text-decoration: none; }
}
"""

# Redraw the charts at the printed width, and hand the embedded JSON out as a file (a blob: URL, no request).
_SCRIPT = """
(function () {
  function resize() { document.querySelectorAll('.js-plotly-plot').forEach(function (el) { Plotly.Plots.resize(el); }); }
  if (window.matchMedia) { var mq = window.matchMedia('print'); (mq.addEventListener ? mq.addEventListener('change', resize) : mq.addListener(resize)); }
  window.addEventListener('beforeprint', resize);
  window.addEventListener('afterprint', resize);
  var a = document.getElementById('fp-download-json');
  var data = document.getElementById('%s');
  if (a && data && window.Blob && window.URL) {
    a.href = URL.createObjectURL(new Blob([data.textContent], {type: 'application/json'}));
  }
})();
""" % RESULT_SCRIPT_ID


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
        raise TypeError(f"result must be a fairprune.result.AuditResult (or None); received {type(result).__name__}")
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
    charts = _Charts()
    body: list[str] = [_summary(res, mit)]
    toc = [("summary", "Summary")]
    if res is not None and res.levels:
        body += [_group_charts(res, charts), _full_table(res)]
        toc += [("charts", "Charts"), ("table", "Every figure")]
        fp = _footprint(res, d, charts)
        if fp:
            body.append(fp)
            toc.append(("footprint", "Size and latency"))
    comp = _compression(res, charts) if res is not None else ""
    if comp:
        body.append(comp)
        toc.append(("compression", "Compression"))
    if diag:
        body.append(_diagnostics(res, diag, charts, redact_samples))
        toc.append(("diagnostics", "Diagnostics"))
    if mit:
        body.append(_mitigation(mit, charts))
        toc.append(("mitigation", "Mitigation"))
    if check:
        body.append(_check(check))
        toc.append(("check", "CI gate"))
    body.append(_definitions(bool(diag), bool(mit)))
    body.append(_provenance(res, mit, rendered, removed))
    body.append('<section id="json"><h2>The result JSON</h2><p>The full result'
                + (" (per-sample content left out)" if redact_samples else "")
                + f" is embedded in this file (<code>&lt;script id=\"{RESULT_SCRIPT_ID}\"&gt;</code>), in "
                f"fairprune's schema ({SCHEMA}): <code>fairprune report</code> reads the downloaded file, or this "
                "HTML file itself, to render the report again.</p>"
                '<p class="no-print"><a class="button" id="fp-download-json" download="fairprune-result.json" '
                'href="#json">Download the result (JSON)</a></p></section>')
    toc += [("definitions", "Definitions"), ("provenance", "Provenance"), ("json", "JSON")]

    from plotly.offline import get_plotlyjs

    sub = (f"{_e(res.model.name)} · {_e(res.data.name)} ({res.data.n:,} samples, groups by "
           f"{_e(' & '.join(res.provenance.group_columns))}) · {_e(res.config.method)} · rendered {rendered}"
           if res is not None else f"mitigation report · rendered {rendered}")
    banner = ('<p class="redacted-banner">Per-sample content is left out of this report (<code>--redact-samples</code>): '
              "no row indices, rows or images; every aggregate is kept.</p>") if redact_samples else ""
    nav = '<nav class="toc">' + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in toc) + "</nav>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="fairprune {__version__}">'
        f'<meta name="fairprune-charts" content="{charts.count}">'
        f"<title>{_e(title)}</title><style>{_CSS}</style>"
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>'
        f'<script type="text/javascript">{get_plotlyjs()}</script>'
        "</head><body><main>"
        f'<header><h1>{_e(title)}</h1><p class="sub">{sub}</p>{banner}{nav}</header>'
        + "".join(body)
        + f"<footer>fairprune {__version__} · self-contained: opens offline; charts are interactive (hover for "
        "values).</footer></main>"
        + _json_block(d) + f"<script>{_SCRIPT}</script></body></html>\n"
    )
