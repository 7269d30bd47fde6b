"""Expansion: defaults, ids, the CI target exactly as decided, selection and resolution errors."""

from __future__ import annotations

import pytest
from packaging.version import Version

from imagefactory import immutable_tag, resolve_target, select_targets
from imagefactory.errors import RefusedTargetError, UnknownTargetError, UsageError
from imagefactory.plan.expand import expand, expand_braces
from imagefactory.plan.model import Matrix
from imagefactory.plan.rules import Candidate, check


def test_hopper_cu130_is_exactly_the_ci_target(matrix: Matrix) -> None:
    t = resolve_target(matrix, "hopper-cu130")
    assert (t.flavor, t.torch.version, t.torch.index_url, t.python) == ("slim", "2.14.1", None, "3.11")
    assert t.triton_version.startswith("3.8.") and t.triton_package == "triton"
    assert (t.sms, t.sm_codes, t.cuda_arch_list, t.gfx) == (("9.0",), ("90",), "9.0", ())
    assert (t.toolkit.id, t.toolkit.kind, t.toolkit.version, t.toolkit.driver_floor) == ("cu130", "cuda", "13.0", "580")
    assert (t.base.build, t.base.runtime) == ("imagefactory/base:bookworm-build", "imagefactory/base:bookworm")
    assert t.nvcc == "pypi" and any(p.startswith("cuda-toolkit[nvcc") for p in t.nvcc_packages)
    bnb = t.bitsandbytes
    assert (bnb.version, bnb.mode, bnb.fallback) == ("0.50.2", "source", "wheel")
    assert (bnb.git_url, bnb.git_ref) == ("https://github.com/bitsandbytes-foundation/bitsandbytes", "0.50.2")
    names = {r.split("==")[0] for r in t.payload_requirements}
    assert names == {"peft", "transformers", "accelerate", "trl"}
    assert t.tags == ("hopper-cu130", "hopper-cu130-latest") and t.image_repo == "imagefactory"
    assert immutable_tag(t, "2026.11.0") == "hopper-cu130-torch2.14.1-2026.11.0"
    assert t.expect_env["PROBE_EXPECT_SM"] == "9.0" and t.expect_env["PROBE_EXPECT_CUDA"] == "13.0"
    assert t.expect_env["PROBE_EXPECT_TORCH"] == "2.14.1" and t.expect_env["PROBE_EXPECT_WARM_CACHE"] == "1"
    assert t.labels["io.imagefactory.target"] == "hopper-cu130" and t.is_default


@pytest.mark.parametrize("target_id", ["ampere-cu126", "hopper-cu130", "blackwell-cu128", "cdna3-rocm7.1"])
def test_issue_examples_exist(matrix: Matrix, target_id: str) -> None:
    assert resolve_target(matrix, target_id).id == target_id


def test_default_torch_is_the_newest_compatible_in_the_default_flavor(matrix: Matrix) -> None:
    for t in expand(matrix).targets:
        if not t.is_default:
            continue
        newer = [v for v, tb in matrix.torches.items()
                 if t.toolkit.id in tb.toolkits and Version(v) > Version(t.torch.version)]
        for version in newer:  # every newer torch for this cell must be refused in its flavor
            assert check(matrix, Candidate(t.arch, t.toolkit, matrix.torches[version], matrix.flavors[t.flavor], None)), (t.id, version)
        earlier = t.toolkit.flavors[: t.toolkit.flavors.index(t.flavor)]
        for flavor in earlier:  # and every preferred flavor refused with every torch
            assert all(check(matrix, Candidate(t.arch, t.toolkit, tb, matrix.flavors[flavor], None))
                       for tb in matrix.torches.values() if t.toolkit.id in tb.toolkits), (t.id, flavor)


