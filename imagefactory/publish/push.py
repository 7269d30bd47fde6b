"""Publishing gated images: immutable + floating tags, the gate report on the image, no overwrites.

How an image earns a push (docs/release.md tells the story): trust lies in images, not in files.

1. The gate (imagefactory.build.gate) checks that the candidate's labels name the target it gates (target,
   SM, toolkit, torch), runs the probe and smoke suite in it and, on a pass, seals it: a child image
   `FROM <candidate id>` whose only change is labels (`seal_labels`: gate=passed, the candidate's ID, the
   target, the mode, the report). No layer is added. `reports/<target>/gate.json` names the sealed ID.
2. Push takes that ID (a full content-addressed `sha256:` ID, never a tag) and trusts nothing in the file
   but the pointer: the sealed image's labels must say passed and this target, the candidate it names must
   be in the local store with identity labels matching the target, and both must hold the same layers
   (`verify_seal`). A hand-written report, a mutable tag or a `FROM scratch` image fails there.
3. The immutable tag `<id>-torch<ver>-<release>` is pushed first. If the registry already has it, it must
   hold the same gated candidate (same `io.imagefactory.gate.image`): then it is left as is; anything else
   is refused. After the push the registry is asked again and must report the digest just pushed.
4. Only then are the floating tags (`<id>`, `<id>-latest`) moved, each to that same digest. A push that
   fails before this point leaves them where they were.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from imagefactory.build import docker
from imagefactory.build.gate import REPORTS_DIR
from imagefactory.build.seal import (  # noqa: F401 - the label names are part of this module's story
    GATE_IMAGE_LABEL,
    GATE_LABEL,
    GATE_MODE_LABEL,
    GATE_REPORT_LABEL,
    GATE_TARGET_LABEL,
    IDENTITY_LABELS,
    IMAGE_ID,
    identity_problems,
    seal_labels,
)
from imagefactory.errors import PushFailedError, UsageError
from imagefactory.plan.model import Target
from imagefactory.plan.platforms import HOST_PLATFORM, debian_arch
from imagefactory.publish.registry import Registry, RepoRef
from imagefactory.tags import ReleaseTags

SBOM_LABEL = "io.imagefactory.sbom"
SBOM_PATH = "/opt/imagefactory/sbom.cdx.json"
MAX_GATE_REPORT = 1024 * 1024  # a gate.json is ~2 KB; a bigger file is refused rather than read

T = TypeVar("T")


@dataclass(frozen=True)
class GateReport:
    """The pointer push reads from reports/<target>/gate.json: which sealed image the gate made. Nothing
    else in the file is trusted; the image's own labels are (verify_seal)."""

    target_id: str
    sealed_image: str  # full sha256 image ID of the sealed child

    @classmethod
    def read(cls, path: Path) -> GateReport:
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_GATE_REPORT + 1)
        except FileNotFoundError:
            raise PushFailedError(f"{path}: no gate report; gate the image first (nox -s gate-<target>)") from None
        except OSError as error:
            raise PushFailedError(f"{path}: unreadable gate report ({error.strerror or error})") from None
        if len(raw) > MAX_GATE_REPORT:
            raise PushFailedError(f"{path}: larger than {MAX_GATE_REPORT // 1024} KiB; not a gate report")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise PushFailedError(f"{path}: unreadable gate report (not JSON)") from None
        if not isinstance(data, dict) or not isinstance(data.get("target"), str):
            raise PushFailedError(f"{path}: gate report lacks 'target'")
        sealed = data.get("sealed_image")
        if data.get("result") != "passed" or sealed is None:
            raise PushFailedError(f"{path}: the gate did not pass (no sealed image); gate the image again")
        if not isinstance(sealed, str) or not IMAGE_ID.fullmatch(sealed):
            raise PushFailedError(f"{path}: 'sealed_image' must be a full image ID (sha256:<64 hex>), got {json.dumps(sealed)[:80]}")
        return cls(target_id=data["target"], sealed_image=sealed)


@dataclass(frozen=True)
class Sealed:
    """A sealed image whose labels and layers were checked against its candidate and the target."""

    image_id: str  # the sealed child (what is pushed)
    candidate_id: str  # the image the gate tested (identity in the registry)
    mode: str
    labels: dict[str, str]
    architecture: str = ""  # the sealed image's, as Docker reports it ("amd64", "arm64")


