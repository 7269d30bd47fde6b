"""The one logger: timed steps, folded into groups under GitHub Actions."""

from __future__ import annotations

import re

import pytest

from imagefactory import log


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    captured = capsys.readouterr()
    assert captured.out == ""  # logs never reach stdout: scripts read it
    return [re.sub(r"\d+\.\d s$", "N s", line) for line in captured.err.splitlines()]


def test_a_step_says_when_it_starts_and_how_long_it_took(capsys, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    with log.step("build hopper-cu130"):
        with log.step("docker build"):
            log.echo("+ docker build …")
    assert lines(capsys) == ["> build hopper-cu130", "  > docker build", "+ docker build …",
                             "  docker build: done in N s", "build hopper-cu130: done in N s"]


def test_under_github_actions_the_outer_step_is_a_group(capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with log.step("[1/1] hopper-cu130"):
        with log.step("gate"):
            pass
    assert lines(capsys) == ["::group::[1/1] hopper-cu130", "  > gate", "  gate: done in N s", "::endgroup::",
                             "[1/1] hopper-cu130: done in N s"]


def test_a_step_that_raises_says_so_and_closes_its_group(capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with pytest.raises(RuntimeError), log.step("push"):
        raise RuntimeError("registry gone")
    assert lines(capsys) == ["::group::push", "::endgroup::", "push: failed after N s"]
    with log.step("next"):  # the depth is restored: the next outer step is a group again
        pass
    assert lines(capsys)[0] == "::group::next"
