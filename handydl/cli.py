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


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


def _positive(kind, name):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text!r}")
        return value
    return parse


def _hidden(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden expects sizes like 128,64, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be >= 1, got {text!r}")
    return sizes


def _choose(kind, value, valid):
    if value not in valid:
        raise UsageError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")
    return value


def _writable_dir(path):
    """Create ``path`` and prove it writable now, before any training."""
    import tempfile
    from pathlib import Path
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe"):
            pass
    except OSError as e:
        raise UsageError(f"output directory {out} is not writable ({e.strerror or e})") from None
    return out


def _load_data(args):
    """The Dataset the flags name, checked completely (data.check_dataset);
    any problem with it is a UsageError naming the file."""
    from .data import DataError, load_dataset, load_table
    if args.data:
        if not args.target:
            raise UsageError("--data needs --target NAME (the column to predict)")
        try:
            return load_table(args.data, args.target, task=args.task, seed=args.seed)
        except DataError as e:
            raise UsageError(str(e)) from None
    if args.target:
        raise UsageError("--target goes with --data FILE")
    try:
        return load_dataset(args.dataset, seed=args.seed, root=args.data_dir, download=args.download)
    except (FileNotFoundError, DataError) as e:
        raise UsageError(str(e)) from None


def _train_loader(args, X, y):
    """Shuffled mini-batches.  With --batch-norm the last batch of an epoch is
    dropped when it would hold a single row (batch statistics of one row are
    undefined); the shuffle makes it a different row each epoch."""
    from .data import DataLoader
    if args.batch_norm and (args.batch_size < 2 or len(X) < 2):
        raise UsageError(f"--batch-norm needs batches of at least 2 rows; got --batch-size "
                         f"{args.batch_size} and {len(X)} training rows")
    drop_last = args.batch_norm and len(X) % args.batch_size == 1
    return DataLoader(X, y, args.batch_size, shuffle=True, seed=args.seed, drop_last=drop_last)


def _gradcheck_line(model, loss_fn, X, y, task):
    """Gradcheck the model and the loss on a small float64 batch; one line of text."""
    from .check import gradcheck
    xb, yb = X[:8].astype(np.float64), y[:8]
    if task == "regression":
        yb = yb.reshape(len(yb), -1)
    reports = [gradcheck(model, xb, fast=True, raise_exception=False)]
    reports.append(gradcheck(loss_fn, model.eval()(xb), yb, raise_exception=False))
    model.train()
    worst = max(r.max_rel_err for r in reports)
    ok = all(r.passed for r in reports)
    n = sum(len(r.entries) for r in reports)
    line = (f"gradient check (float64, {len(xb)} samples, {n} tensors, model + loss): "
            f"worst relative error {worst:.1e} -> {'ok' if ok else 'FAILED'}")
    if not ok:
        line += "\n" + "\n".join(r.failure_message() for r in reports if not r.passed)
    return line, ok


def cmd_train(args) -> int:
    """Train an MLP (default: on the embedded digits) and write checkpoint, history and curves."""
    import json
    import time

    from . import checkpoint, manual_seed, nn, optim
    from ._io import write_text
    from .data import split
    from .train import evaluate, fit

    _choose("activation", args.activation, list(nn.ACTIVATIONS))
    _choose("optimizer", args.optimizer, list(optim.OPTIMIZERS))
    out = _writable_dir(args.out)
    data = _load_data(args)
    start = time.perf_counter()
    manual_seed(args.seed)
    Xtr, ytr, Xval, yval = split(data.X_train, data.y_train, test_size=0.1, seed=args.seed,
                                 stratify=data.task == "classification")
    loader = _train_loader(args, Xtr, ytr)
    model = nn.Sequential(nn.Standardize.fit(Xtr),
                          nn.MLP([data.n_features, *args.hidden, data.n_outputs], activation=args.activation,
                                 dropout=args.dropout, batch_norm=args.batch_norm, rng=args.seed))
    loss_fn = nn.CrossEntropyLoss() if data.task == "classification" else nn.MSELoss()
    print(f"{data.name}: {data.task}, {len(Xtr)} train / {len(Xval)} validation / {len(data.X_test)} "
          f"test samples, {data.n_features} features" +
          (f", {data.n_outputs} classes" if data.task == "classification" else ""))
    print(f"model: {' -> '.join(map(str, [data.n_features, *args.hidden, data.n_outputs]))} "
          f"{args.activation} MLP, {sum(p.data.size for p in model.parameters()):,} parameters")
    line, ok = _gradcheck_line(model, loss_fn, Xtr, ytr, data.task)
    print(line)
    if not ok:
        return 1
    opt_kwargs = {"lr": args.lr}
    if args.optimizer == "sgd":
        opt_kwargs["momentum"] = 0.9
    optimizer = optim.OPTIMIZERS[args.optimizer](model.parameters(), **opt_kwargs)
    history = fit(model, loss_fn, optimizer, loader, args.epochs,
                  val_data=(Xval, yval) if len(Xval) else None,      # a tiny file may leave no validation rows
                  scheduler=optim.CosineAnnealingLR(optimizer, args.epochs),
                  progress=False if args.no_progress else None)
    test = evaluate(model, loss_fn, data.X_test, data.y_test)
    if data.task == "classification":
        print(f"test accuracy: {test['acc']:.2%} ({len(data.X_test)} held-out samples), loss {test['loss']:.4f}")
    else:
        print(f"test MSE: {test['mse']:.4f}, R^2: {test['r2']:.4f} ({len(data.X_test)} held-out samples)")
    meta = {"dataset": data.name, "task": data.task, "classes": data.classes,
            "feature_names": data.feature_names, "test": test, "args": _jsonable(vars(args))}
    checkpoint.save(model, out / "model.npz", meta=meta)
    write_text(out / "history.json", json.dumps({"history": history, "test": test}, indent=1))
    keys = list(history)
    write_text(out / "history.csv", ",".join(keys) + "\n" + "\n".join(
        ",".join(f"{history[k][i]:.6g}" for k in keys) for i in range(len(history["epoch"]))) + "\n")
    from .plot import save, training_curves
    save(training_curves(history, title=data.name), out / "curves.png")
    print(f"wrote {out / 'model.npz'}, {out / 'history.json'}, {out / 'history.csv'}, "
          f"{out / 'curves.png'} ({time.perf_counter() - start:.1f} s)")
    return 0


def _jsonable(d):
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def cmd_predict(args) -> int:
    """Predictions of a saved model for the rows of a CSV or .npz file, as CSV."""
    import csv
    import io

    from . import checkpoint, ops
    from ._io import write_text
    from .data import DataError, read_table
    from .train import predict

    try:
        model, meta = checkpoint.load(args.model, return_meta=True)
        X = read_table(args.data).feature_matrix(meta["feature_names"])
    except (checkpoint.CheckpointError, DataError) as e:
        raise UsageError(str(e)) from None
    out = predict(model, X)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if meta.get("task") == "classification":
        classes = meta["classes"]
        p = ops.softmax(out)
        w.writerow(["prediction"] + [f"p_{c}" for c in classes])
        for row, probs in zip(out.argmax(axis=1), p):
            w.writerow([classes[row]] + [f"{v:.6g}" for v in probs])
    else:
        w.writerow(["prediction"])
        w.writerows([[f"{v:.6g}"] for v in out.reshape(-1)])
    if args.out:
        write_text(args.out, buf.getvalue())
        print(f"wrote {len(X)} predictions to {args.out}")
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def _floats(text, what):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} expects numbers separated by commas, got {text!r}") from None


