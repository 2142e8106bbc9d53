// The CUDA backend: bf16 activations, weights and KV cache on one GPU, fp32 accumulation.
// Kernels live in the cuda/*.cuh headers; GEMMs go through cuBLAS.
#pragma once

#include <memory>

#include "runtime/backend.h"

namespace starattn {

// Binds `device` (cudaSetDevice) and creates the backend's stream and cuBLAS handle; throws
// std::runtime_error naming the problem when there is no such device.
std::unique_ptr<Backend> make_cuda_backend(int device);

// Whether at least one CUDA device is usable (false, not an exception, when no driver/GPU).
bool cuda_device_available();

}  // namespace starattn
