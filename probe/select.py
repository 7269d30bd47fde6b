"""Pick the image to pull on a GPU machine: `python -m probe select --repo REPO`.

Standard library only: this runs on a freshly rented pod before any image is pulled
(copy probe/ over, or `pip install` the repository, then `python3 -m probe select`; `python3 -I probe/select.py`
works too: -I keeps this file from shadowing the standard library's `select`). It reads the tag grammar
from probe/tags.py and matrix facts from probe/matrix_facts.json.

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
import http.client
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
    gated: str | None = None  # where its gate passed ("CPU gate, x86_64 build host, 2026-12-01"); "" not gated; None unknown
    gated_platforms: tuple[str, ...] | None = None  # whose images passed (a tags file's gated.platforms); None: not stated
    gated_by_platform: tuple[tuple[str, str], ...] = ()  # (platform, where its image passed) from gated.by_platform
    platforms: tuple[str, ...] | None = None  # "linux/arm64", ...; None: not stated (a bare tag list)

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


# What each field of a tags-file record must look like (ASCII digits only: `\d` also matches `٩`).
SM_VALUE = re.compile(r"[1-9][0-9]?\.[0-9]", re.ASCII)  # 9.0, 10.0, 12.0; not 09.0 or 9.00
DRIVER_VALUE = re.compile(r"[1-9][0-9]{0,3}(?:\.[0-9]{1,4}){0,3}", re.ASCII)  # 570.86, 580.65.06
VERSION_VALUE = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,4}){1,3}", re.ASCII)  # CUDA 13.0, torch 2.14.1
FLOOR_VALUE = re.compile(r"[1-9][0-9]{1,3}", re.ASCII)  # a driver branch: 580
ID_VALUE = grammar.TARGET_ID  # hopper-cu130, hopper-cu128-torch2.7 (the grammar's, ASCII-checked in _text)
TAG_VALUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", re.ASCII)  # an OCI tag (releases may hold capitals)
PLATFORM_VALUE = re.compile(r"linux/(?:amd64|arm64)", re.ASCII)  # the OCI platforms images are built for
EXAMPLES = {"sm": "9.0", "driver floor": "580", "torch": "2.14.1", "CUDA version": "13.0"}
MAX_TAGS_FILE = 16 * 1024 * 1024  # the committed file is ~30 KB; more is not a tags file


def _text(value: object, pattern: re.Pattern[str], what: str, where: str) -> str:
    """A field that must be a string of a given shape: numbers (2.14 loses its trailing zeros) and lists
    are refused rather than converted."""
    if not isinstance(value, str) or not value.isascii() or not pattern.fullmatch(value):
        raise SelectError(f"{where}: {what} {json.dumps(value)[:60]} is not valid (want a string like {EXAMPLES.get(what, 'hopper-cu130')!r})")
    return value


def _belongs(tag: str, target_id: str) -> bool:
    """A tag of this target: `<id>`, `<id>-latest` or `<id>-torch<v>-<release>` (the grammar in probe/tags.py)."""
    if tag in grammar.floating_tags(target_id):
        return True
    parsed = grammar.parse_immutable_tag(tag)
    return parsed is not None and parsed.target_id == target_id


def candidate_from_record(entry: object, where: str) -> Candidate:
    """One record of a tags file, every field checked: a bad record is an error, never a silent pick."""
    if not isinstance(entry, dict):
        raise SelectError(f"{where}: not an object")
    target_id = _text(_pick(entry, "id", "target"), ID_VALUE, "id", where)
    where = f"{where} ({target_id})"
    sms_value = _pick(entry, "sms", "sm")
    if sms_value is not None and not isinstance(sms_value, list):
        raise SelectError(f"{where}: 'sms' must be a list of strings like [\"9.0\"], got {json.dumps(sms_value)[:60]}")
    sms = tuple(_text(sm, SM_VALUE, "sm", where) for sm in (sms_value or ()))
    id_parts = grammar.parse_target_id(target_id)
    kind = _pick(entry, "toolkit.kind", "toolkit_kind") or (
        "cuda" if id_parts and cuda_of_toolkit(id_parts.toolkit) else "rocm")
    if kind not in ("cuda", "rocm"):
        raise SelectError(f"{where}: toolkit kind {json.dumps(kind)[:40]} is not cuda or rocm")
    vendor = _pick(entry, "arch.vendor", "vendor") or ("nvidia" if kind == "cuda" else "amd")
    if vendor not in ("nvidia", "amd"):
        raise SelectError(f"{where}: vendor {json.dumps(vendor)[:40]} is not nvidia or amd")
    cuda = None
    if kind == "cuda":
        version = _pick(entry, "toolkit.version", "cuda", "toolkit_version")
        if version is None:
            raise SelectError(f"{where}: a CUDA target without a CUDA version (toolkit.version): its driver floor is unknown")
        cuda = _text(version, VERSION_VALUE, "CUDA version", where)
    floor = _pick(entry, "toolkit.driver_floor", "driver_floor", "min_driver")
    if isinstance(floor, int) and not isinstance(floor, bool):
        floor = str(floor)
    floor_value = int(_text(floor, FLOOR_VALUE, "driver floor", where)) if floor is not None else (driver_floor(cuda) if cuda else None)
    torch = _pick(entry, "torch.version", "torch")
    torch = _text(torch, VERSION_VALUE, "torch", where) if torch is not None else None
    tags_value = _pick(entry, "tags")
    if tags_value is not None and not isinstance(tags_value, list):
        raise SelectError(f"{where}: 'tags' must be a list of strings, got {json.dumps(tags_value)[:60]}")
    tags = [_text(tag, TAG_VALUE, "tag", where) for tag in (tags_value or ())]
    foreign = [tag for tag in tags if not _belongs(tag, target_id)]
    if foreign:
        raise SelectError(f"{where}: tag {foreign[0]!r} is not a tag of {target_id} (want {target_id}, "
                          f"{target_id}-latest or {target_id}-torch<version>-<release>)")
    platforms_value = entry.get("platforms")
    if platforms_value is not None and not isinstance(platforms_value, list):
        raise SelectError(f"{where}: 'platforms' must be a list like [\"linux/amd64\"], got {json.dumps(platforms_value)[:60]}")
    platforms = (tuple(_text(p, PLATFORM_VALUE, "platform", where) for p in platforms_value)
                 if platforms_value is not None else None)
    return Candidate(
        target_id=target_id,
        vendor=vendor,
        sms=sms,
        cuda=cuda,
        driver_floor=floor_value,
        torch=torch,
        floating_tags=tuple(tag for tag in tags if not grammar.is_immutable(tag)),
        immutable_tags=tuple(tag for tag in tags if grammar.is_immutable(tag)),
        gated=_gated(entry, where) if "gated" in entry else None,
        gated_platforms=_gated_platforms(entry, where),
        gated_by_platform=_gated_by_platform(entry, where),
        platforms=platforms,
    )


def candidates_from_json(data: object, source: str) -> list[Candidate]:
    entries = data.get("targets") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise SelectError(f"{source}: expected a list of targets (or an object with 'targets')")
    return [candidate_from_record(entry, f"{source}: target #{index}") for index, entry in enumerate(entries)]


def read_tags_file(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TAGS_FILE + 1)
    except OSError as error:
        raise SelectError(f"{path}: {error.strerror or error}") from None
    if len(data) > MAX_TAGS_FILE:
        raise SelectError(f"{path}: larger than {MAX_TAGS_FILE // 2**20} MiB; not a tags file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SelectError(f"{path}: not UTF-8 text") from None


def load_json(text: str, source: str) -> object:
    """json.loads that answers hostile input with a SelectError (not JSON, or nested too deep: RecursionError)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise SelectError(f"{source}: not JSON ({str(error).splitlines()[0][:120]})") from None