def cmd_plot(args) -> int:
    """Activations with their derivatives, or the softmax Jacobian as a heat map."""
    from . import ops, plot
    if args.name == "softmax" or args.logits:
        if args.name not in (None, "softmax"):
            raise UsageError("--logits goes with 'handydl plot softmax'")
        logits = _floats(args.logits or "2,1,0.1", "--logits")
        fig = plot.softmax_jacobian(logits)
        out = args.out or "softmax_jacobian.png"
    else:
        names = ([args.name] if args.name else []) + (args.ops.split(",") if args.ops else [])
        names = [n.strip() for n in names if n.strip()]
        for n in names:
            if n not in ops.names("activation"):
                raise UsageError(f"unknown activation {n!r}; valid activations: "
                                 f"{', '.join(ops.names('activation'))} (or 'softmax' with --logits)")
        fig = plot.activations(names or None, xrange=tuple(args.range), second=args.second,
                               torch_reference=not args.no_torch)
        out = args.out or "activations.png"
    path = plot.save(fig, out)
    print(f"wrote {path}")
    return 0


def cmd_explain(args) -> int:
    """Formula, derivative, convention and step-by-step derivation of an op."""
    from . import derivations, ops
    if args.all:
        sys.stdout.write(derivations.render_all(args.format))
        return 0
    if not args.name:
        raise UsageError(f"name an op, or --all; ops: {', '.join(ops.names())}")
    sys.stdout.write(derivations.explain(args.name, args.format))
    return 0


