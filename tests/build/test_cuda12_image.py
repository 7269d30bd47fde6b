"""A CUDA 12.x slim target, built from cold through the CLI and inspected (needs Docker).

The slim flavor on CUDA 12.x: torch and its nvidia-*-cu12 wheels from PyPI, bitsandbytes' PyPI wheel with only
the library for that CUDA kept (PyPI has no 12.x nvcc) or, for 12.4, compiled with Debian trixie's nvcc when its
source is reachable (`--bnb-source PATH` / IMAGEFACTORY_BNB_SOURCE, or GitHub; else the declared wheel fallback),
Triton warmed with no GPU. Parametrised by target: IMAGEFACTORY_CUDA12_TARGETS="ampere-cu121,hopper-cu124"
(default: ampere-cu121, the one CI builds); with one target, `--image REF` inspects an image built earlier.
The matrix is the CLI's ($IMAGEFACTORY_MATRIX, else ./matrix.yaml): a private copy with its own image_repo keeps
manual runs off the shared tags.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.build.docker import detect, image_inspect
from imagefactory.build.seal import GATE_IMAGE_LABEL
from imagefactory.cli import default_matrix_path
from imagefactory.plan.expand import resolve_target
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.render import REPO_ROOT, bnb_library

from .fatbin import sass_arches

pytestmark = pytest.mark.docker

TARGETS = [t for t in os.environ.get("IMAGEFACTORY_CUDA12_TARGETS", "ampere-cu121").split(",") if t]
RELEASE = "test"


@pytest.fixture(scope="module", params=TARGETS)
def built(request):
    target = resolve_target(load_matrix(default_matrix_path()), request.param)
    assert target.toolkit.kind == "cuda" and target.toolkit.version.startswith("12.") and target.flavor == "slim", target.id
    image = request.config.getoption("--image")
    if image:  # built earlier by this checkout (its reports/<target>/ describe it): the gate's seal or the candidate
        info = image_inspect(detect(), image)
        if info is None:
            pytest.fail(f"--image {image}: no such image in the local store")
        return target, ((info.get("Config") or {}).get("Labels") or {}).get(GATE_IMAGE_LABEL, info["Id"]), None
    argv = [sys.executable, "-m", "imagefactory", "build", target.id, "--release", RELEASE, "--quiet"]
    bnb_tree = request.config.getoption("--bnb-source")
    if bnb_tree and target.nvcc != "none":  # compile with the target's compiler (Debian's nvcc for 12.4)
        argv += ["--bnb-source", bnb_tree]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    record = REPO_ROOT / "reports" / target.id / "build.json"
    image_id = json.loads(record.read_text()).get("image_id") if record.exists() else None
    if image_id is None:
        pytest.fail(f"build of {target.id} produced no image (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return target, image_id, done


@pytest.fixture(scope="module")
def client():
    return detect()


def in_image(client, image: str, script: str) -> str:
    done = subprocess.run([client.executable, "run", "--rm", "--network", "none", image, "sh", "-c", script],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def copy_out(client, image: str, path: str, dest: Path) -> Path:
    container = subprocess.run([client.executable, "create", image], capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run([client.executable, "cp", f"{container}:{path}", str(dest)], check=True, capture_output=True)
    finally:
        subprocess.run([client.executable, "rm", container], capture_output=True, check=False)
    return dest


def site(target) -> str:
    return f"/opt/venv/lib/python{target.python}/site-packages"


def test_gate_passed_and_tagged(built, client):
    target, image_id, done = built
    assert done is None or done.returncode == 0, done.stderr[-3000:]
    gate = json.loads((REPO_ROOT / "reports" / target.id / "gate.json").read_text())
    assert gate["result"] == "passed" and gate["image_id"] == image_id
    sealed = image_inspect(client, gate["sealed_image"])  # the tags go on the gate's seal of this image
    assert sealed["Config"]["Labels"]["io.imagefactory.gate.image"] == image_id
    assert image_inspect(client, f"{target.image_repo}:{target.id}")["Id"] == gate["sealed_image"]


def test_torch_is_the_pypi_build_for_the_toolkit(built, client):
    target, image_id, _ = built
    out = in_image(client, image_id, "python -c 'import importlib.metadata as m, torch, triton; "
                                     "print(m.version(\"torch\"), torch.version.cuda, triton.__version__)'")
    torch_version, cuda, triton = out.split()
    assert torch_version == target.torch.version  # the distribution has no +cuXXX local version: the plain PyPI wheel
    assert cuda == target.toolkit.version and triton == target.triton_version


def test_one_bitsandbytes_library_for_the_cuda_and_the_labels_say_which(built, client):
    target, image_id, done = built
    libs = in_image(client, image_id, f"cd {site(target)}/bitsandbytes && ls libbitsandbytes_*").split()
    assert sorted(libs) == sorted(["libbitsandbytes_cpu.so", bnb_library(target)])
    labels = image_inspect(client, image_id)["Config"]["Labels"]
    assert labels["io.imagefactory.bitsandbytes-library"] == bnb_library(target)
    if target.nvcc == "none":
        assert labels["io.imagefactory.bitsandbytes-source"] == "wheel"  # no compiler for this CUDA in the slim flavor
    else:  # Debian's nvcc (12.4): compiled when the source was reachable, else the declared wheel fallback
        assert labels["io.imagefactory.bitsandbytes-source"] in ("git", "local", "wheel")
        assert labels["io.imagefactory.nvcc"].startswith(f"debian nvidia-cuda-toolkit={target.toolkit.version}.")
    if done is not None:
        assert bnb_library(target) in done.stderr  # the build log says which library and why


def test_the_cuda_library_holds_sass_for_every_target_sm(built, client, tmp_path):
    target, image_id, _ = built
    lib = copy_out(client, image_id, f"{site(target)}/bitsandbytes/{bnb_library(target)}", tmp_path / "lib.so")
    assert {int(code) for code in target.sm_codes} <= sass_arches(lib)


def test_the_cuda_library_loads_in_the_runtime_os(built, client):
    """The runtime's own glibc and libstdc++ resolve it (a library compiled on a newer Debian may ask for symbol
    versions bookworm lacks); torch has loaded the CUDA runtime libraries it links, as in a real process."""
    target, image_id, _ = built
    lib = f"{site(target)}/bitsandbytes/{bnb_library(target)}"
    out = in_image(client, image_id, f"python -c 'import ctypes, torch; ctypes.CDLL(\"{lib}\"); print(\"loaded\")'")
    assert out.strip().endswith("loaded")


def test_the_cpu_library_needs_no_avx512_or_dispatches_it_at_run_time(built, client, tmp_path):
    target, image_id, _ = built
    lib = copy_out(client, image_id, f"{site(target)}/bitsandbytes/libbitsandbytes_cpu.so", tmp_path / "cpu.so")
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True, check=True).stdout
    zmm = len(re.findall(r"%zmm", disassembly))
    if zmm:  # upstream's wheel: its AVX-512 kernels sit behind a cpuid check (has_avx512f_cpu)
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
        assert "has_avx512f_cpu" in symbols, f"{zmm} AVX-512 instructions and no run-time dispatch"
    probe = json.loads((REPO_ROOT / "reports" / target.id / "probe.json").read_text())
    statuses = {c["name"]: c["status"] for c in probe["checks"]}
    assert statuses.get("bitsandbytes.library") == "pass", statuses  # the CPU gate loaded it


def test_triton_cache_replays_all_hits_for_the_target_sms(built):
    target, _, _ = built
    probe = json.loads((REPO_ROOT / "reports" / target.id / "probe.json").read_text())
    check = next(c for c in probe["checks"] if c["name"] == "triton.warm_cache")
    assert check["status"] == "pass", check["reason"]
    assert check["numbers"]["kernels"] == 6 * len(target.sms) and check["numbers"]["modules"] == 7 * len(target.sms)
    assert check["numbers"]["sms"] == ",".join(target.sms)


QEMU = Path("/usr/bin/qemu-x86_64-static")  # Debian's qemu-user-static: its TCG has AVX2 and no AVX-512


def test_the_cpu_library_runs_on_a_cpu_without_avx512(built, client):
    """Whatever the build host's CPU: the image's CPU library, run under `qemu-x86_64 -cpu Haswell`, where
    an AVX-512 instruction on the executed path is SIGILL (exit 132)."""
    if not QEMU.exists():
        pytest.skip("qemu-user-static is not installed (apt-get install qemu-user-static)")
    target, image_id, _ = built
    script = Path(__file__).with_name("isa_exercise.py")
    done = subprocess.run([client.executable, "run", "--rm", "--network", "none",
                           "-v", f"{QEMU}:/usr/local/bin/qemu-x86_64:ro", "-v", f"{script}:/tmp/isa_exercise.py:ro",
                           "--entrypoint", "/usr/local/bin/qemu-x86_64", image_id, "-cpu", "Haswell",
                           "/usr/bin/python3", "/tmp/isa_exercise.py", f"{site(target)}/bitsandbytes/libbitsandbytes_cpu.so"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}{done.stderr[-500:]}"
    assert "round trip" in done.stdout


def test_the_triton_cache_holds_every_kernel_for_every_target_sm(built, client):
    """On disk, not only "nothing written on replay": a replay can reuse another SM's kernels from memory."""
    target, image_id, _ = built
    out = in_image(client, image_id, "python -c 'import json; from pathlib import Path; from probe.warm import cached_arches; "
                                     "print(json.dumps(cached_arches(Path(\"/opt/triton-cache\"))))'")
    assert json.loads(out) == dict.fromkeys(target.sm_codes, 6)
