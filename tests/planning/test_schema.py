"""The JSON Schema for matrix.yaml accepts the real file and rejects what the loader rejects."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from imagefactory.errors import ConfigError
from imagefactory.plan.matrix import parse_matrix

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "imagefactory" / "plan" / "matrix.schema.json").read_text())


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


def test_schema_spells_the_vocabulary_as_the_loader_does() -> None:
    """The schema is JSON and cannot import the loader's tables: pin each copy to its original."""
    from imagefactory.plan import matrix as loader
    from imagefactory.plan.model import FLAVORS, TRAIN_DTYPES

    props, defs = SCHEMA["properties"], SCHEMA["$defs"]
    assert set(props) == set(loader.TOP_KEYS)
    assert set(SCHEMA["required"]) == {key for key, required in loader.TOP_KEYS.items() if required}
    assert defs["flavorName"]["enum"] == list(FLAVORS)
    assert defs["nvccSource"]["properties"]["from"]["enum"] == list(loader.NVCC_ORIGINS)
    assert defs["requirement"]["pattern"] == loader.REQUIREMENT_RE.pattern
    assert defs["imageRef"]["pattern"] == loader.IMAGE_REF_RE.pattern
    arch = props["arches"]
    assert arch["propertyNames"]["pattern"] == loader.NAME_RE.pattern
    assert arch["additionalProperties"]["properties"]["capabilities"]["items"]["enum"] == list(loader.CAPABILITIES)
    cell = props["cells"]["properties"]["extra"]["items"]["properties"]
    assert cell["dtype"]["enum"] == list(TRAIN_DTYPES)
