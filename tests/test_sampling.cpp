// Token selection: greedy, seeded temperature sampling, top-k, top-p, parameter checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "runtime/sampling.h"

namespace starattn {
namespace {

std::vector<float> random_logits(std::mt19937& rng, size_t n, float sd = 2.0f) {
  std::normal_distribution<float> dist(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

SamplingParams params(float temperature, int top_k = 0, float top_p = 1.0f, uint64_t seed = 0) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  return p;
}

int32_t argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());  // first max
}

TEST(Sampling, UniformDrawIsDeterministicAndUniform) {
  double sum = 0.0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const double u = uniform_draw(42, static_cast<uint64_t>(i));
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    ASSERT_EQ(u, uniform_draw(42, static_cast<uint64_t>(i)));
    sum += u;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.01);
  EXPECT_NE(uniform_draw(1, 2), uniform_draw(2, 1));
  EXPECT_NE(uniform_draw(0, 0), uniform_draw(0, 1));
}

TEST(Sampling, GreedyIsArgmax) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 100; ++trial) {
    const auto logits = random_logits(rng, 1000);
    EXPECT_EQ(sample_token(logits.data(), 1000, params(0.0f, 0, 1.0f, trial), trial), argmax(logits));
  }
  // Ties go to the lowest index.
  std::vector<float> tied = {0.5f, 3.0f, -1.0f, 3.0f, 3.0f};
  EXPECT_EQ(sample_token(tied.data(), 5, params(0.0f), 0), 1);
  std::vector<float> masked = {-INFINITY, -INFINITY, 0.25f};
  EXPECT_EQ(sample_token(masked.data(), 3, params(0.0f), 0), 2);
  EXPECT_EQ(sample_token(masked.data(), 3, params(1.0f), 0), 2);  // -inf logits are never drawn
}

TEST(Sampling, SameSeedAndStepSameToken) {
  std::mt19937 rng(2);
  const auto logits = random_logits(rng, 500, 1.0f);
  for (uint64_t step = 0; step < 200; ++step) {
    const auto p = params(1.0f, 50, 0.95f, 1234);
    const int32_t first = sample_token(logits.data(), 500, p, step);
    for (int rep = 0; rep < 3; ++rep) ASSERT_EQ(sample_token(logits.data(), 500, p, step), first);
  }
}

TEST(Sampling, DifferentSeedsDifferOnAFlatDistribution) {
  const std::vector<float> flat(100, 0.0f);
  std::set<int32_t> across_seeds, across_steps;
  for (uint64_t i = 0; i < 1000; ++i) {
    across_seeds.insert(sample_token(flat.data(), 100, params(1.0f, 0, 1.0f, i), 0));
    across_steps.insert(sample_token(flat.data(), 100, params(1.0f, 0, 1.0f, 7), i));
  }
  // 1000 uniform draws over 100 tokens miss a given token with probability 4e-5.
  EXPECT_GT(across_seeds.size(), 95u);
  EXPECT_GT(across_steps.size(), 95u);
}

TEST(Sampling, TopKOneIsGreedy) {
  std::mt19937 rng(3);
  for (uint64_t trial = 0; trial < 200; ++trial) {
    const auto logits = random_logits(rng, 300, 0.1f);  // nearly flat: sampling would wander
    EXPECT_EQ(sample_token(logits.data(), 300, params(1.5f, 1, 1.0f, trial), trial), argmax(logits));
  }
}

TEST(Sampling, TopKOnlyReturnsTheKLargest) {
  std::mt19937 rng(4);
  const auto logits = random_logits(rng, 200, 0.5f);
  const int k = 7;
  std::vector<int32_t> order(200);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  const std::set<int32_t> allowed(order.begin(), order.begin() + k);
  std::set<int32_t> seen;
  for (uint64_t step = 0; step < 5000; ++step) {
    const int32_t t = sample_token(logits.data(), 200, params(2.0f, k, 1.0f, 99), step);
    ASSERT_TRUE(allowed.count(t)) << "token " << t << " is not among the top " << k;
    seen.insert(t);
  }
  EXPECT_EQ(seen, allowed);  // and every one of them does come up
}

TEST(Sampling, SmallTopPOnlyReturnsTheTopToken) {
  std::mt19937 rng(5);
  for (uint64_t trial = 0; trial < 50; ++trial) {
    const auto logits = random_logits(rng, 64, 1.0f);
    for (uint64_t step = 0; step < 20; ++step)
      ASSERT_EQ(sample_token(logits.data(), 64, params(1.0f, 0, 1e-3f, trial), step), argmax(logits));
  }
}

TEST(Sampling, TopPKeepsTheSmallestPrefixReachingP) {
  // Probabilities 0.5, 0.3, 0.2 at temperature 1; top_p 0.75 keeps the first two, renormalised
  // to 0.625 / 0.375.
  const std::vector<float> logits = {std::log(0.3f), std::log(0.5f), std::log(0.2f)};
  int counts[3] = {0, 0, 0};
  const int n = 20000;
  for (uint64_t step = 0; step < static_cast<uint64_t>(n); ++step)
    ++counts[sample_token(logits.data(), 3, params(1.0f, 0, 0.75f, 5), step)];
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[1] / static_cast<double>(n), 0.625, 0.02);
  EXPECT_NEAR(counts[0] / static_cast<double>(n), 0.375, 0.02);
}

TEST(Sampling, FrequenciesMatchSoftmax) {
  std::mt19937 rng(6);
  const size_t vocab = 12;
  const auto logits = random_logits(rng, vocab, 1.0f);
  for (float temperature : {1.0f, 0.5f, 2.0f}) {
    std::vector<double> want(vocab);
    double z = 0.0;
    for (size_t i = 0; i < vocab; ++i) z += want[i] = std::exp(logits[i] / static_cast<double>(temperature));
    std::vector<int> counts(vocab, 0);
    const int n = 20000;
    for (uint64_t step = 0; step < static_cast<uint64_t>(n); ++step)
      ++counts[static_cast<size_t>(sample_token(logits.data(), vocab, params(temperature, 0, 1.0f, 11), step))];
    for (size_t i = 0; i < vocab; ++i)
      EXPECT_NEAR(counts[i] / static_cast<double>(n), want[i] / z, 0.02)
          << "token " << i << " temperature " << temperature;
  }
}

TEST(Sampling, InvalidParametersThrow) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  EXPECT_THROW(sample_token(logits.data(), 3, params(-0.5f), 0), std::invalid_argument);
  EXPECT_THROW(sample_token(logits.data(), 3, params(NAN), 0), std::invalid_argument);
  EXPECT_THROW(sample_token(logits.data(), 3, params(1.0f, 0, 0.0f), 0), std::invalid_argument);
  EXPECT_THROW(sample_token(logits.data(), 3, params(1.0f, 0, 1.5f), 0), std::invalid_argument);
  EXPECT_THROW(sample_token(logits.data(), 3, params(1.0f, -1), 0), std::invalid_argument);
  EXPECT_THROW(sample_token(logits.data(), 0, params(1.0f), 0), std::invalid_argument);
  const std::vector<float> bad = {1.0f, NAN, 3.0f};
  EXPECT_THROW(sample_token(bad.data(), 3, params(0.0f), 0), std::invalid_argument);
  // top_k larger than the vocabulary is simply no limit.
  EXPECT_NO_THROW(sample_token(logits.data(), 3, params(1.0f, 10), 0));
}

}  // namespace
}  // namespace starattn
