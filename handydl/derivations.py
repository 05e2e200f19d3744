r"""Step-by-step derivations, stored as data in a form that can be checked.

Each step is a line as written on paper (LaTeX), the same line in handydl's
expression language (``check.expr``), and its justification.  Every step of a
derivation is an expression for the same derivative, so the tests check that
each one equals the true derivative: symbolically with SymPy for scalar
steps, numerically (central differences, random draws) for vectors and
matrices.  A step that does not follow fails the tests.  ``code`` ties the
result to the implementation: the op's hand-written backward must equal the
last step.

``handydl explain NAME`` prints them; ``docs/derivations.md`` is generated
from them (``render_all("markdown")``) and a test fails when it is stale.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import ops


@dataclass
class Step:
    tex: str
    expr: str
    why: str


@dataclass
class Derivation:
    op: str                      # the registry op it explains
    title: str
    function: str                # what is differentiated, in the expression language
    steps: list
    wrt: str = "x"               # the variable (scalar) or array
    shapes: dict = field(default_factory=dict)   # array derivations: input shapes
    let: list = field(default_factory=list)      # array derivations: definitions
    positive: bool = False       # draw positive inputs (x / sum(x) needs sum(x) far from 0)
    setup: str = ""              # the setting, in words
    code: Callable | None = None  # env -> the library's backward, to compare with the last step

    @property
    def scalar(self):
        return not self.shapes


def _backward(op, *inputs, gy, index=0, **params):
    """The registry op's hand-written backward, for tying derivations to the code."""
    _, saved = op.forward(*inputs, **params)
    return op.backward(saved, gy)[index]


def _ones(x):
    return np.ones_like(np.asarray(x, dtype=np.float64))


@dataclass
class Composite:
    """What ``explain`` shows for a pattern of modules that is not one op."""
    name: str
    formula: str
    derivative: str
    convention: str = "differentiable wherever the branch f is"


# Patterns of modules, explained as ops are (``handydl explain residual``).
COMPOSITES = {c.name: c for c in [
    Composite("residual", r"y = x + f(x)\quad(\texttt{nn.Residual(f)})",
              r"g_x = g_y + J_f^\top g_y\quad\text{(a fork in the forward pass is a sum in the backward pass)}"),
]}


def _residual_backward(env):
    """nn.Residual(tanh(x W)) differentiated by its hand-written backward."""
    from . import nn
    lin = nn.Linear(3, 3, bias=False, dtype=np.float64)
    lin.weight.data[...] = env["W"]
    block = nn.Residual(nn.Sequential(lin, nn.Tanh()))
    block(env["X"])
    return block.backward(env["G"])


