// CPU backend ops against naive references the tests compute themselves (double precision),
// on seeded random inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/cpu_backend.h"
#include "tests/support/backend_helpers.h"
#include "runtime/sampling.h"

namespace starattn {
namespace {

using testing::fetch;
using testing::make;
using testing::random_vec;

// ---- attention ----

struct AttnCase {
  int64_t T, S;
  int hq, hkv, d;
  MaskKind mask;
  int64_t offset;
};

std::string describe(const AttnCase& c) {
  return "T=" + std::to_string(c.T) + " S=" + std::to_string(c.S) + " Hq=" + std::to_string(c.hq) +
         " Hkv=" + std::to_string(c.hkv) + " D=" + std::to_string(c.d) +
         (c.mask == MaskKind::causal ? " causal offset=" + std::to_string(c.offset) : " none");
}

// Naive attention with an explicit visibility matrix, all in double. Dense host layouts:
// q [T, Hq*D], k/v [S, Hkv*D]; outputs o [T, Hq*D], lse [T, Hq].
void reference_attention(const AttnCase& c, float scale, const std::vector<float>& q,
                         const std::vector<float>& k, const std::vector<float>& v,
                         std::vector<double>& o, std::vector<double>& lse) {
  std::vector<std::vector<bool>> visible(static_cast<size_t>(c.T), std::vector<bool>(static_cast<size_t>(c.S)));
  for (int64_t i = 0; i < c.T; ++i)
    for (int64_t j = 0; j < c.S; ++j)
      visible[i][j] = c.mask == MaskKind::none || j <= i + c.offset;
  const int group = c.hq / c.hkv;
  o.assign(static_cast<size_t>(c.T * c.hq * c.d), 0.0);
  lse.assign(static_cast<size_t>(c.T * c.hq), 0.0);
  for (int64_t i = 0; i < c.T; ++i) {
    for (int h = 0; h < c.hq; ++h) {
      const int g = h / group;
      std::vector<double> s;
      std::vector<int64_t> keys;
      for (int64_t j = 0; j < c.S; ++j) {
        if (!visible[i][j]) continue;
        double dotp = 0.0;
        for (int e = 0; e < c.d; ++e)
          dotp += static_cast<double>(q[(i * c.hq + h) * c.d + e]) * k[(j * c.hkv + g) * c.d + e];
        s.push_back(scale * dotp);
        keys.push_back(j);
      }
      if (keys.empty()) {
        lse[i * c.hq + h] = -INFINITY;
        continue;
      }
      double m = -INFINITY;
      for (double x : s) m = std::max(m, x);
      double z = 0.0;
      for (double x : s) z += std::exp(x - m);
      for (size_t n = 0; n < keys.size(); ++n) {
        const double p = std::exp(s[n] - m) / z;
        for (int e = 0; e < c.d; ++e)
          o[(i * c.hq + h) * c.d + e] += p * v[(keys[n] * c.hkv + g) * c.d + e];
      }
      lse[i * c.hq + h] = m + std::log(z);
    }
  }
}

// Runs the backend on the case; q, k and v live as column slices of one fused [rows, ...]
// buffer when `fused` (to exercise strided views), o starts as garbage.
// Adds the number of (row, head) pairs that saw no key to *empty.
void run_case(Backend& be, const AttnCase& c, bool fused, uint32_t seed, int* empty) {
  SCOPED_TRACE(describe(c) + (fused ? " fused" : ""));
  std::mt19937 rng(seed);
  const int64_t qd = c.hq * c.d, kvd = c.hkv * c.d;
  const auto q = random_vec(rng, static_cast<size_t>(c.T * qd));
  const auto k = random_vec(rng, static_cast<size_t>(c.S * kvd));
  const auto v = random_vec(rng, static_cast<size_t>(c.S * kvd));
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));

