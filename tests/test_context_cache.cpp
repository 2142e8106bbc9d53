// Context reuse (issue 15): the block K/V cache on its own (keys, LRU eviction, leases, pins)
// and in the Engine, where a request that hits cached blocks must give exactly the tokens and
// logits of a cold run (the cached K/V is the cold encode's, copied bit for bit).
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "runtime/context_cache.h"
#include "runtime/cpu_backend.h"
#include "runtime/engine.h"
#include "runtime/random_model.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using testing::Outcome;
using testing::generate;

// ---- the cache alone -------------------------------------------------------------------------

class ContextCacheUnit : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = testing::test_config();
    backend_ = make_cpu_backend(1);
  }
  // A block of `rows` rows filled with random values (what a real encode would leave).
  std::shared_ptr<KvCache> block(int64_t rows) {
    auto kv = std::make_shared<KvCache>(*backend_, config_, rows);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> host(static_cast<size_t>(rows * config_.kv_dim()));
    for (int layer = 0; layer < kv->num_layers(); ++layer) {
      for (float& x : host) x = u(rng_);
      Buffer k = backend_->alloc(rows, config_.kv_dim(), DType::f32);
      backend_->upload(host.data(), k.view());
      for (float& x : host) x = u(rng_);
      Buffer v = backend_->alloc(rows, config_.kv_dim(), DType::f32);
      backend_->upload(host.data(), v.view());
      kv->write(layer, k.view(), v.view());
    }
    kv->commit(rows);
    return kv;
  }
  BlockKey key(int64_t start, int n, int32_t first) {
    BlockKey k;
    k.start = start;
    for (int i = 0; i < n; ++i) k.tokens.push_back(first + i);
    return k;
  }
  ModelConfig config_;
  std::unique_ptr<Backend> backend_;
  std::mt19937_64 rng_{11};
};

TEST_F(ContextCacheUnit, KeyCoversTokensStartAndAnchor) {
  const BlockKey a = key(16, 8, 3);
  BlockKey b = a;
  EXPECT_TRUE(a == b);
  EXPECT_EQ(a.hash(), b.hash());
  EXPECT_EQ(a.digest("m"), b.digest("m"));
  EXPECT_NE(a.digest("m"), a.digest("other model"));
  b.start = 24;
  EXPECT_FALSE(a == b);
  b = a;
  b.tokens[5] += 1;
  EXPECT_FALSE(a == b);
  b = a;
  b.anchor = {1, 2};
  b.anchor_source = AnchorSource::alone;
  EXPECT_FALSE(a == b);
  BlockKey c = b;
  c.anchor_source = AnchorSource::block0;
  EXPECT_FALSE(b == c);
  EXPECT_NE(b.digest("m"), c.digest("m"));

  // block_keys follows ContextShard::encode's anchor rule.
  const std::vector<int32_t> anchor = {5, 6};
  const std::vector<BlockSpec> with0 = {{0, 0, 3}, {1, 3, 3}};
  const auto k0 = block_keys(anchor, with0, {{5, 6, 7}, {8, 9, 10}});
  EXPECT_EQ(k0[0].anchor_source, AnchorSource::none);
  EXPECT_TRUE(k0[0].anchor.empty());
  EXPECT_EQ(k0[1].anchor_source, AnchorSource::block0);
  EXPECT_EQ(k0[1].anchor, anchor);
  const auto k1 = block_keys(anchor, {{1, 3, 3}}, {{8, 9, 10}});
  EXPECT_EQ(k1[0].anchor_source, AnchorSource::alone);
  const auto k2 = block_keys({}, {{1, 3, 3}}, {{8, 9, 10}});
  EXPECT_EQ(k2[0].anchor_source, AnchorSource::none);
}

TEST_F(ContextCacheUnit, HitsGiveTheStoredRowsAndCountMisses) {
  const int64_t one = block(4)->bytes();
  ContextCache cache(10 * one, "m");
  auto kv = block(4);
  const KvCache* stored = kv.get();
  {
    ContextCache::Lease lease;
    EXPECT_EQ(cache.find(key(0, 4, 1), lease), nullptr);
    EXPECT_TRUE(cache.insert(key(0, 4, 1), kv, lease));
    EXPECT_EQ(cache.find(key(0, 4, 1), lease).get(), stored);
    EXPECT_EQ(cache.find(key(4, 4, 1), lease), nullptr);  // same tokens, other position
    EXPECT_EQ(cache.evictable_bytes(), 0);               // held by the lease
  }
  const auto m = cache.metrics();
  EXPECT_EQ(m.hits, 1u);
  EXPECT_EQ(m.misses, 2u);
  EXPECT_EQ(m.inserts, 1u);
  EXPECT_EQ(m.entries, 1);
  EXPECT_EQ(m.bytes, one);
  EXPECT_EQ(cache.evictable_bytes(), one);
}

