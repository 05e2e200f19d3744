r"""LaTeX math for people: Unicode text for the terminal, and a check that the LaTeX
handydl writes uses only macros that LaTeX (amsmath) and KaTeX both know.

    >>> to_unicode(r"\sigma'(x) = \sigma(x)\bigl(1 - \sigma(x)\bigr)")
    'σ′(x) = σ(x)(1 - σ(x))'
    >>> to_unicode(r"\frac{e^{-x}}{(1 + e^{-x})^2}")
    'e⁻ˣ/(1 + e⁻ˣ)²'
    >>> latex_problems(r"\quadg_x")
    ['unknown macro \\quadg']

Parsing is pylatexenc's ``LatexWalker`` (pure Python, pip-installable, maintained):
it gives the tree of macros, groups and environments with their arguments, so that
a fraction's numerator and an exponent's group are known.  The rendering is ours:
pylatexenc's own ``latex2text`` writes ``e^{-x}`` as ``e^-x`` and ``\tfrac12`` as
``12``, and drops ``\underbrace``.  Here superscripts and subscripts become Unicode
where every character has one (``x²``, ``δᵢⱼ``, ``Wᵀ``; otherwise ``x_(n,c,i)``),
fractions are written ``a/b`` with the parentheses that the reading needs, and
``cases`` as ``{a if b; c if d}``.  SymPy's pretty printer would need the formulas as
SymPy expressions; most of the derivations' lines (sums over indices, Iverson
brackets, matrices) are not.

The macro table below is the whitelist: ``latex_problems`` reports any other
macro, environment, unbalanced brace, ``\left`` without ``\right``, a double
superscript, or ``_``/``^`` in text mode.  pylatexenc is an optional dependency
(the ``explain`` extra); without it ``to_unicode`` returns the LaTeX unchanged.
"""
from __future__ import annotations

import functools
import re
import unicodedata

# -- the whitelist: macro -> Unicode (symbols), or its argument spec ------------------------

SYMBOLS = {
    # Greek
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ϵ", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "vartheta": "ϑ", "iota": "ι", "kappa": "κ",
    "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "rho": "ρ", "sigma": "σ",
    "tau": "τ", "upsilon": "υ", "phi": "ϕ", "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω",
    "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π", "Sigma": "Σ",
    "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
    # operators and relations
    "partial": "∂", "nabla": "∇", "sum": "∑", "prod": "∏", "int": "∫", "odot": "⊙", "otimes": "⊗",
    "oplus": "⊕", "cdot": "·", "times": "×", "star": "⋆", "ast": "∗", "circ": "∘", "pm": "±",
    "mp": "∓", "top": "⊤", "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥", "ne": "≠", "neq": "≠",
    "approx": "≈", "sim": "∼", "equiv": "≡", "propto": "∝", "to": "→", "rightarrow": "→",
    "leftarrow": "←", "mapsto": "↦", "Rightarrow": "⇒", "iff": "⇔", "in": "∈", "notin": "∉",
    "subset": "⊂", "forall": "∀", "exists": "∃", "infty": "∞", "ell": "ℓ", "mid": "|",
    "langle": "⟨", "rangle": "⟩", "lfloor": "⌊", "rfloor": "⌋", "lceil": "⌈", "rceil": "⌉",
    "|": "‖", "Vert": "‖", "vert": "|", "dots": "…", "ldots": "…", "cdots": "⋯", "vdots": "⋮",
    "prime": "′", "land": "∧", "lor": "∨", "neg": "¬", "setminus": "∖", "emptyset": "∅",
    # function names, set upright
    **{f: f for f in ("log", "ln", "exp", "sin", "cos", "tan", "sinh", "cosh", "tanh", "coth",
                      "max", "min", "arg", "det", "lim", "sup", "inf")},
    # spacing and sizing
    ",": " ", ";": " ", ":": " ", " ": " ", "!": "", "quad": "\x00", "qquad": "\x00",
    "textstyle": "", "displaystyle": "", "limits": "", "nolimits": "",
    "left": "", "right": "", "bigl": "", "bigr": "", "Bigl": "", "Bigr": "", "big": "", "Big": "",
    "biggl": "", "biggr": "",
    # escaped characters
    "{": "{", "}": "}", "_": "_", "%": "%", "&": "&", "#": "#", "$": "$",
    "textasciicircum": "^", "textasciitilde": "~", "textbackslash": "\\",
}
FRACTIONS = ("frac", "dfrac", "tfrac")
_SIZING = ("left", "right", "bigl", "bigr", "Bigl", "Bigr", "big", "Big", "biggl", "biggr")
CONTENT = ("text", "mathrm", "mathbf", "mathit", "mathsf", "mathtt", "texttt", "textbf", "textit",
           "emph", "operatorname", "mathrel", "mathop", "boldsymbol", "mbox", "underbrace")
