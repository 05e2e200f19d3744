r"""Dropout with inverted scaling: y = x * m / (1 - p), m ~ Bernoulli(1 - p).

Scaling at training time keeps E[y] = x, so evaluation is the identity.
"""
from __future__ import annotations

import numpy as np

from .registry import as_float, check_real, register


def _generator(seed):
    """A NumPy Generator from an int seed, a Generator, or None (fresh entropy)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@register(
    "dropout", kind="regularization",
    formula=r"y = \frac{m \odot x}{1 - p},\quad m_i \sim \mathrm{Bernoulli}(1 - p)",
    derivative=r"g_x = \frac{m \odot g_y}{1 - p}",
    convention="the same mask m in forward and backward; p = 1 drops everything (y = 0)",
    params={"p": 0.5, "training": True, "seed": 0},
    test_params=({"p": 0.2}, {"training": False}),
    complex_step=True, domains=((-6.0, 6.0), (-1000.0, 1000.0)),
    check_params=lambda params: check_real("dropout", "p", params["p"], "a probability in [0, 1]",
                                           lambda p: 0 <= p <= 1),
)
def dropout(x, p, training, seed):
    """Zero each element with probability p and scale the survivors by 1/(1 - p).

    ``seed`` (an int or a numpy Generator) makes the mask reproducible; a
    module passes its own Generator so successive calls draw new masks.
    In evaluation mode (training=False) or with p = 0 it is the identity.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p={p!r} is not valid; expected 0 <= p <= 1")
    x = as_float(x)
    if not training or p == 0:
        return x, None
    if p == 1:
        return np.zeros_like(x), np.zeros(x.shape, dtype=x.real.dtype)
    # Generator.random draws float32 or float64 only; a float16 x draws float32
    draw = np.float64 if x.real.dtype == np.float64 else np.float32
    keep = _generator(seed).random(x.shape, dtype=draw) >= p
    scaled_mask = keep * x.real.dtype.type(1 / (1 - p))
    return x * scaled_mask, scaled_mask


@dropout.set_backward
def _dropout_backward(scaled_mask, gy):
    return gy if scaled_mask is None else gy * scaled_mask
