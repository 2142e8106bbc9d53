// Backend::attention_batch on cuda (cuda/attention_decode_batch.cuh): several items of different
// key lengths (one split and many splits, GQA, T = 1 and a few query rows, bf16 and f32 outputs,
// a causal item, and one item long enough in query rows that it takes the prefill kernel on its
// own) in ONE launch, against each item's own attention() call on the same device memory.
// Tolerance 0 (bit for bit): the batched launch gives every item its own call's split plan and
// runs the same block code (attention_decode_block, merge_row_head), so nothing may differ. Also
// that the batch really ran (outputs were NaN before) and the reference is not trivial.
// Without a CUDA device every test is skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "runtime/backend.h"
#include "tests/gpu/gpu_test_support.h"

namespace starattn {
namespace {

using testing::Dev;
using testing::ScopedEnv;

class CudaAttentionBatch : public testing::CudaVsCpuTest {
 protected:
  CudaAttentionBatch() : CudaVsCpuTest(20261206) {}

  // Elements of `got` unlike `want`; NaN (an output never written) counts as unlike.
  static size_t unequal(const std::vector<float>& got, const std::vector<float>& want) {
    size_t n = 0;
    for (size_t j = 0; j < want.size(); ++j) n += !(got[j] == want[j]);
    return n;
  }
  // The largest |v|: a reference that is all but zero proves nothing.
  static float largest(const std::vector<float>& v) {
    float m = 0;
    for (float x : v) m = std::max(m, std::abs(x));
    return m;
  }

  struct Item {
    int64_t T, S;
    MaskKind mask = MaskKind::none;
    int64_t causal_offset = 0;
  };

