r"""A small GPT (minGPT / nanoGPT) built from handydl modules, its backward written by hand.

The interface (what ``handydl train --model gpt`` and ``handydl sample`` build on)::

    model = nn.GPT(vocab_size, block_size, n_layer=4, n_head=4, n_embd=128,
                   dropout=0.0, bias=True, tie_weights=True)      # float32; dtype=, rng= keywords
    logits = model(idx)             # idx: int array (B, T), T <= block_size -> (B, T, vocab_size)
    loss = loss_fn(logits, targets) # loss_fn = nn.SequenceCrossEntropyLoss(ignore_index=-100)
    model.zero_grad()               # (before the forward of a new step)
    model.backward(loss_fn.backward())   # accumulates every Parameter.grad; returns None (ids)
    out = model.generate(idx, max_new_tokens, temperature=1.0, top_k=None, rng=None)
                                    # int array (B, T + max_new_tokens); call model.eval() first

The model, as nanoGPT's::

    x = wte(idx) + wpe(0..T-1)                      token and position embeddings (T, C) rows
    x = drop(x)
    for each block:  x = x + attn(ln_1(x))          causal self-attention, pre-norm
                     x = x + mlp(ln_2(x))           c_fc (C -> 4C), GELU, c_proj (4C -> C)
    logits = ln_f(x) W_e^T                          the head tied to wte.weight (or lm_head)

Backward reads it in reverse, a fork being a sum: each block is
:math:`g_x = g_y + J_{\mathrm{ln}}^\top J_f^\top g_y` (the skip path and the branch); the
tied weight :math:`W_e` is used twice (embedding and head), so its gradient is the sum of
the head's :math:`g_{\mathrm{logits}}^\top x` and the embedding's scatter-add.
Weights are initialized as nanoGPT: N(0, 0.02), the residual projections (``c_proj``)
N(0, 0.02/sqrt(2 n_layer)), biases 0, LayerNorm 1 and 0.  Parameter names follow
nanoGPT's (``wte``, ``wpe``, ``h.0.ln_1``, ``h.0.attn.c_attn``, ..., ``ln_f``,
``lm_head`` when untied), with handydl's Linear layout (in, out).
"""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..ops.registry import check_int, check_real
from .attention import Embedding
from .composite import ModuleList
from .layers import GENERATED, Dropout, LayerNorm, Linear, _float_dtype
from .module import Module, check_gy, no_grad, resolve_rng


def _normal(p, std, rng):
    p.data[...] = rng.standard_normal(p.shape) * std


