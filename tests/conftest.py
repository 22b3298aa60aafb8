"""Shared fixtures: a tiny CIFAR-100-format directory, tiny training configs."""

from __future__ import annotations

import os
import signal

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
