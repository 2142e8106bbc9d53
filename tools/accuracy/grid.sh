#!/usr/bin/env bash
# The accuracy grid of docs/ACCURACY.md for one model: every task at every length, in five
# configurations — full attention; Star Attention with B = A = L/4 (the paper's setting), with
# B = A = L/8 and B = A = L/16; and B = L/4 without the anchor (the paper's ablation).
#
#   tools/accuracy/grid.sh MODEL OUT_DIR LENGTHS SAMPLES [extra starattn eval options]
#   e.g. tools/accuracy/grid.sh ~/.cache/starattn/models/SmolLM2-135M-Instruct.Q4_1.gguf out \
#            1024,2048,4096,8192 12 --device cuda
#
# One `starattn eval --json` run per (configuration, length), STARATTN_GRID_JOBS of them at a time
# (default 5; on one GPU they share it: a small model leaves it mostly idle). A run that fails or
# is killed loses only its own cell. Seed 0 unless the extra options give --seed. Then
# `python3 tools/accuracy/table.py OUT_DIR/*.json` prints the table. STARATTN_GRID_PACK=1 then
# puts the cells' files into OUT_DIR/grid.tar.gz (a lent machine may send back only a few files).
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,15p' "$0" >&2; exit 2; }
MODEL=$1 OUT=$2 LENGTHS=$3 SAMPLES=$4
shift 4
BIN=${STARATTN_BIN:-starattn}
JOBS=${STARATTN_GRID_JOBS:-5}
TIMEOUT=${STARATTN_GRID_TIMEOUT:-0}  # seconds per run; 0 = none
mkdir -p "$OUT"
name=$(basename "$MODEL")
name=${name%.gguf}

configs=("full|--mode full"
         "star-L4|--mode star --block-size L/4 --anchor-size L/4"
         "star-L8|--mode star --block-size L/8 --anchor-size L/8"
         "star-L16|--mode star --block-size L/16 --anchor-size L/16"
         "noanchor-L4|--mode star --block-size L/4 --no-anchor")
jobs_file=$(mktemp)
trap 'rm -f "$jobs_file"' EXIT
IFS=, read -r -a lengths <<<"$LENGTHS"
# Longest lengths first: they take longest, so the pool drains evenly.
for ((i = ${#lengths[@]} - 1; i >= 0; --i)); do
  for c in "${configs[@]}"; do
    echo "${lengths[i]}|$c" >>"$jobs_file"
  done
done

run_one() {
  local L=${1%%|*} rest=${1#*|}
  local tag=${rest%%|*} opts=${rest#*|}
  local json="$OUT/$name-$tag-$L.json"
  local cmd=("$BIN" eval --model "$MODEL" --task all --length "$L" --samples "$SAMPLES" --quiet
             --json "$json")
  # shellcheck disable=SC2206  # the option strings above are meant to split
  cmd+=($opts)
  cmd+=("${@:2}")
  local t0=$SECONDS rc=0
  if [ "$TIMEOUT" -gt 0 ]; then timeout "$TIMEOUT" "${cmd[@]}" >"$json.log" 2>&1 || rc=$?
  else "${cmd[@]}" >"$json.log" 2>&1 || rc=$?; fi
  echo "grid: $tag L=$L rc=$rc $((SECONDS - t0)) s"
}
export -f run_one
export BIN MODEL OUT SAMPLES TIMEOUT name
tr '\n' '\0' <"$jobs_file" | xargs -0 -P "$JOBS" -I{} bash -c 'run_one "$@"' _ {} "$@"
if [ "${STARATTN_GRID_PACK:-0}" = 1 ]; then
  (cd "$OUT" && files=$(find . -maxdepth 1 \( -name '*.json' -o -name '*.log' \) -print) &&
     [ -n "$files" ] && tar czf grid.tar.gz $files && rm -f $files)
fi
