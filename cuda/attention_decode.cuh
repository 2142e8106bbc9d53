// Attention for few query rows over many keys (decoding; also T > 1 with mask none or causal),
// split over the keys FlashDecoding-style: every split writes a partial (o, lse) in f32, then
// merge_partials_kernel combines the splits exactly. With one split the kernel writes the final
// o and lse itself.
//
// Shapes, layout, masks and the lse base are those of attention_prefill.cuh (AttentionParams):
// q [T, Hq * D] bf16, k/v [S, Hkv * D] bf16, o [T, Hq * D] OutT, lse [T, Hq] f32 natural log
// with the scale included.
//
// Schedule: a block owns one KV head and 16 "packed rows" (token t, query head of the group)
// r = t * group + g, so the group's query heads share every K/V tile that is read (GQA reads
// K/V once per split, not once per query head). grid (splits, Hkv, ceil(T * group / 16)).
// The wide variant (NRG = 2 or 4 row groups a block, 4 * NRG warps) reads each K/V tile once for
// up to 64 packed rows: the NRG warps that walk the same tiles share one ring of buffers (each
// loads its part, a named barrier per tile), and each computes exactly what the warp of a
// one-row-group block computes, in the same order; so every row's O and lse are bit for bit
// those of the narrow kernel under the same split plan. It serves rows that share one K/V: many
// requests' questions over one document (ContextShard::attend_many), a few query tokens.
// Each of the 4 warps walks its own tiles of KT keys (16 by default, 32 as a variant; tile w,
// w + 4, ...) of the split with a private ring of NS buffers (2 by default: double buffering;
// STARATTN_DECODE_STAGES=3 or 4 keeps NS - 1 tiles in flight per warp) filled by cp.async: no
// block-wide barrier in the key loop, so loads stay in flight. At the end the 4 warps' (m, l, o)
// are combined through shared memory.
//
// The split count fills exactly one wave of resident blocks (the occupancy API says how many
// blocks fit on an SM), so no straggler blocks run alone after the wave.
#pragma once

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <type_traits>
#include <string>

#include "cuda/attention_prefill.cuh"
#include "cuda/merge.cuh"

