// Flash attention for prefill on Hopper (sm_90a): warpgroup MMA (wgmma) fed by the tensor memory
// accelerator (TMA), FlashAttention-3-like. Same contract as attention_prefill.cuh:
//
//   q [T, Hq * D] bf16, k/v [S, Hkv * D] bf16 (row strides multiples of 8 elements, 16-byte
//   aligned bases), o [T, Hq * D] OutT (bf16 or f32, may alias q), lse [T, Hq] f32 =
//   ln sum_j exp(scale * q.k_j) (natural log, scale included). GQA: query head h reads KV head
//   h / (Hq / Hkv). Mask: none, or causal with an offset (row i sees key j iff
//   j <= i + causal_offset). A row that sees no key gets o = 0 and lse = -inf. T and S arbitrary.
//   D = 64 or 128.
//
// Schedule. A CTA owns kBM = 128 query rows of one head and has three warpgroups:
//   warpgroup 0, the producer: one thread issues TMA copies of the Q tile (once) and of the K and
//     V tiles (kBN = 128 keys each) into a ring of ST shared-memory stages, signalled through
//     mbarriers (full_k / full_v: bytes landed; empty: both consumers are done with a stage).
//   warpgroups 1 and 2, the consumers: each owns 64 query rows (wgmma M = 64) and runs
//     S = Q K^T (A = Q and B = K from shared memory), the online softmax in fp32 registers
//     (exp2 with scale * log2 e), and O += P V with P converted to bf16 in registers (the
//     register-A form of wgmma; B = V from shared memory, transposed). The GEMMs of tile j
//     (S_j) and of tile j - 1 (P_{j-1} V_{j-1}) are in flight together while the softmax of
//     tile j runs on the CUDA cores (intra-warpgroup overlap).
// Causal: only the tiles a CTA's rows can see are loaded; a consumer whose rows see fewer tiles
// stops earlier (and only releases the remaining stages); only tiles crossing the diagonal or
// the end of the keys are masked per element. Row blocks are launched last (heaviest) first.
// o may alias q: the Q tile is in shared memory before any row of the CTA is written.
//
// Shared-memory layout (every tile base 1024-byte aligned). A tile of R rows x D bf16 columns is
// stored as D / 64 column blocks of R x 64 elements; in a block, row r occupies the 128 bytes at
// r * 128, and its 16-byte chunk c (elements 8c .. 8c + 7) sits at chunk position c ^ (r % 8).
// That is the 128-byte swizzle (address bits [4:6] ^= bits [7:9]) which TMA writes with
// CU_TENSOR_MAP_SWIZZLE_128B and a box of 64 columns x R rows, and which wgmma reads with
// swizzle mode 1 (128B) in the matrix descriptor. Descriptor fields (bytes, stored >> 4):
//   S = Q K^T, A = Q (M x K = rows x d) and B = K (N x K = keys x d), both "K-major" (d
//   contiguous). In the canonical K-major SW128 layout a core group is 8 rows x 128 bytes
//   (1024 bytes, one swizzle atom); SBO = 1024 is the step between 8-row groups along M/N, and
//   LBO is unused (the 16-element K extent of one wgmma lies inside the 128-byte row; set to 16
//   bytes, i.e. 1). The k-step kk (d = 16 kk .. 16 kk + 15) starts at column block kk / 4 plus
//   (kk % 4) * 32 bytes: the hardware applies the XOR to the final address, so advancing the
//   start address inside the atom selects the right chunks.
//   O += P V, B = V (K x N = keys x d) with N (d) contiguous: "MN-major", transpose flag 1. In
//   the canonical MN-major SW128 layout the unit is 64 N-elements (128 bytes) x 8 K-rows; LBO is
//   the step between 64-element blocks along N (our column blocks: kBN * 128 bytes) and SBO the
//   step between 8-row groups along K (1024 bytes). The k-step kk (keys 16 kk .. 16 kk + 15)
//   starts at kk * 16 * 128 bytes.
// Register layouts (per warp w of a consumer warpgroup, g = lane / 4, t = lane % 4): the f32
// accumulator of m64nNk16 holds, in register 4i + e, row 16w + g + 8 (e / 2) and column
// 8i + 2t + (e % 2) (the mma.m16n8 C layout repeated over N / 8 column groups); the bf16 A
// fragment in registers is the mma.m16n8k16 A layout of rows 16w .. 16w + 15, so the S
// accumulators of two neighbouring 8-key groups form one 16-key A fragment.
#pragma once

