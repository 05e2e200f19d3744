r"""Embeddings, multi-head attention and the Transformer encoder layer, as torch.nn's.

Every forward here is a chain of registered ops (linear, split, reshape,
permute, scaled_dot_product_attention, add, embedding) and child modules, so a
tape can record it; every backward is written by hand, the forward read in
reverse, a fork being a sum.  Parameters that PyTorch keeps in a ``Linear``
(``out_proj``, ``linear1``) are handydl ``nn.Linear`` modules, weight (in, out);
raw parameters (``in_proj_weight`` (3E, E)) have PyTorch's shapes exactly.
"""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..ops.registry import check_int, check_real
from ..ops.attention import weights_vjp
from ..ops.embedding import check_padding_idx
from .layers import (GENERATED, Dropout, LayerNorm, Linear, OpModule, _cpu_only, _float_dtype)
from .module import Module, Parameter, check_gy, resolve_rng


# -- embeddings ------------------------------------------------------------------------------

class Embedding(OpModule):
    r"""A lookup table, as torch.nn.Embedding: ids (...) -> rows of ``weight`` (..., embedding_dim).

    ``weight`` (num_embeddings, embedding_dim), initialized N(0, 1) as PyTorch, the
    ``padding_idx`` row 0 and never trained.  Backward (ops.embedding):
    :math:`\partial L/\partial W_r = \sum_{n: i_n = r} g_{y,n}`, a scatter-add; the
    ids get None.  ``max_norm``, ``scale_grad_by_freq`` and ``sparse`` are not
    supported (a ValueError says so); ``device`` None or "cpu", ``dtype`` None = float32.
    """

    op = ops.embedding

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, _freeze=False, device=None,
                 dtype=None, *, rng=None):
        check_int("Embedding", "num_embeddings", num_embeddings)
        check_int("Embedding", "embedding_dim", embedding_dim)
        for name, value, default in (("max_norm", max_norm, None), ("scale_grad_by_freq", scale_grad_by_freq,
                                                                    False), ("sparse", sparse, False)):
            if value != default:
                raise ValueError(f"Embedding: {name}={value!r} is not supported by handydl "
                                 f"(expected {default!r})")
        pad = check_padding_idx(padding_idx, num_embeddings, "Embedding")
        super().__init__(padding_idx=pad)
        _cpu_only(device, "Embedding")
        dtype = _float_dtype(dtype, "Embedding")
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, pad
        if _weight is not None:
            w = np.array(_weight, dtype=dtype)
            if w.shape != (num_embeddings, embedding_dim):
                raise ValueError(f"Embedding: _weight has shape {w.shape}, expected "
                                 f"({num_embeddings}, {embedding_dim})")
        else:
            w = resolve_rng(rng).standard_normal((num_embeddings, embedding_dim)).astype(dtype)
            if pad is not None:
                w[pad] = 0
        self.weight = Parameter(w)

    def op_inputs(self):
        return (self.weight,)

    def forward(self, input):
        return self._apply(self.op, input, self.op_inputs())[0]

    def backward(self, gy, input_grad=True):
        """Accumulates dL/dweight; returns None (token ids have no gradient)."""
        super().backward(gy, input_grad=False)
        return None

    def get_config(self):
        return dict(num_embeddings=self.num_embeddings, embedding_dim=self.embedding_dim,
                    padding_idx=self.padding_idx, dtype=self.weight.dtype.name)

    def extra_repr(self):
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


def _positions(x, num_positions, who):
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[-2] > num_positions:
        raise ValueError(f"{who}: expected input of shape (..., T, D) with T <= {num_positions}, "
                         f"got shape {x.shape}")
    return np.arange(x.shape[-2])


