// starattn serve-local: the HTTP and framed TCP servers over an in-process Engine (no cluster).
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "runtime/engine.h"
#include "server/engine_service.h"
#include "tools/starattn/args.h"
#include "tools/starattn/model_options.h"
#include "tools/starattn/commands.h"
#include "tools/starattn/front_ends.h"
#include "tools/starattn/signals.h"

namespace starattn::cli {
namespace {

const char* kServeLocalHelp =
    "usage: starattn serve-local [--model DIR] [--http HOST:PORT] [--tcp HOST:PORT] [options]\n"
    "Serves the model from an in-process Engine: OpenAI-style HTTP (POST /v1/completions,\n"
    "/v1/chat/completions, GET /health, /metrics) and the framed TCP protocol of\n"
    "`starattn client`. Without --http and --tcp it listens for HTTP on 127.0.0.1:8000.\n"
    "The ports are bound before the model loads; port 0 picks a free port; the addresses are\n"
    "printed to stdout once bound. One access-log line per request goes to stderr.\n\n"
    "  --model DIR            the model (default: the one `starattn run` uses, from\n"
    "                         deploy/fetch-model.sh: $STARATTN_MODELS or ~/.cache/starattn/models)\n"
    "  --http HOST:PORT       HTTP address (default 127.0.0.1:8000 when --tcp is not given)\n"
    "  --tcp HOST:PORT        framed TCP address\n"
    "  --workers W            in-process context workers per engine (default 1)\n"
    "  --engines E            engine replicas serving requests in parallel (default 1)\n"
    "  --context-cache-bytes N  K/V of encoded blocks each engine keeps for later requests\n"
    "                         sharing whole blocks (context reuse; default 2 GiB, evicted\n"
    "                         first when a request needs the memory; 0: off)\n"
    "  --io-threads N         network threads (default 2)\n"
    "  --max-batch N          requests one engine decodes together, one token each per\n"
    "                         step; more wait in the queue (default 64)\n"
    "  --max-queue N          requests waiting beyond the running ones (default 256)\n"
    "  --phase1-chunk N       a request admitted while others decode encodes its context in\n"
    "                         chunks of N rows between their steps (default 512; 0: at once)\n"
    "  --phase1-share F       each step runs only the layers of a chunk that fit F times the\n"
    "                         last decode step's time (default 0.5; 0: whole chunks)\n"
    "  --max-context-tokens N refuse larger contexts (default: what KV memory allows)\n"
    "  --max-body-bytes N     HTTP body limit (default 8 MiB)\n"
    "  --header-timeout-ms N  time for a request's headers (default 10000)\n"
    "  --body-timeout-ms N    time for a request's body (default 30000)\n"
    "%s"
    "  --api-key-env VAR      the API key is in $VAR: HTTP needs 'Authorization: Bearer KEY' on\n"
    "                         every endpoint but /health, framed TCP an Auth frame first\n"
    "                         (starattn client --api-key-env)\n"
    "  --model-name NAME      the model's name in responses (default: the directory name)\n"
    "  --random-weights       --model is a config.json; random weights of its shape\n"
    "  --device cpu|cuda      backend (default cpu); --gpu N picks the device\n"
    "  --threads N            cpu threads (default: all cores)\n"
    "  --log-level L          error, warn, info (default) or debug\n";

}  // namespace

int cmd_serve_local(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::printf(kServeLocalHelp, kConnectionLimitsHelp);
    return 0;
  }
  const Args args(argc, argv, 2,
                  {"model", "http", "tcp", "workers", "engines", "context-cache-bytes", "io-threads",
                   "max-batch", "max-queue", "phase1-chunk", "phase1-share", "max-context-tokens", "max-body-bytes",
                   "header-timeout-ms", "body-timeout-ms", "api-key-env", "model-name", "device", "gpu", "threads"},
                  {"random-weights"}, {&connection_limit_options()});
  server::EngineServiceOptions so;
  so.engine.random_weights = args.flag("random-weights");
  so.engine.model = so.engine.random_weights ? args.require("model") : model_path(args);
  so.engine.device = args.get("device", "cpu");
  so.engine.gpu = static_cast<int>(args.get_int("gpu", 0));
  so.engine.workers = static_cast<int>(args.get_int("workers", 1));
  so.engine.threads = static_cast<int>(args.get_int("threads", 0));
  so.engines = static_cast<int>(args.get_int("engines", 1));
  so.engine.context_cache_bytes = args.get_int("context-cache-bytes", int64_t{2} << 30);
  so.engine.phase1_chunk_tokens = args.get_int("phase1-chunk", so.engine.phase1_chunk_tokens);
  so.engine.phase1_step_share = args.get_double("phase1-share", so.engine.phase1_step_share);
  so.max_batch = static_cast<int>(args.get_int("max-batch", 64));
  so.max_queue = static_cast<int>(args.get_int("max-queue", 256));
  so.max_context_tokens = args.get_int("max-context-tokens", 0);
  so.model_name = args.get("model-name", "");

  const bool want_http = args.has("http") || !args.has("tcp");
  install_stop_signals();
  FrontEnds front;  // outlives the service, whose engine threads' callbacks post to its io_context
  // Bound first: a taken port or a bad option fails before the (possibly long) model load.
  front.bind(args, want_http, "127.0.0.1:8000");
  const LoadLog load = begin_load("serve-local", so.engine.model + " (" + std::to_string(so.engines) +
                                                     " engine(s) x " + std::to_string(so.engine.workers) +
                                                     " context worker(s), " + so.engine.device + ")");
  server::EngineService service(so);
  end_load(load);
  front.serve(service, args, want_http, "127.0.0.1:8000", "serve-local");
  return 0;
}

}  // namespace starattn::cli
