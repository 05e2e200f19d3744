"""Loss semantics beyond the registry sweep: probability targets, combined
options, the p - y identity, and bad targets."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import nn, ops

torch = pytest.importorskip("torch")
F = torch.nn.functional


def ce_case(seed=0, n=8, C=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, C)) * 3, rng.integers(0, C, n)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, np.array([0.5, 2.0, 1.0, 1.5, 0.7])])
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_cross_entropy_index_targets_all_options_match_torch(reduction, weight, ignore_index, smoothing):
    x, y = ce_case()
    y[0] = 2                                         # at least one ignored row when ignore_index=2
    loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index,
                                  reduction=reduction, label_smoothing=smoothing)
    loss = loss_fn(x, y)
    gy = np.random.default_rng(1).standard_normal(np.shape(loss)) if reduction == "none" else 1.0
    gx = loss_fn.backward(gy)
    tx = torch.tensor(x, requires_grad=True)
    tl = F.cross_entropy(tx, torch.tensor(y), weight=None if weight is None else torch.tensor(weight),
                         ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    tl.backward(torch.tensor(gy))
    np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, np.array([0.5, 2.0, 1.0, 1.5, 0.7])])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_probability_targets_match_torch(reduction, weight, smoothing):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5))
    target = rng.dirichlet(np.ones(5), size=6)
    loss_fn = nn.CrossEntropyLoss(weight=weight, reduction=reduction, label_smoothing=smoothing)
    loss = loss_fn(x, target)
    gy = rng.standard_normal(np.shape(loss)) if reduction == "none" else 1.0
    gx = loss_fn.backward(gy)
    tx = torch.tensor(x, requires_grad=True)
    tl = F.cross_entropy(tx, torch.tensor(target), weight=None if weight is None else torch.tensor(weight),
                         reduction=reduction, label_smoothing=smoothing)
    tl.backward(torch.tensor(gy))
    np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_softmax_cross_entropy_gradient_is_p_minus_y():
    x, y = ce_case(3)
    onehot = np.eye(5)[y]
    gx = ops.cross_entropy.backward(ops.cross_entropy.forward(x, y, reduction="sum")[1], 1.0)[0]
    np.testing.assert_allclose(gx, ops.softmax(x) - onehot, atol=1e-15)


def test_prob_cross_entropy_through_softmax_backward_is_p_minus_y():
    """The textbook chain: dL/dp = -y/(p + eps), then softmax's backward gives p - y."""
    x, y = ce_case(4)
    onehot = np.eye(5)[y]
    p, p_saved = ops.softmax.forward(x)
    _, ce_saved = ops.prob_cross_entropy.forward(p, onehot, reduction="sum", eps=1e-15)
    g_p = ops.prob_cross_entropy.backward(ce_saved, 1.0)[0]
    g_x = ops.softmax.backward(p_saved, g_p)[0]
    np.testing.assert_allclose(g_x, p - onehot, atol=1e-9)


def test_softmax_jacobian_is_diag_p_minus_ppT_and_matches_finite_differences():
    from handydl import jacobian
    x = np.random.default_rng(5).standard_normal((2, 4))
    J = ops.softmax_jacobian(x)
    p = ops.softmax(x)
    for n in range(2):
        np.testing.assert_allclose(J[n], np.diag(p[n]) - np.outer(p[n], p[n]), atol=1e-15)
        Jn = jacobian(ops.softmax, x[n], numeric=True)
        np.testing.assert_allclose(J[n], Jn, atol=1e-9)
    Jlog = ops.log_softmax_jacobian(x)
    np.testing.assert_allclose(Jlog[1], jacobian(ops.log_softmax, x[1], numeric=True), atol=1e-9)


def test_multi_margin_weight_semantics_match_torch_at_p2():
    x, y = ce_case(6)
    w = np.array([0.5, 2.0, 1.0, 1.5, 0.7])
    loss_fn = nn.MultiMarginLoss(p=2, margin=0.7, weight=w)
    loss, gx = loss_fn(x, y), None
    gx = loss_fn.backward()
    tx = torch.tensor(x, requires_grad=True)
    tl = F.multi_margin_loss(tx, torch.tensor(y), p=2, margin=0.7, weight=torch.tensor(w))
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-12)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_bce_at_zero_and_one_is_finite_and_matches_torch():
    p = np.array([0.0, 1.0, 0.0, 1.0])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    loss_fn = nn.BCELoss(reduction="sum")
    with np.errstate(all="raise"):
        loss = loss_fn(p, y)
        g = loss_fn.backward()
    tp = torch.tensor(p, requires_grad=True)
    tl = F.binary_cross_entropy(tp, torch.tensor(y), reduction="sum")
    tl.backward()
    np.testing.assert_allclose(loss, tl.item())
    np.testing.assert_allclose(g, tp.grad.numpy())


def test_ignored_everything_gives_nan_like_torch():
    x, y = ce_case(7, n=3)
    y[:] = 1
    with np.errstate(invalid="ignore"):
        loss = nn.CrossEntropyLoss(ignore_index=1)(x, y)
    assert np.isnan(loss) and np.isnan(F.cross_entropy(torch.tensor(x), torch.tensor(y), ignore_index=1).item())


# -- bad targets ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [nn.CrossEntropyLoss, nn.NLLLoss, nn.MultiMarginLoss])
def test_class_index_out_of_range_names_the_value(make):
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"target 7 is out of range for 4 classes"):
        make()(x, np.array([0, 7, 1]))
    with pytest.raises(ValueError, match=r"target -1 is out of range"):
        make()(x, np.array([0, -1, 1]))


def test_non_integer_class_index_names_the_value():
    with pytest.raises(ValueError, match=r"class indices must be integers, got 1.5"):
        nn.CrossEntropyLoss()(np.zeros((3, 4)), np.array([0.0, 1.5, 2.0]))
    # integral floats (labels read from a CSV) are accepted
    assert np.isfinite(nn.CrossEntropyLoss()(np.zeros((3, 4)), np.array([0.0, 1.0, 2.0])))


@pytest.mark.parametrize("make", [nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.BCEWithLogitsLoss,
                                  nn.HalfSquaredErrorLoss])
def test_target_shape_mismatch_names_both_shapes(make):
    with pytest.raises(ValueError, match=r"expected target of shape \(4, 3\).*got shape \(4, 2\)"):
        make()(np.zeros((4, 3)), np.zeros((4, 2)))


def test_bce_rejects_non_probabilities():
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\], got 1.5"):
        nn.BCELoss()(np.array([0.2, 1.5]), np.array([0.0, 1.0]))


def test_loss_backward_scales_by_upstream_and_keeps_float32():
    x = np.random.default_rng(8).standard_normal((4, 3)).astype(np.float32)
    y = np.zeros((4, 3), np.float32)
    loss_fn = nn.MSELoss()
    loss = loss_fn(x, y)
    assert isinstance(loss, float)
    loss_fn(x, y)                       # a second call: each backward consumes one
    g1, g3 = loss_fn.backward(), loss_fn.backward(3.0)
    assert g1.dtype == np.float32
    np.testing.assert_allclose(g3, 3 * g1, rtol=1e-6)
    np.testing.assert_allclose(g1, 2 * x / x.size, rtol=1e-6)
