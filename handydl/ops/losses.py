r"""Losses: regression, classification and the SVM hinge.

Each takes ``(input, target)`` and returns the loss reduced by ``reduction``
("mean", "sum" or "none"); backward returns ``(dL/dinput, None)``: targets
are not differentiated.  Under "mean" the per-element gradient is divided by
the same count (or, for weighted class losses, the same weight sum) as the
loss, exactly as PyTorch.
"""
from __future__ import annotations

import math

import numpy as np

from .._fast import fused
from .activations import stable_sigmoid
from .registry import as_float, check_bool, check_int, check_real, register
from .softmax import log_softmax

REDUCTIONS = ("mean", "sum", "none")
LOSS_DOMAINS = ((-3.0, 3.0), (-1000.0, 1000.0))
_BCE_EPS = float(np.float32(1e-12))   # PyTorch clamps p(1-p) at this float32 constant


# -- shared plumbing -----------------------------------------------------------------

def _reduce(per_item, reduction, denom=None):
    """Sum, mean (over ``denom`` items, default all) or nothing."""
    if reduction == "none":
        return per_item
    total = per_item.sum()
    if reduction == "sum":
        return total
    return total / (per_item.size if denom is None else denom)


def _grad_scale(gy, reduction, denom, shape=None):
    """The factor dL/dloss_item for each item: gy/denom, gy, or gy itself (per item)."""
    if reduction == "none":
        gy = np.asarray(gy)
        if gy.ndim == 0:        # one item (unbatched): a Python float, as below
            return gy.item()
        return gy if shape is None else gy.reshape(shape)
    # a Python float: a NumPy float64 scalar would promote float32 gradients
    gy = np.asarray(gy).item()
    if reduction != "mean":
        return gy
    # nothing to average (an empty batch, every target ignored): the loss is NaN, as
    # PyTorch's, and the gradient, over items that all weigh 0, is 0, as PyTorch's
    return gy / float(denom) if denom else 0.0


def _pair(input, target, who):
    """input and target as float arrays of one shape, or ValueError naming both shapes."""
    x = as_float(input)
    t = np.asarray(target)
    if t.shape != x.shape:
        raise ValueError(f"{who}: expected target of shape {x.shape} (the input's), got shape {t.shape}")
    return x, t.astype(x.dtype, copy=False)


def _weight(weight, n, dtype, who):
    """A per-class weight vector of length n in the input's dtype (None stays None)."""
    if weight is None:
        return None
    w = np.asarray(weight, dtype=dtype)
    if w.shape != (n,):
        raise ValueError(f"{who}: expected weight of shape ({n},), got shape {w.shape}")
    return w


def class_indices(target, n, num_classes, who, ignore_index=None):
    """Validate class-index targets: shape (n,), integral, in [0, num_classes) or ignore_index.

    Returns the indices as int64 and whether any of them is ignore_index.
    """
    t = np.asarray(target)
    if t.shape != (n,):
        raise ValueError(f"{who}: expected class indices of shape ({n},), got shape {t.shape}")
    if t.dtype.kind in "iu" and n:
        lo, hi = t.min(), t.max()               # the common case: two reductions, no masks
        if 0 <= lo and hi < num_classes:
            ignored = ignore_index is not None and 0 <= ignore_index < num_classes and \
                bool(np.any(t == ignore_index))
            return t.astype(np.int64, copy=False), ignored
    if t.dtype.kind == "f":
        bad = ~np.isfinite(t) | (t != np.round(t))
        if bad.any():
            raise ValueError(f"{who}: class indices must be integers, got {t[bad][0].item()}")
    elif t.dtype.kind not in "iu":
        raise ValueError(f"{who}: class indices must be integers, got dtype {t.dtype}")
    t = t.astype(np.int64)
    valid = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        valid |= t == ignore_index
    if not valid.all():
        raise ValueError(f"{who}: target {t[~valid][0]} is out of range for {num_classes} classes "
                         f"(expected 0 <= target < {num_classes})")
    return t, ignore_index is not None and bool(np.any(t == ignore_index))


def _logits_2d(input, who):
    x = as_float(input)
    if x.ndim != 2:
        raise ValueError(f"{who}: expected input of shape (N, C), got shape {x.shape}")
    return x


def class_rows(input, target, who, probabilities=True):
    """Scores of any class layout PyTorch takes, as rows of C classes.

    ``input`` is (N, C), (N, C, d1, ..., dk) (images, sequences: one class
    vector per position) or unbatched (C,); ``target`` holds class indices of
    the input's shape without C ((N,), (N, d1, ..., dk), or 0-d), or, with
    ``probabilities``, class probabilities of the input's own shape.  Returns
    ``(x, t, layout, probs)``: x of shape (M, C) with M = N d1 ... dk rows
    (the class dim moved last), t of shape (M,) or (M, C), ``layout`` for
    :func:`item_shaped` and :func:`input_shaped` (None for (N, C): nothing moves,
    no copy), and whether t holds probabilities.
    """
    x, t = as_float(input), np.asarray(target)
    if x.ndim == 0:
        raise ValueError(f"{who}: expected input of shape (N, C), (N, C, d1, ...) or (C,), got a scalar")
    items = x.shape[:1] + x.shape[2:] if x.ndim > 1 else ()
    probs = probabilities and t.ndim == x.ndim
    if t.shape != (x.shape if probs else items):
        also = f" or class probabilities of shape {x.shape}" if probabilities else ""
        raise ValueError(f"{who}: expected class indices of shape {items}{also} for input of "
                         f"shape {x.shape}, got shape {t.shape}")
    if x.ndim == 2:
        return x, t, None, probs
    if x.ndim == 1:                                     # unbatched: one row
        return x[None], (t[None] if probs else t.reshape(1)), (x.shape, items), probs
    C = x.shape[1]
    rows = np.moveaxis(x, 1, -1).reshape(-1, C)
    t = np.moveaxis(t, 1, -1).reshape(-1, C) if probs else t.reshape(-1)
    return rows, t, (x.shape, items), probs


def item_shaped(loss, reduction, layout):
    """Per-row losses (reduction "none") in the shape of the items, (N, d1, ..., dk) or ()."""
    if layout is None or reduction != "none":
        return loss
    return loss.reshape(layout[1])


def input_shaped(g_rows, layout):
    """dL/d(rows), of shape (M, C), back in the input's layout (the class dim at 1)."""
    if layout is None:
        return g_rows
    shape = layout[0]
    if len(shape) == 1:
        return g_rows[0]
    g = g_rows.reshape(shape[:1] + shape[2:] + shape[1:2])
    return np.ascontiguousarray(np.moveaxis(g, -1, 1))


def rows_gy(gy, layout):
    """The upstream gradient of per-item losses as one value per row."""
    return gy if layout is None or np.ndim(gy) == 0 else np.reshape(gy, -1)


def _reg_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(4, 3)).astype(dtype),
            rng.uniform(lo, hi, size=(4, 3)).astype(dtype))


def _class_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(6, 4)).astype(dtype), rng.integers(0, 4, size=6))


