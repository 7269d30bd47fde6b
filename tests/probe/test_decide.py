"""The decision tree over a table of GPUs, and the memory plan."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.decide import Hardware, decide, hardware_from, parse_model_size, plan_memory
from probe.shapes import dtype_for_sm
from tests.probe.conftest import fake_detection, h100

GIB = 1024


def nv(name, cc, gib, **pkgs):
    return Hardware("nvidia", name, cc, None, gib * GIB, gib * GIB - 1024, **pkgs)


TABLE = [
    # hardware, dtype, tf32, attention (nothing extra installed), fp8
    (nv("Tesla V100-SXM2-32GB", (7, 0), 32), "float16", False, "sdpa", False),
    (nv("Tesla T4", (7, 5), 16), "float16", False, "sdpa", False),
    (nv("NVIDIA A100-SXM4-80GB", (8, 0), 80), "bfloat16", True, "sdpa", False),
    (nv("NVIDIA GeForce RTX 4090", (8, 9), 24), "bfloat16", True, "sdpa", True),
    (nv("NVIDIA H100 80GB HBM3", (9, 0), 80), "bfloat16", True, "sdpa", True),
    (nv("NVIDIA B200", (10, 0), 180), "bfloat16", True, "sdpa", True),
    (nv("NVIDIA GeForce RTX 5090", (12, 0), 32), "bfloat16", True, "sdpa", True),
    (Hardware("amd", "AMD Instinct MI300X", None, "gfx942", 192 * GIB, 190 * GIB), "bfloat16", False, "sdpa", True),
    (Hardware("none"), "float32", False, "sdpa", False),
]


@pytest.mark.parametrize("hw,dtype,tf32,attention,fp8", TABLE, ids=[row[0].name or "none" for row in TABLE])
def test_decision_table(hw, dtype, tf32, attention, fp8):
    d = decide(hw)
    assert (d.dtype.value, d.tf32.value, d.attention.value, d.fp8.value) == (dtype, tf32, attention, fp8)
    assert all(c.reason for c in (d.dtype, d.tf32, d.attention, d.fp8))
    assert d.memory is None


@pytest.mark.parametrize("cc,pkgs,expected", [
    ((9, 0), {"flash_attn_3": "3.0.0", "flash_attn": "2.8.3"}, "flash_attention_3"),
    ((9, 0), {"flash_attn": "2.8.3"}, "flash_attention_2"),
    ((8, 0), {"flash_attn_3": "3.0.0", "flash_attn": "2.8.3"}, "flash_attention_2"),  # FA3 is Hopper-only
    ((8, 6), {"flash_attn": "2.8.3", "xformers": "0.0.30"}, "flash_attention_2"),
    ((7, 5), {"flash_attn": "2.8.3", "xformers": "0.0.30"}, "xformers"),  # FA2 needs 8.0+
    ((7, 5), {"flash_attn": "2.8.3"}, "sdpa"),
])
def test_attention_backend(cc, pkgs, expected):
    assert decide(nv("gpu", cc, 24, **pkgs)).attention.value == expected


def test_mi300x_with_rocm_flash_attention():
    hw = Hardware("amd", "MI300X", None, "gfx942", 192 * GIB, 190 * GIB, flash_attn="2.7.4")
    assert decide(hw).attention.value == "flash_attention_2"


@pytest.mark.parametrize("text,params", [("8b", 8_000_000_000), ("0.5B", 500_000_000), ("125m", 125_000_000),
                                         ("7e9", 7_000_000_000), ("1000", 1000)])
def test_parse_model_size(text, params):
    assert parse_model_size(text) == params


@pytest.mark.parametrize("text", ["", "eight", "8x", "-1b", "0"])
def test_parse_model_size_rejects(text):
    with pytest.raises(ValueError):
        parse_model_size(text)


def test_small_gpu_gets_qlora_settings_big_gpu_does_not():
    t4 = plan_memory(parse_model_size("8b"), nv("T4", (7, 5), 16))
    assert (t4.load_in_4bit, t4.gradient_checkpointing, t4.fits) == (True, "non-reentrant", True)
    h = plan_memory(parse_model_size("8b"), nv("H100", (9, 0), 80))
    assert (h.load_in_4bit, h.optimizer, h.fits) == (False, "adamw_fused", True)


def test_plan_that_cannot_fit_says_so():
    plan = plan_memory(parse_model_size("405b"), nv("RTX 4090", (8, 9), 24))
    assert not plan.fits and plan.load_in_4bit and plan.optimizer == "adamw_8bit" and plan.per_device_batch == 1
    assert plan.need_mib > plan.free_mib and "does not fit" in plan.reason


@pytest.mark.slow
@given(params=st.integers(10**8, 10**11), free_gib=st.integers(4, 192))
def test_plan_fits_means_it_fits(params, free_gib):
    plan = plan_memory(params, nv("gpu", (9, 0), free_gib))
    if plan.fits:
        assert plan.need_mib <= 0.9 * plan.free_mib + 1
        assert plan.per_device_batch * plan.grad_accumulation >= 16
        assert sum(plan.breakdown_mib.values()) == pytest.approx(plan.need_mib, abs=4)


@pytest.mark.slow
@given(params=st.integers(10**8, 10**11), free_gib=st.integers(4, 96))
def test_more_memory_never_needs_more_compromise(params, free_gib):
    small = plan_memory(params, nv("gpu", (9, 0), free_gib))
    big = plan_memory(params, nv("gpu", (9, 0), free_gib * 2))
    assert big.fits or not small.fits
    assert big.load_in_4bit <= small.load_in_4bit or not small.fits


@pytest.mark.parametrize("sm,dtype", [(70, "float16"), (75, "float16"), (80, "bfloat16"), (90, "bfloat16"),
                                      (100, "bfloat16"), (120, "bfloat16")])
def test_warm_up_compiles_for_the_dtype_the_decisions_pick(sm, dtype):
    assert dtype_for_sm(sm) == dtype


def test_hardware_from_detection_needs_torch_to_see_the_gpu():
    assert hardware_from(fake_detection(gpus=[h100()])).capability == (9, 0)
    assert hardware_from(fake_detection(gpus=[h100()], torch=False)).vendor == "none"
