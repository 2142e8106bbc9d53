// Context reuse (issue 15): a block-level cache of phase-1 K/V, so a second question about a
// document, or a request sharing a prefix of whole blocks with an earlier one, skips phase 1
// for those blocks.
//
// A block's K/V is determined by its tokens, its global start position and what it was encoded
// behind: the anchor's tokens and where the anchor's K/V came from (block 0's own forward when
// the shard holds block 0, else a forward of the anchor alone; the two need not agree in the
// last bit on every backend, so the key tells them apart). The cache belongs to one model on
// one backend (model_id names both, with the dtype), so the key does not repeat them.
//
// Exactness: a hit hands out the K/V rows that the cold encode produced, and ContextShard copies
// them into its own contiguous K/V (see star_attention.cpp for why it copies instead of
// referencing them). Keys compare all their tokens; the 64-bit hash only picks the bucket.
//
// Memory: entries live on the backend and count against a byte budget. Inserting evicts the
// least recently used entries that are neither pinned nor held by a running request (a Lease);
// an entry that cannot fit is not stored. Owners that plan memory (the Engine, a context
// worker) count the evictable bytes as free room and call evict_bytes() before allocating.
#pragma once

#include <cstdint>
#include <algorithm>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/block_plan.h"
#include "runtime/kv_cache.h"

namespace starattn {

enum class AnchorSource : uint8_t {
  none = 0,    // encoded alone (block 0, full mode, the no-anchor ablation)
  block0 = 1,  // behind the anchor rows of block 0's own forward (the shard holds block 0)
  alone = 2,   // behind a forward of the anchor by itself
};

struct BlockKey {
  int64_t start = 0;
  std::vector<int32_t> tokens;
  std::vector<int32_t> anchor;  // empty with AnchorSource::none
  AnchorSource anchor_source = AnchorSource::none;

  bool operator==(const BlockKey& o) const {
    return start == o.start && anchor_source == o.anchor_source && tokens == o.tokens &&
           anchor == o.anchor;
  }
  uint64_t hash() const;
  // Hex digest of the key with the model's id: what a scheduler maps to the worker holding the
  // block (a hint only; the worker compares the full key).
  std::string digest(const std::string& model_id) const;
};

struct BlockKeyHash {
  size_t operator()(const BlockKey& k) const { return static_cast<size_t>(k.hash()); }
};

// The key of each block of a shard's run: `blocks` in run order with their tokens, behind
// `anchor` (c[0..a), empty for none). Mirrors ContextShard::encode's rules for the anchor.
std::vector<BlockKey> block_keys(const std::vector<int32_t>& anchor,
                                 const std::vector<BlockSpec>& blocks,
                                 const std::vector<std::vector<int32_t>>& block_tokens);

struct ContextCacheMetrics {
  uint64_t hits = 0, misses = 0, evictions = 0, inserts = 0;
  uint64_t rejected = 0;  // blocks not stored: the budget was held by pinned or in-use entries
  uint64_t shared_shards = 0;  // shards that attended over a running shard's K/V (find_shard)
  int64_t bytes = 0;      // K/V held now
  int64_t budget_bytes = 0;
  int64_t entries = 0, pinned_entries = 0;
};

class ContextCache {
 public:
  // budget_bytes: the most K/V bytes the cache keeps (0 disables it: nothing is stored).
  ContextCache(int64_t budget_bytes, std::string model_id);
  ~ContextCache();
  ContextCache(const ContextCache&) = delete;
  ContextCache& operator=(const ContextCache&) = delete;

  // What a running request holds: its entries are not evicted until the lease is destroyed.
  // The cache must outlive its leases.
  class Lease {
   public:
    Lease() = default;
    ~Lease();
    Lease(Lease&& o) noexcept;
    Lease& operator=(Lease&& o) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    void release();

   private:
    friend class ContextCache;
    ContextCache* cache_ = nullptr;
    std::vector<uint64_t> ids_;
  };

  // The K/V of `key` ([block length] rows per layer) or null; a hit moves the entry to the
  // front of the LRU order and adds it to `lease`. Counts a hit or a miss. When `pin` is not
  // empty, the entry is also pinned under that name.
  std::shared_ptr<const KvCache> find(const BlockKey& key, Lease& lease,
                                      const std::string& pin = {});
  // Stores `kv` for `key` (taking ownership), held by `lease` and pinned under `pin` if given.
  // Evicts unused entries to make room; false when it cannot fit in the budget.
  bool insert(const BlockKey& key, std::shared_ptr<const KvCache> kv, Lease& lease,
              const std::string& pin = {});
  // Live shards' K/V (ContextShard::shares_kv): a shard whose encode completed offers its K/V
  // under its blocks' keys; a later shard with exactly those keys (the same document behind the
  // same anchor, split alike) attends over it instead of copying the blocks. Only a weak
  // reference is kept: that K/V is its requests' memory, not the cache's (no budget, no LRU),
  // and goes with the last shard that uses it. find_shard compares every key in full.
  std::shared_ptr<KvCache> find_shard(const std::vector<BlockKey>& keys);
  void offer_shard(const std::vector<BlockKey>& keys, const std::shared_ptr<KvCache>& kv);
  // Whether find_shard would find one now (counts nothing): for memory plans.
  bool has_shard(const std::vector<BlockKey>& keys) const;
  // Drops the pin `name` from every entry (they become evictable once no request holds them).
  // Returns how many entries it was on.
  int64_t unpin(const std::string& name);
  // Evicts least recently used entries that nobody holds or pinned until `bytes` are freed (or
  // none is left). Returns the bytes freed.
  int64_t evict_bytes(int64_t bytes);
  // Bytes evict_bytes() could free now.
  int64_t evictable_bytes() const;
  // What the owner's memory plan leaves the cache right now (its free room after the running
  // requests' own K/V): the cache then holds at most min(budget, room), evicting unused entries
  // down to it and storing no block beyond it. Negative: no limit but the budget.
  void set_room(int64_t bytes);

  bool enabled() const { return budget_ > 0; }
  int64_t budget_bytes() const { return budget_; }
  const std::string& model_id() const { return model_id_; }
  ContextCacheMetrics metrics() const;

 private:
  struct Entry {
    uint64_t id = 0;
    BlockKey key;
    std::shared_ptr<const KvCache> kv;
    int64_t bytes = 0;
    int users = 0;               // leases holding it
    std::set<std::string> pins;  // explicit pins (POST /v1/contexts)
    std::list<uint64_t>::iterator lru;
  };
  void hold(Entry& e, Lease& lease, const std::string& pin);
  void drop(const std::vector<uint64_t>& ids);
  int64_t evict_locked(int64_t bytes);
  static bool evictable(const Entry& e) { return e.users == 0 && e.pins.empty(); }

  int64_t limit_locked() const { return room_ < 0 ? budget_ : std::min(budget_, room_); }

  const int64_t budget_;
  int64_t room_ = -1;
  const std::string model_id_;
  mutable std::mutex mutex_;
  uint64_t next_id_ = 1;
  std::unordered_map<BlockKey, uint64_t, BlockKeyHash> index_;
  std::map<uint64_t, Entry> entries_;
  std::list<uint64_t> lru_;  // front: most recently used
  struct LiveShard {
    std::vector<BlockKey> keys;
    std::vector<std::weak_ptr<KvCache>> kvs;  // equal K/V of twins; the first alive is shared
  };
  std::unordered_multimap<uint64_t, LiveShard> live_shards_;  // by shard_hash(keys)
  ContextCacheMetrics m_;
};

}  // namespace starattn
