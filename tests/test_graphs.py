"""Models that are not chains (issue 13), tested as a new user would write them.

Every gradient is checked against references that do not come from handydl:
PyTorch autograd on the same weights (shared layers and tied weights shared in
torch too), and central differences written here, in float64.  The tape and
``gradcheck(..., against="tape")`` are checked on top of those, not instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import handydl
from handydl import checkpoint, nn, ops, optim, tape
from handydl.data.loader import DataLoader
from handydl.train import fit

torch = pytest.importorskip("torch")

F64 = np.float64
N_IN, N_HID, STEPS = 4, 3, 5          # the RNN: x_t has 4 features, h has 3, 5 steps


# -- references and helpers ----------------------------------------------------------------

def close(a, b, rtol=1e-10):
    """a == b up to rounding: relative to b's largest entry (gradients of O(1))."""
    a, b = np.asarray(a, F64), np.asarray(b, F64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def tt(a, grad=False):
    return torch.tensor(np.asarray(a, F64), dtype=torch.float64, requires_grad=grad)


def torch_linear(lin):
    """torch.nn.Linear with the weights of a handydl Linear (whose W is torch's transposed)."""
    t = torch.nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                        dtype=torch.float64)
    with torch.no_grad():
        t.weight.copy_(tt(lin.weight.data.T))
        if lin.bias is not None:
            t.bias.copy_(tt(lin.bias.data))
    return t


def torch_layer_norm(ln):
    t = torch.nn.LayerNorm(ln.normalized_shape, eps=ln.params["eps"], dtype=torch.float64)
    with torch.no_grad():
        t.weight.copy_(tt(ln.weight.data))
        t.bias.copy_(tt(ln.bias.data))
    return t


def linear_pairs(lin, tl):
    """(handydl Parameter, torch Parameter, transposed?) for a Linear."""
    pairs = [(lin.weight, tl.weight, True)]
    if lin.bias is not None:
        pairs.append((lin.bias, tl.bias, False))
    return pairs


@dataclass
class Case:
    """A handydl model, an input, and the same model in torch."""
    model: nn.Module
    x: np.ndarray
    tforward: object                  # torch tensor -> torch tensor
    pairs: list                       # (handydl Parameter, torch Parameter, transposed?)

    def __post_init__(self):
        seen, pairs = set(), []
        for p, tp, tr in self.pairs:          # a tied weight is listed once
            if id(p) not in seen:
                seen.add(id(p))
                pairs.append((p, tp, tr))
        self.pairs = pairs

    def torch_run(self, x, gy):
        """y, dL/dx and {id(handydl param): dL/dparam in handydl's layout} from torch."""
        for _, tp, _ in self.pairs:
            tp.grad = None
        xt = tt(x, grad=True)
        yt = self.tforward(xt)
        yt.backward(tt(gy))
        grads = {id(p): (tp.grad.T if tr else tp.grad).numpy().copy() for p, tp, tr in self.pairs}
        return yt.detach().numpy(), xt.grad.numpy(), grads


def upstream(case, seed=7):
    y = forward_no_grad(case.model, case.x)
    return np.random.default_rng(seed).standard_normal(np.shape(y))


def forward_no_grad(model, x):
    with nn.no_grad():
        return model(x)


def checked_elements(array, limit=48):
    """Every element of a small array; a fixed sample of a large one (for speed)."""
    if array.size <= limit:
        return np.arange(array.size)
    return np.random.default_rng(array.size).choice(array.size, limit, replace=False)


def numeric_grad(model, x, gy, array, h=1e-6):
    """d sum(gy * model(x)) / d array by central differences (array is x or a p.data,
    perturbed in place and restored), at the elements ``checked_elements`` picks
    (NaN elsewhere)."""
    g = np.full(array.shape, np.nan)
    for j in checked_elements(array):
        orig = array.flat[j]
        array.flat[j] = orig + h
        lp = np.sum(gy * forward_no_grad(model, x))
        array.flat[j] = orig - h
        lm = np.sum(gy * forward_no_grad(model, x))
        array.flat[j] = orig
        g.flat[j] = (lp - lm) / (2 * h)
    return g


def set_uniform(p, rng, lo=0.5, hi=1.5):
    p.data[...] = rng.uniform(lo, hi, p.shape)


# -- the models --------------------------------------------------------------------------------

class HandRNN(nn.Module):
    """h_{t+1} = tanh(cell([x_t, h_t])) over the steps, h_0 = 0; returns the last h.

    x has shape (N, steps * n_in): step t reads features t*n_in .. (t+1)*n_in.
    One cell, one Tanh, one Concat called at every step: each keeps one state
    per step, and backward consumes them in reverse (last in, first out)."""

    def __init__(self, n_in=N_IN, n_hidden=N_HID, rng=0):
        super().__init__()
        self.n_hidden = n_hidden
        self.cell = nn.Linear(n_in + n_hidden, n_hidden, dtype=F64, rng=rng)
        self.split = nn.Split(n_in, dim=-1)
        self.cat = nn.Concat(dim=-1)
        self.act = nn.Tanh()

    def forward(self, x):
        xs = self.split(x)
        h = np.zeros((np.shape(x)[0], self.n_hidden), np.asarray(x).dtype)
        for xt in xs:
            h = self.act(self.cell(self.cat(xt, h)))
        self.save(len(xs))
        return h

    def backward(self, gy, input_grad=True):
        steps = self.saved()
        gh, gxs = gy, [None] * steps
        for t in reversed(range(steps)):
            gz = self.act.backward(gh)
            gc = self.cell.backward(gz)
            gxs[t], gh = self.cat.backward(gc)       # dL/dx_t, dL/dh_t
        gx = self.split.backward(*gxs)
        return gx if input_grad else None


class TapeRNN(nn.Module):
    """The same RNN written as a forward only: the tape gives its backward."""

    def __init__(self, n_in=N_IN, n_hidden=N_HID, rng=0):
        super().__init__()
        self.n_in, self.n_hidden = n_in, n_hidden
        self.cell = nn.Linear(n_in + n_hidden, n_hidden, dtype=F64, rng=rng)

    def forward(self, x):
        h = np.zeros((np.shape(x)[0], self.n_hidden), np.asarray(x).dtype)
        for xt in ops.split(x, split_size_or_sections=self.n_in, dim=-1):
            h = ops.tanh(self.cell(ops.concat(xt, h, dim=-1)))
        return h


class BranchMerge(nn.Module):
    """Two paths from x, summed or concatenated: forward only (the tape differentiates it)."""

    def __init__(self, a, b, merge="sum"):
        super().__init__()
        self.a, self.b, self.merge = a, b, merge

    def forward(self, x):
        ya, yb = self.a(x), self.b(x)
        return ops.add(ya, yb) if self.merge == "sum" else ops.concat(ya, yb, dim=-1)


class GatedSkip(nn.Module):
    """y = x + tanh(a(x)) * b(x): x forks three ways; forward only."""

    def __init__(self, n=4, rng=0):
        super().__init__()
        self.a = nn.Linear(n, n, dtype=F64, rng=rng)
        self.b = nn.Linear(n, n, dtype=F64, rng=rng + 1)

    def forward(self, x):
        return ops.add(x, ops.mul(ops.tanh(self.a(x)), self.b(x)))


