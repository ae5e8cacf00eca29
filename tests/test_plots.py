"""fairprune.present.plots: the figures draw the result's own numbers, in the documented units, and import no UI."""

from __future__ import annotations

import subprocess
import sys

import plotly.graph_objects as go
import pytest

from fairprune.present import plots
from fairprune.core.result import (AuditConfig, AuditResult, DataInfo, DenseResult, LevelResult, Metrics, ModelInfo,
                              Provenance)


def _result() -> AuditResult:
    """Two groups and a tiny one, two levels; numbers chosen so every drawn value can be checked by hand."""
    dense_groups = {"a": Metrics(100, 0.90, 0.30), "b": Metrics(60, 0.80, 0.50), "c": Metrics(10, 0.70, 0.60)}

    def level(s, drops, cis, sig):
        groups = {g: Metrics(dense_groups[g].n, dense_groups[g].accuracy - d, dense_groups[g].loss + d,
                             accuracy_drop=d, excessive_loss=d, accuracy_drop_ci95=ci, significant=sg,
                             unreliable=dense_groups[g].n < 30)
                  for (g, d), ci, sg in zip(drops.items(), cis, sig)}
        spread = max(drops.values()) - min(drops.values())
        return LevelResult(s, s, Metrics(170, 0.80, 0.45, accuracy_drop=0.05, excessive_loss=0.05), groups, 1.0,
                           {"accuracy": spread, "loss": spread}, {"accuracy": (spread / 2, spread * 2)}, 0.3)

    levels = [level(0.5, {"a": 0.01, "b": 0.05, "c": 0.10}, [(0.0, 0.02), (0.03, 0.08), (0.0, 0.3)],
                    [False, False, False]),
              level(0.9, {"a": 0.02, "b": 0.20, "c": 0.30}, [(0.01, 0.04), (0.15, 0.25), (0.1, 0.5)],
                    [True, True, False])]
    return AuditResult(ModelInfo("m", 10, 8), DataInfo("d", 170, {"a": 100, "b": 60, "c": 10}),
                       AuditConfig("global_magnitude", [0.5, 0.9], 0, 0, "cpu"),
                       Provenance("0", "0", "x", "y", "label", ["group"], 4),
                       DenseResult(Metrics(170, 0.85, 0.4), dense_groups, 0.2), levels)


def _trace(fig: go.Figure, name: str):
    return next(t for t in fig.data if t.name == name)


def test_accuracy_vs_sparsity_starts_dense_and_bands_follow_the_drop_ci():
    r = _result()
    fig = plots.accuracy_vs_sparsity(r)
    line = _trace(fig, "b (n=60)")
    assert list(line.x) == ["dense", "50%", "90%"]
    assert list(line.y) == pytest.approx([80.0, 75.0, 60.0])
    band = _trace(fig, "b 95% CI")
    upper, lower = list(band.y[:3]), list(band.y[3:])[::-1]
    # accuracy band = acc_dense - hi .. acc_dense - lo; none at the dense point
    assert upper == pytest.approx([80.0, 80.0 - 3.0, 80.0 - 15.0])
    assert lower == pytest.approx([80.0, 80.0 - 8.0, 80.0 - 25.0])
    # the small group is drawn grey and dotted, without a band
    small = _trace(fig, "c (n=10, unreliable)")
    assert small.line.dash == "dot" and small.line.color == plots.UNRELIABLE_COLOR
    assert not any(t.name == "c 95% CI" for t in fig.data)
    assert list(_trace(fig, "overall").y) == pytest.approx([85.0, 80.0, 80.0])


def test_drop_by_group_orders_marks_and_draws_the_overall_reference():
    r = _result()
    fig = plots.drop_by_group(r)          # default: the highest level
    bar = fig.data[0]
    assert list(bar.y) == ["c", "b", "a"]                     # largest drop first
    assert list(bar.x) == pytest.approx([30.0, 20.0, 2.0])
    assert list(bar.error_x.array) == pytest.approx([20.0, 5.0, 2.0])        # hi - drop
    assert list(bar.error_x.arrayminus) == pytest.approx([20.0, 5.0, 1.0])   # drop - lo
    assert bar.marker.color[0] == plots.UNRELIABLE_COLOR and bar.marker.pattern.shape[0] == "/"
    ticks = list(fig.layout.yaxis.ticktext)
    assert "+20.0 pts *" in ticks[1] and "*" not in ticks[0]   # significant marked, the unreliable one not
    assert any(s.x0 == pytest.approx(5.0) and s.line.dash == "dash" for s in fig.layout.shapes)
    notes = " ".join(a.text for a in fig.layout.annotations)
    assert "under 30 samples" in notes and "Holm" in notes
    assert "50%" in plots.drop_by_group(r, 0.5).layout.title.text
    with pytest.raises(KeyError):
        plots.drop_by_group(r, 0.7)


