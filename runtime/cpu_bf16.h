// bf16 weight kernels of the cpu backend: widening rows to float32 and the one-row product
// y += W x that every decode step spends its time in. x, y and the sums are float32; W is bf16
// (its values are float32 with the low 16 bits zero, so widening is exact).
#pragma once

#include <cstdint>

namespace starattn {

// dst[i] = bf16 src[i] as float32, i < n.
void bf16_to_f32_row(const uint16_t* src, int64_t n, float* dst);

// y[r] += sum_k w[r * stride + k] * x[k] for r < rows, k < cols; rows split across OpenMP
// threads. Uses AVX2/FMA where the CPU has them (checked at run time), portable C++ elsewhere.
void bf16_matvec(const uint16_t* w, int64_t stride, int64_t rows, int64_t cols, const float* x,
                 float* y);
// The same with the portable kernel only (the fallback where AVX2 is missing; for tests).
void bf16_matvec_portable(const uint16_t* w, int64_t stride, int64_t rows, int64_t cols,
                          const float* x, float* y);

}  // namespace starattn
