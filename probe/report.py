"""The readable report and the JSON document (schema: probe/schema.json)."""

from __future__ import annotations

import json
import platform
import time
from typing import Any

from probe import SCHEMA_ID, __version__
from probe.results import Check, Detection, Status, exit_code

MARK = {Status.PASS: "PASS", Status.FAIL: "FAIL", Status.SKIP: "skip", Status.WARN: "WARN"}


def document(command: str, checks: list[Check], detection: Detection | None = None,
             decisions: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    code = exit_code(checks)
    doc: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "probe_version": __version__,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "ok": code == 0,
        "exit_code": code,
        "summary": {s.value: sum(c.status is s for c in checks) for s in Status},
        "checks": [c.to_json() for c in checks],
    }
    if detection is not None:
        doc["detection"] = detection.to_json()
    if decisions is not None:
        doc["decisions"] = decisions
    if extra:
        doc.update(extra)
    return doc


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, default=str)


def render_detection(det: Detection) -> list[str]:
    lines = ["Detection"]
    if det.gpus:
        for g in det.gpus:
            arch = f"sm {g.capability}" if g.capability else g.gfx or "?"
            lines.append(f"  GPU {g.index}: {g.name}, {arch}, {g.vram_total_mib / 1024:.1f} GiB "
                         f"({g.vram_free_mib / 1024:.1f} GiB free)")
    else:
        lines.append("  GPU: none")
    lines.append(f"  driver: {det.driver_version or '-'} (CUDA {det.driver_cuda or '-'})   nvcc: {det.nvcc or '-'}")
    if det.torch:
        t = det.torch
        build = f"CUDA {t.cuda}" if t.cuda else f"HIP {t.hip}" if t.hip else "CPU"
        lines.append(f"  torch {t.version} ({build}), cuDNN {t.cudnn or '-'}, NCCL {t.nccl or '-'}, "
                     f"archs {' '.join(t.arch_list) or '-'}")
    else:
        lines.append(f"  torch: unusable ({det.torch_error})")
    pk = det.packages
    shown = ", ".join(f"{k} {v}" for k, v in pk.items() if v and k not in ("torch",))
    lines.append(f"  python {det.python}; {shown}")
    lines.append(f"  bitsandbytes library: {det.bitsandbytes_library or det.bitsandbytes_error}")
    lines.extend(f"  note: {n}" for n in det.notes)
    return lines


def render_decisions(decisions: dict[str, Any]) -> list[str]:
    lines = ["Decisions"]
    for key in ("dtype", "tf32", "attention", "fp8"):
        choice = decisions[key]
        lines.append(f"  {key:10} {str(choice['value']):18} {choice['reason']}")
    mem = decisions.get("memory")
    if mem:
        lines.append(f"  memory     4-bit={mem['load_in_4bit']} checkpointing={mem['gradient_checkpointing']} "
                     f"optimizer={mem['optimizer']} batch={mem['per_device_batch']}x{mem['grad_accumulation']} "
                     f"(seq {mem['seq_len']}); {mem['reason']}")
        lines.append("             " + ", ".join(f"{k} {v / 1024:.1f} GiB" for k, v in mem["breakdown_mib"].items()))
    return lines


def render_smoke(info: dict[str, Any]) -> list[str]:
    """The smoke run's figures; GPU-only ones (peak memory, Triton compiles) are left out when absent."""
    lines = [f"Smoke training on {info.get('device', '?')} ({info.get('dtype', '?')}, {info.get('optimizer', '?')})"]
    if "first_step_s" in info:
        line = (f"  first step {info['first_step_s']:.3f} s, steady {info['steady_step_s'] * 1e3:.1f} ms, "
                f"{info['tokens_per_s']:,.0f} tokens/s")
        if info.get("peak_memory_mib") is not None:
            line += f", peak memory {info['peak_memory_mib']} MiB"
        if info.get("first_step_triton_compiles") is not None:
            line += f", Triton compiles in first step: {info['first_step_triton_compiles']}"
        lines.append(line)
    return lines


def render_checks(checks: list[Check]) -> list[str]:
    lines = ["Checks"]
    for c in checks:
        lines.append(f"  {MARK[c.status]}  {c.name:28} {c.reason}")
    counts = {s: sum(c.status is s for c in checks) for s in Status}
    verdict = "FAILED" if counts[Status.FAIL] else "OK"
    lines.append(f"{verdict}: {counts[Status.PASS]} passed, {counts[Status.FAIL]} failed, "
                 f"{counts[Status.SKIP]} skipped, {counts[Status.WARN]} warned")
    return lines
