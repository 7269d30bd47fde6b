"""Loading matrix.yaml: the real file loads; every kind of broken input is one clean line per problem."""

from __future__ import annotations

import re

import pytest

from imagefactory.errors import ConfigError
from imagefactory.plan.model import Matrix

LINE_RE = re.compile(r"^matrix\.yaml:\d+: ")


def _problems(parse, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    problems = list(info.value.problems)
    assert problems and all(LINE_RE.match(p) for p in problems), problems
    assert all("\n" not in p for p in problems)
    return problems


def test_real_matrix_loads(matrix: Matrix) -> None:
    assert {"volta", "turing", "ampere", "ada", "hopper", "blackwell", "cdna3"} <= set(matrix.arches)
    assert {"cu118", "cu121", "cu124", "cu126", "cu128", "cu129", "cu130"} <= set(matrix.toolkits)
    assert any(t.startswith("rocm6.") for t in matrix.toolkits) and any(t.startswith("rocm7.") for t in matrix.toolkits)
    assert matrix.toolkits["cu130"].driver_floor == "580"
    assert matrix.arches["hopper"].sms == ("9.0",)
    assert matrix.torches["2.14.1"].triton.startswith("3.8.")
    assert set(matrix.flavors) == {"slim", "nvidia", "rocm"}


def test_where_points_at_the_key_line(matrix: Matrix, matrix_text: str) -> None:
    where = matrix.where("torch", "2.14.1", "triton")
    line = int(where.split(":")[1].split()[0])
    assert matrix_text.splitlines()[line - 1].strip().startswith("triton:")
    assert where.endswith('torch."2.14.1".triton')


def test_unknown_key_suggests_the_near_miss(parse, matrix_text: str) -> None:
    text = matrix_text.replace('    driver_floor: "580"', '    drver_floor: "580"')
    problems = _problems(parse, text)
    hit = [p for p in problems
           if "toolkits.cu130.drver_floor: unknown key 'drver_floor' (did you mean 'driver_floor'?)" in p]
    assert hit, problems
    line = int(hit[0].split(":")[1])
    assert "drver_floor" in text.splitlines()[line - 1]


def test_unknown_top_level_key(parse, matrix_text: str) -> None:
    problems = _problems(parse, matrix_text.replace("image_repo: imagefactory", "image_rep: imagefactory"))
    assert any("unknown key 'image_rep' (did you mean 'image_repo'?)" in p for p in problems)
    assert any("missing required key 'image_repo'" in p for p in problems)


def test_unquoted_version_is_a_type_error_with_a_hint(parse, matrix_text: str) -> None:
    text = matrix_text.replace('    version: "13.0"', "    version: 13.0")
    problems = _problems(parse, text)
    assert any('toolkits.cu130.version: expected a string, got number 13.0 (quote it: "13.0")' in p for p in problems)


def test_wrong_type(parse, matrix_text: str) -> None:
    problems = _problems(parse, matrix_text.replace("warm_triton_cache: true", "warm_triton_cache: yes please"))
    assert any("warm_triton_cache: expected true or false, got string" in p for p in problems)


def test_unknown_toolkit_reference(parse, matrix_text: str) -> None:
    text = matrix_text.replace("toolkits: [cu126, cu128, cu130, rocm7.1]", "toolkits: [cu126, cu182, cu130, rocm7.1]")
    problems = _problems(parse, text)
    assert any("torch.\"2.11.0\".toolkits[1]: unknown toolkit 'cu182'" in p and "did you mean" in p for p in problems)


def test_unknown_arch_in_cells(parse, matrix_text: str) -> None:
    text = matrix_text.replace('- {arch: hopper, toolkit: cu128, torch: "2.7.1"}', "- {arch: hoper, toolkit: cu130}")
    problems = _problems(parse, text)
    assert any("cells.extra[0].arch: unknown arch 'hoper' (did you mean 'hopper'?)" in p for p in problems)


def test_duplicate_target_id(parse, matrix_text: str) -> None:
    text = matrix_text.replace('    - {arch: hopper, toolkit: cu128, torch: "2.7.1"}',
                               '    - {arch: hopper, toolkit: cu128, torch: "2.7.1"}\n'
                               '    - {arch: hopper, toolkit: cu128, torch: "2.7.1"}')
    problems = _problems(parse, text)
    assert any("cells.extra[1]: duplicate target id 'hopper-cu128-torch2.7-nvidia'" in p for p in problems), problems


def test_extra_cell_equal_to_an_expanded_flavor_is_a_duplicate(parse, matrix_text: str) -> None:
    text = matrix_text.replace('- {arch: hopper, toolkit: cu128, torch: "2.7.1"}', "- {arch: hopper, toolkit: cu130, flavor: nvidia}")
    assert any("duplicate target id 'hopper-cu130-nvidia'" in p for p in _problems(parse, text))


def test_extra_cell_equal_to_a_default_is_a_duplicate(parse, matrix_text: str) -> None:
    text = matrix_text.replace('- {arch: hopper, toolkit: cu128, torch: "2.7.1"}', "- {arch: hopper, toolkit: cu130}")
    assert any("duplicate target id 'hopper-cu130'" in p for p in _problems(parse, text))


def test_refused_extra_cell_names_the_rule(parse, matrix_text: str) -> None:
    text = matrix_text.replace('- {arch: hopper, toolkit: cu128, torch: "2.7.1"}', "- {arch: volta, toolkit: cu130}")
    problems = _problems(parse, text)
    assert any("cells.extra[0]: refused by rule sm-dropped" in p for p in problems), problems


def test_malformed_version(parse, matrix_text: str) -> None:
    problems = _problems(parse, matrix_text.replace('  "2.14.1":', '  "2.14.x":'))
    assert any("malformed version '2.14.x'" in p for p in problems)


def test_malformed_specifier(parse, matrix_text: str) -> None:
    problems = _problems(parse, matrix_text.replace('requires_torch: ">=2.4,<3"', 'requires_torch: "=>2.4"'))
    assert any("bitsandbytes.requires_torch: malformed version specifier" in p for p in problems)


def test_duplicate_yaml_key(parse, matrix_text: str) -> None:
    text = matrix_text.replace("image_repo: imagefactory", "image_repo: imagefactory\nimage_repo: other")
    assert any("duplicate key 'image_repo' (first at line" in p for p in _problems(parse, text))


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "{}\n"])
def test_empty_matrix(parse, text: str) -> None:
    assert any("the matrix is empty" in p for p in _problems(parse, text))


