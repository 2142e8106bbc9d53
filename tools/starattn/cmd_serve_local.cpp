// starattn serve-local: the HTTP and framed TCP servers over an in-process Engine (no cluster).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "server/client.h"
#include "server/engine_service.h"
#include "server/http_server.h"
#include "server/tcp_server.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"
#include "tools/starattn/front_ends.h"
#include "tools/starattn/signals.h"

namespace starattn::cli {
namespace {

const char* kServeLocalHelp =
    "usage: starattn serve-local --model DIR [--http HOST:PORT] [--tcp HOST:PORT] [options]\n"
    "Serves the model from an in-process Engine: OpenAI-style HTTP (POST /v1/completions,\n"
    "/v1/chat/completions, GET /health, /metrics) and the framed TCP protocol of\n"
    "`starattn client`. Without --http and --tcp it listens for HTTP on 127.0.0.1:8000.\n"
    "Port 0 picks a free port; the addresses are printed to stdout once listening.\n\n"
    "  --http HOST:PORT        HTTP address (default 127.0.0.1:8000 when --tcp is not given)\n"
    "  --tcp HOST:PORT         framed TCP address\n"
    "  --workers W             in-process context workers per engine (default 1)\n"
    "  --engines E             engine replicas serving requests in parallel (default 1)\n"
    "  --io-threads N          network threads (default 2)\n"
    "  --max-queue N           requests waiting beyond the running ones (default 256)\n"
    "  --max-context-tokens N  refuse larger contexts (default: what KV memory allows)\n"
    "  --max-body-bytes N      HTTP body limit (default 8 MiB)\n"
    "  --header-timeout-ms N   time for a request's headers (default 10000)\n"
    "  --body-timeout-ms N     time for a request's body (default 30000)\n"
    "  --api-key-env VAR       require 'Authorization: Bearer $VAR' (not for /health)\n"
    "  --model-name NAME       the model's name in responses (default: the directory name)\n"
    "  --random-weights        --model is a config.json; random weights of its shape\n"
    "  --device cpu|cuda       backend (default cpu); --gpu N picks the device\n"
    "  --threads N             cpu threads (default: all cores)\n";

}  // namespace

int cmd_serve_local(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::fputs(kServeLocalHelp, stdout);
    return 0;
  }
  const Args args(argc, argv, 2,
                  {"model", "http", "tcp", "workers", "engines", "io-threads", "max-queue",
                   "max-context-tokens", "max-body-bytes", "header-timeout-ms", "body-timeout-ms",
                   "api-key-env", "model-name", "device", "gpu", "threads"},
                  {"random-weights"});
  server::EngineServiceOptions so;
  so.engine.model = args.require("model");
  so.engine.random_weights = args.flag("random-weights");
  so.engine.device = args.get("device", "cpu");
  so.engine.gpu = static_cast<int>(args.get_int("gpu", 0));
  so.engine.workers = static_cast<int>(args.get_int("workers", 1));
  so.engine.threads = static_cast<int>(args.get_int("threads", 0));
  so.engines = static_cast<int>(args.get_int("engines", 1));
  so.max_queue = static_cast<int>(args.get_int("max-queue", 256));
  so.max_context_tokens = args.get_int("max-context-tokens", 0);
  so.model_name = args.get("model-name", "");

  const bool want_http = args.has("http") || !args.has("tcp");
  http_options(args, "127.0.0.1:8000");  // a bad option fails before the model loads

  install_stop_signals();
  FrontEnds front;  // outlives the service, whose engine threads' callbacks post to its io_context
  server::EngineService service(so);
  std::fprintf(stderr, "starattn serve-local: model %s, %d engine(s) x %d context worker(s); Ctrl-C stops\n",
               service.info().model.c_str(), so.engines, so.engine.workers);
  front.serve(service, args, want_http, "127.0.0.1:8000", "starattn serve-local");
  return 0;
}

}  // namespace starattn::cli
