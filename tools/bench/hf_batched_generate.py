#!/usr/bin/env python3
"""transformers' batched `generate` on the shapes of tools/bench/throughput_http.py (issue 15
point 4), for comparison in the same device call.

A model of --config's shape with random weights (`AutoModelForCausalLM.from_config`, bf16,
attn_implementation="sdpa", on --device), then per batch size B (with the context per stream
that the HTTP run used, --contexts B:C,...): B random token-id prompts of C + --query-tokens
tokens, greedy, --max-new-tokens new tokens (min_new_tokens too, so nothing stops early).
  prefill     generate's start to the first new token's logits (a logits processor notes the
              time of each step's logits, after a device synchronisation);
  decode      (end - first logits) / (new tokens - 1): time per step, all B streams;
  tokens/s    B * (new tokens - 1) / decode time: aggregate decode throughput, as the HTTP
              tool's steady window measures it (prefill excluded).
A batch size whose KV cache (B x (C + query + new) x KV bytes per token) plus weights does not
fit the device's memory is skipped with the reason; an out-of-memory during the run is reported
as such. Prints a Markdown table like throughput_http.py's; --json writes the rows.

  python3 tools/bench/hf_batched_generate.py --config tools/bench/llama31_8b_config.json \\
      --contexts 1:32768,4:32768,16:32768,64:8192 --json hf.json
"""
import argparse
import json
import sys
import time


def kv_bytes_per_token(cfg, dtype_bytes=2):
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim * dtype_bytes


def parse_contexts(spec, default_context, batches):
    out = {}
    for part in (spec or "").split(","):
        if part:
            b, c = part.split(":")
            out[int(b)] = int(c)
    return [(b, out.get(b, default_context)) for b in batches]


def markdown(rows, title):
    f = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    out = [f"**{title}**", "",
           "| batch | context/stream | tokens/s | x batch 1 | step ms | x batch 1 | prefill ms | peak GiB | note |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['streams']} | {r['context']} | {f(r.get('tokens_per_s'))} | {f(r.get('tokens_x'), 2)} | "
                   f"{f(r.get('step_ms'), 2)} | {f(r.get('step_x'), 2)} | {f(r.get('prefill_ms'))} | "
                   f"{f(r.get('peak_gib'), 1)} | {r.get('note', '')} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--context", type=int, default=32768, help="context per stream where --contexts names none")
    ap.add_argument("--contexts", help="B:C,... context per stream for batch size B (the HTTP run's)")
    ap.add_argument("--query-tokens", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--memory-fraction", type=float, default=0.9,
                    help="share of the device memory that weights + KV may take (the rest: activations)")
    ap.add_argument("--json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.max_new_tokens < 2:
        sys.exit("--max-new-tokens must be at least 2 (the first token ends the prefill)")

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    with open(args.config) as f:
        raw = json.load(f)
    cfg = AutoConfig.for_model(raw["model_type"], **{k: v for k, v in raw.items() if k not in ("model_type",)})
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {name}", file=sys.stderr)
    torch.manual_seed(args.seed)
    t0 = time.time()
    torch.set_default_dtype(dtype)  # the parameters are made in it (as tools/bench/hf_e2e.py does)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    model.eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    total = torch.cuda.get_device_properties(dev).total_memory if cuda else None
    print(f"model built in {time.time() - t0:.1f} s ({weight_bytes / 2**30:.1f} GiB of weights)", file=sys.stderr)
    per_token = kv_bytes_per_token(raw, 2 if cuda else 4)
    eos = raw.get("eos_token_id")
    gen_common = dict(do_sample=False, pad_token_id=(eos[0] if isinstance(eos, list) else eos) or 0)
    vocab = raw["vocab_size"]
    lo, hi = (0, min(vocab, 256)) if vocab <= 512 else (1000, vocab - 1000)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    class StepClock(LogitsProcessor):
        """Notes when each new token's logits are ready: the first call ends the prefill."""

        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            sync()
            self.times.append(time.perf_counter())
            return scores

    def generate(ids, new):
        clock = StepClock()
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 min_new_tokens=new, logits_processor=LogitsProcessorList([clock]), **gen_common)
        sync()
        end = time.perf_counter()
        return clock.times[0] - t, end - clock.times[0], out.shape[1] - ids.shape[1]

    # Warm-up: kernel selection and allocator growth for small shapes stay out of the rows.
    generate(torch.randint(lo, hi, (2, 128), device=dev), 4)

    rows = []
    for b, c in parse_contexts(args.contexts, args.context, [int(x) for x in args.batches.split(",") if x]):
        row = {"streams": b, "context": c}
        rows.append(row)
        if c <= 0:
            row["note"] = "not run by the HTTP tool (KV does not fit)"
            continue
        need = weight_bytes + b * (c + args.query_tokens + args.max_new_tokens) * per_token
        if total and need > total * args.memory_fraction:
            row["note"] = (f"skipped: weights + KV {need / 2**30:.1f} GiB > {args.memory_fraction} x "
                           f"{total / 2**30:.1f} GiB")
            print(f"batch {b}: {row['note']}", file=sys.stderr)
            continue
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        ids = torch.randint(lo, hi, (b, c + args.query_tokens), device=dev)
        try:
            prefill_s, decode_s, made = generate(ids, args.max_new_tokens)
            steps = made - 1
            row["prefill_ms"] = prefill_s * 1e3
            row["step_ms"] = decode_s / steps * 1e3
            row["tokens_per_s"] = b * steps / decode_s
            row["new_tokens"] = made
        except torch.OutOfMemoryError as e:
            row["note"] = "out of memory: " + str(e).splitlines()[0][:100]
        if cuda:
            row["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        del ids
        print(f"batch {b}: context {c}, {row.get('tokens_per_s') or 0:.1f} tokens/s, "
              f"step {row.get('step_ms') or 0:.2f} ms {row.get('note', '')}", file=sys.stderr, flush=True)
    base = next((r for r in rows if r["streams"] == 1 and r.get("tokens_per_s")), None)
    for r in rows:
        if base and r.get("tokens_per_s"):
            r["tokens_x"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["step_x"] = r["step_ms"] / base["step_ms"]
    print(markdown(rows, f"transformers {transformers.__version__} batched generate ({name}, {dtype}, sdpa, "
                         f"{args.query_tokens}-token query, {args.max_new_tokens} new tokens, greedy)"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "settings": {"config": args.config, "device": name,
                                                  "transformers": transformers.__version__,
                                                  "torch": torch.__version__,
                                                  "max_new_tokens": args.max_new_tokens,
                                                  "query_tokens": args.query_tokens}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