#include <cuda.h>  // CUtensorMap and its enums only: cuTensorMapEncodeTiled is fetched at run time
#include <cudaTypedefs.h>

#include <atomic>

#include "cuda/attention_prefill.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define STARATTN_WGMMA_ENABLED 1
#else
#define STARATTN_WGMMA_ENABLED 0
#endif

namespace starattn::cuda {
namespace wgp {

constexpr int kConsumers = 2;                  // consumer warpgroups
constexpr int kBM = 64 * kConsumers;           // query rows per CTA
constexpr int kBN = 128;                       // keys per tile
constexpr int kThreads = 128 * (kConsumers + 1);
constexpr int kProducerRegs = 24, kConsumerRegs = 240;  // 128 * 24 + 256 * 240 <= 65536

template <int D, int ST>
constexpr int smem_bytes() {
  // 1024 bytes of slack to align the base, Q, ST stages of K and V, the mbarriers.
  return 1024 + kBM * D * 2 + 2 * ST * kBN * D * 2 + 8 * (1 + 3 * ST);
}

// Byte offset of element (r, c) in a swizzled tile of `rows` rows (see the file comment).
__host__ __device__ constexpr int sw128_offset(int rows, int r, int c) {
  return (c / 64) * rows * 128 + r * 128 + ((((c % 64) / 8) ^ (r % 8)) * 16) + (c % 8) * 2;
}

// Row (within the warpgroup's 64) and column of accumulator register `reg` of `lane` in `warp`.
__host__ __device__ constexpr int acc_row(int warp, int lane, int reg) {
  return 16 * warp + lane / 4 + 8 * ((reg / 2) % 2);
}
__host__ __device__ constexpr int acc_col(int lane, int reg) { return 8 * (reg / 4) + 2 * (lane % 4) + reg % 2; }

// ---- wgmma ----
// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
// offsets, each >> 4 in 14 bits; base offset 0 (tiles are 1024-byte aligned); mode 1 in 62-63.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) | (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFFu) << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void wgmma_fence() {
#if STARATTN_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if STARATTN_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most N committed wgmma groups of this warpgroup are still in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if STARATTN_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Keeps the compiler from moving register reads and writes across wgmma issue / wait points.
__device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void reg_fence(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
template <int N>
__device__ __forceinline__ void reg_fence(float (&a)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) reg_fence(a[i]);
}
template <int N>
__device__ __forceinline__ void reg_fence(uint32_t (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) reg_fence(a[i][e]);
}

#define STARATTN_ACC8(d, i)                                                                                 \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define STARATTN_REGS32                                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define STARATTN_REGS64                                                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "    \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, " \
  "%45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d[64 x N] (+)= A[64 x 16] B[16 x N], A and B K-major in shared memory; scale_d == 0 overwrites.
template <int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d);
template <>
__device__ __forceinline__ void wgmma_ss<128>(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
#if STARATTN_WGMMA_ENABLED
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " STARATTN_REGS64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : STARATTN_ACC8(d, 0), STARATTN_ACC8(d, 8), STARATTN_ACC8(d, 16), STARATTN_ACC8(d, 24),
        STARATTN_ACC8(d, 32), STARATTN_ACC8(d, 40), STARATTN_ACC8(d, 48), STARATTN_ACC8(d, 56)
      : "l"(da), "l"(db), "r"(scale_d));
#endif
}
template <>
__device__ __forceinline__ void wgmma_ss<64>(float (&d)[32], uint64_t da, uint64_t db, int scale_d) {
#if STARATTN_WGMMA_ENABLED
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " STARATTN_REGS32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
      : STARATTN_ACC8(d, 0), STARATTN_ACC8(d, 8), STARATTN_ACC8(d, 16), STARATTN_ACC8(d, 24)
      : "l"(da), "l"(db), "r"(scale_d));
#endif
}

// d[64 x N] += A[64 x 16] B[16 x N], A in registers (bf16 pairs), B MN-major in shared memory.
template <int N>
__device__ __forceinline__ void wgmma_rs_tb(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db);
template <>
__device__ __forceinline__ void wgmma_rs_tb<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
#if STARATTN_WGMMA_ENABLED
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " STARATTN_REGS64
      ", {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
      : STARATTN_ACC8(d, 0), STARATTN_ACC8(d, 8), STARATTN_ACC8(d, 16), STARATTN_ACC8(d, 24),
        STARATTN_ACC8(d, 32), STARATTN_ACC8(d, 40), STARATTN_ACC8(d, 48), STARATTN_ACC8(d, 56)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
