// The listening side every port of ours shares (HTTP, framed TCP, the head's worker port): it
// binds, accepts, and holds each port to its limits. A connection beyond the total cap or the
// cap per client address is refused at once (closed with a reset) and counted in /metrics by
// reason; an admitted one gets a slot that frees its place when the session lets go of it. The
// idle timeout is the sessions' to enforce (only they know when a connection is idle); they read
// it from limits().
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace starattn::server {

class Metrics;

struct ConnectionLimits {
  size_t max_connections = 1024;  // open at once on this port; 0: no cap
  size_t max_per_peer = 256;      // open at once from one client IP address; 0: no cap
  // A connection with nothing in progress that stays silent this long is closed; 0: never.
  std::chrono::milliseconds idle_timeout{60000};
};

// Held by a session for as long as its connection counts against the limits.
using ConnectionSlot = std::shared_ptr<void>;

class Acceptor {
 public:
  using Handler = std::function<void(boost::asio::ip::tcp::socket socket, ConnectionSlot slot)>;

  // Binds host:port (port 0: any free port) and listens at once, so a taken port is found before
  // anything slow (a model load) happens; connections wait in the backlog until start(). Throws
  // std::invalid_argument for a malformed host and std::runtime_error when the address cannot be
  // bound, naming `name` ("http", "tcp", "worker") and the address. `metrics` (may be null)
  // must outlive every slot.
  Acceptor(boost::asio::io_context& io, std::string name, const std::string& host, uint16_t port,
           ConnectionLimits limits, Metrics* metrics);
  ~Acceptor();
  Acceptor(Acceptor&&) noexcept;
  Acceptor& operator=(Acceptor&&) noexcept;

  // Accepts until stop(); each admitted connection goes to `handler` on a strand of its own.
  void start(Handler handler);
  void stop();  // closes the listening socket; admitted connections live on

  uint16_t port() const;
  const std::string& name() const;
  const ConnectionLimits& limits() const;
  size_t open_connections() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace starattn::server
