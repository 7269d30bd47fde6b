"""The gate: a candidate image (by ID) proves itself with its own probe and smoke suite, then is tagged.

Both steps run inside the image with `--network none`, and with the host's GPUs of the target's vendor
when it has any (`--gpus all` for NVIDIA, ROCm's device nodes for AMD). Only when both pass is the image tagged `<repo>:<target>`, `<repo>:<target>-latest` and the
immutable tag. A failed gate leaves no such tag on the image (also none that an earlier pass gave it),
prints the failing checks and keeps the report in reports/<target>/ (gate.json, probe.json,
smoke.json, fresh-kernel.json, workload.json) — gate.json is the file the release step reads; it lists each
step's skipped checks too (CPU mode skips the GPU ones).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from imagefactory.build.docker import DockerClient, DockerCommandError, gpu_run_args, host_has_gpus, image_exists, image_inspect, run_container, tag, untag
from imagefactory.errors import GateFailedError
from imagefactory.plan.model import Target, immutable_tag
from imagefactory.publish.push import release_tags
from imagefactory.run import CommandError, echo

REPORTS_DIR = Path("reports")
STEP_TIMEOUT_S = 3600  # the CPU smoke run is the slow one; a hung container must not hang CI

GateMode = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class StepResult:
    name: str  # "probe" | "smoke"
    argv: tuple[str, ...]
    exit_code: int
    failing: tuple[str, ...]  # "check: reason" for each failed check (or why the step itself failed)
    report: str  # file name under reports/<target>/
    skipped: tuple[str, ...] = ()  # "check: reason" for each check the step skipped (no GPU, ...)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.failing


@dataclass(frozen=True)
class GateResult:
    target: str
    image_id: str
    mode: GateMode
    require_gpu: bool
    steps: tuple[StepResult, ...]
    tags: tuple[str, ...] = ()
    finished: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(step.passed for step in self.steps)

    @property
    def failing(self) -> tuple[str, ...]:
        return tuple(f"{step.name}: {line}" for step in self.steps for line in step.failing)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["result"] = "passed" if self.passed else "failed"
        data["passed"] = self.passed
        data["failing"] = list(self.failing)
        return data


def gate_tags(target: Target, release: str) -> tuple[str, ...]:
    """Full references this target's image gets on a pass: floating ones, then the immutable one
    (the names push publishes)."""
    tags = release_tags(target, release)
    return tuple(f"{target.image_repo}:{tag}" for tag in (*tags.floating, tags.immutable))


def failing_checks(report: Any, status: str = "fail") -> list[str]:
    """`name: reason` for every check in the probe's JSON with this status (`fail`), wherever it nests."""
    out: list[str] = []

    def walk(node: Any) -> Iterator[dict]:
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for node in walk(report):
        if node.get("status") == status and "name" in node:
            out.append(f"{node['name']}: {node.get('reason', '')}".rstrip(": "))
    return out


