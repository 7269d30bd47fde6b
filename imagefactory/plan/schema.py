r"""The shape of matrix.yaml, declared once: keys, which are required, value patterns and choices.

The loader (imagefactory/plan/matrix.py) reads its key tables and patterns from here, and
`imagefactory render` writes imagefactory/plan/matrix.schema.json from `json_schema()` for editors
and other tools (`render --check` fails when that file drifts). What JSON Schema cannot say (cross
references, rules, "did you mean") is the loader's alone.

Patterns match a whole value: the loader uses `re.fullmatch`, the JSON file anchors them with `^(?:…)(?![\s\S])`
(`$` would let a trailing newline pass in Python's `re`, which the jsonschema package uses). Every value
that reaches a Dockerfile or a shell has a strict pattern.
To add a section: declare its shape here, add it to ROOT, then read it in matrix.py.
"""

from __future__ import annotations

import json
from typing import Any

from imagefactory.plan.platforms import PLATFORMS
from probe.tags import ARCH_NAME_PATTERN, FLAVORS, TOOLKIT_ID_PATTERN, TRAIN_DTYPES

Schema = dict[str, Any]

# ---- value patterns (whole value) ----------------------------------------------------------------
NAME = ARCH_NAME_PATTERN  # arch and payload names
TOOLKIT_ID = TOOLKIT_ID_PATTERN
MAJOR_MINOR = r"[0-9]+\.[0-9]+"
VERSION = r"[0-9]+(\.[0-9]+)*"
DRIVER = r"[0-9]{3}(\.[0-9]+)*"
GFX = r"gfx[0-9a-f]{3,4}"
IMAGE_REPO = r"[a-z0-9][a-z0-9._/-]{0,199}"
IMAGE_REF = r"[a-z0-9][a-z0-9._/-]{0,199}(:[A-Za-z0-9._-]{1,128})?(@sha256:[0-9a-f]{64})?"
REQUIREMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9_,.-]+\])?==[0-9][0-9A-Za-z.+!-]*"
# A Debian package pinned to one version, as apt-get takes it: nvidia-cuda-toolkit=12.4.131~12.4.1-2
APT_PIN = r"[a-z0-9][a-z0-9.+-]{1,99}=[0-9][A-Za-z0-9.+~-]{0,99}"
HOST_COMPILER = r"(g\+\+|clang\+\+)-[0-9]{1,2}"  # a versioned C++ compiler command: g++-12
# `{toolkit}` is the only brace allowed: no other format field, no attribute access, no stray brace.
INDEX_URL = r"(?=.*\{toolkit\})https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/([A-Za-z0-9._~%+-]|\{toolkit\})*)*"
GIT_URL = r"(https|git|ssh)://([A-Za-z0-9._~-]+@)?[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%+-]+)+/?"
GIT_REF = r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._+-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._+-]{0,99}){0,9}"
# Free text is one line: no control character and no Unicode line or paragraph separator.
_NOT_TEXT = r"\x00-\x1f\x7f\x85\u2028\u2029"
_TEXT = f"[^{_NOT_TEXT}]"
# Descriptions land in LABELs: no backslash either (hadolint cannot parse the `\\\"` a backslash before a quote
# renders to, though Docker can; a description has no use for one).
ONE_LINE = f"[^{_NOT_TEXT}\\\\]{{0,200}}"
SPECIFIER = _TEXT + "{1,200}"  # parsed by packaging.specifiers on top

# ---- choices -------------------------------------------------------------------------------------
VENDORS = ("nvidia", "amd")
TOOLKIT_KINDS = ("cuda", "rocm")
CAPABILITIES = ("bf16", "fa2", "fa3", "fp8")
NVCC_ORIGINS = ("pypi", "base", "hipcc", "debian", "none")
BNB_MODES = ("source", "wheel")
EXPAND_MODES = ("all", "none")
TORCH_SOURCES = ("pypi", "any")  # flavors.<f>.torch: pypi = only the PyPI torch build (slim)


def whole(pattern: str) -> str:
    """The pattern anchored at both ends, in a form ECMA 262 and Python's `re` read alike."""
    return f"^(?:{pattern})(?![\\s\\S])"


def string(pattern: str) -> Schema:
    return {"type": "string", "pattern": whole(pattern)}


def choice(options: tuple[str, ...], *, nullable: bool = False) -> Schema:
    return {"enum": [*options, None] if nullable else list(options)}


def array(items: Schema, *, min_items: int = 0) -> Schema:
    out: Schema = {"type": "array", "items": items, "uniqueItems": True}
    if min_items:
        out["minItems"] = min_items
    return out


def record(properties: dict[str, Schema], *required: str) -> Schema:
    """A mapping with known keys."""
    assert set(required) <= set(properties), required
    return {"type": "object", "additionalProperties": False, "required": list(required), "properties": properties}


def table(names: Schema, values: Schema, *, min_items: int = 1) -> Schema:
    """A mapping keyed by names the user chooses (`arches`, `toolkits`, …)."""
    out: Schema = {"type": "object", "propertyNames": names, "additionalProperties": values}
    if min_items:
        out["minProperties"] = min_items
    return out


def keys(shape: Schema) -> dict[str, bool]:
    """{key: required} of a record: what the loader checks a mapping's keys against."""
    return {key: key in shape["required"] for key in shape["properties"]}


# ---- the sections --------------------------------------------------------------------------------
BASES = record({"build": string(IMAGE_REF), "runtime": string(IMAGE_REF), "python": string(MAJOR_MINOR)},
               "build", "runtime", "python")