def _labels(info: dict | None) -> dict[str, str]:
    labels = ((info or {}).get("Config") or {}).get("Labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _layers(info: dict) -> list[str]:
    layers = (info.get("RootFS") or {}).get("Layers") or []
    return [str(layer) for layer in layers] if isinstance(layers, list) else []


def verify_seal(target: Target, sealed_id: str, docker: DockerOps) -> Sealed:
    """The checks that make a local image publishable; PushFailedError naming the first that fails."""
    short = sealed_id[:19]
    info = docker.inspect(sealed_id)
    if info is None or info.get("Id") != sealed_id:
        raise PushFailedError(f"{target.id}: sealed image {short} is not in the local Docker store (rebuilt or pruned?); gate again")
    labels = _labels(info)
    if labels.get(GATE_LABEL) != "passed" or labels.get(GATE_TARGET_LABEL) != target.id:
        raise PushFailedError(f"{target.id}: image {short} carries no gate seal for {target.id} "
                           f"({GATE_LABEL}={labels.get(GATE_LABEL, '(none)')!r}, {GATE_TARGET_LABEL}={labels.get(GATE_TARGET_LABEL, '(none)')!r}); "
                           "only the gate seals images")
    candidate_id = labels.get(GATE_IMAGE_LABEL, "")
    candidate = docker.inspect(candidate_id) if IMAGE_ID.fullmatch(candidate_id) else None
    if candidate is None or candidate.get("Id") != candidate_id:
        raise PushFailedError(f"{target.id}: the gated image {candidate_id[:19] or '(none)'} that {short} seals is not in the local store")
    for name, image in (("gated", candidate), ("sealed", info)):
        problems = identity_problems(target, _labels(image))
        if problems:
            raise PushFailedError(f"{target.id}: {name} image {str(image.get('Id'))[:19]} is not an image of {target.id}: {problems[0]}")
    if not _layers(info) or _layers(info) != _layers(candidate):
        raise PushFailedError(f"{target.id}: sealed image {short} holds other layers than the gated image {candidate_id[:19]}")
    return Sealed(sealed_id, candidate_id, labels.get(GATE_MODE_LABEL, "unknown"), labels, str(info.get("Architecture") or ""))


class DockerOps(Protocol):
    """The Docker operations publishing uses (implemented over imagefactory.build.docker; faked in unit tests)."""

    def inspect(self, ref: str) -> dict | None: ...  # `docker image inspect`; None: no such local image
    def tag(self, source: str, target: str) -> None: ...
    def push(self, ref: str) -> str: ...  # returns the pushed manifest digest
    def pull(self, ref: str) -> None: ...
    def read_file(self, image: str, path: str) -> bytes | None: ...  # None: no such file in the image
    # zstd pushes (skopeo): the local image by ID to a registry ref; a registry tag to another, same digest
    def push_compressed(self, image_id: str, ref: str, compression: str, plain_http: bool) -> str: ...
    def copy_tag(self, source_ref: str, ref: str, plain_http: bool) -> str: ...
    # an image index under `ref` of images already in the registry (`repo@sha256:…`); returns its digest
    def push_index(self, ref: str, images: Sequence[str], plain_http: bool) -> str: ...


class LocalDocker:
    """DockerOps over the one Docker adapter (imagefactory.build.docker); its failures are push failures."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self.client = client or docker.detect()

    def inspect(self, ref: str) -> dict | None:
        return docker.image_inspect(self.client, ref)

    def tag(self, source: str, target: str) -> None:
        self._push_step(docker.tag, source, target)

    def push(self, ref: str) -> str:
        return self._push_step(docker.push, ref)

    def pull(self, ref: str) -> None:
        self._push_step(docker.pull, ref)

    def read_file(self, image: str, path: str) -> bytes | None:
        return self._push_step(docker.read_file, image, path)

    def push_compressed(self, image_id: str, ref: str, compression: str, plain_http: bool) -> str:
        return _as_push_failure(docker.copy_to_registry, image_id, ref, compression, plain_http=plain_http)

    def copy_tag(self, source_ref: str, ref: str, plain_http: bool) -> str:
        return _as_push_failure(docker.copy_tag, source_ref, ref, plain_http=plain_http)

    def push_index(self, ref: str, images: Sequence[str], plain_http: bool) -> str:
        return _as_push_failure(docker.push_index, self.client, ref, images, plain_http=plain_http)

    def _push_step(self, operation: Callable[..., T], *args: Any) -> T:
        return _as_push_failure(operation, self.client, *args)


def _as_push_failure(operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one Docker/skopeo step of a push; its failure is a push failure (exit 7)."""
    try:
        return operation(*args, **kwargs)
    except docker.DockerCommandError as error:
        raise PushFailedError(error.message) from None


def is_cyclonedx(data: bytes | None) -> bool:
    try:
        return data is not None and json.loads(data).get("bomFormat") == "CycloneDX"
    except (ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class PushResult:
    repo: str
    immutable: str
    digest: str
    floating: tuple[str, ...]
    already_there: bool = False
    notes: tuple[str, ...] = field(default=())
    platforms: tuple[str, ...] = (HOST_PLATFORM,)  # more than one: `digest` is an image index of them

    def as_json(self) -> dict[str, object]:
        return {
            "repo": self.repo,
            "digest": self.digest,
            "immutable": f"{self.repo}:{self.immutable}",
            "floating": [f"{self.repo}:{tag}" for tag in self.floating],
            "pull_by_digest": f"{self.repo}@{self.digest}",
            "already_there": self.already_there,
            "platforms": list(self.platforms),
        }


def checked_seal(target: Target, report: GateReport, docker: DockerOps, *, allow_cpu_gate: bool,
                 platform: str = HOST_PLATFORM) -> Sealed:
    """What makes one platform's image publishable: its report is this target's, its seal verifies, its gate ran on a
    GPU (or --allow-cpu-gate), it is an image of `platform`, and it holds a CycloneDX SBOM where its label says."""
    target_id = target.id
    if report.target_id != target_id:
        raise PushFailedError(f"gate report is for {report.target_id}, not {target_id}")
    sealed = verify_seal(target, report.sealed_image, docker)
    if sealed.mode != "gpu" and not allow_cpu_gate:
        raise PushFailedError(
            f"{target_id}: image {sealed.candidate_id[:19]} was gated in {sealed.mode} mode only; gate it on a GPU "
            "(gate --require-gpu) or pass --allow-cpu-gate"
        )
    arch = sealed.architecture or debian_arch(platform)  # Docker always says; a fake in the unit tests may not
    if arch != debian_arch(platform):
        raise PushFailedError(f"{target_id}: sealed image {sealed.image_id[:19]} is linux/{arch[:20]}, not {platform}")
    labels = sealed.labels
    if SBOM_LABEL not in labels:
        raise PushFailedError(f"{target_id}: image {sealed.candidate_id[:19]} has no {SBOM_LABEL} label (no SBOM); rebuild it")
    if not is_cyclonedx(docker.read_file(sealed.image_id, labels[SBOM_LABEL])):
        raise PushFailedError(f"{target_id}: image {sealed.candidate_id[:19]} has no CycloneDX JSON at {labels[SBOM_LABEL]} (its {SBOM_LABEL} label)")
    return sealed


def push_immutable(tag: str, sealed: Sealed, repo: RepoRef, docker: DockerOps, registry: Registry,
                   say: Callable[[str], None], compression: str) -> tuple[str, bool]:
    """Push one sealed image under a tag that never moves: (its digest, whether the registry held it already). A tag
    holding another gated image is refused; after the push the registry must report the digest just pushed."""
    ref = f"{repo}:{tag}"
    remote = registry.image(tag)
    if remote is not None:
        if remote.labels.get(GATE_IMAGE_LABEL) != sealed.candidate_id:
            raise PushFailedError(
                f"{ref} already exists with different content (gated image "
                f"{remote.labels.get(GATE_IMAGE_LABEL, 'unknown')[:19]}, this is {sealed.candidate_id[:19]}); "
                "immutable tags are never overwritten: publish under a new --release"
            )
        say(f"{ref} already holds this gated image ({remote.digest}); not pushed again")
        return remote.digest, True
    if compression != "gzip":
        say(f"pushing {ref} (immutable, {compression} layers)")
        digest = docker.push_compressed(sealed.image_id, ref, compression, repo.plain_http)
    else:
        docker.tag(sealed.image_id, ref)
        say(f"pushing {ref} (immutable)")
        digest = docker.push(ref)
    landed = registry.image(tag)
    if landed is None or landed.digest != digest:
        raise PushFailedError(
            f"{ref}: registry reports {landed.digest if landed else 'no manifest'} after pushing {digest} "
            "(a concurrent push?); floating tags left unchanged"
        )
    return digest, False


def publish(
    tags: ReleaseTags,
    report: GateReport,
    target: Target,
    repo: RepoRef,
    docker: DockerOps,
    registry: Registry,
    say: Callable[[str], None] = print,
    allow_cpu_gate: bool = False,
    compression: str = "gzip",
    platform: str = HOST_PLATFORM,
) -> PushResult:
    """Push one sealed image: immutable tag first (never overwritten), then the floating tags. gzip layers go
    through `docker push`; zstd layers through skopeo (docker.copy_to_registry), floating tags then copied
    in the registry (same manifest, same digest)."""
    sealed = checked_seal(target, report, docker, allow_cpu_gate=allow_cpu_gate, platform=platform)
    immutable_ref = f"{repo}:{tags.immutable}"
    digest, already_there = push_immutable(tags.immutable, sealed, repo, docker, registry, say, compression)
    source = f"{repo}@{digest}" if already_there else immutable_ref  # pulled below only if a floating tag must move

    if compression != "gzip":
        copy_floating(tags.floating, digest, repo, docker, registry, say)
        return PushResult(str(repo), tags.immutable, digest, tags.floating, already_there=already_there, platforms=(platform,))
    pulled = not already_there  # a fresh push leaves the image local
    for tag in tags.floating:
        ref = f"{repo}:{tag}"
        current = registry.image(tag)
        if current is not None and current.digest == digest:
            say(f"{ref} already at {digest}")
            continue
        if not pulled:
            docker.pull(source)  # the local copy to move floating tags from (its layers are mostly local)
            pulled = True
        docker.tag(source, ref)
        say(f"moving {ref} → {digest}")
        moved = docker.push(ref)
        if moved != digest:
            raise PushFailedError(f"{ref}: pushed {moved}, expected {digest}; check the registry by hand")
    return PushResult(str(repo), tags.immutable, digest, tags.floating, already_there=already_there, platforms=(platform,))


def platform_tag(immutable: str, platform: str) -> str:
    """The registry tag one platform's image of a multi-platform release is pushed under before the index joins them:
    `hopper-cu130-torch2.14.1-20261127-arm64`. Never read as a release by `probe select` (releases hold no `-`)."""
    return f"{immutable}-{debian_arch(platform)}"


def publish_index(
    tags: ReleaseTags,
    reports: Mapping[str, GateReport],
    target: Target,
    repo: RepoRef,
    docker: DockerOps,
    registry: Registry,
    say: Callable[[str], None] = print,
    allow_cpu_gate: bool = False,
    compression: str = "gzip",
) -> PushResult:
    """Push one release of a target built for several platforms under one set of tags: each platform's sealed image
    under its own immutable tag (`…-amd64`, `…-arm64`; never overwritten), then the image index of them under the
    immutable tag, then the floating tags moved to that index. Every image is checked before anything is pushed."""
    platforms = sorted(reports)
    sealed = {p: checked_seal(target, reports[p], docker, allow_cpu_gate=allow_cpu_gate, platform=p) for p in platforms}
    index_ref = f"{repo}:{tags.immutable}"
    remote = registry.image(tags.immutable)
    if remote is not None:
        host = sealed.get(HOST_PLATFORM)
        same = remote.platforms == tuple(platforms) and (host is None or remote.labels.get(GATE_IMAGE_LABEL) == host.candidate_id)
        if not same:
            raise PushFailedError(f"{index_ref} already exists with different content ({', '.join(remote.platforms) or 'one image'}, "
                                  f"gated image {remote.labels.get(GATE_IMAGE_LABEL, 'unknown')[:19]}); immutable tags are never "
                                  "overwritten: publish under a new --release")
        say(f"{index_ref} already holds this release ({remote.digest}, {', '.join(remote.platforms)}); not pushed again")
        digest = remote.digest
    else:
        images = [f"{repo}@{push_immutable(platform_tag(tags.immutable, p), sealed[p], repo, docker, registry, say, compression)[0]}"
                  for p in platforms]
        say(f"pushing {index_ref} (image index: {', '.join(platforms)})")
        digest = docker.push_index(index_ref, images, repo.plain_http)
        landed = registry.image(tags.immutable)
        if landed is None or landed.digest != digest or landed.platforms != tuple(platforms):
            raise PushFailedError(f"{index_ref}: registry reports {landed.digest if landed else 'no manifest'} "
                                  f"({', '.join(landed.platforms) if landed else '-'}) after pushing the index {digest}; "
                                  "floating tags left unchanged")
    copy_floating(tags.floating, digest, repo, docker, registry, say)
    return PushResult(str(repo), tags.immutable, digest, tags.floating, already_there=remote is not None,
                      platforms=tuple(platforms))


def copy_floating(floating: Sequence[str], digest: str, repo: RepoRef, docker: DockerOps, registry: Registry,
                  say: Callable[[str], None]) -> None:
    """Point each floating tag at `digest` by copying inside the registry (skopeo: the same manifest, or the same
    index with every image it lists); a tag already there is left alone."""
    for tag in floating:
        ref = f"{repo}:{tag}"
        current = registry.image(tag)
        if current is not None and current.digest == digest:
            say(f"{ref} already at {digest}")
            continue
        say(f"moving {ref} → {digest}")
        moved = docker.copy_tag(f"{repo}@{digest}", ref, repo.plain_http)
        if moved != digest:
            raise PushFailedError(f"{ref}: copied {moved}, expected {digest}; check the registry by hand")


def write_release_record(result: PushResult, target_id: str, reports_dir: Path = REPORTS_DIR) -> Path:
    """reports/<target>/release.json: what was published, for the CI summary and for humans."""
    path = reports_dir / target_id / "release.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.unlink(missing_ok=True)  # a link planted there is removed, not written through
    temporary.write_text(json.dumps(result.as_json(), indent=2) + "\n")
    temporary.replace(path)  # never a half-written record
    return path


# A published reference in a release record: `host[:port]/name:tag`; nothing that could break a markdown
# table cell or a line (`|`, backticks, newlines).
RECORD_REF = re.compile(r"[a-z0-9][a-z0-9.:-]*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", re.ASCII)
RECORD_DIGEST = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
MAX_RECORD = 1024 * 1024


def read_release_record(path: Path) -> dict[str, object]:
    """One reports/<target>/release.json, every field the summary prints checked; else one line, exit 2."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_RECORD + 1)
        if len(raw) > MAX_RECORD:
            raise UsageError(f"{path}: larger than {MAX_RECORD // 1024} KiB; not a release record")
        data = json.loads(raw)
    except OSError as error:
        raise UsageError(f"{path}: unreadable release record ({error.strerror or error})") from None
    except (ValueError, RecursionError):
        raise UsageError(f"{path}: unreadable release record (not JSON)") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a release record is a JSON object, got {type(data).__name__}")
    immutable, digest, floating = data.get("immutable"), data.get("digest"), data.get("floating")
    if not isinstance(immutable, str) or not RECORD_REF.fullmatch(immutable):
        raise UsageError(f"{path}: 'immutable' must be an image reference like host/name:tag, got {json.dumps(immutable)[:80]}")
    if not isinstance(digest, str) or not RECORD_DIGEST.fullmatch(digest):
        raise UsageError(f"{path}: 'digest' must be sha256:<64 hex>, got {json.dumps(digest)[:80]}")
    if not isinstance(floating, list) or not all(isinstance(ref, str) and RECORD_REF.fullmatch(ref) for ref in floating):
        raise UsageError(f"{path}: 'floating' must be a list of image references, got {json.dumps(floating)[:80]}")
    return data


def summary_markdown(records: Sequence[dict[str, object]]) -> str:
    """The table the release workflow writes to $GITHUB_STEP_SUMMARY."""
    lines = ["## Published images", "", "| immutable tag | floating tags | digest |", "|---|---|---|"]
    for record in records:
        refs = record.get("floating")
        floating = ", ".join(f"`{ref}`" for ref in refs) if isinstance(refs, list) else ""
        lines.append(f"| `{record['immutable']}` | {floating} | `{record['digest']}` |")
    if not records:
        lines.append("| (nothing published) | | |")
    return "\n".join(lines) + "\n"
