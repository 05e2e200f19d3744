"""The handydl command, run as a user runs it: a subprocess, its output and exit status."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from handydl import nn, ops


def run(*args, timeout=900):      # a generous bound against hangs, not a speed test
    return subprocess.run([sys.executable, "-m", "handydl", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_check_gradchecks_every_registered_op():
    r = run("check")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    for name in ops.names():
        assert any(line.startswith(name) and line.split()[-1] != "FAILED" for line in lines), name
    assert "FAILED" not in r.stdout
    assert "ReLU'(0) = 0, as PyTorch" in r.stdout
    assert "gradient checks passed" in lines[-1]
    for name in nn.EXAMPLES:            # the composite patterns, numeric and against the tape
        assert any(line.startswith(name) and line.split()[-1] == "ok" for line in lines), name
    assert f"{len(nn.EXAMPLES)} module patterns" in lines[-1]


def test_check_unknown_op_lists_valid_ones_and_exits_2():
    r = run("check", "--ops", "relu,swish2")
    assert r.returncode == 2
    assert "unknown op 'swish2'" in r.stderr and "sigmoid" in r.stderr
    assert "Traceback" not in r.stderr


def test_import_pulls_no_heavy_dependency():
    """What keeps `import handydl` fast: no optional package is imported with it (each is
    imported inside the function that needs it).  No wall-clock bound: these machines are
    shared, and an import timed under load said nothing about the code."""
    heavy = ("torch", "jax", "sympy", "matplotlib", "sklearn", "tqdm", "numba", "onnx",
             "onnxruntime", "safetensors", "mpmath", "hypothesis", "lark", "pylatexenc")
    code = f"import sys, handydl, handydl.nn, handydl.check; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


# -- handydl train / predict ----------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    import time
    t = time.perf_counter()
    r = run("train", "--no-progress", "--out", str(out))
    return r, out, time.perf_counter() - t


def test_default_train_reaches_97_percent(default_run):
    r, out, _ = default_run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gradient check (float64" in r.stdout and "-> ok" in r.stdout
    hist = json.loads((out / "history.json").read_text())
    assert hist["test"]["acc"] >= 0.97
    assert f"test accuracy: {hist['test']['acc']:.2%}" in r.stdout
    assert (out / "history.csv").read_text().startswith("epoch,")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(hist["history"]["epoch"]) == 60


def test_predict_from_the_saved_model(default_run, tmp_path):
    _, out, _ = default_run
    from handydl import checkpoint, data
    model, meta = checkpoint.load(out / "model.npz", return_meta=True)
    d = data.digits()
    rows = [",".join(meta["feature_names"])] + [",".join(f"{v:.6g}" for v in x) for x in d.X_test[:20]]
    (tmp_path / "x.csv").write_text("\n".join(rows) + "\n")
    r = run("predict", "--model", str(out / "model.npz"), "--data", str(tmp_path / "x.csv"),
            "--out", str(tmp_path / "pred.csv"))
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "pred.csv").read_text().splitlines()
    assert lines[0].split(",")[:2] == ["prediction", "p_0"] and len(lines) == 21
    predicted = [int(line.split(",")[0]) for line in lines[1:]]
    assert predicted == list(model(d.X_test[:20]).argmax(axis=1))


def test_train_on_a_user_csv(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 3))
    label = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    rows = ["f1,f2,f3,label"] + [f"{a:.4f},{b:.4f},{c:.4f},{lab}" for (a, b, c), lab in zip(X, label)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    r = run("train", "--data", str(tmp_path / "d.csv"), "--target", "label", "--epochs", "5",
            "--hidden", "8", "--no-progress", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "classification" in r.stdout and "test accuracy" in r.stdout


def test_train_threads_runs_the_blas_on_that_many_threads_during_fit(tmp_path, monkeypatch):
    """--threads N: NumPy's BLAS runs N threads while the model trains (what
    threadpoolctl reports inside fit), and as before after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from handydl import cli, train
    blas = lambda: {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}  # noqa: E731
    before, seen, real = blas(), [], train.fit

    def fit(*args, **kwargs):
        seen.append(blas())
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "fit", fit)
    assert cli.main(["train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    assert seen == [{1}] and blas() == before


@pytest.mark.parametrize("args,message", [
    (["--dataset", "cifar"], "unknown dataset 'cifar'; valid datasets: digits"),
    (["--activation", "swish2"], "unknown activation 'swish2'; valid activations: sigmoid"),
    (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'; valid optimizers: sgd, adam, adamw"),
    (["--data", "missing.csv", "--target", "y"], "missing.csv: no such data file"),
    (["--data", "{tmp}/d.csv", "--target", "nope"], "d.csv: no target column 'nope'; columns are: a, b, y"),
    (["--data", "{tmp}/text.csv", "--target", "y"], "text.csv: feature column 'b' is not numeric (row 1: 'x')"),
    (["--data", "{tmp}/nan.csv", "--target", "y"], "nan.csv: column 'a' has a missing or NaN value (row 2)"),
    (["--out", "{tmp}/d.csv/sub"], "is not writable"),       # a file in the way: fails even as root
    (["--lr", "-1"], "--lr must be > 0"),
    (["--hidden", "12,x"], "--hidden expects sizes like 128,64"),
    (["--dataset", "mnist"], "pass download=True (or --download)"),
    (["--threads", "0"], "--threads must be > 0"),
])
def test_train_errors_are_reported_before_training(tmp_path, args, message):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,4,1\n")
    (tmp_path / "text.csv").write_text("a,b,y\n1,x,0\n3,4,1\n")
    (tmp_path / "nan.csv").write_text("a,b,y\n1,2,0\nnan,4,1\n")
    env_home = {"HANDYDL_CACHE": str(tmp_path / "cache")}
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out_args = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    r = subprocess.run([sys.executable, "-m", "handydl", "train", "--no-progress", *out_args, *args],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **env_home})
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert "epoch" not in r.stdout                   # nothing was trained


def test_train_reads_mnist_idx_files_from_a_directory(tmp_path):
    import struct
    rng = np.random.default_rng(0)

    def idx(arr):
        header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
        return header + arr.astype(np.uint8).tobytes()
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (60, 28, 28)),
             "train-labels-idx1-ubyte": rng.integers(0, 10, 60),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, 20)}
    for name, arr in files.items():
        (tmp_path / name).write_bytes(idx(arr))
    r = run("train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1", "--hidden", "8",
            "--no-progress", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "mnist: classification" in r.stdout and "/ 20 test samples, 784 features" in r.stdout


def test_predict_with_a_corrupted_model_exits_2(tmp_path):
    (tmp_path / "m.npz").write_bytes(b"garbage")
    (tmp_path / "x.csv").write_text("a\n1\n")
    r = run("predict", "--model", str(tmp_path / "m.npz"), "--data", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and "m.npz: corrupted or truncated checkpoint" in r.stderr
