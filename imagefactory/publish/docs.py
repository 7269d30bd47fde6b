"""Files generated from the matrix for the people who pull the images, kept in sync by `docs --check`:

- docs/supported-tags.md   target → tags, SMs, CUDA/ROCm, torch, python, minimum driver (like NVIDIA's page)
- docs/supported-tags.json the same for machines: `python -m probe select --tags-file` reads it
- docs/deploy/<target>/runpod-template.json   body for RunPod's `POST /v1/templates`
- docs/deploy/<target>/lambda-cloud-init.yaml user data for a Lambda Cloud instance (NVIDIA targets)

Pure: targets in, {path: text} out. Writing only changes files whose text differs, and removes
deploy files of targets that left the matrix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagefactory.plan.model import Target, immutable_tag
from imagefactory.publish.errors import ReleaseError
from imagefactory.publish.gated import GatedBuild
from imagefactory.publish.gated import load as load_gated

# The repository the docs name; the release workflow publishes to ghcr.io/<owner>/imagefactory.
# Regenerate with --repo for another registry.
DOCS_REPO = "ghcr.io/imagefactory/imagefactory"
RELEASE_PLACEHOLDER = "<release>"
TRITON_CACHE_DIR = "/opt/triton-cache"
WORKSPACE = "/workspace"

# Container disk per flavor (GB): image size plus room for pip installs and checkpoints outside the
# volume. Vendor flavors ship the full CUDA/ROCm runtime base and are bigger.
CONTAINER_DISK_GB = {"slim": 40, "nvidia": 60, "rocm": 80}
VOLUME_GB = 200  # models, datasets and checkpoints live on the persistent volume


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

    @classmethod
    def of(cls, target: Target, gated: GatedBuild | None = None) -> SupportedTag:
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
            gated=gated if gated is not None and gated.torch == target.torch.version else None,
            platforms=tuple(target.platforms),
        )


def supported_tags(targets: Iterable[Target], gated: Mapping[str, GatedBuild] | None = None) -> list[SupportedTag]:
    record = gated or {}
    return sorted((SupportedTag.of(t, record.get(t.id)) for t in targets), key=lambda row: (row.vendor != "nvidia", row.target_id))


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
        "**Platforms**: arm64 where the arch's machines are Grace (GH200, GB200) and PyPI's aarch64 torch is",
        "the same CUDA build (torch ≥ 2.11); arm64 images were not built here yet.",
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
            f"{row.gated.summary() if row.gated else 'not built here'} |"
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
                "gated": {"mode": row.gated.mode, "where": row.gated.where, "date": row.gated.date} if row.gated else None,
            }
            for row in rows
        ],
    }
    return json.dumps(body, indent=2) + "\n"


def start_command(image_has_workspace: bool = True) -> str:
    """What a pod runs first: the probe (GPU required), its JSON report kept on the volume; the container
    stays up either way so a failed probe can be read, but the log says loudly that it failed."""
    report = f"{WORKSPACE}/probe-report.json" if image_has_workspace else "/tmp/probe-report.json"
    return (
        f"python -m probe --require-gpu --json > {report}; rc=$?; "
        f'if [ "$rc" -eq 0 ]; then echo "imagefactory probe: passed ({report})"; '
        f'else echo "imagefactory probe: FAILED (exit $rc), see {report}" >&2; fi; '
        "exec sleep infinity"
    )


def runpod_template(row: SupportedTag, repo: str) -> str:
    """Body for `POST https://rest.runpod.io/v1/templates` (RunPod REST API v1 field names)."""
    body = {
        "name": f"imagefactory-{row.target_id}",
        "imageName": f"{repo}:{row.target_id}",
        "category": "NVIDIA" if row.vendor == "nvidia" else "AMD",
        "containerDiskInGb": CONTAINER_DISK_GB.get(row.flavor, 60),
        "volumeInGb": VOLUME_GB,
        "volumeMountPath": WORKSPACE,
        "env": {
            "TRITON_CACHE_DIR": TRITON_CACHE_DIR,
            "HF_HOME": f"{WORKSPACE}/hf",
            "PROBE_EXPECT_TARGET": row.target_id,
        },
        "dockerStartCmd": ["bash", "-c", start_command()],
        "ports": ["22/tcp"],
        "isServerless": False,
        "readme": (
            f"imagefactory {row.target_id}: {row.toolkit}, torch {row.torch}, python {row.python}, "
            f"for {', '.join(row.sms or row.gfx)} ({row.description})."
            + (f" Needs an NVIDIA driver ≥ {row.driver_floor}." if row.driver_floor else "")
            + " The pod runs `python -m probe --require-gpu` first; its report is /workspace/probe-report.json."
            + f" Pin `{row.immutable_pattern}` for reproducible runs."
        ),
    }
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def lambda_cloud_init(row: SupportedTag, repo: str) -> str:
    """cloud-init user data for Lambda Cloud (Lambda Stack images ship Docker and the NVIDIA runtime)."""
    image = f"{repo}:{row.target_id}"
    gpus = "--gpus all" if row.vendor == "nvidia" else "--device /dev/kfd --device /dev/dri --group-add video"
    floor = f"an NVIDIA driver >= {row.driver_floor}" if row.driver_floor else "a ROCm host"
    run = f"docker run {gpus} --ipc=host --env-file /etc/imagefactory.env"
    return "\n".join([
        "#cloud-config",
        f"# imagefactory {row.target_id}: {row.toolkit}, torch {row.torch}; needs {floor}.",
        "# Generated from matrix.yaml by `python -m imagefactory docs`; do not edit by hand.",
        "# Pulls the image, runs the probe on the GPU (log: /var/log/imagefactory-probe.log), then starts a",
        "# long-lived `trainer` container with /home/ubuntu/workspace mounted at /workspace.",
        "write_files:",
        "  - path: /etc/imagefactory.env",
        "    permissions: '0644'",
        "    content: |",
        f"      TRITON_CACHE_DIR={TRITON_CACHE_DIR}",
        f"      HF_HOME={WORKSPACE}/hf",
        f"      PROBE_EXPECT_TARGET={row.target_id}",
        "runcmd:",
        "  - |",
        "    set -u",
        "    install -d -o 1000 -g 1000 /home/ubuntu/workspace",
        f"    docker pull {image}",
        f"    if ! {run} --rm {image} python -m probe --require-gpu > /var/log/imagefactory-probe.log 2>&1; then",
        "      echo 'imagefactory probe FAILED: see /var/log/imagefactory-probe.log' | wall",
        "    fi",
        f"    {run} -d --name trainer --restart unless-stopped -v /home/ubuntu/workspace:{WORKSPACE} {image} sleep infinity",
        "",
    ])


def generate(targets: Iterable[Target], repo: str = DOCS_REPO, docs_dir: Path = Path("docs")) -> dict[Path, str]:
    rows = supported_tags(targets, load_gated(docs_dir / "gated.json"))
    files = {
        docs_dir / "supported-tags.md": supported_tags_markdown(rows, repo),
        docs_dir / "supported-tags.json": supported_tags_json(rows, repo),
    }
    for row in rows:
        files[docs_dir / "deploy" / row.target_id / "runpod-template.json"] = runpod_template(row, repo)
        if row.vendor == "nvidia":  # Lambda Cloud rents NVIDIA GPUs only
            files[docs_dir / "deploy" / row.target_id / "lambda-cloud-init.yaml"] = lambda_cloud_init(row, repo)
    return files


def _stale(files: Mapping[Path, str], docs_dir: Path) -> list[Path]:
    """Generated deploy files on disk for targets no longer in the matrix."""
    deploy = docs_dir / "deploy"
    on_disk = [p for p in deploy.glob("*/*") if p.name in ("runpod-template.json", "lambda-cloud-init.yaml")] if deploy.is_dir() else []
    return sorted(p for p in on_disk if p not in files)


def drift(files: Mapping[Path, str], docs_dir: Path = Path("docs")) -> list[str]:
    """One line per file that differs from what the matrix generates (empty: in sync)."""
    problems = []
    for path, text in sorted(files.items()):
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text() != text:
            problems.append(f"{path}: out of date")
    problems += [f"{path}: target no longer in the matrix" for path in _stale(files, docs_dir)]
    return problems


def write(files: Mapping[Path, str], docs_dir: Path = Path("docs")) -> list[Path]:
    """Write files whose text changed (atomically), remove stale deploy files; returns what changed."""
    changed = []
    for path, text in sorted(files.items()):
        if path.exists() and path.read_text() == text:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(text)
            temporary.replace(path)
        except OSError as error:
            raise ReleaseError(f"{path}: cannot write ({error.strerror})") from None
        changed.append(path)
    for path in _stale(files, docs_dir):
        path.unlink()
        if not any(path.parent.iterdir()):
            path.parent.rmdir()
        changed.append(path)
    return changed
