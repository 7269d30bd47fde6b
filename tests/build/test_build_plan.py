"""Pure decisions of the build: where bitsandbytes comes from, build args, CA certificates, tags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from imagefactory.build.docker import parse_version
from imagefactory.build.gate import failing_checks, gate_tags, step_commands
from imagefactory.build.images import (
    BnbChoice,
    BuildOptions,
    BuildResult,
    build_args,
    check_options,
    choose_bnb,
    extra_certificates,
    human_size,
    local_tree_version,
    summary_table,
    targets_for_platform,
)
from imagefactory.errors import BuildFailedError, UsageError
from imagefactory.plan.expand import resolve_target
from imagefactory.tags import is_gate_ref


def bnb_tree(root: Path, version: str = "0.50.2") -> Path:
    (root / "bitsandbytes").mkdir(parents=True)
    (root / "bitsandbytes" / "__init__.py").write_text(f'"""bnb"""\n\n__version__ = "{version}"\n')
    (root / "setup.py").write_text('setup_kwargs = {"version": "9.9.9"}\n')
    return root


def never(*_a) -> bool:
    raise AssertionError("git must not be asked when a local tree is given")


def test_local_tree_wins_and_reports_its_own_version(tmp_path, hopper):
    tree = bnb_tree(tmp_path / "bnb", "0.50.2.dev0")
    choice = choose_bnb(hopper, tree, never)
    assert choice.source == "local"
    assert choice.version == "0.50.2.dev0"  # __init__.py beats setup.py
    assert "matrix pins 0.50.2" in choice.note


def test_setup_py_version_when_init_has_none(tmp_path):
    (tmp_path / "setup.py").write_text('setup_kwargs = {\n    "version": "0.49.1",\n}\n')
    assert local_tree_version(tmp_path) == "0.49.1"


def test_a_directory_that_is_not_bitsandbytes_is_refused(tmp_path, hopper):
    with pytest.raises(BuildFailedError, match="not a bitsandbytes source tree"):
        choose_bnb(hopper, tmp_path, never)


def test_source_mode_compiles_from_git_when_reachable(hopper):
    assert hopper.bitsandbytes.mode == "source"
    choice = choose_bnb(hopper, None, lambda: True)
    assert choice == BnbChoice("git", "0.50.2", choice.note)
    assert hopper.bitsandbytes.git_url in choice.note


def test_unreachable_git_falls_back_to_the_declared_wheel_and_says_so(hopper):
    choice = choose_bnb(hopper, None, lambda: False)
    assert choice.source == "wheel"
    assert "unreachable" in choice.note and "fallback" in choice.note


def test_unreachable_git_without_fallback_is_an_error(hopper):
    strict = dataclasses.replace(hopper, bitsandbytes=dataclasses.replace(hopper.bitsandbytes, fallback=None))
    with pytest.raises(BuildFailedError, match="--bnb-source"):
        choose_bnb(strict, None, lambda: False)


def test_a_flavor_without_compiler_uses_the_wheel_and_refuses_a_tree(tmp_path, hopper):
    no_nvcc = dataclasses.replace(hopper, nvcc="none")
    assert choose_bnb(no_nvcc, None, never).source == "wheel"
    with pytest.raises(BuildFailedError, match="no compiler"):
        choose_bnb(no_nvcc, bnb_tree(tmp_path / "bnb"), never)


def test_build_args_are_the_per_build_values_only(hopper):
    args = build_args(hopper, BnbChoice("wheel", "0.50.2", ""), "abc123", "2026-11-27T00:00:00Z")
    assert args == {"BNB_SOURCE": "wheel", "BNB_VERSION": "0.50.2", "SOURCE_REVISION": "abc123",
                    "BUILD_DATE": "2026-11-27T00:00:00Z"}


PEM_A = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
PEM_B = b"-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"


def test_extra_certificates_are_those_the_image_lacks():
    assert extra_certificates(PEM_A + PEM_B, PEM_A) == {PEM_B.strip()}
    assert extra_certificates(PEM_A, PEM_A + PEM_B) == set()
    assert extra_certificates(PEM_A, None) == {PEM_A.strip()}


def test_failing_checks_found_wherever_they_nest():
    report = {"checks": [{"name": "a", "status": "pass", "reason": "ok"},
                         {"name": "b", "status": "fail", "reason": "broken"}],
              "smoke": {"steps": [{"name": "c", "status": "fail", "reason": "nan loss"}]}}
    assert failing_checks(report) == ["b: broken", "c: nan loss"]
    assert failing_checks({"checks": [{"name": "x", "status": "skip", "reason": "no GPU"}]}) == []


def test_gate_tags_floating_then_immutable(hopper):
    assert gate_tags(hopper, "20261127") == (
        "imagefactory:hopper-cu130",
        "imagefactory:hopper-cu130-latest",
        "imagefactory:hopper-cu130-torch2.14.1-20261127",
    )


def test_arm64_gate_tags_end_in_the_platform_and_are_told_apart(hopper):
    refs = gate_tags(hopper, "20261127", "linux/arm64")
    assert refs == ("imagefactory:hopper-cu130-arm64", "imagefactory:hopper-cu130-latest-arm64",
                    "imagefactory:hopper-cu130-torch2.14.1-20261127-arm64")
    assert all(is_gate_ref(hopper, ref, "linux/arm64") and not is_gate_ref(hopper, ref) for ref in refs)
    assert not any(is_gate_ref(hopper, ref, "linux/arm64") for ref in gate_tags(hopper, "20261127"))


def test_arm64_takes_pypis_wheel_and_refuses_a_source_tree(tmp_path, hopper):
    choice = choose_bnb(hopper, None, lambda: True, "linux/arm64")  # git reachable: still the wheel
    assert choice.source == "wheel" and "linux/arm64 wheel" in choice.note
    with pytest.raises(UsageError, match="--bnb-source cannot be used for linux/arm64"):
        choose_bnb(hopper, tmp_path, lambda: True, "linux/arm64")
    with pytest.raises(UsageError, match="--bnb-source cannot be used with --platform linux/arm64"):
        check_options(BuildOptions(release="r1", bnb_source=tmp_path, platform="linux/arm64"))


def test_platform_picks_targets_and_defaults_to_each_targets_first(matrix, hopper, capsys):
    ampere, gb10 = resolve_target(matrix, "ampere-cu121"), resolve_target(matrix, "gb10-cu130")
    assert hopper.platforms == ("linux/amd64", "linux/arm64") and gb10.platforms == ("linux/arm64",)
    assert ampere.platforms == ("linux/amd64",)  # torch from PyTorch's index: amd64 only
    assert hopper.build_platform(None) == "linux/amd64" and gb10.build_platform(None) == "linux/arm64"
    with pytest.raises(UsageError, match="--platform linux/arm64: ampere-cu121 is built for linux/amd64 only"):
        ampere.build_platform("linux/arm64")
    assert targets_for_platform([hopper, ampere, gb10], "linux/arm64") == [hopper, gb10]
    assert "skipping 1 target(s) not built for it: ampere-cu121" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--platform linux/arm64: ampere-cu121 is not built for it"):
        targets_for_platform([ampere], "linux/arm64")


@pytest.mark.parametrize(("text", "expected"), [("20.10.24+dfsg1", (20, 10)), ("28.2.2", (28, 2)),
                                                ("v19.03.1", (19, 3)), ("18.09", (18, 9)), ("garbage", (0, 0))])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


def test_summary_table_has_one_row_per_target_with_reason():
    results = [BuildResult("a", True, "done", 12.0, "sha256:1", 6_410_000_000, "wheel", tags=("r:a",)),
               BuildResult("b", False, "gate", 3.0, reason="gate failed (cpu mode): probe: [x] broke")]
    table = summary_table(results)
    assert [c.header for c in table.columns] == ["target", "result", "duration", "image size", "reason"]
    assert table.row_count == 2
    assert human_size(6_410_000_000) == "6.41 GB" and human_size(None) == "-"


def test_gate_steps_prove_a_fresh_kernel_and_the_workload_when_declared(hopper):
    names = [name for name, _ in step_commands(False, hopper)]
    assert names[:3] == ["probe", "smoke", "fresh-kernel"]
    assert dict(step_commands(True, hopper))["probe"][-1] == "--require-gpu"
    assert dict(step_commands(False, hopper))["fresh-kernel"] == ("python", "-m", "probe", "fresh-kernel", "--json")
    proving = dataclasses.replace(hopper, workload=dataclasses.replace(hopper.workload, prove=True))
    assert dict(step_commands(False, proving))["workload"] == ("python", "-m", "probe", "workload", "--json")
    assert "workload" not in dict(step_commands(False, dataclasses.replace(hopper, workload=None)))
    assert "fresh-kernel" not in dict(step_commands(False, dataclasses.replace(hopper, warm_triton_cache=False)))


def test_skipped_checks_are_listed_like_failing_ones():
    report = {"checks": [{"name": "gpu.visible", "status": "skip", "reason": "no GPU visible: CPU mode"},
                         {"name": "b", "status": "pass", "reason": "ok"}]}
    assert failing_checks(report, "skip") == ["gpu.visible: no GPU visible: CPU mode"]
