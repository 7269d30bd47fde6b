"""Execution subcommands of `python -m imagefactory`: bootstrap, build, gate (registered by cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from imagefactory.build.bootstrap import BASES, bootstrap
from imagefactory.build.images import BuildOptions, build_many, last_built_image
from imagefactory.build.docker import detect, image_inspect
from imagefactory.errors import UsageError
from imagefactory.build.gate import gate_image, require_pass
from imagefactory.plan.model import Target
from imagefactory.plan.model import release_tags
from imagefactory.publish.push import default_release
from imagefactory.run import echo


def register(subparsers: argparse._SubParsersAction) -> None:
    docker_opt = argparse.ArgumentParser(add_help=False)
    docker_opt.add_argument("--docker", metavar="PATH",
                            help="docker client to use (default: $IMAGEFACTORY_DOCKER, else the first BuildKit-capable one on PATH)")
    matrix_opt = argparse.ArgumentParser(add_help=False)
    matrix_opt.add_argument("--matrix", default=argparse.SUPPRESS, help="matrix file (default: ./matrix.yaml)")
    release_opt = argparse.ArgumentParser(add_help=False)
    release_opt.add_argument("--release", default=None, help="release for the immutable tag (default: UTC date YYYYMMDD)")
    release_opt.add_argument("--require-gpu", action="store_true", help="fail the gate when no GPU is visible (release pipelines)")

    p = subparsers.add_parser("bootstrap", parents=[docker_opt],
                              help="make the slim flavor's OS base images from Debian's mirror (mmdebstrap + docker import)")
    p.add_argument("--force", action="store_true", help="remake them even if they exist")
    p.add_argument("--mirror", help="Debian mirror URL (default: mmdebstrap's, deb.debian.org)")
    p.set_defaults(func=cmd_bootstrap)

    p = subparsers.add_parser("build", parents=[matrix_opt, docker_opt, release_opt],
                              help="build targets (ids or globs), gate them, tag the ones that pass")
    p.add_argument("patterns", nargs="+", metavar="TARGET", help="target id or glob: hopper-cu130, 'hopper-*', '*'")
    p.add_argument("--bnb-source", type=Path, metavar="PATH", help="compile bitsandbytes from this local source tree")
    p.add_argument("--no-gate", action="store_true", help="build only: no gate, no tags (prints the image ID)")
    p.add_argument("--ca-bundle", type=Path, metavar="FILE",
                   help="CA bundle for TLS-intercepting proxies, passed as a BuildKit secret (default: the host's when the image lacks its CAs)")
    p.add_argument("--quiet", action="store_true", help="log BuildKit output to reports/<target>/build.log only; show progress")
    p.set_defaults(func=cmd_build)

    p = subparsers.add_parser("gate", parents=[matrix_opt, docker_opt, release_opt],
                              help="rerun the gate (probe + smoke in the image) on an existing image; tag it on a pass")
    p.add_argument("target")
    p.add_argument("--image", help="image ID or reference (default: the last build of the target, else <repo>:<target>)")
    p.set_defaults(func=cmd_gate)


def _targets(args: argparse.Namespace) -> list[Target]:
    from imagefactory.cli import matrix_from_args  # noqa: PLC0415 - cli imports this module
    from imagefactory.plan.expand import select_targets  # noqa: PLC0415

    matrix = matrix_from_args(args)
    chosen: dict[str, Target] = {}
    for pattern in args.patterns:
        for target in select_targets(matrix, pattern):
            chosen.setdefault(target.id, target)
    return list(chosen.values())


def _release(args: argparse.Namespace, targets: list[Target]) -> str:
    """--release (default: today), checked before any build: a bad one would fail only at tagging."""
    release = args.release or default_release()
    for target in targets:
        release_tags(target, release)
    return release


def cmd_bootstrap(args: argparse.Namespace) -> int:
    client = detect(args.docker)
    made = bootstrap(client, force=args.force, mirror=args.mirror)
    for spec in BASES:
        echo(f"{spec.ref}: {'made' if spec.ref in made else 'present'} ({spec.purpose})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    targets = _targets(args)
    release = _release(args, targets)
    client = detect(args.docker)
    opts = BuildOptions(
        release=release,
        bnb_source=args.bnb_source.resolve() if args.bnb_source else None,
        gate=not args.no_gate,
        require_gpu=args.require_gpu,
        ca_bundle=args.ca_bundle,
        show_output=len(targets) == 1 and not args.quiet,
    )
    # Wide when logged (CI): an 80-column table folds every reason into a tall column.
    console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
    results = build_many(client, targets, opts, console)
    for result in results:
        if result.ok and not opts.gate:
            print(f"{result.target} {result.image_id}")  # stdout: the candidate, for scripts
    return 0 if all(r.ok for r in results) else 1


def cmd_gate(args: argparse.Namespace) -> int:
    from imagefactory.cli import matrix_from_args  # noqa: PLC0415
    from imagefactory.plan.expand import resolve_target  # noqa: PLC0415

    target = resolve_target(matrix_from_args(args), args.target)
    release = _release(args, [target])
    client = detect(args.docker)
    image = args.image or last_built_image(target.id) or f"{target.image_repo}:{target.id}"
    info = image_inspect(client, image)
    if info is None:
        raise UsageError(f"{target.id}: no image {image} in the local store; build it first (nox -s build-{target.id})")
    gated = gate_image(client, target, info["Id"], release=release, require_gpu=args.require_gpu)
    require_pass(gated)
    echo(f"{target.id}: gate passed ({gated.mode} mode); tagged {', '.join(gated.tags)}")
    return 0