DERIVATIONS = [
    Derivation(
        "sigmoid", "the derivative of the sigmoid", "1 / (1 + exp(-x))", [
            Step(r"\sigma'(x) = -\bigl(1 + e^{-x}\bigr)^{-2} \cdot \bigl(-e^{-x}\bigr)",
                 "-(1 + exp(-x))**(-2) * (-exp(-x))", "chain rule: (u^{-1})' = -u^{-2} u', with u = 1 + e^{-x}"),
            Step(r"= \frac{e^{-x}}{(1 + e^{-x})^2}", "exp(-x) / (1 + exp(-x))**2", "the two minus signs cancel"),
            Step(r"= \frac{1}{1 + e^{-x}} \cdot \frac{e^{-x}}{1 + e^{-x}}",
                 "1 / (1 + exp(-x)) * (exp(-x) / (1 + exp(-x)))", "split the fraction"),
            Step(r"= \frac{1}{1 + e^{-x}} \Bigl(1 - \frac{1}{1 + e^{-x}}\Bigr)",
                 "1 / (1 + exp(-x)) * (1 - 1 / (1 + exp(-x)))", "e^{-x} / (1 + e^{-x}) = 1 - 1 / (1 + e^{-x})"),
            Step(r"= \sigma(x)\bigl(1 - \sigma(x)\bigr)", "sigmoid(x) * (1 - sigmoid(x))",
                 "name sigma(x) = 1 / (1 + e^{-x}): the derivative from the output"),
        ],
        setup=r"\sigma(x) = \frac{1}{1 + e^{-x}} = (1 + e^{-x})^{-1}",
        code=lambda env: _backward(ops.sigmoid, env["x"], gy=_ones(env["x"])),
    ),
    Derivation(
        "tanh", "the derivative of tanh", "(exp(x) - exp(-x)) / (exp(x) + exp(-x))", [
            Step(r"\tanh'(x) = \frac{(e^{x} + e^{-x})(e^{x} + e^{-x}) - (e^{x} - e^{-x})(e^{x} - e^{-x})}{(e^{x} + e^{-x})^2}",
                 "((exp(x) + exp(-x)) * (exp(x) + exp(-x)) - (exp(x) - exp(-x)) * (exp(x) - exp(-x))) / (exp(x) + exp(-x))**2",
                 "quotient rule (u/v)' = (u'v - uv')/v^2, with u' = e^x + e^{-x} = v and v' = e^x - e^{-x} = u"),
            Step(r"= 1 - \frac{(e^{x} - e^{-x})^2}{(e^{x} + e^{-x})^2}",
                 "1 - (exp(x) - exp(-x))**2 / (exp(x) + exp(-x))**2", "split the fraction"),
            Step(r"= 1 - \tanh^2(x)", "1 - tanh(x)**2", "the ratio is tanh(x): the derivative from the output"),
        ],
        setup=r"\tanh(x) = \frac{e^{x} - e^{-x}}{e^{x} + e^{-x}}",
        code=lambda env: _backward(ops.tanh, env["x"], gy=_ones(env["x"])),
    ),
    Derivation(
        "relu", "the derivative of ReLU", "max(0, x)", [
            Step(r"\mathrm{ReLU}'(x) = \begin{cases} \frac{d}{dx} x = 1 & x > 0 \\ \frac{d}{dx} 0 = 0 & x < 0 \end{cases}",
                 "1 if x > 0 else 0", "differentiate each piece; at x = 0 the left (0) and right (1) derivatives "
                                      "differ, so ReLU'(0) is a convention: 0, as PyTorch"),
            Step(r"= [x > 0]", "where(x > 0, 1, 0)", "the indicator: backward keeps only the mask x > 0"),
        ],
        setup=r"\mathrm{ReLU}(x) = \max(0, x) = \begin{cases} x & x > 0 \\ 0 & x \le 0 \end{cases}",
        code=lambda env: _backward(ops.relu, env["x"], gy=_ones(env["x"])),
    ),
    Derivation(
        "softplus", "the derivative of softplus", "log(1 + exp(x))", [
            Step(r"\mathrm{softplus}'(x) = \frac{1}{1 + e^{x}} \cdot e^{x}", "1 / (1 + exp(x)) * exp(x)",
                 "chain rule: (log u)' = u'/u, with u = 1 + e^x"),
            Step(r"= \frac{e^{x}}{1 + e^{x}}", "exp(x) / (1 + exp(x))", "multiply"),
            Step(r"= \frac{1}{e^{-x} + 1}", "1 / (exp(-x) + 1)", "divide numerator and denominator by e^x"),
            Step(r"= \sigma(x)", "sigmoid(x)", "the sigmoid: softplus is its antiderivative"),
        ],
        setup=r"\mathrm{softplus}(x) = \log(1 + e^{x})",
        code=lambda env: _backward(ops.softplus, env["x"], gy=_ones(env["x"])),
    ),
    Derivation(
        "softmax", "the softmax Jacobian", "p", [
            Step(r"\frac{\partial p_i}{\partial o_j} = \frac{\delta_{ij} e^{o_i} S - e^{o_i} e^{o_j}}{S^2},\quad S = \sum_k e^{o_k}",
                 "(diag(exp(o)) * sum(exp(o)) - outer(exp(o), exp(o))) / sum(exp(o))**2",
                 "quotient rule on p_i = e^{o_i} / S, with d e^{o_i}/do_j = delta_ij e^{o_i} and dS/do_j = e^{o_j}"),
            Step(r"= \delta_{ij} \frac{e^{o_i}}{S} - \frac{e^{o_i}}{S} \frac{e^{o_j}}{S}",
                 "diag(exp(o) / sum(exp(o))) - outer(exp(o) / sum(exp(o)), exp(o) / sum(exp(o)))",
                 "split the fraction"),
            Step(r"= p_i (\delta_{ij} - p_j)", "diag(p) - outer(p, p)",
                 "name p = softmax(o): J = diag(p) - p p^T, p_i (1 - p_i) on the diagonal, -p_i p_j off it"),
        ],
        wrt="o", shapes={"o": (5,)}, let=["p = softmax(o)"],
        setup=r"p_i = \mathrm{softmax}(o)_i = \frac{e^{o_i}}{\sum_k e^{o_k}}",
        code=lambda env: ops.softmax_jacobian(env["o"]),
    ),
    Derivation(
        "cross_entropy", "softmax + cross-entropy: the gradient is p - y", "-sum(y * log(softmax(o)))", [
            Step(r"\frac{\partial L}{\partial o_j} = \sum_i \frac{\partial L}{\partial p_i} \frac{\partial p_i}{\partial o_j}"
                 r" = \sum_i \Bigl(-\frac{y_i}{p_i}\Bigr) p_i (\delta_{ij} - p_j)",
                 "-(y / p) @ (diag(p) - outer(p, p))",
                 "chain rule through p = softmax(o): dL/dp_i = -y_i / p_i, times the softmax Jacobian"),
            Step(r"= -y_j + p_j \sum_i y_i", "-(y - p * sum(y))", "sum_i y_i delta_ij = y_j and sum_i y_i p_j = p_j sum_i y_i"),
            Step(r"= p_j - y_j", "p - y", "y is a distribution (one-hot, or smoothed): sum_i y_i = 1"),
        ],
        wrt="o", shapes={"o": (5,), "t": (5,)}, let=["p = softmax(o)", "y = softmax(t)"],
        setup=r"L = -\sum_i y_i \log p_i,\quad p = \mathrm{softmax}(o),\ \sum_i y_i = 1",
        code=lambda env: _backward(ops.cross_entropy, env["o"][None], env["y"][None], gy=1.0)[0],
    ),
    Derivation(
        "mse_loss", "the gradient of the mean squared error", "mean((yhat - y)**2)", [
            Step(r"\frac{\partial L}{\partial \hat y_i} = \frac{1}{n} \cdot 2 (\hat y_i - y_i) \cdot 1",
                 "(1 / n) * 2 * (yhat - y)", "only the i-th term depends on yhat_i; chain rule on (u)^2"),
            Step(r"= \frac{2}{n} (\hat y_i - y_i)", "2 / n * (yhat - y)", "collect the constants"),
        ],
        wrt="yhat", shapes={"yhat": (4, 3), "y": (4, 3)}, let=["n = 12"],
        setup=r"L = \frac{1}{n} \sum_i (\hat y_i - y_i)^2",
        code=lambda env: _backward(ops.mse_loss, env["yhat"], env["y"], gy=1.0),
    ),
    Derivation(
        "half_squared_error", "the delta rule's loss: the gradient is (p - y)/N",
        "sum(0.5 * (y - p)**2) / N", [
            Step(r"\frac{\partial L}{\partial p_i} = \frac{1}{N} \cdot \frac12 \cdot 2 (y_i - p_i) \cdot (-1)",
                 "(1 / N) * 0.5 * 2 * (y - p) * (-1)", "chain rule on (y_i - p_i)^2; the inner derivative is -1"),
            Step(r"= \frac{1}{N} (p_i - y_i)", "(p - y) / N", "the 1/2 was chosen to cancel the 2"),
        ],
        wrt="p", shapes={"p": (6,), "y": (6,)}, let=["N = 6"],
        setup=r"L = \frac{1}{N} \sum_i \tfrac12 (y_i - p_i)^2",
        code=lambda env: _backward(ops.half_squared_error, env["p"], env["y"], gy=1.0),
    ),
    Derivation(
        "lp_norm", "the gradient of the Lp norm", "sum(abs(x)**p)**(1 / p)", [
            Step(r"\frac{\partial \|x\|_p}{\partial x_j} = \frac{1}{p} \Bigl(\sum_k |x_k|^p\Bigr)^{\frac1p - 1} \cdot p |x_j|^{p-1} \mathrm{sign}(x_j)",
                 "(1 / p) * sum(abs(x)**p)**(1 / p - 1) * p * abs(x)**(p - 1) * sign(x)",
                 "chain rule: (u^{1/p})' = (1/p) u^{1/p - 1} u', and d|x_j|^p/dx_j = p |x_j|^{p-1} sign(x_j)"),
            Step(r"= \Bigl(\sum_k |x_k|^p\Bigr)^{\frac{1-p}{p}} |x_j|^{p-1} \mathrm{sign}(x_j)",
                 "sum(abs(x)**p)**((1 - p) / p) * abs(x)**(p - 1) * sign(x)", "p cancels; 1/p - 1 = (1 - p)/p"),
            Step(r"= \frac{x_j |x_j|^{p-2}}{\|x\|_p^{p-1}}", "x * abs(x)**(p - 2) / n**(p - 1)",
                 "sign(x)|x|^{p-1} = x|x|^{p-2}, and (sum |x_k|^p)^{(p-1)/p} = ||x||_p^{p-1}; "
                 "at x_j = 0 the gradient is taken as 0"),
        ],
        shapes={"x": (5,)}, let=["p = 3", "n = sum(abs(x)**p)**(1 / p)"],
        setup=r"\|x\|_p = \Bigl(\sum_k |x_k|^p\Bigr)^{1/p}\quad(\text{here } p = 3)",
        code=lambda env: _backward(ops.lp_norm, env["x"], gy=1.0, p=3.0),
    ),
    Derivation(
        "linear", "the linear layer: dL/dx", "sum(G * (X @ W + b))", [
            Step(r"\frac{\partial L}{\partial x_{ni}} = \sum_k G_{nk} \frac{\partial y_{nk}}{\partial x_{ni}} = \sum_k G_{nk} W_{ik}",
                 "einsum('nk,ik->ni', G, W)", "y_nk = sum_i x_ni W_ik + b_k, so dy_nk/dx_ni = W_ik"),
            Step(r"\frac{\partial L}{\partial x} = G W^\top", "G @ W.T", "the sum over k is a matrix product with W^T"),
        ],
        wrt="X", shapes={"X": (4, 3), "W": (3, 2), "b": (2,), "G": (4, 2)},
        setup=r"y = x W + b,\ W \in \mathbb{R}^{\text{in}\times\text{out}},\ G = \partial L/\partial y"
              r"\ (\text{so } L = \sum G \odot y \text{ has exactly that upstream gradient})",
        code=lambda env: _backward(ops.linear, env["X"], env["W"], env["b"], gy=env["G"], index=0),
    ),
    Derivation(
        "linear", "the linear layer: dL/dW", "sum(G * (X @ W + b))", [
            Step(r"\frac{\partial L}{\partial W_{ik}} = \sum_n G_{nk} \frac{\partial y_{nk}}{\partial W_{ik}} = \sum_n x_{ni} G_{nk}",
                 "einsum('nk,ni->ik', G, X)", "dy_nk/dW_ik = x_ni, summed over the batch n"),
            Step(r"\frac{\partial L}{\partial W} = x^\top G", "X.T @ G", "the sum over n is a matrix product with x^T"),
        ],
        wrt="W", shapes={"X": (4, 3), "W": (3, 2), "b": (2,), "G": (4, 2)},
        setup=r"y = x W + b,\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.linear, env["X"], env["W"], env["b"], gy=env["G"], index=1),
    ),
    Derivation(
        "linear", "the linear layer: dL/db", "sum(G * (X @ W + b))", [
            Step(r"\frac{\partial L}{\partial b_k} = \sum_n G_{nk} \frac{\partial y_{nk}}{\partial b_k} = \sum_n G_{nk} \cdot 1",
                 "einsum('nk->k', G)", "dy_nk/db_k = 1 for every sample n"),
            Step(r"\frac{\partial L}{\partial b} = \textstyle\sum_n G_{n,:}", "sum(G, 0)", "the column sums of G"),
        ],
        wrt="b", shapes={"X": (4, 3), "W": (3, 2), "b": (2,), "G": (4, 2)},
        setup=r"y = x W + b,\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.linear, env["X"], env["W"], env["b"], gy=env["G"], index=2),
    ),
    Derivation(
        "sum_normalize", "the gradient of x / sum(x)", "sum(G * (x / sum(x)))", [
            Step(r"\frac{\partial L}{\partial x_j} = \sum_i G_i \Bigl(\frac{\delta_{ij}}{S} - \frac{x_i}{S^2}\Bigr)"
                 r" = \frac{G_j}{S} - \frac{\sum_i G_i x_i}{S^2}",
                 "G / sum(x) - sum(G * x) / sum(x)**2",
                 "quotient rule on y_i = x_i / S with dS/dx_j = 1"),
            Step(r"= \frac{1}{S}\Bigl(G_j - \sum_i G_i y_i\Bigr)", "(G - sum(G * x / sum(x))) / sum(x)",
                 "factor 1/S; x_i / S = y_i: backward needs only y and S"),
        ],
        shapes={"x": (5,), "G": (5,)}, positive=True,
        setup=r"y_i = \frac{x_i}{S},\ S = \sum_k x_k,\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.sum_normalize, env["x"], gy=env["G"]),
    ),
    Derivation(
        "batch_norm", "batch normalization: dL/dx", "sum(G * (gamma * xhat + beta))", [
            Step(r"\frac{\partial L}{\partial x} = \frac{\gamma G}{\sigma}"
                 r" + \frac{\partial L}{\partial \sigma_B^2} \frac{2 (x - \mu)}{M}"
                 r" + \frac{\partial L}{\partial \mu} \frac{1}{M},\quad"
                 r"\frac{\partial L}{\partial \sigma_B^2} = -\tfrac12 \sum_n \gamma G (x - \mu) \sigma^{-3},\ "
                 r"\frac{\partial L}{\partial \mu} = -\sum_n \frac{\gamma G}{\sigma}",
                 "gamma * G / s + (-0.5 * sum(gamma * G * (X - mu), 0) * s**(-3)) * 2 * (X - mu) / M"
                 " + (-sum(gamma * G, 0) / s) / M",
                 "chain rule through xhat, the variance and the mean (the mean's path through the variance "
                 "vanishes: sum_n (x_n - mu) = 0)"),
            Step(r"= \frac{1}{\sigma}\Bigl(\gamma G - \overline{\gamma G} - \hat x\, \overline{\gamma G \hat x}\Bigr)",
                 "(gamma * G - mean(gamma * G, 0) - xhat * mean(gamma * G * xhat, 0)) / s",
                 "(x - mu)/sigma = xhat and a sum over the batch divided by M is a mean: the compact form"),
        ],
        wrt="X", shapes={"X": (6, 3), "gamma": (3,), "beta": (3,), "G": (6, 3)},
        let=["M = 6", "mu = mean(X, 0)", "v = mean((X - mu)**2, 0)", "s = sqrt(v + 0.00001)",
             "xhat = (X - mu) / s"],
        setup=r"\hat x = \frac{x - \mu_B}{\sigma},\ \sigma = \sqrt{\sigma_B^2 + \epsilon},\ "
              r"y = \gamma \hat x + \beta,\ \text{statistics over the batch of } M",
        code=lambda env: _backward(ops.batch_norm, env["X"], env["gamma"], env["beta"], gy=env["G"]),
    ),
    Derivation(
        "residual", "a residual block: dL/dx", "sum(G * (X + tanh(X @ W)))", [
            Step(r"\frac{\partial L}{\partial x} = \underbrace{G}_{\text{skip path}}"
                 r" + \underbrace{J_f^\top G}_{\text{branch } f}",
                 "G + (G * (1 - tanh(X @ W)**2)) @ W.T",
                 "x reaches y by two paths, x itself and f(x), and the gradients of the paths add: "
                 "a fork in the forward pass is a sum in the backward pass. The skip path is the "
                 "identity, so it passes G unchanged"),
            Step(r"= G + \bigl(G \odot (1 - \tanh^2(x W))\bigr) W^\top",
                 "G + (G - G * tanh(X @ W)**2) @ W.T",
                 "J_f^T G for f(x) = tanh(x W) is f's own backward: tanh's (times 1 - y^2), then the "
                 "linear layer's (times W^T); any branch f contributes its backward the same way"),
        ],
        wrt="X", shapes={"X": (4, 3), "W": (3, 3), "G": (4, 3)},
        setup=r"y = x + f(x),\ f(x) = \tanh(x W)\ \text{(a one-layer branch)},\ G = \partial L/\partial y",
        code=_residual_backward,
    ),
]


