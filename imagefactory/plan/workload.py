"""The workload section of matrix.yaml: Unsloth pinned, the model shapes to warm, and what follows from them.

Read by the loader (`load_workload`, one call from `matrix._build`), by rule `workload`, by expand (labels,
`PROBE_EXPECT_UNSLOTH`, whether the runtime needs a C compiler) and by `render`, which writes the declared
shapes to probe/workload_shapes.json for the probe's warm step (`shapes_file`).
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from imagefactory.plan.model import Matrix, WarmShape, Workload

if TYPE_CHECKING:  # the loader's reader; imported for types only (matrix.py imports this module)
    from imagefactory.plan.matrix import _Reader

Path_ = tuple[str | int, ...]

WORKLOADS = ("unsloth",)  # what `python -m probe warm --workload NAME` knows
ACTS = ("swiglu", "geglu")  # the gated MLP the model uses (Llama/Qwen/Mistral/Phi: swiglu; Gemma: geglu)
SHAPE_INTS = ("hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab")
SHAPE_KEYS = {"name": True, **{k: True for k in SHAPE_INTS}, "rms_eps": True, "act": True}
SHAPE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(.+)$")
SHAPES_FILE = "probe/workload_shapes.json"  # relative to the repository root; the probe reads it in the image


def load_workload(r: _Reader, value: Any, path: Path_ = ("workload",)) -> Workload | None:
    """Validate the `workload:` mapping; every problem is recorded on the reader (None when any)."""
    m = r.mapping(value, path, {"name": True, "torch": True, "python": True, "requirements": True,
                                "prove": True, "runtime_compiler_below_triton": True, "warm_shapes": True})
    if m is None:
        return None
    name = r.choice(m.get("name"), path + ("name",), WORKLOADS) if "name" in m else None
    torch = r.specifier(m.get("torch"), path + ("torch",)) if "torch" in m else None
    python = r.specifier(m.get("python"), path + ("python",)) if "python" in m else None
    from imagefactory.plan.matrix import REQUIREMENT_RE  # noqa: PLC0415 - matrix imports this module

    reqs = r.str_list(m.get("requirements"), path + ("requirements",), lambda v, q: r.string(
        v, q, regex=REQUIREMENT_RE, what="pinned requirement (NAME==VERSION)")) if "requirements" in m else None
    prove = r.boolean(m.get("prove"), path + ("prove",)) if "prove" in m else None
    below = r.version(m.get("runtime_compiler_below_triton"), path + ("runtime_compiler_below_triton",),
                      major_minor=True) if "runtime_compiler_below_triton" in m else None
    shapes = _shapes(r, m.get("warm_shapes"), path + ("warm_shapes",)) if "warm_shapes" in m else None
    version = None
    if name is not None and reqs is not None:
        pins = {_canonical(p.group(1)): p.group(2) for req in reqs if (p := PIN_RE.match(req))}
        version = pins.get(name)
        if version is None:
            r.doc.problem(path + ("requirements",), f"must pin the workload itself ({name}==VERSION)")
    if None in (name, torch, python, reqs, prove, below, shapes, version):
        return None
    return Workload(name, version, torch, python, reqs, prove, below, shapes)  # type: ignore[arg-type]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _shapes(r: _Reader, value: Any, path: Path_) -> tuple[WarmShape, ...] | None:
    if not isinstance(value, list) or not value:
        r.doc.problem(path, "expected a non-empty list of model shapes")
        return None
    shapes: list[WarmShape] = []
    ok = True
    for i, body in enumerate(value):
        shape = _shape(r, body, path + (i,))
        if shape is None:
            ok = False
            continue
        if shape.name in {s.name for s in shapes}:
            r.doc.problem(path + (i, "name"), f"duplicate shape name {shape.name!r}")
            ok = False
            continue
        shapes.append(shape)
    return tuple(shapes) if ok else None


def _shape(r: _Reader, value: Any, path: Path_) -> WarmShape | None:
    m = r.mapping(value, path, SHAPE_KEYS)
    if m is None or any(k not in m for k in SHAPE_KEYS):
        return None
    name = r.string(m["name"], path + ("name",), regex=SHAPE_NAME_RE, what="shape name (lowercase, digits, '.', '-')")
    ints = {k: _positive_int(r, m[k], path + (k,)) for k in SHAPE_INTS}
    eps = _epsilon(r, m["rms_eps"], path + ("rms_eps",))
    act = r.choice(m["act"], path + ("act",), ACTS)
    if name is None or eps is None or act is None or None in ints.values():
        return None
    if ints["heads"] % ints["kv_heads"]:  # type: ignore[operator]
        r.doc.problem(path + ("kv_heads",), f"heads ({ints['heads']}) must be a multiple of kv_heads ({ints['kv_heads']})")
        return None
    return WarmShape(name, **ints, rms_eps=eps, act=act)  # type: ignore[arg-type]


def _positive_int(r: _Reader, value: Any, path: Path_) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        r.doc.problem(path, f"expected a whole number, got {_kind(value)} {value!r}")
        return None
    if not 0 < value < 2**31:
        r.doc.problem(path, f"must be between 1 and 2^31-1, got {value}")
        return None
    return value


def _epsilon(r: _Reader, value: Any, path: Path_) -> float | None:
    if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
        r.doc.problem(path, f"expected a number, got string {value!r} (YAML needs a dot: write 1.0e-5)")
        return None
    if not isinstance(value, float) or not math.isfinite(value) or not 0 < value < 1:
        r.doc.problem(path, f"expected a number between 0 and 1 like 1.0e-5, got {_kind(value)} {value!r}")
        return None
    return value


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), "null" if value is None else type(value).__name__)


# ---- what follows from it ------------------------------------------------------------------------


def accepts(workload: Workload, torch: str, python: str) -> bool:
    """Whether the pinned set was resolved for this torch and python."""
    return Version(torch) in SpecifierSet(workload.torch) and Version(python) in SpecifierSet(workload.python)


def needs_runtime_compiler(matrix: Matrix, triton: str) -> bool:
    """triton older than `runtime_compiler_below_triton` builds a C launcher per kernel signature at the first
    launch: a kernel the warm cache lacks then needs gcc in the runtime image."""
    floor = matrix.workload.runtime_compiler_below_triton if matrix.workload else None
    return floor is not None and Version(triton) < Version(floor)


def shapes_document(matrix: Matrix) -> dict[str, Any]:
    shapes = matrix.workload.warm_shapes if matrix.workload else ()
    return {"generated_from": matrix.path.name,
            "shapes": [{"name": s.name, "hidden": s.hidden, "intermediate": s.intermediate, "heads": s.heads,
                        "kv_heads": s.kv_heads, "head_dim": s.head_dim, "vocab": s.vocab, "rms_eps": s.rms_eps,
                        "act": s.act} for s in shapes]}


def shapes_file(matrix: Matrix) -> dict[str, str]:
    """{SHAPES_FILE: text}: what `render` writes beside the dockerfiles (and `render --check` compares)."""
    return {SHAPES_FILE: json.dumps(shapes_document(matrix), indent=2) + "\n"}
