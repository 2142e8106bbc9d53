// EngineService decodes concurrent requests of one engine together (continuous batching):
// requests of different prompts and lengths running together give the tokens (exactly, greedy)
// and logits (within kLogitTol) they give when run one by one through the same service; one
// cancelled in the middle leaves the others unchanged; a request beyond max_batch waits in the
// queue and starts once a slot frees.
//
// Batching is made certain, not left to timing: the first request's token callback holds the
// engine thread (a gate) until the others are submitted, so they join at the next step.
// Logits tolerance: the cpu matmul picks its kernel by the number of rows (bf16 weights: one
// matvec per row up to 2 rows, a widened-weight sgemm beyond), so a row multiplied in a batch
// rounds differently from the same row alone (tests/test_decode_batch.cpp measures it).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "runtime/errors.h"
#include "runtime/random_model.h"
#include "server/engine_service.h"
#include "server/metrics.h"
#include "tests/support/test_models.h"

namespace starattn::server {
namespace {

constexpr double kLogitTol = 2e-5;
constexpr auto kWait = std::chrono::seconds(60);  // a hung service fails the test, not ctest

// What one request streamed and how it ended; callbacks run on the engine thread.
struct Stream {
  std::mutex m;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
  RequestStats stats;
  std::string error;
  bool ended = false;
  // Runs on the engine thread before each token is recorded (gates, observations).
  std::function<void(size_t tokens_so_far)> before_token;

  StreamCallbacks callbacks() {
    StreamCallbacks cb;
    cb.on_token = [this](const TokenEvent& ev) {
      if (ev.tokens.empty()) return true;  // the text tail
      if (before_token) before_token(tokens.size());
      std::lock_guard<std::mutex> lock(m);
      tokens.insert(tokens.end(), ev.tokens.begin(), ev.tokens.end());
      logits.push_back(ev.logits);
      cv.notify_all();
      return true;
    };
    cb.on_done = [this](const RequestStats& s) {
      std::lock_guard<std::mutex> lock(m);
      stats = s;
      ended = true;
      cv.notify_all();
    };
    cb.on_error = [this](const Error& e) {
      std::lock_guard<std::mutex> lock(m);
      error = std::string(error_kind_name(e.kind())) + ": " + e.what();
      ended = true;
      cv.notify_all();
    };
    return cb;
  }
  bool wait_end() {
    std::unique_lock<std::mutex> lock(m);
    return cv.wait_for(lock, kWait, [&] { return ended; });
  }
  bool wait_tokens(size_t n) {
    std::unique_lock<std::mutex> lock(m);
    return cv.wait_for(lock, kWait, [&] { return tokens.size() >= n || ended; }) && tokens.size() >= n;
  }
};

// Holds the engine thread until opened.
class Gate {
 public:
  void hold() {
    std::unique_lock<std::mutex> lock(m_);
    held_ = true;
    cv_.notify_all();
    cv_.wait_for(lock, kWait, [&] { return open_; });
  }
  bool wait_held() {
    std::unique_lock<std::mutex> lock(m_);
    return cv_.wait_for(lock, kWait, [&] { return held_; });
  }
  void open() {
    std::lock_guard<std::mutex> lock(m_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool held_ = false, open_ = false;
};

class EngineServiceBatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = testing::test_config();
    write_random_model(config_, 37, dir_.path());
  }
  std::unique_ptr<EngineService> service(int max_batch) const {
    EngineServiceOptions so;
    so.engine.model = dir_.path();
    so.engine.threads = 1;
    so.max_batch = max_batch;
    return std::make_unique<EngineService>(so);
  }
  // Token-id prompts (no tokenizer involved), greedy, exactly max_tokens, with logits.
  RequestSpec request(int64_t context, int64_t query, int max_tokens, uint64_t seed) const {
    std::mt19937_64 rng(seed);
    RequestSpec r;
    r.prompt.context = testing::random_tokens(rng, context, config_.vocab_size);
    r.prompt.query = testing::random_tokens(rng, query, config_.vocab_size);
    r.block_size = 16;
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    r.want_logits = true;
    return r;
  }
  std::vector<RequestSpec> three() const {
    return {request(40, 3, 12, 1), request(71, 5, 7, 2), request(23, 2, 10, 3)};
  }
  // Each request alone, one after the other, through a service of its own.
  std::vector<std::unique_ptr<Stream>> one_by_one(const std::vector<RequestSpec>& requests) {
    const auto solo = service(64);
    std::vector<std::unique_ptr<Stream>> out;
    for (const RequestSpec& r : requests) {
      out.push_back(std::make_unique<Stream>());
      solo->submit(r, out.back()->callbacks());
      EXPECT_TRUE(out.back()->wait_end()) << "a request did not end";
      EXPECT_EQ(out.back()->error, "");
      EXPECT_EQ(static_cast<int>(out.back()->tokens.size()), r.max_tokens);
    }
    EXPECT_EQ(solo->batching().value().largest_batch, 1);
    return out;
  }
  static void expect_same(const Stream& solo, const Stream& batched, const std::string& what) {
    EXPECT_EQ(batched.error, "") << what;
    EXPECT_EQ(batched.tokens, solo.tokens) << what;
    ASSERT_EQ(batched.logits.size(), solo.logits.size()) << what;
    for (size_t i = 0; i < solo.logits.size(); ++i) {
      ASSERT_FALSE(solo.logits[i].empty()) << what << ": no logits streamed";
      EXPECT_LE(testing::max_abs_diff(batched.logits[i], solo.logits[i]), kLogitTol) << what << " token " << i;
    }
    EXPECT_EQ(batched.stats.finish_reason, solo.stats.finish_reason) << what;
    EXPECT_EQ(batched.stats.generated, solo.stats.generated) << what;
    EXPECT_EQ(batched.stats.context_tokens, solo.stats.context_tokens) << what;
  }

