"""The ``handydl`` command: one thin function per sub-command."""
from __future__ import annotations

import argparse
import math
import os
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

    names = [n.strip() for n in args.ops.split(",") if n.strip()] if args.ops else ops.names()
    selected = [ops.get(_choose("op", n, sorted(ops.names()))) for n in names]
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
    n_patterns = 0
    if not args.ops:                    # the composite patterns, as the ops: nn.EXAMPLES
        patterns = _check_patterns()
        n_patterns = len(patterns)
        rows += patterns
        failures += [f"{name}: {why}" for name, _, _, verdict, why in patterns if verdict != "ok"]
    failed = len(failures)
    total = len(rows)
    patterns = f" and {n_patterns} module patterns (also against the tape)" if n_patterns else ""
    print(f"\n{total - failed} of {total} gradient checks passed "
          f"({len(selected)} ops{patterns}, float64, central differences, eps=1e-6)")
    return 1 if failed else 0


def _check_patterns():
    """Gradcheck each composite of nn.EXAMPLES against finite differences and the tape;
    prints a table and returns its rows (name, err, tape err, verdict, failure)."""
    from . import nn
    from .check import gradcheck
    rows = []
    for name in nn.EXAMPLES:
        model, inputs = nn.example(name)
        numeric = gradcheck(model, *inputs, raise_exception=False)
        taped = gradcheck(model, *inputs, against="tape", raise_exception=False)
        bad = [r.failure_message() for r in (numeric, taped) if not r.passed]
        rows.append((name, f"{numeric.max_rel_err:.1e}", f"{taped.max_rel_err:.1e}",
                     "ok" if not bad else "FAILED", "; ".join(bad)))
    width = max(len(r[0]) for r in rows) + 2
    print(f"\n{'module pattern':<{width}}{'max rel err':>11}  {'vs tape':>9}  verdict")
    for name, err, tape_err, verdict, why in rows:
        print(f"{name:<{width}}{err:>11}  {tape_err:>9}  {verdict}")
    return rows


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


def _user_errors():
    """The exceptions that are the user's input, not a bug: one line, exit 2."""
    from .check.expr import ExprError
    from .checkpoint import CheckpointError
    from .data import DataError
    return UsageError, DataError, CheckpointError, ExprError


def _positive(kind, name):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number > 0, got {text!r}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text!r}")
        return value
    return parse


MAX_PARAMETERS = 50_000_000     # float32 weights 0.2 GB; with gradients and Adam's state about 1 GB
MAX_LAYERS = 64
MAX_SHAPE_ELEMENTS = 10_000     # per array of `handydl verify --shape`: derivatives check as well small


