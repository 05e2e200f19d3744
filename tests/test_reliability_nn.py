"""Issue 14, item 6: module, loss and activation constructors refuse bad arguments
when they are created, not at the first forward (or never).

Each refusal: the exception type (TypeError for a wrong type, bools and strings
included; ValueError for a value out of range, NaN and inf included), a message
in PyTorch's style that names the class, the argument and the value, and
nothing half-built (a shared random generator is not consumed).  Valid edge
values keep working, and where PyTorch 2.13 refuses, handydl refuses too.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from handydl import nn, ops

NAN, INF = float("nan"), float("inf")

# (constructor, exception, exact start of the message)
REFUSED = [
    (lambda: nn.Dropout(1.5), ValueError, "Dropout: p=1.5 is not valid; expected a probability in [0, 1]"),
    (lambda: nn.Dropout(-0.1), ValueError, "Dropout: p=-0.1 is not valid"),
    (lambda: nn.Dropout(NAN), ValueError, "Dropout: p=nan is not valid"),
    (lambda: nn.Dropout(True), TypeError, "Dropout: p=True is not valid"),
    (lambda: nn.Dropout("x"), TypeError, "Dropout: p='x' is not valid"),
    (lambda: nn.ELU("x"), TypeError, "ELU: alpha='x' is not valid; expected a finite number"),
    (lambda: nn.ELU(NAN), ValueError, "ELU: alpha=nan is not valid"),
    (lambda: nn.ELU(INF), ValueError, "ELU: alpha=inf is not valid"),
    (lambda: nn.ELU(True), TypeError, "ELU: alpha=True is not valid"),
    (lambda: nn.CELU(0), ValueError, "CELU: alpha=0 is not valid; expected a finite, non-zero number"),
    (lambda: nn.CELU(NAN), ValueError, "CELU: alpha=nan is not valid"),
    (lambda: nn.LeakyReLU("x"), TypeError, "LeakyReLU: negative_slope='x' is not valid"),
    (lambda: nn.LeakyReLU(NAN), ValueError, "LeakyReLU: negative_slope=nan is not valid"),
    (lambda: nn.Softplus(beta=0), ValueError, "Softplus: beta=0 is not valid; expected a finite, non-zero number"),
    (lambda: nn.Softplus(threshold=NAN), ValueError, "Softplus: threshold=nan is not valid"),
    (lambda: nn.Softplus(beta=True), TypeError, "Softplus: beta=True is not valid"),
    (lambda: nn.GELU("exact"), ValueError, "gelu: approximate='exact' is not valid"),
    (lambda: nn.HuberLoss(delta=0), ValueError, "HuberLoss: delta=0 is not valid; expected a finite number > 0"),
    (lambda: nn.HuberLoss(delta=-1), ValueError, "HuberLoss: delta=-1 is not valid"),
    (lambda: nn.HuberLoss(delta=INF), ValueError, "HuberLoss: delta=inf is not valid"),
    (lambda: nn.HuberLoss(delta="1"), TypeError, "HuberLoss: delta='1' is not valid"),
    (lambda: nn.CrossEntropyLoss(label_smoothing=1.5), ValueError,
     "CrossEntropyLoss: label_smoothing=1.5 is not valid; expected a number in [0, 1]"),
    (lambda: nn.CrossEntropyLoss(label_smoothing=NAN), ValueError, "CrossEntropyLoss: label_smoothing=nan is not valid"),
    (lambda: nn.CrossEntropyLoss(label_smoothing=True), TypeError, "CrossEntropyLoss: label_smoothing=True is not valid"),
    (lambda: nn.CrossEntropyLoss(ignore_index=1.5), TypeError, "CrossEntropyLoss: ignore_index=1.5 is not valid"),
    (lambda: nn.NLLLoss(ignore_index="a"), TypeError, "NLLLoss: ignore_index='a' is not valid"),
    (lambda: nn.ProbCrossEntropyLoss(eps=-1e-3), ValueError, "ProbCrossEntropyLoss: eps=-0.001 is not valid"),
    (lambda: nn.MultiMarginLoss(p=True), TypeError, "MultiMarginLoss: p=True is not valid; expected 1 or 2"),
    (lambda: nn.MultiMarginLoss(margin=NAN), ValueError, "MultiMarginLoss: margin=nan is not valid"),
    (lambda: nn.MSELoss(reduction="avg"), ValueError, "MSELoss: reduction='avg' is not valid"),
    (lambda: nn.LpNorm(p=0), ValueError, "LpNorm: p=0 is not valid; expected a finite number > 0"),
    (lambda: nn.LpNorm(p=-2), ValueError, "LpNorm: p=-2 is not valid"),
    (lambda: nn.LpNorm(p=NAN), ValueError, "LpNorm: p=nan is not valid"),
    (lambda: nn.LpNorm(dim=1.0), TypeError, "LpNorm: dim=1.0 is not valid"),
    (lambda: nn.LpNorm(keepdim=1), TypeError, "LpNorm: keepdim=1 is not valid; expected True or False"),
    (lambda: nn.BatchNorm1d(0), ValueError, "BatchNorm1d: num_features=0 is not valid; expected a positive integer"),
    (lambda: nn.BatchNorm1d(-1), ValueError, "BatchNorm1d: num_features=-1 is not valid"),
    (lambda: nn.BatchNorm1d(2.5), TypeError, "BatchNorm1d: num_features=2.5 is not valid"),
    (lambda: nn.BatchNorm1d(True), TypeError, "BatchNorm1d: num_features=True is not valid"),
    (lambda: nn.BatchNorm1d(4, eps=-1), ValueError, "BatchNorm1d: eps=-1 is not valid; expected a finite number >= 0"),
    (lambda: nn.BatchNorm1d(4, eps=NAN), ValueError, "BatchNorm1d: eps=nan is not valid"),
    (lambda: nn.BatchNorm1d(4, eps=INF), ValueError, "BatchNorm1d: eps=inf is not valid"),
    (lambda: nn.BatchNorm1d(4, momentum=2), ValueError,
     "BatchNorm1d: momentum=2 is not valid; expected None or a number in [0, 1]"),
    (lambda: nn.BatchNorm1d(4, momentum=NAN), ValueError, "BatchNorm1d: momentum=nan is not valid"),
    (lambda: nn.LayerNorm(0), ValueError, "LayerNorm: normalized_shape=0 is not valid"),
    (lambda: nn.LayerNorm((4, 0)), ValueError, "LayerNorm: normalized_shape=(4, 0) is not valid"),
    (lambda: nn.LayerNorm(2.5), TypeError, "LayerNorm: normalized_shape=2.5 is not valid"),
    (lambda: nn.LayerNorm(True), TypeError, "LayerNorm: normalized_shape=True is not valid"),
    (lambda: nn.LayerNorm(4, eps=-1), ValueError, "LayerNorm: eps=-1 is not valid; expected a finite number >= 0"),
    (lambda: nn.PReLU(0), ValueError, "PReLU: num_parameters=0 is not valid; expected a positive integer"),
    (lambda: nn.PReLU(2.5), TypeError, "PReLU: num_parameters=2.5 is not valid"),
    (lambda: nn.PReLU(True), TypeError, "PReLU: num_parameters=True is not valid"),
    (lambda: nn.PReLU(init=NAN), ValueError, "PReLU: init=nan is not valid; expected a finite number"),
    (lambda: nn.PReLU(init="x"), TypeError, "PReLU: init='x' is not valid"),
    (lambda: nn.MLP([4, 2.7, 3]), TypeError,
     "MLP: sizes=[4, 2.7, 3] is not valid; expected [in, hidden..., out], positive integers"),
    (lambda: nn.MLP([4, True, 3]), TypeError, "MLP: sizes=[4, True, 3] is not valid"),
    (lambda: nn.MLP([4, 0, 3]), ValueError, "MLP: sizes=[4, 0, 3] is not valid"),
    (lambda: nn.MLP([4]), ValueError, "MLP: sizes=[4] is not valid"),
    (lambda: nn.MLP(4), TypeError, "MLP: sizes=4 is not valid"),
    (lambda: nn.Linear(True, 3), TypeError, "Linear: in_features=True is not valid; expected a positive integer"),
    (lambda: nn.Linear(3, False), TypeError, "Linear: out_features=False is not valid"),
    (lambda: nn.Linear(2.5, 3), TypeError, "Linear: in_features=2.5 is not valid"),
    (lambda: nn.Linear(0, 3), ValueError, "Linear: in_features=0 is not valid"),
]


@pytest.mark.parametrize("make, error, message", REFUSED, ids=[m for _, _, m in REFUSED])
def test_refused_at_construction(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert type(info.value) is error            # not a subclass that slipped through
    assert str(info.value).startswith(message), str(info.value)
    assert "is not valid; expected" in str(info.value)


@pytest.mark.parametrize("make", [
    lambda rng: nn.Linear(True, 3, rng=rng),
    lambda rng: nn.Linear(3, 2.5, rng=rng),
    lambda rng: nn.MLP([4, 2.7, 3], rng=rng),
    lambda rng: nn.MLP([4, 3, 0], rng=rng),
])
def test_refusal_builds_nothing(make):
    """Refused before anything is drawn: a shared generator is where it was."""
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    with pytest.raises((TypeError, ValueError)):
        make(rng)
    assert before == rng.bit_generator.state


@pytest.mark.parametrize("call, match", [
    (lambda x: ops.dropout.forward(x, p=1.5), r"dropout: p=1\.5 is not valid"),
    (lambda x: ops.elu.forward(x, alpha="x"), r"ELU: alpha='x' is not valid"),
    (lambda x: ops.lp_norm.forward(x, p=0), r"LpNorm: p=0 is not valid"),
    (lambda x: ops.huber_loss.forward(x, x, delta=0), r"huber_loss: delta=0 is not valid"),
    (lambda x: ops.cross_entropy.forward(x, np.zeros(2, int), label_smoothing=1.5),
     r"cross_entropy: label_smoothing=1\.5 is not valid"),
    (lambda x: ops.layer_norm.forward(x, np.ones(3), np.zeros(3), eps=-1), r"layer_norm: eps=-1 is not valid"),
    (lambda x: ops.batch_norm.forward(x, np.ones(3), np.zeros(3), eps=NAN), r"batch_norm: eps=nan is not valid"),
])
def test_functional_ops_refuse_too(call, match):
    """The op's check_params runs in bind, so the functional path refuses as the module does."""
    with pytest.raises((TypeError, ValueError), match=match):
        call(np.ones((2, 3)))


