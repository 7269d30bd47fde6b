"""The layer plan of /opt/venv: which files of the one Python environment go into which image layer.

Why (issue 12, docs/build.md "Layers"): one 6 GB venv layer is pulled and decompressed as one stream, and
a per-SM bitsandbytes inside it makes every arch target carry its own copy. Split by what changes together,
big groups into parts of about equal bytes, so that a pull runs several streams, a payload bump re-sends
only its own layer, and targets of one toolkit + torch share every big layer:

    cuda-1..3     the NVIDIA (CUDA, cuDNN, NCCL, …) wheels        change with the toolkit + torch pin
    torch-1..2    torch and triton                                change with the torch pin
    python        everything else: the payload, the workload, bin/, the venv's own files
    bitsandbytes  the one per-target package (its native library is built for the target's SMs)

Each file is written with fixed times (VENV_EPOCH) and its mode; owners are root's. With the bytecode
compiled by source hash (unchecked-hash) the layers hold the same bytes whenever the installed files are.

Used twice: `render` reads LAYERS (the Dockerfile has one COPY per name), and the build runs this file as
a script in the `venv-layers` stage (standard library only, any Python 3.8+ of a base image):

    python3 venv_layers.py split /opt/venv /layers   → /layers/<name>/opt/venv/…
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import sys
from dataclasses import dataclass

VENV = "/opt/venv"
# 1980-01-01: the oldest time a zip (a wheel made from these files) can hold; one fixed value, so layers
# built on any day and machine agree.
VENV_EPOCH = 315532800


@dataclass(frozen=True)
class LayerGroup:
    """Files whose first path part under site-packages matches one of `patterns` (fnmatch), split into
    `parts` layers of about equal bytes; the group with no patterns takes everything else."""

    name: str
    parts: int
    patterns: tuple[str, ...]

    def layer_names(self) -> tuple[str, ...]:
        if self.parts == 1:
            return (self.name,)
        return tuple(f"{self.name}-{index}" for index in range(1, self.parts + 1))


# Bottom to top: the order of the COPY lines, so what changes least lies lowest.
GROUPS: tuple[LayerGroup, ...] = (
    LayerGroup("cuda", 3, ("nvidia", "nvidia_*", "nvidia-*", "cuda", "cuda_*", "cuda-*")),
    LayerGroup("torch", 2, ("torch", "torch-*", "torchgen", "functorch", "triton", "triton-*")),
    LayerGroup("python", 1, ()),
    LayerGroup("bitsandbytes", 1, ("bitsandbytes", "bitsandbytes-*")),
)
LAYERS: tuple[str, ...] = tuple(name for group in GROUPS for name in group.layer_names())
REST = next(group for group in GROUPS if not group.patterns)  # what no pattern claims


def group_of(relative: str) -> LayerGroup:
    """The group of a path relative to the venv (`lib/python3.11/site-packages/torch/__init__.py`)."""
    parts = relative.split("/")
    if len(parts) > 3 and parts[0] == "lib" and parts[2] == "site-packages":
        top = parts[3]
        for group in GROUPS:
            if any(fnmatch.fnmatchcase(top, pattern) for pattern in group.patterns):
                return group
    return REST


def plan(entries: list[tuple[str, int]]) -> dict[str, str]:
    """Layer name for each (relative path, size): each group's files in path order, cut into its parts
    where the running byte count crosses 1/parts, 2/parts, … of the group (a file lands by its middle)."""
    by_group: dict[str, list[tuple[str, int]]] = {}
    for relative, size in sorted(entries):
        by_group.setdefault(group_of(relative).name, []).append((relative, size))
    layer_of: dict[str, str] = {}
    for group in GROUPS:
        members = by_group.get(group.name, [])
        names = group.layer_names()
        total = sum(size for _, size in members) or 1
        running = 0
        for relative, size in members:
            index = min(group.parts - 1, int((running + size / 2) * group.parts // total))
            layer_of[relative] = names[index]
            running += size
    return layer_of


def _walk(venv: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(files and links with their sizes, directories) under venv, as paths relative to it; never follows links."""
    files: list[tuple[str, int]] = []
    directories: list[str] = []
    for root, dirs, names in os.walk(venv):
        dirs.sort()
        for name in dirs + sorted(names):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, venv)
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode):  # lstat: a link to a directory is a link, kept as one
                directories.append(relative)
            else:
                files.append((relative, info.st_size))
    return files, directories


def split(venv: str, out: str, epoch: int = VENV_EPOCH) -> dict[str, int]:
    """Copy venv into out/<layer>/opt/venv/… by the plan; returns bytes per layer. Every layer holds the
    directories above its files (same modes), and empty directories go with the python layer."""
    files, directories = _walk(venv)
    layer_of = plan(files)
    fallback = REST.layer_names()[0]
    inside = VENV.strip("/")  # where the runtime image holds it, wherever the source is mounted
    sizes = dict.fromkeys(LAYERS, 0)
    made: dict[str, set] = {name: set() for name in LAYERS}

    def make_dirs(layer: str, relative_dir: str) -> None:
        # every directory from the venv down to relative_dir, with the venv's modes
        chain = []
        while relative_dir not in ("", "."):
            chain.append(relative_dir)
            relative_dir = os.path.dirname(relative_dir)
        for relative in [""] + chain[::-1]:
            if relative in made[layer]:
                continue
            target = os.path.join(out, layer, inside, relative)
            os.makedirs(target, exist_ok=True)
            os.chmod(target, os.stat(os.path.join(venv, relative)).st_mode & 0o7777)
            made[layer].add(relative)

    for relative, size in files:
        layer = layer_of[relative]
        make_dirs(layer, os.path.dirname(relative))
        source = os.path.join(venv, relative)
        target = os.path.join(out, layer, inside, relative)
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        else:
            shutil.copyfile(source, target)
            os.chmod(target, os.stat(source).st_mode & 0o7777)
        sizes[layer] += size
    for relative in directories:
        if not any(relative in made[name] for name in LAYERS):
            make_dirs(fallback, relative)
    # Fixed times last (copying into a directory changes its mtime), links included; the parents of the
    # venv too: they are in each layer's tar.
    for name in LAYERS:
        top = os.path.join(out, name)
        os.makedirs(top, exist_ok=True)
        for root, dirs, names in os.walk(top):
            for entry in dirs + names:
                os.utime(os.path.join(root, entry), (epoch, epoch), follow_symlinks=False)
        os.utime(top, (epoch, epoch))
    return sizes


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "split":
        print("usage: venv_layers.py split VENV OUT", file=sys.stderr)
        return 2
    venv, out = argv[1], argv[2]
    if not os.path.isdir(venv):
        print(f"venv_layers.py: {venv}: no such directory", file=sys.stderr)
        return 2
    if os.path.exists(out) and os.listdir(out):
        print(f"venv_layers.py: {out}: not empty; refusing to mix layers", file=sys.stderr)
        return 2
    sizes = split(venv, out)
    total = sum(sizes.values()) or 1
    for name in LAYERS:
        print(f"layer {name:<13} {sizes[name] / 1e6:9.1f} MB  {100 * sizes[name] / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
