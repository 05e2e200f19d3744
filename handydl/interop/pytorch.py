"""handydl models to torch.nn modules and back.

``to_torch(model)`` returns a ``torch.nn.Module`` that computes what ``model``
computes, with the same weights (copied, in the model's dtype), the same child
names (so ``state_dict()`` keys are handydl's), the same training or eval
mode, and the same gradients under autograd.  Two differences of layout:
handydl's ``Linear.weight`` is (in, out), torch's (out, in), so it is
transposed; everything else (convolution, normalization, PReLU) has
PyTorch's layout already.  ``from_torch(module)`` goes the other way for the
torch.nn layers that handydl has.

Both directions are tables keyed by module class (``TO_TORCH``,
``FROM_TORCH``): adding a module is one entry, a function
``(module, converter) -> converted module``.  The converter keeps a memo, so
a module used in two places becomes one module used in two places, and a
Parameter shared by two modules (a tied weight) becomes one shared Parameter.

torch is imported inside the functions: handydl never needs it otherwise.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import nn

# -- handydl -> torch ------------------------------------------------------------------------


def to_torch(model):
    """A ``torch.nn.Module`` equivalent to the handydl ``model`` (see the module docstring).

    TypeError naming the module (and its place in the tree) for a class with no
    entry in ``TO_TORCH``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_torch: expected a handydl Module, got {type(model).__name__}")
    return _ToTorch().convert(model, "")



def _converted(source, target, modules):
    """``target`` (the conversion of ``source``) in ``source``'s mode, each converted child in
    its own source's mode (train() sets them all), remembered so a shared module converts once."""
    target.train(source.training)
    for name, sub in source.named_modules():
        if name and id(sub) in modules:
            modules[id(sub)].training = sub.training
    modules[id(source)] = target
    return target

class _ToTorch:
    def __init__(self):
        import torch
        from . import _torch_modules
        self.torch, self.nn, self.wrap = torch, torch.nn, _torch_modules
        self.modules, self.params = {}, {}

    def convert(self, m, path):
        if id(m) in self.modules:                   # a module used twice stays one module
            return self.modules[id(m)]
        fn = TO_TORCH.get(type(m))
        if fn is None:
            raise TypeError(f"to_torch: {type(m).__name__} (at {path or 'the root'!r}) has no torch "
                            f"counterpart; supported: {', '.join(sorted(c.__name__ for c in TO_TORCH))}. "
                            "Add one with handydl.interop.TO_TORCH[YourClass] = fn(module, converter)")
        t = fn(m, self.child(path))
        return _converted(m, t, self.modules)

    def child(self, path):
        """The converter as seen from ``path``: c(child module, name) converts a child."""
        outer = self

        class At:
            torch, nn, wrap = outer.torch, outer.nn, outer.wrap

            def __call__(self, m, name):
                return None if m is None else outer.convert(m, f"{path}.{name}" if path else name)

            param, buffer, dtype = outer.param, outer.buffer, outer.dtype

            def children(self, m):
                return OrderedDict((name, self(c, name)) for name, c in m._modules.items())
        return At()

    def dtype(self, array):
        return self.torch.from_numpy(np.empty(0, np.asarray(array).dtype)).dtype

    def buffer(self, array):
        return self.torch.from_numpy(np.array(array, copy=True))

    def param(self, p, transpose=False):
        """The torch Parameter of handydl Parameter ``p`` (transposed for a Linear weight);
        one torch Parameter for a Parameter shared by several modules."""
        known = self.params.get(id(p))
        if known is not None:
            if known[1] != transpose:
                raise ValueError(f"to_torch: a Parameter of shape {p.shape} is shared by a Linear weight "
                                 "(transposed in torch) and by a module that keeps it as it is; torch "
                                 "cannot hold one tensor in both layouts")
            return known[0]
        data = np.array(p.data.T if transpose else p.data, copy=True, order="C")
        t = self.torch.nn.Parameter(self.torch.from_numpy(data))
        self.params[id(p)] = (t, transpose)
        return t