NVCC_SOURCE = record({"from": choice(NVCC_ORIGINS), "packages": array(string(REQUIREMENT)),
                      "base": string(IMAGE_REF), "apt": array(string(APT_PIN)), "host_compiler": string(HOST_COMPILER)},
                     "from")
FLAVOR_NAME = choice(FLAVORS)

ARCH = record({
    "vendor": choice(VENDORS),
    "sms": array(string(MAJOR_MINOR)),
    "gfx": array(string(GFX)),
    "capabilities": array(choice(CAPABILITIES)),
    "min_rocm": string(MAJOR_MINOR),
    "platforms": array(choice(PLATFORMS), min_items=1),
    "description": string(ONE_LINE),
}, "vendor")
TOOLKIT = record({
    "kind": choice(TOOLKIT_KINDS),
    "version": string(MAJOR_MINOR),
    "driver_floor": {"type": ["string", "null"], "pattern": whole(DRIVER)},
    "drops_sm_below": string(MAJOR_MINOR),
    "nvcc": table(FLAVOR_NAME, NVCC_SOURCE),
    "bases": table(FLAVOR_NAME, BASES, min_items=0),
}, "kind", "version", "nvcc")
TORCH_BUILD = record({
    "triton": string(VERSION),
    "python": array(string(MAJOR_MINOR)),
    "toolkits": array(string(TOOLKIT_ID), min_items=1),
    "pypi_toolkit": {"type": ["string", "null"], "pattern": whole(TOOLKIT_ID)},
    "pypi_platforms": array(choice(PLATFORMS), min_items=1),
}, "triton", "python", "toolkits")
FLAVOR = record({"vendor": choice(VENDORS), "base": BASES, "torch": choice(TORCH_SOURCES), "description": string(ONE_LINE)},
                "vendor")
BITSANDBYTES = record({
    "version": string(VERSION),
    "mode": choice(BNB_MODES),
    "git_url": string(GIT_URL),
    "git_ref": string(GIT_REF),
    "fallback": choice(BNB_MODES, nullable=True),
    "requires_torch": string(SPECIFIER),
}, "version", "mode", "git_url", "git_ref", "requires_torch")
PAYLOAD = record({
    "name": string(NAME),
    "torch": string(SPECIFIER),
    "python": string(SPECIFIER),
    "requirements": array(string(REQUIREMENT)),
}, "name", "torch", "python", "requirements")
CELL = record({
    "arch": string(NAME),
    "toolkit": string(TOOLKIT_ID),
    "torch": string(VERSION),
    "flavor": FLAVOR_NAME,
    "dtype": choice(TRAIN_DTYPES),
}, "arch", "toolkit")
CELLS = record({"expand": choice(EXPAND_MODES), "extra": {"type": "array", "items": CELL}}, "expand")
WORKLOADS = ("unsloth",)  # what `python -m probe warm --workload NAME` knows
ACTS = ("swiglu", "geglu")  # the gated MLP the model uses (Llama/Qwen/Mistral/Phi: swiglu; Gemma: geglu)
SHAPE_NAME = r"[a-z0-9][a-z0-9.-]*"
SHAPE_INTS = ("hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab")
WARM_SHAPE = record({
    "name": string(SHAPE_NAME),
    **{key: {"type": "integer", "minimum": 1, "maximum": 2**31 - 1} for key in SHAPE_INTS},
    "rms_eps": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "act": choice(ACTS),
}, "name", *SHAPE_INTS, "rms_eps", "act")
WORKLOAD = record({
    "name": choice(WORKLOADS),
    "torch": string(SPECIFIER),
    "python": string(SPECIFIER),
    "requirements": array(string(REQUIREMENT)),
    "prove": {"type": "boolean"},
    "runtime_compiler_below_triton": string(MAJOR_MINOR),
    "warm_shapes": {"type": "array", "minItems": 1, "items": WARM_SHAPE},
}, "name", "torch", "python", "requirements", "prove", "runtime_compiler_below_triton", "warm_shapes")

ROOT = record({
    "image_repo": string(IMAGE_REPO),
    "torch_index_url": string(INDEX_URL),
    "warm_triton_cache": {"type": "boolean"},
    "arches": table({"pattern": whole(NAME)}, ARCH),
    "sm_min_cuda": table({"pattern": whole(MAJOR_MINOR)}, string(MAJOR_MINOR), min_items=0),
    "toolkits": table({"pattern": whole(TOOLKIT_ID)}, TOOLKIT),
    "torch": table({"pattern": whole(VERSION)}, TORCH_BUILD),
    "triton_pairing": table({"pattern": whole(MAJOR_MINOR)}, string(MAJOR_MINOR), min_items=0),
    "flavors": table(FLAVOR_NAME, FLAVOR),
    "bitsandbytes": BITSANDBYTES,
    "payloads": {"type": "array", "minItems": 1, "items": PAYLOAD},
    "optional": array(string(REQUIREMENT)),
    "cells": CELLS,
    "workload": WORKLOAD,
}, "image_repo", "torch_index_url", "arches", "sm_min_cuda", "toolkits", "torch", "triton_pairing", "flavors",
   "bitsandbytes", "payloads", "cells")

SCHEMA_PATH = "imagefactory/plan/matrix.schema.json"


def json_schema() -> Schema:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://imagefactory.invalid/matrix.schema.json",
        "title": "imagefactory matrix.yaml",
        "description": "Shape of matrix.yaml, generated from imagefactory/plan/schema.py by `imagefactory render` "
                       "(do not edit). The loader checks the same shape plus cross-references, with line numbers.",
        **ROOT,
    }


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"
