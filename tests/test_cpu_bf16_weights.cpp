// The cpu backend's bf16 weights: upload rounds to nearest even, and every op that reads weights
// (matmul's w and bias, embedding, the norms' weight) gives with a bf16 view what it gives with
// a float32 view of the same (rounded) values; the one-row kernels (AVX2 and portable) agree
// with a double-precision product.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "runtime/backend.h"
#include "runtime/cpu_backend.h"
#include "runtime/cpu_bf16.h"
#include "runtime/safetensors.h"
#include "tests/support/backend_helpers.h"

namespace starattn {
namespace {

using testing::fetch;
using testing::make;
using testing::random_vec;

std::vector<float> rounded(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_f32(f32_to_bf16(v[i]));
  return out;
}

Buffer make_bf16(Backend& be, int64_t rows, int64_t cols, const std::vector<float>& host) {
  Buffer b = be.alloc(rows, cols, DType::bf16);
  be.upload(host.data(), b.view());
  return b;
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double amax = 0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    amax = std::max(amax, static_cast<double>(std::fabs(b[i])));
    d = std::max(d, static_cast<double>(std::fabs(a[i] - b[i])));
  }
  return d / std::max(amax, 1e-30);
}

class CpuBf16Weights : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::mt19937 rng{17};
};

TEST_F(CpuBf16Weights, WeightsAreStoredAsBf16RoundedToNearest) {
  EXPECT_EQ(be->weight_dtype(), DType::bf16);
  const std::vector<float> w = random_vec(rng, 7 * 33);
  Buffer b = make_bf16(*be, 7, 33, w);
  EXPECT_EQ(b.view().dtype, DType::bf16);
  const std::vector<float> back = fetch(*be, b.view());
  EXPECT_EQ(back, rounded(w));
  EXPECT_NE(back, w);  // the rounding is visible: these are not bf16 values to begin with
  // Copies keep the dtype; mixing dtypes is refused.
  Buffer c = be->alloc(7, 33, DType::bf16);
  be->copy(b.view(), c.view());
  EXPECT_EQ(fetch(*be, c.view()), back);
  Buffer f = be->alloc(7, 33, DType::f32);
  EXPECT_THROW(be->copy(b.view(), f.view()), std::invalid_argument);
  // Activations stay float32: an op's activation argument in bf16 is refused.
  Buffer out = be->alloc(7, 7, DType::f32);
  EXPECT_THROW(be->matmul(b.view(), b.view(), nullptr, out.view()), std::invalid_argument);
}

// Decode (1 row), a few rows (one-row kernel per row) and prefill (widened slices and sgemm),
// with and without a bias, on a row slice of a fused weight (as the engine's q|k|v), odd sizes
// that leave remainders in every loop.
TEST_F(CpuBf16Weights, MatmulEqualsFloat32OnTheSameValues) {
  const int64_t K = 300, N = 2 * 45 + 13, n_rows = 45;
  const std::vector<float> w = random_vec(rng, static_cast<size_t>(N * K), 0.05f);
  const std::vector<float> bias = random_vec(rng, static_cast<size_t>(n_rows), 0.1f);
  Buffer wb = make_bf16(*be, N, K, w);
  Buffer wf = make(*be, N, K, rounded(w));
  Buffer bb = make_bf16(*be, 1, n_rows, bias);
  Buffer bf = make(*be, 1, n_rows, rounded(bias));
  for (int64_t T : {1, 2, 3, 17}) {
    const std::vector<float> x = random_vec(rng, static_cast<size_t>(T * K));
    Buffer xb = make(*be, T, K, x);
    for (bool with_bias : {false, true}) {
      Buffer o16 = be->alloc(T, n_rows, DType::f32), o32 = be->alloc(T, n_rows, DType::f32);
      be->matmul(xb.view(), wb.rows(13, n_rows), with_bias ? &bb.view() : nullptr, o16.view());
      be->matmul(xb.view(), wf.rows(13, n_rows), with_bias ? &bf.view() : nullptr, o32.view());
      const std::vector<float> a = fetch(*be, o16.view()), b = fetch(*be, o32.view());
      // Same products, other summation orders: float32 rounding only.
      EXPECT_LE(max_rel_diff(a, b), 1e-5) << "T " << T << " bias " << with_bias;
      // And against the double-precision product of the rounded weights.
      const std::vector<float> wr = rounded(w), br = rounded(bias);
      double worst = 0, amax = 0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < n_rows; ++n) {
          double want = with_bias ? br[static_cast<size_t>(n)] : 0.0;
          for (int64_t k = 0; k < K; ++k)
            want += static_cast<double>(x[static_cast<size_t>(t * K + k)]) * wr[static_cast<size_t>((13 + n) * K + k)];
          worst = std::max(worst, std::fabs(want - a[static_cast<size_t>(t * n_rows + n)]));
          amax = std::max(amax, std::fabs(want));
        }
      EXPECT_LE(worst, 1e-5 * amax) << "T " << T;
      EXPECT_GT(amax, 0.1);
    }
  }
}

