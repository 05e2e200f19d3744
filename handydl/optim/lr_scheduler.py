"""Learning-rate schedules, stepped once per epoch, with PyTorch's formulas.

Arguments are checked when a schedule is made; the optimizer's ``lr`` setter
refuses a non-finite rate, so a schedule can never set NaN or inf.
"""
from __future__ import annotations

import math
import numbers

from .optimizer import check_number


def _check_count(owner, name, value):
    """``value`` as an int >= 1 (bools refused), or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name}={value!r} is not valid; expected an integer >= 1")
    return int(value)


class LRScheduler:
    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.epoch = 0

    def step(self):
        """Set the optimizer's lr for the next epoch; a rate that is not finite is
        refused (ValueError) and the schedule stays where it was."""
        try:
            lr = self.lr_at(self.epoch + 1)
        except OverflowError:                   # gamma ** k beyond float range
            lr = math.inf
        self.optimizer.lr = lr
        self.epoch += 1

    def lr_at(self, epoch):
        raise NotImplementedError


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _check_count("StepLR", "step_size", step_size)
        self.gamma = check_number("StepLR", "gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _check_count("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = check_number("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2
