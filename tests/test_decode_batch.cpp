// Batched decode (runtime/decode_batch.h, runtime/engine_batch.h) on the cpu backend: requests
// of different context, query and output lengths decoded together give their one-by-one runs'
// tokens and logits, also when one joins and another is cancelled in the middle, when stop ids
// and stop strings end one while the others go on, and when one request's shards fail.
//
// Logits tolerance: the cpu matmul picks its kernel by the number of rows (bf16 weights: one
// matvec per row up to 2 rows, a widened-weight sgemm beyond), so a row multiplied in a batch of
// 4 rounds differently from the same row alone. Every other op is row-wise or per request. The
// difference is float32 rounding through a few layers: kLogitTol bounds it, far below the gaps
// between the top logits, so the tokens are identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <random>
#include <stdexcept>

#include "runtime/decode_batch.h"
#include "runtime/engine_batch.h"
#include "runtime/errors.h"
#include "runtime/random_model.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

constexpr double kLogitTol = 2e-5;  // measured: at most 2.1e-6

struct Shape {
  int64_t context, query;
  int max_tokens;
};

class DecodeBatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = testing::test_config(false);
    write_random_model(config_, 91, dir_.path());
    EngineOptions o;
    o.model = dir_.path();
    o.workers = 2;
    engine_ = std::make_unique<Engine>(o);
  }
  RequestSpec request(const Shape& s, uint64_t seed, AttentionMode mode = AttentionMode::star) const {
    std::mt19937_64 rng(seed);
    RequestSpec r;
    r.prompt.context = testing::random_tokens(rng, s.context, config_.vocab_size);
    r.prompt.query = testing::random_tokens(rng, s.query, config_.vocab_size);
    r.block_size = 24;
    r.mode = mode;
    r.max_tokens = s.max_tokens;
    r.ignore_eos = true;
    r.want_logits = true;
    return r;
  }
  // Runs `requests` together; `between(step, batch, ids)` may admit or cancel between steps.
  using Between = std::function<void(int step, EngineBatch& batch, std::vector<uint64_t>& ids)>;
  std::map<uint64_t, testing::Outcome> run_batch(const std::vector<RequestSpec>& requests,
                                                 std::vector<uint64_t>& ids,
                                                 const Between& between = {}) {
    EngineBatch batch(*engine_);
    for (const RequestSpec& r : requests) ids.push_back(admit(batch, r));
    for (int step = 0; batch.running() > 0; ++step) {
      if (between) between(step, batch, ids);
      for (EngineBatch::Ended& e : batch.step()) {
        EXPECT_TRUE(e.end.ok) << e.end.error;
        outcomes_[e.id].stats = e.end.stats;
      }
      EXPECT_LT(step, 200) << "the batch does not end";
      if (step >= 200) break;
    }
    return outcomes_;
  }
  uint64_t admit(EngineBatch& batch, const RequestSpec& r) {
    const size_t vocab = static_cast<size_t>(config_.vocab_size);
    auto id = std::make_shared<uint64_t>(0);
    const uint64_t got = batch.admit(r, [this, id, vocab](const GeneratedToken& t) {
      testing::Outcome& o = outcomes_[*id];
      o.tokens.push_back(t.token);
      if (t.logits) o.logits.emplace_back(t.logits, t.logits + vocab);
      return true;
    });
    *id = got;
    return got;
  }
  static void expect_same(const testing::Outcome& solo, const testing::Outcome& batched,
                          const std::string& what) {
    EXPECT_EQ(batched.tokens, solo.tokens) << what;
    ASSERT_EQ(batched.logits.size(), solo.logits.size()) << what;
    for (size_t i = 0; i < solo.logits.size(); ++i)
      EXPECT_LE(testing::max_abs_diff(batched.logits[i], solo.logits[i]), kLogitTol)
          << what << " step " << i;
    EXPECT_EQ(batched.stats.finish_reason, solo.stats.finish_reason) << what;
    EXPECT_EQ(batched.stats.generated, solo.stats.generated) << what;
  }
  void expect_batch_equals_solo(AttentionMode mode) {
    const std::vector<Shape> shapes = {{40, 3, 6}, {95, 7, 11}, {23, 1, 9}, {61, 5, 3}};
    std::vector<RequestSpec> reqs;
    for (size_t i = 0; i < shapes.size(); ++i) reqs.push_back(request(shapes[i], 10 + i, mode));
    std::vector<uint64_t> ids;
    const auto batched = run_batch(reqs, ids);
    for (size_t i = 0; i < reqs.size(); ++i) {
      const testing::Outcome solo = testing::generate(*engine_, reqs[i]);
      ASSERT_EQ(static_cast<int>(solo.tokens.size()), shapes[i].max_tokens);
      expect_same(solo, batched.at(ids[i]), "request " + std::to_string(i));
    }
  }

  testing::TempDir dir_;
  ModelConfig config_;
  std::unique_ptr<Engine> engine_;
  std::map<uint64_t, testing::Outcome> outcomes_;
};

