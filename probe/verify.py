"""Verification checks: each returns a Check (pass/fail/skip/warn) with its reason and numbers.

torch, triton and bitsandbytes are imported inside the checks, so a broken package fails its own check only.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from probe.expect import declares_warm_cache
from probe.results import Check, Detection, failed, one_line, passed, skipped, warned

NF4_VS_DEQUANT_BOUND = 0.02  # relative error, bnb's nf4 matmul vs fp32 matmul of the dequantized weight
NF4_VS_ORIGINAL_BOUND = 0.15  # relative error vs the unquantized weight (nf4 itself loses ~10%)
VRAM_SHARE = 0.5  # of free memory, allocated and touched
BENCH_WARN_BELOW = 0.70  # of the datasheet figure

# Datasheet dense bf16 tensor TFLOP/s and memory bandwidth GB/s, by a substring of the device name.
PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.0, 4800.0),
    ("H100 PCIe", 756.0, 2000.0),
    ("H100 NVL", 835.0, 3900.0),
    ("H100", 989.0, 3350.0),
    ("B200", 2250.0, 8000.0),
    ("A100-SXM4-80GB", 312.0, 2039.0),
    ("A100 80GB PCIe", 312.0, 1935.0),
    ("A100", 312.0, 1555.0),
    ("L40S", 362.0, 864.0),
    ("RTX 4090", 165.0, 1008.0),
    ("RTX 5090", 209.0, 1792.0),
    ("A10G", 70.0, 600.0),
    ("L4", 121.0, 300.0),
    ("T4", 65.0, 320.0),  # fp16: T4 has no bf16
    ("V100", 125.0, 900.0),
    ("MI300X", 1307.0, 5300.0),
)


def _torch():
    import torch  # noqa: PLC0415

    return torch


def gpu_visible(det: Detection, require_gpu: bool) -> Check:
    name = "gpu.visible"
    if det.torch is None:
        return failed("torch.import", f"torch is not usable: {det.torch_error}")
    if det.torch.cuda_available and det.torch.device_count > 0:
        gpu = det.gpus[0]
        return passed(name, f"torch sees {det.torch.device_count} GPU(s): {gpu.name}", count=det.torch.device_count)
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", os.environ.get("HIP_VISIBLE_DEVICES"))
    if det.gpus and hidden in ("", "-1") and not require_gpu:
        return skipped(name, f"{len(det.gpus)} GPU(s) present but hidden by CUDA_VISIBLE_DEVICES={hidden!r}: CPU mode")
    if det.gpus:
        return failed(name, f"the system lists {len(det.gpus)} GPU(s) ({det.gpus[0].name}) but torch sees none")
    if require_gpu:
        return failed(name, "no GPU visible and --require-gpu was given")
    return skipped(name, "no GPU visible: CPU mode")


def driver_new_enough(det: Detection) -> Check:
    name = "driver.cuda"
    if det.torch is None or not det.torch.cuda:
        return skipped(name, "torch has no CUDA build")
    if det.driver_cuda is None:
        return skipped(name, f"no NVIDIA driver found (torch built for CUDA {det.torch.cuda})")
    need, have = _ver(det.torch.cuda), _ver(det.driver_cuda)
    numbers = {"torch_cuda": det.torch.cuda, "driver_cuda": det.driver_cuda, "driver": det.driver_version}
    if have >= need or (have[0] == need[0] and have[0] >= 11):
        # minor-version compatibility: a driver of the same major (11+) runs that major's runtimes
        return passed(name, f"driver {det.driver_version} supports CUDA {det.driver_cuda} >= torch's {det.torch.cuda}",
                      **numbers)
    return failed(name, f"driver {det.driver_version} supports CUDA {det.driver_cuda}, torch needs {det.torch.cuda}",
                  **numbers)


def _ver(text: str) -> tuple[int, int]:
    parts = (text.split(".") + ["0"])[:2]
    return int(parts[0]), int(parts[1])


def sm_covered(det: Detection) -> Check:
    name = "torch.arch"
    if det.torch is None or not det.torch.cuda_available:
        return skipped(name, "no GPU visible to torch")
    if det.torch.hip:
        gfx = [g.gfx for g in det.gpus]
        return passed(name, f"ROCm build; GPUs {', '.join(filter(None, gfx))}")
    archs = set(det.torch.arch_list)
    # sm_90, sm_90a (arch-specific), sm_100f (family), compute_120 (PTX): kind and number
    parsed = [(m.group(1), int(m.group(2)), a) for a in archs if (m := re.fullmatch(r"(sm|compute)_(\d+)[a-z]?", a))]
    verdicts = []
    worst = "native"
    for gpu in det.gpus:
        major, minor = gpu.cc or (0, 0)
        code = major * 10 + minor
        if any(kind == "sm" and number == code for kind, number, _ in parsed):
            verdicts.append(f"{gpu.name} sm_{code}: native")
            continue
        ptx = [(number, name) for kind, number, name in parsed if kind == "compute" and number <= code]
        if ptx:
            verdicts.append(f"{gpu.name} sm_{code}: PTX only ({max(ptx)[1]}), JIT-compiled at start")
            worst = "ptx" if worst == "native" else worst
        else:
            verdicts.append(f"{gpu.name} sm_{code}: not in torch's arch list")
            worst = "missing"
    numbers = {"arch_list": ",".join(sorted(archs))}
    if worst == "missing":
        return failed(name, "; ".join(verdicts), **numbers)
    if worst == "ptx":
        return warned(name, "; ".join(verdicts), **numbers)
    return passed(name, "; ".join(verdicts), **numbers)


def bitsandbytes_loads(det: Detection, expected: dict[str, str]) -> Check:
    name = "bitsandbytes.library"
    if det.packages.get("bitsandbytes") is None:
        if "bitsandbytes" in expected:
            return failed(name, "bitsandbytes is declared but not installed")
        return skipped(name, "bitsandbytes is not installed")
    if det.bitsandbytes_library is None:
        return failed(name, f"bitsandbytes loaded no native library: {det.bitsandbytes_error}")
    lib = os.path.basename(det.bitsandbytes_library)
    numbers = {"library": det.bitsandbytes_library}
    if det.torch is not None and det.torch.cuda_available and det.torch.cuda:
        want = "libbitsandbytes_cuda" + det.torch.cuda.replace(".", "")
        if lib.startswith(want):
            return passed(name, f"{lib} matches torch's CUDA {det.torch.cuda}", **numbers)
        return failed(name, f"{lib} loaded, torch is built for CUDA {det.torch.cuda} (wanted {want}*.so)", **numbers)
    return passed(name, f"{lib} loaded (no GPU: the CPU library is expected)", **numbers)


def nf4_matmul(det: Detection) -> Check:
    name = "bitsandbytes.nf4_matmul"
    if det.bitsandbytes_library is None:
        return skipped(name, "bitsandbytes library not loaded")
    torch = _torch()
    gpu = det.torch is not None and det.torch.cuda_available
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    try:
        import bitsandbytes as bnb  # noqa: PLC0415
        import bitsandbytes.functional as F  # noqa: PLC0415

        gen = torch.Generator(device="cpu").manual_seed(0)
        w = torch.randn(1024, 1024, generator=gen).to(device, dtype)
        x = torch.randn(64, 1024, generator=gen).to(device, dtype)
        qw, state = F.quantize_4bit(w, quant_type="nf4")
        got = bnb.matmul_4bit(x, qw.t(), quant_state=state).float()
        deq = F.dequantize_4bit(qw, state).float()
        vs_deq = ((got - x.float() @ deq.t()).norm() / (x.float() @ deq.t()).norm()).item()
        vs_orig = ((got - x.float() @ w.float().t()).norm() / (x.float() @ w.float().t()).norm()).item()
    except Exception as exc:
        if not gpu:
            return skipped(name, f"this bitsandbytes cannot run nf4 on the CPU: {one_line(exc)}")
        return failed(name, f"nf4 matmul raised {one_line(exc)}")
    numbers = {"rel_err_vs_dequantized": round(vs_deq, 5), "rel_err_vs_original": round(vs_orig, 4),
               "bound_vs_dequantized": NF4_VS_DEQUANT_BOUND, "bound_vs_original": NF4_VS_ORIGINAL_BOUND,
               "device": device, "dtype": str(dtype).replace("torch.", "")}
    if vs_deq <= NF4_VS_DEQUANT_BOUND and vs_orig <= NF4_VS_ORIGINAL_BOUND:
        return passed(name, f"64x1024 @ nf4 1024x1024 on {device}: rel. error {vs_deq:.4f} vs dequantized "
                            f"(<= {NF4_VS_DEQUANT_BOUND}), {vs_orig:.3f} vs original (<= {NF4_VS_ORIGINAL_BOUND})",
                      **numbers)
    return failed(name, f"nf4 matmul off: rel. error {vs_deq:.4f} vs dequantized, {vs_orig:.3f} vs original",
                  **numbers)


def optimizer_8bit(det: Detection) -> Check:
    name = "bitsandbytes.adamw_8bit"
    if det.bitsandbytes_library is None:
        return skipped(name, "bitsandbytes library not loaded")
    torch = _torch()
    gpu = det.torch is not None and det.torch.cuda_available
    device = "cuda" if gpu else "cpu"
    try:
        import bitsandbytes as bnb  # noqa: PLC0415

        p = torch.nn.Parameter(torch.randn(4096, 64, device=device))  # > min_8bit_size: 8-bit state is used
        before = p.detach().clone()
        opt = bnb.optim.AdamW8bit([p], lr=1e-3)
        p.grad = torch.randn_like(p)
        opt.step()
        state = opt.state[p]
        changed = (p.detach() - before).abs()
        state_dtype = str(state.get("state1").dtype).replace("torch.", "") if "state1" in state else "?"
    except Exception as exc:
        if not gpu:
            return skipped(name, f"this bitsandbytes cannot step AdamW8bit on the CPU: {one_line(exc)}")
        return failed(name, f"AdamW8bit step raised {one_line(exc)}")
    numbers = {"changed_fraction": round((changed > 0).float().mean().item(), 4),
               "max_change": float(changed.max().item()), "state_dtype": state_dtype, "device": device}
    if numbers["changed_fraction"] > 0.99 and torch.isfinite(p).all() and numbers["max_change"] < 1e-2:
        return passed(name, f"one AdamW8bit step on {device} changed {numbers['changed_fraction']:.1%} of the "
                            f"parameters (state {state_dtype})", **numbers)
    return failed(name, "AdamW8bit step left the parameters unchanged or broke them", **numbers)


def triton_kernel(det: Detection) -> Check:
    name = "triton.kernel"
    if det.packages.get("triton") is None:
        return skipped(name, "triton is not installed")
    if det.torch is None or not det.torch.cuda_available:
        return skipped(name, "Triton kernels need a GPU (the warm-cache check covers compilation on the CPU)")
    torch = _torch()
    try:
        from probe import decide, kernels  # noqa: PLC0415

        # The dtype training will use: bf16 on 8.0+, fp16 on 7.x (V100/T4 have no bf16).
        dtype = getattr(torch, decide.choose_dtype(decide.hardware_from(det)).value)
        x = torch.randn(64, 256, device="cuda", dtype=dtype)
        w = torch.rand(256, device="cuda", dtype=dtype) + 0.5
        t0 = time.perf_counter()
        got = kernels.rmsnorm(x, w, 1e-5)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        err = (got.float() - kernels.rmsnorm_reference(x, w, 1e-5).float()).abs().max().item()
    except Exception as exc:
        return failed(name, f"Triton RMSNorm raised {one_line(exc)}")
    if err <= 0.05:
        return passed(name, f"Triton RMSNorm ran in {str(dtype).removeprefix('torch.')}, max abs error {err:.4f} vs PyTorch (<= 0.05)",
                      max_abs_err=err, first_call_s=round(seconds, 3))
    return failed(name, f"Triton RMSNorm wrong: max abs error {err:.4f} vs PyTorch", max_abs_err=err)


def warm_cache(det: Detection, expected: dict[str, str]) -> Check | None:
    """Only when the image declares a warm cache (PROBE_EXPECT_WARM_CACHE=1)."""
    if not declares_warm_cache(expected):
        return None
    name = "triton.warm_cache"
    if det.packages.get("triton") is None:
        return failed(name, "a warm Triton cache is declared but triton is not installed")
    from probe import warm  # noqa: PLC0415
    from probe.shapes import dtype_for_sm  # noqa: PLC0415

    root = warm.baked_cache_dir()
    gpu = det.torch is not None and det.torch.cuda_available
    try:
        if gpu:
            major, minor = det.gpus[0].cc or (0, 0)
            events, new_files = warm.gpu_launch_all(dtype_for_sm(major * 10 + minor), root)
            misses = [e["name"] for e in events if not e["cache_hit"]]
            numbers = {"cache_dir": str(root), "launches": len(events), "compiles": len(misses),
                       "new_files": len(new_files)}
            if misses or new_files:
                hint = ""
                stub = warm.stub_dir_for(root)
                if stub.exists() and os.environ.get("TRITON_LIBCUDA_PATH") != str(stub):
                    hint = f" (set TRITON_LIBCUDA_PATH={stub}, as at warm time)"
                return failed(name, f"first launch compiled {len(misses)} kernel(s) and wrote {len(new_files)} "
                                    f"file(s) in {root}: {', '.join(misses or new_files[:3])}{hint}", **numbers)
            return passed(name, f"first launch of {len(events)} project kernels: all cache hits, nothing written",
                          **numbers)
        sms = [s.strip() for s in expected.get("sm", "9.0").split(",") if s.strip()]
        reports = [warm.verify_warm_cache(int(s.replace(".", "")), root) for s in sms]
    except Exception as exc:
        return failed(name, f"warm-cache check raised {one_line(exc)}")
    problems = []
    for r in reports:
        if r.error:
            problems.append(f"sm_{r.sm}: {r.error}")
        misses = [k["name"] for k in r.kernels if k["cache_hit"] is False]
        built = [m["name"] for m in r.modules if m["built"]]
        if misses or built or r.new_files:
            problems.append(f"sm_{r.sm}: not cached: {', '.join(misses + built) or r.new_files[0]}")
    kernels = sum(len(r.kernels) for r in reports)
    modules = sum(len(r.modules) for r in reports)
    numbers = {"cache_dir": str(root), "kernels": kernels, "modules": modules, "sms": ",".join(sms)}
    if problems:
        return failed(name, "; ".join(problems), **numbers)
    return passed(name, f"replayed warm-up on the CPU for sm {','.join(sms)}: {kernels} kernels and {modules} "
                        f"launcher/utility modules all cache hits, nothing written", **numbers)


def vram_allocation(det: Detection) -> Check:
    name = "gpu.vram_alloc"
    if det.torch is None or not det.torch.cuda_available:
        return skipped(name, "no GPU visible to torch")
    torch = _torch()
    free, total = torch.cuda.mem_get_info()
    size = int(free * VRAM_SHARE) // 4 * 4
    try:
        block = torch.empty(size // 4, dtype=torch.float32, device="cuda")
        block.fill_(1.0)
        ok = block[-1].item() == 1.0
        del block
        torch.cuda.empty_cache()
    except Exception as exc:
        return failed(name, f"allocating {size / 2**30:.1f} GiB ({VRAM_SHARE:.0%} of free) failed: {one_line(exc)}")
    numbers = {"allocated_gib": round(size / 2**30, 2), "free_gib": round(free / 2**30, 2),
               "total_gib": round(total / 2**30, 2), "share": VRAM_SHARE}
    if ok:
        return passed(name, f"allocated and filled {size / 2**30:.1f} GiB ({VRAM_SHARE:.0%} of free)", **numbers)
    return failed(name, "allocated memory did not hold the written value", **numbers)


def _peak(gpu_name: str) -> tuple[float, float] | None:
    for key, tflops, gbps in PEAKS:
        if key.lower() in gpu_name.lower():
            return tflops, gbps
    return None


def _timed(torch, fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def benchmarks(det: Detection) -> list[Check]:
    if det.torch is None or not det.torch.cuda_available:
        return [skipped("bench.matmul_bf16", "no GPU visible to torch"),
                skipped("bench.copy_d2d", "no GPU visible to torch")]
    torch = _torch()
    gpu = det.gpus[0]
    peak = _peak(gpu.name)
    dtype = torch.bfloat16 if (gpu.cc or (8, 0)) >= (8, 0) else torch.float16
    tflops = _matmul_tflops(torch, dtype, 8192)
    gbps = _copy_gbps(torch, 2**30)
    torch.cuda.empty_cache()
    return [
        _against("bench.matmul_bf16", f"8192^3 {str(dtype)[6:]} matmul", tflops, "TFLOP/s",
                 peak[0] if peak else None, gpu.name),
        _against("bench.copy_d2d", "1 GiB device-to-device copy (read+write)", gbps, "GB/s",
                 peak[1] if peak else None, gpu.name),
    ]


def _matmul_tflops(torch, dtype, n: int) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    return 2 * n**3 / _timed(torch, lambda: a @ b, 10) / 1e12


def _copy_gbps(torch, nbytes: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / _timed(torch, lambda: dst.copy_(src), 20) / 1e9  # bytes read plus bytes written


def _against(name: str, what: str, value: float, unit: str, peak: float | None, gpu: str) -> Check:
    numbers = {"value": round(value, 1), "unit": unit, "datasheet": peak,
               "fraction": round(value / peak, 3) if peak else None, "warn_below": BENCH_WARN_BELOW}
    if peak is None:
        return passed(name, f"{what}: {value:.0f} {unit} (no datasheet figure for {gpu})", **numbers)
    text = f"{what}: {value:.0f} {unit}, {value / peak:.0%} of {gpu}'s datasheet {peak:.0f}"
    if value < BENCH_WARN_BELOW * peak:
        return warned(name, text + f" (below {BENCH_WARN_BELOW:.0%})", **numbers)
    return passed(name, text, **numbers)


def run_all(det: Detection, expected: dict[str, str], require_gpu: bool) -> list[Check]:
    steps: list[partial[Any]] = [partial(gpu_visible, det, require_gpu), partial(driver_new_enough, det), partial(sm_covered, det),
             partial(bitsandbytes_loads, det, expected)]
    if det.torch is not None:  # everything after these needs torch; without it gpu.visible fails with the reason
        # the warm-cache check must see the first launch of the project kernels in this process: before triton.kernel
        steps += [partial(warm_cache, det, expected), partial(nf4_matmul, det), partial(optimizer_8bit, det),
                  partial(triton_kernel, det), partial(vram_allocation, det)]
    checks: list[Check] = []
    for step in steps:
        try:
            result = step()
        except Exception as exc:  # a check that crashes is a failed check, named
            result = failed("check.crashed", f"{step.func.__name__} raised {one_line(exc)}")
        if result is not None:
            checks.append(result)
    if det.torch is None:
        return checks
    try:
        checks.extend(benchmarks(det))
    except Exception as exc:
        checks.append(failed("bench", f"micro-benchmarks raised {one_line(exc)}"))
    return checks
