r"""Reading one side of an equation in a derivation document into a small tree.

A document's math is LaTeX (``\frac{\partial p_i}{\partial o_j}``,
``\sum_{k \neq j}``, ``\delta_{ij}``, ``\begin{cases}``, ``x^\top``) or
everyday typing (``σ(x)(1 − σ(x))``, ``tanh²``, ``dL/dW``); both are tokenized
here and parsed by one recursive-descent parser into tuples (the tree below).
Nothing is evaluated: ``handydl.check.document`` walks the tree, turning it
into SymPy (scalar and index notation) or NumPy (matrices).  Whatever is not
understood raises :class:`MathError` naming the token, so the step it stands
in is reported NOT CHECKED with that reason.

The tree (every node a tuple whose first item is its kind):
``("num", Rational)``, ``("sym", name, (index, ...))`` with each index a tree,
``("call", fname, (args...), order)`` (order = number of primes),
``("add", (terms...))``, ``("mul", (factors...))``, ``("div", a, b)``,
``("pow", a, b)``, ``("neg", a)``, ``("T", a)`` (transpose), ``("inv", a)``,
``("sum", var, cond, body)`` / ``("prod", ...)`` with cond a ("rel", ...) or None,
``("delta", i, j)``, ``("deriv", f, (wrt...), partial)`` (f None for the
operator form d/dx followed by its operand, filled in by the parser),
``("cases", ((value, cond), ...))`` with cond None for "otherwise",
``("abs", a)``, ``("norm", a, p)``, ``("rel", op, a, b)``, ``("odot", a, b)``.
"""
from __future__ import annotations

import re
from fractions import Fraction


class MathError(ValueError):
    """Notation that was not understood; the message names it."""


class TooLarge(MathError):
    """Math that is understood but too large to check within the bounds (9^9^9)."""


GREEK = ["alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
         "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau",
         "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda",
         "Xi", "Pi", "Sigma", "Phi", "Psi", "Omega"]
UNICODE = {
    "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "ε": r"\epsilon",
    "ζ": r"\zeta", "η": r"\eta", "θ": r"\theta", "κ": r"\kappa", "λ": r"\lambda", "μ": r"\mu",
    "ν": r"\nu", "ξ": r"\xi", "π": r"\pi", "ρ": r"\rho", "σ": r"\sigma", "τ": r"\tau",
    "φ": r"\phi", "χ": r"\chi", "ψ": r"\psi", "ω": r"\omega", "Σ": r"\Sigma", "Δ": r"\Delta",
    "Φ": r"\Phi", "Ω": r"\Omega", "Λ": r"\Lambda", "Γ": r"\Gamma", "Θ": r"\Theta",
    "∂": r"\partial ", "·": r"\cdot ", "⋅": r"\cdot ", "×": r"\times ", "−": "-", "–": "-",
    "∑": r"\sum ", "∏": r"\prod ", "√": r"\sqrt ", "≠": r"\neq ", "≤": r"\leq ", "≥": r"\geq ",
    "⊤": "T", "ᵀ": "^T", "²": "^2", "³": "^3", "⁻¹": "^{-1}", "′": "'", "∈": r"\in ",
    "⊙": r"\odot ", "∘": r"\odot ", "‖": r"\| ", "…": r"\dots ", "ℝ": "R", "≈": r"\approx ", "∞": r"\infty ",
    "ₖ": "_k", "ᵢ": "_i", "ⱼ": "_j", "ₙ": "_n",
}
# words that name a function when typed in plain math (LaTeX has a macro for each)
FUNCTIONS = {"exp", "log", "ln", "sin", "cos", "tan", "tanh", "sinh", "cosh", "coth", "sech",
             "csch", "sec", "csc", "cot", "sqrt", "sigmoid", "softmax", "relu", "sign", "sgn",
             "max", "min", "diag", "tr", "erf", "softplus", "abs", "arctan", "atan", "log2"}
_SKIP = {",", ";", "!", ":", "quad", "qquad", "left", "right", "bigl", "bigr", "Bigl", "Bigr",
         "big", "Big", "bigg", "Bigg", "biggl", "biggr", "Biggl", "Biggr", "displaystyle",
         "textstyle", "limits", "nolimits", "middle", " ", "phantom", "nonumber", "notag"}
