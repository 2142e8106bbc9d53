#include "transport/address.h"

#include <stdexcept>

namespace starattn::transport {

HostPort parse_host_port(const std::string& text, const std::string& option) {
  auto bad = [&](const std::string& why) {
    return std::invalid_argument(option + " wants HOST:PORT (or [IPv6]:PORT), got '" + text + "': " + why);
  };
  HostPort out;
  std::string port_text;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string::npos) throw bad("the '[' of an IPv6 address is not closed");
    out.host = text.substr(1, close - 1);
    if (out.host.empty()) throw bad("the host is empty");
    if (close + 1 >= text.size() || text[close + 1] != ':') throw bad("no ':PORT' after ']'");
    port_text = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string::npos) throw bad("no ':PORT'");
    out.host = text.substr(0, colon);
    if (out.host.empty()) throw bad("the host is empty");
    if (out.host.find(':') != std::string::npos) throw bad("an IPv6 address needs brackets, as in [::1]:8000");
    port_text = text.substr(colon + 1);
  }
  if (port_text.empty()) throw bad("the port is empty");
  if (port_text.find_first_not_of("0123456789") != std::string::npos)
    throw bad("the port '" + port_text + "' is not a number");
  if (port_text.size() > 5 || std::stoul(port_text) > 65535)
    throw bad("the port " + port_text + " is out of range (0-65535)");
  out.port = static_cast<uint16_t>(std::stoul(port_text));
  return out;
}

std::string format_host_port(const std::string& host, uint16_t port) {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

}  // namespace starattn::transport