def test_invalid_yaml_names_the_line(parse, matrix_text: str) -> None:
    lines = matrix_text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("arches:"))
    lines.insert(index + 1, "  volta: [unclosed")
    problems = _problems(parse, "\n".join(lines))
    assert len(problems) == 1 and "invalid YAML" in problems[0]


def test_all_problems_are_reported_not_just_the_first(parse, matrix_text: str) -> None:
    text = matrix_text.replace('    driver_floor: "580"', '    drver_floor: "580"').replace(
        "image_repo: imagefactory", "image_repo: 12")
    problems = _problems(parse, text)
    assert len(problems) >= 2
    assert problems == sorted(problems, key=lambda p: int(p.split(":")[1]))


def test_matrix_yielding_no_targets(parse, matrix_text: str) -> None:
    text = matrix_text.replace("  expand: all", "  expand: none").split("\n  extra:\n")[0]
    problems = _problems(parse, text + "\n  extra: []\n")
    assert any("cells.extra: is empty and expand is none" in p for p in problems), problems


def test_missing_file_is_a_config_error(tmp_path) -> None:
    from imagefactory.plan.matrix import load_matrix

    with pytest.raises(ConfigError) as info:
        load_matrix(tmp_path / "nope.yaml")
    assert "no such file" in info.value.problems[0]


def test_platforms_are_checked_and_an_arch_without_a_torch_for_them_is_refused(parse, matrix_text: str) -> None:
    bad = matrix_text.replace("    platforms: [linux/amd64, linux/arm64]\n    description: H100", "    platforms: [linux/arm32]\n    description: H100")
    assert any("arches.hopper.platforms[0]: must be one of linux/amd64, linux/arm64" in p for p in _problems(parse, bad))
    arm_only = matrix_text.replace("    platforms: [linux/amd64, linux/arm64]\n    description: H100", "    platforms: [linux/arm64]\n    description: H100")
    problems = _problems(parse, arm_only)  # cells.extra pins hopper-cu128 at torch 2.7.1: amd64 only
    assert any("refused by rule platform" in p for p in problems), problems
