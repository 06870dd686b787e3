#!/usr/bin/env bash
# One device call for the attention kernels (issue 4): each part under its own timeout, its log and
# JSON under $OUT, a short summary printed last.
#
#   bash benchmarks/lab/device_kernels.sh sweep     # kernel_sweep.py (every variant)
#   bash benchmarks/lab/device_kernels.sh explore   # the sweep, checks under non-default launch
#                                                   #   policies (delta pre-pass always; the fixed
#                                                   #   forward on its own 64-row tiles), attention.py
#                                                   #   (triton, sdpa, sdpa-cudnn, with graphs)
#   bash benchmarks/lab/device_kernels.sh final     # gpu_check.py (defaults), attention.py (every
#                                                   #   method, with graphs), GPU pytest of the kernels
set -u
WHAT=${1:?usage: device_kernels.sh sweep|explore|final}
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
PY=${PY:-python3}
T0=$(date +%s)

part() {  # part NAME SECONDS CMD...: the command's output goes to $OUT/NAME.log
  local name=$1 secs=$2
  shift 2
  echo "=== $name (limit ${secs}s, at +$(( $(date +%s) - T0 ))s)"
  timeout -k 10 "$secs" "$@" >"$OUT/$name.log" 2>&1
  echo "=== $name: rc=$? after +$(( $(date +%s) - T0 ))s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1
$PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
sweep() {
  part sweep "${SWEEP_LIMIT:-330}" $PY benchmarks/lab/kernel_sweep.py \
    --cases fixed:16384 fixed:65536 strided:16384 strided:65536 --out "$OUT/kernel-sweep.json"
}

case $WHAT in
  sweep)
    sweep
    grep -A40 "^case " "$OUT/sweep.log" | head -40
    ;;
  explore)
    sweep
    part check-prepass 70 $PY benchmarks/lab/gpu_check.py --no-sweep --sizes 0 --only strided \
      --set inline_delta_max_rows=0 --out "$OUT/check-prepass"
    part check-fwd64 70 $PY benchmarks/lab/gpu_check.py --no-sweep --sizes 0 --only fixed \
      --set 'fwd_block_long={64: 64}' --out "$OUT/check-fwd64"
    part attention "${ATTN_LIMIT:-170}" $PY benchmarks/attention.py --device cuda \
      --methods triton sdpa sdpa-cudnn --graph --out "$OUT/attention.json"
    grep -A40 "^case " "$OUT/sweep.log" | head -40
    for c in check-prepass check-fwd64; do grep "^CHECK" "$OUT/$c.log"; done
    grep "^|" "$OUT/attention.log"
    ;;
  final)
    part check 120 $PY benchmarks/lab/gpu_check.py --no-sweep --sizes 4096 --profile-host --out "$OUT/check"
    part attention "${ATTN_LIMIT:-360}" $PY benchmarks/attention.py --device cuda --graph \
      --out "$OUT/attention.json"
    part pytest "${TEST_LIMIT:-300}" $PY -m pytest -q tests/test_triton.py tests/test_attention.py tests/test_flex.py
    grep "^CHECK" "$OUT/check.log"
    grep "^|" "$OUT/attention.log"
    tail -3 "$OUT/pytest.log"
    ;;
  *) echo "unknown part $WHAT: sweep, explore or final" >&2; exit 2 ;;
esac
echo "total +$(( $(date +%s) - T0 ))s"
# At most 8 files come back from the device: everything in one archive.
(cd "$OUT" && tar czf /tmp/results.tgz . && mv /tmp/results.tgz . && find . -type f ! -name results.tgz -delete \
  && find . -mindepth 1 -type d -empty -delete)
