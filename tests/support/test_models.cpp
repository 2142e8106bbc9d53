#include "tests/support/test_models.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "runtime/random_model.h"

namespace starattn::testing {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "starattn-test-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ModelConfig test_config(bool bias_and_scaling) {
  ModelConfig c = preset_config("tiny");
  if (bias_and_scaling) {
    // Hugging Face Llama's attention_bias puts a bias on q, k, v and o; add MLP biases too.
    c.attention_bias = true;
    c.o_proj_bias = true;
    c.mlp_bias = true;
    c.tie_word_embeddings = false;
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = 8;
    c.rope_scaling.low_freq_factor = 1;
    c.rope_scaling.high_freq_factor = 4;
    c.rope_scaling.original_max_position_embeddings = 64;
    c.rope_theta = 500000;
  }
  return c;
}

namespace {
ModelConfig with_layers(ModelConfig c, int layers) {
  if (layers > 0) c.num_layers = layers;
  return c;
}
}  // namespace

CpuModel::CpuModel(bool variant, uint64_t seed, int layers)
    : config(with_layers(test_config(variant), layers)),
      weights(random_weights(config, seed)),
      backend(make_backend("cpu")),
      model(std::make_unique<Transformer>(config, weights, *backend)) {}

std::vector<float> CpuModel::download(const Tensor& t) const {
  std::vector<float> h(static_cast<size_t>(t.rows * t.cols));
  backend->download(t, h.data());
  return h;
}

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int64_t n, int32_t vocab) {
  std::uniform_int_distribution<int32_t> d(0, vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = d(rng);
  return t;
}

double max_abs_diff(const float* a, const double* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(double(a[i]) - b[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  std::vector<double> bd(b.begin(), b.end());
  return max_abs_diff(a.data(), bd.data(), a.size());
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}

Outcome generate(Engine& engine, const RequestSpec& request) {
  Outcome out;
  const size_t vocab = static_cast<size_t>(engine.config().vocab_size);
  RequestSpec with_logits = request;
  with_logits.want_logits = true;
  out.stats = engine.generate(with_logits, [&](int32_t id, const float* logits) {
    out.tokens.push_back(id);
    out.logits.emplace_back(logits, logits + vocab);
    return true;
  });
  return out;
}

}  // namespace starattn::testing
