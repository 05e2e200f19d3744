"""Training and sampling a small GPT: the sort task and the text data
(handydl/data/sequences.py), exact-match evaluation, the step-wise fit loop,
and ``handydl train --model gpt`` / ``handydl sample`` run as a user runs them."""
from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from handydl import checkpoint, nn
from handydl.data import DataError
from handydl.data.sequences import (IGNORE_INDEX, CharText, CharVocab, SortTask, answer_hits, exact_match,
                                    greedy, read_text, token_hits)
from handydl.seqtrain import warmup_cosine


# -- the sort task ----------------------------------------------------------------------------

def test_examples_are_the_prompt_then_its_sorted_digits_with_the_prompt_masked():
    task = SortTask(length=6, digits=10, seed=0)
    prompts = task.draw(200, np.random.default_rng(1))
    x, y = task.examples(prompts)
    assert x.shape == y.shape == (200, 11) and task.block_size == 11
    for p, xr, yr in zip(prompts.tolist(), x.tolist(), y.tolist()):
        answer = sorted(p)                          # Python's sort, not the task's np.sort
        assert xr == p + answer[:-1]                # the model reads prompt + answer, shifted by one
        assert yr[5:] == answer                     # and is asked for the whole answer
        assert yr[:5] == [IGNORE_INDEX] * 5         # but never for the rest of a random prompt


def test_held_out_sequences_are_distinct_split_and_never_drawn_for_training():
    task = SortTask(length=3, digits=3, held_out=12, seed=5)    # 27 sequences: collisions would be common
    val, test = {tuple(r) for r in task.val.tolist()}, {tuple(r) for r in task.test.tolist()}
    assert len(val) == len(task.val) == 6 and len(test) == len(task.test) == 6
    assert not val & test
    drawn = {tuple(r) for r in task.draw(5000, np.random.default_rng(0)).tolist()}
    every = set(itertools.product(range(3), repeat=3))
    assert drawn == every - val - test              # every other sequence trains, none held out does


def test_held_out_sets_are_fixed_by_the_seed():
    a, b, c = SortTask(seed=3), SortTask(seed=3), SortTask(seed=4)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)
    assert a.val.shape == a.test.shape == (1000, 6)
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    assert np.array_equal(next(a.batches(8, rng1))[0], next(b.batches(8, rng2))[0])


def test_codes_are_the_digits_as_one_number():
    task = SortTask(length=4, digits=10)
    assert task.codes([[0, 4, 2, 7], [9, 9, 9, 9]]).tolist() == [427, 9999]
    seqs = task.draw(100, np.random.default_rng(0))
    assert np.array_equal(task.decode_codes(task.codes(seqs)), seqs)


def test_prompts_typed_by_a_user():
    task = SortTask()
    assert task.parse_prompt("3 1 4 1 5 9").tolist() == [[3, 1, 4, 1, 5, 9]]
    assert task.parse_prompt("314159").tolist() == task.parse_prompt("3,1,4,1,5,9").tolist()
    for bad in ("31415", "3141592", "31415a", ""):
        with pytest.raises(ValueError, match="not 6 digits in 0-9"):
            task.parse_prompt(bad)
    with pytest.raises(ValueError, match="0-2"):
        SortTask(digits=3, held_out=100).parse_prompt("013")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"length": 1}, ValueError, "length=1"), ({"digits": 11}, ValueError, "digits=11"),
    ({"length": 2.0}, TypeError, "length must be an integer"), ({"digits": True}, TypeError, "digits"),
    ({"length": 3, "digits": 2, "held_out": 5}, ValueError, r"held_out=5 .* \[2, 4\]"),
    ({"seed": -1}, ValueError, "seed=-1")])
def test_sort_task_refuses_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        SortTask(**kwargs)


# -- exact match ------------------------------------------------------------------------------

class Oracle(nn.Module):
    """Logits that put 1 on the right next digit of the sort task (its answer
    computed by Python's sorted), except that prompts starting with ``wrong_first``
    get a wrong last answer digit.  A known model for exact-match by hand."""

    def __init__(self, length, digits, wrong_first=None):
        super().__init__()
        self.length, self.digits, self.wrong_first = length, digits, wrong_first

    def forward(self, idx):
        B, T = idx.shape
        logits = np.zeros((B, T, self.digits), np.float32)
        for b in range(B):
            answer = sorted(idx[b, :self.length].tolist())
            for t in range(self.length - 1, T):
                nxt = answer[t - self.length + 1]
                if t == 2 * self.length - 2 and idx[b, 0] == self.wrong_first:
                    nxt = (nxt + 1) % self.digits
                logits[b, t, nxt] = 1.0
        return logits


