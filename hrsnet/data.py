"""Datasets held on the training device as uint8 tensors, preprocessed in whole batches.

Each split (train / val / test) is one uint8 tensor (N, 3, H, W) plus int64 labels, moved to
the device once. A batch is gathered by index and preprocessed there: to float, optional
augmentation at native resolution, ``F.interpolate`` to ``image_size`` (bilinear), normalize
with mean 0.5 / std 0.5. No per-image CPU work, no PIL, no DataLoader workers.

Datasets, each declared once in DATASET_SPECS (name -> label, classes, loader, what
``--data-dir`` holds); the setting's choices, captions and config.json derive from it:

- ``cifar100`` and ``cifar10``: torchvision's CIFAR100 / CIFAR10 (their checksum checks kept).
  The 50k training images are split into train / validation with a seeded generator; the
  official 10k test set is the test.
- ``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes), for
  machines without CIFAR: a seeded 20% test split, the rest split like CIFAR's.
- ``synthetic``: CIFAR-100's shapes and sizes (50,000 + 10,000 uint8 images of 32x32x3, 100
  classes) generated in memory from a fixed seed, for timing the paper protocol where CIFAR-100
  cannot be fetched. Not CIFAR-100: every caption says so.
- ``imagefolder``: your own images, ``DIR/train/<class>/<image>`` with optional ``val/`` and
  ``test/`` beside ``train/`` (load_image_folder; docs/your-dataset.md). Decoded and resized
  once to the run's image size, then cached in ``DIR/.hrsnet-cache/``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SYNTHETIC_SIZES = (50_000, 10_000)  # train (split like CIFAR-100's) and test images
SYNTHETIC_SEED = 2024  # fixed: every run sees the same images; the run's seed only splits and orders them
NORMALIZE_MEAN = 0.5
NORMALIZE_STD = 0.5
DIGITS_TEST_FRACTION = 0.2
# A dataset without a test set of its own (digits, an image folder without test/) holds one out
# with this seed, fixed, so every run, whatever its seed, is measured on the same test images.
HELD_OUT_TEST_SEED = 12345
HELD_OUT_TEST_FRACTION = 0.2  # of each class of an image folder's train/, when it has no test/
# What an image folder's class folders may hold (by extension, any case); other files are skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
IMAGE_FOLDER_SPLITS = ("train", "val", "test")  # train/ is required, val/ and test/ optional
CACHE_FOLDER = ".hrsnet-cache"
CACHE_FORMAT = 1  # raise when the cached tensors change meaning (the decoding, the resize)
DECODE_CHUNK = 512  # images decoded per batch of thread-pool work: bounds what a failure leaves running


class DataNotFoundError(RuntimeError):
    """The dataset's files are missing and could not be downloaded."""


class DatasetError(DataNotFoundError):
    """The dataset's files are there but cannot be used as they are; one line names which and why."""


@dataclass
class Split:
    """One split: uint8 images (N, 3, H, W) and int64 labels, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def take(self, positions: list[int]) -> Split:
        index = torch.as_tensor(positions, dtype=torch.long)
        return Split(self.images[index], self.labels[index])


@dataclass
class DatasetSplits:
    name: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    train_indices: list[int]  # positions in the source training set (saved with each run)
    val_indices: list[int]  # the same; empty when the dataset has a validation set of its own
    label: str = ""  # what the numbers are of, for captions and config.json ("" : the registry's)
    details: dict[str, Any] = field(default_factory=dict)  # how it was split and read, for config.json

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
            self.label,
            self.details,
        )


@dataclass(frozen=True)
class LoadRequest:
    """What a dataset's loader is asked for (load_dataset's arguments that reach the files)."""

    data_dir: Path | None
    download: bool = True
    image_size: int | None = None  # an image folder is stored at this size
    cache: bool = True


@dataclass
class Source:
    """A loader's answer: the source training set and test set (uint8 NCHW), the class names."""

    train: Split
    test: Split
    class_names: list[str]
    val: Split | None = None  # a validation set of the dataset's own; None: held out of train
    train_positions: list[int] | None = None  # train's positions in the source training set (None: 0..n-1)
    stratified: bool = False  # hold validation out class by class (else of the whole set, as for CIFAR)
    interleave: bool = False  # order each split class by class in turn: the first N (--*-subset) cover every class
    label: str = ""
    details: dict[str, Any] = field(default_factory=dict)


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


