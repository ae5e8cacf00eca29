"""Models with several inputs: NPZ arrays x0, x1, ... (or named by --inputs) reach the model positionally, in order,
with their own dtypes (int64 ids, int64 masks, float32 features), through the library and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fairprune.core.errors import InputError
from fairprune.data import Inputs, load_dataset
from fairprune.run.cli import main

N, L = 240, 10


class IdsMaskFeatures(nn.Module):
    """Token ids (N, L) int64 + a padding mask (N, L) + float features (N, 3) -> 3 logits."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 8)
        self.fc = nn.Linear(8 + 3, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, ids, mask, feats):
        if ids.dtype != torch.int64 or mask.dtype != torch.int64 or feats.dtype != torch.float32:
            raise TypeError(f"expected int64, int64, float32; got {ids.dtype}, {mask.dtype}, {feats.dtype}")
        e = self.emb(ids) * mask.unsqueeze(-1).float()
        h = e.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return self.out(torch.relu(self.fc(torch.cat([h, feats], 1))))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tmp = tmp_path_factory.mktemp("multi")
    model = IdsMaskFeatures().eval()
    ids = rng.integers(1, 40, (N, L))
    mask = rng.random((N, L)) > 0.3
    mask[:, 0] = True
    feats = rng.standard_normal((N, 3)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.tensor(ids), torch.tensor(mask, dtype=torch.int64), torch.tensor(feats)).argmax(1).numpy()
    flip = rng.random(N) < 0.1
    y[flip] = rng.integers(0, 3, flip.sum())
    group = rng.choice(["a", "b"], N, p=[0.7, 0.3])
    np.savez(tmp / "numbered.npz", x0=ids, x1=mask.astype(np.int64), x2=feats, y=y, group=group)
    # named arrays, a bool mask, and a decoy array that is not an input
    np.savez(tmp / "named.npz", feats=feats, attention_mask=mask, input_ids=ids, other=np.zeros(N), y=y, group=group)
    np.savez(tmp / "both.npz", x=feats, x0=ids, y=y, group=group)
    batch = torch.export.Dim("batch", min=1)
    example = (torch.tensor(ids[:4]), torch.tensor(mask[:4], dtype=torch.int64), torch.tensor(feats[:4]))
    program = torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in example))
    torch.export.save(program, str(tmp / "model.pt2"))
    one = torch.export.export(nn.Linear(3, 3).eval(), (torch.zeros(2, 3),),
                              dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    torch.export.save(one, str(tmp / "one_input.pt2"))
    return tmp, model, (ids, mask, feats, y)


def test_numbered_arrays_are_the_inputs_in_order_with_their_dtypes(files):
    tmp, _, (ids, mask, feats, _) = files
    data = load_dataset(tmp / "numbered.npz")
    assert isinstance(data.x, Inputs)
    assert data.x.names == ("x0", "x1", "x2")
    assert data.x.dtypes == (torch.int64, torch.int64, torch.float32)
    assert data.n_inputs == 3 and data.n_features == 2 * L + 3
    x, _ = next(data.batches(7))
    assert torch.equal(x.tensors[0], torch.tensor(ids[:7])) and torch.equal(x.tensors[2], torch.tensor(feats[:7]))
    sub = data.subset(np.array([5, 2]))
    assert torch.equal(sub.x.tensors[0], torch.tensor(ids[[5, 2]]))


def test_inputs_option_names_arrays_and_orders_them(files):
    tmp, _, (ids, mask, feats, _) = files
    data = load_dataset(tmp / "named.npz", inputs=["input_ids", "attention_mask", "feats"])
    assert data.x.names == ("input_ids", "attention_mask", "feats")
    # a bool mask becomes int64 0/1 (a mask, not pixels)
    assert data.x.tensors[1].dtype == torch.int64
    assert torch.equal(data.x.tensors[1], torch.tensor(mask, dtype=torch.int64))
    assert "attention_mask (10,) int64" in data.describe_inputs()


@pytest.mark.parametrize("kwargs, needle", [
    ({"inputs": ["input_ids", "nope"]}, "--inputs names arrays 'nope'"),
    ({"inputs": ["input_ids"], "normalize": "0.5,0.5"}, "normalize applies to float features"),
])
def test_bad_inputs_options_say_what_was_found(files, kwargs, needle):
    tmp, _, _ = files
    with pytest.raises(InputError, match=needle.replace("(", r"\(")):
        load_dataset(tmp / "named.npz", **kwargs)


def test_x_beside_numbered_inputs_is_ambiguous(files):
    tmp, _, _ = files
    with pytest.raises(InputError, match=r"found both 'x' and x0.*--inputs"):
        load_dataset(tmp / "both.npz")
    data = load_dataset(tmp / "both.npz", inputs=["x0", "x"])
    assert data.x.names == ("x0", "x")


def test_several_inputs_refuse_normalisation(files):
    tmp, _, _ = files
    with pytest.raises(InputError, match="several inputs"):
        load_dataset(tmp / "numbered.npz", normalize="0.5,0.5")


def test_inputs_option_only_for_npz(files, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,label,group\n1,0,g\n")
    with pytest.raises(InputError, match=r"inputs \(--inputs\) names arrays of an .npz"):
        load_dataset(csv, inputs=["a"])


def test_cli_audit_of_a_three_input_program(files, tmp_path, capsys):
    tmp, model, (ids, mask, feats, y) = files
    out = tmp_path / "r.json"
    rc = main(["audit", "--model", str(tmp / "model.pt2"), "--data", str(tmp / "named.npz"),
               "--inputs", "input_ids", "attention_mask", "feats", "--sparsity", "0.5", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    with torch.no_grad():
        pred = model(torch.tensor(ids), torch.tensor(mask, dtype=torch.int64), torch.tensor(feats)).argmax(1).numpy()
    assert r["dense"]["overall"]["accuracy"] == pytest.approx(float((pred == y).mean()), abs=1e-9)
    steps = r["provenance"]["preprocessing"]
    assert any("input_ids (10,) int64, attention_mask (10,) int64, feats (3,) float32" in s for s in steps)
    assert r["provenance"]["n_features"] == 2 * L + 3
    # batch size does not change a single figure (rows never affect each other)
    out7 = tmp_path / "r7.json"
    assert main(["audit", "--model", str(tmp / "model.pt2"), "--data", str(tmp / "numbered.npz"), "--sparsity", "0.5",
                 "--batch-size", "7", "--out", str(out7), "--quiet"]) == 0
    r7 = json.loads(out7.read_text())
    assert r7["levels"][0]["groups"] == r["levels"][0]["groups"]


def test_wrong_number_of_inputs_is_a_clear_input_error(files, tmp_path, capsys):
    tmp, _, _ = files
    rc = main(["audit", "--model", str(tmp / "one_input.pt2"), "--data", str(tmp / "numbered.npz"),
               "--sparsity", "0.5", "--out", str(tmp_path / "r.json"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "its 3 inputs, passed positionally in this order, are x0 (10,) int64" in err
    assert "store as many arrays as the model's forward() takes" in err


def test_export_and_reload_a_three_input_model(files, tmp_path, capsys):
    tmp, _, _ = files
    out = tmp_path / "small.pt2"
    rc = main(["export", "--model", str(tmp / "model.pt2"), "--data", str(tmp / "numbered.npz"),
               "--sparsity", "0.5", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    from fairprune.zoo import load_model

    reloaded = load_model(out)
    data = load_dataset(tmp / "numbered.npz")
    x, _ = next(data.batches(5))
    assert reloaded.module(*x.tensors).shape == (5, 3)


def test_diagnose_on_a_three_input_program(files, tmp_path, capsys):
    tmp, _, _ = files
    out = tmp_path / "s.csv"
    rc = main(["diagnose", "--model", str(tmp / "model.pt2"), "--data", str(tmp / "numbered.npz"), "--sparsity", "0.5",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    import pandas as pd

    table = pd.read_csv(out)
    assert len(table) == N and (table["grad_norm"] > 0).all() and table["margin"].between(-1, 1).all()
    assert "not computed" not in err
    # the boundary distance needs one continuous input: refused with the reason, nothing written
    rc = main(["diagnose", "--model", str(tmp / "model.pt2"), "--data", str(tmp / "numbered.npz"), "--boundary",
               "--out", str(tmp_path / "b.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "this model takes 3 inputs (x0 (10,) int64" in err
    assert not (tmp_path / "b.csv").exists()
