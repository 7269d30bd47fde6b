"""Triton warm-up with no GPU and no driver, and the check that a cache is warm.

How (see shared/DESIGN.md): a stand-in active driver reports the target SM; each project kernel is compiled
with `warmup()` on CPU tensors of the real dtypes and alignment; the host-side modules (cuda_utils and one
launcher per kernel signature) are built against a stub libcuda.so.1 that we compile with gcc into the cache
itself, so a runtime image without gcc or a driver can load them again to check the cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.shapes import SMOKE, dtype_for_sm

STUB_DIR = "imagefactory-stub"  # inside TRITON_CACHE_DIR, so the stub travels with the cache
DEFAULT_CACHE = Path.home() / ".triton" / "cache"


@dataclass
class WarmReport:
    sm: int
    cache_dir: str
    kernels: list[dict[str, Any]] = field(default_factory=list)  # name, dtype, cache_hit, seconds
    modules: list[dict[str, Any]] = field(default_factory=list)  # launcher/utility modules built or found
    new_files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def cache_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("TRITON_CACHE_DIR") or DEFAULT_CACHE)


# Images keep the cache warmed at build time read-only at this path and write new kernels to TRITON_CACHE_DIR
# (pod/triton_cache.py layers the two): the warm-cache check verifies the baked one.
BAKED_CACHE_ENV = "IMAGEFACTORY_TRITON_BAKED_CACHE"


def baked_cache_dir() -> Path:
    return Path(os.environ.get(BAKED_CACHE_ENV) or cache_dir())


def stub_dir_for(root: Path) -> Path:
    """Where the stub lives for a cache. Images set TRITON_LIBCUDA_PATH to it at run time too: triton >= 3.7 keys
    its host modules on the library dirs, so the runtime must name the same dir the warm-up linked against (on a
    GPU the loader still binds the real driver's libcuda.so.1: the stub's dir is not on the loader's path)."""
    return root / STUB_DIR


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file with its mtime and size: a rewritten cache entry counts as written, not only a new one."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def written(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(name for name, stamp in after.items() if before.get(name) != stamp)


def _driver_symbols() -> list[str]:
    """Every cu* name triton's NVIDIA driver glue mentions (driver.c and the launcher template in driver.py)."""
    import re  # noqa: PLC0415

    from triton.backends.nvidia import driver as nvidia  # noqa: PLC0415

    here = Path(nvidia.__file__).parent
    text = "".join(p.read_text(errors="ignore") for p in (here / "driver.c", here / "driver.py") if p.exists())
    names = set(re.findall(r"\b(cu[A-Z][A-Za-z0-9_]*)\b", text))
    # cuda.h maps some names to versioned entry points (cuMemGetInfo -> cuMemGetInfo_v2)
    return sorted(names | {f"{n}_v2" for n in names} | {f"{n}_v3" for n in names})


def build_stub(root: Path) -> Path:
    """A stand-in libcuda.so.1 defining every driver entry point the host modules use (each returns an error).

    Defined symbols matter twice: the linker (often --as-needed) records NEEDED libcuda.so.1 only when the
    library provides a used symbol, so on a GPU the real driver is loaded and bound; and without a driver the
    modules can still be loaded (to check the cache) because every symbol resolves against the stub.
    """
    stub_dir = stub_dir_for(root)
    stub = stub_dir / "libcuda.so.1"
    if stub.exists():
        _link_unversioned(stub_dir)
        return stub_dir
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler to build the stub libcuda.so.1 (gcc needed at warm time)")
    stub_dir.mkdir(parents=True, exist_ok=True)
    body = "".join(f"int {name}(void) {{ return 999; }}\n" for name in _driver_symbols())  # CUDA_ERROR_UNKNOWN
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "stub.c"
        src.write_text(body)
        built = Path(tmp) / "libcuda.so.1"
        subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(built), str(src)],
                       check=True, capture_output=True)
        shutil.move(str(built), stub)  # whole file or nothing
    _link_unversioned(stub_dir)
    return stub_dir


