"""push / docs / summary on hostile input (issue 10, classes 1, 8, 12, 13): one line, exit 2 for what a user
typed (7 for a registry that fails), never a traceback or exit 70, nothing touched outside what the command owns."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagefactory.cli import main as cli_main
from imagefactory.errors import PushFailedError, UsageError
from imagefactory.publish.docs import generate, generated_by_us, write
from imagefactory.publish.registry import Registry, RepoRef
from tests.release.test_docs import TARGETS

REPO_ROOT = Path(__file__).resolve().parents[2]


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# ---- --registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["127.0.0.1:abc/x", "127.0.0.1:99999/x", "host with space.example/x", "r.example/x#frag",
                                  "r.example/x?q=1", "r.example/x y", "http://r.example/x", "r.example/x\n", "user@r.example/x",
                                  "réexample.com/x", "r.example/X"])
def test_bad_registry_is_exit_2_before_anything(tmp_path: Path, capsys, text: str) -> None:
    code = cli_main(["push", "hopper-cu130", "--registry", text, "--reports-dir", str(tmp_path)])
    assert code == 2
    assert one_error(capsys).startswith("error: --registry")


@pytest.mark.parametrize("text", ["127.0.0.1:5000/imagefactory", "localhost:5000/a/b", "ghcr.io/org/images", "r.example:443/x_y"])
def test_good_registry_names(text: str) -> None:
    assert str(RepoRef.parse(text)) == text


# ---- registry answers ------------------------------------------------------------------------------

@pytest.fixture
def answering() -> Iterator[dict]:
    """A local HTTP server answering every GET with what the test sets (status, headers, body) or a cut body."""
    state: dict = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, headers, body = state["answer"]
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(state.get("length", len(body))))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["repo"] = RepoRef.parse(f"127.0.0.1:{server.server_port}/imagefactory")
    try:
        yield state
    finally:
        server.shutdown()


DIGEST = {"Docker-Content-Digest": "sha256:" + "a" * 64}
ANSWERS = {
    "html": (200, DIGEST, b"<html>login</html>"),
    "json list": (200, DIGEST, b"[1, 2]"),
    "deep": (200, DIGEST, b"[" * 50_000),
    "no digest header": (200, {}, b"{}"),
    "bad config digest": (200, DIGEST, b'{"config": {"digest": "../../etc"}}'),
    "index not a list": (200, DIGEST, b'{"manifests": 5}'),
    "server error": (502, {}, b"bad gateway"),
}


@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
def test_registry_nonsense_is_one_release_error(answering, answer) -> None:
    answering["answer"] = answer
    with pytest.raises(PushFailedError) as info:
        Registry(answering["repo"], timeout=5).image("hopper-cu130")
    assert "\n" not in str(info.value) and info.value.exit_code == 7


def test_registry_truncated_body(answering) -> None:
    answering["answer"] = (200, DIGEST, b'{"config": {"dig')
    answering["length"] = 5000
    with pytest.raises(PushFailedError, match="broken HTTP answer"):
        Registry(answering["repo"], timeout=5).image("hopper-cu130")


def test_registry_tags_of_wrong_shape(answering) -> None:
    answering["answer"] = (200, {}, b'{"tags": "x"}')
    with pytest.raises(PushFailedError, match="not a list of strings"):
        Registry(answering["repo"], timeout=5).tags()


def test_registry_that_is_not_http() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def garbage() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\nnot http at all\r\n\r\n")
        conn.close()

    threading.Thread(target=garbage, daemon=True).start()
    try:
        with pytest.raises(PushFailedError) as info:
            Registry(RepoRef.parse(f"127.0.0.1:{listener.getsockname()[1]}/x"), timeout=5).image("t")
    finally:
        listener.close()
    assert "\n" not in str(info.value)


# ---- summary -----------------------------------------------------------------------------------------

GOOD_RECORD = {"repo": "r.example/if", "digest": "sha256:" + "b" * 64, "immutable": "r.example/if:hopper-cu130-torch2.14.1-1",
               "floating": ["r.example/if:hopper-cu130", "r.example/if:hopper-cu130-latest"]}


@pytest.mark.parametrize("record", [
    [1, 2], "text", {k: v for k, v in GOOD_RECORD.items() if k != "immutable"}, {**GOOD_RECORD, "floating": "r.example/if:x"},
    {**GOOD_RECORD, "immutable": "r.example/if:x | evil"}, {**GOOD_RECORD, "immutable": "r.example/if:x\n## injected"},
    {**GOOD_RECORD, "digest": "sha256:x`y"}, {**GOOD_RECORD, "floating": ["a|b"]}, {**GOOD_RECORD, "floating": [5]},
], ids=["list", "string", "no immutable", "floating string", "pipe", "newline", "digest", "floating pipe", "floating number"])
def test_summary_refuses_bad_records(tmp_path: Path, capsys, record) -> None:
    path = tmp_path / "release.json"
    path.write_text(json.dumps(record))
    assert cli_main(["summary", str(path)]) == 2
    assert one_error(capsys).startswith(f"error: {path}:")


def test_summary_of_a_good_record_and_of_a_missing_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "release.json"
    path.write_text(json.dumps(GOOD_RECORD))
    assert cli_main(["summary", str(path)]) == 0
    assert "`r.example/if:hopper-cu130-latest`" in capsys.readouterr().out
    assert cli_main(["summary", str(tmp_path / "nope.json")]) == 2
    one_error(capsys)
    assert cli_main(["summary", str(tmp_path)]) == 2  # a directory
    one_error(capsys)


# ---- docs --repo and --docs-dir -------------------------------------------------------------------------


@pytest.mark.parametrize("repo", ["", "r.example/if;rm -rf /", "r.example/if\nruncmd: [x]", "r.example/If", "r.example/ if",
                                  "r.example/if'", ":hopper", "r.example"])
def test_docs_repo_is_checked(tmp_path: Path, capsys, repo: str) -> None:
    assert cli_main(["docs", "--repo", repo, "--docs-dir", str(tmp_path / "docs")]) == 2
    assert one_error(capsys).startswith("error: --repo")
    assert not (tmp_path / "docs").exists()


def test_docs_never_writes_or_deletes_through_a_link(tmp_path: Path) -> None:
    docs, outside = tmp_path / "docs", tmp_path / "outside"
    outside.mkdir()
    victim = outside / "runpod-template.json"
    victim.write_text('{"name": "imagefactory-x"}')
    (docs / "deploy").mkdir(parents=True)
    (docs / "deploy" / "x").symlink_to(outside)  # a stale "target" that is a link out of the tree
    write(generate(TARGETS, docs_dir=docs), docs)
    assert victim.read_text() == '{"name": "imagefactory-x"}'  # not deleted, not followed

    (docs / "deploy" / "hopper-cu130").rename(tmp_path / "moved")
    (docs / "deploy" / "hopper-cu130").symlink_to(outside)  # a current target's folder is a link out
    with pytest.raises(UsageError, match="symbolic link leads out"):
        write(generate(TARGETS, docs_dir=docs), docs)
    assert sorted(p.name for p in outside.iterdir()) == ["runpod-template.json"]


def test_docs_deletes_only_files_it_generated(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(generate(TARGETS, docs_dir=docs), docs)
    mine = docs / "deploy" / "old-target"
    mine.mkdir()
    (mine / "runpod-template.json").write_text('{"name": "my own template"}')  # the user's: kept
    (mine / "lambda-cloud-init.yaml").write_text("#cloud-config\n# hand-written\n")
    stale = docs / "deploy" / "gone-cu130"
    stale.mkdir()
    (stale / "runpod-template.json").write_text('{"name": "imagefactory-gone-cu130"}')  # ours: removed
    changed = write(generate(TARGETS, docs_dir=docs), docs)
    assert changed == [stale / "runpod-template.json"] and not stale.exists()
    assert (mine / "runpod-template.json").exists() and (mine / "lambda-cloud-init.yaml").exists()
    assert generated_by_us(docs / "deploy" / "ampere-cu126" / "lambda-cloud-init.yaml")


def test_docs_cli_with_a_link_is_one_line_not_exit_70(tmp_path: Path) -> None:
    docs, outside = tmp_path / "docs", tmp_path / "outside"
    (docs / "deploy").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (docs / "deploy" / "hopper-cu130").symlink_to(outside)
    done = subprocess.run([sys.executable, "-m", "imagefactory", "docs", "--docs-dir", str(docs), "--matrix", str(REPO_ROOT / "matrix.yaml")],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] and len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("release", ["$(x)", "a b", "latest", "../x", "x\n"])
def test_bad_release_is_exit_2(tmp_path: Path, capsys, release: str) -> None:
    assert cli_main(["push", "hopper-cu130", "--registry", "127.0.0.1:5000/x", "--release", release, "--reports-dir", str(tmp_path)]) == 2
    assert one_error(capsys).startswith("error: release")
