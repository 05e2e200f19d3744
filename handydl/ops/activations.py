r"""Elementwise activations, each with its hand-derived derivative.

Every backward is ``gx = gy * f'(x)``.  Where the formula allows it the
derivative is written in terms of the output y (sigmoid, tanh): cheaper, and
it needs no second exp.  Conventions at kinks are those of PyTorch 2.13 (the
tests check the values there, and at NaN, against it).  Piecewise ops blend
with 0/1 masks instead of selecting with np.where: exact, and free of the
branch mispredictions a select suffers on random signs.

Each activation but tanh, prelu (with one slope it runs leaky ReLU's) and identity
also has a scalar kernel, the same f and f' written for one number
(``@op.set_kernel``): with numba installed, large float32 arrays run it as one
fused loop (see :mod:`handydl._fast.fused`).  tanh has none because one did not pay:
NumPy's tanh is one SIMD loop already, and on 1M float32 its forward took 0.55 ms
against the fused loop's 1.3 ms, which ate what the fused backward saved
(0.5 ms against 1.2 ms for NumPy's three passes of gy (1 - y^2)).
The NumPy code above each kernel is the reference the tests hold it to.
"""
from __future__ import annotations

import math

import numpy as np

from .._fast import fused
from .._fast.fused import exp, expm1, log1p, tanh as tanh_scalar, where
from .registry import WIDE, as_float, check_int, check_real, register

# Python floats, not np.float64: a NumPy float64 scalar would promote float32 work.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_C = 0.044715


# -- checking parameters at construction (each op's check_params) -------------------
# Messages in PyTorch's style: "ELU: alpha='x' is not valid; expected a finite number".
def _finite(who, *names):
    """check_params: each of ``names`` a finite real number."""
    def check(p):
        for name in names:
            check_real(who, name, p[name], "a finite number")
    return check


def stable_sigmoid(x):
    """1 / (1 + e^{-x}) that never exponentiates a positive number:
    e^{min(x, 0)} / (1 + e^{-|x|}) is 1/(1 + e^{-x}) for x >= 0 and e^x/(1 + e^x)
    for x < 0.  Branch-free: a select (np.where) on a random sign pattern costs
    ~4 ms per million elements in mispredicted branches; two exps cost ~1 ms."""
    num = np.exp(np.minimum(x, 0))
    den = np.exp(-np.abs(x))
    den += 1
    num /= den
    return num


def erf(x):
    """SciPy's erf, imported on first use: scipy.special is half of import handydl's time."""
    from scipy.special import erf as scipy_erf
    return scipy_erf(x)


def _mask(condition, dtype):
    """A boolean mask as 0/1 in ``dtype``: blending with it is branch-free."""
    return condition.astype(dtype)


# -- the logistic family -------------------------------------------------------

@register(
    "sigmoid", module="Sigmoid", kind="activation",
    formula=r"\sigma(x) = \frac{1}{1 + e^{-x}}",
    derivative=r"\sigma'(x) = \sigma(x)\,\bigl(1 - \sigma(x)\bigr)",
    domains=WIDE,
    symbolic=lambda x, sp: 1 / (1 + sp.exp(-x)),
    reference=lambda torch, x: torch.sigmoid(x),
)
def sigmoid(x):
    r"""Logistic sigmoid :math:`\sigma(x) = 1/(1+e^{-x})`.

    Derivative from the output: :math:`\sigma' = \sigma(1-\sigma)`.
    Computed as ``e^{min(x, 0)}`` over ``1 + e^{-|x|}`` so it never overflows.
    """
    y = stable_sigmoid(as_float(x))
    return y, y


@sigmoid.set_backward
def _sigmoid_backward(y, gy):
    return gy * y * (1 - y)


def _sigmoid_slope(y):
    return y * (1 - y)                  # sigma' from the output, as in _sigmoid_backward


# save="output": backward needs y alone, so the fused forward writes nothing else
# (saving dy/dx as well writes a second array, and measured slower)
@sigmoid.set_kernel(save="output", slope=_sigmoid_slope)
def _sigmoid_kernel(x):
    e = exp(-abs(x))
    s = 1 / (1 + e)                     # sigma(|x|)
    y = where(x >= 0, s, e * s)         # e^x / (1 + e^x) for x < 0
    return y, y * (1 - y)


@register(
    "tanh", module="Tanh", kind="activation",
    formula=r"\tanh(x) = \frac{e^{x} - e^{-x}}{e^{x} + e^{-x}}",
    derivative=r"\tanh'(x) = 1 - \tanh^2(x)",
    domains=WIDE, complex_step=True,
    symbolic=lambda x, sp: sp.tanh(x),
    reference=lambda torch, x: torch.tanh(x),
)
def tanh(x):
    r"""Hyperbolic tangent.  Derivative from the output: :math:`1 - y^2`
    (never ``1/cosh(x)^2``, which overflows for |x| > 710)."""
    y = np.tanh(as_float(x))
    return y, y


@tanh.set_backward
def _tanh_backward(y, gy):
    return gy * (1 - y * y)


# -- the ReLU family -------------------------------------------------------------

@register(
    "relu", module="ReLU", kind="activation",
    formula=r"\mathrm{ReLU}(x) = \max(0, x)",
    derivative=r"\mathrm{ReLU}'(x) = \begin{cases} 1 & x > 0 \\ 0 & x \le 0 \end{cases}",
    convention="ReLU'(0) = 0, as PyTorch",
    kinks=(0.0,), domains=WIDE,
    symbolic=lambda x, sp: sp.Max(0, x),
    reference=lambda torch, x: torch.relu(x),
)
def relu(x):
    r""":math:`\max(0, x)`; derivative 1 for x > 0, else 0 (ReLU'(0) = 0).

    Backward needs only the mask x > 0, kept as booleans (1 byte per element).
    """
    x = as_float(x)
    return np.maximum(x, 0), x > 0


@relu.set_backward
def _relu_backward(mask, gy):
    return gy * mask


def _relu_slope(y):
    return where(y > 0, 1.0, 0.0)


# save="output": y > 0 exactly where x > 0 (and NaN gives NaN, slope 0 both ways), so the
# slope is read from y and forward writes one array instead of y and a copy of x
@relu.set_kernel(save="output", slope=_relu_slope)
def _relu_kernel(x):
    return where(x <= 0, 0.0, x), where(x > 0, 1.0, 0.0)      # NaN -> NaN, slope 0


