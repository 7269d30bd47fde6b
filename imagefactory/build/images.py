"""Build targets end to end: base images, render, bitsandbytes source, BuildKit build, gate, tag.

One target: render its Dockerfile (into .build/<id>/, never over the committed one), make sure its
base images exist (bootstrapping the slim bases), decide where bitsandbytes comes from, build by
image ID, then gate (imagefactory.build.gate), which tags only on a pass. Many targets: the same, one
after another, past failures, with progress and a summary table at the end.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from rich.markup import escape
from rich.table import Table

from imagefactory import log
from imagefactory.build import bootstrap as _bootstrap
from imagefactory.build.docker import DockerClient, build, image_exists, image_size
from imagefactory.build.gate import REPORTS_DIR, GateResult, gate_image, report_id
from imagefactory.build.locks import staging_lock, target_lock
from imagefactory.errors import BuildFailedError, ImageFactoryError, UsageError
from imagefactory.log import echo
from imagefactory.plan.model import Target
from imagefactory.plan.platforms import HOST_PLATFORM, base_ref, dockerfile_name, is_cross
from imagefactory.plan.render import REPO_ROOT, bnb_library, render_target
from imagefactory.run import run

BnbSource = Literal["git", "local", "wheel"]

BUILD_DIR = Path(".build")  # gitignored scratch inside the build context
BNB_STAGE = BUILD_DIR / "bnb-src"  # where a local bitsandbytes tree is staged (.dockerignore lets it in)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
MAX_CA_BUNDLE = 16 * 1024 * 1024  # the host bundle is ~200 KB
GIT_TIMEOUT_S = 10  # a blackholed network must not stall every build
# How BuildKit says that a FROM image could not be fetched.
PULL_FAILURES = ("failed to do request", "pull access denied", "failed to resolve source metadata",
                 "no such host", "i/o timeout", "connection refused")


@dataclass(frozen=True)
class BnbChoice:
    source: BnbSource
    version: str  # what the image will say it holds (the tree's own version for a local tree)
    note: str  # one line for the log: where bitsandbytes comes from and why


@dataclass(frozen=True)
class BuildOptions:
    release: str
    bnb_source: Path | None = None  # a local bitsandbytes tree (offline / air-gapped builds)
    gate: bool = True
    require_gpu: bool = False
    ca_bundle: Path | None = None  # None: the host's bundle when it differs from the image's
    show_output: bool = True  # stream BuildKit output (single target); else log only + progress
    root: Path = REPO_ROOT  # build context: the repository root
    reports_dir: Path = REPORTS_DIR
    platform: str | None = None  # None: each target's first (the host's where it has it); linux/arm64: cross-built


@dataclass(frozen=True)
class BuildResult:
    target: str
    ok: bool
    stage: str  # how far it got: base, render, build, gate, done
    duration_s: float
    image_id: str | None = None
    size_bytes: int | None = None
    bnb_source: str | None = None
    reason: str = ""
    tags: tuple[str, ...] = ()


# ---- pure decisions (unit-tested) --------------------------------------------------------------

_VERSION_RES = (
    (Path("bitsandbytes/__init__.py"), re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.M)),
    (Path("setup.py"), re.compile(r"""["']version["']\s*:\s*["']([^"']+)["']""")),
)


def local_tree_version(tree: Path) -> str:
    """The version a bitsandbytes source tree declares (bitsandbytes/__init__.py, else setup.py)."""
    for rel, pattern in _VERSION_RES:
        try:
            found = pattern.search((tree / rel).read_text(encoding="utf-8"))
        except OSError:
            continue
        if found:
            return found.group(1)
    raise BuildFailedError(f"{tree}: not a bitsandbytes source tree (no version in bitsandbytes/__init__.py or setup.py)")


def choose_bnb(target: Target, local_tree: Path | None, git_reachable: Callable[[], bool], platform: str = HOST_PLATFORM) -> BnbChoice:
    """Where this build's bitsandbytes comes from: a local tree when given; the matrix's mode
    otherwise; its declared fallback (the wheel) when the upstream repository cannot be reached.
    A cross-built platform always takes PyPI's wheel for it (compiling would run nvcc under emulation)."""
    bnb = target.bitsandbytes
    if is_cross(platform):
        if local_tree is not None:
            raise UsageError(f"{target.id}: --bnb-source cannot be used for {platform}: its images take PyPI's {platform} "
                             f"wheel (compiling here would run nvcc under emulation)")
        return BnbChoice("wheel", bnb.version, f"bitsandbytes {bnb.version}: PyPI's {platform} wheel's {bnb_library(target)} "
                                               f"(not compiled: nvcc would run under emulation), one library kept")
    if local_tree is not None:
        if target.nvcc == "none":
            raise BuildFailedError(f"{target.id}: --bnb-source given, but the {target.flavor} flavor has no compiler for {target.toolkit.id}")
        version = local_tree_version(local_tree)
        differs = "" if version == bnb.version else f" (matrix pins {bnb.version})"
        return BnbChoice("local", version, f"bitsandbytes {version} compiled from the local tree {local_tree}{differs}")
    if target.nvcc == "none":
        return BnbChoice("wheel", bnb.version, f"bitsandbytes {bnb.version}: the PyPI wheel's {bnb_library(target)} (the "
                                               f"{target.flavor} flavor has no CUDA {target.toolkit.version} compiler), one library kept")
    if bnb.mode == "wheel":
        return BnbChoice("wheel", bnb.version, f"bitsandbytes {bnb.version}: the PyPI wheel (declared mode), one library kept")
    if git_reachable():
        return BnbChoice("git", bnb.version, f"bitsandbytes {bnb.version} compiled from {bnb.git_url} at {bnb.git_ref} "
                                             f"with {target.labels.get('io.imagefactory.nvcc', 'the base image toolkit')}")
    if bnb.fallback == "wheel":
        return BnbChoice(
            "wheel", bnb.version,
            f"bitsandbytes source unreachable ({bnb.git_url}, no --bnb-source): using the declared fallback, "
            f"the PyPI wheel {bnb.version} (one library kept)",
        )
    raise BuildFailedError(f"{target.id}: cannot reach {bnb.git_url} and the matrix declares no fallback; pass --bnb-source PATH")


def build_args(target: Target, choice: BnbChoice, revision: str, created: str) -> dict[str, str]:
    return {"BNB_SOURCE": choice.source, "BNB_VERSION": choice.version, "SOURCE_REVISION": revision, "BUILD_DATE": created}


def pem_blocks(data: bytes) -> set[bytes]:
    return set(re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S))


