"""The JSON Schema for matrix.yaml accepts the real file and rejects what the loader rejects."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from imagefactory.errors import ConfigError
from imagefactory.matrix import parse_matrix

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "imagefactory" / "matrix.schema.json").read_text())


def test_schema_is_valid() -> None:
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
        (("toolkits", "cu130", "version"), 13.0),  # number, not string
        (("toolkits", "cu130", "nvcc", "slim", "from"), "conda"),
        (("arches", "hopper", "sms"), ["9"]),
        (("bitsandbytes", "mode"), "binary"),
        (("cells", "expand"), "some"),
        (("payloads",), []),
        (("torch", "2.14.1", "triton"), "3.8.x"),
    ],
)
def test_schema_and_loader_agree_on_rejections(matrix_data: dict, path: tuple, value) -> None:
    bad = _set(matrix_data, path, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    with pytest.raises(ConfigError):
        parse_matrix(yaml.safe_dump(bad, sort_keys=False), Path("matrix.yaml"))
