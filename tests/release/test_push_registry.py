"""Publishing against a real registry (Debian's docker-registry on 127.0.0.1) with real Docker and tiny
images: tags, refusal to overwrite, floating moves, a push failing midway, pull-back by digest."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagefactory.build.docker import build_rootfs_image, dockerfile_label, label_child
from imagefactory.errors import PushFailedError
from imagefactory.publish.push import (
    GATE_IMAGE_LABEL,
    GATE_LABEL,
    GATE_REPORT_LABEL,
    IDENTITY_LABELS,
    SBOM_LABEL,
    GateReport,
    LocalDocker,
    publish,
    publish_index,
    seal_labels,
)
from imagefactory.publish.registry import Registry, RepoRef
from imagefactory.tags import release_tags

pytestmark = [pytest.mark.docker, pytest.mark.registry]

TARGET = "hopper-cu130"


def hopper_target():
    from imagefactory.plan.expand import resolve_target
    from imagefactory.plan.matrix import load_matrix

    return resolve_target(load_matrix(Path(__file__).resolve().parents[2] / "matrix.yaml"), TARGET)


def docker(*args: str) -> str:
    done = subprocess.run([LocalDocker().client.executable, *args], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def tiny_image(tmp_path: Path, content: str, *, sbom: bool = True, target_id: str = TARGET, platform: str = "linux/amd64") -> str:
    """A one-file image (docker import of a tar; for linux/arm64 BuildKit FROM scratch, as bootstrap makes arm64 bases),
    labelled like a build of `target_id`; returns its ID."""
    root = tmp_path / f"root-{content}"
    if (tmp_path / f"{content}.id").exists():  # one image per content within a test (import stamps a new date)
        return (tmp_path / f"{content}.id").read_text()
    (root / "opt" / "imagefactory").mkdir(parents=True)
    (root / "opt" / "imagefactory" / "sbom.cdx.json").write_text(json.dumps({"bomFormat": "CycloneDX", "content": content}))
    archive = tmp_path / f"{content}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    target = hopper_target()
    labels = {key: target.labels[key] for key in IDENTITY_LABELS} | {"io.imagefactory.target": target_id}
    if sbom:
        labels[SBOM_LABEL] = "/opt/imagefactory/sbom.cdx.json"
    name = f"imagefactory-test/{tmp_path.name.lower()}:{content}"
    if platform != "linux/amd64":
        build_rootfs_image(LocalDocker().client, archive, name, [f"LABEL {dockerfile_label(k, v)}" for k, v in labels.items()], platform)
        image_id = docker("image", "inspect", "--format", "{{.Id}}", name)
    else:
        change = [arg for key, value in labels.items() for arg in ("-c", f"LABEL {key}={value}")]
        image_id = docker("import", *change, str(archive), name)
    (tmp_path / f"{content}.id").write_text(image_id)
    return image_id


def child(tmp_path: Path, image_id: str, labels: dict[str, str]) -> str:
    """A labelled child (imagefactory.build.docker.label_child), named so that the cleanup finds it."""
    made = label_child(LocalDocker().client, image_id, labels)
    docker("tag", made, f"imagefactory-test/{tmp_path.name.lower()}:child-{made[7:19]}")
    return made


def seal(tmp_path: Path, image_id: str, mode: str = "gpu") -> str:
    """What the gate does on a pass: the sealed child of the candidate."""
    return child(tmp_path, image_id, seal_labels(hopper_target(), image_id, mode, {"result": "passed", "checks": 12}))


def gate_report(tmp_path: Path, image_id: str, result: str = "passed") -> GateReport:
    path = tmp_path / f"gate-{image_id[7:19]}.json"
    path.write_text(json.dumps({"target": TARGET, "image_id": image_id, "result": result, "sealed_image": seal(tmp_path, image_id)}))
    return GateReport.read(path)


@pytest.fixture(autouse=True)
def remove_test_images(tmp_path: Path, local_registry) -> Iterator[None]:
    """Leave the Docker store as found: drop every tag this test made (its registry's and its tiny images)."""
    yield
    ours = (f"{local_registry.host}/", f"imagefactory-test/{tmp_path.name.lower()}")
    rows = [line.split() for line in docker("images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}").splitlines()]
    ids = sorted({image_id for image_id, repository in rows if repository.startswith(ours)})
    for _pass in range(3):  # labelled children (seals of children too) first, then the tiny images they were made FROM
        if ids:
            subprocess.run([LocalDocker().client.executable, "rmi", "--force", *ids], capture_output=True, check=False)


@pytest.fixture
def repo(local_registry) -> RepoRef:
    return RepoRef.parse(f"{local_registry.host}/imagefactory")  # a fresh registry per test


def push(tmp_path: Path, repo: RepoRef, image_id: str, release: str, docker_ops=None):
    return publish(release_tags(hopper_target(), release), gate_report(tmp_path, image_id), hopper_target(), repo,
                   docker_ops or LocalDocker(), Registry(repo), say=lambda _m: None)


def test_push_tags_labels_and_pull_back_by_digest(tmp_path: Path, repo: RepoRef) -> None:
    image = tiny_image(tmp_path, "a")
    result = push(tmp_path, repo, image, "20261127")
    registry = Registry(repo)
    for tag in ("hopper-cu130-torch2.14.1-20261127", "hopper-cu130", "hopper-cu130-latest"):
        remote = registry.image(tag)
        assert remote is not None and remote.digest == result.digest, tag
    labels = registry.image("hopper-cu130").labels  # type: ignore[union-attr]
    assert labels[GATE_LABEL] == "passed" and labels[GATE_IMAGE_LABEL] == image
    assert json.loads(labels[GATE_REPORT_LABEL])["checks"] == 12 and labels[SBOM_LABEL].endswith("sbom.cdx.json")

    by_digest = f"{repo}@{result.digest}"
    for tag in ("hopper-cu130-torch2.14.1-20261127", "hopper-cu130", "hopper-cu130-latest"):
        docker("rmi", f"{repo}:{tag}")
    docker("pull", by_digest)
    assert docker("image", "inspect", "--format", "{{index .Config.Labels \"io.imagefactory.gate.image\"}}", by_digest) == image


def test_immutable_tag_is_never_overwritten(tmp_path: Path, repo: RepoRef) -> None:
    first = push(tmp_path, repo, tiny_image(tmp_path, "a"), "20261127")
    with pytest.raises(PushFailedError, match="already exists with different content"):
        push(tmp_path, repo, tiny_image(tmp_path, "b"), "20261127")
    registry = Registry(repo)
    assert {registry.image(t).digest for t in ("hopper-cu130-torch2.14.1-20261127", "hopper-cu130", "hopper-cu130-latest")} == {first.digest}  # type: ignore[union-attr]
    again = push(tmp_path, repo, tiny_image(tmp_path, "a"), "20261127")  # same gated image: fine, nothing re-pushed
    assert again.already_there and again.digest == first.digest


def test_floating_tags_follow_a_new_release_and_old_one_stays(tmp_path: Path, repo: RepoRef) -> None:
    first = push(tmp_path, repo, tiny_image(tmp_path, "a"), "20261127")
    second = push(tmp_path, repo, tiny_image(tmp_path, "b"), "20261128")
    registry = Registry(repo)
    assert second.digest != first.digest
    assert registry.image("hopper-cu130").digest == registry.image("hopper-cu130-latest").digest == second.digest  # type: ignore[union-attr]
    assert registry.image("hopper-cu130-torch2.14.1-20261127").digest == first.digest  # type: ignore[union-attr]
    assert sorted(registry.tags()) == sorted(["hopper-cu130", "hopper-cu130-latest", "hopper-cu130-torch2.14.1-20261127",
                                              "hopper-cu130-torch2.14.1-20261128"])


class KillRegistryOnPush(LocalDocker):
    """Real Docker, but the registry dies just as the immutable tag's push starts."""

    def __init__(self, registry) -> None:
        super().__init__()
        self.registry = registry

    def push(self, ref: str) -> str:
        if "-torch" in ref.rsplit(":", 1)[1]:
            self.registry.stop()
        return super().push(ref)


def test_push_failing_midway_leaves_floating_tags(tmp_path: Path, repo: RepoRef, local_registry) -> None:
    first = push(tmp_path, repo, tiny_image(tmp_path, "a"), "20261127")
    with pytest.raises(PushFailedError) as failure:
        push(tmp_path, repo, tiny_image(tmp_path, "b"), "20261128", docker_ops=KillRegistryOnPush(local_registry))
    assert "\n" not in str(failure.value)
    local_registry.start()  # same storage: what a user sees after the outage
    registry = Registry(repo)
    assert registry.image("hopper-cu130").digest == registry.image("hopper-cu130-latest").digest == first.digest  # type: ignore[union-attr]
    assert registry.image("hopper-cu130-torch2.14.1-20261128") is None


def test_refuses_what_the_gate_did_not_seal(tmp_path: Path, repo: RepoRef) -> None:
    """Trust lies in images: a hand-written report naming an unsealed image, an image sealed for another
    target, a FROM-scratch image with copied labels and an SBOM-less image are all refused, nothing pushed."""
    image = tiny_image(tmp_path, "a")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({"target": TARGET, "result": "passed", "mode": "gpu", "sealed_image": image}))
    with pytest.raises(PushFailedError, match="carries no gate seal"):
        publish(release_tags(hopper_target(), "1"), GateReport.read(forged), hopper_target(), repo, LocalDocker(), Registry(repo))
    forged.write_text(json.dumps({"target": TARGET, "result": "passed", "mode": "gpu", "sealed_image": f"imagefactory-test/{tmp_path.name.lower()}:a"}))
    with pytest.raises(PushFailedError, match="must be a full image ID"):
        GateReport.read(forged)

    ampere = tiny_image(tmp_path, "amp", target_id="ampere-cu130")
    with pytest.raises(PushFailedError, match="is not an image of hopper-cu130: io.imagefactory.target='ampere-cu130'"):
        push(tmp_path, repo, ampere, "1")

    # labels copied onto other content: a seal's labels on a one-file image that is not the candidate
    sealed_labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", seal(tmp_path, image)))
    other = tiny_image(tmp_path, "other")
    copied = child(tmp_path, other, sealed_labels)
    forged.write_text(json.dumps({"target": TARGET, "result": "passed", "sealed_image": copied}))
    with pytest.raises(PushFailedError, match="holds other layers than the gated image"):
        publish(release_tags(hopper_target(), "1"), GateReport.read(forged), hopper_target(), repo, LocalDocker(), Registry(repo))

    with pytest.raises(PushFailedError, match="no io.imagefactory.sbom label"):
        push(tmp_path, repo, tiny_image(tmp_path, "nosbom", sbom=False), "1")
    mislabelled = child(tmp_path, tiny_image(tmp_path, "c"), {SBOM_LABEL: "/opt/imagefactory/missing.cdx.json"})
    with pytest.raises(PushFailedError, match="no CycloneDX JSON at /opt/imagefactory/missing.cdx.json"):
        push(tmp_path, repo, mislabelled, "1")
    assert Registry(repo).tags() == []


