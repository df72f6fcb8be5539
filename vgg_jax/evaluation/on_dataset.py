"""The paper's test protocol (Section 3.2) on a data set, for one model or an ensemble.

Every image is rescaled to each Q in `scales` (vgg_jax.data.evaluation_data), each protocol's
posteriors (vgg_jax.evaluation.protocols) are averaged over the scales, and an ensemble of
several models averages the models' posteriors. The result is a report (JSON-ready) and a
table like the paper's; `python -m vgg_jax.cli.evaluate` is its command line.
"""

from __future__ import annotations

import logging
from typing import Sequence

import jax
import numpy as np
from tqdm import tqdm

from vgg_jax.data.evaluation_data import rescaled_batches
from vgg_jax.data.pipeline import SkippedImages
from vgg_jax.data.sources import split_examples
from vgg_jax.evaluation.inference import Classifier
from vgg_jax.evaluation.protocols import check_protocols, crop_size, posterior_function
from vgg_jax.parallel import local_mesh, put_batch, put_replicated
from vgg_jax.training.metrics import top_k_errors


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
    run = _Evaluation(builder, split, protocols, batch_size, progress, num_classes.pop())
    rows, kept, ensemble = [], {}, {p: run.zeros() for p in protocols}

    def add_row(model: str, protocol: str, scales, posteriors: np.ndarray) -> None:
        errors = top_k_errors(posteriors[run.seen], run.labels[run.seen])
        rows.append({"model": model, "protocol": protocol, "scales": list(scales),
                     "top1_error": errors[1], "top5_error": errors[5]})  # fmt: skip
        if keep_posteriors:
            kept[model, protocol, tuple(scales)] = posteriors[run.seen]

    for classifier in classifiers:
        crop = crop_size(classifier.model, classifier.variables)
        scales = check_scales(scales, crop, classifier.name)
        over_scales = {p: run.zeros() for p in protocols}
        for scale in scales:
            at_scale = run.posteriors(classifier, crop, scale)
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
    report = run.report(classifiers, scales, rows)
    if keep_posteriors:
        report.update(posteriors=kept, labels=run.labels[run.seen])
    return report


class _Evaluation:
    """One evaluation's split, its labels as read, and the devices: the batch is split over
    them (vgg_jax.parallel), the variables copied onto each."""

    def __init__(self, builder, split, protocols, batch_size, progress, num_classes):
        self.builder, self.split, self.protocols = builder, split, protocols
        self.batch_size, self.progress = batch_size, progress
        total = split_examples(builder, split)
        self.shape = (total, num_classes)
        self.labels, self.seen = np.zeros(total, np.int64), np.zeros(total, bool)
        self.skipped = SkippedImages()
        self.mesh = local_mesh()

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, np.float32)

    def posteriors(self, classifier: Classifier, crop: int, scale: int) -> dict:
        """{protocol: (examples, classes)} of `classifier` on the split rescaled to `scale`."""
        posteriors_of = posterior_function(
            classifier.model, classifier.preprocess, self.protocols, crop
        )
        variables = put_replicated(classifier.variables, self.mesh)
        at_scale = {p: self.zeros() for p in self.protocols}
        batches = rescaled_batches(self.builder, self.split, scale, self.batch_size, self.skipped)
        for batch in tqdm(batches, desc=f"{classifier.name} Q={scale}", unit="batch",
                          disable=not self.progress, dynamic_ncols=True):  # fmt: skip
            images = put_batch(batch["image"], self.mesh)
            out = jax.device_get(posteriors_of(variables, images))
            real = batch["mask"] > 0
            index = batch["index"][real]
            self.labels[index], self.seen[index] = batch["label"][real], True
            for protocol in self.protocols:
                at_scale[protocol][index] = out[protocol][real]
        if not self.seen.any():
            raise ValueError(
                f"No readable example in split {self.split!r} of {self.builder.name!r}."
            )
        return at_scale

    def report(self, classifiers, scales, rows) -> dict:
        skipped_names = self.skipped.take()
        if skipped_names:
            logging.getLogger("vgg_jax").warning(
                "Skipped %d images of %s that are not whole JPEG/PNG files or do not decode: %s",
                len(skipped_names), self.split, ", ".join(skipped_names),
            )  # fmt: skip
        return {
            "dataset": self.builder.name,
            "split": self.split,
            "examples": int(self.seen.sum()),
            "skipped_images": skipped_names,
            "models": [c.name for c in classifiers],
            "protocols": list(self.protocols),
            "scales": list(scales),
            "results": rows,
        }


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
