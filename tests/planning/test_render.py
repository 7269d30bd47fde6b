"""The renderer: deterministic, includes work, write-if-changed, --check lists drift, errors leave no files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imagefactory import resolve_target
from imagefactory.errors import TemplateError
from imagefactory.plan import render
from imagefactory.plan.model import Matrix

FIXTURE = Path(__file__).parent / "fixtures" / "templates"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "fixture-hopper-cu130.Dockerfile"


def test_fixture_render_matches_golden(matrix: Matrix, update_golden: bool) -> None:
    text = render.render_target(resolve_target(matrix, "hopper-cu130"), FIXTURE)
    if update_golden:
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")
    assert "libbitsandbytes_cuda130.so" in text and 'COMPUTE_CAPABILITY="90"' in text
    assert "--index-url" not in text  # torch 2.14.1 for cu130 is the PyPI wheel


def test_rendering_is_deterministic(matrix: Matrix) -> None:
    target = resolve_target(matrix, "cdna3-rocm7.1")
    first = render.render_target(target, FIXTURE)
    assert first == render.render_target(target, FIXTURE)
    assert "libbitsandbytes_rocm71.so" in first and "--index-url https://download.pytorch.org/whl/rocm7.1" in first


def test_write_only_when_changed_and_check(matrix: Matrix, tmp_path: Path) -> None:
    targets = [resolve_target(matrix, i) for i in ("hopper-cu130", "ampere-cu126")]
    rendered = render.render_all(targets, FIXTURE)
    assert {str(d) for d in render.check(rendered, tmp_path)} == {  # hopper is built for amd64 and arm64: two files
        "dockerfiles/hopper-cu130/Dockerfile: missing", "dockerfiles/hopper-cu130/Dockerfile.arm64: missing",
        "dockerfiles/ampere-cu126/Dockerfile: missing"}
    assert len(render.write(rendered, tmp_path)) == 3
    path = tmp_path / "dockerfiles/hopper-cu130/Dockerfile"
    before = path.stat().st_mtime_ns
    assert render.write(rendered, tmp_path) == []  # unchanged: nothing rewritten
    assert path.stat().st_mtime_ns == before
    path.write_text("edited\n")
    (tmp_path / "dockerfiles/gone-cu999").mkdir()
    (tmp_path / "dockerfiles/gone-cu999/Dockerfile").write_text(f"# old {render.GENERATED_MARK}\n")
    (tmp_path / "dockerfiles/ampere-cu126/Dockerfile.arm64").write_text(f"# old {render.GENERATED_MARK}\n")
    (tmp_path / "dockerfiles/ampere-cu126/Dockerfile.mine").write_text("# written by hand: never pruned\n")
    drift = {str(d) for d in render.check(rendered, tmp_path)}
    assert drift == {"dockerfiles/hopper-cu130/Dockerfile: changed", "dockerfiles/gone-cu999/Dockerfile: stale",
                     "dockerfiles/ampere-cu126/Dockerfile.arm64: stale"}
    assert render.check(rendered, tmp_path, prune=False) == [render.Drift(Path("dockerfiles/hopper-cu130/Dockerfile"),
                                                                          "changed")]
    render.write(rendered, tmp_path)
    assert render.check(rendered, tmp_path) == []
    assert not (tmp_path / "dockerfiles/gone-cu999").exists()
    assert not (tmp_path / "dockerfiles/ampere-cu126/Dockerfile.arm64").exists()
    assert (tmp_path / "dockerfiles/ampere-cu126/Dockerfile.mine").exists()


def test_template_error_names_the_place(matrix: Matrix, tmp_path: Path) -> None:
    # that a failing render writes nothing is tested through the CLI (test_cli.py: render_all runs before write)
    templates = tmp_path / "templates"
    shutil.copytree(FIXTURE, templates)
    (templates / "partials" / "build.j2").write_text("RUN echo {{ target.torch.versoin }}\n")
    with pytest.raises(TemplateError) as info:
        render.render_all([resolve_target(matrix, "hopper-cu130")], templates)
    assert "undefined" in info.value.message and "versoin" in info.value.message
    (templates / "partials" / "build.j2").write_text("{% if %}\n")
    with pytest.raises(TemplateError, match="build.j2:1: template syntax error"):
        render.render_target(resolve_target(matrix, "hopper-cu130"), templates)
    with pytest.raises(TemplateError, match="not found"):
        render.render_target(resolve_target(matrix, "hopper-cu130"), tmp_path / "nowhere")


@pytest.mark.parametrize(("text", "what"), [
    ("{{ 1/0 }}\n", "division by zero"),
    ('{% include "partials/build.j2" %}\n', "without end"),
    ("{{ target.labels['nope'] }}\n", "template"),
    ("RUN echo {{ 'x\\ny'|sh }}\n", "control character"),
    ("LABEL a={{ 'x\\ny'|docker }}\n", "control character"),
])
def test_template_faults_are_template_errors(matrix: Matrix, tmp_path: Path, text: str, what: str) -> None:
    """Issue 10 class 13: a broken or self-including template is a one-line TemplateError (exit 2), not exit 70."""
    templates = tmp_path / "templates"
    shutil.copytree(FIXTURE, templates)
    (templates / "partials" / "build.j2").write_text(text)
    with pytest.raises(TemplateError, match=what) as info:
        render.render_target(resolve_target(matrix, "hopper-cu130"), templates)
    assert "\n" not in info.value.message
