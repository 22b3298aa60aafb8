"""Datasets, splits and the device-side preprocessing."""

import inspect

import numpy as np
import pytest
import torch
from cifar_fixture import write_cifar100_fixture
from PIL import Image
from torchvision import transforms

from hrsnet import data
from hrsnet.data import DataNotFoundError, load_dataset, preprocess, random_crop_flip, seeded_split

# One level of an 8-bit pixel after normalisation with std 0.5, plus float32 rounding slack.
ONE_UINT8_STEP = 2.0 / 255 + 1e-6


def test_seeded_split_is_a_seeded_partition():
    train, val = seeded_split(50_000, 0.2, seed=3)
    assert (len(train), len(val)) == (40_000, 10_000)
    assert set(train).isdisjoint(val) and len(set(train) | set(val)) == 50_000
    assert seeded_split(50_000, 0.2, seed=3) == (train, val)
    assert seeded_split(50_000, 0.2, seed=4)[1] != val


def test_stratified_split_holds_out_every_class():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 2)
    kept, held = data.stratified_split(labels, 0.2, seed=3)
    assert set(kept).isdisjoint(held) and sorted(kept + held) == list(range(15))
    assert sorted(labels[held].tolist()) == [0, 0, 1, 2]  # round(0.2 n), at least one, at most n - 1
    assert set(labels[kept].tolist()) == {0, 1, 2}
    assert data.stratified_split(labels, 0.2, seed=3) == (kept, held)
    assert any(data.stratified_split(labels, 0.2, seed=s)[1] != held for s in range(4, 10))


def test_interleaved_by_class_spreads_the_first_n_over_the_classes():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    assert data.interleaved_by_class([0, 1, 2, 3, 4, 5], labels) == [0, 3, 5, 1, 4, 2]
    assert data.interleaved_by_class([4, 2, 3], labels) == [2, 4, 3]  # each class keeps its own order


