"""imagefactory.run: the one subprocess chokepoint (echo, capture, stream, one-line errors)."""

from __future__ import annotations

import sys

import pytest

from imagefactory.errors import CommandError
from imagefactory.run import run


def test_echoes_the_quoted_command_and_captures_stdout(capfd):
    done = run([sys.executable, "-c", "print('hello world')"], capture=True)
    assert done.ok and done.stdout == "hello world\n"
    assert f"+ {sys.executable} -c 'print('\"'\"'hello world'\"'\"')'" in capfd.readouterr().err


def test_streams_to_log_and_callback_and_keeps_a_tail(tmp_path, capfd):
    log = tmp_path / "out.log"
    seen: list[str] = []
    code = "import sys; [print(i) for i in range(100)]; print('oops', file=sys.stderr)"
    done = run([sys.executable, "-c", code], log=log, show=False, on_line=seen.append)
    assert done.ok
    assert seen[0] == "0" and seen[-1] == "oops"  # stderr merged into the stream
    assert len(done.tail) == 40 and done.tail[-1] == "oops"
    assert log.read_text().splitlines()[1:] == seen  # first line: the echoed command
    assert capfd.readouterr().out == ""  # show=False: nothing on the terminal


def test_non_zero_exit_is_one_line_naming_the_command_and_its_last_words():
    with pytest.raises(CommandError) as info:
        run([sys.executable, "-c", "import sys; print('first'); print('the reason', file=sys.stderr); sys.exit(3)"],
            capture=True)
    assert "exited 3: the reason" in info.value.message
    assert "\n" not in info.value.message


def test_check_false_returns_the_code():
    assert run([sys.executable, "-c", "raise SystemExit(4)"], capture=True, check=False).returncode == 4


def test_missing_command_is_one_line():
    with pytest.raises(CommandError, match=r"^no-such-tool-xyz: command not found$"):
        run(["no-such-tool-xyz", "--version"])


def test_extra_env_is_added_not_replacing(monkeypatch):
    monkeypatch.setenv("KEEP_ME", "1")
    done = run([sys.executable, "-c", "import os; print(os.environ['KEEP_ME'], os.environ['ADDED'])"],
               env={"ADDED": "2"}, capture=True)
    assert done.stdout.split() == ["1", "2"]
