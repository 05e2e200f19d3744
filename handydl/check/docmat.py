r"""Matrix steps of a document, checked numerically at random consistent shapes.

Shapes come from the document (``x \in \mathbb{R}^{k \times m}``) and, for the
rest, from the step itself: every product ties an inner dimension, every sum
ties both, a transpose swaps them (a union-find over dimensions).  A vector's
free dimension is 1 (a row or a column, as its products require); every other
dimension gets its own size, so that a transposition cannot pass by accident.
Each side is evaluated with NumPy in float64; a derivative is taken by central
differences (``\partial L/\partial W`` with respect to every entry of W; an
undefined loss L is the linear function ``sum(G * y)`` of the output it is
differentiated through, so that ``\partial L/\partial y = G`` is any matrix).
Both Jacobian layouts are computed: denominator (∂L/∂W has W's shape, ∂y/∂x is
(len x, len y)) and numerator (the transposes).
"""
from __future__ import annotations

import numpy as np

from .docmath import MathError, walk

_ELEMENTWISE = {"exp": np.exp, "log": np.log, "ln": np.log, "tanh": np.tanh, "sin": np.sin,
                "cos": np.cos, "sqrt": np.sqrt, "abs": np.abs, "sinh": np.sinh, "cosh": np.cosh,
                "sigma": lambda v: 1 / (1 + np.exp(-v)), "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
                "relu": lambda v: np.maximum(v, 0), "sign": np.sign}
GREEK_SCALARS = {"alpha", "beta", "gamma", "lambda", "eta", "mu", "epsilon", "tau", "theta", "rho"}


class _UF:
    def __init__(self):
        self.parent = {}
        self.size = {}
        self.free = {}           # vector dims that become 1 unless tied
        self.named = set()       # dims named by the document or by index notation (n, N, ℓ)
        self.width = set()       # the width of a vector known to be one (x ∈ R^n, p_i = ...): 1

    def new(self, size=None, free=False, width=False):
        k = len(self.parent)
        self.parent[k] = k
        if size is not None:
            self.size[k] = size
        self.free[k] = free or width
        if width:
            self.width.add(k)
        return k

    def find(self, k):
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        sa, sb = self.size.get(a), self.size.get(b)
        if sa is not None and sb is not None and sa != sb:
            raise MathError(f"the shapes do not fit ({sa} against {sb})")
        for x, y in ((a, b), (b, a)):        # a vector's width 1 against a length: pᵀp for ppᵀ
            if x in self.width and (y in self.named or (self.size.get(y) or 1) > 1):
                raise MathError("the shapes do not fit (a vector's width against a length)")
        if a in self.named or b in self.named:
            self.named.add(a)
        if a in self.width or b in self.width:
            self.width.add(a)
        self.parent[b] = a
        if sa is None and sb is not None:
            self.size[a] = sb
        self.free[a] = self.free[a] and self.free[b]


