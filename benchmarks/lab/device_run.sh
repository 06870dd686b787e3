#!/usr/bin/env bash
# The one device call for issues 5, 7 and 8 (one GPU): every part under its own timeout, JSON
# written to $OUT as each part goes, a short summary printed last.
#
#   (1) memory.py: audio-1m and audio-65k (then audio-262k) as configured: peak memory and step
#       time of one full training step; then without recomputation (expected: out of memory)
#   (2) model.py: enwik8 preset, dense vs fixed vs strided, bf16, batch 2
#   (3) scaling.py at K=1: `torchrun --nproc_per_node=1 -m sparse_transformer train` with
#       train.distributed=ddp and =fsdp on CUDA (the issue-7 commands), enwik8, 8 updates
#   (4) memory.py --sweep: small model (4 L, 4 H, d 256), N = 4K..256K, strided +/- recompute,
#       dense (Triton, flash-style) and dense with materialised scores (reference backend)
#
#   on the device:  bash benchmarks/lab/device_run.sh            (OUT set by the device tool)
#   smoke test:     SMOKE=1 OUT=/tmp/out bash benchmarks/lab/device_run.sh   (CPU, tiny sizes)
set -u
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
PY=${PY:-python3}
LOG="$OUT/log.txt"
T0=$(date +%s)

part() {  # part NAME SECONDS CMD...
  local name=$1 secs=$2
  shift 2
  echo "=== $name (limit ${secs}s, at +$(( $(date +%s) - T0 ))s)" | tee -a "$LOG"
  timeout -k 10 "$secs" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc after +$(( $(date +%s) - T0 ))s" | tee -a "$LOG"
}

{
  $PY -c 'import safetensors, tqdm, numpy, torch; print("packages ok, torch", torch.__version__)'
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
} >>"$LOG" 2>&1

if [ "${SMOKE:-0}" = 1 ]; then
  DEV="--device cpu"
  PRESETS="tiny-cpu"
  MODEL_ARGS="--presets tiny-cpu --steps 1 --warmup 1 --rows gpt-eager fixed-eager"
  SCALE_ARGS="--preset tiny-cpu --steps 3 --skip 1 --per-gpu-batch 2 -- --model.ctx=32"
  SWEEP_ARGS="--sizes 256 1024 --small 2,2,32 --dense-max 1024 --materialized-max 256"
else
  DEV="--device cuda"
  PRESETS="audio-1m audio-65k audio-262k"
  MODEL_ARGS="--presets enwik8 --steps 4"
  SCALE_ARGS="--preset enwik8 --steps 8 --skip 3 --per-gpu-batch 2 --timeout 75"
  SWEEP_ARGS="--sizes 4096 16384 65536 262144 --small 4,4,256 --steps 2"
fi

# shellcheck disable=SC2086
part memory-presets 160 $PY benchmarks/memory.py $DEV --presets $PRESETS --no-recompute-too \
  --steps 2 --json "$OUT/memory-presets.json"
# shellcheck disable=SC2086
part model 120 $PY benchmarks/model.py $DEV $MODEL_ARGS --json "$OUT/model.json" --md "$OUT/model.md"
# shellcheck disable=SC2086
part scaling-k1 165 $PY benchmarks/scaling.py $DEV --ks 1 --modes ddp fsdp --work /tmp/scaling \
  --out "$OUT/scaling-k1" $SCALE_ARGS
# shellcheck disable=SC2086
part memory-sweep 85 $PY benchmarks/memory.py $DEV --sweep $SWEEP_ARGS --json "$OUT/memory-sweep.json"

echo "=== summary (+$(( $(date +%s) - T0 ))s)"
grep -hE "^(audio|tiny|strided|dense|preset)|ms/step|step time|tok/s|K=1|loss check|===|Error|error" "$LOG" \
  | grep -v "^W1" | tail -60
