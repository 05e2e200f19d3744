"""Conv1d, Conv2d and ConvTranspose2d against torch.nn with the same weights (forward,
dL/dx, dL/dW, dL/db) on a grid of strides, paddings, dilations, groups and shapes, in
both memory layouts of the im2col; grouped ops' Jacobians against central differences;
bad shapes and parameters; checkpoints; gradcheck; per-call state and input_grad."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import handydl
from handydl import checkpoint, nn, ops, optim
from handydl.ops import conv as conv_ops
from conftest import analytic_jacobian, numeric_jacobian

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = {np.float32: 1e-5, np.float64: 1e-10}


def close(actual, expected, dtype, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype] * scale, err_msg=what)


@pytest.fixture(params=["exact", "wide"])
def layout(request, monkeypatch):
    """Run each case in both im2col layouts: Wo columns per output row, and the wide
    one (a row of the canvas per output row; conv_ops.Geometry.span)."""
    monkeypatch.setattr(conv_ops, "WIDE", 1.0 if request.param == "exact" else 1e9)
    return request.param


# (in_channels, out_channels, kernel_size, constructor kwargs, input shape)
CONV2D = [
    (3, 4, 3, {}, (2, 3, 7, 9)),                                   # odd sizes
    (3, 4, 1, {}, (2, 3, 5, 6)),                                   # 1x1 kernel
    (3, 4, 1, dict(stride=2), (2, 3, 5, 6)),                       # 1x1 strided (a projection)
    (2, 5, (5, 4), {}, (3, 2, 5, 4)),                              # kernel = input size
    (2, 3, 3, dict(padding=1), (1, 2, 6, 5)),                      # batch 1
    (2, 3, 3, dict(stride=2, padding=1), (2, 2, 7, 8)),
    (2, 3, (3, 2), dict(stride=(2, 3), padding=(1, 0)), (2, 2, 9, 10)),
    (2, 3, 3, dict(dilation=2), (2, 2, 9, 8)),
    (2, 3, 3, dict(dilation=(2, 1), padding=(2, 1), stride=(1, 2)), (2, 2, 6, 7)),
    (4, 6, 3, dict(groups=2), (2, 4, 6, 6)),
    (4, 4, 3, dict(groups=4, padding=1), (2, 4, 6, 5)),            # depthwise
    (4, 8, 3, dict(groups=4, stride=2, padding=1), (2, 4, 7, 7)),  # depthwise, multiplier 2
    (3, 4, 3, dict(padding="same"), (2, 3, 6, 7)),
    (3, 4, (4, 2), dict(padding="same", dilation=(1, 3)), (2, 3, 6, 7)),   # even: extra at the end
    (3, 4, 3, dict(padding="valid"), (2, 3, 6, 7)),
    (3, 4, 3, dict(bias=False, padding=2), (2, 3, 4, 4)),          # padding larger than needed
    (3, 4, 3, dict(padding=1), (3, 6, 5)),                         # unbatched (C, H, W)
]

CONV1D = [
    (3, 4, 3, {}, (2, 3, 9)),
    (3, 4, 1, {}, (2, 3, 5)),
    (2, 3, 7, {}, (1, 2, 7)),                                      # kernel = input size, batch 1
    (2, 3, 3, dict(stride=2, padding=2, dilation=2), (2, 2, 11)),
    (4, 6, 3, dict(groups=2, padding="same"), (2, 4, 8)),
    (4, 4, 4, dict(groups=4, padding="same", dilation=3), (2, 4, 13)),     # depthwise, even kernel
    (3, 4, 3, dict(padding="valid", bias=False), (2, 3, 6)),
    (3, 4, 3, dict(padding=1), (3, 6)),                            # unbatched (C, L)
]

TRANSPOSED = [
    (3, 4, 3, {}, (2, 3, 5, 6)),
    (3, 4, 1, {}, (2, 3, 4, 5)),
    (3, 4, 1, dict(stride=2), (2, 3, 4, 5)),
    (2, 3, 3, dict(stride=2, padding=1, output_padding=1), (2, 2, 5, 4)),
    (2, 3, (3, 2), dict(stride=(2, 3), padding=(1, 0), output_padding=(0, 2)), (1, 2, 4, 5)),
    (2, 3, 3, dict(dilation=2, padding=1), (2, 2, 5, 5)),
    (2, 3, 3, dict(dilation=2, output_padding=1), (2, 2, 4, 5)),    # output_padding < dilation
    (4, 6, 3, dict(groups=2, stride=2), (2, 4, 3, 3)),
    (4, 4, 3, dict(groups=4, padding=1), (2, 4, 5, 5)),             # depthwise
    (2, 3, 2, dict(stride=2, bias=False), (2, 2, 3, 3)),
    (2, 3, 3, dict(padding=1), (2, 5, 4)),                          # unbatched
]


def _grid(cases):
    return [pytest.param(*c, id=f"{c[0]}-{c[1]}-k{c[2]}-{c[3]}-{c[4]}") for c in cases]


def _torch_module(cls, in_c, out_c, k, kw, dtype):
    return getattr(torch.nn, cls)(in_c, out_c, k, dtype=torch.float64 if dtype is np.float64 else torch.float32,
                                  **kw)


def _compare_with_torch(cls, in_c, out_c, k, kw, shape, dtype):
    rng = np.random.default_rng(0)
    m = getattr(nn, cls)(in_c, out_c, k, dtype=dtype, rng=1, **kw)
    t = _torch_module(cls, in_c, out_c, k, kw, dtype)
    with torch.no_grad():                                   # the same weights
        t.weight.copy_(torch.from_numpy(m.weight.data))
        if m.bias is not None:
            t.bias.copy_(torch.from_numpy(m.bias.data))
    x = rng.uniform(-2, 2, shape).astype(dtype)
    m.zero_grad()
    y = m(x)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = t(tx)
    close(y, ty.detach().numpy(), dtype, f"{cls} forward")
    assert y.dtype == dtype
    gy = rng.standard_normal(y.shape).astype(dtype)          # not .sum(): hides transpositions
    gx = m.backward(gy)
    ty.backward(torch.from_numpy(gy))
    close(gx, tx.grad.numpy(), dtype, f"{cls} dL/dx")
    close(m.weight.grad, t.weight.grad.numpy(), dtype, f"{cls} dL/dW")
    assert gx.dtype == dtype and m.weight.grad.dtype == dtype
    if m.bias is not None:
        close(m.bias.grad, t.bias.grad.numpy(), dtype, f"{cls} dL/db")
        assert m.bias.grad.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("in_c,out_c,k,kw,shape", _grid(CONV2D))
def test_conv2d_matches_torch(in_c, out_c, k, kw, shape, dtype, layout):
    _compare_with_torch("Conv2d", in_c, out_c, k, kw, shape, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("in_c,out_c,k,kw,shape", _grid(CONV1D))
def test_conv1d_matches_torch(in_c, out_c, k, kw, shape, dtype, layout):
    _compare_with_torch("Conv1d", in_c, out_c, k, kw, shape, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("in_c,out_c,k,kw,shape", _grid(TRANSPOSED))
def test_conv_transpose2d_matches_torch(in_c, out_c, k, kw, shape, dtype, layout):
    _compare_with_torch("ConvTranspose2d", in_c, out_c, k, kw, shape, dtype)


def test_a_larger_layer_matches_torch_in_float32():
    """A ResNet-stage-like shape, where float32 sums run over 576 terms."""
    _compare_with_torch("Conv2d", 16, 32, 3, dict(padding=1), (4, 16, 16, 16), np.float32)


def test_both_layouts_are_exercised():
    g = conv_ops._geometry("conv2d", (1, 3, 32, 32), (8, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1, ("H", "W"))
    assert g.span == 34 > g.out[1] == 32                  # wide: a canvas row per output row
    g = conv_ops._geometry("conv2d", (1, 3, 5, 5), (8, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1, ("H", "W"))
    assert g.span == g.out[1] == 3                        # 5 / 3 columns would not pay


# -- grouped ops: Jacobians (the registry's samples cannot vary with groups) ------------------

GROUPED = [
    ("conv2d", (2, 4, 5, 5), (6, 2, 3, 3), dict(groups=2, padding=1)),
    ("conv2d", (2, 4, 5, 4), (4, 1, 3, 2), dict(groups=4, stride=2, dilation=(1, 2))),  # depthwise
    ("conv2d", (2, 2, 5, 5), (4, 1, 3, 3), dict(groups=2, padding="same")),            # depthwise x2
    ("conv1d", (2, 4, 7), (4, 2, 3), dict(groups=2, stride=2)),
    ("conv1d", (2, 3, 7), (3, 1, 3), dict(groups=3, padding="same", dilation=2)),      # depthwise
    ("conv_transpose2d", (2, 4, 3, 4), (4, 1, 3, 3), dict(groups=2, stride=2, output_padding=1)),
    ("conv_transpose2d", (2, 3, 4, 3), (3, 1, 2, 3), dict(groups=3, padding=(0, 1))),   # depthwise
]


@pytest.mark.parametrize("name,x_shape,w_shape,params", GROUPED)
def test_grouped_ops_against_central_differences_and_torch(name, x_shape, w_shape, params, layout):
    op = ops.get(name)
    rng = np.random.default_rng(0)
    out_c = w_shape[0] if name != "conv_transpose2d" else w_shape[1] * params["groups"]
    inputs = (rng.uniform(-3, 3, x_shape), rng.standard_normal(w_shape), rng.standard_normal(out_c))
    f = lambda *xs: op(*xs, **params)  # noqa: E731
    for i in range(3):
        Ja = analytic_jacobian(op, inputs, op.bind(params), i)
        Jn = numeric_jacobian(f, list(inputs), i)
        err = np.max(np.abs(Ja - Jn)) / max(1.0, np.max(np.abs(Jn)))
        assert err < 1e-6, f"{name}{params} d/dinput{i}: relative error {err:.2e}"
    y, saved = op.forward(*inputs, **params)
    gy = rng.standard_normal(y.shape)
    grads = op.backward(saved, gy)
    tin = [torch.from_numpy(a.copy()).requires_grad_(True) for a in inputs]
    ty = op.reference(torch, *tin, **op.bind(params))
    close(y, ty.detach().numpy(), np.float64, f"{name} forward")
    for g, tg, what in zip(grads, torch.autograd.grad(ty, tin, torch.from_numpy(gy)), "xWb"):
        close(g, tg.numpy(), np.float64, f"{name} d/d{what}")


def test_transposed_convolution_is_the_adjoint_of_the_convolution():
    """<conv2d(x, W), z> = <x, conv_transpose2d(z, W)>: the transposed op's forward is
    conv2d's input gradient."""
    rng = np.random.default_rng(0)
    params = dict(stride=2, padding=1, dilation=(1, 2), groups=2)
    x, w = rng.standard_normal((2, 4, 9, 8)), rng.standard_normal((6, 2, 3, 3))
    y, saved = ops.conv2d.forward(x, w, None, **params)
    z = rng.standard_normal(y.shape)
    out_pad = tuple(a - b for a, b in zip(x.shape[2:], ops.conv_transpose2d(z, w, None, **params).shape[2:]))
    xt = ops.conv_transpose2d(z, w, None, output_padding=out_pad, **params)
    assert xt.shape == x.shape
    np.testing.assert_allclose(np.sum(y * z), np.sum(x * xt), rtol=1e-12)
    np.testing.assert_allclose(ops.conv2d.backward(saved, z)[0], xt, rtol=1e-12, atol=1e-12)


