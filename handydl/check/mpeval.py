"""Evaluate SymPy expressions with mpmath at any precision, node by node.

``compile_mp(expr)`` turns a SymPy tree into nested Python closures over
mpmath functions (no ``lambdify``, no generated source, no ``eval``): the
tree is walked once, each node type from a fixed table.  A value outside the
real domain (``log(-1)``, ``sqrt(-1)``, ``1/0``) raises ``Undefined``.
"""
from __future__ import annotations

import mpmath

from .expr import ExprError


class Undefined(ArithmeticError):
    """The expression has no real value at this point."""


_MAX_TERMS = 10_000


def _real(v):
    if isinstance(v, mpmath.mpc):
        if v.imag != 0:
            raise Undefined
        v = v.real
    if not mpmath.isfinite(v):
        raise Undefined
    return v


def _safe(f):
    def g(*a):
        try:
            return _real(f(*a))
        except (ZeroDivisionError, ValueError, OverflowError):
            raise Undefined from None
    return g


def _heaviside(v, h0=None):
    if v > 0:
        return mpmath.mpf(1)
    if v < 0:
        return mpmath.mpf(0)
    return mpmath.mpf(0.5) if h0 is None else h0


def _dirac(v):
    if v == 0:
        raise Undefined
    return mpmath.mpf(0)


_FUNCS = {
    "exp": mpmath.exp, "log": mpmath.log, "sin": mpmath.sin, "cos": mpmath.cos, "tan": mpmath.tan,
    "cot": mpmath.cot, "sec": mpmath.sec, "csc": mpmath.csc, "sinh": mpmath.sinh, "cosh": mpmath.cosh,
    "tanh": mpmath.tanh, "coth": mpmath.coth, "sech": mpmath.sech, "csch": mpmath.csch,
    "asin": mpmath.asin, "acos": mpmath.acos, "atan": mpmath.atan, "asinh": mpmath.asinh,
    "acosh": mpmath.acosh, "atanh": mpmath.atanh, "erf": mpmath.erf, "erfc": mpmath.erfc,
    "Abs": abs, "sign": mpmath.sign, "DiracDelta": _dirac, "LambertW": mpmath.lambertw,
}


_CACHE = object()          # env key of the per-evaluation values of shared subexpressions


def compile_mp(expr, sp=None):
    """A function env -> mpmath value (env maps SymPy symbols to mpf).  A subexpression
    that occurs many times (the chain rule repeats inner functions) is computed once
    per evaluation."""
    import sympy as sp
    root = _compile(expr, sp, {})
    return lambda env: root({**env, _CACHE: {}})


def _compile(e, sp, memo):
    if e in memo:
        return memo[e]
    fn = _node(e, sp, memo)
    if not e.is_Atom:
        key = len(memo)

        def cached(env, fn=fn, key=key):
            cache = env[_CACHE]
            if key not in cache:
                cache[key] = fn(env)
            return cache[key]
        memo[e] = cached
        return cached
    memo[e] = fn
    return fn


def _node(e, sp, memo):
    if e.is_Integer:
        n = int(e)
        return lambda env: mpmath.mpf(n)
    if e.is_Rational:
        p, q = int(e.p), int(e.q)
        return lambda env: mpmath.mpf(p) / q
    if e.is_Float:
        text = str(e)                       # the decimal SymPy shows (15 digits for a float)
        return lambda env: mpmath.mpf(text)
    if e is sp.pi:
        return lambda env: +mpmath.pi
    if e is sp.E:
        return lambda env: +mpmath.e
    if e is sp.S.EulerGamma:
        return lambda env: +mpmath.euler
    if e in (sp.nan, sp.zoo, sp.oo, -sp.oo):
        def undefined(env):
            raise Undefined
        return undefined
    if e is sp.true or e is sp.false:
        v = bool(e)
        return lambda env: v
    if e.is_Symbol:
        def symbol(env, e=e):
            try:
                return env[e]
            except KeyError:
                raise ExprError(f"no value for {e}") from None
        return symbol
    args = [_compile(a, sp, memo) for a in e.args] if not isinstance(e, (sp.Piecewise, sp.Sum, sp.Product)) else None
    if e.is_Add:
        def add(env):
            out = args[0](env)
            for a in args[1:]:
                out += a(env)
            return _real(out)
        return add
    if e.is_Mul:
        def mul(env):
            out = mpmath.mpf(1)
            for a in args:
                out *= a(env)
            return _real(out)
        return mul
    if e.is_Pow:
        base, expo = args
        return _safe(lambda env: mpmath.power(base(env), expo(env)))
    if isinstance(e, sp.Piecewise):
        pieces = [(_compile(v, sp, memo), _compile(c, sp, memo)) for v, c in e.args]

        def piecewise(env):
            for v, c in pieces:
                if c(env):
                    return v(env)
            raise Undefined
        return piecewise
    if isinstance(e, sp.Heaviside):
        h0 = _compile(e.args[1], sp, memo) if len(e.args) > 1 else None
        return lambda env: _heaviside(args[0](env), h0(env) if h0 else None)
    if isinstance(e, (sp.Max, sp.Min)):
        pick = max if isinstance(e, sp.Max) else min
        return lambda env: pick(a(env) for a in args)
    if isinstance(e, sp.core.relational.Relational):
        a, b = args
        op = {"<": lambda u, v: u < v, "<=": lambda u, v: u <= v, ">": lambda u, v: u > v,
              ">=": lambda u, v: u >= v, "==": lambda u, v: u == v, "!=": lambda u, v: u != v}[e.rel_op]
        return lambda env: op(a(env), b(env))
    if isinstance(e, sp.And):
        return lambda env: all(a(env) for a in args)
    if isinstance(e, sp.Or):
        return lambda env: any(a(env) for a in args)
    if isinstance(e, sp.Not):
        return lambda env: not args[0](env)
    if isinstance(e, (sp.Sum, sp.Product)):
        return _big(e, sp)
    if isinstance(e, sp.KroneckerDelta):
        return lambda env: mpmath.mpf(1 if args[0](env) == args[1](env) else 0)
    name = type(e).__name__
    if name in _FUNCS and isinstance(e, sp.Function):
        f = _safe(_FUNCS[name])
        if len(args) == 1:
            a0 = args[0]
            return lambda env: f(a0(env))
        return lambda env: f(*(a(env) for a in args))
    raise ExprError(f"{name} ({e}) cannot be evaluated numerically")


def _big(e, sp):
    body = compile_mp(e.function)          # its own cache: the index changes per term
    (k, lo, hi), = e.limits if len(e.limits) == 1 else (None,)
    if k is None:
        raise ExprError(f"{e}: only one index per sum")
    lo_f, hi_f = compile_mp(lo), compile_mp(hi)
    is_sum = isinstance(e, sp.Sum)

    def big(env):
        a, b = lo_f(env), hi_f(env)
        if a != int(a) or b != int(b):
            raise ExprError(f"the bounds of {e} must be integers")
        a, b = int(a), int(b)
        if b - a + 1 > _MAX_TERMS:
            raise ExprError(f"{e} has {b - a + 1} terms at this point; the limit is {_MAX_TERMS}")
        out = mpmath.mpf(0 if is_sum else 1)
        local = {s: v for s, v in env.items() if s is not _CACHE}
        for n in range(a, b + 1):
            local[k] = mpmath.mpf(n)
            v = body(local)
            out = out + v if is_sum else out * v
        return _real(out)
    return big
