"""Test-time data (Section 3.2): every example of a split rescaled to smaller side Q, whole,
in batches whose images share one shape.

Images rescaled to the same Q still differ in their longer side, and every new shape costs a
compilation. So the longer side is trimmed, evenly from both ends, down to Q plus a multiple
of BUCKET pixels: at most 31 pixels, most of which VGG's five max-pools would drop anyway
(they floor every odd side), and a centre crop of the trimmed image is the centre crop of the
whole one. A split of 4:3 and 3:4 photos then needs about a dozen shapes per scale, and
batches are grouped by shape (padded to full size, the padding masked out).
"""

from __future__ import annotations

from typing import Iterator

from vgg_jax.environment import require_training_libraries

require_training_libraries()  # a base install has no TensorFlow: name the extra

import tensorflow as tf
import tensorflow_datasets as tfds

from vgg_jax.data.pipeline import (
    DecodeFailures,
    SkippedImages,
    drop_malformed,
    encoded_examples,
    local_batch_size,
    pad_batch,
)
from vgg_jax.data.preprocessing import decode_rgb, rescale_smallest_side, to_uint8

BUCKET = 32  # VGG's downsampling factor: sides that differ by less share a pool5 size


def trim_to_bucket(image: tf.Tensor, scale: int, bucket: int = BUCKET) -> tf.Tensor:
    """The centre of `image` (smaller side `scale`) whose sides are scale + k * bucket."""
    shape = tf.shape(image)[:2]
    target = scale + (shape - scale) // bucket * bucket
    start = (shape - target) // 2
    return tf.slice(image, [start[0], start[1], 0], [target[0], target[1], 3])


def rescaled_image(encoded: tf.Tensor, scale: int, bucket: int = BUCKET) -> tf.Tensor:
    """JPEG/PNG bytes -> uint8 RGB with smaller side `scale`, the longer one trimmed to bucket."""
    image = to_uint8(rescale_smallest_side(decode_rgb(encoded), scale))
    return trim_to_bucket(image, scale, bucket)


def rescaled_batches(
    builder,
    split: str,
    scale: int,
    batch_size: int,
    skipped: SkippedImages | None = None,
    bucket: int = BUCKET,
) -> Iterator[dict]:
    """Every readable example of this process's share of `split` once, rescaled to `scale`.

    Yields {"image": (batch_size, H, W, 3) uint8, "label", "index" (position in the share),
    "mask" (0 for padding)}; every image of a batch has the same (H, W). Malformed files are
    left out and recorded in `skipped`.
    """
    if scale < 1:
        raise ValueError(f"A test scale Q must be a positive number of pixels, got {scale}.")
    batch_size = local_batch_size(batch_size)
    ds = encoded_examples(builder, split, drop_remainder=False).enumerate()
    skipped = skipped or SkippedImages()
    ds = drop_malformed(ds, skipped)

    def prepare(index, example):
        return {
            "image": rescaled_image(example["image"], scale, bucket),
            "label": tf.cast(example["label"], tf.int32),
            "index": tf.cast(index, tf.int32),
        }

    def shape_key(example):
        height, width = tf.unstack(tf.cast(tf.shape(example["image"])[:2], tf.int64))
        return height * 1_000_003 + width

    failures = DecodeFailures(skipped)
    ds = failures.map_naming_failures(ds, prepare).group_by_window(
        shape_key, lambda _, window: window.batch(batch_size), window_size=batch_size
    )
    for batch in tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)):
        yield pad_batch(failures.strip_numbers(batch, in_order=False), batch_size)
    failures.finish()