class LearnedPositionalEmbedding(Module):
    r"""y = x + W_{0:T}: a learned row per position (GPT's ``wpe``), for x of shape (..., T, D).

    ``weight`` (num_positions, embedding_dim), N(0, 0.02) as GPT-2.  Backward:
    :math:`g_x = g_y` (the skip path) and :math:`\partial L/\partial W_t = \sum_{\dots} g_{y,\dots,t}`,
    the sum over the batch dims that the positions' rows were broadcast along.
    """

    def __init__(self, num_positions, embedding_dim, dtype=None, *, rng=None):
        super().__init__()
        check_int(type(self).__name__, "num_positions", num_positions)
        check_int(type(self).__name__, "embedding_dim", embedding_dim)
        dtype = _float_dtype(dtype, type(self).__name__)
        self.num_positions, self.embedding_dim = num_positions, embedding_dim
        self.weight = Parameter((0.02 * resolve_rng(rng).standard_normal((num_positions, embedding_dim)))
                                .astype(dtype))

    def _table(self):
        return self.weight.data

    def forward(self, x):
        t = _positions(x, self.num_positions, type(self).__name__)
        pos, s_emb = ops.embedding.forward(t, self._table())     # rows 0..T-1 (T, D)
        y, s_add = ops.add.forward(x, pos)                       # broadcast over the batch dims
        self.save(s_emb, s_add, np.shape(y))
        return y

    def backward(self, gy, input_grad=True):
        s_emb, s_add, shape = self._peek_saved()
        gx, gpos = ops.add.backward(s_add, check_gy(gy, shape, type(self).__name__))
        self.saved()
        if isinstance(self.weight, Parameter):
            self.weight.accumulate(ops.embedding.backward(s_emb, gpos)[1], fresh=True)
        return gx if input_grad else None

    def get_config(self):
        return dict(num_positions=self.num_positions, embedding_dim=self.embedding_dim,
                    dtype=self._table().dtype.name)