def _gated(entry: dict, where: str) -> str:
    """`gated` of a supported-tags entry: null (not gated) or {mode, where, date}, as one line."""
    value = entry["gated"]
    if value is None:
        return ""
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in ("mode", "where", "date")):
        raise SelectError(f"{where}: 'gated' must be null or {{mode, where, date}}")
    text = f"{value['mode'].upper()} gate, {value['where']}, {value['date']}"
    return re.sub(r"[^\w ,.:;()/+=-]", "?", text)[:160]  # printed to a terminal: no control characters


def _gated_by_platform(entry: dict, where: str) -> tuple[tuple[str, str], ...]:
    """`gated.by_platform` of a supported-tags entry: each platform's gate as one line (older files: none)."""
    value = entry.get("gated")
    if not isinstance(value, dict) or "by_platform" not in value:
        return ()
    listed = value["by_platform"]
    if not isinstance(listed, dict) or not all(isinstance(g, dict) for g in listed.values()):
        raise SelectError(f"{where}: 'gated.by_platform' must map a platform to {{mode, where, date}}")
    return tuple((_text(p, PLATFORM_VALUE, "gated platform", where), _gated({"gated": g}, f"{where}: gated.by_platform"))
                 for p, g in listed.items())


def _gated_platforms(entry: dict, where: str) -> tuple[str, ...] | None:
    """`gated.platforms` of a supported-tags entry: whose images passed their gate (None: not stated: all)."""
    value = entry.get("gated")
    if not isinstance(value, dict) or "platforms" not in value:
        return None
    listed = value["platforms"]
    if not isinstance(listed, list):
        raise SelectError(f"{where}: 'gated.platforms' must be a list like [\"linux/amd64\"]")
    return tuple(_text(p, PLATFORM_VALUE, "gated platform", where) for p in listed)


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

    def gated_here(c: Candidate) -> bool:  # its image for this platform passed a gate
        return bool(c.gated) and (c.gated_platforms is None or platform_ in c.gated_platforms)

    def rank(c: Candidate) -> tuple:
        is_native = bool(native and c.cuda and version_key(c.cuda) <= version_key(native))
        return (gated_here(c), version_key(c.torch or "0"), is_native, version_key(c.cuda or "0"), -len(c.target_id))

    best = max(fits, key=rank)
    parts = [f"arch match: SM {sm} is in {best.target_id}'s SMs ({', '.join(best.sms)})"]
    if best.platforms is not None:
        parts.append(f"platform: {platform_}")
    parts.append(f"driver floor: {driver} ≥ {best.driver_floor} for CUDA {best.cuda}" + (f" (driver runs up to CUDA {native})" if native else ""))
    others = [c.target_id for c in fits if c is not best]
    parts.append(f"newest torch: {best.torch or 'unknown'}" + (f" (also fits: {', '.join(others)})" if others else ""))
    if gated_here(best):
        parts.append(f"gated: {dict(best.gated_by_platform).get(platform_, best.gated)}")
    elif best.gated:
        parts.append(f"NOT GATED for {platform_}: only its {', '.join(best.gated_platforms or ())} image passed a gate ({best.gated})")
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
    parts = [part.strip() for part in done.stdout.splitlines()[0].split(",")]
    if len(parts) != 2:
        raise SelectError(f"nvidia-smi answered {done.stdout.splitlines()[0][:60]!r}; pass --gpu-sm and --driver")
    return parts[0], parts[1]


