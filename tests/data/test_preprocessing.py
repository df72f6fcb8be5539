"""The paper's preprocessing ops, checked statistically with fixed seeds."""

import numpy as np
import tensorflow as tf

from vgg_jax.data import normalization
from vgg_jax.data import preprocessing as pp

# torchvision's ImageNet mean and standard deviation (0-1 scale: 0.485, 0.456, 0.406 and
# 0.229, 0.224, 0.225) on the 0-255 scale, written out rather than read from the module.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def seeds(count, base=0):
    return [tf.constant([base, i], tf.int32) for i in range(count)]


def test_rescale_smallest_side_is_isotropic():
    image = tf.zeros((300, 500, 3), tf.uint8)
    assert tuple(pp.rescale_smallest_side(image, 256).shape) == (256, 427, 3)
    assert tuple(pp.rescale_smallest_side(tf.zeros((640, 480, 3)), 384).shape) == (512, 384, 3)


def encoded_photo(height=375, width=500, channels=3, png=False, seed=(1, 2)):
    """A smooth random image (so JPEG keeps it well), encoded."""
    small = tf.random.stateless_uniform((height // 25 + 1, width // 25 + 1, channels), seed)
    image = tf.cast(tf.image.resize(small * 255, (height, width)), tf.uint8)
    return (tf.io.encode_png if png else tf.io.encode_jpeg)(image), image


def test_scale_jittering_covers_the_range_and_crops_are_224():
    """The window located in a 375x500 original is the crop of the image rescaled to S: its
    implied S = 224 * 375 / window covers [256, 512] uniformly."""
    implied_s, offsets = [], set()
    for seed in seeds(300):
        top, left, height, width = pp.scale_jitter_window([375, 500], seed, 224, (256, 512)).numpy()
        assert height == width and 0 <= top <= 375 - height and 0 <= left <= 500 - width
        implied_s.append(224 * 375 / height)
        offsets.add((top, left))
    assert 256 <= min(implied_s) < 262 and 506 < max(implied_s) <= 513
    assert 0.4 < np.mean(np.array(implied_s) < 384) < 0.6  # about uniform
    assert len(offsets) > 250
    encoded, _ = encoded_photo()
    augmentation = pp.TrainAugmentation(scale=(256, 512), crop=224, flip=True, pca_sigma=0.1)
    crops = [augmentation(encoded, seed)[0] for seed in seeds(5)]
    assert all(tuple(crop.shape) == (224, 224, 3) and crop.dtype == tf.uint8 for crop in crops)
    assert len({float(tf.reduce_sum(crop)) for crop in crops}) == 5


def test_fixed_scale_crop_is_the_crop_of_the_rescaled_image():
    """With S fixed at 256, cropping the window and resizing it equals rescaling to 256 then
    cropping, up to resampling at the window's edges."""
    encoded, image = encoded_photo(png=True)
    seed = tf.constant([4, 5])
    window_seed = pp.split_seed(seed, 3)[0]  # the draw TrainAugmentation makes first
    top, left, _, _ = pp.scale_jitter_window([375, 500], window_seed, 224, (256, 256)).numpy()
    ours, _ = pp.TrainAugmentation(scale=(256, 256), crop=224)(encoded, seed)
    ours = tf.cast(ours, tf.float32)
    scaled = pp.rescale_smallest_side(image, 256)
    factor = 256 / 375
    row, col = round(top * factor), round(left * factor)
    reference = scaled[row : row + 224, col : col + 224]
    assert float(tf.reduce_mean(tf.abs(ours[8:-8, 8:-8] - reference[8:-8, 8:-8]))) < 2.0


def traced_op_types(function, *specs) -> set[str]:
    """Every op type in `function`'s traced graph, those inside tf.cond branches included."""
    graph = tf.function(function).get_concrete_function(*specs).graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return {node.op for node in nodes}


def test_jpeg_window_decodes_only_the_window_and_matches_a_full_decode():
    window = tf.constant([50, 70, 200, 180])
    ops = traced_op_types(
        lambda encoded: pp.decode_window(encoded, lambda size: window), tf.TensorSpec([], tf.string)
    )
    # JPEGs go through the fused decode-and-crop op; no whole-image JPEG decode (the PNG
    # branch decodes whole, as it must, through DecodeImage).
    assert "DecodeAndCropJpeg" in ops and "DecodeJpeg" not in ops, sorted(ops)
    encoded, _ = encoded_photo()
    cropped = pp.decode_window(encoded, lambda size: window)
    assert tuple(cropped.shape) == (200, 180, 3)
    full = tf.io.decode_jpeg(encoded)[50:250, 70:250]
    difference = np.abs(cropped.numpy().astype(int) - full.numpy().astype(int))
    # Identical but for chroma upsampling along the window's edges.
    assert difference.mean() < 0.1 and difference[2:-2, 2:-2].max() <= 1 and difference.max() <= 8


def test_a_large_jpeg_window_is_decoded_smaller_in_the_dct_domain_never_below_the_target():
    encoded, image = encoded_photo(height=1200, width=1800)
    full = tf.cast(image, tf.float32)
    # A 900-pixel window resized to 224 next decodes at 1/4 (225 pixels), like the whole
    # image decoded, cut and shrunk with antialiasing; a 300-pixel one (under 2 x 224) whole.
    for window, side in (([100, 200, 900, 900], 225), ([10, 20, 300, 300], 300)):
        decoded = pp.decode_window(encoded, lambda size, w=window: tf.constant(w), target=224)
        assert tuple(decoded.shape) == (side, side, 3)
        top, left, height, width = window
        reference = tf.image.resize(full[top : top + height, left : left + width], (side, side),
                                    antialias=True)  # fmt: skip
        difference = np.abs(decoded.numpy() - reference.numpy())
        assert difference.mean() < 2.0, difference.mean()  # 1.35 and 0.01 when measured
    ops = traced_op_types(
        lambda encoded: pp.decode_window(encoded, lambda size: tf.constant([0, 0, 900, 900]), 224),
        tf.TensorSpec([], tf.string),
    )
    assert "DecodeAndCropJpeg" in ops and "DecodeJpeg" not in ops, sorted(ops)
    # The training crop of a large photo is still 224 and its window still the drawn one.
    augmentation = pp.TrainAugmentation(scale=(256, 512), crop=224)
    crop, _ = augmentation(encoded, tf.constant([3, 4]))
    assert tuple(crop.shape) == (224, 224, 3)


def test_inception_crop_area_and_aspect_ratio():
    fractions, ratios = [], []
    for seed in seeds(300):
        top, left, height, width = pp.inception_window(tf.constant([375, 500]), seed).numpy()
        assert 0 <= top <= 375 - height and 0 <= left <= 500 - width
        fractions.append(height * width / (375 * 500))
        ratios.append(width / height)
    assert min(fractions) >= 0.07 and max(fractions) <= 1.0 and np.median(fractions) < 0.7
    assert min(ratios) > 0.74 and max(ratios) < 1.35
    encoded, _ = encoded_photo()
    crop, _ = pp.TrainAugmentation(crop=224, inception_crop=True)(encoded, tf.constant([1, 1]))
    assert tuple(crop.shape) == (224, 224, 3)


def test_grayscale_and_rgba_images_become_rgb():
    gray, gray_image = encoded_photo(channels=1, png=True)
    rgba, rgba_image = encoded_photo(channels=4, png=True)
    np.testing.assert_array_equal(pp.decode_rgb(gray), tf.repeat(gray_image, 3, axis=-1))
    np.testing.assert_array_equal(pp.decode_rgb(rgba), rgba_image[..., :3])
    jpeg_gray, _ = encoded_photo(channels=1)
    assert tuple(pp.EvalPreprocessing(scale=256, crop=224)(jpeg_gray).shape) == (224, 224, 3)


def test_malformed_files_are_recognised():
    jpeg, _ = encoded_photo()
    png, _ = encoded_photo(png=True)
    assert bool(pp.is_well_formed(jpeg)) and bool(pp.is_well_formed(png))
    assert bool(pp.is_well_formed(tf.strings.join([jpeg, tf.constant(b"\0" * 100)])))
    for bad in (
        tf.strings.substr(jpeg, 0, 2000),  # a truncated download
        tf.strings.substr(png, 0, 2000),
        tf.constant(b"<html>404 Not Found</html>"),
        tf.constant(b""),
    ):
        assert not bool(pp.is_well_formed(bad))


def test_flips_happen_about_half_the_time():
    image = tf.reshape(tf.range(2 * 3 * 3, dtype=tf.float32), (2, 3, 3))
    flipped = [
        bool(tf.reduce_all(pp.random_flip(image, seed) == image[:, ::-1])) for seed in seeds(400)
    ]
    assert 0.42 < np.mean(flipped) < 0.58


def test_pca_lighting_noise_has_alexnet_covariance():
    shifts = np.stack([pp.pca_lighting_shift(seed, sigma=0.1).numpy() for seed in seeds(3000)])
    # AlexNet's published components (as fb.resnet.torch lists them), not the module's copy.
    values = np.array([0.2175, 0.0188, 0.0045])
    vectors = np.array(
        [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
    )
    expected = 255.0**2 * 0.1**2 * vectors @ np.diag(values**2) @ vectors.T
    measured = np.cov(shifts, rowvar=False)
    assert np.linalg.norm(measured - expected) < 0.1 * np.linalg.norm(expected)
    # Along each principal component on its own (the small ones vanish in the norm above):
    # its spread is 255 * sigma * eigenvalue, each within 6% (3,000 draws: ~1.3% noise).
    spreads = (shifts @ vectors).std(axis=0)
    np.testing.assert_allclose(spreads, 255 * 0.1 * values, rtol=0.06)
    np.testing.assert_allclose(shifts.mean(axis=0), 0.0, atol=0.1 * np.sqrt(expected[0, 0]))
    # The same seed gives the same shift; the augmentation returns it beside the image.
    seed = tf.constant([7, 7])
    np.testing.assert_array_equal(pp.pca_lighting_shift(seed), pp.pca_lighting_shift(seed))
    encoded, _ = encoded_photo(64, 64, png=True)
    image, shift = pp.TrainAugmentation(crop=48, pca_sigma=0.1)(encoded, seed)
    assert image.dtype == tf.uint8 and tuple(image.shape) == (48, 48, 3)
    np.testing.assert_array_equal(shift, pp.pca_lighting_shift(pp.split_seed(seed, 3)[2]))
    # On the device, the shift is added to every pixel before normalising.
    pixels = np.full((1, 2, 2, 3), 100, np.uint8)
    lit = normalization.normalize(pixels, shift.numpy()[None])
    np.testing.assert_allclose(
        lit[0, 1, 1], (100 + shift.numpy() - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-5
    )


def test_center_crop_and_normalize():
    top, left, height, width = pp.center_window(tf.constant([375, 500]), 224, 256).numpy()
    assert height == width == round(224 * 375 / 256)
    assert (top, left) == ((375 - height) // 2, (500 - width) // 2)
    encoded, image = encoded_photo(32, 40, png=True)
    centre = pp.EvalPreprocessing(crop=32)(encoded)  # no rescale: exactly the centre pixels
    np.testing.assert_array_equal(centre, image[:, 4:36])
    pixel = np.array([[IMAGENET_MEAN]], np.float32)
    np.testing.assert_allclose(normalization.normalize(pixel), 0.0, atol=1e-5)
    above = pixel + np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(normalization.normalize(above), 1.0, rtol=1e-5)
    black = normalization.normalize(np.zeros((1, 1, 1, 3), np.uint8))[0, 0, 0]
    np.testing.assert_allclose(black, [-2.1179, -2.0357, -1.8044], atol=1e-4)  # torchvision's
    # One normalisation: uint8 batches and 0-255 float images give the same model input.
    batch = {"image": np.full((1, 2, 2, 3), 124, np.uint8)}
    np.testing.assert_allclose(
        normalization.model_input(batch), normalization.normalize(batch["image"])
    )
    floats = {"image": np.full((1, 2, 2, 3), 124.0, np.float32)}
    np.testing.assert_array_equal(
        normalization.model_input(floats), normalization.model_input(batch)
    )


def test_the_model_input_carries_each_images_pca_shift():
    """model_input (what the train step feeds the model) adds each image's own shift before
    normalising, by hand: (pixel + shift - mean) / deviation."""
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    shifts = np.array([[10.0, -20.0, 5.0], [-7.5, 3.0, 12.0]], np.float32)
    got = normalization.model_input({"image": images, "label": np.zeros(2), "lighting": shifts})
    expected = (images + shifts[:, None, None, :] - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def high_frequency_image(height, width, seed=0):
    """Independent random pixels: every resize filter shows on them."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_test_time_rescaling_is_antialiased_like_tf_image_resize():
    """Q = 32 on a 64x80 noise image: rescale_smallest_side is tf.image.resize(antialias=True)
    to 32x40; EvalPreprocessing's centre crop of 24 (decoded and resized as a 48-pixel window
    of the original) is that image's centre crop, away from the window's edge, within a grey
    level. Plain bilinear differs by tens of grey levels on such an image."""
    image = high_frequency_image(64, 80)
    reference = tf.image.resize(image, (32, 40), antialias=True).numpy()
    rescaled = pp.rescale_smallest_side(tf.constant(image), 32).numpy()
    assert rescaled.shape == (32, 40, 3)
    np.testing.assert_allclose(rescaled, reference, atol=1e-3)
    bilinear = tf.image.resize(image, (32, 40)).numpy()
    assert np.abs(bilinear - reference).mean() > 10

    crop = pp.EvalPreprocessing(scale=32, crop=24)(tf.io.encode_png(image)).numpy()
    expected = np.round(reference[4:28, 8:32])  # the centre 24x24 of 32x40
    difference = np.abs(crop.astype(np.float64) - expected)
    assert difference[1:-1, 1:-1].max() <= 1, difference[1:-1, 1:-1].max()
    assert difference.mean() < 1.0, difference.mean()  # 0.75 measured: the edge rows and columns


def test_caffe_weights_subtract_the_papers_mean_pixel_in_rgb_order():
    """Keras lists the Caffe mean pixel as BGR (103.939, 116.779, 123.68): red is 123.68."""
    black = normalization.CAFFE_NORMALIZATION(np.zeros((1, 1, 1, 3), np.uint8))[0, 0, 0]
    np.testing.assert_allclose(black, [-123.68, -116.779, -103.939], rtol=1e-6)


def test_scale_jittering_draws_every_s_from_s_min_to_s_max():
    """On a side of 224 * 512 pixels the window is 512 * 224 / S: each S shows exactly. 3,000
    draws of S in [256, 512] (257 values) meet every one, the ends included."""
    side = 224 * 512
    draws = tf.stack([tf.fill([3000], 9), tf.range(3000)], axis=1)

    @tf.function
    def windows(draws):
        def window(seed):
            return pp.scale_jitter_window([side, side], seed, 224, (256, 512))

        return tf.map_fn(window, draws, fn_output_signature=tf.int32)

    implied = {round(224 * side / int(w)) for w in windows(draws)[:, 2].numpy()}
    assert implied == set(range(256, 513))
