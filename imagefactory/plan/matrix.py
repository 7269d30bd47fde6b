"""Load matrix.yaml with line numbers, validate every key, and build the typed `Matrix` with its targets.

Every problem is collected (not just the first) and reported as `matrix.yaml:LINE: <path>: <what>`,
with a "did you mean" for near misses. Nothing here raises anything but `ConfigError`.

The file is hostile until proven otherwise: its size, nesting depth and alias expansion are capped
before anything is built, YAML timestamps stay strings, and each value is checked against the whole
-value patterns of imagefactory/plan/schema.py (the one declaration of the file's shape).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from imagefactory.errors import ConfigError, did_you_mean
from imagefactory.plan import schema
from imagefactory.plan.expand import expand
from imagefactory.plan.model import (
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
    WarmShape,
    Workload,
    format_path,
    minor_of,
    nearest_line,
)
from probe.tags import FLAVORS, TRAIN_DTYPES

Path_ = tuple[str | int, ...]

MAX_BYTES = 1_000_000  # matrix.yaml is ~15 KB; /dev/zero or a log file is not a matrix
MAX_DEPTH = 40  # the deepest real key is 6 levels down
MAX_NODES = 100_000  # values built, counting each alias expansion: caps "billion laughs"

TOP_KEYS = schema.keys(schema.ROOT)
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


NAME_RE = _compile(schema.NAME)
TOOLKIT_RE = _compile(schema.TOOLKIT_ID)
MAJOR_MINOR_RE = _compile(schema.MAJOR_MINOR)
VERSION_RE = _compile(schema.VERSION)
IMAGE_REPO_RE = _compile(schema.IMAGE_REPO)
IMAGE_REF_RE = _compile(schema.IMAGE_REF)
REQUIREMENT_RE = _compile(schema.REQUIREMENT)
APT_PIN_RE = _compile(schema.APT_PIN)
HOST_COMPILER_RE = _compile(schema.HOST_COMPILER)
DRIVER_RE = _compile(schema.DRIVER)
GFX_RE = _compile(schema.GFX)
INDEX_URL_RE = _compile(schema.INDEX_URL)
GIT_URL_RE = _compile(schema.GIT_URL)
GIT_REF_RE = _compile(schema.GIT_REF)
ONE_LINE_RE = _compile(schema.ONE_LINE)
SPECIFIER_RE = _compile(schema.SPECIFIER)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, capped: nesting deeper than MAX_DEPTH is an error while composing, and
    timestamps are not resolved (`foo: 2001-13-45` is a string, not a crash)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Fatal(Exception):
    """A problem that stops reading the tree (a recursive alias, too many values)."""

    def __init__(self, line: int, what: str) -> None:
        super().__init__(what)
        self.line, self.what = line, what


def _shown(value: Any, limit: int = 60) -> str:
    """repr of a value from the file, shortened: a 10 KB value must not make a 10 KB error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


def _node_kind(node: yaml.Node) -> str:
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping" if isinstance(node, yaml.MappingNode) \
        else "a scalar"


