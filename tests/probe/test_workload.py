"""The Unsloth workload: shapes file, warm plan, CLI usage errors; with torch + triton + unsloth installed, a CPU
warm-up and its replay; with a GPU, the QLoRA run on a cache warmed with the GPU hidden."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from probe import unsloth_warm
from probe.workload import SHAPES_FILE, ModelShape, ShapesError, load_shapes, pick

REPO = Path(__file__).resolve().parents[2]
HAS_STACK = all(importlib.util.find_spec(n) for n in ("torch", "triton", "unsloth", "unsloth_zoo", "bitsandbytes"))


def _probe(*args: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "probe", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "shapes.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


GOOD = {"name": "llama-3.2-1b", "hidden": 2048, "intermediate": 8192, "heads": 32, "kv_heads": 8, "head_dim": 64,
        "vocab": 128256, "rms_eps": 1e-05, "act": "swiglu"}


def test_declared_shapes_load_with_real_config_values() -> None:
    shapes = {s.name: s for s in load_shapes()}
    assert len(shapes) >= 15
    assert shapes["llama-3.1-8b"] == ModelShape("llama-3.1-8b", 4096, 14336, 32, 8, 128, 128256, 1e-05, "swiglu")
    assert shapes["qwen3-0.6b"].qk_norm and shapes["qwen3-0.6b"].family == "qwen3"
    assert shapes["gemma-2-2b"].gemma_norm and shapes["gemma-2-2b"].act == "geglu"
    assert not shapes["qwen2.5-0.5b"].qk_norm and shapes["qwen2.5-0.5b"].family == "qwen2"
    assert json.loads(SHAPES_FILE.read_text())["generated_from"] == "matrix.yaml"


@pytest.mark.parametrize("doc,message", [
    ("{not json", "not JSON"),
    ({"shapes": []}, "non-empty list"),
    ({"shapes": [GOOD], "extra": 1}, "unknown top-level key"),
    ({"shapes": [{k: v for k, v in GOOD.items() if k != "vocab"}]}, "missing 'vocab'"),
    ({"shapes": [GOOD | {"colour": "red"}]}, "unknown key 'colour'"),
    ({"shapes": [GOOD | {"hidden": -1}]}, "hidden must be an integer"),
    ({"shapes": [GOOD | {"hidden": True}]}, "hidden must be an integer"),
    ({"shapes": [GOOD | {"hidden": 2048.0}]}, "hidden must be an integer"),
    ({"shapes": [GOOD | {"rms_eps": "1e-5"}]}, "rms_eps"),
    ({"shapes": [GOOD | {"act": "relu"}]}, "act must be one of"),
    ({"shapes": [GOOD | {"kv_heads": 5}]}, "multiple of kv_heads"),
    ({"shapes": [GOOD | {"head_dim": 63}]}, "head_dim must be even"),
    ({"shapes": [GOOD | {"name": "../etc"}]}, "name must be"),
    ({"shapes": [GOOD, GOOD]}, "duplicate name"),
    ({"shapes": ["llama"]}, "not an object"),
])
def test_hostile_shapes_files_are_one_line_errors(tmp_path: Path, doc: object, message: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(ShapesError, match=message) as err:
        load_shapes(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_bad_shapes_file_exits_2_before_touching_anything(tmp_path: Path) -> None:
    path = _write(tmp_path, {"shapes": [GOOD | {"act": "relu"}]})
    cache = tmp_path / "cache"
    done = _probe("warm", "--sm", "90", "--workload", "unsloth", "--shapes", str(path), "--cache-dir", str(cache))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "act must be one of" in done.stderr
    assert not cache.exists()


@pytest.mark.parametrize("args", [["warm", "--sm", "90", "--check"], ["workload", "--steps", "3"],
                                  ["warm", "--sm", "90,89", "--workload", "unsloth"],
                                  ["workload", "--shape", "no-such-model"], ["warm", "--sm", "90", "--workload", "x"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = _probe(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)


def test_unknown_shape_name_is_named(tmp_path: Path) -> None:
    with pytest.raises(ShapesError, match="no shape 'x'"):
        pick(load_shapes(), ["x"])


def test_plan_covers_both_token_parities_and_the_model_family() -> None:
    shapes = {s.name: s for s in load_shapes()}
    llama = unsloth_warm.plan(shapes["llama-3.2-1b"])
    assert {n % 16 == 0 for _step, n in llama} == {True, False}
    assert {step for step, _n in llama} == {"rms_norm", "rope_with_indices", "rope_positions", "nf4_dequant",
                                             "swiglu", "fused_linear_ce"}
    assert "qk_norm_rope" in {step for step, _n in unsloth_warm.plan(shapes["qwen3-8b"])}
    assert "geglu" in {step for step, _n in unsloth_warm.plan(shapes["gemma-3-1b"])}
    gemma = unsloth_warm.expected_kernels(shapes["gemma-2-9b"])
    assert gemma >= {"_approx_forward_kernel", "_rope_embedding_QK", "_nf4_dequant_kernel", "_fl_backward_kernel",
                     "_gemma_rms_layernorm_forward", "_rms_layernorm_backward"}  # Gemma's norm: its own forward kernel
    assert "_rms_layernorm_forward" not in gemma


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is not None, reason="unsloth is installed here")
def test_workload_without_unsloth_fails_and_says_what_is_missing() -> None:
    done = _probe("workload", "--json")
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    installed = next(c for c in doc["checks"] if c["name"] == "workload.installed")
    assert installed["status"] == "fail" and "unsloth" in installed["reason"]
    assert doc["command"] == "workload"


@pytest.mark.skipif(not HAS_STACK, reason="needs torch, triton, bitsandbytes, unsloth and unsloth_zoo")
def test_cpu_warm_then_replay_hits_everything(tmp_path: Path) -> None:
    shapes = _write(tmp_path, {"generated_from": "test", "shapes": [GOOD]})
    cache = tmp_path / "cache"
    hidden = {"CUDA_VISIBLE_DEVICES": ""}
    warm = _probe("warm", "--sm", "90", "--workload", "unsloth", "--shapes", str(shapes), "--cache-dir", str(cache),
                  "--json", env=hidden)
    assert warm.returncode == 0, warm.stderr[-2000:]
    report = json.loads(warm.stdout)["reports"][0]
    assert report["compiled"] >= 12 and report["error"] is None
    check = _probe("warm", "--sm", "90", "--workload", "unsloth", "--shapes", str(shapes), "--cache-dir", str(cache),
                   "--check", "--json", env=hidden)
    assert check.returncode == 0, check.stderr[-2000:]
    replay = json.loads(check.stdout)["reports"][0]
    assert replay["compiled"] == 0 and replay["modules_built"] == 0 and replay["new_files"] == 0
    # a cache missing one of Unsloth's kernels fails the replay, naming it
    victim = next(p for p in cache.iterdir() if (p / "_fg_kernel.json").exists())
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    bad = _probe("warm", "--sm", "90", "--workload", "unsloth", "--shapes", str(shapes), "--cache-dir", str(cache),
                 "--check", env=hidden)
    assert bad.returncode == 1 and "_fg_kernel" in bad.stderr


@pytest.mark.gpu
def test_qlora_on_a_cache_warmed_with_the_gpu_hidden_compiles_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    warm = _probe("warm", "--sm", os.environ.get("GPU_SM", "90"), "--workload", "unsloth", "--cache-dir", str(cache),
                  "--shapes", str(_write(tmp_path, {"shapes": [GOOD]})), env={"CUDA_VISIBLE_DEVICES": ""})
    assert warm.returncode == 0, warm.stderr[-2000:]
    run = _probe("workload", "--shape", "llama-3.2-1b", "--steps", "5", "--json",
                 env={"TRITON_CACHE_DIR": str(cache), "TRITON_LIBCUDA_PATH": str(cache / "imagefactory-stub")})
    doc = json.loads(run.stdout)
    check = next(c for c in doc["checks"] if c["name"] == "workload.qlora.llama-3.2-1b")
    assert check["status"] == "pass", check
    assert check["numbers"]["total_compiles"] == 0
