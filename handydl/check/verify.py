r"""Check a derivative that a person wrote, in plain math or LaTeX.

``verify_derivative("tanh(x)", "1 - tanh^2 x")`` (or ``r"1 - \tanh^2(x)"``):

1. SymPy differentiates the function; where it can prove claim - f' = 0
   (``simplify``, in a worker of its own with part of the budget), that
   decides, and sampling confirms.
2. Otherwise, and always as a check, the claim and f' are sampled with
   mpmath at 40 and 60 significant digits (the difference of the two bounds
   the rounding error at each point, so a tolerance of 1e-12 relative plus
   that bound scales with the size of the terms): on a grid and random points
   of [lo, hi], far points out to 1000, and every breakpoint of the function
   and the claim (the conditions of ``x if x != 3 else 5``, ``x < 12``, the
   zeros inside abs, max, min, sign) exactly and on both sides of each, with
   the range widened to reach them.  ``2.0000001*x`` against ``2*x`` is WRONG.
3. At a kink (a point where the one-sided derivatives differ) the claimed
   value must be one a convention can take: the left or the right derivative,
   or a value between them (a subgradient, Clarke's generalized derivative);
   the verdict says which, and whether it is PyTorch's (relu'(0) = 0).  7 for
   ReLU'(0) is WRONG.
4. Symbolic parameters (``α x^p``, ``\sum_{k=1}^{N}``) stay symbolic for
   SymPy and are sampled at two positive values each (integers for the
   bounds of a sum); they are taken positive.

A WRONG verdict carries a counterexample (the point, the claimed and the true
value) and the true derivative.

``verify_gradient("sum((X @ W)^2)", "W", "2 X^T @ (X @ W)", {"X": (3, 4), "W": (4, 2)})``
checks an array claim on random draws: central differences in mpmath (60
and 40 digits, a step of 1e-20) where every function has a high-precision
form, so the tolerance follows the size of the terms (``10 exp(10 x)`` for
``sum(exp(10 x))`` is CORRECT, ``1.0000001 *`` a right claim WRONG);
otherwise float64 central differences with a tolerance that includes the
rounding error of the function's value.  Chain-rule claims with an upstream
array G, ``let`` definitions and Jacobians given case by case work as before.

Every check runs under a time and memory budget (``timeout`` seconds, default
10; ``memory_mb``), in a worker process that is killed when it runs over:
``BudgetExceeded`` then (exit status 3 on the command line).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import numpy as np

from .bounded import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, BudgetExceeded, run_bounded
from .expr import Expr, ExprError, parse

RTOL = 1e-6             # float64 central differences (the fallback for array claims)
SAMPLE_RTOL = 1e-12     # high-precision sampling
DPS = (40, 60)          # the two precisions (significant digits)
MAX_ELEMENTS = 10_000   # per array of verify_gradient
MP_ELEMENTS = 4_000     # arrays up to this size (all together) are checked in mpmath
MAX_BAD = 12            # disagreements after which sampling stops
MP_WRT = 64             # ... and a wrt of up to this many elements, element by element

__all__ = ["Verdict", "verify_derivative", "verify_gradient", "verify_relation", "BudgetExceeded"]


@dataclass
class Verdict:
    """The answer: ``correct``, the ``method`` that decided, a ``counterexample``
    (inputs, claimed value, true value) when wrong, and the true derivative as
    text in ``expected`` where it is known; ``notes`` say what happened at
    kinks (and which convention a value there matches)."""
    correct: bool
    method: str
    counterexample: dict | None = None
    expected: str | None = None
    notes: list = field(default_factory=list)

    def __str__(self):
        lines = [("CORRECT" if self.correct else "WRONG") + f" (decided by {self.method})"]
        lines += self.notes
        if self.counterexample:
            lines.append(_counterexample_text(self.counterexample))
        if self.expected and not self.correct:
            lines.append(f"the true derivative: {self.expected}")
        return "\n".join(lines)

    def __bool__(self):
        return bool(self.correct)

    def _repr_markdown_(self):
        head = "**CORRECT**" if self.correct else "**WRONG**"
        out = [f"{head} (decided by {self.method})", ""]
        out += [f"- {n}" for n in self.notes]
        if self.counterexample:
            out.append(f"- {_counterexample_text(self.counterexample)}")
        if self.expected and not self.correct:
            out.append(f"- the true derivative: ${_latex(self.expected)}$")
        return "\n".join(out)

    def _repr_latex_(self):
        rows = [(r"\textbf{CORRECT}" if self.correct else r"\textbf{WRONG}")
                + r"\ \text{(" + _tex_text(f"decided by {self.method}") + ")}"]
        rows += [r"\text{" + _tex_text(n) + "}" for n in self.notes]
        if self.counterexample:
            rows.append(r"\text{" + _tex_text(_counterexample_text(self.counterexample)) + "}")
        if self.expected and not self.correct:
            rows.append(r"\text{the true derivative: } " + _latex(self.expected))
        return "$$\\begin{array}{l}" + r" \\ ".join(rows) + r"\end{array}$$"


def _tex_text(s):
    for a, b in (("\\", r"\backslash "), ("{", r"\{"), ("}", r"\}"), ("_", r"\_"), ("%", r"\%"),
                 ("#", r"\#"), ("&", r"\&"), ("$", r"\$"), ("^", r"\hat{}")):
        s = s.replace(a, b)
    return s


def _latex(text):
    """The derivative's text as LaTeX (through SymPy where it reads it)."""
    try:
        import sympy as sp
        from .mathparse import parse as read
        return sp.latex(read(text))
    except Exception:                                   # a numeric array: shown as text
        return r"\text{" + _tex_text(text) + "}"


