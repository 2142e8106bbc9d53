// Random-weight models: presets, deterministic generation, writing a model directory.
#include "runtime/random_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

namespace starattn {
namespace {

namespace fs = std::filesystem;

ModelConfig tiny_config() {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = 259;  // 256 bytes + bos, eos, pad
  c.hidden_size = 64;
  c.intermediate_size = 160;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.max_position_embeddings = 4096;
  c.tie_word_embeddings = true;
  c.bos_token_id = 256;
  c.eos_token_ids = {257};
  return c;
}

ModelConfig small_config() {
  ModelConfig c = tiny_config();
  c.hidden_size = 256;
  c.intermediate_size = 688;
  c.num_layers = 4;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 32;
  c.tie_word_embeddings = false;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0f;
  c.rope_scaling.low_freq_factor = 1.0f;
  c.rope_scaling.high_freq_factor = 4.0f;
  c.rope_scaling.original_max_position_embeddings = 1024;
  c.max_position_embeddings = 8192;  // original 1024 x factor 8
  return c;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// FNV-1a, then splitmix64: a well-mixed 64-bit stream seed per (seed, tensor name).
uint64_t tensor_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001b3ull;
  uint64_t z = seed ^ h;
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

class RandomWeights : public WeightSource {
 public:
  RandomWeights(const ModelConfig& config, uint64_t seed) : seed_(seed) {
    for (TensorSpec& spec : model_tensor_specs(config)) specs_.emplace(spec.name, std::move(spec));
  }
  bool has(const std::string& name) const override { return specs_.count(name) != 0; }
  std::vector<int64_t> shape(const std::string& name) const override { return spec(name).shape; }
  void read_f32(const std::string& name, float* out) const override {
    fill_random_tensor(spec(name), seed_, out);
  }
  std::string describe() const override {
    return "random weights (seed " + std::to_string(seed_) + ")";
  }

 private:
  const TensorSpec& spec(const std::string& name) const {
    auto it = specs_.find(name);
    if (it == specs_.end()) throw std::runtime_error(describe() + ": no tensor \"" + name + "\"");
    return it->second;
  }
  uint64_t seed_;
  std::map<std::string, TensorSpec> specs_;
};

}  // namespace

std::vector<std::string> preset_names() { return {"tiny", "small"}; }

ModelConfig preset_config(const std::string& name) {
  if (name == "tiny") return tiny_config();
  if (name == "small") return small_config();
  std::string known;
  for (const std::string& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::runtime_error("unknown model preset \"" + name + "\" (presets: " + known + ")");
}

std::vector<float> random_tensor(const TensorSpec& spec, uint64_t seed) {
  int64_t n = 1;
  for (int64_t d : spec.shape) n *= d;
  std::vector<float> out(static_cast<size_t>(n));
  fill_random_tensor(spec, seed, out.data());
  return out;
}

void fill_random_tensor(const TensorSpec& spec, uint64_t seed, float* o) {
  int64_t n = 1;
  for (int64_t d : spec.shape) n *= d;
  // Uniform noise with the wanted standard deviation: plain integer arithmetic is
  // bit-identical everywhere, unlike std::normal_distribution.
  float mean = 0.0f;
  float stddev = 1.0f;
  if (ends_with(spec.name, "norm.weight")) {
    mean = 1.0f;
    stddev = 0.1f;
  } else if (ends_with(spec.name, ".bias")) {
    stddev = 0.05f;
  } else if (spec.shape.size() == 2 && spec.shape[1] > 0) {
    stddev = 1.0f / std::sqrt(static_cast<float>(spec.shape[1]));  // 1/sqrt(fan_in)
  }
  const double half_width = std::sqrt(3.0) * stddev;  // uniform [-w, w] has std w/sqrt(3)
  // Counter-based: element i is a splitmix64 hash of (tensor seed, i), so the values are
  // bit-identical everywhere and the tensor is filled in parallel (an 8B-parameter model in
  // seconds rather than minutes of one sequential generator).
  const uint64_t base = tensor_seed(seed, spec.name);
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 16))
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = base + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const double u = static_cast<double>(z >> 11) * 0x1.0p-53;  // [0, 1), 53 bits
    // Rounded to bf16: the backends hold weights in bf16 (cpu and cuda), so random models are
    // held exactly and comparisons with a float reference measure arithmetic, not storage.
    o[i] = bf16_to_f32(f32_to_bf16(static_cast<float>(mean + (2.0 * u - 1.0) * half_width)));
  }
}

std::vector<NamedTensor> random_weights(const ModelConfig& config, uint64_t seed) {
  config.validate("random_weights");
  std::vector<NamedTensor> out;
  for (const TensorSpec& spec : model_tensor_specs(config))
    out.push_back({spec.name, spec.shape, random_tensor(spec, seed)});
  return out;
}

std::unique_ptr<WeightSource> random_weight_source(const ModelConfig& config, uint64_t seed) {
  config.validate("random_weight_source");
  return std::make_unique<RandomWeights>(config, seed);
}

void write_random_model(const ModelConfig& config, uint64_t seed, const std::string& dir) {
  config.validate("write_random_model(" + dir + ")");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error("cannot create model directory " + dir + ": " + ec.message());
  const std::string config_path = (fs::path(dir) / "config.json").string();
  {
    // Random weights have no text vocabulary: the byte tokenizer serves them whatever their
    // vocab_size, and the config says so (load_tokenizer's rule).
    std::string text = config.to_json();
    const size_t open = text.find('{');
    text.insert(open + 1, "\n  \"starattn_byte_vocabulary\": true,");
    std::ofstream out(config_path, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) throw std::runtime_error("cannot write " + config_path);
  }
  write_safetensors((fs::path(dir) / "model.safetensors").string(), random_weights(config, seed),
                    StDType::f32);
}

}  // namespace starattn
