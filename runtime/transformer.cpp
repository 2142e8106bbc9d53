#include "runtime/transformer.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "runtime/rope.h"

namespace starattn {

void Workspace::reserve(const ModelConfig& c, int64_t rows, int64_t logits_rows) {
  if (logits_rows > logits_rows_) {
    logits = backend_.alloc(std::max(logits_rows, logits_rows_ * 2), c.vocab_size, DType::f32);
    logits_rows_ = logits.view().rows;
  }
  if (rows <= rows_) return;
  // Grow geometrically so a decode loop after a long prefill does not reallocate every step.
  const int64_t n = std::max<int64_t>(rows, rows_ * 2);
  const DType t = backend_.activation_dtype();
  x = backend_.alloc(n, c.hidden_size, t);
  xn = backend_.alloc(n, c.hidden_size, t);
  qkv = backend_.alloc(n, int64_t{c.q_dim()} + 2 * int64_t{c.kv_dim()}, t);
  attn = backend_.alloc(n, c.q_dim(), t);
  proj = backend_.alloc(n, c.hidden_size, t);
  gate_up = backend_.alloc(n, 2 * int64_t{c.intermediate_size}, t);
  act = backend_.alloc(n, c.intermediate_size, t);
  rows_ = n;
}

void Workspace::release() {
  x = Buffer();
  xn = Buffer();
  qkv = Buffer();
  attn = Buffer();
  proj = Buffer();
  gate_up = Buffer();
  act = Buffer();
  logits = Buffer();
  rows_ = logits_rows_ = 0;
}

void Transformer::load_into(const WeightSource& weights, const std::string& name, Tensor dst) {
  const std::vector<int64_t> shape = weights.shape(name);
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  if (count != dst.rows * dst.cols)
    throw std::runtime_error(weights.describe() + ": tensor " + name + " has " +
                             std::to_string(count) + " elements, expected " +
                             std::to_string(dst.rows) + "x" + std::to_string(dst.cols));
  if (staging_.size() < static_cast<size_t>(count)) staging_.resize(static_cast<size_t>(count));
  weights.read_f32(name, staging_.data());
  backend_.upload(staging_.data(), dst);
  weight_bytes_ += count * static_cast<int64_t>(dtype_size(dst.dtype));
}

Buffer Transformer::load(const WeightSource& weights, const std::string& name, int64_t rows,
                         int64_t cols) {
  Buffer b = backend_.alloc(rows, cols, backend_.weight_dtype());
  load_into(weights, name, b.view());
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
    const int64_t qd = c.q_dim(), kvd = c.kv_dim();
    L.w_qkv = backend_.alloc(qd + 2 * kvd, H, backend_.weight_dtype());
    load_into(w, p + "self_attn.q_proj.weight", L.w_qkv.rows(0, qd));
    load_into(w, p + "self_attn.k_proj.weight", L.w_qkv.rows(qd, kvd));
    load_into(w, p + "self_attn.v_proj.weight", L.w_qkv.rows(qd + kvd, kvd));
    if (c.attention_bias) {
      L.b_qkv = backend_.alloc(1, qd + 2 * kvd, backend_.weight_dtype());
      load_into(w, p + "self_attn.q_proj.bias", L.b_qkv.view().slice_cols(0, qd));
      load_into(w, p + "self_attn.k_proj.bias", L.b_qkv.view().slice_cols(qd, kvd));
      load_into(w, p + "self_attn.v_proj.bias", L.b_qkv.view().slice_cols(qd + kvd, kvd));
    }
    L.wo = load(w, p + "self_attn.o_proj.weight", H, c.q_dim());
    if (c.o_proj_bias) L.bo = load(w, p + "self_attn.o_proj.bias", 1, H);
    L.mlp_norm = load(w, p + "post_attention_layernorm.weight", 1, H);
    L.w_gate_up = backend_.alloc(2 * I, H, backend_.weight_dtype());
    load_into(w, p + "mlp.gate_proj.weight", L.w_gate_up.rows(0, I));
    load_into(w, p + "mlp.up_proj.weight", L.w_gate_up.rows(I, I));
    L.w_down = load(w, p + "mlp.down_proj.weight", H, I);
    if (c.mlp_bias) {
      L.b_gate_up = backend_.alloc(1, 2 * I, backend_.weight_dtype());
      load_into(w, p + "mlp.gate_proj.bias", L.b_gate_up.view().slice_cols(0, I));
      load_into(w, p + "mlp.up_proj.bias", L.b_gate_up.view().slice_cols(I, I));
      L.b_down = load(w, p + "mlp.down_proj.bias", 1, H);
    }
  }
  std::vector<float>().swap(staging_);
}

void Transformer::forward(const int32_t* ids, const int32_t* positions, int64_t n,
                          AttentionHook& hook, Workspace& ws,
                          const ForwardOptions& options) const {
  forward_layers(ids, positions, n, 0, config_.num_layers, hook, ws, options);
}

