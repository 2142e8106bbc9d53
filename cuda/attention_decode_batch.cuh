// Decode attention of several independent items in ONE kernel launch (Backend::attention_batch:
// a batched decode step's phase 2, where each request's query rows attend over its own
// context shard, every shard of its own length).
//
// Item i: q_i [T_i, Hq * D] bf16, k_i / v_i [S_i, Hkv * D] bf16 (any row strides, 16-byte
// aligned rows), o_i [T_i, Hq * D] OutT (bf16 or f32, the same for every item of a launch),
// lse_i [T_i, Hq] f32, natural log with the scale included (ln sum_j exp(scale * q.k_j)), as
// the one-call decode kernel (attention_decode.cuh). Hq, Hkv, D and the scale are one model's;
// T_i and S_i vary; mask none or causal per item.
//
// Each item keeps the split plan its own call would get (plan_attention_decode), and every
// block runs the one-call kernel's code (attention_decode_block): the launch only replaces the
// grid (splits, Hkv, row groups) of one call by a table of work units (item, split, row group)
// over all items, grid (units, Hkv). So every item's O and lse equal its own attention() call
// bit for bit. Items with one split write o_i and lse_i directly; items with several write f32
// partials into the workspace (item i's own region: o [splits][T_i][Hq * D] then lse
// [splits][T_i][Hq]), and one merge launch over all of them (merge_row_head, the one-call
// merge's code; grid: one block per (item, row, head)) writes their o_i and lse_i.
// Launches: one attention kernel, plus one merge kernel when any item was split.
#pragma once

#include <string>
#include <type_traits>
#include <vector>

#include "cuda/attention_decode.cuh"

namespace starattn::cuda {

struct DecodeBatchItem {
  DecodeParams dp;  // dp.a.o / dp.a.lse: the final outputs, or the item's split partials (f32)
  int splits;
};

struct DecodeBatchUnit {
  int item;
  int split;
  int row_group;  // packed rows [16 * row_group, 16 * row_group + 16)
};

// The split items' merge: one block per (row, head) of each, blocks [first_block, ...).
template <class OutT>
struct MergeBatchItem {
  UniformShards shards;
  int n;  // splits
  OutT* o;
  int64_t o_stride;
  float* lse;
  int64_t lse_stride;
  int64_t first_block;
};

template <int D, class OutT, int KT, int NS>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    attention_decode_batch_kernel(const DecodeBatchItem* items, const DecodeBatchUnit* units) {
  const DecodeBatchUnit u = units[blockIdx.x];
  const DecodeParams dp = items[u.item].dp;
  const int kvh = static_cast<int>(blockIdx.y);
  const int64_t r0 = static_cast<int64_t>(u.row_group) * 16;
  if (items[u.item].splits == 1) attention_decode_block<D, OutT, KT, NS>(dp, u.split, kvh, r0);
  else attention_decode_block<D, float, KT, NS>(dp, u.split, kvh, r0);
}

template <class OutT>
__global__ void __launch_bounds__(kMergeThreads)
    merge_partials_batch_kernel(const MergeBatchItem<OutT>* items, int n_items, int H, int D) {
  const int64_t b = blockIdx.x;
  const MergeBatchItem<OutT>& it = items[item_of_block(items, n_items, b)];  // read field by field (a copy spills)
  const int64_t local = b - it.first_block;
  merge_row_head<OutT, UniformShards>(it.shards, it.n, it.o, it.o_stride, it.lse, it.lse_stride,
                                      local / H, static_cast<int>(local % H), D);
}

// Lays out the launch of `params` (one per item, T > 0 each) with `plans` (their own calls'),
// all with plans[0]'s tile variant. Host side: fills items, units and merges, item i's split
// partials at `workspace` + the floats of the split items before it (`ws_floats` in all: the
// sum of the plans' workspace_floats); merge_blocks: the merge launch's blocks.
template <class OutT>
void plan_attention_decode_batch(const std::vector<AttentionParams>& params, int head_dim,
                                 const std::vector<DecodePlan>& plans, std::vector<DecodeBatchItem>& items,
                                 std::vector<DecodeBatchUnit>& units, std::vector<MergeBatchItem<OutT>>& merges,
                                 float* workspace, int64_t& ws_floats, int64_t& merge_blocks) {
  ws_floats = 0;
  merge_blocks = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const AttentionParams& p = params[i];
    const DecodePlan& plan = plans[i];
    const int64_t group = p.n_q_heads / p.n_kv_heads;
    const int64_t row_groups = ceil_div(static_cast<int64_t>(p.T) * group, 16);
    DecodeBatchItem it{DecodeParams{p, plan.keys_per_split, 0, 0}, plan.splits};
    if (plan.splits > 1) {
      // As launch_attention_decode_d: o [splits][T][Hq * D] then lse [splits][T][Hq], f32.
      const int64_t rows = p.T;
      float* ws_o = workspace + ws_floats;
      float* ws_lse = ws_o + plan.splits * rows * p.n_q_heads * head_dim;
      it.dp.a.o = ws_o;
      it.dp.a.o_stride = static_cast<int64_t>(p.n_q_heads) * head_dim;
      it.dp.a.lse = ws_lse;
      it.dp.a.lse_stride = p.n_q_heads;
      it.dp.o_split_stride = rows * p.n_q_heads * head_dim;
      it.dp.lse_split_stride = rows * p.n_q_heads;
      ws_floats += plan.workspace_floats;
      MergeBatchItem<OutT> m;
      m.shards = UniformShards{ws_o, ws_lse, it.dp.a.o_stride, it.dp.a.lse_stride, it.dp.o_split_stride,
                               it.dp.lse_split_stride};
      m.n = plan.splits;
      m.o = static_cast<OutT*>(p.o);
      m.o_stride = p.o_stride;
      m.lse = p.lse;
      m.lse_stride = p.lse_stride;
      m.first_block = merge_blocks;
      merge_blocks += rows * p.n_q_heads;
      merges.push_back(m);
    }
    items.push_back(it);
    for (int s = 0; s < plan.splits; ++s)
      for (int64_t r = 0; r < row_groups; ++r)
        units.push_back({static_cast<int>(i), s, static_cast<int>(r)});
  }
}

