"""Small instances of every pattern of modules that is not a plain chain.

``EXAMPLES`` is to composites what the op registry is to ops: the tests,
``handydl check`` and the README enumerate it.  Each entry makes a module
(float64, fixed weights) and inputs for it.
"""
from __future__ import annotations

import numpy as np

from . import composite as c
from . import layers as L


def _lin(n_in, n_out, seed, bias=True):
    return L.Linear(n_in, n_out, bias=bias, dtype=np.float64, rng=seed)


def shared_layer():
    """Sequential(lin, Tanh, lin): one Linear used twice (an RNN cell at two steps)."""
    lin = _lin(4, 4, 0)
    return L.Sequential(lin, L.Tanh(), lin)


def tied_weights():
    """Two Linear layers that share one weight Parameter."""
    a, b = _lin(4, 4, 1), _lin(4, 4, 2)
    b.weight = a.weight
    return L.Sequential(a, L.ReLU(), b)


def pre_norm_residual():
    """x + MLP(LayerNorm(x)): the pre-norm block of a Transformer."""
    return c.Residual(L.Sequential(L.LayerNorm(4, dtype=np.float64), _lin(4, 8, 3), L.GELU(),
                                   _lin(8, 4, 4)))


def projected_residual():
    """shortcut(x) + f(x) with a Linear shortcut where f changes the width."""
    return c.Residual(L.Sequential(_lin(4, 6, 5), L.Tanh(), _lin(6, 6, 6)), shortcut=_lin(4, 6, 7))


def branches_summed():
    """Two paths from one input, summed."""
    return c.Parallel(_lin(4, 3, 8), L.Sequential(_lin(4, 3, 9), L.Sigmoid()), merge="sum")


def branches_concatenated():
    """Two paths from one input, concatenated, then a Linear."""
    return L.Sequential(c.Parallel(_lin(4, 2, 10), L.Sequential(_lin(4, 3, 11), L.Tanh()),
                                   merge="concat"), _lin(5, 2, 12))


def split_and_join():
    """Split into pieces, two outputs into Concat's two inputs, through Sequential."""
    return L.Sequential(_lin(4, 6, 13), L.GENERATED["Split"]([2, 4]), L.GENERATED["Concat"](),
                        L.Tanh())


def forward_only():
    """A gated linear unit (GLU): a forward of registered ops, differentiated by the tape."""
    return L.Sequential(_lin(4, 6, 14), c.GLU())


EXAMPLES = {f.__name__: f for f in (shared_layer, tied_weights, pre_norm_residual, projected_residual,
                                     branches_summed, branches_concatenated, split_and_join,
                                     forward_only)}


def example(name, batch=3, seed=0):
    """(module, inputs) of one entry: inputs are a float64 batch of 4 features."""
    x = np.random.default_rng(seed).standard_normal((batch, 4))
    return EXAMPLES[name](), (x,)
