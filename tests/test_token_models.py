"""Token-id models (nn.Embedding + GRU/LSTM, a small TransformerEncoder), one definition of "prunable" for an
nn.Module and a .pt2 program, and .pt2 names as torch writes them (issue 15).

Random-weight models, tens of rows: each test runs in seconds on a CPU.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from fairprune import load_dataset
from fairprune.core.errors import InputError
from fairprune.engine.audit import audit
from fairprune.engine.prune import PRUNABLE_DEFINITION, compute_masks, prunable_by_kind, prunable_parameters
from fairprune.run.cli import main
from fairprune.zoo import load_model, save_pt2

V, L, N = 50, 12, 60


class RNNText(nn.Module):
    def __init__(self, cell=nn.LSTM):
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.rnn = cell(16, 24, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, ids):
        out, _ = self.rnn(self.emb(ids))
        return self.head(out[:, -1])


class TransformerText(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)).mean(1))


MODELS = {"lstm": lambda: RNNText(nn.LSTM), "gru": lambda: RNNText(nn.GRU), "transformer": TransformerText}
# prunable weights by kind, counted by hand: LSTM 4·24 gates × (16 + 24), GRU 3·24 × (16 + 24), head 24·3 / 16·3;
# the transformer: per layer in_proj 48·16 + out_proj 16·16 (attention), linear1 32·16 + linear2 16·32
EXPECTED = {
    "lstm": {"linear": 72, "conv": 0, "attention": 0, "recurrent": 3840, "embedding": 0},
    "gru": {"linear": 72, "conv": 0, "attention": 0, "recurrent": 2880, "embedding": 0},
    "transformer": {"linear": 2 * 1024 + 48, "conv": 0, "attention": 2 * 1024, "recurrent": 0, "embedding": 0},
}


def _ids(seed=0, n=N):
    return np.random.default_rng(seed).integers(0, V, (n, L))


@pytest.fixture
def token_npz(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "tokens.npz"
    np.savez(path, x=_ids().astype(np.int32), y=rng.integers(0, 3, N), group=np.array(["a", "b", "c"] * (N // 3)))
    return path


def _model(name):
    torch.manual_seed(0)
    return MODELS[name]().eval()


def _accuracy(module, path):
    with np.load(path) as f:
        x, y = torch.from_numpy(f["x"].astype(np.int64)), f["y"]
    with torch.no_grad():
        return float((module(x).argmax(1).numpy() == y).mean())


# ---- 1. NPZ arrays keep their dtype -----------------------------------------------------------------------
def test_npz_integer_x_reaches_the_model_as_int64_ids(token_npz, tmp_path):
    data = load_dataset(token_npz)
    assert data.x.dtype == torch.int64 and data.integer_inputs
    assert data.x.tolist() == _ids().tolist()
    xb, _ = data.rows(0, 4)
    assert xb.dtype == torch.int64 and xb.tolist() == _ids()[:4].tolist()    # unscaled, unchanged
    floats, images = tmp_path / "f.npz", tmp_path / "u8.npz"
    np.savez(floats, x=np.full((3, 2), 0.5, np.float64), y=[0, 1, 0], group=["a", "b", "a"])
    np.savez(images, x=np.full((3, 1, 2, 2), 255, np.uint8), y=[0, 1, 0], group=["a", "b", "a"])
    f, u = load_dataset(floats), load_dataset(images)
    assert f.x.dtype == torch.float32 and not f.integer_inputs and f.rows(0, 3)[0].tolist() == [[0.5, 0.5]] * 3
    assert u.x.dtype == torch.uint8 and u.rows(0, 1)[0].dtype == torch.float32
    assert u.rows(0, 1)[0].flatten().tolist() == [1.0] * 4                  # images still scaled by 1/255


def test_integer_ids_refuse_normalize_and_values_beyond_int64(token_npz, tmp_path):
    with pytest.raises(InputError, match=r"tokens.npz: normalize applies to float features.*int32.*store x as float32"):
        load_dataset(token_npz, normalize="imagenet")
    big = tmp_path / "big.npz"
    np.savez(big, x=np.array([[1], [2 ** 63 + 5]], np.uint64), y=[0, 1], group=["a", "b"])
    with pytest.raises(InputError, match=r"big.npz: expected array 'x' to hold integers that fit in int64.*index 1"):
        load_dataset(big)


def test_a_model_on_the_wrong_kind_of_input_is_told_which_dtype_to_store(token_npz, tmp_path):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(L, 3))
    with pytest.raises(InputError, match=r"integers, which reach the model as int64 ids.*store.* float32"):
        audit(mlp, load_dataset(token_npz), sparsities=[0.5], measure_footprint=False)
    wrong_length = nn.Sequential(nn.Embedding(V, 4), nn.Flatten(), nn.Linear(10 * 4, 3))   # ids, but L = 10
    with pytest.raises(InputError, match=r"shapes cannot be multiplied") as err:
        audit(wrong_length, load_dataset(token_npz), sparsities=[0.5], measure_footprint=False)
    assert "float32" not in str(err.value)                  # a shape error is not blamed on the dtype
    floats = tmp_path / "float_ids.npz"
    with np.load(token_npz) as f:
        np.savez(floats, x=f["x"].astype(np.float32), y=f["y"], group=f["group"])
    with pytest.raises(InputError, match=r"reach the model as float32: a model that takes token ids needs x stored "
                                         r"as integers"):
        audit(_model("lstm"), load_dataset(floats), sparsities=[0.5], measure_footprint=False)


@pytest.mark.parametrize("name", list(MODELS))
def test_token_models_audit_end_to_end_through_the_cli_as_pt2(name, token_npz, tmp_path, capsys):
    module = _model(name)
    model = tmp_path / f"{name}.pt2"
    save_pt2(module, torch.from_numpy(_ids(2, 4)), model)
    out = tmp_path / "r.json"
    code = main(["audit", "--model", str(model), "--data", str(token_npz), "--sparsity", "0.5", "0.9",
                 "--no-footprint", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    d = json.loads(out.read_text())
    assert d["dense"]["overall"]["accuracy"] == pytest.approx(_accuracy(module, token_npz))
    assert d["model"]["prunable_by_kind"] == EXPECTED[name]
    assert d["model"]["prunable_parameters"] == sum(EXPECTED[name].values())
    assert d["model"]["prunable_definition"] == PRUNABLE_DEFINITION
    assert [lv["achieved_sparsity"] for lv in d["levels"]] == [pytest.approx(0.5, abs=1e-3), pytest.approx(0.9, abs=1e-3)]


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_token_models_audit_through_the_library_as_nn_module(name, token_npz):
    module = _model(name)
    res = audit(module, load_dataset(token_npz), sparsities=[0.5], measure_footprint=False)
    assert res.dense.overall.accuracy == pytest.approx(_accuracy(module, token_npz))
    assert res.model.prunable_by_kind == EXPECTED[name]
    assert res.levels[0].achieved_sparsity == pytest.approx(0.5, abs=1e-3)


def test_diagnose_on_token_ids_and_boundary_refused_with_the_reason(token_npz, tmp_path, capsys):
    model = tmp_path / "gru.pt2"
    save_pt2(_model("gru"), torch.from_numpy(_ids(2, 4)), model)
    csv = tmp_path / "d.csv"
    code = main(["diagnose", "--model", str(model), "--data", str(token_npz), "--sparsity", "0.5", "--out", str(csv),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == N and np.isfinite(table["grad_norm"]).all() and (table["grad_norm"] > 0).all()
    capsys.readouterr()
    code = main(["diagnose", "--model", str(model), "--data", str(token_npz), "--boundary", "4", "--out", str(csv)])
    err = capsys.readouterr().err
    assert code == 2 and "tokens.npz" in err and "integer ids (int64" in err and "run without --boundary" in err


# ---- 2. one definition of prunable -------------------------------------------------------------------------
def _vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=3).eval()


@pytest.mark.parametrize("make, example", [
    (lambda: _model("lstm"), lambda: torch.from_numpy(_ids(3, 4))),
    (_vit, lambda: torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))),
])
def test_nn_module_and_pt2_prune_the_same_weights_with_the_same_masks(make, example, tmp_path):
    module = make()
    path = tmp_path / "m.pt2"
    save_pt2(module, example(), path)
    program = load_model(path).module
    ours = list(prunable_parameters(module))
    theirs = [n.removeprefix("program.") for n in prunable_parameters(program)]
    assert ours == theirs and prunable_by_kind(module) == prunable_by_kind(program)
    kinds = prunable_by_kind(module)
    assert (kinds["recurrent"] > 0) if "rnn.weight_ih_l0" in ours else (kinds["attention"] > 0 and kinds["conv"] > 0)
    assert not any(n.endswith(("bias", "pos_embedding", "class_token")) or ".ln" in n for n in ours)
    a = compute_masks(module, "global_magnitude", 0.7)
    b = {n.removeprefix("program."): m for n, m in compute_masks(program, "global_magnitude", 0.7).items()}
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_embedding_tables_are_prunable_only_when_asked():
    module = _model("lstm")
    assert "emb.weight" not in prunable_parameters(module)
    assert list(prunable_parameters(module, embeddings=True))[0] == "emb.weight"
    assert prunable_by_kind(module, embeddings=True)["embedding"] == V * 16


def test_prune_embeddings_through_the_cli_and_the_library(token_npz, tmp_path, capsys):
    module = _model("lstm")
    model = tmp_path / "lstm.pt2"
    save_pt2(module, torch.from_numpy(_ids(2, 4)), model)
    out = tmp_path / "r.json"
    code = main(["audit", "--model", str(model), "--data", str(token_npz), "--sparsity", "0.9", "--prune-embeddings",
                 "--no-footprint", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    d = json.loads(out.read_text())
    assert d["model"]["prunable_by_kind"] == {**EXPECTED["lstm"], "embedding": V * 16}
    assert d["model"]["prunable_parameters"] == 3840 + 72 + V * 16
    assert d["model"]["prunable_definition"].endswith("nn.Embedding tables are pruned too (prune_embeddings / "
                                                      "--prune-embeddings)")
    # one global threshold over all of them: the table is pruned too, so the distance moved includes it
    res = audit(module, load_dataset(token_npz), sparsities=[0.9], measure_footprint=False, prune_embeddings=True)
    plain = audit(module, load_dataset(token_npz), sparsities=[0.9], measure_footprint=False)
    assert res.model.prunable_by_kind["embedding"] == V * 16 and plain.model.prunable_by_kind["embedding"] == 0
    assert res.levels[0].weight_distance == pytest.approx(d["levels"][0]["weight_distance"], rel=1e-6)
    assert res.levels[0].weight_distance != pytest.approx(plain.levels[0].weight_distance, rel=1e-3)
    assert plain.model.prunable_definition == PRUNABLE_DEFINITION and "are kept (prune_embeddings" in PRUNABLE_DEFINITION
    assert (module.emb.weight != 0).all()                       # the dense weights are restored after the audit


# ---- 3. .pt2 names as torch writes them ---------------------------------------------------------------------
def test_a_stock_torchvision_regnet_export_loads(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.regnet_x_400mf(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "regnet.pt2"
    save_pt2(net, x, path)
    loaded = load_model(path)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), net(x), atol=1e-5)
    assert "program.trunk_output.block1.block1-0.proj.0.weight" in prunable_parameters(loaded.module)


def _rename_weight(src, dst, old, new):
    """Copy a .pt2 archive with the weight FQN ``old`` renamed ``new`` in its weights config."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("_weights_config.json"):
                doc = json.loads(data)
                doc["config"][new] = doc["config"].pop(old)
                data = json.dumps(doc).encode()
            zout.writestr(info, data)


@pytest.mark.parametrize("bad", ['0.we"); import os; ("ight', "0.we\\ight", "0.we\night", "0..weight"])
def test_names_that_could_end_a_generated_string_literal_are_still_refused(bad, tmp_path):
    net = nn.Sequential(nn.Linear(4, 3)).eval()
    good = tmp_path / "good.pt2"
    save_pt2(net, torch.randn(2, 4), good)
    _rename_weight(good, tmp_path / "ok.pt2", "0.weight", "block1-0.weight")   # torch's own kind of name: passes
    from fairprune.zoo._pt2_guard import check_pt2_archive

    check_pt2_archive((tmp_path / "ok.pt2").read_bytes(), name="ok.pt2")
    _rename_weight(good, tmp_path / "evil.pt2", "0.weight", bad)
    with pytest.raises(InputError, match=r"evil.pt2: refused to load: .*malformed entry"):
        load_model(tmp_path / "evil.pt2")
