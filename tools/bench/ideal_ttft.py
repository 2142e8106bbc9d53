#!/usr/bin/env python3
"""The ideal phase-1 time of a context on N GPUs, from the FLOPs each host runs and measured
kernel rates (issue 12 point 5: "beside each TTFT, the ideal TTFT from the per-host FLOPs").

    tools/bench/ideal_ttft.py --config CONFIG.json --context C --gpus N [--mode star|full]
        [--anchor A] (--kernels BENCH_KERNELS.txt | --gemm-tflops G --attn-tflops T) [--json]

The work is counted as our phase 1 runs it (DESIGN.md 1, runtime/star_attention.cpp):
- star: blocks of b = ceil(C / N), one per GPU (the planner's contiguous runs); block 0 alone,
  causal; every other block behind the anchor (a rows, default b), which its GPU encodes first
  (causal), then the block's rows attend to the anchor and causally to themselves;
- full: one block of C rows on one GPU, causal.
Per row and layer, the linear layers cost 2 * (h * (q + 2 kv) + q * h + 3 * h * I) FLOPs (fused
q|k|v, output projection, gate|up, down); per (query, key) pair attention costs 4 * Hq * D (Q K^T
and P V). Phase 1 keeps only K/V: the last layer runs its q|k|v projection only and no attention.
A host's time is linear FLOPs / the GEMM rate + attention FLOPs / the attention rate; the ideal
phase 1 is the slowest host's. Rates come from `starattn bench kernels` on the same card: the
mean TFLOP/s of its M=4096 GEMM rows, and of its "causal+prefix" attention rows.
"""
import argparse
import json
import math
import re
import sys


def shape(config):
    h = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    d = config.get("head_dim") or h // heads
    return {
        "layers": config["num_hidden_layers"], "h": h, "heads": heads, "d": d,
        "q": heads * d, "kv": kv_heads * d, "inter": config["intermediate_size"],
    }


def linear_per_row(s, last_layer_kv_only=True):
    full_layer = 2 * (s["h"] * (s["q"] + 2 * s["kv"]) + s["q"] * s["h"] + 3 * s["h"] * s["inter"])
    if not last_layer_kv_only:
        return s["layers"] * full_layer
    return (s["layers"] - 1) * full_layer + 2 * s["h"] * (s["q"] + 2 * s["kv"])


def causal_pairs(rows, prefix=0):
    """(query, key) pairs of `rows` new rows over `prefix` earlier keys and themselves, causal."""
    return rows * prefix + rows * (rows + 1) // 2


def hosts(s, context, gpus, mode, anchor):
    """Per host: (rows forwarded, attention pairs) of its phase 1."""
    attn_layers = s["layers"] - 1
    per_pair = 4 * s["heads"] * s["d"] * attn_layers
    per_row = linear_per_row(s)
    out = []
    if mode == "full":
        out.append({"rows": context, "pairs": causal_pairs(context)})
    else:
        b = math.ceil(context / gpus)
        a = anchor if anchor else b
        starts = list(range(0, context, b))
        for start in starts:
            length = min(b, context - start)
            if start == 0:
                out.append({"rows": length, "pairs": causal_pairs(length)})
            else:
                a_rows = min(a, context)
                out.append({"rows": a_rows + length,
                            "pairs": causal_pairs(a_rows) + causal_pairs(length, a_rows)})
    for host in out:
        host["linear_flops"] = host["rows"] * per_row
        host["attention_flops"] = host["pairs"] * per_pair
    return out


def rates_from_kernels(text):
    gemm, attn = [], []
    for line in text.splitlines():
        m = re.match(r"gemm M=(\d+) N=\d+ K=\d+\s+([\d.]+)\s+([\d.]+)", line.strip())
        if m and int(m.group(1)) >= 1024:
            gemm.append(float(m.group(3)))
        m = re.match(r"causal\+prefix S=\d+ \(keys \d+\)\s+([\d.]+)\s+([\d.]+)", line.strip())
        if m:
            attn.append(float(m.group(2)))
    if not gemm or not attn:
        raise ValueError("no 'gemm M>=1024' or 'causal+prefix' rows in the kernels output")
    return sum(gemm) / len(gemm), sum(attn) / len(attn)


def ideal(config, context, gpus, mode, anchor, gemm_tflops, attn_tflops):
    s = shape(config)
    per_host = hosts(s, context, gpus, mode, anchor)
    for host in per_host:
        host["ms"] = (host["linear_flops"] / (gemm_tflops * 1e12) +
                      host["attention_flops"] / (attn_tflops * 1e12)) * 1e3
    slowest = max(per_host, key=lambda x: x["ms"])
    return {"mode": mode, "context": context, "gpus": gpus, "gemm_tflops": gemm_tflops,
            "attn_tflops": attn_tflops, "hosts": per_host, "ideal_phase1_ms": slowest["ms"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--mode", choices=["star", "full"], default="star")
    p.add_argument("--anchor", type=int, default=0, help="anchor rows (default: the block size)")
    p.add_argument("--kernels", help="output of `starattn bench kernels` on the same card")
    p.add_argument("--gemm-tflops", type=float)
    p.add_argument("--attn-tflops", type=float)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.context < 1 or args.gpus < 1:
        p.error("--context and --gpus must be positive")
    if args.kernels:
        with open(args.kernels) as f:
            gemm, attn = rates_from_kernels(f.read())
    elif args.gemm_tflops and args.attn_tflops:
        gemm, attn = args.gemm_tflops, args.attn_tflops
    else:
        p.error("give --kernels, or --gemm-tflops and --attn-tflops")
    with open(args.config) as f:
        config = json.load(f)
    r = ideal(config, args.context, args.gpus, args.mode, args.anchor, gemm, attn)
    if args.json:
        json.dump(r, sys.stdout, indent=1)
        print()
    else:
        print(f"{r['mode']} C={r['context']} on {r['gpus']} GPU(s) at GEMM {gemm:.0f} / attention "
              f"{attn:.0f} TFLOP/s: ideal phase 1 {r['ideal_phase1_ms']:.1f} ms (slowest host)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
