// Host-side token selection: greedy, or seeded temperature / top-k / top-p.
#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace starattn {

namespace {

// splitmix64 finaliser: a bijective 64-bit mix with good avalanche, so nearby (seed, step)
// pairs give unrelated outputs.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Lowest index among the largest logits (-inf logits are legal: masked tokens).
int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

}  // namespace

void validate_sampling(const SamplingParams& p) {
  // Written as negated comparisons so that NaN parameters are rejected too.
  if (!(p.temperature >= 0.0f))
    throw std::invalid_argument("sample_token: temperature must be >= 0 (0 = greedy), got " +
                                std::to_string(p.temperature));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
    throw std::invalid_argument("sample_token: top_p must be in (0, 1], got " +
                                std::to_string(p.top_p));
  if (p.top_k < 0)
    throw std::invalid_argument("sample_token: top_k must be >= 0 (0 = no limit), got " +
                                std::to_string(p.top_k));
}

double uniform_draw(uint64_t seed, uint64_t step) {
  // Two rounds so that (seed, step) and (step, seed) or (seed + 1, step - 1) do not collide.
  const uint64_t h = mix64(mix64(seed + 0x9E3779B97F4A7C15ULL) ^ (step * 0xD1B54A32D192ED03ULL + 1));
  // Top 53 bits -> a double in [0, 1) with every value exactly representable.
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

int32_t sample_token(const float* logits, int64_t n, const SamplingParams& params, uint64_t step) {
  validate_sampling(params);
  if (n <= 0 || logits == nullptr)
    throw std::invalid_argument("sample_token: empty logits (n = " + std::to_string(n) + ")");
  // NaN or +inf logits mean something upstream went wrong; picking a token from them would hide
  // it, so say where.
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(logits[i]) || logits[i] == INFINITY)
      throw std::invalid_argument("sample_token: logit " + std::to_string(i) + " of " +
                                  std::to_string(n) + " is " +
                                  (std::isnan(logits[i]) ? "NaN" : "+inf"));

  const int32_t top = argmax(logits, n);
  if (params.temperature == 0.0f || logits[top] == -INFINITY) return top;

  // Candidates by logit descending, index ascending on ties (a strict total order, so the
  // result does not depend on the sort algorithm).
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  auto before = [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  size_t keep = order.size();
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < keep) {
    keep = static_cast<size_t>(params.top_k);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep),
                      order.end(), before);
  } else {
    std::sort(order.begin(), order.end(), before);
  }

  // softmax(logits / T) over the top-k candidates in double, shifted by the max for stability.
  const double t = params.temperature;
  const double lmax = logits[order[0]];
  std::vector<double> weight(keep);
  for (size_t j = 0; j < keep; ++j) weight[j] = std::exp((logits[order[j]] - lmax) / t);
  double total = 0.0;
  for (size_t j = 0; j < keep; ++j) total += weight[j];

  // Nucleus: the smallest prefix whose mass reaches top_p (at least one token). The prefix sum
  // repeats the additions of `total` in the same order, so top_p = 1 keeps everything exactly.
  if (params.top_p < 1.0f) {
    const double target = static_cast<double>(params.top_p) * total;
    double cum = 0.0;
    size_t j = 0;
    while (j < keep) {
      cum += weight[j++];
      if (cum >= target) break;
    }
    keep = std::max<size_t>(j, 1);
  }
  double kept_mass = 0.0;
  for (size_t j = 0; j < keep; ++j) kept_mass += weight[j];

  // Inverse CDF over the renormalised kept set.
  const double u = uniform_draw(params.seed, step) * kept_mass;
  double cum = 0.0;
  size_t last_positive = 0;
  for (size_t j = 0; j < keep; ++j) {
    cum += weight[j];
    if (u < cum) return order[j];
    if (weight[j] > 0.0) last_positive = j;
  }
  // Only reachable through rounding when u lands on the very top of the mass; never return a
  // zero-probability (-inf logit) candidate.
  return order[last_positive];
}

}  // namespace starattn

namespace starattn {

void adjust_logits(float* logits, int64_t n, const LogitsProcessing& p,
                   const std::vector<int32_t>& generated) {
  for (const auto& [id, bias] : p.logit_bias) {
    if (id < 0 || id >= n)
      throw std::invalid_argument("logit_bias names token " + std::to_string(id) +
                                  ", outside the vocabulary (size " + std::to_string(n) + ")");
    logits[id] += bias;
  }
  if (p.presence_penalty == 0 && p.frequency_penalty == 0) return;
  std::unordered_map<int32_t, int> counts;
  for (int32_t id : generated) ++counts[id];
  for (const auto& [id, count] : counts) {
    if (id < 0 || id >= n) continue;
    logits[id] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(count);
  }
}

TokenLogprob token_logprob(const float* logits, int64_t n, int32_t token, int top_k) {
  if (token < 0 || token >= n)
    throw std::invalid_argument("token_logprob: token " + std::to_string(token) + " outside [0, " +
                                std::to_string(n) + ")");
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(logits[i]));
  double z = 0;
  for (int64_t i = 0; i < n; ++i) z += std::exp(static_cast<double>(logits[i]) - m);
  const double lse = m + std::log(z);
  TokenLogprob out;
  out.token = token;
  out.logprob = static_cast<float>(logits[token] - lse);
  if (top_k > 0) {
    std::vector<int32_t> idx(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    const size_t k = std::min<size_t>(static_cast<size_t>(top_k), idx.size());
    std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                      [&](int32_t a, int32_t b) {
                        return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
                      });
    for (size_t i = 0; i < k; ++i)
      out.top.emplace_back(idx[i], static_cast<float>(logits[idx[i]] - lse));
  }
  return out;
}

}  // namespace starattn