ACCENTS = {"hat": "\u0302", "widehat": "\u0302", "tilde": "\u0303", "widetilde": "\u0303",
           "bar": "\u0304", "overline": "\u0305", "vec": "\u20d7", "dot": "\u0307",
           "ddot": "\u0308", "underline": "\u0332"}
BLACKBOARD = {"R": "ℝ", "N": "ℕ", "Z": "ℤ", "Q": "ℚ", "C": "ℂ", "E": "𝔼", "1": "𝟙"}
TEXT_ONLY = ("paragraph", "subparagraph", "section", "subsection")      # LaTeX, outside math
ENVIRONMENTS = ("cases", "align*", "aligned", "matrix", "pmatrix", "bmatrix")
SCRIPTED_ENVS = ("cases", "align*", "aligned", "matrix", "pmatrix", "bmatrix")   # where & and \\ go

ONE_ARG = CONTENT + tuple(ACCENTS) + ("mathbb", "mathcal") + TEXT_ONLY
MATH_MACROS = frozenset(SYMBOLS) | frozenset(FRACTIONS + ONE_ARG + ("sqrt", "binom", "\\")) - set(TEXT_ONLY)
TEXT_MACROS = frozenset(TEXT_ONLY + ("text", "textbf", "textit", "texttt", "emph", "_", "{", "}", "%",
                                     "&", "#", "$", " ", ",", "textasciicircum", "textasciitilde",
                                     "textbackslash", "\\"))

SUP = dict(zip("0123456789+-=()nijkabcdefghlmoprstuvwxyzABDEGHIJKLMNOPRTUVW⊤′βγδθφχ",
               "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱʲᵏᵃᵇᶜᵈᵉᶠᵍʰˡᵐᵒᵖʳˢᵗᵘᵛʷˣʸᶻᴬᴮᴰᴱᴳᴴᴵᴶᴷᴸᴹᴺᴼᴾᴿᵀᵁⱽᵂᵀ′ᵝᵞᵟᶿᵠᵡ"))
SUB = dict(zip("0123456789+-=()aehijklmnoprstuvxβγρφχ",
               "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓᵦᵧᵨᵩᵪ"))
_QUAD = "\x00"                               # \quad: kept wide when spaces are collapsed
# after these the source's space is kept (a ≤ b, log p); after letters and ∂ it goes (∂L, γG)
SPACED = {m for m, u in SYMBOLS.items() if u and not u.isalpha() and u.strip()
          and m not in ("partial", "langle", "lfloor", "lceil")} \
    | {"log", "ln", "exp", "sin", "cos", "tan", "sinh", "cosh", "tanh", "coth", "max", "min", "det"}
VULGAR = {("1", "2"): "½", ("1", "3"): "⅓", ("2", "3"): "⅔", ("1", "4"): "¼", ("3", "4"): "¾",
          ("1", "5"): "⅕", ("1", "6"): "⅙", ("1", "8"): "⅛"}


