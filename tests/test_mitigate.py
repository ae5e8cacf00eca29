"""Mitigation: masks fixed for every method, dual ascent, held-out and selection rows kept apart, the CLI's schema."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from fairprune.run import jobs
from fairprune.run.cli import main
from fairprune.data import GroupedDataset
from fairprune.core.errors import InputError
from fairprune.engine.evaluate import evaluate
from fairprune.engine.finetune import finetune
from fairprune.engine.mitigate import (AccuracyGapConstraint, LossConstraint, MitigationResult, Multipliers, Outcome,
                                aggregate, check_masks, get_mitigation, list_mitigations, measure, mitigate,
                                protected_masks, recommend, split_rows, stratified_split)
from fairprune.engine.mitigate._engine import selection_warnings
from fairprune.core.result import Metrics
from fairprune.engine.mitigate._engine import _Context
from fairprune.engine.prune import MaskedModel, compute_masks, prunable_parameters
from fairprune.zoo import LoadedModel, load_model

from conftest import train_mlp

OUTCOME_KEYS = {"overall", "groups", "fairness_violation", "accuracy_gap"}
SECTION_KEYS = {"method", "when", "sparsity", "alpha", "epochs", "seeds", "n_train", "n_eval", "before", "after",
                "baselines", "multipliers"}
EXTRA_KEYS = {"lr", "batch_size", "split", "single_seed", "methods", "recommended", "prune_method",
              "achieved_sparsity", "options", "dense", "device", "multipliers_std", "protected_layers", "warnings",
              "selection"}
SELECTION_KEYS = {"split", "fraction", "seed", "n_select", "n_select_by_group", "n_train", "n_eval", "chosen",
                  "criterion", "by_method"}


# ---- a small imbalanced set: group 'b' follows its own rule, rare in training, half of the held-out rows ----
def imbalanced_table(seed=0, n_train=1000, n_test=600, share_b_train=0.1):
    """Binary task; 'b' (10% of the training rows, 50% of the test rows) is labelled by another rule.

    ``f4`` marks the group, so one model can learn both rules; trained on the imbalanced rows it fits 'b'
    less well, as the paper's minorities are.
    """
    rng = np.random.default_rng(seed)

    def rows(n, share_b, split):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        g = np.where(rng.random(n) < share_b, "b", "a")
        score = np.where(g == "b", x[:, 2] - x[:, 3], x[:, 0] + 0.5 * x[:, 1])
        df = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
        df["f4"] = (g == "b").astype(np.float32)
        df["label"] = (score > 0).astype(int)
        df["group"] = g
        df["split"] = split
        return df

    return pd.concat([rows(n_train, share_b_train, "train"), rows(n_test, 0.5, "test")], ignore_index=True)


def dataset(df, split=True):
    feats = [c for c in df.columns if c.startswith("f")]
    return GroupedDataset(
        x=torch.tensor(df[feats].to_numpy(np.float32)), y=torch.tensor(df["label"].to_numpy()),
        group=df["group"].to_numpy().astype(object), name="table", sha256="0" * 64, feature_names=tuple(feats),
        split=df["split"].to_numpy().astype(object) if split and "split" in df else None,
    )


@pytest.fixture(scope="module")
def setting():
    """(DataFrame, dense MLP trained on its training rows)."""
    df = imbalanced_table()
    return df, train_mlp(df[df.split == "train"], num_classes=2, epochs=200)


def fresh(model):
    import copy

    return copy.deepcopy(model)


# ---- masks stay fixed ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [m.name for m in list_mitigations() if m.retrains])
def test_masks_stay_fixed_while_fine_tuning(setting, name):
    df, model = setting
    model = fresh(model)
    data = dataset(df)
    train = data.part("train")
    lm = LoadedModel.from_module(model, name="m")
    names = train.group_names
    method = get_mitigation(name)
    cfg = method.config(warmup=0, dual_lr=1.0)
    rows, inputs = _Context(lm, train, names, torch.device("cpu"), 256, None).run_inputs(cfg, seed=0, batch_size=64)
    objective = method.objective(names, cfg, inputs)
    masks = compute_masks(model, "global_magnitude", 0.8)
    mm = MaskedModel(model)
    mm.apply(masks)
    before = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    finetune(lm, mm, train, epochs=2, lr=1e-2, objective=objective,
             sampling="balanced" if cfg.balanced else "shuffle", group_names=names)
    moved = False
    for n, p in prunable_parameters(model).items():
        assert (p[~masks[n]] == 0).all(), n
        moved |= not torch.equal(p, before[n])
    assert moved
    check_masks(model, masks)


def test_check_masks_catches_a_moved_weight(setting):
    model = fresh(setting[1])
    masks = compute_masks(model, "global_magnitude", 0.5)
    MaskedModel(model).apply(masks)
    name = next(iter(masks))
    with torch.no_grad():
        dict(model.named_parameters())[name][~masks[name]] += 1.0
    with pytest.raises(RuntimeError, match="no longer zero"):
        check_masks(model, masks)


def test_protect_layers_keeps_sensitive_layers_dense_at_the_same_sparsity(setting):
    from fairprune.engine.mitigate import LayerCost

    model = fresh(setting[1])
    params = prunable_parameters(model)
    total = sum(p.numel() for p in params.values())
    last = list(params)[-1]
    costs = [LayerCost(n, p.numel(), "b", 0.5 if n == last else 0.01, 0.1) for n, p in params.items()]
    masks, chosen = protected_masks(model, costs, 0.8, protect=2)
    assert last in chosen and masks[last].all()
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.8 * total)


@pytest.mark.parametrize("name", [m.name for m in list_mitigations()])
def test_every_method_reaches_the_requested_sparsity(setting, name):
    df, model = setting
    r = mitigate(fresh(model), dataset(df), sparsity=0.7, method=name, epochs=1, baselines=())
    assert r.achieved_sparsity[name] == pytest.approx(0.7, abs=1e-3)
    d = r.to_dict()["mitigation"]
    assert set(d["methods"]) == {name}
    if get_mitigation(name).constrained:
        assert len(d["multipliers"]) == 1 and set(d["multipliers"][0]) == {"a", "b"}
    else:
        assert d["multipliers"] == []


# ---- dual ascent -------------------------------------------------------------------------------------------
def test_multipliers_rise_while_violated_and_fall_to_zero_when_satisfied():
    lam = Multipliers(["a", "b"], step=0.5)
    present = torch.tensor([True, False])
    seen = []
    for _ in range(3):
        lam.update(torch.tensor([0.4, 5.0]), present)
        seen.append(lam.value.tolist())
    assert seen[0][0] == pytest.approx(0.2) and seen[1][0] == pytest.approx(0.4) and seen[2][0] == pytest.approx(0.6)
    assert all(v[1] == 0 for v in seen)           # 'b' was never in a batch: its multiplier never moves
    for _ in range(10):
        lam.update(torch.tensor([-0.3, 0.0]), present)
        assert lam.value[0] >= 0
    assert lam.value[0] == 0.0


def test_loss_constraint_multipliers_follow_the_constructed_violation():
    """Group a's loss far above the batch mean: its λ rises; once both losses are equal (c = −α) it falls to 0."""
    obj = LossConstraint(["a", "b"], alpha=0.1, dual_lr=1.0, warmup=0)
    obj.start_epoch(0)
    y = torch.tensor([0, 0, 0, 0])
    group = torch.tensor([0, 0, 1, 1])
    unequal = torch.tensor([[-2.0, 2.0], [-2.0, 2.0], [4.0, -4.0], [4.0, -4.0]], requires_grad=True)
    for _ in range(3):
        obj(unequal, y, group)
    assert (obj.multipliers.value > 0.5).all()   # both |J_a − J| exceed α (two groups: equal gaps)
    equal = torch.tensor([[1.0, 0.0]] * 4)
    values = []
    for _ in range(80):
        obj(equal, y, group)
        values.append(obj.multipliers.value.clone())
    assert all((b <= a).all() for a, b in zip(values, values[1:]))
    assert (values[-1] == 0).all()
    # the Lagrangian's gradient pushes the worse group's loss down harder than plain loss does
    obj2 = LossConstraint(["a", "b"], alpha=0.0, dual_lr=0.0, warmup=0)
    obj2.start_epoch(0)
    obj2.multipliers.value[:] = torch.tensor([1.0, 1.0])
    z = unequal.detach().clone().requires_grad_(True)
    obj2(z, y, group).backward()
    assert z.grad[0, 0] < 0 and abs(float(z.grad[0, 0])) > abs(float(z.grad[2, 0])) - 1e-9


