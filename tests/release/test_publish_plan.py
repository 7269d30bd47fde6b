"""publish() ordering and refusals, with an in-memory registry and Docker (the real ones: test_push_registry.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from imagefactory.errors import PushFailedError, UsageError
from imagefactory.plan.expand import all_targets
from imagefactory.plan.matrix import load_matrix
from imagefactory.publish.push import (
    GATE_IMAGE_LABEL,
    GATE_LABEL,
    GATE_MODE_LABEL,
    GATE_REPORT_LABEL,
    GATE_TARGET_LABEL,
    IDENTITY_LABELS,
    SBOM_LABEL,
    GateReport,
    publish,
    seal_labels,
    summary_markdown,
    write_release_record,
)
from imagefactory.publish.registry import RemoteImage, RepoRef
from imagefactory.tags import release_tags

REPO = RepoRef.parse("127.0.0.1:5000/imagefactory")
TARGETS = all_targets(load_matrix(Path(__file__).resolve().parents[2] / "matrix.yaml"))
HOPPER = next(target for target in TARGETS if target.id == "hopper-cu130")
TAGS = release_tags(HOPPER, "20261127")
GATED = "sha256:" + "a" * 64  # the candidate the gate tested
SEALED = "sha256:" + "5" * 64  # its sealed child
LAYERS = ["sha256:" + "9" * 64]
IDENTITY = {key: HOPPER.labels[key] for key in IDENTITY_LABELS}


def image(image_id: str, labels: dict[str, str], layers: list[str] = LAYERS) -> dict:
    """What `docker image inspect` says about an image (the fields push reads)."""
    return {"Id": image_id, "Config": {"Labels": labels}, "RootFS": {"Type": "layers", "Layers": layers}}


class FakeWorld:
    """Docker's local store and a registry, enough to observe what publish() does in which order."""

    def __init__(self, mode: str = "gpu") -> None:
        candidate = {**IDENTITY, SBOM_LABEL: "/opt/imagefactory/sbom.cdx.json"}
        self.local: dict[str, dict] = {
            GATED: image(GATED, candidate),
            SEALED: image(SEALED, {**candidate, **seal_labels(HOPPER, GATED, mode, {"result": "passed", "mode": mode})}),
        }
        self.refs: dict[str, str] = {}  # local ref → image key
        self.remote: dict[str, RemoteImage] = {}  # tag → image
        self.events: list[str] = []
        self.fail_push_of: str | None = None
        self.files = {(SEALED, "/opt/imagefactory/sbom.cdx.json"): b'{"bomFormat": "CycloneDX", "components": []}'}

    # DockerOps
    def inspect(self, ref: str) -> dict | None:
        return self.local.get(self.refs.get(ref, ref))

    def tag(self, source: str, target: str) -> None:
        self.refs[target] = self.refs.get(source, source)
        self.events.append(f"tag {target}")

    def push(self, ref: str) -> str:
        if ref == self.fail_push_of:
            raise PushFailedError(f"push of {ref} failed: connection reset")
        key = self.refs[ref]
        labels = self.local[key]["Config"]["Labels"]
        digest = "sha256:" + hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()
        self.remote[ref.rsplit(":", 1)[1]] = RemoteImage(digest, labels)
        self.events.append(f"push {ref.rsplit(':', 1)[1]}")
        return digest

    def pull(self, ref: str) -> None:
        digest = ref.split("@")[1]
        for remote in self.remote.values():
            if remote.digest == digest:
                self.local[ref] = image(ref, remote.labels)
        self.events.append(f"pull {ref}")

    def read_file(self, image_id: str, path: str) -> bytes | None:
        return self.files.get((image_id, path))

    # Registry
    def image(self, reference: str) -> RemoteImage | None:
        return self.remote.get(reference)


def report(tmp_path: Path, **fields: object) -> GateReport:
    path = tmp_path / "gate.json"
    path.write_text(json.dumps({"target": "hopper-cu130", "image_id": GATED, "sealed_image": SEALED, "result": "passed", **fields}))
    return GateReport.read(path)


