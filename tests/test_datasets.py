"""Datasets by name: the registry, CIFAR-10 through torchvision, and an image folder (splits, RGB
conversion, the decoded-image cache, the memory estimate, and a one-line error for each bad input)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from cifar_fixture import CIFAR10_CLASSES, patch_cifar10_checksums, write_cifar10_fixture
from imagefolder_fixture import CLASSES, OTHER_MODES, write_image_folder
from PIL import Image

from hrsnet import data
from hrsnet.config import TrainConfig
from hrsnet.data import DataNotFoundError, DatasetError, dataset_bytes, dataset_num_classes, load_dataset
from hrsnet.runs import preflight
from hrsnet.runs.lifecycle import load_run_data

# --- the registry -------------------------------------------------------------------------------


def test_every_dataset_is_declared_once_and_the_rest_derives():
    assert set(data.DATASETS) == {"cifar100", "cifar10", "digits", "synthetic", "imagefolder"}
    assert data.DATASET_LABELS == {name: spec.label for name, spec in data.DATASET_SPECS.items()}
    assert data.DATASET_LABELS["cifar100"] == "CIFAR-100" and data.DATASET_LABELS["cifar10"] == "CIFAR-10"
    dataset_field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "dataset")
    assert dataset_field.metadata["choices"]() == data.DATASETS
    data_dir_field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "data_dir")
    for name, spec in data.DATASET_SPECS.items():
        assert (f"{name}: {spec.data_dir}" in data_dir_field.metadata["help"]) == bool(spec.data_dir)
    with pytest.raises(ValueError, match="dataset must be one of cifar100, cifar10, digits, synthetic, imagefolder"):
        load_dataset("imagenet")


def test_dataset_bytes_before_loading():
    assert dataset_bytes("cifar100") == (60_000 * (3 * 32 * 32 + 8), "CIFAR-100: 60,000 images of 32x32")
    size, what = dataset_bytes("digits")
    splits = load_dataset("digits")
    held = sum(split.images.numel() + 8 * len(split) for split in (splits.train, splits.val, splits.test))
    assert size == held and "1,797 images of 8x8" in what


# --- CIFAR-10 -------------------------------------------------------------------------------------


@pytest.fixture
def cifar10_dir(tmp_path, monkeypatch):
    sums = write_cifar10_fixture(tmp_path, train_per_class=5, test_per_class=2)
    patch_cifar10_checksums(monkeypatch, sums)
    return tmp_path


def test_cifar10_loads_through_torchvision(cifar10_dir):
    splits = load_dataset("cifar10", cifar10_dir, seed=0)
    assert splits.class_names == CIFAR10_CLASSES and splits.label == "CIFAR-10"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 20)
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (3, 32, 32)
    assert sorted(splits.train_indices + splits.val_indices) == list(range(50))
    assert sorted(splits.test.labels.tolist()) == sorted(list(range(10)) * 2)
    other = load_dataset("cifar10", cifar10_dir, seed=1)  # the seed moves the validation split only
    assert other.val_indices != splits.val_indices and torch.equal(other.test.images, splits.test.images)
    assert splits.details["test"] == "the official test set (20 images)"


def test_cifar10_checksum_check_is_kept(tmp_path):
    write_cifar10_fixture(tmp_path)  # real (unpatched) MD5 sums: the fixture's files must not pass
    with pytest.raises(DataNotFoundError, match=r"CIFAR-10 is damaged in .*: data_batch_1, .*test_batch, batches"):
        load_dataset("cifar10", tmp_path, download=False)


def test_damaged_or_incomplete_cifar10_names_the_file(cifar10_dir, tmp_path_factory):
    folder = cifar10_dir / "cifar-10-batches-py"
    whole = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataNotFoundError, match=r"CIFAR-10 is damaged in .*: data_batch_3 failed the MD5 checksum"):
        load_dataset("cifar10", cifar10_dir)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match=r"CIFAR-10 is incomplete in .*: data_batch_3 missing"):
        load_dataset("cifar10", cifar10_dir)


def test_unreadable_cifar10_that_passes_its_checksum(cifar10_dir, monkeypatch):
    from torchvision.datasets import CIFAR10

    (cifar10_dir / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not a pickle")
    train = [list(entry) for entry in CIFAR10.train_list]
    train[0][1] = hashlib.md5(b"not a pickle").hexdigest()
    monkeypatch.setattr(CIFAR10, "train_list", train)
    with pytest.raises(DataNotFoundError, match=r"CIFAR-10 in .* is unreadable \(UnpicklingError"):
        load_dataset("cifar10", cifar10_dir)


def test_cifar10_missing_folder_is_not_created_and_offline_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match="does not exist; create it with CIFAR-10 in it"):
        load_dataset("cifar10", tmp_path / "typo")
    assert not (tmp_path / "typo").exists()

    def no_network(*args, **kwargs):
        import urllib.error

        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_network)
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("cifar10", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "URLError" in message and "cifar-10-batches-py" in message
    assert "cifar-10-python.tar.gz" in message and "HRSNET_DATA" in message


# --- an image folder: splits and pixels ---------------------------------------------------------------


def reference_pixels(path, size: int) -> torch.Tensor:
    """The paper's pipeline on one file: PIL convert("RGB") and Resize((s, s)), as uint8 CHW."""
    from torchvision import transforms

    with Image.open(path) as image:
        resized = transforms.Resize((size, size))(image.convert("RGB"))
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)


