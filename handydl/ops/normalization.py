r"""Batch normalization, layer normalization and the Lp norm.

Batch and layer norm share one derivation.  With
:math:`\hat x = (x - \mu)/\sigma`, :math:`\sigma = \sqrt{\mathrm{var} + \epsilon}`,
:math:`y = \gamma \hat x + \beta`, and :math:`g = \gamma\, g_y` (dL/dx-hat),
averaging over the M values that share a mean and a variance:

.. math::  g_x = \frac{1}{\sigma}\Bigl(g - \overline{g} - \hat x\,\overline{g \hat x}\Bigr)

where the bars are means over those M values.
"""
from __future__ import annotations

from typing import NamedTuple

import math

import numpy as np

from .registry import as_float, check_int, check_real, register


class NormSaved(NamedTuple):
    xhat: np.ndarray
    inv_std: np.ndarray
    weight: np.ndarray
    axes: tuple             # axes the statistics were taken over
    param_axes: tuple       # axes weight/bias were broadcast over
    mean: np.ndarray        # batch statistics, read by BatchNorm1d for its running stats
    var: np.ndarray


def _normalize_backward(saved: NormSaved, gy):
    """The compact backward shared by batch and layer norm (see the module docstring)."""
    xhat, inv_std, weight, axes, param_axes = saved[:5]
    g = gy * weight
    g_mean = g.mean(axis=axes, keepdims=True)
    gxhat_mean = (g * xhat).mean(axis=axes, keepdims=True)
    gx = inv_std * (g - g_mean - xhat * gxhat_mean)
    return gx, (gy * xhat).sum(axis=param_axes), gy.sum(axis=param_axes)


def check_eps(who, eps):
    """eps >= 0 and finite, as PyTorch accepts eps = 0 (a constant feature then divides by 0)."""
    check_real(who, "eps", eps, "a finite number >= 0", lambda e: 0 <= e < math.inf)


def _bn_axes(x, weight, who):
    """Statistics axes for (N, C) or (N, C, L) input, after shape checks."""
    if x.ndim not in (2, 3):
        raise ValueError(f"{who}: expected input of shape (N, C) or (N, C, L), got shape {x.shape}")
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"{who}: expected {weight.shape[0]} features on dim 1, "
                         f"got input of shape {x.shape}")
    return (0,) if x.ndim == 2 else (0, 2)


