// The generation core (runtime/generation.h) through the Engine on the cpu backend: stop strings
// applied in the one place, logit bias, presence and frequency penalties, and logprobs checked
// against the step's own logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "runtime/engine.h"
#include "runtime/errors.h"
#include "runtime/random_model.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

class GenerationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = testing::test_config(false);
    write_random_model(config_, 77, dir_.path());
    std::mt19937_64 rng(3);
    context_ = testing::random_tokens(rng, 80, config_.vocab_size);
    query_ = testing::random_tokens(rng, 5, config_.vocab_size);
    EngineOptions o;
    o.model = dir_.path();
    o.workers = 2;
    engine_ = std::make_unique<Engine>(o);
  }
  RequestSpec request(int max_tokens) const {
    RequestSpec r;
    r.prompt.context = context_;
    r.prompt.query = query_;
    r.block_size = 32;
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    return r;
  }
  struct Run {
    std::vector<GeneratedToken> steps;
    std::vector<std::vector<float>> logits;
    std::string text;
    RequestStats stats;
  };
  Run run(RequestSpec r, bool want_logits = false) {
    Run out;
    r.want_logits = want_logits;
    out.stats = engine_->generate(r, [&](const GeneratedToken& t) {
      out.steps.push_back(t);
      out.text += t.text;
      if (t.logits) out.logits.emplace_back(t.logits, t.logits + config_.vocab_size);
      return true;
    });
    out.text += out.stats.text_tail;
    return out;
  }
  testing::TempDir dir_;
  ModelConfig config_;
  std::vector<int32_t> context_, query_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(GenerationTest, StopStringEndsTheTextBeforeItsFirstMatch) {
  const Run free = run(request(24));
  ASSERT_GE(free.text.size(), 6u) << "the random model should produce some bytes of text";
  // A stop string taken from the middle of the free run's text.
  const std::string stop = free.text.substr(free.text.size() / 2, 2);
  RequestSpec r = request(24);
  r.stop_strings = {stop};
  const Run stopped = run(r);
  const size_t at = free.text.find(stop);
  EXPECT_EQ(stopped.text, free.text.substr(0, at));
  EXPECT_EQ(stopped.stats.finish_reason, "stop");
  EXPECT_LT(stopped.stats.generated, free.stats.generated);
  // The tokens before the stop are the free run's.
  for (size_t i = 0; i < stopped.steps.size(); ++i)
    EXPECT_EQ(stopped.steps[i].token, free.steps[i].token) << i;
}

TEST_F(GenerationTest, LogitBiasSteersTheGreedyPick) {
  const Run base = run(request(4));
  ASSERT_EQ(base.steps.size(), 4u);
  RequestSpec r = request(4);
  r.logits.logit_bias = {{base.steps[0].token, -100.0f}};
  const Run biased = run(r);
  EXPECT_NE(biased.steps[0].token, base.steps[0].token);
  // A huge positive bias makes a chosen token win every step.
  const int32_t forced = (base.steps[0].token + 17) % config_.vocab_size;
  r.logits.logit_bias = {{forced, 1000.0f}};
  for (const auto& t : run(r).steps) EXPECT_EQ(t.token, forced);
  r.logits.logit_bias = {{config_.vocab_size, 1.0f}};
  EXPECT_THROW(run(r), std::invalid_argument);
}

TEST_F(GenerationTest, PresencePenaltyForbidsRepeats) {
  RequestSpec r = request(20);
  r.logits.presence_penalty = 1e4f;
  const Run penalised = run(r);
  std::set<int32_t> seen;
  for (const auto& t : penalised.steps) EXPECT_TRUE(seen.insert(t.token).second) << t.token;
  // The frequency penalty grows with the count: a token forced by a bias still wins while its
  // bias exceeds count x penalty, then loses.
  r = request(6);
  const int32_t forced = 3;
  r.logits.logit_bias = {{forced, 60.0f}};
  r.logits.frequency_penalty = 25.0f;
  const Run freq = run(r);
  int count = 0;
  for (const auto& t : freq.steps) count += t.token == forced;
  EXPECT_GE(count, 1);
  EXPECT_LE(count, 3);  // 60 - 25 n stays ahead of the random logits only for small n
}

TEST_F(GenerationTest, LogprobsAreTheLogSoftmaxOfTheStepsLogits) {
  RequestSpec r = request(5);
  r.logits.top_logprobs = 4;
  const Run out = run(r, true);
  ASSERT_EQ(out.steps.size(), 5u);
  ASSERT_EQ(out.logits.size(), 5u);
  for (size_t i = 0; i < out.steps.size(); ++i) {
    const auto& lp = out.steps[i].logprob;
    ASSERT_TRUE(lp.has_value());
    const std::vector<float>& l = out.logits[i];
    double m = -1e300, z = 0;
    for (float v : l) m = std::max(m, static_cast<double>(v));
    for (float v : l) z += std::exp(v - m);
    const double lse = m + std::log(z);
    EXPECT_NEAR(lp->logprob, l[static_cast<size_t>(out.steps[i].token)] - lse, 1e-4);
    ASSERT_EQ(lp->top.size(), 4u);
    EXPECT_EQ(lp->top[0].first, out.steps[i].token);  // greedy: the chosen token is the likeliest
    for (size_t k = 1; k < lp->top.size(); ++k) EXPECT_GE(lp->top[k - 1].second, lp->top[k].second);
    EXPECT_LT(lp->logprob, 0.0f);
  }
  // Asking for logprobs does not change the tokens.
  const Run plain = run(request(5));
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(plain.steps[i].token, out.steps[i].token);
}

}  // namespace
}  // namespace starattn
