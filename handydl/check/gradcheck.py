r"""Gradient checking: the analytic backward against numerical differentiation.

Three numerical references:

- central differences :math:`(f(x+h) - f(x-h))/2h`, with the one-sided
  differences kept so that a kink (left and right derivatives disagree) is
  recognised: there the analytic value passes if it lies between them;
- the complex step :math:`\mathrm{Im}\,f(x + ih)/h`, free of cancellation,
  for complex-analytic functions (the registry says which ops are);
- random projections :math:`v^\top J u` for large inputs (``fast=True``).

Everything runs in float64 on copies: the caller's module and arrays are
never changed.
"""
from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field

import numpy as np

from .. import tape as _tape
from ..nn.loss import Loss
from ..nn.module import Module
from ..ops.registry import Op, check_choice

METHODS = ("central", "complex-step")
FULL_LIMIT = 4000          # output size + checked elements up to which the full Jacobian is built


class GradcheckError(AssertionError):
    """Raised by gradcheck when a gradient disagrees; ``.report`` has the details."""

    def __init__(self, report):
        self.report = report
        super().__init__(report.failure_message())


@dataclass
class Entry:
    """The comparison for one input or parameter."""
    name: str
    shape: tuple
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0            # max abs err / max(largest |numeric derivative|, atol)
    where: tuple | None = None          # (output index, element index) of the worst entry
    analytic: float = 0.0
    numeric: float = 0.0
    kinks: list = field(default_factory=list)     # element indices recognised as kinks
    smaller_steps: int = 0              # comparisons judged at a step below eps (a kink in reach)
    bounds: tuple | None = None         # (left, right) differences when the worst entry is a kink
    pattern: str = ""                   # what the whole analytic Jacobian looks like, when wrong
    passed: bool = True


@dataclass
class GradcheckReport:
    entries: list
    method: str
    mode: str                            # "full Jacobian" or "random projections"
    zero_ok: bool = True
    repeat_ok: bool = True
    problems: list = field(default_factory=list)
    reference: str = "numeric"           # what the analytic gradient was compared with

    @property
    def passed(self):
        return all(e.passed for e in self.entries) and self.zero_ok and self.repeat_ok

    @property
    def max_rel_err(self):
        return max((e.max_rel_err for e in self.entries), default=0.0)

    @property
    def max_abs_err(self):
        return max((e.max_abs_err for e in self.entries), default=0.0)

    def worst(self):
        failed = [e for e in self.entries if not e.passed]
        pool = failed or self.entries
        return max(pool, key=lambda e: e.max_abs_err) if pool else None

    def failure_message(self):
        lines = []
        for e in (e for e in self.entries if not e.passed):
            out_idx, el_idx = e.where
            at = f"element {el_idx}" + (f" (output {out_idx})" if out_idx is not None else "")
            diff = abs(e.analytic - e.numeric)
            rel = diff / abs(e.numeric) if e.numeric else math.inf
            lines.append(f"gradient of {e.name} is wrong at {at}: analytic {e.analytic:.6g} vs "
                         f"{self.reference} {e.numeric:.6g} (abs err {diff:.3g}, rel err "
                         f"{rel:.3g}){_hint(e)}")
        lines.extend(self.problems)
        return "; ".join(lines) or "gradcheck passed"

    def __str__(self):
        rows = [f"gradcheck ({self.method}, {self.mode}): {'PASSED' if self.passed else 'FAILED'}",
                f"  {'input':<24}{'shape':<14}{'max abs err':>12}{'max rel err':>12}  kinks  verdict"]
        for e in self.entries:
            rows.append(f"  {e.name:<24}{str(e.shape):<14}{e.max_abs_err:>12.2e}{e.max_rel_err:>12.2e}"
                        f"  {len(e.kinks):>5}  {'ok' if e.passed else 'WRONG'}")
        rows.extend(f"  {p}" for p in self.problems)
        if not self.passed:
            rows.append("  " + self.failure_message())
        return "\n".join(rows)


