"""Metrics against hand-computed values, a plain pandas groupby and slow brute-force references."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from fairprune.engine.evaluate import Predictions
from fairprune.engine.metrics import (INTERVAL_METHOD, MIN_RELIABLE, P_FLOOR, SIGNIFICANCE_TEST, compare, group_metrics,
                               group_vs_rest_p, holm, paired_counts, tango_interval, violation_interval,
                               violation_p_value)
from fairprune.core.result import LevelResult


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
    overall, by, fv, fv_ci, gap, fv_p, _, _ = compare(dense, pruned, y, groups, ["a", "b"], seed=0, n_perm=500)
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
    assert lo == 0.0 < hi                                        # equal drops: the interval holds 0
    assert fv_p["accuracy"] == 1.0                               # observed max − min is 0: every permutation ties


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
    _, by, fv, *_ = compare(dense, pruned, y, groups, ["x", "y", "z"], seed=0, n_perm=200)
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


def test_intervals_cover_point_and_results_are_seeded():
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
    assert r1 == r2 and r1.violation_p_value["accuracy"] < 0.01
    # the small group's drop (~0.4) is far beyond the other rows' (~0.05): significant; both reliable
    assert r1[1]["small"].significant and not r1[1]["small"].unreliable
    assert r1[1]["small"].n >= MIN_RELIABLE


def test_no_change_is_not_significant():
    n = 200
    y = np.zeros(n, dtype=int)
    groups = np.array(["a", "b"] * 100)
    same = _pred(np.ones(n, bool), np.zeros(n))
    c = compare(same, same, y, groups, ["a", "b"], seed=0)
    assert not c.groups["a"].significant and c.groups["a"].accuracy_drop == 0 and c.groups["a"].p_value == 1.0
    # nothing changed in 100 rows: the data still leave room for a few points either way, never [0, 0]
    lo, hi = c.groups["a"].accuracy_drop_ci95
    assert lo == pytest.approx(-hi) and 0.03 < hi < 0.05                 # Tango: z²/(n + z²) = 0.0370
    assert hi == pytest.approx(1.959964 ** 2 / (100 + 1.959964 ** 2), rel=1e-6)
    assert c.violation_ci95["accuracy"][0] == 0.0 < c.violation_ci95["accuracy"][1]
    assert c.violation_p_value == {"accuracy": 1.0}


def test_holm_by_hand():
    # p sorted: 0.01*3=0.03, 0.02*2=0.04, 0.04*1=0.04 -> monotone
    assert holm(np.array([0.04, 0.01, 0.02])) == pytest.approx([0.04, 0.03, 0.04])
    assert holm(np.array([0.5, 0.6])) == pytest.approx([1.0, 1.0])


# ---- the statistics against slow references -------------------------------------------------------------

def _brute_group_p(n_g, b_g, c_g, n, b, c):
    """Every (b, c) the group could draw, with its multivariate hypergeometric probability."""
    zeros, e = n - b - c, n_g * (b - c) / n
    p = 0.0
    for bb in range(min(b, n_g) + 1):
        for cc in range(min(c, n_g - bb) + 1):
            if n_g - bb - cc <= zeros and abs(bb - cc - e) >= abs(b_g - c_g - e) - 1e-9:
                p += math.comb(b, bb) * math.comb(c, cc) * math.comb(zeros, n_g - bb - cc) / math.comb(n, n_g)
    return p


@pytest.mark.parametrize("args", [(10, 3, 0, 40, 5, 2), (30, 0, 0, 2500, 75, 30), (100, 30, 1, 2500, 100, 40),
                                  (7, 1, 1, 20, 3, 3), (300, 9, 3, 2500, 80, 30), (40, 0, 6, 200, 6, 10)])
def test_group_vs_rest_p_equals_full_enumeration(args):
    # exact down to P_FLOOR (1e-13), reported as P_FLOOR below it (the (100, 30, 1, ...) case: 2e-19)
    assert group_vs_rest_p(*args) == pytest.approx(max(P_FLOOR, _brute_group_p(*args)), rel=1e-9)


def test_group_vs_rest_p_refuses_counts_outside_the_totals():
    with pytest.raises(ValueError, match="expected a group's counts within the totals; found group"):
        group_vs_rest_p(10, 6, 0, 40, 5, 2)


def _brute_tango_z(delta, n, b, c):
    """Tango's statistic with the restricted MLE of P(wrong→right) found on a fine grid."""
    q = np.linspace(max(0.0, -delta) + 1e-12, (1 - delta) / 2 - 1e-12, 400_001)
    ll = b * np.log(q + delta) + c * np.log(q) + (n - b - c) * np.log(1 - 2 * q - delta)
    q = q[np.argmax(ll)]
    return (b - c - n * delta) / math.sqrt(n * (2 * q + delta * (1 - delta)))


@pytest.mark.parametrize("counts", [(30, 3, 1), (100, 30, 1), (50, 0, 5), (400, 12, 9)])
def test_tango_interval_ends_are_where_the_score_statistic_meets_the_quantile(counts):
    n, b, c = counts
    (lo,), (hi,) = tango_interval(n, b, c)
    assert lo < (b - c) / n < hi
    assert _brute_tango_z(lo, n, b, c) == pytest.approx(1.959964, abs=1e-4)
    assert _brute_tango_z(hi, n, b, c) == pytest.approx(-1.959964, abs=1e-4)


