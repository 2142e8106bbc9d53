// RoPE, rotate-half layout (Hugging Face Llama), in place on x [rows, n_heads * head_dim]
// (T: bf16 or f32, strided rows). For i < head_dim / 2 the pair (x[i], x[i + half]) rotates by
// angle = float(position) * inv_freq[i] (a float32 product, as Hugging Face computes it):
//   (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin).
// positions: int32 [rows] on the device; inv_freq: f32 [head_dim / 2] on the device. Plain and
// llama3-scaled RoPE differ only in the inv_freq table, which the host computes.
#pragma once

#include "cuda/common.cuh"

namespace starattn::cuda {

constexpr int kRopeThreads = 128;

// grid rows (looping when rows exceed the grid), block 128, dynamic smem head_dim floats.
template <class T>
__global__ void __launch_bounds__(kRopeThreads)
    rope_kernel(T* x, int64_t stride, int64_t rows, int n_heads, int head_dim,
                const int32_t* positions, const float* inv_freq) {
  extern __shared__ float cs[];  // cos[half], sin[half] of this row
  const int half = head_dim / 2;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float pos = static_cast<float>(positions[r]);
    // Full-precision sincosf: angles reach ~1e5 radians at long contexts, where the fast
    // intrinsics lose all accuracy.
    for (int i = threadIdx.x; i < half; i += kRopeThreads) sincosf(pos * inv_freq[i], &cs[half + i], &cs[i]);
    __syncthreads();
    T* xr = x + r * stride;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += kRopeThreads) {
      const int h = idx / half, i = idx % half;
      T* xh = xr + static_cast<int64_t>(h) * head_dim;
      const float c = cs[i], s = cs[half + i];
      const float x0 = to_f32(xh[i]), x1 = to_f32(xh[i + half]);
      xh[i] = from_f32<T>(x0 * c - x1 * s);
      xh[i + half] = from_f32<T>(x1 * c + x0 * s);
    }
    __syncthreads();  // cs is rewritten for the next row
  }
}

template <class T>
void launch_rope(T* x, int64_t stride, int64_t rows, int n_heads, int head_dim,
                 const int32_t* positions, const float* inv_freq, cudaStream_t stream) {
  if (rows == 0) return;
  const unsigned grid = static_cast<unsigned>(rows < 65535 ? rows : 65535);
  rope_kernel<T><<<grid, kRopeThreads, head_dim * sizeof(float), stream>>>(
      x, stride, rows, n_heads, head_dim, positions, inv_freq);
  check_launch("rope_kernel");
}

}  // namespace starattn::cuda
