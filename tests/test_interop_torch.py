"""handydl.interop.to_torch / from_torch: every handydl module against the torch
module it becomes, forward and backward (handydl's hand-written backward
against torch's autograd, with a random upstream gradient), in float64
(tight) and float32; models (an MLP, a CNN, a ResNet) both ways; tied
weights and shared modules; clear refusals."""
import numpy as np
import pytest

from handydl import checkpoint, nn
from handydl.nn import models

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the torch bridge is untested")
from handydl.interop import FROM_TORCH, TO_TORCH, from_torch, to_torch  # noqa: E402

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-4, atol=2e-5)}


# torch's CPU backward of hardsigmoid and hardswish multiplies by a float32 1/6 even in
# float64 (relative error 3e-8); handydl's is the float64 1/6
LOOSE = {"Hardsigmoid": dict(rtol=1e-7, atol=1e-12), "Hardswish": dict(rtol=1e-7, atol=1e-12)}


def close(actual, expected, dtype, what, tol=None):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               err_msg=what, **(tol or TOL[dtype]))


def torch_name(model, name):
    """handydl's parameter name in torch, and whether torch holds it transposed (a Linear weight)."""
    owner, _, attr = name.rpartition(".")
    return name, isinstance(model.get_submodule(owner), nn.Linear) and attr == "weight"


def flat(y):
    return [a for v in y for a in flat(v)] if isinstance(y, tuple) else [y]


def compare(model, inputs, dtype, seed=0, tol=None):
    """Forward outputs, input gradients and parameter gradients of ``model`` and of
    to_torch(model), for the same inputs and the same random upstream gradients;
    and the buffers (running statistics) after the forward."""
    rng = np.random.default_rng(seed)
    inputs = [x.astype(dtype) if x.dtype.kind == "f" else x for x in inputs]     # token ids stay ints
    t = to_torch(model)
    assert t.training == model.training
    xs = [torch.tensor(x, requires_grad=x.dtype.kind == "f") for x in inputs]
    model.zero_grad()
    ys, yts = flat(model(*inputs)), flat(t(*xs))       # LSTM: output, (h_n, c_n)
    assert len(ys) == len(yts)
    for a, b in zip(ys, yts):
        assert a.dtype == dtype and b.dtype == torch.from_numpy(a).dtype
        close(b.detach().numpy(), a, dtype, "forward")
    gys = [rng.normal(size=a.shape).astype(dtype) for a in ys]
    gx = model.backward(*gys)
    gx = gx if isinstance(gx, tuple) else (gx,)
    torch.autograd.backward(list(yts), [torch.tensor(g) for g in gys])
    for a, b in zip(gx, xs):
        if b.requires_grad:
            close(b.grad.numpy(), a, dtype, "input gradient", tol)
        else:
            assert a is None                        # ids have no gradient
    tparams = dict(t.named_parameters())
    hparams = dict(model.named_parameters())
    assert len(tparams) == len(hparams)
    for name, p in hparams.items():
        tname, transposed = torch_name(model, name)
        g = tparams[tname].grad.numpy()
        close(g.T if transposed else g, p.grad, dtype, f"gradient of {name}")
        close(tparams[tname].detach().numpy().T if transposed else tparams[tname].detach().numpy(),
              p.data, dtype, f"value of {name}")
    tbuffers = dict(t.named_buffers())
    for name, b in model.named_buffers():
        close(tbuffers[name].numpy(), b, dtype, f"buffer {name}")
    return t


def sequence(length=5, n=2, d=6):
    return np.random.default_rng(4).normal(size=(length, n, d))


def image(n=2, c=4, h=6, w=6):
    return np.random.default_rng(1).normal(size=(n, c, h, w))


def rows(n=5, d=6):
    return np.random.default_rng(2).normal(size=(n, d))


