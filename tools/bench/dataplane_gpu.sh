#!/usr/bin/env bash
# The data plane on one GPU machine, in one device call (issue: the distributed path at the speed
# of the hardware):
#   tools/bench/dataplane_gpu.sh BUNDLE_DIR OUT_DIR [contexts, default 32768]
# DATAPLANE_MPS=1 starts NVIDIA's MPS daemon for the run (a head and a worker process sharing one
# GPU then run in one GPU context instead of being time-sliced; every run of the call uses it).
# 1. the GPU test suites;
# 2. bench-transport: the cuda_ipc round trip of one decode row of the 8B shape (32 heads x 128,
#    bf16) between two processes, beside UCX's own floor (ucx_perftest, same host, same size) and
#    the staged host path over shared memory and over tcp;
# 3. end to end, 8B shape (random weights), per context length: the in-process Engine, the actors
#    in one process, and a head plus one worker process on the same GPU, in full and star mode,
#    with the token ids of each run kept so they can be compared (DATAPLANE_RUNS=engine_full,...
#    keeps only the one-process runs named);
#    (step "procs": the head + worker process runs; "e2e": the one-process runs);
# 4. (step "remote") the head plus a worker that says it is on another host: UCX over tcp with
#    device memory handed to UCX (ucx_device), and staged by us, for comparison.
# Everything lands in OUT_DIR, packed into OUT_DIR/dataplane.tar.gz with summary.txt beside it.
set -u
B=$1
OUT=$2
CONTEXTS=${3:-32768}
. "$B/env.sh"
export OMP_WAIT_POLICY=passive
S="$B/bin/starattn"
CFG=tools/bench/llama31_8b_config.json
STEPS=",${DATAPLANE_STEPS:-tests,transport,e2e,procs,remote},"
want() { [[ $STEPS == *",$1,"* ]]; }
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
if [ "${DATAPLANE_MPS:-0}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/starattn-mps CUDA_MPS_LOG_DIRECTORY=/tmp/starattn-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d && say "MPS on"
  trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi

if want tests; then
  say "=== gpu tests"
  for t in test_cuda_ops test_cuda_decode test_cuda_engine test_cuda_data_plane; do
    timeout 240 "$B/bin/$t" > "$OUT/$t.log" 2>&1
    say "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/$t.log" | tr '\n' ' ')"
  done
fi

if want transport; then
  say "=== bench-transport (8B decode row: 32 heads x 128)"
  timeout 120 "$S" bench-transport --device cuda --rows 1,16 --iters 5000 --warmup 500 2>&1 | tee -a "$OUT/summary.txt"
  say "--- ucx_device: device memory handed to UCX, same host (UCX picks: cuda_ipc / shared memory)"
  timeout 120 "$S" bench-transport --device cuda --path ucx --rows 1,16,256 --iters 3000 --warmup 300 2>&1 | tee -a "$OUT/summary.txt"
  say "--- ucx_device as between hosts (UCX peer-failure mode: tcp + cuda_copy staging)"
  timeout 120 "$S" bench-transport --device cuda --path ucx --peer-failure detect --rows 1,16,256 --iters 2000 --warmup 200 2>&1 | tee -a "$OUT/summary.txt"
  say "--- staged host payloads, same host, shared memory"
  timeout 120 "$S" bench-transport --peer-failure control-plane --rows 1 --iters 5000 2>&1 | tee -a "$OUT/summary.txt"
  say "--- staged host payloads, UCX peer-failure mode (tcp)"
  timeout 120 "$S" bench-transport --peer-failure detect --rows 1 --iters 2000 2>&1 | tee -a "$OUT/summary.txt"
  if [ -x "$B/bin/ucx_perftest" ]; then
    for spec in "posix 8192 host" "cuda_ipc,cuda_copy,posix 8192 cuda" "tcp,cuda_copy 8192 cuda" "tcp 8192 host"; do
      set -- $spec
      say "--- ucx_perftest ucp_am_lat UCX_TLS=$1 size $2 memory $3"
      UCX_TLS=$1 LD_LIBRARY_PATH="$B/lib:${LD_LIBRARY_PATH:-}" timeout 60 "$B/bin/ucx_perftest" -t ucp_am_lat -s "$2" -m "$3" -n 20000 -w 2000 -p 13337 > "$OUT/perftest_server.log" 2>&1 &
      sleep 2
      UCX_TLS=$1 LD_LIBRARY_PATH="$B/lib:${LD_LIBRARY_PATH:-}" timeout 60 "$B/bin/ucx_perftest" 127.0.0.1 -t ucp_am_lat -s "$2" -m "$3" -n 20000 -w 2000 -p 13337 2>&1 | tail -n 4 | tee -a "$OUT/summary.txt"
      wait
    done
  fi
fi