def _counterexample_text(ce):
    where = ", ".join(f"{k} = {_fmt(v)}" for k, v in ce["inputs"].items())
    at = f" at index {ce['index']}" if ce.get("index") is not None else ""
    if ce.get("kink"):
        left, right = ce["kink"]
        return (f"counterexample: {where}: claimed {_fmt(ce['claimed'])}, but f is not differentiable "
                f"there (left derivative {_fmt(left)}, right {_fmt(right)}): a value at a kink must be "
                f"one of them or between them (a subgradient)")
    return f"counterexample: {where}{at}: claimed {_fmt(ce['claimed'])}, true {_fmt(ce['true'])}"


def _fmt(v):
    if isinstance(v, str):
        return v
    if np.ndim(v) == 0:
        v = float(v)
        if v != 0 and (abs(v) < 1e-4 or abs(v) >= 1e6):
            return f"{v:.10g}"
        return f"{v:.10g}" if abs(v - round(v, 6)) > 0 else f"{v:.6g}"
    return np.array2string(np.asarray(v, dtype=np.float64), precision=4, suppress_small=True,
                           max_line_width=100)


def _as_expr(obj, what):
    return obj if isinstance(obj, Expr) else parse(obj, what)


# -- scalar claims -----------------------------------------------------------------------------

def verify_derivative(function, claim, var="x", lo=-10.0, hi=10.0, samples=400, seed=0,
                      timeout=DEFAULT_TIMEOUT, memory_mb=DEFAULT_MEMORY_MB):
    """Is ``claim`` the derivative of ``function`` with respect to ``var``?

    Both are text in plain math or LaTeX (or parsed ``Expr``).  Returns a
    ``Verdict``; raises ``ExprError`` for unusable input and
    ``BudgetExceeded`` when the check runs over ``timeout`` seconds or
    ``memory_mb`` (``timeout=None``: no budget, in this process)."""
    f, c = _scalar_inputs(function, claim, var, lo, hi)
    _preload()
    return run_bounded(_derivative_check, (f, c, var, float(lo), float(hi), int(samples), seed, True,
                                           timeout), timeout, memory_mb, "the check")


def _preload():
    """Import SymPy and mpmath here, before the worker forks, so that each check
    does not pay for the import again."""
    import mpmath  # noqa: F401
    import sympy  # noqa: F401


def _scalar_inputs(function, claim, var, lo, hi):
    if not isinstance(var, str) or not re.fullmatch(r"[A-Za-z]\w*", var):
        raise ExprError(f"variable {var!r} is not a valid name")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ExprError(f"the range [{lo}, {hi}] must be finite with lo < hi")
    f, c = _as_expr(function, "function"), _as_expr(claim, "claim")
    for e, what in ((f, "function"), (c, "claim")):
        _refuse_condition(e, what)
    unknown = c.names - f.names - {var, "pi", "e"}
    if unknown:
        name = sorted(unknown)[0]
        raise ExprError(f"claim: unknown name {name!r}; the variable is {var!r} (and a parameter "
                        f"of the claim must appear in the function)")
    if var not in f.names:
        raise ExprError(f"the function does not depend on {var!r}")
    return f, c


def _refuse_condition(e, what):
    t = e.tree
    if isinstance(t, (ast.Compare, ast.BoolOp)) or isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not):
        raise ExprError(f"{what} {e.text!r} is a condition, not a value; write a value, e.g. "
                        f"'1 if {e.text} else 0'")


def _derivative_check(f, c, var, lo, hi, samples, seed, differentiate=True, timeout=None):
    import sympy as sp
    x = sp.Symbol(var, real=True)
    params, integers = _parameters(f, c, var)
    symbols = {var: x}
    for name in params:
        symbols[name] = sp.Symbol(name, integer=True, positive=True) if name in integers \
            else sp.Symbol(name, positive=True)
    F, C = (_doit(e.to_sympy(symbols, sp), sp, what) for e, what in ((f, "function"), (c, "claim")))
    D = _doit(sp.diff(F, x), sp, "the derivative") if differentiate else F
    judge = _Judge(sp, F, C, D, x, [symbols[n] for n in params], integers, differentiate)
    judge.op = _registered_op(f, var)
    verdict = judge.sample(lo, hi, samples, seed)
    if verdict.correct:
        return judge.prove(verdict, timeout)
    try:                                      # the true derivative in its shortest form
        verdict.expected = run_bounded(_shortest, (sp, D), None if timeout is None else 0.25 * timeout,
                                       DEFAULT_MEMORY_MB, "SymPy's simplification")
    except BudgetExceeded:
        pass
    return verdict


def _registered_op(f, var):
    """The registry op when the function is exactly op(var) (for PyTorch's convention at kinks)."""
    from .. import ops
    t = f.tree
    if isinstance(t, ast.Call) and isinstance(t.func, ast.Name) and len(t.args) == 1 \
            and isinstance(t.args[0], ast.Name) and t.args[0].id == var:
        return ops.REGISTRY.get(t.func.id)
    return None


def _doit(expr, sp, what):
    if isinstance(expr, (sp.core.relational.Relational, sp.logic.boolalg.BooleanFunction)):
        raise ExprError(f"the {what} is a condition, not a value")
    if expr.has(sp.Derivative):
        expr = expr.doit()
        if expr.has(sp.Derivative):
            raise ExprError(f"the {what} contains a derivative of an undefined function")
    return expr


