"""`python -m probe [report options]`, `python -m probe smoke`, `python -m probe warm`, `python -m probe select`
(exit 0 ok, 1 failed, 2 usage)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from probe import decide, expect, report
from probe.results import failed, one_line

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def _report_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m probe", description="Detect the GPU stack, decide settings, verify it. "
                "Subcommands: `smoke` (training suite), `warm` (Triton cache), `workload` (Unsloth QLoRA), "
                "`select` (which image to pull).")
    p.add_argument("--json", action="store_true", help="print the versioned JSON document instead of the report")
    p.add_argument("--expect", action="append", default=[], metavar="KEY=VALUE",
                   help=f"declared identity to assert ({', '.join(expect.KEYS)}); also PROBE_EXPECT_<KEY>")
    p.add_argument("--require-gpu", action="store_true", help="no GPU is a failure rather than a skip")
    p.add_argument("--model-size", metavar="SIZE", help="memory plan for a model of this size (8b, 500m, 7e9)")
    return p


def _smoke_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m probe smoke", description="Train a tiny random Llama QLoRA-style and check it learns.")
    p.add_argument("--json", action="store_true")
    p.add_argument("--steps", type=int, help="training steps (default 30 on a GPU, 15 on the CPU; at least 5)")
    return p


def _warm_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m probe warm", description="Compile the project's Triton kernels and launchers for "
                "the given SMs into TRITON_CACHE_DIR, with no GPU.")
    p.add_argument("--sm", required=True, help="SM list: 90 or 9.0 or 90,89")
    p.add_argument("--cache-dir", help="cache directory (default: $TRITON_CACHE_DIR, else ~/.triton/cache; with "
                                       "--check the image's baked cache, $IMAGEFACTORY_TRITON_BAKED_CACHE, first)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--workload", choices=["unsloth"], help="also compile the Triton kernels the installed Unsloth "
                   "launches for the declared model shapes (docs/probe.md, 'Warming for Unsloth')")
    p.add_argument("--shapes", help="model shapes file for --workload (default: probe/workload_shapes.json)")
    p.add_argument("--check", action="store_true", help="with --workload: replay against the existing cache; "
                   "every kernel and module must be a cache hit and nothing written (exit 1 otherwise)")
    return p


def parse_sms(text: str) -> list[int]:
    sms = []
    for part in text.split(","):
        part = part.strip().lower().removeprefix("sm_").removeprefix("sm")
        value = part.replace(".", "")
        if not value.isdigit() or not 50 <= int(value) <= 199:
            raise expect.UsageError(f"--sm: not an SM: {part!r} (use 90, 9.0 or 90,89)")
        sms.append(int(value))
    return sms


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "fresh-kernel":  # an uncached Triton kernel compiles (probe/fresh.py)
            return _fresh_kernel(_fresh_parser().parse_args(argv[1:]))
        if argv and argv[0] == "smoke":
            return _smoke(_smoke_parser().parse_args(argv[1:]))
        if argv and argv[0] == "warm":
            return _warm(_warm_parser().parse_args(argv[1:]))
        if argv and argv[0] == "workload":  # Unsloth QLoRA as the gate's workload (probe/workload_cli.py)
            from probe.workload_cli import workload_main  # noqa: PLC0415

            return workload_main(argv[1:])
        if argv and argv[0] == "select":  # which image to pull on this machine (probe/select.py)
            from probe.select import main as select_main  # noqa: PLC0415

            return select_main(argv[1:])
        return _report(_report_parser().parse_args(argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    except expect.UsageError as exc:
        print(f"probe: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130


def _report(args: argparse.Namespace) -> int:
    expected = expect.parse(args.expect)
    params = None
    if args.model_size:
        try:
            params = decide.parse_model_size(args.model_size)
        except ValueError as exc:
            raise expect.UsageError(f"--model-size: {exc}") from None
    from probe import container, detect, verify  # noqa: PLC0415

    det = detect.detect()
    decisions = decide.decide(decide.hardware_from(det), params).to_json()
    checks = verify.run_all(det, expected, args.require_gpu) + expect.check(expected, det) + container.checks(params)
    doc = report.document("report", checks, det, decisions, {"expected": expected})
    if args.json:
        print(report.dumps(doc))
    else:
        lines = report.render_detection(det) + report.render_decisions(decisions) + report.render_checks(checks)
        print("\n".join(lines))
    return doc["exit_code"]


def _smoke(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 5:
        raise expect.UsageError("--steps must be at least 5")
    import warnings  # noqa: PLC0415

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter, not results
    from probe import smoke  # noqa: PLC0415

    try:
        checks, info = smoke.run(args.steps)
    except Exception as exc:  # the suite failed somewhere unexpected: one line, exit 1
        checks, info = [failed("smoke.crashed", one_line(exc))], {}
    doc = report.document("smoke", checks, extra={"smoke": info})
    if args.json:
        print(report.dumps(doc))
    else:
        print("\n".join(report.render_smoke(info) + report.render_checks(checks)))
    return doc["exit_code"]


def _warm(args: argparse.Namespace) -> int:
    sms = parse_sms(args.sm)
    if args.workload or args.check or args.shapes:
        from probe.workload_cli import warm_main  # noqa: PLC0415

        return warm_main(args, sms)
    from probe import warm  # noqa: PLC0415

    root = warm.cache_dir(args.cache_dir)
    try:
        import triton  # noqa: F401, PLC0415
    except Exception as exc:
        print(f"probe warm: triton is not importable: {one_line(exc)}", file=sys.stderr)
        return 1
    reports = [warm.warm(sm, Path(root)) for sm in sms]
    ok = all(r.error is None for r in reports)
    if args.json:
        print(report.dumps({"schema": "imagefactory.probe-warm/1", "ok": ok,
                            "reports": [r.__dict__ | {"new_files": len(r.new_files)} for r in reports]}))
    else:
        for r in reports:
            for k in r.kernels:
                state = "cached" if k["cache_hit"] else "compiled"
                print(f"sm_{r.sm}  {state:8}  kernel   {k['name']} ({k['dtype']}, {k['seconds']:.2f} s)")
            for m in r.modules:
                state = "built" if m["built"] else "cached"
                print(f"sm_{r.sm}  {state:8}  module   {m['name']} ({m['seconds']:.2f} s)")
            if r.error:
                print(f"sm_{r.sm}  FAILED: {r.error}", file=sys.stderr)
            print(f"sm_{r.sm}  {len(r.kernels)} kernels, {len(r.modules)} modules, {len(r.new_files)} new files "
                  f"in {r.cache_dir} ({r.seconds:.1f} s)")
    return 0 if ok else 1


def _fresh_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m probe fresh-kernel", description="Compile (no GPU: for the SM, into a scratch copy of "
                "the cache) or launch (GPU) a Triton kernel no cache holds, with the image's own tools.")
    p.add_argument("--sm", help="SM to compile for without a GPU (default: PROBE_EXPECT_SM, else 9.0)")
    p.add_argument("--json", action="store_true")
    return p


def _fresh_kernel(args: argparse.Namespace) -> int:
    if args.sm:
        parse_sms(args.sm)  # usage error for a malformed list
    from probe import fresh  # noqa: PLC0415

    checks = [fresh.check(args.sm)]
    doc = report.document("fresh-kernel", checks)
    print(report.dumps(doc) if args.json else "\n".join(report.render_checks(checks)))
    return doc["exit_code"]
