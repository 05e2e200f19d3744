"""handydl vs PyTorch (eager) vs JAX (jit) on the CPU, side by side in one run.

    python -m bench            # the full run (about 6 minutes on 2 cores)
    python -m bench --quick    # the same workloads, smaller (about 35 s)

Writes bench/results/bench.json and bench/results/bench.png and prints a table
with the median time, the min-max spread, handydl's ratio to each peer, the
fraction of the matmul floor for the MLPs, the peak memory of the step, and
PASS/FAIL against the targets of issue 5, each MLP target with the rate of
product flops it needs.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.worker import WORKERS, conv_flops, lstm_flops

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("handydl", "torch", "jax")


def available():
    have = {"handydl": True}
    for fw in ("torch", "jax"):
        have[fw] = importlib.util.find_spec(fw) is not None
    return have


def workloads(quick):
    n = 8000 if quick else 60000
    reps = 2 if quick else 3
    mlp = dict(sizes=[784, 256, 10], activation="relu", optimizer="sgd", n=n, repeats=reps)
    out = [(f"mlp_epoch_b{b}", "mlp", {**mlp, "batch": b}) for b in (32, 128, 512)]
    out.append(("deep_mlp_gelu_adam_b128", "mlp", dict(sizes=[784, 1024, 1024, 10], activation="gelu",
                                                       optimizer="adam", n=1500 if quick else 10000,
                                                       batch=128, repeats=reps)))
    from handydl import ops
    out.append(("activations", "activation", dict(ops=ops.names("activation"), size=1_000_000,
                                                  repeats=3 if quick else 9)))
    out.append(("softmax_ce_4096x1000", "softmax_ce", dict(rows=4096, classes=1000, repeats=5 if quick else 15)))
    # convolutions (issue 15): a LeNet-size layer, a ResNet-stage layer, a small CNN's epoch
    out.append(("conv_lenet_64x1x28x28_32f5x5", "conv",
                dict(x=[16 if quick else 64, 1, 28, 28], out=32, k=5, padding=0, repeats=3 if quick else 9)))
    out.append(("conv_resnet_32x64x32x32_64f3x3", "conv",
                dict(x=[8 if quick else 32, 64, 32, 32], out=64, k=3, padding=1, repeats=2 if quick else 5)))
    out.append(("cnn_epoch_lenet_28x28_b64", "cnn", dict(n=1024 if quick else 8192, batch=64, repeats=reps)))
    # an LSTM layer fwd+bwd through time (issue 18): seq 64, batch 32, 128 -> 256
    out.append(("lstm_s64_b32_128x256", "lstm", dict(seq=16 if quick else 64, batch=32, input=128, hidden=256,
                                                      repeats=3 if quick else 9)))
    # a small GPT's training step (issue 18): 4 layers, d_model 128, 4 heads, context 64, batch 16
    out.append(("gpt_step_l4_d128_h4_t64_b16", "gpt", dict(vocab=65, block=64, layers=4, heads=4, d=128,
                                                           batch=16, repeats=5 if quick else 20)))
    return out


def run_worker(fw, jobs):
    """Results of [(kind, params), ...], run in order in one process of framework fw."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "bench.worker", fw, json.dumps(jobs)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{fw} {[kind for kind, _ in jobs]} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def merge(runs):
    """Samples of several cycles of one worker, merged."""
    if "samples" in runs[0]:
        out = {"samples": sum((r["samples"] for r in runs), []),
               "peak_mb": max(r["peak_mb"] for r in runs)}
        for key in ("floor", "sgemm_gflops"):
            if key in runs[0]:
                out[key] = sum((r[key] for r in runs), [])
        if "loss" in runs[0]:
            out["loss"] = runs[-1]["loss"]
        if "pieces" in runs[0]:
            out["pieces"] = {k: sum((r["pieces"][k] for r in runs), []) for k in runs[0]["pieces"]}
        return out
    return {op: merge([r[op] for r in runs]) for op in runs[0]}


def summary(samples):
    s = np.asarray(samples)
    return {"median": float(np.median(s)), "min": float(s.min()), "max": float(s.max()), "n": int(s.size)}


def measure(quick, frameworks, cycles):
    """{workload: {"kind", "params", fw: merged results}}, in cycles that alternate
    the frameworks' order (A B C, C B A, ...).  A full run starts a process per
    workload and framework, interleaved workload by workload; a quick run one
    process per framework for all workloads, because starting processes
    (importing torch, compiling handydl's kernels) is most of its time."""
    jobs = workloads(quick)
    groups = [[job] for job in jobs] if not quick else [jobs]
    runs = {name: {fw: [] for fw in frameworks} for name, _, _ in jobs}
    for group in groups:
        for cycle in range(cycles):
            for fw in frameworks if cycle % 2 == 0 else frameworks[::-1]:
                mine = [job for job in group if (fw, job[1]) in WORKERS]   # JAX has no conv worker
                if not mine:
                    continue
                results = run_worker(fw, [(kind, params) for _, kind, params in mine])
                for (name, _, _), result in zip(mine, results):
                    runs[name][fw].append(result)
        print(f"  measured {', '.join(name for name, _, _ in group)}", file=sys.stderr)
    return {name: {"kind": kind, "params": params, **{fw: merge(r) for fw, r in runs[name].items() if r}}
            for name, kind, params in jobs}


