"""Checks of the container the probe runs in (standard library only): shared memory, the volume, free disk.

These fail a pod quietly otherwise: Docker's default /dev/shm (64 MB) kills DataLoader workers with a bus error
mid-epoch; a root-owned volume makes the first checkpoint save fail after hours; a full container disk breaks a
model download. Shared memory and disk are warnings (the run may still fit), an unwritable volume is a failure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from probe.results import Check, failed, one_line, passed, skipped, warned

GIB = 2**30
SHM_WARN_BELOW = 1 * GIB
WORKSPACE = Path("/workspace")
# Free space wanted where models and outputs land, without --model-size: an 8B model's bf16 weights (16 GB)
# with room for a checkpoint. With --model-size: its bf16 weights twice (download + a merged save) + 5 GiB.
DATA_FREE_DEFAULT = 20 * GIB
# On the container disk itself (pip installs, /tmp, caches when no volume is mounted).
CONTAINER_FREE_MIN = 5 * GIB


def _size(path: Path) -> tuple[int, int]:
    """(total, free) bytes of the filesystem holding path."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def shm(path: Path = Path("/dev/shm")) -> Check:
    name = "container.shm"
    try:
        total, _free = _size(path)
    except OSError as exc:
        return warned(name, f"{path} is missing ({exc.strerror}): DataLoader workers need it; run with --ipc=host")
    numbers = {"shm_bytes": total, "warn_below_bytes": SHM_WARN_BELOW}
    if total < SHM_WARN_BELOW:
        return warned(name, f"{path} is {total / 2**20:.0f} MiB: DataLoader workers (num_workers > 0) crash with "
                            "a bus error; run the container with --ipc=host (or --shm-size=16g)", **numbers)
    return passed(name, f"{path} is {total / GIB:.1f} GiB", **numbers)


def workspace(path: Path = WORKSPACE) -> Check:
    name = "container.workspace"
    if not path.is_dir():
        return skipped(name, f"no volume at {path}: caches and outputs stay in the container and go with it")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-write-"):
            pass
    except OSError as exc:
        return failed(name, f"{path} is not writable by uid {os.getuid()} ({exc.strerror}): outputs and caches "
                            "there will fail; make it writable (chown 1000 on the host) or mount another volume",
                      uid=os.getuid())
    total, free = _size(path)
    return passed(name, f"{path} is writable by uid {os.getuid()}, {free / GIB:.0f} of {total / GIB:.0f} GiB free",
                  free_bytes=free, total_bytes=total)


def data_dir(env: dict[str, str] | None = None) -> Path:
    """Where models land: HF_HOME, else the default Hugging Face cache (the nearest existing directory)."""
    env = dict(os.environ if env is None else env)
    path = Path(env.get("HF_HOME") or Path(env.get("HOME") or Path.home()) / ".cache" / "huggingface")
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def needed_for(params: int | None) -> int:
    return DATA_FREE_DEFAULT if params is None else 2 * 2 * params + 5 * GIB


def disk(params: int | None = None, data: Path | None = None, root: Path = Path("/")) -> Check:
    name = "container.disk"
    data = data or data_dir()
    need = needed_for(params)
    try:
        _t, data_free = _size(data)
        _t, root_free = _size(root)
    except OSError as exc:
        return skipped(name, f"cannot read free space: {one_line(exc)}")
    numbers = {"data_dir": str(data), "data_free_bytes": data_free, "data_need_bytes": need,
               "container_free_bytes": root_free, "container_need_bytes": CONTAINER_FREE_MIN}
    short = []
    if data_free < need:
        what = "an 8B model and a checkpoint" if params is None else f"a {params / 1e9:.1f}B model and a merged save"
        short.append(f"{data} has {data_free / GIB:.1f} GiB free, {need / GIB:.0f} GiB wanted for {what}")
    if root_free < CONTAINER_FREE_MIN and os.stat(root).st_dev != os.stat(data).st_dev:
        short.append(f"the container disk has {root_free / GIB:.1f} GiB free, {CONTAINER_FREE_MIN / GIB:.0f} GiB "
                     "wanted for pip installs and temporary files")
    if short:
        return warned(name, "; ".join(short), **numbers)
    return passed(name, f"{data_free / GIB:.0f} GiB free for models and outputs ({data}), "
                        f"{root_free / GIB:.0f} GiB on the container disk", **numbers)


def checks(params: int | None = None) -> list[Check]:
    out = []
    for step in (shm, workspace, lambda: disk(params)):
        try:
            out.append(step())
        except Exception as exc:  # a crashing check is a failed check, named
            out.append(failed("check.crashed", f"container check raised {one_line(exc)}"))
    return out
