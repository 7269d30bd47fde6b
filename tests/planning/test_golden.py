"""Golden files: the github/bake/json outputs (tests/golden/) and every rendered Dockerfile (dockerfiles/).

Refresh after an intended change:
    IMAGEFACTORY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/planning/test_golden.py   # tests/golden/*
    make render                                                                              # dockerfiles/
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from imagefactory.plan import outputs, render
from imagefactory.plan.expand import expand
from imagefactory.plan.model import Matrix

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"


@pytest.mark.parametrize(
    ("name", "produce"),
    [
        ("targets.github.json", lambda m: outputs.github_matrix(expand(m).targets)),
        ("docker-bake.json", lambda m: outputs.bake_file(expand(m).targets)),
        ("targets.ids.txt", lambda m: "".join(f"{t.id}\n" for t in expand(m).targets)),
    ],
)
def test_output_golden(matrix: Matrix, update_golden: bool, name: str, produce) -> None:
    text = produce(matrix)
    path = GOLDEN / name
    if update_golden:
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden {path}: IMAGEFACTORY_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(encoding="utf-8"), f"{name} changed: refresh it if intended (see module docstring)"


def test_github_matrix_shape(matrix: Matrix) -> None:
    data = json.loads(outputs.github_matrix(expand(matrix).targets))
    assert set(data) == {"include"} and len(data["include"]) == len(expand(matrix).targets) <= 256
    hopper = next(row for row in data["include"] if row["target"] == "hopper-cu130")
    assert hopper["dockerfile"] == "dockerfiles/hopper-cu130/Dockerfile" and hopper["torch"] == "2.14.1"


def test_bake_file_shape(matrix: Matrix) -> None:
    data = json.loads(outputs.bake_file(expand(matrix).targets))
    names = data["group"]["default"]["targets"]
    assert sorted(names) == sorted(data["target"])  # every bake target in the default group, once
    for name, body in data["target"].items():
        assert re.fullmatch(r"[A-Za-z0-9_-]+", name), name  # buildx rejects other characters
        assert set(body) == {"context", "dockerfile", "args", "tags", "labels", "cache-from", "cache-to", "platforms"}
        assert body["tags"][0].startswith("imagefactory:")
    assert "cdna3-rocm7_1" in data["target"]
    assert data["target"]["hopper-cu130"]["dockerfile"] == "dockerfiles/hopper-cu130/Dockerfile"


def test_bake_args_are_declared_by_the_rendered_dockerfile(matrix: Matrix) -> None:
    target = next(t for t in expand(matrix).targets if t.id == "hopper-cu130")
    text = render.render_target(target)
    for arg in json.loads(outputs.bake_file([target]))["target"]["hopper-cu130"]["args"]:
        assert re.search(rf"^ARG {arg}\b", text, re.M), f"bake passes {arg} but the Dockerfile has no ARG {arg}"


def test_json_has_every_resolved_value(matrix: Matrix) -> None:
    data = json.loads(outputs.targets_json(expand(matrix).targets))
    hopper = next(t for t in data if t["id"] == "hopper-cu130")
    for key in ("arch", "sms", "sm_codes", "toolkit", "torch", "triton_version", "python", "flavor", "base", "nvcc",
                "bitsandbytes", "payload_requirements", "labels", "expect_env", "tags", "provenance", "dockerfile"):
        assert key in hopper, key
    assert hopper["torch"]["index_url"] is None and hopper["provenance"]["torch"].startswith("matrix.yaml:")


def test_every_committed_dockerfile_is_what_render_writes(matrix: Matrix) -> None:
    """The golden test over the real templates: `render --check` in test form. Refresh: make render."""
    rendered = render.render_all(expand(matrix).targets)
    drift = render.check(rendered, REPO)
    assert not drift, "dockerfiles/ differs from matrix.yaml + templates/ (run `make render`): " + ", ".join(
        map(str, drift))
