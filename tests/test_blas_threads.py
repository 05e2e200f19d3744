"""handydl.blas_threads: NumPy's BLAS threads chosen by timing the training
steps (a Governor over a simulated machine), fixed, or left alone; the count
before always comes back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import handydl
from handydl import data, nn, optim, train
from handydl._fast import blas


class Machine:
    """A BLAS whose steps take ``cost[threads]`` seconds; the clock advances by
    the cost of the threads in force when each step began."""

    def __init__(self, threads, cost, free=None):
        self.threads, self.cost, self.now, self.sets = threads, cost, 0.0, []
        self._running = threads
        self.free, self.idle_s = free, 0.0     # free: {threads: idle cores while a step runs at it}

    def get(self):
        return self.threads

    def set(self, n):
        self.threads = n
        self.sets.append(n)

    def clock(self):
        cost = self.cost[self._running]        # the step that just ended ran at the old count
        if isinstance(cost, list):             # steps of varying length, in turn
            self.turn = getattr(self, "turn", -1) + 1
            cost = cost[self.turn % len(cost)]
        self.now += cost
        if self.free is not None:
            self.idle_s += cost * self.free[self._running]
        self._running = self.threads
        return self.now

    def idle(self):
        """The machine's idle core-seconds so far (what /proc/stat tells), or None."""
        return None if self.free is None else self.idle_s

    def run(self, governor, steps):
        for _ in range(steps):
            governor.tick()
            self._running = self.threads       # the next step runs at what tick() left


def probe_steps(candidates):
    return len(candidates) * (blas.WARMUP + blas.MEASURED) + 1


def test_the_governor_keeps_the_fastest_count_and_checks_again_later():
    m = Machine(4, {4: 3.0, 2: 2.0, 1: 1.0})       # a loaded machine: fewer threads are faster
    g = blas.Governor(m.get, m.set, m.clock)
    assert g.candidates == [4, 2, 1]
    m.run(g, probe_steps(g.candidates))
    assert g.choice == 1 and m.threads == 1
    steps, means, best = g.history[-1]
    assert best == 1 and means == {4: 3.0, 2: 2.0, 1: 1.0}
    m.cost = {4: 0.5, 2: 0.8, 1: 1.0}              # the load is gone: all threads pay again
    m.run(g, blas.HOLD - 1)
    assert m.threads == 1                          # held until the next probe
    m.run(g, probe_steps(g.candidates) + 1)
    assert g.choice == 4 and m.threads == 4 and g.hold == blas.HOLD
    m.run(g, g.hold + probe_steps(g.candidates))
    assert g.choice == 4 and g.hold == 2 * blas.HOLD    # the same choice again: a longer hold


def test_the_governor_lets_go_when_someone_else_sets_the_threads():
    m = Machine(2, {2: 1.0, 1: 2.0})
    g = blas.Governor(m.get, m.set, m.clock)
    m.run(g, 3)
    m.threads = 2 if m.threads != 2 else 1        # threadpool_limits(...) inside the block
    before = list(m.sets)
    m.run(g, 50)
    assert g.stopped and m.sets == before


def test_one_thread_leaves_nothing_to_choose():
    m = Machine(1, {1: 1.0})
    g = blas.Governor(m.get, m.set, m.clock)
    m.run(g, 100)
    assert g.stopped and m.sets == []


threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_counts():
    return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


def tiny_training():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    model = nn.Sequential(nn.Linear(5, 8, rng=1), nn.ReLU(), nn.Linear(8, 3, rng=2))
    return model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), data.DataLoader(X, y, 8)


def test_auto_is_ticked_by_the_optimizer_and_restores_the_count():
    before = blas_counts()
    model, loss_fn, opt, loader = tiny_training()
    with handydl.blas_threads("auto") as governor:
        for xb, yb in loader:
            loss_fn(model(xb), yb)
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
    if max(before) > 1:
        assert governor is not None and governor.steps == len(loader)
    assert blas_counts() == before


def test_a_fixed_count_holds_inside_and_no_governor_runs_there():
    before = blas_counts()
    with handydl.blas_threads(1) as governor:
        assert governor is None and blas_counts() == {1}
        with handydl.blas_threads("auto") as inner:   # fit inside a fixed block: "auto" governs there
            assert blas_counts() == {1}
            assert inner is None or inner.stopped      # from one thread there is nothing to choose
    assert blas_counts() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "two"])
