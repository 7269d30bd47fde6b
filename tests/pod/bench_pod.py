"""Benchmark of the pod layer (docs/benchmarks.md): the image size sshd + JupyterLab add, and container start to
"ready" (sshd accepts a connection and JupyterLab answers /api/status with the token; the start probe is off).

    .venv/bin/python tests/pod/bench_pod.py IMAGE [--runs 5]

Not a test (no assertions on timing): prints a Markdown table. Uses --network host and free ports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.pod.conftest import free_port, http_status, wait_for_port

DOCKER = os.environ.get("IMAGEFACTORY_DOCKER", "docker")
POD_LAYERS = ("openssh-server", "/opt/jupyter", "/opt/imagefactory/pod")


def pod_layer_bytes(image: str) -> tuple[int, int, list[tuple[str, int]]]:
    out = subprocess.run([DOCKER, "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}",
                          image], capture_output=True, text=True, check=True).stdout
    total, mine = 0, []
    for line in out.splitlines():
        size, _, created = line.partition("\t")
        total += int(size)
        for marker in POD_LAYERS:
            if marker in created and created.startswith(("COPY", "RUN")):
                mine.append((marker, int(size)))
                break
    return total, sum(b for _, b in mine), mine


def start_to_ready(image: str) -> tuple[float, float, float]:
    """Seconds from `docker run` to sshd accepting, to both sshd and JupyterLab ready, and the CPU seconds the
    entrypoint and JupyterLab used until then (what a machine that is not shared would wait, roughly)."""
    ssh_port, jupyter_port = free_port(), free_port()
    t0 = time.monotonic()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ5uYz1Q3mKq3U6wJ1n2r9zv2cQ3xq2m2l1a0b9c8d7e bench"
    cid = subprocess.run([DOCKER, "run", "-d", "--network", "host", "-e", f"PUBLIC_KEY={key}",
                          "-e", f"SSH_PORT={ssh_port}", "-e", "JUPYTER_PASSWORD=bench", "-e", f"JUPYTER_PORT={jupyter_port}",
                          "-e", "PROBE_AT_START=0", image], capture_output=True, text=True, check=True).stdout.strip()
    try:
        wait_for_port(ssh_port)
        ssh_s = time.monotonic() - t0
        while http_status(f"http://127.0.0.1:{jupyter_port}/api/status", token="bench", timeout=2) != 200:
            if time.monotonic() - t0 > 120:
                raise TimeoutError("JupyterLab did not answer in 120 s")
            time.sleep(0.05)
        ready_s = time.monotonic() - t0
        ticks = subprocess.run([DOCKER, "exec", cid, "sh", "-c", "cat /proc/[0-9]*/stat"], capture_output=True,
                               text=True, check=True).stdout.splitlines()
        cpu = 0
        for line in ticks:  # proc(5): after "pid (comm)", field 3 is rest[0]; utime, stime, cutime, cstime: 14-17
            rest = line.rsplit(")", 1)[1].split()
            cpu += sum(int(value) for value in rest[11:15])
        return ssh_s, ready_s, cpu / os.sysconf("SC_CLK_TCK")
    finally:
        subprocess.run([DOCKER, "rm", "-f", cid], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("image")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    total, added, layers = pod_layer_bytes(args.image)
    print(f"| image | {total / 1e6:.0f} MB |")
    print(f"| without the pod layers | {(total - added) / 1e6:.0f} MB |")
    print(f"| added by sshd + JupyterLab + entrypoint | **{added / 1e6:.1f} MB** |")
    for marker, size in layers:
        print(f"| - layer `{marker}` | {size / 1e6:.1f} MB |")
    ssh, ready, cpu = [], [], []
    load = os.getloadavg()[0]
    for _ in range(args.runs):
        s, r, c = start_to_ready(args.image)
        ssh.append(s)
        ready.append(r)
        cpu.append(c)
    print(f"| `docker run` to sshd accepting (median of {args.runs}) | {statistics.median(ssh):.2f} s |")
    print(f"| `docker run` to ready: sshd + JupyterLab /api/status 200 (median of {args.runs}; "
          f"min {min(ready):.2f}, max {max(ready):.2f}; load average {load:.1f} on {os.cpu_count()} cores) | "
          f"**{statistics.median(ready):.2f} s** |")
    print(f"| CPU time the container used until ready (user+sys of every process in it, incl. children; "
          f"median) | {statistics.median(cpu):.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
