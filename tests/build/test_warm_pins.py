"""The per-triton warm-up proof (`nox -s warm-pins`): which pins it proves and how it judges a run."""

from __future__ import annotations

import json

from imagefactory.build import warm_pins
from imagefactory.plan.render import REPO_ROOT


def test_one_pin_per_distinct_triton_with_the_newest_torch_pinning_it(matrix):
    pins = warm_pins.pins(matrix)
    tritons = [p.triton for p in pins]
    assert tritons == sorted({t.triton for t in matrix.torches.values()}, key=lambda v: tuple(map(int, v.split("."))))
    by_triton = {p.triton: p.torch for p in pins}
    assert by_triton["3.6.0"] == "2.11.0"  # 2.10.0 and 2.11.0 both pin 3.6.0
    assert by_triton["3.0.0"] == "2.4.1"


KERNEL = {"name": "rmsnorm_fwd", "cache_hit": False}
WARM_OK = {"ok": True, "reports": [{"sm": 80, "error": None, "kernels": [KERNEL], "modules": [{"name": "cuda_utils", "built": True}]}]}


def replay(**changes) -> list[dict]:
    entry = {"sm": 80, "error": None, "kernels": [{"name": "rmsnorm_fwd", "cache_hit": True}],
             "modules": [{"name": "cuda_utils", "built": False}], "new_files": []}
    return [entry | changes]


def test_a_clean_warm_and_replay_passes():
    assert warm_pins.first_problem(WARM_OK, replay()) == (True, True, "")


def test_a_warm_error_fails_with_its_message():
    doc = {"ok": False, "reports": [{"sm": 80, "error": "CalledProcessError: ld: cannot find -lcuda", "kernels": []}]}
    warmed, replayed, reason = warm_pins.first_problem(doc, replay())
    assert (warmed, replayed) == (False, False) and "cannot find -lcuda" in reason


def test_a_replay_that_compiles_or_writes_fails():
    for bad in (replay(kernels=[{"name": "swiglu_fwd", "cache_hit": False}]),
                replay(modules=[{"name": "cuda_utils", "built": True}]),
                replay(new_files=["abc/x.json"])):
        warmed, replayed, reason = warm_pins.first_problem(WARM_OK, bad)
        assert warmed and not replayed and "replay compiled" in reason


def test_a_triton_without_a_listener_is_judged_by_nothing_written():
    # cache_hit None: no compilation listener (triton < 3.4); nothing compiled or written still passes
    assert warm_pins.first_problem(WARM_OK, replay(kernels=[{"name": "k", "cache_hit": None}]))[1] is True


def test_no_replay_output_fails():
    assert warm_pins.first_problem(WARM_OK, [])[1] is False


def test_the_committed_record_matches_its_table_and_the_matrix(matrix):
    doc = json.loads((REPO_ROOT / "docs" / "warm-pins.json").read_text())
    assert doc["schema"] == warm_pins.SCHEMA
    assert (REPO_ROOT / "docs" / "warm-pins.md").read_text() == warm_pins.render_table(doc)
    assert {r["triton"] for r in doc["results"]} == {p.triton for p in warm_pins.pins(matrix)}
