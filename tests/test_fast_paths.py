"""The optimized paths of the training step agree with the straightforward ones
within float32 rounding: the compiled axpy vs NumPy in the optimizers, skipping the
first layer's input gradient, adopting fresh gradients, the plain
cross-entropy path vs the general one, branch-free activations vs selects."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from handydl import data, nn, ops, optim
from handydl._fast import fused
from handydl.optim import optimizer as optimizer_module


def train(fast, opt_name, steps=20):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 20)).astype(np.float32)
    y = rng.integers(0, 5, 256)
    model = nn.Sequential(nn.Linear(20, 32, rng=1), nn.ReLU(), nn.Linear(32, 5, rng=2))
    # the general cross-entropy path is taken when class weights are given (all ones here)
    loss_fn = nn.CrossEntropyLoss() if fast else nn.CrossEntropyLoss(weight=np.ones(5, np.float32))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt_name == "sgd" else \
        optim.Adam(model.parameters(), lr=0.01)
    for (xb, yb), _ in zip(data.DataLoader(X, y, 32), range(steps)):
        loss_fn(model(xb), yb)
        opt.zero_grad()
        if fast:
            assert model.backward(loss_fn.backward(), input_grad=False) is None
        else:
            model.backward(loss_fn.backward())
            for p in model.parameters():           # no adoption: always copy into grad
                p._grad = p.grad.copy()
        opt.step()
    return [p.data for p in model.parameters()]


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_fast_training_step_equals_the_reference_within_float32_rounding(opt_name, monkeypatch):
    fast = train(True, opt_name)
    with fused.disabled():                       # NumPy's multiply and add instead of the compiled axpy
        reference = train(False, opt_name)
    for a, b in zip(fast, reference):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("n", [1, 10, 4097, 70001])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernels", [True, False])
def test_axpy_adds_a_x_in_place_on_either_path(n, dtype, kernels):
    """The compiled pass and NumPy's two passes both give y + a x rounded in
    y's dtype, in place; a non-contiguous y takes NumPy's."""
    rng = np.random.default_rng(n)
    for layout in ("contiguous", "strided"):
        x, y = rng.standard_normal(2 * n).astype(dtype), rng.standard_normal(2 * n).astype(dtype)
        if layout == "strided":
            x, y = x[::2], y[::2]
        else:
            x, y = x[:n], y[:n]
        y64, ax64 = y.astype(np.float64), -0.3 * x.astype(np.float64)
        target = y
        with contextlib.nullcontext() if kernels else fused.disabled():
            optimizer_module.axpy(-0.3, x, y, np.empty_like(y))
        assert y is target and y.dtype == dtype
        # three roundings at most (a to y's dtype, a x, the sum), each within eps/2 of the operands
        assert np.all(np.abs(y - (y64 + ax64)) <= 2 * np.finfo(dtype).eps * (np.abs(y64) + np.abs(ax64)))


def test_axpy_propagates_nan_and_inf():
    x = np.array([np.nan, 1.0, np.inf, 2.0] * 2000, np.float32)
    for kernels in (True, False):
        y = np.ones_like(x)
        with contextlib.nullcontext() if kernels else fused.disabled():
            optimizer_module.axpy(-0.5, x, y, np.empty_like(y))
        assert np.isnan(y[0]) and y[1] == 0.5 and y[2] == -np.inf and y[3] == 0.0


@pytest.mark.parametrize("kernels", [True, False])
def test_plain_cross_entropy_equals_the_general_path(kernels):
    """The plain path (class indices, no options; fused when numba is there) and the
    general one (here with unit weights).  A small loss is log S - z_y, two terms
    of up to ~20 in float32: it can differ by an ulp of them (2e-6) absolute."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 7)).astype(np.float32) * 5
    y = rng.integers(0, 7, 64)
    with contextlib.nullcontext() if kernels else fused.disabled():
        for reduction in ("mean", "sum", "none"):
            lf, sf = ops.cross_entropy.forward(x, y, reduction=reduction)
            lr, sr = ops.cross_entropy.forward(x, y, reduction=reduction, weight=np.ones(7, np.float32))
            assert (sf[0] == "fused") == (kernels and fused.enabled())
            gy = np.ones_like(lf) if reduction == "none" else 1.0
            np.testing.assert_allclose(lf, lr, rtol=1e-6, atol=2e-6)
            np.testing.assert_allclose(ops.cross_entropy.backward(sf, gy)[0],
                                       ops.cross_entropy.backward(sr, gy)[0], rtol=1e-5, atol=1e-7)


SELECTS = {   # the textbook definitions, with np.where, in float64
    "sigmoid": (lambda x: np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x)))),
                None),
    "leaky_relu": (lambda x: np.where(x > 0, x, 0.01 * x), lambda x: np.where(x > 0, 1.0, 0.01)),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))),
    "hardswish": (lambda x: x * np.clip(x + 3, 0, 6) / 6,
                  lambda x: np.where(x <= -3, 0.0, np.where(x < 3, x / 3 + 0.5, 1.0))),
    "softplus": (lambda x: np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))), None),
}


