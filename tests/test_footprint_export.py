"""What pruning buys: sizes measured by serialising, latency, and compacted exports that predict
exactly as the masked model does."""

import json
import struct
import warnings

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save, save_file
from torch import nn

from fairprune.zoo.archs import SmallCNN
from fairprune.engine.audit import audit
from fairprune.run.cli import main
from fairprune.data import GroupedDataset
from fairprune.core.errors import InputError
from fairprune.engine.export import compact, export_pruned, load_sparse_safetensors
from fairprune.engine.footprint import (csr_components, csr_nbytes, dense_size, measure_latency, serialised_size,
                                 sparse_size, sparse_tensors, state_tensors, without_timings)
from fairprune.engine.prune import MaskedModel, compute_masks
from fairprune.zoo import LoadedModel, load_model, save_pt2

from conftest import make_table, train_mlp


def _with_bn_statistics(model, seed=0):
    """Non-trivial BatchNorm running statistics and affine parameters, so eval-mode BN matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _models():
    torch.manual_seed(0)
    return {
        "small_cnn": (_with_bn_statistics(SmallCNN()), torch.rand(16, 1, 28, 28)),
        "resnet18": (_with_bn_statistics(torchvision.models.resnet18(num_classes=10)), torch.rand(8, 3, 32, 32)),
    }


def _masked_logits(model, masks, x):
    mm = MaskedModel(model)
    mm.apply(masks)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        mm.restore()


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_compacted_model_predicts_as_masked_and_is_smaller(name, tmp_path):
    model, x = _models()[name]
    dense_before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = compute_masks(model, "structured_l1", 0.5, example_input=x[:2])
    small = compact(model, masks, x[:2])

    with torch.no_grad():
        got = small(x)
    want = _masked_logits(model, masks, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert torch.equal(got.argmax(1), want.argmax(1))
    # the model handed in is untouched
    assert all(torch.equal(v, dense_before[k]) for k, v in model.state_dict().items())

    # physically smaller: about half the parameters, BatchNorm cut with its conv, fewer bytes on disk
    assert _params(small) < 0.6 * _params(model)
    first_conv, first_bn = ("features.0", "features.1") if name == "small_cnn" else ("conv1", "bn1")
    conv, bn = small.get_submodule(first_conv), small.get_submodule(first_bn)
    assert conv.out_channels == bn.num_features == bn.running_mean.numel() < model.get_submodule(first_conv).out_channels
    save_file(state_tensors(model), str(tmp_path / "dense.safetensors"))
    save_file(state_tensors(small), str(tmp_path / "small.safetensors"))
    on_disk = (tmp_path / "small.safetensors").stat().st_size
    assert on_disk < 0.6 * (tmp_path / "dense.safetensors").stat().st_size
    assert on_disk == dense_size(small)
    if name == "resnet18":
        # residual partners were cut together: every block's output width matches the stream it adds to
        for layer in (small.layer1, small.layer2):
            for block in layer:
                assert block.conv2.out_channels == block.bn2.num_features
        assert small.layer1[0].conv2.out_channels == small.conv1.out_channels == small.layer1[1].conv2.out_channels


def test_compact_leaves_live_channels_and_refuses_what_it_cannot_cut():
    torch.manual_seed(0)
    model = _with_bn_statistics(SmallCNN())
    x = torch.rand(4, 1, 28, 28)
    # unstructured masks leave no channel wholly dead: nothing is cut, outputs unchanged
    masks = compute_masks(model, "global_magnitude", 0.5)
    small = compact(model, masks, x)
    assert _params(small) == _params(model)
    torch.testing.assert_close(small(x), _masked_logits(model, masks, x), atol=1e-6, rtol=0)

    # a .pt2 program has no layer modules to cut
    program = torch.export.export(model, (x,)).module()
    with pytest.raises(InputError, match="torch.export program.*--arch"):
        compact(program, {}, x)

    # GroupNorm normalises across channels: removing a zero channel changes the others' statistics
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(1, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
    gm = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters()}
    gm["0.weight"][0] = False
    gm["0.bias"][0] = False
    gm["1.weight"][0] = False
    gm["1.bias"][0] = False
    gm["4.weight"].view(3, 4, -1)[:, 0] = False
    with pytest.raises(InputError, match="changed its outputs"):
        compact(net, gm, torch.rand(4, 1, 28, 28))


def test_exported_pt2_loads_back_with_the_masked_outputs(tmp_path):
    model, x = _models()["small_cnn"]
    masks = compute_masks(model, "structured_l1", 0.5, example_input=x[:2])
    out = tmp_path / "small.pt2"
    lm = LoadedModel.from_module(model, name="cnn")
    report = export_pruned(lm, masks, example_input=x[:4], check_input=x, out=out, structured=True)
    assert report.compacted and report.max_abs_diff <= 1e-5
    assert report.parameters < 0.6 * report.dense_parameters and report.weights_bytes < 0.6 * report.dense_weights_bytes

    loaded = load_model(out)
    assert loaded.kind == "pt2" and loaded.fixed_batch_size is None
    want = _masked_logits(model, masks, x)
    for n in (3, 16):   # any batch size: exported with a dynamic batch dimension
        with torch.no_grad():
            torch.testing.assert_close(loaded.module(x[:n]), want[:n], atol=1e-5, rtol=0)
    # the masked model left dense afterwards, and the compacted program is smaller on disk than the dense one
    assert torch.equal(lm.module.features[0].weight, _models()["small_cnn"][0].features[0].weight)
    save_pt2(model, x[:2].clone(), tmp_path / "dense.pt2")
    assert out.stat().st_size < 0.7 * (tmp_path / "dense.pt2").stat().st_size


def test_csr_size_formula_equals_the_serialised_size():
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3)
    w90 = torch.where(torch.rand_like(w) < 0.9, torch.zeros_like(w), w)
    parts = csr_components(w90)
    # same arrays as torch's own CSR of the (out, -1) view (the slow, obvious reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "sparse CSR support is in beta"
        ref = w90.reshape(64, -1).to_sparse_csr()
    assert torch.equal(parts["crow_indices"].long(), ref.crow_indices())
    assert torch.equal(parts["col_indices"].long(), ref.col_indices())
    assert torch.equal(parts["values"], ref.values())
    assert parts["col_indices"].dtype == torch.int32

    nnz = int((w90 != 0).sum())
    assert sum(t.nbytes for t in parts.values()) == csr_nbytes(w90.shape, nnz, w90.dtype)
    blob = save(parts)
    header = struct.unpack("<Q", blob[:8])[0]
    assert len(blob) == serialised_size(parts) == 8 + header + csr_nbytes(w90.shape, nnz, w90.dtype)
    assert csr_nbytes(w90.shape, nnz, w90.dtype) < w.numel() * 4            # 90% zeros: CSR is smaller

    w10 = torch.where(torch.rand_like(w) < 0.1, torch.zeros_like(w), w)
    nnz10 = int((w10 != 0).sum())
    assert csr_nbytes(w10.shape, nnz10, w10.dtype) >= w.numel() * 4         # 10% zeros: CSR is larger

    model = SmallCNN().eval()
    for sparsity, csr_expected in ((0.1, False), (0.9, True)):
        mm = MaskedModel(model)
        mm.apply(compute_masks(model, "global_magnitude", sparsity))
        tensors, metadata = sparse_tensors(model)
        assert bool(metadata) == csr_expected
        if csr_expected:
            assert sparse_size(model) < 0.3 * dense_size(model)
            assert "features.4.weight.values" in tensors and "features.4.weight" not in tensors
        else:   # stored dense: exactly the dense bytes
            assert sparse_size(model) == dense_size(model)
        mm.restore()


def test_sparse_safetensors_export_round_trips(tmp_path):
    model, x = _models()["small_cnn"]
    masks = compute_masks(model, "global_magnitude", 0.9)
    out = tmp_path / "m.safetensors"
    report = export_pruned(LoadedModel.from_module(model, name="cnn"), masks, example_input=x[:2], check_input=x,
                           out=out, structured=False, fmt="sparse-safetensors")
    assert report.max_abs_diff == 0
    assert out.stat().st_size == report.weights_bytes < 0.3 * report.dense_weights_bytes
    state = load_sparse_safetensors(out)
    fresh = SmallCNN().eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), _masked_logits(model, masks, x), atol=0, rtol=0)


def test_measure_latency_is_a_median_in_ms():
    calls = []
    ms = measure_latency(lambda x: calls.append(x.shape), torch.zeros(3, 2), repeats=7, warmup=2)
    # 7 timed runs after at least 2 warm-up runs (more while the 0.1 s warm-up lasts, at most 30)
    assert 9 <= len(calls) <= 7 + 30 and 0 <= ms < 50
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(lambda x: x, torch.zeros(1), repeats=0)


class _Clock:
    """A fake perf_counter: each forward call advances it by the next duration (seconds)."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def __call__(self):
        return self.now

    def forward(self, x):
        self.now += self.durations[self.calls]
        self.calls += 1


