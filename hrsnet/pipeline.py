"""The whole report in one command: ``python -m hrsnet all`` (``./run_all.sh`` wraps it).

Trains every run of a profile, one training notebook (notebooks/01_train.ipynb) per network x C
with that group's pending seeds, in a pool of ``--jobs`` child processes; then executes the
architecture and figures notebooks and writes RESULTS_DIR/report.html. What happened to a run is
read from its run directory (hrsnet.runs.lifecycle.check_run), never from what a notebook printed.

Files. Executed notebooks and their logs go to RESULTS_DIR/notebooks/ under a temporary name of
this process (``.NAME.HOST.PID.ipynb``) and are renamed when the notebook ends, so two pipelines
on one results folder never read each other's half-written files. The figures notebook writes
into a staging folder beside FIGURES_DIR/<profile>/, which replaces that folder only once it is
complete; the figures and the report are written under a lock (RESULTS_DIR/.lock), one pipeline
at a time. A pipeline killed at any point leaves the previous complete figures.

Signals. SIGINT (Ctrl-C) and SIGTERM (``kill``, Slurm) stop every job: each child interrupts its
notebook's kernel, whose runs record "interrupted after epoch N" and release their locks, and a
run whose training process is gone while its status still says "running" is marked failed here.
The pipeline then says how to resume (the same command again) and exits 130 or 143. A pipeline
started with SIGINT ignored (``command &``) keeps ignoring it, as the shell intends.

``python -m hrsnet.pipeline SPEC`` is the child process that executes one notebook
(``run_notebook_job``).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import rundir
from .config import TrainConfig
from .profiles import load_profile, profile_runs, resolve_profile
from .provenance import git_commit, machine_text, tree_modified
from .runs.lifecycle import check_run
from .runs.lock import RunLock, RunLockedError, describe_holder, lock_state

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
KERNEL = "hrsnet"
TRAIN_NOTEBOOK, ARCHITECTURE_NOTEBOOK, FIGURES_NOTEBOOK = "01_train", "00_architecture", "02_figures"
FINISHED = "skip: finished"  # check_run's action for a finished run whose files agree
POLL_SECONDS = 0.05  # how often the pool and a child look at their processes: a stop takes effect within this
# A kernel ignores SIGINT between two cells, so a child repeats the interrupt until its notebook
# ends; a kernel that still runs this long after the first one is killed (settle_run then marks
# its runs).
INTERRUPT_REPEAT_SECONDS = 5.0
INTERRUPT_GRACE_SECONDS = 120.0
# How long to wait for the lock of a run whose notebook process ended abnormally: its kernel
# notices that its parent is gone within a second or two, and only then releases the lock.
ORPHAN_WAIT_SECONDS = 15.0
RESUME_HINT = (
    "run the same command again to resume (finished runs are skipped; an interrupted run resumes "
    "after its last completed epoch)"
)


def say(text: str, error: bool = False) -> None:
    """One or more lines, at once (a pipe or a log file sees them as they happen)."""
    try:
        print(text, file=sys.stderr if error else sys.stdout, flush=True)
    except BrokenPipeError:  # the reader is gone (`| tee`, ended by the same Ctrl-C): the jobs still stop in order
        if error:
            sys.stderr = open(os.devnull, "w")  # for the rest of this process
        else:
            sys.stdout = open(os.devnull, "w")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", (socket.gethostname() or "localhost").split(".")[0])


def _tag() -> str:
    """This process, in temporary file names: HOST.PID."""
    return f"{_host()}.{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(folder: Path, pattern: str) -> Iterator[Path]:
    """Entries of ``folder`` named by ``pattern`` (with a ``pid`` group) that a dead process of this
    host left behind."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = re.fullmatch(pattern, path.name)
        if match and match["host"] == _host() and not _alive(int(match["pid"])):
            yield path


# --- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineOptions:
    """What ``python -m hrsnet all`` was asked to do (its flags; see ``--help``)."""

    profile: str = "auto"
    seeds: int | None = None
    force: bool = False
    only: str | None = None
    jobs: int = 1
    gpus: tuple[str, ...] | None = None
    train: bool = True
    data_dir: str | None = None
    results_dir: str = "results"
    figures_dir: str = "figures"
    task: int | None = None  # Slurm: train only this row of `python -m hrsnet runs`


