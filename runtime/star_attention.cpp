#include "runtime/star_attention.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <stdexcept>
#include <string>

#include "runtime/log.h"

namespace starattn {
namespace {

// The attention call of causal_over_cache once the new K/V are in the cache.
AttentionArgs causal_args(const ModelConfig& c, const KvCache& cache, int layer, const Tensor& q,
                          const Tensor& k, Tensor o, Tensor lse) {
  const int64_t base = cache.size();
  AttentionArgs a;
  a.q = q;
  a.k = cache.keys(layer, 0, base + k.rows);
  a.v = cache.values(layer, 0, base + k.rows);
  a.o = o;
  a.lse = lse;
  a.n_q_heads = c.num_heads;
  a.n_kv_heads = c.num_kv_heads;
  a.head_dim = c.head_dim;
  a.scale = c.attention_scale();
  a.mask = MaskKind::causal;
  a.causal_offset = base;
  return a;
}

// Causal attention of new tokens over a cache that already holds `cache.size()` earlier tokens
// (a cached prefix: the anchor in phase 1, earlier query tokens in phase 2). Writes the new K/V
// into the cache at rows [size, size + T); the caller commits them after the forward.
void causal_over_cache(Backend& be, const ModelConfig& c, KvCache& cache, int layer,
                       const Tensor& q, const Tensor& k, const Tensor& v, Tensor o, Tensor lse) {
  cache.write(layer, k, v);
  if (q.empty()) return;
  be.attention(causal_args(c, cache, layer, q, k, o, lse));
}

}  // namespace

EncodeArea::EncodeArea(const Transformer& m, int64_t scratch_rows)
    : model(m), scratch(m.backend(), m.config(), scratch_rows), ws(m.backend()) {}

Tensor EncodeArea::lse_rows(int64_t rows) {
  if (!lse_.allocated() || lse_.view().rows < rows)
    lse_ = model.backend().alloc(rows, model.config().num_heads, DType::f32);
  return lse_.rows(0, rows);
}

void EncodeArea::release_rows() {
  ws.release();
  lse_ = Buffer();
}

namespace {

// Phase 1 hook: [prefix ; new tokens], causal, into `cache` (the scratch, or for block 0 the
// shard's own K/V).
class EncodeHook : public AttentionHook {
 public:
  EncodeHook(EncodeArea& area, KvCache& cache) : area_(area), cache_(cache) {}
  void attend(int layer, const Tensor& q, const Tensor& k, const Tensor& v, Tensor out) override {
    causal_over_cache(area_.model.backend(), area_.model.config(), cache_, layer, q, k, v, out,
                      q.empty() ? Tensor{} : area_.lse_rows(q.rows));
  }

 private:
  EncodeArea& area_;
  KvCache& cache_;
};

std::vector<int32_t> iota_positions(int64_t first, int64_t n) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), static_cast<int32_t>(first));
  return p;
}

}  // namespace

// The encode in progress: its own copy of the input (the caller's may go away between chunks),
// the area it encodes in ([anchor ; block being encoded] and the forward's rows) and where the
// next chunk starts.
struct ContextShard::Encoding {
  Encoding(KvCache& own, std::vector<int32_t> anchor_in, std::vector<BlockSpec> blocks_in,
           std::vector<std::vector<int32_t>> tokens_in, std::shared_ptr<EncodeArea> area_in)
      : anchor(std::move(anchor_in)), blocks(std::move(blocks_in)), tokens(std::move(tokens_in)),
        area(std::move(area_in)), scratch(area->scratch), ws(area->ws),
        scratch_hook(*area, scratch), own_hook(*area, own) {}