  Buffer qb, kb, vb, fq, fkv;
  AttentionArgs a;
  if (fused) {
    // [T, pad | q | pad] and [S, k | v | pad] layouts.
    fq = be.alloc(c.T, qd + 5, DType::f32);
    be.upload(random_vec(rng, static_cast<size_t>(c.T * (qd + 5))).data(), fq.view());
    a.q = fq.view().slice_cols(2, qd);
    be.upload(q.data(), a.q);
    fkv = be.alloc(c.S, 2 * kvd + 3, DType::f32);
    a.k = fkv.view().slice_cols(0, kvd);
    a.v = fkv.view().slice_cols(kvd, kvd);
    be.upload(k.data(), a.k);
    be.upload(v.data(), a.v);
  } else {
    qb = make(be, c.T, qd, q);
    kb = make(be, c.S, kvd, k);
    vb = make(be, c.S, kvd, v);
    a.q = qb.view();
    a.k = kb.view();
    a.v = vb.view();
  }
  Buffer ob = make(be, c.T, qd, random_vec(rng, static_cast<size_t>(c.T * qd), 100.0f));
  Buffer lb = make(be, c.T, c.hq, random_vec(rng, static_cast<size_t>(c.T * c.hq), 100.0f));
  a.o = ob.view();
  a.lse = lb.view();
  a.n_q_heads = c.hq;
  a.n_kv_heads = c.hkv;
  a.head_dim = c.d;
  a.scale = scale;
  a.mask = c.mask;
  a.causal_offset = c.offset;
  be.attention(a);

  std::vector<double> ro, rl;
  reference_attention(c, scale, q, k, v, ro, rl);
  const auto o = fetch(be, a.o);
  const auto lse = fetch(be, a.lse);
  for (size_t n = 0; n < rl.size(); ++n) {
    ASSERT_FALSE(std::isnan(lse[n])) << "lse " << n;
    if (rl[n] == -INFINITY) {
      ++*empty;
      ASSERT_EQ(lse[n], -INFINITY) << "row/head " << n << " sees no key";
    } else {
      ASSERT_NEAR(lse[n], rl[n], 1e-5) << "lse row/head " << n;
    }
  }
  for (size_t n = 0; n < ro.size(); ++n) {
    ASSERT_FALSE(std::isnan(o[n])) << "o " << n;
    ASSERT_NEAR(o[n], ro[n], 1e-5) << "o element " << n;
  }
}

class CpuOps : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();
};

TEST_F(CpuOps, AttentionMatchesNaiveReference) {
  const std::vector<AttnCase> cases = {
      {5, 7, 4, 2, 16, MaskKind::none, 0},
      {9, 9, 4, 2, 64, MaskKind::causal, 0},         // plain causal prefill
      {6, 20, 6, 3, 16, MaskKind::causal, 14},       // cached prefix: offset = S - T
      {8, 8, 4, 4, 64, MaskKind::causal, -3},        // first rows see no key
      {4, 6, 2, 1, 16, MaskKind::causal, -100},      // nobody sees anything
      {4, 6, 2, 1, 16, MaskKind::causal, 1000},      // everybody sees everything
      {4, 0, 4, 2, 16, MaskKind::none, 0},           // no keys at all
      {4, 0, 6, 3, 64, MaskKind::causal, 0},
      {7, 50, 2, 2, 64, MaskKind::causal, 43},       // Hq == Hkv
      {40, 300, 4, 2, 64, MaskKind::causal, 260},    // several row and key tiles
      {37, 1000, 6, 3, 16, MaskKind::none, 0},
      {1, 3000, 4, 2, 64, MaskKind::none, 0},        // decode against a long shard (key splits)
      {1, 3000, 4, 2, 64, MaskKind::causal, 2999},
      {3, 2500, 6, 3, 16, MaskKind::causal, -1},     // key splits with an empty first row
      {2, 2048, 4, 4, 16, MaskKind::causal, 700},    // splits beyond the visible prefix
  };
  uint32_t seed = 1;
  int empty = 0;
  for (const auto& c : cases) {
    run_case(*be, c, false, seed++, &empty);
    run_case(*be, c, true, seed++, &empty);
  }
  EXPECT_GT(empty, 0) << "the case list must exercise rows that see no key";
}