  void check(int head_dim, int hq, int hkv, DType out, const std::vector<Item>& shape) {
    std::vector<Dev> q, k, v, o_batch, l_batch, o_one, l_one;
    std::vector<AttentionArgs> batch, one;
    for (const Item& it : shape) {
      q.push_back(gpu(random(it.T * hq * head_dim, -2.0f, 2.0f), it.T, hq * head_dim, DType::bf16, 8));
      k.push_back(gpu(random(it.S * hkv * head_dim, -2.0f, 2.0f), it.S, hkv * head_dim, DType::bf16, 16));
      v.push_back(gpu(random(it.S * hkv * head_dim), it.S, hkv * head_dim));
      o_batch.push_back(gpu_out(it.T, hq * head_dim, out));
      l_batch.push_back(gpu_out(it.T, hq, DType::f32));
      o_one.push_back(gpu_out(it.T, hq * head_dim, out));
      l_one.push_back(gpu_out(it.T, hq, DType::f32));
    }
    for (size_t i = 0; i < shape.size(); ++i) {
      AttentionArgs a;
      a.q = q[i].t;
      a.k = k[i].t;
      a.v = v[i].t;
      a.n_q_heads = hq;
      a.n_kv_heads = hkv;
      a.head_dim = head_dim;
      a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
      a.mask = shape[i].mask;
      a.causal_offset = shape[i].causal_offset;
      a.o = o_batch[i].t;
      a.lse = l_batch[i].t;
      batch.push_back(a);
      a.o = o_one[i].t;
      a.lse = l_one[i].t;
      one.push_back(a);
    }
    gpu_->attention_batch(batch);
    for (const AttentionArgs& a : one) gpu_->attention(a);
    gpu_->synchronize();
    for (size_t i = 0; i < shape.size(); ++i) {
      const std::string what = "item " + std::to_string(i) + " (T " + std::to_string(shape[i].T) + ", S " +
                               std::to_string(shape[i].S) + ", D " + std::to_string(head_dim) + ", " +
                               dtype_name(out) + ")";
      const std::vector<float> ob = get(*gpu_, o_batch[i].t), oo = get(*gpu_, o_one[i].t);
      const std::vector<float> lb = get(*gpu_, l_batch[i].t), lo = get(*gpu_, l_one[i].t);
      const size_t bad = unequal(ob, oo) + unequal(lb, lo);  // bit for bit, see the file comment
      EXPECT_EQ(bad, 0u) << what << ": " << bad << " elements differ from the item's own call";
      EXPECT_GT(largest(oo), 1e-3f) << what << ": the reference O is all but zero";
    }
  }
};

// A decode step's phase 2: one query row per request, contexts of very different lengths (a
// few keys: one split; 100K keys: many splits merged), GQA 4:1 as SmolLM2/Llama.
TEST_F(CudaAttentionBatch, DecodeRowsOverVariableLengthsEqualTheirOwnCalls) {
  const std::vector<Item> items = {{1, 7}, {1, 300}, {1, 4096}, {1, 100000}, {1, 33}, {1, 2048}};
  check(64, 32, 8, DType::bf16, items);
  check(128, 32, 8, DType::bf16, items);
  check(64, 9, 3, DType::f32, items);
}

// Query prefill rows joining a decode batch (T > 1), a causal item, and one item with enough
// rows that the prefill kernel takes it alone; the rest still share one launch.
// Unmasked items of 5 to 16 rows take the wide kernel where it is on (7 rows: 2 row groups; 16: 4,
// at D = 64) in a launch of their own; with it off, narrow blocks with the same split plan.
TEST_F(CudaAttentionBatch, MixedRowsCausalAndPrefillItemsEqualTheirOwnCalls) {
  for (const char* wide : {"0", "1"}) {
    ScopedEnv env("STARATTN_DECODE_WIDE", wide);
    gpu_ = make_backend("cuda", 0);  // reads the variable
    SCOPED_TRACE(std::string("STARATTN_DECODE_WIDE=") + wide);
    check(64, 32, 8, DType::bf16,
          {{1, 500}, {7, 1200}, {3, 64, MaskKind::causal, 61}, {1, 20000}, {700, 900}, {16, 5000}});
    check(128, 32, 8, DType::bf16, {{7, 1200}, {16, 33000}, {1, 900}});
  }
}

// Every tile variant of the decode kernel (STARATTN_DECODE_KEYS, STARATTN_DECODE_STAGES).
TEST_F(CudaAttentionBatch, EveryTileVariantEqualsItsOwnCalls) {
  for (const char* keys : {"16", "32"})
    for (const char* stages : {"2", "3", "4"}) {
      if (std::string(keys) == "32" && std::string(stages) != "2") continue;
      ScopedEnv k("STARATTN_DECODE_KEYS", keys), s("STARATTN_DECODE_STAGES", stages);
      gpu_ = make_backend("cuda", 0);
      SCOPED_TRACE(std::string("keys ") + keys + " stages " + stages);
      check(64, 32, 8, DType::bf16, {{1, 100}, {2, 9000}, {1, 60000}});
    }
}

// ContextShard::attend_many's stacking (requests on one document share a shard's K/V): up to
// attention_rows_per_pass rows over one K/V in one item give each row what its own single-row
// call gives, bit for bit (unmasked rows up to 64 packed slots get a single row's split plan;
// the wide kernel, STARATTN_DECODE_WIDE=1, reads each K/V tile once for all of them; =0 runs
// them in narrow blocks). GQA 4:1 (16 rows: 4 row groups) and 3:1 (16 rows: 48 slots, 3 of a wide
// block's 4 row groups), 5 rows (wide of 2, or one group), short and long contexts (one split;
// many merged), bf16 and f32 outputs.
TEST_F(CudaAttentionBatch, StackedRowsOverOneKvEqualEachRowsOwnCall) {
  struct Shape {
    int hq, hkv, d;
    DType out;
  };
  for (const char* wide : {"1", "0"}) {
  ScopedEnv env("STARATTN_DECODE_WIDE", wide);
  gpu_ = make_backend("cuda", 0);  // reads the variable
  for (const Shape& sh : {Shape{32, 8, 128, DType::bf16}, Shape{9, 3, 64, DType::f32}, Shape{32, 8, 64, DType::bf16}})
    for (int64_t S : {int64_t{40}, int64_t{3000}, int64_t{65536}})
    for (bool all : {true, false}) {
      const int64_t per_pass = gpu_->attention_rows_per_pass(sh.hq, sh.hkv);
      ASSERT_EQ(per_pass, std::min<int64_t>(16, 64 / (sh.hq / sh.hkv)));
      const int64_t rows = all ? per_pass : 5;
      const std::string what = "Hq " + std::to_string(sh.hq) + "/" + std::to_string(sh.hkv) + ", D " +
                               std::to_string(sh.d) + ", S " + std::to_string(S) + ", " + dtype_name(sh.out) +
                               ", " + std::to_string(rows) + " rows, STARATTN_DECODE_WIDE=" + wide;
      Dev q = gpu(random(rows * sh.hq * sh.d, -2.0f, 2.0f), rows, sh.hq * sh.d, DType::bf16, 8);
      Dev k = gpu(random(S * sh.hkv * sh.d, -2.0f, 2.0f), S, sh.hkv * sh.d, DType::bf16, 16);
      Dev v = gpu(random(S * sh.hkv * sh.d), S, sh.hkv * sh.d);
      Dev os = gpu_out(rows, sh.hq * sh.d, sh.out), ls = gpu_out(rows, sh.hq, DType::f32);
      Dev o1 = gpu_out(rows, sh.hq * sh.d, sh.out), l1 = gpu_out(rows, sh.hq, DType::f32);
      AttentionArgs a;
      a.k = k.t;
      a.v = v.t;
      a.n_q_heads = sh.hq;
      a.n_kv_heads = sh.hkv;
      a.head_dim = sh.d;
      a.scale = 1.0f / std::sqrt(static_cast<float>(sh.d));
      std::vector<AttentionArgs> stacked(1, a), single;
      stacked[0].q = q.t;
      stacked[0].o = os.t;
      stacked[0].lse = ls.t;
      for (int64_t r = 0; r < rows; ++r) {
        a.q = q.t.slice_rows(r, 1);
        a.o = o1.t.slice_rows(r, 1);
        a.lse = l1.t.slice_rows(r, 1);
        single.push_back(a);
      }
      gpu_->attention_batch(stacked);
      for (const AttentionArgs& one : single) gpu_->attention(one);
      gpu_->synchronize();
      const auto ob = get(*gpu_, os.t), oo = get(*gpu_, o1.t), lb = get(*gpu_, ls.t), lo = get(*gpu_, l1.t);
      EXPECT_EQ(unequal(ob, oo) + unequal(lb, lo), 0u) << what << ": stacked rows differ from their own calls";
      EXPECT_GT(largest(oo), 1e-3f) << what;
    }
  }
}

// Sixteen requests on one document as a decode step has them: attend_many stacks their rows into
// four items over the same K/V, and the launch interleaves those items' units split by split
// (order_decode_batch_units, for L2 reuse); an item over other keys sits between them. Each row
// must still get its own single-row call's O and lse, bit for bit, with the interleaving and
// without it (STARATTN_DECODE_INTERLEAVE=0).
TEST_F(CudaAttentionBatch, ItemsSharingOneKvInterleavedEqualEachRowsOwnCall) {
  const int hq = 32, hkv = 8, d = 128;
  const int64_t S = 32768, n_items = 4;
  const std::vector<float> hq_rows = random(8 * n_items * hq * d, -2.0f, 2.0f), hk = random(S * hkv * d, -2.0f, 2.0f),
                           hv = random(S * hkv * d), hq2 = random(hq * d, -2.0f, 2.0f),
                           hk2 = random(5000 * hkv * d, -2.0f, 2.0f), hv2 = random(5000 * hkv * d);
  // 4 rows an item: 16 packed rows, narrow blocks; 8: 32, wide blocks of 2 row groups.
  for (const int64_t per_item : {int64_t{4}, int64_t{8}})
  for (const char* interleave : {"1", "0"}) {
    const int64_t streams = per_item * n_items;
    ScopedEnv env("STARATTN_DECODE_INTERLEAVE", interleave), wide("STARATTN_DECODE_WIDE", "1");
    gpu_ = make_backend("cuda", 0);  // reads the variables
    SCOPED_TRACE(std::string("STARATTN_DECODE_INTERLEAVE=") + interleave + ", " + std::to_string(per_item) +
                 " rows an item");
    Dev q = gpu(std::vector<float>(hq_rows.begin(), hq_rows.begin() + streams * hq * d), streams, hq * d,
                DType::bf16, 8);
    Dev k = gpu(hk, S, hkv * d, DType::bf16, 16), v = gpu(hv, S, hkv * d);
    Dev q2 = gpu(hq2, 1, hq * d, DType::bf16, 8), k2 = gpu(hk2, 5000, hkv * d), v2 = gpu(hv2, 5000, hkv * d);
    Dev ob = gpu_out(streams, hq * d, DType::bf16), lb = gpu_out(streams, hq, DType::f32);
    Dev oo = gpu_out(streams, hq * d, DType::bf16), lo = gpu_out(streams, hq, DType::f32);
    Dev o2b = gpu_out(1, hq * d, DType::bf16), l2b = gpu_out(1, hq, DType::f32);
    Dev o2o = gpu_out(1, hq * d, DType::bf16), l2o = gpu_out(1, hq, DType::f32);
    AttentionArgs a;
    a.k = k.t;
    a.v = v.t;
    a.n_q_heads = hq;
    a.n_kv_heads = hkv;
    a.head_dim = d;
    a.scale = 1.0f / std::sqrt(static_cast<float>(d));
    AttentionArgs other = a;
    other.k = k2.t;
    other.v = v2.t;
    other.q = q2.t;
    std::vector<AttentionArgs> batch;
    for (int64_t i = 0; i < n_items; ++i) {
      a.q = q.t.slice_rows(i * per_item, per_item);
      a.o = ob.t.slice_rows(i * per_item, per_item);
      a.lse = lb.t.slice_rows(i * per_item, per_item);
      batch.push_back(a);
      if (i == 1) {
        other.o = o2b.t;
        other.lse = l2b.t;
        batch.push_back(other);
      }
    }
    gpu_->attention_batch(batch);
    for (int64_t r = 0; r < streams; ++r) {
      a.q = q.t.slice_rows(r, 1);
      a.o = oo.t.slice_rows(r, 1);
      a.lse = lo.t.slice_rows(r, 1);
      gpu_->attention(a);
    }
    other.o = o2o.t;
    other.lse = l2o.t;
    gpu_->attention(other);
    gpu_->synchronize();
    const auto o_o = get(*gpu_, oo.t);
    const size_t bad = unequal(get(*gpu_, ob.t), o_o) + unequal(get(*gpu_, lb.t), get(*gpu_, lo.t)) +
                       unequal(get(*gpu_, o2b.t), get(*gpu_, o2o.t)) + unequal(get(*gpu_, l2b.t), get(*gpu_, l2o.t));
    EXPECT_EQ(bad, 0u) << "rows of items over one K/V, or the item between them, differ from their own calls";
    EXPECT_GT(largest(o_o), 1e-3f);
  }
}

// Backend::merge_partials_batch: requests with their own number of partials (1, 2, 3, 20: past
// the inline descriptors) and rows, bf16 partials as a decode step has them (f32 lse, one with a
// -inf row), in one launch against each item's own merge_partials call (bit for bit) and the
// cpu backend's merge of the same values (the reference; 2e-2 relative for the bf16 output).
TEST_F(CudaAttentionBatch, MergeBatchEqualsEachItemsOwnMergeAndTheCpuReference) {
  const int H = 8, D = 64;
  const std::vector<std::pair<int, int64_t>> shape = {{2, 1}, {1, 1}, {3, 4}, {20, 1}, {2, 3}};
  std::vector<std::vector<Dev>> po, pl;
  std::vector<std::vector<Partial>> gparts, cparts;
  std::vector<Dev> ob, lb, oo, lo, co, cl;
  std::vector<std::vector<Dev>> cpo, cpl;
  for (const auto& [n, T] : shape) {
    po.emplace_back();
    pl.emplace_back();
    cpo.emplace_back();
    cpl.emplace_back();
    gparts.emplace_back();
    cparts.emplace_back();
    for (int r = 0; r < n; ++r) {
      const std::vector<float> o = random(T * H * D, -3.0f, 3.0f);
      std::vector<float> l = random(T * H, -5.0f, 5.0f);
      if (r == 0 && n > 1) l[0] = -INFINITY;  // a shard with nothing for row 0, head 0
      po.back().push_back(gpu(o, T, H * D));
      pl.back().push_back(gpu(l, T, H, DType::f32));
      cpo.back().push_back(cpu(o, T, H * D));
      cpl.back().push_back(cpu(l, T, H));
    }
    for (int r = 0; r < n; ++r) {
      gparts.back().push_back({po.back()[static_cast<size_t>(r)].t, pl.back()[static_cast<size_t>(r)].t});
      cparts.back().push_back({cpo.back()[static_cast<size_t>(r)].t, cpl.back()[static_cast<size_t>(r)].t});
    }
    ob.push_back(gpu_out(T, H * D, DType::bf16));
    lb.push_back(gpu_out(T, H, DType::f32));
    oo.push_back(gpu_out(T, H * D, DType::bf16));
    lo.push_back(gpu_out(T, H, DType::f32));
    co.push_back(cpu({}, T, H * D));
    cl.push_back(cpu({}, T, H));
  }
  std::vector<Backend::MergeItem> batch;
  for (size_t i = 0; i < shape.size(); ++i) batch.push_back({&gparts[i], ob[i].t, lb[i].t});
  gpu_->merge_partials_batch(batch);
  for (size_t i = 0; i < shape.size(); ++i) {
    gpu_->merge_partials(gparts[i], oo[i].t, lo[i].t);
    cpu_->merge_partials(cparts[i], co[i].t, cl[i].t);
  }
  gpu_->synchronize();
  for (size_t i = 0; i < shape.size(); ++i) {
    const std::string what = "item " + std::to_string(i) + " (" + std::to_string(shape[i].first) + " partials)";
    const auto o_b = get(*gpu_, ob[i].t), o_o = get(*gpu_, oo[i].t), l_b = get(*gpu_, lb[i].t),
               l_o = get(*gpu_, lo[i].t);
    EXPECT_EQ(unequal(o_b, o_o) + unequal(l_b, l_o), 0u) << what << ": differs from its own merge_partials call";
    testing::expect_close(get(*cpu_, co[i].t), o_b, what + " O against the cpu merge");
    testing::expect_close(get(*cpu_, cl[i].t), l_b, what + " lse against the cpu merge", 1e-5f, 1e-5f);
  }
}

// Backend::copy_batch: a decode step's K/V appends (one row each, bf16, strided destinations
// inside a cache), f32 rows, and one large copy and one converting copy that take copy() alone;
// each destination must hold exactly its source (random values; the destinations were NaN).
TEST_F(CudaAttentionBatch, CopyBatchMovesEveryItemExactly) {
  struct Shape {
    int64_t rows, cols;
    DType src, dst;
  };
  const std::vector<Shape> shape = {{1, 1024, DType::bf16, DType::bf16}, {1, 1024, DType::bf16, DType::bf16},
                                    {3, 300, DType::bf16, DType::bf16},  {2, 513, DType::f32, DType::f32},
                                    {400, 1024, DType::bf16, DType::bf16}, {5, 64, DType::f32, DType::bf16}};
  std::vector<Dev> src, cache;
  std::vector<std::vector<float>> values;
  std::vector<Backend::CopyItem> items;
  for (const Shape& sh : shape) {
    values.push_back(random(sh.rows * sh.cols, -4.0f, 4.0f));
    src.push_back(gpu(values.back(), sh.rows, sh.cols, sh.src));
    cache.push_back(gpu_out(sh.rows + 7, sh.cols, sh.dst, 24));  // rows land in the middle
    items.push_back({src.back().t, cache.back().t.slice_rows(5, sh.rows)});
  }
  gpu_->copy_batch(items);
  gpu_->synchronize();
  for (size_t i = 0; i < shape.size(); ++i) {
    const std::vector<float> got = get(*gpu_, items[i].dst);
    const size_t bad = unequal(got, values[i]);  // bf16-exact values
    EXPECT_EQ(bad, 0u) << "item " << i << ": " << bad << " elements differ";
    const std::vector<float> before = get(*gpu_, cache[i].t.slice_rows(4, 1));
    EXPECT_TRUE(std::isnan(before[0])) << "item " << i << ": the row before the destination was written";
  }
}

}  // namespace
}  // namespace starattn