def _channel(v, x):
    """A per-feature vector shaped to broadcast along dim 1 of x."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _bn_sample(rng, dtype, lo, hi):
    x = rng.uniform(lo, hi, size=(6, 3)).astype(dtype)
    weight = rng.uniform(0.5, 1.5, size=3).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    return x, weight, bias


@register(
    "batch_norm", kind="normalization",
    formula=(r"y = \gamma \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}} + \beta,\quad"
             r"\mu_B = \tfrac1M\textstyle\sum x,\ \sigma_B^2 = \tfrac1M\sum (x - \mu_B)^2"),
    derivative=(r"g_x = \frac{1}{\sqrt{\sigma_B^2+\epsilon}}\Bigl(\gamma g_y - \overline{\gamma g_y}"
                r" - \hat x\,\overline{\gamma g_y \hat x}\Bigr),\ "
                r"\frac{\partial L}{\partial\gamma} = \textstyle\sum g_y \hat x,\ "
                r"\frac{\partial L}{\partial\beta} = \sum g_y"),
    convention="training mode: batch statistics with the biased variance",
    inputs=("x", "weight", "bias"), params={"eps": 1e-5}, complex_step=True,
    check_params=lambda p: check_eps("batch_norm", p["eps"]),
    domains=((-3.0, 3.0), (100.0, 1000.0)), sample=_bn_sample,
    reference=lambda torch, x, weight, bias, eps: torch.nn.functional.batch_norm(
        x, None, None, weight, bias, training=True, eps=eps),
)
def batch_norm(x, weight, bias, eps):
    """Batch normalization in training mode over dim 0 (and 2 for (N, C, L) input).

    The op is pure; BatchNorm1d updates its running statistics from
    ``saved.mean`` and ``saved.var``.
    """
    x, weight, bias = as_float(x), as_float(weight), as_float(bias)
    axes = _bn_axes(x, weight, "batch_norm")
    m = x.size // x.shape[1]
    if m < 2:
        raise ValueError(f"batch_norm: expected more than 1 value per feature in training mode, "
                         f"got input of shape {x.shape}")
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)     # not np.var: complex-step safe
    inv_std = 1 / np.sqrt(var + eps)
    xhat = xc * inv_std
    y = _channel(weight, x) * xhat + _channel(bias, x)
    return y, NormSaved(xhat, inv_std, _channel(weight, x), axes, axes,
                        mean.reshape(-1), var.reshape(-1))


@batch_norm.set_backward
def _batch_norm_backward(saved, gy):
    gx, gw, gb = _normalize_backward(saved, gy)
    return gx, gw.reshape(-1), gb.reshape(-1)


def _bn_eval_sample(rng, dtype, lo, hi):
    x, weight, bias = _bn_sample(rng, dtype, lo, hi)
    running_mean = rng.uniform(lo, hi, size=3).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, size=3).astype(dtype)
    return x, weight, bias, running_mean, running_var


@register(
    "batch_norm_eval", kind="normalization",
    formula=r"y = \gamma \frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta \quad\text{(running statistics)}",
    derivative=(r"g_x = \frac{\gamma\, g_y}{\sqrt{\hat\sigma^2+\epsilon}},\ "
                r"\frac{\partial L}{\partial\gamma} = \textstyle\sum g_y \hat x,\ "
                r"\frac{\partial L}{\partial\beta} = \sum g_y"),
    convention="evaluation mode: the statistics are constants, so the map is affine",
    inputs=("x", "weight", "bias", "running_mean", "running_var"),
    differentiable=(True, True, True, False, False),
    params={"eps": 1e-5}, complex_step=True,
    check_params=lambda p: check_eps("batch_norm_eval", p["eps"]),
    domains=((-3.0, 3.0),), sample=_bn_eval_sample,
    reference=lambda torch, x, weight, bias, rm, rv, eps: torch.nn.functional.batch_norm(
        x, rm, rv, weight, bias, training=False, eps=eps),
)
def batch_norm_eval(x, weight, bias, running_mean, running_var, eps):
    """Batch normalization in evaluation mode, with the running statistics."""
    x, weight, bias = as_float(x), as_float(weight), as_float(bias)
    axes = _bn_axes(x, weight, "batch_norm_eval")
    inv_std = _channel(1 / np.sqrt(as_float(running_var) + eps), x)
    xhat = (x - _channel(as_float(running_mean), x)) * inv_std
    w = _channel(weight, x)
    return w * xhat + _channel(bias, x), (xhat, w * inv_std, axes)


@batch_norm_eval.set_backward
def _batch_norm_eval_backward(saved, gy):
    xhat, scale, axes = saved
    return gy * scale, (gy * xhat).sum(axis=axes).reshape(-1), gy.sum(axis=axes).reshape(-1), None, None


def _ln_sample(rng, dtype, lo, hi):
    x = rng.uniform(lo, hi, size=(3, 5)).astype(dtype)
    weight = rng.uniform(0.5, 1.5, size=5).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    return x, weight, bias


@register(
    "layer_norm", kind="normalization",
    formula=(r"y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,\quad"
             r"\mu, \sigma^2 \text{ over the last dims of each sample}"),
    derivative=(r"g_x = \frac{1}{\sqrt{\sigma^2+\epsilon}}\Bigl(\gamma g_y - \overline{\gamma g_y}"
                r" - \hat x\,\overline{\gamma g_y \hat x}\Bigr)"),
    inputs=("x", "weight", "bias"), params={"eps": 1e-5}, complex_step=True,
    check_params=lambda p: check_eps("layer_norm", p["eps"]),
    domains=((-3.0, 3.0), (100.0, 1000.0)), sample=_ln_sample,
    reference=lambda torch, x, weight, bias, eps: torch.nn.functional.layer_norm(
        x, weight.shape, weight, bias, eps),
)
def layer_norm(x, weight, bias, eps):
    """Layer normalization over the last ``weight.ndim`` dims (normalized_shape = weight.shape)."""
    x, weight, bias = as_float(x), as_float(weight), as_float(bias)
    k = weight.ndim
    if weight.shape != bias.shape or x.shape[x.ndim - k:] != weight.shape:
        raise ValueError(f"layer_norm: expected input of shape (..., {', '.join(map(str, weight.shape))}) "
                         f"and bias of shape {weight.shape}, got input {x.shape}, bias {bias.shape}")
    axes = tuple(range(x.ndim - k, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + eps)
    xhat = xc * inv_std
    param_axes = tuple(range(x.ndim - k))
    return weight * xhat + bias, NormSaved(xhat, inv_std, weight, axes, param_axes, mean, var)


@layer_norm.set_backward
def _layer_norm_backward(saved, gy):
    return _normalize_backward(saved, gy)


def _check_lp_norm(p, dim, keepdim):
    check_real("LpNorm", "p", p, "a finite number > 0", lambda v: 0 < v < math.inf)
    check_int("LpNorm", "dim", dim, "an integer (the axis to reduce)", lambda n: True)
    if not isinstance(keepdim, (bool, np.bool_)):
        raise TypeError(f"LpNorm: keepdim={keepdim!r} is not valid; expected True or False")


def _norm_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(3, 5)).astype(dtype),)


@register(
    "lp_norm", module="LpNorm", kind="normalization",
    formula=r"\|x\|_p = \Bigl(\textstyle\sum_j |x_j|^p\Bigr)^{1/p}",
    derivative=(r"\frac{\partial \|x\|_p}{\partial x_j} = \frac{x_j\,|x_j|^{p-2}}{\|x\|_p^{\,p-1}}"
                r" = \mathrm{sign}(x_j)\Bigl(\frac{|x_j|}{\|x\|_p}\Bigr)^{p-1}"),
    convention="the derivative is taken as 0 where x_j = 0 (and everywhere when ||x|| = 0), as PyTorch",
    params={"p": 2.0, "dim": -1, "keepdim": False},
    test_params=({"p": 1.0}, {"p": 3.0}, {"p": 0.5}, {"p": 2.0, "keepdim": True}),
    domains=((-3.0, 3.0), (-1000.0, -100.0), (100.0, 1000.0)), sample=_norm_sample,
    reference=lambda torch, x, p, dim, keepdim: torch.linalg.vector_norm(x, ord=p, dim=dim, keepdim=keepdim),
    check_params=lambda params: _check_lp_norm(**params),
)
def lp_norm(x, p, dim, keepdim):
    """The Lp norm along ``dim`` for p > 0, computed as m * ||x/m||_p with m = max|x|
    so that |x|^p cannot overflow for large p or large x."""
    if not (isinstance(p, (int, float)) and p > 0):
        raise ValueError(f"lp_norm: p={p!r} is not valid; expected a number p > 0")
    x = as_float(x)
    a = np.abs(x)
    m = a.max(axis=dim, keepdims=True)
    scale = np.where(m > 0, m, 1)                    # all-zero rows: norm 0, no 0/0
    n = m * np.power(np.sum(np.power(a / scale, p), axis=dim, keepdims=True), 1 / p)
    y = n if keepdim else np.squeeze(n, axis=dim)
    return y, (x, n, p, dim, keepdim)


@lp_norm.set_backward
def _lp_norm_backward(saved, gy):
    x, n, p, dim, keepdim = saved
    if not keepdim:
        gy = np.expand_dims(gy, dim)
    ratio = np.abs(x) / np.where(n > 0, n, 1)
    # (|x_j|/n)^(p-1) only where x_j != 0: for p < 1 it would be 0^(negative) = inf
    slope = np.power(ratio, p - 1, out=np.zeros_like(ratio), where=x != 0)
    return gy * np.sign(x) * slope


def _standardize_sample(rng, dtype, lo, hi):
    x = rng.uniform(lo, hi, size=(4, 3)).astype(dtype)
    return x, rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2.0, 3).astype(dtype)


@register(
    "standardize", kind="normalization",
    formula=r"y = \frac{x - \mu}{s}\quad(\mu, s \text{ fixed, e.g. the training set's})",
    derivative=r"g_x = \frac{g_y}{s}",
    inputs=("x", "mean", "std"), differentiable=(True, False, False), complex_step=True,
    sample=_standardize_sample, domains=((-6.0, 6.0), (-1000.0, 1000.0)),
    reference=lambda torch, x, mean, std: (x - mean) / std,
)
def standardize(x, mean, std):
    """y = (x - mean) / std with constant statistics (nn.Standardize's buffers)."""
    x = as_float(x)
    return (x - mean) / std, std


@standardize.set_backward
def _standardize_backward(std, gy):
    return gy / std, None, None


# -- 2-D batch normalization and group normalization (CNNs) -----------------------------------
# BatchNorm2d is BatchNorm1d over (N, H, W): the ops below hand the (N, C, H*W) view
# of x to batch_norm / batch_norm_eval and reshape back, so there is one derivation.

def _bn2d_view(x, weight, who, training):
    """x (N, C, H, W) as its (N, C, H*W) view, after the checks, named with x's shape."""
    if x.ndim != 4:
        raise ValueError(f"{who}: expected input of shape (N, C, H, W), got shape {x.shape}")
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"{who}: expected {weight.shape[0]} channels on dim 1, "
                         f"got input of shape {x.shape}")
    if training and x.size // max(x.shape[1], 1) < 2:
        raise ValueError(f"{who}: expected more than 1 value per channel in training mode, "
                         f"got input of shape {x.shape}")
    return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])   # (an empty batch too)