def test_bad_counts_are_refused_before_training(bad):
    model, loss_fn, opt, loader = tiny_training()
    start = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match=f"blas_threads={bad!r} is not valid"):
        train.fit(model, loss_fn, opt, loader, 1, log=None, blas_threads=bad)
    with pytest.raises(ValueError, match="expected 'auto', None or an int >= 1"):
        with handydl.blas_threads(bad):
            pass
    assert all(np.array_equal(a, p.data) for a, p in zip(start, model.parameters()))


def test_fit_trains_at_the_count_it_is_given_and_restores_it(monkeypatch):
    before, seen = blas_counts(), []
    model, loss_fn, opt, loader = tiny_training()
    real = opt.step

    def step():
        seen.append(blas_counts())
        real()
    monkeypatch.setattr(opt, "step", step)
    train.fit(model, loss_fn, opt, loader, 1, log=None, blas_threads=1)
    assert seen and all(s == {1} for s in seen) and blas_counts() == before


def test_the_environment_can_turn_auto_off(monkeypatch):
    monkeypatch.setenv("HANDYDL_BLAS_THREADS", "fixed")
    with handydl.blas_threads("auto") as governor:
        assert governor is None


def test_a_far_slower_candidate_is_dropped_after_two_timed_steps():
    m = Machine(2, {2: 10.0, 1: 1.0})              # a loaded machine: all threads ten times slower
    g = blas.Governor(m.get, m.set, m.clock)
    first = []
    for _ in range(probe_steps(g.candidates)):     # the first probe starts at one thread
        g.tick()
        m._running = m.threads
        first.append(m.threads)
    assert first[0] == 1 and first.count(2) == blas.WARMUP + blas.ABANDON_AFTER and g.choice == 1
    slow = []
    for _ in range(g.hold + probe_steps(g.candidates)):
        g.tick()
        m._running = m.threads
        slow.append(m.threads == 2)
    # the next probe measures 1 first, then gives 2 its warm-up and two timed steps only
    assert sum(slow) == blas.WARMUP + blas.ABANDON_AFTER and g.choice == 1


def test_the_readmes_own_loop_trains_and_leaves_the_threads_as_they_were():
    """README, Training: "A loop of your own, the one the benchmark times"."""
    from pathlib import Path
    text = (Path(__file__).parent.parent / "README.md").read_text()
    block = text.split("A loop of your own, the one the benchmark times:")[1].split("```python\n")[1].split("```")[0]
    before = blas_counts()
    env = {}
    exec(compile(block, "README.md", "exec"), env)     # our own text, not user input
    model, d = env["model"], env["d"]
    with nn.no_grad():
        acc = (model(d.X_test).argmax(1) == d.y_test).mean()
    assert acc > 0.9 and blas_counts() == before


def test_the_mean_decides_not_the_median():
    """On a loaded machine most steps on all threads are as fast as on one, and
    one in a few waits a time slice: the median would keep all threads, the
    mean (what an epoch pays) does not."""
    m = Machine(2, {2: [1.0, 1.0, 1.0, 12.0], 1: 1.5})
    g = blas.Governor(m.get, m.set, m.clock)
    m.run(g, probe_steps(g.candidates))
    steps, means, best = g.history[-1]
    assert best == 1 and means[2] > means[1]


def governed(m):
    return blas.Governor(m.get, m.set, m.clock, m.idle)


QUIET = {2: 0.0, 1: 1.0}      # 2 cores: one thread leaves a core idle
BUSY = {2: 0.0, 1: 0.0}       # another process keeps the other core busy


