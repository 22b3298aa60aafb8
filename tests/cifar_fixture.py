"""A small dataset in the real CIFAR-100 python format, for tests that load it through torchvision."""

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
