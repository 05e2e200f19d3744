"""Data files are checked completely before any training: counts, shapes, label
range, finiteness, column names, encodings (issue 14).  Every message names
the file and, where there is one, the row and the column."""
from __future__ import annotations

import csv
import struct
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest

from handydl import data
from handydl.data import mnist


def idx_bytes(arr):
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def mnist_dir(tmp_path, **override):
    """Four small, valid IDX files (uncompressed), with some replaced by ``override``."""
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)).astype(np.uint8),
             "train-labels-idx1-ubyte": rng.integers(0, 10, 6).astype(np.uint8),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)).astype(np.uint8),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3).astype(np.uint8)}
    files.update({k.replace("_", "-"): v for k, v in override.items()})
    for name, arr in files.items():
        (tmp_path / name).write_bytes(idx_bytes(arr))
    return tmp_path


# -- MNIST / IDX -----------------------------------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ({"train_labels_idx1_ubyte": np.zeros(5, np.uint8)},
     "train-labels-idx1-ubyte: 5 labels, but train-images-idx3-ubyte has 6 images"),
    ({"t10k_images_idx3_ubyte": np.zeros((4, 28, 28), np.uint8)},
     "t10k-labels-idx1-ubyte: 3 labels, but t10k-images-idx3-ubyte has 4 images"),
    ({"train_labels_idx1_ubyte": np.zeros((6, 2), np.uint8)},
     r"train-labels-idx1-ubyte: expected integer labels of shape \(n,\); got uint8 of shape \(6, 2\)"),
    ({"train_images_idx3_ubyte": np.array(7, np.uint8)},
     r"train-images-idx3-ubyte: expected images of unsigned bytes with shape \(n, rows, cols\)"),
    ({"train_labels_idx1_ubyte": np.array(3, np.uint8)},
     r"train-labels-idx1-ubyte: expected integer labels of shape \(n,\); got uint8 of shape \(\)"),
    ({"train_images_idx3_ubyte": np.zeros((0, 28, 28), np.uint8),
      "train_labels_idx1_ubyte": np.zeros(0, np.uint8)}, r"n >= 1; got uint8 of shape \(0, 28, 28\)"),
    ({"t10k_labels_idx1_ubyte": np.array([1, 10, 2], np.uint8)},
     "t10k-labels-idx1-ubyte: label 10 at index 1 is not valid; expected 0 to 9"),
    ({"train_labels_idx1_ubyte": np.array([0, 1, 2, 3, 4, -1], np.int32)}, "label -1 at index 5"),
    ({"t10k_images_idx3_ubyte": np.zeros((3, 20, 20), np.uint8)},
     "t10k-images-idx3-ubyte: test images are 20x20, but the training images "
     r"\(train-images-idx3-ubyte\) are 28x28"),
    ({"train_images_idx3_ubyte": np.zeros((6, 28, 28), np.float32)},
     "expected images of unsigned bytes"),
])
def test_inconsistent_mnist_files_are_refused_naming_the_file(tmp_path, override, message):
    root = mnist_dir(tmp_path, **override)
    with pytest.raises(data.DataError, match=message):
        mnist.load_mnist(root)


def test_valid_mnist_files_still_load(tmp_path):
    d = mnist.load_mnist(mnist_dir(tmp_path))
    assert d.X_train.shape == (6, 784) and d.X_test.shape == (3, 784)


def test_an_idx_header_claiming_a_huge_shape_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.idx"
    path.write_bytes(bytes([0, 0, 0x08, 4]) + struct.pack(">IIII", *[0xFFFFFFFF] * 4))
    with pytest.raises(data.DataError, match="huge.idx: IDX data has 0 bytes, expected "
                                              "340282366604025813516997721482669850625"):
        mnist.read_idx(path)


