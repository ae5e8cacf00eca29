"""The Hessian never fails and the diagnostics degrade per factor (issue 15).

- Finite-difference Hessian-vector products against double backward on models where both run: the figures agree
  within the error the finite differences state; the masks hold; the weights are restored bit for bit.
- "auto" falls back to finite differences only where the exact products raise (hardsigmoid, CPU attention), says
  so, and a method asked for by name is never swapped.
- MobileNetV3-small and a tiny torchvision ViT (nn.MultiheadAttention) through ``fairprune audit --diagnostics``,
  as nn.Module weights (ViT: the library, it has no ``--arch``) and as ``.pt2``: exit 0, finite Hessian figures.
- Each factor forced to fail (monkeypatch): its figures null with the reason in ``warnings``, every other figure
  and the levels kept, exit 0 through the CLI.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from fairprune.data import GroupedDataset
from fairprune.engine.audit import audit
from fairprune.engine.diagnose import DIAG_KEYS, DiagnosticsConfig, HessianOperator, diagnose, max_eigenvalue, trace
from fairprune.engine.diagnose import _hessian, _run
from fairprune.engine.diagnose._hessian import _axpy, _norm, hvp_finite_difference
from fairprune.core.errors import InputError
from fairprune.run.cli import main
from fairprune.zoo import LoadedModel

FAST = {"hessian_rows": 8, "power_iterations": 4, "hutchinson_probes": 2, "se_parts": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(dtype=torch.float64, act=nn.Tanh, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, 3)).to(dtype).eval()
    g = torch.Generator().manual_seed(seed)
    return m, torch.randn(48, 6, generator=g, dtype=dtype), torch.randint(0, 3, (48,), generator=g)


def _pair(m, x, y, **kw):
    """(exact, finite-difference) operators on two copies of the module (finite differences move weights in place)."""
    return (HessianOperator(m, x, y, method="double_backward", **kw),
            HessianOperator(copy.deepcopy(m), x, y, method="finite_difference", **kw))


# ---- finite differences against double backward ---------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_finite_difference_matches_double_backward_within_its_stated_error(dtype, monkeypatch):
    if dtype == torch.float32:     # the model's own precision (as on a GPU without fast float64), no float64 copy
        monkeypatch.setattr(_hessian, "_float64_is_cheap", lambda device: False)
    m, x, y = _mlp(dtype)
    ex, fd = _pair(m, x, y)
    v = ex.randn(torch.Generator().manual_seed(1))
    a, b = ex.matvec(v), fd.matvec(v)
    assert fd.methods_used == {"finite_difference"} and fd.fd_dtype == str(dtype).removeprefix("torch.")
    rel = _norm(_axpy(-1.0, a, b)) / _norm(a)
    assert rel <= fd.max_rel_error, (rel, fd.max_rel_error)
    assert fd.max_rel_error < (1e-8 if dtype == torch.float64 else 1e-2)
    # λ_max and Tr: the same seeds, a tight tolerance; the difference within the stated error (+ the exact
    # products' own rounding in float32)
    tol = 1e-9 if dtype == torch.float64 else 1e-4      # float32 differences are noisy at the 1e-5 level
    e_ex = max_eigenvalue(ex, iterations=200, tol=tol, se_parts=1)
    e_fd = max_eigenvalue(fd, iterations=200, tol=tol, se_parts=1)
    assert e_ex.hvp_error is None and e_fd.hvp_error is not None and e_fd.converged
    floor = 1e-12 if dtype == torch.float64 else 1e-6 * abs(e_ex.value)
    assert abs(e_fd.value - e_ex.value) <= e_fd.hvp_error + floor, (e_fd.value, e_ex.value, e_fd.hvp_error)
    t_ex, t_fd = trace(ex, probes=6, seed=3), trace(fd, probes=6, seed=3)
    floor = 1e-12 if dtype == torch.float64 else 1e-6 * sum(abs(s) for s in t_ex.samples)
    assert abs(t_fd.value - t_ex.value) <= t_fd.hvp_error + floor, (t_fd.value, t_ex.value, t_fd.hvp_error)
    assert t_fd.value == pytest.approx(t_ex.value, rel=1e-8 if dtype == torch.float64 else 1e-3)


def test_float32_model_gets_float64_finite_differences_and_the_weights_back_bit_for_bit():
    m, x, y = _mlp(torch.float32, act=nn.SiLU)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    fd = HessianOperator(m, x, y, method="finite_difference")
    v = fd.randn(torch.Generator().manual_seed(0))
    hv = fd.matvec(v)
    assert fd.fd_dtype == "float64" and all(h.dtype == torch.float32 for h in hv)
    assert 0 < fd.max_rel_error < 1e-6
    fd.release()
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n
    # the in-place float32 path restores them too
    hv32, err = hvp_finite_difference(m, x, y, v)
    assert err > 0 and all(torch.isfinite(h).all() for h in hv32)
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n


def test_finite_difference_keeps_pruned_coordinates_fixed():
    m, x, y = _mlp(torch.float64)
    g = torch.Generator().manual_seed(2)
    masks = {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in m.named_parameters() if n.endswith("weight")}
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    ex, fd = _pair(m, x, y, masks=masks)
    v = tuple(torch.randn(p.shape, generator=g, dtype=p.dtype) for p in ex.params)   # not projected on purpose
    a, b = ex.matvec(v), fd.matvec(v)
    for name, h in zip(fd.names, b):
        if name in masks:
            assert not h[~masks[name]].any(), name          # P H P v: nothing on a pruned coordinate
    assert _norm(_axpy(-1.0, a, b)) <= fd.max_rel_error * _norm(a)
    for name, p in zip(fd.names, fd.params):                # and the pruned weights are still exactly zero
        if name in masks:
            assert not p[~masks[name]].any(), name


# ---- "auto" ---------------------------------------------------------------------------------------------
class _Hardsigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Hardsigmoid(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def test_auto_falls_back_to_finite_differences_only_where_exact_products_raise():
    torch.manual_seed(0)
    m = _Hardsigmoid().eval()
    x, y = torch.randn(24, 6), torch.randint(0, 3, (24,))
    for named in ("double_backward", "reverse_over_forward", "forward_over_reverse"):
        with pytest.raises(RuntimeError, match="hardsigmoid"):     # a named method is never swapped
            HessianOperator(m, x, y, method=named).matvec(tuple(torch.ones_like(p) for p in m.parameters()))
    op = HessianOperator(m, x, y)
    e = max_eigenvalue(op, iterations=30, tol=1e-6)
    t = trace(op, probes=4)
    assert op.method == "finite_difference" and "double backward failed" in op.fallback
    assert "hardsigmoid" in op.fallback and op.methods_used == {"finite_difference"}
    assert math.isfinite(e.value) and e.value > 0 and math.isfinite(t.value)
    assert 0 < op.max_rel_error < 1e-4 and e.hvp_error is not None and t.hvp_error is not None
    # where an exact product runs, "auto" never uses finite differences
    m2, x2, y2 = _mlp(torch.float32)
    op2 = HessianOperator(m2, x2, y2)
    max_eigenvalue(op2, iterations=5)
    trace(op2, probes=2)
    assert "finite_difference" not in op2.methods_used and op2.max_rel_error is None and op2.fallback is None


def test_row_part_quotients_by_forward_over_forward_equal_the_products():
    m, x, y = _mlp(torch.float64)
    a = HessianOperator(m, x, y)                                 # auto: λ_max's row parts by forward-over-forward
    b = HessianOperator(m, x, y, quadratic=False)                # the same, one Hessian-vector product per part
    ea, eb = max_eigenvalue(a, iterations=50, tol=1e-8, se_parts=4), max_eigenvalue(b, iterations=50, tol=1e-8,
                                                                                   se_parts=4)
    ta, tb = trace(a, probes=5, seed=1), trace(b, probes=5, seed=1)
    assert "forward_over_forward" in a.methods_used and "forward_over_forward" not in b.methods_used
    assert a.products == b.products - 4 and a.quadratic_passes == 1
    q = a.quadratic_rows(ea.vector)
    assert q.shape == (len(x),) and float(q.mean()) == pytest.approx(float(sum((u * h).sum() for u, h in zip(
        ea.vector, b.matvec(ea.vector)))), rel=1e-10)
    assert ea.value == pytest.approx(eb.value, rel=1e-10) and ea.se == pytest.approx(eb.se, rel=1e-6)
    np.testing.assert_allclose(ta.samples, tb.samples, rtol=1e-9)


# ---- through the CLI: MobileNetV3 (hardsigmoid) and a ViT (CPU attention) ----------------------------------
N, SIDE, K = 8, 32, 3


def _npz(path):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((N, 3, SIDE, SIDE), dtype=np.float32), y=rng.integers(0, K, N),
             group=np.array(["a", "b"] * (N // 2)))


def _vit():
    return torchvision.models.VisionTransformer(image_size=SIDE, patch_size=8, num_layers=1, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=K)


def _assert_finite_hessian(result: dict, reason: str):
    diag = result["diagnostics"]
    for d in [diag["dense"], *diag["levels"]]:
        for g in ("a", "b"):
            assert math.isfinite(d[g]["hessian_max_eig"]) and math.isfinite(d[g]["hessian_trace"]), d[g]
            assert d[g]["hessian_method"] == "finite_difference"
            assert 0 <= d[g]["hessian_hvp_rel_error"] < 0.05, d[g]
            assert d[g]["grad_norm_mean"] > 0 and d[g]["margin_mean"] is not None
    said = [w for w in result["warnings"] if "finite-difference" in w]
    assert said and reason in said[0], result["warnings"]
    assert not any("not computed" in w for w in result["warnings"])
    fd = diag["details"]["hessian"]["dense"]["a"]["finite_difference"]
    assert fd["precision"] == "float64" and fd["step"] > 0


def _cli_audit(model_args, data, tmp_path, capsys) -> dict:
    out = tmp_path / "r.json"
    code = main(["audit", *model_args, "--data", str(data), "--sparsity", "0.5", "--diagnostics", "--batch-size",
                 "16", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads(out.read_text())


@pytest.mark.parametrize("path", ["module", "pt2"])
def test_mobilenet_v3_audit_diagnostics_cli(path, tmp_path, capsys):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=K, width_mult=0.25).eval()
    data = tmp_path / "d.npz"
    _npz(data)
    if path == "pt2":
        program = torch.export.export(model, (torch.rand(2, 3, SIDE, SIDE),),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        torch.export.save(program, tmp_path / "m.pt2")
        args = ["--model", str(tmp_path / "m.pt2")]
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
        args = ["--model", str(tmp_path / "w.safetensors"), "--arch", "mobilenet_v3_small", "--num-classes", str(K),
                "--arch-arg", "width_mult=0.25"]
    _assert_finite_hessian(_cli_audit(args, data, tmp_path, capsys), "hardsigmoid")


def test_vit_audit_diagnostics_cli_pt2_and_library_module(tmp_path, capsys):
    torch.manual_seed(0)
    model = _vit().eval()
    data = tmp_path / "d.npz"
    _npz(data)
    program = torch.export.export(model, (torch.rand(2, 3, SIDE, SIDE),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, tmp_path / "m.pt2")
    result = _cli_audit(["--model", str(tmp_path / "m.pt2")], data, tmp_path, capsys)
    _assert_finite_hessian(result, "scaled_dot_product")
    # the nn.Module (no --arch builds this config): the library path the CLI runs
    arrays = np.load(data)
    ds = GroupedDataset(x=torch.as_tensor(arrays["x"]), y=torch.as_tensor(arrays["y"]),
                        group=arrays["group"].astype(object), name="d", sha256="0" * 64)
    r = audit(copy.deepcopy(model), ds, sparsities=[0.5], diagnostics=True, seed=0, device="cpu").to_dict()
    _assert_finite_hessian(r, "scaled_dot_product")


# ---- degrade per factor ------------------------------------------------------------------------------------
def _boom(*args, **kwargs):
    raise RuntimeError("forced failure")


FACTORS = {   # factor -> (what to break, the DIAG keys that must be null, the words in the warning)
    "group gradient norm": ("group_pass", ("group_grad_norm",), "group gradient norm ‖g_a‖"),
    "per-sample gradient norms": ("per_sample_grad_norms", ("grad_norm_mean",), "per-sample gradient norms"),
    "margins": ("RowOutputs.add+output_stats", ("margin_mean", "uncertainty_mean"), "margins and uncertainty"),
    "hessian": ("max_eigenvalue", tuple(k for k in DIAG_KEYS if k.startswith("hessian")), "Hessian"),
    "boundary": ("boundary_distances", ("boundary_distance_mean",), "boundary distance"),
}


def _table(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return GroupedDataset(x=x, y=y, group=np.array(["a", "b"] * (n // 2), dtype=object), name="t", sha256="0" * 64)


def _break(monkeypatch, what: str):
    for target in what.split("+"):
        if target == "RowOutputs.add":
            monkeypatch.setattr(_run.RowOutputs, "add", _boom)
        else:
            monkeypatch.setattr(_run, target, _boom)


@pytest.mark.parametrize("factor", list(FACTORS))
def test_one_factor_failing_keeps_every_other_figure_and_the_levels(factor, monkeypatch):
    what, null, words = FACTORS[factor]
    m, _, _ = _mlp(torch.float32)
    data = _table()
    cfg = {**FAST, "boundary": True, "boundary_rows": 4}
    ok = audit(copy.deepcopy(m), data, sparsities=[0.5], diagnostics=cfg, seed=0, device="cpu")
    _break(monkeypatch, what)
    r = audit(copy.deepcopy(m), data, sparsities=[0.5], diagnostics=cfg, seed=0, device="cpu")
    assert [lv.groups["a"].accuracy for lv in r.levels] == [lv.groups["a"].accuracy for lv in ok.levels]
    for which in ("dense", "levels"):
        got = r.diagnostics[which] if which == "dense" else r.diagnostics[which][0]
        want = ok.diagnostics[which] if which == "dense" else ok.diagnostics[which][0]
        for g in ("a", "b"):
            assert set(got[g]) == set(DIAG_KEYS)
            for k in DIAG_KEYS:
                if k in null:
                    assert got[g][k] is None, (factor, k)
                elif want[g][k] is None or isinstance(want[g][k], (str, bool)):
                    assert got[g][k] == want[g][k]
                else:
                    assert got[g][k] == pytest.approx(want[g][k], rel=1e-6, abs=1e-12), (factor, which, g, k)
    said = [w for w in r.warnings if w.startswith("diagnostics") and "forced failure" in w]
    assert said and said[0].startswith(f"diagnostics: {words} not computed for group(s) a, b"), r.warnings
    assert all(" is null" in s or " are null" in s for s in said)
    json.dumps(r.to_dict(), allow_nan=False)


def test_whole_model_diagnostics_failing_keeps_the_audit(monkeypatch):
    m, _, _ = _mlp(torch.float32)
    monkeypatch.setattr(_run, "diagnose", _boom)
    r = audit(copy.deepcopy(m), _table(), sparsities=[0.5], diagnostics=FAST, seed=0, device="cpu")
    assert r.levels[0].groups["a"].accuracy is not None
    assert all(v is None for d in [r.diagnostics["dense"], *r.diagnostics["levels"]] for g in d.values()
               for v in g.values())
    assert any("no diagnostics computed" in w and "forced failure" in w for w in r.warnings)


def test_cli_exit_0_when_the_hessian_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_run, "max_eigenvalue", _boom)
    data = tmp_path / "d.npz"
    _npz(data)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=K, width_mult=0.25).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    args = ["--model", str(tmp_path / "w.safetensors"), "--arch", "mobilenet_v3_small", "--num-classes", str(K),
            "--arch-arg", "width_mult=0.25"]
    r = _cli_audit(args, data, tmp_path, capsys)
    assert r["diagnostics"]["dense"]["a"]["hessian_max_eig"] is None
    assert r["diagnostics"]["dense"]["a"]["grad_norm_mean"] > 0
    assert any("Hessian not computed" in w and "forced failure" in w for w in r["warnings"])


def test_diagnose_model_in_isolation_records_method_per_group():
    m, x, y = _mlp(torch.float32)
    data = _table()
    d = diagnose(LoadedModel.from_module(m, name="mlp"), data, config=DiagnosticsConfig(**FAST))
    for g in ("a", "b"):
        assert d.groups[g]["hessian_method"] == "double_backward+forward_over_forward"
        assert d.groups[g]["hessian_hvp_rel_error"] is None


def test_fewer_probes_only_when_the_standard_error_is_already_small():
    m, x, y = _mlp(torch.float64)
    op = HessianOperator(m, x, y)
    full = trace(op, probes=10, seed=4)
    loose = trace(op, probes=10, seed=4, rel_se=1e9)          # any SE is "small": stops at the minimum
    tight = trace(op, probes=10, seed=4, rel_se=1e-12)        # never small enough: every probe
    assert loose.probes == _hessian.MIN_PROBES and loose.samples == full.samples[:_hessian.MIN_PROBES]
    assert tight.probes == 10 and tight.value == full.value
    assert full.se <= 1e9 * abs(full.value)
    r = 0.5 * full.se / abs(full.value)                      # stops once se <= r·|mean|, never before 4 probes
    mid = trace(op, probes=10, seed=4, rel_se=r)
    assert _hessian.MIN_PROBES <= mid.probes <= 10 and (mid.probes == 10 or mid.se <= r * abs(mid.value))
    for bad in (0, -1.0, True, "x"):
        with pytest.raises(InputError, match="hutchinson_rel_se"):
            DiagnosticsConfig(hutchinson_rel_se=bad)
    d = diagnose(LoadedModel.from_module(_mlp(torch.float32)[0], name="mlp"), _table(),
                 config=DiagnosticsConfig(**{**FAST, "hutchinson_probes": 6}, hutchinson_rel_se=1e9))
    assert all(d.details[g]["probes"] == _hessian.MIN_PROBES for g in ("a", "b"))
