"""Training and evaluation data through tensorflow-datasets and tf.data.

The builders come from vgg_jax.data.sources. Each process reads its own share of a split and
yields NumPy batches shaped (local devices, per-device batch, ...) for the pmapped steps: uint8
images (normalised on the accelerator, vgg_jax.data.normalization), labels, and with PCA
lighting each image's RGB shift.
Images stay encoded until the preprocessing decodes the part it keeps. Training batches come
in a fixed order per (seed, epoch), so a run resumed mid-epoch sees exactly the batches an
uninterrupted run would.
Evaluation sees every example once: the last batch is padded and the padding masked out.
A file that is not a whole JPEG or PNG, or does not decode, is skipped, counted and named
(SkippedImages, DecodeFailures), never a crash mid-epoch.
"""

from __future__ import annotations

import math
import threading
from typing import Iterator

from vgg_jax.environment import require_training_libraries

require_training_libraries()  # a base install has no TensorFlow: name the extra

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vgg_jax.data.preprocessing import EvalPreprocessing, TrainAugmentation, is_well_formed
from vgg_jax.data.sources import DatasetInfo, split_examples
from vgg_jax.parallel import split_over_devices

NO_AUGMENTATION = TrainAugmentation()
AS_STORED = EvalPreprocessing()


class SkippedImages:
    """Examples the pipeline skipped, by name: files that are not whole JPEG/PNG files, and
    files that look whole but fail to decode. Each name counts once, however many epochs meet
    it; `reported` are names already counted (a resumed run passes those of its first part)."""

    def __init__(self, reported=()):
        self._names: list[str] = []
        self._reported = set(reported)
        self._lock = threading.Lock()

    def record(self, name) -> bool:
        """Called from inside tf.data for each bad example; False drops it."""
        self.add(name.numpy().decode("utf-8", "replace"))
        return False

    def add(self, name: str) -> None:
        with self._lock:
            self._names.append(name)

    def take(self) -> list[str]:
        """The names recorded since the last take that were not reported before, each once."""
        with self._lock:
            names, self._names = self._names, []
            new = [name for name in dict.fromkeys(names) if name not in self._reported]
            self._reported.update(new)
        return new

    def reported(self) -> list[str]:
        with self._lock:
            return sorted(self._reported)