def test_accuracy_gap_constraint_is_one_sided_on_true_rates():
    # dense accuracy 1.0 for both; the batch gets group a all wrong, b all right: a's drop exceeds the overall
    obj = AccuracyGapConstraint(["a", "b"], alpha=0.0, dual_lr=1.0, warmup=0, dense_accuracy=np.array([1.0, 1.0]))
    obj.start_epoch(0)
    y = torch.tensor([0, 0, 0, 0])
    group = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[0.0, 0.1], [0.0, 0.1], [5.0, 0.0], [5.0, 0.0]])
    obj(logits, y, group)
    assert obj.multipliers.value[0] == pytest.approx(0.5)   # drop_a − drop = 1 − 0.5
    assert obj.multipliers.value[1] == 0.0                  # drop_b − drop = −0.5 < 0: one-sided, stays 0


def test_warmup_holds_multipliers_at_zero_and_trajectory_is_per_epoch():
    obj = LossConstraint(["a", "b"], alpha=0.0, dual_lr=1.0, warmup=1)
    y, group = torch.tensor([0, 0]), torch.tensor([0, 1])
    logits = torch.tensor([[-2.0, 2.0], [2.0, -2.0]])
    obj.start_epoch(0)
    obj(logits, y, group)
    obj.start_epoch(1)
    obj(logits, y, group)
    traj = obj.finish()
    assert traj[0] == {"a": 0.0, "b": 0.0} and traj[1]["a"] > 0 and len(traj) == 2