@register(
    "leaky_relu", module="LeakyReLU", kind="activation",
    formula=r"\mathrm{LeakyReLU}(x) = \begin{cases} x & x > 0 \\ a x & x \le 0 \end{cases}",
    derivative=r"\mathrm{LeakyReLU}'(x) = \begin{cases} 1 & x > 0 \\ a & x \le 0 \end{cases}",
    convention="LeakyReLU'(0) = negative_slope, as PyTorch",
    params={"negative_slope": 0.01}, test_params=({"negative_slope": 0.2},),
    kinks=(0.0,), domains=WIDE,
    symbolic=lambda x, sp, negative_slope: sp.Piecewise((x, x > 0), (negative_slope * x, True)),
    reference=lambda torch, x, negative_slope: torch.nn.functional.leaky_relu(x, negative_slope),
    check_params=_finite("LeakyReLU", "negative_slope"),
)
def leaky_relu(x, negative_slope):
    """x for x > 0, negative_slope * x otherwise; slope a at 0 (and at NaN, as PyTorch).

    For a <= 1 that is max(x, a x) (min for a > 1): no select.  Backward keeps
    the slope itself, a + (1 - a) [x > 0].
    """
    x = as_float(x)
    a = negative_slope
    y = np.maximum(x, a * x) if a <= 1 else np.minimum(x, a * x)
    slope = _mask(x > 0, x.dtype)
    slope *= 1 - a
    slope += a
    return y, slope


@leaky_relu.set_backward
def _leaky_relu_backward(slope, gy):
    return gy * slope


@leaky_relu.set_kernel(save="input")
def _leaky_relu_kernel(x, negative_slope):
    a = negative_slope
    return where(x > 0, x, a * x), where(x > 0, 1.0, a)      # slope a at 0 and NaN


def _prelu_sample(rng, dtype, lo, hi):
    x = rng.uniform(lo, hi, size=(4, 3, 2)).astype(dtype)
    weight = rng.uniform(0.05, 0.5, size=3).astype(dtype)
    return x, weight


def _channel_shape(x, weight):
    """Shape that broadcasts a per-channel weight along dim 1 of x."""
    if weight.size == 1:
        return (1,) * x.ndim
    if x.ndim < 2 or x.shape[1] != weight.size:
        raise ValueError(f"prelu: weight has {weight.size} channels but input of shape "
                         f"{x.shape} has {x.shape[1] if x.ndim >= 2 else 1} on dim 1")
    return (1, weight.size) + (1,) * (x.ndim - 2)


@register(
    "prelu", kind="activation",
    formula=r"\mathrm{PReLU}(x) = \begin{cases} x & x > 0 \\ a_c x & x \le 0 \end{cases}",
    derivative=(r"\frac{\partial y}{\partial x} = \begin{cases} 1 & x > 0 \\ a_c & x \le 0 \end{cases},"
                r"\quad \frac{\partial L}{\partial a_c} = \sum_{x \le 0,\ \text{channel } c} g_y\, x"),
    convention="dy/dx at 0 = a (the learned slope), as PyTorch",
    inputs=("x", "weight"), kinks=(0.0,), domains=WIDE, sample=_prelu_sample,
    reference=lambda torch, x, weight: torch.nn.functional.prelu(x, weight),
)
def prelu(x, weight):
    """Leaky ReLU with a learned slope ``weight``: one per channel (dim 1) or one in all.

    y = max(x, 0) + a min(x, 0): exact on both sides, and no select.  With one
    slope on a large float32 array this is leaky ReLU with negative_slope = a,
    and runs leaky ReLU's fused kernel (dL/da then takes one more fused pass).
    """
    x, weight = as_float(x), as_float(weight)
    a = weight.reshape(_channel_shape(x, weight))
    if weight.size == 1 and weight.dtype == x.dtype and fused.usable(x):
        y, kept = fused.forward(leaky_relu.kernel_for({}), x, (weight.item(),))
        return y, ("fused", kept, weight.shape)
    negative_part = np.minimum(x, 0)
    y = np.maximum(x, 0)
    y += a * negative_part
    return y, (negative_part, a, _mask(x > 0, x.dtype), weight.shape)


@prelu.set_backward
def _prelu_backward(saved, gy):
    if isinstance(saved[0], str):                   # one slope, leaky ReLU's kernel
        _, kept, weight_shape = saved
        x = kept.x
        if fused.usable(gy) and gy.shape == x.shape:
            ga = np.full(weight_shape, fused.negative_dot(x, gy), x.dtype)
        else:                                       # gy of another dtype or shape
            ga = (gy * np.minimum(x, 0)).sum().reshape(weight_shape)
        return fused.backward(kept, gy), ga
    negative_part, a, positive, weight_shape = saved
    gx = gy * (positive + a * (1 - positive))        # 1 for x > 0, a otherwise (and at NaN)
    # dL/da_c = sum of gy * min(x, 0) over every axis the slope was broadcast along
    axes = tuple(i for i, n in enumerate(a.shape) if n == 1)
    return gx, (gy * negative_part).sum(axis=axes).reshape(weight_shape)


def _nonzero_alpha(who, alpha):
    check_real(who, "alpha", alpha, "a finite, non-zero number",
               lambda a: math.isfinite(a) and a != 0)


def _exponential_linear(x, scale, alpha, inv_alpha=1.0):
    """scale * (x for x > 0, alpha (e^{x inv_alpha} - 1) otherwise) and its derivative,
    shared by ELU, CELU and SELU.

    Branch-free: max(x, 0) + alpha expm1(min(x, 0) inv_alpha) is exact on both
    sides (expm1(0) = 0), and expm1 never sees a positive number, so it cannot
    overflow.  fmin (not minimum) keeps NaN out of the exponential, so a NaN
    input gets NaN out but derivative scale, the x > 0 branch, as PyTorch.
    """
    x = as_float(x)
    e = np.expm1(np.fmin(x, 0) * inv_alpha)
    y = np.maximum(x, 0)
    y += alpha * e
    if scale != 1:
        y *= scale
    # derivative: scale for x > 0, scale * alpha * inv_alpha * e^{x inv_alpha} for x <= 0,
    # blended as scale + [x <= 0] (left - scale); e is reused as the buffer
    d = e
    d += 1
    d *= scale * alpha * inv_alpha
    d -= scale
    d *= _mask(x <= 0, x.dtype)
    d += scale
    return y, d


