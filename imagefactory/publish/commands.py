"""`python -m imagefactory push|docs|summary`: what each command does with its parsed options.

  push TARGET --registry HOST[:PORT]/NAME [--release R] [--platform P]…
                                                          publish a gated image, or with several --platform one
                                                          image index of them (see imagefactory.publish.push)
  docs [--check] [--repo REPO] [--measure]                supported-tags page + deploy files from matrix.yaml
  summary reports/*/release.json                          markdown table of published tags (CI summary)

imagefactory.cli owns the parser and calls these; `args.matrix` is already the matrix file's path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imagefactory import log
from imagefactory.build.docker import detect
from imagefactory.build.gate import report_id
from imagefactory.errors import UsageError
from imagefactory.plan.expand import all_targets, resolve_target
from imagefactory.plan.matrix import load_matrix
from imagefactory.publish import sizes
from imagefactory.publish.docs import drift, generate, write
from imagefactory.publish.push import (
    GateReport,
    LocalDocker,
    publish,
    publish_index,
    read_release_record,
    summary_markdown,
    write_release_record,
)
from imagefactory.publish.registry import Registry, RepoRef
from imagefactory.tags import release_or_today, release_tags


def cmd_docs(args: argparse.Namespace) -> int:
    targets = all_targets(load_matrix(args.matrix))
    measured = sizes.load(args.docs_dir)
    if args.measure and not args.check:
        found = sizes.measure(detect(args.docker), targets)
        print(f"measured {len(found)} local image(s): "
              + (", ".join(f"{t} {b / 1e9:.1f} GB" for t, b in sorted(found.items())) or "none"))
        measured |= found
        sizes.write(args.docs_dir, measured)
    files = generate(targets, repo=args.repo, docs_dir=args.docs_dir, sizes=measured)
    if args.check:
        problems = drift(files, args.docs_dir)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            print("error: generated docs are out of date; run: python -m imagefactory docs", file=sys.stderr)
            return 1
        print(f"docs in sync ({len(files)} files)")
        return 0
    changed = write(files, args.docs_dir)
    print(f"{len(changed)} of {len(files)} generated files changed" + "".join(f"\n  {p}" for p in changed))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    if not args.registry:
        raise UsageError("push needs --registry HOST[:PORT]/NAME (or $IMAGEFACTORY_REGISTRY)")
    target = resolve_target(load_matrix(args.matrix), args.target)
    repo = RepoRef.parse(args.registry)
    tags = release_tags(target, release_or_today(args.release))
    platforms = list(dict.fromkeys(target.build_platform(asked) for asked in args.platform or [None]))
    reports = {p: GateReport.read(args.reports_dir / report_id(target, p) / "gate.json") for p in platforms}
    with log.step(f"push {target.id} ({', '.join(platforms)}) to {repo}"):
        if len(platforms) == 1:
            result = publish(tags, reports[platforms[0]], target, repo, LocalDocker(detect(args.docker)), Registry(repo),
                             say=log.echo, allow_cpu_gate=args.allow_cpu_gate, compression=args.compression,
                             platform=platforms[0])
        else:
            result = publish_index(tags, reports, target, repo, LocalDocker(detect(args.docker)), Registry(repo),
                                   say=log.echo, allow_cpu_gate=args.allow_cpu_gate, compression=args.compression)
    record = write_release_record(result, target.id, args.reports_dir)
    verb = "already published" if result.already_there else "published"
    print(f"{verb} {repo}:{tags.immutable} ({result.digest}{', an index of ' + ', '.join(platforms) if len(platforms) > 1 else ''}); "
          f"floating: {', '.join(tags.floating)}; record: {record}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    records = [read_release_record(Path(path)) for path in args.records]
    sys.stdout.write(summary_markdown(records))
    return 0
