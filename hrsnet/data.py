"""Datasets held on the training device as uint8 tensors, preprocessed in whole batches.

Each split (train / val / test) is one uint8 tensor (N, 3, H, W) plus int64 labels, moved to
the device once. A batch is gathered by index and preprocessed there: to float, optional
augmentation at native resolution, ``F.interpolate`` to ``image_size`` (bilinear), normalize
with mean 0.5 / std 0.5. No per-image CPU work, no PIL, no DataLoader workers.

Datasets:
- ``cifar100``: torchvision's CIFAR100 (its checksum check kept). The 50k training images are
  split into train / validation with a seeded generator; the official 10k test set is the test.
- ``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes), for
  machines without CIFAR-100: a seeded 20% test split, the rest split like CIFAR-100's.
- ``synthetic``: CIFAR-100's shapes and sizes (50,000 + 10,000 uint8 images of 32x32x3, 100
  classes) generated in memory from a fixed seed, for timing the paper protocol where CIFAR-100
  cannot be fetched. Not CIFAR-100: every caption says so.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATASET_CLASSES = {"cifar100": 100, "digits": 10, "synthetic": 100}  # the datasets and their class counts
# In every caption, table and config.json: what the numbers are of.
DATASET_LABELS = {
    "cifar100": "CIFAR-100",
    "digits": "sklearn digits (not CIFAR-100)",
    "synthetic": "synthetic (not CIFAR-100)",
}
SYNTHETIC_SIZES = (50_000, 10_000)  # train (split like CIFAR-100's) and test images
SYNTHETIC_SEED = 2024  # fixed: every run sees the same images; the run's seed only splits and orders them
DATASETS = tuple(DATASET_CLASSES)
NORMALIZE_MEAN = 0.5
NORMALIZE_STD = 0.5
DIGITS_TEST_FRACTION = 0.2
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


class DataNotFoundError(RuntimeError):
    """The dataset's files are missing and could not be downloaded."""


