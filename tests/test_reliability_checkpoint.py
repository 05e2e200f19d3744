"""Checkpoints checked before anything is allocated (issue 14, item 3), the
safetensors format (issue 20), and no unpickling on any path.

Every hostile file here is small; loading it must fail with a CheckpointError
(through ``handydl predict``: one line, exit 2) without building the model it
describes, which tracemalloc's peak shows (NumPy reports its allocations).
"""
import io
import json
import re
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from handydl import checkpoint, cli, nn
from handydl.checkpoint import CheckpointError
from handydl.nn import models

BASE = {"format": "handydl-checkpoint", "version": 2, "tied": {}, "meta": {}}
LIMIT = 20 << 20            # a refused file may cost a few MB of parsing, never the model it claims


def npz_with_header(path, header_text, arrays=None):
    """An .npz holding ``header_text`` as its handydl header (not re-encoded: it may be any JSON)."""
    np.savez(path, __handydl__=np.array(header_text), **{f"state/{k}": v for k, v in (arrays or {}).items()})
    return path


def refused(path, match):
    """load(path) raises CheckpointError matching ``match``; returns the peak bytes allocated."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=match) as e:
            checkpoint.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    return peak


def predict_fails_in_one_line(path, tmp_path, capsys, match):
    data = tmp_path / "x.csv"
    data.write_text("a,b\n1,2\n")
    assert cli.main(["predict", "--model", str(path), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and re.search(match, err), err


# -- the cases of issue 14, item 3 ------------------------------------------------------------

@pytest.mark.parametrize("text, kind", [("[1, 2]", "array"), ("null", "null"), ("3", "number"),
                                        ('"text"', "string"), ("true", "boolean")])
def test_a_header_that_is_not_an_object(tmp_path, capsys, text, kind):
    path = npz_with_header(tmp_path / "h.npz", text)
    refused(path, f"not a handydl checkpoint \\(its header is a JSON {kind}, not an object\\)")
    predict_fails_in_one_line(path, tmp_path, capsys, "not a handydl checkpoint")


@pytest.mark.parametrize("version", ["abc", True, -1, 2.0, None, [2]])
def test_a_version_that_is_not_an_integer(tmp_path, version):
    header = {**BASE, "version": version, "architecture": {"type": "ReLU"}}
    refused(npz_with_header(tmp_path / "v.npz", json.dumps(header)), "version .* is not an integer >= 0")


def test_a_newer_version_asks_for_an_upgrade(tmp_path):
    header = {**BASE, "version": 99, "architecture": {"type": "ReLU"}}
    refused(npz_with_header(tmp_path / "v.npz", json.dumps(header)), "version 99 is newer.*upgrade")


@pytest.mark.parametrize("where", ["architecture", "config", "meta"])
def test_900_deep_nesting_is_refused_without_recursion_error(tmp_path, capsys, where):
    n = 900
    if where == "architecture":
        arch = '{"type": "Sequential", "children": {"0": ' * n + '{"type": "ReLU"}' + "}}" * n
    elif where == "config":
        arch = '{"type": "MLP", "config": {"sizes": ' + "[" * n + "]" * n + "}}"
    else:
        arch = '{"type": "ReLU"}, "meta": ' + "[" * n + "]" * n
    path = npz_with_header(tmp_path / "deep.npz", '{"format": "handydl-checkpoint", "version": 2, '
                                                  f'"architecture": {arch}}}')
    refused(path, "nested [0-9]+ deep, more than")
    predict_fails_in_one_line(path, tmp_path, capsys, "nested")


def test_nesting_deeper_than_max_depth_modules_is_refused_before_building(tmp_path):
    n = checkpoint.MAX_DEPTH + 2              # within the JSON limit, beyond the module limit
    arch = '{"type": "Sequential", "children": {"0": ' * n + '{"type": "ReLU"}' + "}}" * n
    path = npz_with_header(tmp_path / "deep.npz", f'{{"format": "handydl-checkpoint", "version": 2, '
                                                  f'"architecture": {arch}}}')
    refused(path, f"nested deeper than {checkpoint.MAX_DEPTH} levels")


@pytest.mark.parametrize("kind, what", [("MSELoss", "is a loss"), ("CrossEntropyLoss", "is a loss"),
                                        ("Module", "is not a model module"),
                                        ("ModuleList", "no forward: it holds modules but is not a model"),
                                        ("ModuleDict", "no forward"), ("__import__", "unknown module type")])
def test_a_loss_a_bare_module_or_a_container_is_not_a_model(tmp_path, capsys, kind, what):
    path = npz_with_header(tmp_path / "k.npz", json.dumps({**BASE, "architecture": {"type": kind}}))
    refused(path, what)
    predict_fails_in_one_line(path, tmp_path, capsys, what)


def test_a_small_file_asking_for_linear_10000_by_10000_fails_fast_without_allocating(tmp_path, capsys):
    header = {**BASE, "architecture": {"type": "Linear", "config": {"in_features": 10000, "out_features": 10000}}}
    path = npz_with_header(tmp_path / "big.npz", json.dumps(header))
    assert path.stat().st_size < 2000
    peak = refused(path, r"Linear config declares weight of shape \(10000, 10000\); the file holds no such array")
    assert peak < LIMIT, f"{peak:,} bytes allocated to refuse it"
    predict_fails_in_one_line(path, tmp_path, capsys, "declares weight")


def test_a_declared_size_must_match_the_array_in_the_file(tmp_path):
    """The file holds a weight, of another shape: refused before Linear(10000, 10000) is made."""
    header = {**BASE, "architecture": {"type": "Linear", "config": {"in_features": 10000, "out_features": 10000}}}
    path = npz_with_header(tmp_path / "big.npz", json.dumps(header),
                           {"weight": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)})
    assert refused(path, r"declares weight of shape \(10000, 10000\); the file's weight has shape \(2, 3\)") < LIMIT


def test_an_mlp_config_larger_than_its_arrays_is_refused(tmp_path):
    arch = {"type": "MLP", "config": {"sizes": [100000, 100000, 10]}, "children": {}}
    path = npz_with_header(tmp_path / "mlp.npz", json.dumps({**BASE, "architecture": arch}))
    assert refused(path, r"MLP config .* declares 10,001,100,010 values, the file holds 0") < LIMIT


@pytest.mark.parametrize("config", [{"in_features": "10", "out_features": 3},
                                    {"in_features": -1, "out_features": 3},
                                    {"in_features": 1.5, "out_features": 3}, {"out_features": 3}])
def test_a_config_with_a_bad_size_is_refused(tmp_path, config):
    arch = {"type": "Linear", "config": config}
    path = npz_with_header(tmp_path / "c.npz", json.dumps({**BASE, "architecture": arch}))
    refused(path, r"Linear config \{.*\} is not valid: (ValueError: in_features=.* is not an integer >= 0|"
                  "KeyError: 'in_features')")


def npy_member(shape, dtype="<f8", data=b""):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def test_an_npy_member_claiming_a_huge_shape_fails_without_memory_error(tmp_path, capsys):
    header = {**BASE, "architecture": {"type": "Linear", "config": {"in_features": 100000, "out_features": 100000}}}
    path = tmp_path / "npy.npz"
    with zipfile.ZipFile(path, "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array(json.dumps(header)))
        z.writestr("__handydl__.npy", buf.getvalue())
        z.writestr("state/weight.npy", npy_member((100000, 100000), data=b"\0" * 64))
    assert path.stat().st_size < 2000
    peak = refused(path, r"array state/weight declares shape \(100000, 100000\) of float64, "
                         r"80,000,000,000 bytes, but holds 64")
    assert peak < LIMIT
    predict_fails_in_one_line(path, tmp_path, capsys, "declares shape")


def test_a_compressed_member_of_honest_size_beyond_the_limit_is_refused(tmp_path, monkeypatch):
    model = nn.Linear(30, 40, rng=0)
    path = tmp_path / "m.npz"
    checkpoint.save(model, path)
    monkeypatch.setattr(checkpoint, "MAX_BYTES", 1000)
    refused(path, r"the arrays declare 4,960 bytes, more than handydl.checkpoint.MAX_BYTES = 1,000")


def test_a_huge_header_member_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_HEADER_BYTES", 100)
    path = npz_with_header(tmp_path / "h.npz", json.dumps({**BASE, "architecture": {"type": "ReLU"},
                                                            "meta": {"x": "y" * 500}}))
    refused(path, "the header is 611 bytes, more than 100")


# -- the table of declared shapes matches every module with parameters ------------------------

def modules_with_state():
    """One or more instances of every built-in class that owns parameters or buffers."""
    return [nn.Linear(3, 4), nn.Linear(3, 4, bias=False), nn.Conv1d(2, 4, 3, groups=2),
            nn.Conv2d(2, 6, (3, 2), groups=2, bias=False), nn.ConvTranspose2d(4, 6, 3, groups=2),
            nn.BatchNorm1d(3), nn.BatchNorm1d(3, affine=False), nn.BatchNorm1d(3, track_running_stats=False),
            nn.BatchNorm1d(3, bias=False), nn.BatchNorm2d(5), nn.LayerNorm((2, 3)),
            nn.LayerNorm(4, elementwise_affine=False), nn.LayerNorm(4, bias=False), nn.GroupNorm(2, 4),
            nn.RMSNorm((2, 3)), nn.RMSNorm(4, elementwise_affine=False),
            nn.GroupNorm(2, 4, affine=False), nn.PReLU(), nn.PReLU(5),
            nn.Standardize(np.zeros((2, 3)), np.ones((2, 3))),
            nn.RNN(3, 4), nn.RNN(3, 4, num_layers=2, bidirectional=True, bias=False), nn.LSTM(3, 5, num_layers=2),
            nn.GRU(2, 3, bidirectional=True), nn.RNNCell(3, 4), nn.LSTMCell(3, 4, bias=False), nn.GRUCell(3, 4),
            nn.Embedding(7, 3), nn.LearnedPositionalEmbedding(5, 4), nn.SinusoidalPositionalEmbedding(5, 4),
            nn.MultiheadAttention(6, 2), nn.MultiheadAttention(6, 3, bias=False)]


@pytest.mark.parametrize("module", [nn.GPT(11, 8, n_layer=2, n_head=2, n_embd=8),
                                    nn.GPT(11, 8, n_layer=1, n_head=2, n_embd=8, bias=False, tie_weights=False),
                                    nn.GPTBlock(8, 2), nn.GPTBlock(8, 2, bias=False), nn.GPTMLP(8),
                                    nn.CausalSelfAttention(8, 2, bias=False)], ids=lambda m: type(m).__name__)
def test_the_declared_size_of_the_gpt_pieces_is_their_state(module):
    assert checkpoint.DECLARED[type(module).__name__](module.get_config()) == sum(
        v.size for v in module.state_dict().values())


def test_a_gpt_config_larger_than_its_arrays_is_refused(tmp_path):
    arch = {"type": "GPT", "config": {"vocab_size": 50000, "block_size": 1024, "n_layer": 48, "n_head": 16,
                                      "n_embd": 1600}}
    path = npz_with_header(tmp_path / "gpt.npz", json.dumps({**BASE, "architecture": arch}))
    assert refused(path, "GPT config .* declares 1,557,200,000 values, the file holds 0") < LIMIT


@pytest.mark.parametrize("bias", [True, False])
def test_the_declared_size_of_an_encoder_layer_is_its_state(bias):
    m = nn.TransformerEncoderLayer(8, 2, 12, bias=bias)
    assert checkpoint.DECLARED["TransformerEncoderLayer"](m.get_config()) == sum(
        v.size for v in m.state_dict().values())


@pytest.mark.parametrize("module", modules_with_state(), ids=repr)
def test_declared_shapes_are_those_of_a_real_instance(module):
    own = {**{k: p.shape for k, p in module._params.items() if p is not None},
           **{k: np.shape(getattr(module, k)) for k in module._buffers}}
    assert checkpoint.DECLARED[type(module).__name__](json.loads(json.dumps(module.get_config()))) == own


def test_every_built_in_class_with_state_has_a_declared_entry():
    """A class that makes parameters in its constructor needs an entry; those found
    by making each of the checkpoint's classes from the instances above and models."""
    found = {type(m).__name__ for m in modules_with_state()}
    for model in (models.lenet((1, 8, 8), 10), models.resnet((1, 8, 8), 10), nn.MLP([3, 4, 2])):
        found |= {type(m).__name__ for m in model.modules() if m._params or m._buffers}
    assert found <= set(checkpoint.DECLARED)


