"""Folder data sets (root/split/class/*.jpg|png through tfds.ImageFolder) and bad data."""

import collections

import jax
import numpy as np
import pytest
from helpers import small_config
from image_folders import BAD_FILES, CLASS_COLOURS, GOOD_PER_CLASS, make_folder, write_image

from vgg_jax.data import pipeline, sources
from vgg_jax.data.preprocessing import EvalPreprocessing, TrainAugmentation
from vgg_jax.data.sources import DatasetUnavailable
from vgg_jax.training.loop import TrainingError, train_and_evaluate
from vgg_jax.training.sections import read_config

@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "pets")


def readable(split):
    extra = 2 if split == "train" else 0  # the grayscale and the RGBA images
    return GOOD_PER_CLASS[split] * len(CLASS_COLOURS) + extra


def test_folder_loads_through_tfds_with_labels_from_class_folders(folder):
    builder = sources.get_builder(str(folder))
    info = sources.describe(builder, "train", "val")
    assert info.num_classes == 3 and info.train_examples == readable("train") + len(BAD_FILES)
    assert builder.info.features["label"].names == sorted(CLASS_COLOURS)

    skipped = pipeline.SkippedImages()
    images, labels = [], []
    batches = pipeline.eval_batches(
        builder, "train", 4, EvalPreprocessing(crop=32), skipped=skipped
    )
    for batch in batches:
        keep = batch["mask"].ravel() == 1
        images.append(batch["image"].reshape(-1, 32, 32, 3)[keep])
        labels.append(batch["label"].ravel()[keep])
    images, labels = np.concatenate(images), np.concatenate(labels)
    # Every readable image once, the bad ones skipped and named.
    assert len(labels) == readable("train")
    assert sorted(name.rsplit("/", 1)[-1] for name in skipped.take()) == BAD_FILES
    assert collections.Counter(labels.tolist()) == {0: 7, 1: 7, 2: 6}
    # Labels follow the class folders: each image shows its class's colour, in RGB.
    rgb = images.mean(axis=(1, 2))
    names = sorted(CLASS_COLOURS)
    for colour, label in zip(rgb, labels, strict=True):
        if names[label] == "cat" and np.allclose(colour, colour[0], atol=3):
            continue  # the grayscale cat: grey, with three equal channels
        assert np.argmax(colour) == np.argmax(CLASS_COLOURS[names[label]])


def test_multi_scale_evaluation_batches_name_the_files_they_skip(folder):
    from vgg_jax.data.evaluation_data import rescaled_batches

    builder = sources.get_builder(str(folder))
    skipped = pipeline.SkippedImages()
    indices = [
        index
        for batch in rescaled_batches(builder, "train", 48, 4, skipped)
        for index in batch["index"][batch["mask"] > 0]
    ]
    assert len(indices) == len(set(indices)) == readable("train")
    assert sorted(name.rsplit("/", 1)[-1] for name in skipped.take()) == BAD_FILES


def test_training_batches_skip_bad_files_and_keep_going(folder):
    builder = sources.get_builder(str(folder))
    skipped = pipeline.SkippedImages()
    augmentation = TrainAugmentation(scale=(32, 40), crop=32, flip=True)
    batches = list(
        pipeline.train_batches(
            builder, "train", 4, epoch=0, seed=0, augmentation=augmentation, skipped=skipped
        )
    )
    # 23 files make 5 batches of 4 even with 3 bad: the epoch is topped up from its start.
    assert len(batches) == (readable("train") + len(BAD_FILES)) // 4
    assert all(b["image"].shape == (4, 1, 32, 32, 3) for b in batches)
    # Each named once, even if the top-up met it again; garbled.jpg only fails in the decoder.
    assert sorted(name.rsplit("/", 1)[-1] for name in skipped.take()) == BAD_FILES


def test_two_processes_read_disjoint_shards_of_a_folder(folder, monkeypatch):
    builder = sources.get_builder(str(folder))

    def labels_seen():
        batches = pipeline.eval_batches(builder, "val", 8, EvalPreprocessing(crop=32))
        return [
            (int(label), float(image.sum()))
            for batch in batches
            for label, image, keep in zip(
                batch["label"].ravel(),
                batch["image"].reshape(-1, 32 * 32 * 3),
                batch["mask"].ravel(),
                strict=True,
            )  # fmt: skip
            if keep
        ]

    everything = labels_seen()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    shards = []
    for index in range(2):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        shards.append(labels_seen())
    assert sorted(map(len, shards)) == [4, 5]
    assert collections.Counter(shards[0]) + collections.Counter(shards[1]) == (
        collections.Counter(everything)
    )


def test_folder_mistakes_are_explained(tmp_path):
    with pytest.raises(DatasetUnavailable, match="No image folder at"):
        sources.get_builder(str(tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetUnavailable, match="holds no split folders"):
        sources.get_builder(str(tmp_path / "flat"))
    root = tmp_path / "data"
    write_image_dir = root / "train" / "cat"
    write_image_dir.mkdir(parents=True)
    write_image(write_image_dir / "a.jpg", (1, 2, 3))
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetUnavailable, match=r"Class folder .*train/dog holds no"):
        sources.get_builder(str(root))
    (root / "train" / "dog" / "notes.txt").unlink()
    (root / "train" / "dog").rmdir()
    builder = sources.get_builder(str(root))
    with pytest.raises(ValueError, match="has no split 'validation'; it has train"):
        sources.describe(builder, "train", "validation")


def test_imagenet_not_downloaded_says_where_the_tars_go(tmp_path):
    with pytest.raises(DatasetUnavailable) as error:
        sources.get_builder("imagenet2012", str(tmp_path))
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
    assert str(tmp_path / "downloads" / "manual") in message
    with pytest.raises(DatasetUnavailable, match="Unknown data set 'imagenet2013'"):
        sources.get_builder("imagenet2013", str(tmp_path))


def test_a_relative_folder_path_is_read_as_a_folder(folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    with pytest.raises(DatasetUnavailable, match=r"'pets' is a folder here: write ./pets"):
        sources.get_builder("pets")
    assert sources.get_builder("./pets").info.features["label"].num_classes == 3


def test_a_folder_without_crop_size_is_refused(folder, tmp_path):
    config = small_config(dataset=str(folder), eval_split="val", crop_size=0)
    with pytest.raises(TrainingError, match="vary in size: set config.crop_size"):
        train_and_evaluate(config, tmp_path / "run")


def test_a_mostly_unreadable_folder_stops_with_a_clear_error(tmp_path):
    root = tmp_path / "broken"
    for split in ("train", "val"):
        for name, colour in CLASS_COLOURS.items():
            (root / split / name).mkdir(parents=True)
            write_image(root / split / name / "good.jpg", colour)
            for i in range(5):
                (root / split / name / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 50)
    config = small_config(dataset=str(root), eval_split="val", crop_size=32, batch_size=4)
    with pytest.raises(TrainingError, match="Epoch 1 ended after step 1 of 4: most of 'train'"):
        train_and_evaluate(config, tmp_path / "run")


def test_model_input_is_rgb_whatever_the_stored_channels():
    gray = sources.DatasetInfo("mnist", 10, (28, 28, 1), 60_000, 10_000)
    for crop_size, expected in ((0, (28, 28, 3)), (24, (24, 24, 3))):
        data = read_config(small_config(crop_size=crop_size)).data
        assert pipeline.model_input_shape(data, gray) == expected
