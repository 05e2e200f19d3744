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

from bench.worker import MACHINERY, WORKERS, conv_flops, lstm_flops

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
    out = [(f"mlp_epoch_b{b}", "mlp", {**mlp, "batch": b, "fit": b == 128}) for b in (32, 128, 512)]
    # the same epoch, quiet and while another process keeps one core busy (the worker starts it)
    out.append(("mlp_epoch_b128_under_load", "mlp", {**mlp, "batch": 128, "load": True}))
    out.append(("mlp_epoch_b128_under_load_1_blas_thread", "mlp",
                {**mlp, "batch": 128, "load": True, "blas_threads": 1, "only": "handydl"}))
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
    # what each piece of the speed machinery buys in training: handydl alone, the
    # workload with everything on and with each piece off (bench/worker.py MACHINERY)
    for name, kind, params in [out[1], out[-1], ("cnn_epoch_lenet_28x28_b64", "cnn",
                                                   dict(n=512 if quick else 2048, batch=64, repeats=reps))]:
        for piece in ("",) + tuple(MACHINERY):
            out.append((f"machinery/{name}/{piece or 'all on'}", kind,
                        {**params, "fit": False, "without": piece, "only": "handydl"}))
    return out


def run_worker(fw, jobs):
    """Results of [(kind, params), ...], run in order in one process of framework fw
    (a job with "load" starts and stops its own load: bench/worker.py under_load)."""
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
        for key in ("floor", "sgemm_gflops", "fit", "quiet", "slowdown"):
            if key in runs[0]:
                out[key] = sum((r[key] for r in runs), [])
        if "loss" in runs[0]:
            out["loss"] = runs[-1]["loss"]
        for key in ("pieces", "phases"):
            if key in runs[0]:
                out[key] = {k: sum((r[key][k] for r in runs), []) for k in runs[0][key]}
        return out
    return {op: merge([r[op] for r in runs]) for op in runs[0]}


def summary(samples):
    s = np.asarray(samples)
    return {"median": float(np.median(s)), "min": float(s.min()), "max": float(s.max()), "n": int(s.size)}


def process_groups(jobs, quick):
    """[[unit, ...], ...]: groups measured one after the other, each in
    interleaved cycles; a unit is the jobs one worker process runs.  A full run
    gives every workload a process (and a group) of its own; a quick run one
    process for all plain workloads, because starting processes (importing torch,
    compiling handydl's kernels) is most of its time.  A loaded job and every
    machinery variant always run in a process of their own (a loaded job's
    epochs take the load in turns; a variant's switch holds for its whole
    process); the loaded jobs form one group, and the variants of one workload
    another, so that they alternate in every cycle."""
    plain = [j for j in jobs if not j[2].get("load") and "without" not in j[2]]
    groups = [[plain]] if quick else [[[j]] for j in plain]
    loaded = [[j] for j in jobs if j[2].get("load")]
    groups += [loaded] if loaded else []
    bases = dict.fromkeys(j[0].split("/")[1] for j in jobs if "without" in j[2])
    groups += [[[j] for j in jobs if "without" in j[2] and j[0].split("/")[1] == base] for base in bases]
    return groups


def measure(quick, frameworks, cycles, only=None):
    """{workload: {"kind", "params", fw: merged results}}, in cycles that
    alternate the order of the frameworks and of a group's processes (A B C,
    C B A, ...), so that a slow phase of a shared machine hits all of them;
    with ``only``, the workloads whose name contains one of its strings."""
    jobs = [j for j in workloads(quick) if not only or any(t in j[0] for t in only)]
    runs = {name: {fw: [] for fw in frameworks} for name, _, _ in jobs}
    for group in process_groups(jobs, quick):
        for cycle in range(cycles):
            for unit in group if cycle % 2 == 0 else group[::-1]:
                for fw in frameworks if cycle % 2 == 0 else frameworks[::-1]:
                    mine = [job for job in unit if (fw, job[1]) in WORKERS and job[2].get("only", fw) == fw]
                    if not mine:
                        continue
                    results = run_worker(fw, [(kind, params) for _, kind, params in mine])
                    for (name, _, _), result in zip(mine, results):
                        runs[name][fw].append(result)
        print(f"  measured {', '.join(job[0] for unit in group for job in unit)}", file=sys.stderr)
    return {name: {"kind": kind, "params": params, **{fw: merge(r) for fw, r in runs[name].items() if r}}
            for name, kind, params in jobs}


