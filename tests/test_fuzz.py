"""Fuzzing the boundary (issue 14): hostile constructor arguments, input arrays of
any shape, dtype and value, and damaged checkpoint bytes.

The properties are those of the README's Reliability section:
- bad input is refused with TypeError or ValueError (CheckpointError is one) and a
  message that names the class; never another exception, never a traceback from
  deep inside NumPy (IndexError, AttributeError, ZeroDivisionError, ...);
- a refused call leaves the module as it was: parameters, gradients, running
  statistics and saved state;
- an accepted call keeps the float dtype and gives a gradient of the input's shape.

Hypothesis runs derandomized (the same examples in every CI run) with a bounded
number of examples, so the suite stays reproducible and inside its time budget.
"""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from handydl import checkpoint, nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(derandomize=True, max_examples=60, deadline=None, database=None)
REFUSALS = (TypeError, ValueError)

# Values a careless or hostile caller passes where a size, a rate or a flag belongs.
# Sizes stay small: a valid huge size is a request for memory, not bad input.
hostile = st.one_of(
    st.integers(-3, 9), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.none(), st.text(max_size=3), st.tuples(st.integers(-1, 4), st.integers(-1, 4)),
    st.just(np.float32(np.nan)), st.just(np.int64(3)), st.just([2, 3]), st.just({}),
)

# (class, how many leading arguments to fuzz, the remaining arguments kept valid)
CONSTRUCTORS = [
    (nn.Linear, 2, {}), (nn.BatchNorm1d, 1, {}), (nn.LayerNorm, 1, {}), (nn.Dropout, 1, {}),
    (nn.LeakyReLU, 1, {}), (nn.ELU, 1, {}), (nn.CELU, 1, {}), (nn.Softplus, 2, {}),
    (nn.PReLU, 2, {}), (nn.LpNorm, 1, {}), (nn.Conv1d, 3, {}), (nn.Conv2d, 3, {}),
    (nn.ConvTranspose2d, 3, {}), (nn.MaxPool2d, 3, {}), (nn.AvgPool2d, 3, {}),
    (nn.AdaptiveAvgPool2d, 1, {}), (nn.BatchNorm2d, 2, {}), (nn.GroupNorm, 3, {}),
    (nn.HuberLoss, 0, None), (nn.CrossEntropyLoss, 0, None), (nn.MultiMarginLoss, 0, None),
    (nn.Flatten, 2, {}), (nn.Softmax, 1, {}), (nn.LogSoftmax, 1, {}),
]
KEYWORDS = {nn.HuberLoss: "delta", nn.CrossEntropyLoss: "label_smoothing", nn.MultiMarginLoss: "margin"}


@pytest.mark.parametrize("cls, n, rest", CONSTRUCTORS, ids=[c.__name__ for c, _, _ in CONSTRUCTORS])
@FUZZ
@given(data=st.data())
def test_constructors_accept_or_refuse_with_a_type_or_value_error(cls, n, rest, data):
    if rest is None:                              # a loss: fuzz its numeric keyword
        args, kwargs = (), {KEYWORDS[cls]: data.draw(hostile)}
    else:
        args, kwargs = tuple(data.draw(hostile) for _ in range(n)), rest
    try:
        cls(*args, **kwargs)
    except REFUSALS as e:
        assert cls.__name__ in str(e) or _op_name(cls) in str(e), f"{cls.__name__}{args}: {e}"


def _op_name(cls):
    op = getattr(cls, "op", None)
    return getattr(op, "name", cls.__name__)


# -- inputs of any shape, dtype and value -------------------------------------------------

MODULES = {
    "Linear": lambda: nn.Linear(3, 2, dtype=np.float64),
    "BatchNorm1d": lambda: nn.BatchNorm1d(3, dtype=np.float64),
    "LayerNorm": lambda: nn.LayerNorm(3, dtype=np.float64),
    "ReLU": nn.ReLU, "GELU": nn.GELU, "Softmax": lambda: nn.Softmax(dim=-1),
    "Dropout": lambda: nn.Dropout(0.5), "PReLU": lambda: nn.PReLU(dtype=np.float64),
    "Conv2d": lambda: nn.Conv2d(1, 2, 2, dtype=np.float64),
    "MaxPool2d": lambda: nn.MaxPool2d(2), "BatchNorm2d": lambda: nn.BatchNorm2d(1, dtype=np.float64),
    "GroupNorm": lambda: nn.GroupNorm(1, 1, dtype=np.float64), "Flatten": nn.Flatten,
    "MLP": lambda: nn.MLP([3, 4, 2], dtype=np.float64),
    "Residual": lambda: nn.Residual(nn.Linear(3, 3, dtype=np.float64)),
}
DTYPES = [np.bool_, np.int64, np.float16, np.float32, np.float64, np.complex128, np.object_]
SPECIAL = [0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e300, -1e300, 1e-310]


