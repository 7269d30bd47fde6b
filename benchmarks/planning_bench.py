"""Benchmark the planning layer: load + validate matrix.yaml, expand it, render every Dockerfile, emit outputs.

    .venv/bin/python benchmarks/planning_bench.py [--repeat 20]

Prints the median and best wall time of each step (cold caches: a fresh parse each repeat).
Figures are recorded in docs/benchmarks.md ("Planning"), with the machine they came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

from imagefactory.plan import outputs, render
from imagefactory.plan.expand import expand
from imagefactory.plan.matrix import load_matrix

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    steps: dict[str, list[float]] = {"load+validate+expand": [], "expand (uncached)": [], "render all": [],
                                     "outputs json+github+bake": [], "render --check (whole)": []}
    count = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        matrix = load_matrix(REPO / "matrix.yaml")  # load_matrix expands once; the Matrix carries the targets
        t1 = time.perf_counter()
        targets = expand(dataclasses.replace(matrix, targets=())).targets  # without them: expanded again
        t2 = time.perf_counter()
        rendered = render.render_all(targets)
        t3 = time.perf_counter()
        outputs.targets_json(targets), outputs.github_matrix(targets), outputs.bake_file(targets)
        t4 = time.perf_counter()
        render.check(rendered, REPO)
        t5 = time.perf_counter()
        count = len(targets)
        steps["load+validate+expand"].append(t1 - t0)
        steps["expand (uncached)"].append(t2 - t1)
        steps["render all"].append(t3 - t2)
        steps["outputs json+github+bake"].append(t4 - t3)
        steps["render --check (whole)"].append(t5 - t0)
    print(f"{count} targets, {args.repeat} repeats, python {platform.python_version()}, {platform.machine()}")
    for name, times in steps.items():
        print(f"  {name:28s} median {statistics.median(times) * 1000:8.1f} ms   best {min(times) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
