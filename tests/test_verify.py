"""handydl verify: correct and wrong claims of every family, with the expected
verdict; the safe parser; precise errors with exit status 2."""
from __future__ import annotations

import subprocess
import sys

import pytest

from handydl.check import ExprError, verify_derivative, verify_gradient

pytest.importorskip("sympy")

SCALAR = [
    # (function, claim, correct?)
    ("tanh(x)", "1 - tanh(x)**2", True),
    ("tanh(x)", "1 + tanh(x)**2", False),
    ("tanh(x)", "1 - tan(x)**2", False),                      # tan for tanh
    ("sigmoid(x)", "sigmoid(x) * (1 - sigmoid(x))", True),
    ("sigmoid(x)", "sigmoid(x) * (1 + sigmoid(x))", False),
    ("x**2 / (1 + x)", "(2*x*(1 + x) - x**2) / (1 + x)**2", True),
    ("x**2 / (1 + x)", "(2*x*(1 + x) + x**2) / (1 + x)**2", False),   # a sign in the quotient rule
    ("exp(3*x)", "3 * exp(3*x)", True),
    ("exp(3*x)", "exp(3*x)", False),                          # a dropped factor
    ("x**2", "x", False),                                     # a dropped factor of 2
    ("log(x)", "1/x", True),
    ("softplus(x)", "sigmoid(x)", True),
    ("gelu(x)", "0.5 * (1 + erf(x / sqrt(2))) + x * exp(-x**2 / 2) / sqrt(2 * pi)", True),
    ("gelu(x)", "0.5 * (1 + erf(x))", False),
    ("x * sigmoid(x)", "sigmoid(x) * (1 + x * (1 - sigmoid(x)))", True),
]

PIECEWISE = [
    ("relu(x)", "1 if x > 0 else 0", True),
    ("relu(x)", "1 if x >= 0 else 0", True),                  # differs only at the kink
    ("relu(x)", "1", False),
    ("abs(x)", "sign(x)", True),
    ("abs(x)", "1", False),
    ("max(x, 2 * x)", "where(x > 0, 2, 1)", True),
    ("leaky_relu(x)", "1 if x > 0 else 0.01", True),
    ("leaky_relu(x)", "1 if x > 0 else 0.1", False),
]


@pytest.mark.parametrize("function,claim,correct", SCALAR + PIECEWISE)
def test_scalar_and_piecewise_claims(function, claim, correct):
    v = verify_derivative(function, claim)
    assert v.correct is correct, str(v)
    if not correct:
        ce = v.counterexample
        assert abs(ce["claimed"] - ce["true"]) > 1e-6 and v.expected


def test_verdict_says_which_method_decided():
    assert verify_derivative("tanh(x)", "1 - tanh(x)**2").method.startswith("symbolic")
    v = verify_derivative("relu(x)", "1 if x >= 0 else 0")
    assert "numeric sampling" in v.method
    assert any("at x = 0 the function is not differentiable (left derivative 0, right 1); the claim "
               "gives 1 there: the right derivative" in n for n in v.notes)


def test_expected_derivative_is_printed_for_a_wrong_claim():
    v = verify_derivative("tanh(x)", "1 + tanh(x)**2")
    assert v.expected == "1 - tanh(x)**2"
    assert "counterexample: x = " in str(v) and "the true derivative: 1 - tanh(x)**2" in str(v)


SHAPES = {"X": (3, 4), "W": (4, 2)}
CHAIN = {"A": (2, 3), "B": (3, 4), "C": (4, 2), "G": (2, 2)}
ARRAY = [
    ("sum((X @ W)**2)", "W", "2 * X.T @ (X @ W)", SHAPES, None, True),
    ("sum((X @ W)**2)", "W", "X.T @ (X @ W)", SHAPES, None, False),                 # dropped 2
    ("sum((X @ W)**2)", "X", "2 * (X @ W) @ W.T", SHAPES, None, True),
    ("sum(G * (A @ B @ C))", "B", "A.T @ G @ C.T", CHAIN, None, True),
    ("sum(G * (A @ B @ C))", "B", "A @ G @ C", {"A": (3, 3), "B": (3, 3), "C": (3, 3), "G": (3, 3)}, None, False),
    ("sum(G * (A @ B @ C))", "A", "G @ (B @ C).T", CHAIN, None, True),
    ("-sum(y * log(p))", "o", "p - y", {"o": (5,), "t": (5,)}, ["p = softmax(o)", "y = softmax(t)"], True),
    ("-sum(y * log(p))", "o", "y - p", {"o": (5,), "t": (5,)}, ["p = softmax(o)", "y = softmax(t)"], False),
    ("sum(sigmoid(X @ W))", "W", "X.T @ (sigmoid(X @ W) * (1 - sigmoid(X @ W)))", SHAPES, None, True),
]


