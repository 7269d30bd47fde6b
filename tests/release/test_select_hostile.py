"""`probe select` on hostile tags files and registry answers (issue 10, classes 7, 8 and 9): a bad record or
answer is one line and exit 2, never a traceback (exit 1 means "refused") and never a silent pick."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe.select import main

GOOD = {"id": "hopper-cu130", "sms": ["9.0"], "toolkit": {"kind": "cuda", "version": "13.0", "driver_floor": "580"},
        "torch": "2.14.1", "tags": ["hopper-cu130", "hopper-cu130-latest", "hopper-cu130-torch2.14.1-20261120"]}

BAD_RECORDS = {
    "toolkit without version": {"id": "hopper-cu130", "sms": ["9.0"], "toolkit": "cu130", "torch": "2.14.1"},
    "version abc": {**GOOD, "toolkit": {"kind": "cuda", "version": "abc"}},
    "tag of another id": {**GOOD, "tags": ["ampere-cu130-torch2.14.1-20261120"]},
    "sms as a string": {**GOOD, "sms": "9.0"},
    "sms as a number": {**GOOD, "sms": 9},
    "sm as a number": {**GOOD, "sms": [9.0]},
    "driver floor abc": {**GOOD, "toolkit": {"kind": "cuda", "version": "13.0", "driver_floor": "abc"}},
    "tags a number": {**GOOD, "tags": 5},
    "tags with a number": {**GOOD, "tags": [5]},
    "torch a number": {**GOOD, "torch": 2.14},
    "torch a list": {**GOOD, "torch": ["2.14.1"]},
    "id a number": {**GOOD, "id": 7},
    "id with a newline": {**GOOD, "id": "hopper-cu130\n"},
    "vendor odd": {**GOOD, "vendor": "intel"},
    "kind odd": {**GOOD, "toolkit": {"kind": "metal", "version": "13.0"}},
    "record a string": "hopper-cu130",
    "sm 09.0": {**GOOD, "sms": ["09.0"]},
    "gated.by_platform a list": {**GOOD, "gated": {"mode": "cpu", "where": "x", "date": "2026-12-01", "by_platform": ["linux/arm64"]}},
    "gated.by_platform odd platform": {**GOOD, "gated": {"mode": "cpu", "where": "x", "date": "2026-12-01",
                                                         "by_platform": {"linux/s390x": {"mode": "cpu", "where": "x", "date": "d"}}}},
    "gated.by_platform entry a string": {**GOOD, "gated": {"mode": "cpu", "where": "x", "date": "2026-12-01",
                                                           "by_platform": {"linux/arm64": "QEMU"}}},
    "gated.by_platform entry null": {**GOOD, "gated": {"mode": "cpu", "where": "x", "date": "2026-12-01",
                                                       "by_platform": {"linux/arm64": None}}},
}


def run_select(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


@pytest.mark.parametrize("record", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_bad_record_is_reported_never_picked(tmp_path: Path, capsys, record) -> None:
    tags_file = tmp_path / "tags.json"
    tags_file.write_text(json.dumps({"targets": [GOOD, record]}))
    code, err, out = run_select(capsys, "--tags-file", str(tags_file), "--gpu-sm", "9.0", "--driver", "570.86")
    assert code == 2 and out == ""
    assert len(err) == 1 and err[0].startswith(f"probe select: error: {tags_file}: target #1"), err


def test_the_good_record_alone_is_picked(tmp_path: Path, capsys) -> None:
    tags_file = tmp_path / "tags.json"
    tags_file.write_text(json.dumps({"targets": [GOOD]}))
    assert run_select(capsys, "--tags-file", str(tags_file), "--gpu-sm", "9.0", "--driver", "580.65", "--quiet")[0] == 0


@pytest.mark.parametrize("text", ["[" * 100_000, '{"targets": 5}', "\"x\"", "not json", "\udc80".encode("utf-8", "surrogatepass").decode("latin-1")])
def test_hostile_files_are_one_line(tmp_path: Path, capsys, text: str) -> None:
    tags_file = tmp_path / "tags.json"
    tags_file.write_text(text, encoding="latin-1")
    code, err, _ = run_select(capsys, "--tags-file", str(tags_file), "--gpu-sm", "9.0", "--driver", "570.86")
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]


@pytest.mark.parametrize("sm", ["09.0", "9.00", "٩.٠", "9", "9.0\n", ""])
def test_gpu_sm_shape_is_checked(tmp_path: Path, capsys, sm: str) -> None:
    code, err, _ = run_select(capsys, "--tags-file", str(tmp_path / "none.json"), "--gpu-sm", sm, "--driver", "570.86")
    assert code == 2 and len(err) == 1 and "bad GPU inputs" in err[0]


@pytest.mark.parametrize("driver", ["٥٧٠.86", "570..1", "abc", "0570.1"])
def test_driver_shape_is_checked(tmp_path: Path, capsys, driver: str) -> None:
    code, err, _ = run_select(capsys, "--tags-file", str(tmp_path / "none.json"), "--gpu-sm", "9.0", "--driver", driver)
    assert code == 2 and len(err) == 1


# ---- hostile registries --------------------------------------------------------------------------

ANSWERS = {
    "html": (200, b"<html><body>Sign in</body></html>"),
    "json list": (200, b'["hopper-cu130"]'),
    "tags not a list": (200, b'{"tags": "hopper-cu130"}'),
    "tags of numbers": (200, b'{"tags": [1, 2]}'),
    "deep": (200, b"[" * 100_000),
    "server error": (500, b"oops"),
}


@pytest.fixture
def answering() -> Iterator:
    """A local HTTP server answering every GET with the body the test sets."""
    state: dict[str, tuple[int, bytes] | str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = state["answer"]
            if answer == "truncated":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"tags": ["hopper-')
                return
            code, body = answer  # type: ignore[misc]
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state, f"127.0.0.1:{server.server_port}/org/if"
    finally:
        server.shutdown()


@pytest.mark.parametrize("answer", [*ANSWERS.values(), "truncated"], ids=[*ANSWERS.keys(), "truncated"])
def test_registry_answers_that_are_no_tag_list(answering, capsys, answer) -> None:
    state, repo = answering
    state["answer"] = answer
    code, err, out = run_select(capsys, "--repo", repo, "--gpu-sm", "9.0", "--driver", "580.65")
    assert code == 2 and out == "" and len(err) == 1 and err[0].startswith("probe select: error: registry 127.0.0.1"), err


def test_a_server_that_does_not_speak_http(capsys) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def garbage() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        conn.close()

    threading.Thread(target=garbage, daemon=True).start()
    try:
        code, err, _ = run_select(capsys, "--repo", f"127.0.0.1:{listener.getsockname()[1]}/org/if", "--gpu-sm", "9.0", "--driver", "580.65")
    finally:
        listener.close()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]


@pytest.mark.parametrize("repo", ["127.0.0.1:abc/x", "host with space/x", "r.example/if#frag", "r.example/if?q=1", "r.example/If", ""])
def test_bad_repo_names_are_usage_errors(capsys, repo: str) -> None:
    code, err, _ = run_select(capsys, "--repo", repo, "--gpu-sm", "9.0", "--driver", "580.65")
    assert code == 2 and len(err) == 1


# ---- any JSON in any field: a decision (0/1) or one error line (2), never an exception -------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["9.0", "13.0", "580", "2.14.1", "hopper-cu130", "hopper-cu130-torch2.14.1-1", "cuda", "nvidia", "\n", "$(x)"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["version", "kind", "driver_floor", "vendor"]), inner, max_size=3),
    max_leaves=12,
)
FIELDS = ["id", "sms", "toolkit", "cuda", "driver_floor", "torch", "tags", "vendor", "arch"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6))
def test_any_record_is_a_decision_or_one_line(tmp_path_factory, capsys, changes) -> None:
    tags_file = tmp_path_factory.mktemp("tags") / "tags.json"
    tags_file.write_text(json.dumps({"targets": [{**GOOD, **changes}]}))
    code = main(["--tags-file", str(tags_file), "--gpu-sm", "9.0", "--driver", "580.65"])
    captured = capsys.readouterr()
    assert code in (0, 1, 2)
    if code == 2:
        assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""
    if code == 0:  # a pick only from a record whose every field is well-formed
        record = {**GOOD, **changes}
        assert isinstance(record.get("id"), str) and captured.out.startswith(record["id"])


TAG_PARTS = st.sampled_from(["hopper", "ampere", "cdna3", "cu130", "cu128", "rocm6.2", "torch2.14.1", "torch٢.١", "latest",
                             "20261201", "-", "", "x", ".", "nvidia", "fp16", "torch", "9"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(TAG_PARTS, max_size=6).map("-".join) | st.text(max_size=30), max_size=12))
def test_any_registry_tag_list_is_a_decision(tags) -> None:
    """A registry may list anything; the choice over it is a Choice or a Refusal, never an exception."""
    from probe.select import Choice, Refusal, candidates_from_tags, choose

    decision = choose(candidates_from_tags(tags), "9.0", "580.65")
    assert isinstance(decision, (Choice, Refusal))
    if isinstance(decision, Choice):
        assert decision.candidate.best_tag in tags or decision.candidate.best_tag == decision.candidate.target_id
