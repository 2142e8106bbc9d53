#!/usr/bin/env bash
# One lease, everything measured: GPU tests, prefill tile variants, the kernel table against
# PyTorch, and the end-to-end table against transformers. Run from the repository root on the
# GPU machine:  tools/bench/device_run.sh BUNDLE_DIR OUT_DIR [e2e contexts]
# BUNDLE_DIR is a deploy/bundle.sh output holding starattn, test_cuda_ops and test_cuda_engine.
set -u
B=$1
OUT=$2
CONTEXTS=${3:-32768,131072}
. "$B/env.sh"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
step() { echo "=== $*"; }
step tests
timeout 240 "$B/bin/test_cuda_ops" 2>&1 | tail -n 25 | tee "$OUT/tests.log"
timeout 240 "$B/bin/test_cuda_engine" 2>&1 | grep -E "capacity error|FAIL|OK \]|PASSED|SKIPPED|Failure|error|Expected|Which|actual" | tee -a "$OUT/tests.log"
for v in w8n64 w4n32 w8n32; do
  step "attention tests with STARATTN_PREFILL_VARIANT=$v"
  STARATTN_PREFILL_VARIANT=$v timeout 60 "$B/bin/test_cuda_ops" --gtest_filter='*ttention*' 2>&1 | tail -n 3 | tee -a "$OUT/tests.log"
done
step "prefill variants"
for v in w4n64 w8n64 w4n32 w8n32; do
  echo "variant $v" | tee -a "$OUT/variants.log"
  STARATTN_PREFILL_VARIANT=$v timeout 60 "$B/bin/starattn" bench kernels --torch none --seqs 16384 --iters 5 2>&1 \
    | grep -E "^(causal|unmasked)" | tee -a "$OUT/variants.log"
done
step "kernels"
timeout 240 "$B/bin/starattn" bench kernels 2>"$OUT/kernels.err" | tee "$OUT/kernels.txt"
tail -n 30 "$OUT/kernels.err"
step "e2e"
timeout 330 "$B/bin/starattn" bench e2e --random-weights tools/bench/llama31_8b_config.json --contexts "$CONTEXTS" \
  --workers 4 --query 16 --decode-tokens 32 2>"$OUT/e2e.err" | tee "$OUT/e2e.txt"
tail -n 20 "$OUT/e2e.err"
