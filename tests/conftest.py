"""Shared test helpers: conversion to torch, an independent finite-difference
Jacobian, and the cases every registered op is tested on."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import ops


def op_cases():
    """(op, params, domain) for every registered op, its parameter sets and domains."""
    cases = []
    for name, op in ops.REGISTRY.items():
        for params in ({},) + tuple(op.test_params):
            for domain in op.domains:
                pid = ",".join(f"{k}={_short(v)}" for k, v in params.items())
                cases.append(pytest.param(op, op.bind(params), domain, id=f"{name}[{pid}]{domain}"))
    return cases


def _short(v):
    return "arr" if isinstance(v, np.ndarray) else v


def make_inputs(op, params, domain, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return op.sample(rng, dtype, *domain)


def cast_params(params, dtype):
    """Array parameters (class weights) in the dtype under test."""
    return {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in params.items()}


def to_torch(torch, a, requires_grad=False):
    if isinstance(a, np.ndarray):
        t = torch.from_numpy(np.array(a, order="C"))   # a copy; keeps 0-d arrays 0-d
        if requires_grad:
            t.requires_grad_(True)
        return t
    return a


def torch_params(torch, params):
    return {k: to_torch(torch, v) for k, v in params.items()}


def diff_indices(op, inputs):
    """Indices of the inputs that get a gradient."""
    if op.variadic:
        return list(range(len(inputs)))
    return [i for i, d in enumerate(op.differentiable) if d and i < len(inputs) and inputs[i] is not None]


def outputs_of(y):
    """An op's outputs as a tuple: one array, or several (split)."""
    return tuple(np.asarray(o) for o in y) if isinstance(y, tuple) else (np.asarray(y),)


def flat(y):
    """All outputs raveled into one float64 vector: a Jacobian's row index."""
    return np.concatenate([o.astype(np.float64).ravel() if o.dtype.kind != "c" else o.ravel()
                           for o in outputs_of(y)])


def numeric_jacobian(f, inputs, i, h=1e-6):
    """Central differences of f w.r.t. inputs[i]: shape (y.size, x.size). float64 only.

    Written here, independently of handydl.check, so that the op tests do not
    rest on the library's own gradient checker.
    """
    x = inputs[i]
    cols = []
    for j in range(x.size):
        step = h * max(1.0, abs(x.flat[j]))
        xp, xm = x.copy(), x.copy()
        xp.flat[j] += step
        xm.flat[j] -= step
        yp = flat(f(*inputs[:i], xp, *inputs[i + 1:]))
        ym = flat(f(*inputs[:i], xm, *inputs[i + 1:]))
        cols.append((yp - ym) / (2 * step))
    return np.stack(cols, axis=1)


def analytic_jacobian(op, inputs, params, i):
    """Rows of the Jacobian from backward with unit upstream gradients."""
    y, saved = op.forward(*inputs, **params)
    outs = outputs_of(y)
    rows = []
    for o, out in enumerate(outs):          # one row per element of every output
        for k in range(out.size):
            gys = [np.zeros(u.shape, u.dtype) for u in outs]
            gys[o].flat[k] = 1
            rows.append(np.asarray(op.backward(saved, *gys)[i]).ravel())
    return np.stack(rows, axis=0)
