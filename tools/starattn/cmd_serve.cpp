// starattn serve: the head of a cluster (scheduler + query actor), published for workers and
// clients through CAF's middleman.
#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include "actors/cluster.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"
#include "tools/starattn/signals.h"

namespace starattn::cli {
namespace {

const char* kServeHelp =
    "usage: starattn serve --listen HOST:PORT --model DIR [options]\n"
    "Runs the head of a cluster: the scheduler (workers register with it, clients submit to it)\n"
    "and the query actor. Stops on SIGINT/SIGTERM.\n\n"
    "  --listen HOST:PORT     address to accept workers and clients on (port 0: any free port)\n"
    "  --port-file F          write the port actually bound to F\n"
    "  --device cpu|cuda      backend of the query actor (default cpu); --gpu N picks the device\n"
    "  --threads N            cpu threads (default: all cores)\n"
    "  --exchange-timeout S   fail a request when a layer's replies take longer (default 30)\n"
    "  --quiet                no per-request log lines on stderr\n";

}  // namespace

int cmd_serve(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::fputs(kServeHelp, stdout);
    return 0;
  }
  const Args args(argc, argv, 2,
                  {"listen", "model", "port-file", "device", "gpu", "threads", "exchange-timeout"},
                  {"quiet"});
  const auto [host, port] = actors::parse_host_port(args.require("listen"), "listen");
  auto model = std::make_shared<actors::ModelHost>(
      args.require("model"), args.get("device", "cpu"), static_cast<int>(args.get_int("gpu", 0)),
      static_cast<int>(args.get_int("threads", 0)));
  install_stop_signals();

  caf::actor_system_config config;
  actors::configure_caf(config);
  caf::actor_system system{config};
  const auto timeout = std::chrono::milliseconds(
      static_cast<int64_t>(args.get_double("exchange-timeout", 30) * 1000));
  actors::Head head = actors::spawn_head(system, model, !args.flag("quiet"), timeout);
  const char* bind = (host == "0.0.0.0" || host == "*") ? nullptr : host.c_str();
  auto bound = system.middleman().publish(head.scheduler, port, bind, true);
  if (!bound) {
    actors::stop_actors(system, {head.scheduler, head.query});
    throw std::runtime_error("cannot listen on " + host + ":" + std::to_string(port) + ": " +
                             system.render(bound.error()));
  }
  if (args.has("port-file")) std::ofstream(args.get("port-file", "")) << *bound << "\n";
  std::fprintf(stderr, "starattn serve: listening on %s:%u (protocol %u, model %s)\n", host.c_str(),
               static_cast<unsigned>(*bound), wire::kProtocolVersion, model->digest().c_str());
  while (!stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "starattn serve: stopping\n");
  actors::stop_actors(system, {head.scheduler, head.query});
  return 0;
}

}  // namespace starattn::cli