def test_cli_push_record_summary_and_probe_select_from_the_registry(tmp_path: Path, repo: RepoRef, capsys) -> None:
    """`python -m imagefactory push` end to end, then `probe select --repo` reads the registry's tags."""
    from imagefactory.cli import main as cli_main
    from probe.select import main as select_main

    image = tiny_image(tmp_path, "a")
    (tmp_path / "reports" / TARGET).mkdir(parents=True)
    (tmp_path / "reports" / TARGET / "gate.json").write_text(
        json.dumps({"target": TARGET, "image_id": image, "result": "passed", "sealed_image": seal(tmp_path, image)}))
    argv = ["push", TARGET, "--registry", str(repo), "--release", "20261127", "--reports-dir", str(tmp_path / "reports")]
    assert cli_main(argv) == 0
    record = json.loads((tmp_path / "reports" / TARGET / "release.json").read_text())
    assert record["immutable"] == f"{repo}:hopper-cu130-torch2.14.1-20261127"
    assert record["digest"] == Registry(repo).image("hopper-cu130").digest  # type: ignore[union-attr]
    assert cli_main(["summary", str(tmp_path / "reports" / TARGET / "release.json")]) == 0
    assert f"`{repo}:hopper-cu130-latest`" in capsys.readouterr().out

    # a second push of other content under the same release: one-line refusal, exit 7
    (tmp_path / "reports" / TARGET / "gate.json").write_text(
        json.dumps({"target": TARGET, "result": "passed", "sealed_image": seal(tmp_path, tiny_image(tmp_path, "b"))}))
    assert cli_main(argv) == 7
    err = capsys.readouterr().err
    assert "error: " in err and "already exists with different content" in err and "Traceback" not in err

    assert select_main(["--repo", str(repo), "--gpu-sm", "9.0", "--driver", "580.65", "--quiet"]) == 0
    assert capsys.readouterr().out == f"{repo}:hopper-cu130-torch2.14.1-20261127\n"
    assert select_main(["--repo", str(repo), "--gpu-sm", "9.0", "--driver", "570.86"]) == 1
    assert "driver 570.86 is too old" in capsys.readouterr().err


