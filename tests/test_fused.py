"""The fused float32 kernels (handydl._fast.fused, numba) against the NumPy paths
of the same ops and against PyTorch: every kernel, every parameter set, every
domain, the kinks, the extremes of float32, NaN and +-inf."""
from __future__ import annotations

import contextlib
import subprocess
import sys

import numpy as np
import pytest

from handydl import data, nn, ops, optim
from handydl._fast import fused
from conftest import to_torch

pytest.importorskip("numba")
torch = pytest.importorskip("torch")

FUSED_OPS = [op for op in ops.REGISTRY.values() if op._kernels]
CASES = [pytest.param(op, op.bind(params), id=f"{op.name}{params or ''}")
         for op in FUSED_OPS for params in ({},) + tuple(op.test_params)]
SIZE = (1 << 19) + 123    # a training-sized array, not a multiple of any SIMD width


def special_values():
    f32 = np.finfo(np.float32)
    return np.array([0.0, -0.0, np.nan, np.inf, -np.inf, f32.max, -f32.max, f32.tiny, -f32.tiny,
                     f32.smallest_subnormal, -1e-30, 1e-30, 1e-8, -1e-8, 1e-4, -1e-4, 0.5, -0.5,
                     0.625, -0.625, 3.0, -3.0, 6.0, 20.0, -20.0, 40.0, 88.7, 89.0, -87.0, -104.0,
                     -150.0, 709.0, 1e4, -1e4, 1e6, -1e6], np.float32)


def inputs(op, size=SIZE, seed=0):
    """Every domain the op's tests sample, its kinks (and their float32 neighbours)
    and the special values, in one float32 array of ``size`` elements."""
    rng = np.random.default_rng(seed)
    kinks = np.array(op.kinks, np.float32)
    near = np.concatenate([kinks, np.nextafter(kinks, np.inf), np.nextafter(kinks, -np.inf)])
    parts = [special_values(), near] + [rng.uniform(lo, hi, 2000).astype(np.float32) for lo, hi in op.domains]
    fixed = np.concatenate(parts)
    x = (rng.standard_normal(size) * 4).astype(np.float32)
    x[:fixed.size] = fixed
    return x


def forward_backward(op, x, params, gy):
    y, saved = op.forward(x, **params)
    return y, saved, op.backward(saved, gy)[0]


def assert_as_accurate(fused_value, numpy_value, truth, what, scale):
    """The fused float32 result is as accurate as the NumPy path's float32 result:
    its error against the float64 truth exceeds NumPy's by at most 1e-6 relative
    (8 float32 ulps) or 2.5e-7 * scale, two ulps of 1 at the element's scale:
    values that come from a cancellation (1 - y^2 for y near 1) can be off by
    that in either path.  NaN and the infinities must be where NumPy has them."""
    assert fused_value.dtype == np.float32, what
    finite = np.isfinite(numpy_value) & np.isfinite(truth)
    np.testing.assert_array_equal(fused_value[~finite], numpy_value[~finite], err_msg=f"{what}: NaN/inf")
    a, b, t = (v[finite].astype(np.float64) for v in (fused_value, numpy_value, truth))
    scale = np.broadcast_to(scale, finite.shape)[finite]
    excess = np.abs(a - t) - (np.abs(b - t) + 1e-6 * np.abs(t) + 2.5e-7 * scale)
    worst = int(np.argmax(excess))
    assert excess[worst] <= 0, (f"{what}: {a[worst]!r} where NumPy's float32 path gives {b[worst]!r} "
                                f"and float64 gives {t[worst]!r}")


@pytest.mark.parametrize("op,params", CASES)
def test_kernel_is_as_accurate_as_the_numpy_path(op, params):
    x = inputs(op)
    gy = np.random.default_rng(1).standard_normal(x.size).astype(np.float32)
    with np.errstate(all="raise"):               # the kernels raise no floating-point error
        y, saved, gx = forward_backward(op, x, params, gy)
    assert isinstance(saved, fused.Saved), "the fused path was not taken"
    with fused.disabled(), np.errstate(all="ignore"):
        y32, saved32, gx32 = forward_backward(op, x, params, gy)
        y64, _, gx64 = forward_backward(op, x.astype(np.float64), params, gy.astype(np.float64))
    assert not isinstance(saved32, fused.Saved)
    assert_as_accurate(y, y32, y64, f"{op.name}{params} forward", scale=1.0)
    assert_as_accurate(gx, gx32, gx64, f"{op.name}{params} backward", scale=np.abs(gy))


