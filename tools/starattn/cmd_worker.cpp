// starattn worker: one process per host; one context_block actor per GPU (or one on the cpu),
// registered with the head.
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "actors/cluster.h"
#include "transport/address.h"
#include "transport/net_devices.h"
#include "actors/context_block.h"
#include "runtime/log.h"
#include "tools/starattn/args.h"
#include "tools/starattn/model_options.h"
#include "tools/starattn/commands.h"
#include "tools/starattn/front_ends.h"
#include "tools/starattn/signals.h"

namespace starattn::cli {
namespace {

const char* kWorkerHelp =
    "usage: starattn worker --head HOST:PORT --model DIR [--gpus 0,1 | --cpu-threads N] [options]\n"
    "Serves context blocks for a head: one context actor per GPU, or one on the cpu backend.\n"
    "Waits for the head to come up; exits when the head goes away or on SIGINT/SIGTERM.\n\n"
    "  --head HOST:PORT       the head's --listen address\n"
    "  --data-plane-devices L UCX network devices of the data plane (UCX_NET_DEVICES list, e.g.\n"
    "                         eth0,mlx5_0:1); default: the interface of --listen, else the one\n"
    "                         that reaches the head\n"
    "  --gpus LIST            GPU indices (cuda backend), one context actor each\n"
    "  --cpu-threads N        cpu backend threads (default: all cores)\n"
    "  --listen HOST:PORT     also publish the context actors here (status, probing); actor i\n"
    "                         gets PORT+i (port 0: any free port); anything but a loopback\n"
    "                         address needs the --tls-* files or --insecure\n"
    "  --tls-cert F           this worker's certificate (PEM), --tls-key its private key, and\n"
    "  --tls-key F            --tls-ca the cluster CA: the head is reached over mutual TLS (it\n"
    "  --tls-ca F             must run with certificates of the same CA; deploy/make-certs.sh)\n"
    "  --insecure             allow a non-loopback --listen without TLS (trusted networks only)\n"
    "  --port-file F          write the published port(s) to F, one per line\n"
    "  --kv-fraction F        share of free memory offered for KV (default 0.8)\n"
    "  --kv-bytes N           each context actor offers exactly N bytes instead (K/V, activations\n"
    "                         and scratch of the planner's memory model): a fixed room\n"
    "  --context-cache-bytes N  K/V of encoded blocks kept after their requests for reuse by\n"
    "                         later ones sharing whole blocks (within the KV room, evicted when a\n"
    "                         request needs it; default: half the room; 0: off)\n"
    "  --phase1-chunk N       encode context in chunks of N rows, serving phase-2 attention of\n"
    "                         running requests between them (default 512; 0: whole blocks)\n"
    "  --phase1-slice-ms MS   run each chunk's forward in slices of the layers that fit MS\n"
    "                         milliseconds, serving phase 2 between them too (default 0: whole)\n"
    "  --phase1-share F       while streams decode over this worker, one slice per decode step\n"
    "                         of F of the step's time (default 0.5; 0: off)\n"
    "  --connect-timeout S    how long to keep trying to reach the head (default 60)\n"
    "  --name NAME            name in logs and errors (default HOST:PID)\n";

}  // namespace

int cmd_worker(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::fputs(kWorkerHelp, stdout);
    std::fputs(kWorkerPortLimitsHelp, stdout);
    return 0;
  }
  const Args args(argc, argv, 2,
                  {"head", "model", "random-weights", "weight-seed", "data-plane-devices", "gpus", "cpu-threads", "listen", "port-file", "kv-fraction", "kv-bytes", "context-cache-bytes",
                   "phase1-chunk", "phase1-slice-ms", "phase1-share", "connect-timeout", "name", "tls-cert", "tls-key", "tls-ca"},
                  {"insecure"}, {&worker_port_limit_options()});
  const auto [head_host, head_port] = transport::parse_host_port(args.require("head"), "--head");
  // The data plane listens where this worker is reachable: its --listen address, else the
  // address it reaches the head from (or --data-plane-devices).
  {
    const std::string advertised = args.has("listen")
        ? transport::parse_host_port(args.get("listen", ""), "--listen").host
        : transport::local_address_towards(head_host, head_port);
    logging::info("data plane on UCX devices: %s",
                  transport::bind_data_plane(args.get("data-plane-devices", ""), advertised).c_str());
  }