def test_probe_select_reads_the_registry_tag_list(tmp_path: Path, repo: RepoRef) -> None:
    from probe.select import registry_tags

    image = tiny_image(tmp_path, "a")
    tags = ["hopper-cu130", "hopper-cu130-latest", "ampere-cu130", "ampere-cu130-latest", "blackwell-cu130"]
    for tag in tags:
        docker("tag", image, f"{repo}:{tag}")
        docker("push", f"{repo}:{tag}")
    assert sorted(registry_tags(str(repo), page=2)) == sorted(tags)  # (docker-registry 2.8 sends one page)


def zstd_push(tmp_path: Path, repo: RepoRef, image_id: str, release: str):
    return publish(release_tags(hopper_target(), release), gate_report(tmp_path, image_id), hopper_target(), repo,
                   LocalDocker(), Registry(repo), say=lambda _m: None, compression="zstd")


def registry_json(repo: RepoRef, path: str) -> dict:
    import urllib.request

    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    request = urllib.request.Request(f"{repo.base_url}/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_zstd_push_writes_zstd_layers_moves_floating_tags_and_pulls_back(tmp_path: Path, repo: RepoRef) -> None:
    """push --compression zstd: skopeo recompresses each layer (OCI zstd media type); the floating tags are the
    same manifest; the gate's labels ride along; the layers decompress to the image's own files."""
    image = tiny_image(tmp_path, "z")
    result = zstd_push(tmp_path, repo, image, "20261201")
    manifest = registry_json(repo, f"manifests/{result.digest}")
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar+zstd"]
    registry = Registry(repo)
    for tag in ("hopper-cu130-torch2.14.1-20261201", "hopper-cu130", "hopper-cu130-latest"):
        remote = registry.image(tag)
        assert remote is not None and remote.digest == result.digest, tag
    assert registry.image("hopper-cu130").labels[GATE_IMAGE_LABEL] == image  # type: ignore[union-attr]
    again = zstd_push(tmp_path, repo, image, "20261201")  # the same gated image: left as is
    assert again.already_there and again.digest == result.digest
    # Decompressed by skopeo (Debian's Docker 20.10 cannot pull zstd itself: "failed to register layer …
    # unexpected EOF"; skopeo 1.9 cannot load zstd into a daemon): each layer must be the tar the config's
    # diff ID names, holding the image's files.
    back = tmp_path / "back"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-decompress",
                    f"docker://{repo}@{result.digest}", f"dir:{back}"], check=True, timeout=300, capture_output=True)
    pulled = json.loads((back / "manifest.json").read_text())
    config = json.loads((back / pulled["config"]["digest"].split(":")[1]).read_text())
    assert config["config"]["Labels"][GATE_IMAGE_LABEL] == image
    (diff_id,) = config["rootfs"]["diff_ids"]
    layer = back / diff_id.split(":")[1]
    assert "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest() == diff_id
    with tarfile.open(layer) as tar:
        sbom = tar.extractfile("./opt/imagefactory/sbom.cdx.json")
        assert sbom is not None and json.loads(sbom.read())["content"] == "z"


