"""The paper's image preprocessing as small composable tf.data ops (Section 3.1 and 3.2).

Images arrive encoded (JPEG or PNG bytes). A crop is located first, in the original image's
coordinates, and only that window is decoded (tf.image.decode_and_crop_jpeg), so a full-size
JPEG is never decoded whole to keep 224x224 of it. Random ops take a stateless seed (an int32
tensor of shape [2]), so the same seed always gives the same image: a pipeline that derives
seeds from (run seed, epoch, example) is reproducible and resumable. Images come out as uint8
RGB (grayscale and RGBA converted); normalisation and the PCA lighting shift are applied on the
accelerator (vgg_jax.data.normalization), where they cost nothing.
"""

from __future__ import annotations

import dataclasses

from vgg_jax.environment import require_training_libraries

require_training_libraries()  # a base install has no TensorFlow: name the extra

import tensorflow as tf

from vgg_jax.data.normalization import IMAGENET_PCA_EIGENVALUES, IMAGENET_PCA_EIGENVECTORS

JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
# Cameras and editors may write padding after a JPEG's end marker: search this far back.
END_MARKER_SEARCH_BYTES = 1024
# Inception-style random-resized crops (Szegedy et al. 2015), as torchvision's defaults.
INCEPTION_AREA = (0.08, 1.0)
INCEPTION_ASPECT_RATIO = (3 / 4, 4 / 3)
# The scales libjpeg decodes at without decoding whole (its DCT scaling).
JPEG_DCT_RATIOS = (1, 2, 4, 8)


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
    """`num` independent stateless seeds from one, shape [num, 2]."""
    return tf.random.experimental.stateless_split(seed, num=num)


def rescale_smallest_side(image: tf.Tensor, size) -> tf.Tensor:
    """Isotropic rescale so the smaller side is `size` (the paper's S for training, Q for test)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    # The rounding must not leave the smaller side one pixel short of `size`.
    new_shape = tf.maximum(new_shape, tf.cast(size, tf.int32))
    return tf.image.resize(image, new_shape, antialias=True)


def _contains_near_end(encoded: tf.Tensor, marker: bytes) -> tf.Tensor:
    length = tf.strings.length(encoded)
    search = tf.minimum(length, END_MARKER_SEARCH_BYTES)
    tail = tf.io.decode_raw(tf.strings.substr(encoded, length - search, search), tf.uint8)
    positions = tf.maximum(tf.shape(tail)[0] - len(marker) + 1, 0)
    found = tf.ones([positions], tf.bool)
    for offset, byte in enumerate(marker):
        found &= tail[offset : offset + positions] == byte
    return tf.reduce_any(found)


def is_well_formed(encoded: tf.Tensor) -> tf.Tensor:
    """True for a JPEG or PNG file that starts and ends as one should.

    Catches truncated downloads and files that are not images before the decoder sees them,
    so the pipeline can skip them instead of failing mid-epoch.
    """
    start = tf.strings.substr(encoded, 0, len(PNG_START))
    is_jpeg = tf.strings.substr(encoded, 0, len(JPEG_START)) == JPEG_START
    is_png = start == PNG_START
    return tf.cond(
        is_jpeg,
        lambda: _contains_near_end(encoded, JPEG_END),
        lambda: tf.logical_and(is_png, _contains_near_end(encoded, PNG_END)),
    )


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """A JPEG or PNG as uint8 RGB: grayscale is repeated over 3 channels, alpha dropped."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_window(encoded: tf.Tensor, window_fn, target: int | None = None) -> tf.Tensor:
    """Decodes only the window [top, left, height, width] that window_fn(image_size) picks.

    JPEGs are decoded and cropped in one op (their size is read from the header); PNGs must be
    decoded whole first. With `target`, the side the window is resized to next, a JPEG window
    at least twice that is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, which
    skips most of the inverse transform's work), never below `target`.
    """

    def from_jpeg():
        size = tf.image.extract_jpeg_shape(encoded)[:2]
        window = window_fn(size)

        def decode_at(ratio: int):
            # With a ratio, the window is given in the scaled image's pixels.
            scaled = tf.concat([window[:2] // ratio, tf.maximum(window[2:] // ratio, 1)], 0)
            return lambda: tf.image.decode_and_crop_jpeg(encoded, scaled, channels=3, ratio=ratio)

        if target is None:
            return decode_at(1)()
        # The largest ratio that leaves the window's smaller side at least `target`.
        fits = tf.reduce_min(window[2:]) >= tf.constant(JPEG_DCT_RATIOS[1:]) * target
        return tf.switch_case(
            tf.reduce_sum(tf.cast(fits, tf.int32)), [decode_at(r) for r in JPEG_DCT_RATIOS]
        )

    def from_other():
        image = decode_rgb(encoded)
        window = window_fn(tf.shape(image)[:2])
        return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

    image = tf.cond(tf.image.is_jpeg(encoded), from_jpeg, from_other)
    image.set_shape([None, None, 3])
    return image


def scale_jitter_window(size, seed, crop: int, scale: tuple[int, int] | None) -> tf.Tensor:
    """The paper's training crop, located in the original image: rescaling the smaller side to
    S ~ U{S_min..S_max} and cutting a random crop x crop square there is cutting a random
    (crop * side / S)-pixel square here and resizing it to crop x crop. scale=None: S = side."""
    size_seed, top_seed, left_seed = tf.unstack(split_seed(seed, 3))
    side = tf.reduce_min(size)
    if scale is None:
        window = tf.minimum(tf.cast(crop, tf.int32), side)
    else:
        target = tf.random.stateless_uniform(
            [], size_seed, minval=scale[0], maxval=scale[1] + 1, dtype=tf.int32
        )
        window = tf.cast(
            tf.round(crop * tf.cast(side, tf.float32) / tf.cast(target, tf.float32)), tf.int32
        )
        window = tf.clip_by_value(window, 1, side)
    top = tf.random.stateless_uniform([], top_seed, 0, size[0] - window + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], left_seed, 0, size[1] - window + 1, dtype=tf.int32)
    return tf.stack([top, left, window, window])


def inception_window(size, seed) -> tf.Tensor:
    """A random-resized crop: 8%-100% of the area, aspect ratio 3/4-4/3 (whole image if no
    draw fits in 10 attempts)."""
    begin, window, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([size, [3]], 0),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=INCEPTION_ASPECT_RATIO,
        area_range=INCEPTION_AREA,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], window[0], window[1]])


