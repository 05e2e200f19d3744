"""The op registry: every op is declared once, with everything that describes it.

Tests, plots, docs and the CLI all iterate over ``REGISTRY``, so adding an op
means touching one file and nothing can drift.

The contract of an op (the same as JAX's ``custom_vjp``)::

    y, saved = op.forward(*inputs, **params)   # output, what backward needs
    grads = op.backward(saved, gy)             # one gradient per input
                                               # (None where not differentiable)

An op with several outputs (``outputs=("a", "b")``, as ``split``) returns them
as a tuple and takes one upstream gradient per output, None meaning zero::

    (a, b), saved = op.forward(x)
    gx, = op.backward(saved, ga, None)

``op(*inputs, **params)`` returns just ``y``.  Backward is a vector-Jacobian
product: it never builds a Jacobian.

While a :class:`handydl.tape.Tape` records, ``run`` reports every call
(op, inputs, outputs, saved) to it; that is the one hook the tape needs, and
the ops know nothing else of it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .._fast import fused

REGISTRY: dict[str, "Op"] = {}

# The tape's hook (handydl.tape sets it while recording): called as
# ``_recorder(op, inputs, bound params, outputs, saved)`` after every run.
_recorder = None


def set_recorder(fn):
    """Install ``fn`` as the hook every op call reports to (None removes it);
    returns the previous one, so that recorders can nest."""
    global _recorder
    previous, _recorder = _recorder, fn
    return previous

# Extreme ranges where a naive exp/log overflows; every op is tested on them.
NORMAL = (-6.0, 6.0)
HUGE_NEG = (-1000.0, -100.0)
HUGE_POS = (100.0, 1000.0)
WIDE = (NORMAL, HUGE_NEG, HUGE_POS)


def elementwise_sample(rng, dtype, lo, hi, shape=(4, 5)):
    """Inputs for an elementwise op: one array uniform in [lo, hi]."""
    return (rng.uniform(lo, hi, size=shape).astype(dtype),)


@dataclass(eq=False)
class Op:
    """One differentiable op and everything that describes it.

    Fields
    ------
    name, kind        registry key; "activation", "softmax", "linear",
                      "normalization", "loss", "regularization", "structure",
                      "convolution", "pooling", "embedding" or "attention".
    formula, derivative   LaTeX of f and of its derivative (or VJP).
    convention        the derivative's value at non-differentiable points, in words.
    inputs            names of the positional array inputs; a leading "*" marks
                      a variadic input (chain products).
    outputs           names of the outputs; several make forward return a tuple
                      and backward take one upstream gradient per output.
    module            the torch.nn class name of the module generated for this
                      op (handydl.nn makes it from the registry), or None.
    differentiable    which inputs get a gradient (class indices do not).
    params            keyword parameters and their defaults.
    choices           parameters that take one of a fixed set of values.
    kinks             points where an elementwise derivative jumps.
    domains           input ranges the tests sample, extreme ranges included.
    complex_step      True when forward is complex-analytic, so that
                      f'(x) = Im f(x + ih) / h applies.
    symbolic          ``(x, sp, **params) -> sympy expr`` for scalar ops.
    reference         ``(torch, *inputs, **params) -> tensor``; used by tests
                      only: the library never imports torch.
    sample            ``(rng, dtype, lo, hi, **params) -> inputs`` for tests,
                      plots and ``handydl check``.
    test_params       parameter sets the tests run besides the defaults.
    jacobian          optional explicit Jacobian builder, for people who want
                      to see the matrix.
    check_params      optional ``(bound params) -> None`` that raises ValueError
                      for invalid values, run by ``bind`` (so a module fails at
                      construction, and the fused path never sees them).

    ``set_kernel`` attaches a scalar kernel for the fused float32 path
    (:mod:`handydl.ops.fused`); the op's own function stays the reference.
    """

    name: str
    fn: Callable
    kind: str
    formula: str
    derivative: str
    convention: str = "differentiable everywhere"
    inputs: tuple = ("x",)
    outputs: tuple = ("y",)
    module: str | None = None
    differentiable: tuple | None = None
    params: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    kinks: tuple = ()
    domains: tuple = (NORMAL,)
    complex_step: bool = False
    symbolic: Callable | None = None
    reference: Callable | None = None
    sample: Callable = elementwise_sample
    test_params: tuple = ()
    jacobian: Callable | None = None
    check_params: Callable | None = None
    _backward: Callable | None = None
    _takes_needs: bool = False
    _kernels: list = field(default_factory=list)

    def __post_init__(self):
        if self.differentiable is None:
            self.differentiable = (True,) * len(self.inputs)
        self.__doc__ = self.fn.__doc__

    # -- the contract ---------------------------------------------------------
    def forward(self, *inputs, **params):
        """Return ``(y, saved)``; see the module docstring."""
        return self.run(inputs, self.bind(params))

    def backward(self, saved, *gys, needs=None):
        """Return a tuple with one gradient per input (None if not differentiable).

        ``gys``: one upstream gradient per output (None means zero; an op with
        several outputs gets the Nones, and treats them as zeros).
        ``needs`` (one bool per input) lets an op skip gradients nobody wants,
        such as dL/dx of a network's first layer, whose input is data.
        """
        if self._backward is None:
            raise NotImplementedError(f"op {self.name!r} has no backward")
        if not self.outputs[0].startswith("*") and len(gys) != len(self.outputs):
            raise ValueError(f"{self.name}.backward: expected {len(self.outputs)} upstream "
                             f"gradient(s), one per output {self.outputs}, got {len(gys)}")
        if isinstance(saved, fused.Saved):             # saved by a fused forward
            return (fused.backward(saved, *gys),)
        args = (saved, *gys, needs) if needs is not None and self._takes_needs else (saved, *gys)
        grads = _underflow_ignored(self._backward, args, {})
        return grads if isinstance(grads, tuple) else (grads,)

    def run(self, inputs, bound):
        """forward with parameters already bound (by a module at construction):
        the hot path of training skips re-validating them on every call.

        Underflow to zero is the correctly rounded result (and what PyTorch
        returns): it must never raise, even under np.seterr(all="raise").
        Overflow, division by zero and invalid operations still do.
        """
        result = None
        if self._kernels and fused.usable(inputs[0]):
            kernel = self.kernel_for(bound)
            if kernel is not None:
                numeric = [bound[k] for k in self.params if k not in self.choices]
                result = fused.forward(kernel, inputs[0], numeric)
        if result is None:
            result = _underflow_ignored(self.fn, inputs, bound)
        if _recorder is not None:
            _recorder(self, inputs, bound, *result)
        return result

    def __call__(self, *inputs, **params):
        return self.forward(*inputs, **params)[0]

    def set_backward(self, fn):
        """Decorator that attaches the hand-derived backward ``fn(saved, *gys)``
        (or ``fn(saved, *gys, needs)`` for an op that can skip gradients)."""
        self._backward = fn
        self._takes_needs = fn.__code__.co_argcount >= 2 + len(self.outputs)
        return fn

    def set_kernel(self, fn=None, *, save="derivative", slope=None, **choice):
        """Decorator that attaches a scalar kernel ``(x, *numeric params) -> (y, dy/dx)``,
        fused into one loop when numba is installed (see :mod:`handydl.ops.fused`).

        ``save``: what the fused forward keeps for backward.  "derivative" (dy/dx,
        computed with y), "input" (x; backward recomputes dy/dx: for cheap
        piecewise-linear kernels), or "output" (y; backward takes dy/dx =
        ``slope(y, *numeric params)``, as sigmoid's y (1 - y)).
        ``choice`` names the values of choice parameters it is for (gelu's approximate)."""
        fused.check_save(save, slope, self.name)

        def attach(fn):
            self._kernels.append((choice, fused.Kernel(fn, save, slope)))
            return fn
        return attach(fn) if fn is not None else attach

    def kernel_for(self, bound):
        """The fused.Kernel for these bound parameters, or None."""
        for choice, kernel in self._kernels:
            if all(bound[k] == v for k, v in choice.items()):
                return kernel
        return None

    def set_jacobian(self, fn):
        """Decorator that attaches an explicit Jacobian builder."""
        self.jacobian = fn
        return fn

    # -- parameters -------------------------------------------------------------
    def bind(self, params: dict) -> dict:
        """Defaults merged with ``params``; unknown names and values raise ValueError."""
        unknown = set(params) - set(self.params)
        if unknown:
            valid = ", ".join(self.params) or "none"
            raise ValueError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; "
                             f"valid parameters: {valid}")
        bound = {**self.params, **params}
        for key, valid in self.choices.items():
            check_choice(f"{self.name}: {key}", bound[key], valid)
        if self.check_params is not None:
            self.check_params(bound)
        return bound

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[0].startswith("*")

    def describe(self, params: dict | None = None) -> str:
        """``name(p=v, ...)`` for tables and plot titles."""
        params = params or {}
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"{self.name}({shown})" if shown else self.name

    def __repr__(self):
        return f"<op {self.name}>"


def register(name: str, **fields: Any):
    """Declare an op: ``@register("sigmoid", formula=..., ...)`` on its forward."""
    def wrap(fn):
        if name in REGISTRY:
            raise ValueError(f"op {name!r} is registered twice")
        op = Op(name=name, fn=fn, **fields)
        REGISTRY[name] = op
        return op
    return wrap


def get(name: str) -> Op:
    """The op called ``name``; an unknown name raises ValueError listing the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; valid ops: {', '.join(sorted(REGISTRY))}") from None


def names(kind: str | None = None) -> list[str]:
    """Registered op names, in declaration order, optionally of one kind."""
    return [n for n, op in REGISTRY.items() if kind is None or op.kind == kind]


def check_choice(what: str, value, valid) -> None:
    """Raise ValueError naming ``value`` and listing ``valid`` if it is not one of them."""
    if value not in valid:
        listed = ", ".join(repr(v) for v in valid)
        raise ValueError(f"{what}={value!r} is not valid; expected one of {listed}")


def _underflow_ignored(fn, args, kwargs):
    """fn(*args, **kwargs) with NumPy's underflow errors off (the ops' forwards and
    backwards run in it).  NumPy's default already ignores underflow: entering
    an errstate costs more than many a small op (it is run several times a
    training step), so it is entered only when the caller's setting differs."""
    if np.geterr()["under"] == "ignore":
        return fn(*args, **kwargs)
    with np.errstate(under="ignore"):
        return fn(*args, **kwargs)


