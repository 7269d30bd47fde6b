"""Fake detections for the probe's CPU tests: no torch, no GPU, no driver needed."""

from __future__ import annotations

import pytest

from probe.detect import PACKAGES
from probe.results import Detection, Gpu, TorchInfo

NO_PACKAGES = dict.fromkeys(PACKAGES)


def fake_detection(*, gpus=(), torch=True, cuda="13.0", driver_cuda=None, packages=None, arch=()) -> Detection:
    info = None
    if torch:
        info = TorchInfo(version="2.14.1+cu130", cuda=cuda, hip=None, arch_list=tuple(arch),
                         cuda_available=bool(gpus), device_count=len(gpus), cudnn="91900", nccl="2.28.9")
    return Detection(
        vendor=gpus[0].vendor if gpus else "none",
        gpus=tuple(gpus),
        driver_version="580.159.04" if driver_cuda else None,
        driver_cuda=driver_cuda,
        python="3.11.9",
        torch=info,
        torch_error=None if torch else "ModuleNotFoundError: No module named 'torch'",
        packages={**NO_PACKAGES, "torch": "2.14.1" if torch else None, **(packages or {})},
        nvcc=None,
        bitsandbytes_library=None,
        bitsandbytes_error="bitsandbytes is not installed",
    )


def h100(free_mib: int = 80_000) -> Gpu:
    return Gpu(0, "NVIDIA H100 80GB HBM3", "nvidia", "9.0", None, 81_559, free_mib)


@pytest.fixture
def cpu_host(monkeypatch):
    """`python -m probe` sees a CPU-only host with torch 2.14.1+cu130 (nothing is imported for real)."""
    import probe.detect

    det = fake_detection()
    monkeypatch.setattr(probe.detect, "detect", lambda with_torch=True: det)
    for name in list(__import__("os").environ):
        if name.startswith("PROBE_EXPECT_"):
            monkeypatch.delenv(name)
    return det