TEST_F(CpuOps, AttentionRejectsBadShapes) {
  Buffer q = be->alloc(3, 4 * 16, DType::f32), k = be->alloc(5, 2 * 16, DType::f32);
  Buffer v = be->alloc(5, 2 * 16, DType::f32), o = be->alloc(3, 4 * 16, DType::f32);
  Buffer l = be->alloc(3, 4, DType::f32), bad = be->alloc(5, 3 * 16, DType::f32);
  AttentionArgs a;
  a.q = q.view(); a.k = k.view(); a.v = v.view(); a.o = o.view(); a.lse = l.view();
  a.n_q_heads = 4; a.n_kv_heads = 2; a.head_dim = 16;
  EXPECT_NO_THROW(be->attention(a));
  AttentionArgs b = a;
  b.n_kv_heads = 3;  // 4 % 3 != 0
  EXPECT_THROW(be->attention(b), std::invalid_argument);
  b = a; b.k = bad.view();
  EXPECT_THROW(be->attention(b), std::invalid_argument);
  b = a; b.lse = l.view().slice_cols(0, 3);
  EXPECT_THROW(be->attention(b), std::invalid_argument);
  b = a; b.v = v.view().slice_rows(0, 4);
  EXPECT_THROW(be->attention(b), std::invalid_argument);
  try {
    b = a; b.o = o.view().slice_rows(0, 2);
    be->attention(b);
    FAIL() << "no throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("attention"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2 x 64"), std::string::npos) << e.what();
  }
}

// ---- matmul ----

void check_matmul(Backend& be, int64_t T, int64_t K, int64_t N, bool with_bias, bool strided,
                  uint32_t seed) {
  SCOPED_TRACE("T=" + std::to_string(T) + " K=" + std::to_string(K) + " N=" + std::to_string(N) +
               (with_bias ? " bias" : "") + (strided ? " strided" : ""));
  std::mt19937 rng(seed);
  const auto x = random_vec(rng, static_cast<size_t>(T * K));
  const auto w = random_vec(rng, static_cast<size_t>(N * K));
  const auto bias = random_vec(rng, static_cast<size_t>(N));
  const int64_t pad = strided ? 7 : 0;
  Buffer xb = make(be, T, K + pad, random_vec(rng, static_cast<size_t>(T * (K + pad))));
  Buffer wb = make(be, N, K + pad, random_vec(rng, static_cast<size_t>(N * (K + pad))));
  const auto out_init = random_vec(rng, static_cast<size_t>(T * (N + pad)));
  Buffer ob = make(be, T, N + pad, out_init);
  Buffer bb = make(be, 1, N, bias);
  const Tensor xv = xb.view().slice_cols(pad / 2, K), wv = wb.view().slice_cols(pad, K);
  const Tensor ov = ob.view().slice_cols(pad / 3, N);
  be.upload(x.data(), xv);
  be.upload(w.data(), wv);
  const Tensor bv = bb.view();
  be.matmul(xv, wv, with_bias ? &bv : nullptr, ov);

  const auto got = fetch(be, ov);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double ref = with_bias ? bias[n] : 0.0, mag = std::abs(ref);
      for (int64_t c = 0; c < K; ++c) {
        ref += static_cast<double>(x[t * K + c]) * w[n * K + c];
        mag += std::abs(static_cast<double>(x[t * K + c]) * w[n * K + c]);
      }
      ASSERT_NEAR(got[t * N + n], ref, 1e-4 * std::max(1.0, mag)) << "out[" << t << ", " << n << "]";
    }
  if (strided) {  // columns outside the output slice are untouched
    const auto whole = fetch(be, ob.view());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < N + pad; ++c)
        if (c < pad / 3 || c >= pad / 3 + N) {
          ASSERT_EQ(whole[t * (N + pad) + c], out_init[t * (N + pad) + c]);
        }
  }
}

