"""Render targets through the Jinja templates in templates/ into dockerfiles/<id>/Dockerfile.

Deterministic: the output depends only on the Target and the template files (no dates, no git
revision: those are Dockerfile ARGs). Files are written only when their content changes, and only
after every target rendered, so a template error leaves nothing half-written.

Safe to run twice at once: writing holds a lock on the output root and replaces files atomically
(temp file + rename). It never follows a symbolic link under the root, and prunes only files that
carry the generated header (GENERATED_MARK): a Dockerfile someone wrote by hand is left alone.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shlex
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from imagefactory.errors import ImageFactoryError, TemplateError
from imagefactory.plan.model import BaseImages, Target, bnb_library_name
from imagefactory.plan.platforms import HOST_PLATFORM, UV_PYTHON_PLATFORMS, base_ref, is_cross
from imagefactory.plan.venv_layers import LAYERS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE_DIR = REPO_ROOT / "templates"
ENTRY_TEMPLATE = "Dockerfile.j2"
# templates/Dockerfile.j2 writes this into every file it renders: prune removes only such files.
GENERATED_MARK = "by imagefactory: edit the template, not this file."
_CONTROL = {chr(c) for c in range(32)} | {"\x7f", "\x85", "\u2028", "\u2029"}  # what could end a line


def bnb_library(target: Target) -> str:
    """The native library bitsandbytes loads for this image's toolkit: libbitsandbytes_cuda130.so."""
    return bnb_library_name(target.toolkit)


def _one_line(value: object) -> str:
    text = str(value)
    if _CONTROL & set(text):
        # a line break would end the instruction and start another: refuse rather than quote
        raise ValueError(f"refusing to render {text!r}: it holds a control character")
    return text


def shell_quote(value: object) -> str:
    """One shell word (`sh` filter): `peft==0.21.2` as is, anything with shell syntax in single quotes."""
    return shlex.quote(_one_line(value))


def docker_quote(value: object) -> str:
    """A Dockerfile ENV/LABEL value (`docker` filter): double quotes with Docker's escapes, so `$HOME`
    and `${X}` stay literal (Docker expands variables in ENV and LABEL); non-ASCII is kept as is."""
    text = _one_line(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


# Functions and facts templates may use besides `target`; add here, never compute in templates.
TEMPLATE_GLOBALS: dict[str, Any] = {"bnb_library": bnb_library, "venv_layers": LAYERS}
# How values are quoted where they land: `sh` inside RUN lines, `docker` for ENV and LABEL values.
TEMPLATE_FILTERS: dict[str, Callable[..., Any]] = {"sh": shell_quote, "docker": docker_quote}


def environment(template_dir: Path | None = None) -> jinja2.Environment:
    """One environment per template directory: Jinja caches compiled templates in it (and reloads
    a template whose file changed), so rendering 50 targets compiles each template once."""
    return _environment(str(Path(template_dir or DEFAULT_TEMPLATE_DIR).resolve()))


@functools.lru_cache(maxsize=8)
def _environment(template_dir: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir),
        undefined=jinja2.StrictUndefined,  # a misspelt field is an error, not an empty string
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # Dockerfiles, not HTML
    )
    env.globals.update(TEMPLATE_GLOBALS)
    env.filters.update(TEMPLATE_FILTERS)
    return env


def platform_context(target: Target, platform: str) -> dict[str, Any]:
    """What the templates know of the platform: `platform`, `cross` (arm64 built on this amd64 host: the steps that
    only place files run on `host_platform`, the rest under emulation), the bases for it, uv's platform name."""
    cross = is_cross(platform)
    return {
        "platform": platform,
        "host_platform": HOST_PLATFORM,
        "cross": cross,
        "bases": BaseImages(base_ref(target.base.build, platform), base_ref(target.base.runtime, platform), target.base.python),
        "uv_platform": UV_PYTHON_PLATFORMS.get(platform, "") if cross else "",
    }


