"""The pod conventions against a built image, with real clients on 127.0.0.1 (--network host: no bridge here):
OpenSSH's ssh, an HTTP client for JupyterLab, docker's own exit codes and signals, Triton's cache in two layers."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from .conftest import free_port, http_status, wait_for_port

pytestmark = pytest.mark.docker
HERE = Path(__file__).resolve().parent
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR")


def keypair(tmp_path: Path, name: str) -> tuple[Path, str]:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key, (tmp_path / f"{name}.pub").read_text().strip()


def ssh(key: Path, port: int, command: str, user: str = "trainer", timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-i", str(key), "-p", str(port), *SSH_OPTIONS, f"{user}@127.0.0.1", command],
                          capture_output=True, text=True, timeout=timeout, check=False)


def processes(c) -> list[str]:
    """Command names of every process in the container (the image has no ps)."""
    return c.exec("sh", "-c", "cat /proc/[0-9]*/comm").stdout.split()


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A root-owned directory, as RunPod's volumes are."""
    path = tmp_path / "workspace"
    path.mkdir(mode=0o755)
    return path


def test_public_key_opens_ssh_for_trainer_which_runs_the_probe(tmp_path, container, workspace):
    key, public = keypair(tmp_path, "mine")
    wrong, _ = keypair(tmp_path, "someone-else")
    port = free_port()
    c = container(env={"PUBLIC_KEY": public, "SSH_PORT": str(port)}, volumes=(f"{workspace}:/workspace",))
    wait_for_port(port)

    who = ssh(key, port, "id -u; id -g; echo $TRITON_CACHE_DIR $HF_HOME; command -v python")
    assert who.returncode == 0, who.stderr + c.logs()
    assert who.stdout.split() == ["1000", "1000", "/workspace/.cache/triton", "/workspace/.cache/huggingface",
                                  "/opt/venv/bin/python"]
    probe = ssh(key, port, "python -m probe --json")
    doc = json.loads(probe.stdout)
    assert doc["schema"].startswith("imagefactory.probe") and probe.returncode == doc["exit_code"] == 0, probe.stdout[-3000:]
    status = {check["name"]: check["status"] for check in doc["checks"]}
    assert status["container.workspace"] == "pass" and status["triton.warm_cache"] == "pass"
    assert status["container.shm"] in ("pass", "warn") and "container.disk" in status

    refused = ssh(wrong, port, "true")
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr
    as_root = ssh(key, port, "true", user="root")
    assert as_root.returncode == 255 and "Permission denied" in as_root.stderr

    # The start probe ran in the background and left its report on the volume; the container stays up.
    report = workspace / "probe-report.json"
    deadline = time.monotonic() + 900
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(2)
    assert json.loads(report.read_text())["ok"] is True, c.logs()
    assert "probe passed" in c.logs()
    assert workspace.stat().st_uid == 1000  # the root-owned volume was handed to trainer (its top only)


