"""The tape, the several-inputs-and-outputs contract, the modules generated from
the registry, per-call saved state and its misuse, against PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest

import handydl
from handydl import checkpoint, gradcheck, nn, ops, tape
from handydl.nn import layers

torch = pytest.importorskip("torch")
RNG = np.random.default_rng(0)


def t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def close(a, b, tol=1e-12):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# -- the tape over ops ------------------------------------------------------------------

def test_tape_sums_the_gradients_of_a_value_used_twice():
    x, W = RNG.standard_normal((4, 3)), RNG.standard_normal((3, 3))
    gy = RNG.standard_normal((4, 3))
    with tape.Tape() as rec:
        h = ops.tanh(x)
        y = ops.add(ops.mul(h, h), ops.linear(h, W))      # h is used three times
    gx, gW = rec.backward(y, gy, wrt=[x, W])
    tx, tW = t(x, True), t(W, True)
    th = torch.tanh(tx)
    (th * th + th @ tW).backward(t(gy))
    close(gx, tx.grad)
    close(gW, tW.grad)
    text = rec.explain()
    assert "4 recorded op(s)" in text and text.index("4. add") < text.index("1. tanh")
    assert "used by ops 2, 2, 3" in text and "sum of their contributions" in text
    assert ops.tanh.derivative in text


def test_tape_follows_several_outputs_and_broadcasting():
    x, b = RNG.standard_normal((3, 7)), RNG.standard_normal(4)
    g1, g2 = RNG.standard_normal((3, 3)), RNG.standard_normal((3, 4))
    with tape.Tape() as rec:
        p, q = ops.split(x, split_size_or_sections=[3, 4])
        y = ops.concat(ops.sigmoid(p), ops.add(q, b), dim=-1)
    gx, gb = rec.backward(y, np.concatenate([g1, g2], axis=1), wrt=[x, b])
    tx, tb = t(x, True), t(b, True)
    tp, tq = torch.split(tx, [3, 4], dim=-1)
    torch.cat([torch.sigmoid(tp), tq + tb], dim=-1).backward(t(np.concatenate([g1, g2], axis=1)))
    close(gx, tx.grad)
    close(gb, tb.grad)


def test_tape_refuses_an_output_it_did_not_record_and_a_wrong_gradient():
    x = RNG.standard_normal(3)
    with tape.Tape() as rec:
        y = ops.tanh(x)
    with pytest.raises(ValueError, match="not produced by an op recorded"):
        rec.backward(np.tanh(x), np.ones(3))
    with pytest.raises(ValueError, match=r"has shape \(2,\), expected \(3,\)"):
        rec.backward(y, np.ones(2))
    with pytest.raises(ValueError, match="expected 1 upstream gradient"):
        rec.backward(y, np.ones(3), np.ones(3))


def test_tape_names_arrays_computed_outside_it():
    x = RNG.standard_normal(3)
    with tape.Tape() as rec:
        rec.watch(x)
        y = ops.sigmoid(np.exp(x))             # np.exp is invisible to the tape
    gx, = rec.backward(y, np.ones(3), wrt=[x])
    assert not gx.any()                        # no path from x through recorded ops
    assert "came from outside the tape" in rec.explain()


def test_fused_float32_ops_run_on_the_tape():
    x = RNG.standard_normal(10000).astype(np.float32)    # large enough for the fused path
    gy = RNG.standard_normal(10000).astype(np.float32)
    with tape.Tape() as rec:
        y = ops.gelu(x)
    gx, = rec.backward(y, gy, wrt=[x])
    _, saved = ops.gelu.forward(x)
    close(gx, ops.gelu.backward(saved, gy)[0], 1e-6)
    assert gx.dtype == np.float32


# -- modules with several inputs and outputs ------------------------------------------------

class Gate(nn.Module):
    """A forward only: y = sigmoid(a W) * b, z = a + b (two inputs, two outputs)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3, dtype=np.float64, rng=1)

    def forward(self, a, b):
        return ops.mul(ops.sigmoid(self.lin(a)), b), ops.add(a, b)


