"""handydl.interop.to_onnx and `handydl export`: every exportable module, an MLP and
CNNs written to ONNX, run in onnxruntime, and compared with handydl's own
predictions (float32 tolerance); the modules ONNX cannot express are refused
by name."""
import numpy as np
import pytest

from handydl import checkpoint, cli, nn
from handydl.nn import models

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed: ONNX export is untested")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: ONNX export is untested")
from handydl.interop import TO_ONNX, to_onnx  # noqa: E402
from handydl.interop.onnx_export import NOT_EXPORTED  # noqa: E402

TOL = dict(rtol=1e-4, atol=1e-5)
G = nn.GENERATED


def flat(y):
    return [a for v in y for a in flat(v)] if isinstance(y, tuple) else [y]


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.astype(np.float32) if x.dtype.kind == "f" else x.astype(np.int64)})


def exported_matches(model, x, tmp_path, **tol):
    """The ONNX file's outputs on x (a batch of 3, not the exporter's sample batch of 2)
    equal handydl's eval-mode outputs."""
    path = to_onnx(model, tmp_path / "m.onnx", x.shape[1:], input_dtype="float32" if x.dtype.kind == "f" else "int64")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    was = model.training
    model.eval()
    with nn.no_grad():
        y = model(x)
    model.train(was)
    ys = flat(y)                                # LSTM: output, (h_n, c_n)
    got = run_onnx(path, x)
    assert len(got) == len(ys)
    for a, b in zip(got, ys):
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(a, b, **(tol or TOL))
    return path


