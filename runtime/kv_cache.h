// Per-layer key/value storage on a backend: K and V of each layer are [capacity, Hkv * D].
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/backend.h"
#include "runtime/model_config.h"

namespace starattn {

class KvCache {
 public:
  KvCache(Backend& backend, const ModelConfig& config, int64_t capacity);

  int64_t capacity() const { return capacity_; }
  int64_t size() const { return size_; }
  int num_layers() const { return static_cast<int>(k_.size()); }
  // Rows [0, size) of a layer.
  Tensor keys(int layer) const { return k_[layer].rows(0, size_); }
  Tensor values(int layer) const { return v_[layer].rows(0, size_); }
  // Rows [begin, begin + n) of a layer, which may run past size (for writing new tokens).
  Tensor keys(int layer, int64_t begin, int64_t n) const { return k_[layer].rows(begin, n); }
  Tensor values(int layer, int64_t begin, int64_t n) const { return v_[layer].rows(begin, n); }

  // Writes the K/V of n new tokens of one layer at rows [size, size + n); commit() then makes
  // them part of the cache once every layer has written them.
  void write(int layer, const Tensor& k, const Tensor& v);
  // write() as copies for the caller to run (Backend::copy_batch): appends the two to `copies`.
  void write_items(int layer, const Tensor& k, const Tensor& v, std::vector<Backend::CopyItem>& copies) const;
  void commit(int64_t n);
  // Forgets rows past n (keeps the first n).
  void truncate(int64_t n);
  // Appends rows [begin, begin + n) of every layer of `other`.
  void append_from(const KvCache& other, int64_t begin, int64_t n);
  int64_t bytes() const;

 private:
  Backend& backend_;
  int64_t capacity_ = 0;
  int64_t size_ = 0;
  std::vector<Buffer> k_, v_;
  void check_room(int64_t rows) const;  // throws when `rows` more tokens do not fit
};

}  // namespace starattn