@st.composite
def arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
    dtype = draw(st.sampled_from(DTYPES))
    values = draw(st.lists(st.sampled_from(SPECIAL) | st.floats(-5, 5), min_size=1, max_size=8))
    flat = np.resize(np.array(values), int(np.prod(shape)))
    if dtype is np.object_:
        return flat.astype(object).reshape(shape)
    with np.errstate(all="ignore"):
        return flat.astype(dtype).reshape(shape)


def _state(m):
    """Everything a refused call must leave as it was."""
    params = {k: (p.data.copy(), None if p.grad is None else p.grad.copy()) for k, p in m.named_parameters()}
    buffers = {k: np.copy(v) for k, v in m.state_dict().items()}
    return params, buffers


def _same(a, b):
    (pa, ba), (pb, bb) = a, b
    assert pa.keys() == pb.keys() and ba.keys() == bb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k][0], pb[k][0])
        assert (pa[k][1] is None) == (pb[k][1] is None)
        if pa[k][1] is not None:
            np.testing.assert_array_equal(pa[k][1], pb[k][1])
    for k in ba:
        np.testing.assert_array_equal(ba[k], bb[k])


@pytest.mark.parametrize("name", list(MODULES))
@FUZZ
@given(x=arrays())
def test_forward_refuses_or_keeps_dtype_and_a_refusal_leaves_no_trace(name, x):
    m = MODULES[name]()
    m.train()
    before = _state(m)
    try:
        with np.errstate(all="ignore"):
            y = m(x)
    except REFUSALS as e:
        assert str(e), name
        _same(before, _state(m))
        assert m.saved_count == 0 and all(c.saved_count == 0 for c in m.modules())
        return
    # complex is accepted on purpose: the complex-step check (check.gradcheck) runs ops on it
    # (forward only: it takes values, not gradients); an object array of numbers converts
    assert x.dtype.kind in "fiubcO", f"{name} accepted a {x.dtype} input"
    if x.dtype.kind in "cO":
        return
    if x.dtype.kind == "f":      # float in: the float type of x and the weights together
        weights = [p.data.dtype for p in m.parameters()]
        assert y.dtype in (x.dtype, np.result_type(x.dtype, *weights)), f"{name}: {x.dtype} in, {y.dtype} out"
    with np.errstate(all="ignore"):
        gx = m.backward(np.ones_like(y))
    if gx is not None:
        assert gx.shape == x.shape, name
    assert m.saved_count == 0


# -- damaged checkpoints --------------------------------------------------------------------

def _good_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.npz"
    checkpoint.save(nn.MLP([4, 5, 3], batch_norm=True), path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory):
    return _good_checkpoint(tmp_path_factory)


def _load_bytes(tmp_path, raw):
    path = tmp_path / "fuzzed.npz"
    path.write_bytes(raw)
    return checkpoint.load(path)


@FUZZ
@given(data=st.data())
def test_damaged_checkpoint_bytes_are_a_checkpoint_error(good_bytes, tmp_path_factory, data):
    """Flip, cut or splice bytes of a good checkpoint: load either returns a model
    (the damage hit nothing that matters) or raises CheckpointError; nothing else."""
    raw = bytearray(good_bytes)
    how = data.draw(st.sampled_from(["flip", "cut", "splice"]))
    if how == "flip":
        for i in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=16)):
            raw[i] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    tmp = tmp_path_factory.mktemp("fuzz")
    try:
        model = _load_bytes(tmp, bytes(raw))
    except checkpoint.CheckpointError:
        return
    assert isinstance(model, nn.Module)


def _npz(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@FUZZ
@given(header=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                     max_size=4),
                           max_leaves=20))
def test_any_json_header_is_a_checkpoint_error(tmp_path_factory, header):
    """A checkpoint whose header is any JSON value at all: CheckpointError, never an
    AttributeError or a KeyError from inside the loader."""
    import json
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(header)))
    tmp = tmp_path_factory.mktemp("hdr")
    try:
        _load_bytes(tmp, _npz({f"{checkpoint._HEADER}.npy": buf.getvalue()}))
    except checkpoint.CheckpointError:
        return
    pytest.fail(f"a header {header!r} loaded")
