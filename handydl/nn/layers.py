"""Modules that apply one registered op: activations (generated from the
registry), Linear, normalization, dropout, and the shape helpers Flatten and
Sequential."""
from __future__ import annotations

import inspect
import math

import numpy as np

from .. import ops
from .module import Module, Parameter, call_backward, check_gy, resolve_rng


class OpModule(Module):
    """Applies ``op`` to x and to ``self.op_inputs()`` (parameters or constant arrays).

    Backward accumulates the gradient of each Parameter among those inputs,
    after all of them are computed, so a failed call changes nothing.
    """

    op: ops.Op = None

    def __init__(self, **params):
        super().__init__()
        self.params = self.op.bind(params)

    def op_inputs(self):
        """The op's inputs after x: Parameters, arrays or None."""
        return ()

    def forward(self, x):
        return self._apply(self.op, x, self.op_inputs())[0]

    def _apply(self, op, x, extra, **params):
        """y = op(x, *extra); saves (op, what it saved, y's shape, extra) for backward
        and returns (y, what the op saved)."""
        arrays = [e.data if isinstance(e, Parameter) else e for e in extra]
        # self.params were validated at construction: no re-validation per call
        y, saved = op.run((x, *arrays), {**self.params, **params} if params else self.params)
        self.save(op, saved, np.shape(y), extra)
        return y, saved

    def backward(self, gy, input_grad=True):
        """dL/dx (None with ``input_grad=False``, when x is data), and dL/dparam
        accumulated into each Parameter, for the latest forward not yet
        differentiated.  Nothing changes if gy is refused."""
        op, saved, y_shape, extra = self._peek_saved()
        needs = (input_grad,) + tuple(isinstance(e, Parameter) for e in extra)
        grads = op.backward(saved, check_gy(gy, y_shape, type(self).__name__), needs=needs)
        self.saved()                             # consumed only once backward succeeded
        for e, g in zip(extra, grads[1:]):
            if isinstance(e, Parameter):
                e.accumulate(g, fresh=True)      # op outputs are new arrays
        return grads[0] if input_grad else None

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())

    def get_config(self):
        """Constructor arguments, for checkpoints (JSON-serializable)."""
        return dict(self.params)


class OpFunction(Module):
    """A parameter-free op with any number of inputs and outputs, as a module:
    ``y = m(*inputs)``, ``m.backward(*gys)`` returns one gradient per input (the
    array itself when there is one input), None meaning a zero upstream gradient."""

    op: ops.Op = None

    def __init__(self, **params):
        super().__init__()
        self.params = self.op.bind(params)

    def forward(self, *inputs):
        y, saved = self.op.run(inputs, self.params)
        outs = y if isinstance(y, tuple) else (y,)
        self.save(saved, [(np.shape(o), np.asarray(o).dtype) for o in outs], len(inputs))
        return y

    def backward(self, *gys, input_grad=True):
        saved, outs, n_inputs = self._peek_saved()
        who = type(self).__name__
        if len(gys) != len(outs):
            raise ValueError(f"{who}.backward: expected {len(outs)} upstream gradient(s), one per "
                             f"output, got {len(gys)}")
        gys = [np.zeros(shape, dtype) if g is None else check_gy(g, shape, who)
               for g, (shape, dtype) in zip(gys, outs)]
        grads = self.op.backward(saved, *gys) if input_grad else None
        self.saved()
        if not input_grad:
            return None
        return grads[0] if n_inputs == 1 else tuple(grads[:n_inputs])

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())

    def get_config(self):
        return dict(self.params)


# -- modules generated from the registry ---------------------------------------------------
# Every op that names a module (``module="LeakyReLU"`` in its @register) gets a
# class here, with the op's parameters as constructor arguments in declaration
# order (torch.nn's names and defaults), so that adding an activation is one file.