def _hidden(text):
    """--hidden: comma-separated layer sizes, each >= 1, at most MAX_LAYERS of
    them, refused at once when even a 1-feature, 1-output model of these
    sizes would exceed MAX_PARAMETERS."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden expects sizes like 128,64, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be >= 1, got {text!r}")
    if len(sizes) > MAX_LAYERS:
        raise argparse.ArgumentTypeError(f"--hidden has {len(sizes)} layers; the limit is {MAX_LAYERS}")
    least = mlp_parameters([1, *sizes, 1], batch_norm=False)
    if least > MAX_PARAMETERS:
        raise argparse.ArgumentTypeError(f"--hidden {text}: the model would have at least {least:,} parameters; "
                                         f"the limit is {MAX_PARAMETERS:,}")
    return sizes


def mlp_parameters(sizes, batch_norm):
    """The number of parameters of an MLP with these layer sizes (Linear weights
    and biases, and BatchNorm's scale and shift on every hidden layer)."""
    linear = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    return linear + (2 * sum(sizes[1:-1]) if batch_norm else 0)


def _check_model_size(sizes, batch_norm):
    """UsageError before anything is allocated when the model is over MAX_PARAMETERS."""
    n = mlp_parameters(sizes, batch_norm)
    if n > MAX_PARAMETERS:
        raise UsageError(f"the model {' -> '.join(map(str, sizes))} would have {n:,} parameters; the limit "
                         f"is {MAX_PARAMETERS:,} (about {MAX_PARAMETERS * 4 * 5 / 1e9:.0f} GB with gradients "
                         "and optimizer state); choose smaller --hidden sizes")


def _probability(name):
    """A flag's value as a float in [0, 1) (a dropout rate)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0 <= value < 1:                      # NaN fails this too
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1), got {text!r}")
        return value
    return parse


def _non_negative_int(name):
    """A flag's parser: an integer >= 0 (--seed, --index)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {text!r}")
        return value
    return parse


_seed = _non_negative_int("--seed")


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


GRADCHECK_ELEMENTS = 8      # per tensor, in the pre-training check of `handydl train`


def _gradcheck_line(model, loss_fn, X, y, task):
    """Gradcheck the model (Standardize, then the network) and the loss on a small
    float64 batch; one line of text."""
    from . import nn
    from .check import gradcheck
    xb, yb = X[:8].astype(np.float64), y[:8]
    if task == "regression":
        yb = yb.reshape(len(yb), -1)
    # Standardize divides by per-feature deviations as small as 1e-3 (digits' rare
    # pixels): a finite-difference step in x becomes a hundreds of times larger step
    # after it, enough to cross ReLU kinks.  So it is checked on its own, and the
    # rest of the model on its output: by the chain rule, both right means all right.
    standardize, body = model[0], nn.Sequential(*list(model)[1:])
    with nn.no_grad():
        xs = standardize(xb)
    # random projections over every weight, plus a few elements of each tensor one
    # by one: a bounded number of forwards whatever the model's size
    reports = [gradcheck(standardize, xb, raise_exception=False),
               gradcheck(body, xs, fast=True, elements=GRADCHECK_ELEMENTS, raise_exception=False)]
    with nn.no_grad():                  # the loss's input only: nothing kept for a backward
        out = model.eval()(xb)
    reports.append(gradcheck(loss_fn, out, yb, raise_exception=False))
    model.train()
    worst = max(r.max_rel_err for r in reports)
    ok = all(r.passed for r in reports)
    n = sum(len(r.entries) for r in reports)
    line = (f"gradient check (float64, {len(xb)} samples, {n} tensors, model + loss; random "
            f"projections + {GRADCHECK_ELEMENTS} random elements per tensor): "
            f"worst relative error {worst:.1e} -> {'ok' if ok else 'FAILED'}")
    if not ok:
        line += "\n" + "\n".join(r.failure_message() for r in reports if not r.passed)
    return line, ok


def cmd_train(args) -> int:
    """Train an MLP (default: on the embedded digits) and write checkpoint, history and curves.

    Exit status 1 when the gradient check fails or the run diverges (a NaN or
    infinite loss or weight): then nothing is written and files of an earlier
    run in --out stay as they were.  The four output files are published
    together (see _publish_run).
    """
    import time

    from . import manual_seed, nn, optim
    from ._io import STAGE_PREFIX, remove_stale_temps
    from .cli_gpt import blas_threads, resolve_defaults, train_gpt
    from .data import split
    from .train import evaluate, fit

    resolve_defaults(args)              # --lr, --epochs, --batch-size, --dropout: per model
    if args.model == "gpt":
        return train_gpt(args)
    threads = blas_threads(args.threads, asked=args.threads is not None)    # refused now, if it must be
    _choose("activation", args.activation, list(nn.ACTIVATIONS))
    _choose("optimizer", args.optimizer, list(optim.OPTIMIZERS))
    out = _writable_dir(args.out)
    for name in (STAGE_PREFIX[1:], MODEL_FILES["safetensors"]) + RUN_FILES:   # leftovers of killed runs
        remove_stale_temps(out, name)
    data = _load_data(args)
    start = time.perf_counter()
    manual_seed(args.seed)
    Xtr, ytr, Xval, yval = split(data.X_train, data.y_train, test_size=0.1, seed=args.seed,
                                 stratify=data.task == "classification")
    loader = _train_loader(args, Xtr, ytr)
    body, described = _model(args, data)
    model = nn.Sequential(nn.Standardize.fit(Xtr), body)
    loss_fn = nn.CrossEntropyLoss() if data.task == "classification" else nn.MSELoss()
    log = _Log()
    log(f"{data.name}: {data.task}, {len(Xtr)} train / {len(Xval)} validation / {len(data.X_test)} "
        f"test samples, {data.n_features} features" +
        (f", {data.n_outputs} classes" if data.task == "classification" else ""))
    log(f"model: {described}, {sum(p.data.size for p in model.parameters()):,} parameters")
    line, ok = _gradcheck_line(model, loss_fn, Xtr, ytr, data.task)
    log(line)
    if not ok:
        return 1
    opt_kwargs = {"lr": args.lr}
    if args.optimizer == "sgd":
        opt_kwargs["momentum"] = 0.9
    optimizer = optim.OPTIMIZERS[args.optimizer](model.parameters(), **opt_kwargs)
    from ._fast.malloc import tune_malloc
    tune_malloc()          # this process is a training run: reuse the step's large freed blocks
    with threads(), np.errstate(over="ignore", invalid="ignore"):     # a diverging run is reported below, once
        history = fit(model, loss_fn, optimizer, loader, args.epochs,
                      val_data=(Xval, yval) if len(Xval) else None,  # a tiny file may leave none
                      scheduler=optim.CosineAnnealingLR(optimizer, args.epochs),
                      progress=False if args.no_progress else None, log=log,
                      blas_threads="auto" if args.threads is None else None)   # None: threads() holds
        problem = _diverged(history, model)
        test = None if problem else evaluate(model, loss_fn, data.X_test, data.y_test)
    if test is not None and not math.isfinite(test["loss"]):
        problem = f"the test loss is {test['loss']}"
    if problem:
        _error(f"handydl train: error: the run diverged: {problem}. Nothing was written to {out} "
               f"(files of an earlier run there are unchanged); try a smaller --lr than {args.lr:g}")
        return 1
    if data.task == "classification":
        log(f"test accuracy: {test['acc']:.2%} ({len(data.X_test)} held-out samples), loss {test['loss']:.4f}")
    else:
        log(f"test MSE: {test['mse']:.4f}, R^2: {test['r2']:.4f} ({len(data.X_test)} held-out samples)")
    meta = {"dataset": data.name, "task": data.task, "classes": data.classes,
            "feature_names": data.feature_names, "test": test, "args": _jsonable(vars(args))}
    files = (MODEL_FILES[args.format],) + RUN_FILES[1:]
    _publish_run(out, model, meta, history, test, data.name, files[0])
    for other in set(MODEL_FILES.values()) - {files[0]}:    # an earlier run's model in the other format
        (out / other).unlink(missing_ok=True)
    log(f"wrote {', '.join(str(out / f) for f in files)} ({time.perf_counter() - start:.1f} s)")
    return 0


RUN_FILES = ("model.npz", "history.json", "history.csv", "curves.png")
MODEL_FILES = {"npz": "model.npz", "safetensors": "model.safetensors"}     # by --format
MODELS = ("mlp", "cnn", "resnet", "gpt")


def _model(args, data):
    """The network --model names, for the data's width, and a line describing it."""
    from . import nn
    from .nn import models
    _choose("model", args.model, MODELS)
    if args.model == "mlp":
        sizes = [data.n_features, *args.hidden, data.n_outputs]
        _check_model_size(sizes, args.batch_norm)
        return (nn.MLP(sizes, activation=args.activation, dropout=args.dropout,
                       batch_norm=args.batch_norm, rng=args.seed),
                f"{' -> '.join(map(str, sizes))} {args.activation} MLP")
    if data.task != "classification":
        raise UsageError(f"--model {args.model} classifies images; {data.name} is a {data.task} task")
    side = math.isqrt(data.n_features)
    if side * side != data.n_features:
        raise UsageError(f"--model {args.model} needs square one-channel images; {data.name} has "
                         f"{data.n_features} features, not a square number of pixels")
    shape = (1, side, side)
    try:
        if args.model == "cnn":
            net = models.lenet(shape, data.n_outputs, dropout=args.dropout, rng=args.seed)
        else:
            net = models.resnet(shape, data.n_outputs, rng=args.seed)
    except ValueError as e:             # an image too small for the network
        raise UsageError(f"--model {args.model}: {e}") from None
    return (nn.Sequential(nn.Unflatten(1, shape), net),
            f"{args.model} ({'LeNet-style' if args.model == 'cnn' else 'ResNet'}) on "
            f"{'x'.join(map(str, shape))} images")


def _diverged(history, model):
    """What makes a finished run unusable (a non-finite training loss or
    weight), or None."""
    for epoch, loss in zip(history["epoch"], history["train_loss"]):
        if not math.isfinite(loss):
            return f"the training loss became {loss} in epoch {epoch}"
    for name, value in model.state_dict().items():
        value = np.asarray(value)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return f"{name} holds non-finite values"
    return None


def _publish_run(out, model, meta, history, test, title, model_file="model.npz"):
    """Write the run's files into a hidden stage inside ``out``, then move them
    into place together (_io.staged_dir): an error or Ctrl-C before that leaves
    ``out`` as it was, and never a new model beside an old run's curves."""
    import json

    from . import checkpoint
    from ._io import staged_dir, write_text
    from .plot import save, training_curves
    with staged_dir(out) as stage:
        checkpoint.save(model, stage / model_file, meta=meta)
        # strict JSON: NaN and inf (a metric of constant targets, say) become null
        write_text(stage / "history.json", json.dumps(_finite_or_null({"history": history, "test": test}),
                                                      indent=1, allow_nan=False))
        keys = list(history)
        write_text(stage / "history.csv", ",".join(keys) + "\n" + "\n".join(
            ",".join(f"{history[k][i]:.6g}" for k in keys) for i in range(len(history["epoch"]))) + "\n")
        save(training_curves(history, title=title), stage / "curves.png")


def _finite_or_null(value):
    """``value`` (dicts, lists, numbers) with every NaN and infinity replaced by None."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Log:
    """Prints a run's log lines.  If standard output goes away (``| head``
    closed the pipe, a full disk), the run goes on without its log: training
    is not lost to a closed terminal."""

    def __init__(self):
        self.lost = False

    def __call__(self, line):
        if self.lost:
            return
        try:
            print(line, flush=True)
        except OSError as e:
            self.lost = True
            _silence_stdout()
            if not isinstance(e, BrokenPipeError):
                _error(f"handydl: standard output failed ({e.strerror or e}); going on without the log")


def _jsonable(d):
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def cmd_predict(args) -> int:
    """Predictions of a saved model for the rows of a CSV or .npz file, as CSV."""
    import csv
    import io

    from . import checkpoint
    from ._io import write_text
    from .data import read_table
    from .train import predict

    if args.out:
        _output_file("--out", args.out)
    model, meta = checkpoint.load(args.model, return_meta=True)
    meta = meta if isinstance(meta, dict) else {}
    table = read_table(args.data)
    names = _feature_names(meta, table, model, args.data)
    X = table.feature_matrix(names)
    out = predict(model, X)
    buf = io.StringIO()
    _write_predictions(csv.writer(buf, lineterminator="\n"), out, meta)
    if args.out:
        write_text(args.out, buf.getvalue())
        print(f"wrote {len(X)} predictions to {args.out}")
    else:
        _write_stdout(buf.getvalue())
    return 0


def cmd_export(args) -> int:
    """A checkpoint (.npz or .safetensors) as an ONNX file, for onnxruntime and other runtimes."""
    from . import checkpoint
    out = _output_file("OUT", args.out)
    model = checkpoint.load(args.model)
    if args.input_shape:
        shape = tuple(_floats(args.input_shape, "--input-shape"))
        if not all(n.is_integer() and n >= 1 for n in shape):
            raise UsageError(f"--input-shape {args.input_shape}: expected positive integers, e.g. 64 or 1,28,28")
        shape = tuple(int(n) for n in shape)
    else:
        width = _input_width(model)
        if width is None:
            raise UsageError(f"{args.model}: the model does not say its input width; give --input-shape "
                             "(one sample's shape, e.g. 64 or 1,28,28)")
        shape = (width,)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError("handydl export needs the onnx package: pip install onnx") from None
    from .interop import to_onnx
    try:
        to_onnx(model, out, shape, input_dtype=args.input_dtype)
    except (TypeError, ValueError) as e:            # a module ONNX cannot express: the model's, not a bug
        raise UsageError(f"{args.model}: {e}") from None
    print(f"wrote {out} (input 'input' of shape (N, {', '.join(map(str, shape))}), output 'output')")
    return 0


def _feature_names(meta, table, model, data_path):
    """The checkpoint's feature names (handydl train saves them), or, for a model
    saved from Python without them, every column of the data file in order."""
    names = meta.get("feature_names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    names = list(table.columns)
    width = _input_width(model)
    if width is not None and width != len(names):
        raise UsageError(f"{data_path}: {len(names)} columns, but the model takes {width} features (the "
                         "checkpoint names no feature columns, so every column of the file is used)")
    return names


def _input_width(model):
    """The number of input features of the model's first layer, where it says."""
    from . import nn
    for m in model.modules():
        if isinstance(m, nn.Standardize):
            return int(m.mean.shape[-1]) if m.mean.ndim else None
        if isinstance(getattr(m, "in_features", None), int):
            return m.in_features
    return None


