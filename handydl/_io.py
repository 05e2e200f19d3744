"""Atomic file writes: a temporary file in the same directory, then a rename,
so a crash mid-write leaves the previous file intact and no partial file.

Temporary names carry the writer's process id (``.model.npz.<pid>.<random>.tmp``),
so the leftovers of a writer that was killed (SIGKILL, a power cut) are
recognised and removed by the next write to the same directory, while the
files of a writer still running are left alone.  ``staged_dir`` publishes
several files together: they are written into a hidden directory and moved
into place one after another with SIGINT and SIGTERM held off.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

STAGE_PREFIX = ".handydl-stage"
UNKNOWN_OWNER_AGE_S = 600      # a temporary name without a process id is stale after this long


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    Stale temporaries of ``path`` left by killed writers are removed first.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    remove_stale_temps(directory, path.name)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:           # durable before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, _mode(path))           # mkstemp makes 0600; keep what a plain open() gives
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def staged_dir(directory):
    """Yield a fresh hidden directory inside ``directory``.  When the block
    succeeds, every file in it is moved into ``directory`` (an existing file of
    the same name is replaced), with Ctrl-C and SIGTERM held off until the last
    one has moved; if the block raises, nothing in ``directory`` changes.  The
    stage itself is always removed."""
    directory = Path(directory)
    remove_stale_temps(directory, STAGE_PREFIX[1:])
    stage = Path(tempfile.mkdtemp(dir=directory, prefix=f"{STAGE_PREFIX}.{os.getpid()}.", suffix=".tmp"))
    try:
        yield stage
        files = sorted(stage.iterdir())
        with signals_held():
            for f in files:
                os.replace(f, directory / f.name)
            _fsync_dir(directory)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale_temps(directory, name):
    """Remove ``.<name>.<pid>.*.tmp`` files and stages in ``directory`` whose writer
    is no longer running; returns the names removed.  Never raises."""
    removed = []
    try:
        entries = list(Path(directory).glob(f".{_glob_escape(name)}.*.tmp"))
    except OSError:
        return removed
    for entry in entries:
        if _is_stale(entry, name):
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry.name)
            except OSError:
                pass
    return removed


def _is_stale(entry, name):
    """True if the writer that made ``entry`` (pid after the name) is gone."""
    rest = entry.name[len(name) + 2:].split(".")        # "<pid>", "<random>", "tmp"
    if len(rest) == 3 and rest[0].isdigit():
        return not _running(int(rest[0]))
    if len(rest) != 2:                                  # the temporary of another name
        return False
    try:                                                # an older name without a pid
        return time.time() - entry.lstat().st_mtime > UNKNOWN_OWNER_AGE_S
    except OSError:
        return False


def _running(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):  # another user's process, or unknowable
        return True
    return True


def _glob_escape(name):
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


@contextmanager
def signals_held():
    """Defer SIGINT and SIGTERM for the duration of the block (main thread only);
    a signal that arrived meanwhile is delivered as soon as it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda sig, frame: pending.append(sig)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


def _fsync_dir(directory):
    """Make the renames in ``directory`` durable (where the system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mode(path):
    """The existing file's permissions, or the usual 0666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
