// GGUF as a model: Llama-family hyperparameters from metadata, Hugging Face tensor names, the
// q/k row order llama.cpp's converter uses, and open_gguf.
#include "runtime/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "runtime/rope.h"

namespace starattn {
namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// A required integer hyperparameter, positive and within int range.
int required_int(const GgufFile& f, const std::string& key) {
  if (!f.find(key))
    throw std::runtime_error(f.path() + ": metadata key \"" + key + "\" is missing");
  const int64_t v = f.get_int(key, 0);
  if (v <= 0 || v > (1 << 30))
    throw std::runtime_error(f.path() + ": metadata key \"" + key + "\" has value " +
                             std::to_string(v) + ", expected a positive size");
  return static_cast<int>(v);
}

int optional_int(const GgufFile& f, const std::string& key, int fallback) {
  return f.find(key) ? required_int(f, key) : fallback;
}

// Llama 3.1-style files carry the llama3 RoPE adjustment as a tensor of per-frequency divisors
// (rope_freqs.weight) instead of metadata. Recover the Hugging Face parameters: the largest
// divisor is the factor; the band edges are Llama 3.1's (low 1, high 4) and the original context
// comes from metadata when present (else 8192). The result must reproduce every divisor.
RopeScaling rope_scaling_from_freqs(const GgufFile& f, const ModelConfig& c,
                                    const std::string& arch) {
  const GgufTensorInfo* t = f.find_tensor("rope_freqs.weight");
  if (t->elements() != c.head_dim / 2)
    throw std::runtime_error(f.path() + ": tensor \"rope_freqs.weight\" has " +
                             std::to_string(t->elements()) + " values, expected head_dim/2 = " +
                             std::to_string(c.head_dim / 2));
  std::vector<float> divisors(static_cast<size_t>(t->elements()));
  f.read_f32(*t, divisors.data());
  RopeScaling s;
  s.type = "llama3";
  s.factor = *std::max_element(divisors.begin(), divisors.end());
  s.low_freq_factor = 1.0f;
  s.high_freq_factor = 4.0f;
  s.original_max_position_embeddings =
      optional_int(f, arch + ".rope.scaling.original_context_length", 8192);
  ModelConfig plain = c, scaled = c;
  plain.rope_scaling = RopeScaling{};
  scaled.rope_scaling = s;
  const std::vector<float> a = rope_inv_freq(plain), b = rope_inv_freq(scaled);
  for (size_t i = 0; i < divisors.size(); ++i) {
    const double implied = static_cast<double>(a[i]) / b[i];
    if (std::fabs(implied - divisors[i]) > 1e-3 * std::fabs(divisors[i]))
      throw std::runtime_error(
          f.path() + ": tensor \"rope_freqs.weight\" holds RoPE divisors that are not llama3 "
          "scaling with factor " + std::to_string(s.factor) + ", low_freq_factor 1, "
          "high_freq_factor 4, original context " +
          std::to_string(s.original_max_position_embeddings) + " (divisor " + std::to_string(i) +
          " is " + std::to_string(divisors[i]) + ", expected " + std::to_string(implied) + ")");
  }
  return s;
}

// Rows of one head: gguf row 2*j + s holds Hugging Face row s*half + j.
void reorder_rows(float* data, int64_t heads, int64_t head_dim, int64_t cols, bool to_hf) {
  const int64_t half = head_dim / 2;
  std::vector<float> tmp(static_cast<size_t>(head_dim * cols));
  for (int64_t h = 0; h < heads; ++h) {
    float* head = data + h * head_dim * cols;
    for (int64_t s = 0; s < 2; ++s)
      for (int64_t j = 0; j < half; ++j) {
        const int64_t gguf_row = 2 * j + s, hf_row = s * half + j;
        const int64_t from = to_hf ? gguf_row : hf_row, to = to_hf ? hf_row : gguf_row;
        std::memcpy(tmp.data() + to * cols, head + from * cols, static_cast<size_t>(cols) * 4);
      }
    std::memcpy(head, tmp.data(), tmp.size() * 4);
  }
}

}  // namespace

void gguf_unpermute_rows(float* data, int64_t heads, int64_t head_dim, int64_t cols) {
  reorder_rows(data, heads, head_dim, cols, true);
}

