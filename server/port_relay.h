// Our acceptor in front of a port that has no limits of its own: CAF 0.17's middleman (the
// head's worker port) has no idle timeout and no connection cap, so it listens on loopback on an
// ephemeral port and this relay takes the public address. Each admitted connection gets a
// connection to the target, and bytes go both ways unchanged (TLS included); a connection silent
// in both directions for limits.idle_timeout is closed. Runs on its own thread, so it works
// whether or not the process serves HTTP.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "server/acceptor.h"

namespace starattn::server {

class Metrics;

class PortRelay {
 public:
  // Binds host:port at once (throws as Acceptor does); relays nothing until start().
  PortRelay(std::string name, const std::string& host, uint16_t port, ConnectionLimits limits,
            Metrics* metrics);
  ~PortRelay();  // stops accepting, closes every relayed connection, joins the thread
  PortRelay(const PortRelay&) = delete;
  PortRelay& operator=(const PortRelay&) = delete;

  // Forwards admitted connections to target_host:target_port (a numeric address).
  void start(const std::string& target_host, uint16_t target_port);
  uint16_t port() const;
  size_t open_connections() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace starattn::server
