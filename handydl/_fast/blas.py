"""NumPy's BLAS threads chosen by measuring the training steps.

On a machine that other jobs share, NumPy's OpenBLAS on all cores can make a
training step many times slower: a matrix product is split across threads,
and the thread whose core is busy with another process finishes its part a
scheduler time slice late, on every product.  ``python -m bench`` measured an
epoch of the 784-256-10 MLP at batch 128 about 6x slower with one core kept
busy, and about 2x with the BLAS on one thread (docs/performance.md).  How
many threads pay depends on the machine, the load and the sizes of the
products, and changes while a run goes on, so this module measures instead of
guessing: inside ``blas_threads("auto")``, every ``Optimizer.step()`` marks
the end of a training step; the governor times a few steps at each candidate
thread count (all of them, half, one), keeps the fastest, and checks again
after a hold that doubles while the choice stays the same.  When the steps
of a hold turn DRIFT times slower than the choice measured (another process
took a core), it steps down to fewer threads at once: waiting out a hold of
thousands of steps at the wrong count, or probing all threads again while
they wait for the busy core, cost more.

Holding fewer threads than it could run, it also reads how much of the
machine sat idle (Linux's /proc/stat, the cores of the process's affinity,
every IDLE_WINDOW seconds): without
free cores for more threads, more cannot pay, and a probe that tries them
costs steps that wait for the busy cores (plus the BLAS worker's spin after
them), so the probe at the end of the hold tries only fewer; when cores come
free again (the other process ended), it probes at once; beside free cores
a hold does not double.  Without /proc/stat it probes as if the machine might
have room.

It uses threadpoolctl (the ``train`` extra) to read and set the thread count;
without it, the context does nothing.  The count in force before the block
comes back when the block ends.  When someone else changes the count inside
the block (``threadpool_limits``), the governor stops and leaves it alone.
``fit()`` and ``handydl train`` run inside one unless told a fixed count
(``fit(blas_threads=1)``, ``handydl train --threads 1``);
``HANDYDL_BLAS_THREADS=fixed`` in the environment turns "auto" off.
"""
from __future__ import annotations

import collections
import contextlib
import os
import statistics
import time

WARMUP = 2          # steps after a change that are not timed (the pool settles)
MEASURED = 8        # steps timed per candidate; their mean is its time
ABANDON_AFTER = 2   # timed steps after which a far slower candidate is dropped
HOLD = 256          # steps between probes at first; doubled while the choice holds
MAX_HOLD = 4096
WATCH = 32          # steps of a hold whose mean is compared with the choice's probe
DRIFT = 1.5         # a hold's mean this many times the probe's: fewer threads at once
CLIP = 4.0          # a watched step counts at most this many times the probe's mean
IDLE_WINDOW = 0.1   # seconds over which idle cores are read (the kernel counts in 10 ms ticks)
FREE = 0.5          # idle cores short of the next count's extra threads by this: no room
SETTLE = 0.15       # seconds a hold at fewer threads waits before its watches start: an idle
                    # OpenBLAS worker spins ~0.1 s (2**28 cycles) before it sleeps

_active = None      # the governor of the innermost blas_threads("auto") block


