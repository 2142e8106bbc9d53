// RMSNorm (Hugging Face Llama): out = weight * (x / sqrt(mean(x^2) + eps)), fp32 throughout.
// x [rows, cols] XT, weight [cols] WT, out [rows, cols] OT (bf16 or f32 each), strided rows.
// out may be x itself: each element is read (twice) by the thread that later writes it.
// add_rmsnorm: x += y (x stored in its own type), then out = rmsnorm(x) from the stored values,
// exactly as add followed by rmsnorm; one launch and one pass over the row instead of two.
#pragma once

#include "cuda/common.cuh"

namespace starattn::cuda {

constexpr int kNormThreads = 256;

// 1 / sqrt(mean(x^2) + eps) of a row from each thread's partial sum of squares `ss`: warp
// shuffles, then the 8 warp sums in warp order. Every thread of the block must call it.
__device__ __forceinline__ float block_inv_rms(float ss, int64_t cols, float eps) {
  __shared__ float partial[kNormThreads / 32];
#pragma unroll
  for (int k = 16; k > 0; k >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, k);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kNormThreads / 32; ++i) total += partial[i];
  return 1.0f / sqrtf(total / static_cast<float>(cols) + eps);
}

// out[c] = w[c] * (x[c] * inv_rms) over the columns this thread owns (the same ones it summed).
template <class XT, class WT, class OT>
__device__ __forceinline__ void rmsnorm_scale_row(const XT* xr, const WT* w, OT* out, int64_t cols,
                                                  float inv_rms) {
  for (int64_t c = threadIdx.x; c < cols; c += kNormThreads)
    out[c] = from_f32<OT>(to_f32(w[c]) * (to_f32(xr[c]) * inv_rms));
}

// grid rows, block 256.
template <class XT, class WT, class OT>
__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_kernel(const XT* x, int64_t x_stride, const WT* w, OT* out, int64_t out_stride,
                   int64_t cols, float eps) {
  const XT* xr = x + static_cast<int64_t>(blockIdx.x) * x_stride;
  OT* yr = out + static_cast<int64_t>(blockIdx.x) * out_stride;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += kNormThreads) {
    const float v = to_f32(xr[c]);
    ss = fmaf(v, v, ss);
  }
  rmsnorm_scale_row(xr, w, yr, cols, block_inv_rms(ss, cols, eps));
}

// grid rows, block 256. out must not overlap x or y.
template <class XT, class YT, class WT, class OT>
__global__ void __launch_bounds__(kNormThreads)
    add_rmsnorm_kernel(XT* x, int64_t x_stride, const YT* y, int64_t y_stride, const WT* w, OT* out,
                       int64_t out_stride, int64_t cols, float eps) {
  XT* xr = x + static_cast<int64_t>(blockIdx.x) * x_stride;
  const YT* yr = y + static_cast<int64_t>(blockIdx.x) * y_stride;
  OT* orow = out + static_cast<int64_t>(blockIdx.x) * out_stride;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += kNormThreads) {
    const XT stored = from_f32<XT>(to_f32(xr[c]) + to_f32(yr[c]));
    xr[c] = stored;
    const float v = to_f32(stored);
    ss = fmaf(v, v, ss);
  }
  // Each thread reads back the very elements it stored above.
  rmsnorm_scale_row(xr, w, orow, cols, block_inv_rms(ss, cols, eps));
}

template <class XT, class YT, class WT, class OT>
void launch_add_rmsnorm(XT* x, int64_t x_stride, const YT* y, int64_t y_stride, const WT* w, OT* out,
                        int64_t out_stride, int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  add_rmsnorm_kernel<XT, YT, WT, OT><<<static_cast<unsigned>(rows), kNormThreads, 0, stream>>>(
      x, x_stride, y, y_stride, w, out, out_stride, cols, eps);
  check_launch("add_rmsnorm_kernel");
}

template <class XT, class WT, class OT>
void launch_rmsnorm(const XT* x, int64_t x_stride, const WT* w, OT* out, int64_t out_stride,
                    int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  rmsnorm_kernel<XT, WT, OT><<<static_cast<unsigned>(rows), kNormThreads, 0, stream>>>(
      x, x_stride, w, out, out_stride, cols, eps);
  check_launch("rmsnorm_kernel");
}

}  // namespace starattn::cuda
