#!/usr/bin/env bash
# The probe's proof on a real GPU, rerunnable by anyone with one (needs torch, triton, transformers, peft,
# bitsandbytes and gcc; run from the repository root):
#   1. the whole probe and smoke suite on the GPU, every check passing;
#   2. warm the Triton cache with the GPU hidden, then smoke-train with it: zero compiles at the first step,
#      first step cold vs warm side by side (goal: warm >= 5x faster);
#   3. probe + smoke together under 90 s;
#   plus the warm cache checked on the CPU (GPU hidden), as the image gate does, and the GPU-marked pytest tests.
# Usage: scripts/gpu-proof.sh [OUTDIR]   (default reports/gpu-proof; JSON documents and summary.json land there)
#   GPU_SM=8.6 overrides the SM read from nvidia-smi (GPU 0).
set -uo pipefail
out=${1:-reports/gpu-proof}
py=${PYTHON:-python3}
cap=${GPU_SM:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1)}
if [[ ! $cap =~ ^[0-9]+\.[0-9]$ ]]; then
  echo "gpu-proof: no NVIDIA GPU's compute capability from nvidia-smi (got '${cap}'); set GPU_SM=9.0" >&2
  exit 2
fi
sm=${cap/./}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cold_probe="$work/cold-probe-cache" cold="$work/cold-smoke-cache" warmc="$work/warm-cache"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
now() { date +%s.%N; }

echo "== 1+3. probe then smoke, cold Triton cache"
t0=$(now)
TRITON_CACHE_DIR=$cold_probe $py -m probe --json --model-size 8b --expect sm=$cap >"$out/probe-cold.json" 2>"$out/probe-cold.err"; rc_probe_cold=$?
t1=$(now)
TRITON_CACHE_DIR=$cold $py -m probe smoke --json >"$out/smoke-cold.json" 2>"$out/smoke-cold.err"; rc_smoke_cold=$?
t2=$(now)

echo "== 2. warm for sm_$sm with the GPU hidden"
CUDA_VISIBLE_DEVICES= $py -m probe warm --sm $sm --cache-dir "$warmc" >"$out/warm.txt" 2>&1; rc_warm=$?
t3=$(now)
cat "$out/warm.txt"

echo "== 2+3. probe (warm-cache check on the GPU) then smoke, warm Triton cache"
# as the image does: triton >= 3.7 keys its host modules on the libcuda dir the warm-up linked against
export TRITON_LIBCUDA_PATH=$warmc/imagefactory-stub
TRITON_CACHE_DIR=$warmc PROBE_EXPECT_WARM_CACHE=1 PROBE_EXPECT_SM=$cap $py -m probe --json >"$out/probe-warm.json" 2>"$out/probe-warm.err"; rc_probe_warm=$?
t4=$(now)
TRITON_CACHE_DIR=$warmc $py -m probe smoke --json >"$out/smoke-warm.json" 2>"$out/smoke-warm.err"; rc_smoke_warm=$?
t5=$(now)

echo "== the gate's CPU check of the warm cache (GPU hidden)"
CUDA_VISIBLE_DEVICES= TRITON_CACHE_DIR=$warmc PROBE_EXPECT_WARM_CACHE=1 PROBE_EXPECT_SM=$cap $py -m probe --json >"$out/probe-cpu-warmcheck.json" 2>"$out/probe-cpu.err"; rc_cpu=$?

echo "== GPU tests and the warm-cache tests"
unset TRITON_LIBCUDA_PATH
$py -m pytest -q -p no:cacheprovider tests/probe/test_gpu.py tests/probe/test_warm.py >"$out/pytest-gpu.txt" 2>&1; rc_pytest=$?
tail -3 "$out/pytest-gpu.txt"

OUTDIR=$out $py - "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" \
  "$rc_probe_cold" "$rc_smoke_cold" "$rc_warm" "$rc_probe_warm" "$rc_smoke_warm" "$rc_cpu" "$rc_pytest" <<'PY'
import json, os, sys
t = [float(x) for x in sys.argv[1:7]]
rc = dict(zip(["probe_cold", "smoke_cold", "warm", "probe_warm", "smoke_warm", "cpu_warm_check", "pytest_gpu"],
              map(int, sys.argv[7:])))
out = os.environ["OUTDIR"]
load = lambda n: json.load(open(os.path.join(out, n)))
cold, warm = load("smoke-cold.json")["smoke"], load("smoke-warm.json")["smoke"]
failed = {n: [c["name"] for c in load(n)["checks"] if c["status"] == "fail"]
          for n in ["probe-cold.json", "smoke-cold.json", "probe-warm.json", "smoke-warm.json",
                    "probe-cpu-warmcheck.json"]}
speedup = cold["first_step_s"] / warm["first_step_s"]
summary = {
    "device": warm.get("device"), "dtype": warm.get("dtype"), "torch": warm.get("torch"),
    "exit_codes": rc, "failed_checks": failed,
    "first_step_cold_s": cold["first_step_s"], "first_step_warm_s": warm["first_step_s"],
    "first_step_speedup": round(speedup, 1), "goal_speedup": 5,
    "first_step_compiles_cold": cold["first_step_triton_compiles"],
    "first_step_compiles_warm": warm["first_step_triton_compiles"],
    "first_step_new_cache_files_warm": warm["first_step_new_cache_files"],
    "steady_step_ms": round(warm["steady_step_s"] * 1e3, 2), "tokens_per_s": warm["tokens_per_s"],
    "peak_memory_mib": warm["peak_memory_mib"], "triton_startup_s": [cold.get("triton_startup_s"), warm.get("triton_startup_s")],
    "prepass_s": [cold.get("prepass_s"), warm.get("prepass_s")], "losses_warm": [warm["losses"][0], warm["losses"][-1]],
    "probe_plus_smoke_cold_s": round(t[2] - t[0], 1), "probe_plus_smoke_warm_s": round(t[5] - t[3], 1),
    "warm_up_s": round(t[3] - t[2], 1), "goal_total_s": 90,
}
summary["all_goals_met"] = (all(v == 0 for v in rc.values()) and speedup >= 5
                            and warm["first_step_triton_compiles"] == 0
                            and summary["probe_plus_smoke_warm_s"] < 90)
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["all_goals_met"] else 1)
PY