def _set(t, **params):
    """Replace the torch module's parameters (None: leave it absent)."""
    for name, value in params.items():
        if value is not None:
            setattr(t, name, value)
    return t


def _linear_to(m, c):
    t = c.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=c.dtype(m.weight.data))
    return _set(t, weight=c.param(m.weight, transpose=True), bias=m.bias and c.param(m.bias))


def _affine_to(t, m, c):
    """weight and bias when they are Parameters (affine), else torch's own absence."""
    if isinstance(m.weight, nn.Parameter):
        _set(t, weight=c.param(m.weight), bias=m.bias and c.param(m.bias))
    return t


def _weight_dtype(m, c):
    return c.dtype(m.weight.data if isinstance(m.weight, nn.Parameter) else m.weight)


def _batch_norm_to(m, c):
    cls = c.nn.BatchNorm2d if isinstance(m, nn.BatchNorm2d) else c.nn.BatchNorm1d
    t = cls(m.num_features, eps=m.params["eps"], momentum=m.momentum, affine=m.affine,
            track_running_stats=m.track_running_stats, dtype=_weight_dtype(m, c),
            bias=not (m.affine and m.bias is None))
    if m.track_running_stats:
        t.running_mean.copy_(c.buffer(m.running_mean))
        t.running_var.copy_(c.buffer(m.running_var))
        t.num_batches_tracked.fill_(int(m.num_batches_tracked))
    return _affine_to(t, m, c)


def _layer_norm_to(m, c):
    t = c.nn.LayerNorm(m.normalized_shape, eps=m.params["eps"], elementwise_affine=m.elementwise_affine,
                       bias=not (m.elementwise_affine and m.bias is None), dtype=_weight_dtype(m, c))
    return _affine_to(t, m, c)


def _rms_norm_to(m, c):
    t = c.nn.RMSNorm(m.normalized_shape, eps=m.params["eps"], elementwise_affine=m.elementwise_affine,
                     dtype=c.dtype(m.weight.data if m.weight is not None else m._ones))
    return _set(t, weight=m.weight and c.param(m.weight))


def _group_norm_to(m, c):
    t = c.nn.GroupNorm(m.num_groups, m.num_channels, eps=m.params["eps"], affine=m.affine,
                       dtype=_weight_dtype(m, c), bias=not (m.affine and m.bias is None))
    return _affine_to(t, m, c)


def _bilinear_to(m, c):
    t = c.nn.Bilinear(m.in1_features, m.in2_features, m.out_features, bias=m.bias is not None,
                      dtype=c.dtype(m.weight.data))
    return _set(t, weight=c.param(m.weight), bias=m.bias and c.param(m.bias))     # the same layout


def _instance_norm_to(m, c):
    t = getattr(c.nn, type(m).__name__)(m.num_features, eps=m.params["eps"], momentum=m.momentum,
                                        affine=m.affine, track_running_stats=m.track_running_stats,
                                        dtype=c.dtype(m._ones), bias=not (m.affine and m.bias is None))
    if m.track_running_stats:
        t.running_mean.copy_(c.buffer(m.running_mean))
        t.running_var.copy_(c.buffer(m.running_var))
        t.num_batches_tracked.fill_(int(m.num_batches_tracked))
    return _affine_to(t, m, c) if m.affine else t


def _pad_to(m, c):
    """torch.nn's padding module of the same name: its padding tuple, and value for ConstantPad."""
    cls = getattr(c.nn, type(m).__name__)
    return cls(m.padding, m.params["value"]) if type(m).__name__.startswith("ConstantPad") else cls(m.padding)


