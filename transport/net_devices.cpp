#include "transport/net_devices.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace starattn::transport {

std::string interface_of_address(const std::string& ip) {
  in6_addr v6{};
  in_addr v4{};
  const bool is4 = inet_pton(AF_INET, ip.c_str(), &v4) == 1;
  const bool is6 = !is4 && inet_pton(AF_INET6, ip.c_str(), &v6) == 1;
  if (!is4 && !is6) return {};
  if ((is4 && v4.s_addr == htonl(INADDR_ANY)) || (is6 && IN6_IS_ADDR_UNSPECIFIED(&v6))) return {};
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return {};
  std::string name;
  for (ifaddrs* a = list; a && name.empty(); a = a->ifa_next) {
    if (!a->ifa_addr) continue;
    if (is4 && a->ifa_addr->sa_family == AF_INET &&
        reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr.s_addr == v4.s_addr)
      name = a->ifa_name;
    if (is6 && a->ifa_addr->sa_family == AF_INET6 &&
        std::memcmp(&reinterpret_cast<sockaddr_in6*>(a->ifa_addr)->sin6_addr, &v6, sizeof(v6)) == 0)
      name = a->ifa_name;
  }
  freeifaddrs(list);
  return name;
}

std::string local_address_towards(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res) return {};
  std::string out;
  const int fd = socket(res->ai_family, SOCK_DGRAM, 0);
  if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    char text[INET6_ADDRSTRLEN] = {};
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      const void* a = local.ss_family == AF_INET
                          ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr)
                          : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr);
      if (inet_ntop(local.ss_family, a, text, sizeof(text))) out = text;
    }
  }
  if (fd >= 0) close(fd);
  freeaddrinfo(res);
  return out;
}

std::string restrict_ucx_net_devices(const std::string& devices) {
  if (const char* env = std::getenv("UCX_NET_DEVICES"); env && *env) return env;
  if (devices.empty()) return "all";
  // UCX reads its configuration from the environment when the context is created.
  setenv("UCX_NET_DEVICES", devices.c_str(), 1);
  return devices;
}

std::string bind_data_plane(const std::string& explicit_devices, const std::string& advertised_ip) {
  if (!explicit_devices.empty()) return restrict_ucx_net_devices(explicit_devices);
  return restrict_ucx_net_devices(interface_of_address(advertised_ip));
}

}  // namespace starattn::transport