def _prob_sample(rng, dtype, lo, hi):
    p = rng.uniform(0.05, 0.95, size=(4, 3)).astype(dtype)
    return p, rng.uniform(0, 1, size=(4, 3)).astype(dtype)


def _simplex_sample(rng, dtype, lo, hi):
    p = rng.uniform(0.1, 1, size=(4, 3))
    y = rng.uniform(0, 1, size=(4, 3))
    return (p / p.sum(1, keepdims=True)).astype(dtype), (y / y.sum(1, keepdims=True)).astype(dtype)


def _check_ignore_index(who, ignore_index):
    check_int(who, "ignore_index", ignore_index, "an integer (a class index never to count)",
              lambda n: True)


def _loss(name, formula, derivative, sample=_reg_sample, params=None, choices=None,
          reductions=REDUCTIONS, inputs=("input", "target"), differentiable=(True, False), **fields):
    """register() with what every loss shares: (input, target), the target not differentiated
    (a loss of several inputs, as margin_ranking_loss's x1, x2, target, names them)."""
    return register(
        name, kind="loss", formula=formula, derivative=derivative,
        inputs=inputs, differentiable=differentiable,
        params={**(params or {}), "reduction": "mean"},
        choices={**(choices or {}), "reduction": reductions},
        test_params=fields.pop("test_params", ()) + ({"reduction": "sum"}, {"reduction": "none"}),
        domains=fields.pop("domains", LOSS_DOMAINS), sample=sample, **fields)


# -- regression -----------------------------------------------------------------------

@_loss("mse_loss",
       formula=r"L = \frac1n \sum_i (\hat y_i - y_i)^2",
       derivative=r"\frac{\partial L}{\partial \hat y_i} = \frac2n (\hat y_i - y_i)",
       complex_step=True,
       reference=lambda torch, x, t, reduction: torch.nn.functional.mse_loss(x, t, reduction=reduction))
def mse_loss(input, target, reduction):
    """Mean squared error."""
    x, t = _pair(input, target, "mse_loss")
    d = x - t
    return _reduce(d * d, reduction), (d, reduction)


@mse_loss.set_backward
def _mse_backward(saved, gy):
    d, reduction = saved
    return 2 * d * _grad_scale(gy, reduction, d.size), None


@_loss("half_squared_error",
       formula=r"L = \frac1N \sum_i \tfrac12 (y_i - p_i)^2",
       derivative=r"\frac{\partial L}{\partial p_i} = \frac1N (p_i - y_i)",
       complex_step=True,
       reference=lambda torch, x, t, reduction: 0.5 * torch.nn.functional.mse_loss(x, t, reduction=reduction))
def half_squared_error(input, target, reduction):
    """The halved squared error of the delta rule: its gradient is just (p - y)/N."""
    x, t = _pair(input, target, "half_squared_error")
    d = x - t
    return _reduce(0.5 * d * d, reduction), (d, reduction)


@half_squared_error.set_backward
def _half_se_backward(saved, gy):
    d, reduction = saved
    return d * _grad_scale(gy, reduction, d.size), None


@_loss("l1_loss",
       formula=r"L = \frac1n \sum_i |\hat y_i - y_i|",
       derivative=r"\frac{\partial L}{\partial \hat y_i} = \frac1n \mathrm{sign}(\hat y_i - y_i)",
       convention="derivative 0 where input == target (sign(0) = 0), as PyTorch",
       reference=lambda torch, x, t, reduction: torch.nn.functional.l1_loss(x, t, reduction=reduction))
def l1_loss(input, target, reduction):
    """Mean absolute error."""
    x, t = _pair(input, target, "l1_loss")
    d = x - t
    return _reduce(np.abs(d), reduction), (d, reduction)


@l1_loss.set_backward
def _l1_backward(saved, gy):
    d, reduction = saved
    return np.sign(d) * _grad_scale(gy, reduction, d.size), None


@_loss("huber_loss",
       formula=(r"L = \frac1n\sum_i \begin{cases} \tfrac12 d_i^2 & |d_i| \le \delta \\"
                r" \delta(|d_i| - \tfrac12\delta) & \text{otherwise}\end{cases},\ d = \hat y - y"),
       derivative=r"\frac{\partial L}{\partial \hat y_i} = \frac1n \mathrm{clip}(d_i, -\delta, \delta)",
       convention="continuously differentiable: at |d| = delta the derivative is +-delta",
       params={"delta": 1.0}, test_params=({"delta": 0.5},),
       reference=lambda torch, x, t, delta, reduction: torch.nn.functional.huber_loss(
           x, t, reduction=reduction, delta=delta),
       check_params=lambda p: check_real("huber_loss", "delta", p["delta"], "a finite number > 0",
                                         lambda d: 0 < d < math.inf))
def huber_loss(input, target, delta, reduction):
    """Quadratic near zero, linear beyond delta: robust to outliers."""
    if not delta > 0:
        raise ValueError(f"huber_loss: delta={delta!r} is not valid; expected delta > 0")
    x, t = _pair(input, target, "huber_loss")
    d = x - t
    a = np.abs(d)
    per = np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    return _reduce(per, reduction), (d, delta, reduction)


@huber_loss.set_backward
def _huber_backward(saved, gy):
    d, delta, reduction = saved
    return np.clip(d, -delta, delta) * _grad_scale(gy, reduction, d.size), None


# -- classification ----------------------------------------------------------------------

@_loss("cross_entropy",
       formula=(r"L_n = -\sum_c a_{n,c} \log \mathrm{softmax}(x_n)_c,\quad a_{n,c} = w_c\,y_{n,c}"
                r"\ (\text{one-hot or probability targets, smoothed: } (1-\varepsilon) y + \varepsilon/C)"),
       derivative=(r"\frac{\partial L_n}{\partial x_{n,k}} = p_{n,k}\textstyle\sum_c a_{n,c} - a_{n,k}"
                   r"\quad\Bigl(= p - y \text{ for one-hot } y \text{ without weights}\Bigr)"),
       sample=_class_sample,
       params={"weight": None, "ignore_index": -100, "label_smoothing": 0.0},
       test_params=({"weight": np.array([0.5, 2.0, 1.0, 1.5])}, {"ignore_index": 1},
                    {"label_smoothing": 0.1}),
       domains=((-3.0, 3.0), (-1000.0, 1000.0)),
       reference=lambda torch, x, t, reduction, **kw: torch.nn.functional.cross_entropy(
           x, t, reduction=reduction, **kw),
       check_params=lambda p: (_check_ignore_index("cross_entropy", p["ignore_index"]),
                               check_real("cross_entropy", "label_smoothing", p["label_smoothing"],
                                          "a number in [0, 1]", lambda e: 0 <= e <= 1)))