class _Shapes:
    """Shape inference for one step."""

    def __init__(self, checker, layout="denominator"):
        self.ck = checker
        self.layout = layout
        self.ctx = checker.ctx
        self.uf = _UF()
        self.names = {}
        self.dimnames = {}

    def is_scalar(self, node, seen=()):
        ctx = self.ctx
        k = node[0]
        if k == "num":
            return True
        if k == "sym":
            name = node[1]
            if node[2]:
                return True                              # an entry
            if name in ctx.shapes:
                return all(d == "1" for d in ctx.shapes[name])
            if name in ctx.defs and ctx.defs[name].indices:
                return False                             # p_i = ...: a vector
            if name in ctx.defs and ctx.defs[name].body is not None and name not in seen:
                return self.is_scalar(ctx.defs[name].body, seen + (name,))
            if name in GREEK_SCALARS or name in ctx.scalar_names or name in ("e", "pi"):
                return True
            return False
        if k in ("add", "mul"):
            return all(self.is_scalar(t, seen) for t in node[1])
        if k in ("neg", "abs"):
            return self.is_scalar(node[1], seen)
        if k in ("div", "odot"):
            return self.is_scalar(node[1], seen) and self.is_scalar(node[2], seen)
        if k == "pow":
            return self.is_scalar(node[1], seen)
        if k in ("norm",):
            return True
        if k == "call":
            if node[1] in ("tr", "sum"):
                return True
            if node[1] == "diag":
                return False
            return all(self.is_scalar(a, seen) for a in (node[2] or ()))
        if k == "deriv":
            return self.is_scalar(node[1], seen) and all(self.is_scalar(w, seen) for w in node[2])
        if k in ("T", "inv"):
            return self.is_scalar(node[1], seen)
        if k in ("sum", "prod"):
            return True                                  # L = -Σ_k y_k log p_k: a number
        if k in ("delta", "cases"):
            raise MathError("index notation mixed with matrix notation")
        raise MathError(f"{k} in a matrix step")

    def of_name(self, name):
        if name in self.names:
            return self.names[name]
        ctx, uf = self.ctx, self.uf
        if name in ctx.shapes:
            dims = ctx.shapes[name]
            ids = tuple(self.dim(d) for d in dims)
            if len(ids) == 1:
                ids = (ids[0], uf.new(width=True))        # a vector: row or column, as it is used
            elif len(ids) != 2:
                raise MathError(f"{name} has {len(dims)} dimensions (only matrices and vectors)")
        elif name in ctx.defs and ctx.defs[name].indices:
            if len(ctx.defs[name].indices) != 1:
                raise MathError(f"{name} is defined with two indices (a matrix entry by entry)")
            ids = (self.dim(self.index_dim()), uf.new(width=True))   # p_i = ...: a vector, all of length N
            self.names[name] = ids
            self._scan(ctx.defs[name].body)          # the vectors it is computed from need values
        elif name in ctx.defs and ctx.defs[name].body is not None:
            self.names[name] = None                      # a guard against a definition using itself
            ids = self.of(ctx.defs[name].body)
        elif name in ctx.vector_names:
            ids = (self.dim(self.index_dim()), uf.new(width=True))
        else:
            vector = name[:1].islower()
            ids = (uf.new(free=vector), uf.new(free=vector))
        self.names[name] = ids
        return ids

    def index_dim(self):
        """The length of the vectors written with indices (one for all, as in index notation)."""
        for name in sorted(self.ctx.vector_names):
            dims = self.ctx.shapes.get(name)
            if dims and len(dims) == 1:
                return dims[0]
        return "ℓ"

    def dim(self, token):
        if token.isdigit():
            return self.uf.new(size=int(token))
        if token not in self.dimnames:
            self.dimnames[token] = self.uf.new()
            self.uf.named.add(self.dimnames[token])
        return self.dimnames[token]

    def of(self, node):
        """('s',) for a scalar, else (row dim, column dim)."""
        uf = self.uf
        if self.is_scalar(node):
            self._scan(node)
            return ("s",)
        k = node[0]
        if k == "sym":
            ids = self.of_name(node[1])
            if ids is None:
                raise MathError(f"{node[1]} is defined through itself")
            return ids
        if k == "add":
            shapes = [self.of(t) for t in node[1]]
            mats = [s for s in shapes if s not in (("s",), ("?",))] or [("?",)]
            for s in mats[1:]:
                uf.union(mats[0][0], s[0])
                uf.union(mats[0][1], s[1])
            return mats[0]
        if k == "mul":
            cur = ("s",)
            for t in node[1]:
                s = self.of(t)
                if s == ("s",):
                    continue
                if cur == ("s",) or s == ("?",) or cur == ("?",):
                    cur = s if cur == ("s",) or s == ("?",) else cur
                    if s == ("?",):
                        cur = ("?",)
                else:
                    uf.union(cur[1], s[0])
                    cur = (cur[0], s[1])
            return cur
        if k in ("odot", "div"):
            a, b = self.of(node[1]), self.of(node[2])
            if a not in (("s",), ("?",)) and b not in (("s",), ("?",)):
                uf.union(a[0], b[0])
                uf.union(a[1], b[1])
            return a if a != ("s",) else b
        if k in ("neg", "abs"):
            return self.of(node[1])
        if k == "T":
            s = self.of(node[1])
            return s if s == ("?",) else (s[1], s[0])
        if k in ("inv", "pow"):
            s = self.of(node[1])
            if s != ("?",):
                uf.union(s[0], s[1])
            return s
        if k == "call":
            if node[1] in _ELEMENTWISE and node[2] and len(node[2]) == 1:
                return self.of(node[2][0])
            if node[1] == "diag" and node[2] and len(node[2]) == 1:
                v = self.of(node[2][0])
                return v if v == ("?",) else (v[0], v[0])    # the vector as a column, on the diagonal
            raise MathError(f"the function {node[1]} of a matrix")
        if k == "deriv":
            f, w = node[1], node[2]
            if len(w) != 1:
                raise MathError("a second derivative in matrix notation")
            sw = self.of(w[0])
            if f[0] == "sym" and f[1] in self.ctx.upstream_out:      # L's output needs a shape, for G
                self.of_name(self.ctx.upstream_out[f[1]])
            if self.is_scalar(f):                        # w's shape, or its transpose
                return sw if self.layout == "denominator" or sw == ("?",) else (sw[1], sw[0])
            self.of(f)
            return ("?",)                                 # a Jacobian: its layout decides
        raise MathError(f"{k} in a matrix step")

    def _scan(self, node, seen=()):
        """Shapes of the matrices and vectors inside a scalar (tr(A B), Σ_k y_k log p_k)."""
        for n in walk(node):
            if n[0] == "deriv":
                if n[1][0] == "sym" and n[1][1] in self.ctx.upstream_out:
                    self.of_name(self.ctx.upstream_out[n[1][1]])
                for w in n[2]:
                    if w[0] == "sym" and not w[2] and not self.is_scalar(w):
                        self.of(w)
            elif n[0] == "sym" and n[1] not in seen:
                d = self.ctx.defs.get(n[1])
                if d is not None and not d.indices and d.body is not None:
                    self._scan(d.body, seen + (n[1],))
                elif d is not None and d.indices or n[1] in self.ctx.vector_names:
                    self.of_name(n[1])

    def assign(self, rng):
        uf = self.uf
        roots = sorted({uf.find(k) for k in uf.parent})
        pool = list(rng.permutation([2, 3, 4, 5]))
        named = {uf.find(v): t for t, v in self.dimnames.items()}
        sizes, k = {}, 0
        for r in roots:
            if r in uf.size:
                sizes[r] = uf.size[r]
            elif r in uf.width or uf.free[r] and r not in named:
                sizes[r] = 1
            else:
                sizes[r] = int(pool[k % len(pool)]) + (k // len(pool))
                k += 1
        return {name: tuple(sizes[uf.find(d)] for d in ids)
                for name, ids in self.names.items() if ids is not None}


class _Eval:
    def __init__(self, checker, env, layout, shapes=None):
        self.ck, self.ctx, self.env, self.layout = checker, checker.ctx, env, layout
        self.shapes = shapes or {}
        self.cache = {}

    def name(self, name):
        if name in self.env:
            return self.env[name]
        if name in self.cache:
            return self.cache[name]
        ctx = self.ctx
        if name == "e":
            return np.e
        if name in ctx.defs and ctx.defs[name].indices and ctx.defs[name].body is not None:
            v = self.indexed(ctx.defs[name])
        elif name in ctx.defs and ctx.defs[name].body is not None:
            v = self.ev(ctx.defs[name].body)
        elif name in ctx.upstream_out:
            out = ctx.upstream_out[name]
            g = self.env.get(f"∂{name}/∂{out}")
            if g is None:
                raise MathError(f"{name} has no value (its output {out} has no shape here)")
            v = np.sum(g * self.name(out))
        else:
            raise MathError(f"{name} has no value")
        self.cache[name] = v
        return v

    def index_scalar(self, node):
        """A scalar written in index notation (a sum over k), at the vectors of env."""
        return float(self._instance([node], self.index_size(), ("sum", id(node)))[0])

    def index_size(self):
        for name in sorted(self.ctx.vector_names):
            if name in self.shapes:
                return int(np.prod(self.shapes[name]))
        raise MathError("a sum over an index with no vector to give its length")

    def _instance(self, exprs_of, n, key, bound=None):
        import sympy as sp
        from .docsym import SymEval
        cache = self.ctx.__dict__.setdefault("_indexed_functions", {})
        key = key + (n,)
        if key not in cache:
            exprs = [SymEval(self.ctx, sp, n, b).ev(t) for t, b in zip(exprs_of, bound or [{}] * len(exprs_of))]
            symbols = sorted(set().union(*(e.free_symbols for e in exprs)), key=str)
            cache[key] = (symbols, sp.lambdify(symbols, exprs, modules="numpy"))
        symbols, f = cache[key]
        args = []
        for sym in symbols:
            base, pos = self.ctx.base_of.get(sym), self.ctx.position_of.get(sym, ())
            value = np.asarray(self.name(base), dtype=float) if base is not None else None
            if value is None or (pos and pos[0] >= value.size):
                raise MathError(f"{sym} has no value in a matrix step")
            args.append(value.flat[pos[0]] if pos else float(value))
        return np.asarray(f(*args), dtype=float)

    def indexed(self, d):
        """A vector defined entry by entry (p_i = e^{o_i} / Σ_k e^{o_k}), at the vectors of env:
        each entry is the SymPy instance of index notation, made a NumPy function once."""
        shape = self.shapes.get(d.name)
        if shape is None:
            raise MathError(f"{d.name} has no shape")
        n = int(np.prod(shape))
        bound = [{d.indices[0]: i} for i in range(n)]
        return self._instance([d.body] * n, n, ("def", d.name), bound).reshape(shape)

    def ev(self, node):
        k = node[0]
        if k == "num":
            return float(node[1])
        if k == "sym":
            if node[2]:
                raise MathError("an indexed entry in a matrix step")
            return self.name(node[1])
        if k == "add":
            out = self.ev(node[1][0])
            for t in node[1][1:]:
                out = out + self.ev(t)
            return out
        if k == "mul":
            out = None
            for t in node[1]:
                v = self.ev(t)
                if out is None:
                    out = v
                elif np.ndim(out) == 0 or np.ndim(v) == 0 or np.size(out) == 1 and np.ndim(v) == 2 \
                        and np.shape(out) == (1, 1) and np.shape(v)[0] != 1:
                    out = np.squeeze(out) * v if np.ndim(out) else out * (np.squeeze(v) if np.size(v) == 1 else v)
                else:
                    if np.shape(out)[1] != np.shape(v)[0]:
                        raise _Shape(f"a product of {_shape(out)} and {_shape(v)}")
                    out = out @ v
            return out
        if k == "odot":
            return self.ev(node[1]) * self.ev(node[2])
        if k == "div":
            return self.ev(node[1]) / self.ev(node[2])
        if k == "neg":
            return -self.ev(node[1])
        if k == "abs":
            return np.abs(self.ev(node[1]))
        if k == "T":
            return np.transpose(self.ev(node[1]))
        if k == "inv":
            return np.linalg.inv(self.ev(node[1]))
        if k == "pow":
            base, exp = self.ev(node[1]), self.ev(node[2])
            if node[1] == ("sym", "e", ()):
                return np.exp(exp)
            if np.ndim(base) == 2 and np.size(base) > 1:
                if float(exp) != int(exp):
                    raise MathError("a matrix to a fractional power")
                return np.linalg.matrix_power(base, int(exp))
            return base ** exp
        if k == "call":
            if node[1] == "tr":
                return np.trace(self.ev(node[2][0]))
            if node[1] == "diag":
                return np.diag(np.ravel(self.ev(node[2][0])))
            f = _ELEMENTWISE.get(node[1])
            if f is None or node[3]:
                raise MathError(f"the function {node[1]} in a matrix step")
            return f(self.ev(node[2][0]))
        if k == "norm":
            v = self.ev(node[1])
            p = 2.0 if node[2] is None else float(self.ev(node[2]))
            return float(np.sum(np.abs(v) ** p) ** (1 / p))
        if k == "deriv":
            return self.deriv(node)
        if k in ("sum", "prod"):
            return self.index_scalar(node)
        raise MathError(f"{k} in a matrix step")

    def deriv(self, node):
        f, (w,) = node[1], node[2]
        if w[0] != "sym" or w[2]:
            raise MathError("a derivative with respect to an expression")
        name = w[1]
        ctx = self.ctx
        if f[0] == "sym" and name == ctx.upstream_out.get(f[1]):
            g = self.env[f"∂{f[1]}/∂{name}"]                 # ∂L/∂y of an undefined L: G itself
            return g if self.layout == "denominator" else g.T
        x = np.array(self.name(name), dtype=float)
        fx = np.asarray(self.ev_with(f, name, x), dtype=float)
        J = np.empty((fx.size, x.size))
        for j in range(x.size):
            h = 1e-6 * max(1.0, abs(x.flat[j]))
            xp, xm = x.copy(), x.copy()
            xp.flat[j] += h
            xm.flat[j] -= h
            J[:, j] = (np.ravel(self.ev_with(f, name, xp)) - np.ravel(self.ev_with(f, name, xm))) / (2 * h)
        if fx.size == 1:                                  # scalar by matrix: W's shape or its transpose
            g = J.reshape(x.shape)
            return g if self.layout == "denominator" else g.T
        return J if self.layout == "numerator" else J.T

    def ev_with(self, f, name, value):
        env = dict(self.env)
        env[name] = value
        return _Eval(self.ck, env, self.layout, self.shapes).ev(f)


class _Shape(Exception):
    pass


def _shape(v):
    return "×".join(str(d) for d in np.shape(v)) or "scalar"


def _draw(ctx, shapes, rng, upstream):
    env = {}
    for name, shape in shapes.items():
        if name in ctx.defs and ctx.defs[name].body is not None:
            continue
        if name in ctx.onehot:
            env[name] = np.zeros(shape)
            env[name].flat[int(rng.integers(env[name].size))] = 1.0
        elif name in ctx.simplex:
            w = rng.uniform(0.2, 1.0, shape)
            env[name] = w / w.sum()
        elif name in ctx.positive:
            env[name] = rng.uniform(0.3, 2.0, shape)
        else:
            env[name] = rng.standard_normal(shape)
    for loss, out in upstream.items():
        if out in shapes:
            env[f"∂{loss}/∂{out}"] = rng.standard_normal(shapes[out])
    return env


def compare_matrix(checker, left, right, quick=False):
    """Result of comparing two matrix-notation sides at random consistent shapes."""
    from .document import Result
    ctx = checker.ctx
    rng = checker.rng
    draws = 1 if quick else 2
    used, agree = [], {"denominator": True, "numerator": True}
    layout_matters = any(n[0] == "deriv" for t in (left, right) for n in _expanded_nodes(t, ctx))
    worst = None
    for _ in range(draws):
        seed = int(rng.integers(1 << 31))
        for layout in ("denominator", "numerator"):
            if not agree[layout]:
                continue
            if not layout_matters and layout == "numerator":
                continue
            local = np.random.default_rng(seed)            # the same draw in both layouts
            sh = _Shapes(checker, layout)
            try:
                sh.of(left)
                sh.of(right)
            except MathError as e:
                if "do not fit" not in str(e):
                    raise
                sh = _Shapes(checker, layout)  # the right side cannot have the left side's shape
                sh.of(left)
                try:
                    sh.of(right)
                except MathError:
                    pass
            shapes = sh.assign(local)
            env = _draw(ctx, shapes, local, ctx.upstream_out)
            if layout == "denominator" or not used:
                used.append(shapes)
            try:
                with np.errstate(all="ignore"):
                    a = np.asarray(_Eval(checker, env, layout, shapes).ev(left), dtype=float)
                    b = np.asarray(_Eval(checker, env, layout, shapes).ev(right), dtype=float)
            except _Shape as e:
                agree[layout] = False
                worst = worst or {"layout": layout, "why": str(e)}
                continue
            if a.size == 1 and b.size == 1:
                a, b = a.reshape(()), b.reshape(())
            if a.shape != b.shape:
                agree[layout] = False
                worst = worst or {"layout": layout, "left shape": _shape(a), "right shape": _shape(b),
                                  "transposed": a.shape == b.T.shape and np.allclose(a, b.T, rtol=1e-6, atol=1e-8)}
                continue
            if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
                return Result(None, why="a side is not finite at the random draw")
            err = np.abs(a - b) / np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
            if np.any(err > 1e-6):
                agree[layout] = False
                idx = np.unravel_index(int(np.argmax(err)), err.shape) if err.ndim else ()
                worst = worst or {"layout": layout, "entry": tuple(int(i) + 1 for i in idx),
                                  "left": float(a[idx]), "right": float(b[idx]),
                                  "transposed": a.shape == b.T.shape and bool(np.allclose(a, b.T, rtol=1e-6, atol=1e-8))}
    shown = "; ".join(", ".join(f"{n} {'×'.join(map(str, s))}" for n, s in sorted(d.items())
                                if not n.startswith("∂") and n not in ctx.defs) for d in used)
    how = f"numerically at random shapes ({shown}), float64" + (", central differences" if layout_matters else "")
    if not layout_matters:
        ok = agree["denominator"]
        if ok:
            return Result(True, how)
        return _wrong(how, worst, None)
    if agree["denominator"] and agree["numerator"]:
        return Result(True, how + ", either layout")
    for layout, other in (("denominator", "numerator"), ("numerator", "denominator")):
        if agree[layout]:
            if ctx.layout == other:
                res = _wrong(how, worst, f"correct in the {layout} layout, but the document uses the "
                                         f"{other} layout: a transposition")
                return res
            if ctx.layout == layout:
                return Result(True, how + f", in the document's {layout} layout")
            note = (f"correct in the {layout} layout, which the document does not name "
                    f"(in the {other} layout it would be the transpose)")
            return Result(True, how + f", {layout} layout", notes=[note])
    return _wrong(how, worst, None)


def _wrong(how, worst, hint):
    from .document import Result
    ce = {k: v for k, v in (worst or {}).items() if k != "transposed"}
    res = Result(False, how, ce)
    res.matrix_hint = hint or ("a transposition: the right side is the transpose of the left"
                               if worst and worst.get("transposed") else "")
    return res


def _expanded_nodes(tree, ctx, seen=None):
    seen = set() if seen is None else seen
    for n in walk(tree):
        yield n
        if n[0] == "sym" and n[1] in ctx.defs and n[1] not in seen and ctx.defs[n[1]].body is not None:
            seen.add(n[1])
            yield from _expanded_nodes(ctx.defs[n[1]].body, ctx, seen)


def reversed_products(tree):
    """Every variant of tree with one product's factors in reverse order, or two
    neighbouring factors swapped."""
    from .document import _paths, _replace
    out = []
    for path, node in _paths(tree, "mul"):
        f = node[1]
        if len(f) >= 2:
            out.append(_replace(tree, path, ("mul", tuple(reversed(f)))))
        for k in range(len(f) - 1) if len(f) > 2 else ():
            out.append(_replace(tree, path, ("mul", f[:k] + (f[k + 1], f[k]) + f[k + 2:])))
    return out


def transposed_factors(tree):
    """(tree with one matrix transposed or un-transposed, the hint) for each matrix in it."""
    from .document import _paths, _replace, _show_tree
    out = []
    for path, node in _paths(tree, "sym"):
        if node[2]:
            continue
        out.append((_replace(tree, path, ("T", node)), f"a transposition: {node[1]} should be {node[1]}ᵀ"))
    for path, node in _paths(tree, "T"):
        out.append((_replace(tree, path, node[1]),
                    f"a transposition: {_show_tree(node)} should be {_show_tree(node[1])}"))
    return out[:12]
