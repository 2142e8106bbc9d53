#!/usr/bin/env bash
# The main job on a fresh Debian machine: install dependencies, build, then answer a question
# over a long generated document through several local context workers, in star and full mode.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

./deploy/install-deps.sh
build=${STARATTN_BUILD_DIR:-build}
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target starattn -j "$(nproc)"
bin="$build/tools/starattn"

work=${STARATTN_DEMO_DIR:-$build/demo}
mkdir -p "$work"
model="$work/model"
[ -f "$model/config.json" ] || "$bin" init-model --preset small --seed 7 --out "$model"

# A long document with a fact hidden in the middle.
doc="$work/document.txt"
python3 - "$doc" <<'PY'
import random, sys
random.seed(5)
words = "river stone market lantern harbor orchard signal winter copper meadow".split()
lines = []
for i in range(120):
    lines.append(" ".join(random.choice(words) for _ in range(12)) + ".")
    if i == 60:
        lines.append("The secret passphrase is amber falcon.")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY

workers=${STARATTN_WORKERS:-4}
question="What is the secret passphrase?"
echo "== star attention, $workers context workers =="
"$bin" run --model "$model" --context-file "$doc" --query "$question" \
  --workers "$workers" --max-tokens 24 --mode star
echo "== full attention (baseline) =="
"$bin" run --model "$model" --context-file "$doc" --query "$question" \
  --max-tokens 24 --mode full
