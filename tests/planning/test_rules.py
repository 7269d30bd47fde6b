"""Each compatibility rule refuses exactly what it should, with a reason that names it."""

from __future__ import annotations

import dataclasses

import pytest

from imagefactory.plan.model import Matrix
from imagefactory.plan.rules import RULE_NAMES, Candidate, check


def cand(m: Matrix, arch: str, toolkit: str, torch: str, flavor: str, dtype: str | None = None) -> Candidate:
    return Candidate(m.arches[arch], m.toolkits[toolkit], m.torches[torch], m.flavors[flavor], dtype)  # type: ignore[arg-type]


def rules_of(m: Matrix, *args: str | None) -> list[str]:
    return [r.rule for r in check(m, cand(m, *args))]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arch", "toolkit", "torch", "flavor", "refused_by"),
    [
        # SM floors per CUDA version
        ("ada", "cu118", "2.7.1", "nvidia", None),  # sm_89 needs >= 11.8: passes (python 3.10 base: built without Unsloth)
        ("hopper", "cu118", "2.7.1", "nvidia", None),  # sm_90 needs >= 11.8: passes
        ("blackwell", "cu126", "2.11.0", "nvidia", "sm-floor"),  # sm_100/120 need >= 12.8
        ("blackwell", "cu128", "2.11.0", "nvidia", None),
        ("volta", "cu130", "2.14.1", "slim", "sm-dropped"),  # CUDA 13 drops < 7.5
        ("turing", "cu130", "2.14.1", "slim", None),
        # torch x toolkit availability
        ("hopper", "cu128", "2.14.1", "nvidia", "torch-toolkit"),
        ("hopper", "cu121", "2.6.0", "nvidia", "torch-toolkit"),  # 2.6 dropped 12.1
        # slim cannot compile bitsandbytes on CUDA 12.x
        ("ampere", "cu121", "2.5.1", "slim", "flavor-torch"),  # 2.5.1's PyPI build is cu124
        ("ampere", "cu121", "2.4.1", "slim", None),  # PyPI's 2.4.1 is cu121: slim, with the wheel's library
        ("ampere", "cu121", "2.5.1", "nvidia", None),  # compiles (Unsloth's pins need torch >= 2.10: a note)
        ("hopper", "cu130", "2.14.1", "slim", None),  # CUDA 13: nvcc from PyPI
        # ROCm arch x ROCm version
        ("cdna4", "rocm6.4", "2.9.1", "rocm", "rocm-arch"),
        ("cdna4", "rocm7.0", "2.10.0", "rocm", None),
        ("cdna3", "rocm6.2", "2.5.1", "rocm", None),
        ("cdna3", "rocm7.1", "2.11.0", "rocm", None),
        # vendor and flavor
        ("hopper", "rocm6.2", "2.5.1", "rocm", "vendor"),
        ("cdna3", "rocm6.2", "2.5.1", "slim", "flavor-vendor"),
        # bitsandbytes 0.50.2 needs torch >= 2.4 (covered by the matrix: every torch listed qualifies)
    ],
)
def test_rule_table(matrix: Matrix, arch, toolkit, torch, flavor, refused_by) -> None:
    got = rules_of(matrix, arch, toolkit, torch, flavor)
    if refused_by is None:
        assert got == []
    else:
        assert got and got[0] == refused_by, got


def test_bf16_only_where_the_sm_has_it(matrix: Matrix) -> None:
    assert rules_of(matrix, "turing", "cu126", "2.11.0", "nvidia", "bf16") == ["bf16"]
    assert rules_of(matrix, "turing", "cu126", "2.11.0", "nvidia", "fp16") == []
    assert rules_of(matrix, "ampere", "cu126", "2.11.0", "nvidia", "bf16") == []


def test_torch_triton_pairing(matrix: Matrix) -> None:
    bad = dataclasses.replace(matrix.torches["2.14.1"], triton="3.7.1")
    c = Candidate(matrix.arches["hopper"], matrix.toolkits["cu130"], bad, matrix.flavors["slim"], None)
    refusals = check(matrix, c)
    assert [r.rule for r in refusals] == ["torch-triton"]
    assert "pairs with triton 3.8.x" in refusals[0].reason


def test_python_and_payload_rules(matrix: Matrix) -> None:
    # cu124's nvidia base ships python 3.10: the current payload (trl 1.15 needs 3.11) does not
    # apply there, the legacy one does.
    assert rules_of(matrix, "hopper", "cu124", "2.6.0", "nvidia") == []  # payload legacy (and no Unsloth: a note)
    old = dataclasses.replace(matrix.torches["2.4.1"], version="2.3.1", pythons=("3.10",))
    c = Candidate(matrix.arches["hopper"], matrix.toolkits["cu121"], old, matrix.flavors["nvidia"], None)
    assert "bitsandbytes-torch" in [r.rule for r in check(matrix, c)]
    assert "payload" in [r.rule for r in check(matrix, c)]
    py39 = dataclasses.replace(matrix.torches["2.5.1"], pythons=("3.9",))
    c = Candidate(matrix.arches["hopper"], matrix.toolkits["cu121"], py39, matrix.flavors["nvidia"], None)
    assert [r.rule for r in check(matrix, c)] == ["python"]


def test_reasons_are_one_line_and_name_the_rule(matrix: Matrix) -> None:
    for r in check(matrix, cand(matrix, "blackwell", "cu121", "2.5.1", "slim", "bf16")):
        assert r.rule in RULE_NAMES
        assert str(r).startswith(f"refused by rule {r.rule}: ")
        assert "\n" not in str(r)