def _link_unversioned(stub_dir: Path) -> None:
    """`libcuda.so` -> `libcuda.so.1`: triton <= 3.5 links its host modules with `-lcuda`, which the linker
    resolves by the unversioned name only (`ld: cannot find -lcuda` without it); the modules still record
    the soname, NEEDED libcuda.so.1, so the real driver is the one loaded on a GPU."""
    link = stub_dir / "libcuda.so"
    if not link.is_symlink():
        link.symlink_to("libcuda.so.1")  # relative: the cache is copied (replays, COPY --from=warm)


@contextlib.contextmanager
def stand_in_driver(sm: int, stub_dir: Path | None) -> Iterator[None]:
    """Make triton believe an sm_XX GPU is active; host modules link and load against the stub."""
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.backends.nvidia import driver as nvidia  # noqa: PLC0415
    from triton.runtime.driver import driver  # noqa: PLC0415

    class StandInDriver:
        launcher_cls = nvidia.CudaLauncher

        def __init__(self) -> None:
            self.target = GPUTarget("cuda", sm, 32)
            self._utils = None

        @property
        def utils(self):
            # triton >= 3.7 launches through cuda_utils itself (no per-kernel launcher modules)
            if self._utils is None:
                self._utils = nvidia.CudaUtils()
            return self._utils

        def get_current_target(self):
            return self.target

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            return None

        def get_current_stream(self, device=None):
            return 0

        def get_device_capability(self, device=0):
            return divmod(sm, 10)

        def map_python_to_cpp_type(self, ty):
            return nvidia.ty_to_cpp(ty)

        @staticmethod
        def is_active():
            return False

    old_env = os.environ.get("TRITON_LIBCUDA_PATH")
    old_flags = sys.getdlopenflags()
    if stub_dir is not None:
        os.environ["TRITON_LIBCUDA_PATH"] = str(stub_dir)
        nvidia.library_dirs.cache_clear()
        # the stub satisfies the modules' NEEDED libcuda.so.1; lazy binding defers the cu* symbols it lacks
        ctypes.CDLL(str(stub_dir / "libcuda.so.1"), mode=os.RTLD_GLOBAL)
        sys.setdlopenflags(os.RTLD_LAZY | os.RTLD_GLOBAL)
    previous_driver = getattr(driver, "_active", None)
    _forget_compiled_kernels()
    driver.set_active(StandInDriver())
    try:
        yield
    finally:
        # not reset_active(): that would build the default driver, which fails where no GPU is visible
        if hasattr(driver, "_active"):
            driver._active = previous_driver
        _forget_compiled_kernels()
        sys.setdlopenflags(old_flags)
        if old_env is None:
            os.environ.pop("TRITON_LIBCUDA_PATH", None)
        else:
            os.environ["TRITON_LIBCUDA_PATH"] = old_env
        nvidia.library_dirs.cache_clear()


def _forget_compiled_kernels() -> None:
    """Triton keeps compiled kernels per device index in memory, keyed without the target: another SM on
    'device 0' must not reuse them (it would compile nothing and write nothing for that SM). The attribute is
    `device_caches` from triton 3.2 on, `cache` in 3.0 and 3.1."""
    from probe.kernels import project_kernels  # noqa: PLC0415

    for kernel in project_kernels().values():
        for name in ("device_caches", "cache"):
            caches = getattr(kernel, name, None)
            if isinstance(caches, dict):
                caches.clear()


def cached_arches(root: Path) -> dict[int, int]:
    """How many compiled kernels the cache holds per SM (their metadata's target arch)."""
    import json  # noqa: PLC0415

    counts: dict[int, int] = {}
    for meta in root.rglob("*.json") if root.exists() else ():
        if meta.name.startswith("__grp__"):
            continue
        try:
            target = json.loads(meta.read_text()).get("target") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(target, dict) and isinstance(target.get("arch"), int):
            counts[target["arch"]] = counts.get(target["arch"], 0) + 1
    return counts


