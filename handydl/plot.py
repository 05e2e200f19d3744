"""Pictures: activations and their derivatives, the softmax Jacobian, training curves,
and what a trained convolutional network learned (its first layer's filters, the
feature maps of one input).

matplotlib is imported inside the functions, with the headless Agg backend,
so ``import handydl`` stays light.  Functions return the Figure (for
notebooks); ``save`` writes it atomically, PNG, SVG or PDF by extension.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._io import atomic_path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def training_curves(history, title="training"):
    """Loss (train and validation) and accuracy or R^2 per epoch, side by side."""
    plt = _pyplot()
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    epochs = history["epoch"]
    ax_loss.plot(epochs, history["train_loss"], label="train")
    if "val_loss" in history:
        ax_loss.plot(epochs, history["val_loss"], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    metric = "acc" if "train_acc" in history else "r2" if "val_r2" in history else "mse"
    for split in ("train", "val"):
        key = f"{split}_{metric}"
        if key in history:
            ax_metric.plot(epochs, history[key], label="train" if split == "train" else "validation")
    label = {"acc": "accuracy", "r2": "R²", "mse": "MSE"}[metric]
    ax_metric.set(xlabel="epoch", ylabel=label, title=f"{title}: {label}")
    for ax in (ax_loss, ax_metric):
        ax.grid(True, alpha=0.3)
        ax.legend()
    return fig


def _prelu_weight(x):
    return (x, np.array([0.25], dtype=x.dtype))


def _inputs(op, x):
    return _prelu_weight(x) if op.name == "prelu" else (x,)


def _torch_derivative(op, x):
    """PyTorch autograd's derivative, or None when torch is not installed.

    The one place the library touches torch: lazily, only to draw a
    reference curve next to the hand-derived one.
    """
    if op.reference is None:
        return None
    try:
        import torch
    except ImportError:
        return None
    inputs = [torch.tensor(a, dtype=torch.float64) for a in _inputs(op, x)]
    inputs[0].requires_grad_(True)
    y = op.reference(torch, *inputs, **op.params)
    (g,) = torch.autograd.grad(y.sum(), inputs[0])
    return g.numpy()


def activations(names=None, xrange=(-5.0, 5.0), second=False, torch_reference=True):
    """A grid with one panel per activation: f, the analytic f', the numerical
    derivative as dots on top, PyTorch's autograd derivative (dashed, when torch
    is installed) and, with ``second``, f'' (numerically, from the analytic f').
    Kinks are marked, with the derivative's value there (the convention)."""
    from . import ops
    plt = _pyplot()
    names = names or ops.names("activation")
    selected = [ops.get(n) for n in names]
    not_act = [op.name for op in selected if op.kind != "activation"]
    if not_act:
        raise ValueError(f"not an elementwise activation: {not_act[0]!r}; valid: "
                         f"{', '.join(ops.names('activation'))}")
    lo, hi = xrange
    if not lo < hi:
        raise ValueError(f"range {lo} {hi} is empty; expected LO < HI")
    cols = min(4, len(selected))
    rows = -(-len(selected) // cols)
    # one panel gets a figure of its own size (the grid's 4 x 3.2 in cells cannot hold the title
    # and the legend); the legend below and the title are laid out to the figure's width
    width, height = (6.4, 5.2) if len(selected) == 1 else (4 * cols, 3.2 * rows + (1.0 if rows == 1 else 0))
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False,
                             constrained_layout=True)
    x = np.linspace(lo, hi, 1001)
    xs = np.linspace(lo, hi, 31) + (hi - lo) * 1e-3          # where the numerical dots go
    for ax, op in zip(axes.flat, selected):
        y, saved = op.forward(*_inputs(op, x))
        dy = op.backward(saved, np.ones_like(y))[0]
        ax.plot(x, y, color="C0", lw=2, label="f(x)")
        ax.plot(x, dy, color="C1", lw=2, label="f'(x) hand-derived")
        h = 1e-5
        num = (op(*_inputs(op, xs + h)) - op(*_inputs(op, xs - h))) / (2 * h)
        far = np.all(np.abs(xs[:, None] - np.array(op.kinks or [np.inf])[None]) > 2 * h, axis=1)
        ax.plot(xs[far], num[far], "o", ms=4, mfc="none", color="k", label="f'(x) finite differences")
        if torch_reference:
            tg = _torch_derivative(op, x)
            if tg is not None:
                ax.plot(x, tg, "--", color="C3", lw=1.2, label="f'(x) PyTorch autograd")
        if second:
            d2 = np.gradient(dy, x)
            for k in op.kinks:            # f' jumps there: f'' is a spike, not a number
                d2[np.abs(x - k) <= 2 * (x[1] - x[0])] = np.nan
            ax.plot(x, d2, ":", color="C2", lw=1.5, label="f''(x) (numerical, from f')")
        for k in op.kinks:
            if lo <= k <= hi:
                ax.axvline(k, color="grey", ls=":", lw=1)
                gk = op.backward(op.forward(*_inputs(op, np.array([k])))[1], np.ones(1))[0][0]
                ax.plot([k], [gk], "s", color="C1", ms=6, label="f' at a kink (convention)")
        ax.set_title(op.describe(op.params))
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("x")
    for ax in list(axes.flat)[len(selected):]:
        ax.remove()
    handles = {}
    for ax in fig.axes:
        for hnd, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, hnd)
    _bottom_legend(fig, handles)
    title = ("activations and their derivatives" if len(selected) > 1 else f"{selected[0].name} and its derivative") \
        + ": hand-derived vs numerical" + (" vs PyTorch" if torch_reference else "")
    fig.suptitle(_wrap(title, width))
    return fig


