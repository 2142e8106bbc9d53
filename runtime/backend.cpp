#include "runtime/backend.h"

#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "runtime/cpu_backend.h"

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

void Backend::argmax_rows(const Tensor& logits, std::vector<int32_t>& out) {
  out.assign(static_cast<size_t>(logits.rows), -1);
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  for (int64_t r = 0; r < logits.rows; ++r) {
    try {
      out[static_cast<size_t>(r)] = sample(logits.slice_rows(r, 1), greedy, 0);
    } catch (const std::invalid_argument&) {  // NaN or +inf: the request's own sample() says so
    }
  }
}

namespace {

// Backends other than cpu, by name, as they registered themselves (register_backend).
struct Registry {
  std::mutex mutex;
  std::map<std::string, BackendFactory> factories;
};
Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

bool register_backend(const std::string& name, BackendFactory factory) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.factories.emplace(name, std::move(factory)).second;
}

std::vector<std::string> available_backends() {
  std::vector<std::string> names{"cpu"};
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (const auto& [name, factory] : r.factories) names.push_back(name);
  return names;
}

std::unique_ptr<Backend> make_backend(const std::string& name, int device, int threads) {
  if (name == "cpu") return make_cpu_backend(threads);
  BackendFactory factory;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.factories.find(name);
    if (it != r.factories.end()) factory = it->second;
  }
  if (factory) return factory(device, threads);
  std::string known;
  for (const auto& n : available_backends()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown or unavailable backend '" + name +
                              "' (this build has: " + known + ")");
}

}  // namespace starattn
