"""The gate: a candidate image (by ID) proves itself with its own probe and smoke suite, then is tagged.

Every step runs inside the image with `--network none`, and with the host's GPUs of the target's vendor
when it has any (`--gpus all` for NVIDIA, ROCm's device nodes for AMD). Only when all pass is the image
tagged `<repo>:<target>`, `<repo>:<target>-latest` and the immutable tag. A failed gate leaves no such
tag on the image (also none that an earlier pass gave it), prints the failing checks and keeps the report
in reports/<target>/ (gate.json, probe.json, smoke.json, fresh-kernel.json, workload.json) — gate.json is
the file the release step reads; it lists each step's skipped checks too (CPU mode skips the GPU ones).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from imagefactory.build.docker import (
    IMAGE_ID,
    DockerClient,
    DockerCommandError,
    check_image_ref,
    gpu_run_args,
    host_has_gpus,
    image_exists,
    image_inspect,
    label_child,
    refs_labelled,
    run_container,
    tag,
    untag,
)
from imagefactory.build.locks import target_lock
from imagefactory.build.seal import GATE_IMAGE_LABEL, identity_problems, seal_labels
from imagefactory.errors import GateFailedError, UsageError
from imagefactory.log import echo
from imagefactory.plan.model import Target
from imagefactory.plan.platforms import HOST_PLATFORM, debian_arch, is_cross, unit_id
from imagefactory.run import CommandError
from imagefactory.tags import gate_refs, is_gate_ref

REPORTS_DIR = Path("reports")
STEP_TIMEOUT_S = 3600  # the CPU smoke run is the slow one; a hung container must not hang CI
# Under QEMU user emulation every instruction is translated: a smoke training step took ~50 s there against ~2 s
# natively (docs/benchmarks.md, "arm64"), so an emulated gate's steps get three times the limit.
EMULATED_STEP_TIMEOUT_S = 3 * STEP_TIMEOUT_S

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
    sealed_image: str | None = None  # the labelled child that carries the pass (what is tagged and pushed)
    finished: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    platform: str = HOST_PLATFORM  # linux/arm64: gated here under QEMU user emulation (CPU mode)

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


def gate_tags(target: Target, release: str, platform: str = HOST_PLATFORM) -> tuple[str, ...]:
    """Full references this target's image gets on a pass: floating ones, then the immutable one
    (the names push publishes; imagefactory.tags builds them). `-arm64` at the end for linux/arm64."""
    return gate_refs(target, release, platform)


def report_id(target: Target, platform: str = HOST_PLATFORM) -> str:
    """The folder under reports/ (and the lock) of one target's build and gate for a platform: `hopper-cu130`,
    `hopper-cu130-arm64`."""
    return unit_id(target.id, platform)


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


def step_commands(require_gpu: bool, target: Target) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The probe commands the gate runs in the image, in order (each must pass for the next to run).

    fresh-kernel: a Triton kernel no cache holds compiles (and on a GPU launches) with the image's own tools.
    workload: the declared workload (Unsloth QLoRA with 0 compiles on a GPU; installation, imports and the
    warm replay on a CPU), for targets whose matrix says `workload.prove`."""
    # `--expect target=` is compared by the probe with the image's own PROBE_EXPECT_TARGET and torch's build
    probe = ("python", "-m", "probe", "--json", "--expect", f"target={target.id}",
             *(("--require-gpu",) if require_gpu else ()))
    steps = [("probe", probe), ("smoke", ("python", "-m", "probe", "smoke", "--json"))]
    if target.warm_triton_cache:
        steps.append(("fresh-kernel", ("python", "-m", "probe", "fresh-kernel", "--json")))
    if target.workload is not None and target.workload.prove:
        steps.append(("workload", ("python", "-m", "probe", "workload", "--json")))
    return tuple(steps)


def run_step(client: DockerClient, image_id: str, name: str, argv: tuple[str, ...], gpu_args: tuple[str, ...], out_dir: Path,
             timeout: float = STEP_TIMEOUT_S) -> StepResult:
    try:
        done = run_container(client, image_id, argv, network="none", gpu_args=gpu_args, timeout=timeout)
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


def candidate_for(client: DockerClient, target: Target, image: str, platform: str = HOST_PLATFORM) -> str:
    """The full ID of the image to gate for `target`: the reference must be one (not an option such as
    `--help`), the image must exist, and its identity labels must name this target (an ampere image is
    never gated, tagged or published as hopper). UsageError (exit 2) otherwise."""
    check_image_ref(image)
    info = image_inspect(client, image)
    if info is None or not IMAGE_ID.fullmatch(str(info.get("Id", ""))):
        raise UsageError(f"{target.id}: no image {image} in the local store; build it first (nox -s build-{target.id})")
    labels = (info.get("Config") or {}).get("Labels") or {}
    sealed_from = image_inspect(client, labels[GATE_IMAGE_LABEL]) if IMAGE_ID.fullmatch(str(labels.get(GATE_IMAGE_LABEL, ""))) else None
    if sealed_from is not None and (sealed_from.get("RootFS") or {}).get("Layers") == (info.get("RootFS") or {}).get("Layers"):
        echo(f"gate {target.id}: {image[:40]} is a seal of {sealed_from['Id'][:19]}: gating that image (seals are not stacked)")
        info, labels = sealed_from, (sealed_from.get("Config") or {}).get("Labels") or {}
    problems = identity_problems(target, labels)
    if problems:
        raise UsageError(f"{target.id}: image {image[:40]} is not an image of {target.id}: {'; '.join(problems)}")
    arch = str(info.get("Architecture") or debian_arch(platform))  # Docker always says; an older fake may not
    if arch != debian_arch(platform):
        raise UsageError(f"{target.id}: image {image[:40]} is linux/{arch[:20]}, not {platform}"
                         f"{'' if is_cross(platform) else ' (an arm64 image: gate --platform linux/arm64)'}")
    return str(info["Id"])


