#include "runtime/context_cache.h"

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <stdexcept>

namespace starattn {
namespace {

// FNV-1a over 64-bit words, seeded differently for the two halves of the digest.
uint64_t mix(uint64_t h, uint64_t v) {
  for (int i = 0; i < 8; ++i) h = (h ^ ((v >> (8 * i)) & 0xff)) * 0x100000001b3ull;
  return h;
}

uint64_t hash_key(const BlockKey& k, uint64_t seed) {
  uint64_t h = seed;
  h = mix(h, static_cast<uint64_t>(k.start));
  h = mix(h, static_cast<uint64_t>(k.anchor_source));
  h = mix(h, k.tokens.size());
  for (int32_t t : k.tokens) h = mix(h, static_cast<uint32_t>(t));
  h = mix(h, k.anchor.size());
  for (int32_t t : k.anchor) h = mix(h, static_cast<uint32_t>(t));
  return h;
}

}  // namespace

uint64_t BlockKey::hash() const { return hash_key(*this, 0xcbf29ce484222325ull); }

std::string BlockKey::digest(const std::string& model_id) const {
  uint64_t m = 0x84222325cbf29ce4ull;
  for (unsigned char c : model_id) m = (m ^ c) * 0x100000001b3ull;
  char text[33];
  std::snprintf(text, sizeof(text), "%016llx%016llx",
                static_cast<unsigned long long>(hash_key(*this, 0xcbf29ce484222325ull ^ m)),
                static_cast<unsigned long long>(hash_key(*this, m)));
  return text;
}

std::vector<BlockKey> block_keys(const std::vector<int32_t>& anchor,
                                 const std::vector<BlockSpec>& blocks,
                                 const std::vector<std::vector<int32_t>>& block_tokens) {
  if (blocks.size() != block_tokens.size())
    throw std::invalid_argument("block_keys: " + std::to_string(blocks.size()) + " blocks but " +
                                std::to_string(block_tokens.size()) + " token lists");
  const size_t a = anchor.size();
  // ContextShard::encode takes the anchor's K/V from block 0 when its run starts with block 0
  // and block 0 begins with the anchor's tokens; otherwise it encodes the anchor alone.
  const bool from_block0 = a > 0 && !blocks.empty() && blocks[0].start == 0 &&
                           a <= block_tokens[0].size() &&
                           std::equal(anchor.begin(), anchor.end(), block_tokens[0].begin());
  std::vector<BlockKey> keys(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    BlockKey& k = keys[i];
    k.start = blocks[i].start;
    k.tokens = block_tokens[i];
    if (blocks[i].start != 0 && a > 0) {
      k.anchor = anchor;
      k.anchor_source = from_block0 ? AnchorSource::block0 : AnchorSource::alone;
    }
  }
  return keys;
}

ContextCache::ContextCache(int64_t budget_bytes, std::string model_id)
    : budget_(std::max<int64_t>(budget_bytes, 0)), model_id_(std::move(model_id)) {
  m_.budget_bytes = budget_;
}

ContextCache::~ContextCache() = default;

ContextCache::Lease::~Lease() { release(); }

ContextCache::Lease::Lease(Lease&& o) noexcept : cache_(o.cache_), ids_(std::move(o.ids_)) {
  o.cache_ = nullptr;
  o.ids_.clear();
}

ContextCache::Lease& ContextCache::Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    release();
    cache_ = o.cache_;
    ids_ = std::move(o.ids_);
    o.cache_ = nullptr;
    o.ids_.clear();
  }
  return *this;
}

void ContextCache::Lease::release() {
  if (cache_ && !ids_.empty()) cache_->drop(ids_);
  ids_.clear();
  cache_ = nullptr;
}

void ContextCache::hold(Entry& e, Lease& lease, const std::string& pin) {
  if (lease.cache_ && lease.cache_ != this)
    throw std::logic_error("ContextCache: a lease holds entries of another cache");
  lease.cache_ = this;
  lease.ids_.push_back(e.id);
  ++e.users;
  if (!pin.empty()) e.pins.insert(pin);
  lru_.splice(lru_.begin(), lru_, e.lru);
}

void ContextCache::drop(const std::vector<uint64_t>& ids) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (uint64_t id : ids) {
    auto it = entries_.find(id);
    if (it != entries_.end() && it->second.users > 0) --it->second.users;
  }
}

std::shared_ptr<const KvCache> ContextCache::find(const BlockKey& key, Lease& lease,
                                                  const std::string& pin) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!enabled()) return nullptr;
  auto it = index_.find(key);
  if (it == index_.end()) {
    ++m_.misses;
    return nullptr;
  }
  Entry& e = entries_.at(it->second);
  ++m_.hits;
  hold(e, lease, pin);
  return e.kv;
}

