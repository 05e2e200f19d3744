"""explain shows it well: Unicode math in the terminal (no LaTeX macros left), the
definitions and a check mark on every step, LaTeX that uses only macros LaTeX and KaTeX
know (checked by pylatexenc's parser against a whitelist, and by a real pdflatex when one
is installed), derivations that display as math in Jupyter."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys

import pytest

from handydl import derivations, ops

pytest.importorskip("pylatexenc", reason="pip install pylatexenc (the explain extra) for Unicode math")
from handydl.mathtext import latex_problems, to_unicode  # noqa: E402

NAMES = ops.names() + list(derivations.COMPOSITES)
MACRO = re.compile(r"\\[A-Za-z]+|\\[,;:! {}|_^]")


def every_math_string():
    """(where, LaTeX) of every formula the library shows."""
    for n in ops.names():
        op = ops.get(n)
        yield f"{n}.formula", op.formula
        yield f"{n}.derivative", op.derivative
    for c in derivations.COMPOSITES.values():
        yield f"{c.name}.formula", c.formula
        yield f"{c.name}.derivative", c.derivative
    for d in derivations.DERIVATIONS:
        if d.setup:
            yield f"{d.title}: setup", d.setup
        for k, s in enumerate(d.steps, start=1):
            yield f"{d.title}: step {k}", s.tex


# -- Unicode in the terminal -----------------------------------------------------------------

@pytest.mark.parametrize("tex, text", [
    (r"\sigma'(x) = \sigma(x)\bigl(1 - \sigma(x)\bigr)", "σ′(x) = σ(x)(1 - σ(x))"),
    (r"\frac{e^{-x}}{(1 + e^{-x})^2}", "e⁻ˣ/(1 + e⁻ˣ)²"),
    (r"\frac{\partial p_i}{\partial o_j} = p_i (\delta_{ij} - p_j)", "∂pᵢ/∂oⱼ = pᵢ (δᵢⱼ - pⱼ)"),
    (r"\frac{\partial L}{\partial x} = G W^\top", "∂L/∂x = G Wᵀ"),
    (r"\sqrt{\sigma_B^2 + \epsilon}", "√(σ_B² + ϵ)"),
    (r"\tfrac12 \sum_k x_k \odot y", "½ ∑ₖ xₖ ⊙ y"),
    (r"x_{n,c,i}^{p-1}", "x_(n,c,i)ᵖ⁻¹"),
    (r"\begin{cases} x & x > 0 \\ 0 & \text{otherwise} \end{cases}", "{x if x > 0; 0 otherwise}"),
    (r"\frac{1}{S}\Bigl(G_j - \sum_i G_i y_i\Bigr)", "1/S (Gⱼ - ∑ᵢ Gᵢ yᵢ)"),
    (r"\hat x,\ \tilde g,\ \mathbb{R}^{n}", "x̂, g̃, ℝⁿ"),
    (r"a \le b,\quad \log p", "a ≤ b,   log p"),
])
def test_latex_becomes_unicode(tex, text):
    assert to_unicode(tex) == text


@pytest.mark.parametrize("where, tex", list(every_math_string()), ids=lambda v: str(v)[:60])
def test_no_macro_survives_the_rendering(where, tex):
    text = to_unicode(tex)
    assert not MACRO.search(text), f"{where}: {text!r} still has {MACRO.search(text).group()}"


@pytest.mark.parametrize("name", NAMES)
def test_terminal_output_has_no_latex(name):
    out = derivations.explain(name, "text", check=False)
    assert not MACRO.search(out), f"explain {name}: {MACRO.search(out).group()!r} left in\n{out}"
    assert to_unicode(ops.get(name).formula if name in ops.names() else
                      derivations.COMPOSITES[name].formula) in out


def test_explain_runs_the_checks_and_marks_every_step():
    out = derivations.explain("sigmoid")
    (d,) = derivations.for_op("sigmoid")
    assert out.count("✓") == len(d.steps) + 1                # every step, and the code
    assert "SymPy" in out and "checked just now" in out
    out = derivations.explain("linear")
    assert "central differences" in out and "✗" not in out


def test_a_wrong_step_is_marked_when_it_prints():
    d = copy.deepcopy(derivations.for_op("tanh")[0])
    d.steps[1].expr = "1 + (exp(x) - exp(-x))**2 / (exp(x) + exp(-x))**2"
    out = d.explain("text")
    assert out.count("✗ does not follow") == 1
    lines = out.splitlines()
    bad = next(i for i, line in enumerate(lines) if "✗" in line)
    assert lines[bad - 3].lstrip().startswith("2.")          # on step 2, the one that was broken


def test_without_checks_it_says_how_the_tests_check():
    out = derivations.explain("sigmoid", check=False)
    assert "✓" not in out and out.count(derivations.HOW_SCALAR) == len(derivations.for_op("sigmoid")[0].steps)
    out = derivations.explain("batch_norm", "markdown", check=False)
    assert derivations.HOW_ARRAY in out


def test_the_definitions_are_shown():
    (d,) = derivations.for_op("batch_norm")
    for fmt in ("text", "markdown", "latex"):
        out = derivations.explain("batch_norm", fmt, check=False)
        for let in d.let:                                     # M, mu, v, s, xhat
            assert let in out or let.replace("_", r"\_") in out, (fmt, let)
    out = derivations.explain("lp_norm", check=False)
    assert "p = 3" in out and "n = sum(abs(x)**p)**(1 / p)" in out


def test_explain_cli_prints_unicode(tmp_path):
    r = subprocess.run([sys.executable, "-m", "handydl", "explain", "softmax"], capture_output=True,
                       timeout=120)
    out = r.stdout.decode("utf-8")
    assert r.returncode == 0, r.stderr
    assert "∂pᵢ/∂xⱼ = pᵢ(δᵢⱼ - pⱼ)" in out and "✓" in out and not MACRO.search(out)
    r = subprocess.run([sys.executable, "-m", "handydl", "explain", "softmax", "--no-check"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and "✓" not in r.stdout.decode("utf-8")


def test_a_terminal_without_unicode_gets_a_note_not_a_traceback():
    import os
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    r = subprocess.run([sys.executable, "-m", "handydl", "explain", "relu", "--no-check"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "cannot show Unicode math" in r.stderr and "max(0, x)" in r.stdout


# -- LaTeX that compiles -----------------------------------------------------------------------

@pytest.mark.parametrize("tex, problem", [
    (r"p_i,\quadg_x = p", r"unknown macro \quadg"),              # the bug of issue 16
    (r"x^2^3", "double superscript"),
    (r"x_i_j", "double subscript"),
    (r"\frac{a}{b", "does not parse"),
    (r"\left( x", r"\left without \right"),
    (r"x \right)", r"\right without \left"),
    (r"\foo{x}", r"unknown macro \foo"),
    (r"\begin{tabular} x \end{tabular}", "unknown environment 'tabular'"),
    (r"a & b", "& outside an alignment"),
])
def test_the_latex_check_finds_what_breaks_compilation(tex, problem):
    assert any(problem in p for p in latex_problems(tex)), latex_problems(tex)


def test_the_latex_check_knows_text_mode():
    assert any("outside math mode" in p for p in latex_problems(r"\paragraph{a_b}", math=False))
    assert latex_problems(r"\paragraph{a\_b} \[ x_i \] \text{e\textasciicircum{}\{o\_i\}}", math=False) == []
    assert latex_problems(r"x_{\text{skip}} \text{a_b}") != []


def test_reason_texts_are_escaped_once():
    assert derivations._tex_text("e^{o_i}") == r"e\textasciicircum{}\{o\_i\}"
    assert derivations._tex_text("50% & #1 $") == r"50\% \& \#1 \$"


@pytest.mark.parametrize("where, tex", list(every_math_string()), ids=lambda v: str(v)[:60])
def test_every_formula_uses_known_macros_only(where, tex):
    assert latex_problems(tex) == [], where


@pytest.mark.parametrize("name", NAMES)
def test_every_latex_and_markdown_output_compiles(name):
    out = derivations.explain(name, "latex", check=False)
    assert latex_problems(out, math=False) == []
    md = derivations.explain(name, "markdown", check=False)
    for math in re.findall(r"\$\$(.+?)\$\$", md):
        assert latex_problems(math) == [], math
    assert r"\quadg" not in out and r"\^\{\}" not in out


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex on this machine")
def test_the_latex_output_compiles_with_pdflatex(tmp_path):
    body = "\n".join(derivations.explain(n, "latex", check=False) for n in NAMES)
    doc = ("\\documentclass{article}\n\\usepackage{amsmath,amssymb}\n\\usepackage[utf8]{inputenc}\n"
           "\\begin{document}\n" + body + "\\end{document}\n")
    (tmp_path / "d.tex").write_text(doc)
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "d.tex"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]


# -- Jupyter -------------------------------------------------------------------------------------

def test_a_derivation_displays_as_math_in_jupyter():
    d = derivations.for_op("softmax")[0]
    md = d._repr_markdown_()
    assert md.startswith(f"### {d.title}") and all(f"$${s.tex}$$" in md for s in d.steps)
    assert md.count("✓") == len(d.steps) + 1
    for math in re.findall(r"\$\$(.+?)\$\$", md):
        assert latex_problems(math) == []
    tex = d._repr_latex_()
    assert tex.startswith("$$") and tex.endswith("$$")
    assert latex_problems(tex[2:-2]) == [] and tex.count("checked") == len(d.steps)


def test_jupyter_formatter_picks_the_math():
    formatters = pytest.importorskip("IPython.core.formatters")
    d = derivations.for_op("cross_entropy")[0]
    bundle, _ = formatters.DisplayFormatter().format(d)
    assert "text/markdown" in bundle and "text/latex" in bundle
    assert "p_j - y_j" in bundle["text/markdown"]


# -- every op is derived -----------------------------------------------------------------------

def test_every_registered_op_has_a_checked_derivation():
    derived = {d.op for d in derivations.DERIVATIONS}
    missing = [n for n in ops.names() if n not in derived]
    assert not missing, (
        f"no derivation for {', '.join(missing)}: add to DERIVATIONS in handydl/derivations.py, for each, "
        "Derivation(OP, TITLE, FUNCTION, [Step(LATEX, EXPR, WHY), ...], code=lambda env: ...) "
        "(FUNCTION and EXPR in the language of handydl.check.expr; scalar ops: wrt='x', "
        "array ops: wrt=NAME and shapes={NAME: SHAPE, ...}, see the existing ones); "
        "tests/test_explain_plot.py checks every step and ties the op's backward to the last step "
        "through code; then regenerate docs/derivations.md")
    # every derivation is tied to the op's hand-written backward (its last line is the code)
    untied = [d.title for d in derivations.DERIVATIONS if d.code is None]
    assert not untied, f"derivations without code= (the op's backward to compare with the last step): {untied}"
