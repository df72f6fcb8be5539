"""The paper's test protocol (Section 3.2) on a data set, for one model or an ensemble.

    python -m vgg_jax.evaluate --workdir runs/vgg16 --protocols dense,multi_crop,dense+multi_crop \
        --scales 256,384,512
    python -m vgg_jax.evaluate --weights vgg16.tv_in1k --protocols center --scales 256 \
        --data_dir ~/tensorflow_datasets          # torchvision's single-crop protocol

Every image is rescaled to each Q in `scales` (vgg_jax.evaluation_data), each protocol's
posteriors (vgg_jax.protocols) are averaged over the scales, and an ensemble of several models
(several --workdir / --weights) averages the models' posteriors. Top-1 and top-5 errors go to
a table like the paper's and to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
from typing import Sequence

import jax
import numpy as np
from absl import logging as absl_logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from vgg_jax import inference, input_pipeline
from vgg_jax.checkpoints import CheckpointNotFound
from vgg_jax.evaluation_data import rescaled_batches
from vgg_jax.inference import Classifier
from vgg_jax.protocols import (
    PROTOCOLS,
    check_protocols,
    crop_size,
    protocol_posteriors,
    top_k_errors,
)


def posterior_function(classifier: Classifier, protocols: tuple[str, ...], crop: int):
    """Jitted (variables, uint8 images) -> {protocol: posteriors}; one compilation per image
    shape, which the bucketed batches keep few."""

    @jax.jit
    def posteriors(variables, images):
        images = classifier.preprocess(images)
        return protocol_posteriors(classifier.model, variables, images, protocols, crop)

    return posteriors


def check_scales(scales: Sequence[int], crop: int, name: str) -> tuple[int, ...]:
    if not scales:
        raise ValueError("Give at least one test scale Q (the smaller image side), e.g. 256.")
    small = [q for q in scales if q < crop]
    if small:
        raise ValueError(
            f"Test scales {small} are smaller than the {crop}-pixel input {name} was built "
            f"for; every Q must be at least {crop}."
        )
    return tuple(scales)


def evaluate(
    classifiers: Sequence[Classifier],
    builder,
    split: str,
    protocols: Sequence[str],
    scales: Sequence[int],
    batch_size: int = 16,
    progress: bool = True,
    keep_posteriors: bool = False,
) -> dict:
    """Errors of each classifier (and of their ensemble) under each protocol, at each scale
    and with the scales' posteriors averaged. Returns the report written as JSON; with
    `keep_posteriors` also "posteriors": {(model, protocol, scales): (examples, classes)} and
    "labels" (not JSON)."""
    protocols = check_protocols(protocols)
    if not classifiers:
        raise ValueError("Nothing to evaluate: give at least one model.")
    num_classes = {c.model.num_classes for c in classifiers}
    if len(num_classes) > 1:
        raise ValueError(f"An ensemble's models must share their classes; got {num_classes}.")
    try:  # a name, or a slice of one ("test[:1000]")
        total = builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        raise ValueError(
            f"Data set {builder.name!r} has no split {split!r}; it has "
            f"{', '.join(builder.info.splits)}."
        ) from None
    shape = (total, num_classes.pop())
    labels, seen = np.zeros(total, np.int64), np.zeros(total, bool)
    skipped = input_pipeline.SkippedImages()
    mesh = Mesh(np.array(jax.local_devices()), ("batch",))
    by_example = NamedSharding(mesh, PartitionSpec("batch"))
    rows, kept, ensemble = [], {}, {p: np.zeros(shape, np.float32) for p in protocols}

    def add_row(model: str, protocol: str, scales, posteriors: np.ndarray) -> None:
        errors = top_k_errors(posteriors[seen], labels[seen])
        rows.append({"model": model, "protocol": protocol, "scales": list(scales),
                     "top1_error": errors[1], "top5_error": errors[5]})  # fmt: skip
        if keep_posteriors:
            kept[model, protocol, tuple(scales)] = posteriors[seen]

    for classifier in classifiers:
        crop = crop_size(classifier.model, classifier.variables)
        scales = check_scales(scales, crop, classifier.name)
        posteriors_of = posterior_function(classifier, protocols, crop)
        variables = jax.device_put(classifier.variables, NamedSharding(mesh, PartitionSpec()))
        over_scales = {p: np.zeros(shape, np.float32) for p in protocols}
        for scale in scales:
            at_scale = {p: np.zeros(shape, np.float32) for p in protocols}
            batches = rescaled_batches(builder, split, scale, batch_size, skipped)
            for batch in tqdm(batches, desc=f"{classifier.name} Q={scale}", unit="batch",
                              disable=not progress, dynamic_ncols=True):  # fmt: skip
                images = jax.device_put(batch["image"], by_example)
                out = jax.device_get(posteriors_of(variables, images))
                real = batch["mask"] > 0
                index = batch["index"][real]
                labels[index], seen[index] = batch["label"][real], True
                for protocol in protocols:
                    at_scale[protocol][index] = out[protocol][real]
            if not seen.any():
                raise ValueError(f"No readable example in split {split!r} of {builder.name!r}.")
            for protocol in protocols:
                add_row(classifier.name, protocol, [scale], at_scale[protocol])
                over_scales[protocol] += at_scale[protocol] / len(scales)
        for protocol in protocols:
            if len(scales) > 1:
                add_row(classifier.name, protocol, scales, over_scales[protocol])
            ensemble[protocol] += over_scales[protocol] / len(classifiers)
    if len(classifiers) > 1:
        for protocol in protocols:
            add_row(f"ensemble of {len(classifiers)}", protocol, scales, ensemble[protocol])
    report = {
        "dataset": builder.name,
        "split": split,
        "examples": int(seen.sum()),
        "skipped_images": skipped.take(),
        "models": [c.name for c in classifiers],
        "protocols": list(protocols),
        "scales": list(scales),
        "results": rows,
    }
    if keep_posteriors:
        report.update(posteriors=kept, labels=labels[seen])
    return report


def format_table(report: dict) -> str:
    """The results as a Markdown table in the form of the paper's Tables 3-5."""
    lines = [
        f"{report['dataset']} {report['split']}: {report['examples']} images"
        + (f" ({len(report['skipped_images'])} unreadable, skipped)"
           if report["skipped_images"] else ""),
        "",
        "| model | protocol | test scale Q | top-1 error (%) | top-5 error (%) |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for row in report["results"]:
        scales = ", ".join(map(str, row["scales"]))
        lines.append(
            f"| {row['model']} | {row['protocol']} | {scales} | {row['top1_error']:.2f} | "
            f"{row['top5_error']:.2f} |"
        )
    return "\n".join(lines)


def _integers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vgg_jax.evaluate",
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax reports every read at WARNING
    try:
        protocols = check_protocols(p.strip() for p in args.protocols.split(",") if p.strip())
        classifiers = [inference.from_checkpoint(w, args.checkpoint, args.model)
                       for w in args.workdir]  # fmt: skip
        classifiers += [inference.from_weights(w, args.model) for w in args.weights]
        first = classifiers[0]
        scales = args.scales or [first.eval_scale or crop_size(first.model, first.variables)]
        dataset = args.dataset or first.dataset
        data_dir = args.data_dir if args.data_dir is not None else first.data_dir
        builder = input_pipeline.get_builder(dataset, data_dir or None)
        report = evaluate(
            classifiers, builder, args.split or first.eval_split, protocols, scales,
            args.batch_size,
        )  # fmt: skip
    except (ValueError, CheckpointNotFound, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    default_output = pathlib.Path(args.workdir[0]) if args.workdir else pathlib.Path(".")
    output = pathlib.Path(args.output or default_output / "evaluation.json")
    output.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"Results written to {output}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
