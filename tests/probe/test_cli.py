"""CPU tests of the command contract: report, JSON document and schema, exit codes, --expect, stdlib-only import."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from probe import cli, expect, report, verify
from probe.detect import parse_nvidia_smi, parse_rocminfo
from probe.results import Status
from tests.probe.conftest import fake_detection, h100

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "probe" / "schema.json").read_text())


def run_json(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main(["--json", *args])
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, SCHEMA)
    return code, doc


def statuses(doc: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in doc["checks"]}


def test_cpu_host_passes_with_stated_skips(cpu_host, capsys):
    code, doc = run_json(capsys)
    assert code == 0 and doc["ok"] and doc["exit_code"] == 0
    checks = statuses(doc)
    assert checks["gpu.visible"] == "skip" and checks["bench.matmul_bf16"] == "skip"
    assert all(c["reason"] for c in doc["checks"])
    assert doc["decisions"]["dtype"]["value"] == "float32"
    assert doc["detection"]["gpu_count"] == 0


def test_require_gpu_turns_the_skip_into_a_failure(cpu_host, capsys):
    code, doc = run_json(capsys, "--require-gpu")
    assert code == 1 and statuses(doc)["gpu.visible"] == "fail"


def test_expect_mismatch_fails_and_shows_both_values(cpu_host, capsys):
    code, doc = run_json(capsys, "--expect", "torch=2.11.0", "--expect", "cuda=13.0")
    assert code == 1
    bad = next(c for c in doc["checks"] if c["name"] == "expect.torch")
    assert bad["status"] == "fail" and "2.11.0" in bad["reason"] and "2.14.1" in bad["reason"]
    assert statuses(doc)["expect.cuda"] == "pass"


def test_expectations_from_environment(cpu_host, capsys, monkeypatch):
    monkeypatch.setenv("PROBE_EXPECT_PYTHON", "3.12")
    monkeypatch.setenv("PROBE_EXPECT_VENDOR", "nvidia")  # no GPU: compared with torch's CUDA build
    code, doc = run_json(capsys)
    assert code == 1
    assert statuses(doc)["expect.python"] == "fail" and statuses(doc)["expect.vendor"] == "pass"
    assert doc["expected"] == {"python": "3.12", "vendor": "nvidia"}


def test_command_line_expectation_overrides_environment(monkeypatch):
    assert expect.parse(["torch=2.14.1"], {"PROBE_EXPECT_TORCH": "2.11.0"}) == {"torch": "2.14.1"}


def test_model_size_adds_a_memory_plan(cpu_host, capsys):
    _, doc = run_json(capsys, "--model-size", "8b")
    assert doc["decisions"]["memory"]["params"] == 8_000_000_000


@pytest.mark.parametrize("args", [["--expect", "colour=blue"], ["--expect", "torch"], ["--model-size", "big"],
                                  ["--bogus"], ["smoke", "--steps", "2"], ["warm"], ["warm", "--sm", "ninety"],
                                  ["select", "--bogus"], ["select", "--gpu-sm", "9.0"]])
def test_usage_errors_exit_2_with_one_line(cpu_host, capsys, args):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_unknown_environment_expectation_is_a_usage_error(cpu_host, capsys, monkeypatch):
    monkeypatch.setenv("PROBE_EXPECT_COLOUR", "blue")
    assert cli.main([]) == 2
    assert "PROBE_EXPECT_COLOUR" in capsys.readouterr().err


def test_readable_report(cpu_host, capsys):
    assert cli.main(["--model-size", "1b"]) == 0
    out = capsys.readouterr().out
    for heading in ("Detection", "Decisions", "Checks", "OK: "):
        assert heading in out
    assert "skip  gpu.visible" in out and "memory     4-bit=" in out


def test_missing_torch_is_a_clear_failure_not_a_crash(monkeypatch, capsys):
    import probe.detect

    monkeypatch.setattr(probe.detect, "detect", lambda with_torch=True: fake_detection(torch=False))
    code, doc = run_json(capsys)
    assert code == 1
    bad = next(c for c in doc["checks"] if c["status"] == "fail")
    assert bad["name"] == "torch.import" and "No module named 'torch'" in bad["reason"]


def test_detection_imports_with_the_standard_library_alone():
    code = ("import sys; import probe.cli, probe.detect, probe.decide, probe.verify, probe.report, probe.warm, "
            "probe.expect, probe.shapes, probe.select; "
            "heavy = {'torch', 'triton', 'bitsandbytes', 'numpy'} & set(sys.modules); print(sorted(heavy))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_bare_run_in_a_subprocess_prints_valid_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBE_EXPECT_")}
    done = subprocess.run([sys.executable, "-m", "probe", "--json"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)
    doc = json.loads(done.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert done.returncode == doc["exit_code"] and "Traceback" not in done.stderr


def test_nvidia_smi_rows_parse():
    gpus, driver = parse_nvidia_smi("0, NVIDIA H200, 9.0, 143771, 143156, 580.159.04\n"
                                    "1, Tesla V100-SXM2-16GB, 7.0, 16384, 16000, 580.159.04\n")
    assert driver == "580.159.04"
    assert [(g.name, g.cc, g.vram_total_mib) for g in gpus] == [("NVIDIA H200", (9, 0), 143771),
                                                                 ("Tesla V100-SXM2-16GB", (7, 0), 16384)]


def test_rocminfo_gpu_agents_parse():
    text = ("Agent 1\n  Name:                    AMD EPYC 9654 96-Core Processor\n  Marketing Name:          AMD EPYC\n"
            "Agent 2\n  Name:                    gfx942\n  Marketing Name:          AMD Instinct MI300X\n"
            "  ISA 1\n    Name:                    amdgcn-amd-amdhsa--gfx942:sramecc+:xnack-\n"
            "Agent 3\n  Name:                    gfx942\n")
    assert [(g.index, g.gfx, g.vendor) for g in parse_rocminfo(text)] == [(0, "gfx942", "amd"), (1, "gfx942", "amd")]


@pytest.mark.parametrize("arch,status", [(("sm_80", "sm_90"), Status.PASS), (("sm_80", "compute_80"), Status.WARN),
                                         (("sm_100", "sm_120"), Status.FAIL), (("sm_90a", "compute_120f"), Status.PASS),
                                         (("sm_80", "compute_100f"), Status.FAIL)])
def test_sm_coverage_native_ptx_or_missing(arch, status):
    assert verify.sm_covered(fake_detection(gpus=[h100()], arch=arch)).status is status


def test_ptx_only_names_the_newest_usable_ptx():
    from probe.results import Gpu

    rtx5090 = Gpu(0, "NVIDIA GeForce RTX 5090", "nvidia", "12.0", None, 32_607, 32_000)
    check = verify.sm_covered(fake_detection(gpus=[rtx5090], arch=("sm_90", "compute_90", "compute_100")))
    assert check.status is Status.WARN and "PTX only (compute_100)" in check.reason


@pytest.mark.parametrize("torch_cuda,driver_cuda,status", [("13.0", "13.0", Status.PASS), ("12.8", "13.0", Status.PASS),
                                                           ("12.8", "12.4", Status.PASS), ("13.0", "12.9", Status.FAIL)])
def test_driver_new_enough(torch_cuda, driver_cuda, status):
    det = fake_detection(gpus=[h100()], cuda=torch_cuda, driver_cuda=driver_cuda)
    assert verify.driver_new_enough(det).status is status


def test_gpu_listed_but_invisible_to_torch_fails_unless_hidden(monkeypatch):
    det = fake_detection(gpus=[h100()])
    det = dataclasses.replace(det, torch=dataclasses.replace(det.torch, cuda_available=False))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert verify.gpu_visible(det, False).status is Status.FAIL
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert verify.gpu_visible(det, False).status is Status.SKIP


def test_benchmark_below_70_percent_warns_but_does_not_fail():
    check = verify._against("bench.matmul_bf16", "matmul", 600.0, "TFLOP/s", 989.0, "NVIDIA H100")
    assert check.status is Status.WARN and "61%" in check.reason
    assert verify._against("bench.copy_d2d", "copy", 3000.0, "GB/s", 3350.0, "H100").status is Status.PASS


@pytest.mark.parametrize("text,sms", [("90", [90]), ("9.0", [90]), ("90,89", [90, 89]), ("sm_80, 8.6", [80, 86])])
def test_warm_sm_lists(text, sms):
    assert cli.parse_sms(text) == sms


@pytest.mark.parametrize("declared,cc,status", [("bf16", "9.0", Status.PASS), ("fp16", "9.0", Status.PASS),
                                                ("bf16", "7.5", Status.FAIL), ("fp16", "7.5", Status.PASS),
                                                ("int3", "9.0", Status.FAIL)])
def test_declared_dtype_must_run_on_the_gpu(declared, cc, status):
    from probe.results import Gpu

    det = fake_detection(gpus=[Gpu(0, "gpu", "nvidia", cc, None, 16_000, 15_000)])
    assert expect.check({"dtype": declared}, det)[0].status is status


def test_declared_dtype_is_skipped_without_a_gpu():
    assert expect.check({"dtype": "bf16"}, fake_detection())[0].status is Status.SKIP


def test_rocm_expectations():
    from probe.results import Gpu

    det = fake_detection(gpus=[Gpu(0, "AMD Instinct MI300X", "amd", None, "gfx942", 196_000, 190_000)])
    det = dataclasses.replace(det, torch=dataclasses.replace(det.torch, cuda=None, hip="6.4.43482-0f2d60242"))
    by_key = {c.name: c.status for c in expect.check({"gfx": "gfx942", "rocm": "6.4", "cuda": "13.0"}, det)}
    assert by_key == {"expect.gfx": Status.PASS, "expect.rocm": Status.PASS, "expect.cuda": Status.FAIL}
    assert expect.check({"gfx": "gfx90a"}, det)[0].status is Status.FAIL
    assert expect.check({"gfx": "gfx942"}, fake_detection())[0].status is Status.SKIP


@pytest.mark.parametrize("declared,status", [("9.0", Status.PASS), ("8.9,9.0", Status.PASS), ("8.0", Status.FAIL)])
def test_declared_sm_list_against_the_gpu(declared, status):
    check = expect.check({"sm": declared}, fake_detection(gpus=[h100()]))[0]
    assert check.status is status and check.numbers == {"declared": declared, "found": "9.0"}
    assert expect.check({"sm": declared}, fake_detection())[0].status is Status.SKIP


def test_bitsandbytes_library_must_match_torchs_cuda():
    bnb = {"packages": {"bitsandbytes": "0.50.2"}}

    def loaded(library, **kw):
        det = fake_detection(**kw, **bnb)
        return verify.bitsandbytes_loads(dataclasses.replace(det, bitsandbytes_library=library), {})

    lib = "/opt/venv/lib/python3.11/site-packages/bitsandbytes/libbitsandbytes_cuda{}.so"
    assert loaded(lib.format("130"), gpus=[h100()], cuda="13.0").status is Status.PASS
    wrong = loaded(lib.format("128"), gpus=[h100()], cuda="13.0")
    assert wrong.status is Status.FAIL and "libbitsandbytes_cuda130" in wrong.reason
    assert loaded(None, gpus=[h100()]).status is Status.FAIL  # installed, but no native library loaded
    assert loaded("/x/libbitsandbytes_cpu.so").status is Status.PASS  # no GPU: the CPU library is right
    missing = verify.bitsandbytes_loads(fake_detection(), {"bitsandbytes": "0.50.2"})
    assert missing.status is Status.FAIL and "declared" in missing.reason


def test_readable_smoke_figures_name_gpu_only_numbers_only_on_the_gpu():
    run = {"device": "NVIDIA H200", "dtype": "bfloat16", "optimizer": "bitsandbytes AdamW8bit", "first_step_s": 0.2345,
           "steady_step_s": 0.0123, "tokens_per_s": 83_252.0, "peak_memory_mib": 412.5, "first_step_triton_compiles": 0}
    assert report.render_smoke(run) == [
        "Smoke training on NVIDIA H200 (bfloat16, bitsandbytes AdamW8bit)",
        "  first step 0.234 s, steady 12.3 ms, 83,252 tokens/s, peak memory 412.5 MiB, Triton compiles in first step: 0"]
    cpu = report.render_smoke(run | {"device": "cpu", "peak_memory_mib": None, "first_step_triton_compiles": None})
    assert cpu[1] == "  first step 0.234 s, steady 12.3 ms, 83,252 tokens/s"
    assert report.render_smoke({}) == ["Smoke training on ? (?, ?)"]  # the suite crashed before it ran


def test_a_crashing_check_is_a_named_failure_not_a_traceback(cpu_host, capsys, monkeypatch):
    def broken(det):
        raise ValueError("odd arch list")

    monkeypatch.setattr(verify, "sm_covered", broken)
    code, doc = run_json(capsys)
    assert code == 1
    crashed = next(c for c in doc["checks"] if c["name"] == "check.crashed")
    assert crashed["status"] == "fail" and crashed["reason"] == "broken raised ValueError: odd arch list"
    assert statuses(doc)["gpu.visible"] == "skip"  # the other checks still ran
