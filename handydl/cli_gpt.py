"""``handydl train --model gpt`` and ``handydl sample``: a small GPT on the sort
task (handydl.data.sequences.SortTask) or on the characters of a text file.

Every flag is checked before anything is built or written; a run that
diverges writes nothing, as ``handydl train`` of an MLP.
"""
from __future__ import annotations

import math

import numpy as np

from .cli import (MAX_PARAMETERS, MODEL_FILES, RUN_FILES, UsageError, _choose, _diverged, _error, _Log,
                  _publish_run, _write_stdout, _writable_dir, _jsonable)

# an epoch of the sort task: this many freshly drawn examples (100 steps at batch 64)
EPOCH_EXAMPLES = 6400
# per model kind, what --lr, --epochs, --batch-size and --dropout mean when not given
TRAIN_DEFAULTS = {"gpt": dict(lr=3e-3, epochs=10, batch_size=64, dropout=0.0),
                  "other": dict(lr=2e-3, epochs=60, batch_size=32, dropout=0.2)}
SORT_ARCH = dict(n_layer=2, n_head=4, n_embd=64)                  # the sort task's GPT
TEXT_ARCH = dict(n_layer=4, n_head=4, n_embd=128, block_size=64)  # a character model's
GPT_FLAGS = ("n_layer", "n_head", "n_embd", "block_size")
MAX_BLOCK = 2048
MAX_ATTENTION_BYTES = 2 * 2**30     # the attention weights one training step keeps for backward
MAX_SAMPLE_TOKENS = 100_000


def resolve_defaults(args):
    """Fill the flags left unset with the defaults of --model's kind."""
    kind = "gpt" if args.model == "gpt" else "other"
    for k, v in TRAIN_DEFAULTS[kind].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.model != "gpt":
        for k in GPT_FLAGS:
            if getattr(args, k) is not None:
                raise UsageError(f"--{k.replace('_', '-')} goes with --model gpt")


def _refuse_mlp_flags(args):
    """The flags of the table models mean nothing to a GPT: refuse them, naming them."""
    given = [("--dataset", args.dataset != "digits"), ("--target", args.target), ("--task", args.task),
             ("--data-dir", args.data_dir), ("--download", args.download),
             ("--hidden", args.hidden != [256, 128]), ("--activation", args.activation != "relu"),
             ("--batch-norm", args.batch_norm)]
    for flag, value in given:
        if value:
            raise UsageError(f"{flag} goes with --model mlp, cnn or resnet; --model gpt trains on the sort "
                             "task, or on a text file with --data FILE.txt")


def gpt_parameters(vocab, block, n_layer, n_embd, tie_weights=True):
    """Parameters of nn.GPT: token and position embeddings, per block two LayerNorms
    (2 d each), the attention's packed in-projection (3 d^2 + 3 d) and out-projection
    (d^2 + d), the MLP (4 d^2 + 4 d and 4 d^2 + d); the final LayerNorm; an untied head."""
    d = n_embd
    per_block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return vocab * d + block * d + n_layer * per_block + 2 * d + (0 if tie_weights else vocab * d)


