"""Modules against torch.nn: forward, dL/dx, parameter gradients, running
statistics; the Module contract (accumulation, state, errors leaving state untouched)."""
from __future__ import annotations

import numpy as np
import pytest

import handydl
from handydl import nn, ops

torch = pytest.importorskip("torch")


def t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def test_every_registered_activation_has_a_module():
    assert set(nn.ACTIVATIONS) == set(ops.names("activation"))
    for name in nn.ACTIVATIONS:
        assert isinstance(nn.activation(name), nn.Module)


def test_unknown_activation_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown activation 'swish2'.*relu"):
        nn.activation("swish2")


def torch_mlp_grads(m, x, gy):
    """The same MLP in torch (weights transposed), its input and parameter gradients."""
    layers = []
    for mod in m:
        if isinstance(mod, nn.Linear):
            lin = torch.nn.Linear(mod.in_features, mod.out_features).double()
            with torch.no_grad():
                lin.weight.copy_(t(mod.weight.data.T))
                lin.bias.copy_(t(mod.bias.data))
            layers.append(lin)
        else:
            layers.append({"Tanh": torch.nn.Tanh(), "ReLU": torch.nn.ReLU(),
                           "GELU": torch.nn.GELU()}[type(mod).__name__])
    tm = torch.nn.Sequential(*layers)
    tx = t(x, grad=True)
    ty = tm(tx)
    ty.backward(t(gy))
    grads = []
    for lin in layers:
        if isinstance(lin, torch.nn.Linear):
            grads += [lin.weight.grad.numpy().T, lin.bias.grad.numpy()]
    return ty.detach().numpy(), tx.grad.numpy(), grads


def test_sequential_backward_is_the_delta_rule_of_torch_autograd():
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Linear(5, 8, dtype=np.float64, rng=1), nn.Tanh(),
                      nn.Linear(8, 6, dtype=np.float64, rng=2), nn.GELU(),
                      nn.Linear(6, 3, dtype=np.float64, rng=3))
    x, gy = rng.standard_normal((7, 5)), rng.standard_normal((7, 3))
    y = m(x)
    gx = m.backward(gy)
    ty, tgx, tgrads = torch_mlp_grads(m, x, gy)
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, tgx, rtol=1e-12, atol=1e-12)
    for p, g in zip(m.parameters(), tgrads):
        np.testing.assert_allclose(p.grad, g, rtol=1e-12, atol=1e-12)


def test_linear_matches_torch_and_keeps_float32():
    rng = np.random.default_rng(1)
    lin = nn.Linear(4, 3, rng=0)
    assert lin.weight.dtype == np.float32 and lin.weight.shape == (4, 3)
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)     # leading batch dims
    gy = rng.standard_normal((2, 5, 3)).astype(np.float32)
    y = lin(x)
    gx = lin.backward(gy)
    assert y.dtype == gx.dtype == lin.weight.grad.dtype == np.float32
    tl = torch.nn.Linear(4, 3)
    with torch.no_grad():
        tl.weight.copy_(torch.from_numpy(lin.weight.data.T.copy()))
        tl.bias.copy_(torch.from_numpy(lin.bias.data))
    tx = torch.from_numpy(x).requires_grad_()
    ty = tl(tx)
    ty.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin.weight.grad, tl.weight.grad.numpy().T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lin.bias.grad, tl.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_linear_initialization_follows_torch_default_bounds():
    lin = nn.Linear(400, 300, rng=0)
    bound = 1 / np.sqrt(400)
    assert np.abs(lin.weight.data).max() <= bound and np.abs(lin.bias.data).max() <= bound
    # uniform on [-b, b]: the standard deviation is b / sqrt(3)
    assert abs(lin.weight.data.std() - bound / np.sqrt(3)) < 0.02 * bound