def encoded_examples(builder, split: str, drop_remainder: bool) -> tf.data.Dataset:
    """This process's share of a split, images still encoded, each with a name for reports."""
    decoders = {"image": tfds.decode.SkipDecoding()}
    if isinstance(builder, tfds.ImageFolder):
        # ImageFolder takes whole split names only: share its examples out by index.
        ds = builder.as_dataset(split=split, decoders=decoders)
        ds = ds.shard(jax.process_count(), jax.process_index())
        if drop_remainder:
            ds = ds.take(split_examples(builder, split) // jax.process_count())
    else:
        process_split = tfds.split_for_jax_process(split, drop_remainder=drop_remainder)
        ds = builder.as_dataset(split=process_split, decoders=decoders)
    features = builder.info.features

    def named(index, example):
        name = None
        for key in ("image/filename", "file_name"):
            if key in features:
                name = example[key]
        if name is None:  # a data set without file names: its split and position
            position = tf.strings.as_string(index)
            name = tf.strings.join([builder.name, split, "example", position], " ")
        return {"image": example["image"], "label": example["label"], "name": name}

    return ds.enumerate().map(named)


# tf.data's seed for a graph without a global seed (tensorflow/python/framework/random_seed.py).
_UNSEEDED_GRAPH_SEED = 87_654_321


def shuffled_by_seed(ds: tf.data.Dataset, buffer_size: int, seed: int) -> tf.data.Dataset:
    """`ds.shuffle(buffer_size, seed, reshuffle_each_iteration=False)` as it orders examples when
    TensorFlow has no global seed, whatever `tf.random.set_seed` the caller made.

    Dataset.shuffle pairs its seed with the global one, so a user's `tf.random.set_seed` would
    change the order, and a run resumed in that process would not see the batches the
    uninterrupted one saw. The public raw op takes both seeds explicitly."""
    flat_specs = tf.nest.flatten(ds.element_spec)
    variant = tf.raw_ops.ShuffleDataset(
        input_dataset=tf.data.experimental.to_variant(ds),
        buffer_size=tf.constant(buffer_size, tf.int64),
        seed=tf.constant(_UNSEEDED_GRAPH_SEED, tf.int64),
        seed2=tf.constant(seed % (2**31 - 1), tf.int64),  # as Dataset.shuffle truncates it
        reshuffle_each_iteration=False,
        output_types=[spec.dtype for spec in flat_specs],
        output_shapes=[spec.shape for spec in flat_specs],
    )
    shuffled = tf.data.experimental.from_variant(variant, ds.element_spec)
    return shuffled.with_options(ds.options())


def drop_malformed(ds: tf.data.Dataset, skipped: SkippedImages) -> tf.data.Dataset:
    def keep(*args):
        example = args[-1]
        return tf.cond(
            is_well_formed(example["image"]),
            lambda: tf.constant(True),
            lambda: tf.reshape(tf.py_function(skipped.record, [example["name"]], tf.bool), []),
        )

    return ds.filter(keep)


class DecodeFailures:
    """Names the examples that `prepare` fails on (files that look whole but do not decode),
    which tf.data's ignore_errors drops unnamed.

    Each example is numbered on its way in, its name kept in a table under its number, and the
    prepared example carries its number out. A number that never comes out is a failure; the
    table names it. The table holds only the examples on their way through, and the hot path
    gains one table insert per example (a per-example try in its own dataset cost 30% of the
    training pipeline's speed on 2 cores)."""

    NUMBER = "_number"

    def __init__(self, skipped: SkippedImages):
        self.skipped = skipped
        self.names = tf.lookup.experimental.MutableHashTable(tf.int64, tf.string, "")
        self.next_number = 0  # in order: the number the next batch starts with if none failed

    def map_naming_failures(self, ds: tf.data.Dataset, prepare) -> tf.data.Dataset:
        """`ds.map(prepare)` in parallel and in order, dropping the examples it fails on (and
        TensorFlow logging why)."""

        def numbered(number, element):
            example = element[-1] if isinstance(element, tuple) else element
            insert = self.names.insert(number[None], example["name"][None])
            with tf.control_dependencies([insert]):
                return tf.identity(number), element

        def prepared(number, element):
            elements = element if isinstance(element, tuple) else (element,)
            return {**prepare(*elements), self.NUMBER: number}

        ds = ds.enumerate().map(numbered)
        prepared_ds = ds.map(prepared, num_parallel_calls=tf.data.AUTOTUNE)
        return prepared_ds.ignore_errors(log_warning=True)

    def strip_numbers(self, batch: dict, in_order: bool) -> dict:
        """The batch without its numbers; with `in_order` (no reordering after prepare), the
        numbers before the last that came out and did not are failures, recorded at once."""
        numbers = batch.pop(self.NUMBER)
        if len(numbers):
            self.names.remove(tf.constant(numbers, tf.int64))
            first, last = int(numbers.min()), int(numbers.max())
            gap = first != self.next_number or last - first + 1 != len(numbers)
            if in_order and gap:  # reading the table only then keeps the common case cheap
                self._record(lambda number: number < last)
            self.next_number = last + 1
        return batch

    def finish(self) -> None:
        """After a complete pass: every number that never came out is a failure."""
        self._record(lambda number: True)

    def _record(self, is_failure) -> None:
        numbers, names = (t.numpy() for t in self.names.export())
        failed = [i for i, number in enumerate(numbers) if is_failure(number)]
        for i in failed:
            self.skipped.add(names[i].decode("utf-8", "replace"))
        if failed:
            self.names.remove(tf.constant(numbers[failed], tf.int64))


# `data` below is a training config's data section (vgg_jax.training.sections.DataSection).


def augmentation_from_config(data) -> TrainAugmentation:
    return TrainAugmentation(
        scale=tuple(data.train_scale) if data.train_scale else None,
        crop=data.crop_size or None,
        flip=data.random_flip,
        pca_sigma=data.pca_lighting,
        inception_crop=data.inception_crop,
    )


def eval_preprocessing_from_config(data) -> EvalPreprocessing:
    return EvalPreprocessing(scale=data.eval_scale or None, crop=data.crop_size or None)


def model_input_shape(data, info: DatasetInfo) -> tuple[int, int, int]:
    """(H, W, 3) of the images the model sees after preprocessing (always RGB: grayscale
    and RGBA images are converted)."""
    if data.crop_size:
        return (data.crop_size, data.crop_size, 3)
    if None in info.image_shape[:2]:
        raise ValueError(
            f"Images of {info.name!r} vary in size: set config.crop_size (e.g. 224) so batches "
            f"have one shape."
        )
    return (*info.image_shape[:2], 3)


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
    skipped: SkippedImages | None = None,
) -> Iterator[dict]:
    """One epoch of shuffled, augmented training batches for this process, from batch
    `skip_batches` on. The order and every random draw depend only on (seed, epoch, position),
    so a resumed epoch yields exactly the batches the uninterrupted one would have. Malformed
    images are left out and recorded in `skipped`; fewer batches than steps_per_epoch come only
    when over half the split is unreadable."""
    epoch_seed = seed * 100_003 + epoch
    batch_size = local_batch_size(global_batch_size)
    ds = encoded_examples(builder, split, drop_remainder=True)
    ds = shuffled_by_seed(ds, shuffle_buffer_size, epoch_seed)
    # A second pass over the same order tops the epoch up to its full count of batches when
    # bad files were dropped; positions (and so every random draw) are the same either way.
    ds = ds.enumerate().repeat(2).skip(skip_batches * batch_size)
    skipped = skipped or SkippedImages()
    ds = drop_malformed(ds, skipped)

    def prepare(position, example):
        example_seed = tf.stack([tf.constant(epoch_seed, tf.int64), position])
        image, lighting = augmentation(example["image"], tf.cast(example_seed, tf.int32))
        prepared = {"image": image, "label": tf.cast(example["label"], tf.int32)}
        if augmentation.pca_sigma:
            prepared["lighting"] = lighting
        return prepared

    failures = DecodeFailures(skipped)
    ds = failures.map_naming_failures(ds, prepare).batch(batch_size, drop_remainder=True)
    num_batches = steps_per_epoch(split_examples(builder, split), global_batch_size)
    ds = ds.take(num_batches - skip_batches).prefetch(tf.data.AUTOTUNE)
    for batch in tfds.as_numpy(ds):
        yield split_over_devices(failures.strip_numbers(batch, in_order=True))


