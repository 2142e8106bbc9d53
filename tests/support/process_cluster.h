// The process-cluster fixture of the distributed tests (test_distributed.cpp: results and
// protocol; test_distributed_faults.cpp: failures, deadlines, capacity, listening addresses): a
// head and context workers started as `starattn` processes on loopback, the request helpers
// and the comparison with the in-process run.
#pragma once

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstddef>
#include <cstring>
#include <functional>
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

namespace starattn::process_cluster {

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

// Two greedy runs of one request whose steps may round differently (a batched step's GEMMs, on
// the GPU): the logits of every step up to the first differing token are within `tol`, and that
// token (if any) was drawn at a near tie, the top two logits of the reference's step within
// 2 * tol, which rounding of that size can flip; after it the runs continue different texts.
// `out_*`: the --output ids lines; `bin_*`: the --dump-logits files (float32 rows, one per token).
::testing::AssertionResult same_until_near_tie(const std::string& out_ref, const std::string& bin_ref,
                                               const std::string& out_got, const std::string& bin_got,
                                               double tol) {
  const auto tokens = [](const std::string& line) {
    std::vector<int> t;
    std::istringstream in(line);
    for (int x; in >> x;) t.push_back(x);
    return t;
  };
  const std::vector<int> ref = tokens(out_ref), got = tokens(out_got);
  if (ref.empty() || ref.size() != got.size() || bin_ref.size() != bin_got.size() ||
      bin_ref.size() % (4 * ref.size()) != 0)
    return ::testing::AssertionFailure() << ref.size() << " and " << got.size() << " tokens, logit dumps of "
                                         << bin_ref.size() << " and " << bin_got.size() << " bytes";
  const size_t vocab = bin_ref.size() / 4 / ref.size();
  std::vector<float> lr(bin_ref.size() / 4), lg(bin_got.size() / 4);
  std::memcpy(lr.data(), bin_ref.data(), bin_ref.size());
  std::memcpy(lg.data(), bin_got.data(), bin_got.size());
  size_t first = 0;
  while (first < ref.size() && ref[first] == got[first]) ++first;
  const size_t rows = std::min(first + 1, ref.size());
  const std::vector<float> a(lr.begin(), lr.begin() + static_cast<std::ptrdiff_t>(rows * vocab)),
      b(lg.begin(), lg.begin() + static_cast<std::ptrdiff_t>(rows * vocab));
  const double d = testing::max_abs_diff(a, b);
  if (d > tol)
    return ::testing::AssertionFailure() << "logits differ by " << d << " within the first " << rows
                                         << " steps (tolerance " << tol << ")";
  if (first == ref.size()) return ::testing::AssertionSuccess();
  std::vector<float> row(lr.begin() + static_cast<std::ptrdiff_t>(first * vocab),
                         lr.begin() + static_cast<std::ptrdiff_t>((first + 1) * vocab));
  std::partial_sort(row.begin(), row.begin() + 2, row.end(), std::greater<float>());
  if (row[0] - row[1] <= 2 * tol) return ::testing::AssertionSuccess() << "near tie at token " << first;
  return ::testing::AssertionFailure() << "token " << first << " differs (" << ref[first] << " vs " << got[first]
                                       << ") with a top-two gap of " << row[0] - row[1] << ", not a near tie";
}

// A test's own CAF system, configured as the project's processes configure theirs, to reach the
// head and the workers as a client does.
struct ClientSystem {
  caf::actor_system_config config;
  caf::actor_system system{(actors::configure_caf(config), config)};
};

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
    std::vector<std::string> args{"worker", "--head", head(), "--model", model_, "--listen", "127.0.0.1:0",
                                  "--port-file", pf, "--name", "w" + std::to_string(i)};
    // CPU workers of 2 threads, unless `extra` puts the worker on GPUs (the two exclude each other).
    if (std::find(extra.begin(), extra.end(), "--gpus") == extra.end()) {
      args.push_back("--cpu-threads");
      args.push_back("2");
    }
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

  // The head's scheduler and every worker's context actor, reached from `system` (a client's).
  caf::actor connect_head(caf::actor_system& system) const {
    return actors::connect_remote(system, "127.0.0.1", static_cast<uint16_t>(port_), std::chrono::seconds(10));
  }
  std::vector<caf::actor> connect_workers(caf::actor_system& system) const {
    std::vector<caf::actor> out;
    for (const auto& pf : worker_ports_)
      out.push_back(actors::connect_remote(system, "127.0.0.1", static_cast<uint16_t>(std::atoi(slurp(pf).c_str())),
                                           std::chrono::seconds(10)));
    return out;
  }
  // A greedy request of 300 context tokens ((i * step) % 256) that decodes for seconds (3500
  // tokens within the 4096 positions): still running while a test looks at it.
  static wire::SubmitRequest long_request(int step) {
    wire::SubmitRequest req;
    req.set_protocol_version(wire::kProtocolVersion);
    for (int i = 0; i < 300; ++i) req.add_context((i * step) % 256);
    req.add_query(7);
    req.set_max_tokens(3500);
    req.set_ignore_eos(true);
    req.mutable_sampling()->set_top_p(1.0f);  // greedy
    return req;
  }

  // Request A (a_tokens, long enough to be decoding still) on the cluster, then B once A's first
  // tokens are out, so that B joins A's batch; each must equal its own run in one process
  // (tokens exactly, logits within `tol`: a row multiplied in a batch rounds differently).
  void expect_overlapping_equal_local(int workers, const std::string& ctx_a, int a_tokens,
                                      const std::string& ctx_b, int b_tokens, double tol) {
    ASSERT_EQ(run(local(workers, request(ctx_a, a_tokens, path("a.local.bin"))), "a.local"), 0);
    ASSERT_EQ(run(local(workers, request(ctx_b, b_tokens, path("b.local.bin"))), "b.local"), 0);
    Proc a(remote(workers, request(ctx_a, a_tokens, path("a.remote.bin"))), path("a.remote.out"),
           path("a.remote.err"));
    for (int i = 0; i < 500 && a.out().empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_FALSE(a.out().empty()) << a.err();
    ASSERT_EQ(run(remote(workers, request(ctx_b, b_tokens, path("b.remote.bin"))), "b.remote"), 0)
        << slurp(path("b.remote.err"));
    ASSERT_EQ(a.wait(std::chrono::seconds(120)), 0) << a.err();
    EXPECT_EQ(a.out(), slurp(path("a.local.out")));
    EXPECT_TRUE(logits_close(slurp(path("a.remote.bin")), slurp(path("a.local.bin")), tol));
    EXPECT_EQ(slurp(path("b.remote.out")), slurp(path("b.local.out")));
    EXPECT_TRUE(logits_close(slurp(path("b.remote.bin")), slurp(path("b.local.bin")), tol));
  }

  inline static testing::TempDir* dir_ = nullptr;
  inline static std::string model_;
  std::unique_ptr<Proc> head_;
  std::vector<std::unique_ptr<Proc>> workers_;
  std::vector<std::string> worker_ports_;
  int port_ = 0;
};

}  // namespace starattn::process_cluster