class CausalSelfAttention(Module):
    r"""Multi-head causal self-attention, as nanoGPT's: ``c_attn`` (C -> 3C, the packed
    q, k, v), all heads in one batched scaled_dot_product_attention(is_causal=True),
    ``c_proj`` (C -> C), then dropout.  x (B, T, C) -> y (B, T, C).

    Backward: c_proj's, the heads merged back, attention's
    (:math:`g_V = P^\top G`, :math:`g_A = P \odot (g_P - \sum_j g_P P)`, :math:`g_Q = s g_A K`,
    :math:`g_K = s g_A^\top Q`), the three pieces joined again (split's backward), c_attn's.
    """

    def __init__(self, n_embd, n_head, dropout=0.0, bias=True, dtype=None, *, rng=None):
        super().__init__()
        check_int("CausalSelfAttention", "n_embd", n_embd)
        check_int("CausalSelfAttention", "n_head", n_head)
        if n_embd % n_head:
            raise ValueError(f"CausalSelfAttention: n_embd={n_embd} is not divisible by n_head={n_head}")
        rng = resolve_rng(rng)
        self.n_embd, self.n_head, self.dropout, self.bias = n_embd, n_head, float(dropout), bool(bias)
        self.c_attn = Linear(n_embd, 3 * n_embd, bias=bias, dtype=dtype, rng=rng)
        self.c_proj = Linear(n_embd, n_embd, bias=bias, dtype=dtype, rng=rng)
        self.resid_dropout = Dropout(dropout, seed=rng)
        self.rng = rng                                  # the attention weights' dropout masks

    def forward(self, x):
        B, T, C = np.shape(x)
        H, d = self.n_head, C // self.n_head
        qkv = self.c_attn(x)
        pieces, s_split = ops.split.forward(qkv, split_size_or_sections=C, dim=-1)
        heads = []
        for p in pieces:                                # (B, T, C) -> (B, H, T, d): views
            p4, s1 = ops.reshape.forward(p, shape=(B, T, H, d))
            ph, s2 = ops.permute.forward(p4, dims=(0, 2, 1, 3))
            heads.append((ph, (s1, s2)))
        (qh, sq), (kh, sk), (vh, sv) = heads
        p = self.dropout if self.training else 0.0
        yh, s_att = ops.scaled_dot_product_attention.forward(qh, kh, vh, None, dropout_p=p, is_causal=True,
                                                             seed=self.rng)
        y4, s_m1 = ops.permute.forward(yh, dims=(0, 2, 1, 3))
        y, s_m2 = ops.reshape.forward(y4, shape=(B, T, C))
        out = self.resid_dropout(self.c_proj(y))
        self.save(s_split, (sq, sk, sv), s_att, s_m1, s_m2, np.shape(out))
        return out

    def backward(self, gy, input_grad=True):
        s_split, s_heads, s_att, s_m1, s_m2, shape = self._peek_saved()
        gy = check_gy(gy, shape, "CausalSelfAttention")
        self.saved()
        g = self.c_proj.backward(self.resid_dropout.backward(gy))
        g = ops.permute.backward(s_m1, ops.reshape.backward(s_m2, g)[0])[0]      # (B, H, T, d)
        gq, gk, gv, _ = ops.scaled_dot_product_attention.backward(s_att, g)
        g_pieces = [ops.reshape.backward(s1, ops.permute.backward(s2, gh)[0])[0]
                    for (s1, s2), gh in zip(s_heads, (gq, gk, gv))]
        g_qkv = ops.split.backward(s_split, *g_pieces)[0]
        return self.c_attn.backward(g_qkv, input_grad=input_grad)

    def get_config(self):
        return dict(n_embd=self.n_embd, n_head=self.n_head, dropout=self.dropout, bias=self.bias,
                    dtype=self.c_attn.weight.dtype.name)


class GPTMLP(Module):
    """nanoGPT's MLP: c_fc (C -> 4C), GELU (exact, erf), c_proj (4C -> C), dropout.
    Backward: the chain in reverse."""

    def __init__(self, n_embd, dropout=0.0, bias=True, dtype=None, *, rng=None):
        super().__init__()
        rng = resolve_rng(rng)
        self.n_embd, self.dropout_p, self.bias = n_embd, float(dropout), bool(bias)
        self.c_fc = Linear(n_embd, 4 * n_embd, bias=bias, dtype=dtype, rng=rng)
        self.gelu = GENERATED["GELU"]()
        self.c_proj = Linear(4 * n_embd, n_embd, bias=bias, dtype=dtype, rng=rng)
        self.dropout = Dropout(dropout, seed=rng)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

    def backward(self, gy, input_grad=True):
        g = self.gelu.backward(self.c_proj.backward(self.dropout.backward(gy)))
        return self.c_fc.backward(g, input_grad=input_grad)

    def get_config(self):
        return dict(n_embd=self.n_embd, dropout=self.dropout_p, bias=self.bias,
                    dtype=self.c_fc.weight.dtype.name)


