"""`python -m vgg_jax [model]`: print a VGG model's layer table, computing nothing."""

from __future__ import annotations

import argparse
from typing import Sequence

from vgg_jax.model.architectures import MODEL_NAMES


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vgg_jax",
        description="Print the layer table of a VGG model (shapes only, nothing is computed).",
    )
    parser.add_argument(
        "model",
        nargs="?",
        default="vgg16",
        help=f"a model name ({', '.join(MODEL_NAMES)}) or a paper letter (A, A-LRN, B, C, D, E)",
    )
    parser.add_argument(
        "--image-size", type=int, default=224, help="side of the square input (default 224)"
    )
    parser.add_argument(
        "--num-classes", type=int, default=1000, help="size of the last layer, FC8 (default 1000)"
    )
    parser.add_argument("--width", type=float, default=1.0, help="multiplier on conv widths")
    args = parser.parse_args(argv)
    # Once the arguments are read: jax takes a second to import, --help should not wait for it.
    from vgg_jax.model.costs import format_layer_table, layer_table
    from vgg_jax.model.vgg import create_model

    try:
        model = create_model(args.model, num_classes=args.num_classes, width=args.width)
        rows = layer_table(model, args.image_size)
    except ValueError as error:
        parser.error(str(error))
    total_params = sum(row.params for row in rows)
    total_macs = sum(row.macs for row in rows)
    bn = " with batch norm" if model.batch_norm else ""
    print(
        f"{args.model}: configuration {model.config}{bn}, input "
        f"{args.image_size}x{args.image_size}x{model.in_channels} (NHWC)"
    )
    print(format_layer_table(rows))
    print(f"{total_params:,} parameters, {total_macs / 1e9:.3f} G multiply-accumulates per image")


if __name__ == "__main__":
    main()
