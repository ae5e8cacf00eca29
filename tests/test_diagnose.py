"""Diagnostics: every estimator against a slow, obvious reference on a tiny model, then end to end.

Exact Hessians come from ``torch.autograd.functional.hessian`` on a tiny MLP in float64 (31 parameters).
"""

import copy
import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call

from fairprune.zoo.archs import MLP, SmallCNN
from fairprune.engine.audit import AuditSpec, audit, run_spec
from fairprune.run.cli import main
from fairprune.data import GroupedDataset
from fairprune.engine.diagnose import (DIAG_KEYS, MIN_GROUPS, SAMPLE_COLUMNS, DiagnosticsConfig, HessianOperator,
                                boundary_distances, diagnose, factor_correlations, factor_values,
                                group_grad_norms, hvp_double_backward, hvp_forward_over_reverse,
                                hvp_reverse_over_forward, max_eigenvalue,
                                theory_terms, trace, uncertainty)
from fairprune.engine.diagnose import compare_groups, theory_reading
from fairprune.engine.diagnose._hessian import flatten
from fairprune.core.errors import Cancelled, InputError
from fairprune.engine.evaluate import loss_fn
from fairprune.zoo import LoadedModel

from conftest import make_table, train_mlp


# ---- a tiny model with an exact Hessian ---------------------------------------------------------------
def _tiny(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double().eval()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return m, x, y


def _exact_hessian(m, x, y):
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def f(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            params[n] = theta[i:i + k].reshape(s)
            i += k
        return loss_fn(functional_call(m, params, (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


def _unflatten(m, vec):
    out, i = [], 0
    for p in m.parameters():
        out.append(vec[i:i + p.numel()].reshape(p.shape))
        i += p.numel()
    return tuple(out)


def test_hvp_matches_exact_hessian_both_ways():
    m, x, y = _tiny()
    H = _exact_hessian(m, x, y)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    for fn in (hvp_double_backward, hvp_forward_over_reverse, hvp_reverse_over_forward):
        hv = flatten(fn(m, x, y, _unflatten(m, v)))
        assert torch.allclose(hv, H @ v, atol=1e-10), fn.__name__


def test_torch_func_products_equal_double_backward_on_a_cnn():
    torch.manual_seed(1)
    m = SmallCNN(1, 10, channels=(4, 8), hidden=16).eval()
    x, y = torch.rand(12, 1, 12, 12), torch.randint(0, 10, (12,))
    db = HessianOperator(m, x, y, method="double_backward")                      # one chunk, graph kept
    v = db.randn(torch.Generator().manual_seed(0))
    b = flatten(db.matvec(v))
    assert torch.allclose(flatten(db.matvec(v)), b)          # the kept graph gives the same product again
    for method in ("forward_over_reverse", "reverse_over_forward"):
        op = HessianOperator(m, x, y, method=method, chunk_size=5)               # 3 chunks, weighted
        assert torch.allclose(flatten(op.matvec(v)), b, rtol=1e-4, atol=1e-5 * float(b.abs().max())), method
        assert op.method == method and op.fallback is None


def test_auto_picks_by_a_fixed_rule():
    m = MLP(4, 3, hidden=(8,)).eval()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    assert HessianOperator(m, x, y).method == "double_backward"                 # fits one chunk: graph kept
    assert HessianOperator(m, x, y, chunk_size=4).method == "reverse_over_forward"
    assert HessianOperator(m, x, y, cache=False).method == "reverse_over_forward"


def test_hutchinson_matches_exact_trace_within_3_se():
    m, x, y = _tiny()
    exact = float(torch.trace(_exact_hessian(m, x, y)))
    est = trace(HessianOperator(m, x, y), probes=100, seed=3)
    assert est.se > 0
    assert abs(est.value - exact) <= 3 * est.se, (est.value, exact, est.se)


def test_power_iteration_matches_largest_eigenvalue_within_1_percent():
    m, x, y = _tiny()
    top = float(torch.linalg.eigvalsh(_exact_hessian(m, x, y)).max())
    est = max_eigenvalue(HessianOperator(m, x, y), iterations=2000, tol=1e-12, seed=0, se_parts=1)
    assert abs(est.value - top) <= 0.01 * abs(top), (est.value, top)


def test_power_iteration_finds_the_largest_not_the_most_negative_eigenvalue():
    # Theorem 1 needs the largest eigenvalue; on a matrix whose dominant eigenvalue is negative,
    # plain power iteration would return that one.
    class Fixed:
        def __init__(self, A):
            self.A, self.n_rows = A, 1

        def project(self, v):
            return v

        def randn(self, g):
            return (torch.randn(self.A.shape[0], generator=g, dtype=torch.float64),)

        def matvec(self, v, rows=None):
            return (self.A @ v[0],)

    A = torch.diag(torch.tensor([-10.0, 3.0, 1.0, 0.5], dtype=torch.float64))
    est = max_eigenvalue(Fixed(A), iterations=500, tol=1e-12, se_parts=1)
    assert abs(est.value - 3.0) < 0.03


def test_masked_hessian_is_restricted_to_unpruned_coordinates():
    m, x, y = _tiny()
    H = _exact_hessian(m, x, y)
    g = torch.Generator().manual_seed(0)
    masks = {"0.weight": torch.rand(4, 3, generator=g) > 0.5, "2.weight": torch.rand(3, 4, generator=g) > 0.3}
    keep = torch.cat([masks[n].reshape(-1) if n in masks else torch.ones(p.numel(), dtype=torch.bool)
                      for n, p in m.named_parameters()])
    sub = H[keep][:, keep]
    op = HessianOperator(m, x, y, masks=masks)
    assert op.dimension == int(keep.sum())
    v = torch.randn(H.shape[0], dtype=torch.float64)
    hv = flatten(op.matvec(_unflatten(m, v)))
    assert torch.all(hv[~keep] == 0)
    assert torch.allclose(hv[keep], sub @ v[keep], atol=1e-10)
    top = float(torch.linalg.eigvalsh(sub).max())
    eig = max_eigenvalue(op, iterations=2000, tol=1e-12, se_parts=1)
    assert abs(eig.value - top) <= 0.01 * abs(top)
    assert torch.all(flatten(eig.vector)[~keep] == 0)
    tr = trace(op, probes=100, seed=5)
    assert abs(tr.value - float(torch.trace(sub))) <= 3 * tr.se
    # and it differs from the unrestricted figures, so the test can tell them apart
    assert abs(top - float(torch.linalg.eigvalsh(H).max())) > 0.01 * abs(top)


def test_auto_falls_back_to_double_backward_and_says_why():
    m = MLP(4, 3, hidden=(8,)).eval()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    scripted = torch.jit.script(m)
    op = HessianOperator(scripted, x, y, method="auto", chunk_size=4)
    ref = HessianOperator(m, x, y, method="double_backward")
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        v = op.randn(g)
        assert torch.allclose(flatten(op.matvec(v)), flatten(ref.matvec(v)), atol=1e-6)
    assert op.method == "double_backward"
    assert op.fallback.startswith("reverse-over-forward failed (RuntimeError")
    with pytest.raises(RuntimeError):
        HessianOperator(scripted, x, y, method="reverse_over_forward").matvec(v)   # asked for: no silent fallback
    with pytest.raises(ValueError, match="hvp method must be one of"):
        HessianOperator(m, x, y, method="exact")


# ---- first order, outputs ----------------------------------------------------------------------------
def _table_data(df):
    feats = [c for c in df.columns if c.startswith("f")]
    return GroupedDataset(x=torch.tensor(df[feats].to_numpy(np.float32)), y=torch.tensor(df["label"].to_numpy()),
                          group=df["group"].to_numpy().astype(object), name="table", sha256="0" * 64)


@pytest.fixture(scope="module")
def table():
    df = make_table(n=300, seed=2)
    return df, train_mlp(df, epochs=40), _table_data(df)


def test_group_grad_norm_is_the_norm_of_the_mean_gradient(table):
    df, model, data = table
    lm = LoadedModel.from_module(copy.deepcopy(model), name="mlp")
    masks = {"net.0.weight": torch.rand(32, 4, generator=torch.Generator().manual_seed(0)) > 0.5}
    for mk in (None, masks):
        got = group_grad_norms(lm, data, batch_size=64, masks=mk)   # batches mix groups
        for g in ("a", "b"):
            rows = torch.as_tensor(np.flatnonzero(df["group"].to_numpy() == g))
            lm.module.zero_grad()
            loss_fn(lm.module(data.x[rows]), data.y[rows]).backward()
            sq = 0.0
            for n, p in lm.module.named_parameters():
                gr = p.grad if mk is None or n not in mk else p.grad * mk[n]
                sq += float(gr.double().pow(2).sum())
            assert got[g] == pytest.approx(sq ** 0.5, rel=1e-5)
    # the mean of per-sample norms is larger (triangle inequality): they are different figures
    d = diagnose(lm, data, hessian=False)
    assert all(d.groups[g]["grad_norm_mean"] > d.groups[g]["group_grad_norm"] for g in ("a", "b"))


def test_uncertainty_and_margin_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [10.0, -10.0, -10.0]])
    p = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    by_hand = [sum(float(q) * (1 - float(q)) for q in row) for row in p]
    assert uncertainty(logits).tolist() == pytest.approx(by_hand, rel=1e-6)
    assert by_hand[1] == pytest.approx(2 / 3)                 # the three classes tie: 1 - 1/K
    z = torch.tensor([[0.0], [2.0]])                            # one logit: 2σ(1 - σ)
    s = torch.sigmoid(z[:, 0])
    assert uncertainty(z).tolist() == pytest.approx((2 * s * (1 - s)).tolist(), rel=1e-6)


def test_diagnose_per_sample_and_group_figures(table):
    df, model, data = table
    lm = LoadedModel.from_module(copy.deepcopy(model), name="mlp")
    d = diagnose(lm, data, config=DiagnosticsConfig(hessian_rows=40, power_iterations=5, hutchinson_probes=3))
    s = d.samples
    assert list(s["index"]) == list(range(len(df)))
    logits = lm.module(data.x).detach()
    p = logits.softmax(1)
    y = data.y
    assert np.allclose(s["loss"], nn.functional.cross_entropy(logits, y, reduction="none").numpy(), atol=1e-5)
    assert np.allclose(s["uncertainty"], (p * (1 - p)).sum(1).numpy(), atol=1e-6)
    for g in ("a", "b"):
        rows = s["group"] == g
        assert d.groups[g]["margin_mean"] == pytest.approx(s.loc[rows, "margin"].mean())
        assert d.groups[g]["grad_norm_mean"] == pytest.approx(s.loc[rows, "grad_norm"].mean())
        assert set(d.groups[g]) == set(DIAG_KEYS)
        assert d.groups[g]["hessian_max_eig"] > 0 and d.groups[g]["hessian_trace_se"] > 0
        assert d.groups[g]["boundary_distance_mean"] is None
        assert d.details[g]["rows"] == min(40, int(rows.sum()))


def test_sample_table_takes_outputs_from_the_gradient_norm_pass(table):
    """The per-sample CSV pays for one pass: its loss, prediction and margin come from the gradient-norm pass's own
    forward (no group pass, no second forward), in row order, and equal the model's outputs."""
    df, model, data = table
    lm = LoadedModel.from_module(copy.deepcopy(model), name="mlp")
    full = diagnose(lm, data, hessian=False, batch_size=64)
    lean = diagnose(lm, data, hessian=False, group_norms=False, batch_size=64)
    for col in ("loss", "margin", "uncertainty", "grad_norm"):
        assert np.allclose(lean.samples[col], full.samples[col], rtol=1e-5, atol=1e-7), col
    assert (lean.samples["pred"] == full.samples["pred"]).all()
    logits = lm.module(data.x).detach()
    assert (lean.samples["pred"].to_numpy() == logits.argmax(1).numpy()).all()
    assert all(lean.groups[g]["group_grad_norm"] is None for g in ("a", "b"))
    assert all(full.groups[g]["group_grad_norm"] > 0 for g in ("a", "b"))


def test_boundary_distance_of_a_linear_model_is_known():
    # For logits z = Wx + b, moving x by ε along -sign(w_t - w_o) lowers z_t - z_o by ε‖w_t - w_o‖₁, the
    # fastest any L∞ step can: the distance to the boundary is (z_t - z_o) / ‖w_t - w_o‖₁ (two classes).
    torch.manual_seed(0)
    lin = nn.Linear(5, 2).eval()
    x = torch.randn(6, 5)
    lm = LoadedModel.from_module(lin, name="linear")
    dist, censored = boundary_distances(lm, x, max_eps=20.0, steps=4000)
    with torch.no_grad():
        z = lin(x)
    t = z.argmax(1)
    gap = (z.gather(1, t[:, None])[:, 0] - z.gather(1, (1 - t)[:, None])[:, 0]).numpy()
    w = (lin.weight[0] - lin.weight[1]).abs().sum().item()
    assert not censored.any()
    assert dist == pytest.approx(gap / w, abs=2 * 20.0 / 4000)
    tiny, cens = boundary_distances(lm, x, max_eps=1e-3, steps=4)
    assert cens.all() and np.allclose(tiny, 1e-3)             # censored rows count as max_eps


# ---- the reading --------------------------------------------------------------------------------------
def _dense_diag(values: dict[str, float]):
    return {g: {"grad_norm_mean": v, "group_grad_norm": 1.0, "hessian_max_eig": 2.0, "hessian_trace": 3.0,
                "margin_mean": 0.5, "uncertainty_mean": 0.1} for g, v in values.items()}


def test_factor_reading_names_the_factor_that_ranks_the_drops():
    groups = [f"g{i}" for i in range(6)]
    grad = dict(zip(groups, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    drops = dict(zip(groups, [0.01, 0.02, 0.05, 0.06, 0.2, 0.3]))      # same order as the gradient norms
    dense = _dense_diag(grad)
    for i, g in enumerate(groups):       # the other factors are constant or unrelated
        dense[g]["margin_mean"] = [0.5, 0.2, 0.9, 0.1, 0.6, 0.4][i]
    sizes = dict(zip(groups, [100, 90, 300, 20, 50, 200]))
    corr = factor_correlations(factor_values(dense, sizes), drops)
    assert corr["spearman"]["grad_norm_mean"] == pytest.approx(1.0)
    assert corr["spearman"]["hessian_max_eig"] is None        # constant: undefined, not 0
    assert corr["strongest"] == "grad_norm_mean"
    assert corr["sentence"] == "Groups with larger gradient norms lost more here: Spearman 1.0 over 6 groups."


def test_factor_reading_negative_and_weak():
    groups = [f"g{i}" for i in range(5)]
    drops = dict(zip(groups, [0.1, 0.2, 0.3, 0.4, 0.5]))
    sizes = dict(zip(groups, [500, 400, 300, 200, 100]))        # smaller groups lose more (Prop. 1)
    dense = _dense_diag(dict(zip(groups, [3.0, 1.0, 4.0, 1.5, 2.0])))
    corr = factor_correlations(factor_values(dense, sizes), drops)
    assert corr["spearman"]["group_size"] == pytest.approx(-1.0)
    assert corr["sentence"] == "Groups with more samples lost less here: Spearman -1.0 over 5 groups."
    weak = factor_correlations(factor_values(_dense_diag(dict(zip(groups, [3.0, 1.0, 5.0, 2.0, 4.0]))),
                                             dict.fromkeys(groups, 10)), drops)
    assert weak["sentence"].startswith("No single factor orders the groups' accuracy drops well here")
    loose = factor_correlations(factor_values(_dense_diag(dict(zip(groups, [1.0, 3.0, 2.0, 5.0, 4.0]))),
                                              dict.fromkeys(groups, 10)), drops)
    assert loose["spearman"]["grad_norm_mean"] == pytest.approx(0.8)
    assert loose["sentence"] == ("Groups with larger gradient norms lost more here: Spearman 0.8 over 5 groups; "
                                 "with 5 groups this could be chance (p = 0.10).")


def test_factor_reading_compares_three_groups_directly():
    groups = ["a", "b", "c"]
    corr = factor_correlations(factor_values(_dense_diag(dict(zip(groups, [1.0, 2.0, 3.0]))), dict.fromkeys(groups, 5)),
                               dict(zip(groups, [0.1, 0.2, 0.3])))
    assert MIN_GROUPS == 4
    assert all(v is None for v in corr["spearman"].values())
    assert corr["sentence"] == (
        "With 3 groups a rank correlation cannot judge (it needs at least 4), so the group that lost most is compared "
        "with the one that lost least. Group c lost more accuracy than group a (30.0 vs 10.0 points). Group c has a "
        "larger mean gradient norm (3 vs 1, 3.0×), the same mean margin (0.5) and the same loss curvature λ_max (2): "
        "mean gradient norm as Theorem 1 expects of the group that loses more; mean margin and loss curvature λ_max "
        "cannot tell the two groups apart.")


def test_two_groups_compared_in_words_with_their_uncertainty():
    """Issue 14.10: with two groups, which has the larger gradient norm, the smaller margin, the larger λ_max, by
    how much, and λ_max's difference judged against its standard errors."""
    dense = {"inverted": {"grad_norm_mean": 0.83, "margin_mean": 0.41, "hessian_max_eig": 12.4},
             "standard": {"grad_norm_mean": 0.29, "margin_mean": 0.78, "hessian_max_eig": 4.0}}
    drops = {"inverted": 0.357, "standard": 0.042}
    values = factor_values(dense, {})
    clear = compare_groups(values, drops, {"hessian_max_eig_se": {"inverted": 0.8, "standard": 0.3}})
    assert clear == ("Group inverted lost more accuracy than group standard (35.7 vs 4.2 points). Group inverted has "
                     "a larger mean gradient norm (0.83 vs 0.29, 2.9×), a smaller mean margin (0.41 vs 0.78, 1.9×) "
                     "and a larger loss curvature λ_max (12.4 ± 0.8 vs 4 ± 0.3, ± SE, 3.1×: beyond the "
                     "uncertainty): all as Theorem 1 expects of the group that loses more.")
    # the stored reading (no standard errors at hand) says the same without them
    assert factor_correlations(values, drops)["sentence"] == clear.replace(" ± 0.8", "").replace(" ± 0.3, ± SE", "") \
        .replace(": beyond the uncertainty", "")
    # λ_max within 2 SE of each other, a gradient norm the other way
    dense["standard"].update(hessian_max_eig=11.9, grad_norm_mean=0.9)
    mixed = compare_groups(factor_values(dense, {}), drops, {"hessian_max_eig_se": {"inverted": 0.8, "standard": 0.9}})
    assert mixed.endswith("a smaller mean gradient norm (0.83 vs 0.9), a smaller mean margin (0.41 vs 0.78, 1.9×) and "
                          "a larger loss curvature λ_max (12.4 ± 0.8 vs 11.9 ± 0.9, ± SE: within the uncertainty): "
                          "mean margin as Theorem 1 expects, mean gradient norm the other way; loss curvature λ_max "
                          "cannot tell the two groups apart."), mixed
    assert compare_groups(values, {"inverted": 0.1, "standard": 0.1}) == \
        "All 2 groups lost the same accuracy here, so no factor can explain a difference."


def test_theory_reading_says_the_bound_is_loose_and_what_to_read():
    dense = {"inverted": {"group_grad_norm": 0.5, "hessian_max_eig": 12.4},
             "standard": {"group_grad_norm": 0.1, "hessian_max_eig": 4.0}}
    text = theory_reading(theory_terms(dense, {"inverted": 0.3, "standard": 0.05}, 2.0))
    # bounds 1 + 24.8 = 25.8 and 0.2 + 8 = 8.2: 86× and 164× (160× to 2 figures) the losses; curvature 96%, 98%
    assert text == ("The bound is an upper limit, and a loose one: it is 86× to 160× the measured excessive loss R(a), "
                    "so read it for which term and which group it points at, not for its size. The curvature term "
                    "½λ_max·d² dominates for every group (96–98% of the bound): the weights moved far enough that "
                    "the loss surface's sharpness matters more than its slope. Group inverted has the largest gradient "
                    "and curvature terms, and it is also the group whose measured loss grew most: the bound ranks the "
                    "groups as measured.")
    swapped = theory_reading(theory_terms(dense, {"inverted": 0.05, "standard": 0.3}, 0.01))
    assert "The gradient term ‖g_a‖·d dominates for every group" in swapped
    assert "but group standard's measured loss grew most: here the bound does not rank the groups as measured" in swapped
    assert theory_reading(theory_terms({"a": {"group_grad_norm": 1.0, "hessian_max_eig": None}}, {"a": 0.1}, 1.0)) \
        .startswith("Theorem 1's bound could not be computed here")


def test_theory_terms():
    dense = {"a": {"group_grad_norm": 2.0, "hessian_max_eig": 10.0}, "b": {"group_grad_norm": 1.0, "hessian_max_eig": None}}
    t = theory_terms(dense, {"a": 0.3, "b": 0.1}, 0.5)
    assert t["a"] == {"grad_term": 1.0, "hessian_term": 1.25, "bound": 2.25, "excessive_loss": 0.3, "weight_distance": 0.5}
    assert t["b"]["hessian_term"] is None and t["b"]["bound"] is None


# ---- the pipeline ---------------------------------------------------------------------------------------
FAST = {"hessian_rows": 32, "power_iterations": 4, "hutchinson_probes": 2}


def test_audit_diagnostics_section_on_a_table(table):
    df, model, data = table
    calls = []
    r = audit(copy.deepcopy(model), data, sparsities=[0.5, 0.8], diagnostics=FAST,
              progress=lambda d, t, m: calls.append((d, t, m)))
    dg = r.diagnostics
    assert set(dg) >= {"dense", "levels", "theory", "factors", "flips", "distributions", "details"}
    assert len(dg["levels"]) == 2 and all(set(lv) == {"a", "b"} for lv in dg["levels"])
    assert all(set(dg["dense"][g]) == set(DIAG_KEYS) for g in ("a", "b"))
    total = calls[-1][1]
    assert [c[0] for c in calls] == list(range(1, total + 1))   # every step reported, in order
    assert total == 3 + 3 * (1 + 2)                           # dense + 2 levels, each: pass + 2 groups
    # Theorem 1's distance is over all parameters: here only prunable weights move, so it equals the level's
    for lv, th in zip(r.levels, dg["theory"]):
        assert th["a"]["weight_distance"] == pytest.approx(lv.weight_distance)
        assert th["a"]["excessive_loss"] == pytest.approx(lv.groups["a"].excessive_loss)
        assert th["a"]["grad_term"] == pytest.approx(dg["dense"]["a"]["group_grad_norm"] * lv.weight_distance)
    # flips: right under the dense model, wrong under the pruned one
    lm = LoadedModel.from_module(copy.deepcopy(model), name="m")
    d0 = diagnose(lm, data, hessian=False)
    for lv in dg["flips"]["levels"]:
        for g, f in lv["groups"].items():
            assert all(d0.samples.loc[i, "correct"] for i in f["indices"])
            assert len(f["indices"]) == f["n"] <= 200
        k = lv["precision_at_k"]
        assert k["k"] == lv["n_flips"] == sum(f["n"] for f in lv["groups"].values())
    json.dumps(r.to_dict(), allow_nan=False)                   # serialisable, no NaN
    assert dg["details"]["config"]["hessian_rows"] == 32


def test_same_audit_same_diagnostics(table):
    df, model, data = table
    a, b = (audit(copy.deepcopy(model), data, sparsities=[0.7], diagnostics=FAST).diagnostics for _ in range(2))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_flip_indices_are_positions_in_the_input_with_a_split(table):
    df, model, data = table
    split = np.where(np.arange(len(df)) % 3 == 0, "train", "test").astype(object)
    from dataclasses import replace

    r = audit(copy.deepcopy(model), replace(data, split=split), sparsities=[0.9], diagnostics=FAST)
    test_rows = set(np.flatnonzero(split == "test").tolist())
    flips = r.diagnostics["flips"]
    idx = [i for f in flips["levels"][0]["groups"].values() for i in f["indices"]]
    idx += [i for g in flips["risk"]["grad_norm"].values() for i in g]
    assert idx and set(idx) <= test_rows


def test_run_spec_with_diagnostics_and_cancel(table, tmp_path):
    df, model, data = table
    from safetensors.torch import save_file

    csv_path, weights = tmp_path / "t.csv", tmp_path / "m.safetensors"
    df.to_csv(csv_path, index=False)
    save_file(model.state_dict(), str(weights))
    spec = AuditSpec(sparsities=(0.5,), model=str(weights), data=str(csv_path), arch="mlp", num_classes=3,
                     arch_args={"in_features": 4, "hidden": (32, 16)}, ignore=("sex",), diagnostics=FAST)
    spec = AuditSpec.from_dict(json.loads(json.dumps(spec.to_dict())))   # what the worker stores and reads
    r = run_spec(spec)
    assert set(r.diagnostics["dense"]) == {"a", "b"}
    seen = []

    def cancel():
        return any("diagnostics" in m for m in seen)

    with pytest.raises(Cancelled):
        run_spec(spec, progress=lambda d, t, m: seen.append(m), cancel=cancel)
    with pytest.raises(InputError, match="unknown diagnostics option"):
        audit(copy.deepcopy(model), data, sparsities=[0.5], diagnostics={"probes": 3})


# ---- the CLI on the MNIST demo ----------------------------------------------------------------------------
def test_cli_audit_diagnostics_mnist_demo_shows_the_papers_finding(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["audit", "--demo", "mnist", "--sparsity", "0.9", "--diagnostics", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    dg = r["diagnostics"]
    dense, level = dg["dense"], dg["levels"][0]
    for diag in (dense, level):
        assert set(diag) == {"inverted", "standard"}
        assert all(set(d) == set(DIAG_KEYS) for d in diag.values())
    # the paper's finding: the under-represented population has larger gradient norms and smaller margins
    assert dense["inverted"]["grad_norm_mean"] > dense["standard"]["grad_norm_mean"]
    assert dense["inverted"]["margin_mean"] < dense["standard"]["margin_mean"]
    assert dense["inverted"]["group_grad_norm"] > dense["standard"]["group_grad_norm"]
    # ... and it is the one pruning hurts
    assert r["levels"][0]["groups"]["inverted"]["accuracy_drop"] > r["levels"][0]["groups"]["standard"]["accuracy_drop"]
    sentence = dg["factors"]["levels"][0]["sentence"]   # two groups: compared directly, in words (issue 14.10)
    assert sentence.startswith("Group inverted lost more accuracy than group standard"), sentence
    assert "a larger mean gradient norm" in sentence and "a smaller mean margin" in sentence, sentence
    flips = dg["flips"]["levels"][0]
    assert flips["groups"]["inverted"]["n"] > flips["groups"]["standard"]["n"]
    assert flips["precision_at_k"]["grad_norm"] > flips["precision_at_k"]["random"]


def test_cli_diagnose_csv_mnist_demo(tmp_path, capsys):
    out = tmp_path / "s.csv"
    code = main(["diagnose", "--demo", "mnist", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    with open(out, newline="") as fh:
        header = next(csv.reader(fh))
    assert header == list(SAMPLE_COLUMNS) == ["index", "group", "label", "pred", "loss", "grad_norm", "margin"]
    s = pd.read_csv(out)
    from fairprune.data.demos import demo_dataset

    full = demo_dataset("mnist")
    test_rows = np.flatnonzero(full.split == "test")
    assert len(s) == len(test_rows)
    assert s["index"].tolist() == test_rows.tolist()            # positions in the input
    assert (s["label"].to_numpy() == full.y.numpy()[test_rows]).all()
    assert (s["grad_norm"] > 0).all() and s["margin"].between(-1, 1).all()


def test_cli_diagnose_pruned_with_boundary_and_errors(table_files, tmp_path, capsys):
    csv_path, weights, df, _ = table_files
    out = tmp_path / "s.csv"
    base = ["diagnose", "--model", weights, "--arch", "mlp", "--num-classes", "3", "--arch-arg", "in_features=4",
            "--arch-arg", "hidden=32,16", "--data", csv_path, "--ignore", "sex", "--out", out, "--quiet"]
    code = main([str(a) for a in base + ["--sparsity", "0.9", "--boundary", "5"]])
    assert code == 0, capsys.readouterr().err
    s = pd.read_csv(out)
    assert list(s.columns) == list(SAMPLE_COLUMNS) + ["boundary_distance"]
    assert len(s) == len(df) and s["boundary_distance"].notna().sum() == 10    # 5 rows in each of 2 groups
    dense = tmp_path / "d.csv"
    assert main([str(a) for a in base[:-3] + ["--out", dense, "--quiet"]]) == 0
    assert not np.allclose(pd.read_csv(dense)["grad_norm"], s["grad_norm"])   # the pruned model differs
    capsys.readouterr()
    code = main([str(a) for a in base + ["--sparsity", "1.5"]])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith("error: --sparsity must be a fraction") and len(err.strip().splitlines()) == 1


def test_cli_diagnose_prunes_exactly_as_audit_does(table_files, tmp_path, capsys):
    """diagnose --sparsity S prunes without evaluating the audit's levels, yet its rows are the audit's pruned model:
    each group's accuracy from the CSV equals the audit's at S."""
    csv_path, weights, df, _ = table_files
    model = ["--model", weights, "--arch", "mlp", "--num-classes", "3", "--arch-arg", "in_features=4",
             "--arch-arg", "hidden=32,16", "--data", csv_path, "--ignore", "sex", "--quiet"]
    for method in ("global_magnitude", "random"):
        out, res = tmp_path / f"{method}.csv", tmp_path / f"{method}.json"
        assert main([str(a) for a in ["diagnose", *model, "--sparsity", "0.8", "--method", method, "--out", out]]) == 0
        assert main([str(a) for a in ["audit", *model, "--sparsity", "0.8", "--method", method, "--out", res]]) == 0
        s = pd.read_csv(out)
        level = json.loads(res.read_text())["levels"][0]["groups"]
        for g, rows in s.groupby(s["group"].astype(str)):
            assert (rows["pred"] == rows["label"]).mean() == pytest.approx(level[g]["accuracy"]), (method, g)
    capsys.readouterr()


# ---- exact or say so (issue 12, part 4) -------------------------------------------------------------------
def test_power_iteration_that_stops_early_says_so_in_diag(table):
    df, model, data = table
    lm = LoadedModel.from_module(copy.deepcopy(model), name="mlp")
    one = diagnose(lm, data, config=DiagnosticsConfig(hessian_rows=32, power_iterations=1, hutchinson_probes=2))
    assert all(one.groups[g]["hessian_max_eig_converged"] is False for g in ("a", "b"))
    assert any("did not converge within 1 products" in w and "a, b" in w for w in one.warnings)
    many = diagnose(lm, data, config=DiagnosticsConfig(hessian_rows=32, power_iterations=200, power_tol=1e-2,
                                                      hutchinson_probes=2))
    assert all(many.groups[g]["hessian_max_eig_converged"] is True for g in ("a", "b"))
    assert not any("did not converge" in w for w in many.warnings)
    assert all(many.details[g]["converged"] for g in ("a", "b"))
    none = diagnose(lm, data, hessian=False)
    assert all(none.groups[g]["hessian_max_eig_converged"] is None for g in ("a", "b"))


class _HardsigmoidMLP(nn.Module):
    """torch has no double backward for hardsigmoid (MobileNetV3's SE gates): no Hessian-vector product works."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Hardsigmoid(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def test_hessian_without_double_backward_falls_back_to_finite_differences(table):
    """Issue 15: where torch has no double backward, "auto" uses finite differences and says so (the per-factor
    degradation when a factor fails outright is tested in test_hessian_fallback.py)."""
    df, _, data = table
    torch.manual_seed(0)
    model = _HardsigmoidMLP().eval()
    with pytest.raises(RuntimeError, match="hardsigmoid"):     # the premise: torch cannot do it (a named method)
        max_eigenvalue(HessianOperator(model, data.x[:8], data.y[:8], method="double_backward"), iterations=2)
    r = audit(copy.deepcopy(model), data, sparsities=[0.5], diagnostics=FAST)
    for diag in (r.diagnostics["dense"], r.diagnostics["levels"][0]):
        for g in ("a", "b"):
            assert diag[g]["hessian_max_eig"] > 0 and diag[g]["hessian_trace"] is not None
            assert diag[g]["hessian_method"] == "finite_difference"
            assert 0 <= diag[g]["hessian_hvp_rel_error"] < 1e-3
            assert diag[g]["grad_norm_mean"] > 0 and diag[g]["group_grad_norm"] > 0     # everything else kept
            assert diag[g]["margin_mean"] is not None
    said = [w for w in r.warnings if "finite-difference" in w]
    assert said and "a, b" in said[0] and "hardsigmoid" in said[0]
    assert not any("not computed" in w for w in r.warnings)
    assert r.levels[0].groups["a"].accuracy is not None
    json.dumps(r.to_dict(), allow_nan=False)


def _weight_norm_mlp():
    """A first linear layer with weight_norm: its parameters reach the layer through other ops."""
    torch.manual_seed(0)
    first = nn.Linear(4, 16)
    torch.nn.utils.parametrizations.weight_norm(first)
    return nn.Sequential(first, nn.Tanh(), nn.Linear(16, 3)).eval()


def test_audit_records_gradient_norm_fallback_in_warnings(table):
    df, _, data = table
    model = _weight_norm_mlp()
    r = audit(copy.deepcopy(model), data, sparsities=[0.5, 0.8], diagnostics=FAST)
    said = [w for w in r.warnings if "per-sample gradient norms" in w]
    assert len(said) == 1, r.warnings                            # dense and both levels: said once
    assert said[0].startswith("diagnostics: per-sample gradient norms: 2 parameter(s)")
    assert "0.parametrizations.weight.original0" in said[0] and "exact" in said[0]
    assert r.to_dict()["warnings"] == r.warnings
    # and the norms are the exact ones
    lm = LoadedModel.from_module(copy.deepcopy(model), name="wn")
    from fairprune.engine.diagnose import per_sample_grad_norms_reference

    d = diagnose(lm, data, hessian=False)
    want = per_sample_grad_norms_reference(lm.module, data.x, data.y).numpy()
    np.testing.assert_allclose(d.samples["grad_norm"].to_numpy(), want, rtol=1e-4)
    assert len(d.warnings) == 1 and d.warnings[0].startswith("per-sample gradient norms")


def test_cli_prints_gradient_norm_fallback(table_files, tmp_path, capsys):
    from fairprune.zoo import save_pt2

    csv_path, _, df, _ = table_files
    model = _weight_norm_mlp()
    pt2 = tmp_path / "wn.pt2"
    save_pt2(model, torch.zeros(4, 4), pt2)
    base = ["--model", str(pt2), "--data", str(csv_path), "--ignore", "sex"]
    capsys.readouterr()
    assert main(["diagnose", *base, "--out", str(tmp_path / "s.csv"), "--quiet"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("warning: per-sample gradient norms: 2 parameter(s)")]
    assert len(lines) == 1 and "original0" in lines[0], err
    out = tmp_path / "r.json"
    assert main(["audit", *base, "--sparsity", "0.5", "--diagnostics", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: diagnostics: per-sample gradient norms: 2 parameter(s)" in err
    assert any("per-sample gradient norms" in w for w in json.loads(out.read_text())["warnings"])
