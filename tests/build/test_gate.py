"""The gate (imagefactory.build.gate and `python -m imagefactory gate`), against fake docker clients that
log every call: what it runs in the image, tags only on a pass, what it refuses, the reports it leaves."""

from __future__ import annotations

import json

import pytest

from imagefactory.build.docker import DockerClient
from imagefactory.build.gate import gate_image, require_pass
from imagefactory.cli import main as cli_main
from imagefactory.errors import GateFailedError
from imagefactory.plan.expand import resolve_target

IMAGE = "sha256:" + "ab" * 32


def probe_report(status: str) -> str:
    return json.dumps({"checks": [{"name": "expect.torch", "status": status, "reason": "torch 2.14.1 vs declared"}]})


def gate_docker(fake_docker, probe_status: str, smoke_exit: int = 0, repo_tags: tuple[str, ...] = ()):
    probe_exit = 0 if probe_status != "fail" else 1
    inspect = json.dumps([{"Id": IMAGE, "RepoTags": list(repo_tags)}])
    return DockerClient(str(fake_docker(
        f"*probe\\ smoke*) echo '{probe_report('pass')}'; exit {smoke_exit} ;;\n"
        f"*probe\\ --json*) echo '{probe_report(probe_status)}'; exit {probe_exit} ;;\n"
        f"image\\ inspect\\ *) echo '{inspect}' ;;\n"
        "tag\\ *|image\\ rm\\ *) exit 0 ;;")), "classic", "20.10.24")


def test_gate_pass_tags_floating_and_immutable(fake_docker, hopper, tmp_path):
    client = gate_docker(fake_docker, "pass")
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path / "reports", gpus=False)
    assert result.passed and result.mode == "cpu"
    calls = fake_docker.log.read_text().splitlines()
    assert [c for c in calls if c.startswith("tag")] == [
        f"tag {IMAGE} imagefactory:hopper-cu130",
        f"tag {IMAGE} imagefactory:hopper-cu130-latest",
        f"tag {IMAGE} imagefactory:hopper-cu130-torch2.14.1-r1",
    ]
    assert all("--network none" in c for c in calls if c.startswith("run"))
    assert not any("--gpus" in c for c in calls)
    report = json.loads((tmp_path / "reports" / "hopper-cu130" / "gate.json").read_text())
    assert report["result"] == "passed" and report["image_id"] == IMAGE and report["target"] == "hopper-cu130"


def test_gate_failure_tags_nothing_keeps_the_report_and_names_the_check(fake_docker, hopper, tmp_path):
    client = gate_docker(fake_docker, "fail")
    reports = tmp_path / "reports"
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=reports, gpus=True)
    assert not result.passed and result.mode == "gpu"
    calls = fake_docker.log.read_text().splitlines()
    assert not [c for c in calls if c.startswith("tag")]
    assert len([c for c in calls if c.startswith("run")]) == 1  # smoke is not run after a failed probe
    assert "--gpus all" in calls[0]
    assert json.loads((reports / "hopper-cu130" / "gate.json").read_text())["result"] == "failed"
    assert (reports / "hopper-cu130" / "probe.json").exists()
    with pytest.raises(GateFailedError) as info:
        require_pass(result, reports)
    assert info.value.details == ("probe: expect.torch: torch 2.14.1 vs declared",)


def test_failed_regate_removes_the_tags_an_earlier_pass_gave(fake_docker, hopper, tmp_path):
    """"A failed gate leaves no tag on that image", also on an image that passed before; other names stay."""
    earlier = ("imagefactory:hopper-cu130", "imagefactory:hopper-cu130-latest", "imagefactory:hopper-cu130-torch2.14.1-r0")
    others = ("imagefactory:hopper-cu130-nvidia", "mine:hopper-cu130")
    client = gate_docker(fake_docker, "fail", repo_tags=earlier + others)
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert not result.passed and result.tags == ()
    calls = fake_docker.log.read_text().splitlines()
    assert not [c for c in calls if c.startswith("tag")]
    assert [c for c in calls if c.startswith("image rm")] == [f"image rm --no-prune {ref}" for ref in earlier]


