"""Per-sample gradient norms on sequence and attention models, exact and without the per-sample loop (issue 15, part 2).

Checked against the slow loop (``per_sample_grad_norms_reference``) in float64 to 1e-4, and that no parameter
fell back to the loop (no warning), on: ``nn.MultiheadAttention`` (batch-first and sequence-first; self-, cross-
and key-is-value attention; separate q/k/v weights; padding and attention masks; with and without attention
weights), ``nn.TransformerEncoder`` (both layouts), torchvision's ``VisionTransformer`` (class token, position
embedding), and token-id text models (``nn.Embedding`` + TransformerEncoder; + GRU/LSTM, whose recurrent weights
alone take the loop), each as ``nn.Module`` and as ``.pt2``. The capturing forward of ``nn.MultiheadAttention``
is checked to compute what torch's does, outputs and attention weights.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fairprune.engine.diagnose._gn_attention import mha_forward
from fairprune.engine.diagnose._gradnorm import (RECURRENT, per_sample_grad_norms_batch,
                                                 per_sample_grad_norms_reference)
from fairprune.zoo import load_model, save_pt2

RTOL = 1e-4
FALLBACK = "per-sample gradient norms"
V, L = 30, 7                     # vocabulary, tokens per row


pytestmark = pytest.mark.usefixtures("one_thread")


def fast_and_loop(model, x, y, reference=None):
    """(fast, loop, the fallback warnings the fast path gave)."""
    want = per_sample_grad_norms_reference(reference if reference is not None else model, x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = per_sample_grad_norms_batch(model, x, y)
    assert bool((want > 0).all())
    return got, want, [str(w.message) for w in caught if FALLBACK in str(w.message)]


def assert_fast_and_exact(model, x, y, reference=None):
    got, want, said = fast_and_loop(model, x, y, reference)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    assert not said, said


def as_pt2(model, x, tmp_path):
    save_pt2(model, x, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2")
    assert loaded.kind == "pt2" and loaded.fixed_batch_size is None
    return loaded


def _ids(n, seed=0, pad_tail=True):
    """(n, L) int64 token ids, 1..V-1, the last tokens of some rows padding (0); labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, L), generator=g)
    if pad_tail:
        for i in range(0, n, 2):
            ids[i, L - 1 - i % 3:] = 0
    return ids, torch.randint(0, 3, (n,), generator=g)


# --- nn.MultiheadAttention: the capturing forward computes what torch computes ---------------------------------

def _mha_inputs(m: nn.MultiheadAttention, how: str, b=3, lq=4, ls=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = m.out_proj.weight.dtype

    def t(n, d):
        shape = (b, n, d) if m.batch_first else (n, b, d)
        return torch.randn(*shape, generator=g, dtype=dt)

    q = t(lq, m.embed_dim)
    if how == "self":
        return q, q, q
    k = t(ls, m.kdim)
    if how == "kv":
        return q, k, k
    return q, k, t(ls, m.vdim)


MASKS = {
    "none": lambda b, h, lq, ls: {},
    "padding_bool": lambda b, h, lq, ls: {"key_padding_mask": torch.arange(ls).expand(b, ls) >= ls - torch.arange(b)[:, None]},
    "padding_float": lambda b, h, lq, ls: {"key_padding_mask": -torch.arange(b * ls, dtype=torch.float64).reshape(b, ls) / 7},
    "attn_2d": lambda b, h, lq, ls: {"attn_mask": torch.triu(torch.ones(lq, ls, dtype=torch.bool), 1)},
    "attn_3d_and_padding": lambda b, h, lq, ls: {
        "attn_mask": torch.linspace(-1, 1, b * h * lq * ls, dtype=torch.float64).reshape(b * h, lq, ls),
        "key_padding_mask": torch.linspace(0, -2, b * ls, dtype=torch.float64).reshape(b, ls)},
    "causal": lambda b, h, lq, ls: {"attn_mask": nn.Transformer.generate_square_subsequent_mask(lq, dtype=torch.float64),
                                    "is_causal": True},
}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("how,mask", [(h, m) for h in ("self", "kv", "cross", "separate") for m in sorted(MASKS)
                                      if m != "causal" or h == "self"])      # a causal mask: self-attention
def test_capturing_forward_equals_torch(batch_first, how, need_weights, mask):
    torch.manual_seed(1)
    kdim = 6 if how == "separate" else None
    m = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim).double().eval()
    with torch.no_grad():
        m.in_proj_bias.normal_()
        m.out_proj.bias.normal_()
    q, k, v = _mha_inputs(m, "cross" if how == "separate" else how, lq=5 if mask == "causal" else 4)
    kw = MASKS[mask](3, 2, q.shape[1 if batch_first else 0], k.shape[1 if batch_first else 0])
    for average in (True, False):
        with torch.enable_grad():                     # torch's own (non-fused) path, as in the real pass
            want = m(q, k, v, need_weights=need_weights, average_attn_weights=average, **kw)
            got = mha_forward(m, lambda call, key: None, q, k, v, need_weights=need_weights,
                              average_attn_weights=average, **kw)
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
        if need_weights:
            torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
        else:
            assert got[1] is None and want[1] is None