def for_op(name):
    return [d for d in DERIVATIONS if d.op == name]


# -- checking -------------------------------------------------------------------------------

def check(derivation, seed=0):
    """Verdicts for every step (each must equal the true derivative), and the
    comparison of the op's backward with the last step. Returns a list of
    (step number or "code", Verdict-like object with .correct and .method)."""
    from .check.verify import verify_derivative, verify_gradient
    results = []
    for k, step in enumerate(derivation.steps, start=1):
        if derivation.scalar:
            v = verify_derivative(derivation.function, step.expr, var=derivation.wrt, lo=-6, hi=6)
        else:
            v = verify_gradient(derivation.function, derivation.wrt, step.expr, derivation.shapes,
                                let=derivation.let, seed=seed, positive=derivation.positive)
        results.append((k, v))
    if derivation.code is not None:
        results.append(("code", _check_code(derivation, seed)))
    return results


def _check_code(derivation, seed):
    """The library's backward against the derivation's last line, on random inputs."""
    from .check.expr import parse
    from .check.verify import Verdict, _draw, parse_let
    rng = np.random.default_rng(seed)
    if derivation.scalar:
        x = np.linspace(-6, 6, 97) + 0.0123
        env = {derivation.wrt: x}
    else:
        env = _draw(rng, derivation.shapes, derivation.positive)
        for name, e in (parse_let(t) for t in derivation.let):
            env[name] = np.asarray(e.evaluate(env), dtype=np.float64)
    last = np.asarray(parse(derivation.steps[-1].expr).evaluate(env), dtype=np.float64)
    code = np.asarray(derivation.code(env), dtype=np.float64)
    ok = code.shape == last.shape and np.allclose(code, last, rtol=1e-9, atol=1e-12)
    return Verdict(bool(ok), "the op's backward against the last line on random inputs")


