r"""Pooling over the two spatial dims of (N, C, H, W) input (or unbatched (C, H, W)).

Every pooling window is a strided view of the (padded) input: with kernel
:math:`k`, stride :math:`s`, dilation :math:`d` and padding :math:`p`, output
position :math:`i` reads the inputs :math:`s i - p + d a` for the kernel
offsets :math:`a = 0, \dots, k - 1`.  For one offset :math:`(a, b)` those
inputs, over all output positions at once, are the slice
``xp[:, :, d_h a : : s_h, d_w b : : s_w]`` of the padded input ``xp``, so

- forward loops over the :math:`k_h k_w` kernel offsets (never over output
  positions) and combines whole slices;
- backward is the same loop with the arrows reversed: each offset adds its
  share of the upstream gradient into the same strided slice of a zero
  gradient (windows that overlap add up there).  No ``np.add.at``.

The two derivations:

- **max pooling routes**: :math:`y_i = x_{m(i)}` with :math:`m(i)` the argmax of
  window :math:`i`, so :math:`\partial L / \partial x_j = \sum_{i: m(i) = j} g_{y,i}`;
  each upstream gradient goes, whole, to the one element that won its window.
- **average pooling spreads**: :math:`y_i = \frac{1}{D_i} \sum_{j \in W_i} x_j`, so
  :math:`\partial L / \partial x_j = \sum_{i: j \in W_i} g_{y,i} / D_i`; each
  upstream gradient is shared equally by the elements of its window.

Adaptive average pooling is linear and separable: :math:`Y = P_H X P_W^\top`
with :math:`P` the row-averaging matrices of PyTorch's windows, so
:math:`G_X = P_H^\top G_Y P_W`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .registry import as_float, check_bool, check_ints, register


# -- parameters and shapes ---------------------------------------------------------------

def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _geometry(who, bound, dilation=True):
    """(kernel, stride, padding, dilation) as pairs, after PyTorch's checks:
    stride None means the kernel size, and padding may be at most half the kernel."""
    k = check_ints(who, "kernel_size", bound["kernel_size"], 2, 1, plural="a pair of them")
    s = k if bound["stride"] is None else check_ints(who, "stride", bound["stride"], 2, 1, plural="a pair of them")
    p = check_ints(who, "padding", bound["padding"], 2, 0, plural="a pair of them")
    d = check_ints(who, "dilation", bound["dilation"], 2, 1, plural="a pair of them") if dilation else (1, 1)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{who}: padding={bound['padding']!r} is not valid; padding must be at most "
                         f"half the kernel size, kernel_size={bound['kernel_size']!r} allows at most "
                         f"({k[0] // 2}, {k[1] // 2})")
    check_bool(who, "ceil_mode", bound["ceil_mode"])
    return k, s, p, d


def _batched(x, who):
    """x as (N, C, H, W) and whether it came unbatched as (C, H, W)."""
    if x.ndim not in (3, 4):
        raise ValueError(f"{who}: expected input of shape (N, C, H, W) or (C, H, W), got shape {x.shape}")
    if x.ndim == 3:
        return x[None], True
    return x, False


def _out_len(n, k, s, p, d, ceil_mode):
    """PyTorch's pooling output length along one dim (ceil mode drops a last
    window that would start in the right padding)."""
    span = d * (k - 1) + 1
    top = n + 2 * p - span + (s - 1 if ceil_mode else 0)
    out = top // s + 1 if top >= 0 else 0
    if ceil_mode and out > 0 and (out - 1) * s >= n + p:
        out -= 1
    return out


class Geometry(NamedTuple):
    """How windows sit on one input: kernel, stride, padding, dilation (pairs),
    the input's (H, W), the output's (oh, ow), and the padded (Hp, Wp)."""
    k: tuple
    s: tuple
    p: tuple
    d: tuple
    hw: tuple
    out: tuple
    padded: tuple

    def offsets(self):
        """The kernel offsets (a, b) in scan order (row by row, left to right)."""
        return [(a, b) for a in range(self.k[0]) for b in range(self.k[1])]

    def window_slice(self, a, b):
        """The slice of the padded input that offset (a, b) reads for every output."""
        (sh, sw), (dh, dw), (oh, ow) = self.s, self.d, self.out
        return (slice(None), slice(None),
                slice(dh * a, dh * a + sh * (oh - 1) + 1, sh),
                slice(dw * b, dw * b + sw * (ow - 1) + 1, sw))

    def inner(self):
        """The slice of the padded array that holds the input itself."""
        (ph, pw), (h, w) = self.p, self.hw
        return (slice(None), slice(None), slice(ph, ph + h), slice(pw, pw + w))


def _layout(who, x, k, s, p, d, ceil_mode):
    """The Geometry of pooling x (N, C, H, W); ValueError if no window fits."""
    h, w = x.shape[2:]
    out = tuple(_out_len(n, k_, s_, p_, d_, ceil_mode)
                for n, k_, s_, p_, d_ in zip((h, w), k, s, p, d))
    if min(out) < 1 or h < 1 or w < 1:
        span = tuple(d_ * (k_ - 1) + 1 for k_, d_ in zip(k, d))
        raise ValueError(f"{who}: the kernel spans {span[0]}x{span[1]} (kernel_size {k}, dilation {d}), "
                         f"larger than the padded input {h + 2 * p[0]}x{w + 2 * p[1]} "
                         f"(input {h}x{w}, padding {p}); output size would be {out[0]}x{out[1]}")
    # the padded extent the windows read: 2p, and in ceil mode possibly more on the right
    padded = tuple(max(n + 2 * p_, s_ * (o - 1) + d_ * (k_ - 1) + 1)
                   for n, o, k_, s_, p_, d_ in zip((h, w), out, k, s, p, d))
    return Geometry(k, s, p, d, (h, w), out, padded)


def _padded(x, geo, fill):
    """x inside an array of the padded size filled with ``fill`` (x itself if none is needed)."""
    if geo.padded == geo.hw:
        return x
    xp = np.full(x.shape[:2] + geo.padded, fill, dtype=x.dtype)
    xp[geo.inner()] = x
    return xp


def _windows_overlap(geo):
    """True when some input element lies in two windows (stride < the kernel's span)."""
    return any(s < d * (k - 1) + 1 for k, s, d in zip(geo.k, geo.s, geo.d))


def _assign_where(target, value, mask):
    """target[mask] = value for an unsigned integer array, without branching on the
    mask (masked copies on random masks are several times slower): the difference
    value - target, wrapping modulo 2**bits, times the mask, added back."""
    step = np.subtract(value, target, dtype=target.dtype)
    step *= mask
    target += step


def _pool_sample(rng, dtype, lo, hi):
    """(2, 2, 5, 6) distinct values in [lo, hi] (no ties: those are tested apart),
    spaced far wider than the finite-difference steps."""
    n = 2 * 2 * 5 * 6
    values = lo + (hi - lo) * (rng.permutation(n) + 0.5) / n
    return (values.reshape(2, 2, 5, 6).astype(dtype),)


def _pool_reference(fn_name):
    return lambda torch, x, **params: getattr(torch.nn.functional, fn_name)(x, **params)


POOL_DOMAINS = ((-3.0, 3.0), (-1000.0, -100.0), (100.0, 1000.0))


# -- max pooling ---------------------------------------------------------------------------

class MaxSaved(NamedTuple):
    arg: np.ndarray         # (N, C, oh, ow): the winning kernel offset a * kw + b of each window
    geo: Geometry
    shape: tuple            # the input's shape, as given (3-D or 4-D)
    dtype: np.dtype


def _check_max(bound):
    _geometry("max_pool2d", bound)


@register(
    "max_pool2d", kind="pooling",
    formula=(r"y_{n,c,i,j} = \max_{0 \le a < k_h,\ 0 \le b < k_w}"
             r" \tilde x_{n,c,\ s_h i + d_h a,\ s_w j + d_w b}"
             r"\quad(\tilde x = x \text{ padded with } -\infty)"),
    derivative=(r"\frac{\partial L}{\partial x_{n,c,u,v}} = \sum_{i,j} g_{y;n,c,i,j}\,"
                r"\bigl[(u, v) = \operatorname{argmax} \text{ of window } (i, j)\bigr]"
                r"\quad\text{(routing: each } g_y \text{ goes whole to its window's maximum)}"),
    convention=("ties: the FIRST maximum in scan order (kernel rows top to bottom, each left to "
                "right) gets the whole gradient, as PyTorch's CPU kernel (strict >); a NaN counts "
                "as the maximum (the last NaN of a window wins); a window with nothing above -inf "
                "routes to its first element inside the input"),
    params={"kernel_size": 2, "stride": None, "padding": 0, "dilation": 1, "ceil_mode": False},
    check_params=_check_max,
    test_params=({"kernel_size": 3, "stride": 2, "padding": 1},
                 {"kernel_size": (2, 3), "stride": (1, 2), "dilation": (2, 1)},
                 {"kernel_size": 2, "ceil_mode": True},
                 {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2, "ceil_mode": True},
                 {"kernel_size": (5, 6)}),
    domains=POOL_DOMAINS, sample=_pool_sample, reference=_pool_reference("max_pool2d"),
)
def max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode):
    """Max pooling, parameters as ``torch.nn.functional.max_pool2d`` (stride None
    means kernel_size; padding at most half the kernel; ``return_indices`` is not
    offered: ``saved.arg`` holds the winning offsets).

    x: (N, C, H, W) or (C, H, W) -> y: (N, C, oh, ow) or (C, oh, ow), with
    oh = floor((H + 2p - d(k - 1) - 1) / s) + 1 (ceil in ceil_mode).
    saved: MaxSaved(arg (N, C, oh, ow) winning offset a * kw + b, geometry, x's shape, dtype).
    """
    who = "max_pool2d"
    x = as_float(x)
    k, s, p, d = _geometry(who, dict(kernel_size=kernel_size, stride=stride, padding=padding,
                                     dilation=dilation, ceil_mode=ceil_mode))
    x4, unbatched = _batched(x, who)
    geo = _layout(who, x4, k, s, p, d, ceil_mode)
    xp = _padded(x4, geo, -np.inf)
    offsets = geo.offsets()
    kw = k[1]
    dtype = np.min_scalar_type(k[0] * k[1] - 1)
    if p == (0, 0):                  # offset (0, 0) lies inside every window: start from it
        y = xp[geo.window_slice(0, 0)].copy()
        arg = np.zeros(y.shape, dtype)
        rest = offsets[1:]
    else:
        # every window starts out pointing at its first element inside the input,
        # which is what PyTorch reports when nothing in the window beats -inf
        # (the smallest a with s i - p + d a >= 0, per output row / column)
        first = [np.maximum(0, -((s_ * np.arange(o) - p_) // d_))
                 for s_, p_, d_, o in zip(s, p, d, geo.out)]
        start = (first[0][:, None] * kw + first[1][None, :]).astype(dtype)
        arg = np.broadcast_to(start, x4.shape[:2] + geo.out).copy()
        y = np.full(arg.shape, -np.inf, dtype=x.dtype)
        rest = offsets
    for a, b in rest:                # scan order; a strict > keeps the first maximum
        v = xp[geo.window_slice(a, b)]
        _assign_where(arg, a * kw + b, v > y)
        np.maximum(y, v, out=y)
    if np.isnan(x).any():            # NaN is the maximum (np.maximum put it in y); the last NaN wins
        for a, b in offsets:
            _assign_where(arg, a * kw + b, np.isnan(xp[geo.window_slice(a, b)]))
    return (y[0] if unbatched else y), MaxSaved(arg, geo, x.shape, x.dtype)


@max_pool2d.set_backward
def _max_pool2d_backward(saved, gy):
    """Routing: for each kernel offset, the upstream gradients of the windows it
    won are added into that offset's strided slice of dL/d(padded x)."""
    arg, geo, shape, dtype = saved
    gy = np.asarray(gy).reshape(arg.shape)
    gxp = np.zeros(arg.shape[:2] + geo.padded, dtype=np.result_type(dtype, gy.dtype))
    kw = geo.k[1]
    overlap = _windows_overlap(geo)
    for a, b in geo.offsets():
        view = gxp[geo.window_slice(a, b)]
        won = arg == a * kw + b
        if overlap:
            view += gy * won
        else:                        # each element of the slice belongs to this offset alone
            np.multiply(gy, won, out=view)
    gx = gxp if geo.padded == geo.hw else np.ascontiguousarray(gxp[geo.inner()])
    return gx.reshape(shape)


# -- average pooling -----------------------------------------------------------------------

class AvgSaved(NamedTuple):
    divisor: np.ndarray     # (oh, ow): what each window's sum was divided by
    geo: Geometry
    shape: tuple
    dtype: np.dtype


def _check_avg(bound):
    who = "avg_pool2d"
    _geometry(who, {**bound, "dilation": 1})
    check_bool(who, "count_include_pad", bound["count_include_pad"])
    override = bound["divisor_override"]
    if override is not None and not (_is_int(override) and override > 0):
        raise ValueError(f"{who}: divisor_override={override!r} is not valid; expected None or "
                         f"a positive integer")


def _divisor(geo, count_include_pad, divisor_override):
    """(oh, ow) divisors as PyTorch's: the window clipped to the padded input
    (count_include_pad) or to the input itself; or divisor_override."""
    if divisor_override is not None:
        return np.full(geo.out, float(divisor_override))
    counts = []
    for n, o, k, s, p in zip(geo.hw, geo.out, geo.k, geo.s, geo.p):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)              # ceil mode: not beyond the padding
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        counts.append(end - start)
    return np.outer(counts[0], counts[1]).astype(np.float64)


def _check_avg_call(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    _check_avg(dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                    count_include_pad=count_include_pad, divisor_override=divisor_override))
    return _geometry("avg_pool2d", dict(kernel_size=kernel_size, stride=stride, padding=padding,
                                        dilation=1, ceil_mode=ceil_mode))


@register(
    "avg_pool2d", kind="pooling",
    formula=(r"y_{n,c,i,j} = \frac{1}{D_{ij}} \sum_{a < k_h,\ b < k_w}"
             r" \tilde x_{n,c,\ s_h i + a,\ s_w j + b}\quad(\tilde x = x \text{ padded with } 0)"),
    derivative=(r"\frac{\partial L}{\partial x_{n,c,u,v}} = \sum_{(i,j):\ (u,v) \in W_{ij}}"
                r" \frac{g_{y;n,c,i,j}}{D_{ij}}"
                r"\quad\text{(spreading: each } g_y / D \text{ goes to every element of its window)}"),
    convention=("linear, so differentiable everywhere; D is the window's size clipped to the padded "
                "input (count_include_pad=True) or to the input (False), or divisor_override, as PyTorch"),
    params={"kernel_size": 2, "stride": None, "padding": 0, "ceil_mode": False,
            "count_include_pad": True, "divisor_override": None},
    check_params=_check_avg, complex_step=True,
    test_params=({"kernel_size": 3, "stride": 2, "padding": 1},
                 {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
                 {"kernel_size": 2, "ceil_mode": True},
                 {"kernel_size": (2, 3), "stride": (3, 1), "padding": (1, 0), "ceil_mode": True,
                  "count_include_pad": False},
                 {"kernel_size": 2, "stride": 1, "divisor_override": 3},
                 {"kernel_size": (5, 6)}),
    domains=POOL_DOMAINS, sample=_pool_sample, reference=_pool_reference("avg_pool2d"),
)
def avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Average pooling, parameters as ``torch.nn.functional.avg_pool2d``.

    x: (N, C, H, W) or (C, H, W) -> y: (N, C, oh, ow) or (C, oh, ow).
    saved: AvgSaved(divisor (oh, ow), geometry, x's shape, dtype).
    """
    who = "avg_pool2d"
    x = as_float(x)
    k, s, p, d = _check_avg_call(kernel_size, stride, padding, ceil_mode, count_include_pad,
                                 divisor_override)
    x4, unbatched = _batched(x, who)
    geo = _layout(who, x4, k, s, p, d, ceil_mode)
    xp = _padded(x4, geo, 0)
    offsets = geo.offsets()
    y = xp[geo.window_slice(*offsets[0])].copy()
    for a, b in offsets[1:]:
        y += xp[geo.window_slice(a, b)]
    divisor = _divisor(geo, count_include_pad, divisor_override).astype(x.real.dtype)
    y /= divisor
    return (y[0] if unbatched else y), AvgSaved(divisor, geo, x.shape, x.dtype)


@avg_pool2d.set_backward
def _avg_pool2d_backward(saved, gy):
    """Spreading: g = gy / D, added into every kernel offset's strided slice."""
    divisor, geo, shape, dtype = saved
    n, c = (1, shape[0]) if len(shape) == 3 else shape[:2]
    g = np.asarray(gy).reshape((n, c) + geo.out) / divisor
    gxp = np.zeros((n, c) + geo.padded, dtype=g.dtype)
    overlap = _windows_overlap(geo)
    for a, b in geo.offsets():
        if overlap:
            gxp[geo.window_slice(a, b)] += g
        else:
            gxp[geo.window_slice(a, b)] = g
    gx = gxp if geo.padded == geo.hw else np.ascontiguousarray(gxp[geo.inner()])
    return gx.reshape(shape)


# -- adaptive average pooling ---------------------------------------------------------------

def _adaptive_sizes(who, output_size, hw=None):
    """output_size as (oh, ow); None in it means the input's own size."""
    pair = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(pair) != 2 or not all(v is None or (_is_int(v) and v > 0) for v in pair):
        raise ValueError(f"{who}: output_size={output_size!r} is not valid; expected a positive "
                         f"integer or a pair of positive integers (or None, the input's size)")
    if hw is None:
        return pair
    return tuple(n if v is None else int(v) for v, n in zip(pair, hw))


def _check_adaptive(bound):
    _adaptive_sizes("adaptive_avg_pool2d", bound["output_size"])


def averaging_matrix(n, out, dtype=np.float64):
    """P (out, n) with P[i, j] = 1 / len(window i) on PyTorch's window i =
    [floor(i n / out), ceil((i + 1) n / out)), and 0 elsewhere."""
    i = np.arange(out)
    start = (i * n) // out
    end = -((-(i + 1) * n) // out)                     # ceil without floats
    j = np.arange(n)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


def _sandwich(x, left, right):
    """left @ x @ right.T over the last two dims of x (..., H, W), as two plain
    matrix products (each one BLAS call over all the leading dims)."""
    lead = x.shape[:-2]
    h, w = x.shape[-2:]
    t = x.reshape(-1, w) @ right.T                      # (... H, ow)
    t = np.swapaxes(t.reshape(-1, h, right.shape[0]), 1, 2).reshape(-1, h) @ left.T   # (... ow, oh)
    return np.ascontiguousarray(np.swapaxes(t.reshape(lead + (right.shape[0], left.shape[0])), -1, -2))


@register(
    "adaptive_avg_pool2d", kind="pooling",
    formula=(r"Y = P_H\, X\, P_W^\top,\quad (P_H)_{iu} = \frac{[\,s_i \le u < e_i\,]}{e_i - s_i},\ "
             r"s_i = \lfloor i H / h_{out} \rfloor,\ e_i = \lceil (i + 1) H / h_{out} \rceil"),
    derivative=r"G_X = P_H^\top\, G_Y\, P_W",
    convention="linear, so differentiable everywhere; windows as PyTorch's (they overlap when the output does not divide the input)",
    params={"output_size": 1}, check_params=_check_adaptive, complex_step=True,
    test_params=({"output_size": 3}, {"output_size": (2, 4)}, {"output_size": (None, 4)},
                 {"output_size": 7}, {"output_size": (5, 6)}),
    domains=POOL_DOMAINS, sample=_pool_sample, reference=_pool_reference("adaptive_avg_pool2d"),
)
def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling to ``output_size`` (int, pair, None = keep that dim),
    as ``torch.nn.functional.adaptive_avg_pool2d``; output_size 1 is global
    average pooling.

    x: (N, C, H, W) or (C, H, W) -> y: (N, C, oh, ow) or (C, oh, ow).
    saved: (P_H (oh, H), P_W (ow, W), x's shape), P None when the windows tile
    the input (oh divides H and ow divides W, global pooling among them): P is
    then block diagonal, and the products are a mean over each
    (H/oh, W/ow) block of the (N, C, oh, H/oh, ow, W/ow) view, and its spread back.
    """
    who = "adaptive_avg_pool2d"
    x = as_float(x)
    x4, unbatched = _batched(x, who)
    h, w = x4.shape[2:]
    if h < 1 or w < 1:
        raise ValueError(f"{who}: expected an input with non-zero height and width, got shape {x.shape}")
    oh, ow = _adaptive_sizes(who, output_size, (h, w))
    if h % oh == 0 and w % ow == 0:
        blocks = x4.reshape(x4.shape[:2] + (oh, h // oh, ow, w // ow))
        y = blocks.mean(axis=(3, 5))
        return (y[0] if unbatched else y), (None, None, x.shape)
    real = x.real.dtype
    ph, pw = averaging_matrix(h, oh, real), averaging_matrix(w, ow, real)
    y = _sandwich(x4, ph, pw)
    return (y[0] if unbatched else y), (ph, pw, x.shape)


@adaptive_avg_pool2d.set_backward
def _adaptive_avg_pool2d_backward(saved, gy):
    ph, pw, shape = saved
    gy = np.asarray(gy)
    if ph is None:                       # tiling windows: spread g / (block size) over each block
        h, w = shape[-2:]
        oh, ow = gy.shape[-2:]
        kh, kw = h // oh, w // ow
        g = gy / (kh * kw)
        gx = np.empty(shape, dtype=g.dtype)
        gx.reshape((-1, oh, kh, ow, kw))[...] = g.reshape((-1, oh, 1, ow, 1))
        return gx
    return _sandwich(gy, ph.T, pw.T).reshape(shape)
