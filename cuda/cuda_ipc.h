// CUDA IPC for the data plane (runtime/backend.h, DeviceIpc): device memory and events shared
// between processes of one host, so Q and (O, lse) go GPU to GPU (same GPU, or peers over NVLink
// or PCIe) with no copy through host memory.
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "runtime/backend.h"

namespace starattn::cuda_detail {

// `stream` is the backend's: record() and wait() order work on it.
std::unique_ptr<DeviceIpc> make_cuda_ipc(int device, cudaStream_t stream);

}  // namespace starattn::cuda_detail
