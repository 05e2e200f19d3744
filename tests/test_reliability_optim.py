"""Optimizers refuse bad hyper-parameters when they are made (issue 14:
validate at the boundary)."""
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
