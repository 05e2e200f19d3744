"""The benchmark's own logic: ratios, the matmul floor, PASS/FAIL, and a tiny
handydl worker run (PyTorch and JAX are not needed for these)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
bench = pytest.importorskip("bench.__main__")
worker = pytest.importorskip("bench.worker")


def fake(median, floor=None, **extra):
    out = {"samples": [median * 0.9, median, median * 1.2], "peak_mb": 1.0, **extra}
    if floor is not None:
        out["floor"] = [floor]
    return out


MLP = {"sizes": [784, 256, 10], "n": 60000, "batch": 128}


def test_ratios_and_targets():
    results = {
        "mlp_epoch_b128": {"kind": "mlp", "params": MLP, "handydl": fake(0.7, floor=0.5),
                           "torch": fake(1.0), "jax": fake(2.0)},
        "mlp_epoch_b512": {"kind": "mlp", "params": MLP, "handydl": fake(0.95, floor=0.6),
                           "torch": fake(1.0), "jax": fake(1.0)},
        "activations": {"kind": "activation", "handydl": {"relu": fake(2.0)}, "torch": {"relu": fake(1.0)},
                        "jax": {"relu": fake(1.0)}},
    }
    rows, checks = bench.report(results, ("handydl", "torch", "jax"))
    row = next(r for r in rows if r["name"] == "mlp_epoch_b128")
    assert row["vs_torch"] == pytest.approx(0.7) and row["vs_jax"] == pytest.approx(0.35)
    verdict = {c["target"]: c["pass"] for c in checks}
    assert verdict["mlp_epoch_b128: handydl / fastest of torch, jax (torch) <= 0.9"] is True       # 0.7
    assert verdict["mlp_epoch_b512: handydl / fastest of torch, jax (torch) <= 0.9"] is False      # 0.95
    assert verdict["activation relu: handydl / torch <= 1.0"] is False
    assert not any("sgemm" in t for t in verdict)     # no worker measured an sgemm rate: no limit


def test_mlp_flops_count_the_products_of_a_training_step():
    # 3-2-1, one sample: forward 3*2 + 2*1 multiply-adds, dL/dW 3*2 + 2*1, dL/dx of the
    # second layer 2*1 (the first layer's input is data): 18 multiply-adds, 36 flops
    assert bench.mlp_flops({"sizes": [3, 2, 1], "n": 1}) == 36
    assert bench.mlp_flops({"sizes": [3, 2, 1], "n": 10}) == 360


def test_every_framework_is_measured_against_the_machines_best_sgemm():
    flops = bench.mlp_flops(MLP)
    results = {"mlp_epoch_b512": {"kind": "mlp", "params": MLP,
                                  "handydl": {**fake(0.35, floor=0.3), "sgemm_gflops": [150.0, 180.0]},
                                  "torch": fake(0.45, sgemm_gflops=[170.0]),
                                  "jax": fake(0.30, sgemm_gflops=[200.0, 190.0])}}
    row = bench.report(results, ("handydl", "torch", "jax"))[0][0]
    assert (row["sgemm_gflops"], row["sgemm_by"]) == (200.0, "jax")        # the best rate of the run, and whose
    limit = flops / 200e9
    assert row["limit"] == pytest.approx(limit)
    for fw, t in (("handydl", 0.35), ("torch", 0.45), ("jax", 0.30)):
        assert row[fw]["of_limit"] == pytest.approx(t / limit)
    assert row["phases"]["products"] == 0.3
    c = next(c for c in bench.report(results, ("handydl", "torch", "jax"))[1] if "sgemm" in c["target"])
    assert c["value"] == pytest.approx(0.35 / limit) and c["pass"] is (0.35 / limit <= 1.25)


def phased(total, products, **phases):
    return {**fake(total, floor=products), "sgemm_gflops": [400.0], "phases": {k: [v] for k, v in phases.items()}}


def test_a_missed_target_says_which_phase_must_shrink_and_by_how_much():
    step = {"activation": 0.1, "model forward + backward": 0.7, "loss": 0.05, "optimizer": 0.05,
            "zero_grad and data loader": 0.0, "optimizer alone": 0.02}
    results = {"mlp_epoch_b128": {"kind": "mlp", "params": MLP, "handydl": phased(1.0, 0.5, **step),
                                  "torch": fake(1.0), "jax": fake(1.0)}}
    rows, checks = bench.report(results, ("handydl", "torch", "jax"))
    ph = rows[0]["phases"]
    assert ph[bench.MODEL_REST] == pytest.approx(0.7 - 0.5 - 0.1)          # the model beyond its pieces
    assert ph["optimizer (in the step)"] == 0.05 and rows[0]["phases_alone"] == {"optimizer alone": 0.02}
    assert ph[bench.REST] == pytest.approx(1.0 - 0.8)                      # the epoch beyond the step's calls
    assert sum(ph.values()) == pytest.approx(1.0)
    c, = (c for c in checks if "fastest" in c["target"])
    assert not c["pass"] and c["excess"] == pytest.approx(0.1)          # 1.0 against 0.9 x 1.0
    line = bench.check_line(c)
    assert "must lose 100 ms" in line and f"{bench.REST} would have to shrink by 50%" in line
    # more than the largest phase, less than all of them together
    results["mlp_epoch_b128"]["jax"] = fake(0.6)    # allowed 0.54 s: lose 0.46 of the 0.5 s besides products
    c, = (c for c in bench.report(results, ("handydl", "torch", "jax"))[1] if "fastest" in c["target"])
    assert "the phases besides the products would have to shrink by 92% together" in bench.check_line(c)
    # more than every phase but the products: only faster products would do
    results["mlp_epoch_b128"]["jax"] = fake(0.5)    # allowed 0.45 s, less than the products' 0.5 s
    c, = (c for c in bench.report(results, ("handydl", "torch", "jax"))[1] if "fastest" in c["target"])
    need = bench.mlp_flops(MLP) / 0.45 / 1e9
    line = bench.check_line(c)
    assert f"the products would have to run at {need:.0f} GFLOP/s" in line
    assert f"they ran at {bench.mlp_flops(MLP) / 0.5 / 1e9:.0f}" in line and "best sgemm 400" in line


def loaded(quiet, load):
    """A worker's result under load: three pairs of quiet and loaded epochs, the
    machine drifting (2x slower in the third), so that the median of the pairs'
    ratios (load / quiet) differs from the ratio of the medians."""
    q, lo = [quiet, quiet, 2 * quiet], [load, 1.1 * load, 2 * 1.1 * load]
    return {"samples": lo, "quiet": q, "slowdown": [a / b for a, b in zip(lo, q)], "peak_mb": 0.0}


def test_the_slowdown_under_load_is_held_to_the_best_peers():
    results = {"mlp_epoch_b128": {"kind": "mlp", "params": MLP, "handydl": fake(0.9), "torch": fake(1.0),
                                  "jax": fake(1.0)},
               "mlp_epoch_b128_under_load": {"kind": "mlp", "params": MLP, "handydl": loaded(1.0, 1.5),
                                             "torch": loaded(1.0, 1.4), "jax": loaded(0.5, 1.0)},
               "mlp_epoch_b128_under_load_1_blas_thread": {"kind": "mlp", "params": MLP,
                                                           "handydl": loaded(1.25, 1.3)}}
    rows, checks = bench.report(results, ("handydl", "torch", "jax"))
    row = next(r for r in rows if r["name"].endswith("_under_load"))
    # each framework's slowdown is its own pairs', not against the quiet workload's epoch
    # the median of the pairs (1.1 x load / quiet), not median(loaded) / median(quiet) (1.65 / 1.0)
    assert row["handydl"]["slowdown"] == pytest.approx(1.65) and row["jax"]["slowdown"] == pytest.approx(2.2)
    assert row["handydl"]["quiet"] == pytest.approx(1.0) and row["handydl"]["median"] == pytest.approx(1.65)
    c, = (c for c in checks if "slowdown" in c["target"])
    assert c["value"] == pytest.approx(1.5 / 1.4) and not c["pass"] and "(torch, 1.54x)" in c["target"]
    assert c["one_blas_thread"] == pytest.approx(1.1 * 1.3 / 1.25)
    assert c["one_thread_floor"] == pytest.approx(1.1 * 1.3) and c["one_thread_quiet"] == pytest.approx(1.25)
    line = bench.check_line(c)
    assert "slows 1.14x" in line and "1.43x the default's quiet one" in line and "quiet one 1.25x" in line
    assert any(job[2].get("load") for job in bench.workloads(True))


def test_under_load_alternates_quiet_and_loaded_calls_beside_a_busy_core(monkeypatch):
    """The worker's load: a process that runs only during the loaded calls, and is gone after."""
    started, states = [], []
    real = worker.subprocess.Popen

    def popen(cmd, *args, **kwargs):
        p = real(cmd, *args, **kwargs)
        started.append(p)
        return p
    monkeypatch.setattr(worker.subprocess, "Popen", popen)

    def state():          # R (running) or T (stopped) of the load process, as the kernel tells
        with open(f"/proc/{started[0].pid}/stat") as f:
            states.append(f.read().rsplit(")", 1)[1].split()[0])
        time.sleep(0.05)
    out = worker.under_load(state, pairs=3)
    assert len(started) == 1 and started[0].poll() is not None    # started, and stopped after
    assert len(out["samples"]) == len(out["quiet"]) == len(out["slowdown"]) == 3
    assert out["slowdown"] == pytest.approx([a / b for a, b in zip(out["samples"], out["quiet"])])
    # the warm-up call quiet, then strictly quiet, loaded, quiet, loaded, ...
    assert ["T" if s == "T" else "busy" for s in states] == ["T", "T", "busy", "T", "busy", "T", "busy"]