# (workload, against what, limit): handydl's median / the reference's must be <= limit.
# "fastest": the faster of PyTorch and JAX; "limit": the epoch's products at the
# machine's best sgemm rate of the run; "slowdown": handydl's slowdown under load
# against the best peer's (limit 1: no worse).  The MLP and activation targets are
# issue 17's; the convolution, LSTM and GPT ones issue 15's and 18's.
TARGETS = [
    ("mlp_epoch_b32", "fastest", 1.0), ("mlp_epoch_b128", "fastest", 0.9),
    ("mlp_epoch_b512", "fastest", 0.9), ("mlp_epoch_b512", "limit", 1.25),
    ("deep_mlp_gelu_adam_b128", "fastest", 0.8), ("mlp_epoch_b128_under_load", "slowdown", 1.0),
    ("conv_lenet_64x1x28x28_32f5x5", "torch", 1.5), ("conv_resnet_32x64x32x32_64f3x3", "torch", 1.5),
    ("cnn_epoch_lenet_28x28_b64", "torch", 1.5), ("lstm_s64_b32_128x256", "torch", 1.5),
    ("gpt_step_l4_d128_h4_t64_b16", "torch", 1.0),
]
ACTIVATION_LIMIT = 1.0      # every activation's fwd+bwd / PyTorch's


def mlp_flops(params):
    """Flops of one epoch's matrix products (2 per multiply-add): per layer of
    sizes (a, b), x W forward and x^T g backward, and g W^T for every layer but
    the first (its input is data)."""
    layers = list(zip(params["sizes"], params["sizes"][1:]))
    per_sample = sum(3 * a * b for a, b in layers) - layers[0][0] * layers[0][1]
    return 2 * params["n"] * per_sample


def machine_sgemm(results):
    """The machine's limit: the best float32 product rate any worker of the run
    measured (NumPy's BLAS, PyTorch's and JAX's jitted dot on 2048 x 2048), and who."""
    best = (0.0, None)
    for res in results.values():
        for fw, r in res.items():
            if isinstance(r, dict):
                for v in r.get("sgemm_gflops", []):
                    best = max(best, (v, fw), key=lambda t: t[0])
    return best


def median(samples):
    return float(np.median(samples))


def report(results, frameworks):
    rows, checks = [], []
    peers = [fw for fw in frameworks if fw != "handydl"]
    sgemm, sgemm_by = machine_sgemm(results)
    for name, res in results.items():
        if name.startswith("machinery/"):
            continue
        if res["kind"] == "activation":
            for op in res["handydl"]:
                rows.append(_row(f"{op} (fwd+bwd, 1M f32)", {fw: res[fw][op] for fw in frameworks}, peers))
                if "torch" in frameworks:
                    r = median(res["handydl"][op]["samples"]) / median(res["torch"][op]["samples"])
                    checks.append(check_dict(f"activation {op}: handydl / torch <= {ACTIVATION_LIMIT}",
                                             r, ACTIVATION_LIMIT))
            continue
        row = _row(name, {fw: res[fw] for fw in frameworks if fw in res}, [fw for fw in peers if fw in res])
        hd = res["handydl"]
        if res["kind"] == "mlp" and sgemm and "floor" in hd:
            # every framework's epoch against its products at the machine's best rate
            row["flops"] = mlp_flops(res["params"])
            row["sgemm_gflops"], row["sgemm_by"] = sgemm, sgemm_by
            row["limit"] = row["flops"] / (sgemm * 1e9)
            row["floor"] = median(hd["floor"])             # handydl's products alone, NumPy's BLAS
            for fw in frameworks:
                if fw in row:
                    row[fw]["of_limit"] = row[fw]["median"] / row["limit"]
            row["phases"] = phases(row, hd)
            row["phases_alone"] = phases_alone(hd)
            if "fit" in hd:
                row["fit"] = summary(hd["fit"])
        if res["kind"] in ("conv", "lstm"):   # the layer's products as a rate, next to the best sgemm
            row["flops"] = (conv_flops if res["kind"] == "conv" else lstm_flops)(res["params"])
            row["pieces"] = {k: median(v) for k, v in hd.get("pieces", {}).items()}
            row["sgemm_gflops"] = sgemm or None
            for fw in frameworks:
                if fw in row:
                    row[fw]["gflops"] = row["flops"] / row[fw]["median"] / 1e9
        rows.append(row)
        for fw in frameworks:            # under load: each pair's loaded / quiet epoch, in one process
            if "slowdown" in res.get(fw, {}):
                row[fw]["slowdown"] = median(res[fw]["slowdown"])
                row[fw]["quiet"] = median(res[fw]["quiet"])
    by_name = {r["name"]: r for r in rows}
    for name, what, limit in TARGETS:
        row = by_name.get(name)
        if row is not None:
            checks += target_checks(row, what, limit, peers, by_name)
    return rows, checks