def stratified_split(labels: torch.Tensor, holdout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """As seeded_split, class by class: of each class's n items round(fraction * n) are held out,
    at least one and at most n - 1 (classes of two or more items), so both parts have every class."""
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    labels = torch.as_tensor(labels)
    for label in torch.unique(labels).tolist():
        positions = (labels == label).nonzero().flatten()
        order = positions[torch.randperm(len(positions), generator=generator)].tolist()
        count = int(round(len(order) * holdout_fraction))
        if len(order) >= 2:
            count = min(max(count, 1), len(order) - 1)
        held += order[:count]
        kept += order[count:]
    return sorted(kept), sorted(held)


def interleaved_by_class(positions: list[int], labels: torch.Tensor) -> list[int]:
    """``positions`` reordered class by class in turn (the first of every class, then the second...),
    each class keeping its own order: the first N of the result are spread evenly over the classes."""
    seen: Counter = Counter()
    ranked = []
    for position in positions:
        label = int(labels[position])
        ranked.append((seen[label], label, position))
        seen[label] += 1
    return [position for _, _, position in sorted(ranked)]


def _interleaved(split: Split, interleave: bool) -> Split:
    return split.take(interleaved_by_class(list(range(len(split))), split.labels)) if interleave else split


def _subset(split: Split, limit: int | None) -> Split:
    return split if limit is None or limit >= len(split) else Split(split.images[:limit], split.labels[:limit])


def _nhwc_to_split(images: np.ndarray, labels) -> Split:
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return Split(tensor, torch.as_tensor(np.asarray(labels), dtype=torch.int64))


# --- CIFAR-10 and CIFAR-100 ------------------------------------------------------------------


def _cifar_class(name: str):
    """torchvision's dataset class of ``name`` (cifar10 or cifar100): its folder, files, MD5 sums, URL."""
    from torchvision.datasets import CIFAR10, CIFAR100  # lazy: only CIFAR needs torchvision's datasets

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]


def cifar_problem(name: str, data_dir: Path) -> str | None:
    """What is wrong with the CIFAR-10 or CIFAR-100 (``name``) copy in ``data_dir``, or None if it
    passes its checksums (or is not there at all: that is a download's job)."""
    from torchvision.datasets.utils import check_integrity  # lazy: only CIFAR needs torchvision's datasets

    dataset = _cifar_class(name)
    folder = Path(data_dir) / dataset.base_folder
    if not folder.is_dir():
        return None
    expected = [*dataset.train_list, *dataset.test_list, [dataset.meta["filename"], dataset.meta["md5"]]]
    missing = [filename for filename, _ in expected if not (folder / filename).is_file()]
    if missing:
        return f"incomplete in {folder}: {', '.join(missing)} missing"
    damaged = [filename for filename, md5 in expected if not check_integrity(str(folder / filename), md5)]
    if damaged:
        return (
            f"damaged in {folder}: {', '.join(damaged)} failed the MD5 checksum (truncated, or not the official files)"
        )
    return None