def test_image_folder_without_val_and_test(tmp_path):
    root = write_image_folder(tmp_path / "pets")
    splits = load_dataset("imagefolder", root, seed=0, image_size=32)
    assert splits.class_names == list(CLASSES) and splits.label == "image folder pets"
    # 5 per class: 1 held out for test (fixed seed), 1 of the other 4 for validation (the run's seed).
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 3)
    for split in (splits.train, splits.val, splits.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 32, 32)
    assert splits.train.labels.tolist() == [0, 1, 2] * 3  # class by class in turn
    assert len(set(splits.train_indices) | set(splits.val_indices)) == 12
    files = sorted((root / "train").glob("*/*.png"))  # positions are in train/'s sorted listing
    for position, image in zip(splits.train_indices, splits.train.images):
        assert torch.equal(image, reference_pixels(files[position], 32))
    other = load_dataset("imagefolder", root, seed=1, image_size=32)
    assert torch.equal(other.test.images, splits.test.images)  # every run is tested on the same images
    assert other.val_indices != splits.val_indices
    assert splits.details["converted_to_rgb"] == {"L": 1, "RGBA": 1}
    assert "fixed seed 12345" in splits.details["test"] and "run's seed (0)" in splits.details["val"]


def test_image_folder_with_val_and_test(tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "val": 2, "test": 2})
    splits = load_dataset("imagefolder", root, seed=0, image_size=40, test_subset=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 6, 3)
    assert splits.val_indices == [] and sorted(splits.train_indices) == list(range(9))
    assert splits.test.labels.tolist() == [0, 1, 2]  # the first N of a split cover every class
    assert splits.details["val"] == "the dataset's own validation set"
    assert splits.details["images"] == {"train": 9, "val": 6, "test": 6}
    fish = root / "test" / "fish" / "fish_0.png"  # saved as grayscale: three equal channels
    assert Image.open(fish).mode == OTHER_MODES[("test", "fish", 0)]
    image = splits.test.images[2]
    assert torch.equal(image, reference_pixels(fish, 40)) and torch.equal(image[0], image[1])


def test_rgba_keeps_its_colour_channels(tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "val": 1, "test": 1})
    path = root / "train" / "dog" / "dog_2.png"
    with Image.open(path) as image:
        assert image.mode == "RGBA"
        rgb = np.asarray(image)[..., :3]
    splits = load_dataset("imagefolder", root, image_size=32)
    position = sorted(p.relative_to(root).as_posix() for p in (root / "train").glob("*/*.png")).index(
        "train/dog/dog_2.png"
    )
    stored = splits.train.images[splits.train_indices.index(position)]
    expected = torch.from_numpy(np.asarray(Image.fromarray(rgb).resize((32, 32), Image.Resampling.BILINEAR)).copy())
    assert torch.equal(stored, expected.permute(2, 0, 1))


def test_files_that_are_not_images_and_hidden_entries_are_skipped(tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 1})
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / ".DS_Store").write_text("")
    (root / "train" / "cat" / "more").mkdir()
    shutil.copy(root / "train" / "cat" / "cat_0.png", root / "train" / "cat" / "more" / "cat_extra.PNG")
    listing = data.scan_image_folder(root)
    assert listing.skipped == 1 and ("train/cat/more/cat_extra.PNG", 0) in listing.files["train"]
    assert len(load_dataset("imagefolder", root, image_size=32).details["cache"]) == 2