void Transformer::forward_layers(const int32_t* ids, const int32_t* positions, int64_t n, int first,
                                 int end, AttentionHook& hook, Workspace& ws,
                                 const ForwardOptions& options) const {
  if (n <= 0) throw std::invalid_argument("Transformer::forward: no tokens");
  const ModelConfig& c = config_;
  if (first < 0 || first >= end || end > c.num_layers)
    throw std::invalid_argument("Transformer::forward: layers [" + std::to_string(first) + ", " +
                                std::to_string(end) + ") of " + std::to_string(c.num_layers));
  // A later piece continues in the rows the first one left; growing the workspace would lose them.
  if (first > 0 && ws.capacity() < n)
    throw std::logic_error("Transformer::forward: layers from " + std::to_string(first) +
                           " on a workspace that holds fewer than " + std::to_string(n) + " rows");
  // The rows whose logits are computed: the last one unless the caller named rows.
  const std::vector<int64_t> last_row{n - 1};
  const std::vector<int64_t>& out_rows = options.logits_rows.empty() ? last_row : options.logits_rows;
  for (size_t i = 0; i < out_rows.size(); ++i)
    if (out_rows[i] < 0 || out_rows[i] >= n || (i > 0 && out_rows[i] <= out_rows[i - 1]))
      throw std::invalid_argument("Transformer::forward: logits row " + std::to_string(out_rows[i]) +
                                  " is not ascending within the " + std::to_string(n) + " rows");
  const auto k_out = static_cast<int64_t>(out_rows.size());
  ws.reserve(c, n, k_out);
  Backend& be = backend_;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), I = c.intermediate_size;
  const Tensor x = ws.x.rows(0, n), xn = ws.xn.rows(0, n);
  const Tensor qkv = ws.qkv.rows(0, n);
  const Tensor q = qkv.slice_cols(0, qd), k = qkv.slice_cols(qd, kvd), v = qkv.slice_cols(qd + kvd, kvd);
  const Tensor attn = ws.attn.rows(0, n), proj = ws.proj.rows(0, n);
  const Tensor gate_up = ws.gate_up.rows(0, n), act = ws.act.rows(0, n);
  const Tensor gate = gate_up.slice_cols(0, I), up = gate_up.slice_cols(I, I);
  auto bias = [](const Buffer& b) { return b.allocated() ? &b.view() : nullptr; };

  if (first == 0) {
    be.embedding(ids, embed_.view(), x);
    be.rmsnorm(x, layers_[0].attn_norm.view(), c.rms_norm_eps, xn);
  }
  for (int li = first; li < end; ++li) {
    const Layer& L = layers_[static_cast<size_t>(li)];
    const bool last = li + 1 == c.num_layers;
    if (last && options.kv_only) {
      // Phase 1 keeps only K/V: the last layer's attention and MLP feed nothing that is kept, so
      // only the k | v rows of the fused weight are multiplied.
      const Tensor kv = qkv.slice_cols(qd, 2 * kvd);
      const Tensor kv_bias = L.b_qkv.allocated() ? L.b_qkv.view().slice_cols(qd, 2 * kvd) : Tensor{};
      be.matmul(xn, L.w_qkv.rows(qd, 2 * kvd), L.b_qkv.allocated() ? &kv_bias : nullptr, kv);
      be.rope({k, c.num_kv_heads, c.head_dim, positions, inv_freq_.data()});
      hook.attend(li, Tensor{}, k, v, Tensor{});
      return;
    }
    be.matmul(xn, L.w_qkv.view(), bias(L.b_qkv), qkv);
    // q and k heads sit side by side with one head size: one RoPE pass rotates both.
    be.rope({qkv.slice_cols(0, qd + kvd), c.num_heads + c.num_kv_heads, c.head_dim, positions,
             inv_freq_.data()});
    hook.attend(li, q, k, v, attn);
    be.matmul(attn, L.wo.view(), bias(L.bo), proj);
    be.add_rmsnorm(x, proj, L.mlp_norm.view(), c.rms_norm_eps, xn);
    be.matmul(xn, L.w_gate_up.view(), bias(L.b_gate_up), gate_up);
    be.swiglu(gate, up, act);
    be.matmul(act, L.w_down.view(), bias(L.b_down), proj);
    if (!last) {
      // The residual add and the next layer's input norm in one pass.
      be.add_rmsnorm(x, proj, layers_[static_cast<size_t>(li) + 1].attn_norm.view(), c.rms_norm_eps, xn);
    } else if (options.logits) {
      // Only the rows whose logits are wanted: add and final norm on them alone, row i's result
      // into xn row j <= i (ascending rows), so they sit together for one head GEMM.
      for (int64_t j = 0; j < k_out; ++j) {
        const int64_t r = out_rows[static_cast<size_t>(j)];
        be.add_rmsnorm(x.slice_rows(r, 1), proj.slice_rows(r, 1), final_norm_.view(),
                       c.rms_norm_eps, xn.slice_rows(j, 1));
      }
    } else {
      be.add(x, proj);
    }
  }
  if (end < c.num_layers || !options.logits || options.kv_only) return;
  be.matmul(xn.slice_rows(0, k_out), c.tie_word_embeddings ? embed_.view() : lm_head_.view(), nullptr,
            ws.logits.rows(0, k_out));
}

}  // namespace starattn
