"""Per-sample gradient norms: every fast path against the slow obvious loop over single samples.

The reference (``per_sample_grad_norms_reference``) runs one forward and one backward per sample and
takes the norm of the parameter gradients (times the masks). The fast path must agree to 1e-3
relative on every model and layer configuration below, without falling back to the loop (its
fallback warning is an error here unless a test expects it).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairprune.zoo.archs import MLP, SmallCNN
from fairprune.data import GroupedDataset
from fairprune.engine.diagnose import _gn_conv
from fairprune.engine.diagnose._gradnorm import (
    per_sample_grad_norms,
    per_sample_grad_norms_batch,
    per_sample_grad_norms_reference,
)
from fairprune.core.errors import Cancelled
from fairprune.zoo import ExportedModule, LoadedModel, load_model, save_pt2

RTOL = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are 0/1: too easy)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                if m.weight is not None:
                    m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def assert_matches(model, x, y, masks=None):
    """Fast == reference to RTOL on every sample, no fallback, no parameter .grad written."""
    want = per_sample_grad_norms_reference(model, x, y, masks=masks)
    module = model.module if isinstance(model, LoadedModel) else model
    for p in module.parameters():
        p.grad = None
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="per-sample gradient norms")   # a fallback fails the test
        got = per_sample_grad_norms_batch(model, x, y, masks=masks)
    assert got.shape == (x.shape[0],) and got.dtype == torch.float64
    assert all(p.grad is None for p in module.parameters())
    assert bool((want > 0).all())
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    return got


def _xy(shape, classes, n, seed=0, integer=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, integer, (n, *shape), generator=g) if integer else torch.randn(n, *shape, generator=g)
    return x, torch.randint(0, classes, (n,), generator=g)


# --- models ------------------------------------------------------------------------------------------------

class ResidualCNN(nn.Module):
    """A torchvision-style basic block: in-place ReLU on a BatchNorm output, ``out += identity``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu(self.bn0(self.stem(x)))
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = self.relu(out)
        return self.head(out.mean((2, 3)))


class ConvStack(nn.Module):
    """One convolution under test, then a small head (so the loss is not linear in its output)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv
        self.head = nn.Linear(conv.out_channels, 3)

    def forward(self, x):
        h = torch.tanh(self.conv(x))
        return self.head(h.flatten(2).mean(2))


CONVS = {
    "stride2_pad1": lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1),
    "pad2_dilation2": lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2),
    "rect_kernel_stride": lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0)),
    "groups2": lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
    "depthwise": lambda: nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False),
    "same_even_kernel": lambda: nn.Conv2d(4, 6, 4, padding="same"),
    "reflect": lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    "circular_stride": lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode="circular"),
    "1x1": lambda: nn.Conv2d(4, 6, 1),
    "valid_to_1x1": lambda: nn.Conv2d(4, 6, 7),          # 7x7 input -> one output position
    "wide_channels": lambda: nn.Conv2d(16, 8, 3, padding=1),   # enough channels for the grouped method
}

METHODS = ("auto", *_gn_conv.METHODS)


@pytest.fixture
def force_method(monkeypatch):
    """Force one convolution method wherever it applies (ghost takes no mask, shift needs stride 1,
    outer one output position); elsewhere the cost model's choice."""
    def force(name):
        if name == "auto":
            return
        real = _gn_conv.conv_method

        def forced(geo, masked):
            return name if _gn_conv.applicable(name, geo, masked) else real(geo, masked)
        monkeypatch.setattr(_gn_conv, "conv_method", forced)
    return force


# --- tests: models ------------------------------------------------------------------------------------------

def test_mlp_multiclass():
    torch.manual_seed(0)
    x, y = _xy((5,), 3, 8)
    assert_matches(MLP(5, 3).eval(), x, y)