def cross_entropy(input, target, weight, ignore_index, label_smoothing, reduction):
    r"""Softmax cross-entropy on logits, fused so that backward is softmax - target.

    ``input`` is (N, C), (N, C, d1, ..., dk) or unbatched (C,) (see
    :func:`class_rows`); ``target`` is class indices of shape (N,) (resp.
    (N, d1, ..., dk), 0-d) or class probabilities of the input's shape.  ``weight`` scales each class; with class indices "mean" divides by
    the summed weights of the non-ignored targets (PyTorch's weighted mean),
    with probabilities by N.  ``label_smoothing`` mixes the target with the
    uniform distribution.  Computed through log-softmax: never log(softmax + eps).
    """
    who = "cross_entropy"
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{who}: label_smoothing={label_smoothing!r} is not valid; expected 0 <= value <= 1")
    x, t, layout, probs = class_rows(input, target, who)
    loss, saved = _cross_entropy_rows(x, t, probs, weight, ignore_index, label_smoothing, reduction)
    if layout is None:                  # (N, C): the rows' own saved state, nothing to move back
        return loss, saved
    return item_shaped(loss, reduction, layout), ("rows", layout, saved)


def _cross_entropy_rows(x, t, probs, weight, ignore_index, label_smoothing, reduction):
    """cross_entropy on rows: x of shape (n, C), t class indices (n,) or probabilities (n, C)."""
    who = "cross_entropy"
    n, C = x.shape
    w = _weight(weight, C, x.dtype, who)
    eps = label_smoothing
    if probs:                                                # probability targets
        logp, _ = log_softmax.fn(x, 1)
        a = t.astype(x.dtype, copy=False)
        if eps:
            a = a * (1 - eps) + eps / C
        if w is not None:
            a = a * w
        per = -(a * logp).sum(axis=1)
        saved = (logp, a.sum(axis=1), a, None, None, n, reduction)
        return _reduce(per, reduction, n), saved
    y, ignored = class_indices(t, n, C, who, ignore_index)
    if w is None and not eps and not ignored:
        return _plain_cross_entropy(x, y, reduction)
    logp, _ = log_softmax.fn(x, 1)
    keep = y != ignore_index
    y = np.where(keep, y, 0)                                  # any valid index; its weight is 0
    rows = np.arange(n)
    wy = (w[y] if w is not None else np.ones(n, x.dtype)) * keep
    per = -wy * logp[rows, y]
    hot, total = wy, wy.copy()                                # a = hot * onehot(y) + dense
    dense = None
    if eps:
        wc = w if w is not None else np.ones(C, x.dtype)
        dense = (eps / C) * wc * keep[:, None]
        per = (1 - eps) * per - (dense * logp).sum(axis=1)
        hot = (1 - eps) * wy
        total = hot + dense.sum(axis=1)
    saved = (logp, total, dense, hot, y, wy.sum(), reduction)
    return _reduce(per, reduction, wy.sum()), saved


def _plain_cross_entropy(x, y, reduction):
    """The common case (class indices, no weights, smoothing or ignored targets):
    L_n = log S_n - z_{n, y_n} with z = x - max and S = sum_c e^{z_c}.  Backward
    is (e^z / S - onehot(y)) * scale; the division by S is folded into the
    backward's one pass, so forward makes two passes over the logits."""
    if fused.usable(x, fused.CE_MIN_SIZE):                 # float32 logits
        per, m_logs = fused.cross_entropy_rows(x, y)
        return _reduce(per, reduction), ("fused", x, m_logs, y, reduction)
    rows = np.arange(len(y))
    z = x - x.max(axis=1, keepdims=True)
    per = -z[rows, y]
    e = np.exp(z, out=z)                                   # z is not needed any more
    s = e.sum(axis=1)
    per += np.log(s)
    return _reduce(per, reduction), ("plain", e, s, y, reduction)


@cross_entropy.set_backward
def _cross_entropy_backward(saved, gy):
    if isinstance(saved[0], str) and saved[0] == "rows":     # (N, C, d1, ...) or (C,) input
        _, layout, saved = saved
        return input_shaped(_cross_entropy_rows_backward(saved, rows_gy(gy, layout)), layout), None
    return _cross_entropy_rows_backward(saved, gy), None


def _cross_entropy_rows_backward(saved, gy):
    if isinstance(saved[0], str) and saved[0] == "fused":  # the plain path, fused (numba)
        _, x, m_logs, y, reduction = saved
        return fused.cross_entropy_grad(x, y, m_logs, _grad_scale(gy, reduction, len(y)))
    if isinstance(saved[0], str):                        # the plain path in NumPy
        _, e, s, y, reduction = saved
        scale = _grad_scale(gy, reduction, len(y), (-1, 1))
        gx = e * (scale / s[:, None])                      # p * scale in one pass, p = e / S
        gx[np.arange(len(y)), y] -= scale if np.ndim(scale) == 0 else scale[:, 0]
        return gx
    logp, total, dense, hot, y, denom, reduction = saved
    gx = np.exp(logp) * total[:, None]                        # p * sum_c a_c
    if dense is not None:
        gx -= dense
    if hot is not None:
        gx[np.arange(len(y)), y] -= hot
    return gx * _grad_scale(gy, reduction, denom, (-1, 1))


@_loss("nll_loss",
       formula=r"L_n = -w_{y_n} \log p_{n, y_n}\quad\text{(input: log-probabilities)}",
       derivative=r"\frac{\partial L_n}{\partial \log p_{n,k}} = -w_{y_n}\,[k = y_n]",
       sample=_class_sample, params={"weight": None, "ignore_index": -100},
       test_params=({"weight": np.array([0.5, 2.0, 1.0, 1.5])}, {"ignore_index": 2}),
       domains=((-6.0, 0.0),),
       reference=lambda torch, x, t, reduction, **kw: torch.nn.functional.nll_loss(
           x, t, reduction=reduction, **kw),
       check_params=lambda p: _check_ignore_index("nll_loss", p["ignore_index"]))
def nll_loss(input, target, weight, ignore_index, reduction):
    """Negative log-likelihood of class indices, on log-probabilities (use after log_softmax).

    ``input`` is (N, C), (N, C, d1, ..., dk) or unbatched (C,), ``target`` the class
    indices of shape (N,), (N, d1, ..., dk) or 0-d (see :func:`class_rows`)."""
    who = "nll_loss"
    x, target, layout, _ = class_rows(input, target, who, probabilities=False)
    n, C = x.shape
    w = _weight(weight, C, x.dtype, who)
    y, _ = class_indices(target, n, C, who, ignore_index)
    keep = y != ignore_index
    y = np.where(keep, y, 0)
    wy = (w[y] if w is not None else np.ones(n, x.dtype)) * keep
    per = -wy * x[np.arange(n), y]
    loss = item_shaped(_reduce(per, reduction, wy.sum()), reduction, layout)
    return loss, (x.shape, x.dtype, y, wy, reduction, layout)


@nll_loss.set_backward
def _nll_backward(saved, gy):
    shape, dtype, y, wy, reduction, layout = saved
    gx = np.zeros(shape, dtype)
    gx[np.arange(len(y)), y] = -wy
    return input_shaped(gx * _grad_scale(rows_gy(gy, layout), reduction, wy.sum(), (-1, 1)), layout), None


