// Where the data plane listens. UCX's tcp transport opens a listening socket on every network
// interface it finds; a process should only be reachable where it said it is. These helpers
// name the interface behind an address, so the process can hold UCX to it (UCX_NET_DEVICES).
#pragma once

#include <cstdint>
#include <string>

namespace starattn::transport {

// The interface that carries `ip` ("lo" for 127.0.0.1, "eth0", ...); "" for a wildcard
// (0.0.0.0, ::) or an address no interface of this host has.
std::string interface_of_address(const std::string& ip);

// The local address this host uses to reach host:port (the route's source; nothing is sent).
// "" when it cannot be found.
std::string local_address_towards(const std::string& host, uint16_t port);

// Holds this process's UCX network devices to `devices` (a UCX_NET_DEVICES list: "lo", "eth0",
// "eth0,mlx5_0:1"); must come before the first UcxContext::get(). An explicit UCX_NET_DEVICES in
// the environment wins. Returns the list in force ("all" when unrestricted).
std::string restrict_ucx_net_devices(const std::string& devices);

// The usual call: `explicit_devices` when given (--data-plane-devices), else the interface of
// `advertised_ip`; logs nothing, returns what restrict_ucx_net_devices returns.
std::string bind_data_plane(const std::string& explicit_devices, const std::string& advertised_ip);

}  // namespace starattn::transport