@register(
    "elu", module="ELU", kind="activation",
    formula=r"\mathrm{ELU}(x) = \begin{cases} x & x > 0 \\ \alpha (e^{x} - 1) & x \le 0 \end{cases}",
    derivative=r"\mathrm{ELU}'(x) = \begin{cases} 1 & x > 0 \\ \alpha e^{x} = y + \alpha & x \le 0 \end{cases}",
    convention="ELU'(0) = alpha (the left limit), as PyTorch",
    params={"alpha": 1.0}, test_params=({"alpha": 2.0},),
    kinks=(0.0,), domains=WIDE,
    symbolic=lambda x, sp, alpha: sp.Piecewise((x, x > 0), (alpha * (sp.exp(x) - 1), True)),
    reference=lambda torch, x, alpha: torch.nn.functional.elu(x, alpha),
    check_params=_finite("ELU", "alpha"),
)
def elu(x, alpha):
    """x for x > 0, alpha (e^x - 1) otherwise; ELU'(0) = alpha, the left limit."""
    return _exponential_linear(x, 1.0, alpha)


@elu.set_backward
def _elu_backward(d, gy):
    return gy * d


@elu.set_kernel
def _elu_kernel(x, alpha):
    # NaN takes the x > 0 branch's derivative, as in _exponential_linear
    return where(x <= 0, alpha * expm1(x), x), where(x <= 0, alpha * exp(x), 1.0)


@register(
    "celu", module="CELU", kind="activation",
    formula=r"\mathrm{CELU}(x) = \begin{cases} x & x > 0 \\ \alpha (e^{x/\alpha} - 1) & x \le 0 \end{cases}",
    derivative=r"\mathrm{CELU}'(x) = \begin{cases} 1 & x > 0 \\ e^{x/\alpha} = y/\alpha + 1 & x \le 0 \end{cases}",
    convention="continuously differentiable: CELU'(0) = 1",
    params={"alpha": 1.0}, test_params=({"alpha": 2.0},),
    domains=WIDE,
    symbolic=lambda x, sp, alpha: sp.Piecewise((x, x > 0), (alpha * (sp.exp(x / alpha) - 1), True)),
    reference=lambda torch, x, alpha: torch.nn.functional.celu(x, alpha),
    check_params=lambda p: _nonzero_alpha("CELU", p["alpha"]),
)
def celu(x, alpha):
    """ELU with the exponent scaled by 1/alpha, so its derivative is continuous."""
    return _exponential_linear(x, 1.0, alpha, 1.0 / alpha)


@celu.set_backward
def _celu_backward(d, gy):
    return gy * d


@celu.set_kernel
def _celu_kernel(x, alpha):
    u = x * (1 / alpha)                     # as _exponential_linear: one product, no division
    return where(x <= 0, alpha * expm1(u), x), where(x <= 0, exp(u), 1.0)


@register(
    "selu", module="SELU", kind="activation",
    formula=r"\mathrm{SELU}(x) = \lambda \begin{cases} x & x > 0 \\ \alpha (e^{x} - 1) & x \le 0 \end{cases}",
    derivative=r"\mathrm{SELU}'(x) = \begin{cases} \lambda & x > 0 \\ \lambda \alpha e^{x} = y + \lambda\alpha & x \le 0 \end{cases}",
    convention="SELU'(0) = scale * alpha (the left limit), as PyTorch",
    kinks=(0.0,), domains=WIDE,
    symbolic=lambda x, sp: SELU_SCALE * sp.Piecewise((x, x > 0), (SELU_ALPHA * (sp.exp(x) - 1), True)),
    reference=lambda torch, x: torch.nn.functional.selu(x),
)
def selu(x):
    """Scaled ELU with lambda = 1.0507..., alpha = 1.6732... (self-normalizing)."""
    return _exponential_linear(x, SELU_SCALE, SELU_ALPHA)


@selu.set_backward
def _selu_backward(d, gy):
    return gy * d


@selu.set_kernel
def _selu_kernel(x):
    y = where(x <= 0, SELU_ALPHA * expm1(x), x)
    return SELU_SCALE * y, where(x <= 0, SELU_SCALE * SELU_ALPHA * exp(x), SELU_SCALE)


@register(
    "relu6", module="ReLU6", kind="activation",
    formula=r"\mathrm{ReLU6}(x) = \min(\max(0, x), 6)",
    derivative=r"\mathrm{ReLU6}'(x) = \begin{cases} 1 & 0 < x < 6 \\ 0 & \text{otherwise} \end{cases}",
    convention="ReLU6'(0) = ReLU6'(6) = 0, as PyTorch",
    kinks=(0.0, 6.0), domains=((-3.0, 9.0),) + WIDE[1:],
    symbolic=lambda x, sp: sp.Min(sp.Max(0, x), 6),
    reference=lambda torch, x: torch.nn.functional.relu6(x),
)
def relu6(x):
    """ReLU clipped at 6; derivative 1 strictly inside (0, 6)."""
    x = as_float(x)
    return np.clip(x, 0, 6), (x > 0) & (x < 6)


@relu6.set_backward
def _relu6_backward(inside, gy):
    return gy * inside


def _relu6_slope(y):
    return where(y > 0, where(y < 6, 1.0, 0.0), 0.0)


# save="output": y = clip(x, 0, 6) lies strictly inside (0, 6) exactly where x does
@relu6.set_kernel(save="output", slope=_relu6_slope)
def _relu6_kernel(x):
    y = where(x <= 0, 0.0, where(x >= 6, 6.0, x))              # NaN -> NaN
    return y, where(x > 0, where(x < 6, 1.0, 0.0), 0.0)


# -- smooth ReLU relatives --------------------------------------------------------

