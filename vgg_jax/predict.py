"""`python -m vgg_jax.predict`: classify image files with a trained VGG and print each one's
most likely classes.

    python -m vgg_jax.predict cat.jpg dog.png --weights vgg16.tv_in1k
    python -m vgg_jax.predict digit.png --workdir runs/default --dense

The work is done by vgg_jax.evaluation.predict; `predict` is here too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from vgg_jax.environment import MissingTrainingLibraries, require_training_libraries

from vgg_jax.training.workdir import checkpoint_argument

__all__ = ["main", "predict"]  # noqa: F822 (predict loads on first use)


def __getattr__(name: str):
    # `predict` loads TensorFlow and orbax: only when used, so that --help and argument errors
    # answer at once.
    if name == "predict":
        from vgg_jax.evaluation.predict import predict

        return predict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vgg_jax.predict", description="Print the top classes of image files."
    )
    parser.add_argument("images", nargs="+", help="JPEG or PNG files")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a train.py work directory")
    source.add_argument("--weights", help="pretrained weights: a registry name or a file")
    parser.add_argument(
        "--checkpoint", default="latest", type=checkpoint_argument, help="latest, best or a step"
    )
    parser.add_argument("--model", help="the network a weights file holds (e.g. vgg16)")
    parser.add_argument("--dense", action="store_true", help="the paper's dense evaluation")
    parser.add_argument("--scale", type=int, help="smaller image side Q before the model")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print")
    args = parser.parse_args(argv)
    try:
        require_training_libraries()
    except MissingTrainingLibraries as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from absl import logging as absl_logging

    from vgg_jax.evaluation import inference
    from vgg_jax.evaluation.predict import predict
    from vgg_jax.training.checkpoints import CheckpointNotFound

    # force: importing TensorFlow's stack has already given the root logger a handler.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax reports every read at WARNING
    try:
        if args.workdir:
            classifier = inference.from_checkpoint(args.workdir, args.checkpoint, args.model)
        else:
            classifier = inference.from_weights(args.weights, args.model)
        predictions = predict(classifier, args.images, args.dense, args.scale, args.top)
    except (ValueError, CheckpointNotFound, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, classes in zip(args.images, predictions, strict=True):
        print(path)
        for rank, (name, index, probability) in enumerate(classes, 1):
            print(f"  {rank}. {100 * probability:6.2f}%  {name} ({index})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