# ---- held-out rows -----------------------------------------------------------------------------------------
def test_stratified_split_is_disjoint_and_keeps_each_groups_share():
    groups = np.array(["a"] * 700 + ["b"] * 250 + ["c"] * 50, dtype=object)
    tr, held = stratified_split(groups, 0.6, seed=3)
    assert len(np.intersect1d(tr, held)) == 0 and len(tr) + len(held) == len(groups)
    for g, n in (("a", 700), ("b", 250), ("c", 50)):
        assert (groups[tr] == g).sum() == round(0.6 * n)
    tr2, _ = stratified_split(groups, 0.6, seed=3)
    assert np.array_equal(tr, tr2)
    with pytest.raises(InputError, match="train_fraction"):
        stratified_split(groups, 1.0, seed=0)


def test_split_sources(setting):
    df = setting[0]
    s = split_rows(dataset(df))
    assert s.source == "split column" and len(np.intersect1d(s.train_index, s.eval_index)) == 0
    assert set(df.split.to_numpy()[s.eval_index]) == {"test"}
    s = split_rows(dataset(df, split=False), train_fraction=0.7, seed=1)
    assert s.source == "stratified" and s.to_dict() == {"source": "stratified", "train_fraction": 0.7, "seed": 1}
    assert len(np.intersect1d(s.train_index, s.eval_index)) == 0 and s.train.n + s.eval.n == len(df)


def test_selection_rows_are_disjoint_from_training_and_held_out_rows_and_stratified(setting):
    df = setting[0]
    data = dataset(df, split=False)
    for kw in ({"train_data": None}, {"train_data": dataset(df).part("train")}):
        full = split_rows(dataset(df) if kw["train_data"] is not None else data, train_fraction=0.6, seed=4, **kw)
        s = split_rows(dataset(df) if kw["train_data"] is not None else data, train_fraction=0.6, seed=4,
                       select_fraction=0.3, **kw)
        assert s.select_fraction == 0.3 and s.train.n + s.select.n == full.train.n
        assert np.array_equal(s.eval_index, full.eval_index)             # the held-out rows do not move
        for g, n in full.train.group_sizes.items():                     # each group gives its share
            assert s.select.group_sizes[g] == round(0.3 * n), g
        if s.train_index is not None:                                   # positions in the same dataset
            assert not set(s.select_index) & set(s.train_index) and not set(s.select_index) & set(s.eval_index)
            assert sorted({*s.select_index, *s.train_index}) == sorted(full.train_index)
    s1, s2, s3 = (split_rows(data, train_fraction=0.6, seed=sd, select_fraction=0.3) for sd in (4, 4, 5))
    assert np.array_equal(s1.select_index, s2.select_index) and not np.array_equal(s1.select_index, s3.select_index)
    # --train-data: the selection rows are positions in the training file, none of them fine-tunes
    tf = dataset(df).part("train")
    s = split_rows(dataset(df), train_data=tf, select_fraction=0.2)
    assert s.train_index is None and len(s.select_index) == s.select.n
    assert torch.equal(tf.x[torch.as_tensor(s.select_index)], s.select.x)
    fit = {tuple(r) for r in s.train.x.tolist()}
    assert not fit & {tuple(r) for r in s.select.x.tolist()} and not fit & {tuple(r) for r in s.eval.x.tolist()}


