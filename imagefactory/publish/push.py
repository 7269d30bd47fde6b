"""Publishing gated images: immutable + floating tags, the gate report on the image, no overwrites.

How an image earns a push (docs/release.md tells the story):

1. The gate (imagefactory.build.gate) writes `reports/<target>/gate.json` with the image ID it tested and the
   result. Push reads it and refuses unless the result passed, the target matches, and that exact image ID
   is in the local store (so a rebuilt-but-ungated image can never slip through under the same tag).
2. A label cannot be added to an existing image, so push makes a child `FROM <gated id>` whose only change
   is three labels: `io.imagefactory.build.gate=passed`, `io.imagefactory.gate.image=<gated id>`,
   `io.imagefactory.gate.report=<the report, compact JSON>`. No layer is added; the layers pushed are the
   gated image's, byte for byte.
3. The immutable tag `<id>-torch<ver>-<release>` is pushed first. If the registry already has it, it must
   hold the same gated image (same `io.imagefactory.gate.image`): then it is left as is; anything else is
   refused. After the push the registry is asked again and must report the digest just pushed.
4. Only then are the floating tags (`<id>`, `<id>-latest`) moved, each to that same digest. A push that
   fails before this point leaves them where they were.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from imagefactory.plan.model import Target, immutable_tag
from imagefactory.publish.errors import PublishUsageError, ReleaseError
from imagefactory.publish.registry import Registry, RepoRef

GATE_LABEL = "io.imagefactory.build.gate"
GATE_IMAGE_LABEL = "io.imagefactory.gate.image"
GATE_REPORT_LABEL = "io.imagefactory.gate.report"
SBOM_LABEL = "io.imagefactory.sbom"
SBOM_PATH = "/opt/imagefactory/sbom.cdx.json"

RELEASE_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z._]{0,40}")
REPORTS_DIR = Path("reports")


def default_release(now: _dt.datetime | None = None) -> str:
    """Release version when none is given: the UTC date, `20261127`."""
    return (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%d")


@dataclass(frozen=True)
class ReleaseTags:
    immutable: str
    floating: tuple[str, ...]


def release_tags(target: Target, release: str) -> ReleaseTags:
    """hopper-cu130 at `20261127` → immutable `hopper-cu130-torch2.14.1-20261127` (planning's
    immutable_tag), floating `hopper-cu130`, `hopper-cu130-latest` (Target.tags). The gate tags
    locally with these names and push publishes them; probe/select.py parses exactly these shapes."""
    if not RELEASE_PATTERN.fullmatch(release):
        raise ReleaseError(f"release {release!r}: use letters, digits, '.' or '_' (e.g. 20261127 or 1.2.0)")
    if release.lower() == "latest":
        # `<id>-torch<v>-latest` would be an immutable tag that reads as a floating one (and does so to
        # probe select, which treats a trailing -latest as floating).
        raise ReleaseError(f"release {release!r}: 'latest' is a floating name; immutable tags need a version or date")
    return ReleaseTags(immutable_tag(target, release), tuple(target.tags))


@dataclass(frozen=True)
class GateReport:
    """What push needs from reports/<target>/gate.json."""

    target_id: str
    image_id: str
    passed: bool
    compact_json: str  # the whole report, as it goes into the label
    mode: str = "unknown"  # "gpu", "cpu" (probe + smoke on the CPU only), or "unknown" (not in the report)

    @classmethod
    def read(cls, path: Path) -> GateReport:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ReleaseError(f"{path}: no gate report; gate the image first (nox -s gate-<target>)") from None
        except (OSError, ValueError) as error:
            raise ReleaseError(f"{path}: unreadable gate report ({error})") from None
        if not isinstance(data, dict) or not data.get("image_id") or not data.get("target"):
            raise ReleaseError(f"{path}: gate report lacks 'target' or 'image_id'")
        result = data.get("result", data.get("passed"))
        return cls(
            target_id=str(data["target"]),
            image_id=str(data["image_id"]),
            passed=result is True or result == "passed",
            compact_json=json.dumps(data, separators=(",", ":"), sort_keys=True),
            mode=str(data.get("mode", "unknown")),  # a report that does not say GPU counts as not GPU
        )


class DockerOps(Protocol):
    """The Docker operations publishing uses (implemented over imagefactory.build.docker; faked in unit tests)."""

    def image_labels(self, ref: str) -> dict[str, str] | None: ...  # None: no such local image
    def label_child(self, parent_id: str, labels: dict[str, str], tag: str) -> str: ...
    def tag(self, source: str, target: str) -> None: ...
    def push(self, ref: str) -> str: ...  # returns the pushed manifest digest
    def pull(self, ref: str) -> None: ...
    def read_file(self, image: str, path: str) -> bytes | None: ...  # None: no such file in the image


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

    def as_json(self) -> dict[str, object]:
        return {
            "repo": self.repo,
            "digest": self.digest,
            "immutable": f"{self.repo}:{self.immutable}",
            "floating": [f"{self.repo}:{tag}" for tag in self.floating],
            "pull_by_digest": f"{self.repo}@{self.digest}",
            "already_there": self.already_there,
        }


def publish(
    tags: ReleaseTags,
    report: GateReport,
    target_id: str,
    repo: RepoRef,
    docker: DockerOps,
    registry: Registry,
    say: Callable[[str], None] = print,
    allow_cpu_gate: bool = False,
) -> PushResult:
    """Push one gated image: immutable tag first (never overwritten), then the floating tags."""
    if report.target_id != target_id:
        raise ReleaseError(f"gate report is for {report.target_id}, not {target_id}")
    if not report.passed:
        raise ReleaseError(f"{target_id}: the gate did not pass for image {report.image_id[:19]}; refusing to push")
    if report.mode != "gpu" and not allow_cpu_gate:
        raise ReleaseError(
            f"{target_id}: image {report.image_id[:19]} was gated in {report.mode} mode only; gate it on a GPU "
            "(gate --require-gpu) or pass --allow-cpu-gate"
        )
    labels = docker.image_labels(report.image_id)
    if labels is None:
        raise ReleaseError(f"{target_id}: gated image {report.image_id[:19]} is not in the local Docker store (rebuilt or pruned?)")
    if SBOM_LABEL not in labels:
        raise ReleaseError(f"{target_id}: image {report.image_id[:19]} has no {SBOM_LABEL} label (no SBOM); rebuild it")
    if not is_cyclonedx(docker.read_file(report.image_id, labels[SBOM_LABEL])):
        raise ReleaseError(f"{target_id}: image {report.image_id[:19]} has no CycloneDX JSON at {labels[SBOM_LABEL]} (its {SBOM_LABEL} label)")

    immutable_ref = f"{repo}:{tags.immutable}"
    remote = registry.image(tags.immutable)
    if remote is not None:
        if remote.labels.get(GATE_IMAGE_LABEL) != report.image_id:
            raise ReleaseError(
                f"{immutable_ref} already exists with different content (gated image "
                f"{remote.labels.get(GATE_IMAGE_LABEL, 'unknown')[:19]}, this is {report.image_id[:19]}); "
                "immutable tags are never overwritten: publish under a new --release"
            )
        say(f"{immutable_ref} already holds this gated image ({remote.digest}); not pushed again")
        digest = remote.digest
        source = f"{repo}@{digest}"  # pulled below only if a floating tag must move
    else:
        gate_labels = {GATE_LABEL: "passed", GATE_IMAGE_LABEL: report.image_id, GATE_REPORT_LABEL: report.compact_json}
        docker.label_child(report.image_id, gate_labels, immutable_ref)
        say(f"pushing {immutable_ref} (immutable)")
        digest = docker.push(immutable_ref)
        landed = registry.image(tags.immutable)
        if landed is None or landed.digest != digest:
            raise ReleaseError(
                f"{immutable_ref}: registry reports {landed.digest if landed else 'no manifest'} after pushing {digest} "
                "(a concurrent push?); floating tags left unchanged"
            )
        source = immutable_ref

    pulled = remote is None  # a fresh push leaves the image local
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
            raise ReleaseError(f"{ref}: pushed {moved}, expected {digest}; check the registry by hand")
    return PushResult(str(repo), tags.immutable, digest, tags.floating, already_there=remote is not None)


def write_release_record(result: PushResult, target_id: str, reports_dir: Path = REPORTS_DIR) -> Path:
    """reports/<target>/release.json: what was published, for the CI summary and for humans."""
    path = reports_dir / target_id / "release.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
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
            raise PublishUsageError(f"{path}: larger than {MAX_RECORD // 1024} KiB; not a release record")
        data = json.loads(raw)
    except OSError as error:
        raise PublishUsageError(f"{path}: unreadable release record ({error.strerror or error})") from None
    except (ValueError, RecursionError):
        raise PublishUsageError(f"{path}: unreadable release record (not JSON)") from None
    if not isinstance(data, dict):
        raise PublishUsageError(f"{path}: a release record is a JSON object, got {type(data).__name__}")
    immutable, digest, floating = data.get("immutable"), data.get("digest"), data.get("floating")
    if not isinstance(immutable, str) or not RECORD_REF.fullmatch(immutable):
        raise PublishUsageError(f"{path}: 'immutable' must be an image reference like host/name:tag, got {json.dumps(immutable)[:80]}")
    if not isinstance(digest, str) or not RECORD_DIGEST.fullmatch(digest):
        raise PublishUsageError(f"{path}: 'digest' must be sha256:<64 hex>, got {json.dumps(digest)[:80]}")
    if not isinstance(floating, list) or not all(isinstance(ref, str) and RECORD_REF.fullmatch(ref) for ref in floating):
        raise PublishUsageError(f"{path}: 'floating' must be a list of image references, got {json.dumps(floating)[:80]}")
    return data


def summary_markdown(records: Sequence[dict[str, object]]) -> str:
    """The table the release workflow writes to $GITHUB_STEP_SUMMARY."""
    lines = ["## Published images", "", "| immutable tag | floating tags | digest |", "|---|---|---|"]
    for record in records:
        floating = ", ".join(f"`{ref}`" for ref in record.get("floating", []))  # type: ignore[union-attr]
        lines.append(f"| `{record['immutable']}` | {floating} | `{record['digest']}` |")
    if not records:
        lines.append("| (nothing published) | | |")
    return "\n".join(lines) + "\n"
