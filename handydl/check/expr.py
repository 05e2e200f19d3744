"""A small, safe expression language for derivatives people write.

Expressions are read by ``check.mathparse`` (plain math as people type it,
``2x^2``, ``σ(x)(1-σ(x))``, or LaTeX, ``\\frac{1}{1+e^{-x}}``, as well as the
Python spelling ``x**2``, ``X.T @ G``) into a Python ``ast`` tree, which is
walked by a whitelist of operators and names and never passed to ``eval``: a
call to anything but the vocabulary, attribute access other than ``.T``,
strings (except einsum's subscripts) and unknown names are rejected with a
message naming the offending token.

The same tree is evaluated numerically (NumPy, float64) or translated to
SymPy for scalar expressions.

Vocabulary: every op in the registry (``sigmoid(x)``, ``softmax(o)``,
``relu(x)``, ...), plus exp, log, sqrt, abs, sign, sin, cos, tan, tanh, sinh,
cosh, erf, sum, mean, max, min, dot, outer, diag, transpose, where, eye, einsum, and
sech, csch, coth, sec, csc, cot, asin, acos, atan, asinh, acosh, atanh,
``+ - * / ** ^ @``, comparisons (a comparison inside arithmetic is 1 where it
holds, 0 elsewhere), ``a if cond else b``, cases, indexing ``p[i]`` (or
``p_i``), ``.T``, ``summation(body, k, lo, hi)`` / ``product(...)`` (from
``\\sum_{k=lo}^{hi}``; without bounds a sum runs over the whole axis its index
subscripts), and ``diff(f, x, n)`` (from ``\\frac{d}{dx}``, symbolic only).

For convolutions and pooling, on arrays (N, C, *spatial) (or kernels (O, C,
*spatial)) whose axes after the first two are spatial: ``im2col(x, k, s, d)``
(the windows, kernel offsets first), its transpose ``col2im(v, x, k, s, d)``,
``pad(x, p)``, ``flip(x)``, ``dilate(x, s)``; and ``stack(a, b, ...)``.  They
are plain NumPy on bounded sizes (``_MAX_ELEMENTS``), with small integer
parameters.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..ops.activations import erf


class ExprError(ValueError):
    """An expression that cannot be used; the message names the offending token."""


_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.MatMult: "@"}
_CMPOPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
CONSTANTS = {"pi": np.pi, "e": np.e}


def _np_max(x, axis=None):
    return np.max(x, axis=axis)


def _np_min(x, axis=None):
    return np.min(x, axis=axis)


# -- windows: the index maps of convolution and pooling ------------------------------------
#
# Arrays are (N, C, *spatial): every axis after the first two is spatial (a kernel
# (O, C, kh, kw) reads the same way).  All sizes are bounded: no function here
# makes an array of more than _MAX_ELEMENTS elements or takes a parameter beyond
# _MAX_PARAM, so an expression cannot ask for unbounded memory through them.

_MAX_ELEMENTS = 1 << 22
_MAX_PARAM = 64


def _param(v, name, who, lo):
    """A small integer parameter (an int, or a float with an integer value)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: {name} must be a number, got {v!r}") from None
    if np.ndim(v) != 0 or f != int(f) or not lo <= int(f) <= _MAX_PARAM:
        raise ValueError(f"{who}: {name}={v!r} must be an integer in [{lo}, {_MAX_PARAM}]")
    return int(f)


def _spatial(x, who):
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"{who}: expected an array (N, C, *spatial) of at least 3 dims, got shape {x.shape}")
    return x


def _bounded(shape, who):
    n = int(np.prod(shape, dtype=np.float64))
    if n > _MAX_ELEMENTS:
        raise ValueError(f"{who}: the result would have shape {tuple(shape)}, more than "
                         f"{_MAX_ELEMENTS} elements")
    return tuple(shape)


