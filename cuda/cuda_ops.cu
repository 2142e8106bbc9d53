// CudaBackend ops: check the views (same rules and messages as the cpu backend), then dispatch
// to the kernel launchers on the backend's stream.
#include <algorithm>
#include <cmath>
#include <limits>

#include "cuda/attention_decode.cuh"
#include "cuda/attention_decode_batch.cuh"
#include "cuda/attention_prefill.cuh"
#include "cuda/backend_impl.h"
#include "cuda/elementwise.cuh"
#include "cuda/gemv.cuh"
#include "cuda/merge.cuh"
#include "cuda/norm.cuh"
#include "cuda/rope.cuh"
#include "cuda/sampling.cuh"
#include "runtime/sampling.h"

namespace starattn::cuda_detail {

void CudaBackend::embedding(const int32_t* ids, const Tensor& table, Tensor out) {
  check_view("embedding", "table", table);
  check_shape("embedding", "out", out, out.rows, table.cols);
  if (out.rows == 0) return;
  if (ids == nullptr) fail("embedding", "null ids for out " + shape(out));
  op_checks::check_token_ids(ids, out.rows, table.rows);
  bind();
  ProfileScope prof(profiler_.get(), "embedding");
  const auto dev = stage({{ids, static_cast<size_t>(out.rows) * sizeof(int32_t)}}, "embedding");
  const int32_t* d_ids = static_cast<const int32_t*>(dev[0]);
  dispatch(table.dtype, [&](auto tt) {
    dispatch(out.dtype, [&](auto ot) {
      using TT = decltype(tt);
      using OT = decltype(ot);
      cuda::launch_embedding(d_ids, ptr<const TT>(table), table.stride, ptr<OT>(out), out.stride, out.rows,
                             out.cols, stream_);
    });
  });
}

void CudaBackend::rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor out) {
  op_checks::check_norm_args("rmsnorm", x, nullptr, weight, eps, out, shape_checker("rmsnorm"));
  if (x.rows > INT32_MAX) fail("rmsnorm", "x " + shape(x) + " has too many rows");
  bind();
  ProfileScope prof(profiler_.get(), "rmsnorm");
  dispatch(x.dtype, [&](auto xt) {
    dispatch(weight.dtype, [&](auto wt) {
      dispatch(out.dtype, [&](auto ot) {
        using XT = decltype(xt);
        using WT = decltype(wt);
        using OT = decltype(ot);
        cuda::launch_rmsnorm(ptr<const XT>(x), x.stride, ptr<const WT>(weight), ptr<OT>(out), out.stride, x.rows,
                             x.cols, eps, stream_);
      });
    });
  });
}