@pytest.mark.parametrize("op,params", CASES)
def test_kernel_is_accurate_near_zero(op, params):
    """Near 0 every activation is smooth and no formula cancels: relative accuracy,
    down to the smallest floats (this is where e^x - 1 would fail and expm1 not, and
    x - tanh(x) but not tanhshrink's series).  Values below float32's normal range are
    allowed their rounding, as in the forward: tanhshrink's derivative tanh(x)^2
    underflows for |x| < 1e-19, and 0 is then its float32 value."""
    tiny = np.geomspace(1e-37, 1e-2, fused.MIN_SIZE // 2)
    x = np.concatenate([tiny, -tiny]).astype(np.float32)
    y, saved, d = forward_backward(op, x, params, np.ones_like(x))
    assert isinstance(saved, fused.Saved)
    with fused.disabled():
        y64, _, d64 = forward_backward(op, x.astype(np.float64), params, np.ones(x.shape))
    np.testing.assert_allclose(y, y64, rtol=1e-6, atol=1e-44, err_msg=f"{op.name} forward")
    np.testing.assert_allclose(d, d64, rtol=1e-6, atol=1e-44, err_msg=f"{op.name} derivative")


@pytest.mark.parametrize("op,params", CASES)
def test_kernel_matches_torch(op, params):
    x = inputs(op)
    x = x[np.isfinite(x) & (np.abs(x) < 1e4)]              # torch's own float32 extremes differ
    x = np.concatenate([x, np.zeros(SIZE - x.size, np.float32)])
    gy = np.random.default_rng(2).standard_normal(x.size).astype(np.float32)
    y, _, gx = forward_backward(op, x, params, gy)
    tx = to_torch(torch, x, requires_grad=True)
    ty = op.reference(torch, tx, **params)
    tg, = torch.autograd.grad(ty, tx, torch.from_numpy(gy))
    scale = float(np.max(np.abs(x)))                        # absolute error grows with |x|
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=2e-5, atol=2e-6 * scale, err_msg=op.name)
    np.testing.assert_allclose(gx, tg.numpy(), rtol=2e-5, atol=2e-6 * scale, err_msg=op.name)


@pytest.mark.parametrize("op", [op for op in FUSED_OPS if op.kinks], ids=lambda op: op.name)
def test_kernel_keeps_the_conventions_at_kinks(op):
    """Exactly the NumPy path's (= PyTorch's) values at every kink."""
    x = np.zeros(fused.MIN_SIZE, np.float32)
    x[:len(op.kinks)] = op.kinks
    y, saved, g = forward_backward(op, x, {}, np.ones_like(x))
    assert isinstance(saved, fused.Saved)
    with fused.disabled():
        y_ref, _, g_ref = forward_backward(op, x, {}, np.ones_like(x))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(g, g_ref)


# -- the vectorizable helpers against NumPy's float64 functions ---------------------------

def compiled_helper(name):
    helper = fused._compiled_helpers()[name]
    return lambda xs: np.array([helper(v) for v in xs], np.float32)


def ulps(actual, expected):
    """|actual - expected| in units of the float32 spacing at expected."""
    expected32 = expected.astype(np.float32)
    return np.abs(actual.astype(np.float64) - expected) / np.spacing(np.abs(expected32)).astype(np.float64)


@pytest.mark.parametrize("name,reference,lo,hi", [
    ("exp", np.exp, -87.0, 88.7),
    ("expm1", np.expm1, -20.0, 20.0),
    ("log1p", np.log1p, 0.0, 1.0),
    ("tanh", np.tanh, -12.0, 12.0),
])
def test_helpers_are_within_a_few_float32_ulps(name, reference, lo, hi):
    x = np.concatenate([np.linspace(lo, hi, 4001), np.geomspace(1e-7, 0.7, 200),
                        -np.geomspace(1e-7, 0.7, 200)]).astype(np.float32)
    x = x[(x >= lo) & (x <= hi)]
    err = ulps(compiled_helper(name)(x), reference(x.astype(np.float64)))
    assert err.max() <= 3, f"{name}: {err.max():.1f} ulps at x = {x[err.argmax()]}"