def extra_certificates(host_bundle: bytes, image_bundle: bytes | None) -> set[bytes]:
    """Certificates the host trusts that the image does not (e.g. a TLS-intercepting proxy's CA)."""
    return pem_blocks(host_bundle) - pem_blocks(image_bundle or b"")


# ---- side effects -------------------------------------------------------------------------------


def git_reachable(url: str, ref: str, ca_bundle: Path | None) -> bool:
    if shutil.which("git") is None:
        return False
    env = {"GIT_TERMINAL_PROMPT": "0", **({"GIT_SSL_CAINFO": str(ca_bundle)} if ca_bundle else {})}
    done = run(["git", "ls-remote", "--exit-code", url, f"refs/tags/{ref}"], env=env, capture=True, check=False, timeout=GIT_TIMEOUT_S)
    return done.ok


def stage_bnb_tree(root: Path, tree: Path | None) -> None:
    """Put the local tree where the Dockerfile's COPY finds it, or empty that place (a stale tree
    would change the build context and invalidate the bitsandbytes stage)."""
    build_dir, stage = root / BUILD_DIR, root / BNB_STAGE
    if build_dir.is_symlink():
        raise BuildFailedError(f"{build_dir}: is a symbolic link; remove it (the staging area is never written through a link)")
    if stage.is_symlink() or stage.is_file():
        stage.unlink()  # the link itself, never what it points at
    elif stage.exists():
        shutil.rmtree(stage)
    if tree is not None:
        if not tree.is_dir():
            raise BuildFailedError(f"--bnb-source {tree}: not a directory")
        ignore = shutil.ignore_patterns(".git", "build", "build-cpu", "__pycache__", "libbitsandbytes*", "*.egg-info", "dist")
        shutil.copytree(tree, stage, ignore=ignore, symlinks=True)


def source_revision(root: Path) -> str:
    head = run(["git", "-C", str(root), "rev-parse", "HEAD"], capture=True, check=False, quiet_echo=True)
    if not head.ok:
        return "unknown"
    dirty = run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture=True, check=False, quiet_echo=True)
    return head.stdout.strip() + ("-dirty" if dirty.ok and dirty.stdout.strip() else "")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_ca_bundle(client: DockerClient, image: str) -> bytes | None:
    done = run(client.argv("run", "--rm", "--network", "none", "--entrypoint", "cat", image, IMAGE_CA_BUNDLE),
               capture=True, check=False, quiet_echo=True)
    return done.stdout.encode() if done.ok else None


