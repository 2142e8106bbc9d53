// The distributed runtime end to end, as processes: a head and context workers on loopback
// compared with the in-process run, context reuse across requests, two requests in flight,
// cancel by id, and garbage or wrong-version messages sent to the head's and the workers' ports.
// Failures, deadlines, capacity and listening addresses: test_distributed_faults.cpp.
#include "tests/support/process_cluster.h"

namespace starattn {
namespace {

using namespace process_cluster;

TEST_F(Distributed, HeadAndThreeWorkersMatchTheInProcessRunExactly) {
  start_cluster(3);
  expect_same_as_local(3, ids(300, 1), 12, "even");
  // More blocks than workers, with a shorter anchor: contiguous runs of several blocks.
  expect_same_as_local(3, ids(333, 2), 8, "runs", {"--block-size", "40", "--anchor-size", "16"});
  // The in-process actors equal the Engine library path too.
  ASSERT_EQ(run({"run", "--engine", "--model", model_, "--workers", "3", "--threads", "2",
                 "--context-ids", ids(300, 1), "--query-ids", "7,8,9", "--max-tokens", "12",
                 "--ignore-eos", "--output", "ids", "--dump-logits", path("engine.bin")},
                "engine"),
            0);
  EXPECT_EQ(slurp(path("engine.out")), slurp(path("even.local.out")));
  EXPECT_TRUE(slurp(path("engine.bin")) == slurp(path("even.local.bin")));
}

TEST_F(Distributed, SecondRequestOverTheSameContextReusesTheWorkersBlocksExactly) {
  start_cluster(3);
  const std::string ctx = ids(300, 6);
  // Cold: the workers encode the 3 blocks and keep them.
  expect_same_as_local(3, ctx, 6, "cold");
  EXPECT_NE(slurp(path("cold.remote.err")).find("(0 of 3 blocks reused)"), std::string::npos)
      << slurp(path("cold.remote.err"));
  // Warm: the head places each run on the worker holding it; every block is a hit and the
  // tokens and logits equal the in-process cold run's to the bit.
  expect_same_as_local(3, ctx, 6, "warm");
  EXPECT_NE(slurp(path("warm.remote.err")).find("(3 of 3 blocks reused)"), std::string::npos)
      << slurp(path("warm.remote.err"));
  // A shared prefix of whole blocks (block 100: blocks 0 and 1 equal, block 2 differs).
  const std::string last = ctx.substr(ctx.rfind(',') + 1);
  const std::string other = ctx.substr(0, ctx.rfind(',')) + (last == "77" ? ",78" : ",77");
  expect_same_as_local(3, other, 6, "prefix");
  EXPECT_NE(slurp(path("prefix.remote.err")).find("(2 of 3 blocks reused)"), std::string::npos)
      << slurp(path("prefix.remote.err"));
}

// The query actor decodes the requests in flight together (continuous batching, one forward per
// step): B joins A's running batch with its query prefill, they decode side by side, B leaves.
// Tokens equal the solo runs'. Logits within a tight tolerance, not to the bit: the cpu matmul
// picks its kernel by row count (runtime/cpu_backend.cpp), so a row in a 4-row step (A's token
// with B's 3-token query) rounds differently than alone; 2e-6 was seen, as in test_decode_batch.
TEST_F(Distributed, TwoRequestsInFlightAreBatchedAndEqualTheirSoloRuns) {
  start_cluster(3);
  // A decodes long enough (about a second and a half here) that B's client can start, connect
  // and be admitted before A ends even on a loaded machine; 300 tokens (~150 ms) were not.
  expect_overlapping_equal_local(3, ids(200, 3), 3000, ids(1500, 4), 10, 2e-5);
  if (HasFatalFailure()) return;
  // They really overlapped: B was admitted before A finished.
  const std::string log = head_->err();
  const auto b_admitted = log.find("request 3: context");  // request 1 was the warm-up
  const auto a_done = log.find("request 2 done");
  ASSERT_NE(b_admitted, std::string::npos) << log;
  ASSERT_NE(a_done, std::string::npos) << log;
  EXPECT_LT(b_admitted, a_done) << "the requests did not overlap:\n" << log;
}

// Two questions about one document at once (issue 15): the second request's shards attend over
// the first's K/V on each worker (no encode, no copy; the head logs it) and its staged batch
// rows are stacked over that K/V; both equal their solo runs.
TEST_F(Distributed, TwoRequestsOnOneDocumentShareTheWorkersKvAndEqualTheirSoloRuns) {
  start_cluster(3);
  const std::string ctx = ids(600, 6);
  expect_overlapping_equal_local(3, ctx, 3000, ctx, 12, 2e-5);
  if (HasFatalFailure()) return;
  const std::string log = head_->err();
  size_t shared = 0;
  for (size_t at = log.find("request 3: worker"); at != std::string::npos; at = log.find("request 3: worker", at + 1))
    shared += log.compare(log.find(' ', at + 18) + 1, 6, "shares") == 0;
  EXPECT_EQ(shared, 3u) << "every worker's shard of B should share A's K/V:\n" << log;
  EXPECT_LT(log.find("request 3: worker"), log.find("request 2 done")) << log;
}

TEST_F(Distributed, CancelByIdStopsTheRequestAndFreesTheWorkersKv) {
  start_cluster(2);
  ClientSystem caf_client;
  caf::actor_system& system = caf_client.system;
  {
    const caf::actor sched = connect_head(system);
    const std::vector<caf::actor> workers = connect_workers(system);
    const wire::SubmitRequest req = long_request(1);  // still running when cancelled
    caf::scoped_actor client{system}, stranger{system};
    client->send(sched, actors::submit_atom::value, wire::encode(req));
    uint64_t id = 0;
    int tokens = 0;
    wire::Finished finished;
    bool done = false;
    const auto wait_tokens = [&](int n) {
      while (!done && tokens < n)
        client->receive(
            [&](actors::accepted_atom, const std::string& b) {
              id = wire::decode<wire::Accepted>(b, "head").request_id();
            },
            [&](actors::token_atom, const std::string&) { ++tokens; },
            [&](actors::finished_atom, const std::string& b) {
              finished = wire::decode<wire::Finished>(b, "head");
              done = true;
            },
            caf::after(20s) >> [&] { done = true; });
    };
    wait_tokens(3);
    ASSERT_GT(id, 0u) << "no Accepted before the tokens";
    ASSERT_FALSE(done) << finished.error();
    const auto kv_total = [&] {
      int64_t n = 0;
      const wire::StatusReply st = actors::query_status(system, sched, 10s);
      for (const auto& w : st.workers()) n += w.kv_tokens_held();
      return n;
    };
    EXPECT_EQ(kv_total(), 300);
    for (const auto& w : workers) {
      const wire::StatusReply st = actors::query_status(system, w, 10s);
      EXPECT_EQ(st.workers(0).kv_tokens_held(), 150);
    }
    wire::CancelRequest cancel;
    cancel.set_protocol_version(wire::kProtocolVersion);
    cancel.set_request_id(id);
    // Only the requester may cancel: the stranger's cancel is ignored, the request decodes on.
    stranger->send(sched, actors::cancel_atom::value, wire::encode(cancel));
    actors::query_status(system, sched, 10s);  // answered after the stranger's cancel was handled
    wait_tokens(tokens + 20);
    ASSERT_FALSE(done) << "a stranger cancelled the request: " << finished.finish_reason();
    client->send(sched, actors::cancel_atom::value, wire::encode(cancel));
    wait_tokens(1 << 30);
    ASSERT_TRUE(finished.ok()) << finished.error();
    EXPECT_EQ(finished.finish_reason(), "cancelled");
    EXPECT_EQ(finished.generated(), tokens);
    EXPECT_LT(tokens, 20000);
    EXPECT_EQ(kv_total(), 0);
    // The head sent the releases before the Finished, but on another connection than ours to
    // the workers: give them a moment.
    for (const auto& w : workers) {
      wire::StatusReply st;
      for (int i = 0; i < 100; ++i) {
        st = actors::query_status(system, w, 10s);
        if (st.workers(0).kv_tokens_held() == 0) break;
        std::this_thread::sleep_for(50ms);
      }
      EXPECT_EQ(st.workers(0).kv_tokens_held(), 0);
      EXPECT_EQ(st.active_requests(), 0);
    }
  }
  actors::stop_actors(system, {});
  expect_same_as_local(2, ids(250, 9), 6, "after_cancel");
}

// The workers' room accounting of shared K/V: B on A's document holds no K/V tokens of its own;
// once A ends, its K/V (still B's) stays counted, now as B's; once B ends, nothing is held.
TEST_F(Distributed, SharedKvIsCountedOnceAndMovesToTheRequestStillUsingIt) {
  start_cluster(2);
  ClientSystem caf_client;
  caf::actor_system& system = caf_client.system;
  {
    const caf::actor sched = connect_head(system);
    const std::vector<caf::actor> workers = connect_workers(system);
    const wire::SubmitRequest req = long_request(7);  // both still run while the test looks
    struct Client {
      std::unique_ptr<caf::scoped_actor> self;
      uint64_t id = 0;
      bool done = false;
    };
    std::vector<Client> clients(2);
    // Until the client has `n` more tokens (or its Finished).
    const auto wait_tokens = [&](Client& c, int n) {
      for (int got = 0; !c.done && got < n;)
        (*c.self)->receive(
            [&](actors::accepted_atom, const std::string& b) { c.id = wire::decode<wire::Accepted>(b, "head").request_id(); },
            [&](actors::token_atom, const std::string&) { ++got; },
            [&](actors::finished_atom, const std::string&) { c.done = true; },
            caf::after(20s) >> [&] { c.done = true; });
    };
    // Each worker's held K/V tokens once its active requests are `active`.
    const auto held = [&](int active) {
      std::vector<int64_t> out;
      for (const auto& w : workers) {
        wire::StatusReply st;
        for (int i = 0; i < 100; ++i) {
          st = actors::query_status(system, w, 10s);
          if (st.active_requests() == active) break;
          std::this_thread::sleep_for(50ms);
        }
        EXPECT_EQ(st.active_requests(), active);
        out.push_back(st.workers(0).kv_tokens_held());
      }
      return out;
    };
    for (Client& c : clients) {
      c.self = std::make_unique<caf::scoped_actor>(system);
      (*c.self)->send(sched, actors::submit_atom::value, wire::encode(req));
      wait_tokens(c, 3);  // A's encode is done (and offered) before B comes
      ASSERT_FALSE(c.done);
    }
    EXPECT_EQ(held(2), (std::vector<int64_t>{150, 150})) << "B must hold no K/V of its own";
    wire::CancelRequest cancel;
    cancel.set_protocol_version(wire::kProtocolVersion);
    cancel.set_request_id(clients[0].id);
    (*clients[0].self)->send(sched, actors::cancel_atom::value, wire::encode(cancel));
    wait_tokens(clients[0], 1 << 30);
    EXPECT_EQ(held(1), (std::vector<int64_t>{150, 150})) << "A's K/V is B's now, still allocated";
    wait_tokens(clients[1], 5);
    ASSERT_FALSE(clients[1].done);
    cancel.set_request_id(clients[1].id);
    (*clients[1].self)->send(sched, actors::cancel_atom::value, wire::encode(cancel));
    wait_tokens(clients[1], 1 << 30);
    EXPECT_EQ(held(0), (std::vector<int64_t>{0, 0}));
  }
  actors::stop_actors(system, {});
}

int tcp_garbage(int port, size_t bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  std::mt19937 rng(static_cast<unsigned>(port));
  std::string junk(bytes, '\0');
  for (char& c : junk) c = static_cast<char>(rng());
  const ssize_t n = send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
  std::this_thread::sleep_for(100ms);
  close(fd);
  return static_cast<int>(n);
}

TEST_F(Distributed, GarbageAndWrongVersionsAreRefusedAndEveryoneKeepsServing) {
  start_cluster(2);
  const int w0_port = std::atoi(slurp(worker_ports_[0]).c_str());
  ASSERT_GT(w0_port, 0);
  // Raw garbage on the head's and a worker's port (CAF's binary protocol sits there).
  EXPECT_GT(tcp_garbage(port_, 4096), 0);
  EXPECT_GT(tcp_garbage(w0_port, 4096), 0);
  EXPECT_GT(tcp_garbage(port_, 16), 0);

  ClientSystem caf_client;
  caf::actor_system& system = caf_client.system;
  {
    const caf::actor sched = actors::connect_remote(system, "127.0.0.1", static_cast<uint16_t>(port_), 10s);
    const caf::actor worker = actors::connect_remote(system, "127.0.0.1", static_cast<uint16_t>(w0_port), 10s);
    // Status with another protocol version: refused, naming both versions.
    for (const caf::actor& target : {sched, worker}) {
      const auto s = actors::query_status(system, target, 10s, 999);
      EXPECT_FALSE(s.ok());
      EXPECT_NE(s.error().find("999"), std::string::npos) << s.error();
    }
    // A submission with another version and one of garbage bytes: Finished with an error.
    wire::SubmitRequest bad;
    bad.set_protocol_version(999);
    bad.add_query(1);
    caf::scoped_actor self{system};
    self->send(sched, actors::submit_atom::value, wire::encode(bad));
    self->receive([&](actors::finished_atom, const std::string& bytes) {
                    const auto f = wire::decode<wire::Finished>(bytes, "head");
                    EXPECT_FALSE(f.ok());
                    EXPECT_EQ(f.error_kind(), wire::ERROR_PROTOCOL);
                    EXPECT_NE(f.error().find("version 999"), std::string::npos) << f.error();
                  },
                  caf::after(10s) >> [] { ADD_FAILURE() << "no answer to another version"; });
    self->send(sched, actors::submit_atom::value, std::string("\xff\xfe garbage \x01\x02", 14));
    self->receive([&](actors::finished_atom, const std::string& bytes) {
                    const auto g = wire::decode<wire::Finished>(bytes, "head");
                    EXPECT_FALSE(g.ok());
                    EXPECT_NE(g.error().find("malformed"), std::string::npos) << g.error();
                  },
                  caf::after(10s) >> [] { ADD_FAILURE() << "no answer to a garbage submission"; });
    // A registration and an encode request of another version.
    wire::RegisterWorker reg;
    const uint32_t other = wire::kProtocolVersion + 1;
    reg.set_protocol_version(other);
    reg.set_name("impostor");
    self->request(sched, 10s, actors::register_atom::value, wire::encode(reg))
        .receive([&](const std::string& bytes) {
                   const auto r = wire::decode<wire::RegisterReply>(bytes, "head");
                   EXPECT_FALSE(r.ok());
                   EXPECT_NE(r.error().find("version " + std::to_string(other)), std::string::npos) << r.error();
                 },
                 [&](const caf::error& e) { ADD_FAILURE() << system.render(e); });
    wire::EncodeRequest enc;
    enc.set_protocol_version(7);
    self->request(worker, 10s, actors::encode_atom::value, wire::encode(enc))
        .receive([&](const std::string& bytes) {
                   const auto r = wire::decode<wire::EncodeReply>(bytes, "worker");
                   EXPECT_FALSE(r.ok());
                   EXPECT_NE(r.error().find("version 7"), std::string::npos) << r.error();
                 },
                 [&](const caf::error& e) { ADD_FAILURE() << system.render(e); });
    // A message the actor does not know at all gets an error, not a crash.
    self->request(worker, 10s, std::string("what is this"))
        .receive([&](const std::string&) { ADD_FAILURE() << "an unknown message was answered"; },
                 [&](const caf::error&) {});

    // The data plane: another version and a garbage header get an error reply.
    const auto status = actors::query_status(system, sched, 10s);
    ASSERT_TRUE(status.ok());
    ASSERT_EQ(status.workers_size(), 2);
    transport::UcxWorker ucx;
    ucx.listen(actors::kAmAttendReply);
    const auto ep = ucx.connect(status.workers(0).ucx_address(), "worker 0");
    auto exchange = [&](const std::string& header) {
      ucx.send(ep, actors::kAmAttend, header, std::make_shared<std::vector<char>>(64, 0), true);
      transport::AmMessage m;
      const auto deadline = std::chrono::steady_clock::now() + 10s;
      while (std::chrono::steady_clock::now() < deadline) {
        ucx.progress();
        if (ucx.poll(m)) return wire::decode<wire::AttendReply>(m.header, "worker").error();
      }
      return std::string("(no reply)");
    };
    wire::AttendRequest req;
    req.set_protocol_version(5);
    req.set_request_id(1);
    EXPECT_NE(exchange(wire::encode(req)).find("version 5"), std::string::npos);
    EXPECT_NE(exchange(std::string("\xff\xff\xff garbage", 11)).find("malformed"), std::string::npos);
    req.set_protocol_version(wire::kProtocolVersion);
    req.set_request_id(424242);
    req.set_rows(1);
    req.set_cols(64);
    EXPECT_NE(exchange(wire::encode(req)).find("holds no context"), std::string::npos);
    ucx.disconnect(ep);
    actors::stop_actors(system, {});
  }
  // Everyone still serves.
  EXPECT_TRUE(head_->alive()) << head_->err();
  EXPECT_TRUE(workers_[0]->alive()) << workers_[0]->err();
  expect_same_as_local(2, ids(250, 8), 6, "after_garbage");
}

}  // namespace
}  // namespace starattn