def gate_image(
    client: DockerClient,
    target: Target,
    image_id: str,
    *,
    release: str,
    require_gpu: bool = False,
    reports_dir: Path = REPORTS_DIR,
    gpus: bool | None = None,
    platform: str = HOST_PLATFORM,
) -> GateResult:
    """Run the probe and the smoke suite in the image; on a pass seal it (a labelled child, see
    imagefactory.publish.push) and tag the seal. Never raises for a failing image: the result says what
    failed (the caller decides the exit code). An image labelled for another target is a UsageError."""
    image_id = candidate_for(client, target, image_id, platform)
    with target_lock(reports_dir, report_id(target, platform)):  # one build or gate of a target at a time
        return _gate(client, target, image_id, release=release, require_gpu=require_gpu, reports_dir=reports_dir, gpus=gpus,
                     platform=platform)


def _gate(client: DockerClient, target: Target, image_id: str, *, release: str, require_gpu: bool, reports_dir: Path,
          gpus: bool | None, platform: str) -> GateResult:
    out_dir = reports_dir / report_id(target, platform)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("gate.json", *(f"{name}.{ext}" for name, _ in step_commands(True, target) for ext in ("json", "out"))):
        (out_dir / stale).unlink(missing_ok=True)  # a report must describe this image only
    vendor = target.arch.vendor
    if is_cross(platform):  # the host's GPU driver cannot serve an emulated process
        gpus, why = False, f" ({platform}): runs under QEMU user emulation"
    else:
        gpus, why = host_has_gpus(vendor) if gpus is None else gpus, f": no {'AMD' if vendor == 'amd' else 'NVIDIA'} GPU on this host"
    mode: GateMode = "gpu" if gpus else "cpu"
    gpu_args = gpu_run_args(vendor) if gpus else ()
    if not gpus:
        echo(f"gate {target.id}{why}: CPU mode (GPU checks skipped{'; --require-gpu makes that a failure' if require_gpu else ''})")
    steps = []
    for name, argv in step_commands(require_gpu, target):
        step = run_step(client, image_id, name, argv, gpu_args, out_dir,
                        EMULATED_STEP_TIMEOUT_S if is_cross(platform) else STEP_TIMEOUT_S)
        steps.append(step)
        if step.skipped:
            names = ", ".join(line.split(":", 1)[0] for line in step.skipped)
            echo(f"gate {target.id}: {name}: skipped {len(step.skipped)} check(s) (reasons in {step.report}): {names}")
        if not step.passed:
            break  # smoke training on an image whose probe failed proves nothing
    result = GateResult(target.id, image_id, mode, require_gpu, tuple(steps), platform=platform)
    if result.passed:
        refs = gate_tags(target, release, platform)
        try:
            sealed = label_child(client, image_id, seal_labels(target, image_id, mode, result.to_json()))
        except DockerCommandError as error:
            raise GateFailedError(f"{target.id}: gate passed, but sealing image {image_id[:19]} failed: {error.message}") from None
        for ref in refs:
            tag(client, sealed, ref)
        result = GateResult(target.id, image_id, mode, require_gpu, tuple(steps), refs, sealed, result.finished, platform)
    (out_dir / "gate.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if not result.passed:
        remove_earlier_tags(client, target, result)
    return result


def earlier_tags(target: Target, repo_tags: list[str], platform: str = HOST_PLATFORM) -> list[str]:
    """Which of an image's names are this target's gate tags (floating, or immutable of any release)."""
    return [ref for ref in repo_tags if is_gate_ref(target, ref, platform)]


def remove_earlier_tags(client: DockerClient, target: Target, failed: GateResult) -> None:
    """A re-gated image that fails loses the tags an earlier pass gave it. Docker deletes an image
    with its last name: then only the reports remain (a rebuild from the build cache brings it back)."""
    image_id = failed.image_id
    named = [*((image_inspect(client, image_id) or {}).get("RepoTags") or []), *refs_labelled(client, GATE_IMAGE_LABEL, image_id)]
    refs = earlier_tags(target, list(dict.fromkeys(named)), failed.platform)  # on the image itself (older gates) or on its seals
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
            f"no tag; report in {reports_dir / unit_id(result.target, result.platform)}/gate.json",
            details=result.failing,
        )
