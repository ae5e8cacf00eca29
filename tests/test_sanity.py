"""Odd inputs end well, and the sanity warnings an auditor needs (fairprune.engine.sanity).

Every small input, through the CLI, ends in a result or in one ``error:`` line (exit 2), never exit 3:
one row, two rows, one row per group, one group, one class. The result's ``warnings`` say when labels
are a single class, when a model (dense, a level or a variant) is at or below chance (the majority-class
rate), and when a group of a binary task has no positives or no negatives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from conftest import train_mlp
from fairprune.run.cli import main
from fairprune.engine.metrics import _binary_rates
from fairprune.core.result import Metrics
from fairprune.engine.sanity import sanity_warnings

REPO = Path(__file__).resolve().parent.parent
ARCH = ["--arch", "mlp", "--num-classes", "2", "--arch-arg", "in_features=2", "--arch-arg", "hidden=32,16"]


def _table(n=300, seed=0) -> pd.DataFrame:
    """Two features, label = f0 > 0.3 (about 38% positives), groups a/b at random."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    df = pd.DataFrame(x, columns=["f0", "f1"])
    df["label"] = (x[:, 0] > 0.3).astype(int)
    df["group"] = np.where(rng.random(n) < 0.5, "a", "b")
    return df


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """(folder, DataFrame, trained binary MLP, its safetensors path)."""
    d = tmp_path_factory.mktemp("binary")
    df = _table()
    model = train_mlp(df, num_classes=2, epochs=40)
    weights = d / "mlp.safetensors"
    save_file(model.state_dict(), str(weights))
    return d, df, model, weights


def _audit(tmp_path, capsys, weights, df, *extra):
    data = tmp_path / "tiny.csv"
    df.to_csv(data, index=False)
    out = tmp_path / "r.json"
    code = main([str(a) for a in ["audit", "--model", weights, *ARCH, "--data", data, "--out", out, "--quiet",
                                  "--no-footprint", *extra]])
    _, err = capsys.readouterr()
    return code, err, (json.loads(out.read_text()) if code == 0 else None)


# ---- the binary rates, for any number of rows ------------------------------------------------------
def test_binary_rates_of_one_row_and_by_hand():
    assert _binary_rates(np.array([1]), np.array([1]), np.array(["a"])) == {
        "__overall__": (1.0, None, 1.0), "a": (1.0, None, 1.0)}
    y = np.array([1, 1, 0, 0, 0, 1])
    pred = np.array([1, 0, 1, 0, 0, 1])
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    assert _binary_rates(y, pred, groups) == {
        "__overall__": (2 / 3, 1 / 3, 1 / 2),          # tp 2 of 3 positives, fp 1 of 3 negatives, 3 of 6 said 1
        "a": (1 / 2, 1.0, 2 / 3),
        "b": (1.0, 0.0, 1 / 3),
    }