def _write_predictions(w, out, meta):
    """CSV rows: the predicted class and its probabilities for a classifier
    (class names from the checkpoint, or 0, 1, ...), else the outputs."""
    from . import ops
    outputs = out.reshape(len(out), -1)
    if meta.get("task") == "classification":
        classes = meta.get("classes")
        if not (isinstance(classes, list) and len(classes) == outputs.shape[1]):
            classes = [str(i) for i in range(outputs.shape[1])]
        w.writerow(["prediction"] + [f"p_{c}" for c in classes])
        for row, probs in zip(outputs.argmax(axis=1), ops.softmax(outputs)):
            w.writerow([classes[row]] + [f"{v:.6g}" for v in probs])
    elif outputs.shape[1] == 1:
        w.writerow(["prediction"])
        w.writerows([[f"{v:.6g}"] for v in outputs[:, 0]])
    else:
        w.writerow([f"output_{j}" for j in range(outputs.shape[1])])
        w.writerows([[f"{v:.6g}" for v in row] for row in outputs])


def _floats(text, what):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} expects numbers separated by commas, got {text!r}") from None


def cmd_plot(args) -> int:
    """Activations with their derivatives, the softmax Jacobian as a heat map, or,
    with --model, a trained CNN's first-layer filters or one input's feature maps."""
    from . import ops, plot
    if args.model or args.filters or args.feature_maps:
        return _plot_model(args)
    for flag, value in (("--index", args.index is not None), ("--layer", args.layer),
                        ("--data", args.data)):
        if value:
            raise UsageError(f"{flag} goes with 'handydl plot --model FILE --feature-maps'")
    if args.name == "softmax" or args.logits:
        if args.name not in (None, "softmax"):
            raise UsageError("--logits goes with 'handydl plot softmax'")
        logits = _floats(args.logits or "2,1,0.1", "--logits")
        if len(logits) < 2 or not all(map(math.isfinite, logits)):
            raise UsageError(f"--logits expects at least 2 finite numbers, got {args.logits!r}")
        out = _image_path(args.out or "softmax_jacobian.png")
        fig = plot.softmax_jacobian(logits)
    else:
        names = ([args.name] if args.name else []) + (args.ops.split(",") if args.ops else [])
        names = [n.strip() for n in names if n.strip()]
        for n in names:
            if n not in ops.names("activation"):
                raise UsageError(f"unknown activation {n!r}; valid activations: "
                                 f"{', '.join(ops.names('activation'))} (or 'softmax' with --logits)")
        lo, hi = args.range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UsageError(f"--range {lo:g} {hi:g}: expected finite LO < HI")
        out = _image_path(args.out or "activations.png")
        fig = plot.activations(names or None, xrange=(lo, hi), second=args.second,
                               torch_reference=not args.no_torch)
    path = plot.save(fig, out)
    print(f"wrote {path}")
    return 0