template <int D, class OutT, int KT, int NS>
void launch_attention_decode_batch_d(const DecodeBatchItem* items, const DecodeBatchUnit* units,
                                     int64_t n_units, int n_kv_heads, cudaStream_t stream) {
  constexpr int smem = decode_smem_bytes<D, KT, NS>();
  constexpr auto kernel = attention_decode_batch_kernel<D, OutT, KT, NS>;
  allow_dynamic_smem<kernel>(smem, "attention_decode_batch_kernel");
  kernel<<<dim3(static_cast<unsigned>(n_units), static_cast<unsigned>(n_kv_heads)), kDecodeWarps * 32, smem,
           stream>>>(items, units);
  check_launch("attention_decode_batch_kernel");
}

// items / units / merges: device copies of plan_attention_decode_batch's tables.
template <class OutT>
void launch_attention_decode_batch(const DecodeBatchItem* items, const DecodeBatchUnit* units, int64_t n_units,
                                   const MergeBatchItem<OutT>* merges, int n_merges, int64_t merge_blocks,
                                   int n_q_heads, int n_kv_heads, int head_dim, int keys_per_tile, int stages,
                                   cudaStream_t stream) {
  if (n_units > 0x7fffffff || merge_blocks > 0x7fffffff)
    throw std::invalid_argument("attention_decode_batch: more than 2^31 blocks");
  auto go = [&](auto d_tag) {
    constexpr int D = decltype(d_tag)::value;
    if (keys_per_tile == 32) return launch_attention_decode_batch_d<D, OutT, 32, 2>(items, units, n_units, n_kv_heads, stream);
    switch (stages) {
      case 3: return launch_attention_decode_batch_d<D, OutT, 16, 3>(items, units, n_units, n_kv_heads, stream);
      case 4: return launch_attention_decode_batch_d<D, OutT, 16, 4>(items, units, n_units, n_kv_heads, stream);
      default: return launch_attention_decode_batch_d<D, OutT, 16, 2>(items, units, n_units, n_kv_heads, stream);
    }
  };
  if (head_dim == 64) go(std::integral_constant<int, 64>{});
  else if (head_dim == 128) go(std::integral_constant<int, 128>{});
  else throw std::invalid_argument("attention_decode_batch: head_dim " + std::to_string(head_dim) + " not compiled (64, 128)");
  if (n_merges == 0) return;
  merge_partials_batch_kernel<OutT><<<static_cast<unsigned>(merge_blocks), kMergeThreads, 0, stream>>>(
      merges, n_merges, n_q_heads, head_dim);
  check_launch("merge_partials_batch_kernel");
}

}  // namespace starattn::cuda
