"""`python -m imagefactory …`: the one command parser.

Every subcommand and every option is declared here, shared options once (parent parsers: `--matrix`,
`--docker`, `--release`, `--reports-dir`, `--require-gpu`). The planning commands (targets, show,
explain, render) are below; the execution commands live with their layer and are imported directly:
imagefactory.build.commands (bootstrap, build, gate) and imagefactory.publish.commands (push, docs,
summary). Every failure is one `error: …` line per problem and the error class's exit code (usage
errors included: exit 2, never argparse's usage block), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from packaging.version import Version
from rich.markup import escape
from rich.table import Table

from imagefactory import log
from imagefactory.build import commands as build_commands
from imagefactory.build import warm_pins
from imagefactory.build.docker import COMPRESSIONS
from imagefactory.build.gate import REPORTS_DIR
from imagefactory.errors import ImageFactoryError, RefusedTargetError, RenderDriftError, UnknownTargetError, UsageError, did_you_mean
from imagefactory.plan import outputs, render, schema
from imagefactory.plan.expand import all_targets, expand, flavors_for, id_matches, natural_dtype, pick, resolve_target, select_targets, torches_for
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.model import Matrix, Target
from imagefactory.plan.platforms import HOST_PLATFORM, PLATFORMS
from imagefactory.plan.rules import Candidate
from imagefactory.plan.rules import explain as explain_rules
from imagefactory.plan.workload import SHAPES_FILE, shapes_file
from imagefactory.publish import commands as publish_commands
from imagefactory.publish import gated
from imagefactory.publish.docs import DOCS_REPO
from probe.tags import TRAIN_DTYPES

REFUSED_EXIT = RefusedTargetError.exit_code
INTERNAL_ERROR_EXIT = 70  # sysexits' EX_SOFTWARE: a bug, not bad input


def default_matrix_path() -> Path:
    """$IMAGEFACTORY_MATRIX, else ./matrix.yaml, else the repository's matrix.yaml."""
    env = os.environ.get("IMAGEFACTORY_MATRIX")
    if env:
        return Path(env)
    here = Path("matrix.yaml")
    return here if here.exists() else render.REPO_ROOT / "matrix.yaml"


def _print_table(table: Table) -> None:
    log.console(stderr=False).print(table)


# ---- targets -------------------------------------------------------------------------------------


def cmd_targets(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.matrix)
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
        _print_table(table)
    return 0


def _why_not(matrix: Matrix, args: argparse.Namespace) -> int:
    if args.format not in ("table", "json", "ids"):
        raise UsageError(f"--why-not lists refused cells as table, json or ids, not {args.format} "
                         f"(they are not targets: nothing to build)")
    refused = expand(matrix).refused
    if args.select:
        refused = tuple(c for c in refused if id_matches(c.id, args.select))
    if args.format == "json":
        sys.stdout.write(outputs.dumps([{"id": c.id, "refusals": [{"rule": r.rule, "reason": r.reason}
                                                                   for r in c.refusals]} for c in refused]))
        return 0
    if args.format == "ids":
        sys.stdout.write("".join(f"{c.id}\n" for c in refused))
        return 0
    for cell in refused:
        for refusal in cell.refusals:
            print(f"{cell.id}: {refusal}")
    if not refused:
        print("no arch x toolkit cell is refused")
    return 0