bool ContextCache::insert(const BlockKey& key, std::shared_ptr<const KvCache> kv, Lease& lease,
                          const std::string& pin) {
  if (!kv) throw std::invalid_argument("ContextCache::insert: no K/V");
  std::lock_guard<std::mutex> lock(mutex_);
  if (!enabled()) return false;
  if (auto it = index_.find(key); it != index_.end()) {
    // Encoded twice (two shards of concurrent requests): keep the first, equal, copy.
    hold(entries_.at(it->second), lease, pin);
    return true;
  }
  const int64_t bytes = kv->bytes();
  const int64_t limit = limit_locked();
  if (m_.bytes + bytes > limit) evict_locked(m_.bytes + bytes - limit);
  if (m_.bytes + bytes > limit) {
    ++m_.rejected;
    return false;
  }
  const uint64_t id = next_id_++;
  Entry& e = entries_[id];
  e.id = id;
  e.key = key;
  e.kv = std::move(kv);
  e.bytes = bytes;
  lru_.push_front(id);
  e.lru = lru_.begin();
  index_.emplace(e.key, id);
  m_.bytes += bytes;
  ++m_.inserts;
  hold(e, lease, pin);
  return true;
}

namespace {

uint64_t shard_hash(const std::vector<BlockKey>& keys) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ keys.size();
  for (const BlockKey& k : keys) h = (h ^ k.hash()) * 0x100000001b3ull;
  return h;
}

}  // namespace

std::shared_ptr<KvCache> ContextCache::find_shard(const std::vector<BlockKey>& keys) {
  if (keys.empty()) return nullptr;
  std::lock_guard<std::mutex> lock(mutex_);
  auto [first, last] = live_shards_.equal_range(shard_hash(keys));
  for (auto it = first; it != last; ++it) {
    if (it->second.keys != keys) continue;
    for (const auto& weak : it->second.kvs)
      if (auto kv = weak.lock()) {
        ++m_.shared_shards;
        return kv;
      }
  }
  return nullptr;
}

bool ContextCache::has_shard(const std::vector<BlockKey>& keys) const {
  if (keys.empty()) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  auto [first, last] = live_shards_.equal_range(shard_hash(keys));
  for (auto it = first; it != last; ++it)
    if (it->second.keys == keys)
      for (const auto& weak : it->second.kvs)
        if (!weak.expired()) return true;
  return false;
}

void ContextCache::offer_shard(const std::vector<BlockKey>& keys, const std::shared_ptr<KvCache>& kv) {
  if (keys.empty() || !kv) return;
  std::lock_guard<std::mutex> lock(mutex_);
  // Forget the K/V that is gone (its requests ended) while here.
  for (auto it = live_shards_.begin(); it != live_shards_.end();) {
    auto& kvs = it->second.kvs;
    kvs.erase(std::remove_if(kvs.begin(), kvs.end(), [](const auto& w) { return w.expired(); }), kvs.end());
    it = kvs.empty() ? live_shards_.erase(it) : std::next(it);
  }
  const uint64_t h = shard_hash(keys);
  auto [first, last] = live_shards_.equal_range(h);
  for (auto it = first; it != last; ++it)
    if (it->second.keys == keys) {
      // A twin encoded concurrently, or a pinning request: shared only once the first goes.
      it->second.kvs.push_back(kv);
      return;
    }
  live_shards_.emplace(h, LiveShard{keys, {kv}});
}

int64_t ContextCache::unpin(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  int64_t n = 0;
  for (auto& [id, e] : entries_) n += static_cast<int64_t>(e.pins.erase(name));
  return n;
}

int64_t ContextCache::evict_locked(int64_t bytes) {
  int64_t freed = 0;
  for (auto it = lru_.end(); it != lru_.begin() && freed < bytes;) {
    --it;
    Entry& e = entries_.at(*it);
    if (!evictable(e)) continue;
    freed += e.bytes;
    m_.bytes -= e.bytes;
    ++m_.evictions;
    index_.erase(e.key);
    const uint64_t id = e.id;
    it = lru_.erase(it);
    entries_.erase(id);
  }
  return freed;
}

int64_t ContextCache::evict_bytes(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes > 0 ? evict_locked(bytes) : 0;
}

void ContextCache::set_room(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  room_ = bytes;
  if (m_.bytes > limit_locked()) evict_locked(m_.bytes - limit_locked());
}

int64_t ContextCache::evictable_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int64_t n = 0;
  for (const auto& [id, e] : entries_)
    if (evictable(e)) n += e.bytes;
  return n;
}

ContextCacheMetrics ContextCache::metrics() const {
  std::lock_guard<std::mutex> lock(mutex_);
  ContextCacheMetrics m = m_;
  m.entries = static_cast<int64_t>(entries_.size());
  m.pinned_entries = 0;
  for (const auto& [id, e] : entries_) m.pinned_entries += e.pins.empty() ? 0 : 1;
  return m;
}

}  // namespace starattn