def test_a_hold_that_turns_slow_steps_down_at_once():
    """Load that arrives during a hold (every count slower, all threads most) is
    seen within WATCH steps, not after the hold, and the governor moves to one
    thread without timing two threads again."""
    m = Machine(2, {2: 0.5, 1: 1.0}, free=QUIET)     # quiet: both threads pay
    g = governed(m)
    m.run(g, probe_steps(g.candidates))
    assert g.choice == 2 and m.threads == 2
    m.cost, m.free = {2: 4.0, 1: 1.2}, BUSY           # a busy core: two threads now 8x slower
    m.sets.clear()
    m.run(g, blas.WARMUP + blas.WATCH + 1)
    assert g.choice == 1 and m.threads == 1 and m.sets == [1]
    assert g.history[-1][1:] == ({}, 1)               # stepped down, not probed
    m.run(g, 20 * blas.HOLD)                          # the core stays busy: no probe tries 2 again
    assert m.sets == [1] and g.choice == 1


def test_load_that_arrives_mid_hold_is_seen_after_a_few_slow_steps():
    """The watch is a sliding window of WATCH steps: steps 8x slower weigh the mean
    past DRIFT within a handful of them, wherever the hold is."""
    m = Machine(2, {2: 0.5, 1: 1.0}, free=QUIET)
    g = governed(m)
    m.run(g, probe_steps(g.candidates) + blas.WARMUP + blas.WATCH + 7)   # the window is full
    assert g.choice == 2
    m.cost, m.free = {2: 4.0, 1: 1.2}, BUSY
    for slow in range(1, blas.WATCH + 1):
        m.run(g, 1)
        if g.choice == 1:
            break
    # each slow step counts CLIP x the expected one: (32 - k) 0.5 + 2 k > 1.5 * 0.5 * 32 from k = 6
    assert g.choice == 1 and slow <= 7


def test_when_the_core_comes_free_the_governor_probes_at_once():
    m = Machine(2, {2: 0.5, 1: 1.0}, free=QUIET)
    g = governed(m)
    m.run(g, probe_steps(g.candidates))
    m.cost, m.free = {2: 4.0, 1: 1.2}, BUSY
    m.run(g, blas.WARMUP + blas.WATCH + 1 + 3 * blas.HOLD)
    assert g.choice == 1
    m.cost, m.free = {2: 0.5, 1: 1.0}, QUIET          # the other process ended
    probes = len(g.history)
    m.run(g, 3 + probe_steps(g.candidates))           # an idle window, and a probe
    assert len(g.history) == probes + 1 and g.choice == 2 and m.threads == 2


def test_a_false_alarm_is_undone_by_the_first_idle_window():
    """A slow stretch on a quiet machine: down to one thread, but the idle
    window finds the core free, and the probe after it comes back to two."""
    m = Machine(2, {2: 0.5, 1: 1.0}, free=QUIET)
    g = governed(m)
    m.run(g, probe_steps(g.candidates))
    m.cost = {2: 1.0, 1: 1.0}                          # something else slowed every step
    m.run(g, blas.WARMUP + blas.WATCH + 1)
    assert g.choice == 1
    m.cost = {2: 0.5, 1: 1.0}
    m.run(g, 3 + probe_steps(g.candidates))
    assert g.choice == 2 and g.history[-1][1] == {2: 0.5, 1: 1.0}


def test_without_idle_readings_a_step_down_is_probed_at_the_end_of_its_hold():
    m = Machine(2, {2: 0.5, 1: 1.0})                  # idle() is None: not Linux
    g = governed(m)
    m.run(g, probe_steps(g.candidates))
    m.cost = {2: 4.0, 1: 1.2}
    m.run(g, blas.WARMUP + blas.WATCH + 1)
    assert g.choice == 1 and len(g.history) == 2
    m.run(g, blas.HOLD + probe_steps(g.candidates))
    assert len(g.history) == 3 and g.choice == 1 and set(g.history[-1][1]) == {1, 2}


def test_fewer_threads_beside_a_free_core_are_checked_again_without_doubling_the_hold():
    """Small products: one thread is the faster in quiet, and stays chosen; with a
    core sitting free, each hold stays HOLD steps (a probe misled by noise is
    corrected soon), where a machine without idle readings doubles it."""
    gaps = {}
    for free in (QUIET, None):
        m = Machine(2, {2: 1.1, 1: 1.0}, free=free)
        g = governed(m)
        m.run(g, 12 * blas.HOLD)
        assert g.choice == 1 and all(best == 1 for _, _, best in g.history) and len(g.history) >= 3
        gaps[free is None] = [b[0] - a[0] for a, b in zip(g.history, g.history[1:])]
    assert max(gaps[False]) < 1.5 * blas.HOLD < 2 * blas.HOLD <= gaps[True][-1]


