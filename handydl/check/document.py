r"""Checking a whole derivation document, step by step.

``check_document(text)`` reads a Markdown, LaTeX or plain-text document
(``docread``), parses each side of each displayed chain ``A = B = C`` and each
derivative claim (``docmath``), collects the document's own definitions and
assumptions ("where p_i = ...", "y is one-hot", "Σ y_i = 1", "x ∈ R^{k×m}",
"numerator layout") and judges every step:

* scalar steps symbolically (SymPy proves left − right = 0), else by sampling
  in 30-digit arithmetic at random points and on both sides of every
  breakpoint;
* index notation (``\partial p_i/\partial o_j``, ``\sum_{k \neq j}``,
  ``\delta_{ij}``, cases) by instantiating at sizes N = 1..5 with random values
  that satisfy the stated constraints (``docsym``);
* matrix notation (``x^T``, products, ``\partial L/\partial W``) numerically at
  random shapes consistent with the document, in both Jacobian layouts
  (``docmat``).

Each step is CORRECT (and how), WRONG (a counterexample, the line and label,
and a hint where one applies) or NOT CHECKED (which notation was not
understood); a step that does not follow from the one before, or that carries
an earlier error, says so.
"""
from __future__ import annotations

import itertools
import re
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from . import docmath
from .docmath import MathError, TooLarge, walk
from .docread import read
from .docsym import IMPLICIT, IMPLICIT2, SymEval, _OutOfRange

SIZES = (1, 2, 3, 4, 5)
DIGITS = 30
STEP_SECONDS = 8.0
MAX_BYTES = 2_000_000


class OutOfTime(Exception):
    """A check ran past its budget."""


# -- what a document says ------------------------------------------------------------------

@dataclass
class Definition:
    name: str
    kind: str                 # "function" f(x) = ..., "indexed" p_i = ..., "plain" L = ...
    params: tuple             # function parameters
    indices: tuple            # index letters of an indexed definition
    body: tuple | None        # the tree of the right side (None when not understood)
    line: int
    text: str
    vector: bool = False      # y = x / sum_k x_k: a vector defined without an index
    why: str = ""             # why it was not understood


@dataclass
class Step:
    line: int
    label: str | None
    text: str
    verdict: str = "not checked"      # "correct" | "wrong" | "not checked"
    how: str = ""
    why: str = ""
    hint: str = ""
    counterexample: dict | None = None
    notes: list = field(default_factory=list)
    equation: int = 0
    # for the checker: (chain start, left, right, relation) as trees; whether left = right was
    # found false; whether right equals the chain's start (None: not known)
    trees: tuple = field(default=(), repr=False)
    local_false: bool = field(default=False, repr=False)
    global_ok: bool | None = field(default=None, repr=False)

    def to_dict(self):
        return {"line": self.line, "label": self.label, "text": self.text, "verdict": self.verdict,
                "how": self.how, "why": self.why, "hint": self.hint or None,
                "counterexample": self.counterexample, "notes": self.notes,
                "equation": self.equation}


@dataclass
class Equation:
    line: int
    label: str | None
    text: str
    steps: list
    definition: str | None = None     # the name this equation defines, if it does


class Context:
    """Definitions, assumptions and the symbols of one document."""

    def __init__(self):
        import sympy as sp
        self.sp = sp
        self.defs = {}
        self.vector_names = set()
        self.matrix_names = set()
        self.index_letters = set()
        self.unknown_functions = set()
        self.functions = set()
        self.variable = "x"
        self.upstream = {}
        self.upstream_out = {}         # an undefined loss -> the output it is differentiated through
        self.scalar_names = set()      # names differentiated by matrices: scalars
        self.onehot, self.simplex, self.positive = set(), set(), set()
        self.shapes = {}
        self.layout = None
        self.facts = []                # what was read, in words, for the report
        self._symbols = {}
        self.base_of, self.position_of = {}, {}

    def symbol(self, key, base, pos):
        s = self._symbols.get(key)
        if s is None:
            s = self._symbols[key] = self.sp.Symbol(key, real=True)
            self.base_of[s] = base
            self.position_of[s] = pos
        return s


# -- the budget ------------------------------------------------------------------------------

@contextmanager
def budget(seconds):
    """Raise OutOfTime after ``seconds`` (SIGALRM; only in the main thread, else no limit)."""
    if seconds is None or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise OutOfTime()
    outer = signal.getitimer(signal.ITIMER_REAL)[0]     # a budget inside a budget: the shorter
    start = time.monotonic()
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer) if outer > 0 else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer > 0:                                   # the outer budget goes on counting
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))


# -- reading the document's facts ------------------------------------------------------------

_NAME = r"(?:\\(?:mathbf|boldsymbol|bm|vec)\{)?\\?([A-Za-z]+)\}?"


def _prose_facts(ctx, text):
    """One-hot, probability vectors, positivity, shapes and the layout, from words and math."""
    flat = re.sub(r"\s+", " ", text)
    for m in re.finditer(r"\$?" + _NAME + r"\$?\s+(?:is|be|are)\s+(?:an?\s+)?(?:\w+\s+)?one[- ]hot", flat):
        ctx.onehot.add(m.group(1))
    for m in re.finditer(r"\$?" + _NAME + r"\$?\s+(?:is|be)\s+(?:an?\s+)?(?:\w+\s+)?(?:probability|"
                         r"distribution|(?:vector\s+)?that\s+sums?\s+to\s+(?:one|1))", flat):
        ctx.simplex.add(m.group(1))
    for m in re.finditer(r"\\sum_\{?([a-z])\}?(?:\^\{?\w+\}?)?\s*" + _NAME + r"_\{?([a-z])\}?\s*=\s*1(?![\d.])", flat):
        if m.group(1) == m.group(3):
            ctx.simplex.add(m.group(2))
    for m in re.finditer(_NAME + r"(?:_\{?[a-z]\}?)?\s*>\s*0", flat):
        ctx.positive.add(m.group(1))
    for m in re.finditer(r"\$?" + _NAME + r"\$?\s+(?:is|are)\s+(?:all\s+)?positive", flat):
        ctx.positive.add(m.group(1))
    for m in re.finditer(_NAME + r"\s*(?:\\in|∈)\s*(?:\\mathbb\{R\}|\\mathbb R|\\R|ℝ|R)\s*\^\s*"
                         r"(\{[^{}$]*\}|\w)", flat):
        dims = re.split(r"\\times|×|,|\*", m.group(2).strip("{}"))
        dims = tuple(d.strip() for d in dims if d.strip())
        name = m.group(1)
        ctx.shapes[name] = dims
        (ctx.matrix_names if len(dims) == 2 and not (dims[0] == "1" or dims[1] == "1") or name[:1].isupper()
         else ctx.vector_names).add(name)
    low = flat.lower()
    if "denominator layout" in low or "denominator-layout" in low or "gradient layout" in low:
        ctx.layout = "denominator"
    elif "numerator layout" in low or "numerator-layout" in low or "jacobian layout" in low:
        ctx.layout = "numerator"
    for name in sorted(ctx.onehot):
        ctx.facts.append(f"{name} is one-hot")
    for name in sorted(ctx.simplex - ctx.onehot):
        ctx.facts.append(f"{name} is a probability vector (positive, sums to 1)")
    for name in sorted(ctx.positive):
        ctx.facts.append(f"{name} > 0")
    for name, dims in ctx.shapes.items():
        ctx.facts.append(f"{name} ∈ R^{'×'.join(dims)}")
    if ctx.layout:
        ctx.facts.append(f"Jacobians in the {ctx.layout} layout")


