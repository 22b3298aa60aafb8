"""scripts/gpu_session.sh: one --dry-run on the CPU (every step, tiny sizes) leaves its files, flat
and at most 8, in the order of its steps; its time limits hold. What the steps measure on a GPU
is checked on a GPU, not here.

The dry run's "$PYTHON" imports torch once and forks a process per command (_warm_python): a
dozen commands each importing torch, scikit-learn and timm anew were most of its time."""

import contextlib
import csv
import fcntl
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hrsnet.tools.targets import FILES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


def _rows(path):
    with open(path) as stream:
        return list(csv.DictReader(stream))


def _environment(tmp_path, **extra):
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp"), **extra}


# Started once per dry run: imports the heavy libraries, then forks a child per command. The
# child takes the command's stdin, stdout, stderr, folder, environment and SIGINT disposition,
# and runs it as `python -m` or `python -c` would, at the top level of a fresh __main__.
WARM_SERVER = r"""
import json, os, select, signal, socket, struct, sys, types

for name in ("torch", "torch._dynamo", "torchvision", "pandas", "scipy.stats", "sklearn.datasets", "timm"):
    try:
        __import__(name)
    except ImportError:
        pass


def serve(address):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + address)
    listener.listen(8)
    parent, children = os.getppid(), {}  # child pid -> its client's connection
    print("ready", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the test read "ready"; a command gets its own stdout
    while os.getppid() == parent:
        ready, _, _ = select.select([listener, *children.values()], [], [], 0.05)
        for connection in ready:
            if connection is listener:
                connection, _ = listener.accept()
                header, fds, _, _ = socket.recv_fds(connection, 4, 3)
                size = struct.unpack("!I", header)[0]
                payload = b""
                while len(payload) < size and (chunk := connection.recv(size - len(payload))):
                    payload += chunk
                if len(payload) < size:  # the client went away before it asked
                    connection.close()
                    for fd in fds:
                        os.close(fd)
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    for other in children.values():
                        other.close()
                    connection.close()
                    for target, fd in enumerate(fds):  # the client's stdin, stdout, stderr
                        os.dup2(fd, target)
                        if fd > 2:
                            os.close(fd)
                    return json.loads(payload)
                for fd in fds:
                    os.close(fd)
                connection.sendall(f"{pid}\n".encode())
                children[pid] = connection
            else:  # the client went away (killed): so does its command
                pid = next(pid for pid, other in children.items() if other is connection)
                if not connection.recv(1):
                    os.kill(pid, signal.SIGKILL)
        for pid, connection in list(children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                try:
                    connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                except OSError:
                    pass
                connection.close()
                del children[pid]
    os._exit(0)  # the test that started this server is gone


request = serve(sys.argv[1])
os.chdir(request["cwd"])
os.environ.clear()
os.environ.update(request["env"])
signal.signal(signal.SIGINT, signal.SIG_IGN if request["sigint_ignored"] else signal.default_int_handler)
for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(number, signal.SIG_DFL)
option, target, *arguments = request["argv"]
del serve, request
try:
    if option == "-m":
        import runpy

        sys.path[0] = os.getcwd()
        sys.argv = [target, *arguments]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.path[0] = ""
        sys.argv = ["-c", *arguments]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(target, "<string>", "exec"), main.__dict__)
    code = 0
except SystemExit as exit:
    code = 0 if exit.code is None else exit.code
    if not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
except BaseException as error:
    sys.excepthook(type(error), error, error.__traceback__)
    code = -signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
# Python's own ending, less the teardown of every module (seconds with torch loaded, and nothing
# a command sees): non-daemon threads joined, atexit functions run, output flushed.
import atexit, threading

threading._shutdown()
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
if code == -signal.SIGINT:  # as Python ends on an uncaught KeyboardInterrupt: by SIGINT itself
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
os._exit(code & 0xFF)
"""