  std::vector<int32_t> anchor;
  std::vector<BlockSpec> blocks;
  std::vector<std::vector<int32_t>> tokens;
  std::vector<BlockKey> keys;  // with a block cache
  int64_t chunk = 0;           // rows per forward; 0: a whole anchor or block
  std::shared_ptr<EncodeArea> area;
  KvCache& scratch;
  Workspace& ws;
  EncodeHook scratch_hook;     // [anchor ; block] in the scratch
  EncodeHook own_hook;         // block 0, straight into the shard's K/V
  bool into_own = false;       // the block being encoded is block 0
  int64_t forward_rows = 0;    // the largest forward's rows (encode_forward_rows)
  bool have_anchor = false;    // scratch rows [0, a) hold the anchor's K/V
  bool in_anchor = false;      // the anchor is being encoded (before block `next`)
  int64_t anchor_done = 0;     // anchor rows encoded so far
  size_t next = 0;             // the block being encoded (or looked up)
  bool started = false;        // block `next` missed the cache and its scratch is set up
  int64_t done = 0;            // its rows encoded so far
  int64_t first_row = 0;       // where its K/V goes in the shard's cache
  int64_t rows_total = 0, rows_left = 0;
  // The chunk whose forward runs in slices (encode_chunk's max_layers): its rows (0: none in
  // flight), positions and the next layer to run.
  int64_t flight_rows = 0;
  std::vector<int32_t> flight_pos;
  int flight_layer = 0;
  // Progress of long encodes (seconds at 128K) at info level, of every encode at debug level.
  // Timing a block waits for the backend, so it is done only when the line is printed.
  logging::Level progress = logging::Level::debug;
  bool report = false;
  std::chrono::steady_clock::time_point t_block;
};

ContextShard::ContextShard(const Transformer& model, int64_t capacity_tokens)
    : model_(model), capacity_(capacity_tokens) {
  if (capacity_tokens < 0)
    throw std::invalid_argument("ContextShard: capacity of " + std::to_string(capacity_tokens) + " tokens");
}

void ContextShard::own_kv() {
  if (!kv_) kv_ = std::make_shared<KvCache>(model_.backend(), model_.config(), capacity_);
}

const KvCache& ContextShard::cache() const {
  if (!kv_) throw std::logic_error("ContextShard::cache: no encode has begun");
  return *kv_;
}

ContextShard::~ContextShard() { end_encode(); }

void ContextShard::encode(const std::vector<int32_t>& anchor, const std::vector<BlockSpec>& blocks,
                          const std::vector<std::vector<int32_t>>& block_tokens) {
  begin_encode(anchor, blocks, block_tokens, 0);
  while (pending_ && encode_chunk()) {  // no blocks: nothing pending
  }
}

int64_t ContextShard::encode_rows_left() const { return pending_ ? pending_->rows_left : 0; }
int64_t ContextShard::encode_rows_total() const { return pending_ ? pending_->rows_total : 0; }