def _shapes(items):
    shapes = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name.strip().isidentifier():
                raise ValueError
            shapes[name.strip()] = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            raise UsageError(f"--shape {item!r}: expected NAME=D1,D2 (e.g. X=3,4)") from None
        if any(d < 1 for d in shapes[name.strip()]):
            raise UsageError(f"--shape {item!r}: dimensions must be >= 1")
    return shapes


def cmd_verify(args) -> int:
    """Check a derivative someone wrote: exit 0 correct, 1 wrong, 2 unusable input."""
    from .check.expr import ExprError
    from .check.verify import verify_derivative, verify_gradient
    try:
        if args.expr:
            if args.function or args.claim_pos:
                raise UsageError("give either FUNCTION CLAIM or --expr/--wrt/--claim, not both")
            if not args.wrt:
                raise UsageError("--expr needs --wrt NAME (the variable to differentiate by)")
            verdict = verify_gradient(args.expr, args.wrt, args.claim, _shapes(args.shape),
                                      let=args.let, cases=args.case)
        else:
            if not (args.function and args.claim_pos):
                raise UsageError('expected FUNCTION and CLAIM, e.g. handydl verify "tanh(x)" "1 - tanh(x)**2"')
            verdict = verify_derivative(args.function, args.claim_pos, var=args.var)
    except ExprError as e:
        raise UsageError(str(e)) from None
    print(verdict)
    return 0 if verdict.correct else 1


