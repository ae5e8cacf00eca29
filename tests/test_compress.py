"""Compression beyond pruning (issue 8): quantization and 2:4 sparsity, measured like pruning levels.

Each variant's outputs are checked against a plain torch reference of the same quantization written
here by hand (int8 symmetric per channel, s = max|w| / 127.5, q = clamp(round(w * (1 / s)), -128, 127); the PT2E path's
dynamic activations per sample with s = max|x| / 127, -127..127),
group metrics against a pandas groupby, sizes against the dense model's, refusals by their messages.
"""

import copy
import dataclasses
import json
import html
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fairprune.engine.audit import audit, run_spec, AuditSpec
from fairprune.run.cli import main
from fairprune.engine.compress import (INT4_CPU, VariantResult, apply_variant, list_compressions, parse_variant,
                                parse_variants)
from fairprune.data import GroupedDataset
from fairprune.core.errors import InputError
from fairprune.engine.evaluate import evaluate
from fairprune.engine.footprint import without_timings
from fairprune.engine.prune import compute_masks, follows_2_4, nm_mask, pack_2_4, unpack_2_4
from fairprune.present.reading import headline, text_table
from fairprune.core.result import AuditResult
from fairprune.zoo import LoadedModel

from conftest import make_table, train_mlp

EPS = torch.finfo(torch.float32).eps


# ---- plain references ---------------------------------------------------------------------------------------
def q8(t, dim_keep=0):
    """Symmetric int8 quantize-dequantize with one scale per slice along ``dim_keep`` (rows / samples)."""
    flat = t.reshape(t.shape[0], -1) if dim_keep == 0 else t
    s = torch.clamp(flat.abs().amax(1, keepdim=True) / 127.5, min=EPS)
    q = torch.clamp(torch.round(flat * (1.0 / s)), -128, 127)
    return (q * s).reshape(t.shape)


def q8_act(t):
    """The PT2E path's dynamic activations: one scale per sample, restricted range (s = max / 127, -127..127)."""
    flat = t.reshape(t.shape[0], -1)
    s = torch.clamp(flat.abs().amax(1, keepdim=True) / 127, min=EPS)
    return (torch.clamp(torch.round(flat * (1.0 / s)), -127, 127) * s).reshape(t.shape)


def q8_tensor(t, amax):
    """Symmetric int8 quantize-dequantize with one scale for the whole tensor from ``amax``."""
    s = max(amax / 127.5, EPS)
    return torch.clamp(torch.round(t * (1.0 / s)), -128, 127) * s


def mlp_reference(model, x, *, weights="int8", acts=None, amax=None, masks=None):
    """Forward of an nn.Sequential of Linear/ReLU with quantized weights (and activations) by hand."""
    h = x
    li = 0
    for mod in model:
        if isinstance(mod, nn.Linear):
            w = mod.weight.detach()
            if masks is not None:
                w = w * masks[li]
            w = q8(w) if weights == "int8" else w
            inp = h
            if acts == "dynamic":
                inp = q8(h)
            elif acts == "static":
                inp = q8_tensor(h, amax[li])
            h = inp @ w.T + mod.bias.detach()
            li += 1
        else:
            h = mod(h)
    return h


