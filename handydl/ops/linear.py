r"""Linear maps: the affine layer, a matrix product and a chain of products.

The rule behind all three: for :math:`Y = A B` and upstream gradient
:math:`G = \partial L/\partial Y`,
:math:`\partial L/\partial A = G B^\top` and :math:`\partial L/\partial B = A^\top G`.
"""
from __future__ import annotations

import numpy as np

from .registry import as_float, register


def _linear_sample(rng, dtype, lo, hi):
    x = rng.uniform(lo, hi, size=(4, 3)).astype(dtype)
    W = rng.standard_normal((3, 2)).astype(dtype)
    b = rng.standard_normal(2).astype(dtype)
    return x, W, b


@register(
    "linear", kind="linear",
    formula=r"y = x W + b,\quad W \in \mathbb{R}^{\text{in}\times\text{out}}",
    derivative=(r"\frac{\partial L}{\partial x} = g_y W^\top,\quad"
                r"\frac{\partial L}{\partial W} = x^\top g_y,\quad"
                r"\frac{\partial L}{\partial b} = \textstyle\sum_n g_{y,n}"),
    inputs=("x", "W", "b"), complex_step=True, sample=_linear_sample,
    domains=((-3.0, 3.0), (-1000.0, 1000.0)),
    reference=lambda torch, x, W, b: torch.nn.functional.linear(x, W.T, b),
)
def linear(x, W, b=None):
    """y = x @ W + b for x of shape (..., in), W (in, out), b (out,) or None."""
    x, W = as_float(x), as_float(W)
    if W.ndim != 2:
        raise ValueError(f"linear: W must have shape (in, out), got shape {W.shape}")
    if x.ndim == 0 or x.shape[-1] != W.shape[0]:
        raise ValueError(f"linear: expected input of shape (..., {W.shape[0]}), "
                         f"got shape {x.shape}")
    y = x @ W
    if b is not None:
        b = as_float(b)
        if b.shape != (W.shape[1],):
            raise ValueError(f"linear: expected bias of shape ({W.shape[1]},), got shape {b.shape}")
        if np.result_type(y, b) == y.dtype:
            y += b      # in place: the bias add needs no second output array
        else:
            y = y + b
    return y, (x, W, b is not None)


@linear.set_backward
def _linear_backward(saved, gy, needs=(True, True, True)):
    x, W, has_bias = saved
    gx = gy @ W.T if needs[0] else None   # a first layer's input is data: skip the product
    x2 = x.reshape(-1, x.shape[-1])        # leading dims are all batch dims
    g2 = gy.reshape(-1, gy.shape[-1])
    gW = x2.T @ g2 if needs[1] else None
    gb = g2.sum(axis=0) if has_bias and needs[2] else None
    return gx, gW, gb


def _matmul_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(3, 4)).astype(dtype),
            rng.uniform(lo, hi, size=(4, 2)).astype(dtype))


def _check_matmul(A, B):
    if A.ndim < 2 or B.ndim < 2 or A.shape[:-2] != B.shape[:-2] or A.shape[-1] != B.shape[-2]:
        raise ValueError(f"matmul: shapes {A.shape} and {B.shape} do not fit; expected "
                         "(..., n, k) and (..., k, m) with the same leading dims")


@register(
    "matmul", kind="linear",
    formula=r"Y = A B", derivative=r"\frac{\partial L}{\partial A} = G B^\top,\quad \frac{\partial L}{\partial B} = A^\top G",
    inputs=("A", "B"), complex_step=True, sample=_matmul_sample,
    domains=((-3.0, 3.0),),
    reference=lambda torch, A, B: A @ B,
)
def matmul(A, B):
    """Y = A @ B for (..., n, k) @ (..., k, m) with the same leading (batch) dims."""
    A, B = as_float(A), as_float(B)
    _check_matmul(A, B)
    return A @ B, (A, B)


@matmul.set_backward
def _matmul_backward(saved, G):
    A, B = saved
    return G @ np.swapaxes(B, -1, -2), np.swapaxes(A, -1, -2) @ G


def _chain_sample(rng, dtype, lo, hi):
    dims = (3, 4, 2, 5, 3)
    return tuple(rng.uniform(lo, hi, size=(m, n)).astype(dtype) for m, n in zip(dims, dims[1:]))


@register(
    "chain_matmul", kind="linear",
    formula=r"Y = X_1 X_2 \cdots X_n",
    derivative=r"\frac{\partial L}{\partial X_i} = (X_1 \cdots X_{i-1})^\top\, G\, (X_{i+1} \cdots X_n)^\top",
    inputs=("*X",), complex_step=True, sample=_chain_sample,
    domains=((-2.0, 2.0),),
    reference=lambda torch, *Xs: torch.linalg.multi_dot(Xs),
)
def chain_matmul(*Xs):
    """X1 @ X2 @ ... @ Xn of 2-D matrices, left to right.

    Prefix products P_i = X1..Xi are kept for backward; suffix products are
    built on the way back, so each gradient costs two products.
    """
    if len(Xs) < 2:
        raise ValueError(f"chain_matmul: expected at least 2 matrices, got {len(Xs)}")
    Xs = [as_float(X) for X in Xs]
    for i, (A, B) in enumerate(zip(Xs, Xs[1:]), start=1):
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
            raise ValueError(f"chain_matmul: X{i} of shape {A.shape} and X{i + 1} of shape "
                             f"{B.shape} do not fit; expected 2-D (m, k) and (k, n)")
    prefixes = [Xs[0]]
    for X in Xs[1:]:
        prefixes.append(prefixes[-1] @ X)
    return prefixes[-1], (Xs, prefixes)


@chain_matmul.set_backward
def _chain_matmul_backward(saved, G):
    Xs, prefixes = saved
    grads = [None] * len(Xs)
    right = G                     # G (X_{i+1} .. X_n)^T, grown from the right
    for i in range(len(Xs) - 1, 0, -1):
        grads[i] = prefixes[i - 1].T @ right
        right = right @ Xs[i].T
    grads[0] = right
    return tuple(grads)