def test_time_forward_warms_up_by_time_and_reports_median_and_spread(monkeypatch):
    import fairprune.engine.footprint as fp

    # a cold model: the first calls are slow (73 ms, as the dense demo measured), then 10-13 ms with one
    # 50 ms outlier. Warm-up lasts at least 0.2 s: the three cold calls (0.219 s) are never timed.
    clock = _Clock([0.073, 0.073, 0.073] + [0.010, 0.012, 0.011, 0.050, 0.013])
    monkeypatch.setattr(fp.time, "perf_counter", clock)
    t = fp.time_forward(clock.forward, torch.zeros(2), repeats=5, warmup=2, warmup_s=0.2)
    assert clock.calls == 8
    assert t.repeats == 5 and t.median_ms == pytest.approx(12.0)
    assert t.iqr == pytest.approx([11.0, 13.0])          # inclusive quartiles of 10, 11, 12, 13, 50
    # a warm-up of a fixed count (2 calls) times a cold 73 ms call: the median still reads 12 ms, a mean would not
    clock = _Clock([0.073] * 3 + [0.010, 0.012, 0.011, 0.050, 0.013])
    monkeypatch.setattr(fp.time, "perf_counter", clock)
    assert fp.time_forward(clock.forward, torch.zeros(2), repeats=5, warmup=2, warmup_s=0.0).median_ms \
        == pytest.approx(12.0)  # warmup_s=0: 2 warm-up calls, then 73, 10, 12, 11, 50 timed
    assert fp.Timing.of([0.073, 0.010, 0.012, 0.011, 0.050]).median_ms == pytest.approx(12.0)
    # the budget stops timed runs early, after at least 5
    clock = _Clock([0.2] * 40)
    monkeypatch.setattr(fp.time, "perf_counter", clock)
    t = fp.time_forward(clock.forward, torch.zeros(2), repeats=20, warmup=1, budget_s=0.5, warmup_s=0.0)
    assert t.repeats == 5 and t.iqr == pytest.approx([200.0, 200.0])


