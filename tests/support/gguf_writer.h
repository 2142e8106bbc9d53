// Writing GGUF files for tests: metadata of every type, tensors stored as F32/F16/BF16 or
// quantized to Q8_0/Q4_0/Q4_1, and whole Llama models laid out as llama.cpp's converter does
// (GGUF names, q/k rows permuted for interleaved RoPE, llama3 RoPE as rope_freqs.weight).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/gguf.h"
#include "runtime/model_config.h"
#include "runtime/safetensors.h"

namespace starattn::testing {

GgufValue gguf_string(const std::string& s);
GgufValue gguf_u32(uint32_t v);
GgufValue gguf_i32(int32_t v);
GgufValue gguf_f32(float v);
GgufValue gguf_bool(bool v);
GgufValue gguf_strings(const std::vector<std::string>& v);
GgufValue gguf_i32s(const std::vector<int32_t>& v);
GgufValue gguf_f32s(const std::vector<float>& v);

using GgufMetadata = std::vector<std::pair<std::string, GgufValue>>;

struct GgufTensorToWrite {
  std::string name;
  std::vector<int64_t> shape;  // row-major, slowest first (written reversed, as GGUF dims)
  std::vector<float> values;
  uint32_t type = ggml_type::f32;
  // The stored bytes as they are (K-quant blocks made by the test); `values` is then unused.
  std::vector<uint8_t> raw{};
};

// Random K-quant blocks (Q2_K .. Q6_K) for `n` values (a multiple of 256): random bytes for
// the packed values and sub-block scales, and finite f16 super-block scales drawn so that the
// values come out with roughly the standard deviation `stddev` (centred near zero).
std::vector<uint8_t> random_kquant_blocks(uint32_t type, int64_t n, float stddev, uint64_t seed);

// The format's encoders: round to nearest (f16/bf16); Q8_0 d = amax/127, q = round(x/d);
// Q4_0 d = amax/7, q = round(x/d) + 8; Q4_1 m = min, d = (max-min)/15, q = round((x-m)/d).
std::vector<uint8_t> ggml_quantize(uint32_t type, const float* x, int64_t n);

// The file's bytes (version 2 or 3, tensors aligned to `alignment`, in the given order).
std::string gguf_bytes(const GgufMetadata& metadata, const std::vector<GgufTensorToWrite>& tensors,
                       uint32_t version = 3, uint64_t alignment = 32);
void write_gguf(const std::string& path, const GgufMetadata& metadata,
                const std::vector<GgufTensorToWrite>& tensors, uint32_t version = 3,
                uint64_t alignment = 32);

// A Llama model in llama.cpp's layout: `tensors` have Hugging Face names and layout; matrices
// are stored as `matrix_type`, vectors as F32. q/k are permuted unless permute_qk is false.
void write_llama_gguf(const std::string& path, const ModelConfig& config,
                      const std::vector<NamedTensor>& tensors, uint32_t matrix_type,
                      bool permute_qk = true, GgufMetadata extra_metadata = {});

}  // namespace starattn::testing
