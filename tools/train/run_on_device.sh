#!/usr/bin/env bash
# Trains the long-context byte-level model on a GPU machine and leaves a compact result in OUTDIR:
#   OUTDIR/model/config.json, model.safetensors.index.json, model-0000i-of-0000N.safetensors
#   OUTDIR/run.tar.gz   curve.csv, summary.json, sinks.json, train.log, eval_*.json
#   OUTDIR/train.log    the same log, uncompressed
#
# usage: STARATTN_BIN=/path/to/starattn tools/train/run_on_device.sh OUTDIR MINUTES [train.py options]
#   MINUTES is the training loop's budget (7 suggested: the 1K stage needs ~2 min for retrieval
#   to appear); instance generation (~15 s), model start (~10 s), the final checks (~10 s) and
#   the smoke eval below (SMOKE_EVAL=0 skips it) come on top.
#   GRID_SAMPLES=N (default 0: off) then runs the accuracy grid on the trained model
#   (tools/accuracy/grid.sh: all tasks; full, star L/4, L/8, L/16, no anchor) at GRID_LENGTHS
#   (default 4096,8192,16384), N samples per cell, on the GPU (the cpu without one); its JSON
#   files go into run.tar.gz (grid/), each cell capped at GRID_TIMEOUT seconds (default 240).
# Needs python3 with torch, numpy, safetensors (transformers for the reload check).
set -uo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,15p' "$0"
  exit 2
fi
OUTDIR=$(mkdir -p "$1" && cd "$1" && pwd) || exit 2
MINUTES=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${STARATTN_BIN:-}
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  echo "run_on_device.sh: set STARATTN_BIN to the starattn binary (got '$BIN')" >&2
  exit 2
fi
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/starattn-train.XXXXXX)
RUN=$WORK/run
mkdir -p "$RUN"
LOG=$RUN/train.log

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee "$LOG"
"$PY" -u "$HERE/train.py" --starattn "$BIN" --out "$RUN" --minutes "$MINUTES" \
  --tmp "$WORK/tmp" "$@" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}

pack() {
  [ -d "$RUN/model" ] && mkdir -p "$OUTDIR/model" && cp "$RUN/model/"* "$OUTDIR/model/"
  cp "$LOG" "$OUTDIR/train.log"
  (cd "$RUN" && tar -czf "$OUTDIR/run.tar.gz" $(ls -d curve.csv summary.json sinks.json train.log \
    eval_*.json grid 2>/dev/null))
}
pack  # the results are in OUTDIR before the optional smoke eval, whatever it does

device=cpu
command -v nvidia-smi >/dev/null 2>&1 && device=cuda

# The engine on the trained model: one needle and variable tracking, full vs Star Attention
# (block = anchor = L/4), two samples at 4K and 16K.
if [ "$status" = 0 ] && [ "${SMOKE_EVAL:-1}" = 1 ]; then
  for mode in full star; do
    extra=()
    [ "$mode" = star ] && extra=(--block-size L/4 --anchor-size L/4)
    echo "== starattn eval --mode $mode ${extra[*]}" | tee -a "$LOG"
    timeout "${SMOKE_TIMEOUT:-90}" "$BIN" eval --model "$RUN/model" --task niah_single,vt \
      --length 4096,16384 --samples 2 --seed 0 --mode "$mode" "${extra[@]}" --device "$device" \
      --quiet --json "$RUN/eval_$mode.json" 2>&1 | tee -a "$LOG"
  done
  pack
fi

if [ "$status" = 0 ] && [ "${GRID_SAMPLES:-0}" -gt 0 ]; then
  echo "== accuracy grid, ${GRID_SAMPLES} samples per cell" | tee -a "$LOG"
  STARATTN_BIN=$BIN STARATTN_GRID_TIMEOUT=${GRID_TIMEOUT:-240} \
    "$HERE/../accuracy/grid.sh" "$RUN/model" "$RUN/grid" "${GRID_LENGTHS:-4096,8192,16384}" \
    "$GRID_SAMPLES" --device "$device" 2>&1 | tee -a "$LOG"
  pack
fi

rm -rf "$WORK/tmp"
ls -l "$OUTDIR" "$OUTDIR/model" 2>/dev/null
exit "$status"
