// Phase 2 of a batched decode step through the data plane (actors/exchange_batch.h): several
// requests with contexts of different lengths, their shards on two context workers
// (ShardServers), decoded together in one DecodeBatch whose ShardLinks share one
// ExchangeBatcher. Checked against each request decoded alone (ShardLinks without a batcher:
// one message per shard, the pre-batching path):
//   - tokens equal, logits within kLogitTol (see below), over the staged UCX path and over a
//     mix of in-process and staged links;
//   - one batched message and one attention call per worker per layer carried every running
//     request: the servers' batches and items, and the batcher's counts, are exact;
//   - a worker that refuses one request's item fails that request only; a worker that dies
//     fails the requests with a shard on it only; the others finish with their solo tokens.
// Also the runtime op alone: ContextShard::attend_many equals each shard's attend() bit for bit.
//
// Logits tolerance: as in test_decode_batch, the cpu matmul picks its kernel by row count, so a
// row computed in a batch of several rounds differently from the same row alone (the attention
// itself is bit-identical: the cpu attention_batch is a loop over the same kernel).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "actors/data_plane.h"
#include "actors/exchange_batch.h"
#include "actors/messages.h"
#include "actors/model_host.h"
#include "runtime/decode_batch.h"
#include "runtime/generation.h"
#include "runtime/random_model.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using actors::ExchangeBatcher;
using actors::ModelHost;
using actors::ShardLinks;
using actors::ShardServer;
using transport::DataPath;

constexpr double kLogitTol = 2e-5;
constexpr int kWorkers = 2;
constexpr int64_t kBlock = 24, kAnchor = 12;

struct Req {
  uint64_t id = 0;
  std::vector<int32_t> context, query;
  int max_tokens = 0;
  std::vector<bool> on_worker;  // whether worker w holds a shard of it
};

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
  std::string error;
};