def test_zstd_push_without_skopeo_is_one_line_and_pushes_nothing(tmp_path: Path, repo: RepoRef, monkeypatch) -> None:
    from imagefactory.build import docker as docker_adapter
    from imagefactory.errors import DockerSetupError

    monkeypatch.setattr(docker_adapter, "SKOPEO", "skopeo-not-installed")
    with pytest.raises(DockerSetupError, match="needs skopeo"):
        zstd_push(tmp_path, repo, tiny_image(tmp_path, "n"), "20261201")
    assert Registry(repo).image("hopper-cu130-torch2.14.1-20261201") is None


def index_entries(repo: RepoRef, tag: str) -> dict[str, str]:
    """`os/architecture` -> manifest digest of the image index under `tag`, read from the registry itself."""
    accept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"
    request = urllib.request.Request(f"http://{repo.host}/v2/{repo.name}/manifests/{tag}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as answer:
        index = json.loads(answer.read())
    return {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in index["manifests"]}


def test_two_platforms_publish_one_image_index_under_every_tag(tmp_path: Path, repo: RepoRef) -> None:
    """amd64 + arm64 gated images of one release: each under its own immutable tag, one image index of both under
    the release's immutable and floating tags; a rerun changes nothing; other content under the release is refused."""
    amd64, arm64 = tiny_image(tmp_path, "a"), tiny_image(tmp_path, "arm", platform="linux/arm64")
    assert docker("image", "inspect", "--format", "{{.Architecture}}", arm64) == "arm64"
    reports = {"linux/amd64": gate_report(tmp_path, amd64), "linux/arm64": gate_report(tmp_path, arm64)}
    assert docker("image", "inspect", "--format", "{{.Architecture}}", reports["linux/arm64"].sealed_image) == "arm64"
    tags = release_tags(hopper_target(), "20261127")
    said: list[str] = []
    result = publish_index(tags, reports, hopper_target(), repo, LocalDocker(), Registry(repo), say=said.append, allow_cpu_gate=True)
    registry = Registry(repo)
    per_platform = {p: registry.image(f"hopper-cu130-torch2.14.1-20261127-{p[6:]}") for p in reports}
    assert per_platform["linux/amd64"].labels[GATE_IMAGE_LABEL] == amd64  # type: ignore[union-attr]
    assert per_platform["linux/arm64"].labels[GATE_IMAGE_LABEL] == arm64  # type: ignore[union-attr]
    for tag in ("hopper-cu130-torch2.14.1-20261127", "hopper-cu130", "hopper-cu130-latest"):
        remote = registry.image(tag)
        assert remote is not None and remote.digest == result.digest, tag
        assert remote.platforms == ("linux/amd64", "linux/arm64") and remote.labels[GATE_IMAGE_LABEL] == amd64, tag
        assert index_entries(repo, tag) == {p: image.digest for p, image in per_platform.items()}, tag  # type: ignore[union-attr]
    assert result.platforms == ("linux/amd64", "linux/arm64") and not result.already_there

    again = publish_index(tags, reports, hopper_target(), repo, LocalDocker(), Registry(repo), say=said.append, allow_cpu_gate=True)
    assert again.already_there and again.digest == result.digest
    other = {"linux/amd64": reports["linux/amd64"], "linux/arm64": gate_report(tmp_path, tiny_image(tmp_path, "arm2", platform="linux/arm64"))}
    with pytest.raises(PushFailedError, match="is linux/arm64, not linux/amd64"):  # reports swapped: nothing pushed
        publish_index(release_tags(hopper_target(), "2"), {"linux/amd64": reports["linux/arm64"], "linux/arm64": reports["linux/amd64"]},
                      hopper_target(), repo, LocalDocker(), Registry(repo), allow_cpu_gate=True)
    with pytest.raises(PushFailedError, match="already exists with different content"):
        publish_index(tags, {"linux/amd64": gate_report(tmp_path, tiny_image(tmp_path, "b")), "linux/arm64": other["linux/arm64"]},
                      hopper_target(), repo, LocalDocker(), Registry(repo), allow_cpu_gate=True)
    assert registry.image("hopper-cu130").digest == result.digest  # type: ignore[union-attr]
    assert sorted(registry.tags()) == sorted(["hopper-cu130", "hopper-cu130-latest", "hopper-cu130-torch2.14.1-20261127",
                                              "hopper-cu130-torch2.14.1-20261127-amd64", "hopper-cu130-torch2.14.1-20261127-arm64"])


def test_cli_push_of_two_platforms_and_probe_select_ignores_the_per_platform_tags(tmp_path: Path, repo: RepoRef, capsys) -> None:
    from imagefactory.cli import main as cli_main
    from probe.select import main as select_main

    for unit, image in ((TARGET, tiny_image(tmp_path, "a")), (f"{TARGET}-arm64", tiny_image(tmp_path, "arm", platform="linux/arm64"))):
        (tmp_path / "reports" / unit).mkdir(parents=True)
        (tmp_path / "reports" / unit / "gate.json").write_text(
            json.dumps({"target": TARGET, "image_id": image, "result": "passed", "sealed_image": seal(tmp_path, image)}))
    argv = ["push", TARGET, "--registry", str(repo), "--release", "20261127", "--reports-dir", str(tmp_path / "reports"),
            "--platform", "linux/amd64", "--platform", "linux/arm64", "--allow-cpu-gate"]
    assert cli_main(argv) == 0
    assert "an index of linux/amd64, linux/arm64" in capsys.readouterr().out
    record = json.loads((tmp_path / "reports" / TARGET / "release.json").read_text())
    assert record["platforms"] == ["linux/amd64", "linux/arm64"] and record["digest"] == Registry(repo).image("hopper-cu130").digest  # type: ignore[union-attr]
    assert select_main(["--repo", str(repo), "--gpu-sm", "9.0", "--driver", "580.65", "--quiet"]) == 0
    assert capsys.readouterr().out == f"{repo}:hopper-cu130-torch2.14.1-20261127\n"
    # a platform the target is not built for: one line, exit 2, nothing read or pushed
    assert cli_main(["push", "ampere-cu121", "--registry", str(repo), "--platform", "linux/arm64"]) == 2
    assert "ampere-cu121 is built for linux/amd64 only" in capsys.readouterr().err
