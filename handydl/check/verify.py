"""Check a derivative that a person wrote.

``verify_derivative("tanh(x)", "1 - tanh(x)**2")`` decides symbolically first
(SymPy simplifies claim - f' to 0), then confirms by sampling a wide range;
where SymPy cannot decide, sampling does, and the verdict says which method
decided.  Piecewise functions (relu, abs, max) are handled: a claim that
differs only where f is not differentiable is correct "except at" those points.

``verify_gradient("sum((X @ W)**2)", "W", "2 * X.T @ (X @ W)", {"X": (3, 4), "W": (4, 2)})``
checks an array claim numerically (central differences in float64, several
random draws), including chain-rule claims with an upstream array G and
Jacobians given case by case.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .expr import ExprError, parse

RTOL = 1e-6


@dataclass
class Verdict:
    """The answer: ``correct``, the ``method`` that decided, a ``counterexample``
    (inputs, claimed value, true value) when wrong, and the true derivative as
    text in ``expected`` where it is known."""
    correct: bool
    method: str
    counterexample: dict | None = None
    expected: str | None = None
    notes: list = field(default_factory=list)

    def __str__(self):
        lines = [("CORRECT" if self.correct else "WRONG") + f" (decided by {self.method})"]
        lines += self.notes
        if self.counterexample:
            ce = self.counterexample
            where = ", ".join(f"{k} = {_fmt(v)}" for k, v in ce["inputs"].items())
            at = f" at index {ce['index']}" if ce.get("index") is not None else ""
            lines.append(f"counterexample: {where}{at}: claimed {_fmt(ce['claimed'])}, "
                         f"true {_fmt(ce['true'])}")
        if self.expected and not self.correct:
            lines.append(f"the true derivative: {self.expected}")
        return "\n".join(lines)


def _fmt(v):
    if np.ndim(v) == 0:
        return f"{float(v):.6g}"
    return np.array2string(np.asarray(v), precision=4, suppress_small=True, max_line_width=100)


def _close(claimed, true):
    return np.abs(claimed - true) <= RTOL * np.maximum(1.0, np.abs(true))


# -- scalar claims -----------------------------------------------------------------------------

def verify_derivative(function, claim, var="x", lo=-10.0, hi=10.0, samples=400, seed=0):
    """Is ``claim`` the derivative of ``function`` with respect to ``var``?"""
    import sympy as sp

    if not re.fullmatch(r"[A-Za-z]\w*", var or ""):
        raise ExprError(f"variable {var!r} is not a valid name")
    f, c = parse(function, "function"), parse(claim, "claim")
    for e, what in ((f, "function"), (c, "claim")):
        unknown = e.names - {var, "pi", "e"}
        if unknown:
            raise ExprError(f"{what}: unknown name {sorted(unknown)[0]!r}; the variable is {var!r}")
    if var not in f.names:
        raise ExprError(f"the function does not depend on {var!r}")
    x = sp.Symbol(var, real=True)
    F, C = f.to_sympy({var: x}, sp), c.to_sympy({var: x}, sp)
    D = sp.diff(F, x)
    expected = _simplified(sp, D)
    proven = _symbolic_zero(sp, C - D)

    kinks = _kinks(sp, F, x, lo, hi, f, var)
    pts = _sample_points(lo, hi, samples, seed, kinks)
    with np.errstate(all="ignore"):
        fx = np.asarray(f.evaluate({var: pts}), dtype=np.float64) * np.ones_like(pts)
        pts = pts[np.isfinite(fx)]                         # inside the function's domain
        if pts.size == 0:
            raise ExprError(f"the function is not finite anywhere on [{lo}, {hi}]")
        true = _true_derivative(sp, D, x, f, var, pts)
        claimed = np.asarray(c.evaluate({var: pts}), dtype=np.float64) * np.ones_like(pts)
    ok = np.isfinite(true)
    pts, true, claimed = pts[ok], true[ok], claimed[ok]
    if not np.isfinite(claimed).any():
        raise ExprError(f"the claim is not finite at any sample point in [{lo:g}, {hi:g}] "
                        "(a division by zero?)")
    agree = _close(claimed, true)
    numeric = f"numeric sampling at {pts.size} points in [{lo:g}, {hi:g}]"
    notes = _kink_notes(kinks, f, c, var)
    if agree.all():
        method = (f"symbolic simplification (SymPy: claim - f' = 0), confirmed by {numeric}" if proven
                  else f"{numeric} (SymPy could not simplify claim - f' to 0)")
        return Verdict(True, method, None, expected, notes)
    # a clear disagreement (> 1%) near the origin is the easiest to check by hand
    rel = np.abs(claimed - true) / np.maximum(1.0, np.abs(true))
    clear = ~agree & (rel > 0.01)
    worst = int(np.argmin(np.where(clear, np.abs(pts), np.inf))) if clear.any() else int(np.argmax(rel))
    ce = {"inputs": {var: float(pts[worst])}, "claimed": float(claimed[worst]), "true": float(true[worst])}
    return Verdict(False, f"numeric sampling: the claim and f' differ at {int((~agree).sum())} of "
                          f"{pts.size} points in [{lo:g}, {hi:g}]", ce, expected)


def _simplified(sp, expr):
    """SymPy's derivative as text: as differentiated (1 - tanh(x)**2 reads better than
    cosh(x)**(-2)) unless simplification makes it much shorter."""
    try:
        simple = str(sp.simplify(expr))
    except Exception:                                      # pragma: no cover - SymPy internals
        simple = str(expr)
    raw = str(expr)
    return raw if len(raw) <= 2 * len(simple) else simple


def _symbolic_zero(sp, expr):
    try:
        return sp.simplify(expr) == 0
    except Exception:                                      # pragma: no cover
        return False


def _kinks(sp, F, x, lo, hi, f, var):
    """Points in [lo, hi] where f has no derivative: zeros of the arguments of
    Abs/Max/Min/Heaviside/sign and Piecewise boundaries where the one-sided
    derivatives differ."""
    candidates = set()

    def zeros(e):
        try:
            sol = sp.solveset(e, x, domain=sp.Interval(lo, hi))
        except Exception:                                  # pragma: no cover
            return
        if isinstance(sol, sp.FiniteSet):
            candidates.update(float(s) for s in sol)
    for node in sp.preorder_traversal(F):
        if isinstance(node, (sp.Abs, sp.Heaviside, sp.sign)):
            zeros(node.args[0])
        elif isinstance(node, (sp.Max, sp.Min)):
            a, *rest = node.args
            for b in rest:
                zeros(a - b)
        elif isinstance(node, sp.Piecewise):
            for _, cond in node.args:
                if isinstance(cond, sp.core.relational.Relational):
                    zeros(cond.lhs - cond.rhs)
    kinks = []
    h = 1e-7
    for k in sorted(candidates):
        with np.errstate(all="ignore"):
            vals = np.asarray(f.evaluate({var: np.array([k - h, k, k + h])}), dtype=np.float64)
        left, right = (vals[1] - vals[0]) / h, (vals[2] - vals[1]) / h
        if np.isfinite(left) and np.isfinite(right) and abs(left - right) > 1e-4 * max(1, abs(left)):
            kinks.append((k, left, right))
    return kinks


def _sample_points(lo, hi, n, seed, kinks):
    rng = np.random.default_rng(seed)
    pts = np.concatenate([np.linspace(lo, hi, n // 2) + 1.234567e-3, rng.uniform(lo, hi, n - n // 2),
                          [-1e-3, 1e-3, -0.5, 0.5]])
    for k, *_ in kinks:                                   # not at a kink: f' is undefined there
        pts = pts[np.abs(pts - k) > 1e-5]
    return pts


def _true_derivative(sp, D, x, f, var, pts):
    """f'(pts) from SymPy's derivative where it evaluates, else central differences."""
    try:
        g = sp.lambdify(x, D, modules=[{"Heaviside": lambda v: np.heaviside(v, 0.5),
                                        "DiracDelta": lambda v: np.zeros_like(v)}, "numpy"])
        true = np.asarray(g(pts), dtype=np.float64) * np.ones_like(pts)
    except Exception:
        true = np.full_like(pts, np.nan)
    bad = ~np.isfinite(true)
    if bad.any():
        h = 1e-6 * np.maximum(1, np.abs(pts[bad]))
        fp = np.asarray(f.evaluate({var: pts[bad] + h}), dtype=np.float64)
        fm = np.asarray(f.evaluate({var: pts[bad] - h}), dtype=np.float64)
        true[bad] = (fp - fm) / (2 * h)
    return true


def _kink_notes(kinks, f, c, var):
    notes = []
    for k, left, right in kinks:
        with np.errstate(all="ignore"):
            at = float(np.asarray(c.evaluate({var: np.array([k])}), dtype=np.float64).reshape(-1)[0])
        notes.append(f"correct except at {var} = {k:g}, where the function is not differentiable "
                     f"(left derivative {left:.4g}, right {right:.4g}; the claim gives {at:.4g} there)")
    return notes


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
    return parse(cond, "case condition"), parse(value, "case value")


def verify_gradient(expr, wrt, claim=None, shapes=None, let=None, cases=None, draws=3, seed=0,
                    positive=False):
    """Check ``claim`` = d(expr)/d(wrt) numerically on ``draws`` random draws in float64.

    ``expr`` is a scalar expression (the claim then has wrt's shape) or a
    vector one (the claim is its Jacobian, shape (out, in), or ``cases``: a
    list of "CONDITION: EXPRESSION" strings in the indices i (output) and j
    (input)).  ``shapes`` maps every array name to its shape; ``let`` is a list
    of "NAME = EXPRESSION" definitions evaluated in order.  Inputs are drawn
    from a standard normal, or uniformly in [0.2, 2] with ``positive=True`` (and
    automatically when the expression is not finite for the normal draws).
    """
    shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
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
    rng = np.random.default_rng(seed)
    worst = None
    for _ in range(draws):
        while True:
            env = _draw(rng, shapes, positive)
            try:
                truth, claimed = _compare_once(e, lets, claims, case_list, env, wrt)
                break
            except _NotFinite:
                if positive:
                    raise ExprError("the expression is not finite at the sample points, even for "
                                    "positive inputs (a division by zero?)") from None
                positive = True                # log or sqrt of a negative: draw positive inputs
        err = np.abs(claimed - truth) / RTOL / np.maximum(1.0, np.abs(truth))
        bad = err > 1
        if bad.any():
            idx = np.unravel_index(int(np.argmax(err)), err.shape)
            worst = {"inputs": {k: v for k, v in env.items() if k in shapes},
                     "index": tuple(int(i) for i in idx) if len(idx) > 1 else int(idx[0]),
                     "claimed": float(claimed[idx]), "true": float(truth[idx])}
            break
    method = (f"numeric: central differences in float64 on {draws} random draw(s)"
              + (" of positive inputs" if positive else ""))
    if worst is None:
        return Verdict(True, method)
    return Verdict(False, method, worst, expected="(numerically) " + _fmt(truth))


class _NotFinite(Exception):
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
    y, full_env = _value(e, lets, env)
    if not np.all(np.isfinite(y)):
        raise _NotFinite
    if y.ndim > 1:
        raise ExprError(f"the expression must be a scalar (for a gradient) or a vector (for a "
                        f"Jacobian); it has shape {y.shape}")
    x = env[wrt]
    truth = np.empty(y.shape + x.shape)
    for j in range(x.size):
        h = 1e-6 * max(1.0, abs(x.flat[j]))
        xp, xm = x.copy(), x.copy()
        xp.flat[j] += h
        xm.flat[j] -= h
        yp = _value(e, lets, {**env, wrt: xp})[0]
        ym = _value(e, lets, {**env, wrt: xm})[0]
        truth.reshape(y.size, x.size)[:, j] = np.ravel((yp - ym) / (2 * h))
    if not np.all(np.isfinite(truth)):
        raise _NotFinite
    if case_list:
        claimed = _cases(case_list, full_env, y.size, x.size).reshape(truth.shape)
    else:
        with np.errstate(all="ignore"):
            claimed = np.asarray(claims.evaluate(full_env), dtype=np.float64)
        if claimed.shape != truth.shape:
            want = f"{wrt}'s shape {x.shape}" if y.ndim == 0 else f"the Jacobian's shape {truth.shape}"
            raise ExprError(f"the claim has shape {claimed.shape}, expected {want}")
    if not np.all(np.isfinite(claimed)):
        raise ExprError("the claim is not finite at the sample points (a division by zero?)")
    return truth, claimed


def _cases(case_list, env, n_out, n_in):
    J = np.empty((n_out, n_in))
    for i in range(n_out):
        for j in range(n_in):
            local = {**env, "i": i, "j": j}
            for cond, value in case_list:
                if bool(cond.evaluate(local)):
                    J[i, j] = float(np.asarray(value.evaluate(local)))
                    break
            else:
                raise ExprError(f"no case covers i = {i}, j = {j}")
    return J
