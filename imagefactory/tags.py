"""The names a gated image gets, built from the one tag grammar (probe/tags.py) for build, gate and push.

hopper-cu130 at release `20261127` → immutable `hopper-cu130-torch2.14.1-20261127`, floating `hopper-cu130`,
`hopper-cu130-latest` (`Target.tags`). The gate tags locally with these names, push publishes them, and
`probe select` parses exactly these shapes with the same grammar. A bad release is a usage error (exit 2),
refused before any build, gate or push starts.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from imagefactory.errors import UsageError
from imagefactory.plan.model import Target, immutable_tag
from imagefactory.plan.platforms import HOST_PLATFORM, PLATFORMS, platform_suffix
from probe import tags as grammar


def default_release(now: _dt.datetime | None = None) -> str:
    """Release version when none is given: the UTC date, `20261127`."""
    return (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%d")


def check_release(release: str) -> str:
    """The release unchanged, or UsageError naming what is wrong with it."""
    problem = grammar.release_problem(release)
    if problem:
        raise UsageError(problem)
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


def gate_refs(target: Target, release: str, platform: str = HOST_PLATFORM) -> tuple[str, ...]:
    """Full references a passing image gets locally: floating ones, then the immutable one. A cross-built
    platform's end in its suffix (`imagefactory:hopper-cu130-arm64`): Docker's store holds one platform per name."""
    tags = release_tags(target, release)
    suffix = platform_suffix(platform)
    return tuple(f"{target.image_repo}:{tag}{suffix}" for tag in (*tags.floating, tags.immutable))


def is_gate_ref(target: Target, ref: str, platform: str = HOST_PLATFORM) -> bool:
    """Whether `ref` is one of this target's gate tags for `platform` (floating, or immutable of any release)."""
    suffix = platform_suffix(platform)
    others = [platform_suffix(p) for p in PLATFORMS if platform_suffix(p) and p != platform]
    if not ref.endswith(suffix) or any(ref.endswith(other) for other in others):
        return False
    ref = ref[: len(ref) - len(suffix)] if suffix else ref
    floating = {f"{target.image_repo}:{tag}" for tag in target.tags}
    prefix = f"{target.image_repo}:{grammar.immutable_prefix(target.id, target.torch.version)}"
    return ref in floating or ref.startswith(prefix)
