"""The one tag grammar (probe/tags.py) and the matrix facts generated for the probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefactory.errors import UsageError
from imagefactory.plan import outputs
from imagefactory.plan.expand import all_targets
from imagefactory.plan.model import Matrix
from imagefactory.tags import release_tags
from probe import select, tags

REPO = Path(__file__).resolve().parents[2]


def test_the_probe_facts_file_is_generated_from_matrix_yaml(matrix: Matrix) -> None:
    """probe/matrix_facts.json is exactly what `imagefactory render` writes (no hand copy to drift)."""
    assert (REPO / outputs.PROBE_FACTS_PATH).read_text(encoding="utf-8") == outputs.probe_facts(matrix)
    nvidia = {name: arch.sms for name, arch in matrix.arches.items() if arch.vendor == "nvidia"}
    assert select.ARCH_SMS == nvidia
    for toolkit in matrix.toolkits.values():
        if toolkit.kind == "cuda":
            assert select.driver_floor(toolkit.version) == int(toolkit.driver_floor or 0), toolkit.id


def test_render_check_reports_a_hand_edited_facts_file(run_cli, tmp_path: Path) -> None:
    assert run_cli("render", "--out", str(tmp_path)).code == 0
    facts = tmp_path / outputs.PROBE_FACTS_PATH
    facts.write_text(facts.read_text().replace('"9.0"', '"9.1"'))
    result = run_cli("render", "--check", "--out", str(tmp_path))
    assert result.code == 1 and "probe/matrix_facts.json: changed" in result.err


@pytest.mark.parametrize("text", ["hopper-cu130\n", "hopper-cu130 ", "Hopper-cu130", "hopper-cu13", "hopper-cu130-slim-x",
                                  "hopper-rocm6", "hopper--cu130", "hopper-cu130-torch2", "hopper-cu130-fp32", ""])
def test_not_target_ids(text: str) -> None:
    assert tags.parse_target_id(text) is None


def test_immutable_and_floating_tags_round_trip(matrix: Matrix) -> None:
    for target in all_targets(matrix):
        release = release_tags(target, "2026.11.0")
        assert release.floating == tags.floating_tags(target.id) == target.tags
        assert tags.parse_immutable_tag(release.immutable) == (target.id, target.torch.version, "2026.11.0")
        assert all(tags.floating_target(tag) == target.id and not tags.is_immutable(tag) for tag in release.floating)
        assert release.immutable.startswith(tags.immutable_prefix(target.id, target.torch.version))


@pytest.mark.parametrize("release", ["latest", "LATEST", "a/b", "-1", "1\n", "", "x" * 42, "2026 11", "é"])
def test_bad_release_names_are_usage_errors(matrix: Matrix, release: str) -> None:
    target = all_targets(matrix)[0]
    with pytest.raises(UsageError):
        release_tags(target, release)
    assert not tags.is_immutable(tags.immutable_tag(target.id, target.torch.version, release))
