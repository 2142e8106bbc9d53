// The portable float32 backend: the numerical reference for every other backend.
// GEMMs through OpenBLAS (cblas_sgemm); attention and elementwise ops in plain C++ with OpenMP.
#pragma once

#include <memory>

#include "runtime/backend.h"

namespace starattn {

// threads <= 0: use OpenBLAS/OpenMP defaults (all cores).
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

}  // namespace starattn
