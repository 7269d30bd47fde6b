"""Measured image sizes, the input for the deploy files' container disk (docs/deploy/image-sizes.json).

`python -m imagefactory docs --measure` reads the size of each local gated image (`<image_repo>:<target>`, the
uncompressed size `docker image inspect` reports) and records it here; `docs` sizes RunPod's containerDiskInGb
from it. The file is committed, so the generated docs stay reproducible on a machine without the images.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from imagefactory.build.docker import DockerClient, image_inspect
from imagefactory.errors import ConfigError, ImageFactoryError
from imagefactory.plan.model import Target

SIZES_FILE = Path("deploy") / "image-sizes.json"  # under the docs directory
MAX_BYTES = 10**13  # 10 TB: anything larger is not an image size


def load(docs_dir: Path) -> dict[str, int]:
    """{target id: bytes}; an absent file is an empty record. A malformed one is an error naming the file."""
    path = docs_dir / SIZES_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{path}: not readable JSON ({exc})"]) from None
    sizes = data.get("images") if isinstance(data, dict) else None
    if not isinstance(sizes, dict):
        raise ConfigError([f"{path}: expected {{\"images\": {{TARGET: BYTES}}}}"])
    for target, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size < MAX_BYTES:
            raise ConfigError([f"{path}: images.{target}: not a size in bytes: {size!r}"])
    return dict(sizes)


def dumps(sizes: Mapping[str, int]) -> str:
    body = {"_comment": "Uncompressed image sizes (docker image inspect .Size) of gated images, by target; "
                        "written by `python -m imagefactory docs --measure`, read by `docs`.",
            "images": dict(sorted(sizes.items()))}
    return json.dumps(body, indent=2) + "\n"


def measure(client: DockerClient, targets: Iterable[Target]) -> dict[str, int]:
    """Sizes of the local images tagged `<image_repo>:<target id>` (the floating tag a passing gate sets)."""
    found = {}
    for target in targets:
        info = image_inspect(client, f"{target.image_repo}:{target.id}")
        if info and isinstance(info.get("Size"), int):
            found[target.id] = info["Size"]
    return found


def write(docs_dir: Path, sizes: Mapping[str, int]) -> Path:
    path = docs_dir / SIZES_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(dumps(sizes))
        temporary.replace(path)
    except OSError as exc:
        raise ImageFactoryError(f"{path}: cannot write ({exc.strerror})") from None
    return path
