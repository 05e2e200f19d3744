"""The README's performance table, from a bench.json:

    python -m bench.table bench/results/bench.json

and, for runs that measured it, the MLP epochs in GFLOP/s of their products.
"""
from __future__ import annotations

import json
import sys

from bench.__main__ import check_line, pieces_line

LABELS = {"mlp_epoch_b32": "MLP epoch, batch 32", "mlp_epoch_b128": "MLP epoch, batch 128",
          "mlp_epoch_b512": "MLP epoch, batch 512", "deep_mlp_gelu_adam_b128": "deep MLP, GELU + Adam, batch 128",
          "softmax_ce_4096x1000": "softmax cross-entropy fwd+bwd, 4096×1000"}
ACTIVATION_ROW = " (fwd+bwd, 1M f32)"


def ms(t):
    return f"{t * 1e3:.0f} ms" if t >= 0.1 else f"{t * 1e3:.2f} ms"


def table(report):
    rows = {r["name"]: r for r in report["rows"]}
    lines = ["| workload | handydl | PyTorch | JAX | / PyTorch | / JAX | / matmul floor | extra peak MB (hd/torch/jax) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    names = list(LABELS)[:4] + ["softmax_ce_4096x1000"] + [n for n in rows if n.endswith(ACTIVATION_ROW)]
    for name in names:
        r = rows[name]
        label = LABELS.get(name, name.replace(ACTIVATION_ROW, " fwd+bwd, 1M"))
        floor = f"{r['of_floor']:.2f}" if "of_floor" in r else ""
        mem = " / ".join(f"{r[fw]['peak_mb']:.0f}" if fw in r else "-"
                         for fw in ("handydl", "torch", "jax")) if "of_floor" in r else ""
        t = {fw: ms(r[fw]["median"]) if fw in r else "-" for fw in ("handydl", "torch", "jax")}
        vs = {fw: f"{r['vs_' + fw]:.2f}" if "vs_" + fw in r else "-" for fw in ("torch", "jax")}
        lines.append(f"| {label} | {t['handydl']} | {t['torch']} | {t['jax']} | {vs['torch']} | {vs['jax']} | "
                     f"{floor} | {mem} |")
    return "\n".join(lines)


def rates(report):
    """The MLP epochs as GFLOP/s of their matrix products, next to the same products
    alone (handydl's matmul floor) and the best sgemm of the run: how close each
    framework's whole epoch runs to its products and to the machine's ceiling."""
    lines = ["| workload | product GFLOP per epoch | products alone | handydl | PyTorch | JAX | best sgemm (2048²) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if "floor_gflops" in r:
            lines.append(f"| {LABELS.get(r['name'], r['name'])} | {r['flops'] / 1e9:.1f} | {r['floor_gflops']:.0f} | "
                         + " | ".join(f"{r[fw]['gflops']:.0f}" if fw in r else "-" for fw in ("handydl", "torch", "jax"))
                         + f" | {r['sgemm_gflops']:.0f} |")
    return "\n".join(lines)


CONV_LABELS = {"conv_lenet_64x1x28x28_32f5x5": "Conv2d 1→32, 5×5, on 64×1×28×28",
               "conv_resnet_32x64x32x32_64f3x3": "Conv2d 64→64, 3×3, pad 1, on 32×64×32×32",
               "cnn_epoch_lenet_28x28_b64": "LeNet-style CNN epoch, 28×28, batch 64"}


def conv_table(report):
    """The convolution rows: fwd+bwd of a layer (and its products' rate) and a CNN epoch."""
    lines = ["| workload | handydl | PyTorch | / PyTorch | handydl GFLOP/s | PyTorch GFLOP/s | best sgemm |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r["name"] not in CONV_LABELS or "torch" not in r:
            continue
        rate = lambda fw: f"{r[fw]['gflops']:.0f}" if "gflops" in r[fw] else ""  # noqa: E731
        best = f"{r['sgemm_gflops']:.0f}" if r.get("sgemm_gflops") and "gflops" in r["handydl"] else ""
        lines.append(f"| {CONV_LABELS[r['name']]} | {ms(r['handydl']['median'])} | {ms(r['torch']['median'])} | "
                     f"{r['vs_torch']:.2f} | {rate('handydl')} | {rate('torch')} | {best} |")
    return "\n".join(lines)


SEQ_LABELS = {"lstm_s64_b32_128x256": "LSTM layer fwd+bwd, seq 64, batch 32, 128→256"}


def seq_table(report):
    """The sequence rows: an LSTM layer's fwd+bwd through time and its products' rate."""
    lines = ["| workload | handydl | PyTorch | / PyTorch | handydl GFLOP/s | PyTorch GFLOP/s | best sgemm |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r["name"] in SEQ_LABELS and "torch" in r:
            best = f"{r['sgemm_gflops']:.0f}" if r.get("sgemm_gflops") else ""
            lines.append(f"| {SEQ_LABELS[r['name']]} | {ms(r['handydl']['median'])} | {ms(r['torch']['median'])} | "
                         f"{r['vs_torch']:.2f} | {r['handydl']['gflops']:.0f} | {r['torch']['gflops']:.0f} | {best} |")
    return "\n".join(lines)


GPT_LABELS = {"gpt_step_l4_d128_h4_t64_b16":
              "GPT training step (4 layers, d_model 128, 4 heads, context 64, batch 16, AdamW)"}


def gpt_table(report):
    """The GPT's training step, handydl against PyTorch eager."""
    lines = ["| workload | handydl | PyTorch | / PyTorch | extra peak MB (hd/torch) |", "|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r["name"] in GPT_LABELS and "torch" in r:
            lines.append(f"| {GPT_LABELS[r['name']]} | {ms(r['handydl']['median'])} | "
                         f"{ms(r['torch']['median'])} | {r['vs_torch']:.2f} | "
                         f"{r['handydl']['peak_mb']:.0f} / {r['torch']['peak_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "bench/results/bench.json") as f:
        report = json.load(f)
    print(table(report))
    print()
    if any("floor_gflops" in r for r in report["rows"]):
        print(rates(report))
        print()
    if any(r["name"] in CONV_LABELS for r in report["rows"]):
        print(conv_table(report))
        print()
    if any(r["name"] in SEQ_LABELS for r in report["rows"]):
        print(seq_table(report))
        print()
    if any(r["name"] in GPT_LABELS for r in report["rows"]):
        print(gpt_table(report))
        print()
    for c in report["targets"]:
        print(check_line(c))
    for r in report["rows"]:
        if r.get("pieces"):
            print(pieces_line(r))
