"""Files generated from the matrix for the people who pull the images, kept in sync by `docs --check`:

- docs/supported-tags.md   target → tags, SMs, CUDA/ROCm, torch, python, minimum driver (like NVIDIA's page)
- docs/supported-tags.json the same for machines: `python -m probe select --tags-file` reads it
- docs/deploy/<target>/runpod-template.json   body for RunPod's `POST /v1/templates`
- docs/deploy/<target>/runpod-pod.json        body for RunPod's `POST /v1/pods` (adds allowedCudaVersions)
- docs/deploy/<target>/lambda-cloud-init.yaml user data for a Lambda Cloud instance (NVIDIA targets)

Container disk sizes come from docs/deploy/image-sizes.json (measured from built images by
`python -m imagefactory docs --measure`; imagefactory/publish/sizes.py), with a per-flavor default when unmeasured.

Pure: targets in, {path: text} out. Writing only changes files whose text differs, and removes
deploy files of targets that left the matrix.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagefactory.errors import ImageFactoryError, UsageError
from imagefactory.plan.model import Target, immutable_tag
from imagefactory.plan.platforms import unit_id
from imagefactory.publish.gated import GatedBuild
from imagefactory.publish.gated import load as load_gated

# The repository the docs name; the release workflow publishes to ghcr.io/<owner>/imagefactory.
# Regenerate with --repo for another registry.
DOCS_REPO = "ghcr.io/imagefactory/imagefactory"
RELEASE_PLACEHOLDER = "<release>"
WORKSPACE = "/workspace"
SSH_PORT, JUPYTER_PORT = 22, 8888  # the pod conventions (pod/entrypoint.py)
# Lambda hosts run their own sshd on 22: the container's is published on this host port.
LAMBDA_SSH_PORT = 2222

# Container disk (GB) when the image was never measured: vendor flavors ship the full CUDA/ROCm runtime base.
CONTAINER_DISK_GB = {"slim": 40, "nvidia": 60, "rocm": 80}
# Room on the container disk beyond the image itself: pip installs, /tmp, logs (models and checkpoints go to the volume).
CONTAINER_HEADROOM_GB = 20
VOLUME_GB = 200  # models, datasets, checkpoints and the Triton/inductor caches live on the persistent volume
# The host CUDA versions RunPod filters machines by (allowedCudaVersions of POST /v1/pods).
RUNPOD_CUDA_VERSIONS = ("11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9", "13.0")
# RunPod secrets, expanded by RunPod at pod start (Settings > Secrets); the entrypoint ignores one left unexpanded.
RUNPOD_ENV = {"PUBLIC_KEY": "{{ RUNPOD_SECRET_PUBLIC_KEY }}", "JUPYTER_PASSWORD": "{{ RUNPOD_SECRET_JUPYTER_PASSWORD }}"}
DEPLOY_FILES = ("runpod-template.json", "runpod-pod.json", "lambda-cloud-init.yaml")
GENERATED_HEADER = "# Generated from matrix.yaml by `python -m imagefactory docs`; do not edit by hand."
# --repo lands in markdown, JSON, cloud-init YAML and a shell line: `host[:port]/name` only (no `;`, spaces,
# newlines, quotes); checked with fullmatch in ASCII.
DOCS_REPO_PATTERN = re.compile(
    r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]{1,5})?"
    r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+", re.ASCII)


def check_docs_repo(repo: str) -> str:
    if not DOCS_REPO_PATTERN.fullmatch(repo) or len(repo) > 255:
        raise UsageError(f"--repo {repo!r}: want host[:port]/name in lower case, e.g. {DOCS_REPO}")
    return repo


@dataclass(frozen=True)
class SupportedTag:
    """One row of the supported-tags table."""

    target_id: str
    vendor: str
    floating: tuple[str, ...]
    immutable_pattern: str
    sms: tuple[str, ...]
    gfx: tuple[str, ...]
    toolkit: str  # "CUDA 13.0" / "ROCm 6.2"
    toolkit_kind: str
    toolkit_version: str
    torch: str
    python: str
    flavor: str
    driver_floor: str | None
    description: str
    gated: GatedBuild | None = None  # docs/gated.json's record of a passing gate of this target at this torch
    platforms: tuple[str, ...] = ("linux/amd64",)
    gated_platforms: tuple[GatedBuild, ...] = ()  # every platform's record (gated is the first of them)

    @classmethod
    def of(cls, target: Target, gated: Sequence[GatedBuild] = ()) -> SupportedTag:
        current = tuple(g for g in gated if g.torch == target.torch.version)  # each platform's record, at this torch
        kind = target.toolkit.kind
        return cls(
            target_id=target.id,
            vendor=target.arch.vendor,
            floating=tuple(target.tags),
            immutable_pattern=immutable_tag(target, RELEASE_PLACEHOLDER),
            sms=tuple(target.sms),
            gfx=tuple(target.gfx),
            toolkit=f"{'CUDA' if kind == 'cuda' else 'ROCm'} {target.toolkit.version}",
            toolkit_kind=kind,
            toolkit_version=target.toolkit.version,
            torch=target.torch.version,
            python=target.python,
            flavor=target.flavor,
            driver_floor=target.toolkit.driver_floor,
            description=target.arch.description,
            gated=current[0] if current else None,
            platforms=tuple(target.platforms),
            gated_platforms=current,
        )

    def gated_summary(self) -> str:
        """The table's `gated` cell: where each platform's image passed its gate."""
        if not self.gated_platforms:
            return "not built here"
        if len(self.gated_platforms) == 1 and len(self.platforms) == 1:
            return self.gated_platforms[0].summary()
        return "; ".join(f"{g.platform.removeprefix('linux/')}: {g.summary()}" for g in self.gated_platforms)


def supported_tags(targets: Iterable[Target], gated: Mapping[str, GatedBuild] | None = None) -> list[SupportedTag]:
    record = gated or {}
    return sorted((SupportedTag.of(t, [record[k] for p in t.platforms if (k := unit_id(t.id, p)) in record])
                   for t in targets), key=lambda row: (row.vendor != "nvidia", row.target_id))


def supported_tags_markdown(rows: Sequence[SupportedTag], repo: str) -> str:
    lines = [
        "# Supported tags",
        "",
        "<!-- Generated from matrix.yaml by `python -m imagefactory docs`; do not edit by hand.",
        "     CI runs `python -m imagefactory docs --check`. -->",
        "",
        f"Images live in `{repo}`. Each target has two floating tags that move to the newest gated",
        f"release, and one immutable tag per release (`{RELEASE_PLACEHOLDER}` is the release version, e.g. the",
        "date `20261127`) that never changes. Pin the immutable tag (or the digest) for reproducible runs.",
        "",
        "Not sure which one? On the machine: `python3 -m probe select --repo " + repo + "` (see docs/deploy/README.md).",
        "",
        "**Gated** says where this project built the target and its gate (probe + smoke training in the image)",
        "passed, from [gated.json](gated.json); the other targets render and lint but were not built here.",
        "**Platforms**: arm64 where the arch's machines are Grace (GH200, GB200, DGX Spark) and PyPI's aarch64 torch",
        "is the same CUDA build (torch ≥ 2.11); one tag is an image index of both. arm64 images are built on x86 under",
        "QEMU (docs/build.md, \"arm64\"); the gated column names each platform's gate.",
        "",
        "| target | floating tags | immutable tag | GPUs (SM / gfx) | toolkit | torch | python | flavor | min driver | platforms | gated |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        floating = "<br>".join(f"`{tag}`" for tag in row.floating)
        gpus = ", ".join(row.sms or row.gfx)
        floor = f"≥ {row.driver_floor}" if row.driver_floor else "ROCm (amdgpu)"
        lines.append(
            f"| **{row.target_id}** | {floating} | `{row.immutable_pattern}` | {gpus} ({row.description}) | "
            f"{row.toolkit} | {row.torch} | {row.python} | {row.flavor} | {floor} | "
            f"{', '.join(p.removeprefix('linux/') for p in row.platforms)} | "
            f"{row.gated_summary()} |"
        )
    lines += [
        "",
        "Minimum driver: the oldest NVIDIA driver branch that runs the image's CUDA (NVIDIA's CUDA",
        "compatibility notes; 12.x from 525 through minor-version compatibility, 12.8 needs 570, 13.0 needs 580).",
        "",
    ]
    return "\n".join(lines)


def supported_tags_json(rows: Sequence[SupportedTag], repo: str) -> str:
    body = {
        "repo": repo,
        "targets": [
            {
                "id": row.target_id,
                "vendor": row.vendor,
                "sms": list(row.sms),
                "gfx": list(row.gfx),
                "toolkit": {"kind": row.toolkit_kind, "version": row.toolkit_version, "driver_floor": row.driver_floor},
                "torch": row.torch,
                "python": row.python,
                "flavor": row.flavor,
                "tags": list(row.floating),
                "immutable_pattern": row.immutable_pattern,
                "platforms": list(row.platforms),
                "gated": {"mode": row.gated.mode, "where": row.gated.where, "date": row.gated.date,
                          "platforms": [g.platform for g in row.gated_platforms],
                          # each platform's own gate (an arm64 image is gated under emulation, elsewhere)
                          "by_platform": {g.platform: {"mode": g.mode, "where": g.where, "date": g.date}
                                          for g in row.gated_platforms}} if row.gated else None,
            }
            for row in rows
        ],
    }
    return json.dumps(body, indent=2) + "\n"


def container_disk_gb(row: SupportedTag, image_bytes: int | None) -> int:
    """Measured image size plus headroom, rounded up to 5 GB; the flavor's default when never measured."""
    if image_bytes is None:
        return CONTAINER_DISK_GB.get(row.flavor, 60)
    return 5 * math.ceil((image_bytes / 1e9 + CONTAINER_HEADROOM_GB) / 5)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def allowed_cuda_versions(row: SupportedTag) -> list[str]:
    """Host CUDA versions (the newest CUDA the host's driver supports, which RunPod filters on) that run the image:
    its own CUDA and newer. The driver floor of matrix.yaml is the oldest driver of that CUDA line; RunPod knows
    hosts by CUDA version, not driver branch, so the image's CUDA is the bound (a cu130 image never lands on a
    570 driver, which reports 12.8)."""
    if row.toolkit_kind != "cuda":
        return []
    floor = _version(row.toolkit_version)
    return [v for v in RUNPOD_CUDA_VERSIONS if _version(v) >= floor]


