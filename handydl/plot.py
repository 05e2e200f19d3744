"""Pictures: activations and their derivatives, the softmax Jacobian, training curves.

matplotlib is imported inside the functions, with the headless Agg backend,
so ``import handydl`` stays light.  Functions return the Figure (for
notebooks); ``save`` writes it atomically, PNG, SVG or PDF by extension.
"""
from __future__ import annotations

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
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False,
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
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(5, len(handles)))
    fig.suptitle("activations and their derivatives: hand-derived vs numerical"
                 + (" vs PyTorch" if torch_reference else ""))
    return fig


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