TEST_F(DecodeBatchTest, StarBatchEqualsOneByOne) { expect_batch_equals_solo(AttentionMode::star); }

TEST_F(DecodeBatchTest, FullBatchEqualsOneByOne) { expect_batch_equals_solo(AttentionMode::full); }

// The cpu backend with a count of the calls a decode step makes (registered as "counting-cpu").
class CountingBackend : public Backend {
 public:
  explicit CountingBackend(int threads) : be_(make_backend("cpu", 0, threads)) {}
  static inline std::map<std::string, int> calls;  // op -> calls since the last clear()

  std::string name() const override { return "counting-cpu"; }
  DType activation_dtype() const override { return be_->activation_dtype(); }
  DType weight_dtype() const override { return be_->weight_dtype(); }
  Buffer alloc(int64_t rows, int64_t cols, DType dtype) override { return be_->alloc(rows, cols, dtype); }
  void free_memory(Tensor t) override { be_->free_memory(t); }
  int64_t free_bytes() const override { return be_->free_bytes(); }
  void upload(const float* host, Tensor dst) override { be_->upload(host, dst); }
  void download(const Tensor& src, float* host) override {
    ++calls["download"];
    be_->download(src, host);
  }
  void copy(const Tensor& src, Tensor dst) override { ++calls["copy"]; be_->copy(src, dst); }
  void copy_batch(const std::vector<CopyItem>& items) override { ++calls["copy_batch"]; be_->copy_batch(items); }
  void embedding(const int32_t* ids, const Tensor& table, Tensor out) override { be_->embedding(ids, table, out); }
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor out) override { be_->rmsnorm(x, w, eps, out); }
  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor out) override {
    be_->matmul(x, w, bias, out);
  }
  void rope(const RopeArgs& args) override { be_->rope(args); }
  void attention(const AttentionArgs& a) override { ++calls["attention"]; be_->attention(a); }
  void attention_batch(const std::vector<AttentionArgs>& items) override {
    ++calls["attention_batch"];
    be_->attention_batch(items);
  }
  void merge_partials(const std::vector<Partial>& parts, Tensor o, Tensor lse) override {
    ++calls["merge_partials"];
    be_->merge_partials(parts, o, lse);
  }
  void merge_partials_batch(const std::vector<MergeItem>& items) override {
    ++calls["merge_partials_batch"];
    be_->merge_partials_batch(items);
  }
  void swiglu(const Tensor& g, const Tensor& u, Tensor out) override { be_->swiglu(g, u, out); }
  void add(Tensor x, const Tensor& y) override { be_->add(x, y); }
  void add_rmsnorm(Tensor x, const Tensor& y, const Tensor& w, float eps, Tensor out) override {
    be_->add_rmsnorm(x, y, w, eps, out);
  }
  int32_t sample(const Tensor& row, const SamplingParams& p, uint64_t step) override {
    ++calls["sample"];
    return be_->sample(row, p, step);
  }
  void argmax_rows(const Tensor& logits, std::vector<int32_t>& out) override {
    ++calls["argmax_rows"];
    be_->argmax_rows(logits, out);
  }
  void synchronize() override { be_->synchronize(); }

 private:
  std::unique_ptr<Backend> be_;
};

