// Model hyperparameters, read from a Hugging Face config.json (or filled in by other loaders).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace starattn {

// RoPE frequency scaling; type "" (none) or "llama3" (Llama 3.1/3.2).
struct RopeScaling {
  std::string type;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // "llama", "mistral" or "qwen2" (Hugging Face model_type)
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  int max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2 always)
  // o_proj carries a bias too: Hugging Face Llama's attention_bias covers q/k/v/o, while
  // Qwen2 biases only q/k/v.
  bool o_proj_bias = false;
  bool mlp_bias = false;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  int sliding_window = 0;  // 0 = none; star/full attention ignore it (see docs)

  float attention_scale() const;
  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
  // Bytes of K and V for one token across all layers at the given element size.
  int64_t kv_bytes_per_token(size_t element_size) const;

  // Throws std::runtime_error naming `source` and the offending field.
  static ModelConfig from_json(const std::string& text, const std::string& source);
  static ModelConfig from_file(const std::string& path);
  std::string to_json() const;
  // Checks internal consistency (divisibility, positivity); throws naming `source`.
  void validate(const std::string& source) const;
};

}  // namespace starattn
