// Shared CUDA plumbing: error checks that name the failing kernel, bf16 <-> f32 helpers and the
// PTX wrappers (cp.async, ldmatrix, mma.sync) the attention kernels are built from.
// Free of framework types so that kernels can be reused and benchmarked on their own.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace starattn::cuda {

using bf16 = __nv_bfloat16;

// Throws std::runtime_error("cuda <what>: <error string>") on failure.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("cuda ") + what + ": " + cudaGetErrorString(err) + " (" +
                             cudaGetErrorName(err) + ")");
}

// After a <<<...>>> launch: reports a bad configuration (grid, shared memory, registers) under
// the kernel's name. Faults inside the kernel surface at the next synchronising call.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// Opts a kernel into more than 48 KiB of dynamic shared memory on the current device. The
// attribute is per device, so it is remembered per (kernel, device); the kernel is a template
// argument because instantiations share one function-pointer type.
template <auto Kernel>
void allow_dynamic_smem(int bytes, const char* name) {
  static std::atomic<uint64_t> done{0};  // bit i: device i already raised
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), name);
  const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
  if (bit != 0 && (done.load(std::memory_order_relaxed) & bit)) return;
  check_cuda(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), name);
  done.fetch_or(bit, std::memory_order_relaxed);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Batched launches lay their items' blocks out one after another: item i owns blocks
// [items[i].first_block, items[i + 1].first_block). Returns the item owning block b (a binary
// search over n >= 1 items in ascending first_block).
template <class Item>
__device__ __forceinline__ int item_of_block(const Item* items, int n, int64_t b) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (items[mid].first_block <= b) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
__device__ __forceinline__ int64_t ceil_div_dev(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- element conversions (device) ----
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

// Two floats -> one register of two bf16, `lo` in the low half (the lower column index in the
// mma fragment layouts).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- asynchronous global -> shared copies (sm_80+) ----
// 16 bytes; when !valid nothing is read and the destination is zero-filled, so tiles that run
// past the end of a tensor hold zeros (never stale data that could be NaN).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---- tensor-core fragments ----
// Four 8x8 b16 matrices; lane l supplies the row address for matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                            uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                                  uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// c[16x8] += a[16x16] * b[16x8], bf16 inputs, f32 accumulators. Fragment layout, with
// g = lane / 4 and t = lane % 4:
//   a: {a0: (g, 2t..2t+1), a1: (g+8, 2t..), a2: (g, 2t+8..), a3: (g+8, 2t+8..)}
//   b: {b0: (k 2t..2t+1, n g), b1: (k 2t+8.., n g)}
//   c: {c0, c1: (g, 2t..2t+1), c2, c3: (g+8, 2t..2t+1)}
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- shared-memory tiles of head vectors ----
// A tile is ROWS x D bf16, one head vector per row, stored as 16-byte chunks with chunk c of
// row r at position c ^ (r & 7). ldmatrix reads 8 rows at one logical chunk and cp.async writes
// consecutive chunks of a row; the XOR spreads both over all 32 banks (D / 8 >= 8 chunks).
template <int D>
__device__ __forceinline__ int tile_offset(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Issues cp.async for rows [row0, row0 + ROWS) of a strided global matrix whose row r starts at
// g + r * g_stride; rows >= valid_rows are zero-filled. NTHREADS threads cooperate, `tid` is this
// thread's index among them.
template <int ROWS, int D, int NTHREADS>
__device__ __forceinline__ void load_tile_async(bf16* s, const bf16* g, int64_t g_stride,
                                                int64_t row0, int64_t valid_rows, int tid) {
  constexpr int kChunks = D / 8;
  static_assert((ROWS * kChunks) % NTHREADS == 0, "tile must split evenly over the threads");
#pragma unroll
  for (int i = 0; i < ROWS * kChunks / NTHREADS; ++i) {
    const int idx = tid + i * NTHREADS;
    const int r = idx / kChunks, c = idx % kChunks;
    const bool ok = row0 + r < valid_rows;
    const bf16* src = ok ? g + (row0 + r) * g_stride + c * 8 : g;
    cp_async_16(smem_u32(s + tile_offset<D>(r, c)), src, ok);
  }
}

// A fragments (16 rows x D) of rows [row0, row0 + 16) of a tile, for every 16-wide k step.
template <int D>
__device__ __forceinline__ void load_a_fragments(const bf16* s, int row0, int lane,
                                                 uint32_t (&a)[D / 16][4]) {
  const int r = row0 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int c = 2 * kk + (lane >> 4);
    ldmatrix_x4(smem_u32(s + tile_offset<D>(r, c)), a[kk][0], a[kk][1], a[kk][2], a[kk][3]);
  }
}

// s[16 x 8*NT] = q[16 x D] * K[key0 .. key0 + 8*NT)^T, K a tile with one key per row.
template <int D, int NT>
__device__ __forceinline__ void qk_tile(const uint32_t (&qf)[D / 16][4], const bf16* sk, int key0,
                                        int lane, float (&s)[NT][4]) {
  static_assert(NT % 2 == 0, "keys come in pairs of 8-key tiles");
#pragma unroll
  for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int n2 = 0; n2 < NT / 2; ++n2) {
      const int r = key0 + 16 * n2 + (lane & 7) + (lane >> 4) * 8;
      const int c = 2 * kk + ((lane >> 3) & 1);
      uint32_t b0, b1, b2, b3;
      ldmatrix_x4(smem_u32(sk + tile_offset<D>(r, c)), b0, b1, b2, b3);
      mma_bf16_16816(s[2 * n2], qf[kk], b0, b1);
      mma_bf16_16816(s[2 * n2 + 1], qf[kk], b2, b3);
    }
  }
}

