r"""Read math as people write it: plain math and LaTeX, into one safe tree.

Public API::

    parse(text, *, symbols=None) -> sympy.Expr
        One expression, in plain math (``2x^2``, ``σ(x)(1-σ(x))``, ``ln x``,
        ``x if x > 0 else 0``, ``{x, x>0; 0, otherwise}``) or LaTeX
        (``\frac{1}{1+e^{-x}}``, ``\tanh^2(x)``, ``\sum_{k=1}^{N} k x^k``,
        ``\begin{cases} x & x > 0 \\ 0 & \text{otherwise} \end{cases}``).
        ``symbols`` maps names to SymPy symbols to use; every other name
        becomes ``sympy.Symbol(name, real=True)``.  Derivative notation
        (``\frac{d}{dx} f``, ``f'(x)``, ``\frac{\partial L}{\partial o_j}``)
        becomes an unevaluated ``sympy.Derivative``; a subscript that is an
        index (``p_i``, ``x_{ij}``) becomes ``sympy.Indexed``; ``\delta_{ij}``
        ``KroneckerDelta``; an undefined one-letter function (``f(x)``) a
        ``sympy.Function``.
    parse_relation(text, *, symbols=None) -> list[sympy.Expr]
        A chain ``a = b = c`` split at its top-level ``=`` signs (one element
        when there is none): ``parse_relation(r"\frac{d}{dx}\tanh x = 1 - \tanh^2 x")``
        is ``[Derivative(tanh(x), x), 1 - tanh(x)**2]``.
    parse_tree(text, what="expression", *, undefined_functions=False) -> ast.expr
        The same text as a validated Python ``ast`` expression tree (what
        ``handydl.check.expr`` evaluates with NumPy); ``split_relation(text)``
        gives the top-level pieces of a chain as text.
    MathSyntaxError (a ValueError, the same class as ``check.expr.ExprError``):
        names the token, its column, and a suggested fix.

Why a parser of our own, and not SymPy's ``parse_latex`` (lark or ANTLR
backend) or ``latex2sympy2-extended``: both build SymPy objects while they
parse, so ``9^{9^{9}}`` is computed (an integer of 370 million digits) before
any size check can refuse it, and they call SymPy constructors on whatever
names the text holds; neither reads everyday plain math (``2x``,
``σ(x)(1-σ(x))``, ``tanh^2 x``, ``x if x > 0 else 0``), and their errors are
grammar internals (``Unexpected token Token('RBRACE', ...)``).  A small
recursive-descent parser over one token stream reads both notations, builds
nothing but ``ast`` nodes from a fixed set, bounds length, nesting, node
count and exponent sizes *before* anything is computed, and reports the
token and column with a fix.  No text is ever passed to ``eval``,
``sympify`` or ``parse_expr``: the tree is walked by the whitelist of
``check.expr`` and translated node by node.

Conventions: ``^`` and ``**`` are powers; ``=`` inside a condition is ``==``;
``×``, ``·``, ``\cdot``, ``\times`` and ``\odot`` multiply elementwise (``@``
is the matrix product); ``X^T``/``X^\top`` transpose; ``σ(x)`` and
``\sigma(x)`` are the logistic sigmoid (``σ`` alone is a name); ``e`` is
Euler's number; indices are 0-based and a sum without bounds
(``\sum_i p_i``) runs over the whole axis.  In LaTeX (text with a ``\``),
a run of letters that is not a known function or name is a product of
one-letter names (``ax`` is ``a x``); in plain math it is one name.
"""
from __future__ import annotations

import ast
import math
import re
import unicodedata
from dataclasses import dataclass

from .expr import ExprError

MathSyntaxError = ExprError

MAX_CHARS = 4000        # longer text is refused before it is read
MAX_DEPTH = 40          # nesting of parentheses, groups, calls and signs
MAX_NODES = 2500        # nodes of the finished tree
MAX_EXPONENT = 1000     # |n| of a constant exponent
MAX_DIGITS = 300        # digits of a constant power such as 10^300
MAX_RANGE = 10_000      # terms of a sum or product with numeric bounds

INDEX_LETTERS = set("ijklmn")

GREEK = {
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "ϵ": "epsilon",
    "ζ": "zeta", "η": "eta", "θ": "theta", "ι": "iota", "κ": "kappa", "λ": "lam", "μ": "mu",
    "ν": "nu", "ξ": "xi", "π": "pi", "ρ": "rho", "σ": "sigma", "τ": "tau", "υ": "upsilon",
    "φ": "phi", "ϕ": "phi", "χ": "chi", "ψ": "psi", "ω": "omega",
    "Γ": "Gamma", "Δ": "Delta", "Θ": "Theta", "Λ": "Lambda", "Ξ": "Xi", "Φ": "Phi", "Ψ": "Psi",
    "Ω": "Omega",
}
LATEX_GREEK = {v: v for v in GREEK.values()} | {"lambda": "lam", "varepsilon": "epsilon",
                                                 "varphi": "phi", "vartheta": "theta"}
UNICODE_OPS = {
    "−": "-", "–": "-", "·": "*", "⋅": "*", "×": "*", "∗": "*", "÷": "/", "⊙": "*",
    "≤": "<=", "≥": ">=", "≠": "!=", "√": "\\sqrt ", "∑": "\\sum", "Σ": "\\sum", "∏": "\\prod",
    "∂": "\\partial ", "′": "'", "″": "''", "⊤": "\\top ", "ᵀ": "^T", "∞": "\\infty ",
    "⁄": "/", "\u00a0": " ", "\u2009": " ", "\u202f": " ",
}
SUPERSCRIPTS = {"⁰": "0", "¹": "1", "²": "2", "³": "3", "⁴": "4", "⁵": "5", "⁶": "6", "⁷": "7",
                "⁸": "8", "⁹": "9", "⁻": "-", "⁺": "+"}

# function names as people spell them -> the vocabulary of check.expr
ALIASES = {"ln": "log", "arcsin": "asin", "arccos": "acos", "arctan": "atan", "arsinh": "asinh",
           "arcosh": "acosh", "artanh": "atanh", "arcsinh": "asinh", "arccosh": "acosh",
           "arctanh": "atanh", "Sigmoid": "sigmoid", "ReLU": "relu", "GELU": "gelu", "SiLU": "silu",
           "ELU": "elu", "SELU": "selu", "CELU": "celu", "Softmax": "softmax", "Softplus": "softplus",
           "Mish": "mish", "LeakyReLU": "leaky_relu", "sgn": "sign"}