namespace starattn::cuda {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeKeys = 16;  // keys per warp tile (default; STARATTN_DECODE_KEYS=32 for the old 32-key tiles)

constexpr int kDecodeWideRows = 64;  // packed rows a wide block takes (4 row groups)

template <int D, int KT = kDecodeKeys, int NS = 2, int NRG = 1>
constexpr int decode_smem_bytes() {
  // q tiles (NRG x 16 x D) + per tile walk (warp class) NS buffers of K and V (KT x D each); at
  // least the f32 area the warps combine through at the end.
  constexpr int tiles = (16 * NRG + kDecodeWarps * 2 * NS * KT) * D * static_cast<int>(sizeof(bf16));
  constexpr int combine = 16 * NRG * D * 2 + NRG * kDecodeWarps * (16 * (D + 8) + 32) * 4;
  return tiles > combine ? tiles : combine;
}

// Waits until the NRG warps walking the same tiles (warp class `cls`) reach this point; their
// shared-memory writes before it are then visible to each other. One warp: __syncwarp.
template <int NRG>
__device__ __forceinline__ void class_barrier(int cls) {
  if constexpr (NRG == 1) {
    (void)cls;
    __syncwarp();
  } else {
    asm volatile("bar.sync %0, %1;" ::"r"(1 + cls), "r"(32 * NRG) : "memory");  // barrier 0: __syncthreads
  }
}

struct DecodeParams {
  AttentionParams a;         // a.o / a.lse: final outputs, or split partials (f32) when split
  int64_t keys_per_split;    // multiple of kDecodeKeys
  int64_t o_split_stride;    // elements between the partials of consecutive splits (0: one split)
  int64_t lse_split_stride;
};

// One block's work: split `split` of KV head `kvh`, packed rows [r0_block, r0_block + 16 * NRG).
// Shared by the one-call kernel (block indices) and the batched one (a work-unit table), so both
// compute every item the same way, bit for bit. NRG > 1 (wide): the rows must all see the same
// keys (no causal mask), as the launchers ensure.
template <int D, class OutT, int KT, int NS, int NRG = 1>
__device__ __forceinline__ void attention_decode_block(const DecodeParams& dp, const int split,
                                                       const int kvh, const int64_t r0_block) {
  static_assert(D % 64 == 0, "head size must be a multiple of 64");
  static_assert(NS >= 2 && NS <= 4, "2 to 4 buffers per warp");
  static_assert(NRG == 1 || NRG == 2 || NRG == 4, "1, 2 or 4 row groups a block");
  constexpr int kChunks = D / 8, kThreads = kDecodeWarps * 32 * NRG;
  const AttentionParams& p = dp.a;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sq = reinterpret_cast<bf16*>(smem_raw);  // [NRG][16 x D]
  bf16* skv = sq + NRG * 16 * D;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  // Warp w computes row group w / 4 of the block and walks the tiles w % 4, w % 4 + 4, ... as
  // warp w % 4 of a one-row-group block does; the NRG warps of a class share its tile buffers.
  // (Constants with one row group: the narrow kernel sits at the register limit.)
  const int rg = NRG == 1 ? 0 : warp / kDecodeWarps, cls = NRG == 1 ? warp : warp % kDecodeWarps;
  const int64_t r0 = r0_block + 16 * rg;
  const int g = lane >> 2, t = lane & 3;
  const int group = p.n_q_heads / p.n_kv_heads;
  const int64_t R = static_cast<int64_t>(p.T) * group;  // packed rows

  // Q tiles: packed row r is token r / group, query head kvh * group + r % group.
  for (int idx = tid; idx < NRG * 16 * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;  // r: row of the block's NRG x 16
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r0_block + r < R) {
      const int64_t tok = (r0_block + r) / group;
      const int64_t head = static_cast<int64_t>(kvh) * group + (r0_block + r) % group;
      val = *reinterpret_cast<const uint4*>(p.q + tok * p.q_stride + head * D + c * 8);
    }
    *reinterpret_cast<uint4*>(sq + (r / 16) * 16 * D + tile_offset<D>(r % 16, c)) = val;
  }
  __syncthreads();
  uint32_t qf[D / 16][4];
  load_a_fragments<D>(sq + rg * 16 * D, 0, lane, qf);

  // Keys of this split that any row of the block can see, and each own row's limit.
  const int64_t s_begin = split * dp.keys_per_split;
  const int64_t last_tok = (r0 + 15 < R ? r0 + 15 : R - 1) / group;
  int64_t s_end = s_begin + dp.keys_per_split;
  s_end = s_end < visible_keys(p, last_tok) ? s_end : visible_keys(p, last_tok);
  int64_t lim[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t pr = r0 + g + 8 * r;
    const int64_t v = pr < R ? visible_keys(p, pr / group) : 0;
    lim[r] = v < s_end ? v : s_end;
  }
  const int n_tiles = s_end > s_begin ? static_cast<int>(ceil_div_dev(s_end - s_begin, KT)) : 0;

