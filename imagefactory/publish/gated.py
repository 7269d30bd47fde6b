"""The committed record of gated builds: docs/gated.json, "supported means gated".

`python -m imagefactory record-gate TARGET --where TEXT [--platform P]` reads the reports a passing gate left
(reports/<target>[-arm64]/gate.json) and records the target in docs/gated.json: which torch, gate mode
(cpu/gpu), which platform's image (linux/arm64: gated under emulation), where and when. `python -m imagefactory docs` marks those targets in
docs/supported-tags.{md,json}, and `python -m probe select --tags-file docs/supported-tags.json` prefers
them. The file is read as hostile input: every entry is checked, a bad one is an error naming it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from imagefactory.errors import UsageError
from imagefactory.plan.model import Target
from imagefactory.plan.platforms import HOST_PLATFORM, PLATFORMS, unit_id

GATED = Path("docs/gated.json")
SCHEMA = "imagefactory.gated/1"
TARGET_RE = re.compile(r"^[a-z][a-z0-9]*-(cu\d{3}|rocm\d+\.\d+)(-[a-z0-9.]+){0,3}$")
VERSION_RE = re.compile(r"^\d+(\.\d+){1,3}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
IMAGE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
WHERE_RE = re.compile(r"^[A-Za-z0-9 ,.:;()/+_=-]{1,120}$")  # plain words: it lands in a Markdown table


@dataclass(frozen=True)
class GatedBuild:
    target: str
    torch: str
    mode: str  # "cpu" | "gpu": the gate mode it passed in
    where: str  # the machine, in words ("x86_64 build host, 2 cores, no GPU")
    date: str  # YYYY-MM-DD the gate finished
    image_id: str
    platform: str = HOST_PLATFORM  # the image's platform (an older record without the key: the host's)

    def summary(self) -> str:
        return f"{self.mode.upper()} gate, {self.where}, {self.date}"

    @property
    def key(self) -> str:
        """What a record is filed under: the target's id, `-arm64` added for an arm64 image."""
        return unit_id(self.target, self.platform)


def _entry(raw: object, where: str) -> GatedBuild:
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected an object")
    checks = {"target": TARGET_RE, "torch": VERSION_RE, "mode": re.compile(r"^(cpu|gpu)$"), "where": WHERE_RE,
              "date": DATE_RE, "image_id": IMAGE_ID_RE}
    unknown = sorted(set(raw) - set(checks) - {"platform"})
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}")
    platform = raw.get("platform", HOST_PLATFORM)
    if platform not in PLATFORMS:
        raise UsageError(f"{where}: platform: want one of {', '.join(PLATFORMS)} ({str(platform)[:60]!r})")
    for key, pattern in checks.items():
        value = raw.get(key)
        if not isinstance(value, str) or not pattern.match(value):
            raise UsageError(f"{where}: {key}: missing or malformed ({str(value)[:60]!r})")
    return GatedBuild(**{key: raw[key] for key in checks}, platform=platform)


def load(path: Path = GATED) -> dict[str, GatedBuild]:
    """`hopper-cu130` / `hopper-cu130-arm64` (GatedBuild.key) -> its gated build; an absent file is an empty record."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"{path}: cannot read: {str(error).splitlines()[0]}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("gated"), list):
        raise UsageError(f"{path}: expected {{\"schema\": \"{SCHEMA}\", \"gated\": [...]}}")
    out: dict[str, GatedBuild] = {}
    for index, raw in enumerate(doc["gated"]):
        entry = _entry(raw, f"{path}: gated[{index}]")
        if entry.key in out:
            raise UsageError(f"{path}: gated[{index}]: {entry.target} ({entry.platform}) is recorded twice")
        out[entry.key] = entry
    return out


def dumps(record: dict[str, GatedBuild]) -> str:
    return json.dumps({"schema": SCHEMA, "gated": [asdict(record[t]) for t in sorted(record)]}, indent=2) + "\n"


def from_reports(target_id: str, torch: str, reports_dir: Path, where: str, platform: str = HOST_PLATFORM) -> GatedBuild:
    """The entry for a target whose last gate passed, from reports/<target>[-arm64]/gate.json."""
    gate_file = reports_dir / unit_id(target_id, platform) / "gate.json"
    try:
        gate = json.loads(gate_file.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{gate_file}: no gate report: build and gate {target_id} first") from None
    if not isinstance(gate, dict) or gate.get("result") != "passed" or gate.get("target") != target_id:
        raise UsageError(f"{gate_file}: the last gate of {target_id} did not pass: nothing to record")
    if gate.get("platform", HOST_PLATFORM) != platform:
        raise UsageError(f"{gate_file}: a gate of the {str(gate.get('platform'))[:20]} image, not {platform}")
    finished = str(gate.get("finished", ""))[:10]
    return _entry({"target": target_id, "torch": torch, "mode": gate.get("mode"), "where": where,
                   "date": finished, "image_id": gate.get("image_id"), "platform": platform}, str(gate_file))


def record_gate(target: Target, where: str, reports_dir: Path, file: Path = GATED, platform: str | None = None) -> str:
    """`imagefactory record-gate`: add the target whose last gate passed to docs/gated.json; the line to print."""
    if not WHERE_RE.match(where):
        raise UsageError(f"--where {where[:60]!r}: letters, digits, spaces and ,.:;()/+_=- only (at most 120)")
    platform = target.build_platform(platform)
    record = load(file)
    entry = from_reports(target.id, target.torch.version, reports_dir, where, platform)
    record[entry.key] = entry
    temporary = file.with_name(file.name + ".tmp")
    temporary.write_text(dumps(record))
    temporary.replace(file)
    return f"{file}: {target.id} ({platform}): {entry.summary()}"