def _generated_class(op):
    """The module class ``op.module`` applying ``op`` (an OpModule for one input and
    output, an OpFunction otherwise); its docstring carries the formulas."""
    signature = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=v)
           for k, v in op.params.items()])

    def __init__(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{op.module}: {e}; expected {op.module}{_shown(signature)}") from None
        del bound.arguments["self"]
        base.__init__(self, **bound.arguments)

    __init__.__signature__ = signature
    base = OpModule if op.inputs == ("x",) and op.outputs == ("y",) else OpFunction
    doc = (f"{op.module}: the registered op {op.name!r} as a module.\n\n"
           f"    Forward:  {op.formula}\n    Backward: {op.derivative}\n"
           f"    At kinks: {op.convention}\n\n    {(op.fn.__doc__ or '').strip()}\n")
    return type(op.module, (base,), {"op": op, "__init__": __init__, "__doc__": doc,
                                          "__module__": __name__})


def _shown(signature):
    return "(" + ", ".join(str(p) for p in list(signature.parameters.values())[1:]) + ")"


GENERATED = {op.module: _generated_class(op) for op in ops.REGISTRY.values() if op.module}
globals().update(GENERATED)


class PReLU(OpModule):
    """Leaky ReLU with learned slopes: one in all, or one per channel (dim 1)."""

    op = ops.prelu

    def __init__(self, num_parameters=1, init=0.25, dtype=np.float32):
        ops.registry.check_int("PReLU", "num_parameters", num_parameters)
        ops.registry.check_real("PReLU", "init", init, "a finite number")
        super().__init__()
        self.weight = Parameter(np.full(num_parameters, init, dtype=dtype))

    def op_inputs(self):
        return (self.weight,)

    def get_config(self):
        return dict(num_parameters=self.weight.shape[0], dtype=self.weight.dtype.name)


def _activation_classes():
    """Activation modules by op name: the generated ones and PReLU (whose slope is a
    Parameter, so its class is written by hand)."""
    written = {"prelu": PReLU}
    return {name: written.get(name) or GENERATED[ops.get(name).module]
            for name in ops.names("activation")}


ACTIVATIONS = _activation_classes()


def activation(name, **params):
    """The module of a registered activation by its op name: ``activation("gelu")``."""
    try:
        cls = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid activations: "
                         f"{', '.join(ACTIVATIONS)}") from None
    return cls(**params)


# -- PyTorch 2.13's factory keywords --------------------------------------------------------

