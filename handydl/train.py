"""The fit loop: forward, loss, backward (the delta rule), optimizer step;
per-epoch metrics on train and validation data, early stopping, history."""
from __future__ import annotations

import copy
import math
import sys
import time

import numpy as np

from .data.loader import DataLoader
from .nn.loss import CrossEntropyLoss, MultiMarginLoss, NLLLoss
from .nn.module import call_backward, no_grad
from ._fast import blas
from .optim.optimizer import clip_grad_norm

CLASSIFICATION_LOSSES = (CrossEntropyLoss, NLLLoss, MultiMarginLoss)


def task_of(loss_fn):
    return "classification" if isinstance(loss_fn, CLASSIFICATION_LOSSES) else "regression"


def predict(model, X, batch_size=1024):
    """Model outputs for X in evaluation mode, batch by batch (the mode is restored);
    under ``no_grad()``, so the forwards keep nothing for a backward."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            outs = [model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(outs) if outs else np.zeros((0,))


def metrics(outputs, y, task):
    """accuracy for classification; mse and r2 for regression."""
    if task == "classification":
        return {"acc": float(np.mean(outputs.argmax(axis=1) == y))}
    pred = outputs.reshape(y.shape)
    err = float(np.mean((pred - y) ** 2))
    var = float(np.var(y))
    return {"mse": err, "r2": 1 - err / var if var > 0 else float("nan")}


def evaluate(model, loss_fn, X, y, batch_size=1024):
    """Loss and metrics of ``model`` on (X, y), in evaluation mode."""
    out = predict(model, X, batch_size)
    task = task_of(loss_fn)
    target = y if task == "classification" else y.reshape(out.shape)
    with no_grad():
        result = {"loss": float(loss_fn(out, target))}
    result.update(metrics(out, y, task))
    return result


def _progress(iterable, total, enabled, desc):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:                    # progress bars are optional
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr)


def fit(model, loss_fn, optimizer, train_loader, epochs, val_data=None, scheduler=None,
        early_stopping=None, clip_norm=None, progress=None, log=print, blas_threads="auto"):
    """Train ``model`` and return the history: a dict of per-epoch lists.

    ``val_data`` is ``(X_val, y_val)``; ``early_stopping`` a patience in epochs
    on the validation loss (the best weights are restored at the end);
    ``progress`` shows a tqdm bar (default: only when stderr is a terminal);
    ``log`` receives one line per epoch (None for silence).
    ``blas_threads``: NumPy's BLAS threads while it trains, "auto" (measured
    step by step, the fastest kept; see ``handydl.blas_threads``), an int, or
    None (left alone); the count before comes back after.  It leaves the
    process's allocator alone: ``handydl.tune_malloc()`` once before makes
    the steps reuse their large freed blocks (``handydl train`` does).
    """
    blas.check(blas_threads, "fit")
    if not isinstance(train_loader, DataLoader):
        raise TypeError(f"fit: train_loader must be a DataLoader, got {type(train_loader).__name__}")
    if epochs < 1:
        raise ValueError(f"fit: epochs={epochs!r} is not valid; expected >= 1")
    if len(train_loader) == 0:
        raise ValueError("fit: train_loader has no batches (its dataset has 0 rows); expected at least one")
    if early_stopping is not None and val_data is None:
        raise ValueError("fit: early_stopping needs val_data")
    task = task_of(loss_fn)
    show = sys.stderr.isatty() if progress is None else progress
    history = {"epoch": [], "lr": [], "time": [], "train_loss": []}
    best, best_state, waited = math.inf, None, 0
    with blas.blas_threads(blas_threads):     # NumPy's BLAS threads: measured, by default
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            total, count, running = 0.0, 0, {}
            for xb, yb in _progress(train_loader, len(train_loader), show, f"epoch {epoch}/{epochs}"):
                target = yb if task == "classification" else yb.reshape(len(yb), -1)
                optimizer.zero_grad()
                out = model(xb)
                loss = loss_fn(out, target)
                # the input is data: no dL/dx (for a backward that can skip it)
                call_backward(model, (loss_fn.backward(),), input_grad=False)
                if clip_norm is not None:
                    clip_grad_norm(optimizer.params, clip_norm)
                optimizer.step()
                total += loss * len(xb)
                count += len(xb)
                # running metrics from the batch outputs: no second pass over the data
                for k, v in metrics(out, yb, task).items():
                    running[k] = running.get(k, 0.0) + v * len(xb)
            row = {"epoch": epoch, "lr": optimizer.lr, "train_loss": total / count}
            row.update({f"train_{k}": v / count for k, v in running.items() if k != "r2"})
            if val_data is not None:
                row.update({f"val_{k}": v for k, v in evaluate(model, loss_fn, *val_data).items()})
            if scheduler is not None:
                scheduler.step()
            row["time"] = time.perf_counter() - start
            for k, v in row.items():
                history.setdefault(k, []).append(v)
            if log:
                log(_format_row(row, epochs))
            if not math.isfinite(row["train_loss"]):
                if log:
                    log(f"stopping: the training loss is {row['train_loss']} (try a smaller learning rate)")
                break
            if early_stopping is not None:
                if row["val_loss"] < best:
                    best, best_state, waited = row["val_loss"], copy.deepcopy(model.state_dict()), 0
                else:
                    waited += 1
                    if waited >= early_stopping:
                        if log:
                            log(f"early stopping: no better validation loss for {early_stopping} epochs")
                        break
        if best_state is not None:
            model.load_state_dict(best_state)
        return history


def _format_row(row, epochs):
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}", f"loss {row['train_loss']:.4f}"]
    for k in ("train_acc", "val_loss", "val_acc", "val_mse", "val_r2"):
        if k in row:
            fmt = f"{row[k]:.2%}" if k.endswith("acc") else f"{row[k]:.4f}"
            parts.append(f"{k.replace('_', ' ')} {fmt}")
    parts.append(f"{row['time']:.2f}s")
    return "  ".join(parts)
