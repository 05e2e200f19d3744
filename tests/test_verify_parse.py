"""handydl.check.mathparse: math as people type it (plain math, Unicode, LaTeX)
read into the same safe tree; each reading is compared with the expression
built directly with SymPy's constructors (never by parsing text)."""
from __future__ import annotations

import time

import numpy as np
import pytest

sp = pytest.importorskip("sympy")

from handydl.check import ExprError  # noqa: E402
from handydl.check.expr import parse as parse_expr_lang  # noqa: E402
from handydl.check.mathparse import parse, parse_relation, split_relation  # noqa: E402

x, y, a, b, N, p = (sp.Symbol(n, real=True) for n in ("x", "y", "a", "b", "N", "p"))
k = sp.Symbol("k", integer=True)
alpha = sp.Symbol("alpha", real=True)
i, j = sp.Symbol("i", real=True), sp.Symbol("j", real=True)
sig = 1 / (1 + sp.exp(-x))
relu = sp.Max(0, x)
pw = sp.Piecewise((x, x > 0), (0, True))

READINGS = [
    # plain math
    ("2x^2", 2 * x**2),
    ("2 x^2 + 3x - 1", 2 * x**2 + 3 * x - 1),
    ("x^-2", x**-2),
    ("2^-x", 2**-x),
    ("x(1-x)", x * (1 - x)),
    ("(x+1)(x-1)", (x + 1) * (x - 1)),
    ("σ(x)(1-σ(x))", sig * (1 - sig)),
    ("σ(x)·(1 − σ(x))", sig * (1 - sig)),
    ("x² − 1", x**2 - 1),
    ("x × 3", 3 * x),
    ("ln x", sp.log(x)),
    ("ln(1 + e^x)", sp.log(1 + sp.exp(x))),
    ("sech(x)^2", sp.sech(x)**2),
    ("sech²(x)", sp.sech(x)**2),
    ("coth(x)", sp.coth(x)),
    ("tanh^2 x", sp.tanh(x)**2),
    ("sin x cos x", sp.sin(x) * sp.cos(x)),
    ("max(0, x)", relu),
    ("ReLU(x)", relu),
    ("|x|", sp.Abs(x)),
    ("x if x > 0 else 0", pw),
    ("{x, x>0; 0, otherwise}", pw),
    ("{x, x > 0; 0.01x, otherwise}", sp.Piecewise((x, x > 0), (x / 100, True))),
    ("1 if x != 3 else 5", sp.Piecewise((1, sp.Ne(x, 3)), (5, True))),
    ("α x^p", alpha * x**p),
    ("x**2", x**2),                                      # the Python spelling still works
    ("2.0000001*x", sp.Rational("2.0000001") * x),        # exact decimals, not a float
    ("e^x", sp.exp(x)),
    ("-sin(x)", -sp.sin(x)),
    ("(x > 0) * 2", sp.Piecewise((1, x > 0), (0, True)) * 2),    # a condition in arithmetic: 1 or 0
    # LaTeX
    (r"\frac{1}{1+e^{-x}}", sig),
    (r"\dfrac{1}{1+\exp(-x)}", sig),
    (r"\sigma(x)\left(1 - \sigma(x)\right)", sig * (1 - sig)),
    (r"1 - \tanh^2(x)", 1 - sp.tanh(x)**2),
    (r"1 - \tanh^2 x", 1 - sp.tanh(x)**2),
    (r"e^{-x^2/2}", sp.exp(-x**2 / 2)),
    (r"\exp(-x) \cdot \log(x)", sp.exp(-x) * sp.log(x)),
    (r"\ln(x) \times 2", 2 * sp.log(x)),
    (r"\sqrt{x^2 + 1}", sp.sqrt(x**2 + 1)),
    (r"\sqrt[3]{x}", x**sp.Rational(1, 3)),
    (r"a x + b", a * x + b),                                # LaTeX letters multiply
    (r"\sin 2x", sp.sin(2 * x)),
    (r"\max(0, x)", relu),
    (r"\mathrm{ReLU}(x)", relu),
    (r"\operatorname{sech}^2(x)", sp.sech(x)**2),
    (r"\left| x \right|", sp.Abs(x)),
    (r"\sum_{k=1}^{N} k x^k", sp.Sum(k * x**k, (k, 1, N))),
    (r"\prod_{k=1}^{3} (x + k)", sp.Product(x + k, (k, 1, 3))),
    (r"\begin{cases} x & x > 0 \\ 0 & \text{otherwise} \end{cases}", pw),
    (r"\begin{cases} x, & \text{if } x > 0, \\ 0, & \text{otherwise.} \end{cases}", pw),
    (r"\begin{cases} 1 & x \geq 0 \\ 0 & x < 0 \end{cases}",
     sp.Piecewise((1, x >= 0), (0, x < 0), (sp.nan, True))),
    (r"\delta_{ij}", sp.Piecewise((1, sp.Eq(i, j)), (0, True))),
    (r"\frac{d}{dx}\tanh(x)", sp.Derivative(sp.tanh(x), x)),
    (r"\frac{d}{dx} \left( x^2 \right)", sp.Derivative(x**2, x)),
    (r"\frac{d^2}{dx^2} x^3", sp.Derivative(x**3, (x, 2))),
    (r"\frac{d \tanh x}{dx}", sp.Derivative(sp.tanh(x), x)),
    ("d/dx (x^2)", sp.Derivative(x**2, x)),
    ("tanh'(x)", sp.Derivative(sp.tanh(x), x)),
    ("σ'(x)", sp.Derivative(sig, x)),
    ("f'(x)", sp.Derivative(sp.Function("f")(x), x)),
    ("$x^2$", x**2),
]


