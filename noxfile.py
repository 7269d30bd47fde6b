"""nox sessions: render, tests, lint, and per target build-<id> / gate-<id> / push-<id>.

Sessions run the current interpreter (venv_backend="none"): the project's .venv already holds
everything, and 50+ per-target sessions must not each create a virtualenv. `nox -l` lists them.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]  # `render` writes files: run it by name
nox.options.default_venv_backend = "none"

PY = sys.executable
CLI = (PY, "-m", "imagefactory")


def _cross_builds() -> list[tuple[str, str]]:
    """(target id, platform) of every cross-built (arm64) image besides a target's first, which its plain session
    builds already (build-gb10-cu130): sessions build-hopper-cu130-arm64, gate-…-arm64."""
    try:
        from imagefactory import all_targets, load_matrix
        from imagefactory.plan.platforms import is_cross

        return [(t.id, p) for t in all_targets(load_matrix("matrix.yaml")) for p in t.platforms[1:] if is_cross(p)]
    except Exception:  # noqa: BLE001 - _target_ids already said why there are no sessions
        return []


def _target_ids() -> list[str]:
    """Target ids from matrix.yaml; a broken matrix yields none (the `render` session shows why)."""
    try:
        from imagefactory import all_targets, load_matrix
        from imagefactory.errors import ImageFactoryError

        try:
            matrix = load_matrix("matrix.yaml")
            targets = all_targets(matrix)
            ids = [t.id for t in targets]
            _explain_unknown_sessions(matrix, ids)
            return ids
        except ImageFactoryError as exc:
            print(f"noxfile: matrix.yaml is broken, no build sessions: {exc.lines()[0]}", file=sys.stderr)
            return []
    except ImportError as exc:
        print(f"noxfile: imagefactory is not importable ({exc}); run `make venv`", file=sys.stderr)
        return []


def _explain_unknown_sessions(matrix, ids: list[str]) -> None:
    """nox says only "Sessions not found" for `nox -s build-<typo>`: say why, as the CLI would (near
    misses, or the rule that refuses the cell)."""
    from imagefactory import resolve_target
    from imagefactory.errors import ImageFactoryError

    args = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]  # not the posargs
    for arg in args:
        verb, _, target = arg.partition("-")
        if verb in ("build", "gate", "push") and target and target != "all" and target not in ids:
            try:
                resolve_target(matrix, target)
            except ImageFactoryError as exc:
                print(f"noxfile: {arg}: {exc.lines()[0]}", file=sys.stderr)


@nox.session(venv_backend="none", tags=["planning"], default=False)
def render(session: nox.Session) -> None:
    """Render dockerfiles/<target>/Dockerfile from matrix.yaml + templates/ (writes only changes)."""
    session.run(*CLI, "render", external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Run the test suite, slow ones included (docker/gpu tests skip themselves when absent)."""
    session.run(PY, "-m", "pytest", "--slow", *session.posargs, external=True)


@nox.session(venv_backend="none", tags=["lint"])
def lint(session: nox.Session) -> None:
    """ruff and mypy (config in pyproject.toml), render --check, docs --check, hadolint on every Dockerfile."""
    session.run(PY, "-m", "ruff", "check", external=True)  # what and how: pyproject.toml (make test runs both too)
    session.run(PY, "-m", "mypy", external=True)
    session.run(*CLI, "render", "--check", external=True)
    session.run(*CLI, "docs", "--check", external=True)
    files = sorted(str(p) for p in Path("dockerfiles").glob("*/Dockerfile*"))
    hadolint = shutil.which("hadolint", path=str(Path(PY).parent)) or "hadolint"
    if files:
        session.run(hadolint, *files, external=True)


def _cli_session(name: str, doc: str, *args: str) -> None:
    def session_func(session: nox.Session) -> None:
        session.run(*CLI, *args, *session.posargs, external=True)

    session_func.__doc__ = doc
    session_func.__name__ = name.replace("-", "_").replace(".", "_")
    nox.session(name=name, venv_backend="none", default=False)(session_func)


@nox.session(name="warm-pins", venv_backend="none", default=False)
def warm_pins(session: nox.Session) -> None:
    """Warm + replay the Triton cache with no GPU for every pinned triton (scratch venvs; writes docs/warm-pins.*)."""
    session.run(PY, "-m", "imagefactory", "warm-pins", *session.posargs, external=True)


_cli_session("bootstrap-base", "Bootstrap the local OS base images (imagefactory/base:bookworm[-build]).", "bootstrap")
_cli_session("build-all", "Build every target (tags only those whose gate passes).", "build", "*")
for _id in _target_ids():
    _cli_session(f"build-{_id}", f"Build the {_id} image and gate it (probe + smoke) before tagging.", "build", _id)
    _cli_session(f"gate-{_id}", f"Run the probe + smoke gate inside the built {_id} image.", "gate", _id)
    _cli_session(f"push-{_id}", f"Push the gated {_id} image with its floating and immutable tags.", "push", _id)
for _id, _platform in _cross_builds():
    _arch = _platform.split("/")[1]
    _cli_session(f"build-{_id}-{_arch}", f"Build the {_platform} {_id} image here (QEMU) and gate it under emulation.",
                 "build", _id, "--platform", _platform)
    _cli_session(f"gate-{_id}-{_arch}", f"Run the gate inside the built {_platform} {_id} image (emulated, CPU mode).",
                 "gate", _id, "--platform", _platform)
