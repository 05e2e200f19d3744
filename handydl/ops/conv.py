r"""Convolutions: ``conv1d``, ``conv2d`` and ``conv_transpose2d``, as im2col and one
matrix product per group.

Notation (PyTorch's, and the courses'): input :math:`x` of shape (N, C, H, W),
weight :math:`W` of shape (O, C/g, kh, kw) in ``g`` groups, stride ``s``,
dilation ``d``, zero padding ``pad``.  Writing :math:`\tilde x` for the padded
input and :math:`c` for an input channel of output channel :math:`o`'s group,

.. math::
    y_{n,o,i,j} = b_o + \sum_{c,p,q} W_{o,c,p,q}\,\tilde x_{n,c,\;s i + d p,\;s j + d q}.

**im2col.**  Gather the patches once: :math:`X_{n,(c,p,q),(i,j)} =
\tilde x_{n,c,si+dp,sj+dq}` (a strided view of the padded input, copied once
into a contiguous (N, g, K, P) array, K = C/g kh kw, P = Ho Wo; or, in the
*wide* layout of ``Geometry.span``, Ho rows of the padded width, so that each
kernel offset's patches are one run of memory).  Then, per group, the
convolution is one matrix product (one ``np.matmul`` call over all images),
:math:`Y_n = W X_n + b` with W seen as (O/g, K).  X is kept for dL/dW: kh kw
times the input's size (a 1x1, stride-1 convolution keeps a view of x).

**Backward** (the rule of linear.py, :math:`Y = A B`):

* :math:`\partial L/\partial W = \sum_n G_n X_n^\top`, a correlation of the
  input with the upstream gradient :math:`G = \partial L/\partial y`;
* :math:`\partial L/\partial b_o = \sum_{n,i,j} G_{n,o,i,j}`;
* :math:`\partial L/\partial X_n = W^\top G_n`, and since every element of
  :math:`\tilde x` was copied into X once per kernel offset (p, q) that
  reaches it, :math:`\partial L/\partial \tilde x` sums those copies back:
  **col2im**, one strided slice of the padded gradient per offset
  (kh kw additions of whole arrays; no scatter element by element), then
  the padding is cropped.  Written as one formula it is a *full* correlation
  of :math:`G` (dilated by the stride) with the flipped kernel,
  :math:`\partial L/\partial x_{n,c,u,v} = \sum_{o,p,q} G_{n,o,(u+pad-dp)/s,(v+pad-dq)/s}\,W_{o,c,p,q}`
  over the terms whose indices are integers in range.

Stride and dilation only change *which* terms meet in those sums: a stride
``s`` keeps every s-th output position (dL/dx gets zeros between the
upstream values), a dilation ``d`` spaces the kernel's taps ``d`` apart.

**The transposed convolution** is the adjoint of the convolution: its forward
*is* conv2d's input gradient (``_input_grad``, the same col2im code), and its
backward is conv2d's forward (dL/dx) and weight gradient (dL/dW).

Float32 in gives float32 out; no float64 temporary is made.  Every
convolution is differentiable everywhere (it is linear in x and in W).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .registry import as_float, check_int, check_ints, register

_STRINGS = ("same", "valid")


# -- parameters ---------------------------------------------------------------------------

def _checker(who, n, transposed=False):
    """check_params for an n-d convolution: each parameter's type and range, at bind."""
    def check(bound):
        stride = check_ints(who, "stride", bound["stride"], n, 1)
        dilation = check_ints(who, "dilation", bound["dilation"], n, 1)
        check_int(who, "groups", bound["groups"])
        padding = bound["padding"]
        if isinstance(padding, str) and not transposed:
            if padding not in _STRINGS:
                raise ValueError(f"{who}: padding={padding!r} is not valid; expected 'same', "
                                 "'valid', an integer >= 0 or a tuple of them")
            if padding == "same" and stride != (1,) * n:
                raise ValueError(f"{who}: padding='same' needs stride 1, got stride={bound['stride']!r} "
                                 "(PyTorch refuses it too: the output size would depend on the input's)")
        else:
            check_ints(who, "padding", padding, n, 0)
        if transposed:
            out_pad = check_ints(who, "output_padding", bound["output_padding"], n, 0)
            for k in range(n):
                if out_pad[k] >= max(stride[k], dilation[k]):
                    raise ValueError(f"{who}: output_padding={bound['output_padding']!r} must be "
                                     f"smaller than stride or dilation in each dim (stride="
                                     f"{bound['stride']!r}, dilation={bound['dilation']!r})")
    return check


