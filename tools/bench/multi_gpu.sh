#!/usr/bin/env bash
# Usage: tools/bench/multi_gpu.sh BUNDLE_DIR OUT_DIR   (from the repository root, on a 2-GPU machine)
# Two GPUs: one worker process per GPU plus the head; star results vs the single-process run,
# data-plane round trips, time to first token with 1 and 2 GPUs at 64K context.
set -u
B=$1; OUT=$2
. $B/env.sh
export OMP_WAIT_POLICY=passive
S=$B/bin/starattn
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 $p 2>/dev/null; done; }
trap cleanup EXIT
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
t0=$(date +%s)
$S init-model --config tools/bench/llama32_1b_config.json --seed 1 --out /tmp/m 2>&1 | tail -1
echo "model written in $(( $(date +%s) - t0 )) s"
python3 -c "
import random; r=random.Random(3); w='harbor lantern copper meadow signal winter orchard stone river market'.split()
print(' '.join(r.choice(w) for _ in range(11000)))" | head -c 65536 > /tmp/ctx.txt
Q="What is the last word?"
common=(--context-file /tmp/ctx.txt --query "$Q" --max-tokens 16 --ignore-eos --output ids)
echo "=== single process, 2 context actors on GPU 0 (reference)"
timeout 240 $S run --model /tmp/m --device cuda --workers 2 "${common[@]}" --dump-logits $OUT/local.bin > $OUT/local.ids 2> $OUT/local.err
echo "rc=$?"; tail -6 $OUT/local.err
$S serve --listen 127.0.0.1:47001 --model /tmp/m --device cuda --gpu 0 > $OUT/head.log 2>&1 & pids+=($!)
$S worker --head 127.0.0.1:47001 --model /tmp/m --gpus 0 > $OUT/w0.log 2>&1 & pids+=($!)
echo "=== head + 1 worker (GPU 0)"
timeout 240 $S run --head 127.0.0.1:47001 --min-workers 1 "${common[@]}" > $OUT/one.ids 2> $OUT/one.err
echo "rc=$?"; tail -6 $OUT/one.err
$S worker --head 127.0.0.1:47001 --model /tmp/m --gpus 1 > $OUT/w1.log 2>&1 & pids+=($!)
echo "=== head + 2 workers (GPU 0, GPU 1)"
timeout 240 $S run --head 127.0.0.1:47001 --min-workers 2 "${common[@]}" --dump-logits $OUT/remote.bin > $OUT/two.ids 2> $OUT/two.err
echo "rc=$?"; tail -6 $OUT/two.err
echo "local ids:  $(cat $OUT/local.ids)"
echo "remote ids: $(cat $OUT/two.ids)"
cmp $OUT/local.bin $OUT/remote.bin && echo "logits identical" || python3 -c "
import numpy as np; a=np.fromfile('$OUT/local.bin','<f4'); b=np.fromfile('$OUT/remote.bin','<f4')
print('logits differ: max abs', float(np.max(np.abs(a-b))) if a.size==b.size else ('sizes', a.size, b.size))"
rm -f $OUT/local.bin $OUT/remote.bin
tail -5 $OUT/head.log