def _architecture(args, vocab, fixed_block=None):
    """{n_layer, n_head, n_embd, block_size} from the flags and the data, checked."""
    base = SORT_ARCH if fixed_block is not None else TEXT_ARCH
    arch = {k: getattr(args, k) if getattr(args, k) is not None else base.get(k) for k in GPT_FLAGS[:4]}
    if fixed_block is not None:
        if args.block_size is not None:
            raise UsageError(f"--block-size goes with --data FILE.txt; the sort task's context is "
                             f"{fixed_block} tokens")
        arch["block_size"] = fixed_block
    if arch["n_embd"] % arch["n_head"]:
        raise UsageError(f"--n-embd {arch['n_embd']} is not divisible by --n-head {arch['n_head']} "
                         "(each head gets n_embd / n_head dimensions)")
    if arch["block_size"] > MAX_BLOCK:
        raise UsageError(f"--block-size {arch['block_size']}: the limit is {MAX_BLOCK}")
    n = gpt_parameters(vocab, arch["block_size"], arch["n_layer"], arch["n_embd"])
    if n > MAX_PARAMETERS:
        raise UsageError(f"the GPT would have {n:,} parameters; the limit is {MAX_PARAMETERS:,}; choose "
                         "a smaller --n-embd or --n-layer")
    att = 4 * arch["n_layer"] * args.batch_size * arch["n_head"] * arch["block_size"] ** 2
    if att > MAX_ATTENTION_BYTES:
        raise UsageError(f"--batch-size {args.batch_size} x --n-head {arch['n_head']} x --block-size "
                         f"{arch['block_size']}^2 x --n-layer {arch['n_layer']}: the attention weights would "
                         f"take {att / 2**30:.1f} GB; the limit is {MAX_ATTENTION_BYTES / 2**30:.0f} GB")
    return arch


def _data(args):
    """The sort task or the characters of --data, and the architecture for it."""
    from .data.sequences import CharText, SortTask
    if args.data:
        arch = _architecture(args, vocab=1)              # the sizes first: the file may be large
        data = CharText.from_file(args.data, arch["block_size"])
        return data, _architecture(args, vocab=data.vocab_size)
    task = SortTask(seed=args.seed)
    return task, _architecture(args, vocab=task.vocab_size, fixed_block=task.block_size)


def train_gpt(args) -> int:
    """handydl train --model gpt [--data FILE.txt]: see the module docstring."""
    import time

    from . import manual_seed, nn, optim
    from ._io import STAGE_PREFIX, remove_stale_temps
    from .data.sequences import IGNORE_INDEX, SortTask, exact_match
    from .seqtrain import fit_steps, hits_per_sequence, hits_per_token

    _refuse_mlp_flags(args)
    _choose("optimizer", args.optimizer, list(optim.OPTIMIZERS))
    n_threads = args.threads if args.threads is not None else None if args.data else 1
    threads = blas_threads(n_threads, asked=args.threads is not None)
    data, arch = _data(args)
    out = _writable_dir(args.out)
    for name in (STAGE_PREFIX[1:], MODEL_FILES["safetensors"]) + RUN_FILES:   # leftovers of killed runs
        remove_stale_temps(out, name)
    start = time.perf_counter()
    manual_seed(args.seed)
    model = nn.GPT(data.vocab_size, arch["block_size"], arch["n_layer"], arch["n_head"], arch["n_embd"],
                   dropout=args.dropout)
    loss_fn = nn.SequenceCrossEntropyLoss(ignore_index=IGNORE_INDEX)
    rng = np.random.default_rng([args.seed, 1])          # the batches' stream (SortTask has its own)
    sort = isinstance(data, SortTask)
    log = _Log()
    if sort:
        steps = math.ceil(EPOCH_EXAMPLES / args.batch_size)
        val = data.examples(data.val)
        hits, names = hits_per_sequence, {"acc": "exact"}
        log(f"task: {data.name}, {data.block_size}-token context; {len(data.val)} validation and "
            f"{len(data.test)} test sequences held out, training sequences drawn afresh each step "
            f"({steps} steps of {args.batch_size} an epoch)")
    else:
        steps = data.steps_per_epoch(args.batch_size)
        val = data.validation()
        hits, names = hits_per_token, {"acc": "next-char acc"}
        log(f"text: {data.name}, {len(data.train_ids):,} training / {len(data.val_ids):,} validation "
            f"characters, {data.vocab_size} distinct; {steps} steps of {args.batch_size} windows of "
            f"{arch['block_size']} an epoch")
    log(f"model: GPT, {arch['n_layer']} layers, {arch['n_head']} heads, {arch['n_embd']} wide, context "
        f"{arch['block_size']}, vocabulary {data.vocab_size}, {sum(p.data.size for p in model.parameters()):,} "
        "parameters")
    optimizer = optim.OPTIMIZERS[args.optimizer](model.parameters(), lr=args.lr)
    from ._fast.malloc import tune_malloc
    tune_malloc()          # this process is a training run: reuse the step's large freed blocks
    with threads(), np.errstate(over="ignore", invalid="ignore"):   # a diverging run: reported below
        line, ok = _gradcheck_line(model, loss_fn, *val)
        log(line)
        if not ok:
            return 1
        history = fit_steps(model, loss_fn, optimizer, data.batches(args.batch_size, rng), args.epochs,
                            steps, hits, val_data=val, progress=False if args.no_progress else None,
                            blas_threads="auto" if n_threads is None else None,   # None: threads() holds
                            log=log, names=names)
        problem = _diverged(history, model) or _val_diverged(history)
        if not problem and sort:
            acc, _ = exact_match(model, data.test, data.answers(data.test))
            test = {"exact_match": acc, "n": len(data.test)}
        elif not problem:
            test = {"val_loss": history["val_loss"][-1], "val_next_char_acc": history["val_acc"][-1]}
    if problem:
        _error(f"handydl train: error: the run diverged: {problem}. Nothing was written to {out} "
               f"(files of an earlier run there are unchanged); try a smaller --lr than {args.lr:g}")
        return 1
    if sort:
        log(f"test exact-match: {test['exact_match']:.2%} ({test['n']} held-out sequences, greedy generation)")
    else:
        log(f"validation loss {test['val_loss']:.4f} ({test['val_loss'] / math.log(2):.3f} bits per "
            f"character), next-character accuracy {test['val_next_char_acc']:.2%}")
    meta = {"kind": "gpt", "data": data.config(), "test": test, "args": _jsonable(vars(args))}
    files = (MODEL_FILES[args.format],) + RUN_FILES[1:]
    _publish_run(out, model, meta, history, test, data.name if sort else "characters", files[0])
    for other in set(MODEL_FILES.values()) - {files[0]}:    # an earlier run's model in the other format
        (out / other).unlink(missing_ok=True)
    log(f"wrote {', '.join(str(out / f) for f in files)} ({time.perf_counter() - start:.1f} s)")
    return 0