@pytest.mark.parametrize("sizes, batch_norm", [([3, 4, 2], False), ([3, 5, 4, 2], True), ([3, 2], False)])
def test_the_declared_size_of_an_mlp_is_its_state(sizes, batch_norm):
    m = nn.MLP(sizes, batch_norm=batch_norm, dropout=0.1 if len(sizes) > 2 else 0.0)
    assert checkpoint.DECLARED["MLP"](m.get_config()) == sum(v.size for v in m.state_dict().values())


def test_real_models_still_round_trip(tmp_path):
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), models.resnet((1, 8, 8), 10, rng=0)).eval()
    x = np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)
    for ext in ("npz", "safetensors"):
        loaded = checkpoint.load(checkpoint.save(model, tmp_path / f"r.{ext}"))
        np.testing.assert_array_equal(loaded(x), model(x))


# -- safetensors ------------------------------------------------------------------------------

def trained_mlp():
    model = nn.Sequential(nn.Standardize(np.arange(4.0), np.ones(4)),
                          nn.MLP([4, 6, 3], batch_norm=True, rng=0))
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    model(x)                                   # moves the running statistics off their start
    return model.eval(), x


def test_safetensors_round_trip_is_bit_identical_with_meta(tmp_path):
    model, x = trained_mlp()
    path = checkpoint.save(model, tmp_path / "m.safetensors", meta={"classes": ["a", "b", "c"]})
    loaded, meta = checkpoint.load(path, return_meta=True)
    assert meta == {"classes": ["a", "b", "c"]}
    np.testing.assert_array_equal(loaded(x), model(x))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
        assert loaded.state_dict()[k].dtype == v.dtype