@_loss("prob_cross_entropy",
       formula=r"L_n = -\sum_c y_{n,c} \log(p_{n,c} + \epsilon)\quad\text{(input: probabilities)}",
       derivative=(r"\frac{\partial L_n}{\partial p_{n,c}} = -\frac{y_{n,c}}{p_{n,c} + \epsilon}"
                   r"\quad\text{(through softmax: } p - y \text{)}"),
       sample=_simplex_sample, params={"eps": 1e-12},
       domains=((0.0, 1.0),),
       reference=lambda torch, p, y, eps, reduction: _torch_prob_ce(torch, p, y, eps, reduction),
       check_params=lambda p: check_real("prob_cross_entropy", "eps", p["eps"], "a finite number >= 0",
                                         lambda e: 0 <= e < math.inf))
def prob_cross_entropy(input, target, eps, reduction):
    """Cross-entropy on probabilities, with eps inside the log; "mean" averages over rows.

    This is the textbook loss; chained through softmax's backward its gradient
    is p - y (up to eps).  For training, prefer cross_entropy on logits.
    """
    p, y = _pair(input, target, "prob_cross_entropy")
    if p.ndim < 1:
        raise ValueError("prob_cross_entropy: expected input of shape (..., C), got a scalar")
    per = -(y * np.log(p + eps)).sum(axis=-1)
    return _reduce(per, reduction), (p, y, eps, per.size, reduction)


@prob_cross_entropy.set_backward
def _prob_ce_backward(saved, gy):
    p, y, eps, rows, reduction = saved
    scale = _grad_scale(gy, reduction, rows)
    if reduction == "none":
        scale = np.expand_dims(scale, -1)
    return -y / (p + eps) * scale, None


def _torch_prob_ce(torch, p, y, eps, reduction):
    per = -(y * torch.log(p + eps)).sum(-1)
    return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]


@_loss("binary_cross_entropy",
       formula=r"L_i = -w_i\bigl(y_i \log p_i + (1 - y_i)\log(1 - p_i)\bigr),\ \log \text{ clamped at } -100",
       derivative=r"\frac{\partial L_i}{\partial p_i} = w_i \frac{p_i - y_i}{\max(p_i(1 - p_i), 10^{-12})}",
       convention="p(1-p) is clamped at 1e-12 so the gradient stays finite at p = 0 and p = 1, as PyTorch",
       sample=_prob_sample, params={"weight": None}, domains=((0.0, 1.0),),
       reference=lambda torch, p, y, reduction, weight: torch.nn.functional.binary_cross_entropy(
           p, y, weight=weight, reduction=reduction))
def binary_cross_entropy(input, target, weight, reduction):
    """Binary cross-entropy on probabilities in [0, 1]; each log is clamped at -100 like PyTorch."""
    who = "binary_cross_entropy"
    p, y = _pair(input, target, who)
    outside = (p < 0) | (p > 1)
    if outside.any():
        raise ValueError(f"{who}: input must be probabilities in [0, 1], got {p[outside][0].item()}")
    with np.errstate(divide="ignore"):                        # log(0) = -inf, clamped next
        per = -(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log1p(-p), -100))
    w = None if weight is None else np.broadcast_to(np.asarray(weight, p.dtype), p.shape)
    if w is not None:
        per = per * w
    return _reduce(per, reduction), (p, y, w, reduction)


@binary_cross_entropy.set_backward
def _bce_backward(saved, gy):
    p, y, w, reduction = saved
    gx = (p - y) / np.maximum(p * (1 - p), _BCE_EPS)
    if w is not None:
        gx = gx * w
    return gx * _grad_scale(gy, reduction, p.size), None


@_loss("binary_cross_entropy_with_logits",
       formula=(r"L_i = -w_i\bigl(r\,y_i \log\sigma(x_i) + (1 - y_i)\log(1 - \sigma(x_i))\bigr)"
                r"\quad(r = \text{pos\_weight})"),
       derivative=r"\frac{\partial L_i}{\partial x_i} = w_i\bigl((1 + (r - 1) y_i)\,\sigma(x_i) - r\,y_i\bigr)",
       params={"weight": None, "pos_weight": None},
       test_params=({"pos_weight": np.array([0.5, 2.0, 3.0])},),
       domains=((-6.0, 6.0), (-1000.0, 1000.0)),
       sample=lambda rng, dtype, lo, hi: (rng.uniform(lo, hi, size=(4, 3)).astype(dtype),
                                          rng.uniform(0, 1, size=(4, 3)).astype(dtype)),
       reference=lambda torch, x, y, reduction, weight, pos_weight:
           torch.nn.functional.binary_cross_entropy_with_logits(
               x, y, weight=weight, pos_weight=pos_weight, reduction=reduction))
def binary_cross_entropy_with_logits(input, target, weight, pos_weight, reduction):
    """Sigmoid + binary cross-entropy fused and stable for any logit:
    (1 - y) x + (1 + (r - 1) y) (log(1 + e^{-|x|}) + max(-x, 0))."""
    x, y = _pair(input, target, "binary_cross_entropy_with_logits")
    lw = 1 if pos_weight is None else 1 + (np.asarray(pos_weight, x.dtype) - 1) * y
    softplus_neg = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0)     # log(1 + e^{-x})
    per = (1 - y) * x + lw * softplus_neg
    w = None if weight is None else np.broadcast_to(np.asarray(weight, x.dtype), x.shape)
    if w is not None:
        per = per * w
    return _reduce(per, reduction), (x, y, lw, pos_weight, w, reduction)


@binary_cross_entropy_with_logits.set_backward
def _bce_logits_backward(saved, gy):
    x, y, lw, pos_weight, w, reduction = saved
    r = 1 if pos_weight is None else np.asarray(pos_weight, x.dtype)
    gx = lw * stable_sigmoid(x) - r * y
    if w is not None:
        gx = gx * w
    return gx * _grad_scale(gy, reduction, x.size), None


@_loss("multi_margin_loss",
       formula=(r"L_n = \frac{1}{C}\sum_{i \ne y_n} w_{y_n} \max(0,\ m - x_{n,y_n} + x_{n,i})^p"),
       derivative=(r"\frac{\partial L_n}{\partial x_{n,i}} = \frac{p\,w_{y_n}}{C} h_i^{p-1} [h_i > 0],"
                   r"\quad \frac{\partial L_n}{\partial x_{n,y_n}} = -\sum_{i \ne y_n} \frac{\partial L_n}{\partial x_{n,i}}"),
       convention="derivative 0 where the hinge is exactly 0 (h_i = 0), as PyTorch",
       sample=_class_sample, params={"p": 1, "margin": 1.0, "weight": None}, choices={"p": (1, 2)},
       test_params=({"p": 2}, {"margin": 0.5, "weight": np.array([0.5, 2.0, 1.0, 1.5])},
                    {"p": 2, "weight": np.array([0.5, 2.0, 1.0, 1.5])}),
       reference=lambda torch, x, t, reduction, **kw: torch.nn.functional.multi_margin_loss(
           x, t, reduction=reduction, **kw),
       check_params=lambda p: (check_int("multi_margin_loss", "p", p["p"], "1 or 2", lambda n: n in (1, 2)),
                               check_real("multi_margin_loss", "margin", p["margin"], "a finite number")))
