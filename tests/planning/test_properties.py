"""Property tests: any mutation of a valid matrix.yaml loads as a valid matrix or fails as a clean
ConfigError (every line `matrix.yaml:N: …`), never another exception."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagefactory.errors import ConfigError
from imagefactory.plan.expand import expand
from imagefactory.plan.matrix import parse_matrix

pytestmark = pytest.mark.slow  # hundreds of generated matrices: run with --slow (make test and CI do)

MATRIX_TEXT = (Path(__file__).resolve().parents[2] / "matrix.yaml").read_text(encoding="utf-8")
MATRIX_DATA = yaml.safe_load(MATRIX_TEXT)
PROBLEM_RE = re.compile(r"^matrix\.yaml:\d+: \S")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=False, width=32),
                    st.text(max_size=12), st.sampled_from(["13.0", "cu130", "hopper", "2.14.1", "slim", "9.0", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


PATHS = _paths(MATRIX_DATA)


def _mutate(data: Any, path: tuple, op: str, value: Any) -> Any:
    data = copy.deepcopy(data)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = value
    elif op == "rename" and isinstance(parent, dict):
        parent[f"{last}x"] = parent.pop(last)
    elif op == "add" and isinstance(parent, dict):
        parent[str(value)[:10] or "k"] = value
    return data


def _assert_clean(text: str) -> None:
    try:
        matrix = parse_matrix(text, Path("matrix.yaml"))
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert PROBLEM_RE.match(problem) and "\n" not in problem, problem
        return
    assert expand(matrix).targets  # a matrix that loads has targets, and they resolve


# Fast by default (the suite runs these on every change); `--slow` runs SLOW_EXAMPLES of each.
EXAMPLES = int(os.environ.get("IMAGEFACTORY_HYPOTHESIS_EXAMPLES", "40"))
SLOW_EXAMPLES = 1000
structural = given(path=st.sampled_from(PATHS), op=st.sampled_from(["delete", "replace", "rename", "add"]), value=values)
textual = given(line=st.integers(0, MATRIX_TEXT.count("\n")), junk=st.text(max_size=6),
                op=st.sampled_from(["delete", "insert", "append"]))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@structural
def test_structural_mutations_are_valid_or_clean_errors(path: tuple, op: str, value: Any) -> None:
    _assert_clean(yaml.safe_dump(_mutate(MATRIX_DATA, path, op, value), sort_keys=False))


@pytest.mark.slow
@settings(max_examples=SLOW_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@structural
def test_structural_mutations_many_examples(path: tuple, op: str, value: Any) -> None:
    _assert_clean(yaml.safe_dump(_mutate(MATRIX_DATA, path, op, value), sort_keys=False))


@settings(max_examples=EXAMPLES, deadline=None)
@textual
def test_text_mutations_are_valid_or_clean_errors(line: int, junk: str, op: str) -> None:
    _mutate_text(line, junk, op)


@pytest.mark.slow
@settings(max_examples=SLOW_EXAMPLES, deadline=None)
@textual
def test_text_mutations_many_examples(line: int, junk: str, op: str) -> None:
    _mutate_text(line, junk, op)


def _mutate_text(line: int, junk: str, op: str) -> None:
    lines = MATRIX_TEXT.splitlines()
    if op == "delete" and line < len(lines):
        del lines[line]
    elif op == "insert":
        lines.insert(line, junk)
    elif line < len(lines):
        lines[line] += junk
    _assert_clean("\n".join(lines) + "\n")
