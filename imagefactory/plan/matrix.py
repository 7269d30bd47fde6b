"""Load matrix.yaml with line numbers, validate every key, and build the typed `Matrix`.

Every problem is collected (not just the first) and reported as `matrix.yaml:LINE: <path>: <what>`,
with a "did you mean" for near misses. Nothing here raises anything but `ConfigError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from imagefactory.errors import ConfigError, did_you_mean
from imagefactory.plan.expand import expand
from imagefactory.plan.model import (
    ARCH_NAME_PATTERN,
    FLAVORS,
    PLATFORMS,
    TOOLKIT_ID_PATTERN,
    TRAIN_DTYPES,
    ArchFamily,
    BaseImages,
    Bitsandbytes,
    CellSpec,
    Flavor,
    Matrix,
    NvccSource,
    Payload,
    Toolkit,
    TorchBuild,
    format_path,
    minor_of,
    nearest_line,
)

Path_ = tuple[str | int, ...]

NAME_RE = re.compile(f"^{ARCH_NAME_PATTERN}$")  # arch (and payload) names
TOOLKIT_RE = re.compile(f"^({TOOLKIT_ID_PATTERN})$")
MAJOR_MINOR_RE = re.compile(r"^\d+\.\d+$")
IMAGE_REF_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$")
REQUIREMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9_,.-]+\])?==[0-9][0-9A-Za-z.+!-]*$")
DRIVER_RE = re.compile(r"^\d{3}(\.\d+)*$")
CAPABILITIES = ("bf16", "fa2", "fa3", "fp8")
NVCC_ORIGINS = ("pypi", "base", "hipcc", "none")

TOP_KEYS = {
    "image_repo": True,
    "torch_index_url": True,
    "warm_triton_cache": False,
    "arches": True,
    "sm_min_cuda": True,
    "toolkits": True,
    "torch": True,
    "triton_pairing": True,
    "flavors": True,
    "bitsandbytes": True,
    "payloads": True,
    "optional": False,
    "cells": True,
}


class _Doc:
    """The YAML tree as plain values plus the line of every key, and the problems found so far."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: dict[Path_, int] = {}
        self.problems: list[tuple[int, str]] = []
        self._scalar = yaml.SafeLoader("")

    def line(self, path: Path_) -> int:
        return nearest_line(self.lines, path)

    def problem(self, path: Path_, what: str) -> None:
        where = format_path(path) + ": " if path else ""
        # keys and values come from the file: escape line breaks so each problem stays one line
        message = f"{where}{what}".replace("\r", "\\r").replace("\n", "\\n")
        self.problems.append((self.line(path), f"{self.name}:{self.line(path)}: {message}"))

    def to_python(self, node: yaml.Node, path: Path_) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    self.lines[path + ("?",)] = key_node.start_mark.line + 1
                    self.problem(path + ("?",), f"keys must be strings, got {key!r} (quote it)")
                    continue
                child = path + (key,)
                if key in out:
                    self.lines[child + ("dup",)] = key_node.start_mark.line + 1
                    self.problem(child + ("dup",), f"duplicate key '{key}' (first at line {self.lines[child]})")
                    continue
                self.lines[child] = key_node.start_mark.line + 1
                out[key] = self.to_python(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.to_python(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._scalar.construct_object(node)


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


class _Reader:
    """Typed accessors that record a problem and return None instead of raising."""

    def __init__(self, doc: _Doc) -> None:
        self.doc = doc

    def mapping(self, value: Any, path: Path_, keys: Mapping[str, bool]) -> dict[str, Any] | None:
        """A mapping with known keys (key -> required). Unknown keys get a did-you-mean."""
        if not isinstance(value, dict):
            self.doc.problem(path, f"expected a mapping, got {_type_name(value)}")
            return None
        for key in value:
            if key not in keys:
                self.doc.problem(path + (key,), f"unknown key '{key}'{did_you_mean(key, keys)}")
        for key, required in keys.items():
            if required and key not in value:
                self.doc.problem(path, f"missing required key '{key}'")
        return value

    def table(self, value: Any, path: Path_, *, non_empty: bool = True) -> dict[str, Any] | None:
        """A mapping keyed by user-chosen names."""
        if not isinstance(value, dict):
            self.doc.problem(path, f"expected a mapping, got {_type_name(value)}")
            return None
        if non_empty and not value:
            self.doc.problem(path, "is empty")
            return None
        return value

    def string(self, value: Any, path: Path_, *, regex: re.Pattern[str] | None = None, what: str = "") -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.doc.problem(path, f"expected a string, got number {value!r} (quote it: \"{value}\")")
            return None
        if not isinstance(value, str):
            self.doc.problem(path, f"expected a string, got {_type_name(value)}")
            return None
        if regex is not None and not regex.match(value):
            self.doc.problem(path, f"malformed {what or 'value'} {value!r}")
            return None
        return value

    def version(self, value: Any, path: Path_, *, major_minor: bool = False) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if major_minor and not MAJOR_MINOR_RE.match(text):
            self.doc.problem(path, f"malformed version {text!r} (expected MAJOR.MINOR, e.g. \"13.0\")")
            return None
        try:
            parsed = Version(text)
        except InvalidVersion:
            self.doc.problem(path, f"malformed version {text!r}")
            return None
        if parsed.local or not re.match(r"^\d+(\.\d+)*$", text):
            self.doc.problem(path, f"malformed version {text!r} (expected plain numbers like \"2.14.1\")")
            return None
        return text

    def specifier(self, value: Any, path: Path_) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        try:
            SpecifierSet(text)
        except InvalidSpecifier:
            self.doc.problem(path, f"malformed version specifier {text!r} (e.g. \">=2.6\")")
            return None
        return text

    def boolean(self, value: Any, path: Path_) -> bool | None:
        if not isinstance(value, bool):
            self.doc.problem(path, f"expected true or false, got {_type_name(value)}")
            return None
        return value

    def choice(self, value: Any, path: Path_, choices: tuple[str, ...]) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if text not in choices:
            self.doc.problem(path, f"must be one of {', '.join(choices)}, got {text!r}{did_you_mean(text, choices)}")
            return None
        return text

    def str_list(self, value: Any, path: Path_, item: Callable[[Any, Path_], str | None]) -> tuple[str, ...] | None:
        if not isinstance(value, list):
            self.doc.problem(path, f"expected a list, got {_type_name(value)}")
            return None
        items = [item(v, path + (i,)) for i, v in enumerate(value)]
        if any(i is None for i in items):
            return None
        seen: set[str] = set()
        for i, text in enumerate(items):
            if text in seen:
                self.doc.problem(path + (i,), f"duplicate entry {text!r}")
            seen.add(text)  # type: ignore[arg-type]
        return tuple(items)  # type: ignore[arg-type]

    def reference(self, value: Any, path: Path_, known: Mapping[str, Any], what: str) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if text not in known:
            self.doc.problem(path, f"unknown {what} {text!r}{did_you_mean(text, known)}")
            return None
        return text


def load_matrix(path: str | Path) -> Matrix:
    """Read and validate matrix.yaml. Raises ConfigError (exit 2) listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file (pass --matrix PATH or run from the repository root)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    return parse_matrix(text, path)


def parse_matrix(text: str, path: Path) -> Matrix:
    doc = _Doc(path.name)
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = _one_line(" ".join(str(p) for p in (exc.context, exc.problem) if p))
        raise ConfigError([f"{path.name}:{line}: invalid YAML: {what}"]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML forbids; it knows the offset, not the line
        line = text[: exc.position].count("\n") + 1
        raise ConfigError([f"{path.name}:{line}: invalid YAML: character {exc.character!r} is not allowed"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path.name}:1: invalid YAML: {_one_line(str(exc))}"]) from None
    if root_node is None:
        raise ConfigError([f"{path.name}:1: the matrix is empty (expected the keys {', '.join(TOP_KEYS)})"])
    try:
        raw = doc.to_python(root_node, ())
    except yaml.YAMLError as exc:  # a scalar that cannot be constructed (e.g. a bad timestamp)
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError([f"{path.name}:{mark.line + 1 if mark else 1}: invalid YAML value: "
                           f"{_one_line(str(exc))}"]) from None
    matrix = _build(raw, doc, path)
    if doc.problems or matrix is None:
        problems = sorted(set(doc.problems)) or [(1, f"{path.name}:1: invalid matrix")]
        raise ConfigError([msg for _, msg in problems])
    expand(matrix)  # refused or duplicate explicit cells are config errors too: report them at load time
    return matrix


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _build(raw: Any, doc: _Doc, path: Path) -> Matrix | None:  # noqa: C901 - one linear pass per section
    r = _Reader(doc)
    if raw == {} or raw is None:
        doc.problem((), "the matrix is empty")
        return None
    top = r.mapping(raw, (), TOP_KEYS)
    if top is None:
        return None

    image_repo = r.string(top.get("image_repo"), ("image_repo",), regex=re.compile(r"^[a-z0-9][a-z0-9._/-]*$"),
                          what="image repository") if "image_repo" in top else None
    index_url = r.string(top.get("torch_index_url"), ("torch_index_url",)) if "torch_index_url" in top else None
    if index_url is not None and "{toolkit}" not in index_url:
        doc.problem(("torch_index_url",), "must contain {toolkit}")
    warm = r.boolean(top["warm_triton_cache"], ("warm_triton_cache",)) if "warm_triton_cache" in top else True

    # arches
    arches: dict[str, ArchFamily] = {}
    for name, body in (r.table(top.get("arches"), ("arches",)) or {}).items():
        p: Path_ = ("arches", name)
        if not NAME_RE.match(name):
            doc.problem(p, f"arch names are lowercase letters and digits (no '-'), got {name!r}")
            continue
        m = r.mapping(body, p, {"vendor": True, "sms": False, "gfx": False, "capabilities": False,
                               "min_rocm": False, "platforms": False, "description": False})
        if m is None:
            continue
        vendor = r.choice(m.get("vendor"), p + ("vendor",), ("nvidia", "amd")) if "vendor" in m else None
        sms = r.str_list(m["sms"], p + ("sms",), lambda v, q: r.version(v, q, major_minor=True)) if "sms" in m else ()
        gfx = r.str_list(m["gfx"], p + ("gfx",), lambda v, q: r.string(v, q, regex=re.compile(r"^gfx[0-9a-f]{3,4}$"),
                                                                         what="gfx target")) if "gfx" in m else ()
        caps = r.str_list(m["capabilities"], p + ("capabilities",),
                          lambda v, q: r.choice(v, q, CAPABILITIES)) if "capabilities" in m else ()
        min_rocm = r.version(m["min_rocm"], p + ("min_rocm",), major_minor=True) if "min_rocm" in m else None
        desc = r.string(m.get("description", ""), p + ("description",))
        platforms = _platforms(r, m, p)
        if vendor == "nvidia" and sms is not None and (not sms or gfx):
            doc.problem(p, "an nvidia arch needs a non-empty 'sms' list and no 'gfx'")
            continue
        if vendor == "amd" and gfx is not None and (not gfx or sms or min_rocm is None):
            doc.problem(p, "an amd arch needs a non-empty 'gfx' list, 'min_rocm' and no 'sms'")
            continue
        if None in (vendor, sms, gfx, caps, desc, platforms) or ("min_rocm" in m and min_rocm is None):
            continue
        arches[name] = ArchFamily(name, vendor, sms, gfx, frozenset(caps), min_rocm, desc, platforms)  # type: ignore[arg-type]

    sm_min_cuda: dict[str, str] = {}
    for sm, cuda in (r.table(top.get("sm_min_cuda"), ("sm_min_cuda",), non_empty=False) or {}).items():
        p = ("sm_min_cuda", sm)
        if r.version(sm, p, major_minor=True) and (v := r.version(cuda, p, major_minor=True)):
            sm_min_cuda[sm] = v

    # flavors (before toolkits: toolkits reference them)
    flavors: dict[str, Flavor] = {}
    for name, body in (r.table(top.get("flavors"), ("flavors",)) or {}).items():
        p = ("flavors", name)
        if name not in FLAVORS:
            doc.problem(p, f"unknown flavor {name!r}{did_you_mean(name, FLAVORS)} (flavors: {', '.join(FLAVORS)})")
            continue
        m = r.mapping(body, p, {"vendor": True, "base": False, "torch": False, "description": False})
        if m is None:
            continue
        vendor = r.choice(m.get("vendor"), p + ("vendor",), ("nvidia", "amd")) if "vendor" in m else None
        base = _base_images(r, m["base"], p + ("base",)) if "base" in m else None
        desc = r.string(m.get("description", ""), p + ("description",))
        torch_from = r.choice(m["torch"], p + ("torch",), ("pypi", "any")) if "torch" in m else "any"
        if name == "slim" and "base" not in m:
            doc.problem(p, "the slim flavor needs 'base' (its OS images)")
        if vendor is None or desc is None or torch_from is None:
            continue
        flavors[name] = Flavor(name, vendor, base, desc, pypi_torch_only=torch_from == "pypi")  # type: ignore[arg-type]

    # toolkits
    toolkits: dict[str, Toolkit] = {}
    for tid, body in (r.table(top.get("toolkits"), ("toolkits",)) or {}).items():
        p = ("toolkits", tid)
        if not TOOLKIT_RE.match(tid):
            doc.problem(p, f"toolkit ids look like cu130 or rocm6.2, got {tid!r}")
            continue
        m = r.mapping(body, p, {"kind": True, "version": True, "driver_floor": False, "drops_sm_below": False,
                               "nvcc": True, "bases": False})
        if m is None:
            continue
        kind = r.choice(m.get("kind"), p + ("kind",), ("cuda", "rocm")) if "kind" in m else None
        version = r.version(m.get("version"), p + ("version",), major_minor=True) if "version" in m else None
        driver = r.string(m["driver_floor"], p + ("driver_floor",), regex=DRIVER_RE,
                          what="driver branch") if m.get("driver_floor") is not None else None
        drops = r.version(m["drops_sm_below"], p + ("drops_sm_below",), major_minor=True) if "drops_sm_below" in m else None
        if kind == "cuda" and "driver_floor" not in m:
            doc.problem(p, "a cuda toolkit needs 'driver_floor'")
        if kind and version:
            expected = f"cu{version.replace('.', '')}" if kind == "cuda" else f"rocm{version}"
            if tid != expected:
                doc.problem(p + ("version",), f"toolkit id {tid!r} does not match kind {kind} version {version} "
                                              f"(expected id {expected!r})")
        nvcc: dict[str, NvccSource] = {}
        for flavor, src in (r.table(m.get("nvcc"), p + ("nvcc",)) or {}).items():
            q = p + ("nvcc", flavor)
            if r.reference(flavor, q, flavors, "flavor") is None:
                continue
            sm = r.mapping(src, q, {"from": True, "packages": False})
            if sm is None or "from" not in sm:
                continue
            origin = r.choice(sm["from"], q + ("from",), NVCC_ORIGINS)
            pkgs = r.str_list(sm["packages"], q + ("packages",), lambda v, x: r.string(
                v, x, regex=REQUIREMENT_RE, what="pinned requirement (NAME==VERSION)")) if "packages" in sm else ()
            if origin == "pypi" and not pkgs:
                doc.problem(q, "from: pypi needs a non-empty 'packages' list")
            if origin is not None and pkgs is not None:
                nvcc[flavor] = NvccSource(origin, pkgs)  # type: ignore[arg-type]
        bases: dict[str, BaseImages] = {}
        for flavor, body2 in (r.table(m.get("bases", {}), p + ("bases",), non_empty=False) or {}).items():
            q = p + ("bases", flavor)
            if r.reference(flavor, q, flavors, "flavor") is None:
                continue
            if (b := _base_images(r, body2, q)) is not None:
                bases[flavor] = b
        for flavor in nvcc:
            if flavor in flavors and flavors[flavor].base is None and flavor not in bases:
                doc.problem(p + ("bases",), f"flavor {flavor!r} is listed under nvcc but has no base images here")
        if None in (kind, version) or ("drops_sm_below" in m and drops is None):
            continue
        toolkits[tid] = Toolkit(tid, kind, version, driver, drops, nvcc, bases)  # type: ignore[arg-type]

    # torch builds
    torches: dict[str, TorchBuild] = {}
    minors: dict[str, str] = {}
    for version, body in (r.table(top.get("torch"), ("torch",)) or {}).items():
        p = ("torch", version)
        if r.version(version, p) is None:
            continue
        m = r.mapping(body, p, {"triton": True, "python": True, "toolkits": True, "pypi_toolkit": False,
                               "pypi_platforms": False})
        if m is None:
            continue
        triton = r.version(m.get("triton"), p + ("triton",)) if "triton" in m else None
        pythons = r.str_list(m.get("python"), p + ("python",),
                             lambda v, q: r.version(v, q, major_minor=True)) if "python" in m else None
        tks = r.str_list(m.get("toolkits"), p + ("toolkits",),
                         lambda v, q: r.reference(v, q, toolkits, "toolkit")) if "toolkits" in m else None
        pypi = r.reference(m["pypi_toolkit"], p + ("pypi_toolkit",), toolkits, "toolkit") if m.get(
            "pypi_toolkit") is not None else None
        if pypi and tks and pypi not in tks:
            doc.problem(p + ("pypi_toolkit",), f"{pypi!r} is not in this torch's toolkits")
        if tks is not None and not tks:
            doc.problem(p + ("toolkits",), "is empty")
        minor = minor_of(version)
        if minor in minors:
            doc.problem(p, f"torch {minor} is already declared as {minors[minor]!r} (one patch release per minor: "
                           f"target ids use the minor)")
            continue
        minors[minor] = version
        pypi_platforms = _platforms(r, m, p, key="pypi_platforms")
        if None in (triton, pythons, tks, pypi_platforms):
            continue
        torches[version] = TorchBuild(version, triton, pythons, tks, pypi, pypi_platforms)  # type: ignore[arg-type]

    triton_pairing: dict[str, str] = {}
    for tminor, trminor in (r.table(top.get("triton_pairing"), ("triton_pairing",), non_empty=False) or {}).items():
        p = ("triton_pairing", tminor)
        if r.version(tminor, p, major_minor=True) and (v := r.version(trminor, p, major_minor=True)):
            triton_pairing[tminor] = v

    bnb = _bitsandbytes(r, top.get("bitsandbytes"), ("bitsandbytes",)) if "bitsandbytes" in top else None

    payloads: list[Payload] = []
    raw_payloads = top.get("payloads")
    if "payloads" in top and not isinstance(raw_payloads, list):
        doc.problem(("payloads",), f"expected a list, got {_type_name(raw_payloads)}")
    elif isinstance(raw_payloads, list):
        if not raw_payloads:
            doc.problem(("payloads",), "is empty")
        for i, body in enumerate(raw_payloads):
            p = ("payloads", i)
            m = r.mapping(body, p, {"name": True, "torch": True, "python": True, "requirements": True})
            if m is None:
                continue
            name = r.string(m.get("name"), p + ("name",), regex=NAME_RE, what="payload name") if "name" in m else None
            tspec = r.specifier(m.get("torch"), p + ("torch",)) if "torch" in m else None
            pspec = r.specifier(m.get("python"), p + ("python",)) if "python" in m else None
            reqs = r.str_list(m.get("requirements"), p + ("requirements",), lambda v, q: r.string(
                v, q, regex=REQUIREMENT_RE, what="pinned requirement (NAME==VERSION)")) if "requirements" in m else None
            if None in (name, tspec, pspec, reqs):
                continue
            if name in {pl.name for pl in payloads}:
                doc.problem(p + ("name",), f"duplicate payload name {name!r}")
                continue
            payloads.append(Payload(name, tspec, pspec, reqs))  # type: ignore[arg-type]

    optional: tuple[str, ...] = ()
    if "optional" in top:
        optional = r.str_list(top["optional"], ("optional",), lambda v, q: r.string(
            v, q, regex=REQUIREMENT_RE, what="pinned requirement (NAME==VERSION)")) or ()

    expand_all, extra = _cells(r, top.get("cells"), arches, toolkits, torches, flavors) if "cells" in top else (False, ())

    if doc.problems or None in (image_repo, index_url, warm, bnb):
        return None
    return Matrix(
        path=path,
        image_repo=image_repo,  # type: ignore[arg-type]
        torch_index_url=index_url,  # type: ignore[arg-type]
        warm_triton_cache=warm,  # type: ignore[arg-type]
        arches=arches,
        toolkits=toolkits,
        torches=torches,
        flavors=flavors,
        sm_min_cuda=sm_min_cuda,
        triton_pairing=triton_pairing,
        bitsandbytes=bnb,  # type: ignore[arg-type]
        payloads=tuple(payloads),
        optional_requirements=optional,
        expand_all=expand_all,
        extra_cells=extra,
        lines=dict(doc.lines),
    )


def _platforms(r: _Reader, m: dict[str, Any], path: Path_, key: str = "platforms") -> tuple[str, ...] | None:
    """An optional non-empty list of OCI platforms (default: linux/amd64 alone)."""
    if key not in m:
        return ("linux/amd64",)
    found = r.str_list(m[key], path + (key,), lambda v, q: r.choice(v, q, PLATFORMS))
    if found is not None and not found:
        r.doc.problem(path + (key,), "is empty")
        return None
    return found


def _base_images(r: _Reader, value: Any, path: Path_) -> BaseImages | None:
    m = r.mapping(value, path, {"build": True, "runtime": True, "python": True})
    if m is None:
        return None
    build = r.string(m.get("build"), path + ("build",), regex=IMAGE_REF_RE, what="image reference") if "build" in m else None
    runtime = r.string(m.get("runtime"), path + ("runtime",), regex=IMAGE_REF_RE,
                       what="image reference") if "runtime" in m else None
    python = r.version(m.get("python"), path + ("python",), major_minor=True) if "python" in m else None
    if None in (build, runtime, python):
        return None
    return BaseImages(build, runtime, python)  # type: ignore[arg-type]


def _bitsandbytes(r: _Reader, value: Any, path: Path_) -> Bitsandbytes | None:
    m = r.mapping(value, path, {"version": True, "mode": True, "git_url": True, "git_ref": True,
                                "fallback": False, "requires_torch": True})
    if m is None:
        return None
    version = r.version(m.get("version"), path + ("version",)) if "version" in m else None
    mode = r.choice(m.get("mode"), path + ("mode",), ("source", "wheel")) if "mode" in m else None
    url = r.string(m.get("git_url"), path + ("git_url",), regex=re.compile(r"^(https|git|ssh)://\S+$"),
                   what="git url") if "git_url" in m else None
    ref = r.string(m.get("git_ref"), path + ("git_ref",)) if "git_ref" in m else None
    fallback = r.choice(m["fallback"], path + ("fallback",), ("source", "wheel")) if m.get("fallback") is not None else None
    requires = r.specifier(m.get("requires_torch"), path + ("requires_torch",)) if "requires_torch" in m else None
    if None in (version, mode, url, ref, requires) or (m.get("fallback") is not None and fallback is None):
        return None
    if fallback == mode:
        r.doc.problem(path + ("fallback",), f"the fallback must differ from mode ({mode})")
    return Bitsandbytes(version, mode, url, ref, fallback, requires)  # type: ignore[arg-type]


def _cells(
    r: _Reader,
    value: Any,
    arches: Mapping[str, ArchFamily],
    toolkits: Mapping[str, Toolkit],
    torches: Mapping[str, TorchBuild],
    flavors: Mapping[str, Flavor],
) -> tuple[bool, tuple[CellSpec, ...]]:
    m = r.mapping(value, ("cells",), {"expand": True, "extra": False})
    if m is None:
        return False, ()
    expand_mode = r.choice(m.get("expand"), ("cells", "expand"), ("all", "none")) if "expand" in m else None
    extra: list[CellSpec] = []
    raw_extra = m.get("extra", [])
    if not isinstance(raw_extra, list):
        r.doc.problem(("cells", "extra"), f"expected a list, got {_type_name(raw_extra)}")
        raw_extra = []
    for i, body in enumerate(raw_extra):
        p: Path_ = ("cells", "extra", i)
        c = r.mapping(body, p, {"arch": True, "toolkit": True, "torch": False, "flavor": False, "dtype": False})
        if c is None:
            continue
        arch = r.reference(c.get("arch"), p + ("arch",), arches, "arch") if "arch" in c else None
        tk = r.reference(c.get("toolkit"), p + ("toolkit",), toolkits, "toolkit") if "toolkit" in c else None
        torch = r.reference(c["torch"], p + ("torch",), torches, "torch version") if "torch" in c else None
        flavor = r.reference(c["flavor"], p + ("flavor",), flavors, "flavor") if "flavor" in c else None
        dtype = r.choice(c["dtype"], p + ("dtype",), TRAIN_DTYPES) if "dtype" in c else None
        if None in (arch, tk) or any(k in c and v is None for k, v in (("torch", torch), ("flavor", flavor),
                                                                       ("dtype", dtype))):
            continue
        extra.append(CellSpec(arch, tk, torch, flavor, dtype, r.doc.line(p)))  # type: ignore[arg-type]
    if expand_mode == "none" and not extra and "extra" in m:
        r.doc.problem(("cells", "extra"), "is empty and expand is none: the matrix has no cells")
    return expand_mode == "all", tuple(extra)
