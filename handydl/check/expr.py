"""A small, safe expression language for derivatives people write.

Expressions are parsed with Python's ``ast`` into a whitelist of operators
and names and are never passed to ``eval``: a call to anything but the
vocabulary, attribute access other than ``.T``, lambdas, comprehensions,
strings (except einsum's subscripts) and unknown names are rejected with a
message naming the offending token.

The same tree is evaluated numerically (NumPy, float64) or translated to
SymPy for scalar expressions.

Vocabulary: every op in the registry (``sigmoid(x)``, ``softmax(o)``,
``relu(x)``, ...), plus exp, log, sqrt, abs, sign, sin, cos, tan, tanh, sinh,
cosh, erf, sum, mean, max, min, dot, outer, diag, transpose, where, eye, einsum, and
``+ - * / ** @``, comparisons, ``a if cond else b``, indexing ``p[i]`` and ``.T``.
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


# name -> numeric implementation.  Registry ops are added below, by name.
NUMERIC = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "tanh": np.tanh, "sinh": np.sinh, "cosh": np.cosh, "sign": np.sign, "erf": erf,
    "sum": lambda x, axis=None: np.sum(x, axis=axis), "mean": lambda x, axis=None: np.mean(x, axis=axis),
    "max": lambda a, b=None: np.max(a) if b is None else np.maximum(a, b),
    "min": lambda a, b=None: np.min(a) if b is None else np.minimum(a, b),
    "dot": np.dot, "outer": np.outer, "diag": np.diag, "transpose": np.transpose,
    "where": np.where, "eye": lambda n: np.eye(int(n)), "einsum": np.einsum,
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


def parse(text, what="expression") -> Expr:
    """Parse and validate ``text``; ExprError names the first disallowed token."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError(f"empty {what}")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ExprError(f"cannot parse {what} {text!r}: {e.msg} at column {e.offset}") from None
    names = set()
    _validate(tree, names, what)
    return Expr(text, tree, names)


def _validate(node, names, what):
    """Walk the tree; anything outside the whitelist raises ExprError."""
    def bad(token, why=""):
        raise ExprError(f"{what}: {token} is not allowed{why}")

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
        _validate(node.left, names, what)
        _validate(node.right, names, what)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            bad(f"the operator {type(node.op).__name__}")
        _validate(node.operand, names, what)
    elif isinstance(node, ast.Compare):
        if any(type(op) not in _CMPOPS for op in node.ops):
            bad("that comparison")
        for n in [node.left, *node.comparators]:
            _validate(n, names, what)
    elif isinstance(node, ast.BoolOp):
        for n in node.values:
            _validate(n, names, what)
    elif isinstance(node, ast.IfExp):
        for n in (node.test, node.body, node.orelse):
            _validate(n, names, what)
    elif isinstance(node, ast.Attribute):
        if node.attr != "T":
            bad(f"the attribute '.{node.attr}'", " (only .T, the transpose)")
        _validate(node.value, names, what)
    elif isinstance(node, ast.Subscript):
        _validate(node.value, names, what)
        idx = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for i in idx:
            _validate(i, names, what)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            bad(f"calling {ast.unparse(node.func)!r}", " (only functions of the vocabulary)")
        if node.func.id not in NUMERIC:
            raise ExprError(f"{what}: unknown function {node.func.id!r}; known: {', '.join(VOCABULARY)}")
        if node.keywords:
            bad(f"the keyword argument {node.keywords[0].arg!r}")
        args = node.args
        if node.func.id == "einsum" and args and isinstance(args[0], ast.Constant) \
                and isinstance(args[0].value, str) and set(args[0].value) <= set("abcdefghijklmnopqrstuvwxyz,->"):
            args = args[1:]
        for a in args:
            _validate(a, names, what)
    elif isinstance(node, ast.Lambda):
        bad("lambda")
    else:
        bad(f"{type(node).__name__} ({ast.unparse(node)!r})")


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
        return -v if isinstance(node.op, ast.USub) else v

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
        args = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else self.visit(a)
                for a in node.args]
        try:
            return NUMERIC[name](*args)
        except (TypeError, ValueError) as e:
            raise ExprError(f"{name}{tuple(np.shape(a) for a in args)}: {e}") from None

    def generic_visit(self, node):                   # pragma: no cover - _validate ran first
        raise ExprError(f"{type(node).__name__} is not allowed")


class _Sym(ast.NodeVisitor):
    """Translation to SymPy for scalar expressions."""

    def __init__(self, symbols, sp):
        self.symbols, self.sp = symbols, sp
        self.functions = {
            "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "abs": sp.Abs, "sin": sp.sin,
            "cos": sp.cos, "tan": sp.tan, "tanh": sp.tanh, "sinh": sp.sinh, "cosh": sp.cosh,
            "sign": sp.sign, "erf": sp.erf,
            "max": sp.Max, "min": sp.Min,
        }

    def visit_Constant(self, node):
        v = node.value
        return self.sp.Integer(v) if isinstance(v, int) else self.sp.nsimplify(v, rational=True)

    def visit_Name(self, node):
        if node.id in self.symbols:
            return self.symbols[node.id]
        if node.id == "pi":
            return self.sp.pi
        if node.id == "e":
            return self.sp.E
        raise ExprError(f"unknown name {node.id!r}; the variable is {', '.join(self.symbols)}")

    def visit_BinOp(self, node):
        a, b = self.visit(node.left), self.visit(node.right)
        op = _BINOPS[type(node.op)]
        if op == "@":
            raise ExprError("'@' needs arrays; a scalar claim cannot use it")
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                "/": lambda: a / b, "**": lambda: a ** b}[op]()

    def visit_UnaryOp(self, node):
        v = self.visit(node.operand)
        return -v if isinstance(node.op, ast.USub) else v

    def visit_Compare(self, node):
        if len(node.ops) != 1:
            raise ExprError("chained comparisons are not supported in scalar expressions")
        a, b = self.visit(node.left), self.visit(node.comparators[0])
        return {"==": self.sp.Eq, "!=": self.sp.Ne, "<": self.sp.Lt, "<=": self.sp.Le,
                ">": self.sp.Gt, ">=": self.sp.Ge}[_CMPOPS[type(node.ops[0])]](a, b)

    def visit_IfExp(self, node):
        return self.sp.Piecewise((self.visit(node.body), self.visit(node.test)),
                                 (self.visit(node.orelse), True))

    def visit_Call(self, node):
        name = node.func.id
        args = [self.visit(a) for a in node.args]
        if name in self.functions:
            return self.functions[name](*args)
        if name == "where" and len(args) == 3:
            return self.sp.Piecewise((args[1], args[0]), (args[2], True))
        op = ops.REGISTRY.get(name)
        if op is not None and op.symbolic is not None and len(args) == 1:
            return op.symbolic(args[0], self.sp, **op.params)
        raise ExprError(f"{name}() has no scalar symbolic form")

    def generic_visit(self, node):
        raise ExprError(f"{type(node).__name__} ({ast.unparse(node)!r}) has no scalar symbolic form")