#endif
}
template <>
__device__ __forceinline__ void wgmma_rs_tb<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
#if STARATTN_WGMMA_ENABLED
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " STARATTN_REGS32
      ", {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
      : STARATTN_ACC8(d, 0), STARATTN_ACC8(d, 8), STARATTN_ACC8(d, 16), STARATTN_ACC8(d, 24)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
#endif
}
#undef STARATTN_ACC8
#undef STARATTN_REGS32
#undef STARATTN_REGS64

// s[64 x BN] = Q K^T for one consumer warpgroup: q is the shared address of its first Q row in
// column block 0, q_block the bytes between Q column blocks; k a K tile of BN rows.
template <int D, int BN>
__device__ __forceinline__ void qk_gemm(float (&s)[BN / 2], uint32_t q, uint32_t q_block, uint32_t k) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk % 4) * 32;
    const uint64_t da = sw128_desc(q + (kk / 4) * q_block + off, 16, 1024);
    const uint64_t db = sw128_desc(k + (kk / 4) * (BN * 128) + off, 16, 1024);
    wgmma_ss<BN>(s, da, db, kk > 0 ? 1 : 0);
  }
}

// o[64 x D] += P V, P as bf16 A fragments (pack_p), v a V tile of BN rows. kSwapStrides puts
// the two strides in the other descriptor fields (a diagnostic for the scratch check only).
template <int D, int BN, bool kSwapStrides = false>
__device__ __forceinline__ void pv_gemm(float (&o)[D / 2], const uint32_t (&pf)[BN / 16][4], uint32_t v) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    const uint32_t addr = v + kk * 16 * 128;
    const uint64_t db = kSwapStrides ? sw128_desc(addr, 1024, BN * 128) : sw128_desc(addr, BN * 128, 1024);
    wgmma_rs_tb<D>(o, pf[kk], db);
  }
}

// Accumulators of 16 keys (two 8-key groups) -> one bf16 A fragment of the P V product.
template <int BN>
__device__ __forceinline__ void pack_p(const float (&s)[BN / 2], uint32_t (&pf)[BN / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    pf[kk][0] = pack_bf16x2(s[8 * kk + 0], s[8 * kk + 1]);  // row g,     keys 16kk + 2t
    pf[kk][1] = pack_bf16x2(s[8 * kk + 2], s[8 * kk + 3]);  // row g + 8, keys 16kk + 2t
    pf[kk][2] = pack_bf16x2(s[8 * kk + 4], s[8 * kk + 5]);  // row g,     keys 16kk + 8 + 2t
    pf[kk][3] = pack_bf16x2(s[8 * kk + 6], s[8 * kk + 7]);  // row g + 8, keys 16kk + 8 + 2t
  }
}

// ---- mbarriers and TMA ----
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_fence_init() {
#if STARATTN_WGMMA_ENABLED
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if STARATTN_WGMMA_ENABLED
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
#endif
}
#ifdef STARATTN_WGMMA_WATCHDOG
// Debug builds only: the first barrier wait that gave up (block x, block y, thread, barrier
// address and parity, packed by mbar_wait), 0 if none.
__device__ unsigned long long g_wgmma_watchdog;
#endif
// Waits for the completion of the barrier phase with the given parity. With
// STARATTN_WGMMA_WATCHDOG defined, a wait of more than ~2 s is recorded in g_wgmma_watchdog
// and abandoned (the results are garbage then, but the kernel ends instead of hanging).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if STARATTN_WGMMA_ENABLED
  uint32_t done = 0;
#ifdef STARATTN_WGMMA_WATCHDOG
  long long start = 0;
#endif
  for (;;) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (done) break;
#ifdef STARATTN_WGMMA_WATCHDOG
    if (start == 0) start = clock64();
    if (*static_cast<volatile unsigned long long*>(&g_wgmma_watchdog) != 0) break;  // already fired: bail out
    if (clock64() - start > 4000000000LL) {
      const unsigned long long code = (static_cast<unsigned long long>(blockIdx.x & 0xFFFu) << 52) |
                                      (static_cast<unsigned long long>(blockIdx.y & 0xFFFFu) << 36) |
                                      (static_cast<unsigned long long>(threadIdx.x & 0x1FFu) << 27) |
                                      (static_cast<unsigned long long>(bar & 0x3FFFFFFu) << 1) | (parity & 1u);
      atomicCAS(&g_wgmma_watchdog, 0ull, code);
      break;
    }
