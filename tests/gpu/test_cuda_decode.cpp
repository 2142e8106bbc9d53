// The decode-step work of the cuda backend against the cpu backend (the reference):
//   - add_rmsnorm (residual add + norm in one kernel), strided and mixed dtypes;
//   - RoPE on a column slice of a fused q|k|v row with q and k heads in one call, and the
//     device copy of positions that is reused while the host array's contents do not change;
//   - merge_partials with the descriptors in the kernel parameters (<= 16 partials) and staged
//     (more), odd head sizes, more partials than one shared-memory chunk;
//   - decode attention with every tile variant (STARATTN_DECODE_KEYS 16/32,
//     STARATTN_DECODE_STAGES 2/3/4) at short and long contexts (131072 keys);
//   - one-row matmuls (the weight-streaming kernel of decode steps) against the cpu and cuBLAS;
//   - small and large copies (the small ones run as a kernel);
//   - the engine with fused projections and Qwen2-style biases (q/k/v, o and MLP) against the
//     cpu engine, in full and star mode;
//   - the STARATTN_PROFILE=1 report (per-op counts and times by section), and that results are
//     unchanged with it on.
// Without a CUDA device every test is skipped.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_backend.h"
#include "runtime/backend.h"
#include "runtime/engine.h"
#include "runtime/model_config.h"
#include "runtime/rope.h"
#include "tests/gpu/gpu_test_support.h"