  bf16* wbuf = skv + cls * 2 * NS * KT * D;  // the class's ring: [K0, V0, K1, V1, ...]
  const int ctid = NRG == 1 ? lane : rg * 32 + lane;  // this thread among the class's NRG warps
  const bf16* kh = p.k + static_cast<int64_t>(kvh) * D;
  const bf16* vh = p.v + static_cast<int64_t>(kvh) * D;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float acc[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.0f;

  // Prologue: this warp's first NS - 1 tiles (one commit group each, empty past the end, so the
  // group count below stays exact).
#pragma unroll
  for (int st = 0; st < NS - 1; ++st) {
    const int jj = cls + st * kDecodeWarps;
    if (jj < n_tiles) {
      bf16* buf = wbuf + st * 2 * KT * D;
      load_tile_async<KT, D, 32 * NRG>(buf, kh, p.k_stride, s_begin + int64_t{jj} * KT, s_end, ctid);
      load_tile_async<KT, D, 32 * NRG>(buf + KT * D, vh, p.v_stride, s_begin + int64_t{jj} * KT, s_end, ctid);
    }
    cp_async_commit();
  }
  int b = 0;  // ring slot of tile j
  for (int j = cls; j < n_tiles; j += kDecodeWarps) {
    const int jn = j + (NS - 1) * kDecodeWarps;
    if (jn < n_tiles) {  // slot b - 1 was released by the barrier ending the last pass
      bf16* nbuf = wbuf + (b == 0 ? NS - 1 : b - 1) * 2 * KT * D;
      load_tile_async<KT, D, 32 * NRG>(nbuf, kh, p.k_stride, s_begin + int64_t{jn} * KT, s_end, ctid);
      load_tile_async<KT, D, 32 * NRG>(nbuf + KT * D, vh, p.v_stride, s_begin + int64_t{jn} * KT, s_end, ctid);
    }
    cp_async_commit();
    cp_async_wait<NS - 1>();  // tile j has landed (this thread's part) ...
    class_barrier<NRG>(cls);  // ... and every part, for every warp of the class

    const bf16* ck = wbuf + b * 2 * KT * D;
    b = b + 1 == NS ? 0 : b + 1;
    float s[KT / 8][4];
    qk_tile<D, KT / 8>(qf, ck, 0, lane, s);
    const int64_t n0 = s_begin + int64_t{j} * KT;
#pragma unroll
    for (int n = 0; n < KT / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = n0 + 8 * n + 2 * t + (e & 1);
        s[n][e] = key < lim[e >> 1] ? s[n][e] * p.scale_log2 : -INFINITY;
      }
    online_softmax<D, KT / 8>(s, m, l, acc);
    pv_tile<D, KT / 8>(s, ck + KT * D, 0, lane, acc);
    class_barrier<NRG>(cls);  // the class is done reading buffer b before it is refilled
  }
  cp_async_wait<0>();
  __syncthreads();  // K/V buffers are free: reuse them to combine the warps

  constexpr int kOStride = D + 8;  // padding staggers the rows over the banks
  constexpr int kWarps = kDecodeWarps * NRG;
  float* so = reinterpret_cast<float*>(skv);  // [warps][16][kOStride]
  float* sm = so + kWarps * 16 * kOStride;    // [warps][16]
  float* sl = sm + kWarps * 16;               // [warps][16]
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int row = g + 8 * r;
    float* orow = so + (warp * 16 + row) * kOStride;
#pragma unroll
    for (int d = 0; d < D / 8; ++d)
      *reinterpret_cast<float2*>(orow + 8 * d + 2 * t) = make_float2(acc[d][2 * r], acc[d][2 * r + 1]);
    if (t == 0) {
      sm[warp * 16 + row] = m[r];
      sl[warp * 16 + row] = l[r];
    }
  }
  __syncthreads();

  for (int idx = tid; idx < NRG * 16 * D; idx += kThreads) {
    // its row in its group, and the group's first warp
    const int row = NRG == 1 ? idx / D : (idx / D) % 16, d = idx % D, w0 = NRG == 1 ? 0 : (idx / (16 * D)) * kDecodeWarps;
    const int64_t pr = r0_block + idx / D;
    if (pr >= R) break;  // rows are in order: every later idx is past R too
    float mx = -INFINITY;
#pragma unroll
    for (int w = w0; w < w0 + kDecodeWarps; ++w) mx = fmaxf(mx, sm[w * 16 + row]);
    float num = 0.0f, den = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = w0; w < w0 + kDecodeWarps; ++w) {
        const float wt = exp2f(sm[w * 16 + row] - mx);
        den += wt * sl[w * 16 + row];
        num += wt * so[(w * 16 + row) * kOStride + d];
      }
    }
    const int64_t tok = pr / group;
    const int64_t head = static_cast<int64_t>(kvh) * group + pr % group;
    OutT* o = static_cast<OutT*>(p.o) + split * dp.o_split_stride + tok * p.o_stride + head * D;
    o[d] = from_f32<OutT>(den > 0.0f ? num / den : 0.0f);
    if (d == 0)
      p.lse[split * dp.lse_split_stride + tok * p.lse_stride + head] =
          den > 0.0f ? (mx + log2f(den)) * 0.69314718055994531f : -INFINITY;
  }
}