def multi_margin_loss(input, target, p, margin, weight, reduction):
    """The multi-class SVM hinge loss (PyTorch's MultiMarginLoss), p in {1, 2}."""
    who = "multi_margin_loss"
    x = _logits_2d(input, who)
    n, C = x.shape
    y, _ = class_indices(target, n, C, who)
    w = _weight(weight, C, x.dtype, who)
    rows = np.arange(n)
    h = margin - x[rows, y][:, None] + x                     # h_{n,i}
    h[rows, y] = 0                                          # the true class is not a violation
    active = h > 0
    hp = np.where(active, h, 0) ** p
    wy = w[y][:, None] if w is not None else 1
    per = (wy * hp).sum(axis=1) / C
    return _reduce(per, reduction), (h, active, y, wy, p, C, reduction)


@multi_margin_loss.set_backward
def _multi_margin_backward(saved, gy):
    h, active, y, wy, p, C, reduction = saved
    g = np.where(active, p * h ** (p - 1), 0) * wy / C      # dL_n/dx_{n,i}, i != y
    g[np.arange(len(y)), y] = -g.sum(axis=1)
    return g * _grad_scale(gy, reduction, len(y), (-1, 1)), None


# -- the rest of torch.nn's losses (issue 21) ----------------------------------------------
# Where PyTorch clamps (max(0, h)), the gradient passes at h = 0 exactly, as PyTorch's
# clamp_min backward (h >= 0); a strict h > 0 is said where PyTorch's kernel uses it.

def _sign_sample(rng, dtype, lo, hi):
    """Scores and targets in {-1, +1}."""
    return (rng.uniform(lo, hi, size=(4, 3)).astype(dtype),
            rng.choice([-1.0, 1.0], size=(4, 3)).astype(dtype))


def _positive(who, name):
    return lambda p: check_real(who, name, p[name], "a finite number >= 0", lambda v: 0 <= v < math.inf)


def _bools(who, *names):
    return lambda p: [check_bool(who, n, p[n]) for n in names]


def _same_shape(who, **arrays):
    """ValueError naming every shape unless all arrays have one shape."""
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} of shape {s}" for k, s in shapes.items())
        raise ValueError(f"{who}: expected {', '.join(shapes)} of one shape, got {listed}")


@_loss("smooth_l1_loss",
       formula=(r"L = \frac1n\sum_i \begin{cases} \frac{d_i^2}{2\beta} & |d_i| < \beta \\"
                r" |d_i| - \tfrac12\beta & \text{otherwise}\end{cases},\ d = \hat y - y"),
       derivative=(r"\frac{\partial L}{\partial \hat y_i} = \frac1n \mathrm{clip}\Bigl(\frac{d_i}{\beta}, -1, 1\Bigr)"
                   r"\quad(\beta = 0:\ \frac1n \mathrm{sign}(d_i))"),
       convention="continuously differentiable for beta > 0; beta = 0 is the L1 loss, with sign(0) = 0 as PyTorch",
       params={"beta": 1.0}, test_params=({"beta": 0.5}, {"beta": 0.0}),
       reference=lambda torch, x, t, beta, reduction: torch.nn.functional.smooth_l1_loss(
           x, t, reduction=reduction, beta=beta),
       check_params=_positive("smooth_l1_loss", "beta"))
def smooth_l1_loss(input, target, beta, reduction):
    """Quadratic (d^2 / 2 beta) for |d| < beta, linear beyond: Huber's loss divided by
    beta.  input, target: any one shape.  saved: (d, beta, reduction)."""
    x, t = _pair(input, target, "smooth_l1_loss")
    d = x - t
    a = np.abs(d)
    per = a if beta == 0 else np.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)
    return _reduce(per, reduction), (d, beta, reduction)


@smooth_l1_loss.set_backward
def _smooth_l1_backward(saved, gy):
    d, beta, reduction = saved
    g = np.sign(d) if beta == 0 else np.clip(d / beta, -1, 1)
    return g * _grad_scale(gy, reduction, d.size), None


@_loss("soft_margin_loss",
       formula=r"L = \frac1n\sum_i \log\bigl(1 + e^{-y_i x_i}\bigr),\quad y_i \in \{-1, 1\}",
       derivative=r"\frac{\partial L}{\partial x_i} = -\frac{y_i}{n}\,\sigma(-y_i x_i)",
       sample=_sign_sample,
       reference=lambda torch, x, t, reduction: _torch_reduce(
           torch.logaddexp(torch.zeros_like(x), -t * x), reduction))
def soft_margin_loss(input, target, reduction):
    """The logistic loss of a margin y x, as softplus(-y x) = logaddexp(0, -y x): finite for
    every margin (PyTorch's log1p(exp(-y x)) overflows to inf below -710).  input, target:
    one shape.  saved: (y, z = -y x, reduction)."""
    x, y = _pair(input, target, "soft_margin_loss")
    z = -y * x
    return _reduce(np.logaddexp(0, z), reduction), (y, z, reduction)


@soft_margin_loss.set_backward
def _soft_margin_backward(saved, gy):
    y, z, reduction = saved
    return -y * stable_sigmoid(z) * _grad_scale(gy, reduction, z.size), None


def _torch_reduce(per, reduction):
    return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]


def _kl_sample(rng, dtype, lo, hi):
    """Log-probabilities (any real) and target probabilities in [0, 1], zeros among them."""
    t = rng.uniform(0, 1, size=(4, 3))
    t[0, 0] = 0.0
    return rng.uniform(lo, hi, size=(4, 3)).astype(dtype), t.astype(dtype)


@_loss("kl_div",
       formula=(r"L = \frac1n\sum_i t_i(\log t_i - x_i)\quad(x: \text{log-probabilities; } "
                r"\text{log\_target: } e^{t_i}(t_i - x_i))"),
       derivative=r"\frac{\partial L}{\partial x_i} = -\frac{t_i}{n}\quad(\text{log\_target: } -\frac{e^{t_i}}{n})",
       convention="0 log 0 = 0 (a zero target adds nothing), as PyTorch's xlogy",
       sample=_kl_sample, params={"log_target": False}, reductions=("mean", "batchmean", "sum", "none"),
       test_params=({"log_target": True}, {"reduction": "batchmean"}),
       reference=lambda torch, x, t, log_target, reduction: torch.nn.functional.kl_div(
           x, t, reduction=reduction, log_target=log_target),
       check_params=_bools("kl_div", "log_target"))
