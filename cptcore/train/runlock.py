"""One run per output folder: an exclusive lock on ``OUT``, and write failures under
``OUT`` reported in one line.

The lock is ``OUT/.cpt-run.lock``, an OS file lock (``filelock.FileLock``: ``fcntl.flock``
on POSIX), held by global rank 0 for the whole run. The kernel drops it when the holder
exits, however it exits (``kill -9`` included), so a dead run never blocks the next one.
``OUT/.cpt-run.holder.json`` (``{"pid", "host", "started"}``) names the holder for the
error message; a holder file left by a process that is gone is reported as a stale lock
taken over. The lock file itself stays in the folder (removing it would race a waiter).

Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from ..errors import CptError

LOCK = ".cpt-run.lock"
HOLDER = ".cpt-run.holder.json"
_HELD: set[str] = set()  # resolved OUT folders whose lock this process holds


class RunFolderLocked(CptError):
    """Another live ``cpt train`` holds the output folder."""


def _key(out_dir: str | Path) -> str:
    return str(Path(out_dir).resolve())


def held(out_dir: str | Path) -> bool:
    """True when this process holds the lock on ``out_dir``."""
    return _key(out_dir) in _HELD


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def read_holder(out_dir: str | Path) -> dict:
    """The holder record of ``out_dir`` (``{}`` when none or unreadable)."""
    try:
        data = json.loads((Path(out_dir) / HOLDER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (no holder record)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder['pid']} on {holder.get('host', '?')}, since {since}"


def writable_error(exc: OSError, what: str) -> CptError:
    """One line for an ``OSError`` met writing ``what`` (a folder or file)."""
    name = exc.filename or what
    reason = exc.strerror or type(exc).__name__
    hint = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check its permissions"
    return CptError(f"cannot write to {name}: {reason} (output folder {what}; {hint} or choose another --out)")


def ensure_writable(out_dir: str | Path, create: bool = True) -> Path:
    """Create ``out_dir`` (parents too) and prove it writable by creating and removing a
    file in it. Cheap; run before any heavy work. ``create=False`` (a dry run) creates
    nothing: the folder, or its nearest existing parent, must be writable.

    Raises:
        CptError: one line naming the folder and the OS reason.
    """
    out = Path(out_dir)
    if not create:
        near = out
        while not near.exists() and near != near.parent:
            near = near.parent
        if not near.is_dir() or not os.access(near, os.W_OK | os.X_OK):
            raise CptError(f"cannot write to {out}: {near} is not a writable folder")
        return out
    probe = out / f".cpt-write-test.{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if exc.filename == str(probe):
            exc.filename = str(out)  # name the folder, not our probe file
        raise writable_error(exc, str(out)) from None
    return out


def probe(out_dir: str | Path) -> None:
    """Fail now if another run holds ``out_dir`` (take and release the lock at once);
    for the launcher, before it starts processes. A folder that does not exist is free.

    Raises:
        RunFolderLocked: naming the holder's pid.
    """
    out = Path(out_dir)
    if not out.is_dir() or held(out):
        return
    with acquire(out, announce=False):
        pass


@contextlib.contextmanager
def acquire(out_dir: str | Path, announce: bool = True) -> Iterator[Path]:
    """Hold the exclusive lock on ``out_dir`` (created) for the ``with`` body.

    Raises:
        RunFolderLocked: ``OUT is in use by another cpt train (pid P on HOST, since T)``.
        CptError: the folder cannot be created or written.
    """
    from filelock import FileLock, Timeout

    out = ensure_writable(out_dir)
    lock = FileLock(str(out / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderLocked(
            f"{out} is in use by another cpt train ({_describe(read_holder(out))}): wait for it to finish "
            "or choose another --out") from None
    except OSError as exc:
        raise writable_error(exc, str(out)) from None
    try:
        old = read_holder(out)
        if announce and old.get("pid") and (old.get("host") != socket.gethostname() or not _alive(int(old["pid"]))):
            print(f"cpt train: {out}: taking over the stale lock of pid {old['pid']} on {old.get('host', '?')} "
                  "(that process is gone)", file=sys.stderr, flush=True)
        if announce:
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            try:
                (out / HOLDER).write_text(json.dumps(record), encoding="utf-8")
            except OSError as exc:
                raise writable_error(exc, str(out)) from None
        _HELD.add(_key(out))
        try:
            yield out
        finally:
            _HELD.discard(_key(out))
            if announce:
                with contextlib.suppress(OSError):
                    (out / HOLDER).unlink()
    finally:
        lock.release()


def _under(path: object, out: Path) -> bool:
    if not path:
        return False
    try:
        p = Path(os.fsdecode(path)).resolve()  # type: ignore[arg-type]
    except (TypeError, ValueError, OSError):
        return False
    return p == out or out in p.parents


@contextlib.contextmanager
def run_folder(out_dir: str | Path, rank: int) -> Iterator[None]:
    """For the whole run, on every rank: rank 0 holds the lock (:func:`acquire`); every
    rank turns an ``OSError`` raised on a path under ``out_dir`` (permissions, read-only
    or full disk, a folder replaced by a file) into a one-line :class:`CptError`.

    Raises:
        RunFolderLocked, CptError: as :func:`acquire`; the write failure in one line.
    """
    out = Path(out_dir).resolve()
    with contextlib.ExitStack() as stack:
        if rank == 0:
            stack.enter_context(acquire(out))
        try:
            yield
        except OSError as exc:
            if _under(exc.filename, out) or _under(getattr(exc, "filename2", None), out):
                raise writable_error(exc, str(out)) from exc
            raise