def _bottom_legend(fig, handles):
    """One legend under the panels, with as many columns as the figure's width holds."""
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(handles), 0, -1):
        legend = fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=ncol)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return legend
        legend.remove()


def _wrap(text, width_in, points=12):
    """``text`` in lines that fit ``width_in`` inches at ``points`` (a character of DejaVu
    Sans is about 0.6 of the size wide), broken after ": " and ", " so that phrases stay whole."""
    import re
    import textwrap
    chars = max(10, int(width_in * 72 / (0.6 * points)) - 4)
    lines = [""]
    for piece in re.split(r"(?<=[:,]) ", text):
        if lines[-1] and len(lines[-1]) + 1 + len(piece) > chars:
            lines.append("")
        lines[-1] = f"{lines[-1]} {piece}".strip()
    return "\n".join(part for line in lines for part in textwrap.wrap(line, chars))


def softmax_jacobian(logits):
    """Heat map of the softmax Jacobian diag(p) - p p^T, every entry annotated."""
    from .ops import softmax, softmax_jacobian as jac
    plt = _pyplot()
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 1 or z.size < 2:
        raise ValueError(f"logits must be a vector of at least 2 numbers, got shape {z.shape}")
    J, p = jac(z), softmax(z)
    n = z.size
    fig, ax = plt.subplots(figsize=(1.2 * n + 3, 1.1 * n + 2), constrained_layout=True)
    lim = np.abs(J).max()
    im = ax.imshow(J, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{J[i, j]:.3f}", ha="center", va="center",
                    color="white" if abs(J[i, j]) > 0.6 * lim else "black")
    ax.set_xticks(range(n), [f"z{j}={v:g}" for j, v in enumerate(z)])
    ax.set_yticks(range(n), [f"p{i}={v:.3f}" for i, v in enumerate(p)])
    ax.set_xlabel("j (logit)")
    ax.set_ylabel("i (probability)")
    ax.set_title("softmax Jacobian  dp_i/dz_j = p_i (δ_ij − p_j)\n"
                 "diagonal p_i(1 − p_i), off-diagonal −p_i p_j; rows sum to 0")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


# -- what a convolutional network learned -----------------------------------------------------

class PlotInputError(ValueError):
    """The model or layer asked for cannot give the picture: no Conv2d, an unknown
    layer, a layer whose output is not a stack of images."""


def _conv2d_class():
    from .nn.conv import Conv2d
    return Conv2d


def first_conv(model):
    """(dotted name, module) of the first Conv2d in ``model``, depth-first through
    its children (the order of ``named_modules``); PlotInputError when it has none."""
    Conv2d = _conv2d_class()
    if isinstance(model, Conv2d):
        return "", model
    for name, m in model.named_modules():
        if isinstance(m, Conv2d):
            return name, m
    raise PlotInputError(f"the model ({type(model).__name__}) has no Conv2d layer")