def _bn2d_sample(rng, dtype, lo, hi):
    x = rng.uniform(lo, hi, size=(3, 3, 2, 3)).astype(dtype)
    weight = rng.uniform(0.5, 1.5, size=3).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    return x, weight, bias


@register(
    "batch_norm2d", kind="normalization",
    formula=(r"y_{nchw} = \gamma_c \frac{x_{nchw} - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c,\quad"
             r"\mu_c, \sigma_c^2 \text{ over the } M = N H W \text{ values } x_{n c h w} \text{ of channel } c"),
    derivative=batch_norm.derivative + r"\quad\text{(bars and sums over } (n, h, w) \text{ per channel)}",
    convention="training mode: batch statistics with the biased variance; BatchNorm1d over (N, H, W)",
    inputs=("x", "weight", "bias"), params={"eps": 1e-5}, complex_step=True,
    check_params=lambda p: check_eps("batch_norm2d", p["eps"]),
    domains=((-3.0, 3.0), (100.0, 1000.0)), sample=_bn2d_sample,
    reference=lambda torch, x, weight, bias, eps: torch.nn.functional.batch_norm(
        x, None, None, weight, bias, training=True, eps=eps),
)
def batch_norm2d(x, weight, bias, eps):
    """Batch normalization in training mode of x (N, C, H, W) -> y (N, C, H, W): the
    batch_norm op on the (N, C, H*W) view.  saved: batch_norm's NormSaved (of the view)."""
    x, weight = as_float(x), as_float(weight)
    y, saved = batch_norm.fn(_bn2d_view(x, weight, "batch_norm2d", True), weight, bias, eps)
    return y.reshape(x.shape), saved


