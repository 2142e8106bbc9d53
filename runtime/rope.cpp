// RoPE inverse frequencies (plain and llama3-scaled) and the reference rotation.
//
// Hugging Face computes inv_freq as 1 / base ** (arange(0, D, 2).float() / D) in float32 and the
// llama3 adjustment in float32 tensor ops. We compute both in double and round once to float at
// the end: the result is the correctly rounded value of the formula, which differs from the
// float32 tensor result by at most an ulp or so. That is far below what bf16/fp32 activations can
// see, and it keeps the value independent of the libm's powf.
#include "runtime/rope.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace starattn {

namespace {

constexpr double kPi = 3.14159265358979323846;

// Llama 3.1 frequency scaling (Hugging Face `_compute_llama3_parameters`): long wavelengths
// (low frequencies) are slowed down by `factor`, short ones are kept, and the band in between
// is interpolated linearly in old_ctx / wavelength.
double llama3_scale(double inv_freq, const RopeScaling& s) {
  const double old_ctx = static_cast<double>(s.original_max_position_embeddings);
  const double factor = s.factor;
  const double low = s.low_freq_factor;
  const double high = s.high_freq_factor;
  const double low_freq_wavelen = old_ctx / low;
  const double high_freq_wavelen = old_ctx / high;
  const double wavelen = 2.0 * kPi / inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / factor;
  if (wavelen < high_freq_wavelen) return inv_freq;
  // Medium band. When low == high the band is the single point wavelen == old_ctx / low, where
  // both ends agree only in the limit; keep the frequency unscaled rather than divide by zero.
  if (high == low) return inv_freq;
  const double smooth = (old_ctx / wavelen - low) / (high - low);
  return (1.0 - smooth) * inv_freq / factor + smooth * inv_freq;
}

}  // namespace

std::vector<float> rope_inv_freq(const ModelConfig& config) {
  const int dim = config.head_dim;
  if (dim <= 0 || dim % 2 != 0)
    throw std::invalid_argument("rope_inv_freq: head_dim must be positive and even, got " +
                                std::to_string(dim));
  if (!(config.rope_theta > 0.0f))
    throw std::invalid_argument("rope_inv_freq: rope_theta must be positive, got " +
                                std::to_string(config.rope_theta));
  const RopeScaling& s = config.rope_scaling;
  const bool llama3 = s.type == "llama3";
  if (!s.type.empty() && !llama3)
    throw std::invalid_argument("rope_inv_freq: unsupported rope_scaling type '" + s.type +
                                "' (supported: none, llama3)");
  if (llama3) {
    if (!(s.factor > 0.0f) || !(s.low_freq_factor > 0.0f) || !(s.high_freq_factor > 0.0f) ||
        s.original_max_position_embeddings <= 0)
      throw std::invalid_argument(
          "rope_inv_freq: llama3 scaling needs positive factor (" + std::to_string(s.factor) +
          "), low_freq_factor (" + std::to_string(s.low_freq_factor) + "), high_freq_factor (" +
          std::to_string(s.high_freq_factor) + ") and original_max_position_embeddings (" +
          std::to_string(s.original_max_position_embeddings) + ")");
    if (s.high_freq_factor < s.low_freq_factor)
      throw std::invalid_argument("rope_inv_freq: llama3 high_freq_factor (" +
                                  std::to_string(s.high_freq_factor) +
                                  ") must not be below low_freq_factor (" +
                                  std::to_string(s.low_freq_factor) + ")");
  }

  const double base = config.rope_theta;  // the float value from the config, widened exactly
  std::vector<float> inv_freq(static_cast<size_t>(dim / 2));
  for (int i = 0; i < dim / 2; ++i) {
    double f = 1.0 / std::pow(base, static_cast<double>(2 * i) / dim);
    if (llama3) f = llama3_scale(f, s);
    inv_freq[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return inv_freq;
}

void rope_rotate(float* x, int head_dim, int position, const float* inv_freq) {
  const int half = head_dim / 2;
  // Float32 angle and float cos/sin, as Hugging Face does (positions are exact in float up
  // to 2^24, far beyond any context we serve).
  const float pos = static_cast<float>(position);
  for (int i = 0; i < half; ++i) {
    const float angle = pos * inv_freq[i];
    const float c = std::cos(angle);
    const float s = std::sin(angle);
    const float x0 = x[i];
    const float x1 = x[i + half];
    x[i] = x0 * c - x1 * s;
    x[i + half] = x1 * c + x0 * s;
  }
}

}  // namespace starattn
