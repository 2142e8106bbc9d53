#!/usr/bin/env bash
# The main job on a fresh Debian machine: install dependencies, build, fetch the default model
# (SmolLM2-135M-Instruct), then answer a question over a long generated document through several
# local context workers with Star Attention, and again with full attention for comparison.
# Environment: STARATTN_WORKERS (default 4), STARATTN_DOC_LINES (document length, default 260),
# STARATTN_DEVICE (cpu or cuda), STARATTN_BUILD_DIR (default build).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

./deploy/install-deps.sh
model=$(./deploy/fetch-model.sh | tail -n1)
build=${STARATTN_BUILD_DIR:-build}
generator=()
[ -f "$build/CMakeCache.txt" ] || { command -v ninja >/dev/null && generator=(-G Ninja); }
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target starattn -j "$(nproc)"
bin="$build/tools/starattn"

work="$build/demo"
mkdir -p "$work"
doc="$work/document.txt"
python3 tools/make_document.py --lines "${STARATTN_DOC_LINES:-260}" --seed 5 > "$doc"

workers=${STARATTN_WORKERS:-4}
device=${STARATTN_DEVICE:-cpu}
question="What is the code word of the northern lighthouse?"
echo "== document: $(wc -w < "$doc") words; question: $question"
echo "== star attention, $workers context workers =="
"$bin" run --model "$model" --device "$device" --context-file "$doc" --query "$question" \
  --workers "$workers" --max-tokens 40 --mode star
echo "== full attention (baseline) =="
"$bin" run --model "$model" --device "$device" --context-file "$doc" --query "$question" \
  --max-tokens 40 --mode full
