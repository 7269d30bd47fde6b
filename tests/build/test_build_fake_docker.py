"""Client detection, CLI errors and the gate's tag-only-on-pass rule, against fake docker clients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.build.docker import DockerClient, DockerSetupError, detect
from imagefactory.build.gate import gate_image, require_pass
from imagefactory.errors import GateFailedError, UsageError
from imagefactory.plan.expand import resolve_target
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.render import REPO_ROOT
from imagefactory.publish.push import IDENTITY_LABELS

HOPPER_LABELS = {key: resolve_target(load_matrix(REPO_ROOT / "matrix.yaml"), "hopper-cu130").labels[key] for key in IDENTITY_LABELS}

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
SEALED = "sha256:" + "cd" * 32


def probe_report(status: str) -> str:
    return json.dumps({"checks": [{"name": "expect.torch", "status": status, "reason": "torch 2.14.1 vs declared"}]})


def identity(target) -> dict[str, str]:
    return {key: target.labels[key] for key in IDENTITY_LABELS}


def inspect_answer(target_labels: dict[str, str], repo_tags: tuple[str, ...] = ()) -> str:
    return json.dumps([{"Id": IMAGE, "RepoTags": list(repo_tags), "Config": {"Labels": target_labels}}])


def gate_docker(fake_docker, probe_status: str, smoke_exit: int = 0, repo_tags: tuple[str, ...] = (), labels: dict | None = None):
    probe_exit = 0 if probe_status != "fail" else 1
    inspect = inspect_answer(HOPPER_LABELS if labels is None else labels, repo_tags)
    return DockerClient(str(fake_docker(
        f"*probe\\ smoke*) echo '{probe_report('pass')}'; exit {smoke_exit} ;;\n"
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


def test_cli_gate_image_option_is_never_an_option_to_docker(fake_docker, tmp_path):
    docker = fake_docker("buildx\\ *) exit 1 ;;\n" + HELP_WITH_SECRET + "\n" + SERVER_20 + "\n*) echo '[]' ;;")
    done = subprocess.run([sys.executable, "-m", "imagefactory", "gate", "hopper-cu130", "--image=--help", "--docker", str(docker)],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
    calls = [call.split() for call in fake_docker.log.read_text().splitlines()]
    # "--help" reaches docker only after "--" (an operand), never as an option
    assert all(call.index("--help") > call.index("--") for call in calls if "--help" in call and call[:1] != ["build"])


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
    import imagefactory.build.gate as gate  # noqa: PLC0415

    monkeypatch.setattr(gate, "STEP_TIMEOUT_S", 0.5)
    client = DockerClient(str(fake_docker(f"run\\ *) exec sleep 30 ;;\nrm\\ *) exit 0 ;;\nimage\\ inspect\\ *) echo '{inspect_answer(HOPPER_LABELS)}' ;;")), "classic", "20.10.24")
    result = gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
    assert not result.passed and "no answer within 0.5 s" in result.failing[0]
    calls = fake_docker.log.read_text().splitlines()
    name = next(c for c in calls if c.startswith("run")).split("--name ", 1)[1].split()[0]
    assert name.startswith("imagefactory-") and f"rm --force {name}" in calls


def test_require_gpu_reaches_the_probe(fake_docker, hopper, tmp_path):
    client = gate_docker(fake_docker, "pass")
    gate_image(client, hopper, IMAGE, release="r1", require_gpu=True, reports_dir=tmp_path, gpus=False)
    assert "probe --json --expect target=hopper-cu130 --require-gpu" in fake_docker.log.read_text()


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
    amd = resolve_target(matrix, "cdna3-rocm6.2")
    client = gate_docker(fake_docker, "fail", labels=identity(amd))
    result = gate_image(client, amd, IMAGE, release="r1", reports_dir=tmp_path, gpus=True)
    run_call = next(c for c in fake_docker.log.read_text().splitlines() if c.startswith("run"))
    assert result.mode == "gpu"
    assert "--device /dev/kfd --device /dev/dri --group-add video" in run_call
    assert "--gpus" not in run_call


def test_regating_a_seal_gates_its_candidate(fake_docker, hopper, tmp_path):
    """`gate --image imagefactory:hopper-cu130` names the seal: the candidate it seals is gated again."""
    from imagefactory.publish.push import GATE_IMAGE_LABEL  # noqa: PLC0415

    layers = {"Layers": ["sha256:" + "1" * 64]}
    seal = json.dumps([{"Id": SEALED, "Config": {"Labels": {**HOPPER_LABELS, GATE_IMAGE_LABEL: IMAGE}}, "RootFS": layers}])
    candidate = json.dumps([{"Id": IMAGE, "Config": {"Labels": HOPPER_LABELS}, "RootFS": layers}])
    client = DockerClient(str(fake_docker(
        f"*probe\\ smoke*|*probe\\ --json*) echo '{probe_report('pass')}' ;;\n"
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
