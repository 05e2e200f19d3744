r"""A tape over the hand-derived ops: record a forward, run it backward.

While a :class:`Tape` records, every registered op that runs (directly, as
``ops.add(a, b)``, or inside a module) is written down with what it saved
and the identities of its input and output arrays.  ``backward`` then walks
the records last to first and calls each op's own hand-written backward,
adding up the gradients of a value that was used more than once (a fork in
the forward pass is a sum in the backward pass).  Nothing is differentiated
automatically: the tape only chains the derivatives of the registry.

Two uses:

- a model written as a forward only (a ``Module`` subclass without
  ``backward``) gets its gradients from the tape, made entirely of
  hand-derived parts;
- a second, independent reference for a composite's hand-written backward:
  ``gradcheck(model, x, against="tape")`` compares the two element by element.

::

    with tape.Tape() as t:
        y = model(x)                       # modules and ops run as usual
    gx, = t.backward(y, gy, wrt=[x])       # dL/dx; dL/dparam goes into each .grad
    print(t.explain())                     # the derivatives it used, in order

The forward must compute with registered ops (``ops.add``, not NumPy's
``+``): arithmetic done with NumPy directly is invisible to the tape, and
``explain()`` lists the arrays that came from outside it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ops import registry


_active = []                            # the tapes recording now, innermost last


def recording():
    """True while some tape records."""
    return registry._recorder is not None


def current():
    """The innermost tape recording now, or None."""
    return _active[-1] if _active else None


@dataclass
class Record:
    """One op call: the op, its bound parameters, its inputs and outputs (kept alive,
    so that no id is reused while the tape exists), and what its forward saved."""
    op: registry.Op
    params: dict
    inputs: tuple
    outputs: tuple
    saved: object


def _is_array(a):
    return isinstance(a, np.ndarray)


class Tape:
    """Records op calls while it is active (``with tape:``); see the module docstring."""

    def __init__(self):
        self.records: list[Record] = []
        self.params = {}                # id(Parameter.data) -> Parameter, noted by modules
        self.watched = {}               # id -> array: inputs declared as leaves
        self._previous = None

    # -- recording ---------------------------------------------------------------
    def __enter__(self):
        self._previous = registry.set_recorder(self._record)
        _active.append(self)
        return self

    def __exit__(self, *exc):
        _active.remove(self)
        registry.set_recorder(self._previous)
        return False

    def _record(self, op, inputs, params, outputs, saved):
        outs = outputs if isinstance(outputs, tuple) else (outputs,)
        self.records.append(Record(op, params, tuple(inputs), outs, saved))

    def watch(self, *arrays):
        """Declare arrays as inputs of the recorded computation (leaves)."""
        for a in arrays:
            if _is_array(a):
                self.watched[id(a)] = a

    def note_params(self, params):
        """Parameters the forward used (modules call this while the tape records)."""
        for p in params:
            if p is not None and hasattr(p, "accumulate"):
                self.params[id(p.data)] = p

    # -- backward ----------------------------------------------------------------
    def backward(self, outputs, *gys, wrt=(), params=None):
        """Run the recorded ops' backwards from ``outputs`` with upstream ``gys``.

        ``outputs``: an array the recorded forward produced, or a tuple of them,
        with one upstream gradient each (None = zero).  Returns dL/d(each array
        in ``wrt``): zeros for a float array the outputs do not depend on, None
        for a non-float one.  dL/dparam is accumulated (``+=``) into the grad of
        every Parameter in ``params`` (default: every Parameter the recorded
        modules used).
        """
        outs = outputs if isinstance(outputs, tuple) else (outputs,)
        if len(gys) != len(outs):
            raise ValueError(f"tape.backward: expected {len(outs)} upstream gradient(s), one per "
                             f"output, got {len(gys)}")
        produced = {id(o) for r in self.records for o in r.outputs}
        grads = {}
        for k, (o, g) in enumerate(zip(outs, gys)):
            if g is None:
                continue
            if id(o) not in produced and id(o) not in self.watched:
                raise ValueError(f"tape.backward: output {k} (shape {np.shape(o)}) was not produced "
                                 "by an op recorded on this tape (computed with NumPy directly?)")
            g = np.asarray(g)
            if g.shape != np.shape(o):
                raise ValueError(f"tape.backward: the gradient of output {k} has shape {g.shape}, "
                                 f"expected {np.shape(o)} (the output's)")
            _add(grads, o, g)
        self.watch(*wrt)                # named as inputs by explain()
        targets = {id(a) for a in wrt if _is_array(a)}
        params = list(self.params.values()) if params is None else list(params)
        targets |= {id(p.data) for p in params}
        needed = self._needed(targets)
        for r in reversed(self.records):
            self._step(r, grads, needed)
        for p in params:
            g = grads.get(id(p.data))
            if g is not None:
                p.accumulate(g)
        return [_result(grads, a) for a in wrt]

    def _needed(self, targets):
        """Ids of the arrays whose gradient the targets' gradients depend on:
        the targets and every value computed from them."""
        needed = set(targets)
        for r in self.records:
            if any(_is_array(a) and id(a) in needed for a in r.inputs):
                needed.update(id(o) for o in r.outputs)
        return needed

    @staticmethod
    def _step(r, grads, needed):
        """One record backward: its outputs' gradients to its inputs' (summed)."""
        ids_in = {id(a) for a in r.inputs if _is_array(a)}
        if any(id(o) in ids_in for o in r.outputs):
            return                      # the op returned its input itself (identity): y = x
        gys = [grads.get(id(o)) for o in r.outputs]
        if all(g is None for g in gys):
            return
        diff = _differentiable(r)
        needs = tuple(d and _is_array(a) and id(a) in needed for a, d in zip(r.inputs, diff))
        if not any(needs):
            return
        in_grads = r.op.backward(r.saved, *gys, needs=needs)
        for a, g, n in zip(r.inputs, in_grads, needs):
            if n and g is not None:
                _add(grads, a, g)

    # -- reading ---------------------------------------------------------------------
    def explain(self):
        """The backward pass in words: the recorded ops last to first, each with its
        derivative (LaTeX from the registry), the values used more than once (their
        gradients are sums) and the arrays that came from outside the tape."""
        index = {}                      # id(output) -> record number
        uses = {}                       # id(array) -> record numbers that read it
        for n, r in enumerate(self.records, start=1):
            for a in r.inputs:
                if _is_array(a):
                    uses.setdefault(id(a), []).append(n)
            for o in r.outputs:
                index[id(o)] = n
        lines = [f"backward through {len(self.records)} recorded op(s), last first:"]
        for n in range(len(self.records), 0, -1):
            r = self.records[n - 1]
            args = ", ".join(_name(a, index, self) for a in r.inputs)
            lines.append(f"  {n:>3}. {r.op.name}({args}): {r.op.derivative}")
        forks = [(i, ns) for i, ns in uses.items() if len(ns) > 1]
        for i, ns in forks:
            who = (f"the output of op {index[i]}" if i in index else
                   "a parameter" if i in self.params else "an input")
            lines.append(f"  {who} is used by ops {', '.join(map(str, ns))}: its gradient is the "
                         "sum of their contributions")
        outside = [a for r in self.records for a in r.inputs if _is_array(a) and a.dtype.kind in "fc"
                   and id(a) not in index and id(a) not in self.watched and id(a) not in self.params]
        if outside:
            shapes = ", ".join(sorted({str(a.shape) for a in outside}))
            lines.append(f"  {len(outside)} input(s) came from outside the tape (constants, or values "
                         f"computed with NumPy directly, which get no gradient): shapes {shapes}")
        return "\n".join(lines)


def _differentiable(r):
    """Which inputs of a record's op take a gradient."""
    if r.op.variadic:
        return (True,) * len(r.inputs)
    diff = tuple(r.op.differentiable)
    return diff + (False,) * (len(r.inputs) - len(diff))


def _add(grads, a, g):
    """grads[a] += g without touching g (an op may hand one array to several inputs)."""
    k = id(a)
    grads[k] = g if k not in grads else grads[k] + g


def _result(grads, a):
    if not _is_array(a) or a.dtype.kind not in "fc":
        return None
    g = grads.get(id(a))
    return np.zeros_like(a) if g is None else g


def _name(a, index, tape):
    if not _is_array(a):
        return "None" if a is None else repr(a)
    if id(a) in index:
        return f"<op {index[id(a)]}>"
    if id(a) in tape.params:
        return "param" + str(tuple(a.shape))
    if id(a) in tape.watched:
        return "input" + str(tuple(a.shape))
    return "const" + str(tuple(a.shape))
