"""Where data sets come from: tensorflow-datasets names, the digits built here, and image
folders (root/split/class/*.jpg|png, read through tfds.ImageFolder); their metadata (classes,
image shape, split sizes, class names); and the errors that say what to do when one cannot be
read. The input pipelines (vgg_jax.data.pipeline, vgg_jax.data.evaluation_data) read from the
builders made here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

from vgg_jax.environment import require_training_libraries

require_training_libraries()  # a base install has no TensorFlow: name the extra

import tensorflow as tf
import tensorflow_datasets as tfds

from vgg_jax.data.digits import SklearnDigits
from vgg_jax.data.labels import imagenet_class_names

# Data sets vgg_jax builds itself, by the name a config uses.
LOCAL_BUILDERS = {"digits": SklearnDigits}
_logger = logging.getLogger("vgg_jax")


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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what tfds.ImageFolder reads
# Data sets whose files cannot be downloaded automatically: what to fetch, and where it goes.
MANUAL_DOWNLOADS = {
    "imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org)",
}


class DatasetUnavailable(ValueError):
    """A data set that cannot be read as asked, with what to do about it."""


def is_folder_dataset(name: str) -> bool:
    """A path, written as one: tfds names contain "/" too ("imagenette/320px-v2")."""
    return name.startswith(("/", "./", "../", "~"))


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of a data set, prepared (built or downloaded) on first use; a folder
    path gives a tfds.ImageFolder over it."""
    keep_tensorflow_off_accelerators()
    builder = unprepared_builder(name, data_dir)
    if isinstance(builder, tfds.ImageFolder):
        return builder
    try:
        builder.download_and_prepare()
    except Exception as error:
        raise DatasetUnavailable(_not_prepared_message(builder, data_dir, error)) from error
    return builder


def unprepared_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The builder a data set name means (an image folder, one vgg_jax builds, or a
    tensorflow-datasets name), its metadata readable, nothing downloaded or built yet."""
    if is_folder_dataset(name):
        return image_folder(name)
    if name in LOCAL_BUILDERS:
        return LOCAL_BUILDERS[name](data_dir=data_dir)
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        hint = f" ({name!r} is a folder here: write ./{name} to read it)" * os.path.isdir(name)
        raise DatasetUnavailable(
            f"Unknown data set {name!r}: give a tensorflow-datasets name, 'digits', or the "
            f"path of an image folder laid out as root/split/class/*.jpg{hint}."
        ) from error


def _not_prepared_message(builder, data_dir: str | None, error: Exception) -> str:
    root = pathlib.Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
    base_name = builder.name.split("/")[0]
    if base_name in MANUAL_DOWNLOADS:
        return (
            f"Data set {builder.name!r} is not prepared in {root} and cannot be downloaded "
            f"automatically. Put {MANUAL_DOWNLOADS[base_name]} in {root / 'downloads' / 'manual'}"
            f" and run again: tensorflow-datasets then builds it once (this takes hours). "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        )
    return (
        f"Could not download and prepare data set {builder.name!r} in {root}: "
        f"{type(error).__name__}: {str(error).splitlines()[0][:300]}. Without internet, prepare "
        f"it on a machine that has it and copy {root / builder.name} here."
    )


def image_folder(root: str) -> tfds.core.DatasetBuilder:
    """tfds.ImageFolder over root/split/class/*.jpg|png, checked: a missing root, no split
    folders or an empty class folder is an error saying what is wrong."""
    path = pathlib.Path(root).expanduser()
    if not path.is_dir():
        raise DatasetUnavailable(
            f"No image folder at {path}; expected {path}/<split>/<class>/*.jpg"
        )
    splits = sorted(p for p in path.iterdir() if p.is_dir())
    if not splits:
        raise DatasetUnavailable(
            f"{path} holds no split folders; expected {path}/<split>/<class>/*.jpg (e.g. "
            f"{path}/train/cat/0001.jpg)."
        )
    refuse_names_not_utf8(path)
    for split in splits:
        classes = sorted(p for p in split.iterdir() if p.is_dir())
        if not classes:
            raise DatasetUnavailable(
                f"Split folder {split} holds no class folders; expected {split}/<class>/*.jpg."
            )
        for folder in classes:
            if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir()):
                raise DatasetUnavailable(
                    f"Class folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images: add "
                    f"some or remove the folder (every class folder is a class)."
                )
    return tfds.ImageFolder(str(path))


def refuse_names_not_utf8(root: pathlib.Path) -> None:
    """TensorFlow lists folders as UTF-8 and fails, naming no file, on the first name that is
    not: such a name in root/<split>/<class>/ is refused here, its bytes escaped."""
    top = os.fsencode(root)
    for folder, subfolders, files in os.walk(top):
        for name in subfolders + files:
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                escaped = os.path.join(folder, name).decode("utf-8", "backslashreplace")
                raise DatasetUnavailable(
                    f"The file name {escaped} is not UTF-8, which TensorFlow cannot list: "
                    f"rename it (e.g. convmv -f latin1 -t utf-8), or move it out of {root}."
                ) from None
        relative = os.path.relpath(folder, top)
        if relative != b"." and relative.count(b"/") >= 1:
            subfolders.clear()  # root/<split>/<class>/: nothing deeper is read


def split_examples(builder, split: str, whole: bool = False) -> int:
    """How many examples `split` holds: a split name, or a slice of one ("test[:1000]") unless
    `whole` (training reads whole splits)."""
    try:
        if whole and split not in builder.info.splits:
            raise KeyError(split)
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        raise DatasetUnavailable(
            f"Data set {builder.name!r} has no split {split!r}; it has "
            f"{', '.join(builder.info.splits)}."
        ) from None


def describe(builder, train_split: str, eval_split: str) -> DatasetInfo:
    """Classes, image shape and split sizes, from the data set's own metadata."""
    features = builder.info.features
    return DatasetInfo(
        name=builder.name,
        num_classes=features["label"].num_classes,
        image_shape=tuple(features["image"].shape),
        train_examples=split_examples(builder, train_split, whole=True),
        eval_examples=split_examples(builder, eval_split, whole=True),
    )


def class_names(dataset: str, data_dir: str | None, num_classes: int) -> tuple[str, ...]:
    """The label names of a data set, read from its metadata without preparing it; "class i"
    where they cannot be read. ImageNet's come from vgg_jax (tfds has only WordNet ids)."""
    if dataset.split("/")[0] == "imagenet2012" and num_classes == 1000:
        return tuple(imagenet_class_names())
    try:
        builder = unprepared_builder(dataset, data_dir or None)
        names = tuple(builder.info.features["label"].names)
        if len(names) == num_classes:
            return names
    except Exception as error:  # metadata of a data set that is not here: numbered classes
        _logger.warning("No class names for %s (%s); numbering the classes.", dataset, error)
    return tuple(f"class {i}" for i in range(num_classes))
