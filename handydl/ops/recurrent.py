r"""Recurrent ops: the cells of RNN, LSTM and GRU, and one layer of each over a
whole sequence (backpropagation through time), with PyTorch's equations, gate
order and weight layouts.

Notation (PyTorch's): input :math:`x_t` (N, I), hidden state :math:`h_t` (N, H),
``weight_ih`` :math:`W_{ih}` (k H, I), ``weight_hh`` :math:`W_{hh}` (k H, H),
``bias_ih`` :math:`b_{ih}`, ``bias_hh`` :math:`b_{hh}` (k H,), with k gates
stacked along the first axis (RNN 1; LSTM 4: i, f, g, o; GRU 3: r, z, n).

- RNN:  :math:`h_t = \phi(x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh})`,
  :math:`\phi` = tanh or ReLU.
- LSTM: :math:`a = x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh} = [a_i, a_f, a_g, a_o]`,
  :math:`i, f, o = \sigma(a_{i,f,o})`, :math:`g = \tanh(a_g)`,
  :math:`c_t = f \odot c_{t-1} + i \odot g`, :math:`h_t = o \odot \tanh(c_t)`.
- GRU:  :math:`a = x_t W_{ih}^\top + b_{ih}`, :math:`\hat a = h_{t-1} W_{hh}^\top + b_{hh}`,
  :math:`r, z = \sigma(a_{r,z} + \hat a_{r,z})`, :math:`n = \tanh(a_n + r \odot \hat a_n)`,
  :math:`h_t = (1 - z) \odot n + z \odot h_{t-1}`.

**Backpropagation through time.**  :math:`h_t` reaches the loss directly
(:math:`\partial L/\partial y_t`) and through :math:`h_{t+1}`, so its gradient
is the sum :math:`g_{h_t} = g_{y_t} + (\partial h_{t+1}/\partial h_t)^\top g_{h_{t+1}}`,
computed from the last step back (and the same for the LSTM's :math:`c_t`).
Each step turns :math:`g_{h_t}` into the gradient of its gates'
pre-activations :math:`g_{a_t}`; the weights are shared by every step, so their
gradients are sums over t: :math:`\partial L/\partial W_{hh} = \sum_t g_{a_t}^\top h_{t-1}`,
:math:`\partial L/\partial W_{ih} = \sum_t g_{a_t}^\top x_t`,
:math:`\partial L/\partial x_t = g_{a_t} W_{ih}`.

The layer ops (``rnn_tanh``, ``rnn_relu``, ``lstm``, ``gru``) are written for
speed as the derivation reads: the time loop is the only Python loop; the
input projection :math:`x_t W_{ih}^\top` of every step is one matrix product
before it, and :math:`\partial L/\partial W_{ih}`, :math:`\partial L/\partial W_{hh}`,
:math:`\partial L/\partial x` are one product each after the backward loop.
Every derivative is taken from the outputs (:math:`\sigma' = \sigma (1 - \sigma)`,
:math:`\tanh' = 1 - \tanh^2`), so nothing overflows; float32 stays float32.
"""
from __future__ import annotations

import numpy as np

from .registry import NORMAL, as_float, register

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_DOMAINS = (NORMAL, (-1000.0, -100.0), (100.0, 1000.0))
_MODES = (False, True)


# -- the gates' nonlinearities, in place on the pre-activations ----------------------------

def _sigmoid_(a):
    r"""a <- sigma(a) = (1 + tanh(a/2)) / 2, in place: one tanh, which cannot overflow."""
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


def _halve_sigmoid_columns(a):
    """a[..., i f o columns] *= 1/2 in place: the tanh(a/2) of sigma(a) = (1 + tanh(a/2)) / 2.
    Halving is exact in binary floating point (barring underflow to subnormals), so halving a
    sum's terms halves the sum exactly."""
    H = a.shape[-1] // 4
    a[..., :2 * H] *= 0.5
    a[..., 3 * H:] *= 0.5
    return a


def _lstm_gates_(a, halved=False):
    """a (N, 4H) = [a_i, a_f, a_g, a_o] <- [sigma(a_i), sigma(a_f), tanh(a_g), sigma(a_o)], in
    place, with one tanh over the whole array (sigma(a) = (1 + tanh(a/2)) / 2); ``halved``: the
    i, f, o columns hold a/2 already (the layer halves its weights once, not every step)."""
    H = a.shape[-1] // 4
    if not halved:
        _halve_sigmoid_columns(a)
    np.tanh(a, out=a)
    for s in (slice(0, 2 * H), slice(3 * H, 4 * H)):
        a[:, s] *= 0.5
        a[:, s] += 0.5
    return a


# -- one step forward and backward (shared by the cells and the layers) --------------------

def _rnn_step(a, relu, h_out):
    """h = phi(a), a (N, H) the pre-activation (x W_ih^T + b_ih + h W_hh^T + b_hh)."""
    return np.maximum(a, 0, out=h_out) if relu else np.tanh(a, out=h_out)


def _rnn_step_backward(h, gh, relu):
    r"""g_a = g_h phi'(a), from the output: tanh' = 1 - h^2; ReLU' = [h > 0] (0 at the kink, as PyTorch)."""
    return gh * (h > 0) if relu else gh * (1 - h * h)