def test_the_safetensors_library_reads_the_tensors_and_the_architecture(tmp_path):
    st = pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    from safetensors.numpy import load_file
    model, _ = trained_mlp()
    path = checkpoint.save(model, tmp_path / "m.safetensors")
    tensors = load_file(path)
    state = model.state_dict()
    assert set(tensors) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(tensors[k], v)
        assert tensors[k].dtype == v.dtype and tensors[k].shape == v.shape
    with st.safe_open(path, "np") as f:
        header = json.loads(f.metadata()["handydl"])
    assert header["architecture"] == checkpoint.architecture(model)


def test_a_file_written_by_the_safetensors_library_loads(tmp_path):
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    from safetensors.numpy import save_file
    model, x = trained_mlp()
    header = {**BASE, "architecture": checkpoint.architecture(model)}
    save_file(dict(model.state_dict()), tmp_path / "lib.safetensors",
              metadata={"handydl": json.dumps(header)})
    np.testing.assert_array_equal(checkpoint.load(tmp_path / "lib.safetensors")(x), model(x))


def test_tied_weights_stay_tied_in_safetensors(tmp_path):
    a, b = nn.Linear(3, 3, rng=0), nn.Linear(3, 3, rng=1)
    b.weight = a.weight
    loaded = checkpoint.load(checkpoint.save(nn.Sequential(a, nn.Tanh(), b), tmp_path / "t.safetensors"))
    assert loaded[0].weight is loaded[2].weight