  testing::TempDir dir_;
  ModelConfig config_;
};

TEST_F(EngineServiceBatchTest, ConcurrentRequestsDecodeInOneBatchAndMatchOneByOne) {
  const std::vector<RequestSpec> reqs = three();
  const auto solo = one_by_one(reqs);
  // Different prompts, different answers: the comparison is not vacuous.
  EXPECT_NE(solo[0]->tokens, solo[1]->tokens);

  const auto svc = service(64);
  std::vector<std::unique_ptr<Stream>> got;
  for (size_t i = 0; i < reqs.size(); ++i) got.push_back(std::make_unique<Stream>());
  Gate gate;
  got[0]->before_token = [&](size_t n) {
    if (n == 0) gate.hold();
  };
  svc->submit(reqs[0], got[0]->callbacks());
  ASSERT_TRUE(gate.wait_held());
  svc->submit(reqs[1], got[1]->callbacks());
  svc->submit(reqs[2], got[2]->callbacks());
  EXPECT_EQ(svc->queued(), 2);
  gate.open();
  for (auto& s : got) ASSERT_TRUE(s->wait_end());
  for (size_t i = 0; i < reqs.size(); ++i) expect_same(*solo[i], *got[i], "request " + std::to_string(i));

  const std::optional<BatchCounters> counted = svc->batching();
  ASSERT_TRUE(counted);
  const BatchCounters c = *counted;
  EXPECT_EQ(c.largest_batch, 3);
  // Request 0's first step ran alone; the other two joined at its second. The batch of 3 ran
  // until request 1 (7 tokens) ended, then 2 until request 2 (10) did.
  EXPECT_EQ(c.batched_steps, 10);
  EXPECT_EQ(c.steps, 12);  // request 0's 12 tokens, one step each: the others rode along
  // The same counters on /metrics.
  const std::string page = Metrics().render(*svc);
  EXPECT_NE(page.find("\nstarattn_decode_steps_total 12\n"), std::string::npos) << page;
  EXPECT_NE(page.find("\nstarattn_decode_batched_steps_total 10\n"), std::string::npos) << page;
  EXPECT_NE(page.find("\nstarattn_decode_largest_batch 3\n"), std::string::npos) << page;
  EXPECT_EQ(svc->load().at(0).kv_tokens, 0);
  EXPECT_EQ(svc->load().at(0).active_requests, 0);
  for (auto& s : got) EXPECT_GE(s->stats.queue_ms, 0.0);
  EXPECT_GT(got[1]->stats.queue_ms, 0.0);  // it waited for the gate
}

TEST_F(EngineServiceBatchTest, CancellingOneMidBatchLeavesTheOthersUnchanged) {
  const std::vector<RequestSpec> reqs = three();
  const auto solo = one_by_one(reqs);

  const auto svc = service(64);
  std::vector<std::unique_ptr<Stream>> got;
  for (size_t i = 0; i < reqs.size(); ++i) got.push_back(std::make_unique<Stream>());
  Gate first, third_of_1;
  got[0]->before_token = [&](size_t n) {
    if (n == 0) first.hold();
  };
  // Request 1 is cancelled while its third token is being streamed: it ends at the next step
  // with exactly three tokens.
  got[1]->before_token = [&](size_t n) {
    if (n == 2) third_of_1.hold();
  };
  svc->submit(reqs[0], got[0]->callbacks());
  ASSERT_TRUE(first.wait_held());
  const auto handle = svc->submit(reqs[1], got[1]->callbacks());
  svc->submit(reqs[2], got[2]->callbacks());
  first.open();
  ASSERT_TRUE(third_of_1.wait_held());
  handle->cancel();
  third_of_1.open();
  for (auto& s : got) ASSERT_TRUE(s->wait_end());

  expect_same(*solo[0], *got[0], "request 0");
  expect_same(*solo[2], *got[2], "request 2");
  const Stream& cancelled = *got[1];
  EXPECT_EQ(cancelled.error, "");
  EXPECT_EQ(cancelled.stats.finish_reason, "cancelled");
  ASSERT_EQ(cancelled.tokens.size(), 3u);
  EXPECT_TRUE(std::equal(cancelled.tokens.begin(), cancelled.tokens.end(), solo[1]->tokens.begin()));
  EXPECT_EQ(svc->batching().value().largest_batch, 3);
  EXPECT_EQ(svc->load().at(0).kv_tokens, 0);
}

TEST_F(EngineServiceBatchTest, RequestBeyondMaxBatchWaitsAndStartsWhenASlotFrees) {
  // Request 1 is the shortest: when it ends, request 2 takes its slot.
  const std::vector<RequestSpec> reqs = {request(40, 3, 12, 1), request(71, 5, 4, 2), request(23, 2, 6, 3)};
  const auto solo = one_by_one(reqs);

  const auto svc = service(2);
  std::vector<std::unique_ptr<Stream>> got;
  for (size_t i = 0; i < reqs.size(); ++i) got.push_back(std::make_unique<Stream>());
  Gate gate;
  int queued_at_third = -1, running_at_third = -1;
  got[0]->before_token = [&](size_t n) {
    if (n == 0) gate.hold();
    if (n == 2) {  // requests 0 and 1 run, 2 waits for a slot
      queued_at_third = svc->queued();
      running_at_third = svc->load().at(0).active_requests;
    }
  };
  svc->submit(reqs[0], got[0]->callbacks());
  ASSERT_TRUE(gate.wait_held());
  svc->submit(reqs[1], got[1]->callbacks());
  svc->submit(reqs[2], got[2]->callbacks());
  gate.open();
  for (auto& s : got) ASSERT_TRUE(s->wait_end());

  EXPECT_EQ(queued_at_third, 1);
  EXPECT_EQ(running_at_third, 2);
  for (size_t i = 0; i < reqs.size(); ++i) expect_same(*solo[i], *got[i], "request " + std::to_string(i));
  EXPECT_EQ(svc->batching().value().largest_batch, 2);
  // Request 2 waited for request 1's end (its 4 tokens took steps 2..5 of request 0).
  EXPECT_GT(got[2]->stats.queue_ms, got[1]->stats.queue_ms);
  EXPECT_EQ(svc->batching().value().steps, 12);  // request 2 (6 tokens) ended before request 0 (12)
}

TEST_F(EngineServiceBatchTest, RefusesAMaxBatchBelowOne) {
  EngineServiceOptions so;
  so.engine.model = dir_.path();
  so.max_batch = 0;
  EXPECT_THROW(EngineService{so}, std::invalid_argument);
}

}  // namespace
}  // namespace starattn::server
