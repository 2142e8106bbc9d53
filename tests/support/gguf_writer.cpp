#include "tests/support/gguf_writer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>

namespace starattn::testing {
namespace {

GgufValue scalar(GgufType type) {
  GgufValue v;
  v.type = type;
  return v;
}

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_value(std::string& out, const GgufValue& v) {
  switch (v.type) {
    case GgufType::u8: put<uint8_t>(out, static_cast<uint8_t>(v.i)); break;
    case GgufType::i8: put<int8_t>(out, static_cast<int8_t>(v.i)); break;
    case GgufType::u16: put<uint16_t>(out, static_cast<uint16_t>(v.i)); break;
    case GgufType::i16: put<int16_t>(out, static_cast<int16_t>(v.i)); break;
    case GgufType::u32: put<uint32_t>(out, static_cast<uint32_t>(v.i)); break;
    case GgufType::i32: put<int32_t>(out, static_cast<int32_t>(v.i)); break;
    case GgufType::u64: put<uint64_t>(out, v.u); break;
    case GgufType::i64: put<int64_t>(out, v.i); break;
    case GgufType::f32: put<float>(out, static_cast<float>(v.f)); break;
    case GgufType::f64: put<double>(out, v.f); break;
    case GgufType::boolean: put<uint8_t>(out, v.i ? 1 : 0); break;
    case GgufType::string: put_string(out, v.str); break;
    case GgufType::array:
      put<uint32_t>(out, static_cast<uint32_t>(v.array_type));
      put<uint64_t>(out, v.array.size());
      for (const GgufValue& e : v.array) put_value(out, e);
      break;
  }
}

uint16_t half_bits(float x) { return f32_to_f16(x); }

void put_half(std::vector<uint8_t>& out, float x) {
  const uint16_t h = half_bits(x);
  out.push_back(static_cast<uint8_t>(h & 0xFF));
  out.push_back(static_cast<uint8_t>(h >> 8));
}

int clamp_round(float v, int lo, int hi) {
  return std::min(hi, std::max(lo, static_cast<int>(std::lround(v))));
}

}  // namespace

GgufValue gguf_string(const std::string& s) {
  GgufValue v = scalar(GgufType::string);
  v.str = s;
  return v;
}
GgufValue gguf_u32(uint32_t x) {
  GgufValue v = scalar(GgufType::u32);
  v.i = x;
  return v;
}
GgufValue gguf_i32(int32_t x) {
  GgufValue v = scalar(GgufType::i32);
  v.i = x;
  return v;
}
GgufValue gguf_f32(float x) {
  GgufValue v = scalar(GgufType::f32);
  v.f = x;
  return v;
}
GgufValue gguf_bool(bool x) {
  GgufValue v = scalar(GgufType::boolean);
  v.i = x;
  return v;
}
GgufValue gguf_strings(const std::vector<std::string>& xs) {
  GgufValue v = scalar(GgufType::array);
  v.array_type = GgufType::string;
  for (const std::string& s : xs) v.array.push_back(gguf_string(s));
  return v;
}
GgufValue gguf_i32s(const std::vector<int32_t>& xs) {
  GgufValue v = scalar(GgufType::array);
  v.array_type = GgufType::i32;
  for (int32_t x : xs) v.array.push_back(gguf_i32(x));
  return v;
}
GgufValue gguf_f32s(const std::vector<float>& xs) {
  GgufValue v = scalar(GgufType::array);
  v.array_type = GgufType::f32;
  for (float x : xs) v.array.push_back(gguf_f32(x));
  return v;
}

std::vector<uint8_t> ggml_quantize(uint32_t type, const float* x, int64_t n) {
  std::vector<uint8_t> out;
  if (type == ggml_type::f32) {
    out.resize(static_cast<size_t>(n) * 4);
    std::memcpy(out.data(), x, out.size());
    return out;
  }
  if (type == ggml_type::f16 || type == ggml_type::bf16) {
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t h = type == ggml_type::f16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
      out.push_back(static_cast<uint8_t>(h & 0xFF));
      out.push_back(static_cast<uint8_t>(h >> 8));
    }
    return out;
  }
  if (n % 32 != 0) throw std::invalid_argument("ggml_quantize: n must be a multiple of 32");
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* v = x + 32 * b;
    float amax = 0, lo = v[0], hi = v[0];
    for (int k = 0; k < 32; ++k) {
      amax = std::max(amax, std::fabs(v[k]));
      lo = std::min(lo, v[k]);
      hi = std::max(hi, v[k]);
    }
    if (type == ggml_type::q8_0) {
      const float d = amax / 127.0f;
      put_half(out, d);
      const float id = d > 0 ? 1.0f / f16_to_f32(half_bits(d)) : 0.0f;
      for (int k = 0; k < 32; ++k)
        out.push_back(static_cast<uint8_t>(static_cast<int8_t>(clamp_round(v[k] * id, -127, 127))));
    } else if (type == ggml_type::q4_0 || type == ggml_type::q4_1) {
      const bool q41 = type == ggml_type::q4_1;
      const float d = q41 ? (hi - lo) / 15.0f : amax / 7.0f;
      put_half(out, d);
      if (q41) put_half(out, lo);
      const float dq = f16_to_f32(half_bits(d));
      const float m = q41 ? f16_to_f32(half_bits(lo)) : 0.0f;
      const float id = dq > 0 ? 1.0f / dq : 0.0f;
      int q[32];
      for (int k = 0; k < 32; ++k)
        q[k] = q41 ? clamp_round((v[k] - m) * id, 0, 15) : clamp_round(v[k] * id, -8, 7) + 8;
      for (int k = 0; k < 16; ++k) out.push_back(static_cast<uint8_t>(q[k] | (q[k + 16] << 4)));
    } else {
      throw std::invalid_argument("ggml_quantize: unsupported type " + ggml_type_name(type));
    }
  }
  return out;
}