def mlp_block(rng, n=8, hidden=16):
    """x + Linear(GELU(Linear(LayerNorm(x)))), LayerNorm's affine parameters not trivial."""
    ln = nn.LayerNorm(n, dtype=F64)
    set_uniform(ln.weight, rng)
    set_uniform(ln.bias, rng, -0.5, 0.5)
    l1 = nn.Linear(n, hidden, dtype=F64, rng=rng)
    l2 = nn.Linear(hidden, n, dtype=F64, rng=rng)
    return nn.Residual(nn.Sequential(ln, l1, nn.GELU(), l2))


def torch_block(block):
    ln, l1, _, l2 = list(block.f)
    tln, t1, t2 = torch_layer_norm(ln), torch_linear(l1), torch_linear(l2)
    pairs = [(ln.weight, tln.weight, False), (ln.bias, tln.bias, False)]
    pairs += linear_pairs(l1, t1) + linear_pairs(l2, t2)
    return (lambda x: x + t2(torch.nn.functional.gelu(t1(tln(x))))), pairs


def case_used_twice():
    lin = nn.Linear(3, 3, dtype=F64, rng=1)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    tl = torch_linear(lin)
    x = np.random.default_rng(0).standard_normal((4, 3))
    return Case(model, x, lambda x: tl(torch.tanh(tl(x))), linear_pairs(lin, tl))


def case_tied_weight():
    a, b = nn.Linear(3, 3, dtype=F64, rng=1), nn.Linear(3, 3, dtype=F64, rng=2)
    b.weight = a.weight
    model = nn.Sequential(a, nn.Tanh(), b)
    ta, tb = torch_linear(a), torch_linear(b)
    tb.weight = ta.weight                               # shared in torch too
    x = np.random.default_rng(0).standard_normal((4, 3))
    return Case(model, x, lambda x: tb(torch.tanh(ta(x))), linear_pairs(a, ta) + linear_pairs(b, tb))


def torch_rnn(cell):
    tc = torch_linear(cell)

    def f(x):
        h = torch.zeros(x.shape[0], N_HID, dtype=torch.float64)
        for t in range(STEPS):
            h = torch.tanh(tc(torch.cat([x[:, t * N_IN:(t + 1) * N_IN], h], dim=-1)))
        return h
    return f, linear_pairs(cell, tc)


def case_rnn(cls=HandRNN):
    model = cls(rng=3)
    f, pairs = torch_rnn(model.cell)
    x = np.random.default_rng(0).standard_normal((3, STEPS * N_IN))
    return Case(model, x, f, pairs)


def case_rnn_tape():
    return case_rnn(TapeRNN)


def case_residual_mlp():
    rng = np.random.default_rng(5)
    b1, b2 = mlp_block(rng), mlp_block(rng)
    model = nn.Sequential(b1, b2)
    f1, p1 = torch_block(b1)
    f2, p2 = torch_block(b2)
    x = np.random.default_rng(0).standard_normal((4, 8))
    return Case(model, x, lambda x: f2(f1(x)), p1 + p2)


def _branches():
    la, lb = nn.Linear(4, 5, dtype=F64, rng=11), nn.Linear(4, 5, dtype=F64, rng=12)
    ta, tb = torch_linear(la), torch_linear(lb)
    a = nn.Sequential(la, nn.Tanh())
    pairs = linear_pairs(la, ta) + linear_pairs(lb, tb)
    return a, lb, (lambda x: torch.tanh(ta(x))), tb, pairs


def _merged(fa, fb, merge):
    if merge == "sum":
        return lambda x: fa(x) + fb(x)
    return lambda x: torch.cat([fa(x), fb(x)], dim=-1)


def case_parallel(merge):
    a, b, fa, fb, pairs = _branches()
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case(nn.Parallel(a, b, merge=merge), x, _merged(fa, fb, merge), pairs)


def case_tape_merge(merge):
    a, b, fa, fb, pairs = _branches()
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case(BranchMerge(a, b, merge), x, _merged(fa, fb, merge), pairs)


def case_gated_skip():
    model = GatedSkip(rng=21)
    ta, tb = torch_linear(model.a), torch_linear(model.b)
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case(model, x, lambda x: x + torch.tanh(ta(x)) * tb(x),
                linear_pairs(model.a, ta) + linear_pairs(model.b, tb))


class TapeStack(nn.Module):
    """Forward only, children in a ModuleList and a ModuleDict:
    h = LN_in(x); h = h + tanh(L_i(h)) for each layer; y = LN_out(h)."""

    def __init__(self, depth=3, n=4):
        super().__init__()
        self.depth, self.n = depth, n
        rng = np.random.default_rng(depth * 100 + n)
        self.layers = nn.ModuleList([nn.Linear(n, n, dtype=F64, rng=rng) for _ in range(depth)])
        self.norms = nn.ModuleDict({"inp": nn.LayerNorm(n, dtype=F64), "out": nn.LayerNorm(n, dtype=F64)})
        for ln in self.norms.values():
            set_uniform(ln.weight, rng)
            set_uniform(ln.bias, rng, -0.5, 0.5)

    def forward(self, x):
        h = self.norms["inp"](x)
        for lin in self.layers:
            h = ops.add(h, ops.tanh(lin(h)))
        return self.norms["out"](h)

    def get_config(self):
        return {"depth": self.depth, "n": self.n}


def case_tape_stack():
    model = TapeStack()
    tls = [torch_linear(lin) for lin in model.layers]
    tin, tout = torch_layer_norm(model.norms["inp"]), torch_layer_norm(model.norms["out"])

    def f(x):
        h = tin(x)
        for tl in tls:
            h = h + torch.tanh(tl(h))
        return tout(h)
    pairs = [pr for lin, tl in zip(model.layers, tls) for pr in linear_pairs(lin, tl)]
    for ln, tln in ((model.norms["inp"], tin), (model.norms["out"], tout)):
        pairs += [(ln.weight, tln.weight, False), (ln.bias, tln.bias, False)]
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case(model, x, f, pairs)


def case_residual_projection():
    """y = shortcut(x) + f(x), the shortcut a projection 4 -> 6."""
    f1, f2 = nn.Linear(4, 5, dtype=F64, rng=41), nn.Linear(5, 6, dtype=F64, rng=42)
    sc = nn.Linear(4, 6, bias=False, dtype=F64, rng=43)
    model = nn.Residual(nn.Sequential(f1, nn.SiLU(), f2), shortcut=sc)
    t1, t2, ts = torch_linear(f1), torch_linear(f2), torch_linear(sc)
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case(model, x, lambda x: ts(x) + t2(torch.nn.functional.silu(t1(x))),
                linear_pairs(f1, t1) + linear_pairs(f2, t2) + linear_pairs(sc, ts))