def test_failed_regate_that_cannot_remove_a_tag_is_a_gate_failure(fake_docker, hopper, tmp_path):
    inspect = json.dumps([{"Id": IMAGE, "RepoTags": ["imagefactory:hopper-cu130"]}])
    client = DockerClient(str(fake_docker(
        f"*probe\\ --json*) echo '{probe_report('fail')}'; exit 1 ;;\n"
        f"image\\ inspect\\ *) echo '{inspect}' ;;\n"
        "image\\ rm\\ *) echo 'conflict: unable to remove repository reference' >&2; exit 1 ;;")), "classic", "20.10.24")
    with pytest.raises(GateFailedError, match="gate failed, and removing the tag imagefactory:hopper-cu130: .*conflict") as info:
        gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert info.value.details == ("probe: expect.torch: torch 2.14.1 vs declared",)
    assert json.loads((tmp_path / "hopper-cu130" / "gate.json").read_text())["result"] == "failed"


def test_gate_fails_on_a_smoke_exit_code_even_without_failed_checks(fake_docker, hopper, tmp_path):
    client = gate_docker(fake_docker, "pass", smoke_exit=1)
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert not result.passed
    assert result.failing[0].startswith("smoke: exit 1")
    assert not [c for c in fake_docker.log.read_text().splitlines() if c.startswith("tag")]


def test_a_hung_gate_step_fails_and_its_container_is_removed(fake_docker, hopper, tmp_path, monkeypatch):
    import imagefactory.build.gate as gate

    monkeypatch.setattr(gate, "STEP_TIMEOUT_S", 0.5)
    client = DockerClient(str(fake_docker("run\\ *) exec sleep 30 ;;\nrm\\ *) exit 0 ;;\nimage\\ inspect\\ *) echo '[]' ;;")), "classic", "20.10.24")
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert not result.passed and "no answer within 0.5 s" in result.failing[0]
    calls = fake_docker.log.read_text().splitlines()
    name = calls[0].split("--name ", 1)[1].split()[0]
    assert name.startswith("imagefactory-") and f"rm --force {name}" in calls


def test_require_gpu_reaches_the_probe(fake_docker, hopper, tmp_path):
    client = gate_docker(fake_docker, "pass")
    gate_image(client, hopper, IMAGE, release="r1", require_gpu=True, reports_dir=tmp_path, gpus=False)
    assert "probe --json --require-gpu" in fake_docker.log.read_text()


def test_gate_hands_an_amd_target_rocm_device_nodes_not_nvidia_gpus(fake_docker, matrix, tmp_path):
    amd = resolve_target(matrix, "cdna3-rocm6.2")
    client = gate_docker(fake_docker, "fail")
    result = gate_image(client, amd, IMAGE, release="r1", reports_dir=tmp_path, gpus=True)
    run_call = next(c for c in fake_docker.log.read_text().splitlines() if c.startswith("run"))
    assert result.mode == "gpu"
    assert "--device /dev/kfd --device /dev/dri --group-add video" in run_call
    assert "--gpus" not in run_call


def test_what_the_gate_runs_in_the_image(fake_docker, hopper, tmp_path):
    """The probe, then the smoke suite, each the image's own `python -m probe`, with no network."""
    client = gate_docker(fake_docker, "pass")
    gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    runs = [c for c in fake_docker.log.read_text().splitlines() if c.startswith("run")]
    assert [r.split(f"{IMAGE} ", 1)[1] for r in runs] == ["python -m probe --json", "python -m probe smoke --json"]
    assert all(r.startswith("run --rm --name imagefactory-") and " --network none " in r for r in runs)


def test_reports_say_what_failed_when_the_probe_prints_no_json(fake_docker, hopper, tmp_path):
    client = DockerClient(str(fake_docker(
        "*probe\\ --json*) echo 'Segmentation fault'; echo 'core dumped' >&2; exit 139 ;;\n"
        "image\\ inspect\\ *) echo '[]' ;;")), "classic", "20.10.24")
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert result.failing == ("probe: no JSON report (exit 139): core dumped",)
    out = tmp_path / "hopper-cu130"
    assert "Segmentation fault" in (out / "probe.out").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["gate.json", "probe.out"]
    report = json.loads((out / "gate.json").read_text())
    assert (report["result"], report["passed"], report["tags"]) == ("failed", False, [])


