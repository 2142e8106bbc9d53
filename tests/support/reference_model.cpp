#include "tests/support/reference_model.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace starattn::testing {
namespace {

using Vec = std::vector<double>;

Vec load(const MemoryWeights& w, const std::string& name) {
  const auto& t = w.get(name);
  return Vec(t.data.begin(), t.data.end());
}

// y[n, out] = x[n, in] * W[out, in]^T (+ b)
Vec linear(const Vec& x, int64_t n, int64_t in, const Vec& W, int64_t out, const Vec* b) {
  Vec y(static_cast<size_t>(n * out));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (int64_t j = 0; j < in; ++j) s += x[i * in + j] * W[o * in + j];
      y[i * out + o] = s;
    }
  return y;
}

Vec rmsnorm(const Vec& x, int64_t n, int64_t h, const Vec& w, double eps) {
  Vec y(x.size());
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < h; ++j) ss += x[i * h + j] * x[i * h + j];
    const double r = 1.0 / std::sqrt(ss / h + eps);
    for (int64_t j = 0; j < h; ++j) y[i * h + j] = x[i * h + j] * r * w[j];
  }
  return y;
}

std::vector<double> inv_freq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<double> f(half);
  for (int i = 0; i < half; ++i) f[i] = std::pow(double(c.rope_theta), -2.0 * i / c.head_dim);
  if (c.rope_scaling.type == "llama3") {
    const auto& s = c.rope_scaling;
    const double old_ctx = s.original_max_position_embeddings;
    const double low_wl = old_ctx / s.low_freq_factor, high_wl = old_ctx / s.high_freq_factor;
    for (double& x : f) {
      const double wl = 2 * M_PI / x;
      if (wl > low_wl) {
        x = x / s.factor;
      } else if (wl >= high_wl) {
        const double smooth =
            (old_ctx / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        x = (1 - smooth) * x / s.factor + smooth * x;
      }
    }
  }
  return f;
}

void rope(Vec& x, int64_t n, int heads, int d, const std::vector<int32_t>& pos,
          const std::vector<double>& f) {
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < heads; ++h) {
      double* v = &x[(i * heads + h) * d];
      for (int j = 0; j < d / 2; ++j) {
        const double a = pos[i] * f[j], c = std::cos(a), s = std::sin(a);
        const double x0 = v[j], x1 = v[j + d / 2];
        v[j] = x0 * c - x1 * s;
        v[j + d / 2] = x1 * c + x0 * s;
      }
    }
}

}  // namespace

std::vector<bool> causal_mask(int64_t n, int64_t prefix) {
  std::vector<bool> m(static_cast<size_t>(n * (prefix + n)));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < prefix + n; ++j) m[i * (prefix + n) + j] = j < prefix + i + 1;
  return m;
}

