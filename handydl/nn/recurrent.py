r"""Recurrent modules, named, parametrized and initialized as torch.nn's: ``RNN``
(tanh or ReLU), ``LSTM`` and ``GRU`` over whole sequences, and the single
steps ``RNNCell``, ``LSTMCell`` and ``GRUCell``.

Parameters have PyTorch's names and layouts (``weight_ih_l0`` (k H, I),
``weight_hh_l0`` (k H, H), ``bias_ih_l0``, ``bias_hh_l0`` (k H,), ``..._reverse``
for the second direction; gates stacked as i, f, g, o for the LSTM and r, z, n
for the GRU), so weights move between the two unchanged.  Every weight and
bias starts uniform in :math:`\pm 1/\sqrt{H}`, as PyTorch's.

A multi-layer, bidirectional network is a stack of the layer ops of
:mod:`handydl.ops.recurrent` (each one layer in one direction, with its
backpropagation through time written by hand): layer l + 1 reads the
concatenation of layer l's two directions, with dropout between layers in
training.  Backward runs the stack in reverse: the gradient of a layer's
output is cut into its directions' halves, and the input's gradient is the sum
of both directions' (a fork in the forward pass is a sum in the backward
pass).  The forward is written with registered ops only, so that
:mod:`handydl.tape` records it; each call keeps its own saved state (last in,
first out).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .. import ops
from ..ops.registry import check_bool, check_choice, check_int, check_real
from .layers import _cpu_only, _float_dtype
from .module import Module, Parameter, check_gy, resolve_rng

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_LAYER_OPS = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}


def _check_bool(who, name, value):
    check_bool(who, name, value)
    return bool(value)


def _run(op, *inputs, **params):
    """(outputs, saved) of a registered op; the tape sees the call."""
    return op.run(inputs, op.bind(params))


def _reshape(x, shape):
    return _run(ops.reshape, x, shape=tuple(shape))[0]


def _input_array(x, dtype):
    """The input as an array: floats as they are (float32 stays float32), the rest in the
    module's dtype."""
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(dtype)


def _uniform(rng, bound, shape, dtype):
    return Parameter(rng.uniform(-bound, bound, shape).astype(dtype))


