"""Image files read lazily by tf.data: decoded and resized as training, evaluation and scoring need them.

The decoding is Keras' own (`image_dataset_from_directory`): `tf.io.decode_image` with the wanted
channels, then `tf.image.resize` (bilinear) to the model's input size, as float32 pixel values. A
folder of images is never held in memory: a dataset of paths is mapped, in parallel, to pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def load_image(path: Any, shape: tuple[int, ...]) -> Any:
    """One image file (a path tensor) as float32 pixels of `shape` (height, width, channels)."""
    import tensorflow as tf

    height, width, channels = shape
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    image = tf.image.resize(image, (height, width), method="bilinear")
    image.set_shape((height, width, channels))
    return image


def image_dataset(paths: Any, shape: tuple[int, ...]) -> Any:
    """A tf.data dataset of decoded images from a dataset (or list) of path strings, in their order."""
    import tensorflow as tf

    if not isinstance(paths, tf.data.Dataset):
        paths = tf.data.Dataset.from_tensor_slices(np.asarray(paths, dtype=str))
    return paths.map(lambda path: load_image(path, shape), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def decode_files(paths: list[str], shape: tuple[int, ...], batch: int = 256) -> Iterator[np.ndarray]:
    """Batches of decoded images (float32 arrays), in the order of `paths`."""
    if not paths:
        return
    import tensorflow as tf

    for images in image_dataset(paths, shape).batch(batch).prefetch(tf.data.AUTOTUNE):
        yield images.numpy()


def absolute(root: str | Path, relative: Any) -> np.ndarray:
    """Paths of an image folder's table (relative to its root) as absolute path strings."""
    prefix = str(Path(root)) + "/"
    return np.array([prefix + str(path) for path in relative], dtype=object)
