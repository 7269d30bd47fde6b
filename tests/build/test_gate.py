"""The gate (imagefactory.build.gate and `python -m imagefactory gate`), against fake docker clients that
log every call: what it runs in the image, tags only on a pass, what it refuses, the reports it leaves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.build.docker import DockerClient
from imagefactory.build.gate import gate_image, require_pass
from imagefactory.build.seal import GATE_IMAGE_LABEL, IDENTITY_LABELS
from imagefactory.cli import main as cli_main
from imagefactory.errors import GateFailedError, UsageError
from imagefactory.plan.expand import resolve_target
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.render import REPO_ROOT

IMAGE = "sha256:" + "ab" * 32
SEALED = "sha256:" + "cd" * 32
HOPPER_LABELS = {key: resolve_target(load_matrix(REPO_ROOT / "matrix.yaml"), "hopper-cu130").labels[key] for key in IDENTITY_LABELS}


def probe_report(status: str) -> str:
    return json.dumps({"checks": [{"name": "expect.torch", "status": status, "reason": "torch 2.14.1 vs declared"}]})


def identity(target) -> dict[str, str]:
    return {key: target.labels[key] for key in IDENTITY_LABELS}


def inspect_answer(target_labels: dict[str, str], repo_tags: tuple[str, ...] = (), arch: str = "amd64") -> str:
    return json.dumps([{"Id": IMAGE, "RepoTags": list(repo_tags), "Architecture": arch, "Config": {"Labels": target_labels}}])


def gate_docker(fake_docker, probe_status: str, smoke_exit: int = 0, repo_tags: tuple[str, ...] = (), labels: dict | None = None,
                arch: str = "amd64"):
    probe_exit = 0 if probe_status != "fail" else 1
    inspect = inspect_answer(HOPPER_LABELS if labels is None else labels, repo_tags, arch)
    return DockerClient(str(fake_docker(
        f"*probe\\ smoke*) echo '{probe_report('pass')}'; exit {smoke_exit} ;;\n"
        f"*probe\\ fresh-kernel*|*probe\\ workload*) echo '{probe_report('pass')}' ;;\n"
        f"*probe\\ --json*) echo '{probe_report(probe_status)}'; exit {probe_exit} ;;\n"
        f"image\\ inspect\\ *) echo '{inspect}' ;;\n"
        f'build\\ -q*) cat "$7/Dockerfile" > {fake_docker.log}.dockerfile; echo {SEALED} > "$6" ;;\n'
        "tag\\ *|image\\ rm\\ *) exit 0 ;;")), "classic", "20.10.24")


def test_gate_pass_seals_then_tags_floating_and_immutable(fake_docker, hopper, tmp_path):
    client = gate_docker(fake_docker, "pass")
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path / "reports", gpus=False)
    assert result.passed and result.mode == "cpu" and result.sealed_image == SEALED
    calls = fake_docker.log.read_text().splitlines()
    assert [c for c in calls if c.startswith("tag")] == [
        f"tag -- {SEALED} imagefactory:hopper-cu130",
        f"tag -- {SEALED} imagefactory:hopper-cu130-latest",
        f"tag -- {SEALED} imagefactory:hopper-cu130-torch2.14.1-r1",
    ]
    assert all("--network none" in c for c in calls if c.startswith("run"))
    assert any("--expect target=hopper-cu130" in c for c in calls if c.startswith("run"))
    assert not any("--gpus" in c for c in calls)
    report = json.loads((tmp_path / "reports" / "hopper-cu130" / "gate.json").read_text())
    assert report["result"] == "passed" and report["image_id"] == IMAGE and report["target"] == "hopper-cu130"
    assert report["sealed_image"] == SEALED
    text = Path(f"{fake_docker.log}.dockerfile").read_text()  # the seal: one LABEL instruction on the candidate
    assert text.startswith(f"FROM {IMAGE}\nLABEL ") and 'io.imagefactory.gate="passed"' in text and 'io.imagefactory.gate.mode="cpu"' in text


def test_an_arm64_image_is_gated_under_emulation_in_cpu_mode_and_tagged_with_its_suffix(fake_docker, hopper, tmp_path, capsys):
    client = gate_docker(fake_docker, "pass", arch="arm64")
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path / "reports", gpus=True,
                        platform="linux/arm64")  # a GPU on the host cannot serve an emulated process
    assert result.passed and result.mode == "cpu" and result.platform == "linux/arm64"
    calls = fake_docker.log.read_text().splitlines()
    assert not any("--gpus" in c for c in calls)
    assert [c for c in calls if c.startswith("tag")] == [  # never the host platform's names
        f"tag -- {SEALED} imagefactory:hopper-cu130-arm64",
        f"tag -- {SEALED} imagefactory:hopper-cu130-latest-arm64",
        f"tag -- {SEALED} imagefactory:hopper-cu130-torch2.14.1-r1-arm64",
    ]
    report = json.loads((tmp_path / "reports" / "hopper-cu130-arm64" / "gate.json").read_text())
    assert report["platform"] == "linux/arm64" and report["target"] == "hopper-cu130" and report["mode"] == "cpu"
    assert not (tmp_path / "reports" / "hopper-cu130").exists()  # the amd64 image's reports are its own
    assert "QEMU user emulation" in capsys.readouterr().err


@pytest.mark.parametrize(("arch", "platform", "says"), [("arm64", "linux/amd64", "gate --platform linux/arm64"),
                                                        ("amd64", "linux/arm64", "is linux/amd64, not linux/arm64")])
def test_gate_refuses_an_image_of_another_platform(fake_docker, hopper, tmp_path, arch, platform, says):
    client = gate_docker(fake_docker, "pass", arch=arch)
    with pytest.raises(UsageError, match=says):
        gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path / "reports", platform=platform)
    assert not any(c.startswith(("run", "tag")) for c in fake_docker.log.read_text().splitlines())


def test_a_failed_arm64_regate_removes_only_arm64_tags(fake_docker, hopper, tmp_path):
    tags = ("imagefactory:hopper-cu130-arm64", "imagefactory:hopper-cu130-torch2.14.1-r0-arm64", "imagefactory:hopper-cu130",
            "imagefactory:hopper-cu130-torch2.14.1-r0")  # the last two: names another gate gave (never touched here)
    client = gate_docker(fake_docker, "fail", repo_tags=tags, arch="arm64")
    gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path / "reports", platform="linux/arm64")
    removed = [c.split()[-1] for c in fake_docker.log.read_text().splitlines() if c.startswith("image rm")]
    assert removed == list(tags[:2])


@pytest.mark.parametrize("key", IDENTITY_LABELS)
def test_gate_refuses_an_image_labelled_for_another_target(fake_docker, hopper, matrix, tmp_path, key):
    """`gate hopper-cu130 --image <an ampere-cu130 image>` used to pass and tag it as hopper."""
    ampere = resolve_target(matrix, "ampere-cu130")
    labels = {**HOPPER_LABELS, key: ampere.labels[key] if ampere.labels[key] != HOPPER_LABELS[key] else "other"}
    client = gate_docker(fake_docker, "pass", labels=labels)
    with pytest.raises(UsageError, match=f"not an image of hopper-cu130: {key}=") as info:
        gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert info.value.exit_code == 2
    calls = fake_docker.log.read_text().splitlines()
    assert not [c for c in calls if c.startswith(("run", "tag", "build"))]
    assert not (tmp_path / "hopper-cu130").exists()


@pytest.mark.parametrize("image", ["--help", "-q", "a b", "x\ny", "", "UPPER:tag", "sha256:"])
def test_gate_image_must_be_an_image_reference(fake_docker, hopper, tmp_path, image):
    client = gate_docker(fake_docker, "pass")
    with pytest.raises(UsageError, match="--image"):
        gate_image(client, hopper, image, release="r1", reports_dir=tmp_path, gpus=False)
    assert not fake_docker.log.exists()


def test_regating_a_seal_gates_its_candidate(fake_docker, hopper, tmp_path):
    """`gate --image imagefactory:hopper-cu130` names the seal: the candidate it seals is gated again."""
    layers = {"Layers": ["sha256:" + "1" * 64]}
    seal = json.dumps([{"Id": SEALED, "Config": {"Labels": {**HOPPER_LABELS, GATE_IMAGE_LABEL: IMAGE}}, "RootFS": layers}])
    candidate = json.dumps([{"Id": IMAGE, "Config": {"Labels": HOPPER_LABELS}, "RootFS": layers}])
    client = DockerClient(str(fake_docker(
        f"*probe\\ smoke*|*probe\\ fresh-kernel*|*probe\\ workload*|*probe\\ --json*) echo '{probe_report('pass')}' ;;\n"
        f"image\\ inspect\\ --\\ {IMAGE}) echo '{candidate}' ;;\n"
        f"image\\ inspect\\ *) echo '{seal}' ;;\n"
        f'build\\ -q*) echo {"sha256:" + "ef" * 32} > "$6" ;;\n'
        "tag\\ *) exit 0 ;;")), "classic", "20.10.24")
    result = gate_image(client, hopper, "imagefactory:hopper-cu130", release="r1", reports_dir=tmp_path, gpus=False)
    assert result.passed and result.image_id == IMAGE
    assert all(IMAGE in c for c in fake_docker.log.read_text().splitlines() if c.startswith("run"))


def test_failed_regate_removes_the_tags_on_earlier_seals(fake_docker, hopper, tmp_path):
    """An earlier pass put the tags on a seal of this candidate: a failed re-gate removes those too."""
    on_seal = ("imagefactory:hopper-cu130", "imagefactory:hopper-cu130-torch2.14.1-r0", "elsewhere:hopper-cu130")
    candidate = inspect_answer(HOPPER_LABELS)
    client = DockerClient(str(fake_docker(
        f"*probe\\ --json*) echo '{probe_report('fail')}'; exit 1 ;;\n"
        f"image\\ inspect\\ *) echo '{candidate}' ;;\n"
        f"image\\ ls\\ *label=io.imagefactory.gate.image={IMAGE}*) printf '%s\\n' {' '.join(on_seal)} ;;\n"
        "image\\ rm\\ *) exit 0 ;;")), "classic", "20.10.24")
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert not result.passed
    removed = [c for c in fake_docker.log.read_text().splitlines() if c.startswith("image rm")]
    assert removed == [f"image rm --no-prune {ref}" for ref in on_seal[:2]]


def test_gate_failure_tags_nothing_keeps_the_report_and_names_the_check(fake_docker, hopper, tmp_path):
    client = gate_docker(fake_docker, "fail")
    reports = tmp_path / "reports"
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=reports, gpus=True)
    assert not result.passed and result.mode == "gpu"
    calls = fake_docker.log.read_text().splitlines()
    assert not [c for c in calls if c.startswith("tag")]
    assert len([c for c in calls if c.startswith("run")]) == 1  # smoke is not run after a failed probe
    assert "--gpus all" in next(c for c in calls if c.startswith("run"))
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
    inspect = inspect_answer(HOPPER_LABELS, ("imagefactory:hopper-cu130",))
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
    client = DockerClient(str(fake_docker(f"run\\ *) exec sleep 30 ;;\nrm\\ *) exit 0 ;;\nimage\\ inspect\\ *) echo '{inspect_answer(HOPPER_LABELS)}' ;;")),
                          "classic", "20.10.24")
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert not result.passed and "no answer within 0.5 s" in result.failing[0]
    calls = fake_docker.log.read_text().splitlines()
    name = next(c for c in calls if c.startswith("run")).split("--name ", 1)[1].split()[0]
    assert name.startswith("imagefactory-") and f"rm --force {name}" in calls


def test_an_emulated_gate_step_gets_the_emulated_limit(fake_docker, hopper, tmp_path, monkeypatch):
    """Under QEMU a step runs ~25x slower: the arm64 gate's limit is EMULATED_STEP_TIMEOUT_S, not the native one."""
    import imagefactory.build.gate as gate

    monkeypatch.setattr(gate, "STEP_TIMEOUT_S", 0.2)
    monkeypatch.setattr(gate, "EMULATED_STEP_TIMEOUT_S", 0.7)
    answer = inspect_answer(HOPPER_LABELS, arch="arm64")
    client = DockerClient(str(fake_docker(f"run\\ *) exec sleep 30 ;;\nrm\\ *) exit 0 ;;\nimage\\ inspect\\ *) echo '{answer}' ;;")),
                          "classic", "20.10.24")
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, platform="linux/arm64")
    assert not result.passed and "no answer within 0.7 s" in result.failing[0]


