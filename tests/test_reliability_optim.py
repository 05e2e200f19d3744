"""Optimizers refuse bad hyper-parameters when they are made, and a step that
fails on any parameter changes nothing (issue 14: validate at the boundary;
all or nothing)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from handydl import nn, optim


def params(*shapes, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


# -- hyper-parameters ------------------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda p: optim.SGD(p, lr=float("nan")), "SGD: lr=nan is not valid; expected a finite number >= 0"),
    (lambda p: optim.SGD(p, lr=float("inf")), "SGD: lr=inf is not valid; expected a finite number >= 0"),
    (lambda p: optim.SGD(p, lr=-0.1), "SGD: lr=-0.1 is not valid; expected a finite number >= 0"),
    (lambda p: optim.SGD(p, lr=True), "SGD: lr=True is not valid; expected a finite number >= 0, got bool"),
    (lambda p: optim.SGD(p, lr="0.1"), "SGD: lr='0.1' is not valid; expected a finite number >= 0, got str"),
    (lambda p: optim.SGD(p, lr=None), "SGD: lr=None is not valid"),
    (lambda p: optim.SGD(p, momentum=float("nan")), "SGD: momentum=nan is not valid"),
    (lambda p: optim.SGD(p, momentum=-0.5), "SGD: momentum=-0.5 is not valid"),
    (lambda p: optim.SGD(p, momentum=0.9, dampening=1.5),
     r"SGD: dampening=1.5 is not valid; expected a finite number in [0, 1]"),
    (lambda p: optim.SGD(p, weight_decay=float("-inf")), "SGD: weight_decay=-inf is not valid"),
    (lambda p: optim.SGD(p, nesterov=True), "nesterov=True needs momentum > 0 and dampening = 0"),
    (lambda p: optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True),
     "nesterov=True needs momentum > 0 and dampening = 0, got momentum=0.9, dampening=0.1"),
    (lambda p: optim.SGD(p, momentum=0.9, nesterov="yes"), "SGD: nesterov='yes' is not valid"),
    (lambda p: optim.Adam(p, lr=float("nan")), "Adam: lr=nan is not valid"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), r"Adam: betas\[0\]=1.0 is not valid; expected a finite "
                                                  r"number in \[0, 1\)"),
    (lambda p: optim.Adam(p, betas=(0.9, float("nan"))), r"Adam: betas\[1\]=nan is not valid"),
    (lambda p: optim.Adam(p, betas=(0.9, -0.1)), r"Adam: betas\[1\]=-0.1 is not valid"),
    (lambda p: optim.Adam(p, betas=0.9), r"Adam: betas=0.9 is not valid; expected a pair"),
    (lambda p: optim.Adam(p, betas=(0.9, 0.99, 0.5)), r"Adam: betas=\(0.9, 0.99, 0.5\) is not valid"),
    (lambda p: optim.Adam(p, eps=-1e-8), "Adam: eps=-1e-08 is not valid"),
    (lambda p: optim.Adam(p, eps=float("nan")), "Adam: eps=nan is not valid"),
    (lambda p: optim.AdamW(p, weight_decay=float("inf")), "AdamW: weight_decay=inf is not valid"),
    (lambda p: optim.AdamW(p, weight_decay=False), "AdamW: weight_decay=False is not valid"),
])
def test_bad_hyperparameters_are_refused_at_construction(make, message):
    import re
    with pytest.raises(ValueError, match=message if "\\" in message else re.escape(message)):
        make(params((2,)))


def test_good_edge_values_are_accepted():
    p = params((2,))
    optim.SGD(p, lr=0, momentum=0.9, dampening=1.0)
    optim.SGD(p, lr=np.float32(0.1), momentum=np.float64(0.5), nesterov=np.bool_(True))
    optim.Adam(p, lr=1, betas=[0.0, 0.0], eps=0)
    assert optim.Adam(p, lr=np.int64(2)).lr == 2.0


def test_bad_parameter_lists_are_refused():
    p = params((2,), (3,))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([])
    with pytest.raises(TypeError, match="got one Parameter; wrap it in a list"):
        optim.SGD(p[0])
    with pytest.raises(TypeError, match="parameter 1 is a ndarray, expected a Parameter"):
        optim.SGD([p[0], np.zeros(3)])
    with pytest.raises(ValueError, match="parameter 2 is the same object as parameter 0"):
        optim.Adam([p[0], p[1], p[0]])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, True, "0.1"])
def test_lr_setter_refuses_what_the_constructor_refuses(value):
    opt = optim.SGD(params((2,)), lr=0.1)
    with pytest.raises(ValueError, match="SGD: lr=.* is not valid"):
        opt.lr = value
    assert opt.lr == 0.1


def test_a_schedule_that_would_set_a_bad_lr_is_refused():
    opt = optim.SGD(params((2,)), lr=0.1)
    with pytest.raises(ValueError, match="StepLR: gamma=nan is not valid"):
        optim.StepLR(opt, step_size=1, gamma=float("nan"))
    with pytest.raises(ValueError, match="StepLR: step_size=True is not valid"):
        optim.StepLR(opt, step_size=True)
    with pytest.raises(ValueError, match="CosineAnnealingLR: T_max=2.5 is not valid"):
        optim.CosineAnnealingLR(opt, T_max=2.5)
    with pytest.raises(ValueError, match="CosineAnnealingLR: eta_min=inf is not valid"):
        optim.CosineAnnealingLR(opt, T_max=3, eta_min=float("inf"))
    sch = optim.StepLR(opt, step_size=1, gamma=1e200)       # finite gamma, but lr overflows to inf
    sch.step()
    with pytest.raises(ValueError, match="lr=inf is not valid"):
        sch.step()
    assert opt.lr == pytest.approx(1e199) and sch.epoch == 1


def test_load_state_dict_checks_hyperparameters_before_changing_anything():
    opt = optim.Adam(params((2,)), lr=0.01)
    state = opt.state_dict()
    state["defaults"]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr=nan is not valid"):
        opt.load_state_dict(state)
    state["defaults"]["lr"] = 0.5
    state["steps"] = -1
    with pytest.raises(ValueError, match="steps=-1 is not valid"):
        opt.load_state_dict(state)
    assert opt.lr == 0.01 and opt.steps == 0


# -- all-or-nothing steps --------------------------------------------------------------------

def snapshot(opt):
    """Bytes of every parameter, every state array (scratch buffers aside) and the step count."""
    state = [{k: (v.tobytes(), v.dtype.str, v.shape) if isinstance(v, np.ndarray) else v
              for k, v in s.items() if k != "tmp"} for s in opt.state]
    return [p.data.tobytes() for p in opt.params], state, opt.steps, dict(opt.defaults)


MAKERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1),
    "adamw": lambda p: optim.AdamW(p, lr=0.01),
}
BAD_GRADS = {
    "shape": (lambda p: np.ones((4, 3)), ValueError, r"parameter 1 has a gradient of shape \(4, 3\), "
                                                     r"expected \(3, 4\)"),
    "broadcastable shape": (lambda p: np.ones((1, 4)), ValueError, r"gradient of shape \(1, 4\)"),
    "int dtype": (lambda p: np.ones((3, 4), np.int64), ValueError, "gradient of dtype int64"),
    "complex into real": (lambda p: np.ones((3, 4), np.complex128), ValueError, "gradient of dtype complex128"),
    "not an array": (lambda p: [[1.0] * 4] * 3, TypeError, "gradient of type list"),
}


@pytest.mark.parametrize("bad", BAD_GRADS)
@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("warm", [False, True], ids=["first-step", "later-step"])
def test_a_step_failing_on_the_second_parameter_changes_nothing(name, bad, warm):
    ps = params((4,), (3, 4), (2,))
    opt = MAKERS[name](ps)
    for p in ps:
        p.grad[...] = 0.5
    if warm:
        opt.step()
    before = snapshot(opt)
    make_grad, error, message = BAD_GRADS[bad]
    ps[0].grad[...] = 1.0
    ps[1].grad = make_grad(ps[1])
    with pytest.raises(error, match=message) as info:
        opt.step()
    assert "no parameter was updated" in str(info.value)
    assert snapshot(opt) == before
    # and the optimizer still works once the gradient is right
    ps[1].grad = np.ones((3, 4))
    opt.step()
    assert opt.steps == before[2] + 1 and ps[0].data.tobytes() != before[0][0]


def test_a_read_only_or_integer_parameter_fails_before_any_update():
    ps = params((4,), (3,))
    opt = optim.AdamW(ps, lr=0.1)
    for p in ps:
        p.grad[...] = 1.0
    ps[1].data.flags.writeable = False
    before = snapshot(opt)
    with pytest.raises(ValueError, match="AdamW.step: parameter 1 is read-only"):
        opt.step()
    assert snapshot(opt) == before
    ps[1].data = np.arange(3)
    before = snapshot(opt)
    with pytest.raises(TypeError, match="parameter 1 has data of type int64 array"):
        opt.step()
    assert snapshot(opt) == before


def test_adam_refuses_complex_parameters_sgd_takes_them():
    def make():
        p = nn.Parameter(np.array([1 + 1j, 2 - 1j]))
        p.grad[...] = np.array([1j, 1.0])
        return p
    p = make()
    with pytest.raises(TypeError, match="expected a real float NumPy array"):
        optim.Adam([p]).step()
    np.testing.assert_array_equal(p.data, [1 + 1j, 2 - 1j])
    p = make()
    optim.SGD([p], lr=0.5).step()
    np.testing.assert_array_equal(p.data, [1 + 0.5j, 1.5 - 1j])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")    # inf / inf in Adam, as torch
@pytest.mark.parametrize("name", MAKERS)
def test_nan_gradients_propagate_and_are_not_refused(name):
    ps = params((3,))
    opt = MAKERS[name](ps)
    ps[0].grad[...] = [np.nan, 1.0, np.inf]
    opt.step()
    assert np.isnan(ps[0].data[0]) and np.isfinite(ps[0].data[1])
