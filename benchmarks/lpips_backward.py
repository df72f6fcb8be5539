"""Where LPIPS's forward + backward (the gradient with respect to the first image: LPIPS as a
loss) spends its time on CPU, vgg_jax against the `lpips` package (PyTorch, eager).

    python -m benchmarks.lpips_backward                  # 256x256, 4 pairs, CPU
    python -m benchmarks.lpips_backward --quick          # 16x16, 1 pair: a check that it runs

a. each VGG16 convolution to conv5_3 alone on --batch images, forward and input gradient,
   `lax.conv_general_dilated` (its VJP) against `torch.nn.functional.conv2d` (`conv2d_input`);
b. max pooling's forward + backward on LPIPS's four pooled maps, XLA against PyTorch;
c. a jax.profiler trace of the compiled LPIPS gradient, its per-operation events (the CPU
   runtime's thunks, named after the compiled HLO's instructions) grouped by what each
   computes, against torch.profiler's operators (self time) of lpips's forward + backward;
   and the batch of the compiled graph's convolutions, weight gradients included.
Random weights, float32; each figure the median (range) of --repeats runs, vgg_jax and PyTorch
interleaved, after a warm-up. Profiled times include the profilers' overhead.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import statistics
import tempfile
import time

from benchmarks.profile_summary import GROUPS, attribute, find_trace, hlo_groups

POOLED = ((1, 64), (2, 128), (4, 256), (8, 512))  # LPIPS's pool1..pool4 inputs: (divisor, C)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side, pixels")
    parser.add_argument("--batch", type=int, default=4, help="pairs (images for a. and b.)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each figure")
    parser.add_argument("--quick", action="store_true", help="16x16, 1 pair, 1 repeat")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeats = 16, 1, 1
    return args


def summary(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def interleaved(functions: dict, repeats: int) -> dict:
    """{name: seconds summary} of each zero-argument function (which must return only when
    its work is done), all warmed up once, then run in turn `repeats` times."""
    for function in functions.values():
        function()
    seconds = collections.defaultdict(list)
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)
    return {name: summary(values) for name, values in seconds.items()}


def conv_probe(args) -> dict:
    """a. {layer: {jax forward, torch forward, jax input-gradient, torch input-gradient}}."""
    import jax
    import numpy as np
    import torch

    from vgg_jax.model.architectures import layer_specs

    def conv(x, w):
        dimensions = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dimensions)

    forward = jax.jit(conv)
    input_grad = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    rng, layers, side, cin = np.random.default_rng(0), {}, args.size, 3
    for spec in layer_specs("D")[:-1]:  # to conv5_3, before pool5
        if spec.kind == "pool":
            side //= 2
            continue
        name, cout = spec.name, spec.features
        x = rng.standard_normal((args.batch, side, side, cin), np.float32)
        w = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
        g = rng.standard_normal((args.batch, side, side, cout), np.float32)
        jx, jw, jg = (jax.device_put(a) for a in (x, w, g))
        tx, tg = (torch.from_numpy(a.transpose(0, 3, 1, 2).copy()) for a in (x, g))
        tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())

        def torch_input_grad(tx=tx, tw=tw, tg=tg):
            return torch.nn.grad.conv2d_input(tx.shape, tw, tg, padding=1)

        with torch.no_grad():
            layers[name] = interleaved({
                "jax forward": lambda: forward(jx, jw).block_until_ready(),
                "torch forward": lambda: torch.nn.functional.conv2d(tx, tw, padding=1),
                "jax input-gradient": lambda: input_grad(jx, jw, jg).block_until_ready(),
                "torch input-gradient": torch_input_grad,
            }, args.repeats)  # fmt: skip
        cin = cout
    return layers


def pool_probe(args) -> dict:
    """b. max pooling 2x2 forward + backward on the four pooled maps, summed per repeat."""
    import jax
    import numpy as np
    import torch

    from vgg_jax.model.layers import max_pool_2x2

    rng = np.random.default_rng(1)
    maps = [rng.standard_normal((args.batch, args.size // d, args.size // d, c), np.float32)
            for d, c in POOLED]  # fmt: skip
    jax_maps = [jax.device_put(m) for m in maps]
    cotangents = [jax.device_put(np.ones_like(m[:, ::2, ::2])) for m in maps]
    pool_grad = jax.jit(lambda x, g: jax.vjp(max_pool_2x2, x)[1](g)[0])
    torch_maps = [torch.from_numpy(m.transpose(0, 3, 1, 2).copy()) for m in maps]

    def jax_run():
        for x, g in zip(jax_maps, cotangents, strict=True):
            pool_grad(x, g).block_until_ready()

    def torch_run():
        for x in torch_maps:
            x = x.clone().requires_grad_(True)
            torch.nn.functional.max_pool2d(x, 2, 2).sum().backward()

    return interleaved({"jax max-pool forward+backward": jax_run,
                        "torch max-pool forward+backward": torch_run}, args.repeats)  # fmt: skip


def lpips_pair(args):
    """(vgg_jax's jitted LPIPS gradient and its inputs, lpips's forward + backward): both on
    --batch pairs, random weights."""
    import jax
    import lpips
    import torch

    import vgg_jax
    from vgg_jax.perceptual import LPIPS

    module = LPIPS(vgg_jax.vgg16())
    keys = jax.random.split(jax.random.key(0), 3)
    shape = (args.batch, args.size, args.size, 3)
    images0, images1 = (jax.random.uniform(k, shape, minval=-1, maxval=1) for k in keys[:2])
    variables = jax.jit(module.init)(keys[2], images0, images1)
    gradient = jax.jit(jax.grad(lambda v, x, y: module.apply(v, x, y).sum(), argnums=1))
    inputs = (variables, images0, images1)
    torch.manual_seed(0)
    model = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False).eval()
    model.requires_grad_(False)  # its linear layers' weights would get gradients otherwise
    torch0, torch1 = (torch.rand(args.batch, 3, args.size, args.size) * 2 - 1 for _ in "01")

    def torch_step():
        image = torch0.clone().requires_grad_(True)
        model(image, torch1).sum().backward()

    return gradient, inputs, torch_step


def jax_profile(gradient, inputs, directory: pathlib.Path) -> tuple[dict, float, dict]:
    """({group: ms}, wall ms, facts) of one traced call of the compiled gradient."""
    import jax

    groups, facts = hlo_groups(gradient.lower(*inputs).compile().as_text())
    jax.profiler.start_trace(str(directory))
    start = time.perf_counter()
    jax.block_until_ready(gradient(*inputs))
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    trace = json.load(gzip.open(find_trace(directory)))
    spans = [(e["ts"], e["ts"] + e["dur"], groups[e["name"]]) for e in trace["traceEvents"]
             if e.get("ph") == "X" and "dur" in e and e.get("name") in groups]  # fmt: skip
    facts["per-op events"] = len(spans)
    facts["overlap (summed op time / attributed)"] = sum(b - a for a, b, _ in spans) / 1e3
    times = attribute(spans)
    facts["overlap (summed op time / attributed)"] /= max(sum(times.values()), 1e-9)
    return times, wall * 1e3, facts


def torch_group(name: str) -> str:
    if not name.startswith("aten::"):
        return "other"  # the autograd engine's own bookkeeping
    if "conv" in name:  # no weight requires a gradient (lpips_pair): backward is the input's
        return "convolution input-gradient" if "backward" in name else "convolution forward"
    if "pool" in name:
        return "pooling and its gradient"
    if re.search(r"copy|clone|contiguous|cat\b|permute|transpose|expand", name):
        return "copies and transposes"
    return "elementwise and reductions"


def torch_profile(torch_step) -> tuple[dict, float]:
    """({group: ms of the operators' self time}, wall ms) of one profiled call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        torch_step()
        wall = time.perf_counter() - start
    times = dict.fromkeys(GROUPS, 0.0)
    for average in profiler.key_averages():
        times[torch_group(average.key)] += average.self_cpu_time_total / 1e3
    return times, wall * 1e3


def whole_graph(args) -> dict:
    """c. the two profiles, each group's ms in --repeats interleaved calls, and the unprofiled
    wall time of both."""
    gradient, inputs, torch_step = lpips_pair(args)
    walls = interleaved({
        "jax forward+backward": lambda: gradient(*inputs).block_until_ready(),
        "torch forward+backward": torch_step,
    }, args.repeats)  # fmt: skip
    runs = collections.defaultdict(lambda: collections.defaultdict(list))
    with tempfile.TemporaryDirectory() as temporary:
        for repeat in range(args.repeats):
            folder = pathlib.Path(temporary) / str(repeat)
            times, wall, facts = jax_profile(gradient, inputs, folder)
            for group, ms in [*times.items(), ("profiled wall", wall)]:
                runs["jax"][group].append(ms)
            times, wall = torch_profile(torch_step)
            for group, ms in [*times.items(), ("profiled wall", wall)]:
                runs["torch"][group].append(ms)
    profiles = {side: {group: summary(values) for group, values in groups.items()}
                for side, groups in runs.items()}  # fmt: skip
    return {"wall seconds": walls, "profile ms": profiles, "facts": facts}


def spread(figure: dict, scale: float = 1.0, digits: int = 0) -> str:
    low, mid, high = (figure[k] * scale for k in ("min", "median", "max"))
    return f"{mid:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def print_report(results: dict, args) -> None:
    columns = ("jax forward", "torch forward", "jax input-gradient", "torch input-gradient")
    print(f"a. VGG16's convolutions alone, {args.batch} images of {args.size}x{args.size}, ms:\n"
          f"  {'layer':8}" + "".join(f"{c:>23}" for c in columns))  # fmt: skip
    for layer, row in results["convolutions"].items():
        print(f"  {layer:8}" + "".join(f"{spread(row[c], 1e3, 1):>23}" for c in columns))
    totals = results["convolution totals ms"] = {
        c: 1e3 * sum(row[c]["median"] for row in results["convolutions"].values()) for c in columns
    }
    print("  summed medians: " + ", ".join(f"{c} {ms:,.0f}" for c, ms in totals.items()))
    print(f"b. max pooling forward + backward, pool1-pool4, {args.batch} images, ms:")
    for name, figure in results["pooling"].items():
        print(f"  {name:36} {spread(figure, 1e3, 1)}")
    whole = results["whole graph"]
    print(f"c. LPIPS forward + backward, {args.batch} pairs of {args.size}x{args.size}, ms:")
    for name, figure in whole["wall seconds"].items():
        print(f"  {name + ', unprofiled':36} {spread(figure, 1e3)}")
    sides = whole["profile ms"]["jax"], whole["profile ms"]["torch"]
    sums = [sum(side[g]["median"] for g in GROUPS) for side in sides]
    print(f"  {'profiled, by group (share)':36}{'vgg_jax (XLA ops, attributed)':>32}"
          f"{'lpips (torch ops, self time)':>32}")  # fmt: skip
    for group in (*GROUPS, "profiled wall"):
        cells = [spread(side[group]) + (f" {100 * side[group]['median'] / total:3.0f}%"
                                        if group in GROUPS else "     ")
                 for side, total in zip(sides, sums, strict=True)]  # fmt: skip
        print(f"  {group:36}" + "".join(f"{cell:>32}" for cell in cells))
    print(f"  {'sum of the groups':36}{sums[0]:>27,.0f}{sums[1]:>32,.0f}")
    for fact, value in whole["facts"].items():
        if isinstance(value, list):
            value = f"{len(value)}" + (f", batch {sorted(set(value))}" if value else "")
        print(f"  vgg_jax's compiled graph, {fact}: {value:.2f}x" if isinstance(value, float)
              else f"  vgg_jax's compiled graph, {fact}: {value}")  # fmt: skip
    print(f"  (images that need a gradient: {args.batch}; both images of a pair: {2 * args.batch})")


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    load = os.getloadavg()[0]
    results = {"size": args.size, "batch": args.batch, "repeats": args.repeats, "cores": cores,
               "load average before": load}  # fmt: skip
    print(f"On {cores} cores, load average {load:.2f} (1 min) before; medians (ranges) of "
          f"{args.repeats} runs, vgg_jax and PyTorch {torch.__version__} interleaved.")
    results["convolutions"] = conv_probe(args)
    results["pooling"] = pool_probe(args)
    results["whole graph"] = whole_graph(args)
    print_report(results, args)
    results["load average after"] = os.getloadavg()[0]
    print(f"Load average {results['load average after']:.2f} (1 min) after.")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
