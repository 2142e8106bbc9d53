// Protobuf only where bytes leave a process: a head whose scheduler, query actor, context
// actors and client all share this process streams a request without encoding or decoding a
// single request message (the counters of transport/wire.h), and gives the Engine's tokens and
// logits. The same request submitted as bytes (what a remote `run --head` sends) is answered in
// bytes, token by token: the counters see it, so the check can fail. Context workers that
// encode in slices of layers give the same tokens and logits.
#include <gtest/gtest.h>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <chrono>
#include <functional>
#include <future>
#include <random>

#include "actors/cluster.h"
#include "actors/context_block.h"
#include "actors/messages.h"
#include "actors/scheduler_service.h"
#include "runtime/engine.h"
#include "runtime/random_model.h"
#include "tests/support/test_models.h"
#include "transport/net_devices.h"
#include "transport/wire.h"
#include "transport/wire_convert.h"

namespace starattn {
namespace {

using namespace std::chrono_literals;

// Encodes plus decodes of every message a request's stream is made of.
uint64_t request_messages_on_the_wire() {
  uint64_t n = 0;
  auto add = [&](auto counts) { n += counts.encoded.load() + counts.decoded.load(); };
  add(wire::WireCounts<wire::SubmitRequest>{});
  add(wire::WireCounts<wire::Accepted>{});
  add(wire::WireCounts<wire::TokenEvent>{});
  add(wire::WireCounts<wire::Finished>{});
  add(wire::WireCounts<wire::CancelRequest>{});
  return n;
}

struct Streamed {
  std::vector<int32_t> tokens;
  std::vector<float> logits;  // rows of vocab, one per token
};

// A random request: `context` ids, a short query, `max_tokens` with their logits.
RequestSpec random_request(uint64_t seed, int64_t context, int64_t query, int max_tokens) {
  std::mt19937_64 rng(seed);
  RequestSpec spec;
  spec.prompt.context = testing::random_tokens(rng, context, 256);
  spec.prompt.query = testing::random_tokens(rng, query, 256);
  spec.max_tokens = max_tokens;
  spec.ignore_eos = true;
  spec.want_logits = true;
  return spec;
}

// The in-process Engine's tokens and logits for `spec` on `workers` workers.
Streamed engine_run(const std::string& model, int workers, const RequestSpec& spec) {
  EngineOptions eo;
  eo.model = model;
  eo.workers = workers;
  eo.threads = 2;
  Engine engine(eo);
  const auto vocab = static_cast<size_t>(engine.config().vocab_size);
  Streamed out;
  engine.generate(spec, [&](int32_t id, const float* logits) {
    out.tokens.push_back(id);
    out.logits.insert(out.logits.end(), logits, logits + vocab);
    return true;
  });
  return out;
}

// A head and `workers` context actors in this process, on the cpu backend; `tune` adjusts each
// context actor's options. Returns every actor (for stop_actors) with the head's first.
std::vector<caf::actor> spawn_local_cluster(caf::actor_system& system, const std::string& model, int workers,
                                            actors::Head& head,
                                            const std::function<void(actors::ContextBlockOptions&)>& tune = {}) {
  auto host = std::make_shared<actors::ModelHost>(model, "cpu", 0, 2);
  head = actors::spawn_head(system, host, false);
  std::vector<caf::actor> all{head.scheduler, head.query};
  for (int i = 0; i < workers; ++i) {
    actors::ContextBlockOptions o;
    o.model = host;
    o.scheduler = head.scheduler;
    o.name = "local/" + std::to_string(i);
    o.kv_fraction = 0.8 / workers;
    o.verbose = false;
    if (tune) tune(o);
    all.push_back(actors::spawn_context_block(system, o));
  }
  actors::wait_for_workers(system, head.scheduler, workers, 60s);
  return all;
}

TEST(ActorMessages, InProcessHeadStreamsWithoutProtobufAndMatchesTheEngine) {
  testing::TempDir dir;
  const std::string model = dir.path() + "/tiny";
  write_random_model(preset_config("tiny"), 4, model);
  constexpr int kWorkers = 2;

  const RequestSpec spec = random_request(23, 300, 3, 6);
  const Streamed reference = engine_run(model, kWorkers, spec);
  ASSERT_EQ(reference.tokens.size(), 6u);

  transport::restrict_ucx_net_devices("lo");
  caf::actor_system_config config;
  actors::configure_caf(config);
  caf::actor_system system{config};
  actors::Head head;
  const std::vector<caf::actor> all = spawn_local_cluster(system, model, kWorkers, head);

  const uint64_t before = request_messages_on_the_wire();
  // The in-process client of `starattn run`.
  Streamed direct;
  const RequestEnd end = actors::submit(
      system, head.scheduler, spec,
      [&](const TokenEvent& ev) {
        direct.tokens.insert(direct.tokens.end(), ev.tokens.begin(), ev.tokens.end());
        direct.logits.insert(direct.logits.end(), ev.logits.begin(), ev.logits.end());
      },
      60s);
  ASSERT_TRUE(end.ok) << end.error;
  EXPECT_EQ(end.stats.generated, 6);
  EXPECT_EQ(end.stats.finish_reason, "length");
  EXPECT_EQ(end.stats.context_tokens, 300);
  EXPECT_EQ(end.stats.workers_used, kWorkers);
  EXPECT_EQ(direct.tokens, reference.tokens);
  ASSERT_EQ(direct.logits.size(), reference.logits.size());
  EXPECT_EQ(testing::max_abs_diff(direct.logits, reference.logits), 0.0);

  // The HTTP and framed TCP front ends' client (SchedulerService's bridge), text prompt too.
  std::vector<int32_t> served;
  {
    actors::SchedulerService service(system, head.scheduler, {});
    std::promise<RequestStats> done;
    StreamCallbacks cb;
    cb.on_token = [&](const TokenEvent& ev) {
      served.insert(served.end(), ev.tokens.begin(), ev.tokens.end());
      return true;
    };
    cb.on_done = [&](const RequestStats& s) { done.set_value(s); };
    cb.on_error = [&](const Error& e) { done.set_exception(std::make_exception_ptr(e)); };
    RequestSpec ids = spec;
    ids.want_logits = false;
    service.submit(ids, cb);
    auto f = done.get_future();
    ASSERT_EQ(f.wait_for(60s), std::future_status::ready);
    EXPECT_EQ(f.get().generated, 6);
  }
  EXPECT_EQ(served, reference.tokens);
  EXPECT_EQ(request_messages_on_the_wire(), before)
      << "an in-process request was encoded in protobuf";

  // The same request as bytes, as a remote client sends it: answered in bytes.
  const uint64_t tokens_encoded = wire::WireCounts<wire::TokenEvent>::encoded.load();
  const uint64_t finished_encoded = wire::WireCounts<wire::Finished>::encoded.load();
  {
    caf::scoped_actor client{system};
    client->send(head.scheduler, actors::submit_atom::value, wire::encode(wire::to_wire(spec)));
    std::vector<int32_t> remote;
    bool done = false;
    while (!done)
      client->receive(
          [&](actors::accepted_atom, const std::string&) {},
          [&](actors::token_atom, const std::string& b) {
            remote.push_back(wire::decode<wire::TokenEvent>(b, "head").token());
          },
          [&](actors::finished_atom, const std::string& b) {
            EXPECT_TRUE(wire::decode<wire::Finished>(b, "head").ok());
            done = true;
          },
          caf::after(60s) >> [&] {
            ADD_FAILURE() << "no answer in bytes";
            done = true;
          });
    EXPECT_EQ(remote, reference.tokens);
  }
  EXPECT_EQ(wire::WireCounts<wire::TokenEvent>::encoded.load() - tokens_encoded, 6u);
  EXPECT_EQ(wire::WireCounts<wire::Finished>::encoded.load() - finished_encoded, 1u);
  actors::stop_actors(system, all);
}

// Context workers that run each block's forward one layer per message (phase1_slice_ms far
// below a layer's time: the pacer's floor of one layer), their mailboxes served between the
// slices, give the Engine's tokens and logits bit for bit: slices are the same forward.
TEST(ActorMessages, WorkersEncodingInSlicesOfLayersMatchTheEngine) {
  testing::TempDir dir;
  const std::string model = dir.path() + "/tiny";
  ModelConfig four_layers = preset_config("tiny");
  four_layers.num_layers = 4;  // slices of one layer: 3 per block (the last layer rides along)
  write_random_model(four_layers, 6, model);
  constexpr int kWorkers = 2;
  const RequestSpec spec = random_request(29, 260, 4, 5);
  const Streamed reference = engine_run(model, kWorkers, spec);

  transport::restrict_ucx_net_devices("lo");
  caf::actor_system_config config;
  actors::configure_caf(config);
  caf::actor_system system{config};
  actors::Head head;
  const std::vector<caf::actor> all =
      spawn_local_cluster(system, model, kWorkers, head, [](actors::ContextBlockOptions& o) {
        o.phase1_chunk_tokens = 0;  // whole blocks, as the Engine encodes them
        o.phase1_slice_ms = 1e-9;
      });
  Streamed sliced;
  const RequestEnd end = actors::submit(
      system, head.scheduler, spec,
      [&](const TokenEvent& ev) {
        sliced.tokens.insert(sliced.tokens.end(), ev.tokens.begin(), ev.tokens.end());
        sliced.logits.insert(sliced.logits.end(), ev.logits.begin(), ev.logits.end());
      },
      60s);
  // EXPECTs only: a failed ASSERT would return with the actors running, and the actor system's
  // destructor would wait for them forever.
  EXPECT_TRUE(end.ok) << end.error;
  EXPECT_EQ(end.stats.workers_used, kWorkers);
  EXPECT_EQ(sliced.tokens, reference.tokens);
  EXPECT_EQ(sliced.logits.size(), reference.logits.size());
  if (sliced.logits.size() == reference.logits.size()) {
    EXPECT_EQ(testing::max_abs_diff(sliced.logits, reference.logits), 0.0);
  }
  actors::stop_actors(system, all);
}

}  // namespace
}  // namespace starattn