def blas_threads(n, asked):
    """A function making a context that runs NumPy's BLAS on ``n`` threads (None: as
    it is); checked now, applied when the context is entered.  The sort
    model's products are small (704 x 64 by 64 x 192): on a 2-core machine shared with
    other jobs a step took a third of the time on one BLAS thread that it took on two,
    whose hand-offs wait for a core; --threads overrides it."""
    import contextlib
    if n is None:
        return contextlib.nullcontext
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if asked:
            raise UsageError("--threads needs threadpoolctl (pip install threadpoolctl)") from None
        return contextlib.nullcontext
    return lambda: threadpool_limits(n, user_api="blas")


def _gradcheck_line(model, loss_fn, x, y):
    """Gradcheck a float64 copy of the GPT (every parameter, random projections) and the
    loss on two held-out sequences of at most 8 tokens; one line of text and the verdict.
    In evaluation mode: dropout's masks would differ between the finite differences."""
    import copy

    from . import nn
    from .check import gradcheck
    xb, yb = x[:2, :8], y[:2, :8]
    model64 = copy.deepcopy(model).astype(np.float64).eval()
    reports = [gradcheck(model64, xb, fast=True, raise_exception=False)]
    with nn.no_grad():
        logits = model64(xb)
    reports.append(gradcheck(loss_fn, logits, yb, raise_exception=False))
    worst = max(r.max_rel_err for r in reports)
    ok = all(r.passed for r in reports)
    line = (f"gradient check (float64, {len(xb)} sequences of {xb.shape[1]} tokens, "
            f"{sum(len(r.entries) for r in reports)} tensors, model + loss): worst relative error "
            f"{worst:.1e} -> {'ok' if ok else 'FAILED'}")
    if not ok:
        line += "\n" + "\n".join(r.failure_message() for r in reports if not r.passed)
    return line, ok


