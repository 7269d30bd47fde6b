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

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from imagefactory.build import docker
from imagefactory.build.gate import REPORTS_DIR
from imagefactory.errors import PushFailedError
from imagefactory.publish.registry import Registry, RepoRef
from imagefactory.tags import ReleaseTags

GATE_LABEL = "io.imagefactory.build.gate"
GATE_IMAGE_LABEL = "io.imagefactory.gate.image"
GATE_REPORT_LABEL = "io.imagefactory.gate.report"
SBOM_LABEL = "io.imagefactory.sbom"
SBOM_PATH = "/opt/imagefactory/sbom.cdx.json"

T = TypeVar("T")


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
            raise PushFailedError(f"{path}: no gate report; gate the image first (nox -s gate-<target>)") from None
        except (OSError, ValueError) as error:
            raise PushFailedError(f"{path}: unreadable gate report ({error})") from None
        if not isinstance(data, dict) or not data.get("image_id") or not data.get("target"):
            raise PushFailedError(f"{path}: gate report lacks 'target' or 'image_id'")
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


class LocalDocker:
    """DockerOps over the one Docker adapter (imagefactory.build.docker); its failures are push failures."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self.client = client or docker.detect()

    def image_labels(self, ref: str) -> dict[str, str] | None:
        return docker.image_labels(self.client, ref)

    def label_child(self, parent_id: str, labels: dict[str, str], tag: str) -> str:
        return self._push_step(docker.label_child, parent_id, labels, tag)

    def tag(self, source: str, target: str) -> None:
        self._push_step(docker.tag, source, target)

    def push(self, ref: str) -> str:
        return self._push_step(docker.push, ref)

    def pull(self, ref: str) -> None:
        self._push_step(docker.pull, ref)

    def read_file(self, image: str, path: str) -> bytes | None:
        return self._push_step(docker.read_file, image, path)

    def _push_step(self, operation: Callable[..., T], *args: Any) -> T:
        try:
            return operation(self.client, *args)
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
        raise PushFailedError(f"gate report is for {report.target_id}, not {target_id}")
    if not report.passed:
        raise PushFailedError(f"{target_id}: the gate did not pass for image {report.image_id[:19]}; refusing to push")
    if report.mode != "gpu" and not allow_cpu_gate:
        raise PushFailedError(
            f"{target_id}: image {report.image_id[:19]} was gated in {report.mode} mode only; gate it on a GPU "
            "(gate --require-gpu) or pass --allow-cpu-gate"
        )
    labels = docker.image_labels(report.image_id)
    if labels is None:
        raise PushFailedError(f"{target_id}: gated image {report.image_id[:19]} is not in the local Docker store (rebuilt or pruned?)")
    if SBOM_LABEL not in labels:
        raise PushFailedError(f"{target_id}: image {report.image_id[:19]} has no {SBOM_LABEL} label (no SBOM); rebuild it")
    if not is_cyclonedx(docker.read_file(report.image_id, labels[SBOM_LABEL])):
        raise PushFailedError(f"{target_id}: image {report.image_id[:19]} has no CycloneDX JSON at {labels[SBOM_LABEL]} (its {SBOM_LABEL} label)")

    immutable_ref = f"{repo}:{tags.immutable}"
    remote = registry.image(tags.immutable)
    if remote is not None:
        if remote.labels.get(GATE_IMAGE_LABEL) != report.image_id:
            raise PushFailedError(
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
            raise PushFailedError(
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
            raise PushFailedError(f"{ref}: pushed {moved}, expected {digest}; check the registry by hand")
    return PushResult(str(repo), tags.immutable, digest, tags.floating, already_there=remote is not None)


def write_release_record(result: PushResult, target_id: str, reports_dir: Path = REPORTS_DIR) -> Path:
    """reports/<target>/release.json: what was published, for the CI summary and for humans."""
    path = reports_dir / target_id / "release.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result.as_json(), indent=2) + "\n")
    temporary.replace(path)  # never a half-written record
    return path


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
