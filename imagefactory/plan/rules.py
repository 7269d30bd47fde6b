"""Compatibility rules. Each rule looks at one candidate cell and returns a `Refusal` or None.

A rule's name is what users see (`refused by rule sm-floor: ...`) and what docs/matrix.md lists.
Rules read only the typed `Matrix`; the facts they apply live in matrix.yaml with their sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from imagefactory.plan.model import (
    ArchFamily,
    BaseImages,
    Flavor,
    Matrix,
    Payload,
    Refusal,
    Toolkit,
    TorchBuild,
    TrainDtype,
    minor_of,
)
from imagefactory.plan.platforms import HOST_PLATFORM, is_cross
from imagefactory.plan.workload import accepts


@dataclass(frozen=True)
class Candidate:
    arch: ArchFamily
    toolkit: Toolkit
    torch: TorchBuild
    flavor: Flavor
    dtype: TrainDtype | None  # None: bf16 where the arch has it, else fp16


def _v(text: str) -> Version:
    return Version(text)


def base_images(toolkit: Toolkit, flavor: Flavor) -> BaseImages | None:
    """The toolkit's own base for a vendor flavor, else the flavor's (slim's bootstrapped OS base)."""
    return toolkit.bases.get(flavor.name) or flavor.base


def python_of(toolkit: Toolkit, flavor: Flavor) -> str | None:
    base = base_images(toolkit, flavor)
    return base.python if base else None


def payload_for(matrix: Matrix, torch: str, python: str) -> Payload | None:
    """The first payload whose torch and python specifiers both match."""
    for payload in matrix.payloads:
        if _v(torch) in SpecifierSet(payload.torch) and _v(python) in SpecifierSet(payload.python):
            return payload
    return None


def platforms_of(m: Matrix, c: Candidate) -> tuple[str, ...]:
    """The OCI platforms a candidate's image serves: its arch's machines (GH200, GB200: arm64 too) that its
    torch build exists for. arm64 only from PyPI (torch.pypi_platforms: the aarch64 wheel is the same CUDA
    build from torch 2.11 on); torch_index_url's aarch64 sets are not sourced here: amd64 only. And another
    platform than the host's only in the slim flavor: it is cross-built from the bases bootstrapped here, while a
    vendor flavor's would come from a registry per platform (docs/build.md, "arm64")."""
    from_pypi = c.torch.pypi_toolkit == c.toolkit.id
    torch_platforms = c.torch.pypi_platforms if from_pypi else ("linux/amd64",)
    return tuple(p for p in c.arch.platforms if p in torch_platforms and (not is_cross(p) or c.flavor.name == "slim"))


def vendor_mismatch(arch: ArchFamily, toolkit: Toolkit) -> Refusal | None:
    """Rule vendor on its own: expansion uses it to skip arch x toolkit pairs before any torch is picked."""
    wanted = "nvidia" if toolkit.kind == "cuda" else "amd"
    if arch.vendor != wanted:
        return Refusal("vendor", f"{arch.name} is an {arch.vendor} arch; {toolkit.id} is a {toolkit.kind} toolkit")
    return None


def vendor(m: Matrix, c: Candidate) -> Refusal | None:
    return vendor_mismatch(c.arch, c.toolkit)


def sm_floor(m: Matrix, c: Candidate) -> Refusal | None:
    if c.toolkit.kind != "cuda":
        return None
    for sm in c.arch.sms:
        floor = m.sm_min_cuda.get(sm)
        if floor and _v(c.toolkit.version) < _v(floor):
            return Refusal("sm-floor", f"sm_{sm.replace('.', '')} needs CUDA >= {floor}, {c.toolkit.id} is "
                                       f"CUDA {c.toolkit.version} ({m.where('sm_min_cuda', sm)})")
    return None


def sm_dropped(m: Matrix, c: Candidate) -> Refusal | None:
    below = c.toolkit.drops_sm_below
    if c.toolkit.kind != "cuda" or below is None:
        return None
    for sm in c.arch.sms:
        if _v(sm) < _v(below):
            return Refusal("sm-dropped", f"CUDA {c.toolkit.version} dropped every SM below {below}; "
                                         f"{c.arch.name} is sm_{sm.replace('.', '')}")
    return None


def rocm_arch(m: Matrix, c: Candidate) -> Refusal | None:
    if c.toolkit.kind != "rocm" or c.arch.min_rocm is None:
        return None
    if _v(c.toolkit.version) < _v(c.arch.min_rocm):
        return Refusal("rocm-arch", f"{'/'.join(c.arch.gfx)} needs ROCm >= {c.arch.min_rocm}, "
                                    f"{c.toolkit.id} is ROCm {c.toolkit.version}")
    return None


def torch_toolkit(m: Matrix, c: Candidate) -> Refusal | None:
    if c.toolkit.id not in c.torch.toolkits:
        return Refusal("torch-toolkit", f"torch {c.torch.version} is not published for {c.toolkit.id} "
                                        f"(it ships for {', '.join(c.torch.toolkits)})")
    return None


def torch_triton(m: Matrix, c: Candidate) -> Refusal | None:
    wanted = m.triton_pairing.get(c.torch.minor)
    if wanted is None:
        return Refusal("torch-triton", f"no triton pairing declared for torch {c.torch.minor} (add it to triton_pairing)")
    if minor_of(c.torch.triton) != wanted:
        return Refusal("torch-triton", f"torch {c.torch.minor} pairs with triton {wanted}.x, "
                                       f"matrix says triton {c.torch.triton}")
    return None


def flavor_vendor(m: Matrix, c: Candidate) -> Refusal | None:
    if c.flavor.vendor != c.arch.vendor:
        return Refusal("flavor-vendor", f"flavor {c.flavor.name} serves {c.flavor.vendor} GPUs, {c.arch.name} is "
                                        f"{c.arch.vendor}")
    if c.flavor.name not in c.toolkit.nvcc:
        return Refusal("flavor-vendor", f"{c.toolkit.id} declares no way to build in the {c.flavor.name} flavor "
                                        f"(its flavors: {', '.join(c.toolkit.flavors)})")
    return None


def slim_nvcc(m: Matrix, c: Candidate) -> Refusal | None:
    src = c.toolkit.nvcc.get(c.flavor.name)
    bnb = m.bitsandbytes
    if src is not None and src.origin == "none" and bnb.mode == "source" and bnb.fallback != "wheel":
        return Refusal("slim-nvcc", f"bitsandbytes mode source needs a CUDA compiler, and the {c.flavor.name} flavor "
                                    f"has none for CUDA {c.toolkit.version} (no nvcc on PyPI for 12.x) and no wheel "
                                    f"fallback is declared: use the nvidia flavor")
    return None


def flavor_torch(m: Matrix, c: Candidate) -> Refusal | None:
    if c.flavor.pypi_torch_only and c.torch.pypi_toolkit != c.toolkit.id:
        pypi = f"its PyPI build is {c.torch.pypi_toolkit}" if c.torch.pypi_toolkit else "it has no PyPI build"
        return Refusal("flavor-torch", f"the {c.flavor.name} flavor installs torch from PyPI only; torch "
                                       f"{c.torch.version} for {c.toolkit.id} comes from torch_index_url ({pypi})")
    return None


def python_supported(m: Matrix, c: Candidate) -> Refusal | None:
    python = python_of(c.toolkit, c.flavor)
    if python is None:
        return Refusal("python", f"no base image for {c.flavor.name} x {c.toolkit.id}, so no python")
    if python not in c.torch.pythons:
        return Refusal("python", f"the {c.flavor.name} base for {c.toolkit.id} ships python {python}; torch "
                                 f"{c.torch.version} has wheels for {', '.join(c.torch.pythons)}")
    return None


def bitsandbytes_torch(m: Matrix, c: Candidate) -> Refusal | None:
    spec = m.bitsandbytes.requires_torch
    if _v(c.torch.version) not in SpecifierSet(spec):
        return Refusal("bitsandbytes-torch", f"bitsandbytes {m.bitsandbytes.version} requires torch{spec}, "
                                             f"not {c.torch.version}")
    return None


def payload(m: Matrix, c: Candidate) -> Refusal | None:
    python = python_of(c.toolkit, c.flavor)
    if python is not None and payload_for(m, c.torch.version, python) is None:
        return Refusal("payload", f"no payload accepts torch {c.torch.version} with python {python} "
                                  f"({', '.join(f'{p.name}: torch{p.torch} python{p.python}' for p in m.payloads)})")
    return None


def workload(m: Matrix, c: Candidate) -> Refusal | None:
    """A note, not a refusal: a cell the workload's pinned set does not fit is built without the workload
    (its torch/payload still fine-tune; `explain` and `show` say why Unsloth is missing)."""
    python = python_of(c.toolkit, c.flavor)
    w = m.workload
    if w is None or python is None or accepts(w, c.torch.version, python):
        return None
    return Refusal("workload", f"{w.name} {w.version} and its pins are resolved for torch{w.torch} with "
                              f"python{w.python} ({m.where('workload', 'torch')}); this cell has torch "
                              f"{c.torch.version} with python {python}")


def platform(m: Matrix, c: Candidate) -> Refusal | None:
    if not platforms_of(m, c):
        vendor_base = any(is_cross(p) for p in c.arch.platforms) and c.flavor.name != "slim"
        why = (f"the {c.flavor.name} flavor is built for {HOST_PLATFORM} only (its base for them would come from a registry)"
               if vendor_base else f"torch {c.torch.version} for {c.toolkit.id} has no build for them")
        return Refusal("platform", f"{c.arch.name} machines are {', '.join(c.arch.platforms)}; {why}")
    return None


def bf16(m: Matrix, c: Candidate) -> Refusal | None:
    if c.dtype == "bf16" and "bf16" not in c.arch.capabilities:
        return Refusal("bf16", f"{c.arch.name} has no bf16 (needs SM >= 8.0); use dtype fp16")
    return None


# Order matters only for which refusal is reported first: hardware facts before packaging facts.
RULES: tuple[tuple[str, Callable[[Matrix, Candidate], Refusal | None], str], ...] = (
    ("vendor", vendor, "the arch's vendor matches the toolkit (CUDA: nvidia, ROCm: amd)"),
    ("sm-floor", sm_floor, "each SM needs a CUDA at least as new as sm_min_cuda says"),
    ("sm-dropped", sm_dropped, "a toolkit's drops_sm_below removes older SMs (CUDA 13: < 7.5)"),
    ("rocm-arch", rocm_arch, "an AMD arch needs ROCm >= its min_rocm"),
    ("torch-toolkit", torch_toolkit, "PyTorch publishes the torch release for the toolkit"),
    ("torch-triton", torch_triton, "the torch's triton matches triton_pairing"),
    ("flavor-vendor", flavor_vendor, "the flavor serves the arch's vendor and the toolkit declares it"),
    ("slim-nvcc", slim_nvcc, "bitsandbytes from source needs a compiler in the flavor (or a wheel fallback)"),
    ("flavor-torch", flavor_torch, "a flavor with torch: pypi takes only the torch whose PyPI build is the toolkit"),
    ("python", python_supported, "the flavor's python has a torch wheel"),
    ("bitsandbytes-torch", bitsandbytes_torch, "bitsandbytes accepts the torch version"),
    ("payload", payload, "a payload accepts the torch and python"),
    ("platform", platform, "the torch build (and, off the host's platform, the slim flavor) exists for a CPU platform of the arch's machines"),
    ("bf16", bf16, "bf16 settings only on SMs with bf16"),
)
# Rules that decide what a target holds, never whether it exists (explain prints them as notes).
NOTES: tuple[tuple[str, Callable[[Matrix, Candidate], Refusal | None], str], ...] = (
    ("workload", workload, "the workload's pinned set (Unsloth) accepts the torch and python, else the image ships without it"),
)
RULE_NAMES = tuple(name for name, _, _ in RULES + NOTES)


def check(matrix: Matrix, candidate: Candidate) -> list[Refusal]:
    """Every refusal for the candidate, in rule order (empty: allowed)."""
    return [r for _, rule, _ in RULES if (r := rule(matrix, candidate)) is not None]


def explain(matrix: Matrix, candidate: Candidate) -> list[tuple[str, str, Refusal | None, bool]]:
    """(rule, what it checks, refusal or None, whether it refuses) for every rule and note: what `explain` prints."""
    return ([(name, doc, rule(matrix, candidate), True) for name, rule, doc in RULES]
            + [(name, doc, rule(matrix, candidate), False) for name, rule, doc in NOTES])
