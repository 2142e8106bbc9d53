// Row-wise elementwise ops on strided [rows, cols] matrices (element types bf16 or f32, math in
// fp32): dtype conversion copies, SwiGLU, residual add, bias add, embedding gather.
// Launch shape for all: block 256 threads over columns, grid (ceil(cols / 256), min(rows, 65535))
// with a loop over rows, so any number of rows works.
#pragma once

#include <algorithm>

#include "cuda/common.cuh"

namespace starattn::cuda {

constexpr int kEwThreads = 256;

inline dim3 ew_grid(int64_t rows, int64_t cols) {
  return dim3(static_cast<unsigned>(ceil_div(cols, kEwThreads)),
              static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
}

// dst = convert(src)
template <class In, class Out>
__global__ void convert_kernel(const In* src, int64_t src_stride, Out* dst, int64_t dst_stride,
                               int64_t rows, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kEwThreads + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    dst[r * dst_stride + c] = from_f32<Out>(to_f32(src[r * src_stride + c]));
}

// out = silu(gate) * up, silu(g) = g / (1 + exp(-g)) (-> -0 for very negative g, as on the cpu).
template <class T>
__global__ void swiglu_kernel(const T* gate, int64_t g_stride, const T* up, int64_t u_stride, T* out,
                              int64_t o_stride, int64_t rows, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kEwThreads + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float g = to_f32(gate[r * g_stride + c]);
    out[r * o_stride + c] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[r * u_stride + c]));
  }
}

// x += y
template <class XT, class YT>
__global__ void add_kernel(XT* x, int64_t x_stride, const YT* y, int64_t y_stride, int64_t rows,
                           int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kEwThreads + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    x[r * x_stride + c] = from_f32<XT>(to_f32(x[r * x_stride + c]) + to_f32(y[r * y_stride + c]));
}

// out[r, :] += bias[:]
template <class OT, class BT>
__global__ void bias_add_kernel(OT* out, int64_t stride, const BT* bias, int64_t rows, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kEwThreads + threadIdx.x;
  if (c >= cols) return;
  const float b = to_f32(bias[c]);
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    out[r * stride + c] = from_f32<OT>(to_f32(out[r * stride + c]) + b);
}

// out[r, :] = table[ids[r], :]; ids int32 on the device, already checked against the table.
template <class TT, class OT>
__global__ void embedding_kernel(const int32_t* ids, const TT* table, int64_t t_stride, OT* out,
                                 int64_t o_stride, int64_t rows, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kEwThreads + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    out[r * o_stride + c] = from_f32<OT>(to_f32(table[static_cast<int64_t>(ids[r]) * t_stride + c]));
}

// Several same-dtype copies in one launch (Backend::copy_batch: a batched decode step's K/V
// appends, one row per request and layer). Item i copies src_i [rows_i, cols_i] to dst_i (strides
// in elements) with blocks [first_block_i, ...), one per (row, 256-column slab): rows_i *
// col_blocks_i of them. Elements are moved as raw bits of their size (T: 2 or 4 bytes), so the
// copy is exact whatever the dtype.
struct CopyBatchItem {
  const void* src;
  void* dst;
  int64_t src_stride, dst_stride;
  int64_t cols;
  int64_t col_blocks;
  int64_t first_block;
};

template <class T>
__global__ void copy_batch_kernel(const CopyBatchItem* items, int n_items) {
  const int64_t b = blockIdx.x;
  const CopyBatchItem& it = items[item_of_block(items, n_items, b)];
  const int64_t local = b - it.first_block;
  const int64_t r = local / it.col_blocks;
  const int64_t c = (local % it.col_blocks) * kEwThreads + threadIdx.x;
  if (c >= it.cols) return;
  static_cast<T*>(it.dst)[r * it.dst_stride + c] = static_cast<const T*>(it.src)[r * it.src_stride + c];
}

// items: a device copy; blocks: the sum of the items' rows_i * col_blocks_i; elem_bytes 2 or 4.
inline void launch_copy_batch(const CopyBatchItem* items, int n_items, int64_t blocks, int elem_bytes,
                              cudaStream_t stream) {
  if (n_items == 0 || blocks == 0) return;
  if (blocks > 0x7fffffff) throw std::invalid_argument("copy_batch: more than 2^31 blocks");
  if (elem_bytes == 2) copy_batch_kernel<uint16_t><<<static_cast<unsigned>(blocks), kEwThreads, 0, stream>>>(items, n_items);
  else if (elem_bytes == 4) copy_batch_kernel<uint32_t><<<static_cast<unsigned>(blocks), kEwThreads, 0, stream>>>(items, n_items);
  else throw std::invalid_argument("copy_batch: elements of " + std::to_string(elem_bytes) + " bytes");
  check_launch("copy_batch_kernel");
}

template <class In, class Out>
void launch_convert(const In* src, int64_t src_stride, Out* dst, int64_t dst_stride, int64_t rows,
                    int64_t cols, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  convert_kernel<In, Out><<<ew_grid(rows, cols), kEwThreads, 0, stream>>>(src, src_stride, dst,
                                                                           dst_stride, rows, cols);
  check_launch("convert_kernel");
}

template <class T>
void launch_swiglu(const T* gate, int64_t g_stride, const T* up, int64_t u_stride, T* out,
                   int64_t o_stride, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  swiglu_kernel<T><<<ew_grid(rows, cols), kEwThreads, 0, stream>>>(gate, g_stride, up, u_stride,
                                                                    out, o_stride, rows, cols);
  check_launch("swiglu_kernel");
}

template <class XT, class YT>
void launch_add(XT* x, int64_t x_stride, const YT* y, int64_t y_stride, int64_t rows, int64_t cols,
                cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  add_kernel<XT, YT><<<ew_grid(rows, cols), kEwThreads, 0, stream>>>(x, x_stride, y, y_stride, rows, cols);
  check_launch("add_kernel");
}

template <class OT, class BT>
void launch_bias_add(OT* out, int64_t stride, const BT* bias, int64_t rows, int64_t cols,
                     cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  bias_add_kernel<OT, BT><<<ew_grid(rows, cols), kEwThreads, 0, stream>>>(out, stride, bias, rows, cols);
  check_launch("bias_add_kernel");
}

template <class TT, class OT>
void launch_embedding(const int32_t* ids, const TT* table, int64_t t_stride, OT* out,
                      int64_t o_stride, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  embedding_kernel<TT, OT><<<ew_grid(rows, cols), kEwThreads, 0, stream>>>(ids, table, t_stride, out,
                                                                            o_stride, rows, cols);
  check_launch("embedding_kernel");
}

}  // namespace starattn::cuda