def case_shared_activation_first():
    """The same parameter-free module first and last: Sequential(act, lin, act)."""
    act, lin = nn.Tanh(), nn.Linear(3, 3, dtype=F64, rng=6)
    tl = torch_linear(lin)
    x = np.random.default_rng(0).standard_normal((4, 3))
    return Case(nn.Sequential(act, lin, act), x, lambda x: torch.tanh(tl(torch.tanh(x))),
                linear_pairs(lin, tl))


def case_parallel_identity():
    """Three branches summed, one of them the identity (a skip written as a Parallel)."""
    l1, l2 = nn.Linear(4, 4, dtype=F64, rng=51), nn.Linear(4, 4, dtype=F64, rng=52)
    t1, t2 = torch_linear(l1), torch_linear(l2)
    model = nn.Parallel(nn.Identity(), l1, nn.Sequential(l2, nn.GELU()), merge="sum")
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case(model, x, lambda x: x + t1(x) + torch.nn.functional.gelu(t2(x)),
                linear_pairs(l1, t1) + linear_pairs(l2, t2))


def case_tape_nested():
    """A forward-only module inside a forward-only module."""
    inner = GatedSkip(rng=61)
    lb = nn.Linear(4, 3, dtype=F64, rng=63)
    model = BranchMerge(inner, lb, "concat")
    ta, tb, tl = torch_linear(inner.a), torch_linear(inner.b), torch_linear(lb)
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case(model, x, lambda x: torch.cat([x + torch.tanh(ta(x)) * tb(x), tl(x)], dim=-1),
                linear_pairs(inner.a, ta) + linear_pairs(inner.b, tb) + linear_pairs(lb, tl))


def case_tape_used_twice():
    """One forward-only module applied twice in a hand-written Sequential."""
    g = GatedSkip(rng=71)
    ta, tb = torch_linear(g.a), torch_linear(g.b)

    def once(x):
        return x + torch.tanh(ta(x)) * tb(x)
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case(nn.Sequential(g, nn.Tanh(), g), x, lambda x: once(torch.tanh(once(x))),
                linear_pairs(g.a, ta) + linear_pairs(g.b, tb))


def case_batchnorm_used_twice():
    """A BatchNorm (training mode) and a Linear each used twice."""
    lin, bn = nn.Linear(3, 3, dtype=F64, rng=81), nn.BatchNorm1d(3, dtype=F64)
    rng = np.random.default_rng(82)
    set_uniform(bn.weight, rng)
    set_uniform(bn.bias, rng, -0.5, 0.5)
    tl = torch_linear(lin)
    tbn = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    with torch.no_grad():
        tbn.weight.copy_(tt(bn.weight.data))
        tbn.bias.copy_(tt(bn.bias.data))
    x = np.random.default_rng(0).standard_normal((6, 3))
    case = Case(nn.Sequential(lin, bn, nn.Tanh(), lin, bn), x,
                lambda x: tbn(tl(torch.tanh(tbn(tl(x))))),
                linear_pairs(lin, tl) + [(bn.weight, tbn.weight, False), (bn.bias, tbn.bias, False)])
    case.tbn = tbn
    return case


def case_sequential_split_mul():
    """A module with two outputs feeding one with two inputs inside a Sequential:
    Linear(4, 6), Split(3) -> (a, b), Mul -> a * b, Linear(3, 2)."""
    l1, l2 = nn.Linear(4, 6, dtype=F64, rng=91), nn.Linear(3, 2, dtype=F64, rng=92)
    t1, t2 = torch_linear(l1), torch_linear(l2)
    model = nn.Sequential(l1, nn.Split(3, dim=-1), nn.Mul(), l2)

    def f(x):
        a, b = torch.split(t1(x), 3, dim=-1)
        return t2(a * b)
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case(model, x, f, linear_pairs(l1, t1) + linear_pairs(l2, t2))


def case_glu_in_sequential():
    """nn.GLU (a forward-only composite of handydl's) between two Linears."""
    l1, l2 = nn.Linear(4, 6, dtype=F64, rng=93), nn.Linear(3, 2, dtype=F64, rng=94)
    t1, t2 = torch_linear(l1), torch_linear(l2)
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case(nn.Sequential(l1, nn.GLU(), l2), x,
                lambda x: t2(torch.nn.functional.glu(t1(x), dim=-1)),
                linear_pairs(l1, t1) + linear_pairs(l2, t2))


CASES = {
    "used_twice": case_used_twice,
    "tied_weight": case_tied_weight,
    "rnn_hand": case_rnn,
    "rnn_tape": case_rnn_tape,
    "residual_mlp": case_residual_mlp,
    "parallel_sum": lambda: case_parallel("sum"),
    "parallel_concat": lambda: case_parallel("concat"),
    "tape_sum": lambda: case_tape_merge("sum"),
    "tape_concat": lambda: case_tape_merge("concat"),
    "tape_gated_skip": case_gated_skip,
    "tape_stack": case_tape_stack,
    "residual_projection": case_residual_projection,
    "shared_activation_first": case_shared_activation_first,
    "parallel_identity": case_parallel_identity,
    "tape_nested": case_tape_nested,
    "tape_used_twice": case_tape_used_twice,
    "batchnorm_used_twice": case_batchnorm_used_twice,
    "sequential_split_mul": case_sequential_split_mul,
    "glu_in_sequential": case_glu_in_sequential,
}
ALL = pytest.mark.parametrize("name", list(CASES))


# -- 1-6: forward and every gradient against torch, the tape and central differences -----------

@ALL
def test_every_parameter_is_compared(name):
    """The torch mirror covers every distinct parameter, listed once by handydl."""
    case = CASES[name]()
    params = case.model.parameters()
    assert len({id(p) for p in params}) == len(params)
    assert {id(p) for p in params} == {id(p) for p, _, _ in case.pairs}
    assert len(dict(case.model.named_parameters())) == len(params)


@ALL
def test_forward_and_gradients_match_torch(name):
    case = CASES[name]()
    gy = upstream(case)
    case.model.zero_grad()
    y = case.model(case.x)
    gx = case.model.backward(gy)
    ty, tgx, tgrads = case.torch_run(case.x, gy)
    close(y, ty)
    close(gx, tgx)
    for p, _, _ in case.pairs:
        close(p.grad, tgrads[id(p)])
    assert all(m.saved_count == 0 for m in case.model.modules())   # every state consumed


@ALL
def test_no_input_grad_gives_the_same_parameter_gradients(name):
    case = CASES[name]()
    gy = upstream(case)
    _, _, tgrads = case.torch_run(case.x, gy)
    case.model.zero_grad()
    case.model(case.x)
    assert case.model.backward(gy, input_grad=False) is None
    for p, _, _ in case.pairs:
        close(p.grad, tgrads[id(p)])
    assert all(m.saved_count == 0 for m in case.model.modules())


@ALL
def test_gradients_accumulate_over_two_steps(name):
    """Two forward/backward pairs without zero_grad: grad is the sum of both (+=)."""
    case = CASES[name]()
    gy = upstream(case)
    x2 = case.x * 0.5 + 0.1
    _, _, g1 = case.torch_run(case.x, gy)
    _, _, g2 = case.torch_run(x2, gy)
    case.model.zero_grad()
    for x in (case.x, x2):
        case.model(x)
        case.model.backward(gy)
    for p, _, _ in case.pairs:
        close(p.grad, g1[id(p)] + g2[id(p)])


