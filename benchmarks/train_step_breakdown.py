"""Where one VGG training step's forward + backward (the gradient of the loss with respect to
every weight) spends its time on CPU: vgg_jax under both XLA:CPU settings against torchvision.

    python -m benchmarks.train_step_breakdown                # VGG16, 8 images of 224x224
    python -m benchmarks.train_step_breakdown --quick        # 32x32, 2 images: a check

vgg_jax is compiled twice, each with its own compiler option: with no YNNPACK fusions (what
`import vgg_jax` sets for the whole process) and with YNNPACK for each convolution alone. Each
side is traced once per repeat: vgg_jax with jax.profiler, its per-operation events (the CPU
runtime's thunks) grouped by what each compiled instruction computes
(benchmarks.profile_summary.hlo_groups); torchvision (channels_last) with torch.profiler, its
operators' self time. XLA's own convolutions emit no per-operation events: what the groups
leave of the profiled wall time is "not attributed". Random weights, float32, the median
(range) of --repeats; profiled times include the profilers' overhead.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import tempfile

from benchmarks.lpips_backward import interleaved, jax_profile, spread, summary

from vgg_jax.environment import YNN_CONVOLUTIONS_FOR_FLOAT64 as YNN_CONVOLUTIONS

NO_YNN_FUSIONS = {name: "" for name in YNN_CONVOLUTIONS}
TORCH_GROUPS = ("convolution forward", "convolution backward (both gradients)",
                "fully connected, forward and backward", "pooling and its gradient", "other")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vgg16", help="a vgg_jax and torchvision name")
    parser.add_argument("--size", type=int, default=224, help="image side, pixels")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--repeats", type=int, default=3, help="profiled runs of each side")
    parser.add_argument("--quick", action="store_true", help="32x32, 2 images, 1 repeat")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeats = 32, 2, 1
    return args


def jax_gradients(args):
    """{setting: jitted gradient}, and its inputs (variables, images, labels)."""
    import jax
    import optax

    import vgg_jax

    model = vgg_jax.create_model(args.model, num_classes=1000, dropout_rate=0.0)
    images = jax.random.normal(jax.random.key(1), (args.batch, args.size, args.size, 3))
    labels = jax.random.randint(jax.random.key(2), (args.batch,), 0, 1000)
    params = jax.jit(model.init)(jax.random.key(0), images)["params"]

    def loss(params, images, labels):
        logits = model.apply({"params": params}, images, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    gradients = {
        "vgg_jax, no YNNPACK fusions": jax.jit(jax.grad(loss), compiler_options=NO_YNN_FUSIONS),
        "vgg_jax, YNNPACK convolutions": jax.jit(jax.grad(loss), compiler_options=YNN_CONVOLUTIONS),
    }
    return gradients, (params, images, labels)


def torch_step_function(args):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None, dropout=0.0)
    model = model.to(memory_format=torch.channels_last).train()
    images = torch.randn(args.batch, 3, args.size, args.size).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch,))

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()

    return step


def torch_group(name: str) -> str:
    if re.search(r"convolution_backward", name):
        return "convolution backward (both gradients)"
    if re.search(r"conv", name):
        return "convolution forward"
    if re.search(r"addmm|\bmm\b|linear", name):
        return "fully connected, forward and backward"
    if "pool" in name:
        return "pooling and its gradient"
    return "other"


def torch_profile(step) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    times = dict.fromkeys(TORCH_GROUPS, 0.0)
    for average in profiler.key_averages():
        if average.key.startswith("aten::"):
            times[torch_group(average.key)] += average.self_cpu_time_total / 1e3
    return times


def breakdown(args) -> dict:
    gradients, inputs = jax_gradients(args)
    torch_step = torch_step_function(args)
    functions = {name: (lambda g=g: g(*inputs)["fc8"]["kernel"].block_until_ready())
                 for name, g in gradients.items()}  # fmt: skip
    walls = interleaved({**functions, "torchvision, channels_last": torch_step}, args.repeats)
    runs = collections.defaultdict(lambda: collections.defaultdict(list))
    with tempfile.TemporaryDirectory() as temporary:
        for repeat in range(args.repeats):
            for index, (name, gradient) in enumerate(gradients.items()):
                folder = pathlib.Path(temporary) / f"{repeat}-{index}"  # one trace in each
                times, wall, _ = jax_profile(gradient, inputs, folder)
                times["not attributed"] = max(wall - sum(times.values()), 0.0)
                for group, ms in times.items():
                    runs[name][group].append(ms)
            for group, ms in torch_profile(torch_step).items():
                runs["torchvision, channels_last"][group].append(ms)
    profiles = {side: {group: summary(values) for group, values in groups.items()}
                for side, groups in runs.items()}  # fmt: skip
    return {"wall seconds": walls, "profile ms": profiles}


def print_report(results: dict, args) -> None:
    print(f"{args.model} forward + backward, {args.batch} images of {args.size}x{args.size}, "
          f"float32, {len(os.sched_getaffinity(0))} cores, ms:")  # fmt: skip
    for name, figure in results["wall seconds"].items():
        print(f"  {name + ', unprofiled':48} {spread(figure, 1e3)}")
    for side, groups in results["profile ms"].items():
        total = sum(figure["median"] for figure in groups.values())
        print(f"  {side}, profiled, by group (share):")
        for group, figure in groups.items():
            print(f"    {group:44} {spread(figure):>22} {100 * figure['median'] / total:3.0f}%")
        print(f"    {'sum of the groups':44} {total:>22,.0f}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    results = breakdown(args)
    print_report(results, args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