def test_tags_shape() -> None:
    assert TAGS.immutable == "hopper-cu130-torch2.14.1-20261127"
    assert TAGS.floating == ("hopper-cu130", "hopper-cu130-latest")
    with pytest.raises(UsageError, match="release 'bad/one'") as bad:
        release_tags(HOPPER, "bad/one")
    assert bad.value.exit_code == 2
    with pytest.raises(UsageError, match="'latest' is a floating name"):
        release_tags(HOPPER, "Latest")


def test_immutable_first_then_floating_all_at_one_digest(tmp_path: Path) -> None:
    world = FakeWorld()
    result = publish(TAGS, report(tmp_path), HOPPER, REPO, world, world, say=lambda _m: None)  # type: ignore[arg-type]
    assert world.events == ["tag 127.0.0.1:5000/imagefactory:hopper-cu130-torch2.14.1-20261127",
                            "push hopper-cu130-torch2.14.1-20261127",
                            "tag 127.0.0.1:5000/imagefactory:hopper-cu130", "push hopper-cu130",
                            "tag 127.0.0.1:5000/imagefactory:hopper-cu130-latest", "push hopper-cu130-latest"]
    assert world.refs[f"{REPO}:{TAGS.immutable}"] == SEALED  # the sealed child is what is pushed
    assert {world.remote[t].digest for t in (TAGS.immutable, *TAGS.floating)} == {result.digest}
    labels = world.remote[TAGS.immutable].labels
    assert labels[GATE_LABEL] == "passed" and labels[GATE_IMAGE_LABEL] == GATED
    assert json.loads(labels[GATE_REPORT_LABEL])["result"] == "passed"


def test_failed_immutable_push_leaves_floating_tags(tmp_path: Path) -> None:
    world = FakeWorld()
    old = RemoteImage("sha256:" + "0" * 64, {})
    world.remote["hopper-cu130"] = world.remote["hopper-cu130-latest"] = old
    world.fail_push_of = f"{REPO}:{TAGS.immutable}"
    with pytest.raises(PushFailedError, match="connection reset"):
        publish(TAGS, report(tmp_path), HOPPER, REPO, world, world, say=lambda _m: None)  # type: ignore[arg-type]
    assert world.remote["hopper-cu130"] is old and world.remote["hopper-cu130-latest"] is old


def test_refuses_to_overwrite_immutable_tag_with_other_content(tmp_path: Path) -> None:
    world = FakeWorld()
    world.remote[TAGS.immutable] = RemoteImage("sha256:" + "1" * 64, {GATE_IMAGE_LABEL: "sha256:" + "b" * 64})
    with pytest.raises(PushFailedError, match="already exists with different content"):
        publish(TAGS, report(tmp_path), HOPPER, REPO, world, world, say=lambda _m: None)  # type: ignore[arg-type]
    assert world.events == []


def test_same_content_again_is_not_pushed_but_floating_tags_follow(tmp_path: Path) -> None:
    world = FakeWorld()
    first = publish(TAGS, report(tmp_path), HOPPER, REPO, world, world, say=lambda _m: None)  # type: ignore[arg-type]
    world.events.clear()
    second = publish(TAGS, report(tmp_path), HOPPER, REPO, world, world, say=lambda _m: None)  # type: ignore[arg-type]
    assert second.already_there and second.digest == first.digest
    assert world.events == []  # floating tags already there: nothing pulled or pushed