def _parameters(f, c, var):
    """Names other than the variable (and pi, e); those used as sum bounds are integers."""
    params = sorted((f.names | c.names) - {var, "pi", "e"})
    integers = set()
    for e in (f, c):
        for node in ast.walk(e.tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id in ("summation", "product") and len(node.args) == 4:
                for bound in node.args[2:]:
                    integers |= {n.id for n in ast.walk(bound) if isinstance(n, ast.Name)}
                params = [p for p in params if p != node.args[1].id]
    return params, integers & set(params)


class _Judge:
    """Samples claim and true derivative at high precision, kinks included."""

    def __init__(self, sp, F, C, D, x, params, integers, differentiate):
        from .mpeval import compile_mp
        self.sp, self.F, self.C, self.D, self.x = sp, F, C, D, x
        self.params, self.integers, self.differentiate = params, integers, differentiate
        self.f, self.c, self.d = compile_mp(F), compile_mp(C), compile_mp(D)
        self.what = "f'" if differentiate else "the first side"

    # - values
    def value(self, fn, env, dps):
        import mpmath
        from .mpeval import Undefined
        with mpmath.workdps(dps):
            try:
                v = fn(env)
                return None if isinstance(v, bool) else +v
            except (Undefined, ZeroDivisionError, OverflowError, ValueError):
                return None

    def agree(self, cv, d, env):
        """Equal within 1e-12 relative, plus ten times the rounding error, which is bounded
        (only where they differ) by the distance to the values at 40 digits."""
        import mpmath
        gap = abs(cv - d)
        size = max(abs(d), abs(cv))
        if gap <= SAMPLE_RTOL * size + mpmath.mpf(10) ** -45:
            return True
        c40, d40 = self.value(self.c, env, DPS[0]), self.value(self.d, env, DPS[0])
        if c40 is None or d40 is None:
            return False
        return gap <= SAMPLE_RTOL * size + 10 * (abs(c40 - cv) + abs(d40 - d))

    def parameter_sets(self, seed):
        import mpmath
        if not self.params:
            return [{}]
        rng = np.random.default_rng(seed + 1)
        sets = []
        for draw in range(2):
            env = {}
            for p in self.params:
                if p.name in self.integers:
                    env[p] = mpmath.mpf(3 + 2 * draw)
                else:
                    env[p] = mpmath.mpf(round(float(rng.uniform(0.5, 3.0)), 4))
            sets.append(env)
        return sets

    # - points
    def breakpoints(self, env, reach):
        """Real zeros of everything a piecewise form switches on, in [-reach, reach]."""
        sp = self.sp
        subs = {p: sp.Rational(str(v)) if p not in self.integers else sp.Integer(int(v)) for p, v in env.items()}
        switches = set()
        for expr in (self.F, self.C, self.D):
            for node in sp.preorder_traversal(expr):
                if isinstance(node, sp.core.relational.Relational):
                    switches.add(node.lhs - node.rhs)
                elif isinstance(node, (sp.Abs, sp.sign, sp.Heaviside, sp.DiracDelta)):
                    switches.add(node.args[0])
                elif isinstance(node, (sp.Max, sp.Min)):
                    a, *rest = node.args
                    switches.update(a - r for r in rest)
        roots = set()
        for g in list(switches)[:200]:
            try:
                g = sp.sympify(g).subs(subs) if subs else g
            except Exception:
                continue
            if not getattr(g, "free_symbols", None) or g.free_symbols != {self.x}:
                continue
            roots |= self.zeros(g, reach)
        return sorted(roots)

    def zeros(self, g, reach):
        import mpmath
        sp = self.sp
        from .mpeval import compile_mp
        out = set()
        try:
            if g.is_polynomial(self.x) and sp.degree(g, self.x) <= 6:
                with mpmath.workdps(DPS[1]):       # the same number the claim's x == 1/3 computes
                    for r in sp.Poly(g, self.x).real_roots():
                        if abs(float(r)) <= reach:
                            out.add(mpmath.mpf(int(r.p)) / int(r.q) if r.is_Rational
                                    else mpmath.mpf(str(sp.N(r, 70))))
                return out
        except Exception:
            pass
        try:
            fn = compile_mp(g)
        except ExprError:
            return out
        grid = np.concatenate([np.linspace(-reach, reach, 2001), np.linspace(-12, 12, 2001)])
        grid.sort()
        vals = []
        with mpmath.workdps(30):
            for t in grid:
                try:
                    vals.append(fn({self.x: mpmath.mpf(float(t))}))
                except Exception:
                    vals.append(None)
            for t, a, b, u in zip(grid, vals, vals[1:], grid[1:]):
                if a is None or b is None:
                    continue
                if a == 0:
                    out.add(mpmath.mpf(float(t)))
                elif (a < 0) != (b < 0):
                    try:
                        r = mpmath.findroot(lambda z: fn({self.x: z}), (mpmath.mpf(float(t)), mpmath.mpf(float(u))),
                                            solver="anderson")
                        out.add(+r)
                    except Exception:
                        pass
        return out

    def points(self, lo, hi, n, seed, breaks):
        import mpmath
        rng = np.random.default_rng(seed)
        reach = max([hi, -lo] + [2 * abs(float(b)) + 1 for b in breaks])
        base = np.concatenate([np.linspace(lo, hi, n // 2) + 1.234567e-3, rng.uniform(lo, hi, n // 4),
                               [-1e-3, 1e-3, -0.5, 0.5, 1, -1, 2, -2],
                               [12.5, 20, 35, 60, 100, 250, 1000, -12.5, -20, -35, -60, -100, -250, -1000]])
        if reach > max(hi, -lo):
            base = np.concatenate([base, np.linspace(-reach, reach, 61) + 1.234567e-3])
        base = base[np.argsort(np.abs(base), kind="stable")]
        pts = [mpmath.mpf(float(t)) for t in base]
        with mpmath.workdps(DPS[1]):
            for b in breaks:
                for off in (1e-9, 1e-6, 1e-3, 0.1, 0.7):
                    pts += [b - off, b + off]
        return pts, reach

    # - the verdict
    def sample(self, lo, hi, n, seed):
        checked, bad, notes, stopped = 0, [], [], False
        reach = max(hi, -lo)
        for env in self.parameter_sets(seed):
            breaks = self.breakpoints(env, 1e6)
            pts, reach_env = self.points(lo, hi, n, seed, breaks)
            reach = max(reach, reach_env)
            for t in pts:
                if len(bad) >= MAX_BAD:            # enough evidence; the rest would cost time
                    stopped = True
                    break
                if any(abs(t - b) <= 1e-30 * max(1, abs(b)) for b in breaks):
                    continue                       # judged below, as a breakpoint
                local = {**env, self.x: t}
                if self.differentiate and self.value(self.f, local, DPS[0]) is None:
                    continue                      # outside the function's domain
                d = self.value(self.d, local, DPS[1])
                if d is None:
                    continue
                cv = self.value(self.c, local, DPS[1])
                checked += 1
                if cv is None or not self.agree(cv, d, local):
                    bad.append((local, cv, d, None))
            for b in breaks:
                result = self.at_breakpoint(env, b)
                if result is None:
                    continue
                checked += 1
                kind, info = result
                if kind == "bad":
                    bad.append(info)
                elif kind == "note" and info not in notes:
                    notes.append(info)
        if checked == 0:
            raise ExprError(f"neither the claim nor {self.what} has a real value at any sample point "
                            f"in [{lo:g}, {hi:g}] (is the function defined there?)")
        self.checked, self.reach, self.notes = checked, reach, notes
        rng_text = f"[{-reach:g}, {reach:g}]"
        expected = str(self.D)
        if bad:
            if all(b[1] is None for b in bad) and len(bad) == checked:
                raise ExprError("the claim is not finite at any sample point (a division by zero?)")
            ce = self.counterexample(bad)
            of = f"the first {checked} points checked" if stopped else f"{checked} points"
            return Verdict(False, f"numeric sampling at high precision (mpmath, {DPS[1]} digits): the claim and "
                                  f"{self.what} differ at {len(bad)} of {of} in {rng_text}",
                           ce, expected, notes)
        return Verdict(True, f"numeric sampling at high precision (mpmath, {DPS[1]} digits) at {checked} points in "
                             f"{rng_text}, every breakpoint and both sides of each", None, expected, notes)

    def at_breakpoint(self, env, b):
        """At a breakpoint: a regular point (compare), a kink (a convention), a jump (skip)."""
        import mpmath
        with mpmath.workdps(DPS[1]):                # b ± delta exist only at this precision
            delta = mpmath.mpf(10) ** -25 * max(1, abs(b))
            here, left_env, right_env = ({**env, self.x: t} for t in (b, b - delta, b + delta))
        cv = self.value(self.c, here, DPS[1])
        if not self.differentiate:
            d = self.value(self.d, here, DPS[1])
            if d is None:
                return None
            ok = cv is not None and abs(cv - d) <= SAMPLE_RTOL * max(abs(d), abs(cv)) + mpmath.mpf(10) ** -40
            return None if ok else ("bad", (here, cv, d, None))
        fvals = [self.value(self.f, e, DPS[1]) for e in (left_env, here, right_env)]
        L, R = self.value(self.d, left_env, DPS[1]), self.value(self.d, right_env, DPS[1])
        if None in fvals or L is None or R is None:
            return None
        scale = 1 + abs(fvals[1])
        if abs(fvals[0] - fvals[1]) > 1e-12 * scale or abs(fvals[2] - fvals[1]) > 1e-12 * scale:
            return ("note", f"the function jumps at {self.x} = {_fmt(float(b))}: no derivative there")
        tol = lambda v: mpmath.mpf(10) ** -15 * max(1, abs(v))       # noqa: E731  (delta is 1e-25)
        if abs(L - R) <= tol(L):
            if cv is None or abs(cv - R) > tol(R):
                return ("bad", (here, cv, R, None))
            return None
        low, high = min(L, R), max(L, R)
        at = f"{self.x} = {_fmt(float(b))}"
        if cv is None:
            return ("note", f"at {at} the function is not differentiable (left derivative {_fmt(float(L))}, "
                            f"right {_fmt(float(R))}), and the claim is undefined there too")
        if cv is None or not (low - tol(low) <= cv <= high + tol(high)):
            return ("bad", (here, cv, None, (float(L), float(R))))
        which = ("the left derivative" if abs(cv - L) <= tol(L) else
                 "the right derivative" if abs(cv - R) <= tol(R) else
                 "a value between the one-sided derivatives (a subgradient)")
        return ("note", f"at {at} the function is not differentiable (left derivative {_fmt(float(L))}, "
                        f"right {_fmt(float(R))}); the claim gives {_fmt(float(cv))} there: {which}"
                        + self.torch_convention(b, cv))

    def torch_convention(self, b, cv):
        """', as PyTorch (relu'(0) = 0)' when the function is a registered op whose backward
        (tested equal to PyTorch's) gives the claimed value at this kink."""
        op = getattr(self, "op", None)
        if op is None:
            return ""
        try:
            y, saved = op.forward(np.array([float(b)]))
            g = float(np.asarray(op.backward(saved, np.ones(1))[0]).reshape(-1)[0])
        except Exception:
            return ""
        if abs(g - float(cv)) <= 1e-12 * max(1, abs(g)):
            return f", as PyTorch ({op.name}'({_fmt(float(b))}) = {_fmt(g)})"
        return f" (PyTorch takes {op.name}'({_fmt(float(b))}) = {_fmt(g)})"

    def counterexample(self, bad):
        """The clearest disagreement (more than 1%) nearest the origin."""
        def rel(item):
            _, cv, d, kink = item
            if kink is not None or cv is None or d is None:
                return float("inf")
            return float(abs(cv - d) / max(1, abs(d)))
        clear = [b for b in bad if rel(b) > 0.01]
        pool = clear or bad
        near = lambda b: (float(abs(b[0][self.x])) < 0.5, float(abs(b[0][self.x])))    # noqa: E731
        env, cv, d, kink = min(pool, key=near) if clear else max(pool, key=rel)
        inputs = {self.x.name: float(env[self.x])}
        inputs.update({p.name: float(v) for p, v in env.items() if p is not self.x})
        ce = {"inputs": inputs, "claimed": float(cv) if cv is not None else "undefined",
              "true": float(d) if d is not None else (kink[0] if kink else "undefined")}
        if kink is not None:
            ce["kink"] = kink
        return ce

    def prove(self, verdict, timeout):
        """SymPy's proof that claim - f' = 0, in a worker with part of the budget."""
        budget = None if timeout is None else max(0.5, 0.4 * timeout)
        diff = self.C - self.D
        try:
            proven, simple = run_bounded(_simplify, (self.sp, diff, self.D), budget, DEFAULT_MEMORY_MB,
                                         "SymPy's simplification")
            why = "SymPy could not prove claim - f' = 0"
        except BudgetExceeded:
            proven, simple = False, None
            why = "SymPy did not finish proving claim - f' = 0 within its share of the budget"
        if simple:
            verdict.expected = simple
        if proven:
            verdict.method = (f"symbolic simplification (SymPy: claim - {self.what} = 0), confirmed by "
                              + verdict.method)
        else:
            verdict.method += f" ({why})"
        return verdict


def _simplify(sp, diff, D):
    return sp.simplify(diff) == 0, _shortest(sp, D)


def _shortest(sp, D):
    """SymPy's derivative as text: as differentiated (1 - tanh(x)**2 reads better than
    cosh(x)**(-2)) unless simplification makes it much shorter."""
    raw = str(D)
    try:
        simple = str(sp.simplify(D))
    except Exception:
        simple = raw
    return raw if len(raw) <= 2 * len(simple) else simple


def verify_relation(text, var=None, lo=-10.0, hi=10.0, timeout=DEFAULT_TIMEOUT, memory_mb=DEFAULT_MEMORY_MB,
                    shapes=None, let=None):
    r"""Check a chain as written: ``\frac{d}{dx} f = a = b`` (each side after the
    first against f'), or ``a = b = c`` (each side against the first).  With
    ``shapes`` (and ``let``), ``\frac{\partial L}{\partial o_j} = p_j - y_j``
    checks each side as element j of the gradient of the array expression L
    by o.  Returns a list of (side text, Verdict)."""
    from .mathparse import parse_tree, split_relation
    pieces = split_relation(text)
    if len(pieces) < 2:
        raise ExprError(f"{text!r} has no '='; give FUNCTION and CLAIM, or a chain a = b")
    head = parse_tree(pieces[0], "the first side")
    if _is_diff(head) and isinstance(head.args[1], ast.Subscript):
        return _element_relation(head, pieces[1:], shapes, let, timeout, memory_mb)
    if _is_diff(head):
        inner, v, order = head.args
        if not isinstance(v, ast.Name) or order.value != 1:
            raise ExprError("the first side must be a first derivative by a variable, d/dx f")
        if var is not None and var != v.id:
            raise ExprError(f"the chain differentiates by {v.id!r}, not by --var {var!r}")
        var, differentiate = v.id, True
        function = Expr(ast.unparse(inner), inner, _names(inner))
    else:
        differentiate = False
        function = parse(pieces[0], "the first side")
        if var is None:
            names = sorted(function.names - {"pi", "e"})
            var = "x" if "x" in names or not names else names[0]
    out = []
    for piece in pieces[1:]:
        f, c = _scalar_inputs(function, piece, var, lo, hi) if differentiate else \
            (function, _as_expr(piece, "side"))
        _preload()
        v = run_bounded(_derivative_check, (f, c, var, float(lo), float(hi), 400, 0, differentiate, timeout),
                        timeout, memory_mb, "the check")
        out.append((piece, v))
    return out


def _is_diff(tree):
    return isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "diff"


def _element_relation(head, sides, shapes, let, timeout, memory_mb):
    """dL/do_j = claim_j: each side is element j of the gradient of L by o (arrays)."""
    inner, v, order = head.args
    idx = v.slice
    if not (isinstance(v.value, ast.Name) and isinstance(idx, ast.Name) and order.value == 1):
        raise ExprError("write the element of a gradient as \\frac{\\partial L}{\\partial o_j}, "
                        "one index")
    if not shapes:
        raise ExprError(f"give the arrays' shapes (--shape {v.value.id}=N ...) to check "
                        f"d/d{v.value.id}_{idx.id} element by element")
    expr = ast.unparse(inner)
    out = []
    for side in sides:
        tree = parse(side, "side").tree
        if idx.id != "j":                    # the cases' input index is j: o_i -> o_j
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and node.id in (idx.id, "j"):
                    node.id = "j" if node.id == idx.id else idx.id
        out.append((side, verify_gradient(expr, v.value.id, cases=[f"0 == 0: {ast.unparse(tree)}"],
                                          shapes=shapes, let=let, timeout=timeout, memory_mb=memory_mb)))
    return out


def _names(tree):
    from .expr import _validate
    names = set()
    _validate(tree, names, "the function")
    return names


# -- array claims -------------------------------------------------------------------------------

def parse_let(text):
    """'p = softmax(o)' -> ('p', Expr)."""
    m = re.fullmatch(r"\s*([A-Za-z]\w*)\s*=(?!=)(.+)", text or "")
    if not m:
        raise ExprError(f"--let {text!r}: expected NAME = EXPRESSION")
    return m.group(1), parse(m.group(2), f"let {m.group(1)}")


def parse_case(text):
    """'i == j: p[i] * (1 - p[i])' -> (condition Expr, value Expr)."""
    cond, sep, value = (text or "").partition(":")
    if not sep:
        raise ExprError(f"case {text!r}: expected CONDITION: EXPRESSION, e.g. 'i == j: p[i] * (1 - p[i])'")
    from .mathparse import split_relation
    sides = split_relation(cond)
    if len(sides) == 2:                                   # 'i = j' as people write it
        cond = f"({sides[0]}) == ({sides[1]})"
    return parse(cond, "case condition"), parse(value, "case value")


def verify_gradient(expr, wrt, claim=None, shapes=None, let=None, cases=None, draws=3, seed=0,
                    positive=False, timeout=DEFAULT_TIMEOUT, memory_mb=DEFAULT_MEMORY_MB):
    """Check ``claim`` = d(expr)/d(wrt) on ``draws`` random draws.

    ``expr`` is a scalar expression (the claim then has wrt's shape) or a
    vector one (the claim is its Jacobian, shape (out, in), or ``cases``: a
    list of "CONDITION: EXPRESSION" strings in the indices i (output) and j
    (input)).  ``shapes`` maps every array name to its shape; ``let`` is a list
    of "NAME = EXPRESSION" definitions evaluated in order.  Inputs are drawn
    from a standard normal, or uniformly in [0.2, 2] with ``positive=True`` (and
    automatically when the expression is not finite for the normal draws).
    Text is plain math, LaTeX or Python spelling.
    """
    shapes = _checked_shapes(shapes)
    lets = [parse_let(t) for t in (let or [])]
    e = parse(expr, "expression")
    if (claim is None) == (not cases):
        raise ExprError("give either a claim or cases (a Jacobian given case by case)")
    claims = parse(claim, "claim") if claim is not None else None
    case_list = [parse_case(t) for t in (cases or [])]
    defined = set(shapes) | {name for name, _ in lets} | {"pi", "e"}
    if wrt not in shapes:
        raise ExprError(f"--wrt {wrt!r} has no shape; give --shape {wrt}=...")
    _check_names(e, lets, claims, case_list, defined)
    if not _depends_on(e, lets, wrt):
        raise ExprError(f"--wrt {wrt!r} is not in the expression {expr!r}")
    global _MP_TABLE
    if _MP_TABLE is None:
        _MP_TABLE = _mp_functions()
    return run_bounded(_gradient_check, (e, lets, claims, case_list, shapes, wrt, draws, seed, positive),
                       timeout, memory_mb, "the check")


def _checked_shapes(shapes):
    out = {}
    for k, v in (shapes or {}).items():
        try:
            dims = tuple(int(d) for d in v)
        except (TypeError, ValueError):
            raise ExprError(f"shape of {k!r}: expected a tuple of sizes, got {v!r}") from None
        if any(d < 1 for d in dims):
            raise ExprError(f"shape of {k!r}: sizes must be >= 1, got {dims}")
        n = int(np.prod(dims, dtype=np.float64)) if dims else 1
        if n > MAX_ELEMENTS:
            raise ExprError(f"shape of {k!r}: {dims} has {n:,} elements; the limit is {MAX_ELEMENTS:,} "
                            "per array (a derivative is checked as well on small shapes)")
        out[k] = dims
    return out


def _gradient_check(e, lets, claims, case_list, shapes, wrt, draws, seed, positive):
    rng = np.random.default_rng(seed)
    worst, precise = None, True
    for _ in range(draws):
        while True:
            env = _draw(rng, shapes, positive)
            try:
                truth, claimed, bad, mp_used = _compare_once(e, lets, claims, case_list, env, wrt)
                break
            except _NotFinite:
                if positive:
                    raise ExprError("the expression is not finite at the sample points, even for "
                                    "positive inputs (a division by zero?)") from None
                positive = True                # log or sqrt of a negative: draw positive inputs
        precise = precise and mp_used
        if bad.any():
            err = np.where(bad, np.abs(claimed - truth) / np.maximum(1e-300, np.abs(truth) + np.abs(claimed)), -1)
            idx = np.unravel_index(int(np.argmax(err)), err.shape)
            worst = {"inputs": {k: v for k, v in env.items() if k in shapes},
                     "index": tuple(int(i) for i in idx) if len(idx) > 1 else int(idx[0]),
                     "claimed": float(claimed[idx]), "true": float(truth[idx])}
            break
    how = (f"central differences in mpmath ({DPS[1]} digits, step 1e-20), tolerance 1e-12 relative "
           "plus the rounding bound" if precise else
           "central differences in float64, tolerance 1e-6 relative plus the rounding error of the values")
    method = f"numeric: {how}, on {draws} random draw(s)" + (" of positive inputs" if positive else "")
    if worst is None:
        return Verdict(True, method)
    return Verdict(False, method, worst, expected="(numerically) " + _fmt(truth))


class _NotFinite(Exception):
    pass


class _NoMp(Exception):
    pass


def _check_names(e, lets, claims, case_list, defined):
    known = set(defined)
    for name, le in lets:
        _unknown(le, known, f"let {name}")
        known.add(name)
    _unknown(e, known, "expression")
    if claims is not None:
        _unknown(claims, known, "claim")
    for cond, value in case_list:
        _unknown(cond, known | {"i", "j"}, "case condition")
        _unknown(value, known | {"i", "j"}, "case value")


def _unknown(expr, known, what):
    missing = expr.names - known
    if missing:
        name = sorted(missing)[0]
        raise ExprError(f"{what}: unknown name {name!r}; give its shape with --shape {name}=... "
                        f"or define it with --let")


def _depends_on(e, lets, wrt):
    names = set(e.names)
    for name, le in reversed(lets):
        if name in names:
            names |= le.names
    return wrt in names


def _draw(rng, shapes, positive):
    if positive:
        return {k: rng.uniform(0.2, 2.0, s) for k, s in shapes.items()}
    return {k: rng.standard_normal(s) for k, s in shapes.items()}


def _value(e, lets, env):
    env = dict(env)
    with np.errstate(all="ignore"):
        for name, le in lets:
            env[name] = np.asarray(le.evaluate(env), dtype=np.float64)
        out = np.asarray(e.evaluate(env), dtype=np.float64)
    return out, env


def _compare_once(e, lets, claims, case_list, env, wrt):
    """(truth, claimed, bad mask, whether mpmath decided) for one draw."""
    y, full_env = _value(e, lets, env)
    if not np.all(np.isfinite(y)):
        raise _NotFinite
    if y.ndim > 1:
        raise ExprError(f"the expression must be a scalar (for a gradient) or a vector (for a "
                        f"Jacobian); it has shape {y.shape}")
    x = env[wrt]
    if case_list:
        claimed = _cases(case_list, full_env, y.size, x.size).reshape(y.shape + x.shape)
    else:
        with np.errstate(all="ignore"):
            claimed = np.asarray(claims.evaluate(full_env), dtype=np.float64)
        want_shape = y.shape + x.shape
        if claimed.shape != want_shape:
            want = f"{wrt}'s shape {x.shape}" if y.ndim == 0 else f"the Jacobian's shape {want_shape}"
            raise ExprError(f"the claim has shape {claimed.shape}, expected {want}")
    if not np.all(np.isfinite(claimed)):
        raise ExprError("the claim is not finite at the sample points (a division by zero?)")
    small = x.size <= MP_WRT and sum(np.size(v) for v in env.values()) <= MP_ELEMENTS
    if small:
        try:
            truth, claimed_mp, bad = _mp_compare(e, lets, claims, case_list, env, wrt, y.shape)
            return truth, claimed_mp, bad, True
        except _NoMp:
            pass
    truth, tol = _float_truth(e, lets, env, wrt, y)
    bad = np.abs(claimed - truth) > tol
    return truth, claimed, bad, False


def _float_truth(e, lets, env, wrt, y):
    """Central differences in float64, with a tolerance of RTOL relative plus the rounding
    error of the function values (eps |f| / h): a large f makes a coarse derivative."""
    x = env[wrt]
    truth = np.empty(y.shape + x.shape)
    noise = np.empty_like(truth)
    eps = np.finfo(np.float64).eps
    for j in range(x.size):
        h = 1e-6 * max(1.0, abs(x.flat[j]))
        xp, xm = x.copy(), x.copy()
        xp.flat[j] += h
        xm.flat[j] -= h
        yp = _value(e, lets, {**env, wrt: xp})[0]
        ym = _value(e, lets, {**env, wrt: xm})[0]
        truth.reshape(y.size, x.size)[:, j] = np.ravel((yp - ym) / (2 * h))
        noise.reshape(y.size, x.size)[:, j] = np.ravel(8 * eps * (np.abs(yp) + np.abs(ym)) / (2 * h))
    if not np.all(np.isfinite(truth)):
        raise _NotFinite
    return truth, RTOL * np.maximum(1.0, np.abs(truth)) + noise


def _cases(case_list, env, n_out, n_in, precise=False):
    """The Jacobian given case by case, entry (i, j) from the first case whose condition
    holds; ``precise``: evaluated in mpmath (object entries)."""
    J = np.empty((n_out, n_in), dtype=object if precise else np.float64)
    for i in range(n_out):
        for j in range(n_in):
            local = {**env, "i": i, "j": j}
            run = (lambda e: _MpEval(local).visit(e.tree)) if precise else (lambda e: e.evaluate(local))
            for cond, value in case_list:
                if bool(run(cond)):
                    v = np.asarray(run(value), dtype=object if precise else np.float64)
                    J[i, j] = v.reshape(()).item() if precise else float(v)
                    break
            else:
                raise ExprError(f"no case covers i = {i}, j = {j}")
    return J


# -- high precision for arrays -------------------------------------------------------------------

def _mp_compare(e, lets, claims, case_list, env, wrt, yshape):
    """Central differences and the claim in mpmath at two precisions: an entry is wrong
    when it differs by more than 1e-12 relative plus ten times the rounding bound."""
    import mpmath
    results = {}
    for dps in DPS:
        with mpmath.workdps(dps):
            menv = {k: _to_mp(v) for k, v in env.items()}
            x = menv[wrt]
            h = mpmath.mpf(10) ** -20
            truth = np.empty(yshape + x.shape, dtype=object)
            flat = truth.reshape(int(np.prod(yshape, dtype=int)), x.size)
            for j in range(x.size):
                hj = h * max(1, abs(x.flat[j]))
                xp, xm = x.copy(), x.copy()
                xp.flat[j] = x.flat[j] + hj
                xm.flat[j] = x.flat[j] - hj
                yp = _mp_value(e, lets, {**menv, wrt: xp})[0]
                ym = _mp_value(e, lets, {**menv, wrt: xm})[0]
                flat[:, j] = np.ravel((yp - ym) / (2 * hj))
            _, full = _mp_value(e, lets, menv)
            if case_list:
                claimed = _cases(case_list, full, flat.shape[0], x.size, precise=True)
                claimed = claimed.reshape(truth.shape)
            else:
                claimed = np.asarray(_MpEval(full).visit(claims.tree), dtype=object)
                claimed = np.broadcast_to(claimed, truth.shape)
            results[dps] = (_real_array(truth), _real_array(claimed))
    (t_lo, c_lo), (t_hi, c_hi) = results[DPS[0]], results[DPS[1]]
    with mpmath.workdps(DPS[1]):
        err = np.abs(t_hi - t_lo) + np.abs(c_hi - c_lo)
        size = np.maximum(np.abs(t_hi), np.abs(c_hi))
        bad = np.abs(c_hi - t_hi) > SAMPLE_RTOL * size + 10 * err + mpmath.mpf(10) ** -40
    return (t_hi.astype(np.float64), c_hi.astype(np.float64), bad.astype(bool))


def _to_mp(v):
    import mpmath
    a = np.asarray(v)
    if a.dtype == object:
        return a
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(a.shape):
        out[idx] = mpmath.mpf(float(a[idx]))
    return out if a.ndim else out[()]


def _real_array(a):
    import mpmath
    a = np.asarray(a, dtype=object)
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(a.shape):
        v = a[idx]
        if isinstance(v, mpmath.mpc):
            if v.imag != 0:
                raise _NotFinite
            v = v.real
        v = mpmath.mpf(v)
        if not mpmath.isfinite(v):
            raise _NotFinite
        out[idx] = v
    return out


def _mp_value(e, lets, menv):
    env = dict(menv)
    for name, le in lets:
        env[name] = np.asarray(_MpEval(env).visit(le.tree), dtype=object)
    return np.asarray(_MpEval(env).visit(e.tree), dtype=object), env


def _mp_functions():
    import mpmath
    from .. import ops

    def elementwise(f):
        uf = np.frompyfunc(f, 1, 1)

        def g(v):
            try:
                out = uf(np.asarray(v, dtype=object))
            except (ZeroDivisionError, ValueError):
                raise _NotFinite from None
            return out if np.ndim(out) else out[()] if isinstance(out, np.ndarray) else out
        return g

    def softmax(o):
        o = np.asarray(o, dtype=object)
        z = elementwise(mpmath.exp)(o - np.max(o, axis=-1, keepdims=True))
        return z / np.sum(z, axis=-1, keepdims=True)

    def log_softmax(o):
        o = np.asarray(o, dtype=object)
        m = np.max(o, axis=-1, keepdims=True)
        s = np.sum(elementwise(mpmath.exp)(o - m), axis=-1, keepdims=True)
        return o - m - elementwise(mpmath.log)(s)

    table = {
        name: elementwise(getattr(mpmath, mname)) for name, mname in
        [("exp", "exp"), ("log", "log"), ("sqrt", "sqrt"), ("sin", "sin"), ("cos", "cos"), ("tan", "tan"),
         ("tanh", "tanh"), ("sinh", "sinh"), ("cosh", "cosh"), ("erf", "erf"), ("sign", "sign"),
         ("sech", "sech"), ("csch", "csch"), ("coth", "coth"), ("sec", "sec"), ("csc", "csc"),
         ("cot", "cot"), ("asin", "asin"), ("acos", "acos"), ("atan", "atan"), ("asinh", "asinh"),
         ("acosh", "acosh"), ("atanh", "atanh")]}
    table["abs"] = lambda v: np.abs(np.asarray(v, dtype=object))
    table["softmax"] = softmax
    table["log_softmax"] = log_softmax
    table["sum_normalize"] = lambda v: np.asarray(v, dtype=object) / np.sum(np.asarray(v, dtype=object),
                                                                             axis=-1, keepdims=True)
    import sympy as sp
    from .mpeval import compile_mp
    t = sp.Symbol("t", real=True)
    for name, op in ops.REGISTRY.items():
        if name in table or op.symbolic is None:
            continue
        try:
            fn = compile_mp(op.symbolic(t, sp, **op.params))
        except ExprError:
            continue
        table[name] = elementwise(lambda v, fn=fn: fn({t: v}))
    return table


_MP_TABLE = None


class _MpEval:
    """check.expr's evaluator on object arrays of mpmath numbers."""

    def __new__(cls, env):
        from .expr import NUMERIC, _Eval

        class Impl(_Eval):
            def visit_Constant(self, node):
                v = node.value
                digits = getattr(node, "digits", None)
                if isinstance(v, float):
                    import mpmath
                    return mpmath.mpf(digits) if digits and digits != "nan" else mpmath.mpf(v)
                return v

            def visit_Name(self, node):
                import mpmath
                if node.id not in self.env and node.id in ("pi", "e"):
                    return +mpmath.pi if node.id == "pi" else +mpmath.e
                return super().visit_Name(node)

            def visit_BinOp(self, node):
                try:
                    return super().visit_BinOp(node)
                except (ZeroDivisionError, OverflowError):
                    raise _NotFinite from None

            def visit_Call(self, node):
                global _MP_TABLE
                if _MP_TABLE is None:
                    _MP_TABLE = _mp_functions()
                name = node.func.id
                if name in ("summation", "product", "diff"):
                    return super().visit_Call(node)
                if name in _MP_TABLE:
                    args = [self.visit(a) for a in node.args]
                    if len(args) != 1:
                        raise _NoMp(name)
                    return _MP_TABLE[name](args[0])
                if name in ("sum", "mean", "max", "min", "dot", "outer", "diag", "transpose", "where",
                            "eye", "einsum", "stack", "pad", "flip", "dilate", "im2col", "col2im"):
                    return super().visit_Call(node)
                raise _NoMp(name)

        del NUMERIC
        return Impl(env)
