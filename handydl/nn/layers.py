"""Modules that apply one registered op: activations, Linear, normalization,
dropout, and the shape helpers Flatten and Sequential."""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from .module import Module, Parameter, check_gy, resolve_rng


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
        return self._apply(self.op, x, self.op_inputs())

    def _apply(self, op, x, extra, **params):
        arrays = [e.data if isinstance(e, Parameter) else e for e in extra]
        # self.params were validated at construction: no re-validation per call
        y, saved = op.run((x, *arrays), {**self.params, **params} if params else self.params)
        self._saved = (op, saved, np.shape(y), extra)
        return y

    def backward(self, gy, input_grad=True):
        """dL/dx (None with ``input_grad=False``, when x is data), and dL/dparam
        accumulated into each Parameter."""
        op, saved, y_shape, extra = self.saved()
        needs = (input_grad,) + tuple(isinstance(e, Parameter) for e in extra)
        grads = op.backward(saved, check_gy(gy, y_shape, type(self).__name__), needs)
        for e, g in zip(extra, grads[1:]):
            if isinstance(e, Parameter):
                e.accumulate(g, fresh=True)      # op outputs are new arrays
        return grads[0] if input_grad else None

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())

    def get_config(self):
        """Constructor arguments, for checkpoints (JSON-serializable)."""
        return dict(self.params)


# -- activations: one class per registered activation, named as in torch.nn ----------

class Sigmoid(OpModule):
    op = ops.sigmoid


class Tanh(OpModule):
    op = ops.tanh


class ReLU(OpModule):
    op = ops.relu


class LeakyReLU(OpModule):
    op = ops.leaky_relu

    def __init__(self, negative_slope=0.01):
        super().__init__(negative_slope=negative_slope)


class ELU(OpModule):
    op = ops.elu

    def __init__(self, alpha=1.0):
        super().__init__(alpha=alpha)


class CELU(OpModule):
    op = ops.celu

    def __init__(self, alpha=1.0):
        super().__init__(alpha=alpha)


class SELU(OpModule):
    op = ops.selu


class GELU(OpModule):
    op = ops.gelu

    def __init__(self, approximate="none"):
        super().__init__(approximate=approximate)


class SiLU(OpModule):
    op = ops.silu


class Mish(OpModule):
    op = ops.mish


class Softplus(OpModule):
    op = ops.softplus

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__(beta=beta, threshold=threshold)


class Hardsigmoid(OpModule):
    op = ops.hardsigmoid


class Hardswish(OpModule):
    op = ops.hardswish


class ReLU6(OpModule):
    op = ops.relu6


class Identity(OpModule):
    op = ops.identity


class PReLU(OpModule):
    """Leaky ReLU with learned slopes: one in all, or one per channel (dim 1)."""

    op = ops.prelu

    def __init__(self, num_parameters=1, init=0.25, dtype=np.float32):
        super().__init__()
        self.weight = Parameter(np.full(num_parameters, init, dtype=dtype))

    def op_inputs(self):
        return (self.weight,)

    def get_config(self):
        return dict(num_parameters=self.weight.shape[0], dtype=self.weight.dtype.name)


class Softmax(OpModule):
    op = ops.softmax

    def __init__(self, dim=-1):
        super().__init__(dim=dim)


class LogSoftmax(OpModule):
    op = ops.log_softmax

    def __init__(self, dim=-1):
        super().__init__(dim=dim)


class SumNormalize(OpModule):
    """x / sum(x) along ``dim``."""

    op = ops.sum_normalize

    def __init__(self, dim=-1):
        super().__init__(dim=dim)


class LpNorm(OpModule):
    """The Lp norm ||x||_p along ``dim`` (p > 0)."""

    op = ops.lp_norm

    def __init__(self, p=2.0, dim=-1, keepdim=False):
        super().__init__(p=p, dim=dim, keepdim=keepdim)


def _activation_classes():
    classes = [Sigmoid, Tanh, ReLU, LeakyReLU, PReLU, ELU, CELU, SELU, GELU, SiLU, Mish,
               Softplus, Hardsigmoid, Hardswish, ReLU6, Identity]
    return {cls.op.name: cls for cls in classes}


ACTIVATIONS = _activation_classes()


def activation(name, **params):
    """The module of a registered activation by its op name: ``activation("gelu")``."""
    try:
        cls = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid activations: "
                         f"{', '.join(ACTIVATIONS)}") from None
    return cls(**params)


# -- Linear ------------------------------------------------------------------------------

class Linear(OpModule):
    """y = x W + b with ``weight`` W of shape (in_features, out_features), as in the
    derivations (the transpose of torch.nn.Linear's).

    Initialized as PyTorch's default: W and b uniform in +-1/sqrt(in_features).
    """

    op = ops.linear

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if not (isinstance(n, (int, np.integer)) and n > 0):
                raise ValueError(f"Linear: {name}={n!r} is not valid; expected a positive integer")
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = resolve_rng(rng)
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (in_features, out_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype)) if bias else None

    def op_inputs(self):
        return (self.weight, self.bias)

    def get_config(self):
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias is not None, dtype=self.weight.dtype.name)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


# -- normalization -------------------------------------------------------------------------