@register(
    "gelu", module="GELU", kind="activation",
    formula=(r"\mathrm{GELU}(x) = x\,\Phi(x) = \frac{x}{2}\bigl(1 + \mathrm{erf}(x/\sqrt{2})\bigr)"
             r"\quad\text{or (tanh)}\quad \frac{x}{2}\bigl(1 + \tanh(\sqrt{2/\pi}(x + 0.044715 x^3))\bigr)"),
    derivative=(r"\mathrm{GELU}'(x) = \Phi(x) + x\,\varphi(x)"
                r"\quad\text{or (tanh)}\quad \tfrac12(1 + t) + \tfrac12 x (1 - t^2)\sqrt{2/\pi}(1 + 3\cdot 0.044715 x^2)"),
    params={"approximate": "none"}, choices={"approximate": ("none", "tanh")},
    test_params=({"approximate": "tanh"},), domains=WIDE,
    symbolic=lambda x, sp, approximate: (
        x / 2 * (1 + sp.erf(x / sp.sqrt(2))) if approximate == "none" else
        x / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + sp.Rational(44715, 1000000) * x ** 3)))),
    reference=lambda torch, x, approximate: torch.nn.functional.gelu(x, approximate=approximate),
)
def gelu(x, approximate):
    r"""Gaussian error linear unit; exact (erf, the default, as PyTorch) or the tanh approximation.

    Exact: :math:`x\Phi(x)` with derivative :math:`\Phi(x) + x\varphi(x)`,
    :math:`\varphi(x) = e^{-x^2/2}/\sqrt{2\pi}`.  Each variant has its own derivative.
    """
    x = as_float(x)
    if approximate == "none":
        cdf = normal_cdf(x)
        return x * cdf, (approximate, x.copy(), cdf)     # a copy: the caller may change x
    # |x| is capped inside the cube only: tanh has saturated long before 1e4,
    # and the cap keeps x^3 finite in float32.
    xc = np.clip(x, -1e4, 1e4)
    t = np.tanh(SQRT_2_OVER_PI * (xc + GELU_TANH_C * xc ** 3))
    return 0.5 * x * (1 + t), (approximate, xc, t)


@gelu.set_backward
def _gelu_backward(saved, gy):
    approximate, x, a = saved
    if approximate == "none":
        pdf = np.exp(-0.5 * np.square(np.minimum(np.abs(x), 40))) * INV_SQRT_2PI
        return gy * (a + x * pdf)
    t = a
    du = SQRT_2_OVER_PI * (1 + 3 * GELU_TANH_C * x * x)
    return gy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)


@gelu.set_kernel(approximate="none")
def _gelu_kernel(x):
    # normal_cdf's fit of erfc; e^{-x^2/2} serves both Phi and phi
    t = 1 / (1 + abs(x) * (0.5 * INV_SQRT_2))
    q = 0.0
    for c in _ERFCX_COEFFS:
        q = q * t + c
    e = exp(-0.5 * x * x)
    tail = 0.5 * t * q * e                                  # Phi(-|x|)
    cdf = where(x < 0, tail, 1 - tail)
    return x * cdf, cdf + x * (e * INV_SQRT_2PI)


@gelu.set_kernel(approximate="tanh")
def _gelu_tanh_kernel(x):
    xc = where(x < -1e4, -1e4, where(x > 1e4, 1e4, x))     # as np.clip: NaN stays NaN
    t = tanh_scalar(SQRT_2_OVER_PI * (xc + GELU_TANH_C * xc * xc * xc))
    du = SQRT_2_OVER_PI * (1 + 3 * GELU_TANH_C * xc * xc)
    return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * xc * (1 - t * t) * du


@register(
    "silu", module="SiLU", kind="activation",
    formula=r"\mathrm{SiLU}(x) = x\,\sigma(x)",
    derivative=r"\mathrm{SiLU}'(x) = \sigma(x)\bigl(1 + x(1 - \sigma(x))\bigr)",
    domains=WIDE,
    symbolic=lambda x, sp: x / (1 + sp.exp(-x)),
    reference=lambda torch, x: torch.nn.functional.silu(x),
)
def silu(x):
    """Sigmoid-weighted linear unit (swish): x * sigmoid(x)."""
    x = as_float(x)
    s = stable_sigmoid(x)
    return x * s, (x.copy(), s)         # a copy: the caller may change x before backward


@silu.set_backward
def _silu_backward(saved, gy):
    x, s = saved
    return gy * s * (1 + x * (1 - s))


@silu.set_kernel
def _silu_kernel(x):
    e = exp(-abs(x))
    s = 1 / (1 + e)
    s = where(x >= 0, s, e * s)                             # sigma(x), as in sigmoid
    return x * s, s * (1 + x * (1 - s))


# erfc(z) = t Q(t) e^{-z^2} with t = 1 / (1 + z/2): Q's polynomial, highest power first,
# fitted by tools/fit_erfcx.py (relative error < 1.7e-7 evaluated in float32, z < 18;
# beyond, e^{-z^2} is 0 in float32).  One exponential, where Numerical Recipes' fit
# of erfc needs two.
_ERFCX_COEFFS = (0.0425671116, -0.230567917, 0.481888026, -0.436158568, 0.113565445, -0.0473277457,
                 0.0885339007, 0.1766164, 0.246677667, 0.282111496, 0.282094181)


