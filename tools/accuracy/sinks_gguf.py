"""Attention sinks of a pretrained GGUF Llama model (SmolLM2-135M-Instruct by default), measured
with exactly the statistics of tools/train/sinks.py (the same `measure`, `summarize` and `report`):
per layer and head, the softmax probability on key 0 and on keys 0-3, averaged over query positions
i >= 16, against the uniform causal shares 1/(i+1) and 4/(i+1); a sink head has >= max(0.2,
10 x uniform) of its attention on the first token.

The forward is our own float32 torch Llama over the GGUF's tensors dequantized with gguf-py (Q4_1,
Q8_0, F16, F32 ...). GGUF stores Q/K rows permuted for ggml's adjacent-pair RoPE, so RoPE here
rotates pairs (2j, 2j+1); scores are the same as the HF layout's.

Probes (as tools/train/finish.py):
  ruler_prompt_bos  `starattn eval --dump-instances` prompts (chat template, context + query ids)
  text_bos          BOS + held-out repository/stdlib text (data.collect_text), docs joined by EOS
  text_no_bos       the same text shifted by one token: no BOS in front
Text is tokenized with a byte-level BPE built from the GGUF's vocab and merges (`tokenizers`).

Needs torch (the CPU build is enough: 2 x 2K tokens take about 3 minutes on 2 cores), gguf, numpy
and tokenizers:
  starattn eval --model SmolLM2-135M-Instruct.Q4_1.gguf --task niah_single --length 2048 \
      --samples 2 --seed 999 --dump-instances inst.jsonl
  python3 tools/accuracy/sinks_gguf.py --instances inst.jsonl --json docs/accuracy/sinks-smollm2.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
import gguf
from gguf.quants import dequantize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools", "train"))
import data  # noqa: E402  (no torch; collect_text)
import sinks  # noqa: E402


class GGUFLlama(torch.nn.Module):
    """Llama forward in float32 over dequantized GGUF tensors; `probe(layer, q, k)` as model.py."""

    def __init__(self, path: str):
        super().__init__()
        r = gguf.GGUFReader(path)
        self.meta = {k: f.contents() for k, f in r.fields.items()
                     if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
        arch = self.meta["general.architecture"]
        m = lambda key: self.meta[f"{arch}.{key}"]
        self.shape = SimpleNamespace(num_hidden_layers=m("block_count"),
                                     num_attention_heads=m("attention.head_count"),
                                     num_key_value_heads=m("attention.head_count_kv"),
                                     hidden_size=m("embedding_length"))
        self.head_dim = self.shape.hidden_size // self.shape.num_attention_heads
        self.eps = float(m("attention.layer_norm_rms_epsilon"))
        self.theta = float(self.meta.get(f"{arch}.rope.freq_base", 10000.0))
        self.w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float32)
            self.w[t.name] = torch.from_numpy(a.reshape([int(d) for d in reversed(t.shape)]))
        self.w.setdefault("output.weight", self.w["token_embd.weight"])  # tied embeddings
        f = r.fields
        toks = f["tokenizer.ggml.tokens"]
        self.vocab = [bytes(toks.parts[i]).decode("utf-8") for i in toks.data]
        merges = f.get("tokenizer.ggml.merges")
        self.merges = [bytes(merges.parts[i]).decode("utf-8") for i in merges.data] if merges else []
        self.bos = int(self.meta["tokenizer.ggml.bos_token_id"])
        self.eos = int(self.meta["tokenizer.ggml.eos_token_id"])

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, cos, sin):  # x [1, H, T, D], adjacent pairs
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1).flatten(-2)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, probe=None) -> torch.Tensor:
        """Logits [vocab] of the last position of ids [1, T]."""
        s, d, w = self.shape, self.head_dim, self.w
        t = ids.shape[1]
        inv = self.theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = ang.cos().float(), ang.sin().float()
        groups = s.num_attention_heads // s.num_key_value_heads
        x = w["token_embd.weight"][ids]
        for i in range(s.num_hidden_layers):
            p = f"blk.{i}."
            h = self.rms(x, w[p + "attn_norm.weight"])
            heads = lambda name, n: (h @ w[p + name].T).view(1, t, n, d).transpose(1, 2)
            q = self.rope(heads("attn_q.weight", s.num_attention_heads), cos, sin)
            k = self.rope(heads("attn_k.weight", s.num_key_value_heads), cos, sin)
            v = heads("attn_v.weight", s.num_key_value_heads)
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            if probe is not None:
                probe(i, q, k)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + y.transpose(1, 2).reshape(1, t, -1) @ w[p + "attn_output.weight"].T
            h = self.rms(x, w[p + "ffn_norm.weight"])
            g = F.silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)
            x = x + g @ w[p + "ffn_down.weight"].T
        return self.rms(x[0, -1], w["output_norm.weight"]) @ w["output.weight"].T


def bpe_tokenizer(model: GGUFLlama):
    """Byte-level BPE from the GGUF's vocab and merges (digits split one by one, as SmolLM's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(model.vocab)},
                               [tuple(m.split(" ", 1)) for m in model.merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    return tok


def text_rows(tok, docs, length, rng, bos, eos, count=2):
    """Token-level data.text_row: BOS + documents (the first from a random line) joined by EOS,
    length + 1 tokens; returns (row[:length], row[1:]) pairs."""
    out = []
    for _ in range(count):
        row, first = [bos], True
        while len(row) < length + 1:
            d = docs[rng.choice(len(docs))]
            start = 0
            if first:
                start = data.random_line_start(d, rng)
                first = False
            text = d[start:start + 8 * length].decode("utf-8", errors="replace")
            row += tok.encode(text).ids[:length + 1 - len(row)]
            if len(row) < length + 1:
                row.append(eos)
        out.append((row[:length], row[1:length + 1]))
    return out


def compare_engine(model, binary, gguf_path, ctx, qry, threads):
    """Our last-position logits against `starattn run --mode full --dump-logits` for one prompt."""
    ours = model(torch.tensor([ctx + qry])).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "logits.f32")
        cmd = [binary, "run", "--model", gguf_path, "--mode", "full", "--max-tokens", "1",
               "--context-ids", ",".join(map(str, ctx)), "--query-ids", ",".join(map(str, qry)),
               "--output", "ids", "--dump-logits", dump, "--threads", str(threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        theirs = np.fromfile(dump, dtype=np.float32)[:ours.size]
    diff = np.abs(ours - theirs)
    return {"tokens": len(ctx) + len(qry), "ours_top1": int(ours.argmax()),
            "engine_top1": int(theirs.argmax()), "engine_output": res.stdout.strip(),
            "max_abs_diff": float(diff.max()), "max_abs_logit": float(np.abs(theirs).max()),
            "rel_max_diff": float(diff.max() / np.abs(theirs).max()),
            "top5_ours": np.argsort(-ours)[:5].tolist(), "top5_engine": np.argsort(-theirs)[:5].tolist()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.expanduser(
        "~/.cache/starattn/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--instances", help="starattn eval --dump-instances output (ruler_prompt_bos)")
    ap.add_argument("--ruler-count", type=int, default=2)
    ap.add_argument("--text-tokens", type=int, default=0,
                    help="length of the text probes (default: the first ruler prompt's, or 2048)")
    ap.add_argument("--no-text", action="store_true", help="skip the text probes")
    ap.add_argument("--text-mb", type=float, default=48, help="data.collect_text cap (train.py's)")
    ap.add_argument("--seed", type=int, default=20241127, help="text row seed (train.py's + 1)")
    ap.add_argument("--engine", default=os.path.join(REPO, "build", "tools", "starattn"),
                    help="starattn binary for the logit check ('' to skip)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="write sinks.measure's result (plus the checks) here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    log = lambda msg: print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    model = GGUFLlama(args.model)
    log(f"loaded {args.model}: {model.shape.num_hidden_layers} layers, "
        f"{model.shape.num_attention_heads}/{model.shape.num_key_value_heads} heads of "
        f"{model.head_dim}, rope {model.theta:g}, eps {model.eps:g}, bos {model.bos} eos {model.eos}")
    groups = {"ruler_prompt_bos": [], "text_bos": [], "text_no_bos": []}
    prompts = []
    if args.instances:
        with open(args.instances) as f:
            for line in f:
                inst = json.loads(line)
                if len(prompts) < args.ruler_count:
                    prompts.append((inst["context_ids"], inst["query_ids"]))
        groups["ruler_prompt_bos"] = [c + q for c, q in prompts]
    check = {}
    if not args.no_text:
        tok = bpe_tokenizer(model)
        if args.instances:  # the BPE must reproduce the engine's ids of the instance's document
            inst = json.loads(open(args.instances).readline())
            doc = tok.encode(inst["document"]).ids
            ctx = inst["context_ids"]
            found = any(ctx[i:i + len(doc)] == doc for i in range(len(ctx) - len(doc) + 1))
            check["tokenizer_matches_engine_document"] = found
            log(f"tokenizer: document of {len(doc)} tokens found in the engine's context ids: {found}")
        length = args.text_tokens or (len(groups["ruler_prompt_bos"][0]) if prompts else 2048)
        corpus = data.collect_text(REPO, int(args.text_mb * 1e6))
        rows = text_rows(tok, corpus.held_out or corpus.train, length,
                         np.random.default_rng(args.seed), model.bos, model.eos)
        groups["text_bos"] = [a for a, _ in rows]
        groups["text_no_bos"] = [b for _, b in rows]
        log(f"text: {len(corpus.held_out)} held-out files, 2 rows of {length} tokens")
    if prompts and args.engine:
        check["engine_logits"] = compare_engine(model, args.engine, args.model, *prompts[0],
                                                args.threads)
        log(f"engine check: {check['engine_logits']}")
    result = sinks.measure(model, groups, torch.device("cpu"))
    result["model"] = os.path.basename(args.model)
    result["checks"] = check
    result["seconds"] = round(time.time() - t0, 1)
    print(sinks.report(result), flush=True)
    log("done")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
