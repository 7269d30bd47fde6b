#!/bin/bash
# The Unsloth workload proof on any NVIDIA GPU with Unsloth installed (python on PATH, probe/ importable from
# the directory this runs in): warm Unsloth's Triton kernels with the GPU hidden, into a fresh cache, in a fresh
# process; replay that cache with the GPU hidden (the image gate's CPU check); then Unsloth QLoRA on local random
# models of the proof shapes (2 layers, real widths and vocab), twice each, with that cache: every run must make
# 0 Triton compiles. Then the padded (torch.compile) path on one shape, cold and again, and the gpu-marked tests.
#   scripts/unsloth-proof.sh OUTDIR [SHAPE...]      (GPU_SM=90 by default; SHAPES_FILE overrides the shapes file)
# OUTDIR gets warm.json, check.json, run_a_<shape>.json, run_b_<shape>.json, padded_*.json, pytest.log, summary.txt
set -u
OUTDIR=${1:?usage: unsloth-proof.sh OUTDIR [SHAPE...]}; shift
SHAPES=${*:-llama-3.2-1b qwen2.5-0.5b qwen3-0.6b}
SM=${GPU_SM:-90}
W=$(mktemp -d /tmp/unsloth-proof.XXXXXX)
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 \
  HF_HOME=$W/hf TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true
SF=()
[ -n "${SHAPES_FILE:-}" ] && SF=(--shapes "$SHAPES_FILE")
sel=$(python3 -c "import json,sys;from probe.workload import load_shapes;n=sys.argv[1:];print(json.dumps({'generated_from':'unsloth-proof.sh','shapes':[dict(s.__dict__) for s in load_shapes(${SHAPES_FILE:+'$SHAPES_FILE'}) if s.name in n]}))" $SHAPES)
echo "$sel" > $W/shapes.json
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUTDIR/summary.txt"
python3 -c "from probe.workload import versions; print(versions())" | tee -a "$OUTDIR/summary.txt"

t0=$SECONDS
CUDA_VISIBLE_DEVICES= python3 -m probe warm --sm $SM --workload unsloth --shapes $W/shapes.json --cache-dir $W/tc --json > "$OUTDIR/warm.json"
echo "warm (GPU hidden, fresh cache): rc=$? $((SECONDS - t0)) s, $(find $W/tc -type f | wc -l) files" | tee -a "$OUTDIR/summary.txt"
t0=$SECONDS
CUDA_VISIBLE_DEVICES= python3 -m probe warm --sm $SM --workload unsloth --shapes $W/shapes.json --cache-dir $W/tc --check --json > "$OUTDIR/check.json"
echo "replay check (GPU hidden): rc=$? $((SECONDS - t0)) s" | tee -a "$OUTDIR/summary.txt"

export TRITON_CACHE_DIR=$W/tc TRITON_LIBCUDA_PATH=$W/tc/imagefactory-stub
for run in a b; do
  t0=$SECONDS
  for s in $SHAPES; do
    python3 -m probe workload --shape $s --shapes $W/shapes.json --steps 10 --models-dir $W/models --json > "$OUTDIR/run_${run}_$s.json" 2> "$OUTDIR/run_${run}_$s.err" &
  done
  wait
  echo "QLoRA runs $run (shapes in parallel): $((SECONDS - t0)) s" | tee -a "$OUTDIR/summary.txt"
done
python3 - "$OUTDIR" $SHAPES <<'PY' | tee -a "$OUTDIR/summary.txt"
import json, sys
out, shapes = sys.argv[1], sys.argv[2:]
for s in shapes:
    rows = []
    for run in "ab":
        try:
            doc = json.load(open(f"{out}/run_{run}_{s}.json"))
            c = next(c for c in doc["checks"] if c["name"].startswith("workload.qlora"))
            rows.append((run, c["status"], c["numbers"].get("total_compiles"), c["numbers"].get("first_step_s"),
                         c["numbers"].get("later_step_s"), c["numbers"].get("import_unsloth_s"), c["reason"][:120]))
        except Exception as exc:
            rows.append((run, "error", str(exc)[:100]))
    print(s, rows)
    if len(rows) == 2 and all(len(r) > 3 and r[3] for r in rows):
        print(f"  first step run a / run b = {rows[0][3] / rows[1][3]:.2f}")
PY

# padded path (per-block torch.compile): cold inductor cache, then again; Triton cache = the warm one (copied)
first=${SHAPES%% *}
cp -a $W/tc $W/tc_pad
for run in cold again; do
  t0=$SECONDS
  UNSLOTH_PADDING_CHOICE=padded TRITON_CACHE_DIR=$W/tc_pad TRITON_LIBCUDA_PATH=$W/tc_pad/imagefactory-stub \
    python3 -m probe workload --shape $first --shapes $W/shapes.json --steps 10 --models-dir $W/models --json \
    > "$OUTDIR/padded_$run.json" 2> "$OUTDIR/padded_$run.err"
  echo "padded $run: rc=$? $((SECONDS - t0)) s; inductor files /tmp/torchinductor_$(id -un): $(find /tmp/torchinductor_$(id -un) -type f 2>/dev/null | wc -l)" | tee -a "$OUTDIR/summary.txt"
done