def kl_div(input, target, log_target, reduction):
    """KL(t || q) summed pointwise, with input = log q (as PyTorch's kl_div).  "mean" divides
    by every element, "batchmean" by the batch size (input.shape[0]; a 0-d input: the sum),
    which is the true KL divergence per sample.  input, target: one shape.
    saved: (dL/dx per element before the reduction, denominator, reduction)."""
    x, t = _pair(input, target, "kl_div")
    if log_target:
        et = np.exp(t)
        per, g = et * (t - x), -et
    else:
        with np.errstate(divide="ignore", invalid="ignore"):     # 0 log 0 is taken as 0 next
            tlogt = np.where(t == 0, 0, t * np.log(t))
        per, g = tlogt - t * x, -t
    if reduction == "batchmean":
        denom = x.shape[0] if x.ndim else 1
        return _reduce(per, "mean", denom), (g, denom, "mean")
    return _reduce(per, reduction), (g, per.size, reduction)


@kl_div.set_backward
def _kl_div_backward(saved, gy):
    g, denom, reduction = saved
    return g * _grad_scale(gy, reduction, denom), None


@_loss("poisson_nll_loss",
       formula=(r"L = \frac1n\sum_i e^{x_i} - t_i x_i\quad(\text{log\_input; otherwise } "
                r"x_i - t_i \log(x_i + \epsilon))\ [+\ t \log t - t + \tfrac12\log(2\pi t)\ \text{if full},\ t > 1]"),
       derivative=(r"\frac{\partial L}{\partial x_i} = \frac1n\bigl(e^{x_i} - t_i\bigr)"
                   r"\quad\Bigl(\text{otherwise } \frac1n\Bigl(1 - \frac{t_i}{x_i + \epsilon}\Bigr)\Bigr)"),
       convention="the Stirling term of full=True depends on the target only: no gradient",
       sample=lambda rng, dtype, lo, hi: (rng.uniform(lo, hi, size=(4, 3)).astype(dtype),
                                          rng.poisson(2.0, size=(4, 3)).astype(dtype)),
       params={"log_input": True, "full": False, "eps": 1e-8},
       test_params=({"full": True}, {"log_input": False}, {"log_input": False, "full": True}),
       domains=((0.0, 3.0), (0.0, 30.0)),      # log_input=False needs a rate x >= 0
       reference=lambda torch, x, t, log_input, full, eps, reduction: torch.nn.functional.poisson_nll_loss(
           x, t, log_input=log_input, full=full, eps=eps, reduction=reduction),
       check_params=lambda p: (_bools("poisson_nll_loss", "log_input", "full")(p),
                               _positive("poisson_nll_loss", "eps")(p)))
def poisson_nll_loss(input, target, log_input, full, eps, reduction):
    """The negative log-likelihood of counts t under Poisson(rate), without the constant
    log t! (full=True adds Stirling's approximation of it where t > 1, as PyTorch).  The
    rate is e^x (log_input, the default) or x itself.  input, target: one shape.
    saved: (dL/dx per element, reduction)."""
    x, t = _pair(input, target, "poisson_nll_loss")
    if log_input:
        ex = np.exp(x)
        per, g = ex - t * x, ex - t
    else:
        per, g = x - t * np.log(x + eps), 1 - t / (x + eps)
    if full:
        tt = np.where(t <= 1, 2, t)                       # any t > 1: the term is masked there
        stirling = tt * np.log(tt) - tt + 0.5 * np.log(2 * math.pi * tt)
        per = per + np.where(t <= 1, 0, stirling)
    return _reduce(per, reduction), (g, reduction)


@poisson_nll_loss.set_backward
def _poisson_nll_backward(saved, gy):
    g, reduction = saved
    return g * _grad_scale(gy, reduction, g.size), None


def _gaussian_sample(rng, dtype, lo, hi):
    """Means, targets and one variance per row (var (4, 1): broadcast over the features)."""
    return (rng.uniform(lo, hi, size=(4, 3)).astype(dtype), rng.uniform(lo, hi, size=(4, 3)).astype(dtype),
            rng.uniform(0.2, 2.0, size=(4, 1)).astype(dtype))


def _gaussian_var(var, x, who):
    """var as an array that broadcasts against input x by PyTorch's rules: x's shape,
    x's shape without the last dim (a trailing 1 is added), or x's shape with one dim of
    size 1 (homoscedastic along it); a number is one variance for all."""
    v = np.asarray(var, dtype=x.dtype)
    if v.ndim == 0:
        return v
    if v.shape == x.shape:
        return v
    if v.shape == x.shape[:-1]:
        return v[..., None]
    if v.ndim == x.ndim and sum(b for a, b in zip(x.shape, v.shape) if a != b) == 1:
        return v
    raise ValueError(f"{who}: var of shape {v.shape} is not valid for input of shape {x.shape}; expected "
                     f"{x.shape}, {x.shape[:-1]}, or {x.shape} with one dim of size 1")


@_loss("gaussian_nll_loss",
       formula=(r"L = \frac1n\sum_i \tfrac12\Bigl(\log v_i + \frac{(x_i - t_i)^2}{v_i}\Bigr)"
                r"\ [+\ \tfrac12\log 2\pi \text{ if full}],\quad v = \max(\mathrm{var}, \epsilon)"),
       derivative=(r"\frac{\partial L}{\partial x_i} = \frac{x_i - t_i}{n\,v_i},\quad"
                   r"\frac{\partial L}{\partial v_i} = \frac{1}{2n}\Bigl(\frac{1}{v_i} - \frac{(x_i - t_i)^2}{v_i^2}\Bigr)"
                   r"\ (\text{summed over the dims var is broadcast along})"),
       convention="var is clamped at eps without differentiating the clamp, as PyTorch (its clamp runs "
                  "under no_grad): dL/dvar is the derivative at the clamped value",
       inputs=("input", "target", "var"), differentiable=(True, False, True),
       sample=_gaussian_sample, params={"full": False, "eps": 1e-6}, test_params=({"full": True},),
       reference=lambda torch, x, t, v, full, eps, reduction: torch.nn.functional.gaussian_nll_loss(
           x, t, v, full=full, eps=eps, reduction=reduction),
       check_params=lambda p: (_bools("gaussian_nll_loss", "full")(p), _positive("gaussian_nll_loss", "eps")(p)))
def gaussian_nll_loss(input, target, var, full, eps, reduction):
    """The negative log-likelihood of t under N(input, var), up to a constant (full=True adds
    it).  input, target: one shape; var: see :func:`_gaussian_var`; negative var entries are
    refused.  saved: (d = x - t, v, var's shape, reduction)."""
    who = "gaussian_nll_loss"
    x, t = _pair(input, target, who)
    v = _gaussian_var(var, x, who)
    if np.any(v < 0):
        raise ValueError(f"{who}: var has a negative entry ({v[v < 0].flat[0].item()}); expected var >= 0")
    v = np.maximum(v, eps).astype(x.dtype, copy=False)
    d = x - t
    per = 0.5 * (np.log(v) + d * d / v)
    if full:
        per = per + 0.5 * math.log(2 * math.pi)
    return _reduce(per, reduction), (d, v, np.shape(var), reduction)


@gaussian_nll_loss.set_backward
def _gaussian_nll_backward(saved, gy):
    d, v, var_shape, reduction = saved
    s = _grad_scale(gy, reduction, d.size)
    gv = 0.5 * (1 / v - d * d / (v * v)) * s
    axes = tuple(i for i in range(d.ndim) if v.ndim == 0 or (v.shape[i] == 1 and d.shape[i] != 1))
    gv = gv.sum(axis=axes, keepdims=v.ndim > 0).reshape(var_shape)
    return d / v * s, None, gv