def test_gradients_accumulate_and_zero_grad_clears():
    rng = np.random.default_rng(2)
    lin = nn.Linear(3, 2, dtype=np.float64, rng=0)
    x, gy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    lin(x)
    lin(x)                                          # two calls: two saved states
    lin.backward(gy)
    once = lin.weight.grad.copy()
    lin.backward(gy)
    np.testing.assert_allclose(lin.weight.grad, 2 * once)
    with pytest.raises(RuntimeError, match="before forward"):
        lin.backward(gy)                            # a third backward has nothing left
    np.testing.assert_allclose(once, x.T @ gy)      # dL/dW = x^T gy
    lin.zero_grad()
    assert not lin.weight.grad.any() and not lin.bias.grad.any()


@pytest.mark.parametrize("shape", [(16, 3), (8, 3, 5)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_training_eval_and_running_stats_match_torch(shape, momentum):
    rng = np.random.default_rng(3)
    bn = nn.BatchNorm1d(3, momentum=momentum, dtype=np.float64)
    bn.weight.data[:] = [0.5, 1.5, 2.0]
    bn.bias.data[:] = [0.1, -0.2, 0.3]
    tb = torch.nn.BatchNorm1d(3, momentum=momentum).double()
    with torch.no_grad():
        tb.weight.copy_(t(bn.weight.data))
        tb.bias.copy_(t(bn.bias.data))
    for step in range(3):
        x = rng.standard_normal(shape) * (step + 1) + step
        gy = rng.standard_normal(shape)
        y = bn(x)
        gx = bn.backward(gy)
        tx = t(x, grad=True)
        ty = tb(tx)
        ty.backward(t(gy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bn.weight.grad, tb.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(bn.bias.grad, tb.bias.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(bn.running_mean, tb.running_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(bn.running_var, tb.running_var.numpy(), rtol=1e-10)
    bn.eval()
    tb.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(bn(x), tb(t(x)).detach().numpy(), rtol=1e-10, atol=1e-10)


def test_batchnorm_float32_keeps_dtype_of_running_stats():
    bn = nn.BatchNorm1d(4)
    bn(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    assert bn.running_mean.dtype == bn.running_var.dtype == np.float32


def test_layernorm_matches_torch():
    rng = np.random.default_rng(4)
    ln = nn.LayerNorm((3, 4), dtype=np.float64)
    ln.weight.data[:] = rng.uniform(0.5, 1.5, (3, 4))
    ln.bias.data[:] = rng.standard_normal((3, 4))
    x, gy = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    y, gx = ln(x), None
    gx = ln.backward(gy)
    tw, tb_, tx = t(ln.weight.data, True), t(ln.bias.data, True), t(x, True)
    ty = torch.nn.functional.layer_norm(tx, (3, 4), tw, tb_)
    ty.backward(t(gy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ln.weight.grad, tw.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ln.bias.grad, tb_.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_prelu_per_channel_matches_torch():
    rng = np.random.default_rng(5)
    m = nn.PReLU(3, dtype=np.float64)
    m.weight.data[:] = [0.1, 0.2, 0.3]
    x, gy = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2))
    y = m(x)
    gx = m.backward(gy)
    tw, tx = t(m.weight.data, True), t(x, True)
    ty = torch.nn.functional.prelu(tx, tw)
    ty.backward(t(gy))
    np.testing.assert_allclose(y, ty.detach().numpy())
    np.testing.assert_allclose(gx, tx.grad.numpy())
    np.testing.assert_allclose(m.weight.grad, tw.grad.numpy(), rtol=1e-12)


def test_dropout_keeps_expectation_and_eval_is_identity():
    x = np.ones((200, 500), dtype=np.float32)
    d = nn.Dropout(0.3, seed=0)
    y = d(x)
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01                 # Bernoulli(0.7) survivors
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)  # inverted scaling
    assert abs(y.mean() - 1.0) < 0.01                    # E[y] = x
    g = d.backward(np.ones_like(x))
    np.testing.assert_array_equal(g, y)                  # same mask backward
    assert not np.array_equal(d(x), y)                   # a new mask each call
    d.eval()
    np.testing.assert_array_equal(d(x), x)


def test_dropout_seed_reproducible():
    x = np.ones((10, 10))
    np.testing.assert_array_equal(nn.Dropout(0.5, seed=7)(x), nn.Dropout(0.5, seed=7)(x))


def test_flatten_round_trip():
    f = nn.Flatten()
    x = np.arange(24.0).reshape(2, 3, 4)
    assert f(x).shape == (2, 12)
    assert f.backward(np.ones((2, 12))).shape == (2, 3, 4)


def test_state_dict_round_trip_and_strict_loading():
    m = nn.Sequential(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, rng=1))
    m(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32))
    state = m.state_dict()
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                          "1.running_var", "1.num_batches_tracked", "3.weight", "3.bias"}
    m2 = nn.Sequential(nn.Linear(3, 4, rng=5), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, rng=6))
    m2.load_state_dict(state)
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    before = {k: v.copy() for k, v in m2.state_dict().items()}
    bad = dict(state)
    bad["3.weight"] = np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"3.weight has shape \(5, 2\), expected \(4, 2\)"):
        m2.load_state_dict(bad)
    missing = {k: v for k, v in state.items() if k != "0.bias"}
    with pytest.raises(ValueError, match="missing keys.*0.bias"):
        m2.load_state_dict(missing)
    for k, v in m2.state_dict().items():                  # nothing was half loaded
        np.testing.assert_array_equal(v, before[k])


def test_train_eval_flags_propagate():
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    m.eval()
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())


