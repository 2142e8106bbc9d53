// Phase 1 in chunks (ContextShard::begin_encode / encode_chunk, EngineBatch's interleaving) on
// the cpu backend: a shard encoded chunk by chunk holds the one-shot encode's K/V and the query
// decodes the same tokens over it, for chunk sizes that divide the blocks and that do not, with
// and without an anchor; in an EngineBatch a decoding request gets tokens between the chunks of
// a newly admitted long one; a request cancelled (or failing) mid-encode frees its K/V. A chunk
// whose forward runs in slices of layers (encode_chunk's max_layers, EngineBatch's step share)
// leaves the K/V of the same chunk run whole, bit for bit; the pacer's arithmetic is checked alone.
//
// Tolerance: a chunk's forward multiplies fewer rows than the one-shot forward, and the cpu
// matmul's rounding depends on the row count (its kernel and blocking are picked by it), so K/V
// of a chunked encode differ from the one-shot's in the last bits: at most 2.1e-6 measured here
// (printed per chunk size); a chunk as long as the block is the same forward, bit-identical.
// Attention, norms and RoPE are per row and see the same keys in the same order. kKvTol and
// kLogitTol bound that float32 rounding through the few layers of the test model; the greedy
// tokens must be equal.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <memory>
#include <random>

#include "runtime/block_plan.h"
#include "runtime/engine_batch.h"
#include "runtime/errors.h"
#include "runtime/phase1_pacer.h"
#include "runtime/random_model.h"
#include "runtime/star_attention.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

constexpr double kKvTol = 1e-5;
constexpr double kLogitTol = 1e-4;

// The test model with `layers` layers (the tiny preset's 2 leave no slice: the last layer rides
// with the one before it).
ModelConfig with_layers(ModelConfig c, int layers) {
  if (layers > 0) c.num_layers = layers;
  return c;
}

using Model = testing::CpuModel;

// The shards of one request (star mode over `workers`), encoded one-shot (chunk < 0) or in
// chunks of `chunk` rows (0: a whole anchor or block per call), each chunk's forward in slices of
// `max_layers` layers (0: whole).
struct Encoded {
  std::vector<std::unique_ptr<ContextShard>> shards;
  int calls = 0;
};
Encoded encode(const Model& m, const std::vector<int32_t>& ctx, int64_t block, int64_t anchor_len,
               int workers, int64_t chunk, int max_layers = 0,
               const std::shared_ptr<EncodeArea>& area = nullptr) {
  const int64_t C = static_cast<int64_t>(ctx.size());
  const auto runs = assign_blocks(split_blocks(C, block), std::vector<int64_t>(workers, C));
  const std::vector<int32_t> anchor(ctx.begin(), ctx.begin() + anchor_len);
  Encoded out;
  for (const auto& run : runs) {
    if (run.empty()) continue;
    int64_t n = 0;
    std::vector<std::vector<int32_t>> toks;
    for (const auto& b : run) {
      n += b.length;
      toks.emplace_back(ctx.begin() + b.start, ctx.begin() + b.start + b.length);
    }
    auto shard = std::make_unique<ContextShard>(*m.model, n);
    if (chunk < 0) {
      shard->encode(anchor, run, toks);
    } else {
      shard->begin_encode(anchor, run, toks, chunk, area);
      const int64_t total = shard->encode_rows_total();
      int64_t left = total;
      bool more = true;
      const int L = m.config.num_layers;
      while (more) {
        more = shard->encode_chunk(max_layers);
        ++out.calls;
        // Counted without the last layer (K/V only), which rides with the one before it.
        const int ran = shard->layers_last_call();
        EXPECT_GE(ran, 1);
        EXPECT_LE(ran, max_layers > 0 ? std::min(max_layers, L - 1) : L - 1);
        // Each call computes at most `chunk` rows, and never none (a cached block aside); a
        // slice that does not end its chunk leaves the rows as they were.
        const int64_t now = shard->encode_rows_left();
        if (more && max_layers == 0) {
          EXPECT_LT(now, left);
        }
        if (more && chunk > 0) {
          EXPECT_LE(left - now, chunk);
        }
        EXPECT_LE(now, left);
        left = now;
      }
      EXPECT_FALSE(shard->encoding());
    }
    EXPECT_EQ(shard->tokens(), n);
    out.shards.push_back(std::move(shard));
  }
  return out;
}

