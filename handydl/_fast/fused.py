r"""Fused float32 kernels: an activation's f and f' in one pass, and softmax
cross-entropy row by row.

NumPy evaluates ``x * normal_cdf(x)`` as a dozen separate passes over memory,
each single-threaded and each allocating.  PyTorch and XLA instead run one
SIMD loop per op.  When numba is installed (``pip install "handydl[fast]"``),
an activation that declares a *scalar kernel* gets the same: numba compiles
the kernel into one vectorized float32 loop that writes y and dy/dx together
(on one core: splitting it across the cores did not pay in any training
workload of the benchmark, docs/performance.md); backward is then
``gx = gy * dy/dx``.  Two other ways to save move less memory:
piecewise-linear kernels declare ``save="input"`` (forward writes y and keeps
a copy of x, backward recomputes dy/dx from it), and sigmoid ``save="output"`` with its
slope y (1 - y) (forward writes y alone, backward reads y).  Without numba,
or for anything but large contiguous float32 arrays, the op's NumPy code runs
instead; tests/test_fused.py holds both paths to the same accuracy, on every
domain, at the kinks, at NaN and at +-inf.

A scalar kernel is plain Python, the derivation written for one number::

    @sigmoid.set_kernel(save="output", slope=_sigmoid_slope)
    def _sigmoid_kernel(x):
        e = exp(-abs(x))
        s = 1 / (1 + e)                     # sigma(|x|)
        y = where(x >= 0, s, e * s)         # e^x / (1 + e^x) for x < 0
        return y, y * (1 - y)               # f(x), f'(x)

The compiler sees every literal and float global as float32 (_float32), and
``exp``, ``expm1``, ``log1p``, ``tanh`` and ``where`` below are written so that
the loop vectorizes: a call into the C library's exp would not, nor would a
branch.  Called from Python, kernels and helpers run too, in float64, one
number at a time.

``HANDYDL_FUSED=0`` in the environment, or ``with fused.disabled():``, turns
the kernels off (the tests use it to compare both paths).  The first call of
each kernel compiles it (up to about a second).
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import types
from typing import Callable, NamedTuple

import numpy as np

# Below MIN_SIZE elements a kernel call costs more than it saves.
MIN_SIZE = 4096
# Softmax cross-entropy replaces a chain of NumPy calls with two compiled ones
# and pays off from far smaller inputs; rows of up to NARROW classes find their
# max inside the fused pass.
CE_MIN_SIZE = 256
NARROW = 64

_enabled = os.environ.get("HANDYDL_FUSED", "1") != "0"
_lock = threading.Lock()
_numba = None          # the module, False when it is not installed
_compiled = {}         # scalar kernel -> its compiled loops; also the helpers, the products
                       # and the cross-entropy loops, under names


# -- vectorizable helpers -------------------------------------------------------------------
# exp and tanh after Cephes' single-precision algorithms (Moshier), expm1 and log1p from
# their series; each within 3 float32 ulps (tests/test_fused.py).
# Compiled, every literal is float32 (see _float32); called from Python they run in float64.

LOG2E = 1.44269504088896341
LN2_HI = 0.693359375                # ln 2 = LN2_HI - LN2_LO; n * LN2_HI is exact in float32
LN2_LO = -2.12194440e-4


def where(condition, a, b):
    """a if condition else b, as a select: compiled, both sides are computed and
    one is picked, with no branch (a ternary becomes a branch, and a loop with a
    costly branch inside vectorizes badly; CELU's kernel showed it)."""
    return a if condition else b


def exp(x):
    r"""e^x = 2^n e^r with n = round(x / ln 2), |r| <= ln(2)/2, and e^r from
    Cephes' minimax polynomial.  x is clamped to [-104, 89]: float32's e^x is 0
    below and inf above, which the clamped values still give."""
    xc = where(x > -104.0, x, -104.0)         # NaN goes to -104 here and is put back last
    xc = where(xc < 89.0, xc, 89.0)
    n = np.floor(xc * LOG2E + 0.5)
    r = xc - n * LN2_HI - n * LN2_LO
    p = ((((1.9875691500e-4 * r + 1.3981999507e-3) * r + 8.3334519073e-3) * r
          + 4.1665795894e-2) * r + 1.6666665459e-1) * r + 5.0000001201e-1
    y = ldexp(p * (r * r) + r + 1.0, n)
    return where(x != x, x, y)


def expm1(x):
    r"""e^x - 1 without cancellation near 0: Taylor to x^8/8! for |x| < 0.5
    (truncation < 6e-9 relative), e^x - 1 elsewhere (no digits lost there)."""
    p = x * (1.0 + x * (1 / 2 + x * (1 / 6 + x * (1 / 24 + x * (1 / 120 + x * (1 / 720 + x * (1 / 5040 + x / 40320)))))))
    return where(abs(x) < 0.5, p, exp(x) - 1.0)


def ldexp(m, n):
    """m 2^n for an integral n in [-151, 128], rounded once (also below 2^-126)."""
    return math.ldexp(m, int(n))


def log1p(u):
    r"""ln(1 + u) for 0 <= u <= 1, as 2 atanh(s) with s = u / (2 + u) <= 1/3:
    2 (s + s^3/3 + ... + s^13/13), truncation error < 2e-8 relative (a sixth of
    float32's epsilon)."""
    s = u / (2.0 + u)
    s2 = s * s
    p = 1.0 / 13.0
    for k in (11.0, 9.0, 7.0, 5.0, 3.0):
        p = p * s2 + 1.0 / k
    return 2.0 * s * (p * s2 + 1.0)


def tanh(u):
    r"""Cephes' tanhf: an odd polynomial for |u| < 0.625, else 1 - 2 / (e^{2|u|} + 1)
    with u's sign.  NaN stays NaN."""
    a = abs(u)
    z = u * u
    small = ((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z
              + 1.33314422036e-1) * z - 3.33332819422e-1) * z * u + u
    big = 1.0 - 2.0 / (exp(2.0 * a) + 1.0)
    t = where(a < 0.625, small, where(u >= 0, big, -big))
    return where(u != u, u, t)


HELPERS = {"where": where, "exp": exp, "expm1": expm1, "log1p": log1p, "tanh": tanh, "ldexp": ldexp}


# -- switching the kernels on and off -----------------------------------------------------

def enabled() -> bool:
    """True when the kernels will be used: switched on and numba importable."""
    return _enabled and _load_numba() is not None


@contextlib.contextmanager
def disabled():
    """Run the NumPy paths inside the block (for comparisons and debugging)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def usable(x, min_size=MIN_SIZE) -> bool:
    """Whether the fused path applies to x: a contiguous float32 array of at
    least ``min_size`` elements."""
    return (_enabled and isinstance(x, np.ndarray) and x.dtype == np.float32
            and x.size >= min_size and x.flags.c_contiguous and _load_numba() is not None)


def _load_numba():
    """numba, imported on first use (it takes ~0.2 s); None if it is not installed."""
    global _numba
    if _numba is None:
        try:
            import numba
            _numba = numba
        except ImportError:
            _numba = False
    return _numba or None


# -- compiling a scalar kernel into a loop ------------------------------------------------

def _jit(fn, fastmath=frozenset({"contract"}), **options):
    # contract: a * b + c becomes one fused multiply-add (faster, and rounded once)
    return _load_numba().njit(nogil=True, error_model="numpy", fastmath=set(fastmath), **options)(fn)


def _compiled_helpers():
    """The helpers as float32 numba functions; where is LLVM's select, ldexp two bit
    casts (a call to the C library's ldexp does not vectorize)."""
    if "helpers" not in _compiled:
        from llvmlite import ir
        from numba.core import types as nbtypes
        from numba.core.extending import intrinsic

        @intrinsic
        def select(typingctx, condition, a, b):
            def codegen(context, builder, signature, args):
                return builder.select(args[0], args[1], args[2])
            return nbtypes.float32(nbtypes.boolean, nbtypes.float32, nbtypes.float32), codegen

        @intrinsic
        def bits_as_float32(typingctx, bits):
            def codegen(context, builder, signature, args):
                return builder.bitcast(args[0], ir.FloatType())
            return nbtypes.float32(nbtypes.int32), codegen

        def fast_ldexp(m, n):
            # two normal factors 2^h 2^(n-h), applied one after the other: m 2^h is
            # exact, and m 2^h 2^(n-h) is rounded once, however small or large
            i = np.int32(n)
            h = i >> 1
            return (m * bits_as_float32((h + 127) << 23)) * bits_as_float32((i - h + 127) << 23)

        compiled = {"where": select, "ldexp": _jit(fast_ldexp, inline="always")}
        for name in ("exp", "expm1", "log1p", "tanh"):     # in dependency order
            compiled[name] = _jit(_float32(HELPERS[name], compiled), inline="always")
        _compiled["helpers"] = compiled
    return _compiled["helpers"]


def _float32(fn, replacements):
    """A copy of fn for the compiler: its numeric literals and float globals become
    float32 (numba would otherwise type them float64 and do the float32 work in
    double, at half the SIMD width), and every global naming a helper (under any
    alias) means its compiled version in ``replacements``."""
    compiled = {id(HELPERS[name]): f for name, f in replacements.items()}
    namespace = {k: compiled.get(id(v)) or _as_float32(v) for k, v in fn.__globals__.items()}
    consts = tuple(_as_float32(c) for c in fn.__code__.co_consts)
    return types.FunctionType(fn.__code__.replace(co_consts=consts), namespace, fn.__name__,
                              fn.__defaults__, fn.__closure__)


def _as_float32(value):
    """Numbers (and tuples of numbers) as float32; anything else unchanged."""
    if type(value) in (int, float):
        return np.float32(value)
    if type(value) is tuple and value and all(type(v) in (int, float) for v in value):
        return tuple(np.float32(v) for v in value)
    return value


def _with_params(scalar):
    """scalar(x, *params) compiled as f(x, params): numba cannot call a closure with
    *params, so the arity is spelled out."""
    scalar = _jit(_float32(scalar, _compiled_helpers()), inline="always")
    arity = scalar.py_func.__code__.co_argcount - 1
    if arity == 0:
        def f(x, params):
            return scalar(x)
    elif arity == 1:
        def f(x, params):
            return scalar(x, params[0])
    else:
        def f(x, params):
            return scalar(x, params[0], params[1])
    return _jit(f, inline="always")


def _loops(kernel):
    """The compiled loops of a scalar kernel ``f(x, *params) -> (y, dy/dx)``:

    both(x, y, d, params)     y and dy/dx
    value(x, y, params)       y alone (the compiler drops the derivative's arithmetic)
    grad(x, gy, gx, params)   gx = gy * dy/dx, recomputed from x (drops y's)
    """
    with _lock:
        if kernel not in _compiled:
            f = _with_params(kernel)

            def both(x, y, d, params):
                for i in range(x.size):
                    y[i], d[i] = f(x[i], params)

            def value(x, y, params):
                for i in range(x.size):
                    y[i] = f(x[i], params)[0]

            def grad(x, gy, gx, params):
                for i in range(x.size):
                    gx[i] = gy[i] * f(x[i], params)[1]
            _compiled[kernel] = {"both": _jit(both), "value": _jit(value), "grad": _jit(grad)}
        return _compiled[kernel]


def _slope_loop(slope):
    """The compiled loop gx = gy * slope(y, *params)."""
    with _lock:
        if slope not in _compiled:
            f = _with_params(slope)

            def grad(y, gy, gx, params):
                for i in range(y.size):
                    gx[i] = gy[i] * f(y[i], params)
            _compiled[slope] = {"grad": _jit(grad)}
        return _compiled[slope]


def _multiply_loop():
    with _lock:
        if "multiply" not in _compiled:
            def multiply(a, b, out):
                for i in range(a.size):
                    out[i] = a[i] * b[i]
            _compiled["multiply"] = _jit(multiply)
        return _compiled["multiply"]


def _negative_dot(x, gy):
    """sum of gy_i x_i over x_i <= 0 (and NaN), summed in double."""
    s = np.float64(0)
    for i in range(x.size):
        s += where(x[i] > 0, 0.0, gy[i] * x[i])
    return s


def negative_dot(x, gy):
    r"""PReLU's dL/da for one slope a: :math:`\sum_{x_i \le 0} g_{y,i} x_i`, in one pass
    over usable float32 x and gy of one shape (one thread: it is a reduction).
    A NaN in x makes it NaN, as in NumPy's ``(gy * np.minimum(x, 0)).sum()``."""
    with _lock:
        if "negative_dot" not in _compiled:
            # reassoc lets the compiler vectorize the sum (in partial sums)
            _compiled["negative_dot"] = _jit(_float32(_negative_dot, _compiled_helpers()),
                                             fastmath={"contract", "reassoc"})
    return float(_compiled["negative_dot"](x.reshape(-1), gy.reshape(-1)))


# -- what the registry calls ------------------------------------------------------------------

SAVES = ("derivative", "input", "output")


class Kernel(NamedTuple):
    """A scalar kernel ``f(x, *params) -> (y, dy/dx)`` and what its forward saves
    (see Op.set_kernel); ``slope(y, *params) -> dy/dx`` for save="output"."""

    f: Callable
    save: str = "derivative"
    slope: Callable | None = None


def check_save(save, slope, name):
    """ValueError unless ``save`` is one of SAVES, with a slope exactly for "output"."""
    if save not in SAVES:
        raise ValueError(f"{name}: save={save!r} is not valid; expected one of {', '.join(map(repr, SAVES))}")
    if (save == "output") != (slope is not None):
        raise ValueError(f"{name}: save={save!r} with slope={slope!r}; a slope (dy/dx from y) "
                         "goes with save='output' and only with it")


class Saved:
    """What a fused forward keeps for backward."""


class Derivative(Saved):
    """dy/dx itself, computed with y: for kernels whose derivative is costly."""

    __slots__ = ("d",)

    def __init__(self, d):
        self.d = d


class Recompute(Saved):
    """x, from which backward recomputes dy/dx: for kernels that cost less than
    the memory traffic of storing dy/dx and reading it back (the piecewise-linear ones)."""

    __slots__ = ("kernel", "x", "params")

    def __init__(self, kernel, x, params):
        self.kernel, self.x, self.params = kernel, x, params


class FromOutput(Saved):
    """y, from which backward computes dy/dx = slope(y): the forward writes one
    array instead of two (y and dy/dx), and backward reads as much as from a
    Derivative (gy and y instead of gy and dy/dx)."""

    __slots__ = ("slope", "y", "params")

    def __init__(self, slope, y, params):
        self.slope, self.y, self.params = slope, y, params


def forward(kernel, x, params):
    """(y, saved) for a usable x in one fused pass; saved as ``kernel.save`` says."""
    params = tuple(np.float32(p) for p in params)
    loops = _loops(kernel.f)
    y = np.empty_like(x)
    if kernel.save == "derivative":
        d = np.empty_like(x)
        loops["both"](*_flat(x, y, d), params)
        return y, Derivative(d)
    loops["value"](*_flat(x, y), params)
    if kernel.save == "input":
        # A copy, not x itself: the caller may overwrite x before backward, and the
        # NumPy path (which keeps a mask) would then disagree.  One memcpy.
        return y, Recompute(kernel.f, x.copy(), params)
    return y, FromOutput(kernel.slope, y, params)


def _flat(*arrays):
    return [a.reshape(-1) for a in arrays]


def backward(saved, gy):
    """gx = gy * dy/dx, fused when gy is a usable float32 array of x's shape."""
    if isinstance(saved, Derivative):
        if not (usable(gy) and gy.shape == saved.d.shape):
            return gy * saved.d
        gx = np.empty_like(saved.d)
        _multiply_loop()(*_flat(gy, saved.d, gx))
        return gx
    source, loops = _slope_source(saved)
    if not (usable(gy) and gy.shape == source.shape):
        return gy * _derivative(saved)
    gx = np.empty_like(source)
    loops["grad"](*_flat(source, gy, gx), saved.params)
    return gx


def _slope_source(saved):
    """(the array a Recompute or FromOutput keeps, the loops that give gy * dy/dx from it)."""
    if isinstance(saved, Recompute):
        return saved.x, _loops(saved.kernel)
    return saved.y, _slope_loop(saved.slope)


def _derivative(saved):
    """dy/dx alone from a Recompute or FromOutput, for a gy the fused loops do not
    take (another shape or dtype)."""
    source, loops = _slope_source(saved)
    ones = np.ones_like(source)
    loops["grad"](*_flat(source, ones, ones), saved.params)
    return ones


# -- softmax cross-entropy, row by row ---------------------------------------------------------

def _ce_forward(x, m, y, per, logs):
    """Per row n, with m_n = max_c x_nc: log S_n = log sum_c e^{x_nc - m_n} and
    L_n = log S_n - (x_{n,y_n} - m_n).  x - m is formed first, as in the NumPy
    path: adding m back (log-sum-exp) would round at the scale of |x|.  Rows of
    at most NARROW classes find m_n here; wider ones come with it in m."""
    rows, classes = x.shape                  # (not x.shape[0]: _float32 makes literals floats)
    for i in range(rows):
        if classes <= NARROW:
            m[i] = -np.inf
            for c in range(classes):
                # NaN never wins the max, but its e^{x - m} makes the row NaN below
                m[i] = where(x[i, c] > m[i], x[i, c], m[i])
        s = np.float64(0)                     # summed in double: 1000 terms lose no digits
        for c in range(classes):
            s += exp(x[i, c] - m[i])
        logs[i] = np.log(s)
        per[i] = logs[i] - (x[i, y[i]] - m[i])


def _ce_backward(x, y, m, logs, scale, gx):
    """gx_n = (softmax(x_n) - onehot(y_n)) scale_n, softmax(x_n)_c = e^{(x_nc - m_n) - log S_n}."""
    rows, classes = x.shape
    for i in range(rows):
        for c in range(classes):
            gx[i, c] = exp((x[i, c] - m[i]) - logs[i]) * scale[i]
        gx[i, y[i]] -= scale[i]


def _ce_loops():
    with _lock:
        if "cross_entropy" not in _compiled:
            helpers = _compiled_helpers()
            # reassoc lets the compiler vectorize the row sums (in 8 partial sums)
            _compiled["cross_entropy"] = [_jit(_float32(f, helpers), fastmath={"contract", "reassoc"})
                                          for f in (_ce_forward, _ce_backward)]
        return _compiled["cross_entropy"]


def cross_entropy_rows(x, y):
    """(per-row losses, (m, log S)) of softmax cross-entropy with class indices y,
    for a 2-D float32 x usable with CE_MIN_SIZE: one fused pass per row, after
    NumPy's SIMD row max for rows of more than NARROW classes (on narrower rows
    NumPy's reduction costs more per row than the fused pass finding the max)."""
    m = np.empty(len(x), np.float32) if x.shape[1] <= NARROW else x.max(axis=1)
    y = np.ascontiguousarray(y, np.int64)     # one label type: one compiled loop
    per = np.empty(len(x), np.float32)
    logs = np.empty(len(x), np.float32)
    _ce_loops()[0](x, m, y, per, logs)
    return per, (m, logs)


def cross_entropy_grad(x, y, m_logs, scale):
    """dL/dx = (softmax(x) - onehot(y)) * scale (one scale, or one per row), in one pass."""
    m, logs = m_logs
    y = np.ascontiguousarray(y, np.int64)
    gx = np.empty_like(x)
    if np.ndim(scale) == 0:               # the mean's 1/N: one number for every row
        scale = np.full(len(x), scale, np.float32)
    else:
        scale = np.ascontiguousarray(np.asarray(scale, np.float32).reshape(-1))
    _ce_loops()[1](x, y, m, logs, scale, gx)
    return gx


# -- the optimizers' update y += a x -----------------------------------------------------------

def _axpy(a, x, y):
    for i in range(y.size):
        y[i] += a * x[i]


def axpy(a, x, y, buf):
    """y += a * x in place: one compiled pass (one multiply-add per element) when
    the kernels are on and x, y are contiguous arrays of one float dtype;
    otherwise two NumPy passes through the scratch array ``buf`` (no allocation).
    The optimizers call it for every parameter on every step: SGD's update of a
    784 x 256 weight is 3x faster this way (python -m bench.micro)."""
    if (_enabled and x.dtype == y.dtype and y.dtype in (np.float32, np.float64) and x.shape == y.shape
            and x.flags.c_contiguous and y.flags.c_contiguous and _load_numba() is not None):
        loop = _compiled.get("axpy")
        if loop is None:
            with _lock:
                loop = _compiled.setdefault("axpy", _jit(_axpy))
        loop(y.dtype.type(a), x.reshape(-1), y.reshape(-1))
        return
    np.multiply(x, a, out=buf)
    y += buf


# -- SGD's update in one pass ----------------------------------------------------------------

def _sgd(p, g, b, lr, mu, damp1, wd, nesterov, first):
    for i in range(p.size):
        gi = g[i]
        if wd != 0:                   # a branch, not 0 * p: an inf weight must not become NaN
            gi += wd * p[i]
        if mu != 0:
            bi = gi if first else mu * b[i] + damp1 * gi
            b[i] = bi
            gi = gi + mu * bi if nesterov else bi
        p[i] -= lr * gi


def sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    r"""SGD's step in place, one pass over p, g and the momentum buffer (torch.optim.SGD's rule):
    :math:`g \mathrel{+}= \text{wd}\, p`; :math:`b = \mu b + (1 - \text{dampening}) g`
    (:math:`b = g` at the ``first`` step); :math:`g = g + \mu b` (Nesterov) or :math:`b`;
    :math:`p \mathrel{-}= \text{lr}\, g`.  ``buf`` is None without momentum.  True if
    it ran; False when the kernels do not apply (the optimizer then runs NumPy's
    passes: three with momentum, where this is one)."""
    arrays = (p, g) if buf is None else (p, g, buf)
    if not (_enabled and p.dtype in (np.float32, np.float64) and all(a.dtype == p.dtype for a in arrays)
            and all(a.shape == p.shape and a.flags.c_contiguous for a in arrays) and _load_numba() is not None):
        return False
    loop = _compiled.get("sgd")
    if loop is None:
        with _lock:
            loop = _compiled.setdefault("sgd", _jit(_sgd))
    f = p.dtype.type
    flat = [a.reshape(-1) for a in arrays]
    loop(flat[0], flat[1], flat[-1] if buf is not None else flat[0], f(lr), f(momentum), f(1 - dampening),
         f(weight_decay), bool(nesterov), bool(first))
    return True


# -- Adam's update in one pass ---------------------------------------------------------------

def _adam(p, g, m, v, b1, a1, b2, a2, step, bias2, eps):
    for i in range(p.size):
        m[i] = b1 * m[i] + a1 * g[i]
        v[i] = b2 * v[i] + a2 * (g[i] * g[i])
        p[i] += step * (m[i] / (np.sqrt(v[i]) * bias2 + eps))


def adam(p, g, m, v, b1, b2, step, bias2, eps):
    r"""Adam's moments and update in place, one pass over p, g, m, v:
    :math:`m = \beta_1 m + (1-\beta_1) g`, :math:`v = \beta_2 v + (1-\beta_2) g^2`,
    :math:`p \mathrel{+}= \text{step}\, m / (\sqrt{v}\,\text{bias2} + \epsilon)` with
    step = -lr / (1 - beta1^t) and bias2 = 1 / sqrt(1 - beta2^t).  True if it ran;
    False when the kernels do not apply (numba missing or off, arrays of other
    dtypes, shapes or layouts): the optimizer then runs NumPy's passes, eleven
    of them, which the deep MLP's Adam step spent most of its time in."""
    arrays = (p, g, m, v)
    if not (_enabled and p.dtype in (np.float32, np.float64) and all(a.dtype == p.dtype for a in arrays)
            and all(a.shape == p.shape and a.flags.c_contiguous for a in arrays) and _load_numba() is not None):
        return False
    with _lock:
        if "adam" not in _compiled:
            _compiled["adam"] = _jit(_adam)
    f = p.dtype.type
    _compiled["adam"](*(a.reshape(-1) for a in arrays), f(b1), f(1 - b1), f(b2), f(1 - b2),
                      f(step), f(bias2), f(eps))
    return True