def test_violation_vs_sparsity_has_accuracy_with_band_loss_on_the_right_and_the_gap():
    fig = plots.violation_vs_sparsity(_result())
    acc = _trace(fig, "violation, accuracy (pts)")
    assert list(acc.y) == pytest.approx([9.0, 28.0])
    band = _trace(fig, "95% CI (accuracy)")
    assert list(band.y) == pytest.approx([18.0, 56.0, 14.0, 4.5])
    loss = _trace(fig, "violation, loss (nats, right axis)")
    assert loss.yaxis == "y2" and list(loss.y) == pytest.approx([0.09, 0.28])
    gap = _trace(fig, "accuracy gap (pts)")
    assert list(gap.x) == ["dense", "50%", "90%"] and list(gap.y) == pytest.approx([20.0, 30.0, 30.0])


def test_group_sizes_marks_small_groups():
    fig = plots.group_sizes({"a": 100, "b": 60, "c": 10})
    bar = fig.data[0]
    assert list(bar.y) == ["a", "b", "c"] and list(bar.x) == [100, 60, 10]
    assert bar.marker.color[2] == plots.UNRELIABLE_COLOR


def test_every_figure_serialises_and_definitions_cover_the_json_names():
    r = _result()
    for fig in (plots.accuracy_vs_sparsity(r), plots.drop_by_group(r), plots.violation_vs_sparsity(r)):
        assert fig.to_json()
    for key in ("accuracy_drop", "excessive_loss", "fairness_violation", "accuracy_gap", "accuracy_drop_ci95",
                "significant", "unreliable"):
        assert plots.DEFINITIONS[key]
    assert "Eq. 2" in plots.DEFINITIONS["excessive_loss"] and "Eq. 3" in plots.DEFINITIONS["fairness_violation"]


def test_plots_import_no_ui():
    code = "import sys, fairprune.present.plots; assert 'streamlit' not in sys.modules, 'plots imported streamlit'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_size_axis_puts_levels_and_compression_variants_on_one_axis():
    from dataclasses import replace

    r = _result()
    r = replace(r, dense=replace(r.dense, size_bytes=4_000_000),
                levels=[replace(r.levels[0], size_bytes=2_000_000), replace(r.levels[1], size_bytes=800_000)])
    d = r.to_dict()
    d["compression"] = [{"method": "int8_dynamic", "setting": "", "size_bytes": 1_000_000, "latency_ms": None,
                         "overall": {"accuracy": 0.84},
                         "groups": {"a": {"accuracy": 0.89}, "b": {"accuracy": 0.75}, "c": {"accuracy": 0.70}},
                         "fairness_violation": {"accuracy": 0.04, "loss": 0.01}, "accuracy_gap": 0.19}]
    rows = plots.model_variants(d)
    assert [x["label"] for x in rows] == ["dense", "global_magnitude 50%", "global_magnitude 90%", "int8_dynamic"]
    assert [x["kind"] for x in rows] == ["dense", "pruning", "pruning", "compression"]
    fig = plots.size_axis(d)
    b = _trace(fig, "b")
    # x: size in MB; y: the group's accuracy in percent; colour: the model's violation in points
    assert list(b.x) == [4.0, 2.0, 0.8, 1.0]
    assert list(b.y) == pytest.approx([80.0, 75.0, 60.0, 75.0])
    assert list(b.marker.color) == pytest.approx([0.0, 9.0, 28.0, 4.0])
    assert "int8_dynamic" in b.hovertext[3] and "4.0 points" in b.hovertext[3]
    assert fig.layout.xaxis.type == "log" and len(fig.data) == 3        # no latency measured: one panel
    with pytest.raises(ValueError, match="size_bytes"):
        plots.size_axis(_result())


def test_size_axis_labels_every_log_tick():
    from dataclasses import replace

    r = _result()
    r = replace(r, dense=replace(r.dense, size_bytes=4_000_000),
                levels=[replace(r.levels[0], size_bytes=2_000_000), replace(r.levels[1], size_bytes=800_000)])
    fig = plots.size_axis(r)
    # 0.8 to 4 MB: plotly alone labels only "1" in that range; every tick is named, 1-2-5 per decade
    assert list(fig.layout.xaxis.tickvals) == [1.0, 2.0] and list(fig.layout.xaxis.ticktext) == ["1", "2"]
    assert fig.layout.xaxis.title.text == "stored size (MB, log scale)"
    assert plots.log_ticks([0.03, 0.9, 40, 2500]) == ([0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
                                                      200.0, 500.0, 1000.0, 2000.0],
                                                     ["0.05", "0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "50",
                                                      "100", "200", "500", "1,000", "2,000"])
    assert plots.log_ticks([12.0, 13.0]) == ([12.0, 13.0], ["12", "13"])       # inside one step: the values
    assert plots.log_ticks([]) == ([], [])