namespace starattn {
namespace {

using testing::Dev;
using testing::expect_close_per_element;
using testing::ScopedEnv;

class CudaDecode : public testing::CudaVsCpuTest {
 protected:
  CudaDecode() : CudaVsCpuTest(20261201) {}
};

// ---- add_rmsnorm ----

TEST_F(CudaDecode, AddRmsNormMatchesAddThenNorm) {
  for (int64_t cols : {int64_t{576}, int64_t{4096}, int64_t{1000}})
    for (DType xdt : {DType::bf16, DType::f32})
      for (DType ydt : {DType::bf16, DType::f32})
        for (DType odt : {DType::bf16, DType::f32}) {
          const std::string what = "add_rmsnorm cols " + std::to_string(cols) + " x " + dtype_name(xdt) + " y " +
                                   dtype_name(ydt) + " out " + dtype_name(odt);
          const int64_t R = 6;
          const std::vector<float> x = random(R * cols, -3.0f, 3.0f), y = random(R * cols, -2.0f, 2.0f),
                                   w = random(cols, 0.5f, 1.5f);
          // Reference: the cpu's two ops on what the gpu holds.
          Dev gx = gpu(x, R, cols, xdt, 8), gy = gpu(y, R, cols, ydt, 16), gw = gpu(w, 1, cols);
          Dev cx = cpu(get(*gpu_, gx.t), R, cols), cy = cpu(get(*gpu_, gy.t), R, cols), cw = cpu(w, 1, cols);
          Dev co = cpu({}, R, cols);
          cpu_->add(cx.t, cy.t);
          cpu_->rmsnorm(cx.t, cw.t, 1e-5f, co.t);
          Dev go = gpu_out(R, cols, odt, 4);
          gpu_->add_rmsnorm(gx.t, gy.t, gw.t, 1e-5f, go.t);
          const float xrel = xdt == DType::bf16 ? 1e-2f : 1e-5f;
          const float orel = (odt == DType::bf16 || xdt == DType::bf16) ? 1e-2f : 1e-5f;
          expect_close_per_element(get(*cpu_, cx.t), get(*gpu_, gx.t), what + " x", xrel, xrel);
          expect_close_per_element(get(*cpu_, co.t), get(*gpu_, go.t), what + " out", orel, orel);
          if (HasFailure()) return;
        }
  // Matches the two separate cuda ops bit for bit (x stored in bf16 between them).
  const int64_t R = 3, C = 4096;
  const std::vector<float> x = random(R * C, -3.0f, 3.0f), y = random(R * C), w = random(C, 0.5f, 1.5f);
  Dev a = gpu(x, R, C), b = gpu(x, R, C), gy = gpu(y, R, C), gw = gpu(w, 1, C);
  Dev oa = gpu_out(R, C, DType::bf16), ob = gpu_out(R, C, DType::bf16);
  gpu_->add_rmsnorm(a.t, gy.t, gw.t, 1e-5f, oa.t);
  gpu_->add(b.t, gy.t);
  gpu_->rmsnorm(b.t, gw.t, 1e-5f, ob.t);
  EXPECT_EQ(get(*gpu_, a.t), get(*gpu_, b.t));
  EXPECT_EQ(get(*gpu_, oa.t), get(*gpu_, ob.t));
  // out must not overlap x (every backend says so).
  EXPECT_THROW(gpu_->add_rmsnorm(a.t, gy.t, gw.t, 1e-5f, a.t), std::invalid_argument);
  Dev cx = cpu(x, R, C), cy = cpu(y, R, C), cw = cpu(w, 1, C);
  EXPECT_THROW(cpu_->add_rmsnorm(cx.t, cy.t, cw.t, 1e-5f, cx.t), std::invalid_argument);
}

// ---- RoPE on the fused q|k|v row ----

TEST_F(CudaDecode, RopeOnFusedQkvSliceAndChangingPositions) {
  ModelConfig c;
  c.head_dim = 128, c.num_heads = 8, c.num_kv_heads = 2, c.hidden_size = 1024, c.rope_theta = 500000.0f;
  const std::vector<float> inv_freq = rope_inv_freq(c);
  const int64_t qd = 8 * 128, kvd = 2 * 128, W = qd + 2 * kvd;
  for (int64_t T : {int64_t{1}, int64_t{5}}) {
    std::vector<int32_t> pos(static_cast<size_t>(T));
    for (int step = 0; step < 4; ++step) {
      // The same host array with new contents each step (as a decode loop does).
      for (int64_t i = 0; i < T; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(1000 * step + 77 * i + 3);
      const std::vector<float> row = random(T * W, -2.0f, 2.0f);
      Dev cq = cpu(row, T, W);
      Dev gq = gpu(row, T, W);
      RopeArgs a;
      a.n_heads = c.num_heads + c.num_kv_heads, a.head_dim = c.head_dim, a.positions = pos.data(),
      a.inv_freq = inv_freq.data();
      a.x = cq.t.slice_cols(0, qd + kvd);
      cpu_->rope(a);
      a.x = gq.t.slice_cols(0, qd + kvd);
      gpu_->rope(a);
      // Same again on the q slice alone (positions unchanged: the cached copy is reused).
      a.n_heads = c.num_heads;
      a.x = cq.t.slice_cols(0, qd);
      cpu_->rope(a);
      a.x = gq.t.slice_cols(0, qd);
      gpu_->rope(a);
      const std::string what = "rope T " + std::to_string(T) + " step " + std::to_string(step);
      expect_close_per_element(get(*cpu_, cq.t), get(*gpu_, gq.t), what, 1.5e-2f, 1.5e-2f);
      // v (the last kvd columns) is untouched.
      const std::vector<float> g = get(*gpu_, gq.t);
      for (int64_t r = 0; r < T; ++r)
        for (int64_t j = qd + kvd; j < W; ++j)
          ASSERT_EQ(g[static_cast<size_t>(r * W + j)], row[static_cast<size_t>(r * W + j)]) << what << " v changed";
      if (HasFailure()) return;
    }
  }
}

// ---- merge ----

TEST_F(CudaDecode, MergePartialsInlineAndStaged) {
  const int64_t T = 3;
  const int hq = 5;
  for (int d : {64, 128, 80, 300})
    for (int n : {1, 3, 16, 17, 40, 600}) {
      if (d == 300 && n > 40) continue;
      const std::string what = std::to_string(n) + " partials, D " + std::to_string(d);
      std::vector<Dev> c_o, c_l, g_o, g_l;
      std::vector<Partial> cparts, gparts;
      std::uniform_real_distribution<float> lse_dist(-8.0f, 8.0f);
      for (int r = 0; r < n; ++r) {
        std::vector<float> o = random(T * hq * d), l(static_cast<size_t>(T * hq));
        for (size_t i = 0; i < l.size(); ++i) {
          l[i] = lse_dist(rng_);
          if (i < static_cast<size_t>(hq) || (i + static_cast<size_t>(r)) % 3 == 0) {
            l[i] = -INFINITY;  // row 0 empty everywhere; others in some partials (o is garbage there)
            for (int c = 0; c < d; ++c) o[i * static_cast<size_t>(d) + static_cast<size_t>(c)] = NAN;
          }
        }
        c_o.push_back(cpu(o, T, hq * d));
        c_l.push_back(cpu(l, T, hq));
        g_o.push_back(gpu(o, T, hq * d, DType::f32, 8));
        g_l.push_back(gpu(l, T, hq, DType::f32, 1));
      }
      for (int r = 0; r < n; ++r) {
        cparts.push_back({c_o[static_cast<size_t>(r)].t, c_l[static_cast<size_t>(r)].t});
        gparts.push_back({g_o[static_cast<size_t>(r)].t, g_l[static_cast<size_t>(r)].t});
      }
      Dev co = cpu({}, T, hq * d), cl = cpu({}, T, hq);
      cpu_->merge_partials(cparts, co.t, cl.t);
      Dev go = gpu_out(T, hq * d, DType::f32), gl = gpu_out(T, hq, DType::f32);
      gpu_->merge_partials(gparts, go.t, gl.t);
      expect_close_per_element(get(*cpu_, co.t), get(*gpu_, go.t), what + " o", 1e-5f, 1e-4f);
      expect_close_per_element(get(*cpu_, cl.t), get(*gpu_, gl.t), what + " lse", 1e-5f, 1e-5f);
      // In place into partial 0.
      gpu_->merge_partials(gparts, g_o[0].t, g_l[0].t);
      expect_close_per_element(get(*cpu_, co.t), get(*gpu_, g_o[0].t), what + " in-place o", 1e-5f, 1e-4f);
      expect_close_per_element(get(*cpu_, cl.t), get(*gpu_, g_l[0].t), what + " in-place lse", 1e-5f, 1e-5f);
      if (HasFailure()) return;
    }
}

// ---- decode attention variants ----

struct Case {
  int64_t T, S;
  int hq, hkv, d;
  MaskKind mask;
  int64_t offset;
};

class CudaDecodeVariants : public CudaDecode {
 protected:
  void run(Backend& g, const Case& c, const std::string& variant) {
    const std::string what = variant + " T " + std::to_string(c.T) + " S " + std::to_string(c.S) + " Hq " +
                             std::to_string(c.hq) + " Hkv " + std::to_string(c.hkv) + " D " + std::to_string(c.d) +
                             (c.mask == MaskKind::causal ? " causal" : " no mask");
    const int64_t qdim = int64_t{c.hq} * c.d, kvdim = int64_t{c.hkv} * c.d;
    const std::vector<float> q = random(c.T * qdim, -2.0f, 2.0f), k = random(c.S * kvdim), v = random(c.S * kvdim);
    AttentionArgs a;
    a.n_q_heads = c.hq, a.n_kv_heads = c.hkv, a.head_dim = c.d;
    a.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    a.mask = c.mask, a.causal_offset = c.offset;
    Dev cq = cpu(q, c.T, qdim), ck = cpu(k, c.S, kvdim), cv = cpu(v, c.S, kvdim);
    Dev co = cpu({}, c.T, qdim), cl = cpu({}, c.T, c.hq);
    a.q = cq.t, a.k = ck.t, a.v = cv.t, a.o = co.t, a.lse = cl.t;
    cpu_->attention(a);
    // q as a slice of a fused q|k|v row (stride qdim + 2 kvdim), k/v padded.
    Dev gq = on(g, q, c.T, qdim, DType::bf16, 2 * kvdim), gk = on(g, k, c.S, kvdim, DType::bf16, 8),
        gv = on(g, v, c.S, kvdim, DType::bf16, 16);
    Dev go = on(g, std::vector<float>(static_cast<size_t>(c.T * qdim), NAN), c.T, qdim, DType::bf16, 8);
    Dev gl = on(g, std::vector<float>(static_cast<size_t>(c.T * c.hq), NAN), c.T, c.hq, DType::f32, 1);
    a.q = gq.t, a.k = gk.t, a.v = gv.t, a.o = go.t, a.lse = gl.t;
    g.attention(a);
    g.synchronize();
    expect_close_per_element(get(*cpu_, co.t), get(g, go.t), what + " o");
    expect_close_per_element(get(*cpu_, cl.t), get(g, gl.t), what + " lse", 1e-4f, 1e-4f);
  }
};

// 32768 keys at most: the cpu reference dominates the run time (test_cuda_ops' DecodeLongContext
// covers 70000 keys on the default tiles, `starattn bench kernels` 131072).
TEST_F(CudaDecodeVariants, EveryTileVariantMatchesCpu) {
  const std::pair<const char*, const char*> variants[] = {{"16", "2"}, {"16", "3"}, {"16", "4"}, {"32", "2"}};
  for (const auto& [keys, stages] : variants) {
    ScopedEnv e1("STARATTN_DECODE_KEYS", keys), e2("STARATTN_DECODE_STAGES", stages),
        e3("STARATTN_CUDA_ATTENTION", "decode");
    std::unique_ptr<Backend> g = make_backend("cuda", 0);
    const std::string variant = std::string("keys ") + keys + " stages " + stages;
    const Case cases[] = {
        {1, 1, 32, 8, 128, MaskKind::causal, 0},      {1, 17, 32, 8, 128, MaskKind::causal, 16},
        {1, 100, 32, 8, 128, MaskKind::none, 0},      {1, 4097, 32, 8, 128, MaskKind::causal, 4096},
        {1, 8192, 32, 8, 128, MaskKind::none, 0},     {4, 3001, 32, 8, 128, MaskKind::causal, 2997},
        {16, 2000, 32, 8, 128, MaskKind::none, 0},    {1, 5000, 9, 3, 64, MaskKind::none, 0},
        {3, 777, 8, 2, 64, MaskKind::causal, 774},    {1, 32768, 32, 8, 128, MaskKind::none, 0},
        {2, 32768, 32, 8, 128, MaskKind::causal, 32766},
    };
    for (const Case& c : cases) {
      run(*g, c, variant);
      if (HasFailure()) return;
    }
  }
}

// ---- one-row matmul (the weight-streaming kernel) ----

TEST_F(CudaDecode, OneRowMatmulMatchesCpuAndCublas) {
  struct Shape {
    int64_t N, K;
  };
  // K % 8 != 0 (100) and K past the kernel's limit (24584) go through cuBLAS: same results.
  const Shape shapes[] = {{1, 8}, {7, 576}, {1536, 576}, {6144, 4096}, {333, 4104}, {64, 100}, {17, 24584}};
  std::unique_ptr<Backend> cublas_only;
  {
    ScopedEnv env("STARATTN_GEMV", "0");
    cublas_only = make_backend("cuda", 0);
  }
  for (const Shape& sh : shapes)
    for (DType out_dt : {DType::bf16, DType::f32})
      for (int bias_kind : {0, 1, 2}) {  // none, bf16 bias, f32 bias
        const std::string what = "matmul N " + std::to_string(sh.N) + " K " + std::to_string(sh.K) + " -> " +
                                 dtype_name(out_dt) + " bias " + std::to_string(bias_kind);
        const std::vector<float> x = random(sh.K), w = random(sh.N * sh.K, -0.1f, 0.1f), b = random(sh.N);
        Dev cx = cpu(x, 1, sh.K), cw = cpu(w, sh.N, sh.K), cb = cpu(b, 1, sh.N), co = cpu({}, 1, sh.N);
        cpu_->matmul(cx.t, cw.t, bias_kind ? &cb.t : nullptr, co.t);
        const std::vector<float> ref = get(*cpu_, co.t);
        for (Backend* g : {gpu_.get(), cublas_only.get()}) {
          // x as the last row of a padded buffer, w with padded rows, out a column slice.
          Dev gx = on(*g, random(3 * (sh.K + 8)), 3, sh.K + 8, DType::bf16);
          const Tensor xrow = gx.t.slice_rows(2, 1).slice_cols(0, sh.K);
          g->upload(x.data(), xrow);
          Dev gw = on(*g, w, sh.N, sh.K, DType::bf16, 8);
          Dev gb = on(*g, b, 1, sh.N, bias_kind == 2 ? DType::f32 : DType::bf16);
          Dev go = on(*g, std::vector<float>(static_cast<size_t>(sh.N + 24), NAN), 1, sh.N + 24, out_dt);
          const Tensor out = go.t.slice_cols(8, sh.N);
          g->matmul(xrow, gw.t, bias_kind ? &gb.t : nullptr, out);
          const float rel = out_dt == DType::bf16 ? 1e-2f : 1e-4f;
          expect_close_per_element(ref, get(*g, out), what + (g == gpu_.get() ? " (gemv)" : " (cublas)"), rel, rel);
          const std::vector<float> all = get(*g, go.t);  // nothing outside the slice written
          for (int64_t i = 0; i < 8; ++i) ASSERT_TRUE(std::isnan(all[static_cast<size_t>(i)])) << what;
          for (int64_t i = 8 + sh.N; i < sh.N + 24; ++i) ASSERT_TRUE(std::isnan(all[static_cast<size_t>(i)])) << what;
        }
        if (HasFailure()) return;
      }
}

// ---- copies ----

TEST_F(CudaDecode, SmallAndLargeStridedCopiesAreExact) {
  for (int64_t rows : {int64_t{1}, int64_t{16}, int64_t{300}})
    for (int64_t cols : {int64_t{256}, int64_t{1024}})
      for (DType dt : {DType::bf16, DType::f32}) {
        const std::vector<float> h = random(rows * cols, -100.0f, 100.0f);
        Dev src = gpu(h, rows, cols, dt, 512), dst = gpu_out(rows, cols, dt, 24);
        gpu_->copy(src.t, dst.t);
        EXPECT_EQ(get(*gpu_, dst.t), get(*gpu_, src.t)) << rows << " x " << cols << " " << dtype_name(dt);
      }
}

// ---- the engine: fused projections with biases ----

using testing::expect_logits_close;
using testing::ModelDir;
using testing::Outcome;

constexpr uint64_t kWeightSeed = 11;

// Six tokens after 300 context and 7 query tokens, on an engine with random weights.
Outcome generate(const std::string& config, const std::string& device, int workers, AttentionMode mode) {
  return testing::generate(*testing::make_engine(config, device, workers, kWeightSeed),
                           testing::random_request(300, 7, mode, 0, 6, 5));
}

TEST_F(CudaDecode, EngineWithBiasesMatchesCpu) {
  for (int head_dim : {64, 128}) {
    ModelConfig c = testing::gpu_model_config(head_dim, 3);
    c.attention_bias = true;  // q, k, v and o biases (Hugging Face Llama's attention_bias)
    c.o_proj_bias = true;
    c.mlp_bias = true;
    ModelDir dir(c);
    for (AttentionMode mode : {AttentionMode::full, AttentionMode::star}) {
      const std::string what = std::string("head_dim ") + std::to_string(head_dim) + " " + mode_name(mode);
      const Outcome ref = generate(dir.config(), "cpu", 3, mode);
      const Outcome got = generate(dir.config(), "cuda", 3, mode);
      ASSERT_FALSE(ref.logits.empty()) << what;
      expect_logits_close(ref, got, what, /*check_top1=*/false);
      if (HasFailure()) return;
    }
  }
}

// ---- profile ----

TEST_F(CudaDecode, ProfileReportsOpsBySectionAndChangesNothing) {
  ModelDir dir(testing::gpu_model_config(128, 2));
  const Outcome plain = generate(dir.config(), "cuda", 2, AttentionMode::star);
  Outcome profiled;
  std::string report;
  {
    ScopedEnv env("STARATTN_PROFILE", "1");
    const std::unique_ptr<Engine> e = testing::make_engine(dir.config(), "cuda", 2, kWeightSeed);
    profiled = generate(dir.config(), "cuda", 2, AttentionMode::star);  // its own engine, profiled too
    std::mt19937_64 rng(9);
    std::uniform_int_distribution<int32_t> tok(0, 255);
    RequestSpec r;
    for (int i = 0; i < 100; ++i) r.prompt.context.push_back(tok(rng));
    r.prompt.query = {1, 2, 3};
    r.max_tokens = 4;
    r.ignore_eos = true;
    e->generate(r, [](int32_t, const float*) { return true; });
    ::testing::internal::CaptureStderr();
    cuda_profile_report(e->backend(), "test");
    report = ::testing::internal::GetCapturedStderr();
  }
  EXPECT_EQ(plain.tokens, profiled.tokens);
  ASSERT_EQ(plain.logits.size(), profiled.logits.size());
  for (size_t s = 0; s < plain.logits.size(); ++s) EXPECT_EQ(plain.logits[s], profiled.logits[s]) << "step " << s;
  for (const char* want : {"cuda op profile", "test", "section phase1", "section prefill", "section decode",
                           "matmul N=", "attention decode", "add_rmsnorm", "rope", "merge_partials", "sample"})
    EXPECT_NE(report.find(want), std::string::npos) << "missing '" << want << "' in:\n" << report;
  // Off: the report is a no-op.
  ::testing::internal::CaptureStderr();
  cuda_profile_report(*gpu_, "off");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
}

}  // namespace
}  // namespace starattn
