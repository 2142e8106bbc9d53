// Shared by the GPU suites: bf16 rounding, device tensors and a cpu-vs-cuda fixture, tolerance
// checks, scoped environment variables, and random-weight engines whose generated logits are
// compared step by step.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "runtime/backend.h"
#include "runtime/engine.h"
#include "runtime/model_config.h"
#include "runtime/random_model.h"
#include "tests/support/test_models.h"

namespace starattn::testing {

// f32 -> nearest bf16 (ties to even), back in f32; NaN passes through.
inline float bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return f;
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  std::memcpy(&f, &u, 4);
  return f;
}

// A device tensor with its owning buffer; rows may be padded (stride > cols) to test strides.
struct Dev {
  Buffer buf;
  Tensor t;
};

// Sets an environment variable for the lifetime of the object (backends read them when made).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) {
      had_ = true;
      old_ = old;
    }
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_, old_.c_str(), 1);
    else unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

// A cpu backend (the reference) and a cuda backend, with bf16-exact random inputs drawn from a
// per-suite seed; skips the test without a CUDA device.
class CudaVsCpuTest : public ::testing::Test {
 protected:
  explicit CudaVsCpuTest(uint64_t seed) : rng_(seed) {}

  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
    cpu_ = make_backend("cpu");
    gpu_ = make_backend("cuda", 0);
  }

  std::vector<float> random(int64_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = bf16_round(dist(rng_));
    return v;
  }
  static Dev on(Backend& be, const std::vector<float>& host, int64_t rows, int64_t cols, DType dt,
                int64_t pad = 0) {
    Dev d;
    d.buf = be.alloc(rows, cols + pad, dt);
    d.t = d.buf.view().slice_cols(0, cols);
    if (!host.empty()) be.upload(host.data(), d.t);
    return d;
  }
  Dev gpu(const std::vector<float>& host, int64_t rows, int64_t cols, DType dt = DType::bf16,
          int64_t pad = 0) {
    return on(*gpu_, host, rows, cols, dt, pad);
  }
  Dev cpu(const std::vector<float>& host, int64_t rows, int64_t cols) {
    return on(*cpu_, host, rows, cols, DType::f32);
  }
  // An output tensor on the gpu filled with NaN.
  Dev gpu_out(int64_t rows, int64_t cols, DType dt, int64_t pad = 0) {
    return gpu(std::vector<float>(static_cast<size_t>(rows * cols), NAN), rows, cols, dt, pad);
  }
  static std::vector<float> get(Backend& be, const Tensor& t) {
    std::vector<float> h(static_cast<size_t>(t.rows * t.cols));
    if (!h.empty()) be.download(t, h.data());
    return h;
  }

  std::unique_ptr<Backend> cpu_, gpu_;
  std::mt19937_64 rng_;
};

namespace detail {

inline void expect_close(const std::vector<float>& ref, const std::vector<float>& got, const std::string& what,
                         float rel, float rtol, bool bound_max_error) {
  ASSERT_EQ(ref.size(), got.size()) << what;
  float ref_max = 0.0f;
  for (float r : ref)
    if (std::isfinite(r)) ref_max = std::max(ref_max, std::fabs(r));
  const float atol = rel * std::max(ref_max, 1e-6f);
  float worst = 0.0f;
  size_t worst_i = 0, bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(got[i])) {
      ADD_FAILURE() << what << ": element " << i << " is NaN (unwritten or invalid), ref " << ref[i];
      return;
    }
    if (std::isinf(ref[i]) || std::isinf(got[i])) {
      if (ref[i] != got[i] && bad++ < 5)
        ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", ref " << ref[i];
      continue;
    }
    const float err = std::fabs(got[i] - ref[i]);
    if (err > worst) {
      worst = err;
      worst_i = i;
    }
    if (err > atol + rtol * std::fabs(ref[i]) && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", ref " << ref[i]
                    << " (tolerance " << atol + rtol * std::fabs(ref[i]) << ")";
  }
  if (bound_max_error) {
    EXPECT_LE(worst, atol) << what << ": max error at " << worst_i << " (ref " << ref[worst_i] << ")";
  }
}

}  // namespace detail

