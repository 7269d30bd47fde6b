"""`python -m probe fresh-kernel` with no GPU (needs torch and triton; skipped on a host without them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


def probe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PROBE_EXPECT_", "TRITON_"))}
    return subprocess.run([sys.executable, "-m", "probe", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**clean, "CUDA_VISIBLE_DEVICES": "", **env}, timeout=600)


def test_a_fresh_kernel_compiles_into_a_scratch_copy_and_leaves_the_cache_alone(tmp_path):
    cache = tmp_path / "cache"
    assert probe("warm", "--sm", "90", "--cache-dir", str(cache), env={}).returncode == 0
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    done = probe("fresh-kernel", "--json", env={"TRITON_CACHE_DIR": str(cache),
                                               "TRITON_LIBCUDA_PATH": str(cache / "imagefactory-stub")})
    check = json.loads(done.stdout)["checks"][0]
    assert done.returncode == 0 and check["status"] == "pass", check
    assert check["numbers"]["compiles"] >= 1 and check["numbers"]["sm"] == 90
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before
    again = json.loads(probe("fresh-kernel", "--json", env={"TRITON_CACHE_DIR": str(cache)}).stdout)["checks"][0]
    assert again["numbers"]["compiles"] >= 1, "each run's kernel is new: no cache can hold it"


def test_without_the_warm_steps_stub_it_fails_in_one_line(tmp_path):
    done = probe("fresh-kernel", "--json", env={"TRITON_CACHE_DIR": str(tmp_path / "empty")})
    check = json.loads(done.stdout)["checks"][0]
    assert done.returncode == 1 and check["status"] == "fail" and "imagefactory-stub" in check["reason"]


def test_a_malformed_sm_is_a_usage_error():
    done = probe("fresh-kernel", "--sm", "nine", env={})
    assert done.returncode == 2 and "not an SM" in done.stderr
