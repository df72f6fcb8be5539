"""Where device time goes in a JAX profiler trace (the *.trace.json.gz jax.profiler writes).

    python -m benchmarks.profile_summary runs/profile [--top 25] [--steps 3]

For every device timeline (a GPU's streams and its "XLA Ops" line), the total busy time and
the events that took the most of it, grouped by name, per training step when --steps is given.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import sys


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