def _cases():
    """(id, handydl module factory taking a dtype, inputs): every class of TO_TORCH at least once."""
    r = rows
    yield "Linear", lambda dt: nn.Linear(6, 3, dtype=dt, rng=0), [r()]
    yield "Linear-nobias-3d", lambda dt: nn.Linear(6, 3, bias=False, dtype=dt, rng=0), [r().reshape(5, 1, 6)]
    for name in ("Sigmoid", "Tanh", "ReLU", "ReLU6", "SELU", "SiLU", "Mish", "Hardsigmoid", "Hardswish",
                 "Identity", "SumNormalize"):
        yield name, (lambda name: lambda dt: nn.GENERATED[name]())(name), [np.abs(r()) + 0.1 if name ==
                                                                              "SumNormalize" else 4 * r()]
    for name in ("Softsign", "LogSigmoid", "Tanhshrink"):
        yield name, (lambda name: lambda dt: nn.GENERATED[name]())(name), [4 * r()]
    yield "Hardtanh", lambda dt: nn.Hardtanh(-0.5, 2.0), [4 * r()]
    yield "Softshrink", lambda dt: nn.Softshrink(0.3), [r()]
    yield "Hardshrink", lambda dt: nn.Hardshrink(0.3), [r()]
    yield "Threshold", lambda dt: nn.Threshold(0.1, -2.0), [r()]
    yield "LeakyReLU", lambda dt: nn.LeakyReLU(0.2), [r()]
    yield "ELU", lambda dt: nn.ELU(0.7), [r()]
    # alpha 0.5: torch's CPU celu divides by alpha in float32 even in float64, exact for 0.5
    yield "CELU", lambda dt: nn.CELU(0.5), [r()]
    yield "GELU", lambda dt: nn.GELU(), [r()]
    yield "GELU-tanh", lambda dt: nn.GELU(approximate="tanh"), [r()]
    yield "Softplus", lambda dt: nn.Softplus(beta=2.0, threshold=3.0), [4 * r()]
    yield "Softmax", lambda dt: nn.Softmax(dim=0), [r()]
    yield "LogSoftmax", lambda dt: nn.LogSoftmax(dim=-1), [r()]
    yield "Softmin", lambda dt: nn.Softmin(dim=0), [r()]
    yield "Softmax2d", lambda dt: nn.Softmax2d(), [image()]
    yield "LpNorm", lambda dt: nn.LpNorm(p=3.0, dim=1, keepdim=True), [r()]
    yield "PReLU", lambda dt: nn.PReLU(4, init=0.1, dtype=dt), [image()]
    yield "Add", lambda dt: nn.Add(), [r(), r(5, 6) + 1]
    yield "Mul", lambda dt: nn.Mul(), [r(), r(5, 6) + 1]
    yield "Concat", lambda dt: nn.Concat(dim=0), [r(), r(3, 6)]
    yield "Split", lambda dt: nn.Split([2, 4], dim=1), [r()]
    yield "GLU", lambda dt: nn.GLU(dim=1), [r()]
    yield "BatchNorm1d-train", lambda dt: nn.BatchNorm1d(6, momentum=0.3, dtype=dt), [r()]
    yield "BatchNorm1d-eval", lambda dt: _stats(nn.BatchNorm1d(6, dtype=dt), r()).eval(), [r()]
    yield "BatchNorm1d-nobias-3d", lambda dt: nn.BatchNorm1d(4, bias=False, momentum=None, dtype=dt), [image()[..., 0]]
    yield "BatchNorm1d-noaffine", lambda dt: nn.BatchNorm1d(6, affine=False, dtype=dt), [r()]
    yield "BatchNorm1d-nostats", lambda dt: nn.BatchNorm1d(6, track_running_stats=False, dtype=dt).eval(), [r()]
    yield "BatchNorm2d-train", lambda dt: nn.BatchNorm2d(4, dtype=dt), [image()]
    yield "BatchNorm2d-eval", lambda dt: _stats(nn.BatchNorm2d(4, dtype=dt), image()).eval(), [image()]
    yield "LayerNorm", lambda dt: _perturbed(nn.LayerNorm((6,), dtype=dt)), [r()]
    yield "LayerNorm-2d-nobias", lambda dt: _perturbed(nn.LayerNorm((6, 6), bias=False, dtype=dt)), [image()]
    yield "LayerNorm-noaffine", lambda dt: nn.LayerNorm(6, elementwise_affine=False, dtype=dt), [r()]
    yield "RMSNorm", lambda dt: _perturbed(nn.RMSNorm(6, dtype=dt)), [r()]
    yield "RMSNorm-2d-eps-noaffine", lambda dt: nn.RMSNorm((6, 6), eps=1e-3, elementwise_affine=False,
                                                           dtype=dt), [image()]
    yield "GroupNorm", lambda dt: _perturbed(nn.GroupNorm(2, 4, dtype=dt)), [image()]
    yield "Bilinear", lambda dt: nn.Bilinear(6, 3, 4, dtype=dt, rng=0), [r(), r(5, 3)]
    yield "Bilinear-nobias-3d", lambda dt: nn.Bilinear(6, 6, 2, bias=False, dtype=dt, rng=1), [image()[0], image()[1]]
    yield "LocalResponseNorm", lambda dt: nn.LocalResponseNorm(3, alpha=0.5, beta=0.6, k=2.0), [image()]
    yield "LocalResponseNorm-even", lambda dt: nn.LocalResponseNorm(2), [image()[..., 0]]
    yield "InstanceNorm1d", lambda dt: nn.InstanceNorm1d(4, dtype=dt), [image()[..., 0]]
    yield "InstanceNorm2d-affine-stats", lambda dt: _perturbed(nn.InstanceNorm2d(4, affine=True, track_running_stats=True,
                                                                                 dtype=dt)), [image()]
    yield "InstanceNorm2d-eval-stats", lambda dt: _stats(nn.InstanceNorm2d(4, track_running_stats=True, dtype=dt),
                                                         image()).eval(), [image()]
    yield "ZeroPad1d", lambda dt: nn.ZeroPad1d((1, 2)), [image()[..., 0]]
    yield "ZeroPad2d", lambda dt: nn.ZeroPad2d((1, 0, 2, 3)), [image()]
    yield "ConstantPad1d", lambda dt: nn.ConstantPad1d(2, -1.5), [image()[..., 0]]
    yield "ConstantPad2d", lambda dt: nn.ConstantPad2d((0, 1, 1, 2), 0.5), [image()]
    yield "ReflectionPad1d", lambda dt: nn.ReflectionPad1d((3, 1)), [image()[..., 0]]
    yield "ReflectionPad2d", lambda dt: nn.ReflectionPad2d((1, 2, 3, 0)), [image()]
    yield "ReplicationPad1d", lambda dt: nn.ReplicationPad1d((2, 4)), [image()[..., 0]]
    yield "ReplicationPad2d", lambda dt: nn.ReplicationPad2d(2), [image()]
    yield "CircularPad1d", lambda dt: nn.CircularPad1d((1, 3)), [image()[..., 0]]
    yield "CircularPad2d", lambda dt: nn.CircularPad2d((2, 1, 0, 3)), [image()]
    yield "GroupNorm-noaffine", lambda dt: nn.GroupNorm(2, 4, affine=False, dtype=dt), [image()]
    yield "Dropout-eval", lambda dt: nn.Dropout(0.5).eval(), [r()]
    yield "Dropout-p0-train", lambda dt: nn.Dropout(0.0), [r()]
    yield "Flatten", lambda dt: nn.Flatten(), [image()]
    yield "Flatten-1-2", lambda dt: nn.Flatten(1, 2), [image()]
    yield "Unflatten", lambda dt: nn.Unflatten(1, (2, 3)), [r()]
    yield "Conv1d", lambda dt: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, dtype=dt, rng=0), [image()[..., 0]]
    yield "Conv2d", lambda dt: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2,
                                         dtype=dt, rng=0), [image()]
    yield "Conv2d-same-nobias", lambda dt: nn.Conv2d(4, 3, 4, padding="same", bias=False, dtype=dt, rng=0), [image()]
    yield "ConvTranspose2d", lambda dt: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1,
                                                           groups=2, dtype=dt, rng=0), [image()]
    yield "MaxPool2d", lambda dt: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), [image()]
    yield "AvgPool2d", lambda dt: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), [image()]
    yield "AvgPool2d-divisor", lambda dt: nn.AvgPool2d(2, divisor_override=3), [image()]
    yield "AdaptiveAvgPool2d", lambda dt: nn.AdaptiveAvgPool2d((4, 3)), [image(h=7, w=6)]
    yield "Standardize", lambda dt: nn.Standardize(np.arange(6.0).astype(dt), np.linspace(0.5, 2, 6).astype(dt)), [r()]
    yield "Sequential", lambda dt: nn.Sequential(nn.Linear(6, 4, dtype=dt, rng=0), nn.Tanh(),
                                                 nn.Linear(4, 2, dtype=dt, rng=1)), [r()]
    yield "Sequential-tuple", lambda dt: nn.Sequential(nn.Split(3, dim=1), nn.Mul()), [r()]
    yield "MLP", lambda dt: nn.MLP([6, 8, 5, 3], activation="gelu", batch_norm=True, dtype=dt, rng=0), [r()]
    yield "Residual", lambda dt: nn.Residual(nn.Sequential(nn.Linear(6, 6, dtype=dt, rng=0), nn.ReLU())), [r()]
    yield "Residual-shortcut", lambda dt: nn.Residual(nn.Linear(6, 3, dtype=dt, rng=0),
                                                      nn.Linear(6, 3, bias=False, dtype=dt, rng=1)), [r()]
    for merge in ("sum", "concat", "tuple"):
        yield f"Parallel-{merge}", (lambda merge: lambda dt: nn.Parallel(
            nn.Linear(6, 3, dtype=dt, rng=0), nn.Sequential(nn.Linear(6, 3, dtype=dt, rng=1), nn.Sigmoid()),
            merge=merge, dim=1))(merge), [r()]

    ids = np.random.default_rng(5).integers(0, 10, size=(3, 4))
    yield "Embedding", lambda dt: nn.Embedding(10, 6, dtype=dt, rng=0), [ids]
    yield "Embedding-padding", lambda dt: nn.Embedding(10, 6, padding_idx=2, dtype=dt, rng=0), [ids]
    yield "LearnedPositionalEmbedding", lambda dt: nn.LearnedPositionalEmbedding(8, 6, dtype=dt, rng=0), [sequence()]
    yield "SinusoidalPositionalEmbedding", lambda dt: nn.SinusoidalPositionalEmbedding(8, 6, dtype=dt), [sequence()]
    q, k = sequence(4, 2, 6), sequence(5, 2, 6) + 1
    yield "MultiheadAttention", lambda dt: _attention(nn.MultiheadAttention(6, 2, dtype=dt, rng=0)), [q, k, k - 2]
    yield "MultiheadAttention-nobias-batch-first", lambda dt: nn.MultiheadAttention(
        6, 3, bias=False, batch_first=True, dtype=dt, rng=0), [x.transpose(1, 0, 2) for x in (q, k, k - 2)]
    for norm_first, act in ((False, "relu"), (True, "gelu")):
        yield f"TransformerEncoderLayer-{act}-norm-first-{norm_first}", (lambda nf, a: lambda dt: _perturbed(
            nn.TransformerEncoderLayer(6, 2, 10, dropout=0.0, activation=a, norm_first=nf, dtype=dt, rng=0)))(
                norm_first, act), [sequence()]
    gpt_ids = np.random.default_rng(8).integers(0, 11, size=(3, 6))
    yield "GPT-tied", lambda dt: _perturbed(nn.GPT(11, 8, n_layer=2, n_head=2, n_embd=8, dtype=dt, rng=0)), [gpt_ids]
    yield "GPT-untied-nobias", lambda dt: nn.GPT(11, 8, n_layer=1, n_head=2, n_embd=8, bias=False,
                                                 tie_weights=False, dtype=dt, rng=0), [gpt_ids]
    yield "GPTBlock", lambda dt: _perturbed(nn.GPTBlock(6, 2, dtype=dt, rng=0)), [sequence()]
    yield "RNN", lambda dt: nn.RNN(6, 4, dtype=dt, rng=0), [sequence()]
    yield "RNN-relu-2-layers-nobias", lambda dt: nn.RNN(6, 4, num_layers=2, nonlinearity="relu", bias=False,
                                                        dtype=dt, rng=0), [sequence()]
    yield "LSTM-bidirectional-2-layers", lambda dt: nn.LSTM(6, 4, num_layers=2, bidirectional=True, dtype=dt,
                                                            rng=0), [sequence()]
    yield "GRU-batch-first", lambda dt: nn.GRU(6, 4, batch_first=True, dtype=dt, rng=0), [sequence()]
    yield "RNNCell", lambda dt: nn.RNNCell(6, 4, nonlinearity="relu", dtype=dt, rng=0), [rows()]
    yield "LSTMCell", lambda dt: nn.LSTMCell(6, 4, dtype=dt, rng=0), [rows()]
    yield "GRUCell-nobias", lambda dt: nn.GRUCell(6, 4, bias=False, dtype=dt, rng=0), [rows()]