def _pads(padding, dilation, kernel):
    """((top, bottom), (left, right)) of zero padding; "same" puts an odd extra
    row or column at the end, as PyTorch."""
    if padding == "valid":
        return tuple((0, 0) for _ in kernel)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return tuple((t // 2, t - t // 2) for t in total)
    return tuple((p, p) for p in padding)


# -- geometry -------------------------------------------------------------------------------

class Geometry(NamedTuple):
    """Everything about one convolution's index map, in 2-D (conv1d uses H = 1).

    The convolution reads the zero-padded input, the *canvas*, (N, C, Hp, Wp)
    with the image at rows top:top+H and columns left:left+W, at rows
    s i + d p for output rows i < Ho (columns alike); ``groups`` split C and O.
    """
    N: int
    C: int
    H: int
    W: int
    O: int
    kernel: tuple       # (kh, kw)
    stride: tuple
    dilation: tuple
    pads: tuple         # ((top, bottom), (left, right))
    out: tuple          # (Ho, Wo)
    groups: int

    @property
    def canvas(self):
        """(Hp, Wp): the padded input's size."""
        return self.H + sum(self.pads[0]), self.W + sum(self.pads[1])

    @property
    def row(self):
        """The canvas's row length in memory: Wp rounded up to a multiple of the column stride."""
        sw = self.stride[1]
        return -(-self.canvas[1] // sw) * sw

    @property
    def span(self):
        """Columns computed per output row: Wo, or the *wide* layout's row / sw.

        Wide (stride 1 along H, and at most WIDE times Wo): output position
        (i, j) reads canvas element (s i + d p) row + s j + d q of the flat
        image, so for j < row / s the patches of one kernel offset are one
        run of the flat canvas: im2col and col2im copy and add long runs
        instead of Ho pieces of Wo.  The extra columns j >= Wo wrap into the
        next row; their outputs are dropped, and backward gives them a zero
        upstream gradient.
        """
        Wo = self.out[1]
        wide = self.row // self.stride[1]
        return wide if self.stride[0] == 1 and wide <= WIDE * Wo else Wo

    @property
    def rows(self):
        """Canvas rows in memory: one zero row more when the wide layout reads past the last row."""
        return self.canvas[0] + (self.span > self.out[1])

    @property
    def pointwise(self):
        """A 1x1 kernel, stride 1, no padding: im2col is the image itself."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and not any(sum(self.pads, ()))

    @property
    def direct(self):
        """The patches can be read from the input itself (no padding, no wide layout)."""
        return not any(sum(self.pads, ())) and self.span == self.out[1]


# The wide layout computes row / sw columns per output row instead of Wo; it pays
# while the extra columns (garbage, dropped) cost less than Ho short copies.
WIDE = 1.3


def _geometry(who, x_shape, w_shape, stride, padding, dilation, groups, letters):
    """The Geometry of a convolution of x (N, C, H, W) with W (O, C/g, kh, kw), or a
    ValueError naming the sizes that do not fit."""
    N, C, H, W = x_shape
    O, Cg, kh, kw = w_shape
    if O % groups:
        raise ValueError(f"{who}: weight of shape {_shape(w_shape, letters)} has {O} output "
                         f"channels, not divisible by groups={groups}")
    if C != Cg * groups:
        raise ValueError(f"{who}: expected input with {Cg * groups} channels (weight.shape[1] * groups = "
                         f"{Cg} * {groups}), got input of shape {_shape(x_shape, letters)} with {C} channels")
    pads = _pads(padding, dilation, (kh, kw))
    out = []
    for size, k, d, s, (lo, hi), name in zip((H, W), (kh, kw), dilation, stride, pads, letters):
        reach = d * (k - 1) + 1                      # the dilated kernel's extent
        if reach > size + lo + hi:
            raise ValueError(
                f"{who}: kernel size {k} (dilation {d}: spans {reach}) is larger than the padded "
                f"input, {size} + padding {lo + hi} = {size + lo + hi}, along {name} "
                f"(input shape {_shape(x_shape, letters)}, weight shape {_shape(w_shape, letters)})")
        out.append((size + lo + hi - reach) // s + 1)
    return Geometry(N, C, H, W, O, (kh, kw), tuple(stride), tuple(dilation), pads, tuple(out), groups)


def _shape(shape, letters):
    """A 2-D shape as the user gave it (conv1d drops the H = 1 axis)."""
    return tuple(shape) if len(letters) == 2 else (shape[0], shape[1], shape[3])


# -- the three pieces: im2col, col2im, and the products ------------------------------------

def _canvas(x, g: Geometry):
    """The zero-padded input (N, C, rows, row), contiguous; x itself where the
    patches can be read from it directly."""
    if g.direct:
        return x
    (t, _), (l, _) = g.pads
    xp = np.zeros((g.N, g.C, g.rows, g.row), dtype=x.dtype)
    xp[:, :, t:t + g.H, l:l + g.W] = x
    return xp


def _patches(canvas, g: Geometry, p=None, q=None):
    r"""The strided view :math:`V_{n,c,p,q,i,j} = \tilde x_{n,c,\,s i + d p,\,s j + d q}`,
    (N, C, kh, kw, Ho, span); with p and q given, that offset's (N, C, Ho, span).

    ``as_strided`` on the canvas: every index it forms lies inside the canvas
    (the wide layout's extra columns reach at most into the extra zero row).
    """
    sn, sc, sr, s1 = canvas.strides
    (sh, sw), (dh, dw) = g.stride, g.dilation
    shape, strides = (g.N, g.C, g.out[0], g.span), (sn, sc, sh * sr, sw * s1)
    if p is None:
        return np.lib.stride_tricks.as_strided(
            canvas, (g.N, g.C) + g.kernel + shape[2:], (sn, sc, dh * sr, dw * s1) + strides[2:],
            writeable=False)
    offset = canvas[:, :, dh * p:, dw * q:]        # the view starts at that offset
    return np.lib.stride_tricks.as_strided(offset, (offset.shape[0],) + shape[1:], strides)


def _im2col(x, g: Geometry):
    r"""X of shape (N, groups, C/g kh kw, Ho span): :math:`X_{n,(c,p,q),(i,j)} =
    \tilde x_{n,c,si+dp,sj+dq}`, the patches copied once into the layout the
    product wants.  A 1x1 kernel with stride 1 and no padding needs no copy."""
    K = g.C // g.groups * g.kernel[0] * g.kernel[1]
    if g.pointwise:
        return np.ascontiguousarray(x).reshape(g.N, g.groups, K, g.H * g.W)
    cols = np.empty((g.N, g.C) + g.kernel + (g.out[0], g.span), dtype=x.dtype)
    np.copyto(cols, _patches(_canvas(x, g), g))
    return cols.reshape(g.N, g.groups, K, g.out[0] * g.span)


def _col2im(gcols, g: Geometry):
    r"""The adjoint of ``_im2col``: gcols (N, groups, K, Ho span) summed back onto
    the input, (N, C, H, W).

    Kernel offset (p, q) copied the canvas slice ``_patches(canvas, g, p, q)``
    into X, so its gradient is added back into that slice: kh kw whole-array
    additions (no scatter element by element), one block of images at a time
    so that the block's canvas stays in cache.  Then the padding is cropped.
    """
    if g.pointwise:
        return gcols.reshape(g.N, g.C, g.H, g.W)
    kh, kw = g.kernel
    g6 = gcols.reshape(g.N, g.C, kh, kw, g.out[0], g.span)
    canvas = np.zeros((g.N, g.C, g.rows, g.row), dtype=gcols.dtype)
    block = max(1, CACHE // (g.C * g.rows * g.row * canvas.itemsize))
    for n0 in range(0, g.N, block):
        part, cols = canvas[n0:n0 + block], g6[n0:n0 + block]
        for p in range(kh):
            for q in range(kw):
                view = _patches(part, g, p, q)
                view += cols[:, :, p, q]
    (t, _), (l, _) = g.pads
    if canvas.shape[2:] == (g.H, g.W):
        return canvas
    return np.ascontiguousarray(canvas[:, :, t:t + g.H, l:l + g.W])


CACHE = 1 << 18         # bytes of canvas that col2im adds into at a time (about L2)


def _grouped(w, g: Geometry):
    """The weight (O, C/g, kh, kw) as (groups, O/g, K): one matrix per group."""
    return w.reshape(g.groups, g.O // g.groups, -1)


def _forward(cols, w, b, g: Geometry):
    """Y_n = W X_n (+ b) for every image and group, one matmul call; (N, O, Ho, Wo)."""
    Ho, Wo = g.out
    y = np.matmul(_grouped(w, g), cols)      # (g, O/g, K) @ (N, g, K, P) -> (N, g, O/g, P)
    y = y.reshape(g.N, g.O, Ho, g.span)
    if g.span != Wo:                        # the wide layout: drop the extra columns
        y = y[..., :Wo]
        if b is not None and np.result_type(y, b) == y.dtype:
            out = np.empty(y.shape, y.dtype)
            return np.add(y, b.reshape(-1, 1, 1), out=out)      # crop and bias in one pass
        y = np.ascontiguousarray(y)
    return _plus_bias(y, b)


def _plus_bias(y, b):
    """y + b[channel], in place where the dtype allows (y is a fresh array)."""
    if b is None:
        return y
    if np.result_type(y, b) == y.dtype:
        y += b.reshape(-1, 1, 1)
        return y
    return y + b.reshape(-1, 1, 1)


def _wide(gy, g: Geometry):
    """The upstream gradient (N, O, Ho, Wo) as (N, groups, O/g, Ho span), zero in
    the wide layout's extra columns (their outputs were dropped)."""
    Ho, Wo = g.out
    shape = (g.N, g.groups, g.O // g.groups, Ho * g.span)
    if g.span == Wo:
        return np.ascontiguousarray(gy).reshape(shape)
    out = np.zeros((g.N, g.O, Ho, g.span), dtype=gy.dtype)
    out[..., :Wo] = gy
    return out.reshape(shape)


def _weight_grad(cols, gyw, g: Geometry, w_shape):
    r""":math:`\partial L/\partial W = \sum_n G_n X_n^\top`, per group, in W's shape
    (``gyw`` from ``_wide``)."""
    gw = np.matmul(gyw, cols.swapaxes(-1, -2))       # (N, g, O/g, K): one product per image
    return gw.sum(axis=0).reshape(w_shape)


def _input_grad(gyw, w, g: Geometry):
    r""":math:`\partial L/\partial x = \mathrm{col2im}(W^\top G_n)`: the full
    correlation of the upstream gradient with the flipped kernel (``gyw`` from
    ``_wide``).  Also the forward of the transposed convolution."""
    gcols = np.matmul(_grouped(w, g).swapaxes(-1, -2), gyw)   # (N, g, K, P)
    return _col2im(gcols, g)


def _check_bias(b, channels, who):
    """The bias as a float array of shape (channels,), or None."""
    if b is None:
        return None
    b = as_float(b)
    if b.shape != (channels,):
        raise ValueError(f"{who}: expected bias of shape ({channels},), got shape {b.shape}")
    return b


# -- conv2d and conv1d ----------------------------------------------------------------------

def _prepare(who, x, weight, nd):
    """x and weight as float arrays in 2-D form: (N, C, H, W), (O, C/g, kh, kw);
    and whether x came without its batch dim (as PyTorch accepts)."""
    x, weight = as_float(x), as_float(weight)
    names = "(N, C, L)" if nd == 1 else "(N, C, H, W)"
    wnames = "(out_channels, in_channels/groups, k)" if nd == 1 else \
        "(out_channels, in_channels/groups, kh, kw)"
    if weight.ndim != nd + 2:
        raise ValueError(f"{who}: expected a {nd + 2}-D weight {wnames}, got shape {weight.shape}")
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"{who}: expected a {nd + 2}-D input {names} (or {nd + 1}-D without the "
                         f"batch dim), got shape {x.shape}")
    unbatched = x.ndim == nd + 1
    if unbatched:
        x = x[None]
    if nd == 1:
        x, weight = x[:, :, None, :], weight[:, :, None, :]
    if 0 in weight.shape:
        raise ValueError(f"{who}: weight of shape {weight.shape} has a zero-size dim")
    return x, weight, unbatched


def _conv_nd(who, nd, x, weight, bias, stride, padding, dilation, groups):
    x, weight, unbatched = _prepare(who, x, weight, nd)
    one = (1,) * (2 - nd)
    stride = one + check_ints(who, "stride", stride, nd, 1)
    dilation = one + check_ints(who, "dilation", dilation, nd, 1)
    if not isinstance(padding, str):
        padding = (0,) * (2 - nd) + check_ints(who, "padding", padding, nd, 0)
    letters = ("H", "W") if nd == 2 else ("", "L")
    g = _geometry(who, x.shape, weight.shape, stride, padding, dilation, int(groups), letters)
    bias = _check_bias(bias, g.O, who)
    cols = _im2col(x, g)
    y = _squeeze(_forward(cols, weight, bias, g), nd, unbatched)
    return y, (cols, weight, g, bias is not None, nd, unbatched)


def _squeeze(a, nd, unbatched):
    """A 2-D-form array (N, C, H, W) back to the caller's form."""
    if nd == 1:
        a = a.reshape(a.shape[0], a.shape[1], a.shape[3])
    return a[0] if unbatched else a


def _unsqueeze(a, nd, unbatched):
    """The caller's form of an array back to (N, C, H, W)."""
    a = np.asarray(a)
    if unbatched:
        a = a[None]
    return a[:, :, None, :] if nd == 1 else a


def _conv_backward(saved, gy, needs):
    cols, weight, g, has_bias, nd, unbatched = saved
    gy = _unsqueeze(gy, nd, unbatched)
    gx = gW = gb = None
    gyw = _wide(gy, g) if needs[0] or needs[1] else None
    if needs[0]:
        gx = _squeeze(_input_grad(gyw, weight, g), nd, unbatched)
    if needs[1]:
        gW = _weight_grad(cols, gyw, g, weight.shape)
        if nd == 1:
            gW = gW.reshape(gW.shape[0], gW.shape[1], gW.shape[3])
    if has_bias and needs[2]:
        gb = gy.sum(axis=(0, 2, 3))
    return gx, gW, gb


def _sampler(nd, transposed=False):
    """Small inputs for the registry's tests (each of their elements is differentiated):
    x (2, 2 groups, 5, 5) (conv1d: length 7), a 3x3 kernel, out_channels 3 groups."""
    def sample(rng, dtype, lo, hi, groups=1, **params):
        x = rng.uniform(lo, hi, size=(2, 2 * groups) + ((5, 5) if nd == 2 else (7,))).astype(dtype)
        w_shape = (2 * groups, 3) if transposed else (3 * groups, 2)   # PyTorch's layouts
        w = rng.standard_normal(w_shape + (3,) * nd).astype(dtype)
        b = rng.standard_normal(3 * groups).astype(dtype)
        return x, w, b
    return sample


_CONV_DERIVATIVE = (
    r"\frac{\partial L}{\partial W_{o,c,p,q}} = \sum_{n,i,j} g_{n,o,i,j}\,\tilde x_{n,c,si+dp,sj+dq}"
    r"\ (\textstyle\sum_n G_n X_n^\top),\quad"
    r"\frac{\partial L}{\partial b_o} = \sum_{n,i,j} g_{n,o,i,j},\quad"
    r"\frac{\partial L}{\partial x} = \operatorname{col2im}(W^\top G_n)"
    r" = \text{full correlation of } g \text{ (stride-dilated) with the flipped kernel}")

_CONV_PARAMS = dict(stride=1, padding=0, dilation=1, groups=1)


@register(
    "conv2d", kind="convolution",
    formula=(r"y_{n,o,i,j} = b_o + \sum_{c,p,q} W_{o,c,p,q}\,\tilde x_{n,c,\,si+dp,\,sj+dq}"
             r"\quad(\tilde x\text{: zero-padded } x;\ Y_n = W X_n + b,\ X = \operatorname{im2col}(\tilde x))"),
    derivative=_CONV_DERIVATIVE,
    convention="differentiable everywhere (linear in x, in W and in b)",
    inputs=("x", "weight", "bias"), params=dict(_CONV_PARAMS), complex_step=True,
    sample=_sampler(2), domains=((-3.0, 3.0), (-1000.0, 1000.0)),
    check_params=_checker("conv2d", 2),
    test_params=(dict(stride=2), dict(padding=1), dict(padding=(2, 0)), dict(dilation=2),
                 dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2)), dict(padding="same"),
                 dict(padding="same", dilation=2), dict(padding="valid")),
    reference=lambda torch, x, weight, bias, **p: torch.nn.functional.conv2d(x, weight, bias, **p),
)
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    r"""2-D convolution (cross-correlation, as PyTorch's conv2d).

    x (N, C, H, W) or (C, H, W); weight (O, C/groups, kh, kw); bias (O,) or None.
    y (N, O, Ho, Wo) with Ho = floor((H + pad_top + pad_bottom - d (kh - 1) - 1) / s) + 1.
    ``padding``: an int, a pair, "valid" (none) or "same" (output size = input
    size, stride 1 only; an odd total puts the extra row at the bottom, as PyTorch).

    Forward :math:`Y_n = W X_n + b` with X = im2col of the padded input.
    Backward :math:`\partial L/\partial W = \sum_n G_n X_n^\top`,
    :math:`\partial L/\partial b = \sum_{n,i,j} G`, :math:`\partial L/\partial x
    = \mathrm{col2im}(W^\top G_n)` (a full correlation with the flipped kernel).
    Differentiable everywhere.

    saved: (X (N, groups, K, Ho span), weight, Geometry, has bias, 2, unbatched).
    """
    return _conv_nd("conv2d", 2, x, weight, bias, stride, padding, dilation, groups)


@conv2d.set_backward
def _conv2d_backward(saved, gy, needs=(True, True, True)):
    return _conv_backward(saved, gy, needs)


@register(
    "conv1d", kind="convolution",
    formula=(r"y_{n,o,i} = b_o + \sum_{c,p} W_{o,c,p}\,\tilde x_{n,c,\,si+dp}"
             r"\quad(Y_n = W X_n + b,\ X = \operatorname{im2col}(\tilde x))"),
    derivative=(r"\frac{\partial L}{\partial W_{o,c,p}} = \sum_{n,i} g_{n,o,i}\,\tilde x_{n,c,si+dp},\quad"
                r"\frac{\partial L}{\partial b_o} = \sum_{n,i} g_{n,o,i},\quad"
                r"\frac{\partial L}{\partial x} = \operatorname{col2im}(W^\top G_n)"
                r" = \text{full correlation of } g \text{ with the flipped kernel}"),
    convention="differentiable everywhere (linear in x, in W and in b)",
    inputs=("x", "weight", "bias"), params=dict(_CONV_PARAMS), complex_step=True,
    sample=_sampler(1), domains=((-3.0, 3.0), (-1000.0, 1000.0)),
    check_params=_checker("conv1d", 1),
    test_params=(dict(stride=2), dict(padding=2), dict(dilation=2), dict(stride=2, padding=1, dilation=2),
                 dict(padding="same"), dict(padding="valid")),
    reference=lambda torch, x, weight, bias, **p: torch.nn.functional.conv1d(x, weight, bias, **p),
)
def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    r"""1-D convolution, as PyTorch's conv1d: conv2d on (N, C, 1, L) with a (1, k) kernel.

    x (N, C, L) or (C, L); weight (O, C/groups, k); bias (O,) or None; y (N, O, Lo).
    Same derivatives as conv2d with one spatial index.

    saved: as conv2d's, in 2-D form.
    """
    return _conv_nd("conv1d", 1, x, weight, bias, stride, padding, dilation, groups)


@conv1d.set_backward
def _conv1d_backward(saved, gy, needs=(True, True, True)):
    return _conv_backward(saved, gy, needs)


# -- the transposed convolution: the adjoint ----------------------------------------------------

def _transposed_geometry(who, x_shape, w_shape, stride, padding, output_padding, dilation, groups):
    """The Geometry of the conv2d whose input gradient this transposed convolution is:
    that conv2d's input is our output y (N, O*, Ho, Wo), its output our x."""
    N, Cin, H, W = x_shape
    Cw, Og, kh, kw = w_shape
    if Cw != Cin:
        raise ValueError(f"{who}: expected input with {Cw} channels (weight.shape[0]), got input "
                         f"of shape {tuple(x_shape)} with {Cin} channels")
    if Cin % groups:
        raise ValueError(f"{who}: input channels {Cin} (weight of shape {tuple(w_shape)}) are not "
                         f"divisible by groups={groups}")
    out = []
    for size, k, s, p, op, d in zip((H, W), (kh, kw), stride, padding, output_padding, dilation):
        o = (size - 1) * s - 2 * p + d * (k - 1) + op + 1
        if o < 1:
            raise ValueError(f"{who}: the output would have size {o} (input {size}, stride {s}, "
                             f"padding {p}, dilation {d}, kernel {k}, output_padding {op}); "
                             f"input shape {tuple(x_shape)}, weight shape {tuple(w_shape)}")
        out.append(o)
    # positions s*i + d*p - pad, i < H, all lie inside the padded output canvas
    return Geometry(N, Og * groups, out[0], out[1], Cin, (kh, kw), tuple(stride), tuple(dilation),
                    tuple((p, p) for p in padding), (H, W), groups)


@register(
    "conv_transpose2d", kind="convolution",
    formula=(r"y = \Bigl(\frac{\partial\,\mathrm{conv2d}(z, W)}{\partial z}\Bigr)^{\!\top} x + b:"
             r"\quad y_{n,c,\,si+dp-\text{pad},\,sj+dq-\text{pad}} \mathrel{+}= "
             r"\sum_{o} W_{o,c,p,q}\,x_{n,o,i,j}"),
    derivative=(r"\frac{\partial L}{\partial x} = \mathrm{conv2d}(g, W),\quad"
                r"\frac{\partial L}{\partial W_{o,c,p,q}} = \sum_{n,i,j} x_{n,o,i,j}\,"
                r"\tilde g_{n,c,si+dp,sj+dq},\quad"
                r"\frac{\partial L}{\partial b_c} = \sum_{n,u,v} g_{n,c,u,v}"
                r"\quad(\text{the adjoint of conv2d: its forward is conv2d's input gradient})"),
    convention="differentiable everywhere (linear in x, in W and in b)",
    inputs=("x", "weight", "bias"),
    params=dict(stride=1, padding=0, output_padding=0, groups=1, dilation=1), complex_step=True,
    sample=_sampler(2, transposed=True), domains=((-3.0, 3.0), (-1000.0, 1000.0)),
    check_params=_checker("conv_transpose2d", 2, transposed=True),
    test_params=(dict(stride=2), dict(padding=1), dict(stride=2, padding=1, output_padding=1),
                 dict(dilation=2), dict(stride=(2, 3), padding=(0, 1), dilation=(2, 1)),
                 dict(dilation=2, output_padding=1)),
    reference=lambda torch, x, weight, bias, **p: torch.nn.functional.conv_transpose2d(x, weight, bias, **p),
)
def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    r"""Transposed 2-D convolution, as PyTorch's conv_transpose2d: the adjoint of conv2d.

    x (N, Cin, H, W) or (Cin, H, W); weight (Cin, Cout/groups, kh, kw); bias (Cout,) or None.
    y (N, Cout, Ho, Wo), Ho = (H - 1) s - 2 pad + d (kh - 1) + output_padding + 1.

    Its forward *is* conv2d's input gradient: with the same weight read as a
    conv2d weight (O = Cin, C/g = Cout/g), y = col2im(W^T x_n), the same
    ``_input_grad`` code that conv2d's backward runs.  So its backward is
    conv2d's forward and weight gradient: dL/dx = conv2d(g, W) and
    dL/dW = sum_n x_n G_n^T with G = im2col of the padded upstream gradient,
    dL/db = sum of g over (N, H, W).  Differentiable everywhere.

    saved: (x in 2-D form, weight, Geometry, has bias, unbatched).
    """
    who = "conv_transpose2d"
    x, weight, unbatched = _prepare(who, x, weight, 2)
    stride, dilation = check_ints(who, "stride", stride, 2, 1), check_ints(who, "dilation", dilation, 2, 1)
    g = _transposed_geometry(who, x.shape, weight.shape, stride, check_ints(who, "padding", padding, 2, 0),
                             check_ints(who, "output_padding", output_padding, 2, 0), dilation, int(groups))
    bias = _check_bias(bias, g.C, who)
    y = _plus_bias(_input_grad(_wide(x, g), weight, g), bias)
    return (y[0] if unbatched else y), (x, weight, g, bias is not None, unbatched)


@conv_transpose2d.set_backward
def _conv_transpose2d_backward(saved, gy, needs=(True, True, True)):
    x, weight, g, has_bias, unbatched = saved
    gy = _unsqueeze(gy, 2, unbatched)
    gx = gW = gb = None
    if needs[0] or needs[1]:
        cols = _im2col(gy, g)                        # the upstream gradient's patches, once
        if needs[0]:
            gx = _forward(cols, weight, None, g)     # conv2d(g, W)
            gx = gx[0] if unbatched else gx
        if needs[1]:
            gW = _weight_grad(cols, _wide(x, g), g, weight.shape)
    if has_bias and needs[2]:
        gb = gy.sum(axis=(0, 2, 3))
    return gx, gW, gb