#endif
  }
#endif
}
// mbar_wait by every lane of a warp, which then runs converged again (for the .aligned wgmma
// instructions that follow).
__device__ __forceinline__ void mbar_wait_warp(uint32_t bar, uint32_t parity) {
  mbar_wait(bar, parity);
  __syncwarp();
}
// 2-D tile copy global -> shared through a tensor map; completes `bar`'s transaction bytes.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int x, int y) {
#if STARATTN_WGMMA_ENABLED
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(bar)
      : "memory");
#endif
}

template <class OutT>
__device__ __forceinline__ void store_pair(OutT* dst, float a, float b, bool vec);
template <>
__device__ __forceinline__ void store_pair<bf16>(bf16* dst, float a, float b, bool vec) {
  if (vec) {
    *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
  } else {
    dst[0] = __float2bfloat16_rn(a);
    dst[1] = __float2bfloat16_rn(b);
  }
}
template <>
__device__ __forceinline__ void store_pair<float>(float* dst, float a, float b, bool vec) {
  if (vec) {
    *reinterpret_cast<float2*>(dst) = make_float2(a, b);
  } else {
    dst[0] = a;
    dst[1] = b;
  }
}

// Online softmax over one tile for the two rows of this thread (row_a = its row g, row_a + 8):
// masks (when need_mask), updates the running max m (log2 domain, scale included) and sum l
// (this thread's share), overwrites s with p = exp2(scale * s - m) and returns the factor
// corr by which the previous accumulators must be scaled.
template <int BN>
__device__ __forceinline__ void softmax_tile(float (&s)[BN / 2], const AttentionParams& p, int64_t n0, int64_t row_a,
                                             bool need_mask, int lane, float (&m)[2], float (&l)[2], float (&corr)[2]) {
  if (need_mask) {
    const int t = lane % 4;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = n0 + 8 * i + 2 * t + (e & 1);
        const int64_t row = row_a + 8 * (e >> 1);
        if (key >= p.S || (p.causal && key > row + p.causal_offset)) s[4 * i + e] = -INFINITY;
      }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) mx = fmaxf(mx, fmaxf(s[4 * i + 2 * r], s[4 * i + 2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[r], mx * p.scale_log2);  // scale > 0: the max commutes with it
    // Only masked keys so far: keep max -inf, subtract 0 so every exp2 is exactly 0, not NaN.
    const float base = m_new == -INFINITY ? 0.0f : m_new;
    corr[r] = exp2f(m[r] - base);
    m[r] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
      s[4 * i + 2 * r] = exp2f(fmaf(s[4 * i + 2 * r], p.scale_log2, -base));
      s[4 * i + 2 * r + 1] = exp2f(fmaf(s[4 * i + 2 * r + 1], p.scale_log2, -base));
      sum += s[4 * i + 2 * r] + s[4 * i + 2 * r + 1];
    }
    l[r] = l[r] * corr[r] + sum;
  }
}

}  // namespace wgp