def _readme(row: SupportedTag) -> str:
    return (
        f"imagefactory {row.target_id}: {row.toolkit}, torch {row.torch}, python {row.python}, "
        f"for {', '.join(row.sms or row.gfx)} ({row.description})."
        + (f" Needs an NVIDIA driver ≥ {row.driver_floor}." if row.driver_floor else "")
        + f" SSH: `ssh -p PORT trainer@HOST` with the key in PUBLIC_KEY; JupyterLab on {JUPYTER_PORT} with the token"
        " JUPYTER_PASSWORD. Caches, outputs and the start probe's report (probe-report.json) live in /workspace."
        + f" Pin `{row.immutable_pattern}` for reproducible runs."
    )


def _runpod_fields(row: SupportedTag, repo: str, image_bytes: int | None) -> dict:
    return {
        "name": f"imagefactory-{row.target_id}",
        "imageName": f"{repo}:{row.target_id}",
        "containerDiskInGb": container_disk_gb(row, image_bytes),
        "volumeInGb": VOLUME_GB,
        "volumeMountPath": WORKSPACE,
        "ports": [f"{JUPYTER_PORT}/http", f"{SSH_PORT}/tcp"],
        "env": {**RUNPOD_ENV, "PROBE_EXPECT_TARGET": row.target_id},
    }