// Greedy tokens and their logits of a query decoded over `shards`.
std::vector<std::vector<float>> decode(const Model& m, Encoded& e, int64_t C,
                                       const std::vector<int32_t>& query, int steps,
                                       std::vector<int32_t>& tokens) {
  std::vector<ContextShard*> ptrs;
  for (auto& s : e.shards) ptrs.push_back(s.get());
  LocalShards local(ptrs);
  QuerySession session(*m.model, local, C, static_cast<int64_t>(query.size()) + steps);
  std::vector<std::vector<float>> logits;
  session.feed(query);
  for (int i = 0; i < steps; ++i) {
    logits.push_back(m.download(session.logits()));
    tokens.push_back(m.backend->sample(session.logits(), SamplingParams{}, i));
    if (i + 1 < steps) session.feed({tokens.back()});
  }
  return logits;
}

struct ChunkCase {
  int64_t context, block, anchor;
  int workers;
  bool variant;
};

class Phase1Chunks : public ::testing::TestWithParam<ChunkCase> {};

TEST_P(Phase1Chunks, ChunkedEncodeEqualsOneShot) {
  const ChunkCase c = GetParam();
  const Model m(c.variant, 17 + c.block);
  std::mt19937_64 rng(c.context * 7 + c.anchor);
  const auto ctx = testing::random_tokens(rng, c.context, m.config.vocab_size);
  const auto query = testing::random_tokens(rng, 5, m.config.vocab_size);
  Encoded whole = encode(m, ctx, c.block, c.anchor, c.workers, -1);
  std::vector<int32_t> want_tokens;
  const auto want_logits = decode(m, whole, c.context, query, 4, want_tokens);
  for (int64_t chunk : {int64_t{1}, int64_t{3}, int64_t{5}, int64_t{7}, c.block, int64_t{0}}) {
    Encoded chunked = encode(m, ctx, c.block, c.anchor, c.workers, chunk);
    if (chunk > 0 && chunk < c.block) {
      EXPECT_GT(chunked.calls, 2 * static_cast<int>(whole.shards.size()));
    }
    ASSERT_EQ(chunked.shards.size(), whole.shards.size());
    double worst = 0;
    for (size_t s = 0; s < whole.shards.size(); ++s)
      for (int l = 0; l < m.config.num_layers; ++l) {
        const KvCache& a = whole.shards[s]->cache();
        const KvCache& b = chunked.shards[s]->cache();
        ASSERT_EQ(a.size(), b.size());
        worst = std::max(worst, testing::max_abs_diff(m.download(a.keys(l)), m.download(b.keys(l))));
        worst = std::max(worst, testing::max_abs_diff(m.download(a.values(l)), m.download(b.values(l))));
      }
    std::printf("chunk %lld: max |K/V difference| %.3g\n", static_cast<long long>(chunk), worst);
    EXPECT_LE(worst, kKvTol) << "chunk " << chunk;
    std::vector<int32_t> tokens;
    const auto logits = decode(m, chunked, c.context, query, 4, tokens);
    EXPECT_EQ(tokens, want_tokens) << "chunk " << chunk;
    for (size_t i = 0; i < logits.size(); ++i)
      EXPECT_LE(testing::max_abs_diff(logits[i], want_logits[i]), kLogitTol) << "chunk " << chunk << " step " << i;
  }
}

