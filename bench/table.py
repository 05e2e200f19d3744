"""The README's and docs/performance.md's tables, in Markdown, from a bench.json:

    python -m bench.table docs/bench/bench.json
    python -m bench.table docs/bench/bench.json --fill README.md docs/performance.md

the MLP epochs against the machine's limit, handydl's step phase by phase, every
other workload against PyTorch and JAX, what each piece of the speed machinery
buys, and the PASS/FAIL lines of the run; with --fill, the same tables written
into Markdown files in place, after each "<!-- bench.table: NAME -->" line
(NAME one of PARTS), so that the docs' tables are the run's.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from bench.__main__ import check_line, pieces_line

FRAMEWORKS = ("handydl", "torch", "jax")
NAMES = {"handydl": "handydl", "torch": "PyTorch", "jax": "JAX"}
SGEMM_BY = {"handydl": "NumPy", "torch": "PyTorch", "jax": "JAX"}      # whose product was the fastest
LABELS = {"mlp_epoch_b32": "MLP epoch, batch 32", "mlp_epoch_b128": "MLP epoch, batch 128",
          "mlp_epoch_b512": "MLP epoch, batch 512", "deep_mlp_gelu_adam_b128": "deep MLP, GELU + Adam, batch 128",
          "mlp_epoch_b128_under_load": "MLP epoch, batch 128, one core busy",
          "mlp_epoch_b128_under_load_1_blas_thread": "the same, handydl's BLAS on 1 thread",
          "softmax_ce_4096x1000": "softmax cross-entropy fwd+bwd, 4096×1000",
          "conv_lenet_64x1x28x28_32f5x5": "Conv2d 1→32, 5×5, fwd+bwd on 64×1×28×28",
          "conv_resnet_32x64x32x32_64f3x3": "Conv2d 64→64, 3×3, pad 1, fwd+bwd on 32×64×32×32",
          "cnn_epoch_lenet_28x28_b64": "LeNet-style CNN epoch, 28×28, batch 64",
          "lstm_s64_b32_128x256": "LSTM layer fwd+bwd, seq 64, batch 32, 128→256",
          "gpt_step_l4_d128_h4_t64_b16": "GPT training step (4 layers, d 128, 4 heads, context 64, batch 16, AdamW)"}
ACTIVATION_ROW = " (fwd+bwd, 1M f32)"


def ms(t):
    return f"{t * 1e3:.0f} ms" if t >= 0.1 else f"{t * 1e3:.2f} ms"


def label(name):
    return LABELS.get(name, name.replace(ACTIVATION_ROW, " fwd+bwd, 1M float32"))


def limits(report):
    """Each MLP epoch as a multiple of its products at the machine's best sgemm."""
    table = limits_table(report)
    if not table:
        return ""
    r0 = next(r for r in report["rows"] if "limit" in r)
    return (f"Each MLP epoch / its matrix products at the machine's best float32 product rate of the run "
            f"({r0['sgemm_gflops']:.0f} GFLOP/s, {SGEMM_BY.get(r0['sgemm_by'], r0['sgemm_by'])}'s 2048² product); "
            "1.00 would be the machine's limit:\n\n" + table)


