// Opening a model and checking its tensors against the architecture.
#include "runtime/weight_source.h"


#include <filesystem>
#include <stdexcept>

#include "runtime/gguf.h"
#include "runtime/safetensors.h"

namespace starattn {
namespace {

namespace fs = std::filesystem;

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::vector<TensorSpec> model_tensor_specs(const ModelConfig& c) {
  const int64_t vocab = c.vocab_size;
  const int64_t hidden = c.hidden_size;
  const int64_t inter = c.intermediate_size;
  const int64_t q_dim = c.q_dim();
  const int64_t kv_dim = c.kv_dim();

  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {vocab, hidden}});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string layer = "model.layers." + std::to_string(i) + ".";
    const std::string attn = layer + "self_attn.";
    const std::string mlp = layer + "mlp.";
    specs.push_back({layer + "input_layernorm.weight", {hidden}});
    specs.push_back({attn + "q_proj.weight", {q_dim, hidden}});
    specs.push_back({attn + "k_proj.weight", {kv_dim, hidden}});
    specs.push_back({attn + "v_proj.weight", {kv_dim, hidden}});
    specs.push_back({attn + "o_proj.weight", {hidden, q_dim}});
    if (c.attention_bias) {
      specs.push_back({attn + "q_proj.bias", {q_dim}});
      specs.push_back({attn + "k_proj.bias", {kv_dim}});
      specs.push_back({attn + "v_proj.bias", {kv_dim}});
    }
    if (c.o_proj_bias) specs.push_back({attn + "o_proj.bias", {hidden}});
    specs.push_back({layer + "post_attention_layernorm.weight", {hidden}});
    specs.push_back({mlp + "gate_proj.weight", {inter, hidden}});
    specs.push_back({mlp + "up_proj.weight", {inter, hidden}});
    specs.push_back({mlp + "down_proj.weight", {hidden, inter}});
    if (c.mlp_bias) {
      specs.push_back({mlp + "gate_proj.bias", {inter}});
      specs.push_back({mlp + "up_proj.bias", {inter}});
      specs.push_back({mlp + "down_proj.bias", {hidden}});
    }
  }
  specs.push_back({"model.norm.weight", {hidden}});
  // Tied models read the output projection from embed_tokens; an extra lm_head is ignored.
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {vocab, hidden}});
  return specs;
}

void check_model_tensors(const ModelConfig& config, const WeightSource& weights) {
  // Collect every problem: a wrong config usually breaks many tensors at once, and seeing the
  // pattern (all k_proj, say) points at the cause faster than the first mismatch alone.
  std::vector<std::string> problems;
  for (const TensorSpec& spec : model_tensor_specs(config)) {
    if (!weights.has(spec.name)) {
      std::string problem = "missing tensor \"" + spec.name + "\" (expected shape " +
                            shape_text(spec.shape) + ")";
      if (spec.name == "lm_head.weight")
        problem += "; config.json has tie_word_embeddings=false, so the model needs its own lm_head";
      problems.push_back(problem);
      continue;
    }
    const std::vector<int64_t> actual = weights.shape(spec.name);
    if (actual != spec.shape)
      problems.push_back("tensor \"" + spec.name + "\" has shape " + shape_text(actual) +
                         ", expected " + shape_text(spec.shape));
  }
  if (problems.empty()) return;

  constexpr size_t kShown = 8;
  std::string message = weights.describe() + ": the weights do not match the model config (" +
                        std::to_string(problems.size()) + " problem" +
                        (problems.size() == 1 ? "" : "s") + "): ";
  for (size_t i = 0; i < problems.size() && i < kShown; ++i)
    message += (i ? "; " : "") + problems[i];
  if (problems.size() > kShown)
    message += "; and " + std::to_string(problems.size() - kShown) + " more";
  throw std::runtime_error(message);
}

LoadedModel open_model(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) throw std::runtime_error("model path " + path + " does not exist");
  if (fs::is_regular_file(status)) {
    if (ends_with(path, ".gguf"))
      return open_gguf(path);
    throw std::runtime_error(path + " is a file; expected a Hugging Face model directory " +
                             "(config.json with model.safetensors or a sharded index)");
  }
  if (!fs::is_directory(status))
    throw std::runtime_error(path + " is neither a model directory nor a model file");
  const fs::path config_path = fs::path(path) / "config.json";
  if (!fs::exists(config_path))
    throw std::runtime_error(path + ": no config.json (expected a Hugging Face model directory)");

  LoadedModel model;
  model.path = path;
  model.config = ModelConfig::from_file(config_path.string());
  model.weights = std::make_unique<SafetensorsWeights>(path);
  check_model_tensors(model.config, *model.weights);
  return model;
}

}  // namespace starattn