def test_binary_single_logit_mlp_uses_bce():
    torch.manual_seed(1)
    x, y = _xy((5,), 2, 8)
    assert_matches(MLP(5, 1).eval(), x, y)
    # by hand: one logit z = w·x + b, BCE with logits: ∂ℓ/∂z = σ(z) − y, so ‖∇‖ = |σ(z) − y|·sqrt(‖x‖² + 1)
    lin = nn.Linear(5, 1)
    z = lin(x)[:, 0].detach()
    want = ((torch.sigmoid(z) - y).abs() * (x.square().sum(1) + 1).sqrt()).double()
    torch.testing.assert_close(per_sample_grad_norms_batch(lin, x, y), want, rtol=1e-5, atol=0)


def test_small_cnn_with_batchnorm():
    torch.manual_seed(2)
    x, y = _xy((1, 28, 28), 10, 6)
    assert_matches(_randomise(SmallCNN()), x, y)


def test_residual_cnn_with_inplace_ops():
    torch.manual_seed(3)
    x, y = _xy((3, 9, 9), 4, 6)
    assert_matches(_randomise(ResidualCNN()), x, y)


def test_inplace_relu_right_after_the_first_layer():
    """VGG-style without BatchNorm: the first layer's output (whose gradient is read off a detached
    copy) is modified in place at once."""
    torch.manual_seed(16)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                          nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8 * 4 * 4, 5),
                          nn.ReLU(inplace=True), nn.Linear(5, 3)).eval()
    x, y = _xy((3, 8, 8), 3, 5)
    assert_matches(model, x, y)


@pytest.mark.parametrize("kind", ["conv", "batchnorm", "linear"])
def test_each_layer_kind_alone(kind):
    """Only one kind of parameter trainable, so a slip in that rule is not drowned by the others."""
    import torchvision

    types = {"conv": nn.Conv2d, "batchnorm": nn.BatchNorm2d, "linear": nn.Linear}
    torch.manual_seed(17)
    for model, shape in ((_randomise(ResidualCNN()), (3, 9, 9)), (_randomise(SmallCNN()), (1, 12, 12)),
                         (_randomise(torchvision.models.resnet18(num_classes=10)), (3, 32, 32))):
        for m in model.modules():
            for p in m.parameters(recurse=False):
                p.requires_grad_(isinstance(m, types[kind]))
        x, y = _xy(shape, 4, 3)
        assert_matches(model, x, y)


def test_torchvision_resnet18():
    import torchvision

    torch.manual_seed(4)
    x, y = _xy((3, 32, 32), 10, 4)
    assert_matches(_randomise(torchvision.models.resnet18(num_classes=10)), x, y)


def test_exported_program_with_dynamic_batch(tmp_path):
    torch.manual_seed(5)
    model = _randomise(SmallCNN())
    x, y = _xy((1, 28, 28), 10, 5)
    save_pt2(model, x, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2")
    assert loaded.kind == "pt2" and loaded.fixed_batch_size is None
    got = assert_matches(loaded, x, y)
    torch.testing.assert_close(got, per_sample_grad_norms_reference(model, x, y), rtol=RTOL, atol=0)
    # masks name the program's parameters (as MaskedModel sees them)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in loaded.module.named_parameters() if p.dim() > 1}
    assert set(masks) >= {"program.features.0.weight", "program.classifier.1.weight"}
    assert_matches(loaded, x, y, masks=masks)


def test_decomposed_exported_program_addmm_convolution_batchnorm():
    """After run_decompositions: addmm(b, a, permute(W)), convolution, _native_batch_norm_legit_no_training."""
    torch.manual_seed(19)
    model = _randomise(SmallCNN())
    x, y = _xy((1, 12, 12), 10, 5)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    graph = program.run_decompositions().module()
    ops = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert {"aten.addmm.default", "aten.convolution.default",
            "aten._native_batch_norm_legit_no_training.default"} <= ops
    got = assert_matches(ExportedModule(graph), x, y)
    torch.testing.assert_close(got, per_sample_grad_norms_reference(model, x, y), rtol=RTOL, atol=0)


def test_exported_program_with_fixed_batch_pads_and_ignores_padding(tmp_path):
    torch.manual_seed(6)
    model = _randomise(SmallCNN())
    x, y = _xy((1, 12, 12), 10, 7)
    torch.export.save(torch.export.export(model, (x[:4],)), str(tmp_path / "fixed.pt2"))
    loaded = load_model(tmp_path / "fixed.pt2")
    assert loaded.fixed_batch_size == 4
    want = per_sample_grad_norms_reference(model, x, y)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="per-sample gradient norms")
        got = per_sample_grad_norms_batch(loaded, x, y)          # 7 rows: one full batch, one padded
        data = GroupedDataset(x=x, y=y, group=np.array(list("aabbbcc"), dtype=object), name="t", sha256="")
        rows = per_sample_grad_norms(loaded, data, batch_size=3)  # batch size follows the program's
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    np.testing.assert_allclose(rows, want.numpy(), rtol=RTOL)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_configurations(name, method, force_method):
    force_method(method)
    torch.manual_seed(7)
    model = ConvStack(CONVS[name]()).eval()
    in_ch = model.conv.in_channels
    x, y = _xy((in_ch, 7, 7), 3, 5)
    assert_matches(model, x, y)
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(p.shape, generator=g) > 0.4 for n, p in model.named_parameters()}
    assert_matches(model, x, y, masks=masks)


