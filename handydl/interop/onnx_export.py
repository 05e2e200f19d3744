"""handydl models to ONNX, for inference anywhere ONNX runs (onnxruntime, browsers, phones).

The graph is built node by node with ``onnx.helper``, one small function per
module class (``TO_ONNX``), rather than through ``torch.onnx.export`` of
``to_torch(model)``: exporting then needs neither torch (a gigabyte) nor
onnxscript (which torch 2.13's default exporter requires; its TorchScript
exporter is deprecated), each handydl module maps to the ONNX operators
that compute it, and a module without one is refused by name instead of
being traced into whatever the tracer makes of it.

The export is of the model in evaluation mode (Dropout the identity,
BatchNorm with its running statistics), in float32 (token ids int64), with a
dynamic first dimension; recurrent layers start from zero states (hx None),
attention has no masks.  Shapes inside the graph come from running the model
itself on a sample input of ``input_shape`` (under ``no_grad``), so a Flatten
or a Split knows its sizes.
"""
from __future__ import annotations

import numpy as np

from .. import nn

OPSET = 21          # LayerNormalization (17), Mish (18), Gelu (20), GroupNormalization (21)


def to_onnx(model, path, input_shape, opset=OPSET, input_dtype="float32"):
    """Write ``model`` as an ONNX file at ``path`` for inputs of shape (N, *input_shape)
    (N, the first dimension, is dynamic: the batch, or the time of a sequence-first
    RNN); returns the path.  The input is named "input", the
    output(s) "output" ("output_0", ... for several).  ``input_dtype="int64"`` for a
    model that takes token ids (an Embedding first).

    TypeError naming the module (and where it stands) for a class with no ONNX
    operators here (``TO_ONNX``), ValueError for a configuration ONNX cannot
    express (say, AvgPool2d's divisor_override)."""
    import onnx
    from onnx import TensorProto, helper

    if not isinstance(model, nn.Module):
        raise TypeError(f"to_onnx: expected a handydl Module, got {type(model).__name__}")
    input_shape = _input_shape(input_shape)
    if input_dtype not in ("float32", "int64"):
        raise ValueError(f"to_onnx: input_dtype={input_dtype!r} is not valid; expected 'float32' or "
                         "'int64' (token ids)")
    modes = [(m, m.training) for m in model.modules()]
    g = _Graph()
    try:
        model.eval()
        with nn.no_grad():
            rng = np.random.default_rng(0)
            sample = (rng.normal(size=(2,) + input_shape).astype(np.float32) if input_dtype == "float32"
                      else np.zeros((2,) + input_shape, np.int64))
            outs, samples = g.module(model, ["input"], [sample], "")
    finally:
        for m, mode in modes:
            m.training = mode
    names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    for out, name in zip(outs, names):
        g.node("Identity", [out], [name])
    graph = helper.make_graph(
        g.nodes, type(model).__name__,
        [helper.make_tensor_value_info("input", {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}[input_dtype],
                                       ["N", *input_shape])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * s.ndim) for n, s in zip(names, samples)],
        g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="handydl")
    onnx.checker.check_model(proto, full_check=True)
    from .._io import atomic_path
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def _input_shape(shape):
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise TypeError(f"to_onnx: input_shape={shape!r} is not valid; expected the shape of one "
                        "sample, a tuple of positive integers (the batch dimension left out)") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"to_onnx: input_shape={shape!r} is not valid; expected positive sizes "
                         "(the batch dimension left out)")
    return shape


class _Graph:
    """The nodes and initializers so far; ``module`` adds a module's nodes."""

    def __init__(self):
        self.nodes, self.initializers, self.count = [], [], 0
        self.params = {}                # id(Parameter) -> initializer: a tied weight stored once

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def node(self, op, inputs, outputs=None, **attrs):
        from onnx import helper
        outputs = outputs or [self.name(op)]
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, value, hint="const", dtype=np.float32):
        from onnx import numpy_helper
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def ints(self, values, hint="shape"):
        return self.const(np.asarray(values, np.int64), hint, np.int64)

    def module(self, m, names, samples, path):
        """(output names, output samples) of module ``m`` applied to ``names``."""
        fn = TO_ONNX.get(type(m))
        if fn is None:
            why = NOT_EXPORTED.get(type(m).__name__)
            raise TypeError(f"to_onnx: {type(m).__name__} (at {path or 'the root'!r}) has no ONNX "
                            f"export{f' ({why})' if why else ''}; exportable: "
                            f"{', '.join(sorted(c.__name__ for c in TO_ONNX))}")
        at = _At(self, m, path)
        outs = fn(m, at, names, samples)
        if at.samples is not None:                   # a composite computed them child by child
            return outs, at.samples
        ys = _flat(m(*samples))                   # LSTM: output, (h_n, c_n) -> three outputs
        outs = outs if isinstance(outs, list) else [outs]
        return outs, ys


