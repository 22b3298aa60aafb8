"""One process per run directory: an exclusive ``flock`` on ``run_dir/.lock``.

Two ``python -m hrsnet train`` (or two ``./run_all.sh``) on the same results folder must never
train, and so never write, the same run at once. The first process to lock ``.lock`` owns the
run until it releases the lock or dies; the second is refused with RunLockedError, whose one-line
message says who holds the run (pid, host, since when).

Why ``flock`` and a file that is never deleted:

- The kernel releases a ``flock`` when the last file descriptor of the holder's open file
  description closes, which happens when the process dies for any reason, SIGKILL and OOM
  kills included. A lock left by a killed process is therefore free at once, and the next
  run takes it over safely: there is no pid check, so pid reuse cannot fool it.
- Deleting a lock file races: a process that opened the old file locks an unlinked inode
  while a third one creates and locks a new file, and both "hold" the lock. So ``.lock`` is
  created when missing and never deleted, also not by ``--force`` (which must keep it).
- ``flock`` works on local filesystems and on NFSv4 (Linux maps it to an NFS byte-range lock).
  On old NFSv2/v3 setups without a lock daemon, or with ``nolock``, it may silently lock only
  on the local host; put results on a local disk there. Byte-range locks belong to a process,
  not to an open file: on NFS a second RunLock in the holding process is not refused, and a
  lock_state()/lock_holder() call in the holding process releases its lock when it closes
  its descriptor. So query only runs you do not hold (the holder knows it holds the run).

The holder writes ``{"pid", "host", "since", "argv"}`` as JSON into ``.lock`` after locking and
empties it on release. A file with holder info that nobody has locked is "stale": its holder
died without releasing (lock_state says so; the next RunLock takes it over).

A process that forks keeps the lock alive in its children (they share the open file
description) until they exit too; ``exec`` closes it (the descriptor is close-on-exec).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"
LOCK_STATES = ("none", "held", "stale")
# A lock_state()/lock_holder() probe or a holder that has locked but not yet written its info
# holds the lock for microseconds; retry this long before calling the run taken.
GRACE_SECONDS = 0.5
_POLL_SECONDS = 0.02
_ARGV_CHARS = 300


def lock_path(run_dir: Path | str) -> Path:
    """The lock file of a run directory."""
    return Path(run_dir) / LOCK_FILE


def holder_info() -> dict[str, Any]:
    """What this process writes into the lock file it holds."""
    argv = " ".join(sys.argv)
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": argv if len(argv) <= _ARGV_CHARS else argv[: _ARGV_CHARS - 3] + "...",
    }


def _read_info(fd: int) -> dict[str, Any] | None:
    """The holder info in an open lock file; None when empty or unreadable (being written)."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    try:
        info = json.loads(b"".join(chunks).decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _try_flock(fd: int, operation: int) -> bool:
    """A non-blocking flock; False if another open file description holds a conflicting lock."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return True
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def describe_holder(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (it has not written its pid yet)"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('since', '?')}"


class RunLockedError(RuntimeError):
    """The run directory is locked by another process; ``holder`` is its info (or None)."""

    def __init__(self, run_dir: Path | str, holder: dict[str, Any] | None):
        self.run_dir = Path(run_dir)
        self.holder = holder
        super().__init__(
            f"run {self.run_dir.name} is being trained by {describe_holder(holder)}; wait for it or stop that process"
        )


class RunLock:
    """Exclusive lock of one run directory; ``with RunLock(run_dir): ...`` or acquire()/release().

    acquire() creates ``run_dir`` (with parents) and ``.lock`` if missing, and raises
    RunLockedError when another open file description holds the lock: another process, or
    another RunLock on the same directory in this process. ``taken_over`` is the info of a
    dead holder whose stale lock this one took over (None otherwise), for a log line.
    """

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self.info: dict[str, Any] | None = None
        self.taken_over: dict[str, Any] | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"RunLock of {self.run_dir} is already acquired by this object; release it first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + GRACE_SECONDS
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                while not _try_flock(fd, fcntl.LOCK_EX):
                    if time.monotonic() >= deadline:
                        raise RunLockedError(self.run_dir, _read_info(fd))
                    time.sleep(_POLL_SECONDS)
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                break
            # Someone deleted or replaced .lock between our open and our flock (it must never be
            # deleted, but a stray `rm` or an old --force could): lock the file now at the path.
            os.close(fd)
        try:
            self.taken_over = _read_info(fd)  # info left in the file: a holder died without releasing
            self.info = holder_info()
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(self.info) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)  # closing drops the flock, if it was taken
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the holder info, unlock, close; a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # before unlocking: a reader must never see info of a free lock as live
        except OSError:
            pass  # a read-only or full filesystem: the lock still goes; the info then reads as stale
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.run_dir)!r}, held={self.held})"


def _probe(run_dir: Path | str) -> tuple[str, dict[str, Any] | None]:
    """(state, info) of a run directory's lock, without changing it."""
    path = lock_path(run_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return "none", None
    except OSError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # read-only file or filesystem: flock still works locally
    try:
        deadline = time.monotonic() + GRACE_SECONDS
        while True:
            # A shared lock: probes do not conflict with each other, only with a holder's LOCK_EX.
            if _try_flock(fd, fcntl.LOCK_SH):
                info = _read_info(fd)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return ("stale" if info else "none"), info
            info = _read_info(fd)
            if info or time.monotonic() >= deadline:  # empty: the holder is writing its info
                return "held", info
            time.sleep(_POLL_SECONDS)
    finally:
        os.close(fd)


def lock_state(run_dir: Path | str) -> str:
    """ "held" (a live process holds the run), "stale" (holder info left by a process that died
    without releasing; the next RunLock takes it over) or "none"."""
    return _probe(run_dir)[0]


def lock_holder(run_dir: Path | str) -> dict[str, Any] | None:
    """The info of the live holder of the run's lock, or None when nobody holds it.

    ``{}`` when a holder has just locked and not yet written its info (for at most an instant).
    """
    state, info = _probe(run_dir)
    return (info or {}) if state == "held" else None
