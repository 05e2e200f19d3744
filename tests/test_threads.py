"""The team of threads (handydl.ops.threads): every row done exactly once, in
any chunking, by several threads at once, from concurrent callers and in a
forked child; idle helpers go to sleep; bad arrays are refused before any
address is read."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from handydl.ops import threads  # noqa: E402

team = threads.team()
pytestmark = pytest.mark.skipif(team is None, reason="one core: no team")


@numba.njit(nogil=True)
def axpy_once(x, out, params):
    # out starts at zero: a row done twice would read 2 (a p + 1), a row skipped 0
    for i in range(x.size):
        out[i] += x[i] * params[0] + np.float32(1)


@numba.njit(nogil=True)
def pick(x, labels, out):
    for i in range(labels.size):
        out[i] = x[i, labels[i]]


def run_axpy(n, chunk, p=0.5, seed=0):
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    out = np.zeros_like(x)
    helped = team.run(threads.part(axpy_once, "vv", 1), [x, out], chunk, (np.float32(p),))
    return out, x * np.float32(p) + np.float32(1), helped


@pytest.mark.parametrize("n,chunk", [(1, 1), (3, 2), (1000, 1), (10_007, 64), (65_536, 65_536),
                                     (100_000, 99_999)])
def test_every_row_is_done_exactly_once(n, chunk):
    out, expected, _ = run_axpy(n, chunk)
    np.testing.assert_array_equal(out, expected)


def test_matrix_and_index_views():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 37)).astype(np.float32)
    labels = rng.integers(0, 37, 5000)
    out = np.full(5000, np.nan, np.float32)
    team.run(threads.part(pick, "miv"), [x, labels, out], 128)
    np.testing.assert_array_equal(out, x[np.arange(5000), labels])


def test_the_helpers_take_chunks():
    # 256 chunks per job: a helper that never joins leaves all of them to the caller.
    # Jobs for up to 5 s, so that a busy second core (another process, OpenBLAS's
    # spinning threads) only delays the answer
    deadline = time.monotonic() + 5
    helped = 0
    while not helped and time.monotonic() < deadline:
        helped = run_axpy(1 << 20, 1 << 12)[2]
    assert helped > 0


def test_idle_helpers_sleep_and_wake_again():
    run_axpy(1 << 16, 1 << 10)
    deadline = time.monotonic() + 5
    while team.sleeping < team.helpers and time.monotonic() < deadline:
        time.sleep(10 * threads.SPIN)
    assert team.sleeping == team.helpers, "helpers still spinning long after their last job"
    out, expected, _ = run_axpy(1 << 18, 1 << 10)
    np.testing.assert_array_equal(out, expected)


def test_concurrent_callers_each_get_their_own_result():
    errors = []

    def caller(seed):
        for k in range(30):
            out, expected, _ = run_axpy(50_000 + seed, 1000, p=seed + k, seed=seed * 100 + k)
            if not np.array_equal(out, expected):
                errors.append((seed, k))
    callers = [threading.Thread(target=caller, args=(s,)) for s in range(3)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    assert errors == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_starts_a_team_of_its_own():
    run_axpy(1 << 16, 1 << 10)                    # the parent's helpers exist
    pid = os.fork()
    if pid == 0:                                  # child: the parent's helpers are gone
        try:
            out, expected, _ = run_axpy(1 << 18, 1 << 10)
            ok = np.array_equal(out, expected) and threads.team() is not team
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung")


@pytest.mark.parametrize("arrays,params,message", [
    (lambda: [np.zeros(10, np.float64), np.zeros(10, np.float32)], (np.float32(1),), "float64"),
    (lambda: [np.zeros(20, np.float32)[::2], np.zeros(10, np.float32)], (np.float32(1),), "C-contiguous"),
    (lambda: [np.zeros(10, np.float32), np.zeros(9, np.float32)], (np.float32(1),), "10 rows"),
    (lambda: [np.zeros(10, np.float32)], (np.float32(1),), "got 1 arrays"),
    (lambda: [np.zeros(10, np.float32), np.zeros(10, np.float32)], (), "0 params"),
])
def test_bad_arrays_are_refused_before_anything_runs(arrays, params, message):
    before = team.ctrl.copy()
    arrays = arrays()
    with pytest.raises(ValueError, match=message):
        team.run(threads.part(axpy_once, "vv", 1), arrays, 4, params)
    np.testing.assert_array_equal(team.ctrl, before)
    assert all(not a.any() for a in arrays)


@pytest.mark.parametrize("layout", ["vx", "v" * (threads.SLOTS - threads.ADDRESS + 1)])
def test_a_part_names_a_bad_layout(layout):
    with pytest.raises(ValueError, match="layout"):
        threads.part(axpy_once, layout, 1)


def test_a_matrix_after_a_vector_and_mismatched_columns():
    @numba.njit(nogil=True)
    def row_sums(s, x):
        for i in range(s.size):
            s[i] = x[i].sum()
    x = np.arange(3000 * 5, dtype=np.float32).reshape(3000, 5)
    s = np.zeros(3000, np.float32)
    team.run(threads.part(row_sums, "vm"), [s, x], 100)
    np.testing.assert_array_equal(s, x.sum(axis=1))
    @numba.njit(nogil=True)
    def copy(a, b):
        b[:] = a
    with pytest.raises(ValueError, match=r"\[4, 5\]"):
        team.run(threads.part(copy, "mm"), [x, np.zeros((3000, 4), np.float32)], 100)