def test_timings_differ_only_when_spreads_do_not_overlap():
    from fairprune.engine.footprint import Timing

    dense = Timing(48.8, 21.0, 72.9, 20)     # the dense demo model, identical runs
    level = Timing(22.6, 20.8, 25.0, 20)
    assert not dense.differs(level) and not level.differs(dense)
    fast = Timing(10.0, 9.5, 10.4, 20)
    assert fast.differs(level) and level.differs(fast)
    one = Timing.of([0.004])
    assert (one.median_ms, one.p25_ms, one.p75_ms, one.repeats) == (4.0, 4.0, 4.0, 1)
    with pytest.raises(ValueError, match="at least one"):
        Timing.of([])


def _images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GroupedDataset(x=torch.rand(n, 1, 28, 28, generator=g), y=torch.randint(0, 10, (n,), generator=g),
                          group=np.array(["a", "b"], dtype=object)[torch.randint(0, 2, (n,), generator=g).numpy()],
                          name="images", sha256="0" * 64)


def test_audit_reports_size_and_latency_per_level():
    df = make_table()
    feats = [c for c in df.columns if c.startswith("f")]
    data = GroupedDataset(x=torch.tensor(df[feats].to_numpy(np.float32)), y=torch.tensor(df["label"].to_numpy()),
                          group=df["group"].to_numpy().astype(object), name="table", sha256="0" * 64)
    model = train_mlp(df)
    res = audit(model, data, sparsities=[0.5, 0.8, 0.95], measure_latency=True)
    d = json.loads(res.to_json())
    assert d["dense"]["size_bytes"] == dense_size(model) and d["dense"]["latency_ms"] > 0
    sizes = [lv["size_bytes"] for lv in d["levels"]]
    assert all(lv["latency_ms"] > 0 for lv in d["levels"])
    assert d["dense"]["size_bytes"] >= sizes[0] > sizes[1] > sizes[2]
    assert [lv["timed"] for lv in d["footprint"]["levels"]] == ["masked"] * 3
    assert d["footprint"]["levels"][2]["storage"] == "csr"
    assert "dense speed" in d["footprint"]["latency"] or "zeros" in d["footprint"]["latency"]
    assert "no speed-up expected without sparse kernels" in d["footprint"]["latency"]
    # every timed model carries its spread and how many runs were timed
    for part in [d["footprint"]["dense"], *d["footprint"]["levels"]]:
        lo, hi = part["latency_ms_iqr"]
        assert lo <= part["latency_ms"] <= hi and 5 <= part["latency_repeats"] <= d["footprint"]["repeats"]

    # sizes are reproducible; only the wall-clock figures differ between two runs
    again = audit(model, data, sparsities=[0.5, 0.8, 0.95], measure_latency=True).to_dict()
    assert without_timings(again) == without_timings(d)
    # without --latency the whole JSON is reproducible, sizes included
    plain = [audit(model, data, sparsities=[0.5, 0.95]).to_json() for _ in range(2)]
    assert plain[0] == plain[1] and "latency_ms" not in json.loads(plain[0])["dense"]
    assert "latency_ms_iqr" not in plain[0] and "latency_repeats" not in plain[0]
    bare = without_timings(d)["footprint"]
    assert not any(k.startswith("latency_") for part in [bare["dense"], *bare["levels"]] for k in part)
    assert "latency_ms" not in without_timings(d)["dense"] and "latency_ms" in d["dense"]

    off = audit(model, data, sparsities=[0.5], measure_footprint=False).to_dict()
    assert "size_bytes" not in off["dense"] and "latency_ms" not in off["levels"][0] and "footprint" not in off