def _plot_model(args):
    """handydl plot --model FILE --filters | --feature-maps [--index N | --data FILE] [--layer NAME]."""
    from . import checkpoint, plot
    if not args.model:
        raise UsageError(f"{'--filters' if args.filters else '--feature-maps'} needs --model FILE "
                         "(a checkpoint written by handydl train)")
    if args.filters == args.feature_maps:
        raise UsageError("--model goes with --filters or --feature-maps (one of them)")
    for flag, value in (("a name", args.name), ("--ops", args.ops), ("--logits", args.logits),
                        ("--second", args.second)):
        if value:
            raise UsageError(f"{flag} does not go with --model (it draws activations or the softmax Jacobian)")
    if args.filters:
        for flag, value in (("--index", args.index is not None), ("--layer", args.layer),
                            ("--data", args.data)):
            if value:
                raise UsageError(f"{flag} goes with --feature-maps, not --filters")
    out = _image_path(args.out or ("filters.png" if args.filters else "feature_maps.png"))
    model, meta = checkpoint.load(args.model, return_meta=True)
    meta = meta if isinstance(meta, dict) else {}
    try:
        name, conv = plot.first_conv(model)
        if args.filters:
            fig = plot.conv_filters(model)
            what = f"{min(conv.out_channels, 64)} filters of layer {name}"
        else:
            x, label = _plot_input(args, model, meta)
            fig = plot.feature_maps(model, x, layer=args.layer, label=label)
            what = f"feature maps of {label}"
    except plot.PlotInputError as e:
        raise UsageError(f"{args.model}: {e}") from None
    path = plot.save(fig, out)
    print(f"wrote {path} ({what})")
    return 0


def _plot_input(args, model, meta):
    """The input of --feature-maps and a line naming it: row --index (default 0) of
    --data FILE, or test sample --index of the dataset the checkpoint was trained on."""
    from .data import DataError, load_dataset, read_table
    index = 0 if args.index is None else args.index
    if args.data:
        table = read_table(args.data)
        X = table.feature_matrix(_feature_names(meta, table, model, args.data))
        where, label = f"{args.data} has {len(X)} rows", f"{args.data} row {index}"
        classes = None
    else:
        trained = meta.get("args") if isinstance(meta.get("args"), dict) else {}
        name = meta.get("dataset")
        if not isinstance(name, str) or trained.get("data"):
            raise UsageError(f"{args.model}: the checkpoint names no built-in dataset it was trained on; "
                             "give the input with --data FILE")
        seed = trained.get("seed") if isinstance(trained.get("seed"), int) else 0
        try:
            data = load_dataset(name, seed=seed, root=trained.get("data_dir"))
        except (FileNotFoundError, DataError) as e:
            raise UsageError(f"{args.model}: its dataset: {e}") from None
        X, classes = data.X_test, data.classes
        where, label = f"{name} has {len(X)} test samples", f"{name} test sample {index}"
        if classes and index < len(X):
            label += f" (class {classes[int(data.y_test[index])]})"
    if index >= len(X):
        raise UsageError(f"--index {index} is out of range: {where} (0..{len(X) - 1})")
    width = _input_width(model)
    if width is not None and X.shape[1] != width:
        raise UsageError(f"{args.model}: the model takes {width} features; the input has {X.shape[1]}")
    return X[index], label


