"""Local OS base images for the slim flavor, made from Debian's mirror with no registry.

`mmdebstrap --variant=minbase` writes a root filesystem tarball from the distribution's mirror and
`docker import` turns it into an image. Two images: the runtime base (python3 + venv + CA
certificates) and the build base (+ headers, gcc/g++, git for bitsandbytes and Triton's launcher
modules). Their names are what matrix.yaml's slim flavor starts FROM.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imagefactory import log
from imagefactory.build.docker import DockerClient, image_exists, import_rootfs
from imagefactory.errors import BootstrapError, CommandError
from imagefactory.run import run

SUITE = "bookworm"  # Debian 12: python3 is 3.11, the slim flavor's declared python
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Documentation, manual pages and translations are never read in an image: leave them out.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)


@dataclass(frozen=True)
class BaseSpec:
    ref: str
    packages: tuple[str, ...]
    purpose: str


RUNTIME_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
BASES: tuple[BaseSpec, ...] = (
    BaseSpec(f"imagefactory/base:{SUITE}", RUNTIME_PACKAGES, "runtime: python3, venv, CA certificates"),
    BaseSpec(
        f"imagefactory/base:{SUITE}-build",
        (*RUNTIME_PACKAGES, "python3-dev", "gcc", "g++", "libc6-dev", "git"),
        "build: + headers, gcc/g++, git",
    ),
)


def spec_for(ref: str) -> BaseSpec | None:
    return next((spec for spec in BASES if spec.ref == ref or f"docker.io/{spec.ref}" == ref), None)


def mmdebstrap_argv(spec: BaseSpec, out: Path, mirror: str | None = None) -> list[str]:
    argv = ["mmdebstrap", "--variant=minbase", f"--include={','.join(spec.packages)}"]
    argv += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    argv += [SUITE, str(out)]
    if mirror:
        argv.append(mirror)
    return argv


def bootstrap(client: DockerClient, refs: tuple[str, ...] | None = None, *, force: bool = False, mirror: str | None = None) -> list[str]:
    """Make the missing base images (all of BASES, or those named); returns the refs made."""
    specs = BASES if refs is None else tuple(s for s in (spec_for(r) for r in refs) if s is not None)
    wanted = [s for s in specs if force or not image_exists(client, s.ref)]
    if not wanted:
        return []
    if shutil.which("mmdebstrap") is None:
        names = ", ".join(s.ref for s in wanted)
        raise BootstrapError(f"{names} missing and mmdebstrap not installed: apt-get install mmdebstrap (then python -m imagefactory bootstrap)")
    made = []
    with tempfile.TemporaryDirectory(prefix="imagefactory-base-") as tmp:
        for spec in wanted:
            with log.step(f"bootstrap {spec.ref} ({spec.purpose})"):
                tarball = Path(tmp) / "rootfs.tar"
                try:
                    run(mmdebstrap_argv(spec, tarball, mirror), show=False, log=Path(tmp) / "mmdebstrap.log")
                except CommandError as error:
                    raise BootstrapError(f"bootstrapping {spec.ref} from Debian's mirror failed: {error.message}") from None
                import_rootfs(client, tarball, spec.ref, (f"ENV {PATH_ENV}", 'CMD ["/bin/bash"]'))
                tarball.unlink()
            made.append(spec.ref)
    return made
