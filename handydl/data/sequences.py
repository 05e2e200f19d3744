"""Token sequences for a small GPT: a task generated on the fly, and characters of a text file.

Nothing is downloaded.  The default task is minGPT's sorting demo made larger:
the prompt is ``length`` random digits in ``0 .. digits-1`` (6 digits of 0-9 by
default, a million possible prompts; minGPT sorts 6 digits of 0-2, 729), the
answer the same digits sorted.  It cannot be memorised: the held-out
sequences are drawn first, and every training sequence is drawn afresh and
kept only if it is not one of them.

A sequence and its answer are one token stream, ``prompt + answer``; the model
reads it shifted by one, as every GPT does::

    x = (p1 .. pL a1 .. a(L-1))          (B, T) with T = 2L - 1
    y = (-100 .. -100 a1 .. aL)          the prompt's L-1 targets are ignore_index

so the loss counts only the answer: predicting the rest of a random prompt
is impossible, and would only add noise to the gradient.  Sorting was chosen
for its large space of prompts, answers anyone can check by eye, and because
a 2-layer model learns it within a few hundred steps, which 2 cores run in a
minute or two.

Exact-match accuracy is the fraction of held-out prompts for which greedy
generation (``L`` times the argmax of the last position's logits, appended)
gives the whole answer.
"""
from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from .datasets import DataError

IGNORE_INDEX = -100             # as torch.nn.CrossEntropyLoss: targets that count for nothing
MAX_TEXT_BYTES = 200 * 2**20    # a text file for the character model is read whole