def test_idx_errors_are_data_errors_and_still_value_errors(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(ValueError, match="bad.idx: corrupted gzip data") as info:
        mnist.read_idx(path)
    assert isinstance(info.value, data.DataError)


def test_cli_reports_bad_mnist_files_before_training(tmp_path):
    root = mnist_dir(tmp_path, t10k_images_idx3_ubyte=np.zeros((3, 20, 20), np.uint8))
    r = subprocess.run([sys.executable, "-m", "handydl", "train", "--dataset", "mnist", "--data-dir", str(root),
                        "--no-progress", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "test images are 20x20" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "epoch" not in r.stdout


# -- Dataset: the last line of defence for any source ------------------------------------------

def dataset(**override):
    rng = np.random.default_rng(0)
    fields = dict(name="toy", X_train=rng.standard_normal((8, 3)).astype(np.float32),
                  y_train=np.arange(8) % 2, X_test=rng.standard_normal((4, 3)).astype(np.float32),
                  y_test=np.arange(4) % 2, task="classification", classes=["a", "b"])
    fields.update(override)
    return data.Dataset(**fields)


@pytest.mark.parametrize("override,message", [
    (dict(X_test=np.zeros((4, 2), np.float32)), "toy: the test set has 2 features per row, the training set 3"),
    (dict(y_train=np.arange(7) % 2), r"toy: y_train has shape \(7,\); expected \(8,\)"),
    (dict(y_test=np.array([0, 1, 2, 0])), "toy: y_test has label 2 .row 3.; expected 0 to 1 for 2 classes"),
    (dict(X_train=np.zeros((0, 3), np.float32), y_train=np.zeros(0, int)), "at least one row"),
    (dict(X_train=np.zeros(8, np.float32)), "X_train is a float32 array of shape .8,.; expected a 2-D float"),
    (dict(X_train=np.full((8, 3), np.inf, np.float32)), r"X_train has a non-finite value inf \(row 1, feature 1\)"),
    (dict(task="regression", y_train=np.full(8, np.nan, np.float32), y_test=np.zeros(4, np.float32)),
     "finite float targets"),
    (dict(task="ranking"), "task='ranking' is not valid"),
])
def test_a_dataset_checks_itself_when_it_is_made(override, message):
    with pytest.raises(data.DataError, match=message):
        dataset(**override)


# -- CSV -------------------------------------------------------------------------------------

def write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


ROWS = "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))


@pytest.mark.parametrize("text,message", [
    ("a,a,y\n" + ROWS, r"column name 'a' appears twice in the header \(columns 1 and 2\)"),
    (" a ,a,y\n" + ROWS, r"column name 'a' appears twice"),
    (",a,y\n" + ROWS, r"column 1 of the header has no name"),
    ("a,b,y\n" + ROWS + "inf,1,0\n", r"column 'a' has a non-finite value \(row 21: inf\)"),
    ("a,b,y\n" + ROWS + "1,-inf,0\n", r"column 'b' has a non-finite value \(row 21: -inf\)"),
    ("a,b,y\n" + ROWS + "1e400,1,0\n", r"column 'a' has a non-finite value \(row 21: inf\)"),
    ("a,b,y\n" + ROWS + "1e39,1,0\n", r"column 'a' has a non-finite value \(row 21: 1e\+39\); expected finite "
                                      r"numbers of size below 3.4e\+38 \(float32\)"),
    ("a,b,y\n" + ROWS + "1,1,inf\n", r"target column 'y' has a non-finite value \(row 21: inf\)"),
    ("a,b,y\n", "no data rows"),
    ("a,b,y\n\n\n", "no data rows"),
    ("a,b,y\n1,2,0\n", r"1 data rows are too few: the 20% test split leaves 1 training and 0 test rows"),
])
def test_csv_problems_are_refused_naming_file_row_and_column(tmp_path, text, message):
    p = write(tmp_path, "bad.csv", text)
    with pytest.raises(data.DataError, match=message) as info:
        data.load_table(p, "y")
    assert str(p) in str(info.value)


def test_an_inf_target_is_refused_even_for_regression(tmp_path):
    p = write(tmp_path, "r.csv", "x,y\n" + "".join(f"{i},{i * 0.37}\n" for i in range(30)) + "3,1e400\n")
    with pytest.raises(data.DataError, match=r"target column 'y' has a non-finite value \(row 31: inf\)"):
        data.load_table(p, "y", task="regression")


def test_a_text_label_that_reads_inf_is_still_a_class(tmp_path):
    p = write(tmp_path, "t.csv", "x,y\n" + "".join(f"{i},{'inf' if i % 2 else 'cat'}\n" for i in range(20)))
    assert data.load_table(p, "y").classes == ["cat", "inf"]


def test_a_field_over_the_csv_limit_names_the_file(tmp_path):
    p = write(tmp_path, "wide.csv", "a,y\n" + "1" * (csv.field_size_limit() + 1) + ",0\n")
    with pytest.raises(data.DataError, match=r"wide.csv: line 2: a field is longer than 131,072 characters"):
        data.load_table(p, "y")


def test_a_file_that_is_not_utf8_names_the_file(tmp_path):
    p = write(tmp_path, "latin.csv", "café,y\n1,0\n", encoding="latin-1")
    with pytest.raises(data.DataError, match=r"latin.csv: not UTF-8 text \(byte 0xe9"):
        data.read_table(p)


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    p = write(tmp_path, "bom.csv", "\ufeffa,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    assert data.load_table(p, "y").feature_names == ["a"]


# -- .npz ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arrays,message", [
    (dict(X=np.ones((10, 2)) * (1 + 1j), label=np.arange(10) % 2),
     "array 'X' has dtype complex128; expected real numbers"),
    (dict(X=np.ones((10, 2)), label=np.array([b"a", b"b"] * 5)), "array 'label' has dtype |S1"),
    (dict(X=np.ones((10, 2)), X0=np.ones(10), label=np.arange(10) % 2),
     "two columns are named 'X0'"),
    (dict(X=np.zeros((0, 2)), label=np.zeros(0)), "no data rows"),
    (dict(X=np.full((10, 2), np.inf), label=np.arange(10) % 2), r"column 'X0' has a non-finite value \(row 1: inf\)"),
    ({}, "holds no arrays"),
])
def test_npz_problems_are_refused_naming_the_array(tmp_path, arrays, message):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    with pytest.raises(data.DataError, match=message) as info:
        data.load_table(p, "label")
    assert "d.npz" in str(info.value)


def test_npz_boolean_columns_read_as_zero_and_one(tmp_path):
    p = tmp_path / "b.npz"
    np.savez(p, X=np.arange(40.0).reshape(20, 2), flag=np.arange(20) % 2 == 0)
    d = data.load_table(p, "flag")
    assert d.classes == ["0", "1"]


# -- batches: BatchNorm never meets a batch of one row -----------------------------------------

def test_the_cli_loader_drops_a_last_batch_of_one_row_under_batch_norm():
    from handydl.cli import _train_loader
    X, y = np.zeros((11, 2), np.float32), np.zeros(11, np.int64)
    args = Namespace(batch_norm=True, batch_size=5, seed=0)
    assert [len(xb) for xb, _ in _train_loader(args, X, y)] == [5, 5]
    assert [len(xb) for xb, _ in _train_loader(Namespace(batch_norm=False, batch_size=5, seed=0), X, y)] \
        == [5, 5, 1]
    assert [len(xb) for xb, _ in _train_loader(Namespace(batch_norm=True, batch_size=4, seed=0), X, y)] \
        == [4, 4, 3]


def test_batch_norm_training_ends_an_epoch_whose_last_batch_has_one_row(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 2))
    p = write(tmp_path, "d.csv", "a,b,y\n" + "".join(f"{a:.4f},{b:.4f},{int(a > 0)}\n" for a, b in X))
    d = data.load_table(p, "y")                       # the CLI's splits, to size the last batch
    n_train = len(data.split(d.X_train, d.y_train, test_size=0.1, seed=0)[0])
    base = [sys.executable, "-m", "handydl", "train", "--data", str(p), "--target", "y",
            "--hidden", "4", "--batch-norm", "--epochs", "2", "--no-progress"]
    r = subprocess.run(base + ["--batch-size", "1", "--out", str(tmp_path / "o1")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--batch-norm needs batches of at least 2 rows" in r.stderr
    r = subprocess.run(base + ["--batch-size", str(n_train - 1), "--out", str(tmp_path / "o2")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{n_train} train /" in r.stdout and (tmp_path / "o2" / "model.npz").is_file()



def test_the_loader_refuses_0_dim_arrays_with_a_message():
    with pytest.raises(ValueError, match="DataLoader: X is a 0-d array"):
        data.DataLoader(np.float32(3.0))
    with pytest.raises(ValueError, match="DataLoader: y is a 0-d array"):
        data.DataLoader(np.zeros((3, 2)), np.int64(1))
