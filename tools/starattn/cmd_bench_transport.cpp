// starattn bench-transport: the data plane's Q -> (O, lse) round trip between two processes.
//
// A child process plays a context worker that answers at once (no attention compute), so the
// figure is the transport's share of a phase-2 exchange: UCX active messages with the same
// headers and payload sizes the runtime sends. UCX picks the transport (shared memory on one
// host); UCX_TLS=tcp measures the network path.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "actors/messages.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"
#include "transport/ucx_endpoint.h"
#include "transport/wire.h"

namespace starattn::cli {
namespace {

using transport::AmMessage;

volatile std::sig_atomic_t g_child_stop = 0;

// The child: replies to every AttendRequest with an O + lse payload of the right size.
[[noreturn]] void serve_echo(int address_pipe, int heads, int head_dim) {
  std::signal(SIGTERM, [](int) { g_child_stop = 1; });
  int rc = 0;
  try {
    transport::UcxWorker ucx;
    ucx.listen(actors::kAmAttend);
    const std::string& addr = ucx.address();
    const uint32_t n = static_cast<uint32_t>(addr.size());
    if (write(address_pipe, &n, 4) != 4 ||
        write(address_pipe, addr.data(), addr.size()) != static_cast<ssize_t>(addr.size()))
      throw std::runtime_error("cannot hand the address to the parent");
    close(address_pipe);
    AmMessage m;
    while (!g_child_stop) {
      bool busy = ucx.progress();
      while (ucx.poll(m)) {
        busy = true;
        const auto req = wire::decode<wire::AttendRequest>(m.header, "the benchmark");
        const int64_t T = req.rows();
        auto out = std::make_shared<std::vector<char>>(
            static_cast<size_t>(T * (heads * head_dim + heads)) * sizeof(float));
        wire::AttendReply r;
        r.set_protocol_version(wire::kProtocolVersion);
        r.set_request_id(req.request_id());
        r.set_seq(req.seq());
        r.set_rows(T);
        ucx.send_reply(m, actors::kAmAttendReply, wire::encode(r), out);
      }
      if (!busy) ucx.wait(100);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-transport server: %s\n", e.what());
    rc = 1;
  }
  std::_Exit(rc);
}

}  // namespace

int cmd_bench_transport(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::printf(
        "usage: starattn bench-transport [--rows 1,16,256] [--heads 32] [--head-dim 128]\n"
        "                                [--iters N] [--warmup N]\n"
        "Measures the data plane's Q -> (O, lse) round trip to a second process over UCX\n"
        "(UCX picks the transport; set UCX_TLS=tcp for the network path). Rows are query rows\n"
        "per exchange: 1 is a decode step, more is a query prefill.\n");
    return 0;
  }
  const Args args(argc, argv, 2, {"rows", "heads", "head-dim", "iters", "warmup"}, {});
  const auto rows = parse_id_list(args.get("rows", "1,16,256"), "rows");
  const int heads = static_cast<int>(args.get_int("heads", 32));
  const int head_dim = static_cast<int>(args.get_int("head-dim", 128));
  const int iters = static_cast<int>(args.get_int("iters", 2000));
  const int warmup = static_cast<int>(args.get_int("warmup", 200));
  if (heads < 1 || head_dim < 1 || iters < 1 || warmup < 0)
    throw std::invalid_argument("--heads, --head-dim and --iters must be positive");

  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
  // Fork before any UCX state exists in this process.
  const pid_t child = fork();
  if (child < 0) throw std::runtime_error("fork failed");
  if (child == 0) {
    close(fds[0]);
    serve_echo(fds[1], heads, head_dim);
  }
  close(fds[1]);
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      kill(pid, SIGTERM);
      int status = 0;
      waitpid(pid, &status, 0);
    }
  } reaper{child};
  uint32_t n = 0;
  if (read(fds[0], &n, 4) != 4 || n == 0 || n > (1u << 20))
    throw std::runtime_error("the benchmark's server process did not start");
  std::string address(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t k = read(fds[0], address.data() + got, n - got);
    if (k <= 0) throw std::runtime_error("reading the server's address failed");
    got += static_cast<size_t>(k);
  }
  close(fds[0]);

  transport::UcxWorker ucx;
  ucx.listen(actors::kAmAttendReply);
  const auto ep = ucx.connect(address, "the benchmark server");
  const char* tls = std::getenv("UCX_TLS");
  std::printf("UCX memory types: %s (device memory %s); UCX_TLS=%s\n",
              transport::UcxContext::get()->memory_types().c_str(),
              transport::UcxContext::get()->device_memory_supported() ? "direct" : "staged via host",
              tls ? tls : "(default)");
  std::printf("%6s %12s %12s %10s %10s %10s %10s\n", "rows", "q bytes", "o+lse bytes", "min us",
              "p50 us", "p99 us", "mean us");
  uint64_t seq = 0;
  for (int32_t T : rows) {
    if (T < 1) throw std::invalid_argument("--rows entries must be positive");
    const int64_t cols = static_cast<int64_t>(heads) * head_dim;
    auto q = std::make_shared<std::vector<char>>(static_cast<size_t>(T * cols) * sizeof(float), 1);
    std::vector<double> us;
    for (int i = 0; i < warmup + iters; ++i) {
      wire::AttendRequest h;
      h.set_protocol_version(wire::kProtocolVersion);
      h.set_request_id(1);
      h.set_rows(T);
      h.set_cols(cols);
      h.set_seq(++seq);
      const auto t0 = std::chrono::steady_clock::now();
      ucx.send(ep, actors::kAmAttend, wire::encode(h), q, true);
      AmMessage m;
      bool done = false;
      const auto deadline = t0 + std::chrono::seconds(10);
      while (!done) {
        ucx.progress();
        while (ucx.poll(m))
          if (wire::decode<wire::AttendReply>(m.header, "the server").seq() == seq) done = true;
        std::string why;
        if (ucx.failed(ep, &why)) throw std::runtime_error(why);
        if (std::chrono::steady_clock::now() > deadline)
          throw std::runtime_error("no reply within 10 s");
      }
      if (i >= warmup)
        us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(us.begin(), us.end());
    double mean = 0;
    for (double v : us) mean += v;
    mean /= static_cast<double>(us.size());
    std::printf("%6d %12lld %12lld %10.1f %10.1f %10.1f %10.1f\n", T,
                static_cast<long long>(T * cols * 4),
                static_cast<long long>(T * (cols + heads) * 4), us.front(), us[us.size() / 2],
                us[std::min(us.size() - 1, us.size() * 99 / 100)], mean);
    std::fflush(stdout);
  }
  ucx.disconnect(ep);
  return 0;
}

}  // namespace starattn::cli
