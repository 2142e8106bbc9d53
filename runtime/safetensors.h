// safetensors reading (mmap, validated) and writing.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data area; offsets are relative to the data area's start.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/weight_source.h"

namespace starattn {

enum class StDType { f32, f16, bf16 };

struct SafetensorInfo {
  std::string name;
  StDType dtype = StDType::f32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data area
  uint64_t end = 0;
  int64_t elements() const;
};

// One .safetensors file mapped read-only. Every structural problem is reported at open():
// truncated file, header length past the end, bad JSON, unknown dtype, offsets out of range
// or overlapping, size not matching shape x dtype.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorInfo>& tensors() const { return tensors_; }
  const SafetensorInfo* find(const std::string& name) const;
  // Converts to float32; throws naming file and tensor if absent.
  void read_f32(const std::string& name, float* out) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data area
  std::map<std::string, SafetensorInfo> tensors_;
};

// All tensors of a model directory: model.safetensors, or the shards named by
// model.safetensors.index.json (every shard must exist and hold the tensors the index says).
class SafetensorsWeights : public WeightSource {
 public:
  explicit SafetensorsWeights(const std::string& dir);
  bool has(const std::string& name) const override;
  std::vector<int64_t> shape(const std::string& name) const override;
  void read_f32(const std::string& name, float* out) const override;
  std::string describe() const override;

 private:
  const SafetensorInfo& info(const std::string& name, const SafetensorsFile** file) const;
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> index_;
};

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// Writes tensors to one .safetensors file, stored as `dtype` (rounded to nearest even).
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       StDType dtype = StDType::f32);

// bf16/f16 <-> f32 conversions shared by loaders and backends.
float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float v);
float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float v);

}  // namespace starattn
