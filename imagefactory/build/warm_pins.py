"""Prove the GPU-less Triton warm-up for every triton the matrix pins: `nox -s warm-pins`.

Per pinned triton (with the newest torch of the matrix that pins it): a scratch venv under
.build/warm-pins/ gets that torch and triton from PyPI (torch's full CUDA wheel set: a PyPI CUDA torch does
not import without it), then `python -m probe warm` compiles the project kernels and host modules for an
SM with no GPU, and the replay (`probe.warm.verify_warm_cache`, what the image's gate runs) must find every
kernel and module in the cache and write nothing. The outcome of every pin is recorded in
docs/warm-pins.json and rendered as the table in docs/warm-pins.md.

The venvs are large (2.5-5 GB each): each is removed after its run unless --keep. `--shared-torch 2.5.1`
installs that torch once and each triton beside it (`--no-deps`): triton's cache key holds triton's own
files, the kernel sources and the SM, never torch (torch only makes the CPU tensors), so the proof of the
warm-up is the same at a fraction of the downloads; the record says which torch each row ran with.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from imagefactory.errors import UsageError
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.model import Matrix
from imagefactory.plan.render import REPO_ROOT
from imagefactory.run import echo, run

VENVS = REPO_ROOT / ".build" / "warm-pins"
RECORD = REPO_ROOT / "docs" / "warm-pins.json"
TABLE = REPO_ROOT / "docs" / "warm-pins.md"
SCHEMA = "imagefactory.warm-pins/1"
DEFAULT_SMS = "80,90"
REPLAY = """
import json, sys
from pathlib import Path
from probe.warm import verify_warm_cache
reports = [verify_warm_cache(int(sm), Path(sys.argv[1])) for sm in sys.argv[2].split(",")]
print(json.dumps([{"sm": r.sm, "error": r.error, "kernels": r.kernels, "modules": r.modules,
                   "new_files": r.new_files} for r in reports]))
"""


@dataclass(frozen=True)
class Pin:
    triton: str
    torch: str  # the newest torch in the matrix that pins this triton


@dataclass(frozen=True)
class PinResult:
    triton: str
    torch: str
    python: str
    sms: str
    warmed: bool  # every kernel compiled and every host module built, no error
    replayed: bool  # the replay found everything and wrote nothing
    kernels: int
    modules: int
    hits_reported: bool  # this triton reports cache hits (its compilation listener); else "nothing written" alone
    reason: str  # "" when both passed; else the first problem, one line
    torch_pinned: str = ""  # the matrix's torch for this triton when `torch` is a shared one ("" : the same)

    @property
    def passed(self) -> bool:
        return self.warmed and self.replayed


def pins(matrix: Matrix) -> list[Pin]:
    """One per distinct triton pin (CUDA triton: what the NVIDIA targets warm), oldest first."""
    newest: dict[str, str] = {}
    for torch in matrix.torches.values():
        if torch.triton not in newest or Version(torch.version) > Version(newest[torch.triton]):
            newest[torch.triton] = torch.version
    return [Pin(triton, newest[triton]) for triton in sorted(newest, key=Version)]


def first_problem(warm_doc: dict, replay: list[dict]) -> tuple[bool, bool, str]:
    """(warmed, replayed, reason) from `probe warm --json` and the replay's output (pure; unit-tested)."""
    reports = warm_doc.get("reports") or []
    warm_errors = [f"sm_{r.get('sm')}: {r['error']}" for r in reports if r.get("error")]
    warmed = bool(reports) and bool(warm_doc.get("ok")) and not warm_errors
    problems = []
    for r in replay:
        if r.get("error"):
            problems.append(f"sm_{r.get('sm')}: {r['error']}")
        misses = [k["name"] for k in r.get("kernels", []) if k.get("cache_hit") is False]
        built = [m["name"] for m in r.get("modules", []) if m.get("built")]
        if misses or built or r.get("new_files"):
            problems.append(f"sm_{r.get('sm')}: replay compiled {', '.join(misses + built) or 'nothing'} "
                            f"and wrote {len(r.get('new_files') or [])} file(s)")
    replayed = warmed and bool(replay) and not problems
    reason = "; ".join(warm_errors or problems)[:300] if not (warmed and replayed) else ""
    if not warmed and not reason:
        reason = "probe warm reported no SM"
    return warmed, replayed, reason