def _window_geometry(x, k, s, d, who):
    """(k, s, d, output sizes) of windows of size k, stride s, dilation d on x's spatial axes."""
    k, s, d = _param(k, "k", who, 1), _param(s, "s", who, 1), _param(d, "d", who, 1)
    out = []
    for n in x.shape[2:]:
        reach = d * (k - 1) + 1
        if reach > n:
            raise ValueError(f"{who}: a window of size {k} (dilation {d}: spans {reach}) does not fit "
                             f"in a spatial size {n} (shape {x.shape})")
        out.append((n - reach) // s + 1)
    return k, s, d, tuple(out)


def _taps(k, nd):
    return [tuple(int(i) for i in t) for t in np.ndindex(*(k,) * nd)]


def _tap_slice(tap, s, d, out):
    return (Ellipsis,) + tuple(slice(d * p, d * p + s * (o - 1) + 1, s) for p, o in zip(tap, out))


def _im2col(x, k, s=1, d=1):
    r"""The windows of x: V[p, q, ..., n, c, i, j] = x[n, c, s i + d p, s j + d q]
    (kernel offsets first, in scan order), shape (k,)*nd + (N, C) + out."""
    x = _spatial(x, "im2col")
    k, s, d, out = _window_geometry(x, k, s, d, "im2col")
    nd = x.ndim - 2
    shape = _bounded((k,) * nd + x.shape[:2] + out, "im2col")
    return np.stack([x[_tap_slice(t, s, d, out)] for t in _taps(k, nd)]).reshape(shape)


def _col2im(v, x, k, s=1, d=1):
    r"""The transpose of im2col at x's shape: every window entry v[p, q, ..., n, c, i, j]
    added back onto x's position (n, c, s i + d p, s j + d q); v broadcasts to
    im2col's shape (so col2im(G / 4, x, 2, 2, 1) spreads G / 4 over each window)."""
    x = _spatial(x, "col2im")
    k, s, d, out = _window_geometry(x, k, s, d, "col2im")
    nd = x.ndim - 2
    shape = _bounded((k,) * nd + x.shape[:2] + out, "col2im")
    try:
        v = np.broadcast_to(np.asarray(v), shape)
    except ValueError:
        raise ValueError(f"col2im: windows of shape {np.shape(v)} do not broadcast to im2col's "
                         f"shape {shape} (x of shape {x.shape}, k={k}, s={s}, d={d})") from None
    gx = np.zeros(x.shape, dtype=np.result_type(v.dtype, np.float64))
    for t in _taps(k, nd):
        gx[_tap_slice(t, s, d, out)] += v[t]
    return gx


def _pad(x, p):
    """x with p zeros on both sides of every spatial axis."""
    x = _spatial(x, "pad")
    p = _param(p, "p", "pad", 0)
    _bounded(x.shape[:2] + tuple(n + 2 * p for n in x.shape[2:]), "pad")
    return np.pad(x, [(0, 0), (0, 0)] + [(p, p)] * (x.ndim - 2))


def _flip(x):
    """x reversed along every spatial axis (a kernel flipped)."""
    x = _spatial(x, "flip")
    return np.flip(x, axis=tuple(range(2, x.ndim)))


def _dilate(x, s):
    """x with s - 1 zeros between neighbours along every spatial axis (a stride undone)."""
    x = _spatial(x, "dilate")
    s = _param(s, "s", "dilate", 1)
    shape = _bounded(x.shape[:2] + tuple((n - 1) * s + 1 for n in x.shape[2:]), "dilate")
    out = np.zeros(shape, dtype=np.result_type(x.dtype, np.float64))
    out[(Ellipsis,) + (slice(None, None, s),) * (x.ndim - 2)] = x
    return out


def _stack(*arrays):
    """np.stack of the arguments (broadcast to one shape) along a new first axis."""
    if not 1 <= len(arrays) <= _MAX_PARAM:
        raise ValueError(f"stack: expected 1 to {_MAX_PARAM} arrays, got {len(arrays)}")
    arrays = np.broadcast_arrays(*[np.asarray(a) for a in arrays])
    _bounded((len(arrays),) + arrays[0].shape, "stack")
    return np.stack(arrays)


# name -> numeric implementation.  Registry ops are added below, by name.
NUMERIC = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "tanh": np.tanh, "sinh": np.sinh, "cosh": np.cosh, "sign": np.sign, "erf": erf,
    "sum": lambda x, axis=None: np.sum(x, axis=axis), "mean": lambda x, axis=None: np.mean(x, axis=axis),
    "max": lambda a, b=None: np.max(a) if b is None else np.maximum(a, b),
    "min": lambda a, b=None: np.min(a) if b is None else np.minimum(a, b),
    "dot": np.dot, "outer": np.outer, "diag": np.diag, "transpose": np.transpose,
    "where": np.where, "eye": lambda n: np.eye(_param(n, "n", "eye", 1)), "einsum": np.einsum,
    "sech": lambda x: 1 / np.cosh(x), "csch": lambda x: 1 / np.sinh(x), "coth": lambda x: 1 / np.tanh(x),
    "sec": lambda x: 1 / np.cos(x), "csc": lambda x: 1 / np.sin(x), "cot": lambda x: 1 / np.tan(x),
    "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "asinh": np.arcsinh,
    "acosh": np.arccosh, "atanh": np.arctanh,
    # evaluated by _Eval itself (their first argument is read lazily)
    "summation": None, "product": None, "diff": None,
    "im2col": _im2col, "col2im": _col2im, "pad": _pad, "flip": _flip, "dilate": _dilate,
    "stack": _stack,
}
for _name, _op in ops.REGISTRY.items():      # every registered op, with its defaults
    NUMERIC.setdefault(_name, _op)
