"""Matrix -> targets: default torch/flavor per arch x toolkit, target ids, `--select` globs.

Target ids: `<arch>-<toolkit>` for a cell's default (the first flavor of the toolkit's preference order
that passes every rule with some torch, at the newest torch that passes); a non-default torch adds
`-torch<minor>`, a non-default flavor `-<flavor>`, an explicit dtype that differs from the arch's natural
one `-<dtype>`: `hopper-cu128-torch2.7-nvidia`, `hopper-cu130-nvidia`. `expand: all` also yields every
other flavor that passes, at its own newest torch (`ampere-cu121-nvidia` beside the slim `ampere-cu121`).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass

from packaging.version import Version

from imagefactory.errors import ConfigError, RefusedTargetError, UnknownTargetError, UsageError, near_misses
from imagefactory.plan.model import (
    CellSpec,
    Matrix,
    NvccSource,
    Refusal,
    RefusedCell,
    ResolvedTorch,
    Target,
    TorchBuild,
    TrainDtype,
    bnb_library_name,
)
from imagefactory.plan.rules import Candidate, base_images, check, payload_for, platforms_of, vendor_mismatch
from imagefactory.plan.rules import workload as workload_note
from imagefactory.plan.workload import accepts, needs_runtime_compiler
from probe import tags


@dataclass(frozen=True)
class Expansion:
    targets: tuple[Target, ...]
    refused: tuple[RefusedCell, ...]

    def by_id(self) -> dict[str, Target]:
        return {t.id: t for t in self.targets}


@dataclass(frozen=True)
class Pick:
    """The preferred allowed candidate of a cell, or why none was allowed."""

    candidate: Candidate | None  # None: nothing passed
    refusals: tuple[Refusal, ...]  # why the preferred candidates were refused


def compiler_of(nvcc: NvccSource) -> str | None:
    """Where the bitsandbytes stage's device compiler comes from, in one line (None: it has none)."""
    if nvcc.origin == "debian":
        return f"debian {' '.join(nvcc.apt)} on {nvcc.base}"
    if nvcc.origin == "pypi":
        return f"pypi {' '.join(nvcc.packages)}"
    return {"base": "the base image's toolkit", "hipcc": "the base image's hipcc"}.get(nvcc.origin)


def natural_dtype(candidate: Candidate) -> TrainDtype:
    return "bf16" if "bf16" in candidate.arch.capabilities else "fp16"


def torches_for(matrix: Matrix, toolkit: str) -> list[TorchBuild]:
    """Torch builds shipping the toolkit, newest first: the order defaults are picked in."""
    shipping = [t for t in matrix.torches.values() if toolkit in t.toolkits]
    return sorted(shipping, key=lambda t: Version(t.version), reverse=True)


def flavors_for(matrix: Matrix, toolkit: str) -> list[str]:
    """Flavors in the toolkit's preference order (its `nvcc` key order); all of them if it names none."""
    return [f for f in matrix.toolkits[toolkit].flavors if f in matrix.flavors] or list(matrix.flavors)


def pick(matrix: Matrix, arch: str, toolkit: str, torch: str | None = None, flavor: str | None = None,
          dtype: TrainDtype | None = None) -> Pick:
    """The first candidate (flavor preference, then newest torch) that passes every rule: a preferred
    flavor (slim) wins with an older torch over a later flavor with a newer one."""
    tk = matrix.toolkits[toolkit]
    torches = [matrix.torches[torch]] if torch else torches_for(matrix, toolkit)
    flavors = [flavor] if flavor else flavors_for(matrix, toolkit)
    if not torches:
        return Pick(None, (Refusal("torch-toolkit", f"no torch in the matrix ships {toolkit}"),))
    seen: dict[tuple[str, str], Refusal] = {}
    for f in flavors:
        for t in torches:
            cand = Candidate(matrix.arches[arch], tk, t, matrix.flavors[f], dtype)
            refusals = check(matrix, cand)
            if not refusals:
                return Pick(cand, ())
            seen.setdefault((refusals[0].rule, refusals[0].reason), refusals[0])
    return Pick(None, tuple(seen.values()))