# --- the cache -------------------------------------------------------------------------------------


def test_decoded_images_are_cached_by_file_list_and_size(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 1})
    first = load_dataset("imagefolder", root, image_size=32)
    cache = root / data.CACHE_FOLDER
    names = sorted(path.name for path in cache.glob("*.pt"))
    assert [name.split("_")[:2] for name in names] == [["test", "32"], ["train", "32"]]
    assert not list(cache.glob("*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data, "_decode_image", no_decoding)
    again = load_dataset("imagefolder", root, image_size=32)
    assert torch.equal(again.train.images, first.train.images) and torch.equal(again.test.images, first.test.images)
    assert all(text.startswith("read from") for text in again.details["cache"].values())
    monkeypatch.undo()

    load_dataset("imagefolder", root, image_size=48)  # another size: another file beside
    assert len(list(cache.glob("train_48_*.pt"))) == 1 and len(list(cache.glob("train_32_*.pt"))) == 1
    changed = root / "train" / "cat" / "cat_0.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "dog" / "dog_9.png")
    grown = load_dataset("imagefolder", root, image_size=32)
    assert grown.details["cache"]["train"].startswith("written to") and grown.details["images"]["train"] == 10
    assert grown.details["cache"]["test"].startswith("read from")
    assert len(list(cache.glob("train_32_*.pt"))) == 1  # the stale file of the same split and size is gone


def test_a_damaged_cache_file_is_decoded_again(tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 1})
    first = load_dataset("imagefolder", root, image_size=32)
    (cached,) = (root / data.CACHE_FOLDER).glob("train_*.pt")
    cached.write_bytes(b"truncated")
    again = load_dataset("imagefolder", root, image_size=32)
    assert again.details["cache"]["train"].startswith("written to")
    assert torch.equal(again.train.images, first.train.images)


def test_an_unwritable_cache_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 1})

    def read_only(payload, path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data, "_save_atomically", read_only)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_dataset("imagefolder", root, image_size=32)
    assert len(splits.train) == 6 and splits.details["cache"]["train"].startswith("not cached (PermissionError")
    assert any("could not be cached" in str(warning.message) for warning in caught)
    no_cache = load_dataset("imagefolder", root, image_size=32, cache=False)
    assert no_cache.details["cache"]["train"] == "not cached (cache off)"


# --- the memory estimate ------------------------------------------------------------------------------


def test_memory_is_estimated_before_loading_and_a_dataset_too_big_says_so(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 2})
    assert dataset_bytes("imagefolder", root, 64)[0] == 15 * (3 * 64 * 64 + 8)
    assert dataset_num_classes("imagefolder", root) == 3
    config = TrainConfig(dataset="imagefolder", data_dir=str(root), image_size=64, device="cpu")
    monkeypatch.setattr(preflight, "available_memory", lambda device: (100_000, "this machine"))
    monkeypatch.setattr(data, "_decode_image", lambda *a, **k: pytest.fail("decoded although it cannot fit"))
    with pytest.raises(preflight.PreflightError) as error:
        load_run_data(config, torch.device("cpu"))
    message = str(error.value)
    assert "\n" not in message and "15 images of 64x64" in message and "about 184 kB" in message
    assert "this machine has 100 kB available" in message and "--image-size" in message


def test_a_run_counts_its_dataset_in_the_memory_check(tmp_path, monkeypatch):
    from hrsnet.runs.lifecycle import open_run

    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 2})
    config = TrainConfig(
        dataset="imagefolder",
        data_dir=str(root),
        image_size=64,
        width=1,
        device="cpu",
        quiet=True,
        results_dir=str(tmp_path / "results"),
    )
    checked = []
    monkeypatch.setattr(preflight, "check_memory", lambda estimate, device: checked.append(estimate))
    monkeypatch.setattr("hrsnet.runs.lifecycle.load_dataset", lambda *a, **k: pytest.fail("stop here"))
    with pytest.raises(pytest.fail.Exception):
        open_run(config, torch.device("cpu"), force=False)
    (estimate,) = checked
    assert estimate["data_bytes"] == 15 * (3 * 64 * 64 + 8) and estimate["num_classes"] == 3