def load_cifar_arrays(name: str, data_dir: Path, download: bool = True):
    """CIFAR-10 or CIFAR-100 (``name``) via torchvision: (train images NHWC uint8, train labels,
    test images, test labels, class names).

    torchvision verifies the files' MD5 sums. A copy that is there but incomplete, damaged or
    unreadable is reported as such, file by file (and left alone); a missing one is downloaded
    when allowed, and offline that failure becomes one clear DataNotFoundError.
    """
    dataset = _cifar_class(name)
    label = DATASET_SPECS[name].label
    root = str(data_dir)
    how_to = (
        f"put the extracted '{dataset.base_folder}' folder (from {dataset.url}) in {data_dir}/, "
        "or point --data-dir / HRSNET_DATA at a folder that has it"
    )
    problem = cifar_problem(name, data_dir)
    if problem is not None:
        raise DataNotFoundError(f"{label} is {problem}; {how_to}")
    try:
        train = dataset(root, train=True, download=False)  # raises if missing
    except RuntimeError as missing:
        if not download:
            raise DataNotFoundError(f"{label} is not in {data_dir}: {how_to}") from missing
        try:
            train = dataset(root, train=True, download=True)
        except Exception as error:  # URLError, timeouts, HTTP errors, a bad archive checksum
            detail = str(error).splitlines()[0] if str(error) else "no detail"
            raise DataNotFoundError(
                f"{label} is not in {data_dir} and downloading it failed ({type(error).__name__}: {detail}); {how_to}"
            ) from error
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:  # passed MD5, still unreadable
        raise DataNotFoundError(
            f"{label} in {data_dir} is unreadable ({type(error).__name__}: {error}); {how_to}"
        ) from error
    test = dataset(root, train=False, download=False)
    return train.data, train.targets, test.data, test.targets, list(train.classes)


def _load_cifar(name: str, request: LoadRequest) -> Source:
    data_dir, named_by = request.data_dir, "--data-dir"
    if data_dir is None and "HRSNET_DATA" in os.environ:  # named by the user as well: never created either
        data_dir, named_by = default_data_dir(), "HRSNET_DATA"
    if data_dir is not None and not data_dir.is_dir():  # never created as a side effect
        raise DataNotFoundError(
            f"data folder {data_dir} (from {named_by}) does not exist; create it with {DATASET_SPECS[name].label} "
            f"in it, or {'leave --data-dir out' if named_by == '--data-dir' else 'unset HRSNET_DATA'} "
            "for the default (data/ in the repository)"
        )
    train_x, train_y, test_x, test_y, classes = load_cifar_arrays(
        name, data_dir if data_dir is not None else default_data_dir(), request.download
    )
    return Source(
        _nhwc_to_split(train_x, train_y),
        _nhwc_to_split(test_x, test_y),
        classes,
        details={"test": f"the official test set ({len(test_y):,} images)"},
    )


# --- digits and synthetic --------------------------------------------------------------------


