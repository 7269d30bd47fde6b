"""Local OS base images for the slim flavor, made from Debian's mirror with no registry.

`mmdebstrap --variant=minbase` writes a root filesystem tarball from the distribution's mirror and
`docker import` turns it into an image. Two images: the runtime base (python3 + venv + CA
certificates) and the build base (+ headers, gcc/g++, git for bitsandbytes and Triton's launcher
modules). Their names are what matrix.yaml's slim flavor starts FROM. A third, made only when a target's
compiler stage needs it (`nvcc: {from: debian}`): Debian trixie's build base, whose non-free component holds
nvidia-cuda-toolkit 12.4 (bookworm's is 11.8); the bitsandbytes stage installs the toolkit on it.

`--platform linux/arm64` (GH200, GB200, DGX Spark) makes the same two for arm64 on an x86 host, named with an
`-arm64` suffix: mmdebstrap runs the arm64 packages' scripts under QEMU user emulation (binfmt_misc with
qemu-aarch64 registered, and Debian's arch-test), and the image is made by BuildKit from `FROM scratch` +
`ADD rootfs.tar` with `--platform`, because Docker 20.10's `docker import` labels every image with the host's
platform (BuildKit then tries to pull the base from Docker Hub). docs/build.md, "arm64".
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imagefactory import log
from imagefactory.build.docker import DockerClient, build_rootfs_image, image_exists, import_rootfs
from imagefactory.errors import BootstrapError, CommandError
from imagefactory.plan.platforms import HOST_PLATFORM, base_ref, debian_arch
from imagefactory.run import run

SUITE = "bookworm"  # Debian 12: python3 is 3.11, the slim flavor's declared python (the runtime's OS)
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
    suite: str = SUITE
    default: bool = True  # made by a plain `imagefactory bootstrap` (else only when a target needs it, or named)


RUNTIME_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
BUILD_PACKAGES = (*RUNTIME_PACKAGES, "python3-dev", "gcc", "g++", "libc6-dev", "git")
BASES: tuple[BaseSpec, ...] = (
    BaseSpec(f"imagefactory/base:{SUITE}", RUNTIME_PACKAGES, "runtime: python3, venv, CA certificates"),
    BaseSpec(f"imagefactory/base:{SUITE}-build", BUILD_PACKAGES, "build: + headers, gcc/g++, git"),
    BaseSpec("imagefactory/base:trixie-build", BUILD_PACKAGES, "build on trixie: for Debian's nvcc 12.4", "trixie", False),
)


BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
EMULATORS = {"arm64": "qemu-aarch64"}  # the binfmt_misc entry that runs a Debian arch's binaries here


def emulation_problem(arch: str) -> str | None:
    """Why this host cannot run `arch` binaries for mmdebstrap (None: it can)."""
    entry = BINFMT_DIR / EMULATORS[arch]
    try:
        enabled = entry.read_text(encoding="utf-8", errors="replace").splitlines()[:1] == ["enabled"]
    except OSError:
        return (f"no {EMULATORS[arch]} in {BINFMT_DIR} (binfmt_misc): install Debian's qemu-user-static and mount "
                f"binfmt_misc (scripts/host-setup --arm64 does both)")
    if not enabled:
        return f"{entry} is disabled: echo 1 > {entry}"
    if shutil.which("arch-test") is None:
        return "mmdebstrap needs Debian's arch-test for a foreign architecture: apt-get install arch-test"
    return None


def spec_for(ref: str) -> BaseSpec | None:
    return next((spec for spec in BASES if spec.ref == ref or f"docker.io/{spec.ref}" == ref), None)


def mmdebstrap_argv(spec: BaseSpec, out: Path, mirror: str | None = None, arch: str = "amd64") -> list[str]:
    argv = ["mmdebstrap", "--variant=minbase", f"--include={','.join(spec.packages)}"]
    if arch != "amd64":
        argv.append(f"--architectures={arch}")
    argv += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    argv += [spec.suite, str(out)]
    if mirror:
        argv.append(mirror)
    return argv


def bootstrap(client: DockerClient, refs: tuple[str, ...] | None = None, *, force: bool = False, mirror: str | None = None,
              platform: str = HOST_PLATFORM) -> list[str]:
    """Make the missing base images (the default ones of BASES, or those named) for a platform; returns the refs made."""
    arch = debian_arch(platform)
    specs = tuple(s for s in BASES if s.default) if refs is None else tuple(s for s in (spec_for(r) for r in refs) if s is not None)
    wanted = [s for s in specs if force or not image_exists(client, base_ref(s.ref, platform))]
    if not wanted:
        return []
    names = ", ".join(base_ref(s.ref, platform) for s in wanted)
    if shutil.which("mmdebstrap") is None:
        raise BootstrapError(f"{names} missing and mmdebstrap not installed: apt-get install mmdebstrap (then python -m imagefactory bootstrap)")
    if platform != HOST_PLATFORM and (problem := emulation_problem(arch)) is not None:
        raise BootstrapError(f"{names}: cannot bootstrap {platform} here: {problem}")
    made = []
    with tempfile.TemporaryDirectory(prefix="imagefactory-base-") as tmp:
        for spec in wanted:
            ref = base_ref(spec.ref, platform)
            with log.step(f"bootstrap {ref} ({spec.purpose}{'' if platform == HOST_PLATFORM else ', ' + platform + ' under emulation'})"):
                tarball = Path(tmp) / "rootfs.tar"
                try:
                    run(mmdebstrap_argv(spec, tarball, mirror, arch), show=False, log=Path(tmp) / "mmdebstrap.log")
                except CommandError as error:
                    raise BootstrapError(f"bootstrapping {ref} from Debian's mirror failed: {error.message}") from None
                changes = (f"ENV {PATH_ENV}", 'CMD ["/bin/bash"]')
                if platform == HOST_PLATFORM:
                    import_rootfs(client, tarball, ref, changes)
                else:
                    build_rootfs_image(client, tarball, ref, changes, platform)
                tarball.unlink()
            made.append(ref)
    return made