# -- bad input: a clear error, and nothing changed ------------------------------------------

def snapshot(m):
    return {k: v.copy() for k, v in m.state_dict().items()}, [p.grad.copy() for p in m.parameters()]


def assert_unchanged(m, snap):
    state, grads = snap
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    for p, g in zip(m.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)


def test_linear_wrong_width_names_shapes_and_changes_nothing():
    lin = nn.Linear(4, 3)
    snap = snapshot(lin)
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 4\), got shape \(2, 5\)"):
        lin(np.ones((2, 5), np.float32))
    assert_unchanged(lin, snap)


def test_backward_before_forward_is_a_runtime_error():
    for m in (nn.Linear(2, 2), nn.ReLU(), nn.Sequential(nn.Tanh()), nn.MSELoss(), nn.Flatten()):
        with pytest.raises(RuntimeError, match="before forward"):
            m.backward(np.ones((1, 2)))


def test_backward_with_wrong_gradient_shape_changes_nothing():
    lin = nn.Linear(3, 2)
    lin(np.ones((4, 3), np.float32))
    snap = snapshot(lin)
    with pytest.raises(ValueError, match=r"expected gradient of shape \(4, 2\).*got shape \(4, 3\)"):
        lin.backward(np.ones((4, 3), np.float32))
    assert_unchanged(lin, snap)


def test_batchnorm_bad_input_leaves_running_stats_untouched():
    bn = nn.BatchNorm1d(3)
    bn(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    snap = snapshot(bn)
    with pytest.raises(ValueError, match=r"expected 3 features on dim 1, got input of shape \(4, 5\)"):
        bn(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per feature"):
        bn(np.ones((1, 3), np.float32))
    assert_unchanged(bn, snap)


@pytest.mark.parametrize("make,valid", [
    (lambda: nn.GELU(approximate="fast"), "'none', 'tanh'"),
    (lambda: nn.MSELoss(reduction="avg"), "'mean', 'sum', 'none'"),
    (lambda: nn.MultiMarginLoss(p=3), "1, 2"),
])
def test_unknown_option_lists_valid_ones(make, valid):
    with pytest.raises(ValueError, match=f"expected one of {valid}"):
        make()


def test_nan_propagates_through_a_network():
    m = nn.Sequential(nn.Linear(3, 4, dtype=np.float64, rng=0), nn.ReLU(), nn.Linear(4, 2, dtype=np.float64, rng=1))
    x = np.array([[np.nan, 1.0, 2.0], [0.5, 1.0, 2.0]])
    y = m(x)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()
    m.backward(np.ones_like(y))                         # no crash


def test_manual_seed_makes_initialization_reproducible():
    handydl.manual_seed(123)
    a = nn.Linear(3, 3).weight.data.copy()
    handydl.manual_seed(123)
    np.testing.assert_array_equal(nn.Linear(3, 3).weight.data, a)