REPO_VALUE = re.compile(r"(?:(?P<host>[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]{1,5})?)/)?"
                        r"(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)", re.ASCII)
MAX_ANSWER = 8 * 1024 * 1024  # one page of a tag list; a registry sending more is not answering the question
MAX_PAGES = 1000


def split_repo(repo: str) -> tuple[str, str]:
    """`host[:port]/name` (or a Docker Hub name) → (host, name); SelectError for anything else."""
    match = REPO_VALUE.fullmatch(repo.strip().rstrip("/")) if repo.isascii() else None
    if match is None:
        raise SelectError(f"--repo {repo!r}: want host[:port]/name, e.g. ghcr.io/org/imagefactory")
    host, name = match.group("host"), match.group("name")
    if host is None or ("." not in host and ":" not in host and host != "localhost"):
        return "registry-1.docker.io", repo.strip().rstrip("/") if "/" in repo else f"library/{repo.strip()}"
    return host, name


def _read_json(response, what: str) -> object:
    body = response.read(MAX_ANSWER + 1)
    if len(body) > MAX_ANSWER:
        raise SelectError(f"{what}: answer larger than {MAX_ANSWER // 2**20} MiB")
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and len(body) != int(length):
        raise SelectError(f"{what}: broken HTTP answer (cut short at {len(body)} of {length} bytes)")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        start = body[:40].decode("utf-8", "replace").strip().splitlines()
        raise SelectError(f"{what}: the answer is not JSON (starts {start[0][:40] if start else 'empty'!r})") from None


