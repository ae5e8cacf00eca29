"""fairprune.present.reading: sanity warnings placed beside the figures they concern, a headline and a "What this
means" paragraph that never call a collapsed model's drops "beyond chance", and latency read with its spread.

The warnings are the engine's own sentences (fairprune.engine.sanity.sanity_warnings), so a change of their
wording that the pages could no longer place fails here."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fairprune.core.result import AuditResult, DenseResult, LevelResult, Metrics
from fairprune.engine.sanity import sanity_warnings
from fairprune.present.reading import (NO_SPEEDUP, Latency, collapsed, headline, latencies, latency_reading, meaning,
                                       meaning_parts, placed_warnings)

from test_plots import _result


def _with_engine_warnings(result: AuditResult, *, collapse: float | None = 0.9, dense_at_chance: bool = False,
                          no_positives: str | None = None) -> AuditResult:
    """``result`` with the warnings the engine writes when the level at ``collapse`` is at or below chance (its
    worst group flagged significant, so a headline that ignored the warning would say "beyond chance"), and
    optionally when the dense model is, and when group ``no_positives`` has no positive labels."""
    names = result.group_names
    # labels: 95% class 0, so chance is 95%; the group without positives holds only class 0
    y = np.array([0] * 95 + [1] * 5)
    groups = np.array([names[i % len(names)] for i in range(100)], dtype=object)
    if no_positives is not None:
        y[groups == no_positives] = 0
        y[np.flatnonzero(groups != no_positives)[:5]] = 1
    levels = list(result.levels)
    if collapse is not None:
        i = [lv.sparsity for lv in levels].index(collapse)
        lv = levels[i]
        worst = max(lv.groups, key=lambda g: lv.groups[g].accuracy_drop)
        levels[i] = replace(lv, groups={**lv.groups, worst: replace(lv.groups[worst], significant=True)},
                            overall=replace(lv.overall, accuracy=0.10))
    dense = result.dense.overall if not dense_at_chance else replace(result.dense.overall, accuracy=0.5)
    models = [(f"{100 * lv.sparsity:g}% sparsity", lv.overall) for lv in levels]
    warnings = sanity_warnings(y, groups, names, 2 if no_positives else 10, dense, models)
    return replace(result, levels=levels, warnings=["mixed precision (float16) changed 1.00% of ...", *warnings])


def test_each_engine_warning_is_placed_beside_its_figures():
    res = _with_engine_warnings(_result(), no_positives="b")
    # the precision note, the dense model at chance (85%), both levels at chance (80%, 10%), group b's positives
    assert len(res.warnings) == 4
    placed = placed_warnings(res)
    dense_note = ("The dense model itself is at or below chance: every drop here is measured from a model that does "
                  "not do the task.")
    # each level gets its own sentence with its own accuracy, after the note that the dense model is at chance
    assert placed.at(0.9)[0] == dense_note and len(placed.at(0.9)) == 2
    assert placed.at(0.9)[1].startswith("At 90% sparsity the model's accuracy (10.0%) is at or below chance, the "
                                        "majority-class rate (")
    assert placed.at(0.9)[1].endswith("): it has collapsed, so its group drops (and any drop that differs beyond "
                                      "chance) describe a broken model, not who pays for pruning.")
    assert placed.at(0.5)[1].startswith("At 50% sparsity the model's accuracy (80.0%) is at or below chance")
    assert list(placed.groups) == ["b"] and placed.groups["b"][0].startswith("group 'b' (")
    assert "no positive labels" in placed.groups["b"][0]
    # what concerns no single figure stays general: the precision note and the dense model at chance
    assert placed.general[0].startswith("mixed precision")
    assert placed.general[1].startswith("the dense model's accuracy (85.0%) is at or below chance")
    assert len(placed.general) == 2
    # one level only, dense above chance: the sentence is the level's alone
    one = placed_warnings(_chance_only_at(_result(), 0.9))
    assert one.general == [] and one.at(0.5) == [] and len(one.at(0.9)) == 1
    assert one.at(0.9)[0].startswith("At 90% sparsity the model's accuracy (10.0%) is at or below chance, the "
                                     "majority-class rate (84.0%: always answering class 0)")


def test_a_result_without_warnings_places_none():
    placed = placed_warnings(_result())
    assert (placed.general, placed.models, placed.groups) == ([], {}, {})
    assert collapsed(_result(), 0.9) is None


def _chance_only_at(result: AuditResult, sparsity: float) -> AuditResult:
    """The engine's chance warning for one level only (chance 85%, the dense model's own accuracy + 1 point is
    not reached: the dense model stays above)."""
    names = result.group_names
    y = np.array([0] * 84 + [1] * 16)                       # chance 84%: dense (85%) is above it
    groups = np.array([names[i % len(names)] for i in range(100)], dtype=object)
    levels = [replace(lv, overall=replace(lv.overall, accuracy=0.10 if lv.sparsity == sparsity else 0.9),
                      groups={g: replace(m, significant=True, unreliable=False) for g, m in lv.groups.items()})
              for lv in result.levels]
    models = [(f"{100 * lv.sparsity:g}% sparsity", lv.overall) for lv in levels]
    return replace(result, levels=levels,
                   warnings=sanity_warnings(y, groups, names, 10, result.dense.overall, models))


def test_the_headline_never_says_beyond_chance_about_a_collapsed_level():
    res = _chance_only_at(_result(), 0.9)
    assert len(res.warnings) == 1 and res.warnings[0].startswith("at or below chance")
    top = headline(res)
    assert "beyond chance" not in top
    assert "this model is at or below chance, the majority-class rate (84.0%: always answering class 0)" in top
    # the level above chance still reads its test result
    assert "beyond chance" in headline(res, res.level(0.5))
    # the same result without the warning: the headline would say it (the warning is what changed it)
    assert "beyond chance" in headline(replace(res, warnings=[]))


def test_what_this_means_does_not_read_a_collapsed_model_as_who_pays():
    res = _chance_only_at(_result(), 0.9)
    text = meaning(res)
    assert text == " ".join(meaning_parts(res))
    assert "Read none of this as who pays for pruning: at 90% sparsity the sanity check found this model is at or " \
           "below chance" in text
    assert "by more than chance would explain" not in text
    clean = meaning(replace(res, warnings=[]))
    assert "by more than chance would explain" in clean and "Read none of this" not in clean
    # the paragraph ends on the decision, in words a reader of the dashboard or the report can act on
    assert text.endswith("fairness-constrained fine-tuning (fairprune's mitigation step) and check the repair on "
                         "held-out rows.")
    assert meaning(replace(res, levels=[])) == ""


def _timed(result: AuditResult, dense: tuple[float, float, float], levels: dict[float, tuple[float, float, float]],
           timed: str = "masked") -> AuditResult:
    """``result`` with latencies as an audit with --latency writes them: median in the level, spread in footprint."""
    fp = {"dense": {"latency_ms": dense[0], "latency_ms_iqr": [dense[1], dense[2]], "latency_repeats": 20,
                    "timed": "dense"},
          "levels": [{"sparsity": s, "latency_ms": t[0], "latency_ms_iqr": [t[1], t[2]], "latency_repeats": 20,
                      "timed": timed} for s, t in levels.items()]}
    return replace(result, dense=replace(result.dense, size_bytes=1000, latency_ms=dense[0]),
                   levels=[replace(lv, size_bytes=500, latency_ms=levels[lv.sparsity][0]) for lv in result.levels],
                   sections={**result.sections, "footprint": fp})


def test_latency_differs_only_beyond_the_spread():
    # the dense demo model: 72.9, 48.8, 20.8 and 22.6 ms in identical runs; a level at 22.6 is no faster
    res = _timed(_result(), (48.8, 22.6, 72.9), {0.5: (22.6, 20.8, 24.0), 0.9: (10.0, 9.5, 10.5)})
    t = latencies(res)
    assert list(t) == [0.0, 0.5, 0.9] and t[0.0].iqr == (22.6, 72.9) and t[0.5].repeats == 20
    assert latency_reading(t[0.0], t[0.5]) == f"no measurable difference from dense (the spreads overlap); {NO_SPEEDUP}"
    assert latency_reading(t[0.0], t[0.9]) == ("80% faster than dense (the spreads do not overlap): a masked level does "
                                               "exactly the dense model's work, so this difference is the machine's "
                                               f"load while timing, not pruning; {NO_SPEEDUP}")
    # a compacted (structured) level is not labelled: it can be faster
    res = _timed(_result(), (20.0, 19.0, 21.0), {0.5: (45.0, 44.0, 46.0), 0.9: (13.0, 12.5, 13.5)}, timed="compacted")
    t = latencies(res)
    assert latency_reading(t[0.0], t[0.5]) == "2.2x slower than dense (the spreads do not overlap)"
    assert latency_reading(t[0.0], t[0.9]) == "35% faster than dense (the spreads do not overlap)"
    # a result written before the spread was recorded claims nothing
    old = Latency("dense", 20.0, None, None, None)
    assert latency_reading(old, Latency("90%", 13.0, None, None, "masked")).startswith("no spread recorded")
    assert old.spread_text() == "20 ms (no spread recorded)"
    assert t[0.9].spread_text() == "13 ms (12.5–13.5, 20 runs)"
    # without latency nothing is read
    assert latencies(_result()) == {}