# LaTeX commands that are functions
LATEX_FUNCS = {"exp", "log", "ln", "sin", "cos", "tan", "cot", "sec", "csc", "sinh", "cosh", "tanh",
               "coth", "sech", "csch", "arcsin", "arccos", "arctan", "max", "min", "sgn", "erf",
               "det", "tr"}
SPACING = {",", ";", ":", "!", " ", "quad", "qquad", "displaystyle", "textstyle", "limits",
           "nolimits", "left", "right", "bigl", "bigr", "Bigl", "Bigr", "biggl", "biggr", "big",
           "Big", "bigg", "Bigg", "middle"}
LATEX_OPS = {"cdot": "*", "times": "*", "odot": "*", "ast": "*", "div": "/", "leq": "<=",
             "le": "<=", "geq": ">=", "ge": ">=", "neq": "!=", "ne": "!=", "lt": "<", "gt": ">",
             "lvert": "|", "rvert": "|", "vert": "|", "mid": "|", "land": "and", "lor": "or",
             "wedge": "and", "vee": "or", "lnot": "not", "neg": "not", "top": "T", "intercal": "T",
             "{": "{", "}": "}", "\\": "\\\\", "lbrace": "{", "rbrace": "}"}
LATEX_KNOWN = sorted(LATEX_FUNCS | set(LATEX_GREEK) | set(LATEX_OPS) | SPACING - {" "} |
                     {"frac", "dfrac", "tfrac", "sqrt", "sum", "prod", "partial", "infty", "pi",
                      "text", "mathrm", "operatorname", "mathbf", "boldsymbol", "mathit", "hat",
                      "bar", "tilde", "vec", "begin", "end", "sigma", "delta", "mathbb",
                      "textrm", "mbox"})

KEYWORDS = {"if", "else", "and", "or", "not", "otherwise", "for"}


@dataclass
class Tok:
    kind: str        # NUM NAME OP STR KW CMD EOF
    value: str
    pos: int


def _fail(text, pos, message, fix=""):
    where = f" at column {pos + 1}" if pos is not None and pos >= 0 else ""
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise ExprError(f"{message}{where} in {shown!r}" + (f"; {fix}" if fix else ""))


# -- text -> tokens -----------------------------------------------------------------------------