@pytest.mark.parametrize("method", METHODS)
def test_conv1d(method, force_method):
    force_method(method)
    torch.manual_seed(8)
    for conv in (nn.Conv1d(3, 5, 3, stride=2, padding=1), nn.Conv1d(3, 6, 4, padding="same", groups=3),
                 nn.Conv1d(3, 5, 3, padding=1, padding_mode="replicate")):
        model = ConvStack(conv).eval()
        x, y = _xy((3, 11), 3, 4)
        assert_matches(model, x, y)
        assert_matches(model, x, y, masks={"conv.weight": torch.rand(conv.weight.shape) > 0.5})


def _geo(c, o, h, *, k=3, stride=1, groups=1, pad=1):
    out = (h + 2 * pad - k) // stride + 1
    return _gn_conv.Geometry(256, c, o, groups, (k, k), (stride, stride), (1, 1), (h + 2 * pad, h + 2 * pad),
                             (out, out))


def test_cost_model_choices():
    # ResNet-18 layer3 on CIFAR (2x2 outputs, K = 256*9): a Gram form; with a mask, never a Gram form
    assert _gn_conv.conv_method(_geo(256, 256, 2), False) == "ghost_shift"
    assert _gn_conv.conv_method(_geo(256, 256, 2), True) == "pairs"
    assert _gn_conv.conv_method(_geo(512, 512, 1), True) == "outer"
    assert _gn_conv.conv_method(_geo(128, 256, 4, stride=2), False) == "ghost_unfold"
    # a 32x32 image with 32 channels: positions² dwarfs out·in; the grouped kernel wins, but not with 3 channels
    assert _gn_conv.conv_method(_geo(32, 32, 32), False) == "grouped"
    assert _gn_conv.conv_method(_geo(3, 32, 32), False) == "mat_shift"
    for method in _gn_conv.METHODS:
        assert _gn_conv.applicable(method, _geo(8, 8, 5), False) == (method != "outer")


# --- masks ----------------------------------------------------------------------------------------------------

def test_masks_exclude_pruned_coordinates():
    import torchvision

    torch.manual_seed(9)
    model = _randomise(torchvision.models.resnet18(num_classes=10))
    x, y = _xy((3, 32, 32), 10, 3)
    g = torch.Generator().manual_seed(2)
    masks = {n: torch.rand(p.shape, generator=g) > 0.7 for n, p in model.named_parameters() if p.dim() > 1}
    masks["bn1.weight"] = torch.rand(model.bn1.weight.shape, generator=g) > 0.5   # any parameter may be masked
    masked = assert_matches(model, x, y, masks=masks)
    dense = per_sample_grad_norms_batch(model, x, y)
    assert bool((masked < dense).all())
    # all-false masks leave only the unmasked parameters
    off = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    torch.testing.assert_close(per_sample_grad_norms_batch(model, x, y, masks=off), torch.zeros(3, dtype=torch.float64))


