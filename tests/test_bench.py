"""The benchmark's own logic: ratios, the matmul floor, PASS/FAIL, and a tiny
handydl worker run (PyTorch and JAX are not needed for these)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
bench = pytest.importorskip("bench.__main__")


def fake(median, floor=None):
    out = {"samples": [median * 0.9, median, median * 1.2], "peak_mb": 1.0}
    if floor is not None:
        out["floor"] = [floor]
    return out


def test_ratios_floor_and_targets():
    results = {
        "mlp_epoch_b128": {"kind": "mlp", "handydl": fake(0.7, floor=0.5), "torch": fake(1.0), "jax": fake(2.0)},
        "mlp_epoch_b512": {"kind": "mlp", "handydl": fake(0.9, floor=0.6), "torch": fake(1.0), "jax": fake(1.0)},
        "activations": {"kind": "activation", "handydl": {"relu": fake(2.0)}, "torch": {"relu": fake(1.0)},
                        "jax": {"relu": fake(1.0)}},
    }
    rows, checks = bench.report(results, ("handydl", "torch", "jax"))
    row = next(r for r in rows if r["name"] == "mlp_epoch_b128")
    assert row["vs_torch"] == pytest.approx(0.7) and row["of_floor"] == pytest.approx(1.4)
    verdict = {c["target"]: c["pass"] for c in checks}
    assert verdict["mlp_epoch_b128: handydl / fastest of torch, jax <= 0.8"] is True       # 0.7
    assert verdict["mlp_epoch_b512: handydl / fastest of torch, jax <= 0.8"] is False      # 0.9
    assert verdict["mlp_epoch_b512: handydl / its matmul floor <= 1.25"] is False          # 1.5
    assert verdict["activation relu: handydl / torch <= 1.0"] is False


def test_handydl_worker_runs_the_public_api_and_measures_the_floor():
    params = dict(sizes=[784, 32, 10], activation="relu", optimizer="sgd", n=512, batch=128, repeats=2)
    r = subprocess.run([sys.executable, "-m", "bench.worker", "handydl", "mlp", json.dumps(params)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["samples"]) == 2 and len(out["floor"]) == 2 and out["loss"] > 0


def test_micro_times_both_axpy_paths_and_restores_the_threshold(capsys):
    micro = pytest.importorskip("bench.micro")
    from handydl.optim import optimizer
    if optimizer._AXPY is None:
        pytest.skip("NumPy's OpenBLAS is not loadable here")
    before = optimizer.AXPY_MIN
    micro.axpy_blas_vs_numpy(calls=10)
    assert optimizer.AXPY_MIN == before
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"axpy of {n:>5} float32" for n in (10, before)]


def test_micro_on_off_times_both_settings_and_ends_switched_on():
    micro = pytest.importorskip("bench.micro")
    calls = []
    ms = micro.on_off(lambda: None, rounds=2, switch=calls.append)
    assert set(ms) == {True, False} and all(v >= 0 for v in ms.values())
    assert calls == [True, False, True, False, True]     # alternating, and left on
