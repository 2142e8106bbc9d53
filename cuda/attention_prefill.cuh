// Flash attention for prefill (many query rows): one pass over the keys with an online softmax
// in fp32, the score matrix never leaves registers (FlashAttention-2 schedule on mma.sync).
//
// Shapes and layout (elements, row-major, every row stride given):
//   q [T, Hq * D] bf16, k/v [S, Hkv * D] bf16, o [T, Hq * D] OutT (bf16 or f32),
//   lse [T, Hq] f32 = ln sum_j exp(scale * q.k_j) (natural log, scale included).
// GQA: query head h reads KV head h / (Hq / Hkv). Mask: none, or causal with an offset (row i
// sees key j iff j <= i + causal_offset). A row that sees no key gets o = 0 and lse = -inf.
// o may alias q: a block reads its q rows before it writes the same rows and head.
//
// Schedule: a block of W warps owns 16*W query rows of one head (16 per warp, Q fragments kept
// in registers) and walks the visible keys in tiles of BN, K and V tiles double buffered in
// shared memory through cp.async so the next tile loads while this one is multiplied. The
// default is W = 4, BN = 64; other (W, BN) variants are compiled for D = 128 with bf16 output and
// picked with STARATTN_PREFILL_VARIANT (benchmarks: tools/bench). By default the Hopper kernel of
// attention_prefill_wgmma.cuh (wgmma + TMA, sm_90a) runs instead, and this kernel is its fallback.
#pragma once

#include <cmath>

#include "cuda/common.cuh"

namespace starattn::cuda {

struct AttentionParams {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  void* o;  // OutT
  float* lse;
  int64_t q_stride, k_stride, v_stride, o_stride, lse_stride;
  int T, S;
  int n_q_heads, n_kv_heads;
  float scale_log2;  // softmax scale * log2(e): scores are exponentiated with exp2
  bool causal;
  int64_t causal_offset;
};

// Keys visible to query row i: the prefix [0, result).
__device__ __forceinline__ int64_t visible_keys(const AttentionParams& p, int64_t i) {
  if (!p.causal) return p.S;
  const int64_t n = i + p.causal_offset + 1;
  return n < 0 ? 0 : (n < p.S ? n : p.S);
}

constexpr int kPrefillWarps = 4;
constexpr int kPrefillRows = 16 * kPrefillWarps;  // query rows per block (default variant)
constexpr int kPrefillKeys = 64;                  // keys per tile (default variant)

template <int D, int W, int BN>
constexpr int prefill_smem_bytes() {
  return (16 * W + 4 * BN) * D * static_cast<int>(sizeof(bf16));
}

// Writes one thread's two rows of a finished 16-row fragment (rows row0 + g and row0 + g + 8).
template <int D, class OutT>
__device__ __forceinline__ void write_rows(const AttentionParams& p, int h, int64_t row0, int lane,
                                           const float (&m)[2], float (&l)[2],
                                           const float (&acc)[D / 8][4]) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int64_t row = row0 + g + 8 * r;
    if (row >= p.T) continue;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    OutT* o = static_cast<OutT*>(p.o) + row * p.o_stride + static_cast<int64_t>(h) * D;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      o[8 * d + 2 * t] = from_f32<OutT>(acc[d][2 * r] * inv);
      o[8 * d + 2 * t + 1] = from_f32<OutT>(acc[d][2 * r + 1] * inv);
    }
    if (t == 0)
      p.lse[row * p.lse_stride + h] =
          l[r] > 0.0f ? (m[r] + log2f(l[r])) * 0.69314718055994531f : -INFINITY;
  }
}

// grid (ceil(T / (16 W)), Hq), block 32 W threads, dynamic shared memory
// prefill_smem_bytes<D, W, BN>(). Blocks are launched last row block first (the causal ones do
// the most work), so the long blocks start early and the short ones fill the tail.
template <int D, class OutT, int W, int BN>
__global__ void __launch_bounds__(W * 32)
    attention_prefill_kernel(const AttentionParams p) {
  static_assert(D % 64 == 0, "head size must be a multiple of 64 (swizzle needs 8 chunks)");
  constexpr int BM = 16 * W, kThreads = W * 32;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sq = reinterpret_cast<bf16*>(smem_raw);
  bf16* sk = sq + BM * D;       // two buffers of BN x D
  bf16* sv = sk + 2 * BN * D;   // two buffers of BN x D

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int h = blockIdx.y, kvh = h / (p.n_q_heads / p.n_kv_heads);
  const int64_t m0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * BM;
  const int64_t wrow0 = m0 + 16 * warp;
  // The block's last row sees the most keys; nothing past that is loaded.
  const int64_t n_end = visible_keys(p, m0 + BM - 1);
  const int n_tiles = static_cast<int>(ceil_div_dev(n_end, BN));

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float acc[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.0f;

  if (n_tiles > 0) {
    const bf16* kh = p.k + static_cast<int64_t>(kvh) * D;
    const bf16* vh = p.v + static_cast<int64_t>(kvh) * D;
    load_tile_async<BM, D, kThreads>(sq, p.q + static_cast<int64_t>(h) * D, p.q_stride, m0, p.T, tid);
    load_tile_async<BN, D, kThreads>(sk, kh, p.k_stride, 0, n_end, tid);
    load_tile_async<BN, D, kThreads>(sv, vh, p.v_stride, 0, n_end, tid);
    cp_async_commit();

    uint32_t qf[D / 16][4];
    for (int j = 0; j < n_tiles; ++j) {
      cp_async_wait<0>();
      __syncthreads();  // tile j visible to all; everyone is done with tile j - 1's buffer
      if (j == 0) load_a_fragments<D>(sq, 16 * warp, lane, qf);
      if (j + 1 < n_tiles) {
        const int nb = (j + 1) & 1;
        load_tile_async<BN, D, kThreads>(sk + nb * BN * D, kh, p.k_stride, int64_t{j + 1} * BN, n_end, tid);
        load_tile_async<BN, D, kThreads>(sv + nb * BN * D, vh, p.v_stride, int64_t{j + 1} * BN, n_end, tid);
      }
      cp_async_commit();

      const bf16* ck = sk + (j & 1) * BN * D;
      const bf16* cv = sv + (j & 1) * BN * D;
      float s[BN / 8][4];
      qk_tile<D, BN / 8>(qf, ck, 0, lane, s);

      const int64_t n0 = int64_t{j} * BN;
      // Only tiles that cross the end of the keys or the causal diagonal of this warp need
      // per-element masking.
      const bool need_mask = n0 + BN > n_end || (p.causal && n0 + BN - 1 > wrow0 + p.causal_offset);
      const int g = lane >> 2, t = lane & 3;
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[n][e] * p.scale_log2;
          if (need_mask) {
            const int64_t key = n0 + 8 * n + 2 * t + (e & 1);
            const int64_t row = wrow0 + g + 8 * (e >> 1);
            if (key >= n_end || (p.causal && key > row + p.causal_offset)) x = -INFINITY;
          }
          s[n][e] = x;
        }
      }
      online_softmax<D, BN / 8>(s, m, l, acc);
      pv_tile<D, BN / 8>(s, cv, 0, lane, acc);
    }
    cp_async_wait<0>();
  }
  write_rows<D, OutT>(p, h, wrow0, lane, m, l, acc);
}

