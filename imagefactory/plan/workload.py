"""The workload section of matrix.yaml: Unsloth pinned, the model shapes to warm, and what follows from them.

The loader reads and validates the section (`matrix._workload`); this module holds what follows from it, read
by rule `workload`, by expand (labels,
`PROBE_EXPECT_UNSLOTH`, whether the runtime needs a C compiler) and by `render`, which writes the declared
shapes to probe/workload_shapes.json for the probe's warm step (`shapes_file`).
"""

from __future__ import annotations

import json
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from imagefactory.plan.model import Matrix, Workload

SHAPES_FILE = "probe/workload_shapes.json"  # relative to the repository root; the probe reads it in the image


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
