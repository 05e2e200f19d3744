r"""Turning a document's trees (``docmath``) into SymPy: scalar steps and index notation.

Index notation is made concrete: at a size N every vector ``o`` is N symbols
``o_1 .. o_N``, an index letter is bound to a position, ``\sum_k`` is a sum of
N terms (``k \neq j`` drops one), ``\delta_{ij}`` is 0 or 1 and cases pick the
branch whose condition holds.  The document's definitions (``p_i = ...``,
``L = ...``, ``f(x) = ...``) are expanded where a name is used, except the
names kept opaque for a derivative taken with respect to them.  A vector
written without an index (``p - y``, ``\partial L/\partial o``) stands for its
component at the step's implicit index.
"""
from __future__ import annotations

from .docmath import MathError, TooLarge

MAX_EXPONENT = 1000  # 9^9^9 is refused before SymPy builds it (an integer power cannot be interrupted)
_NAMED_FUNCTIONS = {"sigma", "tanh", "sinh", "cosh", "exp", "log", "ln", "sin", "cos", "tan", "sech",
                    "coth", "sigmoid", "softplus", "relu"}
IMPLICIT = "ι"       # the index a vector written without one stands at
IMPLICIT2 = "κ"      # the second (column) implicit index of a Jacobian


def builtin(sp, name, args):
    """The value of a named function (None when the name is not a built-in)."""
    a = args
    table = {
        "exp": lambda: sp.exp(a[0]), "log": lambda: sp.log(a[0]), "ln": lambda: sp.log(a[0]),
        "log2": lambda: sp.log(a[0], 2),
        "sin": lambda: sp.sin(a[0]), "cos": lambda: sp.cos(a[0]), "tan": lambda: sp.tan(a[0]),
        "tanh": lambda: sp.tanh(a[0]), "sinh": lambda: sp.sinh(a[0]), "cosh": lambda: sp.cosh(a[0]),
        "coth": lambda: sp.coth(a[0]), "sech": lambda: 1 / sp.cosh(a[0]), "csch": lambda: 1 / sp.sinh(a[0]),
        "sec": lambda: 1 / sp.cos(a[0]), "csc": lambda: 1 / sp.sin(a[0]), "cot": lambda: sp.cot(a[0]),
        "sqrt": lambda: sp.sqrt(a[0]), "sigma": lambda: 1 / (1 + sp.exp(-a[0])),
        "sigmoid": lambda: 1 / (1 + sp.exp(-a[0])), "relu": lambda: sp.Max(0, a[0]),
        "sign": lambda: sp.sign(a[0]), "sgn": lambda: sp.sign(a[0]), "abs": lambda: sp.Abs(a[0]),
        "erf": lambda: sp.erf(a[0]), "softplus": lambda: sp.log(1 + sp.exp(a[0])),
        "arctan": lambda: sp.atan(a[0]), "atan": lambda: sp.atan(a[0]),
        "max": lambda: sp.Max(*a), "min": lambda: sp.Min(*a),
    }
    f = table.get(name)
    if f is None:
        return None
    if name not in ("max", "min") and len(a) != 1:
        raise MathError(f"{name} takes one argument, got {len(a)}")
    return f()