def rows(n=3, d=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


IDS = np.random.default_rng(7).integers(0, 10, size=(3, 5))


def sequence(length=5, n=3, d=6):
    return np.random.default_rng(4).normal(size=(length, n, d)).astype(np.float32)


def image(n=3, c=4, h=6, w=6):
    return np.random.default_rng(1).normal(size=(n, c, h, w)).astype(np.float32)


def _stats(bn, x):
    with nn.no_grad():
        bn(x)
    return bn


def _perturbed(m):
    rng = np.random.default_rng(3)
    for p in m.parameters():
        p.data[...] = rng.normal(size=p.shape)
    return m


def _pair(merge_into, a=None, b=None):
    """A Parallel of two Linear branches merged by a wiring module (Add, Mul, Concat)."""
    return nn.Sequential(nn.Parallel(a or nn.Linear(6, 4, rng=0), b or nn.Linear(6, 4, rng=1), merge="tuple"),
                         merge_into)


def _instance_stats(m):
    """An InstanceNorm whose running statistics moved off their start (one training forward)."""
    with nn.no_grad():
        m(image().astype(np.float32))
    return m


CASES = {
    "Linear": (lambda: nn.Linear(6, 3, rng=0), rows()),
    "Linear-nobias-3d": (lambda: nn.Linear(6, 3, bias=False, rng=0), rows().reshape(3, 1, 6)),
    **{name: ((lambda name: lambda: G[name]())(name), 4 * rows()) for name in
       ("Sigmoid", "Tanh", "ReLU", "ReLU6", "SELU", "SiLU", "Mish", "Hardsigmoid", "Hardswish", "Identity")},
    **{name: ((lambda name: lambda: G[name]())(name), 4 * rows())
       for name in ("Softsign", "LogSigmoid", "Tanhshrink")},
    "Hardtanh": (lambda: nn.Hardtanh(-0.5, 2.0), 4 * rows()),
    "Softshrink": (lambda: nn.Softshrink(0.3), rows()),
    "Hardshrink": (lambda: nn.Hardshrink(0.3), rows()),
    "Threshold": (lambda: nn.Threshold(0.1, -2.0), rows()),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.2), rows()),
    "ELU": (lambda: nn.ELU(0.7), rows()),
    "CELU": (lambda: nn.CELU(1.3), rows()),
    "GELU": (lambda: nn.GELU(), rows()),
    "GELU-tanh": (lambda: nn.GELU(approximate="tanh"), rows()),
    "Softplus": (lambda: nn.Softplus(beta=2.0, threshold=3.0), 4 * rows()),
    "Softmax": (lambda: nn.Softmax(dim=1), rows()),
    "LogSoftmax": (lambda: nn.LogSoftmax(dim=-1), rows()),
    "Softmin": (lambda: nn.Softmin(dim=1), rows()),
    "Softmax2d": (lambda: nn.Softmax2d(), image()),
    "SumNormalize": (lambda: nn.SumNormalize(dim=1), np.abs(rows()) + 0.1),
    "LpNorm-2": (lambda: nn.LpNorm(dim=1), rows()),
    "LpNorm-1-keepdim": (lambda: nn.LpNorm(p=1.0, dim=-1, keepdim=True), rows()),
    "LpNorm-3": (lambda: nn.LpNorm(p=3.0, dim=1), rows()),
    "PReLU": (lambda: nn.PReLU(), rows()),
    "PReLU-channels": (lambda: _perturbed(nn.PReLU(4)), image()),
    "Add": (lambda: _pair(nn.Add()), rows()),
    "Mul": (lambda: _pair(nn.Mul()), rows()),
    "Concat": (lambda: _pair(nn.Concat(dim=1)), rows()),
    "Split": (lambda: nn.Split([2, 4], dim=1), rows()),
    "Split-size": (lambda: nn.Sequential(nn.Split(3, dim=1), nn.Mul()), rows()),
    "GLU": (lambda: nn.GLU(dim=1), rows()),
    "BatchNorm1d": (lambda: _perturbed(_stats(nn.BatchNorm1d(6), rows(8))), rows()),
    "BatchNorm1d-3d-nobias": (lambda: _stats(nn.BatchNorm1d(4, bias=False), image()[..., 0]), image()[..., 0]),
    "BatchNorm1d-noaffine": (lambda: _stats(nn.BatchNorm1d(6, affine=False), rows(8)), rows()),
    "BatchNorm2d": (lambda: _perturbed(_stats(nn.BatchNorm2d(4), image())), image()),
    "LayerNorm": (lambda: _perturbed(nn.LayerNorm(6)), rows()),
    "LayerNorm-2d-nobias": (lambda: _perturbed(nn.LayerNorm((6, 6), bias=False)), image()),
    "LayerNorm-noaffine": (lambda: nn.LayerNorm(6, elementwise_affine=False), rows()),
    "RMSNorm": (lambda: _perturbed(nn.RMSNorm(6)), rows()),
    "RMSNorm-2d-eps-noaffine": (lambda: nn.RMSNorm((6, 6), eps=1e-3, elementwise_affine=False), image()),
    "GroupNorm": (lambda: _perturbed(nn.GroupNorm(2, 4)), image()),
    "GroupNorm-noaffine": (lambda: nn.GroupNorm(2, 4, affine=False), image()),
    "LocalResponseNorm": (lambda: nn.LocalResponseNorm(3, alpha=0.5, beta=0.6, k=2.0), image()),
    "InstanceNorm1d": (lambda: nn.InstanceNorm1d(4), image()[..., 0]),
    "InstanceNorm2d-affine": (lambda: _perturbed(nn.InstanceNorm2d(4, affine=True)), image()),
    "InstanceNorm2d-stats-eval": (lambda: _instance_stats(nn.InstanceNorm2d(4, affine=True, track_running_stats=True)),
                                  image()),
    "ZeroPad1d": (lambda: nn.ZeroPad1d((1, 2)), image()[..., 0]),
    "ZeroPad2d": (lambda: nn.ZeroPad2d((1, 0, 2, 3)), image()),
    "ConstantPad1d": (lambda: nn.ConstantPad1d(2, -1.5), image()[..., 0]),
    "ConstantPad2d": (lambda: nn.ConstantPad2d((0, 1, 1, 2), 0.5), image()),
    "ReflectionPad1d": (lambda: nn.ReflectionPad1d((3, 1)), image()[..., 0]),
    "ReflectionPad2d": (lambda: nn.ReflectionPad2d((1, 2, 3, 0)), image()),
    "ReplicationPad1d": (lambda: nn.ReplicationPad1d((2, 4)), image()[..., 0]),
    "ReplicationPad2d": (lambda: nn.ReplicationPad2d(2), image()),
    "CircularPad1d": (lambda: nn.CircularPad1d((1, 3)), image()[..., 0]),
    "CircularPad2d": (lambda: nn.CircularPad2d((2, 1, 0, 3)), image()),
    "Dropout": (lambda: nn.Dropout(0.5), rows()),
    "Flatten": (lambda: nn.Flatten(), image()),
    "Flatten-2-3": (lambda: nn.Flatten(2, 3), image()),
    "Unflatten": (lambda: nn.Unflatten(1, (2, 3)), rows()),
    "Conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, rng=0), image()[..., 0]),
    "Conv2d": (lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2, rng=0), image()),
    "Conv2d-same-even": (lambda: nn.Conv2d(4, 3, 4, padding="same", bias=False, rng=0), image()),
    "Conv2d-valid": (lambda: nn.Conv2d(4, 3, 3, padding="valid", rng=0), image()),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2,
                                                   rng=0), image()),
    "MaxPool2d": (lambda: nn.MaxPool2d(3, stride=2, padding=1), image()),
    "MaxPool2d-ceil-dilated": (lambda: nn.MaxPool2d(2, stride=2, dilation=2, ceil_mode=True), image(h=7, w=7)),
    "AvgPool2d": (lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), image()),
    "AvgPool2d-include-pad": (lambda: nn.AvgPool2d(2, padding=1), image()),
    "AdaptiveAvgPool2d-global": (lambda: nn.AdaptiveAvgPool2d(1), image()),
    "AdaptiveAvgPool2d-even": (lambda: nn.AdaptiveAvgPool2d((3, None)), image()),
    "Standardize": (lambda: nn.Standardize(np.arange(6.0, dtype=np.float32), np.linspace(0.5, 2, 6).astype(np.float32)),
                    rows()),
    "Sequential": (lambda: nn.Sequential(nn.Linear(6, 4, rng=0), nn.Tanh(), nn.Linear(4, 2, rng=1)), rows()),
    "MLP": (lambda: nn.MLP([6, 8, 5, 3], activation="gelu", dropout=0.2, rng=0), rows()),
    "Residual": (lambda: nn.Residual(nn.Sequential(nn.Linear(6, 6, rng=0), nn.ReLU())), rows()),
    "Residual-shortcut": (lambda: nn.Residual(nn.Linear(6, 3, rng=0), nn.Linear(6, 3, bias=False, rng=1)), rows()),
    "Parallel-sum": (lambda: nn.Parallel(nn.Linear(6, 3, rng=0), nn.Linear(6, 3, rng=1)), rows()),
    "Parallel-concat": (lambda: nn.Parallel(nn.Linear(6, 3, rng=0), nn.Sigmoid(), merge="concat", dim=1), rows()),
    "Parallel-tuple": (lambda: nn.Parallel(nn.Linear(6, 3, rng=0), nn.Tanh(), merge="tuple"), rows()),
    # recurrent layers: (L, N, H_in) with L the dynamic first dim, or (N, L, H_in) with batch_first
    "RNN": (lambda: nn.RNN(6, 4, rng=0), sequence()),
    "RNN-relu-2-layers-nobias": (lambda: nn.RNN(6, 4, num_layers=2, nonlinearity="relu", bias=False, rng=0),
                                 sequence()),
    "LSTM-bidirectional-2-layers": (lambda: nn.LSTM(6, 4, num_layers=2, bidirectional=True, rng=0), sequence()),
    "GRU-batch-first-bidirectional": (lambda: nn.GRU(6, 4, batch_first=True, bidirectional=True, rng=0),
                                      sequence()),
    "RNNCell": (lambda: nn.RNNCell(6, 4, nonlinearity="relu", rng=0), rows()),
    # token ids in (int64), and the attention layers
    "Embedding": (lambda: nn.Embedding(10, 6, rng=0), IDS),
    "Embedding-padding": (lambda: nn.Embedding(10, 6, padding_idx=3, rng=0), IDS),
    "LearnedPositionalEmbedding": (lambda: nn.LearnedPositionalEmbedding(8, 6, rng=0), sequence()),
    "SinusoidalPositionalEmbedding": (lambda: nn.SinusoidalPositionalEmbedding(8, 6), sequence()),
    "TransformerEncoderLayer-post-norm-relu": (lambda: _perturbed(nn.TransformerEncoderLayer(6, 2, 10, rng=0)),
                                               sequence()),
    "TransformerEncoderLayer-pre-norm-gelu-batch-first-nobias": (lambda: nn.TransformerEncoderLayer(
        6, 3, 10, activation="gelu", norm_first=True, batch_first=True, bias=False, rng=0), sequence()),
    "GPT-tied": (lambda: _perturbed(nn.GPT(10, 8, n_layer=2, n_head=2, n_embd=8, rng=0)), IDS),
    "GPT-untied-nobias": (lambda: nn.GPT(10, 8, n_layer=1, n_head=2, n_embd=8, bias=False, tie_weights=False,
                                         rng=0), IDS),
    "GPTBlock": (lambda: _perturbed(nn.GPTBlock(6, 2, rng=0)), sequence()),
    "GPTMLP": (lambda: nn.GPTMLP(6, rng=0), sequence()),
    "CausalSelfAttention-nobias": (lambda: nn.CausalSelfAttention(6, 3, bias=False, rng=0), sequence()),
    "token-model": (lambda: nn.Sequential(nn.Embedding(10, 6, rng=0), nn.LearnedPositionalEmbedding(8, 6, rng=1),
                                          nn.TransformerEncoderLayer(6, 2, 12, batch_first=True, rng=2),
                                          nn.Linear(6, 10, rng=3)), IDS),
    "LSTMCell": (lambda: nn.LSTMCell(6, 4, rng=0), rows()),
    "GRUCell-nobias": (lambda: nn.GRUCell(6, 4, bias=False, rng=0), rows()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_exported_layer_predicts_as_handydl(name, tmp_path):
    make, x = CASES[name]
    exported_matches(make(), x, tmp_path)


def test_every_exportable_class_is_tested_and_the_rest_is_listed():
    tested = set()
    for make, _ in CASES.values():
        tested |= {type(m) for m in make().modules()}
    assert set(TO_ONNX) - tested == set()
    # the modules of handydl without an export are listed, each with its reason
    assert {c.__name__ for c in set(checkpoint.MODULES.values()) - set(TO_ONNX)} == set(NOT_EXPORTED)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
def test_trained_models_predict_the_same_in_onnxruntime(kind, tmp_path):
    from handydl import optim
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 64)).astype(np.float32), rng.integers(0, 10, 16)
    body = {"mlp": lambda: nn.MLP([64, 32, 10], batch_norm=True, dropout=0.1, rng=0),
            "cnn": lambda: models.lenet((1, 8, 8), 10, channels=(4, 8), hidden=16, rng=0),
            "resnet": lambda: models.resnet((1, 8, 8), 10, rng=0)}[kind]()
    model = nn.Sequential(nn.Standardize(x.mean(0), x.std(0) + 0.5),
                          nn.Unflatten(1, (1, 8, 8)) if kind != "mlp" else nn.Identity(), body)
    loss, opt = nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        model.zero_grad()
        loss(model(x), y)
        model.backward(loss.backward(), input_grad=False)
        opt.step()
    exported_matches(model, x[:5], tmp_path)
    assert model.training                      # the export left the model's mode as it was