// Per element |err| <= rel * max |ref| + rtol * |ref| (max over the finite ref), and max |err|
// <= rel * max |ref| over the tensor; an infinity must be matched exactly; a NaN fails.
inline void expect_close(const std::vector<float>& ref, const std::vector<float>& got, const std::string& what,
                         float rel = 2e-2f, float rtol = 2e-2f) {
  detail::expect_close(ref, got, what, rel, rtol, true);
}

// expect_close's per-element bound (and infinity and NaN rules) without its bound on max |err|.
inline void expect_close_per_element(const std::vector<float>& ref, const std::vector<float>& got,
                                     const std::string& what, float rel = 2e-2f, float rtol = 2e-2f) {
  detail::expect_close(ref, got, what, rel, rtol, false);
}

// ---- engines on random weights ----

// The "small" preset (llama3 RoPE scaling, untied head, byte vocabulary) widened to a head size
// the cuda kernels have: hidden 512 = 8 x 64 or 4 x 128, GQA group 4 or 2.
inline ModelConfig gpu_model_config(int head_dim, int num_layers) {
  ModelConfig c = preset_config("small");
  c.hidden_size = 512;
  c.intermediate_size = 1024;
  c.head_dim = head_dim;
  c.num_heads = 512 / head_dim;
  c.num_kv_heads = 2;
  c.num_layers = num_layers;
  return c;
}

// A temporary model directory holding only config.json (engines make random weights for it).
class ModelDir {
 public:
  explicit ModelDir(const ModelConfig& c) { std::ofstream(dir_.file("config.json")) << c.to_json(); }
  std::string config() const { return dir_.file("config.json"); }

 private:
  TempDir dir_;
};

inline std::unique_ptr<Engine> make_engine(const std::string& config, const std::string& device, int workers,
                                           uint64_t weight_seed,
                                           double kv_fraction = EngineOptions().kv_memory_fraction) {
  EngineOptions o;
  o.model = config;
  o.random_weights = true;
  o.weight_seed = weight_seed;
  o.device = device;
  o.workers = workers;
  o.kv_memory_fraction = kv_fraction;
  return std::make_unique<Engine>(o);
}

// `context` then `query` random byte tokens (0..255) from `seed`; eos ignored.
inline RequestSpec random_request(int64_t context, int64_t query, AttentionMode mode, int64_t block,
                                      int max_tokens, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, 255);
  RequestSpec r;
  for (int64_t i = 0; i < context; ++i) r.prompt.context.push_back(tok(rng));
  for (int64_t i = 0; i < query; ++i) r.prompt.query.push_back(tok(rng));
  r.mode = mode;
  r.block_size = block;
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  return r;
}

// Compares step by step while both runs have generated the same tokens (after a different token
// the two runs condition on different inputs): no NaN, max |logit error| <= 3e-2 of the largest
// |logit| (the cuda engine rounds the weights to bf16 and keeps bf16 activations between ops,
// while the cpu reference keeps everything in f32), and with `check_top1` the same token wherever
// the reference's top-1 margin exceeds twice the observed error. Returns how many steps were
// compared.
inline int expect_logits_close(const Outcome& ref, const Outcome& got, const std::string& what,
                               bool check_top1) {
  int compared = 0;
  for (size_t s = 0; s < ref.logits.size() && s < got.logits.size(); ++s) {
    if (s > 0 && ref.tokens[s - 1] != got.tokens[s - 1]) break;
    const std::vector<float>& r = ref.logits[s];
    const std::vector<float>& g = got.logits[s];
    float ref_max = 0.0f, worst = 0.0f;
    for (float x : r) ref_max = std::max(ref_max, std::fabs(x));
    for (size_t i = 0; i < r.size(); ++i) {
      EXPECT_FALSE(std::isnan(g[i])) << what << " step " << s << " logit " << i << " is NaN";
      worst = std::max(worst, std::fabs(g[i] - r[i]));
    }
    const float tol = 3e-2f * ref_max;
    EXPECT_LE(worst, tol) << what << " step " << s << ": max |logit error| " << worst << " vs max |logit| "
                          << ref_max;
    if (check_top1) {
      std::vector<float> sorted(r);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
      if (sorted[0] - sorted[1] > 2.0f * worst + 1e-6f) {
        EXPECT_EQ(ref.tokens[s], got.tokens[s]) << what << " step " << s << ": top-1 differs with margin "
                                                << sorted[0] - sorted[1];
      }
    }
    ++compared;
  }
  return compared;
}

}  // namespace starattn::testing
