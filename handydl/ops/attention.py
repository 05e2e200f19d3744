r"""Scaled dot-product attention, as ``torch.nn.functional.scaled_dot_product_attention``.

For queries :math:`Q` (..., L, E), keys :math:`K` (..., S, E) and values
:math:`V` (..., S, Ev), with :math:`s = 1/\sqrt{E}` unless ``scale`` is given:

.. math::  A = s\,Q K^\top + M,\qquad P = \mathrm{softmax}_{\text{rows}}(A),\qquad Y = P V

(M: the additive mask; a boolean mask is 0 where True and :math:`-\infty`
where False).  Backward, with :math:`G = \partial L/\partial Y`, reads the
forward in reverse:

.. math::
   g_V = P^\top G,\quad g_P = G V^\top,\quad
   g_A = P \odot \bigl(g_P - \textstyle\sum_j g_{P,\cdot j} P_{\cdot j}\bigr),\quad
   g_Q = s\, g_A K,\quad g_K = s\, g_A^\top Q

where :math:`g_A` is the row softmax's vector-Jacobian product, one row at a
time (never the Jacobian).  All heads and batch items are one batched product
(``np.matmul`` over the leading dims): no Python loop over heads or positions.

A row whose every key is masked out has no softmax; as PyTorch's
``scaled_dot_product_attention`` (its "safe softmax"), its weights are 0, so
its output and its gradients are 0 (``nn.MultiheadAttention`` follows this too;
PyTorch's own MultiheadAttention gives NaN there when need_weights=True).
"""
from __future__ import annotations

import math

import numpy as np

from .dropout import _generator
from .registry import as_float, register


def check_scale(scale, who="scaled_dot_product_attention"):
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating))
                              or not math.isfinite(scale)):
        raise ValueError(f"{who}: scale={scale!r} is not valid; expected None or a finite number")


def _check_params(p):
    from .registry import check_real
    check_real("scaled_dot_product_attention", "dropout_p", p["dropout_p"], "a probability in [0, 1)",
               lambda v: 0 <= v < 1)
    check_scale(p["scale"])
    if not isinstance(p["is_causal"], (bool, np.bool_)):
        raise TypeError(f"scaled_dot_product_attention: is_causal={p['is_causal']!r} is not valid; "
                        "expected True or False")


def _check_shapes(q, k, v, who):
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"{who}: expected query (..., L, E), key (..., S, E) and value (..., S, Ev), "
                         f"got shapes {q.shape}, {k.shape}, {v.shape}")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]) or q.shape[-1] != k.shape[-1] \
            or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{who}: query {q.shape}, key {k.shape} and value {v.shape} do not fit; "
                         "expected (..., L, E), (..., S, E) and (..., S, Ev) with the same leading dims")


def causal_mask(L, S):
    """The boolean (L, S) mask of causal attention: query i sees keys j <= i (top-left aligned,
    as PyTorch's is_causal)."""
    return np.tri(L, S, dtype=bool)


def _masked_scores(A, attn_mask, is_causal, who):
    """A (..., L, S) with the mask applied in place: bool False (or causal) -> -inf, float added."""
    L, S = A.shape[-2:]
    if is_causal:
        if attn_mask is not None:
            raise ValueError(f"{who}: an explicit attn_mask should not be set when is_causal=True")
        np.copyto(A, -np.inf, where=~causal_mask(L, S))
        return A
    if attn_mask is None:
        return A
    m = np.asarray(attn_mask)
    try:
        np.broadcast_shapes(m.shape, A.shape)
        if np.broadcast_shapes(m.shape, A.shape) != A.shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"{who}: attn_mask of shape {m.shape} does not broadcast to the attention "
                         f"scores' shape {A.shape} (..., L={L}, S={S})") from None
    if m.dtype == bool:
        np.copyto(A, -np.inf, where=~m)
    elif m.dtype.kind == "f":
        A += m.astype(A.dtype, copy=False)          # a float32 model stays float32
    else:
        raise TypeError(f"{who}: attn_mask must be boolean (True = take part) or float (added to "
                        f"the scores), got dtype {m.dtype}")
    return A


def row_softmax(A):
    """softmax along the last dim, in place in A; rows that are all -inf give 0 (no 0/0)."""
    m = A.real.max(axis=-1, keepdims=True)
    m[m == -np.inf] = 0                              # a fully masked row: exp(-inf) = 0 everywhere
    A -= m
    np.exp(A, out=A)
    s = A.real.sum(axis=-1, keepdims=True) if not np.iscomplexobj(A) else A.sum(axis=-1, keepdims=True)
    s[s == 0] = 1                                    # 0 / 1 = 0: the safe softmax's zero row
    A /= s
    return A


def _qk_sample(rng, dtype, lo, hi):
    q = rng.uniform(lo, hi, size=(2, 3, 4)).astype(dtype)
    k = rng.uniform(lo, hi, size=(2, 5, 4)).astype(dtype)
    return q, k


def _sdpa_sample(rng, dtype, lo, hi):
    q, k = _qk_sample(rng, dtype, lo, hi)
    return q, k, rng.uniform(lo, hi, size=(2, 5, 3)).astype(dtype)