def test_host_keys_are_made_per_container_and_never_in_an_image_layer(tmp_path, container, docker_cli, pod_image):
    _key, public = keypair(tmp_path, "mine")
    fingerprints = []
    for _ in range(2):
        port = free_port()
        c = container(env={"PUBLIC_KEY": public, "SSH_PORT": str(port), "PROBE_AT_START": "0"})
        wait_for_port(port)
        fingerprints.append(c.exec("cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1])
    assert fingerprints[0] != fingerprints[1]

    # Every layer, streamed from `docker save` (no copy on disk): no host key file, no whiteout of one.
    found = []
    save = subprocess.Popen([docker_cli, "save", pod_image], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
        for member in outer:
            if not member.name.endswith("layer.tar"):
                continue
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as layer:
                found += [f"{member.name}: {e.name}" for e in layer if re.search(r"ssh_host_\w+_key", e.name)]
    assert save.wait() == 0
    assert found == []


def test_jupyter_password_is_the_token_of_jupyterlab(container):
    port = free_port()
    c = container(env={"JUPYTER_PASSWORD": "x", "JUPYTER_PORT": str(port), "PROBE_AT_START": "0"})
    url = f"http://127.0.0.1:{port}"
    wait_for_port(port, timeout=90)
    assert http_status(f"{url}/api/status", token="x") == 200, c.logs()
    assert http_status(f"{url}/api/status") == 403
    assert http_status(f"{url}/api/status", token="wrong") == 403
    request = urllib.request.Request(f"{url}/api/kernelspecs", headers={"Authorization": "token x"})
    with urllib.request.urlopen(request, timeout=10) as response:
        specs = json.load(response)
    spec = specs["kernelspecs"][specs["default"]]["spec"]
    assert spec["argv"][0] == "/opt/venv/bin/python"  # the training venv, not Jupyter's own
    # A real kernel through jupyter_client (what the server uses), running code: torch from /opt/venv.
    client = ("from jupyter_client.manager import start_new_kernel\n"
              "km, kc = start_new_kernel(kernel_name='python3', startup_timeout=300)\n"
              "out = []\n"
              "kc.execute_interactive('import sys, torch; print(sys.executable, torch.__version__)', timeout=600,\n"
              "                      output_hook=lambda m: out.append(m['content'].get('text', '')))\n"
              "print(''.join(out).strip())\n"
              "km.shutdown_kernel(now=True)\n")
    ran = c.exec("env", "HOME=/home/trainer", "JUPYTER_PATH=/opt/imagefactory/pod/jupyter", "/opt/jupyter/bin/python",
                 "-c", client, user="1000")
    assert ran.stdout.strip().startswith("/opt/venv/bin/python 2."), ran.stdout + ran.stderr
    # the server process (its comm is the script's name) and the kernels run as trainer
    owners = c.exec("ps", "-C", "jupyter-lab", "-o", "uid=").stdout.split()
    assert owners == ["1000"], c.exec("ps", "-eo", "uid,comm,args").stdout
    assert "sshd" not in processes(c)


def test_jupyter_disable_turns_it_off(container):
    port = free_port()
    c = container(env={"JUPYTER_PASSWORD": "x", "JUPYTER_DISABLE": "1", "JUPYTER_PORT": str(port)},
                  command=("sleep", "120"))
    time.sleep(3)
    with pytest.raises(TimeoutError):
        wait_for_port(port, timeout=2)
    names = processes(c)
    assert not any("jupyter" in n for n in names) and "sshd" not in names


def test_neither_variable_starts_no_daemon_and_the_command_runs_as_given(container, docker_cli, pod_image):
    c = container(command=("sleep", "120"))
    time.sleep(2)
    names = processes(c)
    assert names.count("sleep") == 1 and "sshd" not in names and not any("jupyter" in n for n in names)
    assert c.exec("sh", "-c", "cat /proc/1/comm").stdout.strip() == "sleep"  # exec'd: the command is PID 1
    done = subprocess.run([docker_cli, "run", "--rm", "--network", "none", pod_image, "python", "-c", "print(1)"],
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    who = subprocess.run([docker_cli, "run", "--rm", "--network", "none", pod_image, "id", "-u"],
                         capture_output=True, text=True, check=False)
    assert who.stdout.strip() == "1000"


def test_exit_codes_and_signals_are_the_commands(container, docker_cli, pod_image):
    done = subprocess.run([docker_cli, "run", "--rm", "--network", "none", pod_image, "python", "-c",
                           "import sys; sys.exit(3)"], capture_output=True, check=False)
    assert done.returncode == 3
    missing = subprocess.run([docker_cli, "run", "--rm", "--network", "none", pod_image, "no-such-command"],
                             capture_output=True, text=True, check=False)
    assert missing.returncode != 0
    handler = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(42)); print('up', flush=True); time.sleep(300)"
    c = container(command=("python", "-c", handler))
    deadline = time.monotonic() + 60
    while "up" not in c.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    subprocess.run([docker_cli, "stop", "-t", "30", c.id], capture_output=True, check=True)
    code = subprocess.run([docker_cli, "inspect", "-f", "{{.State.ExitCode}}", c.id], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert code == "42"


def test_the_volume_holds_the_caches_and_the_inductor_default_points_there(docker_cli, pod_image, workspace):
    script = ("id -u; echo $HF_HOME; echo $TRITON_CACHE_DIR; echo $TORCHINDUCTOR_CACHE_DIR; "
              "readlink /tmp/torchinductor_trainer; stat -c %u /workspace /workspace/.cache/triton")
    done = subprocess.run([docker_cli, "run", "--rm", "--network", "none", "-v", f"{workspace}:/workspace", pod_image,
                           "sh", "-c", script], capture_output=True, text=True, check=False)
    assert done.stdout.split() == ["1000", "/workspace/.cache/huggingface", "/workspace/.cache/triton",
                                   "/workspace/.cache/torchinductor", "/workspace/.cache/torchinductor", "1000", "1000"], done.stderr


def test_triton_cache_layers_baked_hits_and_new_kernels_persist_on_the_volume(docker_cli, pod_image, workspace):
    def run(mode: str, tag: str = "") -> dict:
        done = subprocess.run([docker_cli, "run", "--rm", "--network", "none", "-e", "CUDA_VISIBLE_DEVICES=",
                               "-e", f"FRESH_TAG={tag}", "-v", f"{workspace}:/workspace", "-v", f"{HERE}:/checks:ro",
                               pod_image, "python", "/checks/triton_layers.py", mode],
                              capture_output=True, text=True, check=False, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    baked = run("baked")
    assert baked["manager"] == "pod.triton_cache:LayeredCacheManager" and baked["error"] is None
    assert baked["kernels"] and all(k["cache_hit"] for k in baked["kernels"]), baked["kernels"]
    assert not any(m["built"] for m in baked["modules"]) and baked["written"] == []

    tag = uuid.uuid4().hex[:8]
    first = run("fresh", tag)
    assert first["cache_hit"] == [False] and first["written_writable"] > 0 and first["written_baked"] == 0
    again = run("fresh", tag)  # a new container on the same volume: a restarted pod
    assert again["cache_hit"] == [True] and again["written_writable"] == 0


def test_started_as_uid_1000_the_command_runs_and_sshd_is_refused_with_a_reason(docker_cli, pod_image):
    done = subprocess.run([docker_cli, "run", "--rm", "--network", "none", "--user", "1000:1000", "-e",
                           "PUBLIC_KEY=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ5uYz1Q3mKq3U6wJ1n2r9zv2cQ3xq2m2l1a0b9c8d7e x",
                           pod_image, "python", "-c", "import os; print(os.getuid())"],
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (0, "1000\n"), done.stderr
    assert "sshd needs root" in done.stderr
