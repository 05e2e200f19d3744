"""The ``handydl`` command: one thin function per sub-command."""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _check_cases(op):
    """(params, inputs) on which `handydl check` gradchecks one op, kinks included."""
    rng = np.random.default_rng(0)
    for params in ({},) + tuple(op.test_params):
        inputs = op.sample(rng, np.float64, *op.domains[0])
        if op.kinks:        # put every kink into the sample, so the convention is checked too
            x = inputs[0].copy()
            x.flat[:len(op.kinks)] = op.kinks
            inputs = (x,) + tuple(inputs[1:])
        yield params, inputs


def cmd_check(args) -> int:
    """Gradcheck every registered op (or --ops) in float64 and print a table."""
    from . import ops
    from .check import gradcheck

    names = args.ops.split(",") if args.ops else ops.names()
    selected = [ops.get(n.strip()) for n in names]
    rows, failures = [], []
    for op in selected:
        for params, inputs in _check_cases(op):
            report = gradcheck(op, *inputs, params=op.bind(params), raise_exception=False)
            kinks = sum(len(e.kinks) for e in report.entries)
            convention = op.convention if op.kinks else ""
            rows.append((op.describe(_shown(params)), f"{report.max_rel_err:.1e}", str(kinks),
                         "ok" if report.passed else "FAILED", convention))
            if not report.passed:
                failures.append(f"{op.name}: {report.failure_message()}")
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'op':<{width}}{'max rel err':>11}  {'kinks':<6}{'verdict':<9}convention at kinks")
    for name, err, kinks, verdict, convention in rows:
        print(f"{name:<{width}}{err:>11}  {kinks:<6}{verdict:<9}{convention}")
    for f in failures:
        print("  " + f)
    failed = len(failures)
    total = len(rows)
    print(f"\n{total - failed} of {total} gradient checks passed "
          f"({len(selected)} ops, float64, central differences, eps=1e-6)")
    return 1 if failed else 0


def _shown(params):
    return {k: ("[...]" if isinstance(v, np.ndarray) else v) for k, v in params.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handydl",
        description="Deep learning with hand-derived gradients, checked by machine.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("check", help="gradcheck every registered op and print a table")
    p.add_argument("--ops", help="comma-separated op names (default: all)")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ValueError as e:            # bad names or values: a message, not a traceback
        print(f"handydl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
