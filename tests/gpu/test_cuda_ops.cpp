// Every op of the cuda backend against the cpu backend (the reference) on fresh random inputs.
//
// Inputs are drawn in f32 and rounded to bf16 on the host, so both backends see identical values
// and the differences come only from the cuda backend's bf16 storage and fp32 accumulation order.
// Outputs are pre-filled with NaN: a NaN afterwards means an element was never written (or went
// NaN). Tolerances: max |err| <= rel * max |ref| over the tensor, and per element
// |err| <= rel * max |ref| + rtol * |ref|; rel is 2e-2 where results are stored in bf16.
// Without a CUDA device every test is skipped.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "runtime/backend.h"
#include "runtime/model_config.h"
#include "runtime/rope.h"
#include "runtime/sampling.h"
#include "tests/gpu/gpu_test_support.h"

namespace starattn {
namespace {

using testing::bf16_round;
using testing::Dev;
using testing::expect_close;
using testing::ScopedEnv;

class CudaOps : public testing::CudaVsCpuTest {
 protected:
  CudaOps() : CudaVsCpuTest(20261128) {}
};

// ---- memory and transfers ----

TEST_F(CudaOps, UploadDownloadCopy) {
  const int64_t R = 37, C = 129;
  std::vector<float> h(static_cast<size_t>(R * C));
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  for (float& x : h) x = dist(rng_);  // not bf16-exact on purpose
  Dev f = gpu(h, R, C, DType::f32, 3);
  EXPECT_EQ(get(*gpu_, f.t), h);
  Dev b = gpu(h, R, C, DType::bf16, 5);
  std::vector<float> rounded(h);
  for (float& x : rounded) x = bf16_round(x);
  EXPECT_EQ(get(*gpu_, b.t), rounded);
  // copy with and without conversion, strided on both sides
  Dev b2 = gpu_out(R, C, DType::bf16, 11);
  gpu_->copy(f.t, b2.t);
  EXPECT_EQ(get(*gpu_, b2.t), rounded);
  Dev f2 = gpu_out(R, C, DType::f32, 1);
  gpu_->copy(b.t, f2.t);
  EXPECT_EQ(get(*gpu_, f2.t), rounded);
  Dev f3 = gpu_out(R, C, DType::f32);
  gpu_->copy(f.t, f3.t);
  EXPECT_EQ(get(*gpu_, f3.t), h);
  EXPECT_GT(gpu_->free_bytes(), 0);
  EXPECT_THROW(gpu_->alloc(2, 2, DType::f16), std::invalid_argument);
}

// ---- attention ----

struct AttnCase {
  int64_t T, S;
  int hq, hkv, d;
  MaskKind mask;
  int64_t offset;
  DType o_dtype;
};

std::string describe(const AttnCase& c) {
  return "T " + std::to_string(c.T) + " S " + std::to_string(c.S) + " Hq " + std::to_string(c.hq) + " Hkv " +
         std::to_string(c.hkv) + " D " + std::to_string(c.d) +
         (c.mask == MaskKind::causal ? " causal offset " + std::to_string(c.offset) : " no mask") + " o " +
         dtype_name(c.o_dtype);
}

class CudaAttention : public CudaOps {
 protected:
  // A cuda backend whose attention kernel is forced through STARATTN_CUDA_ATTENTION (read when
  // the backend is made), one per path.
  Backend* forced(const std::string& path) {
    std::unique_ptr<Backend>& b = forced_[path];
    if (!b) {
      ScopedEnv env("STARATTN_CUDA_ATTENTION", path);
      b = make_backend("cuda", 0);
    }
    return b.get();
  }
  std::map<std::string, std::unique_ptr<Backend>> forced_;

  // Runs one case on the cpu and on the gpu with the attention kernel forced to `path`
  // ("prefill", "decode" or "auto").
  void run(const AttnCase& c, const char* path) { run_on(c, forced(path), std::string("path ") + path); }

