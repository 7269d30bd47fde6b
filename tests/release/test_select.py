"""`probe select`: (GPU SM, driver) → the tag to pull, or a refusal; from tag lists and from a tags file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from probe.select import Choice, Refusal, candidates_from_json, candidates_from_tags, choose, main

REPO_ROOT = Path(__file__).resolve().parents[2]

# What a registry would list: floating + immutable tags for a handful of targets.
TAGS = [
    "volta-cu118", "volta-cu118-latest", "volta-cu118-torch2.7.1-20261101",
    "ampere-cu121", "ampere-cu121-latest", "ampere-cu121-torch2.5.1-20261101",
    "ampere-cu128", "ampere-cu128-latest", "ampere-cu128-torch2.9.1-20261101", "ampere-cu128-torch2.9.1-20261120",
    "hopper-cu121", "hopper-cu121-torch2.5.1-20261101",
    "hopper-cu128", "hopper-cu128-torch2.9.1-20261101",
    "hopper-cu130", "hopper-cu130-latest", "hopper-cu130-torch2.14.1-20261120",
    "blackwell-cu128", "blackwell-cu128-torch2.9.1-20261101",
    "cdna3-rocm6.2", "cdna3-rocm6.2-torch2.5.1-20261101",
    "unrelated", "latest", "sha256-abc.sig",
]

CASES = [
    # (sm, driver) → expected tag, or a fragment of the refusal
    (("9.0", "580.65.06"), "hopper-cu130-torch2.14.1-20261120"),  # newest torch wins
    (("9.0", "575.51"), "hopper-cu128-torch2.9.1-20261101"),  # 13.0 needs 580: newest that the driver allows
    (("9.0", "535.104"), "hopper-cu121-torch2.5.1-20261101"),  # 12.8 needs 570; 12.1 runs from 525
    (("9.0", "520.61"), "refused:driver 520.61 is too old"),  # 12.x needs 525; no 11.8 image for Hopper
    (("8.6", "570.86"), "ampere-cu128-torch2.9.1-20261120"),  # newest release of the newest torch
    (("8.6", "550.54"), "ampere-cu121-torch2.5.1-20261101"),
    (("8.0", "470.82"), "refused:lowest floor is 525"),
    (("7.0", "535.1"), "volta-cu118-torch2.7.1-20261101"),  # Volta only has CUDA 11.8
    (("7.0", "510.47"), "refused:driver 510.47 is too old"),
    (("10.0", "565.57"), "refused:too old"),  # Blackwell only has 12.8, which needs the 570 branch
    (("12.0", "570.86"), "blackwell-cu128-torch2.9.1-20261101"),
    (("7.5", "580.1"), "refused:no image holds native code for SM 7.5"),
    (("8.9", "580.1"), "refused:no image holds native code for SM 8.9"),
]


@pytest.mark.parametrize(("gpu", "expected"), CASES, ids=[f"sm{c[0][0]}-drv{c[0][1]}" for c in CASES])
def test_choice_table_from_registry_tags(gpu: tuple[str, str], expected: str) -> None:
    decision = choose(candidates_from_tags(TAGS), *gpu)
    if expected.startswith("refused:"):
        assert isinstance(decision, Refusal), decision
        assert expected.removeprefix("refused:") in decision.reason
    else:
        assert isinstance(decision, Choice), decision
        assert decision.candidate.best_tag == expected


def test_reason_names_arch_driver_and_torch() -> None:
    decision = choose(candidates_from_tags(TAGS), "9.0", "570.86")
    assert isinstance(decision, Choice)
    assert "arch match: SM 9.0" in decision.reason
    assert "570.86 ≥ 570" in decision.reason
    assert "newest torch: 2.9.1" in decision.reason
    assert "hopper-cu121" in decision.reason  # names what else would fit


def test_tag_parsing_ignores_foreign_tags_and_groups_by_target() -> None:
    by_id = {c.target_id: c for c in candidates_from_tags(TAGS)}
    assert set(by_id) == {"volta-cu118", "ampere-cu121", "ampere-cu128", "hopper-cu121", "hopper-cu128",
                          "hopper-cu130", "blackwell-cu128", "cdna3-rocm6.2"}
    assert by_id["hopper-cu130"].cuda == "13.0" and by_id["hopper-cu130"].driver_floor == 580
    assert by_id["blackwell-cu128"].driver_floor == 570 and by_id["hopper-cu121"].driver_floor == 525
    assert by_id["cdna3-rocm6.2"].vendor == "amd" and by_id["cdna3-rocm6.2"].cuda is None
    assert by_id["ampere-cu128"].floating_tags == ("ampere-cu128", "ampere-cu128-latest")


def test_suffixed_target_ids_from_matrix_extra_cells() -> None:
    tags = ["hopper-cu130", "hopper-cu130-latest", "hopper-cu130-torch2.14.1-2026.11.0",
            "hopper-cu130-nvidia", "hopper-cu130-nvidia-latest", "hopper-cu130-nvidia-torch2.14.1-2026.11.0",
            "hopper-cu128-torch2.7", "hopper-cu128-torch2.7-latest", "hopper-cu128-torch2.7-torch2.7.1-2026.11.0",
            "hopper-cu128-torch2.7-torch2.7.1-2026.9.0", "turing-cu126-fp16", "turing-cu126-fp16-latest"]
    by_id = {c.target_id: c for c in candidates_from_tags(tags)}
    assert set(by_id) == {"hopper-cu130", "hopper-cu130-nvidia", "hopper-cu128-torch2.7", "turing-cu126-fp16"}
    assert by_id["hopper-cu128-torch2.7"].torch == "2.7.1"
    assert by_id["hopper-cu128-torch2.7"].best_tag == "hopper-cu128-torch2.7-torch2.7.1-2026.11.0"  # 11 > 9
    assert by_id["hopper-cu128-torch2.7"].floating_tags == ("hopper-cu128-torch2.7", "hopper-cu128-torch2.7-latest")
    decision = choose(list(by_id.values()), "9.0", "580.1")
    assert isinstance(decision, Choice) and decision.candidate.target_id == "hopper-cu130"  # default over flavor


def test_floating_tag_when_no_immutable_tag_is_listed() -> None:
    decision = choose(candidates_from_tags(["hopper-cu130", "hopper-cu130-latest"]), "9.0", "580.1")
    assert isinstance(decision, Choice) and decision.candidate.best_tag == "hopper-cu130"


def test_tags_file_states_sms_and_floor_itself() -> None:
    data = {"targets": [
        {"id": "hopper-cu130", "sms": ["9.0"], "cuda": "13.0", "driver_floor": "580", "torch": "2.14.1",
         "tags": ["hopper-cu130", "hopper-cu130-latest", "hopper-cu130-torch2.14.1-20261120"]},
        # nested like `imagefactory targets --format json`; an arch name select does not know
        {"id": "newarch-cu130", "arch": {"vendor": "nvidia"}, "sms": ["11.0"],
         "toolkit": {"kind": "cuda", "version": "13.0", "driver_floor": "580"}, "torch": {"version": "2.14.1"}},
    ]}
    candidates = candidates_from_json(data, "t.json")
    decision = choose(candidates, "11.0", "580.1")
    assert isinstance(decision, Choice) and decision.candidate.target_id == "newarch-cu130"
    assert isinstance(choose(candidates, "9.0", "575.0"), Refusal)


def test_cli_from_committed_supported_tags_json(capsys: pytest.CaptureFixture[str]) -> None:
    tags_file = REPO_ROOT / "docs" / "supported-tags.json"
    if not tags_file.exists():
        pytest.skip("docs/supported-tags.json not generated yet")
    code = main(["--tags-file", str(tags_file), "--gpu-sm", "9.0", "--driver", "580.65", "--repo", "r.example/if", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["image"].startswith("r.example/if:hopper-")


def test_cli_refusal_and_usage_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tags_file = tmp_path / "tags.json"
    tags_file.write_text(json.dumps([{"id": "hopper-cu130", "sms": ["9.0"], "cuda": "13.0", "torch": "2.14.1"}]))
    assert main(["--tags-file", str(tags_file), "--gpu-sm", "9.0", "--driver", "550.1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("probe select: refused: driver 550.1 is too old") and "\n" == err[-1] and err.count("\n") == 1
    assert main(["--tags-file", str(tags_file), "--gpu-sm", "nine", "--driver", "550.1"]) == 2
    assert main(["--tags-file", str(tmp_path / "missing.json"), "--gpu-sm", "9.0", "--driver", "550.1"]) == 2
    assert main(["--gpu-sm", "9.0", "--driver", "550.1"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_runs_with_the_standard_library_only(tmp_path: Path) -> None:
    """A pod has only python3: copy select.py with the grammar and facts it reads, run it with -I -S."""
    for name in ("select.py", "tags.py", "matrix_facts.json"):
        (tmp_path / name).write_text((REPO_ROOT / "probe" / name).read_text())
    tags_file = tmp_path / "tags.json"
    tags_file.write_text(json.dumps([{"id": "hopper-cu130", "sms": ["9.0"], "cuda": "13.0", "torch": "2.14.1",
                                      "tags": ["hopper-cu130"]}]))
    done = subprocess.run([sys.executable, "-I", "-S", str(tmp_path / "select.py"), "--tags-file", str(tags_file),
                           "--gpu-sm", "9.0", "--driver", "580.1", "--quiet"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hopper-cu130\n"


def test_python_m_probe_select_from_a_bare_copy_of_probe(tmp_path: Path) -> None:
    """What a pod does: copy probe/ over and run `python3 -m probe select` with no site-packages."""
    shutil.copytree(REPO_ROOT / "probe", tmp_path / "probe", ignore=shutil.ignore_patterns("__pycache__"))
    tags_file = tmp_path / "tags.json"
    tags_file.write_text(json.dumps([{"id": "ampere-cu126", "sms": ["8.0", "8.6"], "cuda": "12.6", "torch": "2.11.0",
                                      "driver_floor": "525", "tags": ["ampere-cu126"]}]))
    done = subprocess.run([sys.executable, "-S", "-E", "-s", "-m", "probe", "select", "--tags-file", str(tags_file),
                           "--gpu-sm", "8.6", "--driver", "550.54", "--repo", "r.example/if"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "r.example/if:ampere-cu126"
    assert "reason: arch match: SM 8.6" in done.stdout


def test_registry_tag_list_pages_and_anonymous_token() -> None:
    """A registry that pages (Link: rel="next") and wants a bearer token, as ghcr.io and Docker Hub do."""
    import http.server
    import threading

    from probe.select import registry_tags

    pages = {"/v2/org/if/tags/list?n=2": (["a-cu130", "a-cu130-latest"], "/v2/org/if/tags/list?n=2&last=a-cu130-latest"),
             "/v2/org/if/tags/list?n=2&last=a-cu130-latest": (["b-cu130"], None)}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path.startswith("/token"):
                body, headers = json.dumps({"token": "t0k"}).encode(), {}
            elif self.headers.get("Authorization") != "Bearer t0k":
                realm = f"http://127.0.0.1:{self.server.server_port}/token"
                self.send_response(401)
                self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="test",scope="repository:org/if:pull"')
                self.end_headers()
                return
            else:
                tags, following = pages[self.path]
                body = json.dumps({"name": "org/if", "tags": tags}).encode()
                headers = {"Link": f'<{following}>; rel="next"'} if following else {}
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tags = registry_tags(f"127.0.0.1:{server.server_port}/org/if", page=2)
    finally:
        server.shutdown()
    assert tags == ["a-cu130", "a-cu130-latest", "b-cu130"]
    assert [path.split("?")[0] for path in seen] == ["/v2/org/if/tags/list", "/token", "/v2/org/if/tags/list", "/v2/org/if/tags/list"]


GATED_FILE = [
    {"id": "hopper-cu130", "sms": ["9.0"], "toolkit": {"kind": "cuda", "version": "13.0", "driver_floor": "580"},
     "torch": "2.14.1", "tags": ["hopper-cu130"], "gated": {"mode": "cpu", "where": "x86_64 build host", "date": "2026-12-01"}},
    {"id": "hopper-cu128", "sms": ["9.0"], "toolkit": {"kind": "cuda", "version": "12.8", "driver_floor": "570"},
     "torch": "2.10.0", "tags": ["hopper-cu128"], "gated": None},
    {"id": "hopper-cu121", "sms": ["9.0"], "toolkit": {"kind": "cuda", "version": "12.1", "driver_floor": "525"},
     "torch": "2.4.1", "tags": ["hopper-cu121"], "gated": {"mode": "cpu", "where": "x86_64 build host", "date": "2026-12-01"}},
]


def test_a_gated_target_wins_over_a_newer_torch_that_was_not_gated() -> None:
    decision = choose(candidates_from_json(GATED_FILE, "t.json"), "9.0", "570.86")
    assert isinstance(decision, Choice) and decision.candidate.target_id == "hopper-cu121"
    assert "gated: CPU gate, x86_64 build host, 2026-12-01" in decision.reason


def test_select_says_when_it_recommends_an_image_nobody_gated() -> None:
    only_ungated = [dict(e, gated=None) for e in GATED_FILE]
    decision = choose(candidates_from_json(only_ungated, "t.json"), "9.0", "570.86")
    assert isinstance(decision, Choice) and decision.candidate.target_id == "hopper-cu128"
    assert "NOT GATED" in decision.reason


def test_a_tag_list_cannot_say_whether_an_image_was_gated() -> None:
    decision = choose(candidates_from_tags(TAGS), "9.0", "580.1")
    assert isinstance(decision, Choice) and "gating unknown" in decision.reason


@pytest.mark.parametrize("bad", ["yes", {"mode": "cpu"}, ["cpu"]])
def test_a_malformed_gated_entry_is_bad_input(tmp_path, bad) -> None:
    tags_file = tmp_path / "tags.json"
    tags_file.write_text(json.dumps([dict(GATED_FILE[0], gated=bad)]))
    assert main(["--tags-file", str(tags_file), "--gpu-sm", "9.0", "--driver", "580.1"]) == 2


def test_control_characters_in_gated_where_never_reach_the_terminal() -> None:
    hostile = [dict(GATED_FILE[0], gated={"mode": "cpu", "where": "host\x1b[2J\nrm -rf", "date": "2026-12-01"})]
    decision = choose(candidates_from_json(hostile, "t.json"), "9.0", "580.1")
    assert isinstance(decision, Choice) and "\x1b" not in decision.reason and "\n" not in decision.reason


def test_an_arm64_machine_gets_an_image_built_for_arm64() -> None:
    entries = [dict(e, platforms=["linux/amd64"]) for e in GATED_FILE]
    entries[0]["platforms"] = ["linux/amd64", "linux/arm64"]  # hopper-cu130: GH200 too
    decision = choose(candidates_from_json(entries, "t.json"), "9.0", "580.1", "linux/arm64")
    assert isinstance(decision, Choice) and decision.candidate.target_id == "hopper-cu130"
    assert "platform: linux/arm64" in decision.reason
    refused = choose(candidates_from_json(entries, "t.json"), "9.0", "570.1", "linux/arm64")
    assert isinstance(refused, Refusal) and "driver 570.1 is too old" in refused.reason
    nothing = choose(candidates_from_json(entries[1:], "t.json"), "9.0", "580.1", "linux/arm64")
    assert isinstance(nothing, Refusal) and "no image is built for linux/arm64" in nothing.reason