def test_needs_skips_the_input_gradient_and_changes_nothing_else():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    for op, wt in ((ops.conv2d, w), (ops.conv_transpose2d, w.transpose(1, 0, 2, 3).copy())):
        y, saved = op.forward(x, wt, b, padding=1)
        gy = rng.standard_normal(y.shape)
        full = op.backward(saved, gy)
        part = op.backward(saved, gy, needs=(False, True, True))
        assert part[0] is None
        np.testing.assert_array_equal(part[1], full[1])
        np.testing.assert_array_equal(part[2], full[2])
        assert op.backward(saved, gy, needs=(True, False, False))[1:] == (None, None)


def test_float32_is_kept_and_no_float64_is_made(monkeypatch):
    """float32 in, float32 out; no array the op makes is float64."""
    made = []
    real_zeros, real_empty = np.zeros, np.empty

    def spy(real):
        def make(shape, dtype=float, *a, **k):
            if sys._getframe(1).f_globals.get("__name__") == conv_ops.__name__:
                made.append(np.dtype(dtype))
            return real(shape, dtype, *a, **k)
        return make
    monkeypatch.setattr(conv_ops.np, "zeros", spy(real_zeros))
    monkeypatch.setattr(conv_ops.np, "empty", spy(real_empty))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    for op, w, p in ((ops.conv2d, rng.standard_normal((4, 3, 3, 3)), dict(padding=1)),
                     (ops.conv2d, rng.standard_normal((4, 3, 3, 3)), dict(stride=2)),
                     (ops.conv_transpose2d, rng.standard_normal((3, 4, 3, 3)), dict(stride=2, padding=1))):
        w = w.astype(np.float32)
        y, saved = op.forward(x, w, np.zeros(4, np.float32), **p)
        grads = op.backward(saved, np.ones_like(y))
        assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    assert made and np.dtype(np.float64) not in made, made


