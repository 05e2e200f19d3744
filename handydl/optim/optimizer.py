"""Optimizers that read Parameter.grad and update Parameter.data in place,
with PyTorch's update rules (tests compare several steps with torch.optim)."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .._fast import blas, fused
from .._fast.fused import axpy


class Optimizer:
    """Holds the parameters, their per-parameter state and the hyper-parameters.

    Every hyper-parameter is checked when the optimizer is made (and when the
    learning rate is set or a state is loaded): a finite number in the range of
    ``RANGES``, never a bool.  ``step()`` is all or nothing: every parameter and
    gradient is checked, and every new state array allocated, before the first
    parameter changes, so a step that raises leaves parameters, state and
    ``steps`` exactly as they were.
    """

    RANGES = {"lr": (0.0, None)}          # name -> (low, high or None); see check_number
    SHOWN = {}                            # hyper-parameter -> the argument a user passed it as

    def __init__(self, params, defaults):
        self.params = _parameter_list(type(self).__name__, params)
        self.defaults = self._checked(defaults)
        self.state = [{} for _ in self.params]
        self.steps = 0

    def _checked(self, values):
        """``values`` with every hyper-parameter checked against RANGES, as floats."""
        owner = type(self).__name__
        unknown = sorted(set(values) - set(self.RANGES))
        if unknown:
            raise ValueError(f"{owner}: unknown hyper-parameter(s) {unknown}; expected {sorted(self.RANGES)}")
        return {k: check_number(owner, self.SHOWN.get(k, k), v, *self.RANGES[k]) for k, v in values.items()}

    @property
    def lr(self):
        return self.defaults["lr"]

    @lr.setter
    def lr(self, value):
        self.defaults["lr"] = check_number(type(self).__name__, "lr", value, *self.RANGES["lr"])

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def step(self):
        """Update every parameter from its ``grad``; on any error, change nothing.

        NaN and inf gradients are not errors: they propagate into the weights,
        as in PyTorch (a training loop notices the loss).
        """
        for i, p in enumerate(self.params):
            self._check_parameter(i, p)
        fresh = [self._allocate(p, state) for p, state in zip(self.params, self.state)]
        hp = dict(self.defaults)
        self.steps += 1
        for p, state, new in zip(self.params, self.state, fresh):
            self._update(p, state, new, hp)
        blas.tick()               # a training step ended: for handydl.blas_threads("auto")

    def _check_parameter(self, i, p):
        """ValueError (TypeError) naming parameter ``i`` if its update could fail part-way."""
        data, g = p.data, p.grad
        if (type(data) is np.ndarray and type(g) is np.ndarray and g.dtype == data.dtype
                and g.shape == data.shape and data.dtype.kind in self._kinds() and data.flags.writeable):
            return                # the usual case, in one test: every step pays for it
        where = f"{type(self).__name__}.step: parameter {i}"
        if not (isinstance(data, np.ndarray) and data.dtype.kind in self._kinds()):
            raise TypeError(f"{where} has data of type {_describe(data)}; expected a "
                            f"{' or '.join(_KIND_NAMES[k] for k in self._kinds())} NumPy array; "
                            "no parameter was updated")
        if not data.flags.writeable:
            raise ValueError(f"{where} is read-only; no parameter was updated")
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{where} has a gradient of type {type(g).__name__}; expected a NumPy array; "
                            "no parameter was updated")
        if g.shape != data.shape:
            raise ValueError(f"{where} has a gradient of shape {g.shape}, expected {data.shape} "
                             "(its data's shape); no parameter was updated")
        if g.dtype.kind not in "fc" or not np.can_cast(g.dtype, data.dtype, "same_kind"):
            raise ValueError(f"{where} has a gradient of dtype {g.dtype}, expected a float dtype that "
                             f"casts to its data's {data.dtype}; no parameter was updated")

    def _kinds(self):
        """The dtype kinds a parameter may have: real or complex floats."""
        return "fc"

    def _allocate(self, p, state):
        """The state arrays this step creates for ``p`` (allocated before anything changes)."""
        return {} if "tmp" in state else {"tmp": np.empty_like(p.data)}

    def _update(self, p, state, new, hp):
        raise NotImplementedError

    def state_dict(self):
        return {"defaults": dict(self.defaults), "steps": self.steps,
                "state": [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()
                           if k != "tmp"} for s in self.state]}

    def load_state_dict(self, state):
        """Restore a ``state_dict()``; everything is checked before anything changes."""
        owner = f"{type(self).__name__}.load_state_dict"
        if len(state["state"]) != len(self.params):
            raise ValueError(f"{owner}: state for {len(state['state'])} "
                             f"parameters, but the optimizer has {len(self.params)}")
        for p, s in zip(self.params, state["state"]):
            for k, v in s.items():
                if isinstance(v, np.ndarray) and v.shape != p.shape:
                    raise ValueError(f"{owner}: state {k!r} has shape {v.shape}, expected {p.shape}")
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"{owner}: steps={steps!r} is not valid; expected an integer >= 0")
        self.defaults = {**self.defaults, **self._checked(state["defaults"])}
        self.steps = int(steps)
        self.state = [{k: (v.astype(p.dtype) if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                      for p, s in zip(self.params, state["state"])]


_KIND_NAMES = {"f": "real float", "c": "complex float"}


def _describe(value):
    """'float32 array' for arrays, else the type's name (for messages)."""
    return f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__