def test_tiny_data_selection_degrades_with_counts():
    tiny = GroupedDataset(x=torch.zeros(4, 2), y=torch.tensor([0, 1, 0, 1]),
                          group=np.array(["a", "b", "c", "d"], dtype=object), name="tiny", sha256="0" * 64,
                          split=np.array(["train", "train", "test", "test"], dtype=object))
    with pytest.raises(InputError, match=r"expected at least 2 training rows in some group, found 'a' 1, 'b' 1"):
        split_rows(tiny, select_fraction=0.2)
    with pytest.raises(InputError, match=r"--select-fraction must be in \(0, 1\).*got 1.0"):
        split_rows(tiny, select_fraction=1.0)
    with pytest.raises(InputError, match=r"--select-fraction must be a number in \(0, 1\).*got 'lots'"):
        split_rows(tiny, select_fraction="lots")
    w = selection_warnings({"a": 400, "b": 20, "c": 1}, {"a": 80, "b": 4})
    assert w[0] == "no selection rows for group 'c' (1 training row): the recommendation is chosen without seeing it"
    assert "chosen on 84 selection rows, with fewer than 30 in group 'b' (4)" in w[1] and "'a'" not in w[1]
    assert selection_warnings({"a": 400}, {"a": 80}) == []


def test_fine_tuning_never_sees_a_held_out_row(setting, monkeypatch):
    import fairprune.engine.mitigate._engine as engine

    df, model = setting
    data = dataset(df, split=False)
    trained_on, measured = [], []
    real_finetune, real_evaluate = engine.finetune, engine.evaluate

    def spy_finetune(m, mm, train, **kw):
        trained_on.append(train.x)
        return real_finetune(m, mm, train, **kw)

    def spy_evaluate(m, d, **kw):
        measured.append(d.x)
        return real_evaluate(m, d, **kw)

    monkeypatch.setattr(engine, "finetune", spy_finetune)
    monkeypatch.setattr(engine, "evaluate", spy_evaluate)
    r = mitigate(fresh(model), data, sparsity=0.8, method="constrained_loss", epochs=1, train_fraction=0.6,
                 select_fraction=0.25)
    assert r.split == {"source": "stratified", "train_fraction": 0.6, "seed": 0}
    n_select = r.selection["n_select"]
    assert (r.n_train, n_select, r.n_eval) == (720, 240, 640) and r.n_train + n_select + r.n_eval == data.n
    train_rows = {tuple(row) for x in trained_on for row in x.tolist()}
    held_rows = {tuple(row) for x in measured if len(x) == r.n_eval for row in x.tolist()}
    select_rows = {tuple(row) for x in measured if len(x) == n_select for row in x.tolist()}
    assert len(trained_on) == 3 and len(held_rows) == r.n_eval and len(select_rows) == n_select
    assert not train_rows & held_rows and not train_rows & select_rows and not select_rows & held_rows
    assert len(train_rows) == r.n_train