@ALL
def test_gradcheck_against_tape_passes(name):
    case = CASES[name]()
    report = handydl.gradcheck(case.model, case.x, against="tape")
    assert report.passed
    names = [e.name for e in report.entries]
    assert names[0] == "input"
    assert set(names[1:]) == {n for n, _ in case.model.named_parameters()}


@ALL
def test_tape_backward_matches_torch(name):
    case = CASES[name]()
    gy = upstream(case)
    _, tgx, tgrads = case.torch_run(case.x, gy)
    case.model.zero_grad()
    with tape.Tape() as t:
        y = case.model(case.x)
    gx, = t.backward(y, gy, wrt=[case.x])
    close(gx, tgx)
    for p, _, _ in case.pairs:
        close(p.grad, tgrads[id(p)])
    text = t.explain()
    assert text.startswith(f"backward through {len(t.records)} recorded op(s)")
    for r in t.records:
        assert r.op.name in text
    # recording saved nothing on the modules: no state is left waiting
    assert all(m.saved_count == 0 for m in case.model.modules())


@ALL
def test_central_differences_agree_with_backward(name):
    """Our own central differences (float64) for the input and every parameter."""
    case = CASES[name]()
    gy = upstream(case)
    case.model.zero_grad()
    case.model(case.x)
    gx = case.model.backward(gy)
    x = case.x.copy()
    arrays = [("input", x, gx)] + [(n, p.data, p.grad.copy())
                                   for n, p in case.model.named_parameters()]
    for pname, array, analytic in arrays:
        numeric = numeric_grad(case.model, x, gy, array)
        j = checked_elements(array)
        np.testing.assert_allclose(analytic.ravel()[j], numeric.ravel()[j], rtol=1e-6, atol=1e-8,
                                   err_msg=pname)


def test_module_used_twice_is_one_parameter_pair_and_steps_once():
    case = case_used_twice()
    m = case.model
    lin = m[0]
    assert m[2] is lin
    assert len(m.parameters()) == 2
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias"]
    W0, b0 = lin.weight.data.copy(), lin.bias.data.copy()
    tl = torch_linear(lin)                      # the same initial weights, one torch layer
    gy = upstream(case)

    lr = 0.1
    opt = optim.SGD(m.parameters(), lr=lr)
    opt.zero_grad()
    m(case.x)
    m.backward(gy, input_grad=False)
    g_w, g_b = lin.weight.grad.copy(), lin.bias.grad.copy()
    opt.step()

    topt = torch.optim.SGD(tl.parameters(), lr=lr)
    topt.zero_grad()
    tl(torch.tanh(tl(tt(case.x)))).backward(tt(gy))
    topt.step()
    close(g_w, tl.weight.grad.numpy().T)
    close(lin.weight.data, tl.weight.detach().numpy().T)
    close(lin.bias.data, tl.bias.detach().numpy())
    # moved exactly once: W - lr * (the total gradient), not twice
    close(lin.weight.data, W0 - lr * g_w)
    close(lin.bias.data, b0 - lr * g_b)


def test_tied_weight_is_listed_once_and_steps_once():
    case = case_tied_weight()
    a, _, b = list(case.model)
    assert a.weight is b.weight and a.bias is not b.bias
    assert len(case.model.parameters()) == 3
    assert [n for n, _ in case.model.named_parameters()] == ["0.weight", "0.bias", "2.bias"]
    W0 = a.weight.data.copy()
    gy = upstream(case)
    lr = 0.05
    opt = optim.SGD(case.model.parameters(), lr=lr)
    opt.zero_grad()
    case.model(case.x)
    case.model.backward(gy)
    g = a.weight.grad.copy()
    opt.step()
    assert b.weight.data is a.weight.data
    close(a.weight.data, W0 - lr * g)
    tparams = {id(tp): tp for _, tp, _ in case.pairs}
    topt = torch.optim.SGD(list(tparams.values()), lr=lr)
    topt.zero_grad()
    case.tforward(tt(case.x)).backward(tt(gy))
    topt.step()
    for p, tp, tr in case.pairs:
        close(p.data, (tp.T if tr else tp).detach().numpy())


def test_rnn_cell_keeps_one_state_per_step():
    case = case_rnn()
    m = case.model
    m.zero_grad()
    m(case.x)
    assert m.cell.saved_count == STEPS and m.act.saved_count == STEPS and m.cat.saved_count == STEPS
    assert m.split.saved_count == 1 and m.saved_count == 1
    m.backward(upstream(case))
    assert all(mod.saved_count == 0 for mod in m.modules())


NUMERIC = [n for n in CASES if n not in ("residual_mlp", "tape_stack")]      # the slow ones


@pytest.mark.parametrize("name", NUMERIC)
def test_default_numeric_gradcheck_passes(name):
    """The issue's first complaint: gradcheck(Sequential(lin, act, lin), x) failed."""
    case = CASES[name]()
    assert handydl.gradcheck(case.model, case.x).passed


def test_batchnorm_used_twice_updates_running_statistics_twice():
    case = case_batchnorm_used_twice()
    bn = case.model[1]
    case.model(case.x)
    with torch.no_grad():
        case.tforward(tt(case.x))
    assert int(bn.num_batches_tracked) == 2
    close(bn.running_mean, case.tbn.running_mean.numpy())
    close(bn.running_var, case.tbn.running_var.numpy())
    case.model.backward(upstream(case))


def test_parallel_tuple_merge_and_a_none_gradient():
    a, b, fa, fb, pairs = _branches()
    p = nn.Parallel(a, b, merge="tuple")
    x = np.random.default_rng(0).standard_normal((3, 4))
    p.zero_grad()
    ya, yb = p(x)
    gb = np.random.default_rng(1).standard_normal(yb.shape)
    gx = p.backward(None, gb)               # None: the first output gets no gradient
    xt = tt(x, grad=True)
    ta_out, tb_out = fa(xt), fb(xt)
    close(ya, ta_out.detach().numpy())
    close(yb, tb_out.detach().numpy())
    tb_out.backward(tt(gb))
    close(gx, xt.grad.numpy())
    for prm, tp, tr in pairs:
        tg = np.zeros(prm.shape) if tp.grad is None else (tp.grad.T if tr else tp.grad).numpy()
        close(prm.grad, tg)
    assert handydl.gradcheck(p, x, against="tape").passed


def test_parallel_with_the_same_branch_twice():
    lin = nn.Linear(3, 2, dtype=F64, rng=4)
    p = nn.Parallel(nn.Sequential(lin, nn.Tanh()), lin, merge="concat")
    tl = torch_linear(lin)
    x = np.random.default_rng(0).standard_normal((5, 3))
    gy = np.random.default_rng(1).standard_normal((5, 4))
    p.zero_grad()
    y = p(x)
    gx = p.backward(gy)
    xt = tt(x, grad=True)
    yt = torch.cat([torch.tanh(tl(xt)), tl(xt)], dim=-1)
    yt.backward(tt(gy))
    close(y, yt.detach().numpy())
    close(gx, xt.grad.numpy())
    close(lin.weight.grad, tl.weight.grad.numpy().T)
    close(lin.bias.grad, tl.bias.grad.numpy())
    assert len(p.parameters()) == 2