def available():
    """True when pylatexenc (the parser behind this module) is installed."""
    try:
        import pylatexenc  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _context():
    """pylatexenc's context: our macros with their arguments, our environments, '&'."""
    from pylatexenc.macrospec import EnvironmentSpec, LatexContextDb, MacroSpec, SpecialsSpec
    db = LatexContextDb()
    specs = [MacroSpec(m, "") for m in SYMBOLS]
    specs += [MacroSpec(m, "{{") for m in FRACTIONS + ("binom",)]
    specs += [MacroSpec(m, "{") for m in ONE_ARG]
    specs += [MacroSpec("sqrt", "[{"), MacroSpec("\\", "")]
    db.add_context_category("handydl", macros=specs,
                            environments=[EnvironmentSpec(e, "") for e in ENVIRONMENTS],
                            specials=[SpecialsSpec("&")])
    return db


def _parse(tex):
    from pylatexenc.latexwalker import LatexWalker
    nodes, _, _ = LatexWalker(tex, latex_context=_context(), tolerant_parsing=False).get_latex_nodes()
    return nodes


# -- rendering -----------------------------------------------------------------------------

def to_unicode(tex):
    """``tex`` (math-mode LaTeX) as one line of Unicode text; unchanged without pylatexenc."""
    if not available():
        return tex
    text = re.sub(" {2,}", " ", _Render().nodes(_parse(tex)))     # spacing macros meet source spaces
    return re.sub(" ?\x00 ?", "   ", text).strip()


def _script(text, table, mark):
    """x² where every character has a Unicode super/subscript, else ^x or ^(…)."""
    text = text.strip()
    if text and all(ch in table for ch in text):
        return "".join(table[ch] for ch in text)
    return mark + (text if len(text) == 1 else f"({text})")


def _is(token, chars):
    """Is ``token`` one of the characters ``chars`` (and not a node)?"""
    return isinstance(token, str) and token in chars


def _atomic(text):
    """Can ``text`` stand as a numerator, a denominator or under a root without parentheses?"""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch in "([{⟨" and 1 or (-1 if ch in ")]}⟩" else 0)
        if depth == 0 and (ch in " +=,/·×<>≤≥:;" or (ch == "-" and i > 0)):
            return False
    return True


def _enclosed(text):
    """Is ``text`` one parenthesized group, as (a + b)?"""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for ch in text[:-1]:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return False
    return True


def _wrap(text):
    return text if _atomic(text) else f"({text})"