// out[T, N] = x[T, K] w[N, K]^T (+ bias). Row-major views are column-major transposes, so cuBLAS
// computes out^T[N, T] = (w^T)^T[N, K] x^T[K, T]: op(A) = T on w, op(B) = N on x.
void CudaBackend::matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor out) {
  check_view("matmul", "x", x);
  check_view("matmul", "w", w);
  const std::string shapes = "x " + shape(x) + " * w " + shape(w) + "^T -> out " + shape(out);
  if (x.cols != w.cols) fail("matmul", shapes + ": inner dimensions differ");
  check_shape("matmul", "out", out, x.rows, w.rows);
  if (bias) check_shape("matmul", "bias", *bias, 1, w.rows);
  if (x.dtype != w.dtype) fail("matmul", shapes + ": x and w must have the same dtype");
  if (overlaps(out, x) || overlaps(out, w)) fail("matmul", shapes + ": out overlaps an input");
  const int64_t T = x.rows, N = w.rows, K = x.cols;
  if (T == 0 || N == 0) return;
  auto ld = [](const Tensor& t) { return std::max<int64_t>({t.stride, t.cols, 1}); };
  if (T > INT32_MAX || N > INT32_MAX || K > INT32_MAX || ld(x) > INT32_MAX || ld(w) > INT32_MAX ||
      ld(out) > INT32_MAX)
    fail("matmul", shapes + ": too large for 32-bit cuBLAS dimensions");
  bind();
  ProfileScope prof(profiler_.get(), "matmul");
  if (prof.active())
    prof.append(" N=" + std::to_string(N) + " K=" + std::to_string(K) + (T == 1 ? " T=1" : " T>1") +
                (bias ? " +bias" : ""));
  const size_t oes = dtype_size(out.dtype);
  // One bf16 row (a decode step): the weight-streaming kernel (cuda/gemv.cuh), bias fused. The
  // vocabulary projection stays on cuBLAS, which already streams it at ~4.2 TB/s.
  if (gemv_ && T == 1 && x.dtype == DType::bf16 && N <= 65536 &&
      cuda::gemv_supported(x.data, w.data, ld(w), K)) {
    if (prof.active()) prof.append(" gemv");
    dispatch(out.dtype, [&](auto ot) {
      using OT = decltype(ot);
      if (bias == nullptr) {
        cuda::launch_gemv_bf16<OT, bf16>(ptr<const bf16>(x), ptr<const bf16>(w), ld(w), nullptr, ptr<OT>(out), N, K,
                                         stream_);
      } else {
        dispatch(bias->dtype, [&](auto bt) {
          using BT = decltype(bt);
          cuda::launch_gemv_bf16<OT, BT>(ptr<const bf16>(x), ptr<const bf16>(w), ld(w), ptr<const BT>(*bias),
                                         ptr<OT>(out), N, K, stream_);
        });
      }
    });
    return;
  }
  if (K == 0) {
    check_cuda(cudaMemset2DAsync(out.data, static_cast<size_t>(ld(out)) * oes, 0, static_cast<size_t>(N) * oes,
                                 static_cast<size_t>(T), stream_),
               "matmul: cudaMemset2DAsync");
  } else {
    const cudaDataType_t in_type = x.dtype == DType::f32 ? CUDA_R_32F : CUDA_R_16BF;
    const cudaDataType_t out_type = out.dtype == DType::f32 ? CUDA_R_32F : CUDA_R_16BF;
    const float alpha = 1.0f, beta = 0.0f;
    check_cublas(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(T),
                              static_cast<int>(K), &alpha, w.data, in_type, static_cast<int>(ld(w)), x.data,
                              in_type, static_cast<int>(ld(x)), &beta, out.data, out_type,
                              static_cast<int>(ld(out)), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "matmul: cublasGemmEx");
  }
  if (bias) {
    dispatch(out.dtype, [&](auto ot) {
      dispatch(bias->dtype, [&](auto bt) {
        using OT = decltype(ot);
        using BT = decltype(bt);
        cuda::launch_bias_add(ptr<OT>(out), out.stride, ptr<const BT>(*bias), T, N, stream_);
      });
    });
  }
}

void CudaBackend::rope(const RopeArgs& a) {
  check_view("rope", "x", a.x);
  if (a.n_heads <= 0 || a.head_dim <= 0 || a.head_dim % 2 != 0)
    fail("rope", "needs n_heads > 0 and an even head_dim > 0, got n_heads " + std::to_string(a.n_heads) +
                     ", head_dim " + std::to_string(a.head_dim));
  if (a.x.cols != static_cast<int64_t>(a.n_heads) * a.head_dim)
    fail("rope", "x " + shape(a.x) + " is not [T x " + std::to_string(a.n_heads) + " heads * " +
                     std::to_string(a.head_dim) + "]");
  if (a.x.rows == 0) return;
  if (a.positions == nullptr || a.inv_freq == nullptr)
    fail("rope", "null positions or inv_freq for x " + shape(a.x));
  bind();
  ProfileScope prof(profiler_.get(), "rope");
  // Every layer of a forward passes the same positions and inv_freq: copied once, then reused.
  const void* d_pos = cached_copy(rope_positions_, a.positions, static_cast<size_t>(a.x.rows) * sizeof(int32_t), "rope");
  const void* d_freq = cached_copy(rope_inv_freq_, a.inv_freq, static_cast<size_t>(a.head_dim / 2) * sizeof(float), "rope");
  dispatch(a.x.dtype, [&](auto xt) {
    using T = decltype(xt);
    cuda::launch_rope(ptr<T>(a.x), a.x.stride, a.x.rows, a.n_heads, a.head_dim,
                      static_cast<const int32_t*>(d_pos), static_cast<const float*>(d_freq), stream_);
  });
}