def _int(who, name, value, low, high=None):
    """``value`` as an int in [low, high], else TypeError / ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{who}: {name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{who}: {name}={value!r} is not valid; expected an integer {expected}")
    return int(value)


class SortTask:
    """Sort ``length`` digits of ``0 .. digits-1``; ``held_out`` distinct sequences
    are kept out of training, half as a validation set, half as a test set.

    Tokens are the digits themselves (vocabulary ``digits``); a model reads
    ``block_size = 2 * length - 1`` tokens.  ``seed`` fixes the held-out sets;
    training batches come from ``batches(batch_size, rng)``.
    """

    def __init__(self, length=6, digits=10, held_out=2000, seed=0):
        self.length = _int("SortTask", "length", length, 2, 16)
        self.digits = _int("SortTask", "digits", digits, 2, 10)
        self.space = self.digits ** self.length             # how many different prompts there are
        self.held_out = _int("SortTask", "held_out", held_out, 2, self.space // 2)
        self.seed = _int("SortTask", "seed", seed, 0)
        rng = np.random.default_rng([self.seed, 0])          # a stream of its own: not the batches'
        codes = rng.choice(self.space, size=self.held_out, replace=False)
        self._held = np.sort(codes)                          # for np.isin when drawing training rows
        half = self.held_out // 2
        self.val = self.decode_codes(codes[:half])
        self.test = self.decode_codes(codes[half:])

    vocab_size = property(lambda self: self.digits)
    block_size = property(lambda self: 2 * self.length - 1)
    name = property(lambda self: f"sort {self.length} digits 0-{self.digits - 1}")

    def config(self):
        """What rebuilds this task (a checkpoint's meta)."""
        return {"type": "sort", "length": self.length, "digits": self.digits,
                "held_out": self.held_out, "seed": self.seed}

    def codes(self, seqs):
        """Each sequence (rows of ``seqs``, (n, length)) as one integer, base ``digits``."""
        powers = self.digits ** np.arange(self.length - 1, -1, -1, dtype=np.int64)
        return np.asarray(seqs, dtype=np.int64) @ powers

    def decode_codes(self, codes):
        """The inverse of ``codes``: (n,) integers -> (n, length) digits."""
        powers = self.digits ** np.arange(self.length - 1, -1, -1, dtype=np.int64)
        return (np.asarray(codes, dtype=np.int64)[:, None] // powers) % self.digits

    def draw(self, n, rng):
        """``n`` random prompts, (n, length) int64, none of them held out."""
        rows = np.empty((0, self.length), dtype=np.int64)
        while len(rows) < n:            # held out are at most half of all: few rounds
            fresh = rng.integers(0, self.digits, (n - len(rows) + 8, self.length))
            rows = np.concatenate([rows, fresh[~np.isin(self.codes(fresh), self._held)]])
        return rows[:n]

    @staticmethod
    def answers(prompts):
        """What the model should answer: each prompt sorted."""
        return np.sort(prompts, axis=1)

    def examples(self, prompts):
        """(x, y) of shape (n, 2 length - 1): the stream ``prompt + answer``
        shifted by one, the prompt's targets set to IGNORE_INDEX."""
        prompts = np.asarray(prompts, dtype=np.int64)
        stream = np.concatenate([prompts, self.answers(prompts)], axis=1)
        x, y = stream[:, :-1], stream[:, 1:].copy()
        y[:, :self.length - 1] = IGNORE_INDEX
        return x, y

    def batches(self, batch_size, rng):
        """Training batches (x, y) without end, from ``rng``."""
        while True:
            yield self.examples(self.draw(batch_size, rng))

    def parse_prompt(self, text):
        """A prompt typed by a user, digits with or without spaces or commas
        ("3 1 4 1 5 9", "314159"), as (1, length) int64; ValueError if it is not one."""
        chars = [c for c in text if c not in " ,\t"]
        if len(chars) != self.length or not all(c in "0123456789"[:self.digits] for c in chars):
            raise ValueError(f"the prompt {text!r} is not {self.length} digits in 0-{self.digits - 1} "
                             f"(e.g. {' '.join(str(d) for d in range(self.length)[::-1])})")
        return np.array([[int(c) for c in chars]], dtype=np.int64)

    @staticmethod
    def format(digits):
        return " ".join(str(int(d)) for d in digits)


def greedy(model, prompts, n_new, batch_size=1000):
    """Greedy generation: ``n_new`` times, the argmax of the last position's
    logits is appended.  prompts (n, t) int -> the new tokens, (n, n_new).
    In evaluation mode and under no_grad (the mode is restored)."""
    from ..nn.module import no_grad
    prompts = np.asarray(prompts, dtype=np.int64)
    was_training = model.training
    model.eval()
    out = []
    try:
        with no_grad():
            for i in range(0, len(prompts), batch_size):
                seq = prompts[i:i + batch_size]
                for _ in range(n_new):
                    nxt = model(seq)[:, -1].argmax(axis=-1)
                    seq = np.concatenate([seq, nxt[:, None]], axis=1)
                out.append(seq[:, prompts.shape[1]:])
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, n_new), dtype=np.int64)


def exact_match(model, prompts, answers):
    """(fraction, per-prompt bool): prompts whose greedy continuation is the whole answer."""
    answers = np.asarray(answers)
    hits = (greedy(model, prompts, answers.shape[1]) == answers).all(axis=1)
    return float(hits.mean()) if len(hits) else float("nan"), hits


def answer_hits(logits, targets):
    """Per row: every counted target (not IGNORE_INDEX) is the argmax of its logits.

    logits (B, T, V), targets (B, T) -> (B,) bool.  With the true answer as the
    prefix this is exactly greedy generation's exact match: the first wrong
    argmax is where generation would first go wrong, and while it is right,
    generation has read the same prefix.  One forward instead of ``L``.
    """
    keep = targets != IGNORE_INDEX
    return ((logits.argmax(axis=-1) == targets) | ~keep).all(axis=1)


def token_hits(logits, targets):
    """(correct, counted): next-token argmax accuracy over the counted targets."""
    keep = targets != IGNORE_INDEX
    return int(((logits.argmax(axis=-1) == targets) & keep).sum()), int(keep.sum())