def _lstm_step(a, c, c_out, tc_out, h_out, halved=False):
    """a (N, 4H) pre-activations -> gates in place; c_out = f c + i g, tc_out = tanh(c_out),
    h_out = o tc_out."""
    H = c.shape[-1]
    _lstm_gates_(a, halved)
    i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    np.multiply(f, c, out=c_out)
    c_out += i * g
    np.tanh(c_out, out=tc_out)
    np.multiply(o, tc_out, out=h_out)


def _lstm_step_backward(gates, c_prev, tc, gh, gc, ga_out):
    r"""One LSTM step backward: writes g_a (N, 4H) and returns g_{c_{t-1}}.

    g_c = g_c^{(t+1)} + g_h o (1 - tanh^2 c);  g_i = g_c g, g_f = g_c c_{t-1}, g_g = g_c i,
    g_o = g_h tanh c;  g_{c_{t-1}} = g_c f;  then each gate through its nonlinearity.
    """
    H = tc.shape[-1]
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    gc = gc + gh * o * (1 - tc * tc)
    np.multiply(gc * g, i * (1 - i), out=ga_out[:, :H])
    np.multiply(gc * c_prev, f * (1 - f), out=ga_out[:, H:2 * H])
    np.multiply(gc * i, 1 - g * g, out=ga_out[:, 2 * H:3 * H])
    np.multiply(gh * tc, o * (1 - o), out=ga_out[:, 3 * H:])
    return gc * f


def _gru_step(a, ah, h, gates_out, h_out):
    """a = x W_ih^T + b_ih, ah = h W_hh^T + b_hh (N, 3H); gates_out <- [r, z, n];
    h_out = n + z (h - n) = (1 - z) n + z h."""
    H = h.shape[-1]
    rz = gates_out[:, :2 * H]
    np.add(a[:, :2 * H], ah[:, :2 * H], out=rz)
    _sigmoid_(rz)
    n = gates_out[:, 2 * H:]
    np.multiply(rz[:, :H], ah[:, 2 * H:], out=n)
    n += a[:, 2 * H:]
    np.tanh(n, out=n)
    np.subtract(h, n, out=h_out)
    h_out *= rz[:, H:]
    h_out += n


def _gru_step_backward(gates, hn, h_prev, gh, ga_out, gah_out):
    r"""One GRU step backward: writes g_a, g_{\hat a} (N, 3H), returns the direct part z g_h of
    g_{h_{t-1}} (the part through \hat a is g_{\hat a} W_hh, added by the caller).

    g_z = g_h (h_{t-1} - n), g_n = g_h (1 - z);  g_{a_n} = g_n (1 - n^2),
    g_{\hat a_n} = g_{a_n} r, g_r = g_{a_n} \hat a_n;  r and z through sigma' = sigma (1 - sigma).
    """
    H = h_prev.shape[-1]
    r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    gan = ga_out[:, 2 * H:]
    np.multiply(gh * (1 - z), 1 - n * n, out=gan)
    np.multiply(gan * hn, r * (1 - r), out=ga_out[:, :H])
    np.multiply(gh * (h_prev - n), z * (1 - z), out=ga_out[:, H:2 * H])
    gah_out[:, :2 * H] = ga_out[:, :2 * H]
    np.multiply(gan, r, out=gah_out[:, 2 * H:])
    return gh * z


# -- checks ---------------------------------------------------------------------------------

def _check(name, x, states, W_ih, W_hh, b_ih, b_hh, seq, W_hr=None):
    """Shapes of a cell's (seq=False) or a layer's (seq=True) inputs; ValueError naming them.
    ``W_hr`` (P, H): the LSTM's projection, h of size P (weight_hh (4H, P)), c of size H."""
    k = GATES[name.removesuffix("_cell")]
    if W_hr is not None:
        if W_hr.ndim != 2 or W_hh.shape != (k * W_hr.shape[1], W_hr.shape[0]):
            raise ValueError(f"{name}: with weight_hr of shape (proj_size, hidden_size) = {W_hr.shape}, "
                             f"weight_hh must have shape ({k} * hidden_size, proj_size), got shape {W_hh.shape}")
    elif W_hh.ndim != 2 or W_hh.shape[0] != k * W_hh.shape[1]:
        raise ValueError(f"{name}: weight_hh must have shape ({k} * hidden_size, hidden_size), "
                         f"got shape {W_hh.shape}")
    H = W_hh.shape[0] // k
    if W_ih.ndim != 2 or W_ih.shape[0] != k * H:
        raise ValueError(f"{name}: weight_ih must have shape ({k * H}, input_size) ({k} * hidden_size "
                         f"{H}), got shape {W_ih.shape}")
    I = W_ih.shape[1]
    if x.ndim != (3 if seq else 2) or x.shape[-1] != I:
        want = "(T, N, input_size)" if seq else "(N, input_size)"
        raise ValueError(f"{name}: expected input of shape {want} with input_size {I} (weight_ih "
                         f"{W_ih.shape}), got shape {x.shape}")
    N = x.shape[1] if seq else x.shape[0]
    P = W_hh.shape[1]                                   # the size of h: H, or proj_size
    for what, s, n in zip(("h", "c"), states, (P, H)):
        if s.shape != (N, n):
            size = "proj_size" if what == "h" and W_hr is not None else "hidden_size"
            raise ValueError(f"{name}: expected {what} of shape ({N}, {n}) (batch, {size}), "
                             f"got shape {s.shape}")
    for what, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        if b is not None and b.shape != (k * H,):
            raise ValueError(f"{name}: expected {what} of shape ({k * H},), got shape {b.shape}")


def _floats(*arrays):
    return [None if a is None else as_float(a) for a in arrays]


