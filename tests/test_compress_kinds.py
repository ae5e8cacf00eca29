"""Compression variants say what they quantize, per layer kind, and rows never affect each other (issue 15).

- int8_dynamic's activation scales belong to one sample (a convolution's input) or one token of one sample (a
  linear layer's input, attention projections included), whatever the layout: the logits of a batch of 64 equal
  those of one row at a time, and ``--batch-size`` does not move group losses.
- ``quantized_by_kind`` counts, per layer kind, the parameters actually quantized (checked against the weights'
  types and the converted program's int8 constants); an LSTM's weights are reported as not quantized, with why.
- Weight-normalised / weight-standardised convolutions in a .pt2: int8_dynamic folds the computed weight once and
  quantizes it (exit 0, stated), never exit 3.

Random-weight models, tens of rows: each test runs in seconds on a CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fairprune.core.result import VariantResult
from fairprune.engine.compress import apply_variant, per_sample_int8, per_token_int8
from fairprune.engine.evaluate import model_outputs
from fairprune.run.cli import main
from fairprune.zoo import LoadedModel, load_model, save_pt2

V, L = 40, 10


class TextEncoder(nn.Module):
    """Embedding + nn.TransformerEncoder; ``batch_first=False`` runs the encoder on (T, N, E)."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(V, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, ids):
        h = self.emb(ids)
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = self.enc(h)
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.head(h.mean(1))


def _vit():
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=64, num_classes=3)
    nn.init.normal_(vit.heads.head.weight)          # torchvision starts the head at zero: logits would all be 0
    return vit


class Mixed(nn.Module):
    """conv + linear + LSTM + attention: (N, 1, 8, 8) images read as 8 steps of 8 features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.proj = nn.Linear(16, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.conv(x.flatten(1, 2)).transpose(1, 2)        # (N, 8 steps, 16)
        h, _ = self.lstm(torch.relu(self.proj(h)))
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h.mean(1))


def _get(module, target):
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _seeded(factory):
    torch.manual_seed(0)
    return factory().eval()


def _loaded(module, example, pt2, tmp_path):
    if not pt2:
        return LoadedModel.from_module(module, name=type(module).__name__)
    path = tmp_path / "m.pt2"
    save_pt2(module, example, path)
    return load_model(path)


def _ids(n, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, V, (n, L)))


CASES = {"text_batch_first": (lambda: TextEncoder(True), lambda n: _ids(n)),
         "text_seq_first": (lambda: TextEncoder(False), lambda n: _ids(n)),
         "vit": (_vit, lambda n: torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)))}


# ---- 1. rows never affect each other -----------------------------------------------------------------------
def test_per_token_int8_scales_each_token_of_each_sample_alone():
    x = torch.tensor([[[1.0, -2.0], [0.5, 0.25]], [[100.0, 3.0], [-7.0, 1.0]]])   # (N=2, T=2, D=2)
    out = per_token_int8(x)
    for n in range(2):
        for t in range(2):
            v = x[n, t]
            s = v.abs().max() / 127
            assert torch.equal(out[n, t], torch.clamp(torch.round(v * (1 / s)), -127, 127) * s)
    assert torch.equal(per_token_int8(x)[0], per_token_int8(x[:1])[0])           # row 1's 100 never scales row 0


@pytest.mark.parametrize("fn", [per_token_int8, per_sample_int8])
def test_dynamic_int8_codes_do_not_move_with_a_floats_last_bit(fn):
    """Another batch size may sum in another order: inputs one float step apart must quantize alike. With
    s = max / 127.5 the largest value sits on a rounding tie (-127.5 -> -128 or -127): 531 of these 4,096 rows
    changed code (and CI's 2-thread kernels moved 38 of 64 rows of a text model by up to half the quantization
    error); with s = max / 127 none does."""
    x = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))
    up = torch.nextafter(x, torch.full_like(x, float("inf")))
    scale = x.abs().amax(1, keepdim=True) / 127
    codes, codes_up = torch.round(fn(x) / scale), torch.round(fn(up) / scale)
    assert int((codes != codes_up).any(1).sum()) == 0
    assert torch.equal(codes.abs().amax(1), torch.full((4096,), 127.0))           # the largest value is +-127


@pytest.mark.parametrize("pt2", [False, True], ids=["module", "pt2"])
@pytest.mark.parametrize("case", list(CASES))
def test_int8_dynamic_logits_of_a_batch_equal_row_at_a_time(case, pt2, tmp_path):
    factory, inputs = CASES[case]
    module, x = _seeded(factory), inputs(64)
    model = _loaded(module, x[:4], pt2, tmp_path)
    v = apply_variant(model, "int8_dynamic", example=x[:8])
    assert v.details["backend"] == "torchao.pt2e"           # attention projections quantized on both paths
    assert v.quantized_by_kind["attention"]["quantized"] == v.quantized_by_kind["attention"]["total"] > 0
    with torch.no_grad():
        batch = model_outputs(v.model, x)
        rows = torch.cat([model_outputs(v.model, x[i:i + 1]) for i in range(len(x))])
        dense = model_outputs(model, x)
    torch.testing.assert_close(batch, rows, atol=1e-5, rtol=0)
    # it is quantized, and close to the dense model
    assert 0 < float((batch - dense).abs().max()) < 0.1 * float(dense.abs().max())
    assert "per token" in v.details["activation_granularity"]


class PaddedText(nn.Module):
    """Token 0 is padding: masked out of attention (a float mask, so scaled-dot-product attention runs)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        h = self.emb(ids)
        h, _ = self.attn(h, h, h, key_padding_mask=ids == 0, need_weights=False)
        return self.head(h.mean(1))