def load_digits_arrays():
    """scikit-learn's bundled digits as 3-channel uint8 NHWC images (8x8), labels, class names."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn takes a second to import; only digits needs it

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # pixel values are 0..16
    images = np.repeat(gray[..., None], 3, axis=-1)
    return images, digits.target, [str(d) for d in range(10)]


def _load_digits(request: LoadRequest) -> Source:
    images, labels, classes = load_digits_arrays()
    # Digits has no official test set: one held out with a fixed seed (HELD_OUT_TEST_SEED).
    keep, test_positions = seeded_split(len(labels), DIGITS_TEST_FRACTION, seed=HELD_OUT_TEST_SEED)
    return Source(
        _nhwc_to_split(images[keep], labels[keep]),
        _nhwc_to_split(images[test_positions], labels[test_positions]),
        classes,
        details={
            "test": f"{DIGITS_TEST_FRACTION:.0%} held out with the fixed seed {HELD_OUT_TEST_SEED} "
            f"({len(test_positions)} images, the same for every run)"
        },
    )


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


def _load_synthetic(request: LoadRequest) -> Source:
    train_x, train_y, test_x, test_y, classes = load_synthetic_arrays()
    return Source(
        _nhwc_to_split(train_x, train_y),
        _nhwc_to_split(test_x, test_y),
        classes,
        details={"test": f"generated with the fixed seed {SYNTHETIC_SEED} ({len(test_y):,} images)"},
    )


# --- an image folder -------------------------------------------------------------------------

IMAGE_FOLDER_SHAPE = (
    "DIR/train/<class>/<image> (val/ and test/ beside train/ are optional, with the same class folders)"
)


@dataclass(frozen=True)
class ImageFolderListing:
    """An image folder's class names and, per split folder present, its images (sorted paths)."""

    root: Path
    class_names: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]  # split -> (path relative to root, class index)
    skipped: int  # files in class folders that are not images by their extension

    def fingerprint(self, split: str, image_size: int) -> str:
        """A hash of what the cached tensors of ``split`` depend on: the file list, each file's
        size and modification time, the class names, the stored size and the cache format."""
        digest = hashlib.sha256(f"{CACHE_FORMAT}\n{image_size}\n{'/'.join(self.class_names)}\n".encode())
        for relative, label in self.files[split]:
            stat = (self.root / relative).stat()
            digest.update(f"{relative}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((entry for entry in entries if not entry.name.startswith(".")), key=lambda entry: entry.name)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(split_dir: Path) -> list[str]:
    """The class folder names in ``split_dir``; DatasetError if it is not in that shape."""
    entries = _visible_entries(split_dir)
    loose = [entry.name for entry in entries if entry.is_file() and _is_image(entry.name)]
    if loose:
        raise DatasetError(
            f"{split_dir / loose[0]} is not in a class folder ({len(loose)} image(s) directly in {split_dir}); "
            f"an image folder is {IMAGE_FOLDER_SHAPE}"
        )
    classes = [entry.name for entry in entries if entry.is_dir()]
    if not classes:
        raise DatasetError(f"{split_dir} holds no class folders; an image folder is {IMAGE_FOLDER_SHAPE}")
    return classes


def list_image_folder_classes(root: Path | str) -> list[str]:
    """The class names of the image folder ``root`` (the folders in train/, sorted), cheaply:
    only train/ is listed. DatasetError / DataNotFoundError when it is missing or not in shape."""
    root = Path(root)
    _check_image_folder_root(root)
    return _class_folders(root / "train")


def _check_image_folder_root(root: Path) -> None:
    if not root.is_dir():  # never created as a side effect
        raise DataNotFoundError(f"image folder {root} does not exist; --data-dir must be {IMAGE_FOLDER_SHAPE}")
    names = {entry.name for entry in _visible_entries(root) if entry.is_dir()}
    near_misses = {"valid": "val", "validation": "val", "testing": "test", "training": "train"}
    for name in sorted(names):
        wanted = near_misses.get(name.lower(), name.lower())
        if wanted in IMAGE_FOLDER_SPLITS and name != wanted:
            raise DatasetError(
                f"{root / name}: name it {wanted}/ (the split folders are {', '.join(IMAGE_FOLDER_SPLITS)}); "
                f"an image folder is {IMAGE_FOLDER_SHAPE}"
            )
    if "train" not in names:
        raise DatasetError(f"{root} has no train/ folder; an image folder is {IMAGE_FOLDER_SHAPE}")


def scan_image_folder(root: Path | str) -> ImageFolderListing:
    """List an image folder and check its shape (DatasetError, one line, on the first problem).

    Classes are train/'s folders, sorted by name (class index = position); val/ and test/, when
    there, must have the same ones. Every class folder of every split needs at least one image;
    without val/ or test/, each class of train/ needs one image more for each part held out of it.
    Images may sit in subfolders of a class folder; hidden files and folders (a leading dot, so
    also the cache) are ignored, as are files that are not images by their extension.
    """
    root = Path(root).expanduser().resolve()  # config.json records where the images were
    _check_image_folder_root(root)
    class_names = _class_folders(root / "train")
    files: dict[str, list[tuple[str, int]]] = {}
    skipped = 0
    for split in IMAGE_FOLDER_SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        present = _class_folders(split_dir)
        lacking = [name for name in class_names if name not in present]
        extra = [name for name in present if name not in class_names]
        if lacking:
            raise DatasetError(
                f"{split_dir} lacks the class folder(s) {', '.join(lacking)} that train/ has; "
                "every split needs every class"
            )
        if extra:
            raise DatasetError(
                f"{split_dir} has class folder(s) {', '.join(extra)} that train/ lacks; "
                "every split needs the same classes"
            )
        listed = []
        for label, name in enumerate(class_names):
            images = []
            for folder, subfolders, filenames in os.walk(split_dir / name, followlinks=True):
                subfolders[:] = sorted(sub for sub in subfolders if not sub.startswith("."))
                for filename in sorted(filenames):
                    if filename.startswith("."):
                        continue
                    if not _is_image(filename):
                        skipped += 1
                        continue
                    images.append((Path(folder, filename).relative_to(root).as_posix(), label))
            if not images:
                raise DatasetError(
                    f"class {name!r} has no images in {split_dir / name} (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                    "add images or remove the folder"
                )
            listed += images
        files[split] = listed
    held_out = [part for part in ("val", "test") if part not in files]
    if held_out:
        needed = 1 + len(held_out)
        counts = Counter(label for _, label in files["train"])
        short = [class_names[label] for label in range(len(class_names)) if counts[label] < needed]
        if short:
            raise DatasetError(
                f"class {short[0]!r} has {counts[class_names.index(short[0])]} image(s) in {root / 'train'}; without "
                f"{' and '.join(f'{part}/' for part in held_out)} each class needs at least {needed} "
                f"(one for training, one for each part held out of train/)"
            )
    return ImageFolderListing(root, tuple(class_names), files, skipped)


def _decode_image(path: Path, image_size: int) -> tuple[torch.Tensor, str]:
    """One image file as uint8 (3, size, size) and its original mode; DatasetError if unreadable.

    As the paper's pipeline: ``PIL.Image.convert("RGB")`` (grayscale repeated to three channels,
    an alpha channel dropped, as torchvision's ImageFolder does), then ``Resize((s, s))`` (PIL's
    bilinear filter, antialiased when shrinking): the later batched resize to the same size is then a no-op.
    """
    from PIL import Image  # lazy: only image folders are decoded from files

    try:
        with Image.open(path) as image:
            mode = image.mode
            rgb = image.convert("RGB")
        resized = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        detail = str(error).splitlines()[0] if str(error) else "no detail"
        raise DatasetError(
            f"image {path} is unreadable ({type(error).__name__}: {detail}); fix or remove it"
        ) from error
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1), mode