// Slices of layers run the chunk's forward exactly as one call does: same rows, same kernels,
// the state carried in the workspace. So the K/V equal the whole chunks' bit for bit.
TEST_P(Phase1Chunks, SlicedChunksEqualWholeChunksBitForBit) {
  const ChunkCase c = GetParam();
  const Model m(c.variant, 29 + c.block, 5);
  std::mt19937_64 rng(c.context * 5 + c.anchor);
  const auto ctx = testing::random_tokens(rng, c.context, m.config.vocab_size);
  const int L = m.config.num_layers;
  ASSERT_GE(L, 2) << "slices need a model of several layers";
  for (int64_t chunk : {int64_t{3}, int64_t{0}}) {
    Encoded whole = encode(m, ctx, c.block, c.anchor, c.workers, chunk);
    for (int layers = 1; layers < L; ++layers) {
      Encoded sliced = encode(m, ctx, c.block, c.anchor, c.workers, chunk, layers);
      // L - 1 layers counted in slices of `layers` (the last rides with the one before it).
      EXPECT_EQ(sliced.calls, whole.calls * ((L - 1 + layers - 1) / layers)) << "chunk " << chunk << ", " << layers << " layers";
      ASSERT_EQ(sliced.shards.size(), whole.shards.size());
      for (size_t s = 0; s < whole.shards.size(); ++s)
        for (int l = 0; l < L; ++l) {
          const KvCache& a = whole.shards[s]->cache();
          const KvCache& b = sliced.shards[s]->cache();
          ASSERT_EQ(a.size(), b.size());
          EXPECT_EQ(m.download(a.keys(l)), m.download(b.keys(l))) << "chunk " << chunk << " shard " << s << " layer " << l;
          EXPECT_EQ(m.download(a.values(l)), m.download(b.values(l))) << "chunk " << chunk << " shard " << s << " layer " << l;
        }
    }
  }
}

