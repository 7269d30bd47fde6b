"""scripts/host-setup's decisions (what `make build/…` and .ci/run do on a fresh machine), run for real against
fake apt-get / docker / dockerd / id on a PATH that holds nothing else: nothing is installed or uninstalled here."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from imagefactory.plan.render import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "host-setup"
BASICS = ("bash", "sh", "cat", "grep", "tail", "seq", "sleep", "mkdir", "dirname", "printf", "nohup", "touch", "rm", "ln",
          "chmod")


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


class Host:
    """A PATH with basic tools and fakes; `docker info` answers once fake dockerd or systemctl ran."""

    def __init__(self, root: Path, uid: int, have: set[str], daemon: bool = False, systemd: bool = False) -> None:
        self.bin, self.log, self.state = root / "bin", root / "calls.log", root / "state"
        self.bin.mkdir()
        self.state.mkdir()
        for tool in BASICS:
            found = shutil.which(tool)
            if found:
                (self.bin / tool).symlink_to(found)
        _script(self.bin / "id", f'case "$1" in -un) echo user ;; *) echo {uid} ;; esac\n')
        _script(self.bin / "python3", f'echo "python3 $*" >> {self.log}; [ -e {self.state}/python3-venv ]\n')
        _script(self.bin / "dpkg-query", f'for last; do :; done; [ -e {self.state}/"$last" ] && echo "install ok installed"\n')
        _script(self.bin / "apt-get", f'echo "apt-get $*" >> {self.log}\n'
                f'case "$1" in install) for p in "$@"; do touch {self.state}/"$p"; done\n'
                f'  [ -e {self.state}/docker.io ] && ln -sf {self.bin}/.docker {self.bin}/docker\n'
                f'  [ -e {self.state}/mmdebstrap ] && touch {self.bin}/mmdebstrap && chmod +x {self.bin}/mmdebstrap; true ;; esac\n')
        _script(self.bin / ".docker", f'echo "docker $*" >> {self.log}\n'
                f'case "$1" in info) [ -e {self.state}/daemon ] ;; version) echo 20.10.24 ;; esac\n')
        _script(self.bin / "dockerd", f'echo "dockerd $*" >> {self.log}; touch {self.state}/daemon\n')
        if systemd:
            _script(self.bin / "systemctl", f'echo "systemctl $*" >> {self.log}\n'
                    f'case "$1" in is-system-running) echo running ;; start) touch {self.state}/daemon ;; esac\n')
        for name in have:
            if name in ("docker", "mmdebstrap"):
                (self.bin / name).symlink_to(self.bin / ".docker") if name == "docker" else _script(self.bin / name, "")
            (self.state / ("python3-venv" if name == "venv" else name)).touch()
        if daemon:
            (self.state / "daemon").touch()
        self.systemd = systemd

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = {"PATH": str(self.bin), "IMAGEFACTORY_DOCKERD_LOG": str(self.state / "dockerd.log"),
               "IMAGEFACTORY_APT_LOG": str(self.state / "apt.log"), "HOME": str(self.state)}
        return subprocess.run([str(self.bin / "bash"), str(SCRIPT), *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


EVERYTHING = {"docker", "mmdebstrap", "venv"}


def test_a_ready_machine_says_so_in_one_line_for_any_user(tmp_path):
    host = Host(tmp_path, uid=1000, have=EVERYTHING, daemon=True)
    done = host.run()
    assert done.returncode == 0 and done.stderr.startswith("host: ready: docker 20.10.24")
    assert len(done.stderr.splitlines()) == 1
    assert not any(c.startswith(("apt-get", "dockerd")) for c in host.calls())


def test_fresh_machine_as_root_installs_then_starts_dockerd_one_line_per_step(tmp_path):
    host = Host(tmp_path, uid=0, have=set())
    done = host.run()
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("host: installing docker.io mmdebstrap python3-venv (apt-get")
    assert lines[1].startswith("host: starting dockerd --bridge=none --iptables=false")
    assert lines[2].startswith("host: ready") and len(lines) == 3
    assert "apt-get install -y -q --no-install-recommends docker.io mmdebstrap python3-venv" in host.calls()
    assert "dockerd --bridge=none --iptables=false" in host.calls()


def test_with_systemd_the_service_is_started_instead(tmp_path):
    host = Host(tmp_path, uid=0, have=EVERYTHING, systemd=True)
    done = host.run()
    assert done.returncode == 0 and "systemctl start docker" in host.calls()
    assert not any(c.startswith("dockerd") for c in host.calls())


def test_non_root_with_something_missing_gets_one_line_and_exit_2(tmp_path):
    host = Host(tmp_path, uid=1000, have={"docker", "venv"}, daemon=True)
    done = host.run()
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "host: error: mmdebstrap missing and only root can install them: run this as root (sudo make …), "
        "or: sudo apt-get install mmdebstrap"]
    assert not any(c.startswith("apt-get") for c in host.calls())


def test_non_root_without_a_daemon_is_told_to_use_root(tmp_path):
    host = Host(tmp_path, uid=1000, have=EVERYTHING)
    done = host.run()
    assert done.returncode == 2 and "Docker daemon is not running and only root can start it" in done.stderr


def test_check_mode_changes_nothing(tmp_path):
    host = Host(tmp_path, uid=0, have={"docker"})
    done = host.run("--check")
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["host: would install: mmdebstrap python3-venv (apt-get)",
                                        "host: would start the Docker daemon"]
    assert not any(c.startswith(("apt-get", "dockerd")) for c in host.calls())


def test_extra_packages_are_checked_by_dpkg_and_installed(tmp_path):
    host = Host(tmp_path, uid=0, have=EVERYTHING, daemon=True)
    done = host.run("docker-registry")
    assert done.returncode == 0, done.stderr
    assert "apt-get install -y -q --no-install-recommends docker-registry" in host.calls()


def test_a_failing_apt_get_shows_its_log_and_exits_1(tmp_path):
    host = Host(tmp_path, uid=0, have=set())
    _script(host.bin / "apt-get", 'echo "E: Unable to locate package mmdebstrap"; exit 100\n')
    done = host.run()
    assert done.returncode == 1 and "apt-get failed" in done.stderr and "Unable to locate package" in done.stderr


def test_makefile_runs_it_before_the_venv_for_build_and_gate():
    text = (REPO_ROOT / "Makefile").read_text()
    assert "build/%: host $(STAMP) FORCE" in text and "gate/%: host $(STAMP) FORCE" in text
    assert "scripts/host-setup" in (REPO_ROOT / ".ci" / "run").read_text()
    assert os.access(SCRIPT, os.X_OK)