def test_a_forward_only_module_gets_its_backward_from_the_tape():
    m = Gate()
    a, b = RNG.standard_normal((5, 3)), RNG.standard_normal((5, 3))
    gy, gz = RNG.standard_normal((5, 3)), RNG.standard_normal((5, 3))
    m(a, b)
    ga, gb = m.backward(gy, gz)
    ta, tb = t(a, True), t(b, True)
    tW, tbias = t(m.lin.weight.data, True), t(m.lin.bias.data, True)
    ty = torch.sigmoid(ta @ tW + tbias) * tb
    torch.autograd.backward([ty, ta + tb], [t(gy), t(gz)])
    close(ga, ta.grad)
    close(gb, tb.grad)
    close(m.lin.weight.grad, tW.grad)
    close(m.lin.bias.grad, tbias.grad)
    assert m.saved_count == 0 and m.lin.saved_count == 0       # nothing left behind
    m(a, b)
    assert m.backward(gy, None, input_grad=False) is None     # None: a zero upstream gradient
    assert gradcheck(Gate(), a, b).passed
    assert [e.name for e in gradcheck(Gate(), a, b).entries][:2] == ["a", "b"]


def test_generated_wiring_modules_match_torch():
    x1, x2 = RNG.standard_normal((2, 3)), RNG.standard_normal((2, 4))
    cat = nn.Concat(dim=1)
    y = cat(x1, x2)
    g = RNG.standard_normal(y.shape)
    g1, g2 = cat.backward(g)
    tx1, tx2 = t(x1, True), t(x2, True)
    torch.cat([tx1, tx2], dim=1).backward(t(g))
    close(g1, tx1.grad)
    close(g2, tx2.grad)
    split = nn.Split(2, dim=1)
    pieces = split(y)
    assert [p.shape for p in pieces] == [(2, 2), (2, 2), (2, 2), (2, 1)]
    gs = [RNG.standard_normal(p.shape) for p in pieces]
    gs[1] = None                                        # a piece nobody used
    gx = split.backward(*gs)
    ty = t(y, True)
    used = [p for p, g in zip(torch.split(ty, 2, dim=1), gs) if g is not None]
    torch.autograd.backward(used, [t(g) for g in gs if g is not None])
    close(gx, ty.grad)
    with pytest.raises(ValueError, match="expected 4 upstream gradient"):
        split(y)
        split.backward(gs[0])
    assert gradcheck(nn.Split([1, 5, 1]), y).passed
    assert gradcheck(nn.Concat(), x1, x1).passed


def test_loss_target_gradient_only_when_asked():
    loss_fn = nn.MSELoss()
    x, y = RNG.standard_normal((3, 2)), RNG.standard_normal((3, 2))
    loss_fn(x, y)
    gx = loss_fn.backward()
    assert isinstance(gx, np.ndarray)
    loss_fn(x, y)
    g_in, g_target = loss_fn.backward(target_grad=True)
    close(g_in, gx)
    assert g_target is None             # the op does not differentiate its target
    ce = nn.CrossEntropyLoss()
    ce(x, np.array([0, 1, 0]))
    assert ce.backward(target_grad=True)[1] is None


# -- per-call state and its misuse -------------------------------------------------------------

def test_no_grad_keeps_nothing_and_zero_grad_drops_pending_states():
    m = nn.Sequential(nn.Linear(3, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=1))
    x = RNG.standard_normal((5, 3)).astype(np.float32)
    with nn.no_grad():
        for _ in range(10):
            m(x)
    assert all(mod.saved_count == 0 for mod in m.modules())
    with pytest.raises(RuntimeError, match="no_grad"):
        m.backward(np.ones((5, 2), np.float32))
    m(x)
    m(x)
    assert m[0].saved_count == 2
    m.zero_grad()
    assert all(mod.saved_count == 0 for mod in m.modules())


def test_a_forward_that_fails_part_way_leaves_no_state_behind():
    m = nn.Sequential(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(5), nn.Linear(5, 2, rng=1))
    x = np.ones((6, 3), np.float32)
    with pytest.raises(ValueError, match="expected 5 features"):
        m(x)
    assert all(mod.saved_count == 0 for mod in m.modules())
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward(np.ones((6, 2), np.float32))


def test_a_refused_upstream_gradient_keeps_the_saved_state():
    lin = nn.Linear(3, 2, dtype=np.float64, rng=0)
    x = RNG.standard_normal((4, 3))
    lin(x)
    with pytest.raises(ValueError, match="expected gradient of shape"):
        lin.backward(np.ones((4, 3)))
    assert lin.saved_count == 1
    lin.backward(np.ones((4, 2)))                       # the state is still there
    close(lin.weight.grad, x.T @ np.ones((4, 2)))


