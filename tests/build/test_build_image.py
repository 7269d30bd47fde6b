"""A built image, inspected from outside (needs Docker): any target, any image.

    pytest tests/build/test_build_image.py                                  # builds hopper-cu130 through the CLI
    pytest tests/build/test_build_image.py --target ampere-cu128            # builds that target
    pytest tests/build/test_build_image.py --target T --image ID_OR_REF     # inspects an image built already
    pytest tests/build/test_build_image.py --platform linux/arm64           # the arm64 build (runs under QEMU)

The matrix is the CLI's ($IMAGEFACTORY_MATRIX, else ./matrix.yaml). Without `--image` the session
fixture builds through the real CLI (`python -m imagefactory build T`), so the gate runs too. Everything
the tests expect (SMs, CUDA, torch, Python, the bitsandbytes library) comes from the target in matrix.yaml,
never from the image. With `--bnb-source PATH` (or IMAGEFACTORY_BNB_SOURCE)
bitsandbytes is compiled from that local tree and the SASS test insists on exactly the target's SMs.
The release workflow's gate job runs this suite on the image it built and gated.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagefactory.build.docker import detect, image_inspect
from imagefactory.build.gate import report_id
from imagefactory.build.images import HOST_CA_BUNDLE, extra_certificates
from imagefactory.cli import default_matrix_path
from imagefactory.plan.expand import resolve_target
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.model import Target
from imagefactory.plan.platforms import debian_arch, platform_suffix
from imagefactory.plan.render import REPO_ROOT

pytestmark = pytest.mark.docker

RELEASE = "test"
REPORTS = REPO_ROOT / "reports"


@dataclass(frozen=True)
class Built:
    image_id: str
    built_here: bool  # False with --image: the build's output and exit code are not ours to check
    returncode: int | None = None
    output: str = ""
    bnb_tree: str | None = None


@pytest.fixture(scope="session")
def target(request) -> Target:
    return resolve_target(load_matrix(default_matrix_path()), request.config.getoption("--target"))


@pytest.fixture(scope="session")
def platform(request, target: Target) -> str:
    return request.config.getoption("--platform") or target.platforms[0]


@pytest.fixture(scope="session")
def site(target: Target) -> str:
    return f"/opt/venv/lib/python{target.python}/site-packages"


@pytest.fixture(scope="session")
def built(request, target: Target, platform: str) -> Built:
    image = request.config.getoption("--image")
    if image:
        info = image_inspect(detect(), image)
        if info is None:
            pytest.fail(f"--image {image}: no such image in the local store")
        return Built(info["Id"], built_here=False)
    bnb_tree = request.config.getoption("--bnb-source")
    argv = [sys.executable, "-m", "imagefactory", "build", target.id, "--release", RELEASE, "--quiet", "--platform", platform]
    if bnb_tree:
        argv += ["--bnb-source", bnb_tree]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    record = REPORTS / report_id(target, platform) / "build.json"
    image_id = json.loads(record.read_text()).get("image_id") if record.exists() else None
    if image_id is None:
        pytest.fail(f"build of {target.id} produced no image (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return Built(image_id, True, done.returncode, done.stderr, bnb_tree)


@pytest.fixture(scope="session")
def client():
    return detect()


@pytest.fixture(scope="session")
def config(built, client) -> dict:
    info = image_inspect(client, built.image_id)
    assert info is not None
    return info["Config"]


@pytest.fixture(scope="session")
def nvidia(target: Target) -> None:
    if target.arch.vendor != "nvidia":
        pytest.skip(f"{target.id} is not an NVIDIA target")


def report(target: Target, name: str, built: Built, platform: str) -> dict:
    """reports/<target>[-arm64]/<name>.json of the build that made this image (skips when there is none)."""
    path = REPORTS / report_id(target, platform) / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if data.get("image_id") != built.image_id:
        pytest.skip(f"{path}: no report for image {built.image_id[:19]} (built elsewhere)")
    return data


def in_image(client, image: str, script: str) -> str:
    done = subprocess.run([client.executable, "run", "--rm", "--network", "none", image, "sh", "-c", script],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_gate_passed_and_sealed_and_tagged_the_image(built, client, target, platform):
    if built.built_here:
        assert built.returncode == 0, built.output[-3000:]
    gate = report(target, "gate", built, platform)
    assert gate["result"] == "passed"
    assert [s["name"] for s in gate["steps"]][:3] == ["probe", "smoke", "fresh-kernel"]
    assert gate["mode"] == "gpu" or any(s["skipped"] for s in gate["steps"]), "CPU mode says what it skipped"
    sealed = image_inspect(client, gate["sealed_image"])  # the tags go on the seal: same layers, gate labels added
    assert sealed["Config"]["Labels"]["io.imagefactory.gate.image"] == built.image_id
    assert sealed["Config"]["Labels"]["io.imagefactory.gate"] == "passed"
    assert sealed["RootFS"]["Layers"] == image_inspect(client, built.image_id)["RootFS"]["Layers"]
    assert gate["tags"] and all(image_inspect(client, ref)["Id"] == gate["sealed_image"] for ref in gate["tags"])
    if built.built_here:
        repo = target.image_repo
        suffix = platform_suffix(platform)
        assert gate["tags"] == [f"{repo}:{target.id}{suffix}", f"{repo}:{target.id}-latest{suffix}",
                                f"{repo}:{target.id}-torch{target.torch.version}-{RELEASE}{suffix}"]
    assert gate.get("platform", "linux/amd64") == platform
    assert image_inspect(client, built.image_id)["Architecture"] == debian_arch(platform)


def test_build_says_where_bitsandbytes_came_from(built, config, target, platform):
    source = config["Labels"]["io.imagefactory.bitsandbytes-source"]
    recorded = report(target, "build", built, platform)["bnb_source"]  # what the build decided, from its own record
    assert source == recorded == ("local" if built.bnb_tree else recorded)
    assert source in {"git", "local", "wheel"}
    if built.built_here:
        said = {"wheel": "PyPI wheel", "git": f"compiled from {target.bitsandbytes.git_url}", "local": "compiled from the local tree"}
        assert said[source] in built.output


def test_labels(config, built, target):
    labels = config["Labels"]
    expected = {**target.labels, "io.imagefactory.sbom": "/opt/imagefactory/sbom.cdx.json"}
    if target.arch.vendor == "nvidia":
        expected["io.imagefactory.cuda"] = target.toolkit.version
    if built.bnb_tree:  # the image holds the local tree's version
        del expected["io.imagefactory.bitsandbytes"]
    assert {k: labels.get(k) for k in expected} == expected
    assert len(labels["io.imagefactory.revision"].split("-")[0]) == 40
    assert labels["org.opencontainers.image.revision"] == labels["io.imagefactory.revision"]
    assert labels["org.opencontainers.image.created"].startswith("20")


def test_the_workload_runs_as_trainer_behind_the_pod_entrypoint(config, client, built):
    # The image starts as root only for the entrypoint's setup (sshd, /workspace); it runs every command as
    # trainer (uid 1000) through setpriv. `docker run --user 1000` works too (no sshd then): tests/pod.
    assert config["Entrypoint"] == ["/usr/bin/python3", "-I", "-S", "/opt/imagefactory/pod/entrypoint.py"]
    assert not config.get("User") and not config.get("Cmd")
    assert in_image(client, built.image_id, "id -u; id -g; echo $HOME").split() == ["1000", "1000", "/home/trainer"]


def test_expected_identity_and_cache_dir_are_set(config, target, built):
    env = dict(item.split("=", 1) for item in config["Env"])
    expected = {k: v for k, v in target.expect_env.items() if not (built.bnb_tree and k == "PROBE_EXPECT_BITSANDBYTES")}
    assert {k: env.get(k) for k in expected} == expected
    assert env["PYTHONPATH"] == "/opt/imagefactory"
    # The baked cache is read through the layered manager; new kernels go to TRITON_CACHE_DIR, which the
    # entrypoint sets (on /workspace when mounted; Triton's default in the home otherwise).
    assert "TRITON_CACHE_DIR" not in env
    if target.warm_triton_cache:
        assert env["PROBE_EXPECT_WARM_CACHE"] == "1"
        assert env["IMAGEFACTORY_TRITON_BAKED_CACHE"] == "/opt/triton-cache"
        assert env["TRITON_CACHE_MANAGER"] == "pod.triton_cache:LayeredCacheManager"
        # the libcuda directory is part of triton's module cache key: the warm step's stub, shipped in the cache
        assert env["TRITON_LIBCUDA_PATH"] == "/opt/triton-cache/imagefactory-stub"
    else:
        assert "TRITON_CACHE_MANAGER" not in env and "IMAGEFACTORY_TRITON_BAKED_CACHE" not in env


def test_no_compiler_toolchain_in_the_runtime_image(client, built, site, target):
    if target.runtime_c_compiler:
        pytest.skip(f"triton {target.triton_version} builds a launcher per kernel: this runtime ships gcc on purpose")
    out = in_image(client, built.image_id,
                   "for t in gcc cc g++ nvcc cmake ninja; do command -v $t; done; ls -d /opt/toolchain /opt/cuda /opt/sbom-tool 2>/dev/null; "
                   f"ls {site}/nvidia/*/bin 2>/dev/null | grep -E '^(nvcc|ptxas)$'; true")
    assert out.strip() == ""


def bnb_library(target: Target) -> str:
    return f"libbitsandbytes_cuda{target.toolkit.version.replace('.', '')}.so"


def test_one_bitsandbytes_library_for_the_toolkit_plus_cpu(client, built, site, target, nvidia):
    libs = in_image(client, built.image_id, f"cd {site}/bitsandbytes && ls libbitsandbytes_*").split()
    assert sorted(libs) == ["libbitsandbytes_cpu.so", bnb_library(target)]


def test_unsloth_is_installed_at_the_labelled_version(client, built, config, target):
    if target.workload is None:
        pytest.skip("no workload for this target (rule workload)")
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


def test_a_fresh_kernel_compiles_in_the_runtime_image(client, built, target):
    """With no network and no GPU: a kernel no cache holds compiles for sm_90 and gets its host modules."""
    doc = json.loads(in_image(client, built.image_id, "python -m probe fresh-kernel --json"))
    check = doc["checks"][0]
    assert doc["ok"] and check["name"] == "triton.fresh_kernel" and check["status"] == "pass", check
    assert check["numbers"]["sm"] == int(target.sm_codes[0]) and check["numbers"]["compiles"] >= 1


def test_bytecode_is_precompiled_and_hash_based(client, built, site, target):
    """compileall --invalidation-mode unchecked-hash: PEP 552 flags word 1 in every .pyc we sample."""
    tag = "cpython-" + target.python.replace(".", "")
    script = (f"cd {site} && for f in transformers/__pycache__/__init__.{tag}.pyc "
              f"trl/__pycache__/__init__.{tag}.pyc peft/__pycache__/__init__.{tag}.pyc; do "
              "python -c \"import sys; print(int.from_bytes(open(sys.argv[1], 'rb').read()[4:8], 'little'))\" $f; done")
    assert in_image(client, built.image_id, script).split() == ["1", "1", "1"]


def test_warm_cache_holds_the_workload_kernels_for_the_declared_shapes(client, built, target):
    """The replay of the workload warm-up hits every kernel and writes nothing (probe warm --check)."""
    if target.workload is None or not target.workload.prove:
        pytest.skip("matrix.yaml workload.prove is false: the workload warm step is not in this image yet")
    for sm in target.sm_codes:  # every SM of the target: the warm step runs once per SM
        done = subprocess.run([client.executable, "run", "--rm", "--network", "none", built.image_id, "python", "-m", "probe",
                               "warm", "--sm", sm, "--workload", target.workload.name, "--check"],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, sm + ": " + done.stdout[-2000:] + done.stderr[-2000:]


def _cuobjdump() -> Path:
    import nvidia

    for root in map(Path, nvidia.__path__):
        found = sorted(root.glob("cu*/bin/cuobjdump"))
        if found:
            return found[0]
    pytest.fail("cuobjdump not found: pip install nvidia-cuda-cuobjdump (dev extra)")


def test_bitsandbytes_library_holds_sass_for_the_target_sms(client, built, tmp_path, site, target, nvidia):
    lib = tmp_path / bnb_library(target)
    container = subprocess.run([client.executable, "create", built.image_id], capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run([client.executable, "cp", f"{container}:{site}/bitsandbytes/{lib.name}", str(lib)], check=True)
    finally:
        subprocess.run([client.executable, "rm", container], capture_output=True, check=False)
    listing = subprocess.run([str(_cuobjdump()), "--list-elf", str(lib)], capture_output=True, text=True, check=True).stdout
    arches = set(re.findall(r"\.(sm_\d+a?)\.cubin", listing))  # "ELF file 5: libbitsandbytes_cuda130.5.sm_90.cubin"
    wanted = {f"sm_{code}" for code in target.sm_codes}
    assert wanted <= arches, listing[:500]
    if built.bnb_tree:
        assert arches == wanted, f"compiled for exactly the target's SMs, found {sorted(arches)}"


def test_triton_cache_holds_kernels_for_the_target_sms_and_launcher_modules(client, built, config, target, nvidia):
    if not target.warm_triton_cache:
        pytest.skip(f"{target.id} ships no warm Triton cache")
    script = ("cd /opt/triton-cache && find . -name '*.json' ! -name '__grp__*' -exec cat {} + | "
              "python -c \"import sys,json,re; d=sys.stdin.read(); print(sorted(set(re.findall(r'\\\"arch\\\": ?(\\\\d+)', d))))\"; "
              "find . -name '*.cubin' | wc -l; find . -name '*.so*' | sed 's|.*/||' | sort -u")
    out = in_image(client, built.image_id, script).splitlines()
    assert out[0] == str(sorted(target.sm_codes)), out
    assert int(out[1]) >= 6 * len(target.sm_codes), "the probe's six kernels, compiled for each SM"
    modules = out[2:]
    assert any(m.startswith("cuda_utils") for m in modules), modules
    assert "libcuda.so.1" in modules, "the stub the host modules were linked against (TRITON_LIBCUDA_PATH)"
    triton = tuple(int(x) for x in config["Labels"]["io.imagefactory.triton"].split(".")[:2])
    if triton < (3, 7):  # from 3.7 on, kernels launch through cuda_utils: no per-kernel launcher module
        assert any("launcher" in m for m in modules), modules


def test_sbom_lists_the_venv(client, built, target):
    sbom = json.loads(in_image(client, built.image_id, "cat /opt/imagefactory/sbom.cdx.json"))
    assert sbom["bomFormat"] == "CycloneDX"
    names = {c["name"] for c in sbom["components"]}
    assert {"torch", target.triton_package, "bitsandbytes", "transformers"} <= names


def test_no_layer_holds_the_ca_bundle_or_a_secret(client, built, tmp_path, target):
    if not HOST_CA_BUNDLE.is_file():
        pytest.skip("host has no CA bundle")
    base_bundle = subprocess.run([client.executable, "run", "--rm", "--network", "none", target.base.build,
                                  "cat", "/etc/ssl/certs/ca-certificates.crt"], capture_output=True, check=False).stdout
    # The host's bundle may also hold public roots the base's (older) Debian bundle lacks and pip's certifi has:
    # those are no secret. Public = the Mozilla bundle vendored in this test runner's own pip.
    from pip._vendor import certifi

    public = Path(certifi.where()).read_bytes()
    secret_certs = extra_certificates(HOST_CA_BUNDLE.read_bytes(), base_bundle + public)
    if not secret_certs:
        pytest.skip("the host trusts no certificate beyond the image's: no proxy CA to leak")
    archive = tmp_path / "image.tar"
    subprocess.run([client.executable, "save", "-o", str(archive), built.image_id], check=True)
    try:
        leaks = _layer_leaks(archive, secret_certs)
    finally:
        archive.unlink()  # 7 GB: pytest keeps the last runs' tmp dirs (a full disk took the daemon down once)
    assert not leaks


def _layer_leaks(archive: Path, secret_certs: set[bytes]) -> list[str]:
    """`layer: path` of every secret mount and every file holding one of `secret_certs` in a `docker save` archive."""
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
    return leaks


def test_venv_ships_in_the_planned_layers_with_fixed_times(client, built, site, target):
    """imagefactory/plan/venv_layers.py: one layer per planned name, in plan order, none over 40% of the image,
    the per-target one small; every file of the venv carries the plan's fixed time (the same bytes on every
    builder)."""
    from imagefactory.plan.venv_layers import LAYERS, VENV_EPOCH

    rows = subprocess.run([client.executable, "history", "--no-trunc", "--human=false", "--format", "{{.Size}}|{{.CreatedBy}}",
                           built.image_id], capture_output=True, text=True, check=True).stdout.splitlines()[::-1]
    history = [(int(size), created) for size, created in (row.split("|", 1) for row in rows)]
    layers = [(created.split("/layers/")[1].split("/")[0], size) for size, created in history if "/layers/" in created]
    assert [name for name, _ in layers] == list(LAYERS)
    total = sum(size for size, _ in history)
    largest = max(size for _, size in layers)
    assert largest <= 0.4 * total, f"largest venv layer {largest / 1e9:.2f} GB of {total / 1e9:.2f} GB"
    assert dict(layers)["bitsandbytes"] < 50_000_000
    times = in_image(client, built.image_id, f"find /opt/venv {site}/torch/lib -maxdepth 1 -printf '%T@\\n' | sort -u")
    assert {float(t) for t in times.split()} == {float(VENV_EPOCH)}
