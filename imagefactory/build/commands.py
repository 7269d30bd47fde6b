"""`python -m imagefactory bootstrap|build|gate`: what each command does with its parsed options.

imagefactory.cli owns the parser (every option declared there once) and calls these; `args.matrix` is
already the matrix file's path. Each returns an exit code or raises an ImageFactoryError.
"""

from __future__ import annotations

import argparse

from imagefactory import log
from imagefactory.build.bootstrap import BASES, bootstrap
from imagefactory.build.docker import check_image_ref, detect
from imagefactory.build.gate import candidate_for, gate_image, report_id, require_pass
from imagefactory.build.images import BuildOptions, build_many, last_built_image
from imagefactory.plan.expand import resolve_target, select_targets
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.model import Target
from imagefactory.plan.platforms import base_ref
from imagefactory.tags import release_or_today


def _targets(args: argparse.Namespace) -> list[Target]:
    matrix = load_matrix(args.matrix)
    chosen: dict[str, Target] = {}
    for pattern in args.patterns:
        for target in select_targets(matrix, pattern):
            chosen.setdefault(target.id, target)
    return list(chosen.values())


def cmd_bootstrap(args: argparse.Namespace) -> int:
    client = detect(args.docker)
    made = bootstrap(client, force=args.force, mirror=args.mirror, platform=args.platform)
    for spec in (s for s in BASES if s.default or base_ref(s.ref, args.platform) in made):
        ref = base_ref(spec.ref, args.platform)
        log.echo(f"{ref}: {'made' if ref in made else 'present'} ({spec.purpose}, {args.platform})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    targets = _targets(args)
    release = release_or_today(args.release)  # checked before any build: a bad one would fail only at tagging
    client = detect(args.docker)
    opts = BuildOptions(
        release=release,
        bnb_source=args.bnb_source.resolve() if args.bnb_source else None,
        gate=not args.no_gate,
        require_gpu=args.require_gpu,
        ca_bundle=args.ca_bundle,
        show_output=len(targets) == 1 and not args.quiet,
        reports_dir=args.reports_dir,
        platform=args.platform,
    )
    results = build_many(client, targets, opts)
    for result in results:
        if result.ok and not opts.gate:
            print(f"{result.target} {result.image_id}")  # stdout: the candidate, for scripts
    return 0 if all(r.ok for r in results) else 1


def cmd_gate(args: argparse.Namespace) -> int:
    target = resolve_target(load_matrix(args.matrix), args.target)
    release = release_or_today(args.release)  # checked before any build: a bad one would fail only at tagging
    platform = target.build_platform(args.platform)  # exit 2 when the target is not built for the platform asked
    unit = report_id(target, platform)
    client = detect(args.docker)
    image = args.image or last_built_image(unit, args.reports_dir) or f"{target.image_repo}:{unit}"
    check_image_ref(image, "--image" if args.image else f"{args.reports_dir / unit}/build.json image_id")
    candidate = candidate_for(client, target, image, platform)  # exists, is an image of this target and platform: else exit 2
    with log.step(f"gate {unit}"):
        gated = gate_image(client, target, candidate, release=release, require_gpu=args.require_gpu,
                           reports_dir=args.reports_dir, platform=platform)
    require_pass(gated, args.reports_dir)
    log.echo(f"{target.id}: gate passed ({gated.mode} mode); tagged {', '.join(gated.tags)}")
    return 0