def cpu_cores() -> int:
    """The cores this process may use (not every core of the machine under a CPU affinity or Slurm)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as a job's CUDA_VISIBLE_DEVICES names them."""
    count = torch.cuda.device_count()
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        listed = [entry.strip() for entry in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if entry.strip()]
        return listed[:count]
    return [str(index) for index in range(count)]


def job_gpus(requested: tuple[str, ...] | None, jobs: int) -> list[str]:
    """The GPUs the jobs take in turn: ``--gpus``, checked against what is visible; without it,
    every visible GPU when several jobs run (one job leaves CUDA_VISIBLE_DEVICES as it is)."""
    visible = visible_gpus()
    if not requested:
        return visible if jobs > 1 else []
    asked = ",".join(requested)
    if not visible:
        raise ValueError(
            f"--gpus {asked}: no CUDA GPU is visible to this process (torch.cuda.device_count() is 0); "
            "leave out --gpus to train on the CPU"
        )
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        unknown = [gpu for gpu in requested if gpu not in visible]
    else:
        unknown = [gpu for gpu in requested if gpu.isdigit() and int(gpu) >= len(visible)]
    if unknown:
        raise ValueError(f"--gpus {asked}: GPU {', '.join(unknown)} is not visible; visible: {', '.join(visible)}")
    return list(requested)


# --- one notebook in a child process -------------------------------------------------------------


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment with a job's variables, and this checkout importable (the child
    and its kernel import hrsnet from it)."""
    env = {**os.environ, **extra}
    paths = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path]
    if str(REPO) not in paths:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *paths])
    return env


def notebook_job_command(spec: dict[str, Any]) -> list[str]:
    """The command line of the child process that executes one notebook (``run_notebook_job``).

    A child process per notebook, not a thread: each job needs its own environment (its GPU in
    CUDA_VISIBLE_DEVICES, its share of the cores in OMP_NUM_THREADS, read by torch at start), which
    the kernel inherits from the process that starts it; and a child can interrupt its own kernel
    on a signal while this process keeps the pool in order."""
    return [sys.executable, "-m", "hrsnet.pipeline", json.dumps(spec)]


@dataclass
class NotebookOutcome:
    """How one executed notebook ended: its error in one line (None when it ran through)."""

    error: str | None
    interrupted: bool
    seconds: int
    notebook: Path
    log: Path
    abnormal: bool  # the child ended without reporting (killed): its kernel may still hold runs


@dataclass
class NotebookJob:
    """One notebook executed by a child process, its files under temporary names of this process
    until it ends, then renamed to RESULTS_DIR/notebooks/NAME.ipynb and NAME.log."""

    name: str
    notebook: Path
    parameters: dict[str, Any]
    folder: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    started: float = 0.0
    stopping: bool = False

    def temporary(self, suffix: str) -> Path:
        return self.folder / f".{self.name}.{_tag()}{suffix}"

    @property
    def output(self) -> Path:
        return self.folder / f"{self.name}.ipynb"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        spec = {
            "input": str(self.notebook),
            "output": str(self.temporary(".ipynb")),
            "result": str(self.temporary(".json")),
            "parameters": self.parameters,
            "kernel": KERNEL,
            "cwd": str(NOTEBOOKS),
        }
        with open(self.temporary(".log"), "w") as log:
            # Its own process group (setsid): a Ctrl-C in the terminal reaches only the pipeline, which stops
            # each job once (two interrupts could cut short a kernel recording the first one).
            self.process = subprocess.Popen(
                notebook_job_command(spec),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(self.env),
                cwd=REPO,
                start_new_session=True,
            )
        self.started = time.monotonic()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Ask the child to interrupt its notebook (once)."""
        if self.running() and not self.stopping:
            self.stopping = True
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def finish(self) -> NotebookOutcome:
        """Wait for the child, read its report, and give its files their final names."""
        code = self.process.wait()
        seconds = round(time.monotonic() - self.started)
        result_path = self.temporary(".json")
        try:
            result = json.loads(result_path.read_text())
        except (OSError, ValueError):
            result = None
        result_path.unlink(missing_ok=True)
        for temporary, final in ((self.temporary(".ipynb"), self.output), (self.temporary(".log"), self.log)):
            if temporary.exists():
                os.replace(temporary, final)
        if result is None:
            how = f"was killed by signal {-code}" if code < 0 else f"ended with exit code {code}"
            error, interrupted, abnormal = f"the notebook's process {how} before it could report", self.stopping, True
        else:
            error, interrupted, abnormal = result["error"], result["interrupted"], False
        return NotebookOutcome(error, interrupted, seconds, self.output, self.log, abnormal)