class CharVocab:
    """Characters <-> token ids: id i is ``chars[i]`` (the text's characters, sorted)."""

    def __init__(self, chars):
        if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars):
            raise ValueError(f"CharVocab: expected a non-empty string of distinct characters, got {chars!r}")
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def of(cls, text):
        return cls("".join(sorted(set(text))))

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        """str -> (len,) int64 ids; ValueError naming a character not in the vocabulary."""
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            shown = self.chars if len(self.chars) <= 100 else self.chars[:100] + "..."
            raise ValueError(f"the character {e.args[0]!r} is not in the model's vocabulary of "
                             f"{len(self.chars)} characters {shown!r}") from None

    def decode(self, ids):
        """Token ids (any shape) -> str."""
        return "".join(self.chars[int(i)] for i in np.asarray(ids).ravel())


class CharText:
    """A character-level language model's data: the vocabulary is the text's
    characters (sorted), the first 90% trains and the rest validates.

    ``block_size`` is the context: a training example is a window of
    ``block_size + 1`` characters, x its first ``block_size``, y its last.
    DataError (naming ``name``) when the text is too short for one training
    and one validation window.
    """

    def __init__(self, text, block_size, name="text"):
        self.name = name
        self.block_size = _int("CharText", "block_size", block_size, 1)
        if not isinstance(text, str):
            raise TypeError(f"CharText: text must be a str, got {type(text).__name__}")
        need = 2 * (self.block_size + 1)
        if len(text) < need:
            raise DataError(f"{name}: {len(text)} characters; a context of {self.block_size} needs at least "
                            f"{need} (one training and one validation window of {self.block_size + 1}); "
                            "give a longer text or a smaller --block-size")
        self.vocab = CharVocab.of(text)
        ids = self.vocab.encode(text)
        n_val = max(len(ids) // 10, self.block_size + 1)
        self.train_ids, self.val_ids = ids[:-n_val], ids[-n_val:]

    @classmethod
    def from_file(cls, path, block_size):
        """The text of a UTF-8 file (a leading byte-order mark is dropped); DataError
        for a missing, empty, binary, non-UTF-8 or too short file."""
        return cls(read_text(path), block_size, name=str(path))

    vocab_size = property(lambda self: len(self.vocab))

    def config(self):
        """What a checkpoint keeps to decode the model's tokens."""
        return {"type": "chars", "vocab": self.vocab.chars, "block_size": self.block_size, "file": self.name}

    def steps_per_epoch(self, batch_size):
        """Batches in an epoch: as many windows as the training text has
        characters, in batches (at least one)."""
        return max(1, len(self.train_ids) // (batch_size * self.block_size))

    def _windows(self, ids, starts):
        w = ids[starts[:, None] + np.arange(self.block_size + 1)]
        return w[:, :-1], w[:, 1:]

    def batches(self, batch_size, rng):
        """Training batches (x, y) of random windows, without end."""
        n = len(self.train_ids) - self.block_size      # >= 1: the constructor saw to it
        while True:
            yield self._windows(self.train_ids, rng.integers(0, n, batch_size))

    def validation(self, max_windows=256):
        """(x, y): non-overlapping windows of the validation text, at most ``max_windows``."""
        n = (len(self.val_ids) - 1) // self.block_size
        starts = np.arange(min(n, max_windows)) * self.block_size
        return self._windows(self.val_ids, starts)


def read_text(path):
    """The text of a UTF-8 file; DataError naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise DataError(f"{path}: {size:,} bytes; the limit for a text file is {MAX_TEXT_BYTES:,}")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path}: the file is empty; expected UTF-8 text")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(f"{path}: a binary file (a NUL byte at offset {nul}); expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start} "
                        "cannot be decoded); save it as UTF-8") from None
    text = text.removeprefix("\ufeff")
    if not text:
        raise DataError(f"{path}: the file holds only a byte-order mark; expected text")
    return text