AMPERE = next(target for target in TARGETS if target.id == "ampere-cu130")
REFUSALS = {
    # (change to the fake world, message)
    "report for another target": (lambda w: None, {"target": "ampere-cu121"}, "gate report is for ampere-cu121"),
    "failed gate": (lambda w: None, {"result": "failed"}, "the gate did not pass"),
    "sealed image gone": (lambda w: w.local.pop(SEALED), {}, "sealed image sha256:555555555555 is not in the local Docker store"),
    "a mutable tag as the sealed image": (lambda w: None, {"sealed_image": "imagefactory:hopper-cu130"}, "must be a full image ID"),
    "not sealed (hand-written report naming the candidate)": (lambda w: None, {"sealed_image": GATED}, "carries no gate seal"),
    "sealed for another target": (lambda w: w.local[SEALED]["Config"]["Labels"].update({GATE_TARGET_LABEL: "ampere-cu130"}), {},
                                  "carries no gate seal for hopper-cu130"),
    "candidate gone": (lambda w: w.local.pop(GATED), {}, "that sha256:555555555555 seals is not in the local store"),
    "candidate of another target": (lambda w: w.local[GATED]["Config"]["Labels"].update({"io.imagefactory.target": "ampere-cu130"}), {},
                                    "gated image sha256:aaaaaaaaaaaa is not an image of hopper-cu130"),
    "seal relabelled to another SM": (lambda w: w.local[SEALED]["Config"]["Labels"].update({"io.imagefactory.sm": AMPERE.labels["io.imagefactory.sm"]}),
                                      {}, "sealed image .* is not an image of hopper-cu130: io.imagefactory.sm"),
    "other torch": (lambda w: w.local[GATED]["Config"]["Labels"].update({"io.imagefactory.torch": "2.7.1"}), {}, "io.imagefactory.torch='2.7.1'"),
    "FROM scratch with copied labels": (lambda w: w.local[SEALED].update({"RootFS": {"Layers": ["sha256:" + "e" * 64]}}), {},
                                        "holds other layers than the gated image"),
    "no layers at all": (lambda w: [w.local[k].update({"RootFS": {}}) for k in (SEALED, GATED)], {}, "holds other layers"),
    "no SBOM label": (lambda w: w.local[SEALED]["Config"]["Labels"].pop(SBOM_LABEL), {}, "no io.imagefactory.sbom label"),
    "SBOM elsewhere": (lambda w: w.local[SEALED]["Config"]["Labels"].update({SBOM_LABEL: "/elsewhere.json"}), {}, "no CycloneDX JSON at /elsewhere.json"),
    "cpu gate": (lambda w: w.local[SEALED]["Config"]["Labels"].update({GATE_MODE_LABEL: "cpu"}), {}, "gated in cpu mode only"),
    "no mode label": (lambda w: w.local[SEALED]["Config"]["Labels"].pop(GATE_MODE_LABEL), {}, "gated in unknown mode only.*--allow-cpu-gate"),
}


