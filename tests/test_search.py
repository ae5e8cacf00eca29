"""Operating-point search and the CI gate: known thresholds, reuse of levels, confidence, exit statuses.

The constructed model (``_ladder``) is a bias-free linear classifier whose answer for each group-b row
rests on one weight pair of its own, of magnitudes j and j + 0.5 (j = 1..9), while group a rests on the
largest pair. Global magnitude pruning at sparsity s removes k = round(20 s) of the 20 weights, so
feature j is gone (both weights zero, tied logits, class 0 predicted, the row wrong) once k >= 2j: group
b's accuracy drop, and the violation (group a never drops), is floor(k / 2) / 9, worked out by hand.
"""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import fairprune.engine.audit
from fairprune.engine.audit import Auditor
from fairprune.run.cli import main
from fairprune.data import GroupedDataset
from fairprune.core.errors import InputError
from fairprune.engine.metrics import violation_interval
from fairprune.core.result import LevelResult, Metrics
from fairprune.engine.search import SCHEMA, check, search

PER_FEATURE = 10    # group-b rows per feature
N_A = 90            # group-a rows


def _ladder():
    """(model, dataset, DataFrame) for the constructed case described in the module docstring."""
    w = torch.zeros(2, 10)
    w[1, 0], w[0, 0] = 10.0, -10.5
    for j in range(1, 10):
        w[1, j], w[0, j] = float(j), -(j + 0.5)
    model = nn.Sequential(nn.Linear(10, 2, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.copy_(w)
    rows, labels, groups = [], [], []
    for i in range(N_A):                               # group a: feature 0, both classes
        sign = 1.0 if i % 2 == 0 else -1.0
        rows.append(sign * np.eye(10)[0])
        labels.append(int(sign > 0))
        groups.append("a")
    for j in range(1, 10):                             # group b: one feature each, class 1
        for _ in range(PER_FEATURE):
            rows.append(np.eye(10)[j])
            labels.append(1)
            groups.append("b")
    x = np.asarray(rows, np.float32)
    data = GroupedDataset(x=torch.tensor(x), y=torch.tensor(labels), group=np.asarray(groups, dtype=object),
                          name="ladder", sha256="0" * 64, feature_names=tuple(f"f{i}" for i in range(10)))
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)]).assign(label=labels, group=groups)
    return model, data, df