class SymEval:
    """One instance: size N (None for scalar steps), index letters bound to positions."""

    def __init__(self, ctx, sp, n=None, bound=None, opaque=frozenset(), local=None):
        self.ctx, self.sp, self.n = ctx, sp, n
        self.bound = dict(bound or {})
        self.opaque = set(opaque)
        self.local = dict(local or {})        # function parameters -> their values
        self._cache = {}

    def child(self, bound=None, opaque=None, local=None):
        return SymEval(self.ctx, self.sp, self.n, {**self.bound, **(bound or {})},
                       self.opaque if opaque is None else opaque, {**self.local, **(local or {})})

    # -- names ---------------------------------------------------------------------------
    def symbol(self, name, pos=()):
        key = name if not pos else f"{name}_{'_'.join(str(p + 1) for p in pos)}"
        return self.ctx.symbol(key, name, pos)

    def index(self, node):
        """The position (0-based) an index tree stands for."""
        if node[0] == "num":
            v = node[1]
            if v.denominator != 1:
                raise MathError(f"the index {v}")
            return int(v) - 1
        if node[0] == "sym" and not node[2]:
            if node[1] in self.bound:
                return self.bound[node[1]]
            raise MathError(f"the index {node[1]} is not bound (a free index in a scalar step?)")
        if node[0] == "add":
            return self._index_sum(node)
        if node[0] == "neg":
            raise MathError("a negative index")
        raise MathError("an index that is not a letter or a number")

    def _index_sum(self, node):
        total = 0
        for t in node[1]:
            if t[0] == "num":
                total += int(t[1])
            elif t[0] == "neg" and t[1][0] == "num":
                total -= int(t[1][1])
            else:
                total += self.index(t)
        return total

    def name(self, node):
        sp, ctx = self.sp, self.ctx
        name, idx = node[1], node[2]
        if not idx and name in self.local:
            return self.local[name]
        if name == "e" and not idx and "e" not in ctx.defs:
            return sp.E
        if name == "pi" and not idx and "pi" not in ctx.defs:
            return sp.pi
        if not idx and name in ctx.vector_names and self.n is not None:
            if IMPLICIT not in self.bound:
                raise MathError(f"the vector {name} where a number is expected")
            idx = (("sym", IMPLICIT, ()),)
        pos = tuple(self.index(i) for i in idx)
        if self.n is not None and any(not 0 <= p < self.n for p in pos):
            raise _OutOfRange()
        d = ctx.defs.get(name)
        if d is not None and name not in self.opaque and d.kind != "function":
            return self.definition(d, pos)
        if d is None and idx and self.n is None:
            raise MathError(f"the indexed {name}_{{...}} in a scalar step")
        return self.symbol(name, pos)

    def definition(self, d, pos):
        key = (d.name, pos)
        if key in self._cache:
            return self._cache[key]
        if len(d.indices) != len(pos):
            if not d.indices and pos and d.vector:            # y = x / sum(x): component pos
                v = self.child({IMPLICIT: pos[0]}).ev(d.body)
            else:
                raise MathError(f"{d.name} is defined with {len(d.indices)} indices, used with {len(pos)}")
        else:
            v = self.child(dict(zip(d.indices, pos))).ev(d.body)
        self._cache[key] = v
        return v

    # -- the tree --------------------------------------------------------------------------
    def ev(self, node):
        sp = self.sp
        kind = node[0]
        if kind == "num":
            return sp.Rational(node[1].numerator, node[1].denominator)
        if kind == "sym":
            return self.name(node)
        if kind == "add":
            return sp.Add(*[self.ev(t) for t in node[1]])
        if kind == "mul":
            return sp.Mul(*[self.ev(t) for t in node[1]])
        if kind == "odot":
            return self.ev(node[1]) * self.ev(node[2])
        if kind == "div":
            return self.ev(node[1]) / self.ev(node[2])
        if kind == "neg":
            return -self.ev(node[1])
        if kind == "pow":
            base, exp = node[1], node[2]
            e = self.ev(exp)
            if e.is_Number and abs(e) > MAX_EXPONENT:
                raise TooLarge(f"the exponent {e} is too large to check (more than {MAX_EXPONENT})")
            if base == ("sym", "e", ()) and "e" not in self.ctx.defs:
                return sp.exp(e)
            return self.ev(base) ** e
        if kind == "call":
            return self.call(node)
        if kind in ("sum", "prod"):
            return self.bigop(node)
        if kind == "delta":
            return sp.Integer(int(self.index(node[1]) == self.index(node[2])))
        if kind == "cases":
            return self.cases(node)
        if kind == "abs":
            return sp.Abs(self.ev(node[1]))
        if kind == "norm":
            return self.norm(node)
        if kind == "deriv":
            return self.deriv(node)
        if kind in ("T", "inv"):
            raise MathError("a transpose or an inverse in a scalar step")
        raise MathError(f"{kind} in a step")

    def call(self, node):
        sp, ctx = self.sp, self.ctx
        _, fname, args, order = node
        d = ctx.defs.get(fname)
        if args is None:
            args = (("sym", ctx.variable, ()),)
        vals = [self.ev(a) for a in args]
        if order == 0:
            return self.apply(fname, vals, d)
        t = sp.Dummy("t", real=True)
        body = self.apply(fname, [t], d)
        if len(vals) != 1:
            raise MathError(f"a prime on {fname} of {len(vals)} arguments")
        return sp.diff(body, t, order).subs(t, vals[0])

    def apply(self, fname, vals, d):
        sp = self.sp
        if d is not None and d.kind == "function":
            if len(d.params) != len(vals):
                raise MathError(f"{fname} takes {len(d.params)} arguments, got {len(vals)}")
            return self.child(local=dict(zip(d.params, vals))).ev(d.body)
        v = builtin(sp, fname, vals)
        if v is not None:
            return v
        if fname in self.ctx.unknown_functions or len(fname) == 1:
            return sp.Function(fname)(*vals)
        if fname in ("softmax", "diag", "tr"):
            raise MathError(f"{fname} in index notation (write its components)")
        raise MathError(f"the function {fname}")

    def condition(self, cond):
        _, op, a, b = cond
        try:
            x, y = self.index(a), self.index(b)
            return {"=": x == y, "!=": x != y, "<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]
        except MathError:
            pass
        x, y = self.ev(a), self.ev(b)
        sp = self.sp
        return {"=": sp.Eq, "!=": sp.Ne, "<": sp.Lt, ">": sp.Gt, "<=": sp.Le, ">=": sp.Ge}[op](x, y)

    def bigop(self, node):
        sp = self.sp
        kind, var, cond, body = node
        if self.n is None:
            raise MathError(f"a {kind} over {var} in a scalar step (no vector to run over)")
        terms = []
        for v in range(self.n):
            inner = self.child({var: v})
            if cond is not None and not inner.condition(cond):
                continue
            terms.append(inner.ev(body))
        return sp.Add(*terms) if kind == "sum" else sp.Mul(*terms)

    def cases(self, node):
        sp = self.sp
        pieces = []
        for value, cond in node[1]:
            if cond is None:
                pieces.append((value, True))
                continue
            c = self.condition(cond)
            if c is True:
                pieces.append((value, True))
                break
            if c is False:
                continue
            pieces.append((value, c))
        if not pieces:
            raise MathError("no case holds")
        if pieces[0][1] is True:
            return self.ev(pieces[0][0])
        return sp.Piecewise(*[(self.ev(v), c) for v, c in pieces])

    def norm(self, node):
        sp = self.sp
        inner, p = node[1], node[2]
        pv = sp.Integer(2) if p is None else self.ev(p)
        comps = self.components(inner)
        if pv == sp.oo:
            return sp.Max(*[sp.Abs(c) for c in comps])
        return sp.Add(*[sp.Abs(c) ** pv for c in comps]) ** (1 / pv)

    def components(self, node):
        """A vector-valued tree, component by component."""
        if self.n is None:
            raise MathError("a norm in a scalar step")
        out = []
        for v in range(self.n):
            out.append(self.child({IMPLICIT: v}).ev(node))
        return out

    def deriv(self, node):
        sp = self.sp
        _, f, wrt, _partial = node
        targets, opaque = [], set(self.opaque)
        for w in wrt:
            if w[0] != "sym":
                raise MathError("a derivative with respect to an expression")
            if w[1] in self.ctx.defs and self.ctx.defs[w[1]].kind != "function":
                opaque.add(w[1])
        inner = self.child(opaque=opaque)
        for w in wrt:
            wnode = w
            if not w[2] and w[1] in self.ctx.vector_names and self.n is not None:
                key = IMPLICIT2 if IMPLICIT2 in self.bound else IMPLICIT
                if key not in self.bound:
                    raise MathError(f"a derivative with respect to the vector {w[1]} in a scalar step")
                wnode = ("sym", w[1], (("sym", key, ()),))
            t = inner.name_opaque(wnode)
            if not isinstance(t, sp.Symbol):
                raise MathError(f"a derivative with respect to {w[1]}, which is not a variable")
            targets.append(t)
        if f[0] == "sym" and not f[2] and len(wrt) == 1 and f[1] not in self.ctx.vector_names and \
                f[1] not in self.ctx.defs and (f[1] in _NAMED_FUNCTIONS or f[1] in self.ctx.unknown_functions) \
                or f[0] == "sym" and not f[2] and self.ctx.defs.get(f[1]) is not None \
                and self.ctx.defs[f[1]].kind == "function":
            f = ("call", f[1], (wrt[0],), 0)          # dσ/dx, d tanh/dx, df/dx: of the variable
        numerator_undefined = f[0] == "sym" and f[1] not in self.ctx.defs and f[1] not in \
            self.ctx.vector_names and not f[2]
        if numerator_undefined and f[1] in self.ctx.upstream:
            value = inner.ev(self.ctx.upstream[f[1]])
        else:
            value = inner.ev(f)
        for t in targets:
            value = sp.diff(value, t)
        # put back the definitions of the names held opaque for this derivative
        for name in opaque - self.opaque:
            d = self.ctx.defs[name]
            full = self.child()
            subs = {}
            for s in value.free_symbols:
                base = self.ctx.base_of.get(s)
                if base == name:
                    pos = self.ctx.position_of[s]
                    subs[s] = full.definition(d, pos)
            value = value.xreplace(subs)
        return value

    def name_opaque(self, node):
        name, idx = node[1], node[2]
        pos = tuple(self.index(i) for i in idx)
        if self.n is not None and any(not 0 <= p < self.n for p in pos):
            raise _OutOfRange()
        if name in self.ctx.defs and name not in self.opaque:
            raise MathError(f"a derivative with respect to the defined {name}")
        return self.symbol(name, pos)


class _OutOfRange(Exception):
    """An index beyond the instance's size (p_{i+1} at i = N)."""
