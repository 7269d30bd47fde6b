"""`python -m imagefactory push|docs|summary` (registered into imagefactory.cli, whose main() turns errors
into lines and exit codes). `nox -s push-<target> -- --registry REPO` runs push.

  push TARGET --registry HOST[:PORT]/NAME [--release R]   publish a gated image (see imagefactory.publish.push)
  docs [--check] [--repo REPO]                            supported-tags page + deploy files from matrix.yaml
  summary reports/*/release.json                          markdown table of published tags (CI summary)

Every failure is one `error: …` line and a non-zero exit code (ReleaseError → 7, config errors → 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from imagefactory.publish.push import REPORTS_DIR, GateReport, default_release, publish, release_tags, summary_markdown, write_release_record
from imagefactory.publish.docs import DOCS_REPO, drift, generate, write
from imagefactory.publish.errors import ReleaseError
from imagefactory.publish.registry import Registry, RepoRef


def _matrix(args: argparse.Namespace):
    from imagefactory.cli import matrix_from_args  # noqa: PLC0415 - the main CLI imports this module

    return matrix_from_args(args)


def cmd_docs(args: argparse.Namespace) -> int:
    from imagefactory.plan.expand import all_targets  # noqa: PLC0415

    from imagefactory.publish import sizes  # noqa: PLC0415

    targets = all_targets(_matrix(args))
    measured = sizes.load(args.docs_dir)
    if args.measure and not args.check:
        from imagefactory.build.docker import detect  # noqa: PLC0415 - execution layer, only for --measure

        found = sizes.measure(detect(os.environ.get("IMAGEFACTORY_DOCKER")), targets)
        print(f"measured {len(found)} local image(s): " + (", ".join(f"{t} {b / 1e9:.1f} GB" for t, b in sorted(found.items())) or "none"))
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
    from imagefactory.plan.expand import resolve_target  # noqa: PLC0415
    from imagefactory.publish.docker_ops import CliDocker  # noqa: PLC0415 - execution layer

    if not args.registry:
        raise ReleaseError("push needs --registry HOST[:PORT]/NAME (or $IMAGEFACTORY_REGISTRY)")
    target = resolve_target(_matrix(args), args.target)
    repo = RepoRef.parse(args.registry)
    tags = release_tags(target, args.release or default_release())
    report = GateReport.read(args.reports_dir / target.id / "gate.json")
    result = publish(tags, report, target.id, repo, CliDocker(), Registry(repo), say=lambda m: print(m, flush=True),
                     allow_cpu_gate=args.allow_cpu_gate)
    record = write_release_record(result, target.id, args.reports_dir)
    verb = "already published" if result.already_there else "published"
    print(f"{verb} {repo}:{tags.immutable} ({result.digest}); floating: {', '.join(tags.floating)}; record: {record}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    records = []
    for path in args.records:
        try:
            records.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as error:
            raise ReleaseError(f"{path}: unreadable release record ({error})") from None
    sys.stdout.write(summary_markdown(records))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add push / docs / summary to `python -m imagefactory` (imagefactory.cli calls this)."""
    matrix_opt = argparse.ArgumentParser(add_help=False)  # after the command too, as build and gate take it
    matrix_opt.add_argument("--matrix", default=argparse.SUPPRESS, help="matrix file (default: ./matrix.yaml)")
    push = sub.add_parser("push", parents=[matrix_opt], help="push a gated image: immutable tag, then floating tags")
    push.add_argument("target", help="target id, e.g. hopper-cu130")
    push.add_argument("--registry", default=os.environ.get("IMAGEFACTORY_REGISTRY"),
                      help="HOST[:PORT]/NAME, e.g. ghcr.io/org/imagefactory (default: $IMAGEFACTORY_REGISTRY)")
    push.add_argument("--release", help="release version in the immutable tag (default: UTC date YYYYMMDD)")
    push.add_argument("--reports-dir", type=Path, default=REPORTS_DIR, help="where gate reports are (default: reports)")
    push.add_argument("--allow-cpu-gate", action="store_true",
                      help="also push an image whose gate ran without a GPU (the report label says so)")
    push.set_defaults(func=cmd_push)

    docs = sub.add_parser("docs", parents=[matrix_opt], help="docs/supported-tags.{md,json} and docs/deploy/ from the matrix")
    docs.add_argument("--check", action="store_true", help="change nothing; exit 1 when a generated file differs")
    docs.add_argument("--repo", default=DOCS_REPO, help=f"repository the docs name (default: {DOCS_REPO})")
    docs.add_argument("--docs-dir", type=Path, default=Path("docs"))
    docs.add_argument("--measure", action="store_true",
                      help="first record the sizes of the local gated images in docs/deploy/image-sizes.json "
                           "(RunPod's container disk is sized from them)")
    docs.set_defaults(func=cmd_docs)

    summary = sub.add_parser("summary", help="markdown table of reports/*/release.json")
    summary.add_argument("records", nargs="*", help="release.json files")
    summary.set_defaults(func=cmd_summary)