def test_exp_at_the_ends_of_float32():
    exp = compiled_helper("exp")
    x = np.array([np.nan, np.inf, -np.inf, 88.72, 88.73, 89.0, 1000.0, -87.3, -100.0, -103.0, -104.0,
                  -1000.0], np.float32)
    got = exp(x)
    with np.errstate(over="ignore"):
        expected = np.exp(x.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(got[:3], [np.nan, np.inf, 0.0])
    np.testing.assert_array_equal(got[4:7], np.inf)
    np.testing.assert_allclose(got, expected, rtol=3e-7, atol=2e-45)   # subnormals: within a step


def test_helpers_run_as_plain_python_too():
    """Called from Python (float64), the helpers still compute what their names say."""
    for v in (-3.0, -0.01, 0.3, 2.5):
        assert fused.exp(v) == pytest.approx(np.exp(v), rel=1e-7)
        assert fused.expm1(v) == pytest.approx(np.expm1(v), rel=1e-7)
        assert fused.tanh(v) == pytest.approx(np.tanh(v), rel=1e-7)
    assert fused.log1p(0.25) == pytest.approx(np.log1p(0.25), rel=1e-9)


# -- when the fused path is (not) taken --------------------------------------------------------

def test_only_large_contiguous_float32_arrays_take_the_fused_path():
    x = np.linspace(-3, 3, fused.MIN_SIZE, dtype=np.float32)
    assert isinstance(ops.sigmoid.forward(x)[1], fused.Saved)
    for other in (x[:fused.MIN_SIZE - 1], x.astype(np.float64), x.reshape(64, -1)[:, ::2],
                  list(x[:8])):
        assert not isinstance(ops.sigmoid.forward(other)[1], fused.Saved)


@pytest.mark.parametrize("name,kept", [("gelu", fused.Derivative), ("leaky_relu", fused.Recompute),
                                       ("sigmoid", fused.FromOutput)])
def test_shape_and_dtype_are_kept_and_gy_of_another_dtype_falls_back(name, kept):
    """For each way of saving: a gy the loops do not take (float64, a scalar) gets
    NumPy's promotion and broadcasting, as on the unfused path."""
    op = ops.get(name)
    x = np.linspace(-3, 3, 8192, dtype=np.float32).reshape(64, 128)
    y, saved = op.forward(x)
    assert isinstance(saved, kept)
    assert y.shape == x.shape and y.dtype == np.float32
    g32 = op.backward(saved, np.ones_like(y))[0]
    g64 = op.backward(saved, np.ones(y.shape))[0]
    g_scalar = op.backward(saved, np.float32(1))[0]
    assert g32.shape == x.shape and g32.dtype == np.float32 and g64.dtype == np.float64
    np.testing.assert_array_equal(g32, g64.astype(np.float32))
    np.testing.assert_array_equal(g32, g_scalar)


def test_a_missing_numba_falls_back_to_numpy(monkeypatch):
    monkeypatch.setattr(fused, "_numba", False)
    x = np.linspace(-3, 3, 8192, dtype=np.float32)
    assert not fused.enabled()
    assert not isinstance(ops.silu.forward(x)[1], fused.Saved)


def test_the_environment_switches_the_kernels_off():
    code = "from handydl._fast import fused; print(fused.enabled())"
    run = lambda env: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,  # noqa: E731
                                     text=True, check=True).stdout.strip()
    import os
    assert run({**os.environ, "HANDYDL_FUSED": "0"}) == "False"
    assert run({k: v for k, v in os.environ.items() if k != "HANDYDL_FUSED"}) == "True"


def train(activation, steps=15):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 20)).astype(np.float32)
    y = rng.integers(0, 5, 512)
    model = nn.Sequential(nn.Linear(20, 64, rng=1), nn.activation(activation), nn.Linear(64, 5, rng=2))
    # SGD: its update is linear in the gradient, so rounding differences stay rounding-sized
    # (Adam divides by sqrt(v) and turns them into up-to-lr steps where a gradient is ~0)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for (xb, yb), _ in zip(data.DataLoader(X, y, 128), range(steps)):   # 128 x 64 = 8192 elements
        loss_fn(model(xb), yb)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return [p.data for p in model.parameters()]