def test_require_gpu_reaches_the_probe(fake_docker, hopper, tmp_path):
    client = gate_docker(fake_docker, "pass")
    gate_image(client, hopper, IMAGE, release="r1", require_gpu=True, reports_dir=tmp_path, gpus=False)
    assert "probe --json --expect target=hopper-cu130 --require-gpu" in fake_docker.log.read_text()


def test_gate_hands_an_amd_target_rocm_device_nodes_not_nvidia_gpus(fake_docker, matrix, tmp_path):
    amd = resolve_target(matrix, "cdna3-rocm6.2")
    client = gate_docker(fake_docker, "fail", labels=identity(amd))
    result = gate_image(client, amd, IMAGE, release="r1", reports_dir=tmp_path, gpus=True)
    run_call = next(c for c in fake_docker.log.read_text().splitlines() if c.startswith("run"))
    assert result.mode == "gpu"
    assert "--device /dev/kfd --device /dev/dri --group-add video" in run_call
    assert "--gpus" not in run_call


def test_what_the_gate_runs_in_the_image(fake_docker, hopper, tmp_path):
    """The probe, the smoke suite, a kernel no cache holds (hopper-cu130 has a warm cache), then the workload
    (matrix.yaml's workload.prove), each the image's own `python -m probe`, with no network."""
    client = gate_docker(fake_docker, "pass")
    gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    runs = [c for c in fake_docker.log.read_text().splitlines() if c.startswith("run")]
    assert [r.split(f"{IMAGE} ", 1)[1] for r in runs] == ["python -m probe --json --expect target=hopper-cu130", "python -m probe smoke --json",
                                                              "python -m probe fresh-kernel --json",
                                                              "python -m probe workload --json"]
    assert all(r.startswith("run --rm --name imagefactory-") and " --network none " in r for r in runs)


