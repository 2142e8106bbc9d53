// One model on one backend, shared by the actors of a process that use that device.
//
// A context_block actor or the query actor holds a ModelHost: the backend, the weights as a
// Transformer, and the tokenizer. The cpu backend's ops are safe to call from several threads
// (its only shared state, the allocation table, is locked), so in-process actors on the cpu
// share one ModelHost instead of loading the weights once per actor.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "runtime/backend.h"
#include "runtime/chat_template.h"
#include "runtime/tokenizer.h"
#include "runtime/transformer.h"
#include "runtime/weight_source.h"

namespace starattn::actors {

class ModelHost {
 public:
  // device "cpu" (threads: 0 = all cores) or a gpu backend name with its device index.
  ModelHost(const std::string& model_dir, const std::string& device, int gpu, int threads);

  const Transformer& model() const { return *model_; }
  const ModelConfig& config() const { return model_->config(); }
  Backend& backend() const { return *backend_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // The model's chat template; empty for byte-level models.
  const std::optional<ChatTemplate>& chat_template() const { return chat_; }
  int threads() const { return threads_; }
  // Serialises compute on backends that one thread at a time must drive (cuda: one stream,
  // shared staging buffers); the cpu backend is safe from several threads, so the lock returned
  // for it holds nothing. A context actor encodes on its own thread and answers attention on its
  // data-plane thread: both take this lock around their backend work.
  std::unique_lock<std::mutex> lock_compute() const {
    return backend_->name() == "cpu" ? std::unique_lock<std::mutex>(compute_mutex_, std::defer_lock)
                                     : std::unique_lock<std::mutex>(compute_mutex_);
  }
  // A fingerprint of the model's shape: head and workers must serve the same model.
  const std::string& digest() const { return digest_; }
  // Tokens of KV that fit in `fraction` of the backend's free memory.
  int64_t kv_capacity_tokens(double fraction) const;

 private:
  std::unique_ptr<Backend> backend_;
  LoadedModel loaded_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> chat_;
  int threads_ = 0;
  std::string digest_;
  mutable std::mutex compute_mutex_;
};

// Gives the calling thread the backend's cpu thread count (OpenMP's setting is per thread, and
// the cpu attention splits work by it: every thread that computes must agree for results to
// be bit-identical across processes).
void adopt_compute_threads(int threads);

}  // namespace starattn::actors
