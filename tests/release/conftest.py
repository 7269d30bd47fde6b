"""A real registry for the push tests: Debian's `docker-registry` on 127.0.0.1:<free port>, storage in a
tmp dir. Tests marked `registry` skip cleanly when the binary is missing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REGISTRY_BIN = "/usr/bin/docker-registry"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    have = Path(REGISTRY_BIN).exists() or shutil.which("docker-registry") is not None
    for item in items:
        if "registry" in item.keywords and not have:
            item.add_marker(pytest.mark.skip(reason="Debian's docker-registry is not installed (apt-get install docker-registry)"))


@dataclass
class LocalRegistry:
    host: str  # 127.0.0.1:PORT
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("docker-registry") or REGISTRY_BIN, "serve", str(self.config)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"docker-registry did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()  # abrupt, like a crash: what the "fails midway" test needs
            self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    registry = LocalRegistry(f"127.0.0.1:{port}", config, tmp_path / "registry.log")
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()
