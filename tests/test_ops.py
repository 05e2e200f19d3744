"""Every registered op, every parameter set, every domain, both dtypes:
forward and backward against PyTorch autograd, the Jacobian against central
differences and the complex step, derivatives against SymPy, kinks against
PyTorch's conventions, extreme inputs under np.errstate(all="raise")."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import ops
from conftest import (analytic_jacobian, cast_params, diff_indices, flat, make_inputs,
                      numeric_jacobian, op_cases, outputs_of, to_torch, torch_params)

torch = pytest.importorskip("torch")

CASES = op_cases()
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-10}
# PyTorch 2.13's hardsigmoid backward multiplies by 1/6 rounded to float32,
# even for float64 (its gradient is 0.1666666716...); ours is 1/6 to the last bit.
TORCH_FLOAT64_LOOSER = {"hardsigmoid": 1e-7}


def assert_close(actual, expected, dtype, what, tol=None):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    tol = tol or TOL[dtype]
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def upstream(rng, y):
    """A random upstream gradient for each output."""
    return tuple(rng.standard_normal(o.shape).astype(o.dtype) for o in outputs_of(y))


def ones_like(y):
    return tuple(np.ones_like(o) for o in outputs_of(y))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,params,domain", CASES)
def test_forward_and_backward_match_torch(op, params, domain, dtype):
    if op.reference is None:
        pytest.skip(f"{op.name} has no PyTorch reference (its mask comes from NumPy's generator)")
    params = cast_params(params, dtype)
    inputs = make_inputs(op, params, domain, dtype)
    with np.errstate(all="raise"):
        y, saved = op.forward(*inputs, **params)
        gys = upstream(np.random.default_rng(1), y)
        grads = op.backward(saved, *gys)
    idx = diff_indices(op, inputs)
    tin = [to_torch(torch, a, requires_grad=i in idx) for i, a in enumerate(inputs)]
    ty = op.reference(torch, *tin, **torch_params(torch, params))
    ty = tuple(ty) if isinstance(ty, (tuple, list)) else (ty,)
    assert len(ty) == len(outputs_of(y)), f"{op.name}: {len(outputs_of(y))} outputs, torch {len(ty)}"
    for k, (o, to) in enumerate(zip(outputs_of(y), ty)):
        assert_close(o, to.detach().numpy(), dtype, f"{op.name} forward, output {k}")
    tgrads = torch.autograd.grad(ty, [tin[i] for i in idx], [to_torch(torch, g) for g in gys],
                                 allow_unused=True)
    for i, tg in zip(idx, tgrads):
        expected = np.zeros_like(inputs[i]) if tg is None else tg.numpy()
        tol = TORCH_FLOAT64_LOOSER.get(op.name) if dtype is np.float64 else None
        assert_close(grads[i], expected, dtype, f"{op.name} d/d{op.inputs[min(i, len(op.inputs) - 1)]}", tol)


@pytest.mark.parametrize("dtype", DTYPES + [np.float16])
@pytest.mark.parametrize("op,params,domain", CASES)
def test_dtype_is_kept(op, params, domain, dtype):
    params = cast_params(params, dtype)
    inputs = make_inputs(op, params, domain, dtype)
    y, saved = op.forward(*inputs, **params)
    for o in outputs_of(y):
        assert o.dtype == dtype, f"{op.name} forward promoted {dtype.__name__}"
    grads = op.backward(saved, *ones_like(y))
    for i in diff_indices(op, inputs):
        assert grads[i].dtype == dtype, f"{op.name} gradient {i} promoted {dtype.__name__}"
    for i, g in enumerate(grads):
        if i not in diff_indices(op, inputs):
            assert g is None


@pytest.mark.parametrize("op,params,domain", CASES)
def test_jacobian_matches_central_differences(op, params, domain):
    inputs = make_inputs(op, params, domain, np.float64)
    f = lambda *xs: op(*xs, **params)  # noqa: E731
    for i in diff_indices(op, inputs):
        Ja = analytic_jacobian(op, inputs, params, i)
        Jn = numeric_jacobian(f, list(inputs), i)
        err = np.max(np.abs(Ja - Jn)) / max(1.0, np.max(np.abs(Jn)))
        assert err < 1e-6, f"{op.name} d/dinput{i}: relative error {err:.2e}"


COMPLEX = [c for c in CASES if c.values[0].complex_step]


@pytest.mark.parametrize("op,params,domain", COMPLEX)
def test_complex_step_agrees(op, params, domain):
    """Ops flagged analytic really are: Im f(x + ih)/h equals the analytic Jacobian."""
    inputs = list(make_inputs(op, params, domain, np.float64))
    h = 1e-20
    for i in diff_indices(op, inputs):
        Ja = analytic_jacobian(op, inputs, params, i)
        cols = []
        for j in range(inputs[i].size):
            xc = inputs[i].astype(np.complex128)
            xc.flat[j] += 1j * h
            cols.append(np.imag(flat(op(*inputs[:i], xc, *inputs[i + 1:], **params))) / h)
        Jc = np.stack(cols, axis=1)
        err = np.max(np.abs(Ja - Jc)) / max(1.0, np.max(np.abs(Jc)))
        assert err < 1e-12, f"{op.name}: complex step disagrees, {err:.2e}"


@pytest.mark.parametrize("op,params,domain", CASES)
def test_zero_upstream_gives_zero_and_backward_repeats(op, params, domain):
    inputs = make_inputs(op, params, domain, np.float64)
    y, saved = op.forward(*inputs, **params)
    zero = op.backward(saved, *(np.zeros_like(o) for o in outputs_of(y)))
    gys = upstream(np.random.default_rng(2), y)
    first, second = op.backward(saved, *gys), op.backward(saved, *gys)
    for i in diff_indices(op, inputs):
        assert np.all(zero[i] == 0), f"{op.name}: zero upstream gave non-zero gradient"
        np.testing.assert_array_equal(first[i], second[i])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,params,domain", CASES)
def test_extreme_inputs_raise_no_floating_point_error(op, params, domain, dtype):
    """Overflow, division by zero or invalid operations raise here; results are finite."""
    params = cast_params(params, dtype)
    inputs = make_inputs(op, params, domain, dtype, seed=3)
    with np.errstate(all="raise"):
        y, saved = op.forward(*inputs, **params)
        grads = op.backward(saved, *ones_like(y))
    assert all(np.all(np.isfinite(o)) for o in outputs_of(y)), f"{op.name}: non-finite output on {domain}"
    for i in diff_indices(op, inputs):
        assert np.all(np.isfinite(grads[i])), f"{op.name}: non-finite gradient on {domain}"


ACTIVATIONS = [ops.get(n) for n in ops.names("activation")]
SCALAR = [op for op in ACTIVATIONS if op.inputs == ("x",)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", [op for op in ACTIVATIONS if op.kinks], ids=lambda op: op.name)
def test_kink_values_equal_torch(op, dtype):
    """At each kink the derivative equals PyTorch 2.13's exactly, and lies
    between the one-sided finite differences (float64)."""
    for params in ({},) + tuple(op.test_params):
        x = np.array(op.kinks, dtype=dtype)
        inputs = (x, np.array([0.25], dtype=dtype)) if op.name == "prelu" else (x,)
        y, saved = op.forward(*inputs, **params)
        g = op.backward(saved, np.ones_like(y))[0]
        tin = [to_torch(torch, a, requires_grad=(i == 0)) for i, a in enumerate(inputs)]
        ty = op.reference(torch, *tin, **op.bind(params))
        tg, = torch.autograd.grad(ty.sum(), tin[0])
        np.testing.assert_array_equal(y, ty.detach().numpy())
        np.testing.assert_array_equal(g, tg.numpy(), err_msg=f"{op.name}{params} at {op.kinks}")
        if dtype is np.float64:
            h = 1e-7
            f = lambda v, inputs=inputs, params=params: op(v, *inputs[1:], **params)  # noqa: E731
            left, right = (f(x) - f(x - h)) / h, (f(x + h) - f(x)) / h
            lo, hi = np.minimum(left, right), np.maximum(left, right)
            assert np.all((lo - 1e-6 <= g) & (g <= hi + 1e-6)), f"{op.name}: {g} not in [{lo}, {hi}]"


@pytest.mark.parametrize("op", SCALAR, ids=lambda op: op.name)
def test_derivative_matches_sympy(op):
    sp = pytest.importorskip("sympy")
    s = sp.Symbol("x", real=True)
    for params in ({},) + tuple(op.test_params):
        expr = op.symbolic(s, sp, **op.bind(params))
        f, df = sp.lambdify(s, expr, "mpmath"), sp.lambdify(s, sp.diff(expr, s), "mpmath")
        x = np.linspace(-4, 4, 41) + 0.0123                 # avoids every kink
        y, saved = op.forward(x, **params)
        g = op.backward(saved, np.ones_like(x))[0]
        np.testing.assert_allclose(y, [float(f(v)) for v in x], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g, [float(df(v)) for v in x], rtol=1e-12, atol=1e-12,
                                   err_msg=f"{op.name}{params}")


@pytest.mark.parametrize("op", SCALAR, ids=lambda op: op.name)
def test_nan_propagates_like_torch(op):
    x = np.array([np.nan, -1.0, 2.0])
    with np.errstate(all="raise"):              # NaN passes through without a warning
        y, saved = op.forward(x)
        g = op.backward(saved, np.ones_like(x))[0]
    t = to_torch(torch, x, requires_grad=True)
    ty = op.reference(torch, t, **op.params)
    tg, = torch.autograd.grad(ty.sum(), t)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ty.detach().numpy()))
    np.testing.assert_array_equal(np.isnan(g), np.isnan(tg.numpy()))


def test_every_op_is_documented():
    for op in ops.REGISTRY.values():
        assert op.formula and op.derivative and op.fn.__doc__, op.name
        assert op.kind in {"activation", "softmax", "linear", "normalization", "loss", "regularization",
                           "structure", "convolution", "pooling", "recurrent", "embedding", "attention",
                           "gating"}


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 3e-7), (np.float64, 1e-15)])
def test_tanhshrink_keeps_its_digits_near_zero(dtype, rtol):
    """x - tanh(x) cancels near 0 (float32: 0 at x = 1e-4 instead of 3.3e-13, as
    PyTorch's float32 tanhshrink); the NumPy path's series keeps relative accuracy
    up to |x| = 0.625, where it hands over to the difference."""
    mpmath = pytest.importorskip("mpmath")
    tiny = np.geomspace(1e-12, 0.62, 300)
    x = np.concatenate([tiny, -tiny, [0.63, 0.7, 1.0, -0.7]]).astype(dtype)
    y = ops.tanhshrink(x)
    with mpmath.workdps(40):
        truth = np.array([float(mpmath.mpf(float(v)) - mpmath.tanh(mpmath.mpf(float(v)))) for v in x])
    # relative accuracy below 0.625; beyond, the difference's rounding of tanh (x ~ 3 tanh ulps)
    inside = np.abs(x) < 0.625
    np.testing.assert_allclose(y[inside], truth[inside], rtol=rtol, atol=0)
    np.testing.assert_allclose(y[~inside], truth[~inside], rtol=30 * rtol)