def _normalize(text):
    """Unicode operators, superscripts and Greek letters -> ASCII spellings."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch in SUPERSCRIPTS:                        # x²³ -> x^(23), x⁻¹ -> x^(-1)
            j = i
            while j < len(text) and text[j] in SUPERSCRIPTS:
                j += 1
            out.append("^(" + "".join(SUPERSCRIPTS[c] for c in text[i:j]) + ")")
            i = j
            continue
        if ch in UNICODE_OPS:
            out.append(UNICODE_OPS[ch])
        elif ch in GREEK:                            # a space only where a letter follows
            after = " " if i + 1 < len(text) and text[i + 1].isalnum() else ""
            out.append((" \\" if GREEK[ch] in ("sigma", "pi", "delta") else " ") + GREEK[ch] + after)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


_NUM = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IDENT = re.compile(r"_*[A-Za-z][A-Za-z0-9]*(?:_+[A-Za-z0-9]+)*_*(?!\{)")
_LETTERS = re.compile(r"[A-Za-z]+")
_OPS = ["**", "<=", ">=", "==", "!=", "->", "\\\\", "+", "-", "*", "/", "^", "@", "(", ")", "[",
        "]", "{", "}", ",", ";", "<", ">", "=", "|", "&", "_", "'", ".", ":", "!"]


def _braced(text, i):
    """(content, index after the closing brace) of the group opening at text[i] == '{'."""
    depth, j = 0, i
    while j < len(text):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j], j + 1
        j += 1
    _fail(text, i, "an unclosed '{'", "add the matching '}'")


def tokenize(text, latex=None):
    """Tokens of ``text`` (normalized); ``latex`` is guessed from a backslash."""
    if latex is None:
        latex = "\\" in text
    toks, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace() or ch in "$~":
            i += 1
            continue
        if ch == "\\":
            m = re.match(r"\\([A-Za-z]+|.)", text[i:])
            if not m:
                _fail(text, i, "a lone backslash")
            name, j = m.group(1), i + len(m.group(0))
            if name in ("text", "mathrm", "operatorname", "textrm", "mbox", "mathit", "mathbf",
                        "boldsymbol", "mathbb", "hat", "bar", "tilde", "vec", "begin", "end") \
                    and j < n and text[j:].lstrip().startswith("{"):
                j = text.index("{", j)
                content, j = _braced(text, j)
                toks.extend(_command_with_text(text, name, content.strip(), i))
                i = j
                continue
            if name in SPACING:                        # \left( -> (, \, -> nothing
                if name in ("left", "right", "middle") and text.startswith(".", j):
                    j += 1
                i = j
                continue
            if name in LATEX_OPS and LATEX_OPS[name] != "T":
                v = LATEX_OPS[name]
                toks.append(Tok("KW" if v in ("and", "or", "not") else "OP", v, i))
            else:
                toks.append(Tok("CMD", name, i))
            i = j
            continue
        if ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            m = _NUM.match(text, i)
            toks.append(Tok("NUM", m.group(0), i))
            i = m.end()
            continue
        m = (_LETTERS if latex else _IDENT).match(text, i) if ch.isascii() and (
            ch.isalpha() or ch == "_" and not latex) else None
        if m:
            word = m.group(0)
            toks.append(Tok("KW" if word in KEYWORDS else "NAME", word, i))
            i = m.end()
            continue
        if ch in "'\"" and not (ch == "'" and toks and _prime_position(toks[-1], text, i)):
            end = text.find(ch, i + 1)
            if end < 0:
                _fail(text, i, "an unclosed string")
            toks.append(Tok("STR", text[i + 1:end], i))
            i = end + 1
            continue
        for op in _OPS:
            if text.startswith(op, i):
                toks.append(Tok("OP", op, i))
                i += len(op)
                break
        else:
            uname = unicodedata.name(ch, "an unknown character")
            _fail(text, i, f"the character {ch!r} ({uname.lower()}) is not math handydl reads",
                  "write it in plain math (+ - * / ^, sqrt(x), a*b) or LaTeX")
    toks.append(Tok("EOF", "", n))
    return toks


def _prime_position(prev, text, i):
    """A ' right after a name, a ')' or another ' is a prime (f'(x)), not a string."""
    return i > 0 and not text[i - 1].isspace() and (
        prev.kind in ("NAME", "CMD") or prev.value in (")", "'", "}"))


def _command_with_text(text, name, content, pos):
    """\\text{if}, \\mathrm{ReLU}, \\hat{x}, \\begin{cases}: one token each."""
    if name in ("begin", "end"):
        if content not in ("cases", "dcases", "matrix", "pmatrix", "bmatrix"):
            _fail(text, pos, f"\\{name}{{{content}}} is not supported", "only \\begin{cases} ... \\end{cases}")
        if content != "cases" and content != "dcases":
            _fail(text, pos, "matrix literals are not supported",
                  "give arrays by name with --shape, and build matrices with eye, diag, outer")
        return [Tok("OP", "BEGIN" if name == "begin" else "END", pos)]
    if name in ("hat", "bar", "tilde", "vec"):
        base = content.lstrip("\\")
        base = LATEX_GREEK.get(base, base)
        if not re.fullmatch(r"[A-Za-z]+", base):
            _fail(text, pos, f"\\{name}{{{content}}}: expected a letter")
        return [Tok("NAME", base if name == "vec" else base + name, pos)]
    if name == "mathbb":
        if content == "1":
            return [Tok("NAME", "indicator", pos)]
        _fail(text, pos, f"\\mathbb{{{content}}} is not a value", "write the value itself")
    words = content.replace("\\ ", " ").replace("~", " ").split()
    if name in ("mathbf", "boldsymbol", "mathit") and len(words) == 1:
        w = words[0].lstrip("\\")
        return [Tok("NAME", LATEX_GREEK.get(w, w), pos)]
    if not words:
        return []
    out = []
    for w in words:
        w = w.strip(",.")
        if w in ("if", "otherwise", "else", "and", "or", "not", "for", "when", "where"):
            out.append(Tok("KW", {"when": "if", "where": "if"}.get(w, w), pos))
        elif w == "d":
            out.append(Tok("NAME", "d", pos))
        elif re.fullmatch(r"_*[A-Za-z][A-Za-z0-9_]*", w):
            out.append(Tok("NAME", w, pos))            # \mathrm{ReLU}, \operatorname{softmax}
        elif w:
            out.extend(t for t in tokenize(w, latex=True)[:-1])
    return out


# -- tokens -> ast ------------------------------------------------------------------------------

def _vocabulary():
    from .expr import NUMERIC
    return set(NUMERIC)


class _Parser:
    def __init__(self, text, what, symbols=(), undefined_functions=False):
        self.text, self.what = text, what
        self.latex = "\\" in text
        self.vocab = _vocabulary()
        self.symbols = set(symbols)
        self.undefined_functions = undefined_functions
        self.toks = self._split_words(tokenize(text, self.latex))
        self.i = 0
        self.depth = 0
        self.bound = []                      # summation indices in scope
        self.in_condition = False            # inside a condition '=' means '=='

    # - tokens
    def _split_words(self, toks):
        """In LaTeX, a letter run that is no known word is a product of letters."""
        if not self.latex:
            return toks
        out = []
        for t in toks:
            if t.kind == "NAME" and len(t.value) > 1 and t.value.isalpha() and not self._word(t.value):
                out.extend(Tok("NAME", c, t.pos + k) for k, c in enumerate(t.value))
            else:
                out.append(t)
        return out

    def _word(self, w):
        return (w in self.vocab or w in ALIASES or w.lower() in self.vocab or w in self.symbols
                or w in ("pi", "indicator") or w.endswith(("hat", "bar", "tilde")))

    @property
    def tok(self):
        return self.toks[self.i]

    def peek(self, k=1):
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self):
        t = self.tok
        self.i += 1
        return t

    def at(self, *values, kind=None):
        t = self.tok
        return t.kind in (kind or ("OP", "KW")) and t.value in values

    def expect(self, value, fix=""):
        if not self.at(value):
            self.error(f"expected {value!r}", fix)
        return self.next()

    def error(self, message, fix="", tok=None):
        t = tok or self.tok
        found = "the end of the text" if t.kind == "EOF" else repr(t.value if t.kind != "CMD" else "\\" + t.value)
        _fail(self.text, t.pos, f"{self.what}: {message}, found {found}", fix)

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            _fail(self.text, self.tok.pos, f"{self.what}: nested more than {MAX_DEPTH} levels deep",
                  "split it into named parts (--let NAME = ...)")

    def leave(self):
        self.depth -= 1

    # - grammar, lowest precedence first
    def parse(self):
        node = self.ternary()
        if self.tok.kind != "EOF":
            t = self.tok
            if t.value == "=":
                self.error("'=' makes a relation, not an expression",
                           "give the two sides separately, or check the chain with parse_relation")
            self.error("unexpected token", _hint(t))
        return node

    def ternary(self):
        body = self.disjunction()
        if self.at("if", kind=("KW",)):
            self.next()
            test = self.disjunction()
            if self.at("else", kind=("KW",)) or self.at(",") and self.peek().value == "else":
                if self.at(","):
                    self.next()
                self.next()
                orelse = self.ternary()
            elif self.at("otherwise", kind=("KW",)):
                self.error("'otherwise' needs a value before it", "write: x if x > 0 else 0")
            else:
                self.error("'if' without 'else'", "write: x if x > 0 else 0")
            body = ast.IfExp(test=test, body=body, orelse=orelse)
        return body

    def disjunction(self):
        left = self.conjunction()
        while self.at("or"):
            self.next()
            left = ast.BoolOp(op=ast.Or(), values=[left, self.conjunction()])
        return left

    def conjunction(self):
        left = self.negation()
        while self.at("and", ","):
            if self.at(","):         # "0 < x, x < 1" inside a condition only: see condition()
                break
            self.next()
            left = ast.BoolOp(op=ast.And(), values=[left, self.negation()])
        return left

    def negation(self):
        if self.at("not"):
            self.next()
            return ast.UnaryOp(op=ast.Not(), operand=self.negation())
        return self.comparison()

    CMP = {"<": ast.Lt, "<=": ast.LtE, ">": ast.Gt, ">=": ast.GtE, "==": ast.Eq, "!=": ast.NotEq}

    def comparison(self, allow_single_eq=False):
        left = self.additive()
        ops, rights = [], []
        while self.at(*self.CMP) or (allow_single_eq or self.in_condition) and self.at("="):
            op = self.next().value
            ops.append(self.CMP["==" if op == "=" else op]())
            rights.append(self.additive())
        if ops:
            return ast.Compare(left=left, ops=ops, comparators=rights)
        return left

    def additive(self):
        terms = [(ast.Add(), self.multiplicative())]
        while self.at("+", "-"):
            op = ast.Add() if self.next().value == "+" else ast.Sub()
            terms.append((op, self.multiplicative()))
        return _chain(terms)

    def multiplicative(self):
        factors = [(ast.Mult(), self.unary())]
        while True:
            if self.at("*", "/", "@"):
                op = {"*": ast.Mult, "/": ast.Div, "@": ast.MatMult}[self.next().value]()
                factors.append((op, self.unary()))
            elif self.starts_operand():           # implicit product: 2x, σ(x)(1 - σ(x))
                factors.append((ast.Mult(), self.power()))
            else:
                return _chain(factors)

    def starts_operand(self):
        t = self.tok
        if t.kind in ("NUM", "NAME", "STR"):
            return True
        if t.kind == "CMD":                 # spacing and operators never reach here (see tokenize)
            return t.value not in ("top", "intercal")
        return t.kind == "OP" and (t.value == "(" or (t.value == "{" and self.latex) or t.value == "BEGIN")

    def unary(self):
        if self.at("-", "+"):
            op = ast.USub() if self.next().value == "-" else ast.UAdd()
            self.enter()
            node = ast.UnaryOp(op=op, operand=self.unary())
            self.leave()
            return node
        return self.power()

    def power(self):
        base = self.postfix(self.primary())
        if self.at("^", "**"):
            self.next()
            if self.tok.kind == "NAME" and self.tok.value == "T" or self.tok.kind == "CMD" and self.tok.value in ("top", "intercal"):
                self.next()
                return self.postfix(ast.Attribute(value=base, attr="T"))
            exponent = self.exponent()
            if isinstance(exponent, ast.Attribute) and exponent.attr == "T" and exponent.value is None:
                return ast.Attribute(value=base, attr="T")
            return ast.BinOp(left=base, op=ast.Pow(), right=exponent)
        return base

    def exponent(self):
        """The exponent after ^: a group {..}, a signed power (right-associative)."""
        if self.at("{") :
            g = self.group()
            return g
        if self.at("-", "+"):
            op = ast.USub() if self.next().value == "-" else ast.UAdd()
            return ast.UnaryOp(op=op, operand=self.exponent())
        if self.latex and self.tok.kind == "NUM" and len(self.tok.value) > 1 and self.tok.value.isdigit():
            # TeX reads one character: e^23 is e^2 3; people mean e^{23}: refuse the guess
            self.error("a TeX exponent of several digits needs braces", f"write ^{{{self.tok.value}}}")
        return self.power()

    def group(self):
        """{ ... } in LaTeX; T / \\top inside means the transpose."""
        self.expect("{")
        if (self.tok.kind == "NAME" and self.tok.value == "T" or self.tok.kind == "CMD" and self.tok.value in ("top", "intercal")) \
                and self.peek().value == "}":
            self.next()
            self.next()
            return ast.Attribute(value=None, attr="T")
        self.enter()
        node = self.ternary()
        self.leave()
        self.expect("}", "close the group with '}'")
        return node

    def postfix(self, node):
        while True:
            if self.at("["):
                self.next()
                idx = [self.ternary()]
                while self.at(","):
                    self.next()
                    idx.append(self.ternary())
                self.expect("]")
                node = ast.Subscript(value=node, slice=idx[0] if len(idx) == 1 else ast.Tuple(elts=idx))
            elif self.at(".") and self.peek().kind in ("NAME", "KW"):
                self.next()
                attr = self.next()
                node = ast.Attribute(value=node, attr=attr.value)
                if self.at("(") and attr.value != "T":
                    self.error(f"calling {ast.unparse(node)!r} is not allowed",
                               "only functions of the vocabulary, called by name", attr)
                if attr.value != "T":
                    self.error(f"the attribute '.{attr.value}' is not allowed",
                               "only .T, the transpose", attr)
            elif self.at("_") and isinstance(node, ast.Name):
                node = self.subscript(node)
            else:
                return node

    def subscript(self, base):
        """x_i, x_{ij} -> indexing; x_1, W_{out} -> the name x_1; \\delta_{ij} -> [i == j]."""
        self.next()
        if self.at("{"):
            start = self.i
            depth = 0
            while True:
                t = self.next()
                if t.kind == "EOF":
                    self.error("an unclosed '{'", "add '}'", t)
                depth += t.value == "{" and t.kind == "OP"
                depth -= t.value == "}" and t.kind == "OP"
                if depth == 0:
                    break
            inner = self.toks[start + 1:self.i - 1]
        else:
            inner = [self.next()]
        return _subscripted(self, base, inner)

    def primary(self):
        t = self.tok
        if t.kind == "NUM":
            self.next()
            return _number(self, t)
        if t.kind == "STR":
            self.next()
            return ast.Constant(value=t.value)
        if t.kind == "NAME":
            return self.name()
        if t.kind == "CMD":
            return self.command()
        if t.kind == "OP":
            if t.value == "(":
                self.next()
                self.enter()
                node = self.ternary()
                if self.at(","):           # (a, b): only as function arguments
                    self.error("a tuple is not a value", "use commas only between a function's arguments")
                self.leave()
                self.expect(")", "close the parenthesis")
                return node
            if t.value == "{":
                return self.brace()
            if t.value == "|":
                self.next()
                self.enter()
                inner = self.ternary()
                self.leave()
                self.expect("|", "close the absolute value with '|'")
                return ast.Call(func=ast.Name(id="abs"), args=[inner], keywords=[])
            if t.value == "BEGIN":
                return self.cases_env()
            if t.value == "[":
                self.error("a list '[...]' is not allowed", "write the value itself; arrays are given by name")
        if t.kind == "KW":
            self.error(f"the word {t.value!r} needs a value before it",
                       "write: x if x > 0 else 0, or {x, x > 0; 0, otherwise}")
        if t.kind == "EOF":
            self.error("the expression ends too early", "complete it")
        self.error("unexpected token", _hint(t))

    def brace(self):
        """LaTeX group {..}, or plain-math cases {x, x > 0; 0, otherwise}."""
        start = self.i
        self.next()
        depth, j, cases = 1, self.i, False
        while j < len(self.toks) and depth:
            v = self.toks[j]
            if v.kind == "OP" and v.value in ("{", "(", "["):
                depth += 1
            elif v.kind == "OP" and v.value in ("}", ")", "]"):
                depth -= 1
            elif depth == 1 and v.kind == "OP" and v.value in (",", ";"):
                cases = True
            j += 1
        if not cases:
            self.i = start
            return self.group()
        rows = []
        while True:
            value = self.ternary()
            if self.at(","):
                self.next()
            if self.at("if"):
                self.next()
            if self.at("otherwise", "else"):
                self.next()
                rows.append((value, None))
            else:
                rows.append((value, self.condition()))
            if self.at(";"):
                self.next()
                continue
            self.expect("}", "separate cases with ';' and close them with '}'")
            break
        return _piecewise(self, rows, self.toks[start])

    def cases_env(self):
        """\\begin{cases} value & condition \\\\ ... \\end{cases}"""
        begin = self.next()
        rows = []
        while not self.at("END"):
            value = self.ternary()
            if self.at(","):
                self.next()
            if self.at("&"):
                self.next()
            else:
                self.error("a case needs '&' between its value and its condition",
                           r"write: x & x > 0 \\ 0 & \text{otherwise}")
            if self.at(","):
                self.next()
            if self.at("if", "for"):
                self.next()
            if self.at("otherwise", "else"):
                self.next()
                rows.append((value, None))
            else:
                rows.append((value, self.condition()))
            if self.at(",", "."):
                self.next()
            if self.at("\\\\"):
                self.next()
            elif not self.at("END"):
                self.error("expected '\\\\' between cases or \\end{cases}")
        self.next()
        return _piecewise(self, rows, begin)

    def condition(self):
        was, self.in_condition = self.in_condition, True
        try:
            node = self.disjunction()
            while self.at(",") and self.peek().kind not in ("KW",) and self._comma_condition():
                self.next()
                node = ast.BoolOp(op=ast.And(), values=[node, self.disjunction()])
        finally:
            self.in_condition = was
        return node

    def _comma_condition(self):
        """'0 < x, x < 1' (two conditions) rather than the next case's value."""
        j, depth = self.i + 1, 0
        while j < len(self.toks):
            t = self.toks[j]
            if t.kind == "OP" and t.value in ("(", "[", "{"):
                depth += 1
            elif t.kind == "OP" and t.value in (")", "]", "}") and depth:
                depth -= 1
            elif depth == 0 and t.kind == "OP" and t.value in ("<", ">", "<=", ">=", "!=", "==", "="):
                return True
            elif depth == 0 and (t.kind == "EOF" or t.value in (";", "\\\\", "END", "}", ",", "&")):
                return False
            j += 1
        return False

    # - names and calls
    def name(self):
        t = self.next()
        word = t.value
        if word in _PYTHON_WORDS or word.startswith("_"):
            _fail(self.text, t.pos, f"{self.what}: the name {word!r} is not allowed",
                  "math only: numbers, variables and the functions of the vocabulary")
        if word == "d" and self.at("/") and self.peek().kind == "NAME" and self.peek().value.startswith("d") \
                and len(self.peek().value) > 1:
            self.next()
            var = self.next().value[1:]
            return self.derivative_of(ast.Name(id=var), 1, None, t)
        if word == "d" and self.latex and self.at("/") and self.peek().value == "d":
            self.next()
            self.next()
            var = self.next()
            return self.derivative_of(ast.Name(id=var.value), 1, None, t)
        fname = self.function_name(word)
        if fname is not None and (self.at("(", "^", "'") or fname in _FUNCS_NO_PAREN
                                  and self.tok.kind in ("NAME", "NUM", "CMD")):
            return self.call(fname, t)
        if word in ("pi", "e") and not self.at("("):
            return ast.Name(id=word)
        if "_" in word and not self.latex:
            base, sub = word.split("_", 1)
            inner = [Tok("NAME", c, t.pos) for c in sub] if sub.isalpha() and len(sub) <= 3 else \
                [Tok("NUM" if sub.isdigit() else "NAME", sub, t.pos)]
            return _subscripted(self, ast.Name(id=base), inner)
        if self.at("'") and self.peek().value == "(":
            return self.prime_call(word, t)
        if self.at("(") and self.undefined_functions and len(word) == 1 and word in "fghFGHLuvyz":
            return self.call(word, t)
        if self.at("(") and len(word) > 1 and word not in self.symbols and fname is None:
            from .expr import VOCABULARY
            close = _close_words(word, VOCABULARY)
            self.error(f"unknown function {word!r}",
                       (f"did you mean {close}? " if close else "") + "known: " + ", ".join(VOCABULARY), t)
        return ast.Name(id=word)

    def function_name(self, word):
        if word in ALIASES:
            return ALIASES[word]
        if word in self.symbols:
            return None
        if word in self.vocab:
            return word
        if len(word) > 1 and word.lower() in self.vocab:
            return word.lower()
        return None

    def call(self, fname, tok):
        """f(args), f^2(x) = f(x)^2, f'(x), and (LaTeX) \\sin x without parentheses."""
        order = 0
        while self.at("'"):
            self.next()
            order += 1
        power = None
        if self.at("^"):
            self.next()
            power = self.exponent()
            if isinstance(power, ast.UnaryOp) and isinstance(power.op, ast.USub) and \
                    isinstance(power.operand, ast.Constant) and power.operand.value == 1:
                self.error(f"{fname}^(-1) is ambiguous (inverse function or 1/{fname}?)",
                           f"write a{fname}(x) for the inverse or 1/{fname}(x)", tok)
        braced = False
        if self.at("("):
            args = self.arguments()
        elif self.latex and self.at("{") and fname in _FUNCS_NO_PAREN:
            # \log{\left(x\right)}: the braces hold the whole argument, so a power
            # after them is the function's, as SymPy's latex() prints log(x)**2
            args, braced = [self.group()], True
        else:
            if fname not in _FUNCS_NO_PAREN:
                self.error(f"{fname} needs its argument in parentheses", f"write {fname}(x)")
            args = [self.implicit_argument()]
        node = ast.Call(func=ast.Name(id=fname), args=args, keywords=[])
        if order:
            node = self.prime(node, fname, order, tok)
        if power is not None:
            node = ast.BinOp(left=node, op=ast.Pow(), right=power)
        if braced and self.at("^"):
            if power is not None:
                self.error(f"two powers of {fname}", f"write \\{fname}^{{n}}{{x}} or \\{fname}{{x}}^{{n}}", tok)
            self.next()
            node = ast.BinOp(left=node, op=ast.Pow(), right=self.exponent())
        return node

    def implicit_argument(self):
        """\\sin 2x, \\ln x: the product that follows, up to the next function or operator."""
        node = self.unary() if self.at("-") else self.power()
        while self.starts_operand() and not self._starts_function():
            node = ast.BinOp(left=node, op=ast.Mult(), right=self.power())
        return node

    def _starts_function(self):
        t = self.tok
        if t.kind == "CMD":
            return t.value in LATEX_FUNCS or t.value in ("sigma", "frac", "dfrac", "tfrac", "sum", "prod")
        return t.kind == "NAME" and self.function_name(t.value) is not None

    def arguments(self):
        self.expect("(")
        self.enter()
        args = []
        if not self.at(")"):
            args.append(self.ternary())
            while self.at(","):
                self.next()
                args.append(self.ternary())
        self.leave()
        self.expect(")", "close the function's parenthesis")
        return args

    def prime_call(self, word, tok):
        """f'(x) for a function f that is not in the vocabulary."""
        order = 0
        while self.at("'"):
            self.next()
            order += 1
        args = self.arguments()
        if not self.undefined_functions:
            self.error(f"{word}' is the derivative of an undefined function {word!r}",
                       "write the function itself, e.g. tanh'(x) or \\frac{d}{dx} f", tok)
        return self.prime(ast.Call(func=ast.Name(id=word), args=args, keywords=[]), word, order, tok)

    def prime(self, call, fname, order, tok):
        if len(call.args) != 1 or not isinstance(call.args[0], ast.Name):
            self.error(f"{fname}' is read at a variable only, as {fname}'(x)",
                       f"write \\frac{{d}}{{dx}} {fname}(...) for a composite", tok)
        return ast.Call(func=ast.Name(id="diff"), args=[call, call.args[0], ast.Constant(value=order)],
                        keywords=[])

    def derivative_of(self, var, order, operand, tok):
        if operand is None:
            if self.tok.kind == "EOF" or self.at("=", ")", "}"):
                self.error("d/dx needs the function after it", "write \\frac{d}{dx} f(x) or d/dx (x^2)")
            operand = self.multiplicative()
        return ast.Call(func=ast.Name(id="diff"), args=[operand, var, ast.Constant(value=order)], keywords=[])

    # - LaTeX commands
    def command(self):
        t = self.next()
        c = t.value
        if c in ("frac", "dfrac", "tfrac"):
            return self.fraction(t)
        if c == "sqrt":
            root = None
            if self.at("["):
                self.next()
                root = self.ternary()
                self.expect("]")
            arg = self.group() if self.at("{") else self.power()
            if root is None:
                return ast.Call(func=ast.Name(id="sqrt"), args=[arg], keywords=[])
            return ast.BinOp(left=arg, op=ast.Pow(), right=ast.BinOp(left=ast.Constant(value=1),
                                                                     op=ast.Div(), right=root))
        if c in ("sum", "prod"):
            return self.big_operator(c, t)
        if c == "sigma" and (self.at("(", "'") or self.at("^") and self.peek(2).value == "("):
            return self.call("sigmoid", t)
        if c == "delta" and self.at("_"):
            return self.postfix(ast.Name(id="delta"))
        if c in LATEX_GREEK:
            name = LATEX_GREEK[c]
            return ast.Name(id="pi" if name == "pi" else name)
        if c in LATEX_FUNCS:
            return self.call(ALIASES.get(c, {"sgn": "sign"}.get(c, c)), t)
        if c == "infty":
            self.error("infinity is not a value handydl samples", "use a large number, or a limit by hand", t)
        if c == "partial":
            self.error("'\\partial' outside a fraction", "write \\frac{\\partial L}{\\partial x}", t)
        if c in LATEX_OPS:
            self.error("an operator where a value was expected", "", t)
        close = _close_words(c, LATEX_KNOWN)
        _fail(self.text, t.pos, f"{self.what}: unknown LaTeX command \\{c}",
              (f"did you mean \\{close}? " if close else "") + "known: \\frac, \\sqrt, \\exp, \\log, "
              "\\tanh, \\sigma, \\sum, \\prod, \\cdot, \\left( \\right), \\begin{cases}, ...")

    def fraction(self, tok):
        num, den = self.group_tokens(), self.group_tokens()
        d_num = _d_prefix(num)
        d_den = _d_prefix(den)
        if d_num is not None and d_den is not None:          # \frac{d}{dx}, \frac{\partial L}{\partial o_j}
            order = 1
            rest = num[d_num:]
            if rest and rest[0].value == "^":                 # \frac{d^2}{dx^2}
                order, rest = int(rest[1].value), rest[2:]
            var_toks = den[d_den:]
            if var_toks and var_toks[-2:-1] and var_toks[-2].value == "^":
                var_toks = var_toks[:-2]
            var = self.sub_parse(var_toks, "the variable of d/d")
            if not isinstance(var, (ast.Name, ast.Subscript)):
                self.error("the variable of d/d... must be a name", "write \\frac{d}{dx}", tok)
            operand = self.sub_parse(rest, "the function of d/d") if rest else None
            return self.derivative_of(var, order, operand, tok)
        a, b = self.sub_parse(num, "the numerator"), self.sub_parse(den, "the denominator")
        return ast.BinOp(left=a, op=ast.Div(), right=b)

    def group_tokens(self):
        """The tokens of a {..} group (or one token), consumed."""
        if not self.at("{"):
            t = self.next()
            if t.kind == "EOF":
                self.error("\\frac needs two groups", "write \\frac{a}{b}", t)
            return [t]
        start, depth = self.i, 0
        while True:
            t = self.next()
            if t.kind == "EOF":
                self.error("an unclosed '{'", "add '}'", t)
            if t.kind == "OP" and t.value == "{":
                depth += 1
            if t.kind == "OP" and t.value == "}":
                depth -= 1
                if depth == 0:
                    return self.toks[start + 1:self.i - 1]

    def sub_parse(self, toks, what):
        saved = self.toks, self.i
        self.toks, self.i = list(toks) + [Tok("EOF", "", toks[-1].pos + 1 if toks else self.tok.pos)], 0
        if len(self.toks) == 1:
            self.toks, self.i = saved
            self.error(f"{what} is empty", "fill in the group")
        try:
            node = self.ternary()
            if self.tok.kind != "EOF":
                self.error("unexpected token", _hint(self.tok))
        finally:
            self.toks, self.i = saved
        return node

    def big_operator(self, c, tok):
        """\\sum_{k=1}^{N} body, \\sum_i body (over the whole axis), \\prod likewise."""
        var = lo = hi = None
        if self.at("_"):
            self.next()
            sub = self.group_tokens() if self.at("{") else [self.next()]
            if not sub or sub[0].kind != "NAME":
                self.error(f"\\{c} needs an index", f"write \\{c}_{{k=1}}^{{N}}", tok)
            var = sub[0].value
            if len(sub) > 1:
                if sub[1].value != "=":
                    self.error(f"\\{c}_{{...}}: expected k=LOW", f"write \\{c}_{{k=1}}^{{N}}", sub[1])
                lo = self.sub_parse(sub[2:], f"the lower bound of \\{c}")
        if self.at("^"):
            self.next()
            hi_toks = self.group_tokens() if self.at("{") else [self.next()]
            hi = self.sub_parse(hi_toks, f"the upper bound of \\{c}")
        if var is None:
            self.error(f"\\{c} needs an index", f"write \\{c}_{{k=1}}^{{N}} or \\{c}_i", tok)
        if (lo is None) != (hi is None):
            self.error(f"\\{c} needs both bounds or none", f"write \\{c}_{{{var}=1}}^{{N}}", tok)
        self.bound.append(var)
        try:
            body = self.multiplicative()
        finally:
            self.bound.pop()
        args = [body, ast.Name(id=var)] + ([lo, hi] if lo is not None else [])
        return ast.Call(func=ast.Name(id="summation" if c == "sum" else "product"), args=args, keywords=[])


