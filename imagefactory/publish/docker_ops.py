"""The Docker operations publishing needs (imagefactory.publish.push.DockerOps), through imagefactory.run."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from imagefactory.build import docker
from imagefactory.publish.errors import ReleaseError
from imagefactory.run import CommandError, run

DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")
LAYER_STATE = re.compile(r"^([0-9a-f]{12}): (.+)$")
LAYER_DONE = ("Pushed", "Layer already exists", "Mounted from")


class PushLayers:
    """Per-layer state from `docker push` output lines (docker prints state changes when not on a TTY)."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.digest: str | None = None

    def feed(self, line: str) -> bool:
        """Take one output line; True when it changed what the progress line shows."""
        found = DIGEST.search(line)
        if found:
            self.digest = found.group(1)
            return True
        state = LAYER_STATE.match(line.strip())
        if state is None:
            return False
        self.states[state.group(1)] = state.group(2)
        return True

    @property
    def done(self) -> int:
        return sum(state.startswith(LAYER_DONE) for state in self.states.values())

    def describe(self, ref: str) -> str:
        return f"pushing {ref}: {self.done}/{len(self.states)} layers"


class CliDocker:
    """Over imagefactory.build.docker's detected client (Debian's 20.10 here; $IMAGEFACTORY_DOCKER overrides)."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self.docker = client or docker.detect()
        self.client = self.docker.executable

    def _run(self, *args: str, capture: bool = True, action: str) -> str:
        try:
            return run(self.docker.argv(*args), capture=capture).stdout.strip()
        except CommandError as error:
            raise ReleaseError(f"{action} failed: {error.message}") from None

    def inspect(self, ref: str) -> dict | None:
        return docker.image_inspect(self.docker, ref)

    def tag(self, source: str, target: str) -> None:
        try:
            docker.tag(self.docker, source, target)
        except docker.DockerCommandError as error:
            raise ReleaseError(error.message) from None

    def push(self, ref: str) -> str:
        """Push with a live progress line (layers done / total, elapsed; docker's own lines in CI logs);
        return the digest docker reports."""
        layers = PushLayers()
        console = Console(stderr=True, soft_wrap=True)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task(layers.describe(ref), total=None)

            def watch(line: str) -> None:
                if layers.feed(line):
                    progress.update(task, description=layers.describe(ref))
                if not console.is_terminal:
                    console.print(line, markup=False, highlight=False)

            try:
                run(self.docker.argv("push", ref), on_line=watch, show=False)
            except CommandError as error:
                raise ReleaseError(f"push of {ref} failed after {layers.done}/{len(layers.states)} layers: {error.message}") from None
        if layers.digest is None:
            raise ReleaseError(f"push of {ref}: docker reported no digest")
        console.print(f"pushed {ref}: {len(layers.states)} layers, {layers.digest}", highlight=False)
        return layers.digest

    def read_file(self, image: str, path: str) -> bytes | None:
        """One file out of an image without running it (create, cp, rm); None when it is not there."""
        created = run(self.docker.argv("create", image, "/none"), capture=True, check=False)
        if not created.ok:
            raise ReleaseError(f"docker create {image[:19]} failed: {created.tail[-1] if created.tail else created.returncode}")
        container = created.stdout.strip()
        try:
            with tempfile.TemporaryDirectory(prefix="imagefactory-release-") as out:
                copied = run(self.docker.argv("cp", f"{container}:{path}", f"{out}/file"), capture=True, check=False)
                return (Path(out) / "file").read_bytes() if copied.ok and (Path(out) / "file").is_file() else None
        finally:
            run(self.docker.argv("rm", container), capture=True, check=False)

    def pull(self, ref: str) -> None:
        self._run("pull", ref, capture=False, action=f"docker pull {ref}")
