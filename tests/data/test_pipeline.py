"""The tf.data input on the embedded digits: augmentation, resumable order, evaluation, shards."""

import collections

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tfds_mocks import mocked_tfds

from vgg_jax.data import pipeline, sources
from vgg_jax.data.pipeline import AS_STORED, NO_AUGMENTATION
from vgg_jax.data.preprocessing import EvalPreprocessing, TrainAugmentation

AUGMENTATION = TrainAugmentation(scale=(36, 44), crop=32, flip=True, pca_sigma=0.1)


@pytest.fixture(scope="module")
def digits(digits_dir):
    return sources.get_builder("digits", digits_dir)


def test_augmented_batches_resume_exactly_and_change_every_epoch(digits):
    def epoch(number, skip=0):
        return list(
            pipeline.train_batches(
                digits, "train", 64, epoch=number, seed=3, skip_batches=skip,
                augmentation=AUGMENTATION,
            )
        )  # fmt: skip

    full = epoch(1)
    assert len(full) == 1438 // 64
    assert full[0]["image"].shape == (4, 16, 32, 32, 3) and full[0]["label"].shape == (4, 16)
    resumed = epoch(1, skip=5)
    assert len(resumed) == len(full) - 5
    for a, b in zip(full[5:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    again = epoch(1)
    np.testing.assert_array_equal(full[3]["image"], again[3]["image"])
    assert not np.array_equal(full[0]["label"], epoch(2)[0]["label"])


def test_evaluation_counts_every_example_once(digits):
    batches = list(pipeline.eval_batches(digits, "test", 64, EvalPreprocessing()))
    assert len(batches) == 6  # 359 examples: five full batches of 64 and one of 39 + padding
    masks = np.concatenate([b["mask"].ravel() for b in batches])
    labels = np.concatenate([b["label"].ravel() for b in batches])[masks == 1]
    assert masks.sum() == 359 and len(labels) == 359
    stored = [
        int(example["label"]) for example in digits.as_dataset(split="test").as_numpy_iterator()
    ]
    assert collections.Counter(labels.tolist()) == collections.Counter(stored)


def eval_examples(digits):
    """(image bytes, label) of every real example this process evaluates."""
    examples = []
    for batch in pipeline.eval_batches(digits, "test", 64, EvalPreprocessing()):
        images = batch["image"].reshape(-1, 32 * 32 * 3)
        for image, label, keep in zip(
            images, batch["label"].ravel(), batch["mask"].ravel(), strict=True
        ):
            if keep:
                examples.append((image.tobytes(), int(label)))
    return examples


def test_two_processes_read_disjoint_shards_covering_the_split(digits, monkeypatch):
    everything = eval_examples(digits)
    shards, batch_counts = [], []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for index in range(2):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        shards.append(eval_examples(digits))
        batch_counts.append(len(list(pipeline.eval_batches(digits, "test", 64))))
    assert sorted(map(len, shards)) == [179, 180]
    assert collections.Counter(shards[0]) + collections.Counter(shards[1]) == (
        collections.Counter(everything)
    )
    assert batch_counts[0] == batch_counts[1]  # so the cross-process sums never wait


@pytest.mark.parametrize(
    "name, eval_split, augmentation, expected_classes",
    [
        ("cifar10", "test", NO_AUGMENTATION, 10),
        ("imagenet2012", "validation", TrainAugmentation(scale=(40, 48), crop=32, flip=True), 1000),
    ],
)
def test_tfds_builders_by_name(tmp_path, name, eval_split, augmentation, expected_classes):
    with mocked_tfds(name, tmp_path, examples=40):
        builder = sources.get_builder(name, str(tmp_path))
        info = sources.describe(builder, "train", eval_split)
        assert info.num_classes == expected_classes and info.train_examples == 40
        batches = list(
            pipeline.train_batches(builder, "train", 8, 0, 0, augmentation=augmentation)
        )
        assert len(batches) == 5 and batches[0]["image"].shape == (4, 2, 32, 32, 3)
        evaluation = EvalPreprocessing(scale=36, crop=32) if augmentation.crop else AS_STORED
        masks = [
            b["mask"] for b in pipeline.eval_batches(builder, eval_split, 16, evaluation)
        ]
        assert sum(mask.sum() for mask in masks) == 40


@pytest.mark.parametrize("in_order", [True, False], ids=["in order", "regrouped"])
@pytest.mark.parametrize("failing", [(), (0,), (3, 4), (7, 8), (15,), (0, 5, 6, 7, 15)])
def test_decode_failures_are_named_wherever_they_fall(failing, in_order):
    """Examples that fail inside the map, at the start, across a batch boundary, at the end:
    each named once, the others passed through in order. Regrouped batches (the multi-scale
    evaluation's) are checked at the end of the pass only."""
    names = [f"file{i}.jpg" for i in range(16)]
    ds = tf.data.Dataset.from_tensor_slices({"name": names, "value": list(range(16))})

    def prepare(example):
        ok = tf.reduce_all(tf.not_equal(example["value"], tf.constant(list(failing) or [-1])))
        with tf.control_dependencies([tf.debugging.Assert(ok, ["a file that does not decode"])]):
            return {"value": tf.identity(example["value"])}

    skipped = pipeline.SkippedImages()
    failures = pipeline.DecodeFailures(skipped)
    seen = []
    for batch in tfds.as_numpy(failures.map_naming_failures(ds, prepare).batch(4)):
        seen += failures.strip_numbers(batch, in_order=in_order)["value"].tolist()
    assert seen == [i for i in range(16) if i not in failing]
    # In order, a failure is named as soon as a later example comes out (training stops
    # mid-pass and never calls finish); regrouped, only at the end.
    early = sorted(names[i] for i in failing if in_order and i < seen[-1])
    named = sorted(skipped.take())
    assert named == early
    failures.finish()
    assert sorted(named + skipped.take()) == sorted(names[i] for i in failing)


def test_training_order_ignores_tensorflows_global_seed(digits):
    """The order depends on (seed, epoch) only: a user's tf.random.set_seed in the same process
    changes nothing, so a resume there sees the batches train.py's own process would."""

    def first_labels():
        batches = pipeline.train_batches(digits, "train", 64, epoch=2, seed=5)
        return [next(batches)["label"] for _ in range(3)]

    unseeded = first_labels()
    try:
        tf.random.set_seed(1234)
        seeded = first_labels()
    finally:
        tf.random.set_seed(None)
    np.testing.assert_array_equal(unseeded, seeded)


def test_seeded_shuffle_keeps_dataset_shuffles_order():
    """The order runs always had (Dataset.shuffle without a global seed) is kept, seeds past
    32 bits included, so earlier runs resume and the recorded figures still hold."""
    ds = tf.data.Dataset.range(300).map(lambda i: {"index": i, "text": tf.strings.as_string(i)})
    for seed in (0, 7, 3 * 100_003 + 1, 2**40 + 9):
        expected = ds.shuffle(64, seed=seed, reshuffle_each_iteration=False)
        got = pipeline.shuffled_by_seed(ds, 64, seed)
        assert [int(x["index"]) for x in got] == [int(x["index"]) for x in expected]
        assert [int(x["index"]) for x in got] != list(range(300))