template <int D, class OutT, int KT, int NS>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    attention_decode_kernel(const DecodeParams dp) {
  attention_decode_block<D, OutT, KT, NS>(dp, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y),
                                          static_cast<int64_t>(blockIdx.z) * 16);
}

// The wide variant: grid (splits, Hkv, ceil(T * group / (16 * NRG))), 4 * NRG warps; the default
// tiles only (16 keys, 2 buffers).
template <int D, class OutT, int NRG>
__global__ void __launch_bounds__(kDecodeWarps * 32 * NRG)
    attention_decode_wide_kernel(const DecodeParams dp) {
  attention_decode_block<D, OutT, kDecodeKeys, 2, NRG>(dp, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y),
                                                      static_cast<int64_t>(blockIdx.z) * 16 * NRG);
}

// How the keys are split for one call.
struct DecodePlan {
  int keys_per_tile = kDecodeKeys;  // 16 (default), or 32 (135 KB of tiles: 1 block per SM)
  int stages = 2;                   // buffers per warp (2..4 with 16-key tiles; 2 with 32)
  int row_groups_per_block = 1;     // 2 or 4: the wide kernel (rows over one K/V read once)
  int splits = 1;
  int64_t keys_per_split = kDecodeKeys;
  int64_t workspace_floats = 0;  // f32 scratch the launch needs (0 with one split)
};

// Shared memory of the variant a plan selects.
inline int decode_smem_bytes_for(int head_dim, int keys_per_tile, int stages) {
  if (keys_per_tile == 32) return head_dim == 64 ? decode_smem_bytes<64, 32, 2>() : decode_smem_bytes<128, 32, 2>();
  switch (stages) {
    case 3: return head_dim == 64 ? decode_smem_bytes<64, 16, 3>() : decode_smem_bytes<128, 16, 3>();
    case 4: return head_dim == 64 ? decode_smem_bytes<64, 16, 4>() : decode_smem_bytes<128, 16, 4>();
    default: return head_dim == 64 ? decode_smem_bytes<64, 16, 2>() : decode_smem_bytes<128, 16, 2>();
  }
}

// Unmasked calls of up to kDecodeWideRows packed rows (rows that all see the same keys) are
// planned as one row group: every row gets the split plan it would get alone, so rows stacked
// from several requests over one K/V equal their own calls bit for bit, and the wide kernel can
// take them in one pass over the keys.
inline bool decode_rows_planned_as_one(const AttentionParams& p) {
  return !p.causal && static_cast<int64_t>(p.T) * (p.n_q_heads / p.n_kv_heads) <= kDecodeWideRows;
}