# -- errors: clear ValueErrors naming the sizes ---------------------------------------------------

def _raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_bad_inputs_to_the_ops_name_the_sizes():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    _raises(r"kernel size 7 .*larger than the padded input, 5 \+ padding 0 = 5.*\(2, 3, 5, 5\)",
            ops.conv2d, x, rng.standard_normal((4, 3, 7, 3)))
    _raises(r"kernel size 3 \(dilation 3: spans 7\) is larger than the padded input, 5 \+ padding 0",
            ops.conv2d, x, w, dilation=3)
    _raises(r"expected input with 6 channels .*2 \* 3.*\(2, 3, 5, 5\) with 3 channels",
            ops.conv2d, x, rng.standard_normal((6, 2, 3, 3)), groups=3)
    _raises(r"4 output channels, not divisible by groups=3", ops.conv2d,
            rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 1, 3, 3)), groups=3)
    _raises(r"expected input with 3 channels .*got input of shape \(2, 4, 5, 5\) with 4 channels",
            ops.conv2d, rng.standard_normal((2, 4, 5, 5)), w)
    _raises(r"expected a 4-D input \(N, C, H, W\).*got shape \(5, 5\)", ops.conv2d, x[0, 0], w)
    _raises(r"expected a 4-D weight .*got shape \(3, 3, 3\)", ops.conv2d, x, w[0])
    _raises(r"expected a 3-D input \(N, C, L\).*got shape \(2, 3, 5, 5\)", ops.conv1d, x, w[..., 0])
    _raises(r"expected bias of shape \(4,\), got shape \(3,\)", ops.conv2d, x, w, np.zeros(3))
    _raises(r"stride=0 is not valid", ops.conv2d, x, w, stride=0)
    _raises(r"stride=\(1, -1\) is not valid", ops.conv2d, x, w, stride=(1, -1))
    _raises(r"stride=\(1, 1, 1\) is not valid; .*tuple of 2", ops.conv2d, x, w, stride=(1, 1, 1))
    _raises(r"dilation=0 is not valid", ops.conv2d, x, w, dilation=0)
    _raises(r"padding=-1 is not valid", ops.conv2d, x, w, padding=-1)
    _raises(r"padding='full' is not valid", ops.conv2d, x, w, padding="full")
    _raises(r"padding='same' needs stride 1, got stride=2", ops.conv2d, x, w, padding="same", stride=2)
    _raises(r"groups=0 is not valid", ops.conv2d, x, w, groups=0)
    with pytest.raises(TypeError, match=r"stride=1.5 is not valid"):      # the wrong type, as PyTorch
        ops.conv2d(x, w, stride=1.5)
    wt = rng.standard_normal((3, 4, 3, 3))
    _raises(r"expected input with 3 channels \(weight.shape\[0\]\), got input of shape \(2, 4, 5, 5\)",
            ops.conv_transpose2d, rng.standard_normal((2, 4, 5, 5)), wt)
    _raises(r"output_padding=2 must be smaller than stride or dilation", ops.conv_transpose2d,
            x, wt, stride=2, output_padding=2)
    with pytest.raises(TypeError, match=r"padding='same' is not valid"):
        ops.conv_transpose2d(x, wt, padding="same")
    _raises(r"output would have size -1 .*input 1, stride 1, padding 2", ops.conv_transpose2d,
            x[:, :, :1, :1], wt, padding=2)
    _raises(r"input channels 3 .*not divisible by groups=2", ops.conv_transpose2d, x, wt[:, :2], groups=2)