class GPTBlock(Module):
    r"""A pre-norm Transformer block: :math:`h = x + \mathrm{attn}(\mathrm{ln_1}(x))`,
    :math:`y = h + \mathrm{mlp}(\mathrm{ln_2}(h))`.

    Backward, each residual a fork and so a sum:
    :math:`g_h = g_y + J_{\mathrm{ln_2}}^\top J_{\mathrm{mlp}}^\top g_y`,
    :math:`g_x = g_h + J_{\mathrm{ln_1}}^\top J_{\mathrm{attn}}^\top g_h`.
    """

    def __init__(self, n_embd, n_head, dropout=0.0, bias=True, dtype=None, *, rng=None):
        super().__init__()
        rng = resolve_rng(rng)
        self.ln_1 = LayerNorm(n_embd, bias=bias, dtype=dtype)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, dtype, rng=rng)
        self.ln_2 = LayerNorm(n_embd, bias=bias, dtype=dtype)
        self.mlp = GPTMLP(n_embd, dropout, bias, dtype, rng=rng)
        self.config = dict(n_embd=n_embd, n_head=n_head, dropout=float(dropout), bias=bool(bias),
                           dtype=_float_dtype(dtype, "GPTBlock").name)

    def forward(self, x):
        h, _ = ops.add.forward(x, self.attn(self.ln_1(x)))     # ops.add: a tape sees the sums
        y, _ = ops.add.forward(h, self.mlp(self.ln_2(h)))
        self.save(np.shape(y))
        return y

    def backward(self, gy, input_grad=True):
        gy = check_gy(gy, self._peek_saved(), "GPTBlock")
        self.saved()
        gh = gy + self.ln_2.backward(self.mlp.backward(gy))     # skip path + branch
        return gh + self.ln_1.backward(self.attn.backward(gh))

    def get_config(self):
        return dict(self.config)