// One wave of splits: as many blocks as fit on the GPU at once (num_sms x blocks_per_sm, rounded
// down, so no straggler blocks run alone after the wave), but at least 2 tiles per warp each.
// blocks_per_sm: resident blocks per SM of the kernel (decode_blocks_per_sm); 0 estimates it from
// the shared memory alone. wide: the wide kernel may take rows planned as one row group (default
// tiles only; the backend's STARATTN_DECODE_WIDE, off by default; the split plan is the same).
inline DecodePlan plan_attention_decode(const AttentionParams& p, int head_dim, int num_sms,
                                        int keys_per_tile = kDecodeKeys, int stages = 2,
                                        int blocks_per_sm = 0, bool wide = true) {
  DecodePlan plan;
  plan.keys_per_tile = keys_per_tile == 32 ? 32 : 16;
  plan.stages = plan.keys_per_tile == 32 ? 2 : std::min(4, std::max(2, stages));
  const int KT = plan.keys_per_tile;
  const int64_t group = p.n_q_heads / p.n_kv_heads;
  const int64_t packed = static_cast<int64_t>(p.T) * group;
  const bool as_one = decode_rows_planned_as_one(p);
  const int64_t row_groups = as_one ? 1 : ceil_div(packed, 16);
  // 4 row groups only at D = 64: at D = 128 a thread needs ~200 registers, and 512 such threads
  // do not fit an SM's register file (2 groups: 256 threads, no spills); 64 rows then take two
  // wide blocks, reading the keys twice, one after the other (L2).
  if (as_one && wide && packed > 16 && KT == kDecodeKeys && plan.stages == 2)
    plan.row_groups_per_block = packed > 32 && head_dim == 64 ? 4 : 2;
  int64_t s_eff = p.S;
  if (p.causal) {
    const int64_t n = static_cast<int64_t>(p.T) + p.causal_offset;  // last row's visible keys
    s_eff = n < 0 ? 0 : (n < p.S ? n : p.S);
  }
  const int smem = decode_smem_bytes_for(head_dim, KT, plan.stages);
  const int64_t per_sm =
      blocks_per_sm > 0 ? blocks_per_sm : std::max<int64_t>(1, (227 * 1024) / (smem + 1024));
  const int64_t base = static_cast<int64_t>(p.n_kv_heads) * row_groups;
  const int64_t tiles = ceil_div(s_eff, KT);
  int64_t splits = (num_sms * per_sm) / base;
  splits = std::min(splits, ceil_div(tiles, 2 * kDecodeWarps));
  splits = std::max<int64_t>(splits, 1);
  plan.keys_per_split = std::max<int64_t>(1, ceil_div(tiles, splits)) * KT;
  plan.splits = static_cast<int>(std::max<int64_t>(1, ceil_div(s_eff, plan.keys_per_split)));
  if (plan.splits > 1)
    plan.workspace_floats = static_cast<int64_t>(plan.splits) * p.T * p.n_q_heads * (head_dim + 1);
  return plan;
}

// The one-call grid of a plan, narrow (a row group a block) or wide; KOutT: what the kernel
// writes (OutT, or f32 partials when split).
template <int D, class KOutT, int KT, int NS>
void launch_decode_grid(const DecodeParams& dp, const DecodePlan& plan, cudaStream_t stream) {
  const AttentionParams& p = dp.a;
  const int64_t row_groups = ceil_div(static_cast<int64_t>(p.T) * (p.n_q_heads / p.n_kv_heads), 16);
  auto wide = [&](auto nrg) {
    constexpr int NRG = decltype(nrg)::value;
    constexpr auto kernel = attention_decode_wide_kernel<D, KOutT, NRG>;
    constexpr int smem = decode_smem_bytes<D, kDecodeKeys, 2, NRG>();
    allow_dynamic_smem<kernel>(smem, "attention_decode_wide_kernel");
    const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(p.n_kv_heads),
                    static_cast<unsigned>(ceil_div(row_groups, NRG)));
    kernel<<<grid, kDecodeWarps * 32 * NRG, smem, stream>>>(dp);
    check_launch("attention_decode_wide_kernel");
  };
  if (plan.row_groups_per_block > 1) {
    if (KT != kDecodeKeys || NS != 2) throw std::logic_error("attention_decode: the wide kernel has the default tiles only");
    if (plan.row_groups_per_block == 2) wide(std::integral_constant<int, 2>{});
    else if constexpr (D == 64) wide(std::integral_constant<int, 4>{});
    else throw std::logic_error("attention_decode: 4 row groups a block need D = 64");
    return;
  }
  constexpr auto kernel = attention_decode_kernel<D, KOutT, KT, NS>;
  constexpr int smem = decode_smem_bytes<D, KT, NS>();
  allow_dynamic_smem<kernel>(smem, "attention_decode_kernel");
  const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(p.n_kv_heads),
                  static_cast<unsigned>(row_groups));
  kernel<<<grid, kDecodeWarps * 32, smem, stream>>>(dp);
  check_launch("attention_decode_kernel");
}