def test_dual_holdout_rows_are_kept_from_the_primal_step(setting):
    df, model = setting
    train = dataset(df).part("train")
    lm = LoadedModel.from_module(fresh(model), name="m")
    ctx = _Context(lm, train, train.group_names, torch.device("cpu"), 256, None)
    cfg = get_mitigation("constrained_accuracy_gap").config(dual_holdout=0.25)
    rows, inputs = ctx.run_inputs(cfg, seed=0, batch_size=64)
    held_back = inputs.probe.rows
    primal = {tuple(r) for r in rows.x.tolist()}
    assert rows.n + held_back.n == train.n and not primal & {tuple(r) for r in held_back.x.tolist()}
    assert (held_back.group == "b").sum() == round(0.25 * (train.group == "b").sum())
    logits, y, group = inputs.probe()
    assert logits.shape == (64, 2) and set(group.tolist()) == {0, 1}
    # the probe draws as the primal step does: group-balanced, or the rows' own mix with balanced=False
    b = ctx.names.index("b")
    share = {}
    for balanced in (True, False):
        _, inputs = ctx.run_inputs(cfg.replaced(balanced=balanced), seed=0, batch_size=64)
        share[balanced] = float(np.mean([(inputs.probe()[2] == b).float().mean() for _ in range(30)]))
    assert abs(share[True] - 0.5) < 0.05 and abs(share[False] - float((held_back.group == "b").mean())) < 0.03, share


# ---- the point of it: on held-out rows ----------------------------------------------------------------------
def test_constrained_run_lowers_held_out_violation_versus_plain(setting):
    df, model = setting
    r = mitigate(fresh(model), dataset(df), sparsity=0.8, method="constrained_loss", epochs=3, seed=0, seeds=3,
                 lr=3e-3, batch_size=64, baselines=("plain",))
    plain = np.array([o.fairness_violation["accuracy"] for o in r.runs["plain"]])
    constrained = np.array([o.fairness_violation["accuracy"] for o in r.after])
    before = r.before[0]
    assert before.groups["b"].accuracy_drop > before.groups["a"].accuracy_drop + 0.05   # pruning hurt 'b' more
    # 800 fine-tuning rows (200 more select): measured 0.020/0.027/0.027 against 0.030/0.037/0.027
    assert (constrained <= plain + 1e-9).all() and constrained.mean() < plain.mean() - 0.005, (constrained, plain)
    assert all(o.overall.accuracy > before.overall.accuracy for o in r.after)