def test_tango_interval_never_collapses_and_stays_in_range():
    lo, hi = tango_interval([30, 30, 5, 5], [0, 0, 5, 0], [0, 0, 0, 5])
    assert lo[0] == pytest.approx(-0.113513, abs=1e-5) and hi[0] == pytest.approx(0.113513, abs=1e-5)
    assert hi[2] == 1.0 and 0 < lo[2] < 1 and lo[3] == -1.0 and -1 < hi[3] < 0
    with pytest.raises(ValueError, match="expected counts with n >= 1 and 0 <= b \\+ c <= n; found"):
        tango_interval(3, 2, 2)


def test_violation_interval_is_built_from_simultaneous_group_intervals():
    n, b, c = np.array([2000, 300, 100]), np.array([60, 9, 30]), np.array([20, 3, 0])
    lo, hi = tango_interval(n, b, c, level=0.95 ** (1 / 3))
    v_lo, v_hi = violation_interval(n, b, c)
    assert v_lo == pytest.approx(lo.max() - hi.min()) and v_hi == pytest.approx(hi.max() - lo.min())
    drops = (b - c) / n
    assert 0 < v_lo < drops.max() - drops.min() < v_hi
    assert violation_interval([100], [3], [0]) == (0.0, 0.0)          # one group: 0 by definition


def test_violation_p_value_is_seeded_and_matches_a_row_permutation():
    n, b, c = np.array([200, 60, 40]), np.array([6, 6, 1]), np.array([2, 0, 1])
    p1 = violation_p_value(n, b, c, n_perm=2000, seed=4)
    assert p1 == violation_p_value(n, b, c, n_perm=2000, seed=4)
    # slow reference: shuffle the group labels of the rows themselves
    rng = np.random.default_rng(0)
    d = np.concatenate([np.repeat([1, -1, 0], [bb, cc, nn - bb - cc]) for nn, bb, cc in zip(n, b, c)])
    labels = np.repeat(np.arange(3), n)
    obs = (b - c) / n
    obs = obs.max() - obs.min()
    hits = 0
    for _ in range(2000):
        lab = rng.permutation(labels)
        drops = np.array([d[lab == j].mean() for j in range(3)])
        hits += drops.max() - drops.min() >= obs - 1e-12
    assert p1 == pytest.approx((1 + hits) / 2001, abs=0.03)         # two Monte Carlo estimates of one p (~0.15)
    assert violation_p_value(n, np.zeros(3, int), np.zeros(3, int)) == 1.0


def test_paired_counts_by_hand():
    n, b, c = paired_counts([1, 1, 0, 0, 1, 1], [1, 0, 1, 0, 0, 0], np.array(list("aabbbb")), ["a", "b"])
    assert n.tolist() == [2, 4] and b.tolist() == [1, 2] and c.tolist() == [0, 1]


def test_level_result_carries_the_new_fields_and_reads_old_json():
    rng = np.random.default_rng(2)
    n = 300
    y = np.zeros(n, dtype=int)
    groups = rng.choice(["a", "b", "c"], n)
    dense = _pred(rng.random(n) < 0.9, np.zeros(n))
    pruned = _pred(rng.random(n) < 0.8, np.zeros(n))
    c = compare(dense, pruned, y, groups, ["a", "b", "c"], seed=1, n_perm=300)
    lv = LevelResult(sparsity=0.5, achieved_sparsity=0.5, weight_distance=1.0, **c.level_fields())
    d = lv.to_dict()
    assert d["significance_test"] == SIGNIFICANCE_TEST and d["interval_method"] == INTERVAL_METHOD
    assert 0 < d["fairness_violation_p_value"]["accuracy"] <= 1
    assert LevelResult.from_dict(d) == lv
    old = {k: v for k, v in d.items() if k not in ("significance_test", "interval_method", "fairness_violation_p_value")}
    back = LevelResult.from_dict(old)
    assert back.fairness_violation_p_value is None and back.significance_test is None and back.interval_method is None
    assert back.to_dict() == old


def test_binary_rates_match_fairlearn_and_take_one_row():
    """The binary rates are counted directly (fairlearn's MetricFrame failed on a one-row input); fairlearn stays
    the reference they are checked against, on random inputs of every size from 1 row."""
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate

    from fairprune.engine.metrics import _binary_rates

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = 1 + trial % 7 if trial < 20 else int(rng.integers(8, 300))
        y, pred = rng.integers(0, 2, n), rng.integers(0, 2, n)
        groups = rng.choice(np.array(["a", "b", "c"]), n)
        ours = _binary_rates(y, pred, groups)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mf = MetricFrame(metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "sr": selection_rate},
                             y_true=y, y_pred=pred, sensitive_features=pd.Series(groups, name="group"))
        rows = [("__overall__", mf.overall, y)] + [(g, mf.by_group.loc[g], y[groups == g]) for g in mf.by_group.index]
        assert set(ours) == {key for key, _, _ in rows}
        for key, row, yy in rows:
            tpr, fpr, sr = ours[key]
            assert sr == pytest.approx(float(row["sr"]))
            assert (tpr is None) == (not (yy == 1).any()) and (fpr is None) == (not (yy == 0).any())
            if tpr is not None:
                assert tpr == pytest.approx(float(row["tpr"]))
            if fpr is not None:
                assert fpr == pytest.approx(float(row["fpr"]))
