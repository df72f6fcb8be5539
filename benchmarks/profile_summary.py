"""Where device time goes in a JAX profiler trace (the *.trace.json.gz jax.profiler writes).

    python -m benchmarks.profile_summary runs/profile [--top 25] [--steps 3]

For every device timeline (a GPU's streams and its "XLA Ops" line), the total busy time and
the events that took the most of it, grouped by name, per training step when --steps is given.
For a CPU trace, hlo_groups and attribute group its per-operation events by what each
compiled instruction computes (benchmarks.lpips_backward).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys

GROUPS = (
    "convolution forward", "convolution input-gradient", "convolution weight-gradient",
    "pooling and its gradient", "elementwise and reductions", "copies and transposes", "other",
)  # fmt: skip


def find_trace(path: pathlib.Path) -> pathlib.Path:
    if path.is_file():
        return path
    traces = sorted(path.rglob("*.trace.json.gz"))
    if not traces:
        raise SystemExit(f"No *.trace.json.gz under {path}; pass the --profile directory.")
    return traces[-1]


def device_timelines(trace: dict) -> dict[tuple[str, str], list[dict]]:
    """Complete ('X') events grouped by (process name, thread name), device processes only."""
    names = {}
    threads = {}
    for event in trace["traceEvents"]:
        if event.get("ph") == "M" and event.get("name") == "process_name":
            names[event["pid"]] = event["args"]["name"]
        if event.get("ph") == "M" and event.get("name") == "thread_name":
            threads[(event["pid"], event["tid"])] = event["args"]["name"]
    timelines = collections.defaultdict(list)
    for event in trace["traceEvents"]:
        if event.get("ph") != "X" or "dur" not in event:
            continue
        process = names.get(event["pid"], str(event["pid"]))
        if "/device:" not in process or "CPU" in process:
            continue
        thread = threads.get((event["pid"], event["tid"]), str(event["tid"]))
        timelines[(process, thread)].append(event)
    return timelines


def summarize(path: pathlib.Path, top: int, steps: int) -> str:
    trace = json.load(gzip.open(find_trace(path)))
    lines = []
    for (process, thread), events in sorted(device_timelines(trace).items()):
        total = sum(e["dur"] for e in events)
        by_name = collections.Counter()
        counts = collections.Counter()
        for event in events:
            by_name[event["name"]] += event["dur"]
            counts[event["name"]] += 1
        lines.append(
            f"== {process} / {thread}: {len(events)} events, {total / 1e3 / steps:,.2f} ms per step"
        )
        for name, duration in by_name.most_common(top):
            lines.append(
                f"  {duration / 1e3 / steps:9.3f} ms {100 * duration / total:5.1f}% "
                f"x{counts[name] // steps:<4d} {name[:110]}"
            )
    return "\n".join(lines)


def hlo_groups(hlo_text: str) -> tuple[dict, dict]:
    """({entry instruction: group}, {kind of convolution: their batch sizes}) of a compiled
    module's HLO text: each instruction of the entry computation is one thunk in the trace,
    grouped by what it (or the fusion it calls) computes."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = "ENTRY" if header.group(1) else header.group(2)
            bodies[current] = []
        elif current is not None:
            bodies[current].append(line)
    kernels = {tuple(sorted(map(int, dims.split(","))))
               for dims in re.findall(r"f32\[(3,3,\d+,\d+)\]\S* parameter", hlo_text)}
    groups, batches = {}, {"forward": [], "input-gradient": [], "weight-gradient": []}
    for line in bodies["ENTRY"]:
        match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.*?)[\]})] ([a-z][\w\-]*)\(", line)
        if not match:
            continue
        name, shape, opcode = match.groups()
        called = re.search(r"calls=%([\w.\-]+)", line)
        text = "\n".join(bodies.get(called.group(1), [])) + line if called else line
        convolutions = re.findall(r"= f32\[([\d,]*)\]\S* convolution\(", text)
        for output in convolutions:  # a fusion may hold several
            dims = [int(d) for d in output.split(",")]
            kind = "input-gradient" if "transpose(jvp(" in line else "forward"
            kind = "weight-gradient" if tuple(sorted(dims)) in kernels else kind
            groups[name] = f"convolution {kind}"
            batches[kind].append(dims[0])
        if convolutions:
            continue
        if re.search(r"reduce-window|select-and-scatter|scatter\(|iota", text) or (
            shape.lstrip("(").startswith("s32")  # the max-pool gradient's argmax indices
        ):
            groups[name] = "pooling and its gradient"
        elif re.search(r"transpose|copy", name) or opcode in ("copy", "transpose"):
            groups[name] = "copies and transposes"
        elif opcode not in ("parameter", "constant", "get-tuple-element", "bitcast", "tuple"):
            elementwise = opcode in ("fusion", "reduce", "add", "multiply", "broadcast")
            groups[name] = "elementwise and reductions" if elementwise else "other"
    return groups, {f"{kind} convolutions": sizes for kind, sizes in batches.items()}


def attribute(spans) -> dict:
    """{group: ms} of (start, end, group) spans in microseconds that may overlap (the thunk
    runtime runs independent operations at once): each instant's time is shared among the
    spans running then, so the groups add up to the time anything ran."""
    times = dict.fromkeys(GROUPS, 0.0)
    edges = sorted({t for a, b, _ in spans for t in (a, b)})
    starts = sorted(spans)
    active, index = [], 0
    for left, right in zip(edges, edges[1:]):
        while index < len(starts) and starts[index][0] <= left:
            active.append(starts[index])
            index += 1
        active = [span for span in active if span[1] > left]
        for _, _, group in active:
            times[group] += (right - left) / 1e3 / len(active)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", type=pathlib.Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--steps", type=int, default=3, help="steps the trace holds")
    args = parser.parse_args(argv)
    print(summarize(args.path, args.top, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
