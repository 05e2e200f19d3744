"""gradcheck on wide models (issue 14, item 2): a finite-difference step that
crosses ReLU kinks of a wide layer is not taken for a wrong gradient, a real
mistake in a wide model is still caught and located, and the search for the
culprit costs a bounded number of evaluations and no copy of the weights."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import GradcheckError, gradcheck, nn
from handydl.check.gradcheck import _ModuleTarget


def kink_dense(width, seed, near=1e-6):
    """An MLP 16 -> width -> width -> 4 whose second hidden layer has every unit
    within `near` of its kink (0) for sample 0: a step of eps = 1e-6 along a random
    direction of a million weights crosses many of them.  The gradient is right
    (no pre-activation is exactly 0)."""
    rng = np.random.default_rng(seed)
    body = nn.Sequential(nn.Linear(16, width, rng=seed), nn.ReLU(), nn.Linear(width, width, rng=seed + 1),
                         nn.ReLU(), nn.Linear(width, 4, rng=seed + 2))
    x = rng.standard_normal((4, 16))
    h1 = np.maximum(x[0] @ body[0].weight.data + body[0].bias.data, 0)
    z = rng.uniform(0.1, 1.0, width) * near * rng.choice([-1.0, 1.0], width)
    body[2].bias.data = z - h1 @ body[2].weight.data
    return body, x


class Counting:
    """Counts the forwards of nn.Linear (every copy gradcheck makes shares the class)."""

    def __init__(self, monkeypatch):
        self.n = 0
        forward = nn.Linear.forward

        def counted(m, *a, **k):
            self.n += 1
            return forward(m, *a, **k)
        monkeypatch.setattr(nn.Linear, "forward", counted)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_right_wide_relu_model_with_units_at_their_kinks_passes(seed, monkeypatch):
    body, x = kink_dense(1024, seed)
    z = np.maximum(x[:1] @ body[0].weight.data + body[0].bias.data, 0) @ body[2].weight.data + body[2].bias.data
    assert np.all(np.abs(z) < 1e-6) and np.all(z != 0)           # the setting is what it says
    count = Counting(monkeypatch)
    report = gradcheck(body, x, fast=True)
    assert report.passed and report.max_rel_err < 1e-6
    # some comparisons needed a step shorter than eps: those crossed kinks at eps
    assert sum(e.smaller_steps for e in report.entries) > 0
    # 3 projections x 7 arrays x (2 to 8 evaluations) + backward checks, each 3 Linear forwards
    assert count.n <= 3 * (3 * 7 * 8 + 20)


def test_a_planted_bug_in_a_wide_model_is_caught_and_located():
    class TransposedLinear(nn.Linear):          # the weight gradient of a square layer transposed
        def backward(self, gy):
            gx = super().backward(gy)
            self.weight.grad = self.weight.grad.T.copy()
            return gx
    body, x = kink_dense(1024, 0)
    wrong = TransposedLinear(1024, 1024, rng=1)
    wrong.weight.data, wrong.bias.data = body[2].weight.data, body[2].bias.data
    body = nn.Sequential(body[0], body[1], wrong, body[3], body[4])
    with pytest.raises(GradcheckError) as info:
        gradcheck(body, x, fast=True)
    bad = [e for e in info.value.report.entries if not e.passed]
    assert [e.name for e in bad] == ["2.weight"]
    i, j = bad[0].where[1]                      # located: an element, not "projection"
    assert isinstance(i, int) and isinstance(j, int) and i != j
    assert "gradient of 2.weight is wrong at element" in str(info.value)


class Scale(nn.Module):
    """y = x * w elementwise, with a parameter w of n elements; the gradient of w is
    wrong in element `bad` only (by 1e4: one wrong element among millions must be that
    large for a random projection to see it at rtol=1e-3)."""

    def __init__(self, n, bad):
        super().__init__()
        self.w = nn.Parameter(np.random.default_rng(0).uniform(0.5, 1.5, n))
        self.bad = bad

    def forward(self, x):
        self.save(x)
        return x * self.w.data

    def backward(self, gy):
        x = self.saved()
        g = gy * x
        g[self.bad] += 1e4
        self.w.accumulate(g)
        return gy * self.w.data


def test_the_culprit_in_a_million_elements_is_found_with_few_evaluations(monkeypatch):
    n, bad = 1_000_000, 718_281
    m = Scale(n, bad)
    x = np.random.default_rng(1).uniform(0.5, 1.5, n)
    calls = []
    forward = Scale.forward
    monkeypatch.setattr(Scale, "forward", lambda self, x: calls.append(1) or forward(self, x))
    report = gradcheck(m, x, fast=True, raise_exception=False)
    e = next(e for e in report.entries if e.name == "w")
    assert not e.passed and e.where[1] == bad
    assert e.analytic - e.numeric == pytest.approx(1e4, rel=1e-4)
    # halving: about 2 log2(n / 64) projections (x 2 forwards, x up to 4 steps), then 64 elements
    assert len(calls) < 1000


def test_an_evaluation_copies_the_model_but_not_its_weights():
    body, x = kink_dense(64, 0)
    target = _ModuleTarget(body, (x,))
    fresh = target._fresh()
    assert all(p is q for p, q in zip(fresh.parameters(), target.params))
    assert fresh is not target.model and fresh[0] is not target.model[0]
    body.zero_grad()
    before = [p.data.copy() for p in body.parameters()]
    gradcheck(body, x, fast=True)
    for p, b in zip(body.parameters(), before):                 # the caller's model untouched
        np.testing.assert_array_equal(p.data, b)


def test_the_cli_check_of_a_2048_wide_model_is_bounded_and_passes(monkeypatch):
    """`handydl train --hidden 2048,2048` used to hang here (a failed projection, then
    20,000 elements searched with a copy of the 4.3M weights for each)."""
    from handydl import manual_seed
    from handydl.cli import _gradcheck_line
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 64)), rng.integers(0, 10, 40)
    manual_seed(0)
    model = nn.Sequential(nn.Standardize.fit(X), nn.MLP([64, 2048, 2048, 10], dropout=0.2, rng=0))
    count = Counting(monkeypatch)
    line, ok = _gradcheck_line(model, nn.CrossEntropyLoss(), X, y, "classification")
    assert ok, line
    assert "random projections + 8 random elements per tensor" in line
    assert count.n <= 3 * (3 * 6 * 8 + 8 * 6 * 2 * 4 + 20) + 10
