// Which path carries a request's Q and (O, lse) between the query actor and one context worker.
//
// The nearest path wins (DESIGN.md, data plane): a worker in the same process whose shards live
// on the query's own backend is called directly on device buffers; a worker in another process
// of the same host, both on GPUs that share memory by CUDA IPC, gets Q and writes (O, lse) GPU to
// GPU; a GPU worker on another host, when both ends' UCX takes device pointers, gets them from
// device memory to device memory over UCX (GPUDirect RDMA where the NIC can register GPU memory,
// else UCX's own pinned staging); everything else goes over UCX, staged through host memory by
// us. The choice is a pure function of where both ends run, so it is unit-tested without GPUs or
// a network.
#pragma once

#include <cstdint>
#include <string>

namespace starattn::transport {

// Where a process runs. host_id is the same for every process under one kernel (network
// namespaces on one machine share GPUs, so they are one host here); process_id is unique.
struct PeerPlace {
  std::string host_id;
  uint64_t process_id = 0;
  std::string ipc_device;  // the GPU's id when the backend can share memory by CUDA IPC, else ""
  bool ucx_device = false;  // the backend is a GPU and the process's UCX takes device pointers
};

// This process, with the given backend's IPC device id ("" for none) and whether UCX can carry
// its device memory. STARATTN_HOST_ID overrides the host id (tests that pretend to be several
// hosts).
PeerPlace this_process(const std::string& ipc_device, bool ucx_device = false);
// The host id alone (boot id + hostname, or STARATTN_HOST_ID).
const std::string& this_host_id();
uint64_t this_process_id();

enum class DataPath {
  in_process,  // direct calls on the query's backend: no copy, no transport
  cuda_ipc,    // GPU to GPU between processes of one host; UCX carries only small signals
  ucx,         // UCX active messages with host (staged) payloads
  ucx_device,  // UCX active messages from and into device memory (GPUDirect or UCX-staged)
};
const char* data_path_name(DataPath path);

struct PathChoice {
  DataPath path = DataPath::ucx;
  std::string reason;  // why, for logs and tests
};

// `peer_on_our_backend`: the peer's shards were found in this process's directory and compute on
// the same backend object as the query side (only meaningful when process ids match).
PathChoice choose_data_path(const PeerPlace& self, const PeerPlace& peer, bool peer_on_our_backend);

}  // namespace starattn::transport