// A batched decode step costs the same handful of attention-side calls per layer whatever the
// number of requests (QuerySession::attend_layer): one copy_batch (every K/V append), two
// attention_batch (the own causal parts; the in-process shards of all requests), one
// merge_partials_batch; no per-request attention, merge or copy. Its token picks take one
// download (the requests that want their logits on the host) and one argmax_rows (the greedy
// ones that do not), no sample() per request. Phase 1 runs at admission (chunk 0), so the
// counted steps are pure decode.
TEST_F(DecodeBatchTest, ADecodeStepGroupsEveryRequestsAttentionIntoOneCallPerKindAndLayer) {
  static const bool registered = register_backend(
      "counting-cpu", [](int, int threads) { return std::make_unique<CountingBackend>(threads); });
  (void)registered;  // false when an earlier run in this process registered it
  EngineOptions o;
  o.model = dir_.path();
  o.workers = 2;
  o.device = "counting-cpu";
  Engine engine(o);
  const int layers = config_.num_layers;
  EngineBatch batch(engine, 0);
  std::vector<uint64_t> ids;
  for (uint64_t seed : {31, 32, 33, 34}) {
    RequestSpec r = request({40 + static_cast<int64_t>(seed), 3, 8}, seed);
    r.want_logits = seed % 2 == 0;
    ids.push_back(batch.admit(r, [](const GeneratedToken&) { return true; }));
  }
  for (int step = 0; step < 6 && batch.running() > 0; ++step) {
    CountingBackend::calls.clear();
    for (EngineBatch::Ended& e : batch.step()) EXPECT_TRUE(e.end.ok) << e.end.error;
    if (step < 2) continue;  // the queries' prefill steps are counted the same way, but skip them
    auto& c = CountingBackend::calls;
    SCOPED_TRACE("step " + std::to_string(step) + ", 4 requests decoding");
    EXPECT_EQ(c["copy_batch"], layers);
    EXPECT_EQ(c["attention_batch"], 2 * layers);
    EXPECT_EQ(c["merge_partials_batch"], layers);
    EXPECT_EQ(c["attention"], 0);
    EXPECT_EQ(c["merge_partials"], 0);
    EXPECT_EQ(c["copy"], 0);
    EXPECT_EQ(c["download"], 1);
    EXPECT_EQ(c["argmax_rows"], 1);
    EXPECT_EQ(c["sample"], 0);
  }
  EXPECT_EQ(batch.running(), 4u);
}

// The step fetches every request's logits at once (one host copy, one batched argmax) and each
// request picks from that as it would alone: greedy without logits (argmax_rows), greedy with
// logprobs, seeded temperature / top-p, and top-k with a bias, a penalty and logprobs (all from
// the host copy). Tokens equal the solo runs', logprobs within the batch's logit rounding.
TEST_F(DecodeBatchTest, TokenPicksFromTheStepsFetchedLogitsEqualEachRequestsOwn) {
  std::vector<RequestSpec> reqs;
  for (int i = 0; i < 4; ++i) {
    RequestSpec r = request({35 + 17 * i, 2 + i, 10}, 60 + i);
    r.want_logits = false;
    reqs.push_back(r);
  }
  reqs[1].logits.top_logprobs = 3;
  reqs[2].sampling.temperature = 0.8f;
  reqs[2].sampling.top_p = 0.9f;
  reqs[2].sampling.seed = 7;
  reqs[3].sampling.temperature = 1.0f;
  reqs[3].sampling.top_k = 5;
  reqs[3].sampling.seed = 11;
  reqs[3].logits.logit_bias = {{65, 2.0f}, {66, -1.5f}};
  reqs[3].logits.presence_penalty = 0.5f;
  reqs[3].logits.top_logprobs = 0;
  struct Run {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
  };
  auto record = [](Run& run) {
    return [&run](const GeneratedToken& t) {
      run.tokens.push_back(t.token);
      if (t.logprob) run.logprobs.push_back(t.logprob->logprob);
      return true;
    };
  };
  std::vector<Run> batched(reqs.size()), solo(reqs.size());
  {
    EngineBatch batch(*engine_);
    for (size_t i = 0; i < reqs.size(); ++i) batch.admit(reqs[i], record(batched[i]));
    for (int step = 0; batch.running() > 0 && step < 50; ++step)
      for (EngineBatch::Ended& e : batch.step()) EXPECT_TRUE(e.end.ok) << e.end.error;
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    engine_->generate(reqs[i], record(solo[i]));
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_EQ(solo[i].tokens.size(), 10u);
    EXPECT_EQ(batched[i].tokens, solo[i].tokens);
    ASSERT_EQ(batched[i].logprobs.size(), solo[i].logprobs.size());
    EXPECT_EQ(solo[i].logprobs.empty(), reqs[i].logits.top_logprobs < 0);
    for (size_t k = 0; k < solo[i].logprobs.size(); ++k) EXPECT_NEAR(batched[i].logprobs[k], solo[i].logprobs[k], 1e-4);
  }
  // The seeded requests really sampled: not the greedy run's tokens.
  for (size_t i : {size_t{2}, size_t{3}}) {
    RequestSpec greedy = reqs[i];
    greedy.sampling = SamplingParams{};
    greedy.logits = LogitsProcessing{};
    Run g;
    engine_->generate(greedy, record(g));
    EXPECT_NE(g.tokens, solo[i].tokens) << "request " << i << " drew the greedy tokens";
  }
}

