"""Render targets through the Jinja templates in templates/ into dockerfiles/<id>/Dockerfile.

Deterministic: the output depends only on the Target and the template files (no dates, no git
revision: those are Dockerfile ARGs). Files are written only when their content changes, and only
after every target rendered, so a template error leaves nothing half-written.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from imagefactory.errors import ImageFactoryError, TemplateError
from imagefactory.plan.model import Target, bnb_library_name

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE_DIR = REPO_ROOT / "templates"
ENTRY_TEMPLATE = "Dockerfile.j2"


def bnb_library(target: Target) -> str:
    """The native library bitsandbytes loads for this image's toolkit: libbitsandbytes_cuda130.so."""
    return bnb_library_name(target.toolkit)


# Functions templates may call besides reading `target`; add here, never compute in templates.
TEMPLATE_GLOBALS: dict[str, Callable[..., Any]] = {"bnb_library": bnb_library}


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
    return env


def render_target(target: Target, template_dir: Path | None = None) -> str:
    """The Dockerfile text for one target. Raises TemplateError naming the template and line."""
    env = environment(template_dir)
    try:
        text = env.get_template(ENTRY_TEMPLATE).render(target=target)
    except jinja2.TemplateNotFound as exc:
        where = template_dir or DEFAULT_TEMPLATE_DIR
        raise TemplateError(f"{target.id}: template {exc.name!r} not found under {where}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{exc.filename or exc.name}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{target.id}: {_template_frame(exc)}template used an undefined value: {exc.message}") from None
    except (TypeError, ValueError, AttributeError) as exc:
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
    """{relative path: text} for every target, all rendered before anything is written."""
    return {t.dockerfile: render_target(t, template_dir) for t in targets}


def _existing(root: Path) -> set[str]:
    base = root / "dockerfiles"
    if not base.is_dir():
        return set()
    return {str(p.relative_to(root)) for p in base.glob("*/Dockerfile")}


def check(rendered: dict[str, str], root: Path, *, prune: bool = True) -> list[Drift]:
    """Every file that differs from what rendering would write (and stale ones when prune)."""
    drift: list[Drift] = []
    for rel, text in sorted(rendered.items()):
        path = root / rel
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
    """Write changed files atomically (temp file + rename); remove stale ones. Returns what changed."""
    changes = check(rendered, root, prune=prune)
    for change in changes:
        try:
            _apply(change, root, rendered)
        except OSError as exc:  # an unwritable --out, a full disk: one line naming the file
            raise _cannot("write", root / change.path, exc) from None
    return changes


def _apply(change: Drift, root: Path, rendered: dict[str, str]) -> None:
    path = root / change.path
    if change.kind == "stale":
        path.unlink()
        if not any(path.parent.iterdir()):
            path.parent.rmdir()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".Dockerfile.")
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
