"""gradcheck for PyTorch and JAX code: custom backward passes people write elsewhere.

The same checks as for handydl's own ops (full Jacobian or random projections
with the culprit located, kinks, a zero upstream gradient, backward twice) on

- a ``torch.autograd.Function`` subclass, called through ``.apply``;
- any callable of torch tensors whose backward runs through autograd;
- a JAX function, a ``jax.custom_vjp`` (or ``jit``) included.

The inputs are NumPy arrays: every float array is checked, as a float64 tensor
(JAX runs with 64-bit types enabled for the check only); integer arrays (class
indices) are passed as integer tensors and not differentiated; ``params`` are
passed as keyword arguments.  The analytic side is the framework's own
backward: ``torch.autograd.grad`` with the upstream gradient, ``jax.vjp``'s
pullback; the numerical side is handydl's.

torch and jax are never imported here unless ``fn`` is theirs (which means the
caller has imported them already).
"""
from __future__ import annotations

import contextlib
import inspect
import sys

import numpy as np

from .gradcheck import _Outputs, _Target


def target(fn, inputs, params):
    """(a gradcheck target for PyTorch or JAX code, "") or (None, what a trial call
    showed) when fn is neither."""
    kind, tried = framework(fn, inputs, params)
    if kind == "torch":
        return _TorchTarget(fn, inputs, params), ""
    if kind == "jax":
        return _JaxTarget(fn, inputs, params), ""
    return None, tried


def framework(fn, inputs=(), params=None):
    """("torch" | "jax" | None, why a trial call did not tell).

    By type first (an autograd.Function subclass; JAX's custom_vjp, custom_jvp and
    jit wrappers), then by the modules the function's code refers to, and last by
    calling it with the framework's arrays (only a framework already imported).
    """
    torch = sys.modules.get("torch")
    if isinstance(fn, type):
        if torch is not None and issubclass(fn, torch.autograd.Function):
            return "torch", ""
        return None, ""
    if not callable(fn):
        return None, ""
    for root in (_root(type(fn).__module__), _root(getattr(fn, "__module__", None))):
        if root in ("torch", "jax", "jaxlib"):
            return ("torch" if root == "torch" else "jax"), ""
    refs = _referenced_roots(fn)
    if len(refs) == 1:
        return refs.pop(), ""
    return _try_call(fn, inputs, params or {})


def _root(module):
    return module.split(".")[0] if isinstance(module, str) else None


def _referenced_roots(fn):
    """{"torch", "jax"} ∩ the top-level packages of the modules and functions that
    fn's code (nested functions included) names through its globals and closure."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return set()
    scope = dict(getattr(fn, "__globals__", {}))
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
        try:
            scope[name] = cell.cell_contents
        except ValueError:          # an empty cell
            pass
    roots, stack = set(), [code]
    while stack:
        c = stack.pop()
        for name in c.co_names + c.co_freevars:
            v = scope.get(name)
            module = v.__name__ if inspect.ismodule(v) else getattr(v, "__module__", None)
            roots.add(_root(module) if isinstance(module, str) else None)
        stack.extend(k for k in c.co_consts if inspect.iscode(k))
    return {"jax" if r == "jaxlib" else r for r in roots if r in ("torch", "jax", "jaxlib")}


def _try_call(fn, inputs, params):
    """Call fn with torch tensors (that need a gradient), then with JAX arrays, for
    each framework already imported; the first whose arrays come back (with a
    gradient graph, for torch) is fn's."""
    notes = []
    for kind, cls in (("torch", _TorchTarget), ("jax", _JaxTarget)):
        if kind not in sys.modules:
            continue
        try:
            if cls.returns_own_arrays(fn, inputs, params):
                return kind, ""
            notes.append(f"called with {kind} arrays it returned none")
        except Exception as e:      # noqa: BLE001 -- a trial: the reason goes into the message
            notes.append(f"called with {kind} arrays it raised {type(e).__name__}: {e}")
    return None, "; ".join(notes)


def _name(fn):
    return getattr(fn, "__name__", type(fn).__name__)