def check_number(owner, name, value, low=0.0, high=None, high_open=True):
    """``value`` as a float, or a ValueError naming ``owner``, the argument and the range.

    The range is ``[low, high)`` (``[low, high]`` with ``high_open=False``;
    unbounded above for ``high=None``).  NaN, inf and bools are refused: True
    is not a learning rate.
    """
    if high is None:
        expected = f"a finite number >= {low:g}"
    else:
        expected = f"a finite number in [{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name}={value!r} is not valid; expected {expected}, "
                         f"got {type(value).__name__}")
    v = float(value)
    above = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or v < low or above:
        raise ValueError(f"{owner}: {name}={value!r} is not valid; expected {expected}")
    return v


def _parameter_list(owner, params):
    """``params`` as a list of distinct parameters (objects with ``data`` and ``grad``)."""
    if hasattr(params, "data") and hasattr(params, "grad"):
        raise TypeError(f"{owner}: params should be an iterable of Parameters (e.g. model.parameters()), "
                        "got one Parameter; wrap it in a list")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{owner}: params should be an iterable of Parameters (e.g. model.parameters()), "
                        f"got {type(params).__name__}") from None
    if not params:
        raise ValueError(f"{owner}: got an empty parameter list")
    seen = {}
    for i, p in enumerate(params):
        if not (hasattr(p, "data") and hasattr(p, "grad")):
            raise TypeError(f"{owner}: parameter {i} is a {type(p).__name__}, expected a Parameter")
        if id(p) in seen:
            raise ValueError(f"{owner}: parameter {i} is the same object as parameter {seen[id(p)]}; "
                             "each parameter must appear once")
        seen[id(p)] = i
    return params


