r"""Softmax, log-softmax and sum-normalization along a dimension.

Their Jacobians are dense along ``dim``, but backward never builds them: it is
a vector-Jacobian product in O(n).  ``softmax_jacobian`` builds the matrix
:math:`\mathrm{diag}(p) - p p^\top` for people who want to see it.
"""
from __future__ import annotations

import numpy as np

from .registry import as_float, register


def _row_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(3, 5)).astype(dtype),)


def _positive_sample(rng, dtype, lo, hi):
    return (rng.uniform(0.1, 5.0, size=(3, 5)).astype(dtype),)


def _shift_by_max(x, dim):
    # max of the real part: complex-step checks pass x + ih through here
    return x - np.max(x.real, axis=dim, keepdims=True)


@register(
    "softmax", module="Softmax", kind="softmax",
    formula=r"p_i = \mathrm{softmax}(x)_i = \frac{e^{x_i}}{\sum_k e^{x_k}}",
    derivative=(r"\frac{\partial p_i}{\partial x_j} = p_i(\delta_{ij} - p_j),\quad "
                r"g_x = p \odot \bigl(g_y - \textstyle\sum_k g_{y,k}\,p_k\bigr)"),
    params={"dim": -1}, inputs=("x",), complex_step=True,
    domains=((-6.0, 6.0), (-1000.0, -100.0), (100.0, 1000.0)), sample=_row_sample,
    reference=lambda torch, x, dim: torch.softmax(x, dim=dim),
)
def softmax(x, dim):
    """Softmax along ``dim``; the row max is subtracted first so exp cannot overflow."""
    e = np.exp(_shift_by_max(as_float(x), dim))
    p = e / e.sum(axis=dim, keepdims=True)
    return p, (p, dim)


@softmax.set_backward
def _softmax_backward(saved, gy):
    p, dim = saved
    return p * (gy - np.sum(gy * p, axis=dim, keepdims=True))


@softmax.set_jacobian
def softmax_jacobian(x, dim=-1):
    r"""The batched softmax Jacobian :math:`J = \mathrm{diag}(p) - p p^\top`.

    ``dim`` is moved last; the result has shape ``(..., n, n)`` with
    ``J[..., i, j] = dp_i / dx_j = p_i (delta_ij - p_j)``.
    """
    p = np.moveaxis(softmax(x, dim=dim), dim, -1)
    diag = p[..., :, None] * np.eye(p.shape[-1], dtype=p.dtype)
    return diag - p[..., :, None] * p[..., None, :]


@register(
    "log_softmax", module="LogSoftmax", kind="softmax",
    formula=r"\log p_i = x_i - \log\sum_k e^{x_k}",
    derivative=(r"\frac{\partial \log p_i}{\partial x_j} = \delta_{ij} - p_j,\quad "
                r"g_x = g_y - p \textstyle\sum_k g_{y,k}"),
    params={"dim": -1}, inputs=("x",), complex_step=True,
    domains=((-6.0, 6.0), (-1000.0, -100.0), (100.0, 1000.0)), sample=_row_sample,
    reference=lambda torch, x, dim: torch.log_softmax(x, dim=dim),
)
def log_softmax(x, dim):
    """log(softmax(x)) as x - max - log(sum(exp(x - max))): no log of 0, no overflow."""
    z = _shift_by_max(as_float(x), dim)
    y = z - np.log(np.exp(z).sum(axis=dim, keepdims=True))
    return y, (y, dim)


@log_softmax.set_backward
def _log_softmax_backward(saved, gy):
    y, dim = saved
    return gy - np.exp(y) * gy.sum(axis=dim, keepdims=True)


@log_softmax.set_jacobian
def log_softmax_jacobian(x, dim=-1):
    r"""The batched log-softmax Jacobian :math:`J = I - \mathbf{1} p^\top` (``dim`` moved last)."""
    p = np.moveaxis(softmax(x, dim=dim), dim, -1)
    return np.eye(p.shape[-1], dtype=p.dtype) - p[..., None, :]