class BatchedExchange : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = testing::test_config(false);
    write_random_model(config_, 17, dir_.path());
    host_ = std::make_unique<ModelHost>(dir_.path(), "cpu", 0, 2);
    health_ = std::make_shared<actors::WorkerHealth>();
    for (int w = 0; w < kWorkers; ++w)
      servers_.push_back(std::make_unique<ShardServer>(*host_, 2, "w" + std::to_string(w)));
    ucx_ = std::make_unique<transport::UcxWorker>();
    ucx_->listen(actors::kAmAttendReply);
    ucx_->listen(actors::kAmAttendBatchReply);
    for (int w = 0; w < kWorkers; ++w)
      eps_.push_back(ucx_->connect(servers_[static_cast<size_t>(w)]->address(), "w" + std::to_string(w),
                                   transport::UcxWorker::PeerFailure::control_plane));
    // Contexts of different lengths; the last one is a single block, held by worker 0 only.
    std::mt19937_64 rng(5);
    const std::vector<std::pair<int64_t, int>> shapes = {{100, 7}, {61, 9}, {20, 5}};
    for (size_t i = 0; i < shapes.size(); ++i) {
      Req r;
      r.id = 100 + i;
      r.context = testing::random_tokens(rng, shapes[i].first, config_.vocab_size);
      r.query = testing::random_tokens(rng, 2 + static_cast<int64_t>(i), config_.vocab_size);
      r.max_tokens = shapes[i].second;
      place(r);
      reqs_.push_back(r);
    }
  }

  void TearDown() override {
    for (auto ep : eps_) ucx_->disconnect(ep);
  }

  // Blocks of kBlock tokens behind a kAnchor-token anchor; block i goes to worker i % 2.
  void place(Req& r) {
    const std::vector<int32_t> anchor(r.context.begin(), r.context.begin() + kAnchor);
    r.on_worker.assign(kWorkers, false);
    std::vector<std::vector<BlockSpec>> blocks(kWorkers);
    std::vector<std::vector<std::vector<int32_t>>> tokens(kWorkers);
    const int64_t n = static_cast<int64_t>(r.context.size());
    for (int64_t start = 0, i = 0; start < n; start += kBlock, ++i) {
      const int64_t len = std::min(kBlock, n - start);
      const size_t w = static_cast<size_t>(i % kWorkers);
      blocks[w].push_back({static_cast<int>(i), start, len});
      tokens[w].emplace_back(r.context.begin() + start, r.context.begin() + start + len);
    }
    for (size_t w = 0; w < kWorkers; ++w) {
      if (blocks[w].empty()) continue;
      int64_t held = 0;
      for (const auto& b : blocks[w]) held += b.length;
      auto shard = std::make_shared<ContextShard>(host_->model(), held);
      shard->encode(anchor, blocks[w], tokens[w]);
      servers_[w]->add(r.id, shard);
      r.on_worker[w] = true;
    }
  }

  // The request's links: worker 0 in-process or staged, worker 1 staged.
  std::unique_ptr<ShardLinks> links(const Req& r, bool worker0_in_process, ExchangeBatcher* batcher) {
    std::vector<ShardLinks::Link> ls;
    for (int w = 0; w < kWorkers; ++w) {
      if (!r.on_worker[static_cast<size_t>(w)]) continue;
      ShardLinks::Link l;
      l.worker_id = static_cast<uint64_t>(w + 1);
      l.name = "w" + std::to_string(w);
      if (w == 0 && worker0_in_process) {
        l.path = DataPath::in_process;
        l.local = ShardServer::find_in_process(servers_[0]->address(), r.id, &host_->backend());
        EXPECT_NE(l.local, nullptr);
      } else {
        l.path = DataPath::ucx;
        l.ep = eps_[static_cast<size_t>(w)];
      }
      ls.push_back(std::move(l));
    }
    return std::make_unique<ShardLinks>(*ucx_, host_->model(), r.id, std::move(ls), health_,
                                        std::chrono::seconds(20), static_cast<int64_t>(r.query.size()),
                                        nullptr, batcher);
  }

  GenerationSpec spec(const Req& r) const {
    GenerationSpec s;
    s.query = r.query;
    s.max_tokens = r.max_tokens;
    s.want_logits = true;
    return s;
  }

  Outcome solo(const Req& r, bool worker0_in_process) {
    auto l = links(r, worker0_in_process, nullptr);
    Generation g(host_->model(), *l, static_cast<int64_t>(r.context.size()), spec(r), nullptr);
    Outcome o;
    GeneratedToken t;
    const size_t vocab = static_cast<size_t>(config_.vocab_size);
    while (g.step(t)) {
      o.tokens.push_back(t.token);
      o.logits.emplace_back(t.logits, t.logits + vocab);
    }
    return o;
  }

  // All requests in one DecodeBatch over one batcher; `between(step)` may break things.
  // forwards: per step, the requests whose rows were in its forward (those that got a token).
  std::map<uint64_t, Outcome> batched(bool worker0_in_process, ExchangeBatcher& batcher,
                                      std::vector<std::vector<const Req*>>& forwards,
                                      const std::function<void(int)>& between = {}) {
    std::vector<std::unique_ptr<ShardLinks>> ls;
    std::vector<std::unique_ptr<Generation>> gens;
    DecodeBatch batch(host_->model());
    for (const Req& r : reqs_) {
      ls.push_back(links(r, worker0_in_process, &batcher));
      gens.push_back(std::make_unique<Generation>(host_->model(), *ls.back(),
                                                  static_cast<int64_t>(r.context.size()), spec(r), nullptr));
      batch.add(r.id, *gens.back());
    }
    std::map<uint64_t, Outcome> out;
    const size_t vocab = static_cast<size_t>(config_.vocab_size);
    for (int step = 0; !batch.empty() && step < 100; ++step) {
      if (between) between(step);
      forwards.emplace_back();
      for (DecodeBatch::Result& res : batch.step()) {
        Outcome& o = out[res.id];
        if (res.produced)
          for (const Req& r : reqs_)
            if (r.id == res.id) forwards.back().push_back(&r);
        if (res.error) {
          try {
            std::rethrow_exception(res.error);
          } catch (const std::exception& e) {
            o.error = e.what();
          }
        }
        if (res.produced) {
          o.tokens.push_back(res.token.token);
          o.logits.emplace_back(res.token.logits, res.token.logits + vocab);
        }
      }
    }
    EXPECT_TRUE(batch.empty()) << "the batch does not end";
    return out;
  }

  static void expect_same(const Outcome& solo, const Outcome& got, const std::string& what) {
    EXPECT_TRUE(got.error.empty()) << what << ": " << got.error;
    EXPECT_EQ(got.tokens, solo.tokens) << what;
    ASSERT_EQ(got.logits.size(), solo.logits.size()) << what;
    for (size_t i = 0; i < solo.logits.size(); ++i)
      EXPECT_LE(testing::max_abs_diff(got.logits[i], solo.logits[i]), kLogitTol) << what << " step " << i;
  }

  void expect_batched_equals_solo(bool worker0_in_process) {
    std::vector<Outcome> alone;
    for (const Req& r : reqs_) {
      alone.push_back(solo(r, worker0_in_process));
      ASSERT_EQ(static_cast<int>(alone.back().tokens.size()), r.max_tokens);
    }
    const uint64_t batches0[2] = {servers_[0]->served_batches(), servers_[1]->served_batches()};
    const uint64_t items0[2] = {servers_[0]->served_batch_items(), servers_[1]->served_batch_items()};
    ExchangeBatcher batcher(*ucx_, host_->model(), health_, std::chrono::seconds(20));
    std::vector<std::vector<const Req*>> forwards;
    const auto got = batched(worker0_in_process, batcher, forwards);
    for (size_t i = 0; i < reqs_.size(); ++i)
      expect_same(alone[i], got.at(reqs_[i].id), "request " + std::to_string(i));

    // Per forward and layer: one message (or one in-process call) per worker, carrying every
    // request of that forward with a shard there. Requests end at different steps: count them.
    const uint64_t layers = static_cast<uint64_t>(config_.num_layers);
    uint64_t want_batches[kWorkers] = {0, 0}, want_items[kWorkers] = {0, 0};
    for (const auto& f : forwards)
      for (size_t w = 0; w < kWorkers; ++w) {
        uint64_t n = 0;
        for (const Req* r : f) n += r->on_worker[w] ? 1 : 0;
        want_items[w] += n * layers;
        want_batches[w] += n > 0 ? layers : 0;
      }
    const uint64_t batches[kWorkers] = {servers_[0]->served_batches() - batches0[0],
                                        servers_[1]->served_batches() - batches0[1]};
    const uint64_t items[kWorkers] = {servers_[0]->served_batch_items() - items0[0],
                                      servers_[1]->served_batch_items() - items0[1]};
    EXPECT_EQ(batches[1], want_batches[1]);
    EXPECT_EQ(items[1], want_items[1]);
    EXPECT_GT(items[1], batches[1]) << "no message carried more than one request";
    if (worker0_in_process) {
      EXPECT_EQ(batches[0], 0u) << "worker 0's shards are in-process: no messages";
      EXPECT_EQ(batcher.local_calls(), want_batches[0]);
      EXPECT_EQ(batcher.local_items(), want_items[0]);
      EXPECT_GT(batcher.local_items(), batcher.local_calls());
      EXPECT_EQ(batcher.messages(), batches[1]);
    } else {
      EXPECT_EQ(batches[0], want_batches[0]);
      EXPECT_EQ(items[0], want_items[0]);
      EXPECT_GT(items[0], batches[0]);
      EXPECT_EQ(batcher.messages(), batches[0] + batches[1]);
      EXPECT_EQ(batcher.message_items(), items[0] + items[1]);
      EXPECT_EQ(batcher.local_calls(), 0u);
    }
  }

  testing::TempDir dir_;
  ModelConfig config_;
  std::unique_ptr<ModelHost> host_;
  std::shared_ptr<actors::WorkerHealth> health_;
  std::vector<std::unique_ptr<ShardServer>> servers_;
  std::unique_ptr<transport::UcxWorker> ucx_;
  std::vector<transport::UcxWorker::EpId> eps_;
  std::vector<Req> reqs_;
};