def _bias_sum(*bs):
    bs = [b for b in bs if b is not None]
    return sum(bs[1:], bs[0]) if bs else None


# -- the cells --------------------------------------------------------------------------------

def _weights(rng, lo, hi, shape):
    """Weights for a sample: U(-0.6, 0.6); on an extreme domain (one sign, |x| >= 100) positive, so
    that every gate saturates instead of landing, by cancellation, where float32 rounding of a
    sum of large terms decides the value (ill-conditioned for any implementation)."""
    extreme = min(abs(lo), abs(hi)) >= 100 and lo * hi > 0
    return rng.uniform(0.05, 0.5, shape) if extreme else rng.uniform(-0.6, 0.6, shape)


def _cell_sample(name):
    k = GATES[name]

    def sample(rng, dtype, lo, hi):
        N, I, H = 3, 4, 3
        states = [rng.uniform(lo, hi, (N, H)) for _ in range(2 if name == "lstm" else 1)]
        arrays = [rng.uniform(lo, hi, (N, I)), *states, *(_weights(rng, lo, hi, s) for s in
                                                          ((k * H, I), (k * H, H), k * H, k * H))]
        return tuple(a.astype(dtype) for a in arrays)
    return sample


_CELL_SETUP = (r"x: (N, I),\ h: (N, H),\ W_{ih}: (kH, I),\ W_{hh}: (kH, H),\ b_{ih}, b_{hh}: (kH,)"
               r"\ \text{(PyTorch's layouts)}")


def _rnn_cell(name, relu):
    phi = r"\mathrm{ReLU}" if relu else r"\tanh"
    dphi = r"[h' > 0]" if relu else r"(1 - h'^2)"

    @register(
        name, kind="recurrent",
        formula=rf"h' = {phi}(x W_{{ih}}^\top + b_{{ih}} + h W_{{hh}}^\top + b_{{hh}}),\quad " + _CELL_SETUP,
        derivative=(rf"g_a = g_{{h'}} \odot {dphi},\quad g_x = g_a W_{{ih}},\ g_h = g_a W_{{hh}},\ "
                    r"\frac{\partial L}{\partial W_{ih}} = g_a^\top x,\ \frac{\partial L}{\partial W_{hh}} "
                    r"= g_a^\top h,\ \frac{\partial L}{\partial b_{ih}} = \frac{\partial L}{\partial b_{hh}} "
                    r"= \textstyle\sum_n g_{a,n}"),
        convention="ReLU'(0) = 0, as PyTorch" if relu else "differentiable everywhere",
        inputs=("x", "h", "weight_ih", "weight_hh", "bias_ih", "bias_hh"),
        sample=_cell_sample(name.removesuffix("_cell")), domains=_DOMAINS,
        reference=lambda torch, *a: getattr(torch, name)(*a),
    )
    def cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
        x, h, W_ih, W_hh, b_ih, b_hh = _floats(x, h, weight_ih, weight_hh, bias_ih, bias_hh)
        _check(name, x, (h,), W_ih, W_hh, b_ih, b_hh, seq=False)
        a = x @ W_ih.T + h @ W_hh.T
        b = _bias_sum(b_ih, b_hh)
        if b is not None:
            a += b
        y = _rnn_step(a, relu, a)
        return y, (x, h, W_ih, W_hh, b_ih is not None, b_hh is not None, y)

    @cell.set_backward
    def _cell_backward(saved, gy, needs=(True,) * 6):
        x, h, W_ih, W_hh, has_bih, has_bhh, y = saved
        ga = _rnn_step_backward(y, gy, relu)
        return _cell_grads(ga, ga, x, h, W_ih, W_hh, has_bih, has_bhh, needs)

    cell.__doc__ = cell.fn.__doc__ = (
        f"One step of an Elman RNN with {'ReLU' if relu else 'tanh'}, as torch.{name}:\n"
        f"    h' = {'relu' if relu else 'tanh'}(x W_ih^T + b_ih + h W_hh^T + b_hh)\n\n"
        "    x (N, I), h (N, H), weight_ih (H, I), weight_hh (H, H), bias_ih, bias_hh (H,) or None;\n"
        "    returns h' (N, H).  saved: (x, h, W_ih, W_hh, has biases, h') (backward uses h').")
    return cell


def _cell_grads(ga, gah, x, h, W_ih, W_hh, has_bih, has_bhh, needs):
    """The six gradients of a cell from the pre-activations' gradients g_a (input side) and
    g_ah (hidden side; the same array except for the GRU): (gx, gh, gW_ih, gW_hh, gb_ih, gb_hh)."""
    return (ga @ W_ih if needs[0] else None, gah @ W_hh if needs[1] else None,
            ga.T @ x if needs[2] else None, gah.T @ h if needs[3] else None,
            ga.sum(axis=0) if has_bih and needs[4] else None,
            gah.sum(axis=0) if has_bhh and needs[5] else None)


rnn_tanh_cell = _rnn_cell("rnn_tanh_cell", relu=False)
rnn_relu_cell = _rnn_cell("rnn_relu_cell", relu=True)


