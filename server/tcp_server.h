// The framed TCP front end (server/serving.proto): length-prefixed protobuf frames, one request
// at a time per connection, streamed token frames, cancel by frame or by hanging up.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>

#include "runtime/generation_service.h"
#include "server/metrics.h"

namespace starattn::server {

struct TcpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: any free port
  // A frame that has started must complete within this; an idle connection (no request
  // running) is closed after idle_timeout.
  std::chrono::milliseconds frame_timeout{30000};
  std::chrono::milliseconds idle_timeout{300000};
};

class TcpServer {
 public:
  TcpServer(boost::asio::io_context& io, GenerationService& service, Metrics& metrics,
            TcpServerOptions options);
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