def test_activation_factory_refuses():
    with pytest.raises(TypeError, match=r"ELU: alpha='x' is not valid"):
        nn.activation("elu", alpha="x")
    with pytest.raises(ValueError, match=r"LeakyReLU: negative_slope=nan is not valid"):
        nn.activation("leaky_relu", negative_slope=NAN)


# -- valid edge values keep working ---------------------------------------------------------

def test_dropout_edges():
    x = np.arange(1.0, 7.0).reshape(2, 3)
    np.testing.assert_array_equal(nn.Dropout(0)(x), x)
    np.testing.assert_array_equal(nn.Dropout(1)(x), np.zeros_like(x))
    np.testing.assert_array_equal(nn.Dropout(np.float32(0.0))(x), x)


@pytest.mark.parametrize("smoothing", [0, 0.0, 1, 1.0, np.float64(0.5)])
def test_label_smoothing_edges(smoothing):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([0, 2, 1, 1])
    got = nn.CrossEntropyLoss(label_smoothing=smoothing)(x, t)
    want = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t),
                                             label_smoothing=float(smoothing)).item()
    assert got == pytest.approx(want, rel=1e-12)


def test_eps_zero_as_torch():
    x = np.random.default_rng(1).standard_normal((5, 4))
    y = nn.BatchNorm1d(4, eps=0, dtype=np.float64)(x)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(0), 1, rtol=1e-12)
    y = nn.LayerNorm(4, eps=0.0, dtype=np.float64)(x)
    np.testing.assert_allclose(y.std(1), 1, rtol=1e-12)


