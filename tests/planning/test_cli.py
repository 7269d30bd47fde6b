"""The command surface: exit codes, one-line errors, formats, render --check, the extension hook."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "templates"


def test_targets_ids_and_formats(run_cli) -> None:
    res = run_cli("targets", "--format", "ids")
    ids = res.out.split()
    assert res.code == 0 and "hopper-cu130" in ids and "cdna3-rocm7.1" in ids
    assert json.loads(run_cli("targets", "--format", "github").out)["include"]
    assert json.loads(run_cli("targets", "--format", "bake").out)["target"]
    data = json.loads(run_cli("targets", "--format", "json", "--select", "hopper-cu130").out)
    assert [t["id"] for t in data] == ["hopper-cu130"]
    table = run_cli("targets")
    assert table.code == 0 and "hopper-cu130" in table.out


def test_select_braces_narrow_every_format(run_cli) -> None:
    res = run_cli("targets", "--format", "github", "--select", "{hopper,blackwell}-cu130")
    assert [r["target"] for r in json.loads(res.out)["include"]] == ["blackwell-cu130", "hopper-cu130"]


def test_matrix_option_before_or_after_the_subcommand(run_cli) -> None:
    path = str(REPO / "matrix.yaml")
    assert run_cli("--matrix", path, "targets", "--format", "ids").code == 0
    assert run_cli("targets", "--matrix", path, "--format", "ids").code == 0


def test_why_not(run_cli) -> None:
    res = run_cli("targets", "--why-not")
    assert res.code == 0 and "volta-cu130: refused by rule sm-dropped" in res.out
    data = json.loads(run_cli("targets", "--why-not", "--format", "json", "--select", "blackwell-*").out)
    assert {c["id"] for c in data} == {"blackwell-cu118", "blackwell-cu121", "blackwell-cu124", "blackwell-cu126"}
    assert "volta-cu130\n" in run_cli("targets", "--why-not", "--format", "ids").out
    for fmt in ("bake", "github"):  # refused cells are not targets: a build file of them would be a lie
        res = run_cli("targets", "--why-not", "--format", fmt)
        assert res.code == 2 and res.out == "" and res.err.count("\n") == 1 and f"not {fmt}" in res.err


def test_show_prints_values_and_sources(run_cli, matrix) -> None:
    res = run_cli("show", "hopper-cu130")
    assert res.code == 0
    assert matrix.where("optional") in res.out and matrix.where("warm_triton_cache") in res.out
    for text in ("2.14.1", "3.8.0", "imagefactory/base:bookworm", "3.11", "slim", "0.50.2", "matrix.yaml:",
                 "cuda-toolkit[nvcc"):
        assert text in res.out, text
    shown = json.loads(run_cli("show", "hopper-cu130", "--format", "json").out)
    assert shown["id"] == "hopper-cu130"
    for field, source in shown["provenance"].items():  # every value names the line it came from
        assert re.match(r"matrix\.yaml:\d+ ", source), (field, source)


def test_unknown_target_one_line_with_near_misses(run_cli) -> None:
    res = run_cli("show", "hoper-cu130")
    assert res.code == 2 and res.out == ""
    assert res.err.count("\n") == 1 and res.err.startswith("error: unknown target 'hoper-cu130'; did you mean: hopper-cu130")


def test_refused_target_exit_3(run_cli) -> None:
    res = run_cli("show", "volta-cu130")
    assert res.code == 3 and "refused by rule sm-dropped" in res.err


@pytest.mark.parametrize(
    ("argv", "code", "text"),
    [
        (("explain", "hopper", "cu130"), 0, "allowed: hopper x cu130 x torch 2.14.1 (slim flavor) -> target hopper-cu130"),
        (("explain", "ampere", "cu121", "2.5", "--flavor", "slim"), 3, "refused by rule flavor-torch"),
            (("explain", "ampere", "cu121", "2.4", "--flavor", "slim"), 0, "-> target ampere-cu121"),
        (("explain", "blackwell", "cu121"), 3, "FAIL sm-floor"),
        (("explain", "turing", "cu126", "--dtype", "bf16"), 3, "refused by rule bf16"),
        (("explain", "hopper", "cu128", "2.7.1"), 0, "-> target hopper-cu128-torch2.7-nvidia"),
        # fp16 on hopper is allowed but no cell of the matrix: never the bf16 target hopper-cu130
        (("explain", "hopper", "cu130", "--dtype", "fp16"), 0, "(not a cell of the matrix: add it under cells.extra)"),
    ],
)
def test_explain(run_cli, argv, code, text) -> None:
    res = run_cli(*argv)
    assert res.code == code and text in res.out, res.out + res.err


def test_explain_unknown_names(run_cli) -> None:
    res = run_cli("explain", "hoppper", "cu130")
    assert res.code == 2 and "unknown arch 'hoppper' (did you mean 'hopper'?)" in res.err
    assert "unknown torch '2.99'" in run_cli("explain", "hopper", "cu130", "2.99").err


def test_broken_matrix_exit_2_one_line_per_problem_nothing_written(run_cli, tmp_path: Path) -> None:
    bad = tmp_path / "matrix.yaml"
    text = (REPO / "matrix.yaml").read_text().replace('    driver_floor: "580"', '    drver_floor: "580"')
    bad.write_text(text.replace("image_repo: imagefactory", "image_repo: 7"))
    res = run_cli("--matrix", str(bad), "render", "--templates", str(FIXTURE), "--out", str(tmp_path / "out"))
    assert res.code == 2 and res.out == ""
    lines = res.err.splitlines()
    assert len(lines) >= 2 and all(line.startswith("error: matrix.yaml:") for line in lines)
    assert not (tmp_path / "out").exists()


def test_render_and_check(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    args = ("render", "--templates", str(FIXTURE), "--out", str(out), "--select", "hopper-*")
    res = run_cli(*args)
    assert res.code == 0 and "wrote dockerfiles/hopper-cu130/Dockerfile" in res.out
    assert "0 changed" in run_cli(*args).out
    assert run_cli(*args, "--check").code == 0
    (out / "dockerfiles/hopper-cu130/Dockerfile").write_text("drift\n")
    (out / "dockerfiles/hopper-cu128/Dockerfile").unlink()
    res = run_cli(*args, "--check")
    assert res.code == 1
    assert "error: dockerfiles/hopper-cu130/Dockerfile: changed" in res.err
    assert "error: dockerfiles/hopper-cu128/Dockerfile: missing" in res.err
    assert (out / "dockerfiles/hopper-cu130/Dockerfile").read_text() == "drift\n"  # --check writes nothing


def test_template_error_writes_nothing(run_cli, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(FIXTURE, templates)
    (templates / "partials" / "build.j2").write_text("{% if target.flavor == 'rocm' %}{{ nope }}{% endif %}\n")
    res = run_cli("render", "--templates", str(templates), "--out", str(tmp_path / "out"))
    assert res.code == 2 and "undefined" in res.err and res.err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # the CUDA targets rendered fine, but none was written


def test_usage_errors_are_one_line_exit_2(run_cli) -> None:
    """argparse's usage block never reaches the user: one `error: …` line, exit 2, the near miss."""
    for argv, message in ((("buidl", "hopper-cu130"), "error: unknown command 'buidl' (did you mean 'build'?)"),
                          (("build",), "error: the following arguments are required: TARGET"),
                          (("targets", "--format", "yaml"), "error: --format: invalid choice 'yaml' (choose from table, ids"),
                          (("show", "hopper-cu130", "--bogus"), "error: unrecognized arguments: --bogus")):
        res = run_cli(*argv)
        assert (res.code, res.out, res.err.count("\n")) == (2, "", 1), (argv, res)
        assert res.err.startswith(message), res.err