VOCABULARY = sorted(NUMERIC)


@dataclass
class Expr:
    """A parsed, validated expression."""
    text: str
    tree: ast.AST
    names: set

    def evaluate(self, env):
        return _Eval(env).visit(self.tree)

    def to_sympy(self, symbols, sp):
        return _Sym(symbols, sp).visit(self.tree)

    def __str__(self):
        return self.text


def parse(text, what="expression") -> Expr:
    """Parse (plain math, LaTeX or Python spelling) and validate ``text``;
    ExprError names the first disallowed token and suggests a fix."""
    from .mathparse import parse_tree
    if not isinstance(text, str) or not text.strip():
        raise ExprError(f"empty {what}")
    tree = parse_tree(text, what)
    names = set()
    _validate(tree, names, what)
    return Expr(text, tree, names)


_LAZY = {"summation", "product", "diff"}


def _validate(node, names, what, undefined=False):
    """Walk the tree; anything outside the whitelist raises ExprError.  ``undefined``
    lets one-letter undefined functions through (f(x) in f'(x), SymPy only)."""
    def bad(token, why=""):
        raise ExprError(f"{what}: {token} is not allowed{why}")

    def walk(n):
        _validate(n, names, what, undefined)

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            bad(f"the constant {node.value!r}", " (numbers only)")
    elif isinstance(node, ast.Name):
        if node.id.startswith("_"):
            bad(f"the name {node.id!r}")
        names.add(node.id)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            bad(f"the operator {type(node.op).__name__}")
        walk(node.left)
        walk(node.right)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
            bad(f"the operator {type(node.op).__name__}")
        walk(node.operand)
    elif isinstance(node, ast.Compare):
        if any(type(op) not in _CMPOPS for op in node.ops):
            bad("that comparison")
        for n in [node.left, *node.comparators]:
            walk(n)
    elif isinstance(node, ast.BoolOp):
        for n in node.values:
            walk(n)
    elif isinstance(node, ast.IfExp):
        for n in (node.test, node.body, node.orelse):
            walk(n)
    elif isinstance(node, ast.Attribute):
        if node.attr != "T":
            bad(f"the attribute '.{node.attr}'", " (only .T, the transpose)")
        walk(node.value)
    elif isinstance(node, ast.Subscript):
        walk(node.value)
        idx = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for i in idx:
            walk(i)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            bad(f"calling {ast.unparse(node.func)!r}", " (only functions of the vocabulary)")
        name = node.func.id
        if name not in NUMERIC and not (undefined and len(name) == 1):
            raise ExprError(f"{what}: unknown function {name!r}; known: {', '.join(VOCABULARY)}")
        if node.keywords:
            bad(f"the keyword argument {node.keywords[0].arg!r}")
        args = node.args
        if name in _LAZY:
            _validate_lazy(node, names, what, undefined)
            return
        if name == "einsum" and args and isinstance(args[0], ast.Constant) \
                and isinstance(args[0].value, str) and set(args[0].value) <= set("abcdefghijklmnopqrstuvwxyz,->"):
            args = args[1:]
        for a in args:
            walk(a)
    elif isinstance(node, ast.Lambda):
        bad("lambda")
    else:
        bad(f"{type(node).__name__} ({ast.unparse(node)!r})")


