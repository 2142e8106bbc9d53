#!/usr/bin/env bash
# Second lease: GPU tests (default kernels and the decode KT=16 variant) and the decode variants.
#   tools/bench/device_run2.sh BUNDLE_DIR OUT_DIR
set -u
B=$1
OUT=$2
if [ -f "$B/env.sh" ]; then . "$B/env.sh"; else export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}; fi
STARATTN=${STARATTN:-$B/bin/starattn}
timeout 120 "$B/bin/test_cuda_ops" 2>&1 | tail -n 3 | tee "$OUT/tests.log"
timeout 120 "$B/bin/test_cuda_engine" 2>&1 | grep -E "FAIL|OK \]|PASSED|Failure|Expected|actual" | tee -a "$OUT/tests.log"
echo "=== STARATTN_DECODE_KEYS=16" | tee -a "$OUT/tests.log"
STARATTN_DECODE_KEYS=16 timeout 90 "$B/bin/test_cuda_ops" --gtest_filter='*ttention*' 2>&1 | tail -n 3 | tee -a "$OUT/tests.log"
STARATTN_DECODE_KEYS=16 timeout 90 "$B/bin/test_cuda_engine" --gtest_filter='*CudaEngine*' 2>&1 | tail -n 3 | tee -a "$OUT/tests.log"
for k in 32 16 32 16; do
  echo "decode keys per tile $k" | tee -a "$OUT/decode.log"
  STARATTN_DECODE_KEYS=$k timeout 60 "$STARATTN" bench kernels --torch none --seqs 1024 --iters 3 2>/dev/null \
    | grep -E "^(decode T|device-to)" | tee -a "$OUT/decode.log"
done