// The Engine's shards encode in turn in one EncodeArea (one request holds one encode's scratch):
// each starts over what the one before left in it, and must leave the K/V of shards with areas
// of their own, bit for bit.
TEST_P(Phase1Chunks, ShardsTakingTurnsInOneAreaEqualShardsWithTheirOwn) {
  const ChunkCase c = GetParam();
  const Model m(c.variant, 41 + c.block, 3);
  std::mt19937_64 rng(c.context * 3 + c.anchor);
  const auto ctx = testing::random_tokens(rng, c.context, m.config.vocab_size);
  const auto blocks = split_blocks(c.context, c.block);
  for (int64_t chunk : {int64_t{3}, int64_t{0}}) {
    Encoded own = encode(m, ctx, c.block, c.anchor, c.workers, chunk);
    auto area = std::make_shared<EncodeArea>(*m.model, encode_scratch_rows(blocks, c.anchor));
    Encoded shared = encode(m, ctx, c.block, c.anchor, c.workers, chunk, 2, area);
    ASSERT_EQ(shared.shards.size(), own.shards.size());
    ASSERT_GE(own.shards.size(), 2u);
    for (size_t s = 0; s < own.shards.size(); ++s)
      for (int l = 0; l < m.config.num_layers; ++l) {
        const KvCache& a = own.shards[s]->cache();
        const KvCache& b = shared.shards[s]->cache();
        ASSERT_EQ(a.size(), b.size());
        EXPECT_EQ(m.download(a.keys(l)), m.download(b.keys(l))) << "chunk " << chunk << " shard " << s << " layer " << l;
        EXPECT_EQ(m.download(a.values(l)), m.download(b.values(l))) << "chunk " << chunk << " shard " << s << " layer " << l;
      }
    EXPECT_EQ(area.use_count(), 1) << "the shards let go of the area when their encodes ended";
    EXPECT_EQ(area->ws.capacity(), 0) << "the activations go back when an encode ends";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Phase1Chunks,
    ::testing::Values(ChunkCase{45, 12, 12, 2, false},  // anchor = block, last block short
                      ChunkCase{45, 12, 5, 3, false},   // anchor shorter than a block
                      ChunkCase{40, 10, 0, 2, true},    // no anchor (ablation), bias + llama3 RoPE
                      ChunkCase{37, 8, 8, 4, true}));   // a shard without block 0 encodes the anchor

TEST(Phase1ChunksApi, MisuseIsRefused) {
  const Model m(false, 3);
  ContextShard shard(*m.model, 8);
  EXPECT_THROW(shard.encode_chunk(), std::logic_error);
  EXPECT_THROW(shard.begin_encode({}, {{0, 0, 4}}, {{1, 2, 3, 4}}, -1), std::invalid_argument);
  shard.begin_encode({}, {{0, 0, 4}}, {{1, 2, 3, 4}}, 2);
  EXPECT_THROW(shard.begin_encode({}, {{0, 0, 4}}, {{1, 2, 3, 4}}, 2), std::logic_error);
  EXPECT_TRUE(shard.encode_chunk());
  EXPECT_FALSE(shard.encode_chunk());
  EXPECT_EQ(shard.tokens(), 4);

  // An area smaller than the encode's scratch, and two shards in one area at the same time.
  auto small = std::make_shared<EncodeArea>(*m.model, 5);
  ContextShard a(*m.model, 8), b(*m.model, 8);
  EXPECT_THROW(a.begin_encode({7, 8}, {{1, 4, 4}}, {{1, 2, 3, 4}}, 2, small), std::invalid_argument)
      << "[anchor ; block] is 6 rows";
  auto area = std::make_shared<EncodeArea>(*m.model, 4);
  a.begin_encode({}, {{0, 0, 4}}, {{1, 2, 3, 4}}, 2, area);
  b.begin_encode({}, {{0, 0, 4}}, {{5, 6, 7, 8}}, 2, area);
  EXPECT_TRUE(a.encode_chunk());
  EXPECT_THROW(b.encode_chunk(), std::logic_error) << "a's encode is half way in the area";
  EXPECT_FALSE(a.encode_chunk());
  ContextShard c(*m.model, 8);
  c.begin_encode({}, {{0, 0, 4}}, {{5, 6, 7, 8}}, 2, area);
  EXPECT_TRUE(c.encode_chunk()) << "free again once a's encode ended";
}

TEST(Phase1Pacer, PicksTheLayersThatFitTheBudget) {
  Phase1Pacer off;
  EXPECT_EQ(off.next_layers(32), 0) << "no budget: whole chunks";
  off.measured(4, 8.0);
  EXPECT_EQ(off.next_layers(32), 0);
  Phase1Pacer p(7.5);
  EXPECT_EQ(p.next_layers(32), 1) << "nothing measured yet: one layer, to take the time";
  p.measured(1, 2.4);
  EXPECT_EQ(p.next_layers(32), 3);  // floor(7.5 / 2.4)
  p.measured(0, 50.0);              // a block from the cache: no forward, no news
  EXPECT_EQ(p.next_layers(32), 3);
  p.measured(3, 30.0);              // later chunks attend over more keys: 10 ms a layer
  EXPECT_EQ(p.next_layers(32), 1) << "at least one layer, or the encode never ends";
  p.measured(2, 0.2);
  EXPECT_EQ(p.next_layers(32), 0) << "all 32 layers fit: the whole chunk";
  EXPECT_EQ(p.next_layers(100), 75);
  p.set_budget_ms(0);
  EXPECT_EQ(p.next_layers(100), 0);
}

class EngineBatchChunks : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = with_layers(testing::test_config(false), 4);
    write_random_model(config_, 57, dir_.path());
    EngineOptions o;
    o.model = dir_.path();
    o.workers = 2;
    o.phase1_chunk_tokens = 16;
    engine_ = std::make_unique<Engine>(o);
  }
  RequestSpec request(int64_t context, int max_tokens, uint64_t seed) const {
    std::mt19937_64 rng(seed);
    RequestSpec r;
    r.prompt.context = testing::random_tokens(rng, context, config_.vocab_size);
    r.prompt.query = testing::random_tokens(rng, 4, config_.vocab_size);
    r.block_size = 64;
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    r.want_logits = true;
    return r;
  }
  uint64_t admit(EngineBatch& batch, const RequestSpec& r) {
    auto id = std::make_shared<uint64_t>(0);
    const size_t vocab = static_cast<size_t>(config_.vocab_size);
    *id = batch.admit(r, [this, id, vocab](const GeneratedToken& t) {
      testing::Outcome& o = outcomes_[*id];
      o.tokens.push_back(t.token);
      o.logits.emplace_back(t.logits, t.logits + vocab);
      return true;
    });
    return *id;
  }
  testing::TempDir dir_;
  ModelConfig config_;
  std::unique_ptr<Engine> engine_;
  std::map<uint64_t, testing::Outcome> outcomes_;
};

