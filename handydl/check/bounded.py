"""Run a check under a hard time and memory budget.

A runaway SymPy call (``simplify`` of a 15-deep composite, an integer of a
billion digits) runs in C or in loops that no signal alarm interrupts, so a
check runs in a forked worker process: the parent waits ``timeout`` seconds
and then kills it (SIGKILL), and the worker's address space is limited
(``RLIMIT_AS``) to ``memory_mb`` beyond what it inherited.  Fork is cheap
(the worker shares the parent's imported modules) and needs nothing to be
pickled but the answer.  Where fork does not exist (Windows), the check runs
in-process without a hard deadline.
"""
from __future__ import annotations

import os
import sys
import time

DEFAULT_TIMEOUT = 10.0      # seconds for one check
DEFAULT_MEMORY_MB = 1024    # beyond what the worker inherits


class BudgetExceeded(TimeoutError):
    """A check that ran out of its time or memory budget (exit status 3)."""

    def __init__(self, message, kind="time"):
        super().__init__(message)
        self.kind = kind


def _child(conn, fn, args, memory_mb):
    try:
        import resource
        if memory_mb:
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[0])
            have = pages * os.sysconf("SC_PAGE_SIZE")
            limit = have + int(memory_mb) * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):      # no /proc or no setrlimit: time only
        pass
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4000))
    try:
        result = ("ok", fn(*args))
    except MemoryError:
        result = ("memory", None)
    except RecursionError:
        result = ("error", "nested too deeply to check")
    except BaseException as e:          # sent back; the parent decides what it means
        result = ("raise", e)
    try:
        conn.send(result)
    except Exception as e:              # an unpicklable exception: its text
        conn.send(("error", f"{type(result[1]).__name__}: {result[1]}" if result[0] == "raise" else str(e)))
    conn.close()


def run_bounded(fn, args=(), timeout=DEFAULT_TIMEOUT, memory_mb=DEFAULT_MEMORY_MB, what="the check"):
    """``fn(*args)`` in a worker killed after ``timeout`` seconds; its exceptions
    are raised here. ``timeout=None`` runs it in this process."""
    if timeout is None:
        return fn(*args)
    if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    import multiprocessing
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:                               # pragma: no cover - Windows
        return fn(*args)
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, memory_mb))     # killed below when late
    start = time.perf_counter()
    proc.start()
    send.close()
    try:
        ready = recv.poll(timeout)
        status, payload = recv.recv() if ready else ("timeout", None)
    except (EOFError, OSError):
        status, payload = "died", None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()
    if status == "ok":
        return payload
    if status == "raise":
        raise payload
    if status == "timeout":
        raise BudgetExceeded(f"{what} did not finish within its time budget of {timeout:g} s "
                             "(give more with --timeout SECONDS, or simplify the expression)")
    if status == "memory" or (status == "died" and proc.exitcode in (-9, -6, -11)):
        raise BudgetExceeded(f"{what} needed more than its memory budget of {memory_mb} MB", kind="memory")
    from .expr import ExprError
    elapsed = time.perf_counter() - start
    raise ExprError(f"{what} could not be carried out: {payload or f'the worker stopped after {elapsed:.1f} s'}")