def normal_cdf(x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2.

    float64 (and anything but float32) uses SciPy's erf, exact to rounding.
    float32 uses the fit of erfc above, whose error is below float32's
    epsilon: 3 to 4x faster than SciPy's erf, which computes in double at
    ~20 ns per element (``python -m bench.micro``).  Branch-free: Phi(-|x|) = erfc(|x|/sqrt 2) / 2, and
    Phi(x) = 1 - Phi(-|x|) for x >= 0.
    """
    if x.dtype != np.float32:
        # SciPy has no float16 erf (it computes float16 in float64): cast back
        return (0.5 * (1 + erf(x * INV_SQRT_2))).astype(x.dtype, copy=False)
    # np.asarray: on a 0-d x, NumPy returns scalars, which out= cannot write into
    t = np.asarray(np.abs(x) * np.float32(0.5 * INV_SQRT_2))
    t += 1
    np.reciprocal(t, out=t)                         # t = 1 / (1 + z/2), z = |x| / sqrt 2
    poly = np.full_like(t, _ERFCX_COEFFS[0])
    for c in _ERFCX_COEFFS[1:]:                     # Horner, in place
        poly *= t
        poly += c
    poly *= t
    e = np.asarray(np.square(x))                    # e^{-z^2} = e^{-x^2 / 2}
    e *= -0.5
    np.exp(e, out=e)
    poly *= e
    poly *= 0.5                                     # erfc(|x|/sqrt 2) / 2 = Phi(-|x|)
    right = _mask(x >= 0, x.dtype)                  # Phi = right + (1 - 2 right) Phi(-|x|)
    poly *= 1 - 2 * right
    poly += right
    return poly


def _softplus_params(beta, threshold):
    # beta = 0 divides by zero; a threshold of +-inf is meaningful (never / always linear)
    check_real("Softplus", "beta", beta, "a finite, non-zero number",
               lambda b: math.isfinite(b) and b != 0)
    check_real("Softplus", "threshold", threshold, "a number (not NaN)", lambda t: not math.isnan(t))


def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log(1 + e^{-|x|}): no overflow for any x, and
    (unlike np.logaddexp) no invalid-value warning for NaN, which just propagates."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


@register(
    "mish", module="Mish", kind="activation",
    formula=r"\mathrm{Mish}(x) = x \tanh(\mathrm{softplus}(x)) = x\tanh(\ln(1 + e^{x}))",
    derivative=r"\mathrm{Mish}'(x) = \tanh(\mathrm{sp}(x)) + x\,\sigma(x)\bigl(1 - \tanh^2(\mathrm{sp}(x))\bigr)",
    domains=WIDE,
    symbolic=lambda x, sp: x * sp.tanh(sp.log(1 + sp.exp(x))),
    reference=lambda torch, x: torch.nn.functional.mish(x),
)
def mish(x):
    """x tanh(softplus(x)); softplus' = sigmoid gives the second term of the derivative."""
    x = as_float(x)
    t = np.tanh(_softplus(x))
    return x * t, (x.copy(), t)         # a copy: the caller may change x before backward


@mish.set_backward
def _mish_backward(saved, gy):
    x, t = saved
    return gy * (t + x * stable_sigmoid(x) * (1 - t * t))


@mish.set_kernel
def _mish_kernel(x):
    # with n = e^x: tanh(log(1 + n)) = n (n + 2) / (n (n + 2) + 2), one exp for all;
    # n is capped at e^20, where t is 1 in float32 and n^2 is still finite
    n = exp(where(x < 20, x, 20.0))
    q = n * (n + 2)
    t = q / (q + 2)
    s = n / (1 + n)                                         # sigma(x), as n is e^x
    return x * t, t + x * s * (1 - t * t)


@register(
    "softplus", module="Softplus", kind="activation",
    formula=r"\mathrm{softplus}(x) = \frac{1}{\beta}\ln\bigl(1 + e^{\beta x}\bigr)\ \ (= x \text{ when } \beta x > \text{threshold})",
    derivative=r"\mathrm{softplus}'(x) = \sigma(\beta x)\ \ (= 1 \text{ when } \beta x > \text{threshold})",
    convention="above the threshold the function is x and the derivative 1, as PyTorch",
    params={"beta": 1.0, "threshold": 20.0}, test_params=({"beta": 2.0, "threshold": 10.0},),
    domains=WIDE,
    symbolic=lambda x, sp, beta, threshold: sp.log(1 + sp.exp(beta * x)) / beta,
    reference=lambda torch, x, beta, threshold: torch.nn.functional.softplus(x, beta, threshold),
    check_params=lambda p: _softplus_params(p["beta"], p["threshold"]),
)
def softplus(x, beta, threshold):
    """Smooth ReLU; reverts to the identity where beta * x > threshold (as PyTorch).

    The switch is a masked copy, not a 0/1 blend: s + [bx > t] (x - s) would
    give inf - inf = NaN at x = +inf, and 0 * -inf = NaN at -inf.  NaN stays NaN.
    """
    x = as_float(x)
    bx = x * beta
    linear = bx > threshold                        # rare, so a masked copy is cheap
    y = np.asarray(_softplus(bx))                  # 0-d input: NumPy gives a scalar, copyto needs an array
    if beta != 1:
        y /= beta
    np.copyto(y, x, where=linear)
    d = np.asarray(stable_sigmoid(bx))             # the derivative, 1 above the threshold
    np.copyto(d, 1, where=linear)
    return y, d


@softplus.set_backward
def _softplus_backward(d, gy):
    return gy * d


@softplus.set_kernel
def _softplus_kernel(x, beta, threshold):
    bx = beta * x
    e = exp(-abs(bx))
    y = (where(bx > 0, bx, 0.0) + log1p(e)) * (1 / beta)   # 1/beta once, not a division each
    s = 1 / (1 + e)
    s = where(bx >= 0, s, e * s)                            # sigma(beta x)
    return where(bx > threshold, x, y), where(bx > threshold, 1.0, s)


# -- the hard (piecewise linear) family --------------------------------------------

@register(
    "hardsigmoid", module="Hardsigmoid", kind="activation",
    formula=r"\mathrm{hardsigmoid}(x) = \min(\max(0, x/6 + 1/2), 1)",
    derivative=r"\mathrm{hardsigmoid}'(x) = \begin{cases} 1/6 & -3 < x < 3 \\ 0 & \text{otherwise} \end{cases}",
    convention="derivative 0 at x = -3 and x = 3, as PyTorch",
    kinks=(-3.0, 3.0), domains=WIDE,
    symbolic=lambda x, sp: sp.Min(sp.Max(0, x / 6 + sp.Rational(1, 2)), 1),
    reference=lambda torch, x: torch.nn.functional.hardsigmoid(x),
)
def hardsigmoid(x):
    """Piecewise-linear sigmoid: 0 below -3, 1 above 3, linear in between."""
    x = as_float(x)
    return np.clip(x / 6 + 0.5, 0, 1), (x > -3) & (x < 3)


@hardsigmoid.set_backward
def _hardsigmoid_backward(inside, gy):
    return gy * inside / 6


@hardsigmoid.set_kernel(save="input")
def _hardsigmoid_kernel(x):
    v = x / 6 + 0.5
    y = where(v <= 0, 0.0, where(v >= 1, 1.0, v))           # NaN -> NaN
    return y, where(x > -3, where(x < 3, 1 / 6, 0.0), 0.0)


@register(
    "hardswish", module="Hardswish", kind="activation",
    formula=r"\mathrm{hardswish}(x) = x\,\frac{\min(\max(0, x + 3), 6)}{6}",
    derivative=(r"\mathrm{hardswish}'(x) = \begin{cases} 0 & x \le -3 \\ x/3 + 1/2 & -3 < x < 3"
                r" \\ 1 & x \ge 3 \end{cases}"),
    convention="derivative 0 at x = -3 and 1 at x = 3, as PyTorch",
    kinks=(-3.0, 3.0), domains=WIDE,
    symbolic=lambda x, sp: x * sp.Min(sp.Max(0, x + 3), 6) / 6,
    reference=lambda torch, x: torch.nn.functional.hardswish(x),
)
def hardswish(x):
    """x * hardsigmoid(x), the MobileNetV3 activation."""
    x = as_float(x)
    return x * np.clip(x + 3, 0, 6) / 6, x.copy()       # a copy: the caller may change x


@hardswish.set_backward
def _hardswish_backward(x, gy):
    # 0 for x <= -3, x/3 + 1/2 inside, 1 for x >= 3 (and for NaN, as PyTorch):
    # masks as 0/1, no select; fmin/fmax keep the inside formula finite everywhere
    slope = np.fmax(np.fmin(x, 3), -3)
    slope /= 3
    slope += 0.5
    slope *= _mask((x > -3) & (x < 3), x.dtype)
    slope += _mask(~(x < 3), x.dtype)
    return gy * slope


@hardswish.set_kernel(save="input")
def _hardswish_kernel(x):
    c = x + 3
    c = where(c <= 0, 0.0, where(c >= 6, 6.0, c))
    return x * c / 6, where(x <= -3, 0.0, where(x < 3, x / 3 + 0.5, 1.0))   # NaN -> slope 1


@register(
    "identity", module="Identity", kind="activation",
    formula=r"f(x) = x", derivative=r"f'(x) = 1",
    domains=WIDE, complex_step=True,
    symbolic=lambda x, sp: x,
    reference=lambda torch, x: x * 1,
)
def identity(x):
    """Returns its input; the gradient passes through unchanged."""
    return as_float(x), None


@identity.set_backward
def _identity_backward(_, gy):
    return gy



# -- the rest of torch.nn's elementwise activations (issue 21) ----------------------------

def _ordered_bounds(who):
    """check_params for hardtanh: finite min_val < max_val, as PyTorch requires."""
    def check(p):
        for name in ("min_val", "max_val"):
            check_real(who, name, p[name], "a finite number")
        if not p["min_val"] < p["max_val"]:
            raise ValueError(f"{who}: min_val={p['min_val']!r} is not valid; expected min_val < "
                             f"max_val={p['max_val']!r}")
    return check


def _lambd(who):
    """check_params for the shrinks: lambd finite and >= 0, as PyTorch."""
    def check(p):
        check_real(who, "lambd", p["lambd"], "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)
    return check


@register(
    "hardtanh", module="Hardtanh", kind="activation",
    formula=r"\mathrm{Hardtanh}(x) = \min(\max(x, a), b),\quad a = \mathrm{min\_val},\ b = \mathrm{max\_val}",
    derivative=r"\mathrm{Hardtanh}'(x) = \begin{cases} 1 & a < x < b \\ 0 & \text{otherwise} \end{cases}",
    convention="Hardtanh'(a) = Hardtanh'(b) = 0, as PyTorch",
    params={"min_val": -1.0, "max_val": 1.0}, test_params=({"min_val": -2.0, "max_val": 0.5},),
    kinks=(-1.0, 1.0), domains=((-3.0, 3.0),) + WIDE[1:],
    symbolic=lambda x, sp, min_val, max_val: sp.Min(sp.Max(x, min_val), max_val),
    reference=lambda torch, x, min_val, max_val: torch.nn.functional.hardtanh(x, min_val, max_val),
    check_params=_ordered_bounds("Hardtanh"),
)
def hardtanh(x, min_val, max_val):
    """x clipped to [min_val, max_val]; derivative 1 strictly inside, else 0."""
    x = as_float(x)
    return np.clip(x, min_val, max_val), (x > min_val) & (x < max_val)


@hardtanh.set_backward
def _hardtanh_backward(inside, gy):
    return gy * inside


def _hardtanh_slope(y, min_val, max_val):
    return where(y > min_val, where(y < max_val, 1.0, 0.0), 0.0)


# save="output": y = clip(x, a, b) lies strictly inside (a, b) exactly where x does
# (x <= a gives y = a, x >= b gives y = b, NaN gives NaN: slope 0 for all three), so
# the slope is read from y and forward writes one array (save="input" would also copy x).
@hardtanh.set_kernel(save="output", slope=_hardtanh_slope)
def _hardtanh_kernel(x, min_val, max_val):
    y = where(x <= min_val, min_val, where(x >= max_val, max_val, x))     # NaN -> NaN
    return y, where(y > min_val, where(y < max_val, 1.0, 0.0), 0.0)       # 0 at a, b and NaN


@register(
    "softsign", module="Softsign", kind="activation",
    formula=r"\mathrm{softsign}(x) = \frac{x}{1 + |x|}",
    derivative=r"\mathrm{softsign}'(x) = \frac{1}{(1 + |x|)^2}",
    domains=WIDE,
    symbolic=lambda x, sp: x / (1 + sp.Abs(x)),
    reference=lambda torch, x: torch.nn.functional.softsign(x),
)
def softsign(x):
    """x / (1 + |x|): smooth, since both sides of 0 have slope 1 there.  The
    derivative 1/(1 + |x|)^2 is (1 - |y|)^2: computed from d = 1/(1 + |x|), which
    is finite for every x (1/inf = 0)."""
    x = as_float(x)
    d = 1 / (1 + np.abs(x))
    return x * d, d * d


@softsign.set_backward
def _softsign_backward(d2, gy):
    return gy * d2


# save="derivative": the slope (1 - |y|)^2 cannot be read from y, because y is NaN at
# x = +-inf (inf * 0, as in the NumPy path and PyTorch) where the derivative is 0, and
# at NaN, where it is NaN; recomputing from x (save="input") would copy x as well.
@softsign.set_kernel
def _softsign_kernel(x):
    d = 1 / (1 + abs(x))                # as the NumPy path: finite for every x
    return x * d, d * d


@register(
    "logsigmoid", module="LogSigmoid", kind="activation",
    formula=r"\log\sigma(x) = -\mathrm{softplus}(-x) = \min(x, 0) - \ln\bigl(1 + e^{-|x|}\bigr)",
    derivative=r"\frac{d}{dx}\log\sigma(x) = \frac{\sigma'(x)}{\sigma(x)} = 1 - \sigma(x) = \sigma(-x)",
    domains=WIDE,
    symbolic=lambda x, sp: -sp.log(1 + sp.exp(-x)),
    reference=lambda torch, x: torch.nn.functional.logsigmoid(x),
)
def logsigmoid(x):
    """log(sigmoid(x)) without log(0): min(x, 0) - log1p(e^{-|x|}) never
    exponentiates a positive number; its derivative sigma(-x) is kept."""
    x = as_float(x)
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x))), stable_sigmoid(-x)


