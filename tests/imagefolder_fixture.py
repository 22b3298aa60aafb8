"""A small image folder of PNG files (DIR/train/<class>/<image>, optional val/ and test/), for the
image-folder tests: every class has its own colour, so a network can learn something, and some
images are grayscale (mode L) or have an alpha channel (RGBA), which the loader converts to RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "fish")
# The images of every split that are not RGB: (split, class, index) -> PIL mode.
OTHER_MODES = {("train", "cat", 1): "L", ("train", "dog", 2): "RGBA", ("test", "fish", 0): "L"}


def image_array(class_index: int, index: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An RGB image (H, W, 3) of its class's colour plus noise."""
    colour = np.array([(class_index * 90 + 40) % 256, (class_index * 50 + 120) % 256, 200 - class_index * 60])
    noise = rng.normal(0, 25, (*size, 3))
    return np.clip(colour + noise + index, 0, 255).astype(np.uint8)


def write_image_folder(
    root: Path | str,
    per_class: dict[str, int] | None = None,
    classes: tuple[str, ...] = CLASSES,
    other_modes: dict | None = None,
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<class>/<class>_<i>.png`` for each split in ``per_class`` (split ->
    images per class; default 5 in train/ only), sizes varying from 20x24 to 40x36; returns root."""
    root = Path(root)
    per_class = {"train": 5} if per_class is None else per_class
    other_modes = OTHER_MODES if other_modes is None else other_modes
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for class_index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                size = (20 + 4 * index % 21, 24 + 3 * class_index)
                image = Image.fromarray(image_array(class_index, index, size, rng))
                mode = other_modes.get((split, name, index))
                if mode == "RGBA":
                    alpha = Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8))
                    image.putalpha(alpha)
                elif mode is not None:
                    image = image.convert(mode)
                image.save(folder / f"{name}_{index}.png")
    return root
