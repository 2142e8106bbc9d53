// The two phases of Star Attention (DESIGN.md section 1), independent of where they run.
//
// ContextShard is what a context-block worker does: phase 1 encodes its blocks, each behind the
// anchor, and keeps only the blocks' own K/V; in phase 2 it answers attention requests for
// query rows with (O, lse) over everything it holds. QuerySession is what the query worker does:
// it owns the K/V of the query and generated tokens and merges its own (O, lse) with the
// shards'. ContextShards abstracts how the query side reaches the shards (in-process calls now,
// the network in the distributed runtime).
#pragma once

#include <cstdint>
#include <exception>
#include <memory>
#include <vector>

#include "runtime/backend.h"
#include "runtime/block_plan.h"
#include "runtime/context_cache.h"
#include "runtime/kv_cache.h"
#include "runtime/transformer.h"

namespace starattn {

// The memory one phase-1 encode works in besides the K/V it keeps: the scratch K/V
// [anchor ; block] for blocks after block 0 (block 0 is encoded straight into the shard's own
// K/V: it has nothing in front of it), and the forward's rows: activations and the attention's
// lse, grown to the largest forward and given back when an encode ends. Shards that encode one
// after another on one backend (the Engine's in-process workers of a request) share one, so a
// request holds one encode's scratch, not one per worker; a shard given none makes its own. Two
// shards sharing an area must not encode at the same time (checked).
struct EncodeArea {
  EncodeArea(const Transformer& model, int64_t scratch_rows);
  // lse rows [0, rows) for a forward of `rows` query rows (grows the buffer on demand).
  Tensor lse_rows(int64_t rows);
  // Gives the forward's rows back (activations, lse); the scratch stays.
  void release_rows();
  const Transformer& model;
  KvCache scratch;
  Workspace ws;
  const void* user = nullptr;  // the shard encoding in it now
 private:
  Buffer lse_;  // [rows, Hq] f32
};

class ContextShard {
 public:
  // capacity_tokens: K/V rows this shard may keep (the tokens of its blocks).
  ContextShard(const Transformer& model, int64_t capacity_tokens);
  ~ContextShard();

  // Phase 1. `anchor` holds c[0..a) (empty: blocks are encoded alone, as in full mode or the
  // no-anchor ablation); blocks[i] covers context positions [start, start + length) and
  // block_tokens[i] are its tokens. Block 0 is encoded alone at its global positions; every other
  // block as [anchor ; block] with positions [0..a-1 ; start..], causal. The anchor's K/V is
  // computed once and reused for every block (or taken from block 0 when this shard holds it).
  void encode(const std::vector<int32_t>& anchor, const std::vector<BlockSpec>& blocks,
              const std::vector<std::vector<int32_t>>& block_tokens);

  // Phase 1 in chunks, so a long encode does not hold the backend (or an actor's thread, or an
  // Engine's decode loop) for seconds: begin_encode() checks the input and prepares, each
  // encode_chunk() then runs one forward over at most `chunk_tokens` rows of the anchor or of a
  // block (0: a whole block per call), attending causally to the anchor and the earlier chunks
  // already in the scratch cache. The caller decodes other streams between calls. encode() is
  // begin_encode() with chunk 0 and encode_chunk() until done. A throw leaves the shard failed:
  // destroy it (that frees its partial K/V), as for a request cancelled mid-encode.
  // `area`: the scratch to encode in (at least encode_scratch_rows of these blocks); null: the
  // shard allocates its own.
  void begin_encode(std::vector<int32_t> anchor, std::vector<BlockSpec> blocks,
                    std::vector<std::vector<int32_t>> block_tokens, int64_t chunk_tokens,
                    std::shared_ptr<EncodeArea> area = nullptr);
  // Runs the next chunk (or takes the next block from the cache); returns true while more
  // remain. Throws when no encode is in progress. max_layers > 0 runs at most that many layers
  // of the chunk's forward: the chunk then takes several calls (a slice each), and its K/V
  // counts once its last layer has run. Slices leave the K/V bit for bit as whole chunks do.
  bool encode_chunk(int max_layers = 0);
  // Layers of a forward the last encode_chunk() ran (0: it took a block from the cache or only
  // moved on), for pacing slices by their measured time (runtime/phase1_pacer.h). The cheap last
  // layer (K/V only) is not counted; it runs with the layer before it, never alone.
  int layers_last_call() const { return layers_last_call_; }
  bool encoding() const { return pending_ != nullptr; }
  // Rows the encode in progress has left to compute (anchor rows included) and its total.
  int64_t encode_rows_left() const;
  int64_t encode_rows_total() const;

