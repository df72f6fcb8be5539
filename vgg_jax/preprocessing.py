"""The paper's image preprocessing as small composable tf.data ops (Section 3.1 and 3.2).

Each op maps one image to one image. Random ops take a stateless seed (an int32 tensor of
shape [2]), so the same seed always gives the same image: a pipeline that derives seeds from
(run seed, epoch, example) is reproducible and resumable. Images are float32 on the 0-255 scale
until `normalize`.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

# ImageNet's mean and standard deviation per RGB channel, on the 0-255 scale.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# AlexNet's "fancy PCA" lighting noise: the principal components of ImageNet's RGB pixel values
# (on the 0-1 scale), as fb.resnet.torch and most reimplementations use them.
IMAGENET_PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


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
    return tf.image.resize(tf.cast(image, tf.float32), new_shape, antialias=True)


def random_smallest_side(image: tf.Tensor, seed, min_size: int, max_size: int) -> tf.Tensor:
    """Scale jittering: the smaller side becomes S, drawn uniformly from [min_size, max_size]."""
    size = tf.random.stateless_uniform(
        [], seed, minval=min_size, maxval=max_size + 1, dtype=tf.int32
    )
    return rescale_smallest_side(image, size)


def random_crop(image: tf.Tensor, seed, size: int) -> tf.Tensor:
    """One size x size crop at a uniformly random position."""
    return tf.image.stateless_random_crop(image, [size, size, tf.shape(image)[-1]], seed)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def random_flip(image: tf.Tensor, seed) -> tf.Tensor:
    """Horizontal flip with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def pca_lighting(image: tf.Tensor, seed, sigma: float = 0.1) -> tf.Tensor:
    """AlexNet's colour augmentation: add sum_i alpha_i * lambda_i * p_i to every pixel, with
    alpha_i ~ N(0, sigma^2) drawn once per image (the pixel scale is 0-255)."""
    alpha = tf.random.stateless_normal([3], seed, stddev=sigma)
    eigenvectors = tf.constant(IMAGENET_PCA_EIGENVECTORS, tf.float32)  # columns are the p_i
    shift = tf.linalg.matvec(eigenvectors, alpha * tf.constant(IMAGENET_PCA_EIGENVALUES))
    return image + 255.0 * shift


def normalize(image: tf.Tensor, mean=MEAN_RGB, stddev=STDDEV_RGB) -> tf.Tensor:
    """Subtracts the mean RGB (the paper's only normalisation) and divides by the deviation."""
    return (tf.cast(image, tf.float32) - tf.constant(mean)) / tf.constant(stddev)


@dataclasses.dataclass(frozen=True)
class TrainAugmentation:
    """The paper's training preprocessing, each step optional (Section 3.1):
    rescale the smaller side to S drawn from `scale` = (S_min, S_max) (S_min == S_max: fixed
    S), one random `crop` x `crop` crop, a random horizontal flip, PCA lighting noise."""

    scale: tuple[int, int] | None = None
    crop: int | None = None
    flip: bool = False
    pca_sigma: float = 0.0

    def __post_init__(self):
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (S_min, S_max) with 0 < S_min <= S_max: {self.scale}")
        if self.scale is not None and self.crop and self.crop > self.scale[0]:
            raise ValueError(f"A {self.crop}-pixel crop needs S_min >= {self.crop}: {self.scale}")

    def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """uint8 or float image -> float32, 0-255 scale, not yet normalised."""
        scale_seed, crop_seed, flip_seed, pca_seed = tf.unstack(split_seed(seed, 4))
        image = tf.cast(image, tf.float32)
        if self.scale is not None:
            image = random_smallest_side(image, scale_seed, *self.scale)
        if self.crop:
            image = random_crop(image, crop_seed, self.crop)
        if self.flip:
            image = random_flip(image, flip_seed)
        if self.pca_sigma:
            image = pca_lighting(image, pca_seed, self.pca_sigma)
        return image


@dataclasses.dataclass(frozen=True)
class EvalPreprocessing:
    """Test-time preprocessing (Section 3.2): smaller side to Q, then a centre crop."""

    scale: int | None = None
    crop: int | None = None

    def __call__(self, image: tf.Tensor) -> tf.Tensor:
        image = tf.cast(image, tf.float32)
        if self.scale:
            image = rescale_smallest_side(image, self.scale)
        if self.crop:
            image = center_crop(image, self.crop)
        return image