@contextlib.contextmanager
def compile_events() -> Iterator[list[dict[str, Any]]]:
    """Every Triton compile or cache lookup in the block, when this triton has the listener knob."""
    events: list[dict[str, Any]] = []
    try:
        from triton import knobs  # noqa: PLC0415

        compilation = knobs.compilation
        previous = compilation.listener
    except (ImportError, AttributeError):
        yield events
        return

    def listener(*, src, metadata, metadata_group, times, cache_hit, **_):
        events.append({"name": metadata.get("name"), "cache_hit": bool(cache_hit)})

    compilation.listener = listener
    try:
        yield events
    finally:
        compilation.listener = previous


def kernel_launches(dtype_name: str, device: str) -> list[tuple[str, Any, tuple, dict[str, int]]]:
    """Each project kernel with arguments of the smoke run's dtypes and shapes (rows cut to 4)."""
    import torch  # noqa: PLC0415

    from probe import kernels as k  # noqa: PLC0415

    dt = getattr(torch, dtype_name)
    f32 = torch.float32
    rows, h, inter, v = 4, SMOKE.hidden, SMOKE.intermediate, SMOKE.vocab

    def t(*shape, dtype=dt):
        return torch.zeros(*shape, dtype=dtype, device=device)

    rms = k.rmsnorm_config(h)
    ce = k.cross_entropy_config(v)
    labels = torch.zeros(rows, dtype=torch.int64, device=device)
    return [
        ("rmsnorm_fwd", k._rmsnorm_fwd, (t(rows, h), t(h), t(rows, h), t(rows, dtype=f32), h, h, SMOKE.rms_eps), rms),
        ("rmsnorm_bwd", k._rmsnorm_bwd, (t(rows, h), t(rows, h), t(h), t(rows, dtype=f32), t(rows, h),
                                         t(1, rms["BLOCK"], dtype=f32), h, rows, h, rows), rms),
        ("swiglu_fwd", k._swiglu_fwd, (t(rows, inter), t(rows, inter), t(rows, inter), rows * inter),
         k.swiglu_config()),
        ("swiglu_bwd", k._swiglu_bwd, (t(rows, inter), t(rows, inter), t(rows, inter), t(rows, inter),
                                       t(rows, inter), rows * inter), k.swiglu_config()),
        ("cross_entropy_fwd", k._cross_entropy_fwd, (t(rows, v), labels, t(rows, dtype=f32), t(rows, dtype=f32),
                                                     v, v), ce),
        ("cross_entropy_bwd", k._cross_entropy_bwd, (t(rows, v), labels, t(rows, dtype=f32), t(1, dtype=f32),
                                                     t(rows, v), v, v), ce),
    ]