def test_bad_arguments_to_the_modules_name_them():
    _raises(r"Conv2d: in_channels=3 is not divisible by groups=2", nn.Conv2d, 3, 4, 3, groups=2)
    _raises(r"Conv2d: out_channels=3 is not divisible by groups=2", nn.Conv2d, 4, 3, 3, groups=2)
    _raises(r"Conv2d: in_channels=0 is not valid", nn.Conv2d, 0, 4, 3)
    with pytest.raises(TypeError, match=r"Conv2d: out_channels=2.5 is not valid"):
        nn.Conv2d(3, 2.5, 3)
    _raises(r"Conv2d: kernel_size=0 is not valid", nn.Conv2d, 3, 4, 0)
    _raises(r"Conv2d: kernel_size=\(3, 3, 3\) is not valid", nn.Conv2d, 3, 4, (3, 3, 3))
    _raises(r"Conv2d: stride=0 is not valid", nn.Conv2d, 3, 4, 3, stride=0)
    _raises(r"Conv2d: dilation=-1 is not valid", nn.Conv2d, 3, 4, 3, dilation=-1)
    _raises(r"Conv2d: padding='same' needs stride 1", nn.Conv2d, 3, 4, 3, padding="same", stride=2)
    _raises(r"Conv2d: padding='full' is not valid", nn.Conv2d, 3, 4, 3, padding="full")
    _raises(r"Conv2d: padding_mode='reflect' is not supported; only 'zeros'", nn.Conv2d, 3, 4, 3,
            padding_mode="reflect")
    _raises(r"Conv1d: padding_mode='circular' is not supported", nn.Conv1d, 3, 4, 3, padding_mode="circular")
    _raises(r"Conv2d: dtype=int64 is not valid", nn.Conv2d, 3, 4, 3, dtype=np.int64)
    with pytest.raises(TypeError, match=r"ConvTranspose2d: padding='same' is not valid"):
        nn.ConvTranspose2d(3, 4, 3, padding="same")
    _raises(r"ConvTranspose2d: output_padding=\(1, 1\) must be smaller than stride or dilation",
            nn.ConvTranspose2d, 3, 4, 3, output_padding=1)
    _raises(r"ConvTranspose2d: in_channels=3 is not divisible by groups=2", nn.ConvTranspose2d, 3, 4, 3,
            groups=2)


