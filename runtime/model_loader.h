// Loading a model for a process, written once: the backend, the weights as a Transformer, the
// tokenizer and the chat template, from a Hugging Face directory, a GGUF file or (benchmarks) a
// config.json with random weights. The Engine and the actors' ModelHost both hold one.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "runtime/backend.h"
#include "runtime/chat_template.h"
#include "runtime/tokenizer.h"
#include "runtime/transformer.h"
#include "runtime/weight_source.h"

namespace starattn {

struct ModelLoadOptions {
  std::string model;            // directory, .gguf, or config.json with random_weights
  bool random_weights = false;  // build random weights of the config's shape (benchmarks)
  uint64_t weight_seed = 0;
  std::string device = "cpu";   // backend name
  int gpu = 0;                  // device index for gpu backends
  int threads = 0;              // cpu threads (0 = all)
};

struct ModelRuntime {
  std::unique_ptr<Backend> backend;
  LoadedModel loaded;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<Tokenizer> tokenizer;
  // The model's chat template; empty for byte-level models (and random weights).
  std::optional<ChatTemplate> chat;
  // A fingerprint of the model's shape and special ids: a head and its workers must agree.
  std::string digest;
  double load_ms = 0;

  // The template chats use: the model's, else the fallback for template-less models (the one
  // place that decides it).
  ChatTemplate chat_for_messages() const;
};

// Throws naming the file and the problem (missing, corrupt, unknown architecture).
ModelRuntime load_model_runtime(const ModelLoadOptions& options);

}  // namespace starattn
