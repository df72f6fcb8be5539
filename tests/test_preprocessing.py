"""The paper's preprocessing ops, checked statistically with fixed seeds."""

import numpy as np
import tensorflow as tf

from vgg_jax import preprocessing as pp


def seeds(count, base=0):
    return [tf.constant([base, i], tf.int32) for i in range(count)]


def test_rescale_smallest_side_is_isotropic():
    image = tf.zeros((300, 500, 3), tf.uint8)
    assert tuple(pp.rescale_smallest_side(image, 256).shape) == (256, 427, 3)
    assert tuple(pp.rescale_smallest_side(tf.zeros((640, 480, 3)), 384).shape) == (512, 384, 3)


def test_scale_jittering_covers_the_range_and_crops_are_224():
    image = tf.random.stateless_uniform((60, 80, 3), [1, 2], maxval=255.0)
    sides, crops = [], set()
    for seed in seeds(150):
        jitter_seed, crop_seed = pp.split_seed(seed, 2)
        scaled = pp.random_smallest_side(image, jitter_seed, 256, 512)
        sides.append(min(scaled.shape[:2]))
        crop = pp.random_crop(scaled, crop_seed, 224)
        assert tuple(crop.shape) == (224, 224, 3)
        crops.add(float(tf.reduce_sum(crop)))
    assert 256 <= min(sides) < 270 and 498 < max(sides) <= 512
    # Roughly uniform: about half the draws in each half of the range.
    assert 0.35 < np.mean(np.array(sides) < 384) < 0.65
    assert len(crops) > 140  # crops differ from draw to draw


def test_flips_happen_about_half_the_time():
    image = tf.reshape(tf.range(2 * 3 * 3, dtype=tf.float32), (2, 3, 3))
    flipped = [
        bool(tf.reduce_all(pp.random_flip(image, seed) == image[:, ::-1])) for seed in seeds(400)
    ]
    assert 0.42 < np.mean(flipped) < 0.58


def test_pca_lighting_noise_has_alexnet_covariance():
    shifts = np.stack(
        [
            pp.pca_lighting(tf.zeros((1, 1, 3)), seed, sigma=0.1).numpy()[0, 0]
            for seed in seeds(3000)
        ]
    )
    vectors = np.array(pp.IMAGENET_PCA_EIGENVECTORS)
    values = np.array(pp.IMAGENET_PCA_EIGENVALUES)
    expected = 255.0**2 * 0.1**2 * vectors @ np.diag(values**2) @ vectors.T
    measured = np.cov(shifts, rowvar=False)
    assert np.linalg.norm(measured - expected) < 0.1 * np.linalg.norm(expected)
    np.testing.assert_allclose(shifts.mean(axis=0), 0.0, atol=0.1 * np.sqrt(expected[0, 0]))
    # The same seed gives the same shift.
    seed = tf.constant([7, 7])
    np.testing.assert_array_equal(
        pp.pca_lighting(tf.zeros((1, 1, 3)), seed), pp.pca_lighting(tf.zeros((1, 1, 3)), seed)
    )


def test_center_crop_and_normalize():
    image = tf.reshape(tf.range(6 * 8, dtype=tf.float32), (6, 8, 1))
    np.testing.assert_array_equal(pp.center_crop(image, 4)[..., 0], image[1:5, 2:6, 0])
    pixel = tf.constant([[list(pp.MEAN_RGB)]])
    np.testing.assert_allclose(pp.normalize(pixel), 0.0, atol=1e-6)
    np.testing.assert_allclose(pp.normalize(pixel + tf.constant(pp.STDDEV_RGB)), 1.0, rtol=1e-6)
