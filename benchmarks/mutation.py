"""Mutation testing of the recipe code: does each realistic one-line bug fail a test?

    python -m benchmarks.mutation                        # every mutant, this tree
    python -m benchmarks.mutation --module optim.py      # one module's mutants (repeatable)
    python -m benchmarks.mutation --bug Nesterov         # mutants whose bug names this
    python -m benchmarks.mutation --tree /tmp/old --json before.json

The mutants and the tests each module answers to are listed in benchmarks/mutants.py. The
tree is copied once to a temporary directory; each mutant is written there alone, the
module's test files run against it (pytest -x -q, the copy first on PYTHONPATH, so
subprocesses run the mutant too), and the file restored. A failing run kills the mutant; a
passing one lets it survive. One mutant at a time: the machine's other work keeps its cores.
Test files the tree lacks are left out (for a tree from before they were written). The
report gives the kill rate per module and names every survivor; a mutant listed as equivalent
(with the reason it computes the same) is named, not run. mutmut and cosmic-ray mutate
operators blindly: hundreds of mutants per module, each costing a JAX compilation, where a
listed bug of the paper's recipe costs one.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.mutants import MUTANTS, TESTS, TWO_PROCESS, Mutant

ROOT = pathlib.Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache",
                                 "site", "results", "notebooks")  # fmt: skip


def check_applies(tree: pathlib.Path, mutant: Mutant) -> str | None:
    """None if the mutant's text occurs exactly once in its module, else why not."""
    count = (tree / mutant.module).read_text().count(mutant.before)
    if count == 1:
        return None
    return f"stale: its text occurs {count} times in {mutant.module}"


def run_mutant(copy: pathlib.Path, mutant: Mutant, timeout: int) -> dict:
    path = copy / mutant.module
    original = path.read_text()
    tests = [t for t in TESTS[mutant.module] if (copy / t.split("::")[0]).exists()]
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               f"--deselect={TWO_PROCESS}", *tests]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(copy)}
    env.pop("VGG_JAX_STRICT_SKIPS", None)
    start = time.monotonic()
    path.write_text(original.replace(mutant.before, mutant.after))
    try:
        result = subprocess.run(command, check=False, cwd=copy, env=env, capture_output=True,
                                text=True, timeout=timeout)  # fmt: skip
        killed, tail = result.returncode != 0, result.stdout.strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        killed, tail = True, [f"timed out after {timeout} s (counted as killed)"]
    finally:
        path.write_text(original)
    return {"module": mutant.module, "bug": mutant.bug, "killed": killed, "tests": tests,
            "seconds": round(time.monotonic() - start, 1), "pytest": " ".join(tail)}  # fmt: skip


def summary(results: list[dict]) -> str:
    per_module = collections.defaultdict(list)
    for result in results:
        per_module[result["module"]].append(result)
    lines = ["| module | killed | mutants | kill rate | survivors |", "|---|---|---|---|---|"]
    for module, rows in per_module.items():
        ran = [r for r in rows if "stale" not in r and "equivalent" not in r]
        killed = sum(r["killed"] for r in ran)
        survivors = "; ".join(r["bug"] for r in ran if not r["killed"]) or "-"
        rate = f"{100 * killed / len(ran):.0f}%" if ran else "-"
        lines.append(f"| {module} | {killed} | {len(ran)} | {rate} | {survivors} |")
    stale = [f"{r['module']}: {r['bug']} ({r['stale']})" for r in results if "stale" in r]
    same = [f"{r['module']}: {r['bug']} ({r['equivalent']})" for r in results if "equivalent" in r]
    return "\n".join(lines + [f"Stale mutant, not run: {s}" for s in stale]
                     + [f"Equivalent mutant, not run: {s}" for s in same])  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=pathlib.Path, default=ROOT, help="the tree to mutate")
    parser.add_argument("--module", action="append", help="only modules whose path ends so")
    parser.add_argument("--bug", action="append", help="only mutants whose bug contains this")
    parser.add_argument("--json", type=pathlib.Path, help="write every result here too")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = parser.parse_args(argv)
    modules = tuple(args.module or ())
    mutants = [m for m in MUTANTS if not modules or m.module.endswith(modules)]
    mutants = [m for m in mutants if not args.bug or any(b in m.bug for b in args.bug)]
    if not mutants:
        parser.error(f"No mutant matches --module {args.module} and --bug {args.bug}.")
    results = []
    with tempfile.TemporaryDirectory(prefix="vgg_jax_mutation_") as temp:
        copy = pathlib.Path(temp) / "tree"
        shutil.copytree(args.tree, copy, ignore=IGNORED)
        for number, mutant in enumerate(mutants, 1):
            problem = check_applies(copy, mutant)
            if problem:
                result = {"module": mutant.module, "bug": mutant.bug, "stale": problem}
            elif mutant.equivalent:
                result = {"module": mutant.module, "bug": mutant.bug,
                          "equivalent": mutant.equivalent}  # fmt: skip
            else:
                result = run_mutant(copy, mutant, args.timeout)
            results.append(result)
            verdict = ("stale" if problem else "equivalent, not run" if mutant.equivalent
                       else "killed" if result["killed"] else "SURVIVED")  # fmt: skip
            print(f"[{number}/{len(mutants)}] {verdict}: {mutant.module}: {mutant.bug}"
                  f" ({result.get('seconds', 0)} s)", flush=True)  # fmt: skip
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