TEST_F(CpuOps, MatmulMatchesNaiveLoops) {
  uint32_t seed = 100;
  for (bool bias : {false, true})
    for (bool strided : {false, true}) {
      check_matmul(*be, 13, 70, 33, bias, strided, seed++);
      check_matmul(*be, 1, 256, 17, bias, strided, seed++);
      check_matmul(*be, 64, 128, 96, bias, strided, seed++);
      check_matmul(*be, 5, 0, 4, bias, strided, seed++);  // empty inner dimension: out = bias
    }
}

TEST_F(CpuOps, MatmulRejectsBadShapes) {
  Buffer x = be->alloc(4, 8, DType::f32), w = be->alloc(6, 8, DType::f32);
  Buffer o = be->alloc(4, 6, DType::f32), b = be->alloc(1, 6, DType::f32);
  Buffer w2 = be->alloc(6, 9, DType::f32), b2 = be->alloc(1, 5, DType::f32);
  const Tensor bv = b.view(), b2v = b2.view();
  EXPECT_NO_THROW(be->matmul(x.view(), w.view(), &bv, o.view()));
  EXPECT_THROW(be->matmul(x.view(), w2.view(), nullptr, o.view()), std::invalid_argument);
  EXPECT_THROW(be->matmul(x.view(), w.view(), &b2v, o.view()), std::invalid_argument);
  EXPECT_THROW(be->matmul(x.view(), w.view(), nullptr, o.view().slice_cols(0, 5)), std::invalid_argument);
  EXPECT_THROW(be->matmul(x.view(), w.view(), nullptr, x.view().slice_cols(0, 6)), std::invalid_argument);
  try {
    be->matmul(x.view(), w2.view(), nullptr, o.view());
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("matmul"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4 x 8"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[6 x 9"), std::string::npos) << msg;
  }
}

// ---- elementwise ----

TEST_F(CpuOps, RmsnormMatchesFormula) {
  std::mt19937 rng(7);
  for (int64_t cols : {1, 64, 1000}) {
    const int64_t rows = 9;
    const auto x = random_vec(rng, static_cast<size_t>(rows * cols), 3.0f);
    const auto w = random_vec(rng, static_cast<size_t>(cols));
    const float eps = 1e-5f;
    Buffer xb = make(*be, rows, cols, x), wb = make(*be, 1, cols, w), ob = be->alloc(rows, cols, DType::f32);
    be->rmsnorm(xb.view(), wb.view(), eps, ob.view());
    const auto got = fetch(*be, ob.view());
    be->rmsnorm(xb.view(), wb.view(), eps, xb.view());  // in place gives the same result
    const auto in_place = fetch(*be, xb.view());
    for (int64_t r = 0; r < rows; ++r) {
      double ms = 0.0;
      for (int64_t c = 0; c < cols; ++c) ms += static_cast<double>(x[r * cols + c]) * x[r * cols + c];
      ms /= static_cast<double>(cols);
      for (int64_t c = 0; c < cols; ++c) {
        const double ref = w[c] * x[r * cols + c] / std::sqrt(ms + eps);
        ASSERT_NEAR(got[r * cols + c], ref, 1e-5 * std::max(1.0, std::abs(ref)));
        ASSERT_EQ(in_place[r * cols + c], got[r * cols + c]);
      }
    }
  }
  Buffer x = be->alloc(2, 8, DType::f32), w = be->alloc(1, 7, DType::f32);
  EXPECT_THROW(be->rmsnorm(x.view(), w.view(), 1e-5f, x.view()), std::invalid_argument);
}