def warm(sm: int, root: Path, *, build_modules: bool = True, stub_from: Path | None = None) -> WarmReport:
    """Compile every project kernel (and its launcher) for sm into root; report what was compiled or found.

    stub_from: the cache whose stub dir to link against (verify replays against a copy but must use the
    original's path, which is part of triton >= 3.7's module keys)."""
    report = WarmReport(sm=sm, cache_dir=str(root))
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = str(root)
    _point_triton_at(root)
    before = snapshot(root)
    try:
        stub_dir = (stub_dir_for(stub_from) if stub_from else build_stub(root)) if build_modules else None
        before = snapshot(root)
        from triton.backends.nvidia import driver as nvidia  # noqa: PLC0415

        dtype_name = dtype_for_sm(sm)
        with stand_in_driver(sm, stub_dir), compile_events() as events:
            compiled = []
            for name, kernel, args, config in kernel_launches(dtype_name, "cpu"):
                t0 = time.perf_counter()
                n_before = len(events)
                ck = kernel.warmup(*args, grid=(1,), **config)
                hit = events[n_before]["cache_hit"] if len(events) > n_before else None
                report.kernels.append({"name": name, "dtype": dtype_name, "cache_hit": hit,
                                       "seconds": round(time.perf_counter() - t0, 3)})
                compiled.append((name, ck))
            if build_modules:
                t0 = time.perf_counter()
                files = snapshot(root)
                nvidia.CudaUtils()
                report.modules.append({"name": "cuda_utils", "built": bool(written(files, snapshot(root))),
                                       "seconds": round(time.perf_counter() - t0, 3)})
                for name, ck in compiled:
                    t0 = time.perf_counter()
                    files = snapshot(root)
                    nvidia.CudaLauncher(ck.src, ck.metadata)
                    report.modules.append({"name": f"launcher:{name}", "built": bool(written(files, snapshot(root))),
                                           "seconds": round(time.perf_counter() - t0, 3)})
    except Exception as exc:  # reported as one line by the caller
        from probe.results import one_line  # noqa: PLC0415

        report.error = one_line(exc)
    report.new_files = written(before, snapshot(root))
    report.seconds = round(time.perf_counter() - started, 3)
    _check_on_disk(report, root)
    return report


def _point_triton_at(root: Path) -> None:
    """TRITON_CACHE_DIR is read when triton first builds a cache manager; set the knob too if already imported."""
    try:
        from triton import knobs  # noqa: PLC0415

        knobs.cache.dir = str(root)
    except (ImportError, AttributeError):
        pass


@contextlib.contextmanager
def scratch_copy(root: Path, prefix: str) -> Iterator[Path]:
    """A throw-away copy of a cache to replay or compile into (the original is never written); afterwards
    TRITON_CACHE_DIR and triton's own cache pointer are what they were before (or `root`)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        copy = Path(tmp) / "cache"
        shutil.copytree(root, copy, symlinks=True)
        previous = os.environ.get("TRITON_CACHE_DIR")
        try:
            yield copy
        finally:
            os.environ["TRITON_CACHE_DIR"] = previous or str(root)
            _point_triton_at(Path(previous or root))


def verify_warm_cache(sm: int, root: Path) -> WarmReport:
    """Replay the warm-up against a copy of the cache: every kernel and module must be found, nothing written."""
    if not (stub_dir_for(root) / "libcuda.so.1").exists():
        report = WarmReport(sm=sm, cache_dir=str(root))
        report.error = f"{root} holds no {STUB_DIR}/libcuda.so.1: it was not warmed by `python -m probe warm`"
        return report
    with scratch_copy(root, "probe-cache-") as copy:
        report = warm(sm, copy, stub_from=root)
    report.cache_dir = str(root)
    _check_on_disk(report, root)
    return report


def _check_on_disk(report: WarmReport, root: Path) -> None:
    """Every kernel must be on disk for this SM: a replay that found nothing to do could also have reused
    kernels compiled in memory for another SM (what triton 3.0/3.1 did before `_forget_compiled_kernels`)."""
    on_disk = cached_arches(root).get(report.sm, 0)
    baked = os.environ.get(BAKED_CACHE_ENV)  # a pod image layers the writable cache over the baked one
    if baked and Path(baked) != root:
        on_disk += cached_arches(Path(baked)).get(report.sm, 0)
    if report.error is None and on_disk < len(report.kernels):
        report.error = f"{root} holds {on_disk} compiled kernel(s) for sm_{report.sm}, the probe has {len(report.kernels)}"


def gpu_launch_all(dtype_name: str, root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Launch every project kernel once on the GPU: the compile events and the files it wrote in the cache."""
    import torch  # noqa: PLC0415

    before = snapshot(root)
    with compile_events() as events:
        for _name, kernel, args, config in kernel_launches(dtype_name, "cuda"):
            kernel[(1,)](*args, **config)
        torch.cuda.synchronize()
    return list(events), written(before, snapshot(root))
