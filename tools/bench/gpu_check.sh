#!/usr/bin/env bash
# Everything checked and measured on a GPU machine in one go (one device lease):
#   tools/bench/gpu_check.sh BUNDLE_DIR OUT_DIR [e2e contexts, default 32768,131072]
# BUNDLE_DIR is a deploy/bundle.sh output (starattn + test binaries); run from the repository root.
# Steps (GPU_CHECK_STEPS, a comma-separated subset; default all):
#   tests     the GPU test suites
#   actors    the actor path on the GPU against the Engine path
#   hf_cpu    tools/reference/hf_compare.py, float32 on the cpu backend against transformers
#   hf_cuda   the same in bf16 on the GPU
#   kernels   kernel benchmarks against PyTorch
#   e2e       end to end against transformers on a Llama-3.1-8B-shaped random model
# All of it takes more than one 10-minute device call; e.g. GPU_CHECK_STEPS=tests,hf_cuda,e2e
# (about 8 minutes with both contexts: the 8B random model loads in ~50 s, HF's too).
# At the end every file it wrote goes into OUT_DIR/gpu_check.tar.gz, beside summary.txt
# (GPU_CHECK_PACK=0 leaves them loose): a lent machine may send back only a few files per call.
set -u
B=$1
OUT=$2
CONTEXTS=${3:-32768,131072}
. "$B/env.sh"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=passive
S="$B/bin/starattn"
STEPS=",${GPU_CHECK_STEPS:-tests,actors,hf_cpu,hf_cuda,kernels,e2e},"
want() { [[ $STEPS == *",$1,"* ]]; }
step() { echo "=== $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"

if want tests; then
step "gpu tests"
for t in test_cuda_ops test_cuda_decode test_cuda_engine; do
  timeout 240 "$B/bin/$t" > "$OUT/$t.log" 2>&1
  echo "$t rc=$? $(grep -E 'PASSED|FAILED' "$OUT/$t.log" | tail -n 2 | tr '\n' ' ')" | tee -a "$OUT/summary.txt"
done
fi

if want actors; then
step "actors on the gpu: 2 context actors in one process vs the Engine path"
m=$(mktemp -d)
"$S" init-model --config tools/bench/byte_d64_config.json --seed 3 --out "$m/model" 2>/dev/null
ctx=$(python3 -c "import random; r=random.Random(1); print(','.join(str(r.randrange(256)) for _ in range(700)))")
for path in "--engine" ""; do
  timeout 120 "$S" run --model "$m/model" --device cuda --workers 2 --context-ids "$ctx" \
    --query-ids 5,6,7 --max-tokens 12 --ignore-eos --output ids $path > "$m/out$path.txt" 2>> "$OUT/actors.err"
  echo "run $path rc=$? ids: $(cat "$m/out$path.txt")" | tee -a "$OUT/summary.txt"
done
fi

if want hf_cpu; then
step "hf_compare float32 on the cpu backend, on this machine's transformers"
timeout 200 python3 tools/reference/hf_compare.py --starattn "$S" --device cpu \
  --out-md "$OUT/hf_compare_cpu.md" > "$OUT/hf_compare_cpu.log" 2>&1
echo "hf_compare cpu rc=$?" | tee -a "$OUT/summary.txt"
tail -n 1 "$OUT/hf_compare_cpu.log" | tee -a "$OUT/summary.txt"
fi

if want hf_cuda; then
step "hf_compare bf16 on the gpu"
timeout 300 python3 tools/reference/hf_compare.py --starattn "$S" --device cuda --tol 3e-2 \
  --out-md "$OUT/hf_compare_cuda.md" > "$OUT/hf_compare.log" 2>&1
echo "hf_compare rc=$?" | tee -a "$OUT/summary.txt"
tail -n 3 "$OUT/hf_compare.log" | tee -a "$OUT/summary.txt"
fi

if want kernels; then
step "kernels"
timeout 200 "$S" bench kernels 2> "$OUT/kernels.err" | tee "$OUT/kernels.txt"
fi

if want e2e; then
step "end to end"
timeout 480 "$S" bench e2e --random-weights tools/bench/llama31_8b_config.json --contexts "$CONTEXTS" \
  --workers 4 --query 16 --decode-tokens 32 2> "$OUT/e2e.err" | tee "$OUT/e2e.txt"
tail -n 5 "$OUT/e2e.err"
fi

if [ "${GPU_CHECK_PACK:-1}" = 1 ]; then
  (cd "$OUT" && tar czf gpu_check.tar.gz --exclude=gpu_check.tar.gz --exclude=summary.txt . &&
     find . -mindepth 1 -maxdepth 1 ! -name gpu_check.tar.gz ! -name summary.txt -exec rm -rf {} +)
fi
