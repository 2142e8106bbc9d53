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

#include "actors/data_plane.h"
#include "actors/messages.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"
#include "runtime/backend.h"
#include "transport/ucx_endpoint.h"
#include "transport/wire.h"

namespace starattn::cli {
namespace {

using transport::AmMessage;

volatile std::sig_atomic_t g_child_stop = 0;

// Gives the parent the child's UCX address (length, then bytes) and closes the pipe.
void hand_address(int address_pipe, const std::string& addr) {
  const uint32_t n = static_cast<uint32_t>(addr.size());
  if (write(address_pipe, &n, 4) != 4 ||
      write(address_pipe, addr.data(), addr.size()) != static_cast<ssize_t>(addr.size()))
    throw std::runtime_error("cannot hand the address to the parent");
  close(address_pipe);
}

// The child's loop: progress, hand every message to `on_message`, sleep when idle, until SIGTERM.
template <class OnMessage>
void serve_messages(transport::UcxWorker& ucx, OnMessage on_message) {
  AmMessage m;
  while (!g_child_stop) {
    bool busy = ucx.progress();
    while (ucx.poll(m)) {
      busy = true;
      on_message(m);
    }
    if (!busy) ucx.wait(100);
  }
}

// The child: replies to every AttendRequest with an O + lse payload of the right size.
[[noreturn]] void serve_echo(int address_pipe, int heads, int head_dim) {
  std::signal(SIGTERM, [](int) { g_child_stop = 1; });
  int rc = 0;
  try {
    transport::UcxWorker ucx;
    ucx.listen(actors::kAmAttend);
    hand_address(address_pipe, ucx.address());
    serve_messages(ucx, [&](AmMessage& m) {
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
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-transport server: %s\n", e.what());
    rc = 1;
  }
  std::_Exit(rc);
}

// The child with --device cuda: answers as a cuda_ipc worker does, without the attention
// compute: it waits on the query side's q event, copies q into o (touching the mapped memory),
// records its own event and replies, so the figure is the GPU-to-GPU path's own cost.
[[noreturn]] void serve_ipc(int address_pipe, int heads, int head_dim) {
  std::signal(SIGTERM, [](int) { g_child_stop = 1; });
  int rc = 0;
  try {
    auto be = make_backend("cuda", 0, 0);
    DeviceIpc* ipc = be->ipc();
    transport::UcxWorker ucx;
    ucx.listen(actors::kAmAttend);
    ucx.listen(actors::kAmIpcOpen);
    hand_address(address_pipe, ucx.address());
    const int64_t cols = static_cast<int64_t>(heads) * head_dim;
    Tensor q, o, lse;
    std::unique_ptr<DeviceEvent> q_event, done;
    serve_messages(ucx, [&](AmMessage& m) {
        if (m.id == actors::kAmIpcOpen) {
          const auto req = wire::decode<wire::IpcOpen>(m.header, "the benchmark");
          for (Tensor* t : {&q, &o, &lse})
            if (t->data) ipc->close_memory(*t);
          q = ipc->import_memory(req.q_handle(), DType::bf16, req.rows_capacity(), cols);
          o = ipc->import_memory(req.o_handle(), DType::bf16, req.rows_capacity(), cols);
          lse = ipc->import_memory(req.lse_handle(), DType::f32, req.rows_capacity(), heads);
          q_event = ipc->import_event(req.q_event());
          done = ipc->create_event();
          wire::IpcOpenReply r;
          r.set_request_id(req.request_id());
          r.set_seq(req.seq());
          r.set_done_event(ipc->export_event(*done));
          ucx.send_reply(m, actors::kAmIpcOpenReply, wire::encode(r), nullptr);
          return;
        }
        const auto req = wire::decode<wire::AttendRequest>(m.header, "the benchmark");
        const int64_t T = req.rows();
        ipc->wait(*q_event);
        be->copy(q.slice_rows(0, T), o.slice_rows(0, T));
        ipc->record(*done);
        wire::AttendReply r;
        r.set_request_id(req.request_id());
        r.set_seq(req.seq());
        r.set_rows(T);
        ucx.send_reply(m, actors::kAmAttendReply, wire::encode(r), nullptr);
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-transport server: %s\n", e.what());
    rc = 1;
  }
  std::_Exit(rc);
}

// The child with --device cuda --path ucx: answers as a ucx_device worker does, without the
// attention compute: q arrives in device memory (rendezvous, through the sink) or in host memory
// (eager; uploaded), is copied into the reply's O, and (O, lse) leave from device memory.
[[noreturn]] void serve_device(int address_pipe, int heads, int head_dim) {
  std::signal(SIGTERM, [](int) { g_child_stop = 1; });
  int rc = 0;
  try {
    auto be = make_backend("cuda", 0, 0);
    auto pool = std::make_shared<actors::DevicePayloadPool>(*be);
    transport::UcxWorker ucx;
    ucx.listen(actors::kAmAttend);
    ucx.set_sink(actors::kAmAttend, [&](uint16_t, const std::string&, size_t bytes) {
      auto b = pool->take(bytes);
      return transport::SinkBuffer{b, b->view().data, true};
    });
    hand_address(address_pipe, ucx.address());
    const int64_t cols = static_cast<int64_t>(heads) * head_dim;
    Buffer staged_q;
    serve_messages(ucx, [&](AmMessage& m) {
        const auto req = wire::decode<wire::AttendRequest>(m.header, "the benchmark");
        const int64_t T = req.rows();
        Tensor q{m.sunk.data, DType::bf16, T, cols, cols};
        if (!m.in_sink()) {
          if (!staged_q.allocated() || staged_q.view().rows < T) staged_q = be->alloc(T, cols, DType::bf16);
          q = staged_q.rows(0, T);
          actors::upload_activation_bytes(*be, m.payload.data(), q);
        }
        const size_t bytes = actors::partial_bytes(DType::bf16, T, cols, heads);
        auto out = pool->take(bytes);
        be->copy(q, actors::partial_in(out->view().data, DType::bf16, T, cols, heads).o);
        be->synchronize();
        wire::AttendReply r;
        r.set_protocol_version(wire::kProtocolVersion);
        r.set_request_id(req.request_id());
        r.set_seq(req.seq());
        r.set_rows(T);
        r.set_device_payload(true);
        ucx.send_reply_device(m, actors::kAmAttendReply, wire::encode(r), out->view().data, bytes, out);
    });
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
        "                                [--iters N] [--warmup N] [--device cpu|cuda]\n"
        "                                [--path ipc|ucx] [--peer-failure detect|control-plane]\n"
        "--device cuda: the cuda_ipc path (q and o, lse in device memory both processes map,\n"
        "ordered by IPC events; UCX carries the headers); the round trip includes the GPU work\n"
        "and a stream synchronisation. --device cuda --path ucx: the path to GPUs on other hosts\n"
        "(q and O, lse handed to UCX in device memory: GPUDirect RDMA or UCX's staging; with\n"
        "--peer-failure detect, UCX uses what it would between hosts).\n"
        "--peer-failure control-plane lets UCX use shared memory\n"
        "(what same-host peers use); detect forces UCX's peer-failure mode (tcp in UCX 1.13).\n"
        "Measures the data plane's Q -> (O, lse) round trip to a second process over UCX\n"
        "(UCX picks the transport; set UCX_TLS=tcp for the network path). Rows are query rows\n"
        "per exchange: 1 is a decode step, more is a query prefill.\n");
    return 0;
  }
  const Args args(argc, argv, 2,
                  {"rows", "heads", "head-dim", "iters", "warmup", "device", "path", "peer-failure"}, {});
  const bool cuda_any = args.get("device", "cpu") == "cuda";
  const std::string path = args.get("path", "ipc");
  if (path != "ipc" && path != "ucx") throw std::invalid_argument("--path is ipc or ucx, got '" + path + "'");
  if (path == "ucx" && !cuda_any) throw std::invalid_argument("--path ucx needs --device cuda");
  const bool device_ucx = cuda_any && path == "ucx";
  const bool cuda = cuda_any && !device_ucx;  // the cuda_ipc path
  if (!cuda_any && args.get("device", "cpu") != "cpu")
    throw std::invalid_argument("--device is cpu or cuda, got '" + args.get("device", "") + "'");
  const std::string failure_mode =
      args.get("peer-failure", cuda_any ? "control-plane" : "detect");
  if (failure_mode != "detect" && failure_mode != "control-plane")
    throw std::invalid_argument("--peer-failure is detect or control-plane");
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
    if (cuda) serve_ipc(fds[1], heads, head_dim);
    if (device_ucx) serve_device(fds[1], heads, head_dim);
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

  // Declared before the UCX worker, so they outlive it: its reply sink holds the device pool,
  // whose buffers go back to the backend when the worker's handlers are destroyed.
  std::unique_ptr<Backend> be;
  DeviceIpc* ipc = nullptr;
  std::shared_ptr<actors::DevicePayloadPool> pool;
  transport::UcxWorker ucx;
  ucx.listen(actors::kAmAttendReply);
  ucx.listen(actors::kAmIpcOpenReply);
  const auto ep = ucx.connect(address, "the benchmark server",
                              failure_mode == "detect"
                                  ? transport::UcxWorker::PeerFailure::detect
                                  : transport::UcxWorker::PeerFailure::control_plane);
  const auto wait_reply = [&](uint64_t want, AmMessage& m) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      ucx.progress();
      while (ucx.poll(m)) {
        const uint64_t seq_in = m.id == actors::kAmIpcOpenReply
                                 ? wire::decode<wire::IpcOpenReply>(m.header, "the server").seq()
                                 : wire::decode<wire::AttendReply>(m.header, "the server").seq();
        if (seq_in == want) return;
      }
      std::string why;
      if (ucx.failed(ep, &why)) throw std::runtime_error(why);
      if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("no reply within 10 s");
    }
  };
  if (cuda_any) {
    be = make_backend("cuda", 0, 0);
    ipc = be->ipc();
  }
  if (device_ucx) {
    if (!transport::UcxContext::get()->device_memory_supported())
      throw std::runtime_error("this UCX cannot carry device memory (memory types: " +
                               transport::UcxContext::get()->memory_types() + ")");
    pool = std::make_shared<actors::DevicePayloadPool>(*be);
    actors::sink_device_replies(ucx, pool);
  }
  const char* tls = std::getenv("UCX_TLS");
  std::printf("path: %s over %s; ",
              cuda         ? "cuda_ipc (GPU to GPU, headers over UCX)"
              : device_ucx ? "ucx_device (device memory handed to UCX)"
                           : "UCX payloads",
              ucx.transport(ep).c_str());
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
    Buffer dq, dout, dlse;
    std::unique_ptr<DeviceEvent> q_event, done;
    std::shared_ptr<Buffer> dq_send;
    Buffer eager_o;
    if (device_ucx) {
      dq_send = pool->take(static_cast<size_t>(T * cols) * 2);
      std::vector<float> ones(static_cast<size_t>(T * cols), 1.0f);
      be->upload(ones.data(), Tensor{dq_send->view().data, DType::bf16, T, cols, cols});
      eager_o = be->alloc(T, cols + heads, DType::f32);
    }
    if (cuda) {
      dq = be->alloc(T, cols, DType::bf16);
      dout = be->alloc(T, cols, DType::bf16);
      dlse = be->alloc(T, heads, DType::f32);
      std::vector<float> ones(static_cast<size_t>(T * cols), 1.0f);
      be->upload(ones.data(), dq.view());
      q_event = ipc->create_event();
      wire::IpcOpen open;
      open.set_request_id(1);
      open.set_rows_capacity(T);
      open.set_q_handle(ipc->export_memory(dq.view()));
      open.set_o_handle(ipc->export_memory(dout.view()));
      open.set_lse_handle(ipc->export_memory(dlse.view()));
      open.set_q_event(ipc->export_event(*q_event));
      open.set_seq(++seq);
      be->synchronize();
      ucx.send(ep, actors::kAmIpcOpen, wire::encode(open), nullptr, true);
      AmMessage m;
      wait_reply(seq, m);
      done = ipc->import_event(wire::decode<wire::IpcOpenReply>(m.header, "the server").done_event());
    }
    for (int i = 0; i < warmup + iters; ++i) {
      wire::AttendRequest h;
      h.set_protocol_version(wire::kProtocolVersion);
      h.set_request_id(1);
      h.set_rows(T);
      h.set_cols(cols);
      h.set_seq(++seq);
      const auto t0 = std::chrono::steady_clock::now();
      AmMessage m;
      if (cuda) {
        h.set_ipc(true);
        ipc->record(*q_event);
        ucx.send(ep, actors::kAmAttend, wire::encode(h), nullptr, true);
        wait_reply(seq, m);
        ipc->wait(*done);
        be->synchronize();
      } else if (device_ucx) {
        h.set_device_payload(true);
        be->synchronize();  // as the runtime does before handing UCX device memory
        ucx.send_device(ep, actors::kAmAttend, wire::encode(h), dq_send->view().data,
                        static_cast<size_t>(T * cols) * 2, dq_send, true);
        wait_reply(seq, m);
        // An eager reply arrived in host memory: the runtime uploads it (here as raw words).
        if (!m.in_sink()) {
          std::vector<float> words((m.payload.size() + 3) / 4);
          std::memcpy(words.data(), m.payload.data(), m.payload.size());
          be->upload(words.data(), eager_o.view().slice_cols(0, static_cast<int64_t>(
                                                                   std::min<size_t>(words.size() / T, cols + heads))));
        }
      } else {
        ucx.send(ep, actors::kAmAttend, wire::encode(h), q, true);
        wait_reply(seq, m);
      }
      if (i >= warmup)
        us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(us.begin(), us.end());
    double mean = 0;
    for (double v : us) mean += v;
    mean /= static_cast<double>(us.size());
    std::printf("%6d %12lld %12lld %10.1f %10.1f %10.1f %10.1f\n", T,
                static_cast<long long>(T * cols * (cuda_any ? 2 : 4)),
                static_cast<long long>(T * (cols * (cuda_any ? 2 : 4) + heads * 4)), us.front(), us[us.size() / 2],
                us[std::min(us.size() - 1, us.size() * 99 / 100)], mean);
    std::fflush(stdout);
  }
  ucx.disconnect(ep);
  return 0;
}

}  // namespace starattn::cli