def _decode_split(listing: ImageFolderListing, split: str, image_size: int) -> dict[str, Any]:
    """Decode and resize every image of ``split`` (threads: PIL releases the GIL while it decodes)."""
    from tqdm.auto import tqdm  # lazy: a progress bar only where files are decoded

    files = listing.files[split]
    images = torch.empty((len(files), 3, image_size, image_size), dtype=torch.uint8)
    modes: Counter = Counter()
    decode = partial(_decode_image, image_size=image_size)
    paths = [listing.root / relative for relative, _ in files]
    with (
        ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool,
        tqdm(total=len(files), desc=f"decoding {split}/", disable=len(files) < 2000, leave=False) as bar,
    ):
        for start in range(0, len(paths), DECODE_CHUNK):
            for offset, (image, mode) in enumerate(pool.map(decode, paths[start : start + DECODE_CHUNK])):
                images[start + offset] = image
                modes[mode] += 1
            bar.update(min(DECODE_CHUNK, len(paths) - start))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return {"format": CACHE_FORMAT, "images": images, "labels": labels, "modes": dict(modes)}


def _save_atomically(payload: dict[str, Any], path: Path) -> None:
    """torch.save through a temporary file in the same folder and a rename: a reader (another run
    on the same folder) sees no file or the whole one. (hrsnet.rundir.atomic_write is a layer above.)"""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _cached_split(listing: ImageFolderListing, split: str, image_size: int, cache: bool) -> tuple[dict, str]:
    """The decoded split (images, labels, modes), from ``root/.hrsnet-cache/`` when it holds this
    file list at this size, else decoded and written there; and what happened, in words."""
    folder = listing.root / CACHE_FOLDER
    path = folder / f"{split}_{image_size}_{listing.fingerprint(split, image_size)}.pt"
    expected = (len(listing.files[split]), 3, image_size, image_size)
    if cache and path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload["format"] == CACHE_FORMAT and tuple(payload["images"].shape) == expected:
                return payload, f"read from {path}"
        except Exception:  # damaged or from another version: decode again and replace it
            pass
    payload = _decode_split(listing, split, image_size)
    if not cache:
        return payload, "not cached (cache off)"
    try:
        folder.mkdir(exist_ok=True)
        _save_atomically(payload, path)
    except (OSError, RuntimeError) as error:  # a read-only or full data folder: the run goes on uncached
        reason = f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}"
        warnings.warn(
            f"the decoded images of {listing.root / split} could not be cached in {folder} ({reason})", stacklevel=3
        )
        return payload, f"not cached ({reason})"
    for stale in folder.glob(f"{split}_{image_size}_*.pt"):  # the same split at the same size, older files
        if stale != path:
            stale.unlink(missing_ok=True)
    return payload, f"written to {path}"