_PYTHON_WORDS = {"lambda", "import", "from", "def", "class", "return", "yield", "await", "async",
                 "global", "nonlocal", "del", "pass", "raise", "try", "except", "with", "while", "in",
                 "is", "None", "True", "False", "assert", "break", "continue", "elif", "finally",
                 "exec", "eval", "open", "getattr", "setattr", "globals", "locals", "vars", "compile"}

_FUNCS_NO_PAREN = {"exp", "log", "sin", "cos", "tan", "cot", "sec", "csc", "sinh", "cosh", "tanh",
                   "coth", "sech", "csch", "asin", "acos", "atan", "sigmoid", "sqrt", "abs", "sign",
                   "erf", "relu"}


def _chain(items):
    """Left-to-right operator chain -> tree; a long chain of + (or of *) is built
    balanced, so that a sum of 1000 terms is not 1000 levels deep."""
    if len(items) == 1:
        return items[0][1]
    kinds = {type(op) for op, _ in items[1:]}
    if len(items) > 16 and kinds <= {ast.Add, ast.Sub}:
        signed = [t if isinstance(op, ast.Add) else ast.UnaryOp(op=ast.USub(), operand=t) for op, t in items]
        return _balanced(signed, ast.Add)
    if len(items) > 16 and kinds == {ast.Mult}:
        return _balanced([t for _, t in items], ast.Mult)
    node = items[0][1]
    for op, t in items[1:]:
        node = ast.BinOp(left=node, op=op, right=t)
    return node