void gguf_permute_rows(float* data, int64_t heads, int64_t head_dim, int64_t cols) {
  reorder_rows(data, heads, head_dim, cols, false);
}

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string arch = f.get_string("general.architecture", "");
  if (arch.empty())
    throw std::runtime_error(f.path() + ": metadata key \"general.architecture\" is missing");
  if (arch != "llama" && arch != "qwen2")
    throw std::runtime_error(f.path() + ": architecture \"" + arch +
                             "\" is not supported (supported: llama, qwen2)");
  const std::string p = arch + ".";
  ModelConfig c;
  c.architecture = arch;
  c.hidden_size = required_int(f, p + "embedding_length");
  c.num_layers = required_int(f, p + "block_count");
  c.intermediate_size = required_int(f, p + "feed_forward_length");
  c.num_heads = required_int(f, p + "attention.head_count");
  c.num_kv_heads = optional_int(f, p + "attention.head_count_kv", c.num_heads);
  c.head_dim = optional_int(f, p + "attention.key_length", c.hidden_size / c.num_heads);
  const int value_length = optional_int(f, p + "attention.value_length", c.head_dim);
  if (value_length != c.head_dim)
    throw std::runtime_error(f.path() + ": attention.key_length " + std::to_string(c.head_dim) +
                             " differs from attention.value_length " + std::to_string(value_length) +
                             " (not supported)");
  const int rope_dims = optional_int(f, p + "rope.dimension_count", c.head_dim);
  if (rope_dims != c.head_dim)
    throw std::runtime_error(f.path() + ": rope.dimension_count " + std::to_string(rope_dims) +
                             " differs from the head size " + std::to_string(c.head_dim) +
                             " (partial rotary embeddings are not supported)");
  c.rms_norm_eps = static_cast<float>(f.get_float(p + "attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_theta = static_cast<float>(f.get_float(p + "rope.freq_base", 10000.0));
  c.max_position_embeddings = optional_int(f, p + "context_length", 4096);

  const std::string scaling = f.get_string(p + "rope.scaling.type", "none");
  const double scaling_factor = f.get_float(p + "rope.scaling.factor", 1.0);
  if (scaling != "none" && !(scaling == "linear" && scaling_factor == 1.0))
    throw std::runtime_error(f.path() + ": rope.scaling.type \"" + scaling + "\" (factor " +
                             std::to_string(scaling_factor) +
                             ") is not supported (supported: none, llama3 via rope_freqs.weight)");
  if (f.find_tensor("rope_freqs.weight")) c.rope_scaling = rope_scaling_from_freqs(f, c, arch);

  // Vocabulary: explicit, else the tokenizer's token list, else the embedding's row count.
  const GgufTensorInfo* embed = f.find_tensor("token_embd.weight");
  int vocab = optional_int(f, p + "vocab_size", 0);
  if (vocab == 0) {
    if (const GgufValue* tokens = f.find("tokenizer.ggml.tokens"))
      vocab = static_cast<int>(tokens->array.size());
    else if (embed && embed->dims.size() == 2)
      vocab = static_cast<int>(embed->dims[1]);
  }
  if (vocab <= 0)
    throw std::runtime_error(f.path() + ": cannot tell the vocabulary size (no " + p +
                             "vocab_size, tokenizer.ggml.tokens or token_embd.weight)");
  c.vocab_size = vocab;

  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  c.attention_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.o_proj_bias = f.find_tensor("blk.0.attn_output.bias") != nullptr;
  c.mlp_bias = f.find_tensor("blk.0.ffn_gate.bias") != nullptr;

  c.bos_token_id = static_cast<int>(f.get_int("tokenizer.ggml.bos_token_id", -1));
  // End of generation: the eos token, and the end-of-turn / end-of-message tokens of chat models.
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                          "tokenizer.ggml.eom_token_id"}) {
    const int64_t id = f.get_int(key, -1);
    if (id >= 0 && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end())
      c.eos_token_ids.push_back(static_cast<int>(id));
  }
  c.validate(f.path());
  return c;
}

GgufWeights::GgufWeights(std::shared_ptr<const GgufFile> file, const ModelConfig& config)
    : file_(std::move(file)), config_(config), unpermute_qk_(config.architecture == "llama") {}

