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


def test_arm64_bases_are_named_by_platform_and_bootstrapped_for_arm64():
    from pathlib import Path

    from imagefactory.build.bootstrap import BASES, mmdebstrap_argv
    from imagefactory.errors import UsageError
    from imagefactory.plan.platforms import base_ref

    assert base_ref("imagefactory/base:bookworm-build") == "imagefactory/base:bookworm-build"
    assert base_ref("imagefactory/base:bookworm-build", "linux/arm64") == "imagefactory/base:bookworm-build-arm64"
    argv = mmdebstrap_argv(BASES[1], Path("/tmp/rootfs.tar"), arch="arm64")
    assert "--architectures=arm64" in argv and argv[-2:] == ["bookworm", "/tmp/rootfs.tar"]
    assert not any(a.startswith("--arch") for a in mmdebstrap_argv(BASES[1], Path("/tmp/rootfs.tar")))
    with pytest.raises(UsageError, match="linux/s390x"):
        base_ref("imagefactory/base:bookworm", "linux/s390x")


def test_arm64_bootstrap_without_emulation_says_what_is_missing(fake_docker, monkeypatch, tmp_path):
    from imagefactory.build import bootstrap as bootstrap_module
    from imagefactory.errors import BootstrapError

    client = DockerClient(str(fake_docker("image\\ inspect\\ *) echo '[]'; exit 1 ;;")), "classic", "20.10.24")
    fake_docker("exit 0", name="mmdebstrap")  # present, and never run: the emulation check comes first
    monkeypatch.setenv("PATH", str(fake_docker.log.parent))
    monkeypatch.setattr(bootstrap_module, "BINFMT_DIR", tmp_path)  # no qemu-aarch64 registered
    with pytest.raises(BootstrapError, match="qemu-aarch64.*binfmt_misc") as info:
        bootstrap_module.bootstrap(client, platform="linux/arm64")
    assert info.value.exit_code == 2 and "imagefactory/base:bookworm-arm64" in info.value.message
    (tmp_path / "qemu-aarch64").write_text("disabled\ninterpreter /usr/bin/qemu-aarch64-static\n")
    with pytest.raises(BootstrapError, match="is disabled"):
        bootstrap_module.bootstrap(client, platform="linux/arm64")
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/bin/qemu-aarch64-static\n")
    with pytest.raises(BootstrapError, match="arch-test"):
        bootstrap_module.bootstrap(client, platform="linux/arm64")


def test_bootstrap_refuses_an_unknown_platform_in_one_line(capsys):
    assert cli_main(["bootstrap", "--platform", "linux/s390x"]) == 2
    err = capsys.readouterr().err
    assert "linux/s390x" in err and "Traceback" not in err


@pytest.mark.docker
def test_a_rootfs_becomes_an_image_labelled_with_its_platform(tmp_path):
    """What bootstrap does for arm64 bases, with a real Docker: the image says linux/arm64 (docker import would
    say the host's amd64 and BuildKit would then try to pull it), and holds the tarball's files and modes."""
    import json
    import subprocess
    import tarfile

    from imagefactory.build.docker import build_rootfs_image

    try:
        client = detect()
    except DockerSetupError as error:
        pytest.skip(f"no usable Docker: {error.message}")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=test\n")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".")
    ref = f"imagefactory-test/rootfs-{tmp_path.name.lower()}:arm64"
    build_rootfs_image(client, tarball, ref, ("ENV PATH=/usr/bin:/bin",), "linux/arm64")
    try:
        info = json.loads(subprocess.run([client.executable, "image", "inspect", ref], capture_output=True, text=True, check=True).stdout)[0]
        assert (info["Os"], info["Architecture"]) == ("linux", "arm64")
        assert info["Config"]["Env"] == ["PATH=/usr/bin:/bin"]
        assert not (tmp_path / "Dockerfile.rootfs").exists()
        saved = tmp_path / "image.tar"
        subprocess.run([client.executable, "save", "-o", str(saved), ref], check=True)
        with tarfile.open(saved) as outer:
            (layer_name,) = [m.name for m in outer.getmembers() if m.name.endswith("layer.tar")]
            with tarfile.open(fileobj=outer.extractfile(layer_name)) as layer:
                assert layer.extractfile("etc/os-release").read() == b"ID=test\n"
                assert layer.getmember("tmp").mode & 0o7777 == 0o1777
    finally:
        subprocess.run([client.executable, "rmi", "-f", ref], capture_output=True, check=False)


def test_the_trixie_compiler_base_is_bootstrapped_only_for_targets_that_compile_on_it(fake_docker, matrix, monkeypatch):
    """A plain bootstrap makes the slim flavor's two bases; a cu124 slim build also the trixie one its
    bitsandbytes stage starts FROM (Debian's nvcc 12.4), and mmdebstrap is asked for trixie."""
    from pathlib import Path

    from imagefactory.build import bootstrap as bootstrap_module
    from imagefactory.build import images
    from imagefactory.plan.expand import resolve_target

    made: list[tuple[str, ...]] = []
    monkeypatch.setattr(bootstrap_module, "bootstrap", lambda client, refs, platform: made.append(refs))
    client = DockerClient(str(fake_docker("image\\ inspect\\ *) echo '[]'; exit 1 ;;")), "classic", "20.10.24")
    images.ensure_bases(client, resolve_target(matrix, "hopper-cu124"))
    images.ensure_bases(client, resolve_target(matrix, "hopper-cu130"))
    images.ensure_bases(client, resolve_target(matrix, "hopper-cu130"), "linux/arm64")  # a cross build never compiles
    assert made == [
        ("imagefactory/base:bookworm-build", "imagefactory/base:bookworm", "imagefactory/base:trixie-build"),
        ("imagefactory/base:bookworm-build", "imagefactory/base:bookworm"),
        ("imagefactory/base:bookworm-build",),
        ("imagefactory/base:bookworm-build", "imagefactory/base:bookworm"),
    ]
    defaults = [s.ref for s in bootstrap_module.BASES if s.default]
    assert defaults == ["imagefactory/base:bookworm", "imagefactory/base:bookworm-build"]
    trixie = bootstrap_module.spec_for("imagefactory/base:trixie-build")
    assert trixie is not None and bootstrap_module.mmdebstrap_argv(trixie, Path("/tmp/r.tar"))[-2:] == ["trixie", "/tmp/r.tar"]
