// The Llama-family decoder (Llama 2/3, Mistral, Qwen2) expressed in backend ops.
//
// The transformer does not know which keys a token attends to: each layer hands its new
// queries/keys/values to an AttentionHook, which is where phase 1 (anchor + block, causal),
// phase 2 (query shard merged with context shards) and full attention differ.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/backend.h"
#include "runtime/model_config.h"
#include "runtime/weight_source.h"

namespace starattn {

class AttentionHook {
 public:
  virtual ~AttentionHook() = default;
  // q: [T, Hq*D], k/v: [T, Hkv*D] for the T new tokens (RoPE applied). Writes out: [T, Hq*D].
  // When the forward only needs this layer's keys and values (kv_only), q and out are empty.
  virtual void attend(int layer, const Tensor& q, const Tensor& k, const Tensor& v, Tensor out) = 0;
};

// Reusable activation buffers for one caller (a shard or a query session); grows on demand.
class Workspace {
 public:
  explicit Workspace(Backend& backend) : backend_(backend) {}
  // Makes sure every buffer holds at least `rows` rows for this config, and `logits` at least
  // `logits_rows` rows.
  void reserve(const ModelConfig& config, int64_t rows, int64_t logits_rows = 1);
  int64_t capacity() const { return rows_; }
  // Frees every buffer (an idle batch gives its high-water mark back); reserve() grows again.
  void release();

  // qkv: [n, q_dim + 2 kv_dim], the q | k | v projections side by side (one GEMM); gate_up:
  // [n, 2 intermediate], gate | up (one GEMM). The ops read column slices of them.
  // logits: [k, vocab] f32, row i the logits of the i-th row ForwardOptions asked for.
  Buffer x, xn, qkv, attn, proj, gate_up, act, logits;

 private:
  Backend& backend_;
  int64_t rows_ = 0;
  int64_t logits_rows_ = 0;
};

struct ForwardOptions {
  // Phase 1 keeps only K/V: the last layer stops after its keys and values, and no logits.
  bool kv_only = false;
  // Compute logits into workspace.logits (f32): of the last row ([1, vocab]) unless
  // logits_rows names rows (ascending), then [logits_rows.size(), vocab] in that order (a batched
  // decode step: the last row of each request).
  bool logits = true;
  std::vector<int64_t> logits_rows;
};

class Transformer {
 public:
  // Loads every tensor from `weights` into backend memory (converted to the backend's dtype).
  Transformer(const ModelConfig& config, const WeightSource& weights, Backend& backend);

  const ModelConfig& config() const { return config_; }
  Backend& backend() const { return backend_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }

  // Runs the model over n tokens with explicit position ids.
  void forward(const int32_t* ids, const int32_t* positions, int64_t n, AttentionHook& hook,
               Workspace& ws, const ForwardOptions& options) const;
  // The same forward in pieces: layers [first, end) only. first == 0 embeds the ids; the state
  // between pieces is the workspace's residual and normed rows (x, xn), so the calls of one
  // forward take the same ids, positions, n, hook, workspace and options, and nothing else may
  // use that workspace until end == num_layers (then the logits, as forward() computes them).
  // Why: a phase-1 chunk split over several decode steps adds only some layers' time to each.
  void forward_layers(const int32_t* ids, const int32_t* positions, int64_t n, int first, int end,
                      AttentionHook& hook, Workspace& ws, const ForwardOptions& options) const;

  // Total bytes of weights held on the backend.
  int64_t weight_bytes() const { return weight_bytes_; }

 private:
  // Fused projections: w_qkv = [wq ; wk ; wv] ([q_dim + 2 kv_dim, hidden], one GEMM per layer
  // instead of three), w_gate_up = [w_gate ; w_up] ([2 intermediate, hidden]); the biases are
  // concatenated the same way. The checkpoint's tensors are loaded straight into their rows, so
  // no separate copies are ever held.
  struct Layer {
    Buffer attn_norm, w_qkv, b_qkv, wo, bo, mlp_norm, w_gate_up, w_down;
    Buffer b_gate_up, b_down;  // only with mlp_bias
  };
  Buffer load(const WeightSource& weights, const std::string& name, int64_t rows, int64_t cols);
  // Loads tensor `name` ([dst.rows, dst.cols] elements) into dst, a view of backend memory.
  void load_into(const WeightSource& weights, const std::string& name, Tensor dst);
  // Host staging for load_into, reused across tensors and freed once the model is loaded: a fresh
  // buffer per tensor made loading an 8B model page-fault tens of GB (most of a minute).
  std::vector<float> staging_;

  ModelConfig config_;
  Backend& backend_;
  std::vector<float> inv_freq_;
  Buffer embed_, final_norm_, lm_head_;
  std::vector<Layer> layers_;
  int64_t weight_bytes_ = 0;
};

}  // namespace starattn