class TwoInputs(nn.Module):
    """y = la(u) * lb(v): two positional inputs, forward only."""

    def __init__(self):
        super().__init__()
        self.la = nn.Linear(3, 2, dtype=F64, rng=31)
        self.lb = nn.Linear(4, 2, dtype=F64, rng=32)

    def forward(self, u, v):
        return ops.mul(self.la(u), self.lb(v))


def test_module_with_two_inputs_returns_one_gradient_each():
    m = TwoInputs()
    rng = np.random.default_rng(0)
    u, v, gy = rng.standard_normal((5, 3)), rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    m.zero_grad()
    y = m(u, v)
    gu, gv = m.backward(gy)
    ta, tb = torch_linear(m.la), torch_linear(m.lb)
    ut, vt = tt(u, grad=True), tt(v, grad=True)
    yt = ta(ut) * tb(vt)
    yt.backward(tt(gy))
    close(y, yt.detach().numpy())
    close(gu, ut.grad.numpy())
    close(gv, vt.grad.numpy())
    close(m.la.weight.grad, ta.weight.grad.numpy().T)
    close(m.lb.bias.grad, tb.bias.grad.numpy())
    report = handydl.gradcheck(m, u, v, against="tape")
    assert [e.name for e in report.entries][:2] == ["u", "v"]
    handydl.gradcheck(m, u, v)


class NetAndLoss(nn.Module):
    """Forward only: a model and its loss as one module, inputs (x, class indices)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 4, dtype=F64, rng=33)
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x, target):
        return self.loss(self.net(x), target)


def test_module_with_a_loss_inside_gives_none_for_class_indices():
    m = NetAndLoss()
    x = np.random.default_rng(0).standard_normal((5, 3))
    target = np.array([0, 1, 2, 3, 1])
    m.zero_grad()
    loss = m(x, target)
    gx, gt = m.backward(1.0)
    assert gt is None
    tl = torch_linear(m.net)
    xt = tt(x, grad=True)
    lt = torch.nn.functional.cross_entropy(tl(xt), torch.tensor(target))
    lt.backward()
    close(loss, lt.item())
    close(gx, xt.grad.numpy())
    close(m.net.weight.grad, tl.weight.grad.numpy().T)
    report = handydl.gradcheck(m, x, target, against="tape")
    assert [e.name for e in report.entries][0] == "x"          # the indices are not checked
    handydl.gradcheck(m, x, target)


class PassThrough(nn.Module):
    """Forward only, two outputs, the first the input itself: (x, lin(x))."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3, dtype=F64, rng=34)

    def forward(self, x):
        return x, self.lin(x)


def test_output_that_is_the_input_itself():
    m = PassThrough()
    rng = np.random.default_rng(0)
    x, g0, g1 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    m(x)
    gx = m.backward(g0, g1)
    tl = torch_linear(m.lin)
    xt = tt(x, grad=True)
    (torch.sum(xt * tt(g0)) + torch.sum(tl(xt) * tt(g1))).backward()
    close(gx, xt.grad.numpy())
    handydl.gradcheck(m, x, against="tape")


def test_split_concat_modules_against_torch():
    x = np.random.default_rng(0).standard_normal((3, 7))
    s = nn.Split([2, 5], dim=-1)
    y1, y2 = s(x)
    g2 = np.random.default_rng(1).standard_normal(y2.shape)
    gx = s.backward(None, g2)
    xt = tt(x, grad=True)
    t1, t2 = torch.split(xt, [2, 5], dim=-1)
    t2.backward(tt(g2))
    close(gx, xt.grad.numpy())
    c = nn.Concat(dim=0)
    a, b = x[:1], x[1:]
    y = c(a, b)
    ga, gb = c.backward(np.arange(21.0).reshape(3, 7))
    close(y, x)
    close(ga, np.arange(7.0)[None])
    close(gb, np.arange(7.0, 21.0).reshape(2, 7))


# -- 7: planted mistakes are caught and named ------------------------------------------------

class ForgetfulResidual(nn.Residual):
    """A wrong backward: the skip term gy is forgotten (gx = J_f^T gy only)."""

    def backward(self, gy, input_grad=True):
        self.saved()
        return self.f.backward(gy)


class UnsummedParallel(nn.Parallel):
    """A wrong backward: dL/dx is only the last branch's, not the sum over the branches."""

    def backward(self, gy, input_grad=True):
        self.saved()
        gx = None
        for b in reversed(list(self._modules.values())):
            g = b.backward(gy)
            gx = g if gx is None else gx
        return gx


class DoubledResidual(nn.Residual):
    """A wrong backward: f's branch gets 2 gy (the skip's share counted in f too)."""

    def backward(self, gy, input_grad=True):
        self.saved()
        return gy + self.f.backward(2 * gy)


def _doubled():
    block, x = _forgetful()
    return DoubledResidual(block.f), x


def _forgetful():
    rng = np.random.default_rng(5)
    good = mlp_block(rng, n=4, hidden=6)
    return ForgetfulResidual(good.f), np.random.default_rng(0).standard_normal((3, 4))


def _forgetful_after_linear():
    block, x = _forgetful()
    return nn.Sequential(nn.Linear(4, 4, dtype=F64, rng=9), block), x


def _unsummed():
    a, b, *_ = _branches()
    return UnsummedParallel(a, b, merge="sum"), np.random.default_rng(0).standard_normal((3, 4))


PLANTED = pytest.mark.parametrize("build, named", [
    (_forgetful, "gradient of input is wrong"),
    (_forgetful_after_linear, "gradient of 0.weight is wrong"),
    (_unsummed, "gradient of input is wrong"),
    (_doubled, "gradient of f.0.weight is wrong"),
], ids=["forgotten_skip", "forgotten_skip_after_linear", "branches_not_summed", "doubled_branch"])


@PLANTED
def test_planted_mistake_is_caught_against_the_tape(build, named):
    model, x = build()
    with pytest.raises(handydl.GradcheckError) as info:
        handydl.gradcheck(model, x, against="tape")
    assert named in str(info.value)
    assert "tape" in str(info.value)
    assert not info.value.report.passed


@PLANTED
def test_planted_mistake_is_caught_numerically(build, named):
    model, x = build()
    with pytest.raises(handydl.GradcheckError) as info:
        handydl.gradcheck(model, x)
    assert named in str(info.value)


def test_planted_mistake_really_is_wrong():
    """Independently of gradcheck: torch says the forgotten skip term is missing."""
    model, x = _forgetful()
    good = nn.Residual(model.f)
    gy = np.random.default_rng(1).standard_normal(x.shape)
    f, _ = torch_block(good)
    xt = tt(x, grad=True)
    f(xt).backward(tt(gy))
    good(x)
    close(good.backward(gy), xt.grad.numpy())
    model(x)
    close(model.backward(gy), xt.grad.numpy() - gy)