@register(
    "lstm_cell", kind="recurrent",
    formula=(r"[a_i, a_f, a_g, a_o] = x W_{ih}^\top + b_{ih} + h W_{hh}^\top + b_{hh},\ "
             r"i, f, o = \sigma(a_{i,f,o}),\ g = \tanh a_g,\ c' = f \odot c + i \odot g,\ "
             r"h' = o \odot \tanh c'"),
    derivative=(r"g_{c'} \mathrel{+}= g_{h'} \odot o \odot (1 - \tanh^2 c'),\ "
                r"g_{a_i} = g_{c'} g\, i(1-i),\ g_{a_f} = g_{c'} c\, f(1-f),\ g_{a_g} = g_{c'} i\,(1-g^2),\ "
                r"g_{a_o} = g_{h'} \tanh c'\, o(1-o),\ g_c = g_{c'} \odot f,\ g_x = g_a W_{ih},\ "
                r"g_h = g_a W_{hh},\ \frac{\partial L}{\partial W_{ih}} = g_a^\top x,\ "
                r"\frac{\partial L}{\partial W_{hh}} = g_a^\top h"),
    inputs=("x", "h", "c", "weight_ih", "weight_hh", "bias_ih", "bias_hh"), outputs=("h", "c"),
    sample=_cell_sample("lstm"), domains=_DOMAINS,
    reference=lambda torch, x, h, c, *w: torch.lstm_cell(x, (h, c), *w),
)
def lstm_cell(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One LSTM step, as torch.lstm_cell (gate order i, f, g, o):

        a = x W_ih^T + b_ih + h W_hh^T + b_hh = [a_i, a_f, a_g, a_o]
        i, f, o = sigmoid(a_i, a_f, a_o),  g = tanh(a_g)
        c' = f c + i g,  h' = o tanh(c')

    x (N, I), h and c (N, H), weight_ih (4H, I), weight_hh (4H, H), biases (4H,) or None;
    returns (h', c').  saved: (x, h, c, W_ih, W_hh, has biases, gates (N, 4H), tanh c')."""
    x, h, c, W_ih, W_hh, b_ih, b_hh = _floats(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh)
    _check("lstm_cell", x, (h, c), W_ih, W_hh, b_ih, b_hh, seq=False)
    a = x @ W_ih.T + h @ W_hh.T
    b = _bias_sum(b_ih, b_hh)
    if b is not None:
        a += b
    c_new, tc, h_new = (np.empty(h.shape, np.result_type(a, c)) for _ in range(3))
    _lstm_step(a, c, c_new, tc, h_new)
    return (h_new, c_new), (x, h, c, W_ih, W_hh, b_ih is not None, b_hh is not None, a, tc)


@lstm_cell.set_backward
def _lstm_cell_backward(saved, gh, gc, needs=(True,) * 7):
    x, h, c, W_ih, W_hh, has_bih, has_bhh, gates, tc = saved
    gh = np.zeros_like(tc) if gh is None else gh
    gc = np.zeros_like(tc) if gc is None else gc
    ga = np.empty_like(gates)
    gc_prev = _lstm_step_backward(gates, c, tc, gh, gc, ga)
    gx, gh_prev, gW_ih, gW_hh, gb_ih, gb_hh = _cell_grads(ga, ga, x, h, W_ih, W_hh, has_bih, has_bhh,
                                                          needs[:2] + needs[3:])
    return gx, gh_prev, gc_prev if needs[2] else None, gW_ih, gW_hh, gb_ih, gb_hh


@register(
    "gru_cell", kind="recurrent",
    formula=(r"[a_r, a_z, a_n] = x W_{ih}^\top + b_{ih},\ [\hat a_r, \hat a_z, \hat a_n] = h W_{hh}^\top + b_{hh},\ "
             r"r, z = \sigma(a_{r,z} + \hat a_{r,z}),\ n = \tanh(a_n + r \odot \hat a_n),\ "
             r"h' = (1 - z) \odot n + z \odot h"),
    derivative=(r"g_z = g_{h'} (h - n),\ g_n = g_{h'} (1 - z),\ g_{a_n} = g_n (1 - n^2),\ "
                r"g_{\hat a_n} = g_{a_n} r,\ g_r = g_{a_n} \hat a_n,\ g_{a_{r,z}} = g_{\hat a_{r,z}} = "
                r"g_{r,z}\, \sigma'(\cdot),\ g_x = g_a W_{ih},\ g_h = z\, g_{h'} + g_{\hat a} W_{hh},\ "
                r"\frac{\partial L}{\partial W_{ih}} = g_a^\top x,\ \frac{\partial L}{\partial W_{hh}} = "
                r"g_{\hat a}^\top h"),
    inputs=("x", "h", "weight_ih", "weight_hh", "bias_ih", "bias_hh"),
    sample=_cell_sample("gru"), domains=_DOMAINS,
    reference=lambda torch, *a: torch.gru_cell(*a),
)
def gru_cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One GRU step, as torch.gru_cell (gate order r, z, n):

        [a_r, a_z, a_n] = x W_ih^T + b_ih,   [ah_r, ah_z, ah_n] = h W_hh^T + b_hh
        r = sigmoid(a_r + ah_r),  z = sigmoid(a_z + ah_z),  n = tanh(a_n + r ah_n)
        h' = (1 - z) n + z h

    x (N, I), h (N, H), weight_ih (3H, I), weight_hh (3H, H), biases (3H,) or None; returns h'.
    saved: (x, h, W_ih, W_hh, has biases, gates [r, z, n] (N, 3H), ah_n (N, H))."""
    x, h, W_ih, W_hh, b_ih, b_hh = _floats(x, h, weight_ih, weight_hh, bias_ih, bias_hh)
    _check("gru_cell", x, (h,), W_ih, W_hh, b_ih, b_hh, seq=False)
    a, ah = x @ W_ih.T, h @ W_hh.T
    if b_ih is not None:
        a += b_ih
    if b_hh is not None:
        ah += b_hh
    dtype = np.result_type(a, ah)
    gates, h_new = np.empty(a.shape, dtype), np.empty(h.shape, dtype)
    _gru_step(a, ah, h, gates, h_new)
    H = h.shape[-1]
    return h_new, (x, h, W_ih, W_hh, b_ih is not None, b_hh is not None, gates, ah[:, 2 * H:])


@gru_cell.set_backward
def _gru_cell_backward(saved, gh, needs=(True,) * 6):
    x, h, W_ih, W_hh, has_bih, has_bhh, gates, hn = saved
    ga, gah = np.empty_like(gates), np.empty_like(gates)
    direct = _gru_step_backward(gates, hn, h, gh, ga, gah)
    gx, gh_prev, gW_ih, gW_hh, gb_ih, gb_hh = _cell_grads(ga, gah, x, h, W_ih, W_hh, has_bih, has_bhh, needs)
    return gx, (direct + gh_prev) if needs[1] else None, gW_ih, gW_hh, gb_ih, gb_hh


# -- one layer over a whole sequence: backpropagation through time ---------------------------

def _layer_sample(name):
    k = GATES[name]

    def sample(rng, dtype, lo, hi):
        # T = N: the sample is drawn before the parameters are known, and batch_first swaps them
        T, N, I, H = 3, 3, 2, 3
        states = [rng.uniform(lo, hi, (N, H)) for _ in range(2 if name == "lstm" else 1)]
        arrays = [rng.uniform(lo, hi, (T, N, I)), *states, *(_weights(rng, lo, hi, s) for s in
                                                             ((k * H, I), (k * H, H), k * H, k * H))]
        return tuple(a.astype(dtype) for a in arrays)
    return sample


def _torch_scan(name):
    """The PyTorch reference of a layer op: torch's own cell applied step by step (tests only)."""
    def reference(torch, x, *rest, reverse, batch_first):
        n_states = 2 if name == "lstm" else 1
        states, w = list(rest[:n_states]), rest[n_states:]
        cell = getattr(torch, f"{name}_cell")
        X = x.transpose(0, 1) if batch_first else x
        ys = [None] * X.shape[0]
        w, W_hr = (w[:4], w[4]) if len(w) > 4 else (w, None)      # the LSTM's projection, if given
        for t in (reversed(range(X.shape[0])) if reverse else range(X.shape[0])):
            out = cell(X[t], tuple(states), *w) if n_states == 2 else cell(X[t], states[0], *w)
            states = list(out) if n_states == 2 else [out]
            if W_hr is not None:
                states[0] = states[0] @ W_hr.T
            ys[t] = states[0]
        y = torch.stack(ys)
        return (y.transpose(0, 1) if batch_first else y, *states)
    return reference


def _time_major(x, reverse, batch_first):
    """x (T, N, ...) or (N, T, ...) as (T, N, ...) in processing order (a view)."""
    X = x.swapaxes(0, 1) if batch_first else x
    return X[::-1] if reverse else X


def _from_time_major(Z, reverse, batch_first):
    """The inverse of _time_major: Z (T, N, ...) in processing order back in the input's layout."""
    Z = Z[::-1] if reverse else Z
    return Z.swapaxes(0, 1) if batch_first else Z


def _transposed(W):
    """W^T as a C-contiguous copy, made once per sequence: OpenBLAS multiplies the small (N, H)
    state by it markedly faster than by the transposed view (measured: 1.3 to 1.8 times, one
    thread, N = 32, H = 256), and the loop does it T times."""
    return np.ascontiguousarray(W.T)


def _project(X, W, b):
    """A = X W^T + b for every step at once: ONE matrix product, (T, N, I) -> (T, N, kH)."""
    # as a 2-D product: NumPy's stacked matmul with a transposed operand skips BLAS (40x slower)
    A = (X.reshape(-1, X.shape[-1]) @ W.T).reshape(X.shape[:-1] + (W.shape[0],))
    if b is not None:
        A += b
    return A


def _input_grads(GA, X, W_ih, need_x, need_w, reverse, batch_first):
    """dL/dx = G_a W_ih (one product), back in the input's layout; dL/dW_ih = sum_t G_a,t^T x_t
    (one product over all steps and samples); dL/db_ih = sum over steps and samples."""
    kH = GA.shape[-1]
    G2 = GA.reshape(-1, kH)
    gx = None
    if need_x:
        gx = (G2 @ W_ih).reshape(GA.shape[:-1] + (W_ih.shape[1],))
        gx = np.ascontiguousarray(_from_time_major(gx, reverse, batch_first))
    gW = G2.T @ X.reshape(-1, X.shape[-1]) if need_w else None
    return gx, gW, G2.sum(axis=0)


def _hidden_grad(GAH, S):
    """dL/dW_hh = sum_t G_ah,t^T h_{t-1}: one product; S holds h_0 .. h_{T-1} (processing order)."""
    return GAH.reshape(-1, GAH.shape[-1]).T @ S.reshape(-1, S.shape[-1])


def _output(S, reverse, batch_first):
    """The outputs h_1 .. h_T, in time order and the input's layout (a fresh array)."""
    return np.ascontiguousarray(_from_time_major(S[1:], reverse, batch_first))


_LAYER_PARAMS = {"reverse": False, "batch_first": False}
_LAYER_CHOICES = {"reverse": _MODES, "batch_first": _MODES}
_LAYER_TESTS = ({"reverse": True}, {"batch_first": True}, {"reverse": True, "batch_first": True})
_LAYER_NOTE = (r"\ x: (T, N, I)\ ((N, T, I)\ \text{with batch\_first}),\ \text{reverse: steps } T \dots 1"
               r"\ \text{(a bidirectional layer's second direction)}")


def _rnn_layer(name, relu):
    phi = r"\mathrm{ReLU}" if relu else r"\tanh"

    @register(
        name, kind="recurrent",
        formula=(rf"h_t = {phi}(x_t W_{{ih}}^\top + b_{{ih}} + h_{{t-1}} W_{{hh}}^\top + b_{{hh}}),\ "
                 r"t = 1 \dots T;\ \text{outputs } (y = [h_1 \dots h_T],\ h_T)" + _LAYER_NOTE),
        derivative=(r"g_{h_t} = g_{y_t} + g_{a_{t+1}} W_{hh},\ g_{a_t} = g_{h_t} \odot "
                    + (r"[h_t > 0]" if relu else r"(1 - h_t^2)")
                    + r",\ \frac{\partial L}{\partial W_{hh}} = \sum_t g_{a_t}^\top h_{t-1},\ "
                    r"\frac{\partial L}{\partial W_{ih}} = \sum_t g_{a_t}^\top x_t,\ g_{x_t} = g_{a_t} W_{ih},\ "
                    r"g_{h_0} = g_{a_1} W_{hh}"),
        convention="ReLU'(0) = 0, as PyTorch" if relu else "differentiable everywhere",
        inputs=("x", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"), outputs=("y", "h_n"),
        params=dict(_LAYER_PARAMS), choices=_LAYER_CHOICES, test_params=_LAYER_TESTS,
        sample=_layer_sample(name), domains=_DOMAINS, reference=_torch_scan(name),
    )
    def layer(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=False, batch_first=False):
        x, h0, W_ih, W_hh, b_ih, b_hh = _floats(x, h0, weight_ih, weight_hh, bias_ih, bias_hh)
        X = _time_major(x, reverse, batch_first)
        _check(name, X, (h0,), W_ih, W_hh, b_ih, b_hh, seq=True)
        A = _project(X, W_ih, _bias_sum(b_ih, b_hh))          # every step's input at once
        S = np.empty((A.shape[0] + 1,) + h0.shape, A.dtype)   # h_0 .. h_T
        S[0] = h0
        W_hhT = _transposed(W_hh)
        for t in range(A.shape[0]):                            # the time loop, the only loop
            a = S[t] @ W_hhT
            a += A[t]
            _rnn_step(a, relu, S[t + 1])
        y = _output(S, reverse, batch_first)
        return (y, S[-1].copy()), (X, W_ih, W_hh, b_ih is not None, b_hh is not None, S, reverse, batch_first)

    @layer.set_backward
    def _layer_backward(saved, gy, gh_n, needs=(True,) * 6):
        X, W_ih, W_hh, has_bih, has_bhh, S, reverse, batch_first = saved
        GY = None if gy is None else _time_major(gy, reverse, batch_first)
        GA = np.empty((S.shape[0] - 1,) + S.shape[1:], S.dtype)
        gh = np.zeros_like(S[0]) if gh_n is None else np.array(gh_n, dtype=S.dtype)
        for t in range(GA.shape[0] - 1, -1, -1):
            if GY is not None:
                gh = gh + GY[t]              # h_t reaches L directly and through h_{t+1}
            GA[t] = _rnn_step_backward(S[t + 1], gh, relu)
            gh = GA[t] @ W_hh
        gx, gW_ih, gb = _input_grads(GA, X, W_ih, needs[0], needs[2], reverse, batch_first)
        return (gx, gh if needs[1] else None, gW_ih, _hidden_grad(GA, S[:-1]) if needs[3] else None,
                gb if has_bih and needs[4] else None, gb.copy() if has_bhh and needs[5] else None)

    layer.__doc__ = layer.fn.__doc__ = (
        f"One {'ReLU' if relu else 'tanh'} RNN layer over a sequence (one direction), as one layer of "
        f"torch.nn.RNN(nonlinearity={'relu' if relu else 'tanh'!r}):\n"
        f"    h_t = {'relu' if relu else 'tanh'}(x_t W_ih^T + b_ih + h_(t-1) W_hh^T + b_hh), t = 1..T\n\n"
        "    x (T, N, I) ((N, T, I) with batch_first), h0 (N, H), weight_ih (H, I), weight_hh (H, H),\n"
        "    biases (H,) or None; reverse=True runs t = T..1.  Returns (y, h_n): y (T, N, H) (or\n"
        "    (N, T, H)) the state after every step, h_n (N, H) the last.  saved: (x time-major in\n"
        "    processing order, W_ih, W_hh, has biases, S = h_0 .. h_T, reverse, batch_first).")
    return layer


rnn_tanh = _rnn_layer("rnn_tanh", relu=False)
rnn_relu = _rnn_layer("rnn_relu", relu=True)


@register(
    "lstm", kind="recurrent",
    formula=(r"a_t = x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh},\ c_t = f_t \odot c_{t-1} + "
             r"i_t \odot g_t,\ h_t = o_t \odot \tanh c_t\ (\text{the cell at every step});\ "
             r"\text{outputs } (y = [h_1 \dots h_T], h_T, c_T)" + _LAYER_NOTE),
    derivative=(r"g_{h_t} = g_{y_t} + g_{a_{t+1}} W_{hh},\ g_{c_t} = f_{t+1} \odot g_{c_{t+1}} + g_{h_t} "
                r"\odot o_t \odot (1 - \tanh^2 c_t),\ g_{a_t} \text{ as the cell's},\ "
                r"\frac{\partial L}{\partial W_{hh}} = \sum_t g_{a_t}^\top h_{t-1},\ "
                r"\frac{\partial L}{\partial W_{ih}} = \sum_t g_{a_t}^\top x_t,\ g_{x_t} = g_{a_t} W_{ih}"),
    inputs=("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"),
    outputs=("y", "h_n", "c_n"),
    params=dict(_LAYER_PARAMS), choices=_LAYER_CHOICES, test_params=_LAYER_TESTS,
    sample=_layer_sample("lstm"), domains=_DOMAINS, reference=_torch_scan("lstm"),
)
def lstm(x, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None, reverse=False,
         batch_first=False):
    """One LSTM layer over a sequence (one direction), as one layer of torch.nn.LSTM: the cell
    (:func:`lstm_cell`, gates i, f, g, o) at t = 1..T (T..1 with reverse=True).

    x (T, N, I) ((N, T, I) with batch_first), h0 and c0 (N, H), weight_ih (4H, I), weight_hh
    (4H, H), biases (4H,) or None.  Returns (y, h_n, c_n): y (T, N, H) (or (N, T, H)).
    ``weight_hr`` (P, H), torch.nn.LSTM's proj_size: h_t = (o_t tanh c_t) W_hr^T of size P
    (h0 (N, P), weight_hh (4H, P), y (T, N, P)).
    saved: (x time-major in processing order, W_ih, W_hh, has biases, S = h_0 .. h_T,
    C = c_0 .. c_T, the gates (T, N, 4H), tanh c_1 .. tanh c_T, reverse, batch_first, W_hr,
    M = o_t tanh c_t before the projection (or None))."""
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr = _floats(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                                                      weight_hr)
    X = _time_major(x, reverse, batch_first)
    _check("lstm", X, (h0, c0), W_ih, W_hh, b_ih, b_hh, seq=True, W_hr=W_hr)
    A = _project(X, W_ih, _bias_sum(b_ih, b_hh))      # every step's input at once; becomes the gates
    T = A.shape[0]
    S = np.empty((T + 1,) + h0.shape, A.dtype)        # h_0 .. h_T
    C = np.empty((T + 1,) + c0.shape, A.dtype)        # c_0 .. c_T
    TC = np.empty_like(C[1:])                         # tanh c_1 .. tanh c_T
    M = None if W_hr is None else np.empty_like(TC)   # o_t tanh c_t, before the projection
    W_hrT = None if W_hr is None else _transposed(W_hr)
    S[0], C[0] = h0, c0
    # sigma(a) = (1 + tanh(a/2)) / 2: halve the i, f, o columns of A and W_hh^T once (exactly)
    _halve_sigmoid_columns(A)
    W_hhT = _halve_sigmoid_columns(_transposed(W_hh))
    for t in range(T):                                # the time loop, the only loop
        a = A[t]
        a += S[t] @ W_hhT
        _lstm_step(a, C[t], C[t + 1], TC[t], S[t + 1] if M is None else M[t], halved=True)
        if M is not None:
            np.matmul(M[t], W_hrT, out=S[t + 1])     # h_t = m_t W_hr^T
    y = _output(S, reverse, batch_first)
    return ((y, S[-1].copy(), C[-1].copy()),
            (X, W_ih, W_hh, b_ih is not None, b_hh is not None, S, C, A, TC, reverse, batch_first, W_hr, M))


@lstm.set_backward
def _lstm_backward(saved, gy, gh_n, gc_n, needs=(True,) * 8):
    X, W_ih, W_hh, has_bih, has_bhh, S, C, gates, TC, reverse, batch_first, W_hr, M = saved
    GY = None if gy is None else _time_major(gy, reverse, batch_first)
    GA = np.empty_like(gates)
    gh = np.zeros_like(S[0]) if gh_n is None else np.array(gh_n, dtype=S.dtype)
    gc = np.zeros_like(C[0]) if gc_n is None else np.array(gc_n, dtype=S.dtype)
    GH = None if M is None else np.empty_like(S[1:])    # g_{h_t}, for dL/dW_hr = sum_t g_{h_t}^T m_t
    # _lstm_step_backward with what does not depend on the gradient taken out of the loop and
    # computed for all steps at once: the gates' derivatives D and o (1 - tanh^2 c)
    H = C.shape[-1]
    D = gates * (1 - gates)                  # sigma' = sigma (1 - sigma) for i, f, o
    D[..., 2 * H:3 * H] = 1 - gates[..., 2 * H:3 * H] ** 2         # tanh' for g
    K = gates[..., 3 * H:] * (1 - TC * TC)   # dh_t/dc_t = o_t (1 - tanh^2 c_t)
    for t in range(GA.shape[0] - 1, -1, -1):
        if GY is not None:
            gh = gh + GY[t]                  # h_t reaches L directly and through h_{t+1}
        if M is not None:                    # h_t = m_t W_hr^T: the gradient of m_t is g_h W_hr
            GH[t] = gh
            gh = gh @ W_hr
        gc = gc + gh * K[t]                  # and c_t through c_{t+1} and through h_t
        i, f, g = gates[t, :, :H], gates[t, :, H:2 * H], gates[t, :, 2 * H:3 * H]
        ga = GA[t]
        np.multiply(gc, g, out=ga[:, :H])                # g_i = g_c g
        np.multiply(gc, C[t], out=ga[:, H:2 * H])        # g_f = g_c c_{t-1}
        np.multiply(gc, i, out=ga[:, 2 * H:3 * H])       # g_g = g_c i
        np.multiply(gh, TC[t], out=ga[:, 3 * H:])        # g_o = g_h tanh c_t
        ga *= D[t]                                       # through each gate's nonlinearity
        gc = gc * f                                      # g_{c_{t-1}} = g_c f
        gh = ga @ W_hh
    gx, gW_ih, gb = _input_grads(GA, X, W_ih, needs[0], needs[3], reverse, batch_first)
    gW_hr = _hidden_grad(GH, M) if M is not None and needs[7] else None
    return (gx, gh if needs[1] else None, gc if needs[2] else None, gW_ih,
            _hidden_grad(GA, S[:-1]) if needs[4] else None,
            gb if has_bih and needs[5] else None, gb.copy() if has_bhh and needs[6] else None, gW_hr)


@register(
    "gru", kind="recurrent",
    formula=(r"r_t, z_t = \sigma(a_{t,rz} + \hat a_{t,rz}),\ n_t = \tanh(a_{t,n} + r_t \odot \hat a_{t,n}),\ "
             r"h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1},\ a_t = x_t W_{ih}^\top + b_{ih},\ "
             r"\hat a_t = h_{t-1} W_{hh}^\top + b_{hh};\ \text{outputs } (y = [h_1 \dots h_T], h_T)" + _LAYER_NOTE),
    derivative=(r"g_{h_t} = g_{y_t} + z_{t+1} \odot g_{h_{t+1}} + g_{\hat a_{t+1}} W_{hh},\ "
                r"g_{a_t}, g_{\hat a_t} \text{ as the cell's},\ "
                r"\frac{\partial L}{\partial W_{hh}} = \sum_t g_{\hat a_t}^\top h_{t-1},\ "
                r"\frac{\partial L}{\partial W_{ih}} = \sum_t g_{a_t}^\top x_t,\ g_{x_t} = g_{a_t} W_{ih}"),
    inputs=("x", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"), outputs=("y", "h_n"),
    params=dict(_LAYER_PARAMS), choices=_LAYER_CHOICES, test_params=_LAYER_TESTS,
    sample=_layer_sample("gru"), domains=_DOMAINS, reference=_torch_scan("gru"),
)
def gru(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=False, batch_first=False):
    """One GRU layer over a sequence (one direction), as one layer of torch.nn.GRU: the cell
    (:func:`gru_cell`, gates r, z, n) at t = 1..T (T..1 with reverse=True).

    x (T, N, I) ((N, T, I) with batch_first), h0 (N, H), weight_ih (3H, I), weight_hh (3H, H),
    biases (3H,) or None.  Returns (y, h_n).  saved: (x time-major in processing order, W_ih,
    W_hh, has biases, S = h_0 .. h_T, the gates [r, z, n] (T, N, 3H), ah_n (T, N, H), reverse,
    batch_first)."""
    x, h0, W_ih, W_hh, b_ih, b_hh = _floats(x, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    X = _time_major(x, reverse, batch_first)
    _check("gru", X, (h0,), W_ih, W_hh, b_ih, b_hh, seq=True)
    A = _project(X, W_ih, b_ih)                       # every step's input at once
    T, H = A.shape[0], h0.shape[-1]
    S = np.empty((T + 1,) + h0.shape, A.dtype)        # h_0 .. h_T
    gates = np.empty_like(A)
    HN = np.empty_like(S[1:])                         # ah_n = (h W_hh^T + b_hh)_n at every step
    S[0] = h0
    W_hhT = _transposed(W_hh)
    for t in range(T):                                # the time loop, the only loop
        ah = S[t] @ W_hhT
        if b_hh is not None:
            ah += b_hh
        HN[t] = ah[:, 2 * H:]
        _gru_step(A[t], ah, S[t], gates[t], S[t + 1])
    y = _output(S, reverse, batch_first)
    return (y, S[-1].copy()), (X, W_ih, W_hh, b_ih is not None, b_hh is not None, S, gates, HN,
                               reverse, batch_first)


@gru.set_backward
def _gru_backward(saved, gy, gh_n, needs=(True,) * 6):
    X, W_ih, W_hh, has_bih, has_bhh, S, gates, HN, reverse, batch_first = saved
    GY = None if gy is None else _time_major(gy, reverse, batch_first)
    GA, GAH = np.empty_like(gates), np.empty_like(gates)
    gh = np.zeros_like(S[0]) if gh_n is None else np.array(gh_n, dtype=S.dtype)
    for t in range(GA.shape[0] - 1, -1, -1):
        if GY is not None:
            gh = gh + GY[t]                  # h_t reaches L directly and through h_{t+1}
        direct = _gru_step_backward(gates[t], HN[t], S[t], gh, GA[t], GAH[t])
        gh = direct + GAH[t] @ W_hh
    gx, gW_ih, gb_ih = _input_grads(GA, X, W_ih, needs[0], needs[2], reverse, batch_first)
    return (gx, gh if needs[1] else None, gW_ih, _hidden_grad(GAH, S[:-1]) if needs[3] else None,
            gb_ih if has_bih and needs[4] else None,
            GAH.reshape(-1, GAH.shape[-1]).sum(axis=0) if has_bhh and needs[5] else None)
