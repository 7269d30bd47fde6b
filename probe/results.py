"""Typed results shared by every part of the probe: checks, detection, decisions."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Status(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    WARN = "warn"  # passed, but below what the hardware should do; never fails the run


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "reason": self.reason, "numbers": dict(self.numbers)}


def passed(name: str, reason: str, **numbers: Any) -> Check:
    return Check(name, Status.PASS, reason, numbers)


def failed(name: str, reason: str, **numbers: Any) -> Check:
    return Check(name, Status.FAIL, reason, numbers)


def skipped(name: str, reason: str, **numbers: Any) -> Check:
    return Check(name, Status.SKIP, reason, numbers)


def warned(name: str, reason: str, **numbers: Any) -> Check:
    return Check(name, Status.WARN, reason, numbers)


def exit_code(checks: list[Check]) -> int:
    """0 when nothing failed (skips and warnings carry their reason), 1 otherwise."""
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    vendor: str  # "nvidia" | "amd"
    capability: str | None  # "9.0" on NVIDIA
    gfx: str | None  # "gfx942" on AMD
    vram_total_mib: int
    vram_free_mib: int

    @property
    def cc(self) -> tuple[int, int] | None:
        if not self.capability:
            return None
        major, _, minor = self.capability.partition(".")
        return int(major), int(minor or 0)


@dataclass(frozen=True)
class TorchInfo:
    version: str
    cuda: str | None
    hip: str | None
    arch_list: tuple[str, ...]
    cuda_available: bool
    device_count: int
    cudnn: str | None
    nccl: str | None


@dataclass(frozen=True)
class Detection:
    vendor: str  # "nvidia" | "amd" | "none"
    gpus: tuple[Gpu, ...]
    driver_version: str | None
    driver_cuda: str | None  # highest CUDA the driver supports, "13.0"
    python: str
    torch: TorchInfo | None
    torch_error: str | None
    packages: dict[str, str | None]  # distribution name -> version (None: not installed)
    nvcc: str | None
    bitsandbytes_library: str | None
    bitsandbytes_error: str | None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpu_count"] = len(self.gpus)
        return data
