// Token selection from logits on the host: greedy or seeded temperature / top-k / top-p.
// Backends that sample on the device must pick the same token for the same inputs.
#pragma once

#include <cstdint>

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

}  // namespace starattn