def _hint(e):
    """A guess at why: the kink's one-sided derivatives, the ratio of analytic to
    numeric, and what the whole analytic Jacobian looks like (full mode)."""
    a, n = e.analytic, e.numeric
    if e.bounds is not None:
        left, right = e.bounds
        why = (f"; a kink: the left derivative is {left:.4g} and the right {right:.4g}, and the value "
               f"there must lie between them")
    elif n == 0 and a != 0:
        why = "; numeric 0: the output does not depend on this element (here)"
    elif a == 0 and n != 0:
        why = "; analytic 0: a missing term (or a gradient that did not reach this input)?"
    elif a == 0:
        why = ""
    else:
        r = a / n
        why = f"; analytic/numeric = {r:.4g}"
        for value, guess in ((-1, "a sign error?"), (2, "a spurious factor of 2?"),
                             (0.5, "a missing factor of 2?")):
            if abs(r - value) < 1e-3 * abs(value):
                why += f": {guess}"
    return why + (f"; {e.pattern}" if e.pattern else "")


def _pattern(Ja, Jn, y_shape, x_shape, atol, rtol):
    """What a wrong analytic Jacobian Ja (outputs x elements) is, compared with the
    numeric Jn: the right one with two axes of equal length swapped (a transposed
    gradient; a sum over the wrong axis), or only its diagonal."""
    if not np.any(Jn) or Ja.shape != Jn.shape:
        return ""
    A, N = Ja.reshape(y_shape + x_shape), Jn.reshape(y_shape + x_shape)
    same = lambda M: np.allclose(A, M, atol=atol, rtol=rtol)         # noqa: E731
    ny = len(y_shape)
    for i in range(len(x_shape)):
        for j in range(i + 1, len(x_shape)):
            if x_shape[i] == x_shape[j] and same(np.swapaxes(N, ny + i, ny + j)):
                return (f"the analytic gradient is the right one transposed (axes {i} and {j} of this "
                        f"input swapped): a transposed gradient?")
    for i in range(ny):
        for j in range(i + 1, ny):
            if y_shape[i] == y_shape[j] and same(np.swapaxes(N, i, j)):
                return (f"the analytic gradient is the right one with axes {i} and {j} of the output "
                        f"swapped: a sum (or a product) over the wrong axis?")
    if Jn.shape[0] == Jn.shape[1] and np.any(Jn - np.diag(np.diag(Jn))) and same(np.diag(np.diag(Jn)).reshape(A.shape)):
        return ("the analytic Jacobian is only the diagonal of the right one: the terms by which each "
                "output depends on the other elements are missing (a Jacobian reduced to its diagonal?)")
    return ""


# -- a uniform view of what is checked -------------------------------------------------

def _f64(a):
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind in "f" else a


class _Target:
    """What gradcheck differentiates: arrays to perturb, f(arrays), and the analytic VJP."""

    names: list
    arrays: list
    analytic: bool

    def value(self):
        raise NotImplementedError

    def vjp(self, u):
        raise NotImplementedError

    def backward_twice(self, u):
        """Gradients from two backward calls on one forward (the second minus the first
        for accumulated parameter gradients)."""
        raise NotImplementedError


class _Outputs:
    """One or several outputs as one array: the array itself when there is one
    (so that messages name its multi-index), all of them raveled and joined
    when there are several; ``split`` cuts an upstream gradient back."""

    def __init__(self, y):
        self.several = isinstance(y, tuple)
        self.shapes = [np.shape(o) for o in y] if self.several else [np.shape(y)]

    def join(self, y):
        if not self.several:
            return np.array(y, copy=True)
        return np.concatenate([np.ravel(o) for o in y])

    def split(self, u):
        if not self.several:
            return [u]
        ends = np.cumsum([math.prod(s) for s in self.shapes])[:-1]
        return [p.reshape(s) for p, s in zip(np.split(u, ends), self.shapes)]

    def name(self, i):
        """A readable name of flat output index i (several outputs only)."""
        for k, s in enumerate(self.shapes):
            n = math.prod(s)
            if i < n:
                idx = tuple(int(v) for v in np.unravel_index(i, s)) if s else ()
                return f"{k}, element {idx[0] if len(idx) == 1 else idx}"
            i -= n
        return str(i)


