#!/usr/bin/env python3
"""Hugging Face transformers on the shape `starattn bench e2e` runs, on the same GPU.

Builds a LlamaForCausalLM with random weights (bf16, attn_implementation="sdpa") from the same
config.json, then (after a 512-token warm-up request) per context length: a prefill of context + query tokens (logits of the last
position only), then greedy decode steps with the KV cache. Prints
  RESULT hf/<C>/prefill_ms, hf/<C>/decode_ms (per token), hf/<C>/peak_gib, or hf/<C>/oom 1.
"""
import argparse
import json
import sys
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--contexts", default="32768,131072")
    ap.add_argument("--query", type=int, default=16)
    ap.add_argument("--decode-tokens", type=int, default=16)
    args = ap.parse_args()
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    with open(args.config) as f:
        raw = json.load(f)
    cfg = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
    cfg._attn_implementation = "sdpa"
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}",
          file=sys.stderr)
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.eval()
    torch.cuda.synchronize()
    print(f"model built in {time.time() - t0:.1f} s", file=sys.stderr)
    # A small request first, so kernel selection and allocator growth for small shapes are not
    # charged to the first measured context (starattn bench e2e does the same).
    with torch.no_grad():
        warm = model(input_ids=torch.randint(0, cfg.vocab_size, (1, 512), device="cuda"), use_cache=True,
                     logits_to_keep=1)
        model(input_ids=warm.logits[:, -1:].argmax(-1), past_key_values=warm.past_key_values, use_cache=True)
        del warm
    torch.cuda.synchronize()
    for C in [int(c) for c in args.contexts.split(",") if c]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(0, cfg.vocab_size, (1, C + args.query), device="cuda")
        try:
            with torch.no_grad():
                torch.cuda.synchronize()
                t = time.time()
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                tok = out.logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
                prefill_ms = (time.time() - t) * 1e3
                past = out.past_key_values
                del out
                steps = []
                for _ in range(args.decode_tokens):
                    torch.cuda.synchronize()
                    t = time.time()
                    out = model(input_ids=tok, past_key_values=past, use_cache=True)
                    tok = out.logits[:, -1:].argmax(-1)
                    torch.cuda.synchronize()
                    steps.append((time.time() - t) * 1e3)
                    past = out.past_key_values
                    del out
            steps = sorted(steps[1:]) if len(steps) > 2 else steps
            print(f"RESULT hf/{C}/prefill_ms {prefill_ms:.3f}", flush=True)
            print(f"RESULT hf/{C}/decode_ms {steps[len(steps) // 2]:.3f}", flush=True)
            print(f"RESULT hf/{C}/peak_gib {torch.cuda.max_memory_allocated() / 2**30:.3f}", flush=True)
            del past
        except torch.OutOfMemoryError as e:
            print(f"hf C={C}: out of memory: {str(e).splitlines()[0][:160]}", file=sys.stderr)
            print(f"RESULT hf/{C}/oom 1", flush=True)
            print(f"RESULT hf/{C}/peak_gib {torch.cuda.max_memory_allocated() / 2**30:.3f}", flush=True)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