TEST_F(ContextCacheUnit, EvictsLeastRecentlyUsedUnheldUnpinnedEntries) {
  const int64_t one = block(4)->bytes();
  ContextCache cache(3 * one, "m");
  {
    ContextCache::Lease l;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(cache.insert(key(4 * i, 4, 100 * i), block(4), l));
  }
  // Touch block 0 so that block 1 is the least recently used.
  {
    ContextCache::Lease l;
    ASSERT_NE(cache.find(key(0, 4, 0), l), nullptr);
  }
  ContextCache::Lease running;
  ASSERT_TRUE(cache.insert(key(12, 4, 300), block(4), running));
  auto m = cache.metrics();
  EXPECT_EQ(m.evictions, 1u);
  EXPECT_EQ(m.bytes, 3 * one);
  ContextCache::Lease probe;
  EXPECT_EQ(cache.find(key(4, 4, 100), probe), nullptr) << "block 1 was the LRU entry";
  EXPECT_NE(cache.find(key(0, 4, 0), probe), nullptr);
  EXPECT_NE(cache.find(key(8, 4, 200), probe), nullptr);
  // Every entry is now held (by `running` or `probe`): nothing can be evicted, so a new block
  // is refused instead of taking a running request's K/V.
  EXPECT_FALSE(cache.insert(key(16, 4, 400), block(4), running));
  EXPECT_EQ(cache.metrics().rejected, 1u);
  EXPECT_EQ(cache.evict_bytes(one), 0);
  probe.release();
  running.release();
  EXPECT_EQ(cache.evict_bytes(one), one);
  EXPECT_EQ(cache.metrics().bytes, 2 * one);
}

TEST_F(ContextCacheUnit, PinnedEntriesSurviveUntilReleased) {
  const int64_t one = block(4)->bytes();
  ContextCache cache(2 * one, "m");
  {
    ContextCache::Lease l;
    ASSERT_TRUE(cache.insert(key(0, 4, 1), block(4), l, "doc"));
    ASSERT_TRUE(cache.insert(key(4, 4, 1), block(4), l));
  }
  EXPECT_EQ(cache.metrics().pinned_entries, 1);
  EXPECT_EQ(cache.evict_bytes(2 * one), one);  // only the unpinned one goes
  {
    ContextCache::Lease l;
    ASSERT_TRUE(cache.insert(key(8, 4, 1), block(4), l));
    EXPECT_FALSE(cache.insert(key(12, 4, 1), block(4), l)) << "the pinned block holds the rest";
  }
  EXPECT_EQ(cache.unpin("doc"), 1);
  EXPECT_EQ(cache.unpin("doc"), 0);
  EXPECT_EQ(cache.metrics().pinned_entries, 0);
  EXPECT_EQ(cache.evict_bytes(2 * one), 2 * one);
  EXPECT_EQ(cache.metrics().entries, 0);
}

TEST_F(ContextCacheUnit, DisabledCacheStoresNothing) {
  ContextCache cache(0, "m");
  ContextCache::Lease l;
  EXPECT_FALSE(cache.insert(key(0, 4, 1), block(4), l));
  EXPECT_EQ(cache.find(key(0, 4, 1), l), nullptr);
  EXPECT_EQ(cache.metrics().entries, 0);
}

// ---- in the Engine -----------------------------------------------------------------------------

