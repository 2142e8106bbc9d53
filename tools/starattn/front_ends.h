// The client-facing servers (HTTP/SSE and framed TCP) of `serve` and `serve-local`, over any
// GenerationService, and the limits every listening port gets. Ports are bound first (bind()),
// before the caller loads a model, so a taken port fails at once; serving starts once the
// service exists (serve()).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/io_context.hpp>

#include "runtime/generation_service.h"
#include "server/acceptor.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/port_relay.h"
#include "server/tcp_server.h"
#include "tools/starattn/args.h"

namespace starattn::cli {

// The options of the connection limits, for the option sets and --help of serve and
// serve-local (kWorkerPortOptions: serve's worker port).
extern const char* const kConnectionLimitsHelp;
extern const char* const kWorkerPortLimitsHelp;
const std::set<std::string>& connection_limit_options();
const std::set<std::string>& worker_port_limit_options();

// --max-connections, --max-connections-per-peer, --idle-timeout-ms (HTTP and framed TCP), or
// with prefix "worker-" the head's worker port. Throws naming the option on a bad value.
server::ConnectionLimits connection_limits(const Args& args, const std::string& prefix = "");

// The key named by --api-key-env ("" without it); throws when the variable is unset or empty.
std::string api_key(const Args& args);

// HTTP options from --max-body-bytes, --header-timeout-ms, --body-timeout-ms, --api-key-env,
// the connection limits and --http (default_listen when absent). Throws on a bad value, so
// callers can check the options before loading a model.
server::HttpServerOptions http_options(const Args& args, const std::string& default_listen);
server::TcpServerOptions tcp_options(const Args& args);

// The model load's log lines: "<who>: loading <what>" when it starts, "<who>: <what> loaded in
// N s" when it is done (a failure is the caller's exception).
struct LoadLog {
  std::string who, what;
  std::chrono::steady_clock::time_point start;
};
LoadLog begin_load(const std::string& who, const std::string& what);
void end_load(const LoadLog& load);
// What --model or --random-weights names, for the load's log lines.
std::string model_label(const Args& args);

// Owns what the servers and the service's callbacks use. Construct it before the service and
// let it be destroyed after: the service's last callbacks post to `io`.
class FrontEnds {
 public:
  // Binds HTTP (when want_http: --http, or default_http) and framed TCP (when --tcp is given)
  // and prints their addresses to stdout; connections wait until serve().
  void bind(const Args& args, bool want_http, const std::string& default_http);

  // The head's worker port: binds host:port behind a PortRelay with the worker-port limits
  // (start it once the middleman has published on loopback).
  std::unique_ptr<server::PortRelay> bind_worker_port(const Args& args, const std::string& host, uint16_t port);

  // Serves the bound ports (binding them first if bind() was not called) for `service` on
  // --io-threads threads until a stop signal; the servers are closed on return. `name`
  // prefixes the log lines.
  void serve(GenerationService& service, const Args& args, bool want_http, const std::string& default_http,
             const char* name);

  server::Metrics metrics;
  boost::asio::io_context io;

 private:
  bool bound_ = false;
  std::optional<server::Acceptor> http_acceptor_, tcp_acceptor_;
  server::HttpServerOptions http_options_;
  server::TcpServerOptions tcp_options_;
};

}  // namespace starattn::cli