class _OpTarget(_Target):
    """A registered Op, or a (forward, backward) pair with the same contract."""

    def __init__(self, fn, inputs, params):
        if isinstance(fn, Op):
            self.forward, self.backward, self.analytic = fn.forward, fn.backward, fn.complex_step
            names = list(fn.inputs)
            diff = fn.differentiable
            if fn.variadic:
                names = [f"X{i + 1}" for i in range(len(inputs))]
                diff = (True,) * len(inputs)
        else:
            fwd, bwd = fn
            self.forward = fwd
            self.backward = lambda saved, *gys: _as_tuple(bwd(saved, *gys))
            self.analytic = True
            names = [f"input{i}" for i in range(len(inputs))]
            diff = tuple(np.asarray(a).dtype.kind == "f" for a in inputs)
        self.params = params
        self.inputs = [_f64(a) if a is not None else None for a in inputs]
        self.idx = [i for i, d in enumerate(diff) if d and i < len(inputs) and self.inputs[i] is not None]
        self.names = [names[i] if i < len(names) else f"input{i}" for i in self.idx]
        self.outputs = _Outputs(self.forward(*self.inputs, **self.params)[0])

    @property
    def arrays(self):
        return [self.inputs[i] for i in self.idx]

    def set(self, k, arr):
        self.inputs[self.idx[k]] = arr

    def value(self):
        # a copy: an op may return its input itself (identity), which is perturbed in place
        return self.outputs.join(self.forward(*self.inputs, **self.params)[0])

    def vjp(self, u):
        y, saved = self.forward(*self.inputs, **self.params)
        return _pick(self.backward(saved, *self.outputs.split(u)), self.idx)

    def backward_twice(self, u):
        y, saved = self.forward(*self.inputs, **self.params)
        gys = self.outputs.split(u)
        first = [np.array(g) for g in _pick(self.backward(saved, *gys), self.idx)]
        second = _pick(self.backward(saved, *gys), self.idx)
        return first, second


def _as_tuple(g):
    return g if isinstance(g, tuple) else (g,)


def _pick(grads, idx):
    return [grads[i] for i in idx]