ReferenceResult reference_forward(const ModelConfig& c, const MemoryWeights& w,
                                  const std::vector<int32_t>& tokens,
                                  const std::vector<int32_t>& positions,
                                  const std::vector<bool>& mask,
                                  const std::vector<LayerKv>& prefix) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t H = c.hidden_size, D = c.head_dim, Hq = c.num_heads, Hkv = c.num_kv_heads;
  const int64_t qd = Hq * D, kd = Hkv * D, I = c.intermediate_size, V = c.vocab_size;
  const int64_t P = prefix.empty() ? 0 : static_cast<int64_t>(prefix[0].k.size()) / kd;
  if (static_cast<int64_t>(mask.size()) != n * (P + n))
    throw std::invalid_argument("reference_forward: mask size");
  const auto freqs = inv_freq(c);
  const double scale = 1.0 / std::sqrt(double(D));
  const Vec emb = load(w, "model.embed_tokens.weight");

  Vec x(static_cast<size_t>(n * H));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < H; ++j) x[i * H + j] = emb[tokens[i] * H + j];

  ReferenceResult out;
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const Vec xn = rmsnorm(x, n, H, load(w, p + "input_layernorm.weight"), c.rms_norm_eps);
    Vec bq, bk, bv;
    if (c.attention_bias) {
      bq = load(w, p + "self_attn.q_proj.bias");
      bk = load(w, p + "self_attn.k_proj.bias");
      bv = load(w, p + "self_attn.v_proj.bias");
    }
    Vec q = linear(xn, n, H, load(w, p + "self_attn.q_proj.weight"), qd,
                   c.attention_bias ? &bq : nullptr);
    Vec k = linear(xn, n, H, load(w, p + "self_attn.k_proj.weight"), kd,
                   c.attention_bias ? &bk : nullptr);
    Vec v = linear(xn, n, H, load(w, p + "self_attn.v_proj.weight"), kd,
                   c.attention_bias ? &bv : nullptr);
    rope(q, n, static_cast<int>(Hq), static_cast<int>(D), positions, freqs);
    rope(k, n, static_cast<int>(Hkv), static_cast<int>(D), positions, freqs);
    out.kv.push_back({k, v});

    // Keys: the prefix rows then the tokens' own rows.
    Vec K, Vv;
    if (P > 0) {
      K = prefix[l].k;
      Vv = prefix[l].v;
    }
    K.insert(K.end(), k.begin(), k.end());
    Vv.insert(Vv.end(), v.begin(), v.end());
    Vec attn(static_cast<size_t>(n * qd), 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t g = h / (Hq / Hkv);
        std::vector<double> s(static_cast<size_t>(P + n), -INFINITY);
        double m = -INFINITY;
        for (int64_t j = 0; j < P + n; ++j) {
          if (!mask[i * (P + n) + j]) continue;
          double d = 0;
          for (int64_t e = 0; e < D; ++e) d += q[(i * Hq + h) * D + e] * K[(j * Hkv + g) * D + e];
          s[j] = d * scale;
          m = std::max(m, s[j]);
        }
        if (m == -INFINITY) continue;
        double z = 0;
        for (int64_t j = 0; j < P + n; ++j)
          if (s[j] != -INFINITY) z += std::exp(s[j] - m);
        for (int64_t j = 0; j < P + n; ++j) {
          if (s[j] == -INFINITY) continue;
          const double pj = std::exp(s[j] - m) / z;
          for (int64_t e = 0; e < D; ++e) attn[(i * Hq + h) * D + e] += pj * Vv[(j * Hkv + g) * D + e];
        }
      }
    Vec bo, bg, bu, bd;
    if (c.o_proj_bias) bo = load(w, p + "self_attn.o_proj.bias");
    if (c.mlp_bias) {
      bg = load(w, p + "mlp.gate_proj.bias");
      bu = load(w, p + "mlp.up_proj.bias");
      bd = load(w, p + "mlp.down_proj.bias");
    }
    const Vec o = linear(attn, n, qd, load(w, p + "self_attn.o_proj.weight"), H,
                         c.o_proj_bias ? &bo : nullptr);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    const Vec xm = rmsnorm(x, n, H, load(w, p + "post_attention_layernorm.weight"), c.rms_norm_eps);
    const Vec gate = linear(xm, n, H, load(w, p + "mlp.gate_proj.weight"), I,
                            c.mlp_bias ? &bg : nullptr);
    const Vec up = linear(xm, n, H, load(w, p + "mlp.up_proj.weight"), I, c.mlp_bias ? &bu : nullptr);
    Vec act(gate.size());
    for (size_t i = 0; i < act.size(); ++i) act[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
    const Vec down = linear(act, n, I, load(w, p + "mlp.down_proj.weight"), H,
                            c.mlp_bias ? &bd : nullptr);
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
  }
  const Vec xf = rmsnorm(x, n, H, load(w, "model.norm.weight"), c.rms_norm_eps);
  const Vec head = load(w, c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  const Vec logits = linear(xf, n, H, head, V, nullptr);
  for (int64_t i = 0; i < n; ++i)
    out.logits.emplace_back(logits.begin() + i * V, logits.begin() + (i + 1) * V);
  return out;
}

}  // namespace starattn::testing