def test_exact_match_counts_whole_answers_by_greedy_generation():
    prompts = np.array([[3, 1, 2], [9, 0, 0], [2, 2, 1], [9, 9, 8]])
    answers = np.array([[1, 2, 3], [0, 0, 9], [1, 2, 2], [8, 9, 9]])
    oracle = Oracle(3, 10, wrong_first=9)               # the two prompts starting with 9: last digit off
    assert greedy(oracle, prompts, 3).tolist() == [[1, 2, 3], [0, 0, 0], [1, 2, 2], [8, 9, 0]]
    acc, hits = exact_match(oracle, prompts, answers)
    assert hits.tolist() == [True, False, True, False] and acc == 0.5
    assert exact_match(Oracle(3, 10), prompts, answers)[0] == 1.0


def test_teacher_forced_hits_equal_greedy_exact_match():
    task = SortTask(length=4, digits=5, held_out=200, seed=1)
    for wrong in (None, 0, 3):
        oracle = Oracle(4, 5, wrong_first=wrong)
        x, y = task.examples(task.test)
        forced = answer_hits(oracle(x), y)
        assert np.array_equal(forced, exact_match(oracle, task.test, task.answers(task.test))[1])
        assert forced.mean() == (1.0 if wrong is None else np.mean(task.test[:, 0] != wrong))


def test_token_hits_count_only_the_targets_that_count():
    logits = np.zeros((1, 4, 3))
    logits[0, [0, 1, 2, 3], [2, 0, 1, 1]] = 1          # argmaxes 2, 0, 1, 1
    y = np.array([[2, IGNORE_INDEX, 0, 1]])
    assert token_hits(logits, y) == (2, 3)               # position 1 ignored, position 2 wrong
    assert answer_hits(logits, y).tolist() == [False]


# -- text -------------------------------------------------------------------------------------

TEXT = "the quick brown fox jumps over the lazy dog. " * 6 + "Ünïcödé ✓\n"


def test_char_text_encodes_and_decodes_and_splits():
    data = CharText(TEXT, block_size=8)
    assert data.vocab.chars == "".join(sorted(set(TEXT))) and data.vocab_size == len(set(TEXT))
    ids = data.vocab.encode(TEXT)
    assert ids.dtype == np.int64 and data.vocab.decode(ids) == TEXT
    assert [data.vocab.chars[i] for i in ids[:3]] == ["t", "h", "e"]
    assert data.vocab.decode(np.concatenate([data.train_ids, data.val_ids])) == TEXT
    assert len(data.val_ids) == len(TEXT) // 10
    with pytest.raises(ValueError, match="'Z' is not in the model's vocabulary"):
        data.vocab.encode("Zebra")


def test_char_windows_are_slices_of_the_text_shifted_by_one():
    data = CharText(TEXT, block_size=8)
    train, val = data.vocab.decode(data.train_ids), data.vocab.decode(data.val_ids)
    x, y = next(data.batches(16, np.random.default_rng(0)))
    assert x.shape == y.shape == (16, 8)
    for xr, yr in zip(x, y):
        assert np.array_equal(xr[1:], yr[:-1])
        assert data.vocab.decode(np.append(xr, yr[-1])) in train
    vx, vy = data.validation()
    assert len(vx) == (len(data.val_ids) - 1) // 8
    assert data.vocab.decode(vx.ravel()) == val[:8 * len(vx)]          # consecutive, non-overlapping
    assert data.steps_per_epoch(4) == max(1, len(data.train_ids) // 32)


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"), (b"abc\x00def" * 50, "binary file .a NUL byte at offset 3"),
    (b"caf\xe9 " * 50, "not UTF-8 text .byte 0xe9 at offset 3"), (b"\xef\xbb\xbf", "only a byte-order mark"),
    (b"short text", "10 characters; a context of 8 needs at least 18")],
    ids=["empty", "binary", "latin-1", "bom-only", "too-short"])
def test_bad_text_files_are_refused_with_the_reason(tmp_path, content, message):
    f = tmp_path / "t.txt"
    f.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        CharText.from_file(f, block_size=8)
    assert str(f) in str(e.value)


