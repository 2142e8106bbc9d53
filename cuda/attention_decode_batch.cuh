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
// bit for bit. Items whose plan takes the wide kernel (row_groups_per_block 2 or 4: rows stacked
// over one K/V) go into a launch of that kernel of their own, a unit then being NRG row groups.
// Items with one split write o_i and lse_i directly; items with several write f32 partials into
// the workspace (item i's own region: o [splits][T_i][Hq * D] then lse
// [splits][T_i][Hq]), and one merge launch over all of them (merge_row_head, the one-call
// merge's code; grid: one block per (item, row, head)) writes their o_i and lse_i.
// Launches: one attention kernel per kind of block (narrow, wide 2, wide 4; usually one), plus
// one merge kernel when any item was split.
#pragma once

#include <stdexcept>
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
  int row_group;  // the block's first row group: packed rows [16 * row_group, 16 * (row_group + NRG))
};

// Units per kind of block, in this order in the unit table: narrow, wide of 2, wide of 4.
constexpr int kDecodeBlockKinds = 3;
constexpr int decode_block_kind_groups(int kind) { return kind == 0 ? 1 : kind == 1 ? 2 : 4; }

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

template <int D, class OutT, int KT, int NS, int NRG>
__global__ void __launch_bounds__(kDecodeWarps * 32 * NRG)
    attention_decode_batch_kernel(const DecodeBatchItem* items, const DecodeBatchUnit* units) {
  const DecodeBatchUnit u = units[blockIdx.x];
  const DecodeParams dp = items[u.item].dp;
  const int kvh = static_cast<int>(blockIdx.y);
  const int64_t r0 = static_cast<int64_t>(u.row_group) * 16;
  if (items[u.item].splits == 1) attention_decode_block<D, OutT, KT, NS, NRG>(dp, u.split, kvh, r0);
  else attention_decode_block<D, float, KT, NS, NRG>(dp, u.split, kvh, r0);
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

// The work units of a launch, in launch order. Items over the same K/V with the same split plan
// (the stacked queries of many requests on one shared document, ContextShard::attend_many) are
// interleaved split by split: split s of every such item, then split s + 1, so the blocks that read
// one key range are launched one after another and all but the first find it in L2 instead of
// DRAM. Other items keep (item, split, row group) order. Only the order changes: every unit
// computes what it computes anyway, so every item's result is unchanged, bit for bit.
// Units come kind by kind (narrow, wide of 2, wide of 4: one launch each); counts[kind]: how many.
inline void order_decode_batch_units(const std::vector<AttentionParams>& params, const std::vector<DecodePlan>& plans,
                                     std::vector<DecodeBatchUnit>& units, int64_t (&counts)[kDecodeBlockKinds],
                                     bool interleave_shared_kv = true) {
  auto same_keys = [&](size_t a, size_t b) {
    const AttentionParams &x = params[a], &y = params[b];
    return x.k == y.k && x.v == y.v && x.k_stride == y.k_stride && x.v_stride == y.v_stride && x.S == y.S &&
           x.causal == y.causal && x.causal_offset == y.causal_offset &&
           plans[a].keys_per_split == plans[b].keys_per_split && plans[a].splits == plans[b].splits;
  };
  for (int kind = 0; kind < kDecodeBlockKinds; ++kind) {
    const int nrg = decode_block_kind_groups(kind);
    const size_t before = units.size();
    std::vector<bool> placed(params.size(), false);
    std::vector<size_t> group;
    for (size_t i = 0; i < params.size(); ++i) {
      if (placed[i] || plans[i].row_groups_per_block != nrg) continue;
      group.assign(1, i);
      if (interleave_shared_kv)
        for (size_t j = i + 1; j < params.size(); ++j)
          if (!placed[j] && plans[j].row_groups_per_block == nrg && same_keys(i, j)) {
            group.push_back(j);
            placed[j] = true;
          }
      for (int s = 0; s < plans[i].splits; ++s)
        for (size_t item : group) {
          const AttentionParams& p = params[item];
          const int64_t row_groups = ceil_div(static_cast<int64_t>(p.T) * (p.n_q_heads / p.n_kv_heads), 16);
          for (int64_t r = 0; r < row_groups; r += nrg)
            units.push_back({static_cast<int>(item), s, static_cast<int>(r)});
        }
    }
    counts[kind] = static_cast<int64_t>(units.size() - before);
  }
}

// Lays out the launch of `params` (one per item, T > 0 each) with `plans` (their own calls'),
// all with plans[0]'s tile variant. Host side: fills items, units and merges, item i's split
// partials at `workspace` + the floats of the split items before it (`ws_floats` in all: the
// sum of the plans' workspace_floats); merge_blocks: the merge launch's blocks;
// interleave_shared_kv: order_decode_batch_units' (false: STARATTN_DECODE_INTERLEAVE=0, to measure it).
template <class OutT>
void plan_attention_decode_batch(const std::vector<AttentionParams>& params, int head_dim,
                                 const std::vector<DecodePlan>& plans, std::vector<DecodeBatchItem>& items,
                                 std::vector<DecodeBatchUnit>& units, std::vector<MergeBatchItem<OutT>>& merges,
                                 float* workspace, int64_t& ws_floats, int64_t& merge_blocks,
                                 int64_t (&unit_counts)[kDecodeBlockKinds], bool interleave_shared_kv = true) {
  ws_floats = 0;
  merge_blocks = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const AttentionParams& p = params[i];
    const DecodePlan& plan = plans[i];
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
  }
  order_decode_batch_units(params, plans, units, unit_counts, interleave_shared_kv);
}

