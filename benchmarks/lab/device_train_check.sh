# One device call: a 24-update enwik8 training run with CUDA graphs, its resume to 36, and the eager
# 4K/16K attention table (triton vs cuDNN). Run on the device: bash benchmarks/lab/device_train_check.sh
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
find src docs benchmarks tests -name '*.py' -o -name '*.md' | sort | xargs cat > /tmp/corpus.txt
mkdir -p /tmp/dd
python -m sparse_transformer prepare text --path /tmp/corpus.txt --data-dir /tmp/dd --out-name=corpus --no-progress 2>&1 | tail -1
TR="python -m sparse_transformer train --preset enwik8 --data-dir /tmp/dd --dataset corpus --out /tmp/e --no-progress --train.device=cuda --train.batch_size=2 --train.log_interval=4 --train.eval_interval=12 --train.ckpt_interval=12 --train.eval_batches=1"
timeout 100 $TR --train.max_steps=24 > $OUT/train.log 2>&1
timeout 80 $TR --train.max_steps=36 --resume > $OUT/train-resume.log 2>&1
grep -hE "^step|first step|resumed|done|rror" $OUT/train.log $OUT/train-resume.log
timeout 90 python benchmarks/attention.py --device cuda --methods triton sdpa-cudnn --cases strided fixed --sizes 4096 16384 --graph --out $OUT/attention-4k.json > $OUT/attention.log 2>&1
grep -v -i warn $OUT/attention.log | tail -12
