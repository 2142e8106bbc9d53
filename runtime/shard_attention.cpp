// Phase 2 of a context shard: attention of query rows over the K/V it holds, one shard at a
// time or many at once (ContextShard::attend_many, a batched decode step's in-process shards and
// a worker's batch), and LocalShards, the query side's view of shards in its own process.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/star_attention.h"

namespace starattn {

Partial ContextShard::out_views(int64_t rows) {
  Backend& be = model_.backend();
  const ModelConfig& c = model_.config();
  if (!out_o_.allocated() || out_o_.view().rows < rows) {
    out_o_ = be.alloc(rows, c.q_dim(), be.activation_dtype());
    out_lse_ = be.alloc(rows, c.num_heads, DType::f32);
  }
  return Partial{out_o_.rows(0, rows), out_lse_.rows(0, rows)};
}

Partial ContextShard::attend(int layer, const Tensor& q) {
  const Partial out = out_views(q.rows);
  attend_into(layer, q, out);
  return out;
}

AttentionArgs ContextShard::attention_args(int layer, const Tensor& q, const Partial& out) const {
  const ModelConfig& c = model_.config();
  AttentionArgs a;
  a.q = q;
  const KvCache& kv = cache();
  a.k = kv.keys(layer);
  a.v = kv.values(layer);
  a.o = out.o;
  a.lse = out.lse;
  a.n_q_heads = c.num_heads;
  a.n_kv_heads = c.num_kv_heads;
  a.head_dim = c.head_dim;
  a.scale = c.attention_scale();
  a.mask = MaskKind::none;
  return a;
}

void ContextShard::attend_into(int layer, const Tensor& q, const Partial& out) {
  model_.backend().attention(attention_args(layer, q, out));
}

namespace {

// q rows of a stack that already lie one after another in one allocation (a batch forward's
// rows, a worker's arriving batch): one view of all of them, no gather.
bool adjacent(const Tensor& a, const Tensor& b) {
  return a.dtype == b.dtype && a.stride == b.stride && a.cols == b.cols &&
         static_cast<const char*>(a.data) + a.rows * a.stride * static_cast<int64_t>(dtype_size(a.dtype)) ==
             static_cast<const char*>(b.data);
}

void ensure_rows(Backend& be, Buffer& buf, int64_t rows, int64_t cols, DType dtype) {
  if (!buf.allocated() || buf.view().rows < rows || buf.view().cols != cols || buf.view().dtype != dtype)
    buf = be.alloc(rows, cols, dtype);
}

}  // namespace

void ContextShard::attend_many(Backend& backend, const std::vector<Query>& queries) {
  for (const Query& x : queries)
    if (&x.shard->model_.backend() != &backend)
      throw std::invalid_argument("ContextShard::attend_many: a shard lives on another backend");
  std::vector<AttentionArgs> items;
  items.reserve(queries.size());
  std::vector<Backend::CopyItem> gather, scatter;
  std::vector<bool> taken(queries.size(), false);
  std::vector<const ContextShard*> leaders;
  for (size_t i = 0; i < queries.size(); ++i) {
    if (taken[i]) continue;
    taken[i] = true;
    const Query& x = queries[i];
    ContextShard& lead = *x.shard;
    const ModelConfig& c = lead.model_.config();
    const int64_t cap = backend.attention_rows_per_pass(c.num_heads, c.num_kv_heads);
    // The queries after this one over the same K/V and layer, while their rows fit one pass.
    std::vector<size_t> stack{i};
    int64_t rows = x.q.rows;
    const bool can_lead = std::find(leaders.begin(), leaders.end(), &lead) == leaders.end();
    if (can_lead && cap > 1 && rows > 0 && rows < cap && lead.kv_)
      for (size_t j = i + 1; j < queries.size() && rows < cap; ++j) {
        const Query& y = queries[j];
        if (taken[j] || y.layer != x.layer || y.shard->kv_ != lead.kv_ || y.q.rows == 0 ||
            rows + y.q.rows > cap || y.q.dtype != x.q.dtype || y.out.o.dtype != x.out.o.dtype)
          continue;
        stack.push_back(j);
        taken[j] = true;
        rows += y.q.rows;
      }
    if (stack.size() == 1) {
      items.push_back(lead.attention_args(x.layer, x.q, x.out));
      continue;
    }
    leaders.push_back(&lead);
    bool contiguous = true;
    for (size_t k = 1; k < stack.size(); ++k) contiguous &= adjacent(queries[stack[k - 1]].q, queries[stack[k]].q);
    Tensor q{x.q.data, x.q.dtype, rows, x.q.cols, x.q.stride};
    if (!contiguous) {
      ensure_rows(backend, lead.stack_q_, rows, x.q.cols, x.q.dtype);
      q = lead.stack_q_.rows(0, rows);
    }
    ensure_rows(backend, lead.stack_o_, rows, x.out.o.cols, x.out.o.dtype);
    ensure_rows(backend, lead.stack_lse_, rows, x.out.lse.cols, DType::f32);
    const Partial out{lead.stack_o_.rows(0, rows), lead.stack_lse_.rows(0, rows)};
    items.push_back(lead.attention_args(x.layer, q, out));
    int64_t r = 0;
    for (size_t j : stack) {
      const Query& y = queries[j];
      const int64_t T = y.q.rows;
      if (!contiguous) gather.push_back({y.q, q.slice_rows(r, T)});
      scatter.push_back({out.o.slice_rows(r, T), y.out.o});
      scatter.push_back({out.lse.slice_rows(r, T), y.out.lse});
      r += T;
    }
  }
  if (!gather.empty()) backend.copy_batch(gather);
  if (!items.empty()) backend.attention_batch(items);
  if (!scatter.empty()) backend.copy_batch(scatter);
}

void LocalShards::attend(int layer, const Tensor& q, std::vector<Partial>& out) {
  for (ContextShard* s : shards_)
    if (s->tokens() > 0) out.push_back(s->attend(layer, q));
}

void LocalShards::start_direct(int layer, const Tensor& q, std::vector<Partial>& out,
                               std::vector<ContextShard::Query>& direct) {
  for (ContextShard* s : shards_) {
    if (s->tokens() == 0) continue;
    out.push_back(s->out_views(q.rows));
    direct.push_back({s, layer, q, out.back()});
  }
}

}  // namespace starattn