@pytest.mark.parametrize("expr,wrt,claim,shapes,let,correct", ARRAY)
def test_array_claims_including_the_chain_rule(expr, wrt, claim, shapes, let, correct):
    v = verify_gradient(expr, wrt, claim, shapes, let=let)
    assert v.correct is correct, str(v)
    if not correct:
        assert v.counterexample["index"] is not None


@pytest.mark.parametrize("cases,correct", [
    (["i == j: p[i] * (1 - p[i])", "i != j: -p[i] * p[j]"], True),
    (["i == j: p[i] * (1 - p[i])", "i != j: p[i] * p[j]"], False),       # a lost sign
    (["i == j: p[i] * (1 - p[j])", "i != j: -p[j] * p[j]"], False),      # an index swapped
])
def test_softmax_jacobian_by_cases_as_written(cases, correct):
    v = verify_gradient("p", "o", cases=cases, shapes={"o": (4,)}, let=["p = softmax(o)"])
    assert v.correct is correct, str(v)


def test_jacobian_as_a_matrix_claim():
    assert verify_gradient("p", "o", "diag(p) - outer(p, p)", {"o": (4,)}, let=["p = softmax(o)"]).correct


@pytest.mark.parametrize("text,fragment", [
    ("__import__('os')", "'__import__'"),
    ("x.__class__", "'.__class__'"),
    ("(lambda: 1)()", "'lambda' is not allowed"),
    ("[x for x in y]", "a list '[...]' is not allowed"),
    ("os.system('ls')", "calling 'os.system' is not allowed"),
    ("foo(x)", "unknown function 'foo'"),
    ("eval('1')", "'eval' is not allowed"),
    ("x.__class__.__mro__", "'.__class__'"),
    ("'text'", "numbers only"),
])
def test_unsafe_or_unknown_tokens_are_rejected_by_name(text, fragment):
    with pytest.raises(ExprError) as info:
        verify_derivative(text, "1")
    assert fragment in str(info.value)


def test_unknown_names_and_bad_shapes_are_precise():
    with pytest.raises(ExprError, match="unknown name 'z'; the variable is 'x'"):
        verify_derivative("x * y", "z")          # y is a parameter of the function; z is nothing
    with pytest.raises(ExprError, match="'V' is not in the expression"):
        verify_gradient("sum(X @ W)", "V", "X", {"X": (3, 4), "W": (4, 2), "V": (2,)})
    with pytest.raises(ExprError, match=r"the claim has shape \(4, 3\), expected W's shape \(4, 2\)"):
        verify_gradient("sum(X @ W)", "W", "X.T", SHAPES)
    with pytest.raises(ExprError, match=r"shapes \(3, 4\) and \(3, 4\) do not fit"):
        verify_gradient("sum(X @ X)", "X", "X", {"X": (3, 4)})
    with pytest.raises(ExprError, match="unknown name 'Z'; give its shape with --shape Z"):
        verify_gradient("sum(X @ Z)", "X", "X", {"X": (3, 4)})
    with pytest.raises(ExprError, match="not finite at the sample points"):
        verify_gradient("sum(X / (X - X))", "X", "X", {"X": (2, 2)})
    with pytest.raises(ExprError, match="the claim is not finite at any sample point"):
        verify_derivative("x**2", "2 * x / (x - x)")


def run(*args):
    return subprocess.run([sys.executable, "-m", "handydl", "verify", *args], capture_output=True,
                          text=True, timeout=300)      # against hangs only


def test_cli_exit_statuses():
    # no wall-clock bound here: a verify is bounded by its own --timeout (tests/test_verify_verdicts.py),
    # and a shared machine's clock says nothing about the code
    r = run("tanh(x)", "1 - tanh(x)**2")
    assert r.returncode == 0 and r.stdout.startswith("CORRECT")
    r = run("tanh(x)", "1 + tanh(x)**2")
    assert r.returncode == 1 and "WRONG" in r.stdout and "1 - tanh(x)**2" in r.stdout
    r = run("--expr", "sum(G * (A @ B @ C))", "--wrt", "B", "--claim", "A.T @ G @ C.T",
            "--shape", "A=2,3", "--shape", "B=3,4", "--shape", "C=4,2", "--shape", "G=2,2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("--let", "p = softmax(o)", "--expr", "p", "--wrt", "o", "--shape", "o=4",
            "--case", "i == j: p[i] * (1 - p[i])", "--case", "i != j: -p[i] * p[j]")
    assert r.returncode == 0, r.stdout + r.stderr
    for bad in (["__import__('os')", "1"], ["--expr", "sum(X)", "--wrt", "X", "--claim", "X", "--shape", "X=a"],
                ["--expr", "sum(X @ W)", "--wrt", "W", "--claim", "X.T", "--shape", "X=3,4", "--shape", "W=4,2"]):
        r = run(*bad)
        assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr


# -- the window functions of convolution and pooling ---------------------------------------------

def _ev(text, **env):
    from handydl.check.expr import parse
    return parse(text).evaluate(env)


def test_im2col_reads_the_windows_and_col2im_is_its_transpose():
    import numpy as np
    rng = np.random.default_rng(0)
    for shape, k, s, d in (((2, 3, 7), 3, 2, 1), ((1, 2, 9), 3, 1, 2), ((2, 2, 5, 6), 2, 2, 1),
                           ((1, 1, 7, 7), 3, 2, 2)):
        x = rng.standard_normal(shape)
        V = _ev(f"im2col(x, {k}, {s}, {d})", x=x)
        nd = len(shape) - 2
        out = tuple((n - d * (k - 1) - 1) // s + 1 for n in shape[2:])
        assert V.shape == (k,) * nd + shape[:2] + out
        if nd == 1:                                            # V[p, n, c, i] = x[n, c, s i + d p]
            for p in range(k):
                for i in range(out[0]):
                    assert np.array_equal(V[p, :, :, i], x[:, :, s * i + d * p])
        v = rng.standard_normal(V.shape)                       # <im2col(x), v> = <x, col2im(v)>
        back = _ev(f"col2im(v, x, {k}, {s}, {d})", v=v, x=x)
        assert back.shape == x.shape
        assert np.isclose(np.sum(V * v), np.sum(x * back))


def test_pad_flip_dilate_stack():
    import numpy as np
    x = np.arange(6.0).reshape(1, 2, 3)
    assert _ev("pad(x, 2)", x=x).tolist() == [[[0, 0, 0, 1, 2, 0, 0], [0, 0, 3, 4, 5, 0, 0]]]
    assert _ev("flip(x)", x=x).tolist() == [[[2, 1, 0], [5, 4, 3]]]
    assert _ev("dilate(x, 2)", x=x).tolist() == [[[0, 0, 1, 0, 2], [3, 0, 4, 0, 5]]]
    x4 = np.arange(4.0).reshape(1, 1, 2, 2)
    assert _ev("flip(x)", x=x4)[0, 0].tolist() == [[3, 2], [1, 0]]
    assert _ev("dilate(x, 2)", x=x4)[0, 0].tolist() == [[0, 0, 1], [0, 0, 0], [2, 0, 3]]
    assert _ev("pad(x, 1)", x=x4).shape == (1, 1, 4, 4)
    assert _ev("stack(eye(2)[0], eye(2)[1], 1)", x=x).tolist() == [[1, 0], [0, 1], [1, 1]]
    assert _ev("col2im(G / 4, x, 2, 2, 1)", x=np.zeros((1, 1, 4, 4)),
               G=np.ones((1, 1, 2, 2))).tolist() == [[np.full((4, 4), 0.25).tolist()]]


@pytest.mark.parametrize("text,fragment", [
    ("im2col(x, 100, 1, 1)", "must be an integer in [1, 64]"),
    ("im2col(x, 2.5, 1, 1)", "must be an integer"),
    ("im2col(x, 4, 1, 1)", "does not fit"),
    ("pad(x, 10**9)", "must be an integer in [0, 64]"),
    ("dilate(x, 0)", "must be an integer in [1, 64]"),
    ("dilate(dilate(dilate(pad(x, 64), 64), 64), 64)", "more than"),
    ("flip(sum(x))", "at least 3 dims"),
    ("col2im(x, x, 2, 1, 1)", "do not broadcast"),
    ("im2col(x.__class__, 2, 1, 1)", "'.__class__'"),
    ("im2col(x, 'os', 1, 1)", "numbers only"),
])
def test_window_functions_refuse_bad_or_unbounded_arguments(text, fragment):
    import numpy as np
    from handydl.check.expr import parse
    with pytest.raises(ExprError) as info:
        parse(text).evaluate({"x": np.ones((1, 2, 3))})
    assert fragment in str(info.value)


@pytest.mark.parametrize("claim,correct", [
    ("col2im(einsum('noi,ocp->pnci', G, W), X, 3, 2, 1)", True),
    ("einsum('ocp,pnou->ncu', flip(W), im2col(pad(dilate(G, 2), 2), 3, 1, 1))", True),
    ("einsum('ocp,pnou->ncu', W, im2col(pad(dilate(G, 2), 2), 3, 1, 1))", False),    # kernel not flipped
    ("col2im(einsum('noi,ocp->pnci', G, W), X, 3, 1, 2)", False),                    # dilation for stride
])
def test_convolution_gradient_claims(claim, correct):
    shapes = {"X": (2, 2, 7), "W": (3, 2, 3), "G": (2, 3, 3)}
    v = verify_gradient("sum(G * einsum('ocp,pnci->noi', W, im2col(X, 3, 2, 1)))", "X", claim, shapes)
    assert v.correct is correct, str(v)