def _pair_and_target_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=6).astype(dtype), rng.uniform(lo, hi, size=6).astype(dtype),
            rng.choice([-1.0, 1.0], size=6).astype(dtype))


@_loss("margin_ranking_loss",
       formula=r"L = \frac1n\sum_i \max\bigl(0,\ m - y_i (x^{(1)}_i - x^{(2)}_i)\bigr),\quad y_i \in \{-1, 1\}",
       derivative=(r"\frac{\partial L}{\partial x^{(1)}_i} = -\frac{y_i}{n}[h_i \ge 0] = "
                   r"-\frac{\partial L}{\partial x^{(2)}_i},\quad h_i = m - y_i (x^{(1)}_i - x^{(2)}_i)"),
       convention="at h = 0 the gradient passes (h >= 0), as PyTorch's clamp_min",
       inputs=("input1", "input2", "target"), differentiable=(True, True, False),
       sample=_pair_and_target_sample, params={"margin": 0.0}, test_params=({"margin": 0.5},),
       reference=lambda torch, x1, x2, t, margin, reduction: torch.nn.functional.margin_ranking_loss(
           x1, x2, t, margin=margin, reduction=reduction),
       check_params=lambda p: check_real("margin_ranking_loss", "margin", p["margin"], "a finite number"))
def margin_ranking_loss(input1, input2, target, margin, reduction):
    """The pairwise ranking hinge: y = 1 wants x1 above x2 by the margin, y = -1 below.
    input1, input2, target: one shape.  saved: (dL/dx1 per element, reduction)."""
    who = "margin_ranking_loss"
    _same_shape(who, input1=input1, input2=input2, target=target)
    x1, x2 = as_float(input1), as_float(input2)
    y = np.asarray(target).astype(x1.dtype, copy=False)
    h = margin - y * (x1 - x2)
    per = np.maximum(h, 0)
    return _reduce(per, reduction), (-y * (h >= 0), reduction)


@margin_ranking_loss.set_backward
def _margin_ranking_backward(saved, gy):
    g1, reduction = saved
    g1 = g1 * _grad_scale(gy, reduction, g1.size)
    return g1, -g1, None


@_loss("hinge_embedding_loss",
       formula=(r"L = \frac1n\sum_i \begin{cases} x_i & y_i = 1 \\ \max(0,\ m - x_i) & y_i = -1\end{cases}"
                r"\quad(x: \text{distances})"),
       derivative=r"\frac{\partial L}{\partial x_i} = \frac1n\begin{cases} 1 & y_i = 1 \\ -[m - x_i \ge 0] & y_i = -1\end{cases}",
       convention="at x = margin the gradient passes (m - x >= 0), as PyTorch's clamp_min; a target "
                  "other than 1 and -1 counts in both branches, as PyTorch",
       sample=_sign_sample, params={"margin": 1.0}, test_params=({"margin": 0.5},),
       reference=lambda torch, x, t, margin, reduction: torch.nn.functional.hinge_embedding_loss(
           x, t, margin=margin, reduction=reduction),
       check_params=lambda p: check_real("hinge_embedding_loss", "margin", p["margin"], "a finite number"))
def hinge_embedding_loss(input, target, margin, reduction):
    """Distances x of similar pairs (y = 1) are pulled to 0, of dissimilar ones (y = -1)
    pushed beyond the margin.  input, target: one shape.  saved: (dL/dx per element, reduction)."""
    x, y = _pair(input, target, "hinge_embedding_loss")
    pos, neg = y != -1, y != 1
    h = margin - x
    per = np.where(neg, np.maximum(h, 0), 0) + np.where(pos, x, 0)
    g = pos.astype(x.dtype) - (neg & (h >= 0))
    return _reduce(per, reduction), (g, reduction)


@hinge_embedding_loss.set_backward
def _hinge_embedding_backward(saved, gy):
    g, reduction = saved
    return g * _grad_scale(gy, reduction, g.size), None


_COS_EPS = 1e-12          # PyTorch's EPSILON, added to each squared norm


def _cosine_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(4, 3)).astype(dtype), rng.uniform(lo, hi, size=(4, 3)).astype(dtype),
            rng.choice([-1.0, 1.0], size=4).astype(dtype))


@_loss("cosine_embedding_loss",
       formula=(r"L = \frac1N\sum_n \begin{cases} 1 - c_n & y_n = 1 \\ \max(0,\ c_n - m) & y_n = -1\end{cases},"
                r"\quad c_n = \frac{\langle a_n, b_n\rangle}{\sqrt{(\|a_n\|^2 + \epsilon)(\|b_n\|^2 + \epsilon)}}"),
       derivative=(r"\frac{\partial c_n}{\partial a_n} = \frac{b_n}{\sqrt{(\|a_n\|^2 + \epsilon)(\|b_n\|^2 + \epsilon)}}"
                   r" - c_n \frac{a_n}{\|a_n\|^2 + \epsilon},\quad \frac{\partial L}{\partial a_n} = \frac{1}{N}"
                   r"\begin{cases} -1 & y_n = 1 \\ [c_n - m \ge 0] & y_n = -1 \end{cases} \cdot \frac{\partial c_n}{\partial a_n}"),
       convention="at c = margin the gradient passes (c - m >= 0), as PyTorch's clamp_min; eps = 1e-12 in "
                  "each squared norm keeps a zero vector finite",
       inputs=("input1", "input2", "target"), differentiable=(True, True, False),
       sample=_cosine_sample, params={"margin": 0.0}, test_params=({"margin": 0.3},),
       reference=lambda torch, a, b, t, margin, reduction: torch.nn.functional.cosine_embedding_loss(
           a, b, t, margin=margin, reduction=reduction),
       check_params=lambda p: check_real("cosine_embedding_loss", "margin", p["margin"], "a finite number"))
def cosine_embedding_loss(input1, input2, target, margin, reduction):
    """Rows a_n, b_n of similar pairs (y = 1) are pulled to cosine 1, of dissimilar ones
    pushed to cosine <= margin.  input1, input2: (N, D) or unbatched (D,); target: (N,) or ().
    saved: (a, b, c, 1/sqrt(|a|^2 |b|^2), |a|^2, |b|^2, dL/dc per row, reduction)."""
    who = "cosine_embedding_loss"
    _same_shape(who, input1=input1, input2=input2)
    a, b = as_float(input1), as_float(input2)
    y = np.asarray(target)
    if a.ndim not in (1, 2) or y.shape != a.shape[:-1]:
        raise ValueError(f"{who}: expected inputs of shape (N, D) or (D,) and target of shape (N,) or (), "
                         f"got inputs of shape {a.shape} and target of shape {y.shape}")
    y = y.astype(a.dtype, copy=False)
    aa = (a * a).sum(-1) + _COS_EPS
    bb = (b * b).sum(-1) + _COS_EPS
    r = 1 / np.sqrt(aa * bb)
    c = (a * b).sum(-1) * r
    per = np.where(y == 1, 1 - c, 0) + np.where(y == -1, np.maximum(c - margin, 0), 0)
    dc = (y == -1) * (c - margin >= 0) - (y == 1).astype(a.dtype)
    return _reduce(per, reduction), (a, b, c, r, aa, bb, dc.astype(a.dtype), reduction)


