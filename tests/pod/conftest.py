"""The image the pod tests run: --image or IMAGEFACTORY_POD_IMAGE (an id or tag), else --target (hopper-cu130) built through the real
CLI without the gate (cached layers make this seconds after tests/build built it; no tag is set)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from imagefactory.plan.render import REPO_ROOT


@pytest.fixture(scope="session")
def docker_cli() -> str:
    return os.environ.get("IMAGEFACTORY_DOCKER") or "docker"


@pytest.fixture(scope="session")
def pod_image(request, docker_cli) -> str:
    # --image: the same option as the image suite (tests/build/test_build_image.py)
    given = request.config.getoption("--image") or os.environ.get("IMAGEFACTORY_POD_IMAGE")
    if given:
        return given
    # The same release as tests/build/test_build_image.py: after it ran, this is the same image (all layers cached,
    # the same ID in reports/<target>/build.json).
    target = request.config.getoption("--target")
    argv = [sys.executable, "-m", "imagefactory", "build", target, "--release", "test", "--no-gate", "--quiet"]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    record = REPO_ROOT / "reports" / target / "build.json"
    image_id = json.loads(record.read_text()).get("image_id") if record.exists() else None
    if done.returncode != 0 or not image_id:
        pytest.fail(f"build of {target} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return image_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> float:
    """Seconds until 127.0.0.1:port accepts a connection."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return time.monotonic() - t0
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def http_status(url: str, token: str | None = None, timeout: float = 5) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):  # nothing listening yet
        return 0


class Container:
    """`docker run -d --network host …` and its removal."""

    def __init__(self, docker: str, image: str, *args: str, env: dict[str, str] | None = None,
                 volumes: tuple[str, ...] = (), command: tuple[str, ...] = ()) -> None:
        argv = [docker, "run", "-d", "--network", "host"]
        for key, value in (env or {}).items():
            argv += ["-e", f"{key}={value}"]
        for volume in volumes:
            argv += ["-v", volume]
        argv += [*args, image, *command]
        self.docker = docker
        self.started = time.monotonic()
        self.id = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    def exec(self, *argv: str, user: str | None = None) -> subprocess.CompletedProcess:
        cmd = [self.docker, "exec", *(["-u", user] if user else []), self.id, *argv]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    def logs(self) -> str:
        done = subprocess.run([self.docker, "logs", self.id], capture_output=True, text=True, check=False)
        return done.stdout + done.stderr

    def remove(self) -> None:
        subprocess.run([self.docker, "rm", "-f", self.id], capture_output=True, check=False)


@pytest.fixture
def container(docker_cli, pod_image):
    made: list[Container] = []

    def run(*args: str, **kwargs) -> Container:
        made.append(Container(docker_cli, pod_image, *args, **kwargs))
        return made[-1]

    yield run
    for c in made:
        c.remove()