def runpod_template(row: SupportedTag, repo: str, image_bytes: int | None = None) -> str:
    """Body for `POST https://rest.runpod.io/v1/templates` (RunPod REST API v1 field names). No start command:
    the image's entrypoint starts sshd and JupyterLab from the env, runs the probe and keeps the pod up."""
    body = _runpod_fields(row, repo, image_bytes)
    body |= {
        "category": "NVIDIA" if row.vendor == "nvidia" else "AMD",
        "isServerless": False,
        "readme": _readme(row),
    }
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def runpod_pod(row: SupportedTag, repo: str, image_bytes: int | None = None) -> str:
    """Body for `POST https://rest.runpod.io/v1/pods`: the template's fields, one GPU, and allowedCudaVersions so
    RunPod never schedules the pod on a host whose driver is too old for the image. Add gpuTypeIds to choose
    the card."""
    body = _runpod_fields(row, repo, image_bytes) | {"gpuCount": 1}
    if row.vendor == "nvidia":
        body["allowedCudaVersions"] = allowed_cuda_versions(row)
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def lambda_cloud_init(row: SupportedTag, repo: str) -> str:
    """cloud-init user data for Lambda Cloud (Lambda Stack images ship Docker and the NVIDIA runtime)."""
    image = f"{repo}:{row.target_id}"
    gpus = "--gpus all" if row.vendor == "nvidia" else "--device /dev/kfd --device /dev/dri --group-add video"
    floor = f"an NVIDIA driver >= {row.driver_floor}" if row.driver_floor else "a ROCm host"
    return "\n".join([
        "#cloud-config",
        f"# imagefactory {row.target_id}: {row.toolkit}, torch {row.torch}; needs {floor}.",
        GENERATED_HEADER,
        "# Starts the image as a long-lived `trainer` container: the instance's SSH keys (those of user ubuntu)",
        f"# open the container's sshd on host port {LAMBDA_SSH_PORT}, JupyterLab listens on {JUPYTER_PORT} with the token in",
        "# /etc/imagefactory.env (set JUPYTER_PASSWORD there first, or Jupyter stays off), ~/workspace is /workspace.",
        "# The probe runs at start: its report is ~/workspace/probe-report.json, its verdict in `docker logs trainer`.",
        "write_files:",
        "  - path: /etc/imagefactory.env",
        "    permissions: '0600'",
        "    content: |",
        "      JUPYTER_PASSWORD=",
        f"      PROBE_EXPECT_TARGET={row.target_id}",
        "runcmd:",
        "  - |",
        "    set -eu",
        "    install -d -o 1000 -g 1000 /home/ubuntu/workspace",
        f"    docker pull {image}",
        f"    docker run -d --name trainer --restart unless-stopped {gpus} --ipc=host \\",
        "      --env-file /etc/imagefactory.env -e PUBLIC_KEY=\"$(cat /home/ubuntu/.ssh/authorized_keys)\" \\",
        f"      -v /home/ubuntu/workspace:{WORKSPACE} -p {LAMBDA_SSH_PORT}:{SSH_PORT} -p {JUPYTER_PORT}:{JUPYTER_PORT} \\",
        f"      {image}",
        "",
    ])


