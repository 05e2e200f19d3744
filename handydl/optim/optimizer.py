"""Optimizers that read Parameter.grad and update Parameter.data in place,
with PyTorch's update rules (tests compare several steps with torch.optim)."""
from __future__ import annotations

import ctypes
import glob
import math
import os

import numpy as np


def _numpy_blas_axpy():
    """saxpy/daxpy from the OpenBLAS that NumPy itself loaded, or None.

    y += a x in one pass, without a temporary.  It must be NumPy's own
    OpenBLAS: SciPy's is a second library with a second thread pool, and the
    two pools spinning against each other on 2 cores made training 10x slower.
    """
    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs",
                                  "libscipy_openblas64_*.so"))
    if len(libs) != 1:
        return None
    try:
        lib = ctypes.CDLL(libs[0])
        funcs = {}
        for dtype, name, ctype in ((np.float32, "scipy_cblas_saxpy64_", ctypes.c_float),
                                   (np.float64, "scipy_cblas_daxpy64_", ctypes.c_double)):
            f = getattr(lib, name)
            f.restype = None
            f.argtypes = [ctypes.c_int64, ctype, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
            funcs[np.dtype(dtype)] = f
        return funcs
    except (OSError, AttributeError):
        return None


_AXPY = _numpy_blas_axpy()
# Below this many elements two NumPy passes cost less than one BLAS call through
# ctypes (python -m bench.micro times both at 10 elements and at this size).
AXPY_MIN = 1 << 15


def axpy(a, x, y, buf):
    """y += a * x in place: one BLAS pass when NumPy's OpenBLAS is at hand and
    both arrays are large, contiguous and of one float dtype; otherwise through
    the scratch array ``buf`` (two passes, still no allocation)."""
    f = _AXPY and _AXPY.get(y.dtype)
    if (f is not None and y.size >= AXPY_MIN and x.dtype == y.dtype
            and x.flags.c_contiguous and y.flags.c_contiguous):
        f(y.size, a, x.__array_interface__["data"][0], 1, y.__array_interface__["data"][0], 1)
    else:
        np.multiply(x, a, out=buf)
        y += buf


class Optimizer:
    """Holds the parameters, their per-parameter state and the hyper-parameters."""

    def __init__(self, params, defaults):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for name, value in defaults.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{type(self).__name__}: {name}={value!r} is not valid; expected >= 0")
        self.defaults = dict(defaults)
        self.state = [{} for _ in self.params]
        self.steps = 0

    @property
    def lr(self):
        return self.defaults["lr"]

    @lr.setter
    def lr(self, value):
        self.defaults["lr"] = float(value)

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def step(self):
        self.steps += 1
        hp = {k: float(v) for k, v in self.defaults.items()}
        for p, state in zip(self.params, self.state):
            self._update(p, state, hp)

    def _update(self, p, state, hp):
        raise NotImplementedError

    def state_dict(self):
        return {"defaults": dict(self.defaults), "steps": self.steps,
                "state": [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()
                           if k != "tmp"} for s in self.state]}

    def load_state_dict(self, state):
        if len(state["state"]) != len(self.params):
            raise ValueError(f"{type(self).__name__}.load_state_dict: state for {len(state['state'])} "
                             f"parameters, but the optimizer has {len(self.params)}")
        for p, s in zip(self.params, state["state"]):
            for k, v in s.items():
                if isinstance(v, np.ndarray) and v.shape != p.shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: state {k!r} has shape "
                                     f"{v.shape}, expected {p.shape}")
        self.defaults.update(state["defaults"])
        self.steps = state["steps"]
        self.state = [{k: (v.astype(p.dtype) if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                      for p, s in zip(self.params, state["state"])]


class SGD(Optimizer):
    r"""Stochastic gradient descent, with momentum as in PyTorch:

    g = grad + wd p;  b = mu b + (1 - dampening) g  (b = g at the first step);
    g = g + mu b (Nesterov) or b;  p = p - lr g.
    """

    def __init__(self, params, lr=0.01, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov=True needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay))
        self.nesterov = nesterov

    def _update(self, p, state, hp):
        lr, mu, damp, wd = hp["lr"], hp["momentum"], hp["dampening"], hp["weight_decay"]
        tmp = state.get("tmp")
        if tmp is None:
            tmp = state["tmp"] = np.empty_like(p.data)
        g = p.grad
        if wd:
            g = g + wd * p.data
        if mu:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(g, dtype=p.dtype, copy=True)
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
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"{type(self).__name__}: betas={betas!r} is not valid; expected each in [0, 1)")
        super().__init__(params, dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay))

    def _update(self, p, state, hp):
        lr, b1, b2, eps, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"]
        if "m" not in state:
            state["m"], state["v"] = np.zeros_like(p.data), np.zeros_like(p.data)
        t = self.steps
        g = p.grad
        if wd and self.decoupled:
            p.data *= 1 - lr * wd
        elif wd:
            g = g + wd * p.data
        m, v = state["m"], state["v"]
        tmp = state.setdefault("tmp", np.empty_like(p.data))     # one buffer reused every step
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