def test_slim_is_the_default_wherever_pypi_has_the_toolkits_torch(matrix: Matrix) -> None:
    # slim takes only PyPI's own torch build (rule flavor-torch); 12.x has no PyPI nvcc, so its bitsandbytes is
    # compiled with Debian's nvcc where Debian has that CUDA (12.4: trixie's), else it is the wheel's library
    # (rule slim-nvcc allows that: the wheel is the fallback)
    pypi_toolkits = {tb.pypi_toolkit for tb in matrix.torches.values()}
    by_id = expand(matrix).by_id()
    for t in expand(matrix).targets:
        if t.toolkit.kind == "cuda" and t.is_default:
            assert t.flavor == ("slim" if t.toolkit.id in pypi_toolkits else "nvidia"), t.id
            compiled = t.flavor == "nvidia" or t.toolkit.version.startswith("13.") or t.toolkit.version == "12.4"
            assert t.bnb_mode == ("source" if compiled else "wheel"), t.id
            assert (t.nvcc == "debian") == (t.flavor == "slim" and t.toolkit.version == "12.4"), t.id
            if t.flavor == "slim":
                assert t.torch.index_url is None
                if "linux/amd64" in t.platforms:  # nvidia stays selectable (it is built for the host's platform only)
                    assert by_id[f"{t.id}-nvidia"].flavor == "nvidia" and by_id[f"{t.id}-nvidia"].platforms == ("linux/amd64",)
                else:  # gb10 (DGX Spark): arm64 machines only, so no nvidia-flavor image, rule platform says why
                    assert f"{t.id}-nvidia" not in by_id
        if t.toolkit.kind == "rocm":
            assert t.flavor == "rocm" and t.nvcc == "hipcc" and t.gfx and not t.sms
    cu124 = by_id["ampere-cu124"]
    assert (cu124.nvcc_base, cu124.nvcc_apt, cu124.base.build) == (
        "imagefactory/base:trixie-build", ("nvidia-cuda-toolkit=12.4.131~12.4.1-2", "g++-12=12.4.0-5"), "imagefactory/base:bookworm-build")
    assert cu124.nvcc_host_compiler == "g++-12"
    assert cu124.labels["io.imagefactory.nvcc"].startswith("debian nvidia-cuda-toolkit=12.4.")
    cu121 = by_id["ampere-cu121"]
    assert (cu121.torch.version, cu121.payload_name, cu121.labels["io.imagefactory.bitsandbytes-library"]) == (
        "2.4.1", "legacy", "libbitsandbytes_cuda121.so")


def test_suffix_ids_and_their_meaning(matrix: Matrix) -> None:
    t = resolve_target(matrix, "hopper-cu128-torch2.7-nvidia")
    assert t.torch.version == "2.7.1" and t.flavor == "nvidia" and not t.is_default
    t = resolve_target(matrix, "hopper-cu130-nvidia")
    assert t.flavor == "nvidia" and t.nvcc == "base" and t.base.build.startswith("nvidia/cuda:13.0")


def test_every_id_parses_back_to_its_parts(matrix: Matrix) -> None:
    """Planning makes ids and `probe select` parses them with one grammar (probe/tags.py)."""
    from probe import tags

    for t in expand(matrix).targets:
        parsed = tags.parse_target_id(t.id)
        assert parsed is not None, t.id
        assert (parsed.arch, parsed.toolkit) == (t.arch.name, t.toolkit.id)
        assert tags.make_target_id(*parsed) == t.id
        assert parsed.flavor in (None, t.flavor) and parsed.dtype in (None, t.train_dtype)
        assert parsed.torch in (None, t.torch.minor)


def test_ids_are_unique_and_sorted(matrix: Matrix) -> None:
    ids = [t.id for t in expand(matrix).targets]
    assert ids == sorted(set(ids))


def test_turing_trains_in_fp16(matrix: Matrix) -> None:
    assert resolve_target(matrix, "turing-cu126").train_dtype == "fp16"
    assert resolve_target(matrix, "ampere-cu126").train_dtype == "bf16"