def generate(targets: Iterable[Target], repo: str = DOCS_REPO, docs_dir: Path = Path("docs"),
             sizes: Mapping[str, int] | None = None) -> dict[Path, str]:
    """sizes: measured image bytes by target id (docs/deploy/image-sizes.json); unmeasured targets get defaults."""
    sizes = sizes or {}
    check_docs_repo(repo)
    rows = supported_tags(targets, load_gated(docs_dir / "gated.json"))
    files = {
        docs_dir / "supported-tags.md": supported_tags_markdown(rows, repo),
        docs_dir / "supported-tags.json": supported_tags_json(rows, repo),
    }
    for row in rows:
        deploy = docs_dir / "deploy" / row.target_id
        files[deploy / "runpod-template.json"] = runpod_template(row, repo, sizes.get(row.target_id))
        files[deploy / "runpod-pod.json"] = runpod_pod(row, repo, sizes.get(row.target_id))
        if row.vendor == "nvidia":  # Lambda Cloud rents NVIDIA GPUs only
            files[deploy / "lambda-cloud-init.yaml"] = lambda_cloud_init(row, repo)
    return files


def _read(path: Path) -> str | None:
    """The text of a regular file that is not a link; None otherwise (a directory, a link, unreadable)."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def generated_by_us(path: Path) -> bool:
    """A deploy file this generator wrote: the cloud-init header, or the template naming its own target.
    Anything else under docs/deploy is the user's and is never removed."""
    text = _read(path)
    if text is None:
        return False
    if path.name == "lambda-cloud-init.yaml":
        return GENERATED_HEADER in text.splitlines()[:4]
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and body.get("name") == f"imagefactory-{path.parent.name}"


