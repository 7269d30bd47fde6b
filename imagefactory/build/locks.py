"""Advisory locks for what several runs from one checkout share (docs/build.md, "Running several at once").

- `.build/.lock`: the staging area (the local bitsandbytes tree in `.build/bnb-src` travels in the build
  context). Held from staging until BuildKit has finished with the context; a second build waits for it.
- `reports/<target>/.lock`: one build or gate of a target at a time (they rewrite the same reports and
  tags); a second one is refused at once, naming the holder.

flock(2) locks vanish with the process, so a killed run leaves nothing to clean up. Re-entrant within a
process (build holds the target's lock while it calls the gate).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imagefactory.errors import UsageError
from imagefactory.log import echo

_HELD: set[Path] = set()


class BusyError(UsageError):
    """Another run holds what this one needs (exit 2: nothing was done; run it again later)."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    return f"pid {text}" if text.isdigit() else "another process"


@contextmanager
def hold(path: Path, *, wait: bool, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing). wait=False: BusyError when taken."""
    key = path.resolve()
    if key in _HELD:
        yield
        return
    if path.is_symlink():
        raise UsageError(f"{path}: is a symbolic link; remove it (locks are never taken through links)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise BusyError(f"{what} is in use by {_holder(path)} ({path}); one build or gate of a target at a time") from None
            echo(f"waiting for {_holder(path)} to release {what} ({path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)  # releases the lock


def target_lock(reports_dir: Path, target_id: str):
    """One build or gate of a target at a time (refused, not queued: the second would redo the first)."""
    return hold(reports_dir / target_id / ".lock", wait=False, what=f"{reports_dir / target_id}/")


def staging_lock(root: Path):
    """The staging area of one checkout (waits: builds of other targets take turns for the BuildKit build)."""
    return hold(root / ".build" / ".lock", wait=True, what=".build/ (the build staging area)")