class GPT(Module):
    """A small GPT; see the module docstring for the interface and the model."""

    def __init__(self, vocab_size, block_size, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=True,
                 tie_weights=True, *, dtype=None, rng=None):
        super().__init__()
        for name, n in (("vocab_size", vocab_size), ("block_size", block_size), ("n_layer", n_layer),
                        ("n_head", n_head), ("n_embd", n_embd)):
            check_int("GPT", name, n)
        if n_embd % n_head:
            raise ValueError(f"GPT: n_embd={n_embd} is not divisible by n_head={n_head} "
                             "(each head has n_embd / n_head features)")
        check_real("GPT", "dropout", dropout, "a probability in [0, 1)", lambda p: 0 <= p < 1)
        dtype = _float_dtype(dtype, "GPT")
        rng = resolve_rng(rng)
        self.config = dict(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                           n_embd=n_embd, dropout=float(dropout), bias=bool(bias),
                           tie_weights=bool(tie_weights), dtype=dtype.name)
        self.vocab_size, self.block_size, self.tie_weights = vocab_size, block_size, bool(tie_weights)
        self.wte = Embedding(vocab_size, n_embd, dtype=dtype, rng=rng)
        self.wpe = Embedding(block_size, n_embd, dtype=dtype, rng=rng)
        self.drop = Dropout(dropout, seed=rng)
        self.h = ModuleList([GPTBlock(n_embd, n_head, dropout, bias, dtype, rng=rng) for _ in range(n_layer)])
        self.ln_f = LayerNorm(n_embd, bias=bias, dtype=dtype)
        if not self.tie_weights:
            self.lm_head = Linear(n_embd, vocab_size, bias=False, dtype=dtype, rng=rng)
        self._init_weights(rng, n_layer)

    def _init_weights(self, rng, n_layer):
        """nanoGPT's: N(0, 0.02) weights, zero biases, c_proj N(0, 0.02 / sqrt(2 n_layer))."""
        for name, m in self.named_modules():
            if isinstance(m, Linear):
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj") else 0.02
                _normal(m.weight, std, rng)
                if m.bias is not None:
                    m.bias.data[...] = 0
            elif isinstance(m, Embedding):
                _normal(m.weight, 0.02, rng)

    def _check_idx(self, idx):
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu" or idx.ndim != 2:
            raise ValueError(f"GPT: expected token ids as an integer array of shape (B, T), got dtype "
                             f"{idx.dtype} and shape {idx.shape}")
        if not 1 <= idx.shape[1] <= self.block_size:
            raise ValueError(f"GPT: a sequence of length T={idx.shape[1]} does not fit; expected "
                             f"1 <= T <= block_size={self.block_size}")
        return idx

    def forward(self, idx):
        """Token ids (B, T) -> logits (B, T, vocab_size)."""
        idx = self._check_idx(idx)
        T = idx.shape[1]
        tok = self.wte(idx)                                     # (B, T, C)
        pos = self.wpe(np.arange(T))                            # (T, C), broadcast over the batch
        x, s_add = ops.add.forward(tok, pos)
        x = self.drop(x)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        s_head = None
        if self.tie_weights:                                    # logits = x W_e^T
            WT, s_t = ops.permute.forward(self.wte.weight.data, dims=(1, 0))
            logits, s_lin = ops.linear.forward(x, WT, None)
            s_head = (s_t, s_lin)
        else:
            logits = self.lm_head(x)
        self.save(s_add, s_head, logits.shape)
        return logits

    def backward(self, glogits, input_grad=True):
        """Accumulates dL/dparam into every Parameter from dL/dlogits (B, T, vocab_size);
        returns None: the token ids have no gradient."""
        s_add, s_head, shape = self._peek_saved()
        g = check_gy(glogits, shape, "GPT")
        self.saved()
        if s_head is not None:                                  # the head's use of W_e
            s_t, s_lin = s_head
            g, gWT, _ = ops.linear.backward(s_lin, g, needs=(True, True, False))
            self.wte.weight.accumulate(ops.permute.backward(s_t, gWT)[0])
        else:
            g = self.lm_head.backward(g)
        g = self.ln_f.backward(g)
        for block in reversed(list(self.h)):
            g = block.backward(g)
        g = self.drop.backward(g)
        gtok, gpos = ops.add.backward(s_add, g)
        self.wpe.backward(gpos)
        self.wte.backward(gtok)                                 # the embedding's use of W_e: added
        return None

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, rng=None):
        """Append ``max_new_tokens`` sampled tokens to each row of idx (B, T): the context is
        cropped to the last block_size tokens, the last position's logits divided by
        ``temperature`` (> 0), kept to the ``top_k`` largest (if given), and a token drawn from
        their softmax with ``rng`` (a seed or a Generator).  Returns (B, T + max_new_tokens)."""
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu" or idx.ndim != 2 or idx.shape[1] < 1:
            raise ValueError(f"GPT.generate: expected token ids as an integer array of shape (B, T), "
                             f"T >= 1, got dtype {idx.dtype} and shape {idx.shape}")
        check_int("GPT.generate", "max_new_tokens", max_new_tokens, "an integer >= 0", lambda n: n >= 0)
        check_real("GPT.generate", "temperature", temperature, "a finite number > 0",
                   lambda t: 0 < t < math.inf)
        if top_k is not None:
            check_int("GPT.generate", "top_k", top_k)
        rng = resolve_rng(rng)
        out = [idx.astype(np.int64)]
        with no_grad():
            for _ in range(max_new_tokens):
                context = np.concatenate(out, axis=1)[:, -self.block_size:]
                logits = self.forward(context)[:, -1, :].astype(np.float64) / temperature
                if top_k is not None and top_k < logits.shape[1]:
                    kth = np.partition(logits, -top_k, axis=1)[:, -top_k][:, None]
                    logits = np.where(logits < kth, -np.inf, logits)
                p = ops.softmax(logits, dim=-1)
                u = rng.random((p.shape[0], 1))
                nxt = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), p.shape[1] - 1)
                out.append(nxt[:, None].astype(np.int64))
        return np.concatenate(out, axis=1)

    def get_config(self):
        return dict(self.config)

    def extra_repr(self):
        c = self.config
        return (f"vocab_size={c['vocab_size']}, block_size={c['block_size']}, n_layer={c['n_layer']}, "
                f"n_head={c['n_head']}, n_embd={c['n_embd']}, tie_weights={c['tie_weights']}")