def test_masked_linear_by_hand():
    """One linear layer, one sample: ∇W = g aᵀ with g = softmax − onehot; the mask keeps one entry."""
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
    x, y = torch.tensor([[3.0, 4.0]]), torch.tensor([0])
    g = torch.tensor([-0.5, 0.5])                       # softmax(0, 0) − onehot(0)
    full = torch.outer(g, x[0]).norm()                  # ‖g‖·‖a‖ = √0.5 · 5
    torch.testing.assert_close(per_sample_grad_norms_batch(lin, x, y), full.double().reshape(1))
    keep = torch.tensor([[False, True], [False, False]])  # only ∂/∂W[0, 1] = −0.5·4
    torch.testing.assert_close(per_sample_grad_norms_batch(lin, x, y, masks={"weight": keep}),
                               torch.tensor([2.0], dtype=torch.float64))


def test_batchnorm_with_a_mean_far_from_zero():
    """Running mean 1e3 with unit spread: γ's gradient Σ g·x − mean·Σ g keeps the tolerance."""
    torch.manual_seed(18)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4, 2)).eval()
    with torch.no_grad():
        model[0].bias.fill_(1e3)
        model[1].running_mean.fill_(1e3)
    for p in model.parameters():
        p.requires_grad_(p is model[1].weight)
    x, y = _xy((2, 4, 4), 2, 4)
    assert_matches(model, x, y)


# --- other layers, shared weights, fallback ----------------------------------------------------------------

class Sequence(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 5, padding_idx=0)
        self.ln = nn.LayerNorm(5)
        self.proj = nn.Linear(5, 6)               # applied per position: (B, T, 5)
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.gn = nn.GroupNorm(2, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, idx):
        h = self.proj(self.ln(self.emb(idx))).transpose(1, 2)
        return self.out(torch.relu(self.gn(self.conv(h))).mean(2))


def test_embedding_layernorm_groupnorm_sequence_linear():
    torch.manual_seed(10)
    model = Sequence().eval()
    x, y = _xy((6,), 3, 5, integer=7)
    x[0, :2] = 0                                   # padding_idx gets no gradient
    x[1] = 3                                       # a repeated index accumulates
    assert_matches(model, x, y)
    g = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters()}
    assert_matches(model, x, y, masks=masks)


class Tied(nn.Module):
    """One layer applied twice: its per-sample gradient is the sum over both uses."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.out = nn.Linear(4 + 2, 3)

    def forward(self, x):
        v, img = x[:, :4], x[:, 4:].reshape(-1, 2, 3, 3)
        h = torch.tanh(self.lin(torch.tanh(self.lin(v))))
        c = self.conv(torch.relu(self.conv(img))).mean((2, 3))
        return self.out(torch.cat([h, c], 1))


def test_shared_layers_sum_their_uses():
    torch.manual_seed(11)
    x, y = _xy((4 + 18,), 3, 5)
    assert_matches(Tied().eval(), x, y)
    assert_matches(Tied().eval(), x, y, masks={"lin.weight": torch.rand(4, 4) > 0.5})


class Uncovered(nn.Module):
    """A bare parameter in an op no rule covers (``x * P`` and ``x + P`` are covered; ``x / P`` is not), and a
    weight also read outside its module: no rule sees those uses."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.5, -0.5, 2.0, 1.0]))
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.lin(x / self.scale)) + F.linear(x, self.lin.weight)
        return self.out(h)