std::vector<uint8_t> random_kquant_blocks(uint32_t type, int64_t n, float stddev, uint64_t seed) {
  int64_t block_elements = 0, block_bytes = 0;
  if (type < ggml_type::q2_k || type > ggml_type::q6_k || !ggml_type_layout(type, block_elements, block_bytes) ||
      n % block_elements != 0)
    throw std::invalid_argument("random_kquant_blocks: " + ggml_type_name(type) + " with " + std::to_string(n) +
                                " values (K-quants only, a multiple of 256)");
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(static_cast<size_t>(n / block_elements * block_bytes));
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng());
  // Where each type keeps its f16 d (and dmin); the size of (scale x value) a random block
  // reaches; and for the types with minimums, the mean value over the mean minimum (dmin is d
  // times that, so that subtracting the minimum centres the values).
  int d_at = 0, dmin_at = -1;
  float span = 1, centre = 0;
  switch (type) {
    case ggml_type::q2_k: d_at = 80; dmin_at = 82; span = 15 * 3; centre = 1.5f; break;
    case ggml_type::q3_k: d_at = 108; span = 32 * 4; break;
    case ggml_type::q4_k: d_at = 0; dmin_at = 2; span = 63 * 15; centre = 7.5f; break;
    case ggml_type::q5_k: d_at = 0; dmin_at = 2; span = 63 * 31; centre = 15.5f; break;
    default: d_at = 208; span = 127 * 32; break;
  }
  std::uniform_real_distribution<float> jitter(0.5f, 1.5f);
  for (size_t b = 0; b < out.size(); b += static_cast<size_t>(block_bytes)) {
    // Symmetric types take either sign of d; with a minimum, d > 0 and dmin centres.
    const float sign = dmin_at < 0 && (rng() & 1) ? -1.0f : 1.0f;
    const float d = 3.0f * stddev / span * jitter(rng) * sign;
    const uint16_t dh = f32_to_f16(d);
    std::memcpy(&out[b + d_at], &dh, 2);
    if (dmin_at >= 0) {
      const uint16_t mh = f32_to_f16(d * centre);
      std::memcpy(&out[b + dmin_at], &mh, 2);
    }
  }
  return out;
}

std::string gguf_bytes(const GgufMetadata& metadata, const std::vector<GgufTensorToWrite>& tensors,
                       uint32_t version, uint64_t alignment) {
  std::string out = "GGUF";
  put<uint32_t>(out, version);
  put<uint64_t>(out, tensors.size());
  put<uint64_t>(out, metadata.size());
  for (const auto& [key, value] : metadata) {
    put_string(out, key);
    put<uint32_t>(out, static_cast<uint32_t>(value.type));
    put_value(out, value);
  }
  std::vector<std::vector<uint8_t>> data;
  uint64_t offset = 0;
  for (const GgufTensorToWrite& t : tensors) {
    data.push_back(t.raw.empty() ? ggml_quantize(t.type, t.values.data(), static_cast<int64_t>(t.values.size()))
                                 : t.raw);
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put<uint64_t>(out, static_cast<uint64_t>(*it));
    put<uint32_t>(out, t.type);
    put<uint64_t>(out, offset);
    offset += (data.back().size() + alignment - 1) / alignment * alignment;
  }
  out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
  for (const auto& d : data) {
    out.append(reinterpret_cast<const char*>(d.data()), d.size());
    out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
  }
  return out;
}