def build_target(matrix: Matrix, cand: Candidate, target_id: str, *, is_default: bool,
                 why_torch: str, why_flavor: str) -> Target:
    """Resolve every value a template or an execution command reads."""
    arch, tk, torch, flavor = cand.arch, cand.toolkit, cand.torch, cand.flavor
    base = base_images(tk, flavor)
    assert base is not None  # rule python refuses candidates without a base
    python = base.python
    payload = payload_for(matrix, torch.version, python)
    assert payload is not None  # rule payload refuses candidates without one
    nvcc = tk.nvcc[flavor.name]
    index_url = None if torch.pypi_toolkit == tk.id else matrix.torch_index_url.replace("{toolkit}", tk.id)
    dtype = cand.dtype or natural_dtype(cand)
    platforms = platforms_of(matrix, cand)
    warm = matrix.warm_triton_cache and tk.kind == "cuda"
    sm_codes = tuple(sm.replace(".", "") for sm in arch.sms)
    bnb = matrix.bitsandbytes
    labels = {
        "org.opencontainers.image.title": f"{matrix.image_repo}:{target_id}",
        "org.opencontainers.image.description": f"LLM fine-tuning image for {arch.name} "
                                                f"({arch.description}) on {tk.id}, torch {torch.version}",
        "io.imagefactory.target": target_id,
        "io.imagefactory.arch": arch.name,
        "io.imagefactory.vendor": arch.vendor,
        "io.imagefactory.sm": ",".join(arch.sms) if arch.vendor == "nvidia" else ",".join(arch.gfx),
        "io.imagefactory.toolkit": tk.id,
        "io.imagefactory.torch": torch.version,
        "io.imagefactory.triton": torch.triton,
        "io.imagefactory.python": python,
        "io.imagefactory.flavor": flavor.name,
        "io.imagefactory.bitsandbytes": bnb.version,
        # the one native library kept (compiled for the SMs, or the wheel's where the flavor has no compiler)
        "io.imagefactory.bitsandbytes-library": bnb_library_name(tk),
        "io.imagefactory.platforms": ",".join(platforms),
    }
    if (compiler := compiler_of(tk.nvcc[flavor.name])) is not None:
        labels["io.imagefactory.nvcc"] = compiler  # what compiles bitsandbytes (when bitsandbytes-source is git/local)
    if tk.driver_floor:
        labels["io.imagefactory.driver-floor"] = tk.driver_floor
    expect = {
        "PROBE_EXPECT_TARGET": target_id,
        "PROBE_EXPECT_VENDOR": arch.vendor,
    }
    if tk.kind == "cuda":
        expect["PROBE_EXPECT_SM"] = ",".join(arch.sms)
        expect["PROBE_EXPECT_CUDA"] = tk.version
    else:
        expect["PROBE_EXPECT_GFX"] = ",".join(arch.gfx)
        expect["PROBE_EXPECT_ROCM"] = tk.version
    expect |= {
        "PROBE_EXPECT_TORCH": torch.version,
        "PROBE_EXPECT_TRITON": torch.triton,
        "PROBE_EXPECT_BITSANDBYTES": bnb.version,
        "PROBE_EXPECT_PYTHON": python,
        "PROBE_EXPECT_DTYPE": dtype,
        "PROBE_EXPECT_WARM_CACHE": "1" if warm else "0",
    }
    # Rule workload is a note: a cell the pinned set does not fit ships without it (explain says why).
    workload = matrix.workload if matrix.workload and accepts(matrix.workload, torch.version, python) else None
    if workload is not None:
        labels[f"io.imagefactory.{workload.name}"] = workload.version
        expect[f"PROBE_EXPECT_{workload.name.upper()}"] = workload.version
    base_src = (matrix.where("toolkits", tk.id, "bases", flavor.name) if flavor.name in tk.bases
                else matrix.where("flavors", flavor.name, "base"))
    provenance = {
        "arch": matrix.where("arches", arch.name),
        "sms": matrix.where("arches", arch.name, "sms" if arch.vendor == "nvidia" else "gfx"),
        "toolkit": matrix.where("toolkits", tk.id),
        "driver_floor": matrix.where("toolkits", tk.id, "driver_floor"),
        "torch": f"{matrix.where('torch', torch.version)} ({why_torch})",
        "torch.index_url": (f"{matrix.where('torch', torch.version, 'pypi_toolkit')} (PyPI build is {tk.id})"
                            if index_url is None else matrix.where("torch_index_url")),
        "triton": matrix.where("torch", torch.version, "triton"),
        "flavor": f"{matrix.where('toolkits', tk.id, 'nvcc', flavor.name)} ({why_flavor})",
        "base": base_src,
        "python": f"{base_src} (python3 of the {flavor.name} base)",
        "nvcc": matrix.where("toolkits", tk.id, "nvcc", flavor.name),
        "bitsandbytes": matrix.where("bitsandbytes"),
        "payload": f"{matrix.where('payloads', matrix.payloads.index(payload))} (first payload accepting "
                   f"torch {torch.version}, python {python})",
        "train_dtype": ("cells.extra" if cand.dtype else f"{matrix.where('arches', arch.name, 'capabilities')} "
                        f"({'has' if dtype == 'bf16' else 'no'} bf16)"),
        "optional": matrix.where("optional"),
        "warm_triton_cache": f"{matrix.where('warm_triton_cache')} (CUDA targets only)",
        "image_repo": matrix.where("image_repo"),
        "workload": matrix.where("workload") + (f" (not installed, rule workload: {note.reason})"
                                                if workload is None and (note := workload_note(matrix, cand)) else ""),
        "runtime_c_compiler": f"{matrix.where('workload', 'runtime_compiler_below_triton')} (triton {torch.triton})",
    }
    return Target(
        id=target_id,
        arch=arch,
        sms=arch.sms,
        sm_codes=sm_codes,
        gfx=arch.gfx,
        cuda_arch_list=";".join(arch.sms),
        toolkit=tk,
        torch=ResolvedTorch(torch.version, torch.minor, index_url, torch.triton),
        triton_version=torch.triton,
        triton_package="triton" if tk.kind == "cuda" else "pytorch-triton-rocm",
        python=python,
        flavor=flavor.name,
        base=base,
        nvcc=nvcc.origin,
        nvcc_packages=nvcc.packages,
        nvcc_base=nvcc.base or base.build,
        nvcc_apt=nvcc.apt,
        nvcc_host_compiler=nvcc.host_compiler,
        bitsandbytes=bnb,
        bnb_mode="wheel" if bnb.mode == "wheel" or nvcc.origin == "none" else "source",
        payload_name=payload.name,
        payload_requirements=payload.requirements,
        optional_requirements=matrix.optional_requirements,
        train_dtype=dtype,
        warm_triton_cache=warm,
        image_repo=matrix.image_repo,
        tags=tags.floating_tags(target_id),
        labels=labels,
        expect_env=expect,
        is_default=is_default,
        workload=workload,
        runtime_c_compiler=needs_runtime_compiler(matrix, torch.triton),
        platforms=platforms,
        provenance=provenance,
    )