def _input_names(module, n):
    """'input' for a one-input module; else the forward's argument names ('input 2'
    where it has none, as for ``forward(*xs)``)."""
    if n == 1:
        return ["input"]
    try:
        names = [p.name for p in inspect.signature(module.forward).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    return [names[i] if i < len(names) else f"input {i}" for i in range(n)]


class _ModuleTarget(_Target):
    """A Module: every floating input (a loss's float target too) and every parameter.

    Each evaluation runs on a fresh deep copy, so stateful modules (dropout's
    generator, batch norm's running statistics) give the same function every time.
    """

    def __init__(self, module, inputs):
        self.model = copy.deepcopy(module).astype(np.float64)
        self.model.clear_saved()
        self.inputs = [_f64(a) if isinstance(a, np.ndarray) or np.isscalar(a) else a for a in inputs]
        self.checked = [i for i, a in enumerate(self.inputs)
                        if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
        self.params = self.model.parameters()
        self.analytic = all(getattr(m, "op", None) is None or m.op.complex_step
                            for m in self.model.modules())
        m, y = self._run()
        self.outputs = _Outputs(y)
        # a float input whose gradient the module declares None (a mask, a loss's
        # target where the op does not differentiate it) is not checked
        grads = self._all_grads(m, np.zeros(self.outputs.join(y).shape))
        self.checked = [i for i in self.checked if grads[i] is not None]
        names = _input_names(module, len(self.inputs))
        self.names = [names[i] for i in self.checked] + [n for n, _ in self.model.named_parameters()]

    @property
    def arrays(self):
        return [self.inputs[i] for i in self.checked] + [p.data for p in self.params]

    def set(self, k, arr):
        if k < len(self.checked):
            self.inputs[self.checked[k]] = arr
        else:
            self.params[k - len(self.checked)].data = arr

    def _fresh(self):
        """A copy of the model for one evaluation, sharing its Parameters: buffers,
        random generators and saved states are copied (so every evaluation sees the
        same function), the weights are not (a perturbed element is seen at once,
        and a wide model costs no copy of its weights per evaluation)."""
        m = copy.deepcopy(self.model, memo={id(p): p for p in self.params})
        m.zero_grad()
        return m

    def _run(self):
        m = self._fresh()
        return m, m(*self.inputs)

    def value(self):
        return self.outputs.join(self._run()[1])

    def _all_grads(self, m, u):
        """The module's backward for upstream u: one gradient per positional input."""
        gys = self.outputs.split(u)
        if isinstance(m, Loss):
            g = m.backward(*gys, target_grad=True)
        else:
            g = m.backward(*gys)
        g = _as_tuple(g) if len(self.inputs) > 1 else (g,)
        if len(g) != len(self.inputs):
            raise ValueError(f"gradcheck: {type(m).__name__}.backward returned {len(g)} gradient(s) "
                             f"for {len(self.inputs)} input(s); expected one per positional input")
        return g

    def _backward(self, m, u):
        """The module's gradients for upstream u: checked inputs, then parameters."""
        g = self._all_grads(m, u)
        return [g[i] for i in self.checked] + [p.grad.copy() for p in m.parameters()]

    def vjp(self, u):
        m, _ = self._run()
        return self._backward(m, u)

    def tape_vjp(self, u):
        """The same gradients from the tape: the forward recorded op by op, and the
        ops' own backwards chained in reverse."""
        m = self._fresh()
        with _tape.Tape() as t:
            t.watch(*self.inputs)
            y = m(*self.inputs)
        gys = self.outputs.split(u)
        g = t.backward(y, *gys, wrt=[self.inputs[i] for i in self.checked], params=m.parameters())
        return g + [p.grad.copy() for p in m.parameters()], t

    def backward_twice(self, u):
        """Two forwards on the same input, then two backwards: each consumes its own
        saved state (last in, first out) and both must give the same gradients."""
        m = self._fresh()
        replay = _rng_states(m)
        m(*self.inputs)
        replay()                        # the same dropout masks in the second forward
        m(*self.inputs)
        first = self._backward(m, u)
        total = self._backward(m, u)
        # parameter gradients accumulate: the second call adds its share
        n = len(self.checked)
        second = total[:n] + [t - f for t, f in zip(total[n:], first[n:])]
        return first, second


def _rng_states(model):
    """A function that puts every random Generator of the model's modules back in
    the state it has now."""
    gens = [g for m in model.modules() for g in vars(m).values() if isinstance(g, np.random.Generator)]
    states = [g.bit_generator.state for g in gens]

    def replay():
        for g, st in zip(gens, states):
            g.bit_generator.state = st
    return replay


def _target(fn, inputs, params):
    if isinstance(fn, Module):
        if params:
            raise ValueError("gradcheck: params= is for ops; a module carries its own parameters")
        return _ModuleTarget(fn, inputs)
    if isinstance(fn, Op) or (isinstance(fn, tuple) and len(fn) == 2 and all(map(callable, fn))):
        return _OpTarget(fn, inputs, params or {})
    from . import foreign               # PyTorch and JAX code; imports neither unless fn is theirs
    target, tried = foreign.target(fn, inputs, params or {})
    if target is not None:
        return target
    raise TypeError(f"gradcheck: expected a Module, a registered Op, a (forward, backward) pair, a "
                    f"torch.autograd.Function or a function of torch tensors or JAX arrays, got "
                    f"{_describe(fn)!r} ({type(fn).__name__})" + (f"; {tried}" if tried else ""))


# -- the numerical side ----------------------------------------------------------------------

def _differences(target, k, j, h, y0):
    """f at x_j +- h: the left, right and central differences (arrays of y's shape)."""
    x = target.arrays[k]
    orig = x.flat[j]
    x.flat[j] = orig + h
    yp = target.value()
    x.flat[j] = orig - h
    ym = target.value()
    x.flat[j] = orig
    return (y0 - ym) / h, (yp - y0) / h, (yp - ym) / (2 * h)


STEP_FRACTIONS = (1.0, 0.1, 0.01, 0.001)    # of eps, tried in turn while a step looks kinked
CLEAN = 0.01            # err / tol below which a difference is taken as it is


def _refined(cmp, a, differences, eps):
    """(left, right, central) at the step h = eps, eps/10, eps/100 or eps/1000
    that agrees best with the analytic ``a``: the first whose error is under
    CLEAN * tol, else the one with the smallest error (a pass before a failure).

    A step can cross a kink near x (a ReLU pre-activation within h of 0: in a
    wide layer some unit is) and the difference is then no derivative at all; a
    shorter step that does not reach the kink gives the true derivative, which a
    right gradient matches.  A wrong gradient matches at no step, and a kink at x
    itself is judged by its one-sided differences at each.  A smooth function's
    central difference at eps is within CLEAN * tol, so only kinked or wrong
    comparisons cost the extra evaluations.
    """
    best = None
    for i, f in enumerate(STEP_FRACTIONS):
        d = differences(eps * f)
        failed, score = cmp.rank(a, d[2], d[0], d[1])
        if best is None or (failed, score) < best[0]:
            best = ((failed, score), d, i)
        if not failed and score <= CLEAN:
            break
        # a step that crossed a kink shows it: the one-sided differences disagree (by
        # about twice the error of their mean when one side crossed, by more than the
        # tolerance when both did); where they agree, a shorter step measures the
        # same: a real error
        left, right, central = np.asarray(d[0]), np.asarray(d[1]), np.asarray(d[2])
        spread = np.abs(left - right)
        if not np.any((spread >= np.abs(np.asarray(a) - central))
                      | (spread > cmp.atol + cmp.rtol * np.abs(central))):
            break
    if best[2] > 0:
        cmp.entry.smaller_steps += 1
    return best[1]


def _complex_column(target, k, j, h):
    """Im f(x + i h e_j) / h: one Jacobian column, no cancellation."""
    x = target.arrays[k]
    xc = x.astype(np.complex128)
    xc.flat[j] += 1j * h
    target.set(k, xc)
    try:
        return np.imag(target.value()) / h
    finally:
        target.set(k, x)


def _unit(shape, r):
    e = np.zeros(shape)
    e.flat[r] = 1
    return e


class _Compare:
    """Accumulates analytic-vs-numeric comparisons for one checked array."""

    def __init__(self, name, shape, atol, rtol):
        self.entry = Entry(name, tuple(shape))
        self.atol, self.rtol = atol, rtol
        self._worst = (False, -np.inf)
        self.scale = 0.0

    def judge(self, a, c, left=None, right=None):
        """Analytic ``a`` against numeric ``c`` (and the one-sided differences, when
        given), elementwise: (ok, err, tol, kink)."""
        a, c = np.asarray(a, dtype=np.float64), np.asarray(c, dtype=np.float64)
        err = np.abs(a - c)
        tol = self.atol + self.rtol * np.abs(c)
        ok = err <= tol
        kink = np.zeros(err.shape, dtype=bool)
        if left is not None:
            kink = np.abs(left - right) > 10 * (self.atol + self.rtol * np.maximum(np.abs(left), np.abs(right)))
            between = (np.minimum(left, right) - tol <= a) & (a <= np.maximum(left, right) + tol)
            kink_ok = kink & between
            ok |= kink_ok
            err = np.where(kink_ok, 0.0, err)      # a kink within bounds is no error
        # NaN never passes: both sides must be numbers
        ok &= ~(np.isnan(a) | np.isnan(c))
        return ok, err, tol, kink

    def rank(self, a, c, left=None, right=None):
        """(failed, worst err / tol) of one comparison, without recording it."""
        ok, err, tol, _ = self.judge(a, c, left, right)
        score = np.where(np.isnan(err), np.inf, err / tol)
        return bool(not np.all(ok)), float(np.max(score, initial=0.0))

    def add(self, a, c, out_idx, el_idx, left=None, right=None):
        ok, err, tol, kink = self.judge(a, c, left, right)
        a, c = np.asarray(a, dtype=np.float64), np.asarray(c, dtype=np.float64)
        if np.any(kink):
            self.entry.kinks.append(el_idx)
        e = self.entry
        e.max_abs_err = max(e.max_abs_err, float(np.nanmax(err, initial=0.0)))
        self.scale = max(self.scale, float(np.nanmax(np.abs(c), initial=0.0)))
        # relative to the largest derivative seen (tiny entries do not inflate it), and
        # to atol at least: a gradient that is zero in theory (the bias of a layer
        # followed by batch norm) has only rounding noise to compare
        e.max_rel_err = e.max_abs_err / max(self.scale, self.atol) if e.max_abs_err > 0 else 0.0
        # the worst entry: a failure outranks any pass, then the larger err / tol
        score = np.ravel(np.where(np.isnan(err), np.inf, err / tol))
        bad = ~np.ravel(ok)
        if bad.any():
            score = np.where(bad, score, -np.inf)
        i = int(np.argmax(score))
        rank = (bool(bad.any()), float(score[i]))
        if rank > self._worst:
            self._worst = rank
            e.where = (_index(out_idx, i), el_idx)
            e.analytic, e.numeric = float(np.ravel(a)[i]), float(np.ravel(c)[i])
            e.bounds = ((float(np.ravel(left)[i]), float(np.ravel(right)[i]))
                        if left is not None and np.ravel(kink)[i] else None)
        if bad.any():
            e.passed = False


def _index(out_idx, i):
    if out_idx is None:
        return None
    return out_idx[i] if isinstance(out_idx, list) else out_idx


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, method="central", fast=False,
              params=None, seed=0, raise_exception=True, against="numeric", elements=0):
    r"""Check the analytic backward of ``fn`` against numerical differentiation
    (``against="numeric"``), or a module's hand-written backward against the
    tape's (``against="tape"``).

    ``fn`` is a Module (every floating input, a loss's float target included,
    and every parameter are checked; class indices are not), a registered Op
    (every differentiable input; ``params`` are its keyword parameters), a
    ``(forward, backward)`` pair with the op contract ``forward(*inputs) ->
    (y, saved)``, ``backward(saved, *gys) -> grads``, or PyTorch / JAX code
    (see :mod:`handydl.check.foreign`): a ``torch.autograd.Function`` subclass,
    a function of torch tensors differentiated by autograd, or a JAX function
    (``jax.custom_vjp`` included); every float NumPy input is checked (as a
    float64 tensor), ``params`` are passed as keyword arguments.  Several outputs
    are checked together: their upstream gradients are drawn and compared as one.

    With ``against="tape"`` the module's forward is also recorded on a
    :class:`handydl.tape.Tape`, whose backward chains the ops' own
    hand-derived backwards; the two gradients must agree element by element
    (to ``1e-8`` relative) for three random upstream gradients.  That names a
    wrong composite (a forgotten skip term, a branch not summed) without
    finite differences.

    The full Jacobian is compared for small problems; random projections
    :math:`v^\top J u` when ``fast=True`` or the problem is large, and then, if
    a projection disagrees, the culprit element is located.  An entry passes
    when ``|analytic - numeric| <= atol + rtol * |numeric|``; at a kink (left
    and right differences disagree) when the analytic value lies between them.
    A comparison whose error is over 1% of its tolerance while its one-sided
    differences disagree is repeated with steps eps/10, eps/100, eps/1000: a
    step that crosses a kink near x (a ReLU unit of a wide layer switching on or
    off) measures no derivative, a shorter one does.  With projections,
    ``elements`` random elements of each array are also compared one by one.

    Also checks that a zero upstream gradient gives exactly zero and that
    backward twice gives the same result.  Returns a :class:`GradcheckReport`;
    raises :class:`GradcheckError` naming the worst element if anything is wrong
    (unless ``raise_exception=False``).
    """
    check_choice("gradcheck: method", method, METHODS)
    check_choice("gradcheck: against", against, ("numeric", "tape"))
    if not inputs:
        raise ValueError("gradcheck: expected at least one input")
    if isinstance(elements, bool) or not isinstance(elements, (int, np.integer)) or elements < 0:
        raise ValueError(f"gradcheck: elements must be an integer >= 0, got {elements!r}")
    target = _target(fn, inputs, params)
    if against == "tape":
        if not isinstance(target, _ModuleTarget):
            raise ValueError("gradcheck: against='tape' checks a Module's backward; an op's backward "
                             "is what the tape is made of (use against='numeric')")
        return _finish(_check_against_tape(target, np.random.default_rng(seed)), raise_exception)
    if method == "complex-step" and not target.analytic:
        raise ValueError(f"gradcheck: method='complex-step' needs a complex-analytic function; "
                         f"{_describe(fn)} is not (use method='central')")
    rng = np.random.default_rng(seed)
    y0 = target.value()
    n_checked = sum(a.size for a in target.arrays)
    full = not fast and y0.size + n_checked <= FULL_LIMIT
    mode = "full Jacobian" if full else "random projections"
    if not full and elements and method == "central":
        mode += f" + {elements} random elements per array"
    report = GradcheckReport([], method, mode)
    compares = [_Compare(n, a.shape, atol, rtol) for n, a in zip(target.names, target.arrays)]
    if full:
        _check_full(target, compares, y0, eps, method)
    else:
        _check_projections(target, compares, y0, eps, method, rng, elements)
    report.entries = [c.entry for c in compares]
    for e in report.entries:
        e.where = _readable(e.where, y0.shape, e.shape, target.outputs)
    _check_zero_and_repeat(target, y0, rng, report)
    return _finish(report, raise_exception)


def _finish(report, raise_exception):
    if raise_exception and not report.passed:
        raise GradcheckError(report)
    return report


def _check_against_tape(target, rng, n_draws=3):
    """The module's backward against the tape's, element by element, for random upstreams."""
    y0 = target.value()
    compares = [_Compare(n, a.shape, 0.0, 1e-8) for n, a in zip(target.names, target.arrays)]
    for _ in range(n_draws):
        u = rng.standard_normal(y0.shape)
        hand = target.vjp(u)
        taped, recorded = target.tape_vjp(u)
        for cmp, a, b in zip(compares, hand, taped):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            # relative to the gradient's largest entry: the two sum the same terms in
            # another order, so they differ by rounding only
            cmp.atol = 1e-10 * max(1.0, float(np.max(np.abs(b), initial=0.0)))
            cmp.add(np.ravel(a), np.ravel(b), list(range(a.size)), None)
    report = GradcheckReport([c.entry for c in compares], "tape", "hand-written vs tape",
                             reference="tape")
    for e in report.entries:            # (element i, None) -> (None, multi-index of element i)
        if e.where is not None:
            e.where = (None, _readable((None, e.where[0]), (), e.shape)[1])
    if not report.passed:
        report.problems.append("the tape chained: " + recorded.explain().replace("\n", " | "))
    return report


def _readable(where, y_shape, x_shape, outputs=None):
    """Flat (output, element) indices as multi-indices of y and x."""
    if where is None:
        return None
    out, el = where
    if outputs is not None and outputs.several and isinstance(out, (int, np.integer)):
        return outputs.name(int(out)), _readable((None, el), (), x_shape)[1]

    def unravel(i, shape):
        if not isinstance(i, (int, np.integer)) or len(shape) == 0:
            return i if isinstance(i, str) or i is None else ()
        idx = tuple(int(v) for v in np.unravel_index(i, shape))
        return idx[0] if len(idx) == 1 else idx
    return unravel(out, y_shape), unravel(el, x_shape)


def _describe(fn):
    if isinstance(fn, Op):
        return f"op {fn.name!r}"
    return getattr(fn, "__name__", type(fn).__name__)


def _check_full(target, compares, y0, eps, method):
    rows = [target.vjp(_unit(y0.shape, r)) for r in range(y0.size)]    # analytic J, row by row
    for k, cmp in enumerate(compares):
        Ja = np.stack([np.ravel(row[k]) for row in rows]) if rows else np.zeros((0, 0))
        out = list(range(y0.size))
        Jn = np.zeros(Ja.shape)
        for j in range(target.arrays[k].size):
            if method == "complex-step":
                Jn[:, j] = np.ravel(_complex_column(target, k, j, 1e-20))
                cmp.add(Ja[:, j], Jn[:, j], out, j)
                continue

            def column(h, k=k, j=j):
                return tuple(np.ravel(d) for d in _differences(target, k, j, h, y0))
            left, right, Jn[:, j] = _refined(cmp, Ja[:, j], column, eps)
            cmp.add(Ja[:, j], Jn[:, j], out, j, left, right)
        if not cmp.entry.passed:
            cmp.entry.pattern = _pattern(Ja, Jn, y0.shape, target.arrays[k].shape, cmp.atol, cmp.rtol)


def _along(target, k, v, u, h, y0):
    """The one-sided and central differences of <u, f> along direction v of array k."""
    x = target.arrays[k]
    target.set(k, x + h * v)
    yp = target.value()
    target.set(k, x - h * v)
    ym = target.value()
    target.set(k, x)
    left, right = np.sum(u * (y0 - ym)) / h, np.sum(u * (yp - y0)) / h
    return left, right, (left + right) / 2


def _element(target, k, j, g_j, u, y0, eps, cmp):
    """d<u, f>/dx_j by differences in element j alone (changed in place and put
    back), against the analytic g_j; recorded in cmp."""
    def diffs(h):
        return tuple(np.sum(u * d) for d in _differences(target, k, j, h, y0))
    left, right, central = _refined(cmp, g_j, diffs, eps)
    cmp.add(g_j, central, None, j, left, right)


def _check_projections(target, compares, y0, eps, method, rng, elements=0, n_proj=3):
    """v^T J u for n_proj random u and v per array; then ``elements`` random elements
    of each array one by one; a failed projection is then located."""
    for _ in range(n_proj):
        u = rng.standard_normal(y0.shape)
        grads = target.vjp(u)
        for k, cmp in enumerate(compares):
            x = target.arrays[k]
            v = rng.standard_normal(x.shape)
            a = np.sum(grads[k] * v)
            if method == "complex-step":
                target.set(k, x + 1j * 1e-20 * v)
                numeric = np.sum(u * np.imag(target.value())) / 1e-20
                target.set(k, x)
                cmp.add(a, numeric, None, "projection")
                continue
            left, right, central = _refined(cmp, a, lambda h: _along(target, k, v, u, h, y0), eps)
            cmp.add(a, central, None, "projection", left, right)
    if elements and method == "central":
        u = rng.standard_normal(y0.shape)
        grads = target.vjp(u)
        for k, cmp in enumerate(compares):
            g = np.ravel(grads[k])
            for j in np.sort(rng.choice(g.size, min(elements, g.size), replace=False)):
                _element(target, k, int(j), g[j], u, y0, eps, cmp)
    for k, cmp in enumerate(compares):
        if not cmp.entry.passed and cmp.entry.where[1] == "projection":
            _locate(target, k, cmp, y0, eps, rng)


LOCATE_LEAF = 64        # elements compared one by one at the end of the culprit search


def _locate(target, k, cmp, y0, eps, rng):
    """After a failed projection, find the culprit element: halve the set of
    candidates, keeping the half whose own projection disagrees more (about
    2 log2(n) projections), then compare the last LOCATE_LEAF candidates
    element by element.  No copy of the model: one element is changed in place
    and put back."""
    u = rng.standard_normal(y0.shape)
    g = np.ravel(target.vjp(u)[k])
    x = target.arrays[k]
    located = _Compare(cmp.entry.name, cmp.entry.shape, cmp.atol, cmp.rtol)
    candidates = np.arange(g.size)
    while candidates.size > LOCATE_LEAF:
        ranks = []
        for half in np.array_split(candidates, 2):
            v = np.zeros(x.size)
            v[half] = rng.standard_normal(half.size)
            v = v.reshape(x.shape)
            a = np.sum(g.reshape(x.shape) * v)
            d = _refined(located, a, lambda h: _along(target, k, v, u, h, y0), eps)
            ranks.append((located.rank(a, d[2], d[0], d[1]), half))
        (failed, _), worse = max(ranks, key=lambda r: r[0])
        if not failed:      # the error is spread thinly: sample the candidates left
            worse = np.sort(rng.choice(candidates, LOCATE_LEAF, replace=False))
        candidates = worse
    for j in candidates:
        _element(target, k, int(j), g[j], u, y0, eps, located)
    if not located.entry.passed:
        e = located.entry
        cmp.entry.where, cmp.entry.analytic, cmp.entry.numeric = e.where, e.analytic, e.numeric
        cmp.entry.bounds = e.bounds
        cmp.entry.max_abs_err = max(cmp.entry.max_abs_err, e.max_abs_err)


def _check_zero_and_repeat(target, y0, rng, report):
    zero = target.vjp(np.zeros(y0.shape))
    for name, g in zip(target.names, zero):
        if np.any(np.asarray(g) != 0):
            report.zero_ok = False
            report.problems.append(f"a zero upstream gradient gave a non-zero gradient for {name}: "
                                   f"does the backward multiply by the upstream gradient?")
    u = rng.standard_normal(y0.shape)
    first, second = target.backward_twice(u)
    for name, a, b in zip(target.names, first, second):
        if not np.allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True):
            report.repeat_ok = False
            report.problems.append(f"backward twice gave different gradients for {name}")


def jacobian(fn, *inputs, wrt=0, numeric=False, eps=1e-6, params=None):
    """The full Jacobian dy/d(wrt) of shape ``y.shape + x.shape``, in float64.

    Built row by row from the analytic backward (unit upstream gradients), or
    by central differences with ``numeric=True``.  ``fn`` is as in gradcheck;
    ``wrt`` is the index of the checked input or parameter (or its name).
    """
    target = _target(fn, inputs, params)
    k = target.names.index(wrt) if wrt in target.names else wrt
    if not isinstance(k, int) or not 0 <= k < len(target.arrays):
        raise ValueError(f"jacobian: wrt={wrt!r} is not valid; expected one of {target.names}")
    y0 = target.value()
    x = target.arrays[k]
    if numeric:
        cols = [_differences(target, k, j, eps, y0)[2] for j in range(x.size)]
        J = np.stack([np.ravel(c) for c in cols], axis=1) if cols else np.zeros((y0.size, 0))
    else:
        J = np.stack([np.ravel(target.vjp(_unit(y0.shape, r))[k]) for r in range(y0.size)])
    return J.reshape(y0.shape + x.shape)
