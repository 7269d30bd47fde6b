"""Build benchmarks for docs/benchmarks.md ("Build" section). Not a test: run it by hand.

    .venv/bin/python tests/build/bench_build.py [--cold] [--target hopper-cu130] [--bnb-source PATH]

--cold first removes the bases, every imagefactory image and BuildKit's whole cache (pip downloads
included), so the build starts from an empty Docker. Then: bootstrap, build (no gate), gate, a no-op
rebuild, a rebuild after a change to probe/ only (made in a copy of the build context, never in the
repository), and the sizes: image vs the installed Python packages, the bitsandbytes library, the
Triton cache. Prints a markdown block.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from imagefactory.build.bootstrap import BASES, bootstrap
from imagefactory.build.docker import detect, image_inspect
from imagefactory.build.gate import gate_image
from imagefactory.build.images import BuildOptions, build_one
from imagefactory.plan.expand import resolve_target
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.render import REPO_ROOT

SITE = "/opt/venv/lib/python3.11/site-packages"


def timed(label: str, fn, rows: list[tuple[str, str]]):
    start = time.monotonic()
    result = fn()
    rows.append((label, f"{time.monotonic() - start:.0f} s"))
    return result


def in_image(docker: str, image: str, script: str) -> str:
    return subprocess.run([docker, "run", "--rm", "--network", "none", image, "sh", "-c", script],
                          capture_output=True, text=True, check=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="hopper-cu130")
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--bnb-source", type=Path)
    args = parser.parse_args()
    client = detect()
    docker = client.executable
    target = resolve_target(load_matrix(REPO_ROOT / "matrix.yaml"), args.target)
    rows: list[tuple[str, str]] = []
    opts = BuildOptions(release="bench", gate=False, show_output=False, bnb_source=args.bnb_source)

    if args.cold:
        images = subprocess.run([docker, "images", "-q", "--filter", "reference=imagefactory*"], capture_output=True,
                                text=True, check=True).stdout.split()
        subprocess.run([docker, "image", "rm", "-f", *sorted(set(images)), *(s.ref for s in BASES)], capture_output=True, check=False)
        subprocess.run([docker, "builder", "prune", "-af"], capture_output=True, check=True)
        timed("bootstrap both bases (mmdebstrap + import)", lambda: bootstrap(client), rows)

    first = timed(f"build {target.id}{' (cold: empty Docker and pip cache)' if args.cold else ''}",
                  lambda: build_one(client, target, opts), rows)
    assert first.ok, first.reason
    rows.append(("  bitsandbytes from", first.bnb_source or "?"))
    gated = timed("gate, CPU mode (probe + smoke in the image)",
                  lambda: gate_image(client, target, first.image_id, release="bench", gpus=False), rows)
    rows.append(("  gate result", "passed" if gated.passed else "failed: " + "; ".join(gated.failing)[:200]))
    again = timed("no-op rebuild (goal <= 15 s)", lambda: build_one(client, target, opts), rows)
    assert again.ok, again.reason

    with tempfile.TemporaryDirectory(prefix="bench-ctx-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(REPO_ROOT / "probe", ctx / "probe", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO_ROOT / ".dockerignore", ctx / ".dockerignore")
        timed("rebuild with the same probe/ in a copied context", lambda: build_one(client, target, BuildOptions(
            release="bench", gate=False, show_output=False, root=ctx, bnb_source=args.bnb_source, reports_dir=ctx / "r")), rows)
        with (ctx / "probe" / "__init__.py").open("a") as f:
            f.write(f"# benchmark: a change to probe/ only ({time.time_ns()})\n")  # unique: never a cache hit
        changed = timed("rebuild after a change to probe/ only (goal <= 60 s)", lambda: build_one(client, target, BuildOptions(
            release="bench", gate=False, show_output=False, root=ctx, bnb_source=args.bnb_source, reports_dir=ctx / "r")), rows)
        log = (ctx / "r" / target.id / "build.log").read_text().splitlines()
        names = {line.split()[0]: line.split("]")[0].split("[", 1)[1] for line in log
                 if line.startswith("#") and " [" in line and "internal" not in line and "] FROM " not in line}
        cached = {line.split()[0] for line in log if line.endswith(" CACHED")}
        rebuilt = sorted(name for step, name in names.items() if step not in cached)
        rows.append(("  steps run (not cached)", ", ".join(rebuilt)))
        rows.append(("  steps cached", str(len(cached & set(names)))))
        subprocess.run([docker, "image", "rm", changed.image_id], capture_output=True, check=False)

    image = first.image_id
    size = image_inspect(client, image)["Size"]
    packages = int(in_image(docker, image, f"du -sb {SITE} | cut -f1"))
    venv = int(in_image(docker, image, "du -sb /opt/venv | cut -f1"))
    cache = in_image(docker, image, "du -sb /opt/triton-cache | cut -f1; find /opt/triton-cache -type f | wc -l")
    libs = in_image(docker, image, f"ls -l {SITE}/bitsandbytes/ | grep libbitsandbytes_ | awk '{{print $5, $9}}'")
    rows += [
        ("image size (docker image inspect)", f"{size / 1e9:.2f} GB"),
        ("installed Python packages (site-packages)", f"{packages / 1e9:.2f} GB (/opt/venv {venv / 1e9:.2f} GB)"),
        ("image / packages (goal <= 1.15)", f"{size / packages:.3f}"),
        ("bitsandbytes libraries in the image", "; ".join(libs.splitlines())),
        ("Triton cache (bytes, files)", ", ".join(cache.split())),
    ]
    print(f"\nMachine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores; docker {client.server_version} ({client.mode})\n")
    print("| step | figure |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