def test_input_grad_false_skips_dx_through_composites():
    block = nn.Sequential(nn.Flatten(), nn.Residual(nn.Sequential(nn.Linear(6, 6, rng=0), nn.Tanh())))
    x = RNG.standard_normal((4, 2, 3)).astype(np.float32)
    block(x)
    assert block.backward(np.ones((4, 6), np.float32), input_grad=False) is None
    assert all(mod.saved_count == 0 for mod in block.modules())
    g_skip = block[1].f[0].weight.grad.copy()
    block.zero_grad()
    block(x)
    block.backward(np.ones((4, 6), np.float32))
    close(block[1].f[0].weight.grad, g_skip)


# -- modules generated from the registry ----------------------------------------------------------

@pytest.mark.parametrize("name", [n for n, op in ops.REGISTRY.items() if op.module])
def test_every_op_that_names_a_module_has_it_with_torch_names(name):
    op = ops.get(name)
    cls = getattr(nn, op.module)
    assert cls.op is op and op.formula in cls.__doc__
    m = cls()
    assert m.params == op.bind({})
    assert list(m.get_config()) == list(op.params)
    if op.params:       # positional arguments in the op's order, as torch.nn's
        first, value = next(iter(op.params.items()))
        assert cls(value).params[first] == value


def test_a_new_op_gets_its_module_without_touching_nn():
    op = ops.registry.Op(name="double", fn=lambda x, k: (k * x, k), kind="activation",
                         formula="y = kx", derivative="k", params={"k": 2.0}, module="Double")
    op.set_backward(lambda k, gy: gy * k)
    cls = layers._generated_class(op)
    m = cls(3.0)
    assert cls.__name__ == "Double" and m.get_config() == {"k": 3.0}
    close(m(np.ones(2)), [3.0, 3.0])
    close(m.backward(np.ones(2)), [3.0, 3.0])
    with pytest.raises(TypeError, match=r"expected Double\(k=2.0\)"):
        cls(1.0, 2.0)


# -- gradcheck against the tape and checkpoints ----------------------------------------------------

def test_gradcheck_against_the_tape_names_a_forgotten_skip_term():
    block = nn.Residual(nn.Sequential(nn.Linear(3, 3, dtype=np.float64, rng=0), nn.Tanh()))
    x = RNG.standard_normal((4, 3))
    report = gradcheck(block, x, against="tape")
    assert report.passed and report.reference == "tape"

    class Bad(nn.Residual):
        def backward(self, gy, input_grad=True):
            gx = super().backward(gy)
            return gx - gy                      # the skip path's gy forgotten
    bad = Bad(nn.Sequential(nn.Linear(3, 3, dtype=np.float64, rng=0), nn.Tanh()))
    with pytest.raises(handydl.GradcheckError, match=r"gradient of input is wrong at element \(\d, \d\): "
                                                     r"analytic .* vs tape"):
        gradcheck(bad, x, against="tape")
    with pytest.raises(ValueError, match="against='tape' checks a Module"):
        gradcheck(ops.relu, x, against="tape")


def test_checkpoint_keeps_shared_modules_and_tied_weights(tmp_path):
    a, b = nn.Linear(4, 4, rng=0), nn.Linear(4, 4, rng=1)
    b.weight = a.weight
    lin = nn.Linear(4, 4, rng=2)
    model = nn.Sequential(lin, nn.Tanh(), lin, nn.Parallel(a, b, merge="concat"),
                          nn.Linear(8, 2, rng=3))
    path = checkpoint.save(model, tmp_path / "m.npz")
    with np.load(path) as z:
        header = json.loads(str(z["__handydl__"]))
        assert "state/3.1.weight" not in z.files          # a tied weight is stored once
    assert header["tied"] == {"3.1.weight": "3.0.weight"}
    assert header["architecture"]["children"]["2"] == {"ref": "0"}
    loaded = checkpoint.load(path)
    assert loaded[0] is loaded[2] and loaded[3][1].weight is loaded[3][0].weight
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    with nn.no_grad():
        np.testing.assert_array_equal(loaded(x), model.eval()(x))
    assert len(loaded.parameters()) == len(model.parameters()) == 7      # 2 + 2 + 1 + 2


