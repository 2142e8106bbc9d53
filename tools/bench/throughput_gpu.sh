#!/usr/bin/env bash
# Decode throughput on one GPU, in one device call (issue 15 point 4), run from the repo root:
#   tools/bench/throughput_gpu.sh BUNDLE_DIR OUT_DIR [CONTEXT, default 32768]
# 1. a server with random weights of the 8B shape on GPU 0, driven over HTTP by
#    tools/bench/throughput_http.py at 1, 4, 16 and 64 concurrent streams (the context per stream
#    is CONTEXT where the KV of all streams fits the GPU's free memory after loading, less where
#    not: the table says what ran);
# 2. transformers' batched generate (tools/bench/hf_batched_generate.py) on the same shapes, after
#    the server is gone.
# Writes OUT_DIR/throughput.md (both tables), throughput_http.json, hf_batched.json and the logs.
# The shape: THROUGHPUT_CONFIG (default tools/bench/llama31_8b_config.json) with its vocabulary
# replaced by the byte vocabulary (259 ids; THROUGHPUT_VOCAB=full keeps the config's): a chunk then
# streams per token with logprobs at the cost of a 1 KiB logits row per stream and step, where the
# 128,256-id vocabulary would copy 512 KiB and take a log-softmax over it on the host per stream
# and step, inside the measured steps. The 8B body (32 layers, 4096 hidden, 32/8 heads, 14336 MLP)
# is unchanged; only the LM head shrinks (1 GiB less read per step).
# THROUGHPUT_SERVER=cluster (default: serve + one worker process on the same GPU, under MPS; the
# head's query actor batches the decode of all running requests) or local (serve-local).
# THROUGHPUT_STREAMS (default 1,4,16,64), THROUGHPUT_TOKENS (new tokens per stream, default 256: the steady window starts
# once the last stream has its first token, and earlier streams decode while later ones prefill),
# THROUGHPUT_PHASE1_CHUNK (default 0: each request's phase 1 runs whole at admission, so every
# stream of a level decodes together after the level's prefills; with chunks interleaved into the
# running decodes, the default of a server, the last stream of 16 starts decoding after the first
# has long finished its tokens, and no window has all streams decoding).
# THROUGHPUT_SHARED=1: one document for every stream (--shared-context, an 8 GiB context cache):
# the streams share its K/V and their context attention is stacked.
# THROUGHPUT_HF=0 skips step 2. Every step is bounded by timeout; everything started is killed.
set -u
B=$1
OUT=$2
CONTEXT=${3:-32768}
[ -f "$B/env.sh" ] && . "$B/env.sh"
export OMP_WAIT_POLICY=passive
S="$B/bin/starattn"
CFG_IN=${THROUGHPUT_CONFIG:-tools/bench/llama31_8b_config.json}
SERVER=${THROUGHPUT_SERVER:-cluster}
STREAMS=${THROUGHPUT_STREAMS:-1,4,16,64}
TOKENS=${THROUGHPUT_TOKENS:-256}
mkdir -p "$OUT"
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee "$OUT/gpu.txt"

CFG="$OUT/config.json"
if [ "${THROUGHPUT_VOCAB:-byte}" = full ]; then
  cp "$CFG_IN" "$CFG"; CHUNKS=logprobs
else
  python3 - "$CFG_IN" "$CFG" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(vocab_size=259, bos_token_id=256, eos_token_id=257, tie_word_embeddings=False)
json.dump(c, open(sys.argv[2], "w"), indent=1)
EOF
  CHUNKS=logprobs
fi

cleanup() {
  [ -n "${TP_PID:-}" ] && kill -TERM -- "-$TP_PID" 2>/dev/null
  [ -n "${HF_PID:-}" ] && kill -TERM -- "-$HF_PID" 2>/dev/null
  [ "${MPS_ON:-0}" = 1 ] && echo quit | nvidia-cuda-mps-control
}
trap cleanup EXIT
if [ "$SERVER" = cluster ] && [ "${THROUGHPUT_MPS:-1}" = 1 ]; then
  # A head and a worker process sharing one GPU: under MPS their kernels share one context
  # instead of being time-sliced (docs/PERFORMANCE.md: 2x decode without it).
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/starattn-mps CUDA_MPS_LOG_DIRECTORY=/tmp/starattn-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d && MPS_ON=1 && say "MPS on"
fi

say "=== starattn over HTTP ($SERVER), $(python3 -c "import json;c=json.load(open('$CFG'));print(c['num_hidden_layers'],'layers, hidden',c['hidden_size'],', vocab',c['vocab_size'])"), streams $STREAMS, context <= $CONTEXT, $TOKENS new tokens"
# setsid: the tool and the servers it starts form one process group that cleanup() can end.
setsid timeout "${THROUGHPUT_HTTP_TIMEOUT:-300}" python3 tools/bench/throughput_http.py --cli "$S" --config "$CFG" \
  --device cuda --server "$SERVER" --streams "$STREAMS" --context "$CONTEXT" --max-tokens "$TOKENS" \
  --token-chunks "$CHUNKS" --phase1-chunk "${THROUGHPUT_PHASE1_CHUNK:-0}" --start-timeout 180 --server-log "$OUT/server.log" \
  ${THROUGHPUT_SHARED:+--shared-context --context-cache-bytes 8589934592} \
  --json "$OUT/throughput_http.json" --title "starattn $SERVER on $(sed -n 2p "$OUT/gpu.txt" | cut -d, -f1)" \
  > "$OUT/throughput_http.md" 2> "$OUT/throughput_http.err" &
TP_PID=$!
wait $TP_PID
say "throughput_http rc=$?"
kill -TERM -- "-$TP_PID" 2>/dev/null  # servers left behind if the tool was cut by its timeout
TP_PID=
tail -n 8 "$OUT/throughput_http.err" | tee -a "$OUT/summary.txt"
cat "$OUT/throughput_http.md" | tee -a "$OUT/summary.txt"
[ "${MPS_ON:-0}" = 1 ] && echo quit | nvidia-cuda-mps-control && MPS_ON=0

if [ "${THROUGHPUT_HF:-1}" = 1 ]; then
  # The same batch sizes and context per stream as the HTTP rows.
  CTXS=$(python3 -c "import json;print(','.join(f\"{r['streams']}:{r['context']}\" for r in json.load(open('$OUT/throughput_http.json'))['rows']))" 2>/dev/null)
  say "=== transformers batched generate (contexts ${CTXS:-$CONTEXT})"
  setsid timeout "${THROUGHPUT_HF_TIMEOUT:-150}" python3 tools/bench/hf_batched_generate.py --config "$CFG" \
    --batches "$STREAMS" --context "$CONTEXT" ${CTXS:+--contexts "$CTXS"} --max-new-tokens "${THROUGHPUT_HF_TOKENS:-16}" \
    --json "$OUT/hf_batched.json" > "$OUT/hf_batched.md" 2> "$OUT/hf_batched.err" &
  HF_PID=$!
  wait $HF_PID
  say "hf_batched_generate rc=$?"
  kill -TERM -- "-$HF_PID" 2>/dev/null
  HF_PID=
  tail -n 8 "$OUT/hf_batched.err" | tee -a "$OUT/summary.txt"
  cat "$OUT/hf_batched.md" | tee -a "$OUT/summary.txt"
fi
{ cat "$OUT/throughput_http.md"; echo; [ -f "$OUT/hf_batched.md" ] && cat "$OUT/hf_batched.md"; } > "$OUT/throughput.md"
