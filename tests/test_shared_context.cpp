// Requests on one document at the same time (issue 15): a shard whose blocks equal a running
// shard's (same tokens, positions, anchor) attends over that shard's K/V instead of encoding or
// copying it (ContextShard::shares_kv), and ContextShard::attend_many stacks the query rows of
// such shards into one attention item per pass over the keys. Both must be exact: a shared
// shard gives what its own encode gives, and a stacked row what its own attention gives, bit
// for bit (the cpu backend's row tile keeps a single row's key splits, as the cuda decode
// kernel's row group does).
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "runtime/context_cache.h"
#include "runtime/engine.h"
#include "runtime/engine_batch.h"
#include "runtime/random_model.h"
#include "runtime/star_attention.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

// A model with a helper for random rows on its backend.
struct Model : testing::CpuModel {
  explicit Model(uint64_t seed) : CpuModel(false, seed) {}
  Buffer random_rows(std::mt19937_64& rng, int64_t rows, int64_t cols) const {
    std::uniform_real_distribution<float> u(-2, 2);
    std::vector<float> h(static_cast<size_t>(rows * cols));
    for (float& x : h) x = u(rng);
    Buffer b = backend->alloc(rows, cols, DType::f32);
    backend->upload(h.data(), b.view());
    return b;
  }
};

// Shards of one run of blocks (two blocks behind an anchor) of `doc`.
void begin(ContextShard& s, const std::vector<int32_t>& doc) {
  const std::vector<BlockSpec> run = {{1, 16, 16}, {2, 32, 12}};
  std::vector<std::vector<int32_t>> toks;
  for (const BlockSpec& b : run) toks.emplace_back(doc.begin() + b.start, doc.begin() + b.start + b.length);
  s.begin_encode(std::vector<int32_t>(doc.begin(), doc.begin() + 8), run, std::move(toks), 0);
  while (s.encoding() && s.encode_chunk()) {
  }
}

TEST(SharedContext, ShardsOfOneDocumentShareTheKvAndStackedRowsEqualEachAlone) {
  Model m(3);
  std::mt19937_64 rng(17);
  const std::vector<int32_t> doc = testing::random_tokens(rng, 44, m.config.vocab_size);
  std::vector<int32_t> other = doc;
  other[40] = (other[40] + 1) % m.config.vocab_size;  // the last block differs
  auto cache = std::make_shared<ContextCache>(int64_t{16} << 20, "test");

  ContextShard first(*m.model, 28), second(*m.model, 28), third(*m.model, 28), alone(*m.model, 28);
  first.use_cache(cache);
  second.use_cache(cache);
  third.use_cache(cache);
  begin(first, doc);
  begin(second, doc);
  begin(third, other);
  begin(alone, doc);  // no cache: its own encode, the cold reference
  EXPECT_FALSE(first.shares_kv());
  EXPECT_TRUE(second.shares_kv());
  EXPECT_FALSE(third.shares_kv()) << "a changed block must not share";
  EXPECT_EQ(&second.cache(), &first.cache());
  EXPECT_EQ(second.blocks_reused(), 2);
  EXPECT_EQ(second.blocks_encoded(), 0);
  EXPECT_EQ(cache->metrics().shared_shards, 1u);
  for (int layer = 0; layer < m.config.num_layers; ++layer) {
    EXPECT_EQ(m.download(second.cache().keys(layer)), m.download(alone.cache().keys(layer)));
    EXPECT_EQ(m.download(second.cache().values(layer)), m.download(alone.cache().values(layer)));
  }

  // Queries of 1, 2 and 1 rows over the shared K/V and one over another shard, in one call:
  // rows adjacent in one allocation (a batch forward's), then in separate ones (gathered).
  const int64_t qd = m.config.q_dim();
  for (bool adjacent : {true, false}) {
    SCOPED_TRACE(adjacent ? "adjacent q rows" : "separate q rows");
    Buffer all = m.random_rows(rng, 4, qd);
    Buffer q2 = m.random_rows(rng, 2, qd), q3 = m.random_rows(rng, 1, qd), q4 = m.random_rows(rng, 1, qd);
    std::vector<Tensor> qs = {all.rows(0, 1), all.rows(1, 2), all.rows(3, 1), q4.view()};
    if (!adjacent) qs = {all.rows(0, 1), q2.view(), q3.view(), q4.view()};
    ContextShard* shards[] = {&first, &second, &first, &third};
    std::vector<Buffer> outs;
    std::vector<ContextShard::Query> queries;
    for (size_t i = 0; i < 4; ++i) {
      outs.push_back(m.backend->alloc(qs[i].rows, qd, DType::f32));
      outs.push_back(m.backend->alloc(qs[i].rows, m.config.num_heads, DType::f32));
      queries.push_back({shards[i], 1, qs[i], {outs[2 * i].view(), outs[2 * i + 1].view()}});
    }
    ContextShard::attend_many(*m.backend, queries);
    for (size_t i = 0; i < 4; ++i) {
      ContextShard& ref = i == 3 ? third : alone;
      const Partial want = ref.attend(1, qs[i]);
      EXPECT_EQ(m.download(queries[i].out.o), m.download(want.o)) << "query " << i;
      EXPECT_EQ(m.download(queries[i].out.lse), m.download(want.lse)) << "query " << i;
    }
  }
}