def _numpy(a):
    """An input as NumPy: float arrays as float64 copies; tensors and JAX arrays
    become arrays; anything else is passed as it is."""
    if hasattr(a, "detach") and hasattr(a, "numpy"):            # a torch tensor
        a = a.detach().cpu().numpy()
    elif type(a).__module__.split(".")[0] in ("jax", "jaxlib") and hasattr(a, "__array__"):
        a = np.asarray(a)
    if isinstance(a, np.ndarray):
        return a.astype(np.float64) if a.dtype.kind == "f" else a.copy()
    return a


def _argument_names(f, n, skip_first=False):
    """The names of f's first n positional parameters (None where there is none,
    as for ``*args``)."""
    try:
        ps = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        return [None] * n
    names = [p.name for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = names[1:] if skip_first else names
    return [names[i] if i < len(names) else None for i in range(n)]


class _ForeignTarget(_Target):
    """The inputs as NumPy arrays (the float ones perturbed in place by gradcheck);
    the framework's forward for values, its backward for vector-Jacobian products."""

    analytic = False                # no complex step through another framework's kernels

    def __init__(self, fn, inputs, params):
        self.fn, self.params = fn, dict(params)
        self.inputs = [_numpy(a) for a in inputs]
        self.checked = [i for i, a in enumerate(self.inputs)
                        if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
        if not self.checked:
            raise ValueError(f"gradcheck: {_name(fn)!r} got no floating NumPy array to check; "
                             f"got {', '.join(type(a).__name__ for a in inputs)}")
        names = self.input_names(len(self.inputs))
        self.names = [f"input {i} ({names[i]})" if names[i] else f"input {i}" for i in self.checked]
        y = self.value_raw()
        self.outputs = _Outputs(y)

    @property
    def arrays(self):
        return [self.inputs[i] for i in self.checked]

    def set(self, k, arr):
        self.inputs[self.checked[k]] = arr

    def value(self):
        return self.outputs.join(self.value_raw())

    def _floats(self, y):
        """The float outputs (a tuple when fn returns several; indices dropped)."""
        outs = list(y) if isinstance(y, (tuple, list)) else [y]
        floats = [o for o in outs if self.is_float(o)]
        if not floats:
            raise ValueError(f"gradcheck: {_name(self.fn)!r} returned no floating array "
                             f"(got {type(y).__name__})")
        for o in floats:
            if str(o.dtype).split(".")[-1] != "float64":      # torch.float64 or float64
                raise ValueError(f"gradcheck: {_name(self.fn)!r} returned a {o.dtype} output for float64 "
                                 f"inputs; the check needs float64 throughout (create constants with "
                                 f"the input's dtype)")
        return floats if isinstance(y, (tuple, list)) else floats[0]

    def value_raw(self):
        return _as_numpy(self._floats(self.evaluate(self.inputs)))

    def vjp(self, u):
        return self.pullback(u, times=1)[0]

    def backward_twice(self, u):
        first, second = self.pullback(u, times=2)
        return first, second


def _as_numpy(y):
    if isinstance(y, list):
        return tuple(np.asarray(_detach(o), dtype=np.float64) for o in y)
    return np.asarray(_detach(y), dtype=np.float64)


def _detach(o):
    return o.detach().cpu().numpy() if hasattr(o, "detach") else o


class _TorchTarget(_ForeignTarget):

    @staticmethod
    def returns_own_arrays(fn, inputs, params):
        import torch
        args = [torch.tensor(a, dtype=torch.float64, requires_grad=True)
                if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in map(_numpy, inputs)]
        y = fn(*args, **params)
        outs = y if isinstance(y, (tuple, list)) else [y]
        return any(isinstance(o, torch.Tensor) and o.requires_grad for o in outs)

    def __init__(self, fn, inputs, params):
        import torch
        self.torch = torch
        self.is_function = isinstance(fn, type) and issubclass(fn, torch.autograd.Function)
        super().__init__(fn, inputs, params)

    def input_names(self, n):
        if not self.is_function:
            return _argument_names(self.fn, n)
        # forward(ctx, *inputs), or forward(*inputs) with a separate setup_context
        ctx_first = self.fn.setup_context is self.torch.autograd.Function.setup_context
        return _argument_names(self.fn.forward, n, skip_first=ctx_first)

    def is_float(self, o):
        return isinstance(o, self.torch.Tensor) and o.is_floating_point()

    def args(self, arrays, grad=False):
        torch = self.torch
        out = []
        for a in arrays:
            if isinstance(a, np.ndarray):
                # a copy: a function that changes its input in place cannot touch ours
                t = torch.tensor(a)
                out.append(t.requires_grad_() if grad and a.dtype.kind == "f" else t)
            else:
                out.append(a)
        return out

    def call(self, args):
        if self.is_function:
            return self.fn.apply(*args, **self.params)
        return self.fn(*args, **self.params)

    def evaluate(self, arrays):
        return self.call(self.args(arrays))

    def pullback(self, u, times):
        """``times`` backward calls on one forward, each with upstream u:
        a list of gradients (one per checked input) per call."""
        torch = self.torch
        args = self.args(self.inputs, grad=True)
        xs = [args[i] for i in self.checked]
        y = self._floats(self.call(args))
        outs = y if isinstance(y, list) else [y]
        pairs = [(o, torch.as_tensor(g, dtype=o.dtype).reshape(o.shape))
                 for o, g in zip(outs, self.outputs.split(u)) if o.requires_grad]
        results = []
        for t in range(times):
            if not pairs:           # nothing reached autograd: the gradient autograd sees is zero
                grads = [None] * len(xs)
            else:
                grads = torch.autograd.grad([o for o, _ in pairs], xs, [g for _, g in pairs],
                                            allow_unused=True, retain_graph=t < times - 1)
            results.append([np.zeros(x.shape) if g is None else g.detach().numpy().astype(np.float64)
                            for x, g in zip(xs, grads)])
        return results


class _JaxTarget(_ForeignTarget):

    @staticmethod
    def returns_own_arrays(fn, inputs, params):
        import jax
        with _x64(jax):
            y = fn(*_JaxTarget._jax_args(jax, [_numpy(a) for a in inputs]), **params)
        outs = y if isinstance(y, (tuple, list)) else [y]
        return any(isinstance(o, jax.Array) for o in outs)

    def __init__(self, fn, inputs, params):
        import jax
        self.jax = jax
        super().__init__(fn, inputs, params)

    def input_names(self, n):
        return _argument_names(self.fn, n)      # custom_vjp and jit keep the primal's signature

    def is_float(self, o):
        return isinstance(o, self.jax.Array) and self.jax.numpy.issubdtype(o.dtype, self.jax.numpy.floating)

    @staticmethod
    def _jax_args(jax, arrays):
        return [jax.numpy.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays]

    def args(self, arrays):
        return self._jax_args(self.jax, arrays)

    def evaluate(self, arrays):
        with _x64(self.jax):        # float64 arrays are made inside: outside, JAX makes float32
            return self.fn(*self.args(arrays), **self.params)

    def pullback(self, u, times):
        jax = self.jax
        with _x64(jax):
            base = self.args(self.inputs)

            def f(*xs):             # fn of the checked inputs only; the rest are constants
                args = list(base)
                for i, x in zip(self.checked, xs):
                    args[i] = x
                y = self._floats(self.fn(*args, **self.params))
                return tuple(y) if isinstance(y, list) else y

            y, pull = jax.vjp(f, *[base[i] for i in self.checked])
            gys = [jax.numpy.asarray(g, dtype=o.dtype).reshape(o.shape)
                   for o, g in zip(y if isinstance(y, tuple) else [y], self.outputs.split(u))]
            cot = tuple(gys) if isinstance(y, tuple) else gys[0]
            return [[np.array(g, dtype=np.float64) for g in pull(cot)] for _ in range(times)]


@contextlib.contextmanager
def _x64(jax):
    """JAX with 64-bit types for the duration of the check only."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:              # older JAX
        from jax.experimental import enable_x64
        with enable_x64():
            yield
    else:
        with enable(True):
            yield
