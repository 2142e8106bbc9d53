#include "runtime/kv_cache.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace starattn {

KvCache::KvCache(Backend& backend, const ModelConfig& config, int64_t capacity)
    : backend_(backend), capacity_(capacity) {
  if (capacity < 0) throw std::invalid_argument("KvCache: negative capacity");
  const int64_t rows = std::max<int64_t>(capacity, 1);
  for (int i = 0; i < config.num_layers; ++i) {
    k_.push_back(backend.alloc(rows, config.kv_dim(), backend.activation_dtype()));
    v_.push_back(backend.alloc(rows, config.kv_dim(), backend.activation_dtype()));
  }
}

void KvCache::check_room(int64_t rows) const {
  if (size_ + rows > capacity_)
    throw std::length_error("KV cache full: " + std::to_string(size_) + " + " + std::to_string(rows) +
                            " tokens exceed its capacity of " + std::to_string(capacity_));
}

void KvCache::write(int layer, const Tensor& k, const Tensor& v) {
  check_room(k.rows);
  backend_.copy(k, keys(layer, size_, k.rows));
  backend_.copy(v, values(layer, size_, v.rows));
}

void KvCache::write_items(int layer, const Tensor& k, const Tensor& v, std::vector<Backend::CopyItem>& copies) const {
  check_room(k.rows);
  copies.push_back({k, keys(layer, size_, k.rows)});
  copies.push_back({v, values(layer, size_, v.rows)});
}

void KvCache::commit(int64_t n) {
  if (size_ + n > capacity_) throw std::length_error("KvCache::commit past capacity");
  size_ += n;
}

void KvCache::truncate(int64_t n) {
  if (n < 0 || n > size_) throw std::out_of_range("KvCache::truncate");
  size_ = n;
}

void KvCache::append_from(const KvCache& other, int64_t begin, int64_t n) {
  if (size_ + n > capacity_)
    throw std::length_error("KV cache full: cannot append " + std::to_string(n) +
                            " tokens to " + std::to_string(size_) + " of capacity " +
                            std::to_string(capacity_));
  for (int layer = 0; layer < num_layers(); ++layer) {
    backend_.copy(other.keys(layer, begin, n), keys(layer, size_, n));
    backend_.copy(other.values(layer, begin, n), values(layer, size_, n));
  }
  size_ += n;
}

int64_t KvCache::bytes() const {
  if (k_.empty()) return 0;
  const Tensor& t = k_[0].view();
  return 2 * static_cast<int64_t>(k_.size()) * t.rows * t.cols *
         static_cast<int64_t>(dtype_size(t.dtype));
}

}  // namespace starattn
