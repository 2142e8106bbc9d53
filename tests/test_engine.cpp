// The engine end to end on the CPU backend: star vs full, the decode loop, sampling, stops and
// the errors a caller can cause.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "runtime/engine.h"
#include "runtime/errors.h"
#include "runtime/random_model.h"
#include "tests/support/reference_model.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using testing::Outcome;
using testing::generate;

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = testing::test_config(true);
    write_random_model(config_, 2024, dir_.path());
    rng_.seed(7);
    context_ = testing::random_tokens(rng_, 96, config_.vocab_size);
    query_ = testing::random_tokens(rng_, 7, config_.vocab_size);
  }
  Engine make(int workers) {
    EngineOptions o;
    o.model = dir_.path();
    o.workers = workers;
    return Engine(o);
  }
  RequestSpec request(AttentionMode mode, int64_t block, int64_t anchor, int max_tokens) {
    RequestSpec r;
    r.prompt.context = context_;
    r.prompt.query = query_;
    r.mode = mode;
    r.block_size = block;
    r.anchor_size = anchor;
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    return r;
  }
  testing::TempDir dir_;
  ModelConfig config_;
  std::mt19937_64 rng_;
  std::vector<int32_t> context_, query_;
};

TEST_F(EngineTest, StarWithBlockCoveringContextEqualsFull) {
  for (int workers : {1, 3}) {
    Engine engine = make(workers);
    const Outcome full = generate(engine, request(AttentionMode::full, 0, 0, 12));
    for (int64_t block : {96, 100, 500}) {
      const Outcome star = generate(engine, request(AttentionMode::star, block, 0, 12));
      ASSERT_EQ(star.tokens, full.tokens) << "block " << block << " workers " << workers;
      ASSERT_EQ(star.logits.size(), full.logits.size());
      for (size_t s = 0; s < star.logits.size(); ++s)
        EXPECT_LE(testing::max_abs_diff(star.logits[s], full.logits[s]), 1e-4)
            << "step " << s << " block " << block;
      EXPECT_EQ(star.stats.blocks, 1);
    }
  }
}

TEST_F(EngineTest, FullModeEqualsDenseCausalReference) {
  Engine engine = make(2);
  const Outcome full = generate(engine, request(AttentionMode::full, 0, 0, 5));
  const MemoryWeights weights(random_weights(config_, 2024));
  std::vector<int32_t> seq = context_;
  seq.insert(seq.end(), query_.begin(), query_.end());
  for (size_t step = 0; step < full.tokens.size(); ++step) {
    std::vector<int32_t> pos(seq.size());
    for (size_t i = 0; i < seq.size(); ++i) pos[i] = static_cast<int32_t>(i);
    const auto ref = testing::reference_forward(
        config_, weights, seq, pos, testing::causal_mask(static_cast<int64_t>(seq.size())));
    const auto& want = ref.logits.back();
    EXPECT_LT(testing::max_abs_diff(full.logits[step].data(), want.data(), want.size()),
              2e-4 * std::max(1.0, testing::max_abs(want)))
        << "step " << step;
    seq.push_back(full.tokens[step]);
  }
}

TEST_F(EngineTest, DecodeLoopStarDiffersFromFullForSmallBlocks) {
  Engine engine = make(4);
  const Outcome full = generate(engine, request(AttentionMode::full, 0, 0, 8));
  const Outcome star = generate(engine, request(AttentionMode::star, 12, 0, 8));
  EXPECT_EQ(star.stats.blocks, 8);
  EXPECT_EQ(star.stats.workers_used, 4);
  // Blockwise-local phase 1 changes the context K/V, so the distributions must move.
  EXPECT_GT(testing::max_abs_diff(star.logits[0], full.logits[0]), 1e-3);
  // ... yet it is the same computation whichever worker count holds the blocks.
  Engine one = make(1);
  const Outcome star1 = generate(one, request(AttentionMode::star, 12, 0, 8));
  EXPECT_EQ(star1.tokens, star.tokens);
  EXPECT_LE(testing::max_abs_diff(star1.logits[0], star.logits[0]), 1e-4);
}