bool CudaBackend::attention_params(const char* op, const AttentionArgs& a, cuda::AttentionParams& p) {
  op_checks::check_attention_shapes(op, a, shape_checker(op));
  const int64_t T = a.q.rows, S = a.k.rows, D = a.head_dim;
  if (D != 64 && D != 128) fail(op, "head_dim " + std::to_string(D) + " is not supported on cuda (64, 128)");
  if (a.q.dtype != DType::bf16 || a.k.dtype != DType::bf16 || a.v.dtype != DType::bf16)
    fail(op, "q, k and v must be bf16 on cuda, got q " + shape(a.q) + ", k " + shape(a.k) + ", v " + shape(a.v));
  if (a.lse.dtype != DType::f32) fail(op, "lse " + shape(a.lse) + " must be f32");
  if (!(a.scale > 0.0f)) fail(op, "scale must be > 0, got " + std::to_string(a.scale));
  if (T == 0) return false;
  if (T > INT32_MAX || S > INT32_MAX) fail(op, "more than 2^31 rows or keys");
  // The tiles are read with 16-byte copies: every row start must be 16-byte aligned.
  for (const Tensor* t : {&a.q, &a.k, &a.v}) {
    if (t->empty()) continue;
    if (reinterpret_cast<uintptr_t>(t->data) % 16 != 0 || (t->rows > 1 && t->stride % 8 != 0))
      fail(op, "q, k and v rows must start on 16-byte boundaries (stride a multiple of 8), got " + shape(*t));
  }
  p = cuda::AttentionParams{};
  p.q = ptr<const bf16>(a.q);
  p.k = ptr<const bf16>(a.k);
  p.v = ptr<const bf16>(a.v);
  p.o = a.o.data;
  p.lse = ptr<float>(a.lse);
  p.q_stride = a.q.stride;
  p.k_stride = a.k.stride;
  p.v_stride = a.v.stride;
  p.o_stride = a.o.stride;
  p.lse_stride = a.lse.stride;
  p.T = static_cast<int>(T);
  p.S = static_cast<int>(S);
  p.n_q_heads = a.n_q_heads;
  p.n_kv_heads = a.n_kv_heads;
  p.scale_log2 = a.scale * 1.4426950408889634f;
  p.causal = a.mask == MaskKind::causal;
  // Clamp the offset to where it stops mattering, so the kernels' int64 sums never overflow.
  p.causal_offset = std::clamp<int64_t>(a.causal_offset, -(T + 1), S + 1);

  // Few query rows (decoding, short queries against long contexts): split the keys, pack the
  // group's query heads. Otherwise the prefill kernel, which has enough query tiles to fill the GPU.
  const int64_t group = a.n_q_heads / a.n_kv_heads;
  const int64_t prefill_blocks = cuda::ceil_div(T, cuda::kPrefillRows) * a.n_q_heads;
  bool decode = T <= 16 || (prefill_blocks < num_sms_ && T * group <= 256);
  if (attention_path_ == AttentionPath::prefill) decode = false;
  if (attention_path_ == AttentionPath::decode) decode = true;
  return decode;
}

cuda::DecodePlan CudaBackend::decode_plan(const cuda::AttentionParams& p, int head_dim) const {
  const int stages = decode_keys_per_tile_ == 32 ? 2 : decode_stages_;
  return cuda::plan_attention_decode(p, head_dim, num_sms_, decode_keys_per_tile_, stages,
                                     cuda::decode_blocks_per_sm(head_dim, decode_keys_per_tile_, stages), decode_wide_);
}

