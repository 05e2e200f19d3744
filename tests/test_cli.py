"""The handydl command, run as a user runs it: a subprocess, its output and exit status."""
from __future__ import annotations

import subprocess
import sys

from handydl import ops


def run(*args, timeout=300):
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


def test_check_unknown_op_lists_valid_ones_and_exits_2():
    r = run("check", "--ops", "relu,swish2")
    assert r.returncode == 2
    assert "unknown op 'swish2'" in r.stderr and "sigmoid" in r.stderr
    assert "Traceback" not in r.stderr


def test_import_is_fast_and_pulls_no_heavy_dependency():
    code = ("import time, sys; t = time.perf_counter(); import handydl; "
            "dt = time.perf_counter() - t; "
            "heavy = [m for m in ('torch', 'jax', 'sympy', 'matplotlib', 'sklearn', 'tqdm') if m in sys.modules]; "
            "print(dt, heavy)")
    best = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.split()[0]) for _ in range(3))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out
    assert best < 0.5, f"import handydl took {best:.2f} s"