TEST_F(CpuBf16Weights, PortableAndDispatchedKernelsAgree) {
  const int64_t rows = 37, cols = 1000, stride = 1003;
  std::vector<uint16_t> w(static_cast<size_t>(rows * stride));
  for (uint16_t& v : w) v = f32_to_bf16(std::normal_distribution<float>(0, 0.05f)(rng));
  const std::vector<float> x = random_vec(rng, static_cast<size_t>(cols));
  std::vector<float> a(static_cast<size_t>(rows), 1.0f), b(static_cast<size_t>(rows), 1.0f);
  bf16_matvec(w.data(), stride, rows, cols, x.data(), a.data());
  bf16_matvec_portable(w.data(), stride, rows, cols, x.data(), b.data());
  for (int64_t r = 0; r < rows; ++r) {
    double want = 1.0;  // y += W x: the initial 1 stays
    for (int64_t k = 0; k < cols; ++k) want += static_cast<double>(bf16_to_f32(w[static_cast<size_t>(r * stride + k)])) * x[static_cast<size_t>(k)];
    EXPECT_NEAR(a[static_cast<size_t>(r)], want, 1e-4 * (1 + std::fabs(want))) << "row " << r;
    EXPECT_NEAR(b[static_cast<size_t>(r)], want, 1e-4 * (1 + std::fabs(want))) << "row " << r;
  }
}

TEST_F(CpuBf16Weights, EmbeddingAndNormsReadBf16Weights) {
  const int64_t V = 50, H = 96, T = 6;
  const std::vector<float> table = random_vec(rng, static_cast<size_t>(V * H));
  Buffer tb = make_bf16(*be, V, H, table);
  Buffer tf = make(*be, V, H, rounded(table));
  const std::vector<int32_t> ids = {3, 49, 0, 3, 17, 8};
  Buffer e16 = be->alloc(T, H, DType::f32), e32 = be->alloc(T, H, DType::f32);
  be->embedding(ids.data(), tb.view(), e16.view());
  be->embedding(ids.data(), tf.view(), e32.view());
  EXPECT_EQ(fetch(*be, e16.view()), fetch(*be, e32.view()));

  std::vector<float> norm = random_vec(rng, static_cast<size_t>(H), 0.1f);
  for (float& v : norm) v += 1.0f;
  Buffer nb = make_bf16(*be, 1, H, norm);
  Buffer nf = make(*be, 1, H, rounded(norm));
  Buffer o16 = be->alloc(T, H, DType::f32), o32 = be->alloc(T, H, DType::f32);
  be->rmsnorm(e16.view(), nb.view(), 1e-5f, o16.view());
  be->rmsnorm(e32.view(), nf.view(), 1e-5f, o32.view());
  EXPECT_EQ(fetch(*be, o16.view()), fetch(*be, o32.view()));
  const std::vector<float> y = random_vec(rng, static_cast<size_t>(T * H));
  Buffer yb = make(*be, T, H, y);
  be->add_rmsnorm(e16.view(), yb.view(), nb.view(), 1e-5f, o16.view());
  be->add_rmsnorm(e32.view(), yb.view(), nf.view(), 1e-5f, o32.view());
  EXPECT_EQ(fetch(*be, o16.view()), fetch(*be, o32.view()));
  EXPECT_EQ(fetch(*be, e16.view()), fetch(*be, e32.view()));
}

}  // namespace
}  // namespace starattn
