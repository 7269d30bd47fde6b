"""Client detection, CLI errors and bootstrap, against fake docker clients (the gate: test_gate.py)."""

from __future__ import annotations

import pytest

from imagefactory.build.docker import DockerClient, detect
from imagefactory.cli import main as cli_main
from imagefactory.errors import DockerSetupError

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


def test_cli_build_without_usable_docker_is_one_line_exit_2(fake_docker, capsys):
    refuses = fake_docker('*) exit 1 ;;')
    assert cli_main(["build", "hopper-cu130", "--docker", str(refuses)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "BuildKit" in errors[0]


def test_cli_unknown_target_fails_before_docker(capsys):
    assert cli_main(["build", "hoper-cu130", "--docker", "/nonexistent"]) == 2
    assert "hopper-cu130" in capsys.readouterr().err


@pytest.mark.parametrize(("release", "message"), [
    ("bad/one", "error: release 'bad/one': use letters, digits, '.' or '_' (e.g. 20261127 or 1.2.0)"),
    ("latest", "error: release 'latest': 'latest' is a floating name; immutable tags need a version or date"),
])
def test_cli_bad_release_fails_before_docker(fake_docker, capsys, release, message):
    """A release that cannot be a tag is a usage error before the build, not a failure when the gate tags."""
    docker = fake_docker("*) exit 0 ;;")
    assert cli_main(["build", "hopper-cu130", "--release", release, "--docker", str(docker)]) == 2
    assert capsys.readouterr().err.splitlines() == [message]
    assert not fake_docker.log.exists()


def test_bootstrap_without_mmdebstrap_says_what_to_install(fake_docker, monkeypatch):
    from imagefactory.build.bootstrap import bootstrap
    from imagefactory.errors import BootstrapError

    client = DockerClient(str(fake_docker("image\\ inspect\\ *) echo '[]'; exit 1 ;;")), "classic", "20.10.24")
    monkeypatch.setenv("PATH", str(fake_docker.log.parent))  # a PATH with no mmdebstrap
    with pytest.raises(BootstrapError, match="apt-get install mmdebstrap") as info:
        bootstrap(client)
    assert info.value.exit_code == 2
    assert "imagefactory/base:bookworm" in info.value.message


def test_bootstrap_skips_bases_that_exist(fake_docker):
    from imagefactory.build.bootstrap import bootstrap

    client = DockerClient(str(fake_docker("image\\ inspect\\ *) echo '[{\"Id\": \"sha256:1\"}]' ;;")), "classic", "20.10.24")
    assert bootstrap(client) == []
