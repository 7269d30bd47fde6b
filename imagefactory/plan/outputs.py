"""`targets --format json | github | bake`: machine-readable views of the resolved targets.

Deterministic (sorted keys, fixed indentation) so that golden files and CI diffs stay stable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from imagefactory.plan.model import Matrix, Target
from imagefactory.plan.platforms import is_cross, platform_suffix, unit_id

# Facts of matrix.yaml the stdlib-only probe needs on a pod (probe/select.py reads this file).
PROBE_FACTS_PATH = "probe/matrix_facts.json"


def to_plain(value: Any) -> Any:
    """Dataclasses/tuples/frozensets -> JSON-ready dicts/lists (frozensets sorted)."""
    if is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, Target):
            out["dockerfile"] = value.dockerfile
        return out
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return sorted(to_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def targets_json(targets: Iterable[Target]) -> str:
    """Every resolved value of every target, with where it came from (`provenance`)."""
    return dumps([to_plain(t) for t in targets])


def github_matrix(targets: Iterable[Target]) -> str:
    """`{"include": [...]}` for a GitHub Actions `strategy.matrix` (one job per target)."""
    include = [
        {
            "target": t.id,
            "arch": t.arch.name,
            "vendor": t.arch.vendor,
            "toolkit": t.toolkit.id,
            "torch": t.torch.version,
            "flavor": t.flavor,
            "python": t.python,
            "dockerfile": t.dockerfile,
            "sm": ",".join(t.sms or t.gfx),
            "warm_triton_cache": t.warm_triton_cache,
        }
        for t in targets
    ]
    return dumps({"include": include})


def bake_name(target_id: str) -> str:
    """Bake target names allow only [A-Za-z0-9_-]: `cdna3-rocm6.2` -> `cdna3-rocm6_2`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", target_id)


def bake_file(targets: Iterable[Target], *, cache_dir: str = ".cache/buildx") -> str:
    """A docker-bake.json with one target per cell; `docker buildx bake -f - --print` accepts it.

    `args` sets BNB_SOURCE (an ARG of templates/Dockerfile.j2) from the matrix's bitsandbytes mode;
    the cache is a local directory per target, so cells never evict each other's layers. A target built for
    two platforms is two bake targets (`hopper-cu130`, `hopper-cu130-arm64`): each platform has its own Dockerfile.
    """
    bake_targets: dict[str, Any] = {}
    for t in targets:
        for platform in t.platforms:  # one Dockerfile per platform: hopper-cu130, hopper-cu130-arm64
            unit = unit_id(t.id, platform)
            bake_targets[bake_name(unit)] = {
                "context": ".",
                "dockerfile": t.dockerfile_for(platform),
                "args": {"BNB_SOURCE": "git" if t.bnb_mode == "source" and not is_cross(platform) else "wheel"},
                "tags": [f"{t.image_repo}:{tag}{platform_suffix(platform)}" for tag in t.tags],
                "labels": dict(t.labels),
                "cache-from": [f"type=local,src={cache_dir}/{unit}"],
                "cache-to": [f"type=local,dest={cache_dir}/{unit},mode=max"],
                "platforms": [platform],
            }
    names = list(bake_targets)
    return dumps({"group": {"default": {"targets": names}}, "target": bake_targets})


def probe_facts(matrix: Matrix) -> str:
    """probe/matrix_facts.json: NVIDIA arch -> SMs and CUDA version -> driver floor, as matrix.yaml says.

    Written by `imagefactory render`, drift-checked by `render --check`; the probe keeps no hand copy.
    """
    return dumps({
        "_generated": "by `imagefactory render` from matrix.yaml: edit matrix.yaml, not this file",
        "arch_sms": {name: list(arch.sms) for name, arch in matrix.arches.items() if arch.vendor == "nvidia"},
        "cuda_driver_floor": {tk.version: int(tk.driver_floor.split(".")[0]) for tk in matrix.toolkits.values()
                              if tk.kind == "cuda" and tk.driver_floor},
    })