class _At:
    """What a TO_ONNX function sees: the graph, its place, and ``child`` for composites."""

    def __init__(self, graph, m, path):
        self.g, self.m, self.path, self.samples = graph, m, path, None

    def __getattr__(self, name):            # node, const, ints
        return getattr(self.g, name)

    def param(self, value, attr):
        """An initializer for a module's array (a Parameter shared by two modules: one)."""
        if isinstance(value, nn.Parameter):
            if id(value) not in self.g.params:
                self.g.params[id(value)] = (value, self.g.const(value.data, self._hint(attr)))
            return self.g.params[id(value)][1]
        return self.g.const(value, self._hint(attr))

    def _hint(self, attr):
        return f"{self.path}.{attr}" if self.path else attr

    def child(self, c, name, names, samples):
        return self.g.module(c, names, samples, f"{self.path}.{name}" if self.path else name)

    def done(self, outs, samples):
        self.samples = samples
        return outs

    def refuse(self, why):
        raise ValueError(f"to_onnx: {type(self.m).__name__} (at {self.path or 'the root'!r}): {why}")


def _flat(y):
    return [a for v in y for a in _flat(v)] if isinstance(y, tuple) else [y]


def _x(names):
    return names[0]


def _pairs(v, n=2):
    return list(v) if isinstance(v, (tuple, list)) else [v] * n


# -- layers ---------------------------------------------------------------------------------

def _linear(m, g, names, samples):
    y = g.node("MatMul", [_x(names), g.param(m.weight, "weight")])
    return g.node("Add", [y, g.param(m.bias, "bias")]) if m.bias is not None else y


