// "HOST:PORT" addresses as the command line takes them (--listen, --head, --http, --tcp,
// --connect): one parser, so every option follows the same rules and names itself in errors.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace starattn::transport {

struct HostPort {
  std::string host;  // without brackets: "127.0.0.1", "::1", "node7"
  uint16_t port = 0;
};

// "host:port", "[v6]:port"; port 0 means "any free port" where the caller binds. An IPv6
// address must be bracketed (its colons would otherwise be ambiguous). Throws
// std::invalid_argument naming `option` ("--listen", ...) and what is wrong with the value.
HostPort parse_host_port(const std::string& text, const std::string& option);

// The inverse: "host:port", brackets around an IPv6 host.
std::string format_host_port(const std::string& host, uint16_t port);

}  // namespace starattn::transport