class SGD(Optimizer):
    r"""Stochastic gradient descent, with momentum as in PyTorch:

    g = grad + wd p;  b = mu b + (1 - dampening) g  (b = g at the first step);
    g = g + mu b (Nesterov) or b;  p = p - lr g.
    lr, momentum and weight_decay are finite and >= 0, dampening in [0, 1];
    Nesterov momentum needs momentum > 0 and dampening = 0 (as torch.optim.SGD).
    """

    RANGES = {"lr": (0.0, None), "momentum": (0.0, None), "dampening": (0.0, 1.0, False),
              "weight_decay": (0.0, None)}

    def __init__(self, params, lr=0.01, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ValueError(f"SGD: nesterov={nesterov!r} is not valid; expected True or False")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay))
        if nesterov and (self.defaults["momentum"] <= 0 or self.defaults["dampening"] != 0):
            raise ValueError(f"SGD: nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={momentum!r}, dampening={dampening!r}")
        self.nesterov = bool(nesterov)

    def _allocate(self, p, state):
        new = super()._allocate(p, state)
        if self.defaults["momentum"] and "momentum_buffer" not in state:
            new["momentum_buffer"] = np.empty_like(p.data)
        return new

    def _update(self, p, state, new, hp):
        lr, mu, damp, wd = hp["lr"], hp["momentum"], hp["dampening"], hp["weight_decay"]
        state.update(new)
        tmp = state["tmp"]
        g = p.grad
        # with momentum or weight decay: one compiled pass where NumPy makes three
        # (plain SGD is one axpy below, which costs less to call)
        if (mu or wd) and fused.sgd(p.data, g, state.get("momentum_buffer") if mu else None, lr, mu, damp,
                                    wd, self.nesterov, "momentum_buffer" in new):
            return
        if wd:
            g = g + wd * p.data
        if mu:
            buf = state["momentum_buffer"]
            if "momentum_buffer" in new:             # the first step: b = g
                np.copyto(buf, g, casting="same_kind")
            else:
                buf *= mu
                axpy(1 - damp, g, buf, tmp)
            if self.nesterov:
                axpy(-lr, g, p.data, tmp)          # p -= lr (g + mu b)
                axpy(-lr * mu, buf, p.data, tmp)
                return
            g = buf
        axpy(-lr, g, p.data, tmp)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba) as in PyTorch:

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    ``weight_decay`` adds wd p to g (L2); AdamW decays the weights instead.
    lr, eps and weight_decay are finite and >= 0, each beta in [0, 1).
    Parameters must be real: g^2 is not |g|^2 for a complex g.
    """

    decoupled = False
    RANGES = {"lr": (0.0, None), "beta1": (0.0, 1.0), "beta2": (0.0, 1.0), "eps": (0.0, None),
              "weight_decay": (0.0, None)}
    SHOWN = {"beta1": "betas[0]", "beta2": "betas[1]"}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{type(self).__name__}: betas={betas!r} is not valid; expected a pair "
                             "(beta1, beta2), each a finite number in [0, 1)")
        b1, b2 = betas
        super().__init__(params, dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay))

    def _kinds(self):
        return "f"

    def _allocate(self, p, state):
        new = super()._allocate(p, state)
        if "m" not in state:
            new["m"], new["v"] = np.zeros_like(p.data), np.zeros_like(p.data)
        return new

    def _update(self, p, state, new, hp):
        lr, b1, b2, eps, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"]
        state.update(new)
        t = self.steps
        g = p.grad
        if wd and self.decoupled:
            p.data *= 1 - lr * wd
        elif wd:
            g = g + wd * p.data
        m, v, tmp = state["m"], state["v"], state["tmp"]         # tmp: one buffer reused every step
        if fused.adam(p.data, g, m, v, b1, b2, -lr / (1 - b1 ** t), 1 / math.sqrt(1 - b2 ** t), eps):
            return
        m *= b1
        axpy(1 - b1, g, m, tmp)
        v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v += tmp
        np.sqrt(v, out=tmp)                                     # tmp = sqrt(v) / sqrt(1 - b2^t) + eps
        tmp *= 1 / math.sqrt(1 - b2 ** t)
        tmp += eps
        np.divide(m, tmp, out=tmp)
        tmp *= -lr / (1 - b1 ** t)
        p.data += tmp


class AdamW(Adam):
    """Adam with decoupled weight decay: p = p (1 - lr wd) before the Adam step."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


def clip_grad_norm(params, max_norm):
    """Scale all gradients so that their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (as torch.nn.utils.clip_grad_norm_).
    """
    params = list(params)
    total = math.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for p in params))
    scale = max_norm / (total + 1e-6)
    if scale < 1:
        for p in params:
            p.grad *= scale
    return total