def render_target(target: Target, template_dir: Path | None = None, platform: str = HOST_PLATFORM) -> str:
    """The Dockerfile text for one target and platform. Raises TemplateError naming the template and line."""
    env = environment(template_dir)
    try:
        text = env.get_template(ENTRY_TEMPLATE).render(target=target, **platform_context(target, platform))
    except jinja2.TemplateNotFound as exc:
        where = template_dir or DEFAULT_TEMPLATE_DIR
        raise TemplateError(f"{target.id}: template {exc.name!r} not found under {where}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{exc.filename or exc.name}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{target.id}: {_template_frame(exc)}template used an undefined value: {exc.message}") from None
    except RecursionError:  # a template that includes itself
        raise TemplateError(f"{target.id}: templates include each other without end") from None
    except (jinja2.TemplateError, TypeError, ValueError, AttributeError, ArithmeticError, LookupError) as exc:
        # `{{ 1/0 }}`, a missing key, a value a quoting filter refuses: the template's fault, one line
        raise TemplateError(f"{target.id}: {_template_frame(exc)}template failed: {exc}") from None
    return text.rstrip("\n") + "\n"


def _template_frame(exc: BaseException) -> str:
    """`templates/x.j2:12: ` from the innermost traceback frame inside a template, if any."""
    tb, found = exc.__traceback__, ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith(".j2"):
            found = f"{name}:{tb.tb_lineno}: "
        tb = tb.tb_next
    return found


@dataclass(frozen=True)
class Drift:
    path: Path
    kind: str  # "changed" | "missing" | "stale"

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}"


def render_all(targets: Iterable[Target], template_dir: Path | None = None) -> dict[str, str]:
    """{relative path: text} for every target and platform it is built for, all rendered before anything is written."""
    return {t.dockerfile_for(p): render_target(t, template_dir, p) for t in targets for p in t.platforms}


def _refuse_links(root: Path, rel: str) -> Path:
    """root/rel, refusing when a component below root is a symbolic link: a link could point the
    write (or the prune) outside the tree render owns."""
    path = root
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            raise ImageFactoryError(f"{path}: is a symbolic link; render does not follow links (remove it)")
    return path


def _is_generated(path: Path) -> bool:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return GENERATED_MARK in handle.read(4096)
    except OSError:
        return False


def _existing(root: Path) -> set[str]:
    """Rendered Dockerfiles under root/dockerfiles: regular files with the generated header, no links."""
    base = root / "dockerfiles"
    if base.is_symlink() or not base.is_dir():
        return set()
    found = set()
    for entry in os.scandir(base):
        if entry.is_dir(follow_symlinks=False):
            for file in os.scandir(entry.path):
                path = Path(file.path)
                if (file.name == "Dockerfile" or file.name.startswith("Dockerfile.")) and not path.is_symlink() \
                        and path.is_file() and _is_generated(path):
                    found.add(str(path.relative_to(root)))
    return found


def check(rendered: dict[str, str], root: Path, *, prune: bool = True) -> list[Drift]:
    """Every file that differs from what rendering would write (and stale ones when prune)."""
    drift: list[Drift] = []
    for rel, text in sorted(rendered.items()):
        path = _refuse_links(root, rel)
        try:
            if not path.exists():
                drift.append(Drift(Path(rel), "missing"))
            elif path.read_text(encoding="utf-8") != text:
                drift.append(Drift(Path(rel), "changed"))
        except UnicodeDecodeError:  # not even UTF-8 text: it differs
            drift.append(Drift(Path(rel), "changed"))
        except OSError as exc:
            raise _cannot("read", path, exc) from None
    if prune:
        drift.extend(Drift(Path(rel), "stale") for rel in sorted(_existing(root) - set(rendered)))
    return drift


def write(rendered: dict[str, str], root: Path, *, prune: bool = True) -> list[Drift]:
    """Write changed files atomically (temp file + rename); remove stale ones. Returns what changed.

    Holds an exclusive lock on the root directory meanwhile: a second render waits, then finds
    the files already written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise _cannot("write", root, exc) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        changes = check(rendered, root, prune=prune)
        for change in changes:
            try:
                _apply(change, root, rendered)
            except OSError as exc:  # an unwritable --out, a full disk: one line naming the file
                raise _cannot("write", root / change.path, exc) from None
        return changes
    finally:
        os.close(lock)  # closing releases the lock


def _apply(change: Drift, root: Path, rendered: dict[str, str]) -> None:
    path = _refuse_links(root, str(change.path))
    if change.kind == "stale":
        path.unlink(missing_ok=True)
        if path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _refuse_links(root, str(change.path))  # mkdir may have raced with someone making a link: look again
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(rendered[str(change.path)])
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cannot(verb: str, path: Path, exc: OSError) -> ImageFactoryError:
    return ImageFactoryError(f"{path}: cannot {verb}: {exc.strerror or exc}")
