"""Typed, frozen values of the planning layer: what matrix.yaml declares and the resolved `Target`.

Nothing downstream of `imagefactory.plan.matrix` reads raw YAML: templates, outputs and the execution
commands see only these objects. The `Target` fields are the contract of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from packaging.version import Version

from imagefactory.errors import UsageError
from imagefactory.plan.platforms import dockerfile_name
from probe import tags  # the tag grammar (ids, tags, flavors, dtypes): the probe parses tags with it

Vendor = Literal["nvidia", "amd"]
ToolkitKind = Literal["cuda", "rocm"]
NvccOrigin = Literal["pypi", "base", "hipcc", "debian", "none"]
BnbMode = Literal["source", "wheel"]
TrainDtype = Literal["bf16", "fp16"]
WarmAct = Literal["swiglu", "geglu"]


def bnb_library_name(toolkit: Toolkit) -> str:
    """The native library bitsandbytes loads for a toolkit (it picks it by torch's CUDA/HIP version):
    libbitsandbytes_cuda121.so, libbitsandbytes_rocm64.so."""
    prefix = "cuda" if toolkit.kind == "cuda" else "rocm"
    return f"libbitsandbytes_{prefix}{toolkit.version.replace('.', '')}.so"


def minor_of(version: str) -> str:
    """`2.14.1` -> `2.14` (target ids and the torch/triton pairing use the minor release)."""
    v = Version(version)
    return f"{v.major}.{v.minor}"


@dataclass(frozen=True)
class ArchFamily:
    name: str
    vendor: Vendor
    sms: tuple[str, ...]  # NVIDIA compute capabilities, "9.0"
    gfx: tuple[str, ...]  # AMD targets, "gfx942"
    capabilities: frozenset[str]  # "bf16", "fp8", "fa2", "fa3": read by rules
    min_rocm: str | None  # AMD only: the oldest ROCm that supports every gfx target
    description: str
    platforms: tuple[str, ...] = ("linux/amd64",)  # CPU platforms its machines come with (GH200: linux/arm64)


@dataclass(frozen=True)
class BaseImages:
    build: str  # image the build stage starts FROM
    runtime: str  # image the shipped stage starts FROM
    python: str  # the python3 that base provides ("3.11")


@dataclass(frozen=True)
class NvccSource:
    origin: NvccOrigin  # where the build stage's device compiler comes from
    packages: tuple[str, ...] = ()  # pinned PyPI requirements when origin == "pypi"
    base: str | None = None  # debian: the (bootstrapped) Debian image the compiler stage starts FROM
    apt: tuple[str, ...] = ()  # debian: pinned packages of its contrib/non-free components ("name=version")
    host_compiler: str | None = None  # debian: the C++ compiler for the host code (the runtime OS's generation)


@dataclass(frozen=True)
class Toolkit:
    id: str  # "cu130", "rocm6.2"
    kind: ToolkitKind
    version: str  # "13.0", "6.2"
    driver_floor: str | None  # oldest NVIDIA driver branch; None for ROCm
    drops_sm_below: str | None  # CUDA 13 dropped everything below 7.5
    nvcc: Mapping[str, NvccSource]  # flavor -> compiler source; its key order is the flavor preference
    bases: Mapping[str, BaseImages]  # flavor -> vendor base images (slim's base is the flavor's own)

    @property
    def flavors(self) -> tuple[str, ...]:
        return tuple(self.nvcc)


@dataclass(frozen=True)
class TorchBuild:
    version: str  # "2.14.1"
    triton: str  # the triton (or pytorch-triton-rocm) release this torch pins
    pythons: tuple[str, ...]
    toolkits: tuple[str, ...]  # toolkit ids PyTorch publishes this release for
    pypi_toolkit: str | None  # the one toolkit whose build is the plain PyPI wheel
    pypi_platforms: tuple[str, ...] = ("linux/amd64",)  # platforms whose PyPI wheel is that CUDA build

    @property
    def minor(self) -> str:
        return minor_of(self.version)


@dataclass(frozen=True)
class Flavor:
    name: str  # "slim" | "nvidia" | "rocm"
    vendor: Vendor
    base: BaseImages | None  # slim: the local bootstrapped OS base; vendor flavors: per toolkit
    description: str
    pypi_torch_only: bool = False  # only the plain PyPI torch (its own CUDA): never torch_index_url


@dataclass(frozen=True)
class Bitsandbytes:
    version: str
    mode: BnbMode  # "source": compile for the target SM in the build stage
    git_url: str
    git_ref: str
    fallback: BnbMode | None  # what a build may fall back to when the source is unreachable
    requires_torch: str  # PEP 440 specifier from the wheel's metadata


@dataclass(frozen=True)
class Payload:
    name: str
    torch: str  # specifier the torch version must satisfy for this payload to apply
    python: str  # specifier the python version must satisfy
    requirements: tuple[str, ...]  # "peft==0.21.2", ...


@dataclass(frozen=True)
class WarmShape:
    """A model's widths whose Triton kernels the image compiles ahead (workload.warm_shapes)."""

    name: str  # "llama-3.1-8b"
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rms_eps: float
    act: WarmAct


@dataclass(frozen=True)
class Workload:
    """What the images are for (matrix.yaml `workload:`): Unsloth, pinned, and the shapes to warm."""

    name: str  # "unsloth": the probe's --workload name
    version: str  # the unsloth== pin: labels and PROBE_EXPECT_UNSLOTH
    torch: str  # specifier: the torch releases the pinned set resolves with
    python: str  # specifier: the pythons it resolves with
    requirements: tuple[str, ...]  # "unsloth==2026.10.9", ...
    prove: bool  # warm its kernels in the image and run `probe workload` in the gate
    runtime_compiler_below_triton: str  # triton older than this builds C launchers at first launch
    warm_shapes: tuple[WarmShape, ...]


@dataclass(frozen=True)
class CellSpec:
    """One explicit cell from `cells.extra` (None: use the cell's default)."""

    arch: str
    toolkit: str
    torch: str | None
    flavor: str | None
    dtype: TrainDtype | None
    line: int


@dataclass(frozen=True)
class Refusal:
    """A compatibility rule's verdict against a candidate cell (imagefactory/plan/rules.py)."""

    rule: str
    reason: str

    def __str__(self) -> str:
        return f"refused by rule {self.rule}: {self.reason}"


@dataclass(frozen=True)
class RefusedCell:
    """An arch x toolkit cell that an `expand: all` expansion skipped, and why."""

    id: str
    refusals: tuple[Refusal, ...]


@dataclass(frozen=True)
class Matrix:
    path: Path
    image_repo: str
    torch_index_url: str  # "{toolkit}" is replaced with the toolkit id
    warm_triton_cache: bool
    arches: Mapping[str, ArchFamily]
    toolkits: Mapping[str, Toolkit]
    torches: Mapping[str, TorchBuild]
    flavors: Mapping[str, Flavor]
    sm_min_cuda: Mapping[str, str]  # "10.0" -> "12.8"
    triton_pairing: Mapping[str, str]  # torch minor -> triton minor
    bitsandbytes: Bitsandbytes
    payloads: tuple[Payload, ...]
    optional_requirements: tuple[str, ...]
    expand_all: bool
    extra_cells: tuple[CellSpec, ...]
    workload: Workload | None = None  # None: the matrix declares no workload
    lines: Mapping[tuple[str | int, ...], int] = field(default_factory=dict, repr=False, compare=False)
    # Filled by the loader (load_matrix / parse_matrix): every target, and the cells the rules skipped.
    # They belong to this exact matrix: a dataclasses.replace() of another field keeps them stale, so
    # change matrix.yaml and load again instead.
    targets: tuple[Target, ...] = field(default=(), repr=False, compare=False)
    refused: tuple[RefusedCell, ...] = field(default=(), repr=False, compare=False)

    def where(self, *path: str | int) -> str:
        """`matrix.yaml:42 torch."2.14.1".triton` for a key path (line of the nearest recorded key)."""
        return f"{self.path.name}:{nearest_line(self.lines, path)} {format_path(path)}"


def nearest_line(lines: Mapping[tuple[str | int, ...], int], path: tuple[str | int, ...]) -> int:
    """The line of the key at `path`, else of its nearest recorded parent (1: none is recorded)."""
    key = tuple(path)
    while key and key not in lines:
        key = key[:-1]
    return lines.get(key, 1)


def format_path(path: tuple[str | int, ...] | list[str | int]) -> str:
    """`torch."2.14.1".triton`: dotted, quoting keys that contain dots; `[0]` for list items."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # quoted (JSON escapes) unless plain: a key from the file may hold dots, spaces or line breaks
            text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part, ensure_ascii=False)
            out += ("." if out else "") + text
    return out or "(top level)"


@dataclass(frozen=True)
class ResolvedTorch:
    version: str
    minor: str
    index_url: str | None  # None: the plain PyPI wheel
    triton: str


@dataclass(frozen=True)
class Target:
    """One buildable cell, fully resolved. Templates see it as `target`."""

    id: str
    arch: ArchFamily
    sms: tuple[str, ...]
    sm_codes: tuple[str, ...]  # "90": what cmake COMPUTE_CAPABILITY takes, joined by ";"
    gfx: tuple[str, ...]
    cuda_arch_list: str  # TORCH_CUDA_ARCH_LIST form: "9.0" or "10.0;12.0"; "" for AMD
    toolkit: Toolkit
    torch: ResolvedTorch
    triton_version: str
    triton_package: str  # "triton" (CUDA) or "pytorch-triton-rocm"
    python: str
    flavor: str
    base: BaseImages
    nvcc: NvccOrigin
    nvcc_packages: tuple[str, ...]
    nvcc_base: str  # the image the bitsandbytes stage starts FROM: base.build, or Debian's for `nvcc: {from: debian}`
    nvcc_apt: tuple[str, ...]  # the Debian packages that stage installs (from: debian)
    nvcc_host_compiler: str | None  # the C++ compiler of that stage's host code, where the matrix names one (g++-12)
    bitsandbytes: Bitsandbytes
    bnb_mode: BnbMode  # what the build does: "source" (compile for the SMs) or "wheel" (no compiler: the PyPI wheel)
    payload_name: str
    payload_requirements: tuple[str, ...]
    optional_requirements: tuple[str, ...]
    train_dtype: TrainDtype
    warm_triton_cache: bool
    image_repo: str
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    expect_env: Mapping[str, str]
    is_default: bool  # the arch x toolkit cell's default torch and flavor
    workload: Workload | None  # installed over the payload; None where the matrix declares none or its pins do not fit
    runtime_c_compiler: bool  # the runtime stage gets gcc: its triton builds a C launcher per kernel signature
    platforms: tuple[str, ...]  # OCI platforms its images are built for and serve ("linux/amd64", "linux/arm64")
    provenance: Mapping[str, str] = field(repr=False, compare=False)

    @property
    def dockerfile(self) -> str:
        """The Dockerfile of its first build platform (the host's where it is one of them)."""
        return self.dockerfile_for(self.platforms[0])

    def dockerfile_for(self, platform: str) -> str:
        """`dockerfiles/hopper-cu130/Dockerfile`, `…/Dockerfile.arm64`."""
        return f"dockerfiles/{self.id}/{dockerfile_name(platform)}"

    def build_platform(self, asked: str | None) -> str:
        """The platform a build, gate, push or record of it is for: the one asked (UsageError when it is not built for
        it), else its first (the host's where it has it)."""
        if asked is not None and asked not in self.platforms:
            raise UsageError(f"--platform {asked}: {self.id} is built for {', '.join(self.platforms)} only")
        return asked or self.platforms[0]


def immutable_tag(target: Target, release: str) -> str:
    """The tag that never moves: `hopper-cu130-torch2.14.1-2026.11.0` (probe/tags.py's grammar)."""
    return tags.immutable_tag(target.id, target.torch.version, release)