  if (args.has("gpus") && args.has("cpu-threads"))
    throw std::invalid_argument("give --gpus or --cpu-threads, not both");
  std::vector<int32_t> gpus;
  if (args.has("gpus")) gpus = parse_id_list(args.get("gpus", ""), "gpus");
  const double fraction = args.get_double("kv-fraction", 0.8);
  if (args.has("kv-fraction") && args.has("kv-bytes"))
    throw std::invalid_argument("give --kv-fraction or --kv-bytes, not both");
  const int64_t kv_bytes = args.get_int("kv-bytes", 0);
  if (args.has("kv-bytes") && kv_bytes <= 0)
    throw std::invalid_argument("--kv-bytes: a positive number of bytes");
  std::string name = args.get("name", "");
  if (name.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    name = std::string(host) + ":" + std::to_string(getpid());
  }
  const actors::TlsFiles tls = actors::tls_files(args.get("tls-cert", ""), args.get("tls-key", ""),
                                                 args.get("tls-ca", ""));
  if (args.has("listen"))
    actors::check_listen_allowed(transport::parse_host_port(args.get("listen", ""), "--listen").host,
                                 tls.enabled(), args.flag("insecure"), "listen");
  install_stop_signals();

  caf::actor_system_config config;
  actors::configure_caf(config, tls);
  caf::actor_system system{config};
  const auto patience = std::chrono::milliseconds(
      static_cast<int64_t>(args.get_double("connect-timeout", 60) * 1000));
  const caf::actor scheduler = actors::connect_remote(system, head_host, head_port, patience);

  std::vector<caf::actor> blocks;
  auto spawn = [&](const std::string& device, int gpu, int threads) {
    actors::ContextBlockOptions o;
    const LoadLog load = begin_load(name, model_label(args) + " on " + device);
    o.model = std::make_shared<actors::ModelHost>(model_load_options(args, device, gpu, threads, ""));
    end_load(load);
    o.scheduler = scheduler;
    o.device = device == "cpu" ? "cpu" : device + ":" + std::to_string(gpu);
    o.name = name + "/" + o.device;
    o.kv_fraction = fraction;
    o.kv_bytes = kv_bytes;
    o.context_cache_bytes = args.get_int("context-cache-bytes", -1);
    o.phase1_chunk_tokens = args.get_int("phase1-chunk", o.phase1_chunk_tokens);
    if (o.phase1_chunk_tokens < 0) throw std::invalid_argument("--phase1-chunk: 0 (whole blocks) or more");
    o.phase1_slice_ms = args.get_double("phase1-slice-ms", 0);
    if (!(o.phase1_slice_ms >= 0)) throw std::invalid_argument("--phase1-slice-ms: 0 (whole chunks) or more");
    o.phase1_step_share = args.get_double("phase1-share", o.phase1_step_share);
    if (!(o.phase1_step_share >= 0 && o.phase1_step_share <= 1))
      throw std::invalid_argument("--phase1-share: a fraction of a decode step, 0 (off) to 1");
    blocks.push_back(actors::spawn_context_block(system, o));
  };
  if (gpus.empty()) {
    spawn("cpu", 0, static_cast<int>(args.get_int("cpu-threads", 0)));
  } else {
    for (int32_t g : gpus) spawn("cuda", g, 0);
  }

  // Each published actor's port is our acceptor (connection limits, idle timeout) relaying to
  // the middleman, which listens on loopback only.
  std::vector<std::unique_ptr<server::PortRelay>> relays;
  if (args.has("listen")) {
    const auto [host, port] = transport::parse_host_port(args.get("listen", ""), "--listen");
    std::ofstream port_file;
    if (args.has("port-file")) port_file.open(args.get("port-file", ""));
    for (size_t i = 0; i < blocks.size(); ++i) {
      const uint16_t want = port == 0 ? 0 : static_cast<uint16_t>(port + i);
      uint16_t bound = 0;
      try {
        relays.push_back(std::make_unique<server::PortRelay>(
            "worker", host == "*" ? "0.0.0.0" : host, want, connection_limits(args, "worker-"), nullptr));
        relays.back()->start("127.0.0.1", actors::publish_actor(system, blocks[i], "127.0.0.1", 0));
        bound = relays.back()->port();
      } catch (...) {
        actors::stop_actors(system, blocks);
        throw;
      }
      if (port_file.is_open()) port_file << bound << "\n";
      logging::info("%s: context actor %zu published on %s:%u", name.c_str(), i,
                   host.c_str(), static_cast<unsigned>(bound));
    }
  }

  // Runs until a signal, or until every context actor has stopped (the head went away or
  // refused the registration).
  caf::scoped_actor self{system};
  for (const auto& b : blocks) self->monitor(b);
  size_t alive = blocks.size();
  while (alive > 0 && !stop_requested()) {
    self->receive([&](const caf::down_msg&) { --alive; },
                  caf::after(std::chrono::milliseconds(200)) >> [] {});
  }
  actors::stop_actors(system, blocks);
  const int status = alive == 0 ? 1 : 0;
  if (alive == 0) logging::warn("%s: no context actor left, exiting", name.c_str());
  exit_after(status);
  return status;
}

}  // namespace starattn::cli