// The fused residual add + norm equals add then rmsnorm exactly (same float operations), also on
// strided views (the decoder passes slices of its workspaces), and refuses an out that overlaps x.
TEST_F(CpuOps, AddRmsnormEqualsAddThenRmsnorm) {
  std::mt19937 rng(17);
  for (int64_t cols : {1, 64, 1000}) {
    const int64_t rows = 7;
    const auto x = random_vec(rng, static_cast<size_t>(rows * cols), 3.0f);
    const auto y = random_vec(rng, static_cast<size_t>(rows * cols), 2.0f);
    const auto w = random_vec(rng, static_cast<size_t>(cols));
    Buffer xa = make(*be, rows, cols, x), xb = make(*be, rows, cols, x), yb = make(*be, rows, cols, y);
    Buffer wb = make(*be, 1, cols, w);
    Buffer oa = be->alloc(rows, cols, DType::f32), ob = be->alloc(rows, cols, DType::f32);
    be->add_rmsnorm(xa.view(), yb.view(), wb.view(), 1e-5f, oa.view());
    be->add(xb.view(), yb.view());
    be->rmsnorm(xb.view(), wb.view(), 1e-5f, ob.view());
    EXPECT_EQ(fetch(*be, xa.view()), fetch(*be, xb.view())) << cols;
    EXPECT_EQ(fetch(*be, oa.view()), fetch(*be, ob.view())) << cols;
  }
  // Strided: the last row of wider buffers.
  const int64_t cols = 96;
  const auto x = random_vec(rng, 3 * 128, 3.0f), y = random_vec(rng, 3 * 128), w = random_vec(rng, cols);
  Buffer xs = make(*be, 3, 128, x), ys = make(*be, 3, 128, y), wb = make(*be, 1, cols, w);
  Buffer os = be->alloc(3, 128, DType::f32);
  const Tensor xv = xs.view().slice_cols(0, cols).slice_rows(2, 1), yv = ys.view().slice_cols(0, cols).slice_rows(2, 1);
  const Tensor ov = os.view().slice_cols(0, cols).slice_rows(2, 1);
  be->add_rmsnorm(xv, yv, wb.view(), 1e-6f, ov);
  const auto got_x = fetch(*be, xv), got_o = fetch(*be, ov);
  double ms = 0.0;
  for (int64_t c = 0; c < cols; ++c) {
    const float s = x[2 * 128 + c] + y[2 * 128 + c];
    ASSERT_EQ(got_x[c], s) << c;
    ms += static_cast<double>(s) * s;
  }
  ms /= cols;
  for (int64_t c = 0; c < cols; ++c) {
    const double ref = w[c] * got_x[c] / std::sqrt(ms + 1e-6);
    ASSERT_NEAR(got_o[c], ref, 1e-5 * std::max(1.0, std::abs(ref))) << c;
  }
  // Other rows untouched.
  const auto all = fetch(*be, xs.view());
  for (int64_t c = 0; c < 2 * 128; ++c) ASSERT_EQ(all[c], x[c]);
  EXPECT_THROW(be->add_rmsnorm(xs.view(), ys.view().slice_cols(0, 128), make(*be, 1, 128, random_vec(rng, 128)).view(),
                               1e-5f, xs.view()),
               std::invalid_argument);
  Buffer narrow = be->alloc(1, cols - 1, DType::f32);
  EXPECT_THROW(be->add_rmsnorm(xv, yv, narrow.view(), 1e-5f, ov), std::invalid_argument);
}

TEST_F(CpuOps, SwigluAndAdd) {
  std::mt19937 rng(8);
  const int64_t rows = 11, cols = 300;
  const auto g = random_vec(rng, static_cast<size_t>(rows * cols), 4.0f);
  const auto u = random_vec(rng, static_cast<size_t>(rows * cols));
  Buffer gb = make(*be, rows, cols, g), ub = make(*be, rows, cols, u), ob = be->alloc(rows, cols, DType::f32);
  be->swiglu(gb.view(), ub.view(), ob.view());
  auto got = fetch(*be, ob.view());
  for (size_t n = 0; n < got.size(); ++n) {
    const double ref = g[n] / (1.0 + std::exp(-static_cast<double>(g[n]))) * u[n];
    ASSERT_NEAR(got[n], ref, 1e-6 * std::max(1.0, std::abs(ref))) << n;
  }
  be->add(gb.view(), ub.view());
  got = fetch(*be, gb.view());
  for (size_t n = 0; n < got.size(); ++n) ASSERT_EQ(got[n], g[n] + u[n]) << n;

  Buffer small = be->alloc(rows, cols - 1, DType::f32);
  EXPECT_THROW(be->swiglu(gb.view(), small.view(), ob.view()), std::invalid_argument);
  EXPECT_THROW(be->swiglu(gb.view(), ub.view(), small.view()), std::invalid_argument);
  EXPECT_THROW(be->add(gb.view(), small.view()), std::invalid_argument);
}