// o[16 x D] += p[16 x 8*NT] * V[key0 .. key0 + 8*NT), p given as score accumulators (f32,
// c layout) that are rounded to bf16 here, V a tile with one key per row.
template <int D, int NT>
__device__ __forceinline__ void pv_tile(const float (&p)[NT][4], const bf16* sv, int key0, int lane,
                                        float (&o)[D / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    // The c layout of two neighbouring 8-key tiles is exactly the a layout of one 16-key step.
    const uint32_t a[4] = {pack_bf16x2(p[2 * kk][0], p[2 * kk][1]),
                           pack_bf16x2(p[2 * kk][2], p[2 * kk][3]),
                           pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                           pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
    const int r = key0 + 16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int d2 = 0; d2 < D / 16; ++d2) {
      const int c = 2 * d2 + (lane >> 4);
      uint32_t b0, b1, b2, b3;
      ldmatrix_x4_trans(smem_u32(sv + tile_offset<D>(r, c)), b0, b1, b2, b3);
      mma_bf16_16816(o[2 * d2], a, b0, b1);
      mma_bf16_16816(o[2 * d2 + 1], a, b2, b3);
    }
  }
}

// Online-softmax update for one 16-row fragment: s holds scores already multiplied by
// scale * log2(e) (masked entries -inf). Each thread owns rows g (r = 0) and g + 8 (r = 1);
// m is the running max (log2 domain, quad-uniform), l this thread's share of the running sum
// (summed over the quad at the end), o the unnormalised output. s is overwritten with p.
template <int D, int NT>
__device__ __forceinline__ void online_softmax(float (&s)[NT][4], float (&m)[2], float (&l)[2],
                                               float (&o)[D / 8][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = m[r];
#pragma unroll
    for (int n = 0; n < NT; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    // A row that has seen only masked keys keeps max -inf; subtracting 0 instead keeps every
    // exp2 at exactly 0 rather than NaN.
    const float base = mx == -INFINITY ? 0.0f : mx;
    const float corr = exp2f(m[r] - base);  // 0 when m was -inf
    m[r] = mx;
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      s[n][2 * r] = exp2f(s[n][2 * r] - base);
      s[n][2 * r + 1] = exp2f(s[n][2 * r + 1] - base);
      sum += s[n][2 * r] + s[n][2 * r + 1];
    }
    l[r] = l[r] * corr + sum;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      o[d][2 * r] *= corr;
      o[d][2 * r + 1] *= corr;
    }
  }
}

}  // namespace starattn::cuda
