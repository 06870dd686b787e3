#!/usr/bin/env bash
# Issue 9 on one GPU: one half of the paper's Table 2 per device call (about 8 minutes each).
#
#   bash benchmarks/lab/device_reproduce.sh text      # needs the dict-gcide .deb in $RAW
#   bash benchmarks/lab/device_reproduce.sh images    # needs the dataset-fashion-mnist .deb in $RAW
#
# The device has no network: the Debian packages travel with the call (`sparse-transformer
# prepare gcide` / `prepare fashion-mnist` leave them in data/raw; copy them to the carried
# folder RAW). Writes reproduce-<half>.{json,md,png} and a log to $OUT. MODEL=1 adds the enwik8
# step-time benchmark (benchmarks/model.py, issue 5) after the half.
# CPU smoke test: PY=.venv/bin/python RAW=data/raw DEVICE=cpu SMOKE=1 BUDGET=2 \
#   bash benchmarks/lab/device_reproduce.sh images
set -u
HALF=${1:?usage: device_reproduce.sh text|images}
OUT=${OUT:-/tmp/reproduce-out}
RAW=${RAW:-.carry/raw}
DATA=${DATA:-/tmp/data}
mkdir -p "$OUT"
export PYTHONPATH=${SRC:-src} PYTHONUNBUFFERED=1
PY=${PY:-python3}
case $HALF in
  text) NAME=gcide; DEB=$(ls "$RAW"/dict-gcide_*.deb); BUDGET=${BUDGET:-300} ;;
  images) NAME=fashion-mnist; DEB=$(ls "$RAW"/dataset-fashion-mnist_*.deb); BUDGET=${BUDGET:-200} ;;
  *) echo "unknown half $HALF: text or images" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -m sparse_transformer prepare "$NAME" --path "$DEB" --data-dir "$DATA" --no-progress || exit 1
timeout -k 10 "${LIMIT:-480}" $PY benchmarks/reproduce.py --half "$HALF" --data-dir "$DATA" \
  --out "$OUT" --work /tmp/runs --budget-s "$BUDGET" --device "${DEVICE:-cuda}" ${SMOKE:+--smoke} --no-progress >"$OUT/reproduce-$HALF-log.txt" 2>&1
echo "reproduce rc=$?"
grep -E "^(probe|=== |dense |fixed |strided |[0-9]+ updates)|Error|error" "$OUT/reproduce-$HALF-log.txt" | tail -30
cat "$OUT/reproduce-$HALF.md" 2>/dev/null
if [ "${MODEL:-0}" = 1 ]; then
  timeout -k 10 "${MODEL_LIMIT:-300}" $PY benchmarks/model.py --presets enwik8 \
    --steps 5 --json "$OUT/model.json" --md "$OUT/model.md" 2>&1 | grep -v "^W1" | tail -12
fi
