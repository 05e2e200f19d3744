"""Optimizers, schedules and clipping against torch.optim on the same gradients."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import nn, optim

torch = pytest.importorskip("torch")


def run_both(make_ours, make_torch, steps=6, dtype=np.float64):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,)]
    ours = [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt, topt = make_ours(ours), make_torch(theirs)
    for _ in range(steps):
        for p, tp in zip(ours, theirs):
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad[...] = g
            tp.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
    return ours, theirs


CASES = {
    "sgd": (lambda p: optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd-momentum-wd": (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
                        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
    "sgd-dampening": (lambda p: optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3),
                      lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3)),
    "sgd-nesterov": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    "adam": (lambda p: optim.Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam-wd": (lambda p: optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
              lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", CASES)
def test_several_steps_match_torch_optim(name):
    ours, theirs = run_both(*CASES[name])
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", CASES)
def test_float32_parameters_stay_float32(name):
    ours, theirs = run_both(*CASES[name], dtype=np.float32)
    for p, tp in zip(ours, theirs):
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_continues_identically():
    ours, _ = run_both(*CASES["adam"], steps=3)
    a = optim.Adam(ours, lr=0.01)
    for p in ours:
        p.grad[...] = 1.0
    a.step()
    saved, data = a.state_dict(), [p.data.copy() for p in ours]
    a.step()
    after = [p.data.copy() for p in ours]
    for p, d in zip(ours, data):
        p.data[...] = d
    b = optim.Adam(ours, lr=0.01)
    b.load_state_dict(saved)
    b.step()
    for p, d in zip(ours, after):
        np.testing.assert_array_equal(p.data, d)


def test_schedules_match_torch():
    p = [torch.zeros(1, requires_grad=True)]
    for ours_cls, torch_cls, kw in [(optim.StepLR, torch.optim.lr_scheduler.StepLR, dict(step_size=3, gamma=0.5)),
                                    (optim.CosineAnnealingLR, torch.optim.lr_scheduler.CosineAnnealingLR,
                                     dict(T_max=10, eta_min=0.01))]:
        opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1)
        sch = ours_cls(opt, **kw)
        topt = torch.optim.SGD(p, lr=0.1)
        tsch = torch_cls(topt, **kw)
        for _ in range(10):
            topt.step()
            sch.step()
            tsch.step()
            assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(1)
    ours = [nn.Parameter(np.zeros(s)) for s in [(3, 3), (5,)]]
    theirs = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in [(3, 3), (5,)]]
    for p, tp in zip(ours, theirs):
        g = rng.standard_normal(p.shape) * 3
        p.grad[...] = g
        tp.grad = torch.tensor(g.copy())
    n = optim.clip_grad_norm(ours, 1.0)
    tn = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert n == pytest.approx(tn.item())
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


def test_bad_hyperparameters_are_named():
    p = [nn.Parameter(np.zeros(2))]
    with pytest.raises(ValueError, match="lr=-1 is not valid"):
        optim.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
