"""`python -m vgg_jax.cli.plan` (or `vgg-jax-plan`): a TPU or GPU run planned on a machine
without one. train.py's own train and eval steps, set up from the same config, compiled for the
slice by libtpu (the `tpu` extra) or for the GPUs by JAX's CUDA plugin (the `gpu-plan` extra):
whether they fit each chip's memory, the largest batch that would, and the images per second
the chips' peak arithmetic allows.

    python -m vgg_jax.cli.plan --config=vgg_jax/configs/imagenet_vgg16.py --topology=v5e-16
    python -m vgg_jax.cli.plan --config=... --topology=v4-8 --largest_batch --json

The work is done by vgg_jax.training.planning; the fields of --json: docs/hardware.md.
"""

from __future__ import annotations

import json
import sys

from vgg_jax.environment import MissingTrainingLibraries, require_training_libraries

# Bad input (a topology, a batch, a config field, a missing library): one line, this status.
EXIT_BAD_INPUT = 2


def main() -> None:
    try:  # before absl and ml_collections, which the base install leaves out
        require_training_libraries()
    except MissingTrainingLibraries as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    from absl import app, flags

    from vgg_jax.cli.config_file import define_config_flag, exit_on_unknown_config_field

    define_config_flag(EXIT_BAD_INPUT)
    flags.DEFINE_string("topology", None, "TPU slice (v5e-16, v4-8, v6e-8, ... or v5e:4x4) or "
                        "GPUs (h100, a100-80gb, a100-40gb, l4, t4; h100x8 for eight).")  # fmt: skip
    flags.DEFINE_bool("largest_batch", False, "Also find the largest power-of-two batch per "
                      "chip that fits, by compiling (a few compiles).")  # fmt: skip
    flags.DEFINE_integer("num_classes", 0, "Classes of the data set (0: read from its "
                         "metadata, which needs tensorflow-datasets to know it).")  # fmt: skip
    flags.DEFINE_bool("json", False, "Print the plan as one JSON object.")
    flags.mark_flag_as_required("topology")
    app.run(
        plan_command,
        flags_parser=lambda argv: exit_on_unknown_config_field(
            app.parse_flags_with_usage, argv, status=EXIT_BAD_INPUT
        ),
    )


def bad_input(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def plan_command(argv: list[str]) -> None:
    from absl import flags, logging

    FLAGS = flags.FLAGS
    logging.set_verbosity(logging.WARNING)  # JAX names each backend it does not find at INFO
    import jax

    # The plan runs nothing: JAX starts its CPU backend alone (the CUDA plugin, where installed
    # on a machine without a GPU, would fail to start and then make no GPU topology).
    jax.config.update("jax_platforms", "cpu")
    if len(argv) > 1:
        bad_input(f"unexpected arguments: {' '.join(argv[1:])}")
    from vgg_jax.cli.config_file import checked_config

    config = checked_config(FLAGS["config"], status=EXIT_BAD_INPUT)
    from vgg_jax.training import planning
    from vgg_jax.training.topologies import TopologyError, describe

    try:
        topology = describe(FLAGS.topology)
        num_classes, image_shape = planning.data_shape(config, FLAGS.num_classes)
        plan = planning.planner(config, topology, num_classes, image_shape)
    except (TopologyError, planning.PlanError) as error:
        bad_input(str(error))
    progress = (
        (lambda line: print(line, file=sys.stderr, flush=True))
        if not FLAGS.json
        else (lambda line: None)
    )
    report = planning.make_plan(plan, FLAGS.largest_batch, progress)
    print(json.dumps(report, indent=2) if FLAGS.json else format_plan(report))


def _gib(size: int | None) -> str:
    from vgg_jax.training.memory import human_size

    return "-" if size is None else human_size(size)


def _flops(flops: float) -> str:
    return f"{flops / 1e12:.2f} TFLOP" if flops >= 1e12 else f"{flops / 1e9:.2f} GFLOP"


def format_plan(report: dict) -> str:
    """The plan as a short table."""
    train, evaluation = report["train_step"], report["eval_step"]
    per_chip = report["batch_per_chip"]
    devices = (f"{report['devices']} devices ({report['devices_per_chip']} per chip)"
               if report["devices_per_chip"] > 1 else f"{report['devices']} devices")  # fmt: skip
    rows = [
        ("topology", f"{report['topology']} (compiled for {report['compiler_topology']})"),
        ("chip", f"{report['chip']} ({report['device_kind']}): a step may hold "
                 f"{_gib(report['memory_per_chip_bytes'])} ({report['memory_source']})"),
        ("chips, hosts", f"{report['chips']} chips, {report['hosts']} host(s), {devices}"),
        ("model", f"{report['model']}, {'x'.join(map(str, report['image_shape']))} images, "
                  f"{report['dtype']}, remat {report['remat']}"),
        ("batch", f"{report['global_batch']} in all, {report['batch_per_host']} per host, "
                  f"{per_chip} per chip, split over the devices"
                  + (f" in {report['micro_batches']} micro-batches of "
                     f"{report['micro_batch_per_device']}" if report["micro_batches"] > 1 else "")),
        ("train step", _memory(train)),
        ("eval step", _memory(evaluation)),
        ("fits", ("yes, " + _gib(report["headroom_bytes"]) + " to spare per chip")
                 if report["fits"] else "NO" + (f": {train['compiler_refusal']}"
                                                if train["compiler_refusal"] else "")),
        ("FLOPs per step", f"{_flops(report['flops_per_step_per_chip'])} per chip "
                           + ("(XLA's cost analysis)" if report["flops_source"] == "xla"
                              else "(the model's own count: XLA gives none here)")),
        ("compute bound", f"{report['compute_bound_images_per_second_per_chip']:,.0f} images/s "
                          f"per chip, {report['compute_bound_images_per_second']:,.0f} for the "
                          f"slice, at {report['peak_bf16_flops_per_chip'] / 1e12:.0f} TFLOP/s "
                          f"bf16 per chip"),
        ("compile time", f"{report['compile_seconds']:.0f} s"),
    ]  # fmt: skip
    search = report["largest_batch_search"]
    if search is not None:
        largest = report["largest_batch_per_chip"]
        tried = ", ".join(
            f"{step['batch_per_chip']}: "
            + ("refused" if step["compiler_refusal"] else _gib(step["total_bytes"]))
            for step in sorted(search["compiles"], key=lambda step: step["batch_per_chip"])
        )
        rows.append(("largest batch", f"{largest if largest else 'none'} per chip (power of "
                     f"two; compiled {tried}; {search['seconds']:.0f} s)"))  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _memory(step: dict) -> str:
    if step["compiler_refusal"]:
        return f"refused by the TPU compiler: {step['compiler_refusal']}"
    return (
        f"{_gib(step['total_bytes'])} per chip: arguments {_gib(step['arguments_bytes'])}, "
        f"temporaries {_gib(step['temporaries_bytes'])}, outputs {_gib(step['outputs_bytes'])}"
        + (f" ({_gib(step['aliased_bytes'])} of them over donated arguments)"
           if step["aliased_bytes"] else "")
    )  # fmt: skip


if __name__ == "__main__":
    main()