def center_window(size, crop: int, scale: int | None) -> tf.Tensor:
    """The centre crop x crop square of the image rescaled to smaller side `scale`, located in
    the original image."""
    side = tf.cast(tf.reduce_min(size), tf.float32)
    window = crop if scale is None else tf.round(crop * side / scale)
    window = tf.clip_by_value(tf.cast(window, tf.int32), 1, tf.reduce_min(size))
    return tf.stack([(size[0] - window) // 2, (size[1] - window) // 2, window, window])


def random_flip(image: tf.Tensor, seed) -> tf.Tensor:
    """Horizontal flip with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def pca_lighting_shift(seed, sigma: float = 0.1) -> tf.Tensor:
    """AlexNet's colour augmentation: the RGB shift sum_i alpha_i * lambda_i * p_i added to
    every pixel of one image, alpha_i ~ N(0, sigma^2) (0-255 scale). The shift travels with the
    uint8 image and is added on the accelerator (vgg_jax.data.normalization.normalize)."""
    alpha = tf.random.stateless_normal([3], seed, stddev=sigma)
    eigenvectors = tf.constant(IMAGENET_PCA_EIGENVECTORS, tf.float32)  # columns are the p_i
    return 255.0 * tf.linalg.matvec(eigenvectors, alpha * tf.constant(IMAGENET_PCA_EIGENVALUES))


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """A resized image rounded back to pixels: a quarter of float32's bytes to batch, copy and
    send. No clipping: bilinear and triangle-filter resizes of uint8 stay within 0-255."""
    return tf.cast(tf.round(image), tf.uint8)


@dataclasses.dataclass(frozen=True)
class TrainAugmentation:
    """The paper's training preprocessing, each step optional (Section 3.1): rescale the
    smaller side to S drawn from `scale` = (S_min, S_max) (S_min == S_max: fixed S) and cut one
    random `crop` x `crop` square, or with `inception_crop` a random-resized crop instead; a
    random horizontal flip; PCA lighting noise."""

    scale: tuple[int, int] | None = None
    crop: int | None = None
    flip: bool = False
    pca_sigma: float = 0.0
    inception_crop: bool = False

    def __post_init__(self):
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (S_min, S_max) with 0 < S_min <= S_max: {self.scale}")
        if self.scale is not None and self.crop and self.crop > self.scale[0]:
            raise ValueError(f"A {self.crop}-pixel crop needs S_min >= {self.crop}: {self.scale}")
        if self.inception_crop and (not self.crop or self.scale is not None):
            raise ValueError(
                "inception_crop replaces scale jittering: give crop (e.g. 224) and no scale."
            )

    def __call__(self, encoded: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """JPEG/PNG bytes -> (uint8 RGB image, its float32 RGB lighting shift)."""
        window_seed, flip_seed, pca_seed = tf.unstack(split_seed(seed, 3))
        if self.inception_crop:
            image = decode_window(
                encoded, lambda size: inception_window(size, window_seed), target=self.crop
            )
        elif self.crop:
            image = decode_window(
                encoded,
                lambda size: scale_jitter_window(size, window_seed, self.crop, self.scale),
                target=self.crop,
            )
        else:
            image = decode_rgb(encoded)
        if self.crop:
            # Plain bilinear: antialiasing made the whole pipeline 2x slower per core, and a
            # training crop is rarely shrunk more than 2x (S >= 256 for a 224 crop).
            image = to_uint8(tf.image.resize(image, [self.crop, self.crop]))
        elif self.scale is not None:
            size = tf.random.stateless_uniform(
                [], window_seed, minval=self.scale[0], maxval=self.scale[1] + 1, dtype=tf.int32
            )
            image = to_uint8(rescale_smallest_side(image, size))
        if self.flip:
            image = random_flip(image, flip_seed)  # on uint8: a quarter of the bytes to move
        if self.pca_sigma:
            lighting = pca_lighting_shift(pca_seed, self.pca_sigma)
        else:
            lighting = tf.zeros([3], tf.float32)
        return image, lighting


@dataclasses.dataclass(frozen=True)
class EvalPreprocessing:
    """Test-time preprocessing (Section 3.2): smaller side to Q (`scale`), then a centre
    `crop`; without a crop the whole rescaled image (dense evaluation)."""

    scale: int | None = None
    crop: int | None = None

    def __call__(self, encoded: tf.Tensor) -> tf.Tensor:
        """JPEG/PNG bytes -> uint8 RGB."""
        if self.crop:
            image = decode_window(
                encoded, lambda size: center_window(size, self.crop, self.scale), target=self.crop
            )
            image = tf.image.resize(image, [self.crop, self.crop], antialias=True)
            return to_uint8(image)
        image = decode_rgb(encoded)
        return to_uint8(rescale_smallest_side(image, self.scale)) if self.scale else image
