r"""Composite modules: children called in patterns other than a chain.

The rule every backward here follows, read off the forward in reverse:

- a chain ``y = g(f(x))`` runs ``f.backward(g.backward(gy))``;
- a fork (x used by two paths) is a sum: ``y = x + f(x)`` gives
  ``gx = gy + f.backward(gy)``;
- a merge by concatenation is undone by cutting ``gy`` into the same pieces.

A module used in two places keeps one saved state per call and consumes them
last in, first out, so the backwards below run their children in the reverse
of the forward's order.  For any other pattern, write a ``Module`` whose
``forward`` calls its children and, either a ``backward`` that runs them in
reverse (see ``Residual`` for the shape of one), or no backward at all: the
tape then differentiates the forward (``handydl.tape``).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import ops
from .layers import ChildList
from .module import Module, call_backward, check_gy

MERGES = ("sum", "concat", "tuple")


class Residual(Module):
    r"""y = x + f(x), or y = shortcut(x) + f(x) (a projection when f changes the shape).

    Backward, a fork in the forward pass being a sum in the backward pass:

    .. math:: g_x = g_y + J_f^\top g_y \quad(\text{or } J_s^\top g_y + J_f^\top g_y)
    """

    def __init__(self, f, shortcut=None):
        super().__init__()
        for name, m in (("f", f), ("shortcut", shortcut)):
            if m is not None and not isinstance(m, Module):
                raise TypeError(f"Residual: {name} is {type(m).__name__}, expected a Module")
        self.f = f
        self.shortcut = shortcut

    def forward(self, x):
        fx = self.f(x)
        sx = x if self.shortcut is None else self.shortcut(x)
        if np.shape(sx) != np.shape(fx):
            raise ValueError(f"Residual: f(x) has shape {np.shape(fx)} but the skip path has "
                             f"{np.shape(sx)}; give a shortcut (a projection) that maps x to f's shape")
        y, _ = ops.add.forward(sx, fx)              # an op, so that a tape sees the sum
        self.save(np.shape(y))
        return y

    def backward(self, gy, input_grad=True):
        gy = check_gy(gy, self._peek_saved(), "Residual")
        self.saved()
        # reverse of the forward: the shortcut ran last, so it is differentiated first
        gs = gy if self.shortcut is None else call_backward(self.shortcut, (gy,), input_grad)
        gf = call_backward(self.f, (gy,), input_grad)
        return gs + gf if input_grad else None        # the fork at x: a sum

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config, children):
        return cls(children["f"], children.get("shortcut"))


class Parallel(ChildList, Module):
    """Every branch applied to the same input; their outputs summed (``merge="sum"``),
    concatenated along ``dim`` (``"concat"``) or returned as a tuple (``"tuple"``).

    Backward: each branch gets its share of the upstream gradient (all of it for
    a sum, its slice for a concatenation, its own for a tuple), and dL/dx is the
    sum over the branches, since x forks into all of them.
    """

    def __init__(self, *branches, merge="sum", dim=-1):
        super().__init__()
        if not branches:
            raise ValueError("Parallel: expected at least one branch")
        ops.registry.check_choice("Parallel: merge", merge, MERGES)
        for i, b in enumerate(branches):
            if not isinstance(b, Module):
                raise TypeError(f"Parallel: branch {i} is {type(b).__name__}, expected a Module")
            setattr(self, str(i), b)
        self.merge, self.dim = merge, dim

    def forward(self, x):
        outs = [b(x) for b in self._modules.values()]
        if self.merge == "tuple":
            y = tuple(outs)
        elif self.merge == "concat":
            y, _ = ops.concat.forward(*outs, dim=self.dim)
        else:
            shapes = {np.shape(o) for o in outs}
            if len(shapes) > 1:
                raise ValueError(f"Parallel: branches give outputs of shapes {sorted(shapes)}; "
                                 "merge='sum' needs one shape")
            y = outs[0]
            for o in outs[1:]:
                y, _ = ops.add.forward(y, o)
        self.save([(np.shape(o), np.asarray(o).dtype) for o in outs])
        return y

    def backward(self, *gys, input_grad=True):
        outs = self._peek_saved()
        gys = self._branch_gradients(gys, outs)
        self.saved()
        gx = None
        for b, g in reversed(list(zip(self._modules.values(), gys))):
            g = call_backward(b, (g,), input_grad)
            if input_grad:
                gx = g if gx is None else gx + g       # x forks into every branch
        return gx

    def _branch_gradients(self, gys, outs):
        """dL/d(each branch's output) from the merged output's upstream gradient(s)."""
        if self.merge == "tuple":
            if len(gys) != len(outs):
                raise ValueError(f"Parallel.backward: expected {len(outs)} upstream gradients, one "
                                 f"per branch, got {len(gys)}")
            return [np.zeros(s, d) if g is None else check_gy(g, s, "Parallel")
                    for g, (s, d) in zip(gys, outs)]
        if len(gys) != 1:
            raise ValueError(f"Parallel.backward: expected 1 upstream gradient, got {len(gys)}")
        if self.merge == "sum":
            return [check_gy(gys[0], outs[0][0], "Parallel")] * len(outs)
        d = self.dim % len(outs[0][0])
        shape = list(outs[0][0])
        shape[d] = sum(s[d] for s, _ in outs)
        g = check_gy(gys[0], tuple(shape), "Parallel")
        return np.split(g, np.cumsum([s[d] for s, _ in outs])[:-1], axis=d)

    def get_config(self):
        return dict(merge=self.merge, dim=self.dim)

    @classmethod
    def from_config(cls, config, children):
        return cls(*children.values(), **config)


class ModuleList(ChildList, Module):
    """Modules held in a list, as torch.nn.ModuleList: their parameters are the
    owner's; a user-written forward decides how they are called."""

    def __init__(self, modules=()):
        super().__init__()
        self.extend(modules)

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config, children):
        return cls(children.values())


class ModuleDict(Module):
    """Modules held by name, as torch.nn.ModuleDict."""

    def __init__(self, modules=None):
        super().__init__()
        for name, m in OrderedDict(modules or {}).items():
            self.add_module(name, m)

    def __getitem__(self, name):
        return self._modules[name]

    def __setitem__(self, name, module):
        self.add_module(name, module)

    def __contains__(self, name):
        return name in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config, children):
        return cls(children)


class GLU(Module):
    r"""The gated linear unit of torch.nn.GLU: x cut in halves a, b along ``dim``,
    y = a \odot \sigma(b).

    Written as a forward only, from registered ops: its backward is the tape's,
    made of split's, sigmoid's and mul's hand-derived backwards:
    :math:`g_a = g_y \odot \sigma(b)`, :math:`g_b = g_y \odot a\, \sigma(b)(1 - \sigma(b))`,
    and :math:`g_x = [g_a, g_b]`.
    """

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        n = np.shape(x)[self.dim] if np.ndim(x) else 0
        if n % 2:
            raise ValueError(f"GLU: dim {self.dim} of an input of shape {np.shape(x)} has odd "
                             f"length {n}; expected an even length, to cut in halves")
        a, b = ops.split(x, split_size_or_sections=n // 2, dim=self.dim)
        return ops.mul(a, ops.sigmoid(b))

    def get_config(self):
        return dict(dim=self.dim)
