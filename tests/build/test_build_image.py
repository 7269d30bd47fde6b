"""The built hopper-cu130 image, inspected from outside (needs Docker; builds once per session).

The session fixture builds through the real CLI (`python -m imagefactory build hopper-cu130`), so the
gate runs too. The matrix is the CLI's (`IMAGEFACTORY_MATRIX` selects a private copy, e.g. one whose
image_repo keeps the tags apart from other builds on a shared daemon). With `--bnb-source PATH` (or IMAGEFACTORY_BNB_SOURCE) bitsandbytes is compiled from
that local tree and the SASS test insists on sm_90 only; without it the wheel path (CI: no GitHub)
or the upstream tag is used, as the build log says.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from imagefactory.build.images import HOST_CA_BUNDLE, extra_certificates
from imagefactory.build.docker import detect, image_inspect
from imagefactory.cli import default_matrix_path
from imagefactory.plan.expand import resolve_target
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.model import Target
from imagefactory.plan.render import REPO_ROOT

pytestmark = pytest.mark.docker

TARGET = "hopper-cu130"
RELEASE = "test"
SITE = "/opt/venv/lib/python3.11/site-packages"


class Built:
    def __init__(self, returncode: int, output: str, image_id: str | None, bnb_tree: str | None) -> None:
        self.returncode, self.output, self.image_id, self.bnb_tree = returncode, output, image_id, bnb_tree


@pytest.fixture(scope="session")
def built(request) -> Built:
    bnb_tree = request.config.getoption("--bnb-source")
    argv = [sys.executable, "-m", "imagefactory", "build", TARGET, "--release", RELEASE, "--quiet"]
    if bnb_tree:
        argv += ["--bnb-source", bnb_tree]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    record = REPO_ROOT / "reports" / TARGET / "build.json"
    image_id = json.loads(record.read_text()).get("image_id") if record.exists() else None
    if image_id is None:
        pytest.fail(f"build of {TARGET} produced no image (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return Built(done.returncode, done.stderr, image_id, bnb_tree)


@pytest.fixture(scope="session")
def target() -> Target:
    """The target as the build saw it (the same matrix the CLI reads)."""
    return resolve_target(load_matrix(default_matrix_path()), TARGET)


@pytest.fixture(scope="session")
def client():
    return detect()


@pytest.fixture(scope="session")
def config(built, client) -> dict:
    info = image_inspect(client, built.image_id)
    assert info is not None
    return info["Config"]


def in_image(client, image: str, script: str) -> str:
    done = subprocess.run([client.executable, "run", "--rm", "--network", "none", image, "sh", "-c", script],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_gate_passed_and_tagged_the_image(built, client, target):
    assert built.returncode == 0, built.output[-3000:]
    gate = json.loads((REPO_ROOT / "reports" / TARGET / "gate.json").read_text())
    assert gate["result"] == "passed" and gate["image_id"] == built.image_id
    assert [s["name"] for s in gate["steps"]][:3] == ["probe", "smoke", "fresh-kernel"]
    assert gate["mode"] == "gpu" or any(s["skipped"] for s in gate["steps"]), "CPU mode says what it skipped"
    repo = target.image_repo
    for ref in (f"{repo}:{TARGET}", f"{repo}:{TARGET}-latest", f"{repo}:{TARGET}-torch2.14.1-{RELEASE}"):
        assert image_inspect(client, ref)["Id"] == built.image_id, ref


def test_build_says_where_bitsandbytes_came_from(built, config):
    source = config["Labels"]["io.imagefactory.bitsandbytes-source"]
    assert source == ("local" if built.bnb_tree else source)
    assert source in {"git", "local", "wheel"}
    assert "bitsandbytes" in built.output and (source != "wheel" or "fallback" in built.output or "PyPI wheel" in built.output)


def test_labels(config, built):
    labels = config["Labels"]
    expected = {
        "io.imagefactory.target": TARGET, "io.imagefactory.sm": "9.0", "io.imagefactory.cuda": "13.0",
        "io.imagefactory.torch": "2.14.1", "io.imagefactory.triton": "3.8.0", "io.imagefactory.python": "3.11",
        "io.imagefactory.sbom": "/opt/imagefactory/sbom.cdx.json",
    }
    assert {k: labels.get(k) for k in expected} == expected
    assert labels["io.imagefactory.bitsandbytes"].startswith("0.5")
    assert len(labels["io.imagefactory.revision"].split("-")[0]) == 40
    assert labels["org.opencontainers.image.revision"] == labels["io.imagefactory.revision"]
    assert labels["org.opencontainers.image.created"].startswith("20")


def test_runtime_user_is_not_root(config, client, built):
    assert config["User"] == "1000:1000"
    assert in_image(client, built.image_id, "id -u; id -g").split() == ["1000", "1000"]


def test_expected_identity_and_cache_dir_are_set(config):
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["TRITON_CACHE_DIR"] == "/opt/triton-cache"
    # the libcuda directory is part of triton's module cache key: the warm step's stub, shipped in the cache
    assert env["TRITON_LIBCUDA_PATH"] == "/opt/triton-cache/imagefactory-stub"
    assert env["PROBE_EXPECT_TARGET"] == TARGET and env["PROBE_EXPECT_SM"] == "9.0"
    assert env["PROBE_EXPECT_WARM_CACHE"] == "1"
    assert env["PYTHONPATH"] == "/opt/imagefactory"


def test_no_compiler_toolchain_in_the_runtime_image(client, built, target):
    assert not target.runtime_c_compiler, "triton 3.8 launches through cuda_utils: no C compiler in the runtime"
    out = in_image(client, built.image_id,
                   "for t in gcc cc g++ nvcc cmake ninja; do command -v $t; done; ls -d /opt/toolchain /opt/cuda /opt/sbom-tool 2>/dev/null; "
                   f"ls {SITE}/nvidia/cu13/bin 2>/dev/null | grep -E '^(nvcc|ptxas)$'; true")
    assert out.strip() == ""


def test_unsloth_is_installed_at_the_labelled_version(client, built, config, target):
    label = config["Labels"]["io.imagefactory.unsloth"]
    assert label == target.workload.version
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PROBE_EXPECT_UNSLOTH"] == label
    out = in_image(client, built.image_id, "python -c \"import importlib.metadata as m; "
                   "print(m.version('unsloth'), m.version('unsloth_zoo'), m.version('bitsandbytes'))\"").split()
    assert out[:2] == [label, label]
    assert out[2] == config["Labels"]["io.imagefactory.bitsandbytes"], "the workload layer kept the SM build"
    # Unsloth imports without a GPU (unsloth_zoo only after unsloth: it says "Please install Unsloth" otherwise)
    out = in_image(client, built.image_id, "python -c 'import unsloth, unsloth_zoo, trl; print(\"imported\")' 2>&1 | tail -1")
    assert out.strip() == "imported", out


def test_a_fresh_kernel_compiles_in_the_runtime_image(client, built):
    """With no network and no GPU: a kernel no cache holds compiles for sm_90 and gets its host modules."""
    doc = json.loads(in_image(client, built.image_id, "python -m probe fresh-kernel --json"))
    check = doc["checks"][0]
    assert doc["ok"] and check["name"] == "triton.fresh_kernel" and check["status"] == "pass", check
    assert check["numbers"]["sm"] == 90 and check["numbers"]["compiles"] >= 1


def test_bytecode_is_precompiled_and_hash_based(client, built):
    """compileall --invalidation-mode unchecked-hash: PEP 552 flags word 1 in every .pyc we sample."""
    script = (f"cd {SITE} && for f in transformers/__pycache__/__init__.cpython-311.pyc "
              "trl/__pycache__/__init__.cpython-311.pyc unsloth_zoo/__pycache__/__init__.cpython-311.pyc; do "
              "python -c \"import sys; print(int.from_bytes(open(sys.argv[1], 'rb').read()[4:8], 'little'))\" $f; done")
    assert in_image(client, built.image_id, script).split() == ["1", "1", "1"]


def test_warm_cache_holds_the_workload_kernels_for_the_declared_shapes(client, built, target):
    """The replay of the workload warm-up hits every kernel and writes nothing (probe warm --check)."""
    if not target.workload.prove:
        pytest.skip("matrix.yaml workload.prove is false: the workload warm step is not in this image yet")
    done = subprocess.run([client.executable, "run", "--rm", "--network", "none", built.image_id, "python", "-m", "probe",
                           "warm", "--sm", "90", "--workload", target.workload.name, "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_one_bitsandbytes_library_for_the_toolkit_plus_cpu(client, built):
    libs = in_image(client, built.image_id, f"cd {SITE}/bitsandbytes && ls libbitsandbytes_*").split()
    assert sorted(libs) == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]


def _cuobjdump() -> Path:
    import nvidia  # noqa: PLC0415 - from the dev extra nvidia-cuda-cuobjdump

    for root in map(Path, nvidia.__path__):
        found = sorted(root.glob("cu*/bin/cuobjdump"))
        if found:
            return found[0]
    pytest.fail("cuobjdump not found: pip install nvidia-cuda-cuobjdump (dev extra)")


def test_bitsandbytes_library_holds_sass_for_sm90(client, built, tmp_path):
    lib = tmp_path / "libbitsandbytes_cuda130.so"
    container = subprocess.run([client.executable, "create", built.image_id], capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run([client.executable, "cp", f"{container}:{SITE}/bitsandbytes/{lib.name}", str(lib)], check=True)
    finally:
        subprocess.run([client.executable, "rm", container], capture_output=True, check=False)
    listing = subprocess.run([str(_cuobjdump()), "--list-elf", str(lib)], capture_output=True, text=True, check=True).stdout
    arches = set(re.findall(r"\.(sm_\d+a?)\.cubin", listing))  # "ELF file 5: libbitsandbytes_cuda130.5.sm_90.cubin"
    assert "sm_90" in arches, listing[:500]
    if built.bnb_tree:
        assert arches == {"sm_90"}, f"compiled for exactly the target SM, found {sorted(arches)}"


def test_triton_cache_holds_kernels_for_sm90_and_launcher_modules(client, built, config):
    script = ("cd /opt/triton-cache && find . -name '*.json' ! -name '__grp__*' -exec cat {} + | "
              "python -c \"import sys,json,re; d=sys.stdin.read(); print(sorted(set(re.findall(r'\\\"arch\\\": ?(\\\\d+)', d))))\"; "
              "find . -name '*.cubin' | wc -l; find . -name '*.so*' | sed 's|.*/||' | sort -u")
    out = in_image(client, built.image_id, script).splitlines()
    assert out[0] == "['90']", out
    assert int(out[1]) >= 6, "the probe's six kernels, compiled for sm_90"
    modules = out[2:]
    assert any(m.startswith("cuda_utils") for m in modules), modules
    assert "libcuda.so.1" in modules, "the stub the host modules were linked against (TRITON_LIBCUDA_PATH)"
    triton = tuple(int(x) for x in config["Labels"]["io.imagefactory.triton"].split(".")[:2])
    if triton < (3, 7):  # from 3.7 on, kernels launch through cuda_utils: no per-kernel launcher module
        assert any("launcher" in m for m in modules), modules


def test_sbom_lists_the_venv(client, built):
    sbom = json.loads(in_image(client, built.image_id, "cat /opt/imagefactory/sbom.cdx.json"))
    assert sbom["bomFormat"] == "CycloneDX"
    names = {c["name"] for c in sbom["components"]}
    assert {"torch", "triton", "bitsandbytes", "transformers"} <= names


def test_no_layer_holds_the_ca_bundle_or_a_secret(client, built, tmp_path):
    if not HOST_CA_BUNDLE.is_file():
        pytest.skip("host has no CA bundle")
    base_bundle = subprocess.run([client.executable, "run", "--rm", "--network", "none", "imagefactory/base:bookworm-build",
                                  "cat", "/etc/ssl/certs/ca-certificates.crt"], capture_output=True, check=False).stdout
    secret_certs = extra_certificates(HOST_CA_BUNDLE.read_bytes(), base_bundle)
    if not secret_certs:
        pytest.skip("the host trusts no certificate beyond the image's: no proxy CA to leak")
    archive = tmp_path / "image.tar"
    subprocess.run([client.executable, "save", "-o", str(archive), built.image_id], check=True)
    leaks = []
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            if not member.name.endswith("layer.tar"):
                continue
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as layer:  # streamed: layers are GBs
                for entry in layer:
                    if entry.name.startswith("run/secrets"):
                        leaks.append(f"{member.name}: {entry.name}")
                    if not entry.isfile() or entry.size > 50_000_000:
                        continue
                    data = layer.extractfile(entry).read()
                    if b"BEGIN CERTIFICATE" in data and any(cert in data for cert in secret_certs):
                        leaks.append(f"{member.name}: {entry.name}")
    assert not leaks
