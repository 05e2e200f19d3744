"""The padding modules beyond module_db: every mode and class against torch with a random
upstream gradient in float32 and float64, padding as large as PyTorch allows, bad
arguments and shapes, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import checkpoint, nn

torch = pytest.importorskip("torch")

CLASSES = ["ZeroPad1d", "ZeroPad2d", "ConstantPad1d", "ConstantPad2d", "ReflectionPad1d", "ReflectionPad2d",
           "ReplicationPad1d", "ReplicationPad2d", "CircularPad1d", "CircularPad2d"]


def args(name):
    """Padding as large as each mode allows on a (.., 3, 4) input, and a value for ConstantPad."""
    two = name.endswith("2d")
    if name.startswith("Reflection"):
        pad = (3, 1, 2, 0) if two else (3, 2)         # < the dim (4 wide, 3 high)
    elif name.startswith("Circular"):
        pad = (4, 1, 3, 2) if two else (4, 4)         # <= the dim
    else:
        pad = (5, 0, 1, 4) if two else (2, 5)
    return (pad, -2.5) if name.startswith("Constant") else (pad,)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("name", CLASSES)
def test_padding_matches_torch(name, batched, dtype):
    rng = np.random.default_rng(0)
    shape = ((2, 3, 4) if name.endswith("2d") else (2, 4)) if not batched else \
        ((2, 2, 3, 4) if name.endswith("2d") else (2, 3, 4))
    x = rng.standard_normal(shape).astype(dtype)
    m = getattr(nn, name)(*args(name))
    y = m(x)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = m.backward(gy)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch.nn, name)(*args(name))(tx)
    ty.backward(torch.from_numpy(gy))
    assert y.dtype == gx.dtype == dtype and m.padding == getattr(torch.nn, name)(*args(name)).padding
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-6 if dtype is np.float32 else 1e-14)


def test_errors_name_the_value():
    with pytest.raises(TypeError, match=r"ZeroPad2d: padding=\(1, 2\) is not valid; expected an integer or a tuple of 4"):
        nn.ZeroPad2d((1, 2))
    with pytest.raises(ValueError, match=r"ReflectionPad1d: padding=\(-1, -1\) is not valid; expected integers >= 0"):
        nn.ReflectionPad1d(-1)
    with pytest.raises(TypeError, match=r"ConstantPad1d: value='0' is not valid"):
        nn.ConstantPad1d(1, "0")
    with pytest.raises(ValueError, match=r"reflect padding \(4, 4\) must be smaller than the dim it pads \(4\)"):
        nn.ReflectionPad1d(4)(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"circular padding \(5, 5\) must be at most the dim it pads \(4\)"):
        nn.CircularPad1d(5)(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"ReplicationPad2d: expected input of shape \(C, H, W\) or \(N, C, H, W\), got shape \(4,\)"):
        nn.ReplicationPad2d(1)(np.zeros(4))


@pytest.mark.parametrize("name", ["ConstantPad2d", "ReflectionPad1d"])
def test_survives_a_checkpoint(name, tmp_path):
    m = getattr(nn, name)(*args(name))
    checkpoint.save(m, tmp_path / "m.npz")
    back = checkpoint.load(tmp_path / "m.npz")
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    assert type(back) is type(m) and back.padding == m.padding
    np.testing.assert_array_equal(back(x), m(x))


@pytest.mark.parametrize("name,shape", [("ZeroPad1d", (4,)), ("ConstantPad2d", (4, 5)),
                                        ("ZeroPad2d", (2, 2, 2, 4, 5)), ("ConstantPad1d", (2, 2, 2, 4))])
def test_constant_padding_takes_any_number_of_dims_as_torch(name, shape):
    x = np.random.default_rng(3).standard_normal(shape)
    m = getattr(nn, name)(*args(name))
    y = m(x)
    gy = np.random.default_rng(4).standard_normal(y.shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch.nn, name)(*args(name))(tx)
    ty.backward(torch.from_numpy(gy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(m.backward(gy), tx.grad.numpy())
