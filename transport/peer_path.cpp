#include "transport/peer_path.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <random>

namespace starattn::transport {

const std::string& this_host_id() {
  static const std::string id = [] {
    if (const char* env = std::getenv("STARATTN_HOST_ID"); env && *env) return std::string(env);
    std::string boot;
    std::ifstream f("/proc/sys/kernel/random/boot_id");
    std::getline(f, boot);
    char name[256] = {};
    gethostname(name, sizeof(name) - 1);
    return boot + "/" + name;
  }();
  return id;
}

uint64_t this_process_id() {
  static const uint64_t id = [] {
    std::random_device rd;
    uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(getpid());
    return v == 0 ? 1 : v;
  }();
  return id;
}

PeerPlace this_process(const std::string& ipc_device, bool ucx_device) {
  return {this_host_id(), this_process_id(), ipc_device, ucx_device};
}

const char* data_path_name(DataPath path) {
  switch (path) {
    case DataPath::in_process: return "in-process";
    case DataPath::cuda_ipc: return "cuda_ipc";
    case DataPath::ucx: return "ucx";
    case DataPath::ucx_device: return "ucx_device";
  }
  return "?";
}

PathChoice choose_data_path(const PeerPlace& self, const PeerPlace& peer, bool peer_on_our_backend) {
  const bool same_host = !self.host_id.empty() && self.host_id == peer.host_id;
  const bool same_process = same_host && self.process_id != 0 && self.process_id == peer.process_id;
  if (same_process) {
    if (peer_on_our_backend) return {DataPath::in_process, "same process, same backend"};
    // CUDA IPC handles cannot be opened by the process that made them.
    return {DataPath::ucx, "same process but another backend: staged"};
  }
  if (same_host) {
    if (!self.ipc_device.empty() && !peer.ipc_device.empty())
      return {DataPath::cuda_ipc, self.ipc_device == peer.ipc_device
                                      ? "same host, same GPU"
                                      : "same host, GPU peers"};
    if (self.ucx_device && peer.ucx_device)
      return {DataPath::ucx_device, "same host, no CUDA IPC on both ends: device memory over UCX"};
    return {DataPath::ucx, "same host, no CUDA IPC on both ends: staged"};
  }
  if (self.ucx_device && peer.ucx_device)
    return {DataPath::ucx_device, "another host: device memory over UCX"};
  return {DataPath::ucx, self.ucx_device || peer.ucx_device
                             ? "another host, one end's UCX or backend without device memory: staged"
                             : "another host: staged"};
}

}  // namespace starattn::transport
