// The model a command loads: --model DIR_OR_GGUF, or --random-weights CONFIG (a model of any
// shape for benchmarks; every process given the same config and --weight-seed builds the same
// weights, so a head and its workers agree).
#pragma once

#include <string>

#include "runtime/model_loader.h"
#include "tools/starattn/args.h"

namespace starattn {
struct EngineOptions;
}

namespace starattn::cli {

// --model, else the default model deploy/fetch-model.sh installs (an error saying how to get it
// when it is not there).
std::string model_path(const Args& args);

// `fallback_model` is used when neither option is given (empty: --model is required).
ModelLoadOptions model_load_options(const Args& args, const std::string& device, int gpu,
                                    int threads, const std::string& fallback_model);

// The Engine of a benchmark on --random-weights CONFIG: --weight-seed, --device (default cuda),
// --gpu, and `workers` in-process context workers.
EngineOptions random_weights_engine_options(const Args& args, int workers);

}  // namespace starattn::cli