class BatchNorm1d(OpModule):
    """Batch normalization over (N, C) or (N, C, L) input.

    Training: batch statistics (biased variance) normalize; the running mean and
    the running *unbiased* variance move by ``momentum`` (or a cumulative
    average when momentum is None).  Evaluation: the running statistics.
    """

    op = ops.batch_norm

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__(eps=eps)
        self.num_features, self.momentum, self.affine = num_features, momentum, affine
        self.track_running_stats = track_running_stats
        ones, zeros = np.ones(num_features, dtype), np.zeros(num_features, dtype)
        self.weight = Parameter(ones) if affine else ones
        self.bias = Parameter(zeros) if affine else zeros
        if track_running_stats:
            self.register_buffer("running_mean", zeros.copy())
            self.register_buffer("running_var", ones.copy())
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def op_inputs(self):
        return (self.weight, self.bias)

    def forward(self, x):
        if self.training or not self.track_running_stats:
            y = self._apply(ops.batch_norm, x, self.op_inputs())
            if self.training and self.track_running_stats:
                self._update_running_stats(self._saved[1], np.shape(x))
            return y
        extra = (self.weight, self.bias, self.running_mean, self.running_var)
        return self._apply(ops.batch_norm_eval, x, extra)

    def _update_running_stats(self, saved, shape):
        m = math.prod(shape) // shape[1]                 # values per feature
        self.num_batches_tracked = self.num_batches_tracked + 1
        f = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        dtype = self.running_mean.dtype
        self.running_mean = ((1 - f) * self.running_mean + f * saved.mean).astype(dtype)
        self.running_var = ((1 - f) * self.running_var + f * saved.var * (m / (m - 1))).astype(dtype)

    def get_config(self):
        return dict(num_features=self.num_features, eps=self.params["eps"], momentum=self.momentum,
                    affine=self.affine, track_running_stats=self.track_running_stats,
                    dtype=np.asarray(self.weight.data if self.affine else self.weight).dtype.name)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.params['eps']}, momentum={self.momentum}"


class LayerNorm(OpModule):
    """Layer normalization over the last dims, ``normalized_shape``."""

    op = ops.layer_norm

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, dtype=np.float32):
        super().__init__(eps=eps)
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        self.normalized_shape = shape
        self.elementwise_affine = elementwise_affine
        ones, zeros = np.ones(shape, dtype), np.zeros(shape, dtype)
        self.weight = Parameter(ones) if elementwise_affine else ones
        self.bias = Parameter(zeros) if elementwise_affine else zeros

    def op_inputs(self):
        return (self.weight, self.bias)

    def get_config(self):
        w = self.weight.data if self.elementwise_affine else self.weight
        return dict(normalized_shape=list(self.normalized_shape), eps=self.params["eps"],
                    elementwise_affine=self.elementwise_affine, dtype=w.dtype.name)


# -- regularization and shape -----------------------------------------------------------------

class Dropout(OpModule):
    """Inverted dropout; the identity in eval mode.  ``seed`` makes the masks reproducible."""

    op = ops.dropout

    def __init__(self, p=0.5, seed=None):
        super().__init__(p=p)
        self.rng = resolve_rng(seed)

    def forward(self, x):
        return self._apply(self.op, x, (), training=self.training, seed=self.rng)

    def get_config(self):
        return dict(p=self.params["p"])

    def extra_repr(self):
        return f"p={self.params['p']}"


class Flatten(Module):
    """Flattens dims start_dim..end_dim into one (default: all but the batch dim)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        x = np.asarray(x)
        start = self.start_dim % x.ndim
        end = self.end_dim % x.ndim
        y = x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])
        self._saved = (x.shape, y.shape)
        return y

    def backward(self, gy):
        x_shape, y_shape = self.saved()
        return check_gy(gy, y_shape, "Flatten").reshape(x_shape)

    def get_config(self):
        return dict(start_dim=self.start_dim, end_dim=self.end_dim)


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
        y = (x - self.mean) / self.std
        self._saved = y.shape
        return y

    def backward(self, gy):
        return check_gy(gy, self.saved(), "Standardize") / self.std

    def get_config(self):
        # the statistics themselves are buffers, saved with the weights
        return dict(shape=list(self.mean.shape), dtype=self.mean.dtype.name)


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse (the delta rule)."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {i} is {type(m).__name__}, expected a Module")
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        self._saved = True
        return x

    def backward(self, gy, input_grad=True):
        """The delta rule: each module's backward in reverse order.

        With ``input_grad=False`` (the input is data, as in training) dL/dx is
        not computed: leading modules without parameters are skipped and the
        first one with parameters skips its input gradient.  Returns None then.
        """
        self.saved()
        mods = list(self._modules.values())
        start = 0
        if not input_grad:
            while start < len(mods) and not mods[start].parameters():
                start += 1
        for i in range(len(mods) - 1, start - 1, -1):
            m = mods[i]
            if i == start and not input_grad and isinstance(m, (OpModule, Sequential)):
                gy = m.backward(gy, input_grad=False)
            else:
                gy = m.backward(gy)
        return gy if input_grad else None

    def get_config(self):
        return dict(children=[module_spec(m) for m in self])

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


def module_spec(m):
    """{"type": class name, "config": constructor arguments} of a module, for checkpoints."""
    if not hasattr(m, "get_config"):
        raise TypeError(f"{type(m).__name__} has no get_config(): it cannot be saved; "
                        "give it one returning its constructor arguments")
    return {"type": type(m).__name__, "config": m.get_config()}