TARGETS = [  # (workload, what, limit): handydl / peer or / floor must be <= limit
    ("mlp_epoch_b32", "fastest", 1.0), ("mlp_epoch_b128", "fastest", 0.8),
    ("mlp_epoch_b512", "fastest", 0.8), ("mlp_epoch_b512", "floor", 1.25),
    ("conv_lenet_64x1x28x28_32f5x5", "torch", 1.5), ("conv_resnet_32x64x32x32_64f3x3", "torch", 1.5),
    ("cnn_epoch_lenet_28x28_b64", "torch", 1.5), ("lstm_s64_b32_128x256", "torch", 1.5),
    ("gpt_step_l4_d128_h4_t64_b16", "torch", 1.0),
]


def mlp_flops(params):
    """Flops of one epoch's matrix products (2 per multiply-add): per layer of
    sizes (a, b), x W forward and x^T g backward, and g W^T for every layer but
    the first (its input is data)."""
    layers = list(zip(params["sizes"], params["sizes"][1:]))
    per_sample = sum(3 * a * b for a, b in layers) - layers[0][0] * layers[0][1]
    return 2 * params["n"] * per_sample


def report(results, frameworks):
    rows, checks = [], []
    peers = [fw for fw in frameworks if fw != "handydl"]
    # the machine's ceiling is one for the whole run: the best sgemm rate of any worker
    sgemm = [v for res in results.values() for v in res["handydl"].get("sgemm_gflops", [])]
    for name, res in results.items():
        if res["kind"] == "activation":
            for op in res["handydl"]:
                rows.append(_row(f"{op} (fwd+bwd, 1M f32)", {fw: res[fw][op] for fw in frameworks}, peers))
                if "torch" in frameworks:
                    r = np.median(res["handydl"][op]["samples"]) / np.median(res["torch"][op]["samples"])
                    checks.append((f"activation {op}: handydl / torch <= 1.0", r, 1.0))
            continue
        row = _row(name, {fw: res[fw] for fw in frameworks if fw in res}, [fw for fw in peers if fw in res])
        if "floor" in res["handydl"]:
            row["floor"] = summary(res["handydl"]["floor"])["median"]
            row["of_floor"] = row["handydl"]["median"] / row["floor"]
        if sgemm and res["kind"] == "mlp":
            # each framework's epoch and the products alone as rates of product flops
            row["flops"] = mlp_flops(res["params"])
            row["sgemm_gflops"] = max(sgemm)
            row["floor_gflops"] = row["flops"] / row["floor"] / 1e9
            for fw in frameworks:
                row[fw]["gflops"] = row["flops"] / row[fw]["median"] / 1e9
        if res["kind"] in ("conv", "lstm"):   # the layer's products as a rate, next to the best sgemm
            row["flops"] = (conv_flops if res["kind"] == "conv" else lstm_flops)(res["params"])
            row["pieces"] = {k: float(np.median(v)) for k, v in res["handydl"].get("pieces", {}).items()}
            row["sgemm_gflops"] = max(sgemm) if sgemm else None
            for fw in frameworks:
                if fw in row:
                    row[fw]["gflops"] = row["flops"] / row[fw]["median"] / 1e9
        rows.append(row)
    for name, what, limit in TARGETS:
        row = next((r for r in rows if r["name"] == name), None)
        if row is None:
            continue
        if what == "floor":
            checks.append((f"{name}: handydl / its matmul floor <= {limit}", row["of_floor"], limit))
        elif what in peers:
            if what in row:
                checks.append((f"{name}: handydl / {what} <= {limit}", row[f"vs_{what}"], limit))
        elif peers:
            fastest = min(row[fw]["median"] for fw in peers)
            checks.append((f"{name}: handydl / fastest of {', '.join(peers)} <= {limit}",
                           row["handydl"]["median"] / fastest, limit))
            if "flops" in row:          # the rate of product flops the target asks for
                checks[-1] += (row["flops"] / (limit * fastest) / 1e9, row["floor_gflops"], row["sgemm_gflops"])
    return rows, [check_dict(*c) for c in checks]


def check_dict(target, value, limit, needs_gflops=None, floor_gflops=None, sgemm_gflops=None):
    """A target's verdict; for an MLP target against a peer also the rate of
    product flops the whole epoch must reach to meet it, next to the rate of
    the same products alone (the matmul floor) and the best sgemm of the run."""
    out = {"target": target, "value": value, "limit": limit, "pass": bool(value <= limit)}
    if needs_gflops is not None:
        out.update(needs_gflops=needs_gflops, floor_gflops=floor_gflops, sgemm_gflops=sgemm_gflops,
                   beyond_floor=bool(needs_gflops > floor_gflops),
                   beyond_machine=bool(needs_gflops > sgemm_gflops))
    return out


