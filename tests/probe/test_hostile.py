"""Hostile inputs to `python -m probe` (issue 10): one line, exit 2, never a traceback or a dropped check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from probe import cli, expect
from probe.results import Status
from tests.probe.conftest import fake_detection


@pytest.mark.parametrize("size", ["1e309", "1e99999", "9" * 400, "2000000t", "1e16"])
def test_model_size_out_of_range_is_a_usage_error(cpu_host, capsys, size):
    assert cli.main(["--model-size", size]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probe: error: --model-size") and "Traceback" not in err[0]


def test_model_size_overflow_in_a_real_process():
    done = subprocess.run([sys.executable, "-m", "probe", "--model-size", "1e309"], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["on", "maybe", "2", "y", "enabled"])
def test_warm_cache_expectation_must_be_a_switch(cpu_host, capsys, monkeypatch, value):
    """`on`/`maybe` used to drop the warm-cache check without a word."""
    monkeypatch.setenv("PROBE_EXPECT_WARM_CACHE", value)
    assert cli.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PROBE_EXPECT_WARM_CACHE" in err[0]
    monkeypatch.delenv("PROBE_EXPECT_WARM_CACHE")
    assert cli.main(["--expect", f"warm_cache={value}"]) == 2


@pytest.mark.parametrize("value,declared", [("1", True), ("TRUE", True), ("yes", True), ("0", False), ("no", False)])
def test_warm_cache_switch_values(value, declared):
    assert expect.declares_warm_cache(expect.parse([], {"PROBE_EXPECT_WARM_CACHE": value})) is declared


def _target_check(declared: str, environ: dict[str, str], **detection):
    checks = expect.check({"target": declared}, fake_detection(**detection), environ)
    return next(c for c in checks if c.name == "expect.target")


def test_expect_target_compares_with_the_image_declaration():
    """The gate passes `--expect target=<id>`; an image built for another target says otherwise."""
    check = _target_check("hopper-cu130", {"PROBE_EXPECT_TARGET": "ampere-cu130"})
    assert check.status is Status.FAIL and "ampere-cu130" in check.reason


def test_expect_target_compares_the_toolkit_with_torch_build():
    assert _target_check("hopper-cu130", {}, cuda="13.0").status is Status.PASS
    assert _target_check("hopper-cu130", {"PROBE_EXPECT_TARGET": "hopper-cu130"}, cuda="13.0").status is Status.PASS
    wrong = _target_check("hopper-cu128", {}, cuda="13.0")
    assert wrong.status is Status.FAIL and "CUDA 12.8" in wrong.reason
    assert _target_check("hopper-cu130", {}, torch=False).status is Status.FAIL
    assert _target_check("nonsense", {}).status is Status.FAIL