void CudaBackend::attention(const AttentionArgs& a) {
  const char* op = "attention";
  cuda::AttentionParams p;
  const bool decode = attention_params(op, a, p);
  if (p.T == 0) return;
  bind();
  const int64_t T = a.q.rows, D = a.head_dim;
  const bool o_f32 = a.o.dtype == DType::f32;
  ProfileScope prof(profiler_.get(), decode ? "attention decode" : "attention prefill");
  if (!decode) {
    cuda::launch_attention_prefill(p, static_cast<int>(D), o_f32, stream_, prefill_variant_);
    return;
  }
  const cuda::DecodePlan plan = decode_plan(p, static_cast<int>(D));
  if (prof.active()) prof.append(std::string(T == 1 ? " T=1" : " T>1") + (plan.splits == 1 ? " 1 split" : " split+merge"));
  float* ws = plan.workspace_floats > 0 ? workspace(plan.workspace_floats, op) : nullptr;
  cuda::launch_attention_decode(p, static_cast<int>(D), o_f32, plan, ws, stream_);
}

int64_t CudaBackend::attention_rows_per_pass(int n_q_heads, int n_kv_heads) const {
  if (n_kv_heads <= 0 || n_q_heads % n_kv_heads != 0 || attention_path_ == AttentionPath::prefill) return 1;
  // Unmasked rows up to kDecodeWideRows packed (row, head) slots get a single row's split plan
  // (decode_rows_planned_as_one) and, on the default tiles, one pass of the wide kernel over
  // the keys; and at most 16 rows, which always take the decode path (attention_params).
  return std::clamp<int64_t>(cuda::kDecodeWideRows / (n_q_heads / n_kv_heads), 1, 16);
}

void CudaBackend::attention_batch(const std::vector<AttentionArgs>& items) {
  const char* op = "attention_batch";
  // The decode-path items of one output dtype go into one launch; the rest (long query rows,
  // which the prefill kernel takes, or another output dtype) run as their own calls. Each item
  // is checked as attention() checks it.
  std::vector<cuda::AttentionParams> params;
  std::vector<cuda::DecodePlan> plans;
  std::vector<const AttentionArgs*> alone;
  DType o_dtype = DType::bf16;
  int head_dim = 0;
  for (const AttentionArgs& a : items) {
    cuda::AttentionParams p;
    const bool decode = attention_params(op, a, p);
    if (p.T == 0) continue;
    if (!decode || (!params.empty() && (a.o.dtype != o_dtype || a.head_dim != head_dim ||
                                        p.n_q_heads != params[0].n_q_heads || p.n_kv_heads != params[0].n_kv_heads))) {
      alone.push_back(&a);
      continue;
    }
    if (params.empty()) {
      o_dtype = a.o.dtype;
      head_dim = a.head_dim;
    }
    params.push_back(p);
    plans.push_back(decode_plan(p, a.head_dim));
  }
  for (const AttentionArgs* a : alone) attention(*a);
  if (params.empty()) return;
  bind();
  ProfileScope prof(profiler_.get(), "attention decode batch");
  if (prof.active()) prof.append(" items=" + std::to_string(params.size()));
  auto run = [&](auto out_tag) {
    using OutT = decltype(out_tag);
    std::vector<cuda::DecodeBatchItem> bitems;
    std::vector<cuda::DecodeBatchUnit> units;
    std::vector<cuda::MergeBatchItem<OutT>> merges;
    int64_t ws_floats = 0;
    // Count the workspace first (the plans say how much), then lay the items out in it.
    for (const cuda::DecodePlan& plan : plans) ws_floats += plan.workspace_floats;
    float* ws = ws_floats > 0 ? workspace(ws_floats, op) : nullptr;
    int64_t merge_blocks = 0, unit_counts[cuda::kDecodeBlockKinds] = {};
    cuda::plan_attention_decode_batch<OutT>(params, head_dim, plans, bitems, units, merges, ws, ws_floats,
                                            merge_blocks, unit_counts, decode_interleave_);
    const auto dev = stage({{bitems.data(), bitems.size() * sizeof(bitems[0])},
                            {units.data(), units.size() * sizeof(units[0])},
                            {merges.data(), merges.size() * sizeof(cuda::MergeBatchItem<OutT>)}},
                           op);
    cuda::launch_attention_decode_batch<OutT>(
        static_cast<const cuda::DecodeBatchItem*>(dev[0]), static_cast<const cuda::DecodeBatchUnit*>(dev[1]),
        unit_counts, static_cast<const cuda::MergeBatchItem<OutT>*>(dev[2]),
        static_cast<int>(merges.size()), merge_blocks, params[0].n_q_heads, params[0].n_kv_heads, head_dim,
        plans[0].keys_per_tile, plans[0].stages, stream_);
  };
  if (o_dtype == DType::f32) run(float{});
  else run(cuda::bf16{});
}

