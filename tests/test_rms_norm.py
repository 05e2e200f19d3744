"""nn.RMSNorm beyond module_db: eps None per dtype, several normalized dims, the weight's
gradient with a random upstream, no weight without elementwise_affine, bad arguments,
checkpoints; against torch.nn.RMSNorm."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import checkpoint, nn

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("shape,eps", [((3,), None), ((2, 3), None), ((2, 3), 1e-2)])
def test_rms_norm_and_its_gradients_match_torch(shape, eps, dtype, rtol):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4,) + shape) * 1e-4).astype(dtype)     # small: eps matters
    w = rng.uniform(0.5, 1.5, shape).astype(dtype)
    m = nn.RMSNorm(shape, eps=eps, dtype=dtype)
    m.weight.data[...] = w
    y = m(x)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = m.backward(gy)
    tm = torch.nn.RMSNorm(shape, eps=eps, dtype=getattr(torch, np.dtype(dtype).name))
    with torch.no_grad():
        tm.weight.copy_(torch.from_numpy(w))
    tx = torch.tensor(x, requires_grad=True)
    ty = tm(tx)
    ty.backward(torch.from_numpy(gy))
    assert y.dtype == gx.dtype == m.weight.grad.dtype == dtype
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=rtol, atol=rtol * np.abs(tx.grad.numpy()).max())
    np.testing.assert_allclose(m.weight.grad, tm.weight.grad.numpy(), rtol=rtol, atol=rtol)


def test_without_elementwise_affine_there_is_no_weight():
    m, tm = nn.RMSNorm(4, elementwise_affine=False), torch.nn.RMSNorm(4, elementwise_affine=False)
    assert m.weight is None and tm.weight is None and list(m.parameters()) == []
    x = np.random.default_rng(1).standard_normal((2, 4))
    np.testing.assert_allclose(m(x), tm(torch.tensor(x)).numpy(), rtol=1e-12)


@pytest.mark.parametrize("kw,error,match", [
    (dict(normalized_shape=0), ValueError, r"RMSNorm: normalized_shape=0 is not valid"),
    (dict(normalized_shape=(2, 1.5)), TypeError, r"normalized_shape=\(2, 1.5\) is not valid"),
    (dict(normalized_shape=3, eps=-1.0), ValueError, r"RMSNorm: eps=-1.0 is not valid"),
    (dict(normalized_shape=3, elementwise_affine="yes"), TypeError, r"elementwise_affine='yes' is not valid"),
])
def test_bad_arguments_name_the_value(kw, error, match):
    with pytest.raises(error, match=match):
        nn.RMSNorm(**kw)


def test_wrong_input_shape_names_it():
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 2, 3\), got shape \(4, 3, 2\)"):
        nn.RMSNorm((2, 3))(np.zeros((4, 3, 2)))


@pytest.mark.parametrize("affine", [True, False])
def test_survives_a_checkpoint(affine, tmp_path):
    m = nn.RMSNorm((2, 3), eps=1e-3, elementwise_affine=affine, dtype=np.float64)
    if affine:
        m.weight.data[...] = np.arange(6.0).reshape(2, 3)
    checkpoint.save(m, tmp_path / "m.npz")
    back = checkpoint.load(tmp_path / "m.npz")
    x = np.random.default_rng(2).standard_normal((4, 2, 3))
    np.testing.assert_array_equal(back(x), m(x))