def small_mlp(seed=0, widths=(8, 16, 3)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


class ConvNet(nn.Module):
    """Conv (no BatchNorm, so the reference needs no folding) then a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def conv_reference(model, x, *, acts=None, amax=None):
    w1, w2 = q8(model.conv.weight.detach()), q8(model.fc.weight.detach())
    a = x if acts is None else (q8_act(x) if acts == "dynamic" else q8_tensor(x, amax[0]))
    h = torch.relu(nn.functional.conv2d(a, w1, model.conv.bias.detach())).flatten(1)
    h = h if acts is None else (q8_act(h) if acts == "dynamic" else q8_tensor(h, amax[1]))
    return h @ w2.T + model.fc.bias.detach()


def _dataset(df, split=None):
    feats = [c for c in df.columns if c.startswith("f")]
    return GroupedDataset(x=torch.tensor(df[feats].to_numpy(np.float32)), y=torch.tensor(df["label"].to_numpy()),
                          group=df["group"].to_numpy().astype(object), name="table", sha256="0" * 64,
                          feature_names=tuple(feats), split=split)


def _run(model, spec, x, calibration=None):
    v = apply_variant(model, spec, example=x[:8], calibration=calibration, device="cpu")
    with torch.no_grad():
        return v, v.model.module(x)


# ---- registry and parsing -----------------------------------------------------------------------------------
def test_registry_names_and_parsing():
    names = [m.name for m in list_compressions()]
    assert names == ["int8_weight", "int8_dynamic", "int8_static", "int4_weight", "fp16", "bf16", "nm_2_4"]
    assert all(m.description for m in list_compressions())
    assert parse_variant("nm_2_4 + int8_static:balanced,rows=512").name == "nm_2_4+int8_static:balanced,rows=512"
    assert parse_variant("int8_static:rows=256").name == "int8_static"        # defaults are left out
    with pytest.raises(InputError, match="unknown compression method 'int3'"):
        parse_variant("int3")
    with pytest.raises(InputError, match="nm_2_4 must come first"):
        parse_variant("int8_dynamic+nm_2_4")
    with pytest.raises(InputError, match="at most one 2:4 step and one quantization step"):
        parse_variant("fp16+int8_dynamic")
    with pytest.raises(InputError, match="has no option 'bits'"):
        parse_variant("int8_dynamic:bits=4")
    with pytest.raises(InputError, match="option rows takes a whole number"):
        parse_variant("int8_static:rows=many")
    with pytest.raises(InputError, match="is the same as"):
        parse_variants(["int8_static", "int8_static:rows=256"])


# ---- each variant against a plain reference ------------------------------------------------------------------
def test_int8_weight_matches_reference_and_leaves_dense_untouched():
    model = small_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 8)
    v, out = _run(model, "int8_weight", x)
    ref = mlp_reference(model, x)
    assert v.details["backend"] == "torchao.quantize_"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    # not the float model: the quantization is real
    assert (out - model(x)).abs().max() > 1e-4
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k
    assert v.quantized_fraction == pytest.approx((8 * 16 + 16 * 3) / sum(p.numel() for p in model.parameters()))


def test_int8_dynamic_matches_reference():
    model = small_mlp(1)
    x = torch.randn(64, 8) * 3
    v, out = _run(model, "int8_dynamic", x)
    ref = mlp_reference(model, x, acts="dynamic")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    # activations are quantized too: weight-only is a different function
    assert (out - mlp_reference(model, x)).abs().max() > 1e-5


def test_int8_static_matches_reference_with_calibration_scales():
    from fairprune.engine.compress import Calibration

    model = small_mlp(2)
    calib = torch.randn(100, 8)
    x = torch.randn(64, 8) * 1.5
    v, out = _run(model, "int8_static", x, calibration=Calibration(calib, {"rows": 100}))
    # the reference's scales: max |input| of each linear over the calibration rows, in the float model
    with torch.no_grad():
        amax = [float(calib.abs().max()), float(torch.relu(model[0](calib)).abs().max())]
    ref = mlp_reference(model, x, acts="static", amax=amax)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert v.details["calibration"] == {"rows": 100}


@pytest.mark.parametrize("spec,acts", [("int8_weight", None), ("int8_dynamic", "dynamic"), ("int8_static", "static")])
def test_conv_model_goes_through_pt2e_and_matches_reference(spec, acts):
    from fairprune.engine.compress import Calibration

    torch.manual_seed(0)
    model = ConvNet().eval()
    x = torch.rand(32, 2, 6, 6)
    calib = torch.rand(50, 2, 6, 6)
    v, out = _run(model, spec, x, calibration=Calibration(calib, {"rows": 50}))
    assert v.details["backend"] == "torchao.pt2e"
    with torch.no_grad():
        amax = [float(calib.abs().max()), float(torch.relu(model.conv(calib)).abs().max())]
        ref = conv_reference(model, x, acts=acts, amax=amax)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert set(v.quantized) == {"conv.weight", "fc.weight"}          # the convolution is quantized too
    assert v.quantized_fraction == pytest.approx((4 * 2 * 9 + 64 * 3) / sum(p.numel() for p in model.parameters()))


def test_pt2_program_is_quantized_through_pt2e(tmp_path):
    """A .pt2 program's module has no nn.Linear / nn.Conv2d objects (torchao's quantize_ would do nothing)."""
    from fairprune.zoo import load_model, save_pt2

    torch.manual_seed(0)
    model = ConvNet().eval()
    x = torch.rand(16, 2, 6, 6)
    save_pt2(model, x, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2")
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in loaded.module.modules())
    v, out = _run(loaded, "int8_dynamic", x)
    assert v.details["backend"] == "torchao.pt2e" and v.quantized_fraction > 0.9
    with torch.no_grad():
        torch.testing.assert_close(out, conv_reference(model, x, acts="dynamic"), rtol=1e-4, atol=1e-4)
    # its float copy (for gradients) is the loaded program with the dequantized weights
    assert v.float_note is None and set(v.effective) == {n for n, p in loaded.module.named_parameters()
                                                         if p.dim() > 1}


def test_fixed_batch_program_calibrates_and_evaluates_in_its_own_batches(tmp_path):
    """A program exported for 8 rows: calibration (256 rows asked) and evaluation run in batches of 8, and
    give what the same variant of a program that takes any batch size gives."""
    from fairprune.engine.audit import audit
    from fairprune.zoo import load_model, save_pt2

    torch.manual_seed(0)
    model = ConvNet().eval()
    x = torch.rand(40, 2, 6, 6)
    torch.export.save(torch.export.export(model, (x[:8],)), tmp_path / "fixed.pt2")
    save_pt2(model, x[:8], tmp_path / "any.pt2")
    fixed, any_batch = load_model(tmp_path / "fixed.pt2"), load_model(tmp_path / "any.pt2")
    assert fixed.fixed_batch_size == 8 and any_batch.fixed_batch_size is None
    data = GroupedDataset(x=x, y=torch.arange(40) % 3, group=np.array(["a", "b"] * 20, dtype=object),
                          name="t", sha256="0" * 64)
    variants = ["int8_static", "int8_dynamic"]
    got = audit(fixed, data, sparsities=[], compress=variants, measure_footprint=False)
    want = audit(any_batch, data, sparsities=[], compress=variants, measure_footprint=False)
    for g, w in zip(got.compression, want.compression):
        # the same predictions; losses equal up to float summation order (kernels differ by batch size at 1e-8)
        gl, wl = _flat(g.level.to_dict()), _flat(w.level.to_dict())
        assert gl.keys() == wl.keys()
        for k in gl:
            if isinstance(gl[k], float) and "loss" in k:
                assert gl[k] == pytest.approx(wl[k], rel=1e-5, abs=1e-6), k
            else:
                assert gl[k] == wl[k], k
        assert g.details.get("calibration") == w.details.get("calibration")


def _flat(d, prefix=""):
    """A nested dict as {'a.b.c': leaf} (lists kept whole)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_dynamic_activation_scale_is_per_sample():
    """A row's output never depends on the rows evaluated beside it (PT2E's own dynamic scale is per batch)."""
    torch.manual_seed(0)
    model = ConvNet().eval()
    x = torch.rand(16, 2, 6, 6)
    x[0] *= 50                                                        # one loud row in the batch
    v, out = _run(model, "int8_dynamic", x)
    with torch.no_grad():
        alone = v.model.module(x[1:3])
    torch.testing.assert_close(out[1:3], alone)