@pytest.mark.parametrize(("change", "fields", "message"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_before_anything_is_pushed(tmp_path: Path, change, fields: dict, message: str) -> None:
    """Gate and push trust images, not files: each way of faking a pass is refused before any push."""
    world = FakeWorld()
    change(world)
    with pytest.raises(PushFailedError, match=message):
        publish(TAGS, report(tmp_path, **fields), HOPPER, REPO, world, world, say=lambda _m: None)  # type: ignore[arg-type]
    assert world.events == [] and world.remote == {}


def test_a_huge_gate_report_is_refused_not_passed_on(tmp_path: Path) -> None:
    """A gate.json over 128 KB used to reach `docker build --label` (argument list too long, exit 70)."""
    path = tmp_path / "gate.json"
    path.write_text(json.dumps({"target": "hopper-cu130", "sealed_image": SEALED, "result": "passed", "pad": "x" * 2_000_000}))
    with pytest.raises(PushFailedError, match="larger than 1024 KiB"):
        GateReport.read(path)


def test_cpu_gate_allowed_when_asked(tmp_path: Path) -> None:
    world = FakeWorld(mode="cpu")
    publish(TAGS, report(tmp_path), HOPPER, REPO, world, world, say=lambda _m: None, allow_cpu_gate=True)  # type: ignore[arg-type]
    assert json.loads(world.remote[TAGS.immutable].labels[GATE_REPORT_LABEL])["mode"] == "cpu"
    assert world.remote[TAGS.immutable].labels[GATE_MODE_LABEL] == "cpu"


def test_gate_report_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(PushFailedError, match="no gate report"):
        GateReport.read(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PushFailedError, match="unreadable gate report"):
        GateReport.read(tmp_path / "bad.json")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(PushFailedError, match="unreadable gate report"):
        GateReport.read(tmp_path / "deep.json")


def test_release_record_and_summary(tmp_path: Path) -> None:
    world = FakeWorld()
    result = publish(TAGS, report(tmp_path), HOPPER, REPO, world, world, say=lambda _m: None)  # type: ignore[arg-type]
    path = write_release_record(result, "hopper-cu130", tmp_path / "reports")
    record = json.loads(path.read_text())
    assert record["pull_by_digest"] == f"{REPO}@{result.digest}"
    table = summary_markdown([record])
    assert f"`{REPO}:{TAGS.immutable}`" in table and f"`{REPO}:hopper-cu130-latest`" in table
    assert "nothing published" in summary_markdown([])


@pytest.mark.parametrize("text", ["imagefactory", "127.0.0.1:5000", "ghcr.io/Org/Images"])
def test_registry_argument_is_checked(text: str) -> None:
    with pytest.raises(UsageError, match="--registry"):
        RepoRef.parse(text)


def test_push_progress_counts_layers_and_finds_the_digest() -> None:
    from imagefactory.build.docker import PushLayers

    layers = PushLayers()
    lines = ["The push refers to repository [127.0.0.1:5000/imagefactory]", "5f70bf18a086: Preparing",
             "e19c34e44479: Preparing", "5f70bf18a086: Waiting", "e19c34e44479: Pushed",
             "5f70bf18a086: Layer already exists",
             "hopper-cu130: digest: sha256:" + "ab" * 32 + " size: 524"]
    shown = [layers.feed(line) for line in lines]
    assert shown == [False, True, True, True, True, True, True]
    assert layers.describe("r:t") == "pushing r:t: 2/2 layers" and layers.digest == "sha256:" + "ab" * 32


def test_floating_tags_moved_from_an_existing_immutable_tag_are_pulled_first(tmp_path: Path) -> None:
    world = FakeWorld()
    first = publish(TAGS, report(tmp_path), HOPPER, REPO, world, world, say=lambda _m: None)  # type: ignore[arg-type]
    del world.remote["hopper-cu130"], world.remote["hopper-cu130-latest"]
    world.events.clear()
    publish(TAGS, report(tmp_path), HOPPER, REPO, world, world, say=lambda _m: None)  # type: ignore[arg-type]
    world.events = [e for e in world.events if not e.startswith("tag")]
    assert world.events == [f"pull {REPO}@{first.digest}", "push hopper-cu130", "push hopper-cu130-latest"]
    assert world.remote["hopper-cu130-latest"].digest == first.digest


def test_tags_agree_with_planning_and_with_probe_select() -> None:
    """The gate tags locally with these names, push publishes them, and `probe select` reads them back."""
    from imagefactory.build.gate import gate_tags
    from imagefactory.plan.model import immutable_tag
    from probe.tags import FLOATING_SUFFIX, is_immutable, parse_immutable_tag

    for target in TARGETS:
        tags = release_tags(target, "2026.11.0")
        assert tags.immutable == immutable_tag(target, "2026.11.0")
        assert tags.floating == tuple(target.tags)
        assert gate_tags(target, "2026.11.0") == tuple(f"{target.image_repo}:{t}" for t in (*tags.floating, tags.immutable))
        parsed = parse_immutable_tag(tags.immutable)
        assert is_immutable(tags.immutable) and parsed is not None
        assert parsed == (target.id, target.torch.version, "2026.11.0")
        assert not any(is_immutable(tag) for tag in tags.floating)
        assert {tag.removesuffix(FLOATING_SUFFIX) for tag in tags.floating} == {target.id}


@pytest.mark.parametrize(("argv", "message"), [
    (["--release", "latest"], "error: release 'latest': 'latest' is a floating name"),
    (["--release", "bad/one"], "error: release 'bad/one': use letters"),
    (["--registry", ""], "error: push needs --registry HOST[:PORT]/NAME"),
])
def test_cli_push_usage_errors_exit_2_before_anything_runs(tmp_path: Path, capsys, argv, message) -> None:
    from imagefactory.cli import main as cli_main

    code = cli_main(["push", "hopper-cu130", "--registry", "127.0.0.1:5000/x", "--docker", str(tmp_path / "no-docker"),
                     "--reports-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert (code, err.count("\n")) == (2, 1) and err.startswith(message), err