def _stats(bn, x):
    """A BatchNorm whose running statistics moved off their start (one training forward)."""
    with nn.no_grad():
        bn(x.astype(bn.running_mean.dtype))
    return bn


def _attention(m):
    """Biases off their zero start, so that a misplaced one would show."""
    rng = np.random.default_rng(6)
    for p in (m.in_proj_bias, m.out_proj.bias):
        p.data[...] = rng.normal(size=p.shape)
    return m


def _perturbed(m):
    """Weights off their 1 / 0 start, so that a swapped weight and bias would show."""
    rng = np.random.default_rng(3)
    for p in m.parameters():
        p.data[...] = rng.normal(size=p.shape)
    return m


CASES = list(_cases())


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name, make, inputs", CASES, ids=[c[0] for c in CASES])
def test_module_matches_its_torch_module(name, make, inputs, dtype):
    compare(make(dtype), inputs, dtype, tol=LOOSE.get(name) if dtype == np.float64 else None)


def test_every_handydl_module_converts_and_every_entry_is_tested():
    """Each class that handydl's checkpoints know (every module of handydl.nn but losses) has
    a TO_TORCH entry, and each entry is exercised above (or by test_containers_convert)."""
    assert set(checkpoint.MODULES.values()) - set(TO_TORCH) == set()
    tested = {nn.ModuleList, nn.ModuleDict}
    for _, make, _ in CASES:
        tested |= {type(m) for m in make(np.float64).modules()}
    assert set(TO_TORCH) - tested == set()