# -- 8: misuse -----------------------------------------------------------------------------------

MISUSE = ["used_twice", "rnn_hand", "residual_mlp", "parallel_concat", "tape_sum", "rnn_tape"]


@pytest.mark.parametrize("name", MISUSE)
def test_backward_twice_for_one_forward_raises(name):
    case = CASES[name]()
    gy = upstream(case)
    case.model(case.x)
    case.model.backward(gy)
    with pytest.raises(RuntimeError, match="backward"):
        case.model.backward(gy)


def test_backward_twice_on_a_single_layer_raises():
    lin = nn.Linear(3, 2, dtype=F64, rng=0)
    lin(np.ones((1, 3)))
    lin.backward(np.ones((1, 2)))
    with pytest.raises(RuntimeError):
        lin.backward(np.ones((1, 2)))


def test_hand_written_backward_after_a_forward_on_a_tape_raises():
    """A tape records instead of the modules: their own backward then has nothing."""
    case = case_residual_mlp()
    with tape.Tape():
        case.model(case.x)
    with pytest.raises(RuntimeError):
        case.model.backward(upstream(case))


def test_abandoned_forwards_in_a_training_loop_do_not_change_the_step():
    """A forward per step never differentiated (metrics without no_grad): LIFO keeps the
    gradients right; the states wait until model.zero_grad() (optimizer.zero_grad()
    leaves them: see the report)."""
    a, b = case_used_twice(), case_used_twice()
    gy = upstream(a)
    for case, abandon in ((a, True), (b, False)):
        opt = optim.SGD(case.model.parameters(), lr=0.1)
        for step in range(3):
            opt.zero_grad()
            if abandon:
                case.model(case.x + step)
            case.model(case.x)
            case.model.backward(gy, input_grad=False)
            opt.step()
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert a.model[0].saved_count == 6          # 3 abandoned calls of a layer used twice
    a.model.zero_grad()
    assert a.model[0].saved_count == 0


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError):
        nn.Residual(nn.Linear(3, 3, dtype=F64)).backward(np.ones((2, 3)))


@pytest.mark.parametrize("gys", [1, 3])
def test_split_with_the_wrong_number_of_upstream_gradients(gys):
    x = np.random.default_rng(0).standard_normal((3, 4))
    s = nn.Split(2, dim=-1)
    s(x)
    with pytest.raises(ValueError, match="2 upstream gradient"):
        s.backward(*[np.ones((3, 2))] * gys)
    # the refused call consumed nothing: the right call still works
    assert s.saved_count == 1
    gx = s.backward(np.ones((3, 2)), None)
    close(gx, np.r_["1", np.ones((3, 2)), np.zeros((3, 2))])


def test_wrong_number_of_upstream_gradients_elsewhere():
    a, b, *_ = _branches()
    x = np.ones((3, 4))
    p = nn.Parallel(a, b, merge="tuple")
    p(x)
    with pytest.raises(ValueError):
        p.backward(np.ones((3, 5)))
    q = nn.Parallel(a, b, merge="sum")
    q(x)
    with pytest.raises(ValueError):
        q.backward(np.ones((3, 5)), np.ones((3, 5)))
    lin = nn.Linear(4, 2, dtype=F64, rng=0)
    with tape.Tape() as t:
        y = lin(x)
    with pytest.raises(ValueError):
        t.backward(y, np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError):
        t.backward(y, np.ones((3, 3)))


class TwoOutputs(nn.Module):
    """Forward only, two outputs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4, dtype=F64, rng=0)

    def forward(self, x):
        return ops.split(self.lin(x), split_size_or_sections=2, dim=-1)


def test_forward_only_module_with_two_outputs():
    m = TwoOutputs()
    x = np.random.default_rng(0).standard_normal((2, 3))
    g1 = np.random.default_rng(1).standard_normal((2, 2))
    m.zero_grad()
    y1, y2 = m(x)
    gx = m.backward(g1, None)
    tl = torch_linear(m.lin)
    xt = tt(x, grad=True)
    tl(xt)[:, :2].backward(tt(g1))
    close(gx, xt.grad.numpy())
    close(m.lin.weight.grad, tl.weight.grad.numpy().T)
    m(x)
    with pytest.raises(ValueError):
        m.backward(g1)
    handydl.gradcheck(m, x, against="tape")
    handydl.gradcheck(m, x)


def test_refused_backward_of_a_tape_module_consumes_nothing():
    """Regression (found at fa7d593): the tape module's backward popped its state before
    the tape checked the upstream gradient, so after a refused call the next backward
    silently used the previous call's state."""
    case = case_tape_merge("sum")
    m = case.model
    x1, x2 = case.x, case.x * 2.0
    gy = upstream(case)
    m(x1)
    m(x2)
    with pytest.raises(ValueError):
        m.backward(np.ones((7, 5)))          # wrong shape: refused
    _, tgx, _ = case.torch_run(x2, gy)
    close(m.backward(gy), tgx)                 # the latest call's gradient, x2's (gets x1's)
    assert m.saved_count == 1                  # as Linear, Split, Residual: nothing consumed


@pytest.mark.parametrize("name", ["used_twice", "residual_mlp", "parallel_sum", "tape_concat",
                                  "rnn_hand"])
def test_unconsumed_forward_latest_call_wins_then_zero_grad_drops_the_rest(name):
    case = CASES[name]()
    m = case.model
    gy = upstream(case)
    x2 = case.x * -0.7 + 0.3
    m.zero_grad()
    m(case.x)                                  # abandoned: never differentiated
    m(x2)
    assert m.saved_count == 2
    gx = m.backward(gy)
    _, tgx, tgrads = case.torch_run(x2, gy)
    close(gx, tgx)                              # LIFO: the gradient of the latest call
    for p, _, _ in case.pairs:
        close(p.grad, tgrads[id(p)])
    assert m.saved_count == 1
    m.zero_grad()
    assert all(mod.saved_count == 0 for mod in m.modules())
    assert all(np.all(p.grad == 0) for p in m.parameters())
    with pytest.raises(RuntimeError):
        m.backward(gy)


@ALL
def test_no_grad_saves_nothing(name):
    case = CASES[name]()
    y_ref = case.torch_run(case.x, upstream(case))[0]
    with nn.no_grad():
        for _ in range(3):
            y = case.model(case.x)
    close(y, y_ref)
    assert all(m.saved_count == 0 for m in case.model.modules())
    assert nn.is_grad_enabled()
    with pytest.raises(RuntimeError):
        case.model.backward(upstream(case))


def test_no_grad_is_restored_after_an_error():
    with pytest.raises(ValueError):
        with nn.no_grad():
            nn.Linear(3, 2, dtype=F64)(np.ones((2, 5)))
    assert nn.is_grad_enabled()


def test_failed_forward_leaves_no_half_state():
    case = case_residual_mlp()
    with pytest.raises(ValueError):
        case.model(np.ones((2, 5)))            # wrong width: fails in the first block
    assert all(m.saved_count == 0 for m in case.model.modules())
    case.model(case.x)
    case.model.backward(upstream(case))