@batch_norm2d.set_backward
def _batch_norm2d_backward(saved, gy):
    gx, gw, gb = _batch_norm_backward(saved, gy.reshape(saved.xhat.shape))
    return gx.reshape(gy.shape), gw, gb


def _bn2d_eval_sample(rng, dtype, lo, hi):
    x, weight, bias = _bn2d_sample(rng, dtype, lo, hi)
    return x, weight, bias, rng.uniform(lo, hi, size=3).astype(dtype), rng.uniform(0.5, 2.0, size=3).astype(dtype)


@register(
    "batch_norm2d_eval", kind="normalization",
    formula=batch_norm_eval.formula, derivative=batch_norm_eval.derivative,
    convention="evaluation mode: the statistics are constants, so the map is affine",
    inputs=("x", "weight", "bias", "running_mean", "running_var"),
    differentiable=(True, True, True, False, False),
    params={"eps": 1e-5}, complex_step=True,
    check_params=lambda p: check_eps("batch_norm2d_eval", p["eps"]),
    domains=((-3.0, 3.0),), sample=_bn2d_eval_sample,
    reference=lambda torch, x, weight, bias, rm, rv, eps: torch.nn.functional.batch_norm(
        x, rm, rv, weight, bias, training=False, eps=eps),
)
def batch_norm2d_eval(x, weight, bias, running_mean, running_var, eps):
    """Batch normalization in evaluation mode of x (N, C, H, W), with the running
    statistics: batch_norm_eval on the (N, C, H*W) view."""
    x, weight = as_float(x), as_float(weight)
    view = _bn2d_view(x, weight, "batch_norm2d_eval", False)
    y, saved = batch_norm_eval.fn(view, weight, bias, running_mean, running_var, eps)
    return y.reshape(x.shape), saved