def test_reports_say_what_failed_when_the_probe_prints_no_json(fake_docker, hopper, tmp_path):
    client = DockerClient(str(fake_docker(
        "*probe\\ --json*) echo 'Segmentation fault'; echo 'core dumped' >&2; exit 139 ;;\n"
        f"image\\ inspect\\ *) echo '{inspect_answer(HOPPER_LABELS)}' ;;")), "classic", "20.10.24")
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert result.failing == ("probe: no JSON report (exit 139): core dumped",)
    out = tmp_path / "hopper-cu130"
    assert "Segmentation fault" in (out / "probe.out").read_text()
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["gate.json", "probe.out"]  # .lock: locks.py
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
    inspect = inspect_answer(HOPPER_LABELS)
    return str(fake_docker(DETECTABLE +
        f"*probe\\ smoke*|*probe\\ fresh-kernel*|*probe\\ workload*) echo '{probe_report('pass')}' ;;\n"
        f"*probe\\ --json*) echo '{probe_report(probe_status)}'; exit {int(probe_status == 'fail')} ;;\n"
        f"image\\ inspect\\ --\\ {IMAGE}) echo '{inspect}' ;;\n"
        "image\\ inspect\\ *) echo '[]'; exit 1 ;;\n"
        f'build\\ -q*) echo {SEALED} > "$6" ;;\n'
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
    assert f"image inspect -- {IMAGE}" in fake_docker.log.read_text()


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


@pytest.mark.parametrize("image", ["-q", "--help"])
def test_cli_gate_image_that_is_an_option_is_a_usage_error(fake_docker, tmp_path, capsys, image):
    assert gate_cli(cli_docker(fake_docker, "pass"), tmp_path, f"--image={image}") == 2
    assert capsys.readouterr().err == f"error: --image {image!r}: not an image ID or reference (sha256:<hex>, name[:tag])\n"
    assert not [c for c in fake_docker.log.read_text().splitlines() if c.startswith(("image", "run", "tag"))]


def test_cli_gate_image_option_is_never_an_option_to_docker(fake_docker, tmp_path):
    docker = fake_docker(DETECTABLE + "*) echo '[]' ;;")
    done = subprocess.run([sys.executable, "-m", "imagefactory", "gate", "hopper-cu130", "--image=--help", "--docker", str(docker)],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
    calls = [call.split() for call in fake_docker.log.read_text().splitlines()] if fake_docker.log.exists() else []
    # "--help" reaches docker only after "--" (an operand), never as an option
    assert all(call.index("--help") > call.index("--") for call in calls if "--help" in call and call[:1] != ["build"])


def test_gate_fails_without_tags_when_a_fresh_kernel_cannot_compile(fake_docker, hopper, tmp_path):
    """A runtime that cannot compile a kernel its cache lacks (triton < 3.7 with no C compiler) is not tagged."""
    failing = json.dumps({"checks": [{"name": "triton.fresh_kernel", "status": "fail",
                                      "reason": "RuntimeError: Failed to find C compiler"}]})
    client = DockerClient(str(fake_docker(
        f"*probe\\ smoke*|*probe\\ --json*) echo '{probe_report('pass')}' ;;\n"
        f"*probe\\ fresh-kernel*) echo '{failing}'; exit 1 ;;\n"
        f"image\\ inspect\\ *) echo '{inspect_answer(HOPPER_LABELS)}' ;;")), "classic", "20.10.24")
    reports = tmp_path / "reports"
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=reports, gpus=False)
    assert not result.passed
    assert result.failing == ("fresh-kernel: triton.fresh_kernel: RuntimeError: Failed to find C compiler",)
    calls = fake_docker.log.read_text().splitlines()
    assert not [c for c in calls if c.startswith(("tag", "build"))], "no seal, no tag"
    gate = json.loads((reports / "hopper-cu130" / "gate.json").read_text())
    assert [s["name"] for s in gate["steps"]] == ["probe", "smoke", "fresh-kernel"]
    assert (reports / "hopper-cu130" / "fresh-kernel.json").exists()