def _conv(m, g, names, samples):
    k = list(m.kernel_size)
    if isinstance(m.padding, str):              # "valid" or "same" (stride 1), torch's split of the total
        totals = [0 if m.padding == "valid" else d * (kk - 1) for d, kk in zip(m.dilation, k)]
        pads = [t // 2 for t in totals] + [t - t // 2 for t in totals]
    else:
        pads = list(m.padding) * 2
    attrs = dict(kernel_shape=k, strides=list(m.stride), dilations=list(m.dilation), group=m.groups, pads=pads)
    inputs = [_x(names), g.param(m.weight, "weight")] + ([g.param(m.bias, "bias")] if m.bias is not None else [])
    if m.transposed:
        return g.node("ConvTranspose", inputs, output_padding=list(m.output_padding), **attrs)
    return g.node("Conv", inputs, **attrs)


def _affine(m, g):
    """weight and bias initializers (the constants of affine=False, zeros for bias=False)."""
    w = m.weight
    b = np.zeros(np.shape(w.data if isinstance(w, nn.Parameter) else w)) if m.bias is None else m.bias
    return g.param(w, "weight"), g.param(b, "bias")


def _batch_norm(m, g, names, samples):
    if not m.track_running_stats:
        g.refuse("track_running_stats=False normalizes with each batch's statistics; ONNX's "
                 "BatchNormalization uses stored ones")
    return g.node("BatchNormalization", [_x(names), *_affine(m, g), g.param(m.running_mean, "running_mean"),
                                         g.param(m.running_var, "running_var")], epsilon=m.params["eps"])


def _layer_norm(m, g, names, samples):
    return g.node("LayerNormalization", [_x(names), *_affine(m, g)], axis=-len(m.normalized_shape),
                  epsilon=m.params["eps"])


def _rms_norm(m, g, names, samples):
    """x / sqrt(mean(x^2 over the normalized dims) + eps) * weight (RMSNormalization is opset 23);
    eps None is the float32 machine epsilon, as torch's for a float32 input."""
    x = _x(names)
    axes = g.ints(list(range(-len(m.normalized_shape), 0)))
    eps = np.finfo(np.float32).eps if m.params["eps"] is None else m.params["eps"]
    ms = g.node("ReduceMean", [g.node("Mul", [x, x]), axes], keepdims=1)
    y = g.node("Div", [x, g.node("Sqrt", [g.node("Add", [ms, g.const(eps)])])])
    return y if m.weight is None else g.node("Mul", [y, g.param(m.weight, "weight")])


def _group_norm(m, g, names, samples):
    return g.node("GroupNormalization", [_x(names), *_affine(m, g)], num_groups=m.num_groups,
                  epsilon=m.params["eps"])


def _instance_norm(m, g, names, samples):
    """Each sample's channel over its own positions (InstanceNormalization), or, with
    track_running_stats, the stored statistics in evaluation mode (BatchNormalization)."""
    ones = m._ones
    w = m.weight if m.weight is not None else ones
    b = m.bias if m.bias is not None else np.zeros_like(ones)
    scale, bias = g.param(w, "weight"), g.param(b, "bias")
    if m.track_running_stats:
        return g.node("BatchNormalization", [_x(names), scale, bias, g.param(m.running_mean, "running_mean"),
                                             g.param(m.running_var, "running_var")], epsilon=m.params["eps"])
    return g.node("InstanceNormalization", [_x(names), scale, bias], epsilon=m.params["eps"])


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _pad(m, g, names, samples):
    """ONNX Pad: pads lists every axis's begins, then every axis's ends; torch's tuple is
    (left, right) of the last dim, then (top, bottom) of the one before."""
    ndim, p = samples[0].ndim, m.padding
    begins, ends = [0] * ndim, [0] * ndim
    for k in range(len(p) // 2):
        begins[ndim - 1 - k], ends[ndim - 1 - k] = p[2 * k], p[2 * k + 1]
    inputs = [_x(names), g.ints(begins + ends)]
    if m.mode == "constant":
        inputs.append(g.const(m.params["value"]))
    return g.node("Pad", inputs, mode=_PAD_MODES[m.mode])


def _local_response_norm(m, g, names, samples):
    """ONNX LRN sums channels c - (size-1)//2 .. c + size//2, torch c - size//2 .. c + (size-1)//2:
    the same window for an odd size only."""
    p = m.params
    if p["size"] % 2 == 0:
        g.refuse(f"size={p['size']} is even: ONNX's LRN centres its window one channel off torch's")
    return g.node("LRN", [_x(names)], alpha=float(p["alpha"]), beta=float(p["beta"]), bias=float(p["k"]),
                  size=int(p["size"]))


def _prelu(m, g, names, samples):
    n, ndim = m.weight.shape[0], samples[0].ndim
    slope = g.param(m.weight, "weight")
    if n > 1:                       # torch's slopes go along dim 1; ONNX broadcasts from the right
        slope = g.node("Reshape", [slope, g.ints([n] + [1] * max(ndim - 2, 0))])
    return g.node("PRelu", [_x(names), slope])


def _reshape(m, g, names, samples):
    """Flatten / Unflatten as a Reshape to the sample's output shape, the batch kept dynamic."""
    y = m(samples[0])
    keeps_batch = isinstance(m, nn.Flatten) and m.start_dim % samples[0].ndim > 0 or \
        isinstance(m, nn.Unflatten) and m.dim % samples[0].ndim > 0
    if not keeps_batch:
        g.refuse("it reshapes the batch dimension, which the export keeps dynamic")
    return g.node("Reshape", [_x(names), g.ints([0, *y.shape[1:]])])


def _pool_attrs(m, g, samples):
    p = m.params
    k = _pairs(p["kernel_size"])
    s = _pairs(p["stride"]) if p["stride"] is not None else k
    return dict(kernel_shape=k, strides=s, pads=_pairs(p["padding"]) * 2, ceil_mode=int(p["ceil_mode"]))


def _max_pool(m, g, names, samples):
    return g.node("MaxPool", [_x(names)], dilations=_pairs(m.params["dilation"]), **_pool_attrs(m, g, samples))


def _avg_pool(m, g, names, samples):
    if m.params["divisor_override"] is not None:
        g.refuse("divisor_override has no ONNX AveragePool attribute")
    return g.node("AveragePool", [_x(names)], count_include_pad=int(m.params["count_include_pad"]),
                  **_pool_attrs(m, g, samples))


def _adaptive_avg_pool(m, g, names, samples):
    h, w = samples[0].shape[-2:]
    out = [n if n is not None else size for n, size in zip(_pairs(m.params["output_size"]), (h, w))]
    if out == [1, 1]:
        return g.node("GlobalAveragePool", [_x(names)])
    if h % out[0] or w % out[1]:
        g.refuse(f"output size {tuple(out)} does not divide the input's {h}x{w}: its windows overlap "
                 "unevenly, which no ONNX pooling operator computes")
    k = [h // out[0], w // out[1]]
    return g.node("AveragePool", [_x(names)], kernel_shape=k, strides=k)


# -- activations and wiring -------------------------------------------------------------------

def _op(onnx_op, **fixed):
    """A one-input activation that is one ONNX operator, its attributes from the module's params."""
    def export(m, g, names, samples):
        return g.node(onnx_op, [_x(names)], **{k: (v(m.params) if callable(v) else v) for k, v in fixed.items()})
    return export


def _relu6(m, g, names, samples):
    return g.node("Clip", [_x(names), g.const(0.0), g.const(6.0)])


def _hardtanh(m, g, names, samples):
    return g.node("Clip", [_x(names), g.const(m.params["min_val"]), g.const(m.params["max_val"])])


def _log_sigmoid(m, g, names, samples):
    """log sigma(x) = -softplus(-x)."""
    return g.node("Neg", [g.node("Softplus", [g.node("Neg", [_x(names)])])])


def _tanhshrink(m, g, names, samples):
    return g.node("Sub", [_x(names), g.node("Tanh", [_x(names)])])


def _threshold(m, g, names, samples):
    """x where x > threshold, else value."""
    x = _x(names)
    keep = g.node("Greater", [x, g.const(m.params["threshold"])])
    return g.node("Where", [keep, x, g.const(m.params["value"])])


def _silu(m, g, names, samples):
    return g.node("Mul", [_x(names), g.node("Sigmoid", [_x(names)])])


def _softplus(m, g, names, samples):
    """torch's: log(1 + exp(beta x)) / beta, and x itself where beta x > threshold."""
    beta, threshold = m.params["beta"], m.params["threshold"]
    x = _x(names)
    bx = g.node("Mul", [x, g.const(beta)])
    soft = g.node("Div", [g.node("Softplus", [bx]), g.const(beta)])
    return g.node("Where", [g.node("Greater", [bx, g.const(threshold)]), x, soft])


def _sum_normalize(m, g, names, samples):
    x = _x(names)
    return g.node("Div", [x, g.node("ReduceSum", [x, g.ints([m.params["dim"]])], keepdims=1)])


def _lp_norm(m, g, names, samples):
    p, axes, keep = m.params["p"], g.ints([m.params["dim"]]), int(m.params["keepdim"])
    x = _x(names)
    if p == 2:
        return g.node("ReduceL2", [x, axes], keepdims=keep)
    if p == 1:
        return g.node("ReduceL1", [x, axes], keepdims=keep)
    powered = g.node("Pow", [g.node("Abs", [x]), g.const(p)])
    return g.node("Pow", [g.node("ReduceSum", [powered, axes], keepdims=keep), g.const(1 / p)])


def _split(m, g, names, samples):
    dim = m.params["dim"]
    size = samples[0].shape[dim]
    s = m.params["split_size_or_sections"]
    sizes = list(s) if isinstance(s, (list, tuple)) else [s] * (size // s) + ([size % s] if size % s else [])
    return g.node("Split", [_x(names), g.ints(sizes)], [g.name("split") for _ in sizes], axis=dim)


def _glu(m, g, names, samples):
    a, b = g.node("Split", [_x(names)], [g.name("a"), g.name("b")], axis=m.dim, num_outputs=2)
    return g.node("Mul", [a, g.node("Sigmoid", [b])])


def _standardize(m, g, names, samples):
    return g.node("Div", [g.node("Sub", [_x(names), g.param(m.mean, "mean")]), g.param(m.std, "std")])


# -- recurrent layers -------------------------------------------------------------------------
# ONNX's RNN, LSTM and GRU take W (directions, gates H, in), R (directions, gates H, H) and
# B (directions, 2 gates H: W's biases then R's) with their gates in another order than
# torch.nn's: LSTM i, o, f, c (torch i, f, g, o); GRU z, r, h (torch r, z, n), and
# linear_before_reset=1 is torch's GRU, r * (W_hn h + b_hn).
_ONNX_GATE_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN_TANH": [0], "RNN_RELU": [0]}


def _gates(w, mode, H):
    return np.concatenate([w[i * H:(i + 1) * H] for i in _ONNX_GATE_ORDER[mode]])


def _recurrent(m, g, names, samples):
    """RNN, LSTM, GRU (any layers, directions, batch_first) and their cells (one step),
    hx zeros; outputs as handydl's: output, h_n (LSTM: and c_n), or a cell's h' (and c')."""
    cell = type(m).__name__.endswith("Cell")
    if getattr(m, "proj_size", 0):
        g.refuse(f"proj_size={m.proj_size} (a projected h) has no ONNX LSTM attribute")
    mode, H = m.mode, m.hidden_size
    op = {"LSTM": "LSTM", "GRU": "GRU"}.get(mode, "RNN")
    x = _x(names)
    if cell:
        x = g.node("Unsqueeze", [x, g.ints([0])])                  # (1, N, in): one time step
    elif m.batch_first:
        x = g.node("Transpose", [x], perm=[1, 0, 2])
    layers, D = (1, 1) if cell else (m.num_layers, m.num_directions)
    hs, cs = [], []
    for layer in range(layers):
        W, R, B = [], [], []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh = m._weights() if cell else m._weights(layer, d)
            W.append(_gates(w_ih.data, mode, H))
            R.append(_gates(w_hh.data, mode, H))
            B.append(np.concatenate([_gates(b.data, mode, H) for b in (b_ih, b_hh)]) if b_ih is not None
                     else np.zeros(2 * W[-1].shape[0], W[-1].dtype))
        attrs = dict(hidden_size=H, direction="bidirectional" if D == 2 else "forward")
        if op == "GRU":
            attrs["linear_before_reset"] = 1
        if op == "RNN":
            attrs["activations"] = ["Relu" if mode == "RNN_RELU" else "Tanh"] * D
        outs = [g.name("Y"), g.name("Y_h")] + ([g.name("Y_c")] if op == "LSTM" else [])
        g.node(op, [x, g.const(np.stack(W), "W"), g.const(np.stack(R), "R"), g.const(np.stack(B), "B")], outs,
               **attrs)
        # Y (T, D, N, H) -> torch's (T, N, D H), the next layer's input
        x = g.node("Reshape", [g.node("Transpose", [outs[0]], perm=[0, 2, 1, 3]), g.ints([0, 0, -1])])
        hs.append(outs[1])
        cs.extend(outs[2:])
    if cell:
        return [g.node("Squeeze", [s, g.ints([0])]) for s in [hs[0], *cs]]
    states = [g.node("Concat", part, axis=0) if len(part) > 1 else part[0] for part in (hs, cs) if part]
    return [g.node("Transpose", [x], perm=[1, 0, 2]) if m.batch_first else x, *states]


# -- embeddings and attention -------------------------------------------------------------------

def _embedding(m, g, names, samples):
    return g.node("Gather", [g.param(m.weight, "weight"), _x(names)], axis=0)


def _positional(m, g, names, samples):
    """x + table[:T], T = x's dim -2, read from x's shape in the graph."""
    x = _x(names)
    t = g.node("Slice", [g.node("Shape", [x]), g.ints([-2]), g.ints([-1])])
    table = g.param(m.pe if isinstance(m, nn.SinusoidalPositionalEmbedding) else m.weight, "weight")
    return g.node("Add", [x, g.node("Slice", [table, g.ints([0]), t, g.ints([0])])])


def _self_attention(m, g, x, path):
    """MultiheadAttention(x, x, x) in eval mode, no masks: Q, K, V from one product, the
    heads' softmax(Q K^T / sqrt(d)) V, out_proj."""
    E, H, d = m.embed_dim, m.num_heads, m.head_dim
    at = _At(g, m, path)
    if not m.batch_first:
        x = g.node("Transpose", [x], perm=[1, 0, 2])                 # (N, L, E)
    w = g.const(m.in_proj_weight.data.T, f"{path}.in_proj_weight^T")
    qkv = g.node("MatMul", [x, w])
    if m.in_proj_bias is not None:
        qkv = g.node("Add", [qkv, at.param(m.in_proj_bias, "in_proj_bias")])
    q, k, v = g.node("Split", [qkv], [g.name("q"), g.name("k"), g.name("v")], axis=-1, num_outputs=3)
    heads = [g.node("Transpose", [g.node("Reshape", [t, g.ints([0, 0, H, d])])], perm=[0, 2, 1, 3])
             for t in (q, k, v)]                                     # (N, H, L, d)
    scores = g.node("Mul", [g.node("MatMul", [heads[0], g.node("Transpose", [heads[1]], perm=[0, 1, 3, 2])]),
                            g.const(1 / np.sqrt(d))])
    o = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), heads[2]])
    o = g.node("Reshape", [g.node("Transpose", [o], perm=[0, 2, 1, 3]), g.ints([0, 0, E])])
    y = _linear(m.out_proj, _At(g, m.out_proj, f"{path}.out_proj"), [o], None)
    return y if m.batch_first else g.node("Transpose", [y], perm=[1, 0, 2])


def _causal_attention(m, g, names, samples):
    """nanoGPT's: c_attn, heads, softmax(Q K^T / sqrt(d) masked to j <= i) V, c_proj; the
    mask a lower triangle (Trilu) of ones of the input's T x T, made in the graph."""
    C, H = m.n_embd, m.n_head
    d = C // H
    x = _x(names)
    qkv = _linear(m.c_attn, _At(g.g, m.c_attn, _join(g.path, "c_attn")), [x], None)
    q, k, v = g.node("Split", [qkv], [g.name("q"), g.name("k"), g.name("v")], axis=-1, num_outputs=3)
    heads = [g.node("Transpose", [g.node("Reshape", [t, g.ints([0, 0, H, d])])], perm=[0, 2, 1, 3])
             for t in (q, k, v)]                                     # (B, H, T, d)
    scores = g.node("Mul", [g.node("MatMul", [heads[0], g.node("Transpose", [heads[1]], perm=[0, 1, 3, 2])]),
                            g.const(1 / np.sqrt(d))])
    t = g.node("Slice", [g.node("Shape", [x]), g.ints([1]), g.ints([2])])
    ones = g.node("ConstantOfShape", [g.node("Concat", [t, t], axis=0)],
                  value=_tensor(np.ones(1, np.float32)))
    allowed = g.node("Cast", [g.node("Trilu", [ones], upper=0)], to=9)          # 9: BOOL
    scores = g.node("Where", [allowed, scores, g.const(-np.inf)])
    o = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), heads[2]])
    o = g.node("Reshape", [g.node("Transpose", [o], perm=[0, 2, 1, 3]), g.ints([0, 0, C])])
    return _linear(m.c_proj, _At(g.g, m.c_proj, _join(g.path, "c_proj")), [o], None)


