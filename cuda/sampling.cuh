// Greedy token selection on the device: the lowest index among the largest logits, exactly the
// argmax of starattn::sample_token. The same pass reports the first NaN or +inf logit so the
// backend can refuse it as sample_token does. Seeded sampling copies the row to the host and
// calls sample_token, which is the contract.
//
// logits [rows, n] (T: bf16 or f32; rows `stride` elements apart, each contiguous). result
// int32[rows][2] on the device: {argmax, first index holding NaN or +inf, or -1} per row.
#pragma once

#include <climits>

#include "cuda/common.cuh"

namespace starattn::cuda {

constexpr int kArgmaxThreads = 1024;

// (v, i) beats (bv, bi) when larger, or equal with a lower index.
__device__ __forceinline__ void argmax_step(float& bv, int& bi, float v, int i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

// grid rows, block 1024: one row of a few hundred thousand logits is a few microseconds.
template <class T>
__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_kernel(const T* logits, int64_t stride, int n, int32_t* result) {
  logits += static_cast<int64_t>(blockIdx.x) * stride;
  result += 2 * static_cast<int64_t>(blockIdx.x);
  __shared__ float s_v[kArgmaxThreads / 32];
  __shared__ int s_i[kArgmaxThreads / 32];
  __shared__ int s_bad[kArgmaxThreads / 32];
  float bv = -INFINITY;
  int bi = INT_MAX, bad = INT_MAX;
  for (int i = threadIdx.x; i < n; i += kArgmaxThreads) {
    const float v = to_f32(logits[i]);
    if (isnan(v) || v == INFINITY) bad = min(bad, i);
    else argmax_step(bv, bi, v, i);
  }
#pragma unroll
  for (int k = 16; k > 0; k >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, k);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, k);
    argmax_step(bv, bi, ov, oi);
    bad = min(bad, __shfl_xor_sync(0xffffffffu, bad, k));
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    s_v[warp] = bv;
    s_i[warp] = bi;
    s_bad[warp] = bad;
  }
  __syncthreads();
  if (warp == 0) {
    bv = s_v[lane];
    bi = s_i[lane];
    bad = s_bad[lane];
#pragma unroll
    for (int k = 16; k > 0; k >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, k);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, k);
      argmax_step(bv, bi, ov, oi);
      bad = min(bad, __shfl_xor_sync(0xffffffffu, bad, k));
    }
    if (lane == 0) {
      result[0] = bi == INT_MAX ? 0 : bi;
      result[1] = bad == INT_MAX ? -1 : bad;
    }
  }
}

template <class T>
void launch_argmax(const T* logits, int64_t rows, int64_t stride, int n, int32_t* result, cudaStream_t stream) {
  if (rows <= 0) return;
  argmax_kernel<T><<<static_cast<unsigned>(rows), kArgmaxThreads, 0, stream>>>(logits, stride, n, result);
  check_launch("argmax_kernel");
}

}  // namespace starattn::cuda
