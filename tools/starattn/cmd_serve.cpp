// starattn serve: the head of a cluster (scheduler + query actor), published for workers and
// clients through CAF's middleman, and optionally the HTTP and framed TCP servers over it.
#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>
#include <tuple>
#include <vector>

#include "actors/cluster.h"
#include "transport/address.h"
#include "transport/net_devices.h"
#include "actors/scheduler_service.h"
#include "server/client.h"
#include "server/http_server.h"
#include "server/tcp_server.h"
#include "runtime/log.h"
#include "tools/starattn/args.h"
#include "tools/starattn/model_options.h"
#include "tools/starattn/commands.h"
#include "tools/starattn/front_ends.h"
#include "tools/starattn/signals.h"

namespace starattn::cli {
namespace {

const char* kServeHelp =
    "usage: starattn serve --listen HOST:PORT --model DIR [--http HOST:PORT] [--tcp HOST:PORT]\n"
    "                      [options]\n"
    "Runs the head of a cluster: the scheduler (workers register with it, clients submit to it)\n"
    "and the query actor. With --http and/or --tcp it also serves clients itself, as\n"
    "`starattn serve-local` does: OpenAI-style HTTP (POST /v1/completions, /v1/chat/completions,\n"
    "GET /health, /metrics) and the framed TCP protocol of `starattn client`. Their addresses\n"
    "are printed to stdout once listening. Stops on SIGINT/SIGTERM.\n\n"
    "  --listen HOST:PORT     address to accept workers and clients on (port 0: any free port);\n"
    "                         anything but a loopback address needs the --tls-* files or --insecure\n"
    "  --tls-cert F           this head's certificate (PEM): workers and clients connect over\n"
    "  --tls-key F            mutual TLS with it, --tls-key its private key, and must present a\n"
    "  --tls-ca F             certificate signed by the cluster CA in --tls-ca (deploy/make-certs.sh)\n"
    "  --insecure             accept unauthenticated peers on a non-loopback --listen (trusted\n"
    "                         networks only: any process reaching the port may join or submit)\n"
    "  --port-file F          write the port actually bound to F\n"
    "  --http HOST:PORT       HTTP address (loopback unless told otherwise; port 0: any free port)\n"
    "  --tcp HOST:PORT        framed TCP address\n"
    "  --io-threads N         network threads of the HTTP/TCP servers (default 2)\n"
    "  --max-running N        requests on the workers at once; more wait (default 0: no limit)\n"
    "  --max-queue N          requests waiting beyond --max-running (default 256)\n"
    "  --max-context-tokens N refuse larger contexts (default: what the workers' KV allows)\n"
    "  --max-body-bytes N     HTTP body limit (default 8 MiB)\n"
    "  --header-timeout-ms N  time for a request's headers (default 10000)\n"
    "  --body-timeout-ms N    time for a request's body (default 30000)\n"
    "  --api-key-env VAR      the API key is in $VAR: HTTP needs 'Authorization: Bearer KEY' on\n"
    "                         every endpoint but /health, framed TCP an Auth frame first\n"
    "  --model-name NAME      the model's name in responses (default: the directory name)\n"
    "  --data-plane-devices L UCX network devices of the query actor's data plane (default: the\n"
    "                         interface of --listen; all for a wildcard address)\n"
    "  --device cpu|cuda      backend of the query actor (default cpu); --gpu N picks the device\n"
    "  --threads N            cpu threads (default: all cores)\n"
    "  --exchange-timeout S   fail a request when a layer's replies take longer (default 30)\n"
    "  --request-deadline S   fail a request still running this long after its admission\n"
    "                         (default 1800; 0: none)\n"
    "  --quiet                no per-request log lines on stderr\n";

std::string default_model_name(const std::string& model) {
  std::filesystem::path p(model);
  if (!p.has_filename()) p = p.parent_path();
  return p.filename().string();
}

// The HTTP/TCP front ends over the scheduler until a stop signal. Everything here is destroyed
// before the caller stops the actors: the servers, then the service (which ends its open
// requests, whose callbacks post to `io`), then `io` (and the sessions' request handles).
void serve_clients(caf::actor_system& system, const actors::Head& head,
                   const std::shared_ptr<actors::ModelHost>& model, const Args& args,
                   FrontEnds& front) {
  actors::SchedulerServiceOptions so;
  so.model_name = args.get("model-name",
                           default_model_name(args.has("random-weights") ? args.get("random-weights", "")
                                                                         : args.require("model")));
  so.max_context_tokens = args.get_int("max-context-tokens", 0);
  so.max_queue = static_cast<int>(args.get_int("max-queue", 256));
  so.token_bytes = [model](int32_t id) { return model->tokenizer().token_bytes(id); };
  actors::SchedulerService service(system, head.scheduler, so);
  front.serve(service, args, args.has("http"), "", "starattn serve");
}

}  // namespace

int cmd_serve(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::fputs(kServeHelp, stdout);
    std::fputs(kConnectionLimitsHelp, stdout);
    std::fputs(kWorkerPortLimitsHelp, stdout);
    return 0;
  }
  const Args args(argc, argv, 2,
                  {"listen", "model", "port-file", "device", "gpu", "threads", "exchange-timeout",
                   "http", "tcp", "io-threads", "max-running", "max-queue", "max-context-tokens",
                   "max-body-bytes", "header-timeout-ms", "body-timeout-ms", "api-key-env",
                   "model-name", "tls-cert", "tls-key", "tls-ca", "random-weights", "data-plane-devices",
                   "weight-seed", "request-deadline"},
                  {"quiet", "insecure"}, {&connection_limit_options(), &worker_port_limit_options()});
  const auto [host, port] = transport::parse_host_port(args.require("listen"), "--listen");
  const actors::TlsFiles tls = actors::tls_files(args.get("tls-cert", ""), args.get("tls-key", ""),
                                                 args.get("tls-ca", ""));
  actors::check_listen_allowed(host, tls.enabled(), args.flag("insecure"), "listen");
  // The query actor's data plane listens on the --listen address's interface only.
  logging::info("data plane on UCX devices: %s",
                transport::bind_data_plane(args.get("data-plane-devices", ""), host).c_str());
  // Every port is bound before the model loads, so a taken one fails at once. The worker port
  // is our acceptor (limits on connections, idle timeout) relaying to the middleman, which
  // listens on loopback only.
  FrontEnds front;  // outlives the service, whose last callbacks post to its io_context
  const std::unique_ptr<server::PortRelay> worker_port = front.bind_worker_port(args, host, port);
  if (args.has("http") || args.has("tcp")) front.bind(args, args.has("http"), "");
  const LoadLog load = begin_load("serve", model_label(args));
  auto model = std::make_shared<actors::ModelHost>(model_load_options(
      args, args.get("device", "cpu"), static_cast<int>(args.get_int("gpu", 0)),
      static_cast<int>(args.get_int("threads", 0)), ""));
  end_load(load);
  install_stop_signals();