def eval_batches(
    builder,
    split: str,
    global_batch_size: int,
    preprocessing: EvalPreprocessing = AS_STORED,
    skipped: SkippedImages | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> Iterator[dict]:
    """Every example of this process's share once, padded to full batches with mask 0.

    Every process yields the same number of batches, so the cross-device sums never wait.
    Malformed images are left out and recorded in `skipped`. `image_shape` (H, W, C) shapes
    the padding of a process whose share is empty.
    """
    batch_size = local_batch_size(global_batch_size)
    total = split_examples(builder, split)
    num_batches = math.ceil(math.ceil(total / jax.process_count()) / batch_size)
    skipped = skipped or SkippedImages()
    ds = drop_malformed(encoded_examples(builder, split, False), skipped)

    def prepare(example):
        image = preprocessing(example["image"])
        return {"image": image, "label": tf.cast(example["label"], tf.int32)}

    failures = DecodeFailures(skipped)
    ds = failures.map_naming_failures(ds, prepare).batch(batch_size)
    batches = iter(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))
    shape = image_shape
    for _ in range(num_batches):
        batch = next(batches, None)
        if batch is not None:
            batch = failures.strip_numbers(batch, in_order=True)
        else:  # this process's share ran out before another's: all padding
            if shape is None:
                raise ValueError(
                    f"This process has no example of split {split!r} to evaluate; pass "
                    f"image_shape so it can send padding."
                )
            batch = {"image": np.zeros((0, *shape), np.uint8), "label": np.zeros(0, np.int32)}
        shape = batch["image"].shape[1:]
        yield split_over_devices(pad_batch(batch, batch_size))
    for _ in batches:  # (none by the count above) the iterator run to its end, so that every
        pass  # example has come out or failed before finish() reads what is left in the table
    failures.finish()


def pad_batch(batch: dict, batch_size: int) -> dict:
    real = len(batch["label"])
    padding = batch_size - real
    padded = {
        key: np.concatenate([value, np.zeros((padding, *value.shape[1:]), value.dtype)])
        for key, value in batch.items()
    }
    padded["mask"] = np.concatenate([np.ones(real, np.float32), np.zeros(padding, np.float32)])
    return padded
