"""InstanceNorm1d and InstanceNorm2d: each sample's channel normalized over its own
positions (L, or H x W), as torch.nn.InstanceNorm1d/2d.

Training (or ``track_running_stats=False``): the instance statistics; this is
group normalization with one channel per group (``ops.group_norm``, num_groups = C),
so the derivative is layer norm's, over each (sample, channel)'s positions.  With
``track_running_stats`` the running mean and the running *unbiased* variance move by
``momentum`` towards the instance statistics averaged over the batch (momentum None:
not at all, and ``num_batches_tracked`` stays 0, as PyTorch's), and evaluation
uses them (``ops.batch_norm_eval``: an affine map per channel), as PyTorch.
Unbatched input, (C, L) or (C, H, W), is a batch of one."""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from .layers import OpModule, Parameter, _cpu_only, _float_dtype


class _InstanceNorm(OpModule):
    op = ops.group_norm
    spatial = 1

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 device=None, dtype=None, *, bias=True):
        who = type(self).__name__
        ops.registry.check_int(who, "num_features", num_features)
        ops.normalization.check_eps(who, eps)
        if momentum is not None:
            ops.registry.check_real(who, "momentum", momentum, "None or a number in [0, 1]",
                                    lambda m: 0 <= m <= 1)
        for name, value in (("affine", affine), ("track_running_stats", track_running_stats), ("bias", bias)):
            ops.registry.check_bool(who, name, value)
        super().__init__(num_groups=num_features, eps=eps)
        _cpu_only(device, who)
        dtype = _float_dtype(dtype, who)
        self.num_features, self.momentum, self.affine = num_features, momentum, affine
        self.track_running_stats = track_running_stats
        ones, zeros = np.ones(num_features, dtype), np.zeros(num_features, dtype)
        self.weight = Parameter(ones) if affine else None
        self.bias = Parameter(zeros) if affine and bias else None
        self._ones, self._zeros = ones, zeros            # the constants of affine=False, bias=False
        if track_running_stats:
            self.register_buffer("running_mean", zeros.copy())
            self.register_buffer("running_var", ones.copy())
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def op_inputs(self):
        w = self._ones if self.weight is None else self.weight
        return (w, self._zeros if self.bias is None else self.bias)

    def forward(self, input):                   # torch's name: m(input=x) works
        x = np.asarray(input)
        who, d = type(self).__name__, self.spatial
        if x.ndim not in (d + 1, d + 2) or x.shape[x.ndim - d - 1] != self.num_features:
            dims = "L" if d == 1 else "H, W"
            raise ValueError(f"{who}: expected input of shape (N, {self.num_features}, {dims}) or "
                             f"({self.num_features}, {dims}), got shape {x.shape}")
        if x.ndim == d + 1:                          # unbatched: a batch of one
            x = x[None]
        if x.dtype.kind == "f" and self._ones.dtype != x.dtype:
            self._ones, self._zeros = self._ones.astype(x.dtype), self._zeros.astype(x.dtype)
        view = x.reshape(x.shape[:2] + (-1,))           # (N, C, positions)
        if self.training or not self.track_running_stats:
            y, saved = self._apply(ops.group_norm, view, self.op_inputs())
            if self.training and self.track_running_stats:
                self._update_running_stats(saved, view.shape[2])
        else:
            y = self._eval(view)
        return y.reshape(np.shape(input))

    def _eval(self, view):
        """The running statistics as constants: an affine map per channel (batch_norm_eval,
        whose parameters are eps alone), saved as _apply saves, for OpModule.backward."""
        extra = self.op_inputs() + (self.running_mean, self.running_var)
        arrays = [e.data if isinstance(e, Parameter) else e for e in extra]
        y, saved = ops.batch_norm_eval.run((view, *arrays), {"eps": self.params["eps"]})
        self.save(ops.batch_norm_eval, saved, np.shape(y), extra)
        return y

    def _update_running_stats(self, saved, positions):
        # as PyTorch's InstanceNorm: momentum None moves nothing (it passes 0.0), and
        # num_batches_tracked is never counted
        f = 0.0 if self.momentum is None else self.momentum
        dtype = self.running_mean.dtype
        mean = saved.mean.mean(axis=0)                  # (N, C) instance statistics, averaged
        var = saved.var.mean(axis=0) * (positions / max(positions - 1, 1))
        self.running_mean = ((1 - f) * self.running_mean + f * mean).astype(dtype)
        self.running_var = ((1 - f) * self.running_var + f * var).astype(dtype)

    def backward(self, gy, input_grad=True):
        """dL/dx in the input's shape (batched or not); weight and bias gradients accumulate."""
        _, _, (n, c, positions), _ = self._peek_saved()      # the (N, C, positions) view's shape
        g = np.asarray(gy)
        lead = g.shape[:g.ndim - self.spatial]
        if lead not in ((n, c), (c,) if n == 1 else None) or math.prod(g.shape[len(lead):]) != positions:
            raise ValueError(f"{type(self).__name__}.backward: gradient of shape {g.shape} does not match "
                             f"the output of the latest forward ({n} x {c} channels of {positions} positions)")
        gx = super().backward(g.reshape(n, c, positions), input_grad)
        return None if gx is None else gx.reshape(g.shape)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.params['eps']}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def get_config(self):
        config = dict(num_features=self.num_features, eps=self.params["eps"], momentum=self.momentum,
                      affine=self.affine, track_running_stats=self.track_running_stats,
                      dtype=self._ones.dtype.name)
        if self.affine and self.bias is None:
            config["bias"] = False
        return config


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization of (N, C, L) or (C, L) input over L."""


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization of (N, C, H, W) or (C, H, W) input over H x W."""
    spatial = 2