def expand(matrix: Matrix) -> Expansion:
    """Every target of the matrix (defaults, then extra cells) and the skipped cells. A loaded matrix
    carries them (the loader expands once); a Matrix built by hand is expanded here."""
    if matrix.targets:
        return Expansion(matrix.targets, matrix.refused)
    return _expand(matrix)


def _defaults(matrix: Matrix) -> dict[tuple[str, str], Pick]:
    picks: dict[tuple[str, str], Pick] = {}
    for arch in matrix.arches.values():
        for tk in matrix.toolkits.values():
            if vendor_mismatch(arch, tk):
                continue  # a vendor mismatch is not a cell anyone asks about
            picks[(arch.name, tk.id)] = pick(matrix, arch.name, tk.id)
    return picks


def _expand(matrix: Matrix) -> Expansion:
    defaults = _defaults(matrix)
    targets: dict[str, Target] = {}
    refused: list[RefusedCell] = []
    if matrix.expand_all:
        for (arch, tk), cell_pick in defaults.items():
            if cell_pick.candidate is None:
                refused.append(RefusedCell(f"{arch}-{tk}", cell_pick.refusals))
                continue
            default = cell_pick.candidate
            targets[f"{arch}-{tk}"] = build_target(
                matrix, default, f"{arch}-{tk}", is_default=True,
                why_torch=f"newest torch that ships {tk} and passes every rule in the {default.flavor.name} flavor",
                why_flavor="first flavor of the toolkit that passes every rule")
            for flavor in flavors_for(matrix, tk):  # the other flavors stay selectable: -<flavor> ids
                other = pick(matrix, arch, tk, flavor=flavor).candidate if flavor != default.flavor.name else None
                if other is not None:
                    other_id = tags.make_target_id(arch, tk, None, flavor, None)
                    targets[other_id] = build_target(
                        matrix, other, other_id, is_default=False,
                        why_torch=f"newest torch that ships {tk} and passes every rule in the {flavor} flavor",
                        why_flavor=f"a further flavor of the toolkit (default: {default.flavor.name})")
    problems: list[str] = []
    for i, spec in enumerate(matrix.extra_cells):
        where = f"{matrix.path.name}:{spec.line}: cells.extra[{i}]"
        target_or_refusal = _extra_target(matrix, spec, defaults)
        if isinstance(target_or_refusal, str):
            problems.append(f"{where}: {target_or_refusal}")
            continue
        if target_or_refusal.id in targets:
            problems.append(f"{where}: duplicate target id {target_or_refusal.id!r} (the cell is already in the matrix)")
            continue
        targets[target_or_refusal.id] = target_or_refusal
    if problems:
        raise ConfigError(problems)
    if not targets:
        line = matrix.lines.get(("cells",), 1)
        why = "every combination is refused: imagefactory targets --why-not"
        raise ConfigError([f"{matrix.path.name}:{line}: cells: the matrix yields no targets ({why})"])
    return Expansion(tuple(targets[k] for k in sorted(targets)), tuple(sorted(refused, key=lambda c: c.id)))


