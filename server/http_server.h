// The HTTP front end (Boost.Beast): OpenAI-style completions and chat completions, streamed as
// server-sent events or answered whole, plus /health, /metrics and /v1/models. Every connection
// is a session on a strand of the shared io_context, so any number of threads may run it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>

#include "runtime/generation_service.h"
#include "server/acceptor.h"
#include "server/metrics.h"

namespace starattn::server {

struct HttpServerOptions {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  uint16_t port = 0;               // 0: any free port (see HttpServer::port())
  std::string bearer_token;        // non-empty: every endpoint but /health needs it
  size_t max_body_bytes = 8u << 20;
  size_t max_header_bytes = 16u << 10;
  // A client has this long to send a request's headers (also the keep-alive idle limit) and
  // then its body; a slow or stalled client gets 408 and is disconnected.
  std::chrono::milliseconds header_timeout{10000};
  std::chrono::milliseconds body_timeout{30000};
  // A stream whose client stops reading for this long is cancelled.
  std::chrono::milliseconds write_timeout{60000};
  // Caps on connections; limits.idle_timeout also bounds the wait for the next request on a
  // kept-alive connection (the smaller of it and header_timeout applies).
  ConnectionLimits limits;
};

class HttpServer {
 public:
  // Binds and starts accepting at once (throws naming the address on failure); the caller runs
  // `io` on as many threads as it likes. `service` and `metrics` must outlive the server.
  HttpServer(boost::asio::io_context& io, GenerationService& service, Metrics& metrics,
             HttpServerOptions options);
  // Serves on an acceptor bound earlier (its limits apply; options.host/port/limits are unused).
  HttpServer(boost::asio::io_context& io, GenerationService& service, Metrics& metrics,
             HttpServerOptions options, Acceptor bound);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const;
  // Stops accepting; open sessions finish on their own.
  void stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace starattn::server