def test_bad_inputs_to_the_modules_name_the_sizes():
    m = nn.Conv2d(3, 4, 5)
    _raises(r"Conv2d: expected input of shape \(N, 3, H, W\) or \(3, H, W\).*got shape \(8, 8\)",
            m, np.zeros((8, 8), np.float32))
    _raises(r"Conv2d: expected input of shape \(N, 3, H, W\).*got shape \(2, 4, 8, 8\)",
            m, np.zeros((2, 4, 8, 8), np.float32))
    _raises(r"kernel size 5 .*larger than the padded input, 4 \+ padding 0 = 4, along H",
            m, np.zeros((2, 3, 4, 9), np.float32))
    _raises(r"Conv1d: expected input of shape \(N, 3, L\) or \(3, L\).*got shape \(2, 3, 8, 8\)",
            nn.Conv1d(3, 4, 3), np.zeros((2, 3, 8, 8), np.float32))
    _raises(r"ConvTranspose2d: expected input of shape \(N, 3, H, W\).*got shape \(2, 2, 5, 5\)",
            nn.ConvTranspose2d(3, 4, 3), np.zeros((2, 2, 5, 5), np.float32))
    y = m(np.zeros((2, 3, 6, 6), np.float32))
    _raises(r"Conv2d.backward: expected gradient of shape \(2, 4, 2, 2\)", m.backward, np.zeros((2, 4, 3, 3)))
    assert m.saved_count == 1                                  # the refused gy changed nothing
    m.backward(np.ones_like(y))
    assert m.saved_count == 0


# -- modules: init, config, checkpoints, gradcheck, per-call state ----------------------------------

@pytest.mark.parametrize("cls,args,fan_in", [
    ("Conv2d", (6, 8, (3, 5)), 6 * 15), ("Conv2d", (6, 9, 3, 1, 0, 1, 3), 2 * 9),
    ("Conv1d", (4, 8, 5), 20), ("ConvTranspose2d", (6, 8, 3), 8 * 9),          # torch: weight.shape[1]
    ("ConvTranspose2d", (6, 8, 3, 1, 0, 0, 2), 4 * 9)])