_index = _non_negative_int("--index")


def _image_path(path):
    """``path`` if it names a .png, .svg or .pdf file that can be created."""
    from pathlib import Path
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise UsageError(f"--out {path}: unsupported image format {fmt or '(none)'!r}; "
                         "expected .png, .svg or .pdf")
    return _output_file("--out", path)


def _output_file(flag, path):
    """``path`` as a Path if a file can be written there: its directory exists and
    it is not itself a directory; else a UsageError naming the flag."""
    from pathlib import Path
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; expected a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")
    return path


def cmd_explain(args) -> int:
    """Formula, derivative, convention and step-by-step derivation of an op, in Unicode
    math in the terminal, every step checked as it prints (unless --no-check)."""
    from . import derivations, ops
    if args.all:
        _write_stdout(derivations.render_all(args.format))
        return 0
    names = ops.names() + list(derivations.COMPOSITES)      # ops and patterns such as residual
    if not args.name:
        raise UsageError(f"name an op, or --all; ops: {', '.join(names)}")
    text = derivations.explain(_choose("op", args.name, sorted(names)), args.format, check=not args.no_check)
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):          # a terminal without Unicode: say so, mark the rest
        print("handydl explain: this terminal's encoding cannot show Unicode math; "
              "set PYTHONIOENCODING=utf-8, or use --format latex", file=sys.stderr)
        sys.stdout.reconfigure(errors="replace")
    _write_stdout(text)
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
        size = math.prod(shapes[name.strip()])
        if size > MAX_SHAPE_ELEMENTS:
            raise UsageError(f"--shape {item!r}: {size:,} elements; the limit is {MAX_SHAPE_ELEMENTS:,} per "
                             "array (a derivative is checked as well on small shapes)")
    return shapes


MAX_GRADCHECK_ELEMENTS = 1_000_000     # per array of `handydl gradcheck --shape` (projections beyond 4,000)


def _gradcheck_shape(text):
    """--shape of `handydl gradcheck`: D1,D2,... each >= 1 (one input per --shape)."""
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape expects sizes like 4,3, got {text!r}") from None
    if any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"--shape sizes must be >= 1, got {text!r}")
    if math.prod(shape) > MAX_GRADCHECK_ELEMENTS:
        raise argparse.ArgumentTypeError(f"--shape {text}: {math.prod(shape):,} elements; the limit is "
                                         f"{MAX_GRADCHECK_ELEMENTS:,} per input")
    return shape


def _load_user_object(spec):
    """FILE.py:NAME -> the object NAME that FILE defines.  This runs FILE, as
    ``python FILE`` would (its folder first on sys.path, for its own imports):
    the user's own code, at their explicit request."""
    import importlib.util
    from pathlib import Path
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise UsageError(f"expected FILE.py:NAME (e.g. mymodule.py:MyFunction), got {spec!r}")
    file = Path(path)
    if file.suffix != ".py":
        raise UsageError(f"{path} is not a Python file (expected FILE.py:NAME)")
    if not file.is_file():
        raise UsageError(f"{path}: no such file")
    module_name = f"_handydl_user_{file.stem}"
    loader_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module           # dataclasses and pickling look their module up
    sys.path.insert(0, str(file.resolve().parent))
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        raise UsageError(f"loading {path} raised {type(e).__name__}: {e} (--debug shows the traceback)") from e
    finally:
        sys.path.remove(str(file.resolve().parent))
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == module_name)
        raise UsageError(f"{path} defines no {name!r}" + (f"; it defines {', '.join(defined)}" if defined else ""))
    return getattr(module, name)


def cmd_gradcheck(args) -> int:
    """Gradcheck a torch.autograd.Function, a torch or JAX function, or a handydl
    Module or op pair in the user's file, on random float64 inputs of the given
    shapes; exit 0 right, 1 wrong."""
    from .check import gradcheck
    from .nn import Module
    fn = _load_user_object(args.target)
    if isinstance(fn, type) and issubclass(fn, Module):
        fn = fn()
    rng = np.random.default_rng(args.seed)
    inputs = [rng.standard_normal(shape) for shape in args.shape]
    try:
        report = gradcheck(fn, *inputs, fast=args.fast, seed=args.seed, raise_exception=False)
    except Exception as e:          # the user's code (or what it returned) failed: one line
        raise UsageError(f"checking {args.target} raised {type(e).__name__}: {e} "
                         "(--debug shows the traceback)") from e
    print(report)
    return 0 if report.passed else 1


def cmd_verify(args) -> int:
    """Check a derivative someone wrote (FUNCTION CLAIM, --expr ...) or every step of a
    derivation document (FILE): exit 0 correct, 1 wrong, 2 unusable input, 3 out of time."""
    from .check.bounded import BudgetExceeded
    from .check.expr import ExprError
    from .check.verify import verify_derivative, verify_gradient, verify_relation
    if args.function and not args.claim_pos and not args.expr and os.path.isfile(args.function):
        return _verify_document(args)
    if args.json or args.html:
        raise UsageError("--json and --html report on a document: handydl verify FILE --json")
    timeout = args.timeout or DEFAULT_CHECK_SECONDS
    try:
        if args.expr:
            if args.function or args.claim_pos:
                raise UsageError("give either FUNCTION CLAIM or --expr/--wrt/--claim, not both")
            if not args.wrt:
                raise UsageError("--expr needs --wrt NAME (the variable to differentiate by)")
            verdicts = [(None, verify_gradient(args.expr, args.wrt, args.claim, _shapes(args.shape),
                                               let=args.let, cases=args.case, timeout=timeout))]
        elif args.function and not args.claim_pos and "=" in args.function.replace("==", ""):
            verdicts = verify_relation(args.function, var=args.var, timeout=timeout,
                                       shapes=_shapes(args.shape) if args.shape else None, let=args.let)
        else:
            if not (args.function and args.claim_pos):
                raise UsageError('expected FUNCTION and CLAIM, e.g. handydl verify "tanh(x)" "1 - tanh(x)^2", '
                                 'or one chain: handydl verify "\\frac{d}{dx} \\tanh x = 1 - \\tanh^2 x"')
            verdicts = [(None, verify_derivative(args.function, args.claim_pos, var=args.var or "x",
                                                 timeout=timeout))]
    except ExprError as e:
        raise UsageError(str(e)) from None
    except BudgetExceeded as e:
        print(f"OUT OF TIME: {e}" if e.kind == "time" else f"OUT OF MEMORY: {e}")
        return 3
    for side, verdict in verdicts:
        if side is not None and len(verdicts) > 1:
            print(f"= {side}")
        print(verdict)
    return 0 if all(v.correct for _, v in verdicts) else 1