def load_image_folder(request: LoadRequest) -> Source:
    """An image folder (``--dataset imagefolder --data-dir DIR``): DIR/train/<class>/<image>, with
    optional val/ and test/ (scan_image_folder). Each split is decoded to RGB and resized to the
    run's image size once, then read from ``DIR/.hrsnet-cache/<split>_<size>_<hash>.pt``.

    Without test/, HELD_OUT_TEST_FRACTION of each class of train/ is held out as the test set
    with HELD_OUT_TEST_SEED (the same test images for every run); without val/, load_dataset
    holds validation out of the rest, class by class, with the run's seed.
    """
    if request.data_dir is None:
        raise DatasetError(f"the dataset imagefolder needs --data-dir DIR, where DIR is {IMAGE_FOLDER_SHAPE}")
    if request.image_size is None:
        raise ValueError("the dataset imagefolder needs image_size: its images are stored at that size")
    listing = scan_image_folder(request.data_dir)
    size = request.image_size
    loaded, cache = {}, {}
    for split in listing.files:
        loaded[split], cache[split] = _cached_split(listing, split, size, request.cache)
    splits = {split: Split(payload["images"], payload["labels"]) for split, payload in loaded.items()}
    modes: Counter = Counter()
    for payload in loaded.values():
        modes.update(payload["modes"])
    train, positions = splits["train"], None
    if "test" in splits:
        test, test_rule = splits["test"], f"{listing.root / 'test'} ({len(splits['test'])} images)"
    else:
        positions, held = stratified_split(train.labels, HELD_OUT_TEST_FRACTION, HELD_OUT_TEST_SEED)
        test, train = train.take(held), train.take(positions)
        test_rule = (
            f"no test/: {HELD_OUT_TEST_FRACTION:.0%} of each class of train/ held out with the fixed seed "
            f"{HELD_OUT_TEST_SEED} ({len(test)} images, the same for every run)"
        )
    details = {
        "folder": str(listing.root),
        "stored_size": size,
        "test": test_rule,
        "images": {split: len(files) for split, files in listing.files.items()},
        "converted_to_rgb": {mode: count for mode, count in sorted(modes.items()) if mode != "RGB"},
        "skipped_files": listing.skipped,
        "cache": cache,
    }
    return Source(
        train,
        test,
        list(listing.class_names),
        val=splits.get("val"),
        train_positions=positions,
        stratified=True,
        interleave=True,
        label=f"image folder {listing.root.name}",
        details=details,
    )