@dataclass
class Split:
    """One split: uint8 images (N, 3, H, W) and int64 labels, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class DatasetSplits:
    name: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    train_indices: list[int]  # positions in the source training set (saved with each run)
    val_indices: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str) -> DatasetSplits:
        return DatasetSplits(
            self.name,
            self.class_names,
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.train_indices,
            self.val_indices,
        )


def default_data_dir() -> Path:
    """``$HRSNET_DATA`` if set, else ``data/`` at the repository root (for a checkout; else ./data).

    Not relative to the working directory: run_all.sh, the notebooks (run from notebooks/)
    and the command line must all find the same files, since the quick profile's dataset,
    and with it the run ids, depends on whether CIFAR-100 is there.
    """
    if "HRSNET_DATA" in os.environ:
        return Path(os.environ["HRSNET_DATA"])
    checkout = Path(__file__).resolve().parents[1]
    return checkout / "data" if (checkout / "pyproject.toml").exists() else Path("data")


def seeded_split(num_items: int, holdout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random partition of range(num_items): (kept, held out), held out = round(fraction * n)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_items, generator=generator).tolist()
    num_holdout = int(round(num_items * holdout_fraction))
    return sorted(order[num_holdout:]), sorted(order[:num_holdout])


def _subset(split: Split, limit: int | None) -> Split:
    return split if limit is None or limit >= len(split) else Split(split.images[:limit], split.labels[:limit])


def _nhwc_to_split(images: np.ndarray, labels) -> Split:
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return Split(tensor, torch.as_tensor(np.asarray(labels), dtype=torch.int64))


def cifar100_problem(data_dir: Path) -> str | None:
    """What is wrong with the CIFAR-100 copy in ``data_dir``, or None if it passes its checksums
    (or is not there at all: that is a download's job)."""
    from torchvision.datasets import CIFAR100  # lazy: only CIFAR needs torchvision's datasets
    from torchvision.datasets.utils import check_integrity  # lazy: as above

    folder = Path(data_dir) / CIFAR100.base_folder
    if not folder.is_dir():
        return None
    expected = [*CIFAR100.train_list, *CIFAR100.test_list, [CIFAR100.meta["filename"], CIFAR100.meta["md5"]]]
    missing = [name for name, _ in expected if not (folder / name).is_file()]
    if missing:
        return f"incomplete in {folder}: {', '.join(missing)} missing"
    damaged = [name for name, md5 in expected if not check_integrity(str(folder / name), md5)]
    if damaged:
        return (
            f"damaged in {folder}: {', '.join(damaged)} failed the MD5 checksum (truncated, or not the official files)"
        )
    return None


def load_cifar100_arrays(data_dir: Path, download: bool = True):
    """(train images NHWC uint8, train labels, test images, test labels, class names) via torchvision.

    torchvision verifies the files' MD5 sums. A copy that is there but incomplete, damaged or
    unreadable is reported as such (and left alone); a missing one is downloaded when allowed,
    and offline that failure becomes one clear DataNotFoundError.
    """
    from torchvision.datasets import CIFAR100  # lazy: only CIFAR needs torchvision's datasets

    root = str(data_dir)
    how_to = (
        f"put the extracted 'cifar-100-python' folder (from {CIFAR100_URL}) in {data_dir}/, "
        "or point --data-dir / HRSNET_DATA at a folder that has it"
    )
    problem = cifar100_problem(data_dir)
    if problem is not None:
        raise DataNotFoundError(f"CIFAR-100 is {problem}; {how_to}")
    try:
        train = CIFAR100(root, train=True, download=False)  # raises if missing
    except RuntimeError as missing:
        if not download:
            raise DataNotFoundError(f"CIFAR-100 is not in {data_dir}: {how_to}") from missing
        try:
            train = CIFAR100(root, train=True, download=True)
        except Exception as error:  # URLError, timeouts, HTTP errors, a bad archive checksum
            detail = str(error).splitlines()[0] if str(error) else "no detail"
            raise DataNotFoundError(
                f"CIFAR-100 is not in {data_dir} and downloading it failed ({type(error).__name__}: {detail}); {how_to}"
            ) from error
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:  # passed MD5, still unreadable
        raise DataNotFoundError(
            f"CIFAR-100 in {data_dir} is unreadable ({type(error).__name__}: {error}); {how_to}"
        ) from error
    test = CIFAR100(root, train=False, download=False)
    return train.data, train.targets, test.data, test.targets, list(train.classes)


def load_digits_arrays():
    """scikit-learn's bundled digits as 3-channel uint8 NHWC images (8x8), labels, class names."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn takes a second to import; only digits needs it

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # pixel values are 0..16
    images = np.repeat(gray[..., None], 3, axis=-1)
    return images, digits.target, [str(d) for d in range(10)]


def load_synthetic_arrays(sizes: tuple[int, int] = SYNTHETIC_SIZES, num_classes: int = 100, seed: int = SYNTHETIC_SEED):
    """(train images NHWC uint8, train labels, test images, test labels, class names), generated.

    Each class has a smooth prototype (a random 4x4x3 pattern, upsampled to 32x32); an image is
    its class's prototype, shifted by up to 4 pixels, scaled in contrast, plus pixel noise. So a
    network can learn something, and no class is trivially separable by its mean colour alone.
    About 5 s for the full 60,000 images on one CPU core (measured 5.1 s on the 2-core CI machine).
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (num_classes, 4, 4, 3)).astype(np.float32)
    prototypes = np.kron(coarse, np.ones((1, 8, 8, 1), dtype=np.float32))  # (classes, 32, 32, 3)
    padded = np.pad(prototypes, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="wrap")  # shifts of up to 4 pixels
    grid = np.arange(32)

    def make(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, num_classes, count)
        images = np.empty((count, 32, 32, 3), dtype=np.uint8)
        for start in range(0, count, 5000):  # chunks: float32 work memory stays ~60 MB
            chunk = labels[start : start + 5000]
            rows = rng.integers(0, 9, len(chunk))[:, None] + grid
            cols = rng.integers(0, 9, len(chunk))[:, None] + grid
            base = padded[chunk[:, None, None], rows[:, :, None], cols[:, None, :]]
            contrast = rng.uniform(0.6, 1.0, (len(chunk), 1, 1, 1)).astype(np.float32)
            base -= 128  # in place: this loop is most of the generation time
            base *= contrast
            base += rng.standard_normal(base.shape, dtype=np.float32) * 40 + 128
            images[start : start + len(chunk)] = np.clip(base, 0, 255, out=base)
        return images, labels

    train_x, train_y = make(sizes[0])
    test_x, test_y = make(sizes[1])
    return train_x, train_y, test_x, test_y, [f"synthetic_{index:02d}" for index in range(num_classes)]


