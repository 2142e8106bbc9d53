// Models with random weights: small named presets for tests, and any shape from a config alone
// (benchmarks, --random-weights).
//
// Every tensor is generated from (seed, tensor name) only, so the in-memory source, the list of
// tensors and a written model directory hold bit-identical values on every platform.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/model_config.h"
#include "runtime/safetensors.h"
#include "runtime/weight_source.h"

namespace starattn {

// "tiny" (2 layers, hidden 64, tied embeddings) or "small" (4 layers, hidden 256, llama3 RoPE
// scaling); both use a 259-token byte-level vocabulary (bos 256, eos 257). Throws listing the
// presets for any other name.
ModelConfig preset_config(const std::string& name);
std::vector<std::string> preset_names();

// Values of one tensor: linear weights uniform with std 1/sqrt(fan_in) (activations stay O(1)
// through the layers), norm weights 1 + small noise, biases small; every value rounded to the
// nearest bf16, so that backends storing weights in bf16 hold random models exactly.
std::vector<float> random_tensor(const TensorSpec& spec, uint64_t seed);
// The same values written into `out` (the shape's product of elements), in parallel.
void fill_random_tensor(const TensorSpec& spec, uint64_t seed, float* out);

// All tensors of model_tensor_specs(config), in that order.
std::vector<NamedTensor> random_weights(const ModelConfig& config, uint64_t seed);

// The same weights generated on demand, without files or holding them all in memory.
std::unique_ptr<WeightSource> random_weight_source(const ModelConfig& config, uint64_t seed);

// Creates `dir` (and parents) holding config.json and model.safetensors (float32). config.json
// is config.to_json() plus "starattn_byte_vocabulary": true: the model's tokenizer is the byte
// tokenizer (see load_tokenizer).
void write_random_model(const ModelConfig& config, uint64_t seed, const std::string& dir);

}  // namespace starattn