def _float_dtype(dtype, who):
    """A module's dtype: None is handydl's default, float32; a NumPy float dtype (or its name),
    or a torch float dtype by its name (torch.float64 is float64: torch is not imported)."""
    if dtype is None:
        return np.dtype(np.float32)
    name = str(dtype)
    try:
        dt = np.dtype(name[len("torch."):] if name.startswith("torch.") else dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise TypeError(f"{who}: dtype={dtype!r} is not valid; expected a float dtype "
                        "(np.float32, np.float64, or None for float32)")
    return dt


def _cpu_only(device, who):
    """device=None or "cpu" (as torch.device("cpu")): handydl computes with NumPy on the CPU."""
    if device is not None and str(device) != "cpu":
        raise ValueError(f"{who}: device={device!r} is not available; handydl computes with "
                         "NumPy on the CPU (device=None or 'cpu')")


# -- Linear ------------------------------------------------------------------------------

class Linear(OpModule):
    """y = x W + b with ``weight`` W of shape (in_features, out_features), as in the
    derivations (the transpose of torch.nn.Linear's).

    Initialized as PyTorch's default: W and b uniform in +-1/sqrt(in_features).
    Constructor arguments in torch.nn.Linear's order (``device`` None or "cpu",
    ``dtype`` None meaning float32); ``rng`` (a seed or a Generator) is handydl's.
    """

    op = ops.linear

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, rng=None):
        super().__init__()
        _cpu_only(device, "Linear")
        dtype = _float_dtype(dtype, "Linear")
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            ops.registry.check_int("Linear", name, n)      # a bool is not a size
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = resolve_rng(rng)
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (in_features, out_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype)) if bias else None

    def op_inputs(self):
        return (self.weight, self.bias)

    def forward(self, input):                   # torch's name: m(input=x) works
        return self._apply(self.op, input, self.op_inputs())[0]

    def get_config(self):
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias is not None, dtype=self.weight.dtype.name)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Bilinear(Module):
    """y_k = x1^T A_k x2 + b_k, as torch.nn.Bilinear: ``weight`` A of shape
    (out_features, in1_features, in2_features) (torch's layout), ``bias`` (out,).

    Initialized as PyTorch's default: A and b uniform in +-1/sqrt(in1_features).
    ``forward(input1, input2)``; ``backward(gy)`` returns (dL/dinput1, dL/dinput2)
    and accumulates dL/dA and dL/db.
    """

    op = ops.bilinear

    def __init__(self, in1_features, in2_features, out_features, bias=True, device=None, dtype=None, *,
                 rng=None):
        super().__init__()
        _cpu_only(device, "Bilinear")
        dtype = _float_dtype(dtype, "Bilinear")
        sizes = (("in1_features", in1_features), ("in2_features", in2_features), ("out_features", out_features))
        for name, n in sizes:
            ops.registry.check_int("Bilinear", name, n)
        self.in1_features, self.in2_features, self.out_features = (int(n) for _, n in sizes)
        rng = resolve_rng(rng)
        bound = 1 / math.sqrt(in1_features)
        shape = (self.out_features, self.in1_features, self.in2_features)
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, self.out_features).astype(dtype)) if bias else None

    def forward(self, input1, input2):
        b = None if self.bias is None else self.bias.data
        y, saved = self.op.run((input1, input2, self.weight.data, b), {})
        self.save(saved, np.shape(y))
        return y

    def backward(self, gy, input_grad=True):
        saved, y_shape = self._peek_saved()
        gx1, gx2, gA, gb = self.op.backward(saved, check_gy(gy, y_shape, "Bilinear"))
        self.saved()                             # consumed only once backward succeeded
        self.weight.accumulate(gA, fresh=True)
        if self.bias is not None:
            self.bias.accumulate(gb, fresh=True)
        return (gx1, gx2) if input_grad else None

    def get_config(self):
        return dict(in1_features=self.in1_features, in2_features=self.in2_features,
                    out_features=self.out_features, bias=self.bias is not None, dtype=self.weight.dtype.name)

    def extra_repr(self):
        return (f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")


# -- normalization -------------------------------------------------------------------------

class BatchNorm1d(OpModule):
    """Batch normalization over (N, C) or (N, C, L) input.

    Training: batch statistics (biased variance) normalize; the running mean and
    the running *unbiased* variance move by ``momentum`` (or a cumulative
    average when momentum is None).  Evaluation: the running statistics.

    An empty batch (N = 0) has no statistics: as PyTorch, the output is empty,
    the running statistics stay (only ``num_batches_tracked`` counts it), and
    the gradients of weight and bias are 0 (the affine map of the eval op,
    whose sums over no values are 0).

    Constructor arguments in torch.nn.BatchNorm1d's order; ``bias=False``
    (keyword, as PyTorch 2.13) keeps the weight and drops the bias (a constant
    0, ``self.bias`` None); ``device`` None or "cpu", ``dtype`` None meaning float32.
    """

    op = ops.batch_norm

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True):
        ops.registry.check_int("BatchNorm1d", "num_features", num_features)
        ops.normalization.check_eps("BatchNorm1d", eps)
        if momentum is not None:                   # None: a cumulative average
            ops.registry.check_real("BatchNorm1d", "momentum", momentum, "None or a number in [0, 1]",
                                       lambda m: 0 <= m <= 1)
        super().__init__(eps=eps)
        _cpu_only(device, "BatchNorm1d")
        dtype = _float_dtype(dtype, "BatchNorm1d")
        self.num_features, self.momentum, self.affine = num_features, momentum, affine
        self.track_running_stats = track_running_stats
        ones, zeros = np.ones(num_features, dtype), np.zeros(num_features, dtype)
        self.weight = Parameter(ones) if affine else ones
        self.bias = (Parameter(zeros) if bias else None) if affine else zeros
        self._no_bias = zeros.copy()                # the constant 0 of bias=False
        if track_running_stats:
            self.register_buffer("running_mean", zeros.copy())
            self.register_buffer("running_var", ones.copy())
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def op_inputs(self):
        return (self.weight, self._no_bias if self.bias is None else self.bias)

    def forward(self, input):                   # torch's name: m(input=x) works
        x = input
        if (self.training or not self.track_running_stats) and np.shape(x)[:1] == (0,):
            return self._empty_batch(x)
        if self.training or not self.track_running_stats:
            y, saved = self._apply(ops.batch_norm, x, self.op_inputs())
            if self.training and self.track_running_stats:
                self._update_running_stats(saved, np.shape(x))
            return y
        extra = self.op_inputs() + (self.running_mean, self.running_var)
        return self._apply(ops.batch_norm_eval, x, extra)[0]

    def _empty_batch(self, x, eval_op=ops.batch_norm_eval):
        """No values, no statistics: the eval op's affine map of nothing (weight and
        bias gradients 0); only num_batches_tracked counts the batch, as PyTorch."""
        w = np.asarray(self.weight.data if isinstance(self.weight, Parameter) else self.weight)
        stats = (np.zeros(w.shape, w.dtype), np.ones(w.shape, w.dtype))    # any: no value uses them
        y = self._apply(eval_op, x, self.op_inputs() + stats)[0]
        if self.training and self.track_running_stats:      # counted once the input is known good
            self.num_batches_tracked = self.num_batches_tracked + 1
        return y

    def _update_running_stats(self, saved, shape):
        m = math.prod(shape) // shape[1]                 # values per feature
        self.num_batches_tracked = self.num_batches_tracked + 1
        f = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        dtype = self.running_mean.dtype
        self.running_mean = ((1 - f) * self.running_mean + f * saved.mean).astype(dtype)
        self.running_var = ((1 - f) * self.running_var + f * saved.var * (m / (m - 1))).astype(dtype)

    def get_config(self):
        config = dict(num_features=self.num_features, eps=self.params["eps"], momentum=self.momentum,
                      affine=self.affine, track_running_stats=self.track_running_stats,
                      dtype=np.asarray(self.weight.data if self.affine else self.weight).dtype.name)
        if self.bias is None:
            config["bias"] = False
        return config

    def extra_repr(self):
        return f"{self.num_features}, eps={self.params['eps']}, momentum={self.momentum}"