@logsigmoid.set_backward
def _logsigmoid_backward(s_neg, gy):
    return gy * s_neg


def _logsigmoid_slope(y):
    return -expm1(y)                    # sigma(-x) = 1 - sigma(x) = 1 - e^y, without cancellation


# save="output": y = log sigma(x), so sigma(-x) = 1 - e^y = -expm1(y), exact in relative
# terms for y near 0 (large x) too; forward writes y alone, backward pays one expm1.
@logsigmoid.set_kernel(save="output", slope=_logsigmoid_slope)
def _logsigmoid_kernel(x):
    y = where(x < 0, x, 0.0) - log1p(exp(-abs(x)))       # NaN -> NaN, -inf -> -inf, inf -> 0
    return y, -expm1(y)


@register(
    "tanhshrink", module="Tanhshrink", kind="activation",
    formula=r"\mathrm{Tanhshrink}(x) = x - \tanh(x)",
    derivative=r"\mathrm{Tanhshrink}'(x) = 1 - (1 - \tanh^2 x) = \tanh^2 x",
    domains=WIDE,
    symbolic=lambda x, sp: x - sp.tanh(x),
    reference=lambda torch, x: torch.nn.functional.tanhshrink(x),
)
def tanhshrink(x):
    """x - tanh(x); the derivative tanh(x)^2 from the tanh that forward computes.

    Below |x| = 0.625 the difference cancels (in float32 tanh(1e-4) rounds to 1e-4,
    and x - tanh(x) to 0 instead of 3.3e-13; float64 loses all digits below 1e-8):
    there y is the series x^3/3 - 2x^5/15 + ..., on those elements only."""
    x = as_float(x)
    t = np.tanh(x)
    y = np.asarray(x - t)                          # 0-d input: an array, for put
    # indices, not a boolean mask: x[mask] and y[mask] = ... on a random pattern cost
    # ~5 ms each per million elements in mispredicted branches, take and put ~0.5 ms
    small = np.flatnonzero(np.abs(x) < 0.625)
    if small.size:
        coeffs = _TANHSHRINK_SERIES if x.dtype == np.float64 else _TANHSHRINK_SERIES32
        y.put(small, _tanhshrink_series(x.take(small), coeffs))
    return y, t