def _validate_lazy(node, names, what, undefined):
    """summation(body, k[, lo, hi]), product(...), diff(f, x, order): the index k is bound."""
    name, args = node.func.id, node.args
    if name == "diff":
        if len(args) != 3 or not isinstance(args[1], (ast.Name, ast.Subscript)) \
                or not isinstance(args[2], ast.Constant) or not isinstance(args[2].value, int):
            raise ExprError(f"{what}: diff(f, x, order) expects a variable and an integer order")
        for a in args[:2]:
            _validate(a, names, what, undefined)
        return
    if len(args) not in (2, 4) or not isinstance(args[1], ast.Name):
        raise ExprError(f"{what}: {name}(body, k, lo, hi) expects an index name k")
    inner = set()
    _validate(args[0], inner, what, undefined)
    names |= inner - {args[1].id}
    for a in args[2:]:
        _validate(a, names, what, undefined)


_MAX_RANGE = 10_000


def _axis_length(body, var, env):
    """The length of the axis that index ``var`` subscripts in ``body`` (p[i] -> len(p))."""
    for node in ast.walk(body):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in env:
            idx = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            for axis, i in enumerate(idx):
                if isinstance(i, ast.Name) and i.id == var:
                    shape = np.shape(env[node.value.id])
                    if axis < len(shape):
                        return shape[axis]
    raise ExprError(f"a sum over {var!r} without bounds needs an array subscripted by {var!r} "
                    f"(write the bounds: \\sum_{{{var}=0}}^{{N-1}})")


class _Eval(ast.NodeVisitor):
    """Numeric evaluation with NumPy, names looked up in ``env``."""

    def __init__(self, env):
        self.env = env

    def visit_Constant(self, node):
        return node.value

    def visit_Name(self, node):
        if node.id in self.env:
            return self.env[node.id]
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise ExprError(f"unknown name {node.id!r}")

    def visit_BinOp(self, node):
        a, b = self.visit(node.left), self.visit(node.right)
        op = _BINOPS[type(node.op)]
        if op == "@" and (np.ndim(a) == 0 or np.ndim(b) == 0):
            raise ExprError(f"'@' needs arrays, got a scalar in {ast.unparse(node)!r}")
        try:
            return {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide,
                    "**": np.power, "@": np.matmul}[op](a, b)
        except ValueError as e:
            raise ExprError(f"shapes {np.shape(a)} and {np.shape(b)} do not fit in "
                            f"{ast.unparse(node)!r} ({e})") from None

    def visit_UnaryOp(self, node):
        v = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return np.logical_not(v)
        return -v if isinstance(node.op, ast.USub) else v

    def _big(self, node, combine):
        """summation/product over an index: given bounds (inclusive), or the whole
        axis that the index subscripts."""
        body, var = node.args[0], node.args[1].id
        if len(node.args) == 4:
            lo, hi = (self.visit(a) for a in node.args[2:])
            if np.ndim(lo) or np.ndim(hi) or lo != int(lo) or hi != int(hi):
                raise ExprError(f"the bounds of {ast.unparse(node)!r} must be integers")
            lo, hi = int(lo), int(hi)
        else:
            lo, hi = 0, _axis_length(body, var, self.env) - 1
        if hi - lo + 1 > _MAX_RANGE:
            raise ExprError(f"{ast.unparse(node)!r}: {hi - lo + 1} terms; the limit is {_MAX_RANGE}")
        out = 0.0 if combine is np.add else 1.0
        saved = self.env
        try:
            for k in range(lo, hi + 1):
                self.env = {**saved, var: k}
                out = combine(out, self.visit(body))
        finally:
            self.env = saved
        return out

    def visit_Compare(self, node):
        left, result = self.visit(node.left), True
        for op, right_node in zip(node.ops, node.comparators):
            right = self.visit(right_node)
            cmp = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
                   ">": np.greater, ">=": np.greater_equal}[_CMPOPS[type(op)]]
            result = np.logical_and(result, cmp(left, right))
            left = right
        return result

    def visit_BoolOp(self, node):
        values = [self.visit(v) for v in node.values]
        f = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        out = values[0]
        for v in values[1:]:
            out = f(out, v)
        return out

    def visit_IfExp(self, node):
        return np.where(self.visit(node.test), self.visit(node.body), self.visit(node.orelse))

    def visit_Attribute(self, node):
        return np.transpose(self.visit(node.value))

    def visit_Subscript(self, node):
        v = self.visit(node.value)
        idx = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        key = tuple(int(self.visit(i)) for i in idx)
        try:
            return v[key]
        except IndexError:
            raise ExprError(f"index {key} out of range in {ast.unparse(node)!r} "
                            f"(shape {np.shape(v)})") from None

    def visit_Call(self, node):
        name = node.func.id
        if name in ("summation", "product"):
            return self._big(node, np.add if name == "summation" else np.multiply)
        if name == "diff":
            raise ExprError(f"{ast.unparse(node)!r}: a derivative inside an expression is not "
                            "evaluated numerically; give it as the left side of a claim")
        args = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else self.visit(a)
                for a in node.args]
        try:
            return NUMERIC[name](*args)
        except (TypeError, ValueError) as e:
            raise ExprError(f"{name}{tuple(np.shape(a) for a in args)}: {e}") from None

    def generic_visit(self, node):                   # pragma: no cover - _validate ran first
        raise ExprError(f"{type(node).__name__} is not allowed")


