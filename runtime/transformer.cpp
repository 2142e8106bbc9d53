#include "runtime/transformer.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "runtime/rope.h"

namespace starattn {

void Workspace::reserve(const ModelConfig& c, int64_t rows) {
  if (rows <= rows_) {
    if (!logits.allocated()) logits = backend_.alloc(1, c.vocab_size, DType::f32);
    return;
  }
  // Grow geometrically so a decode loop after a long prefill does not reallocate every step.
  const int64_t n = std::max<int64_t>(rows, rows_ * 2);
  const DType t = backend_.activation_dtype();
  x = backend_.alloc(n, c.hidden_size, t);
  xn = backend_.alloc(n, c.hidden_size, t);
  q = backend_.alloc(n, c.q_dim(), t);
  k = backend_.alloc(n, c.kv_dim(), t);
  v = backend_.alloc(n, c.kv_dim(), t);
  attn = backend_.alloc(n, c.q_dim(), t);
  proj = backend_.alloc(n, c.hidden_size, t);
  gate = backend_.alloc(n, c.intermediate_size, t);
  up = backend_.alloc(n, c.intermediate_size, t);
  act = backend_.alloc(n, c.intermediate_size, t);
  if (!logits.allocated()) logits = backend_.alloc(1, c.vocab_size, DType::f32);
  rows_ = n;
}

Buffer Transformer::load(const WeightSource& weights, const std::string& name, int64_t rows,
                         int64_t cols) {
  const std::vector<int64_t> shape = weights.shape(name);
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  if (count != rows * cols)
    throw std::runtime_error(weights.describe() + ": tensor " + name + " has " +
                             std::to_string(count) + " elements, expected " +
                             std::to_string(rows) + "x" + std::to_string(cols));
  std::vector<float> host(static_cast<size_t>(count));
  weights.read_f32(name, host.data());
  Buffer b = backend_.alloc(rows, cols, backend_.weight_dtype());
  backend_.upload(host.data(), b.view());
  weight_bytes_ += count * static_cast<int64_t>(dtype_size(backend_.weight_dtype()));
  return b;
}

Transformer::Transformer(const ModelConfig& config, const WeightSource& w, Backend& backend)
    : config_(config), backend_(backend), inv_freq_(rope_inv_freq(config)) {
  config_.validate(w.describe());
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  embed_ = load(w, "model.embed_tokens.weight", V, H);
  final_norm_ = load(w, "model.norm.weight", 1, H);
  if (!c.tie_word_embeddings) lm_head_ = load(w, "lm_head.weight", V, H);
  layers_.resize(static_cast<size_t>(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer& L = layers_[static_cast<size_t>(i)];
    L.attn_norm = load(w, p + "input_layernorm.weight", 1, H);
    L.wq = load(w, p + "self_attn.q_proj.weight", c.q_dim(), H);
    L.wk = load(w, p + "self_attn.k_proj.weight", c.kv_dim(), H);
    L.wv = load(w, p + "self_attn.v_proj.weight", c.kv_dim(), H);
    if (c.attention_bias) {
      L.bq = load(w, p + "self_attn.q_proj.bias", 1, c.q_dim());
      L.bk = load(w, p + "self_attn.k_proj.bias", 1, c.kv_dim());
      L.bv = load(w, p + "self_attn.v_proj.bias", 1, c.kv_dim());
    }
    L.wo = load(w, p + "self_attn.o_proj.weight", H, c.q_dim());
    if (c.o_proj_bias) L.bo = load(w, p + "self_attn.o_proj.bias", 1, H);
    L.mlp_norm = load(w, p + "post_attention_layernorm.weight", 1, H);
    L.w_gate = load(w, p + "mlp.gate_proj.weight", I, H);
    L.w_up = load(w, p + "mlp.up_proj.weight", I, H);
    L.w_down = load(w, p + "mlp.down_proj.weight", H, I);
    if (c.mlp_bias) {
      L.b_gate = load(w, p + "mlp.gate_proj.bias", 1, I);
      L.b_up = load(w, p + "mlp.up_proj.bias", 1, I);
      L.b_down = load(w, p + "mlp.down_proj.bias", 1, H);
    }
  }
}

void Transformer::forward(const int32_t* ids, const int32_t* positions, int64_t n,
                          AttentionHook& hook, Workspace& ws,
                          const ForwardOptions& options) const {
  if (n <= 0) throw std::invalid_argument("Transformer::forward: no tokens");
  const ModelConfig& c = config_;
  ws.reserve(c, n);
  Backend& be = backend_;
  const Tensor x = ws.x.rows(0, n), xn = ws.xn.rows(0, n);
  const Tensor q = ws.q.rows(0, n), k = ws.k.rows(0, n), v = ws.v.rows(0, n);
  const Tensor attn = ws.attn.rows(0, n), proj = ws.proj.rows(0, n);
  const Tensor gate = ws.gate.rows(0, n), up = ws.up.rows(0, n), act = ws.act.rows(0, n);

  be.embedding(ids, embed_.view(), x);
  for (int li = 0; li < c.num_layers; ++li) {
    const Layer& L = layers_[static_cast<size_t>(li)];
    const bool last = li + 1 == c.num_layers;
    be.rmsnorm(x, L.attn_norm.view(), c.rms_norm_eps, xn);
    be.matmul(xn, L.wk.view(), c.attention_bias ? &L.bk.view() : nullptr, k);
    be.matmul(xn, L.wv.view(), c.attention_bias ? &L.bv.view() : nullptr, v);
    be.rope({k, c.num_kv_heads, c.head_dim, positions, inv_freq_.data()});
    if (last && options.kv_only) {
      // Phase 1 keeps only K/V: the last layer's attention and MLP feed nothing that is kept.
      hook.attend(li, Tensor{}, k, v, Tensor{});
      return;
    }
    be.matmul(xn, L.wq.view(), c.attention_bias ? &L.bq.view() : nullptr, q);
    be.rope({q, c.num_heads, c.head_dim, positions, inv_freq_.data()});
    hook.attend(li, q, k, v, attn);
    be.matmul(attn, L.wo.view(), c.o_proj_bias ? &L.bo.view() : nullptr, proj);
    be.add(x, proj);
    be.rmsnorm(x, L.mlp_norm.view(), c.rms_norm_eps, xn);
    be.matmul(xn, L.w_gate.view(), c.mlp_bias ? &L.b_gate.view() : nullptr, gate);
    be.matmul(xn, L.w_up.view(), c.mlp_bias ? &L.b_up.view() : nullptr, up);
    be.swiglu(gate, up, act);
    be.matmul(act, L.w_down.view(), c.mlp_bias ? &L.b_down.view() : nullptr, proj);
    be.add(x, proj);
  }
  if (!options.logits || options.kv_only) return;
  const Tensor last_row = x.slice_rows(n - 1, 1);
  const Tensor last_norm = xn.slice_rows(n - 1, 1);
  be.rmsnorm(last_row, final_norm_.view(), c.rms_norm_eps, last_norm);
  be.matmul(last_norm, c.tie_word_embeddings ? embed_.view() : lm_head_.view(), nullptr,
            ws.logits.view());
}

}  // namespace starattn
