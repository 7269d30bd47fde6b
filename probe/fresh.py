"""`python -m probe fresh-kernel`: can this image compile and launch a Triton kernel its warm cache lacks?

A user's first kernel of a new shape or signature is not in the baked cache. triton <= 3.6 then builds a C
launcher module for it (gcc + libc headers + Python.h); triton >= 3.7 launches through the cached cuda_utils
module and needs only its bundled ptxas. Either way the image must manage it by itself, with no network.

No GPU: the kernel (its source carries a fresh nonce, so no cache can hold it) is compiled for the image's SM
under the probe's stand-in driver into a scratch copy of the cache, and its host modules are built or found
there exactly as a first launch on the GPU would. With a GPU: the kernel is launched and its result checked.
Nothing is written to the image's own cache. Standard library only at import.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from probe.results import Check, failed, one_line, passed, skipped

NAME = "triton.fresh_kernel"

KERNEL_SOURCE = '''
import triton
import triton.language as tl


@triton.jit
def fresh_kernel_{nonce}(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(y_ptr + offsets, x * 2.0 + {addend}, mask=mask)
'''


def _load_kernel(folder: Path) -> tuple[Any, float]:
    """A kernel no cache holds: its source (which triton hashes) carries a random nonce."""
    nonce = secrets.token_hex(6)
    addend = float(int(nonce[:4], 16) % 97 + 1)
    path = folder / f"fresh_kernel_{nonce}.py"
    path.write_text(KERNEL_SOURCE.format(nonce=nonce, addend=addend))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # triton reads the function's source through its module
    spec.loader.exec_module(module)
    return getattr(module, f"fresh_kernel_{nonce}"), addend


def check(sm_text: str | None = None) -> Check:
    try:
        import torch  # noqa: PLC0415
        import triton  # noqa: PLC0415
    except Exception as exc:
        return failed(NAME, f"torch/triton not importable: {one_line(exc)}")
    if getattr(torch.version, "hip", None):
        return skipped(NAME, "ROCm build: the no-GPU recipe is proven for the CUDA backend only")
    numbers: dict[str, Any] = {"triton": triton.__version__, "c_compiler": _compiler()}
    if torch.cuda.is_available():
        return _on_gpu(torch, numbers)
    sms = [s.strip() for s in (sm_text or os.environ.get("PROBE_EXPECT_SM") or "9.0").split(",") if s.strip()]
    try:
        sm = int(sms[0].replace(".", ""))
    except ValueError:
        return failed(NAME, f"not an SM: {sms[0]!r}")
    return _on_cpu(sm, numbers)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _on_cpu(sm: int, numbers: dict[str, Any]) -> Check:
    from probe import warm  # noqa: PLC0415

    image_cache = warm.baked_cache_dir()  # the build's cache (in a pod image TRITON_CACHE_DIR is the writable layer)
    stub = warm.stub_dir_for(image_cache)
    if not (stub / "libcuda.so.1").exists():
        return failed(NAME, f"{image_cache} holds no {warm.STUB_DIR}/libcuda.so.1: cannot build host modules "
                            f"for a fresh kernel without the warm step's stub", **numbers)
    numbers |= {"sm": sm, "image_cache": str(image_cache)}
    started = time.perf_counter()
    with warm.scratch_copy(image_cache, "probe-fresh-") as scratch:  # a first launch finds what the image has
        os.environ["TRITON_CACHE_DIR"] = str(scratch)
        warm._point_triton_at(scratch)
        before = warm.snapshot(scratch)
        try:
            import torch  # noqa: PLC0415
            from triton.backends.nvidia import driver as nvidia  # noqa: PLC0415

            kernel, _ = _load_kernel(scratch.parent)
            x = torch.zeros(256, dtype=torch.float32)
            y = torch.zeros(256, dtype=torch.float32)
            with warm.stand_in_driver(sm, stub), warm.compile_events() as events:
                compiled = kernel.warmup(x, y, 256, grid=(1,), BLOCK=256)
                files = warm.snapshot(scratch)
                nvidia.CudaUtils()
                nvidia.CudaLauncher(compiled.src, compiled.metadata)  # triton <= 3.6: a C module, built with gcc
                host = warm.written(files, warm.snapshot(scratch))
        except Exception as exc:
            return failed(NAME, f"a kernel not in the cache cannot be compiled and prepared for launch on sm_{sm}: "
                                f"{one_line(exc)}", **numbers)
        new = warm.written(before, warm.snapshot(scratch))
    cubins = [f for f in new if f.endswith(".cubin")]
    numbers |= {"compiles": sum(not e["cache_hit"] for e in events), "new_files": len(new),
                "host_module_files": len(host), "seconds": round(time.perf_counter() - started, 2)}
    if not cubins:
        return failed(NAME, f"compiling a fresh kernel for sm_{sm} wrote no cubin", **numbers)
    how = (f"its launcher module built with {numbers['c_compiler']}" if host
           else "its host modules found in the image's cache (no C compiler needed)")
    return passed(NAME, f"a kernel no cache held compiled for sm_{sm} in a scratch copy of the cache, {how}; "
                        f"the image's cache untouched", **numbers)


def _on_gpu(torch: Any, numbers: dict[str, Any]) -> Check:
    from probe import warm  # noqa: PLC0415

    image_cache = warm.baked_cache_dir()  # the build's cache (in a pod image TRITON_CACHE_DIR is the writable layer)
    with tempfile.TemporaryDirectory(prefix="probe-fresh-") as tmp:
        scratch = Path(tmp) / "cache"
        if image_cache.is_dir():
            shutil.copytree(image_cache, scratch, symlinks=True)
        previous = os.environ.get("TRITON_CACHE_DIR")
        os.environ["TRITON_CACHE_DIR"] = str(scratch)
        warm._point_triton_at(scratch)
        try:
            kernel, addend = _load_kernel(Path(tmp))
            x = torch.arange(1000, device="cuda", dtype=torch.float32)
            y = torch.empty_like(x)
            t0 = time.perf_counter()
            kernel[(4,)](x, y, 1000, BLOCK=256)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            ok = bool(torch.equal(y, x * 2.0 + addend))
        except Exception as exc:
            return failed(NAME, f"launching a kernel not in the cache failed: {one_line(exc)}", **numbers)
        finally:
            os.environ["TRITON_CACHE_DIR"] = previous or str(image_cache)
            warm._point_triton_at(Path(previous or image_cache))
    numbers["first_launch_s"] = round(seconds, 2)
    if not ok:
        return failed(NAME, "a fresh kernel ran but computed the wrong result", **numbers)
    return passed(NAME, f"a kernel no cache held compiled and ran on the GPU ({seconds:.1f} s first launch)", **numbers)