def _balanced(nodes, op):
    if len(nodes) == 1:
        return nodes[0]
    mid = len(nodes) // 2
    return ast.BinOp(left=_balanced(nodes[:mid], op), op=op(), right=_balanced(nodes[mid:], op))


def _hint(t):
    if t.kind == "OP" and t.value == ")":
        return "remove the extra ')' or add the '(' it closes"
    if t.kind == "OP" and t.value == "}":
        return "remove the extra '}' or add the '{' it closes"
    if t.kind == "OP" and t.value == "&":
        return "'&' separates a value and its condition inside \\begin{cases} ... \\end{cases}"
    if t.kind == "OP" and t.value in ("=", "=="):
        return "a condition belongs after 'if': x if x == 0 else 1"
    if t.kind == "KW" and t.value == "else":
        return "write: a if condition else b"
    return "check the operators around it"


def _close_words(word, known):
    import difflib
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.75)
    return close[0] if close else ""


def _d_prefix(toks):
    """How many tokens of a fraction's part spell 'd' or '\\partial' (0 if it does not)."""
    if not toks:
        return None
    t = toks[0]
    if t.kind == "NAME" and t.value == "d" or t.kind == "CMD" and t.value == "partial":
        return 1
    if t.kind == "NAME" and t.value.startswith("d") and len(t.value) == 2:   # plain 'dx' in a group
        toks[0:1] = [Tok("NAME", "d", t.pos), Tok("NAME", t.value[1], t.pos + 1)]
        return 1
    return None


