#!/usr/bin/env python3
"""Write a Llama-architecture GGUF of random Q4_K weights in a config.json's shape.

For measuring a K-quant model of a real model's size where the real file cannot go (the GPU
machine gets 64 MiB of files and no network): the file is written there, in seconds, from a
config (e.g. tools/bench/llama31_8b_config.json). Only numpy and the standard library are used;
the GGUF container (v3) is written here.

  python3 tools/quant/random_kquant_gguf.py CONFIG.json OUT.gguf [--vocab N] [--std S] [--seed K]

Tensor types, as llama.cpp's Q4_K presets lay them out: every 2-D matrix whose rows (GGUF's
first dimension, the input size) are whole 256-value super-blocks is Q4_K; other matrices are
F16; norms and rope_freqs are F32.

The Q4_K blocks are random but shaped like real ones (see random_q4k_blocks): f16 d and dmin,
6-bit sub-block scales near the top of their range (the largest of a super-block's 8 scales sets
d, so the others sit within a factor of ~1.5 of it), mins matching the scales so each 32-value
sub-block is centred near zero (as quantizing N(0, s) weights gives), and uniform nibbles. The
dequantized weights have standard deviation --std (default 0.02) and mean ~0.

The tokenizer is byte-level BPE (tokenizer.ggml.model "gpt2", pre "llama-bpe"): the 256 byte
tokens in GPT-2's bytes-to-unicode spelling, a few merges, placeholder tokens up to the vocabulary
size (type UNUSED), and the config's bos/eos ids as control tokens. --vocab N shrinks the
vocabulary (bos and eos then take the last ids) to keep the embedding small.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

QK_K = 256            # values per Q4_K super-block
Q4K_BYTES = 144       # f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
ALIGNMENT = 32        # GGUF's default general.alignment
GGML_F32, GGML_F16, GGML_Q4_K = 0, 1, 12
LLAMA_FTYPE_MOSTLY_Q4_K_S = 14
# GGUF metadata value types
T_U32, T_I32, T_F32, T_BOOL, T_STRING, T_ARRAY = 4, 5, 6, 7, 8, 9
# llama.cpp token types
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5

# Sub-block scales are drawn from SCALE_LO .. SCALE_LO + SCALE_SPAN - 1 (of 0..63); each min is
# its scale plus noise in -3..3 (mean 0), and dmin = MIN_RATIO * d, so a sub-block's values
# d*sc*q - dmin*m run from about -7.5*d*sc to +7.5*d*sc: centred, as for quantized N(0, s).
SCALE_LO, SCALE_SPAN = 40, 24
MIN_RATIO = 7.5
D_JITTER = 0.5        # d = base * (1 - D_JITTER/2 + D_JITTER*u), u uniform in [0, 1)
BLOCKS_PER_CHUNK = 1 << 18   # 36 MiB of blocks per worker task


# ---------------------------------------------------------------------------------------------
# Random Q4_K blocks

def _byte_moments():
    """E[sc^2] and E[noise^2] of the scale and min-noise draws, exactly, over the byte values."""
    b = np.arange(256)
    sc = SCALE_LO + b % SCALE_SPAN
    nib = np.arange(16)
    noise = np.where(nib < 14, nib % 7 - 3, 0)
    return float(np.mean(sc.astype(np.float64) ** 2)), float(np.mean(noise.astype(np.float64) ** 2))


def d_base_for_std(std: float) -> float:
    """The d that gives dequantized values of standard deviation `std`.

    A value is d*sc*q - dmin*m = d*sc*(q - 7.5) - MIN_RATIO*d*noise (m = sc + noise), with q
    uniform over 0..15 (variance 255/12) and d = base * jitter."""
    e_sc2, e_noise2 = _byte_moments()
    e_jitter2 = 1.0 + D_JITTER ** 2 / 12.0
    per_base2 = e_jitter2 * (e_sc2 * 255.0 / 12.0 + MIN_RATIO ** 2 * e_noise2)
    return std / np.sqrt(per_base2)


def random_q4k_blocks(rng: np.random.Generator, n_blocks: int, d_base: float) -> np.ndarray:
    """(n_blocks, 144) uint8 of valid Q4_K blocks (ggml's block_q4_K layout).

    One buffer of random bytes (the bit generator's raw output: the fastest draw numpy has):
    the 128 nibble bytes are used as drawn; the 16 header bytes are first read as the random
    draws for d, the scales and the mins, then overwritten with the packed d, dmin and 6-bit
    scales/mins."""
    blocks = rng.bit_generator.random_raw(n_blocks * Q4K_BYTES // 8).view(np.uint8).reshape(n_blocks, Q4K_BYTES)
    u = blocks[:, 0:2].copy().view(np.uint16)[:, 0].astype(np.float32) / 65536.0
    sc = (SCALE_LO + blocks[:, 4:12] % SCALE_SPAN).astype(np.int16)          # (n, 8)
    noise_bytes = blocks[:, 12:16]
    nibbles = np.concatenate([noise_bytes & 0xF, noise_bytes >> 4], axis=1)  # (n, 8)
    noise = np.where(nibbles < 14, (nibbles % 7).astype(np.int16) - 3, 0)   # -3..3, mean 0
    mn = np.clip(sc + noise, 0, 63).astype(np.uint8)
    sc = sc.astype(np.uint8)
    d = (d_base * (1.0 - D_JITTER / 2 + D_JITTER * u)).astype(np.float16)
    dmin = (d.astype(np.float32) * MIN_RATIO).astype(np.float16)
    blocks[:, 0:2] = d.view(np.uint8).reshape(n_blocks, 2)
    blocks[:, 2:4] = dmin.view(np.uint8).reshape(n_blocks, 2)
    # ggml's get_scale_min_k4: sub-blocks 0-3 keep their 6 bits in bytes 4-7 (scales) and 8-11
    # (mins); sub-blocks 4-7 keep their low 4 bits in bytes 12-15 and their top 2 bits in the top
    # 2 bits of bytes 4-11.
    blocks[:, 4:8] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    blocks[:, 8:12] = mn[:, 0:4] | ((mn[:, 4:8] >> 4) << 6)
    blocks[:, 12:16] = (sc[:, 4:8] & 0xF) | ((mn[:, 4:8] & 0xF) << 4)
    return blocks


def dequantize_q4k(blocks: np.ndarray) -> np.ndarray:
    """(n, 144) uint8 -> (n, 256) float32: the reference decoding, for the self-check."""
    n = blocks.shape[0]
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    s = blocks[:, 4:16].astype(np.uint8)
    sc = np.empty((n, 8), np.float32)
    mn = np.empty((n, 8), np.float32)
    sc[:, 0:4] = s[:, 0:4] & 63
    mn[:, 0:4] = s[:, 4:8] & 63
    sc[:, 4:8] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:8] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    qs = blocks[:, 16:].reshape(n, 4, 32)
    q = np.empty((n, 8, 32), np.float32)
    q[:, 0::2, :] = qs & 0xF   # each 32-byte group: low nibbles are sub-block 2c, high 2c+1
    q[:, 1::2, :] = qs >> 4
    return (d[:, :, None] * sc[:, :, None] * q - dmin[:, :, None] * mn[:, :, None]).reshape(n, QK_K)


# ---------------------------------------------------------------------------------------------
# Model layout

class Shape:
    def __init__(self, config: dict, vocab: int | None):
        get = config.get
        self.hidden = int(config["hidden_size"])
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.kv_heads = int(get("num_key_value_heads", self.heads))
        self.head_dim = int(get("head_dim") or self.hidden // self.heads)
        self.ffn = int(config["intermediate_size"])
        self.config_vocab = int(config["vocab_size"])
        self.vocab = int(vocab) if vocab else self.config_vocab
        self.tied = bool(get("tie_word_embeddings", False))
        self.eps = float(get("rms_norm_eps", 1e-5))
        self.theta = float(get("rope_theta", 10000.0))
        self.context = int(get("max_position_embeddings", 4096))
        self.rope_scaling = get("rope_scaling") or None
        if (get("attention_bias") or get("mlp_bias")):
            raise SystemExit("biases are not written (Llama has none); config asks for them")


def tensor_plan(shape: Shape):
    """[(name, gguf dims fastest first, ggml type)] in llama.cpp's order."""
    def matrix(name, rows, cols):  # a (rows, cols) Hugging Face weight: GGUF dims [cols, rows]
        return (name, [cols, rows], GGML_Q4_K if cols % QK_K == 0 else GGML_F16)
    H, F, V = shape.hidden, shape.ffn, shape.vocab
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    plan = [matrix("token_embd.weight", V, H)]
    if rope_divisors(shape) is not None:
        plan.append(("rope_freqs.weight", [shape.head_dim // 2], GGML_F32))
    for i in range(shape.layers):
        p = f"blk.{i}."
        plan += [(p + "attn_norm.weight", [H], GGML_F32),
                 matrix(p + "attn_q.weight", q, H), matrix(p + "attn_k.weight", kv, H),
                 matrix(p + "attn_v.weight", kv, H), matrix(p + "attn_output.weight", H, q),
                 (p + "ffn_norm.weight", [H], GGML_F32),
                 matrix(p + "ffn_gate.weight", F, H), matrix(p + "ffn_up.weight", F, H),
                 matrix(p + "ffn_down.weight", H, F)]
    plan.append(("output_norm.weight", [H], GGML_F32))
    if not shape.tied:
        plan.append(matrix("output.weight", V, H))
    return plan


def tensor_bytes(dims, ggml_type) -> int:
    n = int(np.prod(dims))
    if ggml_type == GGML_Q4_K:
        return n // QK_K * Q4K_BYTES
    return n * (2 if ggml_type == GGML_F16 else 4)


def rope_divisors(shape: Shape):
    """llama.cpp's rope_freqs for Llama 3.1 scaling: per frequency, plain / scaled."""
    s = shape.rope_scaling
    if not s or s.get("rope_type", s.get("type")) != "llama3":
        if s and s.get("rope_type", s.get("type")) not in (None, "default"):
            raise SystemExit(f"rope_scaling {s} is not written (supported: none, llama3)")
        return None
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = float(s["original_max_position_embeddings"])
    inv = 1.0 / shape.theta ** (np.arange(0, shape.head_dim, 2, dtype=np.float64) / shape.head_dim)
    wavelen = 2 * np.pi / inv
    smooth = np.clip((old / wavelen - low) / (high - low), 0.0, 1.0)
    scaled = np.where(wavelen > old / low, inv / factor,
                      np.where(wavelen < old / high, inv, (1 - smooth) * inv / factor + smooth * inv))
    return (inv / scaled).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Tokenizer

def bytes_to_unicode():
    """GPT-2's spelling of the 256 bytes: printable Latin-1 as itself, the rest from U+0100 up."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    spelled, extra = {}, 0
    for b in range(256):
        if b in printable:
            spelled[b] = chr(b)
        else:
            spelled[b] = chr(256 + extra)
            extra += 1
    return [spelled[b] for b in range(256)]


MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]


def tokenizer_metadata(shape: Shape, config: dict):
    """The byte tokens at 0..255; bos/eos at the config's ids (the last ids of a shrunk
    vocabulary); as many of MERGES as there are free ids (at least one: the loader wants merges);
    placeholders elsewhere."""
    V = shape.vocab
    eos = config.get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
    bos = config.get("bos_token_id")
    if V != shape.config_vocab or bos is None or not eos or \
            not all(256 <= i < V for i in [bos] + eos):
        bos, eos = V - 2, [V - 1]
    specials = {bos: "<|begin_of_text|>"}
    for k, i in enumerate(eos):
        specials[i] = "<|end_of_text|>" if k == 0 else f"<|eot_{k}|>"
    free = [i for i in range(256, V) if i not in specials]
    merges = MERGES[:len(free)]
    if V < 256 + 3 or not merges:
        raise SystemExit(f"vocabulary {V} is too small: 256 byte tokens, a merge, bos and eos")
    tokens = bytes_to_unicode() + [f"<|placeholder_{i}|>" for i in range(256, V)]
    types = [TOKEN_NORMAL] * 256 + [TOKEN_UNUSED] * (V - 256)
    for i, (a, b) in zip(free, merges):
        tokens[i], types[i] = a + b, TOKEN_NORMAL
    for i, text in specials.items():
        tokens[i], types[i] = text, TOKEN_CONTROL
    kv = [("tokenizer.ggml.model", T_STRING, "gpt2"),
          ("tokenizer.ggml.pre", T_STRING, "llama-bpe"),
          ("tokenizer.ggml.tokens", T_ARRAY, (T_STRING, tokens)),
          ("tokenizer.ggml.token_type", T_ARRAY, (T_I32, types)),
          ("tokenizer.ggml.merges", T_ARRAY, (T_STRING, [f"{a} {b}" for a, b in merges])),
          ("tokenizer.ggml.bos_token_id", T_U32, bos),
          ("tokenizer.ggml.eos_token_id", T_U32, eos[0]),
          ("tokenizer.ggml.add_bos_token", T_BOOL, True)]
    if len(eos) > 1:
        kv.append(("tokenizer.ggml.eot_token_id", T_U32, eos[-1]))
    if len(eos) > 2:
        kv.append(("tokenizer.ggml.eom_token_id", T_U32, eos[1]))
    return kv


# ---------------------------------------------------------------------------------------------
# GGUF container

def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


_SCALAR = {T_U32: "<I", T_I32: "<i", T_F32: "<f", T_BOOL: "<?"}


def _value(vtype, value) -> bytes:
    if vtype == T_STRING:
        return _string(value)
    if vtype == T_ARRAY:
        etype, items = value
        head = struct.pack("<IQ", etype, len(items))
        if etype == T_STRING:
            return head + b"".join(_string(s) for s in items)
        return head + np.asarray(items, dtype=np.dtype(_SCALAR[etype])).tobytes()
    return struct.pack(_SCALAR[vtype], value)


def gguf_header(kv, plan) -> tuple[bytes, list[int]]:
    """Header, metadata and tensor infos, padded to the alignment; and each tensor's offset."""
    out = [b"GGUF", struct.pack("<IQQ", 3, len(plan), len(kv))]
    for key, vtype, value in kv:
        out += [_string(key), struct.pack("<I", vtype), _value(vtype, value)]
    offsets, offset = [], 0
    for name, dims, ggml_type in plan:
        offsets.append(offset)
        out += [_string(name), struct.pack("<I", len(dims)),
                struct.pack(f"<{len(dims)}Q", *dims), struct.pack("<IQ", ggml_type, offset)]
        offset += -(-tensor_bytes(dims, ggml_type) // ALIGNMENT) * ALIGNMENT
    head = b"".join(out)
    return head + b"\0" * (-len(head) % ALIGNMENT), offsets


def model_metadata(shape: Shape, name: str):
    p = "llama."
    kv = [("general.architecture", T_STRING, "llama"),
          ("general.name", T_STRING, name),
          ("general.file_type", T_U32, LLAMA_FTYPE_MOSTLY_Q4_K_S),
          ("general.quantization_version", T_U32, 2),
          (p + "vocab_size", T_U32, shape.vocab),
          (p + "context_length", T_U32, shape.context),
          (p + "embedding_length", T_U32, shape.hidden),
          (p + "block_count", T_U32, shape.layers),
          (p + "feed_forward_length", T_U32, shape.ffn),
          (p + "attention.head_count", T_U32, shape.heads),
          (p + "attention.head_count_kv", T_U32, shape.kv_heads),
          (p + "rope.dimension_count", T_U32, shape.head_dim),
          (p + "rope.freq_base", T_F32, shape.theta),
          (p + "attention.layer_norm_rms_epsilon", T_F32, shape.eps)]
    if shape.head_dim != shape.hidden // shape.heads:
        kv += [(p + "attention.key_length", T_U32, shape.head_dim),
               (p + "attention.value_length", T_U32, shape.head_dim)]
    if shape.rope_scaling and rope_divisors(shape) is not None:
        kv.append((p + "rope.scaling.original_context_length", T_U32,
                   int(shape.rope_scaling["original_max_position_embeddings"])))
    return kv


# ---------------------------------------------------------------------------------------------
# Writing

def tensor_chunks(index, name, dims, ggml_type, seed, std, d_base, shape):
    """Tasks producing the tensor's data in order: each a function of no arguments returning a
    contiguous array (written as its bytes). Every chunk has its own generator seeded from
    (seed, tensor index, chunk index), so the file does not depend on how many threads write it."""
    def gen(k):
        return np.random.default_rng([seed, index, k])
    if name == "rope_freqs.weight":
        return [lambda: rope_divisors(shape)]
    if ggml_type == GGML_F32:  # norm weights: around 1, as trained ones are
        return [lambda: (1.0 + 0.05 * gen(0).standard_normal(dims[0])).astype(np.float32)]
    n = int(np.prod(dims))
    if ggml_type == GGML_F16:
        per = BLOCKS_PER_CHUNK * QK_K
        return [(lambda k=k: (gen(k).standard_normal(min(per, n - k * per), dtype=np.float32)
                              * std).astype(np.float16))
                for k in range(-(-n // per))]
    blocks = n // QK_K
    return [(lambda k=k: random_q4k_blocks(gen(k), min(BLOCKS_PER_CHUNK, blocks - k * BLOCKS_PER_CHUNK),
                                           d_base))
            for k in range(-(-blocks // BLOCKS_PER_CHUNK))]


def write_gguf(path, shape: Shape, config: dict, seed: int, std: float, threads: int, name: str):
    d_base = d_base_for_std(std)
    plan = tensor_plan(shape)
    kv = model_metadata(shape, name) + tokenizer_metadata(shape, config)
    head, offsets = gguf_header(kv, plan)
    tasks = []
    for index, (tname, dims, ggml_type) in enumerate(plan):
        chunks = tensor_chunks(index, tname, dims, ggml_type, seed, std, d_base, shape)
        pad = -tensor_bytes(dims, ggml_type) % ALIGNMENT
        tasks += chunks + ([lambda pad=pad: np.zeros(pad, np.uint8)] if pad else [])
    # Written beside the target and renamed at the end: a failed run leaves no half a model.
    partial = path + ".part"
    written = 0
    try:
        with open(partial, "wb") as f, ThreadPoolExecutor(max_workers=threads) as pool:
            written += f.write(head)
            # Bounded look-ahead: at most 2 * threads chunks are held in memory at once.
            pending = []
            for task in tasks:
                pending.append(pool.submit(task))
                if len(pending) >= 2 * threads:
                    written += f.write(memoryview(pending.pop(0).result()).cast("B"))
            for fut in pending:
                written += f.write(memoryview(fut.result()).cast("B"))
        expected = len(head) + offsets[-1] + tensor_bytes(plan[-1][1], plan[-1][2])
        if written != expected:
            raise RuntimeError(f"{path}: wrote {written} bytes, the tensor infos say {expected}")
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    os.replace(partial, path)
    return plan, written


def self_check(std: float, seed: int):
    """The blocks decode to values of the intended spread, centred, and finite."""
    values = dequantize_q4k(random_q4k_blocks(np.random.default_rng([seed, 1 << 30]), 4096,
                                              d_base_for_std(std)))
    got_std, got_mean = float(values.std()), float(values.mean())
    if not np.isfinite(values).all() or abs(got_std / std - 1) > 0.03 or abs(got_mean) > 0.02 * std:
        raise RuntimeError(f"random Q4_K blocks decode to std {got_std:.5f}, mean {got_mean:.6f}; "
                           f"intended std {std}, mean 0")
    return got_std, got_mean


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a Hugging Face style config.json (Llama family)")
    ap.add_argument("output", help="the .gguf file to write")
    ap.add_argument("--vocab", type=int, default=0,
                    help="vocabulary size (default: the config's); bos and eos take the last ids")
    ap.add_argument("--std", type=float, default=0.02, help="standard deviation of the weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1))
    args = ap.parse_args()
    if sys.byteorder != "little":
        raise SystemExit("GGUF is written little-endian from numpy's native arrays: needs a little-endian host")
    with open(args.config) as f:
        config = json.load(f)
    shape = Shape(config, args.vocab or None)
    if not (args.std > 0 and np.isfinite(args.std)):
        raise SystemExit(f"--std must be positive, got {args.std}")
    got_std, got_mean = self_check(args.std, args.seed)
    t0 = time.monotonic()
    name = "random-q4k-" + os.path.splitext(os.path.basename(args.config))[0]
    plan, written = write_gguf(args.output, shape, config, args.seed, args.std, args.threads, name)
    seconds = time.monotonic() - t0
    counts = {}
    for _, _, t in plan:
        label = {GGML_Q4_K: "Q4_K", GGML_F16: "F16", GGML_F32: "F32"}[t]
        counts[label] = counts.get(label, 0) + 1
    print(f"{args.output}: {written / 2**20:.1f} MiB in {seconds:.1f} s ({args.threads} threads); "
          f"{len(plan)} tensors {counts}; vocab {shape.vocab}; Q4_K values std {got_std:.5f} "
          f"mean {got_mean:+.6f} (intended {args.std})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
