"""Small datasets in the real CIFAR-100 and CIFAR-10 python formats, for tests that load them through torchvision."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np


def write_cifar100_fixture(
    root: Path | str, train_per_class: int = 5, test_per_class: int = 2, num_classes: int = 100, seed: int = 0
) -> dict[str, str]:
    """Write a small dataset in the real CIFAR-100 python format under ``root/cifar-100-python``.

    Same pickles (``train``, ``test``, ``meta``), keys and dtypes as the real archive, random
    images with a class-dependent mean so a model can learn something. Returns the files'
    MD5 sums, which differ from the real ones: tests that load it through torchvision must
    patch ``CIFAR100.train_list`` / ``test_list`` / ``meta`` (see tests/conftest.py).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine_names = [f"class_{i:02d}" for i in range(num_classes)]
    fine_names[:4] = ["apple", "aquarium_fish", "baby", "bear"][: min(4, num_classes)]

    def make(per_class: int) -> dict:
        labels = np.repeat(np.arange(num_classes), per_class)
        rng.shuffle(labels)
        means = (labels * 37 % 200 + 28).astype(np.float64)
        pixels = np.clip(rng.normal(means[:, None], 40.0, (len(labels), 3072)), 0, 255).astype(np.uint8)
        # str keys and values: what Python 2's pickles of the real archive load as (latin1).
        return {
            "data": pixels,
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
        }

    contents = {
        "train": make(train_per_class),
        "test": make(test_per_class),
        "meta": {"fine_label_names": fine_names, "coarse_label_names": [f"super_{i}" for i in range(20)]},
    }
    checksums = {}
    for filename, content in contents.items():
        path = folder / filename
        with open(path, "wb") as handle:
            pickle.dump(content, handle, protocol=2)
        checksums[filename] = hashlib.md5(path.read_bytes()).hexdigest()
    return checksums


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10_fixture(root: Path | str, train_per_class: int = 5, test_per_class: int = 2, seed: int = 0):
    """Write a small dataset in the real CIFAR-10 python format under ``root/cifar-10-batches-py``:
    five ``data_batch_N`` pickles, ``test_batch`` and ``batches.meta``, with the real archive's keys
    and dtypes (``labels``, not CIFAR-100's ``fine_labels``). Returns {file name: MD5 sum}; tests
    loading it through torchvision patch CIFAR10's lists with them (``cifar10_checksums``)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def make(labels: np.ndarray, name: str) -> dict:
        means = (labels * 23 % 200 + 28).astype(np.float64)
        pixels = np.clip(rng.normal(means[:, None], 40.0, (len(labels), 3072)), 0, 255).astype(np.uint8)
        return {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": pixels,
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
        }

    train_labels = np.repeat(np.arange(10), train_per_class)
    rng.shuffle(train_labels)
    contents = {
        f"data_batch_{index + 1}": make(part, f"training batch {index + 1} of 5")
        for index, part in enumerate(np.array_split(train_labels, 5))
    }
    test_labels = np.repeat(np.arange(10), test_per_class)
    rng.shuffle(test_labels)
    contents["test_batch"] = make(test_labels, "testing batch 1 of 1")
    contents["batches.meta"] = {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": len(train_labels) // 5}
    checksums = {}
    for filename, content in contents.items():
        path = folder / filename
        with open(path, "wb") as handle:
            pickle.dump(content, handle, protocol=2)
        checksums[filename] = hashlib.md5(path.read_bytes()).hexdigest()
    return checksums


def patch_cifar10_checksums(monkeypatch, checksums: dict[str, str]) -> None:
    """Point torchvision's CIFAR10 checksum check at the fixture's files (the check itself still runs)."""
    from torchvision.datasets import CIFAR10

    train = [[f"data_batch_{index}", checksums[f"data_batch_{index}"]] for index in range(1, 6)]
    monkeypatch.setattr(CIFAR10, "train_list", train)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", checksums["test_batch"]]])
    monkeypatch.setattr(
        CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": checksums["batches.meta"]}
    )