def test_uncovered_parameters_fall_back_exactly_with_a_warning():
    torch.manual_seed(12)
    model = Uncovered().eval()
    x, y = _xy((4,), 3, 6)
    with pytest.warns(UserWarning, match=r"2 parameter\(s\) \((lin.weight, scale|scale, lin.weight)\)"):
        got = per_sample_grad_norms_batch(model, x, y)
    torch.testing.assert_close(got, per_sample_grad_norms_reference(model, x, y), rtol=RTOL, atol=0)


def test_activations_are_freed_after_each_batch(monkeypatch):
    """Hooks live on autograd nodes, out of the garbage collector's sight: nothing may keep a batch's
    activations alive once its norms are returned (a leak here grows by a batch per call)."""
    import gc
    import weakref

    from fairprune.engine.diagnose import _gn_capture

    outputs = []
    record = _gn_capture.Tape.record

    def spy(self, call, key=None):
        if call is not None and isinstance(call.out, torch.Tensor):
            outputs.append(weakref.ref(call.out))
        return record(self, call, key)
    monkeypatch.setattr(_gn_capture.Tape, "record", spy)
    model = _randomise(ResidualCNN())
    x, y = _xy((3, 9, 9), 4, 4)
    gc.disable()
    try:
        per_sample_grad_norms_batch(model, x, y)
        assert len(outputs) >= 6 and not any(ref() is not None for ref in outputs)
    finally:
        gc.enable()


def test_frozen_parameters_do_not_count():
    torch.manual_seed(13)
    model = _randomise(SmallCNN())
    x, y = _xy((1, 16, 16), 10, 4)
    before = per_sample_grad_norms_batch(model, x, y)
    for p in model.features.parameters():
        p.requires_grad_(False)
    after = assert_matches(model, x, y)
    assert bool((after < before).all())


# --- the dataset-level function and its inputs -----------------------------------------------------------

def test_dataset_rows_in_order_across_uneven_batches_and_cancel():
    torch.manual_seed(14)
    model = _randomise(SmallCNN())
    x, y = _xy((1, 12, 12), 10, 10)
    data = GroupedDataset(x=x, y=y, group=np.array(["a"] * 10, dtype=object), name="t", sha256="")
    rows = per_sample_grad_norms(LoadedModel.from_module(model, name="m"), data, batch_size=4)
    assert rows.shape == (10,) and rows.dtype == np.float64
    np.testing.assert_allclose(rows, per_sample_grad_norms_reference(model, x, y).numpy(), rtol=RTOL)
    with pytest.raises(Cancelled):
        per_sample_grad_norms(model, data, batch_size=4, cancel=lambda: True)


def test_training_mode_is_evaluated_in_eval_and_restored():
    torch.manual_seed(15)
    model = _randomise(SmallCNN()).train()
    x, y = _xy((1, 12, 12), 10, 4)
    stats = model.features[1].running_mean.clone()
    got = per_sample_grad_norms_batch(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model.features[1].running_mean, stats)
    torch.testing.assert_close(got, per_sample_grad_norms_reference(model.eval(), x, y), rtol=RTOL, atol=0)


def test_batch_statistics_batchnorm_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3))
    x, y = _xy((1, 6, 6), 3, 4)
    with pytest.raises(ValueError, match="batch statistics"):
        per_sample_grad_norms_batch(model, x, y)


def test_bad_masks_and_inputs_are_refused():
    model = MLP(3, 2).eval()
    x, y = _xy((3,), 2, 4)
    with pytest.raises(ValueError, match="'nope', which is not a parameter"):
        per_sample_grad_norms_batch(model, x, y, masks={"nope": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"shape \(64, 3\); got \(3, 64\)"):
        per_sample_grad_norms_batch(model, x, y, masks={"net.0.weight": torch.ones(3, 64, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"y must be a label tensor of shape \(4,\)"):
        per_sample_grad_norms_batch(model, x, y[:3])
    with pytest.raises(TypeError, match="LoadedModel or a torch.nn.Module; got str"):
        per_sample_grad_norms_batch("model", x, y)