def _conv_to(m, c):
    cls = getattr(c.nn, type(m).__name__)
    kwargs = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups,
                  bias=m.bias is not None, padding_mode=m.padding_mode, dtype=c.dtype(m.weight.data))
    if m.transposed:
        kwargs["output_padding"] = m.output_padding
    t = cls(m.in_channels, m.out_channels, m.kernel_size, **kwargs)
    return _set(t, weight=c.param(m.weight), bias=m.bias and c.param(m.bias))


def _prelu_to(m, c):
    t = c.nn.PReLU(m.weight.shape[0], dtype=c.dtype(m.weight.data))
    return _set(t, weight=c.param(m.weight))


def _recurrent_to(m, c):
    """RNN, LSTM, GRU and their cells: torch.nn's class of the same name, arguments and
    parameter names (weight_ih_l0, ..., weight_ih, bias_hh), the same layouts."""
    config = m.get_config()
    config.pop("dtype")
    t = getattr(c.nn, type(m).__name__)(**config, dtype=c.dtype(next(iter(m._params.values())).data))
    return _set(t, **{name: c.param(p) for name, p in m._params.items() if p is not None})


def _embedding_to(m, c):
    t = c.nn.Embedding(m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx,
                       dtype=c.dtype(m.weight.data))
    return _set(t, weight=c.param(m.weight))


def _attention_to(m, c):
    """torch.nn.MultiheadAttention: in_proj_* as they are, out_proj's weight transposed."""
    t = c.nn.MultiheadAttention(m.embed_dim, m.num_heads, dropout=m.dropout, bias=m.in_proj_bias is not None,
                                batch_first=m.batch_first, dtype=c.dtype(m.in_proj_weight.data))
    _set(t, in_proj_weight=c.param(m.in_proj_weight), in_proj_bias=m.in_proj_bias and c.param(m.in_proj_bias))
    _set(t.out_proj, weight=c.param(m.out_proj.weight, transpose=True),
         bias=m.out_proj.bias and c.param(m.out_proj.bias))
    t.out_proj.train(m.out_proj.training)
    return t


def _encoder_layer_to(m, c):
    config = m.get_config()
    t = c.nn.TransformerEncoderLayer(**{k: v for k, v in config.items() if k != "dtype"},
                                     dtype=c.dtype(m.linear1.weight.data))
    for name in ("self_attn", "linear1", "linear2", "norm1", "norm2", "dropout", "dropout1", "dropout2"):
        setattr(t, name, c(getattr(m, name), name))
    return t


def _gpt_to(m, c):
    """nanoGPT's modules as small torch modules with the same child names; a tied head is
    wte's weight itself (F.linear(x, wte.weight)), so the tie holds in torch."""
    ch = c.children(m)
    return c.wrap.GPT(ch["wte"], ch["wpe"], ch["drop"], ch["h"], ch["ln_f"], ch.get("lm_head"))


def _sequential_to(m, c):
    children = c.children(m)
    # handydl passes a tuple of outputs on as several inputs; torch.nn.Sequential does not
    many = any(isinstance(x, nn.Split) or isinstance(x, nn.Parallel) and x.merge == "tuple" for x in m)
    return (c.wrap.Sequential if many else c.nn.Sequential)(children)


def _same_name(torch_name=None):
    """A generated handydl module whose torch.nn class has the same name and arguments."""
    return lambda m, c: getattr(c.nn, torch_name or type(m).__name__)(**m.params)


def _wrapper(name):
    return lambda m, c: getattr(c.wrap, name)(**m.params)


# the torch.nn classes with the name and arguments of handydl's generated ones
SAME_NAMED = ("Sigmoid", "Tanh", "ReLU", "LeakyReLU", "ELU", "CELU", "SELU", "ReLU6", "GELU", "SiLU",
              "Mish", "Softplus", "Hardsigmoid", "Hardswish", "Identity", "Softmax", "LogSoftmax",
              "Hardtanh", "Softsign", "LogSigmoid", "Tanhshrink", "Softshrink", "Hardshrink", "Threshold",
              "Softmin", "Softmax2d", "LocalResponseNorm")
