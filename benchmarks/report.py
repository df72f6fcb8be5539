"""The throughput benchmark's report: every row with TFLOP/s and the fraction of the measured
matrix peak, as results.json and the Markdown table for docs/performance.md."""

from __future__ import annotations

import json
import pathlib


def report_rows(results: dict) -> list[dict]:
    """Every measured row with TFLOP/s and the fraction of the measured matrix peak."""
    jax_result = results["sections"].get("jax", {})
    forward_flops = jax_result.get("forward_flops_per_image")
    peak = jax_result.get("matmul", {}).get("tflops", {}).get("median")
    rows = []
    for section in results["sections"].values():
        for row in section.get("rows", []):
            flops = row["flops_per_image"] or (
                forward_flops * (3 if row["mode"] == "train" else 1) if forward_flops else None
            )
            rate = row["images_per_second"]["median"]
            tflops = rate * flops / 1e12 if flops else None
            rows.append(
                row
                | {
                    "tflops": tflops,
                    "fraction_of_peak": tflops / peak if tflops and peak else None,
                }
            )
    return rows


def markdown(results: dict) -> str:
    jax_result = results["sections"].get("jax", {})
    env = jax_result.get("environment", {})
    torch_env = results["sections"].get("torch", {}).get("environment", {})
    lines = [
        f"Measured {results['date']} on {env.get('device', '?')} "
        f"(jax {env.get('jax', '?')}, flax {env.get('flax', '?')}"
        + "".join(f", {name} {version}" for name, version in torch_env.items() if name != "device")
        + f"); `{results['command']}`.",
        "",
        "| framework | variant | mode | batch | images/s (median) | min-max | TFLOP/s | of peak "
        "| first step (s) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report_rows(results):
        rate = row["images_per_second"]
        first = row.get("seconds_to_first_step")
        lines.append(
            f"| {row['framework']} | {row.get('variant', '')} | {row['mode']} | {row['batch']} "
            f"| {rate['median']:,.0f} | {rate['min']:,.0f}-{rate['max']:,.0f} "
            f"| {_fmt(row['tflops'], '.3g')} | {_fmt(row['fraction_of_peak'], '.0%')} "
            f"| {_fmt(first, '.1f')} |"
        )
    matmul = jax_result.get("matmul")
    if matmul:
        t = matmul["tflops"]
        lines += ["", f"bf16 matrix product {matmul['n']}^3: {t['median']:,.1f} TFLOP/s "
                  f"({t['min']:,.1f}-{t['max']:,.1f})."]  # fmt: skip
    max_batch = jax_result.get("max_batch")
    if max_batch:
        verified = {True: ", ran", False: ", failed to run"}.get(max_batch.get("verified"), "")
        lines.append(
            f"Largest training batch: about {max_batch['estimated']} "
            f"({max_batch['bytes_per_image'] / 2**20:,.1f} MiB per image over "
            f"{max_batch['fixed_bytes'] / 2**30:,.2f} GiB fixed, limit "
            f"{max_batch['limit'] / 2**30:,.1f} GiB{verified})."
        )
    for name, section in results["sections"].items():
        for key in ("skipped", "failed"):
            if key in section:
                lines.append(f"{name}: {key}: {section[key]}")
    return "\n".join(lines) + "\n"


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def write_results(results: dict, out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = results | {"report": report_rows(results)}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "results.md").write_text(markdown(results))
