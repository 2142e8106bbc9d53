// The client-facing servers (HTTP/SSE and framed TCP) of `serve` and `serve-local`, over any
// GenerationService, run until a stop signal.
#pragma once

#include <string>

#include <boost/asio/io_context.hpp>

#include "runtime/generation_service.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "tools/starattn/args.h"

namespace starattn::cli {

// HTTP options from --max-body-bytes, --header-timeout-ms, --body-timeout-ms, --api-key-env and
// --http (default_listen when absent). Throws on a bad value, so callers can check the options
// before loading a model.
server::HttpServerOptions http_options(const Args& args, const std::string& default_listen);

// Owns what the servers and the service's callbacks use. Construct it before the service and
// let it be destroyed after: the service's last callbacks post to `io`.
class FrontEnds {
 public:
  // Serves HTTP (when want_http; --http or default_http) and framed TCP (when --tcp is given) for
  // `service` on --io-threads threads until a stop signal; the servers are closed on return.
  // `name` prefixes the log lines; the listening addresses go to stdout.
  void serve(GenerationService& service, const Args& args, bool want_http,
             const std::string& default_http, const char* name);

  server::Metrics metrics;
  boost::asio::io_context io;
};

}  // namespace starattn::cli
