"""The Docker operations publishing needs (imagefactory.release.DockerOps), through imagefactory.run."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from imagefactory.release_errors import ReleaseError
from imagefactory.run import CommandError, run

DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


def docker_client() -> str:
    """Debian's 20.10 client (/usr/bin/docker) when present: the newer preinstalled one lacks buildx.
    IMAGEFACTORY_DOCKER overrides."""
    chosen = os.environ.get("IMAGEFACTORY_DOCKER")
    if chosen:
        return chosen
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")


class CliDocker:
    def __init__(self, client: str | None = None) -> None:
        self.client = client or docker_client()

    def _run(self, *args: str, capture: bool = True, action: str) -> str:
        try:
            return run([self.client, *args], capture=capture).stdout.strip()
        except CommandError as error:
            raise ReleaseError(f"{action} failed: {error.message}") from None

    def image_labels(self, ref: str) -> dict[str, str] | None:
        done = run([self.client, "image", "inspect", "--format", "{{json .Config.Labels}}", ref], capture=True, check=False)
        if not done.ok:
            if any("No such image" in line for line in done.tail):
                return None
            raise ReleaseError(f"docker image inspect {ref} failed: {done.tail[-1] if done.tail else done.returncode}")
        return json.loads(done.stdout or "null") or {}

    def label_child(self, parent_id: str, labels: dict[str, str], tag: str) -> str:
        """`FROM <parent>` plus labels; classic builder: it resolves a local image ID offline and adds no layer."""
        with tempfile.TemporaryDirectory(prefix="imagefactory-release-") as context:
            (Path(context) / "Dockerfile").write_text(f"FROM {parent_id}\n")
            label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
            try:
                done = run([self.client, "build", "-q", "--network", "none", *label_args, "-t", tag, context],
                           env={"DOCKER_BUILDKIT": "0"}, capture=True)
            except CommandError as error:
                raise ReleaseError(f"labelling {parent_id[:19]} as {tag} failed: {error.message}") from None
        return done.stdout.strip().splitlines()[-1]

    def tag(self, source: str, target: str) -> None:
        self._run("tag", source, target, action=f"docker tag {source} {target}")

    def push(self, ref: str) -> str:
        """Stream docker's per-layer progress; return the digest it reports."""
        digests: list[str] = []

        def watch(line: str) -> None:
            found = DIGEST.search(line)
            if found:
                digests.append(found.group(1))

        try:
            run([self.client, "push", ref], on_line=watch)
        except CommandError as error:
            raise ReleaseError(f"push of {ref} failed: {error.message}") from None
        if not digests:
            raise ReleaseError(f"push of {ref}: docker reported no digest")
        return digests[-1]

    def pull(self, ref: str) -> None:
        self._run("pull", ref, capture=False, action=f"docker pull {ref}")