def registry_tags(repo: str, timeout: float = 20.0, page: int = 1000) -> list[str]:
    """Tag list of `host[:port]/name` through the registry HTTP API: pages followed through the
    `Link: <…>; rel="next"` header, an anonymous bearer token fetched when the registry asks. Any answer
    that is not a tag list (HTML, a JSON list, a cut-off body, not HTTP at all) is a SelectError."""
    host, name = split_repo(repo)
    base = f"{'http' if host.split(':')[0] in ('127.0.0.1', 'localhost') else 'https'}://{host}"
    url: str | None = f"{base}/v2/{name}/tags/list?n={page}"
    what = f"registry {host}: tags of {name}"
    headers: dict[str, str] = {}
    tags: list[str] = []
    pages = 0
    while url:
        pages += 1
        if pages > MAX_PAGES:
            raise SelectError(f"{what}: more than {MAX_PAGES} pages (a Link loop?)")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
                body = _read_json(response, what)
                listed = body.get("tags") if isinstance(body, dict) else None
                if not isinstance(body, dict) or not isinstance(listed or [], list) or not all(isinstance(t, str) for t in listed or []):
                    raise SelectError(f"{what}: the answer is not a tag list ({{\"tags\": [...]}})")
                tags += listed or []
                following = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', response.headers.get("Link", ""))
                url = urllib.parse.urljoin(base, following.group(1)) if following else None
                if url and not url.startswith(base + "/"):
                    raise SelectError(f"{what}: the next page points off the registry ({url[:80]})")
        except urllib.error.HTTPError as error:
            challenge = error.headers.get("WWW-Authenticate", "") if error.headers else ""
            if error.code != 401 or headers or not challenge.startswith("Bearer "):
                raise SelectError(f"{what}: HTTP {error.code}") from None
            fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            query = urllib.parse.urlencode({"service": fields.get("service", ""), "scope": fields.get("scope", f"repository:{name}:pull")})
            try:
                with urllib.request.urlopen(f"{fields.get('realm', '')}?{query}", timeout=timeout) as response:
                    token = _read_json(response, f"registry {host}: token")
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as token_error:
                raise SelectError(f"registry {host}: anonymous token refused ({token_error})") from None
            value = (token.get("token") or token.get("access_token")) if isinstance(token, dict) else None
            if not isinstance(value, str) or not value.isprintable():
                raise SelectError(f"registry {host}: the token answer holds no token") from None
            headers = {"Authorization": f"Bearer {value}"}
        except (urllib.error.URLError, OSError) as error:
            raise SelectError(f"registry {host}: cannot reach it ({getattr(error, 'reason', error)})") from None
        except http.client.HTTPException as error:  # not HTTP, or a body cut short (IncompleteRead)
            raise SelectError(f"{what}: broken HTTP answer ({type(error).__name__})") from None
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
        sm, driver = (args.gpu_sm, args.driver) if args.gpu_sm is not None else read_gpu()
        if not SM_VALUE.fullmatch(sm) or not DRIVER_VALUE.fullmatch(driver):
            raise SelectError(f"bad GPU inputs: SM {sm!r} (want e.g. 9.0), driver {driver!r} (want e.g. 570.86)")
        if args.repo:
            split_repo(args.repo)
        if args.tags_file:
            candidates = candidates_from_json(load_json(read_tags_file(args.tags_file), str(args.tags_file)), str(args.tags_file))
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