def test_a_float64_model_is_exported_in_float32(tmp_path):
    model = nn.MLP([6, 8, 3], rng=0).astype(np.float64)
    path = exported_matches(model, rows().astype(np.float64), tmp_path)
    assert {t.data_type for t in onnx.load(str(path)).graph.initializer} == {onnx.TensorProto.FLOAT}


def test_the_batch_dimension_is_dynamic(tmp_path):
    model = nn.MLP([6, 8, 3], rng=0)
    path = to_onnx(model, tmp_path / "m.onnx", (6,))
    for n in (1, 7):
        with nn.no_grad():
            np.testing.assert_allclose(run_onnx(path, rows(n))[0], model.eval()(rows(n)), **TOL)


def test_a_tied_weight_is_stored_once(tmp_path):
    a, b = nn.Linear(4, 4, rng=0), nn.Linear(4, 4, rng=1)
    b.weight = a.weight
    path = exported_matches(nn.Sequential(a, nn.Tanh(), b), rows(d=4), tmp_path)
    assert len(onnx.load(str(path)).graph.initializer) == 3


@pytest.mark.parametrize("model, shape, match", [
    (nn.BatchNorm1d(3, track_running_stats=False), (3,), "track_running_stats=False"),
    (nn.AvgPool2d(2, divisor_override=3), (1, 4, 4), "divisor_override has no ONNX"),
    (nn.AdaptiveAvgPool2d(3), (1, 4, 4), r"output size \(3, 3\) does not divide the input's 4x4"),
    (nn.Flatten(0), (4,), "reshapes the batch dimension"),
    (nn.LocalResponseNorm(2), (3, 4), "size=2 is even: ONNX's LRN centres its window one channel off"),
    (nn.Bilinear(3, 2, 4), (3,), r"it takes two inputs"),
    (nn.MultiheadAttention(4, 2), (3, 4), r"it takes three inputs \(query, key, value\)"),
    (nn.Sequential(nn.ReLU(), nn.ModuleList([nn.ReLU()])), (4,),
     r"ModuleList \(at '1'\) has no ONNX export \(a container without a forward\)"),
])
def test_what_onnx_cannot_express_is_refused_by_name(model, shape, match, tmp_path):
    with pytest.raises((TypeError, ValueError), match=match):
        to_onnx(model, tmp_path / "m.onnx", shape)
    assert not (tmp_path / "m.onnx").exists()


