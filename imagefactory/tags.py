"""The names a gated image gets: release check, floating and immutable tags (one place for build,
gate and push).

hopper-cu130 at release `20261127` → immutable `hopper-cu130-torch2.14.1-20261127` (planning's
`immutable_tag`), floating `hopper-cu130`, `hopper-cu130-latest` (`Target.tags`). The gate tags locally
with these names, push publishes them, and `probe select` parses exactly these shapes.

The grammar itself (what a target id, a floating and an immutable tag look like) is being gathered into
`probe/tags.py` (stdlib, shared with the probe); this module only builds names from a target and checks
the one value a user types here, the release. A bad release is a usage error (exit 2), refused before
any build, gate or push starts.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

from imagefactory.errors import UsageError
from imagefactory.plan.model import Target, immutable_tag

RELEASE_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z._]{0,40}")


def default_release(now: _dt.datetime | None = None) -> str:
    """Release version when none is given: the UTC date, `20261127`."""
    return (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%d")


def check_release(release: str) -> str:
    """The release unchanged, or UsageError naming what is wrong with it."""
    if not RELEASE_PATTERN.fullmatch(release):
        raise UsageError(f"release {release!r}: use letters, digits, '.' or '_' (e.g. 20261127 or 1.2.0)")
    if release.lower() == "latest":
        # `<id>-torch<v>-latest` would be an immutable tag that reads as a floating one (and does so to
        # probe select, which treats a trailing -latest as floating).
        raise UsageError(f"release {release!r}: 'latest' is a floating name; immutable tags need a version or date")
    return release


def release_or_today(release: str | None) -> str:
    """--release as given (checked), else today's UTC date."""
    return default_release() if release is None else check_release(release)


@dataclass(frozen=True)
class ReleaseTags:
    immutable: str
    floating: tuple[str, ...]


def release_tags(target: Target, release: str) -> ReleaseTags:
    """The tags (without the repository) one release of this target is published under."""
    return ReleaseTags(immutable_tag(target, check_release(release)), tuple(target.tags))


def gate_refs(target: Target, release: str) -> tuple[str, ...]:
    """Full references a passing image gets locally: floating ones, then the immutable one."""
    tags = release_tags(target, release)
    return tuple(f"{target.image_repo}:{tag}" for tag in (*tags.floating, tags.immutable))


def is_gate_ref(target: Target, ref: str) -> bool:
    """Whether `ref` is one of this target's gate tags (floating, or immutable of any release)."""
    floating = {f"{target.image_repo}:{tag}" for tag in target.tags}
    return ref in floating or ref.startswith(f"{target.image_repo}:{immutable_tag(target, '')}")
