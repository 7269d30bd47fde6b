"""Run inside the image (by tests/pod/test_pod_image.py), as the pod's user, with /workspace mounted:

    python triton_layers.py baked   replay the image's warm-up: every kernel a hit from the baked cache, nothing
                                    written to TRITON_CACHE_DIR (the writable layer)
    python triton_layers.py fresh   compile a kernel the image never saw (its source names a random tag given in
                                    FRESH_TAG): prints whether it was a cache hit and where its files went

Prints one JSON object. Uses the probe's own stand-in driver (no GPU needed) and compile listener.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from probe import warm

BAKED = Path(os.environ["IMAGEFACTORY_TRITON_BAKED_CACHE"])
WRITABLE = Path(os.environ["TRITON_CACHE_DIR"])
SM = 90

FRESH_SOURCE = '''
import triton
import triton.language as tl


@triton.jit
def fresh_{tag}(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(y_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) * 3 + 1, mask=mask)
'''


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def baked() -> dict:
    before = files(WRITABLE)
    report = warm.warm(SM, WRITABLE, stub_from=BAKED)
    return {"error": report.error, "kernels": report.kernels, "modules": report.modules,
            "written": sorted(files(WRITABLE) - before), "manager": os.environ.get("TRITON_CACHE_MANAGER")}


def fresh(tag: str) -> dict:
    import torch

    module_dir = Path("/tmp/imagefactory-fresh")  # the same path in every container: part of what Triton hashes
    module_dir.mkdir(exist_ok=True)
    (module_dir / f"fresh_{tag}.py").write_text(FRESH_SOURCE.replace("{tag}", tag))
    spec = importlib.util.spec_from_file_location(f"fresh_{tag}", module_dir / f"fresh_{tag}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kernel = getattr(module, f"fresh_{tag}")
    before_writable, before_baked = files(WRITABLE), files(BAKED)
    x = torch.empty(1024, dtype=torch.float32)
    y = torch.empty(1024, dtype=torch.float32)
    with warm.stand_in_driver(SM, warm.stub_dir_for(BAKED)), warm.compile_events() as events:
        kernel.warmup(x, y, 1024, BLOCK=128, grid=(1,))
    return {"cache_hit": [e["cache_hit"] for e in events],
            "written_writable": len(files(WRITABLE) - before_writable),
            "written_baked": len(files(BAKED) - before_baked)}


if __name__ == "__main__":
    mode = sys.argv[1]
    print(json.dumps(baked() if mode == "baked" else fresh(os.environ["FRESH_TAG"])))
