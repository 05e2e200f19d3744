"""Modules for image tensors (N, C, H, W): pooling and 2-D normalization.

Named and parametrized as torch.nn's (constructor arguments, defaults,
``weight`` / ``bias`` parameters, ``running_mean`` / ``running_var`` /
``num_batches_tracked`` buffers), each a thin OpModule over its registered op
(:mod:`handydl.ops.pooling`, :mod:`handydl.ops.normalization`), where the
forward, the hand-derived backward and their LaTeX live.  Arguments are
checked when a module is made, so a bad one fails there, naming itself.
"""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..ops import normalization as _norm
from .layers import BatchNorm1d, OpModule, _cpu_only, _float_dtype
from .module import Parameter
from ..ops.registry import check_bool, check_int, check_real


def _renamed(who, error):
    """The op's ValueError with the module's name in front instead of the op's."""
    message = str(error)
    head, sep, rest = message.partition(": ")
    return ValueError(f"{who}: {rest}" if sep and " " not in head else f"{who}: {message}")


class _PoolModule(OpModule):
    """Binds the op's parameters at construction, errors named after the module.

    Pairs are kept as tuples (a checkpoint's JSON gives lists back) and
    ``get_config`` returns them as lists, its JSON form, so that a config
    survives a round trip unchanged."""

    def __init__(self, **params):
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        try:
            super().__init__(**params)
        except ValueError as e:
            raise _renamed(type(self).__name__, e) from None

    def get_config(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}


class MaxPool2d(_PoolModule):
    """Max pooling over (N, C, H, W) or (C, H, W) input, as torch.nn.MaxPool2d.

    Backward routes each upstream gradient to its window's maximum; on ties
    the first maximum in scan order gets it, as PyTorch's CPU kernel (see
    ``ops.max_pool2d.convention``).  ``return_indices=True`` is not offered.
    """

    op = ops.max_pool2d

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        if return_indices is not False:
            raise ValueError(f"MaxPool2d: return_indices={return_indices!r} is not supported; "
                             f"expected False (the winning offsets are kept for backward only)")
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding,
                         dilation=dilation, ceil_mode=ceil_mode)


class AvgPool2d(_PoolModule):
    """Average pooling over (N, C, H, W) or (C, H, W) input, as torch.nn.AvgPool2d.

    Backward spreads each upstream gradient, divided by its window's divisor,
    over the window.
    """

    op = ops.avg_pool2d

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding,
                         ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                         divisor_override=divisor_override)


class AdaptiveAvgPool2d(_PoolModule):
    """Adaptive average pooling to ``output_size`` (int, pair, None keeps that
    dim), as torch.nn.AdaptiveAvgPool2d; ``AdaptiveAvgPool2d(1)`` is global
    average pooling."""

    op = ops.adaptive_avg_pool2d

    def __init__(self, output_size):
        super().__init__(output_size=output_size)


# -- normalization ---------------------------------------------------------------------------

def _check_eps(who, eps):
    check_real(who, "eps", eps, "a finite number >= 0", lambda e: math.isfinite(e) and e >= 0)


class BatchNorm2d(BatchNorm1d):
    """Batch normalization over (N, C, H, W): BatchNorm1d over (N, H, W), as
    torch.nn.BatchNorm2d.

    Training: each channel is normalized with the batch's mean and biased
    variance over its N*H*W values; ``running_mean`` and the running *unbiased*
    variance move by ``momentum`` (a cumulative average when it is None).
    Evaluation (and ``track_running_stats=False`` never): the running statistics.

    Constructor arguments in torch.nn.BatchNorm2d's order, as BatchNorm1d's:
    ``device`` None or "cpu", ``dtype`` None meaning float32, keyword ``bias=False``
    (weight kept, bias a constant 0).  An empty batch (N = 0) gives an empty
    output and keeps the running statistics, as PyTorch.
    """

    op = _norm.batch_norm2d

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True):
        who = "BatchNorm2d"
        check_int(who, "num_features", num_features)
        _check_eps(who, eps)
        if momentum is not None:
            check_real(who, "momentum", momentum, "None or a number in [0, 1]", lambda m: 0 <= m <= 1)
        for name, flag in (("affine", affine), ("track_running_stats", track_running_stats),
                           ("bias", bias)):
            check_bool(who, name, flag)
        _cpu_only(device, who)
        super().__init__(int(num_features), eps=eps, momentum=momentum, affine=bool(affine),
                         track_running_stats=bool(track_running_stats),
                         dtype=_float_dtype(dtype, who), bias=bool(bias))

    def forward(self, input):                   # torch's name: m(input=x) works
        x = input
        batch_stats = self.training or not self.track_running_stats
        if batch_stats and np.ndim(x) == 4 and np.shape(x)[0] == 0:
            return self._empty_batch(x, _norm.batch_norm2d_eval)
        if batch_stats:
            y, saved = self._apply(_norm.batch_norm2d, x, self.op_inputs())
            if self.training and self.track_running_stats:
                self._update_running_stats(saved, np.shape(x))
            return y
        extra = self.op_inputs() + (self.running_mean, self.running_var)
        return self._apply(_norm.batch_norm2d_eval, x, extra)[0]


class GroupNorm(OpModule):
    """Group normalization, as torch.nn.GroupNorm: the channels of (N, C, *) input
    fall into ``num_groups`` groups, each sample's group is normalized over its
    (C/G, *) values, then a per-channel affine (``weight``, ``bias``).  Same in
    training and evaluation (no running statistics)."""

    op = _norm.group_norm

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None,
                 *, bias=True):
        who = "GroupNorm"
        check_int(who, "num_groups", num_groups)
        check_int(who, "num_channels", num_channels)
        if num_channels % num_groups:
            raise ValueError(f"{who}: num_channels={num_channels!r} is not divisible by "
                             f"num_groups={num_groups!r}")
        _check_eps(who, eps)
        check_bool(who, "affine", affine)
        check_bool(who, "bias", bias)
        _cpu_only(device, who)
        dtype = _float_dtype(dtype, who)
        super().__init__(num_groups=int(num_groups), eps=eps)
        self.num_groups, self.num_channels, self.affine = int(num_groups), int(num_channels), bool(affine)
        ones, zeros = np.ones(num_channels, dtype), np.zeros(num_channels, dtype)
        self.weight = Parameter(ones) if affine else ones
        self.bias = (Parameter(zeros) if bias else None) if affine else zeros
        self._no_bias = zeros.copy()                # the constant 0 of bias=False

    def op_inputs(self):
        return (self.weight, self._no_bias if self.bias is None else self.bias)

    def get_config(self):
        w = self.weight.data if self.affine else self.weight
        config = dict(num_groups=self.num_groups, num_channels=self.num_channels,
                      eps=self.params["eps"], affine=self.affine, dtype=w.dtype.name)
        if self.bias is None:
            config["bias"] = False
        return config

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.params['eps']}, affine={self.affine}"
