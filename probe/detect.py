"""Detection with the standard library alone: GPUs, driver, toolchain and package versions.

torch and bitsandbytes are imported lazily and only to read facts; any failure becomes a recorded error string,
never an exception, so a broken stack is reported instead of crashing the probe.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess

from probe.results import Detection, Gpu, TorchInfo, one_line

PACKAGES = (
    "torch",
    "triton",
    "bitsandbytes",
    "transformers",
    "peft",
    "accelerate",
    "flash-attn",
    "flash-attn-3",
    "xformers",
    "deepspeed",
    "unsloth",
    "unsloth_zoo",
    "trl",
    "numpy",
)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], timeout: float = 20) -> str | None:
    """Output of a read-only query tool, or None when it is absent or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_nvidia_smi(csv_text: str) -> tuple[list[Gpu], str | None]:
    """Rows of `nvidia-smi --query-gpu=index,name,compute_cap,memory.total,memory.free,driver_version`."""
    gpus, driver = [], None
    for line in csv_text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 6:
            continue
        index, name, cap, total, free, driver = parts[:6]
        gpus.append(Gpu(int(index), name, "nvidia", cap if re.fullmatch(r"\d+\.\d+", cap) else None, None,
                        _int(total), _int(free)))
    return gpus, driver


def _int(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return 0


def driver_cuda_version() -> str | None:
    """Highest CUDA version the installed driver supports (cuDriverGetVersion), without torch."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    try:
        if lib.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
            return None
    except AttributeError:  # a stub library without the symbol
        return None
    return f"{version.value // 1000}.{(version.value % 1000) // 10}"


def _nvidia() -> tuple[list[Gpu], str | None, str | None]:
    out = _run(["nvidia-smi", "--query-gpu=index,name,compute_cap,memory.total,memory.free,driver_version",
                "--format=csv,noheader,nounits"])
    gpus, driver = parse_nvidia_smi(out) if out else ([], None)
    cuda = driver_cuda_version()
    if cuda is None and gpus:
        header = _run(["nvidia-smi"]) or ""
        found = re.search(r"CUDA Version:\s*([\d.]+)", header)
        cuda = found.group(1) if found else None
    return gpus, driver, cuda


def parse_rocminfo(text: str) -> list[Gpu]:
    """GPU agents of `rocminfo` (`Name: gfx942`; CPU agents and `Marketing Name:` lines do not match)."""
    names = re.findall(r"^\s*Name:\s*(gfx[0-9a-f]+)", text, re.M)
    return [Gpu(i, f"AMD {gfx}", "amd", None, gfx, 0, 0) for i, gfx in enumerate(names)]


def _amd() -> tuple[list[Gpu], str | None]:
    if not os.path.exists("/dev/kfd"):
        return [], None
    gpus = parse_rocminfo(_run(["rocminfo"]) or "")
    version = None
    try:
        with open("/sys/module/amdgpu/version", encoding="utf-8") as f:
            version = f.read().strip() or None
    except OSError:
        pass
    return gpus, version


def nvcc_version() -> str | None:
    nvcc = shutil.which("nvcc") or next(iter(glob.glob("/usr/local/cuda*/bin/nvcc")), None)
    out = _run([nvcc, "--version"]) if nvcc else None
    found = re.search(r"release (\d+\.\d+)", out or "")
    return found.group(1) if found else None


def torch_info() -> tuple[TorchInfo | None, list[Gpu], str | None]:
    """What torch sees; GPUs are returned with free memory from torch (more exact than nvidia-smi)."""
    try:
        import torch  # noqa: PLC0415
    except Exception as exc:  # a broken install raises anything: report it, don't crash
        return None, [], one_line(exc)
    try:
        available = bool(torch.cuda.is_available())
        count = torch.cuda.device_count() if available else 0
        gpus = []
        for i in range(count):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            hip = getattr(torch.version, "hip", None)
            gfx = getattr(props, "gcnArchName", "").split(":")[0] if hip else None
            gpus.append(Gpu(i, props.name, "amd" if hip else "nvidia",
                            None if hip else f"{props.major}.{props.minor}", gfx,
                            total // 2**20, free // 2**20))
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        try:
            nccl = ".".join(str(p) for p in torch.cuda.nccl.version()) if available else None
        except Exception:
            nccl = None
        info = TorchInfo(
            version=torch.__version__,
            cuda=torch.version.cuda,
            hip=getattr(torch.version, "hip", None),
            arch_list=tuple(torch.cuda.get_arch_list()) if available else (),
            cuda_available=available,
            device_count=count,
            cudnn=str(cudnn) if cudnn else None,
            nccl=nccl,
        )
        return info, gpus, None
    except Exception as exc:
        return None, [], one_line(exc)


def bitsandbytes_library() -> tuple[str | None, str | None]:
    """The native library bitsandbytes loaded (path), or why it did not."""
    if package_version("bitsandbytes") is None:
        return None, "bitsandbytes is not installed"
    try:
        import bitsandbytes.cextension as ce  # noqa: PLC0415
    except Exception as exc:
        return None, one_line(exc)
    lib = getattr(ce, "lib", None)
    path = getattr(lib, "_name", None) or getattr(getattr(lib, "_lib", None), "_name", None)
    if path is None:
        return None, "bitsandbytes loaded no native library"
    return str(path), None


def detect(with_torch: bool = True) -> Detection:
    nv_gpus, driver, driver_cuda = _nvidia()
    amd_gpus, amd_driver = ([], None) if nv_gpus else _amd()
    torch, torch_gpus, torch_error = torch_info() if with_torch else (None, [], "not inspected")
    gpus = torch_gpus or nv_gpus or amd_gpus
    if torch_gpus and nv_gpus and len(nv_gpus) == len(torch_gpus):
        # torch knows free memory exactly; nvidia-smi knows the capability string even without torch
        gpus = [Gpu(t.index, t.name, t.vendor, t.capability or n.capability, t.gfx, t.vram_total_mib,
                    t.vram_free_mib) for t, n in zip(torch_gpus, nv_gpus)]
    vendor = gpus[0].vendor if gpus else "none"
    bnb_lib, bnb_error = bitsandbytes_library() if with_torch and torch is not None else (None, "torch unavailable")
    notes = []
    if nv_gpus and torch is not None and not torch.cuda_available:
        notes.append(f"nvidia-smi sees {len(nv_gpus)} GPU(s) but torch sees none")
    return Detection(
        vendor=vendor,
        gpus=tuple(gpus),
        driver_version=driver or amd_driver,
        driver_cuda=driver_cuda,
        python=platform.python_version(),
        torch=torch,
        torch_error=torch_error,
        packages={name: package_version(name) for name in PACKAGES},
        nvcc=nvcc_version(),
        bitsandbytes_library=bnb_lib,
        bitsandbytes_error=bnb_error,
        notes=tuple(notes),
    )