# ---- show ----------------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.matrix)
    target = resolve_target(matrix, args.target)
    if args.format == "json":
        sys.stdout.write(outputs.dumps(outputs.to_plain(target)))
        return 0
    _print_table(show_table(target))
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
        ("workload", f"{t.workload.name} {t.workload.version}: {', '.join(t.workload.requirements)}; "
                     f"{len(t.workload.warm_shapes)} warm shapes" if t.workload else "-", p["workload"]),
        ("runtime C compiler", "gcc (triton builds a launcher per kernel)" if t.runtime_c_compiler else "none needed",
         p["runtime_c_compiler"]),
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
    matrix = load_matrix(args.matrix)
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
        dtype = cand.dtype or natural_dtype(cand)
        ids = [t.id for t in all_targets(matrix) if t.arch.name == args.arch and t.toolkit.id == args.toolkit
               and t.torch.version == cand.torch.version and t.flavor == cand.flavor.name and t.train_dtype == dtype]
        print(f"allowed: {label}" + (f" -> target {ids[0]}" if ids else " (not a cell of the matrix: add it under "
                                                                          "cells.extra)"))
        if torch is None:
            print(f"  torch {cand.torch.version}: the newest torch shipping {args.toolkit} that passes every rule")
    else:
        print(f"refused: {args.arch} x {args.toolkit}" + (f" x torch {torch}" if torch else ""))
        for refused in choice.refusals:
            print(f"  {refused}")
        print(f"rules checked for {label}:")
    for name, doc, refusal, refuses in explain_rules(matrix, cand):
        mark = "ok  " if refusal is None else "FAIL" if refuses else "NOTE"
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
    matrix = load_matrix(args.matrix)
    targets = select_targets(matrix, args.select or "*")
    templates = Path(args.templates) if args.templates else None
    root = Path(args.out) if args.out else render.REPO_ROOT
    rendered = render.render_all(targets, templates)
    rendered[outputs.PROBE_FACTS_PATH] = outputs.probe_facts(matrix)
    rendered[schema.SCHEMA_PATH] = schema.schema_text()
    rendered |= shapes_file(matrix)  # the probe's warm shapes
    prune = not args.select  # a partial render must not delete the other targets' files
    if args.check:
        drift = render.check(rendered, root, prune=prune)
        if drift:
            raise RenderDriftError(
                f"{len(drift)} rendered file(s) differ from matrix.yaml + templates/ (run `make render`)",
                details=[str(d) for d in drift])
        print(f"{len(rendered) - 1} dockerfiles and {SHAPES_FILE} up to date")
        return 0
    changes = render.write(rendered, root, prune=prune)
    for change in changes:
        print(f"{'removed' if change.kind == 'stale' else 'wrote'} {change.path}")
    print(f"{len(rendered) - 1} dockerfiles and {SHAPES_FILE}, {len(changes)} changed")
    return 0