TEST_F(EngineTest, SeededSamplingIsReproducibleAndSeedsDiffer) {
  Engine engine = make(2);
  auto req = request(AttentionMode::star, 32, 16, 24);
  req.sampling.temperature = 1.5f;
  req.sampling.top_k = 50;
  req.sampling.top_p = 0.95f;
  req.sampling.seed = 1;
  const Outcome a = generate(engine, req);
  const Outcome b = generate(engine, req);
  EXPECT_EQ(a.tokens, b.tokens);
  req.sampling.seed = 2;
  const Outcome c = generate(engine, req);
  EXPECT_NE(a.tokens, c.tokens);
}

TEST_F(EngineTest, StopsAtEosAndMaxTokensAndCancel) {
  Engine engine = make(2);
  auto req = request(AttentionMode::star, 32, 0, 6);
  const Outcome greedy = generate(engine, req);
  ASSERT_EQ(greedy.tokens.size(), 6u);
  EXPECT_EQ(greedy.stats.finish_reason, "length");
  // Declaring the third greedy token a stop id ends the answer just before it.
  req.stop_ids = {greedy.tokens[2]};
  req.ignore_eos = false;
  const Outcome stopped = generate(engine, req);
  EXPECT_EQ(stopped.stats.finish_reason, "stop");
  const auto first = std::find(greedy.tokens.begin(), greedy.tokens.end(), greedy.tokens[2]);
  EXPECT_EQ(stopped.tokens,
            std::vector<int32_t>(greedy.tokens.begin(), first));
  int seen = 0;
  const RequestStats s = engine.generate(request(AttentionMode::star, 32, 0, 6),
                                          [&](int32_t, const float*) { return ++seen < 2; });
  EXPECT_EQ(seen, 2);
  EXPECT_EQ(s.finish_reason, "cancelled");
}

TEST_F(EngineTest, BadRequestsAreClearErrors) {
  Engine engine = make(2);
  auto expect_error = [&](RequestSpec r, const std::string& needle) {
    try {
      engine.generate(r, [](int32_t, const float*) { return true; });
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(request(AttentionMode::star, 16, 17, 4), "anchor size");
  auto r = request(AttentionMode::star, 16, 0, 4);
  r.prompt.query.clear();
  expect_error(r, "query is empty");
  r = request(AttentionMode::star, 16, 0, 4);
  r.prompt.context[5] = config_.vocab_size;
  expect_error(r, "outside the vocabulary");
  // And the engine still answers afterwards.
  EXPECT_EQ(generate(engine, request(AttentionMode::star, 16, 0, 3)).tokens.size(), 3u);
}

TEST_F(EngineTest, ContextLargerThanCapacityFailsSayingWhatFits) {
  EngineOptions o;
  o.model = dir_.path();
  o.workers = 2;
  o.kv_memory_fraction = 1e-12;  // leaves room for almost nothing
  Engine engine(o);
  try {
    engine.generate(request(AttentionMode::star, 16, 0, 3), [](int32_t, const float*) { return true; });
    FAIL() << "expected a capacity error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::capacity);
    EXPECT_NE(std::string(e.what()).find("does not fit"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("context tokens fit on the engine's 2 in-process"),
              std::string::npos) << e.what();
  }
}

TEST_F(EngineTest, BeyondTheModelsPositionsIsACapacityErrorUnlessAllowed) {
  Engine engine = make(2);
  auto r = request(AttentionMode::star, 32, 0, config_.max_position_embeddings);
  try {
    engine.generate(r, [](int32_t, const float*) { return true; });
    FAIL() << "expected a positions error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::capacity);
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings"), std::string::npos) << e.what();
  }
  r.max_tokens = 2;
  r.beyond_positions = true;
  EXPECT_EQ(generate(engine, r).tokens.size(), 2u);
}

}  // namespace
}  // namespace starattn