def _function_heads(reading):
    """Names written as f(x) = ... at the start of a chain: the document's functions."""
    out = set()
    for ch in reading.chains:
        m = re.match(r"\s*(?:\\operatorname\{)?\\?([A-Za-z]+)\}?\s*(?:\\left)?\(\s*\\?[A-Za-z]+(?:\s*,\s*\\?[A-Za-z]+)*\s*(?:\\right)?\)\s*$",
                     ch.sides[0].text)
        if m and ch.relations and len(m.group(1)) <= 6 and m.group(1) not in docmath.FUNCTIONS - {"sigma"}:
            out.add(m.group(1))
    return out


# -- the checker -----------------------------------------------------------------------------

class DocumentChecker:
    def __init__(self, text, step_seconds=STEP_SECONDS, total_seconds=None, seed=0):
        self.text = text
        self.reading = read(text)
        self.ctx = Context()
        self.step_seconds = step_seconds
        self.deadline = None if total_seconds is None else time.monotonic() + total_seconds
        self.rng = np.random.default_rng(seed)
        self.out_of_time = False
        self.conditions = []               # inline relations read as cases or assumptions

    # -- collection ------------------------------------------------------------------------
    def parse(self, side):
        return docmath.parse(side.text, self.ctx.functions)

    def run(self):
        r, ctx = self.reading, self.ctx
        from .docread import _mask_code
        said = _mask_code(self.text)
        for b in r.blocks:                 # x > 0 inside a displayed case is no assumption
            if b.display:
                said = said[:b.offset] + re.sub(r"[^\n]", " ", b.body) + said[b.offset + len(b.body):]
        _prose_facts(ctx, said)
        ctx.functions = _function_heads(r) | {"f", "g", "h"}
        parsed = []
        for ch in r.chains:
            sides = []
            for s in ch.sides:
                try:
                    sides.append(self.parse(s))
                except MathError as e:
                    sides.append(e)
            parsed.append(sides)
        self._learn_names(parsed)
        equations = []
        for k, (ch, sides) in enumerate(zip(r.chains, parsed)):
            eq = self._equation(ch, sides, len(equations))
            if eq is not None:
                equations.append(eq)
        self._find_upstream(equations)
        for eq in equations:
            self._check_equation(eq)
        report = DocumentReport(equations, list(ctx.defs.values()), ctx.facts, self.out_of_time)
        report.conditions = self.conditions
        return report

    def _learn_names(self, parsed):
        ctx = self.ctx
        for sides in parsed:
            for tree in sides:
                if isinstance(tree, Exception):
                    continue
                for node in walk(tree):
                    if node[0] == "sym" and node[2]:
                        if len(node[2]) == 1:
                            ctx.vector_names.add(node[1])
                        else:
                            ctx.matrix_names.add(node[1])
                        for i in node[2]:
                            if i[0] == "sym":
                                ctx.index_letters.add(i[1])
                    elif node[0] in ("sum", "prod"):
                        ctx.index_letters.add(node[1])
                    elif node[0] == "delta":
                        for i in node[1:]:
                            if i[0] == "sym":
                                ctx.index_letters.add(i[1])
                    elif node[0] == "call" and node[1] not in docmath.FUNCTIONS and node[1] != "sigma":
                        ctx.unknown_functions.add(node[1])
                    if node[0] == "deriv" and node[1][0] == "sym" and not node[1][2] \
                            and node[1][1][:1].isupper():
                        ctx.scalar_names.add(node[1][1])
                    if node[0] == "deriv" and not node[2][0][2] and node[2][0][0] == "sym" \
                            and node[2][0][1] not in ctx.vector_names:
                        ctx.variable = node[2][0][1] if node[2][0][1].islower() else ctx.variable
        ctx.vector_names -= ctx.index_letters
        ctx.vector_names -= ctx.matrix_names

    def _definition_of(self, tree, ch, sides, line):
        """A Definition when the chain's first side is a new name (p_i, L, f(x), y), else None."""
        ctx = self.ctx
        if isinstance(tree, Exception) or len(sides) < 2:
            return None
        if tree[0] == "sym":
            name, idx = tree[1], tree[2]
            if name in ctx.defs or name in ("e", "pi") or name in ctx.index_letters:
                return None
            if any(i[0] != "sym" or i[1] not in ctx.index_letters for i in idx):
                return None
            body = sides[1]
            if isinstance(body, tuple) and body[0] in ("num", "neg") and (body[0] == "num" or body[1][0] == "num"):
                return None                     # x = 0: a value or a condition, not a definition
            if not idx and name in ctx.vector_names and isinstance(body, tuple) \
                    and not _mentions_vector(body, ctx):
                return None
            kind = "indexed" if idx else "plain"
            vector = not idx and isinstance(body, tuple) and _mentions_vector(body, ctx)
            return Definition(name, kind, (), tuple(i[1] for i in idx), body if isinstance(body, tuple) else None,
                              line, ch.sides[0].text.strip() + " = " + ch.sides[1].text.strip(), vector,
                              "" if isinstance(body, tuple) else str(body))
        if tree[0] == "call" and tree[3] == 0 and tree[2] and all(a[0] == "sym" and not a[2] for a in tree[2]):
            name = tree[1]
            if name in ctx.defs or (name in docmath.FUNCTIONS and name != "sigma"):
                return None
            if name == "sigma":      # σ(x) = 1/(1+e^{-x}) is the logistic function: a claim, checked
                return None
            body = sides[1]
            return Definition(name, "function", tuple(a[1] for a in tree[2]), (),
                              body if isinstance(body, tuple) else None, line,
                              ch.sides[0].text.strip() + " = " + ch.sides[1].text.strip(),
                              why="" if isinstance(body, tuple) else str(body))
        return None

    def _equation(self, ch, sides, index):
        r, ctx = self.reading, self.ctx
        if not ch.relations:
            return None
        first_line = r.line(ch.relations[0][1])
        text = ch.sides[0].text.strip() + "".join(f" {op} {s.text.strip()}"
                                                   for (op, _), s in zip(ch.relations, ch.sides[1:]))
        has_deriv = any(isinstance(t, tuple) and any(n[0] == "deriv" or (n[0] == "call" and n[3])
                                                     for n in walk(t)) for t in sides)
        if not ch.display:
            # inline math: definitions and derivative claims; other relations are conditions
            d = self._definition_of(sides[0], ch, sides, first_line) if ch.relations[0][0] in ("=", ":=") else None
            if d is not None and len(sides) == 2:
                ctx.defs[d.name] = d
                return Equation(first_line, None, text, [], d.name)
            if not has_deriv and (_is_condition(sides) or ch.relations[0][0] != "="):
                self.conditions.append(f"{text} (line {first_line})")
                return None
        eq = Equation(first_line, ch.labels[0] if ch.labels else None, text, [])
        start = 0
        if ch.relations[0][0] in ("=", ":="):
            d = self._definition_of(sides[0], ch, sides, first_line)
            if d is not None:
                ctx.defs[d.name] = d
                eq.definition = d.name
                start = 1
        for k in range(start + 1, len(ch.sides)):
            op, off = ch.relations[k - 1]
            step = Step(r.line(off), ch.labels[k - 1], ch.sides[k - 1].text.strip() + f" {op} "
                        + ch.sides[k].text.strip(), equation=index)
            step.trees = (sides[start] if start < len(sides) else None, sides[k - 1], sides[k], op)
            eq.steps.append(step)
        if start == 1 and not eq.steps:
            return eq
        return eq

    def _step_upstream(self, trees):
        """An undefined loss differentiated in this step through a defined output: that output
        (Z = A X B in one step, Y = A B C in the next), else the document's choice."""
        ctx = self.ctx
        ctx.upstream, ctx.upstream_out = dict(self._doc_upstream), dict(self._doc_upstream_out)
        found = {}
        for t in trees:
            if isinstance(t, tuple):
                for n in walk(t):
                    if n[0] == "deriv" and n[1][0] == "sym" and not n[1][2] and n[1][1] not in ctx.defs \
                            and n[2][0][0] == "sym" and n[2][0][1] in ctx.defs:
                        found.setdefault(n[1][1], n[2][0][1])
        for name, out in found.items():
            self._set_upstream(name, out)

    def _set_upstream(self, name, out):
        ctx = self.ctx
        ctx.upstream_out[name] = out
        g = f"∂{name}/∂{out}"
        if out in ctx.vector_names or ctx.defs[out].indices or ctx.defs[out].vector:
            w = "ω"
            ctx.index_letters.add(w)
            ctx.upstream[name] = ("sum", w, None, ("mul", (("sym", g, (("sym", w, ()),)),
                                                            ("sym", out, (("sym", w, ()),)))))
            ctx.vector_names.add(g)
        else:
            ctx.upstream[name] = ("mul", (("sym", g, ()), ("sym", out, ())))

    def _find_upstream(self, equations):
        """A loss L that is never defined but differentiated: L = Σ G ⊙ y for the most
        downstream y it is differentiated by (its upstream gradient G = ∂L/∂y is then free)."""
        ctx = self.ctx
        wrts = {}
        for eq in equations:
            for st in eq.steps:
                for t in st.trees[1:3]:
                    if isinstance(t, tuple):
                        for n in walk(t):
                            if n[0] == "deriv" and n[1][0] == "sym" and not n[1][2] \
                                    and n[1][1] not in ctx.defs:
                                wrts.setdefault(n[1][1], []).append(n[2][0])
        for name, ws in wrts.items():
            defined = [w for w in ws if w[0] == "sym" and w[1] in ctx.defs]
            if not defined:
                continue
            out = defined[0]
            self._set_upstream(name, out[1])
            ctx.facts.append(f"{name} is not defined: any function of {out[1]}, with "
                             f"∂{name}/∂{out[1]} drawn at random")
        self._doc_upstream, self._doc_upstream_out = dict(ctx.upstream), dict(ctx.upstream_out)

    # -- checking --------------------------------------------------------------------------
    def _check_equation(self, eq):
        previous_ok = True
        wrong_line = None
        for st in eq.steps:
            self._check_step(st)
            if st.verdict == "wrong" and st.local_false:
                if st.global_ok:
                    st.notes.append("this side equals the chain's start: the step does not follow from "
                                    "the one before, but undoes its error")
                wrong_line = wrong_line or st.line
            elif st.verdict == "correct" and not previous_ok and st.global_ok is False:
                st.notes.append(f"follows from the step before, but carries the error of line {wrong_line}")
            if st.verdict == "wrong":
                previous_ok = False
            elif st.verdict == "correct" and st.global_ok:
                previous_ok = True

    def _check_step(self, st):
        start, left, right, op = st.trees
        st.local_false = False
        st.global_ok = None
        for t in (left, right):
            if isinstance(t, Exception):
                st.verdict, st.why = "not checked", f"not understood: {t}"
                self._fallback(st)
                return
        if op != "=":
            st.verdict = "not checked"
            st.why = {"≈": "an approximation (≈), not an equality", ":=": "a definition"}.get(
                op, f"the relation {op}: only equalities are checked")
            return
        self._step_upstream((left, right, start))
        if self.deadline is not None and time.monotonic() > self.deadline:
            st.verdict, st.why = "not checked", "out of time (the document's budget was spent)"
            self.out_of_time = True
            return
        try:
            with budget(self.step_seconds):
                res = self.compare(left, right)
            if res.equal is False:
                st.local_false = True
                st.verdict = "wrong"
                st.how = res.how
                st.counterexample = res.counterexample
            elif res.equal:
                st.verdict, st.how = "correct", res.how
                st.notes.extend(res.notes)
                st.global_ok = True if not isinstance(start, tuple) or start is left else None
            else:
                st.verdict, st.why = "not checked", res.why
                return
            self._explain(st, start, left, right, res)
        except OutOfTime:
            st.verdict = "not checked"
            st.why = f"out of time (more than {self.step_seconds:g} s for this step)"
            self.out_of_time = True
        except TooLarge as e:
            st.verdict, st.why = "not checked", f"too large: {e}"
        except MathError as e:
            st.verdict, st.why = "not checked", f"not understood: {e}"
        except (RecursionError, MemoryError):
            st.verdict, st.why = "not checked", "too large to check"
        except (ZeroDivisionError, TypeError, ValueError, AttributeError, NotImplementedError) as e:
            st.verdict, st.why = "not checked", f"could not be evaluated ({type(e).__name__}: {e})"

    def _explain(self, st, start, left, right, res):
        """The hint of a wrong step and whether the right side equals the chain's start: a
        budget of their own, so that a slow hint never takes the verdict away."""
        try:
            with budget(self.step_seconds):
                if res.equal is False:
                    st.hint = self.hint(left, right, res)
                if isinstance(start, tuple) and start is not left:
                    st.global_ok = self.compare(start, right, quick=True).equal
        except (OutOfTime, MathError, ZeroDivisionError, TypeError, ValueError, np.linalg.LinAlgError):
            pass

    def _fallback(self, st):
        """A scalar step that the document reader cannot read, read by check.mathparse (the
        claims parser: plain-math cases 'x if x > 0 else 0', '{x, x>0; 0, otherwise}'), when
        it uses none of the document's definitions, indices or matrices."""
        sp = self.ctx.sp
        try:
            from . import mathparse
        except ImportError:                       # pragma: no cover - shipped together
            return
        sides = st.text.split(f" {st.trees[3]} ", 1)
        if st.trees[3] != "=" or len(sides) != 2:
            return
        try:
            with budget(self.step_seconds):
                a, b = (mathparse.parse(t).doit() for t in sides)
                if any(e.has(sp.Indexed, sp.MatrixSymbol, sp.KroneckerDelta) for e in (a, b)):
                    return
                names = {str(v) for e in (a, b) for v in e.free_symbols}
                if names & (set(self.ctx.defs) | self.ctx.vector_names | self.ctx.matrix_names):
                    return
                d = a - b
                zero = d == 0 or sp.simplify(d) == 0
                res = Result(True, "symbolically (SymPy simplifies left − right to 0)") if zero \
                    else self._sample_scalar(a, b)
        except OutOfTime:
            return
        except Exception:                          # their parser's refusal: keep the first reason
            return
        if res.equal is None:
            return
        st.verdict = "correct" if res.equal else "wrong"
        st.how = "read by handydl.check.mathparse, " + res.how
        st.why = ""
        st.counterexample = res.counterexample
        st.local_false = not res.equal
        if res.equal:
            st.global_ok = None

    def mode(self, *trees):
        ctx = self.ctx
        matrix = False
        for t in trees:
            for n in _expanded(t, ctx):
                if n[0] in ("T", "inv", "odot"):
                    matrix = True
                elif n[0] == "sym" and not n[2] and (n[1] in ctx.matrix_names or
                                                     (n[1] in ctx.shapes and len(ctx.shapes[n[1]]) == 2)):
                    matrix = True
                elif n[0] == "call" and n[1] in ("tr", "diag"):
                    matrix = True
        if matrix:
            return "matrix"
        free, implicit = self.free_indices(*trees)
        if free or implicit:
            return "index"
        vectorial = any(n[0] in ("norm", "sum", "prod") or n[0] == "sym" and n[2]
                        for t in trees for n in _expanded(t, ctx))
        return "index" if vectorial else "scalar"       # ‖x‖² = Σ x_k², p_1 = ...: sizes N

    def free_indices(self, *trees):
        """The free index letters of the trees, and whether a vector appears without an index."""
        ctx = self.ctx
        free, implicit = [], False
        # a name is a vector here when this step or a definition it uses writes it with an index
        # (x_i in one equation does not make x a vector in dσ/dx = σ(x)(1 − σ(x)) elsewhere)
        indexed = {n[1] for t in trees for n in _expanded(t, ctx) if n[0] == "sym" and n[2]}
        indexed |= {name for name in ctx.vector_names if name in ctx.shapes or name.startswith("∂")}

        def visit(node, bound):
            nonlocal implicit
            if not (isinstance(node, tuple) and node and isinstance(node[0], str)):
                return
            kind = node[0]
            if kind == "sym":
                if not node[2] and node[1] in ctx.vector_names and node[1] in indexed:
                    implicit = True
                if not node[2] and node[1] in ctx.defs and ctx.defs[node[1]].vector:
                    implicit = True
                for i in node[2]:
                    for n in walk(i):
                        if n[0] == "sym" and n[1] not in bound and n[1] not in free:
                            free.append(n[1])
                return
            if kind in ("sum", "prod"):
                if node[2] is not None:
                    visit(node[2][3], bound | {node[1]})
                visit(node[3], bound | {node[1]})
                return
            if kind == "delta":
                for i in node[1:]:
                    if i[0] == "sym" and i[1] not in bound and i[1] not in free:
                        free.append(i[1])
                return
            if kind == "norm":
                if node[2] is not None:
                    visit(node[2], bound)
                return                          # the vector inside is summed over
            if kind == "cases":
                for value, cond in node[1]:
                    visit(value, bound)
                    if cond is not None:
                        visit(cond[2], bound)
                        visit(cond[3], bound)
                return
            for part in node[1:]:
                if isinstance(part, tuple) and part:
                    if isinstance(part[0], str):
                        visit(part, bound)
                    else:
                        for p in part:
                            if isinstance(p, tuple) and p and isinstance(p[0], str):
                                visit(p, bound)
                            elif isinstance(p, tuple):
                                for q in p:
                                    visit(q, bound)
        for t in trees:
            visit(t, frozenset())
        free = [f for f in free if f in ctx.index_letters or f not in ctx.defs]
        return free, implicit

    def compare(self, left, right, quick=False):
        mode = self.mode(left, right)
        if mode == "matrix":
            from .docmat import compare_matrix
            return compare_matrix(self, left, right, quick=quick)
        if mode == "index":
            return self.compare_index(left, right, quick=quick)
        return self.compare_scalar(left, right, quick=quick)

    # -- scalar steps --------------------------------------------------------------------------
    def compare_scalar(self, left, right, quick=False):
        sp = self.ctx.sp
        ev = SymEval(self.ctx, sp)
        a, b = ev.ev(left), ev.ev(right)
        diff = a - b
        if quick:                     # hints and chain starts: sampling alone, fewer points
            return self._sample_scalar(a, b, quick=True)
        try:
            with budget(min(3.0, self.step_seconds / 2)):
                zero = diff == 0 or sp.simplify(diff) == 0
        except OutOfTime:
            zero = False
        if zero:
            return Result(True, "symbolically (SymPy simplifies left − right to 0)")
        return self._sample_scalar(a, b)

    def _concrete_functions(self, exprs):
        """f, g, h of the document replaced by fixed smooth positive functions to sample."""
        sp = self.ctx.sp
        t = sp.Symbol("t", real=True)
        stock = [2 + sp.sin(t * sp.Rational(13, 10)) + t ** 2 / 4, sp.Rational(3, 2) + sp.cos(t * sp.Rational(7, 10)),
                 1 + t ** 2 / 3 + sp.exp(t / 5)]
        out, notes = list(exprs), []
        undefined = set()
        for e in out:
            undefined |= {f.func for f in e.atoms(sp.core.function.AppliedUndef)}
        for k, F in enumerate(sorted(undefined, key=str)):
            body = stock[k % len(stock)]
            out = [e.replace(F, sp.Lambda(t, body)).doit() for e in out]
            notes.append(f"{F}(t) = {body}")
        return out, notes

    def _sample_scalar(self, a, b, quick=False):
        sp = self.ctx.sp
        (a, b), fnotes = self._concrete_functions([a, b])
        symbols = sorted((a.free_symbols | b.free_symbols), key=str)
        if not symbols:
            va, vb = _num(sp, a), _num(sp, b)
            if va is None or vb is None:
                return Result(None, why="a side has no real value")
            if _close(va, vb):
                return Result(True, f"numerically at {DIGITS} digits (no variable)")
            return Result(False, f"numerically at {DIGITS} digits", {"left": _f(va), "right": _f(vb)},
                          values=(np.array([va]), np.array([vb])))
        breaks = _breakpoints(sp, a, b, symbols) if not quick else {}
        points = []
        rng = self.rng
        k = 4 if quick else 1
        for _ in range(24 // k):
            points.append({s: rng.uniform(-3, 3) for s in symbols})
        for _ in range(8 // k):
            points.append({s: rng.uniform(-14, 14) for s in symbols})
        for _ in range(8 // k):
            points.append({s: rng.uniform(0.05, 3) for s in symbols})
        near = 0
        for s, vals in breaks.items():
            for v in vals:
                for h in (-1e-3, 1e-3, -0.1, 0.1):
                    base = {t: rng.uniform(0.3, 2) for t in symbols}
                    base[s] = v + h
                    points.append(base)
                    near += 1
        used, av, bv, pts = 0, [], [], []
        for p in points:
            subs = {s: sp.Float(repr(float(v)), DIGITS) for s, v in p.items()}
            x, y = _num(sp, a.xreplace(subs)), _num(sp, b.xreplace(subs))
            if x is None or y is None:
                continue
            used += 1
            av.append(x)
            bv.append(y)
            pts.append(p)
        if not used:
            return Result(None, why="neither side has a real value at the sampled points")
        av, bv = np.array(av, dtype=object), np.array(bv, dtype=object)
        bad = [k for k in range(used) if not _close(av[k], bv[k])]
        near_used = sum(1 for p in pts[len(pts) - near:]) if near else 0
        near = min(near, near_used)
        how = (f"by sampling at {used} points" + (f", {near} of them near the breakpoints "
               + ", ".join(f"{v:g}" for vals in breaks.values() for v in vals) if near else "")
               + f", in {DIGITS}-digit arithmetic")
        notes = [f"functions left general were sampled as {', '.join(fnotes)}"] if fnotes else []
        if not bad:
            return Result(True, how, notes=notes)
        clear = [j for j in bad if abs(av[j] - bv[j]) > 0.01 * max(1, abs(av[j]), abs(bv[j]))] or bad
        k = min(clear, key=lambda j: sum(abs(v) for v in pts[j].values()))   # easy to check by hand
        ce = {str(s): round(float(v), 6) for s, v in pts[k].items()}
        ce.update({"left": _f(av[k]), "right": _f(bv[k])})
        return Result(False, how, ce, values=(av.astype(float), bv.astype(float)), notes=notes)

    # -- index notation ------------------------------------------------------------------------
    def compare_index(self, left, right, quick=False, swap=None):
        sp = self.ctx.sp
        free, implicit = self.free_indices(left, right)
        letters = list(free) + ([IMPLICIT] if implicit else [])
        if implicit and _has_vector_by_vector(left, right, self.ctx):
            letters.append(IMPLICIT2)
        sizes = (2, 3) if quick else SIZES
        lv, rv, where, count = [], [], [], 0
        for n in sizes:
            choices = list(itertools.product(range(n), repeat=len(letters)))
            if len(choices) > 16:
                keep = [c for c in choices if len(set(c)) < len(c)][:6]
                others = [c for c in choices if c not in keep]
                idx = self.rng.choice(len(others), size=10, replace=False)
                choices = keep + [others[i] for i in sorted(idx)]
            pairs = []
            for c in choices:
                bound = dict(zip(letters, c))
                ev = SymEval(self.ctx, sp, n, bound)
                try:
                    a = ev.ev(left)
                    bound_r = dict(bound)
                    if swap:
                        bound_r[swap[0]], bound_r[swap[1]] = bound[swap[1]], bound[swap[0]]
                    b = SymEval(self.ctx, sp, n, bound_r).ev(right)
                except _OutOfRange:
                    continue
                pairs.append((bound, a, b))
            if not pairs:
                continue
            symbols = set()
            for _, a, b in pairs:
                symbols |= a.free_symbols | b.free_symbols
            for attempt in range(3):
                values = self._draw(symbols, n, positive=attempt > 0)
                got = [(bd, _num(sp, a.xreplace(values)), _num(sp, b.xreplace(values))) for bd, a, b in pairs]
                if all(x is not None and y is not None for _, x, y in got):
                    break
            else:
                got = [g for g in got if g[1] is not None and g[2] is not None]
            for bd, x, y in got:
                if x is None or y is None:
                    continue
                count += 1
                lv.append(x)
                rv.append(y)
                where.append((n, bd, values))
        if not count:
            return Result(None, why="no instance could be evaluated (no real value)")
        bad = [k for k in range(count) if not _close(lv[k], rv[k])]
        constraint = self._constraint_words()
        shown = ", ".join(letters).replace(IMPLICIT, "the vector index").replace(IMPLICIT2, "its column")
        what = f"{count} choices of {shown}" if shown else f"{count} instances"
        how = (f"instantiated at N = {sizes[0]}..{sizes[-1]} ({what}), "
               f"random values{constraint}, {DIGITS} digits")
        if not bad:
            return Result(True, how)
        k = next((j for j in bad if where[j][0] >= 2), bad[0])     # N >= 2 shows more
        n, bd, values = where[k]
        ce = {"N": n}
        ce.update({(letter if letter not in (IMPLICIT, IMPLICIT2) else "index"): v + 1
                   for letter, v in bd.items()})
        shown_values = {str(s): round(float(v), 4) for s, v in sorted(values.items(), key=lambda kv: str(kv[0]))
                        if not str(s).startswith("∂")}
        if len(shown_values) <= 12:
            ce["values"] = shown_values
        ce.update({"left": _f(lv[k]), "right": _f(rv[k])})
        diag = []
        for j in range(count):
            bdj = where[j][1]
            vals = [v for key, v in bdj.items()]
            diag.append(len(set(vals)) < len(vals))
        return Result(False, how, ce, values=(np.array(lv, dtype=float), np.array(rv, dtype=float)),
                      diagonal=np.array(diag), letters=letters)

    def _constraint_words(self):
        parts = [f"{n} one-hot" for n in sorted(self.ctx.onehot)]
        parts += [f"{n} a probability vector" for n in sorted(self.ctx.simplex - self.ctx.onehot)]
        return f" ({', '.join(parts)})" if parts else ""

    def _draw(self, symbols, n, positive=False):
        """Random 30-digit values, with the document's constraints (one-hot, simplex, > 0)."""
        sp, ctx, rng = self.ctx.sp, self.ctx, self.rng
        values = {}
        groups = {}
        for s in sorted(symbols, key=str):          # the same draw in every run (no hash order)
            groups.setdefault(ctx.base_of.get(s, str(s)), []).append(s)
        for base, syms in groups.items():
            if base in ctx.onehot:
                hot = int(rng.integers(n))
                for s in syms:
                    values[s] = sp.Integer(int(ctx.position_of[s][0] == hot)) if ctx.position_of.get(s) else sp.Integer(1)
            elif base in ctx.simplex:
                w = rng.uniform(0.2, 1.0, n)
                w = w / w.sum()
                for s in syms:
                    pos = ctx.position_of.get(s) or (0,)
                    values[s] = sp.Float(repr(float(w[pos[0]])), DIGITS)
            else:
                lo, hi = (0.3, 2.0) if positive or base in ctx.positive else (-2.0, 2.0)
                for s in syms:
                    values[s] = sp.Float(repr(float(rng.uniform(lo, hi))), DIGITS)
        return values

    # -- hints -----------------------------------------------------------------------------
    def hint(self, left, right, res):
        if getattr(res, "matrix_hint", None) is not None:
            return self._matrix_hint(left, right, res)
        repaired = self._repairs(left, right, res)
        if repaired:
            return "; ".join(repaired[:1])
        hints = []
        if res.values is not None:
            a, b = res.values
            ok = np.isfinite(a) & np.isfinite(b)
            a, b = a[ok], b[ok]
            if a.size and np.any(np.abs(a) > 1e-9):
                if np.allclose(b, -a, rtol=1e-9, atol=1e-12):
                    hints.append("a sign: this side is the negative of the one before")
                else:
                    nz = np.abs(a) > 1e-9
                    ratio = b[nz] / a[nz]
                    if ratio.size and abs(ratio[0]) > 1e-6 and _nice(ratio[0]).count("/") + len(_nice(ratio[0])) < 8 \
                            and np.allclose(ratio, ratio[0], rtol=1e-9) and np.allclose(b[~nz], 0, atol=1e-12):
                        hints.append(f"a constant factor: this side is {_nice(ratio[0])} times the one before "
                                     f"(a missing factor {_nice(1 / ratio[0])}?)")
            if res.diagonal is not None and res.diagonal.any() and not res.diagonal.all():
                bad = ~np.isclose(res.values[0], res.values[1], rtol=1e-9, atol=1e-12)
                if bad.any() and np.all(res.diagonal[bad]):
                    i, j = (res.letters + ["j"])[:2]
                    hints.append(f"wrong only where {_letter(i)} = {_letter(j)}: a dropped Kronecker delta "
                                 f"δ_{_letter(i)}{_letter(j)} (or a missing diagonal term)?")
                elif bad.any() and not np.any(res.diagonal[bad]):
                    i, j = (res.letters + ["j"])[:2]
                    hints.append(f"wrong only where {_letter(i)} ≠ {_letter(j)}: a term that belongs to "
                                 f"the diagonal only (a missing δ)?")
        if not hints and _has(left, "sum") and not _has(right, "sum"):
            hints.append("the side before sums over an index, this one has no sum: a dropped Σ?")
        seen, out = set(), []
        for h in hints:
            if h not in seen:
                seen.add(h)
                out.append(h)
        return "; ".join(out[:2])

    def _matrix_hint(self, left, right, res):
        from .docmat import reversed_products, transposed_factors
        if res.matrix_hint:
            return res.matrix_hint
        for tree in reversed_products(right):
            try:
                if self.compare(left, tree, quick=True).equal:
                    return "the order of a product is reversed ((AB)ᵀ = BᵀAᵀ; matrices do not commute)"
            except (MathError, ZeroDivisionError, ValueError, np.linalg.LinAlgError):
                continue
        for tree, why in transposed_factors(right):
            try:
                if self.compare(left, tree, quick=True).equal:
                    return why
            except (MathError, ZeroDivisionError, ValueError, np.linalg.LinAlgError):
                continue
        for tree, why in _candidates(left, right, self.ctx)[:10]:
            try:
                if self.compare(left, tree, quick=True).equal:
                    return why
            except (MathError, ZeroDivisionError, ValueError, np.linalg.LinAlgError):
                continue
        return ""

    def _repairs(self, left, right, res):
        """Small edits of the right side; the first that makes the step right names the mistake."""
        out = []
        deadline = time.monotonic() + 6.0
        for tree, why in _candidates(left, right, self.ctx):
            if time.monotonic() > deadline:
                break
            try:
                if self.compare(left, tree, quick=True).equal:
                    out.append(why)
                    break
            except (MathError, _OutOfRange, ZeroDivisionError, TypeError, ValueError):
                continue
        if res.letters and len([x for x in res.letters if x not in (IMPLICIT, IMPLICIT2)]) >= 2 and not out:
            i, j = [x for x in res.letters if x not in (IMPLICIT, IMPLICIT2)][:2]
            try:
                if self.compare_index(left, right, quick=True, swap=(i, j)).equal:
                    out.append(f"the indices {i} and {j} are swapped (a transposition)")
            except (MathError, _OutOfRange):
                pass
        return out


@dataclass
class Result:
    equal: bool | None
    how: str = ""
    counterexample: dict | None = None
    why: str = ""
    values: tuple | None = None
    notes: list = field(default_factory=list)
    diagonal: np.ndarray | None = None
    letters: list | None = None


def _letter(x):
    return {IMPLICIT: "i", IMPLICIT2: "j"}.get(x, x)


def _num(sp, e):
    """A real 30-digit value, or None (complex, infinite, undefined)."""
    try:
        v = sp.N(e, DIGITS)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if v.has(sp.zoo, sp.oo, -sp.oo, sp.nan) or not v.is_number:
        return None
    re_, im = v.as_real_imag()
    if abs(im) > 1e-20 * max(1, abs(re_)):
        return None
    try:
        return sp.Float(re_, DIGITS)
    except TypeError:
        return None


def _close(a, b):
    return abs(a - b) <= 1e-15 * max(1, abs(a), abs(b))


def _f(v):
    return float(f"{float(v):.10g}")


def _nice(x):
    x = float(x)
    for d in (1, 2, 3, 4, 6, 8, 12):
        if abs(x * d - round(x * d)) < 1e-9:
            n = round(x * d)
            return f"{n}" if d == 1 else f"{n}/{d}"
    return f"{x:.6g}"


def _has(tree, kind):
    return isinstance(tree, tuple) and any(n[0] == kind for n in walk(tree))


def _is_condition(sides):
    r"""i = j, k = 1, x = 0, N = 3, \sum_i y_i = 1: an inline relation that states a case or an
    assumption, not a step (it is listed in the report as read)."""
    def atom(t):
        return isinstance(t, tuple) and (t[0] == "num" or t[0] == "sym" and not t[2]
                                         or t[0] == "neg" and t[1][0] == "num")
    if any(isinstance(t, Exception) for t in sides):
        return False
    return all(atom(t) for t in sides[1:]) and (atom(sides[0]) or sides[0][0] == "sum")


def _mentions_vector(tree, ctx):
    for n in walk(tree):
        if n[0] == "sym" and not n[2] and n[1] in ctx.vector_names:
            return True
    return False


def _has_vector_by_vector(left, right, ctx):
    for t in (left, right):
        for n in walk(t):
            if n[0] == "deriv" and n[1][0] == "sym" and not n[1][2] and \
                    (n[1][1] in ctx.vector_names or (n[1][1] in ctx.defs and ctx.defs[n[1][1]].vector)) \
                    and n[2][0][0] == "sym" and not n[2][0][2] and n[2][0][1] in ctx.vector_names:
                return True
    return False


def _expanded(tree, ctx, seen=None):
    """The nodes of a tree and of the definitions it uses."""
    seen = set() if seen is None else seen
    if not isinstance(tree, tuple):
        return
    for n in walk(tree):
        yield n
        name = n[1] if n[0] in ("sym", "call") else None
        if name in ctx.defs and name not in seen and ctx.defs[name].body is not None:
            seen.add(name)
            yield from _expanded(ctx.defs[name].body, ctx, seen)


def _breakpoints(sp, a, b, symbols):
    """Where Abs, Max, Min, sign, Heaviside change and Piecewise conditions flip."""
    out = {}
    if len(symbols) != 1:
        return out
    x = symbols[0]
    found = set()
    for e in (a, b):
        for node in sp.preorder_traversal(e):
            args = []
            if isinstance(node, (sp.Abs, sp.sign, sp.Heaviside)):
                args = [node.args[0]]
            elif isinstance(node, (sp.Max, sp.Min)):
                args = [node.args[0] - r for r in node.args[1:]]
            elif isinstance(node, sp.Piecewise):
                args = [c.lhs - c.rhs for _, c in node.args if isinstance(c, sp.core.relational.Relational)]
            for g in args:
                try:
                    with budget(1.0):
                        sol = sp.solveset(g, x, domain=sp.Interval(-50, 50))
                except (OutOfTime, Exception):
                    continue
                if isinstance(sol, sp.FiniteSet):
                    found.update(float(s) for s in sol if s.is_real)
    if found:
        out[x] = sorted(found)[:6]
    return out


def _candidates(left, right, ctx):
    """(edited right side, what the edit says) for the usual mistakes."""
    out = []
    names = {"coth": ("tanh", "coth written for tanh"), "tan": ("tanh", "tan written for tanh "
             "(1 + tan² is the derivative of tan; tanh' = 1 − tanh²)"),
             "cosh": ("sinh", "cosh written for sinh"), "sinh": ("cosh", "sinh written for cosh"),
             "tanh": ("coth", "tanh written for coth")}
    renamed = []
    for fname, (to, why) in names.items():
        if any(n[0] == "call" and n[1] == fname for n in walk(right)):
            renamed.append((_rename_call(right, fname, to), why))
    out.extend(renamed)
    for base, base_why in [(right, None)] + renamed:
        for path, add in _paths(base, "add"):
            for k, term in enumerate(add[1]):
                flipped = term[1] if term[0] == "neg" else ("neg", term)
                new_add = ("add", add[1][:k] + (flipped,) + add[1][k + 1:])
                why = _sign_why(base, path, term, ctx)
                if base_why:
                    why = (base_why if "tanh'" in base_why else f"{base_why}, and {why}")
                out.append((_replace(base, path, new_add), why))
    for f, g, w in _log_derivatives(left):
        out.append((("mul", (right, ("deriv", g, (w,), True))),
                    f"(log f)' = f'/f: the inner derivative ∂({_show_tree(g)})/∂{_show_tree(w)} is missing"))
    def letters(t):
        return {i[1] for n in walk(t) if n[0] == "sym" for i in n[2] if i[0] == "sym"} | \
            {i[1] for n in walk(t) if n[0] == "delta" for i in n[1:] if i[0] == "sym"}
    lf, rf = _free_letters(left), _free_letters(right)
    for a in sorted(rf - lf):
        for b in sorted(lf - rf):
            out.insert(0, (_rename_index(right, a, b),
                           f"the result has the wrong index: {a} where the left side has {b}"))
    if len(lf) >= 2 and right[0] == "add":
        i, j = sorted(lf)[:2]
        for k, term in enumerate(right[1]):
            new = ("add", right[1][:k] + (("mul", (term, ("delta", ("sym", i, ()), ("sym", j, ())))),)
                   + right[1][k + 1:])
            out.append((new, f"a dropped Kronecker delta: the term {_show_tree(term)} holds only "
                             f"where {i} = {j} ({_show_tree(term)} δ_{i}{j})"))
    every = sorted(letters(left) | letters(right) | {n[1] for t in (left, right) for n in walk(t)
                                                      if n[0] in ("sum", "prod")})
    for path, node in _paths(right, "num"):
        if node[1] == 1:
            for a, b in itertools.combinations(every, 2):
                delta = ("delta", ("sym", a, ()), ("sym", b, ()))
                out.append((_replace(right, path, delta),
                            f"a dropped Kronecker delta: 1 where δ_{a}{b} belongs"))
    free = sorted(letters(left) | letters(right))
    for path, node in _paths(right, "sym"):
        for k, i in enumerate(node[2]):
            if i[0] != "sym":
                continue
            for other in free:
                if other != i[1]:
                    new = ("sym", node[1], node[2][:k] + (("sym", other, ()),) + node[2][k + 1:])
                    out.append((_replace(right, path, new),
                                f"a wrong index: {node[1]}_{i[1]} should be {node[1]}_{other}"))
    for path, node in _paths(right, "sum"):
        body_letters = sorted({i[1] for n in walk(node[3]) if n[0] == "sym" for i in n[2] if i[0] == "sym"}
                              | {i[1] for n in walk(node[3]) if n[0] == "delta" for i in n[1:] if i[0] == "sym"})
        for other in body_letters:
            if other != node[1]:
                out.append((_replace(right, path, ("sum", other, node[2], node[3])),
                            f"the sum runs over the wrong index: Σ_{node[1]} should be Σ_{other}"))
    return out[:40]


def _free_letters(tree):
    """Index letters not bound by a sum (approximately: bound ones are those of sums)."""
    used, bound = set(), set()
    for n in walk(tree):
        if n[0] == "sym":
            used |= {i[1] for i in n[2] if i[0] == "sym"}
        elif n[0] == "delta":
            used |= {i[1] for i in n[1:] if i[0] == "sym"}
        elif n[0] in ("sum", "prod"):
            bound.add(n[1])
    return used - bound


def _rename_index(tree, old, new):
    """Every index old (outside sums over old) renamed to new."""
    if not (isinstance(tree, tuple) and tree and isinstance(tree[0], str)):
        return tree
    k = tree[0]
    if k == "sym":
        return ("sym", tree[1], tuple(("sym", new, ()) if i == ("sym", old, ()) else i for i in tree[2]))
    if k == "delta":
        return ("delta",) + tuple(("sym", new, ()) if i == ("sym", old, ()) else i for i in tree[1:])
    if k in ("sum", "prod") and tree[1] == old:
        return tree
    out = [k]
    for part in tree[1:]:
        if isinstance(part, tuple) and part and isinstance(part[0], str):
            out.append(_rename_index(part, old, new))
        elif isinstance(part, tuple):
            out.append(tuple(_rename_index(p, old, new) if isinstance(p, tuple) and p and isinstance(p[0], str)
                             else tuple(_rename_index(q, old, new) for q in p) if isinstance(p, tuple) else p
                             for p in part))
        else:
            out.append(part)
    return tuple(out)


def _sign_why(right, path, term, ctx):
    parent = _get(right, path[:-1]) if path else None
    if parent is not None and isinstance(parent[0], str) and parent[0] == "div" and path[-1] == 1 \
            and _is_square(parent[2]):
        return "the quotient rule has a minus: (f/g)' = (f'g − fg')/g²"
    text = _show_tree(term[1] if term[0] == "neg" else term)
    if any(n[0] == "call" and n[1] in ("tanh", "tan") for n in walk(term)):
        return "a sign: tanh' = 1 − tanh² (1 + tan² is the derivative of tan)"
    return f"a sign: the term {text} has the wrong sign"


def _is_square(node):
    return node[0] == "pow" and node[2] == ("num", docmath.Fraction(2))


def _log_derivatives(tree):
    """(log node, its argument, the variable) for each ∂/∂w of something with log(g)."""
    out = []
    for n in walk(tree):
        if n[0] == "deriv" and n[1] is not None:
            for m in walk(n[1]):
                if m[0] == "call" and m[1] in ("log", "ln") and m[2]:
                    out.append((m, m[2][0], n[2][0]))
    return out[:3]


def _paths(tree, kind, path=()):
    """(path, node) of every node of a kind; a path is the sequence of child positions."""
    if not (isinstance(tree, tuple) and tree and isinstance(tree[0], str)):
        return
    if tree[0] == kind:
        yield path, tree
    for k, part in enumerate(tree[1:], start=1):
        if isinstance(part, tuple) and part:
            if isinstance(part[0], str):
                yield from _paths(part, kind, path + (k,))
            else:
                for m, p in enumerate(part):
                    if isinstance(p, tuple) and p and isinstance(p[0], str):
                        yield from _paths(p, kind, path + (k, m))


def _get(tree, path):
    node = tree
    for p in path:
        node = node[p]
    return node


def _replace(tree, path, new):
    if not path:
        return new
    k = path[0]
    part = tree[k]
    if isinstance(part, tuple) and part and isinstance(part[0], str):
        return tree[:k] + (_replace(part, path[1:], new),) + tree[k + 1:]
    m = path[1]
    inner = part[:m] + (_replace(part[m], path[2:], new),) + part[m + 1:]
    return tree[:k] + (inner,) + tree[k + 1:]


def _rename_call(tree, old, new):
    if not (isinstance(tree, tuple) and tree and isinstance(tree[0], str)):
        return tree
    if tree[0] == "call" and tree[1] == old:
        args = tuple(_rename_call(a, old, new) for a in tree[2]) if tree[2] else tree[2]
        return ("call", new, args, tree[3])
    out = [tree[0]]
    for part in tree[1:]:
        if isinstance(part, tuple) and part and isinstance(part[0], str):
            out.append(_rename_call(part, old, new))
        elif isinstance(part, tuple):
            out.append(tuple(_rename_call(p, old, new) if isinstance(p, tuple) and p and isinstance(p[0], str)
                             else tuple(_rename_call(q, old, new) for q in p) if isinstance(p, tuple) else p
                             for p in part))
        else:
            out.append(part)
    return tuple(out)


def _show_tree(node):
    """A short plain rendering of a tree (for hints)."""
    k = node[0]
    if k == "num":
        return str(node[1])
    if k == "sym":
        return node[1] + ("_" + "".join(_show_tree(i) for i in node[2]) if node[2] else "")
    if k == "call":
        args = ", ".join(_show_tree(a) for a in node[2]) if node[2] else ""
        return f"{node[1]}{chr(39) * node[3]}({args})"
    if k == "pow":
        return f"{_paren(node[1])}^{_paren(node[2])}"
    if k == "neg":
        return f"-{_paren(node[1])}"
    if k == "add":
        return " + ".join(_show_tree(t) for t in node[1]).replace("+ -", "- ")
    if k == "mul":
        return " ".join(_paren(t) for t in node[1])
    if k == "div":
        return f"{_paren(node[1])}/{_paren(node[2])}"
    if k == "delta":
        return f"δ_{_show_tree(node[1])}{_show_tree(node[2])}"
    if k == "sum":
        return f"Σ_{node[1]} {_paren(node[3])}"
    if k == "T":
        return f"{_paren(node[1])}^T"
    if k == "deriv":
        return f"∂{_paren(node[1])}/∂{_show_tree(node[2][0])}"
    return k


def _paren(node):
    s = _show_tree(node)
    return f"({s})" if node[0] in ("add", "neg", "div") else s


# -- the report ----------------------------------------------------------------------------

class DocumentReport:
    """The verdicts of one document: ``steps``, ``equations``, ``exit_code``, ``to_json()``,
    and renderings for the terminal (``str``), Markdown and HTML (Jupyter shows them)."""

    def __init__(self, equations, definitions, facts, out_of_time=False, path=None):
        self.equations = equations
        self.definitions = definitions
        self.facts = facts
        self.out_of_time = out_of_time
        self.path = path
        self.conditions = []

    @property
    def steps(self):
        return [s for eq in self.equations for s in eq.steps]

    @property
    def first_wrong(self):
        return next((s for s in self.steps if s.verdict == "wrong"), None)

    def counts(self):
        c = {"correct": 0, "wrong": 0, "not checked": 0}
        for s in self.steps:
            c[s.verdict] += 1
        return c

    @property
    def exit_code(self):
        if any(s.verdict == "wrong" for s in self.steps):
            return 1
        if self.out_of_time:
            return 3
        return 0

    def to_dict(self):
        return {"file": self.path, "steps": [s.to_dict() for s in self.steps],
                "conditions": list(self.conditions),
                "definitions": [{"name": d.name, "line": d.line, "text": d.text,
                                 "understood": d.body is not None, "why": d.why or None}
                                for d in self.definitions],
                "assumptions": list(self.facts), "counts": self.counts()}

    def to_json(self, indent=2):
        import json
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def __str__(self):
        from .report import render_text
        return render_text(self)

    def _repr_markdown_(self):
        from .report import render_markdown
        return render_markdown(self)

    def _repr_html_(self):
        from .report import render_html
        return render_html(self, standalone=False)

    def to_html(self):
        from .report import render_html
        return render_html(self, standalone=True)


def check_document(text, path=None, step_seconds=STEP_SECONDS, total_seconds=None, seed=0):
    """Check every step of a derivation document (its text); returns a DocumentReport."""
    if not isinstance(text, str):
        raise TypeError(f"check_document: expected the document's text as a str, got {type(text).__name__}")
    report = DocumentChecker(text, step_seconds, total_seconds, seed).run()
    report.path = path
    return report


def check_file(path, **kw):
    """check_document on a file (UTF-8)."""
    from pathlib import Path
    p = Path(path)
    if p.stat().st_size > MAX_BYTES:
        raise ValueError(f"{path}: {p.stat().st_size:,} bytes; a derivation document is at most "
                         f"{MAX_BYTES:,} bytes")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    return check_document(text, path=str(path), **kw)