def test_a_module_of_ones_own_is_refused(tmp_path):
    class Mine(nn.Module):
        def forward(self, x):
            return x
    with pytest.raises(TypeError, match=r"to_onnx: Mine \(at '0'\) has no ONNX export; exportable: "):
        to_onnx(nn.Sequential(Mine()), tmp_path / "m.onnx", (3,))
    with pytest.raises(ValueError, match="input_shape=.* expected positive sizes"):
        to_onnx(nn.ReLU(), tmp_path / "m.onnx", (0,))


# -- the command ------------------------------------------------------------------------------

def test_handydl_export_of_a_trained_run_predicts_as_handydl_predict(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "iris", "--epochs", "2", "--hidden", "8", "--batch-norm",
                     "--no-progress", "--out", str(out)]) == 0
    for ext in ("npz", "safetensors"):
        if ext == "safetensors":
            model = checkpoint.load(out / "model.npz")
            checkpoint.save(model, out / "model.safetensors")
        capsys.readouterr()
        assert cli.main(["export", str(out / f"model.{ext}"), str(tmp_path / f"{ext}.onnx")]) == 0
        assert "input 'input' of shape (N, 4)" in capsys.readouterr().out
        model = checkpoint.load(out / "model.npz")
        x = np.random.default_rng(0).uniform(0, 7, size=(5, 4)).astype(np.float32)
        with nn.no_grad():
            np.testing.assert_allclose(run_onnx(tmp_path / f"{ext}.onnx", x)[0], model(x), **TOL)


