"""DataLoader, built-in datasets, the IDX reader and verified downloads, user tables."""
from __future__ import annotations

import gzip
import hashlib
import io
import struct

import numpy as np
import pytest

from handydl import data
from handydl.data import mnist


def test_loader_covers_every_row_once_per_epoch_and_is_seeded():
    X, y = np.arange(50.0).reshape(25, 2), np.arange(25)
    loader = data.DataLoader(X, y, batch_size=4, shuffle=True, seed=3)
    assert len(loader) == 7
    epoch1 = np.concatenate([yb for _, yb in loader])
    epoch2 = np.concatenate([yb for _, yb in loader])
    assert sorted(epoch1) == list(range(25)) and not np.array_equal(epoch1, epoch2)
    again = data.DataLoader(X, y, batch_size=4, shuffle=True, seed=3)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in again]), epoch1)
    for xb, yb in loader:                      # rows stay paired with their labels
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)


def test_loader_without_shuffle_yields_views_and_drop_last():
    X = np.arange(20.0).reshape(10, 2)
    batches = list(data.DataLoader(X, batch_size=4))
    assert [len(b) for b, _ in batches] == [4, 4, 2]
    assert all(np.shares_memory(b, X) for b, _ in batches)
    assert [len(b) for b, _ in data.DataLoader(X, batch_size=4, drop_last=True)] == [4, 4]


def test_loader_bad_arguments():
    with pytest.raises(ValueError, match="X has 3 rows but y has 2"):
        data.DataLoader(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="batch_size=0"):
        data.DataLoader(np.zeros((3, 2)), batch_size=0)


def test_digits_is_embedded_float32_and_split_by_seed():
    d = data.digits()
    assert d.X_train.dtype == np.float32 and d.X_train.shape[1] == 64
    assert len(d.X_train) + len(d.X_test) == 1797
    assert 0 <= d.X_train.min() and d.X_train.max() <= 1
    np.testing.assert_array_equal(data.digits().y_test, d.y_test)
    assert not np.array_equal(data.digits(seed=1).y_test, d.y_test)
    # stratified: every class in the test split in proportion
    counts = np.bincount(d.y_test)
    assert counts.min() >= 30


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "wine", "moons", "spirals", "regression"])
def test_builtin_datasets_load(name):
    d = data.load_dataset(name)
    assert d.X_train.dtype == np.float32 and len(d.X_test) > 0
    assert d.task == ("regression" if name == "regression" else "classification")


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*digits.*mnist"):
        data.load_dataset("cifar")


# -- IDX files and downloads ---------------------------------------------------------------

def idx_bytes(arr):
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_raw_and_gzip(tmp_path, compress):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    np.testing.assert_array_equal(mnist.read_idx(path), arr)
    ints = np.array([1, -2, 300], dtype=np.int32)
    path.write_bytes(idx_bytes(ints))
    np.testing.assert_array_equal(mnist.read_idx(path), ints)


def test_read_idx_rejects_bad_files(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad.idx: not an IDX file"):
        mnist.read_idx(path)
    path.write_bytes(idx_bytes(np.zeros((4, 4), np.uint8))[:-3])
    with pytest.raises(ValueError, match="IDX data has 13 bytes, expected 16"):
        mnist.read_idx(path)


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def test_download_verifies_sha256_and_leaves_nothing_on_failure(tmp_path):
    payload = b"hello idx"
    good = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache" / "file.gz"
    mnist.download("http://example.invalid/file.gz", dest, good, opener=lambda url: FakeResponse(payload))
    assert dest.read_bytes() == payload
    dest.unlink()
    with pytest.raises(ValueError, match="failed verification"):
        mnist.download("http://example.invalid/file.gz", dest, "0" * 64,
                       opener=lambda url: FakeResponse(payload))
    assert list((tmp_path / "cache").iterdir()) == []        # no partial file

    class Broken(FakeResponse):
        def read(self, n=-1):
            raise ConnectionError("connection reset")
    with pytest.raises(ConnectionError):
        mnist.download("http://example.invalid/file.gz", dest, good, opener=lambda url: Broken(payload))
    assert list((tmp_path / "cache").iterdir()) == []


def test_load_mnist_from_a_directory_of_small_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)).astype(np.uint8),
             "train-labels-idx1-ubyte": rng.integers(0, 10, 6).astype(np.uint8),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)).astype(np.uint8),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3).astype(np.uint8)}
    for name, arr in files.items():                  # uncompressed copies are read as they are
        (tmp_path / name).write_bytes(idx_bytes(arr))
    d = mnist.load_mnist(tmp_path)
    assert d.X_train.shape == (6, 784) and d.X_train.dtype == np.float32
    np.testing.assert_allclose(d.X_test[1], files["t10k-images-idx3-ubyte"][1].reshape(-1) / 255, rtol=1e-6)
    np.testing.assert_array_equal(d.y_train, files["train-labels-idx1-ubyte"])
    with pytest.raises(FileNotFoundError, match="download=True"):
        mnist.load_mnist(tmp_path / "empty")


def test_load_mnist_rejects_a_gz_file_with_the_wrong_hash(tmp_path):
    for name in mnist.FILES:
        (tmp_path / name).write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(ValueError, match="SHA-256 does not match"):
        mnist.load_mnist(tmp_path)


# -- user tables ------------------------------------------------------------------------------

def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_classification_with_text_labels(tmp_path):
    rows = "\n".join(f"{i % 7},{i * 0.5},{'cat' if i % 2 else 'dog'}" for i in range(40))
    p = write(tmp_path, "pets.csv", "a,b,label\n" + rows + "\n")
    d = data.load_table(p, "label")
    assert d.task == "classification" and d.classes == ["cat", "dog"]
    assert d.feature_names == ["a", "b"] and d.X_train.dtype == np.float32
    assert len(d.X_train) + len(d.X_test) == 40


def test_csv_regression_inferred_and_overridable(tmp_path):
    rows = "\n".join(f"{i},{i * 0.37:.3f}" for i in range(30))
    p = write(tmp_path, "r.csv", "x,y\n" + rows + "\n")
    assert data.load_table(p, "y").task == "regression"
    assert data.load_table(p, "x", task="regression").task == "regression"


@pytest.mark.parametrize("text,target,message", [
    ("a,b\n1,2\n", "label", r"no target column 'label'; columns are: a, b"),
    ("a,color,label\n1,red,0\n2,blue,1\n", "label", r"feature column 'color' is not numeric \(row 1: 'red'\)"),
    ("a,b,label\n1,2,0\n3,,1\n", "label", r"column 'b' has a missing or NaN value \(row 2\)"),
    ("a,b,label\n1,nan,0\n", "label", r"column 'b' has a missing or NaN value \(row 1\)"),
    ("a,label\n1,0\n2\n", "label", r"row 2 has 1 fields, the header has 2"),
])
def test_csv_problems_name_the_file_and_column(tmp_path, text, target, message):
    p = write(tmp_path, "bad.csv", text)
    with pytest.raises(data.DataError, match=message) as info:
        data.load_table(p, target)
    assert "bad.csv" in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(data.DataError, match="nope.csv: no such data file"):
        data.load_table(tmp_path / "nope.csv", "y")


def test_npz_columns_and_matrix(tmp_path):
    p = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(p, X=rng.standard_normal((20, 3)), label=rng.integers(0, 2, 20))
    d = data.load_table(p, "label")
    assert d.feature_names == ["X0", "X1", "X2"] and d.task == "classification"