def test_handydl_worker_runs_the_readme_loop_and_measures_its_phases():
    params = dict(sizes=[784, 32, 10], activation="relu", optimizer="sgd", n=512, batch=128, repeats=2, fit=True)
    r = subprocess.run([sys.executable, "-m", "bench.worker", "handydl", json.dumps([["mlp", params]])],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    out, = json.loads(r.stdout)
    assert len(out["samples"]) == 2 and len(out["floor"]) == 2 and out["loss"] > 0 and len(out["fit"]) == 2
    assert len(out["sgemm_gflops"]) == 3 and min(out["sgemm_gflops"]) > 0
    assert set(out["phases"]) == {"model forward + backward", "loss", "optimizer", "zero_grad and data loader",
                                  "bias adds and sums", "activation", "Python and modules", "loss alone",
                                  "optimizer alone"}
    assert all(len(v) == 2 and min(v) > 0 for v in out["phases"].values())


def test_micro_times_both_axpy_paths(capsys):
    micro = pytest.importorskip("bench.micro")
    pytest.importorskip("numba")
    micro.axpy_fused_vs_numpy(calls=10, sizes=(10, 300))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"axpy of {n:>6} float32" for n in (10, 300)]


def test_micro_times_both_adam_paths(capsys):
    micro = pytest.importorskip("bench.micro")
    pytest.importorskip("numba")
    micro.adam_fused_vs_numpy(sizes=(8, 4), steps=2)
    line, = capsys.readouterr().out.splitlines()
    assert line.startswith("Adam step, 36 float32 parameters: compiled") and "NumPy" in line