# -- rendering -------------------------------------------------------------------------------

FORMATS = ("text", "markdown", "latex")


def explain(name, fmt="text"):
    """Formula, derivative, convention at kinks and derivations of one op (or of a
    composite pattern of modules, such as ``residual``)."""
    op = COMPOSITES[name] if name in COMPOSITES else ops.get(name)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not valid; expected one of {', '.join(FORMATS)}")
    derivations = for_op(name)
    if fmt == "latex":
        return _latex(op, derivations)
    md = fmt == "markdown"
    out = [f"## {name}" if md else name, ""]
    math = (lambda s: f"$${s}$$") if md else (lambda s: f"    {s}")
    out += ["forward:", math(op.formula), "", "derivative:", math(op.derivative), ""]
    out += [f"at kinks: {op.convention}", ""]
    if not derivations:
        out.append("(no step-by-step derivation for this op yet; the derivative above is checked "
                   "against PyTorch, finite differences and, for scalar ops, SymPy)")
    for d in derivations:
        out += [f"### {d.title}" if md else f"derivation: {d.title}", ""]
        if d.setup:
            out += [math(d.setup), ""]
        for k, step in enumerate(d.steps, start=1):
            if md:
                out += [f"{k}. $${step.tex}$$", f"   *{step.why}*  ", f"   checked as `{step.expr}`", ""]
            else:
                out += [f"  {k}. {step.expr}", f"       {step.tex}", f"       ({step.why})"]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _latex(op, derivations):
    out = [f"% {op.name}", r"\paragraph{" + op.name.replace("_", r"\_") + "}",
           r"\[ " + op.formula + r" \]", r"\[ " + op.derivative + r" \]",
           "Convention at kinks: " + op.convention.replace("_", r"\_") + "."]
    for d in derivations:
        out.append(r"\subparagraph{" + d.title + "}")
        if d.setup:
            out.append(r"\[ " + d.setup + r" \]")
        out.append(r"\begin{align*}")
        out += [f"  &{s.tex} && \\text{{{_tex_text(s.why)}}} \\\\" for s in d.steps]
        out.append(r"\end{align*}")
    return "\n".join(out) + "\n"


def _tex_text(s):
    return s.replace("_", r"\_").replace("^", r"\^{}").replace("{", r"\{").replace("}", r"\}")


def render_all(fmt="markdown"):
    """Every op with a derivation, in registry order: the text of docs/derivations.md."""
    names = [n for n in ops.names() if for_op(n)] + list(COMPOSITES)
    head = ("# Derivations\n\nGenerated by `handydl explain --all --format markdown` from "
            "`handydl/derivations.py`; every step is machine-checked by the test suite "
            "(SymPy for scalar steps, central differences on random inputs for arrays), and "
            "the op's hand-written backward is compared with the last line.\n\n")
    return head + "\n".join(explain(n, fmt) for n in names)