class RNNBase(Module):
    """What RNN, LSTM and GRU share: arguments, parameters, the stack of layers and its backward."""

    mode = "RNN_TANH"

    def _setup(self, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
               proj_size, device, dtype, rng, mode=None):
        who = type(self).__name__
        for name, n in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            check_int(who, name, n)
        check_real(who, "dropout", dropout, "a probability in [0, 1]", lambda p: 0 <= p <= 1)
        check_int(who, "proj_size", proj_size, f"an integer in [0, hidden_size) (hidden_size {hidden_size})",
                  lambda n: 0 <= n < hidden_size)
        bias, batch_first, bidirectional = (_check_bool(who, n, v) for n, v in (
            ("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)))
        _cpu_only(device, who)
        dtype = _float_dtype(dtype, who)
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{who}: dropout={dropout} acts between layers, so it does nothing with "
                          "num_layers=1 (as PyTorch)", UserWarning, stacklevel=3)
        Module.__init__(self)
        self.mode = mode or type(self).mode
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout, self.proj_size = float(dropout), int(proj_size)
        self._rng = resolve_rng(rng)
        self._make_parameters(dtype)

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def _state_size(self):
        """The size of h: proj_size for a projected LSTM, else hidden_size."""
        return self.proj_size or self.hidden_size

    def _names(self, layer, direction):
        s = f"l{layer}" + ("_reverse" if direction else "")
        return ([f"weight_ih_{s}", f"weight_hh_{s}"] + ([f"bias_ih_{s}", f"bias_hh_{s}"] if self.bias else [])
                + ([f"weight_hr_{s}"] if self.proj_size else []))

    def _make_parameters(self, dtype):
        """torch.nn's names, shapes and order; every one U(-1/sqrt(H), 1/sqrt(H)), as PyTorch."""
        H, k, D, P = self.hidden_size, _GATES[self.mode], self.num_directions, self._state_size
        bound = 1 / math.sqrt(H)
        for layer in range(self.num_layers):
            n_in = self.input_size if layer == 0 else P * D
            for d in range(D):
                shapes = [(k * H, n_in), (k * H, P)] + [(k * H,), (k * H,)] * self.bias + [(P, H)]
                for name, shape in zip(self._names(layer, d), shapes):
                    setattr(self, name, _uniform(self._rng, bound, shape, dtype))

    def _weights(self, layer, direction):
        """The layer op's weight inputs of one layer and direction: (weight_ih, weight_hh, bias_ih,
        bias_hh) Parameters, None for absent biases, and weight_hr for a projected LSTM."""
        ps = [self._params[n] for n in self._names(layer, direction)]
        if not self.bias:
            ps[2:2] = [None, None]
        return ps

    @property
    def dtype(self):
        return self.weight_ih_l0.dtype

    # -- forward -----------------------------------------------------------------------------
    @property
    def _n_states(self):
        return 2 if self.mode == "LSTM" else 1

    def forward(self, input, hx=None):
        """output, h_n (LSTM: output, (h_n, c_n)) for input (L, N, H_in) ((N, L, H_in) with
        batch_first) or unbatched (L, H_in); hx (num_layers * num_directions, N, H) or None (zeros)."""
        x = _input_array(input, self.dtype)
        unbatched = self._check_input(x)
        states = self._check_hx(hx, x, unbatched)
        if unbatched:                               # one sequence: a batch of 1
            x = _reshape(x, (1,) + x.shape if self.batch_first else (x.shape[0], 1, x.shape[1]))
            states = [_reshape(s, (s.shape[0], 1, s.shape[1])) for s in states]
        N = x.shape[0 if self.batch_first else 1]
        per_layer = self._initial_states(states, N, x.dtype)
        y, finals, saved = self._stack(x, per_layer)
        finals = [_run(ops.concat, *(_reshape(f, (1,) + f.shape) for f in fs), dim=0)[0] for fs in finals]
        if unbatched:
            y = _reshape(y, (y.shape[1 if self.batch_first else 0], y.shape[-1]))
            finals = [_reshape(f, (f.shape[0], f.shape[2])) for f in finals]
        self.save(saved, unbatched, hx is not None, x.shape, [f.shape for f in finals], y.shape)
        return (y, tuple(finals)) if self.mode == "LSTM" else (y, finals[0])

    def _initial_states(self, states, N, dtype):
        """One tuple of initial states per layer and direction: h (N, H) ((N, proj_size) for a
        projected LSTM), and c (N, H) for the LSTM."""
        LD, sizes = self.num_layers * self.num_directions, (self._state_size, self.hidden_size)
        if not states:
            zeros = tuple(np.zeros((N, n), np.result_type(dtype, self.dtype)) for n in sizes)
            return [zeros[:self._n_states]] * LD
        pieces = [_run(ops.split, s, split_size_or_sections=1, dim=0)[0] for s in states]
        return [tuple(_reshape(p[k], (N, n)) for p, n in zip(pieces, sizes)) for k in range(LD)]

    def _stack(self, x, per_layer):
        """The layers bottom to top, each direction one layer op; returns the top layer's output,
        the final states [h_n per layer and direction (, c_n ...)] and what backward needs."""
        op, D = ops.get(_LAYER_OPS[self.mode]), self.num_directions
        finals = [[] for _ in range(self._n_states)]
        saved = []
        for layer in range(self.num_layers):
            ys, layer_saved = [], []
            for d in range(D):
                w = [None if p is None else p.data for p in self._weights(layer, d)]
                outs, s = _run(op, x, *per_layer[layer * D + d], *w, reverse=d == 1,
                               batch_first=self.batch_first)
                ys.append(outs[0])
                for f, o in zip(finals, outs[1:]):
                    f.append(o)
                layer_saved.append(s)
            x = ys[0] if D == 1 else _run(ops.concat, *ys, dim=-1)[0]
            mask = None
            if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
                x, mask = _run(ops.dropout, x, p=self.dropout, training=True, seed=self._rng)
            saved.append((layer_saved, mask))
        return x, finals, saved

    # -- checks ------------------------------------------------------------------------------
    def _shape_text(self):
        return "(N, L, H_in)" if self.batch_first else "(L, N, H_in)"

    def _check_input(self, x):
        """True for an unbatched (L, H_in) input; ValueError naming the sizes otherwise."""
        who = type(self).__name__
        if x.ndim not in (2, 3):
            raise ValueError(f"{who}: expected input of 3 dims {self._shape_text()} or 2 dims (L, H_in) "
                             f"(unbatched), got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{who}: input.size(-1) must be equal to input_size; expected "
                             f"{self.input_size}, got {x.shape[-1]} (input shape {x.shape})")
        unbatched = x.ndim == 2
        T = x.shape[0] if unbatched else x.shape[1 if self.batch_first else 0]
        N = 1 if unbatched else x.shape[0 if self.batch_first else 1]
        if T == 0 or N == 0:
            raise ValueError(f"{who}: input of shape {x.shape} is empty (sequence length {T}, batch {N}); "
                             "expected at least one step and one sequence")
        return unbatched

    def _check_hx(self, hx, x, unbatched):
        """The initial states as a list of arrays ([] for None), each checked against
        (num_layers * num_directions, N, H) ((num_layers * num_directions, H) unbatched)."""
        who = type(self).__name__
        if hx is None:
            return []
        LD = self.num_layers * self.num_directions
        N = x.shape[0 if self.batch_first else 1]
        names = ("h_0", "c_0")[:self._n_states]
        wants = [(LD, n) if unbatched else (LD, N, n) for n in (self._state_size, self.hidden_size)]
        want = wants[0]
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{who}: hx must be a tuple (h_0, c_0) of two arrays of shape {want}, "
                                f"got {type(hx).__name__}")
            states = list(hx)
        else:
            states = [hx]
        out = []
        for name, s, want, size in zip(names, states, wants, ("proj_size" if self.proj_size else
                                                             "hidden_size", "hidden_size")):
            s = _input_array(s, self.dtype)
            if s.shape != want:
                raise ValueError(f"{who}: expected {name} of shape {want} (num_layers * num_directions = "
                                 f"{LD}, " + ("" if unbatched else f"batch {N}, ") + f"{size} {want[-1]}), "
                                 f"got shape {s.shape}")
            out.append(s)
        return out

    # -- backward ----------------------------------------------------------------------------
    def backward(self, grad_output=None, grad_h_n=None, grad_c_n=None, input_grad=True):
        """Gradients of output and h_n (LSTM: and c_n; or ``backward(g_out, (g_h, g_c))``), each
        None for zero.  Returns dL/dinput, and dL/dhx when hx was given: (dL/dinput, dL/dh_0)
        (LSTM: (dL/dinput, (dL/dh_0, dL/dc_0))).  ``input_grad=False``: the input is data, None
        is returned.  dL/dparam is accumulated into every Parameter, once all are computed."""
        saved, unbatched, hx_given, x_shape, state_shapes, y_shape = self._peek_saved()
        if self.mode != "LSTM" and grad_c_n is not None:
            raise ValueError(f"{type(self).__name__}.backward: expected the gradients of its 2 outputs "
                             "(output, h_n), got a third (only the LSTM has c_n)")
        if self.mode == "LSTM" and isinstance(grad_h_n, (tuple, list)):
            if grad_c_n is not None:
                raise ValueError("LSTM.backward: give the state gradients as (g_h_n, g_c_n) or as two "
                                 "arguments, not both")
            grad_h_n, grad_c_n = grad_h_n
        grads = [grad_h_n, grad_c_n][:self._n_states]
        gy, g_states = self._batched_grads(grad_output, grads, unbatched, y_shape, state_shapes, x_shape)
        gx, g_init, param_grads = self._stack_backward(saved, gy, g_states, input_grad, hx_given)
        self.saved()                                # consumed only once every gradient is computed
        for p, g in param_grads:
            p.accumulate(g, fresh=True)
        if not input_grad:
            return None
        if unbatched:
            gx = None if gx is None else gx.reshape(gx.shape[1:] if self.batch_first else
                                                    (gx.shape[0], gx.shape[2]))
            g_init = [g.reshape(g.shape[0], g.shape[2]) for g in g_init]
        if not hx_given:
            return gx
        return gx, (tuple(g_init) if self.mode == "LSTM" else g_init[0])

    def _batched_grads(self, gy, g_states, unbatched, y_shape, state_shapes, x_shape):
        """Upstream gradients checked against the outputs' shapes and seen as batched:
        gy (L, N, D H) or None, and [g_h_n[k] (N, H) or None per layer and direction] per state."""
        who = type(self).__name__
        if gy is not None:
            gy = check_gy(gy, y_shape, who)
            if unbatched:
                gy = gy.reshape((1,) + gy.shape if self.batch_first else (gy.shape[0], 1, gy.shape[1]))
        LD = self.num_layers * self.num_directions
        out = []
        for g, shape in zip(g_states, state_shapes):
            if g is None:
                out.append([None] * LD)
                continue
            g = check_gy(g, shape, who)
            g = g.reshape(g.shape[0], 1, g.shape[1]) if unbatched else g
            out.append(list(g))
        return gy, out

    def _stack_backward(self, saved, gy, g_states, input_grad, hx_given):
        """The layers top to bottom: (dL/dx batched, [dL/dh_0 (LD, N, H) (, dL/dc_0)], [(param, grad)])."""
        op, D, S = ops.get(_LAYER_OPS[self.mode]), self.num_directions, self._n_states
        g_init = [[None] * (self.num_layers * D) for _ in range(S)]
        param_grads = []
        g = gy
        for layer in range(self.num_layers - 1, -1, -1):
            layer_saved, mask = saved[layer]
            if mask is not None and g is not None:
                g = ops.dropout.backward(mask, g)[0]
            parts = [None] * D if g is None else ([g] if D == 1 else np.split(g, D, axis=-1))
            need_x = input_grad or layer > 0
            gx = None
            for d in range(D):
                k = layer * D + d
                weights = self._weights(layer, d)
                needs = (need_x,) + (hx_given,) * S + tuple(p is not None for p in weights)
                grads = op.backward(layer_saved[d], parts[d], *(gs[k] for gs in g_states), needs=needs)
                for s in range(S):
                    g_init[s][k] = grads[1 + s]
                param_grads += [(p, gp) for p, gp in zip(weights, grads[1 + S:]) if p is not None]
                if need_x:                          # the layer's input feeds both directions: a sum
                    gx = grads[0] if gx is None else gx + grads[0]
            g = gx
        g_init = [np.stack(gs) for gs in g_init] if hx_given else []
        return g, g_init, param_grads

    # -- checkpoints and printing ------------------------------------------------------------
    def get_config(self):
        config = dict(input_size=self.input_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                      bias=self.bias, batch_first=self.batch_first, dropout=self.dropout,
                      bidirectional=self.bidirectional, dtype=self.dtype.name)
        if self.mode.startswith("RNN"):
            config["nonlinearity"] = self.mode[4:].lower()
        if self.proj_size:
            config["proj_size"] = self.proj_size
        return config

    def extra_repr(self):
        """As torch.nn's: the sizes, then the arguments that differ from their defaults
        (torch.nn.RNN's does not show its nonlinearity: ``.nonlinearity`` tells it)."""
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s


class RNN(RNNBase):
    r"""An Elman RNN, as torch.nn.RNN: at each layer and step
    :math:`h_t = \phi(x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh})`, :math:`\phi` tanh or ReLU
    (``nonlinearity``).  ``weight_ih_l{k}`` (H, H_in) (layer 0) or (H, D H), ``weight_hh_l{k}`` (H, H).

    ``forward(input, hx=None)`` returns ``(output, h_n)``: output (L, N, D H) ((N, L, D H) with
    batch_first), h_n (num_layers * D, N, H), D = 2 if bidirectional else 1.
    Forward and backward of each layer: :func:`handydl.ops.rnn_tanh` / :func:`handydl.ops.rnn_relu`.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *, rng=None):
        check_choice("RNN: nonlinearity", nonlinearity, ("tanh", "relu"))
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                    device, dtype, rng, mode="RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU")

    @property
    def nonlinearity(self):
        return self.mode[4:].lower()


class LSTM(RNNBase):
    r"""Long short-term memory, as torch.nn.LSTM (gates i, f, g, o stacked in that order):

    .. math::
        [a_i, a_f, a_g, a_o] = x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh},\quad
        c_t = \sigma(a_f) c_{t-1} + \sigma(a_i) \tanh(a_g),\quad h_t = \sigma(a_o) \tanh(c_t).

    ``weight_ih_l{k}`` (4H, H_in), ``weight_hh_l{k}`` (4H, H).  ``forward(input, hx=None)`` with hx
    ``(h_0, c_0)`` returns ``(output, (h_n, c_n))``.  ``proj_size`` P > 0 projects h, as torch's:
    :math:`h_t = (o_t \odot \tanh c_t) W_{hr}^\top` with ``weight_hr_l{k}`` (P, H), ``weight_hh_l{k}``
    (4H, P), h and the output of size P, c of size H.
    Forward and backward of each layer: :func:`handydl.ops.lstm`.
    """

    mode = "LSTM"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, rng=None):
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                    proj_size, device, dtype, rng)


class GRU(RNNBase):
    r"""Gated recurrent unit, as torch.nn.GRU (gates r, z, n stacked in that order):

    .. math::
        r_t, z_t = \sigma(x_t W_{i\{r,z\}}^\top + b_{i\{r,z\}} + h_{t-1} W_{h\{r,z\}}^\top + b_{h\{r,z\}}),\quad
        n_t = \tanh(x_t W_{in}^\top + b_{in} + r_t \odot (h_{t-1} W_{hn}^\top + b_{hn})),\quad
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}.

    ``weight_ih_l{k}`` (3H, H_in), ``weight_hh_l{k}`` (3H, H).  ``forward(input, hx=None)`` returns
    ``(output, h_n)``.  Forward and backward of each layer: :func:`handydl.ops.gru`.
    """

    mode = "GRU"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, rng=None):
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                    device, dtype, rng)


# -- single steps -------------------------------------------------------------------------------

class RNNCellBase(Module):
    """What RNNCell, LSTMCell and GRUCell share: one step of the cell op on (N, H_in) or (H_in,)."""

    mode = "RNN_TANH"
    _CELL_OPS = {"RNN_TANH": "rnn_tanh_cell", "RNN_RELU": "rnn_relu_cell", "LSTM": "lstm_cell",
                 "GRU": "gru_cell"}

    def _setup(self, input_size, hidden_size, bias, device, dtype, rng, mode=None):
        who = type(self).__name__
        check_int(who, "input_size", input_size)
        check_int(who, "hidden_size", hidden_size)
        bias = _check_bool(who, "bias", bias)
        _cpu_only(device, who)
        dtype = _float_dtype(dtype, who)
        Module.__init__(self)
        self.mode = mode or type(self).mode
        self.input_size, self.hidden_size, self.bias = int(input_size), int(hidden_size), bias
        k, H = _GATES[self.mode], self.hidden_size
        rng, bound = resolve_rng(rng), 1 / math.sqrt(H)
        self.weight_ih = _uniform(rng, bound, (k * H, self.input_size), dtype)
        self.weight_hh = _uniform(rng, bound, (k * H, H), dtype)
        self.bias_ih = _uniform(rng, bound, (k * H,), dtype) if bias else None
        self.bias_hh = _uniform(rng, bound, (k * H,), dtype) if bias else None

    @property
    def _n_states(self):
        return 2 if self.mode == "LSTM" else 1

    def _weights(self):
        return (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    def forward(self, input, hx=None):
        """h' (LSTMCell: (h', c')) for input (N, H_in) or (H_in,), hx (N, H) (LSTMCell: (h, c))
        or None (zeros)."""
        who, H = type(self).__name__, self.hidden_size
        x = _input_array(input, self.weight_ih.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"{who}: expected input of shape (N, {self.input_size}) or ({self.input_size},) "
                             f"(input_size {self.input_size}), got shape {x.shape}")
        unbatched = x.ndim == 1
        N = 1 if unbatched else x.shape[0]
        states = self._check_hx(hx, (H,) if unbatched else (N, H))
        if unbatched:
            x = _reshape(x, (1, x.shape[0]))
            states = [_reshape(s, (1, H)) for s in states]
        if not states:
            states = [np.zeros((N, H), np.result_type(x, self.weight_ih.dtype))] * self._n_states
        out, saved = _run(ops.get(self._CELL_OPS[self.mode]), x, *states,
                          *(None if p is None else p.data for p in self._weights()))
        outs = out if isinstance(out, tuple) else (out,)
        if unbatched:
            outs = tuple(_reshape(o, (H,)) for o in outs)
        self.save(saved, unbatched, hx is not None, [o.shape for o in outs])
        return outs if self.mode == "LSTM" else outs[0]

    def _check_hx(self, hx, want):
        who = type(self).__name__
        if hx is None:
            return []
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{who}: hx must be a tuple (h, c) of two arrays of shape {want}, "
                                f"got {type(hx).__name__}")
            states = list(hx)
        else:
            states = [hx]
        out = []
        for name, s in zip(("h", "c"), states):
            s = _input_array(s, self.weight_ih.dtype)
            if s.shape != want:
                raise ValueError(f"{who}: expected {name} of shape {want} (hidden_size {self.hidden_size}), "
                                 f"got shape {s.shape}")
            out.append(s)
        return out

    def backward(self, grad_h=None, grad_c=None, input_grad=True):
        """Gradient of h' (LSTMCell: and of c'), None for zero.  Returns dL/dinput, or
        (dL/dinput, dL/dhx) when hx was given; dL/dparam accumulated into the Parameters."""
        saved, unbatched, hx_given, shapes = self._peek_saved()
        who = type(self).__name__
        if self.mode != "LSTM" and grad_c is not None:
            raise ValueError(f"{who}.backward: expected the gradient of its one output h', got a second "
                             "(only the LSTMCell has c')")
        gys = []
        for g, shape in zip((grad_h, grad_c), shapes):
            g = None if g is None else check_gy(g, shape, who)
            gys.append(g if g is None or not unbatched else g.reshape(1, -1))
        if gys[0] is None and self._n_states == 1:     # the one-output cell ops take an array
            gys[0] = np.zeros((1,) + shapes[0] if unbatched else shapes[0], self.weight_ih.dtype)
        weights = self._weights()
        needs = (input_grad,) + (hx_given,) * self._n_states + tuple(p is not None for p in weights)
        grads = ops.get(self._CELL_OPS[self.mode]).backward(saved, *gys, needs=needs)
        self.saved()
        S = self._n_states
        for p, g in zip(weights, grads[1 + S:]):
            if p is not None:
                p.accumulate(g, fresh=True)
        if not input_grad:
            return None
        shape = (lambda g: g.reshape(-1)) if unbatched else (lambda g: g)
        gx = shape(grads[0])
        if not hx_given:
            return gx
        g_states = tuple(shape(g) for g in grads[1:1 + S])
        return gx, (g_states if self.mode == "LSTM" else g_states[0])

    def get_config(self):
        config = dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                      dtype=self.weight_ih.dtype.name)
        if self.mode.startswith("RNN"):
            config["nonlinearity"] = self.mode[4:].lower()
        return config

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        return s


class RNNCell(RNNCellBase):
    r"""One Elman RNN step, as torch.nn.RNNCell: :math:`h' = \phi(x W_{ih}^\top + b_{ih} + h W_{hh}^\top + b_{hh})`;
    ``weight_ih`` (H, H_in), ``weight_hh`` (H, H).  Op: :func:`handydl.ops.rnn_tanh_cell` / ``rnn_relu_cell``."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None,
                 *, rng=None):
        check_choice("RNNCell: nonlinearity", nonlinearity, ("tanh", "relu"))
        self._setup(input_size, hidden_size, bias, device, dtype, rng,
                    mode="RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU")

    @property
    def nonlinearity(self):
        return self.mode[4:].lower()


class LSTMCell(RNNCellBase):
    """One LSTM step, as torch.nn.LSTMCell: ``forward(input, (h, c))`` returns ``(h', c')``;
    ``weight_ih`` (4H, H_in), ``weight_hh`` (4H, H), gates i, f, g, o.  Op: :func:`handydl.ops.lstm_cell`."""

    mode = "LSTM"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, rng=None):
        self._setup(input_size, hidden_size, bias, device, dtype, rng)


class GRUCell(RNNCellBase):
    """One GRU step, as torch.nn.GRUCell: ``weight_ih`` (3H, H_in), ``weight_hh`` (3H, H), gates
    r, z, n.  Op: :func:`handydl.ops.gru_cell`."""

    mode = "GRU"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, rng=None):
        self._setup(input_size, hidden_size, bias, device, dtype, rng)
