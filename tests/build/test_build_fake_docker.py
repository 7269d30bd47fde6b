"""Client detection, CLI errors and the gate's tag-only-on-pass rule, against fake docker clients."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imagefactory.build.docker import DockerClient, DockerSetupError, detect
from imagefactory.build.gate import gate_image, require_pass
from imagefactory.errors import GateFailedError
from imagefactory.plan.expand import resolve_target

HELP_WITH_SECRET = 'build\\ --help) [ "$DOCKER_BUILDKIT" = 1 ] && echo "  --secret stringArray" && exit 0; exit 1 ;;'
SERVER_20 = 'version\\ *) echo 20.10.24+dfsg1 ;;'


def test_buildx_is_preferred(fake_docker):
    client = detect(str(fake_docker('buildx\\ version) echo "buildx v0.12" ;;\n' + SERVER_20)))
    assert client.mode == "buildx"
    assert client.build_argv()[1:3] == ["buildx", "build"]


def test_classic_client_with_buildkit(fake_docker):
    client = detect(str(fake_docker('buildx\\ *) exit 1 ;;\n' + HELP_WITH_SECRET + "\n" + SERVER_20)))
    assert client.mode == "classic" and client.build_env == {"DOCKER_BUILDKIT": "1"}


def test_client_refusing_buildkit_says_what_to_install(fake_docker):
    refuses = fake_docker('buildx\\ *) exit 1 ;;\nbuild\\ --help) echo "ERROR: BuildKit is enabled but the buildx component is missing" >&2; exit 1 ;;')
    with pytest.raises(DockerSetupError, match="no BuildKit-capable docker client.*docker.io") as info:
        detect(str(refuses))
    assert info.value.exit_code == 2


def test_the_first_capable_client_on_path_wins(fake_docker, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    fake_docker('buildx\\ *) exit 1 ;;\nbuild\\ --help) exit 1 ;;', name="bad/docker")
    good = fake_docker('buildx\\ *) exit 1 ;;\n' + HELP_WITH_SECRET + "\n" + SERVER_20)
    monkeypatch.setenv("PATH", f"{bad}:{good.parent}")
    assert detect().executable == str(good)


def test_no_daemon(fake_docker):
    down = fake_docker('buildx\\ *) exit 1 ;;\n' + HELP_WITH_SECRET + '\nversion\\ *) echo "Cannot connect to the Docker daemon" >&2; exit 1 ;;')
    with pytest.raises(DockerSetupError, match="no Docker daemon answers.*Cannot connect"):
        detect(str(down))


def test_daemon_too_old(fake_docker):
    old = fake_docker('buildx\\ *) exit 1 ;;\n' + HELP_WITH_SECRET + '\nversion\\ *) echo 18.06.3-ce ;;')
    with pytest.raises(DockerSetupError, match="too old"):
        detect(str(old))


def test_cli_build_without_usable_docker_is_one_line_exit_2(fake_docker):
    refuses = fake_docker('*) exit 1 ;;')
    done = subprocess.run([sys.executable, "-m", "imagefactory", "build", "hopper-cu130", "--docker", str(refuses)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "BuildKit" in errors[0]
    assert "Traceback" not in done.stderr


def test_cli_unknown_target_fails_before_docker(fake_docker):
    done = subprocess.run([sys.executable, "-m", "imagefactory", "build", "hoper-cu130", "--docker", "/nonexistent"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "hopper-cu130" in done.stderr and "Traceback" not in done.stderr


def test_cli_bad_release_fails_before_docker(fake_docker):
    """A release that cannot be a tag is refused before the build, not when the gate tags the image."""
    docker = fake_docker("*) exit 0 ;;")
    done = subprocess.run([sys.executable, "-m", "imagefactory", "build", "hopper-cu130", "--release", "bad/one", "--docker", str(docker)],
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: release 'bad/one': use letters, digits, '.' or '_' (e.g. 20261127 or 1.2.0)"]
    assert not fake_docker.log.exists()


# ---- the gate -------------------------------------------------------------------------------------

IMAGE = "sha256:" + "ab" * 32


def probe_report(status: str) -> str:
    return json.dumps({"checks": [{"name": "expect.torch", "status": status, "reason": "torch 2.14.1 vs declared"}]})


def gate_docker(fake_docker, probe_status: str, smoke_exit: int = 0, repo_tags: tuple[str, ...] = ()):
    probe_exit = 0 if probe_status != "fail" else 1
    inspect = json.dumps([{"Id": IMAGE, "RepoTags": list(repo_tags)}])
    return DockerClient(str(fake_docker(
        f"*probe\\ smoke*) echo '{probe_report('pass')}'; exit {smoke_exit} ;;\n"
        f"*probe\\ fresh-kernel*|*probe\\ workload*) echo '{probe_report('pass')}' ;;\n"
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
    import imagefactory.build.gate as gate  # noqa: PLC0415

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


def test_bootstrap_without_mmdebstrap_says_what_to_install(fake_docker, monkeypatch):
    from imagefactory.build.bootstrap import BootstrapError, bootstrap  # noqa: PLC0415

    client = DockerClient(str(fake_docker("image\\ inspect\\ *) echo '[]'; exit 1 ;;")), "classic", "20.10.24")
    monkeypatch.setenv("PATH", str(fake_docker.log.parent))  # a PATH with no mmdebstrap
    with pytest.raises(BootstrapError, match="apt-get install mmdebstrap") as info:
        bootstrap(client)
    assert info.value.exit_code == 2
    assert "imagefactory/base:bookworm" in info.value.message


def test_bootstrap_skips_bases_that_exist(fake_docker):
    from imagefactory.build.bootstrap import bootstrap  # noqa: PLC0415

    client = DockerClient(str(fake_docker("image\\ inspect\\ *) echo '[{\"Id\": \"sha256:1\"}]' ;;")), "classic", "20.10.24")
    assert bootstrap(client) == []


def test_gate_hands_an_amd_target_rocm_device_nodes_not_nvidia_gpus(fake_docker, matrix, tmp_path):
    amd = resolve_target(matrix, "cdna3-rocm7.1")
    client = gate_docker(fake_docker, "fail")
    result = gate_image(client, amd, IMAGE, release="r1", reports_dir=tmp_path, gpus=True)
    run_call = next(c for c in fake_docker.log.read_text().splitlines() if c.startswith("run"))
    assert result.mode == "gpu"
    assert "--device /dev/kfd --device /dev/dri --group-add video" in run_call
    assert "--gpus" not in run_call


def test_gate_fails_without_tags_when_a_fresh_kernel_cannot_compile(fake_docker, hopper, tmp_path):
    failing = json.dumps({"checks": [{"name": "triton.fresh_kernel", "status": "fail",
                                      "reason": "RuntimeError: Failed to find C compiler"}]})
    client = DockerClient(str(fake_docker(
        f"*probe\\ smoke*) echo '{probe_report('pass')}' ;;\n"
        f"*probe\\ fresh-kernel*) echo '{failing}'; exit 1 ;;\n"
        f"*probe\\ --json*) echo '{probe_report('pass')}' ;;\n"
        "image\\ inspect\\ *) echo '[{\"Id\": \"x\", \"RepoTags\": []}]' ;;")), "classic", "20.10.24")
    reports = tmp_path / "reports"
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=reports, gpus=False)
    assert not result.passed
    assert result.failing == ("fresh-kernel: triton.fresh_kernel: RuntimeError: Failed to find C compiler",)
    assert not [c for c in fake_docker.log.read_text().splitlines() if c.startswith("tag")]
    gate = json.loads((reports / "hopper-cu130" / "gate.json").read_text())
    assert [s["name"] for s in gate["steps"]] == ["probe", "smoke", "fresh-kernel"]
    assert (reports / "hopper-cu130" / "fresh-kernel.json").exists()
