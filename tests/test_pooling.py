"""Pooling and 2-D normalization modules against torch.nn: forward, dL/dx and every
dL/dparam on a grid of shapes and parameters (odd sizes, stride != kernel,
padding, dilation, ceil_mode, count_include_pad, batch 1, kernel = input size,
adaptive sizes that do not divide the input), BatchNorm2d's running statistics
over three steps and then evaluation, max-pool ties bit for bit, bad arguments
and shapes, checkpoints and gradcheck.

The ops themselves (central-difference Jacobians, extreme inputs, float32) are
tested with every registered op in tests/test_ops.py."""
from __future__ import annotations

import numpy as np
import pytest

import handydl
from handydl import nn, ops
from handydl.ops import normalization

torch = pytest.importorskip("torch")

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-10}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def assert_close(actual, expected, dtype, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"
    tol = TOL[dtype]
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=tol, atol=tol * scale, err_msg=what)


def t(a, grad=False):
    x = torch.from_numpy(np.array(a, copy=True))
    return x.requires_grad_(True) if grad else x


def torch_run(tm, x, gy):
    tx = t(x, grad=True)
    ty = tm(tx)
    ty.backward(t(gy))
    return ty.detach().numpy(), tx.grad.numpy()


def compare_module(ours, theirs, x, dtype, what, seed=1):
    """Forward and dL/dx of one module against its torch.nn twin (random upstream)."""
    y = ours(x)
    gy = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    gx = ours.backward(gy)
    ty, tgx = torch_run(theirs, x, gy)
    assert_close(y, ty, dtype, f"{what} forward")
    assert_close(gx, tgx, dtype, f"{what} dL/dx")


# -- pooling on a grid ------------------------------------------------------------------------

