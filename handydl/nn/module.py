"""Module and Parameter: state on top of the pure ops.

The contract that lets any graph be written by hand:

- ``y = m(x, ...)`` keeps what backward needs **per call** (``self.save(...)``
  in forward): a module called k times in one forward holds k saved states,
  and k calls of ``backward`` consume them last in, first out (``saved()``).
  So a module used twice, a cell applied at every time step, a layer shared
  by two branches all get the right gradient, accumulated with ``+=`` into
  ``Parameter.grad``.
- ``backward(*gys)`` takes one upstream gradient per output (None = zero) and
  returns one gradient per positional input: the array itself for a module
  with one input, a tuple for several (None for data that needs none, such as
  class indices).  ``input_grad=False`` says the input is data: dL/dx is then
  not computed, and None is returned.
- A module that defines only ``forward`` gets its backward from the tape
  (:mod:`handydl.tape`): each forward is recorded op by op, and backward runs
  the ops' own hand-derived backwards in reverse.

A saved state lives until its backward consumes it, or until ``zero_grad()``
of the module (or of a module above it) drops every state not yet consumed,
which starts a new training step.  Under ``with nn.no_grad():`` forwards keep
nothing at all (evaluation and prediction).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from collections import OrderedDict

import numpy as np

from .. import _random, tape as _tape


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


_grad_enabled = True

# Bumped whenever any module anywhere gains or loses a child or a parameter:
# each module's cached list of the modules and parameters below it (walked on
# every training step by __call__, zero_grad and Sequential.backward) is valid
# while the number it was made at is current.
_structure_version = 0


@contextlib.contextmanager
def no_grad():
    """Forwards inside keep no state for backward (evaluation, prediction), as
    ``torch.no_grad``: nothing is saved, so nothing can pile up.  A backward
    of such a forward raises a clear error."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    """False inside ``no_grad()``."""
    return _grad_enabled


class Module:
    """Base class: parameters, buffers and child modules are found by attribute.

    Subclasses implement ``forward(*inputs)``, keeping what backward needs with
    ``self.save(...)``, and ``backward(*gys)``, which takes it back with
    ``self.saved()`` (see the module docstring for the contract).  A subclass
    that implements only ``forward`` is differentiated by the tape.
    """

    training = True
    _uses_tape = False              # True for subclasses without their own backward

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._uses_tape = cls.backward is Module.backward

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_states", [])

    def __setattr__(self, name, value):
        global _structure_version
        if name == "_saved":            # the older spelling of self.save(value)
            self.save(value)
            return
        # a buffer stays registered when it is reassigned (running statistics are);
        # a parameter or module reassigned keeps its place in the order (as PyTorch)
        owner = (self._params if isinstance(value, Parameter) else
                 self._modules if isinstance(value, Module) else None)
        for registry in (self._params, self._modules):
            if registry is not owner and registry.pop(name, None) is not None:
                _structure_version += 1
        if owner is not None:
            owner[name] = value
            _structure_version += 1
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        global _structure_version
        if self._params.pop(name, None) is not None or self._modules.pop(name, None) is not None:
            _structure_version += 1
        self._buffers.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name, value):
        """A non-learnable array saved in the state dict (running statistics)."""
        self._buffers[name] = None
        object.__setattr__(self, name, value)

    def add_module(self, name, module):
        """A child module by name (as ``setattr``; the name may be a digit)."""
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.add_module: {name!r} is "
                            f"{type(module).__name__}, expected a Module")
        setattr(self, str(name), module)

    # -- forward / backward ----------------------------------------------------------
    def __call__(self, *args, **kwargs):
        recording = _tape.current()
        if recording is not None:       # the tape accumulates into them, however they are used
            recording.note_params(self._params.values())
        elif self._uses_tape and _grad_enabled:
            return self._forward_on_tape(args, kwargs)
        if not self._modules:
            return self.forward(*args, **kwargs)
        # a forward that fails part-way takes back what its children saved,
        # so that no later backward consumes half of a failed call
        marks = [(m, len(m._states)) for m in self._tree()[0]]
        try:
            return self.forward(*args, **kwargs)
        except BaseException:
            for m, n in marks:
                del m._states[n:]
            raise

    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, *gys, input_grad=True):
        """The tape's backward, for a module that defines only ``forward``.

        Runs, in reverse, the hand-derived backward of every op that this
        call's forward recorded; returns dL/d(each positional input) (None for
        non-float inputs, and for all of them with ``input_grad=False``) and
        accumulates dL/dparam into each Parameter's ``grad``.
        """
        if not self._uses_tape:
            raise NotImplementedError(f"{type(self).__name__} has no backward")
        recorded, args, outputs = self._peek_saved()
        grads = recorded.backward(outputs, *gys, wrt=args if input_grad else (),
                                  params=self.parameters())
        self.saved()                    # consumed only once the tape accepted the gradients
        if not input_grad:
            return None
        return grads[0] if len(grads) == 1 else tuple(grads)

    def _forward_on_tape(self, args, kwargs):
        # one array passed as two inputs: a view for the second, so that the tape
        # keeps each input's own gradient apart (their sum is the caller's fork)
        args = _distinct(args)
        recorded = _tape.Tape()
        with recorded:
            recorded.watch(*args)
            outputs = self.forward(*args, **kwargs)
        self.save(recorded, args, outputs)
        return outputs

    def save(self, *state):
        """Keep ``state`` for the backward of this call (nothing under ``no_grad()``,
        nor while a tape records: the tape then keeps what backward needs)."""
        if _grad_enabled and not _tape.recording():
            self._states.append(state[0] if len(state) == 1 else state)

    def saved(self):
        """The state of the latest forward not yet differentiated, taken off the stack.

        RuntimeError if there is none: backward called more often than forward.
        """
        state = self._peek_saved()
        self._states.pop()
        return state

    def _peek_saved(self):
        if not self._states:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called before forward(), or more often: each "
                "forward keeps one saved state and each backward consumes the latest (last in, "
                "first out); none is left (forward not called, called under no_grad() or a tape, "
                "already differentiated, or dropped by zero_grad())")
        return self._states[-1]

    @property
    def saved_count(self):
        """How many forwards of this module wait for their backward."""
        return len(self._states)

    def clear_saved(self):
        """Drop every saved state of this module and the modules below it."""
        for m in self._tree()[0]:
            m._states.clear()

    # -- traversal -------------------------------------------------------------------
    def named_modules(self, prefix="", remove_duplicate=True, memo=None):
        """(dotted name, module) for this module and every module below it; a module
        used in two places is listed once, under its first name (as PyTorch)."""
        if remove_duplicate:
            memo = set() if memo is None else memo
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name,
                                           remove_duplicate, memo)

    def modules(self):
        return list(self._tree()[0])

    def _tree(self):
        """(modules, parameters) below and including this one, as tuples, from a
        cache kept while the structure of every module stays as it was."""
        cached = self.__dict__.get("_tree_cache")
        if cached is None or cached[0] != _structure_version:
            cached = (_structure_version, tuple(m for _, m in self.named_modules()),
                      tuple(p for _, p in self.named_parameters()))
            object.__setattr__(self, "_tree_cache", cached)
        return cached[1:]

    def children(self):
        return list(self._modules.values())

    def named_children(self):
        return list(self._modules.items())

    def named_parameters(self, prefix="", remove_duplicate=True):
        """(dotted name, Parameter) for every parameter; a shared Parameter (a tied
        weight, a module used twice) is listed once, under its first name."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix, remove_duplicate):
            for name, p in mod._params.items():
                if remove_duplicate and id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return list(self._tree()[1])

    def named_buffers(self):
        for name, (mod, attr) in self._buffer_owners():
            yield name, getattr(mod, attr)

    # -- state -------------------------------------------------------------------------
    def zero_grad(self):
        """Mark every gradient zero and drop the saved states of forwards not yet
        differentiated: a new training step begins."""
        for p in self._tree()[1]:
            p.zero_grad()
        self.clear_saved()

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
        self.clear_saved()
        return self

    @classmethod
    def from_config(cls, config, children):
        """A module rebuilt from a checkpoint: ``cls(**config)`` (``config`` is what
        ``get_config()`` returned), then each saved child put in place by its
        attribute name, so that shared children stay shared.  Containers whose
        children are constructor arguments (Sequential) override this."""
        m = cls(**config)
        for name, child in children.items():
            m.add_module(name, child)
        return m

    def get_submodule(self, target):
        """The module at dotted path ``target`` ("" is this module), as PyTorch."""
        m = self
        for name in target.split(".") if target else ():
            if name not in m._modules:
                raise AttributeError(f"{type(m).__name__} has no child module {name!r} "
                                     f"(looking up {target!r})")
            m = m._modules[name]
        return m

    # -- printing ------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"  ({name}): " + repr(child).replace("\n", "\n  ")
                 for name, child in self._modules.items()]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _distinct(args):
    """The arguments, with a view in place of each repeat of an array already among them."""
    seen, out = set(), []
    for a in args:
        if isinstance(a, np.ndarray):
            if id(a) in seen:
                a = a.view()
            seen.add(id(a))
        out.append(a)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _takes_input_grad(cls):
    return "input_grad" in inspect.signature(cls.backward).parameters


def call_backward(m, gys, input_grad=True):
    """``m.backward(*gys)``; with ``input_grad=False`` passed on to a backward that
    takes it (a user's module may not: its dL/dx is then computed and dropped).
    Returns None when ``input_grad`` is False."""
    if input_grad:
        return m.backward(*gys)
    if _takes_input_grad(type(m)):
        return m.backward(*gys, input_grad=False)
    m.backward(*gys)
    return None


def check_gy(gy, y_shape, who):
    """The upstream gradient as an array of the output's shape, or ValueError."""
    if type(gy) is not np.ndarray:       # (a subclass such as np.matrix becomes an ndarray)
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
