// The portable cpu backend: float32 activations and arithmetic, weights held as bf16.
// GEMMs through OpenBLAS (cblas_sgemm) and a bf16 one-row kernel; attention and elementwise ops
// in plain C++ with OpenMP.
#pragma once

#include <memory>

#include "runtime/backend.h"

namespace starattn {

// threads <= 0: use OpenBLAS/OpenMP defaults (all cores).
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

}  // namespace starattn