class Stop:
    """SIGINT and SIGTERM while the pipeline runs: recorded, never raised, so that the main loop
    stops every job in order (a KeyboardInterrupt could land anywhere, between a job's start and
    its bookkeeping)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Stop:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                continue  # started in the background (`command &`): Ctrl-C is not meant for this process
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python

    def _record(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def run_foreground(job: NotebookJob, stop: Stop) -> NotebookOutcome:
    """Start ``job`` and wait for it, stopping it when a signal arrives."""
    job.start()
    while job.running():
        if stop.requested:
            job.stop()
        time.sleep(POLL_SECONDS)
    return job.finish()


# --- what a run directory says -----------------------------------------------------------------

FINISHED_RUN, HELD_RUN, FAILED_RUN = "finished", "held", "failed"


def settle_run(run_dir: Path, wait_seconds: float = 0.0) -> bool:
    """Mark a run failed whose status still says "running" though no process holds its lock any
    more (its training process was killed before it could record why). ``wait_seconds``: how long
    a holder may take to go. True when the status was rewritten."""
    status = rundir.read_status(run_dir)
    if status is None or status.state != "running":
        return False
    deadline = time.monotonic() + wait_seconds
    while lock_state(run_dir) == "held":
        if time.monotonic() >= deadline:
            return False  # a live process trains it
        time.sleep(POLL_SECONDS)
    try:
        with RunLock(run_dir):
            status = rundir.read_status(run_dir)  # again, under the lock
            if status is None or status.state != "running":
                return False
            try:
                epochs = str(len(rundir.read_history(run_dir)))
            except rundir.RunFileError:
                epochs = "?"
            rundir.write_status(
                run_dir,
                rundir.RunStatus(
                    "failed",
                    f"interrupted after epoch {epochs} (its training process ended without recording it); "
                    "run again to resume",
                ),
            )
            return True
    except (RunLockedError, rundir.RunFileError):
        return False  # taken over by another process, or the disk refuses: the next check says so


def run_line(config: TrainConfig) -> tuple[str, str]:
    """What a run's directory says now, as "seed S (RUN_ID): ...", and whether the run is finished,
    held by another process or failed (not started, interrupted, failed, damaged)."""
    run_dir = config.run_dir()
    head = f"seed {config.seed} ({config.run_id}): "
    check = check_run(run_dir)
    if check.state == "training":
        return head + "skipped: " + check.action.removeprefix("skip: "), HELD_RUN
    status = rundir.read_status(run_dir)
    if status is None:
        return head + "not started", FAILED_RUN
    text = f"{status.state}: {status.reason}" if status.reason else status.state
    if check.action == FINISHED:
        return head + text, FINISHED_RUN
    problems = [problem for problem in check.problems if problem != status.reason]
    if check.action.startswith("cannot resume"):
        problems.append(check.action)
    return head + "".join([text, *(f"; {problem}" for problem in problems)]), FAILED_RUN


# --- the figures' staging folder and its swap ----------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    return renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0


def replace_folder(staged: Path, target: Path) -> None:
    """Put the complete folder ``staged`` at ``target`` and remove the one that was there. Where the
    system can swap two folders in one step, ``target`` is never missing; elsewhere it is missing
    between two renames, and a pipeline killed there leaves ``.NAME.previous.HOST.PID``, which the
    next one puts back (``recover_figures``)."""
    if not target.exists():
        os.rename(staged, target)
        return
    if _exchange(staged, target):
        shutil.rmtree(staged, ignore_errors=True)  # now the previous set
        return
    previous = target.with_name(f".{target.name}.previous.{_tag()}")
    os.rename(target, previous)
    os.rename(staged, target)
    shutil.rmtree(previous, ignore_errors=True)


STAGING_PATTERN = r"\.(?P<name>.+)\.(?P<kind>staging|previous)\.(?P<host>[^.]+)\.(?P<pid>\d+)"


def recover_figures(figures_dir: Path) -> None:
    """Clean up after pipelines of this host that died while writing figures: a half-written staging
    folder is removed; a previous set that was moved aside is put back where the new one never came."""
    for path in _leftovers(figures_dir, STAGING_PATTERN):
        match = re.fullmatch(STAGING_PATTERN, path.name)
        target = figures_dir / match["name"]
        if match["kind"] == "previous" and not target.exists():
            os.rename(path, target)
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def report_lock(results_dir: Path, stop: Stop) -> Iterator[bool]:
    """Hold RESULTS_DIR/.lock while writing the figures and the report (one pipeline at a time);
    yields False when a signal arrived while waiting for it."""
    lock = RunLock(results_dir)
    announced = False
    while True:
        try:
            lock.acquire()
            break
        except RunLockedError as error:
            if not announced:
                say(f"[figures] waiting for {describe_holder(error.holder)}, which writes the figures of {results_dir}")
                announced = True
            if stop.requested:
                yield False
                return
            time.sleep(1)
    try:
        yield True
    finally:
        lock.release()


# --- the pipeline --------------------------------------------------------------------------------


@dataclass
class Group:
    """The runs of one network x C that one training notebook trains."""

    arch: str
    width: int
    configs: list[TrainConfig]


@dataclass
class Running:
    """A group whose notebook runs, and what it was given."""

    group: Group
    title: str
    job: NotebookJob
    configs: list[TrainConfig]


class Pipeline:
    """``python -m hrsnet all``: see the module's docstring."""

    def __init__(self, options: PipelineOptions):
        self.options = options
        self.results_dir = Path(os.path.abspath(options.results_dir))
        self.figures_dir = Path(os.path.abspath(options.figures_dir))
        self.data_dir = os.path.abspath(options.data_dir) if options.data_dir else None
        profile = options.profile
        if profile.endswith(".toml") or "/" in profile:  # the kernels run in notebooks/: an absolute path
            profile = os.path.abspath(profile)
        self.profile, self.why = resolve_profile(profile)
        self.spec = load_profile(self.profile)
        self.notebook_dir = self.results_dir / "notebooks"
        self.failed_runs: list[str] = []
        self.failed_notebooks: list[str] = []
        self.stop = Stop()
        self.started = time.monotonic()
        self.runs_in_profile = 0
        self.runs_trained = 0  # runs handed to a training job by this pipeline (finished ones are skipped)

    # -- helpers

    def _configs(self) -> list[TrainConfig]:
        return profile_runs(
            self.spec, self.results_dir, self.data_dir, only=self.options.only, seeds=self.options.seeds
        )

    def _train_parameters(self, arch: str, width: int, seeds: list[int]) -> dict[str, Any]:
        parameters = {
            "arch": arch,
            "width": width,
            "seeds": seeds,
            "profile": self.profile,
            "results_dir": str(self.results_dir),
            "force": self.options.force,
        }
        if self.data_dir is not None:
            parameters["data_dir"] = self.data_dir
        return parameters

    def _remove_leftovers(self) -> None:
        """Temporary notebook files of dead pipelines of this host."""
        pattern = r"\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.(ipynb|log|json)"
        for path in _leftovers(self.notebook_dir, pattern):
            path.unlink(missing_ok=True)

    @staticmethod
    def _check_kernel() -> None:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel  # lazy: only where notebooks run

        try:
            KernelSpecManager().get_kernel_spec(KERNEL)
        except NoSuchKernel:
            raise ValueError(
                f"no Jupyter kernel named {KERNEL}: ./run_all.sh registers it (scripts/ensure_env.sh), "
                f"or run: python -m ipykernel install --sys-prefix --name {KERNEL}"
            ) from None

    # -- the command

    def run(self) -> int:
        options = self.options
        if options.task is not None and (not options.train or options.jobs > 1):
            raise ValueError("--task trains one run: it takes neither --no-train nor --jobs")
        say(f"profile: {self.profile} ({self.why})")
        configs = self._configs()
        self.runs_in_profile = len(configs)
        gpus = job_gpus(options.gpus, options.jobs)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.notebook_dir.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        self._check_kernel()
        with self.stop:
            if options.task is not None:
                return self._task(configs, gpus)
            self._train(configs, gpus)
            if self.stop.requested:
                say(f"interrupted ({self.stop.name}): {RESUME_HINT}", error=True)
                return self.stop.exit_code
            summary = self._figures_and_report()
            if self.stop.requested:
                say(f"interrupted ({self.stop.name}): {RESUME_HINT}", error=True)
                return self.stop.exit_code
        say(summary)
        if self.failed_runs:
            say(f"failed runs ({len(self.failed_runs)}): {' '.join(self.failed_runs)}", error=True)
        if self.failed_notebooks:
            say(f"failed notebooks: {', '.join(self.failed_notebooks)}", error=True)
        return 1 if self.failed_runs or self.failed_notebooks else 0

    # -- training

    def _groups(self, configs: list[TrainConfig]) -> list[Group]:
        """Network x C groups with a run to train (finished runs left out unless --force)."""
        groups: dict[tuple[str, int], Group] = {}
        for config in configs:
            group = groups.setdefault((config.arch, config.width), Group(config.arch, config.width, []))
            if self.options.force or check_run(config.run_dir()).action != FINISHED:
                group.configs.append(config)
        return [group for group in groups.values() if group.configs]

    def _train(self, configs: list[TrainConfig], gpus: list[str]) -> None:
        if not self.options.train:
            pending = sum(check_run(config.run_dir()).action != FINISHED for config in configs)
            verb = "is" if pending == 1 else "are"
            runs = _plural(pending, "run")
            say(f"[train] skipped (--no-train); {runs} of profile {self.spec.name} {verb} not finished")
            return
        groups = self._groups(configs)
        total = len(groups)
        if total == 0:
            say(f"[train] every run of profile {self.spec.name} is finished (--force reruns them)")
            return
        jobs = min(self.options.jobs, total)
        threads = max(1, cpu_cores() // jobs) if jobs > 1 else None
        if jobs > 1 and gpus:
            say(f"[jobs] {jobs} at a time on GPUs {' '.join(gpus)}, {_plural(threads, 'CPU thread')} each")
        elif jobs > 1:
            each = _plural(threads, "thread")
            say(f"[jobs] {jobs} at a time on {cpu_cores()} CPU cores, {each} each (OMP_NUM_THREADS)")
        running: dict[int, Running] = {}  # by slot
        next_group = 0
        while next_group < total or running:
            if self.stop.requested:
                next_group = total
                for item in running.values():
                    item.job.stop()
            while next_group < total and len(running) < jobs:
                slot = min(set(range(jobs)) - set(running))
                item = self._start_group(groups[next_group], next_group + 1, total, slot, gpus, threads)
                next_group += 1
                if item is not None:
                    running[slot] = item
            for slot, item in list(running.items()):
                if not item.job.running():
                    del running[slot]
                    self._finish_group(item)
            if running:
                time.sleep(POLL_SECONDS)

    def _start_group(
        self, group: Group, number: int, total: int, slot: int, gpus: list[str], threads: int | None
    ) -> Running | None:
        """Start the group's notebook with the seeds still to train (checked now: another process may
        have finished or taken some since the listing); None when none is left."""
        notes, to_train = [], []
        for config in group.configs:
            check = check_run(config.run_dir())
            if check.state == "training":
                notes.append(f"  seed {config.seed} ({config.run_id}): skipped: {check.action.removeprefix('skip: ')}")
            elif check.action == FINISHED and not self.options.force:
                status = rundir.read_status(config.run_dir())
                notes.append(
                    f"  seed {config.seed} ({config.run_id}): already finished ({status.state}): {status.reason}"
                )
            else:
                to_train.append(config)
        seeds = [config.seed for config in to_train]
        title = f"[train {number}/{total}] {group.arch} C={group.width}"
        if seeds:
            title += f", {'seeds' if len(seeds) > 1 else 'seed'} {' '.join(map(str, seeds))}"
        if not to_train:
            say("\n".join([title, *notes]))
            return None
        env: dict[str, str] = {}
        where = ""
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}"
        if threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
            where = where or f" with {_plural(threads, 'CPU thread')}"
        job = NotebookJob(
            f"train_{self.spec.name}_{group.arch}_c{group.width}",
            NOTEBOOKS / f"{TRAIN_NOTEBOOK}.ipynb",
            self._train_parameters(group.arch, group.width, seeds),
            self.notebook_dir,
            env,
        )
        job.start()
        self.runs_trained += len(to_train)
        say("\n".join([f"{title}: started{where}", *notes]))
        return Running(group, title, job, to_train)

    def _finish_group(self, item: Running) -> None:
        """One block for the group: how it ended, then one line per seed from its run directory."""
        outcome = item.job.finish()
        wait = ORPHAN_WAIT_SECONDS if outcome.abnormal else 0.0
        lines, failed = [], []
        for config in item.configs:
            settle_run(config.run_dir(), wait)
            line, kind = run_line(config)
            lines.append(f"  {line}")
            if kind == FAILED_RUN:
                failed.append(config.run_id)
        # Stopped: unless the notebook had ended with every run finished before the signal came.
        interrupted = outcome.interrupted or (item.job.stopping and bool(failed or outcome.error))
        if interrupted:
            how = f"interrupted after {outcome.seconds}s"
        elif failed or outcome.error:
            how = f"FAILED after {outcome.seconds}s"
        else:
            how = f"done in {outcome.seconds}s"
        say("\n".join([f"{item.title}: {how}", *lines]))
        if interrupted:
            return
        self.failed_runs.extend(failed)
        if outcome.error and not failed:  # the notebook failed outside its runs
            self.failed_runs.append(f"{item.group.arch}_c{item.group.width}")
        if failed or outcome.error:
            say(
                f"  FAILED: {outcome.error or 'see the log'}\n  log: {outcome.log}; notebook: {outcome.notebook}",
                error=True,
            )

    # -- one run (a Slurm array task)

    def _task(self, configs: list[TrainConfig], gpus: list[str]) -> int:
        """Train row ``--task`` of the profile's runs (the index column of `python -m hrsnet runs`)."""
        index = self.options.task
        if not 0 <= index < len(configs):
            raise ValueError(f"profile {self.spec.name} has no run with index {index} ({_plural(len(configs), 'run')})")
        config = configs[index]
        check = check_run(config.run_dir())
        say(
            f"[task {index}] {config.arch} C={config.width} seed {config.seed} "
            f"({config.run_id}, {check.state}) on {socket.gethostname()}"
        )
        if check.state == "training":
            say(f"  skipped: {check.action.removeprefix('skip: ')}")
            return 0
        if check.action == FINISHED and not self.options.force:
            status = rundir.read_status(config.run_dir())
            say(f"  seed {config.seed} ({config.run_id}): already finished ({status.state}): {status.reason}")
            return 0
        env: dict[str, str] = {}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[0]
        slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
        if slurm_cpus.isdigit() and int(slurm_cpus) > 0:  # the CPUs Slurm allotted to this job, not the whole node's
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = slurm_cpus
        job = NotebookJob(
            f"train_{config.run_id}",
            NOTEBOOKS / f"{TRAIN_NOTEBOOK}.ipynb",
            self._train_parameters(config.arch, config.width, [config.seed]),
            self.notebook_dir,
            env,
        )
        outcome = run_foreground(job, self.stop)
        settle_run(config.run_dir(), ORPHAN_WAIT_SECONDS if outcome.abnormal else 0.0)
        line, kind = run_line(config)
        say(f"  {line} [{outcome.seconds}s]")
        if self.stop.requested or outcome.interrupted:
            say(f"interrupted ({self.stop.name or 'the notebook'}): {RESUME_HINT}", error=True)
            return self.stop.exit_code if self.stop.requested else 130
        if kind == FAILED_RUN or outcome.error:
            say(
                f"  FAILED: {outcome.error or 'see the log'}\n  log: {outcome.log}; notebook: {outcome.notebook}",
                error=True,
            )
            return 1
        return 0

    # -- figures and report

    def _notebook(self, name: str, parameters: dict[str, Any]) -> NotebookOutcome:
        say(f"[{name.split('_', 1)[1]}] notebooks/{name}.ipynb")
        outcome = run_foreground(
            NotebookJob(name, NOTEBOOKS / f"{name}.ipynb", parameters, self.notebook_dir), self.stop
        )
        if outcome.error and not self.stop.requested:
            self.failed_notebooks.append(f"{name}.ipynb")
            say(f"  failed: {outcome.error}; log: {outcome.log}", error=True)
        return outcome

    def _figures_and_report(self) -> str:
        """The architecture and figures notebooks, the figures swapped into place and the report, under
        the results folder's lock; returns the closing summary."""
        name = self.spec.name
        target = self.figures_dir / name
        report = self.results_dir / "report.html"
        figures_line = f"  figures:  {target}/\n  table:    {target / 'results_table.md'}"
        report_line = f"  report:   {report}"
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        with report_lock(self.results_dir, self.stop) as locked:
            if not locked:
                return ""
            recover_figures(self.figures_dir)
            architecture = self._notebook(ARCHITECTURE_NOTEBOOK, {})
            if self.stop.requested:
                return ""
            staging = self.figures_dir / f".{name}.staging.{_tag()}"
            parameters = {
                "profile": self.profile,
                "results_dir": str(self.results_dir),
                "figures_dir": str(staging),
                "data_dir": self.data_dir,
                "seeds": self.options.seeds,
            }
            figures = self._notebook(FIGURES_NOTEBOOK, parameters)
            try:
                if self.stop.requested:
                    return ""
                keeps = f"{target}/ keeps the previous figures" if target.exists() else f"{target}/ was not created"
                if figures.error is None and not (staging / name).is_dir():
                    figures.error = f"it wrote no folder {staging / name}"
                    self.failed_notebooks.append(f"{FIGURES_NOTEBOOK}.ipynb")
                if figures.error is None:
                    try:
                        rundir.write_json(staging / name / rundir.PIPELINE_FILE, self._cost_record())
                        replace_folder(staging / name, target)
                    except OSError as error:
                        figures.error = f"{target}/ could not be replaced ({error})"
                        self.failed_notebooks.append(f"{FIGURES_NOTEBOOK}.ipynb")
                if figures.error is not None:
                    figures_line = (
                        f"  figures:  NOT written: notebooks/{FIGURES_NOTEBOOK}.ipynb failed: {figures.error}\n"
                        f"            log: {figures.log}; {keeps}"
                    )
                    report_line = f"  report:   not written (it shows the figures); {self._previous(report)}"
                elif architecture.error is not None:
                    report_line = (
                        f"  report:   not written (notebooks/{ARCHITECTURE_NOTEBOOK}.ipynb failed); "
                        f"{self._previous(report)}"
                    )
                else:
                    from .analysis.report import render_report  # lazy: statistics and plotting, for this step only

                    try:
                        render_report([architecture.notebook, figures.notebook], report)
                    except (ValueError, OSError, rundir.RunFileError) as error:
                        self.failed_notebooks.append("report.html")
                        report_line = f"  report:   NOT written: {type(error).__name__}: {error}"
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        seconds = round(time.monotonic() - self.started)
        failures = ", with failures (listed below)" if self.failed_runs or self.failed_notebooks else ""
        return "\n".join(
            [
                f"done in {seconds}s (profile {name}){failures}",
                figures_line,
                report_line,
                f"  runs:     {self.results_dir / 'runs'}/",
            ]
        )

    def _cost_record(self) -> dict[str, Any]:
        """What this pipeline cost, for pipeline.json beside the figures: wall time from its start to
        the figures, the jobs, the runs it trained (a rerun that skips finished runs costs less), and
        when, where and from which commit it ran."""
        return {
            "profile": self.spec.name,
            "seconds": round(time.monotonic() - self.started, 1),
            "jobs": self.options.jobs,
            "runs_in_profile": self.runs_in_profile,
            "runs_trained": self.runs_trained,
            "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_text(),
            "commit": git_commit(),
            "tree_modified": tree_modified(),
        }

    @staticmethod
    def _previous(report: Path) -> str:
        return f"{report} is the previous one" if report.exists() else f"no {report} yet"


