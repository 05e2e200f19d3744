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
    domain: tuple = (-6.0, 6.0)  # scalar derivations: where the steps and the code are compared

    @property
    def scalar(self):
        return not self.shapes

    def check(self, seed=0):
        """derivations.check(self): a verdict for every step, and for the code."""
        return check(self, seed)

    def explain(self, fmt="text", check=True):
        """This derivation alone in ``fmt`` (text, markdown or latex), every step marked as
        checked: ``check=True`` runs the checks (remembered for this content)."""
        render = {"text": _text, "markdown": _markdown, "latex": _latex_derivation}
        if fmt not in render:
            raise ValueError(f"format={fmt!r} is not valid; expected one of {', '.join(render)}")
        return "\n".join(render[fmt](self, check)).rstrip() + "\n"

    # Jupyter displays the derivation as rendered math, checked (students work there).
    def _repr_markdown_(self):
        return self.explain("markdown")

    def _repr_latex_(self):
        marks = _marks(self, True)
        lines = [(r"&\text{" + _tex_text(self.title) + r"}\\")] + ([f"&{self.setup} \\\\"] if self.setup else [])
        for k, step in enumerate(self.steps, start=1):
            how = "checked" if marks[k][0] else "does NOT follow"
            lines.append(f"&{step.tex} && \\text{{({k}, {how}) {_tex_text(step.why)}}} \\\\")
        return "$$\\begin{aligned}\n" + "\n".join(lines) + "\n\\end{aligned}$$"


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
    Composite("pre_norm_residual",
              r"y = x + f(\mathrm{LN}(x))\quad(\text{a pre-norm Transformer branch, as in nn.GPTBlock})",
              r"g_x = g_y + J_{\mathrm{LN}}^\top J_f^\top g_y"),
]}


def _residual_backward(env):
    """nn.Residual(tanh(x W)) differentiated by its hand-written backward."""
    from . import nn
    lin = nn.Linear(3, 3, bias=False, dtype=np.float64)
    lin.weight.data[...] = env["W"]
    block = nn.Residual(nn.Sequential(lin, nn.Tanh()))
    block(env["X"])
    return block.backward(env["G"])


# -- convolution, pooling and 2-D normalization (the CNN ops) -------------------------------
#
# The windows of a convolution or a pooling are written with the expression language's
# im2col(x, k, s, d) (kernel offsets first: V[p, n, c, i] = x[n, c, s i + d p]) and its
# transpose col2im(v, x, k, s, d), which adds every window entry back onto the position
# it was read from; pad, flip and dilate act on the spatial axes (after the first two).

_CONV1 = "einsum('ocp,pnci->noi', W, im2col(X, 3, {s}, {d}))"
_CONV1_L = "sum(G * " + _CONV1 + ") + einsum('noi,o->', G, b)"
_CONV1_SHAPES = {"X": (2, 2, 6), "W": (3, 2, 3), "b": (3,), "G": (2, 3, 4)}
_CONV1_STRIDED = {"X": (2, 2, 7), "W": (3, 2, 3), "b": (3,), "G": (2, 3, 3)}
_CONV1_SETUP = (r"y_{n,o,i} = b_o + \sum_{c,p} W_{o,c,p}\,x_{n,c,\,{pos}},\ "
                r"x: (N, C, L) = ({shape}),\ W: (O, C, k) = (3, 2, 3),\ G = \partial L/\partial y"
                r"\ (\text{im2col}(x)_{p,n,c,i} = x_{n,c,\,{pos}},\ \text{the windows})")


def _conv1_setup(pos, shape):
    return _CONV1_SETUP.replace("{pos}", pos).replace("{shape}", shape)


def _conv_x_steps(s, d):
    """dL/dx of conv1d with stride s and dilation d, kernel 3, as three lines."""
    pad = d * 2
    g = "G" if s == 1 else f"dilate(G, {s})"
    pos = "i + p" if (s, d) == (1, 1) else (f"{s}i + p" if d == 1 else f"i + {d}p")
    if (s, d) == (1, 1):
        why_sum = ("y_{n,o,i} = b_o + sum_{c,p} W_{o,c,p} x_{n,c,i+p}, so x_{n,c,u} reaches y_{n,o,i} "
                   "through the tap p = u - i, with weight W_{o,c,p}. The window gradients W^T g "
                   "(one per tap p and position i) are summed back onto the positions they were "
                   "read from: col2im, the transpose of im2col")
        why_corr = ("keep, for each u, the terms with i = u - p in range: with g zero-padded by "
                    "k - 1 = 2 on both sides the range takes care of itself, and p' = k - 1 - p "
                    "turns u - p into u + p': a full correlation of g with the flipped kernel")
        tex_sum = r"\frac{\partial L}{\partial x_{n,c,u}} = \sum_{o,i,p} g_{n,o,i}\,W_{o,c,p}\,[u = i + p]"
        tex_corr = (r"= \sum_{o,p} g_{n,o,u-p} W_{o,c,p} = \sum_{o,p'} \tilde g_{n,o,u+p'}\,W_{o,c,k-1-p'},"
                    r"\quad \tilde g = \mathrm{pad}(g, k-1)")
    elif d == 1:
        why_sum = (f"with stride s = {s}, y_{{n,o,i}} reads x_{{n,c,{s}i+p}}: x_{{n,c,u}} is in window i "
                   f"at tap p = u - {s}i, so only the (i, p) with {s}i + p = u meet in its sum, and a "
                   "position no window reads gets nothing. col2im with the stride sums back exactly those")
        why_corr = (f"put g on the input's grid: dilate(g, {s}) holds g_i at position {s}i and zeros "
                    "between (the positions the stride skipped); then it is the stride-1 case, a full "
                    "correlation of the padded, dilated g with the flipped kernel. A stride in the "
                    "forward pass is a dilation of g in the backward pass")
        tex_sum = (r"\frac{\partial L}{\partial x_{n,c,u}} = \sum_{o,i,p} g_{n,o,i}\,W_{o,c,p}\,[u = "
                   + f"{s}i + p]")
        tex_corr = (r"= \sum_{o,p'} \tilde g_{n,o,u+p'}\,W_{o,c,k-1-p'},\quad \tilde g = "
                    r"\mathrm{pad}\bigl(\mathrm{dilate}(g, s), k-1\bigr)")
    else:
        why_sum = (f"with dilation d = {d} the kernel's taps are {d} apart: y_{{n,o,i}} reads "
                   f"x_{{n,c,i+{d}p}}, so x_{{n,c,u}} is in window i at tap p when i + {d}p = u; "
                   "col2im with the dilation sums back exactly those terms")
        why_corr = (f"the full correlation with the flipped kernel keeps the dilation: pad g by "
                    f"d (k - 1) = {pad} on both sides and read it with taps {d} apart "
                    "(where a stride became a dilation of g, a dilation stays a dilation of the kernel)")
        tex_sum = (r"\frac{\partial L}{\partial x_{n,c,u}} = \sum_{o,i,p} g_{n,o,i}\,W_{o,c,p}\,[u = i + "
                   + f"{d}p]")
        tex_corr = (r"= \sum_{o,p'} \tilde g_{n,o,u+dp'}\,W_{o,c,k-1-p'},\quad \tilde g = "
                    r"\mathrm{pad}\bigl(g, d(k-1)\bigr)")
    steps = [
        Step(tex_sum, f"col2im(einsum('noi,ocp->pnci', G, W), X, 3, {s}, {d})", why_sum),
        Step(tex_corr, f"einsum('ocp,pnou->ncu', flip(W), im2col(pad({g}, {pad}), 3, 1, {d}))", why_corr),
    ]
    if d == 1:
        steps.append(Step(
            r"= \mathrm{conv1d}\bigl(\tilde g,\ \mathrm{flip}(W)^{\top}\bigr)\quad"
            r"(W^{\top}\text{: in and out channels swapped})",
            f"conv1d(pad({g}, 2), einsum('ocp->cop', flip(W)))",
            "that correlation is itself a convolution: of the padded upstream gradient (O channels) "
            "with the flipped kernel whose in and out channels are swapped (C outputs). The backward "
            "pass of a convolution is a convolution"))
    return steps, pos


def _conv1_x(s, d, title):
    shapes = _CONV1_SHAPES if (s, d) == (1, 1) else _CONV1_STRIDED
    steps, pos = _conv_x_steps(s, d)
    return Derivation(
        "conv1d", title, _CONV1_L.format(s=s, d=d), steps, wrt="X", shapes=shapes,
        setup=_conv1_setup(pos, ", ".join(map(str, shapes["X"]))),
        code=lambda env: _backward(ops.conv1d, env["X"], env["W"], env["b"], gy=env["G"], index=0,
                                   stride=s, dilation=d))


def _conv1_w(s, title):
    shapes = _CONV1_SHAPES if s == 1 else _CONV1_STRIDED
    g = "G" if s == 1 else f"dilate(G, {s})"
    pos = "i + p" if s == 1 else f"{s}i + p"
    steps = [
        Step(r"\frac{\partial L}{\partial W_{o,c,p}} = \sum_{n,i} g_{n,o,i}\,\frac{\partial y_{n,o,i}}"
             r"{\partial W_{o,c,p}} = \sum_{n,i} g_{n,o,i}\,x_{n,c,\," + pos + "}",
             f"einsum('noi,pnci->ocp', G, im2col(X, 3, {s}, 1))",
             f"dy_{{n,o,i}}/dW_{{o,c,p}} = x_{{n,c,{pos}}}, tap p of window i; the weight is shared by "
             "every window and every sample, so the terms add over n and i: sum_n G_n X_n^T with "
             "X = im2col(x), the rule of the linear layer"),
        Step(r"= \sum_n \bigl(x_{n,c} \star " + ("g" if s == 1 else r"\mathrm{dilate}(g, s)")
             + r"_{n,o}\bigr)_p = \mathrm{conv1d}\bigl(x^{\top}, " + ("g" if s == 1 else
                                                                     r"\mathrm{dilate}(g, s)")
             + r"^{\top}\bigr)^{\top}",
             f"einsum('cop->ocp', conv1d(einsum('ncu->cnu', X), einsum('noi->oni', {g})))",
             ("a correlation of the input with the upstream gradient: g is the kernel (length Lo), "
              "the batch n plays the channels that are summed over (x as (C, N, L), g as (O, N, Lo)), "
              "and the result (C, O, k) is W's shape transposed") if s == 1 else
             (f"x correlated with the dilated g: sum_i g_i x_{{{s}i+p}} = sum_j dilate(g, {s})_j x_{{j+p}}. "
              "The stride of the forward pass becomes a dilation of the kernel g here (length "
              f"{s}(Lo - 1) + 1 = 5, so the correlation with x (L = 7) has length 3 = k)")),
    ]
    return Derivation(
        "conv1d", title, _CONV1_L.format(s=s, d=1), steps, wrt="W", shapes=shapes,
        setup=_conv1_setup(pos, ", ".join(map(str, shapes["X"]))),
        code=lambda env: _backward(ops.conv1d, env["X"], env["W"], env["b"], gy=env["G"], index=1, stride=s))


_CONV2 = "einsum('ocpq,pqncij->noij', W, im2col(X, 3, 2, 1))"
_CONV2_SHAPES = {"X": (2, 2, 5, 5), "W": (3, 2, 3, 3), "b": (3,), "G": (2, 3, 2, 2)}
_CONV2_X_STEPS = [
    Step(r"\frac{\partial L}{\partial x_{n,c,u,v}} = \sum_{o,i,j,p,q} {g}_{n,o,i,j}\,W_{o,c,p,q}\,"
         r"[(u, v) = (2i + p, 2j + q)]",
         "col2im(einsum('noij,ocpq->pqncij', {g}, W), X, 3, 2, 1)",
         "x_{n,c,u,v} meets output (i, j) through every tap (p, q) with (u, v) = (2i + p, 2j + q): "
         "the window gradients W^T {g} summed back onto the input, col2im (the transpose of im2col)"),
    Step(r"= \sum_{o,p',q'} \tilde {g}_{n,o,u+p',v+q'}\,W_{o,c,k-1-p',k-1-q'},\quad \tilde {g} = "
         r"\mathrm{pad}\bigl(\mathrm{dilate}({g}, 2), k-1\bigr)",
         "einsum('ocpq,pqnouv->ncuv', flip(W), im2col(pad(dilate({g}, 2), 2), 3, 1, 1))",
         "{g} dilated by the stride (zeros where the stride skipped), padded by k - 1, correlated "
         "with the flipped kernel: a full correlation, in two dimensions as in one"),
]


def _conv2_steps(g):
    return [Step(s.tex.replace("{g}", g), s.expr.replace("{g}", g.upper()), s.why.replace("{g}", g))
            for s in _CONV2_X_STEPS]


_POOL_SHAPES = {"X": (2, 2, 4, 4), "G": (2, 2, 2, 2)}
_MEMBERS = "stack(eye(2)[0], eye(2)[0], eye(2)[1], eye(2)[1])"     # row u: the one-hot of u // 2

_BN2D_LET = ["M = 12", "Z = einsum('ncuv->nuvc', X)", "GZ = einsum('ncuv->nuvc', G)",
             "mu = einsum('nuvc->c', Z) / M", "s = sqrt(einsum('nuvc->c', (Z - mu)**2) / M + 0.00001)",
             "zhat = (Z - mu) / s"]
_GN_LET = ["M = 18", f"A = {_MEMBERS}", "Z = einsum('ncuv->uvnc', X)", "GZ = einsum('ncuv->uvnc', G)",
           "mu = (einsum('uvnc,cg->ng', Z, A) / M) @ A.T",
           "s = sqrt(einsum('uvnc,cg->ng', (Z - mu)**2, A) / M + 0.00001) @ A.T",
           "zhat = (Z - mu) / s"]
_GN_SHAPES = {"X": (2, 4, 3, 3), "gamma": (4,), "beta": (4,), "G": (2, 4, 3, 3)}
_GN_SETUP = (r"\hat x_{n,c,h,w} = \frac{x_{n,c,h,w} - \mu_{n,g}}{\sigma_{n,g}},\ "
             r"y = \gamma_c \hat x + \beta_c,\ \text{group } g = \lfloor c / 2 \rfloor \text{ of } G = 2 "
             r"\text{ (C = 4), statistics over its } M = \tfrac{C}{G} H W = 18 \text{ values}")

