#!/usr/bin/env bash
# tools/quant/random_kquant_gguf.py keeps writing files that the `gguf` package reads as intended
# and that starattn runs: two tiny shapes (tied embeddings with F16 fallbacks; untied, llama3
# RoPE, a shrunk vocabulary), each checked with GGUFReader (types, shapes, the dequantized spread
# of the Q4_K weights), run through `starattn run` (finite, varied logits), and written twice to
# check that the seed alone decides the bytes.
# Usage: quant_random_gguf.sh PYTHON STARATTN REPO_ROOT
set -euo pipefail
python=$1 starattn=$2 repo=$3
if ! "$python" -c "import gguf, numpy" 2>/dev/null; then
  echo "quant_random_gguf: $python lacks the gguf/numpy packages (deploy/test.sh installs them)" >&2
  exit 1
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
writer="$repo/tools/quant/random_kquant_gguf.py"

# Shape 2: untied output, llama3 RoPE scaling (rope_freqs.weight), head_dim set apart from
# hidden/heads (key_length metadata), a 512-wide FFN (all Q4_K), vocabulary shrunk to 300.
cat > "$dir/llama3_tiny.json" <<'EOF'
{"model_type": "llama", "vocab_size": 128256, "hidden_size": 256, "intermediate_size": 512,
 "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
 "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
 "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
 "tie_word_embeddings": false, "bos_token_id": 128000, "eos_token_id": [128001, 128009]}
EOF

check() {  # config, vocab option, expected vocab
  local config=$1 vocab_opt=$2 vocab=$3 out="$dir/model.gguf"
  "$python" "$writer" "$config" "$out" $vocab_opt --seed 5 --std 0.03 --threads 2
  "$python" "$writer" "$config" "$dir/again.gguf" $vocab_opt --seed 5 --std 0.03 --threads 1 2>/dev/null
  cmp "$out" "$dir/again.gguf" || { echo "FAIL: the same seed wrote different files" >&2; exit 1; }
  "$python" "$writer" "$config" "$dir/other.gguf" $vocab_opt --seed 6 --std 0.03 2>/dev/null
  if cmp -s "$out" "$dir/other.gguf"; then echo "FAIL: seeds 5 and 6 wrote the same file" >&2; exit 1; fi

  "$python" - "$config" "$out" "$vocab" <<'EOF'
import json, sys
import numpy as np
import gguf
from gguf.quants import dequantize
config, path, vocab = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
r = gguf.GGUFReader(path)
Q = gguf.GGMLQuantizationType
H, F, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
hd = config.get("head_dim") or H // config["num_attention_heads"]
q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
want = {"token_embd.weight": [H, vocab], "output_norm.weight": [H]}
if not config["tie_word_embeddings"]:
    want["output.weight"] = [H, vocab]
if config.get("rope_scaling"):
    want["rope_freqs.weight"] = [hd // 2]
for i in range(L):
    p = f"blk.{i}."
    want.update({p + "attn_norm.weight": [H], p + "ffn_norm.weight": [H], p + "attn_q.weight": [H, q],
                 p + "attn_k.weight": [H, kv], p + "attn_v.weight": [H, kv],
                 p + "attn_output.weight": [q, H], p + "ffn_gate.weight": [H, F],
                 p + "ffn_up.weight": [H, F], p + "ffn_down.weight": [F, H]})
got = {t.name: t for t in r.tensors}
assert set(got) == set(want), f"tensors {sorted(set(got) ^ set(want))} differ"
quantized = 0
for name, dims in want.items():
    t = got[name]
    assert [int(d) for d in t.shape] == dims, f"{name}: dims {list(t.shape)}, want {dims}"
    expected = Q.F32 if len(dims) == 1 else Q.Q4_K if dims[0] % 256 == 0 else Q.F16
    assert t.tensor_type == expected, f"{name}: {t.tensor_type.name}, want {expected.name}"
    if len(dims) == 2:
        v = dequantize(t.data, t.tensor_type)
        assert np.isfinite(v).all(), name
        # 0.03 asked for; a tensor of >= 32k values has its std within a few percent of it.
        assert abs(v.std() / 0.03 - 1) < 0.06 and abs(v.mean()) < 0.004, \
            f"{name} ({t.tensor_type.name}): std {v.std():.5f}, mean {v.mean():.5f}; asked for std 0.03"
        quantized += t.tensor_type == Q.Q4_K
assert quantized >= 6 * L, f"only {quantized} Q4_K matrices"
fields = r.fields
assert fields["tokenizer.ggml.model"].contents() == "gpt2"
tokens = fields["tokenizer.ggml.tokens"].contents()
assert len(tokens) == vocab and tokens[32] == "Ġ" and tokens[65] == "A", tokens[:66]
bos, eos = fields["tokenizer.ggml.bos_token_id"].contents(), fields["tokenizer.ggml.eos_token_id"].contents()
assert tokens[bos] == "<|begin_of_text|>" and tokens[eos] == "<|end_of_text|>", (bos, eos)
print(f"{path}: {len(want)} tensors as intended, {quantized} Q4_K; vocab {vocab}, bos {bos}, eos {eos}")
EOF

  local ctx
  ctx=$("$python" -c "import random; r = random.Random(3); print(','.join(str(r.randrange(256)) for _ in range(200)))")
  "$starattn" run --model "$out" --context-ids "$ctx" --query-ids "72,101,108,108,111" --max-tokens 8 \
      --ignore-eos --output ids --threads 1 --dump-logits "$dir/logits.bin" > "$dir/ids.txt" 2> "$dir/run.err" ||
    { cat "$dir/run.err" >&2; echo "FAIL: starattn run on $config" >&2; exit 1; }
  "$python" - "$dir/logits.bin" "$dir/ids.txt" "$vocab" <<'EOF'
import sys
import numpy as np
vocab = int(sys.argv[3])
logits = np.fromfile(sys.argv[1], dtype=np.float32).reshape(-1, vocab)
ids = [int(x) for x in open(sys.argv[2]).read().split()]
assert logits.shape[0] == 8 and len(ids) == 8, (logits.shape, ids)
assert np.isfinite(logits).all(), "non-finite logits"
spread = logits.std(axis=1)
# Random weights of std 0.03 give logits spread ~0.1-1, neither collapsed nor blown up.
assert (spread > 0.01).all() and (spread < 100).all(), spread
assert ids == list(logits.argmax(axis=1)), (ids, logits.argmax(axis=1))
print(f"starattn ran it: 8 greedy ids {ids}, logit spread {spread.min():.3f}..{spread.max():.3f}")
EOF
}

check "$repo/tools/bench/byte_d64_config.json" "" 259
check "$dir/llama3_tiny.json" "--vocab 300" 300
echo "quant_random_gguf: OK"