@pytest.mark.parametrize("pt2", [False, True], ids=["module", "pt2"])
def test_int8_dynamic_a_rows_logits_do_not_depend_on_its_neighbours(pt2, tmp_path):
    ids = _ids(32, seed=4)
    ids[:, 7:] = 0
    model = _loaded(_seeded(PaddedText), ids[:4], pt2, tmp_path)
    v = apply_variant(model, "int8_dynamic", example=ids[:8])
    others = _ids(32, seed=5)
    others[:, 5:] = 0
    with torch.no_grad():
        base = model_outputs(v.model, ids)
        for keep in (0, 13, 31):                     # the same row among other neighbours, at the same batch size
            mixed = others.clone()
            mixed[keep] = ids[keep]
            assert torch.equal(model_outputs(v.model, mixed)[keep], base[keep])


@pytest.fixture
def token_npz(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "tokens.npz"
    n = 66
    np.savez(path, x=_ids(n, seed=3).numpy().astype(np.int32), y=rng.integers(0, 3, n),
             group=np.array(["a", "b", "c"] * (n // 3)))
    return path


def test_batch_size_does_not_move_group_losses_through_the_cli(token_npz, tmp_path, capsys):
    model = tmp_path / "text.pt2"
    save_pt2(_seeded(lambda: TextEncoder(False)), _ids(4), model)
    losses = []
    for bs in (7, 64):
        out = tmp_path / f"r{bs}.json"
        code = main(["audit", "--model", str(model), "--data", str(token_npz), "--compress", "int8_dynamic",
                     "--sparsity", "0.5", "--batch-size", str(bs), "--no-footprint", "--quiet", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        entry = json.loads(out.read_text())["compression"][0]
        assert entry["quantized_by_kind"]["attention"]["quantized"] == 2 * (96 * 32 + 32 * 32)
        losses.append({g: m["loss"] for g, m in entry["groups"].items()})
    assert losses[0].keys() == {"a", "b", "c"}
    for g in losses[0]:
        assert losses[0][g] == pytest.approx(losses[1][g], abs=1e-6, rel=0)


# ---- 2. quantized share per layer kind ---------------------------------------------------------------------
def _numel(module, pred):
    return sum(p.numel() for n, p in module.named_parameters() if pred(n))


@pytest.mark.parametrize("pt2", [False, True], ids=["module", "pt2"])
def test_quantized_by_kind_counts_what_the_program_quantized(pt2, tmp_path):
    module = _seeded(Mixed)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = _loaded(module, x[:4], pt2, tmp_path)
    v = apply_variant(model, "int8_dynamic", example=x[:8])
    k = v.quantized_by_kind
    conv, linear = 16 * 8 * 3, 16 * 16 + 16 * 3
    attention, recurrent = 48 * 16 + 16 * 16, 2 * 64 * 16
    assert k["conv"] == {"quantized": conv, "total": conv}
    assert k["linear"] == {"quantized": linear, "total": linear}
    assert k["attention"] == {"quantized": attention, "total": attention}
    assert k["recurrent"] == {"quantized": 0, "total": recurrent}            # torch's LSTM op is not quantized
    total = sum(p.numel() for p in module.parameters())
    assert sum(c["total"] for c in k.values()) == total
    assert k["other"]["total"] == total - conv - linear - attention - recurrent and k["other"]["quantized"] == 0
    # the converted program's int8 constants are exactly what the counts say
    gm = v.module
    stored = {n.target: gm.get_parameter(n.target) if n.target in dict(gm.named_parameters()) else
              _get(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    int8 = {n: t for n, t in stored.items() if isinstance(t, torch.Tensor) and t.dtype == torch.int8}
    assert sum(t.numel() for t in int8.values()) == conv + linear + attention
    lstm = [t for n, t in stored.items() if "lstm" in n and isinstance(t, torch.Tensor)]
    assert lstm and all(t.dtype == torch.float32 for t in lstm)
    assert sum(c["quantized"] for c in k.values()) / total == pytest.approx(v.quantized_fraction)
    nq = v.details["not_quantized"]
    assert list(nq) == ["recurrent"] and nq["recurrent"]["weights"] == recurrent
    assert "LSTM" in nq["recurrent"]["reason"] and all("lstm" in n for n in nq["recurrent"]["layers"])


def test_quantized_by_kind_on_torchaos_path_follows_the_weights_types():
    class LinearLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, 8)
            self.lstm = nn.LSTM(8, 16, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, ids):
            return self.head(self.lstm(self.emb(ids))[0][:, -1])

    module = _seeded(LinearLSTM)
    v = apply_variant(module, "int8_dynamic", example=_ids(8))
    assert v.details["backend"] == "torchao.quantize_"
    assert type(v.module.head.weight).__name__ == "Int8Tensor"
    assert type(v.module.lstm.weight_ih_l0) is nn.Parameter
    k = v.quantized_by_kind
    assert k["linear"] == {"quantized": 48, "total": 48}
    assert k["recurrent"] == {"quantized": 0, "total": 2 * 64 * 16 - 64 * 8}
    assert k["embedding"] == {"quantized": 0, "total": V * 8}
    fp16 = apply_variant(module, "fp16", example=_ids(8))            # a cast reaches every kind
    assert all(c["quantized"] == c["total"] for c in fp16.quantized_by_kind.values())
    assert "not_quantized" not in fp16.details


def test_audit_result_carries_quantized_by_kind_warns_and_old_json_still_loads(tmp_path, capsys):
    module = _seeded(Mixed)
    x = np.random.default_rng(0).normal(size=(30, 1, 8, 8)).astype(np.float32)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=np.arange(30) % 3, group=np.array(["a", "b"] * 15))
    model = tmp_path / "mixed.pt2"
    save_pt2(module, torch.from_numpy(x[:4]), model)
    out = tmp_path / "r.json"
    code = main(["audit", "--model", str(model), "--data", str(data), "--compress", "int8_dynamic", "fp16",
                 "--sparsity", "0.5", "--no-footprint", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    d = json.loads(out.read_text())
    int8, fp16 = d["compression"]
    assert int8["quantized_by_kind"]["recurrent"] == {"quantized": 0, "total": 2048}
    assert fp16["quantized_by_kind"]["recurrent"] == {"quantized": 2048, "total": 2048}
    assert [w for w in d["warnings"] if w.startswith("int8_dynamic: 2,048 of 2,048 recurrent weights were not "
                                                     "quantized")]
    assert VariantResult.from_dict(int8).quantized_by_kind == int8["quantized_by_kind"]
    old = {k: v for k, v in int8.items() if k != "quantized_by_kind"}
    assert VariantResult.from_dict(old).quantized_by_kind is None
    from fairprune.present.report import write_report
    html = write_report(out, tmp_path / "r.html").read_text()
    assert "recurrent quantized" in html and "0 of 2,048 (0%)" in html and "2,048 of 2,048 (100%)" in html


def test_a_decomposed_pt2s_addmm_layers_are_quantized_as_linear_layers(tmp_path):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(2))
    ep = torch.export.export(mlp, (x[:4],), dynamic_shapes=({0: torch.export.Dim("batch")},)).run_decompositions()
    assert torch.ops.aten.addmm.default in {n.target for n in ep.graph.nodes}      # no aten.linear left
    torch.export.save(ep, tmp_path / "dec.pt2")
    v = apply_variant(load_model(tmp_path / "dec.pt2"), "int8_dynamic", example=x[:8])
    assert v.quantized_by_kind["linear"] == {"quantized": 8 * 16 + 16 * 3, "total": 8 * 16 + 16 * 3}
    assert v.details["recomposed_linear"].startswith("2 matrix products")
    with torch.no_grad():
        got, dense = model_outputs(v.model, x), mlp(x)
        rows = torch.cat([model_outputs(v.model, x[i:i + 1]) for i in range(len(x))])
    assert 0 < float((got - dense).abs().max()) < 0.05 * float(dense.abs().max())
    torch.testing.assert_close(got, rows, atol=1e-5, rtol=0)


def test_an_attention_model_export_cannot_capture_falls_back_to_quantize_and_says_what_stayed_float():
    class Branchy(PaddedText):
        def forward(self, ids):
            h = self.emb(ids)
            if float(h.sum()) > -1e9:                # data-dependent Python control flow: torch.export refuses it
                h, _ = self.attn(h, h, h, need_weights=False)
            return self.head(h.mean(1))

    module = _seeded(Branchy)
    v = apply_variant(module, "int8_dynamic", example=_ids(8))
    assert v.details["backend"] == "torchao.quantize_"
    assert "torch.export could not capture" in v.details["backend_fallback"]
    assert v.quantized_by_kind["linear"] == {"quantized": 48, "total": 48}
    assert v.quantized_by_kind["attention"] == {"quantized": 0, "total": 48 * 16 + 16 * 16}
    assert v.details["not_quantized"]["attention"]["reason"] == v.details["backend_fallback"]
    assert type(v.module.attn.in_proj_weight) is nn.Parameter


# ---- 3. weight-normalised / weight-standardised convolutions -------------------------------------------------
class WSConv(nn.Conv2d):
    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def _normed(kind):
    torch.manual_seed(0)
    conv = WSConv(1, 8, 3, padding=1) if kind == "ws" else \
        nn.utils.parametrizations.weight_norm(nn.Conv2d(1, 8, 3, padding=1))
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    return nn.Sequential(conv, bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("kind", ["weight_norm", "ws"])
def test_normalised_conv_pt2_int8_dynamic_quantizes_the_computed_weight(kind, tmp_path, capsys):
    module = _normed(kind)
    x = np.random.default_rng(0).normal(size=(24, 1, 8, 8)).astype(np.float32)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=np.arange(24) % 3, group=np.array(["a", "b"] * 12))
    model = tmp_path / "normed.pt2"
    save_pt2(module, torch.from_numpy(x[:4]), model)
    v = apply_variant(load_model(model), "int8_dynamic", example=torch.from_numpy(x[:8]))
    with torch.no_grad():
        dense = module(torch.from_numpy(x))
        got = model_outputs(v.model, torch.from_numpy(x))
    assert 0 < float((got - dense).abs().max()) < 0.05 * float(dense.abs().max())
    assert v.quantized_by_kind["conv"]["quantized"] == 8 * 9 and v.details["computed_weights"]["layers"] == 1
    assert "computed from" in v.float_note
    out = tmp_path / "r.json"
    code = main(["audit", "--model", str(model), "--data", str(data), "--compress", "int8_dynamic",
                 "--sparsity", "0.5", "--no-footprint", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    entry = json.loads(out.read_text())["compression"][0]
    assert entry["quantized_by_kind"]["conv"]["quantized"] == 8 * 9
    assert "weight normalisation" in entry["computed_weights"]["note"]
