// RoPE inverse frequencies, plain and with Llama 3 ("llama3") scaling.
#pragma once

#include <vector>

#include "runtime/model_config.h"

namespace starattn {

// inv_freq[i] = theta^(-2i/D) for i < D/2, then llama3 scaling when config.rope_scaling.type is
// "llama3": wavelengths above original/low_freq_factor are divided by factor, those below
// original/high_freq_factor are kept, and the band between is interpolated smoothly.
std::vector<float> rope_inv_freq(const ModelConfig& config);

// Reference rotation of one head vector x[D] at `position` (rotate-half layout), for tests and
// the CPU backend: for i < D/2, angle = position * inv_freq[i] (float32 product, as Hugging Face),
// (x[i], x[i+D/2]) -> (x[i] cos - x[i+D/2] sin, x[i+D/2] cos + x[i] sin).
void rope_rotate(float* x, int head_dim, int position, const float* inv_freq);

}  // namespace starattn
