"""`python -m imagefactory …`: the command surface. Owns the argparse parser.

Planning commands live here (targets, show, explain, render). Execution commands are registered by
`imagefactory.build.cli` and `imagefactory.publish.cli` (each: `register(subparsers) -> None`, every
subcommand sets `func=` taking the parsed args and returning an exit code); a missing module is
skipped, anything else wrong with it is an error. Every failure is one `error: …` line per problem
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from packaging.version import Version
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from imagefactory.plan import outputs

from imagefactory.plan import render
from imagefactory.errors import ImageFactoryError, RefusedTargetError, RenderDriftError, UnknownTargetError, did_you_mean
from imagefactory.plan.expand import all_targets, expand, flavors_for, id_matches, pick, resolve_target, select_targets, torches_for
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.model import TRAIN_DTYPES, Matrix, Target
from imagefactory.plan.rules import Candidate
from imagefactory.plan.rules import explain as explain_rules

EXTENSION_MODULES = ("imagefactory.build.cli", "imagefactory.publish.cli")
REFUSED_EXIT = RefusedTargetError.exit_code


def default_matrix_path() -> Path:
    """$IMAGEFACTORY_MATRIX, else ./matrix.yaml, else the repository's matrix.yaml."""
    env = os.environ.get("IMAGEFACTORY_MATRIX")
    if env:
        return Path(env)
    here = Path("matrix.yaml")
    return here if here.exists() else render.REPO_ROOT / "matrix.yaml"


def matrix_from_args(args: argparse.Namespace) -> Matrix:
    """The validated matrix named by --matrix (for execution subcommands too)."""
    return load_matrix(getattr(args, "matrix", None) or default_matrix_path())


def _console() -> Console:
    # Piped or logged output has no terminal width; rich would fall back to 80 columns and wrap
    # every table cell, so give tables room instead (the same choice exec_cli makes).
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


# ---- targets -------------------------------------------------------------------------------------


def cmd_targets(args: argparse.Namespace) -> int:
    matrix = matrix_from_args(args)
    if args.why_not:
        return _why_not(matrix, args)
    targets = select_targets(matrix, args.select or "*")
    fmt = args.format
    if fmt == "json":
        sys.stdout.write(outputs.targets_json(targets))
    elif fmt == "github":
        sys.stdout.write(outputs.github_matrix(targets))
    elif fmt == "bake":
        sys.stdout.write(outputs.bake_file(targets))
    elif fmt == "ids":
        sys.stdout.write("".join(f"{t.id}\n" for t in targets))
    else:
        table = Table(title=f"{len(targets)} targets from {matrix.path}", title_justify="left")
        for col in ("target", "torch", "triton", "python", "flavor", "sm/gfx", "bitsandbytes", "payload"):
            table.add_column(col, no_wrap=col == "target", overflow="fold")
        for t in targets:
            table.add_row(*map(escape, (t.id, t.torch.version, t.triton_version, t.python, t.flavor,
                                        ",".join(t.sms or t.gfx), f"{t.bitsandbytes.version} {t.bnb_mode}",
                                        t.payload_name)))
        _console().print(table)
    return 0


def _why_not(matrix: Matrix, args: argparse.Namespace) -> int:
    refused = expand(matrix).refused
    if args.select:
        refused = tuple(c for c in refused if id_matches(c.id, args.select))
    if args.format == "json":
        sys.stdout.write(outputs.dumps([{"id": c.id, "refusals": [{"rule": r.rule, "reason": r.reason}
                                                                   for r in c.refusals]} for c in refused]))
        return 0
    for cell in refused:
        for refusal in cell.refusals:
            print(f"{cell.id}: {refusal}")
    if not refused:
        print("no arch x toolkit cell is refused")
    return 0


# ---- show ----------------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    matrix = matrix_from_args(args)
    target = resolve_target(matrix, args.target)
    if args.format == "json":
        sys.stdout.write(outputs.dumps(outputs.to_plain(target)))
        return 0
    _console().print(show_table(target))
    return 0