void ContextShard::begin_encode(std::vector<int32_t> anchor, std::vector<BlockSpec> blocks,
                                std::vector<std::vector<int32_t>> block_tokens, int64_t chunk_tokens,
                                std::shared_ptr<EncodeArea> area) {
  if (pending_) throw std::logic_error("ContextShard::begin_encode: an encode is already in progress");
  if (chunk_tokens < 0)
    throw std::invalid_argument("ContextShard: chunk of " + std::to_string(chunk_tokens) + " tokens");
  if (blocks.size() != block_tokens.size())
    throw std::invalid_argument("ContextShard::encode: " + std::to_string(blocks.size()) +
                                " blocks but " + std::to_string(block_tokens.size()) +
                                " token lists");
  reused_ = encoded_ = 0;
  if (shares_kv_) throw std::logic_error("ContextShard::begin_encode: the shard already attends over shared K/V");
  if (blocks.empty()) {
    own_kv();
    return;
  }
  const int64_t a = static_cast<int64_t>(anchor.size());
  int64_t total = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (static_cast<int64_t>(block_tokens[i].size()) != blocks[i].length)
      throw std::invalid_argument("block " + std::to_string(blocks[i].index) + " has " +
                                  std::to_string(block_tokens[i].size()) +
                                  " tokens, its span says " + std::to_string(blocks[i].length));
    if (blocks[i].length < 1) throw std::invalid_argument("empty block");
    total += blocks[i].length;
  }
  if (total > capacity_)
    throw std::length_error("ContextShard: " + std::to_string(total) + " tokens of blocks for a capacity of " +
                                std::to_string(capacity_));
  std::vector<BlockKey> keys;
  if (blocks_) keys = block_keys(anchor, blocks, block_tokens);
  if (blocks_ && pin_.empty()) {
    // A running request with exactly these blocks: attend over its K/V, encode nothing. (A
    // pinning request encodes, so that its blocks land in the cache under its pin.)
    if (auto kv = blocks_->find_shard(keys); kv && kv->size() == total) {
      kv_ = std::move(kv);
      shares_kv_ = true;
      reused_ = static_cast<int>(blocks.size());
      return;
    }
  }
  own_kv();
  const int64_t scratch_rows = encode_scratch_rows(blocks, a);
  if (!area)
    area = std::make_shared<EncodeArea>(model_, scratch_rows);
  else if (area->scratch.capacity() < scratch_rows)
    throw std::invalid_argument("ContextShard: an encode area of " +
                                std::to_string(area->scratch.capacity()) + " rows for " +
                                std::to_string(scratch_rows) + " rows of scratch");
  auto e = std::make_unique<Encoding>(*kv_, std::move(anchor), std::move(blocks),
                                      std::move(block_tokens), std::move(area));
  e->chunk = chunk_tokens;
  e->forward_rows = encode_forward_rows(e->blocks, a, chunk_tokens);
  // Why a hit is copied into this shard's K/V instead of referenced: phase 2 attends over one
  // contiguous K/V per shard, one kernel whose summation order is the cold run's, so a warm
  // request is bit-identical to a cold one. Referencing the cached blocks where they lie would
  // split that attention into per-block partials merged by their lse, which rounds differently.
  // The copy is a device-to-device move of the block's K/V, far cheaper than its forward pass.
  e->keys = std::move(keys);
  // The anchor is encoded on its own unless block 0, which starts with it, is in this shard.
  const BlockSpec& b0 = e->blocks.front();
  const bool anchor_from_block0 = b0.start == 0 && a <= b0.length &&
                                  std::equal(e->anchor.begin(), e->anchor.end(), e->tokens.front().begin());
  bool later_blocks = false;
  for (const BlockSpec& blk : e->blocks) later_blocks |= blk.start != 0;
  e->rows_total = e->rows_left = total + (a > 0 && later_blocks && !anchor_from_block0 ? a : 0);
  e->progress = total >= 16384 ? logging::Level::info : logging::Level::debug;
  e->report = logging::enabled(e->progress);
  e->t_block = std::chrono::steady_clock::now();
  pending_ = std::move(e);
}

