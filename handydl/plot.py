"""Pictures: training curves (and, later, ops and their derivatives).

matplotlib is imported inside the functions, with the headless Agg backend,
so ``import handydl`` stays light.  Functions return the Figure (for
notebooks); ``save`` writes it atomically, PNG, SVG or PDF by extension.
"""
from __future__ import annotations

from pathlib import Path

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
