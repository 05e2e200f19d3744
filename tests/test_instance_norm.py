"""nn.InstanceNorm1d/2d beyond module_db: running statistics over several training steps
(momentum 0.1 and None), evaluation with them, float32, a random upstream gradient
through every parameter, bad shapes, checkpoints; against torch.nn.InstanceNorm1d/2d."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import checkpoint, nn

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name,shape", [("InstanceNorm1d", (4, 3, 7)), ("InstanceNorm2d", (2, 3, 4, 5))])
def test_training_steps_then_eval_match_torch(name, shape, momentum, dtype, rtol):
    rng = np.random.default_rng(0)
    kw = dict(eps=1e-3, momentum=momentum, affine=True, track_running_stats=True)
    m = getattr(nn, name)(3, dtype=dtype, **kw)
    tm = getattr(torch.nn, name)(3, dtype=getattr(torch, np.dtype(dtype).name), **kw)
    w, b = rng.uniform(0.5, 1.5, 3).astype(dtype), rng.standard_normal(3).astype(dtype)
    m.weight.data[...], m.bias.data[...] = w, b
    with torch.no_grad():
        tm.weight.copy_(torch.from_numpy(w))
        tm.bias.copy_(torch.from_numpy(b))
    for training in (True, True, True, False):
        m.train(training)
        tm.train(training)
        x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
        gy = rng.standard_normal(shape).astype(dtype)
        m.zero_grad()
        y, gx = m(x), None
        gx = m.backward(gy)
        tx = torch.tensor(x, requires_grad=True)
        tm.zero_grad()
        ty = tm(tx)
        ty.backward(torch.from_numpy(gy))
        assert y.dtype == gx.dtype == dtype
        for a, e in [(y, ty), (gx, tx.grad), (m.weight.grad, tm.weight.grad), (m.bias.grad, tm.bias.grad),
                     (m.running_mean, tm.running_mean), (m.running_var, tm.running_var)]:
            e = e.detach().numpy()
            np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * max(1.0, np.abs(e).max()))
        assert int(m.num_batches_tracked) == int(tm.num_batches_tracked)


def test_bad_input_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"InstanceNorm2d: expected input of shape \(N, 3, H, W\) or \(3, H, W\), got shape \(2, 4, 5, 5\)"):
        nn.InstanceNorm2d(3)(np.zeros((2, 4, 5, 5)))
    with pytest.raises(TypeError, match=r"InstanceNorm1d: affine=1 is not valid; expected True or False"):
        nn.InstanceNorm1d(3, affine=1)
    m = nn.InstanceNorm1d(3)
    m(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"gradient of shape \(3, 2, 4\) does not match"):
        m.backward(np.zeros((3, 2, 4)))


def test_survives_a_checkpoint(tmp_path):
    m = nn.InstanceNorm2d(3, affine=True, track_running_stats=True, bias=False, dtype=np.float64)
    m(np.random.default_rng(1).standard_normal((2, 3, 4, 4)))
    m.weight.data[...] = [0.5, 1.0, 2.0]
    checkpoint.save(m, tmp_path / "m.npz")
    back = checkpoint.load(tmp_path / "m.npz")
    assert back.bias is None and back.track_running_stats
    back.eval()
    m.eval()
    x = np.random.default_rng(2).standard_normal((3, 4, 4))
    np.testing.assert_array_equal(back(x), m(x))
