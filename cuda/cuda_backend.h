// The CUDA backend: bf16 activations, weights and KV cache on one GPU, fp32 accumulation.
// Kernels live in the cuda/*.cuh headers; GEMMs go through cuBLAS.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/backend.h"

namespace starattn {

// Binds `device` (cudaSetDevice) and creates the backend's stream and cuBLAS handle; throws
// std::runtime_error naming the problem when there is no such device.
std::unique_ptr<Backend> make_cuda_backend(int device);

// Whether at least one CUDA device is usable (false, not an exception, when no driver/GPU).
bool cuda_device_available();

// ---- benchmark support (the backend must be the cuda one; std::invalid_argument otherwise) ----
// Calls fn `warmup` times, then `iters` times each between two CUDA events recorded on the
// backend's stream (fn must queue its work there: any backend op does); returns the per-call
// device times in milliseconds.
std::vector<double> cuda_event_times_ms(Backend& be, const std::function<void()>& fn, int warmup, int iters);
// Device-to-device copy bandwidth of a `bytes` buffer in GB/s, bytes read plus bytes written
// (median of `iters` cudaMemcpyAsync).
double cuda_copy_bandwidth_gbs(Backend& be, int64_t bytes, int iters);
// High water mark of the bytes held by the backend's allocations (weights, KV, activations;
// not cuBLAS's or the decode split scratch); reset: start a new mark at the current level.
int64_t cuda_peak_allocated_bytes(Backend& be, bool reset);
// STARATTN_PROFILE=1: prints the per-op profile recorded since the last call (op -> count, total
// ms, per section the engine named: phase1, prefill, decode) to stderr under `label`, then resets
// it. No-op when the variable is unset (the profile is also printed when the backend is destroyed).
void cuda_profile_report(Backend& be, const std::string& label);
// Whether this backend's prefill attention runs the Hopper wgmma kernel (an sm_90 GPU, a build
// with sm_90a device code, the variant not overridden), rather than the mma.sync fallback.
bool cuda_prefill_uses_wgmma(Backend& be);
// "NVIDIA H200, 132 SMs, 143771 MiB, sm_90, driver ..., runtime ...".
std::string cuda_device_description(Backend& be);

}  // namespace starattn