def _inside(path: Path, docs_dir: Path) -> bool:
    """True when no link leads `path` out of docs_dir (every component below docs_dir is a real one)."""
    root = docs_dir.resolve()
    try:
        relative = path.relative_to(docs_dir)
    except ValueError:
        return False
    current = docs_dir
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            return False
    return current.resolve().is_relative_to(root) if current.exists() else current.parent.resolve().is_relative_to(root)


def _stale(files: Mapping[Path, str], docs_dir: Path) -> list[Path]:
    """Generated deploy files on disk for targets no longer in the matrix (links and others' files excluded)."""
    deploy = docs_dir / "deploy"
    if deploy.is_symlink() or not deploy.is_dir():
        return []
    on_disk = [directory / name for directory in deploy.iterdir() if directory.is_dir() and not directory.is_symlink()
               for name in DEPLOY_FILES]
    return sorted(p for p in on_disk if p not in files and _inside(p, docs_dir) and generated_by_us(p))


def drift(files: Mapping[Path, str], docs_dir: Path = Path("docs")) -> list[str]:
    """One line per file that differs from what the matrix generates (empty: in sync)."""
    problems = []
    for path, text in sorted(files.items()):
        if not _inside(path, docs_dir):
            problems.append(f"{path}: a link leads out of {docs_dir}; remove it")
        elif not path.exists() and not path.is_symlink():
            problems.append(f"{path}: missing")
        elif _read(path) != text:
            problems.append(f"{path}: out of date")
    problems += [f"{path}: target no longer in the matrix" for path in _stale(files, docs_dir)]
    return problems


def write(files: Mapping[Path, str], docs_dir: Path = Path("docs")) -> list[Path]:
    """Write files whose text changed (atomically), remove stale deploy files; returns what changed.
    Never through a link: a path whose folder or file is a symbolic link is refused before anything is
    written, and only files this generator made are removed."""
    outside = [path for path in sorted(files) if not _inside(path, docs_dir)]
    if outside:
        raise UsageError(f"{outside[0]}: a symbolic link leads out of {docs_dir}; remove it (nothing written)")
    changed = []
    for path, text in sorted(files.items()):
        if _read(path) == text:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp")
            temporary.unlink(missing_ok=True)  # a stale one (or a link planted there) is replaced, not followed
            temporary.write_text(text)
            temporary.replace(path)
        except OSError as error:
            raise ImageFactoryError(f"{path}: cannot write ({error.strerror or error})") from None
        changed.append(path)
    for path in _stale(files, docs_dir):
        try:
            path.unlink()
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
        except OSError as error:
            raise ImageFactoryError(f"{path}: cannot remove ({error.strerror or error})") from None
        changed.append(path)
    return changed
