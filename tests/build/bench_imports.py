"""Import time of the heavy modules in a built image: the first import in a fresh container vs the second.

    .venv/bin/python tests/build/bench_imports.py IMAGE [IMAGE…] [--modules transformers,trl,unsloth_zoo] [--runs 3]

Each run starts a new container (`--network none`, as the image's user) and imports each module twice in
two fresh interpreters, timing `import M` inside the interpreter. Prints a markdown table (median of the
runs) as recorded in docs/benchmarks.md ("Workload"). Also reports whether the .pyc files are hash-based.
A module that cannot be imported on the CPU (unsloth needs an accelerator) shows its error's first words.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SNIPPET = ("import json, time, warnings; warnings.filterwarnings('ignore'); t = time.perf_counter()\n"
           "try:\n    import {module}\n    out = round(time.perf_counter() - t, 2)\n"
           "except BaseException as exc:\n    out = type(exc).__name__ + ': ' + str(exc).split(chr(10))[0][:60]\n"
           "print(json.dumps(out))")


DRIVER = ("import json, subprocess, sys\n"
          "snippet, modules = json.loads(sys.argv[1])\n"
          "out = {}\n"
          "for m in modules:\n"
          "    runs = [subprocess.run([sys.executable, '-c', snippet.format(module=m)], capture_output=True, text=True)"
          " for _ in range(2)]\n"
          "    out[m] = [json.loads((r.stdout.strip().splitlines() or ['\"no output\"'])[-1]) for r in runs]\n"
          "print(json.dumps(out))")


def measure(docker: str, image: str, modules: list[str]) -> dict[str, list[object]]:
    """{module: [first, second]} from one fresh container (seconds, or the error's first words)."""
    done = subprocess.run([docker, "run", "--rm", "--network", "none", image, "python", "-c", DRIVER,
                           json.dumps([SNIPPET, modules])], capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{image}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--modules", default="transformers,trl,datasets,unsloth_zoo,unsloth")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    docker = os.environ.get("IMAGEFACTORY_DOCKER", "docker")
    modules = args.modules.split(",")
    print("| image | module | first import (s) | second import (s) |")
    print("|---|---|---|---|")
    for image in args.images:
        runs = [measure(docker, image, modules) for _ in range(args.runs)]
        for m in modules:
            firsts = [r[m][0] for r in runs]
            seconds = [r[m][1] for r in runs]
            if all(isinstance(v, float) for v in firsts + seconds):
                print(f"| {image} | {m} | {statistics.median(firsts):.2f} | {statistics.median(seconds):.2f} |")
            else:
                print(f"| {image} | {m} | {firsts[0]} | {seconds[0]} |")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
