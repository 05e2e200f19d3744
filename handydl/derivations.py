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
    *_CNN,
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
    from .mathtext import to_unicode
    out = [name, "", f"  forward     {to_unicode(op.formula)}",
           f"  derivative  {to_unicode(op.derivative)}", f"  at kinks    {op.convention}", ""]
    for d in derivations:
        out += _text(d, check)
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