def test_containers_convert():
    lst = nn.ModuleList([nn.Linear(2, 3, rng=0), nn.ReLU()])
    d = nn.ModuleDict({"enc": nn.Linear(2, 3, rng=0), "act": nn.Tanh()})
    tl, td = to_torch(lst), to_torch(d)
    assert isinstance(tl, torch.nn.ModuleList) and isinstance(td, torch.nn.ModuleDict)
    assert list(td.keys()) == ["enc", "act"] and isinstance(td["act"], torch.nn.Tanh)
    np.testing.assert_array_equal(tl[0].weight.detach().numpy(), lst[0].weight.data.T)
    back = from_torch(td)
    assert isinstance(back, nn.ModuleDict) and list(back.keys()) == ["enc", "act"]
    np.testing.assert_array_equal(back["enc"].weight.data, d["enc"].weight.data)


def test_the_torch_modules_are_plain_torch_nn_where_torch_has_the_layer():
    model = nn.MLP([4, 8, 3], batch_norm=True, dropout=0.1, rng=0)
    t = to_torch(model)
    assert type(t) is torch.nn.Sequential
    assert [type(c).__name__ for c in t] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert set(t.state_dict()) == set(model.state_dict())        # the same names
    assert t[0].weight.shape == (8, 4)                              # torch's (out, in)