def test_same_array_as_two_inputs_gets_one_gradient_per_position():
    """Regression (found at fa7d593): given one array as two positional inputs, a
    forward-only module returned the total gradient for each (the tape keys by id), so
    it disagreed with nn.Mul and a caller summing the two (a fork) counted it twice."""
    class TapeMul(nn.Module):
        def forward(self, a, b):
            return ops.mul(a, b)

    x = np.random.default_rng(0).standard_normal(4)
    gy = np.ones(4)
    hand = nn.Mul()
    hand(x, x)
    ga, gb = hand.backward(gy)
    close(ga, x)                               # dL/da = b = x, dL/db = a = x
    close(gb, x)
    m = TapeMul()
    m(x, x)
    ta, tb = m.backward(gy)
    close(ta + tb, 2 * x)                      # d(x*x)/dx = 2x, not 4x
    close(ta, x)


class OwnParameter(nn.Module):
    """Forward only, with a Parameter of its own used through a registered op."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3, dtype=F64, rng=0)
        self.scale = nn.Parameter(np.array([0.5, -1.0, 2.0]))

    def forward(self, x):
        return ops.mul(self.lin(x), self.scale.data)


def test_forward_only_module_with_its_own_parameter():
    m = OwnParameter()
    x = np.random.default_rng(0).standard_normal((2, 3))
    gy = np.random.default_rng(1).standard_normal((2, 3))
    m.zero_grad()
    m(x)
    m.backward(gy)
    tl = torch_linear(m.lin)
    s = tt(m.scale.data, grad=True)
    (tl(tt(x)) * s).backward(tt(gy))
    close(m.scale.grad, s.grad.numpy())
    close(m.lin.weight.grad, tl.weight.grad.numpy().T)


def test_user_tape_gives_a_gradient_to_a_modules_own_parameter():
    """Regression (found at fa7d593): Tape.backward's default params= held only the
    Parameters of OpModules, so one a forward-only module used directly through an op
    (ops.mul(h, self.scale.data)) silently got no gradient, though m.backward gave it."""
    m = OwnParameter()
    x = np.random.default_rng(0).standard_normal((2, 3))
    gy = np.random.default_rng(1).standard_normal((2, 3))
    m.zero_grad()
    m(x)
    m.backward(gy)
    expected = m.scale.grad.copy()
    m.zero_grad()
    with tape.Tape() as t:
        y = m(x)
    t.backward(y, gy, wrt=[x])
    close(m.scale.grad, expected)


# -- 9: checkpoints ------------------------------------------------------------------------------

CKPT = pytest.mark.parametrize("name", ["used_twice", "tied_weight", "residual_mlp",
                                        "parallel_sum", "parallel_concat", "residual_projection",
                                        "parallel_identity", "shared_activation_first",
                                        "batchnorm_used_twice", "sequential_split_mul",
                                        "glu_in_sequential"])


@CKPT
def test_checkpoint_round_trip(name, tmp_path):
    case = CASES[name]()
    forward_no_grad(case.model, case.x)         # running statistics (batch norm) not trivial
    case.model.eval()                           # load() returns the model in eval mode
    path = checkpoint.save(case.model, tmp_path / "m.npz")
    loaded = checkpoint.load(path)
    assert type(loaded) is type(case.model)
    assert not any(m.training for m in loaded.modules())
    ref_state, new_state = case.model.state_dict(), loaded.state_dict()
    assert list(new_state) == list(ref_state)
    for k in ref_state:
        np.testing.assert_array_equal(new_state[k], ref_state[k], err_msg=k)
    np.testing.assert_array_equal(forward_no_grad(loaded, case.x), forward_no_grad(case.model, case.x))
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in case.model.named_parameters()]
    assert len(loaded.parameters()) == len(case.model.parameters())
    assert all(p.dtype == F64 for p in loaded.parameters())
    # the same gradients after loading
    gy = upstream(case)
    for m in (case.model, loaded):
        m.zero_grad()
        m(case.x)
    gx_ref = case.model.backward(gy)
    close(loaded.backward(gy), gx_ref)
    for (n, p), (_, q) in zip(case.model.named_parameters(), loaded.named_parameters()):
        close(q.grad, p.grad)


def test_checkpoint_keeps_a_shared_module_shared(tmp_path):
    loaded = checkpoint.load(checkpoint.save(case_used_twice().model, tmp_path / "m.npz"))
    assert loaded[0] is loaded[2]
    assert loaded[0].weight is loaded[2].weight


def test_checkpoint_keeps_a_tied_weight_tied(tmp_path):
    case = case_tied_weight()
    loaded = checkpoint.load(checkpoint.save(case.model, tmp_path / "m.npz"))
    a, _, b = list(loaded)
    assert a is not b
    assert a.weight is b.weight
    assert a.bias is not b.bias
    np.testing.assert_array_equal(b.bias.data, case.model[2].bias.data)
    # still tied in training: one step moves both layers' weight, and only once
    W0 = a.weight.data.copy()
    opt = optim.SGD(loaded.parameters(), lr=0.1)
    loaded.train()
    opt.zero_grad()
    loaded(case.x)
    loaded.backward(upstream(case))
    g = a.weight.grad.copy()
    opt.step()
    np.testing.assert_array_equal(b.weight.data, a.weight.data)
    close(a.weight.data, W0 - 0.1 * g)


def test_checkpoint_of_a_parallel_with_a_shared_branch(tmp_path):
    lin = nn.Linear(3, 2, dtype=F64, rng=4)
    p = nn.Parallel(lin, nn.Sequential(lin, nn.Tanh()), merge="concat")
    loaded = checkpoint.load(checkpoint.save(p, tmp_path / "p.npz"))
    assert loaded[0] is loaded[1][0]
    assert loaded.merge == "concat"
    x = np.random.default_rng(0).standard_normal((2, 3))
    np.testing.assert_array_equal(forward_no_grad(loaded, x), forward_no_grad(p, x))


class GatedUnit(nn.Module):
    """A user's module: y = sigmoid(gate(x)) * value(x), forward only; saved via get_config."""

    def __init__(self, n=3, dtype="float64"):
        super().__init__()
        self.n, self.dtype_name = n, dtype
        self.gate = nn.Linear(n, n, dtype=np.dtype(dtype), rng=1)
        self.value = nn.Linear(n, n, dtype=np.dtype(dtype), rng=2)

    def forward(self, x):
        return ops.mul(ops.sigmoid(self.gate(x)), self.value(x))

    def get_config(self):
        return {"n": self.n, "dtype": self.dtype_name}


class NoConfig(nn.Module):
    def forward(self, x):
        return ops.tanh(x)


@pytest.fixture
def private_registry(monkeypatch):
    """register() writes into checkpoint.MODULES: give this test its own copy."""
    monkeypatch.setattr(checkpoint, "MODULES", dict(checkpoint.MODULES))