def test_cifar100_loads_through_torchvision(cifar_checksums):
    splits = load_dataset("cifar100", cifar_checksums, seed=0)
    assert splits.num_classes == 100 and splits.class_names[:2] == ["apple", "aquarium_fish"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (400, 100, 200)
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (3, 32, 32)
    assert sorted(splits.train_indices + splits.val_indices) == list(range(500))


def test_cifar100_checksum_check_is_kept(cifar_fixture_dir):
    root, _ = cifar_fixture_dir  # fixture files, real (unpatched) MD5 sums: they must not pass
    with pytest.raises(DataNotFoundError, match="train, test, meta failed the MD5 checksum"):
        load_dataset("cifar100", root, download=False)


def _copy_fixture(cifar_checksums, tmp_path):
    import shutil

    shutil.copytree(cifar_checksums / "cifar-100-python", tmp_path / "cifar-100-python")
    return tmp_path / "cifar-100-python"


def test_damaged_cifar100_says_which_file_and_how(cifar_checksums, tmp_path):
    """Truncated, missing or unreadable files each get their own one-line message, not "not found"."""
    folder = _copy_fixture(cifar_checksums, tmp_path)
    data_bytes = (folder / "train").read_bytes()
    (folder / "train").write_bytes(data_bytes[: len(data_bytes) // 2])
    with pytest.raises(DataNotFoundError, match=r"damaged in .*: train failed the MD5 checksum \(truncated"):
        load_dataset("cifar100", tmp_path)
    (folder / "train").unlink()
    with pytest.raises(DataNotFoundError, match=r"incomplete in .*: train missing"):
        load_dataset("cifar100", tmp_path)


def test_unreadable_cifar100_that_passes_its_checksum(cifar_checksums, tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100

    folder = _copy_fixture(cifar_checksums, tmp_path)
    (folder / "train").write_bytes(b"not a pickle")
    import hashlib

    monkeypatch.setattr(CIFAR100, "train_list", [["train", hashlib.md5(b"not a pickle").hexdigest()]])
    with pytest.raises(DataNotFoundError, match="is unreadable \\(UnpicklingError"):
        load_dataset("cifar100", tmp_path)


def test_a_missing_data_dir_is_not_created(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("cifar100", tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_missing_cifar100_offline_is_one_clear_line(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        import urllib.error

        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_network)
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("cifar100", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "URLError" in message
    assert "cifar-100-python" in message and str(tmp_path) in message and "HRSNET_DATA" in message


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HRSNET_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path


def test_default_data_dir_does_not_depend_on_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("HRSNET_DATA", raising=False)
    expected = data.default_data_dir()
    monkeypatch.chdir(tmp_path)  # the notebooks run from notebooks/, the CLI from anywhere
    assert data.default_data_dir() == expected and expected.is_absolute() and expected.name == "data"


def test_digits_dataset():
    splits = load_dataset("digits", seed=0)
    assert splits.name == "digits" and splits.class_names == [str(d) for d in range(10)]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert splits.train.images.shape[1:] == (3, 8, 8) and int(splits.train.images.max()) == 255
    # The test set does not move with the run's seed; the train/val split does.
    other = load_dataset("digits", seed=1)
    assert torch.equal(other.test.images, splits.test.images)
    assert not torch.equal(other.val.labels, splits.val.labels)


def test_subsets():
    splits = load_dataset("digits", train_subset=10, val_subset=5, test_subset=7)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 5, 7)


@pytest.mark.parametrize("size", [224, 32, 40])
def test_preprocess_matches_torchvision_pipeline(cifar_checksums, size):
    """Batched interpolate vs PIL Resize + ToTensor + Normalize: within one uint8 step.

    PIL rounds the resized image to uint8 before ToTensor; we stay in float. That rounding
    is the whole difference: max <= 2/255 (one 8-bit level after std-0.5 normalisation).
    """
    images = load_dataset("cifar100", cifar_checksums).test.images[:16]
    reference_pipeline = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)]
    )
    expected = torch.stack([reference_pipeline(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images])
    actual = preprocess(images, size)
    assert actual.dtype == torch.float32 and actual.shape == (16, 3, size, size)
    difference = (actual - expected).abs()
    assert difference.max().item() <= ONE_UINT8_STEP
    assert difference.mean().item() < ONE_UINT8_STEP / 2


def test_preprocess_upscales_digits_like_torchvision():
    images = load_dataset("digits").test.images[:8]
    pipeline = transforms.Compose(
        [transforms.Resize((32, 32)), transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)]
    )
    expected = torch.stack([pipeline(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images])
    assert (preprocess(images, 32) - expected).abs().max().item() <= ONE_UINT8_STEP


def test_preprocess_channels_last_and_range():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = preprocess(images, 64, memory_format=torch.channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= -1 and out.max() <= 1


def test_random_crop_flip_is_a_crop_or_flipped_crop_of_the_padded_image():
    images = torch.rand(6, 3, 8, 8)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=4)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for original, augmented in zip(padded, out):
        crops = [original[:, r : r + 8, c : c + 8] for r in range(9) for c in range(9)]
        assert any(torch.equal(augmented, crop) or torch.equal(augmented, crop.flip(-1)) for crop in crops)
    again = random_crop_flip(images, torch.Generator().manual_seed(0), padding=4)
    assert torch.equal(out, again)  # the generator alone decides: resumable
    assert not torch.equal(out, images)


def test_random_crop_flip_without_a_generator_draws_on_the_default_one():
    """generator=None: the images' device's default generator (seeded by torch.manual_seed)."""
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    torch.manual_seed(3)
    first = random_crop_flip(images)
    torch.manual_seed(3)
    assert torch.equal(first, random_crop_flip(images))


def test_fixture_writer_uses_real_format(tmp_path):
    import pickle

    write_cifar100_fixture(tmp_path, train_per_class=1, test_per_class=1)
    with open(tmp_path / "cifar-100-python" / "train", "rb") as handle:
        train = pickle.load(handle, encoding="latin1")
    assert set(train) >= {"data", "fine_labels", "coarse_labels", "filenames"}
    assert train["data"].dtype == np.uint8 and train["data"].shape == (100, 3072)


def test_synthetic_dataset_has_cifar_shapes_and_learnable_classes():
    train_x, train_y, test_x, test_y, classes = data.load_synthetic_arrays((2000, 500))
    assert train_x.shape == (2000, 32, 32, 3) and train_x.dtype == np.uint8 and len(classes) == 100
    assert test_x.shape == (500, 32, 32, 3) and set(np.unique(train_y)) <= set(range(100))
    again = data.load_synthetic_arrays((2000, 500))
    assert np.array_equal(again[0], train_x) and np.array_equal(again[3], test_y)  # generated from a fixed seed
    # Class structure: the nearest class mean (of the training images) labels test images far above chance.
    features = lambda x: x.reshape(len(x), 4, 8, 4, 8, 3).mean(axis=(2, 4)).reshape(len(x), -1)  # noqa: E731
    means = np.stack([features(train_x[train_y == c]).mean(axis=0) for c in range(100)])
    distances = ((features(test_x)[:, None, :] - means[None]) ** 2).sum(-1)
    assert (distances.argmin(axis=1) == test_y).mean() > 0.2  # chance is 0.01


def test_synthetic_dataset_splits_like_cifar100(monkeypatch):
    """CIFAR-100's sizes, 50,000 + 10,000 images, split 40,000 / 10,000 / 10,000. The loader's
    request is checked at full size; the images are generated at a tenth of it (ten seconds
    become one) and split as the full set would be, in proportion."""
    generate = data.load_synthetic_arrays
    assert inspect.signature(generate).parameters["sizes"].default == data.SYNTHETIC_SIZES == (50_000, 10_000)
    asked = []

    def at_a_tenth(sizes=data.SYNTHETIC_SIZES, **options):
        asked.append(sizes)
        return generate(tuple(size // 10 for size in sizes), **options)

    monkeypatch.setattr(data, "load_synthetic_arrays", at_a_tenth)
    splits = load_dataset("synthetic", seed=0)
    assert asked == [(50_000, 10_000)]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4_000, 1_000, 1_000)
    assert splits.train.images.shape[1:] == (3, 32, 32) and splits.train.images.dtype == torch.uint8
    assert data.dataset_spec("synthetic").stored == (60_000, 32)  # what memory checks count before loading
    assert splits.num_classes == 100 and data.DATASET_LABELS["synthetic"] == "synthetic (not CIFAR-100)"