def test_training_and_eval_modes_follow_each_module():
    model = nn.MLP([4, 8, 3], dropout=0.5, rng=0)
    model.eval()
    model[2].train()
    t = to_torch(model)
    assert [m.training for m in t] == [m.training for m in model] == [False, False, True, False]


# -- whole models -------------------------------------------------------------------------------

def trained(model, x, y, steps=3):
    """A few SGD steps in handydl, so that the converted weights are not the initial ones."""
    from handydl import optim
    loss = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        model.zero_grad()
        loss(model(x), y)
        model.backward(loss.backward(), input_grad=False)
        opt.step()
    return model


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
def test_trained_models_match_and_round_trip(kind, dtype):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 64)).astype(dtype), rng.integers(0, 10, 6)
    body = {"mlp": lambda: nn.MLP([64, 32, 10], batch_norm=True, rng=0),
            "cnn": lambda: models.lenet((1, 8, 8), 10, channels=(4, 8), hidden=16, rng=0),
            "resnet": lambda: models.resnet((1, 8, 8), 10, rng=0)}[kind]()
    model = nn.Sequential(nn.Standardize(x.mean(0), x.std(0) + 0.5), nn.Unflatten(1, (1, 8, 8)) if kind != "mlp"
                          else nn.Identity(), body).astype(dtype)
    trained(model, x, y)
    compare(model, [x], dtype)                  # training mode: batch statistics, running stats
    model.eval()
    t = compare(model, [x], dtype)              # evaluation: the running statistics
    back = from_torch(t)
    # the same tree, an MLP coming back as the Sequential it is
    assert [type(m) for m in back.modules()] == [nn.Sequential if type(m) is nn.MLP else type(m)
                                                 for m in model.modules()]
    np.testing.assert_array_equal(back(x), model(x))    # the same weights, bit for bit
    assert not back.training


