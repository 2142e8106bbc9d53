// The framed TCP front end (server/serving.proto): length-prefixed protobuf frames, one request
// at a time per connection, streamed token frames, cancel by frame or by hanging up.
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

struct TcpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: any free port
  // A frame that has started must complete within this; a connection with no request running
  // is closed after limits.idle_timeout.
  std::chrono::milliseconds frame_timeout{30000};
  ConnectionLimits limits;
  // Non-empty: the first frame of every connection must be an Auth frame with this key.
  std::string api_key;
};

class TcpServer {
 public:
  // Binds options.host:options.port itself (throws naming the address on failure).
  TcpServer(boost::asio::io_context& io, GenerationService& service, Metrics& metrics,
            TcpServerOptions options);
  // Serves on an acceptor bound earlier (its limits apply; options.host/port/limits are unused).
  TcpServer(boost::asio::io_context& io, GenerationService& service, Metrics& metrics,
            TcpServerOptions options, Acceptor bound);
  ~TcpServer();
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;
  uint16_t port() const;
  void stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace starattn::server