  // Phase 2: attention of q [T, Hq*D] (on this backend) over all keys held, no mask. The
  // returned views stay valid until the next attend().
  Partial attend(int layer, const Tensor& q);
  // The same into caller-owned views (o [T, Hq*D] in the activation dtype, lse [T, Hq] f32),
  // which may be another process's memory mapped by CUDA IPC.
  void attend_into(int layer, const Tensor& q, const Partial& out);
  // This shard's own output views for `rows` query rows, as attend() returns them (valid until
  // the next attend() or out_views() with more rows).
  Partial out_views(int64_t rows);
  // The backend call attend_into() makes, for batching it with other shards' (attend_many).
  AttentionArgs attention_args(int layer, const Tensor& q, const Partial& out) const;

  // Phase 2 of several shards (several requests' shards of different lengths on one backend)
  // in ONE Backend::attention_batch call: item i writes (O, lse) of q_i over shard_i's keys
  // into out_i. Equal, bit for bit, to calling attend_into() on each.
  // Queries of one layer over one shared K/V (shares_kv(): requests on one document) are
  // stacked into items of at most Backend::attention_rows_per_pass rows, so that K/V is read
  // once per item rather than once per request: their q rows gathered (no copy where they are
  // already adjacent), their (O, lse) scattered back, each a single copy_batch.
  struct Query {
    ContextShard* shard = nullptr;
    int layer = 0;
    Tensor q;
    Partial out;
  };
  static void attend_many(Backend& backend, const std::vector<Query>& queries);

  int64_t tokens() const { return kv_ ? kv_->size() : 0; }
  int64_t capacity_tokens() const { return capacity_; }
  // The K/V phase 2 reads (allocated by the first begin_encode; throws before).
  const KvCache& cache() const;
  // This shard attends over the K/V of another live shard with exactly its blocks (same
  // tokens, positions and anchor: the same document, split alike), found through the block
  // cache (ContextCache::find_shard) when begin_encode started: it encoded and copied nothing
  // and holds no K/V of its own. Bit-identical to its own encode: the K/V is the same.
  bool shares_kv() const { return shares_kv_; }
  // The K/V it attends over (null before an encode begins): shards sharing one return the same.
  const KvCache* kv() const { return kv_.get(); }

  // Context reuse (runtime/context_cache.h): encode() then takes the K/V of blocks found in
  // `blocks` instead of encoding them, offers the blocks it encodes to it, and holds both until
  // this shard is destroyed (they are not evicted while the request runs). `pin` (may be empty)
  // pins them under that name.
  void use_cache(std::shared_ptr<ContextCache> blocks, std::string pin = {});
  // Blocks of the last encode() taken from the cache, and encoded.
  int blocks_reused() const { return reused_; }
  int blocks_encoded() const { return encoded_; }

