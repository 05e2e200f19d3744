"""RNN, LSTM, GRU and their cells against torch.nn with the same weights: forward, and
backward with random upstream gradients on the output AND the final states, for every
shape option; the cell ops against central differences; per-call saved state, the
tape, dropout, checkpoints, bad input and extreme inputs."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from handydl import checkpoint, nn, ops, tape
from conftest import numeric_jacobian

torch = pytest.importorskip("torch")

TOL = {np.float64: 1e-10, np.float32: 1e-4}
MODES = ["tanh", "relu", "lstm", "gru"]


def make(mode, *args, **kw):
    """The handydl module and its torch.nn twin with the same parameters."""
    if mode in ("tanh", "relu"):
        m = nn.RNN(*args, nonlinearity=mode, **kw)
        t = torch.nn.RNN(*args, nonlinearity=mode, **{k: v for k, v in kw.items() if k not in ("dtype", "rng")})
    else:
        cls = {"lstm": "LSTM", "gru": "GRU"}[mode]
        m = getattr(nn, cls)(*args, **kw)
        t = getattr(torch.nn, cls)(*args, **{k: v for k, v in kw.items() if k not in ("dtype", "rng")})
    t = t.to(torch.float64 if m.dtype == np.float64 else torch.float32)
    copy_into(m, t)
    return m, t


def copy_into(m, t):
    ours = dict(m.named_parameters())
    theirs = dict(t.named_parameters())
    assert list(ours) == list(theirs), "parameter names (and order) differ from torch.nn's"
    with torch.no_grad():
        for name, p in theirs.items():
            assert tuple(p.shape) == ours[name].shape, name
            p.copy_(torch.from_numpy(ours[name].data.copy()))


def close(actual, expected, dtype, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"
    tol = TOL[dtype]
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def flat_outputs(mode, out):
    """(output, h_n) or (output, h_n, c_n) as a flat tuple."""
    y, state = out
    return (y, *state) if mode == "lstm" else (y, state)


def hx_for(mode, shape, rng, dtype):
    if mode == "lstm":
        return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(2))
    return rng.standard_normal(shape).astype(dtype)


def states_list(mode, hx):
    """hx as a list of arrays: [], [h_0] or [h_0, c_0]."""
    return [] if hx is None else list(hx) if mode == "lstm" else [hx]


def to_t(a, grad=True):
    if isinstance(a, tuple):
        return tuple(to_t(v, grad) for v in a)
    return torch.from_numpy(a.copy()).requires_grad_(grad)


def check_against_torch(mode, dtype=np.float64, num_layers=1, bidirectional=False, batch_first=False,
                        batch=3, T=5, with_hx=True, bias=True, I=4, H=3, seed=0):
    rng = np.random.default_rng(seed)
    m, t = make(mode, I, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                bidirectional=bidirectional, dtype=dtype, rng=seed)
    D = 2 if bidirectional else 1
    if batch is None:
        x_shape, h_shape = (T, I), (num_layers * D, H)
    else:
        x_shape = (batch, T, I) if batch_first else (T, batch, I)
        h_shape = (num_layers * D, batch, H)
    x = rng.standard_normal(x_shape).astype(dtype)
    hx = hx_for(mode, h_shape, rng, dtype) if with_hx else None
    outs = flat_outputs(mode, m(x, hx) if with_hx else m(x))
    tx, thx = to_t(x), (to_t(hx) if with_hx else None)
    touts = flat_outputs(mode, t(tx, thx) if with_hx else t(tx))
    for k, (o, to) in enumerate(zip(outs, touts)):
        close(o, to.detach().numpy(), dtype, f"{mode} output {k}")
    gys = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    grads = m.backward(*gys)
    leaves = [tx] + states_list(mode, thx) + list(t.parameters())
    tgrads = torch.autograd.grad(touts, leaves, [torch.from_numpy(g) for g in gys])
    if with_hx:
        gx, ghx = grads
        ours = [gx] + (list(ghx) if mode == "lstm" else [ghx])
    else:
        ours = [grads]
    ours += [p.grad for p in m.parameters()]
    for k, (g, tg) in enumerate(zip(ours, tgrads)):
        close(g, tg.numpy(), dtype, f"{mode} gradient {k} (input, the initial states, then the parameters)")
    assert len(ours) == len(tgrads)
    return m


CONFIGS = [
    # num_layers, bidirectional, batch_first, batch, T, with_hx
    (1, False, False, 3, 5, False),
    (1, False, False, 3, 5, True),
    (2, False, False, 2, 4, True),
    (1, True, False, 2, 4, True),
    (2, True, True, 3, 7, True),          # odd length, both directions, batch first
    (2, True, False, 2, 3, False),
    (1, False, True, 1, 1, True),         # batch 1, sequence length 1
    (2, True, True, 1, 1, False),
    (3, False, True, 4, 6, True),
    (2, True, False, None, 5, True),      # unbatched (L, H_in)
    (1, False, True, None, 3, False),     # unbatched, batch_first (ignored, as torch)
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "L{}{}{}-N{}-T{}{}".format(
    c[0], "-bi" if c[1] else "", "-bf" if c[2] else "", c[3], c[4], "-hx" if c[5] else ""))
def test_float64_matches_torch(mode, config):
    layers, bi, bf, batch, T, with_hx = config
    check_against_torch(mode, np.float64, layers, bi, bf, batch, T, with_hx)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[4], CONFIGS[9]])
def test_float32_stays_float32_and_matches_torch(mode, config):
    layers, bi, bf, batch, T, with_hx = config
    m = check_against_torch(mode, np.float32, layers, bi, bf, batch, T, with_hx)
    assert all(p.grad.dtype == np.float32 for p in m.parameters())


@pytest.mark.parametrize("mode", MODES)
def test_without_bias_matches_torch(mode):
    m = check_against_torch(mode, np.float64, 2, True, False, 2, 4, True, bias=False)
    assert not any("bias" in n for n, _ in m.named_parameters())


@pytest.mark.parametrize("mode", MODES)
def test_later_upstream_gradients_are_optional(mode):
    """backward(g_output) alone, or backward(None, g_h_n): the missing ones are zeros."""
    rng = np.random.default_rng(3)
    m, t = make(mode, 3, 4, num_layers=2, dtype=np.float64, rng=1)
    x = rng.standard_normal((5, 2, 3))
    outs = flat_outputs(mode, m(x))
    g_last = rng.standard_normal(outs[1].shape)
    gx_state = m.backward(None, g_last)
    gy = rng.standard_normal(outs[0].shape)
    m(x)
    gx_out = m.backward(gy)
    tx = to_t(x)
    touts = flat_outputs(mode, t(tx))
    np.testing.assert_allclose(gx_out, torch.autograd.grad(touts[0], tx, torch.from_numpy(gy))[0].numpy(),
                               rtol=1e-10, atol=1e-12)
    touts = flat_outputs(mode, t(tx))
    np.testing.assert_allclose(gx_state, torch.autograd.grad(touts[1], tx, torch.from_numpy(g_last))[0].numpy(),
                               rtol=1e-10, atol=1e-12)
    m(x)
    assert np.all(m.backward() == 0)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")   # torch's own
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", [(1, False, False, 3, 5, True), (2, True, True, 2, 4, True),
                                    (2, True, False, 2, 3, False), (1, False, False, None, 4, True)])
def test_lstm_with_proj_size_matches_torch(config, dtype):
    """h_t = (o_t tanh c_t) W_hr^T of size proj_size; weight_hh (4H, P), c of size H."""
    layers, bi, bf, batch, T, with_hx = config
    rng = np.random.default_rng(20)
    m, t = make("lstm", 3, 5, num_layers=layers, bidirectional=bi, batch_first=bf, proj_size=2,
                dtype=dtype, rng=15)
    assert str(m) == str(t)
    LD = layers * (2 if bi else 1)
    x_shape = (T, 3) if batch is None else ((batch, T, 3) if bf else (T, batch, 3))
    x = rng.standard_normal(x_shape).astype(dtype)
    lead = (LD,) if batch is None else (LD, batch)
    hx = (rng.standard_normal(lead + (2,)).astype(dtype), rng.standard_normal(lead + (5,)).astype(dtype))
    outs = flat_outputs("lstm", m(x, hx) if with_hx else m(x))
    tx, thx = to_t(x), to_t(hx)
    touts = flat_outputs("lstm", t(tx, thx) if with_hx else t(tx))
    for k, (o, to) in enumerate(zip(outs, touts)):
        close(o, to.detach().numpy(), dtype, f"projected LSTM output {k}")
    gys = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    grads = m.backward(*gys)
    ours = ([grads[0], *grads[1]] if with_hx else [grads]) + [p.grad for p in m.parameters()]
    leaves = [tx] + (list(thx) if with_hx else []) + list(t.parameters())
    tgrads = torch.autograd.grad(touts, leaves, [torch.from_numpy(g) for g in gys])
    assert len(ours) == len(tgrads)
    for k, (g, tg) in enumerate(zip(ours, tgrads)):
        close(g, tg.numpy(), dtype, f"projected LSTM gradient {k}")


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")   # torch's own
def test_a_projected_lstm_moves_to_torch_and_back():
    from handydl.interop import from_torch, to_torch
    m = nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, dtype=np.float64, rng=16)
    x = np.random.default_rng(22).standard_normal((4, 2, 3))
    t = to_torch(m)
    back = from_torch(t)
    y, (h, c) = m(x)
    ty, (th, tc) = t(torch.from_numpy(x))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(back(x)[0], y)
    assert str(back) == str(m) == str(t)


def test_a_projected_lstm_is_refused_by_the_onnx_export_naming_proj_size(tmp_path):
    pytest.importorskip("onnx")
    from handydl.interop import to_onnx
    with pytest.raises(ValueError, match="proj_size=2"):
        to_onnx(nn.LSTM(3, 5, proj_size=2), tmp_path / "lstm.onnx", input_shape=(2, 3))
    assert not (tmp_path / "lstm.onnx").exists()


def test_lstm_op_with_projection_matches_central_differences():
    from handydl.check import gradcheck
    rng = np.random.default_rng(21)
    T, N, I, H, P = 3, 2, 3, 4, 2
    inputs = [rng.standard_normal((T, N, I)), rng.standard_normal((N, P)), rng.standard_normal((N, H)),
              rng.standard_normal((4 * H, I)) * 0.5, rng.standard_normal((4 * H, P)) * 0.5,
              rng.standard_normal(4 * H), rng.standard_normal(4 * H), rng.standard_normal((P, H))]
    for params in ({}, {"reverse": True, "batch_first": True}):
        x = inputs[0].swapaxes(0, 1).copy() if params else inputs[0]
        report = gradcheck(ops.lstm, x, *inputs[1:], params=ops.lstm.bind(params), raise_exception=False)
        assert report.passed, report.failure_message()


def test_lstm_backward_takes_the_state_gradients_as_a_tuple_too():
    rng = np.random.default_rng(4)
    m = nn.LSTM(3, 2, dtype=np.float64, rng=0)
    x = rng.standard_normal((4, 2, 3))
    y, (h, c) = m(x)
    gy, gh, gc = (rng.standard_normal(a.shape) for a in (y, h, c))
    a = m.backward(gy, (gh, gc))
    m(x)
    b = m.backward(gy, gh, gc)
    np.testing.assert_array_equal(a, b)


# -- the cells ---------------------------------------------------------------------------------

CELLS = {"tanh": ("RNNCell", {"nonlinearity": "tanh"}), "relu": ("RNNCell", {"nonlinearity": "relu"}),
         "lstm": ("LSTMCell", {}), "gru": ("GRUCell", {})}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_cell_modules_match_torch(mode, with_hx, batched, dtype):
    rng = np.random.default_rng(5)
    cls, kw = CELLS[mode]
    m = getattr(nn, cls)(4, 3, dtype=dtype, rng=2, **kw)
    t = getattr(torch.nn, cls)(4, 3, **kw).to(torch.float64 if dtype == np.float64 else torch.float32)
    copy_into(m, t)
    x = rng.standard_normal((2, 4) if batched else (4,)).astype(dtype)
    hx = hx_for(mode, (2, 3) if batched else (3,), rng, dtype) if with_hx else None
    out = m(x, hx) if with_hx else m(x)
    outs = out if mode == "lstm" else (out,)
    tx, thx = to_t(x), (to_t(hx) if with_hx else None)
    tout = t(tx, thx) if with_hx else t(tx)
    touts = tout if mode == "lstm" else (tout,)
    for o, to in zip(outs, touts):
        close(o, to.detach().numpy(), dtype, f"{cls} forward")
    gys = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    grads = m.backward(*gys)
    ours = ([grads[0]] + (list(grads[1]) if mode == "lstm" else [grads[1]])) if with_hx else [grads]
    ours += [p.grad for p in m.parameters()]
    leaves = [tx] + states_list(mode, thx) + list(t.parameters())
    tgrads = torch.autograd.grad(touts, leaves, [torch.from_numpy(g) for g in gys])
    assert len(ours) == len(tgrads)
    for k, (g, tg) in enumerate(zip(ours, tgrads)):
        close(g, tg.numpy(), dtype, f"{cls} gradient {k}")


@pytest.mark.parametrize("name", ["rnn_tanh_cell", "rnn_relu_cell", "lstm_cell", "gru_cell"])
def test_cell_ops_match_central_differences(name):
    """Every input's vector-Jacobian product against central differences in float64,
    with a random upstream gradient on every output."""
    op = ops.get(name)
    rng = np.random.default_rng(6)
    k = {"rnn_tanh_cell": 1, "rnn_relu_cell": 1, "lstm_cell": 4, "gru_cell": 3}[name]
    N, I, H = 3, 4, 5
    states = [rng.standard_normal((N, H)) for _ in range(2 if name == "lstm_cell" else 1)]
    inputs = [rng.standard_normal((N, I)), *states, rng.standard_normal((k * H, I)) * 0.5,
              rng.standard_normal((k * H, H)) * 0.5, rng.standard_normal(k * H), rng.standard_normal(k * H)]
    y, saved = op.forward(*inputs)
    outs = y if isinstance(y, tuple) else (y,)
    gys = [rng.standard_normal(o.shape) for o in outs]
    grads = op.backward(saved, *gys)
    u = np.concatenate([g.ravel() for g in gys])
    for i in range(len(inputs)):
        J = numeric_jacobian(lambda *a: op(*a), inputs, i)
        np.testing.assert_allclose(grads[i].ravel(), u @ J, rtol=1e-7, atol=1e-8,
                                   err_msg=f"{name} d/d{op.inputs[i]}")


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm", "gru"])
def test_layer_ops_equal_their_cells_step_by_step(name):
    """The layer op (one projection, the time loop) equals its cell op applied at every step,
    forward, and backward through time summed by hand from the cells' backwards."""
    rng = np.random.default_rng(7)
    layer, cell = ops.get(name), ops.get(name + "_cell")
    T, N, I, H = 4, 2, 3, 5
    k = {"rnn_tanh": 1, "lstm": 4, "gru": 3}[name]
    x = rng.standard_normal((T, N, I))
    states = [rng.standard_normal((N, H)) for _ in range(2 if name == "lstm" else 1)]
    w = [rng.standard_normal((k * H, I)), rng.standard_normal((k * H, H)) * 0.5,
         rng.standard_normal(k * H), rng.standard_normal(k * H)]
    outs, saved = layer.forward(x, *states, *w)
    s, cell_saved, ys = list(states), [], []
    for t in range(T):
        o, sv = cell.forward(x[t], *s, *w)
        s = list(o) if isinstance(o, tuple) else [o]
        ys.append(s[0])
        cell_saved.append(sv)
    np.testing.assert_allclose(outs[0], np.stack(ys), rtol=1e-12, atol=1e-14)
    gys = [rng.standard_normal(o.shape) for o in outs]
    grads = layer.backward(saved, *gys)
    carry, gx, gw = list(gys[1:]), [], [0] * 4
    for t in range(T - 1, -1, -1):
        carry[0] = carry[0] + gys[0][t]
        g = cell.backward(cell_saved[t], *carry)
        n = len(states)
        gx.append(g[0])
        carry = list(g[1:1 + n])
        gw = [a + b for a, b in zip(gw, g[1 + n:])]
    np.testing.assert_allclose(grads[0], np.stack(gx[::-1]), rtol=1e-10, atol=1e-12)
    for a, b in zip(grads[1:], carry + gw):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# -- the module contract ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_called_twice_then_two_backwards_last_in_first_out(mode):
    rng = np.random.default_rng(8)
    m, t = make(mode, 3, 4, num_layers=2, bidirectional=True, dtype=np.float64, rng=3)
    x1, x2 = rng.standard_normal((5, 2, 3)), rng.standard_normal((3, 2, 3))
    o1, o2 = flat_outputs(mode, m(x1)), flat_outputs(mode, m(x2))
    assert m.saved_count == 2
    g1 = [rng.standard_normal(o.shape) for o in o1]
    g2 = [rng.standard_normal(o.shape) for o in o2]
    gx2 = m.backward(*g2)
    gx1 = m.backward(*g1)
    t1, t2 = to_t(x1), to_t(x2)
    loss = sum((a * torch.from_numpy(g)).sum() for a, g in zip(flat_outputs(mode, t(t1)), g1))
    loss = loss + sum((a * torch.from_numpy(g)).sum() for a, g in zip(flat_outputs(mode, t(t2)), g2))
    tg = torch.autograd.grad(loss, [t1, t2] + list(t.parameters()))
    np.testing.assert_allclose(gx1, tg[0].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gx2, tg[1].numpy(), rtol=1e-10, atol=1e-12)
    for p, g in zip(m.parameters(), tg[2:]):
        np.testing.assert_allclose(p.grad, g.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="backward"):
        m.backward(*g1)