def check_ca_bundle(path: Path) -> Path:
    """--ca-bundle: a readable file holding at least one PEM certificate; UsageError (exit 2) otherwise."""
    if path.is_dir():
        raise UsageError(f"--ca-bundle {path}: is a directory; give the bundle file (e.g. /etc/ssl/certs/ca-certificates.crt)")
    if not path.exists():
        raise UsageError(f"--ca-bundle {path}: no such file")
    if "\n" in str(path) or "\r" in str(path):
        raise UsageError(f"--ca-bundle {str(path)!r}: a path with a line break cannot be passed to BuildKit")
    try:
        with path.open("rb") as handle:
            head = handle.read(MAX_CA_BUNDLE + 1)
    except OSError as error:
        raise UsageError(f"--ca-bundle {path}: cannot read it ({error.strerror or error})") from None
    if len(head) > MAX_CA_BUNDLE or not pem_blocks(head):
        raise UsageError(f"--ca-bundle {path}: not a PEM certificate bundle (no BEGIN CERTIFICATE block"
                         f"{' in the first ' + str(MAX_CA_BUNDLE // 2**20) + ' MiB' if len(head) > MAX_CA_BUNDLE else ''})")
    return path


def check_bnb_source(tree: Path) -> Path:
    """--bnb-source: a bitsandbytes source tree; UsageError (exit 2) otherwise."""
    if not tree.is_dir():
        raise UsageError(f"--bnb-source {tree}: {'no such directory' if not tree.exists() else 'not a directory'}")
    try:
        local_tree_version(tree)
    except BuildFailedError as error:
        raise UsageError(f"--bnb-source {error.message}") from None
    return tree


def check_options(opts: BuildOptions) -> None:
    """What a user typed, checked before any build starts: one line and exit 2, not a failed build (exit 1)."""
    if opts.platform is not None and is_cross(opts.platform) and opts.bnb_source is not None:
        raise UsageError(f"--bnb-source cannot be used with --platform {opts.platform}: its images take PyPI's wheel "
                         f"(compiling here would run nvcc under emulation)")
    if opts.bnb_source is not None:
        check_bnb_source(opts.bnb_source)
    if opts.ca_bundle is not None:
        check_ca_bundle(opts.ca_bundle)


def targets_for_platform(targets: Sequence[Target], platform: str | None) -> list[Target]:
    """The targets built for `platform` (all when None); the others are named and skipped. None left: exit 2."""
    if platform is None:
        return list(targets)
    kept = [t for t in targets if platform in t.platforms]
    skipped = [t.id for t in targets if platform not in t.platforms]
    if not kept:
        raise UsageError(f"--platform {platform}: {', '.join(skipped[:5])}{' …' if len(skipped) > 5 else ''} "
                         f"{'is' if len(skipped) == 1 else 'are'} not built for it (see `imagefactory show TARGET`: platforms)")
    if skipped:
        echo(f"--platform {platform}: skipping {len(skipped)} target(s) not built for it: {', '.join(skipped[:8])}"
             f"{' …' if len(skipped) > 8 else ''}")
    return kept


def choose_ca_bundle(client: DockerClient, target: Target, explicit: Path | None) -> Path | None:
    """The bundle passed as the `ca` secret: --ca-bundle, else the host's when it trusts certificates
    the build base does not (a TLS-intercepting proxy); never written into a layer."""
    if explicit is not None:
        return check_ca_bundle(explicit)
    if not HOST_CA_BUNDLE.is_file():
        return None
    if not image_exists(client, target.base.build):
        return HOST_CA_BUNDLE  # cannot compare without pulling: pass it, it is harmless
    return HOST_CA_BUNDLE if extra_certificates(HOST_CA_BUNDLE.read_bytes(), image_ca_bundle(client, target.base.build)) else None


