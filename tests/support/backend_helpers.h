// Small helpers for tests that drive a backend directly: random host data, upload, download.
#pragma once

#include <random>
#include <vector>

#include "runtime/backend.h"

namespace starattn::testing {

inline std::vector<float> random_vec(std::mt19937& rng, size_t n, float sd = 1.0f) {
  std::normal_distribution<float> dist(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// A float32 buffer on `be` holding `host` ([rows, cols], dense).
inline Buffer make(Backend& be, int64_t rows, int64_t cols, const std::vector<float>& host) {
  Buffer b = be.alloc(rows, cols, DType::f32);
  be.upload(host.data(), b.view());
  return b;
}

inline std::vector<float> fetch(Backend& be, const Tensor& t) {
  std::vector<float> host(static_cast<size_t>(t.rows * t.cols));
  be.download(t, host.data());
  return host;
}

}  // namespace starattn::testing
