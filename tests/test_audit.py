"""The audit pipeline against an independent reference, determinism, splits, fine-tuning, cancel."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from fairprune.engine.audit import AuditSpec, audit, run_spec
from fairprune.data import GroupedDataset
from fairprune.core.errors import Cancelled, InputError
from fairprune.engine.finetune import finetune
from fairprune.engine.prune import MaskedModel, compute_masks, prunable_parameters
from fairprune.core.result import SCHEMA, AuditResult
from fairprune.zoo import LoadedModel

from conftest import make_table, train_mlp


def _dataset(df, split=None):
    feats = [c for c in df.columns if c.startswith("f")]
    return GroupedDataset(
        x=torch.tensor(df[feats].to_numpy(np.float32)), y=torch.tensor(df["label"].to_numpy()),
        group=df["group"].to_numpy().astype(object), name="table", sha256="0" * 64,
        feature_names=tuple(feats), split=split,
    )


def _reference(model, df, sparsity):
    """Global magnitude pruning done by hand on a copy, then a pandas groupby."""
    m = copy.deepcopy(model)
    ws = [mod.weight for mod in m.modules() if isinstance(mod, nn.Linear)]
    allw = torch.cat([w.detach().abs().flatten() for w in ws])
    k = round(sparsity * allw.numel())
    thr = torch.sort(allw).values[k - 1]
    with torch.no_grad():
        for w in ws:
            w[w.abs() <= thr] = 0
    feats = [c for c in df.columns if c.startswith("f")]
    with torch.no_grad():
        logits = m(torch.tensor(df[feats].to_numpy(np.float32)))
    out = df.assign(pred=logits.argmax(1).numpy(),
                    loss=nn.functional.cross_entropy(logits, torch.tensor(df["label"].to_numpy()), reduction="none").numpy())
    out["correct"] = out.pred == out.label
    return out.groupby("group").agg(acc=("correct", "mean"), loss=("loss", "mean"))


def test_audit_matches_hand_pruned_reference():
    df = make_table()
    model = train_mlp(df)
    data = _dataset(df)
    res = audit(model, data, sparsities=[0.5, 0.9], seed=0)
    for lv in res.levels:
        ref = _reference(model, df, lv.sparsity)
        assert lv.achieved_sparsity == pytest.approx(lv.sparsity, abs=1e-3)
        for g in ("a", "b"):
            assert lv.groups[g].accuracy == pytest.approx(ref.loc[g, "acc"])
            assert lv.groups[g].loss == pytest.approx(ref.loc[g, "loss"], rel=1e-5)
            assert lv.groups[g].accuracy_drop == pytest.approx(res.dense.groups[g].accuracy - ref.loc[g, "acc"])
    assert set(res.group_names) == {"a", "b"}
    assert res.data.groups["a"] > res.data.groups["b"]          # majority first


def test_audit_leaves_dense_model_unchanged_and_is_deterministic():
    df = make_table()
    model = train_mlp(df)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _dataset(df)
    a = audit(model, data, sparsities=[0.3, 0.8], method="random", seed=4)
    b = audit(model, data, sparsities=[0.3, 0.8], method="random", seed=4)
    assert a.to_json() == b.to_json()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    c = audit(model, data, sparsities=[0.3, 0.8], method="random", seed=5)
    assert c.to_json() != a.to_json()


def test_result_json_round_trip_and_schema_keys():
    df = make_table()
    res = audit(train_mlp(df), _dataset(df), sparsities=[0.5])
    d = json.loads(res.to_json())
    assert d["schema"] == SCHEMA
    assert set(d) >= {"schema", "model", "data", "config", "provenance", "dense", "levels"}
    assert set(d["model"]) == {"name", "parameters", "prunable_parameters", "prunable_by_kind", "prunable_definition"}
    assert sum(d["model"]["prunable_by_kind"].values()) == d["model"]["prunable_parameters"]
    assert set(d["config"]) == {"method", "sparsities", "finetune_epochs", "seed", "device"}
    assert set(d["provenance"]) == {"fairprune_version", "torch_version", "model_sha256", "data_sha256",
                                    "label", "group_columns", "n_features"}
    lv = d["levels"][0]
    assert set(lv) >= {"sparsity", "achieved_sparsity", "overall", "groups", "weight_distance",
                       "fairness_violation", "fairness_violation_ci95", "accuracy_gap"}
    g = lv["groups"]["b"]
    assert set(g) >= {"n", "accuracy", "loss", "accuracy_drop", "excessive_loss", "accuracy_drop_ci95",
                      "significant", "unreliable"}
    assert "tpr" not in g  # 3 classes: no binary rates
    assert AuditResult.from_dict(d).to_dict() == d
    drops = [v["accuracy_drop"] for v in lv["groups"].values()]
    assert lv["fairness_violation"]["accuracy"] == pytest.approx(max(drops) - min(drops))


def test_split_measures_test_rows_only_and_finetune_keeps_masks():
    df = make_table(n=600)
    model = train_mlp(df)
    split = np.where(np.arange(len(df)) < 400, "train", "test").astype(object)
    data = _dataset(df, split=split)
    res = audit(model, data, sparsities=[0.9], finetune_epochs=2)
    assert res.data.n == 200
    assert res.config.finetune_epochs == 2
    assert res.levels[0].achieved_sparsity == pytest.approx(0.9, abs=1e-3)


def test_finetune_moves_weights_but_pruned_stay_zero():
    df = make_table()
    model = train_mlp(df)
    lm = LoadedModel.from_module(model, name="m")
    mm = MaskedModel(model)
    masks = compute_masks(model, "global_magnitude", 0.8)
    mm.apply(masks)
    before = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    hist = finetune(lm, mm, _dataset(df), epochs=2, lr=1e-2)
    assert len(hist) == 2
    moved = False
    for n, p in prunable_parameters(model).items():
        assert (p[~masks[n]] == 0).all(), n
        moved |= not torch.equal(p, before[n])
    assert moved
    mm.restore()


def test_finetune_without_training_rows_is_refused():
    df = make_table()
    with pytest.raises(InputError, match="--finetune-epochs needs training rows"):
        audit(train_mlp(df), _dataset(df), sparsities=[0.5], finetune_epochs=1)


def test_progress_and_cancel():
    df = make_table()
    model, data = train_mlp(df), _dataset(df)
    calls = []
    audit(model, data, sparsities=[0.2, 0.5, 0.9], progress=lambda d, t, m: calls.append((d, t)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n = {"c": 0}

    def cancel():
        n["c"] += 1
        return n["c"] > 2  # after the dense pass has started

    with pytest.raises(Cancelled):
        audit(model, data, sparsities=[0.5, 0.9], batch_size=64, cancel=cancel)
    for k, v in model.state_dict().items():   # a cancelled run restores the dense weights
        assert torch.equal(v, state[k])


def test_binary_single_logit_model_gets_rates():
    df = make_table()
    df["label"] = (df["label"] > 0).astype(int)
    model = train_mlp(df, num_classes=1, epochs=1)
    res = audit(model, _dataset(df), sparsities=[0.5])
    g = res.levels[0].groups["a"]
    assert g.selection_rate is not None and g.tpr is not None and g.fpr is not None


def test_probability_outputs_draw_a_warning():
    df = make_table()
    model = nn.Sequential(train_mlp(df), nn.Softmax(dim=1)).eval()
    res = audit(model, _dataset(df), sparsities=[0.5])
    assert any("probabilities" in w for w in res.warnings)


def test_labels_outside_model_classes_refused():
    df = make_table()
    df.loc[0, "label"] = 7
    with pytest.raises(InputError, match="7"):
        audit(train_mlp(make_table()), _dataset(df), sparsities=[0.5])


def test_bad_sparsities_refused():
    df = make_table()
    for bad, msg in [([], "at least one sparsity"), ([1.0], r"\[0, 1\)"), ([0.5, 0.5], "distinct")]:
        with pytest.raises(InputError, match=msg):
            audit(train_mlp(df, epochs=1), _dataset(df), sparsities=bad)


def test_spec_round_trip():
    spec = AuditSpec(sparsities=(0.5, 0.9), demo="mnist", group=("population",))
    assert AuditSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_demo_mnist_shows_the_papers_effect():
    res = run_spec(AuditSpec(sparsities=(0.9,), demo="mnist", group=("population",)))
    lv = res.levels[0]
    assert set(lv.groups) == {"standard", "inverted"}
    # the under-represented (inverted) group loses far more than the majority at 90% sparsity
    assert lv.groups["inverted"].accuracy_drop > lv.groups["standard"].accuracy_drop + 0.05
    assert lv.groups["inverted"].significant