def test_a_new_gate_removes_the_reports_of_the_last_one(fake_docker, hopper, tmp_path):
    stale = tmp_path / "hopper-cu130" / "smoke.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    gate_image(gate_docker(fake_docker, "fail"), hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert not stale.exists()  # the probe failed: smoke did not run, so no smoke report may remain


# ---- `python -m imagefactory gate`: exit codes ---------------------------------------------------

DETECTABLE = 'buildx\\ version) echo "buildx v0.12" ;;\nversion\\ *) echo 20.10.24 ;;\n'


def cli_docker(fake_docker, probe_status: str) -> str:
    inspect = json.dumps([{"Id": IMAGE, "RepoTags": []}])
    return str(fake_docker(DETECTABLE +
        f"*probe\\ smoke*) echo '{probe_report('pass')}' ;;\n"
        f"*probe\\ --json*) echo '{probe_report(probe_status)}'; exit {int(probe_status == 'fail')} ;;\n"
        f"image\\ inspect\\ {IMAGE}) echo '{inspect}' ;;\n"
        "image\\ inspect\\ *) echo '[]'; exit 1 ;;\n"
        "tag\\ *) exit 0 ;;"))


def gate_cli(docker: str, tmp_path, *extra: str) -> int:
    return cli_main(["gate", "hopper-cu130", "--docker", docker, "--reports-dir", str(tmp_path), *extra])


def test_cli_gate_pass_exits_0_and_names_the_tags(fake_docker, tmp_path, capsys):
    assert gate_cli(cli_docker(fake_docker, "pass"), tmp_path, "--image", IMAGE, "--release", "r2") == 0
    err = capsys.readouterr().err
    assert "gate passed (cpu mode); tagged imagefactory:hopper-cu130, imagefactory:hopper-cu130-latest, " \
           "imagefactory:hopper-cu130-torch2.14.1-r2" in err
    assert (tmp_path / "hopper-cu130" / "gate.json").exists()


def test_cli_gate_failure_exits_6_with_one_line_per_failing_check(fake_docker, tmp_path, capsys):
    assert gate_cli(cli_docker(fake_docker, "fail"), tmp_path, "--image", IMAGE) == GateFailedError.exit_code == 6
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: hopper-cu130: gate failed (cpu mode) for image {IMAGE[:19]}; no tag; "
                      f"report in {tmp_path}/hopper-cu130/gate.json",
                      "error: probe: expect.torch: torch 2.14.1 vs declared"]


def test_cli_gate_defaults_to_the_last_build_of_the_target(fake_docker, tmp_path):
    (tmp_path / "hopper-cu130").mkdir()
    (tmp_path / "hopper-cu130" / "build.json").write_text(json.dumps({"image_id": IMAGE}))
    assert gate_cli(cli_docker(fake_docker, "pass"), tmp_path) == 0
    assert f"image inspect {IMAGE}" in fake_docker.log.read_text()


@pytest.mark.parametrize("release", ["latest", "bad/one", ""])
def test_cli_gate_refuses_a_bad_release_before_docker(fake_docker, tmp_path, capsys, release):
    assert gate_cli(cli_docker(fake_docker, "pass"), tmp_path, "--image", IMAGE, "--release", release) == 2
    assert capsys.readouterr().err.startswith(f"error: release {release!r}: ")
    assert not fake_docker.log.exists()


def test_cli_gate_refuses_a_missing_image(fake_docker, tmp_path, capsys):
    assert gate_cli(cli_docker(fake_docker, "pass"), tmp_path, "--image", "nope:1") == 2
    assert capsys.readouterr().err == "error: hopper-cu130: no image nope:1 in the local store; build it first (nox -s build-hopper-cu130)\n"
    assert not [c for c in fake_docker.log.read_text().splitlines() if c.startswith(("run", "tag"))]


def test_cli_gate_unknown_target_exits_2(fake_docker, tmp_path, capsys):
    assert cli_main(["gate", "hoper-cu130", "--docker", cli_docker(fake_docker, "pass")]) == 2
    assert "hopper-cu130" in capsys.readouterr().err
