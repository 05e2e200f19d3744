r"""Padding of the last one or two dims: constant, reflect, replicate, circular.

Every mode reads each output entry from one input entry (or from the constant):
``y = x[idx]`` along each padded dim, with ``idx`` the mode's source index.  The
derivative is that selection's transpose, a scatter-add of the padded gradient:
:math:`g_{x,i} = \sum_{j:\ \mathrm{idx}_j = i} g_{y,j}`, so an entry that is
copied several times (reflect, replicate, circular) gets the sum of its copies'
gradients, and the constant's entries give nothing.
"""
from __future__ import annotations

import numbers

import numpy as np

from .registry import as_float, check_real, register

MODES = ("constant", "reflect", "replicate", "circular")


def _check_padding(p):
    pad = p["padding"]
    if not (isinstance(pad, tuple) and len(pad) in (2, 4)
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in pad)):
        raise ValueError(f"pad: padding={pad!r} is not valid; expected a tuple (left, right) or "
                         "(left, right, top, bottom) of integers >= 0")
    check_real("pad", "value", p["value"], "a number", lambda v: True)


def source_index(n, before, after, mode, who="pad"):
    """For each of the n + before + after outputs along a dim, the input index it reads
    (-1: the constant).  Reflect needs before, after < n; circular before, after <= n."""
    j = np.arange(-before, n + after)
    if mode == "constant":
        return np.where((j >= 0) & (j < n), j, -1)
    if mode == "replicate":
        if n == 0:
            raise ValueError(f"{who}: replicate padding of an empty dim")
        return np.clip(j, 0, n - 1)
    if mode == "reflect":
        if max(before, after) >= n:
            raise ValueError(f"{who}: reflect padding ({before}, {after}) must be smaller than the "
                             f"dim it pads ({n})")
        j = np.abs(j)
        return np.where(j > n - 1, 2 * (n - 1) - j, j)
    if max(before, after) > n:
        raise ValueError(f"{who}: circular padding ({before}, {after}) must be at most the dim it pads ({n})")
    return j % n


def _pad_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(2, 3, 4)).astype(dtype),)


@register(
    "pad", kind="structure",
    formula=(r"y_j = x_{\mathrm{idx}(j)}\ (\text{or the constant } v),\quad \mathrm{idx}: "
             r"\text{reflect } |j| \text{ folded at the ends, replicate } \mathrm{clip}(j, 0, n-1),"
             r"\ \text{circular } j \text{ mod } n"),
    derivative=r"g_{x,i} = \sum_{j:\ \mathrm{idx}(j) = i} g_{y,j}\quad(\text{a scatter-add of the padded gradient})",
    convention="linear: differentiable everywhere; the constant's entries get no gradient",
    params={"padding": (1, 1), "mode": "constant", "value": 0.0}, choices={"mode": MODES},
    test_params=({"padding": (2, 1), "mode": "reflect"}, {"padding": (1, 2, 2, 0), "mode": "reflect"},
                 {"padding": (3, 1, 0, 2), "mode": "replicate"}, {"padding": (1, 3, 2, 1), "mode": "circular"},
                 {"padding": (0, 2, 1, 1), "value": -1.5}),
    domains=((-6.0, 6.0), (-1000.0, 1000.0)), sample=_pad_sample, complex_step=True,
    reference=lambda torch, x, padding, mode, value: torch.nn.functional.pad(x, padding, mode=mode, value=value),
    check_params=_check_padding,
)
def pad(x, padding, mode, value):
    """Pads the last dim by ``padding = (left, right)``, or the last two by ``(left, right,
    top, bottom)`` (torch.nn.functional.pad's order: the last dim first); the modes other than
    constant take 2-D or 3-D input for one padded dim, 3-D or 4-D for two, as PyTorch.  x: (..., [H,] W)
    -> (..., [H + top + bottom,] W + left + right).  saved: (x's shape, the source index of
    each padded dim by axis)."""
    x = as_float(x)
    dims = len(padding) // 2
    if x.ndim < dims or (mode != "constant" and x.ndim not in (dims + 1, dims + 2)):
        want = f"{dims + 1} or {dims + 2} dims" if mode != "constant" else f"at least {dims} dims"
        raise ValueError(f"pad: expected input of {want} for {mode} padding={padding!r} (as PyTorch), "
                         f"got shape {x.shape}")
    y, index = x, {}
    for k in range(dims):
        axis = x.ndim - 1 - k
        idx = source_index(x.shape[axis], padding[2 * k], padding[2 * k + 1], mode)
        index[axis] = idx
        y = np.take(y, np.maximum(idx, 0), axis=axis)
        if mode == "constant":
            shape = [1] * y.ndim
            shape[axis] = idx.size
            y = np.where((idx < 0).reshape(shape), y.dtype.type(value), y)
    return y, (x.shape, index)


@pad.set_backward
def _pad_backward(saved, gy):
    shape, index = saved
    g = gy
    for axis, idx in index.items():
        moved = np.moveaxis(g, axis, 0)
        keep = idx >= 0                                    # the constant's entries: no gradient
        out = np.zeros((shape[axis],) + moved.shape[1:], g.dtype)
        np.add.at(out, idx[keep], moved[keep])             # each copy adds to its source
        g = np.moveaxis(out, 0, axis)
    return np.ascontiguousarray(g)