// A request decoding when a long one is admitted keeps getting tokens while the long one's
// phase 1 runs chunk by chunk; both give their solo runs' tokens.
TEST_F(EngineBatchChunks, RunningStreamDecodesBetweenTheChunksOfANewRequest) {
  EngineBatch batch(*engine_);
  const RequestSpec running = request(40, 30, 1);
  const RequestSpec long_one = request(200, 3, 2);  // 4 blocks of 64 (and anchors), 16 rows a chunk
  const uint64_t a = admit(batch, running);
  batch.step();  // a's phase 1 (nobody was decoding: all of it) and its first token
  ASSERT_EQ(outcomes_[a].tokens.size(), 1u);
  const uint64_t b = admit(batch, long_one);
  int first_chunk_step = -1, last_chunk_step = -1, tokens_between = 0;
  for (int step = 0; batch.running() > 0 && step < 200; ++step) {
    const auto before = batch.phase1_progress(b);
    const size_t a_tokens = outcomes_[a].tokens.size();
    for (EngineBatch::Ended& e : batch.step()) {
      EXPECT_TRUE(e.end.ok) << e.end.error;
      outcomes_[e.id].stats = e.end.stats;
    }
    if (!before) continue;  // b's phase 1 was done before this step
    const auto after = batch.phase1_progress(b);
    if (before->chunks_done == 0) first_chunk_step = step;
    if (!after) last_chunk_step = step;
    // Steps strictly between b's first and last chunk.
    if (before->chunks_done > 0 && after) tokens_between += static_cast<int>(outcomes_[a].tokens.size() - a_tokens);
    if (after) {
      EXPECT_EQ(after->chunks_done, before->chunks_done + 1) << "one chunk per step";
    }
  }
  ASSERT_GE(first_chunk_step, 0);
  ASSERT_GT(last_chunk_step, first_chunk_step + 10) << "over 200 rows in chunks of 16";
  EXPECT_GE(tokens_between, 10) << "the running stream stalled during the long encode";
  EXPECT_EQ(batch.kv_tokens_held(), 0);
  // The same tokens as alone (interleaving changes nothing either request computes, and chunked
  // phase 1 agrees with one-shot to within rounding; see Phase1Chunks).
  const testing::Outcome solo_a = testing::generate(*engine_, running);
  const testing::Outcome solo_b = testing::generate(*engine_, long_one);
  EXPECT_EQ(outcomes_[a].tokens, solo_a.tokens);
  EXPECT_EQ(outcomes_[b].tokens, solo_b.tokens);
  for (size_t i = 0; i < solo_b.logits.size() && i < outcomes_[b].logits.size(); ++i)
    EXPECT_LE(testing::max_abs_diff(outcomes_[b].logits[i], solo_b.logits[i]), 2e-5) << "step " << i;
}