def show_table(t: Target) -> Table:
    table = Table(title=f"{t.id}{'' if t.is_default else ' (explicit cell)'}", title_justify="left")
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")  # fold, never cut: image refs and URLs must stay whole
    table.add_column("from", overflow="fold")
    p = t.provenance
    rows = [
        ("arch", f"{t.arch.name} ({t.arch.vendor}; {t.arch.description})", p["arch"]),
        ("sm" if t.sms else "gfx", ", ".join(t.sms or t.gfx), p["sms"]),
        ("cuda arch list", t.cuda_arch_list or "-", p["sms"]),
        ("toolkit", f"{t.toolkit.id} ({t.toolkit.kind} {t.toolkit.version})", p["toolkit"]),
        ("driver floor", t.toolkit.driver_floor or "-", p["driver_floor"]),
        ("torch", t.torch.version, p["torch"]),
        ("torch index", t.torch.index_url or "PyPI", p["torch.index_url"]),
        ("triton", f"{t.triton_package}=={t.triton_version}", p["triton"]),
        ("flavor", t.flavor, p["flavor"]),
        ("base (build)", t.base.build, p["base"]),
        ("base (runtime)", t.base.runtime, p["base"]),
        ("python", t.python, p["python"]),
        ("nvcc", t.nvcc + (f" ({', '.join(t.nvcc_packages)})" if t.nvcc_packages else ""), p["nvcc"]),
        ("bitsandbytes", f"{t.bitsandbytes.version} {t.bnb_mode} (matrix: mode {t.bitsandbytes.mode}; git {t.bitsandbytes.git_url} "
                         f"@ {t.bitsandbytes.git_ref}; fallback {t.bitsandbytes.fallback or 'none'})",
         p["bitsandbytes"]),
        ("payload", f"{t.payload_name}: {', '.join(t.payload_requirements)}", p["payload"]),
        ("optional", ", ".join(t.optional_requirements) or "-", p["optional"]),
        ("train dtype", t.train_dtype, p["train_dtype"]),
        ("warm triton cache", "yes" if t.warm_triton_cache else "no", p["warm_triton_cache"]),
        ("tags", ", ".join(f"{t.image_repo}:{tag}" for tag in t.tags), p["image_repo"]),
        ("dockerfile", t.dockerfile, "render"),
    ]
    for row in rows:
        table.add_row(*map(escape, row))  # values hold [extras]: not rich markup
    return table


# ---- explain -------------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    matrix = matrix_from_args(args)
    for value, known, what in ((args.arch, matrix.arches, "arch"), (args.toolkit, matrix.toolkits, "toolkit")):
        if value not in known:
            raise UnknownTargetError(f"unknown {what} {value!r}{did_you_mean(value, known)}")
    if args.flavor and args.flavor not in matrix.flavors:
        raise UnknownTargetError(f"unknown flavor {args.flavor!r}{did_you_mean(args.flavor, matrix.flavors)}")
    torch = _torch_arg(matrix, args.torch) if args.torch else None
    choice = pick(matrix, args.arch, args.toolkit, torch, args.flavor, args.dtype)
    cand = choice.candidate or _first_candidate(matrix, args.arch, args.toolkit, torch, args.flavor, args.dtype)
    label = f"{args.arch} x {args.toolkit} x torch {cand.torch.version} ({cand.flavor.name} flavor)"
    if choice.candidate is not None:
        ids = [t.id for t in all_targets(matrix) if t.arch.name == args.arch and t.toolkit.id == args.toolkit
               and t.torch.version == cand.torch.version and t.flavor == cand.flavor.name]
        print(f"allowed: {label}" + (f" -> target {ids[0]}" if ids else " (not a cell of the matrix: add it under "
                                                                          "cells.extra)"))
        if torch is None:
            print(f"  torch {cand.torch.version}: the newest torch shipping {args.toolkit} that passes every rule")
    else:
        print(f"refused: {args.arch} x {args.toolkit}" + (f" x torch {torch}" if torch else ""))
        for refusal in choice.refusals:
            print(f"  {refusal}")
        print(f"rules checked for {label}:")
    for name, doc, refusal in explain_rules(matrix, cand):
        mark = "ok  " if refusal is None else "FAIL"
        print(f"  {mark} {name}: {doc}" + ("" if refusal is None else f"\n       -> {refusal.reason}"))
    return 0 if choice.candidate is not None else REFUSED_EXIT


def _torch_arg(matrix: Matrix, text: str) -> str:
    """`2.7` or `2.7.1` -> the declared version."""
    for version in matrix.torches:
        if text == version or text == matrix.torches[version].minor:
            return version
    choices = [*matrix.torches, *(t.minor for t in matrix.torches.values())]
    raise UnknownTargetError(f"unknown torch {text!r}{did_you_mean(text, choices)} "
                             f"(torch: {', '.join(matrix.torches)})")