def machinery(results):
    """[{workload, variant, median, vs_all_on}]: handydl's training workloads with
    every piece of its speed machinery on, and with each piece off in turn
    (bench/worker.py MACHINERY); vs_all_on > 1 is what the piece buys."""
    out = []
    for name, res in results.items():
        if name.startswith("machinery/"):
            _, base, variant = name.split("/")
            out.append({"workload": base, "variant": variant, **summary(res["handydl"]["samples"])})
    on = {r["workload"]: r for r in out if r["variant"] == "all on"}
    out = [r for r in out if r["workload"] in on]       # (--only can select a variant alone)
    for row in out:
        row["vs_all_on"] = row["median"] / on[row["workload"]]["median"]
    return out


def print_machinery(rows):
    if not rows:
        return
    print("\nwhat handydl's speed machinery buys in training: each workload with everything on, "
          "and with one piece off (time / all on)")
    for base in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == base]
        print(f"  {base:<32}" + "   ".join(
            f"{r['variant']}: {fmt_time(r['median']).strip()}" if r["variant"] == "all on" else
            f"without {r['variant']}: {r['vs_all_on']:.2f}" for r in mine))
    for piece, what in MACHINERY.items():
        print(f"    {piece}: {what}")


REST = "the loop itself (the rest)"
MODEL_REST = "model: the rest"
ALONE = ("bias adds and sums", "activation", "Python and modules")


def phases(row, hd):
    """{phase: seconds} that sum to handydl's epoch: the model's forward +
    backward split into its products (alone, NumPy's BLAS), the pieces timed
    alone by the worker (bench/worker.py mlp_phases) and what it takes beyond
    them in the step (the pieces running slower together than alone: caches,
    a BLAS thread's data on the other core); then the loss, the optimizer and
    zero_grad with the loader as timed in the step, and what the epoch takes
    beyond all of them (the loop and the clock reads)."""
    got = {k: median(v) for k, v in hd.get("phases", {}).items()}
    out = {"products": row["floor"]}
    out.update({k: got[k] for k in ALONE if k in got})
    if "model forward + backward" in got:
        out[MODEL_REST] = got["model forward + backward"] - sum(out.values())
        out.update({f"{k} (in the step)": got[k] for k in ("loss", "optimizer", "zero_grad and data loader")})
    out[REST] = row["handydl"]["median"] - sum(out.values())
    return out


def phases_alone(hd):
    """The loss's and the optimizer's time alone, next to their time in the step."""
    return {k: median(v) for k, v in hd.get("phases", {}).items() if k.endswith(" alone")}


def target_checks(row, what, limit, peers, by_name):
    name = row["name"]
    hd = row["handydl"]["median"]
    if what == "limit":
        if "limit" not in row:
            return []
        return [check_dict(f"{name}: handydl / its products at the machine's best sgemm <= {limit}",
                           hd / row["limit"], limit, row, limit * row["limit"])]
    if what == "slowdown":
        have = [fw for fw in peers if "slowdown" in row.get(fw, {})]
        if "slowdown" not in row["handydl"] or not have:
            return []
        best = min(have, key=lambda fw: row[fw]["slowdown"])
        out = check_dict(f"{name}: handydl's slowdown ({row['handydl']['slowdown']:.2f}x) / "
                         f"the best peer's ({best}, {row[best]['slowdown']:.2f}x) <= {limit}",
                         row["handydl"]["slowdown"] / row[best]["slowdown"], limit)
        one = by_name.get(name + "_1_blas_thread", {}).get("handydl", {})
        if "slowdown" in one:
            # NumPy's BLAS held to one thread: its own slowdown, its quiet epoch against the
            # default's, and its loaded epoch against the default's quiet one: the least
            # slowdown a choice between the two counts reaches (one thread under load, the
            # default's in quiet)
            out["one_blas_thread"] = one["slowdown"]
            out["one_thread_quiet"] = one["quiet"] / row["handydl"]["quiet"]
            out["one_thread_floor"] = one["median"] / row["handydl"]["quiet"]
        return [out]
    if what in peers:
        if what not in row:
            return []
        return [check_dict(f"{name}: handydl / {what} <= {limit}", row[f"vs_{what}"], limit)]
    have = [fw for fw in peers if fw in row]
    if not have:
        return []
    fastest = min(have, key=lambda fw: row[fw]["median"])
    return [check_dict(f"{name}: handydl / fastest of {', '.join(have)} ({fastest}) <= {limit}",
                       hd / row[fastest]["median"], limit, row, limit * row[fastest]["median"])]