TEST(SharedContext, TheKvOutlivesTheShardThatEncodedItAndThenGoes) {
  Model m(4);
  std::mt19937_64 rng(5);
  const std::vector<int32_t> doc = testing::random_tokens(rng, 44, m.config.vocab_size);
  auto cache = std::make_shared<ContextCache>(int64_t{16} << 20, "test");
  auto first = std::make_unique<ContextShard>(*m.model, 28);
  auto second = std::make_unique<ContextShard>(*m.model, 28);
  ContextShard alone(*m.model, 28);
  first->use_cache(cache);
  second->use_cache(cache);
  begin(*first, doc);
  begin(*second, doc);
  begin(alone, doc);
  ASSERT_TRUE(second->shares_kv());
  first.reset();  // the request that encoded it ends first
  Buffer q = m.random_rows(rng, 1, m.config.q_dim());
  EXPECT_EQ(m.download(second->attend(0, q.view()).o), m.download(alone.attend(0, q.view()).o));
  EXPECT_EQ(m.download(second->attend(0, q.view()).lse), m.download(alone.attend(0, q.view()).lse));
  // A pinning request encodes (its blocks must land under its pin), from the block cache.
  ContextShard pinned(*m.model, 28);
  pinned.use_cache(cache, "contract");
  begin(pinned, doc);
  EXPECT_FALSE(pinned.shares_kv());
  EXPECT_EQ(pinned.blocks_reused(), 2);
  // With no shard left on it the K/V is gone, and a new shard of the document makes its own,
  // from the block cache (pinned's, offered when its encode completed, is the live one now).
  second.reset();
  ContextShard later(*m.model, 28);
  later.use_cache(cache);
  begin(later, doc);
  EXPECT_TRUE(later.shares_kv());
  EXPECT_EQ(&later.cache(), &pinned.cache());
}

// The Engine: four questions about one document decoded together. With the block cache on,
// the first request encodes and the other three share its K/V, their context attention stacked;
// with it off, each encodes its own. Same batch, same shapes: every token and logit must be
// equal bit for bit (only the sharing and stacking differ).
TEST(SharedContext, ConcurrentQuestionsOnOneDocumentEqualTheirOwnEncodes) {
  testing::TempDir dir;
  const ModelConfig config = testing::test_config(true);
  write_random_model(config, 71, dir.path());
  std::mt19937_64 rng(23);
  const std::vector<int32_t> doc = testing::random_tokens(rng, 90, config.vocab_size);
  std::vector<RequestSpec> reqs;
  for (int i = 0; i < 4; ++i) {
    RequestSpec r;
    r.prompt.context = doc;
    r.prompt.query = testing::random_tokens(rng, 2 + i, config.vocab_size);
    r.block_size = 20;
    r.max_tokens = 4 + 2 * i;  // the first (the encoder) ends first
    r.ignore_eos = true;
    r.want_logits = true;
    reqs.push_back(r);
  }
  auto run = [&](int64_t cache_bytes, ContextCacheMetrics& metrics, int64_t& held) {
    EngineOptions o;
    o.model = dir.path();
    o.workers = 3;
    o.threads = 1;
    o.context_cache_bytes = cache_bytes;
    Engine engine(o);
    EngineBatch batch(engine, 0);  // phase 1 whole at admission: the first is encoded before the next comes
    std::map<uint64_t, testing::Outcome> out;
    std::vector<uint64_t> ids;
    const size_t vocab = static_cast<size_t>(config.vocab_size);
    for (const RequestSpec& r : reqs) {
      auto id = std::make_shared<uint64_t>(0);
      *id = batch.admit(r, [&out, id, vocab](const GeneratedToken& t) {
        testing::Outcome& got = out[*id];
        got.tokens.push_back(t.token);
        if (t.logits) got.logits.emplace_back(t.logits, t.logits + vocab);
        return true;
      });
      ids.push_back(*id);
    }
    held = batch.kv_tokens_held();
    for (int step = 0; batch.running() > 0 && step < 100; ++step)
      for (EngineBatch::Ended& e : batch.step()) {
        EXPECT_TRUE(e.end.ok) << e.end.error;
        out[e.id].stats = e.end.stats;
      }
    metrics = engine.context_cache_metrics();
    std::vector<testing::Outcome> ordered;
    for (uint64_t id : ids) ordered.push_back(out[id]);
    return ordered;
  };
  ContextCacheMetrics shared_m, own_m;
  int64_t shared_held = 0, own_held = 0;
  const auto shared = run(int64_t{32} << 20, shared_m, shared_held);
  const auto own = run(0, own_m, own_held);
  // The document's K/V is held once for the four, four times without sharing.
  EXPECT_EQ(shared_held, static_cast<int64_t>(doc.size()));
  EXPECT_EQ(own_held, 4 * static_cast<int64_t>(doc.size()));
  const int shards = 3;
  EXPECT_EQ(shared_m.shared_shards, static_cast<uint64_t>(3 * shards));
  EXPECT_EQ(own_m.shared_shards, 0u);
  for (size_t i = 0; i < reqs.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_EQ(static_cast<int>(shared[i].tokens.size()), reqs[i].max_tokens);
    EXPECT_EQ(shared[i].tokens, own[i].tokens);
    ASSERT_EQ(shared[i].logits.size(), own[i].logits.size());
    for (size_t t = 0; t < own[i].logits.size(); ++t)
      EXPECT_EQ(testing::max_abs_diff(shared[i].logits[t], own[i].logits[t]), 0.0) << "step " << t;
    if (i > 0) {
      EXPECT_EQ(shared[i].stats.blocks_reused, shared[i].stats.blocks);
    }
  }
}

}  // namespace
}  // namespace starattn
