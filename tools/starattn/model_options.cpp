#include "tools/starattn/model_options.h"

#include <fstream>
#include <stdexcept>

#include "runtime/engine.h"

namespace starattn::cli {

std::string model_path(const Args& args) {
  if (args.has("model")) return args.get("model", "");
  const std::string path = default_model_path();
  if (!std::ifstream(path))
    throw std::invalid_argument("no --model given and the default model is not at " + path +
                                ": run deploy/fetch-model.sh (or pass --model)");
  return path;
}

ModelLoadOptions model_load_options(const Args& args, const std::string& device, int gpu,
                                    int threads, const std::string& fallback_model) {
  ModelLoadOptions o;
  o.device = device;
  o.gpu = gpu;
  o.threads = threads;
  o.random_weights = args.has("random-weights");
  if (o.random_weights && args.has("model"))
    throw std::invalid_argument("give one of --model and --random-weights");
  o.weight_seed = static_cast<uint64_t>(args.get_int("weight-seed", 0));
  if (o.random_weights) {
    o.model = args.get("random-weights", "");
  } else if (args.has("model") || fallback_model.empty()) {
    o.model = args.require("model");
  } else {
    o.model = fallback_model;
  }
  return o;
}

EngineOptions random_weights_engine_options(const Args& args, int workers) {
  EngineOptions o;
  o.model = args.require("random-weights");
  o.random_weights = true;
  o.weight_seed = static_cast<uint64_t>(args.get_int("weight-seed", 0));
  o.device = args.get("device", "cuda");
  o.gpu = static_cast<int>(args.get_int("gpu", 0));
  o.workers = workers;
  return o;
}

}  // namespace starattn::cli
