#!/usr/bin/env python3
"""Re-quantize a GGUF model's matrices to Q4_K, for measuring K-quant models end to end.

Every 2-D tensor whose rows are whole Q4_K super-blocks (a multiple of 256 values) is
dequantized (gguf.quants.dequantize) and encoded as Q4_K; every other tensor and all metadata
are copied unchanged. For SmolLM2-135M (hidden 576) that is the 30 ffn_down matrices (rows of
1536): llama.cpp's own K-quant presets fall back to other types for the 576-wide matrices too.

The encoder is a plain one (not llama.cpp's search for the best scales): per 32-value
sub-block, min m <= 0 and scale s = (max - m) / 15; the super-block's f16 d and dmin are the
largest s and -m over 63; the 6-bit sub-block scales and mins are rounded against those, and
each value to the nearest of the 16 levels. Every block is checked against
gguf.quants.dequantize: no value is off by more than its sub-block's step plus what rounding the
6-bit scale and min can add at the ends of the range.

  python tools/quant/requantize_q4k.py IN.gguf OUT.gguf
"""
import argparse
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

QK = 256


def encode_q4_k(x: np.ndarray) -> np.ndarray:
    """x: (blocks, 256) float32 -> (blocks, 144) uint8 Q4_K blocks."""
    sub = x.reshape(-1, 8, 32).astype(np.float32)
    lo = np.minimum(sub.min(axis=2), 0.0)
    hi = sub.max(axis=2)
    scale = (hi - lo) / 15.0
    minimum = -lo
    d = (scale.max(axis=1) / 63.0).astype(np.float16)
    dmin = (minimum.max(axis=1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, 63).astype(np.uint8)
        mn = np.where(dmin32 > 0, np.rint(minimum / dmin32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc)[:, :, None]
        offset = (dmin32 * mn)[:, :, None]
        q = np.where(step > 0, np.rint((sub + offset) / step), 0).clip(0, 15).astype(np.uint8)
    n = x.shape[0]
    out = np.zeros((n, 144), dtype=np.uint8)
    out[:, 0:2] = d.view(np.uint8).reshape(n, 2)
    out[:, 2:4] = dmin.view(np.uint8).reshape(n, 2)
    for j in range(4):
        out[:, 4 + j] = sc[:, j] | ((sc[:, j + 4] >> 4) << 6)
        out[:, 8 + j] = mn[:, j] | ((mn[:, j + 4] >> 4) << 6)
        out[:, 12 + j] = (sc[:, j + 4] & 0xF) | ((mn[:, j + 4] & 0xF) << 4)
    for c in range(4):
        out[:, 16 + 32 * c:16 + 32 * (c + 1)] = q[:, 2 * c, :] | (q[:, 2 * c + 1, :] << 4)
    # The check: the reference dequantizer gives back every value within half a step (rounding
    # to a level) plus what the rounded 6-bit scale (up to d/2 over 15 levels) and min (dmin/2)
    # can add where the value is clipped at an end of the range; the bound below is looser.
    back = dequantize(out.reshape(-1), Q.Q4_K).reshape(n, 8, 32)
    bound = (step + dmin32[:, :, None] * 0.5 + d32[:, :, None] * 8.0 + 1e-6)
    worst = np.abs(back - sub) - bound
    if (worst > 0).any():
        raise RuntimeError(f"Q4_K encoding error past its bound by {worst.max()}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    args = ap.parse_args()
    reader = gguf.GGUFReader(args.input)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(args.output, arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    tensors = []
    converted = 0
    for t in reader.tensors:
        cols = int(t.shape[0])  # GGUF dims: fastest first
        if len(t.shape) == 2 and cols % QK == 0 and t.tensor_type != Q.Q4_K:
            values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1, QK)
            rows = int(t.shape[1])
            data = encode_q4_k(values).reshape(rows, cols // QK * 144)
            tensors.append((t.name, data, Q.Q4_K))
            converted += 1
        else:
            tensors.append((t.name, t.data, t.tensor_type))
    for name, data, qtype in tensors:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data, _ in tensors:
        writer.write_tensor_data(data)
    writer.close()
    types = {}
    for _, _, qtype in tensors:
        types[qtype.name] = types.get(qtype.name, 0) + 1
    print(f"{args.output}: {converted} tensors re-quantized to Q4_K; tensor types now {types}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