@pytest.mark.parametrize("mode", MODES)
def test_the_tape_records_the_stack_and_agrees_with_the_hand_written_backward(mode):
    """Under a tape the forward is a chain of registered ops (layer ops, split, concat,
    reshape): the tape's backward, from the ops alone, equals the module's own."""
    rng = np.random.default_rng(9)
    m, _ = make(mode, 3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=np.float64, rng=4)
    x = rng.standard_normal((2, 5, 3))
    hx = hx_for(mode, (4, 2, 4), rng, np.float64)
    states = list(hx) if mode == "lstm" else [hx]
    with tape.Tape() as tp:
        outs = flat_outputs(mode, m(x, hx))
    gys = [rng.standard_normal(o.shape) for o in outs]
    m.zero_grad()
    taped = tp.backward(outs, *gys, wrt=[x, *states])
    taped_params = [p.grad.copy() for p in m.parameters()]
    m.zero_grad()
    flat_outputs(mode, m(x, hx))
    gx, ghx = m.backward(*gys)
    own = [gx] + (list(ghx) if mode == "lstm" else [ghx])
    for a, b in zip(taped, own):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for a, p in zip(taped_params, m.parameters()):
        np.testing.assert_allclose(a, p.grad, rtol=1e-10, atol=1e-12)


class _LastState(nn.Module):
    """A forward-only model around an LSTM (differentiated by the tape): the sum of h_n and c_n."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x):
        _, (h, c) = self.lstm(x)
        return ops.add(h, c)


def test_a_forward_only_model_around_an_lstm_gets_torchs_gradients_from_the_tape():
    rng = np.random.default_rng(10)
    m, t = make("lstm", 3, 4, num_layers=2, dtype=np.float64, rng=5)
    model = _LastState(m)
    x = rng.standard_normal((4, 2, 3))
    y = model(x)
    g = rng.standard_normal(y.shape)
    gx = model.backward(g)
    tx = to_t(x)
    _, (th, tc) = t(tx)
    tg = torch.autograd.grad(th + tc, [tx] + list(t.parameters()), torch.from_numpy(g))
    np.testing.assert_allclose(gx, tg[0].numpy(), rtol=1e-10, atol=1e-12)
    for p, b in zip(m.parameters(), tg[1:]):
        np.testing.assert_allclose(p.grad, b.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["tanh", "gru"])
def test_gradcheck_against_finite_differences_and_the_tape(mode):
    from handydl.check import gradcheck
    m, _ = make(mode, 3, 2, num_layers=2, bidirectional=True, dtype=np.float64, rng=6)
    x = np.random.default_rng(11).standard_normal((4, 2, 3))
    assert gradcheck(m, x, raise_exception=False).passed
    assert gradcheck(m, x, against="tape", raise_exception=False).passed


def test_input_grad_false_skips_the_input_gradient_but_not_the_parameters():
    rng = np.random.default_rng(12)
    m = nn.GRU(3, 4, num_layers=2, dtype=np.float64, rng=0)
    x = rng.standard_normal((5, 2, 3))
    y, h = m(x)
    gy = rng.standard_normal(y.shape)
    m.backward(gy)
    expected = [p.grad.copy() for p in m.parameters()]
    m.zero_grad()
    m(x)
    assert m.backward(gy, input_grad=False) is None
    for p, e in zip(m.parameters(), expected):
        np.testing.assert_allclose(p.grad, e, rtol=1e-12, atol=1e-14)


# -- dropout between layers --------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["tanh", "lstm", "gru"])
def test_dropout_in_train_mode_masks_the_lower_layers_output(mode):
    """With dropout p, layer 2 reads layer 1's output times a mask of zeros and 1/(1 - p):
    the output equals torch's two single layers with that mask between them; about a
    fraction p is dropped; the same rng seed gives the same mask; eval mode drops nothing."""
    rng = np.random.default_rng(13)
    p = 0.3
    m, t = make(mode, 3, 64, num_layers=2, dropout=p, dtype=np.float64, rng=7)
    x = rng.standard_normal((6, 8, 3))
    out = flat_outputs(mode, m(x))
    (_, mask), _ = m._peek_saved()[0]
    assert mask.shape == (6, 8, 64)
    dropped = np.mean(mask == 0)
    assert abs(dropped - p) < 0.05, dropped
    np.testing.assert_allclose(mask[mask != 0], 1 / (1 - p))
    cls = {"tanh": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[mode]
    lower, upper = cls(3, 64).double(), cls(64, 64).double()
    with torch.no_grad():
        for name, q in t.named_parameters():
            target = lower if name.endswith("l0") else upper
            getattr(target, name.replace("l1", "l0")).copy_(q)
        y1 = lower(torch.from_numpy(x))[0]
        ref = flat_outputs(mode, upper(y1 * torch.from_numpy(mask)))
    np.testing.assert_allclose(out[0], ref[0].numpy(), rtol=1e-10, atol=1e-12)
    for a, b in zip(out[1:], ref[1:]):           # the upper layer's final states
        np.testing.assert_allclose(a[1:], b.numpy(), rtol=1e-10, atol=1e-12)
    twin = copy.deepcopy(m)
    twin.clear_saved()
    np.testing.assert_array_equal(flat_outputs(mode, twin(x))[0], flat_outputs(mode, m(x))[0])
    m.eval()
    t.eval()
    for a, b in zip(flat_outputs(mode, m(x)), flat_outputs(mode, t(torch.from_numpy(x)))):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_dropout_backward_uses_the_forwards_mask():
    from handydl.check import gradcheck
    m = nn.RNN(3, 5, num_layers=3, dropout=0.4, dtype=np.float64, rng=8)
    x = np.random.default_rng(14).standard_normal((4, 2, 3))
    # gradcheck evaluates copies of m, whose generators draw the same mask every time
    assert gradcheck(m, x, raise_exception=False).passed


def test_dropout_with_one_layer_warns_as_torch():
    with pytest.warns(UserWarning, match="num_layers=1"):
        nn.LSTM(3, 4, dropout=0.5)


# -- construction, checkpoints, printing -----------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_default_init_is_torchs_uniform(mode):
    m, t = make(mode, 20, 50, num_layers=2, bidirectional=True, rng=9)
    bound = 1 / np.sqrt(50)
    for (name, p), (tname, tp) in zip(m.named_parameters(), t.named_parameters()):
        assert name == tname and p.shape == tuple(tp.shape) and p.dtype == np.float32
    values = np.concatenate([p.data.ravel() for p in m.parameters()])
    assert np.all(np.abs(values) <= bound)
    assert abs(values.std() - bound / np.sqrt(3)) < 0.02 * bound
    assert str(m) == str(t)


@pytest.mark.parametrize("mode", MODES + ["lstm-proj"])
def test_checkpoint_round_trip(mode, tmp_path):
    kw = {"proj_size": 2} if mode == "lstm-proj" else {}
    mode = mode.removesuffix("-proj")
    m, _ = make(mode, 3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=np.float64, rng=10, **kw)
    x = np.random.default_rng(15).standard_normal((2, 5, 3))
    path = checkpoint.save(m, tmp_path / "rnn.npz")
    loaded = checkpoint.load(path)
    assert type(loaded) is type(m) and str(loaded) == str(m)
    for a, b in zip(flat_outputs(mode, m(x)), flat_outputs(mode, loaded(x))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cell_checkpoint_round_trip(cls, tmp_path):
    m = getattr(nn, cls)(3, 4, dtype=np.float64, rng=0)
    loaded = checkpoint.load(checkpoint.save(m, tmp_path / "cell.npz"))
    x = np.random.default_rng(16).standard_normal((2, 3))
    np.testing.assert_array_equal(np.asarray(m(x)), np.asarray(loaded(x)))
    assert str(loaded) == str(getattr(torch.nn, cls)(3, 4))


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_bad_constructor_arguments_are_refused_naming_them(cls):
    C = getattr(nn, cls)
    for kw, error, text in [
        (dict(input_size=2.5, hidden_size=4), TypeError, "input_size=2.5"),
        (dict(input_size=3, hidden_size=True), TypeError, "hidden_size=True"),
        (dict(input_size=3, hidden_size=0), ValueError, "hidden_size=0"),
        (dict(input_size=3, hidden_size=4, num_layers=1.0), TypeError, "num_layers=1.0"),
        (dict(input_size=3, hidden_size=4, num_layers=2, dropout=1.5), ValueError, "dropout=1.5"),
        (dict(input_size=3, hidden_size=4, num_layers=2, dropout=-0.1), ValueError, "dropout=-0.1"),
        (dict(input_size=3, hidden_size=4, num_layers=2, dropout="0.5"), TypeError, "dropout='0.5'"),
        (dict(input_size=3, hidden_size=4, bidirectional="yes"), TypeError, "bidirectional='yes'"),
        (dict(input_size=3, hidden_size=4, dtype=np.int32), TypeError, "dtype"),
    ]:
        with pytest.raises(error, match=text.replace("(", r"\(").replace(".", r"\.")):
            C(**kw)
    if cls == "RNN":
        with pytest.raises(ValueError, match="nonlinearity='sigmoid'"):
            C(3, 4, nonlinearity="sigmoid")
    if cls == "LSTM":
        for bad, error in ((4, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
            with pytest.raises(error, match=rf"proj_size={bad!r}.*hidden_size 4"):
                C(3, 4, proj_size=bad)


@pytest.mark.parametrize("mode", MODES)
def test_bad_input_and_hx_are_refused_naming_the_sizes(mode):
    m, _ = make(mode, 3, 4, num_layers=2, bidirectional=True, dtype=np.float64, rng=11)
    x = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match="expected 3, got 7"):
        m(np.zeros((5, 2, 7)))
    with pytest.raises(ValueError, match=r"3 dims .* got shape \(5, 2, 3, 1\)"):
        m(np.zeros((5, 2, 3, 1)))
    with pytest.raises(ValueError, match="empty"):
        m(np.zeros((0, 2, 3)))
    bad = np.zeros((2, 2, 4))
    with pytest.raises(ValueError, match=r"shape \(4, 2, 4\).*got shape \(2, 2, 4\)"):
        m(x, (bad, np.zeros((4, 2, 4))) if mode == "lstm" else bad)
    with pytest.raises(ValueError, match=r"shape \(4, 4\).*got shape \(4, 2, 4\)"):
        m(np.zeros((5, 3)), (np.zeros((4, 2, 4)),) * 2 if mode == "lstm" else np.zeros((4, 2, 4)))
    if mode == "lstm":
        with pytest.raises(TypeError, match=r"tuple \(h_0, c_0\)"):
            m(x, np.zeros((4, 2, 4)))
    assert m.saved_count == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_refused_upstream_gradient_changes_nothing(mode):
    m, _ = make(mode, 3, 4, dtype=np.float64, rng=12)
    x = np.random.default_rng(17).standard_normal((5, 2, 3))
    outs = flat_outputs(mode, m(x))
    m.backward(*(np.ones_like(o) for o in outs))
    before = [p.grad.copy() for p in m.parameters()]
    m(x)
    with pytest.raises(ValueError, match=r"shape \(5, 2, 4\)"):
        m.backward(np.ones((5, 2, 5)))
    with pytest.raises(ValueError, match=r"shape \(1, 2, 4\)"):
        m.backward(np.ones(outs[0].shape), np.ones((2, 2, 4)))
    if mode != "lstm":
        with pytest.raises(ValueError, match="only the LSTM has c_n"):
            m.backward(np.ones(outs[0].shape), None, np.ones((1, 2, 4)))
    assert m.saved_count == 1
    for p, b in zip(m.parameters(), before):
        np.testing.assert_array_equal(p.grad, b)


def test_cells_refuse_bad_input():
    m = nn.LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"input_size 3.*got shape \(2, 5\)"):
        m(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"h of shape \(2, 4\).*got shape \(2, 3\)"):
        m(np.zeros((2, 3), np.float32), (np.zeros((2, 3)), np.zeros((2, 4))))
    with pytest.raises(TypeError, match="hidden_size=4.5"):
        nn.GRUCell(3, 4.5)
    with pytest.raises(ValueError, match="weight_ih must have shape"):
        ops.lstm_cell(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((12, 3)), np.zeros((16, 4)))


# -- extreme inputs, NaN ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_extreme_inputs_raise_no_floating_point_error(mode, dtype):
    rng = np.random.default_rng(18)
    m, _ = make(mode, 3, 4, num_layers=2, bidirectional=True, dtype=dtype, rng=13)
    for scale in (1e4, -1e4, 1e-30):
        x = (rng.standard_normal((6, 2, 3)) * scale).astype(dtype)
        with np.errstate(all="raise"):
            outs = flat_outputs(mode, m(x))
            grads = m.backward(*(np.ones_like(o) for o in outs))
        assert all(np.all(np.isfinite(o)) and o.dtype == dtype for o in outs)
        assert np.all(np.isfinite(grads)) and grads.dtype == dtype
        assert all(np.all(np.isfinite(p.grad)) for p in m.parameters())
        m.zero_grad()


@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates_forward_in_time_only(mode):
    m, _ = make(mode, 3, 4, dtype=np.float64, rng=14)
    x = np.random.default_rng(19).standard_normal((5, 2, 3))
    x[2, 0, 1] = np.nan
    with np.errstate(all="raise"):
        y = flat_outputs(mode, m(x))[0]
    assert np.all(np.isnan(y[2:, 0])) and not np.any(np.isnan(y[:2])) and not np.any(np.isnan(y[:, 1]))
