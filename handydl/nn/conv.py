"""Convolution modules, named, parametrized and initialized as torch.nn's:
``Conv1d``, ``Conv2d`` and ``ConvTranspose2d``.

Each applies its registered op (:mod:`handydl.ops.conv`) to x, ``weight`` and
``bias``; the weight has PyTorch's layout, so weights move between the two
unchanged: (out_channels, in_channels / groups, *kernel_size) for a
convolution, (in_channels, out_channels / groups, *kernel_size) for a
transposed one.  As every OpModule, each call keeps its own saved state, and
``backward(gy, input_grad=False)`` skips dL/dx (a first layer's input is data).
"""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..ops.conv import _checker
from ..ops.registry import check_int, check_ints
from .layers import OpModule
from .module import Parameter, resolve_rng


class _ConvNd(OpModule):
    """What Conv1d, Conv2d and ConvTranspose2d share: checks, weights, config, repr."""

    nd = 2
    transposed = False

    def _setup(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
               bias, padding_mode, dtype, rng, output_padding=0):
        who = type(self).__name__
        for name, n in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups)):
            check_int(who, name, n)
        in_channels, out_channels, groups = int(in_channels), int(out_channels), int(groups)
        for name, n in (("in_channels", in_channels), ("out_channels", out_channels)):
            if n % groups:
                raise ValueError(f"{who}: {name}={n} is not divisible by groups={groups}")
        if padding_mode != "zeros":
            raise ValueError(f"{who}: padding_mode={padding_mode!r} is not supported; only "
                             "'zeros' is implemented")
        if self.transposed and isinstance(padding, str):
            raise TypeError(f"{who}: padding={padding!r} is not valid; a transposed convolution "
                             "takes an integer >= 0 or a tuple of them (as PyTorch)")
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise ValueError(f"{who}: dtype={dtype.name} is not valid; expected a float dtype")
        nd = self.nd
        kernel_size = check_ints(who, "kernel_size", kernel_size, nd, 1)
        params = dict(stride=check_ints(who, "stride", stride, nd, 1),
                      padding=padding if isinstance(padding, str) else check_ints(who, "padding", padding, nd, 0),
                      dilation=check_ints(who, "dilation", dilation, nd, 1), groups=groups)
        if self.transposed:
            params["output_padding"] = check_ints(who, "output_padding", output_padding, nd, 0)
        _checker(who, nd, self.transposed)(params)      # "same" with a stride, output_padding
        OpModule.__init__(self, **params)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation = params["stride"], params["padding"], params["dilation"]
        self.groups, self.padding_mode = groups, padding_mode
        if self.transposed:
            self.output_padding = params["output_padding"]
            shape = (in_channels, out_channels // groups) + kernel_size
        else:
            shape = (out_channels, in_channels // groups) + kernel_size
        # PyTorch's default, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        # fan_in = weight.shape[1] * prod(kernel_size), for the weight and the bias alike
        bound = 1 / math.sqrt(shape[1] * math.prod(kernel_size))
        rng = resolve_rng(rng)
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, out_channels).astype(dtype)) if bias else None

    def op_inputs(self):
        return (self.weight, self.bias)

    def forward(self, x):
        x = np.asarray(x)
        nd, who = self.nd, type(self).__name__
        if x.ndim not in (nd + 1, nd + 2) or x.shape[-nd - 1] != self.in_channels:
            dims = ", ".join(("L",) if nd == 1 else ("H", "W"))
            raise ValueError(f"{who}: expected input of shape (N, {self.in_channels}, {dims}) or "
                             f"({self.in_channels}, {dims}) (in_channels={self.in_channels}), "
                             f"got shape {x.shape}")
        return super().forward(x)

    def get_config(self):
        config = dict(in_channels=self.in_channels, out_channels=self.out_channels,
                      kernel_size=list(self.kernel_size), stride=list(self.stride),
                      padding=self.padding if isinstance(self.padding, str) else list(self.padding),
                      dilation=list(self.dilation), groups=self.groups, bias=self.bias is not None,
                      padding_mode=self.padding_mode, dtype=self.weight.dtype.name)
        if self.transposed:
            config["output_padding"] = list(self.output_padding)
        return config

    def extra_repr(self):
        """As torch.nn's: the sizes, then the arguments that differ from their defaults."""
        nd = self.nd
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * nd:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * nd:
            s += f", dilation={self.dilation}"
        if self.transposed and self.output_padding != (0,) * nd:
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv1d(_ConvNd):
    """1-D convolution over (N, C, L) input, as torch.nn.Conv1d: ``weight`` of shape
    (out_channels, in_channels / groups, kernel_size), ``bias`` (out_channels,).
    Forward and backward: :func:`handydl.ops.conv1d`."""

    op = ops.conv1d
    nd = 1

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", dtype=np.float32, rng=None):
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, dtype, rng)


class Conv2d(_ConvNd):
    """2-D convolution over (N, C, H, W) input, as torch.nn.Conv2d: ``weight`` of shape
    (out_channels, in_channels / groups, kh, kw), ``bias`` (out_channels,).
    ``padding``: an int, a pair, "valid" or "same" (stride 1).
    Forward and backward: :func:`handydl.ops.conv2d` (im2col and one product per group)."""

    op = ops.conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", dtype=np.float32, rng=None):
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, dtype, rng)


class ConvTranspose2d(_ConvNd):
    """Transposed 2-D convolution, as torch.nn.ConvTranspose2d (the adjoint of Conv2d,
    "deconvolution"): ``weight`` of shape (in_channels, out_channels / groups, kh, kw).
    Output size (H - 1) stride - 2 padding + dilation (kh - 1) + output_padding + 1.
    Forward and backward: :func:`handydl.ops.conv_transpose2d`."""

    op = ops.conv_transpose2d
    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1, padding_mode="zeros", dtype=np.float32, rng=None):
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, dtype, rng, output_padding=output_padding)
