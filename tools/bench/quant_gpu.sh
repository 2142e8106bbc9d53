#!/usr/bin/env bash
# A Q4_K model on the GPU beside bf16 weights of the same shape, in one device call (issue 14:
# resident memory and decode speed of a Q4_K model, CPU and GPU):
#   tools/bench/quant_gpu.sh BUNDLE_DIR OUT_DIR
# Run from the repository root; BUNDLE_DIR is a deploy/bundle.sh output (bin/starattn, env.sh).
# 1. writes a Llama-3.1-8B-shaped GGUF of random Q4_K weights (tools/quant/random_kquant_gguf.py,
#    python3 with numpy; ~4.5 GB) to local disk: a real Q4_K file cannot be carried there;
# 2. `starattn run --model Q4K.gguf` and `starattn run --random-weights CONFIG` (bf16 weights of
#    the same shape), same context and query ids, 64 tokens with --ignore-eos; for each: phase 1,
#    first-token and decode ms/token from starattn's stderr, wall time (load included), GPU memory
#    used (nvidia-smi sampled every 0.5 s; the peak, less what was used before the run) and the
#    host's peak RSS (/usr/bin/time -v, else VmHWM sampled from /proc).
# OUT_DIR gets summary.txt (the table), each run's stderr and ids, and the writer's log.
# Settings (environment): QUANT_CONFIG (default tools/bench/llama31_8b_config.json; the 1B one,
# tools/bench/llama32_1b_config.json, if time is short), QUANT_CONTEXT (tokens, 4096),
# QUANT_TOKENS (64), QUANT_DEVICE (cuda; cpu works too, for a small shape), QUANT_THREADS (cpu
# threads, default all), QUANT_DIR (where the GGUF is written, default /tmp/starattn-quant; it
# is deleted at the end unless QUANT_KEEP=1).
# Expected time with the 8B shape on an H100 host: writing ~10-20 s, each run ~1 min (most of it
# loading: the GGUF is dequantized on the host, the random weights are drawn on the host).
set -u
B=$1
OUT=$2
mkdir -p "$OUT"
. "$B/env.sh"
export OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
S="$B/bin/starattn"
CFG=${QUANT_CONFIG:-tools/bench/llama31_8b_config.json}
CONTEXT=${QUANT_CONTEXT:-4096}
TOKENS=${QUANT_TOKENS:-64}
DEVICE=${QUANT_DEVICE:-cuda}
DIR=${QUANT_DIR:-/tmp/starattn-quant}
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
have_smi() { [ "$DEVICE" = cuda ] && command -v nvidia-smi > /dev/null; }
gpu_used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | tr -d ' '; }

: > "$OUT/summary.txt"
if have_smi; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/summary.txt"; fi
say "config $CFG, device $DEVICE, context $CONTEXT tokens, $TOKENS tokens generated (--ignore-eos), $(nproc) cpus"

mkdir -p "$DIR"
gguf="$DIR/random_q4k.gguf"
t0=$(date +%s.%N)
if ! python3 tools/quant/random_kquant_gguf.py "$CFG" "$gguf" --seed 1 > "$OUT/writer.log" 2>&1; then
  say "FAILED: writing the Q4_K GGUF"; cat "$OUT/writer.log"; exit 1
fi
say "wrote $(tail -n 1 "$OUT/writer.log") [$(since "$t0") s wall]"
say "disk: $(df -h "$DIR" | tail -n 1)"

# The same ids for both runs: bytes, which both vocabularies spell the same way.
ctx=$(python3 -c "import random; r = random.Random(7); print(','.join(str(r.randrange(32, 127)) for _ in range($CONTEXT)))")
query="119,104,97,116,32,105,115,32,116,104,101,32,102,105,114,115,116,32,119,111,114,100,63"

# run LABEL ARGS...: one starattn run, monitored.
run() {
  local label=$1; shift
  local err="$OUT/run_$label.err" ids="$OUT/ids_$label.txt" mon="$OUT/monitor_$label.txt"
  local base=0 timing=()
  if have_smi; then base=$(gpu_used_mib); fi
  local time_bin=${QUANT_TIME_BIN:-/usr/bin/time}  # GNU time; the /proc samples stand in without it
  [ -x "$time_bin" ] && timing=("$time_bin" -v -o "$OUT/time_$label.txt")
  local start=$(date +%s.%N)
  timeout -k 10 200 ${timing[@]+"${timing[@]}"} "$S" run "$@" --device "$DEVICE" ${QUANT_THREADS:+--threads $QUANT_THREADS} \
      --context-ids "$ctx" --query-ids "$query" --max-tokens "$TOKENS" --ignore-eos --output ids \
      > "$ids" 2> "$err" &
  local pid=$!
  : > "$mon"
  # Sample the GPU's memory and the starattn process's high-water RSS while it runs.
  while kill -0 "$pid" 2> /dev/null; do
    local gpu="" hwm=""
    if have_smi; then gpu=$(gpu_used_mib); fi
    local sp=$pid c  # the leaf of timeout -> (time ->) starattn
    while c=$(pgrep -P "$sp" 2> /dev/null | head -n 1) && [ -n "$c" ]; do sp=$c; done
    [ "$sp" != "$pid" ] && hwm=$(awk '/VmHWM/ {print $2}' "/proc/$sp/status" 2> /dev/null)
    echo "$(date +%s.%N) gpu_mib=${gpu:-na} vmhwm_kb=${hwm:-na}" >> "$mon"
    sleep 0.5
  done
  wait "$pid"
  local rc=$? wall
  wall=$(since "$start")
  local gpu_peak="na" rss_kb
  if have_smi; then
    gpu_peak=$(sed -n 's/.*gpu_mib=\([0-9]*\).*/\1/p' "$mon" | sort -n | tail -n 1)
    gpu_peak="$((gpu_peak - base)) MiB (peak ${gpu_peak}, before ${base})"
  fi
  if [ -f "$OUT/time_$label.txt" ]; then
    rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$OUT/time_$label.txt")
  else
    rss_kb=$(sed -n 's/.*vmhwm_kb=\([0-9]*\).*/\1/p' "$mon" | sort -n | tail -n 1)
  fi
  local first decode phase1 tokens
  tokens=$(sed -n 's/^\[[a-z]*\] \(context [0-9]* tokens, query [0-9]* tokens\).*/\1/p' "$err")
  phase1=$(sed -n 's/^phase 1 (context encoding): \([0-9.]*\) ms.*/\1/p' "$err")
  first=$(sed -n 's/^first token (query prefill): \([0-9.]*\) ms.*/\1/p' "$err")
  decode=$(sed -n 's/^decode: \([0-9.]*\) ms\/token.*/\1/p' "$err")
  say "$label rc=$rc | ${tokens:-?} | phase 1 ${phase1:-?} ms | first token ${first:-?} ms | decode ${decode:-?} ms/token |" \
      "wall ${wall} s (load included) | GPU memory ${gpu_peak} | host peak RSS $(( ${rss_kb:-0} / 1024 )) MiB"
  [ "$rc" = 0 ] || tail -n 5 "$err" | tee -a "$OUT/summary.txt"
}

say "=== runs"
run q4k_gguf --model "$gguf"
run bf16_random --random-weights "$CFG"
say "generated ids (different weights, so different ids; the count must be $TOKENS):"
for f in "$OUT"/ids_*.txt; do say "  $(basename "$f"): $(wc -w < "$f") ids, first $(cut -d' ' -f1-8 < "$f")"; done
[ "${QUANT_KEEP:-0}" = 1 ] || rm -f "$gguf"
