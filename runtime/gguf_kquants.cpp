// The K-quant dequantizers. A super-block holds 256 values in sub-blocks of 16 or 32 values,
// each with its own scale (and, for Q2_K/Q4_K/Q5_K, its own minimum) quantized against the
// super-block's f16 d (and dmin). Value order and bit packing are the format's, as the `gguf`
// Python package's gguf/quants.py unpacks them; every float operation below is the one that
// package performs in float32 (d * scale first, then * q, then - dmin * min), so the values
// are bit-identical to gguf.quants.dequantize (tests/test_kquants.cpp checks this live).
#include <cstring>

#include "runtime/gguf.h"
#include "runtime/safetensors.h"

namespace starattn {
namespace {

constexpr int kQK = 256;  // values per super-block

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Q2_K, 84 bytes: scales[16] (low nibble scale, high nibble min, one per 16 values), qs[64]
// (2-bit values), f16 d, f16 dmin. Value e = 128*h + 32*j + l is bits 2j..2j+1 of qs[32h + l].
void q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = half_at(b + 80), dmin = half_at(b + 82);
  for (int e = 0; e < kQK; ++e) {
    const int h = e / 128, j = (e % 128) / 32, l = e % 32;
    const int s = e / 16;
    const float dl = d * static_cast<float>(scales[s] & 0xF);
    const float ml = dmin * static_cast<float>(scales[s] >> 4);
    const int q = (qs[32 * h + l] >> (2 * j)) & 3;
    y[e] = dl * static_cast<float>(q) - ml;
  }
}

// Q3_K, 110 bytes: hmask[32] (the third bit of value e is bit e/32 of hmask[e%32], and a clear
// bit subtracts 4), qs[64] (low 2 bits, packed as Q2_K), scales[12] (sixteen 6-bit scales
// biased by 32: low 4 bits from bytes 0-7, high 2 bits from bytes 8-11), f16 d.
void q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = half_at(b + 108);
  for (int e = 0; e < kQK; ++e) {
    const int h = e / 128, j = (e % 128) / 32, l = e % 32;
    const int s = e / 16;
    const int low = (s < 8 ? sc[s] : sc[s - 8] >> 4) & 0xF;
    const int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
    const int scale = static_cast<int>(static_cast<int8_t>(static_cast<uint8_t>(low | (high << 4)))) - 32;
    const float dl = d * static_cast<float>(scale);
    const int ql = (qs[32 * h + l] >> (2 * j)) & 3;
    const int qh = (hmask[l] >> (e / 32)) & 1;
    y[e] = dl * static_cast<float>(ql - ((qh ^ 1) << 2));
  }
}

// The eight 6-bit scales and mins of Q4_K/Q5_K from their 12 packed bytes: sub-blocks 0-3 in
// the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); 4-7 in the nibbles of bytes 8-11 with
// their top 2 bits in the top bits of bytes 0-3 (scales) and 4-7 (mins).
void scale_min_k4(const uint8_t* p, int j, int& scale, int& min) {
  if (j < 4) {
    scale = p[j] & 0x3F;
    min = p[j + 4] & 0x3F;
  } else {
    scale = (p[j + 4] & 0x0F) | ((p[j - 4] >> 2) & 0x30);
    min = (p[j + 4] >> 4) | ((p[j] >> 2) & 0x30);
  }
}

// Q4_K, 144 bytes: f16 d, f16 dmin, scales[12], qs[128]. Sub-block s (32 values) is the low
// (s even) or high (s odd) nibbles of qs[32*(s/2) ..].
// Q5_K, 176 bytes: the same plus qh[32] before qs: bit s of qh[l] is the fifth bit of value
// 32s + l.
void q45_k(const uint8_t* b, float* y, bool five_bits) {
  const float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = five_bits ? b + 48 : b + 16;
  for (int s = 0; s < 8; ++s) {
    int scale, min;
    scale_min_k4(scales, s, scale, min);
    const float dl = d * static_cast<float>(scale);
    const float ml = dmin * static_cast<float>(min);
    for (int l = 0; l < 32; ++l) {
      int q = (qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0xF;
      if (five_bits) q |= ((qh[l] >> s) & 1) << 4;
      y[32 * s + l] = dl * static_cast<float>(q) - ml;
    }
  }
}

// Q6_K, 210 bytes: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8, one per 16
// values), f16 d. Value e = 128*h + 32*j + l (j < 4): low nibble j%2... as unpacked below; the
// 6-bit value is biased by 32.
void q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half_at(b + 208);
  for (int e = 0; e < kQK; ++e) {
    const int h = e / 128, r = e % 128;
    // Low bits: the nibble r/64 of ql[64h + r%64]; high bits: bits 2(r/32).. of qh[32h + r%32].
    const int low = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0xF;
    const int high = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
    const int q = static_cast<int>(static_cast<int8_t>(static_cast<uint8_t>(low | (high << 4)))) - 32;
    const float dl = d * static_cast<float>(scales[e / 16]);
    y[e] = dl * static_cast<float>(q);
  }
}

}  // namespace

bool ggml_dequantize_k(uint32_t type, const uint8_t* src, int64_t n, float* out) {
  int64_t block_elements = 0, block_bytes = 0;
  switch (type) {
    case ggml_type::q2_k: case ggml_type::q3_k: case ggml_type::q4_k: case ggml_type::q5_k:
    case ggml_type::q6_k:
      ggml_type_layout(type, block_elements, block_bytes);
      break;
    default:
      return false;
  }
  for (int64_t blk = 0; blk < n / kQK; ++blk) {
    const uint8_t* b = src + blk * block_bytes;
    float* y = out + blk * kQK;
    switch (type) {
      case ggml_type::q2_k: q2_k(b, y); break;
      case ggml_type::q3_k: q3_k(b, y); break;
      case ggml_type::q4_k: q45_k(b, y, false); break;
      case ggml_type::q5_k: q45_k(b, y, true); break;
      default: q6_k(b, y); break;
    }
  }
  return true;
}

}  // namespace starattn
