"""Timing shared by the benchmark's sections: images/s over repetitions, rows, progress."""

from __future__ import annotations

import statistics
import sys
import time


def timed_rate(run, steps: int, repeats: int, images_per_step: int) -> dict:
    """Images/s over `repeats` timed calls of run(steps) after one untimed warm-up call.

    run(n) must return only once the device has finished its n steps.
    """
    run(max(1, steps // 2))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        seconds.append(time.perf_counter() - start)
    rates = [images_per_step * steps / s for s in seconds]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "repeats": repeats,
        "steps": steps,
    }


def result_row(framework: str, mode: str, batch: int, rate: dict, flops_per_image) -> dict:
    """One measured row; flops_per_image None means 'the model's, as vgg_jax counts them'."""
    return {
        "framework": framework,
        "mode": mode,
        "batch": batch,
        "images_per_second": rate,
        "flops_per_image": flops_per_image,
    }


def print_progress(row: dict) -> None:
    rate = row["images_per_second"]
    print(
        f"  {row['framework']} {row.get('variant', '')} {row['mode']} batch {row['batch']}: "
        f"{rate['median']:,.1f} images/s ({rate['min']:,.1f}-{rate['max']:,.1f})",
        file=sys.stderr,
        flush=True,
    )