def safetensors_bytes(header, data=b""):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def handydl_meta(arch):
    return {"handydl": json.dumps({**BASE, "architecture": arch})}


LINEAR_BIG = {"type": "Linear", "config": {"in_features": 100000, "out_features": 100000}}


@pytest.mark.parametrize("raw, match", [
    (struct.pack("<Q", 1 << 62) + b"{}", "the header claims 4,611,686,018,427,387,904 bytes"),
    (b"\x05\x00", "shorter than a safetensors header length"),
    (safetensors_bytes({"__metadata__": handydl_meta(LINEAR_BIG),
                        "weight": {"dtype": "F64", "shape": [100000, 100000], "data_offsets": [0, 80000000000]}}),
     r"data_offsets \[0, 80000000000\] do not lie within the 0 data bytes"),
    (safetensors_bytes({"__metadata__": handydl_meta(LINEAR_BIG),
                        "weight": {"dtype": "F64", "shape": [100000, 100000], "data_offsets": [0, 8]}}, b"\0" * 8),
     r"shape \[100000, 100000\] of F64 needs 80,000,000,000 bytes, its offsets span 8"),
    (safetensors_bytes({"w": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
     "dtype 'O' is not one of"),
    (safetensors_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
     "overlaps or leaves a hole"),
    (safetensors_bytes({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
     "is not a list of integers >= 0"),
    (safetensors_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
     "not a handydl checkpoint \\(a safetensors file of 1 tensors without handydl's architecture"),
    (safetensors_bytes({"__metadata__": handydl_meta(LINEAR_BIG)}),
     r"declares weight of shape \(100000, 100000\); the file holds no such array"),
    (safetensors_bytes({"__metadata__": {"handydl": "[" * 900 + "]" * 900}}), "nested 900 deep"),
    (safetensors_bytes({"__metadata__": {"handydl": 3}}), "__metadata__ must map strings to strings"),
    (safetensors_bytes([1, 2]), "the header is a JSON list, not an object"),
])
def test_hostile_safetensors_files_are_refused_before_reading_data(tmp_path, capsys, raw, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    assert refused(path, match) < LIMIT
    predict_fails_in_one_line(path, tmp_path, capsys, "bad.safetensors: ")


def test_a_truncated_safetensors_checkpoint(tmp_path):
    model, _ = trained_mlp()
    path = checkpoint.save(model, tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:-10])
    refused(path, "corrupted or truncated checkpoint .*do not lie within the 362 data bytes")


def test_the_format_argument(tmp_path):
    model, x = trained_mlp()
    path = checkpoint.save(model, tmp_path / "m.bin", format="safetensors")
    assert path.read_bytes()[8:9] == b"{"
    np.testing.assert_array_equal(checkpoint.load(path)(x), model(x))
    with pytest.raises(ValueError, match="format='pickle' is not valid"):
        checkpoint.save(model, tmp_path / "p.bin", format="pickle")
    assert not (tmp_path / "p.bin").exists()


def test_train_writes_safetensors_and_predict_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "model.npz").write_bytes(b"an earlier run's model")
    assert cli.main(["train", "--dataset", "iris", "--epochs", "2", "--hidden", "8", "--no-progress",
                     "--format", "safetensors", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "history.csv", "history.json",
                                                     "model.safetensors"]
    from safetensors.numpy import load_file
    assert "1.0.weight" in load_file(out / "model.safetensors")
    model, meta = checkpoint.load(out / "model.safetensors", return_meta=True)
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(meta["feature_names"]) + "\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n")
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(out / "model.safetensors"), "--data", str(rows)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("prediction,p_") and len(lines) == 3


# -- nothing is ever unpickled ----------------------------------------------------------------

class Planted:
    """Unpickling this creates a file: the proof that a loader unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_an_object_array_is_refused_and_never_unpickled(tmp_path, capsys):
    target = tmp_path / "unpickled"
    model = nn.Linear(2, 2)
    header = {**BASE, "architecture": checkpoint.architecture(model)}
    arrays = {"state/weight": np.array([Planted(target)], dtype=object), "state/bias": np.zeros(2, np.float32),
              "__handydl__": np.array(json.dumps(header))}
    np.savez(tmp_path / "evil.npz", **arrays)              # np.savez pickles object arrays
    refused(tmp_path / "evil.npz", "array state/weight has dtype object; a checkpoint holds numbers only")
    predict_fails_in_one_line(tmp_path / "evil.npz", tmp_path, capsys, "numbers only")
    assert not target.exists()


def test_an_object_array_as_the_header_is_never_unpickled(tmp_path):
    target = tmp_path / "unpickled"
    np.savez(tmp_path / "evil.npz", __handydl__=np.array([Planted(target)], dtype=object))
    refused(tmp_path / "evil.npz", "has dtype object")
    assert not target.exists()


def test_no_code_path_can_unpickle():
    """Every np.load in the package says allow_pickle=False, and nothing imports pickle."""
    root = Path(checkpoint.__file__).parent
    calls = 0
    for source in root.rglob("*.py"):
        text = source.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), source
        assert "torch.load(" not in text, source
        for call in re.finditer(r"np\.load\(([^)]*)\)", text):
            calls += 1
            assert "allow_pickle=False" in call.group(1), f"{source}: np.load({call.group(1)})"
    assert calls >= 2                 # the checkpoint and the data readers