def test_user_module_needs_registering(tmp_path, private_registry):
    model = nn.Sequential(nn.Linear(3, 3, dtype=F64, rng=0), GatedUnit())
    with pytest.raises((TypeError, ValueError), match="register"):
        checkpoint.save(model, tmp_path / "u.npz")
    assert not (tmp_path / "u.npz").exists()
    checkpoint.register(GatedUnit)
    path = checkpoint.save(model, tmp_path / "u.npz")
    loaded = checkpoint.load(path)
    assert isinstance(loaded[1], GatedUnit)
    x = np.random.default_rng(0).standard_normal((4, 3))
    np.testing.assert_array_equal(forward_no_grad(loaded, x), forward_no_grad(model, x))
    # and the loaded user module still differentiates (by the tape)
    gy = np.ones((4, 3))
    loaded.zero_grad()
    loaded(x)
    gx = loaded.backward(gy)
    model.zero_grad()
    model(x)
    close(gx, model.backward(gy))


def test_registered_user_module_with_module_list_and_dict_round_trips(tmp_path, private_registry):
    case = case_tape_stack()
    with pytest.raises((TypeError, ValueError), match="register"):
        checkpoint.save(case.model, tmp_path / "s.npz")
    checkpoint.register(TapeStack)
    loaded = checkpoint.load(checkpoint.save(case.model, tmp_path / "s.npz"))
    assert isinstance(loaded, TapeStack) and isinstance(loaded.layers, nn.ModuleList)
    assert isinstance(loaded.norms, nn.ModuleDict) and list(loaded.norms) == ["inp", "out"]
    np.testing.assert_array_equal(forward_no_grad(loaded, case.x), forward_no_grad(case.model, case.x))
    assert handydl.gradcheck(loaded, case.x, against="tape").passed


def test_loading_an_unregistered_user_module_says_what_to_register(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "MODULES", dict(checkpoint.MODULES))
    checkpoint.register(GatedUnit)
    path = checkpoint.save(nn.Sequential(GatedUnit()), tmp_path / "g.npz")
    del checkpoint.MODULES["GatedUnit"]                 # as in a new process
    with pytest.raises(checkpoint.CheckpointError, match="register"):
        checkpoint.load(path)


def test_user_module_without_get_config_is_refused(tmp_path, private_registry):
    with pytest.raises((TypeError, ValueError), match="register"):
        checkpoint.save(nn.Sequential(NoConfig()), tmp_path / "n.npz")
    checkpoint.register(NoConfig)
    with pytest.raises((TypeError, ValueError), match="get_config"):
        checkpoint.save(nn.Sequential(NoConfig()), tmp_path / "n.npz")


def test_subclass_of_a_handydl_module_is_not_saved_as_its_parent(tmp_path):
    model, _ = _forgetful()
    with pytest.raises((TypeError, ValueError), match="register"):
        checkpoint.save(model, tmp_path / "f.npz")


# -- the derivation of the pattern ---------------------------------------------------------------

def test_residual_derivation_in_the_library():
    from handydl import derivations
    text = derivations.explain("residual")
    assert "x + f(x)" in text and "J_f" in text


def test_cli_explains_the_residual_pattern(capsys):
    from handydl import cli
    assert cli.main(["explain", "residual"]) == 0
    assert "x + f(x)" in capsys.readouterr().out


# -- 10: training ------------------------------------------------------------------------------

def residual_regressor(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(2, 8, dtype=F64, rng=rng), mlp_block(rng), mlp_block(rng),
                         nn.Linear(8, 1, dtype=F64, rng=rng))


def _regression_data():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (256, 2))
    y = np.sin(X[:, 0]) * np.cos(X[:, 1]) + 0.3 * X[:, 1]
    return X, y


def _mse(model, X, y):
    return float(np.mean((forward_no_grad(model, X)[:, 0] - y) ** 2))


def test_residual_mlp_trains_with_fit():
    X, y = _regression_data()
    model = residual_regressor()
    before = _mse(model, X, y)
    history = fit(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                  DataLoader(X, y, batch_size=32, shuffle=True, seed=0), epochs=15, log=None)
    after = _mse(model, X, y)
    assert after < 0.5 * before, (before, after)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert all(m.saved_count == 0 for m in model.modules())


def test_tape_model_trains_with_a_manual_loop():
    """A forward-only model (branch-and-merge plus a gated skip) trains too."""
    X, y = _regression_data()
    model = nn.Sequential(nn.Linear(2, 4, dtype=F64, rng=1), GatedSkip(rng=2),
                          BranchMerge(nn.Sequential(nn.Linear(4, 4, dtype=F64, rng=3), nn.Tanh()),
                                      nn.Linear(4, 4, dtype=F64, rng=4), "concat"),
                          nn.Linear(8, 1, dtype=F64, rng=5))
    loss_fn = nn.MSELoss()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = _mse(model, X, y)
    for epoch in range(15):
        for xb, yb in DataLoader(X, y, batch_size=32, shuffle=True, seed=epoch):
            opt.zero_grad()
            loss_fn(model(xb), yb[:, None])
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
    after = _mse(model, X, y)
    assert after < 0.5 * before, (before, after)


# -- the cached list of modules and parameters follows every change of structure ----------------

def test_parameters_follow_a_child_added_deep_inside_after_they_were_listed():
    inner = nn.Sequential(nn.Linear(3, 3))
    model = nn.Sequential(inner, nn.ReLU())
    assert len(model.parameters()) == 2 and len(model.modules()) == 4
    inner.append(nn.Linear(3, 2))              # a grandchild, changed below the listed model
    assert len(model.parameters()) == 4 and len(model.modules()) == 5
    # zero_grad reaches the new layer's gradient too
    new = inner[1]
    new.weight.grad[...] = 1.0
    model.zero_grad()
    assert not new.weight.grad.any()


def test_parameters_follow_replaced_and_deleted_attributes():
    lin = nn.Linear(2, 2)
    model = nn.Sequential(lin)
    before = model.parameters()
    lin.weight = nn.Parameter(np.zeros((2, 2), np.float32))
    after = model.parameters()
    assert after[0] is lin.weight and after[0] is not before[0]
    del lin.bias
    assert [p.shape for p in model.parameters()] == [(2, 2)]
    assert "bias" not in dict(lin.named_parameters())
    with pytest.raises(AttributeError):
        lin.bias
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    assert len(m.parameters()) == 4
    delattr(m, "1")                              # a child removed: its parameters go with it
    assert len(m.parameters()) == 2 and len(m) == 1


def test_parameters_returns_a_list_the_caller_may_change():
    model = nn.Sequential(nn.Linear(2, 2))
    ps = model.parameters()
    ps.clear()
    assert len(model.parameters()) == 2


def test_a_failed_forward_of_a_changed_model_takes_back_the_new_childs_state():
    inner = nn.Sequential(nn.Linear(2, 2))
    model = nn.Sequential(inner)
    model(np.ones((1, 2), np.float32))
    model.zero_grad()
    inner.append(nn.Linear(3, 2))               # does not fit: the second forward fails in it
    first = inner[0]
    with pytest.raises(ValueError):
        model(np.ones((1, 2), np.float32))
    assert first.saved_count == 0 and inner.saved_count == 0