def _number(p, t):
    text = t.value
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(value, int) and len(text) > MAX_DIGITS:
        p.error(f"a number of {len(text)} digits", f"numbers are limited to {MAX_DIGITS} digits", t)
    if isinstance(value, float) and not math.isfinite(value):
        p.error("a number too large for float64", "use a smaller constant", t)
    node = ast.Constant(value=value)
    node.digits = text                     # the exact decimal, for SymPy (2.0000001 stays exact)
    return node


def _subscripted(p, base, inner):
    """Subscript tokens -> indexing, a Kronecker delta, or a longer name."""
    letters = [t.value for t in inner]
    if base.id == "delta" and len(inner) == 2 and all(t.kind == "NAME" for t in inner):
        a, b = (ast.Name(id=v) for v in letters)
        return ast.IfExp(test=ast.Compare(left=a, ops=[ast.Eq()], comparators=[b]),
                         body=ast.Constant(value=1), orelse=ast.Constant(value=0))
    index_like = all(t.kind == "NAME" and len(t.value) == 1 and
                     (t.value in INDEX_LETTERS or t.value in p.bound) for t in inner)
    if inner and index_like:
        idx = [ast.Name(id=v) for v in letters]
        return ast.Subscript(value=base, slice=idx[0] if len(idx) == 1 else ast.Tuple(elts=idx))
    if inner and all(t.kind in ("NAME", "NUM") and re.fullmatch(r"[A-Za-z0-9]+", t.value) for t in inner):
        return ast.Name(id=base.id + "_" + "".join(letters))
    # an index expression: x_{i+1}
    expr = p.sub_parse(inner, "the subscript")
    return ast.Subscript(value=base, slice=expr)


