"""Declared identity (`--expect KEY=VALUE`, `PROBE_EXPECT_*`) asserted against what was detected."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from probe.results import Check, Detection, failed, passed, skipped

KEYS = ("target", "vendor", "sm", "cuda", "torch", "triton", "bitsandbytes", "python", "warm_cache",
        "dtype", "gfx", "rocm", "unsloth")  # ROCm targets declare gfx/rocm instead of sm/cuda (docs/matrix.md)
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}
ENV_PREFIX = "PROBE_EXPECT_"
BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
# The toolkit part of a target id (`hopper-cu130`, `cdna3-rocm6.2-nvidia`): what expect.target compares
# with torch's build.
TARGET_TOOLKIT = re.compile(r"-(?:cu(?P<cuda_major>\d+)(?P<cuda_minor>\d)|rocm(?P<rocm>\d+(?:\.\d+)*))(?=-|$)")


class UsageError(ValueError):
    """Bad command-line input: exit code 2."""


def parse(pairs: list[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment first, then the command line (which wins)."""
    environ = os.environ if environ is None else environ
    expected = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and value != "":
            key = name[len(ENV_PREFIX):].lower()
            if key not in KEYS:
                raise UsageError(f"unknown expectation {name} (known: {', '.join(ENV_PREFIX + k.upper() for k in KEYS)})")
            expected[key] = _valid(key, value, name)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or not value:
            raise UsageError(f"--expect wants KEY=VALUE, got {pair!r}")
        if key not in KEYS:
            raise UsageError(f"unknown --expect key {key!r} (known: {', '.join(KEYS)})")
        expected[key] = _valid(key, value.strip(), f"--expect {key}")
    return expected


def _valid(key: str, value: str, where: str) -> str:
    """Values whose meaning is a switch must be one: `on` or `maybe` would silently drop a check."""
    if key == "warm_cache" and value.lower() not in BOOLEANS:
        raise UsageError(f"{where}={value!r}: want 1/0, true/false or yes/no")
    return value


def declares_warm_cache(expected: dict[str, str]) -> bool:
    return BOOLEANS.get(expected.get("warm_cache", "0").lower(), False)


def _version_matches(declared: str, found: str | None) -> bool:
    """'2.14.1' matches '2.14.1+cu130'; '13.0' matches '13.0'; '3.11' matches '3.11.9'."""
    if found is None:
        return False
    base = found.split("+")[0]
    return base == declared or base.startswith(declared + ".") or found == declared


def check(expected: dict[str, str], det: Detection, environ: Mapping[str, str] | None = None) -> list[Check]:
    environ = os.environ if environ is None else environ
    out = []
    for key, declared in expected.items():
        name = f"expect.{key}"
        if key == "target":
            out.append(_target(name, declared, environ.get(ENV_PREFIX + "TARGET") or None, det))
        elif key == "warm_cache":
            continue  # verified by the warm-cache check itself
        elif key == "dtype":
            out.append(_dtype(name, declared, det))
        elif key == "gfx":
            wanted = {g.strip() for g in declared.split(",") if g.strip()}
            gfx = [g.gfx for g in det.gpus if g.gfx]
            if not gfx:
                out.append(skipped(name, f"no AMD GPU to compare with declared gfx {declared}", declared=declared))
                continue
            out.append(_compare(name, declared, ",".join(gfx), all(g in wanted for g in gfx), "GPU gfx arch"))
        elif key == "rocm":
            found = det.torch.hip if det.torch else None
            out.append(_compare(name, declared, found, _version_matches(declared, found), "torch's ROCm (HIP) build"))
        elif key == "vendor":
            torch_vendor = None
            if det.torch is not None:
                torch_vendor = "amd" if det.torch.hip else "nvidia" if det.torch.cuda else "none"
            found = det.vendor if det.vendor != "none" else torch_vendor
            out.append(_compare(name, declared.lower(), found, found == declared.lower(),
                                "GPU vendor" if det.vendor != "none" else "torch build vendor (no GPU)"))
        elif key == "sm":
            wanted = {s.strip() for s in declared.split(",") if s.strip()}
            caps = [g.capability for g in det.gpus if g.capability]
            if not caps:
                out.append(skipped(name, f"no NVIDIA GPU to compare with declared sm {declared}", declared=declared))
                continue
            bad = [c for c in caps if c not in wanted]
            out.append(_compare(name, declared, ",".join(caps), not bad, "GPU compute capability"))
        elif key == "cuda":
            found = det.torch.cuda if det.torch else None
            out.append(_compare(name, declared, found, _version_matches(declared, found), "torch's CUDA build"))
        elif key == "python":
            out.append(_compare(name, declared, det.python, _version_matches(declared, det.python), "Python"))
        else:  # torch, triton, bitsandbytes, unsloth: installed distribution versions
            found = det.packages.get(key)
            out.append(_compare(name, declared, found, _version_matches(declared, found), f"{key} version"))
    return out


def _target(name: str, declared: str, image_says: str | None, det: Detection) -> Check:
    """A declared target is compared with the image's own declaration (PROBE_EXPECT_TARGET, baked in at build
    time; the gate passes the target it gates on the command line) and with torch's CUDA/ROCm build."""
    if image_says is not None and image_says != declared:
        return failed(name, f"target mismatch: declared {declared}, the image says it is {image_says} (PROBE_EXPECT_TARGET)",
                      declared=declared, found=image_says)
    toolkit = TARGET_TOOLKIT.search(declared)
    if toolkit is None:
        return failed(name, f"declared target {declared!r} names no toolkit (cuNNN or rocmX.Y)", declared=declared)
    if toolkit.group("rocm"):
        wanted, found, what = toolkit.group("rocm"), (det.torch.hip if det.torch else None), "ROCm"
    else:
        wanted, found, what = f"{int(toolkit.group('cuda_major'))}.{toolkit.group('cuda_minor')}", (det.torch.cuda if det.torch else None), "CUDA"
    if not _version_matches(wanted, found):
        return failed(name, f"target {declared} is for {what} {wanted}, torch is built for {found or 'no ' + what}",
                      declared=declared, found=found)
    same = "; the image says the same" if image_says else ""
    return passed(name, f"target {declared}: torch's {what} {found} build matches{same}", declared=declared, found=found)


def _dtype(name: str, declared: str, det: Detection) -> Check:
    """The image's training dtype must be one the GPU runs; the decisions may still prefer another (fp16 images)."""
    from probe.decide import choose_dtype, hardware_from  # noqa: PLC0415

    wanted = DTYPES.get(declared.lower())
    if wanted is None:
        return failed(name, f"declared dtype {declared} is not one of {', '.join(sorted(DTYPES))}", declared=declared)
    hw = hardware_from(det)
    if hw.vendor == "none":
        return skipped(name, f"no GPU: declared dtype {declared} is for the GPU (the CPU runs fp32)",
                       declared=declared)
    decided = choose_dtype(hw).value
    ok = wanted == decided or (wanted == "float16" and decided == "bfloat16") or wanted == "float32"
    if ok:
        return passed(name, f"the GPU runs declared {declared} (decision: {decided})", declared=declared,
                      found=decided)
    return failed(name, f"dtype mismatch: declared {declared}, this GPU supports {decided} at best",
                  declared=declared, found=decided)


def _compare(name: str, declared: str, found: str | None, ok: bool, what: str) -> Check:
    if ok:
        return passed(name, f"{what} {found} as declared", declared=declared, found=found)
    return failed(name, f"{what} mismatch: declared {declared}, found {found or 'nothing'}",
                  declared=declared, found=found)