  caf::actor_system_config config;
  actors::configure_caf(config, tls);
  caf::actor_system system{config};
  actors::HeadOptions options;
  options.verbose = !args.flag("quiet");
  options.exchange_timeout = std::chrono::milliseconds(
      static_cast<int64_t>(args.get_double("exchange-timeout", 30) * 1000));
  const double deadline_s = args.get_double("request-deadline", 1800);
  if (!(deadline_s >= 0)) throw std::invalid_argument("--request-deadline must not be negative");
  options.request_deadline = std::chrono::milliseconds(static_cast<int64_t>(deadline_s * 1000));
  options.max_context_tokens = args.get_int("max-context-tokens", 0);
  options.max_running = static_cast<int>(args.get_int("max-running", 0));
  options.max_queue = static_cast<int>(args.get_int("max-queue", 256));
  if (options.max_running < 0 || options.max_queue < 0)
    throw std::invalid_argument("--max-running and --max-queue must not be negative");
  actors::Head head = actors::spawn_head(system, model, options);
  try {
    worker_port->start("127.0.0.1", actors::publish_actor(system, head.scheduler, "127.0.0.1", 0));
    const uint16_t bound = worker_port->port();
    if (args.has("port-file")) std::ofstream(args.get("port-file", "")) << bound << "\n";
    logging::info("serve: listening on %s:%u (%s, protocol %u, model %s)",
                 host.c_str(), static_cast<unsigned>(bound),
                 tls.enabled() ? "mutual TLS" : "no TLS", wire::kProtocolVersion,
                 model->digest().c_str());
    if (args.has("http") || args.has("tcp")) {
      serve_clients(system, head, model, args, front);
    } else {
      while (!stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      logging::info("serve: stopping");
    }
  } catch (...) {
    // The actor system's destructor would wait for the head's actors forever.
    actors::stop_actors(system, {head.scheduler, head.query});
    throw;
  }
  actors::stop_actors(system, {head.scheduler, head.query});
  exit_after(0);
  return 0;
}

}  // namespace starattn::cli
