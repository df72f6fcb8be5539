"""`python -m vgg_jax.cli.predict` (or `vgg-jax-predict`): classify image files with a trained
VGG and print each one's most likely classes.

    python -m vgg_jax.cli.predict cat.jpg dog.png --weights vgg16.tv_in1k
    python -m vgg_jax.cli.predict digit.png --workdir runs/default --dense

The work is done by vgg_jax.evaluation.on_files (`predict`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from vgg_jax.cli.startup import report_failure, start_command
from vgg_jax.training.workdir import checkpoint_argument

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vgg_jax.cli.predict", description="Print the top classes of image files."
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
    if not start_command(logging.WARNING):
        return 1
    from vgg_jax.evaluation import inference
    from vgg_jax.evaluation.on_files import predict
    from vgg_jax.training.checkpoints import CheckpointNotFound

    try:
        if args.workdir:
            classifier = inference.from_checkpoint(args.workdir, args.checkpoint, args.model)
        else:
            classifier = inference.from_weights(args.weights, args.model)
        predictions = predict(classifier, args.images, args.dense, args.scale, args.top)
    except (ValueError, CheckpointNotFound, FileNotFoundError) as error:
        return report_failure(error)
    for path, classes in zip(args.images, predictions, strict=True):
        print(path)
        for rank, (name, index, probability) in enumerate(classes, 1):
            print(f"  {rank}. {100 * probability:6.2f}%  {name} ({index})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