def test_why_not_lists_refused_cells_with_rules(matrix: Matrix) -> None:
    refused = {c.id: c for c in expand(matrix).refused}
    assert refused["volta-cu130"].refusals[0].rule == "sm-dropped"
    assert refused["blackwell-cu121"].refusals[0].rule == "sm-floor"
    assert refused["cdna4-rocm6.2"].refusals[0].rule == "rocm-arch"
    assert not set(refused) & {t.id for t in expand(matrix).targets}


def test_unknown_target_lists_near_misses(matrix: Matrix) -> None:
    with pytest.raises(UnknownTargetError) as info:
        resolve_target(matrix, "hoper-cu130")
    assert "did you mean: hopper-cu130" in info.value.message
    assert info.value.exit_code == 2


def test_refused_target_by_id_names_the_rule(matrix: Matrix) -> None:
    with pytest.raises(RefusedTargetError) as info:
        resolve_target(matrix, "volta-cu130")
    assert "refused by rule sm-dropped" in info.value.message
    with pytest.raises(RefusedTargetError, match="rule sm-floor"):
        resolve_target(matrix, "blackwell-cu121")
    with pytest.raises(RefusedTargetError, match="rule torch-toolkit"):
        resolve_target(matrix, "hopper-cu128-torch2.14")
    with pytest.raises(RefusedTargetError, match="rule vendor"):
        resolve_target(matrix, "hopper-rocm6.2")


def test_compatible_but_undeclared_cell(matrix: Matrix) -> None:
    with pytest.raises(UnknownTargetError, match="compatible, but not a cell"):
        resolve_target(matrix, "ampere-cu128-torch2.10")


def test_brace_expansion() -> None:
    assert expand_braces("hopper-{cu128,cu130}") == ["hopper-cu128", "hopper-cu130"]
    assert expand_braces("{a,b}-{c,d}") == ["a-c", "a-d", "b-c", "b-d"]
    assert expand_braces("plain") == ["plain"]
    assert expand_braces("{a,{b,c}}x") == ["ax", "bx", "cx"] and expand_braces("{") == ["{"]


def test_brace_expansion_is_capped_and_never_recursive(matrix: Matrix) -> None:
    """Issue 10 class 14: `{a,b}` x22 was minutes; 1100 nested braces a RecursionError."""
    import time

    started = time.monotonic()
    with pytest.raises(UsageError, match="more than 1000 patterns"):
        select_targets(matrix, "{a,b}" * 22)
    assert time.monotonic() - started < 2
    deep = "{" * 1100 + "hopper" + "}" * 1100 + "-cu130"
    assert [t.id for t in select_targets(matrix, deep)] == ["hopper-cu130"]


def test_select(matrix: Matrix) -> None:
    ids = [t.id for t in select_targets(matrix, "hopper-*")]
    assert "hopper-cu130" in ids and all(i.startswith("hopper-") for i in ids)
    assert [t.id for t in select_targets(matrix, "{hopper,blackwell}-cu13?")] == ["blackwell-cu130", "hopper-cu130"]
    assert len(select_targets(matrix, "*")) == len(expand(matrix).targets)
    with pytest.raises(UnknownTargetError, match="no target matches 'hopper-cu999\\*'"):
        select_targets(matrix, "hopper-cu999*")
    with pytest.raises(RefusedTargetError):
        select_targets(matrix, "volta-cu130")


def test_arm64_only_where_the_machines_are_grace_and_pypi_has_the_cuda_torch_for_aarch64(matrix: Matrix) -> None:
    by_id = expand(matrix).by_id()
    assert by_id["hopper-cu130"].platforms == ("linux/amd64", "linux/arm64")  # GH200; torch 2.14.1 aarch64 is cu130
    assert by_id["blackwell-cu130"].platforms == ("linux/amd64", "linux/arm64")  # GB200
    assert by_id["ampere-cu130"].platforms == ("linux/amd64",)  # no Grace machine with an Ampere GPU
    assert by_id["hopper-cu128"].platforms == ("linux/amd64",)  # torch 2.10.0's aarch64 wheel is a CPU build
    assert by_id["hopper-cu130"].labels["io.imagefactory.platforms"] == "linux/amd64,linux/arm64"
