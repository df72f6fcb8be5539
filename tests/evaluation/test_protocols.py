"""The paper's test protocols on real forward passes of small models
(vgg_jax.evaluation.protocols), and
the shape-bucketed test data (vgg_jax.data.evaluation_data)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from helpers import images, init, relative_error

import vgg_jax
from vgg_jax.data import sources
from vgg_jax.data.evaluation_data import rescaled_batches, rescaled_image, trim_to_bucket
from vgg_jax.data.pipeline import encoded_examples
from vgg_jax.evaluation import protocols
from vgg_jax.training.metrics import top_k_errors


def small_model(size, seed=0):
    """VGG-A, 1/16 width, 7 classes, Glorot init (posteriors far from uniform); FC6's window
    fixed by `size` (224: 7x7, 32: 1x1)."""
    model = vgg_jax.vgg11(
        num_classes=7, width=1 / 16, fc_features=16, dropout_rate=0.0, init_scheme="glorot"
    )
    return model, init(model, jnp.zeros((1, size, size, 3)), seed)


def test_dense_evaluation_at_224_without_flip_equals_the_centre_crop_logits():
    model, variables = small_model(224)
    x = images((2, 224, 224, 3), seed=1)
    assert protocols.crop_size(model, variables) == 224
    classic = model.apply(variables, x)
    dense = model.apply(variables, x, dense=True)
    assert relative_error(dense, classic) < 1e-5
    by_protocol = protocols.dense_posteriors(model, variables, x, flip=False)
    centre = protocols.center_posteriors(model, variables, x, crop=224)
    np.testing.assert_allclose(by_protocol, centre, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(centre, jax.nn.softmax(classic), rtol=1e-5, atol=1e-7)


def test_dense_evaluation_averages_the_image_and_its_mirror():
    model, variables = small_model(32)
    x = images((3, 64, 96, 3), seed=2)
    expected = (
        jax.nn.softmax(model.apply(variables, x, dense=True))
        + jax.nn.softmax(model.apply(variables, x[:, :, ::-1], dense=True))
    ) / 2
    got = protocols.dense_posteriors(model, variables, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    unflipped = protocols.dense_posteriors(model, variables, x, flip=False)
    assert np.max(np.abs(got - unflipped)) > 1e-5  # float32 rounding is ~1e-7


def test_grid_offsets_include_both_edges_and_the_centre():
    assert protocols.grid_offsets(256, 224) == (0, 8, 16, 24, 32)
    assert protocols.grid_offsets(384, 224) == (0, 40, 80, 120, 160)
    assert protocols.grid_offsets(224, 224) == (0,) * 5
    with pytest.raises(ValueError, match="does not fit"):
        protocols.grid_offsets(200, 224)


def test_multi_crop_takes_50_views_per_scale_at_the_grid_offsets():
    x = images((2, 64, 96, 3), seed=3)
    views = protocols.multi_crops(x, crop=32)
    assert views.shape == (2, 50, 32, 32, 3)
    rows, cols = protocols.grid_offsets(64, 32), protocols.grid_offsets(96, 32)
    assert rows == (0, 8, 16, 24, 32) and cols == (0, 16, 32, 48, 64)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            crop = x[:, top : top + 32, left : left + 32]
            np.testing.assert_array_equal(views[:, 5 * i + j], crop)
            np.testing.assert_array_equal(views[:, 25 + 5 * i + j], crop[:, :, ::-1])
    np.testing.assert_array_equal(views[:, 0], x[:, :32, :32])  # top-left corner
    np.testing.assert_array_equal(views[:, 24], x[:, 32:, 64:])  # bottom-right corner
    np.testing.assert_array_equal(views[:, 12], protocols.center_crop(x, 32))  # the centre


def test_multi_crop_posteriors_are_the_mean_softmax_of_the_50_views():
    model, variables = small_model(32)
    x = images((2, 64, 96, 3), seed=4)
    views = protocols.multi_crops(x, crop=32).reshape(100, 32, 32, 3)
    expected = jax.nn.softmax(model.apply(variables, views)).reshape(2, 50, 7).mean(axis=1)
    got = jax.jit(lambda v, x: protocols.multi_crop_posteriors(model, v, x, crop=32))(variables, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.sum(got, axis=1), 1.0, rtol=1e-5)


def test_dense_plus_multi_crop_is_the_mean_of_the_two():
    model, variables = small_model(32)
    x = images((2, 64, 64, 3), seed=5)
    out = protocols.protocol_posteriors(model, variables, x, protocols.PROTOCOLS, crop=32)
    assert set(out) == set(protocols.PROTOCOLS)
    np.testing.assert_allclose(
        out["dense+multi_crop"], (out["dense"] + out["multi_crop"]) / 2, rtol=1e-6
    )
    with pytest.raises(ValueError, match="Unknown protocol"):
        protocols.check_protocols(["dense", "ten_crop"])


def test_top_k_errors_count_a_tie_in_the_labels_favour():
    posteriors = np.array([[0.5, 0.3, 0.2], [0.2, 0.4, 0.4], [0.1, 0.3, 0.6]])
    labels = np.array([0, 2, 1])
    errors = top_k_errors(posteriors, labels, ks=(1, 2, 5))
    assert errors == {1: pytest.approx(100 / 3), 2: 0.0, 5: 0.0}


def _jpeg(height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def test_rescaling_keeps_q_and_trims_the_long_side_to_a_bucket_around_the_centre():
    image = tf.constant(np.arange(256 * 341 * 3, dtype=np.int32).reshape(256, 341, 3))
    trimmed = trim_to_bucket(image, 256).numpy()
    assert trimmed.shape == (256, 320, 3)  # 341 -> 256 + 2 * 32
    # The centre crop is unchanged by the trimming.
    np.testing.assert_array_equal(
        protocols.center_crop(trimmed[None], 224)[0], protocols.center_crop(image[None], 224)[0]
    )
    assert rescaled_image(tf.constant(_jpeg(300, 400)), 256).shape == (256, 320, 3)
    assert rescaled_image(tf.constant(_jpeg(400, 300)), 256).shape == (320, 256, 3)
    assert rescaled_image(tf.constant(_jpeg(50, 50)), 64).shape == (64, 64, 3)


def test_images_of_many_sizes_make_few_batch_shapes(tmp_path):
    """Twelve sizes, two batch shapes: the compilations do not grow with the data."""
    sizes = [(48, 60 + 6 * k) for k in range(12)]
    for i, (height, width) in enumerate(sizes):
        folder = tmp_path / "photos" / "test" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(_jpeg(height, width, seed=i))
    builder = sources.get_builder(str(tmp_path / "photos"))
    batches = list(rescaled_batches(builder, "test", scale=32, batch_size=4))
    shapes = {batch["image"].shape for batch in batches}
    # Smaller side 32; the longer one 40..60 -> 32 and 64..84 -> 64.
    assert shapes <= {(4, 32, 32, 3), (4, 32, 64, 3)}, shapes
    assert len(shapes) == 2
    indices = np.concatenate([b["index"][b["mask"] > 0] for b in batches])
    assert sorted(indices) == list(range(12))  # every example once
    model, variables = small_model(32)
    posteriors = jax.jit(
        lambda v, x: protocols.protocol_posteriors(model, v, x, ["dense", "center"], crop=32)
    )
    for batch in batches:
        posteriors(variables, batch["image"].astype(np.float32))
    assert posteriors._cache_size() == 2


def softmax(scores):
    scores = np.asarray(scores, np.float64)
    exp = np.exp(scores - scores.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def peaked(variables, factor=30.0):
    """The variables with FC8 scaled up: posteriors far from uniform, so that views differ."""
    fc8 = {**variables["params"]["fc8"], "kernel": factor * variables["params"]["fc8"]["kernel"]}
    return {"params": {**variables["params"], "fc8": fc8}}


def dense_scores_by_hand(variables, pool5):
    """The dense head written out: FC6 as a valid convolution with its 2x2 window, FC7 and
    FC8 at every position, the class-score map averaged (before the softmax, as the paper)."""
    params = {
        name: jax.tree.map(np.asarray, params) for name, params in variables["params"].items()
    }
    fc6, fc7, fc8 = params["fc6"], params["fc7"], params["fc8"]
    height, width = pool5.shape[1] - 1, pool5.shape[2] - 1  # a 2x2 window, stride 1
    scores = []
    for i in range(height):
        for j in range(width):
            window = pool5[:, i : i + 2, j : j + 2, :]
            hidden = np.einsum("nhwc,hwcf->nf", window, fc6["kernel"]) + fc6["bias"]
            hidden = np.maximum(np.maximum(hidden, 0) @ fc7["kernel"] + fc7["bias"], 0)
            scores.append(hidden @ fc8["kernel"] + fc8["bias"])
    return np.mean(scores, axis=0)


def test_each_protocol_equals_its_reference_computed_by_hand():
    """Every protocol through protocol_posteriors (what evaluate runs) on 82x98 images with a
    64-pixel crop, against crops cut by hand at offsets written out here (evenly spread,
    rounded to the nearest pixel), the classic model's softmax of each view, and the dense head
    by hand on the conv features."""
    model, variables = small_model(64, seed=3)
    variables = peaked(variables)
    x = np.asarray(images((2, 82, 98, 3), seed=6))
    out = jax.jit(
        lambda v, x: protocols.protocol_posteriors(model, v, x, protocols.PROTOCOLS, crop=64)
    )(variables, x)

    def posteriors(views):
        return softmax(model.apply(variables, np.ascontiguousarray(views)))

    centre = posteriors(x[:, 9:73, 17:81])
    np.testing.assert_allclose(out["center"], centre, rtol=1e-4, atol=1e-6)

    views = []
    for top in (0, 4, 9, 14, 18):  # 18 * k / 4, rounded (4.5 -> 4, 13.5 -> 14)
        for left in (0, 8, 17, 26, 34):  # 34 * k / 4, rounded (8.5 -> 8, 25.5 -> 26)
            crop = x[:, top : top + 64, left : left + 64]
            views += [posteriors(crop), posteriors(crop[:, :, ::-1])]  # and its mirror
    multi_crop = np.mean(views, axis=0)
    np.testing.assert_allclose(out["multi_crop"], multi_crop, rtol=1e-4, atol=1e-6)
    unmirrored = np.mean(views[::2], axis=0)
    assert np.abs(multi_crop - unmirrored).max() > 3e-3  # 50x the tolerance above

    def dense(images):
        pool5 = model.apply(variables, images, layers=["pool5"], method="extract_features")
        return softmax(dense_scores_by_hand(variables, np.asarray(pool5["pool5"], np.float64)))

    dense_posteriors = (dense(x) + dense(x[:, :, ::-1])) / 2
    np.testing.assert_allclose(out["dense"], dense_posteriors, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        out["dense+multi_crop"], (dense_posteriors + multi_crop) / 2, rtol=1e-4, atol=1e-6
    )
    # The references tell the protocols apart: each differs from the others.
    assert min(np.abs(a - b).max() for a, b in
               [(centre, multi_crop), (centre, dense_posteriors), (dense_posteriors, multi_crop)]
               ) > 1e-2  # fmt: skip


def test_multi_scale_posteriors_average_each_scales_by_hand(tmp_path):
    """evaluate at Q = 32 and 48 on square PNGs: each scale's centre posteriors are those of
    the image resized by tf.image.resize(antialias=True), rounded to pixels, centre-cropped
    and normalised here; the multi-scale posteriors are their mean."""
    from vgg_jax.data.normalization import normalize
    from vgg_jax.evaluation.on_dataset import evaluate
    from vgg_jax.evaluation.inference import Classifier

    model, variables = small_model(32, seed=4)
    variables = peaked(variables)
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    files = [tf.io.encode_png(image).numpy() for image in pixels]
    for i, encoded in enumerate(files):
        folder = tmp_path / "photos" / "test" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(encoded)
    classifier = Classifier(name="tiny", model=model, variables=variables, preprocess=normalize,
                            class_names=tuple("abcdefg"), dataset="photos", data_dir="",
                            eval_split="test", eval_scale=32)  # fmt: skip
    builder = sources.get_builder(str(tmp_path / "photos"))
    report = evaluate([classifier], builder, "test", ["center"], scales=[32, 48], batch_size=4,
                      progress=False, keep_posteriors=True)  # fmt: skip
    # Which of our images each row of the report is (its examples in the split's order).
    order = [
        files.index(e["image"]) for e in tfds.as_numpy(encoded_examples(builder, "test", False))
    ]
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    by_scale = {}
    for q in (32, 48):
        resized = np.round(tf.image.resize(pixels, (q, q), antialias=True).numpy())
        start = (q - 32) // 2
        crops = (resized[:, start : start + 32, start : start + 32] - mean) / std
        by_scale[q] = softmax(model.apply(variables, crops.astype(np.float32)))
        got = report["posteriors"]["tiny", "center", (q,)]
        np.testing.assert_allclose(got, by_scale[q][order], rtol=1e-4, atol=1e-6)
    both = report["posteriors"]["tiny", "center", (32, 48)]
    expected = (by_scale[32] + by_scale[48]) / 2
    np.testing.assert_allclose(both, expected[order], rtol=1e-4, atol=1e-6)
    assert np.abs(by_scale[32] - by_scale[48]).max() > 1e-2  # two different scales
