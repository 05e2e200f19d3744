"""The fit loop of a sequence model (a GPT): batches drawn step by step, the
learning rate warmed up and then annealed step by step, metrics per epoch.

A data set generated on the fly has no natural epoch; here an epoch is a
fixed number of steps, after which the model is evaluated and a row is added
to the history (the same keys as ``train.fit``'s, so ``plot.training_curves``
draws it).
"""
from __future__ import annotations

import math
import time

import numpy as np

from .nn.module import no_grad
from ._fast import blas
from .optim.optimizer import clip_grad_norm
from .data.sequences import IGNORE_INDEX
from .train import _progress


def warmup_cosine(step, total, base_lr, warmup):
    """The learning rate of step ``step`` (0-based) of ``total``: linear warm-up over
    the first ``warmup`` steps, times a cosine from ``base_lr`` down to 0:

        lr(s) = base_lr * min(1, (s + 1) / warmup) * (1 + cos(pi s / total)) / 2
    """
    return base_lr * min(1.0, (step + 1) / max(1, warmup)) * (1 + math.cos(math.pi * step / total)) / 2


def evaluate(model, loss_fn, x, y, hits, batch_size=500):
    """{"loss", "acc"} of ``model`` on (x, y) in evaluation mode under no_grad:
    the mean loss over the counted targets, and ``hits(logits, y) -> (correct, counted)``
    summed over batches as the accuracy."""
    was_training = model.training
    model.eval()
    loss_sum, weight, correct, counted = 0.0, 0, 0, 0
    try:
        with no_grad():
            for i in range(0, len(x), batch_size):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                logits = model(xb)
                n = int((yb != IGNORE_INDEX).sum())
                loss_sum += float(loss_fn(logits, yb)) * n
                weight += n
                c, k = hits(logits, yb)
                correct, counted = correct + c, counted + k
    finally:
        model.train(was_training)
    return {"loss": loss_sum / max(weight, 1), "acc": correct / max(counted, 1)}


def fit_steps(model, loss_fn, optimizer, batches, epochs, steps_per_epoch, hits, val_data=None,
              warmup=None, clip_norm=1.0, progress=None, log=print, names=None, blas_threads="auto"):
    """Train ``model`` for ``epochs * steps_per_epoch`` steps; return the history.

    ``batches`` yields (x, y) token ids, (B, T) each; ``loss_fn(logits, y)`` is a
    sequence cross-entropy with an ``ignore_index``; ``hits(logits, y)`` gives
    (correct, counted) for the accuracy; ``val_data`` (x, y) is evaluated after
    every epoch.  The learning rate follows ``warmup_cosine`` (``warmup`` steps,
    default 5% of all), gradients are clipped to ``clip_norm`` (None: not).
    Stops at the first non-finite loss.  ``names`` renames the accuracy in the
    log lines (e.g. "exact-match").  ``blas_threads`` as in ``train.fit``.
    """
    blas.check(blas_threads, "fit_steps")
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"fit_steps: epochs={epochs!r} and steps_per_epoch={steps_per_epoch!r}; "
                         "expected integers >= 1")
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20) if warmup is None else warmup
    base_lr = optimizer.lr
    show = progress if progress is not None else _stderr_is_terminal()
    history = {"epoch": [], "lr": [], "time": [], "train_loss": []}
    step = 0
    with blas.blas_threads(blas_threads):     # NumPy's BLAS threads: measured, by default
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            loss_sum, weight, correct, counted = 0.0, 0, 0, 0
            finite = True
            for _ in _progress(range(steps_per_epoch), steps_per_epoch, show, f"epoch {epoch}/{epochs}"):
                optimizer.lr = warmup_cosine(step, total, base_lr, warmup)
                step += 1
                x, y = next(batches)
                optimizer.zero_grad()
                logits = model(x)
                loss = loss_fn(logits, y)
                model.backward(loss_fn.backward())          # dL/d(token ids) is None: nothing to skip
                if clip_norm is not None:
                    clip_grad_norm(optimizer.params, clip_norm)
                optimizer.step()
                n = int((y != IGNORE_INDEX).sum())
                loss_sum, weight = loss_sum + loss * n, weight + n
                c, k = hits(logits, y)
                correct, counted = correct + c, counted + k
                if not math.isfinite(loss):
                    finite = False
                    break
            row = {"epoch": epoch, "lr": optimizer.lr, "train_loss": loss_sum / max(weight, 1),
                   "train_acc": correct / max(counted, 1)}
            if val_data is not None:        # not after a non-finite loss: NaN, to keep the columns aligned
                scores = evaluate(model, loss_fn, *val_data, hits) if finite else {"loss": math.nan, "acc": math.nan}
                row.update({f"val_{k}": v for k, v in scores.items()})
            row["time"] = time.perf_counter() - start
            for k, v in row.items():
                history.setdefault(k, []).append(v)
            if log:
                log(_format_row(row, epochs, names or {}))
            if not finite:
                if log:
                    log(f"stopping: the training loss is {loss} in step {step} (try a smaller learning rate)")
                break
        return history


def _stderr_is_terminal():
    import sys
    return sys.stderr.isatty()


def _format_row(row, epochs, names):
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}", f"loss {row['train_loss']:.4f}"]
    acc = names.get("acc", "acc")
    for k, label in (("train_acc", f"train {acc}"), ("val_loss", "val loss"), ("val_acc", f"val {acc}")):
        if k in row:
            parts.append(f"{label} {row[k]:.2%}" if k.endswith("acc") else f"{label} {row[k]:.4f}")
    parts.append(f"{row['time']:.1f}s")
    return "  ".join(parts)


def hits_per_sequence(logits, y):
    """(sequences whose every counted target is the argmax, sequences): exact match."""
    from .data.sequences import answer_hits
    h = answer_hits(np.asarray(logits), y)
    return int(h.sum()), len(h)


def hits_per_token(logits, y):
    """(tokens whose target is the argmax, counted tokens): next-token accuracy."""
    from .data.sequences import token_hits
    return token_hits(np.asarray(logits), y)