TEST_F(BatchedExchange, StagedPathOneMessagePerWorkerPerLayerEqualsSoloRuns) {
  expect_batched_equals_solo(false);
}

TEST_F(BatchedExchange, InProcessAndStagedLinksOneCallPerWorkerPerLayerEqualSoloRuns) {
  expect_batched_equals_solo(true);
}

TEST_F(BatchedExchange, RefusedItemFailsOnlyItsRequest) {
  std::vector<Outcome> alone;
  for (const Req& r : reqs_) alone.push_back(solo(r, false));
  ExchangeBatcher batcher(*ucx_, host_->model(), health_, std::chrono::seconds(20));
  std::vector<std::vector<const Req*>> forwards;
  // After two steps worker 1 no longer holds request 0's shard: its item is refused.
  const auto got = batched(false, batcher, forwards, [&](int step) {
    if (step == 2) servers_[1]->remove(reqs_[0].id);
  });
  EXPECT_NE(got.at(reqs_[0].id).error.find("holds no context"), std::string::npos) << got.at(reqs_[0].id).error;
  EXPECT_EQ(got.at(reqs_[0].id).tokens.size(), 2u);
  for (size_t i = 1; i < reqs_.size(); ++i) expect_same(alone[i], got.at(reqs_[i].id), "request " + std::to_string(i));
}

