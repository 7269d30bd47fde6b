"""The one tag grammar: target ids, floating and immutable tags, release names.

Planning makes ids and tags with these functions, the gate tags and push publishes with them, and
`probe select` parses a registry's tag list with them. Standard library only: this module is part of
the probe, which runs on a bare pod (`python3 -m probe select`) where imagefactory is not installed.

    target id       <arch>-<toolkit>[-torch<minor>][-<flavor>][-<dtype>]   hopper-cu130, hopper-cu128-torch2.7
    floating tags   <id>, <id>-latest                                       (move on every release)
    immutable tag   <id>-torch<torch version>-<release>                    hopper-cu130-torch2.14.1-20261127
    release         letters, digits, '.', '_'; not 'latest'                20261127, 1.2.0
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Arch names have no '-', so ids split unambiguously; matrix.yaml's names are validated with these.
ARCH_NAME_PATTERN = r"[a-z][a-z0-9]*"
TOOLKIT_ID_PATTERN = r"cu\d{3}|rocm\d+\.\d+"
FLAVORS: tuple[str, ...] = ("slim", "nvidia", "rocm")
TRAIN_DTYPES: tuple[str, ...] = ("bf16", "fp16")
FLOATING_SUFFIX = "-latest"
RELEASE_PATTERN = r"[0-9A-Za-z][0-9A-Za-z._]{0,40}"

TARGET_ID_PATTERN = (
    rf"(?P<arch>{ARCH_NAME_PATTERN})-(?P<toolkit>{TOOLKIT_ID_PATTERN})"
    rf"(?:-torch(?P<torch>\d+\.\d+))?(?:-(?P<flavor>{'|'.join(FLAVORS)}))?(?:-(?P<dtype>{'|'.join(TRAIN_DTYPES)}))?"
)
TARGET_ID = re.compile(TARGET_ID_PATTERN)
IMMUTABLE_TAG = re.compile(rf"(?P<id>{TARGET_ID_PATTERN.replace('?P<', '?P<id_')})"
                           rf"-torch(?P<torch>\d+\.\d+\.\d+)-(?P<release>{RELEASE_PATTERN})")  # full torch version: an id's own -torch2.7 is a minor


class TargetId(NamedTuple):
    arch: str
    toolkit: str
    torch: str | None  # torch minor of a non-default cell
    flavor: str | None
    dtype: str | None


class ImmutableTag(NamedTuple):
    target_id: str
    torch: str  # full torch version
    release: str


def parse_target_id(text: str) -> TargetId | None:
    """`hopper-cu128-torch2.7` -> its parts; None when the text is not a target id (whole text only)."""
    match = TARGET_ID.fullmatch(text)
    if match is None:
        return None
    return TargetId(match["arch"], match["toolkit"], match["torch"], match["flavor"], match["dtype"])


def make_target_id(arch: str, toolkit: str, torch_minor: str | None = None, flavor: str | None = None,
                   dtype: str | None = None) -> str:
    return "-".join(part for part in (arch, toolkit, torch_minor and f"torch{torch_minor}", flavor, dtype) if part)


def floating_tags(target_id: str) -> tuple[str, str]:
    """The tags that move to the newest passing image: `hopper-cu130`, `hopper-cu130-latest`."""
    return target_id, target_id + FLOATING_SUFFIX


def release_problem(release: str) -> str | None:
    """Why `release` cannot name a release, or None when it can."""
    if not re.fullmatch(RELEASE_PATTERN, release):
        return f"release {release!r}: use letters, digits, '.' or '_' (e.g. 20261127 or 1.2.0)"
    if release.lower() == "latest":
        # `<id>-torch<v>-latest` would be an immutable tag that reads as a floating one.
        return f"release {release!r}: 'latest' is a floating name; immutable tags need a version or date"
    return None


def immutable_tag(target_id: str, torch_version: str, release: str) -> str:
    """The tag that never moves: `hopper-cu130-torch2.14.1-2026.11.0` (check the release with
    release_problem first; docs format it with a `<release>` placeholder)."""
    return f"{target_id}-torch{torch_version}-{release}"


def immutable_prefix(target_id: str, torch_version: str) -> str:
    """What every release's immutable tag of this target starts with (`hopper-cu130-torch2.14.1-`)."""
    return f"{target_id}-torch{torch_version}-"


def parse_immutable_tag(tag: str) -> ImmutableTag | None:
    """`hopper-cu130-torch2.14.1-20261127` -> (id, torch, release); None for any other text."""
    match = IMMUTABLE_TAG.fullmatch(tag)
    if match is None or release_problem(match["release"]):
        return None
    return ImmutableTag(match["id"], match["torch"], match["release"])


def is_immutable(tag: str) -> bool:
    return parse_immutable_tag(tag) is not None


def floating_target(tag: str) -> str | None:
    """The target id a floating tag points at (`hopper-cu130-latest` -> `hopper-cu130`); None otherwise."""
    base = tag.removesuffix(FLOATING_SUFFIX)
    return base if parse_target_id(base) else None