def _gpt_mlp(m, g, names, samples):
    """c_proj(GELU(c_fc(x))); the dropout is the identity."""
    h = _linear(m.c_fc, _At(g.g, m.c_fc, _join(g.path, "c_fc")), names, None)
    h = g.node("Gelu", [h], approximate=m.gelu.params["approximate"])
    return _linear(m.c_proj, _At(g.g, m.c_proj, _join(g.path, "c_proj")), [h], None)


def _gpt_block(m, g, names, samples):
    """h = x + attn(ln_1(x)), y = h + mlp(ln_2(h))."""
    def branch(norm, f, name_n, name_f, x):
        y = _layer_norm(norm, _At(g.g, norm, _join(g.path, name_n)), [x], None)
        return g.node("Add", [x, TO_ONNX[type(f)](f, _At(g.g, f, _join(g.path, name_f)), [y], None)])
    h = branch(m.ln_1, m.attn, "ln_1", "attn", _x(names))
    return branch(m.ln_2, m.mlp, "ln_2", "mlp", h)


def _gpt(m, g, names, samples):
    """Token ids (B, T) -> logits: Gather(wte) + wpe[:T], the blocks, ln_f, and the head
    (wte's own initializer, transposed in the graph, when tied)."""
    idx = _x(names)
    t = g.node("Slice", [g.node("Shape", [idx]), g.ints([1]), g.ints([2])])
    wte = g.param(m.wte.weight, "wte.weight")
    x = g.node("Add", [g.node("Gather", [wte, idx], axis=0),
                       g.node("Slice", [g.param(m.wpe.weight, "wpe.weight"), g.ints([0]), t, g.ints([0])])])
    for i, block in enumerate(m.h):
        x = _gpt_block(block, _At(g.g, block, _join(g.path, f"h.{i}")), [x], None)
    x = _layer_norm(m.ln_f, _At(g.g, m.ln_f, _join(g.path, "ln_f")), [x], None)
    if m.tie_weights:
        return g.node("MatMul", [x, g.node("Transpose", [wte], perm=[1, 0])])
    return _linear(m.lm_head, _At(g.g, m.lm_head, _join(g.path, "lm_head")), [x], None)