DEFAULT_CHECK_SECONDS = 10.0    # one claim of `handydl verify` (a document: its own budget)


def _verify_document(args) -> int:
    """handydl verify FILE: every step of a derivation document (exit 0 none wrong, 1 one is,
    2 unusable input, 3 a check ran out of time)."""
    from ._io import write_text
    from .check.document import check_file
    try:
        report = check_file(args.function, total_seconds=args.timeout)
    except ValueError as e:                  # not UTF-8, too large
        raise UsageError(str(e)) from None
    if not report.steps:
        raise UsageError(f"{args.function}: no equation to check was found (math goes in $$...$$, "
                         "\\[...\\], $...$ or \\begin{align}/{equation})")
    if args.html:
        write_text(args.html, report.to_html())
    if args.json:
        print(report.to_json())
    else:
        from .check.report import render_text
        print(render_text(report, color=sys.stdout.isatty()))
    return report.exit_code


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


def cmd_info(args) -> int:
    """handydl info [--json] [--no-measure]: versions, BLAS, kernels, SIMD, an sgemm rate."""
    import json

    from . import info
    report = info.collect(measure=not args.no_measure)
    print(json.dumps(report, indent=1) if args.json else info.render(report))
    return 0


def _cmd_sample(args) -> int:
    from .cli_gpt import cmd_sample
    return cmd_sample(args)


