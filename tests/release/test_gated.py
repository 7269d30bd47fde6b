"""docs/gated.json: the committed record of targets built and gated here, read as hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagefactory.errors import UsageError
from imagefactory.publish import gated
from imagefactory.publish.docs import generate

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "sha256:" + "a" * 64
ENTRY = {"target": "hopper-cu130", "torch": "2.14.1", "mode": "cpu", "where": "x86_64 build host, no GPU",
         "date": "2026-12-01", "image_id": IMAGE}


def write(tmp_path: Path, entries) -> Path:
    path = tmp_path / "gated.json"
    path.write_text(json.dumps({"schema": gated.SCHEMA, "gated": entries}))
    return path


def test_the_committed_record_loads_and_names_only_matrix_targets():
    from imagefactory.plan.expand import all_targets
    from imagefactory.plan.matrix import load_matrix

    record = gated.load(REPO_ROOT / "docs" / "gated.json")
    targets = {t.id: t for t in all_targets(load_matrix(REPO_ROOT / "matrix.yaml"))}
    assert {g.target for g in record.values()} <= set(targets)
    assert all(g.platform in targets[g.target].platforms for g in record.values())  # filed per platform it is built for


@pytest.mark.parametrize(("change", "word"), [
    ({"where": "host | <script>"}, "where"), ({"mode": "gpuu"}, "mode"), ({"image_id": "sha256:xyz"}, "image_id"),
    ({"target": "../../etc"}, "target"), ({"extra": 1}, "unknown key"), ({"date": "yesterday"}, "date"),
])
def test_a_malformed_entry_is_an_error_naming_it(tmp_path, change, word):
    with pytest.raises(UsageError) as error:
        gated.load(write(tmp_path, [ENTRY | change]))
    assert "gated[0]" in error.value.message and word in error.value.message


def test_a_duplicate_or_a_broken_file_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="twice"):
        gated.load(write(tmp_path, [ENTRY, ENTRY]))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError, match="cannot read"):
        gated.load(tmp_path / "bad.json")


def test_record_takes_only_a_passed_gate(tmp_path):
    reports = tmp_path / "reports" / "hopper-cu130"
    reports.mkdir(parents=True)
    (reports / "gate.json").write_text(json.dumps({"target": "hopper-cu130", "result": "failed", "mode": "cpu",
                                                    "image_id": IMAGE, "finished": "2026-12-01T05:00:00Z"}))
    with pytest.raises(UsageError, match="did not pass"):
        gated.from_reports("hopper-cu130", "2.14.1", tmp_path / "reports", "x86_64 build host")
    (reports / "gate.json").write_text(json.dumps({"target": "hopper-cu130", "result": "passed", "mode": "cpu",
                                                    "image_id": IMAGE, "finished": "2026-12-01T05:00:00Z"}))
    entry = gated.from_reports("hopper-cu130", "2.14.1", tmp_path / "reports", "x86_64 build host")
    assert entry.date == "2026-12-01" and entry.mode == "cpu"


def test_docs_mark_a_gated_target_only_at_the_torch_it_was_gated_with(tmp_path):
    from imagefactory.plan.expand import all_targets
    from imagefactory.plan.matrix import load_matrix

    matrix = load_matrix(REPO_ROOT / "matrix.yaml")
    stale = ENTRY | {"target": "ampere-cu130", "torch": "2.12.1"}
    write(tmp_path, [ENTRY, stale])
    files = generate(all_targets(matrix), docs_dir=tmp_path)
    rows = {t["id"]: t for t in json.loads(files[tmp_path / "supported-tags.json"])["targets"]}
    assert rows["hopper-cu130"]["gated"] == {"mode": "cpu", "where": "x86_64 build host, no GPU", "date": "2026-12-01",
                                             "platforms": ["linux/amd64"], "by_platform": {"linux/amd64": {
                                                 "mode": "cpu", "where": "x86_64 build host, no GPU", "date": "2026-12-01"}}}
    assert rows["ampere-cu130"]["gated"] is None  # gated with another torch than the matrix's now


def test_an_arm64_gate_is_recorded_next_to_the_amd64_one_and_select_tells_them_apart(tmp_path, capsys):
    from imagefactory.plan.expand import all_targets, resolve_target
    from imagefactory.plan.matrix import load_matrix
    from probe.select import main as select_main

    matrix = load_matrix(REPO_ROOT / "matrix.yaml")
    hopper = resolve_target(matrix, "hopper-cu130")
    record = write(tmp_path, [ENTRY])
    reports = tmp_path / "reports" / "hopper-cu130-arm64"
    reports.mkdir(parents=True)
    (reports / "gate.json").write_text(json.dumps({"target": "hopper-cu130", "result": "passed", "mode": "cpu", "image_id": IMAGE,
                                                    "finished": "2026-12-01T05:00:00Z", "platform": "linux/amd64"}))
    with pytest.raises(UsageError, match="a gate of the linux/amd64 image, not linux/arm64"):  # a report in the wrong place
        gated.record_gate(hopper, "x86_64 build host, QEMU", tmp_path / "reports", record, "linux/arm64")
    (reports / "gate.json").write_text(json.dumps({"target": "hopper-cu130", "result": "passed", "mode": "cpu", "image_id": IMAGE,
                                                    "finished": "2026-12-01T05:00:00Z", "platform": "linux/arm64"}))
    line = gated.record_gate(hopper, "x86_64 build host, QEMU", tmp_path / "reports", record, "linux/arm64")
    assert line.endswith("hopper-cu130 (linux/arm64): CPU gate, x86_64 build host, QEMU, 2026-12-01")
    assert set(gated.load(record)) == {"hopper-cu130", "hopper-cu130-arm64"}
    with pytest.raises(UsageError, match="ampere-cu121 is built for linux/amd64 only"):
        gated.record_gate(resolve_target(matrix, "ampere-cu121"), "x", tmp_path / "reports", record, "linux/arm64")

    files = generate(all_targets(matrix), docs_dir=tmp_path)
    rows = {t["id"]: t for t in json.loads(files[tmp_path / "supported-tags.json"])["targets"]}
    assert rows["hopper-cu130"]["gated"]["platforms"] == ["linux/amd64", "linux/arm64"]
    assert "arm64: CPU gate, x86_64 build host, QEMU, 2026-12-01" in files[tmp_path / "supported-tags.md"]
    # select on a GH200 (arm64) prefers an image gated for arm64, and says when the one it picks was not
    tags_file = tmp_path / "tags.json"
    only_amd64 = [dict(rows["hopper-cu130"], gated=dict(rows["hopper-cu130"]["gated"], platforms=["linux/amd64"]))]
    tags_file.write_text(json.dumps(only_amd64))
    assert select_main(["--tags-file", str(tags_file), "--gpu-sm", "9.0", "--driver", "580.65", "--platform", "linux/arm64"]) == 0
    assert "NOT GATED for linux/arm64: only its linux/amd64 image passed a gate" in capsys.readouterr().out
    # with both gated, each platform's machine hears where its own image passed (arm64: the QEMU host)
    assert rows["hopper-cu130"]["gated"]["by_platform"]["linux/arm64"]["where"] == "x86_64 build host, QEMU"
    tags_file.write_text(json.dumps([rows["hopper-cu130"]]))
    for platform, where in (("linux/arm64", "x86_64 build host, QEMU"), ("linux/amd64", ENTRY["where"])):
        assert select_main(["--tags-file", str(tags_file), "--gpu-sm", "9.0", "--driver", "580.65", "--platform", platform]) == 0
        assert f"gated: CPU gate, {where}, " in capsys.readouterr().out