def test_other_valid_values():
    assert nn.BatchNorm1d(np.int64(4), momentum=None).num_features == 4
    assert nn.BatchNorm1d(4, momentum=0).momentum == 0
    assert nn.BatchNorm1d(4, momentum=1).momentum == 1
    assert nn.LayerNorm((2, np.int64(3))).normalized_shape == (2, 3)
    assert nn.LayerNorm([4]).normalized_shape == (4,)
    assert nn.MLP([np.int64(4), 3]).get_config()["sizes"] == [4, 3]
    assert nn.Linear(np.int32(2), 3).in_features == 2
    assert nn.PReLU(np.int64(3), init=0).weight.shape == (3,)
    assert nn.ELU(-1.0).params["alpha"] == -1.0          # torch accepts any finite alpha
    assert nn.Softplus(beta=-2, threshold=INF).params["beta"] == -2
    assert nn.HuberLoss(delta=np.float32(0.5)).params["delta"] == np.float32(0.5)
    assert nn.LpNorm(p=1).params["p"] == 1
    assert nn.MultiMarginLoss(p=2).params["p"] == 2


# -- where PyTorch refuses, handydl refuses --------------------------------------------------

TORCH_REFUSES = [
    ("Dropout", (1.5,), {}), ("Dropout", (-0.1,), {}), ("Dropout", ("x",), {}),
    ("BatchNorm1d", (-1,), {}), ("BatchNorm1d", (2.5,), {}), ("BatchNorm1d", (True,), {}),
    ("PReLU", (-1,), {}), ("PReLU", (2.5,), {}), ("PReLU", (True,), {}), ("PReLU", (), {"init": "x"}),
    ("Linear", (2.5, 3), {}), ("LayerNorm", (2.5,), {}),
]