TEST_F(CpuOps, Embedding) {
  std::mt19937 rng(9);
  const int64_t vocab = 50, hidden = 24;
  const auto table = random_vec(rng, static_cast<size_t>(vocab * hidden));
  Buffer tb = make(*be, vocab, hidden, table);
  std::vector<int32_t> ids = {0, 49, 7, 7, 13, 31};
  Buffer ob = be->alloc(static_cast<int64_t>(ids.size()), hidden, DType::f32);
  be->embedding(ids.data(), tb.view(), ob.view());
  const auto got = fetch(*be, ob.view());
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t c = 0; c < hidden; ++c) ASSERT_EQ(got[i * hidden + c], table[ids[i] * hidden + c]);

  for (int32_t bad : {-1, 50, 1000000}) {
    ids[3] = bad;
    try {
      be->embedding(ids.data(), tb.view(), ob.view());
      FAIL() << "id " << bad << " accepted";
    } catch (const std::out_of_range& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("50"), std::string::npos) << msg;
    }
    EXPECT_EQ(fetch(*be, ob.view()), got) << "a failed lookup must not write";
  }
  Buffer wrong = be->alloc(static_cast<int64_t>(ids.size()), hidden + 1, DType::f32);
  ids[3] = 1;
  EXPECT_THROW(be->embedding(ids.data(), tb.view(), wrong.view()), std::invalid_argument);
}

// ---- memory ----

TEST_F(CpuOps, MemoryAndStridedCopies) {
  EXPECT_EQ(be->name(), "cpu");
  EXPECT_EQ(be->activation_dtype(), DType::f32);
  EXPECT_GT(be->free_bytes(), 0);
  EXPECT_THROW(be->alloc(2, 2, DType::f16), std::invalid_argument);  // f32 and bf16 only
  EXPECT_THROW(be->alloc(-1, 2, DType::f32), std::invalid_argument);
  Buffer empty = be->alloc(0, 16, DType::f32);
  EXPECT_TRUE(empty.allocated());
  Buffer a = be->alloc(6, 10, DType::f32);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.view().data) % 64, 0u);

  std::mt19937 rng(10);
  const auto src = random_vec(rng, 6 * 4);
  be->upload(src.data(), a.view().slice_cols(3, 4));
  Buffer b = make(*be, 6, 9, random_vec(rng, 6 * 9));
  be->copy(a.view().slice_cols(3, 4), b.view().slice_cols(5, 4));
  EXPECT_EQ(fetch(*be, b.view().slice_cols(5, 4)), src);
  EXPECT_EQ(fetch(*be, a.view().slice_rows(2, 3).slice_cols(3, 4)),
            std::vector<float>(src.begin() + 8, src.begin() + 20));
  EXPECT_THROW(be->copy(a.view(), b.view()), std::invalid_argument);
}

TEST_F(CpuOps, SampleUsesSampleToken) {
  std::mt19937 rng(11);
  const auto logits = random_vec(rng, 300, 2.0f);
  Buffer lb = make(*be, 1, 300, logits);
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 40;
  p.top_p = 0.9f;
  p.seed = 1234;
  for (uint64_t step = 0; step < 50; ++step)
    ASSERT_EQ(be->sample(lb.view(), p, step), sample_token(logits.data(), 300, p, step));
  Buffer two = be->alloc(2, 300, DType::f32);
  EXPECT_THROW(be->sample(two.view(), p, 0), std::invalid_argument);
}

}  // namespace
}  // namespace starattn