WRAPPED = ("SumNormalize", "LpNorm", "Add", "Mul", "Concat", "Split")

TO_TORCH = {
    nn.Linear: _linear_to,
    nn.BatchNorm1d: _batch_norm_to, nn.BatchNorm2d: _batch_norm_to,
    nn.LayerNorm: _layer_norm_to, nn.GroupNorm: _group_norm_to, nn.RMSNorm: _rms_norm_to,
    nn.Conv1d: _conv_to, nn.Conv2d: _conv_to, nn.ConvTranspose2d: _conv_to,
    nn.PReLU: _prelu_to,
    nn.InstanceNorm1d: _instance_norm_to, nn.InstanceNorm2d: _instance_norm_to,
    nn.Bilinear: _bilinear_to,
    **{getattr(nn, f"{kind}Pad{d}d"): _pad_to for kind in ("Zero", "Constant", "Reflection", "Replication", "Circular")
       for d in (1, 2)},
    nn.Dropout: lambda m, c: c.nn.Dropout(m.params["p"]),
    nn.Flatten: lambda m, c: c.nn.Flatten(m.start_dim, m.end_dim),
    nn.Unflatten: lambda m, c: c.nn.Unflatten(m.dim, m.unflattened_size),
    nn.MaxPool2d: lambda m, c: c.nn.MaxPool2d(**m.params),
    nn.AvgPool2d: lambda m, c: c.nn.AvgPool2d(**m.params),
    nn.AdaptiveAvgPool2d: lambda m, c: c.nn.AdaptiveAvgPool2d(**m.params),
    nn.GLU: lambda m, c: c.nn.GLU(m.dim),
    nn.Standardize: lambda m, c: c.wrap.Standardize(c.buffer(m.mean), c.buffer(m.std)),
    nn.Sequential: _sequential_to, nn.MLP: _sequential_to,
    nn.ModuleList: lambda m, c: c.nn.ModuleList(c.children(m).values()),
    nn.ModuleDict: lambda m, c: c.nn.ModuleDict(c.children(m)),
    nn.Residual: lambda m, c: c.wrap.Residual(c(m.f, "f"), c(m.shortcut, "shortcut")),
    nn.Parallel: lambda m, c: c.wrap.Parallel(list(c.children(m).items()), m.merge, m.dim),
    nn.Embedding: _embedding_to, nn.MultiheadAttention: _attention_to,
    nn.GPT: _gpt_to,
    nn.GPTBlock: lambda m, c: c.wrap.GPTBlock(*c.children(m).values()),
    nn.GPTMLP: lambda m, c: c.wrap.GPTMLP(*c.children(m).values()),
    nn.CausalSelfAttention: lambda m, c: c.wrap.CausalSelfAttention(
        c(m.c_attn, "c_attn"), c(m.c_proj, "c_proj"), c(m.resid_dropout, "resid_dropout"), m.n_head, m.dropout),
    nn.TransformerEncoderLayer: _encoder_layer_to,
    nn.LearnedPositionalEmbedding: lambda m, c: c.wrap.LearnedPositionalEmbedding(c.param(m.weight)),
    nn.SinusoidalPositionalEmbedding: lambda m, c: c.wrap.SinusoidalPositionalEmbedding(c.buffer(m.pe)),
    **{getattr(nn, name): _recurrent_to for name in ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")},
    **{nn.GENERATED[name]: _same_name() for name in SAME_NAMED},
    **{nn.GENERATED[name]: _wrapper(name) for name in WRAPPED},
}


# -- torch -> handydl ------------------------------------------------------------------------

def from_torch(module):
    """The handydl module equivalent to the torch ``module`` (weights copied, in their
    dtype; a Linear weight transposed to handydl's (in, out)).  Sequential children
    are numbered 0, 1, ... as handydl's Sequential numbers them.

    TypeError naming the torch class (and where it stands) for a layer handydl does
    not have (an entry of ``FROM_TORCH`` adds one)."""
    import torch
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    return _FromTorch().convert(module, "")


class _FromTorch:
    def __init__(self):
        import torch
        from . import _torch_modules
        self.torch, self.wrap = torch, _torch_modules
        self.modules, self.params = {}, {}

    def key(self, cls):
        """FROM_TORCH's key of a torch class: its torch.nn name, or "handydl.<name>"
        for this bridge's wrapper modules; None for any other class (user subclasses
        included, whose forward may differ)."""
        name = cls.__name__
        if getattr(self.torch.nn, name, None) is cls:
            return name
        if getattr(self.wrap, name, None) is cls:
            return f"handydl.{name}"
        return None

    def convert(self, t, path):
        if id(t) in self.modules:
            return self.modules[id(t)]
        key = self.key(type(t))
        fn = FROM_TORCH.get(key)
        if fn is None:
            cls = type(t)
            raise TypeError(f"from_torch: {cls.__module__}.{cls.__qualname__} (at {path or 'the root'!r}) "
                            f"is not supported; supported torch.nn layers: "
                            f"{', '.join(sorted(k for k in FROM_TORCH if '.' not in k))}")
        m = fn(t, self.child(path))
        return _converted(t, m, self.modules)

    def child(self, path):
        outer = self

        class At:
            def __call__(self, t, name):
                return None if t is None else outer.convert(t, f"{path}.{name}" if path else name)

            param, array = outer.param, staticmethod(_array)

            def children(self, t):
                # _modules, not named_children(), which lists a module used twice once
                return [self(c, name) for name, c in t._modules.items() if c is not None]
        return At()

    def param(self, t, transpose=False):
        known = self.params.get(id(t))
        if known is not None:
            if known[1] != transpose:
                raise ValueError(f"from_torch: a Parameter of shape {tuple(t.shape)} is shared by a "
                                 "Linear weight (transposed in handydl) and by a module that keeps it "
                                 "as it is; handydl cannot hold one array in both layouts")
            return known[0]
        data = _array(t)
        p = nn.Parameter(np.ascontiguousarray(data.T) if transpose else data)
        self.params[id(t)] = (p, transpose)
        return p


def _array(t):
    return t.detach().cpu().numpy().copy()


def _np_dtype(t):
    return _array(t.weight[:0] if t.weight is not None else t.running_mean[:0]).dtype


def _put(m, **params):
    for name, p in params.items():
        if p is not None:
            setattr(m, name, p)
    return m


def _linear_from(t, c):
    m = nn.Linear(t.in_features, t.out_features, bias=t.bias is not None, dtype=_np_dtype(t))
    return _put(m, weight=c.param(t.weight, transpose=True), bias=t.bias is not None and c.param(t.bias) or None)


def _affine_from(m, t, c):
    if t.weight is not None:
        _put(m, weight=c.param(t.weight), bias=c.param(t.bias) if t.bias is not None else None)
    return m


def _batch_norm_from(t, c):
    cls = nn.BatchNorm2d if type(t).__name__ == "BatchNorm2d" else nn.BatchNorm1d
    dtype = _np_dtype(t) if (t.weight is not None or t.running_mean is not None) else np.float32
    m = cls(t.num_features, eps=t.eps, momentum=t.momentum, affine=t.affine,
            track_running_stats=t.track_running_stats, dtype=dtype,
            bias=not (t.affine and t.bias is None))
    if t.track_running_stats:
        m.running_mean, m.running_var = c.array(t.running_mean), c.array(t.running_var)
        m.num_batches_tracked = np.array(int(t.num_batches_tracked), np.int64)
    return _affine_from(m, t, c)


def _layer_norm_from(t, c):
    dtype = _np_dtype(t) if t.weight is not None else np.float32
    m = nn.LayerNorm(tuple(t.normalized_shape), eps=t.eps, elementwise_affine=t.elementwise_affine,
                     bias=not (t.elementwise_affine and t.bias is None), dtype=dtype)
    return _affine_from(m, t, c)


def _rms_norm_from(t, c):
    m = nn.RMSNorm(tuple(t.normalized_shape), eps=t.eps, elementwise_affine=t.elementwise_affine,
                   dtype=_np_dtype(t) if t.weight is not None else np.float32)
    return _put(m, weight=c.param(t.weight) if t.weight is not None else None)


def _group_norm_from(t, c):
    dtype = _np_dtype(t) if t.weight is not None else np.float32
    m = nn.GroupNorm(t.num_groups, t.num_channels, eps=t.eps, affine=t.affine, dtype=dtype,
                     bias=not (t.affine and t.bias is None))
    return _affine_from(m, t, c)


def _conv_from(t, c):
    cls = getattr(nn, type(t).__name__)
    kwargs = dict(stride=t.stride, padding=t.padding, dilation=t.dilation, groups=t.groups,
                  bias=t.bias is not None, padding_mode=t.padding_mode, dtype=_np_dtype(t))
    if type(t).__name__ == "ConvTranspose2d":
        kwargs["output_padding"] = t.output_padding
    m = cls(t.in_channels, t.out_channels, t.kernel_size, **kwargs)
    return _put(m, weight=c.param(t.weight), bias=c.param(t.bias) if t.bias is not None else None)


def _bilinear_from(t, c):
    m = nn.Bilinear(t.in1_features, t.in2_features, t.out_features, bias=t.bias is not None, dtype=_np_dtype(t))
    return _put(m, weight=c.param(t.weight), bias=c.param(t.bias) if t.bias is not None else None)


def _instance_norm_from(t, c):
    dtype = _np_dtype(t) if (t.weight is not None or t.running_mean is not None) else np.float32
    m = getattr(nn, type(t).__name__)(t.num_features, eps=t.eps, momentum=t.momentum, affine=t.affine,
                                      track_running_stats=t.track_running_stats, dtype=dtype,
                                      bias=not (t.affine and t.bias is None))
    if t.track_running_stats:
        m.running_mean, m.running_var = c.array(t.running_mean), c.array(t.running_var)
        m.num_batches_tracked = np.array(int(t.num_batches_tracked), np.int64)
    return _affine_from(m, t, c)


def _pad_from(t, c):
    cls = getattr(nn, type(t).__name__)
    return cls(tuple(t.padding), t.value) if type(t).__name__.startswith("ConstantPad") else cls(tuple(t.padding))


def _prelu_from(t, c):
    m = nn.PReLU(t.num_parameters, dtype=_np_dtype(t))
    return _put(m, weight=c.param(t.weight))


def _recurrent_from(t, c):
    cls = getattr(nn, type(t).__name__)
    names = [n for n, _ in t.named_parameters(recurse=False)]
    config = dict(input_size=t.input_size, hidden_size=t.hidden_size, bias=t.bias,
                  dtype=_array(getattr(t, names[0])[:0]).dtype)
    if type(t).__name__ in ("RNN", "RNNCell"):
        config["nonlinearity"] = t.nonlinearity
    if not type(t).__name__.endswith("Cell"):
        if t.proj_size:
            config["proj_size"] = t.proj_size
        config.update(num_layers=t.num_layers, batch_first=t.batch_first, dropout=t.dropout,
                      bidirectional=t.bidirectional)
    m = cls(**config)
    return _put(m, **{name: c.param(getattr(t, name)) for name in names})


def _embedding_from(t, c):
    m = nn.Embedding(t.num_embeddings, t.embedding_dim, padding_idx=t.padding_idx, max_norm=t.max_norm,
                     scale_grad_by_freq=t.scale_grad_by_freq, sparse=t.sparse, dtype=_np_dtype(t))
    return _put(m, weight=c.param(t.weight))


def _attention_from(t, c):
    if not t._qkv_same_embed_dim or t.bias_k is not None or t.add_zero_attn:
        raise ValueError("from_torch: MultiheadAttention with kdim/vdim other than embed_dim, add_bias_kv "
                         "or add_zero_attn is not supported by handydl")
    bias = t.in_proj_bias is not None
    m = nn.MultiheadAttention(t.embed_dim, t.num_heads, dropout=t.dropout, bias=bias,
                              batch_first=t.batch_first, dtype=_array(t.in_proj_weight[:0]).dtype)
    _put(m, in_proj_weight=c.param(t.in_proj_weight), in_proj_bias=c.param(t.in_proj_bias) if bias else None)
    _put(m.out_proj, weight=c.param(t.out_proj.weight, transpose=True),
         bias=c.param(t.out_proj.bias) if t.out_proj.bias is not None else None)
    m.out_proj.train(t.out_proj.training)
    return m


def _encoder_layer_from(t, c):
    import torch.nn.functional as F
    activation = {F.relu: "relu", F.gelu: "gelu"}.get(t.activation)
    if activation is None:
        activation = {"ReLU": "relu", "GELU": "gelu"}.get(type(t.activation).__name__)
    if activation is None:
        raise ValueError(f"from_torch: TransformerEncoderLayer(activation={t.activation!r}) is not supported; "
                         "handydl's takes 'relu' or 'gelu'")
    m = nn.TransformerEncoderLayer(t.self_attn.embed_dim, t.self_attn.num_heads, t.linear1.out_features,
                                   dropout=t.dropout.p, activation=activation, layer_norm_eps=t.norm1.eps,
                                   batch_first=t.self_attn.batch_first, norm_first=t.norm_first,
                                   bias=t.linear1.bias is not None, dtype=_np_dtype(t.linear1))
    for name in ("self_attn", "linear1", "linear2", "norm1", "norm2", "dropout", "dropout1", "dropout2"):
        setattr(m, name, c(getattr(t, name), name))
    return m


def _rebuilt(m, t, c):
    """The handydl module ``m`` (built with t's sizes) with each child replaced by t's, converted."""
    for name, child in t._modules.items():
        setattr(m, name, c(child, name) if child is not None else None)
    return m


def _gpt_from(t, c):
    block = t.h[0].attn if len(t.h) else None
    m = nn.GPT(t.wte.num_embeddings, t.wpe.num_embeddings, n_layer=max(len(t.h), 1),
               n_head=block.n_head if block else 1, n_embd=t.wte.embedding_dim,
               dropout=t.drop.p, bias=t.ln_f.bias is not None, tie_weights=t.lm_head is None,
               dtype=_np_dtype(t.wte))
    return _rebuilt(m, t, c)


def _softmax_from(cls):
    def convert(t, c):
        if t.dim is None:
            raise ValueError(f"from_torch: {type(t).__name__}(dim=None) picks its dim from the input's "
                             "rank (deprecated in torch); give it a dim")
        return cls(dim=t.dim)
    return convert


def _same_name_from(name):
    cls = nn.GENERATED[name]
    params = list(cls.op.params)
    return lambda t, c: cls(**{k: getattr(t, k) for k in params})


def _max_pool_from(t, c):
    if t.return_indices:
        raise ValueError("from_torch: MaxPool2d(return_indices=True) is not supported by handydl")
    return nn.MaxPool2d(t.kernel_size, t.stride, t.padding, t.dilation, ceil_mode=t.ceil_mode)


FROM_TORCH = {
    "Linear": _linear_from,
    "BatchNorm1d": _batch_norm_from, "BatchNorm2d": _batch_norm_from,
    "LayerNorm": _layer_norm_from, "GroupNorm": _group_norm_from, "RMSNorm": _rms_norm_from,
    "Conv1d": _conv_from, "Conv2d": _conv_from, "ConvTranspose2d": _conv_from,
    "PReLU": _prelu_from,
    "InstanceNorm1d": _instance_norm_from, "InstanceNorm2d": _instance_norm_from,
    "Bilinear": _bilinear_from,
    **{f"{kind}Pad{d}d": _pad_from for kind in ("Zero", "Constant", "Reflection", "Replication", "Circular")
       for d in (1, 2)},
    "Dropout": lambda t, c: nn.Dropout(t.p),
    "Flatten": lambda t, c: nn.Flatten(t.start_dim, t.end_dim),
    "Unflatten": lambda t, c: nn.Unflatten(t.dim, tuple(t.unflattened_size)),
    "MaxPool2d": _max_pool_from,
    "AvgPool2d": lambda t, c: nn.AvgPool2d(t.kernel_size, t.stride, t.padding, t.ceil_mode,
                                           t.count_include_pad, t.divisor_override),
    "AdaptiveAvgPool2d": lambda t, c: nn.AdaptiveAvgPool2d(t.output_size),
    "GLU": lambda t, c: nn.GLU(t.dim),
    "Embedding": _embedding_from, "MultiheadAttention": _attention_from,
    "TransformerEncoderLayer": _encoder_layer_from,
    "handydl.GPT": lambda t, c: _gpt_from(t, c),
    "handydl.GPTBlock": lambda t, c: _rebuilt(nn.GPTBlock(t.attn.c_attn.in_features, t.attn.n_head, t.attn.dropout,
                                                          t.attn.c_attn.bias is not None,
                                                          _np_dtype(t.attn.c_attn)), t, c),
    "handydl.GPTMLP": lambda t, c: _rebuilt(nn.GPTMLP(t.c_fc.in_features, t.dropout.p, t.c_fc.bias is not None,
                                                      _np_dtype(t.c_fc)), t, c),
    "handydl.CausalSelfAttention": lambda t, c: _rebuilt(nn.CausalSelfAttention(
        t.c_attn.in_features, t.n_head, t.dropout, t.c_attn.bias is not None, _np_dtype(t.c_attn)), t, c),
    "handydl.LearnedPositionalEmbedding": lambda t, c: _put(
        nn.LearnedPositionalEmbedding(*t.weight.shape, dtype=_np_dtype(t)), weight=c.param(t.weight)),
    "handydl.SinusoidalPositionalEmbedding": lambda t, c: nn.SinusoidalPositionalEmbedding(
        *t.pe.shape, dtype=_array(t.pe[:0]).dtype),
    **{name: _recurrent_from for name in ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")},
    "Sequential": lambda t, c: nn.Sequential(*c.children(t)),
    "ModuleList": lambda t, c: nn.ModuleList(c.children(t)),
    "ModuleDict": lambda t, c: nn.ModuleDict({name: c(x, name) for name, x in t._modules.items()}),
    **{name: _same_name_from(name) for name in SAME_NAMED if name not in ("Softmax", "LogSoftmax", "Softmin")},
    "Softmin": _softmax_from(nn.GENERATED["Softmin"]),
    "Softmax": _softmax_from(nn.GENERATED["Softmax"]),
    "LogSoftmax": _softmax_from(nn.GENERATED["LogSoftmax"]),
    # this bridge's own wrappers come back as what they were
    "handydl.Sequential": lambda t, c: nn.Sequential(*c.children(t)),
    "handydl.Residual": lambda t, c: nn.Residual(c(t.f, "f"), c(t.shortcut, "shortcut")),
    "handydl.Parallel": lambda t, c: nn.Parallel(*c.children(t), merge=t.merge, dim=t.dim),
    "handydl.Standardize": lambda t, c: nn.Standardize(c.array(t.mean), c.array(t.std)),
    **{f"handydl.{name}": (lambda name: lambda t, c: nn.GENERATED[name](
        **{k: getattr(t, k) for k in nn.GENERATED[name].op.params}))(name) for name in WRAPPED},
}