def test_initialization_is_pytorch_default(cls, args, fan_in):
    m = getattr(nn, cls)(*args, rng=0)
    t = getattr(torch.nn, cls)(*args)
    assert m.weight.shape == tuple(t.weight.shape) and m.bias.shape == tuple(t.bias.shape)
    bound = 1 / np.sqrt(fan_in)
    for ours, theirs in ((m.weight.data, t.weight), (m.bias.data, t.bias)):
        assert np.max(np.abs(ours)) <= bound and float(theirs.detach().abs().max()) <= bound + 1e-7
    assert np.max(np.abs(m.weight.data)) > 0.9 * bound               # uniform over the whole range
    assert m.weight.dtype == np.float32
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert nn.Conv2d(3, 4, 3, bias=False).bias is None


def test_config_is_json_and_rebuilds_the_module():
    for m in (nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=2,
                        groups=2, bias=False, dtype=np.float64),
              nn.Conv2d(3, 4, 3, padding="same"), nn.Conv1d(2, 4, 3, padding="valid"),
              nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)):
        config = json.loads(json.dumps(m.get_config()))
        rebuilt = type(m)(**config)
        assert rebuilt.get_config() == m.get_config()
        assert repr(rebuilt) == repr(m)
        assert rebuilt.weight.shape == m.weight.shape and rebuilt.weight.dtype == m.weight.dtype
    assert repr(nn.Conv2d(1, 32, 5)) == "Conv2d(1, 32, kernel_size=(5, 5), stride=(1, 1))"
    assert repr(nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1, bias=False)) == \
        "Conv2d(3, 4, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)"


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.ReLU(),
                          nn.Conv2d(4, 2, 3, stride=2, groups=2, rng=1))
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with nn.no_grad():
        y = model(x)
    loaded = checkpoint.load(checkpoint.save(model, tmp_path / "cnn.npz"))
    with nn.no_grad():
        np.testing.assert_array_equal(loaded(x), y)
    assert [type(m).__name__ for m in loaded.children()] == ["Conv2d", "ReLU", "Conv2d"]
    assert loaded.get_submodule("2").get_config() == model.get_submodule("2").get_config()


@pytest.mark.parametrize("m", [
    nn.Conv2d(2, 3, 3, stride=2, padding=1, dtype=np.float64, rng=0),
    nn.Conv2d(4, 4, 3, padding="same", groups=4, dtype=np.float64, rng=0),
    nn.Conv1d(2, 3, 3, dilation=2, dtype=np.float64, rng=0),
    nn.ConvTranspose2d(2, 4, 3, stride=2, output_padding=1, groups=2, dtype=np.float64, rng=0),
], ids=repr)
def test_gradcheck_passes(m):
    x = np.random.default_rng(0).standard_normal((2, m.in_channels) + (5,) * m.nd)
    report = handydl.gradcheck(m, x)
    assert report.passed


def test_module_used_twice_accumulates_both_calls_and_input_grad_false():
    """Per-call state: y = conv(conv(x)) with one module gets both calls' dL/dW, as torch."""
    rng = np.random.default_rng(0)
    m = nn.Conv2d(3, 3, 3, padding=1, dtype=np.float64, rng=0)
    t = torch.nn.Conv2d(3, 3, 3, padding=1, dtype=torch.float64)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(m.weight.data))
        t.bias.copy_(torch.from_numpy(m.bias.data))
    x = rng.standard_normal((2, 3, 5, 5))
    m.zero_grad()
    y = m(m(x))
    gy = rng.standard_normal(y.shape)
    g_mid = m.backward(gy)
    gx = m.backward(g_mid, input_grad=False)
    assert gx is None and m.saved_count == 0
    tx = torch.from_numpy(x)
    t(t(tx)).backward(torch.from_numpy(gy))
    close(m.weight.grad, t.weight.grad.numpy(), np.float64, "dL/dW of two calls")
    close(m.bias.grad, t.bias.grad.numpy(), np.float64, "dL/db of two calls")


def test_a_small_cnn_trains():
    """Conv2d -> ReLU -> Conv2d -> Flatten -> Linear with SGD: the loss falls."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    labels = (x[:, 0, :4].sum(axis=(1, 2)) > 0).astype(np.int64)    # top half brighter?
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, stride=2, rng=1), nn.Flatten(), nn.Linear(36, 2, rng=2))
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        model.zero_grad()
        loss = loss_fn(model(x), labels)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0] and all(np.isfinite(losses)), losses