def test_checkpoint_of_a_user_module_needs_registering(tmp_path):
    class Scaled(nn.Module):
        def __init__(self, n=3):
            super().__init__()
            self.n = n
            self.lin = nn.Linear(n, n, rng=0)

        def forward(self, x):
            return ops.mul(self.lin(x), np.float32(2))

        def get_config(self):
            return {"n": self.n}
    with pytest.raises(TypeError, match=r"register it with handydl.checkpoint.register\(Scaled\)"):
        checkpoint.save(Scaled(), tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()
    checkpoint.register(Scaled)
    try:
        m = Scaled()
        loaded = checkpoint.load(checkpoint.save(m, tmp_path / "s.npz"))
        x = np.ones((2, 3), np.float32)
        np.testing.assert_array_equal(loaded(x), m(x))
    finally:
        del checkpoint.MODULES["Scaled"]
    with pytest.raises(checkpoint.CheckpointError, match="unknown module type 'Scaled'.*register"):
        checkpoint.load(tmp_path / "s.npz")


def test_version_1_checkpoints_still_load(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3, rng=0), nn.ReLU())
    arch = {"type": "Sequential", "config": {"children": [
        {"type": "Linear", "config": {"in_features": 2, "out_features": 3, "bias": True, "dtype": "float32"}},
        {"type": "ReLU", "config": {}}]}}
    header = {"format": "handydl-checkpoint", "version": 1, "architecture": arch, "meta": {}}
    arrays = {f"state/{k}": v for k, v in model.state_dict().items()}
    np.savez(tmp_path / "v1.npz", __handydl__=np.array(json.dumps(header)), **arrays)
    loaded = checkpoint.load(tmp_path / "v1.npz")
    x = np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))


# -- every composite pattern, enumerated as ops are --------------------------------------------

@pytest.mark.parametrize("name", list(nn.EXAMPLES))
def test_every_composite_pattern_gradchecks_matches_the_tape_and_round_trips(name, tmp_path):
    model, inputs = nn.example(name)
    assert gradcheck(model, *inputs).passed
    assert gradcheck(model, *inputs, against="tape").passed
    loaded = checkpoint.load(checkpoint.save(model, tmp_path / "m.npz"))
    with nn.no_grad():
        np.testing.assert_array_equal(loaded(*inputs), model.eval()(*inputs))
    f32 = nn.example(name)[0].astype(np.float32)
    y = f32(inputs[0].astype(np.float32))
    assert y.dtype == np.float32 and f32.backward(np.ones_like(y)).dtype == np.float32


def test_glu_matches_torch_and_refuses_an_odd_width():
    x, gy = RNG.standard_normal((3, 6)), RNG.standard_normal((3, 3))
    glu = nn.GLU()
    y = glu(x)
    gx = glu.backward(gy)
    tx = t(x, True)
    ty = torch.nn.GLU()(tx)
    ty.backward(t(gy))
    close(y, ty.detach())
    close(gx, tx.grad)
    with pytest.raises(ValueError, match="odd length 5"):
        glu(np.ones((2, 5)))


def test_the_readme_section_on_graphs_runs_as_written():
    """The code of README's 'Models that are not chains', block after block."""
    from pathlib import Path
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Models that are not chains")[1].split("\n## ")[0]
    blocks = [b.split("```")[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 3
    env = {}
    exec(compile("\n".join(blocks), "README.md", "exec"), env)     # our own text, not user input
    assert env["gx"].shape == env["x"].shape
    assert "recorded op(s)" in env["t"].explain()

    class ForgetsTheSkip(env["PreNormBlock"]):
        def backward(self, gy):
            return self.ln.backward(self.mlp.backward(gy))
    with pytest.raises(handydl.GradcheckError, match="gradient of input is wrong.*vs tape"):
        gradcheck(ForgetsTheSkip(8, 32), env["x"], against="tape")


def test_unflatten_matches_torch_and_names_a_wrong_size():
    x, gy = RNG.standard_normal((4, 12)), RNG.standard_normal((4, 3, 2, 2))
    u = nn.Unflatten(1, (3, 2, 2))
    y = u(x)
    tx = t(x, True)
    ty = torch.nn.Unflatten(1, (3, 2, 2))(tx)
    ty.backward(t(gy))
    close(y, ty.detach())
    close(u.backward(gy), tx.grad)
    with pytest.raises(ValueError, match=r"should have 12 elements"):
        u(np.ones((4, 10)))
