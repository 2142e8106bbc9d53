// Token selection from logits on the host: greedy or seeded temperature / top-k / top-p.
// Backends that sample on the device must pick the same token for the same inputs.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/backend.h"

namespace starattn {

// Counter-based uniform draw in [0, 1): the same (seed, step) always gives the same number, on
// any backend and in any process, so a seeded request is reproducible token by token.
double uniform_draw(uint64_t seed, uint64_t step);

// Picks a token from logits[n]. temperature == 0: argmax (lowest index on ties). Otherwise the
// candidates are sorted by logit (descending, index ascending on ties), cut to top_k, then to the
// smallest prefix whose softmax mass (at temperature) reaches top_p, renormalised, and the token
// is chosen by inverse CDF with uniform_draw(seed, step). Throws std::invalid_argument for
// temperature < 0, top_p outside (0, 1], top_k < 0, and NaN or +inf logits.
int32_t sample_token(const float* logits, int64_t n, const SamplingParams& params, uint64_t step);
// The parameter checks of sample_token alone (for a token picked elsewhere, e.g. a batched argmax).
void validate_sampling(const SamplingParams& params);

// What OpenAI-style requests add on top of sampling: penalties over the tokens generated so far,
// a fixed bias per token id, and log-probabilities of the chosen and the most likely tokens.
// Applied to the logits before sample_token (Generation does it, for every path alike).
struct LogitsProcessing {
  float presence_penalty = 0;   // subtracted once from every token already generated
  float frequency_penalty = 0;  // subtracted once per earlier occurrence
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the token's logit
  int top_logprobs = -1;  // -1: no logprobs; 0: the chosen token's only; k: and the k most likely
  bool adjusts_logits() const {
    return presence_penalty != 0 || frequency_penalty != 0 || !logit_bias.empty();
  }
  bool wants_logprobs() const { return top_logprobs >= 0; }
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;  // natural log of the probability under the adjusted logits, temperature 1
  std::vector<std::pair<int32_t, float>> top;  // the most likely tokens, by logprob descending
};

// Applies penalties and bias in place to logits[n]; `generated` lists the tokens generated so far.
void adjust_logits(float* logits, int64_t n, const LogitsProcessing& p,
                   const std::vector<int32_t>& generated);
// log-softmax of logits[n] at `token`, and the top k (ties by lower id first).
TokenLogprob token_logprob(const float* logits, int64_t n, int32_t token, int top_k);

}  // namespace starattn