bool ContextShard::encode_chunk(int max_layers) {
  if (!pending_) throw std::logic_error("ContextShard::encode_chunk: no encode in progress");
  layers_last_call_ = 0;
  try {
    Encoding& e = *pending_;
    KvCache& own = *kv_;
    // A shared area holds one encode at a time: what another shard left in it is its own.
    if (e.area->user != nullptr && e.area->user != this)
      throw std::logic_error("ContextShard::encode_chunk: its encode area is in use by another shard");
    e.area->user = this;
    Backend& be = model_.backend();
    const ModelConfig& c = model_.config();
    ForwardOptions kv_only;
    kv_only.kv_only = true;
    const int64_t a = static_cast<int64_t>(e.anchor.size());
    const BlockSpec& blk = e.blocks[e.next];
    const std::vector<int32_t>& toks = e.tokens[e.next];
    // Block 0 starts with the anchor: its first a rows, under the causal mask, are the anchor's
    // K/V, the prefix of the blocks after it in this shard (none after it: nothing to keep).
    const bool anchor_in_block = blk.start == 0 && a > 0 && a <= blk.length &&
                                 e.next + 1 < e.blocks.size() &&
                                 std::equal(e.anchor.begin(), e.anchor.end(), toks.begin());
    // Rows [begin, begin + n) of `ids` at positions first_pos.., into the scratch after what it
    // holds (causal over it). Returns n once the chunk's last layer has run, 0 before.
    auto forward_rows = [&](const std::vector<int32_t>& ids, int64_t begin, int64_t left, int64_t first_pos) {
      if (e.flight_rows == 0) {
        // The workspace at the largest forward's rows from the start: grown on demand it would
        // double past them (Workspace::reserve grows geometrically, for decode loops), beyond
        // what the memory plan charged.
        if (e.ws.capacity() < e.forward_rows) e.ws.reserve(c, e.forward_rows);
        e.flight_rows = e.chunk > 0 ? std::min(e.chunk, left) : left;
        e.flight_pos = iota_positions(first_pos, e.flight_rows);
        e.flight_layer = 0;
      }
      int end = max_layers > 0 ? std::min(c.num_layers, e.flight_layer + max_layers) : c.num_layers;
      // The last layer of a phase-1 forward only projects K/V (kv_only), a few percent of a
      // layer: it rides with the slice before it and is not counted, or a slice of it alone
      // would tell the pacer that layers cost next to nothing.
      if (end == c.num_layers - 1) end = c.num_layers;
      model_.forward_layers(ids.data() + begin, e.flight_pos.data(), e.flight_rows, e.flight_layer, end,
                            e.into_own ? e.own_hook : e.scratch_hook, e.ws, kv_only);
      layers_last_call_ = std::min(end, c.num_layers - 1) - e.flight_layer;
      e.flight_layer = end;
      if (end < c.num_layers) return int64_t{0};
      const int64_t n = e.flight_rows;
      e.flight_rows = 0;
      (e.into_own ? own : e.scratch).commit(n);
      e.rows_left -= n;
      return n;
    };

    if (!e.started) {
      // A block starts: from the cache, or set up the scratch for its first chunk.
      if (blocks_) {
        if (auto hit = blocks_->find(e.keys[e.next], lease_, pin_)) {
          own.append_from(*hit, 0, blk.length);
          if (anchor_in_block) {
            // The anchor rows of block 0's cached K/V are those its cold encode left in scratch.
            e.scratch.truncate(0);
            e.scratch.append_from(*hit, 0, a);
            e.have_anchor = true;
          }
          ++reused_;
          e.rows_left -= blk.length;
          return next_block();
        }
      }
      e.started = true;
      e.first_row = own.size();
      if (blk.start == 0) {
        // Block 0: alone, plain causal at its global positions, straight into the shard's K/V
        // (it is the first block of a run, so that K/V holds nothing before it): no scratch copy
        // of it, which for a context of one block (full mode) was as large as the context's K/V.
        if (own.size() != 0)
          throw std::logic_error("ContextShard: block 0 after " + std::to_string(own.size()) + " rows");
        e.into_own = true;
      } else if (a > 0 && !e.have_anchor) {
        e.scratch.truncate(0);
        e.in_anchor = true;
        e.anchor_done = 0;
      } else {
        e.scratch.truncate(a > 0 ? a : 0);
      }
    }
    if (e.in_anchor) {
      e.anchor_done += forward_rows(e.anchor, e.anchor_done, a - e.anchor_done, e.anchor_done);
      if (e.anchor_done == a) {
        e.in_anchor = false;
        e.have_anchor = true;
      }
      return true;  // the block follows
    }
    e.done += forward_rows(toks, e.done, blk.length - e.done, blk.start + e.done);
    if (e.done < blk.length) return true;

    // The block is complete: keep its own rows (not the anchor's) in the shard's K/V.
    if (blk.start == 0) {
      e.into_own = false;
      if (anchor_in_block) {
        e.scratch.truncate(0);
        e.scratch.append_from(own, e.first_row, a);
        e.have_anchor = true;
      }
    } else {
      own.append_from(e.scratch, a, blk.length);
    }
    ++encoded_;
    if (blocks_ && blocks_->enabled()) {
      auto kv = std::make_shared<KvCache>(be, c, blk.length);
      kv->append_from(own, e.first_row, blk.length);
      blocks_->insert(e.keys[e.next], std::move(kv), lease_, pin_);
    }
    if (e.report) {
      be.synchronize();
      const auto now = std::chrono::steady_clock::now();
      logging::write(e.progress, "phase 1: block %d (positions %lld..%lld, anchor %lld) encoded in %.1f ms",
                     blk.index, static_cast<long long>(blk.start),
                     static_cast<long long>(blk.start + blk.length - 1),
                     static_cast<long long>(blk.start == 0 ? 0 : a),
                     std::chrono::duration<double, std::milli>(now - e.t_block).count());
      e.t_block = now;
    }
    return next_block();
  } catch (...) {
    end_encode();  // frees the scratch; the caller destroys the shard
    throw;
  }
}

