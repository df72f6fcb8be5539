"""`python -m vgg_jax.cli.evaluate` (or `vgg-jax-evaluate`): the paper's test protocols
(Section 3.2) on a data set, for one model or an ensemble; prints a table like the paper's and
writes it as JSON.

    python -m vgg_jax.cli.evaluate --workdir runs/vgg16 \
        --protocols dense,multi_crop,dense+multi_crop --scales 256,384,512
    python -m vgg_jax.cli.evaluate --weights vgg16.tv_in1k --protocols center --scales 256 \
        --data_dir ~/tensorflow_datasets          # torchvision's single-crop protocol

The work is done by vgg_jax.evaluation.on_dataset (`evaluate`, `format_table`).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
from typing import Sequence

from vgg_jax.cli.startup import report_failure, start_command
from vgg_jax.evaluation.protocol_names import PROTOCOLS, check_protocols
from vgg_jax.files import write_atomically
from vgg_jax.training.workdir import checkpoint_argument

def _integers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vgg_jax.cli.evaluate",
        description="Evaluate trained VGGs with the paper's test protocols (Section 3.2).",
    )
    models = parser.add_argument_group("models (several make an ensemble)")
    models.add_argument(
        "--workdir",
        action="append",
        default=[],
        help="a train.py work directory; repeat for an ensemble",
    )
    models.add_argument(
        "--checkpoint",
        default="latest",
        type=checkpoint_argument,
        help="which checkpoint of each workdir: latest, best or a step",
    )
    models.add_argument(
        "--weights",
        action="append",
        default=[],
        help="pretrained weights: a registry name or a weights file",
    )
    models.add_argument("--model", help="the network the checkpoints or weights file hold")
    parser.add_argument(
        "--protocols", default="dense", help=f"comma-separated, of: {', '.join(PROTOCOLS)}"
    )
    parser.add_argument(
        "--scales",
        type=_integers,
        help="test scales Q, e.g. 256,384,512 (default: the training config's)",
    )
    parser.add_argument("--dataset", help="data set (default: the one the first model trained on)")
    parser.add_argument("--data_dir", help="tensorflow-datasets data directory")
    parser.add_argument("--split", help="split to evaluate (default: the config's eval split)")
    parser.add_argument("--batch_size", type=int, default=16, help="images per batch")
    parser.add_argument(
        "--output",
        help="JSON file for the results (default: in the first workdir, else ./evaluation.json)",
    )
    args = parser.parse_args(argv)
    if not args.workdir and not args.weights:
        parser.error("give a model: --workdir (a train.py run) or --weights")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not start_command(logging.INFO):
        return 1
    from vgg_jax.data.sources import get_builder
    from vgg_jax.evaluation import inference
    from vgg_jax.evaluation.on_dataset import evaluate, format_table
    from vgg_jax.evaluation.protocols import crop_size
    from vgg_jax.training.checkpoints import CheckpointNotFound

    try:
        protocols = check_protocols(p.strip() for p in args.protocols.split(",") if p.strip())
        classifiers = [inference.from_checkpoint(w, args.checkpoint, args.model)
                       for w in args.workdir]  # fmt: skip
        classifiers += [inference.from_weights(w, args.model) for w in args.weights]
        first = classifiers[0]
        scales = args.scales or [first.eval_scale or crop_size(first.model, first.variables)]
        dataset = args.dataset or first.dataset
        data_dir = args.data_dir if args.data_dir is not None else first.data_dir
        builder = get_builder(dataset, data_dir or None)
        report = evaluate(
            classifiers, builder, args.split or first.eval_split, protocols, scales,
            args.batch_size,
        )  # fmt: skip
    except (ValueError, CheckpointNotFound, FileNotFoundError) as error:
        return report_failure(error)
    default_output = pathlib.Path(args.workdir[0]) if args.workdir else pathlib.Path(".")
    output = pathlib.Path(args.output or default_output / "evaluation.json")
    print(format_table(report))  # before writing: a file that cannot be written loses nothing
    try:
        write_atomically(output, json.dumps(report, indent=2))
    except OSError as error:
        print(
            f"error: could not write the results to {output} ({error.strerror or error}); the "
            f"table above is complete. Rerun with --output=FILE in a writable folder to keep "
            f"them as JSON.",
            file=sys.stderr,
        )
        return 1
    print(f"Results written to {output}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
