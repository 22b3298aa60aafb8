"""The per-run lock: one process per run directory, stale locks of dead processes taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hrsnet.runs import lock as runlock
from hrsnet.runs.lock import LOCK_FILE, RunLock, RunLockedError, lock_holder, lock_state

RUNLOCK_SOURCE = Path(runlock.__file__).resolve()

# The child loads runlock.py by path: it needs nothing else, and skips importing torch (seconds here).
CHILD = textwrap.dedent("""
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("runlock", sys.argv[1])
    runlock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runlock)
    lock = runlock.RunLock(sys.argv[2]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder_process(tmp_path):
    """Start a child process that holds the lock of tmp_path/run; yields (process, run_dir)."""
    run_dir = tmp_path / "hrnet_c8_abc"
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(RUNLOCK_SOURCE), str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.strip() == "locked", f"child did not lock: {line!r} {process.stderr.read()}"
        yield process, run_dir
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()


def test_second_lock_in_the_same_process_is_refused_with_who_holds_it(tmp_path):
    run_dir = tmp_path / "results" / "runs" / "hrnet_c2_x"
    with RunLock(run_dir) as first:
        assert first.held and (run_dir / LOCK_FILE).is_file()  # run_dir and parents created
        with pytest.raises(RunLockedError) as caught:
            RunLock(run_dir).acquire()
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith("run hrnet_c2_x is being trained by ")
        assert f"pid {os.getpid()}" in message and f"host {socket.gethostname()}" in message
        assert f"since {first.info['since']}" in message and message.endswith("wait for it or stop that process")
        assert caught.value.holder == first.info
        assert lock_state(run_dir) == "held" and lock_holder(run_dir) == first.info


def test_holder_info_is_written_to_the_lock_file_and_emptied_on_release(tmp_path):
    lock = RunLock(tmp_path).acquire()
    info = json.loads((tmp_path / LOCK_FILE).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["since"].endswith("Z") and "T" in info["since"] and isinstance(info["argv"], str)
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""
    assert lock_state(tmp_path) == "none" and lock_holder(tmp_path) is None


def test_release_then_reacquire_and_the_lock_file_is_never_deleted(tmp_path):
    assert lock_state(tmp_path) == "none"  # no lock file yet
    lock = RunLock(tmp_path)
    for _ in range(3):
        lock.acquire()
        inode = (tmp_path / LOCK_FILE).stat().st_ino
        with pytest.raises(RuntimeError, match="already acquired"):
            lock.acquire()
        lock.release()
        lock.release()  # a second release is a no-op
        assert (tmp_path / LOCK_FILE).stat().st_ino == inode
        with RunLock(tmp_path) as other:  # free for anyone after release
            assert other.taken_over is None  # a clean release leaves no holder info
    assert (tmp_path / LOCK_FILE).exists()


def test_exception_inside_with_releases_the_lock(tmp_path):
    with pytest.raises(KeyError):
        with RunLock(tmp_path):
            raise KeyError("boom")
    assert lock_state(tmp_path) == "none"
    RunLock(tmp_path).acquire().release()


def test_a_lock_held_by_another_process_is_refused_with_its_pid(holder_process):
    process, run_dir = holder_process
    assert lock_state(run_dir) == "held"
    assert lock_holder(run_dir)["pid"] == process.pid
    with pytest.raises(RunLockedError, match=f"run hrnet_c8_abc is being trained by pid {process.pid} on host "):
        RunLock(run_dir).acquire()
    with pytest.raises(RunLockedError):  # probes do not loosen the lock
        RunLock(run_dir).acquire()
    assert process.poll() is None


def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(holder_process):
    process, run_dir = holder_process
    inode = (run_dir / LOCK_FILE).stat().st_ino
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert lock_state(run_dir) == "stale"  # holder info left behind, but the kernel dropped the flock
    assert lock_holder(run_dir) is None
    with RunLock(run_dir) as lock:
        assert lock.taken_over["pid"] == process.pid
        assert lock_holder(run_dir)["pid"] == os.getpid()
    assert (run_dir / LOCK_FILE).stat().st_ino == inode


def test_a_lock_file_replaced_before_locking_is_not_trusted(tmp_path, monkeypatch):
    # Simulate a stray delete between open() and flock(): the lock must be taken on the file
    # now at the path, so that a later process that opens the path conflicts with it.
    real_try_flock = runlock._try_flock
    calls = []

    def delete_then_lock(fd, operation):
        if not calls:
            (tmp_path / LOCK_FILE).unlink()
        calls.append(fd)
        return real_try_flock(fd, operation)

    monkeypatch.setattr(runlock, "_try_flock", delete_then_lock)
    lock = RunLock(tmp_path).acquire()
    monkeypatch.setattr(runlock, "_try_flock", real_try_flock)
    assert len(calls) == 2
    with pytest.raises(RunLockedError):
        RunLock(tmp_path).acquire()
    lock.release()
