"""Padding modules named as torch.nn's: ZeroPad, ConstantPad, ReflectionPad,
ReplicationPad and CircularPad, 1-d and 2-d, all one op (``ops.pad``) with a mode.

``padding`` is an int (every side) or a tuple (left, right) for 1-d, (left, right,
top, bottom) for 2-d, as PyTorch; ``self.padding`` is the tuple.  The reflection,
replication and circular 1-d modules take (C, W) or (N, C, W), the 2-d ones (C, H, W) or
(N, C, H, W); zero and constant padding take any input with enough dims, as PyTorch."""
from __future__ import annotations

import numbers

import numpy as np

from .. import ops
from .layers import OpModule


class _Pad(OpModule):
    op = ops.pad
    mode = "constant"
    dims = 1

    def __init__(self, padding, value=0.0):
        who, n = type(self).__name__, 2 * self.dims
        if isinstance(padding, numbers.Integral) and not isinstance(padding, (bool, np.bool_)):
            padding = (int(padding),) * n
        elif not (isinstance(padding, (tuple, list)) and len(padding) == n
                  and all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in padding)):
            raise TypeError(f"{who}: padding={padding!r} is not valid; expected an integer or a tuple of {n} of them")
        padding = tuple(int(v) for v in padding)
        if min(padding) < 0:
            raise ValueError(f"{who}: padding={padding!r} is not valid; expected integers >= 0 "
                             "(negative padding, cropping, is not supported)")
        ops.registry.check_real(who, "value", value, "a number", lambda v: True)
        super().__init__(padding=padding, mode=self.mode, value=value)
        self.padding = padding

    def forward(self, input):                   # torch's name: m(input=x) works
        x = np.asarray(input)
        if self.mode == "constant":                  # any number of dims, as PyTorch's ZeroPad/ConstantPad
            if x.ndim < self.dims:
                raise ValueError(f"{type(self).__name__}: expected input of at least {self.dims} dims, "
                                 f"got shape {x.shape}")
        elif x.ndim not in (self.dims + 1, self.dims + 2):
            shapes = "(C, W) or (N, C, W)" if self.dims == 1 else "(C, H, W) or (N, C, H, W)"
            raise ValueError(f"{type(self).__name__}: expected input of shape {shapes}, got shape {x.shape}")
        return self._apply(self.op, input, ())[0]

    def extra_repr(self):
        return f"padding={self.padding}" + (f", value={self.params['value']}" if self.mode == "constant" else "")

    def get_config(self):
        return {"padding": list(self.padding)}


class _ZeroPad(_Pad):
    def __init__(self, padding):
        super().__init__(padding, 0.0)


class _ConstantPad(_Pad):
    def __init__(self, padding, value):
        super().__init__(padding, value)

    def get_config(self):
        return {"padding": list(self.padding), "value": self.params["value"]}


class ZeroPad1d(_ZeroPad):
    """Pads the last dim with zeros."""


class ZeroPad2d(_ZeroPad):
    """Pads the last two dims with zeros."""
    dims = 2


class ConstantPad1d(_ConstantPad):
    """Pads the last dim with ``value``."""


class ConstantPad2d(_ConstantPad):
    """Pads the last two dims with ``value``."""
    dims = 2


class ReflectionPad1d(_Pad):
    """Pads the last dim with its reflection at the ends (the edge not repeated)."""
    mode = "reflect"


class ReflectionPad2d(_Pad):
    """Pads the last two dims with their reflection at the ends."""
    mode, dims = "reflect", 2


class ReplicationPad1d(_Pad):
    """Pads the last dim by repeating its edge entries."""
    mode = "replicate"


class ReplicationPad2d(_Pad):
    """Pads the last two dims by repeating their edge entries."""
    mode, dims = "replicate", 2


class CircularPad1d(_Pad):
    """Pads the last dim by wrapping around (the other end's entries)."""
    mode = "circular"


class CircularPad2d(_Pad):
    """Pads the last two dims by wrapping around."""
    mode, dims = "circular", 2