@pytest.mark.parametrize("name, args, kwargs", TORCH_REFUSES)
def test_refused_where_torch_refuses(name, args, kwargs):
    torch = pytest.importorskip("torch")
    with pytest.raises(Exception):
        getattr(torch.nn, name)(*args, **kwargs)
    with pytest.raises((TypeError, ValueError), match=re.escape(f"{name}: ")):
        getattr(nn, name)(*args, **kwargs)


@pytest.mark.parametrize("name, args, kwargs", [
    ("Dropout", (0,), {}), ("Dropout", (1,), {}), ("BatchNorm1d", (4,), {"eps": 0}),
    ("LayerNorm", (4,), {"eps": 0}), ("CrossEntropyLoss", (), {"label_smoothing": 1.0}),
    ("CrossEntropyLoss", (), {"label_smoothing": 0.0}), ("ELU", (-1.0,), {}),
])
def test_accepted_where_torch_accepts(name, args, kwargs):
    torch = pytest.importorskip("torch")
    getattr(torch.nn, name)(*args, **kwargs)
    getattr(nn, name)(*args, **kwargs)


# -- session 7 leftovers -----------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(dropout=0.5), r"MLP: dropout=0.5 needs a hidden layer; sizes=\[4, 3\] has none"),
    (dict(batch_norm=True), r"MLP: batch_norm=True needs a hidden layer"),
])
def test_mlp_refuses_options_it_would_silently_drop(kw, match):
    with pytest.raises(ValueError, match=match):
        nn.MLP([4, 3], **kw)
    assert sum(isinstance(m, nn.Dropout) for m in nn.MLP([4, 5, 3], dropout=0.5).modules()) == 1


@pytest.mark.parametrize("value, error", [("x", TypeError), (1.5, ValueError), (float("nan"), ValueError),
                                          (True, TypeError)])
def test_mlp_checks_dropout_even_before_building_layers(value, error):
    with pytest.raises(error, match=r"MLP: dropout=.* is not valid; expected a probability in \[0, 1\]"):
        nn.MLP([4, 5, 3], dropout=value)


@pytest.mark.parametrize("make, error, match", [
    (lambda: nn.BatchNorm2d("3"), TypeError, r"BatchNorm2d: num_features='3'"),
    (lambda: nn.BatchNorm2d(2.0), TypeError, r"BatchNorm2d: num_features=2.0"),
    (lambda: nn.BatchNorm2d(3, momentum="a"), TypeError, r"BatchNorm2d: momentum='a'"),
    (lambda: nn.GroupNorm(True, 4), TypeError, r"GroupNorm: num_groups=True"),
    (lambda: nn.GroupNorm(2, 4, eps="1e-5"), TypeError, r"GroupNorm: eps='1e-5'"),
    (lambda: nn.Conv2d(3, 4, 3.0), TypeError, r"Conv2d: kernel_size=3.0"),
    (lambda: nn.Conv2d(3, 4, 3, groups=1.0), TypeError, r"Conv2d: groups=1.0"),
    (lambda: nn.MaxPool2d((2, "2")), TypeError, r"max_pool2d: kernel_size=\(2, '2'\)"),
])
def test_the_cnn_modules_refuse_wrong_types_with_a_type_error(make, error, match):
    """As PyTorch and the other modules: a wrong type is a TypeError, not a ValueError."""
    with pytest.raises(error, match=match):
        make()


def test_fit_refuses_an_empty_loader_before_training():
    from handydl import optim, train
    from handydl.data import DataLoader
    m = nn.Linear(3, 2)
    before = m.weight.data.copy()
    loader = DataLoader(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), batch_size=4)
    with pytest.raises(ValueError, match=r"fit: train_loader has no batches \(its dataset has 0 rows\)"):
        train.fit(m, nn.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1), loader, 1)
    np.testing.assert_array_equal(m.weight.data, before)