def _shown(params):
    return {k: ("[...]" if isinstance(v, np.ndarray) else v) for k, v in params.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="handydl",
        description="Deep learning with hand-derived gradients, checked by machine.",
        epilog="exit status: 0 done, 1 a failed check, a diverged run or a file that could not be "
               "written, 2 bad input (one line on stderr), 130 interrupted (Ctrl-C)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of a one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("check", help="gradcheck every registered op and print a table")
    p.add_argument("--ops", help="comma-separated op names (default: all)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("gradcheck", help="gradcheck a torch.autograd.Function or a torch / JAX function "
                                         "in your own file (exit 0 right, 1 wrong)",
                       description="handydl gradcheck mymodule.py:MyFunction --shape 4,3 [--shape 3,2 ...]: "
                                   "NAME may be a torch.autograd.Function subclass, a function of torch "
                                   "tensors (autograd's backward), a JAX function (custom_vjp included), a "
                                   "handydl Module (a class is built without arguments) or a (forward, "
                                   "backward) pair; it gets one random float64 input per --shape.",
                       epilog="This runs FILE, as 'python FILE' would (its folder first on sys.path): use "
                              "it only for your own code. Exit status 0 when every gradient is right, "
                              "1 when one is wrong (the input, the element, the values and a hint are "
                              "printed), 2 for a missing file or name or code that fails to run.")
    p.add_argument("target", metavar="FILE.py:NAME", help="the file and the name defined in it")
    p.add_argument("--shape", action="append", type=_gradcheck_shape, required=True,
                   help="the shape of one input, e.g. 4,3 (repeat, in the order of the arguments)")
    p.add_argument("--seed", type=_seed, default=0, help="seed for the inputs and the projections (0)")
    p.add_argument("--fast", action="store_true",
                   help="random projections (and the culprit located) instead of the full Jacobian")
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("train", help="train an MLP, a CNN or a small GPT (default: an MLP on the embedded digits)",
                       epilog="Writes model.npz, history.json, history.csv and curves.png into --out, all "
                              "four together. Exit status 1 when the gradient check fails or the run "
                              "diverges (a NaN or infinite loss or weight; try a smaller --lr): nothing is "
                              "written then, and an earlier run's files in --out stay as they were. Ctrl-C "
                              "stops with exit status 130 and writes nothing. With --batch-norm, an epoch's "
                              "last batch is dropped when it would hold a single row.")
    p.add_argument("--dataset", default="digits",
                   help="digits (default), iris, breast_cancer, wine, moons, spirals, regression, "
                        "mnist, fashion_mnist")
    p.add_argument("--data", help="a CSV or .npz file of your own (with --target); with --model gpt a "
                                  "UTF-8 text file for a character-level language model")
    p.add_argument("--target", help="the column of --data to predict")
    p.add_argument("--task", choices=["classification", "regression"],
                   help="override the task inferred from the target")
    p.add_argument("--data-dir", help="where the MNIST / Fashion-MNIST IDX files are "
                                      "(default: $HANDYDL_CACHE/<name>, ~/.cache/handydl/<name>)")
    p.add_argument("--download", action="store_true", help="fetch MNIST files missing from the cache")
    p.add_argument("--model", default="mlp",
                   help="mlp (default), cnn (LeNet-style: two conv 3x3 + ReLU + max pool stages, "
                        "then two Linear) or resnet (a small ResNet of basic blocks); cnn and resnet "
                        "take square one-channel images (digits 8x8, MNIST 28x28); gpt (a small GPT: on "
                        "the sort task, 6 digits 0-9, or with --data FILE.txt on its characters)")
    p.add_argument("--hidden", type=_hidden, default=[256, 128],
                   help=f"hidden sizes (default 256,128); at most {MAX_LAYERS} layers and "
                        f"{MAX_PARAMETERS:,} parameters in all")
    p.add_argument("--activation", default="relu", help="any registered activation (default relu)")
    p.add_argument("--dropout", type=_probability("--dropout"), default=None,
                   help="dropout after each hidden layer, in [0, 1) (0.2; gpt: 0)")
    p.add_argument("--batch-norm", action="store_true",
                   help="BatchNorm1d after each hidden Linear (an epoch's last batch is dropped when it "
                        "would hold a single row)")
    p.add_argument("--optimizer", default="adamw", help="sgd (momentum 0.9), adam, adamw (default)")
    p.add_argument("--lr", type=_positive(float, "--lr"), default=None,
                   help="learning rate (2e-3; gpt: 3e-3, warmed up over 5%% of the steps, then a cosine to 0)")
    p.add_argument("--epochs", type=_positive(int, "--epochs"), default=None,
                   help="epochs (60; gpt: 10, an epoch of the sort task being 6,400 examples, of --data "
                        "as many windows as the text has characters)")
    p.add_argument("--batch-size", type=_positive(int, "--batch-size"), default=None,
                   help="batch size (32; gpt: 64)")
    for flag, default in (("--n-layer", "2; --data: 4"), ("--n-head", "4"), ("--n-embd", "64; --data: 128"),
                          ("--block-size", "--data only: 64")):
        p.add_argument(flag, type=_positive(int, flag), default=None,
                       help=f"--model gpt: {flag[2:].replace('-', ' ')} ({default})")
    p.add_argument("--threads", type=_positive(int, "--threads"), default=None,
                   help="threads of NumPy's BLAS while training (default: the fastest count, measured "
                        "step by step, handydl.blas_threads('auto'); --model gpt's sort task: 1, its "
                        "products being small)")
    p.add_argument("--seed", type=_seed, default=0, help="seed for the split, the weights and the batches")
    p.add_argument("--out", default="runs/latest", help="output directory (runs/latest)")
    p.add_argument("--format", choices=list(MODEL_FILES), default="npz",
                   help="checkpoint format: npz (model.npz, default) or safetensors (model.safetensors, "
                        "readable by the safetensors library; the architecture in its metadata); an "
                        "earlier run's model file in the other format is removed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plot", help="draw activations with their derivatives, the softmax Jacobian, "
                                    "or a trained CNN's filters and feature maps",
                       epilog="A CNN: handydl plot --model runs/latest/model.npz --filters (the first Conv2d's "
                              "filters) or --feature-maps [--index N | --data FILE] (the maps after its "
                              "activation, for test sample N of the checkpoint's dataset or row N of FILE)")
    p.add_argument("name", nargs="?", help="one activation, or 'softmax' for its Jacobian")
    p.add_argument("--ops", help="comma-separated activations (default: all)")
    p.add_argument("--range", nargs=2, type=float, default=[-5.0, 5.0], metavar=("LO", "HI"))
    p.add_argument("--second", action="store_true", help="also draw f''")
    p.add_argument("--logits", help="logits for the softmax Jacobian (default 2,1,0.1)")
    p.add_argument("--no-torch", action="store_true", help="no PyTorch reference curve")
    p.add_argument("--model", help="a checkpoint with a Conv2d (handydl train --model cnn writes one)")
    p.add_argument("--filters", action="store_true", help="the first Conv2d's filters, as images")
    p.add_argument("--feature-maps", action="store_true",
                   help="one input's feature maps after the first Conv2d and its activation")
    p.add_argument("--index", type=_index, help="--feature-maps: which test sample (or row of --data); 0")
    p.add_argument("--data", help="--feature-maps: a CSV or .npz file of inputs (default: the "
                                  "checkpoint's dataset)")
    p.add_argument("--layer", help="--feature-maps: another layer, by its dotted name (e.g. 1.1.3)")
    p.add_argument("--out", help="output file: .png, .svg or .pdf (default activations.png, "
                                 "softmax_jacobian.png, filters.png or feature_maps.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("explain", help="formula, derivative and step-by-step derivation of an op")
    p.add_argument("name", nargs="?", help="a registered op")
    p.add_argument("--all", action="store_true", help="every op that has a derivation")
    p.add_argument("--format", choices=["text", "markdown", "latex"], default="text")
    p.add_argument("--no-check", action="store_true",
                   help="do not run the checks of the steps (say how the test suite checks them); "
                        "--all never runs them")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("verify", help="check a derivative you wrote, in plain math or LaTeX "
                                      "(exit 0 correct, 1 wrong, 2 unusable input, 3 out of time)",
                       description='scalar: handydl verify "tanh(x)" "1 - tanh(x)^2" (or LaTeX: '
                                   '"\\frac{d}{dx}\\tanh x = 1 - \\tanh^2 x"); arrays: '
                                   'handydl verify --expr "sum((X @ W)^2)" --wrt W '
                                   '--claim "2 X^T (X W)" --shape X=3,4 --shape W=4,2',
                       epilog="exit status: 0 correct, 1 wrong, 2 unusable input, 3 out of time or memory")
    p.add_argument("function", nargs="?", help="a scalar function of --var, a whole chain "
                                                "d/dx f = claim = claim ..., or a derivation document "
                                                "(Markdown, LaTeX or text) whose every step is checked")
    p.add_argument("claim_pos", nargs="?", metavar="claim", help="its claimed derivative")
    p.add_argument("--var", default=None, help="the variable (default x, or the one of d/dx)")
    p.add_argument("--expr", help="a scalar (or vector) expression of named arrays")
    p.add_argument("--wrt", help="the array to differentiate by")
    p.add_argument("--claim", help="the claimed gradient (or Jacobian)")
    p.add_argument("--case", action="append", help="a Jacobian case 'CONDITION: EXPR' in i, j (repeat)")
    p.add_argument("--shape", action="append", help="NAME=D1,D2 for each array (repeat)")
    p.add_argument("--let", action="append", help="'NAME = EXPR' definitions, in order (repeat)")
    p.add_argument("--json", action="store_true", help="a document: print {\"steps\": [...]} as JSON")
    p.add_argument("--html", metavar="FILE", help="a document: also write an HTML report (math drawn as SVG)")
    p.add_argument("--timeout", type=_positive(float, "--timeout"), default=None,
                   help=f"seconds one claim may take before it is stopped (default {DEFAULT_CHECK_SECONDS:g}); "
                        "a document: seconds for the whole check (exit 3 when steps ran out of time)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("bench", help="handydl vs PyTorch vs JAX on this CPU (runs python -m bench)")
    p.add_argument("--quick", action="store_true", help="smaller workloads, under a minute")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="what this machine gives handydl: versions, BLAS and its threads, "
                                    "fused kernels, SIMD, a measured sgemm rate")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.add_argument("--no-measure", action="store_true", help="skip the one-second sgemm measurement")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="write a checkpoint as an ONNX model (onnxruntime and other runtimes)",
                       epilog="The model is exported for inference (Dropout off, BatchNorm's running "
                              "statistics), in float32, with a dynamic batch dimension. Example: handydl "
                              "export runs/latest/model.npz model.onnx")
    p.add_argument("model", help="a checkpoint, .npz or .safetensors (handydl train writes one)")
    p.add_argument("out", help="the ONNX file to write")
    p.add_argument("--input-shape", help="one sample's shape without the batch, e.g. 64 or 1,28,28 "
                                         "(default: the model's input width)")
    p.add_argument("--input-dtype", choices=["float32", "int64"], default="float32",
                   help="float32 (default), or int64 for a model that takes token ids (an Embedding first)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sample", help="text from a GPT trained on a text file, or a sort model's answer",
                       epilog="A character model prints --prompt and --tokens characters after it; a sort "
                              "model prints its answer to --prompt (6 digits, e.g. '3 1 4 1 5 9'; default: a "
                              "held-out sequence), greedy unless --temperature or --top-k is given. "
                              "--top-k 1 is greedy decoding.")
    p.add_argument("--model", required=True, help="a checkpoint written by handydl train --model gpt")
    p.add_argument("--prompt", help="the text to continue (default: a newline), or the digits to sort")
    p.add_argument("--tokens", type=_positive(int, "--tokens"), help="characters to generate (200)")
    p.add_argument("--temperature", type=_positive(float, "--temperature"),
                   help="divides the logits before sampling, > 0 (1.0)")
    p.add_argument("--top-k", type=_positive(int, "--top-k"), help="sample among the k likeliest tokens only")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the sampling (0)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("predict", help="predict with a saved model, as CSV")
    p.add_argument("--model", required=True, help="a checkpoint written by handydl train, .npz or "
                   ".safetensors (or checkpoint.save; without saved feature names every column of --data is a feature)")
    p.add_argument("--data", required=True, help="a CSV or .npz file with the model's feature columns")
    p.add_argument("--out", help="output CSV (default: standard output)")
    p.set_defaults(func=cmd_predict)
    return parser


def _math_arguments(argv):
    """`handydl verify "cos(x)" "-sin(x)"`: a math argument that starts with '-' is
    not an option.  argparse reads any word with a space as a value, so such words
    get a leading space (the math parser strips it)."""
    if "verify" not in argv[:2]:
        return argv
    out = []
    for a in argv:
        is_flag = a.startswith("--") or a in ("-h",) or not a.startswith("-")
        out.append(a if is_flag else " " + a)
    return out


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported in one line (and exit status 2)."""

    def error(self, message):
        _error(f"{self.prog}: error: {message} (see: {self.prog} --help)")
        raise SystemExit(2)


def _error(line):
    """One line on standard error (which may itself be closed)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _silence_stdout():
    """Point standard output at /dev/null: what is still buffered, and any
    later print, goes nowhere instead of failing again at exit."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _write_stdout(text):
    """Write ``text`` to standard output; a full disk or a device error there
    becomes an OSError that names standard output."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OSError(e.errno, e.strerror, "standard output") from None


def main(argv=None) -> int:
    """Run one sub-command and return its exit status: 0 done, 1 a failed check,
    a diverged run or a file that could not be written, 2 bad input (one line on
    stderr), 130 interrupted by Ctrl-C.  ``--debug`` shows the traceback
    instead of the one-line message."""
    try:
        parser = build_parser()
        args = parser.parse_args(_math_arguments(sys.argv[1:] if argv is None else list(argv)))
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
    except KeyboardInterrupt:
        _error("handydl: interrupted")
        return 130
    name = f"handydl {args.command}"
    try:
        status = args.func(args)
        _write_stdout("")
        return status
    except KeyboardInterrupt:                # Ctrl-C: no file was left half-written (see _io)
        if args.debug:
            raise
        _error(f"{name}: interrupted")
        return 130
    except BrokenPipeError:                  # `handydl ... | head`: the reader left; stop quietly
        _silence_stdout()
        return 1
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, _user_errors()):    # bad names, values, files: a message, not a traceback
            _error(f"{name}: error: {e}")
            return 2
        if isinstance(e, OSError):           # the system refused: a disk full, a permission
            _silence_stdout()
            where = f"{e.filename}: " if e.filename else ""
            _error(f"{name}: error: {where}{e.strerror or e}")
            return 1
        raise                                # anything else is a bug: show the traceback


if __name__ == "__main__":
    sys.exit(main())
