"""Fixtures for the planning tests: the real matrix, a matrix-from-text loader, and the CLI in-process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from imagefactory import cli
from imagefactory.plan.matrix import load_matrix, parse_matrix
from imagefactory.plan.model import Matrix

REPO = Path(__file__).resolve().parents[2]
MATRIX_PATH = REPO / "matrix.yaml"


@pytest.fixture(scope="session")
def matrix() -> Matrix:
    return load_matrix(MATRIX_PATH)


@pytest.fixture(scope="session")
def matrix_text() -> str:
    return MATRIX_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def matrix_data(matrix_text: str) -> dict:
    return yaml.safe_load(matrix_text)


@pytest.fixture
def parse() -> Callable[[str], Matrix]:
    return lambda text: parse_matrix(text, Path("matrix.yaml"))


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """The CLI in-process."""

    def run(*argv: str) -> CliResult:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def update_golden() -> bool:
    """IMAGEFACTORY_UPDATE_GOLDEN=1 rewrites the golden files instead of comparing (see docs/matrix.md)."""
    import os

    return os.environ.get("IMAGEFACTORY_UPDATE_GOLDEN") == "1"