void write_gguf(const std::string& path, const GgufMetadata& metadata,
                const std::vector<GgufTensorToWrite>& tensors, uint32_t version, uint64_t alignment) {
  const std::string bytes = gguf_bytes(metadata, tensors, version, alignment);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

void write_llama_gguf(const std::string& path, const ModelConfig& c,
                      const std::vector<NamedTensor>& tensors, uint32_t matrix_type, bool permute_qk,
                      GgufMetadata extra) {
  const std::string a = c.architecture + ".";
  GgufMetadata md = {
      {"general.architecture", gguf_string(c.architecture)},
      {a + "context_length", gguf_u32(static_cast<uint32_t>(c.max_position_embeddings))},
      {a + "embedding_length", gguf_u32(static_cast<uint32_t>(c.hidden_size))},
      {a + "block_count", gguf_u32(static_cast<uint32_t>(c.num_layers))},
      {a + "feed_forward_length", gguf_u32(static_cast<uint32_t>(c.intermediate_size))},
      {a + "attention.head_count", gguf_u32(static_cast<uint32_t>(c.num_heads))},
      {a + "attention.head_count_kv", gguf_u32(static_cast<uint32_t>(c.num_kv_heads))},
      {a + "attention.key_length", gguf_u32(static_cast<uint32_t>(c.head_dim))},
      {a + "attention.layer_norm_rms_epsilon", gguf_f32(c.rms_norm_eps)},
      {a + "rope.freq_base", gguf_f32(c.rope_theta)},
      {a + "rope.dimension_count", gguf_u32(static_cast<uint32_t>(c.head_dim))},
      {a + "vocab_size", gguf_u32(static_cast<uint32_t>(c.vocab_size))},
      {"tokenizer.ggml.bos_token_id", gguf_u32(static_cast<uint32_t>(c.bos_token_id))},
  };
  if (!c.eos_token_ids.empty())
    md.push_back({"tokenizer.ggml.eos_token_id", gguf_u32(static_cast<uint32_t>(c.eos_token_ids[0]))});
  std::vector<GgufTensorToWrite> out;
  if (c.rope_scaling.type == "llama3") {
    // llama.cpp's converter: one divisor per frequency, the llama3 rule written out directly.
    const RopeScaling& s = c.rope_scaling;
    md.push_back({a + "rope.scaling.original_context_length",
                  gguf_u32(static_cast<uint32_t>(s.original_max_position_embeddings))});
    GgufTensorToWrite freqs{"rope_freqs.weight", {c.head_dim / 2}, {}, ggml_type::f32};
    const double kPi = 3.14159265358979323846;
    for (int i = 0; i < c.head_dim / 2; ++i) {
      const double freq = 1.0 / std::pow(static_cast<double>(c.rope_theta), 2.0 * i / c.head_dim);
      const double wavelen = 2 * kPi / freq;
      const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
      const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
      double divisor;
      if (wavelen < high_wavelen) {
        divisor = 1;
      } else if (wavelen > low_wavelen) {
        divisor = s.factor;
      } else {
        const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        divisor = 1 / ((1 - smooth) / s.factor + smooth);
      }
      freqs.values.push_back(static_cast<float>(divisor));
    }
    out.push_back(freqs);
  }
  for (auto& kv : extra) md.push_back(std::move(kv));

  for (const NamedTensor& t : tensors) {
    GgufTensorToWrite g{GgufWeights::gguf_name(t.name), t.shape, t.data,
                        t.shape.size() == 2 ? matrix_type : ggml_type::f32};
    if (g.name.empty()) throw std::invalid_argument("write_llama_gguf: no GGUF name for " + t.name);
    const bool q = t.name.find(".q_proj.") != std::string::npos;
    const bool k = t.name.find(".k_proj.") != std::string::npos;
    if (permute_qk && (q || k)) {
      const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
      gguf_permute_rows(g.values.data(), q ? c.num_heads : c.num_kv_heads, c.head_dim, cols);
    }
    out.push_back(std::move(g));
  }
  write_gguf(path, md, out);
}

}  // namespace starattn::testing
