"""Per-sample gradient norms are exact or say they are not (issue 12, part 4), on models the rule tests never had.

Every trainable parameter is either covered by a rule that is provably right for its module, or sent to
the exact per-sample loop with a warning naming it. Checked against the slow loop
(``per_sample_grad_norms_reference``) on: a first convolution whose weight is computed from parameters in
``forward`` (weight standardisation, ``parametrize``, ``weight_norm``), a Conv subclass overriding
``_conv_forward``, attention in ``.pt2`` programs (sequence-first layouts inside ``nn.MultiheadAttention``)
with fewer and with more rows than tokens, and every torchvision classification family that runs in a
second or two at 32x32 with random weights, as ``nn.Module`` and as ``.pt2``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from fairprune.engine.diagnose._gradnorm import per_sample_grad_norms_batch, per_sample_grad_norms_reference
from fairprune.zoo import ExportedModule, load_model, save_pt2

RTOL = 1e-4
FALLBACK = "per-sample gradient norms"


pytestmark = pytest.mark.usefixtures("one_thread")


def _xy(shape, classes, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def fast_vs_loop(model, x, y, reference=None):
    """(fast, loop, fallback warnings): the fast path's norms, the loop's, and the warnings it gave."""
    want = per_sample_grad_norms_reference(reference if reference is not None else model, x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = per_sample_grad_norms_batch(model, x, y)
    said = [str(w.message) for w in caught if FALLBACK in str(w.message)]
    assert bool((want > 0).all())
    return got, want, said


def assert_exact(model, x, y, reference=None, fallback: tuple[str, ...] | None = None):
    """Fast == loop to RTOL; ``fallback``: names the warning must mention (None: any warning allowed,
    (): none allowed)."""
    got, want, said = fast_vs_loop(model, x, y, reference)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    if fallback is not None:
        if fallback:
            assert len(said) == 1, said
            for name in fallback:
                assert name in said[0], (name, said)
        else:
            assert not said, said
    return said


def as_pt2(model, x, tmp_path, name="m"):
    save_pt2(model, x, tmp_path / f"{name}.pt2")
    loaded = load_model(tmp_path / f"{name}.pt2")
    assert loaded.kind == "pt2" and loaded.fixed_batch_size is None
    return loaded


# --- a parameter reaching the first covered layer through other ops -------------------------------------------

class StdConv2d(nn.Conv2d):
    """As timm's BiT StdConv2d: the weight is standardised in forward (a weight computed from a parameter).
    (timm writes it with ``F.batch_norm(training=True)``, which ``load_model`` refuses in a ``.pt2`` as a
    training-mode program; ``var_mean`` computes the same.)"""

    def forward(self, x):
        flat = self.weight.reshape(self.out_channels, -1)
        var, mean = torch.var_mean(flat, dim=1, keepdim=True, correction=0)
        w = ((flat - mean) * torch.rsqrt(var + 1e-6)).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _Standardise(nn.Module):
    def forward(self, w):
        flat = w.reshape(w.shape[0], -1)
        return ((flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-5)).reshape_as(w)


class Stem(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(conv.out_channels)
        self.mid = nn.Conv2d(conv.out_channels, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(torch.tanh(self.mid(h)).mean((2, 3)))


def _stems():
    plain = lambda: nn.Conv2d(3, 5, 3, padding=1)  # noqa: E731
    wn = plain()
    parametrizations.weight_norm(wn)
    std = plain()
    parametrize.register_parametrization(std, "weight", _Standardise())
    old = plain()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # torch.nn.utils.weight_norm is deprecated; still in the wild
        torch.nn.utils.weight_norm(old)
    return {"std_conv_forward": (StdConv2d(3, 5, 3, padding=1), ("conv.weight",)),
            "parametrizations.weight_norm": (wn, ("conv.parametrizations.weight.original0",
                                                  "conv.parametrizations.weight.original1")),
            "parametrize_standardise": (std, ("conv.parametrizations.weight.original",)),
            "utils.weight_norm": (old, ("conv.weight_g", "conv.weight_v"))}


@pytest.mark.parametrize("name", sorted(_stems()))
def test_first_conv_with_computed_weight_falls_back_exactly(name):
    conv, names = _stems()[name]
    torch.manual_seed(1)
    model = _randomise_bn(Stem(conv))
    x, y = _xy((3, 8, 8), 4, 4)
    assert_exact(model, x, y, fallback=names)


@pytest.mark.parametrize("name", ["std_conv_forward", "parametrizations.weight_norm", "parametrize_standardise"])
def test_first_conv_with_computed_weight_as_pt2(name, tmp_path):
    conv, _ = _stems()[name]
    torch.manual_seed(2)
    model = _randomise_bn(Stem(conv))
    x, y = _xy((3, 8, 8), 4, 4)
    said = assert_exact(as_pt2(model, x, tmp_path), x, y, reference=model)
    assert said, "the computed weight must be named as falling back"


class ScaledConv(nn.Conv2d):
    """Overrides ``_conv_forward`` (not ``forward``): the weight is scaled before the convolution."""

    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, weight * 1.5, bias)


def test_conv_subclass_overriding_conv_forward_is_not_covered():
    torch.manual_seed(3)
    model = _randomise_bn(Stem(ScaledConv(3, 5, 3, padding=1)))
    x, y = _xy((3, 8, 8), 4, 4)
    assert_exact(model, x, y, fallback=("conv.weight", "conv.bias"))


def test_module_with_its_own_forward_hook_is_not_covered():
    torch.manual_seed(3)
    model = _randomise_bn(Stem(nn.Conv2d(3, 5, 3, padding=1)))
    model.mid.register_forward_hook(lambda m, a, out: out * 2.0)      # replaces the layer's output
    x, y = _xy((3, 8, 8), 4, 4)
    assert_exact(model, x, y, fallback=("mid.weight", "mid.bias"))


# --- attention: the sample dimension must be proven ------------------------------------------------------------

class TokenModel(nn.Module):
    """Patch tokens through ``nn.MultiheadAttention`` (sequence-first inside) and a token MLP."""

    def __init__(self, tokens: int, dim: int = 8, batch_first: bool = True):
        super().__init__()
        self.tokens, self.batch_first = tokens, batch_first
        self.embed = nn.Linear(4, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=batch_first)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):                      # x: (B, tokens * 4)
        h = self.embed(x.reshape(x.shape[0], self.tokens, 4))
        q = h if self.batch_first else h.transpose(0, 1)
        a, _ = self.attn(q, q, q, need_weights=False)
        a = a if self.batch_first else a.transpose(0, 1)
        h = self.norm(h + a)
        h = h + torch.tanh(self.mlp(h))
        return self.head(h.mean(1))


@pytest.mark.parametrize("batch", [3, 5, 7, 9])          # fewer rows than tokens, equal, and more
@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_in_pt2_with_batch_below_equal_and_above_tokens(batch, batch_first, tmp_path):
    torch.manual_seed(4)
    model = TokenModel(tokens=5, batch_first=batch_first).eval()
    x, y = _xy((20,), 3, batch)
    loaded = as_pt2(model, x, tmp_path)
    assert_exact(loaded, x, y, reference=model, fallback=())


@pytest.mark.parametrize("batch", [4, 6])
def test_sequence_first_encoder_layer_module(batch):
    """nn.TransformerEncoderLayer with batch_first=False runs nn.Linear on (T, B, E): T is not the sample,
    B (dim 1) is, and the probes prove it."""

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=False)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = self.layer(x.reshape(x.shape[0], 4, 8).transpose(0, 1))
            return self.head(h.mean(0))

    torch.manual_seed(5)
    model = SeqFirst().eval()
    x, y = _xy((32,), 3, batch)
    assert_exact(model, x, y, fallback=())          # the probes trace the samples to dim 1


@pytest.mark.parametrize("batch", [3, 5, 8])
def test_batch_equal_to_another_dimension_is_traced_not_guessed(batch):
    """3 rows of RGB images, 5 rows into 5 channels, 8 rows of 8x8 images: dim 0 and another dimension
    have the same size, yet the probes (2 and 3 rows) showed which one follows the batch: no fallback."""
    torch.manual_seed(6)
    model = _randomise_bn(Stem(nn.Conv2d(3, 5, 3, padding=1)))
    x, y = _xy((3, 8, 8), 4, batch)
    assert_exact(model, x, y, fallback=())


def test_sample_layouts_from_probe_shapes():
    from fairprune.engine.diagnose._gn_capture import sample_layouts

    shapes = {2: {"conv": ((2, 3, 8, 8), (2, 5, 8, 8)), "seq_first": ((5, 2, 8), (5, 2, 8)),
                  "flat": ((10, 8), (10, 8)), "coincide": ((2, 2, 8), (2, 2, 8)), "branch": ((2, 4), (2, 4))},
              3: {"conv": ((3, 3, 8, 8), (3, 5, 8, 8)), "seq_first": ((5, 3, 8), (5, 3, 8)),
                  "flat": ((15, 8), (15, 8)), "coincide": ((3, 2, 8), (3, 2, 8))}}
    assert sample_layouts(shapes) == {"conv": 0, "seq_first": 1, "flat": None, "coincide": 0}


def test_fixed_batch_program_with_ambiguous_sizes_falls_back(tmp_path):
    """A program with a fixed batch cannot be probed at other sizes: where the batch size equals another
    dimension (4 rows of 4 tokens inside attention), the stricter check refuses and the loop is used."""
    torch.manual_seed(8)
    model = TokenModel(tokens=4, batch_first=False).eval()
    x, y = _xy((16,), 3, 4)
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "fixed.pt2"))
    loaded = load_model(tmp_path / "fixed.pt2")
    assert loaded.fixed_batch_size == 4
    said = assert_exact(loaded, x, y, reference=model)
    assert said and "program.attn.in_proj_weight" in said[0]


# --- torchvision classification families ------------------------------------------------------------------------

def _vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=5)


FAMILIES = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=5),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=5),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=5),
    "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(num_classes=5),
    "regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(num_classes=5),
    "squeezenet1_1": lambda: torchvision.models.squeezenet1_1(num_classes=5),
    "shufflenet_v2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=5),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=5),
    "convnext_tiny": lambda: torchvision.models.convnext_tiny(num_classes=5),
    "swin_t": lambda: torchvision.models.swin_t(num_classes=5),
    "vit_tiny": _vit,
}


def _family(name):
    torch.manual_seed(7)
    model = _randomise_bn(FAMILIES[name]())
    if name == "resnet18":                          # plus a parametrized first conv
        parametrizations.weight_norm(model.conv1)
    return model


#: what may take the per-sample loop: resnet18's weight-normalised first conv (added above); Swin's window
#: attention (tokens of all windows flattened into the batch dimension, and a bias table gathered by index)
LOOPED = {"resnet18": "conv1.parametrizations.weight.original", "swin_t": ".attn."}


def _only_expected(name, said):
    if name not in LOOPED:
        assert not said, said
        return
    assert len(said) == 1, said
    listed = said[0].split(" (", 1)[1].split(") are used")[0].split(", ")
    assert all(LOOPED[name] in n or n.startswith("and ") for n in listed), said


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_torchvision_family_module(name):
    """Exact; and nothing but ``LOOPED`` takes the loop (ConvNeXt's LayerNorm2d and layer scale, ViT's class
    token and position embedding, attention included)."""
    model = _family(name)
    x, y = _xy((3, 32, 32), 5, 4)
    _only_expected(name, assert_exact(model, x, y))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_torchvision_family_pt2(name):
    """The program ``save_pt2`` writes (dynamic batch), kept in memory: the archive round trip is tested
    above, and the ``.pt2`` guard refusing RegNet's block names is another issue's (15)."""
    model = _family(name)
    x, y = _xy((3, 32, 32), 5, 4)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    _only_expected(name, assert_exact(ExportedModule(program.module()), x, y, reference=model))
