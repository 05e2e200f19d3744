"""MLP: the network of the derivations, y = f_o(W_o f_h(W_h x)), as a Sequential."""
from __future__ import annotations

import numpy as np

from .init import init_linear
from .layers import BatchNorm1d, Dropout, Linear, Sequential, activation
from .module import Module, resolve_rng
from ..ops.registry import check_real


class MLP(Sequential):
    """Linear (+ BatchNorm1d) + activation (+ Dropout) per hidden layer, then a Linear
    output layer and an optional output activation.

    ``sizes`` = [in, hidden..., out]; ``activation`` is any registered activation
    by name; ``init`` one of handydl.nn.init.INITS.
    """

    def __init__(self, sizes, activation="relu", output_activation=None, dropout=0.0,
                 batch_norm=False, init="default", dtype=np.float32, rng=None):
        expected = "[in, hidden..., out], positive integers"
        try:
            given = list(sizes)
        except TypeError:
            raise TypeError(f"MLP: sizes={sizes!r} is not valid; expected {expected}") from None
        # an integer type: int(2.7) would silently make a layer of width 2, and True one of width 1
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) for s in given):
            raise TypeError(f"MLP: sizes={sizes!r} is not valid; expected {expected}")
        sizes = [int(s) for s in given]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"MLP: sizes={sizes!r} is not valid; expected {expected}")
        check_real("MLP", "dropout", dropout, "a probability in [0, 1]", lambda p: 0 <= p <= 1)
        if len(sizes) == 2 and (dropout or batch_norm):
            # both go after a hidden layer's activation: with none, they would be dropped silently
            flag = f"dropout={dropout!r}" if dropout else f"batch_norm={batch_norm!r}"
            raise ValueError(f"MLP: {flag} needs a hidden layer; sizes={sizes!r} has none "
                             f"(it applies after each hidden layer's activation)")
        rng = resolve_rng(rng)
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            lin = init_linear(Linear(n_in, n_out, dtype=dtype, rng=rng), init, rng=rng)
            layers.append(lin)
            if i < len(sizes) - 2:
                if batch_norm:
                    layers.append(BatchNorm1d(n_out, dtype=dtype))
                layers.append(_activation(activation))
                if dropout:
                    layers.append(Dropout(dropout, seed=rng))
        if output_activation:
            layers.append(_activation(output_activation))
        super().__init__(*layers)
        self.config = dict(sizes=sizes, activation=activation, output_activation=output_activation,
                           dropout=dropout, batch_norm=batch_norm, init=init,
                           dtype=np.dtype(dtype).name)

    def get_config(self):
        return dict(self.config)

    @classmethod
    def from_config(cls, config, children):
        # not Sequential's: an MLP is built from its sizes, and the saved children
        # (the same layers) are then put in place, as for any module
        return Module.from_config.__func__(cls, config, children)


def _activation(name):
    return activation(name) if isinstance(name, str) else name