def _extra_target(matrix: Matrix, spec: CellSpec, defaults: dict[tuple[str, str], Pick]) -> Target | str:
    arch, tk = matrix.arches[spec.arch], matrix.toolkits[spec.toolkit]
    if mismatch := vendor_mismatch(arch, tk):
        return str(mismatch)
    chosen = pick(matrix, spec.arch, spec.toolkit, spec.torch, spec.flavor, spec.dtype)
    if chosen.candidate is None:
        return "; ".join(str(r) for r in chosen.refusals)
    default = defaults[(spec.arch, spec.toolkit)].candidate
    cand = chosen.candidate
    torch_suffix = cand.torch.minor if default is None or cand.torch != default.torch else None
    flavor_suffix = cand.flavor.name if default is None or cand.flavor != default.flavor else None
    dtype_suffix = spec.dtype if spec.dtype and spec.dtype != natural_dtype(cand) else None
    target_id = tags.make_target_id(spec.arch, spec.toolkit, torch_suffix, flavor_suffix, dtype_suffix)
    return build_target(matrix, cand, target_id, is_default=False,
                        why_torch="pinned in cells.extra" if spec.torch else "default torch of the cell",
                        why_flavor="pinned in cells.extra" if spec.flavor else "first flavor that passes")


def all_targets(matrix: Matrix) -> tuple[Target, ...]:
    return expand(matrix).targets