 private:
  const Transformer& model_;
  int64_t capacity_;
  std::shared_ptr<KvCache> kv_;  // its own (allocated when an encode begins) or a shared one
  bool shares_kv_ = false;
  std::shared_ptr<ContextCache> blocks_;
  std::string pin_;
  ContextCache::Lease lease_;  // after blocks_: released before the cache can go
  int reused_ = 0, encoded_ = 0;
  int layers_last_call_ = 0;
  struct Encoding;                    // the encode in progress, with its scratch K/V
  std::unique_ptr<Encoding> pending_;
  bool next_block();                   // moves the encode in progress past its current block
  void end_encode();                   // drops the encode in progress and gives its area back
  void own_kv();                       // allocates the shard's own K/V (capacity_ rows) if none
  Buffer out_o_, out_lse_;
  // attend_many's stacked rows when this shard's query leads a stack (grown on demand).
  Buffer stack_q_, stack_o_, stack_lse_;
};

// The query side's view of the context shards of one request.
class ContextShards {
 public:
  virtual ~ContextShards() = default;
  // Appends to `out` one (O, lse) partial per shard for q [T, Hq*D] of this layer.
  virtual void attend(int layer, const Tensor& q, std::vector<Partial>& out) = 0;
  // attend() in two halves, so that a batch forward (runtime/decode_batch.h) can start the
  // context attention of every request of a layer before it finishes any: a transport may
  // then carry all requests' Q for one worker in one message, answered by one attention call
  // (actors/exchange_batch.h). start() may keep q (it stays valid until finish()) and append
  // nothing yet; finish() appends what is left, the partials in the same order as attend().
  // Either may throw (a failed shard); after a throw from start(), finish() is not called.
  // The defaults do all the work in start().
  virtual void start(int layer, const Tensor& q, std::vector<Partial>& out) { attend(layer, q, out); }
  virtual void finish(int layer, std::vector<Partial>& out) {
    (void)layer;
    (void)out;
  }
  // start() in a batched step (QuerySession::attend_layer): the shards that live in this
  // process are not attended here but appended to `direct`, their output views already in
  // `out` in merge order, so that one ContextShard::attend_many answers every request's. The
  // default is start().
  virtual void start_direct(int layer, const Tensor& q, std::vector<Partial>& out,
                            std::vector<ContextShard::Query>& direct) {
    (void)direct;
    start(layer, q, out);
  }
};

// Shards living in this process, called directly.
class LocalShards : public ContextShards {
 public:
  explicit LocalShards(std::vector<ContextShard*> shards) : shards_(std::move(shards)) {}
  void attend(int layer, const Tensor& q, std::vector<Partial>& out) override;
  void start_direct(int layer, const Tensor& q, std::vector<Partial>& out,
                    std::vector<ContextShard::Query>& direct) override;

 private:
  std::vector<ContextShard*> shards_;
};

class QuerySession {
 public:
  // context_len: positions of the query start there; capacity: query + generated tokens.
  QuerySession(const Transformer& model, ContextShards& shards, int64_t context_len,
               int64_t capacity);
  ~QuerySession();

  // Runs the next tokens (the query, then one generated token per step) through the model;
  // afterwards logits() holds the next-token logits [1, vocab] (f32, on the backend).
  void feed(const std::vector<int32_t>& ids);
  Tensor logits() const { return ws_.logits.rows(0, 1); }
  int64_t next_position() const { return context_len_ + cache_.size(); }

  // feed() in three parts, for a forward shared with other sessions (runtime/decode_batch.h):
  // append_positions() checks there is room for n more tokens and appends their positions;
  // hook() is this session's phase-2 attention for its rows of every layer; commit(n) keeps
  // their K/V once the forward is done (a forward that failed commits nothing, and the next
  // one overwrites what it wrote).
  void append_positions(int64_t n, std::vector<int32_t>& positions) const;
  AttentionHook& hook();
  void commit(int64_t n);
  // One layer of several sessions' rows (a batched decode step, runtime/decode_batch.h) with
  // their launches grouped: every K/V append in one Backend::copy_batch, every own causal
  // attention in one attention_batch, the in-process shards of all of them in one
  // ContextShard::attend_many, every merge in one merge_partials_batch; a transport's shards
  // are started for all before any is finished. Each session's out equals its own
  // hook().attend() bit for bit. A session that throws (its cache is full, a shard failed)
  // gets the error in `error` and its out rows are not written; a backend failure throws.
  // Rows with `error` already set are skipped.
  struct LayerRows {
    QuerySession* session = nullptr;
    Tensor q, k, v, out;
    std::exception_ptr error;
  };
  static void attend_layer(Backend& backend, int layer, std::vector<LayerRows>& rows);

 private:
  class Hook;
  const Transformer& model_;
  ContextShards& shards_;
  int64_t context_len_;
  KvCache cache_;
  Workspace ws_;
  std::unique_ptr<Hook> hook_;
};

}  // namespace starattn