// grid (Hq, ceil(T / 128)), block 384 threads, dynamic shared memory wgp::smem_bytes<D, ST>().
// tm_q / tm_k / tm_v: 2-D tensor maps (make_head_tile_map) over q, k and v with boxes of
// 64 columns x 128 rows and the 128-byte swizzle.
template <int D, class OutT, int ST>
__global__ void __launch_bounds__(wgp::kThreads, 1)
    attention_prefill_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                                   const __grid_constant__ CUtensorMap tm_v, const AttentionParams p) {
  static_assert(D == 64 || D == 128, "head size 64 or 128");
#if STARATTN_WGMMA_ENABLED
  using namespace wgp;
  constexpr int kQBytes = kBM * D * 2, kKVBytes = kBN * D * 2, kBlocks = D / 64;
  extern __shared__ __align__(1024) unsigned char wgmma_smem[];
  const uint32_t sq = (smem_u32(wgmma_smem) + 1023u) & ~1023u;  // tiles need 1024-byte alignment
  const uint32_t sk0 = sq + kQBytes, sv0 = sk0 + ST * kKVBytes, bars = sv0 + ST * kKVBytes;
  const uint32_t bar_q = bars;
  auto full_k = [&](int s) { return bars + 8u * static_cast<uint32_t>(1 + s); };
  auto full_v = [&](int s) { return bars + 8u * static_cast<uint32_t>(1 + ST + s); };
  auto empty = [&](int s) { return bars + 8u * static_cast<uint32_t>(1 + 2 * ST + s); };

  const int h = blockIdx.x, kvh = h / (p.n_q_heads / p.n_kv_heads);
  const int64_t m0 = static_cast<int64_t>(gridDim.y - 1 - blockIdx.y) * kBM;
  const int64_t cta_last = m0 + kBM - 1 < p.T - 1 ? m0 + kBM - 1 : p.T - 1;
  // The CTA's last row sees the most keys; nothing past that is loaded.
  const int n_tiles = static_cast<int>(ceil_div_dev(visible_keys(p, cta_last), kBN));

  if (threadIdx.x == 0) {
    mbar_init(bar_q, 1);
    for (int s = 0; s < ST; ++s) {
      mbar_init(full_k(s), 1);
      mbar_init(full_v(s), 1);
      mbar_init(empty(s), kConsumers * 4);  // lane 0 of every consumer warp
    }
    mbar_fence_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {
    // ---- producer warpgroup ----
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
    if (threadIdx.x == 0 && n_tiles > 0) {
      const int xq = h * D, xkv = kvh * D;
      mbar_arrive_expect_tx(bar_q, kQBytes);
#pragma unroll
      for (int c = 0; c < kBlocks; ++c) tma_load_2d(sq + c * kBM * 128, &tm_q, bar_q, xq + 64 * c, static_cast<int>(m0));
      for (int j = 0; j < n_tiles; ++j) {
        const int s = j % ST;
        if (j >= ST) mbar_wait(empty(s), static_cast<uint32_t>((j / ST - 1) & 1));
        mbar_arrive_expect_tx(full_k(s), kKVBytes);
#pragma unroll
        for (int c = 0; c < kBlocks; ++c)
          tma_load_2d(sk0 + s * kKVBytes + c * kBN * 128, &tm_k, full_k(s), xkv + 64 * c, j * kBN);
        mbar_arrive_expect_tx(full_v(s), kKVBytes);
#pragma unroll
        for (int c = 0; c < kBlocks; ++c)
          tma_load_2d(sv0 + s * kKVBytes + c * kBN * 128, &tm_v, full_v(s), xkv + 64 * c, j * kBN);
      }
    }
    return;
  }

  // ---- consumer warpgroups ----
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));
  const int cw = threadIdx.x / 128 - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int64_t r0 = m0 + 64 * cw;           // first row of this warpgroup
  const int64_t wrow0 = r0 + 16 * warp;      // first row of this warp
  const int64_t row_a = wrow0 + lane / 4;    // this thread's rows: row_a and row_a + 8
  const int64_t wg_last = r0 + 63 < p.T - 1 ? r0 + 63 : p.T - 1;
  const int n_mine = r0 < p.T ? static_cast<int>(ceil_div_dev(visible_keys(p, wg_last), kBN)) : 0;
  auto release = [&](int s) {
    __syncwarp();
    if (lane == 0) mbar_arrive(empty(s));
  };

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, corr[2];
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;

  if (n_tiles > 0) {
    mbar_wait_warp(bar_q, 0);  // also orders every write of o after the Q tile has landed (o may alias q)
    const uint32_t q_wg = sq + cw * 64 * 128;
    if (n_mine > 0) {
      float s[kBN / 2];
      uint32_t pf[kBN / 16][4];
      auto need_mask = [&](int64_t n0) {
        return n0 + kBN > p.S || (p.causal && n0 + kBN - 1 > wrow0 + p.causal_offset);
      };
      // Tile 0: S only.
      mbar_wait_warp(full_k(0), 0);
      wgmma_fence();
      qk_gemm<D, kBN>(s, q_wg, kBM * 128, sk0);
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(s);
      softmax_tile<kBN>(s, p, 0, row_a, need_mask(0), lane, m, l, corr);
      pack_p<kBN>(s, pf);
      // Tile j: S_j = Q K_j^T and O += P_{j-1} V_{j-1} in flight, softmax of S_j meanwhile.
      for (int j = 1; j < n_mine; ++j) {
        const int sj = j % ST, sp = (j - 1) % ST;
        mbar_wait_warp(full_k(sj), static_cast<uint32_t>((j / ST) & 1));
        mbar_wait_warp(full_v(sp), static_cast<uint32_t>(((j - 1) / ST) & 1));
        reg_fence(s);
        reg_fence(o);
        reg_fence(pf);
        wgmma_fence();
        qk_gemm<D, kBN>(s, q_wg, kBM * 128, sk0 + sj * kKVBytes);
        wgmma_commit();
        pv_gemm<D, kBN>(o, pf, sv0 + sp * kKVBytes);
        wgmma_commit();
        wgmma_wait<1>();  // S_j done
        reg_fence(s);
        const int64_t n0 = static_cast<int64_t>(j) * kBN;
        softmax_tile<kBN>(s, p, n0, row_a, need_mask(n0), lane, m, l, corr);
        wgmma_wait<0>();  // P_{j-1} V_{j-1} done: stage sp is free, o and pf may change
        reg_fence(o);
        reg_fence(pf);
        release(sp);
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
          o[4 * i + 0] *= corr[0];
          o[4 * i + 1] *= corr[0];
          o[4 * i + 2] *= corr[1];
          o[4 * i + 3] *= corr[1];
        }
        pack_p<kBN>(s, pf);
      }
      const int sl = (n_mine - 1) % ST;
      mbar_wait_warp(full_v(sl), static_cast<uint32_t>(((n_mine - 1) / ST) & 1));
      reg_fence(o);
      reg_fence(pf);
      wgmma_fence();
      pv_gemm<D, kBN>(o, pf, sv0 + sl * kKVBytes);
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(o);
      release(sl);
    }
    // Tiles only the other warpgroup's rows see: wait for them to land, then hand them back.
    for (int j = n_mine; j < n_tiles; ++j) {
      const int s = j % ST;
      mbar_wait_warp(full_k(s), static_cast<uint32_t>((j / ST) & 1));
      mbar_wait_warp(full_v(s), static_cast<uint32_t>((j / ST) & 1));
      release(s);
    }
  }

  // ---- epilogue: o = acc / l, lse = (m + log2 l) ln 2 ----
  const int t = lane % 4;
  const bool vec = (reinterpret_cast<uintptr_t>(p.o) % (2 * sizeof(OutT))) == 0 && p.o_stride % 2 == 0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int64_t row = row_a + 8 * r;
    if (row >= p.T) continue;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    OutT* dst = static_cast<OutT*>(p.o) + row * p.o_stride + static_cast<int64_t>(h) * D + 2 * t;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) store_pair<OutT>(dst + 8 * i, o[4 * i + 2 * r] * inv, o[4 * i + 2 * r + 1] * inv, vec);
    if (t == 0)
      p.lse[row * p.lse_stride + h] = l[r] > 0.0f ? (m[r] + log2f(l[r])) * 0.69314718055994531f : -INFINITY;
  }