class SinusoidalPositionalEmbedding(LearnedPositionalEmbedding):
    r"""y = x + PE_{0:T} with the fixed table of "Attention is all you need":
    :math:`PE_{t, 2i} = \sin(t / 10000^{2i/D})`, :math:`PE_{t, 2i+1} = \cos(t / 10000^{2i/D})`.
    A buffer, not a parameter: backward is :math:`g_x = g_y`."""

    def __init__(self, num_positions, embedding_dim, dtype=None):
        Module.__init__(self)
        check_int(type(self).__name__, "num_positions", num_positions)
        check_int(type(self).__name__, "embedding_dim", embedding_dim)
        dtype = _float_dtype(dtype, type(self).__name__)
        self.num_positions, self.embedding_dim = num_positions, embedding_dim
        t = np.arange(num_positions)[:, None]
        freq = np.exp(-math.log(10000.0) * np.arange(0, embedding_dim, 2) / embedding_dim)
        pe = np.zeros((num_positions, embedding_dim))
        pe[:, 0::2] = np.sin(t * freq)
        pe[:, 1::2] = np.cos(t * freq[: embedding_dim // 2])
        self.register_buffer("pe", pe.astype(dtype))

    def _table(self):
        return self.pe

    @property
    def weight(self):
        return self.pe

    def get_config(self):
        return dict(num_positions=self.num_positions, embedding_dim=self.embedding_dim,
                    dtype=self.pe.dtype.name)


class _CountsInputs:
    """Keeps, per call, how many arguments forward got, so that backward returns one gradient
    per argument (positional ones first, then keyword ones in the order given: None for every
    mask or flag), as PyTorch's module tests read them: ``layer(x, src_mask=m).backward(gy)``
    gives ``(gx, None)``; ``layer(x).backward(gy)`` gives gx."""

    def __call__(self, *args, **kwargs):
        self._n_inputs = len(args) + len(kwargs)
        return Module.__call__(self, *args, **kwargs)

    def _n_args(self):
        return getattr(self, "_n_inputs", 1)


# -- multi-head attention --------------------------------------------------------------------

def _bool_to_additive(mask, dtype):
    """A PyTorch MultiheadAttention mask as an additive float one: bool True = masked out
    (-inf), float as given."""
    m = np.asarray(mask)
    if m.dtype == bool:
        return np.where(m, dtype.type(-np.inf), dtype.type(0))
    if m.dtype.kind == "f":
        return m.astype(dtype, copy=False)
    raise TypeError(f"MultiheadAttention: a mask must be boolean (True = not allowed to attend) or "
                    f"float (added to the scores), got dtype {m.dtype}")


class MultiheadAttention(_CountsInputs, Module):
    r"""Multi-head attention, as torch.nn.MultiheadAttention (kdim = vdim = embed_dim).

    .. math::  Q = x_q W_q^\top + b_q,\ K = x_k W_k^\top + b_k,\ V = x_v W_v^\top + b_v,\quad
               O_h = \mathrm{softmax}\bigl(Q_h K_h^\top/\sqrt{d} + M\bigr) V_h,\quad
               y = [O_1, \dots, O_H]\, W_o + b_o

    with :math:`[W_q; W_k; W_v]` = ``in_proj_weight`` (3E, E) and its bias
    ``in_proj_bias`` (3E,), as PyTorch packs them, d = E / num_heads, and
    ``out_proj`` a handydl Linear (weight (E, E) in handydl's (in, out) layout).
    All heads are one batched product (the op scaled_dot_product_attention).

    ``forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` takes and returns
    what PyTorch's does: query (L, N, E) ((N, L, E) with batch_first, (L, E)
    unbatched), key and value (S, N, E); ``key_padding_mask`` (N, S), boolean True =
    ignore that key (or float, added); ``attn_mask`` (L, S) or (N*num_heads, L, S),
    boolean True = not allowed to attend (or float, added); ``is_causal`` is a hint
    that attn_mask is the causal mask (required with it, as PyTorch).  Returns
    ``(attn_output, attn_weights)``: the weights (after dropout) averaged over heads
    (N, L, S), or per head (N, num_heads, L, S), or None with need_weights=False.

    ``backward(g_output, g_weights=None)`` returns (dL/dquery, dL/dkey, dL/dvalue);
    for self-attention (one array passed three times) the caller's gradient is their
    sum (a fork).  A row whose every key is masked gets weights 0 and output
    out_proj's bias (PyTorch gives 0 with need_weights=False and NaN with True).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, *, rng=None):
        super().__init__()
        who = "MultiheadAttention"
        check_int(who, "embed_dim", embed_dim)
        check_int(who, "num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"{who}: embed_dim={embed_dim} is not divisible by num_heads={num_heads} "
                             f"(each head has embed_dim / num_heads features)")
        check_real(who, "dropout", dropout, "a probability in [0, 1)", lambda p: 0 <= p < 1)
        for name, value in (("kdim", kdim), ("vdim", vdim)):
            if value is not None and value != embed_dim:
                raise ValueError(f"{who}: {name}={value} is not supported by handydl (expected None or "
                                 f"embed_dim={embed_dim})")
        if add_bias_kv or add_zero_attn:
            raise ValueError(f"{who}: add_bias_kv and add_zero_attn are not supported by handydl "
                             "(expected False)")
        _cpu_only(device, who)
        dtype = _float_dtype(dtype, who)
        rng = resolve_rng(rng)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        bound = math.sqrt(6 / (embed_dim + 3 * embed_dim))          # xavier_uniform_, as PyTorch
        self.in_proj_weight = Parameter(rng.uniform(-bound, bound, (3 * embed_dim, embed_dim)).astype(dtype))
        self.in_proj_bias = Parameter(np.zeros(3 * embed_dim, dtype)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype, rng=rng)
        if bias:
            self.out_proj.bias.data[...] = 0
        self.rng = rng                                               # the attention dropout's masks

    # -- layout --------------------------------------------------------------------------------
    def _batched(self, x, name):
        """x as (N, L, E), and how to undo it."""
        x = np.asarray(x)
        if x.ndim not in (2, 3) or x.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiheadAttention: expected {name} of shape (L, N, {self.embed_dim}) "
                             f"({'(N, L, E)' if self.batch_first else '(L, N, E)'}, or (L, E) unbatched), "
                             f"got shape {x.shape}")
        if x.ndim == 2:
            return ops.reshape.forward(x, shape=(1,) + x.shape)
        if self.batch_first:
            return x, None
        return ops.permute.forward(x, dims=(1, 0, 2))

    def _heads(self, x):
        """(N, L, E) -> (N, H, L, d): reshape and permute, both ops."""
        N, L, _ = x.shape
        x4, s1 = ops.reshape.forward(x, shape=(N, L, self.num_heads, self.head_dim))
        xh, s2 = ops.permute.forward(x4, dims=(0, 2, 1, 3))
        return xh, (s1, s2)

    def _merge(self, o):
        N, H, L, d = o.shape
        o4, s1 = ops.permute.forward(o, dims=(0, 2, 1, 3))
        y, s2 = ops.reshape.forward(o4, shape=(N, L, H * d))
        return y, (s1, s2)

    def _mask(self, attn_mask, key_padding_mask, N, L, S, dtype, unbatched):
        """One additive float mask (N or 1, H or 1, L, S) from attn_mask and key_padding_mask."""
        H = self.num_heads
        mask = None
        if attn_mask is not None:
            m = _bool_to_additive(attn_mask, dtype)
            if m.shape == (L, S):
                mask = m[None, None]
            elif m.ndim == 3 and m.shape == (N * H, L, S):
                mask = m.reshape(N, H, L, S)
            else:
                raise ValueError(f"MultiheadAttention: attn_mask has shape {m.shape}; expected ({L}, {S}) "
                                 f"or (N * num_heads, L, S) = ({N * H}, {L}, {S})")
        if key_padding_mask is not None:
            k = _bool_to_additive(key_padding_mask, dtype)
            want = (S,) if unbatched else (N, S)
            if k.shape != want:
                raise ValueError(f"MultiheadAttention: key_padding_mask has shape {k.shape}; expected "
                                 f"{want} (batch, source length)")
            k = k.reshape(N, 1, 1, S)
            mask = k if mask is None else mask + k
        return mask

    # -- forward / backward ----------------------------------------------------------------------
    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if is_causal and attn_mask is None:
            raise ValueError("MultiheadAttention: is_causal=True is a hint that attn_mask is the causal "
                             "mask; pass attn_mask too (as PyTorch requires)")
        n_inputs = max(3, self._n_args())
        self_attention = query is key and key is value
        unbatched = np.ndim(query) == 2
        xq, lay_q = self._batched(query, "query")
        xk, lay_k = (xq, None) if self_attention else self._batched(key, "key")
        xv, lay_v = (xq, None) if self_attention else self._batched(value, "value")
        if xk.shape != xv.shape or xk.shape[0] != xq.shape[0] or np.ndim(key) != np.ndim(query):
            raise ValueError(f"MultiheadAttention: query {np.shape(query)}, key {np.shape(key)} and value "
                             f"{np.shape(value)} do not fit; expected the same batch size and key's "
                             "shape equal to value's")
        E = self.embed_dim
        WT, s_wt = ops.permute.forward(self.in_proj_weight.data, dims=(1, 0))    # (E, 3E): x W^T
        b = None if self.in_proj_bias is None else self.in_proj_bias.data
        if self_attention:               # one product for the three projections
            qkv, s_lin = ops.linear.forward(xq, WT, b)
            (q, k, v), s_split = ops.split.forward(qkv, split_size_or_sections=E, dim=-1)
        else:
            WTs, s_wsplit = ops.split.forward(WT, split_size_or_sections=E, dim=1)
            bs, s_bsplit = (None, None, None), None
            if b is not None:
                bs, s_bsplit = ops.split.forward(b, split_size_or_sections=E, dim=0)
            (q, s_q), (k, s_k), (v, s_v) = (ops.linear.forward(x, W, bb) for x, W, bb in zip((xq, xk, xv), WTs, bs))
            s_lin, s_split = (s_q, s_k, s_v), (s_wsplit, s_bsplit)
        (qh, s_qh), (kh, s_kh), (vh, s_vh) = self._heads(q), self._heads(k), self._heads(v)
        N, L, S = xq.shape[0], xq.shape[1], xk.shape[1]
        mask = self._mask(attn_mask, key_padding_mask, N, L, S, qh.dtype, unbatched)
        p = self.dropout if self.training else 0.0
        # the weights and their product with V as two ops: the weights are an output too
        P, s_att = ops.attention_weights.forward(qh, kh, mask, dropout_p=p, seed=self.rng)
        oh, s_pv = ops.matmul.forward(P, vh)
        o, s_merge = self._merge(oh)
        y = self.out_proj(o)
        y_out, lay_y = (y, None) if lay_q is None else (
            ops.reshape.forward(y, shape=y.shape[1:]) if unbatched else ops.permute.forward(y, dims=(1, 0, 2)))
        weights, s_avg = None, None
        if need_weights:
            weights, s_avg = self._average(P) if average_attn_weights else (P, None)
            if unbatched:
                weights, s_unb = ops.reshape.forward(weights, shape=weights.shape[1:])
        self.save(dict(self_attention=self_attention, unbatched=unbatched, s_wt=s_wt, s_lin=s_lin,
                       s_split=s_split, s_heads=(s_qh, s_kh, s_vh), s_att=s_att, s_pv=s_pv, s_avg=s_avg,
                       s_merge=s_merge,
                       lay=(lay_q, lay_k, lay_v), lay_y=lay_y, y_shape=np.shape(y_out),
                       weights=None if weights is None else (weights.shape, average_attn_weights),
                       n_inputs=n_inputs))
        return y_out, weights

    def backward(self, g_output, g_weights=None, input_grad=True):
        """(dL/dquery, dL/dkey, dL/dvalue) from dL/dattn_output (and dL/dattn_weights, optional);
        accumulates dL/din_proj_weight, dL/din_proj_bias and out_proj's gradients."""
        st = self._peek_saved()
        g = check_gy(g_output, st["y_shape"], "MultiheadAttention")
        gw = None
        if g_weights is not None:
            if st["weights"] is None:
                raise ValueError("MultiheadAttention.backward: a gradient for attn_weights was given, but "
                                 "the forward ran with need_weights=False")
            shape, averaged = st["weights"]
            gw = check_gy(g_weights, shape, "MultiheadAttention")
            gw = gw[None] if st["unbatched"] else gw
            if averaged:                 # weights = the mean over heads: each head gets gw / H
                gw = self._average_backward(st["s_avg"], gw)
        self.saved()
        lay_q = st["lay"][0]
        if st["lay_y"] is not None:
            g = (ops.reshape if st["unbatched"] else ops.permute).backward(st["lay_y"], g)[0]
        go = self.out_proj.backward(g)
        goh = self._merge_backward(st["s_merge"], go)
        gP, gvh = ops.matmul.backward(st["s_pv"], goh)         # O = P V
        if gw is not None:
            gP += gw                     # P is an output too: its two uses add
        gqh, gkh = weights_vjp(st["s_att"], gP)
        gq, gk, gv = (self._heads_backward(s, gh) for s, gh in zip(st["s_heads"], (gqh, gkh, gvh)))
        E = self.embed_dim
        W = self.in_proj_weight.data
        if st["self_attention"]:
            g_qkv = ops.split.backward(st["s_split"], gq, gk, gv)[0]
            _, gWT, gb = ops.linear.backward(st["s_lin"], g_qkv, needs=(False, True, self.in_proj_bias is not None))
            # the three inputs are one array: each projection's share, kept apart (the caller sums)
            gx = [gp @ W[i * E:(i + 1) * E] for i, gp in enumerate((gq, gk, gv))] if input_grad else None
        else:
            grads = [ops.linear.backward(s, gp, needs=(input_grad, True, self.in_proj_bias is not None))
                     for s, gp in zip(st["s_lin"], (gq, gk, gv))]
            s_wsplit, s_bsplit = st["s_split"]
            gWT = ops.split.backward(s_wsplit, *(gr[1] for gr in grads))[0]
            gb = ops.split.backward(s_bsplit, *(gr[2] for gr in grads))[0] if s_bsplit is not None else None
            gx = [gr[0] for gr in grads] if input_grad else None
        self.in_proj_weight.accumulate(ops.permute.backward(st["s_wt"], gWT)[0])
        if self.in_proj_bias is not None:
            self.in_proj_bias.accumulate(gb, fresh=True)
        if not input_grad:
            return None
        out = []
        for gxi, lay in zip(gx, st["lay"] if not st["self_attention"] else (lay_q,) * 3):
            if lay is not None:
                gxi = (ops.reshape if st["unbatched"] else ops.permute).backward(lay, gxi)[0]
            out.append(gxi)
        return tuple(out) + (None,) * (st["n_inputs"] - 3)      # the masks' and flags' None

    def _average(self, P):
        """The mean over heads of P (N, H, L, S), with ops: (N, L, S, H) @ (1/H, ..., 1/H)."""
        Pt, s1 = ops.permute.forward(P, dims=(0, 2, 3, 1))
        w = np.full((self.num_heads, 1), 1 / self.num_heads, P.dtype)
        m, s2 = ops.linear.forward(Pt, w, None)
        y, s3 = ops.reshape.forward(m, shape=m.shape[:3])
        return y, (s1, s2, s3)

    @staticmethod
    def _average_backward(saved, g):
        s1, s2, s3 = saved
        g = ops.reshape.backward(s3, g)[0]
        g = ops.linear.backward(s2, g, needs=(True, False, False))[0]
        return ops.permute.backward(s1, g)[0]

    @staticmethod
    def _heads_backward(saved, gh):
        s1, s2 = saved
        return ops.reshape.backward(s1, ops.permute.backward(s2, gh)[0])[0]

    @staticmethod
    def _merge_backward(saved, g):
        s1, s2 = saved
        return ops.permute.backward(s1, ops.reshape.backward(s2, g)[0])[0]

    def get_config(self):
        return dict(embed_dim=self.embed_dim, num_heads=self.num_heads, dropout=self.dropout,
                    bias=self.in_proj_bias is not None, batch_first=self.batch_first,
                    dtype=self.in_proj_weight.dtype.name)

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


# -- the Transformer encoder layer -------------------------------------------------------------

ENCODER_ACTIVATIONS = ("relu", "gelu")


class TransformerEncoderLayer(_CountsInputs, Module):
    r"""Self-attention and a feed-forward network, each a residual branch, as
    torch.nn.TransformerEncoderLayer.

    norm_first=False (post-norm, PyTorch's default):
    :math:`h = \mathrm{norm1}(x + \mathrm{sa}(x))`, :math:`y = \mathrm{norm2}(h + \mathrm{ff}(h))`;
    norm_first=True (pre-norm): :math:`h = x + \mathrm{sa}(\mathrm{norm1}(x))`,
    :math:`y = h + \mathrm{ff}(\mathrm{norm2}(h))`; with
    sa(x) = dropout1(self_attn(x, x, x)) and
    ff(x) = dropout2(linear2(dropout(activation(linear1(x))))).

    Backward, a fork being a sum: through a residual branch :math:`y = x + f(u(x))`,
    :math:`g_x = g_y + J_u^\top J_f^\top g_y`; self-attention's three inputs are one
    array, so their gradients add.  ``forward(src, src_mask=None,
    src_key_padding_mask=None, is_causal=False)``; ``backward(gy)`` returns dL/dsrc.
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=False, norm_first=False, bias=True, device=None,
                 dtype=None, *, rng=None):
        super().__init__()
        who = "TransformerEncoderLayer"
        check_int(who, "dim_feedforward", dim_feedforward)
        check_real(who, "dropout", dropout, "a probability in [0, 1)", lambda p: 0 <= p < 1)
        if callable(activation) and not isinstance(activation, Module):
            activation = getattr(activation, "__name__", activation)     # F.relu, F.gelu: by name
        if not (isinstance(activation, Module) or activation in ENCODER_ACTIVATIONS):
            raise ValueError(f"{who}: activation={activation!r} is not valid; expected 'relu', 'gelu' "
                             "or a handydl Module")
        _cpu_only(device, who)
        rng = resolve_rng(rng)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            dtype=dtype, rng=rng)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype, rng=rng)
        self.dropout = Dropout(dropout, seed=rng)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype, rng=rng)
        self.norm_first = bool(norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.dropout1 = Dropout(dropout, seed=rng)
        self.dropout2 = Dropout(dropout, seed=rng)
        self.activation_name = activation if isinstance(activation, str) else None
        self.activation = (GENERATED["ReLU"]() if activation == "relu" else GENERATED["GELU"]()) \
            if isinstance(activation, str) else activation
        self.d_model, self.nhead, self.dim_feedforward = d_model, nhead, dim_feedforward
        self.dropout_p, self.layer_norm_eps, self.batch_first = float(dropout), layer_norm_eps, bool(batch_first)

    # sa and ff: the two branches, and their backwards (children in reverse)
    def _sa(self, x, attn_mask, key_padding_mask, is_causal):
        y, _ = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                              need_weights=False, is_causal=is_causal)
        return self.dropout1(y)

    def _sa_backward(self, g):
        gq, gk, gv = self.self_attn.backward(self.dropout1.backward(g))[:3]     # then the masks' None
        return gq + gk + gv                          # x is query, key and value: a fork

    def _ff(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def _ff_backward(self, g):
        g = self.dropout.backward(self.linear2.backward(self.dropout2.backward(g)))
        return self.linear1.backward(self.activation.backward(g))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x, n_inputs = src, self._n_args()
        if self.norm_first:
            h, s1 = ops.add.forward(x, self._sa(self.norm1(x), src_mask, src_key_padding_mask, is_causal))
            y, s2 = ops.add.forward(h, self._ff(self.norm2(h)))
        else:
            h, s1 = ops.add.forward(x, self._sa(x, src_mask, src_key_padding_mask, is_causal))
            h = self.norm1(h)
            y, s2 = ops.add.forward(h, self._ff(h))
            y = self.norm2(y)
        self.save(np.shape(y), n_inputs)
        return y

    def backward(self, gy, input_grad=True):
        shape, n_inputs = self._peek_saved()
        g = check_gy(gy, shape, "TransformerEncoderLayer")
        self.saved()
        if self.norm_first:          # y = h + ff(norm2(h)),  h = x + sa(norm1(x))
            gh = g + self.norm2.backward(self._ff_backward(g))
            gx = gh + self.norm1.backward(self._sa_backward(gh))
        else:                        # y = norm2(h + ff(h)),  h = norm1(x + sa(x))
            g = self.norm2.backward(g)
            gh = self.norm1.backward(g + self._ff_backward(g))
            gx = gh + self._sa_backward(gh)
        if not input_grad:
            return None
        return gx if n_inputs == 1 else (gx,) + (None,) * (n_inputs - 1)     # masks get None

    def get_config(self):
        if self.activation_name is None:
            raise TypeError("TransformerEncoderLayer: a layer with a Module as activation cannot be saved; "
                            "use activation='relu' or 'gelu'")
        return dict(d_model=self.d_model, nhead=self.nhead, dim_feedforward=self.dim_feedforward,
                    dropout=self.dropout_p, activation=self.activation_name,
                    layer_norm_eps=self.layer_norm_eps, batch_first=self.batch_first,
                    norm_first=self.norm_first, bias=self.linear1.bias is not None,
                    dtype=self.linear1.weight.dtype.name)