def check_dict(target, value, limit, row=None, allowed=None):
    """A target's verdict; for an MLP epoch that misses, what would have to
    shrink: the epoch's excess over what the target allows, in seconds, next to
    its measured phases."""
    out = {"target": target, "value": value, "limit": limit, "pass": bool(value <= limit)}
    if row is not None and "phases" in row and not out["pass"]:
        out["excess"] = row["handydl"]["median"] - allowed
        out["allowed"] = allowed
        out["phases"] = row["phases"]
        out["limit_s"] = row["limit"]
        out["sgemm_gflops"] = row["sgemm_gflops"]
        out["flops"] = row["flops"]
    return out


def check_line(c):
    """One PASS/FAIL line; for a missed MLP target, which phase would have to shrink, by how much."""
    line = f"{'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['value']:.2f}"
    if "excess" in c:
        line += "\n      " + shrink_line(c)
    if "one_thread_floor" in c:
        line += (f"\n      on one BLAS thread handydl slows {c['one_blas_thread']:.2f}x, and its loaded epoch is "
                 f"{c['one_thread_floor']:.2f}x the default's quiet one (its quiet one {c['one_thread_quiet']:.2f}x): "
                 f"the least slowdown a choice between the default's count and one thread reaches, "
                 f"unless one thread's epoch gets faster")
    return line


def shrink_line(c):
    """What a missed MLP target needs: the epoch must lose ``excess`` seconds.  If
    the phases other than the products hold that much, the largest of them says
    by what fraction it would have to shrink; if not, even with all of them at
    zero the products alone would miss, and the line says at what rate the
    products would have to run, next to the machine's best."""
    ms = lambda t: f"{t * 1e3:.0f} ms"  # noqa: E731
    ph = c["phases"]
    others = {k: v for k, v in ph.items() if k != "products"}
    parts = ", ".join(f"{k} {ms(v)}" for k, v in ph.items())
    head = f"must lose {ms(c['excess'])} of {ms(sum(ph.values()))} ({parts}); "
    room = sum(v for v in others.values() if v > 0)
    if c["excess"] <= room:
        big, t = max(others.items(), key=lambda kv: kv[1])
        if c["excess"] <= t:
            return head + f"{big} would have to shrink by {c['excess'] / t:.0%}"
        return head + f"the phases besides the products would have to shrink by {c['excess'] / room:.0%} together"
    need = c["flops"] / c["allowed"] / 1e9        # the products alone in all the time allowed
    return head + (f"even with every other phase at 0, the products would have to run at {need:.0f} GFLOP/s "
                   f"(they ran at {c['flops'] / ph['products'] / 1e9:.0f} in the step's shapes; "
                   f"the machine's best sgemm {c['sgemm_gflops']:.0f})")


def _row(name, by_fw, peers):
    row = {"name": name}
    for fw, res in by_fw.items():
        row[fw] = {**summary(res["samples"]), "peak_mb": res["peak_mb"]}
    for fw in peers:
        row[f"vs_{fw}"] = row["handydl"]["median"] / row[fw]["median"]
    return row


def fmt_time(t):
    return f"{t * 1e3:9.2f} ms" if t < 1 else f"{t:9.3f} s "


def print_table(rows, checks, frameworks):
    head = f"{'workload':<34}" + "".join(f"{fw + ' median [min-max]':>34}" for fw in frameworks)
    head += "".join(f"{'/ ' + fw:>9}" for fw in frameworks[1:])
    head += f"{'peak MB (hd/' + '/'.join(frameworks[1:]) + ')':>24}"
    print(head)
    for r in rows:
        line = f"{r['name']:<34}"
        for fw in frameworks:
            s = r.get(fw)
            line += (f"{fmt_time(s['median'])} [{s['min'] * 1e3:7.1f}-{s['max'] * 1e3:7.1f}ms]" if s else "-").rjust(34)
        line += "".join(f"{r['vs_' + fw]:9.2f}" if "vs_" + fw in r else f"{'-':>9}" for fw in frameworks[1:])
        line += ('/'.join(f"{r[fw]['peak_mb']:.0f}" if fw in r else "-" for fw in frameworks)).rjust(24)
        print(line)
    print_limits(rows, frameworks)
    print_phases(rows)
    print()
    for c in checks:
        print(check_line(c))
    for r in rows:
        if r.get("pieces"):
            print(pieces_line(r))