void CudaBackend::merge_partials(const std::vector<Partial>& parts, Tensor o, Tensor lse) {
  std::vector<cuda::ShardDesc> descs;
  if (!merge_descriptors("merge_partials", parts, o, lse, descs)) return;
  bind();
  ProfileScope prof(profiler_.get(), "merge_partials");
  const int n = static_cast<int>(parts.size());
  const int64_t T = o.rows, hq = lse.cols, d = o.cols / hq;
  const DType in = n > 0 ? parts[0].o.dtype : DType::f32;
  if (n <= cuda::kInlineShards) {
    // The descriptors travel in the kernel's parameters: no host->device copy per layer.
    dispatch(in, [&](auto it) {
      dispatch(o.dtype, [&](auto ot) {
        using InT = decltype(it);
        using OT = decltype(ot);
        cuda::InlineShards<InT> list{};
        for (int r = 0; r < n; ++r) list.shards[r] = descs[static_cast<size_t>(r)];
        cuda::launch_merge_partials<OT>(list, n, ptr<OT>(o), o.stride, ptr<float>(lse), lse.stride, T,
                                        static_cast<int>(hq), static_cast<int>(d), stream_);
      });
    });
    return;
  }
  const auto dev = stage({{descs.data(), descs.size() * sizeof(cuda::ShardDesc)}}, "merge_partials");
  const auto* d_descs = static_cast<const cuda::ShardDesc*>(dev[0]);
  dispatch(in, [&](auto it) {
    dispatch(o.dtype, [&](auto ot) {
      using InT = decltype(it);
      using OT = decltype(ot);
      cuda::launch_merge_partials<OT>(cuda::ShardList<InT>{d_descs}, n, ptr<OT>(o), o.stride, ptr<float>(lse),
                                      lse.stride, T, static_cast<int>(hq), static_cast<int>(d), stream_);
    });
  });
}

void CudaBackend::merge_partials_batch(const std::vector<MergeItem>& items) {
  const char* op = "merge_partials_batch";
  // Items of the first item's shape (heads, head dim, dtypes) share one launch; any other item
  // (none in a decode step, where every request is one model's) is merged on its own.
  std::vector<cuda::ShardDesc> descs, one;
  std::vector<cuda::MergeListItem<void>> list;
  std::vector<const MergeItem*> alone;
  int64_t blocks = 0, H = 0, D = 0;
  DType in = DType::f32, out = DType::f32;
  for (const MergeItem& m : items) {
    if (m.parts == nullptr) fail(op, "an item without partials");
    one.clear();
    if (!merge_descriptors(op, *m.parts, m.o, m.lse, one)) continue;
    if (m.parts->empty()) {  // o = 0, lse = -inf: merge_partials' own case
      alone.push_back(&m);
      continue;
    }
    const int64_t h = m.lse.cols, d = m.o.cols / h;
    const DType item_in = (*m.parts)[0].o.dtype;
    if (list.empty()) {
      H = h;
      D = d;
      in = item_in;
      out = m.o.dtype;
    } else if (h != H || d != D || item_in != in || m.o.dtype != out) {
      alone.push_back(&m);
      continue;
    }
    list.push_back({static_cast<int64_t>(descs.size()), static_cast<int>(one.size()), m.o.data, m.o.stride,
                    ptr<float>(m.lse), m.lse.stride, blocks});
    descs.insert(descs.end(), one.begin(), one.end());
    blocks += m.o.rows * h;
  }
  for (const MergeItem* m : alone) merge_partials(*m->parts, m->o, m->lse);
  if (list.empty()) return;
  if (list.size() > INT32_MAX || H > INT32_MAX || D > INT32_MAX) fail(op, "too many items, heads or columns");
  bind();
  ProfileScope prof(profiler_.get(), "merge_partials batch");
  if (prof.active()) prof.append(" items=" + std::to_string(list.size()));
  // MergeListItem<OutT> has the same layout for every OutT (a pointer), so one table serves.
  static_assert(sizeof(cuda::MergeListItem<void>) == sizeof(cuda::MergeListItem<float>));
  const auto dev = stage({{descs.data(), descs.size() * sizeof(cuda::ShardDesc)},
                          {list.data(), list.size() * sizeof(list[0])}},
                         op);
  dispatch(in, [&](auto it) {
    dispatch(out, [&](auto ot) {
      using InT = decltype(it);
      using OT = decltype(ot);
      cuda::launch_merge_list_batch<InT, OT>(static_cast<const cuda::ShardDesc*>(dev[0]),
                                             static_cast<const cuda::MergeListItem<OT>*>(dev[1]),
                                             static_cast<int>(list.size()), blocks, static_cast<int>(H),
                                             static_cast<int>(D), stream_);
    });
  });
}

