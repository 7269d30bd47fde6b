"""The smoke suite in CPU mode, as the image gate runs it without a GPU (needs torch, transformers, peft)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
ROOT = Path(__file__).resolve().parents[2]


def test_cpu_smoke_learns_and_states_its_skips():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "probe", "smoke", "--json"], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=600)
    doc = json.loads(done.stdout)
    jsonschema.validate(doc, json.loads((ROOT / "probe" / "schema.json").read_text()))
    assert done.returncode == 0, doc["checks"]
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["smoke.training"]["status"] == "pass"
    assert checks["smoke.training"]["numbers"]["drop"] >= 0.3
    assert checks["smoke.kernels_in_step"]["status"] == "skip" and "no GPU" in checks["smoke.kernels_in_step"]["reason"]
    assert doc["smoke"]["dtype"] == "float32" and doc["smoke"]["device"] == "cpu"
