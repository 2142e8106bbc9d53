// Shared fixtures: random models in memory and on disk, temporary directories, comparisons.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "runtime/memory_weights.h"
#include "runtime/model_config.h"
#include "runtime/transformer.h"

namespace starattn::testing {

// A fresh directory under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The "tiny" preset, optionally with Qwen2-style QKV bias, llama3 RoPE scaling and untied head.
ModelConfig test_config(bool bias_and_scaling = false);

// test_config(variant) with random weights of `seed` on a cpu backend (layers > 0: that many).
struct CpuModel {
  CpuModel(bool variant, uint64_t seed, int layers = 0);
  ModelConfig config;
  MemoryWeights weights;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Transformer> model;
  std::vector<float> download(const Tensor& t) const;
};

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int64_t n, int32_t vocab);

// max |a - b| over equal-length arrays (any NaN counts as infinite).
double max_abs_diff(const float* a, const double* b, size_t n);
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b);
double max_abs(const std::vector<double>& a);

// What a request generated: every token with its logits row (the engine's logits callback), and
// the run's stats. For comparing runs token by token and logit by logit.
struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // one row per generated token
  RequestStats stats;
};
Outcome generate(Engine& engine, const RequestSpec& request);

}  // namespace starattn::testing