MAX_GRID = [
    ((2, 3, 7, 9), dict(kernel_size=2)),
    ((2, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 3, 7, 9), dict(kernel_size=3, stride=1, padding=1, dilation=2)),
    ((2, 3, 7, 9), dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), ceil_mode=True)),
    ((2, 3, 7, 9), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ((2, 3, 8, 8), dict(kernel_size=3, stride=3, padding=1, ceil_mode=True)),
    ((2, 3, 7, 9), dict(kernel_size=2, stride=3)),
    ((2, 3, 7, 9), dict(kernel_size=(7, 9))),                    # kernel = input size
    ((2, 3, 7, 9), dict(kernel_size=1)),
    ((1, 2, 5, 5), dict(kernel_size=2, stride=1)),               # batch 1, overlapping
    ((1, 1, 6, 6), dict(kernel_size=(3, 2), stride=(1, 2), dilation=(2, 3), padding=(1, 1))),
    ((3, 6, 7), dict(kernel_size=2)),                             # unbatched (C, H, W)
    ((3, 6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
]

AVG_GRID = [
    ((2, 3, 7, 9), dict(kernel_size=2)),
    ((2, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ((2, 3, 7, 9), dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), ceil_mode=True)),
    ((2, 3, 7, 9), dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), ceil_mode=True,
                        count_include_pad=False)),
    ((2, 3, 7, 9), dict(kernel_size=2, ceil_mode=True)),         # last windows clipped
    ((2, 3, 7, 9), dict(kernel_size=3, stride=1, padding=1, divisor_override=5)),
    ((2, 3, 7, 9), dict(kernel_size=2, stride=3)),
    ((2, 3, 7, 9), dict(kernel_size=(7, 9))),
    ((1, 2, 5, 5), dict(kernel_size=2, stride=1)),
    ((3, 6, 7), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
]

ADAPTIVE_GRID = [
    ((2, 3, 7, 9), 1), ((2, 3, 7, 9), 3), ((2, 3, 7, 9), (2, 4)), ((2, 3, 7, 9), (None, 5)),
    ((2, 3, 7, 9), (7, 9)), ((2, 3, 7, 9), (10, 13)), ((1, 1, 5, 5), (4, 3)), ((3, 7, 9), (3, 2)),
]


def _ids(grid):
    return [f"{shape}-{kw}" for shape, kw in grid]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kw", MAX_GRID, ids=_ids(MAX_GRID))
def test_max_pool2d_matches_torch(shape, kw, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    compare_module(nn.MaxPool2d(**kw), torch.nn.MaxPool2d(**kw), x, dtype, f"MaxPool2d{kw}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kw", AVG_GRID, ids=_ids(AVG_GRID))
def test_avg_pool2d_matches_torch(shape, kw, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    compare_module(nn.AvgPool2d(**kw), torch.nn.AvgPool2d(**kw), x, dtype, f"AvgPool2d{kw}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,size", ADAPTIVE_GRID, ids=_ids(ADAPTIVE_GRID))
def test_adaptive_avg_pool2d_matches_torch(shape, size, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    compare_module(nn.AdaptiveAvgPool2d(size), torch.nn.AdaptiveAvgPool2d(size), x, dtype,
                   f"AdaptiveAvgPool2d({size})")


def test_adaptive_windows_are_torchs_floor_ceil_formula():
    for n, out in ((7, 3), (9, 4), (5, 5), (3, 7), (10, 1)):
        P = ops.pooling.averaging_matrix(n, out)
        for i in range(out):
            start, end = (i * n) // out, -(-((i + 1) * n) // out)
            expected = np.zeros(n)
            expected[start:end] = 1 / (end - start)
            np.testing.assert_array_equal(P[i], expected)


# -- max pooling: ties, NaN, -inf, bit for bit with PyTorch ---------------------------------------

TIE_PARAMS = [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1),
              dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
              dict(kernel_size=(2, 3), stride=(1, 2))]


def _exact(x, kw, gy=None):
    m = nn.MaxPool2d(**kw)
    y = m(x)
    gy = np.ones_like(y) if gy is None else gy
    gx = m.backward(gy)
    tx = t(x, grad=True)
    ty, idx = torch.nn.functional.max_pool2d(tx, return_indices=True, **kw)
    ty.backward(t(gy))
    np.testing.assert_array_equal(y, ty.detach().numpy(), err_msg=f"{kw} forward")
    np.testing.assert_array_equal(gx, tx.grad.numpy(), err_msg=f"{kw} gradient routing")
    return m, idx


@pytest.mark.parametrize("kw", TIE_PARAMS, ids=str)
def test_max_pool2d_constant_input_routes_like_torch(kw):
    _exact(np.full((2, 2, 6, 7), 1.5), kw)


@pytest.mark.parametrize("kw", TIE_PARAMS, ids=str)
def test_max_pool2d_many_ties_route_like_torch(kw):
    x = np.random.default_rng(4).integers(0, 3, size=(2, 3, 7, 8)).astype(np.float64)
    gy_shape = nn.MaxPool2d(**kw)(x).shape
    # integer upstream gradients: sums over overlapping windows are exact in any order,
    # so the comparison is of the routing alone
    _exact(x, kw, np.random.default_rng(5).integers(-8, 9, size=gy_shape).astype(np.float64))


def test_max_pool2d_two_equal_maxima_the_first_in_scan_order_wins():
    # each 2x2 window holds two equal maxima, in each arrangement
    windows = [[[5, 5], [0, 1]], [[5, 0], [5, 1]], [[5, 1], [0, 5]], [[0, 5], [5, 1]],
               [[0, 5], [1, 5]], [[0, 1], [5, 5]]]
    x = np.concatenate([np.array(w, float) for w in windows], axis=1)[None, None]   # (1, 1, 2, 12)
    m, idx = _exact(x, dict(kernel_size=2))
    gx = nn.MaxPool2d(2)
    gx(x)
    g = gx.backward(np.ones((1, 1, 1, 6)))
    first = [(0, 0), (0, 0), (0, 0), (0, 1), (0, 1), (1, 0)]       # (row, col) inside each window
    for w, (r, c) in enumerate(first):
        expected = np.zeros((2, 2))
        expected[r, c] = 1
        np.testing.assert_array_equal(g[0, 0, :, 2 * w:2 * w + 2], expected)
    assert idx.numpy().ravel().tolist() == [2 * w + 12 * r + c for w, (r, c) in enumerate(first)]


def test_max_pool2d_float32_ties_and_unbatched():
    x = np.random.default_rng(6).integers(-1, 2, size=(3, 6, 6)).astype(np.float32)
    _exact(x, dict(kernel_size=3, stride=1, padding=1))


def test_max_pool2d_nan_and_minus_inf_windows_like_torch():
    x = np.random.default_rng(7).standard_normal((1, 2, 6, 6))
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan                        # two NaNs in one window
    x[0, 1, :3, :3] = -np.inf                                      # windows with nothing above -inf
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1)):
        m = nn.MaxPool2d(**kw)
        with np.errstate(invalid="raise"):
            y = m(x)
            gx = m.backward(np.ones_like(y))
        tx = t(x, grad=True)
        ty = torch.nn.functional.max_pool2d(tx, **kw)
        ty.backward(torch.ones_like(ty))
        np.testing.assert_array_equal(y, ty.detach().numpy())
        np.testing.assert_array_equal(gx, tx.grad.numpy())


# -- BatchNorm2d and GroupNorm ------------------------------------------------------------------

BN_CASES = [dict(), dict(momentum=None), dict(momentum=0.5, eps=1e-3), dict(affine=False),
            dict(track_running_stats=False), dict(bias=False)]


def _set_affine(ours, theirs, rng, dtype):
    if ours.affine:
        w = rng.uniform(0.5, 1.5, ours.weight.shape).astype(dtype)
        ours.weight.data[...] = w
        with torch.no_grad():
            theirs.weight.copy_(t(w))
        if ours.bias is not None:
            b = rng.standard_normal(ours.bias.shape).astype(dtype)
            ours.bias.data[...] = b
            with torch.no_grad():
                theirs.bias.copy_(t(b))


def _step(ours, theirs, x, gy, dtype, what):
    ours.zero_grad()
    theirs.zero_grad()
    y = ours(x)
    gx = ours.backward(gy)
    ty, tgx = torch_run(theirs, x, gy)
    assert_close(y, ty, dtype, f"{what} forward")
    assert_close(gx, tgx, dtype, f"{what} dL/dx")
    if ours.affine:
        assert_close(ours.weight.grad, theirs.weight.grad.numpy(), dtype, f"{what} dL/dweight")
        if ours.bias is not None:
            assert_close(ours.bias.grad, theirs.bias.grad.numpy(), dtype, f"{what} dL/dbias")
        else:
            assert theirs.bias is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", BN_CASES, ids=str)
def test_batchnorm2d_three_steps_then_eval_match_torch(kw, dtype):
    rng = np.random.default_rng(0)
    c = 3
    ours = nn.BatchNorm2d(c, dtype=dtype, **kw)
    theirs = torch.nn.BatchNorm2d(c, **kw).to(TORCH_DTYPE[dtype])
    _set_affine(ours, theirs, rng, dtype)
    shapes = [(4, c, 5, 7), (2, c, 3, 3), (1, c, 5, 6)]           # batch 1 too: M = H W
    for step, shape in enumerate(shapes):
        x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
        gy = rng.standard_normal(shape).astype(dtype)
        _step(ours, theirs, x, gy, dtype, f"BatchNorm2d{kw} step {step}")
        if ours.track_running_stats:
            assert_close(ours.running_mean, theirs.running_mean.numpy(), dtype, f"running_mean {step}")
            assert_close(ours.running_var, theirs.running_var.numpy(), dtype, f"running_var {step}")
            assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((3, c, 4, 5)).astype(dtype)
    _step(ours, theirs, x, rng.standard_normal(x.shape).astype(dtype), dtype, f"BatchNorm2d{kw} eval")


GN_CASES = [((2, 6, 5, 7), 2, {}), ((2, 6, 5, 7), 1, {}), ((2, 6, 5, 7), 6, {}),
            ((3, 4, 3, 3), 2, dict(affine=False)), ((1, 4, 5), 2, dict(eps=1e-3)), ((5, 4), 2, {}),
            ((1, 6, 1, 1), 3, {}), ((2, 4, 3, 3), 2, dict(bias=False))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups,kw", GN_CASES, ids=[str(c) for c in GN_CASES])
def test_groupnorm_matches_torch(shape, groups, kw, dtype):
    rng = np.random.default_rng(0)
    c = shape[1]
    ours = nn.GroupNorm(groups, c, dtype=dtype, **kw)
    theirs = torch.nn.GroupNorm(groups, c, **kw).to(TORCH_DTYPE[dtype])
    _set_affine(ours, theirs, rng, dtype)
    x = (rng.standard_normal(shape) * 3 - 1).astype(dtype)
    _step(ours, theirs, x, rng.standard_normal(shape).astype(dtype), dtype, f"GroupNorm({groups}, {c})")


def test_flatten_on_image_tensors_matches_torch():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    m = nn.Flatten()
    y = m(x)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    ty, tgx = torch_run(torch.nn.Flatten(start_dim=1), x, gy)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(m.backward(gy), tgx)


# -- float32 is kept, module by module ------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: nn.MaxPool2d(2), lambda: nn.AvgPool2d(3, 2, 1),
                                  lambda: nn.AdaptiveAvgPool2d((2, 3)), lambda: nn.AdaptiveAvgPool2d((4, 5)),
                                  lambda: nn.AdaptiveAvgPool2d(1), lambda: nn.MaxPool2d(3, 1, 1),
                                  lambda: nn.BatchNorm2d(3), lambda: nn.GroupNorm(3, 3)],
                         ids=["max", "avg", "adaptive", "adaptive-overlap", "global", "max-pad", "bn", "gn"])