template <int D, class OutT, int KT, int NS, int NRG = 1>
void launch_attention_decode_batch_d(const DecodeBatchItem* items, const DecodeBatchUnit* units,
                                     int64_t n_units, int n_kv_heads, cudaStream_t stream) {
  if (n_units == 0) return;
  constexpr int smem = decode_smem_bytes<D, KT, NS, NRG>();
  constexpr auto kernel = attention_decode_batch_kernel<D, OutT, KT, NS, NRG>;
  allow_dynamic_smem<kernel>(smem, "attention_decode_batch_kernel");
  kernel<<<dim3(static_cast<unsigned>(n_units), static_cast<unsigned>(n_kv_heads)), kDecodeWarps * 32 * NRG, smem,
           stream>>>(items, units);
  check_launch("attention_decode_batch_kernel");
}

// items / units / merges: device copies of plan_attention_decode_batch's tables; unit_counts: its
// units per kind of block, which lie in that order in `units`.
template <class OutT>
void launch_attention_decode_batch(const DecodeBatchItem* items, const DecodeBatchUnit* units,
                                   const int64_t (&unit_counts)[kDecodeBlockKinds],
                                   const MergeBatchItem<OutT>* merges, int n_merges, int64_t merge_blocks,
                                   int n_q_heads, int n_kv_heads, int head_dim, int keys_per_tile, int stages,
                                   cudaStream_t stream) {
  for (int64_t n : unit_counts)
    if (n > 0x7fffffff) throw std::invalid_argument("attention_decode_batch: more than 2^31 blocks");
  if (merge_blocks > 0x7fffffff) throw std::invalid_argument("attention_decode_batch: more than 2^31 blocks");
  if ((unit_counts[1] > 0 || unit_counts[2] > 0) && (keys_per_tile != kDecodeKeys || stages != 2))
    throw std::logic_error("attention_decode_batch: the wide kernel has the default tiles only");
  const DecodeBatchUnit* wide2 = units + unit_counts[0];
  const DecodeBatchUnit* wide4 = wide2 + unit_counts[1];
  auto go = [&](auto d_tag) {
    constexpr int D = decltype(d_tag)::value;
    launch_attention_decode_batch_d<D, OutT, 16, 2, 2>(items, wide2, unit_counts[1], n_kv_heads, stream);
    if constexpr (D == 64) launch_attention_decode_batch_d<D, OutT, 16, 2, 4>(items, wide4, unit_counts[2], n_kv_heads, stream);
    else if (unit_counts[2] > 0) throw std::logic_error("attention_decode_batch: 4 row groups a block need D = 64");
    const int64_t n_units = unit_counts[0];
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
