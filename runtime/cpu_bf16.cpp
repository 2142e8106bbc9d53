// bf16 kernels for the cpu backend. The build targets baseline x86-64, so the AVX2 path is
// compiled for that target alone and chosen at run time.
#include "runtime/cpu_bf16.h"

#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define STARATTN_X86 1
#endif

namespace starattn {
namespace {

// Below this many weights a product runs on one thread: the fork/join costs more.
constexpr int64_t kParallelMin = 1 << 15;

inline float widen(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float dot_portable(const uint16_t* w, const float* x, int64_t n) {
  // Eight partial sums the compiler can keep in vector lanes.
  float acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) acc[j] += widen(w[k + j]) * x[k + j];
  float sum = 0.0f;
  for (int j = 0; j < 8; ++j) sum += acc[j];
  for (; k < n; ++k) sum += widen(w[k]) * x[k];
  return sum;
}

#ifdef STARATTN_X86
__attribute__((target("avx2,fma"))) inline __m256 widen8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline __attribute__((target("avx2,fma"))) float hsum(__m256 s) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
}

// Four rows at once: each load of x feeds four products, and the four sums stay in registers.
__attribute__((target("avx2,fma"))) void dot4_avx2(const uint16_t* w, int64_t stride,
                                                    const float* x, int64_t n, float* y) {
  const uint16_t* w0 = w;
  const uint16_t* w1 = w + stride;
  const uint16_t* w2 = w + 2 * stride;
  const uint16_t* w3 = w + 3 * stride;
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 xv = _mm256_loadu_ps(x + k);
    a0 = _mm256_fmadd_ps(widen8(w0 + k), xv, a0);
    a1 = _mm256_fmadd_ps(widen8(w1 + k), xv, a1);
    a2 = _mm256_fmadd_ps(widen8(w2 + k), xv, a2);
    a3 = _mm256_fmadd_ps(widen8(w3 + k), xv, a3);
  }
  float s[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
  for (; k < n; ++k)
    for (int j = 0; j < 4; ++j) s[j] += widen(w[j * stride + k]) * x[k];
  for (int j = 0; j < 4; ++j) y[j] += s[j];
}

__attribute__((target("avx2,fma"))) float dot_avx2(const uint16_t* w, const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    a0 = _mm256_fmadd_ps(widen8(w + k), _mm256_loadu_ps(x + k), a0);
    a1 = _mm256_fmadd_ps(widen8(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
  }
  for (; k + 8 <= n; k += 8) a0 = _mm256_fmadd_ps(widen8(w + k), _mm256_loadu_ps(x + k), a0);
  float sum = hsum(_mm256_add_ps(a0, a1));
  for (; k < n; ++k) sum += widen(w[k]) * x[k];
  return sum;
}

bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

}  // namespace

void bf16_to_f32_row(const uint16_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = widen(src[i]);
}

void bf16_matvec(const uint16_t* w, int64_t stride, int64_t rows, int64_t cols, const float* x,
                 float* y) {
#ifdef STARATTN_X86
  if (have_avx2()) {
    const int64_t quads = rows / 4;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
    for (int64_t q = 0; q < quads; ++q) dot4_avx2(w + 4 * q * stride, stride, x, cols, y + 4 * q);
    for (int64_t r = 4 * quads; r < rows; ++r) y[r] += dot_avx2(w + r * stride, x, cols);
    return;
  }
#endif
  bf16_matvec_portable(w, stride, rows, cols, x, y);
}

void bf16_matvec_portable(const uint16_t* w, int64_t stride, int64_t rows, int64_t cols,
                          const float* x, float* y) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) y[r] += dot_portable(w + r * stride, x, cols);
}

}  // namespace starattn