def test_from_torch_of_a_model_written_in_torch():
    torch.manual_seed(0)
    t = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.PReLU(4),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 6, 3, padding="same", bias=False), torch.nn.GroupNorm(2, 6),
        torch.nn.SiLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.3),
        torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(5, 3), torch.nn.LogSoftmax(dim=1)).double()
    t(torch.randn(4, 1, 8, 8, dtype=torch.float64))      # running statistics off their start
    t.eval()
    m = from_torch(t)
    assert isinstance(m, nn.Sequential) and not m.training
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8))
    xt = torch.tensor(x, requires_grad=True)
    yt = t(xt)
    y = m(x)
    close(y, yt.detach().numpy(), np.float64, "forward")
    gy = np.random.default_rng(1).normal(size=y.shape)
    yt.backward(torch.tensor(gy))
    close(m.backward(gy), xt.grad.numpy(), np.float64, "input gradient")
    close(m[10].weight.grad, t[10].weight.grad.numpy().T, np.float64, "Linear weight gradient")
    close(m[0].weight.grad, t[0].weight.grad.numpy(), np.float64, "Conv2d weight gradient")
    assert m[0].weight.dtype == np.float64


def test_from_torch_keeps_float32():
    m = from_torch(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)))
    assert {p.dtype for p in m.parameters()} == {np.dtype(np.float32)}
    assert m[1].running_mean.dtype == np.float32 and m[1].num_batches_tracked.dtype == np.int64


# -- sharing --------------------------------------------------------------------------------------

def test_tied_weights_stay_tied_both_ways():
    a, b = nn.Linear(4, 4, dtype=np.float64, rng=0), nn.Linear(4, 4, dtype=np.float64, rng=1)
    b.weight = a.weight
    model = nn.Sequential(a, nn.Tanh(), b)
    t = compare(model, [rows(3, 4)], np.float64)       # the shared gradient is the sum of both uses
    assert t[0].weight is t[2].weight and t[0].bias is not t[2].bias
    back = from_torch(t)
    assert back[0].weight is back[2].weight and back[0].bias is not back[2].bias
    assert len(back.parameters()) == 3


def test_a_module_used_twice_is_one_torch_module_used_twice():
    shared = nn.Linear(4, 4, dtype=np.float64, rng=0)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    t = compare(model, [rows(3, 4)], np.float64)
    assert t[0] is t[2]
    back = from_torch(t)
    assert back[0] is back[2]


def test_a_parameter_in_two_layouts_is_refused():
    lin, prelu = nn.Linear(3, 3, rng=0), nn.PReLU(3)
    prelu.weight = lin.bias                      # shared in one layout (a bias and a slope): fine
    t = to_torch(nn.Sequential(lin, prelu))
    assert t[0].bias is t[1].weight
    lin2, ln = nn.Linear(3, 3, rng=2), nn.LayerNorm((3, 3))
    ln.weight = lin2.weight                      # a Linear weight (transposed in torch) and a norm's
    with pytest.raises(ValueError, match="shared by a Linear weight .* and by a module that keeps it"):
        to_torch(nn.Sequential(lin2, ln))


# -- refusals -------------------------------------------------------------------------------------