def print_limits(rows, frameworks):
    """Each MLP epoch against its matrix products at the machine's best sgemm rate."""
    mlps = [r for r in rows if "limit" in r]
    if not mlps:
        return
    r0 = mlps[0]
    print(f"\nMLP epochs / their products at the machine's best sgemm of the run "
          f"({r0['sgemm_gflops']:.0f} GFLOP/s, {r0['sgemm_by']}); 1.00 is the machine's limit")
    print(f"{'workload':<34}{'GFLOP':>8}{'limit':>11}" + "".join(f"{fw:>9}" for fw in frameworks)
          + f"{'hd products':>13}" + f"{'hd fit':>9}")
    for r in mlps:
        line = f"{r['name']:<34}{r['flops'] / 1e9:8.1f}{r['limit'] * 1e3:8.1f} ms"
        line += "".join(f"{r[fw]['of_limit']:9.2f}" if fw in r else f"{'-':>9}" for fw in frameworks)
        line += f"{r['floor'] / r['limit']:13.2f}"
        line += f"{r['fit']['median'] / r['limit']:9.2f}" if "fit" in r else f"{'':9}"
        if "slowdown" in r.get("handydl", {}):
            line += "   slowdown under load: " + ", ".join(
                f"{fw} {r[fw]['slowdown']:.2f}x" for fw in frameworks if "slowdown" in r.get(fw, {}))
        print(line)


def print_phases(rows):
    """Where handydl's MLP epoch goes, phase by phase (medians, ms)."""
    mlps = [r for r in rows if "phases" in r and "_under_load" not in r["name"]]
    if not mlps:
        return
    names = list(mlps[0]["phases"])
    print("\nhandydl's MLP epoch, phase by phase (ms): the products and the model's pieces timed alone, "
          "the model, loss, optimizer and zero_grad + loader timed in the step; each rest is what remains")
    print(f"{'workload':<34}" + "".join(f"{n[:14]:>15}" for n in names) + f"{'epoch':>10}")
    for r in mlps:
        print(f"{r['name']:<34}" + "".join(f"{r['phases'][n] * 1e3:15.1f}" for n in names)
              + f"{r['handydl']['median'] * 1e3:10.1f}")


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
    rows = [r for r in rows if all(fw in r for fw in frameworks if fw != "jax")]   # handydl-only rows: none
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
    ap.add_argument("--only", action="append", metavar="TEXT",
                    help="only the workloads whose name contains TEXT (repeatable), e.g. --only under_load")
    args = ap.parse_args(argv)
    names = [name for name, _, _ in workloads(args.quick)]
    for text in args.only or ():
        if not any(text in name for name in names):
            ap.error(f"--only {text!r}: no workload's name contains it; the workloads are "
                     + ", ".join(n for n in names if not n.startswith("machinery/")))
    have = available()
    frameworks = tuple(fw for fw in FRAMEWORKS if have[fw])
    for fw in FRAMEWORKS:
        if not have[fw]:
            print(f"skipping {fw}: not installed (pip install {'torch==2.13.0' if fw == 'torch' else 'jax jaxlib'})")
    if importlib.util.find_spec("numba") is None:
        print("note: numba is not installed, so handydl runs its NumPy paths "
              "(pip install 'handydl[fast]' for the fused activation kernels)")
    start = time.perf_counter()
    results = measure(args.quick, frameworks, args.cycles or (1 if args.quick else 3), args.only)
    rows, checks = report(results, frameworks)
    pieces = machinery(results)
    print_table(rows, checks, frameworks)
    print_machinery(pieces)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from handydl._io import write_text
    write_text(out / "bench.json", json.dumps({"machine": machine(), "quick": args.quick, "rows": rows,
                                              "targets": checks, "machinery": pieces, "raw": results}, indent=1))
    chart(rows, frameworks, out / "bench.png")
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'} ({time.perf_counter() - start:.0f} s)")
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