@pytest.mark.parametrize("text,expected", READINGS, ids=[t for t, _ in READINGS])
def test_every_notation_reads_as_the_math_it_means(text, expected):
    got = parse(text)
    assert got == expected or sp.simplify(got - expected) == 0, f"{text!r} read as {got}"


def test_subscripts_are_indices_or_names():
    o = sp.IndexedBase("o", real=True)
    L = sp.Symbol("L", real=True)
    jj = sp.Symbol("j", real=True)
    assert parse(r"\frac{\partial L}{\partial o_j}") == sp.Derivative(L, o[jj])
    pi_ = sp.IndexedBase("p", real=True)
    ii = sp.Symbol("i", real=True)
    assert parse("p_i (1 - p_j)") == pi_[ii] * (1 - pi_[jj])
    assert parse("x_1 + W_{12}") == sp.Symbol("x_1", real=True) + sp.Symbol("W_12", real=True)


def test_relations_split_at_top_level_equals_only():
    assert split_relation("a = b = c") == ["a", "b", "c"]
    assert split_relation("x if x == 0 else 1") == ["x if x == 0 else 1"]
    assert split_relation(r"\begin{cases} 1 & i = j \\ 0 & i \ne j \end{cases} = 2") == \
        [r"\begin{cases} 1 & i = j \\ 0 & i \ne j \end{cases}", "2"]
    lhs, rhs = parse_relation(r"\frac{d}{dx}\tanh x = 1 - \tanh^2 x")
    assert lhs == sp.Derivative(sp.tanh(x), x) and rhs == 1 - sp.tanh(x)**2
    assert sp.simplify(lhs.doit() - rhs) == 0


def test_the_numeric_evaluator_reads_the_same_trees():
    xs = np.linspace(-3, 3, 13)
    for text, want in [("2x^2", 2 * xs**2), (r"\frac{1}{1+e^{-x}}", 1 / (1 + np.exp(-xs))),
                       ("{x, x>0; 0, otherwise}", np.maximum(xs, 0)), ("sech(x)^2", 1 / np.cosh(xs)**2),
                       (r"\sum_{k=1}^{3} k x^k", xs + 2 * xs**2 + 3 * xs**3)]:
        np.testing.assert_allclose(parse_expr_lang(text).evaluate({"x": xs}), want, rtol=1e-12)
    P = np.array([0.2, 0.3, 0.5])
    got = parse_expr_lang(r"\sum_i p_i \log p_i").evaluate({"p": P})
    assert np.isclose(got, np.sum(P * np.log(P)))
    G, X = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(parse_expr_lang(r"G^T").evaluate({"G": G}), G.T)
    H = X + 1
    np.testing.assert_array_equal(parse_expr_lang(r"X^\top \cdot H^{T}").evaluate({"X": X, "H": H}), X.T * H.T)


