"""Shared pytest wiring: markers that skip cleanly when the machine lacks a GPU or Docker."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bnb-source",
        default=os.environ.get("IMAGEFACTORY_BNB_SOURCE"),
        help="local bitsandbytes source tree: enables the opt-in compile-from-source image test",
    )
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (property tests, hadolint); make test and CI pass it")
    parser.addoption("--target", default="hopper-cu130",
                     help="image suite (tests/build/test_build_image.py): the target whose image it inspects")
    parser.addoption("--platform", default=None,
                     help="image suite: the image's platform (linux/arm64: built here and run under QEMU emulation)")
    parser.addoption("--image", default=None,
                     help="image suite: inspect this image (ID or reference) instead of building --target through the CLI")


def _has_gpu() -> bool:
    try:
        import torch
    except Exception:  # noqa: BLE001 - a broken torch install counts as no GPU
        return False
    return bool(torch.cuda.is_available())


def _has_docker() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_gpu = any("gpu" in item.keywords for item in items)
    needs_docker = any("docker" in item.keywords for item in items)
    gpu = _has_gpu() if needs_gpu else False
    docker = _has_docker() if needs_docker else False
    slow = config.getoption("--slow")
    for item in items:
        if "slow" in item.keywords and not slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --slow (make test and CI do)"))
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU visible to torch"))
        if "docker" in item.keywords and not docker:
            item.add_marker(pytest.mark.skip(reason="no reachable Docker daemon (docker info failed)"))