def _torch_weights(torch, q, k, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, seed=None):
    s = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    A = q @ k.transpose(-1, -2) * s
    if is_causal:
        A = A.masked_fill(~torch.ones(A.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    if attn_mask is not None:
        A = A.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else A + attn_mask
    return torch.softmax(A, dim=-1)


def _torch_sdpa(torch, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, seed=None):
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)


_PARAMS = {"dropout_p": 0.0, "is_causal": False, "scale": None, "seed": None}
_CONVENTION = ("a row with every key masked out has weights 0 (output and gradients 0), as "
               "PyTorch's scaled_dot_product_attention; the mask gets no gradient")


@register(
    "attention_weights", kind="attention",
    formula=r"P = \mathrm{softmax}\Bigl(s\,Q K^\top + M\Bigr),\quad s = \frac{1}{\sqrt{E}}",
    derivative=(r"g_A = P \odot \bigl(g_P - \textstyle\sum_j (g_P \odot P)_{\cdot j}\bigr),\ "
                r"g_Q = s\, g_A K,\ g_K = s\, g_A^\top Q"),
    convention=_CONVENTION,
    inputs=("query", "key", "attn_mask"), differentiable=(True, True, False), params=dict(_PARAMS),
    test_params=({"is_causal": True}, {"scale": 0.3}),
    check_params=_check_params, complex_step=True, sample=_qk_sample,
    domains=((-2.0, 2.0), (-20.0, 20.0)), reference=_torch_weights,
)
def attention_weights(query, key, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, seed=None):
    r"""P = softmax(s Q K^T + M) row by row (then dropout): the weights of attention.

    query (..., L, E), key (..., S, E) -> P (..., L, S); masks and parameters as
    :func:`scaled_dot_product_attention`.  saved: (Q, K, P before dropout, the
    dropout's scaled mask or None, s).
    """
    who = "attention_weights"
    q, k = as_float(query), as_float(key)
    _check_shapes(q, k, k[..., :1], who)
    s = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    A = q @ np.swapaxes(k, -1, -2)
    A *= s
    P = row_softmax(_masked_scores(A, attn_mask, is_causal, who))
    if not dropout_p:
        return P, (q, k, P, None, s)
    keep = (_generator(seed).random(P.shape, dtype=P.real.dtype) >= dropout_p) \
        * P.real.dtype.type(1 / (1 - dropout_p))
    return P * keep, (q, k, P, keep, s)


def weights_vjp(saved, gP):
    """(g_Q, g_K) from gP = dL/d(P after dropout); gP is overwritten (pass a fresh array)."""
    q, k, P, keep, s = saved
    gA = gP
    if keep is not None:
        gA *= keep                                        # P_d = P * keep
    gA -= (gA * P).sum(axis=-1, keepdims=True)            # the row softmax's VJP: P (g - sum g P)
    gA *= P
    gA *= s                                               # A = s Q K^T: the scale, once for both
    return gA @ k, np.swapaxes(gA, -1, -2) @ q


@attention_weights.set_backward
def _attention_weights_backward(saved, gP):
    gq, gk = weights_vjp(saved, np.array(gP, copy=True))
    return gq, gk, None


@register(
    "scaled_dot_product_attention", kind="attention",
    formula=(r"Y = \mathrm{softmax}\Bigl(s\,Q K^\top + M\Bigr) V,\quad s = \frac{1}{\sqrt{E}}"),
    derivative=(r"g_V = P^\top G,\ g_P = G V^\top,\ "
                r"g_A = P \odot \bigl(g_P - \textstyle\sum_j (g_P \odot P)_{\cdot j}\bigr),\ "
                r"g_Q = s\, g_A K,\ g_K = s\, g_A^\top Q"),
    convention=_CONVENTION,
    inputs=("query", "key", "value", "attn_mask"), differentiable=(True, True, True, False),
    params=dict(_PARAMS), test_params=({"is_causal": True}, {"scale": 0.3}),
    check_params=_check_params, complex_step=True, sample=_sdpa_sample,
    domains=((-2.0, 2.0), (-20.0, 20.0)), reference=_torch_sdpa,
)
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, seed=None):
    r"""Y = softmax(s Q K^T + M) V over the last two dims, all leading (batch, head) dims at once.

    query (..., L, E), key (..., S, E), value (..., S, Ev) -> Y (..., L, Ev).
    ``attn_mask``: broadcastable to (..., L, S); boolean (True = take part) or float
    (added to the scores), as PyTorch.  ``is_causal``: query i attends to keys j <= i.
    ``dropout_p`` drops attention weights (inverted scaling, mask drawn from ``seed``:
    an int or a Generator).  saved: (attention_weights' saved state, P after dropout, V).
    """
    q, k, v = as_float(query), as_float(key), as_float(value)
    _check_shapes(q, k, v, "scaled_dot_product_attention")
    Pd, s_w = attention_weights.fn(q, k, attn_mask, dropout_p, is_causal, scale, seed)
    return Pd @ v, (s_w, Pd, v)


@scaled_dot_product_attention.set_backward
def _sdpa_backward(saved, gy):
    s_w, Pd, v = saved
    gv = np.swapaxes(Pd, -1, -2) @ gy                     # Y = P_d V
    gP = gy @ np.swapaxes(v, -1, -2)
    gq, gk = weights_vjp(s_w, gP)                         # gP is fresh: overwritten there
    return gq, gk, gv, None
