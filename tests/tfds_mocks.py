"""Offline stand-ins for TFDS data sets that would need a download."""

import pathlib

import tensorflow_datasets as tfds


def mocked_tfds(name, data_dir, examples):
    """tfds.testing.mock_data for `name`, with metadata giving every split `examples` examples
    (mock_data yields that many per split), so the real builder code path runs offline."""
    builder = tfds.builder(name, data_dir=str(data_dir))
    splits = [
        tfds.core.SplitInfo(name=split, shard_lengths=[examples], num_bytes=0)
        for split in ("train", "test", "validation")
    ]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    pathlib.Path(builder.data_dir).mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    return tfds.testing.mock_data(num_examples=examples, data_dir=str(data_dir))
