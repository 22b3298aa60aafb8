"""Shared fixtures: a tiny CIFAR-100-format directory, tiny and small training configs, a finished
small run to copy, and child processes of `python -m hrsnet` that a test can signal mid-epoch."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from cifar_fixture import write_cifar100_fixture
from torchvision.datasets import CIFAR100

from hrsnet.config import TrainConfig

# Started in the background (nohup, `&`, some CI runners), this process inherits SIGINT ignored,
# and so would every child it starts: no Ctrl-C test could then see a KeyboardInterrupt. Each test
# process takes Python's own handler, as in a terminal; the tests of an inherited SIG_IGN set it
# themselves (test_pipeline.py).
signal.signal(signal.SIGINT, signal.default_int_handler)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # run_tests.sh runs two workers on the 2 cores: one torch thread each, or they oversubscribe.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cifar_fixture_dir(tmp_path_factory):
    """A small dataset in the real CIFAR-100 python format, and its MD5 sums."""
    root = tmp_path_factory.mktemp("cifar")
    checksums = write_cifar100_fixture(root, train_per_class=5, test_per_class=2)
    return root, checksums


@pytest.fixture
def cifar_checksums(cifar_fixture_dir, monkeypatch):
    """Point torchvision's checksum check at the fixture's files (the check itself still runs)."""
    root, sums = cifar_fixture_dir
    monkeypatch.setattr(CIFAR100, "train_list", [["train", sums["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", sums["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": sums["meta"]})
    return root


def tiny_config(results_dir, **overrides) -> TrainConfig:
    """A run that takes seconds on 2 CPU cores: digits, 32x32, width 2, small subsets."""
    settings = dict(
        arch="hrnet",
        width=2,
        dataset="digits",
        image_size=32,
        epochs=2,
        batch_size=16,
        train_subset=48,
        val_subset=32,
        test_subset=64,
        device="cpu",
        quiet=True,
        results_dir=str(results_dir),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


# The smallest network with every kind of layer of the presets (stem, stage 1, transitions, units,
# fusions, new branches, head): one module per stage and one residual unit per branch. Most of its
# step is the head, which every network and width shares.
SMALL_NETWORK = {"modules_per_stage": (1, 1, 1), "units_per_branch": 1}


def small_config(results_dir, **overrides) -> TrainConfig:
    """tiny_config at C=1 with SMALL_NETWORK and one batch per epoch: for the tests of a run's
    life (its files, faults, resumes, signals), where the network's depth plays no part."""
    settings = dict(width=1, train_subset=16, val_subset=16, test_subset=32, model_options=SMALL_NETWORK)
    return tiny_config(results_dir, **{**settings, **overrides})


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A finished small_config run (complete after 2 epochs, with last.pt), trained once."""
    from hrsnet.runs import fit

    config = small_config(tmp_path_factory.mktemp("finished"))
    assert fit(config).status.state == "complete"
    return config


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run in this test's folder: (config, run folder). Its checkpoints are
    hard links: a run replaces a file by rename, never writes through one, and a test that writes
    over a checkpoint unlinks it first, so the original stays as it was."""
    from hrsnet.runs.lock import LOCK_FILE

    config = dataclasses.replace(finished_run, results_dir=str(tmp_path / "results"))

    def copy(source, target):
        (os.link if source.endswith(".pt") else shutil.copy2)(source, target)

    shutil.copytree(
        finished_run.run_dir(), config.run_dir(), copy_function=copy, ignore=shutil.ignore_patterns(LOCK_FILE)
    )
    return config, config.run_dir()


def small_arguments(results_dir, **overrides) -> list[str]:
    """`python -m hrsnet train` options of small_config(results_dir, **overrides) (True: a flag)."""
    settings = dict(arch="hrnet", width=1, dataset="digits", image_size=32, epochs=2, batch_size=16)
    settings.update(train_subset=16, val_subset=16, test_subset=32, device="cpu", results_dir=results_dir)
    arguments = []
    for name, value in {**settings, **overrides}.items():
        flag = "--" + name.replace("_", "-")
        arguments += [flag] if value is True else [flag, str(value)]
    for key, value in SMALL_NETWORK.items():
        arguments += ["--model-option", f"{key}={','.join(map(str, value)) if isinstance(value, tuple) else value}"]
    return [*arguments, "--quiet"]


CHILD_SCRIPT = """\
import os, runpy, signal, sys, time

# The suite may run with SIGINT or SIGTERM ignored, and a child inherits ignored signals.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
MODULE, HOLD_EPOCH, FOLDER = {module!r}, {hold_epoch!r}, {folder!r}
if HOLD_EPOCH is not None:
    import hrsnet.engine.trainer as trainer

    real_epoch, real_step, now = trainer.Trainer.train_one_epoch, trainer.train_step, {{}}

    def train_one_epoch(self, epoch):
        now.update(epoch=epoch, steps=0)
        return real_epoch(self, epoch)

    def train_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        now["steps"] += 1
        if now["epoch"] == HOLD_EPOCH and now["steps"] == 1:  # mid-epoch: one step trained, unsaved
            open(os.path.join(FOLDER, f"held.{{os.getpid()}}"), "w").close()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not os.path.exists(os.path.join(FOLDER, "release")):
                time.sleep(0.01)
        return result

    trainer.Trainer.train_one_epoch, trainer.train_step = train_one_epoch, train_step
sys.argv = [MODULE, *sys.argv[1:]]
runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
"""


def child_script(folder, module: str = "hrsnet", hold_epoch: int | None = None):
    """A script that runs `python -m MODULE` with Python's own SIGINT handler and the default
    SIGTERM. ``hold_epoch``: each training process it runs (also as torchrun's worker script)
    writes FOLDER/held.<pid> after the first step of that epoch and waits there (for a signal,
    FOLDER/release, or 2 minutes): a test then signals it mid-epoch without racing the clock."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"run_{module.replace('.', '_')}_{hold_epoch}.py"
    script.write_text(CHILD_SCRIPT.format(module=module, hold_epoch=hold_epoch, folder=str(folder)))
    return script


def wait_until_held(process, folder, count: int = 1, timeout: float = 120) -> None:
    """Until ``count`` processes wait in FOLDER (child_script's hold); AssertionError if the
    child ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while len(list(Path(folder).glob("held.*"))) < count:
        if process.poll() is not None or time.monotonic() > deadline:
            stderr = process.stderr.read() if process.stderr and process.poll() is not None else ""
            raise AssertionError(f"no training process held in {folder} (exit {process.poll()}): {stderr[-3000:]}")
        time.sleep(0.02)


def script_validation_losses(monkeypatch, losses):
    """Make the validation loss of successive epochs ``losses`` (the model still really trains)."""
    import hrsnet.engine.trainer as train_module

    remaining = iter(losses)
    real_evaluate = train_module.Trainer.evaluate

    def scripted(self, split, model=None):
        result = real_evaluate(self, split, model)
        if split is self.data.val:
            result.loss = next(remaining)
        return result

    monkeypatch.setattr(train_module.Trainer, "evaluate", scripted)


def train_on(trainer, images, labels):
    """One training step (hrsnet.engine.step.train_step) of ``trainer``'s model, optimizer and
    settings on this batch; returns its loss."""
    from hrsnet.engine.step import BatchShare, train_step

    index = torch.arange(len(labels), device=images.device)
    share = BatchShare(images, labels, index, trainer.augment_generator, trainer.rows(len(index)))
    losses, _, _ = train_step(trainer.step_model, trainer.optimizer, [share], trainer.step_settings)
    return losses[0]
