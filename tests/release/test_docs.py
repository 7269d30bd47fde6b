"""Supported-tags page and deploy files: generated from targets, drift-checked, parseable by their consumers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml

from imagefactory.errors import ConfigError
from imagefactory.publish import sizes
from imagefactory.publish.docs import drift, generate, write
from probe.select import Choice, candidates_from_json, choose

from . import runpod_schemas


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


def test_runpod_template_and_pod_bodies_follow_the_pod_conventions(tmp_path: Path) -> None:
    files = generate(TARGETS, repo="r.example/if", docs_dir=tmp_path)
    template = json.loads(files[tmp_path / "deploy" / "hopper-cu130" / "runpod-template.json"])
    jsonschema.validate(template, runpod_schemas.TEMPLATE)
    assert template["imageName"] == "r.example/if:hopper-cu130"
    assert template["ports"] == ["8888/http", "22/tcp"] and template["volumeMountPath"] == "/workspace"
    assert set(template["env"]) == {"PUBLIC_KEY", "JUPYTER_PASSWORD", "PROBE_EXPECT_TARGET"}
    assert "dockerStartCmd" not in template  # the image's entrypoint starts sshd/Jupyter and keeps the pod up
    pod = json.loads(files[tmp_path / "deploy" / "hopper-cu130" / "runpod-pod.json"])
    jsonschema.validate(pod, runpod_schemas.POD)
    assert pod["allowedCudaVersions"] == ["13.0"]  # a 570 host (CUDA 12.8) would fail to start a cu130 image
    older = json.loads(files[tmp_path / "deploy" / "hopper-cu128-torch2.7" / "runpod-pod.json"])
    assert older["allowedCudaVersions"] == ["12.8", "12.9", "13.0"]
    assert {k: pod[k] for k in template if k in pod} == {k: template[k] for k in template if k in pod}


def test_a_schema_violation_is_caught(tmp_path: Path) -> None:
    """The schemas are not vacuous: a misspelt field and a bad port are refused."""
    files = generate(TARGETS, repo="r.example/if", docs_dir=tmp_path)
    template = json.loads(files[tmp_path / "deploy" / "hopper-cu130" / "runpod-template.json"])
    for broken in ({**template, "imagename": "x"}, {**template, "ports": ["22"]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, runpod_schemas.TEMPLATE)


def test_container_disk_is_the_measured_image_plus_headroom(tmp_path: Path) -> None:
    files = generate(TARGETS, repo="example.test/r", docs_dir=tmp_path, sizes={"hopper-cu130": 7_400_000_000})
    measured = json.loads(files[tmp_path / "deploy" / "hopper-cu130" / "runpod-template.json"])
    assert measured["containerDiskInGb"] == 30  # 7.4 GB + 20 GB headroom, rounded up to 5
    unmeasured = json.loads(files[tmp_path / "deploy" / "ampere-cu126" / "runpod-template.json"])
    assert unmeasured["containerDiskInGb"] == 60  # the nvidia flavor's default


def test_image_sizes_file_round_trips_and_refuses_nonsense(tmp_path: Path) -> None:
    sizes.write(tmp_path, {"hopper-cu130": 7_400_000_000})
    assert sizes.load(tmp_path) == {"hopper-cu130": 7_400_000_000}
    (tmp_path / sizes.SIZES_FILE).write_text('{"images": {"hopper-cu130": "big"}}')
    with pytest.raises(ConfigError, match=r"images.hopper-cu130: not a size in bytes"):
        sizes.load(tmp_path)


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="Debian's cloud-init is not installed")
def test_lambda_cloud_init_passes_cloud_init_schema_check(tmp_path: Path) -> None:
    files = generate(TARGETS, repo="r.example/if", docs_dir=tmp_path)
    path = tmp_path / "deploy" / "ampere-cu126" / "lambda-cloud-init.yaml"
    write(files, tmp_path)
    done = subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "Valid cloud-config" in done.stdout, done.stdout + done.stderr
    data = yaml.safe_load(path.read_text())
    script = data["runcmd"][0]
    run = script[script.index("docker run"):]
    for part in ("--gpus all", "--ipc=host", "-v /home/ubuntu/workspace:/workspace", "-p 2222:22", "-p 8888:8888",
                 "r.example/if:ampere-cu126", "PUBLIC_KEY="):
        assert part in run, part
    assert "JUPYTER_PASSWORD=" in data["write_files"][0]["content"]
    # the check is real: a misspelt key of write_files is refused by the same command
    path.write_text(path.read_text().replace("  - path:", "  - pathx:"))
    bad = subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True, text=True, check=False)
    assert bad.returncode != 0


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
    from imagefactory.cli import main

    root = Path(__file__).resolve().parents[2]
    assert main(["docs", "--check", "--matrix", str(root / "matrix.yaml"), "--docs-dir", str(root / "docs")]) == 0