@pytest.mark.parametrize("name", SELECTS)
def test_branch_free_activations_equal_the_select_forms(name):
    x = np.random.default_rng(4).uniform(-30, 30, 10001).astype(np.float32)
    x[:4] = [0.0, -3.0, 3.0, 20.0]
    f, df = SELECTS[name]
    y, saved = ops.get(name).forward(x)
    np.testing.assert_allclose(y, f(x.astype(np.float64)), rtol=2e-6, atol=1e-7)
    if df is not None:
        g = ops.get(name).backward(saved, np.ones_like(x))[0]
        np.testing.assert_allclose(g, df(x.astype(np.float64)), rtol=2e-6, atol=1e-7)


def test_tune_malloc_is_harmless_and_idempotent():
    import handydl
    first = handydl.tune_malloc()
    assert handydl.tune_malloc() == first
    assert np.ones(10**6).sum() == 10**6


def test_float32_normal_cdf_is_accurate_and_its_fit_reproduces():
    """GELU's float32 Phi against SciPy's ndtr; the polynomial in it is what
    tools/fit_erfcx.py fits (so a reader can regenerate and check it)."""
    import importlib.util
    from pathlib import Path

    from scipy.special import ndtr

    from handydl.ops.activations import _ERFCX_COEFFS, normal_cdf
    x = np.linspace(-13, 8, 20001).astype(np.float32)
    truth = ndtr(x.astype(np.float64))
    rel = np.abs(normal_cdf(x) - truth) / truth
    # e^{-x^2/2} inherits the rounding of x^2: the relative error grows like x^2 ulps
    assert np.all(rel <= 4e-7 * (1 + x.astype(np.float64) ** 2)), float(rel.max())
    spec = importlib.util.spec_from_file_location("fit_erfcx", Path(__file__).parents[1] / "tools" / "fit_erfcx.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    np.testing.assert_allclose(np.float32(tool.fit()), np.float32(_ERFCX_COEFFS), rtol=1e-5, atol=1e-7)
    assert tool.float32_error(_ERFCX_COEFFS) < 2e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adam_equals_numpys_passes(dtype):
    """Adam's one compiled pass and NumPy's eleven give the same parameters and
    moments within rounding of the dtype over several steps, with and without
    weight decay; a NaN gradient makes its parameter NaN on both paths."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(7)
    start = rng.standard_normal((64, 33)).astype(dtype)
    grads = [rng.standard_normal(start.shape).astype(dtype) for _ in range(5)]
    grads[3][0, 0] = np.nan
    for wd, cls in ((0.0, optim.Adam), (0.1, optim.Adam), (0.1, optim.AdamW)):
        out = []
        for kernels in (True, False):
            p = nn.Parameter(start.copy())
            opt = cls([p], lr=1e-2, weight_decay=wd)
            with contextlib.nullcontext() if kernels else fused.disabled():
                for g in grads:
                    p.grad = g.copy()
                    opt.step()
            out.append((p.data, opt.state[0]["m"], opt.state[0]["v"]))
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for a, b in zip(*out):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
        assert np.isnan(out[0][0][0, 0]) and np.isnan(out[1][0][0, 0])


SGD_SETTINGS = [dict(), dict(momentum=0.9), dict(momentum=0.9, weight_decay=0.01),
                dict(momentum=0.5, dampening=0.3), dict(momentum=0.9, nesterov=True),
                dict(weight_decay=0.1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "plain")
def test_fused_sgd_equals_numpys_passes(settings, dtype):
    """SGD's one compiled pass and NumPy's passes give the same parameters and
    momentum buffers within rounding over several steps; a NaN gradient makes its
    parameter NaN on both paths, and an infinite weight stays infinite (not NaN)
    when there is no weight decay."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    start = rng.standard_normal((40, 17)).astype(dtype)
    start[1, 1] = np.inf
    grads = [rng.standard_normal(start.shape).astype(dtype) for _ in range(5)]
    grads[2][0, 0] = np.nan
    out = []
    for kernels in (True, False):
        p = nn.Parameter(start.copy())
        opt = optim.SGD([p], lr=0.05, **settings)
        # inf - inf under weight decay is NaN on both paths; NumPy's would warn
        with contextlib.nullcontext() if kernels else fused.disabled(), np.errstate(invalid="ignore"):
            for g in grads:
                p.grad = g.copy()
                opt.step()
        out.append((p.data, opt.state[0].get("momentum_buffer")))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(*out):
        if a is None:
            assert b is None and not settings.get("momentum")
            continue
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for data, _ in out:
        assert np.isnan(data[0, 0])
        if not settings.get("weight_decay"):
            assert data[1, 1] == np.inf
