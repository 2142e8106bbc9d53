// RoPE frequencies (plain and llama3-scaled), the reference rotation and the backend's rope op.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/cpu_backend.h"
#include "runtime/model_config.h"
#include "runtime/rope.h"

namespace starattn {
namespace {

constexpr double kPi = 3.14159265358979323846;

std::vector<float> random_vec(std::mt19937& rng, size_t n) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

ModelConfig config(float theta, int head_dim) {
  ModelConfig c;
  c.rope_theta = theta;
  c.head_dim = head_dim;
  return c;
}

// Llama 3.1 scaling written from the published description: frequencies whose wavelength is
// longer than original/low_freq_factor are divided by the factor; those shorter than
// original/high_freq_factor are unchanged; in between, the scaled and unscaled frequencies are
// mixed with weight t = (original/wavelength - low) / (high - low) on the unscaled one.
double expected_llama3(double f, double factor, double low, double high, double original) {
  const double wavelength = 2.0 * kPi / f;
  if (original / wavelength < low) return f / factor;    // wavelength > original / low
  if (original / wavelength > high) return f;            // wavelength < original / high
  const double t = (original / wavelength - low) / (high - low);
  return t * f + (1.0 - t) * f / factor;
}

TEST(Rope, PlainInverseFrequencies) {
  for (auto [theta, dim] : {std::pair<float, int>{500000.0f, 128}, {10000.0f, 64}, {1000000.0f, 16}}) {
    const auto inv = rope_inv_freq(config(theta, dim));
    ASSERT_EQ(inv.size(), static_cast<size_t>(dim / 2));
    for (int i = 0; i < dim / 2; ++i) {
      const double want = std::pow(static_cast<double>(theta), -2.0 * i / dim);
      EXPECT_NEAR(inv[i], want, 1e-6 * want) << "theta " << theta << " D " << dim << " i " << i;
    }
  }
}

TEST(Rope, Llama3ScaledInverseFrequencies) {
  ModelConfig c = config(500000.0f, 128);
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0f;
  c.rope_scaling.low_freq_factor = 1.0f;
  c.rope_scaling.high_freq_factor = 4.0f;
  c.rope_scaling.original_max_position_embeddings = 8192;
  const auto inv = rope_inv_freq(c);
  ASSERT_EQ(inv.size(), 64u);
  int scaled = 0, kept = 0, mixed = 0;
  for (int i = 0; i < 64; ++i) {
    const double f = std::pow(500000.0, -2.0 * i / 128);
    const double want = expected_llama3(f, 8.0, 1.0, 4.0, 8192.0);
    EXPECT_NEAR(inv[i], want, 1e-6 * want) << "i " << i;
    if (want == f) ++kept;
    else if (std::abs(want - f / 8.0) < 1e-15 * f) ++scaled;
    else ++mixed;
  }
  // The config must exercise all three bands for this test to mean anything.
  EXPECT_GT(kept, 0);
  EXPECT_GT(scaled, 0);
  EXPECT_GT(mixed, 0);
}

TEST(Rope, RejectsBadConfigs) {
  EXPECT_THROW(rope_inv_freq(config(10000.0f, 63)), std::invalid_argument);
  EXPECT_THROW(rope_inv_freq(config(10000.0f, 0)), std::invalid_argument);
  EXPECT_THROW(rope_inv_freq(config(-1.0f, 64)), std::invalid_argument);
  ModelConfig c = config(10000.0f, 64);
  c.rope_scaling.type = "yarn";
  EXPECT_THROW(rope_inv_freq(c), std::invalid_argument);
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 0.0f;
  EXPECT_THROW(rope_inv_freq(c), std::invalid_argument);
}

TEST(Rope, RotateMatchesDirectRotation) {
  std::mt19937 rng(3);
  const auto inv = rope_inv_freq(config(500000.0f, 128));
  std::uniform_int_distribution<int> pos_dist(0, 131072);
  for (int trial = 0; trial < 50; ++trial) {
    const int pos = trial == 0 ? 0 : pos_dist(rng);
    const auto x = random_vec(rng, 128);
    auto y = x;
    rope_rotate(y.data(), 128, pos, inv.data());
    for (int i = 0; i < 64; ++i) {
      // The contract fixes the angle as a float32 product; the rotation itself in double.
      const double angle = static_cast<float>(pos) * inv[i];
      const double c = std::cos(angle), s = std::sin(angle);
      const double tol = 1e-6 * (std::abs(x[i]) + std::abs(x[i + 64]));
      EXPECT_NEAR(y[i], x[i] * c - x[i + 64] * s, tol) << "pos " << pos << " i " << i;
      EXPECT_NEAR(y[i + 64], x[i + 64] * c + x[i] * s, tol) << "pos " << pos << " i " << i;
    }
    if (pos == 0) {
      EXPECT_EQ(y, x);  // position 0 is the identity
    }
  }
}

TEST(Rope, BackendOpMatchesRotate) {
  auto be = make_cpu_backend();
  std::mt19937 rng(4);
  const int heads = 6, dim = 64;
  const int64_t T = 37, width = heads * dim, pad = 10;
  const auto inv = rope_inv_freq(config(10000.0f, dim));
  std::vector<int32_t> positions(T);
  std::uniform_int_distribution<int32_t> pos_dist(0, 100000);
  for (auto& p : positions) p = pos_dist(rng);
  // x lives as a column slice of a wider buffer; the other columns must be left alone.
  const auto whole = random_vec(rng, static_cast<size_t>(T * (width + pad)));
  Buffer buf = be->alloc(T, width + pad, DType::f32);
  be->upload(whole.data(), buf.view());
  RopeArgs a;
  a.x = buf.view().slice_cols(pad / 2, width);
  a.n_heads = heads;
  a.head_dim = dim;
  a.positions = positions.data();
  a.inv_freq = inv.data();
  be->rope(a);
  std::vector<float> got(static_cast<size_t>(T * (width + pad)));
  be->download(buf.view(), got.data());
  for (int64_t r = 0; r < T; ++r) {
    for (int h = 0; h < heads; ++h) {
      std::vector<float> x(whole.begin() + r * (width + pad) + pad / 2 + h * dim,
                           whole.begin() + r * (width + pad) + pad / 2 + (h + 1) * dim);
      rope_rotate(x.data(), dim, positions[r], inv.data());
      for (int i = 0; i < dim; ++i)
        ASSERT_NEAR(got[r * (width + pad) + pad / 2 + h * dim + i], x[i], 1e-6) << r << " " << h << " " << i;
    }
    for (int64_t c = 0; c < width + pad; ++c)
      if (c < pad / 2 || c >= pad / 2 + width) {
        ASSERT_EQ(got[r * (width + pad) + c], whole[r * (width + pad) + c]);
      }
  }

  RopeArgs bad = a;
  bad.head_dim = 63;
  EXPECT_THROW(be->rope(bad), std::invalid_argument);
  bad = a;
  bad.n_heads = 5;
  EXPECT_THROW(be->rope(bad), std::invalid_argument);
}

TEST(Rope, ScoresDependOnlyOnRelativePosition) {
  std::mt19937 rng(5);
  ModelConfig scaled = config(500000.0f, 128);
  scaled.rope_scaling.type = "llama3";
  scaled.rope_scaling.factor = 8.0f;
  for (const ModelConfig& c : {config(10000.0f, 64), scaled}) {
    const int dim = c.head_dim;
    const auto inv = rope_inv_freq(c);
    auto unit = [&] {
      auto v = random_vec(rng, static_cast<size_t>(dim));
      double n = 0.0;
      for (float x : v) n += static_cast<double>(x) * x;
      for (auto& x : v) x = static_cast<float>(x / std::sqrt(n));
      return v;
    };
    std::uniform_int_distribution<int> pos(0, 128);
    for (int trial = 0; trial < 20; ++trial) {
      const auto q = unit(), k = unit();
      const int m = pos(rng), n = pos(rng), shift = pos(rng);
      auto score = [&](int pm, int pn) {
        auto a = q, b = k;
        rope_rotate(a.data(), dim, pm, inv.data());
        rope_rotate(b.data(), dim, pn, inv.data());
        double s = 0.0;
        for (int i = 0; i < dim; ++i) s += static_cast<double>(a[i]) * b[i];
        return s;
      };
      EXPECT_NEAR(score(m, n), score(m + shift, n + shift), 1e-4) << m << " " << n << " +" << shift;
    }
  }
}

}  // namespace
}  // namespace starattn