def _join(path, name):
    return f"{path}.{name}" if path else name


def _encoder_layer(m, g, names, samples):
    """post-norm: h = norm1(x + sa(x)), y = norm2(h + ff(h)); pre-norm: h = x + sa(norm1(x)),
    y = h + ff(norm2(h)); ff = linear2(activation(linear1)), Dropout the identity."""
    def run(module, name, x):          # linear, norm, activation: none needs a sample
        path = f"{g.path}.{name}" if g.path else name
        if type(module) not in TO_ONNX:
            raise TypeError(f"to_onnx: {type(module).__name__} (at {path!r}) has no ONNX export")
        return TO_ONNX[type(module)](module, _At(g.g, module, path), [x], None)

    def sa(x):
        return _self_attention(m.self_attn, g.g, x, f"{g.path}.self_attn" if g.path else "self_attn")

    def ff(x):
        return run(m.linear2, "linear2", run(m.activation, "activation", run(m.linear1, "linear1", x)))

    x = _x(names)
    if m.norm_first:
        h = g.node("Add", [x, sa(run(m.norm1, "norm1", x))])
        return g.node("Add", [h, ff(run(m.norm2, "norm2", h))])
    h = run(m.norm1, "norm1", g.node("Add", [x, sa(x)]))
    return run(m.norm2, "norm2", g.node("Add", [h, ff(h)]))


