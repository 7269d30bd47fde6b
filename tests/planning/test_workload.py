"""The workload section: Unsloth pinned in every image, the shapes to warm, the runtime compiler, rule workload."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from imagefactory.errors import ConfigError
from imagefactory.plan.expand import all_targets, expand, resolve_target
from imagefactory.plan.model import Matrix
from imagefactory.plan.render import render_target
from imagefactory.plan.workload import SHAPES_FILE, accepts, shapes_file

REPO = Path(__file__).resolve().parents[2]


def _problems(parse, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    problems = list(info.value.problems)
    assert problems and all(re.match(r"^matrix\.yaml:\d+: ", p) and "\n" not in p for p in problems), problems
    return problems


def _line_of(problem: str) -> int:
    return int(problem.split(":")[1])


def test_unsloth_is_in_every_target_its_pins_fit_with_its_version_declared(matrix: Matrix) -> None:
    w = matrix.workload
    assert w is not None and w.name == "unsloth" and w.version == "2026.10.9"
    assert "unsloth_zoo==2026.10.9" in w.requirements
    with_unsloth = [t for t in all_targets(matrix) if accepts(w, t.torch.version, t.python)]
    assert {t.id for t in with_unsloth} >= {"hopper-cu130", "ampere-cu130", "hopper-cu130-torch2.12"}
    for t in with_unsloth:
        assert t.workload == w
        assert t.labels["io.imagefactory.unsloth"] == "2026.10.9"
        assert t.expect_env["PROBE_EXPECT_UNSLOTH"] == "2026.10.9"
        dockerfile = render_target(t)
        assert "unsloth==2026.10.9" in dockerfile and "PROBE_EXPECT_UNSLOTH=\"2026.10.9\"" in dockerfile
        assert 'io.imagefactory.unsloth="2026.10.9"' in dockerfile


def test_workload_is_in_the_shared_venv_stage_and_the_targets_bitsandbytes_replaces_pypis(matrix: Matrix) -> None:
    """Everything but bitsandbytes is installed (and compiled by source hash) before the per-target stage, so
    every target of one toolkit + torch builds the same venv; the payload stage swaps in its own bitsandbytes."""
    text = render_target(resolve_target(matrix, "hopper-cu130"))
    venv = text[text.index("FROM build-os AS venv"):text.index("FROM build-os AS bnb")]
    payload = text[text.index("FROM venv AS payload"):text.index("FROM payload AS warm")]
    unsloth, pinned, compiled = venv.index("unsloth==2026.10.9"), venv.index("bitsandbytes==0.50.2"), venv.index("compileall")
    assert unsloth < compiled and pinned < compiled and "--invalidation-mode unchecked-hash" in venv
    assert "unsloth" not in payload
    assert "pip install --no-index --no-deps --force-reinstall /bnb/*.whl" in payload
    assert "--invalidation-mode unchecked-hash" in payload.split("pip install --no-index", 1)[1]


def test_cells_the_pinned_set_does_not_fit_ship_without_it_and_rule_workload_says_why(matrix: Matrix, run_cli) -> None:
    """Rule workload is a note: such a cell is still a target (its torch and payload fine-tune), built without
    Unsloth, and explain / show name the rule and the reason."""
    target = resolve_target(matrix, "hopper-cu121")  # python 3.10 base, torch <= 2.5
    assert target.workload is None
    assert "io.imagefactory.unsloth" not in target.labels and "PROBE_EXPECT_UNSLOTH" not in target.expect_env
    assert "unsloth" not in render_target(target)
    assert all(r.rule != "workload" for c in expand(matrix).refused for r in c.refusals)
    res = run_cli("explain", "hopper", "cu121")
    assert res.code == 0 and "NOTE workload" in res.out and "unsloth 2026.10.9" in res.out
    res = run_cli("show", "hopper-cu121")
    assert res.code == 0 and "not installed, rule workload" in res.out


def test_runtime_compiler_exactly_where_triton_builds_launchers(matrix: Matrix) -> None:
    seen = set()
    for t in all_targets(matrix):
        old_triton = tuple(int(x) for x in t.triton_version.split(".")[:2]) < (3, 7)
        assert t.runtime_c_compiler is old_triton, t.id
        runtime = render_target(t).split("AS runtime", 1)[1]
        assert ("apt-get install -y --no-install-recommends gcc libc6-dev python3-dev" in runtime) is old_triton, t.id
        seen.add(old_triton)
    assert seen == {True, False}, "the matrix has cells on both sides of triton 3.7"


def test_declared_shapes_are_the_models_real_widths(matrix: Matrix) -> None:
    shapes = {s.name: s for s in matrix.workload.warm_shapes}
    assert {"llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "qwen2.5-0.5b", "qwen2.5-14b", "qwen3-0.6b", "qwen3-14b",
            "mistral-7b-v0.3", "mistral-nemo-12b", "gemma-2-9b", "gemma-3-4b", "phi-4"} <= set(shapes)
    l8 = shapes["llama-3.1-8b"]
    assert (l8.hidden, l8.intermediate, l8.heads, l8.kv_heads, l8.head_dim, l8.vocab, l8.rms_eps, l8.act) == (
        4096, 14336, 32, 8, 128, 128256, 1e-5, "swiglu")
    assert shapes["gemma-2-9b"].act == "geglu" and shapes["gemma-2-9b"].head_dim == 256


def test_rendered_shapes_file_is_committed_and_matches_the_schema(matrix: Matrix) -> None:
    (path, text), = shapes_file(matrix).items()
    assert path == SHAPES_FILE
    assert (REPO / SHAPES_FILE).read_text() == text, "run `python -m imagefactory render`"
    doc = json.loads(text)
    assert doc["generated_from"] == "matrix.yaml" and len(doc["shapes"]) == len(matrix.workload.warm_shapes)
    for shape in doc["shapes"]:
        assert set(shape) == {"name", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "rms_eps", "act"}
        assert all(type(shape[k]) is int for k in ("hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab"))
        assert type(shape["rms_eps"]) is float


def test_render_writes_the_shapes_and_check_finds_drift(run_cli, tmp_path: Path) -> None:
    assert run_cli("render", "--out", str(tmp_path)).code == 0
    written = tmp_path / SHAPES_FILE
    assert json.loads(written.read_text())["shapes"][0]["name"] == "llama-3.2-1b"
    assert run_cli("render", "--check", "--out", str(tmp_path)).code == 0
    written.write_text(written.read_text().replace('"hidden": 2048', '"hidden": 2049', 1))
    res = run_cli("render", "--check", "--out", str(tmp_path))
    assert res.code == 1 and f"{SHAPES_FILE}: changed" in res.err
    written.unlink()
    res = run_cli("render", "--check", "--out", str(tmp_path))
    assert res.code == 1 and f"{SHAPES_FILE}: missing" in res.err


def test_rms_eps_written_without_a_dot_is_one_line_with_the_fix(parse, matrix_text: str) -> None:
    text = matrix_text.replace("rms_eps: 1.0e-5, act: swiglu}", "rms_eps: 1e-5, act: swiglu}", 1)
    problems = _problems(parse, text)
    hit = [p for p in problems if "workload.warm_shapes[0].rms_eps: expected a number, got string '1e-5'" in p]
    assert hit and "write 1.0e-5" in hit[0], problems
    assert "llama-3.2-1b" in text.splitlines()[_line_of(hit[0]) - 1]


@pytest.mark.parametrize(("old", "new", "message"), [
    ("hidden: 2048, intermediate: 8192, heads: 32", "hidden: \"2048\", intermediate: 8192, heads: 32",
     "warm_shapes[0].hidden: expected a whole number, got string '2048'"),
    ("hidden: 2048, intermediate: 8192, heads: 32", "hidden: true, intermediate: 8192, heads: 32",
     "warm_shapes[0].hidden: expected a whole number, got boolean True"),
    ("hidden: 2048, intermediate: 8192, heads: 32", "hidden: 0, intermediate: 8192, heads: 32",
     "warm_shapes[0].hidden: must be between 1 and 2^31-1, got 0"),
    ("heads: 32, kv_heads: 8, head_dim: 64", "heads: 32, kv_heads: 7, head_dim: 64",
     "warm_shapes[0].kv_heads: heads (32) must be a multiple of kv_heads (7)"),
    ("act: geglu}", "act: gelu}", "act: must be one of swiglu, geglu, got 'gelu'"),
    ("{name: llama-3.2-3b,", "{name: llama-3.2-1b,", "warm_shapes[1].name: duplicate shape name 'llama-3.2-1b'"),
    ("  name: unsloth\n", "  name: axolotl\n", "workload.name: must be one of unsloth, got 'axolotl'"),
    ("    - unsloth==2026.10.9\n", "", "workload.requirements: must pin the workload itself (unsloth==VERSION)"),
    ("\n  prove: ", "\n  prove: no-thanks # ", "workload.prove: expected true or false, got string"),
    ('  runtime_compiler_below_triton: "3.7"\n', "  runtime_compiler_below_triton: 3.7\n",
     "runtime_compiler_below_triton: expected a string, got number 3.7"),
    ("  warm_shapes:\n", "  warm_shape:\n", "workload.warm_shape: unknown key 'warm_shape' (did you mean 'warm_shapes'?)"),
])
def test_broken_workload_is_one_line_naming_the_key(parse, matrix_text: str, old: str, new: str, message: str) -> None:
    assert old in matrix_text
    problems = _problems(parse, matrix_text.replace(old, new, 1))
    assert any(message in p for p in problems), problems


def test_a_matrix_without_workload_still_loads(parse, matrix_text: str) -> None:
    start = matrix_text.index("\nworkload:\n")
    end = matrix_text.index("\n# cells:")
    m = parse(matrix_text[:start] + matrix_text[end:])
    assert m.workload is None
    t = resolve_target(m, "hopper-cu130")
    assert t.workload is None and not t.runtime_c_compiler and "io.imagefactory.unsloth" not in t.labels


def test_show_names_the_workload_and_the_runtime_compiler(run_cli, matrix: Matrix) -> None:
    res = run_cli("show", "hopper-cu128")
    assert res.code == 0 and "unsloth 2026.10.9" in res.out and "gcc (triton builds" in res.out
    assert matrix.where("workload", "runtime_compiler_below_triton") in res.out
    assert "none needed" in run_cli("show", "hopper-cu130").out


def test_the_workload_warm_step_runs_once_per_sm(matrix: Matrix) -> None:
    """`probe warm --workload` takes one SM per process (it refuses `--sm 80,86`): multi-SM targets loop."""
    proven = [t for t in all_targets(matrix) if t.workload and t.workload.prove and t.warm_triton_cache]
    assert any(len(t.sm_codes) > 1 for t in proven)  # ampere: 80 and 86
    for target in proven:
        text = render_target(target)
        step = text[text.index("--workload unsloth") - 400:text.index("--workload unsloth")]
        if len(target.sm_codes) == 1:
            assert f"--sm {target.sm_codes[0]} --workload" in text, target.id
        else:
            assert f"for sm in {' '.join(target.sm_codes)}; do" in step and '--sm "$sm"' in step, target.id
        assert not re.search(r"--sm \d+,\d+[^\n]*--workload", text), target.id
