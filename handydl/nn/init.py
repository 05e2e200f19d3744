r"""Weight initializations for Linear layers (weight of shape (fan_in, fan_out)).

- "default": PyTorch's, W and b uniform in +-1/sqrt(fan_in);
- Kaiming (He): std = gain / sqrt(fan_in), gain = sqrt(2) for ReLU-like layers;
- Xavier (Glorot): std = gain * sqrt(2 / (fan_in + fan_out)).
A uniform variant draws from +-sqrt(3) std (same variance).  Kaiming and
Xavier set the bias to zero.
"""
from __future__ import annotations

import math

from .module import resolve_rng

INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal")


def init_linear(linear, scheme="default", gain=None, rng=None):
    """Re-initialize ``linear.weight`` (and bias) in place with ``scheme``."""
    if scheme not in INITS:
        raise ValueError(f"init={scheme!r} is not valid; expected one of {', '.join(INITS)}")
    if scheme == "default":
        return linear
    rng = resolve_rng(rng)
    fan_in, fan_out = linear.weight.shape
    if scheme.startswith("kaiming"):
        std = (math.sqrt(2.0) if gain is None else gain) / math.sqrt(fan_in)
    else:
        std = (1.0 if gain is None else gain) * math.sqrt(2.0 / (fan_in + fan_out))
    dtype = linear.weight.dtype
    if scheme.endswith("uniform"):
        bound = math.sqrt(3.0) * std
        linear.weight.data[...] = rng.uniform(-bound, bound, linear.weight.shape).astype(dtype)
    else:
        linear.weight.data[...] = (rng.standard_normal(linear.weight.shape) * std).astype(dtype)
    if linear.bias is not None:
        linear.bias.data[...] = 0
    return linear