template <int D, class OutT, int W = kPrefillWarps, int BN = kPrefillKeys>
void launch_attention_prefill_d(const AttentionParams& p, cudaStream_t stream) {
  constexpr int smem = prefill_smem_bytes<D, W, BN>();
  constexpr auto kernel = attention_prefill_kernel<D, OutT, W, BN>;
  allow_dynamic_smem<kernel>(smem, "attention_prefill_kernel");
  const dim3 grid(static_cast<unsigned>(ceil_div(p.T, 16 * W)), static_cast<unsigned>(p.n_q_heads));
  kernel<<<grid, W * 32, smem, stream>>>(p);
  check_launch("attention_prefill_kernel");
}

// Prefill kernels: "wgmma" (4, the default) is the Hopper kernel of attention_prefill_wgmma.cuh
// (sm_90a, 2.4-2.8x this file's kernel on an H200); where it does not apply (other devices, head
// sizes, a refused tensor map) the launch falls back to this file's mma.sync kernel, whose tile
// variants "w<warps>n<keys>" (0-3, w4n64 first) remain selectable for benchmarks.
constexpr int kPrefillVariantWgmma = 4;
inline int prefill_variant_from_name(const char* name) {
  static const char* const kNames[] = {"w4n64", "w8n64", "w4n32", "w8n32", "wgmma"};
  if (name == nullptr || *name == '\0') return kPrefillVariantWgmma;
  for (int i = 0; i < 5; ++i)
    if (std::string(name) == kNames[i]) return i;
  throw std::invalid_argument(
      std::string("STARATTN_PREFILL_VARIANT must be w4n64, w8n64, w4n32, w8n32 or wgmma, got '") + name + "'");
}

// Defined in attention_prefill_wgmma.cuh (included at the end of this file). Returns false,
// launching nothing, where the wgmma kernel does not apply.
template <int kUnused = 0>
bool launch_attention_prefill_wgmma(const AttentionParams& p, int head_dim, bool o_is_f32, cudaStream_t stream);

// head_dim 64 or 128; o_is_f32 selects the output element type. Inputs are checked by the caller.
// variant (prefill_variant_from_name) applies to D = 128 with bf16 output; others use the default.
// The wgmma variant applies to D = 64 and 128 with either output type.
inline void launch_attention_prefill(const AttentionParams& p, int head_dim, bool o_is_f32,
                                     cudaStream_t stream, int variant = 0) {
  if (p.T == 0) return;
  if (variant == kPrefillVariantWgmma && launch_attention_prefill_wgmma(p, head_dim, o_is_f32, stream)) return;
  if (head_dim == 64) {
    o_is_f32 ? launch_attention_prefill_d<64, float>(p, stream) : launch_attention_prefill_d<64, bf16>(p, stream);
  } else if (head_dim == 128) {
    if (o_is_f32) {
      launch_attention_prefill_d<128, float>(p, stream);
    } else {
      switch (variant) {
        case 1: launch_attention_prefill_d<128, bf16, 8, 64>(p, stream); break;
        case 2: launch_attention_prefill_d<128, bf16, 4, 32>(p, stream); break;
        case 3: launch_attention_prefill_d<128, bf16, 8, 32>(p, stream); break;
        default: launch_attention_prefill_d<128, bf16>(p, stream); break;
      }
    }
  } else {
    throw std::invalid_argument("attention_prefill: head_dim " + std::to_string(head_dim) +
                                " not compiled (64, 128)");
  }
}

}  // namespace starattn::cuda

#include "cuda/attention_prefill_wgmma.cuh"  // NOLINT(build/include_order): needs the declarations above