def _val_diverged(history):
    """The first non-finite validation loss (weights finite but huge), or None."""
    for epoch, loss in zip(history["epoch"], history.get("val_loss", [])):
        if not math.isfinite(loss):
            return f"the validation loss became {loss} in epoch {epoch}"
    return None


# -- handydl sample ---------------------------------------------------------------------------

def _loaded(path):
    """(model, data) of a checkpoint written by ``handydl train --model gpt``."""
    from . import checkpoint, nn
    from .data.sequences import CharVocab, SortTask
    model, meta = checkpoint.load(path, return_meta=True)
    spec = meta.get("data") if meta.get("kind") == "gpt" else None
    if not isinstance(model, getattr(nn, "GPT", ())) or not isinstance(spec, dict):
        raise UsageError(f"{path}: not a GPT checkpoint of handydl train --model gpt (no vocabulary in it)")
    try:
        if spec.get("type") == "sort":
            data = SortTask(spec["length"], spec["digits"], spec["held_out"], spec["seed"])
        elif spec.get("type") == "chars":
            data = CharVocab(spec["vocab"])
        else:
            raise ValueError(f"unknown data type {spec.get('type')!r}")
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: its data description is damaged ({e})") from None
    if (len(data) if isinstance(data, CharVocab) else data.vocab_size) != model.vocab_size:
        raise UsageError(f"{path}: the vocabulary does not match the model's {model.vocab_size} tokens")
    return model, data


def cmd_sample(args) -> int:
    """Text from a character GPT's checkpoint, or a sort model's answer to a prompt."""
    from .data.sequences import SortTask
    model, data = _loaded(args.model)
    if args.top_k is not None and args.top_k > model.vocab_size:
        raise UsageError(f"--top-k {args.top_k} is more than the model's vocabulary of {model.vocab_size} tokens")
    rng = np.random.default_rng(args.seed)
    if isinstance(data, SortTask):
        return _sample_sort(args, model, data, rng)
    if args.tokens is not None and args.tokens > MAX_SAMPLE_TOKENS:
        raise UsageError(f"--tokens {args.tokens}: the limit is {MAX_SAMPLE_TOKENS:,}")
    prompt = args.prompt if args.prompt else ("\n" if "\n" in data.chars else data.chars[0])
    try:
        idx = data.encode(prompt)[None, :]
    except ValueError as e:
        raise UsageError(f"--prompt: {e}") from None
    out = model.generate(idx, 200 if args.tokens is None else args.tokens,
                         temperature=1.0 if args.temperature is None else args.temperature,
                         top_k=args.top_k, rng=rng)
    text = data.decode(out[0])
    _write_stdout(text if text.endswith("\n") else text + "\n")
    return 0


def _sample_sort(args, model, task, rng):
    """The model's answer to --prompt (or to a random held-out prompt), greedy unless
    --temperature or --top-k ask for sampling."""
    if args.tokens is not None:
        raise UsageError(f"--tokens goes with a character model; the sort model answers {task.length} digits")
    if args.prompt is not None:
        try:
            prompt = task.parse_prompt(args.prompt)
        except ValueError as e:
            raise UsageError(f"--prompt: {e}") from None
    else:
        prompt = task.test[rng.integers(len(task.test))][None, :]
    if args.temperature is None and args.top_k is None:
        from .data.sequences import greedy
        answer = greedy(model, prompt, task.length)[0]
    else:
        answer = model.generate(prompt, task.length, temperature=1.0 if args.temperature is None else args.temperature,
                                top_k=args.top_k,
                                rng=rng)[0, task.length:]
    right = np.array_equal(answer, task.answers(prompt)[0])
    _write_stdout(f"{task.format(prompt[0])} -> {task.format(answer)}  "
                  f"({'correct' if right else 'wrong: sorted is ' + task.format(task.answers(prompt)[0])})\n")
    return 0