template <int D, class OutT, int KT, int NS>
void launch_attention_decode_d(const AttentionParams& p, const DecodePlan& plan, float* workspace,
                               cudaStream_t stream) {
  DecodeParams dp{p, plan.keys_per_split, 0, 0};
  if (plan.splits == 1) {
    launch_decode_grid<D, OutT, KT, NS>(dp, plan, stream);
    return;
  }
  // Partials: o [splits][T][Hq * D] then lse [splits][T][Hq], both f32.
  const int64_t rows = static_cast<int64_t>(p.T);
  float* ws_o = workspace;
  float* ws_lse = workspace + plan.splits * rows * p.n_q_heads * D;
  dp.a.o = ws_o;
  dp.a.o_stride = static_cast<int64_t>(p.n_q_heads) * D;
  dp.a.lse = ws_lse;
  dp.a.lse_stride = p.n_q_heads;
  dp.o_split_stride = rows * p.n_q_heads * D;
  dp.lse_split_stride = rows * p.n_q_heads;
  launch_decode_grid<D, float, KT, NS>(dp, plan, stream);
  const UniformShards shards{ws_o, ws_lse, dp.a.o_stride, dp.a.lse_stride, dp.o_split_stride,
                             dp.lse_split_stride};
  launch_merge_partials<OutT>(shards, plan.splits, static_cast<OutT*>(p.o), p.o_stride, p.lse,
                              p.lse_stride, rows, p.n_q_heads, D, stream);
}

// Resident blocks per SM of the split kernel of one variant (occupancy API: shared memory and
// registers), asked once per process.
template <int D, int KT, int NS>
int decode_blocks_per_sm_d() {
  static const int blocks = [] {
    constexpr auto kernel = attention_decode_kernel<D, float, KT, NS>;
    constexpr int smem = decode_smem_bytes<D, KT, NS>();
    allow_dynamic_smem<kernel>(smem, "attention_decode_kernel");
    int n = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kDecodeWarps * 32, smem),
               "attention_decode_kernel occupancy");
    return n > 0 ? n : 1;
  }();
  return blocks;
}

inline int decode_blocks_per_sm(int head_dim, int keys_per_tile, int stages) {
  if (head_dim != 64 && head_dim != 128) return 1;
  const bool d64 = head_dim == 64;
  if (keys_per_tile == 32) return d64 ? decode_blocks_per_sm_d<64, 32, 2>() : decode_blocks_per_sm_d<128, 32, 2>();
  switch (stages) {
    case 3: return d64 ? decode_blocks_per_sm_d<64, 16, 3>() : decode_blocks_per_sm_d<128, 16, 3>();
    case 4: return d64 ? decode_blocks_per_sm_d<64, 16, 4>() : decode_blocks_per_sm_d<128, 16, 4>();
    default: return d64 ? decode_blocks_per_sm_d<64, 16, 2>() : decode_blocks_per_sm_d<128, 16, 2>();
  }
}

template <int D, class OutT>
void launch_attention_decode_v(const AttentionParams& p, const DecodePlan& plan, float* workspace,
                               cudaStream_t stream) {
  if (plan.keys_per_tile == 32) return launch_attention_decode_d<D, OutT, 32, 2>(p, plan, workspace, stream);
  switch (plan.stages) {
    case 3: return launch_attention_decode_d<D, OutT, 16, 3>(p, plan, workspace, stream);
    case 4: return launch_attention_decode_d<D, OutT, 16, 4>(p, plan, workspace, stream);
    default: return launch_attention_decode_d<D, OutT, 16, 2>(p, plan, workspace, stream);
  }
}

// workspace: plan.workspace_floats f32 of device memory (unused with one split).
inline void launch_attention_decode(const AttentionParams& p, int head_dim, bool o_is_f32,
                                    const DecodePlan& plan, float* workspace, cudaStream_t stream) {
  if (p.T == 0) return;
  if (head_dim == 64) {
    o_is_f32 ? launch_attention_decode_v<64, float>(p, plan, workspace, stream)
             : launch_attention_decode_v<64, bf16>(p, plan, workspace, stream);
  } else if (head_dim == 128) {
    o_is_f32 ? launch_attention_decode_v<128, float>(p, plan, workspace, stream)
             : launch_attention_decode_v<128, bf16>(p, plan, workspace, stream);
  } else {
    throw std::invalid_argument("attention_decode: head_dim " + std::to_string(head_dim) +
                                " not compiled (64, 128)");
  }
}

}  // namespace starattn::cuda
