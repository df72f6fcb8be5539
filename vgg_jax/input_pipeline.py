"""Training and evaluation data through tensorflow-datasets and tf.data.

Each process reads its own share of a split (tfds.split_for_jax_process) and yields NumPy
batches shaped (local devices, per-device batch, ...) for the pmapped steps. Training batches
come in a fixed order per (seed, epoch), so a run resumed mid-epoch sees exactly the batches an
uninterrupted run would. Evaluation sees every example once: the last batch is padded and the
padding masked out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vgg_jax.datasets import SklearnDigits
from vgg_jax.preprocessing import EvalPreprocessing, TrainAugmentation, normalize

NO_AUGMENTATION = TrainAugmentation()
AS_STORED = EvalPreprocessing()

# Data sets vgg_jax builds itself, by the name a config uses.
LOCAL_BUILDERS = {"digits": SklearnDigits}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_examples: int
    eval_examples: int


def keep_tensorflow_off_accelerators() -> None:
    """tf.data runs on the host; left alone, TensorFlow would take GPU memory from JAX."""
    tf.config.set_visible_devices([], "GPU")


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of a data set, prepared (built or downloaded) on first use."""
    keep_tensorflow_off_accelerators()
    if name in LOCAL_BUILDERS:
        builder = LOCAL_BUILDERS[name](data_dir=data_dir)
    else:
        builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare()
    return builder


def describe(builder, train_split: str, eval_split: str) -> DatasetInfo:
    """Classes, image shape and split sizes, from the data set's own metadata."""
    features = builder.info.features
    for split in (train_split, eval_split):
        if split not in builder.info.splits:
            raise ValueError(
                f"Data set {builder.name!r} has no split {split!r}; it has "
                f"{', '.join(builder.info.splits)}."
            )
    return DatasetInfo(
        name=builder.name,
        num_classes=features["label"].num_classes,
        image_shape=tuple(features["image"].shape),
        train_examples=builder.info.splits[train_split].num_examples,
        eval_examples=builder.info.splits[eval_split].num_examples,
    )


def augmentation_from_config(config) -> TrainAugmentation:
    return TrainAugmentation(
        scale=tuple(config.train_scale) if config.train_scale else None,
        crop=config.crop_size or None,
        flip=config.random_flip,
        pca_sigma=config.pca_lighting,
    )


def eval_preprocessing_from_config(config) -> EvalPreprocessing:
    return EvalPreprocessing(scale=config.eval_scale or None, crop=config.crop_size or None)


def model_input_shape(config, info: DatasetInfo) -> tuple[int, int, int]:
    """(H, W, C) of the images the model sees after preprocessing."""
    if config.crop_size:
        return (config.crop_size, config.crop_size, info.image_shape[-1])
    if None in info.image_shape:
        raise ValueError(
            f"Images of {info.name!r} vary in size: set config.crop_size (e.g. 224) so batches "
            f"have one shape."
        )
    return info.image_shape


def _to_devices(batch: dict) -> dict:
    devices = jax.local_device_count()
    return {key: value.reshape(devices, -1, *value.shape[1:]) for key, value in batch.items()}


def local_batch_size(global_batch_size: int) -> int:
    """This process's share of a global batch, which must split evenly over all devices."""
    if global_batch_size % jax.device_count():
        raise ValueError(
            f"batch_size={global_batch_size} does not split evenly over the "
            f"{jax.device_count()} devices; use a multiple of {jax.device_count()}."
        )
    return global_batch_size // jax.process_count()


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Full training batches per epoch (each process's share is equal; the rest is dropped)."""
    per_process = num_examples // jax.process_count()
    steps = per_process // local_batch_size(global_batch_size)
    if steps == 0:
        raise ValueError(
            f"batch_size {global_batch_size} is larger than the {num_examples} training examples."
        )
    return steps


def train_batches(
    builder,
    split: str,
    global_batch_size: int,
    epoch: int,
    seed: int,
    skip_batches: int = 0,
    shuffle_buffer_size: int = 16_384,
    augmentation: TrainAugmentation = NO_AUGMENTATION,
) -> Iterator[dict]:
    """One epoch of shuffled, augmented training batches for this process, from batch
    `skip_batches` on. The order and every random draw depend only on (seed, epoch, position),
    so a resumed epoch yields exactly the batches the uninterrupted one would have."""
    epoch_seed = seed * 100_003 + epoch
    batch_size = local_batch_size(global_batch_size)
    ds = builder.as_dataset(split=tfds.split_for_jax_process(split, drop_remainder=True))
    ds = ds.shuffle(shuffle_buffer_size, seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.enumerate().skip(skip_batches * batch_size)

    def prepare(position, example):
        example_seed = tf.stack([tf.constant(epoch_seed, tf.int64), position])
        image = augmentation(example["image"], tf.cast(example_seed, tf.int32))
        return {"image": normalize(image), "label": tf.cast(example["label"], tf.int32)}

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    for batch in tfds.as_numpy(ds):
        yield _to_devices(batch)


def eval_batches(
    builder,
    split: str,
    global_batch_size: int,
    preprocessing: EvalPreprocessing = AS_STORED,
) -> Iterator[dict]:
    """Every example of this process's share once, padded to full batches with mask 0.

    Every process yields the same number of batches, so the cross-device sums never wait.
    """
    batch_size = local_batch_size(global_batch_size)
    total = builder.info.splits[split].num_examples
    num_batches = math.ceil(math.ceil(total / jax.process_count()) / batch_size)
    ds = builder.as_dataset(split=tfds.split_for_jax_process(split, drop_remainder=False))

    def prepare(example):
        image = normalize(preprocessing(example["image"]))
        return {"image": image, "label": tf.cast(example["label"], tf.int32)}

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    batches = iter(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))
    shape = None
    for _ in range(num_batches):
        batch = next(batches, None)
        if batch is None:  # this process's share ran out before another's: all padding
            batch = {"image": np.zeros((0, *shape), np.float32), "label": np.zeros(0, np.int32)}
        shape = batch["image"].shape[1:]
        yield _to_devices(_pad(batch, batch_size))


def _pad(batch: dict, batch_size: int) -> dict:
    real = len(batch["label"])
    padding = batch_size - real
    padded = {
        key: np.concatenate([value, np.zeros((padding, *value.shape[1:]), value.dtype)])
        for key, value in batch.items()
    }
    padded["mask"] = np.concatenate([np.ones(real, np.float32), np.zeros(padding, np.float32)])
    return padded
