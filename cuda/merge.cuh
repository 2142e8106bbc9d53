// Exact merge of attention partials (DESIGN.md 1), fp32:
//   m = max_r l_r;  w_r = exp(l_r - m);  Z = sum_r w_r;  o = sum_r (w_r / Z) o_r;  l = m + ln Z.
// A shard with l_r = -inf weighs 0; when every shard is -inf (or there are none) o = 0 and
// l = -inf, never NaN.
//
// Shapes: every shard r has o_r [T, H * D] (InT: bf16 or f32) and lse_r [T, H] f32, natural
// log; the result o [T, H * D] (OutT) and lse [T, H] f32. The output may be the very views of one
// shard: each thread reads every shard's element before it writes that element, and lse is
// written after the whole block is done reading.
//
// One block per (row, head); threads stride over D. Shards come through an accessor so the same
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

// Up to this many shards travel inside the kernel's parameters (no host->device copy per call).
constexpr int kInlineShards = 16;

// Shards given by value in the kernel parameters (n <= kInlineShards). The kernel takes its
// Shards as a __grid_constant__ parameter, so indexing this array reads parameter memory.
template <class InT>
struct InlineShards {
  ShardDesc shards[kInlineShards];
  __device__ float lse(int s, int64_t t, int h) const {
    return shards[s].lse[t * shards[s].lse_stride + h];
  }
  __device__ float o(int s, int64_t t, int64_t col) const {
    return to_f32(static_cast<const InT*>(shards[s].o)[t * shards[s].o_stride + col]);
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

constexpr int kMergeThreads = 128;
constexpr int kMergeChunk = 512;  // shard weights staged in shared memory per pass

// grid T * H (one block per (row, head)), block 128 threads. The block reduces max and sum of
// the shards' lse with all its threads, stages the weights exp(l_r - m) in shared memory, and
// then every thread owns output columns d (tid, tid + 128, ...) and walks the shards, 8 loads in
// flight, instead of one warp walking them one by one (decode merges 50+ key splits).
// One block's work: row t, head h. Shared by the one-call kernel and the batched decode's merge
// (attention_decode_batch.cuh), so both merge the same way, bit for bit.
template <class OutT, class Shards>
__device__ __forceinline__ void merge_row_head(const Shards& shards, int n, OutT* o, int64_t o_stride,
                                               float* lse, int64_t lse_stride, const int64_t t,
                                               const int h, int D) {
  __shared__ float red[kMergeThreads / 32];
  __shared__ float wts[kMergeChunk];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  float m = -INFINITY;
  for (int s = tid; s < n; s += kMergeThreads) m = fmaxf(m, shards.lse(s, t, h));
  m = warp_max(m);
  if (lane == 0) red[warp] = m;
  __syncthreads();
  m = red[0];
#pragma unroll
  for (int w = 1; w < kMergeThreads / 32; ++w) m = fmaxf(m, red[w]);
  __syncthreads();  // red is reused below
  OutT* orow = o + t * o_stride + static_cast<int64_t>(h) * D;
  if (m == -INFINITY) {  // uniform over the block
    for (int d = tid; d < D; d += kMergeThreads) orow[d] = from_f32<OutT>(0.0f);
    if (tid == 0) lse[t * lse_stride + h] = -INFINITY;
    return;
  }
  float z = 0.0f;
  for (int s = tid; s < n; s += kMergeThreads) z += expf(shards.lse(s, t, h) - m);
  z = warp_sum(z);
  if (lane == 0) red[warp] = z;
  __syncthreads();
  z = 0.0f;
#pragma unroll
  for (int w = 0; w < kMergeThreads / 32; ++w) z += red[w];
  const float inv_z = 1.0f / z;

  constexpr int kCols = 2;  // columns per thread held in registers (D <= 256 in one pass)
  for (int d0 = 0; d0 < D; d0 += kCols * kMergeThreads) {
    float acc[kCols] = {0.0f, 0.0f};
    for (int c0 = 0; c0 < n; c0 += kMergeChunk) {
      const int cn = n - c0 < kMergeChunk ? n - c0 : kMergeChunk;
      __syncthreads();  // the previous chunk's weights are no longer read
      for (int s = tid; s < cn; s += kMergeThreads) wts[s] = expf(shards.lse(c0 + s, t, h) - m);
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int d = d0 + c * kMergeThreads + tid;
        if (d >= D) break;
        const int64_t col = static_cast<int64_t>(h) * D + d;
        float a = acc[c];
        int s = 0;
        for (; s + 8 <= cn; s += 8) {
          float v[8];
#pragma unroll
          for (int u = 0; u < 8; ++u) v[u] = wts[s + u] != 0.0f ? shards.o(c0 + s + u, t, col) : 0.0f;
#pragma unroll
          for (int u = 0; u < 8; ++u) a = fmaf(wts[s + u], v[u], a);
        }
        for (; s < cn; ++s)
          if (wts[s] != 0.0f) a = fmaf(wts[s], shards.o(c0 + s, t, col), a);
        acc[c] = a;
      }
    }
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int d = d0 + c * kMergeThreads + tid;
      if (d < D) orow[d] = from_f32<OutT>(acc[c] * inv_z);
    }
  }
  __syncthreads();  // lse may be a shard's own view: every thread is done reading it
  if (tid == 0) lse[t * lse_stride + h] = m + logf(z);
}

