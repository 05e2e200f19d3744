r"""A team of threads that split one compiled loop into chunks, handed over in
microseconds.

Waking a sleeping thread and joining it through Python costs tens of
microseconds (``python -m bench.micro`` times a no-op round trip), twice per
forward + backward: a sizable part of the 0.2 to 0.5 ms one core needs for a
piecewise-linear activation on a million floats.  So a loop split over a
sleeping thread pool gains little, and the memory-bound ones lose.  PyTorch's OpenMP threads
instead spin for a while after each job and take the next one at once.  This
team does the same, in compiled code and without the GIL:

* a job is a row count ``n``, a chunk size, and a *part* ``part(ctrl, lo, hi)``:
  a compiled C-callable function that runs the loop on rows ``lo:hi`` of arrays
  whose addresses it reads from ``ctrl`` (an int64 array shared by all threads);
* the calling thread posts the job by bumping a *ticket* ``seq << 32 | i``
  (job number, next chunk), then claims chunks itself with compare-and-swap;
* each helper thread spins on the ticket (``SPIN`` seconds at most after its
  last job, then sleeps until ``run`` wakes it) and claims chunks the same way;
* the caller waits until every claimed chunk is done, then closes the ticket.

No thread ever waits for a helper to arrive: a late or sleeping helper just
claims fewer chunks, and the caller does the rest.  A claim succeeds only while
the ticket still holds that job number and an open chunk, so a helper that
reads a job after it ended claims nothing.

Parts are ``numba.cfunc``\ s, called through their address: one compiled
``serve`` loop runs every kind of job, so a helper never has to come back to
Python (and take the GIL) between jobs.
"""
from __future__ import annotations

import os
import platform
import threading
import time
from typing import NamedTuple

import numpy as np

# Slots of the shared control array.
TICKET = 0        # seq << 32 | next chunk; LOW as the next chunk means closed
DONE = 1          # chunks finished in this job
N = 2             # rows in this job
SIZE = 3          # rows per chunk
PART = 4          # address of the part (a cfunc)
COLS = 5          # columns, for parts that take rows of a matrix
PARAMS = 6        # address of the float32 parameters
ADDRESS = 8       # addresses of the arrays, ADDRESS + 0, 1, ...
SLOTS = 16
LOW = 0xFFFFFFFF  # the chunk-index half of the ticket

SPIN = 1e-4       # seconds a helper spins after its last job before it sleeps
MAX_HELPERS = 7

_team = None
_lock = threading.RLock()      # guards the team and the compiled pieces


def team():
    """The process's team, started on first use (None with a single core)."""
    global _team
    with _lock:
        if _team is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            _team = _Team(min(cores - 1, MAX_HELPERS)) if cores > 1 else False
        return _team or None


def _forget_team():
    # a forked child has the parent's team object but none of its threads (and
    # the lock may have been held by a thread that does not exist there)
    global _team, _lock
    _team, _lock = None, threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_team)