@pytest.mark.parametrize("activation", ["relu", "gelu", "mish"])
def test_training_with_kernels_equals_training_without(activation):
    fast = train(activation)
    with fused.disabled():
        reference = train(activation)
    for a, b in zip(fast, reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- PReLU with one slope: leaky ReLU's kernel, and a fused dL/da -------------------------------

PRELU_SLOPES = [0.25, 1.5, -0.3, 0.0]


def prelu_both_ways(x, weight, gy):
    """(y, gx, dL/da) fused, unfused in float32, and unfused in float64."""
    op = ops.prelu
    with np.errstate(all="raise"):
        y, saved = op.forward(x, weight)
        gx, ga = op.backward(saved, gy)
    assert isinstance(saved[0], str), "the fused path was not taken"
    with fused.disabled(), np.errstate(all="ignore"):
        y32, saved32 = op.forward(x, weight)
        gx32, ga32 = op.backward(saved32, gy)
        y64, saved64 = op.forward(x.astype(np.float64), weight.astype(np.float64))
        gx64, ga64 = op.backward(saved64, gy.astype(np.float64))
    assert not isinstance(saved32[0], str)
    return (y, gx, ga), (y32, gx32, ga32), (y64, gx64, ga64)


@pytest.mark.parametrize("a", PRELU_SLOPES)
def test_prelu_with_one_slope_is_as_accurate_as_the_numpy_path(a):
    x = inputs(ops.prelu)
    x = x[np.isfinite(x)]                      # +-inf: below; a NaN makes dL/da NaN (below)
    gy = np.random.default_rng(3).standard_normal(x.size).astype(np.float32)
    weight = np.array([a], np.float32)
    (y, gx, ga), (y32, gx32, ga32), (y64, gx64, ga64) = prelu_both_ways(x, weight, gy)
    assert_as_accurate(y, y32, y64, f"prelu a={a} forward", scale=1.0)
    assert_as_accurate(gx, gx32, gx64, f"prelu a={a} backward", scale=np.abs(gy))
    assert ga.shape == (1,) and ga.dtype == np.float32
    # summed in double, the fused dL/da is at least as close to float64's as NumPy's float32 sum
    assert abs(ga[0] - ga64[0]) <= abs(ga32[0] - ga64[0]) + 1e-6 * abs(ga64[0])


def test_prelu_with_one_slope_at_nan_and_infinities():
    x = inputs(ops.prelu)
    gy = np.random.default_rng(4).standard_normal(x.size).astype(np.float32)
    gy[np.isinf(x)] = 1.0                      # gy * -inf with gy = 0 would be NaN
    weight = np.array([0.25], np.float32)
    (y, gx, ga), (y32, gx32, ga32), _ = prelu_both_ways(x, weight, gy)
    np.testing.assert_array_equal(y, y32)
    np.testing.assert_array_equal(gx, gx32)
    assert np.isnan(ga[0]) and np.isnan(ga32[0])
    finite = np.isfinite(x) | (x == np.inf)    # +inf adds 0 to dL/da, -inf adds -inf
    _, (ga_pos,) = ops.prelu.backward(ops.prelu.forward(np.where(finite, x, 0), weight)[1], gy)
    assert np.isfinite(ga_pos)
    _, (ga_neg,) = ops.prelu.backward(ops.prelu.forward(np.where(np.isnan(x), 0, x), weight)[1], gy)
    assert ga_neg == -np.inf


def test_prelu_with_one_slope_matches_torch_and_falls_back_where_it_must():
    x = inputs(ops.prelu)
    x = x[np.isfinite(x) & (np.abs(x) < 1e4)]
    gy = np.random.default_rng(5).standard_normal(x.size).astype(np.float32)
    weight = np.array([0.25], np.float32)
    y, saved = ops.prelu.forward(x, weight)
    gx, ga = ops.prelu.backward(saved, gy)
    tx, tw = to_torch(torch, x, requires_grad=True), to_torch(torch, weight, requires_grad=True)
    ty = torch.nn.functional.prelu(tx, tw)
    tgx, tga = torch.autograd.grad(ty, (tx, tw), torch.from_numpy(gy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(gx, tgx.numpy())
    np.testing.assert_allclose(ga, tga.numpy(), rtol=1e-5)
    # a float64 gy, a per-channel slope and a float64 slope take the NumPy path's rules
    gx64, ga64 = ops.prelu.backward(saved, gy.astype(np.float64))
    assert gx64.dtype == np.float64 and ga64.shape == (1,)
    np.testing.assert_allclose(ga64, ga, rtol=1e-5)
    x2 = x[:4096 * 4].reshape(4096, 4)
    assert not isinstance(ops.prelu.forward(x2, np.full(4, 0.25, np.float32))[1][0], str)
    assert not isinstance(ops.prelu.forward(x, weight.astype(np.float64))[1][0], str)


def test_prelu_module_trains_the_same_with_and_without_kernels():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((512, 16)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    grads = []
    for enabled in (True, False):
        m = nn.PReLU()
        with (contextlib.nullcontext() if enabled else fused.disabled()):
            m(x)
            gx = m.backward(gy)
        grads.append((gx, m.weight.grad.copy()))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-5)


# -- softmax cross-entropy, fused row by row -------------------------------------------------

def logits(rows=3000, classes=100, seed=5):
    """Rows of logits with extreme rows and rows that must come out NaN (BAD_ROWS)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, classes)) * 5).astype(np.float32)
    x[0] = rng.uniform(-1000, 1000, classes)             # no overflow: max is subtracted first
    x[1] = -1000.0
    x[2, 7] = np.nan                                     # a NaN row stays NaN
    x[3, 1] = np.inf                                     # inf - inf: NaN, as in the NumPy path
    x[4] = -np.inf
    return x, rng.integers(0, classes, rows)


BAD_ROWS = [2, 3, 4]
# (rows, classes): wide rows that take NumPy's row max and narrow ones (<= NARROW
# classes) whose max the fused pass finds; near the smallest fused size (fused.CE_MIN_SIZE)
CE_SHAPES = [(3000, 100), (30_000, 10), (40, 10), (30, 64), (30, 65), (31, 10)]


@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_cross_entropy_is_as_accurate_as_the_numpy_path(reduction, shape):
    x, y = logits(*shape)
    assert x.size >= fused.CE_MIN_SIZE
    gy = np.random.default_rng(6).standard_normal(len(y)).astype(np.float32) if reduction == "none" else 0.7
    with np.errstate(all="raise"):
        loss, saved = ops.cross_entropy.forward(x, y, reduction=reduction)
        gx = ops.cross_entropy.backward(saved, gy)[0]
    assert saved[0] == "fused" and gx.dtype == np.float32
    with fused.disabled(), np.errstate(all="ignore"):
        loss32, saved32 = ops.cross_entropy.forward(x, y, reduction=reduction)
        gx32 = ops.cross_entropy.backward(saved32, gy)[0]
        loss64, saved64 = ops.cross_entropy.forward(x.astype(np.float64), y, reduction=reduction)
        gx64 = ops.cross_entropy.backward(saved64, gy)[0]
    assert saved32[0] == "plain"
    if reduction == "none":
        assert_as_accurate(loss, loss32, loss64, "per-row losses", scale=1.0)
    else:
        assert np.isnan(loss) and np.isnan(loss32)             # the NaN rows
        keep = np.ones(len(y), bool)
        keep[BAD_ROWS] = False
        with fused.disabled():
            ref = ops.cross_entropy(x[keep].astype(np.float64), y[keep], reduction=reduction)
        fast = ops.cross_entropy(x[keep], y[keep], reduction=reduction)
        np.testing.assert_allclose(fast, ref, rtol=2e-6)
    assert_as_accurate(gx.astype(np.float32), gx32.astype(np.float32), gx64, "gradient",
                       scale=np.abs(np.broadcast_to(np.reshape(gy, (-1, 1)), x.shape)) / (len(y) if reduction == "mean" else 1))


@pytest.mark.parametrize("shape", CE_SHAPES)
def test_fused_cross_entropy_matches_torch(shape):
    x, y = logits(*shape)
    x = x[5:]                                             # finite rows
    y = y[5:]
    loss, saved = ops.cross_entropy.forward(x, y)
    assert saved[0] == "fused"
    gx = ops.cross_entropy.backward(saved, 1.0)[0]
    tx = torch.from_numpy(x).requires_grad_()
    tl = torch.nn.functional.cross_entropy(tx, torch.from_numpy(y))
    tg, = torch.autograd.grad(tl, tx)
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-6)
    # p - 1 near p = 1 cancels: a few float32 ulps of 1 (6e-8) in each of the two
    # float32 computations, times the mean's 1/N
    np.testing.assert_allclose(gx, tg.numpy(), rtol=1e-5, atol=6e-7 / len(y))


def test_invalid_parameters_fail_before_any_kernel_runs():
    x = np.ones(fused.MIN_SIZE, np.float32)
    for args in ((x,), (x[:3].astype(np.float64),)):       # fused-size and NumPy-path inputs
        with pytest.raises(ValueError, match="alpha=0"):
            ops.celu(*args, alpha=0)
    with pytest.raises(ValueError, match="alpha=0"):
        nn.CELU(alpha=0)                                    # at construction, not first use


@pytest.mark.parametrize("op", FUSED_OPS, ids=lambda op: op.name)
def test_kernels_take_the_numeric_parameters_in_declaration_order(op):
    """The registry passes numeric parameters positionally, in the order of op.params."""
    numeric = tuple(k for k in op.params if k not in op.choices)
    for _, kernel in op._kernels:
        for fn in filter(None, (kernel.f, kernel.slope)):
            code = fn.__code__
            assert code.co_varnames[1:code.co_argcount] == numeric, fn.__name__


@pytest.mark.parametrize("op", [op for op in FUSED_OPS if any(k.save == "output" for _, k in op._kernels)],
                         ids=lambda op: op.name)
def test_a_slope_from_the_output_agrees_with_the_kernels_derivative(op):
    """save="output" takes dy/dx = slope(y) in backward: it must be the derivative the
    kernel itself writes (both forms are hand-written; this keeps them one)."""
    x = inputs(op)
    for choice, kernel in op._kernels:
        params = op.bind(choice)
        numeric = tuple(np.float32(params[k]) for k in op.params if k not in op.choices)
        loops = fused._loops(kernel.f)
        y, d = np.empty_like(x), np.empty_like(x)
        loops["both"](x, y, d, numeric)
        from_y = np.empty_like(x)
        fused._slope_loop(kernel.slope)["grad"](y, np.ones_like(x), from_y, numeric)
        np.testing.assert_array_equal(from_y, d)


def test_set_kernel_says_what_is_wrong():
    op = ops.get("sigmoid")
    for kwargs, match in [(dict(save="outputs"), "save='outputs' is not valid; expected one of"),
                          (dict(save="output"), "a slope"),
                          (dict(slope=abs), "a slope")]:
        with pytest.raises(ValueError, match=match):
            op.set_kernel(**kwargs)
    assert len(op._kernels) == 1                        # nothing was attached


# -- the saved state never aliases the input (issue 14, item 5) ---------------------------
# Before, fused ReLU kept a reference to x and the NumPy path a mask: changing x in place
# between forward and backward gave 0.0 through one path and 10.0 through the other.
# Now neither path's saved state shares memory with the input, so the gradient is that of
# the function at the x the forward saw, whatever happens to x afterwards.

@pytest.mark.parametrize("op, params", CASES)
@pytest.mark.parametrize("path", ["fused", "numpy"])
def test_changing_the_input_after_forward_does_not_change_the_gradient(op, params, path):
    x = inputs(op)
    gy = np.random.default_rng(1).standard_normal(x.size).astype(np.float32)
    switch = contextlib.nullcontext() if path == "fused" else fused.disabled()
    with switch:
        _, saved_ref = op.forward(x.copy(), **params)
        expected = op.backward(saved_ref, gy)[0]
        _, saved = op.forward(x, **params)
        x[:] = -x                              # the caller reuses its buffer
        x[::7] = np.nan
        got = op.backward(saved, gy)[0]
    np.testing.assert_array_equal(got, expected)


def test_relu_gradient_through_both_paths_after_the_input_changes():
    """The issue's example, exactly: sum of gx after x is overwritten with -1."""
    x = np.ones(fused.MIN_SIZE * 4, np.float32)
    gy = np.ones_like(x)
    sums = {}
    for path, switch in (("fused", contextlib.nullcontext()), ("numpy", fused.disabled())):
        with switch:
            xi = x.copy()
            _, saved = ops.REGISTRY["relu"].forward(xi)
            xi[:] = -1
            sums[path] = float(ops.REGISTRY["relu"].backward(saved, gy)[0].sum())
    assert sums == {"fused": float(x.size), "numpy": float(x.size)}