def cmd_bench(args) -> int:
    """Run bench/ (python -m bench) from a checkout: PyTorch and JAX stay out of the library."""
    import subprocess
    from pathlib import Path
    here = Path(__file__).resolve().parent.parent
    for root in (Path.cwd(), here):
        if (root / "bench" / "__main__.py").is_file():
            extra = ["--quick"] if args.quick else []
            return subprocess.call([sys.executable, "-m", "bench", *extra], cwd=root)
    raise UsageError("the benchmark lives in bench/ of a handydl checkout; run this from the checkout "
                     "(or: python -m bench there)")


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

    p = sub.add_parser("train", help="train an MLP (default: the embedded digits data)")
    p.add_argument("--dataset", default="digits",
                   help="digits (default), iris, breast_cancer, wine, moons, spirals, regression, "
                        "mnist, fashion_mnist")
    p.add_argument("--data", help="a CSV or .npz file of your own (with --target)")
    p.add_argument("--target", help="the column of --data to predict")
    p.add_argument("--task", choices=["classification", "regression"],
                   help="override the task inferred from the target")
    p.add_argument("--data-dir", help="where the MNIST / Fashion-MNIST IDX files are "
                                      "(default: $HANDYDL_CACHE/<name>, ~/.cache/handydl/<name>)")
    p.add_argument("--download", action="store_true", help="fetch MNIST files missing from the cache")
    p.add_argument("--hidden", type=_hidden, default=[256, 128], help="hidden sizes (default 256,128)")
    p.add_argument("--activation", default="relu", help="any registered activation (default relu)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout after each hidden layer (0.2)")
    p.add_argument("--batch-norm", action="store_true", help="BatchNorm1d after each hidden Linear (an epoch's last batch is "
                        "dropped when it would hold a single row)")
    p.add_argument("--optimizer", default="adamw", help="sgd (momentum 0.9), adam, adamw (default)")
    p.add_argument("--lr", type=_positive(float, "--lr"), default=2e-3, help="learning rate (2e-3)")
    p.add_argument("--epochs", type=_positive(int, "--epochs"), default=60, help="epochs (60)")
    p.add_argument("--batch-size", type=_positive(int, "--batch-size"), default=32, help="batch size (32)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the weights and the batches")
    p.add_argument("--out", default="runs/latest", help="output directory (runs/latest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plot", help="draw activations with their derivatives, or the softmax Jacobian")
    p.add_argument("name", nargs="?", help="one activation, or 'softmax' for its Jacobian")
    p.add_argument("--ops", help="comma-separated activations (default: all)")
    p.add_argument("--range", nargs=2, type=float, default=[-5.0, 5.0], metavar=("LO", "HI"))
    p.add_argument("--second", action="store_true", help="also draw f''")
    p.add_argument("--logits", help="logits for the softmax Jacobian (default 2,1,0.1)")
    p.add_argument("--no-torch", action="store_true", help="no PyTorch reference curve")
    p.add_argument("--out", help="output file: .png, .svg or .pdf")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("explain", help="formula, derivative and step-by-step derivation of an op")
    p.add_argument("name", nargs="?", help="a registered op")
    p.add_argument("--all", action="store_true", help="every op that has a derivation")
    p.add_argument("--format", choices=["text", "markdown", "latex"], default="text")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("verify", help="check a derivative you wrote (exit 0 correct, 1 wrong, 2 unusable)",
                       description='scalar: handydl verify "tanh(x)" "1 - tanh(x)**2"; arrays: '
                                   'handydl verify --expr "sum((X @ W)**2)" --wrt W '
                                   '--claim "2 * X.T @ (X @ W)" --shape X=3,4 --shape W=4,2')
    p.add_argument("function", nargs="?", help="a scalar function of --var")
    p.add_argument("claim_pos", nargs="?", metavar="claim", help="its claimed derivative")
    p.add_argument("--var", default="x", help="the variable (default x)")
    p.add_argument("--expr", help="a scalar (or vector) expression of named arrays")
    p.add_argument("--wrt", help="the array to differentiate by")
    p.add_argument("--claim", help="the claimed gradient (or Jacobian)")
    p.add_argument("--case", action="append", help="a Jacobian case 'CONDITION: EXPR' in i, j (repeat)")
    p.add_argument("--shape", action="append", help="NAME=D1,D2 for each array (repeat)")
    p.add_argument("--let", action="append", help="'NAME = EXPR' definitions, in order (repeat)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("bench", help="handydl vs PyTorch vs JAX on this CPU (runs python -m bench)")
    p.add_argument("--quick", action="store_true", help="smaller workloads, under a minute")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("predict", help="predict with a saved model, as CSV")
    p.add_argument("--model", required=True, help="a checkpoint written by handydl train")
    p.add_argument("--data", required=True, help="a CSV or .npz file with the model's feature columns")
    p.add_argument("--out", help="output CSV (default: standard output)")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UsageError, ValueError) as e:   # bad names or values: a message, not a traceback
        print(f"handydl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:                  # `handydl ... | head`: the reader left; stop quietly
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