class EngineReuse : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = testing::test_config(true);
    write_random_model(config_, 99, dir_.path());
    rng_.seed(5);
    document_ = testing::random_tokens(rng_, 96, config_.vocab_size);
    other_ = testing::random_tokens(rng_, 96, config_.vocab_size);
    q1_ = testing::random_tokens(rng_, 6, config_.vocab_size);
    q2_ = testing::random_tokens(rng_, 9, config_.vocab_size);
  }
  std::unique_ptr<Engine> make(int workers, int64_t cache_bytes) {
    EngineOptions o;
    o.model = dir_.path();
    o.workers = workers;
    o.threads = 1;
    o.context_cache_bytes = cache_bytes;
    return std::make_unique<Engine>(o);
  }
  RequestSpec request(const std::vector<int32_t>& context, const std::vector<int32_t>& query,
                      AttentionMode mode, int64_t block) {
    RequestSpec r;
    r.prompt.context = context;
    r.prompt.query = query;
    r.mode = mode;
    r.block_size = block;
    r.max_tokens = 6;
    r.ignore_eos = true;
    return r;
  }
  // Tokens and every logit bit-identical: a hit copies the cold encode's K/V.
  static void expect_same(const Outcome& warm, const Outcome& cold, const std::string& what) {
    ASSERT_EQ(warm.tokens, cold.tokens) << what;
    ASSERT_EQ(warm.logits.size(), cold.logits.size()) << what;
    for (size_t s = 0; s < cold.logits.size(); ++s)
      EXPECT_EQ(testing::max_abs_diff(warm.logits[s], cold.logits[s]), 0.0)
          << what << ", step " << s;
  }
  testing::TempDir dir_;
  ModelConfig config_;
  std::mt19937_64 rng_;
  std::vector<int32_t> document_, other_, q1_, q2_;
};

TEST_F(EngineReuse, SameDocumentNewQuestionEqualsColdRun) {
  struct Case {
    AttentionMode mode;
    int workers;
    int64_t block;
  };
  // Star with one block per worker, several blocks per worker (anchor from block 0's rows and
  // anchor encoded alone), and full mode (one block).
  for (const Case& c : {Case{AttentionMode::star, 3, 32}, Case{AttentionMode::star, 2, 16},
                        Case{AttentionMode::full, 2, 0}}) {
    const std::string what = std::string(mode_name(c.mode)) + ", " + std::to_string(c.workers) +
                             " workers, block " + std::to_string(c.block);
    auto cold = make(c.workers, 0);
    auto warm = make(c.workers, int64_t{64} << 20);
    const Outcome first = generate(*warm, request(document_, q1_, c.mode, c.block));
    expect_same(first, generate(*cold, request(document_, q1_, c.mode, c.block)), what + ", q1");
    EXPECT_EQ(first.stats.blocks_reused, 0) << what;
    const Outcome second = generate(*warm, request(document_, q2_, c.mode, c.block));
    EXPECT_EQ(second.stats.blocks_reused, second.stats.blocks) << what;
    expect_same(second, generate(*cold, request(document_, q2_, c.mode, c.block)), what + ", q2");
    const auto m = warm->context_cache_metrics();
    EXPECT_EQ(m.hits, static_cast<uint64_t>(second.stats.blocks)) << what;
    EXPECT_EQ(m.misses, static_cast<uint64_t>(first.stats.blocks)) << what;
    EXPECT_EQ(m.entries, first.stats.blocks) << what;
    EXPECT_GT(m.bytes, 0) << what;
    // A different document hits nothing and still equals its cold run.
    const Outcome fresh = generate(*warm, request(other_, q2_, c.mode, c.block));
    EXPECT_EQ(fresh.stats.blocks_reused, 0) << what;
    expect_same(fresh, generate(*cold, request(other_, q2_, c.mode, c.block)), what + ", other");
  }
}

TEST_F(EngineReuse, SharedPrefixOfWholeBlocksIsReused) {
  // The second context keeps the first 64 tokens (blocks 0 and 1 of 32) and changes the rest.
  std::vector<int32_t> shared = document_;
  std::copy(other_.begin(), other_.begin() + 32, shared.begin() + 64);
  for (int workers : {1, 3}) {
    auto cold = make(workers, 0);
    auto warm = make(workers, int64_t{64} << 20);
    generate(*warm, request(document_, q1_, AttentionMode::star, 32));
    const Outcome hit = generate(*warm, request(shared, q2_, AttentionMode::star, 32));
    // One worker: blocks 1 and 2 behind the anchor taken from cached block 0's rows.
    EXPECT_EQ(hit.stats.blocks_reused, 2) << workers << " workers";
    expect_same(hit, generate(*cold, request(shared, q2_, AttentionMode::star, 32)),
                std::to_string(workers) + " workers, shared prefix");
    // A changed first token changes the anchor: no block may be reused.
    std::vector<int32_t> new_anchor = document_;
    new_anchor[0] = (new_anchor[0] + 1) % config_.vocab_size;
    const Outcome miss = generate(*warm, request(new_anchor, q2_, AttentionMode::star, 32));
    EXPECT_EQ(miss.stats.blocks_reused, 0);
    expect_same(miss, generate(*cold, request(new_anchor, q2_, AttentionMode::star, 32)),
                std::to_string(workers) + " workers, new anchor");
  }
}