TEST_F(DecodeBatchTest, JoinAndCancelInTheMiddle) {
  const std::vector<RequestSpec> first = {request({50, 4, 10}, 1), request({30, 2, 10}, 2),
                                          request({77, 6, 10}, 3)};
  const RequestSpec joiner = request({64, 3, 7}, 4);
  std::vector<uint64_t> ids;
  const auto batched = run_batch(first, ids, [&](int step, EngineBatch& batch, std::vector<uint64_t>& live) {
    if (step == 3) live.push_back(admit(batch, joiner));  // joins with its query prefill
    if (step == 5) {
      EXPECT_TRUE(batch.cancel(live[1]));
    }
  });
  ASSERT_EQ(ids.size(), 4u);
  for (size_t i : {size_t{0}, size_t{2}})
    expect_same(testing::generate(*engine_, first[i]), batched.at(ids[i]), "survivor " + std::to_string(i));
  expect_same(testing::generate(*engine_, joiner), batched.at(ids[3]), "joiner");
  // The cancelled one: its solo run's first tokens, then "cancelled".
  const testing::Outcome solo = testing::generate(*engine_, first[1]);
  const testing::Outcome& cancelled = batched.at(ids[1]);
  EXPECT_EQ(cancelled.stats.finish_reason, "cancelled");
  ASSERT_EQ(cancelled.tokens.size(), 5u);  // steps 0..4 produced a token each
  EXPECT_TRUE(std::equal(cancelled.tokens.begin(), cancelled.tokens.end(), solo.tokens.begin()));
}

TEST_F(DecodeBatchTest, StopIdsAndStopStringsEndOneWhileOthersContinue) {
  RequestSpec by_id = request({45, 3, 12}, 21);
  RequestSpec by_text = request({70, 4, 12}, 22);
  const RequestSpec free = request({33, 5, 12}, 23);
  const testing::Outcome free_id = testing::generate(*engine_, by_id);
  by_id.stop_ids = {free_id.tokens[4]};
  by_id.ignore_eos = false;
  // A stop string from the middle of the free run's text.
  std::string text;
  RequestSpec probe = by_text;
  engine_->generate(probe, [&](const GeneratedToken& t) { return text += t.text, true; });
  ASSERT_GE(text.size(), 6u) << "the random model should produce some bytes of text";
  by_text.stop_strings = {text.substr(text.size() / 2, 2)};

  std::vector<uint64_t> ids;
  const auto batched = run_batch({by_id, by_text, free}, ids);
  const testing::Outcome solo_id = testing::generate(*engine_, by_id);
  const testing::Outcome solo_text = testing::generate(*engine_, by_text);
  EXPECT_EQ(solo_id.stats.finish_reason, "stop");
  EXPECT_LT(solo_id.tokens.size(), 5u);
  EXPECT_EQ(solo_text.stats.finish_reason, "stop");
  EXPECT_LT(solo_text.stats.generated, 12);
  expect_same(solo_id, batched.at(ids[0]), "stop id");
  expect_same(solo_text, batched.at(ids[1]), "stop string");
  EXPECT_EQ(batched.at(ids[1]).stats.text_tail, solo_text.stats.text_tail);
  expect_same(testing::generate(*engine_, free), batched.at(ids[2]), "the one that goes on");
}