bool CudaBackend::merge_descriptors(const char* op, const std::vector<Partial>& parts, const Tensor& o,
                                    const Tensor& lse, std::vector<cuda::ShardDesc>& descs) {
  const int64_t d = op_checks::check_merge_shapes(op, parts, o, lse, shape_checker(op));
  if (lse.dtype != DType::f32) fail(op, "lse " + shape(lse) + " must be f32");
  const int64_t T = o.rows, hq = lse.cols;
  descs.reserve(descs.size() + parts.size());
  for (size_t r = 0; r < parts.size(); ++r) {
    const std::string which = " of partial " + std::to_string(r) + " of " + std::to_string(parts.size());
    const Tensor& po = parts[r].o;
    const Tensor& pl = parts[r].lse;
    if (pl.dtype != DType::f32) fail(op, "lse " + shape(pl) + which + " must be f32");
    if (po.dtype != parts[0].o.dtype)
      fail(op, "o " + shape(po) + which + " differs in dtype from partial 0 " + shape(parts[0].o));
    descs.push_back({po.data, ptr<const float>(pl), po.stride, pl.stride});
  }
  if (T == 0 || hq == 0) return false;
  if (hq > INT32_MAX || d > INT32_MAX || parts.size() > INT32_MAX) fail(op, "too many heads or partials");
  return true;
}

void CudaBackend::swiglu(const Tensor& gate, const Tensor& up, Tensor out) {
  check_view("swiglu", "gate", gate);
  check_shape("swiglu", "up", up, gate.rows, gate.cols);
  check_shape("swiglu", "out", out, gate.rows, gate.cols);
  if (up.dtype != gate.dtype || out.dtype != gate.dtype)
    fail("swiglu", "gate " + shape(gate) + ", up " + shape(up) + " and out " + shape(out) +
                       " must share one dtype on cuda");
  bind();
  ProfileScope prof(profiler_.get(), "swiglu");
  dispatch(gate.dtype, [&](auto gt) {
    using T = decltype(gt);
    cuda::launch_swiglu(ptr<const T>(gate), gate.stride, ptr<const T>(up), up.stride, ptr<T>(out), out.stride,
                        gate.rows, gate.cols, stream_);
  });
}

void CudaBackend::add(Tensor x, const Tensor& y) {
  check_view("add", "x", x);
  check_shape("add", "y", y, x.rows, x.cols);
  bind();
  ProfileScope prof(profiler_.get(), "add");
  dispatch(x.dtype, [&](auto xt) {
    dispatch(y.dtype, [&](auto yt) {
      using XT = decltype(xt);
      using YT = decltype(yt);
      cuda::launch_add(ptr<XT>(x), x.stride, ptr<const YT>(y), y.stride, x.rows, x.cols, stream_);
    });
  });
}