class _Team:
    def __init__(self, helpers):
        c = _compiled()
        self.ctrl = np.zeros(SLOTS, np.int64)
        self.params = np.zeros(4, np.float32)
        self.ctrl[PARAMS] = self.params.ctypes.data
        self.ctrl[TICKET] = LOW                      # job 0, closed
        self.seq = 0
        self.spins = int(c["spins_per_second"] * SPIN)
        self.helpers = helpers
        self.wake = threading.Condition()
        self.sleeping = 0                            # helpers waiting on self.wake
        self.busy = threading.Lock()                 # one job at a time: the ctrl is shared
        for k in range(helpers):
            threading.Thread(target=self._help, name=f"handydl-team-{k}", daemon=True).start()

    def _help(self):
        serve = _compiled()["serve"]
        seen = 0
        while True:
            seen = serve(self.ctrl, seen, self.spins)
            with self.wake:
                if self.ctrl[TICKET] >> 32 == seen:   # nothing new: sleep until run() calls
                    self.sleeping += 1
                    self.wake.wait()
                    self.sleeping -= 1

    def run(self, part, arrays, size, params=()):
        """part over the rows of ``arrays`` (the first one's length) in chunks of
        ``size`` rows, on this thread and the helpers; returns how many chunks
        the helpers ran.  The arrays must match the part's layout and stay alive
        until it returns (the caller holds them).  While another Python thread
        uses the team, the loop runs on this thread alone."""
        columns = _check(part, arrays, params)
        if not self.busy.acquire(blocking=False):
            part.loop(*arrays, *(() if part.params is None else (tuple(params),)))
            return 0
        try:
            c = self.ctrl
            n = len(arrays[0])
            c[N], c[SIZE], c[DONE], c[PART] = n, size, 0, part.cfunc.address
            c[COLS] = columns
            for k, a in enumerate(arrays):
                c[ADDRESS + k] = a.ctypes.data
            self.params[:len(params)] = params
            self.seq = (self.seq + 1) & 0x7FFFFFFF
            if self.sleeping:
                with self.wake:
                    self.wake.notify_all()
            return _compiled()["lead"](c, self.seq, -(-n // size))
        finally:
            self.busy.release()


KINDS = {"v": (np.float32, 1), "m": (np.float32, 2), "i": (np.int64, 1)}


def _check(part, arrays, params):
    """ValueError unless the arrays are what the part reads through raw addresses;
    else the matrices' number of columns (1 without matrices)."""
    if len(arrays) != len(part.layout) or len(params) != (part.params or 0):
        raise ValueError(f"part for layout {part.layout!r} with {part.params} params got "
                         f"{len(arrays)} arrays and {len(params)} params")
    for k, (a, kind) in enumerate(zip(arrays, part.layout)):
        dtype, ndim = KINDS[kind]
        if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.ndim == ndim
                and a.flags.c_contiguous and len(a) == len(arrays[0])):
            raise ValueError(f"array {k} of layout {part.layout!r} must be a C-contiguous {ndim}-D "
                             f"{np.dtype(dtype).name} array of {len(arrays[0])} rows; got "
                             f"{getattr(a, 'dtype', type(a).__name__)} of shape {getattr(a, 'shape', None)}")
    columns = {a.shape[1] for a, kind in zip(arrays, part.layout) if kind == "m"}
    if len(columns) > 1:
        raise ValueError(f"the matrices of a part must have one number of columns; got {sorted(columns)}")
    return columns.pop() if columns else 1


# -- the compiled pieces ---------------------------------------------------------------------

_cache = {}


def _compiled():
    """serve, lead, the views and the spin rate, compiled once (numba is imported here)."""
    with _lock:
        if not _cache:
            _cache.update(_build())
    return _cache


def _build():
    import llvmlite.binding
    import numba
    from llvmlite import ir
    from numba.core import types as nt
    from numba.core.extending import intrinsic

    def slot(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.gep(ary.data, [args[1]])

    @intrinsic
    def load(typingctx, ctrl, index):
        def codegen(context, builder, sig, args):
            return builder.load_atomic(slot(context, builder, sig, args), "acquire", 8)
        return nt.int64(ctrl, nt.intp), codegen

    @intrinsic
    def store(typingctx, ctrl, index, value):
        def codegen(context, builder, sig, args):
            builder.store_atomic(args[2], slot(context, builder, sig, args), "release", 8)
            return context.get_dummy_value()
        return nt.void(ctrl, nt.intp, nt.int64), codegen

    @intrinsic
    def claim(typingctx, ctrl, index, expected, new):
        def codegen(context, builder, sig, args):
            result = builder.cmpxchg(slot(context, builder, sig, args), args[2], args[3],
                                     "acq_rel", "acquire")
            return builder.extract_value(result, 1)
        return nt.boolean(ctrl, nt.intp, nt.int64, nt.int64), codegen

    @intrinsic
    def add(typingctx, ctrl, index, value):
        def codegen(context, builder, sig, args):
            return builder.atomic_rmw("add", slot(context, builder, sig, args), args[2], "acq_rel")
        return nt.int64(ctrl, nt.intp, nt.int64), codegen

    machine = platform.machine().lower()
    hint = "pause" if machine in ("x86_64", "amd64", "i686") else "yield" if machine in ("aarch64", "arm64") else ""
    parser = getattr(llvmlite.binding, "initialize_native_asmparser", None)
    if hint and parser is not None:
        parser()                                   # inline asm needs it
    else:                                          # a plain spin: correct, a little less polite
        hint = ""

    @intrinsic
    def pause(typingctx):
        # tells the core this is a spin-wait: it yields the pipeline to the other
        # hyperthread and saves power
        def codegen(context, builder, sig, args):
            if hint:
                builder.asm(ir.FunctionType(ir.VoidType(), []), hint, "", [], True)
            return context.get_dummy_value()
        return nt.void(), codegen

    int64p = ir.IntType(64).as_pointer()

    @intrinsic
    def call(typingctx, address, ctrl, lo, hi):
        def codegen(context, builder, sig, args):
            function = ir.FunctionType(ir.VoidType(), [int64p, ir.IntType(64), ir.IntType(64)])
            pointer = builder.inttoptr(args[0], function.as_pointer())
            data = context.make_array(sig.args[1])(context, builder, args[1]).data
            builder.call(pointer, [data, args[2], args[3]])
            return context.get_dummy_value()
        return nt.void(nt.int64, ctrl, nt.int64, nt.int64), codegen

    jit = numba.njit(nogil=True)

    @jit
    def take(ctrl, seq):
        # claim chunks of job seq until none is left; how many this thread ran
        taken = 0
        while True:
            ticket = load(ctrl, TICKET)
            lo = (ticket & LOW) * ctrl[SIZE]
            if ticket >> 32 != seq or lo >= ctrl[N]:
                return taken
            if claim(ctrl, TICKET, ticket, ticket + 1):
                call(ctrl[PART], ctrl, lo, min(lo + ctrl[SIZE], ctrl[N]))
                add(ctrl, DONE, 1)
                taken += 1

    @jit
    def serve(ctrl, seen, spins):
        # a helper: take every new job; after `spins` idle turns, return to sleep
        idle = 0
        while idle < spins:
            seq = load(ctrl, TICKET) >> 32
            if seq != seen:
                seen = seq
                take(ctrl, seq)
                idle = 0
            else:
                pause()
                idle += 1
        return seen

    @jit
    def lead(ctrl, seq, chunks):
        store(ctrl, TICKET, seq << 32)            # open: the helpers may claim from now
        taken = take(ctrl, seq)
        while load(ctrl, DONE) < chunks:          # chunks a helper claimed and still runs
            pause()
        store(ctrl, TICKET, seq << 32 | LOW)      # closed
        return chunks - taken

    @jit
    def spin(turns):
        for _ in range(turns):
            pause()

    def pointer_to(dtype):
        @intrinsic
        def pointer(typingctx, address):
            def codegen(context, builder, sig, args):
                return builder.inttoptr(args[0], context.get_value_type(dtype).as_pointer())
            return nt.CPointer(dtype)(nt.int64), codegen
        return pointer

    floats, labels = pointer_to(nt.float32), pointer_to(nt.int64)
    inline = numba.njit(inline="always")

    # What a part sees of the job: rows lo:hi of its k-th array, and the parameters.
    @inline
    def vector(ctrl, k, lo, hi):
        return numba.carray(floats(ctrl[ADDRESS + k]), ctrl[N])[lo:hi]

    @inline
    def matrix(ctrl, k, lo, hi):
        return numba.carray(floats(ctrl[ADDRESS + k]), (ctrl[N], ctrl[COLS]))[lo:hi]

    @inline
    def indices(ctrl, k, lo, hi):
        return numba.carray(labels(ctrl[ADDRESS + k]), ctrl[N])[lo:hi]

    @inline
    def params0(ctrl):
        return ()

    @inline
    def params1(ctrl):
        p = numba.carray(floats(ctrl[PARAMS]), 4)
        return (p[0],)

    @inline
    def params2(ctrl):
        p = numba.carray(floats(ctrl[PARAMS]), 4)
        return (p[0], p[1])

    spin(10)
    start = time.perf_counter()
    spin(100_000)
    rate = 100_000 / max(time.perf_counter() - start, 1e-6)
    return {"serve": serve, "lead": lead, "spins_per_second": rate, "numba": numba,
            "signature": nt.void(nt.CPointer(nt.int64), nt.int64, nt.int64),
            "views": {"v": vector, "m": matrix, "i": indices, "carray": numba.carray,
                      "params": (params0, params1, params2)}}


_parts = {}
VIEWS = {"v": "vector", "m": "matrix", "i": "indices"}


class Part(NamedTuple):
    """A compiled part: the cfunc, and the loop with the arrays and params it takes."""

    cfunc: object
    loop: object
    layout: str
    params: int | None


def part(loop, layout, params=None):
    """The C-callable part that runs ``loop`` on rows lo:hi of a job's arrays.

    layout spells the loop's arrays in order: "v" a float32 vector, "m" a
    float32 matrix (rows of ctrl[COLS]), "i" int64 indices; params is how many
    float32 parameters the loop takes as its last argument (a tuple), None when
    it takes none.  For a loop(x, y, params) of one parameter, part(loop, "vv", 1)
    compiles::

        def part(c, lo, hi):
            ctrl = carray(c, SLOTS)
            loop(vector(ctrl, 0, lo, hi), vector(ctrl, 1, lo, hi), params1(ctrl))
    """
    key = (loop, layout, params)
    if len(layout) > SLOTS - ADDRESS or set(layout) - set(VIEWS):
        raise ValueError(f"layout {layout!r}: at most {SLOTS - ADDRESS} of {', '.join(VIEWS)}")
    with _lock:
        if key not in _parts:
            c = _compiled()
            args = [f"{VIEWS[kind]}(ctrl, {k}, lo, hi)" for k, kind in enumerate(layout)]
            if params is not None:
                args.append(f"params{params}(ctrl)")
            # generated source, because numba cannot call a function with a
            # varying number of arguments assembled at run time
            source = ("def part(c, lo, hi):\n"
                      "    ctrl = carray(c, SLOTS)\n"
                      f"    loop({', '.join(args)})\n")
            namespace = {"loop": loop, "SLOTS": SLOTS, "carray": c["views"]["carray"],
                         "vector": c["views"]["v"], "matrix": c["views"]["m"],
                         "indices": c["views"]["i"]}
            namespace.update({f"params{k}": f for k, f in enumerate(c["views"]["params"])})
            exec(source, namespace)
            _parts[key] = Part(c["numba"].cfunc(c["signature"])(namespace["part"]), loop, layout, params)
        return _parts[key]
