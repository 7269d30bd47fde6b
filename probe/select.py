"""Pick the image to pull on a GPU machine: `python -m probe select --repo REPO`.

Standard library only: this runs on a freshly rented pod before any image is pulled
(copy probe/ over, or `pip install` the repository, then `python3 -m probe select`; `probe/select.py` also runs alone).

Inputs: the GPU's compute capability and the driver version (from nvidia-smi, or given as
`--gpu-sm 9.0 --driver 570.86`), and the candidate images: the registry's tag list
(`GET /v2/<name>/tags/list`) or a `--tags-file` (docs/supported-tags.json, or the output of
`python -m imagefactory targets --format json`).

Rules, in order: the image must be built for the machine's CPU platform (a tags file's `platforms`;
`--platform`, default this machine's: Lambda's GH200 is linux/arm64); it must hold native code for the GPU's SM (bitsandbytes and the warm Triton
cache are built per SM, SASS only); the driver must meet the image's CUDA floor; among those left,
a gated target wins (a tags file's `gated`: built here and its gate passed, docs/gated.json), then
the newest torch, then a CUDA the driver supports natively, then the newest CUDA. The reason says
when the chosen image was not gated (or when the input does not say).

Exit codes: 0 a tag was chosen, 1 refused (nothing fits), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# Family name → the SMs its images are built for; used only when the candidates come from a bare
# registry tag list (a tags file states the SMs itself). Mirrors matrix.yaml's `arches`.
ARCH_SMS: dict[str, tuple[str, ...]] = {
    "volta": ("7.0",),
    "turing": ("7.5",),
    "ampere": ("8.0", "8.6"),
    "ada": ("8.9",),
    "hopper": ("9.0",),
    "blackwell": ("10.0", "12.0"),
    "gb10": ("12.1",),
}

# Driver floor per CUDA release when only a tag name is known; mirrors matrix.yaml's
# `toolkits.*.driver_floor` (NVIDIA's CUDA compatibility notes: 11.8 ≥ 520, 12.x ≥ 525 through
# minor-version compatibility, 12.8 ≥ 570 as the matrix requires it for Blackwell too, 13.0 ≥ 580).
CUDA_DRIVER_FLOOR: tuple[tuple[str, int], ...] = (
    ("13.0", 580),
    ("12.9", 575),
    ("12.8", 570),
    ("12.0", 525),
    ("11.8", 520),
)

# Highest CUDA each driver branch supports natively (NVIDIA's CUDA toolkit release notes, table 3).
DRIVER_NATIVE_CUDA: tuple[tuple[int, str], ...] = (
    (580, "13.0"),
    (575, "12.9"),
    (570, "12.8"),
    (560, "12.6"),
    (555, "12.5"),
    (550, "12.4"),
    (545, "12.3"),
    (535, "12.2"),
    (530, "12.1"),
    (525, "12.0"),
    (520, "11.8"),
)

# `<arch>-<toolkit>` plus the suffixes of non-default cells (imagefactory/plan/expand.py): `-torch<minor>`,
# `-<flavor>`, `-<dtype>`.
TARGET_ID = re.compile(r"^(?P<arch>[a-z][a-z0-9]*)-(?P<toolkit>cu\d{3}|rocm\d+(?:\.\d+)*)"
                       r"(?:-torch\d+\.\d+)?(?:-(?:slim|nvidia|rocm))?(?:-(?:bf16|fp16))?$")
IMMUTABLE_TAG = re.compile(r"^(?P<id>.+)-torch(?P<torch>\d+\.\d+\.\d+)-(?P<release>[A-Za-z0-9._]+)$")  # full torch version: an id's own -torch2.7 is a minor
FLOATING_SUFFIX = "-latest"


class SelectError(Exception):
    """Bad input (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors in one line, exit 2 (like probe/cli.py's; this file must also run alone)."""

    def error(self, message: str) -> None:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def is_immutable(tag: str) -> bool:
    return not tag.endswith(FLOATING_SUFFIX) and IMMUTABLE_TAG.match(tag) is not None


def cuda_of_toolkit(toolkit_id: str) -> str | None:
    """`cu130` → `13.0`, `cu118` → `11.8`; None for ROCm."""
    match = re.fullmatch(r"cu(\d+)(\d)", toolkit_id)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def driver_floor(cuda: str) -> int:
    """Lowest driver branch for a CUDA release (CUDA_DRIVER_FLOOR; older releases: 450)."""
    for release, floor in CUDA_DRIVER_FLOOR:
        if version_key(cuda) >= version_key(release):
            return floor
    return 450


def native_cuda(driver: str) -> str | None:
    branch = version_key(driver)[0]
    for floor, cuda in DRIVER_NATIVE_CUDA:
        if branch >= floor:
            return cuda
    return None


@dataclass(frozen=True)
class Candidate:
    """One target as published: what it runs on and the tags that point at it."""

    target_id: str
    vendor: str
    sms: tuple[str, ...]
    cuda: str | None
    driver_floor: int | None
    torch: str | None
    floating_tags: tuple[str, ...] = ()
    immutable_tags: tuple[str, ...] = ()
    gated: str | None = None  # where its gate passed ("CPU gate, x86_64 build host, 2026-12-01"); "" not gated; None unknown
    platforms: tuple[str, ...] | None = None  # "linux/arm64", ...; None: not stated (a bare tag list)

    @property
    def best_tag(self) -> str:
        """The newest immutable tag (reproducible), else the target's floating tag."""
        if self.immutable_tags:
            return max(self.immutable_tags, key=lambda tag: version_key(IMMUTABLE_TAG.match(tag).group("release")))  # type: ignore[union-attr]
        return self.floating_tags[0] if self.floating_tags else self.target_id


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    reason: str


@dataclass(frozen=True)
class Refusal:
    reason: str


def candidates_from_tags(tags: list[str]) -> list[Candidate]:
    """Group a registry's tag list by target id; SMs come from the family name (ARCH_SMS)."""
    floating: dict[str, list[str]] = {}
    immutable: dict[str, list[str]] = {}
    for tag in tags:
        match = IMMUTABLE_TAG.match(tag) if is_immutable(tag) else None
        if match and TARGET_ID.match(match.group("id")):
            immutable.setdefault(match.group("id"), []).append(tag)
            continue
        base = tag[: -len(FLOATING_SUFFIX)] if tag.endswith(FLOATING_SUFFIX) else tag
        if TARGET_ID.match(base):
            floating.setdefault(base, []).append(tag)
    result = []
    for target_id in sorted(set(floating) | set(immutable)):
        match = TARGET_ID.match(target_id)
        assert match is not None
        arch, toolkit = match.group("arch"), match.group("toolkit")
        sms = ARCH_SMS.get(arch, ())
        cuda = cuda_of_toolkit(toolkit)
        torches = [IMMUTABLE_TAG.match(tag).group("torch") for tag in immutable.get(target_id, [])]  # type: ignore[union-attr]
        result.append(
            Candidate(
                target_id=target_id,
                vendor="nvidia" if cuda else "amd",
                sms=sms,
                cuda=cuda,
                driver_floor=driver_floor(cuda) if cuda else None,
                torch=max(torches, key=version_key) if torches else None,
                floating_tags=tuple(sorted(floating.get(target_id, []), key=len)),
                immutable_tags=tuple(sorted(immutable.get(target_id, []))),
            )
        )
    return result


def _pick(entry: dict, *paths: str):
    """First present value among dotted paths (`toolkit.version`), so both the supported-tags JSON
    and `imagefactory targets --format json` are read."""
    for path in paths:
        value = entry
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value not in (None, "", []):
            return value
    return None


def candidates_from_json(data: object, source: str) -> list[Candidate]:
    entries = data.get("targets") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise SelectError(f"{source}: expected a list of targets (or an object with 'targets')")
    result = []
    for index, entry in enumerate(entries):
        target_id = _pick(entry, "id", "target") if isinstance(entry, dict) else None
        if not target_id:
            raise SelectError(f"{source}: target #{index} has no 'id'")
        sms = tuple(str(sm) for sm in (_pick(entry, "sms", "sm") or ()))
        id_match = TARGET_ID.match(str(target_id))
        kind = _pick(entry, "toolkit.kind", "toolkit_kind") or (
            "cuda" if id_match and cuda_of_toolkit(id_match.group("toolkit")) else "rocm"
        )
        cuda = str(_pick(entry, "toolkit.version", "cuda", "toolkit_version") or "") if kind == "cuda" else None
        floor = _pick(entry, "toolkit.driver_floor", "driver_floor", "min_driver")
        tags = [str(tag) for tag in (_pick(entry, "tags") or ())]
        gated = _gated(entry, source, index) if "gated" in entry else None
        platforms = _pick(entry, "platforms")
        result.append(
            Candidate(
                target_id=str(target_id),
                vendor=str(_pick(entry, "arch.vendor", "vendor") or ("nvidia" if kind == "cuda" else "amd")),
                sms=sms,
                cuda=cuda or None,
                driver_floor=int(version_key(str(floor))[0]) if floor else (driver_floor(cuda) if cuda else None),
                torch=_pick(entry, "torch.version", "torch"),
                floating_tags=tuple(tag for tag in tags if not is_immutable(tag)),
                immutable_tags=tuple(tag for tag in tags if is_immutable(tag)),
                gated=gated,
                platforms=tuple(str(p) for p in platforms) if isinstance(platforms, list) else None,
            )
        )
    return result


def _gated(entry: dict, source: str, index: int) -> str:
    """`gated` of a supported-tags entry: null (not gated) or {mode, where, date}, as one line."""
    value = entry["gated"]
    if value is None:
        return ""
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in ("mode", "where", "date")):
        raise SelectError(f"{source}: target #{index}: 'gated' must be null or {{mode, where, date}}")
    text = f"{value['mode'].upper()} gate, {value['where']}, {value['date']}"
    return re.sub(r"[^\w ,.:;()/+=-]", "?", text)[:160]  # printed to a terminal: no control characters


def host_platform() -> str:
    """This machine's OCI platform: linux/arm64 on Grace (GH200, GB200), linux/amd64 on x86."""
    machine = platform.machine().lower()
    return "linux/arm64" if machine in ("aarch64", "arm64") else "linux/amd64" if machine in ("x86_64", "amd64") else f"linux/{machine}"


def choose(candidates: list[Candidate], sm: str, driver: str, platform_: str = "linux/amd64") -> Choice | Refusal:
    """The whole decision, pure: (GPU SM, driver version, CPU platform) → the candidate to pull, or why none fits."""
    if not candidates:
        return Refusal("no images to choose from (empty tag list)")
    on_platform = [c for c in candidates if c.platforms is None or platform_ in c.platforms]
    if not on_platform:
        return Refusal(f"no image is built for {platform_} (the images are for "
                       f"{', '.join(sorted({p for c in candidates for p in c.platforms or ()}))})")
    candidates = on_platform
    for_arch = [c for c in candidates if c.vendor == "nvidia" and sm in c.sms]
    if not for_arch:
        built = sorted({s for c in candidates for s in c.sms}, key=version_key)
        return Refusal(f"no image holds native code for SM {sm} on {platform_} (images exist for SM {', '.join(built) or 'none'})")
    branch = version_key(driver)[0]
    fits = [c for c in for_arch if c.driver_floor is None or branch >= c.driver_floor]
    if not fits:
        lowest = min(for_arch, key=lambda c: c.driver_floor or 0)
        return Refusal(
            f"driver {driver} is too old for every image for SM {sm}: the lowest floor is "
            f"{lowest.driver_floor} ({lowest.target_id}, CUDA {lowest.cuda}); upgrade the driver or pick another machine"
        )
    native = native_cuda(driver)

    def rank(c: Candidate) -> tuple:
        is_native = bool(native and c.cuda and version_key(c.cuda) <= version_key(native))
        return (bool(c.gated), version_key(c.torch or "0"), is_native, version_key(c.cuda or "0"), -len(c.target_id))

    best = max(fits, key=rank)
    parts = [f"arch match: SM {sm} is in {best.target_id}'s SMs ({', '.join(best.sms)})"]
    if best.platforms is not None:
        parts.append(f"platform: {platform_}")
    parts.append(f"driver floor: {driver} ≥ {best.driver_floor} for CUDA {best.cuda}" + (f" (driver runs up to CUDA {native})" if native else ""))
    others = [c.target_id for c in fits if c is not best]
    parts.append(f"newest torch: {best.torch or 'unknown'}" + (f" (also fits: {', '.join(others)})" if others else ""))
    if best.gated:
        parts.append(f"gated: {best.gated}")
    elif best.gated == "":
        parts.append("NOT GATED: no record that this target was built and passed its gate (docs/gated.json)")
    else:
        parts.append("gating unknown: the tag list does not say whether this image was gated")
    return Choice(best, "; ".join(parts))


# ---- inputs from the machine and the registry -------------------------------------------------


def read_gpu() -> tuple[str, str]:
    """(compute capability, driver version) of GPU 0 from nvidia-smi."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SelectError(f"cannot run nvidia-smi ({error}); pass --gpu-sm and --driver") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise SelectError(f"nvidia-smi failed ({done.stderr.strip() or 'no output'}); pass --gpu-sm and --driver")
    sm, driver = (part.strip() for part in done.stdout.splitlines()[0].split(","))
    return sm, driver


def registry_tags(repo: str, timeout: float = 20.0, page: int = 1000) -> list[str]:
    """Tag list of `host[:port]/name` through the registry HTTP API: pages followed through the
    `Link: <…>; rel="next"` header, an anonymous bearer token fetched when the registry asks."""
    host, _, name = repo.partition("/")
    if not name or ("." not in host and ":" not in host and host != "localhost"):
        host, name = "registry-1.docker.io", repo if "/" in repo else f"library/{repo}"
    base = f"{'http' if host.split(':')[0] in ('127.0.0.1', 'localhost') else 'https'}://{host}"
    url: str | None = f"{base}/v2/{name}/tags/list?n={page}"
    headers: dict[str, str] = {}
    tags: list[str] = []
    while url:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
                tags += json.load(response).get("tags") or []
                following = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', response.headers.get("Link", ""))
                url = urllib.parse.urljoin(base, following.group(1)) if following else None
        except urllib.error.HTTPError as error:
            challenge = error.headers.get("WWW-Authenticate", "")
            if error.code != 401 or headers or not challenge.startswith("Bearer "):
                raise SelectError(f"registry {host}: GET tags of {name} failed: HTTP {error.code}") from None
            fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            query = urllib.parse.urlencode({"service": fields.get("service", ""), "scope": fields.get("scope", f"repository:{name}:pull")})
            try:
                with urllib.request.urlopen(f"{fields.get('realm', '')}?{query}", timeout=timeout) as response:
                    token = json.load(response)
            except (urllib.error.URLError, OSError, ValueError) as token_error:
                raise SelectError(f"registry {host}: anonymous token refused ({token_error})") from None
            headers = {"Authorization": f"Bearer {token.get('token') or token.get('access_token')}"}
        except (urllib.error.URLError, OSError) as error:
            raise SelectError(f"registry {host}: cannot reach it ({getattr(error, 'reason', error)})") from None
    return tags


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m probe select", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", help="image repository, e.g. ghcr.io/org/imagefactory (its tag list is read unless --tags-file)")
    parser.add_argument("--tags-file", type=Path, help="docs/supported-tags.json or `imagefactory targets --format json` output")
    parser.add_argument("--gpu-sm", help="compute capability, e.g. 9.0 (default: from nvidia-smi)")
    parser.add_argument("--driver", help="driver version, e.g. 570.86 (default: from nvidia-smi)")
    parser.add_argument("--platform", choices=("linux/amd64", "linux/arm64"),
                        help="CPU platform (default: this machine's; Lambda GH200 is linux/arm64)")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")
    parser.add_argument("--quiet", action="store_true", help="print only the image reference")
    args = parser.parse_args(argv)
    try:
        if not args.repo and not args.tags_file:
            raise SelectError("give --repo (read the registry's tags) or --tags-file")
        if (args.gpu_sm is None) != (args.driver is None):
            raise SelectError("give both --gpu-sm and --driver, or neither (then nvidia-smi is asked)")
        sm, driver = (args.gpu_sm, args.driver) if args.gpu_sm else read_gpu()
        if not re.fullmatch(r"\d+\.\d+", sm) or not re.fullmatch(r"\d+(\.\d+)*", driver):
            raise SelectError(f"bad GPU inputs: SM {sm!r} (want e.g. 9.0), driver {driver!r} (want e.g. 570.86)")
        if args.tags_file:
            try:
                data = json.loads(args.tags_file.read_text())
            except (OSError, ValueError) as error:
                raise SelectError(f"{args.tags_file}: {error}") from None
            candidates = candidates_from_json(data, str(args.tags_file))
        else:
            candidates = candidates_from_tags(registry_tags(args.repo))
    except SelectError as error:
        print(f"probe select: error: {error}", file=sys.stderr)
        return 2
    decision = choose(candidates, sm, driver, args.platform or host_platform())
    repo = (args.repo.rstrip("/") + ":") if args.repo else ""
    if args.json:
        body = {"sm": sm, "driver": driver, "platform": args.platform or host_platform(), "reason": decision.reason}
        if isinstance(decision, Choice):
            body.update(image=repo + decision.candidate.best_tag, target=decision.candidate.target_id)
        print(json.dumps(body, indent=2))
    elif isinstance(decision, Choice):
        print(repo + decision.candidate.best_tag)
        if not args.quiet:
            print(f"  reason: {decision.reason}")
    else:
        print(f"probe select: refused: {decision.reason}", file=sys.stderr)
    return 0 if isinstance(decision, Choice) else 1


if __name__ == "__main__":
    sys.exit(main())