def test_text_files_are_read_as_utf8_without_the_byte_order_mark(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes("\ufeff".encode() + TEXT.encode())
    assert read_text(f) == TEXT
    with pytest.raises(DataError, match="no such file"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="directory"):
        read_text(tmp_path)


def test_char_vocab_refuses_repeated_or_empty_characters():
    for bad in ("", "aba", None):
        with pytest.raises(ValueError, match="distinct characters"):
            CharVocab(bad)


# -- the step-wise fit loop -------------------------------------------------------------------

class Bigram(nn.Module):
    """logits[b, t] = W[idx[b, t]]: the smallest sequence model, its backward a scatter-add."""

    def __init__(self, vocab):
        super().__init__()
        self.weight = nn.Parameter(np.zeros((vocab, vocab), np.float32))

    def forward(self, idx):
        self.save(idx)
        return self.weight.data[idx]

    def backward(self, gy, input_grad=True):
        idx = self.saved()
        g = np.zeros_like(self.weight.data)
        np.add.at(g, idx.ravel(), gy.reshape(-1, gy.shape[-1]))
        self.weight.accumulate(g)
        return None


class RowsCrossEntropy(nn.CrossEntropyLoss):
    """CrossEntropyLoss on the (B*T, V) rows of (B, T, V) logits."""

    def forward(self, input, target):
        self._shape = input.shape
        return super().forward(input.reshape(-1, input.shape[-1]), target.reshape(-1))

    def backward(self, gy=1.0, target_grad=False):
        return super().backward(gy).reshape(self._shape)


def test_fit_steps_learns_a_text_and_follows_the_schedule():
    from handydl import optim
    from handydl.seqtrain import fit_steps, hits_per_token
    data = CharText("abcd" * 100, block_size=8)
    model = Bigram(data.vocab_size)
    opt = optim.Adam(model.parameters(), lr=0.1)
    lines = []
    hist = fit_steps(model, RowsCrossEntropy(), opt, data.batches(8, np.random.default_rng(0)), 3, 20,
                     hits_per_token, val_data=data.validation(), warmup=5, log=lines.append)
    assert hist["epoch"] == [1, 2, 3] and len(lines) == 3 and "val next" not in lines[0]
    assert hist["train_loss"][0] > hist["train_loss"][-1] and hist["val_loss"][-1] < 0.1
    assert hist["val_acc"][-1] == 1.0                    # a -> b -> c -> d -> a: every next character
    # the rate of the last step of each epoch: steps 19, 39, 59 of 60
    assert hist["lr"] == pytest.approx([warmup_cosine(s, 60, 0.1, 5) for s in (19, 39, 59)])


def test_fit_steps_stops_at_a_non_finite_loss():
    from handydl import optim
    from handydl.seqtrain import fit_steps, hits_per_token
    data = CharText("abcd" * 100, block_size=8)
    model = Bigram(data.vocab_size)
    batches = data.batches(8, np.random.default_rng(0))

    def poisoned():
        for step, batch in enumerate(batches):
            if step == 25:
                model.weight.data[0, 0] = np.nan
            yield batch
    lines = []
    with np.errstate(invalid="ignore"):
        hist = fit_steps(model, RowsCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), poisoned(), 5, 10,
                         hits_per_token, val_data=data.validation(), log=lines.append)
    assert hist["epoch"] == [1, 2, 3] and math.isnan(hist["train_loss"][-1]) and math.isnan(hist["val_loss"][-1])
    assert all(len(v) == 3 for v in hist.values())
    assert lines[-1].startswith("stopping: the training loss is nan in step 26")


# -- the learning-rate schedule ---------------------------------------------------------------

def test_warmup_then_cosine():
    lr = [warmup_cosine(s, 100, 1.0, 10) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.04)) / 2)
    assert lr[50] == pytest.approx(0.5)                  # half way down the cosine
    assert all(a < b for a, b in zip(lr[:9], lr[1:10])) and all(a > b for a, b in zip(lr[9:], lr[10:]))
    assert 0 < lr[-1] < 1e-3


# -- handydl train --model gpt, handydl sample ------------------------------------------------

def run(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "handydl", *args], capture_output=True, text=True,
                          timeout=timeout)


# the README's command and the figure it states (README.md, "Training a small GPT")
README_EXACT_MATCH = 0.99


@pytest.fixture(scope="module")
def sort_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt")
    start = time.perf_counter()
    r = run("train", "--model", "gpt", "--no-progress", "--out", str(out))
    return r, out, time.perf_counter() - start