def test_float32_in_float32_out(make):
    m = make()
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    y = m(x)
    gx = m.backward(np.ones_like(y))
    assert y.dtype == gx.dtype == np.float32
    assert gx.flags.writeable and gx.flags.c_contiguous and gx.shape == x.shape
    for p in m.parameters():
        assert p.grad.dtype == np.float32


# -- bad arguments and shapes: ValueError naming them --------------------------------------------

BAD_ARGS = [
    (lambda: nn.MaxPool2d(0), r"MaxPool2d: kernel_size=0"),
    (lambda: nn.MaxPool2d(3, padding=2), r"padding=2 .*kernel_size=3 allows at most \(1, 1\)"),
    (lambda: nn.MaxPool2d(2, stride=0), r"stride=0"),
    (lambda: nn.MaxPool2d(2, dilation=0), r"dilation=0"),
    (lambda: nn.MaxPool2d(2, padding=-1), r"padding=-1"),
    (lambda: nn.MaxPool2d((2, 2, 2)), r"kernel_size=\(2, 2, 2\)"),
    (lambda: nn.MaxPool2d(2.5), r"kernel_size=2.5"),
    (lambda: nn.MaxPool2d(True), r"kernel_size=True"),
    (lambda: nn.MaxPool2d(2, ceil_mode=1), r"ceil_mode=1"),
    (lambda: nn.MaxPool2d(2, return_indices=True), r"return_indices=True"),
    (lambda: nn.AvgPool2d(2, divisor_override=0), r"divisor_override=0"),
    (lambda: nn.AvgPool2d(2, count_include_pad="yes"), r"count_include_pad='yes'"),
    (lambda: nn.AvgPool2d(4, padding=3), r"AvgPool2d: padding=3"),
    (lambda: nn.AdaptiveAvgPool2d(0), r"output_size=0"),
    (lambda: nn.AdaptiveAvgPool2d((2, -1)), r"output_size=\(2, -1\)"),
    (lambda: nn.BatchNorm2d(0), r"BatchNorm2d: num_features=0"),
    (lambda: nn.BatchNorm2d(3, eps=-1.0), r"eps=-1.0"),
    (lambda: nn.BatchNorm2d(3, momentum=1.5), r"momentum=1.5"),
    (lambda: nn.BatchNorm2d(3, affine="no"), r"affine='no'"),
    (lambda: nn.BatchNorm2d(3, device="cuda"), r"device='cuda'"),
    (lambda: nn.BatchNorm2d(3, bias=0), r"bias=0"),
    (lambda: nn.GroupNorm(3, 4), r"num_channels=4 is not divisible by num_groups=3"),
    (lambda: nn.GroupNorm(0, 4), r"num_groups=0"),
    (lambda: nn.GroupNorm(2, 4, eps=float("nan")), r"eps=nan"),
]