TEST_F(EngineReuse, SmallBudgetEvictsAndEvictedBlocksReencodeExactly) {
  // Room for two of the three 32-token blocks of a document.
  auto probe = make(3, int64_t{64} << 20);
  generate(*probe, request(document_, q1_, AttentionMode::star, 32));
  const int64_t block_bytes = probe->context_cache_metrics().bytes / 3;
  ASSERT_GT(block_bytes, 0);

  auto cold = make(3, 0);
  auto warm = make(3, 2 * block_bytes);
  const Outcome a1 = generate(*warm, request(document_, q1_, AttentionMode::star, 32));
  auto m = warm->context_cache_metrics();
  EXPECT_EQ(m.entries, 2);
  EXPECT_EQ(m.rejected, 1u) << "a running request's own blocks are not evicted for its third";
  EXPECT_LE(m.bytes, 2 * block_bytes);
  const Outcome b = generate(*warm, request(other_, q1_, AttentionMode::star, 32));
  m = warm->context_cache_metrics();
  EXPECT_EQ(m.evictions, 2u);
  EXPECT_EQ(b.stats.blocks_reused, 0);
  expect_same(b, generate(*cold, request(other_, q1_, AttentionMode::star, 32)), "other");
  // The document again: its blocks were evicted, so they are encoded again, exactly.
  const Outcome a2 = generate(*warm, request(document_, q2_, AttentionMode::star, 32));
  EXPECT_EQ(a2.stats.blocks_reused, 0);
  expect_same(a2, generate(*cold, request(document_, q2_, AttentionMode::star, 32)),
              "after eviction");
  EXPECT_LE(warm->context_cache_metrics().bytes, 2 * block_bytes);
}

TEST_F(EngineReuse, PinnedContextSurvivesOtherDocumentsUntilReleased) {
  auto probe = make(1, int64_t{64} << 20);
  generate(*probe, request(document_, q1_, AttentionMode::full, 0));
  const int64_t doc_bytes = probe->context_cache_metrics().bytes;

  auto cold = make(1, 0);
  auto warm = make(1, 2 * doc_bytes);
  RequestSpec pin = request(document_, q1_, AttentionMode::full, 0);
  pin.pin_context = "ctx-1";
  generate(*warm, pin);
  EXPECT_EQ(warm->context_cache_metrics().pinned_entries, 1);
  // Two other documents pass through the cache; the second needs the room of the first.
  std::vector<int32_t> third = other_;
  third[5] = (third[5] + 7) % config_.vocab_size;
  generate(*warm, request(other_, q1_, AttentionMode::full, 0));
  generate(*warm, request(third, q1_, AttentionMode::full, 0));
  EXPECT_EQ(warm->context_cache_metrics().evictions, 1u);
  const Outcome hit = generate(*warm, request(document_, q2_, AttentionMode::full, 0));
  EXPECT_EQ(hit.stats.blocks_reused, 1) << "the pinned document was evicted";
  expect_same(hit, generate(*cold, request(document_, q2_, AttentionMode::full, 0)), "pinned");

  EXPECT_EQ(warm->release_context("ctx-1"), 1);
  EXPECT_EQ(warm->context_cache_metrics().pinned_entries, 0);
  generate(*warm, request(other_, q1_, AttentionMode::full, 0));  // evicts `third`
  std::vector<int32_t> fourth = third;
  fourth[9] = (fourth[9] + 3) % config_.vocab_size;
  generate(*warm, request(fourth, q1_, AttentionMode::full, 0));  // now evicts the document
  const Outcome after = generate(*warm, request(document_, q2_, AttentionMode::full, 0));
  EXPECT_EQ(after.stats.blocks_reused, 0) << "released, the document is evictable like any other";
  expect_same(after, generate(*cold, request(document_, q2_, AttentionMode::full, 0)),
              "after release");
}

}  // namespace
}  // namespace starattn
