// The distributed runtime end to end, as processes: a head and context workers on loopback
// compared with the in-process run, two requests in flight, a worker killed mid-request, and
// garbage or wrong-version messages sent to the head's and the workers' ports.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "actors/cluster.h"
#include "actors/messages.h"
#include "runtime/model_config.h"
#include "runtime/request_plan.h"
#include "tests/support/test_models.h"
#include "transport/ucx_endpoint.h"
#include "transport/wire.h"

namespace starattn {
namespace {

using namespace std::chrono_literals;

std::string cli() {
  const char* env = std::getenv("STARATTN_CLI");
  return env ? env : STARATTN_CLI;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Two dumps of float32 logits (--dump-logits) of equal length, within `tol` of each other.
::testing::AssertionResult logits_close(const std::string& a, const std::string& b, double tol) {
  if (a.size() != b.size() || a.empty() || a.size() % 4 != 0)
    return ::testing::AssertionFailure() << "logit dumps of " << a.size() << " and " << b.size() << " bytes";
  std::vector<float> fa(a.size() / 4), fb(b.size() / 4);
  std::memcpy(fa.data(), a.data(), a.size());
  std::memcpy(fb.data(), b.data(), b.size());
  const double d = testing::max_abs_diff(fa, fb);
  if (d <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "logits differ by " << d << " (tolerance " << tol << ")";
}

// A child process running `starattn ARGS...`, output to log files; killed when destroyed.
class Proc {
 public:
  Proc(const std::vector<std::string>& args, const std::string& out, const std::string& err)
      : out_(out), err_(err) {
    pid_ = fork();
    if (pid_ == 0) {
      if (!freopen(out.c_str(), "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(126);
      std::vector<char*> argv;
      static std::string bin = cli();
      argv.push_back(bin.data());
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(bin.c_str(), argv.data());
      _exit(127);
    }
  }
  ~Proc() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  bool alive() {
    if (exited_) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      rc_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return !exited_;
  }
  // Exit status, or -1 when it did not exit within `limit`.
  int wait(std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (alive() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
    return alive() ? -1 : rc_;
  }
  void kill9() { kill(pid_, SIGKILL); }
  std::string out() const { return slurp(out_); }
  std::string err() const { return slurp(err_); }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int rc_ = -1;
  std::string out_, err_;
};

// `n` random byte tokens; ids() is the same list as --context-ids wants it.
std::vector<int32_t> token_ids(int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(static_cast<int32_t>(rng() % 256));
  return t;
}

std::string ids(int64_t n, unsigned seed) {
  std::string s;
  for (int32_t t : token_ids(n, seed)) s += (s.empty() ? "" : ",") + std::to_string(t);
  return s;
}

// Submits `context` with the query 7,8,9 to the head and waits for its Finished.
wire::Finished submit_and_wait(caf::actor_system& system, const caf::actor& sched,
                               const std::vector<int32_t>& context, int max_tokens) {
  wire::SubmitRequest req;
  req.set_protocol_version(wire::kProtocolVersion);
  for (int32_t t : context) req.add_context(t);
  for (int32_t t : {7, 8, 9}) req.add_query(t);
  req.set_max_tokens(max_tokens);
  req.set_ignore_eos(true);
  caf::scoped_actor client{system};
  client->send(sched, actors::submit_atom::value, wire::encode(req));
  wire::Finished finished;
  for (bool done = false; !done;)
    client->receive([](actors::accepted_atom, const std::string&) {},
                    [](actors::token_atom, const std::string&) {},
                    [&](actors::finished_atom, const std::string& b) {
                      finished = wire::decode<wire::Finished>(b, "head");
                      done = true;
                    },
                    caf::after(30s) >> [&] {
                      finished.set_error("(no Finished from the head within 30 s)");
                      done = true;
                    });
  return finished;
}

class Distributed : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    model_ = dir_->path() + "/tiny";
    const std::string cmd = cli() + " init-model --preset tiny --seed 4 --out " + model_ + " 2>/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  std::string path(const std::string& name) const { return dir_->path() + "/" + name; }

  // Runs `starattn ARGS` to completion (bounded); returns its exit status.
  int run(const std::vector<std::string>& args, const std::string& tag,
          std::chrono::milliseconds limit = 120s) {
    Proc p(args, path(tag + ".out"), path(tag + ".err"));
    const int rc = p.wait(limit);
    EXPECT_NE(rc, -1) << tag << " did not finish within " << limit.count() << " ms";
    return rc;
  }

  // Starts a head and `n` workers (each with `worker_extra` options) on loopback; waits until
  // all have registered.
  void start_cluster(int n, const std::vector<std::string>& head_extra = {},
                     const std::vector<std::string>& worker_extra = {}) {
    const std::string pf = path("head.port");
    std::remove(pf.c_str());
    std::vector<std::string> head_args{"serve", "--listen", "127.0.0.1:0", "--port-file", pf,
                                       "--model", model_, "--exchange-timeout", "20"};
    head_args.insert(head_args.end(), head_extra.begin(), head_extra.end());
    head_ = std::make_unique<Proc>(head_args, path("head.out"), path("head.err"));
    for (int i = 0; i < 300 && slurp(pf).empty(); ++i) std::this_thread::sleep_for(20ms);
    port_ = std::atoi(slurp(pf).c_str());
    ASSERT_GT(port_, 0) << "the head did not start: " << head_->err();
    for (int i = 0; i < n; ++i) add_worker(worker_extra);
    wait_workers(n);
  }
  void add_worker(const std::vector<std::string>& extra = {}) {
    const int i = static_cast<int>(workers_.size());
    const std::string pf = path("worker" + std::to_string(i) + ".port");
    std::remove(pf.c_str());
    worker_ports_.push_back(pf);
    std::vector<std::string> args{"worker", "--head", head(), "--model", model_, "--cpu-threads",
                                  "2", "--listen", "127.0.0.1:0", "--port-file", pf, "--name",
                                  "w" + std::to_string(i)};
    args.insert(args.end(), extra.begin(), extra.end());
    workers_.push_back(std::make_unique<Proc>(
        args, path("w" + std::to_string(i) + ".out"), path("w" + std::to_string(i) + ".err")));
  }
  void wait_workers(int n) {
    ASSERT_EQ(run({"run", "--head", head(), "--min-workers", std::to_string(n), "--context-ids",
                   "1,2,3", "--query-ids", "4", "--max-tokens", "1", "--output", "ids"},
                  "warmup"),
              0)
        << slurp(path("warmup.err"));
  }
  std::string head() const { return "127.0.0.1:" + std::to_string(port_); }

  // The request's arguments (without where it runs).
  static std::vector<std::string> request(const std::string& context, int max_tokens,
                                          const std::string& logits,
                                          const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a{"--context-ids", context, "--query-ids", "7,8,9", "--max-tokens",
                               std::to_string(max_tokens), "--ignore-eos", "--output", "ids",
                               "--dump-logits", logits};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  std::vector<std::string> local(int workers, std::vector<std::string> req) {
    std::vector<std::string> a{"run", "--model", model_, "--workers", std::to_string(workers),
                               "--threads", "2"};
    a.insert(a.end(), req.begin(), req.end());
    return a;
  }
  std::vector<std::string> remote(int workers, std::vector<std::string> req) {
    std::vector<std::string> a{"run", "--head", head(), "--min-workers", std::to_string(workers)};
    a.insert(a.end(), req.begin(), req.end());
    return a;
  }
  // Runs the same request in one process and on the cluster; both must agree to the bit.
  void expect_same_as_local(int workers, const std::string& context, int max_tokens,
                            const std::string& tag, const std::vector<std::string>& extra = {}) {
    ASSERT_EQ(run(local(workers, request(context, max_tokens, path(tag + ".local.bin"), extra)),
                  tag + ".local"),
              0)
        << slurp(path(tag + ".local.err"));
    ASSERT_EQ(run(remote(workers, request(context, max_tokens, path(tag + ".remote.bin"), extra)),
                  tag + ".remote"),
              0)
        << slurp(path(tag + ".remote.err")) << "\nhead:\n" << head_->err();
    const std::string a = slurp(path(tag + ".local.out")), b = slurp(path(tag + ".remote.out"));
    EXPECT_FALSE(a.empty());
    EXPECT_EQ(a, b) << "token ids differ";
    const std::string la = slurp(path(tag + ".local.bin")), lb = slurp(path(tag + ".remote.bin"));
    EXPECT_EQ(la.size(), static_cast<size_t>(max_tokens) * 259 * 4);
    EXPECT_TRUE(la == lb) << "logits differ";
  }

  static testing::TempDir* dir_;
  static std::string model_;
  std::unique_ptr<Proc> head_;
  std::vector<std::unique_ptr<Proc>> workers_;
  std::vector<std::string> worker_ports_;
  int port_ = 0;
};

testing::TempDir* Distributed::dir_ = nullptr;
std::string Distributed::model_;

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
  const std::string ctx_a = ids(200, 3), ctx_b = ids(1500, 4);
  // A decodes long enough (about a second and a half here) that B's client can start, connect
  // and be admitted before A ends even on a loaded machine; 300 tokens (~150 ms) were not.
  const int a_tokens = 3000;
  ASSERT_EQ(run(local(3, request(ctx_a, a_tokens, path("a.local.bin"))), "a.local"), 0);
  ASSERT_EQ(run(local(3, request(ctx_b, 10, path("b.local.bin"))), "b.local"), 0);
  // A decodes for a while; B is submitted (and encoded) once A's first tokens are out.
  Proc a(remote(3, request(ctx_a, a_tokens, path("a.remote.bin"))), path("a.remote.out"),
         path("a.remote.err"));
  for (int i = 0; i < 500 && a.out().empty(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_FALSE(a.out().empty()) << a.err();
  ASSERT_EQ(run(remote(3, request(ctx_b, 10, path("b.remote.bin"))), "b.remote"), 0)
      << slurp(path("b.remote.err"));
  ASSERT_EQ(a.wait(120s), 0) << a.err();
  constexpr double kBatchedLogitTol = 2e-5;
  EXPECT_EQ(a.out(), slurp(path("a.local.out")));
  EXPECT_TRUE(logits_close(slurp(path("a.remote.bin")), slurp(path("a.local.bin")), kBatchedLogitTol));
  EXPECT_EQ(slurp(path("b.remote.out")), slurp(path("b.local.out")));
  EXPECT_TRUE(logits_close(slurp(path("b.remote.bin")), slurp(path("b.local.bin")), kBatchedLogitTol));
  // They really overlapped: B was admitted before A finished.
  const std::string log = head_->err();
  const auto b_admitted = log.find("request 3: context");  // request 1 was the warm-up
  const auto a_done = log.find("request 2 done");
  ASSERT_NE(b_admitted, std::string::npos) << log;
  ASSERT_NE(a_done, std::string::npos) << log;
  EXPECT_LT(b_admitted, a_done) << "the requests did not overlap:\n" << log;
}

TEST_F(Distributed, KilledWorkerFailsItsRequestAndTheHeadServesOn) {
  start_cluster(3);
  Proc victim_req(remote(3, request(ids(300, 5), 3000, path("k.bin"))), path("k.out"),
                  path("k.err"));
  for (int i = 0; i < 500 && victim_req.out().empty(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_FALSE(victim_req.out().empty()) << victim_req.err();
  const auto t0 = std::chrono::steady_clock::now();
  workers_[1]->kill9();
  const int rc = victim_req.wait(15s);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(rc, -1) << "the request hung after its worker died";
  EXPECT_NE(rc, 0);
  EXPECT_LT(seconds, 5.0);
  const std::string err = victim_req.err();
  EXPECT_NE(err.find("error"), std::string::npos) << err;
  EXPECT_NE(err.find("w1"), std::string::npos) << "the error should name the worker: " << err;
  EXPECT_TRUE(head_->alive()) << head_->err();
  // The next request runs on the two workers left and matches a two-worker in-process run.
  expect_same_as_local(2, ids(300, 6), 10, "after");
  EXPECT_TRUE(head_->alive());
}

// A worker that stops answering (SIGSTOP: its connections stay open, so nothing closes) is found
// by its missing heartbeats: the request it holds fails naming it within the bound, nothing new
// is placed on it, and it is admitted again once it runs again.
TEST_F(Distributed, StoppedWorkerFailsItsRequestInSecondsAndIsReadmitted) {
  start_cluster(2);
  Proc victim_req(remote(2, request(ids(300, 5), 3000, path("s.bin"))), path("s.out"),
                  path("s.err"));
  for (int i = 0; i < 500 && victim_req.out().empty(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_FALSE(victim_req.out().empty()) << victim_req.err();
  const auto t0 = std::chrono::steady_clock::now();
  kill(workers_[1]->pid(), SIGSTOP);
  const int rc = victim_req.wait(20s);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(rc, -1) << "the request hung on a stopped worker";
  EXPECT_NE(rc, 0);
  EXPECT_LT(seconds, 10.0) << "the default heartbeat timeout is 5 s";
  const std::string err = victim_req.err();
  EXPECT_NE(err.find("w1"), std::string::npos) << "the error should name the worker: " << err;
  EXPECT_NE(err.find("stopped answering"), std::string::npos) << err;
  // While it is stopped, a request runs on the one worker left (and matches a one-worker run).
  expect_same_as_local(1, ids(200, 6), 6, "while_stopped");
  kill(workers_[1]->pid(), SIGCONT);
  std::this_thread::sleep_for(1500ms);  // a few heartbeats
  // Admitted again: a request that asks for two workers runs on both.
  expect_same_as_local(2, ids(200, 7), 6, "after_resume");
  EXPECT_NE(head_->err().find("answers again: admitted"), std::string::npos) << head_->err();
  EXPECT_TRUE(head_->alive());
}

// No request outlives its deadline: one that would run for many seconds ends with a timeout
// error soon after its deadline (the scheduler checks every 250 ms), the workers' KV is freed
// and the head serves the next request.
TEST_F(Distributed, NoRequestOutlivesItsDeadline) {
  start_cluster(2, {"--request-deadline", "1"});
  const auto t0 = std::chrono::steady_clock::now();
  Proc long_req(remote(2, request(ids(300, 5), 3000, path("d.bin"))), path("d.out"), path("d.err"));
  const int rc = long_req.wait(20s);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(rc, -1) << "the request outlived its deadline by far";
  EXPECT_NE(rc, 0) << "3000 tokens finished within the 1 s deadline: make the request longer";
  EXPECT_LT(seconds, 4.0) << "deadline 1 s, checked every 250 ms; client start and exit included";
  const std::string err = long_req.err();
  EXPECT_NE(err.find("deadline"), std::string::npos) << err;
  EXPECT_FALSE(long_req.out().empty()) << "it should have streamed tokens before its deadline";
  // The workers' KV was freed and the head serves on (a short request, same tokens as locally).
  expect_same_as_local(2, ids(200, 6), 4, "after_deadline");
  EXPECT_TRUE(head_->alive()) << head_->err();
}

// Issue 13: a context beyond the live workers' room is refused as a capacity error saying how
// many context tokens do fit on them, from the room each worker registered (an 8 MiB prompt was
// once refused with "at most 0 tokens" beside workers with room for 383,730); a context of
// exactly that size then runs on the same head; once a worker dies, the refusal gives the
// smaller room of the workers left.
TEST_F(Distributed, ContextBeyondTheLiveWorkersRoomIsRefusedNamingWhatFits) {
  const ModelConfig config = ModelConfig::from_file(model_ + "/config.json");
  const MemoryModel memory = MemoryModel::of(config, DType::f32);  // the cpu backend's activations
  // Star mode with the default sizes: C tokens on W workers are W blocks of b = ceil(C / W), each
  // worker holding one while it encodes it behind an anchor of b, which takes
  // fixed + b * per_token + 2b * per_scratch_row bytes. So a worker of R bytes takes blocks of
  // up to floor((R - fixed) / per_block_token) and W of them take W times that.
  const int64_t per_block_token = memory.per_token + 2 * memory.per_scratch_row;
  // A fixed room (--kv-bytes; a share of free memory would move between runs): a few hundred
  // tokens beyond the fixed slack and half a token more, which must not count.
  const int64_t room = memory.fixed + 300 * per_block_token + per_block_token / 2;
  start_cluster(3, {}, {"--kv-bytes", std::to_string(room)});
  caf::actor_system_config caf_config;
  actors::configure_caf(caf_config);
  caf::actor_system system{caf_config};
  {
    const caf::actor sched =
        actors::connect_remote(system, "127.0.0.1", static_cast<uint16_t>(port_), 10s);
    // What fits on the workers the head lists, from the room each registered with it.
    const auto fits_on_registered = [&](int expect_workers) -> int64_t {
      const wire::StatusReply st = actors::query_status(system, sched, 10s);
      EXPECT_EQ(st.workers_size(), expect_workers);
      int64_t total = 0;
      for (const auto& w : st.workers()) {
        EXPECT_EQ(w.capacity_bytes(), room) << w.name();
        EXPECT_EQ(w.capacity_tokens(), room / config.kv_bytes_per_token(4)) << w.name();
        total += (w.capacity_bytes() - memory.fixed) / per_block_token;
      }
      return total;
    };
    const auto expect_refused = [&](int64_t context, int64_t fits, int workers) {
      const wire::Finished f = submit_and_wait(system, sched, token_ids(context, 21), 4);
      EXPECT_FALSE(f.ok());
      EXPECT_EQ(f.error_kind(), wire::ERROR_CAPACITY) << f.error();
      EXPECT_NE(f.error().find("context of " + std::to_string(context) + " tokens does not fit"),
                std::string::npos)
          << f.error();
      EXPECT_NE(f.error().find("at most " + std::to_string(fits) + " context tokens fit on the " +
                               std::to_string(workers) + " live worker(s)"),
                std::string::npos)
          << f.error();
    };
    const int64_t fits3 = fits_on_registered(3);
    ASSERT_EQ(fits3, 3 * 300) << "the room given is not the room registered";
    expect_refused(fits3 + 1, fits3, 3);
    // The bound is exact: a context of that many tokens runs, as it does in one process.
    expect_same_as_local(3, ids(fits3, 22), 4, "fits3");

    workers_[1]->kill9();
    wire::StatusReply st;
    for (int i = 0; i < 500; ++i) {
      st = actors::query_status(system, sched, 10s);
      if (st.workers_size() == 2) break;
      std::this_thread::sleep_for(20ms);
    }
    ASSERT_EQ(st.workers_size(), 2) << "the head still lists the killed worker";
    const int64_t fits2 = fits_on_registered(2);
    EXPECT_EQ(fits2, 2 * 300);
    expect_refused(fits3 + 1, fits2, 2);
    expect_refused(fits3, fits2, 2);  // what ran on three workers is too much for two
    expect_same_as_local(2, ids(fits2, 23), 4, "fits2");
    actors::stop_actors(system, {});
  }
  EXPECT_TRUE(head_->alive()) << head_->err();
}

// Every listening socket of the head and the workers (control plane, relay, UCX data plane) is on
// the loopback address they were given: nothing listens on the machine's other interfaces.
TEST_F(Distributed, EveryPortListensOnlyWhereItWasTold) {
  start_cluster(2);
  FILE* ss = popen("ss -ltnpH 2>/dev/null", "r");
  if (!ss) GTEST_SKIP() << "ss is not available";
  std::string all;
  char buf[512];
  while (fgets(buf, sizeof(buf), ss)) all += buf;
  if (pclose(ss) != 0 || all.empty()) GTEST_SKIP() << "ss gave no listing";
  std::vector<pid_t> pids{head_->pid()};
  for (const auto& w : workers_) pids.push_back(w->pid());
  int ours = 0;
  std::istringstream lines(all);
  for (std::string line; std::getline(lines, line);) {
    bool mine = false;
    for (pid_t pid : pids) mine |= line.find("pid=" + std::to_string(pid) + ",") != std::string::npos;
    if (!mine) continue;
    ++ours;
    std::istringstream fields(line);
    std::string state, recvq, sendq, local;
    fields >> state >> recvq >> sendq >> local;
    EXPECT_TRUE(local.rfind("127.0.0.1:", 0) == 0 || local.rfind("[::1]:", 0) == 0)
        << "listening outside loopback: " << line;
  }
  // The head's relay and middleman, and each process's UCX worker(s), at least.
  EXPECT_GE(ours, 4) << all;
}

TEST_F(Distributed, CancelByIdStopsTheRequestAndFreesTheWorkersKv) {
  start_cluster(2);
  caf::actor_system_config config;
  actors::configure_caf(config);
  caf::actor_system system{config};
  {
    const caf::actor sched = actors::connect_remote(system, "127.0.0.1", static_cast<uint16_t>(port_), 10s);
    std::vector<caf::actor> workers;
    for (const auto& pf : worker_ports_)
      workers.push_back(actors::connect_remote(system, "127.0.0.1",
                                               static_cast<uint16_t>(std::atoi(slurp(pf).c_str())), 10s));
    wire::SubmitRequest req;
    req.set_protocol_version(wire::kProtocolVersion);
    for (int i = 0; i < 300; ++i) req.add_context(i % 256);
    req.add_query(7);
    req.set_max_tokens(3500);  // seconds of decoding (within the 4096 positions): still running when cancelled
    req.set_ignore_eos(true);
    req.mutable_sampling()->set_top_p(1.0f);  // greedy
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

  caf::actor_system_config config;
  actors::configure_caf(config);
  caf::actor_system system{config};
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