TEST_F(EngineBatchChunks, CancelMidEncodeFreesItsKv) {
  EngineBatch batch(*engine_);
  const uint64_t a = admit(batch, request(40, 20, 3));
  batch.step();
  const int64_t a_kv = batch.kv_tokens_held();
  EXPECT_EQ(a_kv, 40);
  const uint64_t b = admit(batch, request(200, 5, 4));
  EXPECT_EQ(batch.kv_tokens_held(), a_kv + 200);
  for (int i = 0; i < 3; ++i) batch.step();
  const auto progress = batch.phase1_progress(b);
  ASSERT_TRUE(progress);
  EXPECT_EQ(progress->chunks_done, 3);
  EXPECT_GT(progress->rows_left, 0);
  EXPECT_TRUE(batch.cancel(b));
  bool b_ended = false;
  for (EngineBatch::Ended& e : batch.step())
    if (e.id == b) {
      b_ended = true;
      EXPECT_TRUE(e.end.ok);
      EXPECT_EQ(e.end.stats.finish_reason, "cancelled");
      EXPECT_EQ(e.end.stats.generated, 0);
    }
  EXPECT_TRUE(b_ended);
  EXPECT_EQ(batch.kv_tokens_held(), a_kv) << "the cancelled request's partial K/V is freed";
  EXPECT_FALSE(batch.phase1_progress(b));
  EXPECT_TRUE(outcomes_[b].tokens.empty());
  while (batch.running() > 0) batch.step();
  EXPECT_EQ(outcomes_[a].tokens.size(), 20u) << "the running request went on to its end";
  EXPECT_EQ(batch.kv_tokens_held(), 0);
}

// With a step share far below a layer's time, the pacer runs one layer of the chunk per step:
// the long request's phase 1 takes num_layers times the steps of whole chunks, the running
// stream gets a token at each, and both requests' tokens and logits equal those of whole chunks
// bit for bit (the same forwards, sliced).
TEST_F(EngineBatchChunks, PacedSlicesGiveTheWholeChunksResults) {
  const RequestSpec running = request(40, 60, 7);
  const RequestSpec long_one = request(150, 3, 8);
  std::map<double, std::pair<uint64_t, uint64_t>> ids;
  std::map<double, int> encode_steps;
  for (double share : {0.0, 1e-9}) {
    EngineBatch batch(*engine_, 16, share);
    const uint64_t a = admit(batch, running);
    batch.step();
    const uint64_t b = admit(batch, long_one);
    ASSERT_TRUE(batch.phase1_progress(b));
    int steps = 0;
    for (int guard = 0; batch.running() > 0 && guard < 2000; ++guard) {
      const bool encoding = batch.phase1_progress(b).has_value();
      const size_t a_tokens = outcomes_[a].tokens.size();
      for (EngineBatch::Ended& e : batch.step()) EXPECT_TRUE(e.end.ok) << e.end.error;
      if (!encoding) continue;
      ++steps;
      if (outcomes_[a].tokens.size() < static_cast<size_t>(running.max_tokens)) {
        EXPECT_EQ(outcomes_[a].tokens.size(), a_tokens + 1) << "a token each step of the encode";
      }
    }
    EXPECT_EQ(batch.running(), 0u);
    ids[share] = {a, b};
    encode_steps[share] = steps;
  }
  const int L = config_.num_layers;
  EXPECT_GE(encode_steps[1e-9], (L - 1) * (encode_steps[0.0] - 1)) << "one layer a step (the last rides along)";
  for (int r = 0; r < 2; ++r) {
    const testing::Outcome& whole = outcomes_[r == 0 ? ids[0.0].first : ids[0.0].second];
    const testing::Outcome& sliced = outcomes_[r == 0 ? ids[1e-9].first : ids[1e-9].second];
    EXPECT_EQ(sliced.tokens, whole.tokens) << "request " << r;
    ASSERT_EQ(sliced.logits.size(), whole.logits.size());
    for (size_t i = 0; i < whole.logits.size(); ++i) EXPECT_EQ(sliced.logits[i], whole.logits[i]) << "request " << r << " step " << i;
  }
}

TEST_F(EngineBatchChunks, ChunkZeroEncodesAtAdmission) {
  EngineBatch batch(*engine_, 0);
  const uint64_t a = admit(batch, request(40, 5, 5));
  EXPECT_EQ(batch.encoding(), 0u);
  EXPECT_FALSE(batch.phase1_progress(a));
  while (batch.running() > 0) batch.step();
  EXPECT_EQ(outcomes_[a].tokens, testing::generate(*engine_, request(40, 5, 5)).tokens);
}

}  // namespace
}  // namespace starattn