@batch_norm2d_eval.set_backward
def _batch_norm2d_eval_backward(saved, gy):
    gx, gw, gb, _, _ = _batch_norm_eval_backward(saved, gy.reshape(saved[0].shape))
    return gx.reshape(gy.shape), gw, gb, None, None


def _gn_sample(rng, dtype, lo, hi):
    x = rng.uniform(lo, hi, size=(2, 4, 3, 3)).astype(dtype)
    weight = rng.uniform(0.5, 1.5, size=4).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    return x, weight, bias


def _check_group_norm(bound):
    g, eps = bound["num_groups"], bound["eps"]
    if not (isinstance(g, (int, np.integer)) and not isinstance(g, bool) and g > 0):
        raise ValueError(f"group_norm: num_groups={g!r} is not valid; expected a positive integer")
    if not (isinstance(eps, (int, float, np.floating)) and not isinstance(eps, bool)
            and np.isfinite(eps) and eps >= 0):
        raise ValueError(f"group_norm: eps={eps!r} is not valid; expected a finite number >= 0")


@register(
    "group_norm", kind="normalization",
    formula=(r"y_{ncl} = \gamma_c \frac{x_{ncl} - \mu_{ng}}{\sqrt{\sigma_{ng}^2 + \epsilon}} + \beta_c,\quad"
             r"\mu_{ng}, \sigma_{ng}^2 \text{ over the } M = \tfrac{C}{G} L \text{ values of group } g"
             r" = \lfloor c G / C \rfloor \text{ of sample } n"),
    derivative=(r"g_x = \frac{1}{\sqrt{\sigma_{ng}^2+\epsilon}}\Bigl(\gamma_c g_y - \overline{\gamma g_y}"
                r" - \hat x\,\overline{\gamma g_y \hat x}\Bigr)\ \text{(bars: means over each group's }"
                r"(C/G, L) \text{ values)},\ "
                r"\frac{\partial L}{\partial\gamma_c} = \textstyle\sum_{n,l} g_y \hat x,\ "
                r"\frac{\partial L}{\partial\beta_c} = \sum_{n,l} g_y"),
    convention="differentiable everywhere (eps > 0); layer norm over each group, then a per-channel affine",
    inputs=("x", "weight", "bias"), params={"num_groups": 2, "eps": 1e-5}, complex_step=True,
    check_params=_check_group_norm, test_params=({"num_groups": 1}, {"num_groups": 4}),
    domains=((-3.0, 3.0), (100.0, 1000.0)), sample=_gn_sample,
    reference=lambda torch, x, weight, bias, num_groups, eps: torch.nn.functional.group_norm(
        x, num_groups, weight, bias, eps),
)
def group_norm(x, weight, bias, num_groups, eps):
    """Group normalization of x (N, C, *) -> y of x's shape: the C channels fall into
    ``num_groups`` groups of C/G consecutive channels, each sample's group is
    normalized over its (C/G, *) values, then y = weight[c] * xhat + bias[c].

    Computed on the (N, G, C/G, L) view, so the shared layer-norm backward applies
    as it is (statistics axes (2, 3), parameter axes (0, 3)).
    saved: NormSaved of that view (mean and var of shape (N, G)).
    """
    x, weight, bias = as_float(x), as_float(weight), as_float(bias)
    _check_group_norm({"num_groups": num_groups, "eps": eps})
    if x.ndim < 2:
        raise ValueError(f"group_norm: expected input of shape (N, C, *), got shape {x.shape}")
    n, c = x.shape[:2]
    if weight.ndim != 1 or weight.shape != bias.shape:
        raise ValueError(f"group_norm: expected weight and bias of one shape (C,), got weight "
                         f"{weight.shape}, bias {bias.shape}")
    if weight.shape[0] != c:
        raise ValueError(f"group_norm: expected {weight.shape[0]} channels on dim 1 (weight of shape "
                         f"{weight.shape}), got input of shape {x.shape}")
    if c % num_groups:
        raise ValueError(f"group_norm: {c} channels (input of shape {x.shape}) are not divisible "
                         f"by num_groups={num_groups}")
    g = num_groups
    xg = x.reshape(n, g, c // g, -1)
    axes = (2, 3)
    mean = xg.mean(axis=axes, keepdims=True)
    xc = xg - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + eps)
    xhat = xc * inv_std
    w, b = weight.reshape(1, g, c // g, 1), bias.reshape(1, g, c // g, 1)
    y = (w * xhat + b).reshape(x.shape)
    return y, NormSaved(xhat, inv_std, w, axes, (0, 3), mean.reshape(n, g), var.reshape(n, g))


@group_norm.set_backward
def _group_norm_backward(saved, gy):
    gx, gw, gb = _normalize_backward(saved, gy.reshape(saved.xhat.shape))
    return gx.reshape(gy.shape), gw.reshape(-1), gb.reshape(-1)


# -- RMSNorm (issue 21) ----------------------------------------------------------------------

def _rms_sample(rng, dtype, lo, hi):
    x = rng.uniform(lo, hi, size=(3, 5)).astype(dtype)
    return x, rng.uniform(0.5, 1.5, size=5).astype(dtype)


def _check_rms_eps(p):
    if p["eps"] is not None:
        check_eps("rms_norm", p["eps"])


@register(
    "rms_norm", kind="normalization",
    formula=(r"y = \gamma \frac{x}{\sqrt{\overline{x^2} + \epsilon}},\quad"
             r"\overline{x^2} \text{ over the last dims of each sample}"),
    derivative=(r"g_x = \frac{1}{\sqrt{\overline{x^2}+\epsilon}}\Bigl(\gamma g_y - \hat x\,"
                r"\overline{\gamma g_y \hat x}\Bigr),\quad g_\gamma = \textstyle\sum g_y \hat x,\quad"
                r"\hat x = \frac{x}{\sqrt{\overline{x^2}+\epsilon}}"),
    convention="eps None is the machine epsilon of the input's dtype, as PyTorch",
    inputs=("x", "weight"), params={"eps": None}, test_params=({"eps": 1e-3},), complex_step=True,
    check_params=_check_rms_eps,
    domains=((-3.0, 3.0), (-1000.0, -100.0), (100.0, 1000.0)), sample=_rms_sample,
    reference=lambda torch, x, weight, eps: torch.nn.functional.rms_norm(x, weight.shape, weight, eps),
)
def rms_norm(x, weight, eps):
    """Root-mean-square normalization over the last ``weight.ndim`` dims (normalized_shape =
    weight.shape): layer norm without the mean and the bias.  x: (..., *normalized_shape),
    weight: normalized_shape.  saved: (xhat, 1/rms, weight, stats axes, weight's broadcast axes)."""
    x, weight = as_float(x), as_float(weight)
    k = weight.ndim
    if x.shape[x.ndim - k:] != weight.shape or x.ndim < k:
        raise ValueError(f"rms_norm: expected input of shape (..., {', '.join(map(str, weight.shape))}), "
                         f"got shape {x.shape}")
    if eps is None:
        eps = float(np.finfo(x.dtype).eps)
    axes = tuple(range(x.ndim - k, x.ndim))
    ms = (x * x).mean(axis=axes, keepdims=True) if x.size else np.zeros(x.shape[:x.ndim - k] + (1,) * k, x.dtype)
    inv_rms = 1 / np.sqrt(ms + eps)
    xhat = x * inv_rms
    return weight * xhat, (xhat, inv_rms, weight, axes, tuple(range(x.ndim - k)))


@rms_norm.set_backward
def _rms_norm_backward(saved, gy):
    xhat, inv_rms, weight, axes, param_axes = saved
    g = gy * weight
    gx = inv_rms * (g - xhat * (g * xhat).mean(axis=axes, keepdims=True)) if g.size else np.zeros_like(g)
    return gx, (gy * xhat).sum(axis=param_axes)


# -- local response normalization ---------------------------------------------------------

def _channel_window_sum(v, before, after):
    """w_c = sum of v over channels c - before .. c + after (axis 1), zeros beyond the ends:
    a difference of cumulative sums, one pass whatever the window's size."""
    pad = [(0, 0)] * v.ndim
    pad[1] = (before + 1, after)
    csum = np.cumsum(np.pad(v, pad), axis=1)
    n = v.shape[1]
    hi = np.take(csum, np.arange(before + after + 1, before + after + 1 + n), axis=1)
    lo = np.take(csum, np.arange(0, n), axis=1)
    return hi - lo


def _lrn_params(p):
    check_int("LocalResponseNorm", "size", p["size"])
    for name in ("alpha", "beta", "k"):
        check_real("LocalResponseNorm", name, p[name], "a finite number")


def _lrn_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(2, 6, 3)).astype(dtype),)


