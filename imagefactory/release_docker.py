"""The Docker operations publishing needs (imagefactory.release.DockerOps), through imagefactory.run."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from imagefactory import docker
from imagefactory.release_errors import ReleaseError
from imagefactory.run import CommandError, run

DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


class CliDocker:
    """Over imagefactory.docker's detected client (Debian's 20.10 here; $IMAGEFACTORY_DOCKER overrides)."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self.docker = client or docker.detect()
        self.client = self.docker.executable

    def _run(self, *args: str, capture: bool = True, action: str) -> str:
        try:
            return run(self.docker.argv(*args), capture=capture).stdout.strip()
        except CommandError as error:
            raise ReleaseError(f"{action} failed: {error.message}") from None

    def image_labels(self, ref: str) -> dict[str, str] | None:
        return docker.image_labels(self.docker, ref)

    def label_child(self, parent_id: str, labels: dict[str, str], tag: str) -> str:
        """`FROM <parent>` plus labels; classic builder: it resolves a local image ID offline and adds no layer."""
        with tempfile.TemporaryDirectory(prefix="imagefactory-release-") as context:
            (Path(context) / "Dockerfile").write_text(f"FROM {parent_id}\n")
            label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
            try:
                # DOCKER_BUILDKIT=0: the classic builder takes `FROM <image id>` from the local store;
                # BuildKit would try to resolve it as a registry name.
                done = run(self.docker.argv("build", "-q", "--network", "none", *label_args, "-t", tag, context),
                           env={"DOCKER_BUILDKIT": "0"}, capture=True)
            except CommandError as error:
                raise ReleaseError(f"labelling {parent_id[:19]} as {tag} failed: {error.message}") from None
        return done.stdout.strip().splitlines()[-1]

    def tag(self, source: str, target: str) -> None:
        try:
            docker.tag(self.docker, source, target)
        except docker.DockerCommandError as error:
            raise ReleaseError(error.message) from None

    def push(self, ref: str) -> str:
        """Stream docker's per-layer progress; return the digest it reports."""
        digests: list[str] = []

        def watch(line: str) -> None:
            found = DIGEST.search(line)
            if found:
                digests.append(found.group(1))

        try:
            run(self.docker.argv("push", ref), on_line=watch)
        except CommandError as error:
            raise ReleaseError(f"push of {ref} failed: {error.message}") from None
        if not digests:
            raise ReleaseError(f"push of {ref}: docker reported no digest")
        return digests[-1]

    def pull(self, ref: str) -> None:
        self._run("pull", ref, capture=False, action=f"docker pull {ref}")
