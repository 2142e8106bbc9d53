// Exact merge of attention partials (DESIGN.md 1), fp32:
//   m = max_r l_r;  w_r = exp(l_r - m);  Z = sum_r w_r;  o = sum_r (w_r / Z) o_r;  l = m + ln Z.
// A shard with l_r = -inf weighs 0; when every shard is -inf (or there are none) o = 0 and
// l = -inf, never NaN.
//
// Shapes: every shard r has o_r [T, H * D] (InT: bf16 or f32) and lse_r [T, H] f32, natural
// log; the result o [T, H * D] (OutT) and lse [T, H] f32. The output may be the very views of one
// shard: each lane reads every shard's element before it writes that element, and lse is
// written after the whole warp is done reading.
//
// One warp per (row, head); lanes stride over D. Shards come through an accessor so the same
// kernel merges a list of tensors (merge_partials) and the key splits of decode attention.
#pragma once

#include <cmath>

#include "cuda/common.cuh"

namespace starattn::cuda {

// One shard of a list, as the kernel reads it from device memory.
struct ShardDesc {
  const void* o;
  const float* lse;
  int64_t o_stride;    // elements between rows of o
  int64_t lse_stride;  // elements between rows of lse
};

// Shards given as an array of descriptors in device memory.
template <class InT>
struct ShardList {
  const ShardDesc* shards;
  __device__ float lse(int s, int64_t t, int h) const {
    return shards[s].lse[t * shards[s].lse_stride + h];
  }
  __device__ float o(int s, int64_t t, int64_t col) const {
    return to_f32(static_cast<const InT*>(shards[s].o)[t * shards[s].o_stride + col]);
  }
};

// Shards laid out at a fixed distance from each other in one f32 buffer (decode key splits).
struct UniformShards {
  const float* o_base;
  const float* lse_base;
  int64_t o_stride, lse_stride;              // within a shard
  int64_t o_shard_stride, lse_shard_stride;  // between shards
  __device__ float lse(int s, int64_t t, int h) const {
    return lse_base[s * lse_shard_stride + t * lse_stride + h];
  }
  __device__ float o(int s, int64_t t, int64_t col) const {
    return o_base[s * o_shard_stride + t * o_stride + col];
  }
};

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int k = 16; k > 0; k >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, k));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int k = 16; k > 0; k >>= 1) x += __shfl_xor_sync(0xffffffffu, x, k);
  return x;
}

constexpr int kMergeWarps = 8;

// grid ceil(T * H / 8), block 256 threads.
template <class OutT, class Shards>
__global__ void __launch_bounds__(kMergeWarps * 32)
    merge_partials_kernel(const Shards shards, int n, OutT* o, int64_t o_stride, float* lse,
                          int64_t lse_stride, int64_t T, int H, int D) {
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kMergeWarps + (threadIdx.x >> 5);
  if (item >= T * H) return;  // uniform per warp
  const int64_t t = item / H;
  const int h = static_cast<int>(item % H);

  float m = -INFINITY;
  for (int s = lane; s < n; s += 32) m = fmaxf(m, shards.lse(s, t, h));
  m = warp_max(m);
  OutT* orow = o + t * o_stride + static_cast<int64_t>(h) * D;
  if (m == -INFINITY) {
    for (int d = lane; d < D; d += 32) orow[d] = from_f32<OutT>(0.0f);
    __syncwarp();
    if (lane == 0) lse[t * lse_stride + h] = -INFINITY;
    return;
  }
  float z = 0.0f;
  for (int s = lane; s < n; s += 32) z += expf(shards.lse(s, t, h) - m);
  z = warp_sum(z);
  const float inv_z = 1.0f / z;
  for (int d = lane; d < D; d += 32) {
    float acc = 0.0f;
    for (int s = 0; s < n; ++s) {
      const float w = expf(shards.lse(s, t, h) - m);  // same value on every lane: a broadcast
      if (w != 0.0f) acc += w * shards.o(s, t, static_cast<int64_t>(h) * D + d);
    }
    orow[d] = from_f32<OutT>(acc * inv_z);
  }
  __syncwarp();  // every lane has read every shard's lse
  if (lane == 0) lse[t * lse_stride + h] = m + logf(z);
}

template <class OutT, class Shards>
void launch_merge_partials(const Shards& shards, int n, OutT* o, int64_t o_stride, float* lse,
                           int64_t lse_stride, int64_t T, int H, int D, cudaStream_t stream) {
  if (T == 0 || H == 0) return;
  const int64_t blocks = ceil_div(T * H, kMergeWarps);
  merge_partials_kernel<OutT, Shards><<<static_cast<unsigned>(blocks), kMergeWarps * 32, 0, stream>>>(
      shards, n, o, o_stride, lse, lse_stride, T, H, D);
  check_launch("merge_partials_kernel");
}

}  // namespace starattn::cuda