def test_train_gpt_reaches_the_readme_exact_match_on_held_out_sequences(sort_run):
    r, out, seconds = sort_run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gradient check (float64, 2 sequences of 8 tokens" in r.stdout and "-> ok" in r.stdout
    hist = json.loads((out / "history.json").read_text())
    assert hist["test"]["n"] == 1000 and hist["test"]["exact_match"] >= README_EXACT_MATCH
    assert f"test exact-match: {hist['test']['exact_match']:.2%} (1000 held-out" in r.stdout
    assert len(hist["history"]["epoch"]) == 10 and hist["history"]["val_acc"][-1] >= README_EXACT_MATCH
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "history.csv").read_text().startswith("epoch,")
    model, meta = checkpoint.load(out / "model.npz", return_meta=True)
    assert isinstance(model, nn.GPT) and meta["data"]["type"] == "sort"
    # the checkpoint's held-out sequences are the run's: the saved model scores the same on them
    task = SortTask(**{k: v for k, v in meta["data"].items() if k != "type"})
    assert exact_match(model, task.test, task.answers(task.test))[0] == hist["test"]["exact_match"]
    assert seconds < 900, f"the README's command took {seconds:.0f} s"


def test_teacher_forced_exact_match_equals_greedy_generation_on_a_trained_gpt(sort_run):
    _, out, _ = sort_run
    model, meta = checkpoint.load(out / "model.npz", return_meta=True)
    task = SortTask(**{k: v for k, v in meta["data"].items() if k != "type"})
    x, y = task.examples(task.val)
    with nn.no_grad():
        forced = answer_hits(model(x), y)
    assert np.array_equal(forced, exact_match(model, task.val, task.answers(task.val))[1])


def _answer(line):
    """'3 1 4 1 5 9 -> 1 1 3 4 5 9  (correct)' -> ([3, 1, 4, 1, 5, 9], [1, 1, 3, 4, 5, 9], 'correct')."""
    prompt, rest = line.split(" -> ")
    answer, verdict = rest.split("  (")
    return [int(d) for d in prompt.split()], [int(d) for d in answer.split()], verdict.split(":")[0].rstrip(")")


def test_sample_answers_a_prompt_of_digits(sort_run):
    _, out, _ = sort_run
    model = str(out / "model.npz")
    greedy_out = run("sample", "--model", model, "--prompt", "3 1 4 1 5 9")
    assert greedy_out.returncode == 0, greedy_out.stderr
    prompt, answer, verdict = _answer(greedy_out.stdout.strip())
    assert prompt == [3, 1, 4, 1, 5, 9] and len(answer) == 6
    assert verdict == ("correct" if answer == sorted(prompt) else "wrong")
    # --top-k 1 is greedy decoding, whatever the seed and temperature
    for extra in (["--top-k", "1"], ["--top-k", "1", "--seed", "5", "--temperature", "3"]):
        assert run("sample", "--model", model, "--prompt", "314159", *extra).stdout == greedy_out.stdout
    # without a prompt: a held-out sequence, drawn by --seed
    drawn = run("sample", "--model", model, "--seed", "2")
    prompt, answer, verdict = _answer(drawn.stdout.strip())
    assert verdict == ("correct" if answer == sorted(prompt) else "wrong")
    assert run("sample", "--model", model, "--seed", "2").stdout == drawn.stdout


@pytest.mark.parametrize("args, message", [
    (["--prompt", "31415"], "not 6 digits in 0-9"), (["--top-k", "11"], "--top-k 11 is more than"),
    (["--tokens", "5"], "--tokens goes with a character model"), (["--temperature", "0"], "must be > 0"),
    (["--temperature", "nan"], "finite"), (["--top-k", "0"], "must be > 0"), (["--top-k", "1.5"], "integer")])