def _ladder_violation(s: float) -> float:
    return min(9, round(20 * s) // 2) / 9


@pytest.fixture
def spy_masks(monkeypatch):
    """Counts how often each sparsity is masked (i.e. measured) by the Auditor."""
    counts = Counter()
    real = fairprune.engine.audit.iter_masks

    def spy(module, method, sparsities, **kw):
        counts.update(float(s) for s in sparsities)
        return real(module, method, sparsities, **kw)

    monkeypatch.setattr(fairprune.engine.audit, "iter_masks", spy)
    return counts


# ---- the search on a real (constructed) model -------------------------------------------------------
def test_ladder_violation_matches_hand_computation():
    model, data, _ = _ladder()
    res = fairprune.engine.audit.audit(model, data, sparsities=[0.1, 0.25, 0.3, 0.5], measure_footprint=False)
    for lv in res.levels:
        assert lv.fairness_violation["accuracy"] == pytest.approx(_ladder_violation(lv.sparsity))
        assert lv.groups["a"].accuracy_drop == 0


def test_search_finds_known_threshold_and_measures_each_level_once(spy_masks):
    model, data, _ = _ladder()
    # violation <= 0.25 <=> at most 2 features gone <=> round(20 s) <= 5 <=> s < 0.275
    res = search(model, data, measure_footprint=False, max_violation=0.25, hi=0.6, tol=0.01)
    rec = res.recommended
    assert rec is not None and 0.275 - 0.01 <= rec.sparsity < 0.275
    assert rec.feasible and rec.violation <= 0.25
    assert all(p.feasible == (_ladder_violation(p.sparsity) <= 0.25) for p in res.frontier)
    # reuse: every level masked exactly once, and the count reported is the count measured
    assert set(spy_masks.values()) == {1}
    assert res.evaluations == len(spy_masks) == len(res.frontier)
    assert [p.sparsity for p in res.frontier] == sorted(spy_masks)
    assert {p.phase for p in res.frontier} == {"grid", "bisect"}
    # the bracket closed within tol around the threshold
    failing_above = min(p.sparsity for p in res.frontier if not p.feasible and p.sparsity > rec.sparsity)
    assert failing_above - rec.sparsity <= 0.01 and failing_above >= 0.275
    d = res.to_dict()
    assert d["schema"] == SCHEMA and list(d["methods"]) == ["global_magnitude"]
    assert d["best"]["sparsity"] == rec.sparsity and d["best"]["method"] == "global_magnitude"
    assert len(d["methods"]["global_magnitude"]["levels"]) == res.evaluations
    json.dumps(d, allow_nan=False)


def test_confidence_is_stricter():
    model, data, _ = _ladder()
    plain = search(model, data, measure_footprint=False, max_violation=0.25, hi=0.6)
    strict = search(model, data, measure_footprint=False, max_violation=0.25, hi=0.6, confidence=0.95)
    # the violation's interval is simultaneous over groups a (90 rows, never a flip) and b (90 rows, 10 flips per
    # feature gone): its upper end with no feature gone is within 0.25, with one feature gone it is not:
    # no feature gone <=> round(20 s) <= 1 <=> s < 0.075
    n = [N_A, 9 * PER_FEATURE]
    assert violation_interval(n, [0, 0], [0, 0])[1] < 0.25 < violation_interval(n, [0, PER_FEATURE], [0, 0])[1]
    assert strict.recommended.sparsity <= plain.recommended.sparsity
    assert 0.075 - 0.01 <= strict.recommended.sparsity < 0.075
    for p in strict.frontier:
        assert p.feasible == (max(p.violation, p.violation_ci95[1]) <= 0.25)
    assert strict.to_dict()["budget"]["reads"] == "ci95_upper"


def test_infeasible_over_the_whole_range_recommends_nothing():
    model, data, _ = _ladder()
    res = search(model, data, max_violation=0.25, lo=0.5, hi=0.9)
    assert res.recommended is None
    assert all(isinstance(p.size_bytes, int) and p.latency_ms > 0 for p in res.frontier)   # footprint measured
    assert "no level meets the budget" in res.note and "0.5" in res.note
    assert res.to_dict()["best"] is None and res.to_dict()["methods"]["global_magnitude"]["recommended"] is None


def test_several_methods_one_frontier_each():
    from fairprune.engine.search import search_methods

    model, data, _ = _ladder()
    rep = search_methods(model, data, methods=["global_magnitude", "random"], max_violation=0.25, hi=0.6, max_evals=8,
                         measure_footprint=False)
    d = rep.to_dict()
    assert list(d["methods"]) == ["global_magnitude", "random"]
    assert all(m["evaluations"] <= 8 for m in d["methods"].values())
    table = rep.frontier_table()
    assert set(table.method) == {"global_magnitude", "random"} and table.recommended.sum() <= 2


# ---- the search's logic on a synthetic, monotone level function -------------------------------------
def _fake_level(s: float, drop_b: float, half_width: float) -> LevelResult:
    def m(drop, n=100):
        return Metrics(n=n, accuracy=0.9 - drop, loss=0.3, accuracy_drop=drop, excessive_loss=drop,
                       accuracy_drop_ci95=(drop - half_width, drop + half_width), significant=False, p_value=1.0,
                       unreliable=False)

    return LevelResult(s, s, m(drop_b / 2, 200), {"a": m(0.0), "b": m(drop_b)}, 1.0,
                       {"accuracy": drop_b, "loss": drop_b}, {"accuracy": (max(0.0, drop_b - half_width), drop_b + half_width)},
                       drop_b)


@pytest.fixture
def synthetic(monkeypatch):
    """Replace the Auditor's level measurement with drop_b = f(s); returns (set f, counts of measurements)."""
    state = {"f": None, "half": 0.0}
    counts = Counter()

    def measure(self, sparsities, **_):
        out = []
        for s in sorted(sparsities):
            if s not in self._levels:
                counts[s] += 1
                self._levels[s] = _fake_level(s, state["f"](s), state["half"])
            out.append(self._levels[s])
        return out

    monkeypatch.setattr(Auditor, "measure", measure)
    return state, counts


@pytest.mark.parametrize("threshold", [0.05, 0.37, 0.83, 0.905, 0.97])
def test_bisection_lands_within_tol_of_a_known_threshold(synthetic, threshold):
    state, counts = synthetic
    state["f"] = lambda s: max(0.0, s - threshold + 0.1)          # crosses 0.1 at s = threshold
    model, data, _ = _ladder()
    res = search(model, data, measure_footprint=False, max_violation=0.1, tol=0.01, max_evals=20)
    assert threshold - 0.01 <= res.recommended.sparsity <= threshold
    assert set(counts.values()) == {1} and res.evaluations == len(counts)
    # grid (7 points) + a bisection of a bracket of width w to 0.01 takes ceil(log2(w / 0.01)) steps
    assert res.evaluations <= 7 + 6


def test_confidence_shifts_the_synthetic_threshold(synthetic):
    state, _ = synthetic
    state["f"], state["half"] = (lambda s: s - 0.53), 0.02         # estimate crosses 0.3 at 0.83, upper end at 0.81
    model, data, _ = _ladder()
    plain = search(model, data, measure_footprint=False, max_violation=0.3)
    strict = search(model, data, measure_footprint=False, max_violation=0.3, confidence=0.95)
    assert 0.82 <= plain.recommended.sparsity <= 0.83
    assert 0.80 <= strict.recommended.sparsity <= 0.81


def test_not_monotone_collapse_is_not_recommended(synthetic):
    state, _ = synthetic
    # fails from 0.85 on, but a collapsed model at 0.99 fails everyone alike: a small violation again
    state["f"] = lambda s: 0.01 if s >= 0.99 else (0.3 if s >= 0.85 else 0.0)
    model, data, _ = _ladder()
    res = search(model, data, measure_footprint=False, max_violation=0.05)
    assert 0.84 <= res.recommended.sparsity < 0.85
    assert [p.sparsity for p in res.frontier if p.feasible][-1] == 0.99
    assert "not monotone" in res.note and "0.99" in res.note


def test_everything_feasible_and_everything_infeasible(synthetic):
    state, _ = synthetic
    model, data, _ = _ladder()
    state["f"] = lambda s: 0.0
    res = search(model, data, measure_footprint=False, max_violation=0.05, hi=0.95)
    assert res.recommended.sparsity == 0.95 and res.evaluations == 5 and "raise --hi" in res.note
    state["f"] = lambda s: 0.5
    res = search(model, data, measure_footprint=False, max_violation=0.05, max_evals=9)
    assert res.recommended is None and res.evaluations == 9
    assert "no level meets the budget" in res.note and "--max-evals" in res.note


@pytest.mark.parametrize("kw,fragment", [
    ({"max_violation": None}, "at least one of"),
    ({"max_violation": -0.1}, "--max-violation"),
    ({"max_violation": 0.1, "confidence": 0.9}, "--confidence"),
    ({"max_violation": 0.1, "max_evals": 3}, "--max-evals"),
    ({"max_violation": 0.1, "lo": 0.6, "hi": 0.5}, "--lo"),
    ({"max_violation": 0.1, "hi": 1.0}, "--hi"),
    ({"max_violation": 0.1, "tol": 0}, "--tol"),
])
def test_bad_search_arguments(kw, fragment):
    model, data, _ = _ladder()
    with pytest.raises(InputError, match=fragment):
        search(model, data, measure_footprint=False, **kw)


# ---- check ------------------------------------------------------------------------------------------
def test_check_api_sentences_name_the_group():
    model, data, _ = _ladder()
    ok = check(model, data, sparsity=0.25, max_violation=0.25, max_group_drop=0.25)
    assert ok.passed and ok.violations == []
    bad = check(model, data, sparsity=0.5, max_violation=0.25, max_group_drop=0.25, max_overall_drop=0.5)
    assert not bad.passed and len(bad.violations) == 2
    # 5 of 9 features gone: group b drops 0.556
    assert any(v.startswith("group b drops 0.556 > max-group-drop 0.25, over by 0.306") for v in bad.violations)
    assert any("fairness violation 0.556" in v and "group b drops 0.556 while group a drops 0.000" in v
               for v in bad.violations)
    strict = check(model, data, sparsity=0.25, max_group_drop=0.25, confidence=0.95)
    assert not strict.passed and "(CI upper" in strict.violations[0]


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ladder_files(tmp_path_factory):
    from fairprune.zoo import save_pt2

    tmp_path = tmp_path_factory.mktemp("ladder")
    model, data, df = _ladder()
    csv = tmp_path / "ladder.csv"
    df.to_csv(csv, index=False)
    pt2 = tmp_path / "ladder.pt2"
    save_pt2(model, data.x[:4], pt2)
    return pt2, csv


def test_cli_check_exit_codes_and_offending_group(ladder_files, tmp_path, capsys):
    pt2, csv = ladder_files
    base = ["check", "--model", pt2, "--data", csv, "--max-group-drop", "0.25"]
    code, out, err = _run(base + ["--sparsity", "0.25"], capsys)
    assert code == 0, err
    assert out.startswith("pass:")
    code, out, err = _run(base + ["--sparsity", "0.5", "--max-violation", "0.3", "--out", tmp_path / "c.json"], capsys)
    assert code == 1, err
    assert out.startswith("fail:") and "group b drops 0.556 > max-group-drop 0.25" in out
    assert "fairness violation 0.556" in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["schema"] == "fairprune.audit/1" and saved["check"]["passed"] is False
    assert [lv["sparsity"] for lv in saved["levels"]] == [0.5]


@pytest.mark.parametrize("extra,fragment", [
    (["--sparsity", "0.5"], "at least one of"),
    (["--sparsity", "1.5", "--max-violation", "0.1"], "sparsity"),
    (["--sparsity", "0.5", "--max-violation", "0.1", "--confidence", "0.9"], "--confidence"),
    (["--sparsity", "0.5", "--max-violation", "lots"], "--max-violation"),
    (["--max-violation", "0.1"], "--sparsity"),
    (["--sparsity", "0.5", "--max-violation", "0.1", "--method", "nope"], "nope"),
])
def test_cli_check_bad_input_is_one_line_exit_2(ladder_files, capsys, extra, fragment):
    pt2, csv = ladder_files
    code, out, err = _run(["check", "--model", pt2, "--data", csv] + extra, capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err


def test_cli_search_writes_search_json(ladder_files, tmp_path, capsys):
    pt2, csv = ladder_files
    out_path = tmp_path / "search.json"
    code, out, err = _run(["search", "--model", pt2, "--data", csv, "--max-violation", "0.25", "--hi", "0.6",
                           "--method", "global_magnitude", "--method", "layer_magnitude", "--no-footprint", "--quiet",
                           "--out", out_path],
                          capsys)
    assert code == 0, err
    d = json.loads(out_path.read_text())
    assert d["schema"] == SCHEMA and list(d["methods"]) == ["global_magnitude", "layer_magnitude"]
    assert d["budget"] == {"max_violation": 0.25, "max_overall_drop": None, "max_group_drop": None,
                           "confidence": None, "reads": "estimate"}
    gm = d["methods"]["global_magnitude"]
    assert 0.265 <= gm["recommended"]["sparsity"] < 0.275
    assert {"sparsity", "achieved_sparsity", "overall_accuracy", "overall_drop", "violation", "violation_ci95",
            "worst_group", "worst_group_drop", "feasible"} <= set(gm["frontier"][0])
    assert d["provenance"]["group_columns"] == ["group"] and d["dense"]["overall"]["accuracy"] == 1.0
    assert gm["recommended"]["size_bytes"] is None
    assert "recommended: sparsity" in out and "<- recommended" in out
    code, _, err = _run(["search", "--model", pt2, "--data", csv, "--quiet", "--out", out_path], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_cli_check_on_the_mnist_demo(capsys):
    """The real case: at 90% the inverted population loses ~19 points, the standard one ~0.5."""
    code, out, err = _run(["check", "--demo", "mnist", "--sparsity", "0.9", "--max-group-drop", "0.1",
                           "--confidence"], capsys)
    assert code == 1, err
    assert "group inverted drops 0.19" in out and "group standard" not in out


def test_search_after_finetuning_uses_the_training_rows():
    from dataclasses import replace

    model, data, _ = _ladder()
    with pytest.raises(InputError, match="--finetune-epochs"):
        search(model, data, max_violation=0.25, finetune_epochs=1, measure_footprint=False)
    # every row twice: once to fine-tune on, once to measure. Fine-tuning cannot revive a zeroed weight pair
    # (masks stay fixed, no bias), so the threshold is the same as without it.
    both = data.subset(np.concatenate([np.arange(data.n), np.arange(data.n)]))
    both = replace(both, split=np.array(["train"] * data.n + ["test"] * data.n, dtype=object))
    res = search(model, both, max_violation=0.25, hi=0.6, finetune_epochs=1, measure_footprint=False)
    assert res.config["finetune_epochs"] == 1 and res.to_dict()["config"]["finetune_epochs"] == 1
    assert 0.265 <= res.recommended.sparsity < 0.275


# ---- compression variants beside the levels ---------------------------------------------------------------
def test_search_judges_compression_variants_and_names_the_smallest_within_budget(table_files):
    from fairprune.data import load_dataset
    from fairprune.engine.search import search_methods

    csv, _, _, model = table_files
    data = load_dataset(str(csv), label="label", group=("group",), ignore=("sex",))
    report = search_methods(model, data, methods=["global_magnitude"], max_violation=0.05, grid=[0.3, 0.6, 0.9],
                            max_evals=4, compress=["int8_weight", "nm_2_4"])
    d = report.to_dict()
    assert [v["method"] for v in d["compression"]] == ["int8_weight", "nm_2_4"]
    # each variant judged with the same budget as a level, from its own figures
    audit = report.results[0].audit
    for v, entry in zip(report.variants, audit.compression):
        assert v.point.violation == entry.level.fairness_violation["accuracy"]
        assert v.point.feasible == (entry.level.fairness_violation["accuracy"] <= 0.05)
        assert v.point.size_bytes == entry.size_bytes and v.point.phase == "compression"
    # the smallest passing model among the recommended level and the variants, by hand
    rec = report.results[0].recommended
    cands = ([(rec.size_bytes, -rec.overall_accuracy, "pruning", rec.sparsity)] if rec is not None else []) + [
        (v.point.size_bytes, -v.point.overall_accuracy, "compression", v.method)
        for v in report.variants if v.point.feasible]
    best = min(cands)
    small = d["smallest_within_budget"]
    assert small["size_bytes"] == best[0] and small["kind"] == best[2]
    assert "compression variants" in report.text()


def test_check_gates_a_compression_variant(table_files, tmp_path, capsys):
    csv, weights, _, _ = table_files
    base = ["check", "--model", str(weights), "--arch", "mlp", "--num-classes", "3", "--arch-arg", "in_features=4",
            "--arch-arg", "hidden=32,16", "--data", str(csv), "--ignore", "sex"]
    out = tmp_path / "check.json"
    code = main(base + ["--compress", "int8_weight", "--max-overall-drop", "0.5", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and text.startswith("pass: int8_weight (compression)")
    d = json.loads(out.read_text())
    assert d["check"]["variant"] == "int8_weight" and d["levels"] == []
    assert [e["method"] for e in d["compression"]] == ["int8_weight"]
    # a budget nothing meets fails with exit 1, naming the bound
    assert main(base + ["--compress", "nm_2_4", "--max-overall-drop", "-0.5"]) == 1
    assert "max-overall-drop -0.5" in capsys.readouterr().out
    # both a sparsity and a variant: refused before loading anything
    assert main(base + ["--compress", "int8_weight", "--sparsity", "0.5", "--max-violation", "0.1"]) == 2
    assert "exactly one of --sparsity" in capsys.readouterr().err
