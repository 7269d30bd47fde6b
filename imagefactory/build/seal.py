"""The gate's seal: the labels a passing gate writes on a child of the image it tested, and the identity
labels that say which target an image is for. The gate (imagefactory.build.gate) writes the seal; push
(imagefactory.publish.push.verify_seal) trusts an image only through it. docs/release.md tells the story.
"""

from __future__ import annotations

import json

from imagefactory.build.docker import IMAGE_ID  # noqa: F401 - a sealed or candidate image is named by its full ID
from imagefactory.plan.model import Target

GATE_LABEL = "io.imagefactory.gate"  # "passed": written by the gate on the sealed child only
GATE_IMAGE_LABEL = "io.imagefactory.gate.image"  # the candidate image ID the gate tested
GATE_TARGET_LABEL = "io.imagefactory.gate.target"
GATE_MODE_LABEL = "io.imagefactory.gate.mode"  # gpu | cpu
GATE_REPORT_LABEL = "io.imagefactory.gate.report"  # the gate's result, compact JSON
# The labels a build writes that say what an image is for (imagefactory.plan.expand); the gate and push
# compare them with the target.
IDENTITY_LABELS = ("io.imagefactory.target", "io.imagefactory.sm", "io.imagefactory.toolkit", "io.imagefactory.torch")
MAX_REPORT_LABEL = 32 * 1024


def identity_problems(target: Target, labels: dict[str, str] | None) -> list[str]:
    """How an image's identity labels differ from the target's (empty: it is this target's image)."""
    labels = labels or {}
    return [f"{key}={labels.get(key, '(none)')!r}, want {target.labels[key]!r}"
            for key in IDENTITY_LABELS if labels.get(key) != target.labels.get(key)]


def seal_labels(target: Target, candidate_id: str, mode: str, report: dict[str, object]) -> dict[str, str]:
    """The labels the gate writes on the sealed child of a candidate that passed."""
    compact = json.dumps(report, separators=(",", ":"), sort_keys=True)
    if len(compact) > MAX_REPORT_LABEL:  # the whole report stays in reports/<target>/gate.json
        compact = json.dumps({key: report.get(key) for key in ("target", "image_id", "mode", "result", "finished")},
                             separators=(",", ":"), sort_keys=True)
    return {GATE_LABEL: "passed", GATE_IMAGE_LABEL: candidate_id, GATE_TARGET_LABEL: target.id,
            GATE_MODE_LABEL: mode, GATE_REPORT_LABEL: compact}
