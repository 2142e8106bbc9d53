// GGUF (llama.cpp's model format, versions 2 and 3): a validated read-only mmap reader, the
// dequantizers for the tensor types we load, Llama-family hyperparameters from metadata, and a
// WeightSource that serves the tensors under Hugging Face names.
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 metadata count; metadata
// entries (string key, u32 value type, value); tensor infos (string name, u32 n_dims, u64 dims
// fastest-first, u32 ggml type, u64 offset); padding to `general.alignment` (default 32); the
// data area, where every tensor offset (relative to its start) is a multiple of the alignment.
// Strings are a u64 byte length and the bytes (no terminator).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/weight_source.h"

namespace starattn {

enum class GgufType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};
const char* gguf_type_name(GgufType type);

// One metadata value. Integers keep their sign in `i` or, for u64 above INT64_MAX, in `u`.
struct GgufValue {
  GgufType type = GgufType::u8;
  GgufType array_type = GgufType::u8;  // arrays only
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string str;
  std::vector<GgufValue> array;

  bool is_integer() const;  // any integer type (not bool)
  bool is_number() const { return is_integer() || type == GgufType::f32 || type == GgufType::f64; }
};

// ggml tensor types we know by name; the ones we dequantize are marked in ggml_type_supported.
namespace ggml_type {
constexpr uint32_t f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 8, q2_k = 10, q3_k = 11, q4_k = 12,
                   q5_k = 13, q6_k = 14, bf16 = 30;
}
// "Q4_K", ...; "unknown" for ids nobody has assigned.
std::string ggml_type_name(uint32_t type);
bool ggml_type_supported(uint32_t type);
// The supported types' names, for error messages: "F32, F16, ...".
const char* ggml_supported_types();
// Elements per block and bytes per block; false when we do not know the type's layout.
bool ggml_type_layout(uint32_t type, int64_t& block_elements, int64_t& block_bytes);

// Dequantizes `n` elements (a whole number of blocks) of a supported type; the formulas are
// the format's: Q8_0 blocks are f16 d + 32 int8 q (x = q*d); Q4_0 blocks are f16 d + 16 bytes
// whose low nibbles are elements 0..15 and high nibbles 16..31 (x = (q - 8)*d); Q4_1 blocks are
// f16 d, f16 m + the same nibbles (x = q*d + m). The K-quants are in gguf_kquants.cpp.
void ggml_dequantize(uint32_t type, const uint8_t* src, int64_t n, float* out);

// The K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: super-blocks of 256 values with per-sub-block
// scales): dequantizes `n` values (a whole number of super-blocks) and returns true, or returns
// false for any other type. Each value is computed as the `gguf` Python package's reference
// dequantizers compute it, in float32 with the same roundings, so the results are bit-identical.
bool ggml_dequantize_k(uint32_t type, const uint8_t* src, int64_t n, float* out);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // as stored: fastest-varying first (dims[0] = columns)
  uint32_t type = 0;
  uint64_t offset = 0;  // relative to the data area
  uint64_t bytes = 0;   // 0 when the type's layout is unknown
  int64_t elements() const;
  // Row-major shape, slowest first (the reverse of dims), as Hugging Face names it.
  std::vector<int64_t> shape() const;
};

class GgufFile {
 public:
  // Maps and validates the whole structure; throws naming the file and the key or tensor.
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  const GgufValue* find(const std::string& key) const;
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // Typed metadata access; a present key of the wrong type is an error naming file and key.
  std::string get_string(const std::string& key, const std::string& fallback) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::vector<std::string> get_strings(const std::string& key) const;  // empty when absent
  std::vector<double> get_numbers(const std::string& key) const;       // empty when absent

  // Dequantizes a tensor into float32 (elements() values, in storage order).
  void read_f32(const GgufTensorInfo& tensor, float* out) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  const uint8_t* data_ = nullptr;  // start of the data area
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Hyperparameters of a llama or qwen2 GGUF (general.architecture), from {arch}.* metadata,
// the tokenizer metadata and the tensor list. Throws naming the file and the missing key.
ModelConfig gguf_model_config(const GgufFile& file);

// llama.cpp's converter reorders the rows of each head of q_proj/k_proj (and their biases) for
// its interleaved-pair RoPE: Hugging Face row s*D/2 + j (half s, pair j) is stored at row
// 2*j + s. These restore the Hugging Face (rotate-half) order; `rows` = heads * head_dim rows
// of `cols` values each (cols = 1 for a bias).
void gguf_unpermute_rows(float* data, int64_t heads, int64_t head_dim, int64_t cols);
// The converter's direction, for writing test files.
void gguf_permute_rows(float* data, int64_t heads, int64_t head_dim, int64_t cols);

// Tensors of a GGUF under Hugging Face Llama names ("model.layers.3.self_attn.q_proj.weight"
// is blk.3.attn_q.weight), dequantized to float32, q/k rows un-permuted for llama.
class GgufWeights : public WeightSource {
 public:
  GgufWeights(std::shared_ptr<const GgufFile> file, const ModelConfig& config);
  bool has(const std::string& name) const override;
  std::vector<int64_t> shape(const std::string& name) const override;
  void read_f32(const std::string& name, float* out) const override;
  std::string describe() const override;

  // The GGUF tensor name for a Hugging Face name; empty when there is no such mapping.
  static std::string gguf_name(const std::string& hf_name);
  const GgufFile& file() const { return *file_; }

 private:
  const GgufTensorInfo* lookup(const std::string& hf_name) const;
  std::shared_ptr<const GgufFile> file_;
  ModelConfig config_;
  bool unpermute_qk_ = false;
};

// Opens a .gguf model: config from metadata, weights checked against it (every tensor the
// architecture needs present, right shape, a type we dequantize).
LoadedModel open_gguf(const std::string& path);

}  // namespace starattn
