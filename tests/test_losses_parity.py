"""The losses added for torch parity (issue 21) beyond the registry sweep of test_ops.py:
the modules' several inputs and gradients, var broadcasting, the conventions at the hinges
(h = 0 exactly), extreme margins, unbatched inputs and bad arguments; each against torch."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import nn, ops

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_grads(fn, arrays, wrt, gy, **kw):
    """fn(*tensors, **kw) and its gradients w.r.t. the inputs listed in wrt, upstream gy."""
    ts = [torch.tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    loss = fn(*ts, **kw)
    grads = torch.autograd.grad(loss, [ts[i] for i in wrt], torch.tensor(gy, dtype=loss.dtype))
    return loss.detach().numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("var_shape", [(4, 3), (4,), (4, 1), (1, 3)])
def test_gaussian_nll_var_broadcasts_and_its_gradient_matches_torch(var_shape, reduction):
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    v = rng.uniform(0.1, 2.0, var_shape)
    v.flat[0] = 1e-9                                     # below eps: clamped, gradient passes
    gy = rng.standard_normal((4, 3)) if reduction == "none" else np.array(0.7)
    loss_fn = nn.GaussianNLLLoss(full=True, reduction=reduction)
    loss = loss_fn(x, t, v)
    gx, gv = loss_fn.backward(gy if reduction == "none" else 0.7)
    tl, (tgx, tgv) = torch_grads(F.gaussian_nll_loss, (x, t, v), (0, 2), gy, full=True, reduction=reduction)
    np.testing.assert_allclose(loss, tl, rtol=1e-12)
    np.testing.assert_allclose(gx, tgx, rtol=1e-10)
    np.testing.assert_allclose(gv, tgv, rtol=1e-10)
    assert gv.shape == var_shape


def test_gaussian_nll_refuses_negative_and_misshapen_var():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"var has a negative entry \(-1.0\)"):
        nn.GaussianNLLLoss()(x, x, -np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"var of shape \(3, 4\) is not valid for input of shape \(4, 3\)"):
        nn.GaussianNLLLoss()(x, x, np.ones((3, 4)))


@pytest.mark.parametrize("name,fn,margin", [("MarginRankingLoss", F.margin_ranking_loss, 0.5),
                                            ("CosineEmbeddingLoss", F.cosine_embedding_loss, 0.2)])
def test_two_input_losses_return_both_gradients_as_torch(name, fn, margin):
    rng = np.random.default_rng(1)
    shape = (7,) if name == "MarginRankingLoss" else (7, 4)
    x1, x2 = rng.standard_normal(shape), rng.standard_normal(shape)
    y = rng.choice([-1.0, 1.0], size=7)
    loss_fn = getattr(nn, name)(margin=margin, reduction="none")
    loss = loss_fn(x1, x2, y)
    gy = rng.standard_normal(7)
    g1, g2 = loss_fn.backward(gy)
    tl, (t1, t2) = torch_grads(fn, (x1, x2, y), (0, 1), gy, margin=margin, reduction="none")
    np.testing.assert_allclose(loss, tl, rtol=1e-12)
    np.testing.assert_allclose(g1, t1, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(g2, t2, rtol=1e-10, atol=1e-15)
    loss_fn(x1, x2, y)
    assert len(loss_fn.backward(gy, target_grad=True)) == 3


def test_hinges_at_exactly_zero_follow_torch():
    """max(0, h) at h = 0: the margin ranking and hinge embedding losses pass the gradient
    (PyTorch's clamp_min), the multi-label margin loss does not (its kernel's h > 0)."""
    x1, x2, y = np.array([1.0, 0.0, 2.0]), np.array([0.0, 0.0, 1.0]), np.array([1.0, -1.0, 1.0])
    m = nn.MarginRankingLoss(margin=1.0, reduction="sum")
    m(x1, x2, y)
    _, (t1, t2) = torch_grads(F.margin_ranking_loss, (x1, x2, y), (0, 1), np.array(1.0), margin=1.0,
                              reduction="sum")
    g1, g2 = m.backward()
    np.testing.assert_array_equal(g1, t1)
    np.testing.assert_array_equal(g2, t2)
    x, t = np.array([1.0, 0.5, 1.0]), np.array([-1.0, -1.0, 1.0])
    h = nn.HingeEmbeddingLoss(margin=1.0, reduction="sum")
    h(x, t)
    _, (tg,) = torch_grads(F.hinge_embedding_loss, (x, t), (0,), np.array(1.0), margin=1.0, reduction="sum")
    np.testing.assert_array_equal(h.backward(), tg)
    x, t = np.array([[0.0, 1.0, 0.0, 2.0]]), np.array([[1, -1, 0, 0]])     # h = 1 - (1 - 0) = 0 at i = 0, 2
    mlm = nn.MultiLabelMarginLoss(reduction="sum")
    mlm(x, t)
    _, (tg,) = torch_grads(F.multilabel_margin_loss, (x, t), (0,), np.array(1.0), reduction="sum")
    np.testing.assert_array_equal(mlm.backward(), tg)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_multilabel_margin_unbatched_and_labels_after_minus_one_match_torch(reduction):
    rng = np.random.default_rng(2)
    for x, t in [(rng.standard_normal(5), np.array([3, 0, -1, 1, 2])),
                 (rng.standard_normal((3, 5)), np.array([[3, 3, -1, 1, 0], [4, 0, 1, 2, 3], [-1, 0, 1, 2, 3]]))]:
        loss_fn = nn.MultiLabelMarginLoss(reduction=reduction)
        loss = loss_fn(x, t)
        gy = rng.standard_normal(np.shape(loss)) if reduction == "none" else np.array(1.3)
        g = loss_fn.backward(gy if np.ndim(gy) else float(gy))
        tl, (tg,) = torch_grads(F.multilabel_margin_loss, (x, t), (0,), gy, reduction=reduction)
        np.testing.assert_allclose(loss, tl, rtol=1e-12)
        np.testing.assert_allclose(g, tg, rtol=1e-10, atol=1e-15)


def test_kl_div_batchmean_zero_targets_and_0d_input_match_torch():
    rng = np.random.default_rng(3)
    x = np.log(rng.dirichlet(np.ones(4), size=3))
    t = rng.dirichlet(np.ones(4), size=3)
    t[0, 1] = 0.0                                        # 0 log 0 = 0
    for xs, ts in [(x, t), (np.array(-0.4), np.array(0.3))]:
        for log_target in (False, True):
            tt = np.log(np.maximum(ts, 1e-3)) if log_target else ts
            loss_fn = nn.KLDivLoss(reduction="batchmean", log_target=log_target)
            loss = loss_fn(xs, tt)
            tl, (tg,) = torch_grads(F.kl_div, (xs, tt), (0,), np.array(0.9), reduction="batchmean",
                                    log_target=log_target)
            np.testing.assert_allclose(loss, tl, rtol=1e-12)
            np.testing.assert_allclose(loss_fn.backward(0.9), tg, rtol=1e-12)


def test_poisson_nll_on_negative_log_rates_and_full_matches_torch():
    rng = np.random.default_rng(4)
    x = rng.uniform(-5, 3, (4, 6))
    t = rng.poisson(3.0, (4, 6)).astype(np.float64)
    for full in (False, True):
        loss_fn = nn.PoissonNLLLoss(full=full)
        loss = loss_fn(x, t)
        tl, (tg,) = torch_grads(F.poisson_nll_loss, (x, t), (0,), np.array(1.0), full=full)
        np.testing.assert_allclose(loss, tl, rtol=1e-12)
        np.testing.assert_allclose(loss_fn.backward(), tg, rtol=1e-12)


def test_logistic_losses_are_finite_at_huge_margins_in_float32():
    """softplus(-y x) through logaddexp: a margin of -1e4 costs 1e4, not inf (float32, no warnings)."""
    x = np.array([[1e4, -1e4, 30.0]], np.float32)
    y = np.array([[-1.0, 1.0, 1.0]], np.float32)
    with np.errstate(all="raise"):
        sm = nn.SoftMarginLoss(reduction="none")
        loss = sm(x, y)
        g = sm.backward(np.ones((1, 3), np.float32))
        ml = nn.MultiLabelSoftMarginLoss()
        ml_loss = ml(x, (y > 0).astype(np.float32))
        ml_g = ml.backward()
    assert loss.dtype == g.dtype == ml_g.dtype == np.float32
    np.testing.assert_allclose(loss, [[1e4, 1e4, np.log1p(np.exp(-30.0))]], rtol=1e-6)
    np.testing.assert_allclose(g, [[1.0, -1.0, -np.exp(-30.0)]], rtol=1e-5)
    assert np.isfinite(ml_loss) and abs(ml_loss - 2e4 / 3) < 1


@pytest.mark.parametrize("make,match", [
    (lambda: nn.SmoothL1Loss(beta=-1.0), r"SmoothL1Loss: beta=-1.0 is not valid; expected a finite number >= 0"),
    (lambda: nn.KLDivLoss(reduction="batch"), r"reduction='batch' is not valid; expected one of 'mean', 'batchmean'"),
    (lambda: nn.KLDivLoss(log_target=1), r"log_target=1 is not valid; expected True or False"),
    (lambda: nn.PoissonNLLLoss(eps=float("nan")), r"eps=nan is not valid"),
    (lambda: nn.MarginRankingLoss(margin="1"), r"margin='1' is not valid; expected a finite number"),
    (lambda: nn.GaussianNLLLoss(reduction="batchmean"), r"reduction='batchmean' is not valid"),
])
def test_bad_constructor_arguments_name_the_value(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_bad_shapes_name_them():
    with pytest.raises(ValueError, match=r"input1 of shape \(3,\), input2 of shape \(4,\), target of shape \(3,\)"):
        nn.MarginRankingLoss()(np.zeros(3), np.zeros(4), np.ones(3))
    with pytest.raises(ValueError, match=r"target of shape \(4,\)"):
        nn.CosineEmbeddingLoss()(np.zeros((3, 2)), np.zeros((3, 2)), np.ones(4))
    with pytest.raises(ValueError, match=r"integer class indices in \[0, 3\) or -1"):
        nn.MultiLabelMarginLoss()(np.zeros((2, 3)), np.array([[0, 3, -1], [1, -1, 0]]))
    with pytest.raises(ValueError, match=r"expected target of shape \(2, 3\)"):
        nn.SmoothL1Loss()(np.zeros((2, 3)), np.zeros(3))


def test_smooth_l1_with_beta_zero_is_l1():
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    a, b = nn.SmoothL1Loss(beta=0.0), nn.L1Loss()
    assert a(x, t) == b(x, t)
    np.testing.assert_array_equal(a.backward(), b.backward())
    assert ops.smooth_l1_loss(x, t, beta=1.0) == ops.huber_loss(x, t, delta=1.0)