def test_structured_audit_measures_the_compacted_model():
    torch.manual_seed(0)
    model = _with_bn_statistics(SmallCNN())
    res = audit(model, _images(), sparsities=[0.5, 0.8], method="structured_l1").to_dict()
    fp = res["footprint"]
    assert [lv["storage"] for lv in fp["levels"]] == ["compacted", "compacted"]
    assert fp["levels"][0]["parameters"] < 0.6 * fp["dense"]["parameters"]
    assert res["dense"]["size_bytes"] > res["levels"][0]["size_bytes"] > res["levels"][1]["size_bytes"]


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_export_writes_a_smaller_model_the_audit_accepts(tmp_path, capsys):
    model = _with_bn_statistics(SmallCNN())
    weights = tmp_path / "cnn.safetensors"
    save_file(model.state_dict(), str(weights))
    data = _images()
    npz = tmp_path / "img.npz"
    np.savez(npz, x=data.x.numpy(), y=data.y.numpy(), group=data.group.astype(str))
    small = tmp_path / "small.pt2"
    code, out, err = run(["export", "--model", weights, "--arch", "small_cnn", "--data", npz, "--sparsity", "0.5",
                          "--method", "structured_l1", "--out", small], capsys)
    assert code == 0, err
    assert "channels removed" in out and "max |Δlogit|" in out and small.is_file()

    res = tmp_path / "r.json"
    code, _, err = run(["audit", "--model", small, "--data", npz, "--sparsity", "0.5", "--quiet", "--out", res], capsys)
    assert code == 0, err
    assert json.loads(res.read_text())["model"]["parameters"] < _params(model)

    # a .pt2 cannot be compacted: one line, exit 2, says what to give instead
    code, _, err = run(["export", "--model", small, "--data", npz, "--sparsity", "0.5", "--method", "structured_l1",
                        "--out", tmp_path / "again.pt2"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "--arch" in err and "torch.export program" in err
    code, _, err = run(["export", "--model", weights, "--arch", "small_cnn", "--data", npz, "--sparsity", "1.5",
                        "--out", tmp_path / "x.pt2"], capsys)
    assert code == 2 and "--sparsity" in err

    # unstructured: the .pt2 keeps the zeros at the dense size, and says so
    code, out, err = run(["export", "--model", weights, "--arch", "small_cnn", "--data", npz, "--sparsity", "0.9",
                          "--out", tmp_path / "u.pt2"], capsys)
    assert code == 0 and "dense size" in err


def test_cli_audit_no_footprint(tmp_path, capsys):
    out = tmp_path / "r.json"
    code, _, err = run(["audit", "--demo", "mnist", "--sparsity", "0.9", "--no-footprint", "--quiet", "--out", out], capsys)
    assert code == 0, err
    assert "size_bytes" not in json.loads(out.read_text())["dense"]


def test_serialised_size_is_remembered_by_layout_and_exact():
    """The remembered size is the file's length for any values: safetensors' length depends only on names, dtypes,
    shapes and metadata (checked against a real serialisation with other values, and for a new layout)."""
    from safetensors.torch import save

    from fairprune.engine.footprint import serialised_size

    g = torch.Generator().manual_seed(0)
    first = {"w": torch.zeros(7, 13), "b": torch.zeros(7, dtype=torch.float64), "i": torch.zeros(3, dtype=torch.int32)}
    assert serialised_size(first) == len(save(first))
    for _ in range(3):
        other = {"w": torch.randn(7, 13, generator=g), "b": torch.randn(7, generator=g).double(),
                 "i": torch.randint(0, 10**6, (3,), generator=g).int()}
        assert serialised_size(other) == len(save(other))
    meta = {"format": "x", "csr": "{}"}
    assert serialised_size(first, meta) == len(save(first, metadata=meta)) != serialised_size(first)
    wider = {**first, "w": torch.zeros(7, 14)}
    assert serialised_size(wider) == len(save(wider)) == serialised_size(first) + 4 * 7


def test_csr_layout_sizes_like_the_real_csr():
    """Sizing with zero tensors of the CSR layout gives the bytes of the real CSR serialisation."""
    from safetensors.torch import save

    from fairprune.engine.footprint import sparse_tensors

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight.mul_((torch.rand_like(m.weight) > 0.9).float())
    real, meta = sparse_tensors(net)
    lay, meta2 = sparse_tensors(net, layout_only=True)
    assert meta == meta2 and meta                           # both weights chosen for CSR, the same way
    assert {k: (v.dtype, v.shape) for k, v in real.items()} == {k: (v.dtype, v.shape) for k, v in lay.items()}
    assert len(save(real, metadata=meta)) == len(save(lay, metadata=meta2))
