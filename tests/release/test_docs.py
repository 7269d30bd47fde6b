"""Supported-tags page and deploy files: generated from targets, drift-checked, parseable by their consumers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import yaml

from imagefactory.publish.docs import drift, generate, write
from probe.select import Choice, candidates_from_json, choose


def fake_target(target_id: str, sms: tuple[str, ...], cuda: str, floor: str, torch: str, flavor: str = "slim"):
    """The attributes of imagefactory.model.Target that the generator reads."""
    return SimpleNamespace(
        id=target_id,
        tags=(target_id, f"{target_id}-latest"),
        arch=SimpleNamespace(vendor="nvidia", description="H100, H200"),
        sms=sms,
        gfx=(),
        toolkit=SimpleNamespace(kind="cuda", version=cuda, driver_floor=floor),
        torch=SimpleNamespace(version=torch),
        python="3.11",
        flavor=flavor,
        platforms=("linux/amd64",),
    )


TARGETS = [
    fake_target("hopper-cu130", ("9.0",), "13.0", "580", "2.14.1"),
    fake_target("hopper-cu128-torch2.7", ("9.0",), "12.8", "570", "2.7.1"),
    fake_target("ampere-cu126", ("8.0", "8.6"), "12.6", "525", "2.9.1", flavor="nvidia"),
]


def test_table_lists_tags_sms_toolkit_torch_and_driver(tmp_path: Path) -> None:
    files = generate(TARGETS, repo="r.example/if", docs_dir=tmp_path)
    table = files[tmp_path / "supported-tags.md"]
    row = next(line for line in table.splitlines() if line.startswith("| **hopper-cu130**"))
    for cell in ("`hopper-cu130`", "`hopper-cu130-latest`", "`hopper-cu130-torch2.14.1-<release>`", "9.0",
                 "CUDA 13.0", "2.14.1", "≥ 580"):
        assert cell in row
    assert table.index("ampere-cu126") < table.index("hopper-cu128-torch2.7") < table.index("| **hopper-cu130**")


def test_json_feeds_probe_select(tmp_path: Path) -> None:
    files = generate(TARGETS, repo="r.example/if", docs_dir=tmp_path)
    candidates = candidates_from_json(json.loads(files[tmp_path / "supported-tags.json"]), "supported-tags.json")
    decision = choose(candidates, "9.0", "575.1")
    assert isinstance(decision, Choice) and decision.candidate.best_tag == "hopper-cu128-torch2.7"
    decision = choose(candidates, "8.6", "535.1")
    assert isinstance(decision, Choice) and decision.candidate.target_id == "ampere-cu126"


def test_deploy_files_per_target(tmp_path: Path) -> None:
    files = generate(TARGETS, repo="r.example/if", docs_dir=tmp_path)
    template = json.loads(files[tmp_path / "deploy" / "hopper-cu130" / "runpod-template.json"])
    assert template["imageName"] == "r.example/if:hopper-cu130"
    assert template["env"]["TRITON_CACHE_DIR"] == "/opt/triton-cache"
    assert template["containerDiskInGb"] > 0 and template["volumeMountPath"] == "/workspace"
    start = template["dockerStartCmd"][-1]
    assert start.startswith("python -m probe --require-gpu") and start.endswith("exec sleep infinity")
    cloud_init = files[tmp_path / "deploy" / "ampere-cu126" / "lambda-cloud-init.yaml"]
    assert cloud_init.startswith("#cloud-config\n")
    data = yaml.safe_load(cloud_init)
    script = data["runcmd"][0]
    assert script.index("docker pull r.example/if:ampere-cu126") < script.index("python -m probe --require-gpu") < script.index("--name trainer")
    assert "TRITON_CACHE_DIR=/opt/triton-cache" in data["write_files"][0]["content"]


def test_check_finds_drift_and_write_fixes_it(tmp_path: Path) -> None:
    files = generate(TARGETS, docs_dir=tmp_path)
    assert len(drift(files, tmp_path)) == len(files)  # nothing written yet: all missing
    assert len(write(files, tmp_path)) == len(files)
    assert drift(files, tmp_path) == [] and write(files, tmp_path) == []  # idempotent
    (tmp_path / "supported-tags.md").write_text("edited by hand\n")
    assert drift(files, tmp_path) == [f"{tmp_path / 'supported-tags.md'}: out of date"]
    fewer = generate(TARGETS[:1], docs_dir=tmp_path)  # a target left the matrix
    problems = drift(fewer, tmp_path)
    assert any("ampere-cu126/runpod-template.json: target no longer in the matrix" in p for p in problems)
    write(fewer, tmp_path)
    assert drift(fewer, tmp_path) == [] and not (tmp_path / "deploy" / "ampere-cu126").exists()


def test_committed_docs_match_the_matrix() -> None:
    """The check CI runs: regenerate from matrix.yaml and compare with docs/ (refresh: see docs/release.md)."""
    from imagefactory.cli import main  # noqa: PLC0415

    root = Path(__file__).resolve().parents[2]
    assert main(["docs", "--check", "--matrix", str(root / "matrix.yaml"), "--docs-dir", str(root / "docs")]) == 0
