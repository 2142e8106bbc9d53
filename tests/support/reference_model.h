// An independent dense Llama forward for tests: plain loops in double precision, an explicit
// attention mask, explicit position ids, and optional external keys/values ahead of the tokens.
// It shares no code with the engine's forward or the backends (only the config and weights).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/memory_weights.h"
#include "runtime/model_config.h"

namespace starattn::testing {

struct LayerKv {
  // [n, kv_dim] row-major, post-RoPE keys.
  std::vector<double> k, v;
};

struct ReferenceResult {
  std::vector<LayerKv> kv;            // per layer, the K/V of the n tokens
  std::vector<std::vector<double>> logits;  // per token, [vocab]
};

// Runs tokens[n] at positions[n]. mask[i * (P + n) + j] says whether token i sees key j, where
// keys are the P external rows of `prefix` (per layer, may be empty) followed by the n tokens.
ReferenceResult reference_forward(const ModelConfig& config, const MemoryWeights& weights,
                                  const std::vector<int32_t>& tokens,
                                  const std::vector<int32_t>& positions,
                                  const std::vector<bool>& mask,
                                  const std::vector<LayerKv>& prefix = {});

// Causal mask over n tokens with every one of P prefix keys visible.
std::vector<bool> causal_mask(int64_t n, int64_t prefix = 0);

}  // namespace starattn::testing