_WRAPPERS = {"mathbf", "boldsymbol", "bm", "mathrm", "mathit", "mathsf", "vec", "bar", "hat",
             "tilde", "mathbb", "mathcal", "operatorname", "mbox", "textbf", "mathbfit", "pmb"}
_RELATIONS = {"=": "=", "neq": "!=", "ne": "!=", "leq": "<=", "le": "<=", "geq": ">=", "ge": ">=",
              "lt": "<", "gt": ">", "<": "<", ">": ">", "approx": "~", "in": "in"}


def normalize(text):
    """Unicode and spacing to LaTeX-ish ASCII (one string, so offsets change: callers keep
    the original for display)."""
    for k, v in UNICODE.items():
        text = text.replace(k, v)
    return text


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | \\(?P<cmd>[A-Za-z]+|[,;:!{}|\\ ])
  | (?P<num>\d+(?:\.\d+)?|\.\d+)
  | (?P<word>[A-Za-z]+)
  | (?P<op>[-+*/^_()\[\]{}|,'=<>!&.])
""", re.VERBOSE)


def tokenize(text):
    """Tokens (kind, value): cmd, num, name (one letter or a known word), op."""
    text = normalize(text)
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise MathError(f"the character {text[pos]!r} is not understood")
        pos = m.end()
        kind = m.lastgroup
        v = m.group(kind)
        if kind == "space":
            continue
        if kind == "cmd":
            if v in ("{", "}"):
                out.append(("op", v))          # \{ \} as brackets
            elif v == "|":
                out.append(("op", "‖"))
            elif v == "\\":
                out.append(("op", "\\"))         # a row break inside cases
            elif v in _SKIP or v == " ":
                continue
            else:
                out.append(("cmd", v))
        elif kind == "word":
            out.extend(_split_word(v))
        else:
            out.append((kind, v))
    return out


def _split_word(w):
    """'tanh' stays a word; 'xy' is x times y; 'dx' is d, x; a known word inside
    ('2xexp' is rare) is not searched for."""
    if w in FUNCTIONS or w in GREEK or w in ("otherwise", "if", "for", "and", "else", "sum", "T"):
        return [("name", w)]
    return [("name", c) for c in w]


class _Parser:
    def __init__(self, tokens, functions=frozenset()):
        self.t = tokens
        self.i = 0
        self.functions = set(functions)
        self.bars = []

    # -- helpers --------------------------------------------------------------------------
    def inside(self, bar):
        """The expression between |...| or ‖...‖ (a bar inside closes it)."""
        self.bars.append(bar)
        try:
            return self.expr()
        finally:
            self.bars.pop()

    def peek(self, k=0):
        j = self.i + k
        return self.t[j] if j < len(self.t) else ("end", None)

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def at(self, kind, value=None):
        tok = self.peek()
        return tok[0] == kind and (value is None or tok[1] == value)

    def expect(self, kind, value):
        tok = self.take()
        if tok != (kind, value):
            raise MathError(f"expected {value!r}, found {_show(tok)}")
        return tok

    def group(self):
        """A {...} group, or a single token as TeX reads ^2 or _i."""
        if self.at("op", "{"):
            self.take()
            e = self.expr()
            self.expect("op", "}")
            return e
        tok = self.peek()
        if tok[0] == "num":
            self.take()
            # ^23 in TeX is ^2 followed by 3; people mean 23 when they type it plainly
            return ("num", Fraction(tok[1]))
        if tok[0] == "op" and tok[1] == "-":
            self.take()
            return ("neg", self.group())
        if tok[0] == "name" and len(tok[1]) == 1 or tok[0] == "cmd" and tok[1] in GREEK:
            self.take()                      # x_p^{p-1}: one letter, the ^ is the next script
            return ("sym", tok[1], ())
        return self.primary()

    # -- grammar --------------------------------------------------------------------------
    def parse(self):
        e = self.expr()
        if self.peek()[0] != "end":
            raise MathError(f"unexpected {_show(self.peek())}")
        return e

    def expr(self):
        terms = []
        sign = 1
        if self.at("op", "-"):
            self.take()
            sign = -1
        elif self.at("op", "+"):
            self.take()
        t = self.term()
        terms.append(("neg", t) if sign < 0 else t)
        while self.at("op", "+") or self.at("op", "-") or self.at("cmd", "pm"):
            op = self.take()[1]
            if op == "pm":
                raise MathError(r"\pm (two equations in one)")
            t = self.term()
            terms.append(("neg", t) if op == "-" else t)
        return terms[0] if len(terms) == 1 else ("add", tuple(terms))

    def _starts_factor(self):
        kind, v = self.peek()
        if kind in ("num", "name"):
            return v not in ("otherwise", "if", "for", "and", "else")
        if kind == "op":
            if v in ("|", "‖"):                 # opens a new |x| unless one is open (then it closes)
                return v not in self.bars
            return v in ("(", "[", "{")
        if kind == "cmd":
            return v not in ("cdot", "times", "neq", "ne", "leq", "geq", "le", "ge", "lt", "gt",
                             "in", "approx", "odot", "end", "text", "mathrm_if", "quad", "pm",
                             "Rightarrow", "implies", "to", "iff", "mid", "colon", "over",
                             "forall", "ldots", "cdots", "dots", "infty", "qquad", "tag",
                             "label", "equiv", "propto", "sim") and not self._text_word()
        return False

    def _text_word(self):
        """\\text{if} / \\text{otherwise} / \\text{for}: words that end a factor in cases."""
        kind, v = self.peek()
        if kind == "cmd" and v in ("text", "mathrm", "textrm", "mbox") and self.peek(1) == ("op", "{"):
            j, words = self.i + 2, []
            while j < len(self.t) and self.t[j] != ("op", "}"):
                words.append(str(self.t[j][1]))
                j += 1
            return "".join(words).strip(",") in ("if", "otherwise", "for", "and", "else", "ifi", "when")
        return False

    def term(self):
        factors = [self.unary()]
        while True:
            if self.at("cmd", "cdot") or self.at("cmd", "times") or self.at("op", "*"):
                self.take()
                factors.append(self.unary())
            elif self.at("cmd", "odot"):
                self.take()
                factors = [("odot", _mul(factors), self.unary())]
            elif self.at("op", "/"):
                self.take()
                factors = [("div", _mul(factors), self.unary())]
            elif self.at("cmd", "over"):
                raise MathError(r"\over (write \frac{a}{b})")
            elif self._starts_factor():
                factors.append(self.unary())
            else:
                return _mul(factors)

    def unary(self):
        if self.at("op", "-"):
            self.take()
            return ("neg", self.unary())
        if self.at("op", "+"):
            self.take()
            return self.unary()
        return self.postfix(self.primary())

    def postfix(self, node, allow_call=True):
        while True:
            if self.at("op", "^"):
                self.take()
                if self._transpose_mark():
                    node = ("T", node)
                    continue
                exp = self.group()
                if exp == ("num", Fraction(-1)) and _is_matrixish(node):
                    node = ("inv", node)
                elif exp == ("neg", ("num", Fraction(1))) and _is_matrixish(node):
                    node = ("inv", node)
                else:
                    node = ("pow", node, exp)
            elif self.at("op", "_") and node[0] == "sym" and not node[2]:
                self.take()
                node = ("sym", node[1], self.indices())
            elif self.at("op", "_") and node[0] == "norm" and node[2] is None:
                self.take()
                node = ("norm", node[1], self.group())
            elif self.at("op", "_") and node[0] == "sym":
                raise MathError(f"a second subscript on {node[1]}")
            elif self.at("op", "!"):
                raise MathError("a factorial")
            else:
                return node

    def _transpose_mark(self):
        tok = self.peek()
        if tok in (("name", "T"), ("cmd", "top"), ("cmd", "intercal"), ("cmd", "mathsf"),
                   ("cmd", "prime"), ("op", "'")):
            if tok == ("cmd", "mathsf"):
                self.take()
                self.expect("op", "{")
                self.expect("name", "T")
                self.expect("op", "}")
                return True
            self.take()
            return True
        if tok == ("op", "{") and self.peek(1) in (("name", "T"), ("cmd", "top"), ("cmd", "intercal")) \
                and self.peek(2) == ("op", "}"):
            self.i += 3
            return True
        return False

    def indices(self):
        """_i, _{ij}, _{i,j}, _{k=1} is not an index (sum limits are read by sum)."""
        if self.at("op", "{"):
            self.take()
            idx = []
            while not self.at("op", "}"):
                if self.at("op", ","):
                    self.take()
                    continue
                tok = self.take()
                if tok[0] == "name" and len(tok[1]) == 1:
                    node = ("sym", tok[1], ())
                    # _{k+1}, _{i-1}: an index expression
                    while self.at("op", "+") or self.at("op", "-"):
                        op = self.take()[1]
                        n = self.take()
                        if n[0] != "num":
                            raise MathError(f"the index {tok[1]}{op}{n[1]}")
                        off = ("num", Fraction(n[1]))
                        node = ("add", (node, off if op == "+" else ("neg", off)))
                    idx.append(node)
                elif tok[0] == "num":
                    if "." in tok[1]:
                        raise MathError(f"the index {tok[1]}")
                    idx.extend(("num", Fraction(int(c))) for c in tok[1]) if len(tok[1]) > 1 and \
                        not self.at("op", "}") else idx.append(("num", Fraction(int(tok[1]))))
                elif tok[0] == "cmd" and tok[1] in GREEK:
                    idx.append(("sym", tok[1], ()))
                elif tok[0] == "cmd" and tok[1] in ("text", "mathrm"):
                    raise MathError("a word as a subscript (a name, not an index)")
                else:
                    raise MathError(f"the subscript {_show(tok)}")
            self.take()
            return tuple(idx)
        tok = self.take()
        if tok[0] == "name" and len(tok[1]) == 1:
            return (("sym", tok[1], ()),)
        if tok[0] == "num":
            return tuple(("num", Fraction(int(c))) for c in tok[1])
        if tok[0] == "cmd" and tok[1] in GREEK:
            return (("sym", tok[1], ()),)
        raise MathError(f"the subscript {_show(tok)}")

    def primary(self):
        kind, v = self.take()
        if kind == "num":
            return ("num", Fraction(v))
        if kind == "op":
            if v in ("(", "["):
                e = self.expr()
                self.expect("op", ")" if v == "(" else "]")
                return e
            if v == "{":
                e = self.expr()
                self.expect("op", "}")
                return e
            if v == "|":
                if self.at("op", "|"):      # || x || typed plainly
                    self.take()
                    e = self.inside("‖")
                    self.expect("op", "|")
                    self.expect("op", "|")
                    return ("norm", e, None)
                e = self.inside("|")
                self.expect("op", "|")
                return ("abs", e)
            if v == "‖":
                e = self.inside("‖")
                self.expect("op", "‖")
                return ("norm", e, None)
            raise MathError(f"unexpected {v!r}")
        if kind == "name":
            return self.name(v)
        if kind == "cmd":
            return self.command(v)
        raise MathError("the side ends too early")

    def name(self, v):
        if v in FUNCTIONS:
            return self.call(v)
        if v == "sum":
            return self.bigop("sum")
        if v in GREEK:
            return self.letter(v)
        if v in ("otherwise", "if", "for", "and", "else"):
            raise MathError(f"the word {v!r} outside cases")
        if v == "d" and self._plain_derivative():
            return self._plain_derivative(take=True)
        return self.letter(v)

    def _plain_derivative(self, take=False):
        """dL/dW typed plainly: d, a name, '/', d, a name; d/dx f: the operator."""
        t = self.t[self.i:self.i + 3]
        if len(t) == 3 and t[0] == ("op", "/") and t[1] == ("name", "d") and t[2][0] == "name":
            if not take:
                return True
            self.i += 2
            x = self.letter(self.take()[1], allow_call=False)
            return ("deriv", self.postfix(self.primary()), (x,), False)
        t = self.t[self.i:self.i + 4]
        ok = (len(t) == 4 and t[0][0] == "name" and t[1] == ("op", "/") and t[2] == ("name", "d")
              and t[3][0] == "name")
        if not (ok and take):
            return ok
        f = self.letter(self.take()[1], allow_call=False)
        self.expect("op", "/")
        self.take()
        x = self.letter(self.take()[1], allow_call=False)
        return ("deriv", f, (x,), False)

    def letter(self, v, allow_call=True):
        """A letter or Greek name: a symbol, or a function applied to (args)."""
        primes = 0
        node = ("sym", v, ())
        if self.at("op", "_") and v not in self.functions:
            self.take()
            node = ("sym", v, self.indices())
        while self.at("op", "'") or self.at("cmd", "prime"):
            self.take()
            primes += 1
        if self.at("op", "^") and self.peek(1) == ("cmd", "prime"):
            self.i += 2
            primes += 1
        if allow_call and self.at("op", "(") and (v in self.functions or primes or
                                                  (v in ("f", "g", "h") and not node[2])
                                                  or (v == "sigma" and not self._mentions(v))):
            return self.postfix_call(v, primes, node)
        if primes:
            if node[2]:
                raise MathError(f"a prime on the indexed {v}")
            return ("call", v, None, primes)        # f' without an argument: f'(x) of the doc's x
        return node

    def _mentions(self, name):
        """Does the parenthesized group ahead contain name?  sigma(1 - sigma) is a product."""
        depth, j = 0, self.i
        while j < len(self.t):
            tok = self.t[j]
            if tok == ("op", "("):
                depth += 1
            elif tok == ("op", ")"):
                depth -= 1
                if depth == 0:
                    return False
            elif tok in (("name", name), ("cmd", name)) and depth >= 1:
                return True
            j += 1
        return False

    def postfix_call(self, v, primes, node):
        self.expect("op", "(")
        args = [self.expr()]
        while self.at("op", ","):
            self.take()
            args.append(self.expr())
        self.expect("op", ")")
        if node[2]:
            raise MathError(f"an indexed function {v}")
        return ("call", v, tuple(args), primes)

    def call(self, fname):
        """A named function: \\tanh x, \\tanh^2(x), \\log p_k, exp(...), \\sigma'(x)."""
        power = None
        primes = 0
        while self.at("op", "'") or self.at("cmd", "prime"):
            self.take()
            primes += 1
        if self.at("op", "^"):
            self.take()
            if self.at("cmd", "prime"):
                self.take()
                primes += 1
            else:
                power = self.group()
        while self.at("op", "'"):
            self.take()
            primes += 1
        if fname in ("max", "min") and self.at("op", "_"):
            raise MathError(f"\\{fname} with a subscript")
        if self.at("op", "("):
            self.take()
            args = [self.expr()]
            while self.at("op", ","):
                self.take()
                args.append(self.expr())
            self.expect("op", ")")
        elif self.at("op", "{"):
            args = [self.group()]
        elif self._starts_factor():
            args = [self.postfix(self.primary())]
        elif primes:
            args = None
        else:
            raise MathError(f"the function {fname} without an argument")
        node = ("call", fname, tuple(args) if args is not None else None, primes)
        return ("pow", node, power) if power is not None else node

    def bigop(self, kind):
        var, cond = None, None
        if self.at("op", "_"):
            self.take()
            if self.at("op", "{"):
                self.take()
                toks = []
                depth = 0
                while not (self.at("op", "}") and depth == 0):
                    tok = self.take()
                    if tok[0] == "end":
                        raise MathError("an unclosed subscript of a sum")
                    depth += tok == ("op", "{")
                    depth -= tok == ("op", "}")
                    toks.append(tok)
                self.take()
                var, cond = _sum_subscript(toks, self.functions)
            else:
                tok = self.take()
                if tok[0] != "name" or len(tok[1]) != 1:
                    raise MathError(f"the sum's subscript {_show(tok)}")
                var = tok[1]
        if self.at("op", "^"):
            self.take()
            self.group()                      # the upper limit: the size of the instance decides
        if var is None:
            raise MathError(f"a {kind} without its index (write \\{kind}_k)")
        body = self.term()
        return (kind, var, cond, body)

    def command(self, v):
        if v in ("frac", "dfrac", "tfrac", "cfrac"):
            return self.frac()
        if v == "sqrt":
            if self.at("op", "["):
                self.take()
                n = self.expr()
                self.expect("op", "]")
                return ("pow", self.group(), ("div", ("num", Fraction(1)), n))
            return ("call", "sqrt", (self.group(),), 0)
        if v in ("sum", "prod"):
            return self.bigop(v)
        if v == "delta" and self.at("op", "_"):
            self.take()
            idx = self.indices()
            if len(idx) != 2:
                raise MathError("a Kronecker delta needs two indices, as \\delta_{ij}")
            return ("delta", idx[0], idx[1])
        if v in FUNCTIONS:
            return self.call(v)
        if v == "sigma" or v in GREEK:
            return self.letter(v)
        if v in _WRAPPERS:
            if v == "operatorname" or v == "mathrm":
                name = self._braced_word()
                if name in FUNCTIONS:
                    return self.call(name)
                if name == "d" or len(name) == 1:
                    return self.letter(name)
                raise MathError(f"\\{v}{{{name}}}")
            if v == "mathcal":
                name = self._braced_word()
                if name == "O":
                    raise MathError(r"big-O notation \mathcal{O}(...) (an order of growth, not a value)")
                raise MathError(f"the calligraphic \\mathcal{{{name}}} (a set or an operator?)")
            if v == "mathbb":
                name = self._braced_word()
                return self.letter(name)
            return self.group_as_name()
        if v == "partial":
            return self.partial()
        if v == "nabla":                         # \nabla_W L: the gradient, W's shape
            if not self.at("op", "_"):
                raise MathError(r"\nabla without a subscript (write \nabla_x f)")
            self.take()
            wrt = self.group()
            return ("deriv", self.postfix(self.primary()), (wrt,), True)
        if v == "begin":
            return self.environment()
        if v in ("lVert", "Vert"):
            e = self.expr()
            if not (self.at("cmd", "rVert") or self.at("cmd", "Vert") or self.at("op", "‖")):
                raise MathError(r"an unclosed \lVert")
            self.take()
            return ("norm", e, None)
        if v in ("lvert", "vert"):
            e = self.expr()
            if not (self.at("cmd", "rvert") or self.at("cmd", "vert")):
                raise MathError(r"an unclosed \lvert")
            self.take()
            return ("abs", e)
        if v in ("text", "textrm"):
            raise MathError(f"the words \\text{{{self._braced_word()}}}")
        if v == "infty":
            raise MathError("infinity")
        if v in ("dots", "ldots", "cdots", "vdots"):
            raise MathError(f"an ellipsis \\{v} (an expression left unfinished)")
        if v == "ell":
            return self.letter("l")
        raise MathError(f"the macro \\{v}")

    def _braced_word(self):
        self.expect("op", "{")
        parts = []
        while not self.at("op", "}"):
            tok = self.take()
            if tok[0] == "end":
                raise MathError("an unclosed {")
            parts.append(str(tok[1]))
        self.take()
        return "".join(parts)

    def group_as_name(self):
        """\\mathbf{x}, \\boldsymbol{\\sigma}: the name inside, bold or not."""
        if not self.at("op", "{"):
            tok = self.take()
        else:
            self.take()
            tok = self.take()
            if not self.at("op", "}"):
                # \mathbf{W x}: a product in bold
                self.i -= 1
                e = self.expr()
                self.expect("op", "}")
                return e
            self.take()
        if tok[0] == "name":
            return self.letter(tok[1])
        if tok[0] == "cmd" and tok[1] in GREEK:
            return self.letter(tok[1])
        if tok[0] == "num":
            return ("num", Fraction(tok[1]))
        raise MathError(f"bold {_show(tok)}")

    def frac(self):
        num = self._raw_group()
        den = self._raw_group()
        d_num, d_den = _diff_marker(num), _diff_marker(den)
        if d_num and d_den:
            partial = d_num[0] == "partial"
            order = d_num[1]
            f_toks = d_num[2]
            wrt = _Parser(d_den[2], self.functions)._wrt_list()
            if f_toks:
                f = _Parser(f_toks, self.functions).parse()
            else:
                f = self.postfix(self.primary())   # \frac{d}{dx} f(x): the operand follows
            wrt = wrt * order if len(wrt) == 1 and order > 1 else wrt
            return ("deriv", f, tuple(wrt), partial)
        return ("div", _Parser(num, self.functions).parse(), _Parser(den, self.functions).parse())

    def _wrt_list(self):
        """The denominator of a derivative: ∂x, ∂x^2, ∂o_j ∂o_k (already without the first ∂)."""
        out = []
        while self.peek()[0] != "end":
            if self.at("cmd", "partial") or self.at("name", "d"):
                self.take()
                continue
            node = self.postfix(self.primary(), allow_call=False)
            if node[0] == "pow" and node[2][0] == "num":
                out.extend([node[1]] * int(node[2][1]))
            else:
                out.append(node)
        if not out or any(n[0] not in ("sym", "T") for n in out):
            raise MathError("the variable of a derivative")
        return out

    def _raw_group(self):
        if not self.at("op", "{"):
            return [self.take()]
        self.take()
        depth, toks = 0, []
        while True:
            tok = self.take()
            if tok[0] == "end":
                raise MathError("an unclosed {")
            if tok == ("op", "{"):
                depth += 1
            elif tok == ("op", "}"):
                if depth == 0:
                    return toks
                depth -= 1
            toks.append(tok)

    def partial(self):
        """∂L/∂W written inline: \\partial L / \\partial W; ∂/∂x f: the operator."""
        if self.at("op", "/") and self.peek(1) == ("cmd", "partial"):
            self.i += 2
            x = self.postfix(self.primary(), allow_call=False)
            return ("deriv", self.postfix(self.primary()), (x,), True)
        f = self.postfix(self.primary(), allow_call=False)
        if self.at("op", "/") and self.peek(1) == ("cmd", "partial"):
            self.i += 2
            x = self.postfix(self.primary(), allow_call=False)
            return ("deriv", f, (x,), True)
        raise MathError(r"\partial outside a derivative (write \frac{\partial f}{\partial x})")

    def environment(self):
        name = self._braced_word()
        if name != "cases":
            if name in ("pmatrix", "bmatrix", "matrix", "vmatrix", "array"):
                raise MathError(f"a matrix written out ({name})")
            raise MathError(f"the environment {name}")
        cases = []
        while True:
            value = self.expr()
            cond = None
            if self.at("op", "&"):
                self.take()
                cond = self.condition()
            cases.append((value, cond))
            if self.at("cmd", "end"):
                self.take()
                if self._braced_word() != "cases":
                    raise MathError("a cases environment closed by another")
                return ("cases", tuple(cases))
            if self.at("op", ",") or self.at("op", ";"):
                self.take()
            if self.at("op", "\\") or self.at("cmd", "\\"):
                self.take()
            elif not self.at("op", "&"):
                raise MathError(f"in cases: unexpected {_show(self.peek())}")

    def condition(self):
        """i = j, i \\neq j, x > 0, \\text{if } ..., \\text{otherwise}; commas skipped."""
        while self.at("op", ","):
            self.take()
        if self.at("cmd", "text") or self.at("cmd", "mathrm") or self.at("cmd", "textrm") or self.at("cmd", "mbox"):
            self.take()
            word = self._braced_word().strip().strip(",").strip()
            if word in ("otherwise", "else", "elsewhere", "sonst"):
                return None
            if word not in ("if", "for", "when", "where", "if ", ""):
                # \text{if } i = j typed with the condition inside the text
                return _Parser(tokenize(re.sub(r"^(if|for|when)\s+", "", word)), self.functions).condition()
        if self.at("name", "otherwise") or self.at("name", "else"):
            self.take()
            return None
        if self.at("name", "if") or self.at("name", "for"):
            self.take()
        left = self.expr()
        kind, v = self.peek()
        rel = _RELATIONS.get(v) if kind in ("op", "cmd") else None
        if rel is None or rel in ("~", "in"):
            raise MathError(f"the condition after & ({_show(self.peek())})")
        self.take()
        right = self.expr()
        return ("rel", rel, left, right)


def _sum_subscript(toks, functions):
    """k, k=1, k \\neq j, k: k \\neq j, i,j (two indices are refused)."""
    if not toks:
        raise MathError("an empty subscript of a sum")
    if toks[0][0] != "name" and not (toks[0][0] == "cmd" and toks[0][1] in GREEK):
        raise MathError(f"the sum's subscript {_show(toks[0])}")
    var = toks[0][1]
    rest = toks[1:]
    if not rest:
        return var, None
    if rest[0] == ("op", "=") :
        return var, None                       # k=1 .. N: the whole index range
    if rest[0] == ("op", ","):
        raise MathError("a sum over two indices at once")
    if rest[0] in (("op", ":"), ("op", "|")):
        rest = rest[1:]
        if rest and rest[0][1] == var:
            rest = rest[1:]
    kind, v = rest[0]
    rel = _RELATIONS.get(v) if kind in ("op", "cmd") else None
    if rel not in ("!=", "<", ">", "<=", ">="):
        raise MathError(f"the sum's subscript {_show(rest[0])}")
    other = _Parser(rest[1:], functions).parse()
    return var, ("rel", rel, ("sym", var, ()), other)


def _diff_marker(toks):
    """('d' | 'partial', order, the rest) when toks begin a derivative, else None."""
    if not toks:
        return None
    head = toks[0]
    if head == ("cmd", "partial"):
        kind = "partial"
    elif head == ("name", "d") or head == ("cmd", "mathrm") and toks[1:4] == [("op", "{"), ("name", "d"), ("op", "}")]:
        kind = "d"
    else:
        return None
    rest = toks[1:] if head != ("cmd", "mathrm") else toks[4:]
    order = 1
    if rest[:1] == [("op", "^")] and len(rest) > 1:
        if rest[1][0] == "num":
            order, rest = int(rest[1][1]), rest[2:]
        elif rest[1] == ("op", "{") and len(rest) > 3 and rest[2][0] == "num":
            order, rest = int(rest[2][1]), rest[4:]
    if kind == "d" and not rest:
        return (kind, order, [])
    if kind == "d" and rest[0][0] not in ("name", "cmd", "op"):
        return None
    return (kind, order, rest)


def _mul(factors):
    return factors[0] if len(factors) == 1 else ("mul", tuple(factors))


def _is_matrixish(node):
    return node[0] in ("sym", "T", "mul") and (node[0] != "sym" or node[1][:1].isupper())


def _show(tok):
    kind, v = tok
    if kind == "end":
        return "the end of the side"
    if kind == "cmd":
        return f"\\{v}"
    return repr(v)


def parse(text, functions=frozenset()):
    """One side of an equation (LaTeX or plain math) -> tree; MathError names what was
    not understood."""
    toks = tokenize(text)
    if not toks:
        raise MathError("an empty side")
    return _Parser(toks, functions).parse()


def free_names(node, out=None):
    """Every symbol name in the tree (indices included), and function names as ('f', name)."""
    out = set() if out is None else out
    if isinstance(node, tuple) and node and isinstance(node[0], str):
        kind = node[0]
        if kind == "sym":
            out.add(node[1])
            for i in node[2]:
                free_names(i, out)
            return out
        if kind == "call":
            out.add(("f", node[1]))
        for part in node[1:]:
            if isinstance(part, tuple):
                for p in (part if part and not isinstance(part[0], str) else (part,)):
                    free_names(p, out)
    return out


def walk(node):
    """Every node of the tree, preorder."""
    if not (isinstance(node, tuple) and node and isinstance(node[0], str)):
        return
    yield node
    for part in node[1:]:
        if isinstance(part, tuple) and part:
            if isinstance(part[0], str):
                yield from walk(part)
            else:
                for p in part:
                    if isinstance(p, tuple) and p and isinstance(p[0], str):
                        yield from walk(p)
                    elif isinstance(p, tuple):
                        for q in p:
                            yield from walk(q)