def test_sample_refuses_bad_flags(sort_run, args, message):
    _, out, _ = sort_run
    r = run("sample", "--model", str(out / "model.npz"), *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stdout == ""


def test_sample_refuses_a_checkpoint_that_is_not_a_gpt(tmp_path):
    path = tmp_path / "mlp.npz"
    checkpoint.save(nn.MLP([2, 3, 2]), path)
    r = run("sample", "--model", str(path))
    assert r.returncode == 2 and "not a GPT checkpoint" in r.stderr, r.stderr
    r = run("sample", "--model", str(tmp_path / "missing.npz"))
    assert r.returncode == 2 and "no such checkpoint file" in r.stderr


SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--epochs", "1",
         "--no-progress"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    (d / "poem.txt").write_text(TEXT * 3)
    r = run("train", "--model", "gpt", "--data", str(d / "poem.txt"), *SMALL, "--out", str(d / "out"))
    return r, d


def test_train_gpt_on_a_text_file_keeps_its_vocabulary(text_run):
    r, d = text_run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "next-char acc" in r.stdout and "bits per character" in r.stdout
    model, meta = checkpoint.load(d / "out" / "model.npz", return_meta=True)
    assert meta["data"]["vocab"] == "".join(sorted(set(TEXT)))
    assert model.vocab_size == len(meta["data"]["vocab"]) and model.block_size == 16
    hist = json.loads((d / "out" / "history.json").read_text())
    assert len(hist["history"]["epoch"]) == 1 and math.isfinite(hist["history"]["val_loss"][0])


def test_sample_prints_text_in_the_vocabulary_after_the_prompt(text_run):
    _, d = text_run
    model = str(d / "out" / "model.npz")
    r = run("sample", "--model", model, "--prompt", "the q", "--tokens", "60")
    assert r.returncode == 0, r.stderr
    text = r.stdout[:-1]                                 # the newline that ends the output
    assert text.startswith("the q") and len(text) == 5 + 60 and set(text) <= set(TEXT)
    again = run("sample", "--model", model, "--prompt", "the q", "--tokens", "60")
    other = run("sample", "--model", model, "--prompt", "the q", "--tokens", "60", "--seed", "1")
    assert again.stdout == r.stdout and other.stdout != r.stdout        # the seed draws the characters
    greedy1 = run("sample", "--model", model, "--prompt", "the q", "--tokens", "30", "--top-k", "1")
    greedy2 = run("sample", "--model", model, "--prompt", "the q", "--tokens", "30", "--top-k", "1",
                  "--seed", "9", "--temperature", "0.3")
    assert greedy1.stdout == greedy2.stdout                              # top-k 1: no randomness left
    long = run("sample", "--model", model, "--prompt", TEXT[:40], "--tokens", "5")   # over the context
    assert long.returncode == 0 and long.stdout[:-1].startswith(TEXT[:40]), long.stderr
    for args, message in ((["--prompt", "Zebra"], "'Z' is not in the model's vocabulary"),
                          (["--top-k", "1000"], "more than the model's vocabulary"),
                          (["--tokens", "1000001"], "--tokens 1000001: the limit is")):
        bad = run("sample", "--model", model, *args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt", "--n-embd", "30", "--n-head", "4"], "--n-embd 30 is not divisible by --n-head 4"),
    (["--model", "gpt", "--hidden", "64"], "--hidden goes with --model mlp, cnn or resnet"),
    (["--model", "gpt", "--dataset", "iris"], "--dataset goes with --model mlp"),
    (["--model", "gpt", "--block-size", "32"], "--block-size goes with --data FILE.txt"),
    (["--model", "mlp", "--n-layer", "2"], "--n-layer goes with --model gpt"),
    (["--model", "gpt", "--n-embd", "8192", "--n-layer", "64"], "parameters; the limit is"),
    (["--model", "gpt", "--data", "DIR/missing.txt"], "no such file"),
    (["--model", "gpt", "--data", "DIR/binary.txt"], "a binary file (a NUL byte at offset 2)"),
    (["--model", "gpt", "--data", "DIR/short.txt"], "a context of 64 needs at least 130"),
    (["--model", "gpt", "--data", "DIR/short.txt", "--block-size", "4096"], "--block-size 4096: the limit"),
    (["--model", "gpt", "--lr", "nan"], "--lr must be a finite number"),
    (["--model", "gpt", "--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
    (["--model", "gpt", "--dropout", "1"], "--dropout must be in [0, 1)")])
def test_train_gpt_refuses_bad_flags_before_writing_anything(tmp_path, args, message):
    (tmp_path / "binary.txt").write_bytes(b"ab\x00cd" * 100)
    (tmp_path / "short.txt").write_text("too short for a context of 64")
    r = run("train", *[a.replace("DIR", str(tmp_path)) for a in args], "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_diverged_gpt_run_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.npz").write_bytes(b"an earlier run's model")
    (tmp_path / "t.txt").write_text(TEXT * 3)
    r = run("train", "--model", "gpt", "--data", str(tmp_path / "t.txt"), *SMALL, "--lr", "1e30",
            "--out", str(out))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the run diverged" in r.stderr and "Nothing was written" in r.stderr
    assert "RuntimeWarning" not in r.stderr
    assert [p.name for p in out.iterdir()] == ["model.npz"]
    assert (out / "model.npz").read_bytes() == b"an earlier run's model"


@pytest.mark.parametrize("vocab, block, layers, width", [(10, 11, 2, 64), (65, 64, 4, 128), (3, 5, 1, 8)])
def test_the_parameter_count_refused_up_front_is_the_gpt_s(vocab, block, layers, width):
    from handydl.cli_gpt import gpt_parameters
    model = nn.GPT(vocab, block, n_layer=layers, n_head=4 if width % 4 == 0 else 1, n_embd=width)
    assert gpt_parameters(vocab, block, layers, width) == sum(p.data.size for p in model.parameters())