def test_capturing_forward_equals_torch_in_float32():
    torch.manual_seed(2)
    m = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(5, 9, 16)
    with torch.enable_grad():
        for need_weights in (True, False):
            want = m(x, x, x, need_weights=need_weights)[0]
            got = mha_forward(m, lambda call, key: None, x, x, x, need_weights=need_weights)[0]
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# --- nn.MultiheadAttention: per-sample norms ----------------------------------------------------------------------

class Attend(nn.Module):
    """Token features (B, T·4) through a linear embedding, one MultiheadAttention and a head."""

    def __init__(self, how="self", batch_first=True, need_weights=False, mask=False):
        super().__init__()
        self.how, self.batch_first, self.need_weights, self.mask = how, batch_first, need_weights, mask
        kdim = 6 if how == "separate" else None
        self.embed = nn.Linear(4, 8)
        self.kv = nn.Linear(4, kdim or 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = x.reshape(x.shape[0], -1, 4)
        h = self.embed(tokens)
        q, k, v = h, h, h
        if self.how in ("kv", "cross", "separate"):
            k = self.kv(tokens)
            v = k if self.how == "kv" else torch.tanh(k)
        if not self.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v)) if self.how != "self" else (h.transpose(0, 1),) * 3
        kw = {}
        if self.mask:                                     # pad the last token of rows whose first feature is > 0
            pad = torch.zeros(tokens.shape[:2], dtype=torch.bool)
            kw["key_padding_mask"] = pad.index_put((torch.arange(len(x)), torch.full((len(x),), -1)), tokens[:, 0, 0] > 0)
        a, _ = self.attn(q, k, v, need_weights=self.need_weights, **kw)
        a = a if self.batch_first else a.transpose(0, 1)
        return self.head(torch.tanh(a).mean(1))


def _xy(n, tokens=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, tokens * 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("how", ["self", "kv", "cross", "separate"])
def test_mha_module_is_exact_without_the_loop(batch_first, how):
    torch.manual_seed(3)
    model = Attend(how, batch_first).double().eval()
    for batch in (3, 5, 8):                               # fewer rows than tokens, equal, more
        x, y = _xy(batch, seed=batch)
        assert_fast_and_exact(model, x, y)


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_with_padding_mask_and_weights(need_weights):
    torch.manual_seed(4)
    model = Attend("self", True, need_weights=need_weights, mask=True).double().eval()
    x, y = _xy(6)
    assert_fast_and_exact(model, x, y)


def test_mha_masked_norms_match_the_loop():
    """A pruned attention layer: masks on the packed in-projection split into q, k, v rows."""
    torch.manual_seed(5)
    model = Attend("cross", True).double().eval()
    x, y = _xy(4)
    g = torch.Generator().manual_seed(0)
    masks = {k: torch.rand(p.shape, generator=g) > 0.5 for k, p in model.named_parameters() if p.dim() > 1}
    assert "attn.in_proj_weight" in masks
    want = per_sample_grad_norms_reference(model, x, y, masks=masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = per_sample_grad_norms_batch(model, x, y, masks=masks)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)


def test_mha_used_twice_sums_its_uses():
    """One attention layer applied twice: the packed weight's per-sample gradients add up before the norm."""

    class Twice(Attend):
        def forward(self, x):
            h = self.embed(x.reshape(x.shape[0], -1, 4))
            a, _ = self.attn(h, h, h, need_weights=False)
            k = torch.tanh(a)
            b, _ = self.attn(h, k, k, need_weights=False)
            return self.head(b.mean(1))

    torch.manual_seed(6)
    model = Twice().double().eval()
    x, y = _xy(4)
    assert_fast_and_exact(model, x, y)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("how", ["self", "cross", "separate"])
def test_mha_pt2_is_exact_without_the_loop(batch_first, how, tmp_path):
    torch.manual_seed(7)
    model = Attend(how, batch_first).double().eval()
    x, y = _xy(5)
    loaded = as_pt2(model, x, tmp_path)
    for batch in (3, 5, 8):
        xb, yb = _xy(batch, seed=batch)
        assert_fast_and_exact(loaded, xb, yb, reference=model)


# --- transformer encoders, ViT, text models -------------------------------------------------------------------

class Encoder(nn.Module):
    """Token features through nn.TransformerEncoder (2 layers, pre- or post-norm), batch-first or not."""

    def __init__(self, batch_first=True, norm_first=False):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(4, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x.reshape(x.shape[0], -1, 4))
        if not self.batch_first:
            return self.head(self.enc(h.transpose(0, 1)).mean(0))
        return self.head(self.enc(h).mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder(batch_first, norm_first, tmp_path):
    torch.manual_seed(8)
    model = Encoder(batch_first, norm_first).double().eval()
    x, y = _xy(5)
    assert_fast_and_exact(model, x, y)
    assert_fast_and_exact(as_pt2(model, x, tmp_path), x, y, reference=model)


def _vit():
    return torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=8, mlp_dim=16, num_classes=3)


def test_vision_transformer(tmp_path):
    """Class token (expanded, concatenated) and position embedding (added) included: nothing loops."""
    torch.manual_seed(9)
    model = _vit().double().eval()
    with torch.no_grad():
        model.class_token.normal_()
        model.encoder.pos_embedding.normal_()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g)
    assert_fast_and_exact(model, x, y)
    assert_fast_and_exact(as_pt2(model, x, tmp_path), x, y, reference=model)