class LayerNorm(OpModule):
    """Layer normalization over the last dims, ``normalized_shape``.

    Constructor arguments in torch.nn.LayerNorm's order: ``bias=False`` keeps
    the weight and drops the bias (a constant 0, ``self.bias`` None);
    ``device`` None or "cpu", ``dtype`` None meaning float32.
    """

    op = ops.layer_norm

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 device=None, dtype=None):
        single = isinstance(normalized_shape, (int, np.integer, bool, np.bool_, float, np.floating))
        shape = (normalized_shape,) if single else normalized_shape
        try:
            shape = tuple(shape)
        except TypeError:
            raise TypeError(f"LayerNorm: normalized_shape={normalized_shape!r} is not valid; expected "
                            "a positive integer or a sequence of them") from None
        for n in shape:
            try:
                ops.registry.check_int("LayerNorm", "normalized_shape", n)
            except (TypeError, ValueError) as e:       # named whole, as it was given
                raise type(e)(f"LayerNorm: normalized_shape={normalized_shape!r} is not valid; expected "
                              "a positive integer or a sequence of them") from None
        ops.normalization.check_eps("LayerNorm", eps)
        shape = tuple(int(n) for n in shape)
        super().__init__(eps=eps)
        _cpu_only(device, "LayerNorm")
        dtype = _float_dtype(dtype, "LayerNorm")
        self.normalized_shape = shape
        self.elementwise_affine = elementwise_affine
        ones, zeros = np.ones(shape, dtype), np.zeros(shape, dtype)
        self.weight = Parameter(ones) if elementwise_affine else ones
        self.bias = (Parameter(zeros) if bias else None) if elementwise_affine else zeros
        self._no_bias = zeros.copy()                # the constant 0 of bias=False

    def op_inputs(self):
        return (self.weight, self._no_bias if self.bias is None else self.bias)

    def forward(self, input):                   # torch's name: m(input=x) works
        return self._apply(self.op, input, self.op_inputs())[0]

    def get_config(self):
        w = self.weight.data if self.elementwise_affine else self.weight
        config = dict(normalized_shape=list(self.normalized_shape), eps=self.params["eps"],
                      elementwise_affine=self.elementwise_affine, dtype=w.dtype.name)
        if self.bias is None:
            config["bias"] = False
        return config


