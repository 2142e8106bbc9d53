#!/usr/bin/env python3
"""PyTorch baselines for `starattn bench kernels`, on the same shapes and the same GPU.

Prints "RESULT <key> <median ms>" lines that the C++ side turns into one table:
  prefill/<case>/<S>/<flash|cudnn>   SDPA prefill, Hq 32, Hkv 8, D 128, bf16
      causal+prefix: S queries behind an S-token prefix (keys 2S), lower-right causal mask
                     (torch.nn.attention.bias.causal_lower_right)
      causal:        S queries, S keys, is_causal=True
      unmasked:      S queries, S keys, no mask
  decode/<keys>/<flash|cudnn>       one query token over <keys> keys
  gemm/<M>x<N>x<K>/torch            torch.matmul(x[M,K], w[N,K].T)
  copy/gbs                          device-to-device copy, GB/s counting read + write
Timing: CUDA events, warm-ups, median. GQA through enable_gqa=True where the backend takes it,
otherwise K/V expanded to Hq heads (noted on stderr).
"""
import argparse
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    from torch.nn.attention.bias import causal_lower_right
except ImportError:  # older torch
    causal_lower_right = None

HQ, HKV, D = 32, 8, 128
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def result(key, ms):
    print(f"RESULT {key} {ms:.6f}", flush=True)


def sdpa_call(backend, q, k, v, causal, prefix):
    """Returns a closure running SDPA on one backend, GQA native if possible, else expanded."""
    mask = None
    if prefix:
        if causal_lower_right is None:
            raise RuntimeError("no causal_lower_right in this torch")
        mask = causal_lower_right(q.shape[2], k.shape[2])

    def run(kk, vv, gqa):
        with sdpa_kernel([BACKENDS[backend]]):
            if mask is not None:
                return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, enable_gqa=gqa)
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=gqa)

    try:
        run(k, v, True)
        torch.cuda.synchronize()
        return lambda: run(k, v, True), "gqa"
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
    ke = k.repeat_interleave(HQ // HKV, dim=1)
    ve = v.repeat_interleave(HQ // HKV, dim=1)
    run(ke, ve, False)
    torch.cuda.synchronize()
    print(f"  ({backend}: enable_gqa refused ({first[:80]}); K/V expanded)", file=sys.stderr)
    return lambda: run(ke, ve, False), "expanded"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="4096,16384,65536")
    ap.add_argument("--decode-keys", type=int, default=131072)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", file=sys.stderr)
    torch.manual_seed(0)

    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=dev).random_(0, 255)
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a), 3, 20)
    print(f"RESULT copy/gbs {2 * n / (ms * 1e-3) / 1e9:.3f}", flush=True)
    del a, b

    for S in [int(s) for s in args.seqs.split(",") if s]:
        iters = max(3, args.iters // 2) if S >= 65536 else args.iters
        q = torch.empty(1, HQ, S, D, dtype=torch.bfloat16, device=dev).uniform_(-1, 1)
        k2 = torch.empty(1, HKV, 2 * S, D, dtype=torch.bfloat16, device=dev).uniform_(-1, 1)
        v2 = torch.empty_like(k2).uniform_(-1, 1)
        for case, keys, causal, prefix in (("causal+prefix", 2 * S, True, True), ("causal", S, True, False),
                                           ("unmasked", S, False, False)):
            k = k2[:, :, :keys]
            v = v2[:, :, :keys]
            for name in BACKENDS:
                try:
                    fn, how = sdpa_call(name, q, k, v, causal, prefix)
                    ms = timed(fn, 2, iters)
                    result(f"prefill/{case}/{S}/{name}", ms)
                    print(f"  torch {name:5s} {case:14s} S={S}: {ms:.3f} ms ({how})", file=sys.stderr)
                except Exception as e:  # noqa: BLE001
                    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                    print(f"  torch {name} {case} S={S}: not run ({msg[:120]})", file=sys.stderr)
                torch.cuda.empty_cache()
        del q, k2, v2
        torch.cuda.empty_cache()

    S = args.decode_keys
    q = torch.empty(1, HQ, 1, D, dtype=torch.bfloat16, device=dev).uniform_(-1, 1)
    k = torch.empty(1, HKV, S, D, dtype=torch.bfloat16, device=dev).uniform_(-1, 1)
    v = torch.empty_like(k).uniform_(-1, 1)
    for name in BACKENDS:
        try:
            fn, how = sdpa_call(name, q, k, v, False, False)
            ms = timed(fn, 5, 50)
            if how != "gqa":
                print(f"  torch {name} decode read expanded K/V ({HQ // HKV}x the bytes)", file=sys.stderr)
            result(f"decode/{S}/{name}", ms)
        except Exception as e:  # noqa: BLE001
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"  torch {name} decode: not run ({msg[:120]})", file=sys.stderr)
    del q, k, v
    torch.cuda.empty_cache()

    shapes = [(6144, 4096), (4096, 4096), (14336, 4096), (4096, 14336), (128256, 4096)]
    for M in (1, 4096):
        for N, K in shapes:
            if M > 1 and N == 128256:
                continue
            x = torch.empty(M, K, dtype=torch.bfloat16, device=dev).uniform_(-1, 1)
            w = torch.empty(N, K, dtype=torch.bfloat16, device=dev).uniform_(-1, 1)
            ms = timed(lambda: torch.matmul(x, w.t()), 3, 50 if M == 1 else 20)
            result(f"gemm/{M}x{N}x{K}/torch", ms)
            del x, w
    return 0


if __name__ == "__main__":
    sys.exit(main())
