"""``nn.MultiheadAttention`` under capture: the same computation, with every projection a visible linear call.

Torch's own forward projects q, k and v inside ``F.multi_head_attention_forward``, on sequence-first
(T, B, E) tensors, and the output projection on a flattened (T·B, E) one; no rule sees those uses of
``in_proj_weight``, ``q/k/v_proj_weight``, ``in_proj_bias`` and ``out_proj``. While capturing, the module
runs :func:`mha_forward` instead: the same steps in the same order and with the same ops as torch's
(masks canonicalised and merged as torch does, the explicit softmax path when attention weights are asked
for, ``scaled_dot_product_attention`` otherwise), but on batch-first tensors, with each projection recorded
as a ``linear`` call. The packed in-projection is one call when query, key and value are one tensor
(self-attention), else one call per part over its own rows of the packed weight (``Call.rows``).
``tests/test_gradnorm_seq.py`` checks that outputs and attention weights equal the module's own.

Configurations it does not reproduce (unbatched inputs, ``add_bias_kv``, ``add_zero_attn``, dropout in
training mode, nested tensors) run torch's forward: their parameters fall back to the per-sample loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._gn_registry import Call, register_forward

__all__ = ["mha_forward"]


@register_forward(nn.MultiheadAttention)
def mha_forward(m: nn.MultiheadAttention, record, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
    """``m(query, key, value, ...)``, recording the projections with ``record(call, key) -> tensor | None``."""
    if (query.dim() != 3 or m.bias_k is not None or m.bias_v is not None or m.add_zero_attn
            or (m.training and m.dropout > 0) or query.is_nested or key.is_nested or value.is_nested):
        return type(m).forward(m, query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                               attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
    # torch's checks and mask handling, on its own (sequence-first) layout
    seq = (query, key, value) if not m.batch_first else tuple(t.transpose(1, 0) for t in (query, key, value))
    key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                         other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                         target_type=query.dtype)
    F._mha_shape_check(*seq, key_padding_mask, attn_mask, m.num_heads)
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                           "method `generate_square_subsequent_mask` to create this mask.")
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None
    else:
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        if key_padding_mask is not None:
            is_causal = False
    tgt_len, bsz, embed_dim = seq[0].shape
    src_len = seq[1].shape[0]
    if embed_dim != m.embed_dim:
        raise AssertionError(f"was expecting embedding dimension of {m.embed_dim}, but got {embed_dim}")
    heads, head_dim = m.num_heads, m.head_dim

    # batch-first inputs (B, L, E): the projections' rows are the samples
    xq, xk, xv = (t if m.batch_first else t.transpose(0, 1) for t in (query, key, value))
    q, k, v = _in_projection(m, record, query, key, value, xq, xk, xv)

    if attn_mask is not None:
        if attn_mask.dim() == 2:
            if attn_mask.shape != (tgt_len, src_len):
                raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be "
                                   f"{(tgt_len, src_len)}.")
            attn_mask = attn_mask.unsqueeze(0)
        elif attn_mask.dim() == 3:
            if attn_mask.shape != (bsz * heads, tgt_len, src_len):
                raise RuntimeError(f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be "
                                   f"{(bsz * heads, tgt_len, src_len)}.")
        else:
            raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
    # (B·H, L, head_dim), sample-major as torch's (L, B·H, head_dim).transpose(0, 1)
    q = q.reshape(bsz, tgt_len, heads, head_dim).transpose(1, 2).reshape(bsz * heads, tgt_len, head_dim)
    k = k.reshape(bsz, src_len, heads, head_dim).transpose(1, 2).reshape(bsz * heads, src_len, head_dim)
    v = v.reshape(bsz, src_len, heads, head_dim).transpose(1, 2).reshape(bsz * heads, src_len, head_dim)
    if key_padding_mask is not None:
        if key_padding_mask.shape != (bsz, src_len):
            raise AssertionError(f"expecting key_padding_mask shape of {(bsz, src_len)}, but got "
                                 f"{key_padding_mask.shape}")
        key_padding_mask = (key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1)
                            .reshape(bsz * heads, 1, src_len))
        attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
    dropout_p = m.dropout if m.training else 0.0

    if need_weights:
        q_scaled = q * math.sqrt(1.0 / float(head_dim))
        if is_causal and attn_mask is None:
            raise AssertionError("is_causal without an attn_mask is not supported with need_weights "
                                 "(torch's multi_head_attention_forward refuses it too)")
        if attn_mask is not None:
            weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
        else:
            weights = torch.bmm(q_scaled, k.transpose(-2, -1))
        weights = F.softmax(weights, dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        out = torch.bmm(weights, v)                                        # (B·H, L, head_dim)
        out = out.view(bsz, heads, tgt_len, head_dim).transpose(1, 2).reshape(bsz, tgt_len, embed_dim)
        weights = weights.view(bsz, heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
    else:
        if attn_mask is not None:
            if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(0)
            else:
                attn_mask = attn_mask.view(bsz, heads, -1, src_len)
        out = F.scaled_dot_product_attention(q.view(bsz, heads, tgt_len, head_dim),
                                             k.view(bsz, heads, src_len, head_dim),
                                             v.view(bsz, heads, src_len, head_dim), attn_mask, dropout_p, is_causal)
        out = out.transpose(1, 2).reshape(bsz, tgt_len, embed_dim)
        weights = None
    out = _linear(record, (m, "out_proj"), out, m.out_proj.weight, m.out_proj.bias)
    return (out if m.batch_first else out.transpose(0, 1)), weights


def _in_projection(m, record, query, key, value, xq, xk, xv):
    """q, k, v (B, L|S, E), as torch's ``_in_projection_packed`` / ``_in_projection`` compute them."""
    e = m.embed_dim
    w, b = m.in_proj_weight, m.in_proj_bias
    if m._qkv_same_embed_dim:
        if query is key and key is value:                 # self-attention: one projection, then split
            proj = _linear(record, (m, "qkv"), xq, w, b)
            proj = proj.unflatten(-1, (3, e)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            return proj[0], proj[1], proj[2]
        if key is value:                                  # one projection for q, one for k and v together
            q = _linear(record, (m, "q"), xq, w, b, (0, e))
            kv = _linear(record, (m, "kv"), xk, w, b, (e, 3 * e))
            kv = kv.unflatten(-1, (2, e)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            return q, kv[0], kv[1]
        return tuple(_linear(record, (m, part), x, w, b, (i * e, (i + 1) * e))
                     for i, (part, x) in enumerate((("q", xq), ("k", xk), ("v", xv))))
    weights = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    return tuple(_linear(record, (m, part), x, pw, b, None if b is None else (i * e, (i + 1) * e), bias_only=True)
                 for i, (part, x, pw) in enumerate((("q", xq, weights[0]), ("k", xk, weights[1]),
                                                    ("v", xv, weights[2]))))


def _linear(record, key, x, weight, bias, rows: tuple[int, int] | None = None, *, bias_only: bool = False):
    """``F.linear(x, weight[rows], bias[rows])`` recorded as a linear call on the whole parameters, using
    only ``rows`` of them (``bias_only``: of the bias alone). Each part is its own slice of the parameter,
    so the autograd graph has one edge into the parameter per call, as the capture's checks expect."""
    w_rows = None if bias_only else rows
    w = weight if w_rows is None else weight[w_rows[0]:w_rows[1]]
    bb = bias if bias is None or rows is None else bias[rows[0]:rows[1]]
    out = F.linear(x, w, bb)
    spans = {}
    if w_rows is not None:
        spans["weight"] = w_rows
    if rows is not None and bias is not None:
        spans["bias"] = rows
    new = record(Call("linear", {"weight": weight, "bias": bias}, x, out, rows=spans), key)
    return out if new is None else new