class RMSNorm(OpModule):
    """Root-mean-square normalization over the last dims, ``normalized_shape``:
    y = weight * x / sqrt(mean(x^2) + eps), as torch.nn.RMSNorm (eps None: the machine
    epsilon of the input's dtype; ``elementwise_affine=False``: no weight, a constant 1).
    ``device`` None or "cpu", ``dtype`` None meaning float32."""

    op = ops.rms_norm

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None):
        shape = _normalized_shape(normalized_shape, "RMSNorm")
        if eps is not None:
            ops.normalization.check_eps("RMSNorm", eps)
        ops.registry.check_bool("RMSNorm", "elementwise_affine", elementwise_affine)
        super().__init__(eps=eps)
        _cpu_only(device, "RMSNorm")
        dtype = _float_dtype(dtype, "RMSNorm")
        self.normalized_shape = shape
        self.elementwise_affine = elementwise_affine
        ones = np.ones(shape, dtype)
        self.weight = Parameter(ones) if elementwise_affine else None
        self._ones = ones                           # the constant weight of elementwise_affine=False

    def op_inputs(self):
        return (self._ones if self.weight is None else self.weight,)

    def forward(self, input):                   # torch's name: m(input=x) works
        x = np.asarray(input)
        if self.weight is None and x.dtype.kind == "f" and self._ones.dtype != x.dtype:
            self._ones = self._ones.astype(x.dtype)
        return self._apply(self.op, input, self.op_inputs())[0]

    def get_config(self):
        dtype = (self.weight.data if self.elementwise_affine else self._ones).dtype
        return dict(normalized_shape=list(self.normalized_shape), eps=self.params["eps"],
                    elementwise_affine=self.elementwise_affine, dtype=dtype.name)


def _normalized_shape(normalized_shape, who):
    """normalized_shape (an int or a sequence of positive ints) as a tuple, or TypeError/ValueError."""
    single = isinstance(normalized_shape, (int, np.integer, bool, np.bool_, float, np.floating))
    shape = (normalized_shape,) if single else normalized_shape
    try:
        shape = tuple(shape)
        for n in shape:
            ops.registry.check_int(who, "normalized_shape", n)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{who}: normalized_shape={normalized_shape!r} is not valid; expected "
                      "a positive integer or a sequence of them") from None
    return tuple(int(n) for n in shape)


# -- regularization and shape -----------------------------------------------------------------

class Dropout(OpModule):
    """Inverted dropout; the identity in eval mode.  ``seed`` makes the masks reproducible."""

    op = ops.dropout

    def __init__(self, p=0.5, seed=None):
        ops.registry.check_real("Dropout", "p", p, "a probability in [0, 1]", lambda v: 0 <= v <= 1)
        super().__init__(p=p)
        self.rng = resolve_rng(seed)

    def forward(self, x):
        return self._apply(self.op, x, (), training=self.training, seed=self.rng)[0]

    def get_config(self):
        return dict(p=self.params["p"])

    def extra_repr(self):
        return f"p={self.params['p']}"


class _Reshaping(Module):
    """The same numbers in another shape (the reshape op); backward reshapes the
    gradient back to the input's shape."""

    def _reshape(self, x, shape):
        y, _ = ops.reshape.forward(x, shape=shape)
        self.save(x.shape, y.shape)
        return y

    def backward(self, gy, input_grad=True):
        x_shape, y_shape = self._peek_saved()
        gx = check_gy(gy, y_shape, type(self).__name__).reshape(x_shape)
        self.saved()
        return gx if input_grad else None


class Flatten(_Reshaping):
    """Flattens dims start_dim..end_dim into one (default: all but the batch dim)."""

    def __init__(self, start_dim=1, end_dim=-1):
        for name, d in (("start_dim", start_dim), ("end_dim", end_dim)):
            ops.registry.check_int("Flatten", name, d, "an integer (a dim)", valid=lambda _: True)
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        x = np.asarray(x)
        n = max(x.ndim, 1)                       # a 0-d input counts as one dim, as in PyTorch
        for name, d in (("start_dim", self.start_dim), ("end_dim", self.end_dim)):
            if not -n <= d < n:
                raise ValueError(f"Flatten: {name}={d} is out of range for an input of shape {x.shape} "
                                 f"(expected a dim in [{-n}, {n - 1}])")
        start, end = self.start_dim % n, self.end_dim % n
        if start > end:
            raise ValueError(f"Flatten: start_dim={self.start_dim} comes after end_dim={self.end_dim} "
                             f"for an input of shape {x.shape}")
        return self._reshape(x, x.shape[:start] + (-1,) + x.shape[end + 1:])

    def get_config(self):
        return dict(start_dim=self.start_dim, end_dim=self.end_dim)


