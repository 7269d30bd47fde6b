"""Fixtures for the build tests: real targets from the repository's matrix, fake docker clients."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from imagefactory.plan.expand import resolve_target
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.model import Target
from imagefactory.plan.render import REPO_ROOT


@pytest.fixture(scope="session")
def matrix():
    return load_matrix(REPO_ROOT / "matrix.yaml")


@pytest.fixture(scope="session")
def hopper(matrix) -> Target:
    return resolve_target(matrix, "hopper-cu130")


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_docker(tmp_path: Path):
    """Make a fake `docker` executable from a shell `case` body; every call is logged to calls.log."""
    log = tmp_path / "calls.log"

    def make(cases: str, name: str = "docker") -> Path:
        body = f'echo "$*" >> {log}\ncase "$*" in\n{cases}\nesac\n'
        return write_script(tmp_path / name, body)

    make.log = log  # type: ignore[attr-defined]
    return make


@pytest.fixture(autouse=True)
def _no_client_override(monkeypatch):
    monkeypatch.delenv("IMAGEFACTORY_DOCKER", raising=False)
    yield
    os.environ.pop("IMAGEFACTORY_DOCKER", None)