if want e2e || want remote; then
  for C in ${CONTEXTS//,/ }; do
    ctx="$OUT/context_$C.txt"
    python3 -c "import random,sys; r=random.Random(7); sys.stdout.write(''.join(chr(97+r.randrange(26)) if r.random()>0.15 else ' ' for _ in range($C)))" > "$ctx"
    common=(--random-weights "$CFG" --device cuda --context-file "$ctx" --query "what is the first word" --max-tokens 64 --ignore-eos --output ids)
    run() {  # label, then extra arguments
      local label=$1; shift
      [ -z "${DATAPLANE_RUNS:-}" ] || [[ ",$DATAPLANE_RUNS," == *",$label,"* ]] || return 0
      STARATTN_LOG_PATHS=1 timeout 300 "$S" run "${common[@]}" "$@" > "$OUT/ids_${C}_$label.txt" 2> "$OUT/run_${C}_$label.err"
      say "$C $label rc=$? | $(grep -E 'first token|decode:|data plane|phase 1' "$OUT/run_${C}_$label.err" | tr '\n' ' ')"
    }
    say "=== e2e 8B shape, context $C"
    want e2e || DATAPLANE_RUNS=none
    run engine_full --engine --mode full
    run engine_star4 --engine --mode star --workers 4
    run actors_full1 --mode full --workers 1
    run actors_star4 --mode star --workers 4
    # A head and one worker process on the same GPU (CUDA IPC between them).
    if want procs; then
    port=$((7800 + RANDOM % 100))
    timeout 600 "$S" serve --listen 127.0.0.1:$port --random-weights "$CFG" --device cuda > "$OUT/serve_$C.log" 2>&1 &
    spid=$!
    timeout 600 "$S" worker --head 127.0.0.1:$port --random-weights "$CFG" --gpus 0 > "$OUT/worker_$C.log" 2>&1 &
    wpid=$!
    # full twice: the first request on a fresh cluster pays one-time costs (CUDA IPC mappings,
    # lazily loaded kernels in the worker), the second shows the steady state.
    for label in full star full_again; do
      STARATTN_LOG_PATHS=1 timeout 300 "$S" run --head 127.0.0.1:$port --min-workers 1 --context-file "$ctx" \
        --query "what is the first word" --max-tokens 64 --ignore-eos --output ids --mode "${label%_again}" \
        > "$OUT/ids_${C}_procs_$label.txt" 2> "$OUT/run_${C}_procs_$label.err"
      say "$C procs_$label rc=$? | $(grep -E 'first token|decode:|data plane|phase 1' "$OUT/run_${C}_procs_$label.err" | tr '\n' ' ')"
    done
    grep -h "data paths\|cuda_ipc" "$OUT/serve_$C.log" "$OUT/worker_$C.log" | head -n 6 | tee -a "$OUT/summary.txt"
    kill $spid $wpid 2>/dev/null; wait $spid $wpid 2>/dev/null
    fi
    # The worker as if on another host (STARATTN_HOST_ID): no CUDA IPC, UCX over tcp, with
    # device memory handed to UCX (ucx_device) and, for comparison, staged by us.
    if want remote; then
      for dm in 1 0; do
        port=$((7900 + RANDOM % 100))
        STARATTN_UCX_DEVICE_MEMORY=$dm timeout 600 "$S" serve --listen 127.0.0.1:$port --random-weights "$CFG" --device cuda > "$OUT/serve_remote${dm}_$C.log" 2>&1 &
        spid=$!
        STARATTN_UCX_DEVICE_MEMORY=$dm STARATTN_HOST_ID=another-host timeout 600 "$S" worker --head 127.0.0.1:$port --random-weights "$CFG" --gpus 0 > "$OUT/worker_remote${dm}_$C.log" 2>&1 &
        wpid=$!
        for label in full full_again; do
          STARATTN_LOG_PATHS=1 timeout 300 "$S" run --head 127.0.0.1:$port --min-workers 1 --context-file "$ctx" \
            --query "what is the first word" --max-tokens 64 --ignore-eos --output ids --mode full \
            > "$OUT/ids_${C}_remote${dm}_$label.txt" 2> "$OUT/run_${C}_remote${dm}_$label.err"
          say "$C remote(device memory=$dm)_$label rc=$? | $(grep -E 'first token|decode:|data plane|phase 1' "$OUT/run_${C}_remote${dm}_$label.err" | tr '\n' ' ')"
        done
        grep -h "data paths" "$OUT/serve_remote${dm}_$C.log" | head -n 2 | tee -a "$OUT/summary.txt"
        kill $spid $wpid 2>/dev/null; wait $spid $wpid 2>/dev/null
      done
    fi
    for f in "$OUT"/ids_${C}_*.txt; do say "$(basename "$f"): $(md5sum < "$f" | cut -c1-12) $(head -c 60 "$f")"; done
  done
fi
cd "$OUT" && tar czf dataplane.tar.gz --exclude dataplane.tar.gz --exclude 'context_*' . && ls -la "$OUT" | head -5