class _Render:
    """A walk of pylatexenc's nodes that writes Unicode."""

    in_text = False                          # inside \text{...}: a quote stays a quote

    def nodes(self, nodelist):
        from pylatexenc.latexwalker import LatexCharsNode
        tokens = []                          # characters and nodes, so that ^ and _ take what follows
        for n in nodelist or []:
            if isinstance(n, LatexCharsNode):
                tokens.extend(n.chars)
            elif n is not None:
                tokens.append(n)
        out, i = [], 0
        while i < len(tokens):
            t = tokens[i]
            i += 1
            if _is(t, "^_"):
                while i < len(tokens) and _is(tokens[i], " "):
                    i += 1
                arg = self.node(tokens[i]) if i < len(tokens) else ""
                spaced = i < len(tokens) and getattr(tokens[i], "macroname", None) in SYMBOLS \
                    and tokens[i].macro_post_space              # W^\top + b: the space stays
                i += 1
                out.append(_script(arg, SUP if t == "^" else SUB, t) + (" " if spaced else ""))
            elif isinstance(t, str):
                out.append("′" if t == "'" and not self.in_text else t)
            elif getattr(t, "macroname", None) in ("left", "right") and i < len(tokens) and _is(tokens[i], "."):
                i += 1                      # \left. is an invisible delimiter
            elif getattr(t, "macroname", None) == "underbrace" and i < len(tokens) and _is(tokens[i], "_"):
                label = self.node(tokens[i + 1]) if i + 1 < len(tokens) else ""
                i += 2
                out.append(f"{self.node(t)} ({label})")
            else:
                text = self.node(t)
                if getattr(t, "macroname", None) in SYMBOLS and t.macro_post_space and i < len(tokens) and isinstance(tokens[i], str) \
                        and not (tokens[i].isalnum() or tokens[i] in " _^'({[") and not text.endswith(" "):
                    text += " "             # σ = …, not σ= …
                j = i                       # what comes next, past invisible sizing macros
                while j < len(tokens) and getattr(tokens[j], "macroname", "") in _SIZING:
                    j += 1
                if getattr(t, "macroname", None) in FRACTIONS and j < len(tokens) \
                        and (not isinstance(tokens[j], str) or tokens[j].isalnum() or tokens[j] == "("):
                    text += " "             # 1/S (G - …), not 1/S(G - …)
                out.append(text)
        return "".join(out)

    def node(self, n):
        from pylatexenc import latexwalker as lw
        if isinstance(n, str):
            return n
        if isinstance(n, lw.LatexCharsNode):
            return self.nodes([n])
        if isinstance(n, lw.LatexGroupNode):
            return self.nodes(n.nodelist)
        if isinstance(n, lw.LatexMathNode):
            return self.nodes(n.nodelist)
        if isinstance(n, lw.LatexEnvironmentNode):
            return self.environment(n)
        if isinstance(n, lw.LatexSpecialsNode):
            return " "
        if isinstance(n, lw.LatexMacroNode):
            return self.macro(n)
        return ""                            # comments

    def args(self, n):
        return [self.node(a) if a is not None else None for a in (n.nodeargd.argnlist if n.nodeargd else [])]

    def macro(self, n):
        name = n.macroname
        if name in SYMBOLS:
            return SYMBOLS[name] + (" " if name in SPACED and n.macro_post_space else "")
        args = self.args(n)
        if name in FRACTIONS:
            num, den = (a.strip() for a in args)
            return VULGAR.get((num, den)) or f"{_wrap(num)}/{_wrap(den)}"
        if name == "binom":
            return f"C({args[0]}, {args[1]})"
        if name == "sqrt":
            root = {"3": "∛", "4": "∜"}.get((args[0] or "").strip(), "√" if not args[0] else f"{args[0]}√")
            body = args[1].strip()
            return root + (body if len(body) == 1 or body.isdigit() or _enclosed(body) else f"({body})")
        if name in CONTENT or name in TEXT_ONLY:
            if name in ("text", "texttt", "textbf", "textit", "emph", "mbox"):
                self.in_text, before = True, self.in_text
                try:
                    return self.node(n.nodeargd.argnlist[0])
                finally:
                    self.in_text = before
            return args[0]
        if name in ACCENTS:
            return "".join(ch + ACCENTS[name] if ch.isalnum() else ch for ch in args[0]
                           if ch.strip() or len(args[0].strip()) > 1 and name in ("overline", "bar"))
        if name == "mathbb":
            return "".join(BLACKBOARD.get(ch, ch) for ch in args[0])
        if name == "mathcal":
            return args[0]
        if name == "\\":
            return "; "
        return "\\" + name                  # unknown: left visible (latex_problems reports it)

    def environment(self, n):
        rows = _rows(n.nodelist)
        cells = [[self.nodes(c).strip() for c in row] for row in rows]
        cells = [r for r in cells if any(r)]
        if n.environmentname == "cases":
            return "{" + "; ".join(_case(r) for r in cells) + "}"
        if n.environmentname in ("align*", "aligned"):
            return "; ".join(" ".join(r) for r in cells)
        return "[" + "; ".join(", ".join(r) for r in cells) + "]"


def _case(row):
    value, cond = (row + [""])[:2]
    if not cond or cond.split()[0] in ("otherwise", "else"):
        return f"{value} {cond}".strip()
    return f"{value} if {cond.removeprefix('if ')}"


