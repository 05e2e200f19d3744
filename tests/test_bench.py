"""The benchmark's own logic: ratios, the matmul floor, PASS/FAIL, and a tiny
handydl worker run (PyTorch and JAX are not needed for these)."""
from __future__ import annotations

import json
import math
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


def test_mlp_flops_count_the_products_of_a_training_step():
    # 3-2-1, one sample: forward 3*2 + 2*1 multiply-adds, dL/dW 3*2 + 2*1, dL/dx of the
    # second layer 2*1 (the first layer's input is data): 18 multiply-adds, 36 flops
    assert bench.mlp_flops({"sizes": [3, 2, 1], "n": 1}) == 36
    assert bench.mlp_flops({"sizes": [3, 2, 1], "n": 10}) == 360


def test_a_target_beyond_the_products_or_the_machine_says_so():
    params = {"sizes": [784, 256, 10], "n": 60000}
    flops = bench.mlp_flops(params)
    results = {"mlp_epoch_b512": {"kind": "mlp", "params": params,
                                  "handydl": {**fake(0.35, floor=0.3), "sgemm_gflops": [150.0, 180.0]},
                                  "torch": fake(0.45), "jax": fake(0.30)}}
    rows, checks = bench.report(results, ("handydl", "torch", "jax"))
    row = rows[0]
    assert row["sgemm_gflops"] == 180.0                        # the best rate of the run
    assert row["jax"]["gflops"] == pytest.approx(flops / 0.30 / 1e9)
    assert row["floor_gflops"] == pytest.approx(flops / 0.3 / 1e9)          # ~164 GFLOP/s
    c = next(c for c in checks if "fastest" in c["target"])
    assert c["needs_gflops"] == pytest.approx(flops / (0.8 * 0.30) / 1e9)    # ~205 GFLOP/s
    assert c["beyond_machine"] and c["beyond_floor"] and not c["pass"]
    assert "faster than the best sgemm" in bench.check_line(c)
    results["mlp_epoch_b512"]["jax"] = fake(0.36)              # needs ~170 GFLOP/s
    c = next(c for c in bench.report(results, ("handydl", "torch", "jax"))[1] if "fastest" in c["target"])
    assert c["beyond_floor"] and not c["beyond_machine"]
    assert "faster than the step's products alone" in bench.check_line(c)
    results["mlp_epoch_b512"]["jax"] = fake(0.40)              # needs ~154 GFLOP/s: reachable
    c = next(c for c in bench.report(results, ("handydl", "torch", "jax"))[1] if "fastest" in c["target"])
    assert not c["beyond_machine"] and not c["beyond_floor"] and "faster than" not in bench.check_line(c)


def test_handydl_worker_runs_the_public_api_and_measures_the_floor():
    params = dict(sizes=[784, 32, 10], activation="relu", optimizer="sgd", n=512, batch=128, repeats=2)
    r = subprocess.run([sys.executable, "-m", "bench.worker", "handydl", json.dumps([["mlp", params]])],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    out, = json.loads(r.stdout)
    assert len(out["samples"]) == 2 and len(out["floor"]) == 2 and out["loss"] > 0
    assert len(out["sgemm_gflops"]) == 3 and min(out["sgemm_gflops"]) > 0


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


GPT_TINY = dict(vocab=11, block=8, layers=1, heads=2, d=16, batch=2, repeats=2)


def test_the_gpt_step_is_held_to_pytorch_eager():
    results = {"gpt_step_l4_d128_h4_t64_b16": {"kind": "gpt", "handydl": fake(0.9), "torch": fake(1.0)}}
    rows, checks = bench.report(results, ("handydl", "torch", "jax"))
    assert rows[0]["vs_torch"] == pytest.approx(0.9)
    assert [(c["target"], c["pass"]) for c in checks] == [("gpt_step_l4_d128_h4_t64_b16: handydl / torch <= 1.0",
                                                            True)]
    assert ("gpt_step_l4_d128_h4_t64_b16", "gpt") in [(name, kind) for name, kind, _ in bench.workloads(True)]


def test_the_gpt_step_workers_train_one_model():
    pytest.importorskip("torch")
    outs = {}
    for fw in ("handydl", "torch"):
        r = subprocess.run([sys.executable, "-m", "bench.worker", fw, json.dumps([["gpt", GPT_TINY]])],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr
        outs[fw], = json.loads(r.stdout)
        assert len(outs[fw]["samples"]) == 2 and min(outs[fw]["samples"]) > 0
    # PyTorch's model starts from handydl's weights: the same loss before the first step
    assert outs["torch"]["first_loss"] == pytest.approx(outs["handydl"]["first_loss"], rel=1e-5)
    assert outs["handydl"]["first_loss"] == pytest.approx(math.log(GPT_TINY["vocab"]), rel=0.05)