# --- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset by name: what its numbers are called in every caption, table and config.json,
    its loader, its class count (None: as many as the data has), the images it holds in memory
    as (count, side) for the estimate before loading (None: counted from the files), and what
    ``--data-dir`` must hold for it ("": it reads no files)."""

    label: str
    load: Callable[[LoadRequest], Source]
    num_classes: int | None = None
    stored: tuple[int, int] | None = None
    data_dir: str = ""


DATASET_SPECS: dict[str, DatasetSpec] = {
    "cifar100": DatasetSpec("CIFAR-100", partial(_load_cifar, "cifar100"), 100, (60_000, 32), "cifar-100-python/"),
    "cifar10": DatasetSpec("CIFAR-10", partial(_load_cifar, "cifar10"), 10, (60_000, 32), "cifar-10-batches-py/"),
    "digits": DatasetSpec("sklearn digits (not CIFAR-100)", _load_digits, 10, (1797, 8)),
    "synthetic": DatasetSpec("synthetic (not CIFAR-100)", _load_synthetic, 100, (sum(SYNTHETIC_SIZES), 32)),
    "imagefolder": DatasetSpec(
        "image folder", load_image_folder, data_dir="train/ (val/, test/) with a folder per class"
    ),
}
DATASETS = tuple(DATASET_SPECS)
DATASET_LABELS = {name: spec.label for name, spec in DATASET_SPECS.items()}
DATASET_CLASSES = {name: spec.num_classes for name, spec in DATASET_SPECS.items() if spec.num_classes is not None}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASET_SPECS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    return DATASET_SPECS[name]


def data_dir_help() -> str:
    """What ``--data-dir`` holds, per dataset that reads files (for the setting's help)."""
    holds = "; ".join(f"{name}: {spec.data_dir}" for name, spec in DATASET_SPECS.items() if spec.data_dir)
    return f"the dataset's folder ({holds}); None: $HRSNET_DATA, else data/ in the repository (CIFAR only)"


def dataset_num_classes(name: str, data_dir: Path | str | None = None) -> int:
    """How many classes ``name`` has; an image folder's train/ is listed (not read) to count them."""
    spec = dataset_spec(name)
    if spec.num_classes is not None:
        return spec.num_classes
    if data_dir is None:
        raise DatasetError(f"the dataset {name} needs --data-dir DIR, where DIR is {IMAGE_FOLDER_SHAPE}")
    return len(list_image_folder_classes(data_dir))


def dataset_bytes(name: str, data_dir: Path | str | None = None, image_size: int | None = None) -> tuple[int, str]:
    """Memory the loaded dataset holds (uint8 images, int64 labels), estimated before loading, and
    what was counted, e.g. "CIFAR-100: 60,000 images of 32x32". An image folder is listed, not
    decoded. While loading, a split is briefly held twice (once whole, once as train and validation)."""
    spec = dataset_spec(name)
    if spec.stored is not None:
        count, side = spec.stored
        label = spec.label
    else:
        if data_dir is None:
            raise DatasetError(f"the dataset {name} needs --data-dir DIR, where DIR is {IMAGE_FOLDER_SHAPE}")
        if image_size is None:
            raise ValueError(f"the dataset {name} needs image_size: its images are stored at that size")
        listing = scan_image_folder(data_dir)
        count, side = sum(len(files) for files in listing.files.values()), image_size
        label = f"image folder {listing.root}"
    return count * (3 * side * side + 8), f"{label}: {count:,} images of {side}x{side}"


def load_dataset(
    name: str,
    data_dir: Path | str | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    train_subset: int | None = None,
    val_subset: int | None = None,
    test_subset: int | None = None,
    download: bool = True,
    image_size: int | None = None,
    cache: bool = True,
) -> DatasetSplits:
    """Load ``name`` into CPU uint8 tensors and split it; ``*_subset`` keep the first n of a split.

    Validation is held out of the training set with the run's seed (``val_fraction``), unless
    the dataset has a validation set of its own (an image folder's val/). ``image_size``: the
    size an image folder is stored at (the run's); other datasets keep their native size.
    """
    spec = dataset_spec(name)
    source = spec.load(LoadRequest(Path(data_dir) if data_dir is not None else None, download, image_size, cache))
    full_train = source.train
    if source.val is None:
        split = (
            partial(stratified_split, full_train.labels)
            if source.stratified
            else partial(seeded_split, len(full_train))
        )
        kept, held = split(val_fraction, seed)
        val_rule = (
            f"{val_fraction * 100:g}% of {'each class of ' if source.stratified else ''}the training set held out "
            f"with the run's seed ({seed})"
        )
    else:
        kept, held = list(range(len(full_train))), []
        val_rule = "the dataset's own validation set"
    if source.interleave:  # the splits' order decides what --*-subset keeps: every class, evenly
        kept, held = interleaved_by_class(kept, full_train.labels), interleaved_by_class(held, full_train.labels)
    train = full_train.take(kept)
    val = full_train.take(held) if source.val is None else _interleaved(source.val, source.interleave)
    test = _interleaved(source.test, source.interleave)
    positions = source.train_positions
    as_source = (lambda items: [positions[i] for i in items]) if positions is not None else list
    return DatasetSplits(
        name,
        source.class_names,
        _subset(train, train_subset),
        _subset(val, val_subset),
        _subset(test, test_subset),
        as_source(kept),
        as_source(held),
        source.label or spec.label,
        {"val": val_rule, **source.details},
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
