"""The gradient checker: it passes right gradients, catches wrong ones and says
where and why, handles kinks, and leaves what it checks untouched."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import GradcheckError, gradcheck, jacobian, nn, ops

torch = pytest.importorskip("torch")

X = np.random.default_rng(0).standard_normal((4, 3))


def mlp():
    return nn.Sequential(nn.Linear(3, 5, rng=0), nn.Tanh(), nn.Linear(5, 2, rng=1))


def test_correct_module_passes_with_every_parameter_listed():
    report = gradcheck(mlp(), X)
    assert report.passed and report.mode == "full Jacobian"
    assert [e.name for e in report.entries] == ["input", "0.weight", "0.bias", "2.weight", "2.bias"]
    assert report.max_rel_err < 1e-6


def test_complex_step_is_exact_to_rounding():
    report = gradcheck(mlp(), X, method="complex-step")
    assert report.passed and report.max_rel_err < 1e-13


def test_complex_step_refused_for_non_analytic_functions():
    with pytest.raises(ValueError, match="complex-analytic.*relu"):
        gradcheck(ops.relu, X, method="complex-step")


class ScaledTanh(nn.Module):
    """A custom layer with a deliberately wrong backward, as a user might write one."""

    def __init__(self, mistake):
        super().__init__()
        self.mistake = mistake

    def forward(self, x):
        self._saved = y = np.tanh(2 * x)
        return y

    def backward(self, gy):
        y = self.saved()
        right = gy * 2 * (1 - y ** 2)
        return {"factor": gy * (1 - y ** 2), "sign": -right, "none": right}[self.mistake]


def test_custom_module_right_backward_passes():
    assert gradcheck(ScaledTanh("none"), X).passed


@pytest.mark.parametrize("mistake,hint", [("factor", "missing factor of 2"), ("sign", "sign error")])
def test_wrong_backward_is_named_with_element_values_and_hint(mistake, hint):
    with pytest.raises(GradcheckError) as info:
        gradcheck(ScaledTanh(mistake), X)
    msg = str(info.value)
    assert "gradient of input is wrong at element" in msg and "analytic" in msg and "numeric" in msg
    assert hint in msg
    assert not info.value.report.passed


def test_transposed_weight_gradient_is_caught():
    class BadLinear(nn.Linear):
        def backward(self, gy):
            gx = super().backward(gy)
            self.weight.grad = self.weight.grad * 0.5 + 0.5 * np.roll(self.weight.grad, 1)
            return gx
    with pytest.raises(GradcheckError, match="gradient of weight is wrong"):
        gradcheck(BadLinear(3, 3, rng=0), X)


def test_fast_mode_uses_projections_and_still_locates_the_culprit():
    report = gradcheck(mlp(), X, fast=True)
    assert report.passed and report.mode == "random projections"
    with pytest.raises(GradcheckError, match=r"wrong at element \(\d, \d\)"):
        gradcheck(ScaledTanh("factor"), X, fast=True)


def test_kinks_pass_when_analytic_lies_between_one_sided_differences():
    x = np.array([0.0, -1.0, 2.0, 0.0])
    report = gradcheck(ops.relu, x)
    assert report.passed and report.entries[0].kinks == [0, 3]
    # torch's own gradcheck rejects ReLU at its kink:
    tx = torch.tensor(x, requires_grad=True)
    assert not torch.autograd.gradcheck(torch.relu, (tx,), raise_exception=False)


def test_a_kink_value_outside_the_one_sided_range_fails():
    bad_relu = (lambda x: (np.maximum(x, 0), x), lambda x, gy: gy * np.where(x > 0, 1.0, np.where(x == 0, 2.0, 0.0)))
    with pytest.raises(GradcheckError, match="element 0"):
        gradcheck(bad_relu, np.array([0.0, 1.0]))


def test_zero_upstream_and_repeat_checks_catch_bad_backward():
    leaky = (lambda x: (x * 2, None), lambda s, gy: gy * 2 + 1e-3)       # not linear in gy
    report = gradcheck(leaky, X, raise_exception=False, atol=1e-2)
    assert not report.zero_ok and "zero upstream" in str(report)

    class Drifting(nn.Module):                                        # backward changes state
        def forward(self, x):
            self._saved = x
            self.k = 1.0
            return x * 1.0

        def backward(self, gy):
            self.saved()
            self.k += 1
            return gy * (self.k - 1)
    report = gradcheck(Drifting(), X, raise_exception=False)
    assert not report.repeat_ok


def test_gradcheck_leaves_the_module_untouched_and_float32():
    m = nn.Sequential(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, rng=1))
    before = {k: v.copy() for k, v in m.state_dict().items()}
    gradcheck(m, X.astype(np.float32))
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
        assert v.dtype == before[k].dtype
    assert m[0].weight.dtype == np.float32


def test_dropout_module_is_checked_with_a_fixed_mask():
    m = nn.Sequential(nn.Linear(3, 6, rng=0), nn.Dropout(0.5, seed=1), nn.Linear(6, 2, rng=2))
    assert gradcheck(m, X).passed


def test_loss_target_is_not_differentiated():
    report = gradcheck(nn.CrossEntropyLoss(label_smoothing=0.1), X, np.array([0, 2, 1, 1]))
    assert [e.name for e in report.entries] == ["input"] and report.passed


def test_jacobian_analytic_equals_numeric_and_torch():
    x = np.random.default_rng(1).standard_normal(5)
    Ja = jacobian(ops.gelu, x)
    assert Ja.shape == (5, 5)
    np.testing.assert_allclose(Ja, jacobian(ops.gelu, x, numeric=True), atol=1e-8)
    Jt = torch.autograd.functional.jacobian(torch.nn.functional.gelu, torch.tensor(x))
    np.testing.assert_allclose(Ja, Jt.numpy(), atol=1e-12)
    lin = nn.Linear(3, 2, rng=0)
    Jw = jacobian(lin, X, wrt="weight")
    assert Jw.shape == (4, 2, 3, 2)
    np.testing.assert_allclose(Jw, jacobian(lin, X, wrt="weight", numeric=True), atol=1e-8)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="method='forward' is not valid"):
        gradcheck(ops.tanh, X, method="forward")
    with pytest.raises(TypeError, match="expected a Module"):
        gradcheck(np.tanh, X)
    with pytest.raises(ValueError, match="wrt='bias2' is not valid"):
        jacobian(nn.Linear(3, 2), X, wrt="bias2")


def test_chain_matmul_gradient_formula():
    """dL/dX_i = (X_1..X_{i-1})^T G (X_{i+1}..X_n)^T, checked for every factor."""
    rng = np.random.default_rng(2)
    Xs = [rng.standard_normal(s) for s in [(2, 3), (3, 4), (4, 2), (2, 3)]]
    assert gradcheck(ops.chain_matmul, *Xs, method="complex-step").passed
    G = rng.standard_normal((2, 3))
    grads = ops.chain_matmul.backward(ops.chain_matmul.forward(*Xs)[1], G)
    np.testing.assert_allclose(grads[2], (Xs[0] @ Xs[1]).T @ G @ Xs[3].T, atol=1e-12)


def test_a_gradient_that_is_zero_in_theory_is_not_reported_as_a_large_relative_error():
    # batch norm removes the mean, so the bias of the Linear before it has gradient exactly 0
    m = nn.Sequential(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4), nn.Tanh())
    report = gradcheck(m, X)
    bias = next(e for e in report.entries if e.name == "0.bias")
    assert report.passed and bias.max_rel_err < 1e-3