class TransformerText(nn.Module):
    """int64 ids (B, L) -> embedding + learned positions -> TransformerEncoder with a padding mask -> head."""

    def __init__(self, batch_first=True):
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(V, 8, padding_idx=0)
        self.pos = nn.Parameter(0.1 * torch.randn(1, L, 8))
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        h = self.emb(ids) + self.pos
        pad = ids == 0
        if self.batch_first:
            return self.head(self.enc(h, src_key_padding_mask=pad).mean(1))
        return self.head(self.enc(h.transpose(0, 1), src_key_padding_mask=pad).mean(0))


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_text_model_on_int64_ids(batch_first, tmp_path):
    torch.manual_seed(10)
    model = TransformerText(batch_first).double().eval()
    ids, y = _ids(6)
    assert ids.dtype == torch.int64
    assert_fast_and_exact(model, ids, y)
    assert_fast_and_exact(as_pt2(model, ids, tmp_path), ids, y, reference=model)


class RNNText(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.emb = nn.Embedding(V, 8, padding_idx=0)
        self.rnn = cell(8, 12, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, ids):
        out, _ = self.rnn(self.emb(ids))
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("kind", ["module", "pt2"])
def test_recurrent_text_model_loops_only_for_its_recurrent_weights(cell, kind, tmp_path):
    torch.manual_seed(11)
    model = RNNText(cell).double().eval()
    ids, y = _ids(5)
    run = model if kind == "module" else as_pt2(model, ids, tmp_path)
    got, want, said = fast_and_loop(run, ids, y, reference=model)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    assert len(said) == 1 and RECURRENT in said[0], said
    named = said[0].split("(")[2].split(")")[0]           # the parameter names the warning lists
    assert "rnn.weight_ih_l0" in named and "emb" not in named and "head" not in named, said


class TwoInputText(nn.Module):
    """Two positional inputs: int64 ids (B, L) and a bool padding mask (B, L), as ``--inputs`` passes them."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 8, padding_idx=0)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids, pad):
        return self.head(self.enc(self.emb(ids), src_key_padding_mask=pad).mean(1))


@pytest.mark.parametrize("kind", ["module", "pt2"])
def test_multi_input_batch(kind, tmp_path):
    from fairprune.data import Inputs

    torch.manual_seed(12)
    model = TwoInputText().double().eval()
    ids, y = _ids(5)
    x = Inputs([ids, ids == 0], ["input_ids", "padding"])
    run = model if kind == "module" else as_pt2(model, x, tmp_path)
    assert_fast_and_exact(run, x, y, reference=model)


class OwnForwardLinear(nn.Linear):
    """Overrides forward but applies its own weight with F.linear (sequence-first input): covered."""

    def forward(self, x):
        return F.linear(x.transpose(0, 1), self.weight, self.bias).transpose(0, 1)


class ScaledLinear(nn.Linear):
    """Applies a weight computed from its parameter: no rule may claim it."""

    def forward(self, x):
        return F.linear(x, self.weight * 2.0, self.bias)


class Functional(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.inner(x.reshape(x.shape[0], -1, 4)))
        h = F.layer_norm(h, (8,), self.norm.weight * 1.0, self.norm.bias)      # a computed weight again
        return self.head(h.mean(1))


def test_functional_uses_of_a_layers_own_parameters():
    torch.manual_seed(13)
    x, y = _xy(5)
    model = Functional(OwnForwardLinear(4, 8)).double().eval()
    got, want, said = fast_and_loop(model, x, y)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    assert len(said) == 1 and "norm.weight" in said[0] and "inner" not in said[0], said
    model = Functional(ScaledLinear(4, 8)).double().eval()
    got, want, said = fast_and_loop(model, x, y)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    # the computed weight loops; the bias, applied as it is, does not
    assert len(said) == 1 and "inner.weight" in said[0] and "inner.bias" not in said[0], said