class Unflatten(_Reshaping):
    """Dim ``dim`` unfolded into ``unflattened_size``, as torch.nn.Unflatten: rows of
    64 features into (1, 8, 8) images.  Backward reshapes the gradient back."""

    def __init__(self, dim, unflattened_size):
        super().__init__()
        size = tuple(int(n) for n in unflattened_size)
        if not size or any(n < 1 for n in size):
            raise ValueError(f"Unflatten: unflattened_size={unflattened_size!r} is not valid; "
                             "expected positive sizes")
        self.dim, self.unflattened_size = int(dim), size

    def forward(self, x):
        x = np.asarray(x)
        d = self.dim % x.ndim if x.ndim else 0
        if x.ndim == 0 or x.shape[d] != math.prod(self.unflattened_size):
            raise ValueError(f"Unflatten: dim {self.dim} of an input of shape {x.shape} should have "
                             f"{math.prod(self.unflattened_size)} elements, to unfold into "
                             f"{self.unflattened_size}")
        return self._reshape(x, x.shape[:d] + self.unflattened_size + x.shape[d + 1:])

    def get_config(self):
        return dict(dim=self.dim, unflattened_size=list(self.unflattened_size))


class Standardize(Module):
    """y = (x - mean) / std with fixed statistics (buffers), e.g. of the training set.

    Put first in a model, it makes the model take raw features, and it is
    saved with the checkpoint.  Backward: g_x = g_y / std.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean, std = np.asarray(mean), np.asarray(std)
        if mean.shape != std.shape:
            raise ValueError(f"Standardize: mean shape {mean.shape} != std shape {std.shape}")
        self.register_buffer("mean", mean)
        # a constant feature has std 0: leave it centred rather than divide by zero
        self.register_buffer("std", np.where(std > 0, std, 1).astype(std.dtype))

    @classmethod
    def fit(cls, X):
        X = np.asarray(X)
        return cls(X.mean(axis=0), X.std(axis=0))

    def forward(self, x):
        x = np.asarray(x)
        if x.shape[-len(self.mean.shape):] != self.mean.shape:
            raise ValueError(f"Standardize: expected input of shape (..., {', '.join(map(str, self.mean.shape))}), "
                             f"got shape {x.shape}")
        y, _ = ops.standardize.forward(x, self.mean, self.std)
        self.save(y.shape)
        return y

    def backward(self, gy, input_grad=True):
        gx = check_gy(gy, self._peek_saved(), "Standardize") / self.std
        self.saved()
        return gx if input_grad else None

    def get_config(self):
        # the statistics themselves are buffers, saved with the weights
        return dict(shape=list(self.mean.shape), dtype=self.mean.dtype.name)

    @classmethod
    def from_config(cls, config, children):
        shape, dtype = tuple(config["shape"]), config["dtype"]
        return cls(np.zeros(shape, dtype), np.ones(shape, dtype))


class ChildList:
    """Children numbered 0, 1, ... (Sequential, ModuleList, Parallel): append,
    indexing, len and iteration, in order."""

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ChildList, Module):
    """Modules applied in order; backward runs them in reverse (the delta rule)."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {i} is {type(m).__name__}, expected a Module")
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(*x) if isinstance(x, tuple) else m(x)     # several outputs: several inputs
        self.save(None)
        return x

    def backward(self, *gys, input_grad=True):
        """The delta rule: each module's backward in reverse order.

        A module with several outputs feeds the next one several inputs, so the
        latter's tuple of input gradients is the former's upstream gradients.
        With ``input_grad=False`` (the input is data, as in training) dL/dx is
        not computed: leading modules without parameters are skipped and the
        first one with parameters skips its input gradient.  Returns None then.
        """
        self._peek_saved()
        mods = list(self._modules.values())
        start = 0
        if not input_grad:          # leading leaves without parameters need no backward
            while start < len(mods) and not mods[start]._modules and not mods[start]._params:
                start += 1
        g = gys
        for i in range(len(mods) - 1, start - 1, -1):
            g = call_backward(mods[i], g, input_grad=input_grad or i > start)
            g = g if isinstance(g, tuple) else (g,)
        for m in mods[:start]:      # their states of this call are not needed: drop them
            m.saved()
        self.saved()
        if not input_grad:
            return None
        return g[0] if len(g) == 1 else g

    def get_config(self):
        return {}               # the children are the checkpoint's, saved with every module's

    @classmethod
    def from_config(cls, config, children):
        return cls(*children.values())