def step_commands(require_gpu: bool, target: Target | None = None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The probe commands the gate runs in the image, in order (each must pass for the next to run).

    fresh-kernel: a Triton kernel no cache holds compiles (and on a GPU launches) with the image's own tools.
    workload: the declared workload (Unsloth QLoRA with 0 compiles on a GPU; installation, imports and the
    warm replay on a CPU), for targets whose matrix says `workload.prove`."""
    probe = ("python", "-m", "probe", "--json", *(("--require-gpu",) if require_gpu else ()))
    steps = [("probe", probe), ("smoke", ("python", "-m", "probe", "smoke", "--json"))]
    if target is not None and target.warm_triton_cache:
        steps.append(("fresh-kernel", ("python", "-m", "probe", "fresh-kernel", "--json")))
    if target is not None and target.workload is not None and target.workload.prove:
        steps.append(("workload", ("python", "-m", "probe", "workload", "--json")))
    return tuple(steps)


def run_step(client: DockerClient, image_id: str, name: str, argv: tuple[str, ...], gpu_args: tuple[str, ...], out_dir: Path) -> StepResult:
    try:
        done = run_container(client, image_id, argv, network="none", gpu_args=gpu_args, timeout=STEP_TIMEOUT_S)
    except CommandError as error:
        return StepResult(name, argv, -1, (error.message,), "")
    report_name = f"{name}.json"
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report_name = f"{name}.out"
        (out_dir / report_name).write_text(done.stdout + "\n--- stderr (last lines) ---\n" + "\n".join(done.tail) + "\n")
        last = done.tail[-1] if done.tail else "no output"
        return StepResult(name, argv, done.returncode, (f"no JSON report (exit {done.returncode}): {last}",), report_name)
    (out_dir / report_name).write_text(json.dumps(report, indent=2) + "\n")
    failing = failing_checks(report)
    if done.returncode != 0 and not failing:
        last = done.tail[-1] if done.tail else "no output"
        failing = [f"exit {done.returncode}: {last}"]
    return StepResult(name, argv, done.returncode, tuple(failing), report_name, tuple(failing_checks(report, "skip")))


def gate_image(
    client: DockerClient,
    target: Target,
    image_id: str,
    *,
    release: str,
    require_gpu: bool = False,
    reports_dir: Path = REPORTS_DIR,
    gpus: bool | None = None,
) -> GateResult:
    """Run the probe and the smoke suite in the image; tag it only if both pass. Never raises for a
    failing image: the result says what failed (the caller decides the exit code)."""
    out_dir = reports_dir / target.id
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("gate.json", *(f"{name}.{ext}" for name, _ in step_commands(True, target) for ext in ("json", "out"))):
        (out_dir / stale).unlink(missing_ok=True)  # a report must describe this image only
    vendor = target.arch.vendor
    gpus = host_has_gpus(vendor) if gpus is None else gpus
    mode: GateMode = "gpu" if gpus else "cpu"
    gpu_args = gpu_run_args(vendor) if gpus else ()
    if not gpus:
        echo(f"gate {target.id}: no {'AMD' if vendor == 'amd' else 'NVIDIA'} GPU on this host: CPU mode (GPU checks skipped"
             f"{'; --require-gpu makes that a failure' if require_gpu else ''})")
    steps = []
    for name, argv in step_commands(require_gpu, target):
        step = run_step(client, image_id, name, argv, gpu_args, out_dir)
        steps.append(step)
        if step.skipped:
            names = ", ".join(line.split(":", 1)[0] for line in step.skipped)
            echo(f"gate {target.id}: {name}: skipped {len(step.skipped)} check(s) (reasons in {step.report}): {names}")
        if not step.passed:
            break  # smoke training on an image whose probe failed proves nothing
    result = GateResult(target.id, image_id, mode, require_gpu, tuple(steps))
    if result.passed:
        refs = gate_tags(target, release)
        for ref in refs:
            tag(client, image_id, ref)
        result = GateResult(target.id, image_id, mode, require_gpu, tuple(steps), refs, result.finished)
    (out_dir / "gate.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if not result.passed:
        remove_earlier_tags(client, target, result)
    return result


def earlier_tags(target: Target, repo_tags: list[str]) -> list[str]:
    """Which of an image's names are this target's gate tags (floating, or immutable of any release)."""
    floating = {f"{target.image_repo}:{tag}" for tag in target.tags}
    immutable_prefix = f"{target.image_repo}:{immutable_tag(target, '')}"
    return [ref for ref in repo_tags if ref in floating or ref.startswith(immutable_prefix)]


def remove_earlier_tags(client: DockerClient, target: Target, failed: GateResult) -> None:
    """A re-gated image that fails loses the tags an earlier pass gave it. Docker deletes an image
    with its last name: then only the reports remain (a rebuild from the build cache brings it back)."""
    image_id = failed.image_id
    refs = earlier_tags(target, list((image_inspect(client, image_id) or {}).get("RepoTags") or []))
    if not refs:
        return
    try:
        for ref in refs:
            untag(client, ref)
    except DockerCommandError as error:
        raise GateFailedError(f"{target.id}: gate failed, and {error.message}: remove it by hand", details=failed.failing) from None
    gone = "" if image_exists(client, image_id) else "; it had no other name, so Docker deleted it (rebuild to inspect it)"
    echo(f"gate {target.id}: failed: removed the tags an earlier pass gave image {image_id[:19]}: {', '.join(refs)}{gone}")


def require_pass(result: GateResult, reports_dir: Path = REPORTS_DIR) -> None:
    """Raise GateFailedError (one line per failing check) unless the gate passed."""
    if not result.passed:
        raise GateFailedError(
            f"{result.target}: gate failed ({result.mode} mode) for image {result.image_id[:19]}; "
            f"no tag; report in {reports_dir / result.target}/gate.json",
            details=result.failing,
        )
