// Where a model's tensors come from, independent of file format (safetensors now, GGUF later).
// Names are Hugging Face Llama names: "model.layers.3.self_attn.q_proj.weight", ...
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/model_config.h"

namespace starattn {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool has(const std::string& name) const = 0;
  virtual std::vector<int64_t> shape(const std::string& name) const = 0;
  // Converts the tensor to float32 into `out` (shape product elements). Throws naming the file
  // and tensor when it is missing or malformed.
  virtual void read_f32(const std::string& name, float* out) const = 0;
  // Human-readable origin for error messages.
  virtual std::string describe() const = 0;
};

struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;
  std::string path;
};

// A tensor the architecture needs, with its Hugging Face name and row-major shape.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Every tensor a model of this config reads, in a stable order (embeddings, layers, norm, head):
// lm_head.weight only when embeddings are not tied; biases as the config says.
std::vector<TensorSpec> model_tensor_specs(const ModelConfig& config);

// Checks that `weights` holds every tensor of model_tensor_specs with the right shape; throws
// naming weights.describe(), the tensor and both shapes (all problems, the first few in full).
void check_model_tensors(const ModelConfig& config, const WeightSource& weights);

// Opens a model: a Hugging Face directory (config.json + model.safetensors or a sharded
// model.safetensors.index.json). Throws with a clear message on anything malformed.
LoadedModel open_model(const std::string& path);

}  // namespace starattn
