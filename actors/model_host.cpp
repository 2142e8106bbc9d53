#include "actors/model_host.h"

#include <omp.h>

#if defined(__GLIBC__)
#include <malloc.h>  // malloc_trim
#endif

#include "runtime/request_plan.h"

namespace starattn::actors {

namespace {
ModelLoadOptions load_options(const std::string& model_dir, const std::string& device, int gpu,
                              int threads) {
  ModelLoadOptions o;
  o.model = model_dir;
  o.device = device;
  o.gpu = gpu;
  o.threads = threads;
  return o;
}
}  // namespace

ModelHost::ModelHost(const std::string& model_dir, const std::string& device, int gpu, int threads)
    : ModelHost(load_options(model_dir, device, gpu, threads)) {}

ModelHost::ModelHost(const ModelLoadOptions& options)
    : rt_(load_model_runtime(options)), threads_(options.threads) {}

int64_t ModelHost::kv_tokens_in(int64_t bytes) const {
  return bytes / config().kv_bytes_per_token(dtype_size(rt_.backend->activation_dtype()));
}

int64_t ModelHost::room_bytes(double fraction) const {
  return static_cast<int64_t>(static_cast<double>(rt_.backend->free_bytes()) * fraction);
}

void adopt_compute_threads(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
}

void return_freed_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

}  // namespace starattn::actors