def test_micro_times_the_optimizer_in_the_step_and_again(capsys):
    micro = pytest.importorskip("bench.micro")
    pytest.importorskip("threadpoolctl")
    micro.optimizer_in_step_vs_again(n=256, batches=(64,), epochs=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("MLP batch 64, BLAS on ") and "again at once" in line
                         for line in lines)


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


def test_micro_times_a_loop_alone_and_beside_a_spinning_core(capsys):
    import os
    micro = pytest.importorskip("bench.micro")
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and two CPUs")
    before = os.sched_getaffinity(0)
    alone, beside = micro.loop_beside_a_spinning_core(rounds=1, size=1000, passes=10)
    assert alone > 0 and beside > 0 and os.sched_getaffinity(0) == before   # the pinning is undone
    assert "spinning" in capsys.readouterr().out


def test_the_docs_tables_are_the_committed_runs():
    """Every table after a '<!-- bench.table: NAME -->' line of the README and
    docs/performance.md is what bench.table makes of docs/bench/bench.json."""
    table = pytest.importorskip("bench.table")
    report = json.loads((ROOT / "docs" / "bench" / "bench.json").read_text())
    for path in (ROOT / "README.md", ROOT / "docs" / "performance.md"):
        text = path.read_text()
        assert table.MARKER.search(text), path
        assert table.fill(report, text) == text, f"{path.name}: run python -m bench.table docs/bench/bench.json --fill"


def test_fill_replaces_only_the_marked_blocks(tmp_path):
    table = pytest.importorskip("bench.table")
    report = json.loads((ROOT / "docs" / "bench" / "bench.json").read_text())
    text = "intro\n\n<!-- bench.table: machinery -->\n| old |\n|---|\n| row |\n\nafter\n"
    out = table.fill(report, text)
    assert out.startswith("intro\n\n<!-- bench.table: machinery -->\n| workload | all on")
    assert out.endswith("\n\nafter\n") and "| old |" not in out
    assert table.fill(report, out) == out                       # a second fill changes nothing
    with pytest.raises(ValueError, match="'nonsense'"):
        table.fill(report, "<!-- bench.table: nonsense -->\n| x |\n")
    fenced = "```\n<!-- bench.table: machinery -->\n| kept |\n```\n"
    assert table.fill(report, fenced) == fenced                 # in a code block: text, not a marker
    empty = "<!-- bench.table: load -->\n\nafter\n"            # a run without that part
    assert table.fill({"rows": [], "targets": []}, empty) == empty
    path = tmp_path / "doc.md"
    path.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    table.main([str(ROOT / "docs" / "bench" / "bench.json"), "--fill", str(path)])
    assert path.read_bytes() == out.replace("\n", "\r\n").encode("utf-8")   # its line ends kept


def test_only_refuses_a_text_no_workload_has(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--only", "under_load", "--only", "nonsense"])
    err = capsys.readouterr().err
    assert "--only 'nonsense'" in err and "mlp_epoch_b128_under_load" in err


def test_machinery_skips_a_variant_measured_without_its_all_on():
    results = {"machinery/mlp_epoch_b128/numba": {"kind": "mlp", "params": MLP, "handydl": fake(1.2)},
               "machinery/gpt/all on": {"kind": "gpt", "params": {}, "handydl": fake(1.0)},
               "machinery/gpt/numba": {"kind": "gpt", "params": {}, "handydl": fake(1.3)}}
    rows = bench.machinery(results)
    assert [(r["workload"], r["variant"]) for r in rows] == [("gpt", "all on"), ("gpt", "numba")]
    assert rows[1]["vs_all_on"] == pytest.approx(1.3)