# In PyTorch's style, a value of the wrong type is a TypeError (a float or a bool where an
# integer belongs, a string or 1 where True or False does), a value out of range a ValueError.
WRONG_TYPE = {r"kernel_size=2.5", r"kernel_size=True", r"ceil_mode=1", r"count_include_pad='yes'",
              r"affine='no'", r"bias=0", r"BatchNorm2d: num_features='3'", r"GroupNorm: num_channels=4.0"}
BAD_ARGS += [(lambda: nn.BatchNorm2d("3"), r"BatchNorm2d: num_features='3'"),
             (lambda: nn.GroupNorm(2, 4.0), r"GroupNorm: num_channels=4.0")]


@pytest.mark.parametrize("make,match", BAD_ARGS, ids=[m for _, m in BAD_ARGS])
def test_bad_arguments_raise_at_construction(make, match):
    with pytest.raises(TypeError if match in WRONG_TYPE else ValueError, match=match):
        make()


BAD_SHAPES = [
    (nn.MaxPool2d(5), (1, 1, 4, 4), r"kernel spans 5x5.*padded input 4x4 \(input 4x4"),
    (nn.MaxPool2d(3, dilation=2), (1, 1, 4, 9), r"kernel spans 5x5.*padded input 4x9"),
    (nn.AvgPool2d(3, padding=1), (2, 3, 1, 0), r"padded input 3x2"),
    (nn.MaxPool2d(2), (4, 4), r"\(N, C, H, W\) or \(C, H, W\), got shape \(4, 4\)"),
    (nn.AvgPool2d(2), (1, 2, 3, 4, 5), r"got shape \(1, 2, 3, 4, 5\)"),
    (nn.AdaptiveAvgPool2d(2), (4, 4), r"got shape \(4, 4\)"),
    (nn.AdaptiveAvgPool2d(2), (1, 2, 0, 3), r"non-zero height and width, got shape \(1, 2, 0, 3\)"),
    (nn.BatchNorm2d(3), (2, 3, 4), r"\(N, C, H, W\), got shape \(2, 3, 4\)"),
    (nn.BatchNorm2d(3), (2, 4, 5, 5), r"expected 3 channels on dim 1, got input of shape \(2, 4, 5, 5\)"),
    (nn.BatchNorm2d(3), (1, 3, 1, 1), r"more than 1 value per channel.*\(1, 3, 1, 1\)"),
    (nn.GroupNorm(2, 4), (2, 6, 3, 3), r"expected 4 channels on dim 1.*\(2, 6, 3, 3\)"),
    (nn.GroupNorm(2, 4), (4,), r"\(N, C, \*\), got shape \(4,\)"),
]