# ---- results -------------------------------------------------------------------------------------------------
def test_aggregate_means_and_std():
    a = {"n": 10, "accuracy": 0.5, "tpr": None, "g": {"loss": 1.0}}
    b = {"n": 10, "accuracy": 0.7, "tpr": None, "g": {"loss": 3.0}}
    out = aggregate([a, b])
    assert out["n"] == 10 and "n_std" not in out and out["tpr"] is None
    assert out["accuracy"] == pytest.approx(0.6) and out["accuracy_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert out["g"] == {"loss": 2.0, "loss_std": pytest.approx(np.sqrt(2))}
    assert aggregate([a]) is a


def test_recommend_picks_lowest_violation_within_a_point_of_best_accuracy():
    def o(acc, viol):
        return {"overall": {"accuracy": acc}, "fairness_violation": {"accuracy": viol}}

    by_method = {"plain": o(0.90, 0.10), "reweighted": o(0.915, 0.02), "constrained_loss": o(0.907, 0.01),
                 "crude": o(0.85, 0.001)}
    assert recommend({"mitigation": {"selection": {"by_method": by_method}}}) == "constrained_loss"
    by_method["constrained_loss"] = o(0.90, 0.01)             # 1.5 points below the best: out
    assert recommend({"selection": {"by_method": by_method}}) == "reweighted"
    old = {"methods": by_method}                              # a result written before selection rows existed
    with pytest.raises(ValueError, match="no selection rows to choose on.*on_reported_rows=True"):
        recommend(old)                                        # choosing on the reported rows is opt-in
    assert recommend(old, on_reported_rows=True) == "reweighted"


def outcome(acc, viol):
    return Outcome(Metrics(n=100, accuracy=acc, loss=0.3), {}, {"accuracy": viol, "loss": 0.0}, 0.0)


def test_recommend_chooses_on_the_selection_rows_not_the_held_out_ones():
    """Held-out rows favour 'plain'; the selection rows favour 'constrained_loss': the choice follows the
    selection rows, and the held-out figures are reported as they are."""
    kw = dict(method="constrained_loss", when="after", sparsity=0.9, alpha=0.0, epochs=1, seeds=[0], n_train=800,
              n_eval=600, lr=1e-3, batch_size=128, split={"source": "split column", "train_fraction": 0.625},
              prune_method="global_magnitude", device="cpu", dense={}, before=[outcome(0.7, 0.2)])
    held = {"constrained_loss": [outcome(0.90, 0.05)], "plain": [outcome(0.905, 0.01)],
            "reweighted": [outcome(0.9, 0.03)]}
    chosen_on = {"constrained_loss": [outcome(0.91, 0.01)], "plain": [outcome(0.912, 0.04)],
                 "reweighted": [outcome(0.85, 0.0)]}
    r = MitigationResult(**kw, runs=held, selection={"split": "stratified from the training rows", "fraction": 0.2,
                                                     "seed": 0, "n_select": 200, "n_select_by_group": {"a": 200}},
                         selection_runs=chosen_on)
    assert recommend(r) == "constrained_loss"
    d = r.to_dict()["mitigation"]
    assert d["recommended"] == d["selection"]["chosen"] == "constrained_loss"
    assert set(d["selection"]) == SELECTION_KEYS
    assert (d["selection"]["n_select"], d["selection"]["n_train"], d["selection"]["n_eval"]) == (200, 800, 600)
    assert d["selection"]["by_method"]["plain"] == {"overall": {"n": 100, "accuracy": 0.912, "loss": 0.3},
                                                    "fairness_violation": {"accuracy": 0.04, "loss": 0.0},
                                                    "accuracy_gap": 0.0}
    assert d["methods"]["plain"]["fairness_violation"]["accuracy"] == 0.01   # held-out figures as measured
    assert recommend(d) == "constrained_loss"                                # from the JSON: the selection rows
    assert recommend(d, tolerance=0.1) == "reweighted"                       # the criterion is re-applied there
    # the same result without selection rows would have chosen on the held-out rows: 'plain'
    bare = MitigationResult(**kw, runs=held)
    assert recommend(bare, on_reported_rows=True) == "plain"
    assert bare.to_dict()["mitigation"]["recommended"] == "plain" and "selection" not in bare.to_dict()["mitigation"]
    with pytest.raises(ValueError, match="no selection rows"):
        recommend(bare)


def test_measure_matches_a_pandas_groupby(setting):
    df, model = setting
    data = dataset(df).part("test")
    lm = LoadedModel.from_module(fresh(model), name="m")
    dense = evaluate(lm, data)
    mm = MaskedModel(lm.module)
    mm.apply(compute_masks(lm.module, "global_magnitude", 0.9))
    pruned = evaluate(lm, data)
    mm.restore()
    out = measure(dense, pruned, data.y.numpy(), data.group.astype(str), data.group_names)
    frame = pd.DataFrame({"g": data.group.astype(str), "d": dense.correct, "p": pruned.correct})
    drop = frame.groupby("g").d.mean() - frame.groupby("g").p.mean()
    assert out.groups["b"].accuracy_drop == pytest.approx(drop["b"])
    assert out.fairness_violation["accuracy"] == pytest.approx(drop.max() - drop.min())


# ---- CLI ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(setting, tmp_path_factory):
    df, model = setting
    d = tmp_path_factory.mktemp("mitigate")
    csv = d / "data.csv"
    df.to_csv(csv, index=False)
    weights = d / "mlp.safetensors"
    save_file(model.state_dict(), str(weights))
    return csv, weights


def cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def base_args(files):
    csv, weights = files
    return ["mitigate", "--model", weights, "--arch", "mlp", "--num-classes", "2", "--arch-arg", "in_features=5",
            "--arch-arg", "hidden=32,16", "--data", csv]


def check_outcome(o, groups):
    assert set(o) == OUTCOME_KEYS
    rates = {"tpr", "fpr", "selection_rate"}   # binary task: METRICS carries the rates
    assert set(o["overall"]) == {"n", "accuracy", "loss"} | rates
    assert set(o["groups"]) == groups
    for m in o["groups"].values():
        assert set(m) == {"n", "accuracy", "loss", "accuracy_drop"} | rates
    assert set(o["fairness_violation"]) == {"accuracy", "loss"}


def test_cli_writes_the_schema_and_the_saved_model_round_trips(files, tmp_path, capsys):
    out, saved = tmp_path / "m.json", tmp_path / "fair.pt2"
    code, stdout, err = cli(base_args(files) + ["--sparsity", "0.8", "--method", "constrained_loss", "--alpha", "0.05",
                                                "--epochs", "2", "--out", out, "--save-model", saved], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert set(doc) == {"mitigation"}
    d = doc["mitigation"]
    assert SECTION_KEYS <= set(d) and set(d) - SECTION_KEYS <= EXTRA_KEYS
    assert (d["method"], d["when"], d["sparsity"], d["alpha"], d["epochs"], d["seeds"]) == (
        "constrained_loss", "after", 0.8, 0.05, 2, [0])
    assert d["n_train"] == 800 and d["n_eval"] == 600 and d["single_seed"] is True   # 200 of 1000 select
    assert d["split"]["source"] == "split column" and d["lr"] == 1e-3 and d["batch_size"] == 128
    for o in [d["before"], d["after"], *d["baselines"].values(), *d["methods"].values()]:
        check_outcome(o, {"a", "b"})
    assert set(d["baselines"]) == {"plain", "reweighted"}
    assert set(d["methods"]) == {"constrained_loss", "plain", "reweighted"}
    assert len(d["multipliers"]) == 2 and all(set(e) == {"a", "b"} for e in d["multipliers"])
    sel = d["selection"]
    assert set(sel) == SELECTION_KEYS and sel["split"] == "stratified from the training rows"
    assert (sel["n_select"], sel["n_train"], sel["n_eval"], sel["fraction"], sel["seed"]) == (200, 800, 600, 0.2, 0)
    assert sum(sel["n_select_by_group"].values()) == 200 and set(sel["n_select_by_group"]) == {"a", "b"}
    assert set(sel["by_method"]) == set(d["methods"]) and d["recommended"] == sel["chosen"] == recommend(doc)
    for o in sel["by_method"].values():
        assert set(o) == {"overall", "fairness_violation", "accuracy_gap"} and o["overall"]["n"] == 200
    assert f"recommended: {d['recommended']}, chosen on 200 selection rows" in stdout
    assert "600 held-out rows that took no part in the choice" in stdout

    loaded = load_model(saved)
    assert loaded.kind == "pt2"
    weights = [p for p in loaded.module.parameters() if p.dim() >= 2]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.8, abs=1e-3)   # pruned weights exactly zero
    held = dataset(pd.read_csv(files[0])).part("test")
    assert float(evaluate(loaded, held).correct.mean()) == pytest.approx(d["after"]["overall"]["accuracy"])


def test_cli_seeds_give_std_keys(files, tmp_path, capsys):
    out = tmp_path / "m.json"
    code, _, err = cli(base_args(files) + ["--sparsity", "0.8", "--method", "constrained_accuracy_gap", "--epochs", "2",
                                           "--seeds", "2", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    d = json.loads(out.read_text())["mitigation"]
    assert d["seeds"] == [0, 1] and d["single_seed"] is False
    for o in [d["after"], *d["baselines"].values()]:
        assert o["overall"]["n"] == 600 and "n_std" not in o["overall"]
        assert {"accuracy_std", "loss_std"} <= set(o["overall"])
        assert {"accuracy_std", "loss_std"} <= set(o["fairness_violation"]) and "accuracy_gap_std" in o
        assert all({"accuracy_std", "accuracy_drop_std"} <= set(m) for m in o["groups"].values())
    assert len(d["multipliers_std"]) == len(d["multipliers"]) == 2


def test_cli_demo(tmp_path, capsys):
    out = tmp_path / "m.json"
    code, stdout, err = cli(["mitigate", "--demo", "adult", "--sparsity", "0.9", "--method", "protect_layers",
                             "--epochs", "1", "--out", out], capsys)
    assert code == 0, err
    d = json.loads(out.read_text())["mitigation"]
    assert "Asian-Pac-Islander" in d["after"]["groups"] and d["split"]["source"] == "split column"
    sel = d["selection"]
    assert d["n_train"] + sel["n_select"] == 30147 and d["n_eval"] == 15075 and d["protected_layers"] is not None
    assert sel["n_select"] == 6030 and sel["n_train"] == d["n_train"] and sel["n_eval"] == 15075
    assert set(sel["n_select_by_group"]) == set(d["after"]["groups"]) and sel["chosen"] == d["recommended"]
    assert set(sel["by_method"]) == {"protect_layers", "plain", "reweighted"}
    assert "protect_layers" in stdout and "chosen on 6030 selection rows" in stdout


@pytest.mark.parametrize("extra,fragments", [
    (["--sparsity", "0.8", "--method", "magic"], ["magic", "constrained_loss"]),
    (["--sparsity", "1.5"], ["--sparsity", "1.5"]),
    (["--method", "plain"], ["--sparsity is required"]),
    (["--sparsity", "0.8", "--epochs", "0"], ["--epochs", "0"]),
    (["--sparsity", "0.8", "--seeds", "0"], ["--seeds"]),
    (["--sparsity", "0.8", "--alpha", "-1"], ["--alpha", "-1"]),
    (["--sparsity", "0.8", "--method", "protect_layers", "--when", "before"], ["protect_layers", "--when after"]),
    (["--sparsity", "0.8", "--save-model", "model.txt"], ["--save-model", ".pt2"]),
    (["--sparsity", "0.8", "--when", "during"], ["--when", "during"]),
    (["--sparsity", "0.8", "--select-fraction", "0"], ["--select-fraction", "(0, 1)", "0.0"]),
])
def test_cli_bad_input_exits_2(files, tmp_path, capsys, extra, fragments):
    code, _, err = cli(base_args(files) + extra + ["--out", tmp_path / "m.json", "--quiet"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert not (tmp_path / "m.json").exists()


def test_bad_options_are_refused_before_any_work(setting):
    df, model = setting
    with pytest.raises(InputError, match=r"unknown mitigation option\(s\) \['dual_step'\]"):
        mitigate(model, dataset(df), sparsity=0.8, method="constrained_loss",
                 method_options={"constrained_loss": {"dual_step": 1.0}})
    with pytest.raises(InputError, match="does not try"):
        mitigate(model, dataset(df), sparsity=0.8, method="plain", method_options={"constrained_loss": {}})
    with pytest.raises(InputError, match="--dual-holdout"):
        mitigate(model, dataset(df), sparsity=0.8, method="constrained_loss", dual_holdout=1.0)
    with pytest.raises(InputError, match="unknown mitigation method 'nope'"):
        mitigate(model, dataset(df), sparsity=0.8, method="nope")


def test_audit_finetune_epochs_still_works(setting):
    from fairprune.engine.audit import audit

    df, model = setting
    res = audit(fresh(model), dataset(df), sparsities=[0.8], finetune_epochs=1)
    assert res.levels[0].achieved_sparsity == pytest.approx(0.8, abs=1e-3)


# ---- when, and the worker -----------------------------------------------------------------------------------
@pytest.mark.parametrize("when", ["before", "both"])
def test_when_before_and_both(setting, when):
    df, model = setting
    m = fresh(model)
    dense = {n: p.detach().clone() for n, p in m.named_parameters()}
    r = mitigate(m, dataset(df), sparsity=0.8, method="constrained_loss", when=when, epochs=1, baselines=("plain",))
    d = r.to_dict()["mitigation"]
    assert d["when"] == when and r.achieved_sparsity["constrained_loss"] == pytest.approx(0.8, abs=1e-3)
    assert len(d["multipliers"]) == (2 if when == "both" else 1)
    assert all(torch.equal(p, dense[n]) for n, p in m.named_parameters())   # the caller's model is left dense


def test_worker_runs_a_mitigate_spec(files, tmp_path):
    from fairprune.run.store import RunStore

    csv, weights = files
    store = RunStore(tmp_path / "home")
    spec = {"sparsity": 0.8, "method": "reweighted", "epochs": 1, "model": str(weights), "arch": "mlp",
            "num_classes": 2, "arch_args": {"in_features": 5, "hidden": [32, 16]}, "data": str(csv)}
    rid = store.create_run(spec, kind="mitigate")
    bad = store.create_run({"sparsity": 0.8, "bogus": 1}, kind="mitigate")
    jobs.execute(store, store.claim_next(os.getpid()))
    jobs.execute(store, store.claim_next(os.getpid()))
    run = store.get(rid)
    assert run.status == "done", run.error
    assert set(run.result) == {"mitigation"} and run.result["mitigation"]["method"] == "reweighted"
    assert store.get(bad).status == "failed" and "unknown key(s) ['bogus']" in store.get(bad).error
