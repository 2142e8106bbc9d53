#!/usr/bin/env bash
# Our BPE tokenizer against the reference `tokenizers` library, live: the Python side encodes the
# corpus with SmolLM2's vocabulary now, and test_bpe_tokenizer compares our ids with those.
# Usage: tokenizer_live.sh PYTHON TEST_BINARY REPO_ROOT
set -euo pipefail
python=$1 test_binary=$2 repo=$3
if ! "$python" -c "import tokenizers, gguf" 2>/dev/null; then
  echo "tokenizer_live: $python lacks the tokenizers/gguf packages (deploy/test.sh installs them)" >&2
  exit 1
fi
models=${STARATTN_MODELS:-$HOME/.cache/starattn/models}
gguf=${STARATTN_SMOLLM2_GGUF:-$models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$gguf" ] || { echo "tokenizer_live: $gguf missing: run deploy/fetch-model.sh" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$python" "$repo/tools/reference/tokenizer_reference.py" "$gguf" > "$out"
STARATTN_TOKENIZER_REFERENCE=$out "$test_binary"