def test_on_16_cores_a_fully_busy_machine_is_probed_downward_to_the_fastest_fewer():
    """Candidates 16, 8, 1; every core taken by other jobs: the step down to 8
    is not the end, the probes that follow try only 8 and 1 (never 16 again)."""
    m = Machine(16, {16: 0.1, 8: 0.2, 1: 1.0}, free={16: 0, 8: 8, 1: 15})
    g = governed(m)
    assert g.candidates == [16, 8, 1]
    m.run(g, probe_steps(g.candidates))
    assert g.choice == 16
    m.cost, m.free = {16: 1.0, 8: 0.5, 1: 0.05}, {16: 0, 8: 0, 1: 0}
    m.sets.clear()
    m.run(g, 3 * blas.HOLD)
    assert g.choice == 1 and 16 not in m.sets


def test_on_16_cores_one_busy_core_leaves_no_room_for_16_threads_after_the_step_down():
    """One other process on one of 16 cores: 8 threads leave 7 cores idle, one
    short of what 16 threads need, so the hold is crowded and 16 is not timed
    again until that core comes free."""
    quiet_cost, quiet_free = {16: 0.1, 8: 0.2, 1: 1.0}, {16: 0, 8: 8, 1: 15}
    m = Machine(16, quiet_cost, free=quiet_free)
    g = governed(m)
    m.run(g, probe_steps(g.candidates))
    m.cost, m.free = {16: 1.0, 8: 0.3, 1: 1.0}, {16: 0, 8: 7, 1: 14}
    m.sets.clear()
    m.run(g, 6 * blas.HOLD)
    assert g.choice == 8 and 16 not in m.sets
    m.cost, m.free = quiet_cost, quiet_free            # the other process ended
    m.run(g, 3 + probe_steps(g.candidates))
    assert g.choice == 16


def test_one_long_pause_between_steps_does_not_step_down():
    """A validation pass between two steps (50 steps' time) counts as CLIP steps
    in the watch: alone it cannot make the window's mean DRIFT times the probe's."""
    m = Machine(2, {2: 0.5, 1: 1.0}, free=QUIET)
    g = governed(m)
    m.run(g, probe_steps(g.candidates) + blas.WARMUP + blas.WATCH + 5)
    for _ in range(5):
        m.now += 50 * 0.5                             # the pause, between two ticks
        m.run(g, blas.WATCH + 1)
    assert g.choice == 2 and all(means for _, means, _ in g.history)   # no step-down entry


def test_the_machines_idle_time_is_read_where_the_kernel_tells_it():
    idle = blas.machine_idle()
    if not Path("/proc/stat").exists():
        assert idle is None
        return
    import time
    time.sleep(0.3)                                    # this process sleeps: a core may sit idle
    assert 0 < idle <= blas.machine_idle()


def test_idle_time_counts_only_the_cores_this_process_may_use(monkeypatch):
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat here")
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks[int(name[3:])] = int(fields[3]) + int(fields[4])      # idle + iowait
    first = min(ticks)
    monkeypatch.setattr(blas.os, "sched_getaffinity", lambda pid: {first})
    one = blas.machine_idle()
    # read after the file: the kernel's counts only grow, by a few ticks at most meanwhile
    assert ticks[first] / blas._TICKS <= one <= ticks[first] / blas._TICKS + 1.0
    monkeypatch.setattr(blas.os, "sched_getaffinity", lambda pid: set(ticks))
    every = blas.machine_idle()
    assert every >= sum(ticks.values()) / blas._TICKS
    if len(ticks) > 1:                                  # the other cores idled too, since boot
        assert every > one


def test_a_steady_hold_is_not_interrupted():
    m = Machine(2, {2: 0.5, 1: 1.0})
    g = blas.Governor(m.get, m.set, m.clock)
    m.run(g, probe_steps(g.candidates))
    hold = g.hold
    m.run(g, hold - 2)
    assert len(g.history) == 1                       # no probe before the hold ends
    m.run(g, 3 + probe_steps(g.candidates))
    assert len(g.history) == 2 and g.hold == min(2 * hold, blas.MAX_HOLD)
