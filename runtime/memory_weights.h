// A WeightSource over tensors held in memory (random models for tests and benchmarks).
#pragma once

#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/safetensors.h"
#include "runtime/weight_source.h"

namespace starattn {

class MemoryWeights : public WeightSource {
 public:
  explicit MemoryWeights(std::vector<NamedTensor> tensors) {
    for (auto& t : tensors) tensors_[t.name] = std::move(t);
  }
  bool has(const std::string& name) const override { return tensors_.count(name) > 0; }
  std::vector<int64_t> shape(const std::string& name) const override { return get(name).shape; }
  void read_f32(const std::string& name, float* out) const override {
    const auto& t = get(name);
    std::memcpy(out, t.data.data(), t.data.size() * sizeof(float));
  }
  std::string describe() const override { return "in-memory weights"; }
  const NamedTensor& get(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw std::runtime_error("in-memory weights: no tensor " + name);
    return it->second;
  }

 private:
  std::map<std::string, NamedTensor> tensors_;
};

}  // namespace starattn