def as_float(x) -> np.ndarray:
    """``x`` as a float array: float32 and float64 stay as they are, the rest becomes float64."""
    x = np.asarray(x)
    if x.dtype.kind in "fc":
        return x
    return x.astype(np.float64)


# -- argument checks, in PyTorch's style ---------------------------------------------------
# A wrong type is a TypeError, a value out of range a ValueError; both name the class (or
# function), the argument, the value and what was expected.  A bool is not a number here
# (True would silently be 1), nor is a string.

def check_real(who, name, value, expected, valid=math.isfinite):
    """Raise TypeError unless ``value`` is a real number (a bool is not), and
    ValueError unless ``valid(float(value))``: by default, finite (NaN fails
    every comparison, so a range check refuses it too)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{who}: {name}={value!r} is not valid; expected {expected}")
    if not valid(float(value)):
        raise ValueError(f"{who}: {name}={value!r} is not valid; expected {expected}")


def check_int(who, name, value, expected="a positive integer", valid=lambda n: n > 0):
    """Raise TypeError unless ``value`` is an integer (a bool or 2.0 is not), and
    ValueError unless ``valid(int(value))``: by default, positive."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{who}: {name}={value!r} is not valid; expected {expected}")
    if not valid(int(value)):
        raise ValueError(f"{who}: {name}={value!r} is not valid; expected {expected}")


def check_bool(who, name, value):
    """Raise TypeError unless ``value`` is True or False (1 and "yes" are not)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{who}: {name}={value!r} is not valid; expected True or False")


def check_ints(who, name, value, n, minimum=1, plural=None):
    """``value`` (an int, or a tuple / list of ``n`` ints) as a tuple of ``n`` ints >=
    ``minimum``: kernel sizes, strides, paddings (``plural`` names the tuple in messages).  TypeError for a wrong type (1.5, "3"),
    ValueError for a wrong count or range."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    expected = f"{what} or {plural or f'a tuple of {n} of them'}"
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in items):
        raise TypeError(f"{who}: {name}={value!r} is not valid; expected {expected}")
    if len(items) != n or not all(v >= minimum for v in items):
        raise ValueError(f"{who}: {name}={value!r} is not valid; expected {expected}")
    return tuple(int(v) for v in items)