def test_handydl_export_errors_are_one_line(tmp_path, capsys):
    model = nn.Sequential(nn.AvgPool2d(2, divisor_override=3))
    checkpoint.save(model, tmp_path / "p.npz")
    assert cli.main(["export", str(tmp_path / "p.npz"), str(tmp_path / "p.onnx")]) == 2
    assert "does not say its input width; give --input-shape" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "p.npz"), str(tmp_path / "p.onnx"), "--input-shape", "1,4,4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "divisor_override has no ONNX AveragePool attribute" in err
    assert cli.main(["export", str(tmp_path / "p.npz"), str(tmp_path / "p.onnx"), "--input-shape", "1,0.5"]) == 2
    assert "expected positive integers" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "p.onnx")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "p.onnx").exists()


def test_handydl_export_of_a_token_model(tmp_path, capsys):
    model = CASES["token-model"][0]()
    checkpoint.save(model, tmp_path / "t.safetensors")
    assert cli.main(["export", str(tmp_path / "t.safetensors"), str(tmp_path / "t.onnx"), "--input-shape", "5",
                     "--input-dtype", "int64"]) == 0
    with nn.no_grad():
        np.testing.assert_allclose(run_onnx(tmp_path / "t.onnx", IDS)[0], model.eval()(IDS), **TOL)