TEST_F(DecodeBatchTest, RefusedRequestDoesNotJoinAndTheBatchGoesOn) {
  EngineBatch batch(*engine_);
  const RequestSpec good = request({40, 3, 4}, 31);
  const uint64_t id = admit(batch, good);
  RequestSpec bad = request({40, 3, 4}, 32);
  bad.prompt.query.clear();
  try {
    batch.admit(bad, [](const GeneratedToken&) { return true; });
    ADD_FAILURE() << "an empty query was admitted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::invalid_request) << e.what();
  }
  EXPECT_EQ(batch.running(), 1u);
  while (batch.running() > 0)
    for (EngineBatch::Ended& e : batch.step()) outcomes_[e.id].stats = e.end.stats;
  expect_same(testing::generate(*engine_, good), outcomes_.at(id), "the admitted one");
}

// Shards that hold no context (a request whose prompt is all query) and, when `fail_after` is
// set, throw like a failed worker on that attend call.
class QueryOnlyShards : public ContextShards {
 public:
  explicit QueryOnlyShards(int fail_after = -1) : fail_after_(fail_after) {}
  void attend(int layer, const Tensor&, std::vector<Partial>&) override {
    if (fail_after_ >= 0 && calls_++ == fail_after_)
      throw Error(ErrorKind::worker_failed, "worker w2 failed at layer " + std::to_string(layer));
  }

 private:
  int fail_after_;
  int calls_ = 0;
};

TEST(DecodeBatchFailure, FailedShardsEndTheirRequestAloneAndTheOthersGoOn) {
  const ModelConfig config = testing::test_config(true);
  const MemoryWeights weights(random_weights(config, 5));
  const auto backend = make_backend("cpu");
  const Transformer model(config, weights, *backend);
  std::mt19937_64 rng(8);
  const auto spec = [&](int64_t query, int max_tokens) {
    GenerationSpec s;
    s.query = testing::random_tokens(rng, query, config.vocab_size);
    s.max_tokens = max_tokens;
    s.want_logits = true;
    return s;
  };
  const std::vector<GenerationSpec> specs = {spec(4, 8), spec(6, 8), spec(2, 8)};
  // Solo runs.
  std::vector<std::vector<int32_t>> solo(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    QueryOnlyShards shards;
    Generation g(model, shards, 0, specs[i], nullptr);
    GeneratedToken t;
    while (g.step(t)) solo[i].push_back(t.token);
    ASSERT_EQ(solo[i].size(), 8u);
  }
  // Together; request 1's shards fail in the third step's second layer.
  std::vector<QueryOnlyShards> shards = {QueryOnlyShards(), QueryOnlyShards(2 * config.num_layers + 1),
                                         QueryOnlyShards()};
  std::vector<std::unique_ptr<Generation>> gens;
  DecodeBatch batch(model);
  for (size_t i = 0; i < specs.size(); ++i) {
    gens.push_back(std::make_unique<Generation>(model, shards[i], 0, specs[i], nullptr));
    batch.add(i, *gens.back());
  }
  std::vector<std::vector<int32_t>> got(specs.size());
  int failures = 0;
  while (!batch.empty()) {
    for (const DecodeBatch::Result& r : batch.step()) {
      if (r.produced) got[r.id].push_back(r.token.token);
      if (!r.error) continue;
      ++failures;
      EXPECT_EQ(r.id, 1u);
      try {
        std::rethrow_exception(r.error);
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::worker_failed);
        EXPECT_NE(std::string(e.what()).find("w2 failed at layer 1"), std::string::npos) << e.what();
      }
      EXPECT_FALSE(batch.contains(1));
    }
  }
  EXPECT_EQ(failures, 1);
  EXPECT_EQ(got[0], solo[0]);
  EXPECT_EQ(got[2], solo[2]);
  ASSERT_EQ(got[1].size(), 2u);  // the two steps before the failure
  EXPECT_TRUE(std::equal(got[1].begin(), got[1].end(), solo[1].begin()));
}

}  // namespace
}  // namespace starattn