def prove(pin: Pin, sms: str, python: str, keep: bool, shared_torch: str | None = None) -> PinResult:
    torch = shared_torch or pin.torch
    venv = VENVS / (f"shared-torch-{shared_torch}" if shared_torch else f"triton-{pin.triton}")
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    no_cache = {"PIP_NO_CACHE_DIR": "1"}  # GBs of CUDA wheels: not into the shared pip cache
    version = run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture=True).stdout.strip()
    try:
        if not (venv / ".installed").exists():
            shutil.rmtree(venv, ignore_errors=True)
            run([python, "-m", "venv", str(venv)])
            run([*pip, f"torch=={torch}", f"triton=={pin.triton}"], env=no_cache)
            (venv / ".installed").write_text(f"torch=={torch}\n")
        if shared_torch:
            run([*pip, "--no-deps", "--force-reinstall", f"triton=={pin.triton}"], env=no_cache)
        env = {"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
        with tempfile.TemporaryDirectory(prefix="warm-pins-") as tmp:
            cache = Path(tmp) / "cache"
            warmed = run([str(py), "-m", "probe", "warm", "--sm", sms, "--cache-dir", str(cache), "--json"],
                         env=env, cwd=REPO_ROOT, capture=True, check=False)
            warm_doc = _json(warmed.stdout) or {}
            replay = run([str(py), "-c", REPLAY, str(cache), sms], env=env, cwd=REPO_ROOT, capture=True, check=False)
            replay_doc = _json(replay.stdout) or []
        ok_warm, ok_replay, reason = first_problem(warm_doc, replay_doc)
        if not warm_doc:
            reason = f"probe warm gave no report: {(warmed.tail or ('no output',))[-1]}"
        reports = warm_doc.get("reports") or []
        return PinResult(pin.triton, torch, version, sms, ok_warm, ok_replay,
                         kernels=sum(len(r.get("kernels", [])) for r in reports),
                         modules=sum(len(r.get("modules", [])) for r in reports),
                         hits_reported=any(k.get("cache_hit") is not None for r in replay_doc for k in r.get("kernels", [])),
                         reason=reason, torch_pinned=pin.torch if torch != pin.torch else "")
    finally:
        if not keep and not shared_torch:
            shutil.rmtree(venv, ignore_errors=True)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def render_table(doc: dict) -> str:
    lines = [
        "# Triton warm-up per pinned triton",
        "",
        "Generated by `nox -s warm-pins` (`python -m imagefactory warm-pins`) from "
        "[warm-pins.json](warm-pins.json); do not edit by hand.",
        "",
        "Each triton that matrix.yaml pins, installed from PyPI with the newest torch that pins it in a scratch "
        "venv, warmed with `python -m probe warm` for the SMs below with no GPU (`CUDA_VISIBLE_DEVICES=`), then "
        "replayed as the image's gate does (every kernel and host module found, nothing written). "
        "Where \"torch used\" differs from the pinned one, the run used `--shared-torch`: one torch beside each triton "
        "(triton's cache key holds no torch file; torch only makes the CPU tensors). "
        "tritons older than 3.4 have no compilation listener: their replay is judged by \"nothing compiled, "
        "nothing written\" alone.",
        "",
        f"Machine: {doc.get('machine', '?')}; date: {doc.get('date', '?')}.",
        "",
        "| triton | torch pinned | torch used | python | SMs | warm | replay | kernels | host modules | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc.get("results", []):
        note = r["reason"] or ("cache hits reported" if r["hits_reported"] else "no listener: nothing written")
        pinned = r.get("torch_pinned") or r["torch"]
        lines.append(f"| {r['triton']} | {pinned} | {r['torch']} | {r['python']} | {r['sms']} | {'pass' if r['warmed'] else 'FAIL'} "
                     f"| {'pass' if r['replayed'] else 'FAIL'} | {r['kernels']} | {r['modules']} | {note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def prove_pins(matrix_path: str | Path, tritons: list[str] | None, sms: str, python: str, keep: bool,
               shared_torch: str | None) -> int:
    """`imagefactory warm-pins`: warm + replay every pinned triton (or those named); 0 when all passed."""
    wanted = pins(load_matrix(Path(matrix_path)))
    if tritons:
        unknown = sorted(set(tritons) - {p.triton for p in wanted})
        if unknown:
            raise UsageError(f"--triton {unknown[0]}: not pinned in {matrix_path} "
                             f"(pins: {', '.join(p.triton for p in wanted)})")
        wanted = [p for p in wanted if p.triton in tritons]
    previous = _json(RECORD.read_text()) if RECORD.exists() else None
    kept = {r["triton"]: r for r in (previous or {}).get("results", [])} if isinstance(previous, dict) else {}
    results = []
    for pin in wanted:
        echo(f"warm-pins: triton {pin.triton} (torch {pin.torch}), SMs {sms}")
        result = prove(pin, sms, python, keep, shared_torch)
        echo(f"warm-pins: triton {pin.triton}: {'passed' if result.passed else 'FAILED: ' + result.reason}")
        results.append(result)
        kept[pin.triton] = asdict(result)
    doc = {"schema": SCHEMA, "machine": f"{platform.machine()} Linux build host, {os.cpu_count()} cores, no GPU",
           "date": _dt.date.today().isoformat(),
           "results": [kept[t] for t in sorted(kept, key=Version)]}
    RECORD.write_text(json.dumps(doc, indent=2) + "\n")
    TABLE.write_text(render_table(doc))
    echo(f"warm-pins: wrote {RECORD.relative_to(REPO_ROOT)} and {TABLE.relative_to(REPO_ROOT)}")
    return 0 if all(r.passed for r in results) else 1