def test_fp16_and_bf16_match_half_models():
    model = small_mlp(3)
    x = torch.randn(64, 8)
    for spec, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        v, out = _run(model, spec, x)
        ref = copy.deepcopy(model).to(dtype)(x.to(dtype)).float()
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        assert v.quantized_fraction == 1.0
        assert all(p.dtype == dtype for p in v.module.parameters())


def test_bn_folded_weights_map_back_to_a_float_copy():
    """PT2E folds BatchNorm into the conv before quantizing; the float copy used for gradients unfolds it and
    computes the same function as the int8 weight-only variant."""
    from fairprune.zoo.archs import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(channels=(8, 8), hidden=16).eval()
    for bn in (model.features[1], model.features[5]):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(16, 1, 12, 12)
    v, out = _run(model, "int8_weight", x)
    assert v.float_note is None
    with torch.no_grad():
        torch.testing.assert_close(v.float_copy()(x), out, rtol=1e-4, atol=1e-4)
    assert set(v.quantized) == {"features.0.weight", "features.4.weight", "classifier.1.weight",
                                "classifier.3.weight"}
    # the variant holds int8 weights, not the float ones it replaced, and no BatchNorm tensors
    from fairprune.engine.compress import variant_tensors

    tensors = variant_tensors(v.module)
    assert sum(t.numel() for t in tensors.values() if t.dtype == torch.int8) == sum(v.quantized.values())
    assert not any(t.dtype == torch.float32 and t.dim() == 4 for t in tensors.values())


