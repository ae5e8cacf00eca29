"""Metrics against hand-computed values and a plain pandas groupby."""

import numpy as np
import pandas as pd
import pytest

from fairprune.evaluate import Predictions
from fairprune.metrics import MIN_RELIABLE, compare, group_metrics, holm


def _pred(correct, loss, pred=None, k=3):
    correct = np.asarray(correct, dtype=bool)
    pred = np.zeros(len(correct), dtype=int) if pred is None else np.asarray(pred)
    return Predictions(loss=np.asarray(loss, float), pred=pred, correct=correct,
                       margin=np.zeros(len(correct)), num_outputs=k)


def test_group_metrics_by_hand():
    y = np.array([0, 1, 2, 0, 1, 2])
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    p = _pred([1, 1, 0, 1, 0, 0], [0.1, 0.2, 1.5, 0.3, 2.0, 1.0])
    overall, by = group_metrics(p, y, groups, ["a", "b"])
    assert overall.n == 6 and overall.accuracy == pytest.approx(0.5) and overall.loss == pytest.approx(5.1 / 6)
    assert by["a"].accuracy == pytest.approx(2 / 3) and by["a"].loss == pytest.approx(0.6)
    assert by["b"].accuracy == pytest.approx(1 / 3) and by["b"].loss == pytest.approx(1.1)
    assert by["a"].tpr is None  # not binary: no rates


def test_compare_drops_excessive_loss_violation_by_hand():
    y = np.zeros(8, dtype=int)
    groups = np.array(["a"] * 4 + ["b"] * 4)
    dense = _pred([1, 1, 1, 1, 1, 1, 1, 0], [0.1] * 4 + [0.2] * 4)
    pruned = _pred([1, 1, 1, 0, 0, 0, 1, 1], [0.3] * 4 + [0.9] * 4)
    overall, by, fv, fv_ci, gap = compare(dense, pruned, y, groups, ["a", "b"], seed=0, n_boot=500)
    assert by["a"].accuracy_drop == pytest.approx(0.25)          # 1.00 -> 0.75
    assert by["b"].accuracy_drop == pytest.approx(0.25)          # 0.75 -> 0.50
    assert by["a"].excessive_loss == pytest.approx(0.2)
    assert by["b"].excessive_loss == pytest.approx(0.7)
    assert fv["accuracy"] == pytest.approx(0.0)
    assert fv["loss"] == pytest.approx(0.5)                      # Eq. 3: max R - min R
    assert gap == pytest.approx(0.25)                            # 0.75 - 0.50
    assert overall.accuracy_drop == pytest.approx(7 / 8 - 5 / 8)
    assert by["a"].unreliable and by["b"].unreliable            # 4 < 30 samples
    lo, hi = fv_ci["accuracy"]
    assert 0.0 <= lo <= hi


def test_metrics_equal_pandas_groupby():
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, 2, n)
    groups = rng.choice(["x", "y", "z"], n, p=[0.6, 0.3, 0.1])
    pred_d = np.where(rng.random(n) < 0.9, y, 1 - y)
    pred_p = np.where(rng.random(n) < 0.8, y, 1 - y)
    loss_d, loss_p = rng.random(n), rng.random(n) * 2
    dense = _pred(pred_d == y, loss_d, pred_d, k=2)
    pruned = _pred(pred_p == y, loss_p, pred_p, k=2)
    _, by, fv, _, _ = compare(dense, pruned, y, groups, ["x", "y", "z"], seed=0, n_boot=200)
    df = pd.DataFrame({"g": groups, "y": y, "cd": pred_d == y, "cp": pred_p == y, "ld": loss_d, "lp": loss_p, "pp": pred_p})
    ref = df.groupby("g").agg(acc=("cp", "mean"), accd=("cd", "mean"), lp=("lp", "mean"), ld=("ld", "mean"), n=("y", "size"))
    for g in ["x", "y", "z"]:
        assert by[g].n == ref.loc[g, "n"]
        assert by[g].accuracy == pytest.approx(ref.loc[g, "acc"])
        assert by[g].accuracy_drop == pytest.approx(ref.loc[g, "accd"] - ref.loc[g, "acc"])
        assert by[g].excessive_loss == pytest.approx(ref.loc[g, "lp"] - ref.loc[g, "ld"])
        sub = df[df.g == g]
        assert by[g].tpr == pytest.approx((sub.pp[sub.y == 1] == 1).mean())
        assert by[g].fpr == pytest.approx((sub.pp[sub.y == 0] == 1).mean())
        assert by[g].selection_rate == pytest.approx((sub.pp == 1).mean())
    drops = [ref.loc[g, "accd"] - ref.loc[g, "acc"] for g in ["x", "y", "z"]]
    assert fv["accuracy"] == pytest.approx(max(drops) - min(drops))


def test_binary_rates_undefined_without_positives_is_none():
    y = np.array([0, 0, 1, 1])
    groups = np.array(["a", "a", "b", "b"])
    p = _pred([1, 0, 1, 1], [0.1] * 4, pred=[0, 1, 1, 1], k=1)
    _, by = group_metrics(p, y, groups, ["a", "b"])
    assert by["a"].tpr is None and by["a"].fpr == pytest.approx(0.5)
    assert by["b"].fpr is None and by["b"].tpr == pytest.approx(1.0)
    assert "tpr" in by["a"].to_dict() and by["a"].to_dict()["tpr"] is None


def test_bootstrap_ci_covers_point_and_is_seeded():
    rng = np.random.default_rng(0)
    n = 400
    y = np.zeros(n, dtype=int)
    groups = np.array(["big"] * 300 + ["small"] * 100)
    dense = _pred(np.ones(n, bool), np.zeros(n))
    pruned_c = np.concatenate([rng.random(300) < 0.95, rng.random(100) < 0.6])
    pruned = _pred(pruned_c, np.zeros(n))
    r1 = compare(dense, pruned, y, groups, ["big", "small"], seed=3)
    r2 = compare(dense, pruned, y, groups, ["big", "small"], seed=3)
    for g in ["big", "small"]:
        lo, hi = r1[1][g].accuracy_drop_ci95
        assert lo <= r1[1][g].accuracy_drop <= hi
        assert r1[1][g].accuracy_drop_ci95 == r2[1][g].accuracy_drop_ci95
    # the small group's drop (~0.4) is far beyond the overall (~0.14): significant; both reliable
    assert r1[1]["small"].significant and not r1[1]["small"].unreliable
    assert r1[1]["small"].n >= MIN_RELIABLE


def test_no_change_is_not_significant():
    n = 200
    y = np.zeros(n, dtype=int)
    groups = np.array(["a", "b"] * 100)
    same = _pred(np.ones(n, bool), np.zeros(n))
    _, by, fv, ci, _ = compare(same, same, y, groups, ["a", "b"], seed=0)
    assert not by["a"].significant and by["a"].accuracy_drop == 0 and ci["accuracy"] == (0.0, 0.0)


def test_holm_by_hand():
    # p sorted: 0.01*3=0.03, 0.02*2=0.04, 0.04*1=0.04 -> monotone
    assert holm(np.array([0.04, 0.01, 0.02])) == pytest.approx([0.04, 0.03, 0.04])
    assert holm(np.array([0.5, 0.6])) == pytest.approx([1.0, 1.0])