def run_pipeline(options: PipelineOptions) -> int:
    """``python -m hrsnet all``: the exit code (0 all done, 1 a run or notebook failed, 130/143 stopped
    by SIGINT/SIGTERM); bad options raise ValueError with a one-line message."""
    return Pipeline(options).run()


# --- the child process: one notebook -------------------------------------------------------------


def _one_line(text: str) -> str:
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", text or "").splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


def _signal_group(pid: int, signum: int) -> None:
    """Signal a kernel and what it started (jupyter_client starts it with setsid, in a process group of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def run_notebook_job(spec_text: str) -> int:
    """Execute one notebook with papermill as the pipeline's child process; report how it ended in
    the spec's result file ({"error": one line or None, "interrupted": bool}).

    papermill runs in a thread, so that this main thread owns the signals: the first SIGINT or
    SIGTERM (or the pipeline's death) interrupts the kernel with SIGINT, where the training records
    "interrupted after epoch N" and the notebook ends with a KeyboardInterrupt; papermill then saves
    the executed notebook and shuts the kernel down as after any error. (papermill in the main
    thread would install its own handlers, which request the kernel's shutdown at once.)"""
    spec = json.loads(spec_text)
    received: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: received.append(number))
    parent = os.getppid()
    import papermill  # lazy: seconds to import, and only this child process needs it
    from jupyter_client import AsyncKernelManager  # lazy: as above

    managers: list[AsyncKernelManager] = []

    class RecordedKernelManager(AsyncKernelManager):
        """A kernel manager that this thread can find, to interrupt its kernel."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            managers.append(self)

    outcome: dict[str, str] = {}

    def execute() -> None:
        try:
            papermill.execute_notebook(
                spec["input"],
                spec["output"],
                parameters=spec["parameters"],
                kernel_name=spec["kernel"],
                cwd=spec["cwd"],
                progress_bar=False,
                start_timeout=300,
                kernel_manager_class=RecordedKernelManager,
            )
        except papermill.PapermillExecutionError as error:
            outcome["error"] = f"{error.ename}: {_one_line(error.evalue)}".rstrip(": ")
            print(re.sub(r"\x1b\[[0-9;]*m", "", str(error)), file=sys.stderr, flush=True)
        except Exception as error:  # the kernel died, would not start, ...: reported in one line
            outcome["error"] = f"{type(error).__name__}: {_one_line(str(error))}".rstrip(": ")
            print(f"error: {outcome['error']}", file=sys.stderr, flush=True)

    worker = threading.Thread(target=execute, name="papermill", daemon=True)
    worker.start()
    first_interrupt = last_interrupt = None
    killed = False
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        if not received and os.getppid() == parent:
            continue
        process = next((getattr(m.provisioner, "process", None) for m in managers if m.provisioner), None)
        if process is None:
            continue  # no kernel yet: interrupt it once it exists
        now = time.monotonic()
        if first_interrupt is None or (now - last_interrupt >= INTERRUPT_REPEAT_SECONDS and not killed):
            first_interrupt = first_interrupt or now
            last_interrupt = now
            if now - first_interrupt >= INTERRUPT_GRACE_SECONDS:
                _signal_group(process.pid, signal.SIGKILL)
                killed = True
            else:
                _signal_group(process.pid, signal.SIGINT)
    interrupted = bool(received) or os.getppid() != parent
    result = {"error": outcome.get("error"), "interrupted": interrupted}
    rundir.atomic_write(Path(spec["result"]), lambda stream: json.dump(result, stream))
    if result["error"] is None:
        return 0
    return 130 if interrupted else 1


if __name__ == "__main__":
    sys.exit(run_notebook_job(sys.argv[1]))