# ---- parser and main -----------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error: …` line and exit 2 (a UsageError), with the near miss
    for a mistyped command."""

    def error(self, message: str) -> NoReturn:
        choice = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            name, value, choices = choice.group(1), choice.group(2), re.findall(r"'([^']*)'", choice.group(3))
            near = did_you_mean(value, choices) or f" (choose from {', '.join(choices)})"
            message = f"unknown command {value!r}{near}" if name == "COMMAND" else f"{name}: invalid choice {value!r}{near}"
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _shared_options() -> dict[str, Parser]:
    """The options several commands take, each declared once."""
    def parent() -> Parser:
        return Parser(add_help=False)

    matrix = parent()
    # SUPPRESS: `--matrix` works before or after the subcommand (main() fills in the default).
    matrix.add_argument("--matrix", type=Path, default=argparse.SUPPRESS,
                        help="matrix file (default: $IMAGEFACTORY_MATRIX, else ./matrix.yaml, else the repository's)")
    docker = parent()
    docker.add_argument("--docker", metavar="PATH",
                        help="docker client (default: $IMAGEFACTORY_DOCKER, else the first BuildKit-capable one on PATH)")
    release = parent()
    release.add_argument("--release", help="release in the immutable tag: letters, digits, '.', '_' (default: UTC date YYYYMMDD)")
    reports = parent()
    reports.add_argument("--reports-dir", type=Path, default=REPORTS_DIR, metavar="DIR",
                         help="where build, gate and release reports go: DIR/<target>/ (default: reports)")
    gpu = parent()
    gpu.add_argument("--require-gpu", action="store_true", help="fail the gate when no GPU is visible (release pipelines)")
    return {"matrix": matrix, "docker": docker, "release": release, "reports": reports, "gpu": gpu}


def build_parser() -> argparse.ArgumentParser:
    shared = _shared_options()
    matrix, docker, release, reports, gpu = (shared[k] for k in ("matrix", "docker", "release", "reports", "gpu"))
    parser = Parser(prog="imagefactory", description="GPU image factory for LLM fine-tuning.", parents=[matrix])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # planning: matrix -> targets -> Dockerfiles
    p = sub.add_parser("targets", parents=[matrix], help="list targets (table, ids, json, github, bake)")
    p.add_argument("--format", choices=("table", "ids", "json", "github", "bake"), default="table")
    p.add_argument("--select", metavar="GLOB", help="only targets matching the glob, e.g. 'hopper-*', '*-{cu128,cu130}'")
    p.add_argument("--why-not", action="store_true", help="list the arch x toolkit cells the rules refuse, and why")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("show", parents=[matrix], help="one target fully resolved, with where each value came from")
    p.add_argument("target")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("explain", parents=[matrix], help="why a combination is allowed or refused")
    p.add_argument("arch")
    p.add_argument("toolkit")
    p.add_argument("torch", nargs="?", help="torch version (2.7 or 2.7.1); default: the newest that works")
    p.add_argument("--flavor", help="slim, nvidia or rocm (default: the first that works)")
    p.add_argument("--dtype", choices=TRAIN_DTYPES, help="training dtype setting to check")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("render", parents=[matrix],
                       help="write dockerfiles/<target>/Dockerfile and the generated facts and schema (only if changed)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 listing every file that differs")
    p.add_argument("--select", metavar="GLOB", help="only these targets (no stale-file pruning)")
    p.add_argument("--templates", metavar="DIR", help="template directory (default: templates/)")
    p.add_argument("--out", metavar="DIR", help="repository root to write dockerfiles/ under (default: this repo)")
    p.set_defaults(func=cmd_render)

    # build: Dockerfile -> image -> gate -> local tags
    p = sub.add_parser("bootstrap", parents=[docker],
                       help="make the slim flavor's OS base images from Debian's mirror (mmdebstrap + docker import)")
    p.add_argument("--force", action="store_true", help="remake them even if they exist")
    p.add_argument("--mirror", help="Debian mirror URL (default: mmdebstrap's, deb.debian.org)")
    p.add_argument("--platform", choices=sorted(PLATFORMS), default=HOST_PLATFORM,
                   help="the bases' platform; linux/arm64 runs under QEMU user emulation, names end in -arm64 (default: linux/amd64)")
    p.set_defaults(func=build_commands.cmd_bootstrap)

    p = sub.add_parser("build", parents=[matrix, docker, release, reports, gpu],
                       help="build targets (ids or globs), gate them, tag the ones that pass")
    p.add_argument("patterns", nargs="+", metavar="TARGET", help="target id or glob: hopper-cu130, 'hopper-*', '*'")
    p.add_argument("--bnb-source", type=Path, metavar="PATH", help="compile bitsandbytes from this local source tree")
    p.add_argument("--no-gate", action="store_true", help="build only: no gate, no tags (prints the image ID)")
    p.add_argument("--ca-bundle", type=Path, metavar="FILE",
                   help="CA bundle for TLS-intercepting proxies, passed as a BuildKit secret "
                        "(default: the host's when the image lacks its CAs)")
    p.add_argument("--quiet", action="store_true", help="log BuildKit output to DIR/<target>/build.log only; show progress")
    p.add_argument("--platform", choices=sorted(PLATFORMS),
                   help="build for this platform only (targets not built for it are skipped); linux/arm64 is cross-built "
                        "here and gated under QEMU user emulation, tags end in -arm64 (default: each target's first platform, "
                        "the host's where it has it)")
    p.set_defaults(func=build_commands.cmd_build)

    p = sub.add_parser("gate", parents=[matrix, docker, release, reports, gpu],
                       help="rerun the gate (probe + smoke in the image) on an existing image; tag it on a pass")
    p.add_argument("target")
    p.add_argument("--image", help="image ID or reference (default: the last build of the target, else <repo>:<target>)")
    p.add_argument("--platform", choices=sorted(PLATFORMS),
                   help="the image's platform (default: the target's first); linux/arm64 runs under QEMU user emulation")
    p.set_defaults(func=build_commands.cmd_gate)

    # publish: gated image -> registry; docs for the people who pull
    p = sub.add_parser("push", parents=[matrix, docker, release, reports],
                       help="push a gated image: immutable tag, then floating tags")
    p.add_argument("target", help="target id, e.g. hopper-cu130")
    p.add_argument("--registry", default=os.environ.get("IMAGEFACTORY_REGISTRY"),
                   help="HOST[:PORT]/NAME, e.g. ghcr.io/org/imagefactory (default: $IMAGEFACTORY_REGISTRY)")
    p.add_argument("--allow-cpu-gate", action="store_true",
                   help="also push an image whose gate ran without a GPU (the report label says so)")
    p.add_argument("--compression", choices=COMPRESSIONS, default="gzip",
                   help="layer compression: gzip (docker push; every client) or zstd (skopeo; Docker >= 23, "
                        "containerd >= 1.5: decompresses several times faster) (default: gzip)")
    p.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                   help="the platform's gated image (reports/<target>[-arm64]/gate.json); twice (linux/amd64 and linux/arm64): "
                        "one image index of both under the same tags, each image also under <immutable>-<arch> "
                        "(default: the target's first platform)")
    p.set_defaults(func=publish_commands.cmd_push)

    p = sub.add_parser("docs", parents=[matrix, docker],
                       help="docs/supported-tags.{md,json} and docs/deploy/ from the matrix")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a generated file differs")
    p.add_argument("--repo", default=DOCS_REPO, help=f"repository the docs name (default: {DOCS_REPO})")
    p.add_argument("--docs-dir", type=Path, default=Path("docs"))
    p.add_argument("--measure", action="store_true",
                   help="first record the sizes of the local gated images in docs/deploy/image-sizes.json "
                        "(RunPod's container disk is sized from them)")
    p.set_defaults(func=publish_commands.cmd_docs)

    p = sub.add_parser("summary", help="markdown table of reports/*/release.json")
    p.add_argument("records", nargs="*", help="release.json files")
    p.set_defaults(func=publish_commands.cmd_summary)

    p = sub.add_parser("record-gate", parents=[matrix, reports],
                       help="add a target whose last gate passed to docs/gated.json (what `probe select` prefers)")
    p.add_argument("target")
    p.add_argument("--where", required=True, help="the machine, in plain words: 'x86_64 build host, no GPU'")
    p.add_argument("--file", type=Path, default=gated.GATED, help=f"the record (default: {gated.GATED})")
    p.add_argument("--platform", choices=sorted(PLATFORMS),
                   help="the gated image's platform (reports/<target>-arm64/ for linux/arm64; default: the target's first)")
    p.set_defaults(func=cmd_record_gate)

    p = sub.add_parser("warm-pins", parents=[matrix],
                       help="warm + replay Triton's cache with no GPU for every pinned triton (docs/warm-pins.*)")
    p.add_argument("--triton", action="append", help="only this pin (repeatable); the record keeps the others")
    p.add_argument("--sm", default=warm_pins.DEFAULT_SMS, help=f"SMs to warm (default {warm_pins.DEFAULT_SMS})")
    p.add_argument("--python", default="python3.11", help="the interpreter of the venvs (images: bookworm's 3.11)")
    p.add_argument("--keep", action="store_true", help="keep the venvs under .build/warm-pins/")
    p.add_argument("--shared-torch", metavar="VERSION", help="one venv with this torch; each triton installed beside it")
    p.set_defaults(func=lambda a: warm_pins.prove_pins(a.matrix, a.triton, a.sm, a.python, a.keep, a.shared_torch))
    return parser


def cmd_record_gate(args: argparse.Namespace) -> int:
    target = resolve_target(load_matrix(args.matrix), args.target)
    print(gated.record_gate(target, args.where, args.reports_dir, args.file, args.platform))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "matrix", None) is None:
            args.matrix = default_matrix_path()
        return int(args.func(args) or 0)
    except ImageFactoryError as exc:
        for line in exc.lines():
            log.echo(f"error: {line}")
        return exc.exit_code
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except KeyboardInterrupt:
        log.echo("error: interrupted")
        return 130
    except BrokenPipeError:  # `… | head`
        return 0
    except Exception as exc:  # the promise is one line, never a traceback
        if os.environ.get("IMAGEFACTORY_DEBUG"):
            raise
        print(f"error: internal error: {type(exc).__name__}: {exc} (IMAGEFACTORY_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return INTERNAL_ERROR_EXIT
