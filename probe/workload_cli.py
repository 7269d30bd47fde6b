"""`python -m probe warm --workload unsloth [--check]` and `python -m probe workload`: the commands around
probe/workload.py (shapes, the QLoRA run) and probe/unsloth_warm.py (the warm-up with no GPU)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from probe import report
from probe.results import Check, failed, one_line, passed, skipped
from probe.workload import ShapesError, load_shapes, pick, versions

USAGE_ERROR = 2
WARM_SCHEMA = "imagefactory.probe-workload-warm/1"


def _shapes_or_exit(path: str | None, wanted: list[str] | None = None) -> Any:
    try:
        return pick(load_shapes(Path(path) if path else None), wanted or [])
    except ShapesError as exc:
        print(f"probe: error: {exc}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


def warm_main(args: argparse.Namespace, sms: list[int]) -> int:
    """The project's kernels (as plain `probe warm`) and Unsloth's for the declared shapes; --check replays."""
    if not args.workload:
        print("probe warm: error: --check and --shapes need --workload unsloth", file=sys.stderr)
        return USAGE_ERROR
    if len(sms) > 1:  # Unsloth fixes some device facts when its modules are imported: one SM per process
        print("probe warm: error: --workload takes one SM per run (run it once per SM)", file=sys.stderr)
        return USAGE_ERROR
    shapes = _shapes_or_exit(args.shapes)
    from probe import warm  # noqa: PLC0415

    try:
        import torch  # noqa: F401, PLC0415
        import triton  # noqa: F401, PLC0415
    except Exception as exc:
        print(f"probe warm: torch and triton must be importable: {one_line(exc)}", file=sys.stderr)
        return 1
    from probe import unsloth_warm  # noqa: PLC0415

    # --check replays the build's cache: in a pod image that is the baked one (TRITON_CACHE_DIR is the writable layer)
    root = Path(args.cache_dir) if args.cache_dir else warm.baked_cache_dir() if args.check else warm.cache_dir()
    say = None if args.json else (lambda line: print(line, flush=True))
    results: list[dict[str, Any]] = []
    for sm in sms:
        own = warm.verify_warm_cache(sm, root) if args.check else warm.warm(sm, root)
        if own.error is None and args.check and (any(not k["cache_hit"] for k in own.kernels)
                                                 or any(m["built"] for m in own.modules) or own.new_files):
            own.error = "the probe's own kernels are not all cache hits"
        if say:
            for k in own.kernels:
                say(f"sm_{sm}  {'cached' if k['cache_hit'] else 'compiled':8}  {k['name']}  (probe)")
        work = (unsloth_warm.check_workload if args.check else unsloth_warm.warm_workload)(sm, root, shapes,
                                                                                          progress=say)
        results.append({"sm": sm, "probe_kernels": len(own.kernels), "probe_error": own.error,
                        "unsloth": work.unsloth, "unsloth_zoo": work.unsloth_zoo,
                        "kernels": len(work.kernels), "compiled": sum(not k["cache_hit"] for k in work.kernels),
                        "modules": len(work.modules), "modules_built": sum(m["built"] for m in work.modules),
                        "new_files": len(work.new_files) + len(own.new_files), "seconds": work.seconds + own.seconds,
                        "error": work.error, "shapes": [s.name for s in shapes], "triton_env": work.env})
    ok = all(r["error"] is None and r["probe_error"] is None for r in results)
    if args.json:
        print(report.dumps({"schema": WARM_SCHEMA, "ok": ok, "check": bool(args.check), "cache_dir": str(root),
                            "reports": results}))
    else:
        for r in results:
            for err in (r["probe_error"], r["error"]):
                if err:
                    print(f"sm_{r['sm']}  FAILED: {err}", file=sys.stderr)
            print(f"sm_{r['sm']}  unsloth {r['unsloth']} / unsloth_zoo {r['unsloth_zoo']}: {len(r['shapes'])} shapes, "
                  f"{r['kernels']} kernel lookups ({r['compiled']} compiled), {r['modules']} modules "
                  f"({r['modules_built']} built), {r['probe_kernels']} probe kernels, {r['new_files']} new files in "
                  f"{root} ({r['seconds']:.1f} s){'  [check]' if args.check else ''}")
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------------ workload


def _parser() -> argparse.ArgumentParser:
    from probe.cli import _Parser  # noqa: PLC0415

    p = _Parser(prog="python -m probe workload", description="Unsloth QLoRA on a local random model of each "
                "declared shape with 0 Triton compiles (GPU); on a CPU: installation, imports, the warm replay.")
    p.add_argument("--json", action="store_true")
    p.add_argument("--shape", action="append", default=[], help="shape name (repeatable; default: the first)")
    p.add_argument("--shapes", help="shapes file (default: probe/workload_shapes.json)")
    p.add_argument("--steps", type=int, default=10, help="training steps per shape (at least 5; default 10)")
    p.add_argument("--sm", help="SMs for the CPU replay check (default: $PROBE_EXPECT_SM, else 90)")
    p.add_argument("--cache-dir", help="Triton cache to replay (default: $IMAGEFACTORY_TRITON_BAKED_CACHE, else $TRITON_CACHE_DIR)")
    p.add_argument("--models-dir", help="where the local models go (default: a temporary directory)")
    return p


def _gpu() -> str | None:
    try:
        import torch  # noqa: PLC0415

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


def _import_unsloth() -> Check:
    """`import unsloth` in a fresh process (2026.10.9 loads in its CPU mode; a refusal is reported as a skip)."""
    proc = subprocess.run([sys.executable, "-c", "import unsloth"], capture_output=True, text=True, timeout=600,
                          check=False)
    if proc.returncode == 0:
        return passed("workload.import_unsloth", "import unsloth works")
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1][:200]
    return skipped("workload.import_unsloth", f"refused without a GPU (exit {proc.returncode}): {last}")


def workload_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.steps < 5:
        print("probe workload: error: --steps must be at least 5", file=sys.stderr)
        return USAGE_ERROR
    all_shapes = _shapes_or_exit(args.shapes)
    shapes = _shapes_or_exit(args.shapes, args.shape) if args.shape else all_shapes[:1]
    from probe.cli import parse_sms  # noqa: PLC0415

    sms = parse_sms(args.sm or os.environ.get("PROBE_EXPECT_SM") or "90")
    checks: list[Check] = []
    info: dict[str, Any] = {"versions": versions(), "shapes": [s.name for s in shapes], "runs": []}
    vers = info["versions"]
    missing = [n for n in ("unsloth", "unsloth_zoo", "trl", "datasets", "torch", "triton") if not vers.get(n)]
    if missing:
        checks.append(failed("workload.installed", f"not installed: {', '.join(missing)}"))
    else:
        checks.append(passed("workload.installed", ", ".join(f"{k} {v}" for k, v in vers.items() if v)))
    gpu = _gpu() if not missing else None
    info["gpu"] = gpu
    if not missing and gpu is None:
        checks += _cpu_checks(args, all_shapes, sms)
    for shape in shapes:
        name = f"workload.qlora.{shape.name}"
        if missing:
            checks.append(skipped(name, "Unsloth's stack is not installed"))
        elif gpu is None:
            checks.append(skipped(name, "no GPU: the QLoRA run needs CUDA (Unsloth refuses to load without one)"))
        else:
            run = _qlora(shape, args)
            info["runs"].append(run)
            checks.append(_judge(name, run))
    doc = report.document("workload", checks, extra={"workload": info})
    if args.json:
        print(report.dumps(doc))
    else:
        print("\n".join(report.render_checks(checks)))
    return doc["exit_code"]


def _cpu_checks(args: argparse.Namespace, shapes: list[Any], sms: list[int]) -> list[Check]:
    checks: list[Check] = []
    checks.append(_import_unsloth())
    from probe import unsloth_warm  # noqa: PLC0415

    try:
        with unsloth_warm.stand_in_card(sms[0]):
            unsloth_warm.import_kernel_modules()
        checks.append(passed("workload.import_kernels", "Unsloth's kernel modules and unsloth_zoo's fused loss "
                             "import without a GPU (package start-up skipped)"))
    except Exception as exc:
        checks.append(failed("workload.import_kernels", one_line(exc)))
    from probe import warm  # noqa: PLC0415

    # Images keep the build-time cache at the baked path (TRITON_CACHE_DIR is the pod's writable layer).
    cache = args.cache_dir or os.environ.get(warm.BAKED_CACHE_ENV) or os.environ.get("TRITON_CACHE_DIR")
    if not cache or not (warm.stub_dir_for(Path(cache)) / "libcuda.so.1").exists():
        checks.append(skipped("workload.warm_replay", f"no warmed Triton cache (--cache-dir / {warm.BAKED_CACHE_ENV} "
                              f"/ TRITON_CACHE_DIR: {cache or 'unset'})"))
        return checks
    for sm in sms:
        r = unsloth_warm.check_workload(sm, Path(cache), shapes)
        numbers = {"kernels": len(r.kernels), "modules": len(r.modules), "new_files": len(r.new_files),
                   "seconds": r.seconds}
        if r.error:
            checks.append(failed(f"workload.warm_replay.sm_{sm}", r.error, **numbers))
        else:
            checks.append(passed(f"workload.warm_replay.sm_{sm}", f"{len(r.kernels)} kernel lookups, "
                                 f"{len(r.modules)} modules for {len(shapes)} shapes: all cache hits, nothing "
                                 "written", **numbers))
    return checks


def _qlora(shape: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One shape in a fresh process (Unsloth must be imported first, and a pod starts fresh too)."""
    with tempfile.TemporaryDirectory(prefix="probe-workload-") as tmp:
        models = Path(args.models_dir) if args.models_dir else Path(tmp)
        cmd = [sys.executable, "-m", "probe.workload", shape.name, str(models / shape.name), str(args.steps)]
        if args.shapes:
            cmd.append(args.shapes)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False,
                              cwd=Path(__file__).resolve().parent.parent)
    for line in proc.stdout.splitlines():
        if line.startswith("WORKLOAD-RESULT "):
            return json.loads(line[len("WORKLOAD-RESULT "):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {"shape": shape.name, "error": f"exit {proc.returncode}: {tail}"}


def _judge(name: str, run: dict[str, Any]) -> Check:
    if "error" in run:
        return failed(name, run["error"])
    numbers = {k: run.get(k) for k in ("first_step_s", "later_step_s", "step_compiles", "total_compiles",
                                       "import_unsloth_s", "peak_mem_gib")}
    if run["total_compiles"]:
        return failed(name, f"{run['total_compiles']} Triton compiles (cache misses): "
                            f"{', '.join(run['compiled_names'][:6])}", **numbers)
    return passed(name, f"{len(run['phases'])} phases, {run['steps']} steps, 0 Triton compiles; first step "
                        f"{run['first_step_s']} s, later {run['later_step_s']} s", **numbers)