template <class OutT, class Shards>
__global__ void __launch_bounds__(kMergeThreads)
    merge_partials_kernel(const __grid_constant__ Shards shards, int n, OutT* o, int64_t o_stride,
                          float* lse, int64_t lse_stride, int64_t T, int H, int D) {
  const int64_t item = blockIdx.x;
  merge_row_head<OutT, Shards>(shards, n, o, o_stride, lse, lse_stride, item / H,
                               static_cast<int>(item % H), D);
}

// Several merges in one launch (Backend::merge_partials_batch): item i merges its n_i shards,
// descs[first_desc_i, first_desc_i + n_i), into o_i [T_i, H * D] and lse_i [T_i, H]; its blocks
// are [first_block_i, first_block_i + T_i * H), one per (row, head) as merge_partials_kernel,
// through the same merge_row_head, so each item equals its own merge_partials call bit for bit.
// Every item's shards are InT and its output OutT.
template <class OutT>
struct MergeListItem {
  int64_t first_desc;
  int n;
  OutT* o;
  int64_t o_stride;
  float* lse;
  int64_t lse_stride;
  int64_t first_block;
};

template <class InT, class OutT>
__global__ void __launch_bounds__(kMergeThreads)
    merge_list_batch_kernel(const ShardDesc* descs, const MergeListItem<OutT>* items, int n_items, int H,
                            int D) {
  const int64_t b = blockIdx.x;
  const MergeListItem<OutT>& it = items[item_of_block(items, n_items, b)];
  const int64_t local = b - it.first_block;
  merge_row_head<OutT, ShardList<InT>>(ShardList<InT>{descs + it.first_desc}, it.n, it.o, it.o_stride, it.lse,
                                       it.lse_stride, local / H, static_cast<int>(local % H), D);
}

// descs / items: device copies; blocks: the sum of the items' T_i * H.
template <class InT, class OutT>
void launch_merge_list_batch(const ShardDesc* descs, const MergeListItem<OutT>* items, int n_items, int64_t blocks,
                             int H, int D, cudaStream_t stream) {
  if (n_items == 0 || blocks == 0) return;
  if (blocks > 0x7fffffff) throw std::invalid_argument("merge_partials_batch: more than 2^31 (row, head) pairs");
  merge_list_batch_kernel<InT, OutT><<<static_cast<unsigned>(blocks), kMergeThreads, 0, stream>>>(descs, items,
                                                                                                   n_items, H, D);
  check_launch("merge_list_batch_kernel");
}

template <class OutT, class Shards>
void launch_merge_partials(const Shards& shards, int n, OutT* o, int64_t o_stride, float* lse,
                           int64_t lse_stride, int64_t T, int H, int D, cudaStream_t stream) {
  if (T == 0 || H == 0) return;
  const int64_t blocks = T * H;
  if (blocks > 0x7fffffff) throw std::invalid_argument("merge_partials: more than 2^31 (row, head) pairs");
  merge_partials_kernel<OutT, Shards><<<static_cast<unsigned>(blocks), kMergeThreads, 0, stream>>>(
      shards, n, o, o_stride, lse, lse_stride, T, H, D);
  check_launch("merge_partials_kernel");
}

}  // namespace starattn::cuda