bool ContextShard::next_block() {
  Encoding& e = *pending_;
  e.done = 0;
  e.started = false;
  if (++e.next < e.blocks.size()) return true;
  // Complete: later requests with exactly these blocks may attend over this K/V.
  if (blocks_) blocks_->offer_shard(e.keys, kv_);
  end_encode();
  return false;
}

void ContextShard::end_encode() {
  if (!pending_) return;
  EncodeArea& area = *pending_->area;
  if (area.user == this) {
    area.user = nullptr;
    // Phase 2 needs no activations: the forward's rows (a whole block's with chunk 0) go back
    // now, not when the request ends (and not when the last shard sharing the area is done).
    area.release_rows();
  }
  pending_.reset();  // the area itself goes with its last user
}

void ContextShard::use_cache(std::shared_ptr<ContextCache> blocks, std::string pin) {
  blocks_ = std::move(blocks);
  pin_ = std::move(pin);
}

// Phase 2 hook: own causal (O, lse) over query/generated K/V, merged with every shard's.
class QuerySession::Hook : public AttentionHook {
 public:
  explicit Hook(QuerySession& s) : s_(s) {}
  void attend(int layer, const Tensor& q, const Tensor& k, const Tensor& v, Tensor out) override {
    start(layer, q, k, v);
    finish(layer, out);
  }
  void start(int layer, const Tensor& q, const Tensor& k, const Tensor& v) {
    copies_.clear();
    const AttentionArgs own = prepare(layer, q, k, v, copies_);
    Backend& be = s_.model_.backend();
    for (const Backend::CopyItem& c : copies_) be.copy(c.src, c.dst);
    if (!q.empty()) be.attention(own);
    s_.shards_.start(layer, q, parts_);
  }
  void finish(int layer, Tensor out) {
    s_.shards_.finish(layer, parts_);
    s_.model_.backend().merge_partials(parts_, out, merged_lse_.rows(0, rows_));
  }

