// Decode-step weight products on the cpu: the one-row products of one SmolLM2-135M token (30
// layers of q|k|v, o, gate|up and down, then the tied 49152-row head) with the weights held as
// float32 (OpenBLAS sgemv, the cpu backend before bf16), bf16 (the cpu backend's kernel) and
// Q4_K blocks multiplied straight from the blocks (a dequantizing kernel written for this
// comparison only). Prints ms per token for each.
//
// Build against a configured build tree (B) and run:
//   g++ -O2 -std=c++17 -fopenmp -I. tools/quant/matvec_bench.cpp runtime/cpu_bf16.cpp \
//       -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas -o /tmp/matvec_bench
//   OMP_WAIT_POLICY=passive /tmp/matvec_bench [threads]
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "runtime/cpu_bf16.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace {

struct Shape {
  int64_t rows, cols;
};

// One token of SmolLM2-135M: hidden 576, 9 q heads and 3 kv heads of 64, intermediate 1536.
std::vector<Shape> smollm2_products() {
  std::vector<Shape> s;
  for (int l = 0; l < 30; ++l) {
    s.push_back({576 + 2 * 192, 576});
    s.push_back({576, 576});
    s.push_back({2 * 1536, 576});
    s.push_back({576, 1536});
  }
  s.push_back({49152, 576});
  return s;
}

// Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles per 256 values.
constexpr int kQ4kBytes = 144;

void scale_min(const uint8_t* q, int j, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

__attribute__((target("avx2,fma,f16c"))) float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// y[r] = sum over blocks of d*sc*sum(q*x) - dmin*m*sum(x), with the 32-value sums of x shared.
__attribute__((target("avx2,fma,f16c"))) void q4k_matvec(const uint8_t* w, int64_t rows,
                                                          int64_t cols, const float* x,
                                                          const float* xsum, float* y) {
  const int64_t blocks = cols / 256;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float total = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = w + (r * blocks + b) * kQ4kBytes;
      const float d = half(blk), dmin = half(blk + 2);
      const uint8_t* qs = blk + 16;
      const float* xb = x + b * 256;
      for (int c = 0; c < 4; ++c) {  // 32 bytes: low nibbles sub-block 2c, high 2c+1
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        for (int k = 0; k < 32; k += 8) {
          const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 32 * c + k)));
          const __m256 ql = _mm256_cvtepi32_ps(_mm256_and_si256(bytes, _mm256_set1_epi32(15)));
          const __m256 qh = _mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4));
          lo = _mm256_fmadd_ps(ql, _mm256_loadu_ps(xb + 64 * c + k), lo);
          hi = _mm256_fmadd_ps(qh, _mm256_loadu_ps(xb + 64 * c + 32 + k), hi);
        }
        float sl[8], sh[8];
        _mm256_storeu_ps(sl, lo);
        _mm256_storeu_ps(sh, hi);
        float a = 0, bsum = 0;
        for (int i = 0; i < 8; ++i) {
          a += sl[i];
          bsum += sh[i];
        }
        int sc, m;
        scale_min(blk + 4, 2 * c, sc, m);
        total += d * sc * a - dmin * m * xsum[b * 8 + 2 * c];
        scale_min(blk + 4, 2 * c + 1, sc, m);
        total += d * sc * bsum - dmin * m * xsum[b * 8 + 2 * c + 1];
      }
    }
    y[r] = total;
  }
}

// The fastest of 30 tokens: the development machine is shared, and other processes only ever
// add time.
template <class F>
double ms_per_token(F&& one_token) {
  one_token();  // warm up
  double best = 1e30;
  for (int i = 0; i < 30; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    one_token();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  const std::vector<Shape> shapes = smollm2_products();
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-0.1f, 0.1f);
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<uint16_t>> bf16;
  std::vector<std::vector<uint8_t>> q4k;
  int64_t weights = 0;
  for (const Shape& s : shapes) {
    const int64_t n = s.rows * s.cols;
    weights += n;
    f32.emplace_back(n);
    for (float& v : f32.back()) v = u(rng);
    bf16.emplace_back(n);
    for (int64_t i = 0; i < n; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &f32.back()[i], 4);
      bf16.back()[i] = static_cast<uint16_t>(bits >> 16);
    }
    q4k.emplace_back(n / 256 * kQ4kBytes);
    for (uint8_t& b : q4k.back()) b = static_cast<uint8_t>(rng());
    for (int64_t b = 0; b < n / 256; ++b) {  // small finite scales
      uint8_t* blk = q4k.back().data() + b * kQ4kBytes;
      blk[0] = 0x00; blk[1] = 0x20; blk[2] = 0x00; blk[3] = 0x20;  // 2^-7 as f16
    }
  }
  std::vector<float> x(49152, 0.5f), y(49152), xsum(49152 / 32);
  const double f32_ms = ms_per_token([&] {
    for (size_t i = 0; i < shapes.size(); ++i)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(shapes[i].rows),
                  static_cast<int>(shapes[i].cols), 1.0f, f32[i].data(), static_cast<int>(shapes[i].cols),
                  x.data(), 1, 0.0f, y.data(), 1);
  });
  const double bf16_ms = ms_per_token([&] {
    for (size_t i = 0; i < shapes.size(); ++i)
      starattn::bf16_matvec(bf16[i].data(), shapes[i].cols, shapes[i].rows, shapes[i].cols, x.data(), y.data());
  });
  const double q4k_ms = ms_per_token([&] {
    for (size_t i = 0; i < shapes.size(); ++i) {
      for (int64_t s = 0; s < shapes[i].cols / 32; ++s) {
        float a = 0;
        for (int k = 0; k < 32; ++k) a += x[32 * s + k];
        xsum[s] = a;
      }
      q4k_matvec(q4k[i].data(), shapes[i].rows, shapes[i].cols, x.data(), xsum.data(), y.data());
    }
  });
  std::printf("%lld weights, %d threads: f32 sgemv %.2f ms/token (%.0f MB), bf16 %.2f ms/token (%.0f MB), "
              "Q4_K blocks %.2f ms/token (%.0f MB)\n",
              static_cast<long long>(weights), threads, f32_ms, weights * 4 / 1e6, bf16_ms,
              weights * 2 / 1e6, q4k_ms, weights * 144.0 / 256 / 1e6);
  return 0;
}
