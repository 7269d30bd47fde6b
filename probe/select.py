"""Pick the image to pull on a GPU machine: `python -m probe select --repo REPO`.

Standard library only: this runs on a freshly rented pod before any image is pulled
(copy probe/ over, or `pip install` the repository, then `python3 -m probe select`; `python3 -I probe/select.py`
works too: -I keeps this file from shadowing the standard library's `select`). It reads the tag grammar
from probe/tags.py and matrix facts from probe/matrix_facts.json.

Inputs: the GPU's compute capability and the driver version (from nvidia-smi, or given as
`--gpu-sm 9.0 --driver 570.86`), and the candidate images: the registry's tag list
(`GET /v2/<name>/tags/list`) or a `--tags-file` (docs/supported-tags.json, or the output of
`python -m imagefactory targets --format json`).

Rules, in order: the image must hold native code for the GPU's SM (bitsandbytes and the warm Triton
cache are built per SM, SASS only); the driver must meet the image's CUDA floor; among those left,
the newest torch wins, then a CUDA the driver supports natively, then the newest CUDA.

Exit codes: 0 a tag was chosen, 1 refused (nothing fits), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

if __package__:
    from probe import tags as grammar
else:  # run as a file (`python3 -I probe/select.py`): import the grammar from beside it
    sys.path.append(str(Path(__file__).resolve().parent))
    import tags as grammar  # type: ignore[no-redef]

# Facts of matrix.yaml this stdlib-only code cannot read on a pod, generated next to it by
# `imagefactory render` (drift-checked by `render --check`): never edit matrix_facts.json by hand.
MATRIX_FACTS_FILE = Path(__file__).with_name("matrix_facts.json")
_FACTS = json.loads(MATRIX_FACTS_FILE.read_text(encoding="utf-8"))

# Family name → the SMs its images are built for; used only when the candidates come from a bare
# registry tag list (a tags file states the SMs itself).
ARCH_SMS: dict[str, tuple[str, ...]] = {arch: tuple(sms) for arch, sms in _FACTS["arch_sms"].items()}

# Driver floor per CUDA release (matrix.yaml's `toolkits.*.driver_floor`), newest first: used when only
# a tag name or a CUDA version is known.
CUDA_DRIVER_FLOOR: tuple[tuple[str, int], ...] = tuple(
    sorted(((cuda, int(floor)) for cuda, floor in _FACTS["cuda_driver_floor"].items()),
           key=lambda item: tuple(int(part) for part in item[0].split(".")), reverse=True))

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


class SelectError(Exception):
    """Bad input (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors in one line, exit 2 (like probe/cli.py's; this file must also run alone)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def _release_of(immutable: str) -> str:
    parsed = grammar.parse_immutable_tag(immutable)
    return parsed.release if parsed else ""


def _torch_of(immutable: str) -> str:
    parsed = grammar.parse_immutable_tag(immutable)
    return parsed.torch if parsed else "0"


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

    @property
    def best_tag(self) -> str:
        """The newest immutable tag (reproducible), else the target's floating tag."""
        if self.immutable_tags:
            return max(self.immutable_tags, key=lambda tag: version_key(_release_of(tag)))
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
        parsed = grammar.parse_immutable_tag(tag)
        if parsed is not None:
            immutable.setdefault(parsed.target_id, []).append(tag)
            continue
        base = grammar.floating_target(tag)
        if base is not None:
            floating.setdefault(base, []).append(tag)
    result = []
    for target_id in sorted(set(floating) | set(immutable)):
        parsed_id = grammar.parse_target_id(target_id)
        assert parsed_id is not None
        arch, toolkit = parsed_id.arch, parsed_id.toolkit
        sms = ARCH_SMS.get(arch, ())
        cuda = cuda_of_toolkit(toolkit)
        torches = [_torch_of(tag) for tag in immutable.get(target_id, [])]
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
        value: Any = entry
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
        id_parts = grammar.parse_target_id(str(target_id))
        kind = _pick(entry, "toolkit.kind", "toolkit_kind") or (
            "cuda" if id_parts and cuda_of_toolkit(id_parts.toolkit) else "rocm"
        )
        cuda = str(_pick(entry, "toolkit.version", "cuda", "toolkit_version") or "") if kind == "cuda" else None
        floor = _pick(entry, "toolkit.driver_floor", "driver_floor", "min_driver")
        tags = [str(tag) for tag in (_pick(entry, "tags") or ())]
        result.append(
            Candidate(
                target_id=str(target_id),
                vendor=str(_pick(entry, "arch.vendor", "vendor") or ("nvidia" if kind == "cuda" else "amd")),
                sms=sms,
                cuda=cuda or None,
                driver_floor=int(version_key(str(floor))[0]) if floor else (driver_floor(cuda) if cuda else None),
                torch=_pick(entry, "torch.version", "torch"),
                floating_tags=tuple(tag for tag in tags if not grammar.is_immutable(tag)),
                immutable_tags=tuple(tag for tag in tags if grammar.is_immutable(tag)),
            )
        )
    return result


def choose(candidates: list[Candidate], sm: str, driver: str) -> Choice | Refusal:
    """The whole decision, pure: (GPU SM, driver version) → the candidate to pull, or why none fits."""
    if not candidates:
        return Refusal("no images to choose from (empty tag list)")
    for_arch = [c for c in candidates if c.vendor == "nvidia" and sm in c.sms]
    if not for_arch:
        built = sorted({s for c in candidates for s in c.sms}, key=version_key)
        return Refusal(f"no image holds native code for SM {sm} (images exist for SM {', '.join(built) or 'none'})")
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
        return (version_key(c.torch or "0"), is_native, version_key(c.cuda or "0"), -len(c.target_id))

    best = max(fits, key=rank)
    parts = [f"arch match: SM {sm} is in {best.target_id}'s SMs ({', '.join(best.sms)})"]
    parts.append(f"driver floor: {driver} ≥ {best.driver_floor} for CUDA {best.cuda}" + (f" (driver runs up to CUDA {native})" if native else ""))
    others = [c.target_id for c in fits if c is not best]
    parts.append(f"newest torch: {best.torch or 'unknown'}" + (f" (also fits: {', '.join(others)})" if others else ""))
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
    decision = choose(candidates, sm, driver)
    repo = (args.repo.rstrip("/") + ":") if args.repo else ""
    if args.json:
        body = {"sm": sm, "driver": driver, "reason": decision.reason}
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