def to_sympy_tree(tree, symbols, sp, free=False):
    """A validated tree -> SymPy.  ``symbols`` maps names to SymPy symbols; with
    ``free``, any other name becomes a real Symbol (p_i an Indexed, f(x) an
    undefined Function), else an unknown name raises ExprError."""
    return _Sym(symbols, sp, free).visit(tree)


class _Sym(ast.NodeVisitor):
    """Translation to SymPy for scalar expressions, node by node (never sympify)."""

    def __init__(self, symbols, sp, free=False):
        self.symbols, self.sp, self.free = dict(symbols), sp, free
        self.functions = {
            "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "abs": sp.Abs, "sin": sp.sin,
            "cos": sp.cos, "tan": sp.tan, "tanh": sp.tanh, "sinh": sp.sinh, "cosh": sp.cosh,
            "sign": sp.sign, "erf": sp.erf, "sech": sp.sech, "csch": sp.csch, "coth": sp.coth,
            "sec": sp.sec, "csc": sp.csc, "cot": sp.cot, "asin": sp.asin, "acos": sp.acos,
            "atan": sp.atan, "asinh": sp.asinh, "acosh": sp.acosh, "atanh": sp.atanh,
            "max": sp.Max, "min": sp.Min,
        }

    def visit_Constant(self, node):
        v = node.value
        digits = getattr(node, "digits", None)
        if digits == "nan" or (isinstance(v, float) and v != v):
            return self.sp.nan
        if isinstance(v, int):
            return self.sp.Integer(v)
        if digits is not None:                       # the decimal as typed, exactly
            return self.sp.Rational(digits)
        return self.sp.nsimplify(v, rational=True)

    def visit_Name(self, node):
        if node.id in self.symbols:
            return self.symbols[node.id]
        if node.id == "pi":
            return self.sp.pi
        if node.id == "e":
            return self.sp.E
        if self.free:
            self.symbols[node.id] = self.sp.Symbol(node.id, real=True)
            return self.symbols[node.id]
        raise ExprError(f"unknown name {node.id!r}; the variable is {', '.join(self.symbols)}")

    def number(self, node):
        """A value for arithmetic: a condition there is 1 where it holds, 0 elsewhere."""
        v = self.visit(node)
        if isinstance(v, (self.sp.core.relational.Relational, self.sp.logic.boolalg.BooleanFunction,
                          self.sp.logic.boolalg.BooleanAtom)):
            return self.sp.Piecewise((1, v), (0, True))
        return v

    def visit_BinOp(self, node):
        a, b = self.number(node.left), self.number(node.right)
        op = _BINOPS[type(node.op)]
        if op == "@":
            raise ExprError("'@' needs arrays; a scalar claim cannot use it")
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                "/": lambda: a / b, "**": lambda: a ** b}[op]()

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            return self.sp.Not(self.visit(node.operand))
        v = self.number(node.operand)
        return -v if isinstance(node.op, ast.USub) else v

    def visit_Compare(self, node):
        rel = {"==": self.sp.Eq, "!=": self.sp.Ne, "<": self.sp.Lt, "<=": self.sp.Le,
               ">": self.sp.Gt, ">=": self.sp.Ge}
        terms = [self.number(node.left)] + [self.number(c) for c in node.comparators]
        parts = [rel[_CMPOPS[type(op)]](a, b) for op, a, b in zip(node.ops, terms, terms[1:])]
        return parts[0] if len(parts) == 1 else self.sp.And(*parts)

    def visit_BoolOp(self, node):
        f = self.sp.And if isinstance(node.op, ast.And) else self.sp.Or
        return f(*[self.visit(v) for v in node.values])

    def visit_IfExp(self, node):
        return self.sp.Piecewise((self.number(node.body), self.visit(node.test)),
                                 (self.number(node.orelse), True))

    def visit_Subscript(self, node):
        if not isinstance(node.value, ast.Name):
            raise ExprError(f"{ast.unparse(node)!r} has no scalar symbolic form")
        idx = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if node.value.id in self.symbols and not isinstance(self.symbols[node.value.id], self.sp.IndexedBase):
            raise ExprError(f"{ast.unparse(node)!r}: {node.value.id!r} is a scalar, it has no index")
        base = self.symbols.setdefault(node.value.id, self.sp.IndexedBase(node.value.id, real=True)) \
            if self.free else None
        if base is None:
            raise ExprError(f"{ast.unparse(node)!r}: indexing has no scalar symbolic form")
        return base[tuple(self.visit(i) for i in idx)]

    def visit_Call(self, node):
        name = node.func.id
        if name in ("summation", "product"):
            return self._big(node, self.sp.Sum if name == "summation" else self.sp.Product)
        if name == "diff":
            f, var = self.visit(node.args[0]), self.visit(node.args[1])
            return self.sp.Derivative(f, (var, node.args[2].value))
        args = [self.number(a) for a in node.args]
        if name in self.functions:
            return self.functions[name](*args)
        if name == "where" and len(args) == 3:
            return self.sp.Piecewise((args[1], self.visit(node.args[0])), (args[2], True))
        op = ops.REGISTRY.get(name)
        if op is not None and op.symbolic is not None and len(args) == 1:
            return op.symbolic(args[0], self.sp, **op.params)
        if self.free and len(name) == 1 and name not in NUMERIC:
            return self.sp.Function(name)(*args)
        raise ExprError(f"{name}() has no scalar symbolic form")

    def _big(self, node, kind):
        var = node.args[1].id
        saved = self.symbols.get(var)
        k = self.sp.Symbol(var, integer=True)
        self.symbols[var] = k
        try:
            body = self.number(node.args[0])
        finally:
            if saved is None:
                self.symbols.pop(var)
            else:
                self.symbols[var] = saved
        if len(node.args) != 4:
            raise ExprError(f"{ast.unparse(node)!r}: a sum without bounds has no scalar symbolic form; "
                            "write its bounds, \\sum_{k=1}^{N}")
        lo, hi = self.number(node.args[2]), self.number(node.args[3])
        return kind(body, (k, lo, hi))

    def generic_visit(self, node):
        raise ExprError(f"{type(node).__name__} ({ast.unparse(node)!r}) has no scalar symbolic form")
