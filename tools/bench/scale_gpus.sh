#!/usr/bin/env bash
# Star Attention over the GPUs of one machine, in one device call (issue 12 point 5), from the
# repository root:
#   tools/bench/scale_gpus.sh BUNDLE_DIR OUT_DIR [CONTEXT, default 130000]
# 8B shape with random weights (tools/bench/llama31_8b_config.json, its positions raised to 4M so
# the largest-context step can pass 128K), the head on GPU 0 beside worker 0 (MPS on every GPU),
# one worker process per GPU:
# 1. `starattn bench kernels --torch none` on GPU 0: the GEMM and attention rates the ideal
#    phase-1 time is computed from (tools/bench/ideal_ttft.py);
# 2. full attention on 1 GPU (`run --engine --mode full`), and for N = 1, 2, 4, 8 (up to the GPUs
#    there are) star on one process (`run --engine --mode star --workers N`: the reference ids);
# 3. the cluster with N workers, N growing (workers join the running head): `run --head` in star
#    mode at CONTEXT, TTFT, decode ms/token and ids (equal to step 2's for the same N);
# 4. the largest context the G workers take: a request far too large is refused naming what
#    fits ("at most M context tokens fit"); M tokens then run (phase 1 and 8 tokens).
# STARATTN_SCALE_ANCHOR=A sets the anchor (default: the block size, as the paper).
# Writes OUT_DIR/scale.md (the table) and summary.txt; every step is bounded by a timeout.
set -u
B=$1
OUT=$2
C=${3:-130000}
. "$B/env.sh"
export OMP_WAIT_POLICY=passive
S="$B/bin/starattn"
mkdir -p "$OUT"
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
G=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
say "GPUs: $G, context $C"
CFG="$OUT/config.json"
python3 - tools/bench/llama31_8b_config.json "$CFG" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["max_position_embeddings"] = 4 * 1024 * 1024  # random weights: lengths are the point
json.dump(c, open(sys.argv[2], "w"), indent=1)
EOF
ANCHOR=()
[ -n "${STARATTN_SCALE_ANCHOR:-}" ] && ANCHOR=(--anchor-size "$STARATTN_SCALE_ANCHOR")
text() { python3 -c "import random,sys; r=random.Random(7); sys.stdout.write(''.join(chr(97+r.randrange(26)) if r.random()>0.15 else ' ' for _ in range($1)))"; }
text "$C" > /tmp/scale_ctx.txt
common=(--context-file /tmp/scale_ctx.txt --query "what is the first word" --max-tokens 32 --ignore-eos --output ids)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  [ "${MPS_ON:-0}" = 1 ] && echo quit | nvidia-cuda-mps-control
}
trap cleanup EXIT
export CUDA_MPS_PIPE_DIRECTORY=/tmp/scale-mps CUDA_MPS_LOG_DIRECTORY=/tmp/scale-mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
nvidia-cuda-mps-control -d && MPS_ON=1 && say "MPS on"

# One line per run: label, phase 1, first token, decode (from the run's stderr).
stats() {  # label err_file
  local p1 ft dec
  p1=$(grep -oE 'phase 1 \(context encoding\): [0-9.]+' "$2" | grep -oE '[0-9.]+$')
  ft=$(grep -oE 'first token \(query prefill\): [0-9.]+' "$2" | grep -oE '[0-9.]+$')
  dec=$(grep -oE 'decode: [0-9.]+' "$2" | grep -oE '[0-9.]+$')
  echo "$1 ${p1:--} ${ft:--} ${dec:--}" >> "$OUT/runs.txt"
  say "$1: phase 1 ${p1:--} ms, first token ${ft:--} ms, decode ${dec:--} ms/token"
}

say "=== 1. kernel rates (GPU 0)"
timeout 180 "$S" bench kernels --torch none --seqs 16384,65536 > "$OUT/kernels.txt" 2>&1
say "kernels rc=$?"

say "=== 2. one process on GPU 0"
timeout 150 "$S" run --engine --mode full --random-weights "$CFG" --device cuda "${common[@]}" > "$OUT/ids_full1.txt" 2> "$OUT/full1.err"
stats full1 "$OUT/full1.err"
counts=()
for n in 1 2 4 8; do [ "$n" -le "$G" ] && counts+=("$n"); done
for n in "${counts[@]}"; do
  timeout 150 "$S" run --engine --mode star --workers "$n" "${ANCHOR[@]}" --random-weights "$CFG" --device cuda "${common[@]}" \
    > "$OUT/ids_engine_star$n.txt" 2> "$OUT/engine_star$n.err"
  stats "engine_star$n" "$OUT/engine_star$n.err"
done