  // start() and finish() in pieces, for QuerySession::attend_layer to group with other
  // sessions'. prepare: the own rows' buffers; the K/V appends as copies to run; the own causal
  // attention's call (to run after the copies; none for empty q).
  AttentionArgs prepare(int layer, const Tensor& q, const Tensor& k, const Tensor& v,
                        std::vector<Backend::CopyItem>& copies) {
    Backend& be = s_.model_.backend();
    const ModelConfig& c = s_.model_.config();
    const int64_t T = q.rows;
    if (!own_o_.allocated() || own_o_.view().rows < T) {
      own_o_ = be.alloc(T, c.q_dim(), be.activation_dtype());
      own_lse_ = be.alloc(T, c.num_heads, DType::f32);
      merged_lse_ = be.alloc(T, c.num_heads, DType::f32);
    }
    rows_ = T;
    parts_.clear();
    parts_.push_back({own_o_.rows(0, T), own_lse_.rows(0, T)});
    s_.cache_.write_items(layer, k, v, copies);
    return causal_args(c, s_.cache_, layer, q, k, parts_[0].o, parts_[0].lse);
  }
  void start_direct(int layer, const Tensor& q, std::vector<ContextShard::Query>& direct) {
    s_.shards_.start_direct(layer, q, parts_, direct);
  }
  // After finish_shards: the merge to run.
  void finish_shards(int layer) { s_.shards_.finish(layer, parts_); }
  Backend::MergeItem merge(Tensor out) { return {&parts_, out, merged_lse_.rows(0, rows_)}; }

 private:
  QuerySession& s_;
  Buffer own_o_, own_lse_, merged_lse_;
  std::vector<Partial> parts_;
  std::vector<Backend::CopyItem> copies_;  // start()'s K/V appends, kept to reuse its storage
  int64_t rows_ = 0;
};

QuerySession::QuerySession(const Transformer& model, ContextShards& shards, int64_t context_len,
                           int64_t capacity)
    : model_(model), shards_(shards), context_len_(context_len),
      cache_(model.backend(), model.config(), capacity), ws_(model.backend()),
      hook_(std::make_unique<Hook>(*this)) {}

QuerySession::~QuerySession() = default;

void QuerySession::append_positions(int64_t n, std::vector<int32_t>& positions) const {
  if (n <= 0) throw std::invalid_argument("QuerySession: no tokens to feed");
  if (cache_.size() + n > cache_.capacity())
    throw std::length_error("query session full: " + std::to_string(cache_.size() + n) +
                            " tokens exceed its capacity of " +
                            std::to_string(cache_.capacity()));
  const std::vector<int32_t> pos = iota_positions(next_position(), n);
  positions.insert(positions.end(), pos.begin(), pos.end());
}

AttentionHook& QuerySession::hook() { return *hook_; }

void QuerySession::attend_layer(Backend& backend, int layer, std::vector<LayerRows>& rows) {
  // Each session's own part first (K/V appends, then its causal attention over them), ...
  std::vector<Backend::CopyItem> copies;
  std::vector<AttentionArgs> own;
  for (LayerRows& r : rows) {
    if (r.error) continue;
    try {
      const AttentionArgs a = r.session->hook_->prepare(layer, r.q, r.k, r.v, copies);
      if (!r.q.empty()) own.push_back(a);
    } catch (...) {
      r.error = std::current_exception();
    }
  }
  backend.copy_batch(copies);
  backend.attention_batch(own);
  // ... then every session's shards started (the in-process ones gathered into one call) ...
  std::vector<ContextShard::Query> direct;
  for (LayerRows& r : rows) {
    if (r.error) continue;
    const size_t before = direct.size();
    try {
      r.session->hook_->start_direct(layer, r.q, direct);
    } catch (...) {
      r.error = std::current_exception();
      direct.resize(before);  // a session that failed starts nothing
    }
  }
  ContextShard::attend_many(backend, direct);
  // ... and finished, each merged with its own part.
  std::vector<Backend::MergeItem> merges;
  for (LayerRows& r : rows) {
    if (r.error) continue;
    try {
      r.session->hook_->finish_shards(layer);
      merges.push_back(r.session->hook_->merge(r.out));
    } catch (...) {
      r.error = std::current_exception();
    }
  }
  backend.merge_partials_batch(merges);
}

void QuerySession::commit(int64_t n) { cache_.commit(n); }

void QuerySession::feed(const std::vector<int32_t>& ids) {
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<int32_t> pos;
  append_positions(n, pos);
  model_.forward(ids.data(), pos.data(), n, *hook_, ws_, ForwardOptions{});
  commit(n);
}

}  // namespace starattn