@register(
    "local_response_norm", module="LocalResponseNorm", kind="normalization",
    formula=(r"y_c = x_c\, d_c^{-\beta},\quad d_c = k + \frac{\alpha}{n}\sum_{c' = c - \lfloor n/2\rfloor}"
             r"^{c + \lfloor (n-1)/2 \rfloor} x_{c'}^2"),
    derivative=(r"g_{x_j} = g_j d_j^{-\beta} - \frac{2\alpha\beta}{n}\, x_j \sum_{c:\ j \in W(c)} g_c\, x_c\, "
                r"d_c^{-\beta - 1}"),
    convention="channels beyond the ends count as 0 and the sum is divided by n = size always, as PyTorch",
    params={"size": 2, "alpha": 1e-4, "beta": 0.75, "k": 1.0},
    test_params=({"size": 3, "alpha": 0.5, "beta": 0.6, "k": 2.0}, {"size": 4, "alpha": 2.0, "beta": 1.5, "k": 1.0}),
    check_params=_lrn_params, complex_step=True, sample=_lrn_sample,
    domains=((-3.0, 3.0), (-100.0, 100.0)),
    reference=lambda torch, x, size, alpha, beta, k: torch.nn.functional.local_response_norm(x, size, alpha, beta, k),
)
def local_response_norm(x, size, alpha, beta, k):
    """Each channel divided by a power of the mean square of its neighbours across channels
    (AlexNet's normalization), for x of shape (N, C, *): the window of channel c runs from
    c - size // 2 to c + (size - 1) // 2, as torch.nn.functional.local_response_norm pads it."""
    x = as_float(x)
    if x.ndim < 3:
        raise ValueError(f"local_response_norm: expected input of shape (N, C, *) with at least 3 dims, "
                         f"got shape {x.shape}")
    before, after = size // 2, (size - 1) // 2
    d = k + (alpha / size) * _channel_window_sum(x * x, before, after)
    d_beta = d ** -beta
    return x * d_beta, (x, d, d_beta, size, alpha, beta)


@local_response_norm.set_backward
def _local_response_norm_backward(saved, gy):
    x, d, d_beta, size, alpha, beta = saved
    # c's window holds j when c - size//2 <= j <= c + (size-1)//2: the reverse window around j
    q = gy * x * d_beta / d                                  # g_c x_c d_c^(-beta-1)
    back = _channel_window_sum(q, (size - 1) // 2, size // 2)
    return (gy * d_beta - (2 * alpha * beta / size) * x * back,)
