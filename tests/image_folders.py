"""A small folder data set (root/split/class/*.jpg|png) with bad files in it, for the tests
of folder data sets, of evaluation and of train.py on bad data."""

import numpy as np
import tensorflow as tf

# Each class is one colour, so a decoded image shows which folder it came from.
CLASS_COLOURS = {"cat": (220, 30, 30), "dog": (30, 220, 30), "fox": (30, 30, 220)}
GOOD_PER_CLASS = {"train": 6, "val": 3}
BAD_FILES = ["cut.jpg", "garbled.jpg", "junk.jpg"]


def write_image(path, colour, channels=3, size=(40, 48)):
    pixels = np.broadcast_to(np.array(colour, np.uint8), (*size, 3))
    if channels == 1:
        pixels = pixels.max(axis=-1, keepdims=True)
    if channels == 4:
        pixels = np.concatenate([pixels, np.full((*size, 1), 128, np.uint8)], axis=-1)
    encode = tf.io.encode_png if path.suffix == ".png" else tf.io.encode_jpeg
    path.write_bytes(encode(pixels).numpy())


def make_folder(root):
    """train/ and val/ with three classes of JPEGs and PNGs, plus in train/: a grayscale JPEG,
    an RGBA PNG, and three bad files (BAD_FILES): junk, a truncated JPEG, and a JPEG whose
    start and end are whole but whose Huffman table is garbled, so only decoding finds it."""
    for split, count in GOOD_PER_CLASS.items():
        for name, colour in CLASS_COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                write_image(folder / f"{i}.{'png' if i % 2 else 'jpg'}", colour)
    write_image(root / "train" / "cat" / "gray.jpg", CLASS_COLOURS["cat"], channels=1)
    write_image(root / "train" / "dog" / "rgba.png", CLASS_COLOURS["dog"], channels=4)
    (root / "train" / "fox" / "junk.jpg").write_bytes(b"this is not an image" * 10)
    whole = (root / "train" / "fox" / "0.jpg").read_bytes()
    (root / "train" / "fox" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    table = whole.index(b"\xff\xc4") + 5  # the code counts of the first Huffman table
    garbled = whole[:table] + b"\xff" * 16 + whole[table + 16 :]
    (root / "train" / "fox" / "garbled.jpg").write_bytes(garbled)
    return root
