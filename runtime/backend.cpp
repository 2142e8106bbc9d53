#include "runtime/backend.h"

#include <stdexcept>
#include <utility>

#include "runtime/cpu_backend.h"

#ifdef STARATTN_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

namespace starattn {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
  }
  return "?";
}

size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

Tensor Tensor::slice_rows(int64_t begin, int64_t n) const {
  if (begin < 0 || n < 0 || begin + n > rows)
    throw std::out_of_range("Tensor::slice_rows: rows [" + std::to_string(begin) + ", " +
                            std::to_string(begin + n) + ") of " + std::to_string(rows));
  Tensor t = *this;
  t.data = static_cast<char*>(data) + begin * stride * static_cast<int64_t>(dtype_size(dtype));
  t.rows = n;
  return t;
}

Tensor Tensor::slice_cols(int64_t begin, int64_t n) const {
  if (begin < 0 || n < 0 || begin + n > cols)
    throw std::out_of_range("Tensor::slice_cols: cols [" + std::to_string(begin) + ", " +
                            std::to_string(begin + n) + ") of " + std::to_string(cols));
  Tensor t = *this;
  t.data = static_cast<char*>(data) + begin * static_cast<int64_t>(dtype_size(dtype));
  t.cols = n;
  return t;
}

Buffer::Buffer(Buffer&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)), view_(std::exchange(other.view_, Tensor{})) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    release();
    owner_ = std::exchange(other.owner_, nullptr);
    view_ = std::exchange(other.view_, Tensor{});
  }
  return *this;
}

Buffer::~Buffer() { release(); }

void Buffer::release() {
  if (owner_ && view_.data) owner_->free_memory(view_);
  owner_ = nullptr;
  view_ = Tensor{};
}

std::vector<std::string> available_backends() {
  std::vector<std::string> names{"cpu"};
#ifdef STARATTN_HAVE_CUDA
  names.push_back("cuda");
#endif
  return names;
}

std::unique_ptr<Backend> make_backend(const std::string& name, int device, int threads) {
  if (name == "cpu") return make_cpu_backend(threads);
#ifdef STARATTN_HAVE_CUDA
  if (name == "cuda") return make_cuda_backend(device);
#endif
  std::string known;
  for (const auto& n : available_backends()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown or unavailable backend '" + name +
                              "' (this build has: " + known + ")");
}

}  // namespace starattn