_CNN = [
    _conv1_x(1, 1, "the 1-D convolution: dL/dx, a full correlation with the flipped kernel"),
    _conv1_w(1, "the 1-D convolution: dL/dW, a correlation of input and upstream gradient"),
    Derivation(
        "conv1d", "the 1-D convolution: dL/db", _CONV1_L.format(s=1, d=1), [
            Step(r"\frac{\partial L}{\partial b_o} = \sum_{n,i} g_{n,o,i}\,\frac{\partial y_{n,o,i}}"
                 r"{\partial b_o} = \sum_{n,i} g_{n,o,i} \cdot 1",
                 "einsum('noi->o', G)", "dy_{n,o,i}/db_o = 1 at every position i of every sample n"),
            Step(r"\frac{\partial L}{\partial b} = \textstyle\sum_n \sum_i g_{n,:,i}", "sum(sum(G, 0), 1)",
                 "the sums of g over the batch and the positions (over (n, h, w) in two dimensions); "
                 "stride and dilation change nothing here"),
        ],
        wrt="b", shapes=_CONV1_SHAPES, setup=_conv1_setup("i + p", "2, 2, 6"),
        code=lambda env: _backward(ops.conv1d, env["X"], env["W"], env["b"], gy=env["G"], index=2)),
    _conv1_x(2, 1, "the 1-D convolution with stride 2: dL/dx"),
    _conv1_w(2, "the 1-D convolution with stride 2: dL/dW"),
    _conv1_x(1, 2, "the 1-D convolution with dilation 2: dL/dx"),
    Derivation(
        "conv2d", "the 2-D convolution with stride 2: dL/dx", f"sum(G * {_CONV2}) + einsum('noij,o->', G, b)",
        _conv2_steps("g"), wrt="X", shapes=_CONV2_SHAPES,
        setup=(r"y_{n,o,i,j} = b_o + \sum_{c,p,q} W_{o,c,p,q}\,x_{n,c,\,2i+p,\,2j+q},\ x: (2, 2, 5, 5),\ "
               r"W: (3, 2, 3, 3),\ G = \partial L/\partial y\ (2, 3, 2, 2)"),
        code=lambda env: _backward(ops.conv2d, env["X"], env["W"], env["b"], gy=env["G"], index=0, stride=2)),
    Derivation(
        "conv_transpose2d", "the transposed convolution is conv2d's input gradient (the adjoint)",
        f"sum(Y * {_CONV2})", _conv2_steps("y"), wrt="X",
        shapes={"X": (2, 2, 5, 5), "W": (3, 2, 3, 3), "Y": (2, 3, 2, 2)},
        setup=(r"\langle \mathrm{conv2d}(x, W), y\rangle = \langle x, \mathrm{conv\_transpose2d}(y, W)\rangle"
               r"\ \text{for all } x, y,\ \text{so}\ \mathrm{conv\_transpose2d}(y, W) = "
               r"\frac{\partial}{\partial x} \langle \mathrm{conv2d}(x, W), y\rangle"
               r"\quad(\text{stride } 2,\ 3\times 3,\ y: (2, 3, 2, 2) \to (2, 2, 5, 5))"),
        code=lambda env: ops.conv_transpose2d(env["Y"], env["W"], stride=2)),
    Derivation(
        "conv_transpose2d", "the transposed convolution: dL/dx is conv2d", "sum(G * conv_transpose2d(Y, W))", [
            Step(r"\frac{\partial L}{\partial y_{n,o,i,j}} = \sum_{c,p,q} W_{o,c,p,q}\,g_{n,c,\,i+p,\,j+q}",
                 "einsum('ocpq,pqncij->noij', W, im2col(G, 3, 1, 1))",
                 "conv_transpose2d(y) = A^T y for the linear map A = conv2d(., W); the gradient of "
                 "<g, A^T y> in y is A g: the adjoint of the adjoint is the convolution itself"),
            Step(r"= \mathrm{conv2d}(g, W)", "conv2d(G, W)", "the same sum, as the registered conv2d"),
        ],
        wrt="Y", shapes={"Y": (2, 3, 3, 3), "W": (3, 2, 3, 3), "G": (2, 2, 5, 5)},
        setup=r"z = \mathrm{conv\_transpose2d}(y, W),\ W: (C_{in}, C_{out}, k, k) = (3, 2, 3, 3),\ g = \partial L/\partial z",
        code=lambda env: _backward(ops.conv_transpose2d, env["Y"], env["W"], gy=env["G"], index=0)),
    Derivation(
        "max_pool2d", "max pooling routes the gradient to each window's maximum", "sum(G * max_pool2d(X))", [
            Step(r"\frac{\partial L}{\partial x_{n,c,u,v}} = \sum_{i,j} g_{n,c,i,j}\,"
                 r"\frac{\partial y_{n,c,i,j}}{\partial x_{n,c,u,v}} = \sum_{(i,j):\,(u,v) \in W_{ij}} "
                 r"g_{n,c,i,j}\,[x_{n,c,u,v} = y_{n,c,i,j}]",
                 "col2im(G * (V == y), X, 2, 2, 1)",
                 "y_ij, the max of window (i, j), is one of its entries, and near a point without ties it "
                 "stays that entry: dy_ij/dx_uv is 1 at the window's argmax and 0 elsewhere. (V == y) "
                 "marks the argmax among the window's entries V = im2col(x); col2im sends each g_ij "
                 "there, whole: routing"),
            Step(r"= \sum_{(i,j)} g_{n,c,i,j}\,\bigl[(u, v) = \text{the first maximum of window } (i, j) "
                 r"\text{ in scan order}\bigr]",
                 "col2im(G * R, X, 2, 2, 1)",
                 "at a tie the max has no derivative; PyTorch, and the op, give the whole g_ij to the "
                 "first maximum in scan order (kernel rows top to bottom, each left to right): w is the "
                 "first offset 2a + b whose entry equals the max, R its one-hot. Without ties R is "
                 "(V == y), so this line equals the last; at a tie it is the convention (the test suite "
                 "checks it on tied inputs)"),
        ],
        wrt="X", shapes=_POOL_SHAPES,
        let=["y = max_pool2d(X)", "V = im2col(X, 2, 2, 1)",
             "w = where(V[0, 0] == y, 0, where(V[0, 1] == y, 1, where(V[1, 0] == y, 2, 3)))",
             "R = stack(stack(w == 0, w == 1), stack(w == 2, w == 3))"],
        setup=(r"y_{n,c,i,j} = \max_{0 \le a, b < 2} x_{n,c,\,2i+a,\,2j+b}\ (\text{kernel } 2 \times 2,"
               r"\ \text{stride } 2),\ x: (2, 2, 4, 4),\ G = \partial L/\partial y"),
        code=lambda env: _backward(ops.max_pool2d, env["X"], gy=env["G"])),
    Derivation(
        "avg_pool2d", "average pooling spreads g / k^2 over each window", "sum(G * avg_pool2d(X))", [
            Step(r"\frac{\partial L}{\partial x_{n,c,u,v}} = \sum_{(i,j):\,(u,v) \in W_{ij}} g_{n,c,i,j}\,"
                 r"\frac{\partial}{\partial x_{n,c,u,v}} \frac{1}{k^2} \sum_{(a,b) \in W_{ij}} x_{n,c,a,b}"
                 r" = \sum_{(i,j):\,(u,v) \in W_{ij}} \frac{g_{n,c,i,j}}{k^2}",
                 "col2im(G / 4, X, 2, 2, 1)",
                 "y_ij is the mean of the k^2 = 4 entries of its window, each with derivative 1/4: "
                 "g_ij / 4 goes to every entry (col2im of one value at every tap), and where windows "
                 "overlap the shares add. With padding the divisor D_ij is the window's size clipped "
                 "to the padded input (count_include_pad) or to the input, as PyTorch"),
            Step(r"= \frac{g_{n,c,\lfloor u/2 \rfloor,\lfloor v/2 \rfloor}}{4}",
                 "einsum('ncij,ui,vj->ncuv', G, U, U) / 4",
                 "stride = kernel: the windows tile the input, each x_uv lies in exactly one window, "
                 "(floor(u/2), floor(v/2)): g upsampled by the membership matrix U_{ui} = [floor(u/2) = i], "
                 "divided by 4"),
        ],
        wrt="X", shapes=_POOL_SHAPES, let=[f"U = {_MEMBERS}"],
        setup=(r"y_{n,c,i,j} = \frac{1}{4} \sum_{0 \le a, b < 2} x_{n,c,\,2i+a,\,2j+b}\ (\text{kernel } 2 \times 2,"
               r"\ \text{stride } 2),\ x: (2, 2, 4, 4),\ G = \partial L/\partial y"),
        code=lambda env: _backward(ops.avg_pool2d, env["X"], gy=env["G"])),
    Derivation(
        "adaptive_avg_pool2d", "global average pooling spreads g / (H W) over the image",
        "sum(G * adaptive_avg_pool2d(X))", [
            Step(r"\frac{\partial L}{\partial x_{n,c,u,v}} = g_{n,c}\,\frac{\partial}{\partial x_{n,c,u,v}}"
                 r"\frac{1}{HW}\sum_{a,b} x_{n,c,a,b} = \frac{g_{n,c}}{HW}",
                 "col2im(G / 16, X, 4, 1, 1)",
                 "output_size 1: one window the size of the image (H = W = 4), y_nc the mean of its "
                 "16 values; average pooling with k = H, so g_nc / 16 is spread over the whole image"),
        ],
        wrt="X", shapes={"X": (2, 3, 4, 4), "G": (2, 3, 1, 1)},
        setup=r"y_{n,c} = \frac{1}{HW}\sum_{u,v} x_{n,c,u,v}\ (\text{output\_size } 1),\ x: (2, 3, 4, 4)",
        code=lambda env: _backward(ops.adaptive_avg_pool2d, env["X"], gy=env["G"])),
    Derivation(
        "batch_norm2d", "BatchNorm2d is BatchNorm1d over (N, H, W): dL/dx",
        "sum(G * batch_norm2d(X, gamma, beta))", [
            Step(r"\frac{\partial L}{\partial x} = \frac{\gamma G}{\sigma}"
                 r" + \frac{\partial L}{\partial \sigma_B^2} \frac{2 (z - \mu)}{M}"
                 r" + \frac{\partial L}{\partial \mu} \frac{1}{M}\ \text{on } z_{(n,h,w),c} = x_{n,c,h,w},\ "
                 r"\frac{\partial L}{\partial \sigma_B^2} = -\tfrac12 \sum_{n,h,w} \gamma G (z - \mu) \sigma^{-3},\ "
                 r"\frac{\partial L}{\partial \mu} = -\sum_{n,h,w} \frac{\gamma G}{\sigma}",
                 "einsum('nuvc->ncuv', gamma * GZ / s + (-0.5 * einsum('nuvc->c', gamma * GZ * (Z - mu))"
                 " * s**(-3)) * 2 * (Z - mu) / M + (-einsum('nuvc->c', gamma * GZ) / s) / M)",
                 "batch_norm2d normalizes each channel over its M = N H W = 12 values: it is BatchNorm1d "
                 "on the channels-last view z (rows (n, h, w), one column per channel; einsum('ncuv->nuvc') "
                 "is that view), so BatchNorm1d's chain rule applies as it is, with sums over (n, h, w)"),
            Step(r"= \frac{1}{\sigma_c}\Bigl(\gamma_c g_{nchw} - \overline{\gamma g}_c - \hat x_{nchw}\,"
                 r"\overline{\gamma g \hat x}_c\Bigr)\quad(\text{bars: means over } (n, h, w))",
                 "einsum('nuvc->ncuv', (gamma * GZ - einsum('nuvc->c', gamma * GZ) / M"
                 " - zhat * einsum('nuvc->c', gamma * GZ * zhat) / M) / s)",
                 "BatchNorm1d's compact form, (x - mu)/sigma = xhat, and the view back to (N, C, H, W)"),
        ],
        wrt="X", shapes={"X": (2, 3, 2, 3), "gamma": (3,), "beta": (3,), "G": (2, 3, 2, 3)},
        let=_BN2D_LET,
        setup=(r"\hat x_{n,c,h,w} = \frac{x_{n,c,h,w} - \mu_c}{\sigma_c},\ y = \gamma_c \hat x + \beta_c,\ "
               r"\mu_c, \sigma_c^2 \text{ over the } M = N H W \text{ values of channel } c,\ x: (2, 3, 2, 3)"),
        code=lambda env: _backward(ops.get("batch_norm2d"), env["X"], env["gamma"], env["beta"], gy=env["G"])),
    Derivation(
        "group_norm", "GroupNorm: layer norm over each group, then the per-channel affine: dL/dx",
        "sum(G * group_norm(X, gamma, beta))", [
            Step(r"\frac{\partial L}{\partial x} = \frac{\hat g}{\sigma_{ng}}"
                 r" + \frac{\partial L}{\partial \sigma_{ng}^2} \frac{2 (x - \mu_{ng})}{M}"
                 r" + \frac{\partial L}{\partial \mu_{ng}} \frac{1}{M},\ \hat g = \gamma_c g,\ "
                 r"\frac{\partial L}{\partial \sigma_{ng}^2} = -\tfrac12 \sum_{c \in g,h,w} \hat g (x - \mu_{ng})"
                 r" \sigma_{ng}^{-3},\ \frac{\partial L}{\partial \mu_{ng}} = -\sum_{c \in g,h,w} \frac{\hat g}{\sigma_{ng}}",
                 "einsum('uvnc->ncuv', gamma * GZ / s + ((-0.5 * einsum('uvnc,cg->ng', gamma * GZ * (Z - mu), A))"
                 " @ A.T) * s**(-3) * 2 * (Z - mu) / M + (-(einsum('uvnc,cg->ng', gamma * GZ, A) @ A.T) / s) / M)",
                 "the affine y = gamma_c xhat + beta_c is per channel, so dL/dxhat = gamma_c g; xhat is a "
                 "layer norm of each sample's group (its C/G channels and all positions), so the chain rule "
                 "of batch norm applies with sums over the group: einsum with the membership matrix "
                 "A_{cg} = [c in group g] sums over a group, @ A.T hands each channel its group's value"),
            Step(r"= \frac{1}{\sigma_{ng}}\Bigl(\gamma_c g - \overline{\gamma g}_{ng} - \hat x\,"
                 r"\overline{\gamma g \hat x}_{ng}\Bigr)\quad(\text{bars: means over each group's "
                 r"} (C/G, H, W) \text{ values})",
                 "einsum('uvnc->ncuv', (gamma * GZ - (einsum('uvnc,cg->ng', gamma * GZ, A) / M) @ A.T"
                 " - zhat * ((einsum('uvnc,cg->ng', gamma * GZ * zhat, A) / M) @ A.T)) / s)",
                 "the compact form of the normalization's backward, means over the group, sigma per "
                 "(sample, group)"),
        ],
        wrt="X", shapes=_GN_SHAPES, let=_GN_LET, setup=_GN_SETUP,
        code=lambda env: _backward(ops.get("group_norm"), env["X"], env["gamma"], env["beta"], gy=env["G"],
                                   num_groups=2)),
    Derivation(
        "group_norm", "GroupNorm: dL/dgamma", "sum(G * group_norm(X, gamma, beta))", [
            Step(r"\frac{\partial L}{\partial \gamma_c} = \sum_{n,h,w} g_{n,c,h,w}\,\hat x_{n,c,h,w}",
                 "einsum('uvnc->c', GZ * zhat)",
                 "y = gamma_c xhat + beta_c and xhat does not depend on gamma; the affine is per channel "
                 "(not per group), so the sum runs over the batch and the positions of channel c"),
        ],
        wrt="gamma", shapes=_GN_SHAPES, let=_GN_LET, setup=_GN_SETUP,
        code=lambda env: _backward(ops.get("group_norm"), env["X"], env["gamma"], env["beta"], gy=env["G"],
                                   index=1, num_groups=2)),
    Derivation(
        "group_norm", "GroupNorm: dL/dbeta", "sum(G * group_norm(X, gamma, beta))", [
            Step(r"\frac{\partial L}{\partial \beta_c} = \sum_{n,h,w} g_{n,c,h,w}",
                 "einsum('ncuv->c', G)", "dy/dbeta_c = 1 at every (n, h, w) of channel c"),
        ],
        wrt="beta", shapes=_GN_SHAPES, let=_GN_LET, setup=_GN_SETUP,
        code=lambda env: _backward(ops.get("group_norm"), env["X"], env["gamma"], env["beta"], gy=env["G"],
                                   index=2, num_groups=2)),
]


# -- every other activation: scalar derivations, checked by SymPy and sampling -----------------

def _scalar_code(op, **params):
    """The op's backward with upstream gradient 1: its derivative at every x."""
    return lambda env: _backward(op, env["x"], gy=_ones(env["x"]), **params)


_SELU_L, _SELU_A = "1.0507009873554805", "1.6732632423543772"   # PyTorch's scale and alpha
_GELU_TANH_U = "sqrt(2 / pi) * (x + 0.044715 * x**3)"
_MISH_S = "log(1 + exp(x))"