def ensure_bases(client: DockerClient, target: Target, platform: str = HOST_PLATFORM) -> None:
    """Bootstrap missing slim bases (for a cross-built platform: its own, and the host's that its file-placing
    stages use; the compiler stage's own Debian base where it has one, `nvcc: {from: debian}`); vendor bases are
    pulled by the build (a registry is needed)."""
    for base_platform in dict.fromkeys((HOST_PLATFORM, platform) if is_cross(platform) else (platform,)):
        if base_platform != platform:
            refs: tuple[str, ...] = (target.base.build,)
        else:
            compiler = () if is_cross(platform) else (target.nvcc_base,)  # a cross build never compiles
            refs = tuple(dict.fromkeys((target.base.build, target.base.runtime, *compiler)))
        missing = [ref for ref in refs if not image_exists(client, base_ref(ref, base_platform))]
        local = tuple(ref for ref in missing if _bootstrap.spec_for(ref) is not None)
        if local:
            names = ", ".join(base_ref(ref, base_platform) for ref in local)
            echo(f"{target.id}: base image(s) {names} missing: bootstrapping from Debian's mirror")
            _bootstrap.bootstrap(client, local, platform=base_platform)


def build_one(client: DockerClient, target: Target, opts: BuildOptions, on_line: Callable[[str], None] | None = None) -> BuildResult:
    platform = target.build_platform(opts.platform)
    opts = replace(opts, platform=platform)
    with target_lock(opts.reports_dir, report_id(target, platform)):
        return _build_one(client, target, opts, on_line)


def _build_one(client: DockerClient, target: Target, opts: BuildOptions, on_line: Callable[[str], None] | None) -> BuildResult:
    start = time.monotonic()
    assert opts.platform is not None  # build_one decided it
    unit = report_id(target, opts.platform)  # hopper-cu130, hopper-cu130-arm64
    result = BuildResult(unit, ok=False, stage="base", duration_s=0.0)
    out_dir = opts.reports_dir / unit
    out_dir.mkdir(parents=True, exist_ok=True)
    _finish(out_dir, result, start)  # until this build ends, build.json says "not ok" (never a stale "ok")
    log_file = out_dir / "build.log"
    log_file.unlink(missing_ok=True)  # a link planted there is removed, not written through
    log_file.write_text("")
    try:
        with log.step(f"{target.id}: base images"):
            ensure_bases(client, target, opts.platform)
        result = replace(result, stage="render")
        work = opts.root / BUILD_DIR / target.id
        if (opts.root / BUILD_DIR).is_symlink() or work.is_symlink():
            raise BuildFailedError(f"{work}: a symbolic link in the staging area; remove it (never written through)")
        work.mkdir(parents=True, exist_ok=True)
        dockerfile = work / dockerfile_name(opts.platform)
        dockerfile.write_text(render_target(target, platform=opts.platform))
        ca_bundle = choose_ca_bundle(client, target, opts.ca_bundle)
        choice = choose_bnb(target, opts.bnb_source,
                            lambda: git_reachable(target.bitsandbytes.git_url, target.bitsandbytes.git_ref, ca_bundle),
                            opts.platform)
        echo(f"{target.id}: {choice.note}")
        result = replace(result, stage="build", bnb_source=choice.source)
        iidfile = work / "iid"
        iidfile.unlink(missing_ok=True)
        # .build/bnb-src is part of the context until BuildKit is done with it
        with staging_lock(opts.root), log.step(f"{target.id}: docker build"):
            stage_bnb_tree(opts.root, opts.bnb_source if choice.source == "local" else None)
            done = build(
                client, context=opts.root, dockerfile=dockerfile, iidfile=iidfile,
                build_args=build_args(target, choice, source_revision(opts.root), utc_now()),
                secrets={"ca": ca_bundle} if ca_bundle else {}, log=log_file, show=opts.show_output, on_line=on_line,
                platform=opts.platform if is_cross(opts.platform) else None,
            )
        if not done.ok or not iidfile.exists():
            error = _build_error(done.tail)
            unpullable = [ref for ref in (base_ref(target.base.build, opts.platform), base_ref(target.base.runtime, opts.platform))
                          if not image_exists(client, ref)]
            if unpullable and any(sign in error for sign in PULL_FAILURES):
                raise BuildFailedError(f"{target.id}: base image {unpullable[0]} is not here and cannot be pulled "
                                       f"(no registry reachable): build this target where one is (log: {log_file})")
            raise BuildFailedError(f"{target.id}: docker build failed: {error} (log: {log_file})")
        image_id = iidfile.read_text().strip()
        result = replace(result, stage="gate" if opts.gate else "done", image_id=image_id, size_bytes=image_size(client, image_id))
        _finish(out_dir, result, start)  # the image ID is on record before the gate runs
        if opts.gate:
            with log.step(f"{target.id}: gate (probe + smoke in the image)"):
                gated = gate_image(client, target, image_id, release=opts.release, require_gpu=opts.require_gpu,
                                   reports_dir=opts.reports_dir, platform=opts.platform)
            if not gated.passed:
                return _finish(out_dir, replace(result, reason=_gate_reason(gated)), start)
            result = replace(result, stage="done", tags=gated.tags)
        return _finish(out_dir, replace(result, ok=True), start)
    except ImageFactoryError as error:
        return _finish(out_dir, replace(result, reason=error.message), start)
    except OSError as error:  # the staging area or reports folder misbehaves: a failed build, said in one line
        return _finish(out_dir, replace(result, reason=f"{getattr(error, 'filename', None) or ''}: {error.strerror or error}".lstrip(": ")), start)


