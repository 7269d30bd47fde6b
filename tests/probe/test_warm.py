"""Warm-up with no GPU and the warm-cache check (need torch and triton; skipped on a host without them)."""

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


@pytest.fixture(scope="module")
def warmed(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("triton") / "cache"
    done = probe("warm", "--sm", "90", "--cache-dir", str(cache), env={})
    assert done.returncode == 0, done.stderr
    assert "compiled  kernel   rmsnorm_fwd" in done.stdout and "built     module   cuda_utils" in done.stdout
    return cache


def check(cache: Path) -> dict:
    done = probe("--json", env={"TRITON_CACHE_DIR": str(cache), "PROBE_EXPECT_WARM_CACHE": "1",
                                "PROBE_EXPECT_SM": "9.0"})
    doc = json.loads(done.stdout)
    return next(c for c in doc["checks"] if c["name"] == "triton.warm_cache")


def test_warm_cache_check_passes_and_writes_nothing(warmed):
    before = sorted((p, p.stat().st_mtime_ns) for p in warmed.rglob("*"))
    result = check(warmed)
    assert result["status"] == "pass", result["reason"]
    assert result["numbers"]["kernels"] == 6 and result["numbers"]["modules"] == 7
    assert sorted((p, p.stat().st_mtime_ns) for p in warmed.rglob("*")) == before


def test_warming_again_compiles_nothing(warmed):
    done = probe("warm", "--sm", "90", "--cache-dir", str(warmed), env={})
    assert done.returncode == 0 and "compiled" not in done.stdout and "built " not in done.stdout
    assert " 0 new files" in done.stdout


def test_a_missing_host_module_fails_the_check(warmed, tmp_path):
    import shutil

    broken = tmp_path / "cache"
    shutil.copytree(warmed, broken)
    # triton 3.6 has cuda_utils plus one launcher per signature, >= 3.7 only cuda_utils: remove the last one found
    module = sorted(p for p in broken.rglob("*.so") if "imagefactory-stub" not in str(p))[-1]
    module.unlink()
    result = check(broken)
    assert result["status"] == "fail" and ("launcher" in result["reason"] or "cuda_utils" in result["reason"])


def test_a_cache_for_another_sm_fails_the_check(warmed):
    done = probe("--json", env={"TRITON_CACHE_DIR": str(warmed), "PROBE_EXPECT_WARM_CACHE": "1",
                                "PROBE_EXPECT_SM": "8.0"})
    result = next(c for c in json.loads(done.stdout)["checks"] if c["name"] == "triton.warm_cache")
    assert result["status"] == "fail" and "sm_80" in result["reason"]


def test_an_unwarmed_directory_fails_clearly(tmp_path):
    result = check(tmp_path / "empty")
    assert result["status"] == "fail" and "not warmed" in result["reason"]
