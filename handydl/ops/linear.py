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


def _bilinear_sample(rng, dtype, lo, hi):
    x1 = rng.uniform(lo, hi, size=(4, 3)).astype(dtype)
    x2 = rng.uniform(lo, hi, size=(4, 2)).astype(dtype)
    A = rng.standard_normal((5, 3, 2)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    return x1, x2, A, b


@register(
    "bilinear", kind="linear",
    formula=r"y_k = x_1^\top A_k\, x_2 + b_k = \textstyle\sum_{i,j} x_{1,i} A_{kij} x_{2,j} + b_k",
    derivative=(r"\frac{\partial L}{\partial x_{1,i}} = \textstyle\sum_{k,j} g_k A_{kij} x_{2,j},\quad"
                r"\frac{\partial L}{\partial x_{2,j}} = \textstyle\sum_{k,i} g_k A_{kij} x_{1,i},\quad"
                r"\frac{\partial L}{\partial A_{kij}} = \textstyle\sum_n g_{n,k} x_{1,n,i} x_{2,n,j},\quad"
                r"\frac{\partial L}{\partial b_k} = \textstyle\sum_n g_{n,k}"),
    inputs=("x1", "x2", "A", "b"), complex_step=True, sample=_bilinear_sample,
    domains=((-3.0, 3.0), (-100.0, 100.0)),
    reference=lambda torch, x1, x2, A, b: torch.nn.functional.bilinear(x1, x2, A, b),
)
def bilinear(x1, x2, A, b=None):
    """y = x1^T A_k x2 + b_k for every output k: x1 (..., in1), x2 (..., in2), A of
    torch.nn.Bilinear's shape (out, in1, in2), b (out,) or None.

    Computed as one product: u = x1 A viewed as (in1, out * in2), so u_{n,k,j} =
    sum_i x1_{n,i} A_{k,i,j}; then y_{n,k} = sum_j u_{n,k,j} x2_{n,j}.  Backward
    keeps u for dL/dx2 and dL/dA's pairing with x2.
    """
    x1, x2, A = as_float(x1), as_float(x2), as_float(A)
    if A.ndim != 3:
        raise ValueError(f"bilinear: A must have shape (out, in1, in2), got shape {A.shape}")
    out, in1, in2 = A.shape
    if x1.ndim == 0 or x1.shape[-1] != in1 or x2.ndim == 0 or x2.shape[-1] != in2 \
            or x1.shape[:-1] != x2.shape[:-1]:
        raise ValueError(f"bilinear: expected inputs of shapes (..., {in1}) and (..., {in2}) with the same "
                         f"leading dims, got {x1.shape} and {x2.shape}")
    lead = x1.shape[:-1]
    X1, X2 = x1.reshape(-1, in1), x2.reshape(-1, in2)
    M = A.transpose(1, 0, 2).reshape(in1, out * in2)          # M[i, k*in2 + j] = A[k, i, j]
    u = (X1 @ M).reshape(-1, out, in2)                         # u[n, k, j] = sum_i x1[n,i] A[k,i,j]
    y = np.einsum("nkj,nj->nk", u, X2)
    if b is not None:
        b = as_float(b)
        if b.shape != (out,):
            raise ValueError(f"bilinear: expected bias of shape ({out},), got shape {b.shape}")
        y = y + b
    return y.reshape(*lead, out), (X1, X2, A, u, lead, b is not None)


@bilinear.set_backward
def _bilinear_backward(saved, gy):
    X1, X2, A, u, lead, has_bias = saved
    out, in1, in2 = A.shape
    G = gy.reshape(-1, out)
    # dL/dx2_j = sum_k g_k u_{k,j};  dL/dx1_i = sum_{k,j} g_k A_{kij} x2_j = (g (x) x2) . A over (k, j)
    gx2 = np.einsum("nk,nkj->nj", G, u)
    gx2x = (G[:, :, None] * X2[:, None, :]).reshape(-1, out * in2)        # (g (x) x2)[n, k*in2 + j]
    M = A.transpose(1, 0, 2).reshape(in1, out * in2)
    gx1 = gx2x @ M.T
    gA = (X1.T @ gx2x).reshape(in1, out, in2).transpose(1, 0, 2)         # sum_n x1_i g_k x2_j
    gb = G.sum(axis=0) if has_bias else None
    return gx1.reshape(*lead, in1), gx2.reshape(*lead, in2), np.ascontiguousarray(gA), gb
