"""Launching runs: ``fit`` (one run), ``fit_seeds`` (the seeds of one network x C, optionally
packed) and the torchrun path. Each picks how its runs are trained (plain, packed, or one of
several processes) and holds every run's lock around its lifecycle (hrsnet.runs.lifecycle).

While they train, SIGTERM (what ``kill`` and Slurm send) stops training as Ctrl-C does: the
run is marked "interrupted after epoch N; run again to resume" and ``Terminated`` (a
KeyboardInterrupt) is raised; the command line then exits with 143.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import TrainConfig
from ..engine.distributed import (
    DistContext,
    DistributedTrainer,
    check_shardable,
    launched_by_torchrun,
    state_from_bytes,
    state_to_bytes,
)
from ..engine.packing import PackedSeeds
from ..runtime import configure_determinism, resolve_device
from . import preflight
from .lifecycle import finish_run, load_run_data, log, open_run, train_guarded
from .lock import RunLock, RunLockedError

__all__ = ["Terminated", "fit", "fit_seeds", "fit_packed", "fit_distributed", "raise_failures", "sigterm_interrupts"]

# The longest name a run writes in its folder: a temporary file of atomic_write (hrsnet.rundir),
# ".class_examples.npz.<8 random characters>.tmp".
LONGEST_FILE_NAME = len(f".{rundir.EXAMPLES_FILE}.") + 8 + len(rundir.TEMP_SUFFIX)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while runs trained: handled as Ctrl-C is (a KeyboardInterrupt)."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside the block, SIGTERM raises Terminated in the main thread, once (a second SIGTERM
    while the first unwinds is left alone, so the statuses still get written); the previous
    handler is back afterwards. A SIGTERM that the process ignores stays ignored; off the main
    thread (where no handler can be set) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    raised = False

    def terminate(signum, frame):
        nonlocal raised
        if not raised:
            raised = True
            raise Terminated(f"terminated by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def check_path_length(run_dir: Path) -> None:
    """ValueError (one line) when the run's files would have paths longer than the system allows,
    before anything is written (the write would fail with ENAMETOOLONG, mid-run)."""
    try:
        folder = rundir.existing_ancestor(Path(run_dir).parent)
    except OSError:  # a path too long to even look at
        folder = Path(".")
    try:
        path_max, name_max = os.pathconf(folder, "PC_PATH_MAX"), os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return  # limits unknown here: the write's own error will say
    longest = len(os.fsencode(str(run_dir))) + 1 + LONGEST_FILE_NAME
    too_long = [part for part in Path(run_dir).parts if len(os.fsencode(part)) > name_max]
    if longest >= path_max or too_long:
        detail = (
            f"a folder name has {len(os.fsencode(too_long[0]))} bytes, more than the {name_max} allowed"
            if too_long
            else f"its files' paths would have up to {longest} bytes, {path_max - 1} are allowed"
        )
        raise ValueError(f"results path too long: {str(run_dir)[:60]}... ({detail}); choose a shorter --results-dir")


def fit(config: TrainConfig, force: bool = False) -> rundir.Run:
    """Train (or resume, or skip) the run ``config`` describes; returns the run directory, read back.

    A finished run (complete, early-stopped, diverged) whose files agree is skipped unless
    ``force``; a run with a checkpoint continues from its last completed epoch (which also
    repairs a finished run's damaged or missing files); ``force`` starts over. Everything that
    can fail (device, results folder, memory, data, model) is checked before ``force`` removes
    the old files, and the whole run holds the run's lock: a second process is refused.
    """
    if launched_by_torchrun():  # torchrun: this process is one of several training the run together
        return fit_distributed(config, force)
    device = resolve_device(config.device)
    check_path_length(config.run_dir())
    preflight.check_writable(config.results_dir)
    with sigterm_interrupts(), RunLock(config.run_dir()):
        opened = open_run(config, device, force)
        if isinstance(opened, rundir.Run):
            return opened
        train_guarded([opened], opened.run)
        return finish_run(opened)


def fit_seeds(configs: Sequence[TrainConfig], force: bool = False, pack: bool = False) -> list[rundir.Run]:
    """Train the seeds of one network x C in this process: each seed is its own run (``fit``).

    A seed whose run another process holds is skipped with a line saying who holds it; a seed
    that fails does not stop the others, and once they are done the failure is raised (several
    as one error naming each). ``pack`` trains the seeds as one packed network
    (hrsnet.packing): the same result per seed within float rounding, with far fewer kernels.
    """
    configs = list(configs)
    if not configs:
        return []
    shared = {key: value for key, value in configs[0].identity().items() if key != "seed"}
    for config in configs[1:]:
        if {key: value for key, value in config.identity().items() if key != "seed"} != shared:
            raise ValueError(f"fit_seeds trains seeds of one setting; {config.run_id} differs in more than its seed")
    if pack and len(configs) > 1:
        return fit_packed(configs, force)
    results, failures = [], []
    with sigterm_interrupts():  # also between the seeds' runs
        for config in configs:
            try:
                results.append(fit(config, force))
            except RunLockedError as error:
                log(f"[{config.run_id}] skipped: {error}", False)
            except Exception as error:  # the other seeds still train; raised below
                log(f"[{config.run_id}] FAILED: {type(error).__name__}: {error}", False)
                failures.append((config, error))
    raise_failures(failures)
    return results


def raise_failures(failures: list[tuple[TrainConfig, BaseException]]) -> None:
    """Re-raise the one failure as it was, or several as one RuntimeError naming each run."""
    if len(failures) == 1:
        raise failures[0][1]
    if failures:
        raise RuntimeError(
            f"{len(failures)} runs failed: "
            + "; ".join(f"{config.run_id}: {type(error).__name__}: {error}" for config, error in failures)
        ) from failures[0][1]


def fit_packed(configs: Sequence[TrainConfig], force: bool = False) -> list[rundir.Run]:
    """``hrsnet.train.fit_seeds`` with the seeds packed: each seed's run is locked, checked,
    resumed or skipped as ``fit`` does, then the unfinished ones train as one network."""
    device = resolve_device(configs[0].device)
    for config in configs:
        check_path_length(config.run_dir())
    preflight.check_writable(configs[0].results_dir)
    results: list[rundir.Run] = []
    failures: list[tuple[Any, BaseException]] = []
    with sigterm_interrupts(), ExitStack() as locks:
        trainers = []
        for config in configs:
            try:
                locks.enter_context(RunLock(config.run_dir()))
                opened = open_run(config, device, force, packed_with=len(configs))
            except RunLockedError as error:
                log(f"[{config.run_id}] skipped: {error}")
                continue
            except Exception as error:  # the other seeds still train; raised below
                log(f"[{config.run_id}] FAILED: {type(error).__name__}: {error}")
                failures.append((config, error))
                continue
            (results if isinstance(opened, rundir.Run) else trainers).append(opened)
        if trainers:
            train_guarded(trainers, PackedSeeds(trainers).run)
            results.extend(finish_run(trainer) for trainer in trainers)
    raise_failures(failures)
    return sorted(results, key=lambda run: run.seed)


def fit_distributed(config: TrainConfig, force: bool = False) -> rundir.Run:
    """``fit(config, force)`` as one of the processes torchrun started; every process returns
    the run directory as rank 0 read it back."""
    check_path_length(config.run_dir())
    with sigterm_interrupts():
        context = DistContext.start(config.device)
        try:
            return _fit(context, config, force)
        finally:
            context.close()


def _fit(context: DistContext, config: TrainConfig, force: bool) -> rundir.Run:
    if not context.is_main:
        config = dataclasses.replace(config, quiet=True)
    device = context.device
    configure_determinism(config.deterministic, device)
    data = load_run_data(config, device)
    check_shardable(config.batch_size, len(data.train), context.world_size)  # the same answer on every rank
    make_trainer = functools.partial(DistributedTrainer, context=context)
    with ExitStack() as held:

        def open_on_main():
            preflight.check_writable(config.results_dir)
            held.enter_context(RunLock(config.run_dir()))
            return open_run(config, device, force, data=data, make_trainer=make_trainer)

        opened = None

        def share_opened(result):
            nonlocal opened
            opened = result
            if isinstance(result, rundir.Run):
                return "skip", result
            return "train", state_to_bytes(result.checkpoint_state())

        kind, payload = context.on_main(open_on_main, share_opened)
        if kind == "skip":
            return payload
        if context.is_main:
            trainer = opened
        else:
            trainer = make_trainer(config, data, device, Path(config.run_dir()))
            trainer.load_state(state_from_bytes(payload), "rank 0's start state")
        if context.is_main:  # a failure is recorded in the run's status, as fit() does
            train_guarded([trainer], lambda: (trainer.attach(), trainer.run()))
        else:
            trainer.attach()
            trainer.run()
        return context.on_main(lambda: finish_run(trainer), lambda run: run)
