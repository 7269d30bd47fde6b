"""The CPU platforms an image is built for, and what each one means for a build on this (x86-64) host.

linux/amd64 is the host's own: its Dockerfile is `dockerfiles/<target>/Dockerfile`, its bases keep their plain
names. linux/arm64 (GH200, GB200, DGX Spark) is cross-built here: `dockerfiles/<target>/Dockerfile.arm64`, bases
named with an `-arm64` suffix (`imagefactory bootstrap --platform linux/arm64`), the venvs installed from a stage of
the host's platform by uv for the arm64 wheel tags, and only the steps that must run arm64 code (the Triton warm-up,
the runtime OS's packages, the gate) under QEMU user emulation. docs/build.md, "arm64".
"""

from __future__ import annotations

from imagefactory.errors import UsageError

HOST_PLATFORM = "linux/amd64"  # the platform of the machines the factory builds on
# OCI platform -> Debian architecture (mmdebstrap, base names).
DEBIAN_ARCHES = {"linux/amd64": "amd64", "linux/arm64": "arm64"}
PLATFORMS = tuple(DEBIAN_ARCHES)  # what matrix.yaml may name
# OCI platform -> uv's --python-platform for the bases' glibc (Debian bookworm: 2.36), so that wheels built for a
# newer glibc than the image holds are never picked.
UV_PYTHON_PLATFORMS = {"linux/arm64": "aarch64-manylinux_2_36"}


def debian_arch(platform: str) -> str:
    if platform not in DEBIAN_ARCHES:
        raise UsageError(f"--platform {platform!r}: want one of {', '.join(PLATFORMS)}")
    return DEBIAN_ARCHES[platform]


def base_ref(ref: str, platform: str = HOST_PLATFORM) -> str:
    """The local name of a base for a platform: `imagefactory/base:bookworm-build-arm64` for arm64."""
    arch = debian_arch(platform)
    return ref if platform == HOST_PLATFORM else f"{ref}-{arch}"


def is_cross(platform: str) -> bool:
    """Whether a build for `platform` runs its platform's code under emulation here."""
    return debian_arch(platform) != DEBIAN_ARCHES[HOST_PLATFORM]


def dockerfile_name(platform: str) -> str:
    """`Dockerfile` for the host's platform, `Dockerfile.arm64` for a cross-built one."""
    return "Dockerfile" if not is_cross(platform) else f"Dockerfile.{debian_arch(platform)}"


def platform_suffix(platform: str) -> str:
    """What a cross-built image's local tags end with (`-arm64`): Docker 20.10's store keeps one platform per name,
    so the push joins `hopper-cu130` and `hopper-cu130-arm64` into one image index under `hopper-cu130`."""
    return "" if not is_cross(platform) else f"-{debian_arch(platform)}"


def unit_id(target_id: str, platform: str) -> str:
    """One target's image for one platform, as reports/, locks, bake and docs/gated.json name it: `hopper-cu130`,
    `hopper-cu130-arm64`."""
    return target_id + platform_suffix(platform)