#else
  (void)tm_q, (void)tm_k, (void)tm_v, (void)p;
  __trap();  // built without sm_90a: device_supported() is false, so this is never launched
#endif
}

namespace wgp {

// cuTensorMapEncodeTiled from the driver, looked up once (the runtime does not link libcuda).
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A 2-D tensor map over a [rows, cols] bf16 matrix with a row stride of `stride` elements,
// boxes of 64 columns x box_rows rows, 128-byte swizzle, zeros outside. False if the driver
// refuses it.
inline bool make_head_tile_map(CUtensorMap* map, const bf16* base, int64_t rows, int64_t cols, int64_t stride,
                               int box_rows) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || rows <= 0 || cols <= 0) return false;
  // A single row's stride is never used; any multiple of 16 bytes will do.
  const int64_t stride_bytes = rows == 1 ? (cols * 2 + 15) / 16 * 16 : stride * 2;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride_bytes)};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(base), dims, strides, box, elem_strides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Writes 1 where this build's device code for the running GPU has the sm_90a features (wgmma,
// setmaxnreg), 0 where it does not (a plain sm_90 build: the kernel above would trap). A template
// so that every translation unit including this header may define it.
template <int kUnused = 0>
__global__ void wgmma_build_probe(int* out) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

// Runs the probe once: false on any CUDA error, so the caller falls back to the mma.sync kernel.
inline bool built_with_sm90a_features() {
  int* flag = nullptr;
  if (cudaMalloc(&flag, sizeof(int)) != cudaSuccess) return false;
  int host = 0;
  wgmma_build_probe<<<1, 1>>>(flag);
  const bool ok = cudaGetLastError() == cudaSuccess &&
                  cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess && host == 1;
  cudaFree(flag);
  return ok;
}