TEST_F(BatchedExchange, DeadWorkerFailsOnlyTheRequestsWithAShardOnIt) {
  std::vector<Outcome> alone;
  for (const Req& r : reqs_) alone.push_back(solo(r, false));
  ASSERT_FALSE(reqs_[2].on_worker[1]) << "request 2 must live on worker 0 alone";
  ExchangeBatcher batcher(*ucx_, host_->model(), health_, std::chrono::seconds(20));
  std::vector<std::vector<const Req*>> forwards;
  const auto got = batched(false, batcher, forwards, [&](int step) {
    if (step != 3) return;
    health_->mark_dead(2, "killed by the test");
    servers_[1].reset();  // no reply will come
  });
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_NE(got.at(reqs_[i].id).error.find("w1"), std::string::npos) << got.at(reqs_[i].id).error;
    EXPECT_EQ(got.at(reqs_[i].id).tokens.size(), 3u);
  }
  expect_same(alone[2], got.at(reqs_[2].id), "request 2 (worker 0 only)");
}

// The runtime op alone: several shards of different lengths in one attend_many call.
TEST_F(BatchedExchange, AttendManyEqualsEachShardsAttendBitForBit) {
  Backend& be = host_->backend();
  const int64_t qd = config_.q_dim();
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<std::shared_ptr<ContextShard>> shards;
  for (const Req& r : reqs_) shards.push_back(ShardServer::find_in_process(servers_[0]->address(), r.id, &be));
  std::vector<Buffer> qs, os, ls;
  std::vector<ContextShard::Query> queries;
  for (size_t i = 0; i < shards.size(); ++i) {
    const int64_t T = 1 + static_cast<int64_t>(i) * 2;
    std::vector<float> q(static_cast<size_t>(T * qd));
    for (auto& v : q) v = u(rng);
    qs.push_back(be.alloc(T, qd, be.activation_dtype()));
    be.upload(q.data(), qs.back().view());
    os.push_back(be.alloc(T, qd, be.activation_dtype()));
    ls.push_back(be.alloc(T, config_.num_heads, DType::f32));
    queries.push_back({shards[i].get(), 1, qs.back().view(), {os.back().view(), ls.back().view()}});
  }
  ContextShard::attend_many(be, queries);
  for (size_t i = 0; i < shards.size(); ++i) {
    const Partial ref = shards[i]->attend(1, qs[i].view());
    std::vector<float> a(static_cast<size_t>(ref.o.rows * ref.o.cols)), b(a.size());
    be.download(ref.o, a.data());
    be.download(os[i].view(), b.data());
    EXPECT_EQ(a, b) << "O of shard " << i;
    float spread = 0;
    for (float v : a) spread = std::max(spread, std::abs(v));
    EXPECT_GT(spread, 1e-3f) << "O is all but zero: the comparison would prove nothing";
    std::vector<float> la(static_cast<size_t>(ref.lse.rows * ref.lse.cols)), lb(la.size());
    be.download(ref.lse, la.data());
    be.download(ls[i].view(), lb.data());
    EXPECT_EQ(la, lb) << "lse of shard " << i;
  }
}

}  // namespace
}  // namespace starattn