class _Doc:
    """The YAML tree as plain values plus the line of every key, and the problems found so far."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: dict[Path_, int] = {}
        self.problems: list[tuple[int, str]] = []
        self._scalar = _Loader("")
        self._budget = MAX_NODES
        self._open: set[int] = set()  # nodes being built: meeting one again is a recursive alias

    def line(self, path: Path_) -> int:
        return nearest_line(self.lines, path)

    def problem(self, path: Path_, what: str) -> None:
        where = format_path(path) + ": " if path else ""
        # keys and values come from the file: escape line breaks (and every other unprintable) so each
        # problem stays one line
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in f"{where}{what}")
        self.problems.append((self.line(path), f"{self.name}:{self.line(path)}: {message}"))

    def scalar(self, node: yaml.Node, path: Path_) -> Any:
        try:
            return self._scalar.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:  # 5000-digit integers, bad escapes…
            self.lines.setdefault(path, node.start_mark.line + 1)
            self.problem(path, f"invalid value {_shown(node.value)}: {' '.join(str(exc).split())[:120]}")
            return _INVALID

    def to_python(self, node: yaml.Node, path: Path_) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        self._budget -= 1
        if self._budget < 0:
            raise _Fatal(node.start_mark.line + 1, f"more than {MAX_NODES} values (aliases expanding too far?)")
        if id(node) in self._open:
            raise _Fatal(node.start_mark.line + 1, f"{format_path(path)}: recursive alias (a value that contains "
                                                   f"itself)")
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return self.scalar(node, path)
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.to_python(item, path + (i,)) for i, item in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path + ("?",)) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.lines[path + ("?",)] = key_node.start_mark.line + 1
                got = _shown(key) if isinstance(key_node, yaml.ScalarNode) else _node_kind(key_node)
                self.problem(path + ("?",), f"keys must be strings, got {got} (quote it)")
                continue
            child = path + (key,)
            if key in out:
                self.lines[child + ("dup",)] = key_node.start_mark.line + 1
                self.problem(child + ("dup",), f"duplicate key {_shown(key)} (first at line {self.lines[child]})")
                continue
            self.lines[child] = key_node.start_mark.line + 1
            out[key] = self.to_python(value_node, child)
        return out


class _Invalid:
    """A scalar YAML could not construct (already reported)."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID = _Invalid()


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "mapping",
            _Invalid: "an invalid value"}.get(type(value), "null" if value is None else type(value).__name__)


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
                self.doc.problem(path + (key,), f"unknown key {_shown(key)}{did_you_mean(key, keys)}")
        for key, required in keys.items():
            if required and key not in value:
                self.doc.problem(path, f"missing required key '{key}'")
        return value

    def record(self, value: Any, path: Path_, shape: schema.Schema) -> dict[str, Any] | None:
        """A mapping whose keys schema.py declares."""
        return self.mapping(value, path, schema.keys(shape))

    def table(self, value: Any, path: Path_, *, non_empty: bool = True) -> dict[str, Any]:
        """A mapping keyed by user-chosen names ({} after a problem)."""
        if not isinstance(value, dict):
            self.doc.problem(path, f"expected a mapping, got {_type_name(value)}")
            return {}
        if non_empty and not value:
            self.doc.problem(path, "is empty")
        return value

    def string(self, value: Any, path: Path_, *, regex: re.Pattern[str] | None = None, what: str = "") -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.doc.problem(path, f"expected a string, got number {value!r} (quote it: \"{value}\")")
            return None
        if not isinstance(value, str):
            self.doc.problem(path, f"expected a string, got {_type_name(value)}")
            return None
        if regex is not None and not regex.fullmatch(value):
            self.doc.problem(path, f"malformed {what or 'value'} {_shown(value)}")
            return None
        return value

    def version(self, value: Any, path: Path_, *, major_minor: bool = False) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if major_minor and not MAJOR_MINOR_RE.fullmatch(text):
            self.doc.problem(path, f"malformed version {_shown(text)} (expected MAJOR.MINOR, e.g. \"13.0\")")
            return None
        if not VERSION_RE.fullmatch(text):
            self.doc.problem(path, f"malformed version {_shown(text)} (expected plain numbers like \"2.14.1\")")
            return None
        try:
            Version(text)
        except InvalidVersion:  # pragma: no cover - the pattern admits only what Version parses
            self.doc.problem(path, f"malformed version {_shown(text)}")
            return None
        return text

    def specifier(self, value: Any, path: Path_) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        try:
            if not SPECIFIER_RE.fullmatch(text):
                raise InvalidSpecifier(text)
            SpecifierSet(text)
        except InvalidSpecifier:
            self.doc.problem(path, f"malformed version specifier {_shown(text)} (e.g. \">=2.6\")")
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
            self.doc.problem(path, f"must be one of {', '.join(choices)}, got {_shown(text)}{did_you_mean(text, choices)}")
            return None
        return text

    def str_list(self, value: Any, path: Path_, item: Callable[[Any, Path_], str | None]) -> tuple[str, ...] | None:
        if not isinstance(value, list):
            self.doc.problem(path, f"expected a list, got {_type_name(value)}")
            return None
        items = [item(v, path + (i,)) for i, v in enumerate(value)]
        checked = [text for text in items if text is not None]
        if len(checked) != len(items):
            return None
        seen: set[str] = set()
        for i, text in enumerate(checked):
            if text in seen:
                self.doc.problem(path + (i,), f"duplicate entry {_shown(text)}")
            seen.add(text)
        return tuple(checked)

    def requirements(self, value: Any, path: Path_) -> tuple[str, ...] | None:
        return self.str_list(value, path, lambda v, q: self.string(
            v, q, regex=REQUIREMENT_RE, what="pinned requirement (NAME==VERSION)"))

    def reference(self, value: Any, path: Path_, known: Mapping[str, Any], what: str) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if text not in known:
            self.doc.problem(path, f"unknown {what} {_shown(text)}{did_you_mean(text, known)}")
            return None
        return text

    def optional(self, body: Mapping[str, Any], key: str, path: Path_, read: Callable[[Any, Path_], Any],
                 default: Any = None, *, null_ok: bool = False) -> Any:
        """read(body[key]) when the key is there, else the default (null_ok: a null means the default too)."""
        if key not in body or (null_ok and body[key] is None):
            return default
        return read(body[key], path + (key,))