def _first_candidate(matrix: Matrix, arch: str, toolkit: str, torch: str | None, flavor: str | None,
                     dtype: str | None) -> Candidate:
    """The candidate a refusal is explained for: the pinned torch, else the newest shipping the toolkit."""
    if torch is None:
        shipping = torches_for(matrix, toolkit)
        torch = shipping[0].version if shipping else max(matrix.torches, key=Version)
    return Candidate(matrix.arches[arch], matrix.toolkits[toolkit], matrix.torches[torch],
                     matrix.flavors[flavor or flavors_for(matrix, toolkit)[0]], dtype)  # type: ignore[arg-type]


# ---- render --------------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    matrix = matrix_from_args(args)
    targets = select_targets(matrix, args.select or "*")
    templates = Path(args.templates) if args.templates else None
    root = Path(args.out) if args.out else render.REPO_ROOT
    rendered = render.render_all(targets, templates)
    prune = not args.select  # a partial render must not delete the other targets' files
    if args.check:
        drift = render.check(rendered, root, prune=prune)
        if drift:
            raise RenderDriftError(
                f"{len(drift)} rendered file(s) differ from matrix.yaml + templates/ (run `make render`)",
                details=[str(d) for d in drift])
        print(f"{len(rendered)} dockerfiles up to date")
        return 0
    changes = render.write(rendered, root, prune=prune)
    for change in changes:
        print(f"{'removed' if change.kind == 'stale' else 'wrote'} {change.path}")
    print(f"{len(rendered)} dockerfiles, {len(changes)} changed")
    return 0


# ---- parser and main -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagefactory", description="GPU image factory for LLM fine-tuning.")
    matrix_opt = argparse.ArgumentParser(add_help=False)
    # SUPPRESS on the subcommand copy: `--matrix` works before or after the subcommand.
    matrix_help = "matrix file (default: $IMAGEFACTORY_MATRIX, else ./matrix.yaml, else the repository's)"
    matrix_opt.add_argument("--matrix", default=argparse.SUPPRESS, help=matrix_help)
    parser.add_argument("--matrix", default=None, help=matrix_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("targets", parents=[matrix_opt], help="list targets (table, ids, json, github, bake)")
    p.add_argument("--format", choices=("table", "ids", "json", "github", "bake"), default="table")
    p.add_argument("--select", metavar="GLOB", help="only targets matching the glob, e.g. 'hopper-*', '*-{cu128,cu130}'")
    p.add_argument("--why-not", action="store_true", help="list the arch x toolkit cells the rules refuse, and why")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("show", parents=[matrix_opt], help="one target fully resolved, with where each value came from")
    p.add_argument("target")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("explain", parents=[matrix_opt], help="why a combination is allowed or refused")
    p.add_argument("arch")
    p.add_argument("toolkit")
    p.add_argument("torch", nargs="?", help="torch version (2.7 or 2.7.1); default: the newest that works")
    p.add_argument("--flavor", help="slim, nvidia or rocm (default: the first that works)")
    p.add_argument("--dtype", choices=TRAIN_DTYPES, help="training dtype setting to check")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("render", parents=[matrix_opt], help="write dockerfiles/<target>/Dockerfile (only if changed)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 listing every file that differs")
    p.add_argument("--select", metavar="GLOB", help="only these targets (no stale-file pruning)")
    p.add_argument("--templates", metavar="DIR", help="template directory (default: templates/)")
    p.add_argument("--out", metavar="DIR", help="repository root to write dockerfiles/ under (default: this repo)")
    p.set_defaults(func=cmd_render)

    for name in EXTENSION_MODULES:
        _register_extension(name, sub)
    return parser


def _register_extension(name: str, sub: argparse._SubParsersAction) -> None:
    """Add an execution module's subcommands; only the module's own absence is silently skipped."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return
        raise ImageFactoryError(f"{name}: cannot import: {exc}") from None
    register = getattr(module, "register", None)
    if not callable(register):
        raise ImageFactoryError(f"{name}: has no register(subparsers) function")
    register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except ImageFactoryError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `… | head`
        return 0
    except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        if os.environ.get("IMAGEFACTORY_DEBUG"):
            raise
        print(f"error: internal error: {type(exc).__name__}: {exc} (IMAGEFACTORY_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 70
