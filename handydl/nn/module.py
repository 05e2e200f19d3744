"""Module and Parameter: state on top of the pure ops.

A module's ``forward`` keeps what its ``backward`` needs; ``backward(gy)``
returns dL/dx for the last forward and *accumulates* (``+=``) dL/dparam into
each ``Parameter.grad``, so a parameter used twice is counted twice.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import _random


class Parameter:
    """A learnable array: ``data`` and the gradient ``grad`` accumulated into it.

    ``zero_grad()`` only marks the gradient as zero; the next ``accumulate``
    then writes instead of adding, which saves a pass over every parameter per
    training step.  Reading ``grad`` always gives the true value.
    """

    def __init__(self, data):
        self.data = np.asarray(data)
        if self.data.dtype.kind not in "fc":
            raise ValueError(f"Parameter: expected a float array, got dtype {self.data.dtype}")
        self._grad = np.zeros_like(self.data)
        self._zero = False

    @property
    def grad(self):
        if self._zero:
            self._grad[...] = 0
            self._zero = False
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad, self._zero = value, False

    def zero_grad(self):
        self._zero = True

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def accumulate(self, g, fresh=False):
        """grad += g, in the parameter's dtype.

        ``fresh=True`` says g is a new array nobody else holds (an op's output):
        after zero_grad it is then taken as the gradient itself, without a copy.
        """
        if not self._zero:
            self._grad += g
        elif fresh and g.flags.owndata and g.dtype == self._grad.dtype and g.shape == self._grad.shape:
            self._grad = g
        else:
            np.copyto(self._grad, g)
        self._zero = False

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: parameters, buffers and child modules are found by attribute.

    Subclasses implement ``forward(x)`` (keeping what backward needs in
    ``self._saved``) and ``backward(gy)``.
    """

    training = True

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_saved", None)

    def __setattr__(self, name, value):
        if name == "_saved":                    # set on every forward: no bookkeeping needed
            object.__setattr__(self, name, value)
            return
        # a buffer stays registered when it is reassigned (running statistics are)
        self._params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, value):
        """A non-learnable array saved in the state dict (running statistics)."""
        self._buffers[name] = None
        object.__setattr__(self, name, value)

    # -- forward / backward ----------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, gy):
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def saved(self):
        """What the last forward kept; RuntimeError if there was none."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward(): "
                               "there is nothing to differentiate")
        return self._saved

    # -- traversal -------------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def children(self):
        return list(self._modules.values())

    def named_parameters(self, prefix=""):
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._params.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for name, (mod, attr) in self._buffer_owners():
            yield name, getattr(mod, attr)

    # -- state -------------------------------------------------------------------------
    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode=True):
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """Copies of every parameter and buffer, by dotted name."""
        state = OrderedDict((n, p.data.copy()) for n, p in self.named_parameters())
        state.update((n, np.array(b, copy=True)) for n, b in self.named_buffers())
        return state

    def load_state_dict(self, state, strict=True):
        """Load arrays by name, cast to each array's dtype; every name and shape is
        checked before anything changes."""
        targets = dict(self.named_parameters())
        buffers = dict(self._buffer_owners())
        expected = set(targets) | set(buffers)
        missing, unexpected = expected - set(state), set(state) - expected
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing keys {sorted(missing)}, "
                             f"unexpected keys {sorted(unexpected)}")
        current = self.state_dict()
        for name in expected & set(state):
            value = np.asarray(state[name])
            if value.shape != current[name].shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape}, "
                                 f"expected {current[name].shape}")
        for name in expected & set(state):
            value = np.asarray(state[name])
            if name in targets:
                targets[name].data[...] = value
            else:
                mod, attr = buffers[name]
                setattr(mod, attr, value.astype(current[name].dtype, copy=True))
        return self

    def _buffer_owners(self):
        for mod_name, mod in self.named_modules():
            for attr in mod._buffers:
                yield (f"{mod_name}.{attr}" if mod_name else attr), (mod, attr)

    def astype(self, dtype):
        """Cast every parameter and float buffer to ``dtype`` in place (gradients follow)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = np.zeros_like(p.data)
        for _, (mod, attr) in self._buffer_owners():
            value = getattr(mod, attr)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                setattr(mod, attr, value.astype(dtype))
        object.__setattr__(self, "_saved", None)
        return self

    # -- printing ------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"  ({name}): " + repr(child).replace("\n", "\n  ")
                 for name, child in self._modules.items()]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def check_gy(gy, y_shape, who):
    """The upstream gradient as an array of the output's shape, or ValueError."""
    gy = np.asarray(gy)
    if gy.shape != y_shape:
        raise ValueError(f"{who}.backward: expected gradient of shape {y_shape} (the output's), "
                         f"got shape {gy.shape}")
    return gy


def resolve_rng(rng):
    """A Generator from an int seed or a Generator; None means handydl's global one."""
    if rng is None:
        return _random.generator()
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)
