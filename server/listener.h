// The listening socket both front ends (HTTP, framed TCP) open the same way.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include <boost/asio/ip/tcp.hpp>

namespace starattn::server {

// Opens `acceptor` on host:port (port 0: any free port) with SO_REUSEADDR and starts listening.
// Throws std::invalid_argument for a malformed host and std::runtime_error when the address
// cannot be bound, both naming `protocol` ("HTTP", "framed TCP") and the address.
inline void listen_on(boost::asio::ip::tcp::acceptor& acceptor, const std::string& host, uint16_t port,
                      const std::string& protocol) {
  namespace net = boost::asio;
  boost::system::error_code ec;
  const auto address = net::ip::make_address(host, ec);
  if (ec) throw std::invalid_argument("bad " + protocol + " listen address '" + host + "': " + ec.message());
  const net::ip::tcp::endpoint endpoint(address, port);
  acceptor.open(endpoint.protocol());
  acceptor.set_option(net::socket_base::reuse_address(true));
  acceptor.bind(endpoint, ec);
  if (ec)
    throw std::runtime_error("cannot listen for " + protocol + " on " + host + ":" + std::to_string(port) + ": " +
                             ec.message());
  acceptor.listen(net::socket_base::max_listen_connections);
}

}  // namespace starattn::server
