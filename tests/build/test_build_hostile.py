"""build/gate on hostile input and shared scratch (issue 10, classes 8, 13 and 16, and several runs from one
checkout): bad options are one line and exit 2, the staging area is never followed through a link, build.json
never says "ok" for a build that did not finish, and concurrent runs are serialized or refused."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from imagefactory.build import images
from imagefactory.build.docker import DockerClient, build, detect, image_inspect, secret_spec
from imagefactory.build.gate import gate_image
from imagefactory.build.images import BuildOptions, build_one, check_bnb_source, check_ca_bundle, stage_bnb_tree
from imagefactory.build.locks import BusyError, hold, staging_lock
from imagefactory.errors import UsageError
from tests.build.test_build_fake_docker import HELP_WITH_SECRET, SERVER_20
from tests.build.test_gate import IMAGE, gate_docker

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def capable_docker(fake_docker) -> Path:
    """A fake client that passes detection and answers every other call with nothing."""
    return fake_docker("buildx\\ *) exit 1 ;;\n" + HELP_WITH_SECRET + "\n" + SERVER_20 + "\n*) echo '[]' ;;")


def cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagefactory", *argv], capture_output=True, text=True, check=False, cwd=cwd,
                          env={**os.environ, "IMAGEFACTORY_MATRIX": str(Path(__file__).resolve().parents[2] / "matrix.yaml")})


# ---- --ca-bundle / --bnb-source -----------------------------------------------------------------------


def test_ca_bundle_checks(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        check_ca_bundle(tmp_path)
    with pytest.raises(UsageError, match="no such file"):
        check_ca_bundle(tmp_path / "missing.pem")
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    with pytest.raises(UsageError, match="not a PEM certificate bundle"):
        check_ca_bundle(tmp_path / "empty.pem")
    (tmp_path / "ok.pem").write_text(PEM)
    assert check_ca_bundle(tmp_path / "ok.pem") == tmp_path / "ok.pem"


def test_bnb_source_checks(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such directory"):
        check_bnb_source(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        check_bnb_source(tmp_path / "file")
    with pytest.raises(UsageError, match="not a bitsandbytes source tree"):
        check_bnb_source(tmp_path)


@pytest.mark.parametrize("option", [["--ca-bundle", "DIR"], ["--ca-bundle", "DIR/missing.pem"], ["--bnb-source", "DIR/missing"],
                                    ["--bnb-source", "DIR"]])
def test_cli_bad_build_options_exit_2_one_line(fake_docker, tmp_path: Path, option: list[str]) -> None:
    docker = capable_docker(fake_docker)
    option = [arg.replace("DIR", str(tmp_path)) for arg in option]
    done = cli("build", "hopper-cu130", "--docker", str(docker), *option, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and option[0] in errors[0] and "Traceback" not in done.stderr
    assert not any(call.startswith("build ") and "--help" not in call for call in fake_docker.log.read_text().splitlines())


def test_secret_path_with_a_comma_or_quote_stays_whole() -> None:
    assert secret_spec("ca", Path("/etc/ssl/ca.pem")) == "id=ca,src=/etc/ssl/ca.pem"
    assert secret_spec("ca", Path('/tmp/a,b"c.pem')) == 'id=ca,"src=/tmp/a,b""c.pem"'
    with pytest.raises(Exception, match="line break"):
        secret_spec("ca", Path("/tmp/a\nb.pem"))


@pytest.mark.docker
def test_secret_path_with_a_comma_reaches_buildkit(tmp_path: Path) -> None:
    """Real Docker: BuildKit's --secret parses CSV; the quoted field mounts the file whose path has a comma."""
    try:
        client = detect(os.environ.get("IMAGEFACTORY_DOCKER"))
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"no Docker: {error}")
    if image_inspect(client, "imagefactory/base:bookworm") is None:
        pytest.skip("imagefactory/base:bookworm not bootstrapped")
    secret = tmp_path / 'ca,with "comma".pem'
    secret.write_text("secret-with-comma\n")
    (tmp_path / "ctx").mkdir()
    nonce = uuid.uuid4().hex  # never a cached step: the RUN must read the secret in this build
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM imagefactory/base:bookworm\nRUN --mount=type=secret,id=ca cat /run/secrets/ca # {nonce}\n")
    iid = tmp_path / "iid"
    done = build(client, context=tmp_path / "ctx", dockerfile=tmp_path / "ctx" / "Dockerfile", iidfile=iid, build_args={},
                 secrets={"ca": secret}, log=tmp_path / "log", show=False, network="none")
    try:
        assert done.ok and "secret-with-comma" in (tmp_path / "log").read_text()
    finally:
        if iid.exists():
            subprocess.run([client.executable, "rmi", iid.read_text().strip()], capture_output=True, check=False)