# "$PYTHON" of the dry run: `-m MODULE` and `-c CODE` go to the server (its stdin, stdout and stderr
# passed along, SIGINT and SIGTERM forwarded, the command's exit status returned as its own);
# anything else, or no server, runs the real interpreter.
WARM_CLIENT = r"""
import json, os, signal, socket, struct, sys

arguments = sys.argv[1:]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    if len(arguments) < 2 or arguments[0] not in ("-m", "-c"):
        raise OSError("not a command for the server")
    sock.connect("\0" + ADDRESS)
except OSError:
    os.execv(PYTHON, [PYTHON, *arguments])
ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
request = {"argv": arguments, "cwd": os.getcwd(), "env": dict(os.environ), "sigint_ignored": ignored}
payload = json.dumps(request).encode()
socket.send_fds(sock, [struct.pack("!I", len(payload))], [0, 1, 2])
sock.sendall(payload)
replies = sock.makefile("r")
pid = int(replies.readline())
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    if not (number == signal.SIGINT and ignored):
        signal.signal(number, lambda number, frame: os.kill(pid, number))
code = int(replies.readline())
if code < 0:  # ended by a signal: end the same way
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


@contextlib.contextmanager
def _warm_python(folder, env):
    """A "$PYTHON" for the dry run that imports torch and the other heavy libraries once, in a
    server forked for each command (WARM_SERVER): the commands, their output, exit statuses and
    signals are as with python3 itself, without a dozen interpreters importing torch anew. Our
    package is not imported ahead: each command imports it, as `python3 -m hrsnet` does."""
    address = f"hrsnet-dry-run-{os.getpid()}-{secrets.token_hex(4)}"  # abstract socket: no file, no path limit
    (folder / "warm_server.py").write_text(WARM_SERVER)
    (folder / "warm_client.py").write_text(f"ADDRESS = {address!r}\nPYTHON = {sys.executable!r}\n{WARM_CLIENT}")
    client = folder / "python3"
    client.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{folder / "warm_client.py"}" "$@"\n')
    client.chmod(0o755)
    with open(folder / "warm_server.log", "w") as log:
        command = [sys.executable, str(folder / "warm_server.py"), address]
        server = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    try:
        server.stdout.readline()  # "ready"; nothing if it failed, and then each command runs python3 itself
        yield client
    finally:
        server.terminate()
        server.wait()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run for all the tests below: (its output folder, its result, its root folder).

    pytest-xdist may hand these tests to different workers; the dry run is made once per test run
    all the same: the first worker to ask makes it under a lock in the folder the workers share,
    and the others read its result there."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    with open(shared / "gpu-dry-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a worker dies
        saved = shared / "gpu-dry-run.json"
        if not saved.exists():
            root = Path(tempfile.mkdtemp(prefix="gpu-dry-run-", dir=shared))
            with _warm_python(root, _environment(root)) as python:
                result = subprocess.run(
                    ["bash", str(SCRIPT), "--dry-run", str(root / "out")],
                    cwd=ROOT,
                    env=_environment(root, PYTHON=str(python)),
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
            fields = {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
            saved.write_text(json.dumps({"root": str(root), **fields}))
        record = json.loads(saved.read_text())
    root = Path(record["root"])
    result = subprocess.CompletedProcess(SCRIPT, record["returncode"], record["stdout"], record["stderr"])
    return root / "out", result, root


@pytest.mark.slow
def test_dry_run_leaves_its_files_flat_in_step_order(dry_run):
    out, result, root = dry_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    entries = sorted(path.name for path in out.iterdir())
    assert entries == sorted(FILES.values()) and len(entries) <= 8
    assert all((out / name).is_file() for name in entries), "no folders"
    log = (out / FILES["log"]).read_text()
    marks = ["step 1:", "step 2:", "step 3:", "step 4:", "step 5:", "the targets", "all steps passed"]
    positions = [log.index(mark) for mark in marks]
    assert positions == sorted(positions)
    assert "| target | measured | required | verdict | detail |" in log  # bench --targets read the files
    assert "unexpected" not in log
    assert not any((root / "tmp").glob("hrsnet-gpu-work.*")), "the runs' folder is removed"


@pytest.mark.slow
def test_dry_run_checks_and_loop(dry_run):
    out, _, _ = dry_run
    versions = (out / FILES["versions"]).read_text()
    assert "torch " in versions and "timm " in versions
    assert "tests/test_cudagraphs.py::test_graph_replay_matches_eager_on_cuda" in (out / FILES["pytest"]).read_text()
    status = {}
    for row in _rows(out / FILES["gpucheck"]):
        status.setdefault((row["check"], row["case"]), set()).add(row["status"])
    for case in ("eager training step", "eager training step, augmented", "graph replay", "graph replay, augmented"):
        assert status[("no_host_sync", case)] == {"skipped: needs CUDA"}
    assert status[("fast_paths", "channels_last")] == {"pass", "info"}
    assert status[("fast_paths", "torch.compile, fp32")] == {"skipped: needs CUDA"}
    checkpoint = [s for (check, _), s in status.items() if check == "checkpoint"]
    assert len(checkpoint) == 2 and all(s == {"pass"} for s in checkpoint)  # there and back
    assert not any("fail" in s for s in status.values())
    memory = _rows(out / FILES["memory"])
    assert {row["status"] for row in memory if row["check"] == "deterministic"} == {"pass"}
    loop = {row["setting"]: row for row in _rows(out / FILES["loop"])}
    assert set(loop) == {"eager", "packed"}  # graphs need CUDA
    assert loop["eager"]["timed_epochs"] == "2" and float(loop["eager"]["speedup"]) == 1
    assert (loop["packed"]["runs"], loop["packed"]["packed_seeds"]) == ("2", "2")


@pytest.mark.slow
def test_dry_run_bench_rows_and_estimate(dry_run):
    out, _, _ = dry_run
    rows = _rows(out / FILES["bench"])
    peer = {(row["setting"], row["variant"]) for row in rows if row["group"] == "peer"}
    for setting in ("paper", "throughput"):
        assert {(setting, "default"), (setting, "plain fp32 eager"), (setting, "timm channels_last")} <= peer
    peak = [row for row in rows if row["group"] == "grid" and row["setting"] == "throughput"]
    assert peak and all(float(row["peak_tflops"]) == 790 and float(row["flop_utilisation"]) > 0 for row in peak)
    grid = {row["model"] for row in rows if row["group"] == "grid" and row["setting"] == "paper"}
    assert grid == {"hrnet_official", "hrnet", "hrsnet", "hrsnet_skip"}
    estimate = _rows(out / FILES["estimate"])
    assert len(estimate) == 4 and all(math.isfinite(float(row["run_minutes"])) for row in estimate)
    sources = {row["arch"]: row["source"] for row in estimate}
    assert sources["hrnet"].startswith("real loop") and "bench step ratio" in sources["hrsnet"]


def _fake_python(tmp_path, slow_word):
    """A python3 that hangs (until SIGINT, handled explicitly) when its arguments hold ``slow_word``
    and otherwise exits at once: only the script's time limits are under test."""
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: sys.exit(130))\n"
        f"if {slow_word!r} in ' '.join(sys.argv):\n"
        "    time.sleep(600)\n"
    )
    wrapper = tmp_path / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_time_limits_hold(tmp_path):
    """A command that hangs is stopped at its limit, and what no longer fits the total is skipped
    and named; the script ends within its total and says it did not pass."""
    python = _fake_python(tmp_path, "importlib")  # the versions step hangs
    began = time.monotonic()
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")],
        cwd=ROOT,
        env=_environment(tmp_path, PYTHON=str(python), TOTAL_SECONDS="46", TIME_SCALE="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - began < 46
    assert result.returncode == 1
    log = (tmp_path / "out" / FILES["log"]).read_text()
    assert "(time limit)" in log and "skipped (the 46 s are used up)" in log
    assert "failed or skipped command(s)" in log and "all steps passed" not in log


def test_usage_errors(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--everything"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.csv").write_text("x\n")
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path / "used")], capture_output=True, text=True)
    assert result.returncode == 2 and "is not a new or empty folder" in result.stderr
    assert (tmp_path / "used" / "old.csv").read_text() == "x\n"
    if shutil.which("nvidia-smi") is None:  # without --dry-run it needs a GPU, and says so at once
        result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "new")], capture_output=True, text=True)
        assert result.returncode == 2 and "no NVIDIA GPU answers here" in result.stderr
        assert not (tmp_path / "new").exists()


def test_docs_count_the_batchnorm_layers_torchrun_synchronises():
    """docs/gpu.md names how many BatchNorm layers (each a SyncBatchNorm under torchrun) a step has."""
    import re

    import torch

    from hrsnet.models import create_model

    text = " ".join((ROOT / "docs" / "gpu.md").read_text().split())
    official, hrsnet = map(int, re.search(r"\((\d+) in hrnet_official, (\d+) in HRSNet at any C\)", text).groups())
    for arch, expected in (("hrnet_official", official), ("hrsnet", hrsnet), ("hrsnet_skip", hrsnet)):
        for width in (2, 30):
            with torch.device("meta"):
                model = create_model(arch, width=width, num_classes=100)
            assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == expected, (arch, width)