# ---- loading -------------------------------------------------------------------------------------


def load_matrix(path: str | Path) -> Matrix:
    """Read and validate matrix.yaml. Raises ConfigError (exit 2) listing every problem."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file (pass --matrix PATH or run from the repository root)"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_BYTES} bytes: not a matrix file"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path.name}:{line}: cannot read: not UTF-8 text"]) from None
    return parse_matrix(text, path)


def parse_matrix(text: str, path: Path) -> Matrix:
    """The validated Matrix of the YAML text, its targets expanded (refused or duplicate explicit cells
    are config errors too: they are reported here, at load time)."""
    if len(text) > MAX_BYTES:
        raise ConfigError([f"{path.name}:1: larger than {MAX_BYTES} characters: not a matrix file"])
    doc = _Doc(path.name)
    root_node = _compose(text, path)
    if root_node is None:
        raise ConfigError([f"{path.name}:1: the matrix is empty (expected the keys {', '.join(TOP_KEYS)})"])
    try:
        raw = doc.to_python(root_node, ())
    except _Fatal as fatal:
        raise ConfigError([f"{path.name}:{fatal.line}: {fatal.what}"]) from None
    matrix = _build(raw, doc, path)
    if doc.problems or matrix is None:
        problems = sorted(set(doc.problems)) or [(1, f"{path.name}:1: invalid matrix")]
        raise ConfigError([msg for _, msg in problems])
    expansion = expand(matrix)
    return dataclasses.replace(matrix, targets=expansion.targets, refused=expansion.refused)


def _compose(text: str, path: Path) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_Loader)
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
    except RecursionError:  # pragma: no cover - MAX_DEPTH stops nesting long before Python's limit
        raise ConfigError([f"{path.name}:1: invalid YAML: nested too deeply"]) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _build(raw: Any, doc: _Doc, path: Path) -> Matrix | None:
    """One pass per section, in dependency order (toolkits name flavors; torch names toolkits; cells name all)."""
    r = _Reader(doc)
    if raw == {} or raw is None:
        doc.problem((), "the matrix is empty")
        return None
    top = r.record(raw, (), schema.ROOT)
    if top is None:
        return None
    image_repo = r.optional(top, "image_repo", (), lambda v, p: r.string(v, p, regex=IMAGE_REPO_RE,
                                                                           what="image repository"))
    index_url = r.optional(top, "torch_index_url", (), lambda v, p: r.string(
        v, p, regex=INDEX_URL_RE, what="index URL (http(s)://host/path with {toolkit} and no other braces)"))
    warm = r.optional(top, "warm_triton_cache", (), r.boolean, default=True)
    arches = _arches(r, top.get("arches"))
    sm_min_cuda = _version_pairs(r, top.get("sm_min_cuda"), ("sm_min_cuda",))
    flavors = _flavors(r, top.get("flavors"))
    toolkits = _toolkits(r, top.get("toolkits"), flavors)
    torches = _torches(r, top.get("torch"), toolkits)
    triton_pairing = _version_pairs(r, top.get("triton_pairing"), ("triton_pairing",))
    bnb = _bitsandbytes(r, top["bitsandbytes"], ("bitsandbytes",)) if "bitsandbytes" in top else None
    payloads = _payloads(r, top["payloads"]) if "payloads" in top else ()
    optional = r.optional(top, "optional", (), r.requirements, default=()) or ()
    workload = _workload(r, top["workload"]) if "workload" in top else None
    expand_all, extra = _cells(r, top.get("cells"), arches, toolkits, torches, flavors) if "cells" in top else (False, ())
    if doc.problems or image_repo is None or index_url is None or warm is None or bnb is None:
        return None
    return Matrix(path=path, image_repo=image_repo, torch_index_url=index_url, warm_triton_cache=warm,
                  arches=arches, toolkits=toolkits, torches=torches, flavors=flavors, sm_min_cuda=sm_min_cuda,
                  triton_pairing=triton_pairing, bitsandbytes=bnb, payloads=payloads,
                  optional_requirements=optional, expand_all=expand_all, extra_cells=extra, workload=workload,
                  lines=dict(doc.lines))


# ---- sections ------------------------------------------------------------------------------------


def _arches(r: _Reader, value: Any) -> dict[str, ArchFamily]:
    arches: dict[str, ArchFamily] = {}
    for name, body in r.table(value, ("arches",)).items():
        p: Path_ = ("arches", name)
        if not NAME_RE.fullmatch(name):
            r.doc.problem(p, f"arch names are lowercase letters and digits (no '-'), got {_shown(name)}")
            continue
        m = r.record(body, p, schema.ARCH)
        if m is None:
            continue
        vendor = r.optional(m, "vendor", p, lambda v, q: r.choice(v, q, schema.VENDORS))
        sms = r.optional(m, "sms", p, lambda v, q: r.str_list(v, q, lambda x, y: r.version(x, y, major_minor=True)),
                         default=())
        gfx = r.optional(m, "gfx", p, lambda v, q: r.str_list(v, q, lambda x, y: r.string(
            x, y, regex=GFX_RE, what="gfx target")), default=())
        caps = r.optional(m, "capabilities", p, lambda v, q: r.str_list(
            v, q, lambda x, y: r.choice(x, y, schema.CAPABILITIES)), default=())
        min_rocm = r.optional(m, "min_rocm", p, lambda v, q: r.version(v, q, major_minor=True))
        desc = r.string(m.get("description", ""), p + ("description",), regex=ONE_LINE_RE,
                        what="description (one line, at most 200 characters, no backslash)")
        platforms = _platforms(r, m, p)
        if vendor == "nvidia" and sms is not None and (not sms or gfx):
            r.doc.problem(p, "an nvidia arch needs a non-empty 'sms' list and no 'gfx'")
            continue
        if vendor == "amd" and gfx is not None and (not gfx or sms or min_rocm is None):
            r.doc.problem(p, "an amd arch needs a non-empty 'gfx' list, 'min_rocm' and no 'sms'")
            continue
        if vendor is None or sms is None or gfx is None or caps is None or desc is None or platforms is None or (
                "min_rocm" in m and min_rocm is None):
            continue
        arches[name] = ArchFamily(name, vendor, sms, gfx, frozenset(caps), min_rocm, desc, platforms)
    return arches


def _version_pairs(r: _Reader, value: Any, path: Path_) -> dict[str, str]:
    """`"9.0": "11.8"` tables (sm_min_cuda, triton_pairing): MAJOR.MINOR to MAJOR.MINOR."""
    pairs: dict[str, str] = {}
    for key, body in r.table(value, path, non_empty=False).items():
        p = path + (key,)
        if r.version(key, p, major_minor=True) and (v := r.version(body, p, major_minor=True)):
            pairs[key] = v
    return pairs


def _flavors(r: _Reader, value: Any) -> dict[str, Flavor]:
    flavors: dict[str, Flavor] = {}
    for name, body in r.table(value, ("flavors",)).items():
        p: Path_ = ("flavors", name)
        if name not in FLAVORS:
            r.doc.problem(p, f"unknown flavor {_shown(name)}{did_you_mean(name, FLAVORS)} (flavors: {', '.join(FLAVORS)})")
            continue
        m = r.record(body, p, schema.FLAVOR)
        if m is None:
            continue
        vendor = r.optional(m, "vendor", p, lambda v, q: r.choice(v, q, schema.VENDORS))
        base = r.optional(m, "base", p, lambda v, q: _base_images(r, v, q))
        desc = r.string(m.get("description", ""), p + ("description",), regex=ONE_LINE_RE,
                        what="description (one line, at most 200 characters, no backslash)")
        torch_from = r.optional(m, "torch", p, lambda v, q: r.choice(v, q, schema.TORCH_SOURCES), default="any")
        if name == "slim" and "base" not in m:
            r.doc.problem(p, "the slim flavor needs 'base' (its OS images)")
        if vendor is None or desc is None or torch_from is None:
            continue
        flavors[name] = Flavor(name, vendor, base, desc, pypi_torch_only=torch_from == "pypi")
    return flavors


def _toolkits(r: _Reader, value: Any, flavors: Mapping[str, Flavor]) -> dict[str, Toolkit]:
    toolkits: dict[str, Toolkit] = {}
    for tid, body in r.table(value, ("toolkits",)).items():
        p: Path_ = ("toolkits", tid)
        if not TOOLKIT_RE.fullmatch(tid):
            r.doc.problem(p, f"toolkit ids look like cu130 or rocm6.2, got {_shown(tid)}")
            continue
        m = r.record(body, p, schema.TOOLKIT)
        if m is None:
            continue
        kind = r.optional(m, "kind", p, lambda v, q: r.choice(v, q, schema.TOOLKIT_KINDS))
        version = r.optional(m, "version", p, lambda v, q: r.version(v, q, major_minor=True))
        driver = r.optional(m, "driver_floor", p, lambda v, q: r.string(v, q, regex=DRIVER_RE, what="driver branch"),
                            null_ok=True)
        drops = r.optional(m, "drops_sm_below", p, lambda v, q: r.version(v, q, major_minor=True))
        if kind == "cuda" and "driver_floor" not in m:
            r.doc.problem(p, "a cuda toolkit needs 'driver_floor'")
        if kind and version:
            expected = f"cu{version.replace('.', '')}" if kind == "cuda" else f"rocm{version}"
            if tid != expected:
                r.doc.problem(p + ("version",), f"toolkit id {tid!r} does not match kind {kind} version {version} "
                                                f"(expected id {expected!r})")
        nvcc = _nvcc(r, m.get("nvcc"), p + ("nvcc",), flavors, version)
        bases: dict[str, BaseImages] = {}
        for flavor, body2 in r.table(m.get("bases", {}), p + ("bases",), non_empty=False).items():
            q = p + ("bases", flavor)
            if r.reference(flavor, q, flavors, "flavor") is not None and (b := _base_images(r, body2, q)) is not None:
                bases[flavor] = b
        for flavor in nvcc:
            if flavor in flavors and flavors[flavor].base is None and flavor not in bases:
                r.doc.problem(p + ("bases",), f"flavor {flavor!r} is listed under nvcc but has no base images here")
        if kind is None or version is None or ("drops_sm_below" in m and drops is None):
            continue
        toolkits[tid] = Toolkit(tid, kind, version, driver, drops, nvcc, bases)
    return toolkits


def _nvcc(r: _Reader, value: Any, path: Path_, flavors: Mapping[str, Flavor], version: str | None) -> dict[str, NvccSource]:
    nvcc: dict[str, NvccSource] = {}
    for flavor, src in r.table(value, path).items():
        q = path + (flavor,)
        if r.reference(flavor, q, flavors, "flavor") is None:
            continue
        m = r.record(src, q, schema.NVCC_SOURCE)
        if m is None or "from" not in m:
            continue
        origin = r.choice(m["from"], q + ("from",), schema.NVCC_ORIGINS)
        pkgs = r.optional(m, "packages", q, r.requirements, default=())
        base = r.optional(m, "base", q, lambda v, q2: r.string(v, q2, regex=IMAGE_REF_RE, what="image reference"))
        apt = r.optional(m, "apt", q, lambda v, q2: r.str_list(v, q2, lambda v2, q3: r.string(
            v2, q3, regex=APT_PIN_RE, what="pinned Debian package (NAME=VERSION)")), default=())
        host = r.optional(m, "host_compiler", q, lambda v, q2: r.string(v, q2, regex=HOST_COMPILER_RE, what="compiler command (g++-12)"))
        if origin == "pypi" and not pkgs:
            r.doc.problem(q, "from: pypi needs a non-empty 'packages' list")
        if origin == "debian":
            if "base" not in m or not apt:
                r.doc.problem(q, "from: debian needs 'base' (the Debian build image) and a non-empty 'apt' list")
            elif version and not any(pin.startswith(f"nvidia-cuda-toolkit={version}.") for pin in apt):
                r.doc.problem(q + ("apt",), f"from: debian needs nvidia-cuda-toolkit={version}.* for CUDA {version} "
                                            f"(bitsandbytes' library is named for the toolkit it is compiled with)")
        elif "base" in m or "apt" in m or "host_compiler" in m:
            r.doc.problem(q, f"'base', 'apt' and 'host_compiler' are for from: debian, not from: {origin or '?'}")
        if origin is not None and pkgs is not None and apt is not None:
            nvcc[flavor] = NvccSource(origin, pkgs, base, apt, host)  # type: ignore[arg-type]
    return nvcc


def _torches(r: _Reader, value: Any, toolkits: Mapping[str, Toolkit]) -> dict[str, TorchBuild]:
    torches: dict[str, TorchBuild] = {}
    minors: dict[str, str] = {}
    for version, body in r.table(value, ("torch",)).items():
        p: Path_ = ("torch", version)
        if r.version(version, p) is None:
            continue
        m = r.record(body, p, schema.TORCH_BUILD)
        if m is None:
            continue
        triton = r.optional(m, "triton", p, r.version)
        pythons = r.optional(m, "python", p, lambda v, q: r.str_list(v, q, lambda x, y: r.version(x, y, major_minor=True)))
        tks = r.optional(m, "toolkits", p, lambda v, q: r.str_list(v, q, lambda x, y: r.reference(x, y, toolkits, "toolkit")))
        pypi = r.optional(m, "pypi_toolkit", p, lambda v, q: r.reference(v, q, toolkits, "toolkit"), null_ok=True)
        if pypi and tks and pypi not in tks:
            r.doc.problem(p + ("pypi_toolkit",), f"{pypi!r} is not in this torch's toolkits")
        if tks is not None and not tks:
            r.doc.problem(p + ("toolkits",), "is empty")
        minor = minor_of(version)
        if minor in minors:
            r.doc.problem(p, f"torch {minor} is already declared as {minors[minor]!r} (one patch release per minor: "
                             f"target ids use the minor)")
            continue
        minors[minor] = version
        pypi_platforms = _platforms(r, m, p, key="pypi_platforms")
        if triton is None or pythons is None or tks is None or pypi_platforms is None:
            continue
        torches[version] = TorchBuild(version, triton, pythons, tks, pypi, pypi_platforms)
    return torches


def _payloads(r: _Reader, value: Any) -> tuple[Payload, ...]:
    if not isinstance(value, list):
        r.doc.problem(("payloads",), f"expected a list, got {_type_name(value)}")
        return ()
    if not value:
        r.doc.problem(("payloads",), "is empty")
    payloads: list[Payload] = []
    for i, body in enumerate(value):
        p: Path_ = ("payloads", i)
        m = r.record(body, p, schema.PAYLOAD)
        if m is None:
            continue
        name = r.optional(m, "name", p, lambda v, q: r.string(v, q, regex=NAME_RE, what="payload name"))
        tspec = r.optional(m, "torch", p, r.specifier)
        pspec = r.optional(m, "python", p, r.specifier)
        reqs = r.optional(m, "requirements", p, r.requirements)
        if name is None or tspec is None or pspec is None or reqs is None:
            continue
        if name in {pl.name for pl in payloads}:
            r.doc.problem(p + ("name",), f"duplicate payload name {name!r}")
            continue
        payloads.append(Payload(name, tspec, pspec, reqs))
    return tuple(payloads)


def _platforms(r: _Reader, m: dict[str, Any], path: Path_, key: str = "platforms") -> tuple[str, ...] | None:
    """An optional non-empty list of OCI platforms (default: linux/amd64 alone)."""
    if key not in m:
        return ("linux/amd64",)
    found = r.str_list(m[key], path + (key,), lambda v, q: r.choice(v, q, schema.PLATFORMS))
    if found is not None and not found:
        r.doc.problem(path + (key,), "is empty")
        return None
    return found


def _base_images(r: _Reader, value: Any, path: Path_) -> BaseImages | None:
    m = r.record(value, path, schema.BASES)
    if m is None:
        return None
    build = r.optional(m, "build", path, lambda v, q: r.string(v, q, regex=IMAGE_REF_RE, what="image reference"))
    runtime = r.optional(m, "runtime", path, lambda v, q: r.string(v, q, regex=IMAGE_REF_RE, what="image reference"))
    python = r.optional(m, "python", path, lambda v, q: r.version(v, q, major_minor=True))
    if build is None or runtime is None or python is None:
        return None
    return BaseImages(build, runtime, python)


def _bitsandbytes(r: _Reader, value: Any, path: Path_) -> Bitsandbytes | None:
    m = r.record(value, path, schema.BITSANDBYTES)
    if m is None:
        return None
    version = r.optional(m, "version", path, r.version)
    mode = r.optional(m, "mode", path, lambda v, q: r.choice(v, q, schema.BNB_MODES))
    url = r.optional(m, "git_url", path, lambda v, q: r.string(v, q, regex=GIT_URL_RE, what="git url"))
    ref = r.optional(m, "git_ref", path, lambda v, q: r.string(v, q, regex=GIT_REF_RE, what="git ref (a tag, "
                                                                 "branch or commit: letters, digits, . _ + - /)"))
    fallback = r.optional(m, "fallback", path, lambda v, q: r.choice(v, q, schema.BNB_MODES), null_ok=True)
    requires = r.optional(m, "requires_torch", path, r.specifier)
    if None in (version, mode, url, ref, requires) or (m.get("fallback") is not None and fallback is None):
        return None
    if fallback == mode:
        r.doc.problem(path + ("fallback",), f"the fallback must differ from mode ({mode})")
    return Bitsandbytes(version, mode, url, ref, fallback, requires)


def _cells(
    r: _Reader,
    value: Any,
    arches: Mapping[str, ArchFamily],
    toolkits: Mapping[str, Toolkit],
    torches: Mapping[str, TorchBuild],
    flavors: Mapping[str, Flavor],
) -> tuple[bool, tuple[CellSpec, ...]]:
    m = r.record(value, ("cells",), schema.CELLS)
    if m is None:
        return False, ()
    expand_mode = r.optional(m, "expand", ("cells",), lambda v, q: r.choice(v, q, schema.EXPAND_MODES))
    extra: list[CellSpec] = []
    raw_extra = m.get("extra", [])
    if not isinstance(raw_extra, list):
        r.doc.problem(("cells", "extra"), f"expected a list, got {_type_name(raw_extra)}")
        raw_extra = []
    for i, body in enumerate(raw_extra):
        p: Path_ = ("cells", "extra", i)
        c = r.record(body, p, schema.CELL)
        if c is None:
            continue
        arch = r.reference(c.get("arch"), p + ("arch",), arches, "arch") if "arch" in c else None
        tk = r.reference(c.get("toolkit"), p + ("toolkit",), toolkits, "toolkit") if "toolkit" in c else None
        torch = r.reference(c["torch"], p + ("torch",), torches, "torch version") if "torch" in c else None
        flavor = r.reference(c["flavor"], p + ("flavor",), flavors, "flavor") if "flavor" in c else None
        dtype = r.choice(c["dtype"], p + ("dtype",), TRAIN_DTYPES) if "dtype" in c else None
        if arch is None or tk is None or any(k in c and v is None for k, v in (("torch", torch), ("flavor", flavor),
                                                                                ("dtype", dtype))):
            continue
        extra.append(CellSpec(arch, tk, torch, flavor, dtype, r.doc.line(p)))  # type: ignore[arg-type]
    if expand_mode == "none" and not extra and "extra" in m:
        r.doc.problem(("cells", "extra"), "is empty and expand is none: the matrix has no cells")
    return expand_mode == "all", tuple(extra)


# ---- workload: Unsloth pinned and the model shapes to warm (plan/workload.py: what follows from it) ----

SHAPE_KEYS = schema.keys(schema.WARM_SHAPE)
SHAPE_NAME_RE = _compile(schema.SHAPE_NAME)
PIN_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(.+)")  # on requirements already checked whole


def _workload(r: _Reader, value: Any, path: Path_ = ("workload",)) -> Workload | None:
    """Validate the `workload:` mapping; every problem is recorded on the reader (None when any)."""
    m = r.mapping(value, path, schema.keys(schema.WORKLOAD))
    if m is None:
        return None
    name = r.choice(m.get("name"), path + ("name",), schema.WORKLOADS) if "name" in m else None
    torch = r.specifier(m.get("torch"), path + ("torch",)) if "torch" in m else None
    python = r.specifier(m.get("python"), path + ("python",)) if "python" in m else None
    reqs = r.str_list(m.get("requirements"), path + ("requirements",), lambda v, q: r.string(
        v, q, regex=REQUIREMENT_RE, what="pinned requirement (NAME==VERSION)")) if "requirements" in m else None
    prove = r.boolean(m.get("prove"), path + ("prove",)) if "prove" in m else None
    below = r.version(m.get("runtime_compiler_below_triton"), path + ("runtime_compiler_below_triton",),
                      major_minor=True) if "runtime_compiler_below_triton" in m else None
    shapes = _shapes(r, m.get("warm_shapes"), path + ("warm_shapes",)) if "warm_shapes" in m else None
    version = None
    if name is not None and reqs is not None:
        pins = {_canonical(p.group(1)): p.group(2) for req in reqs if (p := PIN_RE.fullmatch(req))}
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
    ints = {k: _positive_int(r, m[k], path + (k,)) for k in schema.SHAPE_INTS}
    eps = _epsilon(r, m["rms_eps"], path + ("rms_eps",))
    act = r.choice(m["act"], path + ("act",), schema.ACTS)
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