def test_help_exits_0(run_cli) -> None:
    res = run_cli("push", "--help")
    assert res.code == 0 and "--docker" in res.out and "--reports-dir" in res.out


def test_shared_options_are_declared_once_and_taken_by_each_command() -> None:
    """--matrix, --docker, --release, --reports-dir mean the same on every command that takes them."""
    from imagefactory.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    takes = {name: {opt for action in sub._actions for opt in action.option_strings} for name, sub in commands.items()}
    for name in ("build", "gate", "push"):
        assert {"--matrix", "--docker", "--release", "--reports-dir"} <= takes[name], name
    assert "--docker" in takes["bootstrap"]
    helps = {action.help for sub in commands.values() for action in sub._actions if "--matrix" in action.option_strings}
    assert len(helps) == 1, helps


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "imagefactory", "show", "hoper-cu130"], capture_output=True,
                          text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "did you mean: hopper-cu130" in done.stderr


@pytest.fixture
def nox() -> Path:
    path = Path(sys.executable).parent / "nox"
    if not path.exists():
        pytest.skip("nox not installed in this interpreter's environment")
    return path


def test_nox_lists_one_build_session_per_target(nox: Path) -> None:
    done = subprocess.run([str(nox), "-l"], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("build-ampere-cu126", "build-hopper-cu130", "build-blackwell-cu128", "build-cdna3-rocm7.1",
                 "gate-hopper-cu130", "push-hopper-cu130", "build-all", "bootstrap-base", "render", "tests", "lint"):
        assert re.search(rf"^[*-] {re.escape(name)}\b.* -> \S", done.stdout, re.M), name


def test_nox_session_typo_names_the_near_misses(nox: Path) -> None:
    done = subprocess.run([str(nox), "-s", "build-hoper-cu130"], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=False)
    assert done.returncode == 3  # nox: "Sessions not found"
    assert "build-hoper-cu130: unknown target 'hoper-cu130'; did you mean: hopper-cu130" in done.stderr, done.stderr


def test_make_help_lists_the_wrappers() -> None:
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    done = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 0
    for name in ("venv", "render", "check", "test", "build/%", "gate/%", "push/%", "bootstrap"):
        assert re.search(rf"^  {re.escape(name)}\s+\S", done.stdout, re.M), name


def test_render_into_an_unwritable_place_is_one_line(run_cli, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    res = run_cli("render", "--templates", str(FIXTURE), "--out", str(not_a_dir), "--select", "hopper-cu130")
    assert res.code == 1 and res.err.count("\n") == 1, res.err
    assert res.err.startswith(f"error: {not_a_dir}: cannot write: ")


def test_a_dockerfile_that_is_not_utf8_counts_as_changed(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "dockerfiles/hopper-cu130/Dockerfile"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe")
    args = ("render", "--templates", str(FIXTURE), "--out", str(tmp_path), "--select", "hopper-cu130")
    res = run_cli(*args, "--check")
    assert res.code == 1 and "error: dockerfiles/hopper-cu130/Dockerfile: changed" in res.err
    assert run_cli(*args).code == 0 and run_cli(*args, "--check").code == 0