# ---- the staging area and build.json ---------------------------------------------------------------------


def test_a_symlinked_bnb_stage_is_unlinked_never_emptied(tmp_path: Path) -> None:
    root, outside = tmp_path / "repo", tmp_path / "outside"
    (root / ".build").mkdir(parents=True)
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    (root / ".build" / "bnb-src").symlink_to(outside)
    stage_bnb_tree(root, None)
    assert (outside / "precious.txt").read_text() == "keep" and not (root / ".build" / "bnb-src").exists()


def test_a_symlinked_build_dir_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "repo", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / ".build").symlink_to(outside)
    with pytest.raises(Exception, match="symbolic link"):
        stage_bnb_tree(root, None)
    assert list(outside.iterdir()) == []


def test_build_json_never_keeps_a_stale_ok(fake_docker, hopper, tmp_path: Path, monkeypatch) -> None:
    """A build that dies mid-way (here: the staging area is a link) must not leave last run's "ok"."""
    reports = tmp_path / "reports"
    (reports / hopper.id).mkdir(parents=True)
    (reports / hopper.id / "build.json").write_text(json.dumps({"target": hopper.id, "ok": True, "stage": "done"}))
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / ".build").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setattr(images, "ensure_bases", lambda client, target, platform: None)
    client = DockerClient(str(capable_docker(fake_docker)), "classic", "20.10.24")
    result = build_one(client, hopper, BuildOptions(release="r1", root=root, reports_dir=reports, show_output=False))
    record = json.loads((reports / hopper.id / "build.json").read_text())
    assert not result.ok and record["ok"] is False and "symbolic link" in record["reason"]
    assert list((tmp_path / "elsewhere").iterdir()) == []

    def crash(client, target, platform):
        raise RuntimeError("boom")

    monkeypatch.setattr(images, "ensure_bases", crash)
    (reports / hopper.id / "build.json").write_text(json.dumps({"target": hopper.id, "ok": True}))
    with pytest.raises(RuntimeError):
        build_one(client, hopper, BuildOptions(release="r1", root=root, reports_dir=reports, show_output=False))
    assert json.loads((reports / hopper.id / "build.json").read_text())["ok"] is False


# ---- several runs from one checkout ------------------------------------------------------------------------


def test_a_second_gate_of_the_same_target_is_refused(fake_docker, hopper, tmp_path: Path) -> None:
    lock = tmp_path / hopper.id / ".lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as other:  # what another process holding the lock looks like (flock is per open file)
        fcntl.flock(other, fcntl.LOCK_EX)
        other.write("4242")
        other.flush()
        client = gate_docker(fake_docker, "pass")
        with pytest.raises(BusyError, match="in use by pid 4242") as info:
            gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)
        assert info.value.exit_code == 2
    assert not [c for c in fake_docker.log.read_text().splitlines() if c.startswith(("run", "tag"))]
    gate_image(client, hopper, IMAGE, release="r1", reports_dir=tmp_path, gpus=False)  # free again


def test_the_staging_lock_waits_for_the_other_build(tmp_path: Path) -> None:
    """Two builds of one checkout take turns for the BuildKit build (the second waits, then goes on)."""
    script = ("import sys, time; sys.path.insert(0, sys.argv[2]);"
              "from pathlib import Path; from imagefactory.build.locks import staging_lock\n"
              "with staging_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(1.5)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(Path(__file__).resolve().parents[2])],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        import time

        started = time.monotonic()
        with staging_lock(tmp_path):
            waited = time.monotonic() - started
        assert waited > 0.5
    finally:
        holder.wait(timeout=30)


def test_locks_are_never_taken_through_a_link(tmp_path: Path) -> None:
    (tmp_path / "target.txt").write_text("x")
    (tmp_path / ".lock").symlink_to(tmp_path / "target.txt")
    with pytest.raises(UsageError, match="symbolic link"), hold(tmp_path / ".lock", wait=False, what="x"):
        pass
    assert (tmp_path / "target.txt").read_text() == "x"
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize("text", ["[1, 2]", '{"image_id": 5}', "[" * 50_000, '{"image_id": "--help"}'])
def test_a_hostile_build_json_never_reaches_docker_as_an_option(fake_docker, tmp_path: Path, text: str) -> None:
    """`gate TARGET` without --image reads reports/<t>/build.json: a bad one is ignored or refused, one line."""
    (tmp_path / "reports" / "hopper-cu130").mkdir(parents=True)
    (tmp_path / "reports" / "hopper-cu130" / "build.json").write_text(text)
    done = cli("gate", "hopper-cu130", "--docker", str(capable_docker(fake_docker)), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
    calls = [call.split() for call in fake_docker.log.read_text().splitlines()]
    assert all(call.index("--help") > call.index("--") for call in calls if "--help" in call and call[:1] != ["build"])