class Governor:
    """Chooses among thread counts by the mean time of training steps.

    ``get()`` and ``set(n)`` read and set the BLAS threads; ``clock`` gives
    seconds; ``idle()`` the seconds the machine's cores have sat idle in all
    (summed over cores), or None when it cannot tell.  ``tick()`` is called
    once per step (Optimizer.step does)."""

    def __init__(self, get, set, clock=time.perf_counter, idle=lambda: None):
        self.get, self.set, self.clock, self.idle = get, set, clock, idle
        self.start = get()
        self.candidates = sorted({self.start, max(1, self.start // 2), 1}, reverse=True)
        self.choice = self.start
        self.hold = HOLD                          # steps of the next hold
        self.stopped = self.start <= 1            # one thread: nothing to choose
        self.history = []                         # (step, {threads: mean seconds}, choice)
        self.steps = 0
        self._current = None                      # the plan entry of the step now running
        self._holding = 0                         # steps left before the next probe
        self._last = None                         # the clock at the last tick
        self._times = {}                          # threads -> this probe's step times
        self._mine = self.start                   # the count this governor set last
        self._expected = None                     # the choice's mean step time in the last probe
        self._watch = collections.deque()         # this hold's latest WATCH step times
        self._watch_sum = 0.0                     # and their sum
        self._settle_steps = 0                    # hold steps the watch still skips (the pool settles)
        self._settle_until = 0.0                  # and the clock before which it skips them
        self._idle_mark = None                    # (clock, idle()) where the idle window began
        self._crowded = False                     # the last idle window had no room for more threads
        self._plan = self._probe_plan()           # (threads, timed?) for each coming probe step

    def _probe_plan(self, downward=False):
        """[(threads, timed?)], one entry per coming step, for one probe: the
        count in use first (one thread in the first probe, which costs least if
        it is the slow one), so that a far slower candidate is known as such
        after its first timed steps (_abandon); ``downward``: only the counts
        up to the one in use (no core is free for more)."""
        lead = self.choice if self.history else min(self.candidates)
        order = [lead] + [c for c in self.candidates if c != lead and not (downward and c > lead)]
        return [(c, k >= WARMUP) for c in order for k in range(WARMUP + MEASURED)]

    def _abandon(self, threads):
        """Drop the rest of a candidate's steps from the probe when two of them
        already took more than twice the best mean so far: on a loaded machine
        a step on all threads can take ten times one on one thread, and the
        probe would spend most of its time proving it."""
        mine = self._times.get(threads, [])
        others = [statistics.fmean(v) for t, v in self._times.items() if t != threads and v]
        if len(mine) >= ABANDON_AFTER and others and min(mine) > 2 * min(others):
            self._plan = [e for e in self._plan if e[0] != threads]

    def tick(self):
        """The end of one step: time it, and set the threads for the next."""
        now = self.clock()
        if self.stopped:
            return
        if self.get() != self._mine:              # someone else changed it: theirs to keep
            self.stopped = True
            return
        if self._last is not None and self._current is not None:
            threads, timed = self._current
            if timed:
                self._times.setdefault(threads, []).append(now - self._last)
                self._abandon(threads)
        elif self._last is not None and self.history:
            self._watch_hold(now - self._last, now)
            self._watch_idle(now)
        self.steps += 1
        self._last = now
        if self._plan:
            self._current = self._plan.pop(0)
            self._apply(self._current[0])
            return
        if self._times:                           # a probe just ended: choose
            # the mean, not the median: on a loaded machine most steps on all threads
            # take about as long as on one, and one in a few waits a time slice for
            # the busy core; the mean is what an epoch pays (a median chose wrong)
            means = {t: statistics.fmean(v) for t, v in self._times.items()}
            best = min(means, key=means.get)
            self.hold = min(2 * self.hold, MAX_HOLD) if best == self.choice else HOLD
            self._times = {}
            self._hold_at(best, means[best], now, means)
        self._current = None
        self._apply(self.choice)
        self._holding -= 1
        if self._holding <= 0:
            if not (self._crowded and self.choice < max(self.candidates)):
                self._plan = self._probe_plan()
            elif self.choice > min(self.candidates):
                self._plan = self._probe_plan(downward=True)   # no free core: only fewer can pay
            else:
                self._holding = self.hold         # the fewest, and no free core: nothing to try

    def _hold_at(self, threads, expected, now, means):
        """Hold ``threads`` for the next ``self.hold`` steps; ``expected`` is its
        mean step time (None when not measured).  The watches start once the
        pool has settled: WARMUP steps, and SETTLE seconds below the most threads
        (a worker idle since the probe spins on its core a while, slowing the
        steps and hiding the core's idleness)."""
        settle = SETTLE if threads < max(self.candidates) else 0.0
        self.choice, self._holding, self._expected = threads, self.hold, expected
        self.history.append((self.steps, means, threads))
        self._watch, self._watch_sum = collections.deque(), 0.0
        self._settle_steps, self._settle_until = WARMUP, now + settle
        self._idle_mark, self._crowded = None, False

    def _watch_hold(self, seconds, now):
        """A step of a hold ended: when its last WATCH steps took DRIFT times
        the choice's mean in its probe, the machine changed (another process took
        a core) or the probe was misled by a lucky stretch.  Waiting out the hold
        can be thousands of steps at the wrong count, and a probe would time the
        most threads again while they wait for the busy core, so the governor
        steps down to the next fewer count at once (the idle watch calls a
        probe when its first window finds a core free).  At the fewest already, it probes,
        unless the last idle window found no room: then the machine is busier,
        and more threads cannot help."""
        if self._settle_steps:
            self._settle_steps -= 1
            return
        if now < self._settle_until or self._expected is None:
            return
        # a sliding window: load is seen as soon as enough slow steps weigh on the
        # mean; each step counts at most CLIP times the expected one, so that one
        # long pause between steps (a validation pass, a checkpoint) cannot trip it
        seconds = min(seconds, CLIP * self._expected)
        self._watch.append(seconds)
        self._watch_sum += seconds
        if len(self._watch) > WATCH:
            self._watch_sum -= self._watch.popleft()
        if len(self._watch) < WATCH or self._watch_sum <= DRIFT * self._expected * WATCH:
            return
        self._watch.clear()
        self._watch_sum = 0.0
        fewer = [c for c in self.candidates if c < self.choice]
        if fewer:
            self.hold = HOLD
            self._hold_at(max(fewer), None, now, {})
            self._crowded = True      # for now: a free core in the first idle window says otherwise
        elif not self._crowded:
            self._holding, self.hold = 0, HOLD        # the choice no longer stands: probe now

    def _watch_idle(self, now):
        """Holding fewer threads than the most: every IDLE_WINDOW seconds after
        the pool settled, read the idle cores of the machine since the last
        reading.  Fewer free than the next count's extra threads (less FREE)
        marks the hold crowded (its probe will try only fewer threads); room
        after a crowded window means the load went away, and the next step
        probes; room otherwise keeps the hold from doubling."""
        if self.choice >= max(self.candidates) or now < self._settle_until:
            return
        if self._idle_mark is None:
            idle = self.idle()
            if idle is None:                          # no readings here: stop asking, claim nothing
                self.idle, self._crowded = (lambda: None), False
                return
            self._idle_mark = (now, idle)
            return
        start, before = self._idle_mark
        if now - start < IDLE_WINDOW:
            return
        idle = self.idle()
        if idle is None:
            self._idle_mark, self._crowded = None, False
            return
        free = (idle - before) / (now - start)        # cores idle on average over the window
        self._idle_mark = (now, idle)
        more = min(c for c in self.candidates if c > self.choice) - self.choice
        if free < more - FREE:                        # no room for the next count's extra threads
            self._crowded = True
        elif self._crowded:
            self._crowded, self._holding, self.hold = False, 0, HOLD   # a core came free: probe now
        else:
            # fewer threads beside a free core: the probe that chose them was close or
            # misled by noise; check again within HOLD steps, not a doubled hold
            self.hold, self._holding = HOLD, min(self._holding, HOLD)

    def _apply(self, threads):
        if threads != self._mine:
            self.set(threads)
            self._mine = threads


def _blas_controller():
    """(get, set) for the BLAS libraries loaded in this process, or None without
    threadpoolctl or a BLAS it knows."""
    try:
        import numpy  # noqa: F401  (loads NumPy's BLAS, for threadpoolctl to find)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    if not libs:
        return None

    def set_threads(n):
        for lib in libs:
            lib.set_num_threads(n)
    return (lambda: libs[0].get_num_threads()), set_threads


def machine_idle():
    """Seconds the cores this process may run on (its CPU affinity) have sat
    idle since boot, summed over them (Linux's /proc/stat, a line per core:
    idle + iowait ticks), or None elsewhere.  Other cores' idleness is no room
    for this process's threads."""
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        mine = None
    try:
        idle, seen = 0, False
        with open("/proc/stat", "rb") as f:
            for line in f:
                if not line.startswith(b"cpu"):
                    break
                fields = line.split()
                if fields[0] == b"cpu":               # the sum over all cores
                    continue
                if mine is None or int(fields[0][3:]) in mine:
                    idle, seen = idle + int(fields[4]) + int(fields[5]), True
        return idle / _TICKS if seen else None
    except (OSError, IndexError, ValueError):
        return None


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def check(n, owner="blas_threads"):
    """ValueError unless n is "auto", None or an int >= 1."""
    if n is None or n == "auto":
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{owner}: blas_threads={n!r} is not valid; expected 'auto', None or an int >= 1")


@contextlib.contextmanager
def blas_threads(n="auto"):
    """NumPy's BLAS threads inside the block: ``"auto"`` measures the training
    steps and keeps the fastest count (see the module's docstring; yields the
    Governor, or None when there is nothing to govern); an int runs that many
    threads; None leaves them alone.  The count before the block comes back
    after it.  An int or "auto" without threadpoolctl: ImportError for an int
    (the caller asked for something it cannot have), nothing for "auto"."""
    global _active
    if n is None or (n == "auto" and os.environ.get("HANDYDL_BLAS_THREADS") == "fixed"):
        yield None
        return
    check(n)
    if n != "auto":
        from threadpoolctl import threadpool_limits
        with threadpool_limits(n, user_api="blas"):
            outer, _active = _active, None          # a fixed count: no governor inside
            try:
                yield None
            finally:
                _active = outer
        return
    controller = _blas_controller()
    if controller is None:
        yield None
        return
    outer, governor = _active, Governor(*controller, idle=machine_idle)
    _active = governor
    try:
        yield governor
    finally:
        _active = outer
        if not governor.stopped and controller[0]() == governor._mine:
            controller[1](governor.start)


def tick():
    """One training step ended (Optimizer.step calls it)."""
    if _active is not None:
        _active.tick()