# ---- small inputs through the CLI ------------------------------------------------------------------
def _small_cases(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    pos, neg = df[df.label == 1], df[df.label == 0]
    return {
        "one_row": pos.head(1),
        "two_rows_both_classes": pd.concat([pos.head(1), neg.head(1)]),
        "one_row_per_group": pd.concat([pos[pos.group == "a"].head(1), neg[neg.group == "b"].head(1)]),
        "one_group": df.head(40).assign(group="a"),
        "one_class": neg.head(40),
    }


@pytest.mark.parametrize("case, warned", [
    ("one_row", ["labels: the one evaluated row is class 1"]),
    ("two_rows_both_classes", None),                       # checked below: group warnings depend on the rows
    ("one_row_per_group", ["group 'a' (1 row) has no negative labels (every label is 1): its false positive rate",
                           "group 'b' (1 row) has no positive labels (every label is 0): its true positive rate"]),
    ("one_group", []),
    ("one_class", ["labels: all 40 evaluated rows are class 0"]),
])
def test_small_inputs_end_in_a_result(binary, tmp_path, capsys, case, warned):
    _, df, _, weights = binary
    small = _small_cases(df)[case]
    code, err, r = _audit(tmp_path, capsys, weights, small, "--sparsity", "0.3")
    assert code == 0, err
    assert r["data"]["n"] == len(small)
    assert sum(r["data"]["groups"].values()) == len(small)
    assert [lv["sparsity"] for lv in r["levels"]] == [0.3]
    warnings = r.get("warnings", [])
    if warned is None:                                 # one group-level warning per missing class per group
        warned = [f"group {g!r} ({len(rows)} row{'s' * (len(rows) != 1)}) has no {word} labels"
                  for g, rows in small.groupby("group") for value, word in ((1, "positive"), (0, "negative"))
                  if not (rows.label == value).any()]
        assert warned, "two rows of different classes leave at least one group without one class"
    for fragment in warned:
        assert any(w.startswith(fragment) for w in warnings), (fragment, warnings)
    chance = [w for w in warnings if "chance" in w]
    sanity = [w for w in warnings if w.startswith(("labels:", "group ")) or w in chance]
    assert len(sanity) == len(warned) + len(chance), warnings
    for w in warnings:                                 # printed too, one 'warning:' line each
        assert f"warning: {w}" in err


def test_an_empty_table_is_one_error_line(binary, tmp_path, capsys):
    _, df, _, weights = binary
    code, err, _ = _audit(tmp_path, capsys, weights, df.head(0), "--sparsity", "0.3")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "at least one data row" in lines[0]


def test_one_row_through_the_installed_command(binary, tmp_path):
    """The reported failure, as reported: a one-row CSV with a binary model ended in exit 3."""
    d, df, _, weights = binary
    data = tmp_path / "one.csv"
    df.head(1).to_csv(data, index=False)
    out = tmp_path / "r.json"
    cmd = [str(REPO / ".venv" / "bin" / "fairprune"), "audit", "--model", str(weights), *ARCH, "--data", str(data),
           "--sparsity", "0.5", "--out", str(out), "--quiet"]
    if not Path(cmd[0]).exists():
        cmd[0:1] = [sys.executable, "-m", "fairprune.run.cli"]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert run.returncode == 0, run.stderr
    r = json.loads(out.read_text())
    assert r["data"]["n"] == 1 and r["dense"]["overall"]["n"] == 1
    assert r["levels"][0]["groups"][df.group.iloc[0]]["n"] == 1


# ---- a model at or below chance --------------------------------------------------------------------
def _constant_at_high_sparsity(model: torch.nn.Module, *, bias: tuple[float, float]) -> dict:
    """The model with its output layer scaled down: pruning removes that layer first (smallest weights),
    leaving the output bias alone, so a pruned model always answers the class ``bias`` favours."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    last = max(k for k in state if k.startswith("net.") and k.endswith(".weight"))
    state[last] *= 1e-3
    state[last.replace("weight", "bias")] = torch.tensor(bias)
    return state


def test_a_collapsed_pruned_model_is_warned_about(binary, tmp_path, capsys):
    _, df, model, _ = binary
    weights = tmp_path / "fragile.safetensors"
    save_file(_constant_at_high_sparsity(model, bias=(0.0, 1e-5)), str(weights))
    code, err, r = _audit(tmp_path, capsys, weights, df, "--sparsity", "0.01", "0.6")
    assert code == 0, err
    majority = (df.label == 0).mean()                  # class 0 is the majority (about 62%)
    assert 0.55 < majority < 0.75
    dense_acc = r["dense"]["overall"]["accuracy"]
    collapsed = r["levels"][1]["overall"]["accuracy"]
    assert dense_acc > 0.9 and r["levels"][0]["overall"]["accuracy"] > majority
    assert collapsed == pytest.approx(1 - majority)    # always class 1
    [w] = [w for w in r["warnings"] if "chance" in w]
    assert w.startswith(f"at or below chance, the majority-class rate ({100 * majority:.1f}%: always answering "
                        f"class 0): 60% sparsity {100 * collapsed:.1f}%; this model has collapsed")
    assert "1% sparsity" not in w
    assert f"warning: {w}" in err


def test_a_dense_model_at_chance_is_warned_about(binary, tmp_path, capsys):
    _, df, model, _ = binary
    weights = tmp_path / "constant.safetensors"
    save_file(_constant_at_high_sparsity(model, bias=(0.0, 50.0)), str(weights))   # always class 1
    code, err, r = _audit(tmp_path, capsys, weights, df, "--sparsity", "0.5")
    assert code == 0, err
    acc = r["dense"]["overall"]["accuracy"]
    assert acc == pytest.approx((df.label == 1).mean())
    dense = [w for w in r["warnings"] if w.startswith("the dense model's accuracy")]
    assert dense == [f"the dense model's accuracy ({100 * acc:.1f}%) is at or below chance, the majority-class rate "
                     f"({100 * (1 - acc):.1f}%: always answering class 0): it does not do the task on these rows, "
                     f"so its group gaps and every drop measured from it say little about who pays for pruning"]


# ---- the function ----------------------------------------------------------------------------------
def _m(accuracy: float, n: int = 10) -> Metrics:
    return Metrics(n=n, accuracy=accuracy, loss=0.5)


def test_sanity_warnings_by_hand():
    y = np.array([0, 0, 0, 1, 0, 0, 1, 0])               # 6 of 8 are class 0: chance 75%
    groups = np.array(["a", "a", "a", "a", "b", "b", "b", "c"])
    out = sanity_warnings(y, groups, ["a", "b", "c"], 2, _m(0.875, 8),
                          [("50% sparsity", _m(0.8)), ("90% sparsity", _m(0.75)), ("int8_dynamic", _m(0.5))])
    assert out == [
        "at or below chance, the majority-class rate (75.0%: always answering class 0): 90% sparsity 75.0%, "
        "int8_dynamic 50.0%; these models have collapsed, so their group drops (and any drop that differs beyond "
        "chance) describe a broken model, not who pays for pruning",
        "group 'c' (1 row) has no positive labels (every label is 0): its true positive rate is undefined (null in "
        "the result) and rate gaps leave it out",
    ]


def test_sanity_warnings_multiclass_and_clean_cases():
    y = np.array([0, 1, 2, 2, 1, 0])
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    assert sanity_warnings(y, groups, ["a", "b"], 3, _m(0.9), [("50% sparsity", _m(0.5))]) == []
    # three classes, chance = 2/6 (the most frequent share), not 1/3 by decree: here they agree
    [w] = sanity_warnings(y, groups, ["a", "b"], 3, _m(1 / 3))
    assert w.startswith("the dense model's accuracy (33.3%) is at or below chance, the majority-class rate (33.3%")
    # a group without class 1 in a 3-class task is not a binary-rate problem
    assert sanity_warnings(np.array([0, 2, 1]), np.array(["a", "a", "b"]), ["a", "b"], 3, _m(1.0)) == []
    # one class: one warning, no per-group or chance warnings on top
    assert sanity_warnings(np.array([1, 1]), np.array(["a", "b"]), ["a", "b"], 1, _m(1.0), [("x", _m(0.0))]) == [
        "labels: all 2 evaluated rows are class 1: a model that always answers 1 scores 100%, accuracy cannot tell "
        "a model that learned the task from one that did not, and per-class rates (true/false positive rate) are "
        "undefined; evaluate on rows of more than one class"]