@cosine_embedding_loss.set_backward
def _cosine_embedding_backward(saved, gy):
    a, b, c, r, aa, bb, dc, reduction = saved
    w = (dc * _grad_scale(gy, reduction, dc.size))[..., None]
    c, r = c[..., None], r[..., None]
    return w * (b * r - c * a / aa[..., None]), w * (a * r - c * b / bb[..., None]), None


@_loss("multilabel_soft_margin_loss",
       formula=(r"L_n = -\frac1C\sum_c w_c\bigl(y_{n,c}\log\sigma(x_{n,c}) + (1 - y_{n,c})\log\sigma(-x_{n,c})\bigr)"),
       derivative=r"\frac{\partial L_n}{\partial x_{n,c}} = \frac{w_c}{C}\bigl(\sigma(x_{n,c}) - y_{n,c}\bigr)",
       sample=lambda rng, dtype, lo, hi: (rng.uniform(lo, hi, size=(4, 3)).astype(dtype),
                                          rng.integers(0, 2, size=(4, 3))),
       params={"weight": None}, test_params=({"weight": np.array([0.5, 2.0, 1.5])},),
       reference=lambda torch, x, t, weight, reduction: torch.nn.functional.multilabel_soft_margin_loss(
           x, t, weight=weight, reduction=reduction))
def multilabel_soft_margin_loss(input, target, weight, reduction):
    """One binary cross-entropy on logits per class, averaged over the C classes (the last
    dim); "mean" then averages over the samples.  input, target: (..., C), target 0 or 1.
    Through log(1 + e^z) = logaddexp(0, z): finite for every logit.
    saved: (x, y, w, C, reduction)."""
    who = "multilabel_soft_margin_loss"
    x, y = _pair(input, target, who)
    if x.ndim == 0:
        raise ValueError(f"{who}: expected input of shape (N, C) or (C,), got a scalar")
    C = x.shape[-1]
    w = _weight(weight, C, x.dtype, who)
    per = y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)    # -log sigma(x), -log sigma(-x)
    if w is not None:
        per = per * w
    return _reduce(per.sum(axis=-1) / C, reduction), (x, y, w, C, reduction)


@multilabel_soft_margin_loss.set_backward
def _multilabel_soft_margin_backward(saved, gy):
    x, y, w, C, reduction = saved
    g = (stable_sigmoid(x) - y) / C
    if w is not None:
        g = g * w
    s = _grad_scale(gy, reduction, x[..., 0].size)
    return g * (s[..., None] if np.ndim(s) else s), None


def _multilabel_sample(rng, dtype, lo, hi):
    """Scores (4, 5) and label lists padded with -1 (the first -1 ends a row's labels)."""
    t = np.full((4, 5), -1)
    for n, k in enumerate([1, 2, 0, 4]):
        t[n, :k] = rng.permutation(5)[:k]
    t[0, 2] = 3                        # after the terminating -1: ignored, as PyTorch
    return rng.uniform(lo, hi, size=(4, 5)).astype(dtype), t


@_loss("multilabel_margin_loss",
       formula=(r"L_n = \frac1C\sum_{j \in Y_n}\sum_{i \notin Y_n} \max\bigl(0,\ 1 - (x_{n,j} - x_{n,i})\bigr)"
                r"\quad(Y_n: \text{the labels before the first } -1)"),
       derivative=(r"\frac{\partial L_n}{\partial x_{n,i}} = \frac1C\sum_{j \in Y_n}[h_{j,i} > 0]\ (i \notin Y_n),\quad"
                   r"\frac{\partial L_n}{\partial x_{n,j}} = -\frac1C\sum_{i \notin Y_n}[h_{j,i} > 0]\ (j \in Y_n)"),
       convention="derivative 0 where the hinge is exactly 0 (h = 0), as PyTorch's kernel (h > 0)",
       sample=_multilabel_sample,
       reference=lambda torch, x, t, reduction: torch.nn.functional.multilabel_margin_loss(
           x, t, reduction=reduction))
def multilabel_margin_loss(input, target, reduction):
    """The multi-label hinge: every label j of a sample should score 1 above every
    non-label i.  input: (N, C) or unbatched (C,); target: class indices of the same shape,
    the labels first, ended by -1 (what follows the first -1 is ignored).
    saved: (hinge mask (N, C slots, C), label slot mask, labels, dtype, unbatched, reduction)."""
    who = "multilabel_margin_loss"
    x, t = as_float(input), np.asarray(target)
    if x.ndim not in (1, 2) or t.shape != x.shape:
        raise ValueError(f"{who}: expected input of shape (N, C) or (C,) and target of its shape, got "
                         f"input of shape {x.shape} and target of shape {t.shape}")
    unbatched = x.ndim == 1
    x2, t2 = (x[None], t[None]) if unbatched else (x, t)
    N, C = x2.shape
    if t2.dtype.kind not in "iu" or (t2.size and (t2.min() < -1 or t2.max() >= C)):
        raise ValueError(f"{who}: target must hold integer class indices in [0, {C}) or -1, got "
                         f"dtype {t2.dtype}" + (f", values in [{t2.min()}, {t2.max()}]" if t2.size else ""))
    ended = t2 == -1
    first = np.where(ended.any(axis=1), ended.argmax(axis=1), C)
    slot = np.arange(C)[None, :] < first[:, None]                   # (N, C): a label slot in use
    labels = np.where(slot, t2, 0)
    is_label = np.zeros((N, C), bool)
    is_label[np.nonzero(slot)[0], labels[slot]] = True
    xj = np.take_along_axis(x2, labels, axis=1)                     # x_{n, y_j}
    h = 1 - xj[:, :, None] + x2[:, None, :]                         # (N, j slot, i)
    active = slot[:, :, None] & ~is_label[:, None, :] & (h > 0)
    per = np.where(active, h, 0).sum(axis=(1, 2)) / C
    if unbatched:
        per = per[0]
    return _reduce(per, reduction), (active, labels, x.dtype, unbatched, reduction)


@multilabel_margin_loss.set_backward
def _multilabel_margin_backward(saved, gy):
    active, labels, dtype, unbatched, reduction = saved
    N, _, C = active.shape
    s = _grad_scale(gy, reduction, N)
    s = np.reshape(s, (-1, 1)) if np.ndim(s) else s
    a = active.astype(dtype)
    g = a.sum(axis=1)                                            # +1 per violated (j, i) at i
    np.add.at(g, (np.arange(N)[:, None], labels), -a.sum(axis=2))   # -1 at y_j (slots unused: 0)
    g = g * (s / C)
    return (g[0] if unbatched else g), None