def _rows(nodelist):
    """The cells of an environment: rows split at \\\\, columns at &."""
    from pylatexenc import latexwalker as lw
    rows, row, cell = [], [], []
    for n in nodelist or []:
        if isinstance(n, lw.LatexMacroNode) and n.macroname == "\\":
            rows.append(row + [cell])
            row, cell = [], []
        elif isinstance(n, lw.LatexSpecialsNode) and n.specials_chars == "&":
            row.append(cell)
            cell = []
        else:
            cell.append(n)
    rows.append(row + [cell])
    return rows


# -- the check -----------------------------------------------------------------------------

def latex_problems(tex, math=True):
    """What stops ``tex`` from compiling (with amsmath) or rendering in KaTeX: unknown
    macros or environments, unbalanced braces, \\left without \\right, a double
    superscript or subscript, & outside an alignment, _ or ^ in text mode.  ``math``:
    ``tex`` is math-mode content (a formula) rather than a LaTeX document body."""
    from pylatexenc.latexwalker import LatexWalkerError
    try:
        nodes = _parse(tex)
    except LatexWalkerError as e:
        return [f"does not parse: {e}"]
    problems = []
    _walk(nodes, math, False, problems)
    return problems


def _walk(nodelist, math, aligned, problems):
    from pylatexenc import latexwalker as lw
    tokens = []
    for n in nodelist or []:
        tokens.extend(n.chars if isinstance(n, lw.LatexCharsNode) else [n])
    lefts, scripts, i = 0, "", 0                 # scripts: those attached to the current base
    while i < len(tokens):
        n = tokens[i]
        i += 1
        if isinstance(n, str):
            if n in "^_":
                if not math:
                    problems.append(f"{n!r} outside math mode (write \\{n} in text)")
                elif n in scripts:
                    problems.append(f"double {'superscript' if n == '^' else 'subscript'}")
                scripts += n
                while i < len(tokens) and _is(tokens[i], " "):
                    i += 1
                if i < len(tokens) and not isinstance(tokens[i], str):
                    _walk([tokens[i]], math, False, problems)
                i += 1                           # the script's argument
            elif not n.isspace():
                scripts = ""
            continue
        scripts = ""
        if isinstance(n, lw.LatexGroupNode):
            _walk(n.nodelist, math, False, problems)
        elif isinstance(n, lw.LatexMathNode):
            _walk(n.nodelist, True, False, problems)
        elif isinstance(n, lw.LatexSpecialsNode):
            if n.specials_chars == "&" and not aligned:
                problems.append("& outside an alignment (cases, align*)")
        elif isinstance(n, lw.LatexEnvironmentNode):
            env = n.environmentname
            if env not in ENVIRONMENTS:
                problems.append(f"unknown environment {env!r}")
            elif (env == "align*") == math:
                problems.append(f"environment {env!r} in {'math' if math else 'text'} mode")
            _walk(n.nodelist, True, env in SCRIPTED_ENVS, problems)
        elif isinstance(n, lw.LatexMacroNode):
            name = n.macroname
            if name not in (MATH_MACROS if math else TEXT_MACROS):
                known = name in MATH_MACROS | TEXT_MACROS
                problems.append(f"\\{name} in {'math' if math else 'text'} mode" if known
                                else f"unknown macro \\{name}")
            if name == "\\" and math and not aligned:
                problems.append("\\\\ outside an alignment")
            lefts += {"left": 1, "right": -1}.get(name, 0)
            if lefts < 0:
                problems.append("\\right without \\left")
                lefts = 0
            text_arg = name in ("text", "textbf", "textit", "texttt", "emph", "mbox") + TEXT_ONLY
            for a in (n.nodeargd.argnlist if n.nodeargd else []):
                if a is not None:
                    _walk([a], math and not text_arg, False, problems)
    if lefts:
        problems.append("\\left without \\right")