_ACTIVATIONS = [
    Derivation(
        "leaky_relu", "the derivative of LeakyReLU", "x if x > 0 else 0.01 * x", [
            Step(r"\mathrm{LeakyReLU}'(x) = \begin{cases} \frac{d}{dx} x = 1 & x > 0 \\ \frac{d}{dx}\, a x = a & x \le 0 \end{cases}",
                 "1 if x > 0 else 0.01",
                 "differentiate each piece; at x = 0 the left derivative is a and the right one 1, "
                 "so LeakyReLU'(0) is a convention: a, as PyTorch"),
            Step(r"= a + (1 - a)\,[x > 0]", "0.01 + 0.99 * where(x > 0, 1, 0)",
                 "one expression: backward scales g by 1 where x > 0 and by a elsewhere"),
        ],
        setup=r"\mathrm{LeakyReLU}(x) = \begin{cases} x & x > 0 \\ a x & x \le 0 \end{cases},\quad a = 0.01\ (\text{negative\_slope})",
        code=_scalar_code(ops.leaky_relu)),
    Derivation(
        "prelu", "PReLU: dL/dx, the LeakyReLU rule with the learned slope", "x if x > 0 else 0.25 * x", [
            Step(r"\frac{\partial y}{\partial x} = \begin{cases} 1 & x > 0 \\ a & x \le 0 \end{cases}",
                 "1 if x > 0 else 0.25",
                 "as LeakyReLU, with a the learned slope (here its initial value 0.25); at 0 the "
                 "convention is a, as PyTorch"),
        ],
        setup=r"\mathrm{PReLU}(x) = \begin{cases} x & x > 0 \\ a x & x \le 0 \end{cases},\quad a = 0.25",
        code=lambda env: _backward(ops.prelu, env["x"], np.array([0.25]), gy=_ones(env["x"]))),
    Derivation(
        "prelu", "PReLU: dL/da, one slope per channel", "sum(G * where(X > 0, X, a * X))", [
            Step(r"\frac{\partial L}{\partial a_c} = \sum_{n} g_{n,c}\,\frac{\partial y_{n,c}}{\partial a_c}"
                 r" = \sum_n g_{n,c}\, x_{n,c}\, [x_{n,c} \le 0]",
                 "einsum('nc->c', G * X * (X <= 0))",
                 "y_{n,c} = a_c x_{n,c} where x_{n,c} <= 0 (derivative x_{n,c}) and x_{n,c} elsewhere "
                 "(derivative 0); a_c is shared by every sample of channel c, so the terms add over n"),
        ],
        wrt="a", shapes={"X": (5, 3), "a": (3,), "G": (5, 3)},
        setup=r"y_{n,c} = \begin{cases} x_{n,c} & x_{n,c} > 0 \\ a_c x_{n,c} & x_{n,c} \le 0 \end{cases},"
              r"\ x: (N, C) = (5, 3),\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.prelu, env["X"], env["a"], gy=env["G"], index=1)),
    Derivation(
        "elu", "the derivative of ELU", "x if x > 0 else exp(x) - 1", [
            Step(r"\mathrm{ELU}'(x) = \begin{cases} 1 & x > 0 \\ \alpha e^{x} & x \le 0 \end{cases}",
                 "1 if x > 0 else exp(x)",
                 "differentiate each piece (here alpha = 1, the default); at 0 the convention is the left "
                 "limit alpha, as PyTorch (with alpha = 1 both sides are 1)"),
            Step(r"= \begin{cases} 1 & x > 0 \\ y + \alpha & x \le 0 \end{cases}", "1 if x > 0 else elu(x) + 1",
                 "alpha e^x = alpha (e^x - 1) + alpha = y + alpha: the derivative from the output"),
        ],
        setup=r"\mathrm{ELU}(x) = \begin{cases} x & x > 0 \\ \alpha (e^{x} - 1) & x \le 0 \end{cases},\quad \alpha = 1",
        code=_scalar_code(ops.elu)),
    Derivation(
        "celu", "the derivative of CELU (alpha = 2)", "x if x > 0 else 2 * (exp(x / 2) - 1)", [
            Step(r"\mathrm{CELU}'(x) = \begin{cases} 1 & x > 0 \\ \alpha\, e^{x/\alpha} \cdot \frac{1}{\alpha} & x \le 0 \end{cases}",
                 "1 if x > 0 else 2 * exp(x / 2) * (1 / 2)", "chain rule on e^{x/alpha}: the inner derivative is 1/alpha"),
            Step(r"= \begin{cases} 1 & x > 0 \\ e^{x/\alpha} & x \le 0 \end{cases}", "1 if x > 0 else exp(x / 2)",
                 "alpha cancels; at 0 both sides are 1, for every alpha: CELU is continuously differentiable"),
            Step(r"= \begin{cases} 1 & x > 0 \\ y/\alpha + 1 & x \le 0 \end{cases}",
                 "1 if x > 0 else (2 * (exp(x / 2) - 1)) / 2 + 1", "e^{x/alpha} = (y / alpha) + 1: from the output"),
        ],
        setup=r"\mathrm{CELU}(x) = \begin{cases} x & x > 0 \\ \alpha (e^{x/\alpha} - 1) & x \le 0 \end{cases},\quad \alpha = 2",
        code=_scalar_code(ops.celu, alpha=2.0)),
    Derivation(
        "selu", "the derivative of SELU", f"{_SELU_L} * (x if x > 0 else {_SELU_A} * (exp(x) - 1))", [
            Step(r"\mathrm{SELU}'(x) = \begin{cases} \lambda & x > 0 \\ \lambda \alpha e^{x} & x \le 0 \end{cases}",
                 f"{_SELU_L} if x > 0 else {_SELU_L} * {_SELU_A} * exp(x)",
                 "the ELU rule scaled by lambda; at 0 the convention is the left limit lambda alpha, as PyTorch"),
            Step(r"= \begin{cases} \lambda & x > 0 \\ y + \lambda\alpha & x \le 0 \end{cases}",
                 f"{_SELU_L} if x > 0 else {_SELU_L} * {_SELU_A} * (exp(x) - 1) + {_SELU_L} * {_SELU_A}",
                 "lambda alpha e^x = lambda alpha (e^x - 1) + lambda alpha = y + lambda alpha: from the output"),
        ],
        setup=(r"\mathrm{SELU}(x) = \lambda \begin{cases} x & x > 0 \\ \alpha (e^{x} - 1) & x \le 0 \end{cases},\ "
               r"\lambda = 1.0507009873554805,\ \alpha = 1.6732632423543772"),
        code=_scalar_code(ops.selu)),
    Derivation(
        "relu6", "the derivative of ReLU6", "min(max(0, x), 6)", [
            Step(r"\mathrm{ReLU6}'(x) = \begin{cases} 0 & x < 0 \\ 1 & 0 < x < 6 \\ 0 & x > 6 \end{cases}",
                 "0 if x <= 0 else (1 if x < 6 else 0)",
                 "three pieces, 0, x and 6; at the kinks 0 and 6 the one-sided derivatives differ (0 and 1), "
                 "and the convention is 0 at both, as PyTorch"),
            Step(r"= [0 < x < 6]", "where(x > 0, where(x < 6, 1, 0), 0)",
                 "the indicator of the linear piece: backward keeps g only there"),
        ],
        setup=r"\mathrm{ReLU6}(x) = \min(\max(0, x), 6)",
        code=_scalar_code(ops.relu6)),
    Derivation(
        "gelu", "the derivative of GELU (exact, erf)", "x * (1 + erf(x / sqrt(2))) / 2", [
            Step(r"\mathrm{GELU}'(x) = \frac12\Bigl(1 + \mathrm{erf}\bigl(\tfrac{x}{\sqrt2}\bigr)\Bigr)"
                 r" + \frac{x}{2} \cdot \frac{2}{\sqrt\pi} e^{-x^2/2} \cdot \frac{1}{\sqrt2}",
                 "(1 + erf(x / sqrt(2))) / 2 + x / 2 * (2 / sqrt(pi)) * exp(-x**2 / 2) / sqrt(2)",
                 "product rule on x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2; erf'(u) = (2 / sqrt pi) "
                 "e^{-u^2}, and u = x / sqrt 2 has derivative 1 / sqrt 2"),
            Step(r"= \Phi(x) + x\,\varphi(x),\quad \varphi(x) = \frac{e^{-x^2/2}}{\sqrt{2\pi}}",
                 "(1 + erf(x / sqrt(2))) / 2 + x * exp(-x**2 / 2) / sqrt(2 * pi)",
                 "2 / (2 sqrt(pi) sqrt(2)) = 1 / sqrt(2 pi): the normal CDF plus x times the normal density"),
        ],
        setup=r"\mathrm{GELU}(x) = x\,\Phi(x) = \frac{x}{2}\Bigl(1 + \mathrm{erf}\bigl(\tfrac{x}{\sqrt2}\bigr)\Bigr)"
              r"\quad(\text{approximate='none', the default, as PyTorch})",
        code=_scalar_code(ops.gelu)),
    Derivation(
        "gelu", "the derivative of GELU (tanh approximation)", f"sum(x / 2 * (1 + tanh({_GELU_TANH_U})))", [
            Step(r"\mathrm{GELU}'(x) = \frac12 (1 + t) + \frac{x}{2}\,(1 - t^2)\,u',\quad "
                 r"t = \tanh u,\ u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)",
                 f"(1 + tanh({_GELU_TANH_U})) / 2 + x / 2 * (1 - tanh({_GELU_TANH_U})**2)"
                 " * sqrt(2 / pi) * (1 + 3 * 0.044715 * x**2)",
                 "product rule on (x/2)(1 + t), tanh' = 1 - tanh^2, and the chain rule through u"),
            Step(r"= \frac12 (1 + t) + \frac{x}{2}\,(1 - t^2)\sqrt{2/\pi}\,(1 + 0.134145\,x^2)",
                 f"(1 + tanh({_GELU_TANH_U})) / 2 + x / 2 * (1 - tanh({_GELU_TANH_U})**2)"
                 " * sqrt(2 / pi) * (1 + 0.134145 * x**2)",
                 "u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2); backward keeps t from the forward pass"),
        ],
        # checked elementwise on a vector (central differences): SymPy takes a minute to simplify
        # the derivative of tanh of a cubic, and sampling decides anyway
        shapes={"x": (9,)},
        setup=r"\mathrm{GELU}_{\tanh}(x) = \frac{x}{2}\Bigl(1 + \tanh\bigl(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\bigr)\Bigr)"
              r"\quad(\text{approximate='tanh'})",
        code=_scalar_code(ops.gelu, approximate="tanh")),
    Derivation(
        "silu", "the derivative of SiLU (swish)", "x / (1 + exp(-x))", [
            Step(r"\mathrm{SiLU}'(x) = \sigma(x) + x\,\sigma(x)\bigl(1 - \sigma(x)\bigr)",
                 "sigmoid(x) + x * sigmoid(x) * (1 - sigmoid(x))",
                 "product rule on x sigma(x), with sigma' = sigma (1 - sigma)"),
            Step(r"= \sigma(x)\bigl(1 + x(1 - \sigma(x))\bigr)", "sigmoid(x) * (1 + x * (1 - sigmoid(x)))",
                 "factor sigma(x): backward needs only x and sigma(x)"),
        ],
        setup=r"\mathrm{SiLU}(x) = x\,\sigma(x) = \frac{x}{1 + e^{-x}}",
        code=_scalar_code(ops.silu)),
    Derivation(
        "mish", "the derivative of Mish", f"x * tanh({_MISH_S})", [
            Step(r"\mathrm{Mish}'(x) = \tanh s + x\,(1 - \tanh^2 s)\,s',\quad s = \ln(1 + e^{x}),\ s' = \frac{e^{x}}{1 + e^{x}}",
                 f"tanh({_MISH_S}) + x * (1 - tanh({_MISH_S})**2) * exp(x) / (1 + exp(x))",
                 "product rule on x tanh(s), then the chain rule through tanh (1 - tanh^2) and softplus"),
            Step(r"= \tanh s + x\,\sigma(x)\,(1 - \tanh^2 s)",
                 f"tanh({_MISH_S}) + x * sigmoid(x) * (1 - tanh({_MISH_S})**2)",
                 "softplus' = e^x / (1 + e^x) = sigma(x)"),
        ],
        setup=r"\mathrm{Mish}(x) = x \tanh\bigl(\mathrm{softplus}(x)\bigr) = x \tanh\bigl(\ln(1 + e^{x})\bigr)",
        code=_scalar_code(ops.mish)),
    Derivation(
        "hardsigmoid", "the derivative of hardsigmoid", "min(max(0, x / 6 + 1 / 2), 1)", [
            Step(r"\mathrm{hardsigmoid}'(x) = \begin{cases} 0 & x \le -3 \\ \frac16 & -3 < x < 3 \\ 0 & x \ge 3 \end{cases}",
                 "0 if x <= -3 else (1 / 6 if x < 3 else 0)",
                 "x/6 + 1/2 leaves [0, 1] at x = -3 and x = 3; the slope of the middle piece is 1/6, the "
                 "clipped pieces are constant. At the kinks the convention is 0, as PyTorch"),
            Step(r"= \tfrac16\,[-3 < x < 3]", "where(x > -3, where(x < 3, 1 / 6, 0), 0)", "as an indicator"),
        ],
        setup=r"\mathrm{hardsigmoid}(x) = \min\bigl(\max(0, \tfrac{x}{6} + \tfrac12), 1\bigr)",
        code=_scalar_code(ops.hardsigmoid)),
    Derivation(
        "hardswish", "the derivative of hardswish", "x * min(max(0, x + 3), 6) / 6", [
            Step(r"\mathrm{hardswish}'(x) = \begin{cases} 0 & x \le -3 \\ \frac{d}{dx} \frac{x (x + 3)}{6} = \frac{2x + 3}{6} & -3 < x < 3 \\ 1 & x \ge 3 \end{cases}",
                 "0 if x <= -3 else ((2 * x + 3) / 6 if x < 3 else 1)",
                 "three pieces: 0, x (x + 3) / 6 and x. At x = -3 the sides are 0 and -1/2 and at x = 3 "
                 "they are 3/2 and 1: the conventions are 0 and 1 (the outer pieces), as PyTorch"),
            Step(r"= \begin{cases} 0 & x \le -3 \\ \frac{x}{3} + \frac12 & -3 < x < 3 \\ 1 & x \ge 3 \end{cases}",
                 "where(x <= -3, 0, where(x < 3, x / 3 + 1 / 2, 1))", "(2x + 3)/6 = x/3 + 1/2"),
        ],
        setup=r"\mathrm{hardswish}(x) = x\,\frac{\min(\max(0, x + 3), 6)}{6}",
        code=_scalar_code(ops.hardswish)),
    Derivation(
        "identity", "the derivative of the identity", "x", [
            Step(r"f'(x) = \frac{d}{dx}\, x = 1", "1",
                 "the identity passes the upstream gradient unchanged: g_x = g_y"),
        ],
        setup=r"f(x) = x", code=_scalar_code(ops.identity)),
    Derivation(
        "hardtanh", "the derivative of Hardtanh", "min(max(x, -1), 1)", [
            Step(r"\mathrm{Hardtanh}'(x) = \begin{cases} 0 & x < a \\ 1 & a < x < b \\ 0 & x > b \end{cases}",
                 "0 if x <= -1 else (1 if x < 1 else 0)",
                 "three pieces, the constants a and b and x between them; at a and b the one-sided "
                 "derivatives are 0 and 1, and the convention is 0 at both, as PyTorch"),
            Step(r"= [a < x < b]", "where(x > -1, where(x < 1, 1, 0), 0)",
                 "the indicator of the linear piece: backward keeps g only there"),
        ],
        setup=r"\mathrm{Hardtanh}(x) = \min(\max(x, a), b),\quad a = -1,\ b = 1",
        code=_scalar_code(ops.hardtanh)),
    Derivation(
        "softsign", "the derivative of softsign", "x / (1 + abs(x))", [
            Step(r"\mathrm{softsign}'(x) = \frac{(1 + |x|) - x \operatorname{sign}(x)}{(1 + |x|)^2}",
                 "((1 + abs(x)) - x * sign(x)) / (1 + abs(x))**2",
                 "the quotient rule, with |x|' = sign(x) (away from 0)"),
            Step(r"= \frac{1}{(1 + |x|)^2}", "1 / (1 + abs(x))**2",
                 "x sign(x) = |x|; at 0 both sides give 1, so softsign is differentiable there too"),
        ],
        setup=r"\mathrm{softsign}(x) = \frac{x}{1 + |x|}",
        code=_scalar_code(ops.softsign)),
    Derivation(
        "logsigmoid", "the derivative of log-sigmoid", "log(sigmoid(x))", [
            Step(r"\frac{d}{dx}\log\sigma(x) = \frac{\sigma'(x)}{\sigma(x)}",
                 "sigmoid(x) * (1 - sigmoid(x)) / sigmoid(x)", "(log f)' = f'/f, with sigma' = sigma (1 - sigma)"),
            Step(r"= 1 - \sigma(x) = \sigma(-x)", "sigmoid(-x)",
                 "sigma cancels; 1 - sigma(x) = sigma(-x), which backward keeps (never 1 minus a number near 1)"),
        ],
        setup=r"\log\sigma(x) = -\ln\bigl(1 + e^{-x}\bigr)",
        code=_scalar_code(ops.logsigmoid)),
    Derivation(
        "tanhshrink", "the derivative of Tanhshrink", "x - tanh(x)", [
            Step(r"\mathrm{Tanhshrink}'(x) = 1 - (1 - \tanh^2 x)", "1 - (1 - tanh(x)**2)",
                 "the derivative of a difference, with tanh' = 1 - tanh^2"),
            Step(r"= \tanh^2 x", "tanh(x)**2", "from the tanh that forward computed"),
        ],
        setup=r"\mathrm{Tanhshrink}(x) = x - \tanh x",
        code=_scalar_code(ops.tanhshrink)),
    Derivation(
        "softshrink", "the derivative of Softshrink", "x - 0.5 if x > 0.5 else (x + 0.5 if x < -0.5 else 0)", [
            Step(r"\mathrm{Softshrink}'(x) = \begin{cases} 1 & x > \lambda \\ 1 & x < -\lambda \\ 0 & |x| < \lambda \end{cases}",
                 "1 if x > 0.5 else (1 if x < -0.5 else 0)",
                 "each piece's slope: x - lambda and x + lambda have slope 1, the constant 0 has 0; at "
                 "x = lambda and x = -lambda the sides are 0 and 1, and the convention is 0, as PyTorch"),
            Step(r"= [\,|x| > \lambda\,]", "where(abs(x) > 0.5, 1, 0)", "one indicator for both outer pieces"),
        ],
        setup=r"\mathrm{Softshrink}(x) = \operatorname{sign}(x)\max(|x| - \lambda, 0),\quad \lambda = 0.5",
        code=_scalar_code(ops.softshrink)),
    Derivation(
        "hardshrink", "the derivative of Hardshrink", "x if abs(x) > 0.5 else 0", [
            Step(r"\mathrm{Hardshrink}'(x) = \begin{cases} 1 & |x| > \lambda \\ 0 & |x| < \lambda \end{cases}",
                 "1 if abs(x) > 0.5 else 0",
                 "x or 0; at x = lambda and x = -lambda the function jumps (from 0 to lambda, or -lambda): no derivative, and the "
                 "convention is 0, as PyTorch"),
        ],
        setup=r"\mathrm{Hardshrink}(x) = x\,[\,|x| > \lambda\,],\quad \lambda = 0.5",
        code=_scalar_code(ops.hardshrink)),
    Derivation(
        "threshold", "the derivative of Threshold", "x if x > 1 else -2", [
            Step(r"\mathrm{Threshold}'(x) = \begin{cases} 1 & x > t \\ 0 & x < t \end{cases}",
                 "1 if x > 1 else 0",
                 "x above the threshold, the constant v below it; at x = t the function jumps from v to "
                 "t (when v != t): no derivative, and the convention is 0, as PyTorch"),
        ],
        setup=r"\mathrm{Threshold}(x) = \begin{cases} x & x > t \\ v & x \le t \end{cases},\quad t = 1,\ v = -2",
        code=_scalar_code(ops.threshold, threshold=1.0, value=-2.0)),
]


# -- the rest of the registry: arrays, checked against central differences ----------------------

def _onehot(rows, classes):
    """A fixed one-hot matrix in the expression language: row n is the one-hot of rows[n]."""
    return "stack(" + ", ".join(f"eye({classes})[{r}]" for r in rows) + ")"


_TARGETS = (0, 2, 1, 0)                        # class indices of the 4 rows of the loss examples
_Y1H = _onehot(_TARGETS, 3)
_LN_LET = ["M = 5", "Z = X.T", "GZ = G.T", "H = einsum('d,dn->dn', gamma, GZ)", "mu = mean(Z, 0)",
           "s = sqrt(mean((Z - mu)**2, 0) + 0.00001)", "zhat = (Z - mu) / s"]
_RESHAPED = "stack(" + ", ".join("stack(" + ", ".join(f"G[{4 * i + j}]" for j in range(4)) + ")"
                                 for i in range(3)) + ")"

_REST = [
    Derivation(
        "log_softmax", "the gradient of log-softmax", "sum(G * (o - log(sum(exp(o)))))", [
            Step(r"\frac{\partial L}{\partial o_j} = \sum_i g_i\,\frac{\partial \log p_i}{\partial o_j}"
                 r" = \sum_i g_i \Bigl(\delta_{ij} - \frac{e^{o_j}}{\sum_k e^{o_k}}\Bigr)",
                 "G - sum(G) * exp(o) / sum(exp(o))",
                 "log p_i = o_i - log sum_k e^{o_k}: d o_i/d o_j = delta_ij, and the log-sum-exp has "
                 "derivative e^{o_j} / sum_k e^{o_k} = p_j"),
            Step(r"= g_j - p_j \sum_i g_i", "G - p * sum(G)",
                 "sum_i g_i delta_ij = g_j; backward needs only p = exp(y), from the output"),
        ],
        wrt="o", shapes={"o": (5,), "G": (5,)}, let=["p = softmax(o)"],
        setup=r"y_i = \log p_i = o_i - \log\sum_k e^{o_k},\quad G = \partial L/\partial y",
        code=lambda env: _backward(ops.log_softmax, env["o"], gy=env["G"])),
    Derivation(
        "matmul", "the matrix product: dL/dA", "sum(G * (A @ B))", [
            Step(r"\frac{\partial L}{\partial A_{ik}} = \sum_j G_{ij}\,\frac{\partial Y_{ij}}{\partial A_{ik}} = \sum_j G_{ij} B_{kj}",
                 "einsum('ij,kj->ik', G, B)", "Y_ij = sum_k A_ik B_kj, so dY_ij/dA_ik = B_kj"),
            Step(r"\frac{\partial L}{\partial A} = G B^\top", "G @ B.T", "the sum over j is a product with B^T"),
        ],
        wrt="A", shapes={"A": (3, 4), "B": (4, 2), "G": (3, 2)}, setup=r"Y = A B,\ G = \partial L/\partial Y",
        code=lambda env: _backward(ops.matmul, env["A"], env["B"], gy=env["G"], index=0)),
    Derivation(
        "matmul", "the matrix product: dL/dB", "sum(G * (A @ B))", [
            Step(r"\frac{\partial L}{\partial B_{kj}} = \sum_i G_{ij} A_{ik}", "einsum('ij,ik->kj', G, A)",
                 "dY_ij/dB_kj = A_ik, summed over the rows i"),
            Step(r"\frac{\partial L}{\partial B} = A^\top G", "A.T @ G", "a product with A^T"),
        ],
        wrt="B", shapes={"A": (3, 4), "B": (4, 2), "G": (3, 2)}, setup=r"Y = A B,\ G = \partial L/\partial Y",
        code=lambda env: _backward(ops.matmul, env["A"], env["B"], gy=env["G"], index=1)),
    Derivation(
        "chain_matmul", "a chain of products: dL/dX_2 of X_1 X_2 X_3", "sum(G * (X1 @ X2 @ X3))", [
            Step(r"\frac{\partial L}{\partial (X_2)_{kl}} = \sum_{i,m} G_{im} (X_1)_{ik} (X_3)_{lm}",
                 "einsum('im,ik,lm->kl', G, X1, X3)",
                 "Y_im = sum_{k,l} (X_1)_ik (X_2)_kl (X_3)_lm is linear in X_2"),
            Step(r"= \bigl(X_1^\top G X_3^\top\bigr)_{kl}", "X1.T @ G @ X3.T",
                 "the factors on the left enter transposed on the left, those on the right transposed on "
                 "the right: the matmul rule applied twice"),
        ],
        wrt="X2", shapes={"X1": (2, 3), "X2": (3, 4), "X3": (4, 2), "G": (2, 2)},
        setup=r"Y = X_1 X_2 X_3,\ G = \partial L/\partial Y",
        code=lambda env: _backward(ops.chain_matmul, env["X1"], env["X2"], env["X3"], gy=env["G"], index=1)),
    Derivation(
        "batch_norm_eval", "batch normalization in evaluation mode: dL/dx",
        "sum(G * (gamma * (X - m) / sqrt(v + 0.00001) + beta))", [
            Step(r"\frac{\partial L}{\partial x} = \frac{\gamma\,G}{\sqrt{\hat\sigma^2 + \epsilon}}",
                 "gamma * G / sqrt(v + 0.00001)",
                 "the running statistics are constants in evaluation mode, so y is affine in x with "
                 "slope gamma / sqrt(var + eps) per feature: none of training mode's paths through "
                 "the batch mean and variance"),
        ],
        wrt="X", shapes={"X": (4, 3), "gamma": (3,), "beta": (3,), "m": (3,), "v": (3,), "G": (4, 3)},
        positive=True,
        setup=r"y = \gamma\,\frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta\quad(\hat\mu = m,\ \hat\sigma^2 = v\text{: running statistics})",
        code=lambda env: _backward(ops.batch_norm_eval, env["X"], env["gamma"], env["beta"], env["m"], env["v"],
                                   gy=env["G"])),
    Derivation(
        "batch_norm2d_eval", "BatchNorm2d in evaluation mode: dL/dx", "sum(GZ * (gamma * (Z - m) / sqrt(v + 0.00001)))", [
            Step(r"\frac{\partial L}{\partial x_{n,c,h,w}} = \frac{\gamma_c\,g_{n,c,h,w}}{\sqrt{\hat\sigma_c^2 + \epsilon}}",
                 "einsum('nuvc->ncuv', gamma * GZ / sqrt(v + 0.00001))",
                 "per channel c an affine map with constant statistics: the slope gamma_c / sqrt(var_c + eps) "
                 "at every (n, h, w); z is the channels-last view"),
        ],
        wrt="X", shapes={"X": (2, 3, 2, 2), "gamma": (3,), "m": (3,), "v": (3,), "G": (2, 3, 2, 2)},
        let=["Z = einsum('ncuv->nuvc', X)", "GZ = einsum('ncuv->nuvc', G)"], positive=True,
        setup=r"y_{n,c,h,w} = \gamma_c\,\frac{x_{n,c,h,w} - \hat\mu_c}{\sqrt{\hat\sigma_c^2 + \epsilon}} + \beta_c"
              r"\quad(\text{running statistics})",
        code=lambda env: _backward(ops.batch_norm2d_eval, env["X"], env["gamma"], np.zeros(3), env["m"], env["v"],
                                   gy=env["G"])),
    Derivation(
        "layer_norm", "layer normalization: dL/dx, batch norm's rule over each sample's features",
        "sum(G * layer_norm(X, gamma, beta))", [
            Step(r"\frac{\partial L}{\partial x} = \frac{h}{\sigma} + \frac{\partial L}{\partial \sigma^2} \frac{2 (x - \mu)}{M}"
                 r" + \frac{\partial L}{\partial \mu} \frac{1}{M},\quad h = \gamma \odot g,\ "
                 r"\frac{\partial L}{\partial \sigma^2} = -\tfrac12 \sum_d h_d (x_d - \mu) \sigma^{-3},\ "
                 r"\frac{\partial L}{\partial \mu} = -\sum_d \frac{h_d}{\sigma}",
                 "einsum('dn->nd', H / s + (-0.5 * sum(H * (Z - mu), 0) * s**(-3)) * 2 * (Z - mu) / M"
                 " + (-sum(H, 0) / s) / M)",
                 "each sample (a row of x) is normalized over its M = 5 features: batch norm's chain rule "
                 "with the roles of the axes swapped (z = x^T has one column per sample); the affine "
                 "gamma, beta is per feature, so dL/dxhat = gamma g = h"),
            Step(r"= \frac{1}{\sigma}\Bigl(h - \bar h - \hat x\,\overline{h \hat x}\Bigr)\quad(\text{bars: means over the features})",
                 "einsum('dn->nd', (H - mean(H, 0) - zhat * mean(H * zhat, 0)) / s)",
                 "the compact form, as for batch norm"),
        ],
        wrt="X", shapes={"X": (3, 5), "gamma": (5,), "beta": (5,), "G": (3, 5)}, let=_LN_LET,
        setup=r"\hat x_{n,d} = \frac{x_{n,d} - \mu_n}{\sigma_n},\ \sigma_n = \sqrt{\sigma_n^2 + \epsilon},\ "
              r"y = \gamma_d \hat x_{n,d} + \beta_d,\ \mu_n, \sigma_n^2 \text{ over the } M = 5 \text{ features of sample } n",
        code=lambda env: _backward(ops.layer_norm, env["X"], env["gamma"], env["beta"], gy=env["G"])),
    Derivation(
        "standardize", "standardizing with fixed statistics: dL/dx", "sum(G * (X - m) / sd)", [
            Step(r"\frac{\partial L}{\partial x} = \frac{G}{s}", "G / sd",
                 "mean and std are constants (the training set's), so y is x shifted and scaled per "
                 "feature: the gradient is scaled by 1/std"),
        ],
        wrt="X", shapes={"X": (4, 3), "m": (3,), "sd": (3,), "G": (4, 3)}, positive=True,
        setup=r"y = \frac{x - \mu}{s},\ \mu, s \text{ fixed}",
        code=lambda env: _backward(ops.standardize, env["X"], env["m"], env["sd"], gy=env["G"])),
    Derivation(
        "l1_loss", "the gradient of the mean absolute error", "mean(abs(yhat - y))", [
            Step(r"\frac{\partial L}{\partial \hat y_i} = \frac{1}{n}\,\mathrm{sign}(\hat y_i - y_i)",
                 "sign(yhat - y) / n",
                 "|u|' = sign(u) away from u = 0; at u = 0 the convention is sign(0) = 0, as PyTorch"),
        ],
        wrt="yhat", shapes={"yhat": (4, 3), "y": (4, 3)}, let=["n = 12"],
        setup=r"L = \frac{1}{n} \sum_i |\hat y_i - y_i|",
        code=lambda env: _backward(ops.l1_loss, env["yhat"], env["y"], gy=1.0)),
    Derivation(
        "huber_loss", "the gradient of the Huber loss (delta = 1)",
        "mean(where(abs(yhat - y) <= 1, 0.5 * (yhat - y)**2, abs(yhat - y) - 0.5))", [
            Step(r"\frac{\partial L}{\partial \hat y_i} = \frac{1}{n} \begin{cases} d_i & |d_i| \le \delta \\ \delta\,\mathrm{sign}(d_i) & |d_i| > \delta \end{cases}",
                 "where(abs(d) <= 1, d, sign(d)) / n",
                 "the quadratic piece d^2/2 has derivative d, the linear piece delta (|d| - delta/2) has "
                 "derivative delta sign(d); at |d| = delta both are delta sign(d): continuously differentiable"),
            Step(r"= \frac{1}{n}\,\mathrm{clip}(d_i, -\delta, \delta)", "max(-1, min(1, d)) / n",
                 "as a clip: d between -delta and delta"),
        ],
        wrt="yhat", shapes={"yhat": (4, 3), "y": (4, 3)}, let=["n = 12", "d = yhat - y"],
        setup=r"L = \frac{1}{n} \sum_i \begin{cases} \tfrac12 d_i^2 & |d_i| \le \delta \\ \delta (|d_i| - \tfrac12 \delta) & \text{otherwise} \end{cases},\ d = \hat y - y,\ \delta = 1",
        code=lambda env: _backward(ops.huber_loss, env["yhat"], env["y"], gy=1.0)),
    Derivation(
        "nll_loss", "the gradient of the negative log-likelihood", "-sum(Y * X) / N", [
            Step(r"\frac{\partial L}{\partial x_{n,k}} = -\frac{1}{N}\,[k = y_n]", "-Y / N",
                 "L = -(1/N) sum_n x_{n, y_n} picks one log-probability per row: its derivative is -1/N at "
                 "the target class and 0 elsewhere (Y is the one-hot of the targets 0, 2, 1, 0)"),
        ],
        wrt="X", shapes={"X": (4, 3)}, let=["N = 4", f"Y = {_Y1H}"],
        setup=r"L = -\frac{1}{N} \sum_n x_{n, y_n}\quad(x: \text{log-probabilities},\ y_n: \text{class indices})",
        code=lambda env: _backward(ops.nll_loss, env["X"], np.array(_TARGETS), gy=1.0)),
    Derivation(
        "prob_cross_entropy", "the gradient of cross-entropy on probabilities",
        "-sum(Y * log(P + 0.000000000001)) / N", [
            Step(r"\frac{\partial L}{\partial p_{n,c}} = -\frac{1}{N}\,\frac{y_{n,c}}{p_{n,c} + \epsilon}",
                 "-Y / (P + 0.000000000001) / N", "(log u)' = 1/u; the mean is over the N rows"),
        ],
        wrt="P", shapes={"P": (4, 3), "Y": (4, 3)}, let=["N = 4"], positive=True,
        setup=r"L = -\frac{1}{N} \sum_{n,c} y_{n,c} \log(p_{n,c} + \epsilon),\ \epsilon = 10^{-12}",
        code=lambda env: _backward(ops.prob_cross_entropy, env["P"], env["Y"], gy=1.0)),
    Derivation(
        "binary_cross_entropy", "the derivative of binary cross-entropy (target 0.3)",
        "-(0.3 * log(p) + 0.7 * log(1 - p))", [
            Step(r"\frac{\partial L}{\partial p} = -\Bigl(\frac{y}{p} - \frac{1 - y}{1 - p}\Bigr)",
                 "-(0.3 / p - 0.7 / (1 - p))", "(log p)' = 1/p and (log(1 - p))' = -1/(1 - p)"),
            Step(r"= \frac{p - y}{p\,(1 - p)}", "(p - 0.3) / (p * (1 - p))",
                 "over the common denominator: -(y (1 - p) - (1 - y) p) = p - y. The op clamps p (1 - p) "
                 "at 1e-12 so that the gradient stays finite at p = 0 and 1, as PyTorch"),
        ],
        wrt="p", domain=(0.001, 0.999),
        setup=r"L = -\bigl(y \log p + (1 - y) \log(1 - p)\bigr),\ y = 0.3\ (\text{one element; the mean divides by } n)",
        code=lambda env: _backward(ops.binary_cross_entropy, env["p"], np.full_like(env["p"], 0.3), gy=1.0,
                                   reduction="sum")),
    Derivation(
        "binary_cross_entropy_with_logits", "binary cross-entropy on logits: the gradient is (sigma(x) - y)/n",
        "-mean(Y * log(sigmoid(X)) + (1 - Y) * log(1 - sigmoid(X)))", [
            Step(r"\frac{\partial L}{\partial x_i} = -\frac{1}{n}\Bigl(y_i \bigl(1 - \sigma(x_i)\bigr) - (1 - y_i)\,\sigma(x_i)\Bigr)",
                 "-(Y * (1 - sigmoid(X)) - (1 - Y) * sigmoid(X)) / n",
                 "(log sigma)' = 1 - sigma and (log(1 - sigma))' = -sigma"),
            Step(r"= \frac{1}{n}\bigl(\sigma(x_i) - y_i\bigr)", "(sigmoid(X) - Y) / n",
                 "the y sigma terms cancel: the logistic regression gradient, p - y"),
        ],
        wrt="X", shapes={"X": (4, 3), "Y": (4, 3)}, let=["n = 12"],
        setup=r"L = -\frac{1}{n} \sum_i y_i \log \sigma(x_i) + (1 - y_i) \log\bigl(1 - \sigma(x_i)\bigr)",
        code=lambda env: _backward(ops.binary_cross_entropy_with_logits, env["X"], env["Y"], gy=1.0)),
    Derivation(
        "multi_margin_loss", "the gradient of the multi-class hinge loss (p = 1, margin 1)",
        "sum(max(0, Hm) * (1 - Y.T)) / (C * N)", [
            Step(r"\frac{\partial L}{\partial x_{n,i}} = \frac{[h_{n,i} > 0]}{C N}\ (i \ne y_n),\quad"
                 r"\frac{\partial L}{\partial x_{n,y_n}} = -\sum_{i \ne y_n} \frac{[h_{n,i} > 0]}{C N}",
                 "A - (Y.T * einsum('nc->n', A)).T",
                 "h_{n,i} = 1 - x_{n,y_n} + x_{n,i} enters where it is positive: +1 for x_{n,i}, -1 for "
                 "x_{n,y_n}, once per violated class; A holds the first part, and the target's entry "
                 "collects minus its row sum"),
        ],
        wrt="X", shapes={"X": (4, 3)},
        let=["C = 3", "N = 4", f"Y = {_Y1H}", "Hm = 1 - einsum('nc,nc->n', X, Y) + X.T",
             "A = (where(Hm > 0, 1, 0) * (1 - Y.T)).T / (C * N)"],
        setup=r"L = \frac{1}{N} \sum_n \frac{1}{C} \sum_{i \ne y_n} \max(0, h_{n,i}),\ h_{n,i} = 1 - x_{n,y_n} + x_{n,i}",
        code=lambda env: _backward(ops.multi_margin_loss, env["X"], np.array(_TARGETS), gy=1.0)),
    Derivation(
        "dropout", "dropout: the gradient goes through the kept units, scaled", "sum(G * dropout(X))", [
            Step(r"\frac{\partial L}{\partial x_i} = g_i\,\frac{m_i}{1 - p}", "G * M / (1 - 0.5)",
                 "y_i = m_i x_i / (1 - p) with the mask m drawn once in the forward pass: backward uses "
                 "the same mask (here the op's own, seed 0, p = 0.5), so a dropped unit gets no gradient"),
        ],
        wrt="X", shapes={"X": (4, 5), "G": (4, 5)}, let=["M = dropout(X * 0 + 1) * (1 - 0.5)"],
        setup=r"y = \frac{m \odot x}{1 - p},\ m_i \sim \mathrm{Bernoulli}(1 - p),\ p = 0.5",
        code=lambda env: _backward(ops.dropout, env["X"], gy=env["G"])),
    Derivation(
        "add", "addition with broadcasting: dL/db sums over the broadcast axis", "sum(G * (a + b))", [
            Step(r"\frac{\partial L}{\partial b_k} = \sum_n g_{n,k}\,\frac{\partial y_{n,k}}{\partial b_k} = \sum_n g_{n,k}",
                 "einsum('nk->k', G)",
                 "b (shape (3,)) is broadcast over the 4 rows, so each b_k reaches 4 outputs: a fork, "
                 "and the gradients of its copies add (dL/da = g, shape and all)"),
        ],
        wrt="b", shapes={"a": (4, 3), "b": (3,), "G": (4, 3)},
        setup=r"y_{n,k} = a_{n,k} + b_k\ (\text{b broadcast over the rows}),\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.add, env["a"], env["b"], gy=env["G"], index=1)),
    Derivation(
        "mul", "elementwise product with broadcasting: dL/db", "sum(G * (a * b))", [
            Step(r"\frac{\partial L}{\partial b_k} = \sum_n g_{n,k}\, a_{n,k}", "einsum('nk,nk->k', G, a)",
                 "dy_{n,k}/db_k = a_{n,k}; b is broadcast over the rows, so the terms add over n "
                 "(and dL/da = g * b)"),
        ],
        wrt="b", shapes={"a": (4, 3), "b": (3,), "G": (4, 3)},
        setup=r"y_{n,k} = a_{n,k}\, b_k,\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.mul, env["a"], env["b"], gy=env["G"], index=1)),
    Derivation(
        "concat", "concatenation: each input gets its slice of the gradient", "sum(G * concat(A, B))", [
            Step(r"\frac{\partial L}{\partial a_{i,j}} = g_{i,j}\quad(j < 2,\ \text{the columns where } a \text{ stands})",
                 "einsum('ik,jk->ij', G, S)",
                 "y = [a, b] along the last axis: a_{i,j} is y_{i,j}, so its gradient is g_{i,j}; S selects "
                 "the first 2 of the 6 columns"),
        ],
        wrt="A", shapes={"A": (3, 2), "B": (3, 4), "G": (3, 6)}, let=["S = stack(eye(6)[0], eye(6)[1])"],
        setup=r"y = [a, b]\ \text{along the last axis},\ a: (3, 2),\ b: (3, 4)",
        code=lambda env: _backward(ops.concat, env["A"], env["B"], gy=env["G"], index=0)),
    Derivation(
        "split", "split: the gradient is the pieces' gradients put back together",
        "sum(G1 * (X @ S1.T)) + sum(G2 * (X @ S2.T))", [
            Step(r"\frac{\partial L}{\partial x} = [g_1, g_2]\ \text{along the last axis}", "concat(G1, G2)",
                 "split(x, 2) cuts x (3, 4) into y_1 = x[:, :2] and y_2 = x[:, 2:] (written with the "
                 "selection matrices S_1, S_2); each entry of x is in one piece, so its gradient is that "
                 "piece's, in place"),
        ],
        wrt="X", shapes={"X": (3, 4), "G1": (3, 2), "G2": (3, 2)},
        let=["S1 = stack(eye(4)[0], eye(4)[1])", "S2 = stack(eye(4)[2], eye(4)[3])"],
        setup=r"[y_1, y_2] = \mathrm{split}(x, 2),\ x: (3, 4),\ g_k = \partial L/\partial y_k",
        code=lambda env: ops.split.backward(ops.split.forward(env["X"])[1], env["G1"], env["G2"])[0]),
    Derivation(
        "reshape", "reshape: the gradient takes the input's shape back", "sum(G * reshape(X))", [
            Step(r"\frac{\partial L}{\partial x_{i,j}} = g_{4i + j}", _RESHAPED,
                 "reshape(x) to (12,) puts x_{i,j} at position 4i + j and changes no value: its gradient "
                 "is g there, and reshape(g, x.shape) puts every g_k back"),
        ],
        wrt="X", shapes={"X": (3, 4), "G": (12,)},
        setup=r"y = \mathrm{reshape}(x, (12,)),\ x: (3, 4)",
        code=lambda env: _backward(ops.reshape, env["X"], gy=env["G"])),
]


# -- recurrent networks: backpropagation through time, the LSTM's and the GRU's gates ----------
#
# Three steps of a tanh RNN, unrolled (lets h1, h2, h3), with an upstream gradient G_t on every
# output; the expression language has no loop, so T = 3 is written out.

_RNN_SHAPES = {"X1": (2, 3), "X2": (2, 3), "X3": (2, 3), "H0": (2, 3), "Wih": (3, 3), "Whh": (3, 3),
               "b": (3,), "G1": (2, 3), "G2": (2, 3), "G3": (2, 3)}
_RNN_LET = ["h1 = tanh(X1 @ Wih.T + H0 @ Whh.T + b)", "h2 = tanh(X2 @ Wih.T + h1 @ Whh.T + b)",
            "h3 = tanh(X3 @ Wih.T + h2 @ Whh.T + b)",
            "d3 = G3 * (1 - h3**2)", "d2 = (G2 + d3 @ Whh) * (1 - h2**2)", "d1 = (G1 + d2 @ Whh) * (1 - h1**2)"]
_RNN_L = "sum(G1 * h1) + sum(G2 * h2) + sum(G3 * h3)"
_RNN_SETUP = (r"h_t = \tanh(x_t W_{ih}^\top + h_{t-1} W_{hh}^\top + b),\ t = 1, 2, 3,\ "
              r"L = \textstyle\sum_t \langle G_t, h_t \rangle\ (G_t = \partial L/\partial y_t \text{ at every "
              r"output}),\ x_t: (N, I) = (2, 3),\ h_t: (2, 3)")


def _rnn_layer_grad(env, index):
    """ops.rnn_tanh's hand-written backward on the three steps (bias as bias_ih, no bias_hh)."""
    x = np.stack([env["X1"], env["X2"], env["X3"]])
    (y, h_n), saved = ops.rnn_tanh.forward(x, env["H0"], env["Wih"], env["Whh"], env["b"], None)
    return ops.rnn_tanh.backward(saved, np.stack([env["G1"], env["G2"], env["G3"]]), None)[index]


_LSTM_SHAPES = {"X": (2, 3), "H": (2, 2), "C": (2, 2), "Gh": (2, 2), "Gc": (2, 2),
                **{f"W{k}": (2, 3) for k in "ifgo"}, **{f"U{k}": (2, 2) for k in "ifgo"},
                **{f"b{k}": (2,) for k in "ifgo"}}
_LSTM_LET = ["i = sigmoid(X @ Wi.T + H @ Ui.T + bi)", "f = sigmoid(X @ Wf.T + H @ Uf.T + bf)",
             "g = tanh(X @ Wg.T + H @ Ug.T + bg)", "o = sigmoid(X @ Wo.T + H @ Uo.T + bo)",
             "c2 = f * C + i * g", "h2 = o * tanh(c2)", "gc2 = Gc + Gh * o * (1 - tanh(c2)**2)"]
_LSTM_L = "sum(Gh * h2) + sum(Gc * c2)"
_LSTM_SETUP = (r"i, f, o = \sigma(x W_{\{i,f,o\}}^\top + h U_{\{i,f,o\}}^\top + b_{\{i,f,o\}}),\ "
               r"g = \tanh(x W_g^\top + h U_g^\top + b_g),\ c' = f \odot c + i \odot g,\ h' = o \odot \tanh c',\ "
               r"L = \langle G_h, h' \rangle + \langle G_c, c' \rangle\ (\text{weight\_ih} = [W_i; W_f; W_g; W_o],"
               r"\ \text{weight\_hh} = [U_i; U_f; U_g; U_o])")


def _lstm_cell_grad(env, index):
    """ops.lstm_cell's hand-written backward, the gates stacked as PyTorch's (i, f, g, o)."""
    W = np.concatenate([env[f"W{k}"] for k in "ifgo"])
    U = np.concatenate([env[f"U{k}"] for k in "ifgo"])
    b = np.concatenate([env[f"b{k}"] for k in "ifgo"])
    _, saved = ops.lstm_cell.forward(env["X"], env["H"], env["C"], W, U, b, None)
    return ops.lstm_cell.backward(saved, env["Gh"], env["Gc"])[index]


_GRU_SHAPES = {"X": (2, 3), "H": (2, 2), "G": (2, 2), **{f"W{k}": (2, 3) for k in "rzn"},
               **{f"U{k}": (2, 2) for k in "rzn"}, **{f"b{k}": (2,) for k in "rzn"},
               **{f"c{k}": (2,) for k in "rzn"}}
_GRU_LET = ["r = sigmoid(X @ Wr.T + br + H @ Ur.T + cr)", "z = sigmoid(X @ Wz.T + bz + H @ Uz.T + cz)",
            "hn = H @ Un.T + cn", "n = tanh(X @ Wn.T + bn + r * hn)", "h2 = (1 - z) * n + z * H",
            "gan = G * (1 - z) * (1 - n**2)"]
_GRU_SETUP = (r"r, z = \sigma(x W_{\{r,z\}}^\top + b_{\{r,z\}} + h U_{\{r,z\}}^\top + c_{\{r,z\}}),\ "
              r"n = \tanh(x W_n^\top + b_n + r \odot \hat a_n),\ \hat a_n = h U_n^\top + c_n,\ "
              r"h' = (1 - z) \odot n + z \odot h,\ L = \langle G, h' \rangle\ (\text{bias\_ih} = [b_r; b_z; b_n],"
              r"\ \text{bias\_hh} = [c_r; c_z; c_n])")


def _gru_cell_grad(env, index):
    """ops.gru_cell's hand-written backward, the gates stacked as PyTorch's (r, z, n)."""
    W, U = (np.concatenate([env[f"{m}{k}"] for k in "rzn"]) for m in "WU")
    b, c = (np.concatenate([env[f"{m}{k}"] for k in "rzn"]) for m in "bc")
    _, saved = ops.gru_cell.forward(env["X"], env["H"], W, U, b, c)
    return ops.gru_cell.backward(saved, env["G"])[index]


_RNN = [
    Derivation(
        "rnn_tanh", "backpropagation through time: dL/dh_0, a sum over paths computed as one backward loop",
        _RNN_L, [
            Step(r"\frac{\partial L}{\partial h_0} = \sum_t G_t \frac{\partial h_t}{\partial h_0} = "
                 r"\sum_t G_t J_t J_{t-1} \cdots J_1,\quad g J_s = \bigl(g \odot (1 - h_s^2)\bigr) W_{hh}",
                 "(G1 * (1 - h1**2)) @ Whh + ((G2 * (1 - h2**2)) @ Whh * (1 - h1**2)) @ Whh"
                 " + (((G3 * (1 - h3**2)) @ Whh * (1 - h2**2)) @ Whh * (1 - h1**2)) @ Whh",
                 "h_0 reaches L through every output h_t, along the chain h_0 -> h_1 -> ... -> h_t; each link "
                 "h_{s-1} -> h_s is the Jacobian J_s of tanh(... + h W_hh^T): a row gradient g becomes "
                 "(g * (1 - h_s^2)) W_hh. The paths add (a fork is a sum); path t is a product of t Jacobians, "
                 "which vanishes or explodes with t as the J_s are small or large"),
            Step(r"= \Bigl(G_1 + \bigl(G_2 + G_3 J_3\bigr) J_2\Bigr) J_1",
                 "((G1 + ((G2 + (G3 * (1 - h3**2)) @ Whh) * (1 - h2**2)) @ Whh) * (1 - h1**2)) @ Whh",
                 "factor J_1 out of every term, then J_2 (Horner's rule). Read from the inside out, it is a "
                 "loop from t = T down to 1: g_{h_t} = G_t + g_{h_{t+1}} J_{t+1}, one product with W_hh per "
                 "step instead of T (T + 1) / 2: backpropagation through time"),
            Step(r"= d_1 W_{hh},\quad d_T = G_T \odot (1 - h_T^2),\ d_t = (G_t + d_{t+1} W_{hh}) \odot (1 - h_t^2)",
                 "d1 @ Whh",
                 "name d_t = g_{a_t} the gradient of step t's pre-activation a_t (the parentheses of the "
                 "last line): the op's backward loop, line for line"),
        ],
        wrt="H0", shapes=_RNN_SHAPES, let=_RNN_LET, setup=_RNN_SETUP,
        code=lambda env: _rnn_layer_grad(env, 1)),
    Derivation(
        "rnn_tanh", "backpropagation through time: dL/dW_hh, the sum of every step's use of the weight",
        _RNN_L, [
            Step(r"\frac{\partial L}{\partial W_{hh}} = \sum_t d_t^\top h_{t-1}",
                 "d1.T @ H0 + d2.T @ h1 + d3.T @ h2",
                 "W_hh is used at every step, a_t = ... + h_{t-1} W_hh^T: its gradient is the sum of each "
                 "use's, d_t^T h_{t-1} (the linear layer's x^T g, for PyTorch's (out, in) layout), with d_t "
                 "the total gradient of a_t through time (the previous derivation)"),
            Step(r"= D^\top S,\quad D = [d_1; \dots; d_T],\ S = [h_0; \dots; h_{T-1}]\ ((TN) \times H)",
                 "einsum('tnk,tnj->kj', stack(d1, d2, d3), stack(H0, h1, h2))",
                 "the sum over the steps and the batch is one matrix product of the stacked d_t and h_{t-1}: "
                 "the op keeps every h_t, and computes this once, after the backward loop"),
        ],
        wrt="Whh", shapes=_RNN_SHAPES, let=_RNN_LET, setup=_RNN_SETUP,
        code=lambda env: _rnn_layer_grad(env, 3)),
    Derivation(
        "rnn_tanh", "backpropagation through time: dL/dW_ih, one product after the loop", _RNN_L, [
            Step(r"\frac{\partial L}{\partial W_{ih}} = \sum_t d_t^\top x_t",
                 "d1.T @ X1 + d2.T @ X2 + d3.T @ X3",
                 "W_ih is used at every step too, a_t = x_t W_ih^T + ...; each use gives d_t^T x_t"),
            Step(r"= D^\top X,\quad X = [x_1; \dots; x_T]", "einsum('tnk,tni->ki', stack(d1, d2, d3), stack(X1, X2, X3))",
                 "one matrix product over all steps: the input projection x_t W_ih^T was one product before "
                 "the loop, and its gradients (dL/dW_ih and dL/dx = D W_ih) are one product each after it"),
        ],
        wrt="Wih", shapes=_RNN_SHAPES, let=_RNN_LET, setup=_RNN_SETUP,
        code=lambda env: _rnn_layer_grad(env, 2)),
    Derivation(
        "lstm_cell", "the LSTM's memory: dL/dc passes back through the forget gate alone", _LSTM_L, [
            Step(r"\frac{\partial L}{\partial c} = G_c \odot \frac{\partial c'}{\partial c} + G_h \odot "
                 r"\frac{\partial h'}{\partial c'} \odot \frac{\partial c'}{\partial c} = G_c \odot f + "
                 r"G_h \odot o \odot (1 - \tanh^2 c') \odot f",
                 "Gc * f + Gh * o * (1 - tanh(c2)**2) * f",
                 "the gates read x and h, not c: c reaches L only through c' = f c + i g (dc'/dc = f, "
                 "elementwise), and c' reaches L twice, directly (G_c, the next step's memory) and through "
                 "h' = o tanh(c')"),
            Step(r"= g_{c'} \odot f,\quad g_{c'} = G_c + G_h \odot o \odot (1 - \tanh^2 c')",
                 "(Gc + Gh * o * (1 - tanh(c2)**2)) * f",
                 "through time the memory's gradient is multiplied by the forget gate only: no weight matrix, "
                 "no squashing derivative (the RNN multiplies by W_hh diag(1 - h^2) at every step). Where "
                 "f is near 1 it survives many steps: the constant error carousel"),
        ],
        wrt="C", shapes=_LSTM_SHAPES, let=_LSTM_LET, setup=_LSTM_SETUP,
        code=lambda env: _lstm_cell_grad(env, 2)),
    Derivation(
        "lstm_cell", "the LSTM's gates: dL/dx through i, f, g and o, one product with weight_ih", _LSTM_L, [
            Step(r"\frac{\partial L}{\partial x} = \sum_{k \in \{i,f,g,o\}} g_{a_k} W_k,\quad "
                 r"g_{a_i} = g_{c'} g\, i (1 - i),\ g_{a_f} = g_{c'} c\, f (1 - f),\ g_{a_g} = g_{c'} i\, (1 - g^2),"
                 r"\ g_{a_o} = G_h \tanh(c')\, o (1 - o)",
                 "(gc2 * g * i * (1 - i)) @ Wi + (gc2 * C * f * (1 - f)) @ Wf + (gc2 * i * (1 - g**2)) @ Wg"
                 " + (Gh * tanh(c2) * o * (1 - o)) @ Wo",
                 "x enters all four gates and the paths add. c' = f c + i g gives g_i = g_{c'} g, g_f = "
                 "g_{c'} c, g_g = g_{c'} i; h' = o tanh c' gives g_o = G_h tanh c'. Each gate through its "
                 "nonlinearity, differentiated from its output (sigma' = sigma (1 - sigma), tanh' = 1 - tanh^2), "
                 "then through a_k = x W_k^T + ...: g_a W_k"),
            Step(r"= [g_{a_i}, g_{a_f}, g_{a_g}, g_{a_o}]\, \text{weight\_ih}",
                 "concat(gc2 * g * i * (1 - i), gc2 * C * f * (1 - f), gc2 * i * (1 - g**2),"
                 " Gh * tanh(c2) * o * (1 - o)) @ concat(Wi.T, Wf.T, Wg.T, Wo.T).T",
                 "stacked as PyTorch stacks them (i, f, g, o): g_a (N, 4H) and weight_ih = [W_i; W_f; W_g; "
                 "W_o] (4H, I) make the four products one; dL/dh = g_a weight_hh the same way, and dL/dweight_ih "
                 "= g_a^T x"),
        ],
        wrt="X", shapes=_LSTM_SHAPES, let=_LSTM_LET, setup=_LSTM_SETUP,
        code=lambda env: _lstm_cell_grad(env, 0)),
    Derivation(
        "gru_cell", "the GRU's gates: dL/dh, four paths (direct, z, n through the reset gate, r)", "sum(G * h2)", [
            Step(r"\frac{\partial L}{\partial h} = G \odot z + \bigl(G (h - n) z (1 - z)\bigr) U_z + "
                 r"(g_{a_n} \odot r) U_n + \bigl(g_{a_n} \hat a_n\, r (1 - r)\bigr) U_r,\quad "
                 r"g_{a_n} = G (1 - z)(1 - n^2)",
                 "G * z + (G * (H - n) * z * (1 - z)) @ Uz + (gan * r) @ Un + (gan * hn * r * (1 - r)) @ Ur",
                 "h reaches h' = (1 - z) n + z h four ways: directly (dh'/dh = z); through z (dh'/dz = h - n); "
                 "through n (dh'/dn = 1 - z, tanh' = 1 - n^2), where h enters as r * (h U_n^T + c_n), so the "
                 "reset gate scales that path; and through r (dn/dr = (1 - n^2) (h U_n^T + c_n)). The paths add"),
            Step(r"= G \odot z + [g_{a_r}, g_{a_z}, g_{a_n} \odot r]\, \text{weight\_hh}",
                 "G * z + concat(gan * hn * r * (1 - r), G * (H - n) * z * (1 - z), gan * r)"
                 " @ concat(Ur.T, Uz.T, Un.T).T",
                 "stacked as PyTorch's weight_hh (r, z, n): one product, plus the direct path z G. The n block "
                 "is g_{a_n} r, not g_{a_n}: on the input side (dL/dx = [g_{a_r}, g_{a_z}, g_{a_n}] weight_ih) "
                 "the reset gate is not in the way"),
        ],
        wrt="H", shapes=_GRU_SHAPES, let=_GRU_LET, setup=_GRU_SETUP,
        code=lambda env: _gru_cell_grad(env, 1)),
    Derivation(
        "gru_cell", "why the GRU keeps two biases for n: dL/db_hn = r times dL/db_in", "sum(G * h2)", [
            Step(r"\frac{\partial L}{\partial c_n} = \textstyle\sum_{\text{batch}} g_{a_n} \odot r",
                 "sum(gan * r, 0)",
                 "c_n (bias_hh's n block) sits inside r * (h U_n^T + c_n), b_n (bias_ih's) outside it: "
                 "dL/db_n = sum of g_{a_n}, dL/dc_n = sum of g_{a_n} r. They differ wherever r < 1, so the two "
                 "cannot be merged into one bias, as the LSTM's (and the r, z blocks') can"),
        ],
        wrt="cn", shapes=_GRU_SHAPES, let=_GRU_LET, setup=_GRU_SETUP,
        code=lambda env: _gru_cell_grad(env, 5)[4:]),
]


_CELL_SHAPES = {"X": (2, 3), "H": (2, 3), "Wih": (3, 3), "Whh": (3, 3), "b": (3,), "G": (2, 3)}


def _rnn_cell_grad(name, env):
    """The cell op's hand-written backward dL/dh (bias as bias_ih, no bias_hh)."""
    op = ops.get(name)
    _, saved = op.forward(env["X"], env["H"], env["Wih"], env["Whh"], env["b"], None)
    return op.backward(saved, env["G"])[1]


def _rnn_cell_derivation(name, phi, dphi, dtex, why):
    return Derivation(
        name, f"one {phi} RNN step: dL/dh", "sum(G * h2)", [
            Step(r"\frac{\partial L}{\partial h} = \bigl(G \odot " + dtex + r"\bigr) W_{hh}",
                 f"(G * {dphi}) @ Whh", why),
        ],
        wrt="H", shapes=_CELL_SHAPES, let=[f"h2 = {phi}(X @ Wih.T + H @ Whh.T + b)"],
        setup=r"h' = \phi(x W_{ih}^\top + h W_{hh}^\top + b),\ L = \langle G, h' \rangle,\ x, h: (2, 3)",
        code=lambda env: _rnn_cell_grad(name, env))


_RELU_SHAPES = {k: v for k, v in _RNN_SHAPES.items() if k not in ("X3", "G3")}
_RELU_LET = ["h1 = relu(X1 @ Wih.T + H0 @ Whh.T + b)", "h2 = relu(X2 @ Wih.T + h1 @ Whh.T + b)"]


def _relu_layer_grad(env):
    x = np.stack([env["X1"], env["X2"]])
    _, saved = ops.rnn_relu.forward(x, env["H0"], env["Wih"], env["Whh"], env["b"], None)
    return ops.rnn_relu.backward(saved, np.stack([env["G1"], env["G2"]]), None)[1]


_LSTM2_SHAPES = {"X1": (2, 3), "X2": (2, 3), "H": (2, 2), "C": (2, 2), "Gh": (2, 2), "Gc": (2, 2),
                 **{k: v for k, v in _LSTM_SHAPES.items() if k[0] in "WUb"}}
_LSTM2_LET = [line for t, (x, h, c) in ((1, ("X1", "H", "C")), (2, ("X2", "h1", "c1"))) for line in (
    f"i{t} = sigmoid({x} @ Wi.T + {h} @ Ui.T + bi)", f"f{t} = sigmoid({x} @ Wf.T + {h} @ Uf.T + bf)",
    f"g{t} = tanh({x} @ Wg.T + {h} @ Ug.T + bg)", f"o{t} = sigmoid({x} @ Wo.T + {h} @ Uo.T + bo)",
    f"c{t} = f{t} * {c} + i{t} * g{t}", f"h{t} = o{t} * tanh(c{t})")] + [
    "gc2 = Gc + Gh * o2 * (1 - tanh(c2)**2)", "U = concat(Ui.T, Uf.T, Ug.T, Uo.T).T",
    "ga2 = concat(gc2 * g2 * i2 * (1 - i2), gc2 * c1 * f2 * (1 - f2), gc2 * i2 * (1 - g2**2),"
    " Gh * tanh(c2) * o2 * (1 - o2))",
    "gc1 = gc2 * f2 + (ga2 @ U) * o1 * (1 - tanh(c1)**2)"]


def _lstm_layer_grad(env):
    W, U, b = (np.concatenate([env[f"{m}{k}"] for k in "ifgo"]) for m in "WUb")
    _, saved = ops.lstm.forward(np.stack([env["X1"], env["X2"]]), env["H"], env["C"], W, U, b, None)
    return ops.lstm.backward(saved, None, env["Gh"], env["Gc"])[2]


_GRU2_SHAPES = {"X1": (2, 3), "X2": (2, 3), "H0": (2, 2), "G": (2, 2),
                **{k: v for k, v in _GRU_SHAPES.items() if k[0] in "WUbc"}}
_GRU2_LET = [line for t, (x, h) in ((1, ("X1", "H0")), (2, ("X2", "h1"))) for line in (
    f"r{t} = sigmoid({x} @ Wr.T + br + {h} @ Ur.T + cr)", f"z{t} = sigmoid({x} @ Wz.T + bz + {h} @ Uz.T + cz)",
    f"hn{t} = {h} @ Un.T + cn", f"n{t} = tanh({x} @ Wn.T + bn + r{t} * hn{t})",
    f"h{t} = (1 - z{t}) * n{t} + z{t} * {h}")] + [
    "U = concat(Ur.T, Uz.T, Un.T).T",
    "gan2 = G * (1 - z2) * (1 - n2**2)",
    "gh1 = G * z2 + concat(gan2 * hn2 * r2 * (1 - r2), G * (h1 - n2) * z2 * (1 - z2), gan2 * r2) @ U",
    "gan1 = gh1 * (1 - z1) * (1 - n1**2)"]


def _gru_layer_grad(env):
    W, U, b, c = (np.concatenate([env[f"{m}{k}"] for k in "rzn"]) for m in "WUbc")
    _, saved = ops.gru.forward(np.stack([env["X1"], env["X2"]]), env["H0"], W, U, b, c)
    return ops.gru.backward(saved, None, env["G"])[1]


_RNN += [
    _rnn_cell_derivation(
        "rnn_tanh_cell", "tanh", "(1 - h2**2)", r"(1 - h'^2)",
        "h' = tanh(a), a = x W_ih^T + h W_hh^T + b: tanh' = 1 - tanh^2, taken from the output h'; "
        "then a = ... + h W_hh^T gives g_h = g_a W_hh (PyTorch's (out, in) layout: no transpose)"),
    _rnn_cell_derivation(
        "rnn_relu_cell", "relu", "(h2 > 0)", r"[h' > 0]",
        "ReLU' is 1 where the output is positive and 0 elsewhere (0 at the kink, as PyTorch): the "
        "gradient passes the active units only, then g_h = g_a W_hh"),
    Derivation(
        "rnn_relu", "backpropagation through time with ReLU: masks instead of squashing",
        "sum(G1 * h1) + sum(G2 * h2)", [
            Step(r"\frac{\partial L}{\partial h_0} = (G_1 \odot m_1) W_{hh} + "
                 r"\bigl(((G_2 \odot m_2) W_{hh}) \odot m_1\bigr) W_{hh},\quad m_t = [h_t > 0]",
                 "(G1 * (h1 > 0)) @ Whh + ((G2 * (h2 > 0)) @ Whh * (h1 > 0)) @ Whh",
                 "the paths h_0 -> h_1 -> L and h_0 -> h_1 -> h_2 -> L; each link is ReLU's 0/1 mask m_t, "
                 "then W_hh: a gradient is never squashed, only cut (inactive units) or multiplied by "
                 "W_hh, so over many steps it explodes when W_hh's gain on the active units exceeds 1"),
            Step(r"= \bigl((G_1 + (G_2 \odot m_2) W_{hh}) \odot m_1\bigr) W_{hh}",
                 "((G1 + (G2 * (h2 > 0)) @ Whh) * (h1 > 0)) @ Whh",
                 "Horner's rule, as for tanh: the backward loop g_{h_t} = G_t + ((g_{h_{t+1}} m_{t+1}) W_hh)"),
        ],
        wrt="H0", shapes=_RELU_SHAPES, let=_RELU_LET,
        setup=r"h_t = \mathrm{ReLU}(x_t W_{ih}^\top + h_{t-1} W_{hh}^\top + b),\ t = 1, 2,\ "
              r"L = \langle G_1, h_1 \rangle + \langle G_2, h_2 \rangle",
        code=_relu_layer_grad),
    Derivation(
        "lstm", "backpropagation through time in the LSTM: dL/dc_0 over two steps", "sum(Gh * h2) + sum(Gc * c2)", [
            Step(r"\frac{\partial L}{\partial c_0} = \Bigl(g_{c_2} \odot f_2 + (g_{a_2} W_{hh}) \odot o_1 "
                 r"\odot (1 - \tanh^2 c_1)\Bigr) \odot f_1",
                 "(gc2 * f2 + (ga2 @ U) * o1 * (1 - tanh(c1)**2)) * f1",
                 "c_0 reaches L only through c_1 = f_1 c_0 + i_1 g_1 (times f_1). c_1 reaches L twice: through "
                 "c_2 = f_2 c_1 + ... (the memory path, times f_2) and through h_1 = o_1 tanh c_1, which feeds "
                 "all four gates of step 2: g_{h_1} = g_{a_2} weight_hh, with g_{a_2} the gates' gradient of "
                 "the cell derivation (g_{c_2} = G_c + G_h o_2 (1 - tanh^2 c_2))"),
            Step(r"= g_{c_1} \odot f_1,\quad g_{c_{t-1}} = g_{c_t} \odot f_t,\ "
                 r"g_{c_t} = g_{c_{t+1}} \odot f_{t+1} + g_{h_t} \odot o_t \odot (1 - \tanh^2 c_t)",
                 "gc1 * f1",
                 "the recursion the op's backward loop runs from t = T down to 1: the memory's gradient is "
                 "carried by the forget gates, and every step adds what reaches c_t through h_t"),
        ],
        wrt="C", shapes=_LSTM2_SHAPES, let=_LSTM2_LET,
        setup=r"\text{the LSTM cell at } t = 1, 2 \text{ from } (h_0, c_0),\ L = \langle G_h, h_2 \rangle + "
              r"\langle G_c, c_2 \rangle\ (\text{the final states' gradients})",
        code=_lstm_layer_grad),
    Derivation(
        "gru", "backpropagation through time in the GRU: dL/dh_0 over two steps", "sum(G * h2)", [
            Step(r"\frac{\partial L}{\partial h_0} = g_{h_1} \odot z_1 + [g_{a_{r,1}}, g_{a_{z,1}}, g_{a_{n,1}} "
                 r"\odot r_1]\, \text{weight\_hh},\quad g_{h_1} = G \odot z_2 + [g_{a_{r,2}}, g_{a_{z,2}}, "
                 r"g_{a_{n,2}} \odot r_2]\, \text{weight\_hh}",
                 "gh1 * z1 + concat(gan1 * hn1 * r1 * (1 - r1), gh1 * (H0 - n1) * z1 * (1 - z1), gan1 * r1) @ U",
                 "the cell's rule for dL/dh (the gru_cell derivation) applied at step 2 gives g_{h_1}, and "
                 "again at step 1, with g_{h_1} as the upstream gradient, gives g_{h_0}: the direct path z "
                 "G carries the gradient back unsquashed where z is near 1, as the LSTM's forget gate does"),
        ],
        wrt="H0", shapes=_GRU2_SHAPES, let=_GRU2_LET,
        setup=r"\text{the GRU cell at } t = 1, 2 \text{ from } h_0,\ L = \langle G, h_2 \rangle",
        code=_gru_layer_grad),
]


# -- the rest of torch.nn's losses (issue 21): arrays, checked against central differences --------

_Y2H = _onehot((1, 0, 3, 2), 4)                # each row's second label (the first: _onehot((0, 2, 1, 0), 4))
_COSINE_LET = ["aa = einsum('nd,nd->n', A, A) + 0.000000000001", "bb = einsum('nd,nd->n', B, B) + 0.000000000001",
               "r = 1 / sqrt(aa * bb)", "c = einsum('nd,nd->n', A, B) * r"]
_MLM_LET = ["C = 4", "N = 4", f"Y1 = {_onehot((0, 2, 1, 0), 4)}", f"Y2 = {_Y2H}", "M = 1 - Y1 - Y2",
            "H1 = 1 - einsum('nc,nc->n', X, Y1) + X.T", "H2 = 1 - einsum('nc,nc->n', X, Y2) + X.T",
            "A1 = (where(H1 > 0, 1, 0) * M.T).T / (C * N)", "A2 = (where(H2 > 0, 1, 0) * M.T).T / (C * N)"]

_LOSSES = [
    Derivation(
        "smooth_l1_loss", "the gradient of the smooth L1 loss (beta = 0.5)",
        "mean(where(abs(yhat - y) < 0.5, (yhat - y)**2 / (2 * 0.5), abs(yhat - y) - 0.25))", [
            Step(r"\frac{\partial L}{\partial \hat y_i} = \frac{1}{n} \begin{cases} d_i / \beta & |d_i| < \beta \\ \mathrm{sign}(d_i) & |d_i| \ge \beta \end{cases}",
                 "where(abs(d) < 0.5, d / 0.5, sign(d)) / n",
                 "the quadratic piece d^2 / (2 beta) has derivative d / beta, the linear piece |d| - beta/2 "
                 "has sign(d); at |d| = beta both are sign(d): continuously differentiable"),
            Step(r"= \frac{1}{n}\,\mathrm{clip}(d_i / \beta, -1, 1)", "max(-1, min(1, d / 0.5)) / n",
                 "as a clip: Huber's gradient divided by beta"),
        ],
        wrt="yhat", shapes={"yhat": (4, 3), "y": (4, 3)}, let=["n = 12", "d = yhat - y"],
        setup=r"L = \frac{1}{n} \sum_i \begin{cases} d_i^2 / (2\beta) & |d_i| < \beta \\ |d_i| - \beta/2 & \text{otherwise} \end{cases},\ d = \hat y - y,\ \beta = 0.5",
        code=lambda env: _backward(ops.smooth_l1_loss, env["yhat"], env["y"], gy=1.0, beta=0.5)),
    Derivation(
        "soft_margin_loss", "the gradient of the soft margin loss", "mean(log(1 + exp(-Y * X)))", [
            Step(r"\frac{\partial L}{\partial x_i} = \frac{1}{n}\,\frac{-y_i\,e^{-y_i x_i}}{1 + e^{-y_i x_i}}",
                 "-Y * exp(-Y * X) / (1 + exp(-Y * X)) / n", "(log u)' = u'/u with u = 1 + e^{-y x}, u' = -y e^{-y x}"),
            Step(r"= -\frac{y_i}{n}\,\sigma(-y_i x_i)", "-Y * sigmoid(-Y * X) / n",
                 "e^z / (1 + e^z) = sigma(z) with z = -y x; backward evaluates it without overflow"),
        ],
        wrt="X", shapes={"X": (4, 3), "Y": (4, 3)}, let=["n = 12"],
        setup=r"L = \frac{1}{n} \sum_i \log\bigl(1 + e^{-y_i x_i}\bigr)",
        code=lambda env: _backward(ops.soft_margin_loss, env["X"], env["Y"], gy=1.0)),
    Derivation(
        "kl_div", "the gradient of the KL divergence (reduction batchmean)", "sum(T * (log(T) - X)) / N", [
            Step(r"\frac{\partial L}{\partial x_{n,c}} = -\frac{t_{n,c}}{N}", "-T / N",
                 "t log t does not depend on the input x = log q; -t x has derivative -t; batchmean divides "
                 "by the batch size N = 4, not by all 12 entries"),
        ],
        wrt="X", shapes={"X": (4, 3), "T": (4, 3)}, let=["N = 4"], positive=True,
        setup=r"L = \frac{1}{N} \sum_{n,c} t_{n,c} \bigl(\log t_{n,c} - x_{n,c}\bigr),\ x = \log q",
        code=lambda env: _backward(ops.kl_div, env["X"], env["T"], gy=1.0, reduction="batchmean")),
    Derivation(
        "poisson_nll_loss", "the gradient of the Poisson negative log-likelihood (log input)",
        "mean(exp(X) - T * X)", [
            Step(r"\frac{\partial L}{\partial x_i} = \frac{1}{n}\bigl(e^{x_i} - t_i\bigr)", "(exp(X) - T) / n",
                 "the rate is e^x, so -log p(t) = e^x - t x + log t!; the last term has no x"),
        ],
        wrt="X", shapes={"X": (4, 3), "T": (4, 3)}, let=["n = 12"],
        setup=r"L = \frac{1}{n} \sum_i e^{x_i} - t_i x_i\quad(\text{log\_input: } x = \log \lambda)",
        code=lambda env: _backward(ops.poisson_nll_loss, env["X"], env["T"], gy=1.0)),
    Derivation(
        "poisson_nll_loss", "the gradient of the Poisson negative log-likelihood (the rate as input)",
        "mean(X - T * log(X + 0.00000001))", [
            Step(r"\frac{\partial L}{\partial x_i} = \frac{1}{n}\Bigl(1 - \frac{t_i}{x_i + \epsilon}\Bigr)",
                 "(1 - T / (X + 0.00000001)) / n", "(log(x + eps))' = 1/(x + eps)"),
        ],
        wrt="X", shapes={"X": (4, 3), "T": (4, 3)}, let=["n = 12"], positive=True,
        setup=r"L = \frac{1}{n} \sum_i x_i - t_i \log(x_i + \epsilon),\ \epsilon = 10^{-8}\quad(\text{log\_input=False})",
        code=lambda env: _backward(ops.poisson_nll_loss, env["X"], env["T"], gy=1.0, log_input=False)),
    Derivation(
        "gaussian_nll_loss", "the Gaussian negative log-likelihood: dL/dinput",
        "mean(0.5 * (log(V) + (X - T)**2 / V))", [
            Step(r"\frac{\partial L}{\partial x_i} = \frac{1}{n}\,\frac{x_i - t_i}{v_i}", "(X - T) / V / n",
                 "log v has no x; (x - t)^2 / (2 v) has derivative (x - t) / v"),
        ],
        wrt="X", shapes={"X": (4, 3), "T": (4, 3), "V": (4, 3)}, let=["n = 12"], positive=True,
        setup=r"L = \frac{1}{n} \sum_i \tfrac12\Bigl(\log v_i + \frac{(x_i - t_i)^2}{v_i}\Bigr)",
        code=lambda env: _backward(ops.gaussian_nll_loss, env["X"], env["T"], env["V"], gy=1.0)),
    Derivation(
        "gaussian_nll_loss", "the Gaussian negative log-likelihood: dL/dvar",
        "mean(0.5 * (log(V) + (X - T)**2 / V))", [
            Step(r"\frac{\partial L}{\partial v_i} = \frac{1}{2n}\Bigl(\frac{1}{v_i} - \frac{(x_i - t_i)^2}{v_i^2}\Bigr)",
                 "0.5 * (1 / V - (X - T)**2 / V**2) / n", "(log v)' = 1/v and (1/v)' = -1/v^2"),
            Step(r"= \frac{v_i - (x_i - t_i)^2}{2 n v_i^2}", "(V - (X - T)**2) / (2 * n * V**2)",
                 "over the common denominator: zero where the variance equals the squared error. A var "
                 "broadcast over a dim (one variance per row) gets the sum of these along it"),
        ],
        wrt="V", shapes={"X": (4, 3), "T": (4, 3), "V": (4, 3)}, let=["n = 12"], positive=True,
        setup=r"L = \frac{1}{n} \sum_i \tfrac12\Bigl(\log v_i + \frac{(x_i - t_i)^2}{v_i}\Bigr)",
        code=lambda env: _backward(ops.gaussian_nll_loss, env["X"], env["T"], env["V"], gy=1.0, index=2)),
    Derivation(
        "margin_ranking_loss", "the gradient of the margin ranking loss (margin 0.5): dL/dx1",
        "mean(max(0, 0.5 - Y * (A - B)))", [
            Step(r"\frac{\partial L}{\partial x^{(1)}_i} = -\frac{y_i}{n}\,[h_i \ge 0],\quad h_i = m - y_i (x^{(1)}_i - x^{(2)}_i)",
                 "-Y * where(0.5 - Y * (A - B) >= 0, 1, 0) / n",
                 "max(0, h) has slope 1 where h > 0 and 0 where h < 0 (at h = 0 the convention is 1, as "
                 "PyTorch's clamp_min); dh/dx1 = -y. dL/dx2 is its negative"),
        ],
        wrt="A", shapes={"A": (6,), "B": (6,), "Y": (6,)}, let=["n = 6"],
        setup=r"L = \frac{1}{n} \sum_i \max\bigl(0,\ m - y_i (x^{(1)}_i - x^{(2)}_i)\bigr),\ m = 0.5",
        code=lambda env: _backward(ops.margin_ranking_loss, env["A"], env["B"], env["Y"], gy=1.0, margin=0.5)),
    Derivation(
        "hinge_embedding_loss", "the gradient of the hinge embedding loss (margin 1)",
        "mean((1 + Y) / 2 * X + (1 - Y) / 2 * max(0, 1 - X))", [
            Step(r"\frac{\partial L}{\partial x_i} = \frac{1}{n}\Bigl(\tfrac{1 + y_i}{2} - \tfrac{1 - y_i}{2}\,[1 - x_i \ge 0]\Bigr)",
                 "((1 + Y) / 2 - (1 - Y) / 2 * where(1 - X >= 0, 1, 0)) / n",
                 "(1 + y)/2 and (1 - y)/2 select the branch of y = 1 and y = -1; x has slope 1, max(0, m - x) "
                 "slope -1 where m - x > 0 (at m - x = 0 the convention is -1, as PyTorch's clamp_min)"),
        ],
        wrt="X", shapes={"X": (4, 3)}, let=["n = 12", f"Y = 2 * {_Y1H} - 1"],
        setup=r"L = \frac{1}{n} \sum_i \begin{cases} x_i & y_i = 1 \\ \max(0, m - x_i) & y_i = -1 \end{cases},\ m = 1",
        code=lambda env: _backward(ops.hinge_embedding_loss, env["X"], env["Y"], gy=1.0)),
    Derivation(
        "cosine_embedding_loss", "the gradient of the cosine embedding loss (similar pairs): dL/dx1",
        "mean(1 - c)", [
            Step(r"\frac{\partial L}{\partial a_n} = -\frac{1}{N}\Bigl(\frac{b_n}{\sqrt{\alpha_n \beta_n}} - "
                 r"\frac{\langle a_n, b_n\rangle\, a_n}{\sqrt{\alpha_n \beta_n}\,\alpha_n}\Bigr)",
                 "-(B.T / sqrt(aa * bb) - einsum('nd,nd->n', A, B) * A.T / (sqrt(aa * bb) * aa)).T / N",
                 "the quotient rule on c = <a, b> (alpha beta)^{-1/2}: d<a, b>/da = b and "
                 "d alpha^{-1/2}/da = -alpha^{-3/2} a, since alpha = |a|^2 + eps has derivative 2a"),
            Step(r"= -\frac{1}{N}\Bigl(\frac{b_n}{\sqrt{\alpha_n \beta_n}} - c_n\,\frac{a_n}{\alpha_n}\Bigr)",
                 "-(B.T * r - c * A.T / aa).T / N",
                 "with c_n itself: backward keeps c and 1/sqrt(alpha beta) from the forward pass. For "
                 "y = -1 the factor is [c - m >= 0] instead of -1"),
        ],
        wrt="A", shapes={"A": (4, 3), "B": (4, 3)}, let=["N = 4"] + _COSINE_LET,
        setup=r"L = \frac{1}{N} \sum_n 1 - c_n,\ c_n = \frac{\langle a_n, b_n\rangle}{\sqrt{\alpha_n \beta_n}},\ "
              r"\alpha_n = \|a_n\|^2 + \epsilon,\ \beta_n = \|b_n\|^2 + \epsilon\ (y_n = 1)",
        code=lambda env: _backward(ops.cosine_embedding_loss, env["A"], env["B"], np.ones(4), gy=1.0)),
    Derivation(
        "multilabel_soft_margin_loss", "the gradient of the multi-label soft margin loss",
        "sum(Y * log(1 + exp(-X)) + (1 - Y) * log(1 + exp(X))) / (N * C)", [
            Step(r"\frac{\partial L}{\partial x_{n,c}} = \frac{1}{NC}\Bigl(-y_{n,c}\frac{e^{-x}}{1 + e^{-x}} + (1 - y_{n,c})\frac{e^{x}}{1 + e^{x}}\Bigr)",
                 "(-Y * exp(-X) / (1 + exp(-X)) + (1 - Y) * exp(X) / (1 + exp(X))) / (N * C)",
                 "-log sigma(x) = log(1 + e^{-x}) and -log sigma(-x) = log(1 + e^x), each (log u)' = u'/u"),
            Step(r"= \frac{1}{NC}\bigl(-y_{n,c}(1 - \sigma(x_{n,c})) + (1 - y_{n,c})\,\sigma(x_{n,c})\bigr)",
                 "(-Y * (1 - sigmoid(X)) + (1 - Y) * sigmoid(X)) / (N * C)",
                 "e^{-x}/(1 + e^{-x}) = 1 - sigma(x) and e^x/(1 + e^x) = sigma(x)"),
            Step(r"= \frac{1}{NC}\bigl(\sigma(x_{n,c}) - y_{n,c}\bigr)", "(sigmoid(X) - Y) / (N * C)",
                 "the y sigma terms cancel: binary cross-entropy's p - y, per class, averaged over the C classes"),
        ],
        wrt="X", shapes={"X": (4, 3), "Y": (4, 3)}, let=["N = 4", "C = 3"],
        setup=r"L = \frac{1}{N} \sum_n \frac{1}{C} \sum_c -y_{n,c} \log\sigma(x_{n,c}) - (1 - y_{n,c}) \log\sigma(-x_{n,c})",
        code=lambda env: _backward(ops.multilabel_soft_margin_loss, env["X"], env["Y"], gy=1.0)),
    Derivation(
        "multilabel_margin_loss", "the gradient of the multi-label hinge loss (two labels per sample)",
        "sum(max(0, H1) * M.T + max(0, H2) * M.T) / (C * N)", [
            Step(r"\frac{\partial L}{\partial x_{n,i}} = \sum_{j \in Y_n} \frac{[h_{n,j,i} > 0]}{C N}\ (i \notin Y_n),\quad"
                 r"\frac{\partial L}{\partial x_{n,j}} = -\sum_{i \notin Y_n} \frac{[h_{n,j,i} > 0]}{C N}\ (j \in Y_n)",
                 "A1 + A2 - (Y1.T * einsum('nc->n', A1)).T - (Y2.T * einsum('nc->n', A2)).T",
                 "each hinge h_{n,j,i} = 1 - x_{n,j} + x_{n,i} (j a label, i not) enters where it is positive: "
                 "+1 for x_{n,i}, -1 for x_{n,j}; A_k holds the first part for the k-th label, and that "
                 "label's entry collects minus its row sum (at h = 0 the convention is 0, as PyTorch)"),
        ],
        wrt="X", shapes={"X": (4, 4)}, let=_MLM_LET,
        setup=(r"L = \frac{1}{N} \sum_n \frac{1}{C} \sum_{j \in Y_n} \sum_{i \notin Y_n} \max(0, h_{n,j,i}),\ "
               r"h_{n,j,i} = 1 - x_{n,j} + x_{n,i},\ Y_n = \{y^{(1)}_n, y^{(2)}_n\}"),
        code=lambda env: _backward(ops.multilabel_margin_loss, env["X"],
                                   np.array([[0, 1, -1, -1], [2, 0, -1, 3], [1, 3, -1, -1], [0, 2, -1, -1]]),
                                   gy=1.0)),
]


_SOFTMAXES = [
    Derivation(
        "softmin", "the gradient of softmin: softmax's, through -x", "sum(G * exp(-o) / sum(exp(-o)))", [
            Step(r"\frac{\partial L}{\partial o_j} = -\sum_i g_i\,p_i(\delta_{ij} - p_j)",
                 "-(G * p - p * sum(G * p))",
                 "softmin(o) = softmax(z) at z = -o: softmax's Jacobian p_i (delta_ij - p_j), times dz/do = -1"),
            Step(r"= p_j\Bigl(\sum_i g_i p_i - g_j\Bigr)", "p * (sum(G * p) - G)",
                 "softmax's vector-Jacobian product with the sign turned: O(n), no Jacobian built"),
        ],
        wrt="o", shapes={"o": (5,), "G": (5,)}, let=["p = exp(-o) / sum(exp(-o))"],
        setup=r"p_i = \mathrm{softmin}(o)_i = \frac{e^{-o_i}}{\sum_k e^{-o_k}},\quad G = \partial L/\partial p",
        code=lambda env: _backward(ops.softmin, env["o"], gy=env["G"])),
    Derivation(
        "softmax2d", "the gradient of Softmax2d: softmax's at every position, over the channels",
        "sum(G * exp(X) / sum(exp(X), 0))", [
            Step(r"\frac{\partial L}{\partial x_{c,h,w}} = \frac{e^{x_{c,h,w}}}{S_{h,w}} g_{c,h,w} - "
                 r"\frac{e^{x_{c,h,w}}}{S_{h,w}} \sum_k g_{k,h,w} \frac{e^{x_{k,h,w}}}{S_{h,w}},\quad "
                 r"S_{h,w} = \sum_k e^{x_{k,h,w}}",
                 "exp(X) / sum(exp(X), 0) * G - exp(X) / sum(exp(X), 0) * sum(G * exp(X), 0) / sum(exp(X), 0)",
                 "the quotient rule at each position (h, w): x_{c,h,w} reaches only the outputs of its own "
                 "position, through e^{x_{c,h,w}} and through S_{h,w}"),
            Step(r"= p_{c,h,w}\Bigl(g_{c,h,w} - \sum_k g_{k,h,w}\,p_{k,h,w}\Bigr)", "p * (G - sum(G * p, 0))",
                 "name p = e^x / S: softmax's VJP along the channel dim, once per position"),
        ],
        wrt="X", shapes={"X": (3, 2, 2), "G": (3, 2, 2)}, let=["p = exp(X) / sum(exp(X), 0)"],
        setup=r"p_{c,h,w} = \frac{e^{x_{c,h,w}}}{\sum_k e^{x_{k,h,w}}},\ x: (C, H, W) = (3, 2, 2),\ G = \partial L/\partial p",
        code=lambda env: _backward(ops.softmax2d, env["X"], gy=env["G"])),
]


_RMS_LET = ["M = 5", "Z = X.T", "GZ = G.T", "H = einsum('d,dn->dn', gamma, GZ)",
            "r = 1 / sqrt(mean(Z**2, 0) + 0.001)", "zhat = Z * r"]
_RMS_SETUP = (r"\hat x_{n,d} = x_{n,d}\, r_n,\ r_n = \Bigl(\tfrac{1}{M}\textstyle\sum_d x_{n,d}^2 + \epsilon\Bigr)^{-1/2},\ "
              r"y = \gamma_d \hat x_{n,d},\ M = 5 \text{ features},\ \epsilon = 10^{-3},\ G = \partial L/\partial y")
_NORMS = [
    Derivation(
        "rms_norm", "RMSNorm: dL/dx, layer norm's rule without the mean", "sum(GZ * einsum('d,dn->dn', gamma, zhat))", [
            Step(r"\frac{\partial L}{\partial x_{n,d}} = h_{n,d}\,r_n - r_n^3\,\frac{x_{n,d}}{M}\sum_k h_{n,k} x_{n,k},"
                 r"\quad h = \gamma \odot g",
                 "einsum('dn->nd', H * r - r**3 * Z * sum(H * Z, 0) / M)",
                 "y_k = gamma_k x_k r depends on x_d directly (k = d) and through r, with "
                 "dr/dx_d = -(1/2) r^3 (2 x_d / M) = -r^3 x_d / M; dL/dxhat = gamma g = h"),
            Step(r"= r_n\Bigl(h_{n,d} - \hat x_{n,d}\,\overline{h \hat x}_n\Bigr)\quad(\text{the bar: the mean over the features})",
                 "einsum('dn->nd', r * (H - zhat * mean(H * zhat, 0)))",
                 "r^3 x_d sum_k h_k x_k / M = r xhat_d mean_k(h_k xhat_k): layer norm's compact form without "
                 "the -mean(h) term, since no mean is subtracted"),
        ],
        wrt="X", shapes={"X": (3, 5), "gamma": (5,), "G": (3, 5)}, let=_RMS_LET, setup=_RMS_SETUP,
        code=lambda env: _backward(ops.rms_norm, env["X"], env["gamma"], gy=env["G"], eps=1e-3)),
    Derivation(
        "rms_norm", "RMSNorm: dL/dgamma", "sum(GZ * einsum('d,dn->dn', gamma, zhat))", [
            Step(r"\frac{\partial L}{\partial \gamma_d} = \sum_n g_{n,d}\,\hat x_{n,d}", "einsum('dn->d', GZ * zhat)",
                 "y = gamma_d xhat and xhat does not depend on gamma; gamma is shared by the samples: a sum over n"),
        ],
        wrt="gamma", shapes={"X": (3, 5), "gamma": (5,), "G": (3, 5)}, let=_RMS_LET, setup=_RMS_SETUP,
        code=lambda env: _backward(ops.rms_norm, env["X"], env["gamma"], gy=env["G"], index=1, eps=1e-3)),
]


_PAD_S = "stack(" + ", ".join(f"eye(4)[{i}]" for i in (2, 1, 0, 1, 2, 3, 2)) + ")"
_PADS = [
    Derivation(
        "pad", "reflection padding: the gradient is a scatter-add of the padded gradient", "sum(G * (S @ X))", [
            Step(r"\frac{\partial L}{\partial x_i} = \sum_j g_j\,[\mathrm{idx}(j) = i] = (S^\top g)_i",
                 "S.T @ G",
                 "reflect padding of x (4,) by (2, 1) reads y = (x_2, x_1, x_0, x_1, x_2, x_3, x_2): a selection "
                 "matrix S, y = S x. Its transpose adds each output's gradient to the entry it was read "
                 "from: x_1 and x_2 appear twice and three times, and get the sum of their copies' gradients"),
            Step(r"= \bigl(g_2,\ g_1 + g_3,\ g_0 + g_4 + g_6,\ g_5\bigr)",
                 "stack(G[2], G[1] + G[3], G[0] + G[4] + G[6], G[5])",
                 "the scatter written out; the constant mode's padded entries (read from no x) would add nothing"),
        ],
        wrt="X", shapes={"X": (4,), "G": (7,)}, let=[f"S = {_PAD_S}"],
        setup=r"y = \mathrm{pad}(x, (2, 1), \text{reflect}) = (x_2, x_1, x_0, x_1, x_2, x_3, x_2),\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.pad, env["X"][None], gy=env["G"][None], padding=(2, 1), mode="reflect")[0]),
]


# -- attention, the embedding, LayerNorm inside the residual stream (the GPT's parts) ----------
#
# Q (L, E) = (3, 4), K (5, 4), V (5, 2), G = dL/dY (3, 2); s = 1/sqrt(E) = 0.5 and
# P = softmax(s Q K^T) row by row; the batch and head dims are the same products, batched.

_ATT_SHAPES = {"Q": (3, 4), "K": (5, 4), "V": (5, 2), "G": (3, 2)}
_ATT_L = "sum(G * (softmax(s * (Q @ K.T)) @ V))"
_ATT_LET = ["s = 0.5", "P = softmax(s * (Q @ K.T))", "gP = G @ V.T",
            "gA = P * gP - einsum('ik,ik,ij->ij', gP, P, P)"]
_ATT_SETUP = (r"Y = P V,\ P = \mathrm{softmax}_{\text{rows}}(A),\ A = s\,Q K^\top,\ s = 1/\sqrt{E} = 1/2,\ "
              r"Q: (L, E) = (3, 4),\ K: (5, 4),\ V: (5, 2),\ G = \partial L/\partial Y")
_ATT_WHY_GA = ("g_A = P * (g_P - rowsum(g_P * P)) is the row softmax's vector-Jacobian product "
               "(derived under attention: dL/dscores); the scale s multiplies A = s Q K^T once, so it "
               "multiplies both g_Q and g_K once")


def _prenorm_backward(env):
    """nn.Residual(Sequential(LayerNorm, Linear)): a pre-norm block, by its hand-written backward."""
    from . import nn
    ln = nn.LayerNorm(3, dtype=np.float64)
    ln.weight.data[...], ln.bias.data[...] = env["gamma"], env["beta"]
    lin = nn.Linear(3, 3, bias=False, dtype=np.float64)
    lin.weight.data[...] = env["W"]
    block = nn.Residual(nn.Sequential(ln, lin))
    block(env["X"])
    return block.backward(env["G"])


_ATTENTION = [
    Derivation(
        "scaled_dot_product_attention", "attention: dL/dV", _ATT_L, [
            Step(r"\frac{\partial L}{\partial V_{jc}} = \sum_{i} G_{ic}\,\frac{\partial Y_{ic}}{\partial V_{jc}}"
                 r" = \sum_i G_{ic} P_{ij}",
                 "einsum('ic,ij->jc', G, P)", "Y_ic = sum_j P_ij V_jc: V_jc reaches every output row i "
                                              "with weight P_ij, and P does not depend on V"),
            Step(r"\frac{\partial L}{\partial V} = P^\top G", "P.T @ G",
                 "the sum over the queries i is a product with P^T (batched over heads: np.matmul)"),
        ],
        wrt="V", shapes=_ATT_SHAPES, let=_ATT_LET, setup=_ATT_SETUP,
        code=lambda env: _backward(ops.scaled_dot_product_attention, env["Q"], env["K"], env["V"],
                                   gy=env["G"], index=2)),
    Derivation(
        "scaled_dot_product_attention", "attention: dL/dscores through the row softmax",
        "sum(G * (softmax(A) @ V))", [
            Step(r"\frac{\partial L}{\partial A_{ij}} = \sum_k (g_P)_{ik}\,\frac{\partial P_{ik}}{\partial A_{ij}}"
                 r" = \sum_k (g_P)_{ik}\,P_{ik}(\delta_{kj} - P_{ij}),\quad g_P = G V^\top",
                 "einsum('ik,ik,kj->ij', G @ V.T, P, eye(5)) - einsum('ik,ik,ij->ij', G @ V.T, P, P)",
                 "Y = P V gives dL/dP = G V^T; each row of P is the softmax of the same row of A only, "
                 "with the softmax Jacobian dP_ik/dA_ij = P_ik (delta_kj - P_ij)"),
            Step(r"= P_{ij}\Bigl((g_P)_{ij} - \textstyle\sum_k (g_P)_{ik} P_{ik}\Bigr)",
                 "P * (G @ V.T) - einsum('ik,ik,ij->ij', G @ V.T, P, P)",
                 "the delta keeps k = j; the second term is P_ij times one number per row: "
                 "g_A = P * (g_P - rowsum(g_P * P)), a vector-Jacobian product in O(S) per row, "
                 "never the (S, S) Jacobian"),
        ],
        wrt="A", shapes={"A": (3, 5), "V": (5, 2), "G": (3, 2)}, let=["P = softmax(A)"],
        setup=(r"Y = P V,\ P = \mathrm{softmax}_{\text{rows}}(A),\ A: (L, S) = (3, 5) \text{ (the scores)},\ "
               r"G = \partial L/\partial Y"),
        code=lambda env: _backward(ops.softmax, env["A"], gy=env["G"] @ env["V"].T, dim=-1)),
    Derivation(
        "scaled_dot_product_attention", "attention: dL/dQ, with the 1/sqrt(E) scale", _ATT_L, [
            Step(r"\frac{\partial L}{\partial Q_{ie}} = \sum_j (g_A)_{ij}\,\frac{\partial A_{ij}}{\partial Q_{ie}}"
                 r" = \sum_j (g_A)_{ij}\, s\, K_{je}",
                 "s * einsum('ij,je->ie', gA, K)",
                 "A_ij = s sum_e Q_ie K_je, so dA_ij/dQ_ie = s K_je; " + _ATT_WHY_GA),
            Step(r"\frac{\partial L}{\partial Q} = s\, g_A K", "s * (gA @ K)", "the sum over keys j is a product with K"),
        ],
        wrt="Q", shapes=_ATT_SHAPES, let=_ATT_LET, setup=_ATT_SETUP,
        code=lambda env: _backward(ops.scaled_dot_product_attention, env["Q"], env["K"], env["V"],
                                   gy=env["G"], index=0)),
    Derivation(
        "scaled_dot_product_attention", "attention: dL/dK", _ATT_L, [
            Step(r"\frac{\partial L}{\partial K_{je}} = \sum_i (g_A)_{ij}\, s\, Q_{ie}",
                 "s * einsum('ij,ie->je', gA, Q)",
                 "dA_ij/dK_je = s Q_ie: every query i that scored key j contributes"),
            Step(r"\frac{\partial L}{\partial K} = s\, g_A^\top Q", "s * (gA.T @ Q)",
                 "the sum over queries i is a product with g_A^T; with 1/sqrt(E) the scores keep a "
                 "variance near 1 for unit-variance q, k, so the softmax does not saturate, and the "
                 "gradients carry the same factor"),
        ],
        wrt="K", shapes=_ATT_SHAPES, let=_ATT_LET, setup=_ATT_SETUP,
        code=lambda env: _backward(ops.scaled_dot_product_attention, env["Q"], env["K"], env["V"],
                                   gy=env["G"], index=1)),
    Derivation(
        "attention_weights", "the attention weights: dL/dQ through the row softmax",
        "sum(G * softmax(s * (Q @ K.T)))", [
            Step(r"\frac{\partial L}{\partial Q_{ie}} = \sum_j (g_A)_{ij}\, s\, K_{je},\quad "
                 r"g_A = P \odot \bigl(G - \textstyle\sum_k G_{\cdot k} P_{\cdot k}\bigr)",
                 "s * einsum('ij,je->ie', P * G - einsum('ik,ik,ij->ij', G, P, P), K)",
                 "G = dL/dP arrives on the weights themselves (MultiheadAttention returns them); the row "
                 "softmax's VJP gives dL/dA, and A = s Q K^T gives dA_ij/dQ_ie = s K_je"),
            Step(r"\frac{\partial L}{\partial Q} = s\, g_A K", "s * ((P * G - einsum('ik,ik,ij->ij', G, P, P)) @ K)",
                 "the sum over keys is a product with K; dL/dK = s g_A^T Q in the same way"),
        ],
        wrt="Q", shapes={"Q": (3, 4), "K": (5, 4), "G": (3, 5)},
        let=["s = 0.5", "P = softmax(s * (Q @ K.T))"],
        setup=r"P = \mathrm{softmax}_{\text{rows}}(s\,Q K^\top),\ s = 1/\sqrt{E} = 1/2,\ G = \partial L/\partial P",
        code=lambda env: _backward(ops.attention_weights, env["Q"], env["K"], gy=env["G"], index=0)),
    Derivation(
        "permute", "a permutation of axes: the gradient moves back", "sum(G * einsum('abc->bac', X))", [
            Step(r"\frac{\partial L}{\partial X_{abc}} = \sum_{b'a'c'} G_{b'a'c'}\,[b'a'c' = bac] = G_{bac}",
                 "einsum('bac->abc', G)",
                 "y_{bac} = x_{abc}: each element only moves, so its gradient is the upstream gradient "
                 "at the place it moved to: the inverse permutation of G (for dims (1, 0, 2), itself)"),
        ],
        wrt="X", shapes={"X": (2, 3, 4), "G": (3, 2, 4)},
        setup=r"y = \mathrm{permute}(x, (1, 0, 2)),\ y_{bac} = x_{abc},\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.permute, env["X"], gy=env["G"], dims=(1, 0, 2))),
    Derivation(
        "embedding", "the embedding's gradient is a scatter-add", "sum(G * (O @ W))", [
            Step(r"\frac{\partial L}{\partial W_{rc}} = \sum_n G_{nc}\,\frac{\partial y_{nc}}{\partial W_{rc}}"
                 r" = \sum_n G_{nc}\,[i_n = r]",
                 "einsum('nc,nr->rc', G, O)",
                 "y_n = W_{i_n} is the product of the one-hot row O_n = e_{i_n} with W, so dy_nc/dW_rc "
                 "= O_nr = [i_n = r]"),
            Step(r"\frac{\partial L}{\partial W} = O^\top G:\quad \frac{\partial L}{\partial W_r} = "
                 r"\sum_{n:\, i_n = r} G_n",
                 "O.T @ G",
                 "each row of G is added onto the table row its id read (a scatter-add): id 2 is read "
                 "twice, so row 2 gets G_0 + G_2 (a fork); rows 1 and 3 are read by no id and get 0. "
                 "The op multiplies by the sparse O^T, never building the one-hot matrix densely"),
        ],
        wrt="W", shapes={"W": (5, 3), "G": (4, 3)},
        let=["O = stack(eye(5)[2], eye(5)[0], eye(5)[2], eye(5)[4])"],
        setup=r"y_n = W_{i_n},\ i = (2, 0, 2, 4),\ W: (\text{num}, \text{dim}) = (5, 3),\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.embedding, np.array([2, 0, 2, 4]), env["W"], gy=env["G"], index=1)),
    Derivation(
        "pre_norm_residual", "LayerNorm inside the residual stream: a pre-norm block's dL/dx",
        "sum(G * (X + (gamma * xhat + beta) @ W))", [
            Step(r"\frac{\partial L}{\partial x} = \underbrace{G}_{\text{skip}} + "
                 r"\underbrace{\frac{g_u}{\sigma} + \frac{\partial L}{\partial \sigma^2}\frac{2(x - \mu)}{C}"
                 r" + \frac{\partial L}{\partial \mu}\frac{1}{C}}_{\text{through } \mathrm{LN}},\ "
                 r"g_u = \gamma \odot (G W^\top)",
                 "G + (gu.T / s + (-0.5 * sum(gu.T * (Z - mu), 0) * s**(-3)) * 2 * (Z - mu) / 3"
                 " + (-sum(gu.T, 0) / s) / 3).T",
                 "x reaches y by the skip path (identity: G) and through LN then f(u) = u W (f's "
                 "backward: G W^T, then times gamma); the LayerNorm's chain rule runs through x-hat, the "
                 "variance and the mean of each row (each token's C = 3 features), as batch norm's over "
                 "the batch"),
            Step(r"= G + \frac{1}{\sigma}\Bigl(g_u - \overline{g_u} - \hat x\,\overline{g_u \hat x}\Bigr)",
                 "G + ((gu.T - mean(gu.T, 0) - xhat.T * mean(gu.T * xhat.T, 0)) / s).T",
                 "the compact form, the bars now means over each row's features: the skip path adds G "
                 "untouched, so the residual stream carries the upstream gradient past every LayerNorm "
                 "(the reason pre-norm stacks train deep)"),
        ],
        wrt="X", shapes={"X": (4, 3), "gamma": (3,), "beta": (3,), "W": (3, 3), "G": (4, 3)},
        let=["Z = X.T", "mu = mean(Z, 0)", "v = mean((Z - mu)**2, 0)", "s = sqrt(v + 0.00001)",
             "xhat = ((Z - mu) / s).T", "gu = gamma * (G @ W.T)"],
        setup=(r"y = x + f(\mathrm{LN}(x)),\ \mathrm{LN}(x) = \gamma \odot \hat x + \beta,\ "
               r"\hat x = (x - \mu)/\sigma \text{ per row (token)},\ f(u) = u W,\ x: (4, 3),\ G = \partial L/\partial y"),
        code=_prenorm_backward),
]


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
        "bilinear", "the bilinear layer: dL/dx1", "sum(G * (einsum('ni,kij,nj->nk', X1, A, X2) + b))", [
            Step(r"\frac{\partial L}{\partial x_{1,ni}} = \sum_k G_{nk} \frac{\partial y_{nk}}{\partial x_{1,ni}} = \sum_{k,j} G_{nk} A_{kij} x_{2,nj}",
                 "einsum('nk,kij,nj->ni', G, A, X2)",
                 "y_nk = sum_ij x1_ni A_kij x2_nj + b_k is linear in x1: dy_nk/dx1_ni = sum_j A_kij x2_nj"),
            Step(r"= \bigl((G \otimes x_2)\, M^\top\bigr)_{ni},\quad M_{i,(k,j)} = A_{kij}",
                 "einsum('nkj,ikj->ni', einsum('nk,nj->nkj', G, X2), einsum('kij->ikj', A))",
                 "G and x2 paired first (their outer product per sample), then one contraction over the pair "
                 "(k, j) with A: a single matrix product once (k, j) is flattened, which is how backward computes it"),
        ],
        wrt="X1", shapes={"X1": (4, 3), "X2": (4, 2), "A": (5, 3, 2), "b": (5,), "G": (4, 5)},
        setup=r"y_k = x_1^\top A_k x_2 + b_k,\ A \in \mathbb{R}^{\text{out}\times\text{in1}\times\text{in2}},\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.bilinear, env["X1"], env["X2"], env["A"], env["b"], gy=env["G"], index=0),
    ),
    Derivation(
        "bilinear", "the bilinear layer: dL/dx2", "sum(G * (einsum('ni,kij,nj->nk', X1, A, X2) + b))", [
            Step(r"\frac{\partial L}{\partial x_{2,nj}} = \sum_{k,i} G_{nk} x_{1,ni} A_{kij} = \sum_k G_{nk} u_{nkj},\quad u_{nkj} = \sum_i x_{1,ni} A_{kij}",
                 "einsum('nk,ni,kij->nj', G, X1, A)",
                 "y is linear in x2 too; u = x1 A is what forward computed first, and backward keeps it"),
        ],
        wrt="X2", shapes={"X1": (4, 3), "X2": (4, 2), "A": (5, 3, 2), "b": (5,), "G": (4, 5)},
        setup=r"y_k = x_1^\top A_k x_2 + b_k,\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.bilinear, env["X1"], env["X2"], env["A"], env["b"], gy=env["G"], index=1),
    ),
    Derivation(
        "bilinear", "the bilinear layer: dL/dA", "sum(G * (einsum('ni,kij,nj->nk', X1, A, X2) + b))", [
            Step(r"\frac{\partial L}{\partial A_{kij}} = \sum_n G_{nk} x_{1,ni} x_{2,nj}",
                 "einsum('nk,ni,nj->kij', G, X1, X2)",
                 "dy_nk/dA_kij = x1_ni x2_nj, summed over the batch: a sum of outer products, one per sample"),
        ],
        wrt="A", shapes={"X1": (4, 3), "X2": (4, 2), "A": (5, 3, 2), "b": (5,), "G": (4, 5)},
        setup=r"y_k = x_1^\top A_k x_2 + b_k,\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.bilinear, env["X1"], env["X2"], env["A"], env["b"], gy=env["G"], index=2),
    ),
    Derivation(
        "bilinear", "the bilinear layer: dL/db", "sum(G * (einsum('ni,kij,nj->nk', X1, A, X2) + b))", [
            Step(r"\frac{\partial L}{\partial b_k} = \textstyle\sum_n G_{nk}", "sum(G, 0)", "as for the linear layer"),
        ],
        wrt="b", shapes={"X1": (4, 3), "X2": (4, 2), "A": (5, 3, 2), "b": (5,), "G": (4, 5)},
        setup=r"y_k = x_1^\top A_k x_2 + b_k,\ G = \partial L/\partial y",
        code=lambda env: _backward(ops.bilinear, env["X1"], env["X2"], env["A"], env["b"], gy=env["G"], index=3),
    ),
    Derivation(
        "local_response_norm", "local response normalization: dL/dx",
        "sum(G * X * (1 + 0.5 / 3 * (X**2 @ Wm.T))**-0.75)", [
            Step(r"\frac{\partial L}{\partial x_{nj}} = g_{nj} d_{nj}^{-\beta} + \sum_c g_{nc}\, x_{nc}\,(-\beta)\, "
                 r"d_{nc}^{-\beta-1}\, \frac{\alpha}{n}\, 2 x_{nj} [\,j \in W(c)\,]",
                 "G * D**-0.75 + einsum('nc,cj->nj', G * X * -0.75 * D**-1.75, Wm) * 0.5 / 3 * 2 * X",
                 "y_c = x_c d_c^(-beta) depends on x_j directly (c = j) and through d_c for every window W(c) "
                 "that holds j: the product rule, then the chain rule through d_c = k + alpha/n sum x^2"),
            Step(r"= g_j d_j^{-\beta} - \frac{2\alpha\beta}{n}\, x_j \sum_{c:\ j \in W(c)} g_c\, x_c\, d_c^{-\beta-1}",
                 "G * D**-0.75 - 2 * 0.5 * 0.75 / 3 * X * ((G * X * D**-1.75) @ Wm)",
                 "the windows that hold j are a window around j too (reversed: c from j - (n-1)//2 to j + n//2), "
                 "so backward is the forward's window sum again, of q = g x d^(-beta-1)"),
        ],
        wrt="X", shapes={"X": (2, 4), "G": (2, 4)},
        let=["Wm = stack(eye(4)[0] + eye(4)[1], eye(4)[0] + eye(4)[1] + eye(4)[2], "
             "eye(4)[1] + eye(4)[2] + eye(4)[3], eye(4)[2] + eye(4)[3])",
             "D = 1 + 0.5 / 3 * (X**2 @ Wm.T)"],
        setup=(r"y_c = x_c d_c^{-\beta},\ d_c = k + \frac{\alpha}{n} \sum_{c' \in W(c)} x_{c'}^2,\quad "
               r"n = 3,\ \alpha = 0.5,\ \beta = 0.75,\ k = 1;\ W(c) = \{c - 1, c, c + 1\}"
               r"\text{ within the 4 channels (the row c of the 0/1 matrix } W_m)"),
        # the op takes (N, C, *): one position per channel here
        code=lambda env: _backward(ops.get("local_response_norm"), env["X"][..., None], gy=env["G"][..., None],
                                   size=3, alpha=0.5, beta=0.75, k=1.0)[..., 0],
    ),
    Derivation(
        "glu", "the gated linear unit: dL/dx", "sum(G * A * sigmoid(B))", [
            Step(r"\frac{\partial L}{\partial a} = g \odot \sigma(b),\quad \frac{\partial L}{\partial b} = "
                 r"g \odot a \odot \sigma'(b)",
                 "(G * sigmoid(B)) @ Pa.T + (G * A * sigmoid(B) * (1 - sigmoid(B))) @ Pb.T",
                 "y = a sigma(b) elementwise, with a = x P_a and b = x P_b the two halves of x: the product "
                 "rule; each half's gradient goes back to the columns it came from (P^T), so a split in the "
                 "forward pass is a concatenation in the backward"),
            Step(r"= \bigl[\, g \odot s,\ g \odot a \odot s\,(1 - s) \,\bigr],\quad s = \sigma(b)",
                 "concat(G * sigmoid(B), G * A * (sigmoid(B) - sigmoid(B)**2))",
                 "sigma' = sigma (1 - sigma); putting the halves back side by side (along the last dim) is the concatenation: "
                 "backward needs only a and s from the forward pass"),
        ],
        wrt="X", shapes={"X": (3, 8), "G": (3, 4)},
        let=["Pa = stack(eye(8)[0], eye(8)[1], eye(8)[2], eye(8)[3]).T",
             "Pb = stack(eye(8)[4], eye(8)[5], eye(8)[6], eye(8)[7]).T", "A = X @ Pa", "B = X @ Pb"],
        setup=(r"\mathrm{GLU}(x) = a \odot \sigma(b),\ a = x P_a,\ b = x P_b\ "
               r"\text{(the first and second half of the last dim)}"),
        code=lambda env: _backward(ops.glu, env["X"], gy=env["G"], dim=-1),
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
    *_CNN,
    *_ACTIVATIONS,
    *_REST,
    *_LOSSES,
    *_SOFTMAXES,
    *_NORMS,
    *_PADS,
    *_RNN,
    *_ATTENTION,
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
            lo, hi = derivation.domain
            v = verify_derivative(derivation.function, step.expr, var=derivation.wrt, lo=lo, hi=hi)
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
        lo, hi = derivation.domain              # inside it, off 0 and the kinks of the registry
        env = {derivation.wrt: np.linspace(lo, hi, 98)[1:-1] + (hi - lo) * 1e-3}
    else:
        env = _draw(rng, derivation.shapes, derivation.positive)
        for name, e in (parse_let(t) for t in derivation.let):
            env[name] = np.asarray(e.evaluate(env), dtype=np.float64)
    last = np.asarray(parse(derivation.steps[-1].expr).evaluate(env), dtype=np.float64)
    code = np.asarray(derivation.code(env), dtype=np.float64)
    if derivation.scalar:                  # a constant derivative (the identity's 1) at every x
        last = np.broadcast_to(last, code.shape)
    ok = code.shape == last.shape and np.allclose(code, last, rtol=1e-9, atol=1e-12)
    return Verdict(bool(ok), "the op's backward against the last line on random inputs")


# -- rendering -------------------------------------------------------------------------------
#
# Three formats: text (the terminal: the LaTeX rendered as Unicode by handydl.mathtext),
# markdown (KaTeX/MathJax math between $$) and latex (a document body for amsmath).  Each
# step is marked as checked: ``check=True`` runs derivations.check when it prints and shows
# the verdict (and how it was reached); ``check=False`` (docs/derivations.md, so that the file
# does not change with the wording of a verdict) says how the test suite checks it.

FORMATS = ("text", "markdown", "latex")
HOW_SCALAR = "symbolically by SymPy (the line minus the derivative simplifies to 0), and at sampled points"
HOW_ARRAY = "numerically: against central differences in float64, on random draws of the inputs"
HOW_CODE = "the op's hand-written backward equals the last line on random inputs"


def _how(d):
    return HOW_SCALAR if d.scalar else HOW_ARRAY


def _marks(d, check):
    """{step number or "code": (ok, how)}; None when not checked here."""
    if not check:
        return None
    return {k: (bool(v.correct), v.method) for k, v in _checked(d)}


_CHECKED = {}


def _checked(d, seed=0):
    """derivations.check(d), remembered for the derivation's content (explain, the notebook
    display and the tests ask for the same checks)."""
    key = (d.function, d.wrt, tuple(s.expr for s in d.steps), tuple(sorted(d.shapes.items())),
           tuple(d.let), d.positive, id(d.code), seed)
    if key not in _CHECKED:
        _CHECKED[key] = check(d, seed)
    return _CHECKED[key]


def _mark(ok):
    return "✓" if ok else "✗ does not follow:"


def explain(name, fmt="text", check=True):
    """Formula, derivative, convention at kinks and derivations of one op (or of a
    composite pattern of modules, such as ``residual``), every step marked as checked:
    ``check=True`` runs the checks now and shows their verdicts; ``check=False`` says
    how the test suite checks each step."""
    op = COMPOSITES[name] if name in COMPOSITES else ops.get(name)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not valid; expected one of {', '.join(FORMATS)}")
    derivations = for_op(name)
    if fmt == "latex":
        return _latex(op, derivations, check)
    if fmt == "markdown":
        out = [f"## {name}", "", "forward:", f"$${op.formula}$$", "", "derivative:",
               f"$${op.derivative}$$", "", f"at kinks: {op.convention}", ""]
        for d in derivations:
            out += _markdown(d, check)
        return "\n".join(out).rstrip() + "\n"
    from .mathtext import available, to_unicode
    out = [name, "", f"  forward     {to_unicode(op.formula)}",
           f"  derivative  {to_unicode(op.derivative)}", f"  at kinks    {op.convention}", ""]
    for d in derivations:
        out += _text(d, check)
    if not available():
        out.append("(the math above is LaTeX: pip install pylatexenc, or handydl[explain], for Unicode)")
    return "\n".join(out).rstrip() + "\n"


def _text(d, check):
    from .mathtext import to_unicode
    marks = _marks(d, check)
    out = [f"derivation: {d.title}"]
    if d.setup:
        out += [f"  setting: {to_unicode(d.setup)}"]
    if d.let:
        out += ["  definitions (as the check evaluates them):"] + [f"    {t}" for t in d.let]
    out.append("")
    for k, step in enumerate(d.steps, start=1):
        out += [f"  {k}. {to_unicode(step.tex)}", f"     why: {step.why}", f"     as:  {step.expr}"]
        out.append(f"     {_mark(marks[k][0])} {marks[k][1]}" if marks else f"     checked by the test suite {_how(d)}")
    if d.code is not None:
        out.append(f"  {_mark(marks['code'][0])} {HOW_CODE}" if marks
                   else f"  the test suite checks that {HOW_CODE}")
    if marks:
        out.append("  (checked just now by handydl.derivations.check)")
    return out + [""]


def _markdown(d, check):
    marks = _marks(d, check)
    out = [f"### {d.title}", ""]
    if d.setup:
        out += [f"$${d.setup}$$", ""]
    if d.let:
        out += ["definitions (as the check evaluates them): " + ", ".join(f"`{t}`" for t in d.let), ""]
    for k, step in enumerate(d.steps, start=1):
        how = f"{_mark(marks[k][0])} {marks[k][1]}" if marks else f"checked {_how(d)}"
        out += [f"{k}. $${step.tex}$$", f"   *{step.why}*  ", f"   `{step.expr}`: {how}", ""]
    if d.code is not None:
        out += [(f"{_mark(marks['code'][0])} {HOW_CODE}." if marks
                 else f"The test suite checks that {HOW_CODE}."), ""]
    return out


def _latex(op, derivations, check=True):
    out = [f"% {op.name}", r"\paragraph{" + _tex_text(op.name) + "}",
           r"\[ " + op.formula + r" \]", r"\[ " + op.derivative + r" \]",
           "Convention at kinks: " + _tex_text(op.convention) + "."]
    for d in derivations:
        out += _latex_derivation(d, check)
    return "\n".join(out) + "\n"


def _latex_derivation(d, check):
    marks = _marks(d, check)
    out = [r"\subparagraph{" + _tex_text(d.title) + "}"]
    if d.setup:
        out.append(r"\[ " + d.setup + r" \]")
    if d.let:
        out.append("Definitions (as the check evaluates them): "
                   + ", ".join(r"\texttt{" + _tex_text(t) + "}" for t in d.let) + ".")
    out.append(r"\begin{align*}")
    out += [f"  &{s.tex} && \\text{{{_tex_text(s.why)}}} \\\\" for s in d.steps]
    out.append(r"\end{align*}")
    if marks:
        out += [f"Line {k}: " + ("checked, " if ok else "does not follow, ") + _tex_text(how) + "."
                for k, (ok, how) in marks.items() if k != "code"]
        if "code" in marks:
            out.append(("Checked: " if marks["code"][0] else "Fails: ") + _tex_text(HOW_CODE) + ".")
    else:
        out.append("Every line is checked by the test suite " + _tex_text(_how(d))
                   + ("; " + _tex_text(HOW_CODE) if d.code is not None else "") + ".")
    return out


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "_": r"\_", "^": r"\textasciicircum{}", "{": r"\{",
                "}": r"\}", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "~": r"\textasciitilde{}"}


def _tex_text(s):
    """Plain text for LaTeX's text mode, every special character escaped once."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in s)


def render_all(fmt="markdown", check=False):
    """Every op with a derivation, in registry order: the text of docs/derivations.md."""
    names = [n for n in ops.names() if for_op(n)] + list(COMPOSITES)
    head = ("# Derivations\n\nGenerated by `handydl explain --all --format markdown` from "
            "`handydl/derivations.py`; every step is machine-checked by the test suite "
            "(SymPy for scalar steps, central differences on random inputs for arrays), and "
            "the op's hand-written backward is compared with the last line. "
            "`handydl explain NAME` runs the checks when it prints.\n\n")
    if fmt != "markdown":
        head = ("% " if fmt == "latex" else "") + "Derivations, generated from handydl/derivations.py\n\n"
    return head + "\n".join(explain(n, fmt, check) for n in names)