def test_an_unknown_handydl_module_is_refused_by_name_and_place():
    class Mine(nn.Module):
        def forward(self, x):
            return x
    with pytest.raises(TypeError, match=r"to_torch: Mine \(at '1'\) has no torch counterpart; supported: "):
        to_torch(nn.Sequential(nn.ReLU(), Mine()))
    with pytest.raises(TypeError, match="expected a handydl Module, got Linear"):
        to_torch(torch.nn.Linear(2, 2))


def test_an_unsupported_torch_layer_is_refused_by_its_class():
    with pytest.raises(TypeError, match=r"from_torch: torch.nn.modules.pixelshuffle.PixelShuffle \(at '1'\) is "
                                        r"not supported; supported torch.nn layers: .*Linear"):
        from_torch(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.PixelShuffle(2)))

    class MyLinear(torch.nn.Linear):             # a subclass may compute something else
        def forward(self, x):
            return 2 * super().forward(x)
    with pytest.raises(TypeError, match="MyLinear .* is not supported"):
        from_torch(MyLinear(2, 2))
    with pytest.raises(ValueError, match=r"Softmax\(dim=None\)"):
        from_torch(torch.nn.Softmax())
    with pytest.raises(ValueError, match="padding_mode='reflect' is not supported"):
        from_torch(torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))
    assert set(FROM_TORCH) >= {"Linear", "Conv2d", "BatchNorm1d", "Sequential", "handydl.Residual"}


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_from_torch_of_recurrent_layers(cls):
    torch.manual_seed(0)
    cell = cls.endswith("Cell")
    t = getattr(torch.nn, cls)(3, 4, **({} if cell else dict(num_layers=2, bidirectional=True))).double()
    m = from_torch(t)
    assert type(m).__name__ == cls
    x = np.random.default_rng(0).normal(size=(2, 3) if cell else (5, 2, 3))
    xt = torch.tensor(x, requires_grad=True)
    ys, yts = flat(m(x)), flat(t(xt))
    gys = [np.random.default_rng(i).normal(size=y.shape) for i, y in enumerate(ys)]
    for a, b in zip(ys, yts):
        close(a, b.detach().numpy(), np.float64, "forward")
    torch.autograd.backward(yts, [torch.tensor(g) for g in gys])
    close(m.backward(*gys), xt.grad.numpy(), np.float64, "input gradient")
    for name, p in t.named_parameters():
        close(m._params[name].grad, p.grad.numpy(), np.float64, f"gradient of {name}")


def test_from_torch_of_attention_layers_written_in_torch():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True).double()
    emb = torch.nn.Embedding(11, 8, padding_idx=0).double()
    m_layer, m_emb = from_torch(layer), from_torch(emb)
    assert type(m_layer) is nn.TransformerEncoderLayer and m_layer.norm_first is False
    ids = np.random.default_rng(0).integers(0, 11, size=(2, 5))
    x = emb(torch.from_numpy(ids))
    xt = x.detach().clone().requires_grad_(True)
    yt = layer(xt)
    y = m_layer(m_emb(ids))
    close(y, yt.detach().numpy(), np.float64, "forward")
    gy = np.random.default_rng(1).normal(size=y.shape)
    yt.backward(torch.tensor(gy))
    close(m_layer.backward(gy), xt.grad.numpy(), np.float64, "input gradient")
    close(m_layer.self_attn.in_proj_weight.grad, layer.self_attn.in_proj_weight.grad.numpy(), np.float64,
          "in_proj_weight gradient")
    close(m_layer.self_attn.out_proj.weight.grad, layer.self_attn.out_proj.weight.grad.numpy().T, np.float64,
          "out_proj weight gradient")
    with pytest.raises(ValueError, match="kdim/vdim other than embed_dim"):
        from_torch(torch.nn.MultiheadAttention(8, 2, kdim=4, vdim=4))


def test_a_tied_gpt_head_stays_tied_in_torch():
    m = nn.GPT(11, 8, n_layer=1, n_head=2, n_embd=8, rng=0)
    t = to_torch(m)
    assert t.lm_head is None and len(list(t.parameters())) == len(m.parameters())
    back = from_torch(t)
    assert back.tie_weights and isinstance(back, nn.GPT) and back.wte.weight.shape == (11, 8)
    idx = np.random.default_rng(0).integers(0, 11, size=(2, 5))
    np.testing.assert_array_equal(back(idx), m(idx))
