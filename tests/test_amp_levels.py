"""Mixed precision is checked where it is used: on the dense model and again on every pruned level (issue 12, part 4).

On CPU ``--amp auto`` never uses mixed precision, so the decision is tested on synthetic predictions and
through an audit whose mixed-precision passes are made to disagree at one level.
"""

import copy

import numpy as np
import pytest
import torch

import fairprune.engine.audit as audit_mod
from fairprune.engine.audit import audit
from fairprune.data import GroupedDataset
from fairprune.engine.evaluate import AMP_TOLERANCE, Predictions, level_precision

from conftest import make_table, train_mlp


def _pred(pred, y, loss=None):
    pred = np.asarray(pred)
    loss = np.zeros(len(pred)) if loss is None else np.asarray(loss, dtype=float)
    return Predictions(loss=loss, pred=pred, correct=pred == y, margin=np.zeros(len(pred)), num_outputs=3)


def test_level_keeps_mixed_precision_only_where_it_passes():
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.integers(0, 3, n)
    groups = np.where(rng.random(n) < 0.7, "a", "b")
    full = _pred(rng.integers(0, 3, n), y)
    dense_full, dense_mixed = _pred(y, y), _pred(y, y, loss=np.full(n, 1e-3))
    # 2 of 4000 rows change (0.05%): within the 0.1% tolerance -> mixed, paired with the dense mixed pass
    same = full.pred.copy()
    same[:2] = (same[:2] + 1) % 3
    check, pred, dense = level_precision(full, _pred(same, y), dense_full, dense_mixed, groups, "float16")
    assert check.used and check.prediction_agreement == pytest.approx(1 - 2 / n)
    assert pred.pred is not full.pred and np.array_equal(pred.pred, same) and dense is dense_mixed
    # 40 rows (1%) change: fails -> the level and its dense reference are both full precision
    off = full.pred.copy()
    off[:40] = (off[:40] + 1) % 3
    check, pred, dense = level_precision(full, _pred(off, y), dense_full, dense_mixed, groups, "float16")
    assert not check.used and check.prediction_agreement == pytest.approx(0.99)
    assert pred is full and dense is dense_full
    assert check.tolerance == AMP_TOLERANCE
    # a change concentrated in one small group fails on the group's accuracy even when rare overall
    small = np.flatnonzero(groups == "b")[:3]
    flipped = full.pred.copy()
    flipped[small] = np.where(full.correct[small], (y[small] + 1) % 3, y[small])
    check, _, _ = level_precision(full, _pred(flipped, y), dense_full, dense_mixed, groups, "float16", tolerance=0.001)
    assert (1 - check.prediction_agreement) <= 0.001 and check.max_group_accuracy_change > 0.001
    assert not check.used


@pytest.fixture(scope="module")
def table():
    df = make_table(n=300, seed=3)
    data = GroupedDataset(x=torch.tensor(df[[f"f{i}" for i in range(4)]].to_numpy(np.float32)),
                          y=torch.tensor(df["label"].to_numpy()),
                          group=df["group"].to_numpy().astype(object), name="table", sha256="0" * 64)
    return train_mlp(df, epochs=40), data


def test_audit_checks_mixed_precision_at_each_level(table, monkeypatch):
    """Mixed passes are made exact copies of full precision, except at the first level, where 5% of the
    predictions are changed: that level falls back to full precision (with a warning), the other keeps
    mixed precision, and both equal an audit in full precision."""
    model, data = table
    real = audit_mod.evaluate
    mixed_calls = []

    def fake(model_, data_, *, amp=None, **kw):
        out = real(model_, data_, amp=None, **kw)
        if not amp:
            return out
        mixed_calls.append(amp)
        if len(mixed_calls) == 2:                  # 1: the dense check; 2: the first level
            pred = out.pred.copy()
            k = len(pred) // 20
            pred[:k] = (pred[:k] + 1) % out.num_outputs
            out = Predictions(loss=out.loss, pred=pred, correct=pred == data_.y.numpy(), margin=out.margin,
                              num_outputs=out.num_outputs)
        return out

    monkeypatch.setattr(audit_mod, "evaluate", fake)
    r = audit(copy.deepcopy(model), data, sparsities=[0.5, 0.8], amp="bfloat16", measure_footprint=False)
    monkeypatch.setattr(audit_mod, "evaluate", real)
    ref = audit(copy.deepcopy(model), data, sparsities=[0.5, 0.8], amp="off", measure_footprint=False)
    assert mixed_calls == ["bfloat16"] * 3          # the dense check and one mixed pass per level
    prec = r.to_dict()["precision"]
    assert prec["used"] is True
    assert [(lv["sparsity"], lv["used"]) for lv in prec["levels"]] == [(0.5, False), (0.8, True)]
    assert prec["levels"][0]["prediction_agreement"] == pytest.approx(1 - (data.n // 20) / data.n)
    assert any("at sparsity 0.5" in w and "full precision" in w for w in r.warnings)
    for got, want in zip(r.levels, ref.levels):
        assert got.overall.accuracy == pytest.approx(want.overall.accuracy)
        for g in ("a", "b"):
            assert got.groups[g].accuracy_drop == pytest.approx(want.groups[g].accuracy_drop)