@pytest.mark.parametrize("text,fragments", [
    ("x +* 2", ["'*'", "column 4"]),
    ("sin(x", ["')'", "close"]),
    ("(x + 1))", ["')'", "remove the extra ')'"]),
    (r"\foo(x)", [r"unknown LaTeX command \foo"]),
    (r"\tanx", [r"\tanx", r"did you mean \tan"]),
    ("sigmod(x)", ["unknown function 'sigmod'", "did you mean sigmoid"]),
    ("x if x > 0", ["'if' without 'else'", "x if x > 0 else 0"]),
    (r"\frac{1}", ["\\frac needs two groups"]),
    (r"\begin{pmatrix} 1 \end{pmatrix}", ["matrix literals are not supported"]),
    ("x = 2", ["relation", "parse_relation"]),
    ("x # 2", ["'#'", "not math"]),
    ("", ["empty"]),
])
def test_errors_name_the_token_and_suggest_a_fix(text, fragments):
    with pytest.raises(ExprError) as info:
        parse(text)
    for f in fragments:
        assert f in str(info.value), str(info.value)


@pytest.mark.parametrize("text,fragment", [
    ("__import__('os')", "'__import__' is not allowed"),
    ("x.__class__", "'.__class__' is not allowed"),
    ("os.system('ls')", "calling 'os.system' is not allowed"),
    ("(lambda: 1)()", "'lambda' is not allowed"),
    ("eval('2')", "'eval' is not allowed"),
    ("[c for c in x]", "a list '[...]' is not allowed"),
    (r"\text{__import__}(x)", "'__import__' is not allowed"),
    ("exp.__globals__", "'.__globals__' is not allowed"),
    ("'rm -rf'", "numbers only"),
])
def test_no_text_reaches_python(text, fragment):
    with pytest.raises(ExprError) as info:
        parse_expr_lang(text)
    assert fragment in str(info.value)
    with pytest.raises(ExprError):
        parse(text)


@pytest.mark.parametrize("text,fragment", [
    ("9**9**9", "exponent"),
    ("9^9^9", "exponent"),
    ("x^(10^10)", "exponent"),
    ("2^100000", "exponent"),
    ("10^400", "digits"),
    ("sin(" * 50 + "x" + ")" * 50, "nested more than"),
    ("(" * 100 + "x" + ")" * 100, "nested more than"),
    ("-" * 100 + "x", "nested more than"),
    ("+".join(f"sin({n}x)" for n in range(3000)), "characters"),
    ("+".join(["x"] * 1900), "terms and operators"),
    (r"\sum_{k=1}^{100000} x^k", "100000 terms"),
    ("1" * 400, "digits"),
])
def test_sizes_are_refused_before_anything_is_built(text, fragment):
    t = time.perf_counter()
    with pytest.raises(ExprError) as info:
        parse(text)
    assert fragment in str(info.value)
    assert time.perf_counter() - t < 2.0


def test_a_long_sum_is_read_flat_not_thousands_of_levels_deep():
    text = "+".join(f"{n}*x" for n in range(1, 400))
    assert parse(text) == sp.Rational(399 * 400, 2) * x
    assert parse_expr_lang(text).evaluate({"x": 2.0}) == 399 * 400


@pytest.mark.parametrize("make", [
    lambda x, sp: sp.log(x**2 + 1)**2, lambda x, sp: sp.sin(x)**2, lambda x, sp: sp.sin(x**2),
    lambda x, sp: sp.log(x)**3 + sp.exp(x)**2, lambda x, sp: sp.tanh(x)**2 * sp.cos(x),
    lambda x, sp: sp.log(sp.sin(x)**2 + 2), lambda x, sp: sp.exp(sp.log(x + 3)**2)])
def test_sympys_latex_reads_back_as_the_same_function(make):
    """What SymPy's latex() prints parses to the function it printed: a power
    after a braced argument, \\log{\\left(x\\right)}^{2}, is the function's (a
    random CI run read it as log(x^2) once)."""
    sp = pytest.importorskip("sympy")
    x = sp.Symbol("x")
    expected = make(x, sp)
    got = parse(sp.latex(expected))
    (symbol,) = got.free_symbols
    assert symbol.name == "x"
    for v in (0.3, 0.7, 1.9):
        assert float(got.subs(symbol, v)) == pytest.approx(float(expected.subs(x, v)), rel=1e-12)


def test_two_powers_of_one_function_are_refused():
    with pytest.raises(ExprError, match="two powers of log"):
        parse(r"\log^{2}{\left(x\right)}^{3}")
