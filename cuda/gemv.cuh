// One-row matmul (every decode step): out[1, N] = x[1, K] * w[N, K]^T (+ bias), bf16 x and w,
// fp32 accumulation. A decode step is a weight stream: every byte of w is read once, so the
// kernel is built for bytes in flight, not for reuse. cuBLAS picks GEMM tiles for M = 1 that
// reach only ~1.5 TB/s on 4096 x 4096 (docs/PERFORMANCE.md).
//
// Schedule: x is staged once per block in (dynamic) shared memory; each warp owns one row of w and its
// lanes read it in 16-byte chunks (8 bf16), kGemvUnroll chunks per lane in flight, through the
// non-coherent path (w is read-only); a warp reduction gives the dot product. block 256 threads
// (8 rows), grid ceil(N / 8).
//
// Requirements (the caller falls back to cuBLAS otherwise): K % 8 == 0, x and every row of w
// 16-byte aligned, K * 2 bytes of x fit in 48 KiB of shared memory.
#pragma once

#include "cuda/common.cuh"

namespace starattn::cuda {

constexpr int kGemvWarps = 8;
constexpr int kGemvUnroll = 8;
constexpr int64_t kGemvMaxK = 24 * 1024;  // x in static shared memory: 48 KiB of bf16

__device__ __forceinline__ uint4 ldg_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ float dot8(const uint4& a, const uint4& b) {
  const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(pa[i]);
    const float2 fb = __bfloat1622float2(pb[i]);
    s = fmaf(fa.x, fb.x, s);
    s = fmaf(fa.y, fb.y, s);
  }
  return s;
}

// BT: bias element type (ignored when bias is null).
template <class OutT, class BT>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_bf16_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w, int64_t w_stride,
                     const BT* __restrict__ bias, OutT* __restrict__ out, int64_t N, int64_t K) {
  extern __shared__ uint4 sx[];  // K / 8 chunks of x
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t chunks = K / 8;
  const uint4* x4 = reinterpret_cast<const uint4*>(x);
  for (int64_t c = tid; c < chunks; c += kGemvWarps * 32) sx[c] = x4[c];
  __syncthreads();
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp;
  if (n >= N) return;
  const uint4* wr = reinterpret_cast<const uint4*>(w + n * w_stride);
  float acc = 0.0f;
  int64_t c = lane;
  for (; c + (kGemvUnroll - 1) * 32 < chunks; c += kGemvUnroll * 32) {
    uint4 v[kGemvUnroll];
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) v[u] = ldg_stream(wr + c + u * 32);
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) acc += dot8(v[u], sx[c + u * 32]);
  }
  for (; c < chunks; c += 32) acc += dot8(ldg_stream(wr + c), sx[c]);
#pragma unroll
  for (int k = 16; k > 0; k >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, k);
  if (lane == 0) {
    if (bias != nullptr) acc += to_f32(bias[n]);
    out[n] = from_f32<OutT>(acc);
  }
}

// Whether the one-row kernel takes this product (pointers as byte addresses).
inline bool gemv_supported(const void* x, const void* w, int64_t w_stride, int64_t K) {
  return K > 0 && K % 8 == 0 && K <= kGemvMaxK && w_stride % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

template <class OutT, class BT>
void launch_gemv_bf16(const bf16* x, const bf16* w, int64_t w_stride, const BT* bias, OutT* out, int64_t N,
                      int64_t K, cudaStream_t stream) {
  if (N == 0) return;
  const int64_t blocks = ceil_div(N, kGemvWarps);
  const size_t smem = static_cast<size_t>(K) * sizeof(bf16);
  gemv_bf16_kernel<OutT, BT><<<static_cast<unsigned>(blocks), kGemvWarps * 32, smem, stream>>>(x, w, w_stride, bias,
                                                                                              out, N, K);
  check_launch("gemv_bf16_kernel");
}

}  // namespace starattn::cuda