def _piecewise(p, rows, tok):
    if not rows:
        p.error("empty cases", "write {x, x > 0; 0, otherwise}", tok)
    node = None
    for value, cond in reversed(rows):
        if cond is None:
            if node is not None:
                p.error("'otherwise' must be the last case", "move it to the end", tok)
            node = value
        else:
            nan = ast.Constant(value=float("nan"))
            nan.digits = "nan"
            node = ast.IfExp(test=cond, body=value, orelse=node if node is not None else nan)
    return node


# -- checks on the finished tree -----------------------------------------------------------------

def _bounded(tree, text, what):
    """Refuse trees too large to compute with, before anything is computed."""
    count = 0
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ExprError(f"{what}: more than {MAX_NODES} terms and operators; the limit keeps a "
                            "check within its time budget (split it with --let NAME = ...)")
        if depth > 5 * MAX_DEPTH:
            raise ExprError(f"{what}: nested more than {5 * MAX_DEPTH} operations deep")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            _check_exponent(node, what)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("summation", "product") and len(node.args) == 4:
            lo, hi = _constant(node.args[2]), _constant(node.args[3])
            if lo is not None and hi is not None and hi - lo + 1 > MAX_RANGE:
                raise ExprError(f"{what}: a {node.func.id} of {hi - lo + 1:.0f} terms; the limit is "
                                f"{MAX_RANGE} (write the bound as a name, N, to keep it symbolic)")
        for child in ast.iter_child_nodes(node):
            stack.append((child, depth + 1))
    return tree