def load_dataset(
    name: str,
    data_dir: Path | str | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    train_subset: int | None = None,
    val_subset: int | None = None,
    test_subset: int | None = None,
    download: bool = True,
) -> DatasetSplits:
    """Load ``name`` into CPU uint8 tensors and split it; ``*_subset`` keep the first n of a split."""
    if name == "cifar100":
        if data_dir is not None and not Path(data_dir).is_dir():  # never created as a side effect
            raise DataNotFoundError(
                f"data folder {data_dir} does not exist; create it with CIFAR-100 in it, or "
                "leave --data-dir out for the default (data/ in the repository)"
            )
        train_x, train_y, test_x, test_y, classes = load_cifar100_arrays(
            Path(data_dir) if data_dir is not None else default_data_dir(), download
        )
    elif name == "digits":
        images, labels, classes = load_digits_arrays()
        # Digits has no official test set: hold one out with a seed of its own, fixed, so every
        # run, whatever its seed, is measured on the same test images.
        keep, test_positions = seeded_split(len(labels), DIGITS_TEST_FRACTION, seed=12345)
        train_x, train_y = images[keep], labels[keep]
        test_x, test_y = images[test_positions], labels[test_positions]
    elif name == "synthetic":
        train_x, train_y, test_x, test_y, classes = load_synthetic_arrays()
    else:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    full_train = _nhwc_to_split(train_x, train_y)
    train_indices, val_indices = seeded_split(len(full_train), val_fraction, seed)
    train = Split(full_train.images[train_indices], full_train.labels[train_indices])
    val = Split(full_train.images[val_indices], full_train.labels[val_indices])
    test = _nhwc_to_split(test_x, test_y)
    return DatasetSplits(
        name,
        classes,
        _subset(train, train_subset),
        _subset(val, val_subset),
        _subset(test, test_subset),
        train_indices,
        val_indices,
    )


def random_crop_flip(images: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Per-image random crop (zero padding of ``padding`` pixels) and horizontal flip.

    The random numbers are drawn on ``generator``'s device (None: the images' device's default
    generator) and used on the images' device: a CPU generator keeps a run's random state
    resumable exactly, a CUDA one needs no host-to-device copy and can be replayed in a CUDA
    graph. On uint8 images it equals cropping after the float conversion (padding is 0 either way).
    """
    batch, channels, height, width = images.shape
    draw_on = generator.device if generator is not None else images.device
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=draw_on).to(images.device)
    flips = (torch.rand(batch, generator=generator, device=draw_on) < 0.5).to(images.device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (offsets[0, :, None] + torch.arange(height, device=images.device))[:, None, :, None]
    cols = (offsets[1, :, None] + torch.arange(width, device=images.device))[:, None, None, :]
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel_index = torch.arange(channels, device=images.device)[None, :, None, None]
    cropped = padded[batch_index, channel_index, rows, cols]
    return torch.where(flips[:, None, None, None], cropped.flip(-1), cropped)


def preprocess(
    images: torch.Tensor, image_size: int, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """uint8 (N, 3, h, w) -> normalized float32 (N, 3, image_size, image_size), on the images' device.

    The paper's pipeline, ``Resize((s, s))`` + ``ToTensor`` + ``Normalize(0.5, 0.5)``, in one
    batched pass: bilinear interpolation (half-pixel centres, as PIL), without PIL's rounding
    to uint8 after the resize. (Augmentation, when a run asks for it, comes before: random_crop_flip.)
    """
    x = images.float().div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x,
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=image_size < max(x.shape[-2:]),
        )
    x = x.sub_(NORMALIZE_MEAN).div_(NORMALIZE_STD)
    return x.contiguous(memory_format=memory_format)