std::string GgufWeights::gguf_name(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string layers = "model.layers.";
  if (!starts_with(hf, layers)) return "";
  const size_t dot = hf.find('.', layers.size());
  if (dot == std::string::npos || dot == layers.size()) return "";
  const std::string index = hf.substr(layers.size(), dot - layers.size());
  if (index.find_first_not_of("0123456789") != std::string::npos) return "";
  const std::string rest = hf.substr(dot + 1);
  static const std::pair<const char*, const char*> kParts[] = {
      {"input_layernorm.", "attn_norm."},     {"post_attention_layernorm.", "ffn_norm."},
      {"self_attn.q_proj.", "attn_q."},       {"self_attn.k_proj.", "attn_k."},
      {"self_attn.v_proj.", "attn_v."},       {"self_attn.o_proj.", "attn_output."},
      {"mlp.gate_proj.", "ffn_gate."},        {"mlp.up_proj.", "ffn_up."},
      {"mlp.down_proj.", "ffn_down."},
  };
  for (const auto& [from, to] : kParts) {
    if (!starts_with(rest, from)) continue;
    const std::string kind = rest.substr(std::strlen(from));
    if (kind != "weight" && kind != "bias") return "";
    return "blk." + index + "." + to + kind;
  }
  return "";
}

const GgufTensorInfo* GgufWeights::lookup(const std::string& hf_name) const {
  const std::string name = gguf_name(hf_name);
  return name.empty() ? nullptr : file_->find_tensor(name);
}

bool GgufWeights::has(const std::string& name) const { return lookup(name) != nullptr; }

std::vector<int64_t> GgufWeights::shape(const std::string& name) const {
  const GgufTensorInfo* t = lookup(name);
  if (!t) throw std::runtime_error(describe() + ": no tensor " + name + " (" + gguf_name(name) + ")");
  return t->shape();
}

void GgufWeights::read_f32(const std::string& name, float* out) const {
  const GgufTensorInfo* t = lookup(name);
  if (!t)
    throw std::runtime_error(describe() + ": no tensor \"" + name + "\" (GGUF name \"" +
                             gguf_name(name) + "\")");
  file_->read_f32(*t, out);
  if (!unpermute_qk_) return;
  const bool is_q = name.find(".self_attn.q_proj.") != std::string::npos;
  const bool is_k = name.find(".self_attn.k_proj.") != std::string::npos;
  if (!is_q && !is_k) return;
  const int64_t heads = is_q ? config_.num_heads : config_.num_kv_heads;
  const int64_t cols = t->dims.size() == 2 ? t->dims[0] : 1;
  if (t->elements() != heads * config_.head_dim * cols)
    throw std::runtime_error(describe() + ": tensor \"" + t->name + "\" has " +
                             std::to_string(t->elements()) + " values, expected " +
                             std::to_string(heads) + " heads x " + std::to_string(config_.head_dim) +
                             " x " + std::to_string(cols));
  gguf_unpermute_rows(out, heads, config_.head_dim, cols);
}

std::string GgufWeights::describe() const { return file_->path(); }

LoadedModel open_gguf(const std::string& path) {
  auto file = std::make_shared<const GgufFile>(path);
  LoadedModel model;
  model.path = path;
  model.config = gguf_model_config(*file);
  auto weights = std::make_unique<GgufWeights>(file, model.config);
  check_model_tensors(model.config, *weights);
  // Fail now, not halfway through loading, on tensors in a type we cannot dequantize.
  std::string unsupported;
  int count = 0;
  for (const TensorSpec& spec : model_tensor_specs(model.config)) {
    const GgufTensorInfo* t = file->find_tensor(GgufWeights::gguf_name(spec.name));
    if (ggml_type_supported(t->type)) continue;
    if (count++ < 4)
      unsupported += std::string(unsupported.empty() ? "" : ", ") + "\"" + t->name + "\" (" +
                     ggml_type_name(t->type) + ", ggml type id " + std::to_string(t->type) + ")";
  }
  if (count > 0)
    throw std::runtime_error(path + ": " + std::to_string(count) +
                             " tensors have types we cannot dequantize (supported: " +
                             ggml_supported_types() + "): " + unsupported + (count > 4 ? ", ..." : ""));
  model.weights = std::move(weights);
  return model;
}

}  // namespace starattn