def _build_error(tail: Sequence[str]) -> str:
    """The line of BuildKit's output that says what went wrong."""
    for line in reversed(tail):
        text = line.strip()
        if text.startswith(("ERROR:", "error:", "failed to solve", "executor failed")) or "ERROR" in text[:12]:
            return text[:300]
    return (tail[-1].strip()[:300] if tail else "no output")


def _gate_reason(gated: GateResult) -> str:
    first = gated.failing[0] if gated.failing else "no step ran"
    more = f" (+{len(gated.failing) - 1} more)" if len(gated.failing) > 1 else ""
    return f"gate failed ({gated.mode} mode): {first}{more}"


def _finish(out_dir: Path, result: BuildResult, start: float) -> BuildResult:
    """Stamp the duration so far and write reports/<target>/build.json."""
    result = replace(result, duration_s=round(time.monotonic() - start, 1))
    temporary = out_dir / "build.json.tmp"
    temporary.unlink(missing_ok=True)
    temporary.write_text(json.dumps(asdict(result), indent=2) + "\n")
    temporary.replace(out_dir / "build.json")  # whole or not at all; a link there is replaced, not followed
    return result


def last_built_image(target_id: str, reports_dir: Path = REPORTS_DIR) -> str | None:
    """The image ID the last build of this target produced (reports/<target>/build.json)."""
    try:
        record = json.loads((reports_dir / target_id / "build.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    image_id = record.get("image_id") if isinstance(record, dict) else None
    return image_id if isinstance(image_id, str) else None  # the gate checks its shape (check_image_ref)


# ---- many targets ---------------------------------------------------------------------------------


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


REASON_WIDTH = 200  # the whole reason is in reports/<target>/build.json


def summary_table(results: Sequence[BuildResult]) -> Table:
    table = Table(title="imagefactory build", title_justify="left")
    for column in ("target", "result", "duration", "image size", "reason"):
        table.add_column(column, overflow="fold")
    for r in results:
        verdict = "[green]passed[/]" if r.ok else f"[red]failed[/] ({r.stage})"
        reason = r.reason or ", ".join(r.tags)
        reason = reason if len(reason) <= REASON_WIDTH else reason[: REASON_WIDTH - 1] + "…"
        table.add_row(r.target, verdict, f"{r.duration_s:.0f} s", human_size(r.size_bytes), escape(reason))
    return table


def build_many(client: DockerClient, targets: Sequence[Target], opts: BuildOptions) -> list[BuildResult]:
    """Build (and gate) each target in turn, past failures; print a summary table at the end."""
    check_options(opts)  # what the user typed: exit 2 before any base image, build or gate
    targets = targets_for_platform(targets, opts.platform)
    console = log.console()
    results: list[BuildResult] = []
    for index, target in enumerate(targets, 1):
        header = f"[{index}/{len(targets)}] {target.id}"
        with log.step(header):
            if opts.show_output or not console.is_terminal:
                result = build_one(client, target, opts)
            else:
                with console.status(escape(f"{header}: starting")) as status:
                    def show_progress(line: str, status=status, header=header) -> None:
                        if line.startswith("#") and "[" in line and "]" in line:
                            step = line.split("]", 1)[0].split("[", 1)[1] + line.split("]", 1)[1][:60]
                            status.update(escape(f"{header}: {step}"))
                    result = build_one(client, target, opts, on_line=show_progress)
        results.append(result)
        verdict = "[green]passed[/]" if result.ok else f"[red]failed[/]: {escape(result.reason)}"
        console.print(f"{escape(header)}: {verdict} in {result.duration_s:.0f} s")
    console.print(summary_table(results))
    return results
