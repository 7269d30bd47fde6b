"""The probe against planning: what matrix.yaml declares for each image must be what the probe accepts and decides."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefactory.plan.expand import all_targets
from imagefactory.plan.matrix import load_matrix
from probe import expect
from probe.decide import Hardware, choose_dtype, choose_fp8
from probe.select import candidates_from_tags

MATRIX = load_matrix(Path(__file__).resolve().parents[2] / "matrix.yaml")


@pytest.mark.parametrize("target", all_targets(MATRIX), ids=lambda t: t.id)
def test_every_image_gate_accepts_its_declared_identity(target):
    """An image sets PROBE_EXPECT_* from planning; an unknown key or dtype would fail every gate with exit 2."""
    expected = expect.parse([], dict(target.expect_env))
    assert set(expected) == {name.removeprefix(expect.ENV_PREFIX).lower() for name in target.expect_env}
    assert expected["dtype"].lower() in expect.DTYPES


@pytest.mark.parametrize("arch", MATRIX.arches.values(), ids=lambda a: a.name)
def test_declared_capabilities_agree_with_the_decisions(arch):
    """matrix.yaml states bf16/fp8 per family; the probe derives them from the SM or gfx it finds."""
    for chip in arch.sms or arch.gfx:
        if arch.vendor == "nvidia":
            hw = Hardware("nvidia", capability=tuple(int(part) for part in chip.split(".")))
        else:
            hw = Hardware("amd", gfx=chip)
        assert (choose_dtype(hw).value == "bfloat16") == ("bf16" in arch.capabilities), chip
        assert choose_fp8(hw).value == ("fp8" in arch.capabilities), chip


def test_select_recognises_every_target_by_its_tags():
    """`probe select --repo` knows targets only from tag names (its TARGET_ID mirrors planning's id format)."""
    targets = all_targets(MATRIX)
    by_id = {c.target_id: c for c in candidates_from_tags([tag for t in targets for tag in t.tags])}
    assert set(by_id) == {t.id for t in targets}
    for t in targets:
        assert set(by_id[t.id].floating_tags) == set(t.tags)
        assert by_id[t.id].sms == (t.sms if t.arch.vendor == "nvidia" else ())
