"""Training and sampling a small GPT: the sort task and the text data
(handydl/data/sequences.py) and exact-match evaluation."""
from __future__ import annotations

import itertools
import numpy as np
import pytest

from handydl import nn
from handydl.data import DataError
from handydl.data.sequences import (IGNORE_INDEX, CharText, CharVocab, SortTask, answer_hits, exact_match,
                                    greedy, read_text, token_hits)


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