@register(
    "sum_normalize", module="SumNormalize", kind="softmax",
    formula=r"y_i = \frac{x_i}{S},\quad S = \sum_k x_k",
    derivative=(r"\frac{\partial y_i}{\partial x_j} = \frac{\delta_{ij}}{S} - \frac{x_i}{S^2},\quad "
                r"g_{x,i} = \frac{g_{y,i}}{S} - \frac{\sum_k g_{y,k} x_k}{S^2}"),
    convention="undefined where S = 0 (the result is inf or NaN there, as x / x.sum() in PyTorch)",
    params={"dim": -1}, inputs=("x",), complex_step=True,
    domains=((0.1, 5.0),), sample=_positive_sample,
    reference=lambda torch, x, dim: x / x.sum(dim=dim, keepdim=True),
)
def sum_normalize(x, dim):
    """x / sum(x) along ``dim`` (turns non-negative scores into proportions)."""
    x = as_float(x)
    s = x.sum(axis=dim, keepdims=True)
    y = x / s
    return y, (y, s, dim)


@sum_normalize.set_backward
def _sum_normalize_backward(saved, gy):
    # g_i/S - sum_k g_k x_k / S^2  ==  (g_i - sum_k g_k y_k) / S  with y = x/S
    y, s, dim = saved
    return (gy - np.sum(gy * y, axis=dim, keepdims=True)) / s


@register(
    "softmin", module="Softmin", kind="softmax",
    formula=r"p_i = \mathrm{softmin}(x)_i = \mathrm{softmax}(-x)_i = \frac{e^{-x_i}}{\sum_k e^{-x_k}}",
    derivative=(r"\frac{\partial p_i}{\partial x_j} = -p_i(\delta_{ij} - p_j),\quad "
                r"g_x = -p \odot \bigl(g_y - \textstyle\sum_k g_{y,k}\,p_k\bigr)"),
    params={"dim": -1}, inputs=("x",), complex_step=True,
    domains=((-6.0, 6.0), (-1000.0, -100.0), (100.0, 1000.0)), sample=_row_sample,
    reference=lambda torch, x, dim: torch.nn.functional.softmin(x, dim=dim),
)
def softmin(x, dim):
    """Softmax of -x along ``dim`` (the smallest entry gets the largest weight); the
    row min is subtracted first (the max of -x), so exp cannot overflow.  saved: (p, dim)."""
    e = np.exp(_shift_by_max(-as_float(x), dim))
    p = e / e.sum(axis=dim, keepdims=True)
    return p, (p, dim)


@softmin.set_backward
def _softmin_backward(saved, gy):
    # softmax's VJP at z = -x, times dz/dx = -1
    p, dim = saved
    return p * (np.sum(gy * p, axis=dim, keepdims=True) - gy)


def _image_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(2, 3, 2, 2)).astype(dtype),)


@register(
    "softmax2d", module="Softmax2d", kind="softmax",
    formula=r"p_{c,h,w} = \frac{e^{x_{c,h,w}}}{\sum_k e^{x_{k,h,w}}}\quad(\text{softmax over the channels at every position})",
    derivative=(r"g_{x,c,h,w} = p_{c,h,w}\bigl(g_{y,c,h,w} - \textstyle\sum_k g_{y,k,h,w}\,p_{k,h,w}\bigr)"),
    inputs=("x",), complex_step=True,
    domains=((-6.0, 6.0), (-1000.0, -100.0), (100.0, 1000.0)), sample=_image_sample,
    reference=lambda torch, x: torch.nn.Softmax2d()(x),
)
def softmax2d(x):
    """Softmax over the channel dim of (N, C, H, W) or unbatched (C, H, W) input (dim -3),
    as PyTorch's Softmax2d; another number of dims is a ValueError.  saved: (p, -3)."""
    x = as_float(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"softmax2d: expected input of shape (N, C, H, W) or (C, H, W), got shape {x.shape}")
    return softmax.fn(x, -3)


@softmax2d.set_backward
def _softmax2d_backward(saved, gy):
    return _softmax_backward(saved, gy)