# ---- 2:4 ------------------------------------------------------------------------------------------------------
def test_nm_masks_keep_exactly_the_two_largest_of_every_four():
    torch.manual_seed(0)
    w = torch.randn(6, 5, 2, 2)                       # input dimension 5 * 2 * 2 = 20
    m = nm_mask(w)
    groups = m.reshape(6, -1, 4)
    assert bool((groups.sum(-1) == 2).all())
    mags = w.abs().reshape(6, -1, 4)
    kept_min = torch.where(groups, mags, torch.inf).amin(-1)
    dropped_max = torch.where(groups, -torch.inf, mags).amax(-1)
    assert bool((kept_min >= dropped_max).all())
    model = small_mlp(4, widths=(8, 12, 4))
    masks = compute_masks(model, "nm_2_4", 0.5)
    for name, mask in masks.items():
        assert bool((mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()), name


def test_nm_pack_roundtrip_and_pattern():
    torch.manual_seed(1)
    w = torch.randn(5, 12) * nm_mask(torch.randn(5, 12))
    w[0, :4] = 0                                     # a group with fewer than two non-zeros
    assert follows_2_4(w)
    values, positions = pack_2_4(w)
    assert values.shape == (5, 6) and positions.dtype == torch.uint8 and positions.shape == (5, 2)
    assert torch.equal(unpack_2_4(values, positions, w.shape), w)
    assert not follows_2_4(torch.randn(5, 12))


def test_nm_2_4_sparsity_other_than_half_is_refused(tmp_path):
    model = small_mlp()
    with pytest.raises(InputError, match=r"nm_2_4 prunes to exactly 0.5 sparsity.*found 0.9"):
        compute_masks(model, "nm_2_4", 0.9)
    code = main(["audit", "--demo", "adult", "--method", "nm_2_4", "--sparsity", "0.9", "--out",
                 str(tmp_path / "r.json")])
    assert code == 2
    from fairprune.engine.search import search

    df = make_table(n=120)
    with pytest.raises(InputError, match="no sparsity to search"):
        search(model, _dataset(df), method="nm_2_4", max_violation=0.05)


def test_nm_2_4_level_and_variant_agree_and_ship_packed():
    df = make_table()
    model = train_mlp(df)
    data = _dataset(df)
    res = audit(model, data, sparsities=[0.5], method="nm_2_4", compress=["nm_2_4"])
    lv, [var] = res.levels[0], res.compression
    assert lv.achieved_sparsity == pytest.approx(0.5) and var.level.achieved_sparsity == pytest.approx(0.5)
    assert var.level.groups["b"].accuracy == lv.groups["b"].accuracy
    assert var.level.weight_distance == pytest.approx(lv.weight_distance)
    assert lv.size_bytes < res.dense.size_bytes and var.size_bytes < res.dense.size_bytes
    assert res.sections["footprint"]["levels"][0]["storage"] == "nm24"
    assert var.quantized_fraction == 0.0
    assert var.details["nm_2_4"]["sparse_kernel"] is False
    assert "CUDA" in var.details["nm_2_4"]["sparse_kernel_note"]


def test_nm_2_4_plus_int8_dynamic_applies_both():
    model = small_mlp(5, widths=(8, 16, 4))
    x = torch.randn(64, 8)
    v, out = _run(model, "nm_2_4+int8_dynamic", x)
    masks = [nm_mask(m.weight) for m in model if isinstance(m, nn.Linear)]
    ref = mlp_reference(model, x, acts="dynamic", masks=masks)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    linears = [(n, m) for n, m in model.named_children() if isinstance(m, nn.Linear)]
    assert set(v.effective) == {f"{n}.weight" for n, _ in linears}
    for (n, m), mask in zip(linears, masks):
        w = v.effective[f"{n}.weight"]
        assert follows_2_4(w), n                                      # the 2:4 zeros survive quantization
        torch.testing.assert_close(w, q8(m.weight.detach() * mask))   # masked, then on the int8 grid
    assert v.quantized_fraction > 0.8
    assert "re-packs" in v.details["nm_2_4"]["sparse_kernel_note"] or "CUDA" in v.details["nm_2_4"]["sparse_kernel_note"]


# ---- refusals ---------------------------------------------------------------------------------------------------
def test_int4_on_cpu_is_refused_with_the_reason():
    with pytest.raises(InputError) as err:
        apply_variant(small_mlp(), "int4_weight", example=torch.randn(4, 8), device="cpu")
    assert str(err.value) == INT4_CPU
    assert "mslk" in INT4_CPU and "expected a CUDA device" in INT4_CPU


class NoLayers(nn.Module):
    """A classifier with a weight matrix but no nn.Linear / conv: nothing for torchao to quantize."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3))

    def forward(self, x):
        return x @ self.w


def test_a_variant_that_quantizes_nothing_is_refused():
    with pytest.raises(InputError, match="int8_dynamic quantized nothing"):
        apply_variant(NoLayers().eval(), "int8_dynamic", example=torch.randn(4, 8), device="cpu")
    with pytest.raises(InputError, match="nm_2_4 found no weight that can take the 2:4 pattern"):
        apply_variant(small_mlp(widths=(3, 5, 2)), "nm_2_4", example=torch.randn(4, 3), device="cpu")


# ---- the audit pipeline -----------------------------------------------------------------------------------------
def test_variant_group_metrics_equal_a_pandas_groupby():
    df = make_table()
    model = train_mlp(df)
    data = _dataset(df)
    res = audit(model, data, sparsities=[], compress=["int8_dynamic", "fp16"], seed=3)
    assert res.levels == []
    dense_pred = evaluate(LoadedModel.from_module(model, name="m"), data)
    for entry in res.sections["compression"]:
        v = apply_variant(model, entry["method"], example=data.x[:8])
        pred = evaluate(v.model, data)
        t = pd.DataFrame({"group": data.group.astype(str), "correct": pred.correct, "loss": pred.loss,
                          "dense_correct": dense_pred.correct, "dense_loss": dense_pred.loss})
        by = t.groupby("group").mean()
        for g in ("a", "b"):
            m = entry["groups"][g]
            assert m["accuracy"] == pytest.approx(by.loc[g, "correct"])
            assert m["loss"] == pytest.approx(by.loc[g, "loss"], rel=1e-9)
            assert m["accuracy_drop"] == pytest.approx(by.loc[g, "dense_correct"] - by.loc[g, "correct"])
            assert m["excessive_loss"] == pytest.approx(by.loc[g, "loss"] - by.loc[g, "dense_loss"], abs=1e-9)
            assert set(m) >= {"accuracy_drop_ci95", "significant", "p_value", "unreliable"}
        drops = [entry["groups"][g]["accuracy_drop"] for g in ("a", "b")]
        assert entry["fairness_violation"]["accuracy"] == pytest.approx(max(drops) - min(drops))
        assert entry["overall"]["accuracy"] == pytest.approx(t["correct"].mean())


def test_compression_section_keys_sizes_and_round_trip():
    df = make_table()
    model = train_mlp(df)
    split = np.where(np.arange(len(df)) % 4 == 0, "train", "test").astype(object)
    data = _dataset(df, split=split)
    res = audit(model, data, sparsities=[0.5], compress=["int8_weight", "int8_static:balanced,rows=40", "bf16"])
    d = json.loads(res.to_json())
    level_keys = set(d["levels"][0])
    for e in d["compression"]:
        assert level_keys - {"size_bytes", "latency_ms"} <= set(e)
        assert {"method", "steps", "setting", "description", "size_bytes", "latency_ms", "quantized_fraction",
                "backend", "kernel", "device", "calibration", "storage"} <= set(e)
        assert e["latency_ms"] is None                     # not asked for: the JSON stays reproducible
        assert e["size_bytes"] < d["dense"]["size_bytes"]
    w8, static, bf = d["compression"]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    # one byte per weight, and torchao's int8 zero point per output channel (all 0: symmetric), measured
    assert w8["storage"]["bytes_by_dtype"]["int8"] == sum(m.weight.numel() + m.out_features for m in linears)
    assert bf["storage"]["bytes_by_dtype"]["bfloat16"] == 2 * sum(p.numel() for p in model.parameters()) + 2 * 8
    cal = static["calibration"]
    assert cal["source"] == "train" and cal["balanced"] is True
    assert cal["groups"] == {"a": 20, "b": 20} and cal["rows"] == 40      # 100 training rows, 20 of them b
    assert w8["calibration"] is None
    back = AuditResult.from_json(res.to_json())
    assert back.to_dict() == d
    assert [v.method for v in back.compression] == ["int8_weight", "int8_static:balanced,rows=40", "bf16"]
    assert isinstance(back.compression[0], VariantResult)
    assert VariantResult.from_dict(w8).to_dict() == w8
    assert [e["method"] for e in d["footprint"]["compression"]] == [e["method"] for e in d["compression"]]
    table = text_table(res)
    assert "int8_static:balanced,rows=40" in table and table.index("50%") < table.index("int8_weight")
    from fairprune.present.plots import model_variants, size_axis

    rows = model_variants(res)                        # the dashboard's one size axis reads the real section
    assert [r["kind"] for r in rows] == ["dense", "pruning"] + ["compression"] * 3
    assert [r["size_bytes"] for r in rows[2:]] == [e["size_bytes"] for e in d["compression"]]
    size_axis(res)


def test_latency_measured_with_its_spread_and_stripped_by_without_timings():
    from fairprune.present.plots import model_variants
    from fairprune.present.reading import NO_SPEEDUP, REFERENCE_INT8, latency_reading, latencies, variant_latencies
    from fairprune.present.report import render_html

    df = make_table(n=120)
    model = train_mlp(df, epochs=5)
    res = audit(model, _dataset(df), sparsities=[0.5], compress=["int8_dynamic", "int8_static", "nm_2_4"],
                measure_latency=True)
    fps = res.sections["footprint"]["compression"]
    assert [f["method"] for f in fps] == ["int8_dynamic", "int8_static", "nm_2_4"]
    for e, f in zip(res.sections["compression"], fps):
        # a median with its spread and run count, as the dense model and each level record them
        lo, hi = f["latency_ms_iqr"]
        assert e["latency_ms"] == f["latency_ms"] and 0 < lo <= f["latency_ms"] <= hi
        assert 5 <= f["latency_repeats"] <= 20
    # 2:4 on CPU does the dense model's work in dense kernels; int8_static runs torch's reference kernels
    assert [f["timed"] for f in fps] == ["the compressed model as evaluated"] * 2 + ["masked"]
    t = variant_latencies(res)
    assert list(t) == ["int8_dynamic", "int8_static", "nm_2_4"]
    assert t["nm_2_4"].no_speedup and t["nm_2_4"].caveat is None
    # an MLP's int8 runs torchao's int8 matmuls; a model quantized through PT2E runs reference kernels and says so
    assert res.compression[1].details["backend"] == "torchao.quantize_" and t["int8_static"].caveat is None
    pt2e = dataclasses.replace(res, sections={**res.sections, "compression": [
        {**e, "backend": "torchao.pt2e"} for e in res.sections["compression"]]})
    assert variant_latencies(pt2e)["int8_static"].caveat == REFERENCE_INT8
    dense = latencies(res)[0.0]
    assert latency_reading(dense, t["nm_2_4"]).endswith(NO_SPEEDUP)
    assert latency_reading(dense, variant_latencies(pt2e)["int8_static"]).endswith(REFERENCE_INT8)
    # the report's size-and-latency table and the size axis read the variants' spread
    page = render_html(res)
    section = re.search(r'<section id="footprint">(.*?)</section>', page, re.S).group(1)
    rows = [r for r in (re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", section, re.S))
            if r]
    assert [r[0] for r in rows] == ["dense", "50%", "int8_dynamic", "int8_static", "nm_2_4"]
    assert rows[4][4] == t["nm_2_4"].spread_text() and rows[4][6] == "masked"
    assert html.unescape(rows[4][5]) == latency_reading(dense, t["nm_2_4"])
    assert [r["latency_ms_iqr"] for r in model_variants(res)[2:]] == [f["latency_ms_iqr"] for f in fps]
    stripped = without_timings(res.to_dict())
    assert "latency_ms" not in stripped["compression"][0]
    assert not {"latency_ms", "latency_ms_iqr", "latency_repeats"} & set(stripped["footprint"]["compression"][0])


def test_at_least_one_of_sparsity_or_compress(tmp_path, table_files, capsys):
    df = make_table()
    with pytest.raises(InputError, match="found neither"):
        audit(train_mlp(df, epochs=2), _dataset(df), sparsities=[])
    csv, weights, _, _ = table_files
    code = main(["audit", "--model", str(weights), "--arch", "mlp", "--arch-arg", "in_features=4",
                 "--arch-arg", "hidden=32,16", "--num-classes", "3", "--data", str(csv), "--ignore", "sex", "--out",
                 str(tmp_path / "r.json")])
    assert code == 2
    assert "expected --sparsity S [S ...] or --compress VARIANT [VARIANT ...] (or both)" in capsys.readouterr().err


def test_headline_reads_a_variant_when_there_are_no_levels():
    df = make_table()
    steps = []
    res = audit(train_mlp(df), _dataset(df), sparsities=[], compress=["nm_2_4", "fp16"],
                progress=lambda done, total, msg: steps.append((done, total, msg)))
    assert steps[-1] == (3, 3, "variant 2 of 2 (fp16) done")
    worst = max(res.sections["compression"], key=lambda e: e["fairness_violation"]["accuracy"])
    assert headline(res).startswith(f"Under {worst['method']} group ")


# ---- diagnostics ------------------------------------------------------------------------------------------------
def test_diagnostics_on_variants_float_copy_and_margins_only(monkeypatch):
    import fairprune.engine.compress._audit as caudit

    df = make_table(n=160)
    model = train_mlp(df, epochs=20)
    data = _dataset(df)
    cfg = {"hessian_rows": 16, "power_iterations": 3, "hutchinson_probes": 2}
    res = audit(model, data, sparsities=[], compress=["int8_dynamic", "nm_2_4"], diagnostics=cfg)
    q, nm = res.sections["compression"]
    for e in (q, nm):
        for g in ("a", "b"):
            assert e["diagnostics"][g]["grad_norm_mean"] > 0
            assert e["diagnostics"][g]["hessian_max_eig"] is not None
            assert -1 <= e["diagnostics"][g]["margin_mean"] <= 1
    assert "float32 copy" in q["diagnostics_note"] and "not quantized there" in q["diagnostics_note"]
    assert "2:4 model itself" in nm["diagnostics_note"]
    # the margins are the quantized model's own: a pass of it by hand gives the same mean per group
    v = apply_variant(model, "int8_dynamic", example=data.x[:8])
    pred = evaluate(v.model, data)
    for g in ("a", "b"):
        rows = data.group.astype(str) == g
        assert q["diagnostics"][g]["margin_mean"] == pytest.approx(pred.margin[rows].mean())

    # where no float copy can carry the weights: margins only, said plainly
    real = caudit.apply_variant

    def no_copy(*a, **k):
        v = real(*a, **k)
        v.float_note = "test: the weights cannot be mapped back"
        return v

    monkeypatch.setattr(caudit, "apply_variant", no_copy)
    res = audit(model, data, sparsities=[], compress=["int8_static"], diagnostics=cfg)
    e = res.sections["compression"][0]
    assert e["diagnostics"]["a"]["grad_norm_mean"] is None and e["diagnostics"]["a"]["margin_mean"] is not None
    assert e["diagnostics_note"].startswith("margins and uncertainty only")


# ---- CLI and demos ----------------------------------------------------------------------------------------------
def test_cli_compress_writes_the_section_reproducibly(tmp_path, table_files, capsys):
    csv, weights, _, _ = table_files
    args = ["audit", "--model", str(weights), "--arch", "mlp", "--arch-arg", "in_features=4", "--arch-arg",
            "hidden=32,16", "--num-classes", "3", "--data", str(csv), "--ignore", "sex", "--compress", "int8_dynamic", "fp16",
            "nm_2_4+int8_dynamic"]
    assert main(args + ["--out", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "nm_2_4+int8_dynamic" in out and "int8_dynamic" in out
    assert main(args + ["--out", str(tmp_path / "b.json"), "--quiet"]) == 0
    a, b = (tmp_path / "a.json").read_bytes(), (tmp_path / "b.json").read_bytes()
    assert a == b
    d = json.loads(a)
    assert d["levels"] == [] and [e["method"] for e in d["compression"]] == ["int8_dynamic", "fp16",
                                                                           "nm_2_4+int8_dynamic"]
    assert main(args[:-3] + ["int9", "--out", str(tmp_path / "c.json")]) == 2


def test_cli_help_documents_every_name(capsys):
    code = main(["audit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert code == 0
    for m in list_compressions():
        assert f"{m.name}:" in text


@pytest.mark.parametrize("demo,backend", [("adult", "torchao.quantize_"), ("mnist", "torchao.pt2e")])
def test_demos_with_int8_and_fp16(demo, backend):
    res = run_spec(AuditSpec(sparsities=(), demo=demo, compress=("int8_dynamic", "int8_static", "fp16")))
    dense = res.dense.overall.accuracy
    for e in res.sections["compression"]:
        assert abs(e["overall"]["accuracy"] - dense) < 0.02, e["method"]
        assert e["size_bytes"] < res.dense.size_bytes
        if e["method"].startswith("int8"):
            assert e["backend"] == backend and e["quantized_fraction"] > 0.95
            assert e["size_bytes"] < res.dense.size_bytes / 3
    static = res.sections["compression"][1]["calibration"]
    assert static["source"] == "train" and static["rows"] == 256 and sum(static["groups"].values()) == 256