def _lab(hex_color: str) -> tuple[float, float, float]:
    """sRGB hex -> CIELAB (D65)."""
    rgb = [int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = [((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92 for c in rgb]
    x, y, z = ((0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047, 0.2126 * r + 0.7152 * g + 0.0722 * b,
               (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883)
    f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in (x, y, z)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def test_group_colours_stay_distinct_with_many_groups():
    import itertools
    import math

    names = [f"g{i}" for i in range(40)]
    colours = plots.group_colors(names)
    assert len(set(colours.values())) == 40
    # the first 16 (the palette) are as far apart as Okabe–Ito's own closest pair (CIELAB ΔE >= 20): the MNIST demo's
    # ten digit groups once drew 3 and 6 in two near-identical greens (ΔE 2.6)
    first = list(colours.values())[:16]
    closest = min(math.dist(_lab(a), _lab(b)) for a, b in itertools.combinations(first, 2))
    assert closest >= 20, closest
    assert min(math.dist(_lab(c), _lab(plots.OVERALL_COLOR)) for c in first) >= 20
    assert colours["g0"] == "#0072B2"                                     # the colour-blind-safe palette first
    assert all(len(c) == 7 and c.startswith("#") for c in colours.values())


def _timed(result, dense, levels, timed="masked"):
    from dataclasses import replace

    fp = {"dense": {"latency_ms": dense[0], "latency_ms_iqr": list(dense[1:]), "latency_repeats": 20, "timed": "dense"},
          "levels": [{"sparsity": s, "latency_ms": t[0], "latency_ms_iqr": list(t[1:]), "latency_repeats": 20,
                      "timed": timed} for s, t in levels.items()]}
    return replace(result, dense=replace(result.dense, size_bytes=1000, latency_ms=dense[0]),
                   levels=[replace(lv, size_bytes=500, latency_ms=levels[lv.sparsity][0]) for lv in result.levels],
                   sections={"footprint": fp})


def test_latency_bars_carry_their_spread_and_claim_no_speed_up_they_cannot_show():
    from fairprune.present.reading import NO_SPEEDUP

    # the chart: dense 48.8 ms drawn against 31.7 ms read as a 35% speed-up; their spreads overlap
    r = _timed(_result(), (48.8, 22.6, 72.9), {0.5: (31.7, 20.8, 45.0), 0.9: (10.0, 9.5, 10.5)})
    fig = plots.footprint_vs_sparsity(r)
    lat = _trace(fig, "latency (ms per batch)")
    assert list(lat.y) == [48.8, 31.7, 10.0]
    assert list(lat.error_y.array) == pytest.approx([24.1, 13.3, 0.5])
    assert list(lat.error_y.arrayminus) == pytest.approx([26.2, 10.9, 0.5])
    # a masked level faster than dense is the machine, not pruning: no percentage on its bar
    assert list(lat.text) == ["48.8 ms", "31.7 ms<br>(≈ dense)", "10 ms<br>(load, not pruning)"]
    assert "no measurable difference from dense" in lat.hovertext[1] and NO_SPEEDUP in lat.hovertext[1]
    assert "80% faster than dense" in lat.hovertext[2] and "not pruning" in lat.hovertext[2]
    # a compacted level can be faster: its bar says by how much
    r = _timed(_result(), (20.0, 19.0, 21.0), {0.5: (15.0, 14.0, 16.0), 0.9: (13.0, 12.5, 13.5)}, timed="compacted")
    assert list(_trace(plots.footprint_vs_sparsity(r), "latency (ms per batch)").text) == [
        "20 ms", "15 ms<br>(-25%)", "13 ms<br>(-35%)"]
    notes = [a.text for a in fig.layout.annotations]
    assert f"unstructured / 2:4 levels: {NO_SPEEDUP}" in notes
    # structured levels are timed compacted: no such label
    r = _timed(_result(), (20.0, 19.0, 21.0), {0.5: (15.0, 14.0, 16.0), 0.9: (13.0, 12.5, 13.5)}, timed="compacted")
    fig = plots.footprint_vs_sparsity(r)
    assert not any(NO_SPEEDUP in (a.text or "") for a in fig.layout.annotations)
    assert not any(NO_SPEEDUP in h for h in _trace(fig, "latency (ms per batch)").hovertext)


def test_mitigation_chart_keeps_its_axis_title_clear_of_the_legend():
    section = {"sparsity": 0.9, "method": "constrained_loss", "recommended": "constrained_loss",
               "before": {"groups": {"a": {"accuracy_drop": 0.1}, "b": {"accuracy_drop": 0.3}}},
               "after": {"groups": {"a": {"accuracy_drop": 0.05}, "b": {"accuracy_drop": 0.08}}}}
    fig = plots.mitigation_by_group(section)
    assert fig.layout.xaxis.title.text == "accuracy drop (points, dense − model)"
    assert fig.layout.legend.y >= 1 and fig.layout.legend.yanchor == "bottom"      # above the bars, not on the title