void CudaBackend::add_rmsnorm(Tensor x, const Tensor& y, const Tensor& weight, float eps, Tensor out) {
  const char* op = "add_rmsnorm";
  op_checks::check_norm_args(op, x, &y, weight, eps, out, shape_checker(op));
  if (x.rows > INT32_MAX) fail(op, "x " + shape(x) + " has too many rows");
  bind();
  ProfileScope prof(profiler_.get(), "add_rmsnorm");
  dispatch(x.dtype, [&](auto xt) {
    dispatch(y.dtype, [&](auto yt) {
      dispatch(weight.dtype, [&](auto wt) {
        dispatch(out.dtype, [&](auto ot) {
          using XT = decltype(xt);
          using YT = decltype(yt);
          using WT = decltype(wt);
          using OT = decltype(ot);
          cuda::launch_add_rmsnorm(ptr<XT>(x), x.stride, ptr<const YT>(y), y.stride, ptr<const WT>(weight),
                                   ptr<OT>(out), out.stride, x.rows, x.cols, eps, stream_);
        });
      });
    });
  });
}

int32_t CudaBackend::sample(const Tensor& logits_row, const SamplingParams& params, uint64_t step) {
  check_view("sample", "logits", logits_row);
  if (logits_row.rows != 1 || logits_row.cols == 0)
    fail("sample", "logits " + shape(logits_row) + " must be one non-empty row");
  if (logits_row.cols > INT32_MAX) fail("sample", "logits " + shape(logits_row) + " too long");
  bind();
  ProfileScope prof(profiler_.get(), "sample");
  const int n = static_cast<int>(logits_row.cols);
  // sample_token validates the parameters before anything else; a one-logit call gives the
  // greedy path the very same checks and messages.
  if (params.temperature == 0.0f) {
    const float one = 0.0f;
    sample_token(&one, 1, params, step);
    std::vector<int32_t> pick;
    argmax_rows(logits_row, pick);
    if (pick[0] >= 0) return pick[0];
    // A NaN or +inf logit: the host path below raises sample_token's own error.
  }
  std::vector<float> row(static_cast<size_t>(n));
  download(logits_row, row.data());
  return sample_token(row.data(), n, params, step);
}

void CudaBackend::argmax_rows(const Tensor& logits, std::vector<int32_t>& out) {
  check_view("argmax_rows", "logits", logits);
  if (logits.cols == 0 || logits.cols > INT32_MAX)
    fail("argmax_rows", "logits " + shape(logits) + " need 1 to 2^31 - 1 columns");
  out.assign(static_cast<size_t>(logits.rows), -1);
  if (logits.rows == 0) return;
  bind();
  ProfileScope prof(profiler_.get(), "argmax_rows");
  if (logits.rows > result_rows_) {
    if (d_result_) cudaFree(d_result_);
    if (h_result_) cudaFreeHost(h_result_);
    d_result_ = h_result_ = nullptr;
    result_rows_ = 0;
    check_cuda(cudaMalloc(&d_result_, 2 * sizeof(int32_t) * logits.rows), "cudaMalloc (sample results)");
    check_cuda(cudaMallocHost(&h_result_, 2 * sizeof(int32_t) * logits.rows), "cudaMallocHost (sample results)");
    result_rows_ = logits.rows;
  }
  dispatch(logits.dtype, [&](auto lt) {
    using T = decltype(lt);
    cuda::launch_argmax(ptr<const T>(logits), logits.rows, logits.stride, static_cast<int>(logits.cols), d_result_,
                        stream_);
  });
  check_cuda(cudaMemcpyAsync(h_result_, d_result_, 2 * sizeof(int32_t) * logits.rows, cudaMemcpyDeviceToHost, stream_),
             "argmax_rows: cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(stream_), "argmax_rows");
  for (int64_t r = 0; r < logits.rows; ++r)
    if (h_result_[2 * r + 1] < 0) out[static_cast<size_t>(r)] = h_result_[2 * r];
}

void CudaBackend::synchronize() {
  bind();
  check_cuda(cudaStreamSynchronize(stream_), "synchronize");
}

}  // namespace starattn::cuda_detail