def _grid(n, max_cols=12):
    """(rows, cols) for n panels, about twice as wide as tall."""
    cols = max(1, min(n, max_cols, math.ceil(math.sqrt(2 * n))))
    return -(-n // cols), cols


def conv_filters(model_or_conv, max_filters=64, channel=None):
    """The filters of the first Conv2d of a model (or of the Conv2d given) as small
    images on a grid, one per output channel, on one diverging color scale centred at 0
    (red positive, blue negative), so that filters compare with each other.

    The weight is (out_channels, in_channels / groups, kh, kw).  A filter with
    several input channels is shown summed over them (``channel=None``) or at one
    input channel (``channel=c``); the title says which.  At most ``max_filters``
    filters are drawn (the first ones)."""
    plt = _pyplot()
    name, conv = first_conv(model_or_conv)
    w = np.asarray(conv.weight.data, dtype=np.float64)
    n_out, n_in, kh, kw = w.shape
    if channel is None:
        images = w.sum(axis=1)
        how = ("one input channel" if n_in == 1 else f"summed over its {n_in} input channels")
    else:
        if not -n_in <= channel < n_in:
            raise PlotInputError(f"channel {channel} is out of range: the filters have {n_in} input "
                                 f"channel{'s' if n_in != 1 else ''}")
        images = w[:, channel]
        how = f"input channel {channel % n_in} of {n_in}"
    if max_filters < 1:
        raise ValueError(f"max_filters={max_filters} is not valid; expected at least 1")
    shown = min(n_out, max_filters)
    rows, cols = _grid(shown)
    width = max(3.6, 1.1 * cols + 1.4)            # a few filters still leave room for the title
    fig, axes = plt.subplots(rows, cols, figsize=(width, 1.1 * rows + 1.2), squeeze=False,
                             constrained_layout=True)
    lim = float(np.abs(images[:shown]).max()) or 1.0
    for ax in axes.flat[shown:]:
        ax.remove()
    axes = list(axes.flat[:shown])
    for i, ax in enumerate(axes):
        im = ax.imshow(images[i], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(str(i), fontsize=8, pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
    count = f"{n_out} filters" if shown == n_out else f"the first {shown} of {n_out} filters"
    fig.suptitle(_wrap(f"first conv layer{' ' + name if name else ''} ({n_in}→{n_out}, {kh}x{kw}): "
                       f"{count}, {how}", width, 10), fontsize=10)
    return fig


def _leaves(model):
    """(dotted name, module) of the modules without children, depth-first."""
    return [(n, m) for n, m in model.named_modules() if not m._modules]


def _parent(model, target):
    for m in model.modules():
        if any(c is target for c in m._modules.values()):
            return m
    return None


def _after_first_conv(model):
    """The first Conv2d's following activation (past any normalization layer between
    them, as conv - BatchNorm - ReLU), or the Conv2d itself when no activation follows."""
    from . import nn
    name, conv = first_conv(model)
    parent = _parent(model, conv) if conv is not model else None
    if parent is not None:
        siblings = list(parent._modules.values())
        activations = tuple(nn.ACTIVATIONS.values())
        for m in siblings[next(i for i, c in enumerate(siblings) if c is conv) + 1:]:
            if isinstance(m, activations):
                return dict((id(mm), n) for n, mm in model.named_modules())[id(m)], m
            if "Norm" not in type(m).__name__:
                break
    return name, conv


def _select_layer(model, layer):
    """(dotted name, module) for ``layer``: None (after the first conv), a dotted
    name of ``named_modules``, or an int indexing the leaf modules depth-first."""
    if layer is None:
        return _after_first_conv(model)
    named = dict(model.named_modules())
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        leaves = _leaves(model)
        if not -len(leaves) <= layer < len(leaves):
            raise PlotInputError(f"layer {layer} is out of range: the model has {len(leaves)} layers "
                                 f"(0..{len(leaves) - 1})")
        return leaves[layer]
    if isinstance(layer, str) and layer in named and layer:
        return layer, named[layer]
    valid = ", ".join(f"{n} ({type(m).__name__})" for n, m in named.items() if n)
    raise PlotInputError(f"unknown layer {layer!r}; layers: {valid}")


class _Stop(Exception):
    pass


def _run_to(model, x, target):
    """Run ``x`` through ``model`` until ``target`` has produced its output: (output,
    the input of the first Conv2d when it ran before, or None).  In eval mode under
    no_grad; every module's mode is restored afterwards."""
    from . import nn
    Conv2d = _conv2d_class()
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    first = convs[0] if convs else None
    seen = {}
    patched = []

    def patch(m):
        inner = m.forward

        def forward(*args, **kwargs):
            if m is first and "conv_in" not in seen:
                seen["conv_in"] = np.asarray(args[0])
            y = inner(*args, **kwargs)
            if m is target:
                seen["out"] = y
                raise _Stop
            return y
        patched.append((m, m.__dict__.get("forward")))
        object.__setattr__(m, "forward", forward)

    modes = [(m, m.training) for m in model.modules()]
    for m in {id(m): m for m in (target, first) if m is not None}.values():
        patch(m)
    try:
        model.eval()
        with nn.no_grad():
            try:
                model(x)
            except _Stop:
                pass
    finally:
        for m, before in patched:
            if before is None:
                del m.__dict__["forward"]
            else:
                object.__setattr__(m, "forward", before)
        for m, mode in modes:
            m.training = mode
    if "out" not in seen:
        raise PlotInputError("the layer did not run in the model's forward pass")
    return seen["out"], seen.get("conv_in")


def _input_image(x, conv_in):
    """The input as a (H, W) or (H, W, 3) image: its raw values in the shape the first
    conv saw (rows of pixels are unfolded), or, failing that, what the conv saw."""
    shape = conv_in.shape[1:] if conv_in is not None else None
    if shape is not None and x.size == math.prod(shape):
        img, what = x.reshape(shape), "input"
    elif conv_in is not None:
        img, what = conv_in[0], "input of the first conv layer"
    elif x.ndim == 3:
        img, what = x, "input"
    elif x.ndim == 1 and math.isqrt(x.size) ** 2 == x.size:
        side = math.isqrt(x.size)
        img, what = x.reshape(1, side, side), "input"
    else:
        return None, None
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        return img, what
    if img.shape[0] == 3:
        lo, hi = img.min(), img.max()
        return np.moveaxis((img - lo) / ((hi - lo) or 1.0), 0, -1), what
    if img.shape[0] == 1:
        return img[0], what
    return img.mean(axis=0), f"{what} (mean of {img.shape[0]} channels)"


def feature_maps(model, x, layer=None, max_maps=64, label=None):
    """Run one input ``x`` through ``model`` (eval mode, no_grad; each module's mode
    is restored afterwards) up to ``layer`` and show each channel of its output as an
    image, with the input image on the left.

    ``x`` is one sample without the batch axis (a row of pixels, or (C, H, W)); a
    2-D ``x`` of one row is taken as a batch of one.  ``layer`` is None (the
    activation that follows the first Conv2d, or the conv itself when none does), a
    dotted module name as in ``model.named_modules()`` ("1.1.1"), or an int indexing
    the modules without children depth-first.  ``label`` describes the input in the
    title.  At most ``max_maps`` channels are drawn."""
    plt = _pyplot()
    name, target = _select_layer(model, layer)
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        x = x.astype(np.float32)
    batch = x if (x.ndim == 2 and x.shape[0] == 1) else x[None]
    out, conv_in = _run_to(model, batch, target)
    out = np.asarray(out[0] if isinstance(out, tuple) else out)
    if out.ndim != 4:
        raise PlotInputError(f"layer {name} ({type(target).__name__}) outputs shape {out.shape}, not "
                             "feature maps (batch, channels, height, width)")
    maps = np.asarray(out[0], dtype=np.float64)
    if max_maps < 1:
        raise ValueError(f"max_maps={max_maps} is not valid; expected at least 1")
    shown = min(len(maps), max_maps)
    rows, cols = _grid(shown, max_cols=8)
    width = 1.3 * cols + 3.4
    fig = plt.figure(figsize=(width, 1.3 * rows + 1.2), constrained_layout=True)
    gs = fig.add_gridspec(rows, cols + 2)
    img, what = _input_image(np.asarray(x[0] if batch is x else x, dtype=np.float64), conv_in)
    if img is not None:
        ax = fig.add_subplot(gs[:, :2])
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray", interpolation="nearest")
        ax.set_title(what, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    lo, hi = float(maps[:shown].min()), float(maps[:shown].max())
    if lo < 0:                      # signed maps (a conv before its activation): centred at 0
        lim = max(-lo, hi) or 1.0
        style = dict(cmap="RdBu_r", vmin=-lim, vmax=lim)
    else:
        style = dict(cmap="viridis", vmin=0.0, vmax=hi or 1.0)
    axes = []
    for i in range(shown):
        ax = fig.add_subplot(gs[i // cols, 2 + i % cols])
        im = ax.imshow(maps[i], interpolation="nearest", **style)
        ax.set_title(str(i), fontsize=8, pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
        axes.append(ax)
    fig.colorbar(im, ax=axes, shrink=0.8, label="activation")
    count = f"{len(maps)} channels" if shown == len(maps) else f"the first {shown} of {len(maps)} channels"
    fig.suptitle(_wrap(f"feature maps of layer {name} ({type(target).__name__}): {count}, "
                       f"{maps.shape[1]}x{maps.shape[2]}", width, 10)
                 + (f"\n{_wrap(label, width, 10)}" if label else ""), fontsize=10)
    return fig


def save(fig, path):
    """Write ``fig`` to ``path`` atomically; the format follows the extension."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"{path}: unsupported image format {fmt!r}; expected .png, .svg or .pdf")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    _pyplot().close(fig)
    return path