def limits_table(report):
    mlps = [r for r in report["rows"] if "limit" in r]
    if not mlps:
        return ""
    lines = ["| workload | product GFLOP | limit | handydl | its products alone | PyTorch | JAX | handydl `fit` |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in mlps:
        cells = [f"{r[fw]['of_limit']:.2f}" if fw in r else "-" for fw in FRAMEWORKS]
        fit = f"{r['fit']['median'] / r['limit']:.2f}" if "fit" in r else ""
        lines.append(f"| {label(r['name'])} | {r['flops'] / 1e9:.1f} | {ms(r['limit'])} | {cells[0]} | "
                     f"{r['floor'] / r['limit']:.2f} | {cells[1]} | {cells[2]} | {fit} |")
    return "\n".join(lines)


def phases(report):
    """handydl's MLP epochs, phase by phase."""
    mlps = [r for r in report["rows"] if "phases" in r]
    if not mlps:
        return ""
    names = list(mlps[0]["phases"])
    lines = ["| workload | " + " | ".join(names) + " | epoch |", "|---|" + "---:|" * (len(names) + 1)]
    for r in mlps:
        lines.append(f"| {label(r['name'])} | " + " | ".join(ms(r["phases"][n]) for n in names)
                     + f" | {ms(r['handydl']['median'])} |")
    return "\n".join(lines)


def times(report, names=None):
    """Medians and handydl's ratios to each peer (and the slowdowns under load)."""
    lines = ["| workload | handydl | PyTorch | JAX | / PyTorch | / JAX |", "|---|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if names is not None and r["name"] not in names and not (names == "activations"
                                                                  and r["name"].endswith(ACTIVATION_ROW)):
            continue
        t = [ms(r[fw]["median"]) if fw in r else "-" for fw in FRAMEWORKS]
        vs = [f"{r['vs_' + fw]:.2f}" if "vs_" + fw in r else "-" for fw in ("torch", "jax")]
        if "slowdown" in r.get("handydl", {}):
            t = [f"{ms(r[fw]['median'])} ({r[fw]['slowdown']:.2f}×)" if "slowdown" in r.get(fw, {}) else c
                 for fw, c in zip(FRAMEWORKS, t)]
        lines.append(f"| {label(r['name'])} | {t[0]} | {t[1]} | {t[2]} | {vs[0]} | {vs[1]} |")
    return "\n".join(lines)


def load(report):
    """Each framework's batch-128 epoch with the other core quiet and kept busy,
    alternately in one process: both medians, and the median of the pairs' ratios."""
    rows = {r["name"]: r for r in report["rows"]}
    lines = ["| | quiet epoch | one core busy | slowdown (median of the pairs) |", "|---|---:|---:|---:|"]
    for name, fws in (("mlp_epoch_b128_under_load", FRAMEWORKS), ("mlp_epoch_b128_under_load_1_blas_thread", ("handydl",))):
        r = rows.get(name, {})
        for fw in fws:
            if "quiet" in r.get(fw, {}):       # (runs before the quiet epochs were paired: none)
                who = NAMES[fw] + (", NumPy's BLAS on 1 thread" if name.endswith("_1_blas_thread") else "")
                lines.append(f"| {who} | {ms(r[fw]['quiet'])} | {ms(r[fw]['median'])} | {r[fw]['slowdown']:.2f}× |")
    return "\n".join(lines) if len(lines) > 2 else ""


def machinery(report):
    rows = report.get("machinery", [])
    if not rows:
        return ""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["| workload | " + " | ".join("all on" if v == "all on" else f"without {v}" for v in variants) + " |",
             "|---|" + "---:|" * len(variants)]
    for base in dict.fromkeys(r["workload"] for r in rows):
        cells = {r["variant"]: r for r in rows if r["workload"] == base}
        lines.append(f"| {label(base)} | " + " | ".join(
            ms(cells[v]["median"]) if v == "all on" else f"{cells[v]['vs_all_on']:.2f}×" for v in variants) + " |")
    return "\n".join(lines)


README_ROWS = ("mlp_epoch_b32", "mlp_epoch_b128", "mlp_epoch_b512", "deep_mlp_gelu_adam_b128",
               "mlp_epoch_b128_under_load", "softmax_ce_4096x1000", "cnn_epoch_lenet_28x28_b64",
               "lstm_s64_b32_128x256", "gpt_step_l4_d128_h4_t64_b16")


def readme(report):
    """The README's one table: the training workloads, handydl against the fastest
    peer, and each MLP epoch against the machine's limit."""
    rows = {r["name"]: r for r in report["rows"]}
    lines = ["| workload | handydl | PyTorch | JAX | handydl / fastest | × limit: handydl, PyTorch, JAX |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in README_ROWS:
        r = rows.get(name)
        if r is None:
            continue
        t = [ms(r[fw]["median"]) if fw in r else "-" for fw in FRAMEWORKS]
        if "slowdown" in r.get("handydl", {}):
            t = [f"{c} ({r[fw]['slowdown']:.2f}×)" if "slowdown" in r.get(fw, {}) else c
                 for fw, c in zip(FRAMEWORKS, t)]
        peers = [fw for fw in FRAMEWORKS[1:] if fw in r]
        best = min(peers, key=lambda fw: r[fw]["median"])
        vs = f"{r['handydl']['median'] / r[best]['median']:.2f} ({NAMES[best]})"
        lim = ", ".join(f"{r[fw]['of_limit']:.1f}" if "of_limit" in r.get(fw, {}) else "-" for fw in FRAMEWORKS) \
            if "limit" in r else ""
        lines.append(f"| {label(name)} | {t[0]} | {t[1]} | {t[2]} | {vs} | {lim} |")
    return "\n".join(lines)


MLPS = [n for n in LABELS if n.startswith(("mlp", "deep"))]
OTHERS = [n for n in LABELS if n not in MLPS]
# what --fill writes after each "<!-- bench.table: NAME -->" line of a Markdown file
PARTS = {"readme": readme, "limits": limits_table, "phases": phases, "mlps": lambda r: times(r, MLPS),
         "others": lambda r: times(r, OTHERS), "activations": lambda r: times(r, "activations"),
         "load": load,
         "machinery": machinery,
         "targets": lambda r: "\n".join(["```"] + [check_line(c) for c in r["targets"]] + ["```"]),
         "pieces": lambda r: "\n".join("- " + pieces_line(row).strip() for row in r["rows"] if row.get("pieces"))}
MARKER = re.compile(r"<!-- bench\.table: ([\w-]+) -->")


def fill(report, text):
    """text with the block after every marker line (its lines up to the next
    blank one) replaced by that part of the report; the rest unchanged.  A
    marker inside a fenced code block is text, not a marker."""
    lines, out, i, fenced = text.split("\n"), [], 0, False
    while i < len(lines):
        out.append(lines[i])
        if lines[i].lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else MARKER.fullmatch(lines[i].strip())
        i += 1
        if m:
            if m[1] not in PARTS:
                raise ValueError(f"unknown bench.table part {m[1]!r} in a marker; expected one of {sorted(PARTS)}")
            while i < len(lines) and lines[i].strip():
                i += 1
            part = PARTS[m[1]](report)
            if part:                          # a run without that part: the marker stays alone
                out.extend(part.split("\n"))
    return "\n".join(out)


def main(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.table", description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", default="bench/results/bench.json")
    ap.add_argument("--fill", nargs="+", metavar="MARKDOWN",
                    help="rewrite the tables after the '<!-- bench.table: NAME -->' lines of these files")
    args = ap.parse_args(argv)
    with open(args.json, encoding="utf-8") as f:
        report = json.load(f)
    if args.fill:
        from handydl._io import atomic_path
        for path in args.fill:
            with open(path, encoding="utf-8", newline="") as f:       # line ends kept as they are
                text = f.read()
            new = fill(report, text.replace("\r\n", "\n"))
            if "\r\n" in text:
                new = new.replace("\n", "\r\n")
            if new != text:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(new.encode("utf-8"))
            print(f"{path}: {sum(1 for line in text.split(chr(10)) if MARKER.fullmatch(line.strip()))} parts")
        return
    for part in (readme(report), limits(report), phases(report), times(report, OTHERS), times(report, MLPS),
                 load(report), times(report, "activations"), machinery(report)):
        if part:
            print(part, end="\n\n")
    for c in report["targets"]:
        print(check_line(c))
    for r in report["rows"]:
        if r.get("pieces"):
            print(pieces_line(r))


if __name__ == "__main__":
    main(sys.argv[1:])