def resolve_target(matrix: Matrix, target_id: str) -> Target:
    """The target with this id; otherwise an error that names the refusing rule or the near misses."""
    known = expand(matrix).by_id()
    if target_id in known:
        return known[target_id]
    parsed = tags.parse_target_id(target_id)
    if parsed and parsed.arch in matrix.arches and parsed.toolkit in matrix.toolkits:
        torch = None
        if parsed.torch:
            torch = next((t.version for t in matrix.torches.values() if t.minor == parsed.torch), None)
            if torch is None:
                raise UnknownTargetError(f"{target_id}: no torch {parsed.torch} in {matrix.path.name} "
                                         f"(torch: {', '.join(t.minor for t in matrix.torches.values())})")
        arch, tk = matrix.arches[parsed.arch], matrix.toolkits[parsed.toolkit]
        if mismatch := vendor_mismatch(arch, tk):
            raise RefusedTargetError(f"{target_id}: {mismatch}")
        if parsed.flavor is not None and parsed.flavor not in matrix.flavors:
            raise UnknownTargetError(f"{target_id}: no flavor {parsed.flavor} in {matrix.path.name}")
        chosen = pick(matrix, parsed.arch, parsed.toolkit, torch, parsed.flavor, parsed.dtype)  # type: ignore[arg-type]
        if chosen.candidate is None:
            raise RefusedTargetError(f"{target_id}: " + "; ".join(str(r) for r in chosen.refusals))
        raise UnknownTargetError(f"{target_id}: compatible, but not a cell of {matrix.path.name}; add it under "
                                 f"cells.extra to build it")
    raise UnknownTargetError(_unknown_message(f"unknown target {target_id!r}", target_id, known))


def _unknown_message(prefix: str, word: str, known: dict[str, Target]) -> str:
    close = near_misses(word, known, n=5)
    if close:
        return f"{prefix}; did you mean: {', '.join(close)}?"
    return f"{prefix}; `imagefactory targets` lists the {len(known)} targets"


MAX_GLOBS = 1000  # `{a,b}` twenty times over is a million globs: refuse rather than hang


def expand_braces(pattern: str) -> list[str]:
    """`hopper-{cu128,cu130}` -> ['hopper-cu128', 'hopper-cu130'] (nested braces work; no brace: as is).

    Iterative (any nesting depth) and capped at MAX_GLOBS results (a usage error beyond)."""
    done: list[str] = []
    todo = [pattern]
    while todo:
        current = todo.pop()
        match = re.search(r"\{([^{}]*)\}", current)  # an innermost pair
        if match is None:
            done.append(current)
            continue
        head, tail = current[: match.start()], current[match.end():]
        todo.extend(head + option + tail for option in reversed(match.group(1).split(",")))
        if len(done) + len(todo) > MAX_GLOBS:
            raise UsageError(f"--select {pattern[:60]!r}: its braces expand to more than {MAX_GLOBS} patterns")
    return list(dict.fromkeys(done))  # inner pairs expand first: `{a,{b,c}}` meets `a` twice


def id_matches(target_id: str, pattern: str) -> bool:
    """Whether the id matches the glob (`*`, `?`, `[...]`, `{a,b}`): for targets and refused cells alike."""
    return any(fnmatch.fnmatchcase(target_id, p) for p in _globs(pattern))


@functools.lru_cache(maxsize=32)
def _globs(pattern: str) -> tuple[str, ...]:
    return tuple(expand_braces(pattern))  # once per pattern, not once per id it is matched against


def select_targets(matrix: Matrix, pattern: str) -> list[Target]:
    """Targets whose id matches the glob; an error when none does."""
    targets = [t for t in expand(matrix).targets if id_matches(t.id, pattern)]
    if not targets:
        known = expand(matrix).by_id()
        if len(expand_braces(pattern)) == 1 and not any(ch in pattern for ch in "*?["):
            resolve_target(matrix, pattern)  # an exact id: say why it is refused or what is near
        raise UnknownTargetError(_unknown_message(f"no target matches {pattern!r}", pattern, known))
    return targets