@pytest.mark.parametrize("m,shape,match", BAD_SHAPES, ids=[f"{type(m).__name__}{s}" for m, s, _ in BAD_SHAPES])
def test_bad_shapes_raise_naming_the_sizes(m, shape, match):
    with pytest.raises(ValueError, match=match):
        m(np.zeros(shape))
    assert m.saved_count == 0


def test_group_norm_op_refuses_groups_that_do_not_divide_the_channels():
    x, w, b = np.zeros((2, 6, 3, 3)), np.ones(6), np.zeros(6)
    with pytest.raises(ValueError, match=r"6 channels .* not divisible by num_groups=4"):
        normalization.group_norm(x, w, b, num_groups=4)


# -- checkpoints, configs, gradcheck --------------------------------------------------------------

def _cnn_tail():
    return nn.Sequential(nn.BatchNorm2d(3), nn.MaxPool2d((2, 3), stride=(2, 1), padding=(1, 0)),
                         nn.GroupNorm(1, 3), nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten())


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    from handydl import checkpoint
    rng = np.random.default_rng(0)
    model = _cnn_tail()
    for p in model.parameters():
        p.data[...] = rng.uniform(0.5, 1.5, p.shape)
    for _ in range(3):                                   # move the running statistics
        model(rng.standard_normal((4, 3, 7, 8)).astype(np.float32))
    model.zero_grad()
    model.eval()
    path = tmp_path / "tail.npz"
    checkpoint.save(model, path)
    loaded = checkpoint.load(path)
    loaded.eval()
    assert [type(m).__name__ for m in loaded] == [type(m).__name__ for m in model]
    assert [m.get_config() for m in loaded] == [m.get_config() for m in model]
    for (n1, a), (n2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2
        np.testing.assert_array_equal(a, b)
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    np.testing.assert_array_equal(model(x), loaded(x))
    model.train()
    loaded.train()
    np.testing.assert_array_equal(model(x), loaded(x))


@pytest.mark.parametrize("make", [lambda: nn.MaxPool2d(3, 2, 1), lambda: nn.AvgPool2d(3, 2, 1, True, False),
                                  lambda: nn.AdaptiveAvgPool2d((None, 3)), lambda: nn.BatchNorm2d(3, momentum=None),
                                  lambda: nn.GroupNorm(3, 3, affine=False),
                                  lambda: nn.BatchNorm2d(3, bias=False), lambda: nn.GroupNorm(1, 3, bias=False)],
                         ids=["max", "avg", "adaptive", "bn", "gn", "bn-nobias", "gn-nobias"])
def test_config_rebuilds_the_same_module(make):
    import json
    m = make()
    config = json.loads(json.dumps(m.get_config()))
    rebuilt = type(m)(**config)
    assert rebuilt.get_config() == config
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(m(x), rebuilt(x))


def _distinct(shape, seed=0):
    """Values without ties (spacing far above the finite-difference step)."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) / n * 4 - 2).reshape(shape)


@pytest.mark.parametrize("make", [lambda: nn.MaxPool2d(2), lambda: nn.MaxPool2d(3, 2, 1, dilation=1, ceil_mode=True),
                                  lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                                  lambda: nn.AdaptiveAvgPool2d((2, 3)),
                                  lambda: nn.BatchNorm2d(3, dtype=np.float64),
                                  lambda: nn.GroupNorm(3, 3, dtype=np.float64)],
                         ids=["max", "max-ceil", "avg", "adaptive", "bn", "gn"])
def test_gradcheck_passes_for_each_module(make):
    m = make()
    handydl.gradcheck(m, _distinct((2, 3, 5, 6)))


def test_gradcheck_batchnorm2d_eval_and_the_tape():
    m = nn.BatchNorm2d(3, dtype=np.float64)
    m(_distinct((4, 3, 3, 3), seed=1))
    m.eval()
    handydl.gradcheck(m, _distinct((2, 3, 5, 6)))
    model = _cnn_tail().astype(np.float64)
    handydl.gradcheck(model, _distinct((2, 3, 7, 8)))
    handydl.gradcheck(model, _distinct((2, 3, 7, 8)), against="tape")


def test_module_called_twice_gets_both_gradients():
    m = nn.GroupNorm(2, 4, dtype=np.float64)
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((2, 4, 3, 3)), rng.standard_normal((1, 4, 2, 5))
    g1, g2 = rng.standard_normal(x1.shape), rng.standard_normal(x2.shape)
    m(x1)
    m(x2)
    gx2, gx1 = m.backward(g2), m.backward(g1)              # last in, first out
    tm = torch.nn.GroupNorm(2, 4).double()
    t1, t2 = t(x1, True), t(x2, True)
    (tm(t1) * t(g1)).sum().add((tm(t2) * t(g2)).sum()).backward()
    np.testing.assert_allclose(gx1, t1.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(gx2, t2.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(m.weight.grad, tm.weight.grad.numpy(), atol=1e-10)


def test_batch_norm2d_is_batch_norm_on_the_flattened_view():
    """One derivation: the 2-D ops are batch_norm / batch_norm_eval on (N, C, H*W), bit for bit."""
    rng = np.random.default_rng(0)
    x, gy = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    w, b, rm, rv = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3), rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    for two_d, one_d, extra in ((normalization.batch_norm2d, ops.batch_norm, ()),
                                (normalization.batch_norm2d_eval, ops.batch_norm_eval, (rm, rv))):
        y2, s2 = two_d.forward(x, w, b, *extra)
        y1, s1 = one_d.forward(x.reshape(2, 3, 20), w, b, *extra)
        np.testing.assert_array_equal(y2, y1.reshape(x.shape))
        g2, g1 = two_d.backward(s2, gy), one_d.backward(s1, gy.reshape(2, 3, 20))
        np.testing.assert_array_equal(g2[0], g1[0].reshape(x.shape))
        for a, c in zip(g2[1:3], g1[1:3]):
            np.testing.assert_array_equal(a, c)


def test_dtype_and_device_arguments_as_torch():
    for make in (lambda **kw: nn.BatchNorm2d(3, **kw), lambda **kw: nn.GroupNorm(1, 3, **kw)):
        assert make().weight.dtype == np.float32                      # None: float32
        assert make(dtype=np.float64).weight.dtype == np.float64
        assert make(dtype="torch.float64", device="cpu").weight.dtype == np.float64
        with pytest.raises(TypeError, match="dtype=<class 'numpy.int64'>"):
            make(dtype=np.int64)


def test_batchnorm2d_empty_batch_and_keyword_input_as_torch():
    ours, theirs = nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    x = np.zeros((0, 3, 4, 4), np.float32)
    y = ours(input=x)
    ty = theirs(input=t(x))
    assert y.shape == tuple(ty.shape) == (0, 3, 4, 4)
    np.testing.assert_array_equal(ours.running_mean, theirs.running_mean.numpy())
    np.testing.assert_array_equal(ours.running_var, theirs.running_var.numpy())
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 1
    assert ours.backward(np.zeros_like(y)).shape == x.shape
    np.testing.assert_array_equal(ours.weight.grad, np.zeros(3, np.float32))