# x - tanh(x) = x^3/3 - 2x^5/15 + 17x^7/315 - ...: the Taylor coefficients of x^41 down to
# x^3 (sympy.series(x - tanh(x), x, 0, 43)).  Truncation below 0.625: 2e-16 relative with
# all 20 (float64), 7e-8 with the last 10 (float32 and float16, and the kernel).
_TANHSHRINK_SERIES = (-1.1587644432798853e-08, 2.859136662305254e-08, -7.054636946400968e-08,
                      1.7406618963571648e-07, -4.294911078273806e-07, 1.0597268320104654e-06,
                      -2.6147711512907546e-06, 6.451689215655431e-06, -1.5918905069328964e-05,
                      3.927832388331683e-05, -9.691537956929451e-05, 0.00023912911424355248,
                      -0.000590027440945586, 0.0014558343870513183, -0.003592128036572481,
                      0.008863235529902197, -0.021869488536155203, 0.05396825396825397,
                      -0.13333333333333333, 0.3333333333333333)
_TANHSHRINK_SERIES32 = _TANHSHRINK_SERIES[10:]


def _tanhshrink_series(x, coeffs):
    """x^3 Q(x^2) by Horner, in x's dtype (z Q first: x z could underflow early)."""
    z = x * x
    q = np.zeros_like(x)
    for c in coeffs:
        q *= z
        q += c
    return x * (z * q)


@tanhshrink.set_backward
def _tanhshrink_backward(t, gy):
    return gy * (t * t)


# save="derivative": tanh^2 x cannot be read from y = x - tanh x, and recomputing it from
# x (save="input") would copy x and evaluate tanh twice.
@tanhshrink.set_kernel
def _tanhshrink_kernel(x):
    # below |x| = 0.625 the series, as the NumPy path (Cephes' tanhf switches there too)
    t = tanh_scalar(x)
    z = x * x
    q = 0.0
    for c in _TANHSHRINK_SERIES32:
        q = q * z + c
    return where(abs(x) < 0.625, x * (z * q), x - t), t * t


@register(
    "softshrink", module="Softshrink", kind="activation",
    formula=(r"\mathrm{Softshrink}(x) = \begin{cases} x - \lambda & x > \lambda \\ x + \lambda & x < -\lambda "
             r"\\ 0 & \text{otherwise} \end{cases}"),
    derivative=r"\mathrm{Softshrink}'(x) = \begin{cases} 1 & |x| > \lambda \\ 0 & \text{otherwise} \end{cases}",
    convention="Softshrink'(lambd) = Softshrink'(-lambd) = 0, as PyTorch",
    params={"lambd": 0.5}, test_params=({"lambd": 1.5},),
    kinks=(-0.5, 0.5), domains=((-3.0, 3.0),) + WIDE[1:],
    symbolic=lambda x, sp, lambd: sp.Piecewise((x - lambd, x > lambd), (x + lambd, x < -lambd), (0, True)),
    reference=lambda torch, x, lambd: torch.nn.functional.softshrink(x, lambd),
    check_params=_lambd("Softshrink"),
)
def softshrink(x, lambd):
    """Shrinks x towards 0 by lambd (the proximal map of lambd |x|)."""
    x = as_float(x)
    lam = x.dtype.type(lambd)
    y = np.where(np.abs(x) <= lam, x.dtype.type(0), x - np.sign(x) * lam)     # NaN -> NaN
    return y, np.abs(x) > lam


