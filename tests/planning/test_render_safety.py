"""render owns dockerfiles/ (and probe/matrix_facts.json) under its root and nothing else: it never follows a
link out of the tree, prunes only files it generated, and two renders at once both succeed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from imagefactory.plan import render

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "templates"
GENERATED = f"# {render.GENERATED_MARK}\n"


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "Dockerfile").write_text(GENERATED)  # even a file that looks generated
    return outside


def test_a_linked_target_directory_is_refused_and_the_outside_file_kept(run_cli, tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    root = tmp_path / "repo"
    (root / "dockerfiles").mkdir(parents=True)
    (root / "dockerfiles" / "hopper-cu130").symlink_to(outside)
    res = run_cli("render", "--out", str(root), "--select", "hopper-cu130")
    assert res.code == 1 and res.err.count("\n") == 1 and "symbolic link" in res.err, res.err
    assert (outside / "Dockerfile").read_text() == GENERATED
    assert run_cli("render", "--out", str(root), "--check", "--select", "hopper-cu130").code == 1


def test_a_linked_dockerfiles_directory_or_file_is_refused(run_cli, tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dockerfiles").symlink_to(outside)
    assert "symbolic link" in run_cli("render", "--out", str(root)).err
    (root / "dockerfiles").unlink()
    (root / "dockerfiles" / "hopper-cu130").mkdir(parents=True)
    (root / "dockerfiles" / "hopper-cu130" / "Dockerfile").symlink_to(outside / "Dockerfile")
    assert "symbolic link" in run_cli("render", "--out", str(root), "--select", "hopper-cu130").err
    (root / "probe").symlink_to(outside)
    assert "symbolic link" in run_cli("render", "--out", str(root), "--select", "ampere-cu121").err
    assert sorted(p.name for p in outside.iterdir()) == ["Dockerfile"]
    assert (outside / "Dockerfile").read_text() == GENERATED


def test_prune_never_follows_a_link_and_spares_hand_written_files(run_cli, tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    root = tmp_path / "repo"
    stale_generated = root / "dockerfiles" / "gone-cu999" / "Dockerfile"
    hand_written = root / "dockerfiles" / "mine-cu999" / "Dockerfile"
    for path, text in ((stale_generated, GENERATED), (hand_written, "FROM scratch\n")):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    (root / "dockerfiles" / "linked-cu999").symlink_to(outside)
    res = run_cli("render", "--out", str(root))
    assert res.code == 0 and "removed dockerfiles/gone-cu999/Dockerfile" in res.out, res.err
    assert not stale_generated.parent.exists()
    assert hand_written.read_text() == "FROM scratch\n"
    assert (outside / "Dockerfile").read_text() == GENERATED
    assert run_cli("render", "--out", str(root), "--check").code == 0  # neither counts as drift


def test_two_renders_at_once_both_succeed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for round_ in range(2):
        for i in range(10):  # stale generated files both runs will want to prune
            stale = root / "dockerfiles" / f"stale{i}-cu999" / "Dockerfile"
            stale.parent.mkdir(parents=True, exist_ok=True)
            stale.write_text(GENERATED)
        if round_:
            next(root.glob("dockerfiles/hopper-*/Dockerfile")).write_text("drift\n")
        argv = [sys.executable, "-m", "imagefactory", "render", "--templates", str(FIXTURE), "--out", str(root)]
        runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
                for _ in range(2)]
        for run in runs:
            _, err = run.communicate(timeout=120)
            assert run.returncode == 0 and err == "", err
    assert not list(root.glob("dockerfiles/stale*"))
    assert not list(root.rglob(".Dockerfile.*"))  # no temp file left behind


def test_every_rendered_dockerfile_carries_the_generated_mark(matrix) -> None:
    """Prune recognises its own files by GENERATED_MARK: a template header without it would strand them."""
    for target in matrix.targets:
        assert render.GENERATED_MARK in render.render_target(target).split("\n", 3)[1], target.id