# -- composites -------------------------------------------------------------------------------

def _sequential(m, g, names, samples):
    for name, c in m._modules.items():
        names, samples = g.child(c, name, names, samples)
    return g.done(names, samples)


def _residual(m, g, names, samples):
    fx, fs = g.child(m.f, "f", names, samples)
    sx, ss = (names, samples) if m.shortcut is None else g.child(m.shortcut, "shortcut", names, samples)
    return g.done([g.node("Add", [sx[0], fx[0]])], [ss[0] + fs[0]])


def _parallel(m, g, names, samples):
    outs, outs_s = [], []
    for name, b in m._modules.items():
        o, s = g.child(b, name, names, samples)
        outs.append(o[0])
        outs_s.append(s[0])
    if m.merge == "tuple":
        return g.done(outs, outs_s)
    if m.merge == "concat":
        return g.done([g.node("Concat", outs, axis=m.dim)], [np.concatenate(outs_s, axis=m.dim)])
    y = outs[0]
    for o in outs[1:]:
        y = g.node("Add", [y, o])
    return g.done([y], [sum(outs_s)])


G = nn.GENERATED
TO_ONNX = {
    nn.Linear: _linear,
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.ConvTranspose2d: _conv,
    nn.BatchNorm1d: _batch_norm, nn.BatchNorm2d: _batch_norm,
    nn.LayerNorm: _layer_norm, nn.GroupNorm: _group_norm, nn.RMSNorm: _rms_norm,
    nn.PReLU: _prelu,
    nn.InstanceNorm1d: _instance_norm, nn.InstanceNorm2d: _instance_norm,
    nn.LocalResponseNorm: _local_response_norm,
    **{getattr(nn, f"{kind}Pad{d}d"): _pad for kind in ("Zero", "Constant", "Reflection", "Replication", "Circular")
       for d in (1, 2)},
    nn.Dropout: _op("Identity"),            # evaluation mode
    nn.Flatten: _reshape, nn.Unflatten: _reshape,
    nn.MaxPool2d: _max_pool, nn.AvgPool2d: _avg_pool, nn.AdaptiveAvgPool2d: _adaptive_avg_pool,
    nn.Standardize: _standardize, nn.GLU: _glu,
    **{getattr(nn, name): _recurrent for name in ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")},
    nn.GPTMLP: _gpt_mlp,
    nn.CausalSelfAttention: _causal_attention, nn.GPTBlock: _gpt_block, nn.GPT: _gpt,
    nn.Embedding: _embedding, nn.LearnedPositionalEmbedding: _positional,
    nn.SinusoidalPositionalEmbedding: _positional, nn.TransformerEncoderLayer: _encoder_layer,
    nn.Sequential: _sequential, nn.MLP: _sequential, nn.Residual: _residual, nn.Parallel: _parallel,
    G["Sigmoid"]: _op("Sigmoid"), G["Tanh"]: _op("Tanh"), G["ReLU"]: _op("Relu"),
    G["LeakyReLU"]: _op("LeakyRelu", alpha=lambda p: p["negative_slope"]),
    G["ELU"]: _op("Elu", alpha=lambda p: p["alpha"]), G["CELU"]: _op("Celu", alpha=lambda p: p["alpha"]),
    G["SELU"]: _op("Selu", alpha=1.6732632423543772, gamma=1.0507009873554805),   # torch's constants
    G["ReLU6"]: _relu6, G["SiLU"]: _silu, G["Mish"]: _op("Mish"),
    G["GELU"]: _op("Gelu", approximate=lambda p: p["approximate"]),
    G["Softplus"]: _softplus,
    G["Hardsigmoid"]: _op("HardSigmoid", alpha=1 / 6, beta=0.5), G["Hardswish"]: _op("HardSwish"),
    G["Identity"]: _op("Identity"),
    G["Hardtanh"]: _hardtanh, G["Softsign"]: _op("Softsign"), G["LogSigmoid"]: _log_sigmoid,
    G["Tanhshrink"]: _tanhshrink, G["Threshold"]: _threshold,
    G["Softshrink"]: _op("Shrink", lambd=lambda p: p["lambd"], bias=lambda p: p["lambd"]),
    G["Hardshrink"]: _op("Shrink", lambd=lambda p: p["lambd"], bias=0.0),
    G["Softmax"]: _op("Softmax", axis=lambda p: p["dim"]),
    G["LogSoftmax"]: _op("LogSoftmax", axis=lambda p: p["dim"]),
    G["Softmin"]: lambda m, g, names, samples: g.node("Softmax", [g.node("Neg", [_x(names)])], axis=m.params["dim"]),
    G["Softmax2d"]: _op("Softmax", axis=-3),               # over the channels of (N, C, H, W) or (C, H, W)
    G["SumNormalize"]: _sum_normalize, G["LpNorm"]: _lp_norm,
    G["Add"]: lambda m, g, names, samples: g.node("Add", names[:2]),
    G["Mul"]: lambda m, g, names, samples: g.node("Mul", names[:2]),
    G["Concat"]: lambda m, g, names, samples: g.node("Concat", names, axis=m.params["dim"]),
    G["Split"]: _split,
}
del G

# handydl modules without an export, and why
NOT_EXPORTED = {
    "ModuleList": "a container without a forward", "ModuleDict": "a container without a forward",
    "Bilinear": "it takes two inputs; the export takes one model input",
    "MultiheadAttention": "it takes three inputs (query, key, value); its self-attention is exported "
                          "inside a TransformerEncoderLayer",
}


def _tensor(a):
    from onnx import numpy_helper
    return numpy_helper.from_array(a)
