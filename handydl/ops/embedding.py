r"""The embedding lookup: a row of a table per token id.

With :math:`W` of shape (num_embeddings, embedding_dim) and integer ids
:math:`i_n`, the forward pass is a gather, :math:`y_n = W_{i_n}`.  It is a
product with one-hot rows, :math:`y = O W` with :math:`O_{n,r} = [i_n = r]`,
so the gradient is the transposed product

.. math::  \frac{\partial L}{\partial W} = O^\top g_y,\qquad
           \frac{\partial L}{\partial W_r} = \sum_{n:\, i_n = r} g_{y,n}

a scatter-add: every row of the upstream gradient is added onto the table row
its id read, and an id used twice collects both gradients (a fork).  Rows no
id read get 0; so does ``padding_idx``, whose row is held constant, as PyTorch.
"""
from __future__ import annotations

import numpy as np

from .registry import as_float, register


def check_indices(indices, num_embeddings, who="embedding"):
    """``indices`` as an int64 array, every id in [0, num_embeddings); TypeError for a
    non-integer dtype, ValueError naming the first id out of range."""
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{who}: expected integer token ids, got dtype {idx.dtype}")
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= num_embeddings:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{who}: token id {bad} is out of range for {num_embeddings} embeddings "
                             f"(expected 0 <= id < {num_embeddings})")
    return idx.astype(np.int64, copy=False)


def check_padding_idx(padding_idx, num_embeddings, who="embedding"):
    """padding_idx as a row number in [0, num_embeddings) (negative counts from the end,
    as PyTorch), or None."""
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
        raise TypeError(f"{who}: padding_idx={padding_idx!r} is not valid; expected None or an integer")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"{who}: padding_idx={padding_idx} is out of range for {num_embeddings} "
                         f"embeddings (expected -{num_embeddings} <= padding_idx < {num_embeddings})")
    return int(padding_idx) % num_embeddings


def _embedding_sample(rng, dtype, lo, hi):
    # ids 0..4 of 6 rows: row 5 is never read (its gradient is 0 both by the convention of
    # padding_idx=-1 and by finite differences); tests/test_attention.py reads padding rows
    idx = rng.integers(0, 5, size=(3, 4))
    idx[0, :2] = 2                              # a repeated id: its row collects two gradients
    return idx, rng.uniform(lo, hi, size=(6, 5)).astype(dtype)


@register(
    "embedding", kind="embedding",
    formula=r"y_{n} = W_{i_n},\quad W \in \mathbb{R}^{\text{num}\times\text{dim}}",
    derivative=(r"\frac{\partial L}{\partial W_r} = \sum_{n:\, i_n = r} g_{y,n}\quad"
                r"\text{(a scatter-add; } 0 \text{ for } r = \text{padding\_idx)}"),
    convention="the token ids get no gradient; the padding_idx row gets 0, as PyTorch",
    inputs=("indices", "weight"), differentiable=(False, True), params={"padding_idx": None},
    test_params=({"padding_idx": -1},), complex_step=True, sample=_embedding_sample,
    domains=((-3.0, 3.0), (-1000.0, 1000.0)),
    reference=lambda torch, idx, w, padding_idx: torch.nn.functional.embedding(idx, w, padding_idx),
)
def embedding(indices, weight, padding_idx):
    """y = weight[indices]: ids of any shape (...) give y of shape (..., embedding_dim).

    saved: (ids, weight's shape, padding row or None).
    """
    weight = as_float(weight)
    if weight.ndim != 2:
        raise ValueError(f"embedding: expected weight of shape (num_embeddings, embedding_dim), "
                         f"got shape {weight.shape}")
    idx = check_indices(indices, weight.shape[0])
    pad = check_padding_idx(padding_idx, weight.shape[0])
    return weight[idx], (idx, weight.shape, pad)


@embedding.set_backward
def _embedding_backward(saved, gy):
    idx, shape, pad = saved
    return None, scatter_add(idx, gy, shape, pad)


def scatter_add(idx, gy, shape, pad=None):
    """g_W = O^T g_y with O the one-hot rows of the ids: g_W[r] = sum of g_y[n] over i_n = r.

    The one-hot matrix is sparse (one 1 per row), so the product is SciPy's sparse
    one, a single pass over g_y (np.add.at computes the same, several times slower).
    """
    n, dim = idx.size, shape[1]
    g2 = np.asarray(gy).reshape(n, dim)
    if g2.dtype not in (np.float32, np.float64, np.complex64, np.complex128):   # float16: no sparse
        gw = np.zeros(shape, g2.dtype)
        np.add.at(gw, idx.reshape(-1), g2)
        if pad is not None:
            gw[pad] = 0
        return gw
    from scipy import sparse
    ones = np.ones(n, dtype=g2.real.dtype)
    onehot_t = sparse.csr_matrix((ones, (idx.reshape(-1), np.arange(n))), shape=(shape[0], n))
    gw = np.asarray(onehot_t @ g2, dtype=g2.dtype)
    if pad is not None:
        gw[pad] = 0
    return gw