def _constant(node, depth=0):
    """The value of a constant subtree (None if it has names), computed in floats with
    overflow refused."""
    if depth > 50:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _constant(node.operand, depth + 1)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp):
        a, b = _constant(node.left, depth + 1), _constant(node.right, depth + 1)
        if a is None or b is None:
            return None
        try:
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return a / b if b else None
            if isinstance(node.op, ast.Pow):
                if a == 0 or abs(b) * math.log10(abs(a) or 1) > MAX_DIGITS or abs(b) > 1e6:
                    return math.inf
                r = a ** b
                return r if isinstance(r, float) else None
        except (OverflowError, ZeroDivisionError, ValueError):
            return math.inf
    return None


def _check_exponent(node, what):
    b = _constant(node.right)
    if b is None:
        return
    if not math.isfinite(b) or abs(b) > MAX_EXPONENT:
        shown = ast.unparse(node.right)
        raise ExprError(f"{what}: the exponent {shown} is too large (|exponent| <= {MAX_EXPONENT}); "
                        "an exponent tower such as 9^9^9 has no value a check can compute")
    a = _constant(node.left)
    if a is not None and a != 0 and abs(b) * math.log10(abs(a)) > MAX_DIGITS:
        raise ExprError(f"{what}: {ast.unparse(node)} has more than {MAX_DIGITS} digits")


# -- the public API ------------------------------------------------------------------------------

def parse_tree(text, what="expression", *, symbols=(), undefined_functions=False):
    """``text`` (plain math or LaTeX) -> a validated Python ``ast`` expression."""
    if not isinstance(text, str):
        raise ExprError(f"{what}: expected text, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ExprError(f"{what}: {len(text):,} characters; the limit is {MAX_CHARS:,} (a check of "
                        "something that long would not finish in its time budget)")
    stripped = text.strip().strip("$").strip()
    if not stripped:
        raise ExprError(f"empty {what}")
    norm = _normalize(stripped)
    try:
        tree = _Parser(norm, what, symbols, undefined_functions).parse()
    except RecursionError:
        raise ExprError(f"{what}: nested too deeply") from None
    tree = ast.fix_missing_locations(ast.Expression(body=tree)).body
    return _bounded(tree, text, what)


def split_relation(text):
    """The pieces of 'a = b = c' split at '=' signs outside brackets, cases and
    comparisons (``==``, ``<=``, ``>=``, ``!=`` do not split)."""
    if not isinstance(text, str):
        raise ExprError(f"expected text, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ExprError(f"{len(text):,} characters; the limit is {MAX_CHARS:,}")
    pieces, depth, start, i = [], 0, 0, 0
    cases = 0
    while i < len(text):
        ch = text[i]
        if text.startswith("\\begin", i):
            cases += 1
        elif text.startswith("\\end", i):
            cases -= 1
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "=" and depth == 0 and cases == 0:
            prev = text[i - 1] if i else ""
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if prev not in "<>=!" and nxt != "=":
                pieces.append(text[start:i])
                start = i + 1
        i += 1
    pieces.append(text[start:])
    pieces = [p.strip() for p in pieces]
    if any(not p for p in pieces):
        raise ExprError(f"an empty side of '=' in {text!r}")
    return pieces


def parse(text, *, symbols=None):
    """Plain math or LaTeX -> a SymPy expression (see the module docstring)."""
    import sympy as sp
    from .expr import _validate, to_sympy_tree
    tree = parse_tree(text, symbols=tuple(symbols or ()), undefined_functions=True)
    _validate(tree, set(), "expression", undefined=True)
    return to_sympy_tree(tree, dict(symbols or {}), sp, free=True)


def parse_relation(text, *, symbols=None):
    """'a = b = c' -> [a, b, c] as SymPy expressions (one element when there is no '=')."""
    return [parse(p, symbols=symbols) for p in split_relation(text)]