def check_line(c):
    """One PASS/FAIL line, with what an MLP target needs."""
    line = f"{'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['value']:.2f}"
    if "needs_gflops" in c:
        verdict = ("faster than the best sgemm of the run" if c["beyond_machine"] else
                   "faster than the step's products alone" if c["beyond_floor"] else "")
        line += (f"  (needs {c['needs_gflops']:.0f} GFLOP/s end to end; products alone "
                 f"{c['floor_gflops']:.0f}, best sgemm {c['sgemm_gflops']:.0f}"
                 + (f": {verdict})" if verdict else ")"))
    return line


def _row(name, by_fw, peers):
    row = {"name": name}
    for fw, res in by_fw.items():
        row[fw] = {**summary(res["samples"]), "peak_mb": res["peak_mb"]}
    for fw in peers:
        row[f"vs_{fw}"] = row["handydl"]["median"] / row[fw]["median"]
    return row


def print_table(rows, checks, frameworks):
    fmt = lambda t: f"{t * 1e3:9.2f} ms" if t < 1 else f"{t:9.3f} s "  # noqa: E731
    head = f"{'workload':<34}" + "".join(f"{fw + ' median [min-max]':>34}" for fw in frameworks)
    head += "".join(f"{'/ ' + fw:>9}" for fw in frameworks[1:]) + f"{'/ floor':>9}{'peak MB (hd/' + '/'.join(frameworks[1:]) + ')':>24}"
    print(head)
    for r in rows:
        line = f"{r['name']:<34}"
        for fw in frameworks:
            s = r.get(fw)
            line += (f"{fmt(s['median'])} [{s['min'] * 1e3:7.1f}-{s['max'] * 1e3:7.1f}ms]" if s else "-").rjust(34)
        line += "".join(f"{r['vs_' + fw]:9.2f}" if "vs_" + fw in r else f"{'-':>9}" for fw in frameworks[1:])
        line += f"{r['of_floor']:9.2f}" if "of_floor" in r else f"{'':9}"
        line += ('/'.join(f"{r[fw]['peak_mb']:.0f}" if fw in r else "-" for fw in frameworks)).rjust(24)
        print(line)
    print()
    for c in checks:
        print(check_line(c))
    for r in rows:
        if r.get("pieces"):
            print(pieces_line(r))


def pieces_line(row):
    """Where a conv layer's fwd+bwd time goes, piece by piece (handydl's medians)."""
    parts = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row["pieces"].items())
    return (f"  {row['name']}: {parts} (pieces {sum(row['pieces'].values()) * 1e3:.1f} ms "
            f"of the step's {row['handydl']['median'] * 1e3:.1f} ms)")


def machine():
    import numpy
    info = {"python": platform.python_version(), "numpy": numpy.__version__, "cores": os.cpu_count(),
            "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    for fw in ("torch", "jax", "numba"):         # numba: handydl's fused activation kernels
        if importlib.util.find_spec(fw):
            try:                                 # from the installed metadata: no slow import
                info[fw] = importlib.metadata.version(fw)
            except importlib.metadata.PackageNotFoundError:
                info[fw] = "unknown"
    return info


def chart(rows, frameworks, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(12, 0.32 * len(rows) + 2), constrained_layout=True)
    y = np.arange(len(rows))
    h = 0.8 / len(frameworks)
    for k, fw in enumerate(frameworks):
        rel = [np.nan if fw not in r else r[fw]["median"] / r["torch"]["median"] if "torch" in frameworks
               else r[fw]["median"] for r in rows]
        ax.barh(y + k * h, rel, height=h, label=fw)
    ax.set_yticks(y + 0.4 - h / 2, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("time relative to PyTorch, log scale (lower is faster)" if "torch" in frameworks else "seconds")
    ax.set_title("handydl vs PyTorch (eager) vs JAX (jit), CPU, median of repeated runs")
    ax.legend()
    from handydl.plot import save
    save(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads, under a minute")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="directory for bench.json and bench.png")
    ap.add_argument("--cycles", type=int, default=None, help="interleaved rounds per workload (3; quick: 1)")
    args = ap.parse_args(argv)
    have = available()
    frameworks = tuple(fw for fw in FRAMEWORKS if have[fw])
    for fw in FRAMEWORKS:
        if not have[fw]:
            print(f"skipping {fw}: not installed (pip install {'torch==2.13.0' if fw == 'torch' else 'jax jaxlib'})")
    if importlib.util.find_spec("numba") is None:
        print("note: numba is not installed, so handydl runs its NumPy paths "
              "(pip install 'handydl[fast]' for the fused activation kernels)")
    start = time.perf_counter()
    results = measure(args.quick, frameworks, args.cycles or (1 if args.quick else 3))
    rows, checks = report(results, frameworks)
    print_table(rows, checks, frameworks)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from handydl._io import write_text
    write_text(out / "bench.json", json.dumps({"machine": machine(), "quick": args.quick, "rows": rows,
                                              "targets": checks, "raw": results}, indent=1))
    chart(rows, frameworks, out / "bench.png")
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'} ({time.perf_counter() - start:.0f} s)")
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