say "=== 3. head + N worker processes, one per GPU"
port=$((7600 + RANDOM % 100))
timeout 900 "$S" serve --listen 127.0.0.1:$port --random-weights "$CFG" --device cuda > "$OUT/serve.log" 2>&1 &
pids+=($!)
started=0
for n in "${counts[@]}"; do
  while [ "$started" -lt "$n" ]; do
    timeout 900 "$S" worker --head 127.0.0.1:$port --random-weights "$CFG" --gpus "$started" > "$OUT/worker$started.log" 2>&1 &
    pids+=($!)
    started=$((started + 1))
  done
  STARATTN_LOG_PATHS=1 timeout 240 "$S" run --head 127.0.0.1:$port --min-workers "$n" --mode star "${ANCHOR[@]}" "${common[@]}" \
    > "$OUT/ids_star$n.txt" 2> "$OUT/star$n.err"
  stats "star$n" "$OUT/star$n.err"
  if cmp -s "$OUT/ids_star$n.txt" "$OUT/ids_engine_star$n.txt"; then
    say "star$n ids equal the one-process run's"
  else
    say "star$n ids DIFFER from the one-process run's"
  fi
done

say "=== 4. the largest context on $started GPU(s)"
# Within the config's 4M positions (a longer one is refused for its positions, not its room).
text 3900000 > /tmp/scale_huge.txt
timeout 120 "$S" run --head 127.0.0.1:$port --min-workers "$started" --mode star "${ANCHOR[@]}" --context-file /tmp/scale_huge.txt \
  --query "q" --max-tokens 1 --ignore-eos --output ids > /dev/null 2> "$OUT/huge.err"
fits=$(grep -oE 'at most [0-9]+ context tokens fit' "$OUT/huge.err" | grep -oE '[0-9]+' | head -1)
say "refused: $(grep -oE 'context of [0-9]+ tokens does not fit[^"]*' "$OUT/huge.err" | head -1)"
if [ -n "$fits" ]; then
  # The query and generated tokens are not context: leave them room below the positions too.
  largest=$((fits - 64))
  text "$largest" > /tmp/scale_largest.txt
  STARATTN_LOG_PATHS=1 timeout 300 "$S" run --head 127.0.0.1:$port --min-workers "$started" --timeout 280 --mode star "${ANCHOR[@]}" \
    --context-file /tmp/scale_largest.txt --query "what is the first word" --max-tokens 8 --ignore-eos --output ids \
    > "$OUT/ids_largest.txt" 2> "$OUT/largest.err"
  say "largest: $largest context tokens on $started GPU(s), rc=$?"
  stats "largest$started" "$OUT/largest.err"
fi
grep -h "data paths" "$OUT/serve.log" | tail -n 2 | tee -a "$OUT/summary.txt"

# The table: star on N GPUs against full attention on 1, with the ideal beside each TTFT.
python3 - "$OUT" "$CFG" "$C" "${STARATTN_SCALE_ANCHOR:-0}" <<'EOF' | tee "$OUT/scale.md"
import json, subprocess, sys
out, cfg, C, anchor = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
runs = {}
for line in open(f"{out}/runs.txt"):
    label, p1, ft, dec = line.split()
    runs[label] = tuple(None if v == "-" else float(v) for v in (p1, ft, dec))
def ideal(mode, n):
    r = subprocess.run([sys.executable, "tools/bench/ideal_ttft.py", "--config", cfg, "--context", str(C),
                        "--gpus", str(n), "--mode", mode, "--anchor", str(anchor),
                        "--kernels", f"{out}/kernels.txt", "--json"], capture_output=True, text=True)
    return json.loads(r.stdout)["ideal_phase1_ms"] if r.returncode == 0 else None
print(f"| run | GPUs | phase 1 ms | first token ms | TTFT ms | ideal TTFT ms | TTFT / ideal | decode ms/token | speed-up of TTFT over full on 1 GPU |")
print("|---|---|---|---|---|---|---|---|---|")
base = runs.get("full1")
base_ttft = base[0] + base[1] if base and None not in base[:2] else None
for label in ["full1"] + [f"star{n}" for n in (1, 2, 4, 8)]:
    if label not in runs: continue
    p1, ft, dec = runs[label]
    n = 1 if label == "full1" else int(label[4:])
    if p1 is None or ft is None:
        print(f"| {label} | {n} | failed | | | | | | |"); continue
    ttft = p1 + ft
    i = ideal("full" if label == "full1" else "star", n)
    ideal_ttft = i + ft if i is not None else None
    ratio = f"{ttft / ideal_ttft:.2f}x" if ideal_ttft else "-"
    vs = f"{base_ttft / ttft:.2f}x" if base_ttft else "-"
    print(f"| {label} | {n} | {p1:.0f} | {ft:.1f} | {ttft:.0f} | {ideal_ttft:.0f} | {ratio} | {dec} | {vs} |"
          if ideal_ttft else f"| {label} | {n} | {p1:.0f} | {ft:.1f} | {ttft:.0f} | - | - | {dec} | {vs} |")
print("\nideal TTFT = the slowest host's phase-1 FLOPs at the kernels' measured rates (tools/bench/ideal_ttft.py) + the run's own first-token time")
EOF
tail -n 30 "$OUT/summary.txt"