  // A cuda backend on the prefill path with STARATTN_PREFILL_VARIANT=`variant` (read when the
  // backend is made), one per variant.
  Backend* prefill_variant(const std::string& variant) {
    std::unique_ptr<Backend>& b = variants_[variant];
    if (!b) {
      ScopedEnv attention("STARATTN_CUDA_ATTENTION", "prefill"), prefill("STARATTN_PREFILL_VARIANT", variant);
      b = make_backend("cuda", 0);
    }
    return b.get();
  }
  std::map<std::string, std::unique_ptr<Backend>> variants_;

  // Runs one case on the cpu and on the gpu backend g; `label` names g in failure messages.
  void run_on(const AttnCase& c, Backend* g, const std::string& label) {
    const std::string what = describe(c) + " " + label;
    const int64_t qdim = int64_t{c.hq} * c.d, kvdim = int64_t{c.hkv} * c.d;
    const std::vector<float> q = random(c.T * qdim, -2.0f, 2.0f), k = random(c.S * kvdim),
                             v = random(c.S * kvdim);
    AttentionArgs a;
    a.n_q_heads = c.hq;
    a.n_kv_heads = c.hkv;
    a.head_dim = c.d;
    a.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    a.mask = c.mask;
    a.causal_offset = c.offset;

    Dev cq = cpu(q, c.T, qdim), ck = cpu(k, c.S, kvdim), cv = cpu(v, c.S, kvdim);
    Dev co = cpu({}, c.T, qdim), cl = cpu({}, c.T, c.hq);
    a.q = cq.t, a.k = ck.t, a.v = cv.t, a.o = co.t, a.lse = cl.t;
    cpu_->attention(a);

    // Padded strides on the gpu (multiples of 8 elements, as fused QKV slices are).
    Dev gq = on(*g, q, c.T, qdim, DType::bf16, 8), gk = on(*g, k, c.S, kvdim, DType::bf16, 16),
        gv = on(*g, v, c.S, kvdim, DType::bf16, 24);
    Dev go = on(*g, std::vector<float>(static_cast<size_t>(c.T * qdim), NAN), c.T, qdim, c.o_dtype, 8);
    Dev gl = on(*g, std::vector<float>(static_cast<size_t>(c.T * c.hq), NAN), c.T, c.hq, DType::f32, 1);
    a.q = gq.t, a.k = gk.t, a.v = gv.t, a.o = go.t, a.lse = gl.t;
    g->attention(a);
    g->synchronize();
    expect_close(get(*cpu_, co.t), get(*g, go.t), what + " o");
    expect_close(get(*cpu_, cl.t), get(*g, gl.t), what + " lse", 1e-4f, 1e-4f);
  }
};

// Prefill-sized cases on both kernels: tile remainders, GQA groups, masks with cached-prefix
// offsets and with negative offsets (leading rows see no key at all).
TEST_F(CudaAttention, MatchesCpu) {
  struct Heads {
    int hq, hkv, d;
  };
  const Heads heads[] = {{32, 8, 128}, {4, 4, 128}, {9, 3, 64}, {4, 4, 64}};
  const std::pair<int64_t, int64_t> sizes[] = {{1, 1}, {5, 37}, {64, 64}, {65, 130}, {17, 1}, {200, 300}, {300, 300}};
  for (const Heads& h : heads)
    for (const auto& ts : sizes) {
      const int64_t T = ts.first, S = ts.second;
      const std::pair<MaskKind, int64_t> masks[] = {
          {MaskKind::none, 0}, {MaskKind::causal, 0}, {MaskKind::causal, S - T}, {MaskKind::causal, -3}};
      for (const auto& m : masks)
        for (const char* path : {"prefill", "decode"}) {
          if (std::string(path) == "decode" && T * (h.hq / h.hkv) > 1200) continue;  // slow, not its job
          run({T, S, h.hq, h.hkv, h.d, m.first, m.second, DType::bf16}, path);
          if (HasFailure()) return;
        }
    }
}

// Every prefill kernel variant, the Hopper wgmma kernel included (on other devices, and for
// shapes it does not take, it falls back to the default kernel): tile remainders, GQA groups,
// D 64 and 128, masks with cached-prefix and negative offsets, bf16 and f32 output.
// The fallback is correct too, so the comparisons below would pass without the Hopper kernel:
// on an sm_90 GPU the default must really be wgmma.
TEST_F(CudaAttention, HopperRunsTheWgmmaKernelByDefault) {
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  if (prop.major != 9 || prop.minor != 0) GTEST_SKIP() << "not an sm_90 GPU: " << prop.name;
  EXPECT_TRUE(cuda_prefill_uses_wgmma(*gpu_)) << prop.name;
  EXPECT_FALSE(cuda_prefill_uses_wgmma(*prefill_variant("w4n64")));
}

TEST_F(CudaAttention, EveryPrefillVariant) {
  struct Heads {
    int hq, hkv, d;
  };
  const Heads heads[] = {{32, 8, 128}, {4, 4, 128}, {9, 3, 64}};
  const std::pair<int64_t, int64_t> sizes[] = {{1, 1}, {5, 37}, {65, 130}, {129, 1000}, {300, 300}, {200, 700}};
  for (const char* variant : {"w4n64", "w8n64", "w4n32", "w8n32", "wgmma"}) {
    Backend* g = prefill_variant(variant);
    const std::string label = std::string("prefill variant ") + variant;
    for (const Heads& h : heads)
      for (const auto& ts : sizes) {
        const int64_t T = ts.first, S = ts.second;
        const std::pair<MaskKind, int64_t> masks[] = {
            {MaskKind::none, 0}, {MaskKind::causal, 0}, {MaskKind::causal, S - T}, {MaskKind::causal, -70}};
        for (const auto& m : masks) {
          run_on({T, S, h.hq, h.hkv, h.d, m.first, m.second, DType::bf16}, g, label);
          if (HasFailure()) return;
        }
      }
    run_on({300, 500, 32, 8, 128, MaskKind::causal, 200, DType::f32}, g, label);
    run_on({70, 90, 9, 3, 64, MaskKind::none, 0, DType::f32}, g, label);
    if (HasFailure()) return;
  }
}

TEST_F(CudaAttention, F32OutputAndAutoPath) {
  run({70, 90, 32, 8, 128, MaskKind::causal, 20, DType::f32}, "auto");
  run({3, 500, 9, 3, 64, MaskKind::none, 0, DType::f32}, "auto");
  run({40, 2000, 32, 8, 128, MaskKind::causal, 1960, DType::bf16}, "auto");
}

// Decoding: one to four new rows against a long cache (split over the keys and merged).
TEST_F(CudaAttention, DecodeLongContext) {
  for (int64_t S : {int64_t{31}, int64_t{1000}, int64_t{4097}, int64_t{70000}})
    for (int64_t T : {1, 2, 4}) {
      run({T, S, 32, 8, 128, MaskKind::causal, S - T, DType::bf16}, "auto");
      run({T, S, 9, 3, 64, MaskKind::none, 0, DType::bf16}, "auto");
      if (HasFailure()) return;
    }
  run({1, 70000, 32, 8, 128, MaskKind::none, 0, DType::f32}, "prefill");
}

TEST_F(CudaAttention, NoKeysAndInPlace) {
  // S = 0: every row sees nothing: o = 0, lse = -inf.
  const int hq = 4, hkv = 2, d = 64;
  Dev q = gpu(random(3 * hq * d), 3, hq * d), k = gpu({}, 0, hkv * d), v = gpu({}, 0, hkv * d);
  Dev o = gpu_out(3, hq * d, DType::bf16), l = gpu_out(3, hq, DType::f32);
  AttentionArgs a;
  a.q = q.t, a.k = k.t, a.v = v.t, a.o = o.t, a.lse = l.t;
  a.n_q_heads = hq, a.n_kv_heads = hkv, a.head_dim = d, a.scale = 0.125f;
  gpu_->attention(a);
  for (float x : get(*gpu_, o.t)) ASSERT_EQ(x, 0.0f);
  for (float x : get(*gpu_, l.t)) ASSERT_EQ(x, -INFINITY);

  // o = q (in place), as the engine may do; both kernels, and the wgmma prefill variant.
  for (const char* path : {"prefill", "decode", "wgmma"}) {
    Backend* g = std::string(path) == "wgmma" ? prefill_variant(path) : forced(path);
    const int64_t T = 70, S = 100;
    const std::vector<float> hqv = random(T * 8 * 128), hk = random(S * 2 * 128), hv = random(S * 2 * 128);
    Dev cq = cpu(hqv, T, 8 * 128), ck = cpu(hk, S, 256), cv = cpu(hv, S, 256), co = cpu({}, T, 8 * 128),
        cl = cpu({}, T, 8);
    AttentionArgs b;
    b.n_q_heads = 8, b.n_kv_heads = 2, b.head_dim = 128, b.scale = 0.088f, b.mask = MaskKind::causal;
    b.causal_offset = S - T;
    b.q = cq.t, b.k = ck.t, b.v = cv.t, b.o = co.t, b.lse = cl.t;
    cpu_->attention(b);
    Dev gq = on(*g, hqv, T, 8 * 128, DType::bf16), gk = on(*g, hk, S, 256, DType::bf16),
        gv = on(*g, hv, S, 256, DType::bf16), gl = on(*g, {}, T, 8, DType::f32);
    b.q = gq.t, b.k = gk.t, b.v = gv.t, b.o = gq.t, b.lse = gl.t;
    g->attention(b);
    expect_close(get(*cpu_, co.t), get(*g, gq.t), std::string("in-place o, ") + path);
    expect_close(get(*cpu_, cl.t), get(*g, gl.t), std::string("in-place lse, ") + path, 1e-4f, 1e-4f);
  }

  a.head_dim = 96;  // not compiled
  a.n_q_heads = 2, a.n_kv_heads = 2;
  Dev q96 = gpu(random(3 * 192), 3, 192), o96 = gpu_out(3, 192, DType::bf16), l96 = gpu_out(3, 2, DType::f32);
  Dev k96 = gpu(random(5 * 192), 5, 192);
  a.q = q96.t, a.k = k96.t, a.v = k96.t, a.o = o96.t, a.lse = l96.t;
  EXPECT_THROW(gpu_->attention(a), std::invalid_argument);
}

// ---- merge ----

TEST_F(CudaOps, MergePartials) {
  const int64_t T = 7;
  const int hq = 9, d = 64;
  for (int n : {0, 1, 2, 5, 40})
    for (DType in : {DType::bf16, DType::f32})
      for (DType out : {DType::bf16, DType::f32}) {
        const std::string what = std::to_string(n) + " partials " + dtype_name(in) + " -> " + dtype_name(out);
        std::vector<Dev> c_o, c_l, g_o, g_l;
        std::vector<Partial> cparts, gparts;
        std::uniform_real_distribution<float> lse_dist(-5.0f, 5.0f);
        for (int r = 0; r < n; ++r) {
          std::vector<float> o = random(T * hq * d), l(static_cast<size_t>(T * hq));
          for (size_t i = 0; i < l.size(); ++i) {
            l[i] = lse_dist(rng_);
            // Row 0 empty in every shard; other rows empty in some shards (their o is garbage).
            if (i < static_cast<size_t>(hq) || (i + static_cast<size_t>(r)) % 4 == 0) {
              l[i] = -INFINITY;
              for (int c = 0; c < d; ++c) o[i * d + c] = 1e30f;
            }
          }
          c_o.push_back(cpu(o, T, hq * d));
          c_l.push_back(cpu(l, T, hq));
          g_o.push_back(gpu(o, T, hq * d, in, 8));
          g_l.push_back(gpu(l, T, hq, DType::f32));
        }
        for (int r = 0; r < n; ++r) {
          cparts.push_back({c_o[r].t, c_l[r].t});
          gparts.push_back({g_o[r].t, g_l[r].t});
        }
        // The cpu reference sees what the gpu holds (inputs rounded to the partials' dtype).
        for (int r = 0; r < n; ++r) {
          std::vector<float> h = get(*gpu_, g_o[r].t);
          cpu_->upload(h.data(), c_o[r].t);
        }
        Dev co = cpu({}, T, hq * d), cl = cpu({}, T, hq);
        cpu_->merge_partials(cparts, co.t, cl.t);
        Dev go = gpu_out(T, hq * d, out), gl = gpu_out(T, hq, DType::f32);
        gpu_->merge_partials(gparts, go.t, gl.t);
        const float rel = out == DType::bf16 ? 1e-2f : 1e-5f;
        expect_close(get(*cpu_, co.t), get(*gpu_, go.t), what + " o", rel, rel);
        expect_close(get(*cpu_, cl.t), get(*gpu_, gl.t), what + " lse", 1e-5f, 1e-5f);
        if (n >= 2 && in == out) {  // in place into partial 0
          gpu_->merge_partials(gparts, g_o[0].t, g_l[0].t);
          expect_close(get(*cpu_, co.t), get(*gpu_, g_o[0].t), what + " in-place o", rel, rel);
          expect_close(get(*cpu_, cl.t), get(*gpu_, g_l[0].t), what + " in-place lse", 1e-5f, 1e-5f);
        }
      }
}

// ---- elementwise ops ----

TEST_F(CudaOps, RmsNorm) {
  for (int64_t cols : {int64_t{576}, int64_t{4096}, int64_t{1000}})
    for (DType out_dt : {DType::bf16, DType::f32}) {
      const int64_t R = 5;
      const std::vector<float> x = random(R * cols, -3.0f, 3.0f), w = random(cols, 0.5f, 1.5f);
      Dev cx = cpu(x, R, cols), cw = cpu(w, 1, cols), co = cpu({}, R, cols);
      cpu_->rmsnorm(cx.t, cw.t, 1e-5f, co.t);
      Dev gx = gpu(x, R, cols, DType::bf16, 8), gw = gpu(w, 1, cols), go = gpu_out(R, cols, out_dt, 4);
      gpu_->rmsnorm(gx.t, gw.t, 1e-5f, go.t);
      const float rel = out_dt == DType::bf16 ? 1e-2f : 1e-5f;
      expect_close(get(*cpu_, co.t), get(*gpu_, go.t), "rmsnorm " + std::to_string(cols), rel, rel);
      gpu_->rmsnorm(gx.t, gw.t, 1e-5f, gx.t);  // in place
      expect_close(get(*cpu_, co.t), get(*gpu_, gx.t), "rmsnorm in place", 1e-2f, 1e-2f);
    }
}

TEST_F(CudaOps, Rope) {
  ModelConfig plain;
  plain.head_dim = 64, plain.num_heads = 9, plain.hidden_size = 576, plain.rope_theta = 100000.0f;
  ModelConfig llama3;
  llama3.head_dim = 128, llama3.num_heads = 32, llama3.hidden_size = 4096, llama3.rope_theta = 500000.0f;
  llama3.rope_scaling.type = "llama3";
  llama3.rope_scaling.factor = 8.0f;
  llama3.rope_scaling.low_freq_factor = 1.0f;
  llama3.rope_scaling.high_freq_factor = 4.0f;
  llama3.rope_scaling.original_max_position_embeddings = 8192;
  for (const ModelConfig* cfg : {&plain, &llama3})
    for (DType dt : {DType::f32, DType::bf16}) {
      const std::vector<float> inv_freq = rope_inv_freq(*cfg);
      ASSERT_EQ(inv_freq.size(), static_cast<size_t>(cfg->head_dim / 2));
      const int64_t T = 37, cols = int64_t{cfg->num_heads} * cfg->head_dim;
      std::vector<int32_t> pos(static_cast<size_t>(T));
      std::uniform_int_distribution<int32_t> pd(0, 131071);
      for (auto& p : pos) p = pd(rng_);
      pos[0] = 0;
      const std::vector<float> x = random(T * cols);
      Dev cx = cpu(x, T, cols);
      RopeArgs a;
      a.n_heads = cfg->num_heads, a.head_dim = cfg->head_dim, a.positions = pos.data(), a.inv_freq = inv_freq.data();
      a.x = cx.t;
      cpu_->rope(a);
      Dev gx = gpu(x, T, cols, dt, 8);
      a.x = gx.t;
      gpu_->rope(a);
      const float rel = dt == DType::bf16 ? 1e-2f : 1e-5f;
      expect_close(get(*cpu_, cx.t), get(*gpu_, gx.t), std::string("rope ") + dtype_name(dt), rel, rel);
    }
}

TEST_F(CudaOps, SwigluAddEmbedding) {
  for (DType dt : {DType::f32, DType::bf16}) {
    const float rel = dt == DType::bf16 ? 1e-2f : 1e-5f;
    const int64_t R = 13, C = 1536;
    const std::vector<float> gte = random(R * C, -8.0f, 8.0f), up = random(R * C);
    Dev cg = cpu(gte, R, C), cu = cpu(up, R, C), co = cpu({}, R, C);
    cpu_->swiglu(cg.t, cu.t, co.t);
    Dev gg = gpu(gte, R, C, dt, 8), gu = gpu(up, R, C, dt), go = gpu_out(R, C, dt, 16);
    gpu_->swiglu(gg.t, gu.t, go.t);
    expect_close(get(*cpu_, co.t), get(*gpu_, go.t), "swiglu", rel, rel);

    cpu_->add(cg.t, cu.t);
    gpu_->add(gg.t, gu.t);
    expect_close(get(*cpu_, cg.t), get(*gpu_, gg.t), "add", rel, rel);
    Dev gf = gpu(up, R, C, DType::f32);  // mixed dtypes: bf16/f32 x += f32 y
    Dev gx = gpu(gte, R, C, dt);
    Dev cx = cpu(gte, R, C);
    cpu_->add(cx.t, cu.t);
    gpu_->add(gx.t, gf.t);
    expect_close(get(*cpu_, cx.t), get(*gpu_, gx.t), "add mixed", rel, rel);

    const int64_t V = 1000, H = 576;
    const std::vector<float> table = random(V * H);
    std::vector<int32_t> ids = {0, 999, 5, 5, 123, 998, 1};
    Dev ct = cpu(table, V, H), ce = cpu({}, static_cast<int64_t>(ids.size()), H);
    cpu_->embedding(ids.data(), ct.t, ce.t);
    Dev gt = gpu(table, V, H), ge = gpu_out(static_cast<int64_t>(ids.size()), H, dt, 8);
    gpu_->embedding(ids.data(), gt.t, ge.t);
    expect_close(get(*cpu_, ce.t), get(*gpu_, ge.t), "embedding", 0.0f, 0.0f);  // exact copies
    ids[3] = 1000;
    EXPECT_THROW(gpu_->embedding(ids.data(), gt.t, ge.t), std::out_of_range);
  }
}

TEST_F(CudaOps, Matmul) {
  const int64_t K = 576, N = 1536;
  for (int64_t T : {int64_t{1}, int64_t{7}, int64_t{129}})
    for (DType out_dt : {DType::bf16, DType::f32})
      for (bool with_bias : {false, true}) {
        const std::string what = "matmul T " + std::to_string(T) + " -> " + dtype_name(out_dt) +
                                 (with_bias ? " + bias" : "");
        const std::vector<float> x = random(T * K), w = random(N * K, -0.1f, 0.1f), b = random(N);
        Dev cx = cpu(x, T, K), cw = cpu(w, N, K), cb = cpu(b, 1, N), co = cpu({}, T, N);
        cpu_->matmul(cx.t, cw.t, with_bias ? &cb.t : nullptr, co.t);
        Dev gx = gpu(x, T, K, DType::bf16, 8), gw = gpu(w, N, K), gb = gpu(b, 1, N), go = gpu_out(T, N, out_dt, 8);
        gpu_->matmul(gx.t, gw.t, with_bias ? &gb.t : nullptr, go.t);
        const float rel = out_dt == DType::bf16 ? 1e-2f : 1e-4f;
        expect_close(get(*cpu_, co.t), get(*gpu_, go.t), what, rel, rel);
      }
}

// ---- sampling ----

TEST_F(CudaOps, ArgmaxAndSampling) {
  const int64_t V = 49152;
  for (DType dt : {DType::f32, DType::bf16}) {
    std::vector<float> logits = random(V, -10.0f, 10.0f);
    logits[777] = 30.0f;
    logits[40000] = 30.0f;  // a tie: the lower index wins
    Dev g = gpu(logits, 1, V, dt);
    SamplingParams greedy;
    EXPECT_EQ(gpu_->sample(g.t, greedy, 0), 777);
    const std::vector<float> held = get(*gpu_, g.t);  // what the gpu holds (bf16-rounded)
    EXPECT_EQ(gpu_->sample(g.t, greedy, 0), sample_token(held.data(), V, greedy, 0));
    for (uint64_t seed : {uint64_t{1}, uint64_t{42}})
      for (uint64_t step = 0; step < 20; ++step) {
        SamplingParams p;
        p.temperature = 0.8f, p.top_k = 40, p.top_p = 0.9f, p.seed = seed;
        EXPECT_EQ(gpu_->sample(g.t, p, step), sample_token(held.data(), V, p, step));
        p.top_k = 0, p.top_p = 1.0f, p.temperature = 1.5f;
        EXPECT_EQ(gpu_->sample(g.t, p, step), sample_token(held.data(), V, p, step));
      }
    std::vector<float> neg(static_cast<size_t>(V), -INFINITY);
    Dev gn = gpu(neg, 1, V, dt);
    EXPECT_EQ(gpu_->sample(gn.t, greedy, 0), 0);
    std::vector<float> with_nan(held);
    with_nan[12345] = NAN;
    Dev gnan = gpu(with_nan, 1, V, dt);
    EXPECT_THROW(gpu_->sample(gnan.t, greedy, 0), std::invalid_argument);
  }
}

// Backend::argmax_rows (a batched decode step's greedy picks): one launch over a strided block of
// rows gives each row what sample() at temperature 0 gives and what sample_token picks from the
// held values (ties to the lower index, an all -inf row), and -1 for rows with NaN or +inf.
TEST_F(CudaOps, ArgmaxRowsEqualEachRowsGreedySample) {
  const int64_t R = 37;
  for (const int64_t V : {int64_t{259}, int64_t{49152}})
    for (DType dt : {DType::f32, DType::bf16}) {
      std::vector<float> logits = random(R * V, -10.0f, 10.0f);
      logits[3 * V + 5] = logits[3 * V + V - 2] = 30.0f;                              // a tie
      std::fill(logits.begin() + 7 * V, logits.begin() + 8 * V, -INFINITY);             // all masked
      logits[11 * V + V / 2] = NAN;
      logits[20 * V + 1] = INFINITY;
      Dev g = gpu(logits, R, V, dt, 8);  // padded rows: a real stride
      std::vector<int32_t> got;
      gpu_->argmax_rows(g.t, got);
      ASSERT_EQ(got.size(), static_cast<size_t>(R));
      const std::vector<float> held = get(*gpu_, g.t);
      SamplingParams greedy;
      for (int64_t r = 0; r < R; ++r) {
        SCOPED_TRACE("V " + std::to_string(V) + " " + dtype_name(dt) + " row " + std::to_string(r));
        if (r == 11 || r == 20) {
          EXPECT_EQ(got[static_cast<size_t>(r)], -1);
          EXPECT_THROW(gpu_->sample(g.t.slice_rows(r, 1), greedy, 0), std::invalid_argument);
          continue;
        }
        EXPECT_EQ(got[static_cast<size_t>(r)], sample_token(held.data() + r * V, V, greedy, 0));
        EXPECT_EQ(got[static_cast<size_t>(r)], gpu_->sample(g.t.slice_rows(r, 1), greedy, 0));
      }
      EXPECT_EQ(got[3], 5);
      EXPECT_EQ(got[7], 0);
    }
}

}  // namespace
}  // namespace starattn
