"""imagefactory/plan/venv_layers.py: the layer plan of /opt/venv, and the split the venv-layers stage runs.

The split runs here as the build runs it (the file as a script, `python3 -I`, standard library only) on a
small venv-shaped tree; the image tests check the built image's layers."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from imagefactory.plan import venv_layers
from imagefactory.plan.venv_layers import GROUPS, LAYERS, VENV_EPOCH, group_of, plan

SCRIPT = Path(venv_layers.__file__)
SITE = "lib/python3.11/site-packages"


def make_venv(root: Path, bnb_library: bytes = b"sm90") -> Path:
    venv = root / "opt" / "venv"
    files = {
        f"{SITE}/nvidia/cu13/lib/libcublas.so.13": b"c" * 5000,
        f"{SITE}/nvidia/cudnn/lib/libcudnn.so.9": b"d" * 4000,
        f"{SITE}/nvidia/nccl/lib/libnccl.so.2": b"n" * 3000,
        f"{SITE}/nvidia_cublas-13.0.0.dist-info/RECORD": b"r",
        f"{SITE}/torch/lib/libtorch_cuda.so": b"t" * 6000,
        f"{SITE}/torch/__init__.py": b"import os\n",
        f"{SITE}/triton/backends/nvidia/bin/ptxas": b"p" * 2000,
        f"{SITE}/transformers/__init__.py": b"x = 1\n",
        f"{SITE}/unsloth/__init__.py": b"y = 2\n",
        f"{SITE}/bitsandbytes/__init__.py": b"z = 3\n",
        f"{SITE}/bitsandbytes/libbitsandbytes_cuda130.so": bnb_library,
        f"{SITE}/bitsandbytes-0.50.2.dist-info/RECORD": b"b",
        "bin/python3": b"#!/bin/sh\n",
        "pyvenv.cfg": b"home = /usr/bin\n",
    }
    for relative, data in files.items():
        path = venv / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (venv / "bin/python3").chmod(0o755)
    (venv / "bin/python").symlink_to("python3")
    (venv / "lib64").symlink_to("lib")
    (venv / "include").mkdir()  # empty: still shipped
    return venv


def split(venv: Path, out: Path) -> subprocess.CompletedProcess[str]:
    # as the Dockerfile runs it: the file alone, isolated mode (no project on the path)
    return subprocess.run([sys.executable, "-I", str(SCRIPT), "split", str(venv), str(out)],
                          capture_output=True, text=True, check=False)


def layer_tar(out: Path, name: str) -> bytes:
    """The layer as a tar in path order (what Docker stores is a tar of the same entries)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = out / name
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return buffer.getvalue()


def test_groups_by_what_changes_together():
    assert group_of(f"{SITE}/nvidia/cu13/lib/libcublas.so.13").name == "cuda"
    assert group_of(f"{SITE}/nvidia_cudnn_cu13-9.1.dist-info/RECORD").name == "cuda"
    assert group_of(f"{SITE}/torch/__init__.py").name == "torch"
    assert group_of(f"{SITE}/triton-3.8.0.dist-info/METADATA").name == "torch"
    assert group_of(f"{SITE}/bitsandbytes/libbitsandbytes_cuda130.so").name == "bitsandbytes"
    assert group_of(f"{SITE}/transformers/__init__.py").name == "python"
    assert group_of("bin/torchrun").name == "python"  # outside site-packages: the venv's own files
    assert group_of("lib/python3.11/site-packages").name == "python"
    assert LAYERS[-1] == "bitsandbytes" and len(set(LAYERS)) == len(LAYERS)


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=40))
def test_parts_are_in_path_order_and_about_equal(sizes: list[int]):
    entries = [(f"{SITE}/nvidia/lib/f{index:03d}", size) for index, size in enumerate(sizes)]
    layer_of = plan(entries)
    names = GROUPS[0].layer_names()
    indexes = [names.index(layer_of[relative]) for relative, _ in entries]
    assert indexes == sorted(indexes)  # contiguous runs: a new file moves at most one boundary
    total = sum(sizes)
    for name in names:
        part = sum(size for (relative, size) in entries if layer_of[relative] == name)
        assert part <= total / len(names) + max(sizes)


def test_split_puts_every_file_in_one_layer_with_its_mode_and_fixed_times(tmp_path):
    venv = make_venv(tmp_path / "a")
    out = tmp_path / "layers"
    done = split(venv, out)
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in done.stdout.splitlines()] == list(LAYERS)
    seen: dict[str, str] = {}
    for name in LAYERS:
        root = out / name / "opt" / "venv"
        for path in root.rglob("*"):
            relative = str(path.relative_to(root))
            assert os.lstat(path).st_mtime == VENV_EPOCH, (name, relative)
            if path.is_dir() and not path.is_symlink():
                continue
            assert relative not in seen, f"{relative} in {seen.get(relative)} and {name}"
            seen[relative] = name
    originals = {str(p.relative_to(venv)) for p in venv.rglob("*") if p.is_symlink() or not p.is_dir()}
    assert set(seen) == originals
    assert seen[f"{SITE}/bitsandbytes/libbitsandbytes_cuda130.so"] == "bitsandbytes"
    assert seen[f"{SITE}/torch/lib/libtorch_cuda.so"].startswith("torch-")
    assert {seen[f"{SITE}/nvidia/{lib}"] for lib in ("cu13/lib/libcublas.so.13", "cudnn/lib/libcudnn.so.9",
                                                     "nccl/lib/libnccl.so.2")} == {"cuda-1", "cuda-2", "cuda-3"}
    python = out / "python" / "opt" / "venv"
    assert os.readlink(python / "bin/python") == "python3" and os.readlink(python / "lib64") == "lib"
    assert (python / "bin/python3").stat().st_mode & 0o777 == 0o755
    assert (python / "include").is_dir()  # an empty directory is kept
    assert (out / "torch-1" / "opt" / "venv" / SITE / "torch/__init__.py").read_bytes() == b"import os\n"


def test_two_targets_differing_only_in_bitsandbytes_share_every_other_layer(tmp_path):
    """What makes a second arch target cheap: same tars below the bitsandbytes layer, even when the two
    venvs were made at different times."""
    hopper = make_venv(tmp_path / "hopper", bnb_library=b"sass sm_90")
    ampere = make_venv(tmp_path / "ampere", bnb_library=b"sass sm_80")
    os.utime(ampere / SITE / "torch/__init__.py", (1, 1))  # installed at another time
    assert split(hopper, tmp_path / "h").returncode == 0 and split(ampere, tmp_path / "a").returncode == 0
    for name in LAYERS[:-1]:
        digest_h = hashlib.sha256(layer_tar(tmp_path / "h", name)).hexdigest()
        digest_a = hashlib.sha256(layer_tar(tmp_path / "a", name)).hexdigest()
        assert digest_h == digest_a, name
    assert layer_tar(tmp_path / "h", "bitsandbytes") != layer_tar(tmp_path / "a", "bitsandbytes")


def test_split_refuses_a_missing_venv_or_a_used_output(tmp_path):
    done = split(tmp_path / "nowhere", tmp_path / "out")
    assert done.returncode == 2 and "no such directory" in done.stderr and not (tmp_path / "out").exists()
    venv = make_venv(tmp_path / "a")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    done = split(venv, tmp_path / "used")
    assert done.returncode == 2 and "not empty" in done.stderr
    usage = subprocess.run([sys.executable, "-I", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