@softshrink.set_backward
def _softshrink_backward(outside, gy):
    return gy * outside


def _shrink_slope(y, lambd):
    return where(abs(y) > 0, 1.0, 0.0)        # y != 0 and not NaN


# save="output": y is 0 exactly where |x| <= lambd (x - lambd is 0 only at x = lambd:
# no float difference of two distinct floats is 0), and NaN at NaN, where the
# slope is 0 too; forward writes y alone (save="input" would also copy x).
@softshrink.set_kernel(save="output", slope=_shrink_slope)
def _softshrink_kernel(x, lambd):
    y = where(abs(x) <= lambd, 0.0, x - where(x > 0, lambd, -lambd))      # NaN -> NaN
    return y, where(abs(y) > 0, 1.0, 0.0)


@register(
    "hardshrink", module="Hardshrink", kind="activation",
    formula=r"\mathrm{Hardshrink}(x) = \begin{cases} x & |x| > \lambda \\ 0 & \text{otherwise} \end{cases}",
    derivative=r"\mathrm{Hardshrink}'(x) = \begin{cases} 1 & |x| > \lambda \\ 0 & \text{otherwise} \end{cases}",
    convention="Hardshrink'(lambd) = Hardshrink'(-lambd) = 0, as PyTorch (the function jumps there: no derivative)",
    params={"lambd": 0.5}, test_params=({"lambd": 1.5},),
    kinks=(-0.5, 0.5), domains=((-3.0, 3.0),) + WIDE[1:],
    symbolic=lambda x, sp, lambd: sp.Piecewise((x, sp.Abs(x) > lambd), (0, True)),
    reference=lambda torch, x, lambd: torch.nn.functional.hardshrink(x, lambd),
    check_params=_lambd("Hardshrink"),
)
def hardshrink(x, lambd):
    """Zeroes the elements with |x| <= lambd and keeps the others."""
    x = as_float(x)
    outside = np.abs(x) > lambd
    return np.where(outside | np.isnan(x), x, x.dtype.type(0)), outside    # +0, never -0; NaN -> NaN


@hardshrink.set_backward
def _hardshrink_backward(outside, gy):
    return gy * outside


# save="output", with softshrink's slope: y is x itself (not 0) where |x| > lambd, and
# 0 (+0) or NaN elsewhere, so slope 1 exactly where y is neither 0 nor NaN.
@hardshrink.set_kernel(save="output", slope=_shrink_slope)
def _hardshrink_kernel(x, lambd):
    y = where(abs(x) <= lambd, 0.0, x)                     # +0, never -0; NaN -> NaN
    return y, where(abs(y) > 0, 1.0, 0.0)


@register(
    "threshold", module="Threshold", kind="activation",
    formula=r"\mathrm{Threshold}(x) = \begin{cases} x & x > t \\ v & \text{otherwise} \end{cases}",
    derivative=r"\mathrm{Threshold}'(x) = \begin{cases} 1 & x > t \\ 0 & \text{otherwise} \end{cases}",
    convention="Threshold'(t) = 0, as PyTorch (where v != t the function jumps there)",
    params={"threshold": 0.0, "value": 0.0}, test_params=({"threshold": 1.0, "value": -2.0},),
    kinks=(0.0,), domains=((-3.0, 3.0),) + WIDE[1:],
    symbolic=lambda x, sp, threshold, value: sp.Piecewise((x, x > threshold), (value, True)),
    reference=lambda torch, x, threshold, value: torch.nn.functional.threshold(x, threshold, value),
    check_params=_finite("Threshold", "threshold", "value"),
)
def threshold(x, threshold, value):
    """x above the threshold, the constant ``value`` at or below it (ReLU is
    threshold 0, value 0).  NaN stays NaN, as PyTorch."""
    x = as_float(x)
    above = x > threshold
    y = np.where(above | np.isnan(x), x, x.dtype.type(value))
    return y.astype(x.dtype, copy=False), above


@threshold.set_backward
def _threshold_backward(above, gy):
    return gy * above


# save="input", as relu: the slope cannot be read from y, since a value above the
# threshold (threshold 0, value 2) makes y = value ambiguous between x = value
# (slope 1) and x <= threshold (slope 0).
@threshold.set_kernel(save="input")
def _threshold_kernel(x, threshold, value):
    return where(x <= threshold, value, x), where(x > threshold, 1.0, 0.0)   # NaN -> NaN, slope 0


# -- gating -------------------------------------------------------------------------------

def _glu_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(4, 6)).astype(dtype),)


def _glu_dim(p):
    check_int("GLU", "dim", p["dim"], "an integer (a dim)", valid=lambda _: True)


@register(
    "glu", kind="gating",
    formula=r"\mathrm{GLU}(x) = a \odot \sigma(b),\quad [a, b] = x \text{ halved along dim}",
    derivative=r"g_a = g_y \odot \sigma(b),\quad g_b = g_y \odot a \odot \sigma(b)\bigl(1 - \sigma(b)\bigr)",
    params={"dim": -1}, test_params=({"dim": 0},), check_params=_glu_dim, sample=_glu_sample,
    domains=((-6.0, 6.0), (-100.0, 100.0)),
    reference=lambda torch, x, dim: torch.nn.functional.glu(x, dim),
)
def glu(x, dim):
    """The gated linear unit: the first half of x along ``dim`` times the sigmoid of the
    second half, as torch.nn.functional.glu (nn.GLU builds the same from split, sigmoid and
    mul, and its backward is the tape's; this op is the derivation written out)."""
    x = as_float(x)
    if not -max(x.ndim, 1) <= dim < max(x.ndim, 1) or x.ndim == 0:
        raise ValueError(f"glu: dim={dim} is out of range for an input of shape {x.shape}")
    d = dim % x.ndim
    if x.shape[d] % 2:
        raise ValueError(f"glu: halving needs an even size along dim {dim}, got shape {x.shape}")
    a, b = np.split(x, 2, axis=d)
    s = stable_sigmoid(b)
    return a * s, (a, s, d)


@glu.set_backward
def _glu_backward(saved, gy):
    a, s, d = saved
    return (np.concatenate([gy * s, gy * a * s * (1 - s)], axis=d),)