# --- bad input: one line each, naming what is wrong ----------------------------------------------------


def _error(root, kind: type = DatasetError, **kwargs) -> str:
    with pytest.raises(kind) as error:
        load_dataset("imagefolder", root, image_size=32, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_an_image_folder_needs_a_data_dir_and_an_existing_one(tmp_path):
    message = _error(None)
    assert "needs --data-dir DIR" in message and "DIR/train/<class>/<image>" in message
    message = _error(tmp_path / "typo", DataNotFoundError)
    assert "image folder" in message and "does not exist" in message
    assert not (tmp_path / "typo").exists()  # never created


def test_folders_not_in_shape(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    assert "has no train/ folder" in _error(tmp_path / "flat")
    (tmp_path / "loose" / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "loose" / "train" / "a.png")
    assert f"{tmp_path / 'loose' / 'train' / 'a.png'} is not in a class folder" in _error(tmp_path / "loose")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert f"{tmp_path / 'empty' / 'train'} holds no class folders" in _error(tmp_path / "empty")
    root = write_image_folder(tmp_path / "named", {"train": 3, "validation": 1})
    assert f"{root / 'validation'}: name it val/" in _error(root)


def test_an_unreadable_image_is_named(tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 1})
    broken = root / "train" / "dog" / "dog_1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    message = _error(root)
    assert f"image {broken} is unreadable" in message and "fix or remove it" in message
    assert not list(root.glob(f"{data.CACHE_FOLDER}/train_*"))  # nothing cached from a failed decode


def test_a_class_missing_from_a_split_or_empty(tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "val": 1, "test": 1})
    shutil.rmtree(root / "val" / "dog")
    assert f"{root / 'val'} lacks the class folder(s) dog that train/ has" in _error(root)
    (root / "val" / "dog").mkdir()
    assert f"class 'dog' has no images in {root / 'val' / 'dog'}" in _error(root)
    shutil.copytree(root / "val" / "cat", root / "val" / "dog", dirs_exist_ok=True)
    (root / "test" / "bird").mkdir()
    assert f"{root / 'test'} has class folder(s) bird that train/ lacks" in _error(root)


def test_too_few_images_to_hold_out_validation_and_test(tmp_path):
    root = write_image_folder(tmp_path / "pets", {"train": 3})
    for path in sorted((root / "train" / "fish").glob("*.png"))[1:]:
        path.unlink()
    message = _error(root)
    assert "class 'fish' has 1 image(s)" in message and "without val/ and test/ each class needs at least 3" in message


def test_the_command_line_says_it_in_one_line(tmp_path, capsys):
    from hrsnet.__main__ import main

    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 1})
    (root / "train" / "cat" / "cat_2.png").write_bytes(b"garbage")
    code = main(
        ["train", "--dataset", "imagefolder", "--data-dir", str(root), "--image-size", "32", "--width", "1"]
        + ["--device", "cpu", "--quiet", "--results-dir", str(tmp_path / "results"), "--epochs", "1"]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert err.startswith("error: image ") and "cat_2.png is unreadable" in err


# --- a run on an image folder records what it read ------------------------------------------------------


def test_a_run_records_the_dataset_block(tmp_path):
    from hrsnet.runs import fit

    root = write_image_folder(tmp_path / "pets")
    config = TrainConfig(
        dataset="imagefolder",
        data_dir=str(root),
        image_size=32,
        width=1,
        epochs=1,
        batch_size=3,  # 9 training images: no last batch of one (BatchNorm needs two values at 1x1)
        device="cpu",
        quiet=True,
        results_dir=str(tmp_path / "results"),
    )
    assert config.run_id.startswith("hrnet_c1_imagefolder32_")
    run = fit(config)
    saved = json.loads((run.run_dir / "config.json").read_text())
    block = saved["dataset"]
    assert block["name"] == "imagefolder" and block["label"] == "image folder pets" and block["num_classes"] == 3
    assert block["converted_to_rgb"] == {"L": 1, "RGBA": 1} and block["folder"] == str(root)
    assert (block["train_size"], block["val_size"], block["test_size"]) == (9, 3, 3)
    assert saved["init"] == {"init": "random"}
    per_class = (run.run_dir / "per_class.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in per_class[1:]] == list(CLASSES)