// The current device runs the sm_90a kernel: compute capability 9.0 and sm_90a device code in
// this build (probed once, remembered per device).
inline bool device_supported() {
  static std::atomic<uint64_t> known{0}, good{0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev >= 64) return false;
  const uint64_t bit = uint64_t{1} << dev;
  if (known.load(std::memory_order_acquire) & bit) return (good.load(std::memory_order_relaxed) & bit) != 0;
  int major = 0, minor = 0;
  cudaFuncAttributes attr{};
  const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
                  major == 9 && minor == 0 &&
                  cudaFuncGetAttributes(&attr, attention_prefill_wgmma_kernel<128, bf16, 2>) == cudaSuccess &&
                  attr.binaryVersion >= 90 && built_with_sm90a_features();
  if (ok) good.fetch_or(bit, std::memory_order_relaxed);
  known.fetch_or(bit, std::memory_order_release);
  return ok;
}

}  // namespace wgp

template <int D, class OutT, int ST>
void launch_attention_prefill_wgmma_d(const AttentionParams& p, const CUtensorMap& tq, const CUtensorMap& tk,
                                      const CUtensorMap& tv, cudaStream_t stream) {
  constexpr int smem = wgp::smem_bytes<D, ST>();
  constexpr auto kernel = attention_prefill_wgmma_kernel<D, OutT, ST>;
  allow_dynamic_smem<kernel>(smem, "attention_prefill_wgmma_kernel");
  const dim3 grid(static_cast<unsigned>(p.n_q_heads), static_cast<unsigned>(ceil_div(p.T, wgp::kBM)));
  kernel<<<grid, wgp::kThreads, smem, stream>>>(tq, tk, tv, p);
  check_launch("attention_prefill_wgmma_kernel");
}

// Launches the wgmma kernel with ST shared-memory stages (at most 3 for D = 128: 225 KiB). Returns false,
// launching nothing, where it does not apply (device not sm_90, head_dim not 64 / 128, no keys,
// tensor maps refused); the caller then runs attention_prefill_kernel.
template <int ST>
bool launch_attention_prefill_wgmma_stages(const AttentionParams& p, int head_dim, bool o_is_f32,
                                           cudaStream_t stream) {
  if (p.T <= 0) return true;
  if ((head_dim != 64 && head_dim != 128) || p.S <= 0 || ceil_div(p.T, wgp::kBM) > 65535 || p.n_q_heads > 65535)
    return false;
  if (!wgp::device_supported()) return false;
  CUtensorMap tq, tk, tv;
  const int64_t qcols = static_cast<int64_t>(p.n_q_heads) * head_dim, kvcols = static_cast<int64_t>(p.n_kv_heads) * head_dim;
  if (!wgp::make_head_tile_map(&tq, p.q, p.T, qcols, p.q_stride, wgp::kBM) ||
      !wgp::make_head_tile_map(&tk, p.k, p.S, kvcols, p.k_stride, wgp::kBN) ||
      !wgp::make_head_tile_map(&tv, p.v, p.S, kvcols, p.v_stride, wgp::kBN))
    return false;
  if (head_dim == 128) {
    o_is_f32 ? launch_attention_prefill_wgmma_d<128, float, ST>(p, tq, tk, tv, stream)
             : launch_attention_prefill_wgmma_d<128, bf16, ST>(p, tq, tk, tv, stream);
  } else {
    o_is_f32 ? launch_attention_prefill_wgmma_d<64, float, ST>(p, tq, tk, tv, stream)
             : launch_attention_prefill_wgmma_d<64, bf16, ST>(p, tq, tk, tv, stream);
  }
  return true;
}

// Declared in attention_prefill.cuh (STARATTN_PREFILL_VARIANT=wgmma). Three stages: on an H200
// (Hq 32, Hkv 8, D 128, 4K-16K tokens) 470-570 TFLOP/s against 360-390 with two, whose next
// tile is requested too late to hide the load (cuda/scratch/prefill_wgmma_check.cu).
template <int kUnused>
bool launch_attention_prefill_wgmma(const AttentionParams& p, int head_dim, bool o_is_f32, cudaStream_t stream) {
  return launch_attention_prefill_wgmma_stages<3>(p, head_dim, o_is_f32, stream);
}

}  // namespace starattn::cuda
